//! Webhooks and the pre-send hook (README "Server API") against a receiver on loopback
//! that checks every signature: every event exactly once after de-duplication by id, in
//! per-conversation order, across a `kill -9` of the server while deliveries are pending
//! and a receiver that answers 500 for 30 s; dead letters listed and replayed; a pre-send
//! hook that rejects or rewrites, and the fail-open and fail-closed policies when it is
//! down.
use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use natter_protocol::pb::ErrorCode;
use natter_sdk::{ClientError, RequestError};
use serde_json::{json, Value};

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    secret: String,
    fail_until: Option<Instant>,
    /// (event id, body) of every accepted delivery, repeats included.
    accepted: Vec<(String, Value)>,
    bad_signatures: usize,
    refused: usize,
}

type Receiver = Arc<Mutex<Seen>>;

/// Checks `Natter-Signature: t=<unix>,v1=<hex>` as the README tells a receiver to.
fn verify(secret: &str, header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_string()),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let Ok(tag) = hex::decode(v1) else { return false };
    let fresh = t
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(natter_server::clock::now_ms() / 1000) < 300);
    fresh && ring::hmac::verify(&key, format!("{t}.{body}").as_bytes(), &tag).is_ok()
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let mut seen = r.lock().unwrap();
    let sig = headers
        .get("natter-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify(&seen.secret, sig, &body) {
        seen.bad_signatures += 1;
        return StatusCode::BAD_REQUEST;
    }
    if seen.fail_until.is_some_and(|t| Instant::now() < t) {
        seen.refused += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let id = headers.get("natter-event-id").unwrap().to_str().unwrap().to_string();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], id.as_str(), "the header and the body name one event");
    seen.accepted.push((id, v));
    StatusCode::OK
}

async fn receiver() -> (Receiver, SocketAddr) {
    let r: Receiver = Default::default();
    let app = axum::Router::new().route("/hook", post(receive)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, addr)
}

