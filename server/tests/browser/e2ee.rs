//! Encrypted direct conversations in the browser (PROTOCOL.md §12): the web chat's
//! natter-wasm device beside natter-sdk devices and one on the generated Python bindings in
//! one encrypted DM, a device added mid-conversation (refused coverage once, sealed again),
//! a reload that reads its state back from IndexedDB, emoji verification between two
//! browsers (and a device trusted through the user's signing key), and a new browser
//! restoring its history from the key backup.
use super::*;
use common::e2ee::*;

/// A device on natter's generated Python bindings (`browser/bindings_member.py`), driven
/// line by line.
struct PyDevice {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyDevice {
    async fn login(s: &natter_server::RunningServer, user: &str, state: &Path) -> PyDevice {
        let bindings = repo().join("target/ffi-bindings/python");
        assert!(
            bindings.join("natter_ffi.py").exists(),
            "the Python bindings are missing: bash sdk-ffi/bindgen.sh (scripts/test.sh runs it)"
        );
        let mut child = Command::new("python3")
            .arg(repo().join("server/tests/browser/bindings_member.py"))
            .env("NATTER_BINDINGS", &bindings)
            .env("NATTER_ADDR", s.addr.to_string())
            .env("NATTER_FINGERPRINT", &s.fingerprint)
            .env("NATTER_USER", user)
            .env("NATTER_PASSWORD", PASSWORD)
            .env("NATTER_STATE", state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let up = PyDevice::line(&mut lines).await;
        assert!(up["device"].is_u64(), "logged in, keys published: {up}");
        PyDevice {
            _child: child,
            stdin,
            lines,
        }
    }

    async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("the Python device answers within a minute")
            .unwrap()
            .expect("the Python device failed (its error is above)");
        serde_json::from_str(&line).unwrap()
    }

    async fn ask(&mut self, command: String) -> Value {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        PyDevice::line(&mut self.lines).await
    }

    /// The first `n` messages of `conv` it received, opened.
    async fn read(&mut self, conv: u64, n: usize) -> Vec<String> {
        serde_json::from_value(self.ask(format!("read {conv} {n}")).await["texts"].clone()).unwrap()
    }

