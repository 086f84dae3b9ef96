//! Media over the raw protocol (PROTOCOL.md §11) against the real server on loopback:
//! resumable uploads on client-opened QUIC streams, range downloads on server-opened
//! ones, attachments, and hostile input — each refusal typed, nothing stored, the server
//! serving others.
use crate::common;
// Uploads and downloads through the SDK and the CLI: pause, restart, resume, cancel.
#[path = "media/sdk.rs"]
mod sdk;

use common::media::{download, file, first_attachment};
use common::*;
use natter_protocol::codec::encode_frame;
use natter_protocol::pb::{self, frame::Kind, request::Op, response::Result as Res, ErrorCode};
use sha2::{Digest, Sha256};

/// Pieces of 64 KiB, so a few MiB make many of them.
const CHUNK: u32 = 64 * 1024;

async fn media_server(dir: &std::path::Path, quota: u64) -> natter_server::RunningServer {
    let cfg = natter_server::Config {
        upload_chunk_bytes: CHUNK,
        media_quota_bytes: quota,
        ..config(dir)
    };
    natter_server::start(&cfg).await.expect("server starts")
}

/// A logged-in raw client.
async fn raw(s: &natter_server::RunningServer, name: &str) -> Raw {
    let mut r = Raw::hello(s.addr, &s.fingerprint).await;
    r.login(name).await;
    r
}

async fn create(r: &mut Raw, conv: u64, data: &[u8], mime: &str, name: &str) -> Result<pb::UploadInfo, pb::Error> {
    match r
        .request(Op::CreateUpload(pb::CreateUpload {
            conversation_id: conv,
            size: data.len() as u64,
            mime: mime.into(),
            name: name.into(),
            encrypted: false,
            sha256: Sha256::digest(data).to_vec(),
        }))
        .await
    {
        Res::Upload(u) => Ok(u),
        Res::Error(e) => Err(e),
        other => panic!("unexpected {other:?}"),
    }
}

async fn get_upload(r: &mut Raw, id: &str) -> Result<pb::UploadInfo, pb::Error> {
    match r.request(Op::GetUpload(pb::GetUpload { upload_id: id.into() })).await {
        Res::Upload(u) => Ok(u),
        Res::Error(e) => Err(e),
        other => panic!("unexpected {other:?}"),
    }
}

/// Open an upload stream at `offset` and write `bytes`; `finish` ends it cleanly, else it
/// is reset (a cut).
async fn stream(r: &Raw, id: &str, offset: u64, bytes: &[u8], finish: bool) {
    let s = open_and_write(r, id, offset, bytes).await;
    end(s, finish).await;
}

async fn open_and_write(r: &Raw, id: &str, offset: u64, bytes: &[u8]) -> quinn::SendStream {
    let mut s = r.conn.open_uni().await.unwrap();
    let header = encode_frame(&pb::Frame {
        kind: Some(Kind::UploadHeader(pb::UploadHeader {
            upload_id: id.into(),
            offset,
        })),
    });
    s.write_all(&header).await.unwrap();
    // The server may stop the stream early (a refusal): writes then fail, which is fine.
    let _ = s.write_all(bytes).await;
    s
}

/// Open an upload stream at `offset`, write `bytes`, and wait until `stored` bytes are
/// reported durable. A stream of an earlier connection that is still open on the server
/// (one that vanished without a close) must not stand in the way: the newest stream takes
/// the upload over, so any refusal fails the test.
async fn write_until_stored(r: &mut Raw, id: &str, offset: u64, bytes: &[u8], stored: u64) -> quinn::SendStream {
    let s = open_and_write(r, id, offset, bytes).await;
    let p = progress_until(r, |p| p.committed == stored || p.error != 0).await;
    assert_eq!(p.error, 0, "the stream at {offset} was refused: {p:?}");
    s
}

/// The report that follows a reset upload stream (PROTOCOL.md §11.2): where the upload
/// stands — the whole pieces stored — and no error, since a reset is a pause, not a refusal.
async fn cut_reported(r: &mut Raw, stored: u64) {
    let p = progress_until(r, |_| true).await;
    assert_eq!(
        (p.committed, p.error, p.state()),
        (stored, 0, pb::UploadState::Uploading),
        "{p:?}"
    );
}

