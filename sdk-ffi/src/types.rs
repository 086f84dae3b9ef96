//! The records and enums the bindings see, and their conversions from natter-sdk's types
//! (which are mostly the wire types of natter-protocol). Ids are plain `u64`s here: uniffi
//! has no newtypes, and the foreign languages give them their own names (`ULong`, `UInt64`).
use natter_sdk::proto as pb;
use natter_sdk::{ClientEvent, ConversationId, Seq};

/// How to reach and trust a server, and what to restore from an earlier [`Snapshot`].
#[derive(Clone, Debug, uniffi::Record)]
pub struct ConnectOptions {
    /// `host:port` of the server's QUIC endpoint.
    pub address: String,
    /// Other nodes of the same deployment (`host:port`): after a lost connection or a
    /// drain the client moves to the next one in turn.
    #[uniffi(default)]
    pub fallback_addresses: Vec<String>,
    /// TLS server name (development certificates are valid for "localhost").
    #[uniffi(default = "localhost")]
    pub server_name: String,
    /// Pin the server's certificate by its hex SHA-256 (as the server prints it)…
    #[uniffi(default)]
    pub certificate_sha256: Option<String>,
    /// …or verify it against these PEM CA certificates. One of the two is required.
    #[uniffi(default)]
    pub ca_pem: Option<String>,
    /// An access token from an earlier login.
    #[uniffi(default)]
    pub access_token: Option<String>,
    /// A resume token from an earlier [`Snapshot`].
    #[uniffi(default)]
    pub resume_token: Option<String>,
    /// Delivered cursors from an earlier [`Snapshot`].
    #[uniffi(default)]
    pub cursors: Vec<Cursor>,
    /// Shown in the server's logs.
    #[uniffi(default = "natter-ffi")]
    pub client_name: String,
}

/// The last seq this device received in a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Cursor {
    /// Conversation.
    pub conversation_id: u64,
    /// Last delivered seq.
    pub seq: u64,
}

/// What to store to restore the session after the app is killed: pass the tokens and
/// cursors to [`ConnectOptions`], and re-send each pending send with `sendWithId`.
#[derive(Clone, Debug, uniffi::Record)]
pub struct Snapshot {
    /// Access token (keep it in the keychain/keystore).
    pub access_token: Option<String>,
    /// Resume token.
    pub resume_token: Option<String>,
    /// Delivered cursors.
    pub cursors: Vec<Cursor>,
    /// Sends the server has not acknowledged yet, oldest first.
    pub pending_sends: Vec<PendingSend>,
}

/// A message still "sending".
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct PendingSend {
    /// Conversation.
    pub conversation_id: u64,
    /// Its idempotency key.
    pub client_msg_id: String,
    /// Its text.
    pub text: String,
    /// The message it answers, 0 for none.
    pub reply_to_seq: u64,
}

/// A successful login.
#[derive(Clone, Debug, uniffi::Record)]
pub struct LoginInfo {
    /// The user.
    pub user_id: u64,
    /// This new device.
    pub device_id: u64,
    /// Keep it to connect again without the password.
    pub access_token: String,
}

/// One of the user's devices.
#[derive(Clone, Debug, uniffi::Record)]
pub struct Device {
    /// Its id.
    pub device_id: u64,
    /// Its name.
    pub name: String,
    /// When it logged in (ms since the epoch).
    pub created_ms: u64,
    /// When it was last connected.
    pub last_seen_ms: u64,
    /// This is the calling device.
    pub current: bool,
}

/// A conversation member.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    /// Their id.
    pub user_id: u64,
    /// Their username.
    pub username: String,
    /// Their role.
    pub role: Role,
    /// The seq of the event that made them a member.
    pub joined_seq: u64,
}

/// A member's delivered and read cursors.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct MemberReceipt {
    /// Whose.
    pub user_id: u64,
    /// Everything up to here reached one of their devices.
    pub delivered_seq: u64,
    /// Everything up to here is read.
    pub read_seq: u64,
}

