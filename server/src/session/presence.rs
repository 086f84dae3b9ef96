//! Presence (PROTOCOL.md §5.11): online / away / offline per user over all their devices,
//! from their connections; last seen; and coalesced updates to the user's contacts (the
//! members of their direct conversations and groups — channels do not make contacts).
//!
//! A device counts while its connection lives (every transport drops a connection silent
//! for the idle timeout), and for one heartbeat interval after a connection ended without a
//! close (it may resume). Heartbeats only carry the device's state, so an idle connection
//! costs presence nothing; each flush tick visits only what changed and the lingering
//! devices that are due. Changes are published at most once per flush tick per user, so a
//! flapping connection cannot flood anyone. It never touches the conversation log.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_protocol::pb::{self, PresenceState as State};
use natter_protocol::{DeviceId, UserId};

use crate::clock::{Clock, SystemClock};
use crate::store::{PresenceRecord, Store, StoreError};

/// How often pending changes are published (the coalescing window).
const FLUSH_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct UserPresence {
    username: String,
    /// Connections: (device, connection) → (state, when it stops counting: `None` while
    /// the connection lives, the end of its linger once it ended without a close).
    devices: HashMap<(DeviceId, u64), (State, Option<Instant>)>,
    /// What contacts were last told.
    published: Option<State>,
    last_seen_ms: u64,
    hide_last_seen: bool,
    /// A device connected since the last flush (it may already be gone again: a session
    /// shorter than a flush tick still sets last seen).
    connected_since_flush: bool,
}

impl UserPresence {
    fn state(&self) -> State {
        let states = self.devices.values().map(|(s, _)| *s);
        if states.clone().any(|s| s == State::Online) {
            State::Online
        } else if states.clone().any(|s| s == State::Away) {
            State::Away
        } else {
            State::Offline
        }
    }
}

/// Shared presence tracker.
#[derive(Clone, Debug)]
pub struct Presence {
    inner: Arc<Mutex<Inner>>,
    /// How long a device whose connection ended without a close still counts.
    linger: Duration,
    clock: Arc<dyn Clock>,
    /// Something changed or lingers: the flush loop wakes if it was parked.
    changed: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<UserId, UserPresence>,
    dirty: HashSet<UserId>,
    /// Devices whose connection ended without a close, by when they stop counting.
    lingering: BTreeSet<(Instant, UserId, DeviceId, u64)>,
}

impl Presence {
    /// A tracker where a connection that ended without a close counts for `linger` more
    /// (the heartbeat interval).
    pub fn new(linger: Duration) -> Self {
        Presence::with_clock(linger, Arc::new(SystemClock))
    }

