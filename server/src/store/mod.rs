//! Storage behind one domain-level, async [`Store`] trait: accounts, devices, conversations,
//! membership, the event log, idempotency keys and read cursors.
//!
//! Backends implement whole domain operations (not get/put of bytes) so each can make them
//! atomic in its own way: sled with one atomic batch per commit, Redis with scripts. Every
//! backend (memory, sled, Redis, Redis Cluster) runs the one shared suite in `suite`. This module must not know about
//! connections, shards or the wire codec beyond the event type it stores.
//!
//! May import: `clock`, `error`. Must not import any other layer: it is the bottom one.
use async_trait::async_trait;
use natter_protocol::pb;
use natter_protocol::{ConversationId, DeviceId, Seq, UserId};
use serde::{Deserialize, Serialize};

pub mod backup;
pub mod content_keys;
pub mod docs;
pub mod keys;
pub mod media;
pub mod memory;
pub mod push;
pub mod redis_store;
mod sled_health;
pub mod sled_store;
#[cfg(test)]
pub mod suite;
/// Throwaway `redis-server` processes for tests (feature `test-support`; never in the
/// release library).
#[cfg(any(test, feature = "test-support"))]
pub mod testredis;

pub use docs::Doc;
pub use keys::{
    BackupKeyRecord, DeviceKeysRecord, EncryptedDevice, KeyBackupRecord, KeyState, OneTimeKeyRecord, UserKeyRecord,
    Versioned,
};
pub use media::{MediaId, MediaRecord, MediaRef, MediaState, ReadyInfo, ThumbRecord, UploadId};
pub use memory::MemoryStore;
pub use push::{PushJob, PushRecord, PushRegistrationRecord};
pub use redis_store::{Durability, RedisConn, RedisStore};
pub use sled_store::SledStore;

/// Wire enums in stored records: written as their protobuf numbers (the format the
/// backends have always stored), read back strictly.
mod wire_enum {
    macro_rules! wire_enum {
        ($name:ident, $ty:ty) => {
            pub mod $name {
                use serde::{de::Error, Deserialize, Deserializer, Serializer};

                pub fn serialize<S: Serializer>(v: &$ty, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_i32(*v as i32)
                }

                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                    let n = i32::deserialize(d)?;
                    match <$ty>::try_from(n) {
                        Ok(v) if n != 0 => Ok(v),
                        _ => Err(D::Error::custom(format!(
                            concat!("unknown ", stringify!($name), " {}"),
                            n
                        ))),
                    }
                }
            }
        };
    }
    wire_enum!(kind, natter_protocol::pb::ConversationKind);
    wire_enum!(role, natter_protocol::pb::Role);
}

/// A storage failure. Domain refusals (taken names) are typed; the rest is `Backend`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The username belongs to another account.
    #[error("username is taken")]
    UsernameTaken,
    /// The backend failed; the operation did not take effect.
    #[error("storage backend: {0}")]
    Backend(String),
    /// Stored data could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The backend cannot make writes durable now (disk full, I/O error, unreachable or
    /// read-only): nothing of the write was acknowledged; retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// `create_media` only: the owner's media would exceed the quota.
    #[error("media quota exceeded")]
    QuotaExceeded,
    /// `update_media` and `put_key_state` only: the record changed (or went) since it
    /// was read.
    #[error("record changed concurrently")]
    Changed,
    /// `commit` only: these conversations had moved on (another node committed first), so
    /// their commits were not applied; every other conversation's commits were.
    #[error("conversations changed concurrently: {0:?}")]
    Conflict(Vec<ConversationId>),
}

/// The one mapping of storage failures onto the wire (PROTOCOL.md §8): domain refusals keep
/// their meaning; everything else is `INTERNAL` with an incident id ([`crate::error`]).
impl From<StoreError> for natter_protocol::ServerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => {
                natter_protocol::ServerError::new(pb::ErrorCode::UsernameTaken, "username is taken")
            }
            StoreError::QuotaExceeded => {
                natter_protocol::ServerError::new(pb::ErrorCode::QuotaExceeded, "media quota exceeded")
            }
            // Logged once by the backend when it goes down, not once per refused request.
            StoreError::Unavailable(_) => natter_protocol::ServerError {
                code: pb::ErrorCode::StorageUnavailable,
                message: "storage unavailable: writes are refused until it is writable again".into(),
                retry_after_ms: sled_health::RETRY_AFTER_MS,
                device_mismatch: None,
            },
            other => crate::error::internal(&other),
        }
    }
}

