//! The session hub: who is connected where, live fan-out of committed events to each
//! member's sessions, and resume (PROTOCOL.md §7).
//!
//! A session is one authenticated device. It outlives its connection for the resume window:
//! every event routed to it goes into a bounded ring, so a client that reconnects with the
//! session's resume token gets exactly the events after its cursors replayed from memory.
//! Locks here are striped and held only to push into queues, never across I/O or awaits.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use natter_protocol::codec::encode_event_frame;
use natter_protocol::pb;
use natter_protocol::{ConversationId, DeviceId, Seq, UserId};
use tokio::sync::mpsc;

use crate::clock::{Clock, SystemClock};
use crate::security::auth::ResumeToken;

const STRIPES: usize = 16;

/// A committed event and its delivery-stream frame, encoded once when it is published and
/// shared by every recipient's queue, ring and stream writer (a group of 100 used to encode
/// each event 100 times). Derefs to the event.
#[derive(Debug, Clone)]
pub struct EventFrame {
    event: Arc<pb::ConversationEvent>,
    frame: Bytes,
}

impl EventFrame {
    pub fn new(event: Arc<pb::ConversationEvent>) -> Self {
        let frame = encode_event_frame(&event);
        EventFrame { event, frame }
    }

    /// The encoded `Frame { event }`, length prefix included.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

impl std::ops::Deref for EventFrame {
    type Target = pb::ConversationEvent;
    fn deref(&self) -> &pb::ConversationEvent {
        &self.event
    }
}

/// What the hub hands a connection's delivery task.
#[derive(Debug)]
pub enum Outbound {
    /// A committed event for this session, with its delivery frame.
    Event(EventFrame),
    /// An encoded `Signal` frame for the control stream.
    Signal(Bytes),
    /// An ephemeral frame: a datagram where the transport has them, else the control stream.
    Ephemeral(Arc<pb::Frame>),
    /// Close the connection with this code (token revoked, replaced), telling the client
    /// why first (PROTOCOL.md §8.2).
    Close(pb::ErrorCode, &'static str),
    /// Drop the connection as a network failure would: no reason sent (operators' and
    /// tests' "cut"; the session stays resumable).
    Cut,
}

/// What the hub hands the cluster bus for members connected to other nodes (see
/// [`crate::cluster`]); the same three kinds as local delivery.
#[derive(Debug)]
pub enum Forward {
    /// A committed event for these users.
    Event(Vec<UserId>, Arc<pb::ConversationEvent>),
    /// An encoded signal frame for these users.
    Signal(Vec<UserId>, Bytes),
    /// An ephemeral frame for these users' attached sessions, except the user's own.
    Ephemeral(Vec<UserId>, UserId, Arc<pb::Frame>),
}

/// Forwards queued for the cluster bus before the hub drops them (the bus is down): a
/// member on another node then catches up by gap fetch or cursor sync (guarantee 4).
const FORWARD_QUEUE: usize = 65_536;

/// Hub tunables.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Events kept per session for replay.
    pub ring_capacity: usize,
    /// How long a detached session can be resumed.
    pub resume_window: Duration,
}

/// One authenticated device's session.
#[derive(Debug)]
pub struct Session {
    /// Its user.
    pub user: UserId,
    /// Its device.
    pub device: DeviceId,
    state: Mutex<SessionState>,
}

/// What a session remembers for replay: events (filtered by the client's cursors on
/// resume) and signals (replayed as they are; they are idempotent cursor updates).
#[derive(Debug, Clone)]
enum RingItem {
    Event(EventFrame),
    Signal(Bytes),
}

#[derive(Debug)]
struct SessionState {
    ring: VecDeque<RingItem>,
    /// Per conversation, the highest seq that fell out of the ring.
    evicted: HashMap<ConversationId, Seq>,
    /// Per conversation, where it stood when the session began (the cursor sync's
    /// `last_seq`): the ring holds nothing before it, so a resume with an older cursor
    /// cannot be exact.
    floor: HashMap<ConversationId, Seq>,
    sink: Option<(u64, mpsc::Sender<Outbound>)>,
    detached_at: Option<Instant>,
    resume_token: ResumeToken,
}

impl SessionState {
    /// Let go of the attached connection (if any), starting the resume window; returns
    /// its sink so the caller can still tell it why.
    fn detach(&mut self, now: Instant) -> Option<mpsc::Sender<Outbound>> {
        let (_, tx) = self.sink.take()?;
        self.detached_at = Some(now);
        Some(tx)
    }
}

/// Shared handle to the hub.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    config: HubConfig,
    clock: Arc<dyn Clock>,
    users: Vec<Mutex<HashMap<UserId, Vec<Arc<Session>>>>>,
    tokens: Mutex<HashMap<ResumeToken, Arc<Session>>>,
    /// Sessions in the order they were detached, for the sweep: it visits only those whose
    /// resume window may have passed, not every session on the node (100,000 of them every
    /// 5 s was ~4 % of an idle node's CPU).
    detached: Mutex<VecDeque<Detached>>,
    /// Fault injection for tests: drop every live message event instead of delivering it.
    #[cfg(feature = "faults")]
    withhold_messages: std::sync::atomic::AtomicBool,
    /// The cluster bus, when this node is one of several.
    forward: std::sync::OnceLock<mpsc::Sender<Forward>>,
}