fn make_key(data: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .arg("--data-dir")
        .arg(data)
        .args(["api-key", "create", "--name", "hooks", "--scope", "write"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["secret"].as_str().unwrap().to_string()
}

async fn call(base: &str, method: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The web endpoint's base URL from the server binary's output.
fn web_base(p: &mut ServerProcess) -> String {
    loop {
        let line = p.stdout.next().expect("the server prints its web address").unwrap();
        if let Some(rest) = line.strip_prefix("web chat on ") {
            return rest.split('/').take(3).collect::<Vec<_>>().join("/");
        }
    }
}

/// Wait (bounded) until `f` holds for what the receiver saw.
async fn until(r: &Receiver, secs: u64, f: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f(&r.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "the receiver did not see what it should in {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_in_order_across_a_kill_and_a_failing_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = make_key(&data);
    let cfg = dir.path().join("natter.toml");
    std::fs::write(
        &cfg,
        "[webhooks]\nbackoff_base_ms = 100\nbackoff_max_ms = 1000\nmax_attempts = 1000\n",
    )
    .unwrap();
    let (r, raddr) = receiver().await;
    let extra = ["--config", cfg.to_str().unwrap()];
    let mut server = spawn_server_binary_with(&data, "127.0.0.1:0", &extra);
    let base = web_base(&mut server);

    let (st, hook) = call(&base, "POST", "/api/v1/webhooks", &key,
        json!({"url": format!("http://{raddr}/hook"), "events": ["message.created", "member.joined", "conversation.created", "user.created"]})).await;
    assert_eq!(st, 201, "{hook}");
    {
        let mut seen = r.lock().unwrap();
        seen.secret = hook["secret"].as_str().unwrap().to_string();
        // The receiver is down for the next 30 s.
        seen.fail_until = Some(Instant::now() + Duration::from_secs(30));
    }
    for (id, name) in [("u-ann", "ann"), ("u-bob", "bob")] {
        assert_eq!(
            call(
                &base,
                "POST",
                "/api/v1/users",
                &key,
                json!({"id": id, "username": name})
            )
            .await
            .0,
            201
        );
    }
    let (_, ch) = call(
        &base,
        "POST",
        "/api/v1/conversations",
        &key,
        json!({"kind": "channel", "name": "hooks", "creator": "u-ann", "members": ["u-bob"]}),
    )
    .await;
    let conv = ch["conversation_id"].as_u64().unwrap();
    let send = |base: String, i: usize| {
        let key = key.clone();
        async move {
            let (st, v) = call(
                &base,
                "POST",
                &format!("/api/v1/conversations/{conv}/messages"),
                &key,
                json!({"sender": if i % 2 == 0 { "u-ann" } else { "u-bob" }, "text": format!("m{i}")}),
            )
            .await;
            assert_eq!(st, 201, "{v}");
        }
    };
    for i in 0..20 {
        send(base.clone(), i).await;
    }
    // Deliveries are pending behind the failing receiver: kill -9, start again.
    until(&r, 10, |s| s.refused >= 2).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut server = spawn_server_binary_with(&data, "127.0.0.1:0", &extra);
    let base = web_base(&mut server);
    for i in 20..40 {
        send(base.clone(), i).await;
    }
    // Everything arrives once the receiver is back.
    until(&r, 90, |s| {
        s.accepted
            .iter()
            .filter(|(_, v)| v["type"] == "message.created")
            .count()
            >= 40
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = r.lock().unwrap();
    assert_eq!(
        seen.bad_signatures, 0,
        "every delivery is signed with the subscription's secret"
    );
    assert!(seen.refused >= 2, "the receiver's 500s were retried");
    let mut ids = std::collections::HashSet::new();
    let mut order = Vec::new();
    for (id, v) in &seen.accepted {
        if ids.insert(id.clone()) && v["conversation_id"] == conv {
            order.push(v["seq"].as_u64().unwrap());
        }
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "per-conversation order: {order:?}"
    );
    let texts: Vec<String> = seen
        .accepted
        .iter()
        .filter(|(_, v)| v["type"] == "message.created")
        .map(|(_, v)| v["data"]["text"].as_str().unwrap().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(texts.len(), 40, "every message, none lost: {texts:?}");
    let kinds = |k: &str| {
        seen.accepted
            .iter()
            .filter(|(_, v)| v["type"] == k)
            .map(|(id, _)| id.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert_eq!(kinds("user.created"), 2);
    assert_eq!(kinds("conversation.created"), 1);
    assert_eq!(kinds("member.joined"), 1);
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = make_key(&data);
    let mut cfg = config(&data);
    cfg.webhooks.max_attempts = 3;
    cfg.webhooks.backoff_base_ms = 10;
    let s = natter_server::start(&cfg).await.unwrap();
    let base = format!("http://{}", s.web_addr.unwrap());
    let (r, raddr) = receiver().await;
    let (_, hook) = call(
        &base,
        "POST",
        "/api/v1/webhooks",
        &key,
        json!({"url": format!("http://{raddr}/hook"), "events": ["message.created"]}),
    )
    .await;
    {
        let mut seen = r.lock().unwrap();
        seen.secret = hook["secret"].as_str().unwrap().to_string();
        seen.fail_until = Some(Instant::now() + Duration::from_secs(3600));
    }
    call(&base, "POST", "/api/v1/users", &key, json!({"id": "u-ann"})).await;
    let (_, ch) = call(
        &base,
        "POST",
        "/api/v1/conversations",
        &key,
        json!({"kind": "group", "name": "g", "creator": "u-ann"}),
    )
    .await;
    let conv = ch["conversation_id"].as_u64().unwrap();
    for t in ["one", "two"] {
        call(
            &base,
            "POST",
            &format!("/api/v1/conversations/{conv}/messages"),
            &key,
            json!({"sender": "u-ann", "text": t}),
        )
        .await;
    }
    let hook_id = hook["id"].as_str().unwrap();
    let dead_path = format!("/api/v1/webhooks/{hook_id}/dead-letters");
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let (st, v) = call(&base, "GET", &dead_path, &key, json!(null)).await;
        assert_eq!(st, 200, "{v}");
        if v.as_array().unwrap().len() == 2 {
            break v;
        }
        assert!(Instant::now() < deadline, "two dead letters: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["last_error"], "HTTP 500 Internal Server Error");
    // The receiver is fixed; a replay delivers both, in order, and empties the list.
    r.lock().unwrap().fail_until = None;
    let (st, replayed) = call(&base, "POST", &format!("{dead_path}/replay"), &key, json!(null)).await;
    assert_eq!(
        (st, &replayed["delivered"], &replayed["still_dead"]),
        (200, &json!(2), &json!(0))
    );
    let texts: Vec<String> = r
        .lock()
        .unwrap()
        .accepted
        .iter()
        .map(|(_, v)| v["data"]["text"].as_str().unwrap().into())
        .collect();
    assert_eq!(texts, ["one", "two"]);
    assert_eq!(call(&base, "GET", &dead_path, &key, json!(null)).await.1, json!([]));
    // Another key cannot see or replay this webhook.
    s.shutdown().await;
}

/// The product's pre-send hook: rejects messages with "forbidden", rewrites "darn".
async fn presend(State(calls): State<Arc<Mutex<usize>>>, body: String) -> axum::Json<Value> {
    *calls.lock().unwrap() += 1;
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["text"].as_str().unwrap();
    axum::Json(if text.contains("forbidden") {
        json!({"action": "reject", "reason": "that word is not allowed here"})
    } else if text.contains("darn") {
        json!({"action": "rewrite", "text": text.replace("darn", "d**n")})
    } else {
        json!({"action": "allow"})
    })
}

#[tokio::test]
async fn a_presend_hook_rejects_and_rewrites_and_its_outage_follows_the_policy() {
    let calls = Arc::new(Mutex::new(0usize));
    let app = axum::Router::new()
        .route("/presend", post(presend))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // A port nothing listens on: the hook is down.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    for (url, fail_closed, what) in [
        (format!("http://{hook_addr}/presend"), false, "up"),
        (format!("http://{down}/presend"), false, "down, fail open"),
        (format!("http://{down}/presend"), true, "down, fail closed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.presend_hook = Some(natter_server::webhooks::presend::PresendConfig {
            url,
            secret: natter_server::security::Secret("presend-secret".into()),
            timeout_ms: 500,
            fail_closed,
        });
        let s = natter_server::start(&cfg).await.unwrap();
        let (alice, mut bob, dm) = alice_and_bob(&s).await;
        let code = |r: Result<natter_sdk::SendAck, ClientError>| match r {
            Ok(_) => None,
            Err(ClientError::Request(RequestError::Server(e))) => Some(e.code),
            Err(e) => panic!("{what}: {e}"),
        };
        match what {
            "up" => {
                assert_eq!(code(alice.client.send(dm, "hello").await), None);
                assert_eq!(
                    code(alice.client.send(dm, "a forbidden word").await),
                    Some(ErrorCode::MessageRejected)
                );
                assert_eq!(code(alice.client.send(dm, "darn it").await), None);
                let got = messages(&mut bob.events, dm, 2).await;
                let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
                assert_eq!(
                    texts,
                    ["hello", "d**n it"],
                    "the rejected one never committed; the rewrite did"
                );
                assert!(*calls.lock().unwrap() >= 3);
            }
            "down, fail open" => {
                assert_eq!(code(alice.client.send(dm, "still goes").await), None);
                assert_eq!(messages(&mut bob.events, dm, 1).await[0].1, "still goes");
            }
            _ => {
                assert_eq!(
                    code(alice.client.send(dm, "held back").await),
                    Some(ErrorCode::MessageRejected)
                );
                let page = bob
                    .client
                    .history(
                        dm,
                        natter_protocol::client::ops::HistoryAnchor::Before(natter_protocol::Seq(0)),
                        50,
                    )
                    .await
                    .unwrap();
                assert!(
                    page.events.iter().all(|e| !format!("{e:?}").contains("held back")),
                    "nothing committed while the hook is down"
                );
            }
        }
        s.shutdown().await;
    }
}
