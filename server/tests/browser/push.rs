//! Notifications in the browser (PROTOCOL.md §13): the package registers a Web Push
//! subscription; with the page's connection closed, the server sends through the Web
//! Push service on loopback (which decrypts it, as the browser's push service would hand
//! it on); delivered to the page's service worker through DevTools, it shows the
//! notification, and the worker's click path opens the conversation in the page.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_worker_shows_a_web_push_and_its_click_opens_the_conversation() {
    let provider = crate::common::push::Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = web_config(dir.path());
    cfg.push_allow_loopback_endpoints = true;
    let s = natter_server::start(&cfg).await.unwrap();
    let mut b = Browser::start().await;
    b.open("a", &page_url(&s, "websocket")).await;
    sign_up(&mut b, "a", "alice", "websocket").await;
    b.wait("a", "#notify-btn:not([hidden])").await;
    // The level select saves the user's rule.
    b.cmd(json!({"op": "select", "page": "a", "selector": "#notify-level", "value": "mentions"}))
        .await;
    b.wait_fn(
        "a",
        "document.getElementById('notify-status').textContent.includes('mentions only')",
    )
    .await;
    let saved = b
        .eval("a", "return (await window.natter.client.getNotifySettings()).level;")
        .await;
    assert_eq!(saved, "mentions");
    b.cmd(json!({"op": "select", "page": "a", "selector": "#notify-level", "value": "all"}))
        .await;
    b.wait_fn(
        "a",
        "document.getElementById('notify-status').textContent.includes('all messages')",
    )
    .await;
    b.cmd(json!({"op": "grant", "page": "a", "permissions": ["notifications"]}))
        .await;
    b.eval("a", "await navigator.serviceWorker.ready; return true;").await;

    // The package registers a subscription (here the loopback push service's).
    let sub = provider.subscription_json("alice").await;
    let regs = b
        .eval("a", &format!("return await window.natter.client.registerPush({sub});"))
        .await;
    assert_eq!(regs["registrations"][0]["provider"], "webpush");
    assert_eq!(
        regs["vapidPublicKey"].as_str().unwrap().len(),
        87,
        "65 bytes, base64url"
    );
    let refused = b
        .eval(
            "a",
            "try { await window.natter.client.registerPush({endpoint: 'http://10.0.0.1/x', keys: {p256dh: 'AAAA', auth: 'AAAA'}}); return null; } catch (e) { return e.code; }",
        )
        .await;
    assert_eq!(refused, "PUSH_TARGET_REJECTED");

    // Bob writes while alice's page is disconnected: one notification.
    let bob = user(&s, "bob").await;
    let dm = bob.client.direct("alice").await.unwrap().conversation_id;
    b.wait_fn("a", &format!("window.natter.convs.get({dm})?.summary.kind"))
        .await;
    let before = s.attached_sessions();
    b.eval("a", "window.natter.client.close(); return true;").await;
    let until = tokio::time::Instant::now() + DEADLINE;
    while s.attached_sessions() >= before {
        assert!(tokio::time::Instant::now() < until, "the page stays attached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seq = bob
        .client
        .send(ConversationId(dm), "while you were away")
        .await
        .unwrap()
        .seq
        .0;
    let got = provider.until("alice", 1).await;
    let json = String::from_utf8(crate::common::push::plaintext(&got[0])).unwrap();
    let p: Value = serde_json::from_str(json.trim_end()).unwrap();
    assert_eq!(
        (p["seq"].as_u64(), p["preview"].as_str()),
        (Some(seq), Some("while you were away"))
    );

    // The browser hands the (decrypted) payload to the service worker.
    b.cmd(json!({"op": "deliverPush", "page": "a", "data": json})).await;
    // Polled through `eval` (it awaits the async body; waitFn would take the promise itself
    // as the truthy answer).
    let until = tokio::time::Instant::now() + DEADLINE;
    let shown = loop {
        let shown = b
            .eval(
                "a",
                "const r = await navigator.serviceWorker.ready; const n = await r.getNotifications();
                 return n.map(x => ({ title: x.title, body: x.body, tag: x.tag, data: x.data }));",
            )
            .await;
        if shown.as_array().is_some_and(|a| !a.is_empty()) {
            break shown;
        }
        assert!(tokio::time::Instant::now() < until, "no notification shown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown[0]["title"], "bob");
    assert_eq!(shown[0]["body"], "while you were away");
    assert_eq!(shown[0]["tag"], format!("c{dm}"));
    assert_eq!(shown[0]["data"]["conversationId"], dm);

    // A click: the worker tells the page, which opens the conversation.
    b.eval("a", "window.natter.active = null; return true;").await;
    b.cmd(json!({"op": "workerEval", "page": "a", "js": format!("await self.openConversation({dm}); return true;")}))
        .await;
    b.wait_fn("a", &format!("window.natter.active === {dm}")).await;

    // Alice reads on her phone: the server withdraws the browser's notification, and the
    // worker takes it away.
    let phone = device(s.addr, &s.fingerprint, "alice", false).await;
    phone
        .client
        .mark_read(ConversationId(dm), natter_sdk::Seq(seq))
        .await
        .unwrap();
    let got = provider.until("alice", 2).await;
    let json = String::from_utf8(crate::common::push::plaintext(&got[1])).unwrap();
    let w: Value = serde_json::from_str(json.trim_end()).unwrap();
    assert_eq!(
        (w["withdraw"].as_bool(), w["collapseId"].as_str()),
        (Some(true), Some(format!("c{dm}").as_str()))
    );
    b.cmd(json!({"op": "deliverPush", "page": "a", "data": json})).await;
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left = b
            .eval(
                "a",
                "return (await (await navigator.serviceWorker.ready).getNotifications()).length;",
            )
            .await;
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the notification stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
