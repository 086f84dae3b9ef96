//! Notifications for offline devices (PROTOCOL.md §13) against the real server and a Web
//! Push service on loopback that does the provider's side faithfully
//! (`tests/push/webpush_provider.py`: it checks each request's VAPID signature and decrypts
//! every body with the independent `http_ece` library).
use crate::common;
#[path = "push/email.rs"]
mod email;
#[path = "push/mobile.rs"]
mod mobile;
#[path = "push/nodes.rs"]
mod nodes;

use std::time::Duration;

use common::push::{b64, Provider, Received};
use common::*;
use natter_protocol::client::model::PushNotification;
use natter_protocol::pb::{self, request::Op, response::Result as Res, ErrorCode};

/// A Web Push payload as the provider decrypted it: JSON (PROTOCOL.md §13.3).
fn payload(r: &Received) -> PushNotification {
    assert_eq!(r.problem, None, "the provider found a problem");
    let bytes = b64(r.payload.as_deref().expect("decrypted"));
    assert_eq!(bytes.len(), 3072, "every payload has the same padded length");
    serde_json::from_slice(&bytes).expect("a PushNotification")
}

async fn push_server(dir: &std::path::Path) -> natter_server::RunningServer {
    let cfg = natter_server::Config {
        push_allow_loopback_endpoints: true,
        ..config(dir)
    };
    natter_server::start(&cfg).await.expect("server starts")
}

/// A raw device of `name` (registered already) with `target` registered for pushes.
async fn registered(s: &natter_server::RunningServer, name: &str, target: pb::PushTarget) -> Raw {
    let mut r = Raw::hello(s.addr, &s.fingerprint).await;
    r.login(name).await;
    match r
        .request(Op::RegisterPush(pb::RegisterPush {
            target: Some(target.clone()),
        }))
        .await
    {
        Res::Push(p) => {
            assert_eq!(p.vapid_public_key.len(), 65, "the server's VAPID key");
            assert_eq!(p.registrations.len(), 1);
            assert_eq!(p.registrations[0].target.as_ref(), Some(&target));
        }
        other => panic!("register push: {other:?}"),
    }
    r
}

