//! Unit tests of the hub: sessions, fan-out, resume and its window, on a fake clock.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use natter_protocol::pb;
use natter_protocol::{ConversationId, DeviceId, Seq, UserId};
use tokio::sync::mpsc;

use super::{Forward, Hub, HubConfig, Outbound};
use crate::clock::FakeClock;

const WINDOW: Duration = Duration::from_secs(120);

fn hub(ring: usize) -> (Hub, FakeClock) {
    let clock = FakeClock::new();
    let config = HubConfig {
        ring_capacity: ring,
        resume_window: WINDOW,
    };
    (Hub::with_clock(config, Arc::new(clock.clone())), clock)
}

fn ev(conv: u64, seq: u64) -> Arc<pb::ConversationEvent> {
    Arc::new(pb::ConversationEvent {
        conversation_id: conv,
        seq,
        ..Default::default()
    })
}

/// Every event seq queued on `rx` so far, in order; other items are skipped.
fn seqs(rx: &mut mpsc::Receiver<Outbound>) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        if let Outbound::Event(e) = item {
            out.push(e.seq);
        }
    }
    out
}

fn cursors(pairs: &[(u64, u64)]) -> HashMap<ConversationId, Seq> {
    pairs.iter().map(|(c, s)| (ConversationId(*c), Seq(*s))).collect()
}

const A: UserId = UserId(1);
const B: UserId = UserId(2);
const C: UserId = UserId(3);

fn sorted(mut users: Vec<UserId>) -> Vec<UserId> {
    users.sort_by_key(|u| u.0);
    users
}
const PHONE: DeviceId = DeviceId(10);
const LAPTOP: DeviceId = DeviceId(11);

#[test]
fn an_event_reaches_every_session_of_every_recipient_and_nobody_else() {
    let (hub, _) = hub(16);
    let (_, _, mut a_phone) = hub.open(A, PHONE, 1);
    let (_, _, mut a_laptop) = hub.open(A, LAPTOP, 2);
    let (_, _, mut b) = hub.open(B, DeviceId(20), 3);
    hub.publish(&[A], ev(5, 1));
    assert_eq!(seqs(&mut a_phone), vec![1]);
    assert_eq!(seqs(&mut a_laptop), vec![1]);
    assert_eq!(seqs(&mut b), Vec::<u64>::new());
}

#[test]
fn resume_replays_exactly_what_follows_the_cursors_in_order() {
    let (hub, _) = hub(16);
    let (session, token, _rx) = hub.open(A, PHONE, 1);
    for seq in 1..=4 {
        hub.publish(&[A], ev(5, seq));
    }
    hub.publish(&[A], ev(6, 1));
    hub.detach(&session, 1);
    let (_, new_token, mut rx, replayed) = hub
        .resume(token.expose(), A, PHONE, &cursors(&[(5, 2)]), 2)
        .expect("resumable");
    assert_eq!(replayed, 3);
    assert_eq!(seqs(&mut rx), vec![3, 4, 1]);
    assert_ne!(new_token, token, "each resume hands out a new token");
    assert!(
        hub.resume(token.expose(), A, PHONE, &cursors(&[]), 3).is_none(),
        "the old token is spent"
    );
}

#[test]
fn a_token_resumes_only_its_own_device() {
    let (hub, _) = hub(16);
    let (session, token, _rx) = hub.open(A, PHONE, 1);
    hub.detach(&session, 1);
    assert!(hub.resume(token.expose(), A, LAPTOP, &cursors(&[]), 2).is_none());
    assert!(hub.resume(token.expose(), B, PHONE, &cursors(&[]), 2).is_none());
    assert!(hub.resume("rs_unknown", A, PHONE, &cursors(&[]), 2).is_none());
    assert!(hub.resume(token.expose(), A, PHONE, &cursors(&[]), 2).is_some());
}

