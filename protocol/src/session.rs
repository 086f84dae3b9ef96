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

use crate::codec::{encode_frame, FrameDecoder};
use crate::error::ServerError;
use crate::ids::{ClientMsgId, ConversationId, DeviceId, RequestId, Seq, UserId};
use crate::limits;
use crate::pb::{self, frame::Kind, request::Op, response::Result as Res};
use crate::validate::{self, ValidationError};

#[derive(Debug)]
enum Purpose {
    App,
    /// Fire-and-forget (heartbeats, token refreshes): the response only frees the slot.
    Ack,
    /// A delivery ack (`MarkDelivered`) up to this seq: its `Done` is the server's word that
    /// the user's delivered cursor moved, which the server does not repeat to this device
    /// as a `ReceiptUpdate` (PROTOCOL.md §5.10).
    Delivered(ConversationId, Seq),
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
    /// A download stream (§11.4): the Download request it answers; raw bytes follow.
    download: Option<RequestId>,
}

/// Where the current connection is (PROTOCOL.md §4), holding what that phase needs.
#[derive(Debug)]
enum Phase {
    /// No transport.
    Disconnected,
    /// Connected but not authenticated: events that arrive before the session is
    /// established (a delivery stream can overtake the `AuthOk`) wait in `early`.
    Connecting {
        /// Handshaking, unauthenticated (Register/Login may go) or authenticating.
        step: State,
        /// Held until the session is established, at most `max_early_events`.
        early: Vec<pb::ConversationEvent>,
    },
    /// Authenticated, cursor sync or resume applied: everything flows.
    Ready {
        /// When the next presence heartbeat is due (`None`: only when the state changes,
        /// `SessionConfig::transport_keeps_alive`).
        next_heartbeat: Option<Millis>,
    },
}

impl Phase {
    fn connecting(step: State) -> Self {
        Phase::Connecting {
            step,
            early: Vec::new(),
        }
    }
}

