//! Issue 3 over real QUIC on loopback: edits, deletes and reactions as ordered conversation
//! events — on every device, after a restart, through resume and cursor sync — and their
//! typed errors.
mod common;

use common::*;
use natter_protocol::pb::{self, request::Op, ErrorCode};
use natter_protocol::timeline::Timeline;
use natter_sdk::{ClientEvent, ConversationId, HistoryAnchor, RequestError, Seq, UserId};

/// Fold every event of `conv` a device receives until seq `upto`.
async fn fold(d: &mut Device, conv: ConversationId, upto: u64) -> (Vec<u64>, Timeline) {
    let evs = events_upto(&mut d.events, conv, upto).await;
    let mut t = Timeline::new();
    evs.iter().for_each(|e| t.apply(e));
    (evs.iter().map(|e| e.seq).collect(), t)
}

/// The script: m1 (2), m2 (3), edit m1 (4), 👍 bob (5), ❤️ alice (6), 👍 off (7), 🎉 bob (8),
/// delete m2 (9). `between` runs after the first half.
async fn script(alice: &Device, bob: &Device, dm: ConversationId, between: impl std::future::Future<Output = ()>) {
    let m1 = alice.client.send(dm, "m1").await.unwrap().seq;
    let m2 = alice.client.send(dm, "m2").await.unwrap().seq;
    alice.client.edit(dm, m1, "m1 edited").await.unwrap();
    bob.client.react(dm, m1, "👍", false).await.unwrap();
    between.await;
    alice.client.react(dm, m1, "❤️", false).await.unwrap();
    bob.client.react(dm, m1, "👍", true).await.unwrap();
    bob.client.react(dm, m1, "🎉", false).await.unwrap();
    alice.client.delete_message(dm, m2).await.unwrap();
}

fn check(t: &Timeline, alice: UserId, bob: UserId) {
    let m1 = t.get(Seq(2)).expect("m1");
    assert_eq!((m1.text.as_str(), m1.edited, m1.deleted), ("m1 edited", true, false));
    let reactions: Vec<(String, Vec<UserId>)> = m1
        .reactions
        .iter()
        .map(|(e, u)| (e.clone(), u.iter().copied().collect()))
        .collect();
    assert_eq!(
        reactions,
        vec![("❤️".to_string(), vec![alice]), ("🎉".to_string(), vec![bob])]
    );
    let m2 = t.get(Seq(3)).expect("m2");
    assert!(m2.deleted && m2.text.is_empty());
}

async fn ids(d: &Device) -> (UserId, UserId) {
    let members = d.client.members(ConversationId(dm_id(d).await)).await.unwrap();
    let id = |n: &str| UserId(members.iter().find(|m| m.username == n).unwrap().user_id);
    (id("alice"), id("bob"))
}

async fn dm_id(d: &Device) -> u64 {
    d.client.direct("bob").await.unwrap().conversation_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_and_reactions_reach_every_device_in_order_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let addr = s.addr;
    let mut a1 = user(&s, "alice").await;
    let mut a2 = device(s.addr, &s.fingerprint, "alice", false).await;
    let mut b1 = user(&s, "bob").await;
    let dm = ConversationId(dm_id(&a1).await);
    let (alice, bob) = ids(&a1).await;
    script(&a1, &b1, dm, async {}).await;
    let mut views = Vec::new();
    for d in [&mut a1, &mut a2, &mut b1] {
        views.push(fold(d, dm, 9).await);
    }
    assert_eq!(views[0].0, (1..=9).collect::<Vec<_>>());
    for v in &views {
        assert_eq!(v, &views[0], "every device folds the same events to the same messages");
        check(&v.1, alice, bob);
    }

    // After a restart the log (and so the fold) is the same.
    s.shutdown().await;
    let s = restart(dir.path(), addr).await;
    let page = a1.client.history(dm, HistoryAnchor::After(Seq(0)), 200).await.unwrap();
    let mut t = Timeline::new();
    page.events.iter().for_each(|e| t.apply(e));
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    check(&t, alice, bob);
    assert_eq!(t, views[0].1);
    s.shutdown().await;
}

