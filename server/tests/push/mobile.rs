//! APNs and FCM (PROTOCOL.md §13.4) against the stand-in in `mobile_provider.py`: HTTPS with
//! a CA made by the test, HTTP/2 for APNs, provider tokens and OAuth checked, every body
//! decrypted with the independent `http_ece` as the phone would.
use natter_protocol::pb;
use prost::Message;

use super::common::push::{b64, MobileAccounts, Provider, Received};
use super::common::*;
use super::{go_offline, registered};

/// An APNs or FCM payload as the stand-in decrypted it: protobuf, padded to 2,048 bytes.
fn mobile_payload(r: &Received) -> pb::PushPayload {
    assert_eq!(r.problem, None, "the stand-in found a problem: {r:?}");
    let bytes = b64(r.payload.as_deref().expect("decrypted"));
    assert_eq!(bytes.len(), 2048, "every mobile payload has the same padded length");
    pb::PushPayload::decode(&bytes[..]).expect("a PushPayload")
}

async fn mobile_server(dir: &std::path::Path, accounts: &MobileAccounts) -> natter_server::RunningServer {
    let mut cfg = config(dir);
    accounts.apply(&mut cfg);
    natter_server::start(&cfg).await.expect("server starts")
}

/// `name` registered with a phone of `provider` at the stand-in, and offline.
async fn offline_phone(s: &natter_server::RunningServer, p: &Provider, name: &str, provider: pb::PushProvider) {
    drop(user(s, name).await);
    let r = registered(s, name, p.subscribe_mobile(name, provider).await).await;
    go_offline(s, r).await;
}

