//! Files in the browser (PROTOCOL.md §11): the web chat's drag-and-drop with BlurHash
//! placeholder, thumbnail and full-size viewer; natter-wasm's `upload` over WebTransport
//! (an upload stream) and over WebSocket (tus PATCHes), checked byte for byte by a native
//! client; and Chromium's own `<video>` seeking in a served WebM through HTTP Range.
use super::*;
use natter_protocol::pb;
use sha2::{Digest, Sha256};

/// `hex(bytes)` and `sha(bytes)` for page scripts.
const HELPERS: &str = "const hex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, '0')).join('');
     const sha = async (b) => hex(await crypto.subtle.digest('SHA-256', b));";

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The page's requests for /media/ and /tus/: (method, url, range, status).
async fn media_requests(b: &mut Browser, page: &str) -> Vec<(String, String, Option<String>, u16)> {
    let v = b.cmd(json!({"op": "mediaRequests", "page": page})).await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_string(),
                r["url"].as_str().unwrap().to_string(),
                r["range"].as_str().map(String::from),
                r["status"].as_u64().unwrap() as u16,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_dropped_in_one_browser_shows_placeholder_then_thumbnail_then_full_size_in_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    b.open("alice", &page_url(&s, "webtransport")).await;
    b.open("bob", &page_url(&s, "websocket")).await;
    sign_up(&mut b, "alice", "alice", "webtransport").await;
    sign_up(&mut b, "bob", "bob", "websocket").await;

    b.fill("alice", "#dm-user", "bob").await;
    b.click("alice", "#new-dm button").await;
    b.wait("alice", "#composer:not([hidden])").await;
    let conv = b.eval("alice", "return window.natter.active;").await.as_u64().unwrap();
    b.wait_fn("bob", &format!("window.natter.convs.get({conv})?.summary.kind"))
        .await;
    b.click("bob", &format!("#conversations [data-conversation='{conv}']"))
        .await;
    b.wait("bob", "#composer:not([hidden])").await;

    // Bob's page records each state its image attachment goes through.
    b.eval(
        "bob",
        "window.attStates = [];
         new MutationObserver((ms) => { for (const m of ms) {
           if (m.type === 'attributes') window.attStates.push(m.target.dataset.state);
           for (const n of m.addedNodes) if (n.querySelectorAll) for (const f of n.querySelectorAll('.att.image'))
             window.attStates.push(f.dataset.state + (f.querySelector('canvas.blurhash') ? '+blurhash' : ''));
         } }).observe(document.getElementById('message-list'), { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'] });
         return true;",
    )
    .await;

    // Alice drops a 1200×800 PNG on the conversation; her page records the progress bar.
    let dropped = b
        .eval(
            "alice",
            &format!(
                "{HELPERS}
                 const c = document.createElement('canvas'); c.width = 1200; c.height = 800;
                 const g = c.getContext('2d');
                 const grad = g.createLinearGradient(0, 0, 1200, 800);
                 grad.addColorStop(0, '#e33'); grad.addColorStop(1, '#33e');
                 g.fillStyle = grad; g.fillRect(0, 0, 1200, 800);
                 g.fillStyle = '#ff0'; g.beginPath(); g.arc(600, 400, 200, 0, 7); g.fill();
                 const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
                 const file = new File([blob], 'sunset.png', {{ type: 'image/png' }});
                 window.progress = [];
                 new MutationObserver((ms) => {{ for (const m of ms) window.progress.push(Number(m.target.dataset.stored)); }})
                   .observe(document.getElementById('uploads'), {{ subtree: true, attributes: true, attributeFilter: ['data-stored'] }});
                 const dt = new DataTransfer(); dt.items.add(file);
                 const chat = document.getElementById('chat');
                 const over = new DragEvent('dragover', {{ dataTransfer: dt, bubbles: true, cancelable: true }});
                 chat.dispatchEvent(over);
                 chat.dispatchEvent(new DragEvent('drop', {{ dataTransfer: dt, bubbles: true, cancelable: true }}));
                 return {{ size: file.size, sha: await sha(await file.arrayBuffer()), accepted: over.defaultPrevented }};"
            ),
        )
        .await;
    assert_eq!(dropped["accepted"], true, "the page takes the drag");
    let size = dropped["size"].as_u64().unwrap();

    // Both pages show it: Bob's went from the BlurHash placeholder to the thumbnail.
    b.wait("alice", "#message-list .att.image[data-state=thumbnail]").await;
    b.wait("bob", "#message-list .att.image[data-state=thumbnail]").await;
    let states: Vec<String> = serde_json::from_value(b.eval("bob", "return window.attStates;").await).unwrap();
    assert_eq!(
        states.first().map(String::as_str),
        Some("placeholder+blurhash"),
        "drawn first as its placeholder: {states:?}"
    );
    assert_eq!(states.last().map(String::as_str), Some("thumbnail"), "{states:?}");
    let thumb = b
        .eval(
            "bob",
            "const i = document.querySelector('#message-list .att.image img');
             return [i.naturalWidth, i.naturalHeight, i.dataset.variant];",
        )
        .await;
    assert_eq!(
        thumb,
        json!([320, 213, "thumb320"]),
        "the 320 thumbnail, not the original"
    );

    // A click opens the full image.
    b.click("bob", "#message-list .att.image img").await;
    let full = b
        .wait_fn(
            "bob",
            "(() => { const i = document.querySelector('#viewer:not([hidden]) img');
                      return i && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight]; })()",
        )
        .await;
    assert_eq!(full, json!([1200, 800]));

    // The bytes Bob's package downloads over its connection are the ones Alice dropped.
    let got = b
        .eval(
            "bob",
            &format!(
                "{HELPERS}
                 const m = [...window.natter.convs.get({conv}).messages.values()].find((m) => m.attachments?.length);
                 const a = m.attachments[0];
                 const bytes = await window.natter.client.download(a.mediaId, {{}});
                 return {{ size: bytes.length, sha: await sha(bytes), name: a.name, mime: a.mime, blurhash: a.blurhash.length > 0 }};"
            ),
        )
        .await;
    assert_eq!(got["size"], size);
    assert_eq!(
        got["sha"], dropped["sha"],
        "the downloaded file differs from the dropped one"
    );
    assert_eq!(got["name"], "sunset.png");
    assert_eq!(got["mime"], "image/png");
    assert_eq!(got["blurhash"], true);

    // Alice's progress bar moved forward to the whole file.
    let progress: Vec<u64> = serde_json::from_value(b.eval("alice", "return window.progress;").await).unwrap();
    assert_eq!(progress.last(), Some(&size), "{progress:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    // Bob's page fetched the thumbnail and the original by signed URL, never refused.
    let reqs = media_requests(&mut b, "bob").await;
    assert!(reqs.len() >= 2, "{reqs:?}");
    assert!(
        reqs.iter().all(|r| r.0 == "GET" && (r.3 == 200 || r.3 == 206)),
        "{reqs:?}"
    );
}