/// A session as it was detached: expired once `at` is a resume window old, unless it has
/// been resumed (or detached again, which queued it again) since.
#[derive(Debug)]
struct Detached {
    at: Instant,
    session: Weak<Session>,
}

fn stripe(user: UserId) -> usize {
    (user.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % STRIPES
}

impl Hub {
    /// An empty hub.
    pub fn new(config: HubConfig) -> Self {
        Hub::with_clock(config, Arc::new(SystemClock))
    }

    /// An empty hub on the given clock (tests pass a [`crate::clock::FakeClock`]).
    pub fn with_clock(config: HubConfig, clock: Arc<dyn Clock>) -> Self {
        let users = (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect();
        Hub {
            inner: Arc::new(HubInner {
                config,
                clock,
                users,
                tokens: Mutex::new(HashMap::new()),
                detached: Mutex::default(),
                #[cfg(feature = "faults")]
                withhold_messages: Default::default(),
                forward: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The configured resume window.
    pub fn resume_window(&self) -> Duration {
        self.inner.config.resume_window
    }

    fn channel(&self) -> (mpsc::Sender<Outbound>, mpsc::Receiver<Outbound>) {
        // Room for a full ring replay plus live traffic; a reader slower than this is cut
        // off (and resumes from the ring).
        mpsc::channel(self.inner.config.ring_capacity * 2 + 64)
    }

    /// Start a fresh session for a device on connection `conn_id`, replacing any earlier
    /// session of that device. Returns the session, its resume token and its outbound queue.
    pub fn open(
        &self,
        user: UserId,
        device: DeviceId,
        conn_id: u64,
    ) -> (Arc<Session>, ResumeToken, mpsc::Receiver<Outbound>) {
        // One connection per device (PROTOCOL.md §8.2): a newer authentication of the same
        // device ends the older connection with CONFLICT, its reason first.
        self.close_device(user, device, Some(pb::ErrorCode::Conflict));
        let (tx, rx) = self.channel();
        let token = ResumeToken::generate();
        let session = Arc::new(Session {
            user,
            device,
            state: Mutex::new(SessionState {
                ring: VecDeque::new(),
                evicted: HashMap::new(),
                floor: HashMap::new(),
                sink: Some((conn_id, tx)),
                detached_at: None,
                resume_token: token.clone(),
            }),
        });
        self.inner.users[stripe(user)]
            .lock()
            .expect("hub lock")
            .entry(user)
            .or_default()
            .push(session.clone());
        self.inner
            .tokens
            .lock()
            .expect("hub lock")
            .insert(token.clone(), session.clone());
        (session, token, rx)
    }

    /// Where the session's conversations stood when it began (from its cursor sync): a
    /// later resume whose cursors are older than that is refused (PROTOCOL.md §7.2).
    pub fn set_floor(&self, session: &Session, floor: impl IntoIterator<Item = (ConversationId, Seq)>) {
        let mut st = session.state.lock().expect("session lock");
        for (conv, seq) in floor {
            let f = st.floor.entry(conv).or_default();
            *f = (*f).max(seq);
        }
    }

    /// Resume the session named by `token` for this device on connection `conn_id`:
    /// replays every ring event after `cursors` into the new queue, then attaches it, under
    /// one lock so live events cannot overtake the replay. `None` when the token is
    /// unknown, expired, another device's, or the ring does not cover the cursors: events
    /// after a cursor fell out of it, or came before the session began.
    pub fn resume(
        &self,
        token: &str,
        user: UserId,
        device: DeviceId,
        cursors: &HashMap<ConversationId, Seq>,
        conn_id: u64,
    ) -> Option<(Arc<Session>, ResumeToken, mpsc::Receiver<Outbound>, usize)> {
        let session = self.inner.tokens.lock().expect("hub lock").get(token).cloned()?;
        if session.user != user || session.device != device {
            return None;
        }
        let (tx, rx) = self.channel();
        let new_token = ResumeToken::generate();
        let replayed = {
            let mut st = session.state.lock().expect("session lock");
            if st.resume_token.expose() != token {
                return None;
            }
            if let Some(at) = st.detached_at {
                if self.inner.clock.now().saturating_duration_since(at) > self.inner.config.resume_window {
                    return None;
                }
            }
            let cursor = |c: &ConversationId| cursors.get(c).copied().unwrap_or(Seq(0));
            if st.evicted.iter().any(|(c, s)| cursor(c) < *s) {
                return None;
            }
            if st.floor.iter().any(|(c, s)| cursor(c) < *s) {
                return None;
            }
            let mut n = 0;
            for item in &st.ring {
                let out = match item {
                    RingItem::Event(ev) if Seq(ev.seq) > cursor(&ConversationId(ev.conversation_id)) => {
                        Outbound::Event(ev.clone())
                    }
                    RingItem::Event(_) => continue,
                    RingItem::Signal(b) => Outbound::Signal(b.clone()),
                };
                tx.try_send(out).ok()?;
                n += 1;
            }
            if let Some((_, old)) = st.sink.replace((conn_id, tx)) {
                let _ = old.try_send(Outbound::Close(
                    pb::ErrorCode::Conflict,
                    "session resumed on another connection",
                ));
            }
            st.detached_at = None;
            st.resume_token = new_token.clone();
            n
        };
        let mut tokens = self.inner.tokens.lock().expect("hub lock");
        tokens.remove(token);
        tokens.insert(new_token.clone(), session.clone());
        Some((session, new_token, rx, replayed))
    }

    /// The connection `conn_id` of this session is gone; the session waits for a resume.
    pub fn detach(&self, session: &Arc<Session>, conn_id: u64) {
        let mut st = session.state.lock().expect("session lock");
        if st.sink.as_ref().is_some_and(|(id, _)| *id == conn_id) {
            self.detach_locked(session, &mut st);
        }
    }

    /// Detach `session` (its state locked as `st`) and queue it for the sweep; returns the
    /// sink it was attached to.
    fn detach_locked(&self, session: &Arc<Session>, st: &mut SessionState) -> Option<mpsc::Sender<Outbound>> {
        let at = self.inner.clock.now();
        let sink = st.detach(at)?;
        self.inner.detached.lock().expect("hub lock").push_back(Detached {
            at,
            session: Arc::downgrade(session),
        });
        Some(sink)
    }

    /// Start handing everything published here to the cluster bus as well (once).
    pub fn set_forwarder(&self) -> mpsc::Receiver<Forward> {
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        assert!(self.inner.forward.set(tx).is_ok(), "the hub has one forwarder");
        rx
    }

    fn forward(&self, f: impl FnOnce() -> Forward) {
        if let Some(tx) = self.inner.forward.get() {
            if tx.try_send(f()).is_err() {
                tracing::warn!("cluster bus queue full: a forward was dropped (members catch up by gap fetch)");
            }
        }
    }

    /// Fan a committed event out to every session of every recipient, here and (through
    /// the cluster bus) on other nodes.
    pub fn publish(&self, recipients: &[UserId], event: Arc<pb::ConversationEvent>) {
        self.forward(|| Forward::Event(recipients.to_vec(), event.clone()));
        self.push(recipients, RingItem::Event(EventFrame::new(event)), None);
    }

    /// Send an encoded signal frame to every session of every recipient (kept for replay).
    pub fn signal(&self, recipients: &[UserId], frame: Bytes) {
        self.forward(|| Forward::Signal(recipients.to_vec(), frame.clone()));
        self.push(recipients, RingItem::Signal(frame), None);
    }

    /// [`Hub::signal`] to every session of `user` but `device`'s, which caused it and knows
    /// (its own delivery ack: PROTOCOL.md §5.10). That device is connected here, so other
    /// nodes get the signal as usual.
    pub fn signal_other_devices(&self, user: UserId, device: DeviceId, frame: Bytes) {
        self.forward(|| Forward::Signal(vec![user], frame.clone()));
        self.push(&[user], RingItem::Signal(frame), Some(device));
    }

    /// Send an ephemeral frame (typing) to the attached sessions of the recipients, skipping
    /// sessions of `except`. Never kept: a detached session simply misses it.
    pub fn ephemeral(&self, recipients: &[UserId], except: UserId, frame: Arc<pb::Frame>) {
        self.forward(|| Forward::Ephemeral(recipients.to_vec(), except, frame.clone()));
        self.ephemeral_here(recipients, except, frame);
    }

    /// Deliver what another node forwarded, to this node's sessions only.
    pub fn deliver_forwarded(&self, f: Forward) {
        match f {
            Forward::Event(to, ev) => self.push(&to, RingItem::Event(EventFrame::new(ev)), None),
            Forward::Signal(to, frame) => self.push(&to, RingItem::Signal(frame), None),
            Forward::Ephemeral(to, except, frame) => self.ephemeral_here(&to, except, frame),
        }
    }

    /// Users with a session on this node (attached or resumable).
    pub fn local_users(&self) -> Vec<UserId> {
        self.inner
            .users
            .iter()
            .flat_map(|s| s.lock().expect("hub lock").keys().copied().collect::<Vec<_>>())
            .collect()
    }

    /// The (user, device) of every attached session on this node.
    pub fn local_devices(&self) -> Vec<(UserId, DeviceId)> {
        let mut out = Vec::new();
        for stripe in &self.inner.users {
            for (user, list) in stripe.lock().expect("hub lock").iter() {
                for s in list {
                    if s.state.lock().expect("session lock").sink.is_some() {
                        out.push((*user, s.device));
                    }
                }
            }
        }
        out
    }

    /// Send `frame` (a GoAway) to every attached session, not kept for replay: the node is
    /// draining and its clients should reconnect elsewhere.
    pub fn broadcast_control(&self, frame: Bytes) -> usize {
        let mut sent = 0;
        for stripe in &self.inner.users {
            let sessions: Vec<Arc<Session>> = stripe.lock().expect("hub lock").values().flatten().cloned().collect();
            for s in sessions {
                if let Some((_, tx)) = &s.state.lock().expect("session lock").sink {
                    if tx.try_send(Outbound::Signal(frame.clone())).is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        sent
    }

    fn ephemeral_here(&self, recipients: &[UserId], except: UserId, frame: Arc<pb::Frame>) {
        for user in recipients.iter().filter(|u| **u != except) {
            // Under the hub lock, as `push` does: no copy of the session list.
            let users = self.inner.users[stripe(*user)].lock().expect("hub lock");
            for s in users.get(user).into_iter().flatten() {
                let st = s.state.lock().expect("session lock");
                if let Some((_, tx)) = &st.sink {
                    let _ = tx.try_send(Outbound::Ephemeral(frame.clone()));
                }
            }
        }
    }

    /// Fault injection (feature `faults`, tests only): while set, committed messages are
    /// stored but never pushed to sessions — a server that fails to deliver.
    #[cfg(feature = "faults")]
    pub fn set_withhold_messages(&self, on: bool) {
        self.inner
            .withhold_messages
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Queue `item` for every session of every recipient, but `except`'s device.
    fn push(&self, recipients: &[UserId], item: RingItem, except: Option<DeviceId>) {
        #[cfg(feature = "faults")]
        if let RingItem::Event(ev) = &item {
            let message = matches!(ev.body, Some(pb::conversation_event::Body::Message(_)));
            if message && self.inner.withhold_messages.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
        }
        let cap = self.inner.config.ring_capacity;
        for user in recipients {
            // Under the hub lock (hub, then session, as everywhere): no copy of the
            // user's session list per recipient and event.
            let users = self.inner.users[stripe(*user)].lock().expect("hub lock");
            for s in users.get(user).into_iter().flatten() {
                if except == Some(s.device) {
                    continue;
                }
                let mut st = s.state.lock().expect("session lock");
                st.ring.push_back(item.clone());
                if st.ring.len() > cap {
                    if let Some(RingItem::Event(old)) = st.ring.pop_front() {
                        let e = st.evicted.entry(ConversationId(old.conversation_id)).or_default();
                        *e = (*e).max(Seq(old.seq));
                    }
                }
                let out = match &item {
                    RingItem::Event(ev) => Outbound::Event(ev.clone()),
                    RingItem::Signal(b) => Outbound::Signal(b.clone()),
                };
                let full = match &st.sink {
                    Some((_, tx)) => tx.try_send(out).is_err(),
                    None => false,
                };
                if full {
                    // Slow reader: cut the connection; the ring keeps what it missed.
                    self.detach_locked(s, &mut st);
                }
            }
        }
    }

    /// End a device's session (logout, token revoked, new login), closing its connection
    /// with `code` if given.
    pub fn close_device(&self, user: UserId, device: DeviceId, code: Option<pb::ErrorCode>) {
        let removed: Vec<Arc<Session>> = {
            let mut users = self.inner.users[stripe(user)].lock().expect("hub lock");
            let Some(list) = users.get_mut(&user) else { return };
            let (gone, keep) = list.drain(..).partition(|s| s.device == device);
            *list = keep;
            if list.is_empty() {
                users.remove(&user);
            }
            gone
        };
        self.forget(&removed, code);
    }

    /// Whether `device` of `user` has an attached session on this node.
    pub fn device_attached(&self, user: UserId, device: DeviceId) -> bool {
        let users = self.inner.users[stripe(user)].lock().expect("hub lock");
        users.get(&user).is_some_and(|list| {
            list.iter()
                .any(|s| s.device == device && s.state.lock().expect("session lock").sink.is_some())
        })
    }

    /// Attached sessions of `user` on devices other than `device`.
    pub fn attached_elsewhere(&self, user: UserId, device: DeviceId) -> usize {
        let users = self.inner.users[stripe(user)].lock().expect("hub lock");
        users.get(&user).map_or(0, |list| {
            list.iter()
                .filter(|s| s.device != device && s.state.lock().expect("session lock").sink.is_some())
                .count()
        })
    }

    /// Cut every connection of `user` as a network failure would: the sessions stay and can
    /// be resumed. Returns how many connections were cut.
    pub fn disconnect_user(&self, user: UserId) -> usize {
        let sessions: Vec<Arc<Session>> = {
            let users = self.inner.users[stripe(user)].lock().expect("hub lock");
            users.get(&user).cloned().unwrap_or_default()
        };
        let mut cut = 0;
        for s in sessions {
            let mut st = s.state.lock().expect("session lock");
            if let Some(tx) = self.detach_locked(&s, &mut st) {
                let _ = tx.try_send(Outbound::Cut);
                cut += 1;
            }
        }
        cut
    }

    fn forget(&self, sessions: &[Arc<Session>], code: Option<pb::ErrorCode>) {
        let mut tokens = self.inner.tokens.lock().expect("hub lock");
        for s in sessions {
            let mut st = s.state.lock().expect("session lock");
            tokens.remove(&st.resume_token);
            if let (Some((_, tx)), Some(code)) = (st.sink.take(), code) {
                let _ = tx.try_send(Outbound::Close(code, "session closed"));
            }
        }
    }

    /// Drop detached sessions whose resume window has passed. Visits only the sessions
    /// detached at least a window ago (in the order they were detached), not every session.
    pub fn sweep(&self) {
        let window = self.inner.config.resume_window;
        let now = self.inner.clock.now();
        let mut expired = Vec::new();
        loop {
            let d = {
                let mut queue = self.inner.detached.lock().expect("hub lock");
                match queue.front() {
                    Some(d) if now.saturating_duration_since(d.at) > window => queue.pop_front(),
                    _ => None,
                }
            };
            let Some(d) = d else { break };
            let Some(session) = d.session.upgrade() else {
                continue; // closed meanwhile (logout, a new login)
            };
            let user = session.user;
            let mut users = self.inner.users[stripe(user)].lock().expect("hub lock");
            // Still detached since then? (Resumed: live; detached again: queued again.)
            // Checked under the hub lock, so no resume can slip in before it is removed.
            if session.state.lock().expect("session lock").detached_at != Some(d.at) {
                continue;
            }
            if let Some(list) = users.get_mut(&user) {
                list.retain(|s| !Arc::ptr_eq(s, &session));
                if list.is_empty() {
                    users.remove(&user);
                }
            }
            drop(users);
            expired.push(session);
        }
        self.forget(&expired, None);
    }

    /// Connected (attached) sessions, for metrics and tests.
    pub fn attached_sessions(&self) -> usize {
        self.inner
            .users
            .iter()
            .map(|s| {
                s.lock()
                    .expect("hub lock")
                    .values()
                    .flatten()
                    .filter(|s| s.state.lock().expect("session lock").sink.is_some())
                    .count()
            })
            .sum()
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