async fn end(mut s: quinn::SendStream, finish: bool) {
    if finish {
        let _ = s.finish();
        let _ = s.stopped().await;
    } else {
        let _ = s.reset(quinn::VarInt::from_u32(0));
    }
}

/// `upload_bytes_per_sec` holds every upload to the ceiling (chat_first.rs), read slower
/// than sent: the sender is held back by flow control and every piece still arrives.
#[tokio::test]
async fn uploads_are_read_no_faster_than_the_configured_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let rate: u64 = 256 * 1024;
    let cfg = natter_server::Config {
        upload_chunk_bytes: CHUNK,
        uploads_yield_to_chat: false,
        upload_bytes_per_sec: rate,
        ..config(dir.path())
    };
    let s = natter_server::start(&cfg).await.unwrap();
    let _alice_app = user(&s, "alice").await;
    user(&s, "bob").await;
    let mut alice = raw(&s, "alice").await;
    let conv = dm(&mut alice, "bob").await;
    let data = file(1 << 20, 11);
    let up = create(&mut alice, conv, &data, "application/octet-stream", "slow.bin")
        .await
        .unwrap();
    stream(&alice, &up.upload_id, 0, &data, true).await;
    progress_until(&mut alice, |p| p.committed >= u64::from(CHUNK)).await;
    let first = std::time::Instant::now();
    let done = progress_until(&mut alice, |p| p.committed == data.len() as u64).await;
    // The rest (15 pieces) at 256 KiB/s takes 3.75 s; a short burst and the sleep
    // granularity allowed for, no less than 3 s.
    let took = first.elapsed();
    assert!(took >= std::time::Duration::from_secs(3), "read 960 KiB in {took:?}");
    assert_eq!(done.error, 0, "{done:?}");
    let ready = match done.state() {
        pb::UploadState::Ready => done,
        _ => progress_until(&mut alice, |p| p.state() == pb::UploadState::Ready || p.error != 0).await,
    };
    let media = ready.media.expect("the finished file");
    assert_eq!(media.sha256, Sha256::digest(&data).to_vec());
}

/// Control-stream upload reports until one matches `until`.
async fn progress_until(r: &mut Raw, mut until: impl FnMut(&pb::UploadProgress) -> bool) -> pb::UploadProgress {
    loop {
        match r.read().await {
            Some(pb::Frame {
                kind:
                    Some(Kind::Signal(pb::Signal {
                        kind: Some(pb::signal::Kind::Upload(p)),
                    })),
            }) if until(&p) => return p,
            Some(_) => continue,
            None => panic!("connection ended while waiting for upload progress"),
        }
    }
}

async fn dm(r: &mut Raw, peer: &str) -> u64 {
    match r
        .request(Op::CreateDirect(pb::CreateDirect {
            username: peer.into(),
            encrypted: false,
        }))
        .await
    {
        Res::Conversation(c) => c.conversation_id,
        other => panic!("unexpected {other:?}"),
    }
}

async fn send(r: &mut Raw, conv: u64, id: &str, attachments: Vec<pb::Attachment>) -> Res {
    r.request(Op::Send(pb::SendMessage {
        conversation_id: conv,
        client_msg_id: id.into(),
        body: Some(pb::MessageBody {
            text: "see attached".into(),
            attachments,
            ..Default::default()
        }),
    }))
    .await
}

fn attach(media: &str) -> pb::Attachment {
    pb::Attachment {
        media_id: media.into(),
        ..Default::default()
    }
}

