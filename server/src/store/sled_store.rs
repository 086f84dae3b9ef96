//! The embedded default backend: one sled tree, keys prefixed by record type, one atomic
//! batch plus one flush per [`Store::commit`] (group commit across a shard's batch).
//!
//! Key layout (integers big-endian so ranges sort numerically):
//! `u/<username>` user · `d/<user><device>` device · `t/<sha256>` token → user,device ·
//! `c/<conv>` meta · `m/<conv><user>` member · `uc/<user><conv>` membership index ·
//! `e/<conv><seq>` event (protobuf) · `i/<conv><user><client_msg_id>` idempotency ·
//! `dm/<a><b>` direct pair · `ch/<name>` channel name · `r/<user><conv>` read cursor ·
//! `ms/<conv><seq>` message state (edits, deletes, reactions) · `dl/<user><conv>` delivered cursor ·
//! `p/<user>` presence record (privacy, last seen) · `md/<media id>` media record ·
//! `mu/<upload id>` → media id · `mq/<user>` bytes of media held (quota) · `sec/<name>`
//! shared secrets · `k/<user><device>` a device's end-to-end encryption keys.
//!
//! Disk failures are [`super::sled_health`]'s: a failed write takes the store down
//! (writes refused with `Unavailable`, reads from the database as reopened from disk) until
//! the disk takes writes again. Every write therefore goes through [`SledStore::write`].
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_protocol::pb;
use natter_protocol::{ConversationId, DeviceId, Seq, UserId};
use serde::{de::DeserializeOwned, Serialize};

use super::content_keys::ContentKeys;
use super::sled_health::{Handles, Health, View};
use super::*;

/// A flush that has not returned by then counts as failed (sled can wait forever on a log
/// that will never become stable).
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// What a write of a record or two may take on disk, for the free-space check.
const SMALL_WRITE: u64 = 64 * 1024;

/// How long a read waits for a reopening store before it answers `Unavailable`.
const REOPEN_READ_WAIT: Duration = Duration::from_millis(500);

/// sled-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SledStore {
    health: Arc<Health>,
    /// Events are sealed under their sender's key, kept outside sled ([`ContentKeys`]).
    keys: Arc<ContentKeys>,
    /// Every write holds it shared while it applies and flushes; a backup holds it
    /// exclusively while it copies, so the copy is one point in time ([`Self::snapshot_into`]).
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Push records as last read or written (one read per recipient of every message).
    push_records: Arc<super::push::RecordCache>,
}

fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>());
    k.extend_from_slice(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn read_u64(b: &[u8]) -> Result<u64, StoreError> {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("short integer".into()))
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

use super::sled_health::sled_error as backend;

fn event_key(conv: ConversationId, seq: Seq) -> Vec<u8> {
    key(b"e/", &[&be(conv.0), &be(seq.0)])
}

/// Where a conversation's retention floor lives (PROTOCOL.md §5.17).
fn floor_key(conv: ConversationId) -> Vec<u8> {
    key(b"rt/", &[&be(conv.0)])
}

/// A conversation's newest seq: its last event's, or (every event removed by retention)
/// its floor.
fn last_seq_in(view: &super::sled_health::View, conv: ConversationId) -> Result<Seq, StoreError> {
    match view.prefix(&key(b"e/", &[&be(conv.0)]), true).next() {
        Some(kv) => Ok(Seq(read_u64(&kv?.0[10..])?)),
        None => Ok(Seq(view
            .get(&floor_key(conv))?
            .map(|v| read_u64(&v))
            .transpose()?
            .unwrap_or(0))),
    }
}

/// Where the content keys live, inside the store's directory but outside sled's files.
pub const CONTENT_KEYS: &str = "content-keys";

impl SledStore {
    /// The record under `k`, if there is one.
    async fn get_record<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, StoreError> {
        self.view().await?.get(k)?.map(|v| dec(&v)).transpose()
    }

    /// Write `rec` under `k` only over the record at the version before it (none: 0);
    /// otherwise [`StoreError::Changed`]. Durable when it returns.
    async fn put_versioned<T>(&self, k: Vec<u8>, rec: T) -> Result<(), StoreError>
    where
        T: Versioned + Serialize + DeserializeOwned + Send + 'static,
    {
        self.write(true, move |h| {
            media_txn(&h.tree, |t| {
                let now = match t.get(&k)? {
                    Some(v) => dec::<T>(&v).map_err(Abort::Abort)?.version(),
                    None => 0,
                };
                if now + 1 != rec.version() {
                    return Err(Abort::Abort(StoreError::Changed));
                }
                t.insert(k.clone(), enc(&rec))?;
                Ok(())
            })
        })
        .await
    }

    /// Open (or create) a store in `dir`, with the default free-space reserve.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_reserve(dir, None)
    }

    /// Open (or create) a store in `dir` that keeps `reserve` bytes of the disk free
    /// (`None`: the default, see `Config::disk_reserve_bytes`).
    pub fn open_with_reserve(dir: &Path, reserve: Option<u64>) -> Result<Self, StoreError> {
        Ok(Self {
            health: Health::open(dir, reserve).map_err(backend)?,
            keys: Arc::new(ContentKeys::open(&dir.join(CONTENT_KEYS))?),
            gate: Arc::default(),
            push_records: Arc::default(),
        })
    }

    /// A store in `dir` whose content keys are in `keys` (a copy of a store's files read
    /// with the keys of another: what a backup still reveals once accounts are deleted).
    pub fn open_with_content_keys(dir: &Path, keys: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            health: Health::open(dir, None).map_err(backend)?,
            keys: Arc::new(ContentKeys::open(keys)?),
            gate: Arc::default(),
            push_records: Arc::default(),
        })
    }

    /// Copy the whole store into a new database at `to` (which must not hold one) as of one
    /// point in time: writes wait from the moment every write in progress has finished
    /// until the copy, its content keys and `also` (the caller's files: media) are done;
    /// reads go on. The copy is flushed before this returns. How many records it holds.
    pub async fn snapshot_into(
        &self,
        to: &Path,
        also: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
    ) -> Result<u64, StoreError> {
        let paused = self.gate.clone().write_owned().await;
        let h = self.health.writer()?;
        flush(&h).await.map_err(StoreError::Backend)?;
        let (to, keys_from) = (to.to_path_buf(), self.keys.dir().to_path_buf());
        let copied = tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
            let copy = sled::Config::new().path(&to).open().map_err(backend)?;
            let tree = copy.open_tree("natter").map_err(backend)?;
            let mut n = 0u64;
            let mut batch = sled::Batch::default();
            for kv in h.tree.iter() {
                let (k, v) = kv.map_err(backend)?;
                batch.insert(k, v);
                n += 1;
                if n % 10_000 == 0 {
                    tree.apply_batch(std::mem::take(&mut batch)).map_err(backend)?;
                }
            }
            tree.apply_batch(batch).map_err(backend)?;
            copy.flush().map_err(backend)?;
            copy_dir(&keys_from, &to.join(CONTENT_KEYS))?;
            also()?;
            Ok(n)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("snapshot task: {e}")))?;
        drop(paused);
        copied
    }

    /// What reads see. While the store reopens after a failure (milliseconds), reads wait
    /// for it rather than fail, up to [`REOPEN_READ_WAIT`].
    async fn view(&self) -> Result<View, StoreError> {
        let until = tokio::time::Instant::now() + REOPEN_READ_WAIT;
        loop {
            match self.health.view() {
                Err(_) if self.health.reopening() && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return other,
            }
        }
    }

    /// One write: `apply` changes the tree, then (with `durable`) a flush makes it
    /// durable. Any failure takes the store down.
    async fn write<T: Send + 'static>(
        &self,
        durable: bool,
        apply: impl FnOnce(&Handles) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_sized(SMALL_WRITE, durable, apply).await
    }

    /// [`Self::write`] of about `bytes` (checked against the free-space reserve first).
    async fn write_sized<T: Send + 'static>(
        &self,
        bytes: u64,
        durable: bool,
        apply: impl FnOnce(&Handles) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _writing = self.gate.read().await;
        let h = self.health.writer_for(bytes)?;
        let out = match apply(&h) {
            Ok(v) => v,
            Err(StoreError::Backend(e) | StoreError::Unavailable(e)) => return Err(self.health.fail(&e)),
            Err(other) => return Err(other),
        };
        if durable {
            if let Err(e) = flush(&h).await {
                return Err(self.health.fail(&e));
            }
        }
        Ok(out)
    }

    /// A write's preparatory read failed on I/O: the disk is failing, take the store down.
    fn down_on_io<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match r {
            Err(StoreError::Unavailable(e)) => Err(self.health.fail(&e)),
            other => other,
        }
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        let h = self.health.writer_for(SMALL_WRITE)?;
        match h.db.generate_id() {
            Ok(id) => Ok(id + 1),
            Err(e) => Err(self.health.fail(&backend(e))),
        }
    }

    /// Bind `key` to `candidate` unless bound; return the bound value.
    async fn claim(&self, k: Vec<u8>, candidate: ConversationId) -> Result<ConversationId, StoreError> {
        if let Some(v) = self.view().await?.get(&k)? {
            return Ok(ConversationId(read_u64(&v)?));
        }
        let swapped = self
            .write(true, move |h| {
                h.tree
                    .compare_and_swap(&k, None as Option<&[u8]>, Some(&be(candidate.0)[..]))
                    .map_err(backend)
                    .map(|r| r.map_err(|cas| cas.current))
            })
            .await?;
        match swapped {
            Ok(()) => Ok(candidate),
            Err(current) => Ok(ConversationId(read_u64(&current.unwrap_or_default())?)),
        }
    }
}

/// Copy every file of `from` into `to` (made if missing), each synced.
pub(crate) fn copy_dir(from: &Path, to: &Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Backend(format!("copying {}: {e}", from.display()));
    std::fs::create_dir_all(to).map_err(io)?;
    for entry in std::fs::read_dir(from).map_err(io)? {
        let entry = entry.map_err(io)?;
        let (path, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(io)?.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).map_err(io)?;
            std::fs::File::open(&target).and_then(|f| f.sync_all()).map_err(io)?;
        }
    }
    std::fs::File::open(to).and_then(|d| d.sync_all()).map_err(io)
}

/// Make every write so far durable. Runs sled's synchronous flush on a blocking thread
/// rather than `flush_async`, whose pool can hold the database (and its directory lock)
/// after the future completes; bounded by [`FLUSH_DEADLINE`].
async fn flush(h: &Arc<Handles>) -> Result<(), String> {
    // The blocking thread holds the handles (not a bare tree), so a failed database is
    // dropped only once this flush has returned (see `sled_health::bury`).
    // Writers queued behind a running flush share the next one (`FlushGate`).
    let held = h.clone();
    h.flushes
        .flush(async move {
            match tokio::time::timeout(FLUSH_DEADLINE, tokio::task::spawn_blocking(move || held.tree.flush())).await {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("flush did not finish within {FLUSH_DEADLINE:?}")),
            }
        })
        .await
}