/// A conversation as the conversation list shows it.
#[derive(Clone, Debug, uniffi::Record)]
pub struct Conversation {
    /// Its id.
    pub conversation_id: u64,
    /// Direct, group or channel.
    pub kind: ConversationKind,
    /// Group/channel name; for a direct conversation the other user's username.
    pub name: String,
    /// Newest seq (0: empty).
    pub last_seq: u64,
    /// The seq that made the caller a member.
    pub joined_seq: u64,
    /// The caller's read cursor.
    pub read_seq: u64,
    /// Messages from others after `read_seq` (capped at 1000).
    pub unread_count: u32,
    /// The caller's role.
    pub my_role: Role,
    /// How many members.
    pub member_count: u32,
    /// The newest message, for the preview line.
    pub last_message: Option<ConversationEvent>,
    /// Every member's cursors (direct conversations and groups).
    pub receipts: Vec<MemberReceipt>,
}

/// One event of a conversation: a message, or a change to the conversation.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ConversationEvent {
    /// Where.
    pub conversation_id: u64,
    /// Its position: gap-free from 1.
    pub seq: u64,
    /// Who.
    pub sender_user_id: u64,
    /// Their username.
    pub sender_username: String,
    /// From which of their devices.
    pub sender_device_id: u64,
    /// Commit time (ms since the epoch).
    pub server_time_ms: u64,
    /// What happened.
    pub body: EventBody,
}

/// What a [`ConversationEvent`] says.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum EventBody {
    /// A message.
    Message {
        /// The sender's idempotency key.
        client_msg_id: String,
        /// Its text.
        text: String,
        /// The message it answers, 0 for none.
        reply_to_seq: u64,
    },
    /// The conversation was created with these members.
    Created {
        /// Kind.
        kind: ConversationKind,
        /// Name.
        name: String,
        /// Initial members.
        members: Vec<Member>,
    },
    /// Members joined or were added.
    MembersAdded {
        /// Who.
        members: Vec<Member>,
    },
    /// A member left or was removed.
    MemberRemoved {
        /// Who.
        user_id: u64,
        /// Their username.
        username: String,
        /// They left by themselves.
        left: bool,
    },
    /// Renamed.
    Renamed {
        /// The new name.
        name: String,
    },
    /// A member's role changed.
    RoleChanged {
        /// Whose.
        user_id: u64,
        /// The new role.
        role: Role,
    },
    /// The conversation was deleted.
    Deleted,
    /// The message at `target_seq` now reads `text`.
    MessageEdited {
        /// Which.
        target_seq: u64,
        /// New text.
        text: String,
    },
    /// The message at `target_seq` was deleted.
    MessageDeleted {
        /// Which.
        target_seq: u64,
    },
    /// The sender added or removed a reaction.
    Reaction {
        /// On which message.
        target_seq: u64,
        /// The emoji.
        emoji: String,
        /// Added (true) or removed.
        added: bool,
    },
    /// An event kind this version does not know (newer server).
    Unknown,
}

/// A page of history.
#[derive(Clone, Debug, uniffi::Record)]
pub struct HistoryPage {
    /// Where.
    pub conversation_id: u64,
    /// Oldest first.
    pub events: Vec<ConversationEvent>,
    /// More exist in the direction asked.
    pub has_more: bool,
    /// The conversation's newest seq.
    pub last_seq: u64,
}

/// Where a history page starts.
#[derive(Clone, Copy, Debug, uniffi::Enum)]
pub enum HistoryAnchor {
    /// The newest page below `seq` (0: the latest page).
    Before {
        /// Exclusive upper bound.
        seq: u64,
    },
    /// The oldest page above `seq`.
    After {
        /// Exclusive lower bound.
        seq: u64,
    },
}

/// A message is durable on the server ("sent", ✓).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct SendAck {
    /// Where.
    pub conversation_id: u64,
    /// Its seq.
    pub seq: u64,
    /// Commit time.
    pub server_time_ms: u64,
    /// It had been committed before (a retry of an earlier send).
    pub duplicate: bool,
    /// The idempotency key.
    pub client_msg_id: String,
}

