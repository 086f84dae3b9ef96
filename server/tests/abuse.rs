//! Hostile input against the live server (real QUIC on loopback): each abuse gets its typed
//! error, and a well-behaved client on the same server keeps sending and receiving.
use crate::common;

use common::*;
use natter_protocol::pb::{self, request::Op, response::Result as Res, ErrorCode};
use natter_sdk::{Client, ConversationId};

fn limited_config(dir: &std::path::Path) -> natter_server::Config {
    let mut cfg = config(dir);
    cfg.rates.login_per_minute_per_user = 5;
    cfg.rates.sends_per_second_per_user = 20;
    cfg.rates.send_burst_per_user = 20;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_brute_force_is_rate_limited_while_others_chat() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&limited_config(dir.path())).await.unwrap();
    let _victim = user(&s, "victim").await;
    let (alice, mut bob, dm) = alice_and_bob(&s).await;

    let (attacker, _events) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    let mut refused = None;
    for i in 0..10 {
        let err = attacker
            .login("victim", &format!("guess-{i:04}"), "x")
            .await
            .unwrap_err();
        match err.code() {
            Some(ErrorCode::InvalidCredentials) => {}
            Some(ErrorCode::RateLimited) => {
                refused = Some(i);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
        alice.client.send(dm, &format!("still here {i}")).await.unwrap();
    }
    // The victim's own login counted as one attempt, so the 5th guess is refused.
    assert_eq!(refused, Some(4), "attempts beyond the per-account quota are refused");
    // Even the right password waits out the limit, and the error says for how long.
    match attacker.login("victim", PASSWORD, "x").await.unwrap_err() {
        natter_sdk::ClientError::Request(natter_sdk::RequestError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert!(e.retry_after_ms > 0);
        }
        other => panic!("{other:?}"),
    }
    let got = messages(&mut bob.events, dm, 4).await;
    assert_eq!(
        got.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
        ["still here 0", "still here 1", "still here 2", "still here 3"]
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_flood_gets_typed_errors_and_the_sdk_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&limited_config(dir.path())).await.unwrap();
    let _flooder = user(&s, "flooder").await;
    let (alice, mut bob, dm) = alice_and_bob(&s).await;
    // Raw: a burst over the quota gets RATE_LIMITED with a retry time.
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.login("flooder").await;
    let conv = match raw
        .request(Op::CreateDirect(pb::CreateDirect {
            username: "bob".into(),
            encrypted: false,
        }))
        .await
    {
        Res::Conversation(c) => c.conversation_id,
        other => panic!("{other:?}"),
    };
    // Pipelined: all 30 requests are written before any response is read, so the burst
    // reaches the server at once whatever the machine's load.
    for i in 0..30u64 {
        let body = pb::MessageBody {
            text: format!("flood {i}"),
            ..Default::default()
        };
        let op = Op::Send(pb::SendMessage {
            conversation_id: conv,
            client_msg_id: format!("f{i}"),
            body: Some(body),
        });
        raw.frame(pb::frame::Kind::Request(pb::Request {
            id: 1000 + i,
            op: Some(op),
        }))
        .await;
    }
    let (mut answered, mut limited) = (0, 0);
    while answered < 30 {
        match raw.read().await {
            Some(pb::Frame {
                kind: Some(pb::frame::Kind::Response(r)),
            }) if r.id >= 1000 => {
                answered += 1;
                if let Some(Res::Error(e)) = r.result {
                    assert_eq!(e.code, ErrorCode::RateLimited as i32);
                    assert!(e.retry_after_ms > 0);
                    limited += 1;
                }
            }
            Some(_) => {}
            None => panic!("connection ended"),
        }
    }
    assert!(limited >= 5, "a burst of 30 over a quota of 20 is limited ({limited})");
    // The SDK backs off by the retry time and gets every message through exactly once.
    let sends = (0..40).map(|i| {
        let c = alice.client.clone();
        async move { c.send(dm, &format!("m{i}")).await.unwrap().seq }
    });
    let mut seqs: Vec<_> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 40);
    let got = messages(&mut bob.events, dm, 40).await;
    let mut texts: Vec<String> = got.into_iter().map(|m| m.1).collect();
    texts.sort();
    let mut want: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(texts, want);
    s.shutdown().await;
}

