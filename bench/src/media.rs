//! The media scenario: upload and download throughput over QUIC (natter-sdk's `upload`
//! and `download_all`, each timed to the checked file) next to `curl` moving the same file
//! over HTTP to the same server's web endpoint (a tus `PATCH` and a `GET`), medians of
//! repeated runs in one process; then chat latency between two other clients, idle and
//! while four large uploads run, to show files never slow chat.
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use natter_protocol::client::ops;
use natter_protocol::pb;
use natter_sdk::ConversationId;
use serde::Serialize;

use crate::media_load::Loader;
use crate::{bench_users, run_senders, spawn_receiver, FanoutOpts, Receipts, Report, Target};

/// Media parameters.
#[derive(Clone, Debug, Serialize)]
pub struct MediaOpts {
    /// Size of the file timed for throughput.
    pub size_mib: u64,
    /// Timed transfers per way (the median is reported).
    pub repeats: usize,
    /// The server's web endpoint (`http://127.0.0.1:18080`) for curl; none: no curl figures.
    pub web: Option<String>,
    /// Concurrent uploads during the loaded chat phase, and their size.
    pub loaded_uploads: usize,
    pub loaded_upload_mib: u64,
    /// Each chat phase: messages per second from one sender, for this long.
    pub chat_rate: f64,
    pub chat_secs: f64,
}

#[derive(Debug, Default, Serialize)]
struct Transfers {
    /// MiB/s of each run.
    runs: Vec<f64>,
    median: f64,
}

impl Transfers {
    fn push(&mut self, bytes: u64, secs: f64) {
        self.runs.push(bytes as f64 / (1 << 20) as f64 / secs.max(1e-9));
        let mut s = self.runs.clone();
        s.sort_by(f64::total_cmp);
        self.median = s[s.len() / 2];
    }
}

pub(crate) fn random(size: usize) -> Bytes {
    let mut v = vec![0u8; size];
    rand::Rng::fill(&mut rand::thread_rng(), &mut v[..]);
    v.into()
}