/// Where one of your messages stands with the other members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct MessageStatus {
    /// The summary mark.
    pub state: DeliveryState,
    /// Other members with a device that has it.
    pub delivered: u32,
    /// Other members who read it.
    pub read: u32,
    /// Other members.
    pub recipients: u32,
}

/// ✓ sent, ✓✓ delivered, read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum DeliveryState {
    /// Durable on the server.
    Sent,
    /// On a device of every other member.
    Delivered,
    /// Read by every other member.
    Read,
}

/// A user's presence.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Presence {
    /// Who.
    pub user_id: u64,
    /// Their username.
    pub username: String,
    /// Online, away or offline.
    pub state: PresenceState,
    /// When last online (0: hidden or unknown).
    pub last_seen_ms: u64,
}

/// What the app hears, through a `NatterListener`.
#[derive(Clone, Debug, uniffi::Enum)]
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
        code: ErrorCode,
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
    /// A member's cursors moved: refresh message status (`messageStatus`).
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
        code: ErrorCode,
    },
    /// A send nobody was awaiting (e.g. one restored from a snapshot) was refused for good.
    SendFailed {
        /// Where.
        conversation_id: u64,
        /// Which.
        client_msg_id: String,
        /// Why.
        code: ErrorCode,
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
        code: ErrorCode,
    },
}

macro_rules! mirror_enum {
    ($(#[$doc:meta])* $name:ident from $pb:ty { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl From<$pb> for $name {
            fn from(v: $pb) -> Self {
                match v { $(<$pb>::$variant => $name::$variant),+ }
            }
        }

        impl From<$name> for $pb {
            fn from(v: $name) -> Self {
                match v { $($name::$variant => <$pb>::$variant),+ }
            }
        }
    };
}

mirror_enum!(
    /// Error codes (PROTOCOL.md §8).
    ErrorCode from pb::ErrorCode {
        /// Not set.
        Unspecified, BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, TooLarge,
        LimitExceeded, RateLimited, Internal, UnsupportedVersion, UnknownFrame, MalformedFrame,
        FrameTooLarge, UsernameTaken, InvalidCredentials, NotMember, TextTooLong,
        UnknownRequest, ShuttingDown, HandshakeRequired, TokenRevoked, NameTaken,
    }
);
mirror_enum!(
    /// Direct, group or channel.
    ConversationKind from pb::ConversationKind { Unspecified, Direct, Group, Channel }
);
mirror_enum!(
    /// A member's role.
    Role from pb::Role { Unspecified, Member, Admin, Owner }
);
mirror_enum!(
    /// Online, away, offline.
    PresenceState from pb::PresenceState { Unspecified, Online, Away, Offline }
);

impl From<natter_sdk::DeliveryState> for DeliveryState {
    fn from(s: natter_sdk::DeliveryState) -> Self {
        match s {
            natter_sdk::DeliveryState::Sent => DeliveryState::Sent,
            natter_sdk::DeliveryState::Delivered => DeliveryState::Delivered,
            natter_sdk::DeliveryState::Read => DeliveryState::Read,
        }
    }
}

impl From<natter_sdk::MessageStatus> for MessageStatus {
    fn from(s: natter_sdk::MessageStatus) -> Self {
        MessageStatus {
            state: s.state.into(),
            delivered: s.delivered,
            read: s.read,
            recipients: s.recipients,
        }
    }
}

impl From<(ConversationId, Seq)> for Cursor {
    fn from((c, s): (ConversationId, Seq)) -> Self {
        Cursor {
            conversation_id: c.0,
            seq: s.0,
        }
    }
}

impl From<Cursor> for (ConversationId, Seq) {
    fn from(c: Cursor) -> Self {
        (ConversationId(c.conversation_id), Seq(c.seq))
    }
}