/// A 3 MiB upload cut four times — streams reset at arbitrary offsets and once the whole
/// connection dropped — resumes each time from the committed offset (always a piece
/// boundary no further than what was sent), and the file downloads byte for byte, whole
/// and in ranges, also by the other member once a message attaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_resumes_from_the_committed_offset_and_downloads_intact() {
    let dir = tempfile::tempdir().unwrap();
    let s = media_server(dir.path(), 1 << 30).await;
    let _alice_app = user(&s, "alice").await;
    user(&s, "bob").await;
    let mut alice = raw(&s, "alice").await;
    let conv = dm(&mut alice, "bob").await;
    let data = file(3 << 20, 7);
    let up = create(&mut alice, conv, &data, "application/octet-stream", "data.bin")
        .await
        .unwrap();
    assert_eq!(
        (up.committed, up.chunk_bytes, up.state()),
        (0, CHUNK, pb::UploadState::Uploading)
    );

    let mut committed = 0u64;
    for (i, cut) in [200_000usize, 777_777, 1_500_001, 2_600_000].into_iter().enumerate() {
        let sent = &data[committed as usize..cut];
        let stored = cut as u64 / u64::from(CHUNK) * u64::from(CHUNK);
        // Every whole piece sent is reported stored; the partial one after it is in flight
        // when the cut comes, and lost.
        let s_up = write_until_stored(&mut alice, &up.upload_id, committed, sent, stored).await;
        if i == 2 {
            // A dropped connection instead of a reset stream.
            alice.conn.close(0u32.into(), b"gone");
            drop(s_up);
            alice = raw(&s, "alice").await;
        } else {
            end(s_up, false).await;
            cut_reported(&mut alice, stored).await;
        }
        let now = get_upload(&mut alice, &up.upload_id).await.unwrap().committed;
        assert_eq!(
            now, stored,
            "cut {i}: the whole pieces sent, nothing of the partial one"
        );
        committed = now;
    }
    stream(&alice, &up.upload_id, committed, &data[committed as usize..], true).await;
    let done = progress_until(&mut alice, |p| p.state() == pb::UploadState::Ready || p.error != 0).await;
    assert_eq!(done.error, 0, "{done:?}");
    let info = done.media.expect("a ready upload reports its file");
    assert_eq!(info.sha256, Sha256::digest(&data).to_vec());
    assert_eq!(
        (info.size, info.mime.as_str()),
        (data.len() as u64, "application/octet-stream")
    );

    let all = download(&mut alice, &up.media_id, pb::MediaVariant::Original, 0, 0)
        .await
        .unwrap();
    assert!(all == data, "the whole file, byte for byte");
    for (off, len) in [
        (0u64, 10u64),
        (65_530, 20),
        (1_000_000, 300_000),
        (data.len() as u64 - 5, 5),
        (data.len() as u64 - 5, 100),
    ] {
        let got = download(&mut alice, &up.media_id, pb::MediaVariant::Original, off, len)
            .await
            .unwrap();
        let end = (off + len).min(data.len() as u64) as usize;
        assert!(got == data[off as usize..end], "range {off}+{len}");
    }
    let past = download(
        &mut alice,
        &up.media_id,
        pb::MediaVariant::Original,
        data.len() as u64 + 1,
        1,
    )
    .await;
    assert_eq!(past.unwrap_err().code(), ErrorCode::BadRequest);

    // Bob may read it once a message in their conversation attaches it, not before.
    let mut bob = raw(&s, "bob").await;
    let before = download(&mut bob, &up.media_id, pb::MediaVariant::Original, 0, 10).await;
    assert_eq!(before.unwrap_err().code(), ErrorCode::NotFound);
    let sent = send(&mut alice, conv, "m1", vec![attach(&up.media_id)]).await;
    assert!(matches!(sent, Res::Sent(_)), "{sent:?}");
    let got = download(&mut bob, &up.media_id, pb::MediaVariant::Original, 1_000, 4_000)
        .await
        .unwrap();
    assert!(got == data[1_000..5_000]);
    // The stored attachment is what the server knows of the file, not what the sender said.
    let page = match bob
        .request(Op::History(pb::GetHistory {
            conversation_id: conv,
            anchor: None,
            limit: 0,
        }))
        .await
    {
        Res::History(h) => h,
        other => panic!("{other:?}"),
    };
    let att = first_attachment(&page.events).expect("the message carries its attachment");
    assert_eq!(
        (att.media_id.as_str(), att.size, att.name.as_str()),
        (up.media_id.as_str(), data.len() as u64, "data.bin")
    );
}

