//! Issue 3 over real QUIC on loopback: edits, deletes and reactions as ordered conversation
//! events — on every device, after a restart, through resume and cursor sync — and their
//! typed errors.
use crate::common;

use common::*;
use natter_protocol::pb::{self, request::Op, ErrorCode};
use natter_protocol::timeline::Timeline;
use natter_sdk::{ClientEvent, ConversationId, HistoryAnchor, RequestError, Seq, UserId};

/// Fold every event of `conv` a device receives until seq `upto`.
async fn fold(d: &mut Device, conv: ConversationId, upto: u64) -> (Vec<u64>, Timeline) {
    let evs = events_upto(&mut d.events, conv, upto).await;
    let mut t = Timeline::new();
    evs.iter().for_each(|e| {
        t.apply(&e.clone().into());
    });
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
    page.events.iter().for_each(|e| {
        t.apply(&e.clone().into());
    });
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
                t.apply(&e.into());
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

/// Wait until `f` holds for a receipt event on this device.
async fn receipt(d: &mut Device, mut f: impl FnMut(UserId, Seq, Seq) -> bool) {
    wait_for(&mut d.events, |e| match e {
        ClientEvent::Receipt {
            user_id,
            delivered_seq,
            read_seq,
            ..
        } => f(*user_id, *delivered_seq, *read_seq).then_some(()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_message_goes_sent_delivered_read_on_both_sender_devices() {
    use natter_sdk::DeliveryState::*;
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let mut a1 = user(&s, "alice").await;
    let mut a2 = device(s.addr, &s.fingerprint, "alice", false).await;
    let b = user(&s, "bob").await;
    let dm = ConversationId(dm_id(&a1).await);
    let (_, bob) = ids(&a1).await;
    // Bob is offline: the message is only sent.
    b.client.shutdown().await;
    let seq = a1.client.send(dm, "are you there?").await.unwrap().seq;
    let st = a1.client.message_status(dm, seq).await.unwrap().unwrap();
    assert_eq!((st.state, st.delivered, st.read, st.recipients), (Sent, 0, 0, 1));
    // Bob's device comes back and receives it: delivered, on both of alice's devices.
    let (bc, _bev) = natter_sdk::Client::connect(client_config(s.addr, &s.fingerprint, Some(b.token.clone()))).unwrap();
    receipt(&mut a1, |u, d, _| u == bob && d >= seq).await;
    assert_eq!(
        a1.client.message_status(dm, seq).await.unwrap().unwrap().state,
        Delivered
    );
    receipt(&mut a2, |u, d, _| u == bob && d >= seq).await;
    assert_eq!(
        a2.client.message_status(dm, seq).await.unwrap().unwrap().state,
        Delivered
    );
    // Bob reads it.
    bc.mark_read(dm, seq).await.unwrap();
    for a in [&mut a1, &mut a2] {
        receipt(a, |u, _, r| u == bob && r >= seq).await;
        let st = a.client.message_status(dm, seq).await.unwrap().unwrap();
        assert_eq!((st.state, st.delivered, st.read), (Read, 1, 1));
    }
    // Marking beyond the last seq is refused.
    let err = bc.mark_read(dm, Seq(seq.0 + 5)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    bc.shutdown().await;
    s.shutdown().await;
}

/// Read a raw connection's control stream until `responses` responses and a
/// `ReceiptUpdate` for `user` for which `last` holds have arrived; that user's updates in
/// order (the last included).
async fn receipts_until(
    raw: &mut Raw,
    user: u64,
    mut responses: usize,
    last: impl Fn(&pb::ReceiptUpdate) -> bool,
) -> Vec<pb::ReceiptUpdate> {
    let mut seen = Vec::new();
    let mut done = false;
    while !done || responses > 0 {
        match raw.read().await.expect("the control stream stays open").kind {
            Some(pb::frame::Kind::Signal(pb::Signal {
                kind: Some(pb::signal::Kind::Receipt(r)),
            })) if r.user_id == user => {
                done |= last(&r);
                seen.push(r);
            }
            Some(pb::frame::Kind::Response(r)) => {
                assert!(matches!(r.result, Some(pb::response::Result::Done(_))), "{r:?}");
                responses -= 1;
            }
            _ => continue,
        }
    }
    seen
}

/// PROTOCOL.md §5.10: a delivery ack's own `Done` is the acking device's word that the
/// delivered cursor moved; the server sends the `ReceiptUpdate` to the user's other devices
/// only. A read mark, which carries the unread count, goes to every device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_ack_is_echoed_to_the_users_other_devices_not_back_to_the_acking_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let a = user(&s, "alice").await;
    let b = user(&s, "bob").await;
    let dm = dm_id(&a).await;
    let (_, bob) = ids(&a).await;
    b.client.shutdown().await;
    let (mut acking, mut other) = (
        Raw::hello(s.addr, &s.fingerprint).await,
        Raw::hello(s.addr, &s.fingerprint).await,
    );
    acking.login("bob").await;
    other.login("bob").await;
    let seq = a.client.send(ConversationId(dm), "hi").await.unwrap().seq.0;
    let ack = Op::MarkDelivered(pb::MarkDelivered {
        conversation_id: dm,
        seq,
    });
    let read = Op::MarkRead(pb::MarkRead {
        conversation_id: dm,
        seq,
    });
    for (id, op) in [(100, ack), (101, read)] {
        acking
            .frame(pb::frame::Kind::Request(pb::Request { id, op: Some(op) }))
            .await;
    }
    // The acking device: only the read mark's update (it carries the count, last_seq > 0);
    // a delivered-only one would have come before it.
    let mine = receipts_until(&mut acking, bob.0, 2, |r| r.last_seq > 0).await;
    assert_eq!(
        mine.len(),
        1,
        "no delivered-only update back to the acking device: {mine:?}"
    );
    assert_eq!((mine[0].delivered_seq, mine[0].read_seq), (seq, seq));
    // The other device: the delivered move, then the read one.
    let theirs = receipts_until(&mut other, bob.0, 0, |r| r.last_seq > 0).await;
    let moves: Vec<(u64, u64, u64)> = theirs
        .iter()
        .map(|r| (r.delivered_seq, r.read_seq, r.last_seq))
        .collect();
    assert_eq!(moves, vec![(seq, 0, 0), (seq, seq, seq)]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_read_counts_move_as_each_member_reads() {
    use natter_sdk::DeliveryState::*;
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let mut a1 = user(&s, "alice").await;
    let mut a2 = device(s.addr, &s.fingerprint, "alice", false).await;
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(user(&s, &format!("member{i}")).await);
    }
    let names = ["member0", "member1", "member2", "member3"];
    let g = ConversationId(a1.client.create_group("five", &names).await.unwrap().conversation_id);
    let seq = a1.client.send(g, "hello all").await.unwrap().seq;
    // Everyone is online: every device acknowledges delivery by itself.
    let mut delivered = std::collections::HashSet::new();
    while delivered.len() < 4 {
        let u = wait_for(&mut a1.events, |e| match e {
            ClientEvent::Receipt {
                user_id, delivered_seq, ..
            } if *delivered_seq >= seq => Some(*user_id),
            _ => None,
        })
        .await;
        delivered.insert(u);
    }
    let st = a1.client.message_status(g, seq).await.unwrap().unwrap();
    assert_eq!((st.state, st.delivered, st.read, st.recipients), (Delivered, 4, 0, 4));
    for (k, m) in members.iter().enumerate() {
        m.client.mark_read(g, seq).await.unwrap();
        receipt(&mut a1, |_, _, r| r >= seq).await;
        let st = a1.client.message_status(g, seq).await.unwrap().unwrap();
        assert_eq!(st.read, k as u32 + 1, "one more reader");
        assert_eq!(st.state, if k == 3 { Read } else { Delivered });
    }
    // The sender's second device ends at the same statuses.
    let mut readers = std::collections::HashSet::new();
    while readers.len() < 4 {
        let u = wait_for(&mut a2.events, |e| match e {
            ClientEvent::Receipt { user_id, read_seq, .. } if *read_seq >= seq => Some(*user_id),
            _ => None,
        })
        .await;
        readers.insert(u);
    }
    let st = a2.client.message_status(g, seq).await.unwrap().unwrap();
    assert_eq!((st.state, st.delivered, st.read, st.recipients), (Read, 4, 4, 4));
    s.shutdown().await;
}

async fn unread_is(d: &mut Device, conv: ConversationId, count: u32) -> Seq {
    wait_for(&mut d.events, |e| match e {
        ClientEvent::Unread {
            conversation_id,
            unread_count,
            read_seq,
        } if *conversation_id == conv && *unread_count == count => Some(*read_seq),
        _ => None,
    })
    .await
}

async fn unread_sync_case(resume_window_secs: u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.resume_window_secs = resume_window_secs;
    let s = natter_server::start(&cfg).await.unwrap();
    let a = user(&s, "alice").await;
    let b1 = user(&s, "bob").await;
    let mut b2 = device(s.addr, &s.fingerprint, "bob", false).await;
    let dm = ConversationId(dm_id(&a).await);
    let mut last = Seq(0);
    for i in 0..3 {
        last = a.client.send(dm, &format!("unread {i}")).await.unwrap().seq;
    }
    unread_is(&mut b2, dm, 3).await;
    // Reading on device 1 clears device 2.
    let started = std::time::Instant::now();
    b1.client.mark_read(dm, last).await.unwrap();
    assert_eq!(unread_is(&mut b2, dm, 0).await, last);
    eprintln!("read-state sync to the other device took {:?}", started.elapsed());
    assert_eq!(b2.client.unread(dm).await.unwrap(), Some(0));
    // Device 2 drops; meanwhile two more arrive and device 1 reads the first.
    b2.client.reconnect();
    let m4 = a.client.send(dm, "four").await.unwrap().seq;
    a.client.send(dm, "five").await.unwrap();
    b1.client.mark_read(dm, m4).await.unwrap();
    // After the reconnect (resumed or synced) device 2 shows exactly one unread.
    let mut connected = false;
    loop {
        match wait_for(&mut b2.events, |e| {
            matches!(e, ClientEvent::Connected { .. } | ClientEvent::Unread { .. }).then(|| e.clone())
        })
        .await
        {
            ClientEvent::Connected { .. } => connected = true,
            ClientEvent::Unread {
                conversation_id,
                unread_count: 1,
                read_seq,
            } if conversation_id == dm && read_seq == m4 && connected => break,
            _ => {}
        }
    }
    assert_eq!(b2.client.unread(dm).await.unwrap(), Some(1));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_on_one_device_clears_unread_on_another_and_survives_resume() {
    unread_sync_case(120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_are_right_after_a_cursor_sync() {
    unread_sync_case(0).await;
}

fn live_config(dir: &std::path::Path) -> natter_server::Config {
    let mut cfg = config(dir);
    // A device lost without a close: its connection is dropped after 4 s of silence, and
    // it stays present for 300 ms more.
    cfg.idle_timeout_secs = 4;
    cfg.heartbeat_interval_ms = 300;
    cfg.typing_ttl_ms = 600;
    cfg
}

/// The next presence update of `who` in state `state` on this device.
async fn presence_of(d: &mut Device, who: UserId, state: pb::PresenceState) -> pb::PresenceUpdate {
    wait_for(&mut d.events, |e| match e {
        ClientEvent::Presence(p) if p.user_id == who.0 && p.state == state as i32 => Some(p.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_see_presence_and_last_seen_and_nobody_else_does() {
    use pb::PresenceState::{Offline, Online};
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&live_config(dir.path())).await.unwrap();
    let mut alice = user(&s, "alice").await;
    let b = user(&s, "bob").await;
    let mut carol = user(&s, "carol").await;
    let dm = ConversationId(dm_id(&alice).await);
    let (_, bob) = ids(&alice).await;
    // A clean close is offline at once.
    b.client.shutdown().await;
    presence_of(&mut alice, bob, Offline).await;

    // Bob comes online in another process (the CLI), which is then killed: no clean close.
    let profile = dir.path().join("bob-cli");
    std::fs::create_dir_all(&profile).unwrap();
    let json = serde_json::json!({"server": s.addr, "fingerprint": s.fingerprint, "token": b.token, "username": "bob"});
    std::fs::write(profile.join("profile.json"), json.to_string()).unwrap();
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(natter_cli())
        .arg("--profile")
        .arg(&profile)
        .arg("listen")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    presence_of(&mut alice, bob, Online).await;
    eprintln!("contact saw online after {:?}", started.elapsed());
    let killed = std::time::Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let off = presence_of(&mut alice, bob, Offline).await;
    assert_eq!(off.state, Offline as i32);
    assert!(off.last_seen_ms > 0, "last seen is set");
    eprintln!(
        "contact saw offline {:?} after the kill (idle timeout 4 s, linger 300 ms)",
        killed.elapsed()
    );

    // Carol shares no conversation with bob: she cannot ask, and was never told.
    assert!(carol.client.presence(&[bob]).await.unwrap().is_empty());
    let marker = ConversationId(alice.client.direct("carol").await.unwrap().conversation_id);
    alice.client.send(marker, "marker").await.unwrap();
    loop {
        match wait_for(&mut carol.events, |e| {
            matches!(e, ClientEvent::Presence(_) | ClientEvent::Event(_)).then(|| e.clone())
        })
        .await
        {
            ClientEvent::Presence(p) => assert_ne!(p.user_id, bob.0, "a non-contact never sees bob's presence"),
            ClientEvent::Event(e) if e.conversation_id == marker.0 && e.seq == 2 => break,
            _ => {}
        }
    }
    // Hidden last seen.
    let (bc, _ev) = natter_sdk::Client::connect(client_config(s.addr, &s.fingerprint, Some(b.token.clone()))).unwrap();
    bc.set_hide_last_seen(true).await.unwrap();
    presence_of(&mut alice, bob, Online).await;
    let p = alice.client.presence(&[bob]).await.unwrap();
    assert_eq!((p.len(), p[0].last_seen_ms), (1, 0), "hidden last seen reads as 0");
    bc.shutdown().await;
    let off = presence_of(&mut alice, bob, Offline).await;
    assert_eq!((off.state, off.last_seen_ms), (Offline as i32, 0));
    let _ = dm;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_connected_members_only_expires_and_is_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&live_config(dir.path())).await.unwrap();
    let mut alice = user(&s, "alice").await;
    let b = user(&s, "bob").await;
    let mut mallory = user(&s, "mallory").await;
    let dm = ConversationId(dm_id(&alice).await);
    let (_, bob) = ids(&alice).await;

    b.client.typing(dm);
    let who = wait_for(&mut alice.events, |e| match e {
        ClientEvent::Typing {
            conversation_id,
            user_id,
            ..
        } if *conversation_id == dm => Some(*user_id),
        _ => None,
    })
    .await;
    assert_eq!(who, bob);
    // Not renewed: it expires by itself.
    let stopped = wait_for(&mut alice.events, |e| match e {
        ClientEvent::TypingStopped {
            conversation_id,
            user_id,
        } if *conversation_id == dm => Some(*user_id),
        _ => None,
    })
    .await;
    assert_eq!(stopped, bob);

    // A non-member typing into the DM gets a typed refusal and reaches nobody.
    mallory.client.typing(dm);
    let err = wait_for(&mut mallory.events, |e| match e {
        ClientEvent::TypingRejected { conversation_id, error } if *conversation_id == dm => Some(error.code),
        _ => None,
    })
    .await;
    assert_eq!(err, ErrorCode::NotMember);
    // ...and never sees the DM's typing: bob types again, then a marker reaches mallory.
    b.client.typing(dm);
    wait_for(&mut alice.events, |e| {
        matches!(e, ClientEvent::Typing { .. }).then_some(())
    })
    .await;
    let marker = ConversationId(alice.client.direct("mallory").await.unwrap().conversation_id);
    alice.client.send(marker, "marker").await.unwrap();
    loop {
        match wait_for(&mut mallory.events, |e| {
            matches!(e, ClientEvent::Typing { .. } | ClientEvent::Event(_)).then(|| e.clone())
        })
        .await
        {
            ClientEvent::Typing { conversation_id, .. } => assert_ne!(conversation_id, dm),
            ClientEvent::Event(e) if e.conversation_id == marker.0 && e.seq == 2 => break,
            _ => {}
        }
    }
    // Without datagrams (the control-stream fallback) the refusal is a typed error too.
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.login("mallory").await;
    let r = raw.request(Op::Typing(pb::Typing { conversation_id: dm.0 })).await;
    assert_eq!(error_code(&r), ErrorCode::NotMember);
    // Typing is never in history.
    let page = alice
        .client
        .history(dm, HistoryAnchor::After(Seq(0)), 200)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1, "only the creation event: {:?}", page.events);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_last_seen_and_last_seen_survive_a_server_restart() {
    use pb::PresenceState::Offline;
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&live_config(dir.path())).await.unwrap();
    let addr = s.addr;
    let mut alice = user(&s, "alice").await;
    let bob = user(&s, "bob").await;
    let carol = user(&s, "carol").await;
    alice.client.direct("bob").await.unwrap();
    alice.client.direct("carol").await.unwrap();
    bob.client.set_hide_last_seen(true).await.unwrap();
    let (bob_id, carol_id) = {
        let p = alice.client.conversations().await.unwrap();
        let id = |name: &str| p.iter().find(|c| c.name == name).unwrap().conversation_id;
        let uid = |conv: u64, name: &'static str| {
            let c = alice.client.clone();
            async move {
                let m = c.members(ConversationId(conv)).await.unwrap();
                UserId(m.iter().find(|m| m.username == name).unwrap().user_id)
            }
        };
        (uid(id("bob"), "bob").await, uid(id("carol"), "carol").await)
    };
    bob.client.shutdown().await;
    carol.client.shutdown().await;
    // Both go offline; their updates may come in either order.
    let mut offline = std::collections::HashMap::new();
    while offline.len() < 2 {
        let p = wait_for(&mut alice.events, |e| match e {
            ClientEvent::Presence(p) if p.state == Offline as i32 => Some(p.clone()),
            _ => None,
        })
        .await;
        offline.insert(p.user_id, p.last_seen_ms);
    }
    assert_eq!(offline[&bob_id.0], 0, "hidden");
    let seen = offline[&carol_id.0];
    assert!(seen > 0);

    s.shutdown().await;
    let s = restart(dir.path(), addr).await;
    wait_for(&mut alice.events, |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    let p = alice.client.presence(&[bob_id, carol_id]).await.unwrap();
    let of = |u: UserId| p.iter().find(|x| x.user_id == u.0).unwrap();
    assert_eq!(
        (of(bob_id).state, of(bob_id).last_seen_ms),
        (Offline as i32, 0),
        "still hidden after a restart"
    );
    assert_eq!(
        (of(carol_id).state, of(carol_id).last_seen_ms),
        (Offline as i32, seen),
        "last seen kept"
    );
    s.shutdown().await;
}

/// With production settings (a device lost without a close counts for the 60 s idle
/// timeout and a 25 s linger), a client that shuts down cleanly is offline for its contacts at once — well inside the 20 s wait here. The
/// SDK finishes its control stream and closes with code 0 in one go; either may arrive
/// first at the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_is_offline_without_waiting_for_heartbeats() {
    use pb::PresenceState::Offline;
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        assert!(
            cfg.heartbeat_interval_ms >= 10_000,
            "this test needs the production linger"
        );
        let s = natter_server::start(&cfg).await.unwrap();
        let mut alice = user(&s, "alice").await;
        let b = user(&s, "bob").await;
        let (_, bob) = ids(&alice).await;
        b.client.shutdown().await;
        presence_of(&mut alice, bob, Offline).await;
        s.shutdown().await;
    }
}
