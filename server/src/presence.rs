//! Presence (PROTOCOL.md §5.11): online / away / offline per user over all their devices,
//! from heartbeats; last seen; and coalesced updates to the user's contacts (the members of
//! their direct conversations and groups — channels do not make contacts).
//!
//! A device counts until its connection closes cleanly or it misses two heartbeats. Changes
//! are collected and published at most once per flush tick per user, so a flapping
//! connection cannot flood anyone. It never touches the conversation log.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_protocol::codec::encode_frame;
use natter_protocol::pb::{self, PresenceState as State};
use natter_protocol::{DeviceId, UserId};

use crate::handlers::Ctx;
use crate::shard::now_ms;
use crate::store::{PresenceRecord, Store, StoreError};

/// How often pending changes are published (the coalescing window).
const FLUSH_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct UserPresence {
    username: String,
    /// Live connections: (device, connection) → (state, last heartbeat).
    devices: HashMap<(DeviceId, u64), (State, Instant)>,
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
    heartbeat: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<UserId, UserPresence>,
    dirty: HashSet<UserId>,
}

impl Presence {
    /// A tracker expecting a heartbeat every `heartbeat`.
    pub fn new(heartbeat: Duration) -> Self {
        Presence {
            inner: Arc::new(Mutex::new(Inner::default())),
            heartbeat,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().expect("presence lock"))
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
            u.devices.insert((device, conn), (State::Online, Instant::now()));
            u.connected_since_flush = true;
            i.dirty.insert(user);
        });
    }

    /// A heartbeat (with the device's chosen state).
    pub fn heartbeat(&self, user: UserId, device: DeviceId, conn: u64, state: State) {
        let state = if state == State::Away {
            State::Away
        } else {
            State::Online
        };
        self.with(|i| {
            if let Some(u) = i.users.get_mut(&user) {
                u.devices.insert((device, conn), (state, Instant::now()));
                i.dirty.insert(user);
            }
        });
    }

    /// The connection closed. A clean close counts at once; otherwise the device stays
    /// until its heartbeats are missed (it may come back by resume).
    pub fn disconnected(&self, user: UserId, device: DeviceId, conn: u64, clean: bool) {
        if clean {
            self.with(|i| {
                if let Some(u) = i.users.get_mut(&user) {
                    u.devices.remove(&(device, conn));
                    i.dirty.insert(user);
                }
            });
        }
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
            Some(u) => update(user, u),
            None => pb::PresenceUpdate {
                user_id: user.0,
                state: State::Offline as i32,
                ..Default::default()
            },
        })
    }

    /// Drop devices that missed two heartbeats; return users whose state changed, and the
    /// records of those who went offline (to persist their last seen).
    fn expire_and_take_changes(&self) -> (Vec<pb::PresenceUpdate>, Vec<(UserId, PresenceRecord)>) {
        let limit = self.heartbeat * 2;
        self.with(|i| {
            for (user, u) in i.users.iter_mut() {
                let before = u.devices.len();
                u.devices.retain(|_, (_, beat)| beat.elapsed() <= limit);
                if u.devices.len() != before {
                    i.dirty.insert(*user);
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
                    u.last_seen_ms = now_ms();
                    offline.push((
                        user,
                        PresenceRecord {
                            hide_last_seen: u.hide_last_seen,
                            last_seen_ms: u.last_seen_ms,
                        },
                    ));
                }
                u.published = Some(state);
                changes.push(update(user, u));
            }
            (changes, offline)
        })
    }

    /// Run forever: expire devices and publish coalesced changes to contacts.
    /// Holds the server only weakly, so it never keeps a stopped server alive.
    pub async fn run(self, shared: std::sync::Weak<crate::conn::Shared>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else { return };
            let ctx = &shared.ctx;
            let (changes, offline) = self.expire_and_take_changes();
            for (user, rec) in offline {
                if let Err(e) = ctx.store.put_presence_record(user, rec).await {
                    tracing::warn!(%user, error = %e, "presence: last seen not saved");
                }
            }
            for mut change in changes {
                let user = UserId(change.user_id);
                if let Some(cluster) = &ctx.cluster {
                    // Other nodes learn this node's view from the directory; contacts hear
                    // the user's best state over every node (offline here is not offline
                    // if a phone is still online on another node).
                    if let Err(e) = cluster.attach(user, change.state()).await {
                        tracing::warn!(%user, error = %e, "presence: directory update failed");
                    }
                    change = cluster.merge_presence(change).await;
                }
                let contacts = match contacts(ctx, user).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%user, error = %e, "presence: contacts lookup failed");
                        continue;
                    }
                };
                let frame = pb::Frame {
                    kind: Some(pb::frame::Kind::Signal(pb::Signal {
                        kind: Some(pb::signal::Kind::Presence(change)),
                    })),
                };
                ctx.hub.signal(&contacts, encode_frame(&frame));
            }
        }
    }
}

fn update(user: UserId, u: &UserPresence) -> pb::PresenceUpdate {
    let state = u.published.unwrap_or_else(|| u.state());
    let last_seen_ms = if u.hide_last_seen {
        0
    } else if state == State::Offline {
        u.last_seen_ms
    } else {
        now_ms()
    };
    pb::PresenceUpdate {
        user_id: user.0,
        username: u.username.clone(),
        state: state as i32,
        last_seen_ms,
    }
}

/// The members of the user's direct conversations and groups, the user excluded.
pub async fn contacts(ctx: &Ctx, user: UserId) -> Result<Vec<UserId>, natter_protocol::ServerError> {
    let mut out = HashSet::new();
    for conv in ctx.store.user_conversations(user).await? {
        match ctx.shards.view(conv, user).await {
            Ok(v) if v.meta.kind != pb::ConversationKind::Channel as i32 => {
                out.extend(v.members.iter().map(|m| m.user))
            }
            _ => {}
        }
    }
    out.remove(&user);
    Ok(out.into_iter().collect())
}
