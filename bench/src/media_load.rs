//! The media scenario's uploaders, in a process of their own (`natter-bench media-load`,
//! started by [`crate::media`] under `chrt --idle`): they stand for other people's phones,
//! so on this machine, where they share the load generator's one core with the two chat
//! clients being measured, they must not take that core from them — the figure is about
//! whether the *server* lets files slow chat, not about the generator's own scheduler.
//!
//! Line protocol on stdin/stdout: the child prints `flowing` once bytes move; each `mark`
//! it reads is answered with the bytes stored so far; `stop` ends the uploads and is
//! answered with `<bytes stored> <files finished>`, then the process exits.
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use natter_sdk::ConversationId;

use crate::{bench_users, Target};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child: `uploads` clients each uploading a `mib` MiB file again and again until told
/// to stop.
pub async fn media_load(t: &Target, uploads: usize, mib: u64) -> anyhow::Result<()> {
    let loaders = bench_users(t, uploads, 1000, 16).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicU64::new(0));
    let big = crate::media::random((mib << 20) as usize);
    let mut tasks = Vec::new();
    for (i, l) in loaders.into_iter().enumerate() {
        let conv = ConversationId(l.client.create_group(&format!("load {i}"), &[]).await?.conversation_id);
        let (stop, moved, big) = (stop.clone(), moved.clone(), big.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let last = AtomicU64::new(0);
                let name = format!("load-{i}-{k}.bin");
                l.client
                    .upload(conv, &name, "application/octet-stream", big.clone(), |stored, _| {
                        let before = last.swap(stored, Ordering::Relaxed);
                        moved.fetch_add(stored.saturating_sub(before), Ordering::Relaxed);
                    })
                    .await
                    .with_context(|| format!("loaded upload {name}"))?;
                k += 1;
            }
            Ok::<_, anyhow::Error>(k)
        }));
    }
    while moved.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    say("flowing");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        match line.trim() {
            "mark" => say(&moved.load(Ordering::Relaxed).to_string()),
            "stop" => break,
            other => bail!("media-load: unknown command {other:?}"),
        }
    }
    let at_stop = moved.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut finished = 0;
    for task in tasks {
        finished += task.await??;
    }
    say(&format!("{at_stop} {finished}"));
    Ok(())
}

/// The parent's handle on a `media-load` child.
pub struct Loader {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::BufReader<ChildStdout>,
}

impl Loader {
    /// Start the uploaders at idle CPU priority and wait until their bytes flow.
    pub fn start(t: &Target, uploads: usize, mib: u64) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new("chrt")
            .arg("--idle")
            .arg("0")
            .arg(exe)
            .args(["--server", &t.addr.to_string(), "--fingerprint", &t.fingerprint])
            .args([
                "media-load",
                "--uploads",
                &uploads.to_string(),
                "--mib",
                &mib.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the media-load process (chrt from util-linux)")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        let mut l = Loader { child, stdin, stdout };
        let first = l.line()?;
        if first != "flowing" {
            bail!("media-load said {first:?}");
        }
        Ok(l)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            bail!("media-load ended early ({:?})", self.child.wait()?);
        }
        Ok(s.trim().to_owned())
    }

    /// Bytes stored so far.
    pub fn mark(&mut self) -> anyhow::Result<u64> {
        writeln!(self.stdin, "mark")?;
        Ok(self.line()?.parse()?)
    }

    /// Stop the uploads: bytes stored until now, and files finished.
    pub fn stop(mut self) -> anyhow::Result<(u64, u64)> {
        writeln!(self.stdin, "stop")?;
        let l = self.line()?;
        let (moved, finished) = l.split_once(' ').context("media-load's last line")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("media-load failed: {status}");
        }
        Ok((moved.parse()?, finished.parse()?))
    }
}