/// Wait until an upload is ready (the server checked it); its media id.
async fn until_ready(client: &natter_sdk::Client, upload_id: &str) -> anyhow::Result<String> {
    loop {
        let st = client.call(ops::get_upload(upload_id)).await?;
        match st.state() {
            pb::UploadState::Ready => return Ok(st.media.context("ready without a file")?.media_id),
            pb::UploadState::Rejected => bail!("upload rejected: {:?}", st.error()),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// `curl` with these arguments; its `-w` output.
fn curl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail"])
        .args(args)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Throughput both ways, QUIC and curl, then chat idle and loaded.
pub async fn media(t: &Target, o: &MediaOpts) -> anyhow::Result<Report> {
    let users = bench_users(t, 5, 1000, 16).await?;
    let mut users = users.into_iter();
    let up = users.next().context("users")?;
    let (a1, b1, a2, b2) = (
        users.next().context("users")?,
        users.next().context("users")?,
        users.next().context("users")?,
        users.next().context("users")?,
    );
    let files = ConversationId(up.client.create_group("bench media", &[]).await?.conversation_id);
    let size = (o.size_mib << 20) as usize;
    let data = random(size);
    // Uploads yield to chat for 3 s after a commit (PROTOCOL.md §11.2), and setting up was
    // chat: the throughput runs start once it has been quiet that long, so they measure
    // transfers on a server without chat (the loaded phase below measures them with it).
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // QUIC: upload until checked, download all, the same file each time.
    let mut quic_up = Transfers::default();
    let mut quic_down = Transfers::default();
    for r in 0..o.repeats {
        let started = Instant::now();
        let m = up
            .client
            .upload(
                files,
                &format!("bench-{r}.bin"),
                "application/octet-stream",
                data.clone(),
                |_, _| {},
            )
            .await?;
        quic_up.push(size as u64, started.elapsed().as_secs_f64());
        let started = Instant::now();
        let got = up.client.download_all(&m.media_id, pb::MediaVariant::Original).await?;
        quic_down.push(size as u64, started.elapsed().as_secs_f64());
        if got[..] != data[..] {
            bail!("QUIC download {r}: the bytes differ");
        }
        eprintln!(
            "  QUIC run {r}: up {:.0} MiB/s, down {:.0} MiB/s",
            quic_up.runs[r], quic_down.runs[r]
        );
    }

    // curl over HTTP to the same server: a tus PATCH of the file (timed until the server
    // checked it, like the QUIC upload) and a GET of it.
    let mut curl_up = Transfers::default();
    let mut curl_down = Transfers::default();
    if let Some(web) = &o.web {
        let token = up.client.snapshot().await?.access_token.context("a token")?;
        let auth = format!("Authorization: Bearer {token}");
        let path = std::env::temp_dir().join(format!("natter-bench-{}.bin", std::process::id()));
        std::fs::write(&path, &data)?;
        let file = path.to_string_lossy().into_owned();
        for r in 0..o.repeats {
            let call = ops::create_upload(
                files,
                size as u64,
                "application/octet-stream",
                &format!("curl-{r}.bin"),
                vec![],
            );
            let info = up.client.call(call).await?;
            let url = format!("{web}/tus/{}", info.upload_id);
            let started = Instant::now();
            curl(&[
                "-X",
                "PATCH",
                "-H",
                &auth,
                "-H",
                "Tus-Resumable: 1.0.0",
                "-H",
                "Upload-Offset: 0",
                "-H",
                "Content-Type: application/offset+octet-stream",
                "-T",
                &file,
                "-o",
                "/dev/null",
                &url,
            ])?;
            let media_id = until_ready(&up.client, &info.upload_id).await?;
            curl_up.push(size as u64, started.elapsed().as_secs_f64());
            let started = Instant::now();
            let got = curl(&[
                "-H",
                &auth,
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                &format!("{web}/media/{media_id}"),
            ])?;
            curl_down.push(size as u64, started.elapsed().as_secs_f64());
            if got.trim() != size.to_string() {
                bail!("curl download {r}: {got} bytes, not {size}");
            }
            eprintln!(
                "  curl run {r}: up {:.0} MiB/s, down {:.0} MiB/s",
                curl_up.runs[r], curl_down.runs[r]
            );
        }
        let _ = std::fs::remove_file(&path);
    }

    // Chat, idle: a1 → b1 — once the disk has written back what the transfers left in
    // the page cache, so the idle figure is idle.
    let _ = Command::new("sync").status();
    let chat = FanoutOpts {
        users: 2,
        group_size: 2,
        senders_per_group: 1,
        rate_per_sender: o.chat_rate,
        secs: o.chat_secs,
    };
    let dm1 = ConversationId(a1.client.direct(&b1.name).await?.conversation_id);
    let r1 = Arc::new(Receipts::default());
    spawn_receiver(b1.events, b1.user_id, r1.clone());
    let idle = run_senders(t, &chat, &[a1.client, b1.client], &[dm1], r1, "media-chat-idle").await?;
    eprintln!("  chat idle: {}", idle.summary());

    // Chat while every loader uploads, again and again, until the phase ends.
    let dm2 = ConversationId(a2.client.direct(&b2.name).await?.conversation_id);
    let r2 = Arc::new(Receipts::default());
    spawn_receiver(b2.events, b2.user_id, r2.clone());
    // The uploaders run in a process of their own at idle priority (see media_load.rs).
    let mut loader = tokio::task::block_in_place(|| Loader::start(t, o.loaded_uploads, o.loaded_upload_mib))?;
    let chat_started = Instant::now();
    let moved_before = tokio::task::block_in_place(|| loader.mark())?;
    let loaded = run_senders(t, &chat, &[a2.client, b2.client], &[dm2], r2, "media-chat-loaded").await?;
    let load_secs = chat_started.elapsed().as_secs_f64();
    let moved_after = tokio::task::block_in_place(|| loader.mark())?;
    let moved_during = moved_after - moved_before;
    let (_, finished) = tokio::task::block_in_place(|| loader.stop())?;
    eprintln!("  chat loaded: {}", loaded.summary());

    let ratio = loaded.latency.p99_ms / idle.latency.p99_ms.max(0.001);
    let extra = serde_json::json!({
        "size_mib": o.size_mib,
        "quic_upload_mib_s": quic_up,
        "quic_download_mib_s": quic_down,
        "curl_upload_mib_s": curl_up,
        "curl_download_mib_s": curl_down,
        "chat_idle": idle.latency,
        "chat_loaded": loaded.latency,
        "chat_p99_loaded_over_idle": ratio,
        "loaded_upload_mib_s_during_chat": moved_during as f64 / (1 << 20) as f64 / load_secs,
        "loaded_uploads_finished": finished,
    });
    Ok(Report {
        scenario: "media".into(),
        params: serde_json::to_value(o)?,
        duration_secs: idle.duration_secs + loaded.duration_secs,
        sent: idle.sent + loaded.sent,
        delivered: idle.delivered + loaded.delivered,
        delivered_per_sec: loaded.delivered_per_sec,
        latency: loaded.latency,
        errors: idle.errors + loaded.errors,
        lost: idle.lost + loaded.lost,
        duplicates: idle.duplicates + loaded.duplicates,
        server_cpu_secs: idle.server_cpu_secs + loaded.server_cpu_secs,
        server_cpu_share: loaded.server_cpu_share,
        server_rss_bytes: loaded.server_rss_bytes,
        client_cpu_share: loaded.client_cpu_share,
        extra,
    })
}