/// Every connection-level abuse ends that connection with its typed code, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_streams_close_only_their_connection_with_typed_codes() {
    use pb::frame::Kind;
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let (alice, mut bob, dm) = alice_and_bob(&s).await;

    // A 10 MiB frame: refused from its length prefix alone.
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    let mut head = bytes::BytesMut::new();
    prost::encoding::encode_varint(10 << 20, &mut head);
    raw.bytes(&head).await;
    assert_eq!(raw.closed().await.1, ErrorCode::FrameTooLarge as u64);
    alice.client.send(dm, "one").await.unwrap();

    // A length prefix of 2^63 (a valid 10-byte varint).
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    let mut head = bytes::BytesMut::new();
    prost::encoding::encode_varint(1u64 << 63, &mut head);
    raw.bytes(&head).await;
    assert_eq!(raw.closed().await.1, ErrorCode::FrameTooLarge as u64);

    // Random bytes, before and after the handshake: always a typed close.
    let typed = [
        ErrorCode::MalformedFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownFrame,
        ErrorCode::HandshakeRequired,
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
    ];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..6 {
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut raw = if round % 2 == 0 {
            Raw::connect(s.addr, &s.fingerprint).await
        } else {
            Raw::hello(s.addr, &s.fingerprint).await
        };
        raw.bytes(&noise).await;
        let _ = raw.send.finish();
        let code = raw.closed().await.1;
        assert!(typed.iter().any(|c| *c as u64 == code), "round {round}: code {code}");
    }

    // A truncated frame, then the stream ends.
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.bytes(&[20, 0x1a, 0x05]).await;
    raw.send.finish().unwrap();
    assert_eq!(raw.closed().await.1, ErrorCode::MalformedFrame as u64);
    alice.client.send(dm, "two").await.unwrap();

    // A frame kind from the future (field 100 of Frame): unknown, typed close.
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.bytes(&[3, 0xa2, 0x06, 0x00]).await;
    assert_eq!(raw.closed().await.1, ErrorCode::UnknownFrame as u64);
    alice.client.send(dm, "three").await.unwrap();

    // Hello again after the handshake: a frame a client may not send there.
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.frame(Kind::Hello(pb::Hello {
        versions: vec![1],
        client: "again".into(),
    }))
    .await;
    assert_eq!(raw.closed().await.1, ErrorCode::BadRequest as u64);
    alice.client.send(dm, "four").await.unwrap();

    let got: Vec<String> = messages(&mut bob.events, dm, 4)
        .await
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(got, ["one", "two", "three", "four"]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_resume_tokens_never_resume_someone_elses_session() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let alice = user(&s, "alice").await;
    let bob = user(&s, "bob").await;
    let alice_resume = alice.client.snapshot().await.unwrap().resume_token.unwrap();
    // Bob's own client steps aside: the raw connections below authenticate as his device,
    // and a live session of the same device would take it back (closing them) the moment
    // it reconnected.
    bob.client.shutdown().await;
    let auth = |token: &str, resume: &str| {
        Op::Authenticate(pb::Authenticate {
            access_token: token.into(),
            resume_token: resume.into(),
            cursors: vec![],
            product_token: String::new(),
        })
    };
    for (what, resume) in [
        ("forged", "rs_".to_string() + &"0".repeat(64)),
        ("alice's", alice_resume.clone()),
        // Found by fuzz/resume_tokens: an over-long resume token refused the login itself.
        ("over-long", "rs_fouged".to_string() + &"\u{fffd}".repeat(40)),
    ] {
        let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
        match raw.request(auth(&bob.token, &resume)).await {
            Res::Auth(ok) => {
                assert!(!ok.resumed, "{what} resume token must not resume");
                assert_eq!(ok.username, "bob", "the access token decides who you are");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // A stolen resume token without the access token gets nowhere.
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    assert_eq!(
        error_code(&raw.request(auth("nt_forged", &alice_resume)).await),
        ErrorCode::Unauthenticated
    );
    // A token longer than any real one is refused before any lookup.
    assert_eq!(
        error_code(&raw.request(auth(&"x".repeat(4096), "")).await),
        ErrorCode::Unauthenticated
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_extra_streams_are_never_granted() {
    use futures::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let (alice, mut bob, dm) = alice_and_bob(&s).await;
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.login("alice").await;
    let uploads = raw
        .welcome
        .as_ref()
        .unwrap()
        .limits
        .as_ref()
        .unwrap()
        .max_upload_streams as usize;
    assert_eq!(uploads, 4, "the advertised upload streams");
    // The control stream is the one bidirectional stream allowed, and clients may hold at
    // most `max_upload_streams` unidirectional (upload) streams: 10,000 of each are opened
    // at once and wait on flow control without costing the server anything.
    let conn = raw.conn.clone();
    let mut bidi: Vec<_> = (0..10_000).map(|_| Box::pin(conn.open_bi())).collect();
    let mut uni: Vec<_> = (0..10_000).map(|_| Box::pin(conn.open_uni())).collect();
    // Poll each once, then a round trip on the control stream, then again. The granted
    // upload streams are held open (no header yet), so no credit comes back.
    assert!(bidi.iter_mut().all(|f| f.as_mut().now_or_never().is_none()));
    let mut granted = Vec::new();
    // A granted stream leaves the list: a finished future is never polled again.
    let take_granted = |uni: &mut Vec<_>, granted: &mut Vec<_>| {
        uni.retain_mut(
            |f: &mut std::pin::Pin<Box<quinn::OpenUni<'_>>>| match f.as_mut().now_or_never() {
                Some(stream) => {
                    granted.push(stream);
                    false
                }
                None => true,
            },
        )
    };
    take_granted(&mut uni, &mut granted);
    assert!(matches!(raw.request(Op::Ping(pb::Ping { nonce: 9 })).await, Res::Pong(p) if p.nonce == 9));
    assert!(
        bidi.iter_mut().all(|f| f.as_mut().now_or_never().is_none()),
        "a second bidirectional stream"
    );
    take_granted(&mut uni, &mut granted);
    assert_eq!(
        granted.len(),
        uploads,
        "exactly max_upload_streams unidirectional streams"
    );
    drop(granted);
    drop((bidi, uni));
    // Everyone else is served as usual.
    alice.client.send(dm, "unaffected").await.unwrap();
    assert_eq!(messages(&mut bob.events, dm, 1).await[0].1, "unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_and_per_user_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_connections_per_ip = 3;
    cfg.max_connections_per_user = 2;
    let s = natter_server::start(&cfg).await.unwrap();
    let (alice, mut bob, dm) = alice_and_bob(&s).await;

    // Per IP: a fourth connection from 127.0.0.2 is refused before its TLS handshake;
    // 127.0.0.1 (alice and bob) is another address and is not affected.
    // Each held connection completes the handshake, so it has certainly been admitted.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect_from("127.0.0.2", s.addr, &s.fingerprint).await;
        raw.frame(pb::frame::Kind::Hello(pb::Hello {
            versions: vec![1],
            client: "raw".into(),
        }))
        .await;
        assert!(matches!(
            raw.read().await,
            Some(pb::Frame {
                kind: Some(pb::frame::Kind::Welcome(_))
            })
        ));
        // Kept whole: ending the control stream would end the connection.
        held.push(raw);
    }
    Raw::assert_refused_before_tls("127.0.0.2", s.addr, &s.fingerprint).await;
    alice.client.send(dm, "other addresses are fine").await.unwrap();
    // A slot frees when a connection ends.
    held.pop().unwrap().conn.close(0u32.into(), b"bye");
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        // Until the server has seen the close, the slot is taken and attempts are refused.
        let Some(mut again) = Raw::try_connect_from("127.0.0.2", s.addr, &s.fingerprint).await else {
            assert!(tokio::time::Instant::now() < until, "the freed slot is reused");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        again
            .frame(pb::frame::Kind::Hello(pb::Hello {
                versions: vec![1],
                client: "raw".into(),
            }))
            .await;
        match again.read().await {
            Some(pb::Frame {
                kind: Some(pb::frame::Kind::Welcome(_)),
            }) => break,
            _ => assert!(tokio::time::Instant::now() < until, "the freed slot is reused"),
        }
    }

    assert_eq!(messages(&mut bob.events, dm, 1).await[0].1, "other addresses are fine");
    drop(held);
    s.shutdown().await;

    // Per user (on a server without the tight per-IP limit): two devices of carol are
    // connected; a third login is refused, typed, before a device is created; when one
    // disconnects, the next login succeeds.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_connections_per_user = 2;
    let s = natter_server::start(&cfg).await.unwrap();
    let c1 = user(&s, "carol").await;
    let _c2 = device(s.addr, &s.fingerprint, "carol", false).await;
    let mut c3 = Raw::hello(s.addr, &s.fingerprint).await;
    let login = Op::Login(pb::Login {
        username: "carol".into(),
        password: PASSWORD.into(),
        device_name: "third".into(),
    });
    assert_eq!(error_code(&c3.request(login.clone()).await), ErrorCode::LimitExceeded);
    let devices = c1.client.devices().await.unwrap();
    assert_eq!(devices.len(), 2, "no device was created for the refused login");
    c1.client.shutdown().await;
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        match c3.request(login.clone()).await {
            Res::Login(_) => break,
            r => {
                assert_eq!(error_code(&r), ErrorCode::LimitExceeded);
                assert!(tokio::time::Instant::now() < until, "a freed connection makes room");
                tokio::task::yield_now().await;
            }
        }
    }

    // An SDK device refused for the limit keeps its login (no AuthFailed), backs off, and
    // gets in once a connection frees up. Carol now has c2 and c3 connected.
    let (sdk, mut events) = Client::connect(client_config(s.addr, &s.fingerprint, Some(c1.token.clone()))).unwrap();
    let refused = wait_for(&mut events, |e| match e {
        natter_sdk::ClientEvent::ConnectionError(err) => Some(err.code),
        natter_sdk::ClientEvent::AuthFailed(err) => panic!("a connection limit must not log out: {err}"),
        _ => None,
    })
    .await;
    assert_eq!(refused, ErrorCode::LimitExceeded);
    drop(c3);
    wait_for(&mut events, |e| match e {
        natter_sdk::ClientEvent::Connected { .. } => Some(()),
        natter_sdk::ClientEvent::AuthFailed(err) => panic!("a connection limit must not log out: {err}"),
        _ => None,
    })
    .await;
    sdk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_and_others_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.session_ring = 8; // small per-session queues: the cut-off comes early
    let s = natter_server::start(&cfg).await.unwrap();
    let alice = user(&s, "alice").await;
    let mut bob = user(&s, "bob").await;
    let _ = user(&s, "sloth").await;
    let g = ConversationId(
        alice
            .client
            .create_group("g", &["bob", "sloth"])
            .await
            .unwrap()
            .conversation_id,
    );
    // The sloth authenticates and then never accepts or reads a delivery stream.
    let mut sloth = Raw::hello(s.addr, &s.fingerprint).await;
    sloth.login("sloth").await;
    let big = "z".repeat(20_000);
    const N: usize = 300; // 6 MB: far past QUIC's receive windows
    let sends = (0..N).map(|i| {
        let c = alice.client.clone();
        let text = format!("{i:04}{big}");
        async move { c.send(g, &text).await.unwrap() }
    });
    futures::future::join_all(sends).await;
    // The sloth's connection was closed as a slow reader (its session stays resumable).
    let (_, code) = sloth.closed().await;
    assert_eq!(code, ErrorCode::LimitExceeded as u64);
    // Bob got every message exactly once, in order.
    let got = messages(&mut bob.events, g, N).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.0).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    let mut ids: Vec<String> = got.iter().map(|m| m.1[..4].to_string()).collect();
    ids.sort();
    assert_eq!(ids, (0..N).map(|i| format!("{i:04}")).collect::<Vec<_>>());
    s.shutdown().await;
}

/// Admission (issue 13): a connection that never authenticates is closed at the
/// authentication deadline with a typed `ConnectionError` first, while authenticated ones
/// carry on; and the node holds at most `max_connections`, refusing the next with
/// `CONNECTION_REFUSED` before any TLS, whatever its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_end_at_the_deadline_and_the_node_caps_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.auth_timeout_secs = 1;
    cfg.max_connections = 4;
    let s = natter_server::start(&cfg).await.unwrap();
    let (alice, _bob, dm) = alice_and_bob(&s).await;
    // Connections 3 and 4: one that only says Hello, one that authenticates.
    let mut idle = Raw::hello(s.addr, &s.fingerprint).await;
    let mut authed = Raw::hello(s.addr, &s.fingerprint).await;
    authed.login("alice").await;
    // A fifth, from another address: the node is full.
    Raw::assert_refused_before_tls("127.0.0.3", s.addr, &s.fingerprint).await;
    // The idle one is told why, then closed, once the deadline has passed.
    let (err, code) = idle.closed().await;
    assert_eq!(code, ErrorCode::HandshakeRequired as u64);
    assert_eq!(
        err.map(|e| e.code),
        Some(ErrorCode::HandshakeRequired as i32),
        "the ConnectionError comes first"
    );
    // The authenticated connection, older than the deadline now, still works, and so do
    // the SDK clients.
    assert!(matches!(
        authed.request(Op::Ping(pb::Ping { nonce: 7 })).await,
        Res::Pong(p) if p.nonce == 7
    ));
    alice.client.send(dm, "still here").await.unwrap();
    // The idle connection's slot frees once the server has let go of it.
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut again = Raw::connect(s.addr, &s.fingerprint).await;
        again
            .frame(pb::frame::Kind::Hello(pb::Hello {
                versions: vec![1],
                client: "raw".into(),
            }))
            .await;
        if let Some(pb::Frame {
            kind: Some(pb::frame::Kind::Welcome(_)),
        }) = again.read().await
        {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.shutdown().await;
}

/// One connection per device (PROTOCOL.md §8.2): the same device authenticating on a
/// second connection ends the first with `CONFLICT`, its `ConnectionError` first — never a
/// first connection left open without its session (which used to go silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_the_same_device_closes_the_first_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let bob = user(&s, "bob").await;
    bob.client.shutdown().await;
    let auth = || {
        Op::Authenticate(pb::Authenticate {
            access_token: bob.token.clone(),
            resume_token: String::new(),
            cursors: vec![],
            product_token: String::new(),
        })
    };
    for attempt in 0..20 {
        let mut first = Raw::hello(s.addr, &s.fingerprint).await;
        assert!(matches!(first.request(auth()).await, Res::Auth(_)), "attempt {attempt}");
        let mut second = Raw::hello(s.addr, &s.fingerprint).await;
        assert!(
            matches!(second.request(auth()).await, Res::Auth(_)),
            "attempt {attempt}"
        );
        let (err, code) = first.closed().await;
        assert_eq!(code, ErrorCode::Conflict as u64, "attempt {attempt}");
        assert_eq!(
            err.map(|e| e.code),
            Some(ErrorCode::Conflict as i32),
            "attempt {attempt}: the ConnectionError comes first"
        );
        // The second carries the session.
        assert!(matches!(
            second.request(Op::Ping(pb::Ping { nonce: 1 })).await,
            Res::Pong(_)
        ));
    }
    s.shutdown().await;
}

/// `spec/vectors/sessions.txt`: each vector's bytes, written on a fresh connection's
/// control stream, get exactly the answers it lists, in order — the rules of PROTOCOL.md
/// §2, §4 and §5 for what a client gets wrong, as an independent client sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_vector_gets_the_answers_it_names() {
    let text = include_str!("../../spec/vectors/sessions.txt");
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let code = |name: &str| {
        ErrorCode::from_str_name(&format!("ERROR_CODE_{name}")).unwrap_or_else(|| panic!("no error code {name}"))
    };
    let mut played = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split(" | ").collect();
        let [name, hex, answers, _meaning] = cols[..] else {
            panic!("bad vector line {line:?}")
        };
        let mut raw = Raw::connect(s.addr, &s.fingerprint).await;
        raw.bytes(&hex::decode(hex).unwrap()).await;
        for answer in answers.split(", ") {
            let words: Vec<&str> = answer.split(' ').collect();
            match words[..] {
                ["welcome"] => match raw.read().await.and_then(|f| f.kind) {
                    Some(pb::frame::Kind::Welcome(_)) => {}
                    other => panic!("{name}: expected Welcome, got {other:?}"),
                },
                ["response", id, what] => {
                    let id: u64 = id.parse().unwrap();
                    let r = match raw.read().await.and_then(|f| f.kind) {
                        Some(pb::frame::Kind::Response(r)) => r,
                        other => panic!("{name}: expected response {id}, got {other:?}"),
                    };
                    assert_eq!(r.id, id, "{name}: response id");
                    match (what, r.result) {
                        ("PONG", Some(Res::Pong(_))) => {}
                        (what, Some(Res::Error(e))) if what != "PONG" => {
                            assert_eq!(e.code, code(what) as i32, "{name}: error code ({})", e.message)
                        }
                        (what, other) => panic!("{name}: expected {what}, got {other:?}"),
                    }
                }
                ["close", what] => {
                    let (err, close) = raw.closed().await;
                    let err = err.unwrap_or_else(|| panic!("{name}: no ConnectionError before the close"));
                    assert_eq!(err.code, code(what) as i32, "{name}: ConnectionError ({})", err.message);
                    assert_eq!(close, code(what) as u64, "{name}: close code");
                }
                _ => panic!("{name}: bad answer {answer:?}"),
            }
        }
        played += 1;
    }
    assert!(played >= 15, "only {played} vectors");
}