/// A server, Wanda's page on WebTransport ("wt") and Walt's on WebSocket ("ws"), and a
/// native client Nate who makes a group `name` of the three.
async fn two_pages_and_nate(dir: &Path, name: &str) -> (natter_server::RunningServer, Browser, Device, u64) {
    let s = natter_server::start(&web_config(dir)).await.unwrap();
    let mut b = Browser::start().await;
    b.open("wt", &page_url(&s, "webtransport")).await;
    b.open("ws", &page_url(&s, "websocket")).await;
    sign_up(&mut b, "wt", "wanda", "webtransport").await;
    sign_up(&mut b, "ws", "walt", "websocket").await;
    let nate = user(&s, "nate").await;
    let conv = nate
        .client
        .create_group(name, &["wanda", "walt"])
        .await
        .unwrap()
        .conversation_id;
    (s, b, nate, conv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_uploads_by_stream_over_webtransport_and_by_tus_over_websocket_and_a_native_client_gets_every_byte()
{
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut b, mut nate, conv) = two_pages_and_nate(dir.path(), "files").await;

    let mut uploaded = Vec::new();
    for (page, transport, size) in [
        ("wt", "webtransport", 9 * 1024 * 1024 + 123),
        ("ws", "websocket", 9 * 1024 * 1024 + 4567),
    ] {
        b.wait_fn(page, &format!("window.natter.convs.has({conv})")).await;
        let r = b
            .eval(
                page,
                &format!(
                    "{HELPERS}
                     const bytes = new Uint8Array({size});
                     for (let o = 0; o < bytes.length; o += 65536) crypto.getRandomValues(bytes.subarray(o, Math.min(bytes.length, o + 65536)));
                     const seen = [];
                     const media = await window.natter.client.upload({conv}, new Blob([bytes]), {{ name: '{page}.bin', onProgress: (s, n) => seen.push([s, n]) }});
                     const ack = await window.natter.client.sendFiles({conv}, 'from {page}', [media]);
                     return {{ mediaId: media.mediaId, size: media.size, sha: await sha(bytes), serverSha: media.sha256, progress: seen, seq: ack.seq, transport: window.natter.client.transport }};"
                ),
            )
            .await;
        assert_eq!(r["transport"], transport, "stayed on its transport");
        assert_eq!(r["size"], size);
        assert_eq!(r["serverSha"], r["sha"], "{page}: the server stored other bytes");
        let progress: Vec<(u64, u64)> = serde_json::from_value(r["progress"].clone()).unwrap();
        assert!(progress.iter().all(|p| p.1 == size), "{progress:?}");
        assert!(progress.windows(2).all(|w| w[0].0 <= w[1].0), "{page}: {progress:?}");
        assert_eq!(progress.last().map(|p| p.0), Some(size), "{page}: {progress:?}");
        assert!(
            progress.iter().any(|p| p.0 > 0 && p.0 < size),
            "{page}: progress in pieces, not only at the end: {progress:?}"
        );
        uploaded.push((page, r));
    }
    // Over WebTransport no tus request was made; over WebSocket the bytes went by PATCH,
    // more than one, each accepted.
    let wt_http = media_requests(&mut b, "wt").await;
    assert!(wt_http.iter().all(|r| !r.1.contains("/tus/")), "{wt_http:?}");
    let ws_patches: Vec<_> = media_requests(&mut b, "ws")
        .await
        .into_iter()
        .filter(|r| r.0 == "PATCH")
        .collect();
    assert!(ws_patches.len() >= 3, "9 MiB in 4 MiB pieces: {ws_patches:?}");
    assert!(ws_patches.iter().all(|r| r.3 == 204), "{ws_patches:?}");

    // Nate sees both messages with their files and downloads every byte.
    for (page, r) in &uploaded {
        let seq = r["seq"].as_u64().unwrap();
        let evs = events_upto(&mut nate.events, ConversationId(conv), seq).await;
        let ev = evs.iter().find(|e| e.seq == seq).expect("nate got the message");
        let body = match &ev.body {
            Some(pb::conversation_event::Body::Message(m)) => m.body.clone().unwrap_or_default(),
            other => panic!("{other:?}"),
        };
        assert_eq!(body.text, format!("from {page}"));
        assert_eq!(body.attachments.len(), 1);
        let media_id = r["mediaId"].as_str().unwrap();
        assert_eq!(body.attachments[0].media_id, media_id);
        let bytes = nate
            .client
            .download_all(media_id, pb::MediaVariant::Original)
            .await
            .unwrap();
        assert_eq!(bytes.len() as u64, r["size"].as_u64().unwrap());
        assert_eq!(sha_hex(&bytes), r["sha"].as_str().unwrap(), "{page}: bytes differ");
    }
}

/// `mp4` with a `free` box of `pad` bytes after its `ftyp`, and its chunk offsets (`stco`)
/// moved to match: the same clip, but its frames and its index (`moov`, at the end) are
/// then megabytes into the file, beyond what a player reads at first.
fn padded_mp4(mp4: &[u8], pad: u32) -> Vec<u8> {
    let be = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap());
    assert_eq!(&mp4[4..8], b"ftyp");
    let ftyp = be(mp4) as usize;
    let mut out = mp4[..ftyp].to_vec();
    out.extend_from_slice(&pad.to_be_bytes());
    out.extend_from_slice(b"free");
    out.resize(ftyp + pad as usize, 0);
    let mut rest = mp4[ftyp..].to_vec();
    assert!(!rest.windows(4).any(|w| w == b"co64"), "32-bit chunk offsets only");
    let at = rest.windows(4).position(|w| w == b"stco").expect("an stco box");
    let count = be(&rest[at + 8..]) as usize;
    for i in 0..count {
        let o = at + 12 + 4 * i;
        let moved = be(&rest[o..]) + pad;
        rest[o..o + 4].copy_from_slice(&moved.to_be_bytes());
    }
    out.extend_from_slice(&rest);
    out
}