/// The client side of one natter session, across any number of connections.
#[derive(Debug)]
pub struct ClientSession {
    config: SessionConfig,
    phase: Phase,
    limits: pb::Limits,
    access_token: Option<String>,
    /// The latest product token (PROTOCOL.md §5.13) the app gave, sent with Authenticate.
    product_token: Option<String>,
    /// Authenticate was refused with TOKEN_EXPIRED: waiting for a fresh product token.
    token_wait: bool,
    /// Whether `product_token` came from the app since the last TOKEN_EXPIRED, and how
    /// many it gave in a row that were expired already (more than three: logged out).
    token_fresh: bool,
    stale_tokens: u8,
    /// An app's RefreshToken in flight, and its token.
    refreshing: Option<(RequestId, String)>,
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
    now: Millis,
    /// Highest seq to acknowledge as delivered, per conversation.
    to_ack: BTreeMap<ConversationId, Seq>,
    /// When the acknowledgements in `to_ack` go out (`Timer::AckDelay` after the first).
    ack_due: Option<Millis>,
    /// Whether the transport carries datagrams.
    datagrams_ok: bool,
    datagrams: VecDeque<Bytes>,
    /// Presence this device reports (the next heartbeat is due per [`Phase::Ready`]).
    presence: pb::PresenceState,
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
            phase: Phase::Disconnected,
            limits: limits::default_limits(),
            access_token,
            product_token: None,
            token_wait: false,
            token_fresh: false,
            stale_tokens: 0,
            refreshing: None,
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
            now: Millis(0),
            to_ack: BTreeMap::new(),
            ack_due: None,
            datagrams_ok: false,
            datagrams: VecDeque::new(),
            presence: pb::PresenceState::Online,
            typing_sent: HashMap::new(),
            typing_shown: BTreeMap::new(),
        }
    }

    // ───────────────────────────── getters ─────────────────────────────

    /// Lifecycle state.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Disconnected => State::Disconnected,
            Phase::Connecting { step, .. } => step,
            Phase::Ready { .. } => State::Ready,
        }
    }

    fn ready(&self) -> bool {
        matches!(self.phase, Phase::Ready { .. })
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

    /// A product token (PROTOCOL.md §5.13) from the app, e.g. after
    /// [`SessionEvent::TokenNeeded`]: kept for the next Authenticate; sent at once as
    /// Authenticate when the session waits for it, or as RefreshToken when it is ready.
    pub fn set_product_token(&mut self, now: Millis, token: String) {
        self.now = now;
        self.product_token = Some(token.clone());
        self.token_fresh = true;
        if self.token_wait && self.state() == State::Authenticating {
            self.send_authenticate();
        } else if self.ready() {
            let id = self.alloc_id();
            self.put_request(id, Op::RefreshToken(pb::RefreshToken { token }), Purpose::Ack);
        }
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
        match &op {
            // Kept at once: before a login there is no device to authenticate.
            Op::TokenLogin(t) => self.product_token = Some(t.token.clone()),
            // Kept once the server accepted it for this device.
            Op::RefreshToken(r) => self.refreshing = Some((id, r.token.clone())),
            _ => {}
        }
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
        self.phase = Phase::connecting(State::Handshaking);
        let hello = pb::Hello {
            versions: vec![limits::PROTOCOL_VERSION],
            // The server refuses a longer one (PROTOCOL.md §4.1): cut at a char boundary.
            client: {
                let name = &self.config.client_name;
                let mut end = name.len().min(limits::MAX_CLIENT_NAME_BYTES);
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                name[..end].to_string()
            },
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

    /// Bytes read from a server-opened stream: a delivery stream (§3.2) or a download
    /// stream (§11.4), whose bytes come out as [`SessionEvent::DownloadData`].
    pub fn handle_stream_data(&mut self, now: Millis, stream: StreamKey, data: &[u8]) -> Result<(), SessionError> {
        self.now = now;
        let st = self.streams.entry(stream).or_default();
        if let Some(request_id) = st.download {
            self.events.push_back(SessionEvent::DownloadData {
                request_id,
                data: Bytes::copy_from_slice(data),
            });
            return Ok(());
        }
        st.decoder.push(data);
        let mut frames = Vec::new();
        while let Some(frame) = st.decoder.next_frame()? {
            match (frame.kind, st.conversation) {
                (Some(Kind::StreamHeader(h)), None) if h.download_request_id != 0 => {
                    let request_id = RequestId(h.download_request_id);
                    st.download = Some(request_id);
                    let data = st.decoder.take_rest();
                    if !data.is_empty() {
                        self.events.push_back(SessionEvent::DownloadData { request_id, data });
                    }
                    return Ok(());
                }
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

    /// A server-opened stream ended (cleanly: a download's last byte is in).
    pub fn handle_stream_finished(&mut self, stream: StreamKey) -> Result<(), SessionError> {
        if let Some(st) = self.streams.remove(&stream) {
            if let Some(request_id) = st.download {
                self.events.push_back(SessionEvent::DownloadFinished { request_id });
                return Ok(());
            }
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
                Purpose::Send(_)
                | Purpose::Authenticate
                | Purpose::Ack
                | Purpose::Delivered(..)
                | Purpose::Typing(_) => {}
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
        self.phase = Phase::Disconnected;
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
                Purpose::Ack | Purpose::Delivered(..) | Purpose::Typing(_) => {}
                Purpose::Authenticate => self.events.push_back(SessionEvent::ConnectionError(ServerError::new(
                    pb::ErrorCode::Internal,
                    "authentication timed out",
                ))),
            }
        }
        if matches!(self.phase, Phase::Ready { next_heartbeat: Some(due) } if due <= now) {
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
        let ready = self.ready();
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
        let heartbeat = match self.phase {
            Phase::Ready { next_heartbeat } => next_heartbeat,
            _ => None,
        };
        let typing = self.typing_shown.values().copied();
        let acks = self.ack_due.filter(|_| ready);
        requests
            .chain(sends)
            .chain(fetches)
            .chain(heartbeat)
            .chain(typing)
            .chain(acks)
            .min()
    }

    // ───────────────────────────── internals ─────────────────────────────

    /// Acknowledge delivery of `conv` up to `seq`: with the next acks, after
    /// `Timer::AckDelay` from the first of them.
    pub(super) fn ack_later(&mut self, conv: ConversationId, seq: Seq) {
        let e = self.to_ack.entry(conv).or_default();
        *e = (*e).max(seq);
        if self.ack_due.is_none() {
            self.ack_due = Some(self.deadline(Timer::AckDelay));
        }
    }

    fn alloc_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request_id);
        self.next_request_id += 1;
        id
    }

    fn reset_connection(&mut self) {
        self.control = FrameDecoder::new(self.limits.max_frame_bytes as usize);
        self.streams.clear();
        self.transmit.clear();
        self.fetch_queue.clear();
        self.datagrams.clear();
        self.datagrams_ok = false;
        self.typing_sent.clear();
    }

    fn put_request(&mut self, id: RequestId, op: Op, purpose: Purpose) {
        let frame = pb::Frame {
            kind: Some(Kind::Request(pb::Request { id: id.0, op: Some(op) })),
        };
        self.transmit.push_back(encode_frame(&frame));
        let deadline = self.deadline(Timer::Request);
        self.in_flight.insert(id, InFlight { purpose, deadline });
    }

    fn send_authenticate(&mut self) {
        self.token_wait = false;
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
            product_token: self.product_token.clone().unwrap_or_default(),
        });
        let id = self.alloc_id();
        self.put_request(id, op, Purpose::Authenticate);
        self.set_step(State::Authenticating);
    }

    /// Put out whatever the current state allows: queued requests, outbox sends, gap
    /// fetches, within the server's in-flight limit.
    fn flush(&mut self) {
        let cap = self.limits.max_requests_in_flight.max(1) as usize;
        let ready = self.ready();
        if !ready && self.state() != State::Unauthenticated {
            return;
        }
        // App requests in order; before auth only Register/Login/Ping go, overtaking the
        // ones that wait for auth (which Login is needed to reach).
        let mut i = 0;
        while self.in_flight.len() < cap && i < self.queued.len() {
            if !ready
                && !matches!(
                    self.queued[i].1,
                    Op::Register(_) | Op::Login(_) | Op::TokenLogin(_) | Op::Ping(_)
                )
            {
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
        // Delivery acks, one per conversation with the highest seq received, once their
        // delay is up.
        if self.to_ack.is_empty() {
            self.ack_due = None;
        }
        while self.in_flight.len() < cap && self.ack_due.is_some_and(|due| due <= now) {
            let Some((c, seq)) = self.to_ack.pop_first() else {
                self.ack_due = None;
                break;
            };
            if self.to_ack.is_empty() {
                self.ack_due = None;
            }
            let op = Op::MarkDelivered(pb::MarkDelivered {
                conversation_id: c.0,
                seq: seq.0,
            });
            let id = self.alloc_id();
            self.put_request(id, op, Purpose::Delivered(c, seq));
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
            Some(Kind::Welcome(w)) if self.state() == State::Handshaking => {
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
                    self.set_step(State::Unauthenticated);
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
                    ..Default::default()
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
                if let (Ok(Res::TokenRefreshed(_)), Some((rid, _))) = (&result, &self.refreshing) {
                    if *rid == id {
                        self.product_token = self.refreshing.take().map(|(_, t)| t);
                    }
                }
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
                Ok(Res::Auth(ok)) => {
                    self.token_wait = false;
                    self.stale_tokens = 0;
                    self.apply_auth(ok)
                }
                // The device's product token expired (§5.13): the login stands; wait for a
                // fresh token from the app. An app that keeps giving expired ones is cut
                // off after three, as a refused login.
                Err(e) if e.code == pb::ErrorCode::TokenExpired => {
                    if std::mem::take(&mut self.token_fresh) {
                        self.stale_tokens += 1;
                    }
                    if self.stale_tokens > 3 {
                        self.token_wait = false;
                        self.stale_tokens = 0;
                        self.auth_failed(e);
                    } else {
                        self.token_wait = true;
                        self.events.push_back(SessionEvent::TokenNeeded { expires_at_ms: 0 });
                    }
                }
                Ok(_) => self.auth_failed(ServerError::new(
                    pb::ErrorCode::Internal,
                    "unexpected response to Authenticate",
                )),
                // Only a refused token means "log in again". Anything else (too many
                // connections, a server error) keeps the login: the driver reconnects and
                // authenticates afresh, without the resume token in case it was the cause.
                Err(e)
                    if matches!(
                        e.code,
                        pb::ErrorCode::Unauthenticated | pb::ErrorCode::TokenRevoked | pb::ErrorCode::InvalidToken
                    ) =>
                {
                    self.auth_failed(e)
                }
                Err(e) => {
                    self.resume_token = None;
                    self.events.push_back(SessionEvent::ConnectionError(e));
                }
            },
            Purpose::Send(cid) => self.on_send_result(id, cid, result),
            Purpose::Ack => {}
            Purpose::Delivered(c, seq) => {
                if result.is_ok() {
                    self.own_delivered(c, seq);
                }
            }
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
        // Requests that wait for authentication would wait forever: they fail with it.
        let (waiting, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|(_, op)| !matches!(op, Op::Register(_) | Op::Login(_) | Op::TokenLogin(_) | Op::Ping(_)));
        self.queued = kept;
        for (id, _) in waiting {
            self.events.push_back(SessionEvent::Response {
                id,
                result: Err(RequestError::Server(e.clone())),
            });
        }
        self.access_token = None;
        self.product_token = None;
        self.resume_token = None;
        self.set_step(State::Unauthenticated);
        self.events.push_back(SessionEvent::AuthFailed(e));
    }

    /// Move to another step of connecting, keeping the events held so far.
    fn set_step(&mut self, to: State) {
        match &mut self.phase {
            Phase::Connecting { step, .. } => *step = to,
            _ => self.phase = Phase::connecting(to),
        }
    }

    fn apply_auth(&mut self, ok: pb::AuthOk) {
        let ready = Phase::Ready {
            next_heartbeat: self.next_heartbeat(),
        };
        let early = match std::mem::replace(&mut self.phase, ready) {
            Phase::Connecting { early, .. } => early,
            _ => Vec::new(),
        };
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
                st.advance_read(Seq(s.read_seq));
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
        for ev in early {
            self.on_event(ev);
        }
        // The server counts a new connection as online: an away device says so at once.
        if self.presence == pb::PresenceState::Away {
            self.send_heartbeat();
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
                let wait = u64::from(e.retry_after_ms).max(self.delay(Timer::SendRetry));
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
        Op::TokenLogin(t) => {
            if t.token.is_empty() || t.token.len() > limits::MAX_PRODUCT_TOKEN_BYTES {
                return Err(ValidationError::ProductToken);
            }
            if t.device_name.is_empty() {
                Ok(())
            } else {
                validate::name(&t.device_name)
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
mod timers;
mod vocabulary;

pub use vocabulary::{
    Millis, OutboxEntry, RequestError, SessionConfig, SessionError, SessionEvent, State, StreamKey, VerificationState,
    VerificationUpdate,
};

use timers::Timer;

use delivery::ConvState;
pub use signals::{DeliveryState, MessageStatus};

#[cfg(test)]
mod tests;
