//! Deleting and exporting an account (PROTOCOL.md §5.16) through the server API and the
//! SDK: the export holds exactly the user's data; deletion erases (or anonymises) their
//! messages in history and search, deletes their files, logs out their devices, tells the
//! other members; no byte of what they wrote is left readable in the data directory, and a
//! copy of the store taken before the deletion no longer opens their events.
use crate::common;

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use common::api::*;
use common::*;
use natter_protocol::pb;
use natter_sdk::{Client, ClientEvent, ConversationId, Seq};
use natter_server::store::{Page, Store};
use serde_json::{json, Value};

async fn setup(dir: &Path) -> (natter_server::RunningServer, Api, String) {
    let admin = make_key(&dir.join("data"), "operator", "admin");
    let (s, api) = api_server(&dir.join("data")).await;
    for (id, name) in [("u-ann", "ann"), ("u-bob", "bob")] {
        let (st, u) = api
            .post(
                "/api/v1/users",
                &admin,
                json!({"id": id, "username": name, "display_name": name.to_uppercase()}),
            )
            .await;
        assert_eq!(st, 201, "{u}");
    }
    (s, api, admin)
}

fn copy_dir(from: &Path, to: &Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (p, name) = (e.path(), e.file_name());
        if name == skip {
            continue;
        }
        if p.is_dir() {
            copy_dir(&p, &to.join(&name), skip);
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        out.insert(f.name().to_string(), b);
    }
    out
}

