//! The session's vocabulary: what goes in (time, stream keys, configuration) and what
//! comes out (states, events, errors, outbox entries). The machine that turns one into
//! the other is [`super::ClientSession`].
use bytes::Bytes;

use crate::codec::FrameError;
use crate::error::ServerError;
use crate::ids::{ClientMsgId, ConversationId, DeviceId, RequestId, Seq, UserId};
use crate::pb::{self, response::Result as Res};
use crate::validate::ValidationError;

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
    /// The app acknowledges delivered messages itself ([`crate::session::ClientSession::acknowledge`])
    /// instead of the session doing it as it hands them on: for an app layer that must
    /// write what an event changed before the server may consider it delivered (the
    /// end-to-end encryption's state, PROTOCOL.md §12.7).
    pub ack_by_app: bool,
    /// Delivery acknowledgements wait this long after the first event they cover, so one
    /// cumulative `MarkDelivered` per conversation stands for every event of a burst
    /// (PROTOCOL.md §7.4); 0 sends one with every batch of events as it arrives. "Delivered"
    /// marks and the server's push decisions move this much later.
    pub ack_delay_ms: u64,
    /// The transport keeps the connection alive by itself (QUIC PINGs at the server's
    /// `Limits.keep_alive_ms`): presence heartbeats then go only when the device's state
    /// changes, not every `Limits.heartbeat_interval_ms` (PROTOCOL.md §5.11). The native
    /// SDK sets it; a browser's WebTransport and WebSocket cannot send PINGs, so there the
    /// periodic heartbeat is the keep-alive.
    pub transport_keeps_alive: bool,
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
            ack_by_app: false,
            ack_delay_ms: 100,
            transport_keeps_alive: false,
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

/// Where a device verification stands (PROTOCOL.md §12.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationUpdate {
    /// The transaction.
    pub txn: String,
    /// The other device's user.
    pub user_id: UserId,
    /// The other device.
    pub device_id: DeviceId,
    /// What happened.
    pub state: VerificationState,
}

/// A step of a device verification, as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerificationState {
    /// The other device asks to verify this one: accept or cancel.
    Requested,
    /// Both keys are in: show these and ask the person whether both screens agree.
    Compare {
        /// Seven (emoji, name) pairs.
        emoji: Vec<(String, String)>,
        /// Three numbers.
        decimals: (u16, u16, u16),
    },
    /// Both people confirmed and the keys check out: the other device is verified. For
    /// another device of this user, once the two also shared their message keys
    /// (PROTOCOL.md §12.11), or 30 s after without the other's.
    Verified,
    /// Stopped: `user` (declined), `mismatch` (a key was swapped), `unexpected`, `timeout`.
    Cancelled(String),
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
    /// The device's product token (PROTOCOL.md §5.13) expires at `expires_at_ms`, or has
    /// expired (0: the session waits to authenticate): give the session a fresh one with
    /// `set_product_token`. SDKs ask the app's token provider.
    TokenNeeded {
        /// When the current one expires, ms since the epoch; 0 when it already has.
        expires_at_ms: u64,
    },
    /// Cursor sync: every conversation the user is a member of.
    Conversations(Vec<pb::ConversationSummary>),
    /// A conversation event: exactly once, in seq order per conversation.
    Event(pb::ConversationEvent),
    /// Retention removed a conversation's events up to `through` (PROTOCOL.md §5.17) before
    /// this device was given them: show one tombstone for the range; events after it follow.
    HistoryRemoved {
        /// Where.
        conversation_id: ConversationId,
        /// Every event up to here is gone.
        through: Seq,
    },
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
    /// An upload's stored offset or state moved, or an upload stream was refused
    /// (PROTOCOL.md §11.2).
    UploadProgress(pb::UploadProgress),
    /// This device's one-time key stock ran low or its fallback key was used
    /// (PROTOCOL.md §12.1): publish more keys.
    KeyCounts(pb::KeyCounts),
    /// A push service said one of the user's registrations is gone and the server removed
    /// it (PROTOCOL.md §13.4): the device it names should register again.
    PushRemoved(pb::PushRemoved),
    /// A user's profile changed: a contact's, a fellow member's or the user's own
    /// (PROTOCOL.md §5.15).
    ProfileChanged(pb::UserProfile),
    /// Another device's message to this one (PROTOCOL.md §12.10): a verification step,
    /// which an SDK's encryption consumes.
    ToDevice(pb::ToDevice),
    /// A device verification moved (PROTOCOL.md §12.10), from an SDK's encryption.
    Verification(VerificationUpdate),
    /// An SDK's encryption could not load this device's state on this connection, so
    /// sealed messages stay unopened and encrypted sends fail until it can: `reason` is
    /// `in_use` (another tab or process holds it), `state` (it does not open with this
    /// store key, or is malformed) or `storage` (it could not be read).
    EncryptionUnavailable {
        /// Which of the three.
        reason: String,
        /// Detail for logs.
        message: String,
    },
    /// An end-to-end encrypted message this device cannot open (PROTOCOL.md §12.6),
    /// from an SDK's encryption: the event as it came, and why. When its key arrives
    /// later (a restore from the key backup) the SDK hands it on again as an `Event`,
    /// opened, with the same conversation and seq.
    Undecryptable {
        /// The sealed event.
        event: pb::ConversationEvent,
        /// `not_for_this_device`, `unknown_sender_device`, `olm`, `binding`, `content`
        /// or `malformed`.
        reason: String,
    },
    /// Bytes of a download stream, in order (PROTOCOL.md §11.4).
    DownloadData {
        /// The `Download` request they answer.
        request_id: RequestId,
        /// The next bytes.
        data: Bytes,
    },
    /// A download stream ended with its last byte (a stream cut by a lost connection never
    /// gets here: the download then failed short of its length).
    DownloadFinished {
        /// The `Download` request it answered.
        request_id: RequestId,
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
    pub(super) in_flight: Option<RequestId>,
    pub(super) not_before: Millis,
}
