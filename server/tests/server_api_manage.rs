//! The server API beyond messages (README "Server API"): finding users, a user's
//! conversations and read state, roles, rename and delete, search as a user, files
//! uploaded with tus and read with ranges under an API key, and suspending an account —
//! each checked against what SDK clients see.
use crate::common;

use base64::Engine;
use common::api::*;
use common::*;
use natter_sdk::Client;
use serde_json::{json, Value};

async fn setup(dir: &std::path::Path) -> (natter_server::RunningServer, Api, String, String, String) {
    let write = make_key(&dir.join("data"), "backend", "write");
    let read = make_key(&dir.join("data"), "reader", "read");
    let admin = make_key(&dir.join("data"), "operator", "admin");
    let (s, api) = api_server(&dir.join("data")).await;
    (s, api, write, read, admin)
}

async fn send(api: &Api, key: &str, conv: u64, sender: &str, text: &str) -> u64 {
    let (st, v) = api
        .post(
            &format!("/api/v1/conversations/{conv}/messages"),
            key,
            json!({"sender": sender, "text": text}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    v["seq"].as_u64().unwrap()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_finds_users_manages_conversations_reads_state_searches_and_moves_files() {
    let dir = tempfile::tempdir().unwrap();
    let (s, api, key, read, admin) = setup(dir.path()).await;
    for (id, name) in [("u-ann", "ann"), ("u-bob", "bob"), ("u-bea", "bea"), ("u-cid", "cid")] {
        let (st, u) = api
            .post("/api/v1/users", &key, json!({"id": id, "username": name}))
            .await;
        assert_eq!(st, 201, "{u}");
    }
    let (st, found) = api.get("/api/v1/users?prefix=b", &read).await;
    assert_eq!(st, 200, "{found}");
    let ids: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["u-bea", "u-bob"], "in username order, product ids");

    let (st, g) = api
        .post(
            "/api/v1/conversations",
            &key,
            json!({"kind": "group", "name": "crew", "creator": "u-ann", "members": ["u-bob"]}),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    let conv = g["conversation_id"].as_u64().unwrap();
    let last = send(&api, &key, conv, "u-ann", "the quokka-word is out").await;

    // Bob's conversations: one, unread; the backend marks it read for him.
    let (st, list) = api.get("/api/v1/users/u-bob/conversations", &read).await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        (list[0]["unread_count"].as_u64(), list[0]["role"].as_str()),
        (Some(1), Some("member"))
    );
    assert_eq!(list[0]["last_message"]["text"], "the quokka-word is out");
    let (st, _) = api
        .post(
            &format!("/api/v1/conversations/{conv}/read"),
            &key,
            json!({"user": "u-bob", "seq": last}),
        )
        .await;
    assert_eq!(st, 204);
    let (_, state) = api
        .get(&format!("/api/v1/conversations/{conv}/read-state?user=u-ann"), &read)
        .await;
    let readers = state["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["read_seq"].as_u64() == Some(last))
        .count();
    assert_eq!(readers, 2, "ann (her own message) and now bob: {state}");
    let (_, list) = api.get("/api/v1/users/u-bob/conversations", &read).await;
    assert_eq!(list[0]["unread_count"].as_u64(), Some(0));
    // Read keys do not write.
    let (st, e) = api
        .post(
            &format!("/api/v1/conversations/{conv}/read"),
            &read,
            json!({"user": "u-bob", "seq": last}),
        )
        .await;
    assert_eq!((st, e["error"]["code"].as_str()), (403, Some("FORBIDDEN")));

    // Roles and rename: bob made admin renames; a member cannot make roles.
    let role = |by: &str, role: &str| json!({"by": by, "role": role});
    let put = |path: String, body: Value, k: &str| {
        let req = api
            .http
            .put(format!("{}{path}", api.base))
            .header("authorization", format!("Bearer {k}"))
            .header("content-type", "application/json")
            .body(body.to_string());
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        put(
            format!("/api/v1/conversations/{conv}/members/u-ann/role"),
            role("u-bob", "admin"),
            &key
        )
        .await,
        403
    );
    assert_eq!(
        put(
            format!("/api/v1/conversations/{conv}/members/u-bob/role"),
            role("u-ann", "admin"),
            &key
        )
        .await,
        204
    );
    let (st, _) = api
        .call(
            "PATCH",
            &format!("/api/v1/conversations/{conv}"),
            Some(&key),
            Some(br#"{"by": "u-bob", "name": "crew two"}"#),
            &[],
        )
        .await;
    assert_eq!(st, 204);
    let (_, c) = api
        .get(&format!("/api/v1/conversations/{conv}?user=u-ann"), &read)
        .await;
    assert_eq!(c["name"], "crew two");
    let bob_role = c["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["username"] == "bob")
        .unwrap()["role"]
        .clone();
    assert_eq!(bob_role, "admin");

    // Search as bob: his conversation's words, not others'.
    let (st, other) = api
        .post(
            "/api/v1/conversations",
            &key,
            json!({"kind": "group", "name": "elsewhere", "creator": "u-cid", "members": []}),
        )
        .await;
    assert_eq!(st, 201, "{other}");
    send(
        &api,
        &key,
        other["conversation_id"].as_u64().unwrap(),
        "u-cid",
        "a quokka-word elsewhere",
    )
    .await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (st, page) = api.get("/api/v1/search?user=u-bob&q=quokka", &read).await;
        assert_eq!(st, 200, "{page}");
        if page["hits"].as_array().unwrap().len() == 1 {
            assert_eq!(page["hits"][0]["conversation_id"].as_u64(), Some(conv));
            assert_eq!(page["hits"][0]["event"]["seq"].as_u64(), Some(last));
            break;
        }
        assert!(std::time::Instant::now() < until, "indexed within 20 s: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (st, e) = api
        .get(&format!("/api/v1/search?user=u-bob&q={}", "x".repeat(600)), &read)
        .await;
    assert_eq!((st, e["error"]["code"].as_str()), (400, Some("BAD_REQUEST")), "{e}");

    // A file with tus under the write key as ann, read back with a range as bob.
    let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let meta = format!(
        "conversation {},filename {},filetype {}",
        b64(&conv.to_string()),
        b64("log.bin"),
        b64("application/octet-stream")
    );
    // A tus upload made under the write key for `user`.
    let tus_create = |user: &'static str, length: usize, meta: String| {
        let req = api
            .http
            .post(format!("{}/tus", api.base))
            .header("authorization", format!("Bearer {key}"))
            .header("natter-user", user)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", length.to_string())
            .header("upload-metadata", meta);
        async move { req.send().await.unwrap() }
    };
    let r = tus_create("u-ann", bytes.len(), meta).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let media_id = r.headers()["natter-media-id"].to_str().unwrap().to_string();
    let r = api
        .http
        .patch(format!("{}{location}", api.base))
        .header("authorization", format!("Bearer {key}"))
        .header("natter-user", "u-ann")
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Attached to a message the backend sends as ann (once the file is processed).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (st, v) = api
            .post(
                &format!("/api/v1/conversations/{conv}/messages"),
                &key,
                json!({"sender": "u-ann", "text": "", "attachments": [media_id]}),
            )
            .await;
        if st == 201 {
            break;
        }
        assert_eq!(v["error"]["code"], "MEDIA_NOT_READY", "{v}");
        assert!(std::time::Instant::now() < until);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (st, e) = api
        .post(
            &format!("/api/v1/conversations/{conv}/messages"),
            &key,
            json!({"sender": "u-bob", "text": "", "attachments": [media_id.clone() + "x"]}),
        )
        .await;
    assert_eq!((st, e["error"]["code"].as_str()), (400, Some("BAD_REQUEST")), "{e}");
    let get = |who: &'static str, k: String, range: Option<&'static str>| {
        let mut req = api
            .http
            .get(format!("{}/media/{media_id}", api.base))
            .header("authorization", format!("Bearer {k}"))
            .header("natter-user", who);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }
    };
    assert_eq!(
        get("u-bob", read.clone(), Some("bytes=100-199")).await,
        (206, bytes[100..200].to_vec())
    );
    assert_eq!(get("u-bob", read.clone(), None).await.1, bytes);
    assert_eq!(get("u-cid", read.clone(), None).await.0, 404, "not a member");
    assert_eq!(get("u-bob", "nk_0000000000000000_nope".into(), None).await.0, 401);

    // Deactivated: no login, no API call as him, until reactivated.
    let (st, _) = api.post("/api/v1/users/u-bob/deactivate", &admin, json!({})).await;
    assert_eq!(st, 204);
    let (st, _) = api.post("/api/v1/users/u-bob/deactivate", &key, json!({})).await;
    assert_eq!(st, 403, "admin keys only");
    let (_, u) = api.get("/api/v1/users/u-bob", &read).await;
    assert_eq!(u["deactivated"], true);
    let bob = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap().0;
    let refused = bob
        .login_with_token(&product_token("u-bob"), "phone")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(natter_protocol::pb::ErrorCode::Forbidden));
    let (st, e) = api
        .post(
            &format!("/api/v1/conversations/{conv}/messages"),
            &key,
            json!({"sender": "u-bob", "text": "hi"}),
        )
        .await;
    assert_eq!((st, e["error"]["code"].as_str()), (403, Some("FORBIDDEN")));
    // Files too: no read and no tus upload as him under the key.
    assert_eq!(get("u-bob", read.clone(), None).await.0, 403);
    let r = tus_create(
        "u-bob",
        10,
        format!("conversation {},filename {}", b64(&conv.to_string()), b64("x.bin")),
    )
    .await;
    assert_eq!(r.status(), 403, "{:?}", r.text().await);
    let (st, _) = api.post("/api/v1/users/u-bob/reactivate", &admin, json!({})).await;
    assert_eq!(st, 204);
    let (st, _) = api.post("/api/v1/users/u-bob/reactivate", &admin, json!({})).await;
    assert_eq!(st, 409);
    bob.login_with_token(&product_token("u-bob"), "phone").await.unwrap();
    assert_eq!(get("u-bob", read.clone(), None).await.1, bytes, "his files again");

    // The owner deletes the group; an admin may not.
    let del = |user: &str, k: &str| {
        let req = api
            .http
            .delete(format!("{}/api/v1/conversations/{conv}?user={user}", api.base))
            .header("authorization", format!("Bearer {k}"));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(del("u-bob", &key).await, 403);
    assert_eq!(del("u-ann", &key).await, 204);
    let (_, list) = api.get("/api/v1/users/u-bob/conversations", &read).await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|c| c["conversation_id"].as_u64() != Some(conv)),
        "{list}"
    );
    s.shutdown().await;
}
