//! `natter-server admin …` against a running node (docs/OPERATIONS.md, "The admin CLI"):
//! every command once, with what it must have done checked from outside — a revoked device
//! is disconnected and cannot log in, a deactivated user cannot log in until reactivated,
//! a deleted conversation refuses sends, a revoked key stops working, drain turns the node
//! not ready and sends clients away while the process stays until SIGTERM. Without an admin
//! key nothing is answered.
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use natter_protocol::pb;
use natter_sdk::{ClientEvent, ConversationId};
use serde_json::Value;

use super::backup::server_cli;
use crate::common::api::make_key;
use crate::common::*;

/// `natter-server admin --ops OPS --key KEY ARGS`, off the async runtime.
async fn admin(ops: SocketAddr, key: &str, args: &[&str]) -> (bool, Vec<Value>, String) {
    let mut full = vec![
        "admin".to_string(),
        "--ops".into(),
        ops.to_string(),
        "--key".into(),
        key.into(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || server_cli(&full.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

/// The answer of a command that must succeed.
async fn ok(ops: SocketAddr, key: &str, args: &[&str]) -> Vec<Value> {
    let (success, lines, err) = admin(ops, key, args).await;
    assert!(success, "admin {args:?}: {err}");
    lines
}

fn code(e: &natter_sdk::ClientError) -> pb::ErrorCode {
    e.server_error().map(|e| e.code).unwrap_or(pb::ErrorCode::Unspecified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_command_does_what_it_says_on_a_running_node() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let key = make_key(dir.path(), "operator", "admin");
    let write_key = make_key(dir.path(), "backend", "write");
    let mut p = spawn_server_binary(dir.path(), "127.0.0.1:0");
    let mut web = String::new();
    let ops: SocketAddr = loop {
        let line = p.stdout.next().expect("the server prints its ops address").unwrap();
        if let Some(rest) = line.strip_prefix("web chat on ") {
            web = rest.split('/').take(3).collect::<Vec<_>>().join("/");
        }
        if let Some(rest) = line.strip_prefix("ops listening on http://") {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    let (addr, fp) = (p.addr, p.fingerprint.clone());
    let ann = device(addr, &fp, "ann", true).await;
    let mut bob = device(addr, &fp, "bob", true).await;
    let dm = ann.client.direct("bob").await.unwrap();
    let dm = ConversationId(dm.conversation_id);
    let group = ann.client.create_group("ops-room", &["bob"]).await.unwrap();
    let group = ConversationId(group.conversation_id);
    ann.client.send(dm, "hello").await.unwrap();

    // No key, a key without the admin scope: refused, nothing done.
    let (success, _, err) = tokio::task::spawn_blocking({
        let ops = ops.to_string();
        move || server_cli(&["admin", "--ops", &ops, "--key", "nk_nope", "users", "show", "ann"])
    })
    .await
    .unwrap();
    assert!(!success && err.contains("UNAUTHENTICATED"), "{err}");
    let (success, _, err) = admin(ops, &write_key, &["users", "show", "ann"]).await;
    assert!(!success && err.contains("FORBIDDEN"), "{err}");

    // Stats: this node's connections, and sends per second over a second of traffic.
    let sending = {
        let c = ann.client.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                c.send(dm, &format!("busy {i}")).await.unwrap();
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let stats = &ok(ops, &key, &["stats", "--seconds", "1"]).await[0];
    sending.await.unwrap();
    assert_eq!(stats["connections"], 2, "{stats}");
    assert!(stats["events_per_sec"].as_f64().unwrap() > 5.0, "{stats}");
    assert_eq!(stats["ready"], true);

    // Users: list, show.
    let listed = ok(ops, &key, &["users", "list", "--prefix", "b"]).await;
    assert_eq!(
        listed
            .iter()
            .map(|u| u["username"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    let shown = &ok(ops, &key, &["users", "show", "ann"]).await[0];
    assert_eq!(
        (shown["devices"].as_u64(), shown["conversations"].as_u64()),
        (Some(1), Some(2)),
        "{shown}"
    );
    let (success, _, err) = admin(ops, &key, &["users", "show", "nobody"]).await;
    assert!(!success && err.contains("NOT_FOUND"), "{err}");

    // Devices: list, revoke — bob's connection is closed and his token refused.
    let bobs = ok(ops, &key, &["devices", "list", "bob"]).await;
    assert_eq!(bobs.len(), 1);
    let bob_device = bobs[0]["device_id"].as_u64().unwrap().to_string();
    assert_eq!(bobs[0]["online_here"], true);
    ok(ops, &key, &["devices", "revoke", "bob", &bob_device]).await;
    wait_for(&mut bob.events, |e| {
        matches!(e, ClientEvent::AuthFailed(_) | ClientEvent::Disconnected { .. }).then_some(())
    })
    .await;
    let (again, _) = natter_sdk::Client::connect(client_config(addr, &fp, Some(bob.token.clone()))).unwrap();
    let refused = again.conversations().await;
    assert!(refused.is_err(), "a revoked device's token still works");
    let listed = ok(ops, &key, &["devices", "list", "bob"]).await;
    assert_eq!(listed[0]["revoked"], true);

    // Deactivate: no login; reactivate: login again.
    let d = &ok(ops, &key, &["users", "deactivate", "bob"]).await[0];
    assert_eq!(d["deactivated"], "bob");
    let (c, _) = natter_sdk::Client::connect(client_config(addr, &fp, None)).unwrap();
    let e = c.login("bob", PASSWORD, "phone").await.unwrap_err();
    assert_eq!(code(&e), pb::ErrorCode::Forbidden);
    ok(ops, &key, &["users", "reactivate", "bob"]).await;
    c.login("bob", PASSWORD, "phone").await.expect("bob logs in again");

    // Conversations: show, members, delete (sends are refused after).
    let conv = &ok(ops, &key, &["conversations", "show", &group.0.to_string()]).await[0];
    assert_eq!(
        (conv["kind"].as_str(), conv["owner"].as_str()),
        (Some("group"), Some("ann")),
        "{conv}"
    );
    let members = ok(ops, &key, &["conversations", "members", &group.0.to_string()]).await;
    let mut roles: Vec<(String, String)> = members
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap().into(),
                m["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    roles.sort();
    assert_eq!(roles, [("ann".into(), "owner".into()), ("bob".into(), "member".into())]);
    ok(ops, &key, &["conversations", "delete", &group.0.to_string()]).await;
    let refused = ann.client.send(group, "still there?").await.unwrap_err();
    assert_eq!(code(&refused), pb::ErrorCode::NotFound);

    // Keys: create (its secret works on the server API), list, revoke (it stops working).
    let made = &ok(ops, &key, &["keys", "create", "--name", "reports", "--scope", "read"]).await[0];
    let (id, secret) = (made["id"].as_str().unwrap(), made["secret"].as_str().unwrap());
    let probe = |k: String| {
        let url = format!("{web}/api/v1/users?prefix=a");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(k)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(probe(secret.to_string()).await, 200);
    let listed = ok(ops, &key, &["keys", "list"]).await;
    assert!(listed.iter().any(|k| k["id"] == id && k["revoked"] == false));
    ok(ops, &key, &["keys", "revoke", id]).await;
    assert_eq!(probe(secret.to_string()).await, 401);

    // Delete a user: their account goes and their messages are erased.
    let gone = &ok(ops, &key, &["users", "delete", "ann"]).await[0];
    assert_eq!(gone["deleted"], "ann");
    assert!(gone["erasure"]["events"].as_u64().unwrap() > 0, "{gone}");
    let (c2, _) = natter_sdk::Client::connect(client_config(addr, &fp, None)).unwrap();
    let e = c2.login("ann", PASSWORD, "again").await.unwrap_err();
    assert_eq!(code(&e), pb::ErrorCode::InvalidCredentials, "a deleted user logs in");

    // Drain: not ready, clients told to go, and the process still runs until SIGTERM.
    let mut watcher = device(addr, &fp, "cyd", true).await;
    let drained = &ok(ops, &key, &["drain"]).await[0];
    assert!(drained["draining"].is_string());
    wait_for(&mut watcher.events, |e| {
        matches!(e, ClientEvent::GoAway { .. }).then_some(())
    })
    .await;
    let status = reqwest::get(format!("http://{ops}/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 503);
    assert!(p.child.try_wait().unwrap().is_none(), "the process stays after a drain");
    let pid = p.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + DEADLINE;
    while p.child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM after a drain stops the process"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