    async fn send(&mut self, conv: u64, text: &str) {
        assert!(self.ask(format!("send {conv} {text}")).await["seq"].is_u64());
    }
}

/// The page's messages of `conv` that could not be opened: (seq, text).
async fn page_undecryptable(b: &mut Browser, page: &str, conv: u64) -> Vec<(u64, String)> {
    let v = b
        .eval(
            page,
            &format!(
                "const c = window.natter.convs.get({conv}); if (!c) return [];
                 return [...c.messages.values()].filter(m => m.undecryptable).map(m => [m.seq, m.text]);"
            ),
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// Start an encrypted DM with `peer` from the page's form; its conversation id.
async fn encrypted_dm_from_page(b: &mut Browser, page: &str, peer: &str) -> u64 {
    b.fill(page, "#dm-user", peer).await;
    b.click(page, "#dm-encrypted").await;
    b.click(page, "#new-dm button").await;
    b.wait(page, "#chat-title[data-encrypted=true]").await;
    b.wait(page, "#conversations li .lock[data-encrypted=true]").await;
    b.eval(page, "return window.natter.active;").await.as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_python_bindings_and_native_devices_read_every_encrypted_message() {
    let dir = tempfile::tempdir().unwrap();
    let states = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    b.open("alice", &page_url(&s, "webtransport")).await;
    sign_up(&mut b, "alice", "alice", "webtransport").await;
    // Alice: the page and a natter-sdk device; Bob: two natter-sdk devices and one on the
    // Python bindings.
    let mut alice2 = phone(&s, states.path(), "alice", 2, false).await;
    let mut bob1 = phone(&s, states.path(), "bob", 1, true).await;
    let mut bob2 = phone(&s, states.path(), "bob", 2, false).await;
    let mut py = PyDevice::login(&s, "bob", &states.path().join("bob-python.state")).await;

    let conv = encrypted_dm_from_page(&mut b, "alice", "bob").await;
    let c = ConversationId(conv);

    // 100 each way at once: the page seals each for four devices, Bob's for four; and ten
    // from the Python device.
    const N: usize = 100;
    const P: usize = 10;
    let js = format!(
        "const c = window.natter.client; for (let i = 0; i < {N}; i++) await c.send({conv}, '{MARKER} w' + i); return true;"
    );
    let page_sends = b.eval("alice", &js);
    let native = async {
        for i in 0..N {
            bob1.client.send(c, &format!("{MARKER} n{i}")).await.unwrap();
        }
    };
    let python = async {
        for i in 0..P {
            py.send(conv, &format!("{MARKER} p{i}")).await;
        }
    };
    let (sent, (), ()) = tokio::join!(page_sends, native, python);
    assert_eq!(sent, json!(true));

    let mut want: Vec<String> = (0..N)
        .flat_map(|i| [format!("{MARKER} w{i}"), format!("{MARKER} n{i}")])
        .chain((0..P).map(|i| format!("{MARKER} p{i}")))
        .collect();
    want.sort();
    for p in [&mut alice2, &mut bob1, &mut bob2] {
        let mut got = read(p, c, 2 * N + P).await;
        got.sort();
        assert_eq!(got, want, "device {:?} read every message, opened", p.device);
    }
    let mut got = py.read(conv, 2 * N + P).await;
    got.sort();
    assert_eq!(got, want, "the Python device read every message, opened");
    b.wait_stored("alice", conv, 2 * N + P).await;
    let mut shown: Vec<String> = page_messages(&mut b, "alice", conv)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    shown.sort();
    assert_eq!(shown, want, "the page opened every message");
    assert_eq!(page_undecryptable(&mut b, "alice", conv).await, vec![]);
    assert_exactly_once_in_order(&page_event_log(&mut b, "alice").await, conv);

    // Bob adds a device: the page's next send is refused coverage once, sealed again for
    // it, and the new device reads it; the page shows the change.
    let mut bob3 = phone(&s, states.path(), "bob", 3, false).await;
    b.wait_fn(
        "alice",
        "[...document.querySelectorAll('#message-list .notice')].some(e => e.textContent.includes('added device'))",
    )
    .await;
    let floor = b
        .eval(
            "alice",
            &format!("return window.natter.convs.get({conv}).summary.lastSeq;"),
        )
        .await
        .as_u64()
        .unwrap();
    b.fill("alice", "#text", "for every device of bob").await;
    b.press("alice", "#text", "Enter").await;
    for p in [&mut bob1, &mut bob2, &mut bob3] {
        assert_eq!(read_after(p, c, floor, 1).await, vec!["for every device of bob"]);
    }
    assert_eq!(
        py.read(conv, 2 * N + P + 1).await.last().unwrap(),
        "for every device of bob"
    );

    // A reload reads the state back from IndexedDB: history opens from kept keys, and
    // what comes next opens over the sessions it had.
    b.cmd(json!({"op": "reload", "page": "alice"})).await;
    b.wait("alice", "#app:not([hidden])").await;
    b.wait("alice", &format!("#conversations li[data-conversation='{conv}'] .lock"))
        .await;
    b.click("alice", &format!("#conversations li[data-conversation='{conv}']"))
        .await;
    b.wait_shown("alice", "for every device of bob").await;
    // The latest page of history (50 events) shows opened, from the kept keys.
    let texts = b.texts("alice", "#message-list .msg .text").await;
    assert!(texts.len() >= 45, "a page of history: {}", texts.len());
    for t in &texts {
        assert!(
            want.contains(t) || t == "for every device of bob",
            "shown after the reload: {t:?}"
        );
    }
    bob3.client.send(c, "after the reload").await.unwrap();
    b.wait_shown("alice", "after the reload").await;
    assert_eq!(page_undecryptable(&mut b, "alice", conv).await, vec![]);

    // The page's own index finds what the server cannot read (PROTOCOL.md §14.5).
    let out = b
        .eval(
            "alice",
            "const r = await window.natter.client.search({ query: 'reload' });
             return { hits: r.hits.map(h => [h.conversationId, h.event.body.text]),
                      sealed: r.encryptedConversationIds, local: r.local.map(l => l.conversationId) };",
        )
        .await;
    assert_eq!(out["hits"], json!([[conv, "after the reload"]]), "{out}");
    assert_eq!(out["sealed"], json!([conv]));
    assert_eq!(out["local"], json!([conv]));

    // The server holds no plaintext of any of it.
    let leaks = files_containing(dir.path(), MARKER.as_bytes());
    assert!(leaks.is_empty(), "plaintext on the server: {leaks:?}");
    let leaks = files_containing(dir.path(), b"for every device of bob");
    assert!(leaks.is_empty(), "plaintext on the server: {leaks:?}");
}

/// Alice's page asks to verify Bob's unverified device, Bob's page accepts, and both show
/// the code to compare: the emoji each page shows.
async fn verify_until_compare(b: &mut Browser) -> (Vec<String>, Vec<String>) {
    b.click("alice", "#device-list li[data-trust=unverified] button").await;
    b.wait("bob", "#verify[data-state=requested]").await;
    b.click("bob", "#verify-accept").await;
    b.wait("alice", "#verify[data-state=compare]").await;
    b.wait("bob", "#verify[data-state=compare]").await;
    (
        b.texts("alice", "#verify-emoji .emoji").await,
        b.texts("bob", "#verify-emoji .emoji").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_verify_each_other_by_emoji() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    let url = page_url(&s, "websocket");
    b.open("alice", &url).await;
    b.open("bob", &url).await;
    sign_up(&mut b, "alice", "alice", "websocket").await;
    sign_up(&mut b, "bob", "bob", "websocket").await;
    let conv = encrypted_dm_from_page(&mut b, "alice", "bob").await;
    b.fill("alice", "#text", "shall we verify?").await;
    b.press("alice", "#text", "Enter").await;
    b.wait("bob", &format!("#conversations li[data-conversation='{conv}'] .lock"))
        .await;
    b.click("bob", &format!("#conversations li[data-conversation='{conv}']"))
        .await;
    b.wait_shown("bob", "shall we verify?").await;

    // Alice's device list: her own device, and Bob's, unverified.
    b.click("alice", "#devices-btn").await;
    b.wait("alice", "#device-list li[data-trust=self]").await;
    b.wait("alice", "#device-list li[data-trust=unverified]").await;

    // A first attempt where Bob says the emoji differ ends cancelled on both sides.
    let _ = verify_until_compare(&mut b).await;
    b.click("bob", "#verify-no").await;
    b.wait("bob", "#verify[data-state=cancelled]").await;
    b.wait("alice", "#verify[data-state=cancelled]").await;
    let why = b.texts("alice", "#verify-text").await;
    assert!(why[0].contains("stopped (user)"), "cancelled by the person: {why:?}");
    b.wait("alice", "#device-list li[data-trust=unverified]").await;

    // Then both agree: the same seven emoji on both screens, and verified on both.
    let (alice_emoji, bob_emoji) = verify_until_compare(&mut b).await;
    assert_eq!(alice_emoji.len(), 7, "seven emoji: {alice_emoji:?}");
    assert_eq!(alice_emoji, bob_emoji, "both screens show the same code");
    b.click("alice", "#verify-yes").await;
    b.click("bob", "#verify-yes").await;
    b.wait("alice", "#verify[data-state=verified]").await;
    b.wait("bob", "#verify[data-state=verified]").await;
    b.wait("alice", "#device-list li[data-trust=verified]").await;
    // And Bob's page lists Alice's device as verified too.
    b.click("bob", "#devices-btn").await;
    b.wait("bob", "#device-list li[data-trust=verified]").await;

    // Bob's new phone (natter-sdk), verified from his page: signed by bob's signing key,
    // which his page made and vouches for — so alice's page trusts the phone without
    // verifying it (PROTOCOL.md §12.12).
    let states = tempfile::tempdir().unwrap();
    let mut phone2 = phone(&s, states.path(), "bob", 2, false).await;
    b.click("bob", "#devices-btn").await;
    b.click("bob", "#devices-btn").await;
    let row = format!("#device-list li[data-device='{}']", phone2.device.0);
    b.wait("bob", &format!("{row}[data-trust=unverified]")).await;
    b.click("bob", &format!("{row} button")).await;
    let step = |want: &'static str| {
        move |e: &ClientEvent| match e {
            ClientEvent::Verification(v) if format!("{:?}", v.state).to_lowercase().starts_with(want) => {
                Some(v.clone())
            }
            _ => None,
        }
    };
    let asked = wait_for(&mut phone2.events, step("requested")).await;
    phone2.client.accept_verification(&asked.txn).await.unwrap();
    let on_phone = wait_for(&mut phone2.events, step("compare")).await;
    b.wait("bob", "#verify[data-state=compare]").await;
    let on_page = b.texts("bob", "#verify-emoji .emoji").await;
    let natter_sdk::VerificationState::Compare { emoji, .. } = on_phone.state else {
        unreachable!()
    };
    let on_phone: Vec<String> = emoji.iter().map(|(e, n)| format!("{e}\n{n}")).collect();
    assert_eq!(on_page, on_phone, "the page and the phone show the same code");
    b.click("bob", "#verify-yes").await;
    phone2.client.confirm_verification(&asked.txn, true).await.unwrap();
    b.wait("bob", "#verify[data-state=verified]").await;
    wait_for(&mut phone2.events, step("verified")).await;
    b.click("alice", "#devices-btn").await;
    b.click("alice", "#devices-btn").await;
    b.wait("alice", &format!("{row}[data-trust=verified]")).await;

    let shots = repo().join("target/browser-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    b.cmd(json!({"op": "screenshot", "page": "bob", "path": shots.join("e2ee-verified.png")}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_browser_restores_encrypted_history_from_the_key_backup() {
    let dir = tempfile::tempdir().unwrap();
    let states = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    let url = page_url(&s, "websocket");
    b.open("old", &url).await;
    sign_up(&mut b, "old", "alice", "websocket").await;
    let mut bob = phone(&s, states.path(), "bob", 1, true).await;
    let conv = encrypted_dm_from_page(&mut b, "old", "bob").await;
    let c = ConversationId(conv);

    // The old page sets up the backup: the recovery key is shown once.
    b.click("old", "#backup summary").await;
    b.click("old", "#backup-enable").await;
    b.wait("old", "#recovery-key:not([hidden])").await;
    let recovery = b.texts("old", "#recovery-key").await.remove(0);
    assert!(recovery.len() > 40, "a recovery key: {recovery}");

    // Five each way, all backed up (the page's own as it sends, Bob's as it reads them).
    for i in 0..5 {
        b.fill("old", "#text", &format!("from the old page {i}")).await;
        b.press("old", "#text", "Enter").await;
        b.wait_shown("old", &format!("from the old page {i}")).await;
        bob.client.send(c, &format!("from bob {i}")).await.unwrap();
        b.wait_shown("old", &format!("from bob {i}")).await;
    }
    let want: Vec<String> = (0..5)
        .flat_map(|i| [format!("from the old page {i}"), format!("from bob {i}")])
        .collect();
    let mut read_by_bob = read(&mut bob, c, 10).await;
    read_by_bob.sort();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(read_by_bob, sorted);
    // Every key is in the backup once the upload under way is done.
    let flushed = b
        .eval("old", "await window.natter.client.backupNow(); return true;")
        .await;
    assert_eq!(flushed, json!(true));

    // A new browser of Alice's, alone: the history it was never sealed for shows unopened.
    b.open("new", &url).await;
    b.wait("new", "#auth:not([hidden])").await;
    b.fill("new", "#username", "alice").await;
    b.fill("new", "#password", PASSWORD).await;
    b.click("new", "#login").await;
    b.wait("new", "#app:not([hidden])").await;
    b.wait("new", &format!("#conversations li[data-conversation='{conv}'] .lock"))
        .await;
    b.click("new", &format!("#conversations li[data-conversation='{conv}']"))
        .await;
    b.wait_fn(
        "new",
        "document.querySelectorAll('#message-list .msg.undecryptable').length === 10",
    )
    .await;

    // The page knows why: they came before the change that added this device, the seq it
    // reads from.
    b.wait_fn(
        "new",
        "[...document.querySelectorAll('#message-list .notice')].some(e => e.textContent.includes('You added device'))",
    )
    .await;
    let from = b
        .eval(
            "new",
            &format!("return await window.natter.client.readableFrom({conv});"),
        )
        .await;
    let last_old = page_undecryptable(&mut b, "new", conv)
        .await
        .iter()
        .map(|(s, _)| *s)
        .max()
        .unwrap();
    assert!(
        from.as_u64().is_some_and(|f| f > last_old),
        "readable from {from} (after {last_old})"
    );
    b.click("new", &format!("#conversations li[data-conversation='{conv}']"))
        .await;
    b.wait_fn(
        "new",
        "document.querySelectorAll('#message-list .msg[data-before-device=true]').length === 10",
    )
    .await;

    // A wrong recovery key: a typed refusal, and nothing opens.
    let wrong = natter_protocol::client::e2ee::backup::RecoveryKey::from_random([7; 32]).to_display();
    b.click("new", "#backup summary").await;
    b.fill("new", "#recovery-input", &wrong).await;
    b.click("new", "#backup-restore button").await;
    b.wait("new", "#backup-status[data-code=WRONG_RECOVERY_KEY]").await;
    assert_eq!(page_undecryptable(&mut b, "new", conv).await.len(), 10);
    // A typo: malformed, refused as such.
    b.fill("new", "#recovery-input", &recovery[..recovery.len() - 3]).await;
    b.click("new", "#backup-restore button").await;
    b.wait("new", "#backup-status[data-code=MALFORMED_RECOVERY_KEY]").await;

    // The right one opens all ten in place.
    b.fill("new", "#recovery-input", &recovery).await;
    b.click("new", "#backup-restore button").await;
    b.wait("new", "#backup-status[data-code=OK]").await;
    b.wait_fn(
        "new",
        "document.querySelectorAll('#message-list .msg.undecryptable').length === 0",
    )
    .await;
    let shown = b.texts("new", "#message-list .msg .text").await;
    assert_eq!(shown, want, "the whole history, opened, in order");
}

/// One client per encryption state (PROTOCOL.md §12.7): a second tab of the same browser
/// profile finds the state held by the first (a Web Lock), says so, and leaves it alone;
/// the first tab goes on sealing and opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tab_leaves_the_encryption_state_to_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let states = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    let url = page_url(&s, "websocket");
    b.open("tab1", &url).await;
    sign_up(&mut b, "tab1", "alice", "websocket").await;
    let mut bob = phone(&s, states.path(), "bob", 1, true).await;
    let conv = encrypted_dm_from_page(&mut b, "tab1", "bob").await;

    b.cmd(json!({"op": "openTab", "page": "tab2", "of": "tab1", "url": url}))
        .await;
    b.wait("tab2", "#banner[data-reason=in_use]").await;
    assert_eq!(
        b.eval("tab1", "return document.getElementById('banner').hidden;").await,
        json!(true),
        "the first tab keeps the state"
    );
    b.fill("tab1", "#text", "from the first tab").await;
    b.press("tab1", "#text", "Enter").await;
    assert_eq!(
        read(&mut bob, ConversationId(conv), 1).await,
        vec!["from the first tab"]
    );
    bob.client
        .send(ConversationId(conv), "back to the first tab")
        .await
        .unwrap();
    b.wait_shown("tab1", "back to the first tab").await;
}