/// An account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Its id.
    pub id: UserId,
    /// Unique, immutable.
    pub username: String,
    /// PHC-format argon2id hash.
    pub password_hash: String,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
}

/// A logged-in device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its id.
    pub id: DeviceId,
    /// Its user.
    pub user: UserId,
    /// The user's username.
    pub username: String,
    /// Display name.
    pub name: String,
    /// Login time.
    pub created_ms: u64,
    /// Set when the token is revoked; a revoked device never authenticates again.
    pub revoked: bool,
}

/// A conversation's own attributes (members are separate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationMeta {
    /// Its id.
    pub id: ConversationId,
    /// Direct, group or channel (stored as its wire number; an unknown one reads as
    /// [`StoreError::Corrupt`], never as a guess).
    #[serde(with = "wire_enum::kind")]
    pub kind: pb::ConversationKind,
    /// Group/channel name; empty for direct conversations.
    pub name: String,
    /// Creation time.
    pub created_ms: u64,
    /// Deleted conversations accept nothing and show nothing.
    pub deleted: bool,
    /// End-to-end encrypted (PROTOCOL.md §12): messages carry only envelopes.
    #[serde(default)]
    pub encrypted: bool,
    /// Encrypted conversations: the members' devices with keys as of the newest event,
    /// by user and device.
    #[serde(default)]
    pub devices: Vec<EncryptedDevice>,
    /// Mutes, bans and slow mode (PROTOCOL.md §5.14).
    #[serde(default)]
    pub moderation: Moderation,
    /// The conversation's own retention in seconds (0: forever); `None`: the server's
    /// default for its kind (PROTOCOL.md §5.17).
    #[serde(default)]
    pub retention_secs: Option<u64>,
}

/// A group's or channel's moderation state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moderation {
    /// Muted members and when each mute ends (`u64::MAX`: until unmuted).
    #[serde(default)]
    pub muted: Vec<(UserId, u64)>,
    /// Users who may not join or be added.
    #[serde(default)]
    pub banned: Vec<UserId>,
    /// Seconds between two messages of a member (0: off).
    #[serde(default)]
    pub slow_mode_secs: u32,
}

/// One member of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member.
    pub user: UserId,
    /// Their username (immutable, kept here for display).
    pub username: String,
    /// Owner, admin or member (stored as its wire number; an unknown one reads as
    /// [`StoreError::Corrupt`]).
    #[serde(with = "wire_enum::role")]
    pub role: pb::Role,
    /// The seq of the event that made them a member.
    pub joined_seq: Seq,
}

/// A conversation as the shard that owns it needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationRecord {
    /// Attributes.
    pub meta: ConversationMeta,
    /// Members by user.
    pub members: Vec<MemberRecord>,
    /// The newest seq; 0 if no events.
    pub last_seq: Seq,
}

/// What a send's idempotency key maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRecord {
    /// The seq the send got.
    pub seq: Seq,
    /// Its commit time.
    pub server_time_ms: u64,
}

/// What later events did to a message (PROTOCOL.md §5.9): kept so the owner can check edits,
/// deletes and reactions without replaying the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    /// Deleted: no more edits or reactions.
    pub deleted: bool,
    /// Edited at least once.
    pub edited: bool,
    /// Emoji → users who reacted with it.
    pub reactions: std::collections::BTreeMap<String, Vec<UserId>>,
}

/// A user's presence settings and history that must survive restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// Contacts see last seen as 0.
    pub hide_last_seen: bool,
    /// When the user was last online (ms since the epoch), 0 if never.
    pub last_seen_ms: u64,
}