#[test]
fn resume_works_until_the_window_closes_and_not_after() {
    let (hub, clock) = hub(16);
    let (session, token, _rx) = hub.open(A, PHONE, 1);
    hub.detach(&session, 1);
    clock.advance(WINDOW - Duration::from_secs(1));
    let (session, token2, _rx, _) = hub.resume(token.expose(), A, PHONE, &cursors(&[]), 2).expect("in time");
    hub.detach(&session, 2);
    clock.advance(WINDOW + Duration::from_millis(1));
    assert!(
        hub.resume(token2.expose(), A, PHONE, &cursors(&[]), 3).is_none(),
        "window passed"
    );
}

#[test]
fn resume_is_refused_when_the_ring_no_longer_covers_the_cursor() {
    let (hub, _) = hub(3);
    let (session, token, _rx) = hub.open(A, PHONE, 1);
    for seq in 1..=5 {
        hub.publish(&[A], ev(5, seq));
    }
    hub.detach(&session, 1);
    // Events 1 and 2 fell out of the ring: a client that saw only up to 1 cannot resume.
    assert!(hub.resume(token.expose(), A, PHONE, &cursors(&[(5, 1)]), 2).is_none());
    let (_, _, mut rx, _) = hub
        .resume(token.expose(), A, PHONE, &cursors(&[(5, 2)]), 2)
        .expect("covered");
    assert_eq!(seqs(&mut rx), vec![3, 4, 5]);
}

#[test]
fn resume_is_refused_when_the_cursors_predate_the_session() {
    // The session began with conversation 5 at seq 6 (its cursor sync) and saw 7 live.
    let (hub, _) = hub(16);
    let (session, token, _rx) = hub.open(A, PHONE, 1);
    hub.set_floor(&session, [(ConversationId(5), Seq(6))]);
    hub.publish(&[A], ev(5, 7));
    hub.detach(&session, 1);
    // The connection dropped during that first sync: the client still has cursor 2. The
    // ring cannot replay 3..=6, so there is no exact resume (the client does a cursor sync).
    assert!(hub.resume(token.expose(), A, PHONE, &cursors(&[(5, 2)]), 2).is_none());
    assert!(
        hub.resume(token.expose(), A, PHONE, &cursors(&[]), 2).is_none(),
        "no cursor is seq 0"
    );
    // Having fetched up to 6, it resumes and gets exactly 7.
    let (_, _, mut rx, _) = hub
        .resume(token.expose(), A, PHONE, &cursors(&[(5, 6)]), 2)
        .expect("covered from the floor on");
    assert_eq!(seqs(&mut rx), vec![7]);
}

#[test]
fn a_slow_reader_is_detached_and_keeps_what_it_missed_for_resume() {
    let (hub, _) = hub(8);
    let (_session, token, mut rx) = hub.open(A, PHONE, 1);
    // The queue holds ring * 2 + 64 items; one more detaches the session.
    let queue = 8 * 2 + 64;
    for seq in 1..=(queue as u64 + 1) {
        hub.publish(&[A], ev(5, seq));
    }
    assert_eq!(hub.attached_sessions(), 0, "cut off");
    let delivered = seqs(&mut rx);
    assert_eq!(delivered.len(), queue);
    let last = *delivered.last().unwrap();
    let (_, _, mut rx, _) = hub
        .resume(token.expose(), A, PHONE, &cursors(&[(5, last)]), 2)
        .expect("the ring covers the rest");
    assert_eq!(seqs(&mut rx), vec![last + 1]);
}

#[test]
fn signals_are_replayed_on_resume_ephemeral_frames_are_not() {
    let (hub, _) = hub(16);
    let (session, token, _rx) = hub.open(A, PHONE, 1);
    hub.detach(&session, 1);
    hub.signal(&[A], Bytes::from_static(b"receipt"));
    hub.ephemeral(&[A], B, Arc::new(pb::Frame::default()));
    let (_, _, mut rx, replayed) = hub.resume(token.expose(), A, PHONE, &cursors(&[]), 2).unwrap();
    assert_eq!(replayed, 1);
    assert!(matches!(rx.try_recv(), Ok(Outbound::Signal(b)) if &b[..] == b"receipt"));
    assert!(rx.try_recv().is_err(), "nothing else");
}

