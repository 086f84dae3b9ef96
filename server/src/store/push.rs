//! The push records the store keeps (PROTOCOL.md §13): each user's push registrations (one
//! versioned record per user) and the durable queue of notifications waiting to be sent.
use std::collections::BTreeMap;

use natter_protocol::{ConversationId, DeviceId, UserId};
use serde::{Deserialize, Serialize};

use super::keys::Versioned;

/// One device's push target.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistrationRecord {
    /// Random, base64url.
    pub id: String,
    /// The device it wakes.
    pub device: DeviceId,
    /// `pb::PushProvider` as its number.
    pub provider: i32,
    /// The push service URL, or the APNs/FCM token.
    pub endpoint: String,
    /// The device's P-256 key (65 bytes) and auth secret (16 bytes), RFC 8291.
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
    /// APNs only.
    pub apns_topic: String,
    pub apns_sandbox: bool,
    pub created_ms: u64,
}

impl std::fmt::Debug for PushRegistrationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The endpoint is a capability (whoever has it can wake the device): not logged.
        f.debug_struct("PushRegistrationRecord")
            .field("id", &self.id)
            .field("device", &self.device)
            .field("provider", &self.provider)
            .field("endpoint", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A user's push registrations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    /// Whose.
    pub user: UserId,
    /// At most one per device.
    pub registrations: Vec<PushRegistrationRecord>,
    /// Which messages notify (PROTOCOL.md §13.2).
    #[serde(default)]
    pub rules: NotifyRules,
    /// Bumped on every change; the store replaces a record only over the version before.
    pub version: u64,
}

impl Versioned for PushRecord {
    fn version(&self) -> u64 {
        self.version
    }
}

/// One notification waiting to be sent to one registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    /// `<registration>/<conversation>`: one job per registration and conversation, so a
    /// burst in a conversation becomes one notification (the newest event wins).
    pub id: String,
    pub user: UserId,
    pub device: DeviceId,
    pub registration: String,
    pub conversation: ConversationId,
    /// The newest event to notify about.
    pub seq: u64,
    /// Not sent before this time (coalescing, backoff, Retry-After).
    pub due_ms: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not a notification but its withdrawal: the user read the conversation elsewhere.
    #[serde(default)]
    pub withdraw: bool,
    /// For a device that was attached but did not acknowledge in time (the node holding it
    /// decided): sent whether or not the device is attached (PROTOCOL.md §13.2).
    #[serde(default)]
    pub unacked: bool,
}

impl PushJob {
    /// The due time of a job that is never sent: a marker (what a device was last shown).
    /// 2^52 ms: exact as a Redis score.
    pub const NEVER: u64 = 1 << 52;

    /// The queue id of a registration's job for a conversation.
    pub fn id_for(registration: &str, conversation: ConversationId) -> String {
        format!("{registration}/{}", conversation.0)
    }

    /// The id of the marker saying a registration was shown a notification of a
    /// conversation (its seq: the newest shown), never due.
    pub fn shown_id(registration: &str, conversation: ConversationId) -> String {
        format!("{registration}/{}/shown", conversation.0)
    }

    /// The id of the notification of a registration's attached device that did not
    /// acknowledge a conversation's events in time (apart from the offline job, which
    /// another node may hold and send only if the device is attached nowhere).
    pub fn unacked_id(registration: &str, conversation: ConversationId) -> String {
        format!("{registration}/{}/unacked", conversation.0)
    }

    /// The id of a withdrawal for a registration and conversation.
    pub fn withdraw_id(registration: &str, conversation: ConversationId) -> String {
        format!("{registration}/{}/withdraw", conversation.0)
    }
}

/// One conversation's rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRule {
    /// `NotifyLevel` as its number (0: the user's).
    pub level: i32,
    pub mute_until_ms: u64,
}

/// A user's notification rules, as stored (checked and applied in `push::rules`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyRules {
    /// `NotifyLevel` as its number (0: all).
    pub level: i32,
    pub mute_until_ms: u64,
    /// IANA name; empty: UTC.
    pub time_zone: String,
    pub dnd_start_minute: u32,
    pub dnd_end_minute: u32,
    /// Conversation id → its rule.
    pub conversations: BTreeMap<u64, ConversationRule>,
    /// Where email digests go; empty: none.
    #[serde(default)]
    pub email: String,
    /// Email digests turned off.
    #[serde(default)]
    pub no_email_digest: bool,
    /// `email` was confirmed through the link mailed to it.
    #[serde(default)]
    pub email_verified: bool,
}