#[async_trait]
impl Store for SledStore {
    async fn create_user(&self, username: &str, password_hash: &str, now_ms: u64) -> Result<UserId, StoreError> {
        let id = UserId(self.next_id()?);
        let rec = UserRecord {
            id,
            username: username.into(),
            password_hash: password_hash.into(),
            created_ms: now_ms,
        };
        let k = key(b"u/", &[username.as_bytes()]);
        if self.view().await?.get(&k)?.is_some() {
            return Err(StoreError::UsernameTaken);
        }
        let created = self
            .write(true, move |h| {
                h.tree
                    .compare_and_swap(&k, None as Option<&[u8]>, Some(enc(&rec)))
                    .map_err(backend)
                    .map(|r| r.is_ok())
            })
            .await?;
        if created {
            Ok(id)
        } else {
            Err(StoreError::UsernameTaken)
        }
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        self.view()
            .await?
            .get(&key(b"u/", &[username.as_bytes()]))?
            .map(|v| dec(&v))
            .transpose()
    }

    async fn users_by_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        let view = self.view().await?;
        let mut out = Vec::new();
        for kv in view.prefix(&key(b"u/", &[prefix.as_bytes()]), false) {
            let u: UserRecord = dec(&kv?.1)?;
            if view.get(&key(b"ul/", &[&be(u.id.0)]))?.is_none() {
                out.push(u);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn set_unlisted(&self, user: UserId, unlisted: bool) -> Result<(), StoreError> {
        let k = key(b"ul/", &[&be(user.0)]);
        self.write(true, move |h| {
            if unlisted {
                h.tree.insert(k, &[][..]).map_err(backend).map(drop)
            } else {
                h.tree.remove(k).map_err(backend).map(drop)
            }
        })
        .await
    }

    async fn create_device(
        &self,
        user: UserId,
        username: &str,
        name: &str,
        token_hash: [u8; 32],
        now_ms: u64,
    ) -> Result<DeviceId, StoreError> {
        let id = DeviceId(self.next_id()?);
        let rec = DeviceRecord {
            id,
            user,
            username: username.into(),
            name: name.into(),
            created_ms: now_ms,
            revoked: false,
        };
        let dk = key(b"d/", &[&be(user.0), &be(id.0)]);
        let tk = key(b"t/", &[&token_hash]);
        self.write(true, move |h| {
            let mut batch = sled::Batch::default();
            batch.insert(dk, enc(&rec));
            batch.insert(tk, key(b"", &[&be(user.0), &be(id.0)]));
            h.tree.apply_batch(batch).map_err(backend)
        })
        .await?;
        Ok(id)
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError> {
        let view = self.view().await?;
        let Some(ids) = view.get(&key(b"t/", &[&token_hash]))? else {
            return Ok(None);
        };
        let Some(rec) = view.get(&key(b"d/", &[&ids[..]]))? else {
            return Ok(None);
        };
        let rec: DeviceRecord = dec(&rec)?;
        Ok((!rec.revoked).then_some(rec))
    }

    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        let k = key(b"d/", &[&be(user.0), &be(device.0)]);
        let Some(rec) = self.view().await?.get(&k)? else {
            return Ok(false);
        };
        let mut rec: DeviceRecord = dec(&rec)?;
        if rec.revoked {
            return Ok(false);
        }
        rec.revoked = true;
        self.write(true, move |h| h.tree.insert(k, enc(&rec)).map_err(backend).map(drop))
            .await?;
        Ok(true)
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.view()
            .await?
            .prefix(&key(b"d/", &[&be(user.0)]), false)
            .map(|kv| kv.and_then(|(_, v)| dec(&v)))
            .collect()
    }

    async fn allocate_conversation_id(&self) -> Result<ConversationId, StoreError> {
        Ok(ConversationId(self.next_id()?))
    }

    async fn claim_direct(
        &self,
        a: UserId,
        b: UserId,
        encrypted: bool,
        candidate: ConversationId,
    ) -> Result<ConversationId, StoreError> {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let kind: &[u8] = if encrypted { b"e" } else { b"" };
        self.claim(key(b"dm/", &[&be(lo.0), &be(hi.0), kind]), candidate).await
    }

    async fn claim_channel_name(&self, name: &str, candidate: ConversationId) -> Result<ConversationId, StoreError> {
        self.claim(key(b"ch/", &[name.as_bytes()]), candidate).await
    }

    async fn channel_by_name(&self, name: &str) -> Result<Option<ConversationId>, StoreError> {
        let v = self.view().await?.get(&key(b"ch/", &[name.as_bytes()]))?;
        v.map(|v| read_u64(&v).map(ConversationId)).transpose()
    }

    async fn channels_by_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, ConversationId)>, StoreError> {
        self.view()
            .await?
            .prefix(&key(b"ch/", &[prefix.as_bytes()]), false)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                let name = String::from_utf8_lossy(&k[3..]).into_owned();
                Ok((name, ConversationId(read_u64(&v)?)))
            })
            .collect()
    }

    async fn load_conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        let view = self.view().await?;
        let Some(meta) = view.get(&key(b"c/", &[&be(id.0)]))? else {
            return Ok(None);
        };
        let meta: ConversationMeta = dec(&meta)?;
        let members = view
            .prefix(&key(b"m/", &[&be(id.0)]), false)
            .map(|kv| kv.and_then(|(_, v)| dec(&v)))
            .collect::<Result<Vec<MemberRecord>, _>>()?;
        let last_seq = last_seq_in(&view, id)?;
        Ok(Some(ConversationRecord {
            meta,
            members,
            last_seq,
        }))
    }

    async fn conversations_after(
        &self,
        after: ConversationId,
        limit: usize,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        let view = self.view().await?;
        let Some(first) = after.0.checked_add(1) else {
            return Ok(Vec::new());
        };
        let (_, end) = crate::store::sled_health::prefix_range(b"c/");
        let mut out = Vec::new();
        for kv in view.range((std::ops::Bound::Included(key(b"c/", &[&be(first)])), end), false) {
            if out.len() == limit {
                break;
            }
            let (k, _) = kv?;
            let id = ConversationId(read_u64(&k[2..])?);
            out.push((id, last_seq_in(&view, id)?));
        }
        Ok(out)
    }

    async fn commit(&self, commits: &[Commit]) -> Result<(), StoreError> {
        let h = self.health.writer()?;
        // A conversation whose next event key is taken moved on without this shard knowing
        // (the store was reopened with a failed write that had reached the disk after
        // all): its commits are refused as a conflict, and the shard reloads and retries.
        let mut moved: Vec<ConversationId> = Vec::new();
        for c in commits {
            let conv = ConversationId(c.event.conversation_id);
            let taken = self.down_on_io(h.tree.contains_key(event_key(conv, Seq(c.event.seq))).map_err(backend))?;
            if !moved.contains(&conv) && taken {
                moved.push(conv);
            }
        }
        let mut batch = sled::Batch::default();
        let mut cursors = Vec::new();
        // sled writes values through its log and rewrites tree pages: about twice the
        // bytes, plus a little per record.
        let mut bytes = SMALL_WRITE;
        for c in commits
            .iter()
            .filter(|c| !moved.contains(&ConversationId(c.event.conversation_id)))
        {
            let conv = ConversationId(c.event.conversation_id);
            let cb = be(conv.0);
            let event = self.keys.seal(&c.event)?;
            bytes += 2 * event.len() as u64 + 512;
            batch.insert(event_key(conv, Seq(c.event.seq)), event);
            if let Some(meta) = &c.meta {
                batch.insert(key(b"c/", &[&cb]), enc(meta));
            }
            for m in &c.upsert_members {
                batch.insert(key(b"m/", &[&cb, &be(m.user.0)]), enc(m));
                batch.insert(key(b"uc/", &[&be(m.user.0), &cb]), &[][..]);
            }
            for u in &c.remove_members {
                batch.remove(key(b"m/", &[&cb, &be(u.0)]));
                batch.remove(key(b"uc/", &[&be(u.0), &cb]));
            }
            if let Some((target, state)) = &c.message_state {
                batch.insert(key(b"ms/", &[&cb, &be(target.0)]), enc(state));
            }
            if let Some((sender, id)) = &c.idempotency {
                let rec = SentRecord {
                    seq: Seq(c.event.seq),
                    server_time_ms: c.event.server_time_ms,
                };
                batch.insert(key(b"i/", &[&cb, &be(sender.0), id.as_bytes()]), enc(&rec));
            }
            for (user, seq) in &c.read_cursors {
                cursors.push((*user, conv, *seq));
            }
        }
        self.write_sized(bytes, true, move |h| {
            h.tree.apply_batch(batch).map_err(backend)?;
            for (user, conv, seq) in cursors {
                bump(&h.tree, b"r/", user, conv, seq)?;
            }
            Ok(())
        })
        .await?;
        if moved.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Conflict(moved))
        }
    }

    async fn rewrite_events(&self, conv: ConversationId, events: &[pb::ConversationEvent]) -> Result<(), StoreError> {
        let mut sealed = Vec::with_capacity(events.len());
        for ev in events {
            sealed.push((event_key(conv, Seq(ev.seq)), self.keys.seal(ev)?));
        }
        let bytes = SMALL_WRITE + 2 * sealed.iter().map(|(_, v)| v.len() as u64 + 64).sum::<u64>();
        self.write_sized(bytes, true, move |h| {
            let mut batch = sled::Batch::default();
            for (k, v) in sealed {
                // Only events that are there: a rewrite never makes a hole into an event.
                if h.tree.contains_key(&k).map_err(backend)? {
                    batch.insert(k, v);
                }
            }
            h.tree.apply_batch(batch).map_err(backend)
        })
        .await
    }

    async fn remove_events(&self, conv: ConversationId, through: Seq) -> Result<(), StoreError> {
        let view = self.view().await?;
        let floor = Seq(view
            .get(&floor_key(conv))?
            .map(|v| read_u64(&v))
            .transpose()?
            .unwrap_or(0));
        if through <= floor {
            return Ok(());
        }
        let mut gone = Vec::new();
        for kv in view.range(event_key(conv, Seq(0))..=event_key(conv, through), false) {
            let (k, _) = kv?;
            let seq = Seq(read_u64(&k[10..])?);
            gone.push(k.to_vec());
            gone.push(key(b"ms/", &[&be(conv.0), &be(seq.0)]));
        }
        drop(view);
        // The floor with the removal, in one atomic batch: a page never shows a hole.
        self.write(true, move |h| {
            let mut batch = sled::Batch::default();
            for k in gone {
                batch.remove(k);
            }
            batch.insert(floor_key(conv), be(through.0).to_vec());
            h.tree.apply_batch(batch).map_err(backend)
        })
        .await
    }

    async fn removed_through(&self, conv: ConversationId) -> Result<Seq, StoreError> {
        let v = self.view().await?.get(&floor_key(conv))?;
        Ok(Seq(v.map(|v| read_u64(&v)).transpose()?.unwrap_or(0)))
    }

    async fn forget_user(&self, user: UserId) -> Result<(), StoreError> {
        self.keys.erase(user)
    }

    async fn find_sent(
        &self,
        conv: ConversationId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<SentRecord>, StoreError> {
        let k = key(b"i/", &[&be(conv.0), &be(sender.0), client_msg_id.as_bytes()]);
        self.view().await?.get(&k)?.map(|v| dec(&v)).transpose()
    }

    async fn message(
        &self,
        conv: ConversationId,
        seq: Seq,
    ) -> Result<Option<(pb::ConversationEvent, MessageState)>, StoreError> {
        let view = self.view().await?;
        let Some(raw) = view.get(&event_key(conv, seq))? else {
            return Ok(None);
        };
        let ev = self.keys.open_event(conv, seq, &raw)?;
        if !matches!(ev.body, Some(pb::conversation_event::Body::Message(_))) {
            return Ok(None);
        }
        let state = match view.get(&key(b"ms/", &[&be(conv.0), &be(seq.0)]))? {
            Some(v) => dec(&v)?,
            None => MessageState::default(),
        };
        Ok(Some((ev, state)))
    }

    async fn events(
        &self,
        conv: ConversationId,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<pb::ConversationEvent>, bool), StoreError> {
        let view = self.view().await?;
        let mut out = Vec::with_capacity(limit.min(256));
        let mut more = false;
        let (range, rev) = match page {
            Page::After(after) => (
                event_key(conv, Seq(after.0.saturating_add(1)))..=event_key(conv, Seq(u64::MAX)),
                false,
            ),
            Page::Before(before) => {
                let end = if before.0 == 0 {
                    Seq(u64::MAX)
                } else {
                    Seq(before.0 - 1)
                };
                (event_key(conv, Seq(0))..=event_key(conv, end), true)
            }
        };
        for kv in view.range(range, rev) {
            if out.len() == limit {
                more = true;
                break;
            }
            let (k, v) = kv?;
            out.push(self.keys.open_event(conv, Seq(read_u64(&k[10..])?), &v)?);
        }
        if rev {
            out.reverse();
        }
        Ok((out, more))
    }

    async fn message_senders(
        &self,
        conv: ConversationId,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Option<Vec<UserId>>, StoreError> {
        if upto <= after {
            return Ok(Some(Vec::new()));
        }
        let view = self.view().await?;
        let range = event_key(conv, Seq(after.0 + 1))..=event_key(conv, upto);
        let mut out = Vec::new();
        for (n, kv) in view.range(range, false).enumerate() {
            if n == limit {
                return Ok(None);
            }
            let (k, v) = kv?;
            if let Some(sender) = self.keys.message_sender(conv, Seq(read_u64(&k[10..])?), &v)? {
                out.push(sender);
            }
        }
        Ok(Some(out))
    }

    async fn user_conversations(&self, user: UserId) -> Result<Vec<ConversationId>, StoreError> {
        self.view()
            .await?
            .prefix(&key(b"uc/", &[&be(user.0)]), false)
            .map(|kv| kv.and_then(|(k, _)| read_u64(&k[11..]).map(ConversationId)))
            .collect()
    }

    async fn read_cursor(&self, user: UserId, conv: ConversationId) -> Result<Seq, StoreError> {
        self.cursor(b"r/", user, conv).await
    }

    async fn presence_record(&self, user: UserId) -> Result<PresenceRecord, StoreError> {
        match self.view().await?.get(&key(b"p/", &[&be(user.0)]))? {
            Some(v) => dec(&v),
            None => Ok(PresenceRecord::default()),
        }
    }

    async fn put_presence_record(&self, user: UserId, rec: PresenceRecord) -> Result<(), StoreError> {
        let k = key(b"p/", &[&be(user.0)]);
        self.write(true, move |h| h.tree.insert(k, enc(&rec)).map_err(backend).map(drop))
            .await
    }

    async fn delivered_cursor(&self, user: UserId, conv: ConversationId) -> Result<Seq, StoreError> {
        self.cursor(b"dl/", user, conv).await
    }

    async fn advance_delivered_cursor(&self, user: UserId, conv: ConversationId, seq: Seq) -> Result<Seq, StoreError> {
        // No fsync of its own: delivery acks come once per batch per device, cursors only
        // move forward, and sled's periodic flush (≤ 500 ms) makes them durable. A crash
        // in that window shows a message ✓ instead of ✓✓ until the next ack (PROTOCOL.md
        // §5.10); read cursors, which drive unread counts, are still flushed at once.
        self.write(false, move |h| bump(&h.tree, b"dl/", user, conv, seq)).await
    }

    async fn advance_read_cursor(&self, user: UserId, conv: ConversationId, seq: Seq) -> Result<Seq, StoreError> {
        self.write(true, move |h| bump(&h.tree, b"r/", user, conv, seq)).await
    }

    async fn unread_and_last_message(
        &self,
        conv: ConversationId,
        user: UserId,
        after: Seq,
        cap: u32,
    ) -> Result<(u32, Option<pb::ConversationEvent>), StoreError> {
        let is_message = |e: &pb::ConversationEvent| matches!(e.body, Some(pb::conversation_event::Body::Message(_)));
        let mut unread = 0;
        let mut last = None;
        // Newest first: the first message found is the last message; count until the cursor.
        let range = event_key(conv, Seq(0))..=event_key(conv, Seq(u64::MAX));
        for kv in self.view().await?.range(range, true).take(cap as usize + 1000) {
            let (k, v) = kv?;
            let seq = Seq(read_u64(&k[10..])?);
            if seq <= after && last.is_some() {
                break;
            }
            let ev = self.keys.open_event(conv, seq, &v)?;
            if !is_message(&ev) {
                continue;
            }
            if seq > after && ev.sender_user_id != user.0 && unread < cap {
                unread += 1;
            }
            if last.is_none() {
                last = Some(ev);
            }
        }
        Ok((unread, last))
    }

    async fn create_media(&self, rec: &MediaRecord, quota: u64) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.write(true, move |h| {
            media_txn(&h.tree, |t| {
                let qk = key(b"mq/", &[&be(rec.owner.0)]);
                let used = match t.get(&qk)? {
                    Some(v) => read_u64(&v).map_err(Abort::Abort)?,
                    None => 0,
                };
                if used.saturating_add(rec.size) > quota {
                    return Err(Abort::Abort(StoreError::QuotaExceeded));
                }
                t.insert(qk, &be(used + rec.size)[..])?;
                t.insert(key(b"mu/", &[rec.upload_id.0.as_bytes()]), rec.media_id.0.as_bytes())?;
                t.insert(media_key(&rec.media_id), enc(&rec))?;
                Ok(())
            })
        })
        .await
    }

    async fn media(&self, id: &MediaId) -> Result<Option<MediaRecord>, StoreError> {
        self.view().await?.get(&media_key(id))?.map(|v| dec(&v)).transpose()
    }

    async fn media_by_upload(&self, id: &UploadId) -> Result<Option<MediaRecord>, StoreError> {
        let Some(m) = self.view().await?.get(&key(b"mu/", &[id.0.as_bytes()]))? else {
            return Ok(None);
        };
        let m = MediaId(String::from_utf8(m.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        self.media(&m).await
    }

    async fn update_media(&self, rec: &MediaRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.write(true, move |h| {
            media_txn(&h.tree, |t| {
                let k = media_key(&rec.media_id);
                let cur: MediaRecord = match t.get(&k)? {
                    Some(v) => dec(&v).map_err(Abort::Abort)?,
                    None => return Err(Abort::Abort(StoreError::Changed)),
                };
                if cur.version + 1 != rec.version {
                    return Err(Abort::Abort(StoreError::Changed));
                }
                t.insert(k, enc(&rec))?;
                Ok(())
            })
        })
        .await
    }

    async fn delete_media(&self, id: &MediaId) -> Result<bool, StoreError> {
        let id = id.clone();
        self.write(true, move |h| {
            media_txn(&h.tree, |t| {
                let Some(v) = t.remove(media_key(&id))? else {
                    return Ok(false);
                };
                let rec: MediaRecord = dec(&v).map_err(Abort::Abort)?;
                t.remove(key(b"mu/", &[rec.upload_id.0.as_bytes()]))?;
                let qk = key(b"mq/", &[&be(rec.owner.0)]);
                let used = match t.get(&qk)? {
                    Some(v) => read_u64(&v).map_err(Abort::Abort)?,
                    None => 0,
                };
                t.insert(qk, &be(used.saturating_sub(rec.size))[..])?;
                Ok(true)
            })
        })
        .await
    }

    async fn media_usage(&self, user: UserId) -> Result<u64, StoreError> {
        match self.view().await?.get(&key(b"mq/", &[&be(user.0)]))? {
            Some(v) => read_u64(&v),
            None => Ok(0),
        }
    }

    async fn shared_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let k = key(b"sec/", &[name.as_bytes()]);
        if let Some(v) = self.view().await?.get(&k)? {
            return secret_from(&v);
        }
        let fresh = random_secret();
        let kept = self
            .write(true, move |h| {
                h.tree
                    .compare_and_swap(&k, None as Option<&[u8]>, Some(&fresh[..]))
                    .map_err(backend)
                    .map(|r| match r {
                        Ok(()) => fresh.to_vec(),
                        Err(cas) => cas.current.map(|c| c.to_vec()).unwrap_or_default(),
                    })
            })
            .await?;
        secret_from(&kept)
    }

    async fn key_state(&self, user: UserId, device: DeviceId) -> Result<Option<KeyState>, StoreError> {
        self.get_record(&keys_key(user, device)).await
    }

    async fn user_key_states(&self, user: UserId) -> Result<Vec<KeyState>, StoreError> {
        let mut out = Vec::new();
        for item in self.view().await?.prefix(&key(b"k/", &[&be(user.0)]), false) {
            out.push(dec(&item?.1)?);
        }
        Ok(out)
    }

    async fn put_key_state(&self, rec: &KeyState) -> Result<(), StoreError> {
        self.put_versioned(keys_key(rec.user, rec.device), rec.clone()).await
    }

    async fn delete_key_state(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        self.write(true, move |h| {
            Ok(h.tree.remove(keys_key(user, device)).map_err(backend)?.is_some())
        })
        .await
    }

    async fn user_key(&self, user: UserId) -> Result<Option<UserKeyRecord>, StoreError> {
        self.get_record(&key(b"uk/", &[&be(user.0)])).await
    }

    async fn put_user_key(&self, rec: &UserKeyRecord) -> Result<(), StoreError> {
        self.put_versioned(key(b"uk/", &[&be(rec.user.0)]), rec.clone()).await
    }

    async fn key_backup(&self, user: UserId) -> Result<Option<KeyBackupRecord>, StoreError> {
        self.get_record(&key(b"kb/", &[&be(user.0)])).await
    }

    async fn put_key_backup(&self, rec: &KeyBackupRecord) -> Result<(), StoreError> {
        self.put_versioned(key(b"kb/", &[&be(rec.user.0)]), rec.clone()).await
    }

    async fn put_backup_keys(&self, user: UserId, keys: &[BackupKeyRecord]) -> Result<(), StoreError> {
        let keys = keys.to_vec();
        self.write(true, move |h| {
            let mut batch = sled::Batch::default();
            for k in &keys {
                batch.insert(backup_key_key(user, k.conversation, &k.id()), enc(k));
            }
            h.tree.apply_batch(batch).map_err(backend)
        })
        .await
    }

    async fn backup_keys(
        &self,
        user: UserId,
        conv: ConversationId,
        version: u64,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<BackupKeyRecord>, StoreError> {
        use std::ops::Bound::{Excluded, Included};
        let first = backup_key_key(user, conv, after);
        let end = key(b"kk/", &[&be(user.0), &be(conv.0 + 1)]);
        let start = if after.is_empty() {
            Included(first)
        } else {
            Excluded(first)
        };
        let mut out = Vec::new();
        for item in self.view().await?.range((start, Excluded(end)), false) {
            let rec: BackupKeyRecord = dec(&item?.1)?;
            if rec.version == version {
                out.push(rec);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn expired_uploads(&self, now_ms: u64, limit: usize) -> Result<Vec<MediaId>, StoreError> {
        let mut out = Vec::new();
        for item in self.view().await?.prefix(b"md/", false) {
            let (_, v) = item?;
            let rec: MediaRecord = dec(&v)?;
            if rec.state != MediaState::Ready && rec.expires_ms < now_ms {
                out.push(rec.media_id);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn push_record(&self, user: UserId) -> Result<Option<PushRecord>, StoreError> {
        // The key is made only when the cache does not hold the record.
        self.push_records
            .read_through(
                user,
                || async move { self.get_record(&key(b"pr/", &[&be(user.0)])).await },
            )
            .await
    }

    async fn put_push_record(&self, rec: &PushRecord) -> Result<(), StoreError> {
        let write = self.put_versioned(key(b"pr/", &[&be(rec.user.0)]), rec.clone());
        self.push_records.write_through(rec, write).await
    }

    async fn enqueue_push(&self, job: &PushJob) -> Result<(), StoreError> {
        self.enqueue_pushes(std::slice::from_ref(job)).await
    }

    async fn enqueue_pushes(&self, jobs: &[PushJob]) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let jobs = jobs.to_vec();
        self.write(true, move |h| {
            media_txn(&h.tree, |t| {
                for job in &jobs {
                    let jk = push_job_key(&job.id);
                    let kept = match t.get(&jk)? {
                        Some(v) => {
                            let mut j: PushJob = dec(&v).map_err(Abort::Abort)?;
                            j.seq = j.seq.max(job.seq);
                            j
                        }
                        None => {
                            t.insert(push_due_key(job.due_ms, &job.id), &[][..])?;
                            job.clone()
                        }
                    };
                    t.insert(jk, enc(&kept))?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn due_pushes(&self, now_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError> {
        let view = self.view().await?;
        let mut out = Vec::new();
        for item in view.prefix(b"pd/", false) {
            let (k, _) = item?;
            let due = read_u64(&k[3..])?;
            if due > now_ms || out.len() == limit {
                break;
            }
            let id = std::str::from_utf8(&k[11..]).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(v) = view.get(&push_job_key(id))? {
                out.push(dec(&v)?);
            }
        }
        Ok(out)
    }

    async fn claim_pushes(&self, now_ms: u64, until_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError> {
        let due = self.due_pushes(now_ms, limit).await?;
        let ids: Vec<String> = due.into_iter().map(|j| j.id).collect();
        self.write(true, move |h| {
            media_txn(&h.tree, |t| {
                let mut out = Vec::new();
                for id in &ids {
                    let jk = push_job_key(id);
                    let Some(v) = t.get(&jk)? else { continue };
                    let mut j: PushJob = dec(&v).map_err(Abort::Abort)?;
                    if j.due_ms > now_ms {
                        continue; // moved on meanwhile
                    }
                    let attempts = j.attempts;
                    j = reschedule(t, j, until_ms, attempts)?;
                    out.push(j);
                }
                Ok(out)
            })
        })
        .await
    }

    async fn finish_push(&self, id: &str, sent_seq: u64, next_due_ms: u64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(true, move |h| {
            media_txn(&h.tree, |t| {
                let jk = push_job_key(&id);
                let Some(v) = t.get(&jk)? else { return Ok(()) };
                let j: PushJob = dec(&v).map_err(Abort::Abort)?;
                if j.seq > sent_seq {
                    reschedule(t, j, next_due_ms, 0)?;
                } else {
                    t.remove(push_due_key(j.due_ms, &id))?;
                    t.remove(jk)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn retry_push(&self, id: &str, due_ms: u64, attempts: u32) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(true, move |h| {
            media_txn(&h.tree, |t| {
                let jk = push_job_key(&id);
                let Some(v) = t.get(&jk)? else { return Ok(()) };
                reschedule(t, dec(&v).map_err(Abort::Abort)?, due_ms, attempts)?;
                Ok(())
            })
        })
        .await
    }

    async fn drop_push(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(true, move |h| {
            media_txn(&h.tree, |t| {
                let jk = push_job_key(&id);
                if let Some(v) = t.get(&jk)? {
                    let j: PushJob = dec(&v).map_err(Abort::Abort)?;
                    t.remove(push_due_key(j.due_ms, &id))?;
                    t.remove(jk)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn get_push(&self, id: &str) -> Result<Option<PushJob>, StoreError> {
        let view = self.view().await?;
        view.get(&push_job_key(id))?.map(|v| dec(&v)).transpose()
    }

    async fn doc(&self, space: &str, key: &str) -> Result<Option<Doc>, StoreError> {
        self.view()
            .await?
            .get(&doc_key(space, key))?
            .map(|v| read_doc(&v))
            .transpose()
    }

    async fn put_doc(&self, space: &str, key: &str, expected: u64, value: Vec<u8>) -> Result<bool, StoreError> {
        let k = doc_key(space, key);
        let current = self.view().await?.get(&k)?;
        let version = current.as_deref().map(read_doc).transpose()?.map_or(0, |d| d.version);
        if version != expected {
            return Ok(false);
        }
        let mut next = be(expected + 1).to_vec();
        next.extend_from_slice(&value);
        self.write(true, move |h| {
            h.tree
                .compare_and_swap(&k, current, Some(next))
                .map_err(backend)
                .map(|r| r.is_ok())
        })
        .await
    }

    async fn delete_doc(&self, space: &str, key: &str) -> Result<bool, StoreError> {
        let k = doc_key(space, key);
        self.write(true, move |h| {
            h.tree.remove(&k).map_err(backend).map(|old| old.is_some())
        })
        .await
    }

    async fn docs(&self, space: &str, after: &str, limit: usize) -> Result<Vec<(String, Doc)>, StoreError> {
        let view = self.view().await?;
        let prefix = doc_key(space, "");
        let (_, end) = super::sled_health::prefix_range(&prefix);
        let start = std::ops::Bound::Excluded(doc_key(space, after));
        view.range((start, end), false)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), read_doc(&v)?))
            })
            .collect()
    }
}

use sled::transaction::ConflictableTransactionError as Abort;

/// `x/<space>\0<key>` → the version (8 bytes, big-endian) then the value.
fn doc_key(space: &str, key: &str) -> Vec<u8> {
    self::key(b"x/", &[space.as_bytes(), b"\0", key.as_bytes()])
}

fn read_doc(v: &[u8]) -> Result<Doc, StoreError> {
    Ok(Doc {
        version: read_u64(v)?,
        value: v[8..].to_vec(),
    })
}

fn push_job_key(id: &str) -> Vec<u8> {
    key(b"pj/", &[id.as_bytes()])
}

/// Move a queued job to `due_ms` with `attempts` (its order key with it).
fn reschedule(
    t: &sled::transaction::TransactionalTree,
    mut j: PushJob,
    due_ms: u64,
    attempts: u32,
) -> Result<PushJob, Abort<StoreError>> {
    t.remove(push_due_key(j.due_ms, &j.id))?;
    j.due_ms = due_ms;
    j.attempts = attempts;
    t.insert(push_due_key(j.due_ms, &j.id), &[][..])?;
    t.insert(push_job_key(&j.id), enc(&j))?;
    Ok(j)
}

/// The queue's order: `pd/<due ms, big-endian><job id>`.
fn push_due_key(due_ms: u64, id: &str) -> Vec<u8> {
    key(b"pd/", &[&be(due_ms), id.as_bytes()])
}

fn keys_key(user: UserId, device: DeviceId) -> Vec<u8> {
    key(b"k/", &[&be(user.0), &be(device.0)])
}

fn backup_key_key(user: UserId, conv: ConversationId, id: &[u8]) -> Vec<u8> {
    key(b"kk/", &[&be(user.0), &be(conv.0), id])
}

fn media_key(id: &MediaId) -> Vec<u8> {
    key(b"md/", &[id.0.as_bytes()])
}

/// One serializable transaction over the tree, its abort being a typed store error.
fn media_txn<T>(
    tree: &sled::Tree,
    f: impl Fn(&sled::transaction::TransactionalTree) -> Result<T, Abort<StoreError>>,
) -> Result<T, StoreError> {
    match tree.transaction(|t| f(t)) {
        Ok(v) => Ok(v),
        Err(sled::transaction::TransactionError::Abort(e)) => Err(e),
        Err(sled::transaction::TransactionError::Storage(e)) => Err(backend(e)),
    }
}

impl SledStore {
    async fn cursor(&self, prefix: &[u8], user: UserId, conv: ConversationId) -> Result<Seq, StoreError> {
        let v = self.view().await?.get(&key(prefix, &[&be(user.0), &be(conv.0)]))?;
        Ok(Seq(v.map(|v| read_u64(&v)).transpose()?.unwrap_or(0)))
    }
}

/// Max-merge a cursor.
fn bump(tree: &sled::Tree, prefix: &[u8], user: UserId, conv: ConversationId, seq: Seq) -> Result<Seq, StoreError> {
    let k = key(prefix, &[&be(user.0), &be(conv.0)]);
    let v = tree
        .update_and_fetch(k, |old| {
            let cur = old
                .and_then(|o| o.get(..8))
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                .unwrap_or(0);
            Some(be(cur.max(seq.0)).to_vec())
        })
        .map_err(backend)?;
    Ok(Seq(v.map(|v| read_u64(&v)).transpose()?.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    /// The shared store suite, one test per behaviour.
    mod suite {
        crate::store::suite::store_suite!({
            let dir = tempfile::tempdir().unwrap();
            let store = crate::store::SledStore::open(dir.path()).unwrap();
            (dir, store)
        });
    }

    #[tokio::test]
    async fn sled_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = super::SledStore::open(dir.path()).unwrap();
            super::Store::create_user(&store, "zed", "h", 1).await.unwrap()
        };
        // sled's flusher thread lets go of the directory lock shortly after the last handle
        // drops; wait for that (bounded) rather than race it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match super::SledStore::open(dir.path()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("reopening: {e}"),
            }
        };
        assert_eq!(super::Store::user_by_name(&store, "zed").await.unwrap().unwrap().id, id);
    }
}
