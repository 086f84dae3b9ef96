//! The sans-IO client session: every SDK (native, FFI, WASM) and the fuzzers drive this one
//! state machine, so the client side of PROTOCOL.md is implemented exactly once.
//!
//! It owns the handshake, authentication and resume, request/response matching with
//! timeouts, the outbox of sends (client message ids, retry until the durable ack), and
//! exactly-once in-order delivery per conversation: dedup by `(conversation, seq)`, gap
//! detection and gap fetch, and cursor sync (PROTOCOL.md §6–§7).
//!
//! It does no I/O and reads no clock. Time comes in as [`Millis`] from any monotonic
//! source. The driver:
//! 1. feeds inputs: [`ClientSession::handle_connected`], [`ClientSession::handle_control_data`],
//!    [`ClientSession::handle_stream_data`], [`ClientSession::handle_stream_finished`],
//!    [`ClientSession::handle_disconnected`], [`ClientSession::handle_timeout`], and commands
//!    ([`ClientSession::send_message`], [`ClientSession::request`]);
//! 2. then drains outputs in any order: [`ClientSession::poll_transmit`] (bytes for the
//!    control stream), [`ClientSession::poll_event`] (for the app), and
//!    [`ClientSession::poll_timeout`] (when to call `handle_timeout` next).
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;

use crate::codec::{encode_frame, FrameDecoder, FrameError};
use crate::error::ServerError;
use crate::ids::{ClientMsgId, ConversationId, DeviceId, RequestId, Seq, UserId};
use crate::limits;
use crate::pb::{self, frame::Kind, request::Op, response::Result as Res};
use crate::validate::{self, ValidationError};

/// A point in time in milliseconds from an arbitrary, monotonic origin chosen by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// This instant plus `ms` milliseconds.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
}

/// The transport's name for one server-opened delivery stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey(pub u64);

/// Tunables of the session; the defaults suit interactive apps.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Sent in Hello for the server's logs.
    pub client_name: String,
    /// A request without a response after this long fails with [`RequestError::Timeout`]
    /// (sends are re-sent instead).
    pub request_timeout_ms: u64,
    /// Delay before re-sending a send that failed with a transient error.
    pub send_retry_ms: u64,
    /// For a conversation this client has never seen, how many of its newest events cursor
    /// sync fetches (older ones are for the app to page through history).
    pub backfill: u64,
    /// Events that arrive before authentication completes are held, up to this many.
    pub max_early_events: usize,
    /// Out-of-order events held per conversation while a gap is fetched.
    pub max_pending_per_conversation: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            client_name: concat!("natter-protocol/", env!("CARGO_PKG_VERSION")).into(),
            request_timeout_ms: 15_000,
            send_retry_ms: 1_000,
            backfill: 50,
            max_early_events: 10_000,
            max_pending_per_conversation: 10_000,
        }
    }
}

/// Where the session is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No transport. Sends and requests queue.
    Disconnected,
    /// Hello sent, waiting for Welcome.
    Handshaking,
    /// Welcome received and no access token: Register and Login may be sent.
    Unauthenticated,
    /// Authenticate sent.
    Authenticating,
    /// Authenticated: everything flows.
    Ready,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered with an error.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The connection dropped before the response arrived; the request may or may not
    /// have taken effect.
    #[error("connection lost before the response")]
    ConnectionLost,
    /// No response within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// Rejected locally before sending.
    #[error("invalid request: {0}")]
    Invalid(#[from] ValidationError),
}

/// A protocol violation by the server; the driver must close the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Bytes that are not frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The server chose a version this client does not speak.
    #[error("server chose unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// A frame that is not allowed where it arrived.
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
}