#[test]
fn ephemeral_frames_skip_the_sender_and_detached_sessions() {
    let (hub, _) = hub(16);
    let (_, _, mut a) = hub.open(A, PHONE, 1);
    let (b_session, _, mut b) = hub.open(B, DeviceId(20), 2);
    let (_, _, mut b2) = hub.open(B, DeviceId(21), 3);
    hub.detach(&b_session, 2);
    hub.ephemeral(&[A, B], A, Arc::new(pb::Frame::default()));
    assert!(a.try_recv().is_err(), "not to the sender");
    assert!(b.try_recv().is_err(), "not to a detached session");
    assert!(matches!(b2.try_recv(), Ok(Outbound::Ephemeral(_))));
}

#[test]
fn logging_a_device_in_again_replaces_its_session() {
    let (hub, _) = hub(16);
    let (_, old_token, mut old) = hub.open(A, PHONE, 1);
    let (_, _, mut new) = hub.open(A, PHONE, 2);
    hub.publish(&[A], ev(5, 1));
    assert_eq!(seqs(&mut old), Vec::<u64>::new());
    assert_eq!(seqs(&mut new), vec![1]);
    assert!(hub.resume(old_token.expose(), A, PHONE, &cursors(&[]), 3).is_none());
}

#[test]
fn closing_a_device_tells_its_connection_why_and_voids_its_token() {
    let (hub, _) = hub(16);
    let (_, token, mut rx) = hub.open(A, PHONE, 1);
    let (_, _, mut laptop) = hub.open(A, LAPTOP, 2);
    hub.close_device(A, PHONE, Some(pb::ErrorCode::Unauthenticated));
    assert!(matches!(
        rx.try_recv(),
        Ok(Outbound::Close(pb::ErrorCode::Unauthenticated, _))
    ));
    assert!(hub.resume(token.expose(), A, PHONE, &cursors(&[]), 3).is_none());
    assert!(laptop.try_recv().is_err(), "the other device is untouched");
    assert_eq!(hub.attached_sessions(), 1);
}

#[test]
fn a_cut_user_can_resume_every_session() {
    let (hub, _) = hub(16);
    let (_, t1, _r1) = hub.open(A, PHONE, 1);
    let (_, t2, _r2) = hub.open(A, LAPTOP, 2);
    assert_eq!(hub.disconnect_user(A), 2);
    assert_eq!(hub.attached_sessions(), 0);
    assert!(hub.resume(t1.expose(), A, PHONE, &cursors(&[]), 3).is_some());
    assert!(hub.resume(t2.expose(), A, LAPTOP, &cursors(&[]), 4).is_some());
}

#[test]
fn sweep_drops_expired_sessions_and_keeps_attached_ones() {
    let (hub, clock) = hub(16);
    let (gone, _, _r1) = hub.open(A, PHONE, 1);
    let (_, _, _r2) = hub.open(B, DeviceId(20), 2);
    hub.detach(&gone, 1);
    clock.advance(WINDOW + Duration::from_secs(1));
    hub.sweep();
    assert_eq!(hub.local_users(), vec![B]);
}