/// A PNG gets its pixel size, a BlurHash and two JPEG thumbnails that download as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_gets_thumbnails_and_a_blurhash() {
    let dir = tempfile::tempdir().unwrap();
    let s = media_server(dir.path(), 1 << 30).await;
    let _alice_app = user(&s, "alice").await;
    user(&s, "bob").await;
    let mut alice = raw(&s, "alice").await;
    let conv = dm(&mut alice, "bob").await;
    let img = image::RgbImage::from_fn(1000, 500, |x, y| image::Rgb([(x / 4) as u8, (y / 2) as u8, 90]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let up = create(&mut alice, conv, &png, "image/png", "photo.png").await.unwrap();
    stream(&alice, &up.upload_id, 0, &png, true).await;
    let done = progress_until(&mut alice, |p| p.state() == pb::UploadState::Ready || p.error != 0).await;
    assert_eq!(done.error, 0, "{done:?}");
    let info = done.media.expect("a ready upload reports its file");
    assert_eq!((info.width, info.height, info.mime.as_str()), (1000, 500, "image/png"));
    assert!(!info.blurhash.is_empty());
    let sizes: Vec<(u32, u32)> = info.thumbnails.iter().map(|t| (t.width, t.height)).collect();
    assert_eq!(sizes, [(320, 160), (800, 400)]);
    let thumb = download(&mut alice, &up.media_id, pb::MediaVariant::Thumb320, 0, 0)
        .await
        .unwrap();
    let decoded = image::load_from_memory_with_format(&thumb, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 160));
}

/// A PNG whose header (CRC intact) claims `side` × `side` pixels.
fn bomb_png(side: u32) -> Vec<u8> {
    let mut p = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(1, 1))
        .write_to(&mut std::io::Cursor::new(&mut p), image::ImageFormat::Png)
        .unwrap();
    p[16..20].copy_from_slice(&side.to_be_bytes());
    p[20..24].copy_from_slice(&side.to_be_bytes());
    let mut c = 0xffff_ffffu32;
    for b in &p[12..29] {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    p[29..33].copy_from_slice(&(!c).to_be_bytes());
    p
}

fn media_dir_holds(dir: &std::path::Path, media: &str) -> bool {
    dir.join("media").join("media").join(media).exists()
}