/// Close `r`'s connection and wait until the server has let go of its session.
async fn go_offline(s: &natter_server::RunningServer, r: Raw) {
    let before = s.attached_sessions();
    r.conn.close(0u32.into(), b"pocket");
    let until = tokio::time::Instant::now() + DEADLINE;
    while s.attached_sessions() >= before {
        assert!(tokio::time::Instant::now() < until, "the session stays attached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bob, online; and `names`, registered with the provider and offline.
async fn bob_and_offline(s: &natter_server::RunningServer, provider: &Provider, names: &[&str]) -> Device {
    let bob = user(s, "bob").await;
    for name in names {
        drop(user(s, name).await);
        let r = registered(s, name, provider.subscribe(name).await).await;
        go_offline(s, r).await;
    }
    bob
}

#[tokio::test]
async fn an_offline_device_gets_one_encrypted_notification_per_burst_and_an_online_one_none() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = push_server(dir.path()).await;
    let bob = user(&s, "bob").await;
    for name in ["alice", "carol", "dave"] {
        drop(user(&s, name).await);
    }
    let alice = registered(&s, "alice", provider.subscribe("alice").await).await;
    let carol = registered(&s, "carol", provider.subscribe("carol").await).await;
    let dave = registered(&s, "dave", provider.subscribe("dave").await).await;
    go_offline(&s, alice).await;
    go_offline(&s, dave).await;

    // A burst of three: one notification, about the newest.
    let to_alice = natter_sdk::ConversationId(bob.client.direct("alice").await.unwrap().conversation_id);
    let mut last = 0;
    for text in ["one", "two", "three"] {
        last = bob.client.send(to_alice, text).await.unwrap().seq.0;
    }
    let got = provider.until("alice", 1).await;
    let first = payload(&got[0]);
    assert_eq!(first.conversation_id, to_alice.0);
    assert_eq!(first.seq, last, "the burst's newest event");
    assert_eq!((first.sender_name.as_str(), first.preview.as_str()), ("bob", "three"));
    assert_eq!(first.collapse_id, format!("c{}", to_alice.0));
    assert!(first.badge >= 3, "badge {}", first.badge);
    assert_eq!(
        got[0].topic.as_deref(),
        Some(first.collapse_id.as_str()),
        "RFC 8030 Topic"
    );
    assert_eq!(got[0].urgency.as_deref(), Some("high"));

    // The next message is a new notification, the same length on the wire.
    let fourth = bob.client.send(to_alice, "four").await.unwrap().seq.0;
    let got = provider.until("alice", 2).await;
    assert_eq!(got.len(), 2, "one per burst: {got:?}");
    assert_eq!(payload(&got[1]).seq, fourth);
    assert_eq!(got[0].length, got[1].length, "every encrypted body has the same length");

    // Carol is online and acknowledges: nothing for her. Dave's notification comes after
    // hers would have.
    let mut carol = carol;
    let to_carol = natter_sdk::ConversationId(bob.client.direct("carol").await.unwrap().conversation_id);
    let here = bob.client.send(to_carol, "you are here").await.unwrap().seq.0;
    ack(&mut carol, to_carol.0, here).await;
    let to_dave = natter_sdk::ConversationId(bob.client.direct("dave").await.unwrap().conversation_id);
    bob.client.send(to_dave, "you are not").await.unwrap();
    assert_eq!(payload(&provider.until("dave", 1).await[0]).preview, "you are not");
    assert!(
        provider.received("carol").await.is_empty(),
        "an online device gets none"
    );
    drop(carol);
}

/// `r` acknowledges the delivery of `conversation` up to `seq` (as an SDK does).
async fn ack(r: &mut Raw, conversation: u64, seq: u64) {
    let op = Op::MarkDelivered(pb::MarkDelivered {
        conversation_id: conversation,
        seq,
    });
    assert!(matches!(r.request(op).await, Res::Done(_)), "the ack is taken");
}

/// Bob's direct conversations with carol and erin, whose devices are attached to `devices`
/// and registered for pushes, and with dave, registered and offline.
struct Trio {
    carol: Raw,
    erin: Raw,
    to_carol: natter_sdk::ConversationId,
    to_erin: natter_sdk::ConversationId,
    to_dave: natter_sdk::ConversationId,
}

impl Trio {
    async fn new(bob: &Device, devices: &natter_server::RunningServer, provider: &Provider) -> Trio {
        for name in ["carol", "erin", "dave"] {
            drop(user(devices, name).await);
        }
        let carol = registered(devices, "carol", provider.subscribe("carol").await).await;
        let erin = registered(devices, "erin", provider.subscribe("erin").await).await;
        let dave = registered(devices, "dave", provider.subscribe("dave").await).await;
        go_offline(devices, dave).await;
        let direct = |name: &'static str| {
            let c = bob.client.clone();
            async move { natter_sdk::ConversationId(c.direct(name).await.unwrap().conversation_id) }
        };
        Trio {
            carol,
            erin,
            to_carol: direct("carol").await,
            to_erin: direct("erin").await,
            to_dave: direct("dave").await,
        }
    }
}

/// A device with a session that does not acknowledge what it is sent (its connection died
/// without a close, or its app is frozen) is notified once the ack delay has passed; one
/// that acknowledges is not.
#[tokio::test]
async fn an_attached_device_that_does_not_acknowledge_is_notified_after_the_ack_delay() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = natter_server::Config {
        push_allow_loopback_endpoints: true,
        push_ack_delay_ms: 600,
        ..config(dir.path())
    };
    let s = natter_server::start(&cfg).await.expect("server starts");
    let bob = user(&s, "bob").await;
    let Trio {
        mut carol,
        erin,
        to_carol,
        to_erin,
        to_dave,
    } = Trio::new(&bob, &s, &provider).await;

    // Both are attached; carol acknowledges at once, erin never does.
    let for_carol = bob.client.send(to_carol, "for carol").await.unwrap().seq.0;
    ack(&mut carol, to_carol.0, for_carol).await;
    let sent = tokio::time::Instant::now();
    let for_erin = bob.client.send(to_erin, "for erin").await.unwrap().seq.0;
    let got = provider.until("erin", 1).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(600),
        "not before the ack delay: {:?}",
        sent.elapsed()
    );
    let n = payload(&got[0]);
    assert_eq!(
        (n.conversation_id, n.seq, n.preview.as_str()),
        (to_erin.0, for_erin, "for erin")
    );

    // Carol's deadline came first: had her ack not counted, her notification would be out
    // before dave's (an offline device, notified after the burst wait).
    bob.client.send(to_dave, "for dave").await.unwrap();
    provider.until("dave", 1).await;
    assert!(
        provider.received("carol").await.is_empty(),
        "an acknowledging device gets none"
    );
    assert!(s.attached_sessions() >= 2, "carol and erin were attached throughout");
    drop((carol, erin));
}

