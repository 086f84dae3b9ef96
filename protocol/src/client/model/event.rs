//! [`NatterEvent`]: what the app hears, in the shape every binding shows it, and the one
//! mapping from the session's [`SessionEvent`] to it.
use super::{Conversation, ConversationEvent, ErrorInfo, Presence, Profile, UploadProgress};
use crate::session::SessionEvent;

/// What the app hears: from natter-ffi's `NatterListener.onEvent`, from natter-wasm's
/// `onEvent` / `nextEvent()` (`{ type: "connected", userId, … }`), and from
/// [`NatterEvent::from_session`] in Rust.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")
)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum NatterEvent {
    /// Authenticated on a (re)connection. `resumed`: the earlier session continued (nothing
    /// to re-sync). Show "connected".
    Connected {
        /// Who.
        user_id: u64,
        /// Username.
        username: String,
        /// This device.
        device_id: u64,
        /// The session was resumed.
        resumed: bool,
    },
    /// The connection is gone; the client is reconnecting by itself (sends wait in the
    /// outbox). Show "reconnecting…".
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
    /// The access token was refused: log in again.
    AuthFailed {
        /// Why.
        error: ErrorInfo,
    },
    /// After a (non-resumed) connect: every conversation of the user.
    Conversations {
        /// The list.
        conversations: Vec<Conversation>,
    },
    /// A conversation event: exactly once, in seq order per conversation.
    Event {
        /// The event.
        event: ConversationEvent,
    },
    /// Retention removed the conversation's events up to `through_seq` (PROTOCOL.md
    /// §5.17) before this device got them: show one "older messages were removed" line;
    /// the events after it follow.
    HistoryRemoved {
        /// Where.
        conversation_id: u64,
        /// Every event up to here is gone.
        through_seq: u64,
    },
    /// A member's cursors moved: refresh message status.
    Receipt {
        /// Where.
        conversation_id: u64,
        /// Whose.
        user_id: u64,
        /// Delivered up to.
        delivered_seq: u64,
        /// Read up to.
        read_seq: u64,
    },
    /// Your unread count changed (any of your devices).
    Unread {
        /// Where.
        conversation_id: u64,
        /// Your read cursor.
        read_seq: u64,
        /// Unread messages.
        unread_count: u32,
    },
    /// A contact's presence changed.
    PresenceChanged {
        /// The new presence.
        presence: Presence,
    },
    /// Someone is typing.
    Typing {
        /// Where.
        conversation_id: u64,
        /// Who.
        user_id: u64,
        /// Their username.
        username: String,
    },
    /// A typing indicator expired.
    TypingStopped {
        /// Where.
        conversation_id: u64,
        /// Who.
        user_id: u64,
    },
    /// Your typing notice was refused.
    TypingRejected {
        /// Where.
        conversation_id: u64,
        /// Why.
        error: ErrorInfo,
    },
    /// A push service said one of your devices' push registrations is gone, and the server
    /// removed it. If `device_id` is this device, register again (a new subscription or
    /// token); other devices may show that one of yours stopped getting notifications.
    PushRemoved {
        /// The device it was for.
        device_id: u64,
        /// The registration removed.
        registration_id: String,
        /// What the push service answered.
        reason: String,
    },
    /// A user's profile changed (yours, a contact's or a fellow member's): redraw their
    /// name and avatar. Profiles changed while this client was away are not replayed: read
    /// the ones you show again (`profiles`) after a `Connected` that did not resume.
    ProfileChanged {
        /// The new profile.
        profile: Profile,
    },
    /// This device logged in with a product token (PROTOCOL.md §5.13) that expires at
    /// `expires_at_ms`, or has expired (0: the client waits to reconnect). Give the client
    /// a fresh token from your backend (`set_token`); a client with a token provider asks
    /// it by itself, and this event only tells you it did.
    TokenNeeded {
        /// When the current token expires, ms since the epoch; 0 when it already has.
        expires_at_ms: u64,
    },
    /// One of your uploads moved on: more bytes stored, processed, ready or rejected.
    UploadProgress {
        /// What the server reported.
        progress: UploadProgress,
    },
    /// A send nobody was awaiting (e.g. one restored from a snapshot) was refused for good.
    SendFailed {
        /// Where.
        conversation_id: u64,
        /// Which.
        client_msg_id: String,
        /// Why.
        error: ErrorInfo,
    },
    /// The server is draining; the client reconnects after the delay.
    GoAway {
        /// Why.
        reason: String,
        /// Suggested delay.
        reconnect_after_ms: u32,
    },
    /// The server closed the connection with an error; the client reconnects.
    ConnectionError {
        /// Why.
        error: ErrorInfo,
    },
    /// This device's encryption state could not be loaded (PROTOCOL.md §12.7): `reason`
    /// `in_use` (open in another tab or process), `state` (another store key, or
    /// malformed) or `storage` (unreadable). Sealed messages stay unopened and encrypted
    /// sends fail until it loads.
    EncryptionUnavailable {
        /// `in_use`, `state` or `storage`.
        reason: String,
        /// Detail for logs.
        message: String,
    },
    /// A device verification moved (PROTOCOL.md §12.10). `state`: `requested` (the other
    /// device asks: accept or cancel), `compare` (show `emoji` / `decimals` and ask the
    /// person whether both screens agree), `verified`, or `cancelled` (with `reason`:
    /// `user`, `mismatch`, `unexpected`, `timeout`).
    Verification {
        /// The transaction, for accept / confirm / cancel.
        txn: String,
        /// The other device's user.
        user_id: u64,
        /// The other device.
        device_id: u64,
        /// Where it stands.
        state: String,
        /// `compare`: seven emoji, each "symbol name" (e.g. "🐶 Dog").
        emoji: Vec<String>,
        /// `compare`: three numbers.
        decimals: Vec<u16>,
        /// `cancelled`: why.
        reason: String,
    },
}