async fn search_hits(c: &Client, q: &str) -> usize {
    let r = c
        .search(pb::Search {
            query: q.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    r.hits.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_users_messages_files_and_devices_are_gone_everywhere_and_their_export_was_exactly_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let (s, api, admin) = setup(dir.path()).await;
    let (ann, mut ann_ev) = product_login(&s, "u-ann").await;
    let (bob, mut bob_ev) = product_login(&s, "u-bob").await;
    let (st, g) = api
        .post(
            "/api/v1/conversations",
            &admin,
            json!({"kind": "group", "name": "trip", "creator": "u-ann", "members": ["u-bob"]}),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    let group = ConversationId(g["conversation_id"].as_u64().unwrap());
    let dm = ConversationId(ann.direct("bob").await.unwrap().conversation_id);

    let alpha = ann.send(group, "ann-secret-alpha").await.unwrap().seq;
    ann.send(group, "ann-secret-beta").await.unwrap();
    let bobs = bob.send(group, "bob-words-delta").await.unwrap().seq;
    ann.send(dm, "ann-dm-gamma").await.unwrap();
    ann.edit(group, alpha, "ann-secret-alpha-edited").await.unwrap();
    bob.react(group, alpha, "👍", false).await.unwrap();
    // A report keeps no copy of the text (it is read from the log when listed).
    bob.report(group, alpha, "please look").await.unwrap();
    let ann_file = ann
        .upload(
            group,
            "ann-notes.txt",
            "text/plain",
            Bytes::from_static(b"ANNFILEBYTES-xyzzy"),
            |_, _| {},
        )
        .await
        .unwrap();
    ann.send_attachments(group, "ann-file-message", std::slice::from_ref(&ann_file))
        .await
        .unwrap();
    let bob_file = bob
        .upload(
            group,
            "bob-notes.txt",
            "text/plain",
            Bytes::from_static(b"BOBFILEBYTES-plugh"),
            |_, _| {},
        )
        .await
        .unwrap();
    bob.send_attachments(group, "bob-file-message", std::slice::from_ref(&bob_file))
        .await
        .unwrap();
    eventually("bob finds ann's words", async || search_hits(&bob, "alpha").await == 1).await;

    // The export: exactly ann's data.
    let r = api
        .http
        .get(format!("{}/api/v1/users/u-ann/export", api.base))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    let files = unzip(&r.bytes().await.unwrap());
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    let media_entry = format!("media/{}/ann-notes.txt", ann_file.media_id);
    assert_eq!(
        names,
        vec![
            "conversations.json",
            media_entry.as_str(),
            "messages.jsonl",
            "profile.json"
        ],
        "no file of bob's"
    );
    assert_eq!(files[&media_entry], b"ANNFILEBYTES-xyzzy");
    let profile: Value = serde_json::from_slice(&files["profile.json"]).unwrap();
    assert_eq!(
        (profile["username"].as_str(), profile["id"].as_str()),
        (Some("ann"), Some("u-ann"))
    );
    let convs: Value = serde_json::from_slice(&files["conversations.json"]).unwrap();
    assert_eq!(convs.as_array().unwrap().len(), 2);
    let lines: Vec<Value> = String::from_utf8(files["messages.jsonl"].clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "message" || l["type"] == "edit")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    let mut sorted = texts.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        vec![
            "ann-dm-gamma",
            "ann-file-message",
            "ann-secret-alpha",
            "ann-secret-alpha-edited",
            "ann-secret-beta"
        ]
    );
    assert!(
        !String::from_utf8_lossy(&files["messages.jsonl"]).contains("bob"),
        "nothing of bob's"
    );

    // A copy of the store before the deletion (without its content keys, kept apart).
    let store_dir = dir.path().join("data/db");
    assert!(store_dir.join("content-keys").is_dir(), "{}", store_dir.display());
    copy_dir(&store_dir, &dir.path().join("backup"), "content-keys");

    let r = api
        .http
        .delete(format!("{}/api/v1/users/u-ann", api.base))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (
            done["devices"].as_u64(),
            done["conversations"].as_u64(),
            done["media"].as_u64()
        ),
        (Some(1), Some(2), Some(1)),
        "{done}"
    );

    // Ann's device is logged out; bob hears it in both conversations.
    wait_for(&mut ann_ev, |e| matches!(e, ClientEvent::AuthFailed(_)).then_some(())).await;
    for conv in [group, dm] {
        let anonymised = wait_for(&mut bob_ev, |e| match e {
            ClientEvent::Event(ev) if ev.conversation_id == conv.0 => match &ev.body {
                Some(pb::conversation_event::Body::UserErased(u)) => Some(u.anonymised),
                _ => None,
            },
            _ => None,
        })
        .await;
        assert!(!anonymised);
    }

    // History as the API and bob read it: ann's messages are tombstones, bob's stand.
    let (st, page) = api
        .get(
            &format!("/api/v1/conversations/{}/messages?user=u-bob&after=0", group.0),
            &admin,
        )
        .await;
    assert_eq!(st, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    let text_of = |seq: u64| events.iter().find(|e| e["seq"] == seq).unwrap().clone();
    assert_eq!(
        (text_of(alpha.0)["type"].as_str(), text_of(alpha.0)["text"].as_str()),
        (Some("erased"), Some(""))
    );
    assert_eq!(text_of(bobs.0)["text"], "bob-words-delta");
    assert!(!page.to_string().contains("ann-"), "{page}");
    let (st, _) = api.get("/api/v1/users/u-ann", &admin).await;
    assert_eq!(st, 404, "the product's id is free again");
    let members = bob.members(group).await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.username.as_str()).collect::<Vec<_>>(),
        vec!["bob"]
    );
    assert_eq!(members[0].role, pb::Role::Owner as i32, "bob took over the group");

    // Search, files, devices.
    eventually("ann's words leave the index", async || {
        search_hits(&bob, "alpha").await == 0
    })
    .await;
    assert_eq!(search_hits(&bob, "delta").await, 1);
    assert!(bob
        .download_all(&ann_file.media_id, pb::MediaVariant::Original)
        .await
        .is_err());
    assert_eq!(
        bob.download_all(&bob_file.media_id, pb::MediaVariant::Original)
            .await
            .unwrap(),
        b"BOBFILEBYTES-plugh"
    );
    let (again, _ev) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    again
        .login_with_token(&product_token("u-ann"), "new phone")
        .await
        .unwrap();
    assert!(
        again.conversations().await.unwrap().is_empty(),
        "the same product id is a new user now"
    );

    // Nothing ann wrote is readable in the data directory, bob's words still are there
    // (sealed: found through the store, not the bytes).
    s.shutdown().await;
    let data = dir.path().join("data");
    for needle in ["ann-secret", "ann-dm-gamma", "ANNFILEBYTES", "alpha-edited"] {
        assert_eq!(
            files_containing(&data, needle.as_bytes()),
            Vec::<std::path::PathBuf>::new(),
            "{needle}"
        );
    }
    let live = natter_server::store::sled_store::SledStore::open(&store_dir).unwrap();
    let (log, _) = live.events(group, Page::After(Seq(0)), 100).await.unwrap();
    assert!(log.iter().any(|e| matches!(&e.body, Some(pb::conversation_event::Body::Message(m)) if m.body.as_ref().unwrap().text == "bob-words-delta")));
    drop(live);

    // The old copy, opened with today's keys: ann's events no longer open, bob's do.
    let old = natter_server::store::sled_store::SledStore::open_with_content_keys(
        &dir.path().join("backup"),
        &store_dir.join("content-keys"),
    )
    .unwrap();
    let (log, _) = old.events(group, Page::After(Seq(0)), 100).await.unwrap();
    let ann_texts: Vec<_> = log
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::conversation_event::Body::Message(m)) => Some(m.body.as_ref().unwrap().text.clone()),
            _ => None,
        })
        .filter(|t| t.starts_with("ann"))
        .collect();
    assert_eq!(
        ann_texts,
        Vec::<String>::new(),
        "the backup's copies of ann's messages are unreadable"
    );
    assert!(log
        .iter()
        .any(|e| e.seq == alpha.0 && matches!(e.body, Some(pb::conversation_event::Body::Erased(_)))));
    assert!(log
        .iter()
        .any(|e| e.seq == bobs.0 && matches!(e.body, Some(pb::conversation_event::Body::Message(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_exports_then_deletes_their_own_account_and_anonymised_messages_stay_under_deleted_user() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let (alice, mut bob, dm) = alice_and_bob(&s).await;
    let seq = alice.client.send(dm, "alice keeps talking").await.unwrap().seq;
    bob.client.send(dm, "bob answers").await.unwrap();

    // Her own export, over the signed path the server gives her.
    let ready = alice.client.export_account().await.unwrap();
    assert!(ready.path.starts_with("/export/"), "{}", ready.path);
    let web = s.web_addr.expect("web endpoint");
    let zip = reqwest::get(format!("http://{web}{}", ready.path)).await.unwrap();
    assert_eq!(zip.status(), 200);
    let files = unzip(&zip.bytes().await.unwrap());
    let lines = String::from_utf8(files["messages.jsonl"].clone()).unwrap();
    assert!(
        lines.contains("alice keeps talking") && !lines.contains("bob answers"),
        "{lines}"
    );
    let forged = ready.path.replace("sig=", "sig=00");
    let refused = reqwest::get(format!("http://{web}{forged}")).await.unwrap();
    assert_eq!(refused.status(), 401, "a forged link is refused");

    // Deleting needs her password.
    let wrong = alice.client.delete_account("not her password").await.unwrap_err();
    assert_eq!(wrong.code(), Some(pb::ErrorCode::InvalidCredentials));
    alice.client.delete_account(PASSWORD).await.unwrap();
    let gone = wait_for(&mut bob.events, |e| match e {
        ClientEvent::Event(ev) => match &ev.body {
            Some(pb::conversation_event::Body::UserErased(u)) => Some(*u),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert!(!gone.anonymised, "the server's default erases");
    let (again, _ev) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    let refused = again.login("alice", PASSWORD, "laptop").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(pb::ErrorCode::InvalidCredentials),
        "a deleted account never logs in"
    );
    let page = bob
        .client
        .history(dm, natter_sdk::HistoryAnchor::Before(Seq(0)), 50)
        .await
        .unwrap();
    let erased = page.events.iter().find(|e| e.seq == seq.0).unwrap();
    assert!(matches!(
        erased.body,
        Some(pb::conversation_event::Body::Erased(pb::Erased { message: true }))
    ));
    assert!(bob
        .client
        .profiles(&[natter_sdk::UserId(gone.user_id)])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymised_messages_stay_in_history_under_deleted_user() {
    let dir = tempfile::tempdir().unwrap();
    let (s, api, admin) = setup(dir.path()).await;
    let (ann, _ann_ev) = product_login(&s, "u-ann").await;
    let (bob, mut bob_ev) = product_login(&s, "u-bob").await;
    let dm = ConversationId(ann.direct("bob").await.unwrap().conversation_id);
    let seq = ann.send(dm, "ann-words-kept").await.unwrap().seq;
    let r = api
        .http
        .delete(format!("{}/api/v1/users/u-ann?messages=anonymise", api.base))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad = api
        .http
        .delete(format!("{}/api/v1/users/u-bob?messages=shred", api.base))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "an unknown mode changes nothing");
    let anonymised = wait_for(&mut bob_ev, |e| match e {
        ClientEvent::Event(ev) => match &ev.body {
            Some(pb::conversation_event::Body::UserErased(u)) => Some(u.anonymised),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert!(anonymised);
    let page = bob
        .history(dm, natter_sdk::HistoryAnchor::Before(Seq(0)), 50)
        .await
        .unwrap();
    let kept = page.events.iter().find(|e| e.seq == seq.0).unwrap();
    assert_eq!(
        (kept.sender_user_id, kept.sender_username.as_str()),
        (0, "deleted-user")
    );
    assert!(
        matches!(&kept.body, Some(pb::conversation_event::Body::Message(m)) if m.body.as_ref().unwrap().text == "ann-words-kept")
    );
    let members = bob.members(dm).await.unwrap();
    assert!(members.iter().any(|m| m.username == "deleted-user"), "{members:?}");
    assert_eq!(bob.send(dm, "still here").await.map(|_| ()).ok(), Some(()));
}
