//! An in-memory [`Store`]: the same domain behaviour as sled and Redis (it passes the same
//! suite), nothing durable. For unit tests of the layers above the store and for embedding
//! where nothing must survive the process; never the server's configured storage.
//!
//! Like Redis it checks that a conversation's commits follow its last seq, so a commit on a
//! stale view is a typed [`StoreError::Conflict`] here too.
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use natter_protocol::pb;
use natter_protocol::{ConversationId, DeviceId, Seq, UserId};

use super::*;

/// In-memory [`Store`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    users: HashMap<String, UserRecord>,
    /// Users left out of the directory.
    unlisted: std::collections::HashSet<UserId>,
    devices: BTreeMap<(UserId, DeviceId), DeviceRecord>,
    tokens: HashMap<[u8; 32], (UserId, DeviceId)>,
    convs: HashMap<ConversationId, Conv>,
    member_of: BTreeMap<(UserId, ConversationId), ()>,
    directs: HashMap<(UserId, UserId, bool), ConversationId>,
    channels: HashMap<String, ConversationId>,
    read: HashMap<(UserId, ConversationId), Seq>,
    delivered: HashMap<(UserId, ConversationId), Seq>,
    presence: HashMap<UserId, PresenceRecord>,
    media: HashMap<MediaId, MediaRecord>,
    uploads: HashMap<UploadId, MediaId>,
    media_usage: HashMap<UserId, u64>,
    secrets: HashMap<String, [u8; 32]>,
    keys: BTreeMap<(UserId, DeviceId), KeyState>,
    backups: HashMap<UserId, KeyBackupRecord>,
    user_keys: HashMap<UserId, UserKeyRecord>,
    backup_keys: BTreeMap<(UserId, ConversationId, Vec<u8>), BackupKeyRecord>,
    push: HashMap<UserId, PushRecord>,
    push_jobs: HashMap<String, PushJob>,
    docs: BTreeMap<(String, String), Doc>,
}

#[derive(Debug, Default)]
struct Conv {
    meta: Option<ConversationMeta>,
    members: BTreeMap<UserId, MemberRecord>,
    events: BTreeMap<Seq, pb::ConversationEvent>,
    sent: HashMap<(UserId, String), SentRecord>,
    message_state: HashMap<Seq, MessageState>,
    /// Events up to here were removed by retention.
    removed: Seq,
}

impl Conv {
    fn last_seq(&self) -> Seq {
        self.events.keys().next_back().copied().unwrap_or(self.removed)
    }
}

fn is_message(e: &pb::ConversationEvent) -> bool {
    matches!(e.body, Some(pb::conversation_event::Body::Message(_)))
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("memory store lock"))
    }
}

