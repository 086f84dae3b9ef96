//! Media through natter-sdk and the CLI against the real server on loopback: uploads that
//! survive reconnects, a pause, an app restart (the snapshot) and a cancel; the other
//! member's downloads; the CLI's `send --file` and `download`.
use super::common::media::{file, first_attachment};
use super::common::*;
use super::media_server;
use natter_protocol::client::ops;
use natter_protocol::client::upload::ResumeError;
use natter_protocol::pb::{self, ErrorCode};
use natter_sdk::{Client, ClientError};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_uploads_through_reconnects_and_the_other_member_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let s = media_server(dir.path(), 1 << 30).await;
    let (alice, mut bob, dm) = alice_and_bob(&s).await;
    let data = bytes::Bytes::from(file(8 << 20, 21));
    let client = alice.client.clone();
    let stored = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = stored.clone();
    let upload = tokio::spawn({
        let data = data.clone();
        async move {
            client
                .upload(dm, "movie.bin", "application/octet-stream", data, move |done, _| {
                    seen.fetch_max(done, std::sync::atomic::Ordering::Relaxed);
                })
                .await
        }
    });
    // Drop the connection twice while the upload runs: at 2 MiB and at 5 MiB stored.
    for at in [2u64 << 20, 5 << 20] {
        let until = tokio::time::Instant::now() + DEADLINE;
        while stored.load(std::sync::atomic::Ordering::Relaxed) < at {
            assert!(tokio::time::Instant::now() < until, "upload stalled below {at}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        alice.client.reconnect();
    }
    let info = tokio::time::timeout(DEADLINE * 3, upload)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(info.sha256, Sha256::digest(&data).to_vec(), "the file arrived whole");
    let ack = alice
        .client
        .send_attachments(dm, "", std::slice::from_ref(&info))
        .await
        .unwrap();
    let ev = events_upto(&mut bob.events, dm, ack.seq.0).await;
    let att = first_attachment(&ev).expect("bob received the attachment");
    assert_eq!(
        (att.media_id.as_str(), att.size),
        (info.media_id.as_str(), data.len() as u64)
    );
    let got = bob
        .client
        .download_all(&att.media_id, pb::MediaVariant::Original)
        .await
        .unwrap();
    assert!(got == data[..], "bob downloads it whole");
    let part = bob
        .client
        .download(&att.media_id, pb::MediaVariant::Original, 3_000_000, 1_000)
        .await
        .unwrap();
    assert!(part == data[3_000_000..3_001_000]);
}

/// The CLI: `send --file` uploads a PNG and sends it; the other member sees the attachment
/// in `history` (type, pixel size, thumbnails) and downloads the file and a thumbnail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_a_file_and_the_other_member_downloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = media_server(dir.path(), 1 << 30).await;
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    cli_user(&a, &s, "alice").await;
    cli_user(&b, &s, "bob").await;
    let dm = cli(&a, &["dm", "bob"]).await[0]["conversationId"]
        .as_u64()
        .unwrap()
        .to_string();
    let img = image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([(x / 3) as u8, (y / 2) as u8, 7]));
    let png_path = dir.path().join("photo.png");
    img.save(&png_path).unwrap();
    let png = std::fs::read(&png_path).unwrap();
    let sent = cli(&a, &["send", &dm, "a", "photo", "--file", png_path.to_str().unwrap()]).await;
    let seq = sent[0]["seq"].as_u64().unwrap();
    let history = cli(&b, &["history", &dm]).await;
    let msg = history.iter().find(|v| v["seq"] == seq).expect("bob sees the message");
    assert_eq!(msg["body"]["text"], "a photo");
    let att = &msg["body"]["attachments"][0];
    assert_eq!(
        (att["mime"].as_str(), att["width"].as_u64(), att["height"].as_u64()),
        (Some("image/png"), Some(640), Some(480))
    );
    assert_eq!(
        (att["name"].as_str(), att["size"].as_u64()),
        (Some("photo.png"), Some(png.len() as u64))
    );
    assert_eq!(att["thumbnails"].as_array().map(Vec::len), Some(2));
    let media = att["mediaId"].as_str().unwrap();
    let out = dir.path().join("got.png");
    cli(&b, &["download", media, "--out", out.to_str().unwrap()]).await;
    assert!(std::fs::read(&out).unwrap() == png, "the file, byte for byte");
    let thumb = dir.path().join("thumb.jpg");
    cli(
        &b,
        &["download", media, "--thumb", "320", "--out", thumb.to_str().unwrap()],
    )
    .await;
    let t = image::open(&thumb).unwrap();
    assert_eq!((t.width(), t.height()), (320, 240));
}

