//! Media on the web endpoint (PROTOCOL.md §11.6) with independent clients: tus-js-client
//! (npm) and tuspy (PyPI) upload through tus 1.0, each interrupted once and resumed from
//! the server's offset; tus refusals with their status codes; `GET /media` with Range,
//! signed URLs and the headers that keep stored files from running as pages.
use crate::common;

use std::process::Command;

use common::media::file;
use common::*;
use natter_protocol::pb::{self, request::Op, response::Result as Res, ErrorCode};

const CHUNK: u32 = 64 * 1024;

struct Alice {
    raw: Raw,
    token: String,
    conv: u64,
}

async fn setup(dir: &std::path::Path) -> (natter_server::RunningServer, Alice) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = natter_server::Config {
        upload_chunk_bytes: CHUNK,
        ..config(dir)
    };
    let s = natter_server::start(&cfg).await.unwrap();
    user(&s, "bob").await;
    let _ = user(&s, "alice").await;
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    let token = match raw
        .request(Op::Login(pb::Login {
            username: "alice".into(),
            password: PASSWORD.into(),
            device_name: "http".into(),
        }))
        .await
    {
        Res::Login(l) => l.access_token,
        other => panic!("{other:?}"),
    };
    let conv = match raw
        .request(Op::CreateDirect(pb::CreateDirect {
            username: "bob".into(),
            encrypted: false,
        }))
        .await
    {
        Res::Conversation(c) => c.conversation_id,
        other => panic!("{other:?}"),
    };
    (s, Alice { raw, token, conv })
}

fn base(s: &natter_server::RunningServer) -> String {
    format!("http://{}", s.web_addr.expect("web endpoint"))
}