    /// A tracker on the given clock (tests pass a [`crate::clock::FakeClock`]).
    pub fn with_clock(linger: Duration, clock: Arc<dyn Clock>) -> Self {
        Presence {
            inner: Arc::new(Mutex::new(Inner::default())),
            linger,
            clock,
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Run `f` on the state; wake the flush loop if it left something to publish or expire.
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut inner = self.inner.lock().expect("presence lock");
        let r = f(&mut inner);
        if !inner.dirty.is_empty() || !inner.lingering.is_empty() {
            self.changed.notify_one();
        }
        r
    }

    /// Nothing to publish and nobody lingering: the flush loop may park.
    fn idle(&self) -> bool {
        let inner = self.inner.lock().expect("presence lock");
        inner.dirty.is_empty() && inner.lingering.is_empty()
    }

    /// Load the user's persisted settings and last seen, unless already in memory.
    pub async fn ensure_loaded(&self, store: &dyn Store, user: UserId) -> Result<(), StoreError> {
        if self.with(|i| i.users.contains_key(&user)) {
            return Ok(());
        }
        let rec = store.presence_record(user).await?;
        self.with(|i| {
            let u = i.users.entry(user).or_default();
            if u.last_seen_ms == 0 {
                u.last_seen_ms = rec.last_seen_ms;
                u.hide_last_seen = rec.hide_last_seen;
            }
        });
        Ok(())
    }

    /// A device connected (authenticated) on connection `conn`.
    pub fn connected(&self, user: UserId, username: &str, device: DeviceId, conn: u64) {
        self.with(|i| {
            let u = i.users.entry(user).or_default();
            u.username = username.to_string();
            u.devices.insert((device, conn), (State::Online, None));
            u.connected_since_flush = true;
            i.dirty.insert(user);
        });
    }

    /// A heartbeat: the device's chosen state (nothing to do unless it changed).
    pub fn heartbeat(&self, user: UserId, device: DeviceId, conn: u64, state: State) {
        let state = if state == State::Away {
            State::Away
        } else {
            State::Online
        };
        self.with(|i| {
            let Some(u) = i.users.get_mut(&user) else { return };
            if let Some((s, None)) = u.devices.get_mut(&(device, conn)) {
                if *s != state {
                    *s = state;
                    i.dirty.insert(user);
                }
            }
        });
    }

    /// The connection ended. A clean close counts at once; otherwise the device stays for
    /// the linger (it may come back by resume, on another connection).
    pub fn disconnected(&self, user: UserId, device: DeviceId, conn: u64, clean: bool) {
        let until = self.clock.now() + self.linger;
        self.with(|i| {
            let Some(u) = i.users.get_mut(&user) else { return };
            if clean {
                u.devices.remove(&(device, conn));
                i.dirty.insert(user);
            } else if let Some((_, end @ None)) = u.devices.get_mut(&(device, conn)) {
                *end = Some(until);
                i.lingering.insert((until, user, device, conn));
            }
        });
    }

    /// Hide or show this user's last-seen time; returns the record to persist.
    pub fn set_hide_last_seen(&self, user: UserId, hide: bool) -> PresenceRecord {
        self.with(|i| {
            let u = i.users.entry(user).or_default();
            u.hide_last_seen = hide;
            let rec = PresenceRecord {
                hide_last_seen: hide,
                last_seen_ms: u.last_seen_ms,
            };
            i.dirty.insert(user);
            rec
        })
    }

    /// A user's presence as others see it.
    pub fn get(&self, user: UserId) -> pb::PresenceUpdate {
        self.with(|i| match i.users.get(&user) {
            Some(u) => update(user, u, self.clock.now_ms()),
            None => pb::PresenceUpdate {
                user_id: user.0,
                state: State::Offline as i32,
                ..Default::default()
            },
        })
    }

    /// Drop lingering devices whose time is up; return users whose state changed, and the
    /// records of those who went offline (to persist their last seen).
    fn expire_and_take_changes(&self) -> (Vec<pb::PresenceUpdate>, Vec<(UserId, PresenceRecord)>) {
        let (now, now_ms) = (self.clock.now(), self.clock.now_ms());
        self.with(|i| {
            while let Some(&(until, user, device, conn)) = i.lingering.first() {
                if until >= now {
                    break;
                }
                i.lingering.pop_first();
                let Some(u) = i.users.get_mut(&user) else { continue };
                if u.devices
                    .get(&(device, conn))
                    .is_some_and(|(_, end)| *end == Some(until))
                {
                    u.devices.remove(&(device, conn));
                    i.dirty.insert(user);
                }
            }
            let dirty: Vec<UserId> = i.dirty.drain().collect();
            let mut changes = Vec::new();
            let mut offline = Vec::new();
            for user in dirty {
                let Some(u) = i.users.get_mut(&user) else { continue };
                let state = u.state();
                let was_connected = std::mem::take(&mut u.connected_since_flush);
                if u.published == Some(state) {
                    continue;
                }
                if state == State::Offline && (u.published.is_some() || was_connected) {
                    u.last_seen_ms = now_ms;
                    offline.push((
                        user,
                        PresenceRecord {
                            hide_last_seen: u.hide_last_seen,
                            last_seen_ms: u.last_seen_ms,
                        },
                    ));
                }
                u.published = Some(state);
                changes.push(update(user, u, now_ms));
            }
            (changes, offline)
        })
    }

    /// Run until the outlet reports the server gone: every flush tick, expire devices and
    /// hand the coalesced changes to `outlet` (which saves last seen and tells contacts).
    pub async fn run(self, outlet: impl PresenceOutlet) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tick.tick().await;
            let (changes, offline) = self.expire_and_take_changes();
            if !outlet.flush(changes, offline).await {
                return;
            }
            // Idle: park until a change (which then waits one tick, so changes still
            // coalesce), rather than wake five times a second for nothing.
            if self.idle() {
                self.changed.notified().await;
                tick.reset();
            }
        }
    }
}

/// Where presence changes go: the layers above presence (contacts are conversation
/// members; other nodes are the cluster) implement this, so presence imports none of them.
#[async_trait::async_trait]
pub trait PresenceOutlet: Send + Sync + 'static {
    /// Save `offline` users' last seen and publish `changes` to each user's contacts.
    /// Returns false once the server has stopped (presence's loop then ends).
    async fn flush(&self, changes: Vec<pb::PresenceUpdate>, offline: Vec<(UserId, PresenceRecord)>) -> bool;
}

fn update(user: UserId, u: &UserPresence, now_ms: u64) -> pb::PresenceUpdate {
    let state = u.published.unwrap_or_else(|| u.state());
    let last_seen_ms = if u.hide_last_seen {
        0
    } else if state == State::Offline {
        u.last_seen_ms
    } else {
        now_ms
    };
    pb::PresenceUpdate {
        user_id: user.0,
        username: u.username.clone(),
        state: state as i32,
        last_seen_ms,
    }
}

#[cfg(test)]
#[path = "presence_tests.rs"]
mod tests;