/// Address validation (PROTOCOL.md §3.1): with `quic_retry_above_handshakes = 0` every new
/// address is sent a QUIC Retry before the server spends a handshake on it — seen on the
/// wire by a relay — and a real client follows it and is served; with the default (64)
/// a single connection gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_new_addresses_prove_themselves_with_a_retry_first() {
    for (threshold, want_retry) in [(0u32, true), (64, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.quic_retry_above_handshakes = threshold;
        let s = natter_server::start(&cfg).await.unwrap();
        let relay = common::relay::Relay::start(s.addr).await;
        let mut raw = Raw::hello(relay.addr, &s.fingerprint).await;
        let register = Op::Register(pb::Register {
            username: "val".into(),
            password: PASSWORD.into(),
        });
        assert!(matches!(raw.request(register).await, Res::Register(_)), "served");
        assert_eq!(
            relay.retries() > 0,
            want_retry,
            "threshold {threshold}: {} Retry packets",
            relay.retries()
        );
        s.shutdown().await;
    }
}

/// Server CPU (user + system, from /proc) of the process `pid`, in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 after the ")".
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 10 // USER_HZ is 100 on Linux
}

/// A flood from one address (PROTOCOL.md §3.1, §9): 2,000 QUIC connection attempts, 64 at a
/// time, against a server binary that admits 100 per address. Exactly the 100 it admits
/// complete a handshake; the other 1,900 are refused at their first packet with
/// `CONNECTION_REFUSED`, before any TLS. Run with address validation forced on (a Retry for
/// every new connection) and at the default, and, for comparison, with the limit above the
/// flood (every attempt a full handshake); the server's CPU for each is printed
/// (bench/RESULTS.md), the assertions are the admission property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_costs_only_the_handshakes_it_admits() {
    use futures::StreamExt;
    for (per_ip, retry_above) in [(100u32, 0u32), (100, 64), (10_000, 64)] {
        let want = per_ip.min(2_000) as usize;
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("flood.toml");
        std::fs::write(
            &toml,
            // The admitted connections open no control stream: a long handshake timeout keeps
            // the server from closing them (and freeing their slots) while a slow flood runs.
            format!(
                "max_connections_per_ip = {per_ip}\nquic_retry_above_handshakes = {retry_above}\nhandshake_timeout_secs = 600\n"
            ),
        )
        .unwrap();
        let mut p = spawn_server_binary_with(dir.path(), "127.0.0.1:0", &["--config", toml.to_str().unwrap()]);
        let (addr, fp) = (p.addr, p.fingerprint.clone());
        let before = cpu_ms(p.child.id());
        let attempts = futures::stream::iter(0..2_000)
            .map(|_| {
                let fp = fp.clone();
                async move { Raw::quic_attempt_from("127.0.0.9", addr, &fp).await }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        let cpu = cpu_ms(p.child.id()) - before;
        let mut admitted = Vec::new();
        let mut refused = 0;
        for a in attempts {
            match a {
                Ok(conn) => admitted.push(conn),
                Err(quinn::ConnectionError::ConnectionClosed(c))
                    if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    refused += 1
                }
                Err(e) => panic!("an attempt ended otherwise: {e}"),
            }
        }
        eprintln!(
            "flood, per-address limit {per_ip}, quic_retry_above_handshakes = {retry_above}: {} admitted, {refused} refused before TLS, server CPU {cpu} ms",
            admitted.len()
        );
        assert_eq!(admitted.len(), want, "the address's {want} connections are admitted");
        assert_eq!(
            refused,
            2_000 - want,
            "every other attempt is refused before its handshake"
        );
        drop(admitted);
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }
}