async fn upload_of(raw: &mut Raw, id: &str) -> pb::UploadInfo {
    match raw.request(Op::GetUpload(pb::GetUpload { upload_id: id.into() })).await {
        Res::Upload(u) => u,
        other => panic!("{other:?}"),
    }
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Run a client script; its one JSON line.
fn run_client(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().expect("the client runs");
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// tus-js-client and tuspy each upload 1 MiB in 256 KiB PATCHes, stop after the first,
/// and resume from the offset the server reports: the file is complete and intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_and_tuspy_upload_and_resume_through_the_tus_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut alice) = setup(dir.path()).await;
    let data = file(1 << 20, 11);
    let path = dir.path().join("upload.bin");
    std::fs::write(&path, &data).unwrap();
    let endpoint = format!("{}/tus", base(&s));
    let args = [
        endpoint.clone(),
        alice.token.clone(),
        alice.conv.to_string(),
        path.display().to_string(),
        (256 * 1024).to_string(),
    ];

    let mut node = Command::new("node");
    node.arg(repo().join("server/tests/tus/tus_js.mjs")).args(&args);
    let mut python = Command::new(repo().join("target/py/bin/python"));
    python.arg(repo().join("server/tests/tus/tus_py.py")).args(&args);
    for (client, cmd) in [("tus-js-client", node), ("tuspy", python)] {
        let r = tokio::task::spawn_blocking(move || run_client(cmd)).await.unwrap();
        assert_eq!(r["firstOffset"], 262_144, "{client}: the first PATCH was stored: {r}");
        assert_eq!(
            r["resumedFrom"], 262_144,
            "{client}: resumed where the server stood: {r}"
        );
        let url = r["url"].as_str().unwrap();
        let id = url.rsplit('/').next().unwrap();
        let up = upload_of(&mut alice.raw, id).await;
        assert_eq!(
            (up.state(), up.committed),
            (pb::UploadState::Ready, data.len() as u64),
            "{client}"
        );
        assert!(
            common::media::download(&mut alice.raw, &up.media_id, pb::MediaVariant::Original, 0, 0)
                .await
                .unwrap()
                == data,
            "{client}: intact"
        );
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// tus refusals: no `Tus-Resumable` 412, no token 401, another user's upload 403, an
/// offset mismatch 409 (nothing stored), a checksum mismatch 460 (nothing stored), a good
/// checksummed PATCH 204 with the new offset; HEAD tells the offset; DELETE ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_refusals_have_their_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, alice) = setup(dir.path()).await;
    let c = http();
    let endpoint = format!("{}/tus", base(&s));
    let b64 = |v: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v);
    let meta = format!(
        "conversation {},filename {}",
        b64(&alice.conv.to_string()),
        b64("x.bin")
    );
    let auth = format!("Bearer {}", alice.token);

    let opts = c.request(reqwest::Method::OPTIONS, &endpoint).send().await.unwrap();
    assert_eq!(opts.status(), 204);
    assert!(opts.headers()["tus-extension"]
        .to_str()
        .unwrap()
        .contains("creation-with-upload"));

    let r = c
        .post(&endpoint)
        .header("Upload-Length", "1000")
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412, "no Tus-Resumable");
    let r = c
        .post(&endpoint)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = c
        .post(&endpoint)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1000")
        .header("Upload-Metadata", &meta)
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let url = format!("{}{}", base(&s), r.headers()["location"].to_str().unwrap());

    let data = file(1000, 2);
    let patch = |offset: u64, body: Vec<u8>| {
        c.patch(&url)
            .header("Tus-Resumable", "1.0.0")
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", offset.to_string())
            .header("Authorization", &auth)
            .body(body)
    };
    let r = patch(10, data[10..].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 409, "offset mismatch");
    assert_eq!(r.headers()["natter-error"], "OFFSET_MISMATCH");
    let sha1 = |b: &[u8]| b64_bytes(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b).as_ref());
    let r = patch(0, data[..400].to_vec())
        .header("Upload-Checksum", format!("sha1 {}", sha1(b"other")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 460, "checksum mismatch");
    let head = c
        .head(&url)
        .header("Tus-Resumable", "1.0.0")
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["upload-offset"],
        "0",
        "nothing of the refused PATCHes stored"
    );
    let r = patch(0, data[..400].to_vec())
        .header("Upload-Checksum", format!("sha1 {}", sha1(&data[..400])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], "400");

    // Bob may not touch alice's upload.
    let mut bob = Raw::hello(s.addr, &s.fingerprint).await;
    let bob_token = match bob
        .request(Op::Login(pb::Login {
            username: "bob".into(),
            password: PASSWORD.into(),
            device_name: "http".into(),
        }))
        .await
    {
        Res::Login(l) => l.access_token,
        other => panic!("{other:?}"),
    };
    let r = c
        .head(&url)
        .header("Tus-Resumable", "1.0.0")
        .header("Authorization", format!("Bearer {bob_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let r = c
        .delete(&url)
        .header("Tus-Resumable", "1.0.0")
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let head = c
        .head(&url)
        .header("Tus-Resumable", "1.0.0")
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404, "terminated");
}

fn b64_bytes(b: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)
}