/// What the session tells the app.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The handshake completed.
    Welcomed {
        /// Negotiated version.
        version: u32,
        /// The server's limits.
        limits: pb::Limits,
    },
    /// Authenticated on a (re)connection (after Login or Authenticate).
    Connected {
        /// Who we are.
        user_id: UserId,
        /// Our username.
        username: String,
        /// This device.
        device_id: DeviceId,
        /// True if the previous session was resumed (no cursor sync needed).
        resumed: bool,
    },
    /// The transport went away; the driver reconnects (sends stay in the outbox).
    Disconnected {
        /// Why, for logs and UI.
        reason: String,
    },
    /// The access token was refused: the app must log in again.
    AuthFailed(ServerError),
    /// Cursor sync: every conversation the user is a member of.
    Conversations(Vec<pb::ConversationSummary>),
    /// A conversation event: exactly once, in seq order per conversation.
    Event(pb::ConversationEvent),
    /// A member's delivered/read cursors moved (drives message status).
    Receipt {
        /// Where.
        conversation_id: ConversationId,
        /// Whose.
        user_id: UserId,
        /// Everything up to here reached one of their devices.
        delivered_seq: Seq,
        /// Everything up to here is read.
        read_seq: Seq,
    },
    /// This user's unread count in a conversation changed (any of their devices).
    Unread {
        /// Where.
        conversation_id: ConversationId,
        /// The user's read cursor.
        read_seq: Seq,
        /// Messages from others after it.
        unread_count: u32,
    },
    /// A contact's presence changed.
    Presence(pb::PresenceUpdate),
    /// Someone started (or is still) typing.
    Typing {
        /// Where.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// Their username.
        username: String,
    },
    /// A typing indicator expired (not renewed in time).
    TypingStopped {
        /// Where.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
    },
    /// Our typing notice was refused.
    TypingRejected {
        /// Where.
        conversation_id: ConversationId,
        /// Why.
        error: ServerError,
    },
    /// A send is durable on the server.
    SendAcked {
        /// The send's id.
        client_msg_id: ClientMsgId,
        /// Its conversation.
        conversation_id: ConversationId,
        /// Its position.
        seq: Seq,
        /// Commit time.
        server_time_ms: u64,
        /// The server had committed this id before (a retry).
        duplicate: bool,
    },
    /// A send was refused for good; it has left the outbox.
    SendFailed {
        /// The send's id.
        client_msg_id: ClientMsgId,
        /// Its conversation.
        conversation_id: ConversationId,
        /// Why.
        error: ServerError,
    },
    /// The outcome of a request made with [`ClientSession::request`].
    Response {
        /// The id `request` returned.
        id: RequestId,
        /// The result.
        result: Result<Res, RequestError>,
    },
    /// The server is going away; reconnect after the delay.
    GoAway {
        /// Why.
        reason: String,
        /// Suggested delay.
        reconnect_after_ms: u32,
    },
    /// The server closed the connection with an error.
    ConnectionError(ServerError),
}

/// A send waiting for its durable ack.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    /// Idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Target conversation.
    pub conversation_id: ConversationId,
    /// What to send.
    pub body: pb::MessageBody,
    in_flight: Option<RequestId>,
    not_before: Millis,
}

#[derive(Debug)]
enum Purpose {
    App,
    /// Fire-and-forget (delivery acks, heartbeats): the response only frees the slot.
    Ack,
    /// Typing over the control stream (no datagrams): only an error matters.
    Typing(ConversationId),
    Authenticate,
    Send(ClientMsgId),
    GapFetch(ConversationId),
}

#[derive(Debug)]
struct InFlight {
    purpose: Purpose,
    deadline: Millis,
}

#[derive(Debug, Default)]
struct DeliveryStream {
    decoder: FrameDecoder,
    conversation: Option<ConversationId>,
}

/// The client side of one natter session, across any number of connections.
#[derive(Debug)]
pub struct ClientSession {
    config: SessionConfig,
    state: State,
    limits: pb::Limits,
    access_token: Option<String>,
    resume_token: Option<String>,
    identity: Option<(UserId, String, DeviceId)>,
    next_request_id: u64,
    control: FrameDecoder,
    streams: HashMap<StreamKey, DeliveryStream>,
    transmit: VecDeque<Bytes>,
    events: VecDeque<SessionEvent>,
    in_flight: HashMap<RequestId, InFlight>,
    queued: VecDeque<(RequestId, Op)>,
    outbox: Vec<OutboxEntry>,
    convs: BTreeMap<ConversationId, ConvState>,
    fetch_queue: VecDeque<ConversationId>,
    /// Events that arrived before the current connection's AuthOk was applied.
    early: Vec<pb::ConversationEvent>,
    synced: bool,
    now: Millis,
    /// Highest seq to acknowledge as delivered, per conversation.
    to_ack: BTreeMap<ConversationId, Seq>,
    /// Whether the transport carries datagrams.
    datagrams_ok: bool,
    datagrams: VecDeque<Bytes>,
    /// Presence this device reports, and when the next heartbeat is due.
    presence: pb::PresenceState,
    next_heartbeat: Option<Millis>,
    /// When we last told each conversation we are typing (for rate limiting).
    typing_sent: HashMap<ConversationId, Millis>,
    /// Indicators shown, with their expiry.
    typing_shown: BTreeMap<(ConversationId, UserId), Millis>,
}

