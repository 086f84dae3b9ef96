//! Unit tests of presence on a fake clock: states over devices, connections that count
//! without heartbeats, the linger after an unclean end, last seen, privacy and coalescing.
use std::sync::Arc;
use std::time::Duration;

use natter_protocol::pb::{self, PresenceState as State};
use natter_protocol::{DeviceId, UserId};

use super::Presence;
use crate::clock::{Clock, FakeClock};
use crate::store::{MemoryStore, PresenceRecord, Store};

const BEAT: Duration = Duration::from_secs(10);
const U: UserId = UserId(1);
const PHONE: DeviceId = DeviceId(10);
const LAPTOP: DeviceId = DeviceId(11);

fn presence() -> (Presence, FakeClock) {
    let clock = FakeClock::new();
    (Presence::with_clock(BEAT, Arc::new(clock.clone())), clock)
}

fn states(changes: &[pb::PresenceUpdate]) -> Vec<(u64, State)> {
    changes.iter().map(|c| (c.user_id, c.state())).collect()
}

#[test]
fn a_connected_device_makes_its_user_online_once() {
    let (p, _) = presence();
    p.connected(U, "ann", PHONE, 1);
    let (changes, offline) = p.expire_and_take_changes();
    assert_eq!(states(&changes), vec![(1, State::Online)]);
    assert_eq!(changes[0].username, "ann");
    assert!(offline.is_empty());
    assert!(
        p.expire_and_take_changes().0.is_empty(),
        "nothing new, nothing published"
    );
}

#[test]
fn an_unclean_end_lingers_one_interval_then_the_user_is_offline_with_last_seen() {
    let (p, clock) = presence();
    p.connected(U, "ann", PHONE, 1);
    p.expire_and_take_changes();
    clock.advance(BEAT * 5);
    p.disconnected(U, PHONE, 1, false);
    clock.advance(BEAT);
    assert!(p.expire_and_take_changes().0.is_empty(), "the linger is still running");
    clock.advance(Duration::from_millis(1));
    let (changes, offline) = p.expire_and_take_changes();
    assert_eq!(states(&changes), vec![(1, State::Offline)]);
    assert_eq!(changes[0].last_seen_ms, clock.now_ms());
    assert_eq!(
        offline,
        vec![(
            U,
            PresenceRecord {
                hide_last_seen: false,
                last_seen_ms: clock.now_ms()
            }
        )]
    );
}

#[test]
fn a_live_connection_counts_without_any_heartbeat() {
    let (p, clock) = presence();
    p.connected(U, "ann", PHONE, 1);
    p.expire_and_take_changes();
    for _ in 0..5 {
        clock.advance(BEAT * 10);
        assert!(p.expire_and_take_changes().0.is_empty());
    }
    assert_eq!(p.get(U).state(), State::Online);
}

#[test]
fn a_heartbeat_that_repeats_the_state_changes_nothing() {
    let (p, clock) = presence();
    p.connected(U, "ann", PHONE, 1);
    p.expire_and_take_changes();
    clock.advance(BEAT);
    p.heartbeat(U, PHONE, 1, State::Online);
    assert!(p.expire_and_take_changes().0.is_empty(), "nothing to publish");
    p.heartbeat(U, PHONE, 1, State::Away);
    assert_eq!(states(&p.expire_and_take_changes().0), vec![(1, State::Away)]);
}

#[test]
fn a_device_that_resumes_within_the_linger_never_goes_offline() {
    let (p, clock) = presence();
    p.connected(U, "ann", PHONE, 1);
    p.expire_and_take_changes();
    p.disconnected(U, PHONE, 1, false);
    clock.advance(BEAT / 2);
    p.connected(U, "ann", PHONE, 2);
    clock.advance(BEAT * 2);
    assert!(p.expire_and_take_changes().0.is_empty(), "online all along");
    assert_eq!(p.get(U).state(), State::Online);
}

#[test]
fn a_user_is_online_if_any_device_is_and_away_only_if_all_are() {
    let (p, _) = presence();
    p.connected(U, "ann", PHONE, 1);
    p.connected(U, "ann", LAPTOP, 2);
    p.heartbeat(U, PHONE, 1, State::Away);
    assert_eq!(p.get(U).state(), State::Online);
    p.heartbeat(U, LAPTOP, 2, State::Away);
    assert_eq!(p.get(U).state(), State::Away);
    // A client cannot claim "offline" while connected: it counts as online.
    p.heartbeat(U, LAPTOP, 2, State::Offline);
    assert_eq!(p.get(U).state(), State::Online);
}

#[test]
fn a_clean_close_counts_at_once_an_unclean_one_after_the_heartbeats() {
    let (p, clock) = presence();
    p.connected(U, "ann", PHONE, 1);
    p.connected(U, "ann", LAPTOP, 2);
    p.expire_and_take_changes();
    p.disconnected(U, LAPTOP, 2, false);
    p.disconnected(U, PHONE, 1, true);
    assert_eq!(p.get(U).state(), State::Online, "the laptop may still resume");
    clock.advance(BEAT + Duration::from_millis(1));
    let (changes, _) = p.expire_and_take_changes();
    assert_eq!(states(&changes), vec![(1, State::Offline)]);
}

#[test]
fn a_session_shorter_than_a_flush_tick_still_sets_last_seen() {
    let (p, clock) = presence();
    p.connected(U, "ann", PHONE, 1);
    p.disconnected(U, PHONE, 1, true);
    let (changes, offline) = p.expire_and_take_changes();
    assert_eq!(states(&changes), vec![(1, State::Offline)]);
    assert_eq!(offline[0].1.last_seen_ms, clock.now_ms());
}

#[test]
fn flapping_within_a_tick_publishes_nothing() {
    let (p, _) = presence();
    p.connected(U, "ann", PHONE, 1);
    p.expire_and_take_changes();
    p.disconnected(U, PHONE, 1, true);
    p.connected(U, "ann", PHONE, 2);
    assert!(p.expire_and_take_changes().0.is_empty(), "still online: no update");
}

#[test]
fn hidden_last_seen_shows_as_zero() {
    let (p, clock) = presence();
    p.connected(U, "ann", PHONE, 1);
    let rec = p.set_hide_last_seen(U, true);
    assert!(rec.hide_last_seen);
    p.disconnected(U, PHONE, 1, true);
    clock.advance(Duration::from_secs(1));
    let (changes, offline) = p.expire_and_take_changes();
    assert_eq!(changes[0].last_seen_ms, 0);
    assert!(offline[0].1.hide_last_seen);
    assert_eq!(p.get(U).last_seen_ms, 0);
}

#[test]
fn an_unknown_user_is_offline() {
    let (p, _) = presence();
    let u = p.get(UserId(99));
    assert_eq!((u.state(), u.last_seen_ms), (State::Offline, 0));
}

#[tokio::test]
async fn last_seen_and_privacy_are_loaded_from_the_store_once() {
    let (p, _) = presence();
    let store = MemoryStore::new();
    let rec = PresenceRecord {
        hide_last_seen: false,
        last_seen_ms: 42,
    };
    store.put_presence_record(U, rec).await.unwrap();
    p.ensure_loaded(&store, U).await.unwrap();
    assert_eq!(p.get(U).last_seen_ms, 42);
    store
        .put_presence_record(
            U,
            PresenceRecord {
                hide_last_seen: true,
                last_seen_ms: 7,
            },
        )
        .await
        .unwrap();
    p.ensure_loaded(&store, U).await.unwrap();
    assert_eq!(p.get(U).last_seen_ms, 42, "memory wins once loaded");
}
