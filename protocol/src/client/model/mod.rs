//! The app-facing model: what every SDK hands to the app — the events of
//! [`NatterEvent`] and the records requests answer with — defined once, here. Plain data
//! with typed bodies and enums; ids are plain `u64`s (foreign languages have no newtypes).
//!
//! The bindings use these types as they are, with no mirror of their own:
//! - **JavaScript** (natter-wasm) sees them through serde: camelCase fields, tagged unions
//!   with a `type` field (`{ type: "event", event: { body: { type: "message", text } } }`),
//!   enums as strings (`"RATE_LIMITED"`, `"group"`, `"online"`).
//! - **Kotlin, Swift and Python** (natter-ffi) see them through uniffi derives behind the
//!   `uniffi` feature; they land in the bindings' `natter_protocol` module.
//!
//! A new event or record field is added here once and reaches Rust, JS and the generated
//! bindings alike. The conversions from the wire types ([`crate::pb`]) and from
//! [`crate::SessionEvent`] live here too; the app never sees the wire types.
mod event;
#[cfg(test)]
mod tests;

pub use event::NatterEvent;
pub use media::{Attachment, MediaInfo, MediaVariant, PendingUpload, Thumbnail, UploadProgress, UploadState};
pub use profile::Profile;
pub use push::{
    ConversationNotify, NotifyLevel, NotifySettings, PushNotification, PushProvider, PushRegistration,
    PushRegistrations,
};
pub use search::{
    ChannelMatch, LocalCoverage, SearchHit, SearchOrder, SearchQuery, SearchResults, SnippetPart, UserMatch,
};

use crate::client::SendAck as CoreSendAck;
use crate::error::ServerError;
use crate::pb;
use crate::timeline::MessageView;

/// An app-facing record: plain data, camelCase for JS, a uniffi record for the bindings.
macro_rules! record {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[cfg_attr(
            feature = "serde",
            derive(serde::Serialize, serde::Deserialize),
            serde(rename_all = "camelCase")
        )]
        #[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
        pub struct $name { $($body)* }
    };
}