/// The fixtures are 12 s of ffmpeg's test pattern at 160×120, a keyframe every second:
/// `clip.mp4` H.264 with its index (`moov`) at the end, so a player must read the end of
/// the file by Range before it can play (`ffmpeg -f lavfi -i testsrc=size=160x120:rate=15
/// -t 12 -c:v libx264 -profile:v baseline -pix_fmt yuv420p -b:v 100k -g 15 -an clip.mp4`),
/// and `clip.webm` VP8 (`-c:v libvpx -b:v 120k`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_seeks_a_served_mp4_and_webm_to_their_middle_through_http_range() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    b.open("vera", &page_url(&s, "websocket")).await;
    sign_up(&mut b, "vera", "vera", "websocket").await;
    let nate = user(&s, "nate").await;
    let conv = ConversationId(nate.client.direct("vera").await.unwrap().conversation_id);
    b.wait_fn("vera", &format!("window.natter.convs.get({})?.summary.kind", conv.0))
        .await;
    b.click("vera", &format!("#conversations [data-conversation='{}']", conv.0))
        .await;

    for (file, mime) in [("clip.mp4", "video/mp4"), ("clip.webm", "video/webm")] {
        let mut clip = std::fs::read(repo().join("server/tests/fixtures").join(file)).unwrap();
        if file.ends_with(".mp4") {
            clip = padded_mp4(&clip, 8 << 20);
        }
        let media = nate
            .client
            .upload(conv, file, mime, clip.clone().into(), |_, _| {})
            .await
            .unwrap();
        assert_eq!(media.mime, mime);
        nate.client
            .send_attachments(conv, "", std::slice::from_ref(&media))
            .await
            .unwrap();
        let id = media.media_id.clone();
        let video = format!("#message-list .att.video video[data-media='{id}']");
        b.wait("vera", &video).await;
        let seek = b
            .eval(
                "vera",
                &format!(
                    "const v = document.querySelector(\"{video}\");
                     const failed = (j) => v.addEventListener('error', () => j(new Error('video error ' + v.error?.message)), {{ once: true }});
                     if (v.readyState < 1) await new Promise((r, j) => {{ v.addEventListener('loadedmetadata', r, {{ once: true }}); failed(j); }});
                     const duration = v.duration;
                     const seekable = v.seekable.length ? v.seekable.end(v.seekable.length - 1) : 0;
                     v.currentTime = duration / 2;
                     await new Promise((r, j) => {{ v.addEventListener('seeked', r, {{ once: true }}); failed(j); }});
                     // A decoded frame at the new position.
                     await Promise.race([new Promise((r) => v.requestVideoFrameCallback(r)), new Promise((r) => setTimeout(r, 3000))]);
                     return {{ duration, seekable, currentTime: v.currentTime, readyState: v.readyState, width: v.videoWidth, height: v.videoHeight }};"
                ),
            )
            .await;
        let duration = seek["duration"].as_f64().unwrap();
        assert!((duration - 12.0).abs() < 0.2, "{file}: {seek}");
        assert!(
            seek["seekable"].as_f64().unwrap() >= duration - 0.2,
            "{file}: the whole clip seekable: {seek}"
        );
        assert!(
            (seek["currentTime"].as_f64().unwrap() - duration / 2.0).abs() < 0.6,
            "{file}: {seek}"
        );
        assert!(
            seek["readyState"].as_u64().unwrap() >= 2,
            "{file}: a frame there: {seek}"
        );
        assert_eq!(
            (seek["width"].as_u64(), seek["height"].as_u64()),
            (Some(160), Some(120))
        );

        // Chromium read it by ranges, and every ranged read got 206.
        let reqs: Vec<_> = media_requests(&mut b, "vera")
            .await
            .into_iter()
            .filter(|r| r.1.contains(&id))
            .collect();
        let ranged: Vec<_> = reqs.iter().filter(|r| r.2.is_some()).collect();
        assert!(!ranged.is_empty(), "{file}: Chromium asked for ranges: {reqs:?}");
        assert!(ranged.iter().all(|r| r.3 == 206), "{file}: {reqs:?}");
        if file.ends_with(".mp4") {
            // Its frames and index are 8 MiB in: Chromium had to ask for ranges there.
            let starts: Vec<u64> = ranged
                .iter()
                .filter_map(|r| r.2.as_deref()?.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
                .collect();
            assert!(starts.iter().any(|&s| s >= 8 << 20), "{file}: ranges {starts:?}");
        }
    }
}