impl From<natter_sdk::Snapshot> for Snapshot {
    fn from(s: natter_sdk::Snapshot) -> Self {
        Snapshot {
            access_token: s.access_token,
            resume_token: s.resume_token,
            cursors: s.cursors.into_iter().map(Cursor::from).collect(),
            pending_sends: s
                .pending_sends
                .into_iter()
                .map(|p| PendingSend {
                    conversation_id: p.conversation_id.0,
                    client_msg_id: p.client_msg_id.0,
                    text: p.body.text,
                    reply_to_seq: p.body.reply_to_seq,
                })
                .collect(),
        }
    }
}

impl From<natter_sdk::LoginInfo> for LoginInfo {
    fn from(l: natter_sdk::LoginInfo) -> Self {
        LoginInfo {
            user_id: l.user_id.0,
            device_id: l.device_id.0,
            access_token: l.access_token,
        }
    }
}

impl From<natter_sdk::SendAck> for SendAck {
    fn from(a: natter_sdk::SendAck) -> Self {
        SendAck {
            conversation_id: a.conversation_id.0,
            seq: a.seq.0,
            server_time_ms: a.server_time_ms,
            duplicate: a.duplicate,
            client_msg_id: a.client_msg_id.0,
        }
    }
}

impl From<pb::Device> for Device {
    fn from(d: pb::Device) -> Self {
        Device {
            device_id: d.device_id,
            name: d.name,
            created_ms: d.created_ms,
            last_seen_ms: d.last_seen_ms,
            current: d.current,
        }
    }
}

impl From<pb::Member> for Member {
    fn from(m: pb::Member) -> Self {
        Member {
            role: m.role().into(),
            user_id: m.user_id,
            username: m.username,
            joined_seq: m.joined_seq,
        }
    }
}

impl From<pb::MemberReceipt> for MemberReceipt {
    fn from(r: pb::MemberReceipt) -> Self {
        MemberReceipt {
            user_id: r.user_id,
            delivered_seq: r.delivered_seq,
            read_seq: r.read_seq,
        }
    }
}

impl From<pb::ConversationSummary> for Conversation {
    fn from(c: pb::ConversationSummary) -> Self {
        Conversation {
            kind: c.kind().into(),
            my_role: c.my_role().into(),
            conversation_id: c.conversation_id,
            name: c.name,
            last_seq: c.last_seq,
            joined_seq: c.joined_seq,
            read_seq: c.read_seq,
            unread_count: c.unread_count,
            member_count: c.member_count,
            last_message: c.last_message.map(ConversationEvent::from),
            receipts: c.receipts.into_iter().map(MemberReceipt::from).collect(),
        }
    }
}

fn members(list: Vec<pb::Member>) -> Vec<Member> {
    list.into_iter().map(Member::from).collect()
}

impl From<pb::conversation_event::Body> for EventBody {
    fn from(b: pb::conversation_event::Body) -> Self {
        use pb::conversation_event::Body as B;
        match b {
            B::Message(m) => {
                let body = m.body.unwrap_or_default();
                EventBody::Message {
                    client_msg_id: m.client_msg_id,
                    text: body.text,
                    reply_to_seq: body.reply_to_seq,
                }
            }
            B::Created(c) => EventBody::Created {
                kind: c.kind().into(),
                name: c.name,
                members: members(c.members),
            },
            B::MembersAdded(m) => EventBody::MembersAdded {
                members: members(m.members),
            },
            B::MemberRemoved(m) => EventBody::MemberRemoved {
                user_id: m.user_id,
                username: m.username,
                left: m.left,
            },
            B::Renamed(r) => EventBody::Renamed { name: r.name },
            B::RoleChanged(r) => EventBody::RoleChanged {
                role: r.role().into(),
                user_id: r.user_id,
            },
            B::Deleted(_) => EventBody::Deleted,
            B::MessageEdited(e) => EventBody::MessageEdited {
                target_seq: e.target_seq,
                text: e.text,
            },
            B::MessageDeleted(d) => EventBody::MessageDeleted {
                target_seq: d.target_seq,
            },
            B::Reaction(r) => EventBody::Reaction {
                target_seq: r.target_seq,
                emoji: r.emoji,
                added: r.added,
            },
        }
    }
}