/// Mirrors a wire enum for the app (with conversions both ways): the wire type is prost's
/// `i32` enum, which neither serde's JS names nor uniffi know.
macro_rules! app_enum {
    ($(#[$doc:meta])* $name:ident from $pb:ty, serde $case:literal { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = $case))]
        #[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
        // The variants are the wire enum's; spec/natter.proto documents each.
        #[allow(missing_docs)]
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

app_enum!(
    /// Why the server refused something (PROTOCOL.md §8). JS: `"RATE_LIMITED"`, ….
    ErrorCode from pb::ErrorCode, serde "SCREAMING_SNAKE_CASE" {
        /// Not set.
        Unspecified, BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, TooLarge,
        LimitExceeded, RateLimited, Internal, UnsupportedVersion, UnknownFrame, MalformedFrame,
        FrameTooLarge, UsernameTaken, InvalidCredentials, NotMember, TextTooLong,
        UnknownRequest, ShuttingDown, HandshakeRequired, TokenRevoked, NameTaken,
        StorageUnavailable, MediaNotReady, MediaRejected, QuotaExceeded, OffsetMismatch,
        DeviceMismatch, PushTargetRejected, TokenExpired, InvalidToken, MessageRejected,
    }
);
app_enum!(
    /// A moderation step. JS: `"mute"`, `"unmute"`, `"ban"`, `"unban"`.
    ModerationAction from pb::ModerationAction, serde "lowercase" { Unspecified, Mute, Unmute, Ban, Unban }
);
app_enum!(
    /// Direct, group or channel. JS: `"direct"`, `"group"`, `"channel"`.
    ConversationKind from pb::ConversationKind, serde "lowercase" { Unspecified, Direct, Group, Channel }
);
app_enum!(
    /// A member's role. JS: `"member"`, `"admin"`, `"owner"`.
    Role from pb::Role, serde "lowercase" { Unspecified, Member, Admin, Owner }
);
app_enum!(
    /// Online, away, offline. JS: `"online"`, `"away"`, `"offline"`.
    PresenceState from pb::PresenceState, serde "lowercase" { Unspecified, Online, Away, Offline }
);

record! {
    /// Why the server refused something, as events carry it.
    pub struct ErrorInfo {
        /// The typed reason.
        pub code: ErrorCode,
        /// Human-readable detail for logs; never parse it.
        pub message: String,
        /// For rate limits and drains: when to try again (0: no hint).
        pub retry_after_ms: u32,
    }
}

impl From<&ServerError> for ErrorInfo {
    fn from(e: &ServerError) -> Self {
        ErrorInfo {
            code: e.code.into(),
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
        }
    }
}

record! {
    /// A conversation member.
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
}

record! {
    /// A member's delivered and read cursors.
    pub struct MemberReceipt {
        /// Whose.
        pub user_id: u64,
        /// Everything up to here reached one of their devices.
        pub delivered_seq: u64,
        /// Everything up to here is read.
        pub read_seq: u64,
    }
}

record! {
    /// A conversation as the conversation list shows it.
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
        /// End-to-end encrypted (PROTOCOL.md §12).
        pub encrypted: bool,
        /// How long events are kept, seconds; 0: forever (PROTOCOL.md §5.17).
        pub retention_secs: u64,
        /// `retention_secs` is the conversation's own setting, not the server's default.
        pub retention_set: bool,
        /// Events up to this seq were removed by retention; 0: none.
        pub removed_through: u64,
    }
}

record! {
    /// One event of a conversation: a message, or a change to the conversation.
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
}

/// What a [`ConversationEvent`] says. JS: `{ type: "message", clientMsgId, text, replyToSeq }`, ….
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")
)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum EventBody {
    /// A message.
    Message {
        /// The sender's idempotency key.
        client_msg_id: String,
        /// Its text.
        text: String,
        /// The message it answers, 0 for none.
        reply_to_seq: u64,
        /// Its files (PROTOCOL.md §11.5).
        attachments: Vec<Attachment>,
        /// Users it mentions (PROTOCOL.md §13.2).
        mentions: Vec<u64>,
        /// `@here`: everyone in the group counts as mentioned.
        mention_here: bool,
    },
    /// The conversation was created with these members.
    Created {
        /// Kind.
        kind: ConversationKind,
        /// Name.
        name: String,
        /// Initial members.
        members: Vec<Member>,
        /// End-to-end encrypted (PROTOCOL.md §12.3).
        encrypted: bool,
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
    /// An owner or admin muted, unmuted, banned or unbanned someone (PROTOCOL.md §5.14).
    MemberModerated {
        /// Whom.
        user_id: u64,
        /// Their username.
        username: String,
        /// What.
        action: ModerationAction,
        /// A mute's end, ms since the epoch (0: until unmuted).
        until_ms: u64,
    },
    /// A channel's slow mode changed (0: off).
    SlowModeChanged {
        /// Seconds between two messages of a member.
        interval_secs: u32,
    },
    /// How long the conversation keeps its events changed (PROTOCOL.md §5.17).
    RetentionChanged {
        /// The conversation's own setting in seconds (0: forever); `None`: the server's
        /// default for its kind.
        retention_secs: Option<u64>,
        /// What applies now, seconds; 0: forever.
        effective_secs: u64,
    },
    /// What is left of an event whose sender's account was deleted with its messages
    /// erased (PROTOCOL.md §5.16): `message` when it was a message (show a tombstone),
    /// else an edit or a reaction.
    Erased {
        /// It was a message.
        message: bool,
    },
    /// A user's account was deleted: their messages here are erased (or, `anonymised`,
    /// kept under "deleted-user"), and they are no longer a member.
    UserErased {
        /// Whose.
        user_id: u64,
        /// Kept without their name rather than erased.
        anonymised: bool,
    },
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
    /// An end-to-end encrypted message this device has not opened: what an SDK without
    /// the device's keys shows. SDKs with them hand out the opened message, or
    /// [`EventBody::Undecryptable`].
    Encrypted {
        /// The sender's idempotency key.
        client_msg_id: String,
    },
    /// An end-to-end encrypted message this device cannot open, and why (PROTOCOL.md
    /// §12.6: `not_for_this_device`, `unknown_sender_device`, `olm`, `binding`,
    /// `content`, `malformed`).
    Undecryptable {
        /// The sender's idempotency key.
        client_msg_id: String,
        /// The reason.
        reason: String,
    },
    /// An encrypted conversation's list of a member's devices changed (§12.3).
    DevicesChanged {
        /// Whose devices.
        user_id: u64,
        /// Devices added.
        added: Vec<u64>,
        /// Devices removed.
        removed: Vec<u64>,
    },
    /// An event kind this version does not know (a newer server).
    #[cfg_attr(feature = "serde", serde(other))]
    Unknown,
}

record! {
    /// A page of history.
    pub struct HistoryPage {
        /// Where.
        pub conversation_id: u64,
        /// Oldest first.
        pub events: Vec<ConversationEvent>,
        /// More exist in the direction asked.
        pub has_more: bool,
        /// The conversation's newest seq.
        pub last_seq: u64,
        /// Events up to this seq were removed by retention (PROTOCOL.md §5.17): a page
        /// that reaches them ends there, and the app shows one tombstone; 0: none.
        pub removed_through: u64,
    }
}

record! {
    /// A message is durable on the server ("sent", ✓).
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
}

record! {
    /// A user's presence.
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
}

record! {
    /// One of the user's devices.
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
}

record! {
    /// One message of a [`crate::timeline::Timeline`] as it stands after every event so far.
    pub struct Message {
        /// Its seq.
        pub seq: u64,
        /// Who sent it.
        pub sender_user_id: u64,
        /// Their username.
        pub sender_username: String,
        /// Current text (empty once deleted).
        pub text: String,
        /// The message it answers, 0 for none.
        pub reply_to_seq: u64,
        /// Its files (none once deleted).
        pub attachments: Vec<Attachment>,
        /// Commit time of the original (ms since the epoch).
        pub server_time_ms: u64,
        /// Edited at least once.
        pub edited: bool,
        /// Deleted (a tombstone).
        pub deleted: bool,
        /// Reactions, most used first.
        pub reactions: Vec<Reaction>,
    }
}

record! {
    /// One emoji on a message and who reacted with it.
    pub struct Reaction {
        /// The emoji.
        pub emoji: String,
        /// How many reacted with it.
        pub count: u32,
        /// Who, by id.
        pub user_ids: Vec<u64>,
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
            receipts: list(c.receipts),
            encrypted: c.encrypted,
            retention_secs: c.retention_secs,
            retention_set: c.retention_set,
            removed_through: c.removed_through,
        }
    }
}

/// A list of wire records as app records.
pub fn list<A, B: From<A>>(items: Vec<A>) -> Vec<B> {
    items.into_iter().map(B::from).collect()
}

impl From<pb::conversation_event::Body> for EventBody {
    fn from(b: pb::conversation_event::Body) -> Self {
        use pb::conversation_event::Body as B;
        match b {
            B::Message(m) => {
                let body = m.body.unwrap_or_default();
                if body.encrypted.is_some() {
                    return EventBody::Encrypted {
                        client_msg_id: m.client_msg_id,
                    };
                }
                EventBody::Message {
                    client_msg_id: m.client_msg_id,
                    text: body.text,
                    reply_to_seq: body.reply_to_seq,
                    attachments: list(body.attachments),
                    mentions: body.mentions,
                    mention_here: body.mention_here,
                }
            }
            B::Created(c) => EventBody::Created {
                kind: c.kind().into(),
                name: c.name,
                members: list(c.members),
                encrypted: c.encrypted,
            },
            B::DevicesChanged(d) => EventBody::DevicesChanged {
                user_id: d.user_id,
                added: d.added.iter().map(|k| k.device_id).collect(),
                removed: d.removed,
            },
            B::MembersAdded(m) => EventBody::MembersAdded {
                members: list(m.members),
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
            B::MemberModerated(m) => EventBody::MemberModerated {
                action: m.action().into(),
                user_id: m.user_id,
                username: m.username,
                until_ms: m.until_ms,
            },
            B::SlowModeChanged(s) => EventBody::SlowModeChanged {
                interval_secs: s.interval_secs,
            },
            B::RetentionChanged(r) => EventBody::RetentionChanged {
                retention_secs: r.retention_secs,
                effective_secs: r.effective_secs,
            },
            B::Erased(e) => EventBody::Erased { message: e.message },
            B::UserErased(u) => EventBody::UserErased {
                user_id: u.user_id,
                anonymised: u.anonymised,
            },
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
            body: e.body.map_or(EventBody::Unknown, EventBody::from),
        }
    }
}

impl From<pb::HistoryPage> for HistoryPage {
    fn from(h: pb::HistoryPage) -> Self {
        HistoryPage {
            conversation_id: h.conversation_id,
            events: list(h.events),
            has_more: h.has_more,
            last_seq: h.last_seq,
            removed_through: h.removed_through,
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

impl From<CoreSendAck> for SendAck {
    fn from(a: CoreSendAck) -> Self {
        SendAck {
            conversation_id: a.conversation_id.0,
            seq: a.seq.0,
            server_time_ms: a.server_time_ms,
            duplicate: a.duplicate,
            client_msg_id: a.client_msg_id.0,
        }
    }
}

impl From<&MessageView> for Message {
    fn from(m: &MessageView) -> Self {
        let reactions = m
            .reaction_counts()
            .into_iter()
            .map(|(emoji, count)| Reaction {
                user_ids: m.reactions[&emoji].iter().map(|u| u.0).collect(),
                emoji,
                count: u32::try_from(count).unwrap_or(u32::MAX),
            })
            .collect();
        Message {
            seq: m.seq.0,
            sender_user_id: m.sender.0,
            sender_username: m.sender_username.clone(),
            text: m.text.clone(),
            reply_to_seq: m.reply_to.0,
            attachments: m.attachments.clone(),
            server_time_ms: m.server_time_ms,
            edited: m.edited,
            deleted: m.deleted,
            reactions,
        }
    }
}

mod media;
mod profile;
mod push;
mod search;