/// One event and the state changes that commit with it, atomically.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    /// The event, seq assigned.
    pub event: pb::ConversationEvent,
    /// New conversation attributes, when they change (creation, rename, delete).
    pub meta: Option<ConversationMeta>,
    /// Members added or changed.
    pub upsert_members: Vec<MemberRecord>,
    /// Members removed.
    pub remove_members: Vec<UserId>,
    /// The send's idempotency key: (sender, client message id).
    pub idempotency: Option<(UserId, String)>,
    /// Read cursors moved by this event (a sender has read up to their own message).
    pub read_cursors: Vec<(UserId, Seq)>,
    /// The new state of the message this event edits, deletes or reacts to.
    pub message_state: Option<(Seq, MessageState)>,
}

/// Which slice of a conversation's log to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The newest `limit` events with seq < before (`Seq(0)`: from the end).
    Before(Seq),
    /// The oldest `limit` events with seq > after.
    After(Seq),
}

/// Storage for everything durable. Every method is atomic; `commit` is durable when it
/// returns `Ok` (guarantee 2). A conversation's commits apply only if its last seq is the
/// one before the first of them; otherwise `commit` refuses them with
/// [`StoreError::Conflict`] (a single-writer backend like sled never sees that).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Create an account.
    async fn create_user(&self, username: &str, password_hash: &str, now_ms: u64) -> Result<UserId, StoreError>;
    /// Look an account up by username.
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Up to `limit` users whose username starts with `prefix`, in username order, without
    /// those who asked not to be listed.
    async fn users_by_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<UserRecord>, StoreError>;
    /// Whether `user` is left out of [`Store::users_by_prefix`].
    async fn set_unlisted(&self, user: UserId, unlisted: bool) -> Result<(), StoreError>;
    /// Create a device for a user with the hash of its access token.
    async fn create_device(
        &self,
        user: UserId,
        username: &str,
        name: &str,
        token_hash: [u8; 32],
        now_ms: u64,
    ) -> Result<DeviceId, StoreError>;
    /// The live (not revoked) device holding this token hash.
    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError>;
    /// Revoke a device's token. False if the user has no such live device.
    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError>;
    /// A user's devices, revoked ones included.
    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceRecord>, StoreError>;

    /// The document under `(space, key)` ([`docs`]).
    async fn doc(&self, space: &str, key: &str) -> Result<Option<Doc>, StoreError>;
    /// Write the document if its version is `expected` (0: absent); it then has version
    /// `expected + 1`. `Ok(false)` when the version differs (nothing written).
    async fn put_doc(&self, space: &str, key: &str, expected: u64, value: Vec<u8>) -> Result<bool, StoreError>;
    /// Remove the document. False if there was none.
    async fn delete_doc(&self, space: &str, key: &str) -> Result<bool, StoreError>;
    /// Documents of `space` with keys after `after` (exclusive; "" from the start), in key
    /// byte order, at most `limit`.
    async fn docs(&self, space: &str, after: &str, limit: usize) -> Result<Vec<(String, Doc)>, StoreError>;

    /// A fresh conversation id, never handed out before.
    async fn allocate_conversation_id(&self) -> Result<ConversationId, StoreError>;
    /// The direct conversation of a pair (its plain one, or with `encrypted` its end-to-end
    /// encrypted one): binds `candidate` if the pair has none yet and returns whichever id
    /// is bound (first writer wins).
    async fn claim_direct(
        &self,
        a: UserId,
        b: UserId,
        encrypted: bool,
        candidate: ConversationId,
    ) -> Result<ConversationId, StoreError>;
    /// The channel with this name: binds `candidate` if the name is free.
    async fn claim_channel_name(&self, name: &str, candidate: ConversationId) -> Result<ConversationId, StoreError>;
    /// The channel with this name, if any.
    async fn channel_by_name(&self, name: &str) -> Result<Option<ConversationId>, StoreError>;
    /// Up to `limit` channel names starting with `prefix` and their conversations, in name
    /// order (deleted channels included: the caller checks).
    async fn channels_by_prefix(&self, prefix: &str, limit: usize)
        -> Result<Vec<(String, ConversationId)>, StoreError>;
    /// A conversation with its members and last seq.
    async fn load_conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError>;
    /// Up to `limit` conversations with ids above `after`, ascending, each with its last
    /// seq (deleted ones too): how a derived view (the search index) finds what it missed.
    /// Empty when there are no more.
    async fn conversations_after(
        &self,
        after: ConversationId,
        limit: usize,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError>;
    /// Persist events (with their state changes) in order, atomically and durably.
    async fn commit(&self, batch: &[Commit]) -> Result<(), StoreError>;
    /// Replace logged events in place, each at its own seq (PROTOCOL.md §5.16: a deleted
    /// account's events rewritten); seqs with no event are skipped. Durable when it returns.
    async fn rewrite_events(&self, conv: ConversationId, events: &[pb::ConversationEvent]) -> Result<(), StoreError>;
    /// Remove the events with seq <= `through` and what is kept of their messages (their
    /// state), and raise the conversation's removal floor to `through` (PROTOCOL.md §5.17:
    /// retention). Atomic and durable when it returns; the caller bounds the batch (it
    /// removes at most `through - removed_through` events). The newest seq stays what it
    /// was even when every event is gone, so no seq is ever handed out twice.
    async fn remove_events(&self, conv: ConversationId, through: Seq) -> Result<(), StoreError>;
    /// Every event up to this seq was removed by retention (0: none).
    async fn removed_through(&self, conv: ConversationId) -> Result<Seq, StoreError>;
    /// Make every stored copy of the user's events unreadable that a rewrite could not
    /// reach (the embedded store destroys the user's content key; see
    /// [`content_keys`]). Called once their events are rewritten.
    async fn forget_user(&self, user: UserId) -> Result<(), StoreError>;
    /// The committed send with this idempotency key, if any.
    async fn find_sent(
        &self,
        conv: ConversationId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<SentRecord>, StoreError>;
    /// The message event at `seq` with its current state; `None` if there is no event there
    /// or it is not a message.
    async fn message(
        &self,
        conv: ConversationId,
        seq: Seq,
    ) -> Result<Option<(pb::ConversationEvent, MessageState)>, StoreError>;
    /// A page of events in ascending seq, and whether more exist in that direction.
    async fn events(
        &self,
        conv: ConversationId,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<pb::ConversationEvent>, bool), StoreError>;
    /// Who sent the messages in `(after, upto]`, in seq order (one entry per message), for
    /// routing receipts; `None` when more than `limit` events lie in that range (the caller
    /// then tells every member). Backends may read less than whole events: the embedded
    /// store reads the sealed events' plain headers and opens nothing (so a message erased
    /// with its sender's account may still name that sender: telling a deleted user costs
    /// nothing).
    async fn message_senders(
        &self,
        conv: ConversationId,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Option<Vec<UserId>>, StoreError> {
        let span = upto.0.saturating_sub(after.0);
        if span == 0 {
            return Ok(Some(Vec::new()));
        }
        let want = usize::try_from(span).unwrap_or(usize::MAX).min(limit);
        let (events, more) = self.events(conv, Page::After(after), want).await?;
        if more && events.last().is_some_and(|e| e.seq < upto.0) {
            return Ok(None);
        }
        Ok(Some(
            events
                .iter()
                .filter(|e| e.seq <= upto.0 && matches!(e.body, Some(pb::conversation_event::Body::Message(_))))
                .map(|e| UserId(e.sender_user_id))
                .collect(),
        ))
    }
    /// The conversations a user is a member of.
    async fn user_conversations(&self, user: UserId) -> Result<Vec<ConversationId>, StoreError>;
    /// A user's read cursor in a conversation (0 if none).
    async fn read_cursor(&self, user: UserId, conv: ConversationId) -> Result<Seq, StoreError>;
    /// Move a read cursor forward; never backward. Returns the cursor after the call.
    async fn advance_read_cursor(&self, user: UserId, conv: ConversationId, seq: Seq) -> Result<Seq, StoreError>;
    /// A user's delivered cursor in a conversation (0 if none).
    async fn delivered_cursor(&self, user: UserId, conv: ConversationId) -> Result<Seq, StoreError>;
    /// Move a delivered cursor forward; never backward. Returns the cursor after the call.
    async fn advance_delivered_cursor(&self, user: UserId, conv: ConversationId, seq: Seq) -> Result<Seq, StoreError>;
    /// A user's presence record (default if none).
    async fn presence_record(&self, user: UserId) -> Result<PresenceRecord, StoreError>;
    /// Replace a user's presence record.
    async fn put_presence_record(&self, user: UserId, rec: PresenceRecord) -> Result<(), StoreError>;
    /// Messages by others after `after`, counting at most `cap`; and the newest message.
    async fn unread_and_last_message(
        &self,
        conv: ConversationId,
        user: UserId,
        after: Seq,
        cap: u32,
    ) -> Result<(u32, Option<pb::ConversationEvent>), StoreError>;

    /// Record a new upload, counting its declared size against its owner's media (at most
    /// `quota` bytes in all, else [`StoreError::QuotaExceeded`] and nothing recorded).
    async fn create_media(&self, rec: &MediaRecord, quota: u64) -> Result<(), StoreError>;
    /// A media record by its file id.
    async fn media(&self, id: &MediaId) -> Result<Option<MediaRecord>, StoreError>;
    /// A media record by its upload id.
    async fn media_by_upload(&self, id: &UploadId) -> Result<Option<MediaRecord>, StoreError>;
    /// Replace a record whose stored `version` is `rec.version - 1`; otherwise
    /// [`StoreError::Changed`] and nothing written. Durable when it returns.
    async fn update_media(&self, rec: &MediaRecord) -> Result<(), StoreError>;
    /// Remove a record and give its size back to the owner's quota; false if it was gone.
    async fn delete_media(&self, id: &MediaId) -> Result<bool, StoreError>;
    /// Bytes of media the user holds (declared sizes of every record they own).
    async fn media_usage(&self, user: UserId) -> Result<u64, StoreError>;
    /// Up to `limit` unfinished uploads whose `expires_ms` is before `now_ms`.
    async fn expired_uploads(&self, now_ms: u64, limit: usize) -> Result<Vec<MediaId>, StoreError>;
    /// A random 32-byte secret named `name`, made on first use and the same for every node
    /// on this storage from then on (signed media URLs).
    async fn shared_secret(&self, name: &str) -> Result<[u8; 32], StoreError>;

    /// A device's end-to-end encryption keys (PROTOCOL.md §12.1), if it published any.
    async fn key_state(&self, user: UserId, device: DeviceId) -> Result<Option<KeyState>, StoreError>;
    /// The key records of every device of `user` that has one (revoked devices included
    /// until their record is deleted: callers keep only live devices).
    async fn user_key_states(&self, user: UserId) -> Result<Vec<KeyState>, StoreError>;
    /// Write a key record: version 1 creates it (none may exist), a later version replaces
    /// the record at `rec.version - 1`; otherwise [`StoreError::Changed`] and nothing
    /// written. Durable when it returns.
    async fn put_key_state(&self, rec: &KeyState) -> Result<(), StoreError>;
    /// Delete a device's key record; false if it had none.
    async fn delete_key_state(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError>;

    /// The user's signing key (PROTOCOL.md §12.12), if a device published one.
    async fn user_key(&self, user: UserId) -> Result<Option<UserKeyRecord>, StoreError>;
    /// Replace the user's signing key record if the current one is at `rec.version - 1`
    /// (0: none); otherwise [`StoreError::Changed`] and nothing written. Durable when it
    /// returns.
    async fn put_user_key(&self, rec: &UserKeyRecord) -> Result<(), StoreError>;

    /// The user's key backup (PROTOCOL.md §12.9), if one was set up.
    async fn key_backup(&self, user: UserId) -> Result<Option<KeyBackupRecord>, StoreError>;
    /// Make `rec` the user's backup if the current one is at `rec.version - 1` (0: none);
    /// otherwise [`StoreError::Changed`] and nothing written. Durable when it returns.
    async fn put_key_backup(&self, rec: &KeyBackupRecord) -> Result<(), StoreError>;
    /// Add backed-up keys of `user`, each replacing the one for the same message (of any
    /// version). Durable when it returns.
    async fn put_backup_keys(&self, user: UserId, keys: &[BackupKeyRecord]) -> Result<(), StoreError>;
    /// Up to `limit` of `user`'s backed-up keys of `version` in `conv`, in
    /// [`BackupKeyRecord::id`] order after `after` (empty: from the first).
    async fn backup_keys(
        &self,
        user: UserId,
        conv: ConversationId,
        version: u64,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<BackupKeyRecord>, StoreError>;

    /// A user's push registrations (PROTOCOL.md §13.1), if any were ever made.
    async fn push_record(&self, user: UserId) -> Result<Option<PushRecord>, StoreError>;
    /// Replace a user's push registrations, only over the version before `rec.version`;
    /// otherwise [`StoreError::Changed`].
    async fn put_push_record(&self, rec: &PushRecord) -> Result<(), StoreError>;
    /// Queue a notification, durably. A job with the same id that is still queued takes the
    /// larger seq and keeps its due time and attempts (a burst becomes one notification).
    async fn enqueue_push(&self, job: &PushJob) -> Result<(), StoreError>;
    /// [`Self::enqueue_push`] for several jobs, durable together (one flush where the
    /// backend can).
    async fn enqueue_pushes(&self, jobs: &[PushJob]) -> Result<(), StoreError> {
        for job in jobs {
            self.enqueue_push(job).await?;
        }
        Ok(())
    }
    /// Queued notifications due at `now_ms`, earliest first.
    async fn due_pushes(&self, now_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError>;
    /// Take the notifications due at `now_ms` (earliest first) for the caller to send: each
    /// becomes due again at `until_ms`, so no other node takes it meanwhile, and one whose
    /// sender died is sent after that. Returned with `due_ms = until_ms`.
    async fn claim_pushes(&self, now_ms: u64, until_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError>;
    /// A job was sent up to `sent_seq`: deleted if it holds nothing newer; otherwise its
    /// newer events are due at `next_due_ms` (with its attempts reset).
    async fn finish_push(&self, id: &str, sent_seq: u64, next_due_ms: u64) -> Result<(), StoreError>;
    /// A job failed: due again at `due_ms` after `attempts` failures (nothing if it is gone).
    async fn retry_push(&self, id: &str, due_ms: u64, attempts: u32) -> Result<(), StoreError>;
    /// Drop a job (its registration is gone).
    async fn drop_push(&self, id: &str) -> Result<(), StoreError>;
    /// One queued job (or marker), as it stands.
    async fn get_push(&self, id: &str) -> Result<Option<PushJob>, StoreError>;
}

/// 32 fresh random bytes.
pub fn random_secret() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut k);
    k
}

/// A stored secret read back.
fn secret_from(b: &[u8]) -> Result<[u8; 32], StoreError> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt("secret of the wrong length".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_roles_are_stored_as_wire_numbers_and_read_back_strictly() {
        let meta = ConversationMeta {
            id: ConversationId(3),
            kind: pb::ConversationKind::Channel,
            name: "c".into(),
            created_ms: 1,
            deleted: false,
            devices: Vec::new(),
            moderation: Default::default(),
            retention_secs: None,
            encrypted: false,
        };
        let json = serde_json::to_string(&meta).unwrap();
        assert!(
            json.contains(&format!("\"kind\":{}", pb::ConversationKind::Channel as i32)),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ConversationMeta>(&json).unwrap(), meta);
        for bad in ["99", "0"] {
            let corrupt = json.replace(
                &format!("\"kind\":{}", pb::ConversationKind::Channel as i32),
                &format!("\"kind\":{bad}"),
            );
            assert!(
                serde_json::from_str::<ConversationMeta>(&corrupt).is_err(),
                "kind {bad} was accepted"
            );
        }
        let m = r#"{"user":1,"username":"a","role":42,"joined_seq":1}"#;
        assert!(serde_json::from_str::<MemberRecord>(m).is_err(), "role 42 was accepted");
    }

    #[test]
    fn only_domain_refusals_keep_their_meaning_on_the_wire() {
        let taken: natter_protocol::ServerError = StoreError::UsernameTaken.into();
        assert_eq!(taken.code, pb::ErrorCode::UsernameTaken);
        let backend: natter_protocol::ServerError = StoreError::Backend("disk /var/lib/natter: EIO".into()).into();
        assert_eq!(backend.code, pb::ErrorCode::Internal);
        assert!(!backend.message.contains("/var/lib"), "{}", backend.message);
    }
}