/// Waits until `stored` has reached `at` bytes (the upload's progress callback).
async fn until_stored(stored: &AtomicU64, at: u64) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while stored.load(Ordering::Relaxed) < at {
        assert!(tokio::time::Instant::now() < until, "upload stalled below {at}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A pause, an app restart and a resume: while unfinished the upload is in the snapshot
/// (with its size, hash and path); a pause ends the running upload with a typed error and
/// stops its bytes short of the end; a new client built from the snapshot knows it as
/// paused, refuses a different file before a byte moves, and goes on from the server's
/// committed offset (not from 0) to the whole file; then nothing is pending. A cancel ends
/// a running upload, and the server forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_pauses_survives_a_restart_in_the_snapshot_and_resumes_where_it_stood() {
    let dir = tempfile::tempdir().unwrap();
    let s = media_server(dir.path(), 1 << 30).await;
    let (alice, _bob, dm) = alice_and_bob(&s).await;
    // Large enough that no flow-control window holds the rest when the pause comes.
    let data = file(24 << 20, 33);
    let path = dir.path().join("holiday.bin");
    std::fs::write(&path, &data).unwrap();
    let path = path.to_str().unwrap().to_string();

    // The snapshot of the running upload, taken when the first piece is stored; then the
    // pause, from the progress callback (so it comes while most of the file is unsent).
    let (snap_tx, snap_rx) = std::sync::mpsc::channel();
    let upload = tokio::spawn({
        let (client, path) = (alice.client.clone(), path.clone());
        async move {
            let me = client.clone();
            client
                .upload_file(dm, &path, "application/octet-stream", move |done, _| {
                    if done > 0 {
                        for p in me.pending_uploads() {
                            if !p.paused && me.pause_upload(&p.upload_id) {
                                let _ = snap_tx.send(p);
                            }
                        }
                    }
                })
                .await
        }
    });
    let paused = tokio::time::timeout(DEADLINE, upload).await.unwrap().unwrap();
    let p = snap_rx.try_recv().expect("paused once a piece was stored");
    assert_eq!(
        (p.conversation_id, p.name.as_str(), p.size, p.source.as_deref()),
        (dm.0, "holiday.bin", data.len() as u64, Some(path.as_str()))
    );
    assert_eq!(p.sha256, hex::encode(Sha256::digest(&data)));
    let id = p.upload_id.clone();
    assert!(
        matches!(&paused, Err(ClientError::UploadPaused(u)) if *u == id),
        "{paused:?}"
    );
    let at_pause = alice.client.call(ops::get_upload(&id)).await.unwrap();
    assert_eq!(at_pause.state(), pb::UploadState::Uploading);
    assert!(
        at_pause.committed > 0 && at_pause.committed < data.len() as u64,
        "paused part-way: {} of {}",
        at_pause.committed,
        data.len()
    );
    let snap = alice.client.snapshot().await.unwrap();
    assert!(snap.pending_uploads[0].paused, "the snapshot says paused");

    // The app is killed; a new process restores the snapshot.
    alice.client.shutdown().await;
    let mut config = client_config(s.addr, &s.fingerprint, snap.access_token.clone());
    config.pending_uploads = snap.pending_uploads.clone();
    let (again, _events) = Client::connect(config).unwrap();
    assert_eq!(again.pending_uploads(), snap.pending_uploads);
    // Another file is refused before anything is sent: a different size, then the same
    // size with other bytes.
    let shorter = again
        .resume_upload(&id, bytes::Bytes::from(data[1..].to_vec()), |_, _| {})
        .await;
    assert!(
        matches!(shorter, Err(ClientError::Resume(ResumeError::Size { .. }))),
        "{shorter:?}"
    );
    let other = again
        .resume_upload(&id, bytes::Bytes::from(file(data.len(), 34)), |_, _| {})
        .await;
    assert!(
        matches!(other, Err(ClientError::Resume(ResumeError::Hash { .. }))),
        "{other:?}"
    );
    assert!(again.pending_uploads()[0].paused, "still paused after the refusals");
    let unchanged = again.call(ops::get_upload(&id)).await.unwrap();
    assert_eq!(unchanged.committed, at_pause.committed, "nothing moved while paused");

    let first = Arc::new(AtomicU64::new(u64::MAX));
    let seen = first.clone();
    let info = tokio::time::timeout(
        DEADLINE * 3,
        again.resume_upload_file(&id, move |done, _| {
            let _ = seen.compare_exchange(u64::MAX, done, Ordering::Relaxed, Ordering::Relaxed);
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        first.load(Ordering::Relaxed) >= at_pause.committed,
        "resumed from the committed offset {}, not from {}",
        at_pause.committed,
        first.load(Ordering::Relaxed)
    );
    assert_eq!(info.sha256, Sha256::digest(&data).to_vec(), "the file arrived whole");
    assert!(again.pending_uploads().is_empty());
    assert!(again.snapshot().await.unwrap().pending_uploads.is_empty());

    // A cancel while it runs.
    let stored = Arc::new(AtomicU64::new(0));
    let upload = tokio::spawn({
        let (client, seen) = (again.clone(), stored.clone());
        let data = bytes::Bytes::from(file(8 << 20, 35));
        async move {
            client
                .upload(dm, "gone.bin", "application/octet-stream", data, move |done, _| {
                    seen.fetch_max(done, Ordering::Relaxed);
                })
                .await
        }
    });
    until_stored(&stored, 1 << 20).await;
    let id = again.pending_uploads()[0].upload_id.clone();
    again.cancel_upload(&id).await.unwrap();
    let cancelled = tokio::time::timeout(DEADLINE, upload).await.unwrap().unwrap();
    assert!(
        matches!(&cancelled, Err(ClientError::UploadCancelled(u)) if *u == id),
        "{cancelled:?}"
    );
    assert!(again.pending_uploads().is_empty());
    let gone = again.call(ops::get_upload(&id)).await;
    assert_eq!(gone.unwrap_err().code(), Some(ErrorCode::NotFound));
}

/// The CLI keeps an unfinished upload in its profile: `natter upload` killed (`kill -9`)
/// after its first stored piece leaves it to `natter uploads`, and `natter resume` goes on
/// from the stored offset to the whole file; then nothing is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_resumes_an_upload_its_killed_process_left_in_the_profile() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let s = media_server(dir.path(), 1 << 30).await;
    let a = dir.path().join("alice");
    cli_user(&a, &s, "alice").await;
    let group = cli(&a, &["group", "create", "films"]).await[0]["conversationId"]
        .as_u64()
        .unwrap()
        .to_string();
    let data = file(24 << 20, 36);
    let path = dir.path().join("film.bin");
    std::fs::write(&path, &data).unwrap();

    let mut child = tokio::process::Command::new(natter_cli())
        .arg("--profile")
        .arg(&a)
        .args(["upload", &group, path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let killed_at = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done: u64 = line
                .strip_prefix("natter: uploaded ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if done > 0 {
                child.kill().await.unwrap();
                return done;
            }
        }
        panic!("the upload ended without a stored piece")
    })
    .await
    .unwrap();
    assert!(killed_at < data.len() as u64, "killed part-way");

    let pending = cli(&a, &["uploads"]).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (&pending[0]["name"], &pending[0]["size"]),
        (&serde_json::json!("film.bin"), &serde_json::json!(data.len()))
    );
    let id = pending[0]["uploadId"].as_str().unwrap().to_string();
    let mut cmd = std::process::Command::new(natter_cli());
    cmd.arg("--profile").arg(&a).args(["resume", &id]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: u64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("natter: uploaded ")?.split(' ').next()?.parse().ok())
        .expect("progress");
    assert!(
        first >= killed_at,
        "resumed from the stored offset ({killed_at}), not from {first}"
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["sha256"], hex::encode(Sha256::digest(&data)), "the whole file");
    assert!(cli(&a, &["uploads"]).await.is_empty(), "nothing pending");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Client-side encryption: the server stores and serves bytes it cannot read (no window of
/// the plaintext anywhere in its data dir, its SHA-256 is the sealed bytes'), the other
/// member opens the whole file and ranges across chunk boundaries with the key, a wrong key
/// or a range past the end is a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_upload_is_unreadable_on_the_server_and_any_range_opens_with_the_key() {
    use natter_protocol::client::file_crypto::{self, FileCryptoError};
    let dir = tempfile::tempdir().unwrap();
    let s = media_server(dir.path(), 1 << 30).await;
    let (alice, mut bob, dm) = alice_and_bob(&s).await;
    let plain = file(3 * file_crypto::CHUNK_BYTES as usize + 5_000, 37);
    let (media, key) = alice
        .client
        .upload_encrypted(dm, "secret.bin", "application/octet-stream", &plain, |_, _| {})
        .await
        .unwrap();
    assert!(media.encrypted);
    assert_eq!(media.size, file_crypto::encrypted_size(plain.len() as u64));
    assert!(media.thumbnails.is_empty() && media.blurhash.is_empty());
    // What the server holds and serves is not the plaintext.
    for window in [&plain[..64], &plain[100_000..100_064], &plain[plain.len() - 64..]] {
        for f in files_under(dir.path()) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !bytes.windows(64).any(|w| w == window),
                "plaintext found in {}",
                f.display()
            );
        }
    }
    let ack = alice
        .client
        .send_attachments(dm, "", std::slice::from_ref(&media))
        .await
        .unwrap();
    let ev = events_upto(&mut bob.events, dm, ack.seq.0).await;
    let att = first_attachment(&ev).expect("bob received the attachment");
    assert!(att.encrypted);
    let sealed = bob
        .client
        .download_all(&att.media_id, pb::MediaVariant::Original)
        .await
        .unwrap();
    assert_eq!(
        Sha256::digest(&sealed).to_vec(),
        media.sha256,
        "the server's hash is the sealed bytes'"
    );
    assert!(sealed != plain);

    // Bob has the key (from the message, in an encrypted conversation): the whole file and
    // ranges, each fetching only its chunks.
    let key = natter_sdk::FileKey::from_hex(&key.to_hex()).unwrap();
    let whole = bob.client.download_encrypted(&att.media_id, &key, 0, 0).await.unwrap();
    assert!(whole == plain, "the whole file opens");
    let c = file_crypto::CHUNK_BYTES;
    for (offset, length) in [
        (0, 10),
        (c - 5, 10),
        (c, c),
        (2 * c + 17, c + 100),
        (plain.len() as u64 - 1, 0),
    ] {
        let got = bob
            .client
            .download_encrypted(&att.media_id, &key, offset, length)
            .await
            .unwrap();
        let end = if length == 0 {
            plain.len() as u64
        } else {
            offset + length
        };
        assert!(got == plain[offset as usize..end as usize], "{offset}+{length}");
    }
    let wrong = natter_sdk::FileKey::from_random([7; natter_sdk::FileKey::BYTES]);
    let e = bob.client.download_encrypted(&att.media_id, &wrong, c, 10).await;
    assert!(
        matches!(e, Err(ClientError::FileCrypto(FileCryptoError::Corrupt { chunk: 1 }))),
        "{e:?}"
    );
    let e = bob
        .client
        .download_encrypted(&att.media_id, &key, plain.len() as u64, 1)
        .await;
    assert!(
        matches!(e, Err(ClientError::FileCrypto(FileCryptoError::PastEnd { .. }))),
        "{e:?}"
    );
}