#[test]
fn sweep_counts_the_window_from_the_last_detach_and_spares_resumed_sessions() {
    let (hub, clock) = hub(16);
    // Detached, resumed, detached again half a window later: the first detach's window
    // passing must not expire it; the second's must.
    let (s, t, _r) = hub.open(A, PHONE, 1);
    hub.detach(&s, 1);
    // Cut as a network failure would (another way in): expires like any detach.
    let (_, ct, _r5) = hub.open(C, DeviceId(30), 5);
    assert_eq!(hub.disconnect_user(C), 1);
    clock.advance(WINDOW / 2);
    let (s, t, _r2, _) = hub.resume(t.expose(), A, PHONE, &cursors(&[]), 2).unwrap();
    hub.detach(&s, 2);
    // Detached, then resumed and still attached: never expires.
    let (live, lt, _r3) = hub.open(B, DeviceId(20), 3);
    hub.detach(&live, 3);
    let (_, _, _r4, _) = hub.resume(lt.expose(), B, DeviceId(20), &cursors(&[]), 4).unwrap();

    clock.advance(WINDOW / 2 + Duration::from_secs(1));
    hub.sweep();
    assert_eq!(
        sorted(hub.local_users()),
        vec![A, B],
        "C's window has passed, A's second has not"
    );
    assert!(hub.resume(ct.expose(), C, DeviceId(30), &cursors(&[]), 6).is_none());

    clock.advance(WINDOW / 2);
    hub.sweep();
    assert_eq!(
        hub.local_users(),
        vec![B],
        "A's second window has passed; B is attached"
    );
    assert!(hub.resume(t.expose(), A, PHONE, &cursors(&[]), 7).is_none());
    assert_eq!(hub.attached_sessions(), 1);
}

#[test]
fn a_detach_from_a_stale_connection_does_not_detach_the_new_one() {
    let (hub, _) = hub(16);
    let (session, token, _rx) = hub.open(A, PHONE, 1);
    hub.detach(&session, 1);
    let (session, _, _rx2, _) = hub.resume(token.expose(), A, PHONE, &cursors(&[]), 2).unwrap();
    hub.detach(&session, 1);
    assert_eq!(hub.attached_sessions(), 1, "connection 1's late detach is ignored");
}

#[test]
fn with_a_forwarder_every_fan_out_also_goes_to_the_bus() {
    let (hub, _) = hub(16);
    let mut bus = hub.set_forwarder();
    hub.publish(&[A, B], ev(5, 1));
    hub.signal(&[B], Bytes::from_static(b"s"));
    assert!(matches!(bus.try_recv(), Ok(Forward::Event(to, e)) if to == vec![A, B] && e.seq == 1));
    assert!(matches!(bus.try_recv(), Ok(Forward::Signal(to, _)) if to == vec![B]));
    // What another node forwards is delivered here but not forwarded again.
    let (_, _, mut rx) = hub.open(A, PHONE, 1);
    hub.deliver_forwarded(Forward::Event(vec![A], ev(5, 2)));
    assert_eq!(seqs(&mut rx), vec![2]);
    assert!(bus.try_recv().is_err());
}

#[test]
fn an_event_is_encoded_once_for_all_its_recipients_and_their_replays() {
    let (hub, clock) = hub(16);
    let (a, token, mut rx_a) = hub.open(A, PHONE, 1);
    let (_, _, mut rx_b) = hub.open(B, PHONE, 2);
    let mut event = (*ev(5, 1)).clone();
    event.sender_user_id = A.0;
    hub.publish(&[A, B], Arc::new(event.clone()));
    let frame = |rx: &mut mpsc::Receiver<Outbound>| match rx.try_recv() {
        Ok(Outbound::Event(e)) => e.frame().clone(),
        other => panic!("expected an event, got {other:?}"),
    };
    let (fa, fb) = (frame(&mut rx_a), frame(&mut rx_b));
    // The frame is the event, length-prefixed, as the client decodes it.
    let mut decoder = natter_protocol::codec::FrameDecoder::new(1 << 20);
    decoder.push(&fa);
    let decoded = decoder.next_frame().expect("decodes").expect("one whole frame");
    assert_eq!(decoded.kind, Some(pb::frame::Kind::Event(event)));
    // Both recipients (and the replay below) share one buffer: no per-recipient encoding.
    assert_eq!(fa.as_ptr(), fb.as_ptr());
    hub.detach(&a, 1);
    clock.advance(Duration::from_secs(1));
    let (_, _, mut replay, n) = hub.resume(token.expose(), A, PHONE, &cursors(&[]), 3).expect("resumes");
    assert_eq!(n, 1);
    assert_eq!(frame(&mut replay).as_ptr(), fa.as_ptr());
}