/// Hostile uploads and reads, each refused with its typed error, nothing of them kept,
/// and the server still serving a well-behaved upload afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_get_typed_errors_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = media_server(dir.path(), 1 << 20).await;
    let _alice_app = user(&s, "alice").await;
    user(&s, "bob").await;
    user(&s, "carol").await;
    let mut alice = raw(&s, "alice").await;
    let conv = dm(&mut alice, "bob").await;

    // A file name that is a path.
    let e = create(&mut alice, conv, b"x", "text/plain", "../../etc/passwd")
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    // More than the quota (1 MiB here).
    let e = create(
        &mut alice,
        conv,
        &file((1 << 20) + 1, 1),
        "application/octet-stream",
        "big",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::QuotaExceeded);
    // A conversation the caller is not in.
    let mut carol = raw(&s, "carol").await;
    let e = create(&mut carol, conv, b"x", "text/plain", "x.txt").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotMember);

    // An offset lie: the stream is refused, nothing moves.
    let data = file(200_000, 3);
    let up = create(&mut alice, conv, &data, "application/octet-stream", "d.bin")
        .await
        .unwrap();
    stream(&alice, &up.upload_id, 5, &data[5..], true).await;
    let p = progress_until(&mut alice, |p| p.error != 0).await;
    assert_eq!(p.error(), ErrorCode::OffsetMismatch);
    assert_eq!(get_upload(&mut alice, &up.upload_id).await.unwrap().committed, 0);

    // Someone else's upload id.
    stream(&carol, &up.upload_id, 0, &data, true).await;
    let p = progress_until(&mut carol, |p| p.error != 0).await;
    assert_eq!(p.error(), ErrorCode::Forbidden);
    assert_eq!(
        get_upload(&mut carol, &up.upload_id).await.unwrap_err().code(),
        ErrorCode::Forbidden
    );
    assert_eq!(get_upload(&mut alice, &up.upload_id).await.unwrap().committed, 0);

    // Sending it before it is finished.
    let r = send(&mut alice, conv, "early", vec![attach(&up.media_id)]).await;
    assert!(
        matches!(&r, Res::Error(e) if e.code() == ErrorCode::MediaNotReady),
        "{r:?}"
    );

    // More bytes than declared: rejected, and the upload is gone with its bytes.
    let mut long = data.clone();
    long.extend_from_slice(b"one more thing");
    stream(&alice, &up.upload_id, 0, &long, true).await;
    let p = progress_until(&mut alice, |p| p.error != 0).await;
    assert_eq!((p.error(), p.state()), (ErrorCode::TooLarge, pb::UploadState::Rejected));
    assert_eq!(
        get_upload(&mut alice, &up.upload_id).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert!(!media_dir_holds(dir.path(), &up.media_id), "no byte of it is kept");

    // A decompression bomb.
    let bomb = bomb_png(60_000);
    let up = create(&mut alice, conv, &bomb, "image/png", "bomb.png").await.unwrap();
    stream(&alice, &up.upload_id, 0, &bomb, true).await;
    let p = progress_until(&mut alice, |p| p.error != 0).await;
    assert_eq!(
        (p.error(), p.state()),
        (ErrorCode::MediaRejected, pb::UploadState::Rejected)
    );
    assert!(!media_dir_holds(dir.path(), &up.media_id));

    // Bytes that contradict the declared type.
    let up = create(&mut alice, conv, &bomb, "application/pdf", "doc.pdf")
        .await
        .unwrap();
    stream(&alice, &up.upload_id, 0, &bomb, true).await;
    let p = progress_until(&mut alice, |p| p.error != 0).await;
    assert_eq!(p.error(), ErrorCode::MediaRejected);

    // Rejected uploads gave their quota back: a well-behaved upload of most of it works,
    // and is attached; carol, no member, cannot read it, nor attach it herself.
    let good = file(900_000, 9);
    let up = create(&mut alice, conv, &good, "application/octet-stream", "ok.bin")
        .await
        .unwrap();
    stream(&alice, &up.upload_id, 0, &good, true).await;
    let p = progress_until(&mut alice, |p| p.state() == pb::UploadState::Ready || p.error != 0).await;
    assert_eq!(p.error, 0, "{p:?}");
    assert!(matches!(
        send(&mut alice, conv, "ok", vec![attach(&up.media_id)]).await,
        Res::Sent(_)
    ));
    let e = download(&mut carol, &up.media_id, pb::MediaVariant::Original, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    let carol_dm = dm(&mut carol, "alice").await;
    let r = send(&mut carol, carol_dm, "steal", vec![attach(&up.media_id)]).await;
    assert!(matches!(&r, Res::Error(e) if e.code() == ErrorCode::NotFound), "{r:?}");
    let mut bob = raw(&s, "bob").await;
    assert!(
        download(&mut bob, &up.media_id, pb::MediaVariant::Original, 0, 0)
            .await
            .unwrap()
            == good
    );
}

/// An upload left unfinished past its expiry is deleted with its bytes, and its quota is
/// free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_upload_expires_with_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = natter_server::Config {
        upload_chunk_bytes: CHUNK,
        upload_expiry_secs: 1,
        media_quota_bytes: 300_000,
        ..config(dir.path())
    };
    let s = natter_server::start(&cfg).await.unwrap();
    let _alice_app = user(&s, "alice").await;
    user(&s, "bob").await;
    let mut alice = raw(&s, "alice").await;
    let conv = dm(&mut alice, "bob").await;
    let data = file(200_000, 5);
    let up = create(&mut alice, conv, &data, "application/octet-stream", "half.bin")
        .await
        .unwrap();
    stream(&alice, &up.upload_id, 0, &data[..100_000], true).await;
    progress_until(&mut alice, |p| p.committed == u64::from(CHUNK)).await;
    assert!(media_dir_holds(dir.path(), &up.media_id));
    // Its quota is taken: a second file of the same size does not fit.
    let e = create(&mut alice, conv, &data, "application/octet-stream", "b.bin")
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::QuotaExceeded);
    let until = tokio::time::Instant::now() + DEADLINE;
    while get_upload(&mut alice, &up.upload_id).await.is_ok() {
        assert!(tokio::time::Instant::now() < until, "expired upload still there");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!media_dir_holds(dir.path(), &up.media_id), "its bytes went with it");
    create(&mut alice, conv, &data, "application/octet-stream", "b.bin")
        .await
        .expect("quota given back");
}

/// The Rust SDK: an 8 MiB upload whose connection is dropped twice on the way resumes by
/// itself and arrives whole; bob receives the message with its attachment and downloads the
/// file (whole and a range) through the SDK.
/// moto's S3 server (PyPI `moto[server]`, in `target/py` as `scripts/test.sh` installs it)
/// on a free loopback port, with one bucket.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    async fn start(bucket: &str) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/moto_server");
        let child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts (scripts/test.sh installs it): {e}", bin.display()));
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let until = tokio::time::Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < until, "moto_server did not listen");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = reqwest::Client::new()
            .put(format!("{}/{bucket}", moto.endpoint))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "bucket created: {}", r.status());
        moto
    }
}

