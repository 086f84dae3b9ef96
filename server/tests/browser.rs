//! Browser tests: the chat page (web/) and natter-wasm in real headless Chromium, against
//! a real server on loopback, over WebTransport and WebSocket. `web/tests/driver.mjs`
//! drives Chromium (playwright-core, Debian's chromium); this file orchestrates it with
//! native natter-sdk clients and server hooks, and asserts. `scripts/test.sh` builds the
//! WASM package and installs Chromium and the driver's one npm package first.
use crate::common;
#[path = "browser/e2ee.rs"]
mod e2ee;
#[path = "browser/media.rs"]
mod media;
#[path = "browser/profiles.rs"]
mod profiles;
#[path = "browser/push.rs"]
mod push;
#[path = "browser/search.rs"]
mod search;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use natter_protocol::pb;
use natter_sdk::{ClientEvent, ConversationId, UserId};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The Chromium driver process.
struct Browser {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next: u64,
}

impl Browser {
    async fn start() -> Browser {
        Browser::start_with_args("").await
    }

    /// With extra Chromium flags.
    async fn start_with_args(args: &str) -> Browser {
        let repo = repo();
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        for (path, what) in [
            (
                repo.join("web/pkg/natter_wasm_bg.wasm"),
                "the natter-wasm package (bash sdk-wasm/build.sh)",
            ),
            (
                repo.join("web/tests/node_modules/playwright-core"),
                "playwright-core (cd web/tests && npm ci)",
            ),
            (PathBuf::from(&chromium), "Chromium (apt-get install chromium)"),
        ] {
            assert!(
                path.exists(),
                "browser tests need {what}: {} is missing. `bash scripts/test.sh` sets everything up.",
                path.display()
            );
        }
        let mut child = Command::new("node")
            .arg(repo.join("web/tests/driver.mjs"))
            .env("CHROMIUM_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut b = Browser {
            _child: child,
            stdin,
            lines,
            next: 1,
        };
        let ready = b.reply().await;
        assert_eq!(ready["value"], "ready");
        b
    }

