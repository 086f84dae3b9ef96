//! The server API's JSON bodies: what a product's backend sends and gets back. Each derives
//! its OpenAPI schema, so `openapi.json` is these types.
use natter_protocol::pb::{self, conversation_event::Body};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An error: the same codes as the wire protocol (PROTOCOL.md §8.1).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// What went wrong.
    pub error: ErrorBody,
}

/// The code and its detail.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// e.g. `NOT_MEMBER`, `BAD_REQUEST`, `UNAUTHENTICATED`.
    pub code: String,
    /// Human-readable; never parse it.
    pub message: String,
}

/// A user as the product sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// The product's id for the user (a token's `sub`).
    pub id: String,
    /// natter's id.
    pub user_id: u64,
    /// natter's username (how people find each other).
    pub username: String,
    /// Display name ("" = the username).
    pub display_name: String,
    /// Avatar: an https URL or `media:<id>` ("" = none).
    pub avatar: String,
    /// Status text.
    pub status: String,
    /// Driven by the product's backend.
    pub bot: bool,
    /// Suspended: no login, and the API does not act for them, until reactivated.
    pub deactivated: bool,
}

/// Make a user (or get the one that exists for this id).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// The product's id for the user, 1–255 bytes.
    pub id: String,
    /// The username to try first (else one derived from `id`).
    #[serde(default)]
    pub username: Option<String>,
    /// Display name, at most 64 characters.
    #[serde(default)]
    pub display_name: Option<String>,
    /// An https URL.
    #[serde(default)]
    pub avatar: Option<String>,
    /// Status text, at most 140 characters.
    #[serde(default)]
    pub status: Option<String>,
    /// A bot account.
    #[serde(default)]
    pub bot: bool,
}

/// Change a profile.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// New avatar: an https URL or `media:<id>` of an image the user uploaded ("" clears it).
    #[serde(default)]
    pub avatar: Option<String>,
    /// New status text ("" clears it).
    #[serde(default)]
    pub status: Option<String>,
}

/// Direct, group or channel.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Two people.
    Direct,
    /// Invited members.
    Group,
    /// Public, by name.
    Channel,
}

impl Kind {
    /// The wire's kind.
    pub fn from_wire(k: pb::ConversationKind) -> Self {
        match k {
            pb::ConversationKind::Direct => Kind::Direct,
            pb::ConversationKind::Channel => Kind::Channel,
            _ => Kind::Group,
        }
    }
}

/// A member's role.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and writes.
    Member,
    /// Also manages members.
    Admin,
    /// Also deletes the conversation.
    Owner,
}

impl From<pb::Role> for Role {
    fn from(r: pb::Role) -> Self {
        match r {
            pb::Role::Owner => Role::Owner,
            pb::Role::Admin => Role::Admin,
            _ => Role::Member,
        }
    }
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Owner => pb::Role::Owner,
            Role::Admin => pb::Role::Admin,
            Role::Member => pb::Role::Member,
        }
    }
}

/// Make a conversation, as `creator`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// What kind.
    pub kind: Kind,
    /// Group or channel name (a channel's: 1–64 of `a-z 0-9 _ -`).
    #[serde(default)]
    pub name: Option<String>,
    /// The product's id of the user who makes it (its owner).
    pub creator: String,
    /// Product ids of the other members (a direct conversation: exactly one).
    #[serde(default)]
    pub members: Vec<String>,
}

/// A conversation and its members.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    /// Its id.
    pub conversation_id: u64,
    /// What kind.
    pub kind: Kind,
    /// Group or channel name; for a direct conversation, the other member's username.
    pub name: String,
    /// The seq of its latest event.
    pub last_seq: u64,
    /// Who is in it.
    pub members: Vec<Member>,
    /// How long it keeps its events, seconds (0: forever).
    pub retention_secs: u64,
    /// Events up to this seq were removed by retention (0: none).
    pub removed_through: u64,
}

/// One member.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Member {
    /// natter's id.
    pub user_id: u64,
    /// Username.
    pub username: String,
    /// Role.
    pub role: Role,
    /// The seq at which they joined.
    pub joined_seq: u64,
}

/// Add members, as `by` (an admin or owner).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// Who adds them (the product's id).
    pub by: String,
    /// Product ids of the new members.
    pub users: Vec<String>,
}