#[tokio::test]
async fn a_gone_registration_is_removed_and_a_busy_service_is_retried_after_retry_after() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = push_server(dir.path()).await;
    let bob = bob_and_offline(&s, &provider, &["alice", "dave"]).await;
    let to_alice = natter_sdk::ConversationId(bob.client.direct("alice").await.unwrap().conversation_id);
    let to_dave = natter_sdk::ConversationId(bob.client.direct("dave").await.unwrap().conversation_id);

    // 429 with Retry-After: 2 s, then taken; the retry waits at least that long.
    provider.answer("alice", 429, Some(2), 1).await;
    let seq = bob.client.send(to_alice, "later").await.unwrap().seq.0;
    let t0 = std::time::Instant::now();
    let got = provider.until("alice", 2).await;
    assert_eq!((got[0].status, got[1].status), (Some(429), Some(201)));
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "retried after {:?}",
        t0.elapsed()
    );
    assert_eq!(payload(&got[1]).seq, seq, "nothing lost");

    // 410: the registration is gone; later messages are not sent there.
    provider.answer("dave", 410, None, 1).await;
    bob.client.send(to_dave, "gone?").await.unwrap();
    assert_eq!(provider.until("dave", 1).await[0].status, Some(410));
    bob.client.send(to_dave, "still there?").await.unwrap();
    // Alice's next notification is queued after that message's decision.
    bob.client.send(to_alice, "sync").await.unwrap();
    provider.until("alice", 3).await;
    assert_eq!(provider.received("dave").await.len(), 1, "nothing after 410");
}

/// A push service down for a minute: every notification waits, none is lost, none is sent
/// twice, and what came meanwhile is folded into one.
#[tokio::test]
async fn a_push_service_down_for_a_minute_loses_nothing_and_sends_nothing_twice() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = push_server(dir.path()).await;
    let bob = bob_and_offline(&s, &provider, &["alice", "dave"]).await;
    let to_alice = natter_sdk::ConversationId(bob.client.direct("alice").await.unwrap().conversation_id);
    let to_dave = natter_sdk::ConversationId(bob.client.direct("dave").await.unwrap().conversation_id);
    provider.down("alice", 60).await;
    provider.down("dave", 60).await;
    let t0 = std::time::Instant::now();
    bob.client.send(to_alice, "during the outage").await.unwrap();
    let to_d = bob.client.send(to_dave, "for dave").await.unwrap().seq.0;
    // After two failed attempts, another message to alice joins the waiting notification.
    provider
        .until_within("alice", DEADLINE, |got| {
            got.iter().filter(|r| r.status == Some(503)).count() >= 2
        })
        .await;
    let later = bob.client.send(to_alice, "still down?").await.unwrap().seq.0;
    let taken = |got: &[Received]| got.iter().filter(|r| r.status == Some(201)).count();
    let a = provider
        .until_within("alice", Duration::from_secs(150), |got| taken(got) >= 1)
        .await;
    assert!(t0.elapsed() >= Duration::from_secs(60), "sent during the outage");
    let d = provider
        .until_within("dave", Duration::from_secs(30), |got| taken(got) >= 1)
        .await;
    for got in [&a, &d] {
        let (last, before) = got.split_last().unwrap();
        assert_eq!(last.status, Some(201));
        assert!(before.iter().all(|r| r.status == Some(503)), "{got:?}");
        assert!(before.len() >= 3, "retried with backoff: {got:?}");
    }
    assert_eq!(payload(a.last().unwrap()).seq, later, "the newest of what waited");
    assert_eq!(payload(d.last().unwrap()).seq, to_d);
    // Nothing twice: the next notification of each is about the next message.
    let next = bob.client.send(to_alice, "back").await.unwrap().seq.0;
    let a = provider.until_within("alice", DEADLINE, |got| taken(got) >= 2).await;
    assert_eq!(payload(a.last().unwrap()).seq, next);
    assert_eq!(taken(&a), 2, "{a:?}");
    assert_eq!(taken(&provider.received("dave").await), 1);
}