async fn replay_case(resume_window_secs: u32) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.resume_window_secs = resume_window_secs;
    let s = natter_server::start(&cfg).await.unwrap();
    let a = user(&s, "alice").await;
    let mut b = user(&s, "bob").await;
    let dm = ConversationId(dm_id(&a).await);
    let (alice, bob) = ids(&a).await;
    // Bob drops in the middle of the script; the rest reaches him on reconnect.
    script(&a, &b, dm, async { b.client.reconnect() }).await;
    let mut resumed = None;
    let mut seqs = Vec::new();
    let mut t = Timeline::new();
    while seqs.last() != Some(&9) || resumed.is_none() {
        match wait_for(&mut b.events, |e| {
            matches!(e, ClientEvent::Connected { .. } | ClientEvent::Event(_)).then(|| e.clone())
        })
        .await
        {
            ClientEvent::Connected { resumed: r, .. } => resumed = Some(r),
            ClientEvent::Event(e) if e.conversation_id == dm.0 => {
                seqs.push(e.seq);
                t.apply(&e);
            }
            _ => {}
        }
    }
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>(), "every event once, in order");
    check(&t, alice, bob);
    s.shutdown().await;
    resumed.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_changes_are_replayed_on_resume() {
    assert!(replay_case(120).await, "inside the window: resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_changes_arrive_by_cursor_sync_after_the_window() {
    assert!(!replay_case(0).await, "past the window: cursor sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_message_changes_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let a = user(&s, "alice").await;
    let b = user(&s, "bob").await;
    let dm = ConversationId(dm_id(&a).await);
    let m1 = a.client.send(dm, "mine").await.unwrap().seq;
    let code = |r: Result<Seq, natter_sdk::ClientError>| r.unwrap_err().code();

    assert_eq!(
        code(b.client.edit(dm, m1, "not yours").await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(b.client.delete_message(dm, m1).await),
        Some(ErrorCode::Forbidden),
        "no moderators in a DM"
    );
    assert_eq!(
        code(a.client.react(dm, Seq(1), "👍", false).await),
        Some(ErrorCode::NotFound),
        "seq 1 is not a message"
    );
    assert_eq!(code(a.client.edit(dm, Seq(99), "x").await), Some(ErrorCode::NotFound));
    b.client.react(dm, m1, "👍", false).await.unwrap();
    assert_eq!(
        code(b.client.react(dm, m1, "👍", false).await),
        Some(ErrorCode::Conflict)
    );
    assert_eq!(
        code(b.client.react(dm, m1, "🎉", true).await),
        Some(ErrorCode::NotFound)
    );
    // The SDK refuses a non-emoji before sending...
    let local = b.client.react(dm, m1, "ok", false).await.unwrap_err();
    assert!(
        matches!(local, natter_sdk::ClientError::Request(RequestError::Invalid(_))),
        "{local:?}"
    );
    // ...and the server refuses it too, and anything over the length limit.
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.login("bob").await;
    for bad in ["ok", "👍x", &"👍".repeat(9)] {
        let op = Op::React(pb::React {
            conversation_id: dm.0,
            target_seq: m1.0,
            emoji: bad.into(),
            remove: false,
        });
        assert_eq!(error_code(&raw.request(op).await), ErrorCode::BadRequest, "{bad:?}");
    }
    let long = Op::Edit(pb::EditMessage {
        conversation_id: dm.0,
        target_seq: m1.0,
        text: "x".repeat(100_001),
    });
    assert_eq!(error_code(&raw.request(long).await), ErrorCode::TextTooLong);
    // A non-member can do none of it.
    let m = user(&s, "mallory").await;
    assert_eq!(
        code(m.client.react(dm, m1, "👍", false).await),
        Some(ErrorCode::NotMember)
    );
    // Deleted messages take no more changes.
    a.client.delete_message(dm, m1).await.unwrap();
    assert_eq!(code(a.client.edit(dm, m1, "again").await), Some(ErrorCode::NotFound));
    s.shutdown().await;
}