/// Send a message as `sender` (a member). Repeat a POST with the same `Idempotency-Key`
/// header and it is sent once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The product's id of the sender (a user or a bot).
    pub sender: String,
    /// The text.
    pub text: String,
    /// The seq of the message this one answers.
    #[serde(default)]
    pub reply_to_seq: u64,
    /// Files to attach: media ids of finished uploads by the sender (tus on `/tus` with
    /// this API key and `Natter-User: <sender>`; the id is in `Natter-Media-Id`).
    #[serde(default)]
    pub attachments: Vec<String>,
}

/// Change a message's text, as its sender.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// The product's id of the sender.
    pub sender: String,
    /// The new text.
    pub text: String,
}

/// A committed send.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Sent {
    /// Where.
    pub conversation_id: u64,
    /// Its place in the conversation.
    pub seq: u64,
    /// Commit time, ms since the epoch.
    pub server_time_ms: u64,
    /// True when this was a repeat of an earlier request (same Idempotency-Key).
    pub duplicate: bool,
}

/// One event of a conversation's log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Its place in the conversation.
    pub seq: u64,
    /// Who caused it.
    pub sender_user_id: u64,
    /// Their username.
    pub sender_username: String,
    /// Commit time, ms since the epoch.
    pub server_time_ms: u64,
    /// `message`, `edit`, `delete`, `reaction`, `created`, `members_added`,
    /// `member_removed`, `renamed`, `role_changed`, `deleted`, `devices_changed`,
    /// `member_moderated`, `slow_mode_changed`, `erased` (a deleted account's message, edit
    /// or reaction), `user_erased`, `retention_changed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A message's (or an edit's) text; "" for an encrypted one.
    pub text: String,
    /// The message an edit, delete or reaction is about (a reply: what it answers).
    pub target_seq: u64,
    /// A reaction's emoji.
    pub emoji: String,
    /// Whether a message is end-to-end encrypted (the server cannot read it).
    pub encrypted: bool,
    /// The user a `member_removed`, `role_changed`, `member_moderated` or `user_erased`
    /// event is about (0 otherwise).
    pub user_id: u64,
}

impl From<&pb::ConversationEvent> for Event {
    fn from(e: &pb::ConversationEvent) -> Self {
        let (kind, text, target_seq, emoji, encrypted) = match &e.body {
            Some(Body::Message(m)) => {
                let b = m.body.clone().unwrap_or_default();
                ("message", b.text, b.reply_to_seq, String::new(), b.encrypted.is_some())
            }
            Some(Body::MessageEdited(x)) => ("edit", x.text.clone(), x.target_seq, String::new(), false),
            Some(Body::MessageDeleted(x)) => ("delete", String::new(), x.target_seq, String::new(), false),
            Some(Body::Reaction(x)) => ("reaction", String::new(), x.target_seq, x.emoji.clone(), false),
            Some(Body::Created(_)) => ("created", String::new(), 0, String::new(), false),
            Some(Body::MembersAdded(_)) => ("members_added", String::new(), 0, String::new(), false),
            Some(Body::MemberRemoved(_)) => ("member_removed", String::new(), 0, String::new(), false),
            Some(Body::Renamed(x)) => ("renamed", x.name.clone(), 0, String::new(), false),
            Some(Body::RoleChanged(_)) => ("role_changed", String::new(), 0, String::new(), false),
            Some(Body::Deleted(_)) => ("deleted", String::new(), 0, String::new(), false),
            Some(Body::DevicesChanged(_)) => ("devices_changed", String::new(), 0, String::new(), false),
            Some(Body::MemberModerated(_)) => ("member_moderated", String::new(), 0, String::new(), false),
            Some(Body::SlowModeChanged(_)) => ("slow_mode_changed", String::new(), 0, String::new(), false),
            Some(Body::RetentionChanged(_)) => ("retention_changed", String::new(), 0, String::new(), false),
            Some(Body::Erased(_)) => ("erased", String::new(), 0, String::new(), false),
            Some(Body::UserErased(_)) => ("user_erased", String::new(), 0, String::new(), false),
            None => ("unknown", String::new(), 0, String::new(), false),
        };
        Event {
            seq: e.seq,
            sender_user_id: e.sender_user_id,
            sender_username: e.sender_username.clone(),
            server_time_ms: e.server_time_ms,
            kind: kind.into(),
            text,
            target_seq,
            emoji,
            encrypted,
            user_id: match &e.body {
                Some(Body::MemberRemoved(x)) => x.user_id,
                Some(Body::RoleChanged(x)) => x.user_id,
                Some(Body::MemberModerated(x)) => x.user_id,
                Some(Body::UserErased(x)) => x.user_id,
                _ => 0,
            },
        }
    }
}