impl ClientSession {
    /// A new session; `access_token` from an earlier Login, if any.
    pub fn new(config: SessionConfig, access_token: Option<String>) -> Self {
        Self {
            config,
            state: State::Disconnected,
            limits: limits::default_limits(),
            access_token,
            resume_token: None,
            identity: None,
            next_request_id: 1,
            control: FrameDecoder::default(),
            streams: HashMap::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            in_flight: HashMap::new(),
            queued: VecDeque::new(),
            outbox: Vec::new(),
            convs: BTreeMap::new(),
            fetch_queue: VecDeque::new(),
            early: Vec::new(),
            synced: false,
            now: Millis(0),
            to_ack: BTreeMap::new(),
            datagrams_ok: false,
            datagrams: VecDeque::new(),
            presence: pb::PresenceState::Online,
            next_heartbeat: None,
            typing_sent: HashMap::new(),
            typing_shown: BTreeMap::new(),
        }
    }

    // ───────────────────────────── getters ─────────────────────────────

    /// Lifecycle state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The access token (after Login), for the app to persist.
    pub fn access_token(&self) -> Option<&str> {
        self.access_token.as_deref()
    }

    /// The current resume token, for the app to persist.
    pub fn resume_token(&self) -> Option<&str> {
        self.resume_token.as_deref()
    }

    /// Who this session is authenticated as.
    pub fn identity(&self) -> Option<(UserId, &str, DeviceId)> {
        self.identity.as_ref().map(|(u, n, d)| (*u, n.as_str(), *d))
    }

    /// The server's limits (defaults until Welcome).
    pub fn limits(&self) -> &pb::Limits {
        &self.limits
    }

    /// The last seq delivered to the app in each known conversation, for persistence.
    pub fn cursors(&self) -> Vec<(ConversationId, Seq)> {
        self.convs.iter().map(|(c, s)| (*c, s.delivered)).collect()
    }

    /// This user's unread count in a conversation.
    pub fn unread(&self, conv: ConversationId) -> Option<u32> {
        self.convs.get(&conv).map(ConvState::unread)
    }

    /// Sends not yet acknowledged, oldest first, for persistence.
    pub fn outbox(&self) -> &[OutboxEntry] {
        &self.outbox
    }

    // ───────────────────────────── restore ─────────────────────────────

    /// Set or clear the access token (e.g. restored from disk).
    pub fn set_access_token(&mut self, token: Option<String>) {
        self.access_token = token;
    }

    /// Restore a resume token and cursors persisted by an earlier process.
    pub fn restore(&mut self, resume_token: Option<String>, cursors: impl IntoIterator<Item = (ConversationId, Seq)>) {
        self.resume_token = resume_token;
        for (c, s) in cursors {
            let st = self.convs.entry(c).or_default();
            st.delivered = s;
            st.highest_seen = st.highest_seen.max(s);
        }
    }

    // ───────────────────────────── commands ─────────────────────────────