/// `GET /media`: 206 with exactly the bytes of several ranges, 416 past the end, the whole
/// file without Range; a signed URL works without a token until it is tampered with; every
/// file is served as an attachment, never sniffed, sandboxed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_served_with_ranges_signed_urls_and_safe_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut alice) = setup(dir.path()).await;
    let c = http();
    let data = file(300_000, 4);
    // Upload it with tus creation-with-upload: one request.
    let b64 = |v: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v);
    let r = c
        .post(format!("{}/tus", base(&s)))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", data.len().to_string())
        .header(
            "Upload-Metadata",
            format!(
                "conversation {},filename {}",
                b64(&alice.conv.to_string()),
                b64("report <1>.bin")
            ),
        )
        .header("Content-Type", "application/offset+octet-stream")
        .header("Authorization", format!("Bearer {}", alice.token))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["upload-offset"], data.len().to_string());
    let media = r.headers()["natter-media-id"].to_str().unwrap().to_string();
    let url = format!("{}/media/{media}", base(&s));
    let auth = format!("Bearer {}", alice.token);

    let whole = c.get(&url).header("Authorization", &auth).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.headers()["x-content-type-options"], "nosniff");
    assert!(whole.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("sandbox"));
    assert_eq!(whole.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        whole.headers()["content-disposition"],
        "attachment; filename*=UTF-8''report%20%3C1%3E.bin"
    );
    assert!(whole.bytes().await.unwrap() == data);
    let n = data.len() as u64;
    for (range, start, end) in [
        ("bytes=0-9", 0u64, 10u64),
        ("bytes=65530-65545", 65_530, 65_546),
        ("bytes=299990-", 299_990, n),
        ("bytes=-7", n - 7, n),
        ("bytes=100000-999999", 100_000, n),
    ] {
        let r = c
            .get(&url)
            .header("Authorization", &auth)
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{}/{n}", end - 1),
            "{range}"
        );
        assert!(
            r.bytes().await.unwrap() == data[start as usize..end as usize],
            "{range}"
        );
    }
    let r = c
        .get(&url)
        .header("Authorization", &auth)
        .header("Range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], format!("bytes */{n}"));

    // Without a token: refused; with a signed URL: served; tampered: refused.
    assert_eq!(c.get(&url).send().await.unwrap().status(), 401);
    let signed = match alice
        .raw
        .request(Op::MediaUrl(pb::MediaUrl {
            media_id: media.clone(),
            variant: 0,
        }))
        .await
    {
        Res::MediaUrl(u) => u,
        other => panic!("{other:?}"),
    };
    let r = c
        .get(format!("{}{}", base(&s), signed.path))
        .header("Range", "bytes=5-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap() == data[5..10]);
    let tampered = signed.path.replace("&u=", "&u=9");
    assert_eq!(
        c.get(format!("{}{}", base(&s), tampered))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Bob is no reader until a message attaches it: his own signed URL cannot be had.
    let mut bob = Raw::hello(s.addr, &s.fingerprint).await;
    bob.login("bob").await;
    let r = bob
        .request(Op::MediaUrl(pb::MediaUrl {
            media_id: media.clone(),
            variant: 0,
        }))
        .await;
    assert!(matches!(&r, Res::Error(e) if e.code() == ErrorCode::NotFound), "{r:?}");
}

/// An HTML-in-JPEG polyglot (a valid JPEG whose comment segment is a page with a script) is
/// accepted as the image it is, and served so that it can never run as a page: as an
/// attachment, `nosniff`, in a `sandbox` CSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polyglot_is_served_as_an_attachment_never_as_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut alice) = setup(dir.path()).await;
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(64, 64, image::Rgb([200, 10, 10])))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let html = b"<html><body><script>document.title='owned'</script></body></html>";
    let mut polyglot = jpeg[..2].to_vec();
    polyglot.extend([0xFF, 0xFE]);
    polyglot.extend(((html.len() + 2) as u16).to_be_bytes());
    polyglot.extend_from_slice(html);
    polyglot.extend_from_slice(&jpeg[2..]);
    let b64 = |v: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v);
    let c = http();
    let r = c
        .post(format!("{}/tus", base(&s)))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", polyglot.len().to_string())
        .header(
            "Upload-Metadata",
            format!(
                "conversation {},filename {},filetype {}",
                b64(&alice.conv.to_string()),
                b64("page.html"),
                b64("image/jpeg")
            ),
        )
        .header("Content-Type", "application/offset+octet-stream")
        .header("Authorization", format!("Bearer {}", alice.token))
        .body(polyglot.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let media = r.headers()["natter-media-id"].to_str().unwrap().to_string();
    let id = r.headers()["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        upload_of(&mut alice.raw, &id).await.state(),
        pb::UploadState::Ready,
        "it is a JPEG"
    );
    let got = c
        .get(format!("{}/media/{media}", base(&s)))
        .header("Authorization", format!("Bearer {}", alice.token))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/jpeg", "never text/html");
    assert_eq!(got.headers()["x-content-type-options"], "nosniff");
    assert!(got.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment;"));
    assert!(got.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("sandbox"));
    assert!(got.bytes().await.unwrap() == polyglot);
}