fn bump(map: &mut HashMap<(UserId, ConversationId), Seq>, user: UserId, conv: ConversationId, seq: Seq) -> Seq {
    let cur = map.entry((user, conv)).or_insert(Seq(0));
    *cur = (*cur).max(seq);
    *cur
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_user(&self, username: &str, password_hash: &str, now_ms: u64) -> Result<UserId, StoreError> {
        self.with(|s| {
            if s.users.contains_key(username) {
                return Err(StoreError::UsernameTaken);
            }
            s.next_id += 1;
            let id = UserId(s.next_id);
            s.users.insert(
                username.to_string(),
                UserRecord {
                    id,
                    username: username.to_string(),
                    password_hash: password_hash.to_string(),
                    created_ms: now_ms,
                },
            );
            Ok(id)
        })
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.with(|s| s.users.get(username).cloned()))
    }

    async fn users_by_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        Ok(self.with(|s| {
            let mut found: Vec<UserRecord> = s
                .users
                .values()
                .filter(|u| u.username.starts_with(prefix) && !s.unlisted.contains(&u.id))
                .cloned()
                .collect();
            found.sort_by(|a, b| a.username.cmp(&b.username));
            found.truncate(limit);
            found
        }))
    }

    async fn set_unlisted(&self, user: UserId, unlisted: bool) -> Result<(), StoreError> {
        self.with(|s| {
            if unlisted {
                s.unlisted.insert(user);
            } else {
                s.unlisted.remove(&user);
            }
        });
        Ok(())
    }

    async fn create_device(
        &self,
        user: UserId,
        username: &str,
        name: &str,
        token_hash: [u8; 32],
        now_ms: u64,
    ) -> Result<DeviceId, StoreError> {
        Ok(self.with(|s| {
            s.next_id += 1;
            let id = DeviceId(s.next_id);
            s.devices.insert(
                (user, id),
                DeviceRecord {
                    id,
                    user,
                    username: username.to_string(),
                    name: name.to_string(),
                    created_ms: now_ms,
                    revoked: false,
                },
            );
            s.tokens.insert(token_hash, (user, id));
            id
        }))
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.with(|s| {
            let key = s.tokens.get(&token_hash)?;
            s.devices.get(key).filter(|d| !d.revoked).cloned()
        }))
    }

    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        Ok(self.with(|s| match s.devices.get_mut(&(user, device)) {
            Some(d) if !d.revoked => {
                d.revoked = true;
                true
            }
            _ => false,
        }))
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self.with(|s| {
            s.devices
                .range((user, DeviceId(0))..=(user, DeviceId(u64::MAX)))
                .map(|(_, d)| d.clone())
                .collect()
        }))
    }

    async fn conversations_after(
        &self,
        after: ConversationId,
        limit: usize,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        Ok(self.with(|s| {
            let mut out: Vec<(ConversationId, Seq)> = s
                .convs
                .iter()
                .filter(|(id, c)| id.0 > after.0 && c.meta.is_some())
                .map(|(id, c)| (*id, c.last_seq()))
                .collect();
            out.sort();
            out.truncate(limit);
            out
        }))
    }

    async fn allocate_conversation_id(&self) -> Result<ConversationId, StoreError> {
        Ok(self.with(|s| {
            s.next_id += 1;
            ConversationId(s.next_id)
        }))
    }

    async fn claim_direct(
        &self,
        a: UserId,
        b: UserId,
        encrypted: bool,
        candidate: ConversationId,
    ) -> Result<ConversationId, StoreError> {
        let pair = if a <= b { (a, b, encrypted) } else { (b, a, encrypted) };
        Ok(self.with(|s| *s.directs.entry(pair).or_insert(candidate)))
    }

    async fn claim_channel_name(&self, name: &str, candidate: ConversationId) -> Result<ConversationId, StoreError> {
        Ok(self.with(|s| *s.channels.entry(name.to_string()).or_insert(candidate)))
    }

    async fn channel_by_name(&self, name: &str) -> Result<Option<ConversationId>, StoreError> {
        Ok(self.with(|s| s.channels.get(name).copied()))
    }

    async fn channels_by_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, ConversationId)>, StoreError> {
        Ok(self.with(|s| {
            let mut found: Vec<(String, ConversationId)> = s
                .channels
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(n, c)| (n.clone(), *c))
                .collect();
            found.sort();
            found.truncate(limit);
            found
        }))
    }

    async fn load_conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self.with(|s| {
            let c = s.convs.get(&id)?;
            Some(ConversationRecord {
                meta: c.meta.clone()?,
                members: c.members.values().cloned().collect(),
                last_seq: c.last_seq(),
            })
        }))
    }

    async fn commit(&self, batch: &[Commit]) -> Result<(), StoreError> {
        self.with(|s| {
            // All or nothing per conversation: each conversation's first commit must follow
            // its stored last seq (PROTOCOL.md §7.6, as the Redis commit script checks).
            let mut expected: HashMap<ConversationId, Seq> = HashMap::new();
            let mut lost = Vec::new();
            for c in batch {
                let conv = ConversationId(c.event.conversation_id);
                let next = expected
                    .entry(conv)
                    .or_insert_with(|| s.convs.get(&conv).map_or(Seq(0), Conv::last_seq));
                if c.event.seq != next.0 + 1 && !lost.contains(&conv) {
                    lost.push(conv);
                }
                *next = Seq(c.event.seq);
            }
            for c in batch {
                let conv = ConversationId(c.event.conversation_id);
                if lost.contains(&conv) {
                    continue;
                }
                let seq = Seq(c.event.seq);
                let entry = s.convs.entry(conv).or_default();
                entry.events.insert(seq, c.event.clone());
                if let Some(meta) = &c.meta {
                    entry.meta = Some(meta.clone());
                }
                for m in &c.upsert_members {
                    entry.members.insert(m.user, m.clone());
                    s.member_of.insert((m.user, conv), ());
                }
                for u in &c.remove_members {
                    entry.members.remove(u);
                    s.member_of.remove(&(*u, conv));
                }
                if let Some((target, state)) = &c.message_state {
                    entry.message_state.insert(*target, state.clone());
                }
                if let Some((sender, id)) = &c.idempotency {
                    let rec = SentRecord {
                        seq,
                        server_time_ms: c.event.server_time_ms,
                    };
                    entry.sent.insert((*sender, id.clone()), rec);
                }
                for (user, at) in &c.read_cursors {
                    bump(&mut s.read, *user, conv, *at);
                }
            }
            if lost.is_empty() {
                Ok(())
            } else {
                Err(StoreError::Conflict(lost))
            }
        })
    }

    async fn rewrite_events(&self, conv: ConversationId, events: &[pb::ConversationEvent]) -> Result<(), StoreError> {
        self.with(|st| {
            if let Some(c) = st.convs.get_mut(&conv) {
                for ev in events {
                    if let Some(slot) = c.events.get_mut(&Seq(ev.seq)) {
                        *slot = ev.clone();
                    }
                }
            }
        });
        Ok(())
    }

    async fn remove_events(&self, conv: ConversationId, through: Seq) -> Result<(), StoreError> {
        self.with(|st| {
            if let Some(c) = st.convs.get_mut(&conv) {
                c.events = c.events.split_off(&through.next());
                c.message_state.retain(|s, _| *s > through);
                c.removed = c.removed.max(through);
            }
        });
        Ok(())
    }

    async fn removed_through(&self, conv: ConversationId) -> Result<Seq, StoreError> {
        Ok(self.with(|st| st.convs.get(&conv).map_or(Seq(0), |c| c.removed)))
    }

    async fn forget_user(&self, _user: UserId) -> Result<(), StoreError> {
        // Nothing outlives a rewrite in memory.
        Ok(())
    }

    async fn find_sent(
        &self,
        conv: ConversationId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<SentRecord>, StoreError> {
        Ok(self.with(|s| {
            s.convs
                .get(&conv)?
                .sent
                .get(&(sender, client_msg_id.to_string()))
                .copied()
        }))
    }

    async fn message(
        &self,
        conv: ConversationId,
        seq: Seq,
    ) -> Result<Option<(pb::ConversationEvent, MessageState)>, StoreError> {
        Ok(self.with(|s| {
            let c = s.convs.get(&conv)?;
            let ev = c.events.get(&seq).filter(|e| is_message(e))?;
            Some((ev.clone(), c.message_state.get(&seq).cloned().unwrap_or_default()))
        }))
    }

    async fn events(
        &self,
        conv: ConversationId,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<pb::ConversationEvent>, bool), StoreError> {
        Ok(self.with(|s| {
            let Some(c) = s.convs.get(&conv) else {
                return (Vec::new(), false);
            };
            match page {
                Page::After(after) => {
                    let mut it = c.events.range(Seq(after.0.saturating_add(1))..).map(|(_, e)| e.clone());
                    let out: Vec<_> = it.by_ref().take(limit).collect();
                    (out, it.next().is_some())
                }
                Page::Before(before) => {
                    let end = if before.0 == 0 {
                        Seq(u64::MAX)
                    } else {
                        Seq(before.0 - 1)
                    };
                    let mut it = c.events.range(..=end).rev().map(|(_, e)| e.clone());
                    let mut out: Vec<_> = it.by_ref().take(limit).collect();
                    let more = it.next().is_some();
                    out.reverse();
                    (out, more)
                }
            }
        }))
    }

    async fn user_conversations(&self, user: UserId) -> Result<Vec<ConversationId>, StoreError> {
        Ok(self.with(|s| {
            s.member_of
                .range((user, ConversationId(0))..=(user, ConversationId(u64::MAX)))
                .map(|((_, c), _)| *c)
                .collect()
        }))
    }

    async fn read_cursor(&self, user: UserId, conv: ConversationId) -> Result<Seq, StoreError> {
        Ok(self.with(|s| s.read.get(&(user, conv)).copied().unwrap_or(Seq(0))))
    }

    async fn advance_read_cursor(&self, user: UserId, conv: ConversationId, seq: Seq) -> Result<Seq, StoreError> {
        Ok(self.with(|s| bump(&mut s.read, user, conv, seq)))
    }

    async fn delivered_cursor(&self, user: UserId, conv: ConversationId) -> Result<Seq, StoreError> {
        Ok(self.with(|s| s.delivered.get(&(user, conv)).copied().unwrap_or(Seq(0))))
    }

    async fn advance_delivered_cursor(&self, user: UserId, conv: ConversationId, seq: Seq) -> Result<Seq, StoreError> {
        Ok(self.with(|s| bump(&mut s.delivered, user, conv, seq)))
    }

    async fn presence_record(&self, user: UserId) -> Result<PresenceRecord, StoreError> {
        Ok(self.with(|s| s.presence.get(&user).copied().unwrap_or_default()))
    }

    async fn put_presence_record(&self, user: UserId, rec: PresenceRecord) -> Result<(), StoreError> {
        self.with(|s| s.presence.insert(user, rec));
        Ok(())
    }

    async fn unread_and_last_message(
        &self,
        conv: ConversationId,
        user: UserId,
        after: Seq,
        cap: u32,
    ) -> Result<(u32, Option<pb::ConversationEvent>), StoreError> {
        Ok(self.with(|s| {
            let Some(c) = s.convs.get(&conv) else {
                return (0, None);
            };
            let last = c.events.values().rev().find(|e| is_message(e)).cloned();
            let unread = c
                .events
                .range(Seq(after.0.saturating_add(1))..)
                .filter(|(_, e)| is_message(e) && e.sender_user_id != user.0)
                .take(cap as usize)
                .count() as u32;
            (unread, last)
        }))
    }

    async fn create_media(&self, rec: &MediaRecord, quota: u64) -> Result<(), StoreError> {
        self.with(|s| {
            let used = s.media_usage.entry(rec.owner).or_default();
            if used.saturating_add(rec.size) > quota {
                return Err(StoreError::QuotaExceeded);
            }
            *used += rec.size;
            s.uploads.insert(rec.upload_id.clone(), rec.media_id.clone());
            s.media.insert(rec.media_id.clone(), rec.clone());
            Ok(())
        })
    }

    async fn media(&self, id: &MediaId) -> Result<Option<MediaRecord>, StoreError> {
        Ok(self.with(|s| s.media.get(id).cloned()))
    }

    async fn media_by_upload(&self, id: &UploadId) -> Result<Option<MediaRecord>, StoreError> {
        Ok(self.with(|s| s.uploads.get(id).and_then(|m| s.media.get(m)).cloned()))
    }

    async fn update_media(&self, rec: &MediaRecord) -> Result<(), StoreError> {
        self.with(|s| match s.media.get_mut(&rec.media_id) {
            Some(cur) if cur.version + 1 == rec.version => {
                *cur = rec.clone();
                Ok(())
            }
            _ => Err(StoreError::Changed),
        })
    }

    async fn delete_media(&self, id: &MediaId) -> Result<bool, StoreError> {
        Ok(self.with(|s| match s.media.remove(id) {
            Some(rec) => {
                s.uploads.remove(&rec.upload_id);
                let used = s.media_usage.entry(rec.owner).or_default();
                *used = used.saturating_sub(rec.size);
                true
            }
            None => false,
        }))
    }

    async fn media_usage(&self, user: UserId) -> Result<u64, StoreError> {
        Ok(self.with(|s| s.media_usage.get(&user).copied().unwrap_or(0)))
    }

    async fn shared_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        Ok(self.with(|s| *s.secrets.entry(name.to_string()).or_insert_with(random_secret)))
    }

    async fn key_state(&self, user: UserId, device: DeviceId) -> Result<Option<KeyState>, StoreError> {
        Ok(self.with(|s| s.keys.get(&(user, device)).cloned()))
    }

    async fn user_key_states(&self, user: UserId) -> Result<Vec<KeyState>, StoreError> {
        Ok(self.with(|s| {
            s.keys
                .range((user, DeviceId(0))..=(user, DeviceId(u64::MAX)))
                .map(|(_, k)| k.clone())
                .collect()
        }))
    }

    async fn put_key_state(&self, rec: &KeyState) -> Result<(), StoreError> {
        self.with(|s| {
            let now = s.keys.get(&(rec.user, rec.device)).map_or(0, |k| k.version);
            if now + 1 != rec.version {
                return Err(StoreError::Changed);
            }
            s.keys.insert((rec.user, rec.device), rec.clone());
            Ok(())
        })
    }

    async fn delete_key_state(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        Ok(self.with(|s| s.keys.remove(&(user, device)).is_some()))
    }

    async fn user_key(&self, user: UserId) -> Result<Option<UserKeyRecord>, StoreError> {
        Ok(self.with(|s| s.user_keys.get(&user).cloned()))
    }

    async fn put_user_key(&self, rec: &UserKeyRecord) -> Result<(), StoreError> {
        self.with(|s| {
            let now = s.user_keys.get(&rec.user).map_or(0, |k| k.version);
            if now + 1 != rec.version {
                return Err(StoreError::Changed);
            }
            s.user_keys.insert(rec.user, rec.clone());
            Ok(())
        })
    }

    async fn key_backup(&self, user: UserId) -> Result<Option<KeyBackupRecord>, StoreError> {
        Ok(self.with(|s| s.backups.get(&user).cloned()))
    }

    async fn put_key_backup(&self, rec: &KeyBackupRecord) -> Result<(), StoreError> {
        self.with(|s| {
            let now = s.backups.get(&rec.user).map_or(0, |b| b.version);
            if now + 1 != rec.version {
                return Err(StoreError::Changed);
            }
            s.backups.insert(rec.user, rec.clone());
            Ok(())
        })
    }

    async fn put_backup_keys(&self, user: UserId, keys: &[BackupKeyRecord]) -> Result<(), StoreError> {
        self.with(|s| {
            for k in keys {
                s.backup_keys.insert((user, k.conversation, k.id()), k.clone());
            }
        });
        Ok(())
    }

    async fn backup_keys(
        &self,
        user: UserId,
        conv: ConversationId,
        version: u64,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<BackupKeyRecord>, StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        Ok(self.with(|s| {
            let from = (user, conv, after.to_vec());
            let start = if after.is_empty() {
                Included(from)
            } else {
                Excluded(from)
            };
            s.backup_keys
                .range((start, Unbounded))
                .take_while(|((u, c, _), _)| (*u, *c) == (user, conv))
                .map(|(_, k)| k)
                .filter(|k| k.version == version)
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn expired_uploads(&self, now_ms: u64, limit: usize) -> Result<Vec<MediaId>, StoreError> {
        Ok(self.with(|s| {
            let mut v: Vec<MediaId> = s
                .media
                .values()
                .filter(|m| m.state != MediaState::Ready && m.expires_ms < now_ms)
                .map(|m| m.media_id.clone())
                .collect();
            v.sort();
            v.truncate(limit);
            v
        }))
    }

    async fn push_record(&self, user: UserId) -> Result<Option<PushRecord>, StoreError> {
        Ok(self.with(|s| s.push.get(&user).cloned()))
    }

    async fn put_push_record(&self, rec: &PushRecord) -> Result<(), StoreError> {
        self.with(|s| {
            let now = s.push.get(&rec.user).map_or(0, |r| r.version);
            if now + 1 != rec.version {
                return Err(StoreError::Changed);
            }
            s.push.insert(rec.user, rec.clone());
            Ok(())
        })
    }

    async fn enqueue_push(&self, job: &PushJob) -> Result<(), StoreError> {
        self.with(|s| {
            s.push_jobs
                .entry(job.id.clone())
                .and_modify(|j| j.seq = j.seq.max(job.seq))
                .or_insert_with(|| job.clone());
        });
        Ok(())
    }

    async fn due_pushes(&self, now_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError> {
        Ok(self.with(|s| {
            let mut due: Vec<PushJob> = s.push_jobs.values().filter(|j| j.due_ms <= now_ms).cloned().collect();
            due.sort_by(|a, b| (a.due_ms, &a.id).cmp(&(b.due_ms, &b.id)));
            due.truncate(limit);
            due
        }))
    }

    async fn claim_pushes(&self, now_ms: u64, until_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError> {
        Ok(self.with(|s| {
            let mut due: Vec<&mut PushJob> = s.push_jobs.values_mut().filter(|j| j.due_ms <= now_ms).collect();
            due.sort_by(|a, b| (a.due_ms, &a.id).cmp(&(b.due_ms, &b.id)));
            due.into_iter()
                .take(limit)
                .map(|j| {
                    j.due_ms = until_ms;
                    j.clone()
                })
                .collect()
        }))
    }

    async fn finish_push(&self, id: &str, sent_seq: u64, next_due_ms: u64) -> Result<(), StoreError> {
        self.with(|s| match s.push_jobs.get_mut(id) {
            Some(j) if j.seq > sent_seq => {
                j.due_ms = next_due_ms;
                j.attempts = 0;
            }
            Some(_) => {
                s.push_jobs.remove(id);
            }
            None => {}
        });
        Ok(())
    }

    async fn retry_push(&self, id: &str, due_ms: u64, attempts: u32) -> Result<(), StoreError> {
        self.with(|s| {
            if let Some(j) = s.push_jobs.get_mut(id) {
                j.due_ms = due_ms;
                j.attempts = attempts;
            }
        });
        Ok(())
    }

    async fn drop_push(&self, id: &str) -> Result<(), StoreError> {
        self.with(|s| s.push_jobs.remove(id));
        Ok(())
    }

    async fn get_push(&self, id: &str) -> Result<Option<PushJob>, StoreError> {
        Ok(self.with(|s| s.push_jobs.get(id).cloned()))
    }

    async fn doc(&self, space: &str, key: &str) -> Result<Option<Doc>, StoreError> {
        Ok(self.with(|s| s.docs.get(&(space.to_string(), key.to_string())).cloned()))
    }

    async fn put_doc(&self, space: &str, key: &str, expected: u64, value: Vec<u8>) -> Result<bool, StoreError> {
        Ok(self.with(|s| {
            let k = (space.to_string(), key.to_string());
            if s.docs.get(&k).map_or(0, |d| d.version) != expected {
                return false;
            }
            s.docs.insert(
                k,
                Doc {
                    version: expected + 1,
                    value,
                },
            );
            true
        }))
    }

    async fn delete_doc(&self, space: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self.with(|s| s.docs.remove(&(space.to_string(), key.to_string())).is_some()))
    }

    async fn docs(&self, space: &str, after: &str, limit: usize) -> Result<Vec<(String, Doc)>, StoreError> {
        use std::ops::Bound;
        Ok(self.with(|s| {
            s.docs
                .range((
                    Bound::Excluded((space.to_string(), after.to_string())),
                    Bound::Unbounded,
                ))
                .take_while(|((sp, _), _)| sp == space)
                .take(limit)
                .map(|((_, k), d)| (k.clone(), d.clone()))
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared store suite, one test per behaviour.
    mod suite {
        crate::store::suite::store_suite!(((), crate::store::MemoryStore::new()));
    }

    fn ev(conv: ConversationId, seq: u64) -> Commit {
        Commit {
            event: pb::ConversationEvent {
                conversation_id: conv.0,
                seq,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_commit_that_does_not_follow_the_last_seq_is_a_conflict_and_changes_nothing() {
        let store = MemoryStore::new();
        let (c1, c2) = (ConversationId(1), ConversationId(2));
        store.commit(&[ev(c1, 1), ev(c2, 1)]).await.unwrap();
        let err = store.commit(&[ev(c1, 1), ev(c2, 2)]).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(ref lost) if lost == &vec![c1]),
            "{err:?}"
        );
        assert_eq!(store.events(c1, Page::After(Seq(0)), 10).await.unwrap().0.len(), 1);
        assert_eq!(store.load_conversation(c2).await.unwrap(), None, "c2 has no meta yet");
        assert_eq!(
            store.events(c2, Page::After(Seq(0)), 10).await.unwrap().0.len(),
            2,
            "c2 applied"
        );
    }
}