    /// Queue a message. It is (re)sent until the server acknowledges it durably
    /// ([`SessionEvent::SendAcked`]) or refuses it ([`SessionEvent::SendFailed`]), across
    /// reconnects. `client_msg_id` must be unique per conversation; reusing one after an
    /// ack returns the original ack.
    pub fn send_message(
        &mut self,
        now: Millis,
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        body: pb::MessageBody,
    ) -> Result<(), ValidationError> {
        self.now = now;
        validate::client_msg_id(client_msg_id.as_str())?;
        validate::message_body(&body, self.limits.max_text_chars as usize)?;
        if conversation_id.0 == 0 {
            return Err(ValidationError::Missing("conversation_id"));
        }
        // A message ends "typing": the next keystroke announces itself again at once.
        self.typing_sent.remove(&conversation_id);
        self.outbox.push(OutboxEntry {
            client_msg_id,
            conversation_id,
            body,
            in_flight: None,
            not_before: now,
        });
        self.flush();
        Ok(())
    }

    /// Make a request; its outcome arrives as [`SessionEvent::Response`] with the returned
    /// id. Register, Login and Ping go out as soon as the handshake is done; everything
    /// else once authenticated. Sends and Authenticate are managed by the session and are
    /// refused here.
    pub fn request(&mut self, now: Millis, op: Op) -> Result<RequestId, ValidationError> {
        self.now = now;
        validate_op(&op)?;
        let id = self.alloc_id();
        self.queued.push_back((id, op));
        self.flush();
        Ok(id)
    }

    // ───────────────────────────── inputs ─────────────────────────────

    /// Whether the current transport carries datagrams (call after `handle_connected`).
    pub fn set_datagrams_supported(&mut self, yes: bool) {
        self.datagrams_ok = yes;
    }

    /// A transport connection is up and the control stream is open: sends Hello.
    pub fn handle_connected(&mut self, now: Millis) {
        self.now = now;
        self.reset_connection();
        self.state = State::Handshaking;
        let hello = pb::Hello {
            versions: vec![limits::PROTOCOL_VERSION],
            client: self.config.client_name.clone(),
        };
        self.transmit.push_back(encode_frame(&pb::Frame {
            kind: Some(Kind::Hello(hello)),
        }));
    }

    /// Bytes read from the control stream.
    pub fn handle_control_data(&mut self, now: Millis, data: &[u8]) -> Result<(), SessionError> {
        self.now = now;
        self.control.push(data);
        while let Some(frame) = self.control.next_frame()? {
            self.on_control_frame(frame)?;
        }
        self.flush();
        Ok(())
    }

    /// Bytes read from a server-opened delivery stream.
    pub fn handle_stream_data(&mut self, now: Millis, stream: StreamKey, data: &[u8]) -> Result<(), SessionError> {
        self.now = now;
        let st = self.streams.entry(stream).or_default();
        st.decoder.push(data);
        let mut frames = Vec::new();
        while let Some(frame) = st.decoder.next_frame()? {
            match (frame.kind, st.conversation) {
                (Some(Kind::StreamHeader(h)), None) => st.conversation = Some(ConversationId(h.conversation_id)),
                (Some(Kind::Event(ev)), Some(conv)) if ev.conversation_id == conv.0 => frames.push(ev),
                (Some(Kind::Event(_)), Some(_)) => {
                    return Err(SessionError::Unexpected("event for another conversation"))
                }
                (Some(Kind::Event(_)), None) => return Err(SessionError::Unexpected("event before stream header")),
                _ => return Err(SessionError::Unexpected("non-event frame on a delivery stream")),
            }
        }
        for ev in frames {
            self.on_event(ev);
        }
        self.flush();
        Ok(())
    }

    /// A delivery stream ended.
    pub fn handle_stream_finished(&mut self, stream: StreamKey) -> Result<(), SessionError> {
        if let Some(st) = self.streams.remove(&stream) {
            st.decoder.finish()?;
        }
        Ok(())
    }

    /// The transport is gone (`reason` is passed on in [`SessionEvent::Disconnected`]).
    /// Requests in flight fail with [`RequestError::ConnectionLost`]; sends stay in the
    /// outbox.
    pub fn handle_disconnected(&mut self, now: Millis, reason: &str) {
        self.now = now;
        for (id, inf) in std::mem::take(&mut self.in_flight) {
            match inf.purpose {
                Purpose::App => self.events.push_back(SessionEvent::Response {
                    id,
                    result: Err(RequestError::ConnectionLost),
                }),
                Purpose::Send(_) | Purpose::Authenticate | Purpose::Ack | Purpose::Typing(_) => {}
                Purpose::GapFetch(c) => {
                    if let Some(st) = self.convs.get_mut(&c) {
                        st.fetching = false;
                    }
                }
            }
        }
        for e in &mut self.outbox {
            e.in_flight = None;
        }
        self.reset_connection();
        self.state = State::Disconnected;
        self.events.push_back(SessionEvent::Disconnected {
            reason: reason.to_string(),
        });
    }