    async fn reply(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("browser driver answers within 60 s")
            .unwrap()
            .expect("browser driver running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("driver said {line:?}: {e}"))
    }

    async fn cmd(&mut self, mut cmd: Value) -> Value {
        let id = self.next;
        self.next += 1;
        cmd["id"] = json!(id);
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let reply = self.reply().await;
        assert_eq!(reply["id"], json!(id));
        assert!(reply["ok"] == json!(true), "browser command {cmd} failed: {reply:#}");
        reply["value"].clone()
    }

    async fn open(&mut self, page: &str, url: &str) {
        self.cmd(json!({"op": "open", "page": page, "url": url})).await;
    }
    async fn fill(&mut self, page: &str, selector: &str, value: &str) {
        self.cmd(json!({"op": "fill", "page": page, "selector": selector, "value": value}))
            .await;
    }
    async fn click(&mut self, page: &str, selector: &str) {
        self.cmd(json!({"op": "click", "page": page, "selector": selector}))
            .await;
    }
    async fn type_text(&mut self, page: &str, selector: &str, value: &str) {
        self.cmd(json!({"op": "type", "page": page, "selector": selector, "value": value}))
            .await;
    }
    async fn press(&mut self, page: &str, selector: &str, key: &str) {
        self.cmd(json!({"op": "press", "page": page, "selector": selector, "key": key}))
            .await;
    }
    async fn wait(&mut self, page: &str, selector: &str) {
        self.cmd(json!({"op": "wait", "page": page, "selector": selector}))
            .await;
    }
    /// Wait until `js` (an expression in the page) is truthy; its value.
    async fn wait_fn(&mut self, page: &str, js: &str) -> Value {
        self.cmd(json!({"op": "waitFn", "page": page, "js": js})).await
    }
    /// Wait until the open conversation shows a message with exactly this text.
    async fn wait_shown(&mut self, page: &str, text: &str) {
        let text = serde_json::to_string(text).unwrap();
        let js =
            format!("[...document.querySelectorAll('#message-list .msg .text')].some(e => e.textContent === {text})");
        self.wait_fn(page, &js).await;
    }
    /// Wait until the page holds at least `n` messages of a conversation.
    async fn wait_stored(&mut self, page: &str, conv: u64, n: usize) {
        let js = format!("[...window.natter.convs.get({conv}).messages.values()].filter(m => !m.notice).length >= {n}");
        self.wait_fn(page, &js).await;
    }
    async fn eval(&mut self, page: &str, js: &str) -> Value {
        self.cmd(json!({"op": "eval", "page": page, "js": js})).await
    }
    async fn texts(&mut self, page: &str, selector: &str) -> Vec<String> {
        let v = self
            .cmd(json!({"op": "text", "page": page, "selector": selector}))
            .await;
        serde_json::from_value(v).unwrap()
    }
}

fn web_config(dir: &Path) -> natter_server::Config {
    let mut cfg = config(dir);
    cfg.web_root = repo().join("web");
    cfg.heartbeat_interval_ms = 500;
    cfg
}

fn page_url(s: &natter_server::RunningServer, transport: &str) -> String {
    format!("http://{}/?transport={transport}", s.web_addr.expect("web endpoint"))
}

/// Register and sign in through the page's form; waits for the chat view on `transport`.
async fn sign_up(b: &mut Browser, page: &str, name: &str, transport: &str) {
    b.wait(page, "#auth:not([hidden])").await;
    b.fill(page, "#username", name).await;
    b.fill(page, "#password", PASSWORD).await;
    b.click(page, "#register").await;
    b.wait(page, "#app:not([hidden])").await;
    b.wait(page, &format!("#conn[data-transport={transport}]")).await;
}

/// (seq, text) of the page's messages in a conversation, in seq order.
async fn page_messages(b: &mut Browser, page: &str, conv: u64) -> Vec<(u64, String)> {
    let v = b
        .eval(
            page,
            &format!(
                "const c = window.natter.convs.get({conv}); if (!c) return [];
                 return [...c.messages.values()].filter(m => !m.notice).sort((a, b) => a.seq - b.seq).map(m => [m.seq, m.text]);"
            ),
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// Conversation events the page received, as (conversation, seq), in arrival order.
async fn page_event_log(b: &mut Browser, page: &str) -> Vec<(u64, u64)> {
    let v = b
        .eval(
            page,
            "return window.natter.log.filter(e => e.type === 'event').map(e => [e.conversationId, e.seq]);",
        )
        .await;
    serde_json::from_value(v).unwrap()
}

fn assert_exactly_once_in_order(log: &[(u64, u64)], conv: u64) {
    let seqs: Vec<u64> = log.iter().filter(|(c, _)| *c == conv).map(|(_, s)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "events of conversation {conv} arrived out of order, doubled or with a gap: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_over_webtransport_with_typing_and_read_marks() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    let url = page_url(&s, "webtransport");
    b.open("alice", &url).await;
    b.open("bob", &url).await;
    sign_up(&mut b, "alice", "alice", "webtransport").await;
    sign_up(&mut b, "bob", "bob", "webtransport").await;

    // Alice starts a DM and writes before Bob looks: Bob's list shows it unread.
    b.fill("alice", "#dm-user", "bob").await;
    b.click("alice", "#new-dm button").await;
    b.wait("alice", "#composer:not([hidden])").await;
    b.fill("alice", "#text", "hi bob, are you there?").await;
    b.press("alice", "#text", "Enter").await;
    b.wait("bob", "#conversations [data-unread='1']").await;
    // Bob sees Alice online (presence dot) in his list.
    b.wait("bob", "#conversations .dot[data-presence=online]").await;

    // Bob opens it: the message is there, and Alice's mark turns to read.
    b.click("bob", "#conversations li").await;
    b.wait_shown("bob", "hi bob, are you there?").await;
    b.wait("alice", "#message-list .msg.mine [data-status=read]").await;

    // Typing both ways, then replies both ways.
    b.type_text("bob", "#text", "yes, here").await;
    b.wait_fn(
        "alice",
        "document.getElementById('typing').textContent.includes('bob is typing')",
    )
    .await;
    b.press("bob", "#text", "Enter").await;
    b.wait_shown("alice", "yes, here").await;
    b.wait_fn("alice", "document.getElementById('typing').textContent === ''")
        .await;
    b.wait("bob", "#message-list .msg.mine [data-status=read]").await;

    b.type_text("alice", "#text", "great").await;
    b.wait_fn(
        "bob",
        "document.getElementById('typing').textContent.includes('alice is typing')",
    )
    .await;
    b.press("alice", "#text", "Enter").await;
    b.wait_shown("bob", "great").await;
    b.wait_fn(
        "alice",
        "document.querySelectorAll('#message-list .msg.mine [data-status=read]').length === 2",
    )
    .await;

    // Both pages show the same conversation in the same order.
    let a_texts = b.texts("alice", "#message-list .msg .text").await;
    let b_texts = b.texts("bob", "#message-list .msg .text").await;
    assert_eq!(a_texts, vec!["hi bob, are you there?", "yes, here", "great"]);
    assert_eq!(a_texts, b_texts);

    let shots = repo().join("target/browser-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let path = shots.join("webtransport-chat.png");
    b.cmd(json!({"op": "screenshot", "page": "alice", "path": path})).await;
    assert!(std::fs::metadata(&path).unwrap().len() > 10_000, "a real screenshot");
    eprintln!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_websocket_and_a_native_client_see_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    b.open("web", &page_url(&s, "websocket")).await;
    sign_up(&mut b, "web", "webby", "websocket").await;
    let transport = b.eval("web", "return window.natter.client.transport;").await;
    assert_eq!(transport, "websocket");

    let mut nate = user(&s, "nate").await;
    let dm = nate.client.direct("webby").await.unwrap();
    let conv = dm.conversation_id;
    b.wait_fn("web", &format!("window.natter.convs.has({conv})")).await;

    // Both send 15 at once, interleaving on the server.
    let js =
        format!("const c = window.natter.client; for (let i = 0; i < 15; i++) c.send({conv}, 'w' + i); return true;");
    let page_sends = b.eval("web", &js);
    let texts: Vec<String> = (0..15).map(|i| format!("n{i}")).collect();
    let native = async {
        let sends = texts.iter().map(|t| nate.client.send(ConversationId(conv), t));
        futures::future::try_join_all(sends).await.unwrap()
    };
    let (_, acks) = tokio::join!(page_sends, native);
    assert_eq!(acks.len(), 15);

    let native_view = messages(&mut nate.events, ConversationId(conv), 30).await;
    b.wait_stored("web", conv, 30).await;
    let page_view = page_messages(&mut b, "web", conv).await;
    assert_eq!(page_view.len(), 30);
    assert_eq!(
        native_view, page_view,
        "the browser and the native client disagree on the order"
    );
    // Each side's own messages keep their send order.
    for prefix in ["w", "n"] {
        let own: Vec<String> = page_view
            .iter()
            .filter(|(_, t)| t.starts_with(prefix))
            .map(|(_, t)| t.clone())
            .collect();
        let want: Vec<String> = (0..15).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(own, want);
    }
    assert_exactly_once_in_order(&page_event_log(&mut b, "web").await, conv);
    let transport = b.eval("web", "return window.natter.client.transport;").await;
    assert_eq!(transport, "websocket", "stayed on WebSocket");
}

/// The page shows what the protocol's timeline fold makes of edits, deletes and reactions:
/// it draws from natter-wasm's `Timeline`, not a fold of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_and_reactions_show_in_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    b.open("web", &page_url(&s, "websocket")).await;
    sign_up(&mut b, "web", "wendy", "websocket").await;

    let nate = user(&s, "nate").await;
    let conv = ConversationId(nate.client.direct("wendy").await.unwrap().conversation_id);
    let helo = nate.client.send(conv, "helo").await.unwrap().seq;
    let bye = nate.client.send(conv, "bye").await.unwrap().seq;
    b.wait_fn("web", &format!("window.natter.convs.has({})", conv.0)).await;
    b.click("web", &format!("#conversations li[data-conversation='{}']", conv.0))
        .await;
    b.wait_shown("web", "bye").await;

    nate.client.edit(conv, helo, "hello").await.unwrap();
    nate.client.react(conv, helo, "👍", false).await.unwrap();
    // Wendy reacts from the page's own client: her reaction is marked as hers.
    let js = format!(
        "return window.natter.client.react({}, {}, '👍', false).then(() => true);",
        conv.0, helo.0
    );
    b.eval("web", &js).await;
    nate.client.delete_message(conv, bye).await.unwrap();

    b.wait_shown("web", "hello").await;
    b.wait_shown("web", "message deleted").await;
    let reaction = format!("#message-list li[data-seq='{}'] .reaction[data-emoji='👍']", helo.0);
    b.wait_fn(
        "web",
        &format!("document.querySelector(\"{reaction}\")?.textContent === '👍 2'"),
    )
    .await;
    let shown = b
        .eval(
            "web",
            &format!(
                "const li = (s) => document.querySelector(`#message-list li[data-seq='${{s}}']`);
                 return [li({h}).querySelector('.meta').textContent.includes('edited'),
                         li({h}).querySelector('.reaction').classList.contains('mine'),
                         li({y}).classList.contains('deleted'),
                         li({y}).querySelector('.reactions') === null];",
                h = helo.0,
                y = bye.0
            ),
        )
        .await;
    assert_eq!(
        shown,
        json!([true, true, true, true]),
        "edited mark, own reaction, tombstone"
    );
    assert_eq!(
        page_messages(&mut b, "web", conv.0).await,
        vec![(helo.0, "hello".to_string()), (bye.0, "message deleted".to_string())],
        "edits and deletes are events of their own, not messages"
    );
}

async fn cut_and_resume(transport: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    b.open("web", &page_url(&s, transport)).await;
    sign_up(&mut b, "web", "rita", transport).await;
    let mut sam = user(&s, "sam").await;
    let conv = sam.client.direct("rita").await.unwrap().conversation_id;
    let rita = UserId(b.eval("web", "return window.natter.me.userId;").await.as_u64().unwrap());
    b.wait_fn("web", &format!("window.natter.convs.has({conv})")).await;

    // Sam sends 40 while Rita's connection is cut by the server after the 10th.
    let mut sent = Vec::new();
    for i in 0..40 {
        sent.push(
            sam.client
                .send(ConversationId(conv), &format!("m{i}"))
                .await
                .unwrap()
                .seq
                .0,
        );
        if i == 9 {
            b.wait_stored("web", conv, 10).await;
            assert_eq!(s.disconnect_user(rita), 1, "rita's one connection cut");
        }
    }
    b.wait_stored("web", conv, 40).await;
    let view = page_messages(&mut b, "web", conv).await;
    let want: Vec<(u64, String)> = sent
        .iter()
        .enumerate()
        .map(|(i, seq)| (*seq, format!("m{i}")))
        .collect();
    assert_eq!(view, want, "lost, doubled or reordered after the cut");
    assert_exactly_once_in_order(&page_event_log(&mut b, "web").await, conv);
    // It really was cut and came back by resuming.
    let log = b
        .eval("web", "return window.natter.log.filter(e => e.type !== 'event');")
        .await;
    let log = log.as_array().unwrap();
    let cut = log
        .iter()
        .position(|e| e["type"] == "disconnected")
        .expect("a disconnect");
    assert!(
        log[cut..]
            .iter()
            .any(|e| e["type"] == "connected" && e["resumed"] == true),
        "reconnected with resume: {log:?}"
    );
    // Sam hears nothing odd: his own view is the same.
    let native = messages(&mut sam.events, ConversationId(conv), 40).await;
    assert_eq!(native, want);
    let _ = ClientEvent::Disconnected { reason: String::new() };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_cut_off_by_the_server_resumes_over_webtransport_without_loss() {
    cut_and_resume("webtransport").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_cut_off_by_the_server_resumes_over_websocket_without_loss() {
    cut_and_resume("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_websocket_when_webtransport_is_missing_or_fails() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    let url = page_url(&s, "auto");
    // A browser without WebTransport.
    b.cmd(json!({"op": "open", "page": "old", "url": url, "init": "delete window.WebTransport;"}))
        .await;
    sign_up(&mut b, "old", "olga", "websocket").await;
    // A browser with it, but the server's WebTransport endpoint refuses connections.
    s.stop_webtransport().await;
    b.open("new", &url).await;
    sign_up(&mut b, "new", "nina", "websocket").await;

    // They chat through the page.
    b.fill("old", "#dm-user", "nina").await;
    b.click("old", "#new-dm button").await;
    b.wait("old", "#composer:not([hidden])").await;
    b.fill("old", "#text", "can you hear me?").await;
    b.press("old", "#text", "Enter").await;
    b.wait("new", "#conversations li").await;
    b.click("new", "#conversations li").await;
    b.wait_shown("new", "can you hear me?").await;
    b.wait("old", "#message-list .msg.mine [data-status=read]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_channels_from_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    let url = page_url(&s, "webtransport");
    let _bob = user(&s, "bob").await;
    let mut carol = user(&s, "carol").await;
    b.open("ann", &url).await;
    sign_up(&mut b, "ann", "ann", "webtransport").await;

    // A group with two native members, created from the page.
    b.fill("ann", "#group-name", "launch crew").await;
    b.fill("ann", "#group-members", "bob, carol").await;
    b.click("ann", "#new-group button").await;
    b.wait_fn(
        "ann",
        "document.getElementById('chat-title').textContent === 'launch crew'",
    )
    .await;
    b.fill("ann", "#text", "kickoff at ten").await;
    b.press("ann", "#text", "Enter").await;
    let groups = carol.client.conversations().await.unwrap();
    let group = groups
        .iter()
        .find(|c| c.name == "launch crew")
        .expect("carol is in the group");
    assert_eq!(group.member_count, 3);
    let texts = messages(&mut carol.events, ConversationId(group.conversation_id), 1).await;
    assert_eq!(texts[0].1, "kickoff at ten");

    // A channel created by carol, joined from the page; carol's message reaches it.
    let channel = carol.client.create_channel("announcements").await.unwrap();
    b.fill("ann", "#channel-name", "#announcements").await;
    b.click("ann", "#join-channel button").await;
    b.wait_fn(
        "ann",
        "document.getElementById('chat-title').textContent === '#announcements'",
    )
    .await;
    carol
        .client
        .send(ConversationId(channel.conversation_id), "welcome, ann")
        .await
        .unwrap();
    b.wait_shown("ann", "welcome, ann").await;
    // And a channel that does not exist yet is created by joining it.
    b.fill("ann", "#channel-name", "random").await;
    b.click("ann", "#join-channel button").await;
    b.wait_fn("ann", "document.getElementById('chat-title').textContent === '#random'")
        .await;
    let list = b.texts("ann", "#conversations li .name").await;
    assert_eq!(list.len(), 3, "group and two channels: {list:?}");
}

/// Retention from the page (PROTOCOL.md §5.17): the owner picks how long messages are kept,
/// members hear of it, and once the server has swept, the page shows one line where the
/// removed messages were — after a reload too — and keeps what is younger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_from_the_page_and_a_removed_range_shows_as_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    let url = page_url(&s, "websocket");
    let mut bob = user(&s, "bob").await;
    b.open("ann", &url).await;
    sign_up(&mut b, "ann", "ann", "websocket").await;
    b.fill("ann", "#group-name", "brief").await;
    b.fill("ann", "#group-members", "bob").await;
    b.click("ann", "#new-group button").await;
    b.wait_fn("ann", "document.getElementById('chat-title').textContent === 'brief'")
        .await;
    let conv = bob
        .client
        .conversations()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name == "brief")
        .expect("bob is in the group");
    let group = ConversationId(conv.conversation_id);
    bob.client.send(group, "old words").await.unwrap();
    b.wait_shown("ann", "old words").await;

    // The owner keeps messages for one day.
    b.cmd(json!({"op": "select", "page": "ann", "selector": "#retention", "value": "86400"}))
        .await;
    let changed = wait_for(&mut bob.events, |e| match e {
        ClientEvent::Event(ev) => match &ev.body {
            Some(pb::conversation_event::Body::RetentionChanged(r)) => Some(*r),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!((changed.retention_secs, changed.effective_secs), (Some(86_400), 86_400));
    b.wait_fn(
        "ann",
        "[...document.querySelectorAll('#message-list li.notice')].some(e => e.textContent === 'ann set messages to be kept for 1 day')",
    )
    .await;

    // A day later (as far as the sweep is told), everything before bob's next message goes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fresh = bob.client.send(group, "fresh words").await.unwrap();
    b.wait_shown("ann", "fresh words").await;
    let swept = s.sweep_retention(fresh.server_time_ms + 86_400_000 - 1).await.unwrap();
    assert_eq!(swept.events, fresh.seq.0 - 1);

    // A fresh load of the page: one line for the removed range, the young message, nothing old.
    b.cmd(json!({"op": "reload", "page": "ann"})).await;
    b.wait("ann", "#app:not([hidden])").await;
    b.click("ann", "#conversations li").await;
    b.wait(
        "ann",
        &format!("#message-list li.removed[data-removed-through='{}']", fresh.seq.0 - 1),
    )
    .await;
    let shown = b.texts("ann", "#message-list li").await;
    assert!(shown[0].starts_with("Older messages were removed"), "{shown:?}");
    assert!(shown.iter().any(|t| t.contains("fresh words")), "{shown:?}");
    assert!(!shown.iter().any(|t| t.contains("old words")), "{shown:?}");
    assert_eq!(
        b.eval("ann", "return document.getElementById('retention').value").await,
        json!("86400")
    );
    assert_eq!(
        b.eval("ann", "return document.getElementById('older').hidden").await,
        json!(true),
        "nothing older to load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_websocket_work_over_tls() {
    use base64::Engine;
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = web_config(dir.path());
    cfg.web_tls = natter_server::config::WebTls::On;
    let s = natter_server::start(&cfg).await.unwrap();
    assert!(s.web_tls);
    // Chromium trusts the development certificate by its public key, as a developer would
    // with --ignore-certificate-errors-spki-list (a real deployment has a CA certificate).
    let key = std::fs::read(dir.path().join("dev-key.der")).unwrap();
    let spki = rcgen::KeyPair::try_from(key.as_slice()).unwrap().public_key_der();
    let pin = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&spki));
    let mut b = Browser::start_with_args(&format!("--ignore-certificate-errors-spki-list={pin}")).await;
    let url = format!("https://localhost:{}/?transport=websocket", s.web_addr.unwrap().port());
    b.open("web", &url).await;
    sign_up(&mut b, "web", "tess", "websocket").await;
    let ws_url = b
        .eval(
            "web",
            "return (await (await fetch('/natter.json')).json()).websocket.url;",
        )
        .await;
    assert!(ws_url.as_str().unwrap().starts_with("wss://localhost:"), "{ws_url}");

    let mut uma = user(&s, "uma").await;
    let conv = uma.client.direct("tess").await.unwrap().conversation_id;
    b.wait_fn("web", &format!("window.natter.convs.has({conv})")).await;
    b.eval(
        "web",
        &format!("await window.natter.client.send({conv}, 'over wss'); return true;"),
    )
    .await;
    let got = messages(&mut uma.events, ConversationId(conv), 1).await;
    assert_eq!(got[0].1, "over wss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_webtransport_certificate_is_published_and_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let first = s.webtransport_cert_hashes();
    assert_eq!(first.len(), 1);
    let mut b = Browser::start().await;
    let url = page_url(&s, "webtransport");
    b.open("before", &url).await;
    sign_up(&mut b, "before", "bea", "webtransport").await;

    s.renew_webtransport_cert().unwrap();
    let renewed = s.webtransport_cert_hashes();
    assert_eq!(renewed.len(), 2, "new hash first, the previous one still published");
    assert_ne!(renewed[0], first[0]);
    assert_eq!(renewed[1], first[0]);
    // The endpoint now presents the new certificate: pinning only the new hash connects,
    // pinning only the old one does not.
    let wt_url = format!("https://127.0.0.1:{}/natter", s.webtransport_addr.unwrap().port());
    assert!(
        wt_connect(&wt_url, &renewed[0]).await.is_ok(),
        "the new certificate is served"
    );
    assert!(
        wt_connect(&wt_url, &first[0]).await.is_err(),
        "the old certificate is not"
    );
    let published = b
        .eval(
            "before",
            "return (await (await fetch('/natter.json')).json()).webtransport.certificateHashes;",
        )
        .await;
    assert_eq!(published, json!(renewed));

    // A new page connects with the new certificate; the old session keeps working.
    b.open("after", &url).await;
    sign_up(&mut b, "after", "abe", "webtransport").await;
    let conv = b
        .eval(
            "after",
            "return (await window.natter.client.direct('bea')).conversationId;",
        )
        .await;
    b.eval(
        "after",
        &format!("await window.natter.client.send({conv}, 'new cert'); return true;"),
    )
    .await;
    b.wait_fn(
        "before",
        &format!("window.natter.convs.get({conv})?.messages.size > 0 && [...window.natter.convs.get({conv}).messages.values()].some(m => m.text === 'new cert')"),
    )
    .await;
    let transport = b.eval("before", "return window.natter.client.transport;").await;
    assert_eq!(transport, "webtransport");
}

/// A native WebTransport connection that trusts only the certificate with this hash.
async fn wt_connect(url: &str, hex_hash: &str) -> Result<(), String> {
    let bytes: [u8; 32] = hex::decode(hex_hash).unwrap().try_into().unwrap();
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(bytes)])
        .build();
    let endpoint = wtransport::Endpoint::client(config).map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(DEADLINE, endpoint.connect(url))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    conn.close(wtransport::VarInt::from_u32(0), b"");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_in_the_page_and_the_package_api_from_plain_js() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    // Pat has an account and 80 messages waiting before she ever opens the page.
    let pat = user(&s, "pat").await;
    pat.client.shutdown().await;
    let quinn = user(&s, "quinn").await;
    let conv = quinn.client.direct("pat").await.unwrap().conversation_id;
    for i in 0..80 {
        quinn.client.send(ConversationId(conv), &format!("h{i}")).await.unwrap();
    }
    let mut b = Browser::start().await;
    b.open("pat", &page_url(&s, "auto")).await;
    b.wait("pat", "#auth:not([hidden])").await;
    b.fill("pat", "#username", "pat").await;
    b.fill("pat", "#password", PASSWORD).await;
    b.click("pat", "#login").await;
    b.wait(
        "pat",
        &format!("#conversations [data-conversation='{conv}'] [data-unread]"),
    )
    .await;
    let unread = b
        .eval(
            "pat",
            &format!("return document.querySelector(\"[data-conversation='{conv}'] [data-unread]\").dataset.unread;"),
        )
        .await;
    assert_eq!(unread, "80");
    b.click("pat", &format!("#conversations [data-conversation='{conv}']"))
        .await;
    // A first page, then older pages on demand until the start.
    b.wait_fn("pat", "document.querySelectorAll('#message-list .msg').length >= 30")
        .await;
    let first = b.texts("pat", "#message-list .msg .text").await;
    assert!(first.len() < 80, "not everything at once: {}", first.len());
    assert_eq!(first.last().unwrap(), "h79");
    while !b
        .eval("pat", "return document.getElementById('older').hidden;")
        .await
        .as_bool()
        .unwrap()
    {
        let before = b.texts("pat", "#message-list .msg .text").await.len();
        b.click("pat", "#older").await;
        b.wait_fn(
            "pat",
            &format!("document.querySelectorAll('#message-list .msg').length > {before}"),
        )
        .await;
    }
    let all = b.texts("pat", "#message-list .msg .text").await;
    let want: Vec<String> = (0..80).map(|i| format!("h{i}")).collect();
    assert_eq!(all, want);
    // Reading clears the badge.
    b.wait_fn(
        "pat",
        &format!("!document.querySelector(\"[data-conversation='{conv}'] [data-unread]\")"),
    )
    .await;

    // The npm package's API from plain JavaScript: typed errors, async iteration, acks.
    let out = b
        .eval(
            "pat",
            &format!(
                "const m = await import('/pkg/index.js');
                 await m.default();
                 const c = m.NatterClient.connect({{ transport: 'websocket' }});
                 let wrong;
                 try {{ await c.login('pat', 'not the password', 'x'); }} catch (e) {{ wrong = e.code; }}
                 await c.login('pat', '{PASSWORD}', 'second tab');
                 const seen = [];
                 for await (const ev of c) {{
                   seen.push(ev.type);
                   if (ev.type === 'event' && ev.event.seq === 81) break;
                 }}
                 const ack = await c.send({conv}, 'from the package');
                 const status = c.messageStatus({conv}, ack.seq);
                 c.close();
                 return {{ wrong, seen, ack, status, transport: 'ok' }};"
            ),
        )
        .await;
    assert_eq!(out["wrong"], "INVALID_CREDENTIALS", "{out}");
    let seen: Vec<String> = serde_json::from_value(out["seen"].clone()).unwrap();
    assert!(seen.contains(&"connected".to_string()), "{seen:?}");
    assert_eq!(out["ack"]["conversationId"], json!(conv));
    assert_eq!(out["ack"]["seq"], json!(82));
    // Acknowledged: sent, or already delivered when the other member's device confirmed
    // it in the same moment (its receipt can arrive with the ack).
    let state = out["status"]["state"].as_str().unwrap_or_default();
    assert!(matches!(state, "sent" | "delivered"), "{out}");
}