/// Pause and resume, in the web chat and across a restart: a large file dropped on the
/// page is paused from its row's button once its first piece is stored (the row says
/// paused, the package lists it as paused), resumed from the same button, and arrives
/// whole at the other member. Then on each transport the package pauses an upload, a new
/// client is built from `snapshot()` (the page's own one closed, as after a reload), is
/// refused another file, and goes on from the stored offset to the whole file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_pause_and_resume_in_the_web_chat_and_after_a_restart_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut b, mut nate, conv) = two_pages_and_nate(dir.path(), "big files").await;
    const SIZE: u64 = 24 << 20;

    // The web chat: drop, pause by the row's button at the first stored piece, resume.
    b.wait_fn("wt", &format!("window.natter.convs.get({conv})?.summary.kind"))
        .await;
    b.click("wt", &format!("#conversations [data-conversation='{conv}']"))
        .await;
    b.wait("wt", "#composer:not([hidden])").await;
    let dropped = b
        .eval(
            "wt",
            &format!(
                "{HELPERS}
                 const bytes = new Uint8Array({SIZE});
                 for (let o = 0; o < bytes.length; o += 65536) crypto.getRandomValues(bytes.subarray(o, Math.min(bytes.length, o + 65536)));
                 const file = new File([bytes], 'film.bin', {{ type: 'application/octet-stream' }});
                 window.pausedAt = null;
                 new MutationObserver((ms) => {{ for (const m of ms) {{
                   const row = m.target.closest && m.target.closest('.upload');
                   if (row && window.pausedAt === null && Number(row.dataset.stored) > 0) {{
                     window.pausedAt = Number(row.dataset.stored);
                     row.querySelector('.pause').click();
                   }}
                 }} }}).observe(document.getElementById('uploads'), {{ subtree: true, attributes: true, attributeFilter: ['data-stored'] }});
                 const dt = new DataTransfer(); dt.items.add(file);
                 document.getElementById('chat').dispatchEvent(new DragEvent('drop', {{ dataTransfer: dt, bubbles: true, cancelable: true }}));
                 return {{ sha: await sha(bytes) }};"
            ),
        )
        .await;
    b.wait("wt", "#uploads .upload[data-state=paused]").await;
    let paused = b
        .eval(
            "wt",
            "return { pending: window.natter.client.pendingUploads(),
                      button: document.querySelector('#uploads .upload .pause').textContent };",
        )
        .await;
    let pending = paused["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{paused}");
    assert_eq!(
        (&pending[0]["name"], &pending[0]["size"], &pending[0]["paused"]),
        (&json!("film.bin"), &json!(SIZE), &json!(true))
    );
    assert_eq!(paused["button"], "Resume");
    b.click("wt", "#uploads .upload .pause").await;
    let evs = wait_for(&mut nate.events, |e| match e {
        natter_sdk::ClientEvent::Event(ev) if ev.conversation_id == conv => match &ev.body {
            Some(pb::conversation_event::Body::Message(m)) => m.body.clone().filter(|b| !b.attachments.is_empty()),
            _ => None,
        },
        _ => None,
    })
    .await;
    let media_id = evs.attachments[0].media_id.clone();
    let got = nate
        .client
        .download_all(&media_id, pb::MediaVariant::Original)
        .await
        .unwrap();
    assert_eq!(got.len() as u64, SIZE);
    assert_eq!(
        sha_hex(&got),
        dropped["sha"].as_str().unwrap(),
        "the resumed file arrived whole"
    );
    assert_eq!(
        b.eval("wt", "return window.natter.client.pendingUploads().length;")
            .await,
        0
    );

    // The package, on each transport: pause, restart from the snapshot, resume.
    for (page, transport) in [("wt", "webtransport"), ("ws", "websocket")] {
        b.wait_fn(page, &format!("window.natter.convs.has({conv})")).await;
        let r = b
            .eval(
                page,
                &format!(
                    "{HELPERS}
                     const {{ NatterClient }} = await import('./pkg/index.js');
                     const bytes = new Uint8Array({SIZE});
                     for (let o = 0; o < bytes.length; o += 65536) crypto.getRandomValues(bytes.subarray(o, Math.min(bytes.length, o + 65536)));
                     const first = window.natter.client;
                     let paused = null;
                     const ended = await first.upload({conv}, new Blob([bytes]), {{ name: '{page}.bin', onProgress: (s) => {{
                       if (s > 0 && paused === null) {{ const p = first.pendingUploads()[0]; if (first.pauseUpload(p.uploadId)) paused = p.uploadId; }}
                     }} }}).then(() => 'finished', (e) => e.code);
                     const snap = first.snapshot();
                     first.close();
                     const again = NatterClient.connect({{ transport: '{transport}', token: snap.accessToken, pendingUploads: snap.pendingUploads, onEvent: () => {{}} }});
                     const known = again.pendingUploads();
                     const wrong = await again.resumeUpload(paused, new Blob([bytes.subarray(1)])).then(() => 'resumed', (e) => e.code);
                     const seen = [];
                     const media = await again.resumeUpload(paused, new Blob([bytes]), {{ onProgress: (s) => seen.push(s) }});
                     return {{ ended, paused, snap: snap.pendingUploads, known, wrong, first: seen[0], sha: await sha(bytes),
                               serverSha: media.sha256, size: media.size, after: again.pendingUploads(), transport: again.transport }};"
                ),
            )
            .await;
        assert_eq!(r["ended"], "UPLOAD_PAUSED", "{page}: {r}");
        let snap = r["snap"].as_array().unwrap();
        assert_eq!(snap.len(), 1, "{page}: {r}");
        assert_eq!(
            (&snap[0]["uploadId"], &snap[0]["paused"], &snap[0]["size"]),
            (&r["paused"], &json!(true), &json!(SIZE)),
            "{page}"
        );
        assert_eq!(r["known"], r["snap"], "{page}: the restored client knows it");
        assert_eq!(r["wrong"], "NOT_THE_SAME_FILE", "{page}");
        let first = r["first"].as_u64().unwrap();
        assert!(
            first > 0 && first < SIZE,
            "{page}: went on from the stored offset {first}"
        );
        assert_eq!((&r["serverSha"], &r["size"]), (&r["sha"], &json!(SIZE)), "{page}");
        assert_eq!(r["after"], json!([]), "{page}");
        assert_eq!(r["transport"], transport, "{page}");
    }
}