    /// Call at (or after) the instant [`ClientSession::poll_timeout`] named.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.now = now;
        let expired: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let inf = self.in_flight.remove(&id).expect("listed above");
            match inf.purpose {
                Purpose::App => self.events.push_back(SessionEvent::Response {
                    id,
                    result: Err(RequestError::Timeout),
                }),
                Purpose::Send(cid) => {
                    if let Some(e) = self.outbox.iter_mut().find(|e| e.client_msg_id == cid) {
                        e.in_flight = None;
                    }
                }
                Purpose::GapFetch(c) => {
                    if let Some(st) = self.convs.get_mut(&c) {
                        st.fetching = false;
                    }
                    self.fetch_queue.push_back(c);
                }
                Purpose::Ack | Purpose::Typing(_) => {}
                Purpose::Authenticate => self.events.push_back(SessionEvent::ConnectionError(ServerError::new(
                    pb::ErrorCode::Internal,
                    "authentication timed out",
                ))),
            }
        }
        if self.state == State::Ready && self.next_heartbeat.is_some_and(|t| t <= now) {
            self.send_heartbeat();
        }
        let expired: Vec<(ConversationId, UserId)> = self
            .typing_shown
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| *k)
            .collect();
        for (conversation_id, user_id) in expired {
            self.typing_shown.remove(&(conversation_id, user_id));
            self.events.push_back(SessionEvent::TypingStopped {
                conversation_id,
                user_id,
            });
        }
        self.flush();
    }

    // ───────────────────────────── outputs ─────────────────────────────

    /// The next encoded frame to write on the control stream.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The next datagram to send (typing).
    pub fn poll_datagram(&mut self) -> Option<Bytes> {
        self.datagrams.pop_front()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`ClientSession::handle_timeout`] must be called next, if at all.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let requests = self.in_flight.values().map(|f| f.deadline);
        let ready = self.state == State::Ready;
        let sends = self
            .outbox
            .iter()
            .filter(|e| ready && e.in_flight.is_none())
            .map(|e| e.not_before);
        let fetches = self
            .convs
            .values()
            .filter(|s| ready && !s.fetching && s.delivered < s.highest_seen)
            .map(|s| s.fetch_not_before);
        let heartbeat = self.next_heartbeat.filter(|_| ready);
        let typing = self.typing_shown.values().copied();
        requests
            .chain(sends)
            .chain(fetches)
            .chain(heartbeat)
            .chain(typing)
            .min()
    }

    // ───────────────────────────── internals ─────────────────────────────

    fn alloc_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request_id);
        self.next_request_id += 1;
        id
    }

    fn reset_connection(&mut self) {
        self.control = FrameDecoder::new(self.limits.max_frame_bytes as usize);
        self.streams.clear();
        self.transmit.clear();
        self.early.clear();
        self.synced = false;
        self.fetch_queue.clear();
        self.datagrams.clear();
        self.datagrams_ok = false;
        self.typing_sent.clear();
        self.next_heartbeat = None;
    }

    fn put_request(&mut self, id: RequestId, op: Op, purpose: Purpose) {
        let frame = pb::Frame {
            kind: Some(Kind::Request(pb::Request { id: id.0, op: Some(op) })),
        };
        self.transmit.push_back(encode_frame(&frame));
        let deadline = self.now.plus(self.config.request_timeout_ms);
        self.in_flight.insert(id, InFlight { purpose, deadline });
    }

    fn send_authenticate(&mut self) {
        let token = self.access_token.clone().unwrap_or_default();
        let cursors = self
            .convs
            .iter()
            .take(limits::MAX_CURSORS)
            .map(|(c, s)| pb::Cursor {
                conversation_id: c.0,
                seq: s.delivered.0,
            })
            .collect();
        let op = Op::Authenticate(pb::Authenticate {
            access_token: token,
            resume_token: self.resume_token.clone().unwrap_or_default(),
            cursors,
        });
        let id = self.alloc_id();
        self.put_request(id, op, Purpose::Authenticate);
        self.state = State::Authenticating;
    }

    /// Put out whatever the current state allows: queued requests, outbox sends, gap
    /// fetches, within the server's in-flight limit.
    fn flush(&mut self) {
        let cap = self.limits.max_requests_in_flight.max(1) as usize;
        let pre_auth = matches!(self.state, State::Unauthenticated | State::Ready);
        if !pre_auth {
            return;
        }
        let ready = self.state == State::Ready;
        // App requests in order; before auth only Register/Login/Ping go, overtaking the
        // ones that wait for auth (which Login is needed to reach).
        let mut i = 0;
        while self.in_flight.len() < cap && i < self.queued.len() {
            if !ready && !matches!(self.queued[i].1, Op::Register(_) | Op::Login(_) | Op::Ping(_)) {
                i += 1;
                continue;
            }
            let (id, op) = self.queued.remove(i).expect("index checked");
            self.put_request(id, op, Purpose::App);
        }
        if !ready {
            return;
        }
        let now = self.now;
        for i in 0..self.outbox.len() {
            if self.in_flight.len() >= cap {
                break;
            }
            let e = &self.outbox[i];
            if e.in_flight.is_some() || e.not_before > now {
                continue;
            }
            let op = Op::Send(pb::SendMessage {
                conversation_id: e.conversation_id.0,
                client_msg_id: e.client_msg_id.0.clone(),
                body: Some(e.body.clone()),
            });
            let cid = e.client_msg_id.clone();
            let id = self.alloc_id();
            self.outbox[i].in_flight = Some(id);
            self.put_request(id, op, Purpose::Send(cid));
        }
        // Delivery acks, one per conversation with the highest seq received.
        while self.in_flight.len() < cap {
            let Some((c, seq)) = self.to_ack.pop_first() else { break };
            let op = Op::MarkDelivered(pb::MarkDelivered {
                conversation_id: c.0,
                seq: seq.0,
            });
            let id = self.alloc_id();
            self.put_request(id, op, Purpose::Ack);
        }
        // Gap fetches: re-derive the queue from state so nothing is forgotten.
        for (c, st) in &self.convs {
            if !st.fetching
                && st.delivered < st.highest_seen
                && st.fetch_not_before <= now
                && !self.fetch_queue.contains(c)
            {
                self.fetch_queue.push_back(*c);
            }
        }
        while self.in_flight.len() < cap {
            let Some(c) = self.fetch_queue.pop_front() else {
                break;
            };
            let Some(st) = self.convs.get_mut(&c) else {
                continue;
            };
            if st.fetching || st.delivered >= st.highest_seen {
                continue;
            }
            st.fetching = true;
            let op = Op::History(pb::GetHistory {
                conversation_id: c.0,
                anchor: Some(pb::get_history::Anchor::After(st.delivered.0)),
                limit: self.limits.max_history_page,
            });
            let id = self.alloc_id();
            self.put_request(id, op, Purpose::GapFetch(c));
        }
    }

    fn on_control_frame(&mut self, frame: pb::Frame) -> Result<(), SessionError> {
        match frame.kind {
            Some(Kind::Welcome(w)) if self.state == State::Handshaking => {
                if w.version != limits::PROTOCOL_VERSION {
                    return Err(SessionError::UnsupportedVersion(w.version));
                }
                if let Some(l) = w.limits {
                    self.limits = l;
                }
                self.events.push_back(SessionEvent::Welcomed {
                    version: w.version,
                    limits: self.limits,
                });
                if self.access_token.is_some() {
                    self.send_authenticate();
                } else {
                    self.state = State::Unauthenticated;
                }
                Ok(())
            }
            Some(Kind::Welcome(_)) => Err(SessionError::Unexpected("Welcome outside the handshake")),
            Some(Kind::Response(r)) => {
                self.on_response(r);
                Ok(())
            }
            Some(Kind::Signal(sig)) => {
                self.on_signal(sig);
                Ok(())
            }
            Some(Kind::GoAway(g)) => {
                self.events.push_back(SessionEvent::GoAway {
                    reason: g.reason,
                    reconnect_after_ms: g.reconnect_after_ms,
                });
                Ok(())
            }
            Some(Kind::ConnectionError(e)) => {
                let err = ServerError::from(pb::Error {
                    code: e.code,
                    message: e.message,
                    retry_after_ms: 0,
                });
                self.events.push_back(SessionEvent::ConnectionError(err));
                Ok(())
            }
            // Unknown kinds from a newer server are ignored (PROTOCOL.md §2.4).
            None => Ok(()),
            Some(_) => Err(SessionError::Unexpected("frame not allowed on the control stream")),
        }
    }

    fn on_response(&mut self, r: pb::Response) {
        let id = RequestId(r.id);
        let Some(inf) = self.in_flight.remove(&id) else {
            return;
        };
        let result: Result<Res, ServerError> = match r.result {
            Some(Res::Error(e)) => Err(e.into()),
            Some(other) => Ok(other),
            None => Err(ServerError::new(pb::ErrorCode::Internal, "empty response")),
        };
        match inf.purpose {
            Purpose::App => {
                if let Ok(Res::Login(ok)) = &result {
                    self.access_token = Some(ok.access_token.clone());
                    if let Some(session) = ok.session.clone() {
                        self.apply_auth(session);
                    }
                }
                self.events.push_back(SessionEvent::Response {
                    id,
                    result: result.map_err(RequestError::Server),
                });
            }
            Purpose::Authenticate => match result {
                Ok(Res::Auth(ok)) => self.apply_auth(ok),
                Ok(_) => self.auth_failed(ServerError::new(
                    pb::ErrorCode::Internal,
                    "unexpected response to Authenticate",
                )),
                // Only a refused token means "log in again". Anything else (too many
                // connections, a server error) keeps the login: the driver reconnects and
                // authenticates afresh, without the resume token in case it was the cause.
                Err(e) if matches!(e.code, pb::ErrorCode::Unauthenticated | pb::ErrorCode::TokenRevoked) => {
                    self.auth_failed(e)
                }
                Err(e) => {
                    self.resume_token = None;
                    self.events.push_back(SessionEvent::ConnectionError(e));
                }
            },
            Purpose::Send(cid) => self.on_send_result(id, cid, result),
            Purpose::Ack => {}
            Purpose::Typing(conversation_id) => {
                if let Err(error) = result {
                    self.events
                        .push_back(SessionEvent::TypingRejected { conversation_id, error });
                }
            }
            Purpose::GapFetch(c) => self.on_gap_page(c, result),
        }
    }

    fn auth_failed(&mut self, e: ServerError) {
        self.access_token = None;
        self.resume_token = None;
        self.state = State::Unauthenticated;
        self.events.push_back(SessionEvent::AuthFailed(e));
    }

    fn apply_auth(&mut self, ok: pb::AuthOk) {
        self.state = State::Ready;
        self.next_heartbeat = Some(self.now.plus(u64::from(self.limits.heartbeat_interval_ms.max(100))));
        self.resume_token = Some(ok.resume_token).filter(|t| !t.is_empty());
        self.identity = Some((UserId(ok.user_id), ok.username.clone(), DeviceId(ok.device_id)));
        self.events.push_back(SessionEvent::Connected {
            user_id: UserId(ok.user_id),
            username: ok.username,
            device_id: DeviceId(ok.device_id),
            resumed: ok.resumed,
        });
        if !ok.resumed {
            // Cursor sync (PROTOCOL.md §7.3): learn every conversation and its last seq.
            let listed: HashSet<ConversationId> = ok
                .conversations
                .iter()
                .map(|s| ConversationId(s.conversation_id))
                .collect();
            for s in &ok.conversations {
                let last = Seq(s.last_seq);
                let st = self.convs.entry(ConversationId(s.conversation_id)).or_insert_with(|| {
                    let from_join = s.joined_seq.saturating_sub(1);
                    let recent = s.last_seq.saturating_sub(self.config.backfill);
                    let base = Seq(from_join.max(recent));
                    ConvState {
                        delivered: base,
                        highest_seen: base,
                        ..Default::default()
                    }
                });
                st.highest_seen = st.highest_seen.max(last);
                st.read = st.read.max(Seq(s.read_seq));
                st.set_unread(s.unread_count, last);
                if !s.receipts.is_empty() {
                    st.receipts = s
                        .receipts
                        .iter()
                        .map(|r| (UserId(r.user_id), (Seq(r.delivered_seq), Seq(r.read_seq))))
                        .collect();
                }
            }
            self.convs.retain(|c, _| listed.contains(c));
            let unread: Vec<SessionEvent> = self
                .convs
                .iter()
                .map(|(c, st)| SessionEvent::Unread {
                    conversation_id: *c,
                    read_seq: st.read,
                    unread_count: st.unread(),
                })
                .collect();
            self.events.push_back(SessionEvent::Conversations(ok.conversations));
            self.events.extend(unread);
        }
        self.synced = true;
        for ev in std::mem::take(&mut self.early) {
            self.on_event(ev);
        }
    }

    fn on_send_result(&mut self, id: RequestId, cid: ClientMsgId, result: Result<Res, ServerError>) {
        let Some(pos) = self
            .outbox
            .iter()
            .position(|e| e.client_msg_id == cid && e.in_flight == Some(id))
        else {
            return;
        };
        match result {
            Ok(Res::Sent(ok)) => {
                let e = self.outbox.remove(pos);
                self.events.push_back(SessionEvent::SendAcked {
                    client_msg_id: e.client_msg_id,
                    conversation_id: e.conversation_id,
                    seq: Seq(ok.seq),
                    server_time_ms: ok.server_time_ms,
                    duplicate: ok.duplicate,
                });
            }
            Err(e) if e.is_transient() => {
                let wait = u64::from(e.retry_after_ms).max(self.config.send_retry_ms);
                let entry = &mut self.outbox[pos];
                entry.in_flight = None;
                entry.not_before = self.now.plus(wait);
            }
            other => {
                let error = match other {
                    Err(e) => e,
                    Ok(_) => ServerError::new(pb::ErrorCode::Internal, "unexpected response to Send"),
                };
                let e = self.outbox.remove(pos);
                self.events.push_back(SessionEvent::SendFailed {
                    client_msg_id: e.client_msg_id,
                    conversation_id: e.conversation_id,
                    error,
                });
            }
        }
    }
}