async fn register_raw(s_addr: std::net::SocketAddr, fp: &str, name: &str) {
    let mut r = Raw::hello(s_addr, fp).await;
    let res = r
        .request(Op::Register(pb::Register {
            username: name.into(),
            password: PASSWORD.into(),
        }))
        .await;
    assert!(matches!(res, Res::Register(_)), "{res:?}");
}

async fn raw_at(addr: std::net::SocketAddr, fp: &str, name: &str) -> Raw {
    let mut r = Raw::hello(addr, fp).await;
    r.login(name).await;
    r
}

/// Three nodes on Redis with media on a real S3-compatible server (moto): an upload begun
/// on node 1 is resumed on node 2 after node 1 is killed (`kill -9`), from the offset the
/// pieces in S3 and the record in Redis say; node 3 serves the finished file to the other
/// member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_three_nodes_an_upload_moves_to_another_node_and_a_third_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let redis = natter_server::store::testredis::TestRedis::start();
    let moto = Moto::start("natter-media").await;
    let config = dir.path().join("natter.toml");
    std::fs::write(
        &config,
        format!(
            "storage = \"redis\"\nredis_urls = [\"{}\"]\nupload_chunk_bytes = {CHUNK}\n\n[s3]\nendpoint = \"{}\"\nbucket = \"natter-media\"\nregion = \"us-east-1\"\naccess_key = \"test\"\nsecret_key = \"test\"\n",
            redis.url(),
            moto.endpoint
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut nodes: Vec<ServerProcess> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| spawn_server_binary_with(dir.path(), "127.0.0.1:0", &["--config", cfg, "--node-id", id]))
        .collect();
    let fp = nodes[0].fingerprint.clone();
    register_raw(nodes[0].addr, &fp, "alice").await;
    register_raw(nodes[0].addr, &fp, "bob").await;
    let mut alice = raw_at(nodes[0].addr, &fp, "alice").await;
    let conv = dm(&mut alice, "bob").await;
    let data = file(2 << 20, 33);
    let up = create(&mut alice, conv, &data, "application/octet-stream", "moved.bin")
        .await
        .unwrap();
    let half = 1 << 20;
    let s_up = open_and_write(&alice, &up.upload_id, 0, &data[..half + 1000]).await;
    progress_until(&mut alice, |p| p.committed == half as u64).await;
    nodes[0].child.kill().unwrap();
    nodes[0].child.wait().unwrap();
    drop(s_up);

    let mut alice = raw_at(nodes[1].addr, &fp, "alice").await;
    let st = get_upload(&mut alice, &up.upload_id).await.unwrap();
    assert_eq!(
        st.committed, half as u64,
        "node 2 sees what node 1 stored, not the piece in flight"
    );
    stream(
        &alice,
        &up.upload_id,
        st.committed,
        &data[st.committed as usize..],
        true,
    )
    .await;
    let done = progress_until(&mut alice, |p| p.state() == pb::UploadState::Ready || p.error != 0).await;
    assert_eq!(done.error, 0, "{done:?}");
    assert_eq!(
        done.media.unwrap().sha256,
        Sha256::digest(&data).to_vec(),
        "whole, across two nodes"
    );
    assert!(matches!(
        send(&mut alice, conv, "moved", vec![attach(&up.media_id)]).await,
        Res::Sent(_)
    ));

    let mut bob = raw_at(nodes[2].addr, &fp, "bob").await;
    let got = download(&mut bob, &up.media_id, pb::MediaVariant::Original, 0, 0)
        .await
        .unwrap();
    assert!(got == data, "node 3 serves the file byte for byte");
    let part = download(&mut bob, &up.media_id, pb::MediaVariant::Original, 1_000_000, 100_000)
        .await
        .unwrap();
    assert!(part == data[1_000_000..1_100_000]);
    // The pieces are objects in the bucket, none on the nodes' (shared) data dir.
    assert!(!media_dir_holds(dir.path(), &up.media_id), "nothing on a node's disk");
    let listing = reqwest::Client::new()
        .get(format!(
            "{}/natter-media?list-type=2&prefix=media/{}/p/",
            moto.endpoint, up.media_id
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        listing.matches("<Key>").count(),
        data.len() / CHUNK as usize,
        "one object per piece: {listing}"
    );
}

/// A logged-in raw client whose datagrams pass a relay of its own, so that its connection
/// can vanish (no close, no packet more) while the server still holds it open.
async fn raw_via_relay(addr: std::net::SocketAddr, fp: &str, name: &str) -> (common::relay::Relay, Raw) {
    let relay = common::relay::Relay::start(addr).await;
    let r = raw_at(relay.addr, fp, name).await;
    (relay, r)
}

/// The acceptance run: a 50 MiB upload to the server binary (1 MiB pieces), cut six times
/// at pseudo-random offsets — a stream reset, a connection that vanishes mid-piece (the
/// server holds it until its idle timeout; the next connection's stream takes the upload
/// over at once) and `kill -9` of the server with a restart on the same data dir, in turn;
/// every attempt resumes at the committed offset, and the download hashes equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_cut_six_times_by_resets_vanished_connections_and_kill_9_downloads_intact() {
    const PIECE: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server_binary(dir.path(), "127.0.0.1:0");
    let (addr, fp) = (server.addr, server.fingerprint.clone());
    register_raw(addr, &fp, "alice").await;
    register_raw(addr, &fp, "bob").await;
    let (mut relay, mut alice) = raw_via_relay(addr, &fp, "alice").await;
    let conv = dm(&mut alice, "bob").await;
    let data = file(50 << 20, 50);
    let up = create(&mut alice, conv, &data, "application/octet-stream", "fifty.bin")
        .await
        .unwrap();
    assert_eq!(up.chunk_bytes as usize, PIECE);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut committed = 0usize;
    for i in 0..6 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Somewhere in the next 3–9 MiB, never on a piece boundary.
        let cut = committed + (3 << 20) + (rng % (6 << 20)) as usize + 1;
        let stored = cut / PIECE * PIECE;
        let s_up = write_until_stored(
            &mut alice,
            &up.upload_id,
            committed as u64,
            &data[committed..cut],
            stored as u64,
        )
        .await;
        match i % 3 {
            0 => {
                end(s_up, false).await;
                cut_reported(&mut alice, stored as u64).await;
            }
            1 => {
                relay.blackhole(true);
                drop(s_up);
                (relay, alice) = raw_via_relay(addr, &fp, "alice").await;
            }
            _ => {
                server.child.kill().unwrap();
                server.child.wait().unwrap();
                drop(s_up);
                server = spawn_server_binary(dir.path(), &addr.to_string());
                (relay, alice) = raw_via_relay(addr, &fp, "alice").await;
            }
        }
        let now = get_upload(&mut alice, &up.upload_id).await.unwrap().committed as usize;
        assert_eq!(now, stored, "cut {i} at {cut}: the whole pieces sent, nothing more");
        committed = now;
    }
    stream(&alice, &up.upload_id, committed as u64, &data[committed..], true).await;
    let done = progress_until(&mut alice, |p| p.state() == pb::UploadState::Ready || p.error != 0).await;
    assert_eq!(done.error, 0, "{done:?}");
    let got = download(&mut alice, &up.media_id, pb::MediaVariant::Original, 0, 0)
        .await
        .unwrap();
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&data),
        "the downloaded bytes hash equal"
    );
}

/// A stream that carried every declared byte but then stays open, or is reset, does not
/// hold the file back: it is processed and ready either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_stream_that_never_ends_cleanly_still_completes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = media_server(dir.path(), 1 << 30).await;
    let _alice_app = user(&s, "alice").await;
    user(&s, "bob").await;
    let mut alice = raw(&s, "alice").await;
    let conv = dm(&mut alice, "bob").await;
    for (i, reset) in [false, true].into_iter().enumerate() {
        let data = file(150_000, 60 + i as u64);
        let up = create(&mut alice, conv, &data, "application/octet-stream", "open.bin")
            .await
            .unwrap();
        let s_up = open_and_write(&alice, &up.upload_id, 0, &data).await;
        progress_until(&mut alice, |p| p.committed == data.len() as u64).await;
        if reset {
            end(s_up, false).await;
        }
        let done = progress_until(&mut alice, |p| p.state() == pb::UploadState::Ready || p.error != 0).await;
        assert_eq!(done.error, 0, "reset {reset}: {done:?}");
        assert_eq!(done.media.unwrap().sha256, Sha256::digest(&data).to_vec());
    }
}
