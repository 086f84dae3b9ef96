//! The app-facing push records (PROTOCOL.md §13): a device's registrations and a decrypted
//! notification, converted once from the wire types.
use crate::pb;

app_enum!(
    /// Which messages notify. JS: `"unspecified"` (a conversation: the user's level),
    /// `"all"`, `"mentions"`, `"none"`.
    NotifyLevel from pb::NotifyLevel, serde "lowercase" { Unspecified, All, Mentions, None }
);

record! {
    /// One conversation's notification rule.
    pub struct ConversationNotify {
        /// The conversation.
        pub conversation_id: u64,
        /// `Unspecified`: the user's level.
        pub level: NotifyLevel,
        /// Nothing from it until then (ms since the epoch; 0: not muted).
        pub mute_until_ms: u64,
    }
}

record! {
    /// A user's notification rules, the same on every device (PROTOCOL.md §13.2).
    pub struct NotifySettings {
        /// Which messages notify (`Unspecified` counts as all).
        pub level: NotifyLevel,
        /// Nothing at all until then (ms since the epoch; 0: not muted).
        pub mute_until_ms: u64,
        /// IANA time zone of the do-not-disturb hours ("" = UTC).
        pub time_zone: String,
        /// Do not disturb from this minute after midnight…
        pub dnd_start_minute: u32,
        /// …until this one (may wrap past midnight; equal: off).
        pub dnd_end_minute: u32,
        /// Conversations with a rule of their own.
        pub conversations: Vec<ConversationNotify>,
        /// Where email digests of unread messages go, after a quiet spell ("" = none).
        #[cfg_attr(feature = "serde", serde(default))]
        pub email: String,
        /// Email digests turned off.
        #[cfg_attr(feature = "serde", serde(default))]
        pub no_email_digest: bool,
        /// Set by the server once the address is confirmed through the link mailed to it;
        /// digests go only to a confirmed address.
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "uniffi", uniffi(default = false))]
        pub email_verified: bool,
    }
}

fn level(n: i32) -> NotifyLevel {
    pb::NotifyLevel::try_from(n)
        .unwrap_or(pb::NotifyLevel::Unspecified)
        .into()
}

impl From<pb::NotifySettings> for NotifySettings {
    fn from(s: pb::NotifySettings) -> Self {
        NotifySettings {
            level: level(s.level),
            mute_until_ms: s.mute_until_ms,
            time_zone: s.time_zone,
            dnd_start_minute: s.dnd_start_minute,
            dnd_end_minute: s.dnd_end_minute,
            email: s.email,
            no_email_digest: s.no_email_digest,
            email_verified: s.email_verified,
            conversations: s
                .conversations
                .into_iter()
                .map(|c| ConversationNotify {
                    conversation_id: c.conversation_id,
                    level: level(c.level),
                    mute_until_ms: c.mute_until_ms,
                })
                .collect(),
        }
    }
}

impl From<NotifySettings> for pb::NotifySettings {
    fn from(s: NotifySettings) -> Self {
        pb::NotifySettings {
            level: pb::NotifyLevel::from(s.level) as i32,
            mute_until_ms: s.mute_until_ms,
            time_zone: s.time_zone,
            dnd_start_minute: s.dnd_start_minute,
            dnd_end_minute: s.dnd_end_minute,
            email: s.email,
            no_email_digest: s.no_email_digest,
            email_verified: s.email_verified,
            conversations: s
                .conversations
                .into_iter()
                .map(|c| pb::ConversationNotify {
                    conversation_id: c.conversation_id,
                    level: pb::NotifyLevel::from(c.level) as i32,
                    mute_until_ms: c.mute_until_ms,
                })
                .collect(),
        }
    }
}

app_enum!(
    /// Who wakes the device. JS: `"webpush"`, `"unifiedpush"`, `"apns"`, `"fcm"`.
    PushProvider from pb::PushProvider, serde "lowercase" { Unspecified, WebPush, UnifiedPush, Apns, Fcm }
);

record! {
    /// One push target of this device.
    pub struct PushRegistration {
        /// Names it for removal.
        pub registration_id: String,
        /// The device it wakes.
        pub device_id: u64,
        /// Who wakes it.
        pub provider: PushProvider,
        /// The push service URL, or the APNs/FCM token.
        pub endpoint: String,
        /// When it was registered (ms since the epoch).
        pub created_ms: u64,
    }
}

record! {
    /// This device's push registrations and the server's VAPID key.
    pub struct PushRegistrations {
        /// At most one.
        pub registrations: Vec<PushRegistration>,
        /// 65 bytes uncompressed P-256: a browser's `applicationServerKey`.
        pub vapid_public_key: Vec<u8>,
    }
}

record! {
    /// A notification as the device decrypted it.
    pub struct PushNotification {
        /// Its conversation.
        pub conversation_id: u64,
        /// The newest event it is about.
        pub seq: u64,
        /// Who sent it.
        pub sender_user_id: u64,
        /// Their username.
        pub sender_name: String,
        /// The conversation's name (empty for direct conversations).
        pub conversation_title: String,
        /// The user's unread messages.
        pub badge: u32,
        /// It mentions the user.
        pub mention: bool,
        /// Plain conversations: the start of the text.
        pub preview: String,
        /// Encrypted conversations: the sealed event, when it fitted (open it with the
        /// client's keys); else empty and `fetch` is true. Never in Web Push's JSON.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Vec::is_empty"))]
        pub event: Vec<u8>,
        /// Fetch the event from the server to show it.
        pub fetch: bool,
        /// Notifications with the same id replace each other.
        pub collapse_id: String,
        /// Read on another device: remove the notification with `collapse_id`, show nothing.
        #[cfg_attr(feature = "serde", serde(default))]
        pub withdraw: bool,
    }
}

impl From<pb::PushRegistration> for PushRegistration {
    fn from(r: pb::PushRegistration) -> Self {
        let t = r.target.unwrap_or_default();
        PushRegistration {
            registration_id: r.registration_id,
            device_id: r.device_id,
            provider: pb::PushProvider::try_from(t.provider)
                .unwrap_or(pb::PushProvider::Unspecified)
                .into(),
            endpoint: t.endpoint,
            created_ms: r.created_ms,
        }
    }
}

impl From<pb::PushRegistrations> for PushRegistrations {
    fn from(r: pb::PushRegistrations) -> Self {
        PushRegistrations {
            registrations: r.registrations.into_iter().map(Into::into).collect(),
            vapid_public_key: r.vapid_public_key,
        }
    }
}

impl From<pb::PushPayload> for PushNotification {
    fn from(p: pb::PushPayload) -> Self {
        PushNotification {
            conversation_id: p.conversation_id,
            seq: p.seq,
            sender_user_id: p.sender_user_id,
            sender_name: p.sender_name,
            conversation_title: p.conversation_title,
            badge: p.badge,
            mention: p.mention,
            preview: p.preview,
            event: p.event,
            fetch: p.fetch,
            collapse_id: p.collapse_id,
            withdraw: p.withdraw,
        }
    }
}