/// A page of a conversation's log, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    /// The events.
    pub events: Vec<Event>,
    /// More in the direction asked for.
    pub has_more: bool,
    /// The conversation's latest seq.
    pub last_seq: u64,
    /// Events up to this seq were removed by the conversation's retention (0: none); a
    /// page reaching them ends there.
    pub removed_through: u64,
}

/// Where a history page starts.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The reader: the product's id of a member.
    pub user: String,
    /// Events before this seq (0 or absent with no `after`: the latest).
    #[serde(default)]
    pub before: Option<u64>,
    /// Events after this seq, oldest first.
    #[serde(default)]
    pub after: Option<u64>,
    /// At most this many (default and maximum: the server's history page, 200).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Who reads (for a GET on a conversation).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsUser {
    /// The product's id of a member.
    pub user: String,
}

/// Subscribe a URL to event types.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries go: an http or https URL.
    pub url: String,
    /// Any of `message.created`, `message.edited`, `message.deleted`, `reaction`,
    /// `member.joined`, `member.left`, `conversation.created`, `conversation.deleted`,
    /// `user.created`, `user.deleted`, `message.reported`.
    pub events: Vec<String>,
}

/// A webhook subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// Its id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// What it hears.
    pub events: Vec<String>,
    /// The HMAC-SHA256 key deliveries are signed with (only when made).
    pub secret: Option<String>,
    /// Events committed from then on are delivered.
    pub created_ms: u64,
}

pub use crate::webhooks::DeadLetter;

/// What a replay did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// Delivered now (and gone from the list).
    pub delivered: usize,
    /// Failed again (still listed).
    pub still_dead: usize,
}

/// A moderation step, as `by` (an owner or admin).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Moderate {
    /// Who moderates (the product's id).
    pub by: String,
    /// Whom (the product's id).
    pub user: String,
    /// `mute`, `unmute`, `ban` or `unban`.
    pub action: String,
    /// A mute's end, ms since the epoch (0 or absent: until unmuted).
    #[serde(default)]
    pub until_ms: u64,
}

/// A channel's slow mode, as `by` (an owner or admin).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowMode {
    /// Who sets it.
    pub by: String,
    /// Seconds between two messages of a member (0: off).
    pub interval_secs: u32,
}

/// How long a conversation keeps its events, as `by` (its owner; either member of a
/// direct conversation).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Who sets it.
    pub by: String,
    /// Seconds to keep events (0: forever); absent or null: the server's default for the
    /// conversation's kind.
    #[serde(default)]
    pub retention_secs: Option<u64>,
}

/// A member's report of a message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// Pass as `after` for the next page.
    pub key: String,
    /// Where.
    pub conversation_id: u64,
    /// Which event.
    pub seq: u64,
    /// Who reported it.
    pub reporter_user_id: u64,
    /// Their username.
    pub reporter_username: String,
    /// Whose message it is.
    pub sender_user_id: u64,
    /// Its text ("" when encrypted).
    pub text: String,
    /// Why.
    pub reason: String,
    /// When.
    pub created_ms: u64,
}

/// A page of reports.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportsQuery {
    /// The last `key` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
    /// At most this many (default 100, at most 500).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// An API key as listed (never its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyInfo {
    /// Its id (`nk_<id>_…`).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// `read`, `write` or `admin`.
    pub scope: String,
    /// When it was made.
    pub created_ms: u64,
    /// Revoked keys never authenticate again.
    pub revoked: bool,
}

/// Make an API key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What it is for.
    pub name: String,
    /// `read`, `write` or `admin`.
    pub scope: String,
}

/// A new key: its secret is shown only here.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewApiKey {
    /// The key.
    pub key: ApiKeyInfo,
    /// `nk_<id>_<secret>`: the `Authorization: Bearer` value.
    pub secret: String,
}