/// Local checks for requests made through [`ClientSession::request`].
fn validate_op(op: &Op) -> Result<(), ValidationError> {
    match op {
        Op::Register(r) => {
            validate::username(&r.username)?;
            validate::password(&r.password)
        }
        Op::Login(l) => {
            validate::username(&l.username)?;
            validate::password(&l.password)?;
            if l.device_name.is_empty() {
                Ok(())
            } else {
                validate::name(&l.device_name)
            }
        }
        Op::CreateDirect(d) => validate::username(&d.username),
        Op::CreateGroup(g) => {
            validate::name(&g.name)?;
            validate::count("usernames", g.usernames.len(), limits::MAX_USERNAMES_PER_REQUEST)
        }
        Op::CreateChannel(c) => validate::channel_name(&c.name),
        Op::JoinChannel(c) => validate::channel_name(&c.name),
        Op::AddMembers(a) => validate::count("usernames", a.usernames.len(), limits::MAX_USERNAMES_PER_REQUEST),
        Op::Rename(r) => validate::name(&r.name),
        Op::Edit(e) => validate::message_body(
            &pb::MessageBody {
                text: e.text.clone(),
                ..Default::default()
            },
            limits::MAX_TEXT_CHARS,
        ),
        Op::React(r) => validate::emoji(&r.emoji),
        Op::Send(_) => Err(ValidationError::NotAllowed("use send_message for sends")),
        Op::Authenticate(_) => Err(ValidationError::NotAllowed("the session authenticates by itself")),
        _ => Ok(()),
    }
}

mod delivery;
mod signals;

use delivery::ConvState;
pub use signals::{DeliveryState, MessageStatus};

#[cfg(test)]
mod tests;
