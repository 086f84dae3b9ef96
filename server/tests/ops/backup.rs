//! Backup and restore (docs/OPERATIONS.md): `natter-server backup` against a running node
//! while four clients send; `verify` checks the copy; `restore` into a fresh data
//! directory; the node started on it holds exactly the acknowledged sends up to the
//! snapshot, gap-free, and the file uploaded before it. A damaged backup is refused by
//! name, and a restore never overwrites a database unasked.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use natter_protocol::pb;
use natter_sdk::{ConversationId, HistoryAnchor, Seq};

use crate::common::api::make_key;
use crate::common::media::file;
use crate::common::*;

/// `natter-server ARGS` to completion: (success, stdout JSON lines, stderr).
pub fn server_cli(args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .args(args)
        .env_remove("NATTER_ADMIN_KEY")
        .output()
        .expect("natter-server runs");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_exactly_the_acknowledged_sends_up_to_its_moment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("live");
    let key = make_key(&data, "operator", "admin");
    let s = natter_server::start(&config(&data)).await.unwrap();
    let ops = s.ops_addr.unwrap().to_string();

    // Four users in one group; a file attached before the backup.
    let mut senders = Vec::new();
    for name in ["ann", "bob", "cyd", "dee"] {
        senders.push(user(&s, name).await);
    }
    let group = senders[0]
        .client
        .create_group("load", &["bob", "cyd", "dee"])
        .await
        .unwrap();
    let group = ConversationId(group.conversation_id);
    let bytes = file(100_000, 3);
    let info = senders[0]
        .client
        .upload(
            group,
            "kept.bin",
            "application/octet-stream",
            bytes.clone().into(),
            |_, _| {},
        )
        .await
        .unwrap();
    let with_file = senders[0]
        .client
        .send_attachments(group, "the file", std::slice::from_ref(&info))
        .await
        .unwrap()
        .seq
        .0;

    // Each sends one message after another, recording every acknowledgement, until told
    // to stop (bounded: at most 2,000 each).
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, d) in senders.iter().enumerate() {
        let (client, stop) = (d.client.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let text = format!("sender {i} message {n}");
                let ack = client.send(group, &text).await.expect("acknowledged");
                acked.push((ack.seq.0, text));
            }
            acked
        }));
    }
    // Let the load run, then back up in the middle of it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let backup_dir = dir.path().join("backup");
    let out = tokio::task::spawn_blocking({
        let (ops, key, to) = (ops.clone(), key.clone(), backup_dir.display().to_string());
        move || server_cli(&["backup", "--ops", &ops, "--key", &key, "--to", &to])
    })
    .await
    .unwrap();
    assert!(out.0, "backup failed: {}", out.2);
    let taken = &out.1[0];
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for t in tasks {
        for (seq, text) in t.await.unwrap() {
            assert!(acked.insert(seq, text).is_none(), "two sends acked with one seq");
        }
    }
    assert!(
        taken["events"].as_u64().unwrap() > 0 && taken["files"].as_u64().unwrap() > 0,
        "{taken}"
    );

    // The same backup again into the same directory is refused: a backup never mixes two.
    let again = tokio::task::spawn_blocking({
        let (ops, key, to) = (ops.clone(), key.clone(), backup_dir.display().to_string());
        move || server_cli(&["backup", "--ops", &ops, "--key", &key, "--to", &to])
    })
    .await
    .unwrap();
    assert!(!again.0 && again.2.contains("CONFLICT"), "{}", again.2);
    s.shutdown().await;

    // Verify, restore into a fresh directory, start a node on it.
    let b = backup_dir.display().to_string();
    let (ok, verified, err) = server_cli(&["verify", "--from", &b]);
    assert!(ok, "verify: {err}");
    assert_eq!(verified[0]["events"], taken["events"]);
    let restored = dir.path().join("restored");
    let r = restored.display().to_string();
    let (ok, _, err) = server_cli(&["--data-dir", &r, "restore", "--from", &b]);
    assert!(ok, "restore: {err}");
    let (ok, _, err) = server_cli(&["--data-dir", &r, "restore", "--from", &b]);
    assert!(!ok && err.contains("not empty"), "a second restore over it: {err}");

    let s = natter_server::start(&config(&restored)).await.unwrap();
    let reader = device(s.addr, &s.fingerprint, "ann", false).await;
    let mut history = Vec::new();
    let mut after = 0;
    loop {
        let page = reader
            .client
            .history(group, HistoryAnchor::After(Seq(after)), 200)
            .await
            .unwrap();
        history.extend(page.events.iter().cloned());
        after = history.last().map_or(0, |e| e.seq);
        if !page.has_more {
            break;
        }
    }
    let snapshot = history.last().unwrap().seq;
    let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=snapshot).collect::<Vec<_>>(), "gap-free from 1");
    let restored_msgs: BTreeMap<u64, String> = history
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::conversation_event::Body::Message(m)) if e.seq > with_file => {
                Some((e.seq, m.body.as_ref().unwrap().text.clone()))
            }
            _ => None,
        })
        .collect();
    let acked_then: BTreeMap<u64, String> = acked.range(..=snapshot).map(|(k, v)| (*k, v.clone())).collect();
    assert_eq!(
        restored_msgs, acked_then,
        "the acknowledged sends up to the snapshot, nothing else"
    );
    assert!(
        acked.range(snapshot + 1..).next().is_some() && !acked_then.is_empty(),
        "the backup was taken while sends went on ({} before, {} after)",
        acked_then.len(),
        acked.range(snapshot + 1..).count()
    );
    assert_eq!(
        reader
            .client
            .download_all(&info.media_id, pb::MediaVariant::Original)
            .await
            .unwrap(),
        bytes,
        "the media directory came back too"
    );
    s.shutdown().await;

    // A damaged file is named; so is one that is missing.
    let victim = std::fs::read_dir(backup_dir.join("db/content-keys"))
        .unwrap()
        .flatten()
        .next()
        .expect("a content key")
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let (ok, _, err) = server_cli(&["verify", "--from", &b]);
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(!ok && err.contains(&format!("db/content-keys/{name}")), "{err}");
    std::fs::remove_file(&victim).unwrap();
    let (ok, _, err) = server_cli(&["verify", "--from", &b]);
    assert!(!ok && err.contains("missing"), "{err}");
    let (ok, _, err) = server_cli(&[
        "--data-dir",
        &dir.path().join("third").display().to_string(),
        "restore",
        "--from",
        &b,
    ]);
    assert!(
        !ok && err.contains("missing"),
        "a damaged backup is not restored: {err}"
    );
}