impl From<pb::ConversationEvent> for ConversationEvent {
    fn from(e: pb::ConversationEvent) -> Self {
        ConversationEvent {
            conversation_id: e.conversation_id,
            seq: e.seq,
            sender_user_id: e.sender_user_id,
            sender_username: e.sender_username,
            sender_device_id: e.sender_device_id,
            server_time_ms: e.server_time_ms,
            body: e.body.map(EventBody::from).unwrap_or(EventBody::Unknown),
        }
    }
}

impl From<pb::HistoryPage> for HistoryPage {
    fn from(h: pb::HistoryPage) -> Self {
        HistoryPage {
            conversation_id: h.conversation_id,
            events: h.events.into_iter().map(ConversationEvent::from).collect(),
            has_more: h.has_more,
            last_seq: h.last_seq,
        }
    }
}

impl From<pb::PresenceUpdate> for Presence {
    fn from(p: pb::PresenceUpdate) -> Self {
        Presence {
            state: p.state().into(),
            user_id: p.user_id,
            username: p.username,
            last_seen_ms: p.last_seen_ms,
        }
    }
}

impl From<HistoryAnchor> for natter_sdk::HistoryAnchor {
    fn from(a: HistoryAnchor) -> Self {
        match a {
            HistoryAnchor::Before { seq } => natter_sdk::HistoryAnchor::Before(Seq(seq)),
            HistoryAnchor::After { seq } => natter_sdk::HistoryAnchor::After(Seq(seq)),
        }
    }
}

impl NatterEvent {
    /// The app-facing form of an SDK event; `None` for the ones the SDK consumes itself
    /// (handshake, request responses, acks of awaited sends).
    pub fn from_sdk(e: ClientEvent) -> Option<Self> {
        Some(match e {
            ClientEvent::Connected {
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
            ClientEvent::Disconnected { reason } => NatterEvent::Disconnected { reason },
            ClientEvent::AuthFailed(e) => NatterEvent::AuthFailed { code: e.code.into() },
            ClientEvent::Conversations(list) => NatterEvent::Conversations {
                conversations: list.into_iter().map(Conversation::from).collect(),
            },
            ClientEvent::Event(e) => NatterEvent::Event { event: e.into() },
            ClientEvent::Receipt {
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
            ClientEvent::Unread {
                conversation_id,
                read_seq,
                unread_count,
            } => NatterEvent::Unread {
                conversation_id: conversation_id.0,
                read_seq: read_seq.0,
                unread_count,
            },
            ClientEvent::Presence(p) => NatterEvent::PresenceChanged { presence: p.into() },
            ClientEvent::Typing {
                conversation_id,
                user_id,
                username,
            } => NatterEvent::Typing {
                conversation_id: conversation_id.0,
                user_id: user_id.0,
                username,
            },
            ClientEvent::TypingStopped {
                conversation_id,
                user_id,
            } => NatterEvent::TypingStopped {
                conversation_id: conversation_id.0,
                user_id: user_id.0,
            },
            ClientEvent::TypingRejected { conversation_id, error } => NatterEvent::TypingRejected {
                conversation_id: conversation_id.0,
                code: error.code.into(),
            },
            ClientEvent::SendFailed {
                client_msg_id,
                conversation_id,
                error,
            } => NatterEvent::SendFailed {
                conversation_id: conversation_id.0,
                client_msg_id: client_msg_id.0,
                code: error.code.into(),
            },
            ClientEvent::GoAway {
                reason,
                reconnect_after_ms,
            } => NatterEvent::GoAway {
                reason,
                reconnect_after_ms,
            },
            ClientEvent::ConnectionError(e) => NatterEvent::ConnectionError { code: e.code.into() },
            // Handshake, responses and acks of awaited sends are the SDK's own; an event kind
            // newer than this wrapper is not shown until it is mapped here.
            _ => return None,
        })
    }
}