#[tokio::test]
async fn apns_and_fcm_phones_get_one_notification_per_burst_withdrawn_when_read_elsewhere() {
    let files = tempfile::tempdir().unwrap();
    let (p, accounts) = Provider::start_mobile(files.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = mobile_server(dir.path(), &accounts).await;
    let bob = user(&s, "bob").await;
    offline_phone(&s, &p, "alice", pb::PushProvider::Apns).await;
    offline_phone(&s, &p, "erin", pb::PushProvider::Fcm).await;
    offline_phone(&s, &p, "dave", pb::PushProvider::Fcm).await;
    drop(user(&s, "carol").await);
    let carol = registered(&s, "carol", p.subscribe_mobile("carol", pb::PushProvider::Apns).await).await;

    let trip = natter_sdk::ConversationId(
        bob.client
            .create_group("trip", &["alice", "erin", "carol", "dave"])
            .await
            .unwrap()
            .conversation_id,
    );
    let mut last = 0;
    for text in ["one", "two", "three"] {
        last = bob.client.send(trip, text).await.unwrap().seq.0;
    }
    let to_alice = p.until("alice", 1).await;
    let to_erin = p.until("erin", 1).await;
    for (got, http, urgency) in [(&to_alice, "2", "10"), (&to_erin, "2", "HIGH")] {
        assert_eq!(got.len(), 1, "one per burst: {got:?}");
        let n = mobile_payload(&got[0]);
        assert_eq!((n.conversation_id, n.seq), (trip.0, last), "the burst's newest");
        assert_eq!((n.sender_name.as_str(), n.preview.as_str()), ("bob", "three"));
        assert_eq!(n.conversation_title, "trip");
        assert!(!n.withdraw);
        assert_eq!(
            got[0].topic.as_deref(),
            Some(n.collapse_id.as_str()),
            "collapsed per conversation"
        );
        assert_eq!(got[0].urgency.as_deref(), Some(urgency));
        assert_eq!(got[0].http.as_deref(), Some(http), "HTTP/2 (ALPN)");
    }

    // The next burst: a new notification each, the same length on the wire.
    let fourth = bob.client.send(trip, "four").await.unwrap().seq.0;
    let a = p.until("alice", 2).await;
    let e = p.until("erin", 2).await;
    assert_eq!((mobile_payload(&a[1]).seq, mobile_payload(&e[1]).seq), (fourth, fourth));
    assert!(
        [a[1].length, e[0].length, e[1].length]
            .iter()
            .all(|l| *l == a[0].length),
        "every encrypted body has the same length"
    );
    assert!(p.received("carol").await.is_empty(), "an online phone gets none");
    // Tokens are reused: one OAuth token and one APNs provider token for all of it.
    let stats = p.stats().await;
    assert_eq!(stats["oauth_tokens"], 1, "{stats}");
    assert_eq!(stats["apns_tokens"].as_array().unwrap().len(), 1, "{stats}");

    // Alice reads on her laptop: her phone's notification is withdrawn by a background
    // push (nothing shown, the badge cleared). Erin's stays.
    let mut laptop = device(s.addr, &s.fingerprint, "alice", false).await;
    laptop.client.mark_read(trip, natter_sdk::Seq(fourth)).await.unwrap();
    let a = p.until("alice", 3).await;
    let w = mobile_payload(&a[2]);
    assert!(w.withdraw, "a withdrawal: {w:?}");
    assert_eq!(
        (w.collapse_id.as_str(), w.seq, w.badge),
        (format!("c{}", trip.0).as_str(), fourth, 0)
    );
    assert_eq!((w.preview.as_str(), w.event.len()), ("", 0), "it shows nothing");
    assert_eq!(a[2].length, a[0].length, "a withdrawal looks like any notification");
    // Reading again withdraws nothing more; the next message notifies again.
    laptop.client.mark_read(trip, natter_sdk::Seq(fourth)).await.unwrap();
    let fifth = bob.client.send(trip, "five").await.unwrap().seq.0;
    let a = p.until("alice", 4).await;
    assert_eq!((a.len(), mobile_payload(&a[3]).seq), (4, fifth));
    assert_eq!(p.until("erin", 3).await.len(), 3, "erin read nothing: hers stay");

    // APNs says alice's phone is gone, FCM says erin's is: both registrations are removed,
    // and the users' other devices hear of it.
    let mut erin_laptop = device(s.addr, &s.fingerprint, "erin", false).await;
    p.answer("alice", 410, None, 1).await;
    p.answer("erin", 404, None, 1).await;
    bob.client.send(trip, "six").await.unwrap();
    for (events, reason) in [
        (&mut laptop.events, "Unregistered"),
        (&mut erin_laptop.events, "UNREGISTERED"),
    ] {
        let removed = wait_for(events, |e| match e {
            natter_sdk::ClientEvent::PushRemoved(r) => Some(r.clone()),
            _ => None,
        })
        .await;
        assert_eq!(removed.reason, reason);
    }
    // Nothing more for either: dave's phone, in the same group, is the sync point.
    let seven = bob.client.send(trip, "seven").await.unwrap().seq.0;
    p.until_payload("dave", seven).await;
    assert_eq!(p.received("alice").await.len(), 5, "nothing after 410");
    assert_eq!(p.received("erin").await.len(), 4, "nothing after UNREGISTERED");
    drop(carol);
}

#[tokio::test]
async fn a_busy_or_babbling_push_service_is_retried_and_holds_up_no_one_else() {
    let files = tempfile::tempdir().unwrap();
    let (p, accounts) = Provider::start_mobile(files.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = mobile_server(dir.path(), &accounts).await;
    let bob = user(&s, "bob").await;
    offline_phone(&s, &p, "alice", pb::PushProvider::Apns).await;
    offline_phone(&s, &p, "erin", pb::PushProvider::Fcm).await;
    let to_alice = natter_sdk::ConversationId(bob.client.direct("alice").await.unwrap().conversation_id);
    let to_erin = natter_sdk::ConversationId(bob.client.direct("erin").await.unwrap().conversation_id);

    // APNs answers 503 with a 64 MiB body; FCM answers 429 with Retry-After: 2.
    p.answer_big("alice", 503, 1, 64).await;
    p.answer("erin", 429, Some(2), 1).await;
    let sa = bob.client.send(to_alice, "for alice").await.unwrap().seq.0;
    let se = bob.client.send(to_erin, "for erin").await.unwrap().seq.0;
    let t0 = std::time::Instant::now();
    let e = p.until("erin", 2).await;
    assert_eq!((e[0].status, e[1].status), (Some(429), Some(200)));
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(2),
        "retried after {:?}",
        t0.elapsed()
    );
    assert_eq!(mobile_payload(&e[1]).seq, se, "nothing lost");
    let a = p.until("alice", 2).await;
    assert_eq!((a[0].status, a[1].status), (Some(503), Some(200)));
    assert_eq!(mobile_payload(&a[1]).seq, sa, "nothing lost");
}

#[tokio::test]
async fn phones_register_with_well_formed_tokens_only_and_only_where_configured() {
    let files = tempfile::tempdir().unwrap();
    let (p, accounts) = Provider::start_mobile(files.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = mobile_server(dir.path(), &accounts).await;
    drop(user(&s, "alice").await);
    let mut r = Raw::hello(s.addr, &s.fingerprint).await;
    r.login("alice").await;
    let good = p.subscribe_mobile("alice", pb::PushProvider::Apns).await;
    let fcm = p.subscribe_mobile("alice-fcm", pb::PushProvider::Fcm).await;
    for (why, target) in [
        (
            "a path",
            pb::PushTarget {
                endpoint: "../../3/device/x".into(),
                ..good.clone()
            },
        ),
        (
            "short",
            pb::PushTarget {
                endpoint: "abcd".into(),
                ..good.clone()
            },
        ),
        (
            "topic",
            pb::PushTarget {
                apns_topic: "a b".into(),
                ..good.clone()
            },
        ),
        (
            "fcm path",
            pb::PushTarget {
                endpoint: "x/../../v1".into(),
                ..fcm.clone()
            },
        ),
        (
            "no keys",
            pb::PushTarget {
                p256dh: vec![],
                ..good.clone()
            },
        ),
    ] {
        let res = r
            .request(pb::request::Op::RegisterPush(pb::RegisterPush { target: Some(target) }))
            .await;
        assert_eq!(error_code(&res), pb::ErrorCode::PushTargetRejected, "{why}: {res:?}");
    }
    // A server without APNs or FCM accounts says so.
    let dir2 = tempfile::tempdir().unwrap();
    let plain = natter_server::start(&config(dir2.path())).await.unwrap();
    drop(user(&plain, "alice").await);
    let mut r2 = Raw::hello(plain.addr, &plain.fingerprint).await;
    r2.login("alice").await;
    for t in [good, fcm] {
        let res = r2
            .request(pb::request::Op::RegisterPush(pb::RegisterPush { target: Some(t) }))
            .await;
        assert_eq!(error_code(&res), pb::ErrorCode::BadRequest, "{res:?}");
    }
}
