//! The server API (README "Server API") as a product's backend uses it, over real HTTP on
//! the web endpoint: API keys made by `natter-server api-key`, users and a channel made
//! through the API, a system message posted among SDK clients' messages (same order for
//! everyone, once however often it is retried), hostile requests answered with typed JSON
//! errors and nothing changed, and the OpenAPI document validated and used by a client
//! generated from it (openapi-python-client).
use crate::common;

use std::path::Path;

use common::api::*;
use common::*;
use natter_sdk::{Client, ClientEvent, ConversationId};
use serde_json::{json, Value};

async fn setup() -> (tempfile::TempDir, natter_server::RunningServer, Api, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let write = make_key(&dir.path().join("data"), "backend", "write");
    let read = make_key(&dir.path().join("data"), "reports", "read");
    let admin = make_key(&dir.path().join("data"), "operator", "admin");
    std::fs::write(dir.path().join("admin.key"), admin).unwrap();
    let (s, api) = api_server(&dir.path().join("data")).await;
    (dir, s, api, write, read)
}

#[tokio::test]
async fn a_backend_makes_users_and_a_channel_and_its_system_message_takes_its_place_among_sdk_messages() {
    let (_dir, s, api, key, read) = setup().await;
    for (id, name, bot) in [
        ("u-ann", "ann", false),
        ("u-bob", "bob", false),
        ("system", "system", true),
    ] {
        let (st, u) = api
            .post(
                "/api/v1/users",
                &key,
                json!({"id": id, "username": name, "display_name": name.to_uppercase(), "bot": bot}),
            )
            .await;
        assert_eq!(st, 201, "{u}");
        assert_eq!((u["username"].as_str(), u["bot"].as_bool()), (Some(name), Some(bot)));
    }
    // The same id again is the same user (200, not a second account).
    let (st, again) = api.post("/api/v1/users", &key, json!({"id": "u-ann"})).await;
    assert_eq!((st, again["username"].as_str()), (200, Some("ann")));

    let (st, ch) = api
        .post(
            "/api/v1/conversations",
            &key,
            json!({"kind": "channel", "name": "launch", "creator": "u-ann", "members": ["u-bob", "system"]}),
        )
        .await;
    assert_eq!(st, 201, "{ch}");
    let conv = ConversationId(ch["conversation_id"].as_u64().unwrap());
    assert_eq!(ch["members"].as_array().unwrap().len(), 3);

    // The users log in with the product's tokens: the API's users are theirs.
    let connect = |sub: &'static str| {
        let s = &s;
        async move {
            let (c, mut ev) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
            c.login_with_token(&product_token(sub), "phone").await.unwrap();
            wait_for(&mut ev, |e| matches!(e, ClientEvent::Connected { .. }).then_some(())).await;
            (c, ev)
        }
    };
    let (ann, _ann_ev) = connect("u-ann").await;
    let (bob, mut bob_ev) = connect("u-bob").await;

    ann.send(conv, "a1").await.unwrap();
    let body = serde_json::to_vec(&json!({"sender": "system", "text": "The launch is at noon."})).unwrap();
    let idem = [("idempotency-key", "launch-notice-1")];
    let (st, first) = api
        .call(
            "POST",
            &format!("/api/v1/conversations/{}/messages", conv.0),
            Some(&key),
            Some(&body),
            &idem,
        )
        .await;
    assert_eq!(st, 201, "{first}");
    ann.send(conv, "a2").await.unwrap();
    // A retried POST (the backend timed out and tries again) is the same message.
    for _ in 0..3 {
        let (st, again) = api
            .call(
                "POST",
                &format!("/api/v1/conversations/{}/messages", conv.0),
                Some(&key),
                Some(&body),
                &idem,
            )
            .await;
        assert_eq!(
            (st, &again["seq"], again["duplicate"].as_bool()),
            (200, &first["seq"], Some(true))
        );
    }
    // Bob's device sees one system message, between ann's two, in seq order.
    let got = messages(&mut bob_ev, conv, 3).await;
    let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["a1", "The launch is at noon.", "a2"]);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(got[1].0, first["seq"].as_u64().unwrap());

    // History through the API (a read key will do): the same order, nothing doubled.
    let (st, page) = api
        .get(
            &format!("/api/v1/conversations/{}/messages?user=u-bob&limit=50", conv.0),
            &read,
        )
        .await;
    assert_eq!(st, 200, "{page}");
    let msgs: Vec<(&str, &str)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| (e["sender_username"].as_str().unwrap(), e["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        msgs,
        [("ann", "a1"), ("system", "The launch is at noon."), ("ann", "a2")]
    );
    let (st, one) = api
        .get(
            &format!("/api/v1/conversations/{}/messages/{}?user=u-ann", conv.0, first["seq"]),
            &read,
        )
        .await;
    assert_eq!((st, one["text"].as_str()), (200, Some("The launch is at noon.")));

    // A member reports the system message; the moderators' list has it.
    bob.report(conv, natter_sdk::Seq(first["seq"].as_u64().unwrap()), "not true")
        .await
        .unwrap();
    let (st, reports) = api.get("/api/v1/reports", &read).await;
    assert_eq!(st, 200, "{reports}");
    assert_eq!(reports[0]["reason"], "not true");
    assert_eq!(reports[0]["reporter_username"], "bob");
    assert_eq!(reports[0]["text"], "The launch is at noon.");

    // Moderation through the API: bob muted until unmuted, then his sends are refused.
    let modpath = format!("/api/v1/conversations/{}/moderation", conv.0);
    let (st, _) = api
        .post(
            &modpath,
            &key,
            json!({"by": "u-ann", "user": "u-bob", "action": "mute"}),
        )
        .await;
    assert_eq!(st, 204);
    let refused = bob.send(conv, "muted?").await.expect_err("muted");
    assert!(refused.to_string().contains("muted"), "{refused}");
    let (st, e) = api
        .post(&modpath, &key, json!({"by": "u-bob", "user": "u-ann", "action": "ban"}))
        .await;
    assert_eq!((st, e["error"]["code"].as_str()), (403, Some("FORBIDDEN")));

    // Edit and delete go through the same rules: only the sender edits.
    let (st, e) = api
        .call(
            "PATCH",
            &format!("/api/v1/conversations/{}/messages/{}", conv.0, first["seq"]),
            Some(&key),
            Some(&serde_json::to_vec(&json!({"sender": "u-bob", "text": "hijacked"})).unwrap()),
            &[],
        )
        .await;
    assert_eq!((st, e["error"]["code"].as_str()), (403, Some("FORBIDDEN")), "{e}");
    let (st, _) = api
        .call(
            "PATCH",
            &format!("/api/v1/conversations/{}/messages/{}", conv.0, first["seq"]),
            Some(&key),
            Some(&serde_json::to_vec(&json!({"sender": "system", "text": "The launch is at one."})).unwrap()),
            &[],
        )
        .await;
    assert_eq!(st, 200);
    let (st, u) = api
        .call(
            "PATCH",
            "/api/v1/users/u-ann",
            Some(&key),
            Some(br#"{"display_name": "Ann Lee", "avatar": "https://cdn.test/ann.png"}"#),
            &[],
        )
        .await;
    assert_eq!(
        (st, u["display_name"].as_str(), u["avatar"].as_str()),
        (200, Some("Ann Lee"), Some("https://cdn.test/ann.png"))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn hostile_requests_get_typed_json_errors_and_change_nothing() {
    let (dir, s, api, key, read) = setup().await;
    api.post("/api/v1/users", &key, json!({"id": "u-ann", "username": "ann"}))
        .await;
    let (_, ch) = api
        .post(
            "/api/v1/conversations",
            &key,
            json!({"kind": "channel", "name": "quiet", "creator": "u-ann"}),
        )
        .await;
    let conv = ch["conversation_id"].as_u64().unwrap();
    let history_path = format!("/api/v1/conversations/{conv}/messages?user=u-ann");
    let before = api.get(&history_path, &key).await.1;

    let send = format!("/api/v1/conversations/{conv}/messages");
    let good = serde_json::to_vec(&json!({"sender": "u-ann", "text": "hi"})).unwrap();
    let huge = serde_json::to_vec(&json!({"sender": "u-ann", "text": "x".repeat(100_000)})).unwrap();
    let revoked = make_key_online(&api, &dir).await;
    // (what, method, path, key, body, status, code)
    type Case<'a> = (&'a str, &'a str, String, Option<&'a str>, Option<Vec<u8>>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no key",
            "POST",
            send.clone(),
            None,
            Some(good.clone()),
            401,
            "UNAUTHENTICATED",
        ),
        (
            "a made-up key",
            "POST",
            send.clone(),
            Some("nk_0123456789abcdef_nope"),
            Some(good.clone()),
            401,
            "UNAUTHENTICATED",
        ),
        (
            "a revoked key",
            "POST",
            send.clone(),
            Some(&revoked),
            Some(good.clone()),
            401,
            "TOKEN_REVOKED",
        ),
        (
            "a read key writing",
            "POST",
            send.clone(),
            Some(&read),
            Some(good.clone()),
            403,
            "FORBIDDEN",
        ),
        (
            "a write key on admin",
            "GET",
            "/api/v1/keys".into(),
            Some(&key),
            None,
            403,
            "FORBIDDEN",
        ),
        (
            "an oversized body",
            "POST",
            send.clone(),
            Some(&key),
            Some(huge),
            413,
            "TOO_LARGE",
        ),
        (
            "malformed JSON",
            "POST",
            send.clone(),
            Some(&key),
            Some(b"{\"sender\": ".to_vec()),
            400,
            "BAD_REQUEST",
        ),
        (
            "an unknown field",
            "POST",
            send.clone(),
            Some(&key),
            Some(br#"{"sender":"u-ann","text":"x","admin":true}"#.to_vec()),
            400,
            "BAD_REQUEST",
        ),
        (
            "SQL in the sender",
            "POST",
            send.clone(),
            Some(&key),
            Some(br#"{"sender":"'; DROP TABLE users;--","text":"x"}"#.to_vec()),
            404,
            "NOT_FOUND",
        ),
        (
            "a path in the sender",
            "POST",
            send.clone(),
            Some(&key),
            Some(br#"{"sender":"../../etc/passwd","text":"x"}"#.to_vec()),
            404,
            "NOT_FOUND",
        ),
        (
            "a control character in an id",
            "POST",
            "/api/v1/users".into(),
            Some(&key),
            Some(br#"{"id":"a\u0000b"}"#.to_vec()),
            400,
            "BAD_REQUEST",
        ),
        (
            "SQL in a username",
            "POST",
            "/api/v1/users".into(),
            Some(&key),
            Some(br#"{"id":"x","username":"a' OR 1=1"}"#.to_vec()),
            400,
            "BAD_REQUEST",
        ),
        (
            "SQL in a conversation id",
            "GET",
            "/api/v1/conversations/1%3B%20DROP%20TABLE/messages?user=u-ann".into(),
            Some(&key),
            None,
            400,
            "BAD_REQUEST",
        ),
        (
            "a path in a conversation id",
            "GET",
            "/api/v1/conversations/..%2F..%2Fetc/messages?user=u-ann".into(),
            Some(&key),
            None,
            400,
            "BAD_REQUEST",
        ),
        (
            "a channel name with SQL",
            "POST",
            "/api/v1/conversations".into(),
            Some(&key),
            Some(br#"{"kind":"channel","name":"x'; --","creator":"u-ann"}"#.to_vec()),
            400,
            "BAD_REQUEST",
        ),
        (
            "a write key deleting a user",
            "DELETE",
            "/api/v1/users/u-ann".into(),
            Some(&key),
            None,
            403,
            "FORBIDDEN",
        ),
        (
            "a read key exporting a user",
            "GET",
            "/api/v1/users/u-ann/export".into(),
            Some(&read),
            None,
            403,
            "FORBIDDEN",
        ),
        (
            "a write key deactivating a user",
            "POST",
            "/api/v1/users/u-ann/deactivate".into(),
            Some(&key),
            Some(b"{}".to_vec()),
            403,
            "FORBIDDEN",
        ),
        (
            "SQL in a role",
            "PUT",
            format!("/api/v1/conversations/{conv}/members/u-ann/role"),
            Some(&key),
            Some(br#"{"by":"u-ann","role":"owner' OR 1=1"}"#.to_vec()),
            400,
            "BAD_REQUEST",
        ),
        (
            "a path as a new name",
            "PATCH",
            format!("/api/v1/conversations/{conv}"),
            Some(&key),
            Some(br#"{"by":"u-ann","name":"../../etc"}"#.to_vec()),
            400,
            "BAD_REQUEST",
        ),
        (
            "SQL as a reader",
            "GET",
            format!("/api/v1/conversations/{conv}/read-state?user=%27%3B%20DROP%20TABLE%20users%3B--"),
            Some(&key),
            None,
            404,
            "NOT_FOUND",
        ),
        (
            "a read cursor that is no number",
            "POST",
            format!("/api/v1/conversations/{conv}/read"),
            Some(&key),
            Some(br#"{"user":"u-ann","seq":"1; DROP"}"#.to_vec()),
            400,
            "BAD_REQUEST",
        ),
        (
            "an attachment id that is a path",
            "POST",
            send.clone(),
            Some(&key),
            Some(br#"{"sender":"u-ann","text":"x","attachments":["../../etc/passwd"]}"#.to_vec()),
            400,
            "BAD_REQUEST",
        ),
        (
            "a search as nobody",
            "GET",
            "/api/v1/search?user=..%2F..&q=x".into(),
            Some(&key),
            None,
            404,
            "NOT_FOUND",
        ),
        (
            "an unknown endpoint",
            "GET",
            "/api/v1/nope%2F..%2F..%2Fetc%2Fpasswd".into(),
            Some(&key),
            None,
            404,
            "NOT_FOUND",
        ),
        (
            "a wrong method",
            "PUT",
            send.clone(),
            Some(&key),
            Some(good.clone()),
            405,
            "BAD_REQUEST",
        ),
        (
            "a bad idempotency key",
            "POST",
            send.clone(),
            Some(&key),
            Some(good.clone()),
            400,
            "BAD_REQUEST",
        ),
    ];
    for (what, method, path, k, body, status, code) in cases {
        let extra: &[(&str, &str)] = if what == "a bad idempotency key" {
            &[("idempotency-key", "../etc; DROP")]
        } else {
            &[]
        };
        let (st, v) = api.call(method, &path, k, body.as_deref(), extra).await;
        assert_eq!((st, v["error"]["code"].as_str()), (status, Some(code)), "{what}: {v}");
    }
    // Nothing was sent or made, and the server goes on serving.
    assert_eq!(api.get(&history_path, &key).await.1, before);
    let (st, _) = api.get("/api/v1/users/x", &key).await;
    assert_eq!(st, 404, "the refused user was not made");
    let (st, sent) = api.call("POST", &send, Some(&key), Some(&good), &[]).await;
    assert_eq!((st, sent["seq"].as_u64().is_some()), (201, true));
    s.shutdown().await;
}

/// A key made, listed and revoked through the API with the admin key made offline before
/// the server started; its secret, which must no longer work.
async fn make_key_online(api: &Api, dir: &tempfile::TempDir) -> String {
    let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let (st, made) = api
        .post("/api/v1/keys", &admin, json!({"name": "temp", "scope": "write"}))
        .await;
    assert_eq!(st, 201, "{made}");
    let (st, list) = api.get("/api/v1/keys", &admin).await;
    assert_eq!(st, 200);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k.get("secret").is_none() && k.get("secret_sha256").is_none()));
    let id = made["key"]["id"].as_str().unwrap();
    let (st, _) = api
        .call("DELETE", &format!("/api/v1/keys/{id}"), Some(&admin), None, &[])
        .await;
    assert_eq!(st, 204);
    made["secret"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_openapi_document_validates_and_a_client_generated_from_it_chats() {
    let (_dir, s, api, key, _) = setup().await;
    let (st, served) = api.call("GET", "/api/v1/openapi.json", None, None, &[]).await;
    assert_eq!(st, 200);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(served, committed, "the served document is the committed one");
    api.post("/api/v1/users", &key, json!({"id": "u-ann", "username": "ann"}))
        .await;
    api.post(
        "/api/v1/users",
        &key,
        json!({"id": "u-bot", "username": "notifier", "bot": true}),
    )
    .await;
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server_api/generated_client.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("NATTER_API", &api.base)
        .env("NATTER_API_KEY", &key)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("all checks passed"), "{text}");
    println!("{text}");
    s.shutdown().await;
}