impl NatterEvent {
    /// The app's view of a session event; `None` for those an SDK consumes itself (the
    /// handshake, responses and acks, which resolve the caller's request instead).
    pub fn from_session(ev: SessionEvent) -> Option<Self> {
        Some(match ev {
            SessionEvent::Connected {
                user_id,
                username,
                device_id,
                resumed,
            } => NatterEvent::Connected {
                user_id: user_id.0,
                username,
                device_id: device_id.0,
                resumed,
            },
            SessionEvent::Disconnected { reason } => NatterEvent::Disconnected { reason },
            SessionEvent::AuthFailed(e) => NatterEvent::AuthFailed { error: (&e).into() },
            SessionEvent::Conversations(list) => NatterEvent::Conversations {
                conversations: super::list(list),
            },
            SessionEvent::Event(e) => NatterEvent::Event { event: e.into() },
            SessionEvent::HistoryRemoved {
                conversation_id,
                through,
            } => NatterEvent::HistoryRemoved {
                conversation_id: conversation_id.0,
                through_seq: through.0,
            },
            SessionEvent::Undecryptable { event, reason } => {
                let mut event = super::ConversationEvent::from(event);
                if let super::EventBody::Encrypted { client_msg_id } = event.body {
                    event.body = super::EventBody::Undecryptable { client_msg_id, reason };
                }
                NatterEvent::Event { event }
            }
            SessionEvent::Receipt {
                conversation_id,
                user_id,
                delivered_seq,
                read_seq,
            } => NatterEvent::Receipt {
                conversation_id: conversation_id.0,
                user_id: user_id.0,
                delivered_seq: delivered_seq.0,
                read_seq: read_seq.0,
            },
            SessionEvent::Unread {
                conversation_id,
                read_seq,
                unread_count,
            } => NatterEvent::Unread {
                conversation_id: conversation_id.0,
                read_seq: read_seq.0,
                unread_count,
            },
            SessionEvent::Presence(p) => NatterEvent::PresenceChanged { presence: p.into() },
            SessionEvent::Typing {
                conversation_id,
                user_id,
                username,
            } => NatterEvent::Typing {
                conversation_id: conversation_id.0,
                user_id: user_id.0,
                username,
            },
            SessionEvent::TypingStopped {
                conversation_id,
                user_id,
            } => NatterEvent::TypingStopped {
                conversation_id: conversation_id.0,
                user_id: user_id.0,
            },
            SessionEvent::UploadProgress(u) => NatterEvent::UploadProgress { progress: u.into() },
            SessionEvent::TokenNeeded { expires_at_ms } => NatterEvent::TokenNeeded { expires_at_ms },
            SessionEvent::ProfileChanged(p) => NatterEvent::ProfileChanged { profile: p.into() },
            SessionEvent::PushRemoved(r) => NatterEvent::PushRemoved {
                device_id: r.device_id,
                registration_id: r.registration_id,
                reason: r.reason,
            },
            // Download bytes go to the waiting download (the client core's Router).
            SessionEvent::DownloadData { .. } | SessionEvent::DownloadFinished { .. } => return None,
            // Key stock: the SDK's encryption keeps it topped up by itself; device messages
            // are the encryption's verification steps, which come out as `Verification`.
            SessionEvent::KeyCounts(_) | SessionEvent::ToDevice(_) => return None,
            SessionEvent::EncryptionUnavailable { reason, message } => {
                NatterEvent::EncryptionUnavailable { reason, message }
            }
            SessionEvent::Verification(v) => {
                use crate::session::VerificationState as S;
                let (state, emoji, decimals, reason) = match v.state {
                    S::Requested => ("requested", vec![], vec![], String::new()),
                    S::Compare { emoji, decimals } => (
                        "compare",
                        emoji.into_iter().map(|(e, n)| format!("{e} {n}")).collect(),
                        vec![decimals.0, decimals.1, decimals.2],
                        String::new(),
                    ),
                    S::Verified => ("verified", vec![], vec![], String::new()),
                    S::Cancelled(r) => ("cancelled", vec![], vec![], r),
                };
                NatterEvent::Verification {
                    txn: v.txn,
                    user_id: v.user_id.0,
                    device_id: v.device_id.0,
                    state: state.into(),
                    emoji,
                    decimals,
                    reason,
                }
            }
            SessionEvent::TypingRejected { conversation_id, error } => NatterEvent::TypingRejected {
                conversation_id: conversation_id.0,
                error: (&error).into(),
            },
            SessionEvent::SendFailed {
                client_msg_id,
                conversation_id,
                error,
            } => NatterEvent::SendFailed {
                conversation_id: conversation_id.0,
                client_msg_id: client_msg_id.0,
                error: (&error).into(),
            },
            SessionEvent::GoAway {
                reason,
                reconnect_after_ms,
            } => NatterEvent::GoAway {
                reason,
                reconnect_after_ms,
            },
            SessionEvent::ConnectionError(e) => NatterEvent::ConnectionError { error: (&e).into() },
            SessionEvent::Welcomed { .. } | SessionEvent::SendAcked { .. } | SessionEvent::Response { .. } => {
                return None
            }
        })
    }
}
