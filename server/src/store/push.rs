//! The push records the store keeps (PROTOCOL.md §13): each user's push registrations (one
//! versioned record per user) and the durable queue of notifications waiting to be sent.
use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lru::LruCache;

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

/// How many users' push records [`RecordCache`] holds.
const CACHED_RECORDS: usize = 100_000;

/// The push records the embedded store last read or wrote, for the most recent
/// [`CACHED_RECORDS`] users. Every message asks for each recipient's (push/ decides per
/// member) and most users have none: at 50,000 deliveries/s those reads were a
/// twentieth of the server's CPU (bench/RESULTS.md, fifth pass). The embedded store is
/// the only writer of its records, and every write goes through [`Self::write_through`],
/// so what this holds is what is on disk.
pub(super) struct RecordCache {
    held: Mutex<LruCache<UserId, Option<PushRecord>>>,
    /// Writes begun and ended: a read overlapping a write is not held (it may have read
    /// the record from before it).
    writes_begun: AtomicU64,
    writes_ended: AtomicU64,
}

impl Default for RecordCache {
    fn default() -> Self {
        RecordCache {
            held: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHED_RECORDS).expect("a non-zero capacity"),
            )),
            writes_begun: AtomicU64::new(0),
            writes_ended: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for RecordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordCache").finish_non_exhaustive()
    }
}

impl RecordCache {
    /// `user`'s record: as held, or from what `read` makes (held afterwards unless a write
    /// overlapped). `read` is called only when nothing is held.
    pub async fn read_through<E, F>(&self, user: UserId, read: impl FnOnce() -> F) -> Result<Option<PushRecord>, E>
    where
        F: Future<Output = Result<Option<PushRecord>, E>>,
    {
        if let Some(held) = self.held.lock().expect("push record cache").get(&user) {
            return Ok(held.clone());
        }
        let begun = self.writes_begun.load(Ordering::SeqCst);
        let quiet = begun == self.writes_ended.load(Ordering::SeqCst);
        let rec = read().await?;
        if quiet && self.writes_begun.load(Ordering::SeqCst) == begun {
            self.held.lock().expect("push record cache").put(user, rec.clone());
        }
        Ok(rec)
    }

    /// Write `rec` with `write`, holding it once written (forgetting the user's record if
    /// the write failed: it is read afresh next time).
    pub async fn write_through<E>(
        &self,
        rec: &PushRecord,
        write: impl Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        self.writes_begun.fetch_add(1, Ordering::SeqCst);
        let out = write.await;
        {
            let mut held = self.held.lock().expect("push record cache");
            match &out {
                Ok(()) => {
                    held.put(rec.user, Some(rec.clone()));
                }
                Err(_) => {
                    held.pop(&rec.user);
                }
            }
        }
        self.writes_ended.fetch_add(1, Ordering::SeqCst);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: u64, version: u64) -> PushRecord {
        PushRecord {
            user: UserId(user),
            registrations: Vec::new(),
            rules: NotifyRules::default(),
            version,
        }
    }

    #[tokio::test]
    async fn a_read_overlapping_a_write_is_not_held_and_a_write_is() {
        let cache = RecordCache::default();
        let alice = UserId(1);
        let read = |v: Option<u64>| async move { Ok::<_, ()>(v.map(|v| record(1, v))) };
        // Nothing held: the read goes to the store, and is held.
        assert_eq!(cache.read_through(alice, || read(None)).await, Ok(None));
        assert_eq!(
            cache.read_through(alice, || read(Some(9))).await,
            Ok(None),
            "held: the store not asked"
        );

        // A write holds what it wrote; a failed one forgets.
        cache
            .write_through(&record(1, 1), async { Ok::<_, ()>(()) })
            .await
            .unwrap();
        assert_eq!(
            cache
                .read_through(alice, || read(None))
                .await
                .unwrap()
                .map(|r| r.version),
            Some(1)
        );
        assert_eq!(cache.write_through(&record(1, 2), async { Err(()) }).await, Err(()));
        assert_eq!(
            cache
                .read_through(alice, || read(Some(1)))
                .await
                .unwrap()
                .map(|r| r.version),
            Some(1),
            "read afresh"
        );

        // A read that started before a write and ends after it read the old record: it is
        // answered, not held.
        let bob = UserId(2);
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let stale = cache.read_through(bob, || async move {
            wait.await.unwrap();
            Ok::<_, ()>(None)
        });
        let write = async {
            cache
                .write_through(&record(2, 1), async { Ok::<_, ()>(()) })
                .await
                .unwrap();
            go.send(()).unwrap();
        };
        let (got, ()) = tokio::join!(stale, write);
        assert_eq!(got, Ok(None));
        assert_eq!(
            cache.read_through(bob, || read(None)).await.unwrap().map(|r| r.version),
            Some(1),
            "the write's record is held, not the stale read"
        );
    }
}