/// A name that resolves to this machine passes the registration's look at the URL, but
/// not the look at its addresses when a notification is sent: the registration is removed
/// and the user's other devices hear why.
#[tokio::test]
async fn a_name_that_resolves_to_this_machine_is_refused_when_sending() {
    use std::net::ToSocketAddrs;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = [hostname.trim(), "ip6-localhost", "localhost6", "localhost.localdomain"]
        .into_iter()
        .find(|h| {
            !h.is_empty()
                && (*h, 443u16).to_socket_addrs().is_ok_and(|mut a| {
                    a.all(|x| x.ip().is_loopback() || matches!(x.ip(), std::net::IpAddr::V4(v) if v.is_private()))
                })
        })
        .expect("this machine resolves one of its own names (its hostname or ip6-localhost)")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&config(dir.path())).await.unwrap();
    let bob = user(&s, "bob").await;
    drop(user(&s, "alice").await);
    let key = {
        let secret = web_push_native::p256::SecretKey::random(&mut rand::thread_rng());
        use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;
        secret.public_key().to_encoded_point(false).as_bytes().to_vec()
    };
    let target = pb::PushTarget {
        provider: pb::PushProvider::WebPush as i32,
        endpoint: format!("https://{name}:9/push"),
        p256dh: key,
        auth: vec![7; 16],
        ..Default::default()
    };
    let phone = registered(&s, "alice", target).await;
    go_offline(&s, phone).await;
    let mut laptop = device(s.addr, &s.fingerprint, "alice", false).await;
    let to_alice = natter_sdk::ConversationId(bob.client.direct("alice").await.unwrap().conversation_id);
    bob.client.send(to_alice, "where do you live?").await.unwrap();
    let removed = wait_for(&mut laptop.events, |e| match e {
        natter_sdk::ClientEvent::PushRemoved(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert!(removed.reason.contains("non-public address"), "{removed:?}");
}

#[tokio::test]
async fn registrations_that_would_make_the_server_call_where_it_should_not_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The default configuration (no loopback endpoints), with room for the refusals below
    // before the rate limit.
    let mut cfg = config(dir.path());
    cfg.rates.push_changes_per_minute_per_user = 20;
    let s = natter_server::start(&cfg).await.unwrap();
    drop(user(&s, "alice").await);
    let mut r = Raw::hello(s.addr, &s.fingerprint).await;
    r.login("alice").await;
    let key = {
        let secret = web_push_native::p256::SecretKey::random(&mut rand::thread_rng());
        use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;
        secret.public_key().to_encoded_point(false).as_bytes().to_vec()
    };
    let good = pb::PushTarget {
        provider: pb::PushProvider::WebPush as i32,
        endpoint: "https://push.example.net/abc".into(),
        p256dh: key.clone(),
        auth: vec![7; 16],
        ..Default::default()
    };
    let refusals = [
        (
            "plain http",
            pb::PushTarget {
                endpoint: "http://push.example.net/abc".into(),
                ..good.clone()
            },
        ),
        (
            "loopback",
            pb::PushTarget {
                endpoint: "https://127.0.0.1:8443/x".into(),
                ..good.clone()
            },
        ),
        (
            "localhost",
            pb::PushTarget {
                endpoint: "https://localhost/x".into(),
                ..good.clone()
            },
        ),
        (
            "private",
            pb::PushTarget {
                endpoint: "https://10.0.0.7/x".into(),
                ..good.clone()
            },
        ),
        (
            "metadata",
            pb::PushTarget {
                endpoint: "https://169.254.169.254/latest".into(),
                ..good.clone()
            },
        ),
        (
            "v6 loopback",
            pb::PushTarget {
                endpoint: "https://[::1]/x".into(),
                ..good.clone()
            },
        ),
        (
            "v4-mapped",
            pb::PushTarget {
                endpoint: "https://[::ffff:192.168.0.1]/x".into(),
                ..good.clone()
            },
        ),
        (
            "credentials",
            pb::PushTarget {
                endpoint: "https://u:p@push.example.net/x".into(),
                ..good.clone()
            },
        ),
        (
            "oversized",
            pb::PushTarget {
                endpoint: format!("https://push.example.net/{}", "a".repeat(1100)),
                ..good.clone()
            },
        ),
        (
            "not a url",
            pb::PushTarget {
                endpoint: "push me".into(),
                ..good.clone()
            },
        ),
        (
            "bad key",
            pb::PushTarget {
                p256dh: vec![4; 65],
                ..good.clone()
            },
        ),
        (
            "short auth",
            pb::PushTarget {
                auth: vec![7; 15],
                ..good.clone()
            },
        ),
        (
            "no provider",
            pb::PushTarget {
                provider: 0,
                ..good.clone()
            },
        ),
    ];
    for (what, target) in refusals {
        let res = r
            .request(Op::RegisterPush(pb::RegisterPush { target: Some(target) }))
            .await;
        assert_eq!(error_code(&res), ErrorCode::PushTargetRejected, "{what}: {res:?}");
    }
    match r.request(Op::ListPush(pb::ListPush {})).await {
        Res::Push(p) => assert!(p.registrations.is_empty(), "nothing kept"),
        other => panic!("{other:?}"),
    }
    // The good one is kept, replaces nothing else, and can be removed.
    let id = match r
        .request(Op::RegisterPush(pb::RegisterPush { target: Some(good) }))
        .await
    {
        Res::Push(p) => p.registrations[0].registration_id.clone(),
        other => panic!("{other:?}"),
    };
    let res = r
        .request(Op::RemovePush(pb::RemovePush {
            registration_id: "nope".into(),
        }))
        .await;
    assert_eq!(error_code(&res), ErrorCode::NotFound);
    match r.request(Op::RemovePush(pb::RemovePush { registration_id: id })).await {
        Res::Push(p) => assert!(p.registrations.is_empty()),
        other => panic!("{other:?}"),
    }
    // A flood of changes is rate-limited.
    let mut limited = false;
    for _ in 0..30 {
        let res = r.request(Op::ListPush(pb::ListPush {})).await;
        assert!(matches!(res, Res::Push(_)), "listing is not limited");
        let res = r
            .request(Op::RemovePush(pb::RemovePush {
                registration_id: "x".into(),
            }))
            .await;
        if error_code(&res) == ErrorCode::RateLimited {
            limited = true;
            break;
        }
    }
    assert!(limited, "registration changes are rate-limited");
}

/// The CLI makes push keys, registers with them, lists and removes; a notification the
/// server sent through the push service decrypts with `natter push decrypt` and those keys.
#[tokio::test]
async fn the_cli_registers_its_own_keys_and_decrypts_what_the_push_service_carried() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = push_server(dir.path()).await;
    let bob = user(&s, "bob").await;
    let profile = dir.path().join("erin-cli");
    cli_user(&profile, &s, "erin").await;
    let keys = dir.path().join("push.keys");
    let made = cli(&profile, &["push", "keys", keys.to_str().unwrap()]).await;
    assert_eq!(b64(made[0]["p256dh"].as_str().unwrap()).len(), 65);
    let endpoint = provider.endpoint("erin").await;
    let regs = cli(
        &profile,
        &[
            "push",
            "register",
            "--provider",
            "webpush",
            "--endpoint",
            &endpoint,
            "--keys",
            keys.to_str().unwrap(),
        ],
    )
    .await;
    let reg = &regs[0]["registrations"][0];
    assert_eq!(reg["provider"], "webpush");
    assert_eq!(reg["endpoint"], endpoint.as_str());
    assert_eq!(b64(regs[0]["vapidPublicKey"].as_str().unwrap()).len(), 65);
    let listed = cli(&profile, &["push", "list"]).await;
    assert_eq!(listed[0]["registrations"], regs[0]["registrations"]);

    // The CLI has exited: erin's device is offline.
    let to_erin = natter_sdk::ConversationId(bob.client.direct("erin").await.unwrap().conversation_id);
    let seq = bob.client.send(to_erin, "for your pocket").await.unwrap().seq.0;
    let got = provider.until("erin", 1).await;
    assert_eq!(got[0].problem, None);
    let body = dir.path().join("body");
    std::fs::write(&body, b64(got[0].body.as_deref().unwrap())).unwrap();
    let opened = cli(
        &profile,
        &[
            "push",
            "decrypt",
            "--keys",
            keys.to_str().unwrap(),
            body.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(opened[0]["preview"], "for your pocket");
    assert_eq!(opened[0]["seq"], seq);
    assert_eq!(opened[0]["conversationId"], to_erin.0);
    assert_eq!(opened[0]["senderName"], "bob");
    // `--open` reads the profile's encryption state too (a plain message needs none of it).
    let with_state = cli(
        &profile,
        &[
            "push",
            "decrypt",
            "--open",
            "--keys",
            keys.to_str().unwrap(),
            body.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(with_state, opened);
    // Another device's keys do not open it.
    let other = dir.path().join("other.keys");
    cli(&profile, &["push", "keys", other.to_str().unwrap()]).await;
    let refused = cli_fails(
        &profile,
        &[
            "push",
            "decrypt",
            "--keys",
            other.to_str().unwrap(),
            body.to_str().unwrap(),
        ],
    )
    .await;
    assert!(refused.contains("does not decrypt"), "{refused}");

    let id = reg["registrationId"].as_str().unwrap();
    let left = cli(&profile, &["push", "remove", id]).await;
    assert_eq!(left[0]["registrations"], serde_json::json!([]));
}

/// A notification the push service has not taken yet survives `kill -9`: after the
/// restart it is sent once, and the next message is a notification of its own.
#[tokio::test]
async fn a_queued_notification_survives_kill_9_and_is_sent_once_after_the_restart() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("natter.toml");
    std::fs::write(&config, "push_allow_loopback_endpoints = true\n").unwrap();
    let cfg = config.to_str().unwrap();
    let mut p = spawn_server_binary_with(dir.path(), "127.0.0.1:0", &["--config", cfg]);
    let bob = device(p.addr, &p.fingerprint, "bob", true).await;
    drop(device(p.addr, &p.fingerprint, "alice", true).await);
    let mut alice = Raw::hello(p.addr, &p.fingerprint).await;
    alice.login("alice").await;
    let target = provider.subscribe("alice").await;
    let res = alice
        .request(Op::RegisterPush(pb::RegisterPush { target: Some(target) }))
        .await;
    assert!(matches!(res, Res::Push(_)), "{res:?}");
    alice.conn.close(0u32.into(), b"pocket");
    alice.conn.closed().await;

    // The push service is down: attempts fail and the job waits in the store.
    provider.answer("alice", 503, None, 1000).await;
    let to_alice = natter_sdk::ConversationId(bob.client.direct("alice").await.unwrap().conversation_id);
    let seq = bob.client.send(to_alice, "through a crash").await.unwrap().seq.0;
    // Two failed attempts: the first one's retry was written down.
    provider.until("alice", 2).await;
    p.child.kill().unwrap(); // SIGKILL: no shutdown path runs
    p.child.wait().unwrap();
    bob.client.shutdown().await;
    provider.clear("alice").await;

    let p2 = spawn_server_binary_with(dir.path(), "127.0.0.1:0", &["--config", cfg]);
    let taken = |got: &[Received]| got.iter().filter(|r| r.status == Some(201)).count();
    let until = tokio::time::Instant::now() + DEADLINE * 2;
    let got = loop {
        let got = provider.received("alice").await;
        if taken(&got) >= 1 {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "not sent after the restart: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sent: Vec<u64> = got
        .iter()
        .filter(|r| r.status == Some(201))
        .map(|r| payload(r).seq)
        .collect();
    assert_eq!(sent, vec![seq], "sent once, the message from before the crash");

    // The next message is its own notification; the first is not sent again.
    let bob = device(p2.addr, &p2.fingerprint, "bob", false).await;
    let next = bob.client.send(to_alice, "after").await.unwrap().seq.0;
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = provider.received("alice").await;
        if taken(&got) >= 2 {
            let sent: Vec<u64> = got
                .iter()
                .filter(|r| r.status == Some(201))
                .map(|r| payload(r).seq)
                .collect();
            assert_eq!(sent, vec![seq, next], "none twice");
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the next message was not notified");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_rules(r: &mut Raw, settings: pb::NotifySettings) -> pb::NotifySettings {
    match r
        .request(Op::SetNotifySettings(pb::SetNotifySettings {
            settings: Some(settings),
        }))
        .await
    {
        Res::NotifySettings(s) => s,
        other => panic!("set notify settings: {other:?}"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Seqs of the notifications `device` got (the provider took them all).
async fn notified(provider: &Provider, device: &str) -> Vec<u64> {
    provider.received(device).await.iter().map(|r| payload(r).seq).collect()
}

/// Mentions-only, a muted conversation and do-not-disturb hours, each with messages that
/// must and must not notify, in a group; erin (no rules) is notified of everything, so
/// once her notification of a message is in, every decision about it has been made.
#[tokio::test]
async fn rules_decide_which_group_messages_notify() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = push_server(dir.path()).await;
    let bob = user(&s, "bob").await;
    for name in ["alice", "dave", "erin"] {
        drop(user(&s, name).await);
    }
    let mut alice = registered(&s, "alice", provider.subscribe("alice").await).await;
    let mut dave = registered(&s, "dave", provider.subscribe("dave").await).await;
    let erin = registered(&s, "erin", provider.subscribe("erin").await).await;
    let team = bob
        .client
        .create_group("team", &["alice", "dave", "erin"])
        .await
        .unwrap()
        .conversation_id;
    // Alice: mentions only. Dave: do not disturb, now, in his time zone.
    let alice_rules = set_rules(
        &mut alice,
        pb::NotifySettings {
            level: pb::NotifyLevel::Mentions as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(alice_rules.level, pb::NotifyLevel::Mentions as i32);
    let minute = ((now_ms() / 60_000) % 1440) as u32;
    let dnd = pb::NotifySettings {
        time_zone: "UTC".into(),
        dnd_start_minute: (minute + 1439) % 1440,
        dnd_end_minute: (minute + 3) % 1440,
        ..Default::default()
    };
    set_rules(&mut dave, dnd).await;
    let bad = dave
        .request(Op::SetNotifySettings(pb::SetNotifySettings {
            settings: Some(pb::NotifySettings {
                time_zone: "Nowhere/Atlantis".into(),
                ..Default::default()
            }),
        }))
        .await;
    assert_eq!(error_code(&bad), ErrorCode::BadRequest, "an unknown time zone");
    let mut alice_raw = alice;
    go_offline(&s, erin).await;

    let send = |text: &'static str| {
        let c = bob.client.clone();
        async move { c.send(natter_sdk::ConversationId(team), text).await.unwrap().seq.0 }
    };
    // 1. No mention: erin yes, alice (mentions only) no, dave (do not disturb) no.
    let plain = send("lunch at noon").await;
    provider.until("erin", 1).await;
    // 2. A mention of alice: alice yes.
    let mention = send("@alice can you book it?").await;
    provider.until("erin", 2).await;
    assert_eq!(notified(&provider, "alice").await, Vec::<u64>::new(), "alice is online");
    go_offline(&s, alice_raw).await;
    let again = send("@alice ping").await;
    provider.until("erin", 3).await;
    let alice_got = provider.until("alice", 1).await;
    let p = payload(&alice_got[0]);
    assert_eq!(
        (p.seq, p.mention),
        (again, true),
        "the mention notifies, with mention set"
    );
    // 3. @here counts as a mention of everyone.
    let here = send("@here standup").await;
    provider.until("erin", 4).await;
    provider.until("alice", 2).await;
    assert_eq!(notified(&provider, "alice").await, vec![again, here]);
    assert!(
        provider.received("dave").await.is_empty(),
        "dave's do-not-disturb holds"
    );
    let _ = (plain, mention);

    // 4. Alice mutes the group for ten minutes: not even a mention.
    alice_raw = Raw::hello(s.addr, &s.fingerprint).await;
    alice_raw.login("alice").await;
    set_rules(
        &mut alice_raw,
        pb::NotifySettings {
            level: pb::NotifyLevel::Mentions as i32,
            conversations: vec![pb::ConversationNotify {
                conversation_id: team,
                level: 0,
                mute_until_ms: now_ms() + 600_000,
            }],
            ..Default::default()
        },
    )
    .await;
    match alice_raw.request(Op::GetNotifySettings(pb::GetNotifySettings {})).await {
        Res::NotifySettings(n) => assert_eq!(n.conversations[0].conversation_id, team),
        other => panic!("{other:?}"),
    }
    drop(alice_raw);
    // 5. Dave's hours end (he turns them off): the next message notifies him.
    set_rules(&mut dave, pb::NotifySettings::default()).await;
    go_offline(&s, dave).await;
    let last = send("@alice @dave done").await;
    provider.until("erin", 5).await;
    assert_eq!(notified(&provider, "dave").await, vec![last]);
    assert_eq!(
        notified(&provider, "alice").await,
        vec![again, here],
        "the muted group stays quiet"
    );
}

/// Mentions-only, mute-until and do-not-disturb hours in an encrypted direct conversation,
/// each with messages that must and must not notify. The sender's SDK lists mentions
/// outside the ciphertext; notifications say so and carry no preview. A message that must
/// not notify is followed by a pause longer than a burst (`QUIET`) before the next send, so
/// a wrong notification would go out on its own and be counted, not merged into the next.
#[tokio::test]
async fn rules_decide_which_encrypted_direct_messages_notify() {
    use common::e2ee::phone;
    const QUIET: Duration = Duration::from_millis(900);
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = push_server(dir.path()).await;
    let bob = phone(&s, dir.path(), "bob", 1, true).await;
    let alice = phone(&s, dir.path(), "alice", 1, true).await;
    alice
        .client
        .register_push(provider.subscribe("alice").await)
        .await
        .unwrap();
    let dm = natter_sdk::ConversationId(bob.client.encrypted_direct("alice").await.unwrap().conversation_id);
    // Mentions only, and this conversation muted for the next few seconds.
    let muted_until = now_ms() + 2_500;
    let mut rules = alice.client.notify_settings().await.unwrap();
    rules.level = pb::NotifyLevel::Mentions as i32;
    rules.conversations = vec![pb::ConversationNotify {
        conversation_id: dm.0,
        level: 0,
        mute_until_ms: muted_until,
    }];
    alice.client.set_notify_settings(rules).await.unwrap();
    let before = s.attached_sessions();
    alice.client.shutdown().await;
    let until = tokio::time::Instant::now() + DEADLINE;
    while s.attached_sessions() >= before {
        assert!(tokio::time::Instant::now() < until, "alice stays attached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = |text: &'static str| {
        let c = bob.client.clone();
        async move { c.send(dm, text).await.unwrap().seq.0 }
    };

    // 1. Muted: not even a mention.
    sent("@alice while muted").await;
    tokio::time::sleep(QUIET).await;
    assert!(now_ms() < muted_until, "the mute outlasted the muted message's burst");
    while now_ms() <= muted_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 2. The mute is over; mentions only: a message without one does not notify, a
    //    mention does.
    sent("no mention here").await;
    tokio::time::sleep(QUIET).await;
    let mentioned = sent("@alice are you there?").await;
    let got = provider.until("alice", 1).await;
    let p = payload(&got[0]);
    assert_eq!((p.seq, p.mention, p.fetch), (mentioned, true, true));
    assert_eq!(p.preview, "", "no plaintext from an encrypted conversation");
    // The mention is outside the ciphertext: the stored event lists alice, nothing else.
    let page = bob
        .client
        .history(dm, natter_sdk::HistoryAnchor::Before(natter_sdk::Seq(0)), 10)
        .await
        .unwrap();
    let alice_id = page.events.iter().find_map(|e| match &e.body {
        Some(pb::conversation_event::Body::Message(m)) if e.seq == mentioned => {
            Some(m.body.as_ref().unwrap().mentions.clone())
        }
        _ => None,
    });
    assert_eq!(alice_id.map(|v| v.len()), Some(1));

    // 3. Do-not-disturb hours around now in her time zone (set from her laptop, whose
    //    session does not stand for the phone): not even a mention. Then the same hours
    //    an hour later: the mention notifies.
    let laptop = phone(&s, dir.path(), "alice", 2, false).await;
    let minute = |offset: u32| ((now_ms() / 60_000 + offset as u64) % 1440) as u32;
    let hours = |start: u32, end: u32| pb::NotifySettings {
        time_zone: "UTC".into(),
        dnd_start_minute: start,
        dnd_end_minute: end,
        ..Default::default()
    };
    laptop
        .client
        .set_notify_settings(hours(minute(1439), minute(3)))
        .await
        .unwrap();
    sent("@alice at night").await;
    tokio::time::sleep(QUIET).await;
    laptop
        .client
        .set_notify_settings(hours(minute(60), minute(120)))
        .await
        .unwrap();
    let morning = sent("@alice in the morning").await;
    let got = provider.until("alice", 2).await;
    assert_eq!(payload(&got[1]).seq, morning);
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        notified(&provider, "alice").await,
        vec![mentioned, morning],
        "the muted mention, the message without one and the one at night did not notify"
    );
}

/// A push service that answers slowly holds up only its own notifications: the others go
/// out meanwhile (each send is a task of its own).
#[tokio::test]
async fn a_slow_push_service_does_not_hold_up_other_notifications() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = push_server(dir.path()).await;
    let bob = bob_and_offline(&s, &provider, &["alice", "dave"]).await;
    provider.answer_after("dave", 201, None, 1, 6.0).await;
    let to_dave = natter_sdk::ConversationId(bob.client.direct("dave").await.unwrap().conversation_id);
    let to_alice = natter_sdk::ConversationId(bob.client.direct("alice").await.unwrap().conversation_id);
    bob.client.send(to_dave, "slowly").await.unwrap();
    provider.until_seen("dave", 1, false).await;
    // Dave's push service is still thinking; alice's notification goes out meanwhile.
    let seq = bob.client.send(to_alice, "promptly").await.unwrap().seq.0;
    let got = provider.until("alice", 1).await;
    assert_eq!(payload(&got[0]).seq, seq);
    assert_eq!(
        provider.received("dave").await[0].status,
        None,
        "dave's answer is still held back"
    );
    assert_eq!(
        provider.until("dave", 1).await[0].status,
        Some(201),
        "and then it comes"
    );
}