/// Client-side encryption from the page: `uploadEncrypted` seals the file in the browser,
/// the server's copy is not the plaintext, a native member opens it with the key the page
/// returned, and the page opens a range across a chunk boundary; a wrong key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_encrypts_a_file_in_the_page_and_a_native_member_opens_it_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    b.open("ws", &page_url(&s, "websocket")).await;
    sign_up(&mut b, "ws", "walt", "websocket").await;
    let nate = user(&s, "nate").await;
    let conv = nate
        .client
        .create_group("secrets", &["walt"])
        .await
        .unwrap()
        .conversation_id;
    b.wait_fn("ws", &format!("window.natter.convs.has({conv})")).await;
    let r = b
        .eval(
            "ws",
            &format!(
                "{HELPERS}
                 const bytes = new Uint8Array(200000);
                 for (let o = 0; o < bytes.length; o += 65536) crypto.getRandomValues(bytes.subarray(o, Math.min(bytes.length, o + 65536)));
                 const c = window.natter.client;
                 const {{ media, key }} = await c.uploadEncrypted({conv}, new Blob([bytes]), {{ name: 'secret.bin' }});
                 await c.sendFiles({conv}, '', [media]);
                 const part = await c.downloadEncrypted(media.mediaId, key, {{ offset: 65000, length: 1000 }});
                 const wrong = await c.downloadEncrypted(media.mediaId, '00'.repeat(51), {{ offset: 0, length: 10 }}).then(() => 'opened', (e) => e.code);
                 return {{ mediaId: media.mediaId, encrypted: media.encrypted, size: media.size, key, sha: await sha(bytes),
                           partOk: hex(part) === hex(bytes.subarray(65000, 66000)), wrong }};"
            ),
        )
        .await;
    assert_eq!(r["encrypted"], true);
    assert!(r["size"].as_u64().unwrap() > 200_000, "{r}");
    assert_eq!(r["partOk"], true, "the page opens a range: {r}");
    assert_eq!(r["wrong"], "DECRYPT_FAILED");
    let media_id = r["mediaId"].as_str().unwrap();
    let sealed = nate
        .client
        .download_all(media_id, pb::MediaVariant::Original)
        .await
        .unwrap();
    assert_ne!(
        sha_hex(&sealed),
        r["sha"].as_str().unwrap(),
        "the server holds sealed bytes"
    );
    let key = natter_sdk::FileKey::from_hex(r["key"].as_str().unwrap()).unwrap();
    let opened = nate.client.download_encrypted(media_id, &key, 0, 0).await.unwrap();
    assert_eq!(
        sha_hex(&opened),
        r["sha"].as_str().unwrap(),
        "nate opens the page's file with its key"
    );
}
