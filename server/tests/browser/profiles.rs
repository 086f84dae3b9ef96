//! Profiles in the browser (PROTOCOL.md §5.15): a user on the generated Python bindings
//! uploads a new avatar and changes their display name; another user's open web page shows
//! the new picture (its thumbnail, loaded) and name beside that user's messages and in the
//! conversation list, without a reload; the page's own profile form changes its user's
//! name and avatar, which a native client hears.
use super::*;

fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, _| {
        image::Rgb([rgb[0], rgb[1], rgb[2].wrapping_add((x % 7) as u8)])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_avatar_changed_from_python_shows_on_another_users_page_without_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    b.open("bob", &page_url(&s, "webtransport")).await;
    sign_up(&mut b, "bob", "bob", "webtransport").await;

    // Alice (a native device) writes to bob; his page shows her message with her initial.
    let mut alice = user(&s, "alice").await;
    let dm = ConversationId(alice.client.direct("bob").await.unwrap().conversation_id);
    alice.client.send(dm, "hello from alice").await.unwrap();
    b.wait_stored("bob", dm.0, 1).await;
    b.click("bob", &format!("#conversations [data-conversation='{}']", dm.0))
        .await;
    b.wait("bob", "#message-list .msg .avatar").await;
    let alice_id = b
        .eval(
            "bob",
            "return Number(document.querySelector('#message-list .msg .avatar').dataset.user);",
        )
        .await
        .as_u64()
        .unwrap();
    assert_eq!(
        b.texts("bob", "#message-list .msg .avatar").await,
        vec!["A".to_string()],
        "no picture yet: her initial"
    );
    // A marker that a reload would wipe.
    b.eval("bob", "window.notReloaded = true; return true;").await;

    // The Python binding changes alice's avatar and name.
    let avatar_file = dir.path().join("python.png");
    std::fs::write(&avatar_file, png(480, 360, [20, 160, 90])).unwrap();
    let bindings = repo().join("target/ffi-bindings/python");
    assert!(
        bindings.join("natter_ffi.py").exists(),
        "the Python bindings are missing: bash sdk-ffi/bindgen.sh (scripts/test.sh runs it)"
    );
    let out = Command::new("python3")
        .args(["-X", "faulthandler"])
        .arg(repo().join("server/tests/browser/profile_member.py"))
        .env("NATTER_BINDINGS", &bindings)
        .env("NATTER_ADDR", s.addr.to_string())
        .env("NATTER_FINGERPRINT", &s.fingerprint)
        .env("NATTER_USER", "alice")
        .env("NATTER_PASSWORD", PASSWORD)
        .env("NATTER_AVATAR", &avatar_file)
        .env("NATTER_NAME", "Alice Python")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the Python program ends within a minute")
        .unwrap();
    assert!(
        out.status.success(),
        "the Python program failed ({}): {}\nits output: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let set: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(set["userId"].as_u64(), Some(alice_id));
    let media = set["avatar"]
        .as_str()
        .unwrap()
        .strip_prefix("media:")
        .unwrap()
        .to_string();

    // Bob's page, as it was: the new picture loads beside her message and in the list.
    for place in [
        "#message-list .msg",
        &format!("#conversations [data-conversation='{}']", dm.0),
    ] {
        b.wait_fn(
            "bob",
            &format!(
                "(() => {{ const img = document.querySelector(\"{place} .avatar[data-user='{alice_id}'] img[data-media='{media}']\");
                 return !!img && img.complete && img.naturalWidth > 0; }})()"
            ),
        )
        .await;
    }
    let size = b
        .eval(
            "bob",
            &format!(
                "const img = document.querySelector(\"#message-list .avatar img[data-media='{media}']\");
                 return [img.naturalWidth, img.naturalHeight];"
            ),
        )
        .await;
    assert_eq!(size, json!([320, 240]), "the 320 px thumbnail of the new picture");
    b.wait_fn(
        "bob",
        "document.getElementById('chat-title').textContent.includes('Alice Python')",
    )
    .await;
    assert_eq!(b.eval("bob", "return window.notReloaded === true;").await, json!(true));

    // Bob's own profile form: a name and a picture; alice's native client hears both.
    b.click("bob", "#profile-btn").await;
    b.fill("bob", "#profile-name", "Bob in Chromium").await;
    b.eval(
        "bob",
        "const c = document.createElement('canvas'); c.width = 200; c.height = 200;
         const g = c.getContext('2d'); g.fillStyle = '#c33'; g.fillRect(0, 0, 200, 200);
         const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
         const dt = new DataTransfer(); dt.items.add(new File([blob], 'bob.png', { type: 'image/png' }));
         document.getElementById('profile-avatar').files = dt.files; return true;",
    )
    .await;
    b.click("bob", "#profile-form button").await;
    let heard = wait_for(&mut alice.events, |e| match e {
        ClientEvent::ProfileChanged(p) if p.username == "bob" && p.display_name == "Bob in Chromium" => Some(p.clone()),
        _ => None,
    })
    .await;
    let bob_media = heard.avatar.strip_prefix("media:").expect("an uploaded avatar");
    let thumb = alice
        .client
        .download_all(bob_media, natter_protocol::pb::MediaVariant::Thumb320)
        .await
        .unwrap();
    assert!(image::load_from_memory(&thumb).is_ok());
    b.wait_fn(
        "bob",
        "document.getElementById('me-name').textContent.includes('Bob in Chromium')",
    )
    .await;

    // The package's account calls (PROTOCOL.md §5.16): a zip of bob's data from the link
    // it gives, then the account deleted; alice hears it.
    let zip = b
        .eval(
            "bob",
            "const { path } = await window.natter.client.exportAccount();
             const r = await fetch(path); const b = new Uint8Array(await r.arrayBuffer());
             return [r.status, r.headers.get('content-type'), String.fromCharCode(b[0], b[1])];",
        )
        .await;
    assert_eq!(zip, json!([200, "application/zip", "PK"]));
    let refused = b
        .eval(
            "bob",
            "try { await window.natter.client.deleteAccount('wrong password'); return 'deleted'; } catch (e) { return e.code; }",
        )
        .await;
    assert_eq!(refused, json!("INVALID_CREDENTIALS"));
    b.eval(
        "bob",
        &format!("await window.natter.client.deleteAccount({PASSWORD:?}); return true;"),
    )
    .await;
    let erased = wait_for(&mut alice.events, |e| match e {
        ClientEvent::Event(ev) if ev.conversation_id == dm.0 => match &ev.body {
            Some(natter_protocol::pb::conversation_event::Body::UserErased(u)) => Some(*u),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(erased.user_id, heard.user_id);
    b.wait("bob", "#auth:not([hidden])").await;
}
