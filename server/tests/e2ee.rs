//! End-to-end encrypted direct conversations (PROTOCOL.md §12) against the real server on
//! loopback with natter-sdk's encryption: several devices per user reading every message,
//! a device added and one removed mid-conversation, no plaintext anywhere in the server's
//! data directory, a client restarted from older state, and hostile key uploads and
//! envelopes refused with typed errors.
use crate::common;

use std::path::Path;

use common::e2ee::*;
use common::*;
use natter_protocol::client::e2ee::Crypto;
use natter_protocol::client::ops;
use natter_protocol::pb::{self, conversation_event::Body, request::Op, response::Result as Res, ErrorCode};
use natter_sdk::{Client, ClientEvent, ConversationId, DeviceId, UserId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_reads_every_message_and_the_server_holds_no_plaintext() {
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let mut a1 = phone(&s, phones.path(), "alice", 1, true).await;
    let mut a2 = phone(&s, phones.path(), "alice", 2, false).await;
    let mut b1 = phone(&s, phones.path(), "bob", 1, true).await;
    let mut b2 = phone(&s, phones.path(), "bob", 2, false).await;
    let mut b3 = phone(&s, phones.path(), "bob", 3, false).await;
    let dm = ConversationId(a1.client.encrypted_direct("bob").await.unwrap().conversation_id);
    assert!(b1
        .client
        .conversations()
        .await
        .unwrap()
        .iter()
        .any(|c| c.conversation_id == dm.0 && c.encrypted));
    // A plain conversation beside it: its text must be found where the encrypted one's is not.
    let plain = ConversationId(a1.client.direct("bob").await.unwrap().conversation_id);
    assert_ne!(plain, dm);
    a1.client.send(plain, "plain-control-4242").await.unwrap();

    // 200 messages, both ways, from every device but one.
    let mut want = Vec::new();
    for i in 0..200 {
        let text = format!("{MARKER} {i}");
        let from = match i % 4 {
            0 => &a1.client,
            1 => &b1.client,
            2 => &a2.client,
            _ => &b2.client,
        };
        from.send(dm, &text).await.unwrap();
        want.push(text);
    }
    for p in [&mut a1, &mut a2, &mut b1, &mut b2, &mut b3] {
        assert_eq!(read(p, dm, 200).await, want, "device {:?}", p.device);
    }

    // A device added mid-conversation reads what comes after, not what came before.
    let mut b4 = phone(&s, phones.path(), "bob", 4, false).await;
    let ack = a1.client.send(dm, "after b4").await.unwrap();
    assert_eq!(
        read_after(&mut b4, dm, ack.seq.0 - 1, 1).await,
        vec!["after b4".to_string()]
    );
    let page = b4
        .client
        .history(dm, natter_sdk::HistoryAnchor::Before(natter_sdk::Seq(0)), 5)
        .await
        .unwrap();
    let opened = page
        .events
        .iter()
        .filter(|e| matches!(&e.body, Some(Body::Message(m)) if m.body.as_ref().is_some_and(|b| b.encrypted.is_none())))
        .count();
    assert_eq!(opened, 1, "only the message after it joined opens on b4");
    // And b4 says so: it is covered from the change that added it (the seq before "after
    // b4"), the devices there from the start from the creation.
    assert_eq!(
        b4.client.readable_from(dm).await.unwrap(),
        Some(natter_sdk::Seq(ack.seq.0 - 1))
    );
    assert_eq!(a1.client.readable_from(dm).await.unwrap(), Some(natter_sdk::Seq(1)));

    // A removed device gets no key for what comes after its removal.
    b3.client.logout(DeviceId(0)).await.unwrap();
    let (watcher, mut watch) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    watcher.login("bob", PASSWORD, "no keys").await.unwrap();
    let ack = b1.client.send(dm, "after b3 left").await.unwrap();
    let sealed = wait_for(&mut watch, |e| match e {
        ClientEvent::Event(ev) if ev.conversation_id == dm.0 && ev.seq == ack.seq.0 => match &ev.body {
            Some(Body::Message(m)) => m.body.clone().and_then(|b| b.encrypted),
            _ => None,
        },
        _ => None,
    })
    .await;
    let for_devices: Vec<u64> = sealed.keys.iter().map(|k| k.device_id).collect();
    assert!(!for_devices.contains(&b3.device.0), "{for_devices:?}");
    for d in [a1.device, a2.device, b2.device, b4.device] {
        assert!(for_devices.contains(&d.0), "{d:?} missing from {for_devices:?}");
    }
    assert_eq!(
        read(&mut a2, dm, 2).await,
        vec!["after b4".to_string(), "after b3 left".into()]
    );

    // Nothing the server stored says what was written (the plain control is there).
    drop(s);
    assert!(
        !files_containing(data.path(), b"plain-control-4242").is_empty(),
        "the search works"
    );
    let leaks = files_containing(data.path(), MARKER.as_bytes());
    assert!(leaks.is_empty(), "plaintext on the server: {leaks:?}");
}

/// The multi-node deployment's stores: the server binary on Redis, logging at `trace`,
/// with an encrypted file beside the messages. The marker, sent only inside encrypted
/// messages and an encrypted file, is in no byte of the Redis dump and append-only file,
/// the server's log or the media store — where the plain controls sent beside it are
/// found (the log never held message text, plain or not: it is searched all the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_dump_the_log_and_the_media_store_hold_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let redis = natter_server::store::testredis::TestRedis::start();
    let (data, log) = (dir.path().join("server"), dir.path().join("server.log"));
    let url = redis.url();
    let extra = ["--storage", "redis", "--redis", url.as_str()];
    let s = spawn_server_binary_logging(&data, "127.0.0.1:0", &extra, "trace", &log);
    let phones = dir.path().join("phones");
    std::fs::create_dir_all(&phones).unwrap();
    let mut a1 = phone(&s, &phones, "alice", 1, true).await;
    let mut b1 = phone(&s, &phones, "bob", 1, true).await;
    let dm = ConversationId(a1.client.encrypted_direct("bob").await.unwrap().conversation_id);
    let plain = ConversationId(a1.client.direct("bob").await.unwrap().conversation_id);

    let mut want = Vec::new();
    for i in 0..20 {
        let text = format!("{MARKER} {i}");
        let from = if i % 2 == 0 { &a1.client } else { &b1.client };
        from.send(dm, &text).await.unwrap();
        want.push(text);
    }
    let secret = MARKER.repeat(4096).into_bytes();
    let (file, key) = a1
        .client
        .upload_encrypted(dm, "f.bin", "application/octet-stream", &secret, |_, _| {})
        .await
        .unwrap();
    a1.client
        .send_encrypted_files(dm, &format!("{MARKER} file"), &[(file.clone(), key.clone())])
        .await
        .unwrap();
    want.push(format!("{MARKER} file"));
    // The plain controls: a message and a file in the plain conversation.
    a1.client.send(plain, "plain-control-4242").await.unwrap();
    let control = "plain-file-control-5151".repeat(4096);
    let plain_file = a1
        .client
        .upload(plain, "c.txt", "text/plain", control.clone().into(), |_, _| {})
        .await
        .unwrap();
    a1.client.send_attachments(plain, "", &[plain_file]).await.unwrap();
    let refused = a1
        .client
        .send_encrypted_files(plain, "", &[(file.clone(), key.clone())])
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            natter_sdk::ClientError::Request(natter_sdk::RequestError::Invalid(_))
        ),
        "a file key outside an envelope is refused: {refused:?}"
    );

    assert_eq!(read(&mut b1, dm, 21).await, want);
    let opened = b1
        .client
        .history(dm, natter_sdk::HistoryAnchor::Before(natter_sdk::Seq(0)), 1)
        .await
        .unwrap();
    let attachment = match &opened.events[0].body {
        Some(Body::Message(m)) => m.body.as_ref().unwrap().attachments[0].clone(),
        other => panic!("{other:?}"),
    };
    let key = natter_sdk::FileKey::from_bytes(&attachment.file_key).unwrap();
    let back = b1
        .client
        .download_encrypted(&attachment.media_id, &key, 0, 0)
        .await
        .unwrap();
    assert!(back == secret, "bob opens the file with the key from the message");
    let _ = read(&mut a1, dm, 21).await;

    let dump = redis.dump().to_path_buf();
    drop((a1, b1, s));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.lines().count() > 1000,
        "the server logged at trace: {log_text}"
    );
    assert!(
        !files_containing(&dump, b"plain-control-4242").is_empty(),
        "the search finds plain text in Redis"
    );
    assert!(
        !files_containing(&data, b"plain-file-control-5151").is_empty(),
        "the search finds a plain file in the media store"
    );
    for place in [&dump, &data, &log] {
        let leaks = files_containing(place, MARKER.as_bytes());
        assert!(leaks.is_empty(), "plaintext on the server: {leaks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_restarted_from_older_state_opens_what_it_missed_and_what_follows() {
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let mut a1 = phone(&s, phones.path(), "alice", 1, true).await;
    let state = phones.path().join("bob-1.state");
    let b1 = phone_at(&s, &state, "bob", true, None).await;
    let dm = ConversationId(a1.client.encrypted_direct("bob").await.unwrap().conversation_id);
    let token = b1.client.snapshot().await.unwrap().access_token.unwrap();
    // The state as it was before any message: what a kill -9 before the write leaves.
    let before = std::fs::read(&state).unwrap();
    a1.client.send(dm, "first").await.unwrap();
    a1.client.send(dm, "second").await.unwrap();
    let mut b1 = b1;
    assert_eq!(read(&mut b1, dm, 2).await, vec!["first", "second"]);
    b1.client.shutdown().await;
    drop(b1);
    std::fs::write(&state, before).unwrap();

    // Back with the old state and no cursors: both are delivered again and open, and so
    // does what comes after.
    let mut b1 = phone_at(&s, &state, "bob", false, Some(token)).await;
    a1.client.send(dm, "third").await.unwrap();
    assert_eq!(read(&mut b1, dm, 3).await, vec!["first", "second", "third"]);
    let _ = read(&mut a1, dm, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_and_envelopes_get_typed_errors() {
    let data = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let (carol, _events) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    carol.register("carol", PASSWORD).await.unwrap();
    let me = carol.login("carol", PASSWORD, "carol").await.unwrap();
    let dave = user(&s, "dave").await;
    let code = |r: Result<(), natter_sdk::ClientError>| r.unwrap_err().code();
    let upload = |u: pb::UploadKeys| {
        let c = carol.clone();
        async move { c.call(ops::upload_keys(u)).await.map(|_| ()) }
    };

    let mut crypto = Crypto::new(me.user_id, me.device_id);
    let good = crypto.keys_to_upload(None).unwrap();
    // Keys before an identity, a forged identity, another device's identity.
    let no_id = pb::UploadKeys {
        device_keys: None,
        ..good.clone()
    };
    assert_eq!(code(upload(no_id).await), Some(ErrorCode::BadRequest));
    let mut forged = good.clone();
    forged.device_keys.as_mut().unwrap().curve25519[0] ^= 1;
    assert_eq!(code(upload(forged).await), Some(ErrorCode::BadRequest));
    let mut other = good.clone();
    other.device_keys.as_mut().unwrap().device_id += 1;
    assert_eq!(code(upload(other).await), Some(ErrorCode::BadRequest));
    // The real thing, then one of its one-time keys again.
    let counts = carol.call(ops::upload_keys(good.clone())).await.unwrap();
    assert_eq!((counts.one_time_keys, counts.fallback_unused), (50, true));
    crypto.uploaded();
    let again = pb::UploadKeys {
        device_keys: None,
        one_time_keys: good.one_time_keys[..1].to_vec(),
        fallback_key: None,
    };
    assert_eq!(code(upload(again).await), Some(ErrorCode::Conflict));

    // Strangers claim nobody's keys.
    let stranger = dave
        .client
        .call(ops::claim_keys(me.user_id.0, vec![]))
        .await
        .map(|_| ());
    assert_eq!(code(stranger), Some(ErrorCode::Forbidden));

    // An encrypted conversation refuses plain messages.
    let dm = ConversationId(carol.call(ops::encrypted_direct("dave")).await.unwrap().conversation_id);
    let send = |id: &str, body: pb::MessageBody| {
        let c = carol.clone();
        let id = natter_sdk::ClientMsgId(id.into());
        async move { c.send_with_id(dm, id, body).await }
    };
    let plain = pb::MessageBody {
        kind: pb::MessageKind::Text as i32,
        text: "hi".into(),
        ..Default::default()
    };
    assert_eq!(code(send("p1", plain).await.map(|_| ())), Some(ErrorCode::BadRequest));

    // An envelope for a device that does not exist: DEVICE_MISMATCH names it extra.
    let mut ghost = Crypto::new(UserId(424242), DeviceId(7));
    let claim = pb::ClaimedKey {
        device: Some(ghost.identity()),
        one_time_key: ghost.keys_to_upload(None).unwrap().one_time_keys.pop(),
        fallback: false,
    };
    let content = pb::SealedContent {
        body: Some(pb::MessageBody {
            text: "x".into(),
            ..Default::default()
        }),
        change: None,
    };
    let env = crypto
        .seal(dm, "m1", &content, &[ghost.identity()], &[claim], [1; 56])
        .unwrap();
    let sealed = |env: pb::Envelope| pb::MessageBody {
        kind: pb::MessageKind::Text as i32,
        encrypted: Some(env),
        ..Default::default()
    };
    let e = send("m1", sealed(env.clone())).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::DeviceMismatch));
    let m = e.server_error().unwrap().device_mismatch.clone().unwrap();
    let extra: Vec<_> = m.extra.iter().map(|r| (r.user_id, r.device_id)).collect();
    assert_eq!(extra, vec![(424242, 7)]);
    assert!(m.missing.is_empty(), "dave has no keys, carol no other device");
    // Malformed: an unknown version, a ciphertext not padded to a bucket, another
    // device's identity as the sender's. The SDK refuses the first two itself, so a
    // frame-level client (a device of carol's with keys of its own) sends them.
    let mut v2 = env.clone();
    v2.version = 2;
    assert!(matches!(
        send("m2", sealed(v2.clone())).await,
        Err(natter_sdk::ClientError::Request(natter_sdk::RequestError::Invalid(_)))
    ));
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    let login = raw
        .request(Op::Login(pb::Login {
            username: "carol".into(),
            password: PASSWORD.into(),
            device_name: "raw".into(),
        }))
        .await;
    let Res::Login(l) = login else { panic!("{login:?}") };
    let mut raw_crypto = Crypto::new(UserId(l.user_id), DeviceId(l.device_id));
    let keys = raw_crypto.keys_to_upload(None).unwrap();
    assert!(matches!(raw.request(Op::UploadKeys(keys)).await, Res::KeyCounts(_)));
    let claim = pb::ClaimedKey {
        device: Some(ghost.identity()),
        one_time_key: ghost.keys_to_upload(None).unwrap().one_time_keys.pop(),
        fallback: false,
    };
    let raw_env = raw_crypto
        .seal(dm, "r1", &content, &[ghost.identity()], &[claim], [2; 56])
        .unwrap();
    let raw_send = |id: &str, env: pb::Envelope| {
        Op::Send(pb::SendMessage {
            conversation_id: dm.0,
            client_msg_id: id.into(),
            body: Some(sealed(env)),
        })
    };
    let r = raw.request(raw_send("r1", raw_env.clone())).await;
    assert_eq!(
        error_code(&r),
        ErrorCode::DeviceMismatch,
        "shape is fine, coverage is not"
    );
    let mut v2 = raw_env.clone();
    v2.version = 2;
    assert_eq!(
        error_code(&raw.request(raw_send("r2", v2)).await),
        ErrorCode::BadRequest
    );
    let mut unpadded = raw_env.clone();
    unpadded.ciphertext.pop();
    assert_eq!(
        error_code(&raw.request(raw_send("r3", unpadded)).await),
        ErrorCode::BadRequest
    );
    let mut no_keys = raw_env;
    no_keys.keys.clear();
    assert_eq!(
        error_code(&raw.request(raw_send("r4", no_keys)).await),
        ErrorCode::BadRequest
    );
    let mut not_mine = env;
    not_mine.sender_key = ghost.identity().curve25519;
    assert_eq!(
        code(send("m4", sealed(not_mine)).await.map(|_| ())),
        Some(ErrorCode::BadRequest)
    );
    // The server keeps serving.
    assert!(dave.client.ping().await.is_ok());
}

/// The independent device: `server/tests/e2ee/olm_device.py` on Debian's python3-olm and
/// python3-nacl (installed by scripts/test.sh).
fn python(args: &[&str], stdin: Option<serde_json::Value>) -> Result<serde_json::Value, String> {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2ee/olm_device.py");
    let mut child = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (with python3-olm and python3-nacl)");
    let mut input = child.stdin.take().unwrap();
    if let Some(v) = stdin {
        input.write_all(v.to_string().as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_olm_device_opens_what_the_sdk_sealed() {
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let alice = phone(&s, phones.path(), "alice", 1, true).await;
    // Bob's device is libolm in Python: it makes its keys, natter only carries them.
    let (bob, mut bob_events) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    bob.register("bob", PASSWORD).await.unwrap();
    let me = bob.login("bob", PASSWORD, "python").await.unwrap();
    let k = python(&["keys", &me.user_id.0.to_string(), &me.device_id.0.to_string()], None).unwrap();
    let hex = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    let upload = pb::UploadKeys {
        device_keys: Some(pb::DeviceKeys {
            user_id: me.user_id.0,
            device_id: me.device_id.0,
            ed25519: hex(&k["ed25519"]),
            curve25519: hex(&k["curve25519"]),
            signature: hex(&k["signature"]),
            ..Default::default()
        }),
        one_time_keys: k["one_time_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| pb::OneTimeKey {
                public_key: hex(&o["public_key"]),
                signature: hex(&o["signature"]),
            })
            .collect(),
        fallback_key: None,
    };
    let counts = bob
        .call(ops::upload_keys(upload))
        .await
        .expect("libolm's signatures verify");
    assert_eq!(counts.one_time_keys, 5);

    let dm = ConversationId(alice.client.encrypted_direct("bob").await.unwrap().conversation_id);
    let text = "from natter-sdk to libolm: zażółć gęślą jaźń 🦀";
    let ack = alice.client.send(dm, text).await.unwrap();
    let ev = wait_for(&mut bob_events, |e| match e {
        ClientEvent::Event(ev) if ev.conversation_id == dm.0 && ev.seq == ack.seq.0 => Some(ev.clone()),
        _ => None,
    })
    .await;
    let Some(Body::Message(m)) = &ev.body else {
        panic!("a message: {ev:?}")
    };
    let env = m.body.clone().unwrap().encrypted.expect("sealed");
    let wrapped = env
        .keys
        .iter()
        .find(|w| w.device_id == me.device_id.0)
        .expect("a key for it");
    let input = |ciphertext: &[u8]| {
        serde_json::json!({
            "pickle": k["pickle"],
            "sender_key": hex::encode(&env.sender_key),
            "olm_type": wrapped.olm_type,
            "olm_body": hex::encode(&wrapped.olm_body),
            "conversation_id": dm.0,
            "sender_user_id": ev.sender_user_id,
            "sender_device_id": ev.sender_device_id,
            "client_msg_id": m.client_msg_id,
            "nonce": hex::encode(&env.nonce),
            "ciphertext": hex::encode(ciphertext),
        })
    };
    let opened = python(&["open"], Some(input(&env.ciphertext))).unwrap();
    assert_eq!(opened["text"], text);
    let mut tampered = env.ciphertext.clone();
    tampered[17] ^= 1;
    assert!(
        python(&["open"], Some(input(&tampered))).is_err(),
        "an altered byte fails its tag"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_keys_ran_out_offline_is_reached_by_its_fallback_key_and_refills() {
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let a1 = phone(&s, phones.path(), "alice", 1, true).await;
    let state = phones.path().join("bob-1.state");
    let b1 = phone_at(&s, &state, "bob", true, None).await;
    let bob_id = b1.client.members(ConversationId(
        a1.client.encrypted_direct("bob").await.unwrap().conversation_id,
    ));
    let bob_user = bob_id
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.username == "bob")
        .unwrap()
        .user_id;
    let token = b1.client.snapshot().await.unwrap().access_token.unwrap();
    b1.client.shutdown().await;
    drop(b1);

    // While bob's phone is off, 60 of its keys are claimed: 50 one-time keys, then the
    // fallback key again and again.
    let mut fallbacks = 0;
    for _ in 0..60 {
        let claimed = a1.client.call(ops::claim_keys(bob_user, vec![])).await.unwrap();
        assert_eq!(claimed.len(), 1);
        fallbacks += usize::from(claimed[0].fallback);
    }
    assert_eq!(fallbacks, 10);

    // A new device of alice's has no session with it: its message goes over the fallback.
    let mut a2 = phone(&s, phones.path(), "alice", 2, false).await;
    let dm = ConversationId(a2.client.encrypted_direct("bob").await.unwrap().conversation_id);
    a2.client.send(dm, "over the fallback key").await.unwrap();
    let _ = read(&mut a2, dm, 1).await;

    // Back on: it opens the message, and publishes a full stock and a new fallback key.
    let mut b1 = phone_at(&s, &state, "bob", false, Some(token)).await;
    assert_eq!(read(&mut b1, dm, 1).await, vec!["over the fallback key".to_string()]);
    let claimed = a1.client.call(ops::claim_keys(bob_user, vec![])).await.unwrap();
    assert!(!claimed[0].fallback, "one-time keys again");
    let counts = b1
        .client
        .call(ops::upload_keys(pb::UploadKeys::default()))
        .await
        .unwrap();
    assert_eq!((counts.one_time_keys, counts.fallback_unused), (49, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_writes_and_reads_an_encrypted_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let s = server(&data).await;
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    cli_user(&a, &s, "alice").await;
    cli_user(&b, &s, "bob").await;
    let dm = cli(&a, &["dm", "bob", "--encrypted"]).await;
    assert_eq!(dm[0]["encrypted"], true);
    let dm = dm[0]["conversationId"].as_u64().unwrap().to_string();
    cli(&a, &["send", &dm, MARKER, "from", "the", "terminal"]).await;
    cli(&b, &["send", &dm, "and", "back"]).await;
    let texts = |h: Vec<serde_json::Value>| -> Vec<String> {
        h.iter()
            .filter(|v| v["body"]["type"] == "message")
            .filter_map(|v| v["body"]["text"].as_str().map(String::from))
            .collect()
    };
    let want = vec![format!("{MARKER} from the terminal"), "and back".to_string()];
    assert_eq!(texts(cli(&b, &["history", &dm]).await), want);
    assert_eq!(texts(cli(&a, &["history", &dm]).await), want);

    // The key backup from the terminal: a new profile of bob's restores what it never got.
    let recovery = cli(&b, &["backup", "enable"]).await[0]["recoveryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let b2 = dir.path().join("bob-2");
    cli_login(&b2, &s, "bob").await;
    let history = cli(&b2, &["history", &dm]).await;
    assert!(texts(history.clone()).is_empty(), "nothing opens yet");
    // It says why: it reads from the change that added it, after both messages.
    let last_message = history
        .iter()
        .filter(|v| v["body"]["type"] == "encrypted")
        .filter_map(|v| v["seq"].as_u64())
        .max();
    let from = history.last().unwrap()["readableFrom"].as_u64();
    assert!(
        from.is_some_and(|f| Some(f) > last_message),
        "readable from {from:?}, after {last_message:?}"
    );
    let other = natter_protocol::client::e2ee::backup::RecoveryKey::from_random([3; 32]).to_display();
    let refused = cli_fails(&b2, &["backup", "restore", "--recovery-key", &other]).await;
    assert!(refused.contains("does not open this backup"), "{refused}");
    let restored = cli(&b2, &["backup", "restore", "--recovery-key", &recovery]).await;
    assert_eq!(restored[0]["restored"], 2);
    assert_eq!(texts(cli(&b2, &["history", &dm]).await), want);
    drop(s);
    assert!(
        files_containing(&data, MARKER.as_bytes()).is_empty(),
        "plaintext on the server"
    );
}

/// The CLI's `natter listen` as a process of its own on `profile`, connecting to `server`.
struct Listener {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Listener {
    fn start(profile: &Path, server: std::net::SocketAddr) -> Listener {
        let mut child = std::process::Command::new(natter_cli())
            .arg("--profile")
            .arg(profile)
            .args(["--server", &server.to_string(), "listen"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(out).map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        Listener { child, lines }
    }

    /// The next printed record `f` picks, within the test deadline.
    async fn until<T>(&mut self, mut f: impl FnMut(&serde_json::Value) -> Option<T>) -> T {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let line = tokio::task::block_in_place(|| self.lines.recv_timeout(left))
                .expect("the listener printed what was waited for");
            if let Some(t) = f(&line) {
                return t;
            }
        }
    }

    /// The next message of `conv` it printed: its text, or the undecryptable reason.
    async fn message(&mut self, conv: &str) -> Result<String, String> {
        self.until(|v| {
            let ev = &v["event"];
            if v["type"] != "event" || ev["conversationId"].as_u64() != conv.parse().ok() {
                return None;
            }
            match ev["body"]["type"].as_str() {
                Some("message") => Some(Ok(ev["body"]["text"].as_str().unwrap_or_default().to_string())),
                Some("undecryptable") | Some("encrypted") => Some(Err(ev.to_string())),
                _ => None,
            }
        })
        .await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client process killed (`kill -9`) after it received and opened the first message of
/// an encrypted conversation (the one that set up its Olm session) but before its
/// acknowledgement reached the server: started again, it opens that message and every
/// later one. The relay in front of it drops what it sends, so the server provably never
/// heard the acknowledgement (the message is still only "sent" when the process dies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_between_receiving_and_acknowledging_opens_that_event_and_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("server")).await;
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    cli_user(&a, &s, "alice").await;
    cli_user(&b, &s, "bob").await;
    let dm = cli(&a, &["dm", "bob", "--encrypted"]).await[0]["conversationId"].to_string();

    let relay = common::relay::Relay::start(s.addr).await;
    let mut listener = Listener::start(&b, relay.addr);
    listener.until(|v| (v["type"] == "connected").then_some(())).await;
    relay.mute_client(true);
    let sent = cli(&a, &["send", &dm, "caught", "in", "the", "window"]).await;
    let seq = sent[0]["seq"].as_u64().unwrap().to_string();
    assert_eq!(listener.message(&dm).await, Ok("caught in the window".into()));
    listener.child.kill().unwrap();
    listener.child.wait().unwrap();
    assert_eq!(
        cli(&a, &["status", &dm, &seq]).await[0]["state"],
        "sent",
        "the server never heard bob's acknowledgement"
    );

    let mut listener = Listener::start(&b, s.addr);
    assert_eq!(
        listener.message(&dm).await,
        Ok("caught in the window".into()),
        "delivered again, and it opens"
    );
    cli(&a, &["send", &dm, "and", "after"]).await;
    assert_eq!(listener.message(&dm).await, Ok("and after".into()));
    // Acknowledgements are cumulative and wait up to `ack_delay_ms` (PROTOCOL.md §5.10):
    // the restarted listener's reaches the server a little after it printed the message.
    common::eventually("bob's acknowledgement of the first message", async || {
        cli(&a, &["status", &dm, &seq]).await[0]["state"] != "sent"
    })
    .await;
}

/// Where a phone reaches the server through: a relay in front of it.
struct Via(std::net::SocketAddr, String);

impl Reach for Via {
    fn reach(&self) -> (std::net::SocketAddr, &str) {
        (self.0, &self.1)
    }
}

/// Device coverage (PROTOCOL.md §12.5) with a sender that cannot know of a new device:
/// alice's phone, cut off behind a relay, seals for the devices it knows while bob adds
/// one. Back online, the server refuses that envelope once (a device missing), the phone
/// seals again under the same client message id, and the new device reads it — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_missed_a_new_device_is_refused_once_and_seals_again() {
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let relay = common::relay::Relay::start(s.addr).await;
    let via = Via(relay.addr, s.fingerprint.clone());
    let a1 = phone(&via, phones.path(), "alice", 1, true).await;
    let mut b1 = phone(&s, phones.path(), "bob", 1, true).await;
    let dm = ConversationId(a1.client.encrypted_direct("bob").await.unwrap().conversation_id);
    a1.client.send(dm, "before").await.unwrap();
    assert_eq!(read(&mut b1, dm, 1).await, vec!["before"]);

    relay.blackhole(true);
    let mut b2 = phone(&s, phones.path(), "bob", 2, false).await;
    let sender = a1.client.clone();
    let sending = tokio::spawn(async move { sender.send(dm, "after bob's new phone").await });
    // Sealed while cut off: for b1 only.
    let until = tokio::time::Instant::now() + DEADLINE;
    let pending = loop {
        let snap = a1.client.snapshot().await.unwrap();
        if let Some(p) = snap.pending_sends.into_iter().next() {
            break p;
        }
        assert!(tokio::time::Instant::now() < until, "the send was queued");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let named = |env: &pb::Envelope| -> Vec<u64> { env.keys.iter().map(|k| k.device_id).collect() };
    assert_eq!(named(pending.body.encrypted.as_ref().unwrap()), vec![b1.device.0]);

    relay.blackhole(false);
    let ack = tokio::time::timeout(DEADLINE, sending).await.unwrap().unwrap().unwrap();
    assert!(!ack.duplicate);
    assert_eq!(
        read_after(&mut b2, dm, ack.seq.0 - 1, 1).await,
        vec!["after bob's new phone"]
    );
    assert_eq!(read_after(&mut b1, dm, 1, 1).await, vec!["after bob's new phone"]);
    // What the server committed names both of bob's phones, under the same message id.
    let page = b1
        .client
        .history(dm, natter_sdk::HistoryAnchor::After(natter_sdk::Seq(ack.seq.0 - 1)), 5)
        .await
        .unwrap();
    let committed = page.events.iter().find(|e| e.seq == ack.seq.0).unwrap();
    let Some(Body::Message(m)) = &committed.body else {
        panic!("a message")
    };
    assert_eq!(m.client_msg_id, pending.client_msg_id.0, "sent again under its id");
    assert_eq!(
        page.events
            .iter()
            .filter(|e| matches!(e.body, Some(Body::Message(_))))
            .count(),
        1,
        "once"
    );
}

/// Texts of the messages of a history page, `None` for each one that did not open.
fn page_texts(page: &pb::HistoryPage) -> Vec<Option<String>> {
    page.events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Message(m)) => {
                let b = m.body.clone().unwrap_or_default();
                Some(b.encrypted.is_none().then_some(b.text))
            }
            _ => None,
        })
        .collect()
}

/// The key backup: bob's only device backs up what it reads (what it kept before the
/// backup existed too), then goes away; a new device of bob's, with no other device
/// online, reads nothing of the history until it restores with the recovery key — a
/// mistyped key and another backup's key are typed errors that read nothing — and then
/// gets the messages its sync brought undecryptable again, opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_alone_restores_history_from_the_key_backup() {
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let mut a1 = phone(&s, phones.path(), "alice", 1, true).await;
    let mut b1 = phone(&s, phones.path(), "bob", 1, true).await;
    let dm = ConversationId(a1.client.encrypted_direct("bob").await.unwrap().conversation_id);
    a1.client.send(dm, "before the backup").await.unwrap();
    assert_eq!(read(&mut b1, dm, 1).await, vec!["before the backup"]);
    let recovery = b1.client.enable_backup().await.unwrap();
    assert_eq!(recovery.replace(' ', "").len(), 53);
    let mut want = vec!["before the backup".to_string()];
    for i in 0..30 {
        let text = format!("{MARKER} {i}");
        if i % 3 == 2 {
            b1.client.send(dm, &text).await.unwrap();
        } else {
            a1.client.send(dm, &text).await.unwrap();
        }
        want.push(text);
    }
    assert_eq!(read(&mut b1, dm, 30).await, want[1..]);
    b1.client.backup_now().await.unwrap();
    let token = b1.client.snapshot().await.unwrap().access_token.unwrap();
    b1.client.shutdown().await;
    drop(b1);
    let _ = read(&mut a1, dm, 31).await;

    let mut b2 = phone(&s, phones.path(), "bob", 2, false).await;
    // The new phone's sync brings the 31 messages from before it existed: none opens.
    let mut unopened = Vec::new();
    while unopened.len() < 31 {
        let seq = wait_for(&mut b2.events, |e| match e {
            ClientEvent::Undecryptable { event, reason } if event.conversation_id == dm.0 => {
                assert_eq!(reason, "not_for_this_device");
                Some(event.seq)
            }
            ClientEvent::Event(ev) if ev.conversation_id == dm.0 && matches!(ev.body, Some(Body::Message(_))) => {
                panic!("seq {} opened without its key", ev.seq)
            }
            _ => None,
        })
        .await;
        unopened.push(seq);
    }
    let history = |c: Client| async move {
        let page = c
            .history(dm, natter_sdk::HistoryAnchor::After(natter_sdk::Seq(0)), 100)
            .await
            .unwrap();
        page_texts(&page)
    };
    assert!(
        history(b2.client.clone()).await.iter().all(Option::is_none),
        "nothing opens yet"
    );
    let e2ee_err = |r: Result<u64, natter_sdk::ClientError>| match r {
        Err(natter_sdk::ClientError::E2ee(natter_sdk::E2eeError::Backup(e))) => e,
        other => panic!("expected a backup error, got {other:?}"),
    };
    let mut typo: Vec<char> = recovery.chars().collect();
    typo[1] = if typo[1] == '7' { '8' } else { '7' };
    let typo: String = typo.into_iter().collect();
    assert!(matches!(
        e2ee_err(b2.client.restore_backup(&typo).await),
        natter_sdk::BackupError::Malformed(_)
    ));
    let other = natter_protocol::client::e2ee::backup::RecoveryKey::from_random([5; 32]).to_display();
    assert_eq!(
        e2ee_err(b2.client.restore_backup(&other).await),
        natter_sdk::BackupError::WrongKey
    );
    assert!(
        history(b2.client.clone()).await.iter().all(Option::is_none),
        "a wrong key reads nothing"
    );

    assert_eq!(b2.client.restore_backup(&recovery).await.unwrap(), 31);
    // What the event stream brought undecryptable comes again, opened, same seqs.
    let mut reopened = Vec::new();
    while reopened.len() < 31 {
        reopened.push(
            wait_for(&mut b2.events, |e| match e {
                ClientEvent::Event(ev) if ev.conversation_id == dm.0 => match &ev.body {
                    Some(Body::Message(m)) => {
                        let body = m.body.clone().unwrap_or_default();
                        assert!(body.encrypted.is_none(), "seq {} handed on opened", ev.seq);
                        Some((ev.seq, body.text))
                    }
                    _ => None,
                },
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(reopened.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), unopened);
    assert_eq!(reopened.into_iter().map(|(_, t)| t).collect::<Vec<_>>(), want);
    let opened: Vec<String> = history(b2.client.clone())
        .await
        .into_iter()
        .map(|t| t.expect("opens"))
        .collect();
    assert_eq!(opened, want);

    // The old device, back with its state, still reads; the backup is not its only copy.
    let b1 = phone_at(&s, &phones.path().join("bob-1.state"), "bob", false, Some(token)).await;
    let page = b1
        .client
        .history(dm, natter_sdk::HistoryAnchor::After(natter_sdk::Seq(0)), 100)
        .await
        .unwrap();
    assert!(page_texts(&page).iter().all(Option::is_some));
    // Nothing the server keeps of the backup says what was written.
    drop((a1, b1, b2, s));
    assert!(files_containing(data.path(), MARKER.as_bytes()).is_empty());
}

/// The next step of verification `txn` that `p` hears (any transaction when `txn` is
/// empty), as (transaction, state).
async fn verification(p: &mut Phone, txn: &str) -> (String, natter_sdk::VerificationState) {
    wait_for(&mut p.events, |e| match e {
        ClientEvent::Verification(v) if txn.is_empty() || v.txn == txn => Some((v.txn.clone(), v.state.clone())),
        _ => None,
    })
    .await
}

fn code(state: natter_sdk::VerificationState) -> Vec<(String, String)> {
    match state {
        natter_sdk::VerificationState::Compare { emoji, .. } => emoji,
        other => panic!("expected a code to compare, got {other:?}"),
    }
}

/// `from` starts verifying `to` (a device of `user`), `to` accepts, and both show the same
/// seven emoji: the transaction.
async fn verify_until_compare(from: &mut Phone, to: &mut Phone, user: UserId) -> String {
    let txn = from.client.verify_device(user, to.device).await.unwrap();
    assert_eq!(verification(to, &txn).await.1, natter_sdk::VerificationState::Requested);
    to.client.accept_verification(&txn).await.unwrap();
    let (on_from, on_to) = (
        code(verification(from, &txn).await.1),
        code(verification(to, &txn).await.1),
    );
    assert_eq!(on_from, on_to, "both phones show the same emoji");
    assert_eq!(on_from.len(), 7);
    txn
}

/// A whole verification: both people confirm, both phones end verified.
async fn verify(from: &mut Phone, to: &mut Phone, user: UserId) {
    let txn = verify_until_compare(from, to, user).await;
    from.client.confirm_verification(&txn, true).await.unwrap();
    to.client.confirm_verification(&txn, true).await.unwrap();
    for p in [from, to] {
        assert_eq!(verification(p, &txn).await.1, natter_sdk::VerificationState::Verified);
    }
}

/// Alice's and bob's first phones and their encrypted conversation: (alice's phone, bob's
/// phone, the conversation, alice's id, bob's id).
async fn alice_and_bob(
    s: &natter_server::RunningServer,
    phones: &Path,
) -> (Phone, Phone, ConversationId, UserId, UserId) {
    let a1 = phone(s, phones, "alice", 1, true).await;
    let b1 = phone(s, phones, "bob", 1, true).await;
    let dm = ConversationId(a1.client.encrypted_direct("bob").await.unwrap().conversation_id);
    let members = a1.client.members(dm).await.unwrap();
    let id_of = |name: &str| UserId(members.iter().find(|m| m.username == name).unwrap().user_id);
    (a1, b1, dm, id_of("alice"), id_of("bob"))
}

/// A user's devices as `c` trusts them, by device id.
async fn trust_of(c: &Client, user: UserId) -> Vec<(u64, natter_sdk::TrustLevel)> {
    let mut t: Vec<(u64, natter_sdk::TrustLevel)> = c
        .device_trust(user)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.device_id.0, d.trust))
        .collect();
    t.sort_by_key(|(d, _)| *d);
    t
}

/// The user's signing key (PROTOCOL.md §12.12): bob's first phone makes it; alice verifies
/// that phone only. Bob's new phone, verified by his first, is signed by the key and handed
/// it — alice trusts it without verifying it, and so does every device the new phone signs
/// later — while a device added with bob's password alone stays unverified for her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_signed_by_their_users_key_are_trusted_through_one_verified_device() {
    use natter_sdk::TrustLevel::{Unverified, Verified};
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let (mut a1, mut b1, _, _, bob) = alice_and_bob(&s, phones.path()).await;
    verify(&mut a1, &mut b1, bob).await;

    // Bob's new phone: unverified for alice until bob's first phone verifies it.
    let mut b2 = phone(&s, phones.path(), "bob", 2, false).await;
    assert_eq!(
        trust_of(&a1.client, bob).await,
        vec![(b1.device.0, Verified), (b2.device.0, Unverified)]
    );
    verify(&mut b1, &mut b2, bob).await;
    assert_eq!(
        trust_of(&a1.client, bob).await,
        vec![(b1.device.0, Verified), (b2.device.0, Verified)],
        "signed by bob's key, which the phone alice verified vouches for"
    );

    // A device added with the password alone: nobody signed it.
    let evil = phone(&s, phones.path(), "bob", 3, false).await;
    assert_eq!(
        trust_of(&a1.client, bob).await,
        vec![
            (b1.device.0, Verified),
            (b2.device.0, Verified),
            (evil.device.0, Unverified)
        ]
    );
    // The new phone got the key with the verification: it signs the next one itself.
    let mut b4 = phone(&s, phones.path(), "bob", 4, false).await;
    verify(&mut b2, &mut b4, bob).await;
    let seen = trust_of(&a1.client, bob).await;
    assert_eq!(seen.iter().find(|(d, _)| *d == b4.device.0).unwrap().1, Verified);
    assert_eq!(seen.iter().find(|(d, _)| *d == evil.device.0).unwrap().1, Unverified);
    // Bob's own phones see it the same way.
    let own = trust_of(&b4.client, bob).await;
    assert_eq!(own.iter().find(|(d, _)| *d == b1.device.0).unwrap().1, Verified);
    assert_eq!(own.iter().find(|(d, _)| *d == evil.device.0).unwrap().1, Unverified);

    // Alice's trust in bob's key is kept across a restart.
    let token = a1.client.snapshot().await.unwrap().access_token.unwrap();
    a1.client.shutdown().await;
    drop(a1);
    let a1 = phone_at(&s, &phones.path().join("alice-1.state"), "alice", false, Some(token)).await;
    assert_eq!(trust_of(&a1.client, bob).await, seen);
}

/// SAS verification (PROTOCOL.md §12.10) between alice's and bob's phones: both show the
/// same seven emoji, both people confirm, each phone lists the other as verified (kept
/// across a restart). Then an attacker with bob's password adds a device: it reaches
/// alice's phone as a DevicesChanged event of their conversation and is listed as
/// unverified. The attacker in the middle — verifying with alice as "bob" and with bob's
/// phone as bob's new device — cannot make the two codes agree: the people comparing see
/// different emoji, decline, and nothing becomes verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_verification_agrees_and_a_device_added_with_the_password_stays_unverified() {
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let (mut a1, mut b1, dm, alice, bob) = alice_and_bob(&s, phones.path()).await;
    assert_eq!(
        trust_of(&a1.client, bob).await,
        vec![(b1.device.0, natter_sdk::TrustLevel::Unverified)]
    );

    verify(&mut a1, &mut b1, bob).await;
    assert_eq!(
        trust_of(&a1.client, bob).await,
        vec![(b1.device.0, natter_sdk::TrustLevel::Verified)]
    );
    assert_eq!(
        trust_of(&b1.client, alice).await,
        vec![(a1.device.0, natter_sdk::TrustLevel::Verified)]
    );

    // An attacker with bob's password logs a device in: alice's phone hears of it in the
    // conversation, and lists it as unverified beside bob's verified phone.
    let mut evil = phone(&s, phones.path(), "bob", 9, false).await;
    let added = wait_for(&mut a1.events, |e| match e {
        ClientEvent::Event(ev) if ev.conversation_id == dm.0 => match &ev.body {
            Some(Body::DevicesChanged(d)) if d.user_id == bob.0 => d.added.first().map(|k| k.device_id),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(added, evil.device.0);
    let mut want = vec![
        (b1.device.0, natter_sdk::TrustLevel::Verified),
        (evil.device.0, natter_sdk::TrustLevel::Unverified),
    ];
    want.sort_by_key(|(d, _)| *d);
    assert_eq!(trust_of(&a1.client, bob).await, want);

    // In the middle: alice verifies "bob" (the attacker's device), and the attacker
    // verifies itself with bob's phone, to relay what each shows.
    let to_alice = a1.client.verify_device(bob, evil.device).await.unwrap();
    let (t, st) = verification(&mut evil, &to_alice).await;
    assert_eq!(st, natter_sdk::VerificationState::Requested);
    evil.client.accept_verification(&t).await.unwrap();
    let to_bob = evil.client.verify_device(bob, b1.device).await.unwrap();
    assert_eq!(
        verification(&mut b1, &to_bob).await.1,
        natter_sdk::VerificationState::Requested
    );
    b1.client.accept_verification(&to_bob).await.unwrap();
    let alice_sees = code(verification(&mut a1, &to_alice).await.1);
    let bob_sees = code(verification(&mut b1, &to_bob).await.1);
    assert_ne!(alice_sees, bob_sees, "the two people compare different emoji");
    a1.client.confirm_verification(&to_alice, false).await.unwrap();
    b1.client.confirm_verification(&to_bob, false).await.unwrap();
    let cancelled = natter_sdk::VerificationState::Cancelled("user".into());
    assert_eq!(verification(&mut a1, &to_alice).await.1, cancelled);
    assert_eq!(verification(&mut b1, &to_bob).await.1, cancelled);
    assert_eq!(
        trust_of(&a1.client, bob).await,
        want,
        "the attacker's device stays unverified"
    );

    // The verification is kept in the phone's state.
    let token = a1.client.snapshot().await.unwrap().access_token.unwrap();
    a1.client.shutdown().await;
    drop(a1);
    let a1 = phone_at(&s, &phones.path().join("alice-1.state"), "alice", false, Some(token)).await;
    assert_eq!(trust_of(&a1.client, bob).await, want);
}

/// Device verification from the terminal: `natter verify --incoming` on bob's side and
/// `natter verify USER DEVICE` on alice's print the same emoji; both answer "yes" on stdin
/// and end verified, and `natter trust` lists bob's device as verified for alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_verifies_a_device_by_emoji() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("server")).await;
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    cli_user(&a, &s, "alice").await;
    cli_user(&b, &s, "bob").await;
    let dm = cli(&a, &["dm", "bob", "--encrypted"]).await[0]["conversationId"].to_string();
    let members = cli(&a, &["members", &dm]).await;
    let bob_id = members.iter().find(|m| m["username"] == "bob").unwrap()["userId"].to_string();
    let bob_device = cli(&b, &["devices"])
        .await
        .into_iter()
        .find(|d| d["current"] == true)
        .unwrap()["deviceId"]
        .to_string();
    assert_eq!(cli(&a, &["trust", &bob_id]).await[0]["trust"], "unverified");

    let spawn = |profile: &Path, args: &[&str]| {
        let mut child = std::process::Command::new(natter_cli())
            .arg("--profile")
            .arg(profile)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        (child, lines)
    };
    let compare = |lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>| -> serde_json::Value {
        loop {
            let line = lines.next().expect("a line").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["verification"] == "compare" {
                return v["emoji"].clone();
            }
        }
    };
    let (mut bob, mut bob_out) = spawn(&b, &["verify", "--incoming"]);
    // Requests are not stored: alice starts once bob's process says it is listening.
    let waiting = tokio::task::block_in_place(|| bob_out.next().expect("a line").unwrap());
    assert!(waiting.contains("waiting"), "{waiting}");
    let (mut alice, mut alice_out) = spawn(&a, &["verify", &bob_id, &bob_device]);
    let (on_alice, on_bob) = tokio::task::block_in_place(|| (compare(&mut alice_out), compare(&mut bob_out)));
    assert_eq!(on_alice, on_bob);
    assert_eq!(on_alice.as_array().unwrap().len(), 7);
    for child in [&mut alice, &mut bob] {
        child.stdin.as_mut().unwrap().write_all(b"yes\n").unwrap();
    }
    let (ra, rb) = tokio::task::block_in_place(|| (alice.wait().unwrap(), bob.wait().unwrap()));
    assert!(ra.success() && rb.success(), "both end verified");
    assert_eq!(cli(&a, &["trust", &bob_id]).await[0]["trust"], "verified");

    // A new profile of bob's verifies itself with his first one and reads what came
    // before it (the keys are shared before either process says verified, §12.11).
    cli(&a, &["send", &dm, "before", "the", "new", "profile"]).await;
    let b2 = dir.path().join("bob-2");
    cli_login(&b2, &s, "bob").await;
    let texts = |h: Vec<serde_json::Value>| -> Vec<Option<String>> {
        h.iter()
            .filter(|v| v["body"]["type"] == "message" || v["body"]["type"] == "encrypted")
            .map(|v| v["body"]["text"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(
        texts(cli(&b2, &["history", &dm]).await),
        vec![None],
        "nothing opens yet"
    );
    let (mut old, mut old_out) = spawn(&b, &["verify", "--incoming"]);
    let waiting = tokio::task::block_in_place(|| old_out.next().expect("a line").unwrap());
    assert!(waiting.contains("waiting"), "{waiting}");
    let (mut new, mut new_out) = spawn(&b2, &["verify", &bob_id, &bob_device]);
    let (on_new, on_old) = tokio::task::block_in_place(|| (compare(&mut new_out), compare(&mut old_out)));
    assert_eq!(on_new, on_old);
    for child in [&mut new, &mut old] {
        child.stdin.as_mut().unwrap().write_all(b"yes\n").unwrap();
    }
    let (rn, ro) = tokio::task::block_in_place(|| (new.wait().unwrap(), old.wait().unwrap()));
    assert!(rn.success() && ro.success(), "both end verified");
    assert_eq!(
        texts(cli(&b2, &["history", &dm]).await),
        vec![Some("before the new profile".to_string())]
    );
}

/// Key sharing between a user's verified devices (PROTOCOL.md §12.11): bob's new phone
/// reads nothing of the 40 messages from before it existed; bob verifies it from his old
/// phone by emoji, and by the time both say "verified" the old phone's keys are on the
/// new one — what its sync brought undecryptable comes again opened, and history opens.
/// A device added with bob's password, never verified, gets no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_new_device_gets_the_keys_of_the_old_one_and_an_unverified_one_does_not() {
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let a1 = phone(&s, phones.path(), "alice", 1, true).await;
    let mut b1 = phone(&s, phones.path(), "bob", 1, true).await;
    let dm = ConversationId(a1.client.encrypted_direct("bob").await.unwrap().conversation_id);
    let mut want = Vec::new();
    for i in 0..40 {
        let text = format!("{MARKER} {i}");
        if i % 4 == 3 {
            b1.client.send(dm, &text).await.unwrap();
        } else {
            a1.client.send(dm, &text).await.unwrap();
        }
        want.push(text);
    }
    assert_eq!(read(&mut b1, dm, 40).await, want);

    let evil = phone(&s, phones.path(), "bob", 9, false).await;
    let mut b2 = phone(&s, phones.path(), "bob", 2, false).await;
    let mut unopened = Vec::new();
    while unopened.len() < 40 {
        unopened.push(
            wait_for(&mut b2.events, |e| match e {
                ClientEvent::Undecryptable { event, .. } if event.conversation_id == dm.0 => Some(event.seq),
                ClientEvent::Event(ev) if ev.conversation_id == dm.0 && matches!(ev.body, Some(Body::Message(_))) => {
                    panic!("seq {} opened without its key", ev.seq)
                }
                _ => None,
            })
            .await,
        );
    }

    let members = b1.client.members(dm).await.unwrap();
    let bob = UserId(members.iter().find(|m| m.username == "bob").unwrap().user_id);
    let txn = verify_until_compare(&mut b1, &mut b2, bob).await;
    b2.client.confirm_verification(&txn, true).await.unwrap();
    b1.client.confirm_verification(&txn, true).await.unwrap();
    // "verified" on the new phone comes after the old phone's keys: the messages it
    // could not open come first, opened (in seq order within each share).
    let mut reopened = Vec::new();
    let verified = loop {
        let got = wait_for(&mut b2.events, |e| match e {
            ClientEvent::Event(ev) if ev.conversation_id == dm.0 => match &ev.body {
                Some(Body::Message(m)) => Some(Ok((ev.seq, m.body.clone().unwrap_or_default().text))),
                _ => None,
            },
            ClientEvent::Verification(v) if v.txn == txn => Some(Err(v.state.clone())),
            _ => None,
        })
        .await;
        match got {
            Ok(m) => reopened.push(m),
            Err(state) => break state,
        }
    };
    assert_eq!(verified, natter_sdk::VerificationState::Verified);
    reopened.sort();
    assert_eq!(reopened.iter().map(|(s, _)| *s).collect::<Vec<_>>(), unopened);
    assert_eq!(reopened.into_iter().map(|(_, t)| t).collect::<Vec<_>>(), want);
    assert_eq!(
        verification(&mut b1, &txn).await.1,
        natter_sdk::VerificationState::Verified
    );
    let page = b2
        .client
        .history(dm, natter_sdk::HistoryAnchor::After(natter_sdk::Seq(0)), 100)
        .await
        .unwrap();
    assert_eq!(
        page_texts(&page)
            .into_iter()
            .map(|t| t.expect("opens"))
            .collect::<Vec<_>>(),
        want
    );
    // Both ways: a message the new phone sends opens on the old one as ever.
    b2.client.send(dm, "from the new phone").await.unwrap();
    assert_eq!(read_after(&mut b1, dm, 0, 1).await, vec!["from the new phone"]);

    // The device added with the password, never verified, was given nothing.
    let page = evil
        .client
        .history(dm, natter_sdk::HistoryAnchor::After(natter_sdk::Seq(0)), 100)
        .await
        .unwrap();
    let texts = page_texts(&page);
    assert_eq!(texts.len(), 41);
    assert!(
        texts[..40].iter().all(Option::is_none),
        "nothing before it existed opens"
    );
    assert_eq!(
        texts[40].as_deref(),
        Some("from the new phone"),
        "what was sealed for it does"
    );
    drop((a1, b1, b2, evil, s));
    assert!(files_containing(data.path(), MARKER.as_bytes()).is_empty());
}

/// A state that does not open with the store key the app gives is reported to the app
/// (`EncryptionUnavailable`, reason `state`) and left as it is — never replaced by a new,
/// empty one (PROTOCOL.md §12.7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_does_not_open_is_reported_and_left_alone() {
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let a1 = phone(&s, phones.path(), "alice", 1, true).await;
    let token = a1.client.snapshot().await.unwrap().access_token.unwrap();
    a1.client.shutdown().await;
    drop(a1);
    let path = phones.path().join("alice-1.state");
    let before = std::fs::read(&path).unwrap();

    let mut cfg = client_config(s.addr, &s.fingerprint, Some(token));
    cfg.encryption = Some(natter_sdk::Encryption {
        state_path: path.clone(),
        store_key: natter_sdk::StoreKey([8; 32]),
    });
    let (client, mut events) = Client::connect(cfg).unwrap();
    let reason = wait_for(&mut events, |e| match e {
        ClientEvent::EncryptionUnavailable { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "state");
    client.shutdown().await;
    assert_eq!(std::fs::read(&path).unwrap(), before, "the state is left as it was");
}
