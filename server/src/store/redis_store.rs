//! The [`Store`] on Redis (one server or Redis Cluster), for running several natter nodes.
//!
//! Key layout (`n:` prefix; `{…}` is a Redis Cluster hash tag, so each conversation's keys
//! share one slot and one script can touch them all atomically):
//!
//! | key | type | what |
//! |---|---|---|
//! | `n:{c:ID}:last` | string | newest seq |
//! | `n:{c:ID}:ev` | hash seq → protobuf | the event log |
//! | `n:{c:ID}:meta` | string (JSON) | attributes |
//! | `n:{c:ID}:mem` | hash user → JSON | members |
//! | `n:{c:ID}:sent` | hash "user:client id" → "seq:time" | idempotency keys |
//! | `n:{c:ID}:read`, `n:{c:ID}:dlv` | hash user → seq | read and delivered cursors |
//! | `n:{c:ID}:msg` | hash seq → JSON | message state (edits, deletes, reactions) |
//! | `n:{c:ID}:fence` | counter | written before a duplicate answer waits for replicas |
//! | `n:{u:ID}:user` / `:devs` / `:convs` / `:presence` | | account, devices, conversation index, last seen |
//! | `n:{u:ID}:keys` | hash device → JSON, `device:v` → version | end-to-end encryption keys |
//! | `n:uname:NAME`, `n:tok:HEX`, `n:direct:A:B`, `n:chan:NAME`, `n:ids` | string | unique claims and the id counter |
//!
//! Seq assignment is a compare-and-set inside the commit script: a batch for a conversation
//! commits only if the conversation's last seq is still the one the committing shard saw
//! (seq of its first event − 1), in one round trip. Every change to a conversation is an
//! event, so an unchanged last seq means the shard's cached state (members, roles) was
//! current. Otherwise the script changes nothing and the commit reports
//! [`StoreError::Conflict`]: another node committed first, and the shard reloads and retries.
//!
//! A user's conversation index lives in the user's slot, so it cannot join the script: it
//! is added to *before* the commit and pruned after a removal, and `user_conversations`
//! keeps only conversations whose member list holds the user. An index entry may be stale;
//! it is never missing.
//!
//! Durability is Redis's: run it with `appendonly yes` and `appendfsync always` for
//! guarantee 2 (an ack means durable) on one machine. Against losing the machine, run
//! replicas and set [`Durability::replicas`]: every acknowledged write (a commit, an
//! account, a device) is then followed by `WAIT n timeout`, and a write fewer than `n`
//! replicas confirmed in time is answered `Unavailable` — it may exist on the primary, so a
//! retry finds it, and that duplicate answer waits for the replicas too (docs/SCALING.md).
use async_trait::async_trait;
use natter_protocol::pb;
use natter_protocol::{ConversationId, DeviceId, Seq, UserId};
use prost::Message as _;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

use super::*;

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    /// One server (reconnects by itself).
    Single(ConnectionManager),
    /// A cluster (routes by slot, follows redirects).
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

/// How long one command may wait for its answer beyond the longest `WAIT` it may carry, on
/// a single server: the client library's own default.
const SINGLE_RESPONSE: Duration = Duration::from_millis(500);
/// The same on a cluster: more, since each node fsyncs on its own and a slow one should not
/// fail a healthy commit. The cluster client has no limit of its own, and a node that never
/// answers must not hold a caller forever.
const CLUSTER_RESPONSE: Duration = Duration::from_secs(5);
/// Opening one TCP connection to a node.
const CONNECT: Duration = Duration::from_secs(1);
/// Joining a cluster (connections to the seed nodes and the slot map), per try. The cluster
/// client can wait forever here (redis-rs issue 1953), so it is bounded and tried again.
const CLUSTER_JOIN: Duration = Duration::from_secs(10);
const CLUSTER_JOIN_TRIES: u32 = 3;

impl RedisConn {
    /// Connect: one URL is a single server, several are the seed nodes of a cluster.
    /// `longest_wait` is the longest `WAIT` a command may carry
    /// ([`Durability::timeout_ms`]); every command's answer is awaited that long and a
    /// margin more, never forever.
    pub async fn connect(urls: &[String], cluster: bool, longest_wait: Duration) -> Result<Self, StoreError> {
        if cluster {
            let client = redis::cluster::ClusterClient::builder(urls.to_vec())
                .connection_timeout(CONNECT)
                .response_timeout(CLUSTER_RESPONSE + longest_wait)
                .build()
                .map_err(backend)?;
            let mut last = String::new();
            for _ in 0..CLUSTER_JOIN_TRIES {
                match tokio::time::timeout(CLUSTER_JOIN, client.get_async_connection()).await {
                    Ok(Ok(conn)) => return Ok(RedisConn::Cluster(conn)),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = format!("no answer within {CLUSTER_JOIN:?}"),
                }
            }
            Err(StoreError::Unavailable(format!(
                "joining the Redis Cluster failed {CLUSTER_JOIN_TRIES} times; last: {last}"
            )))
        } else {
            let url = urls
                .first()
                .ok_or_else(|| StoreError::Backend("no Redis URL configured".into()))?;
            let client = redis::Client::open(url.as_str()).map_err(backend)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT))
                .set_response_timeout(Some(SINGLE_RESPONSE + longest_wait));
            Ok(RedisConn::Single(
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(backend)?,
            ))
        }
    }

    /// Run one command.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        match self.clone() {
            RedisConn::Single(mut c) => cmd.query_async(&mut c).await.map_err(redis_error),
            RedisConn::Cluster(mut c) => cmd.query_async(&mut c).await.map_err(redis_error),
        }
    }

    /// Run commands whose keys may live in different cluster slots; results in order. One
    /// pipeline on a single server, concurrent commands on a cluster.
    pub async fn each<T: redis::FromRedisValue>(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<T>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisConn::Single(_) => {
                let mut p = redis::pipe();
                for c in cmds {
                    p.add_command(c);
                }
                self.pipe(&p).await
            }
            RedisConn::Cluster(_) => futures::future::try_join_all(cmds.iter().map(|c| self.query(c))).await,
        }
    }

    /// Run a pipeline whose keys all share one cluster slot (not atomic).
    pub async fn pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        match self.clone() {
            RedisConn::Single(mut c) => pipe.query_async(&mut c).await.map_err(redis_error),
            RedisConn::Cluster(mut c) => pipe.query_async(&mut c).await.map_err(redis_error),
        }
    }

    /// Run a script.
    pub async fn script<T: redis::FromRedisValue>(&self, inv: &redis::ScriptInvocation<'_>) -> Result<T, StoreError> {
        match self.clone() {
            RedisConn::Single(mut c) => inv.invoke_async(&mut c).await.map_err(redis_error),
            RedisConn::Cluster(mut c) => inv.invoke_async(&mut c).await.map_err(redis_error),
        }
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A Redis error as the store's: Redis unreachable, read-only (a replica, or a primary
/// demoted in a failover), out of memory, refusing writes after a failed save, loading, or
/// a cluster without a master for the slot is `Unavailable` — the write did not happen and
/// may succeed later (PROTOCOL.md §6.2, `STORAGE_UNAVAILABLE`); anything else is `Backend`.
fn redis_error(e: redis::RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let unavailable = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading)
        )
        || matches!(e.code(), Some("OOM" | "MISCONF" | "NOREPLICAS"));
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode_event(b: &[u8]) -> Result<pb::ConversationEvent, StoreError> {
    pb::ConversationEvent::decode(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn ck(conv: ConversationId, what: &str) -> String {
    format!("n:{{c:{}}}:{what}", conv.0)
}

fn uk(user: UserId, what: &str) -> String {
    format!("n:{{u:{}}}:{what}", user.0)
}

/// Commit one conversation's events if its last seq is still ARGV[1]. Layout of ARGV after
/// the count, per commit: seq, event, meta ("" = none), n upserts, (user, member)*, n
/// removals, user*, idempotency field ("" = none), its value, n read cursors, (user, seq)*,
/// message-state seq ("0" = none), its state.
const COMMIT: &str = r#"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last ~= tonumber(ARGV[1]) then return {0, last} end
local i = 3
local seq = last
for c = 1, tonumber(ARGV[2]) do
  seq = tonumber(ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2
  if ARGV[i] ~= '' then redis.call('SET', KEYS[3], ARGV[i]) end; i = i + 1
  local n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]); i = i + 2 end
  n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('HDEL', KEYS[4], ARGV[i]); i = i + 1 end
  if ARGV[i] ~= '' then redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1]) end; i = i + 2
  n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do
    local cur = tonumber(redis.call('HGET', KEYS[6], ARGV[i]) or '0')
    if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1]) end
    i = i + 2
  end
  if ARGV[i] ~= '0' then redis.call('HSET', KEYS[7], ARGV[i], ARGV[i + 1]) end; i = i + 2
end
redis.call('SET', KEYS[1], seq)
return {1, seq}
"#;

/// Move a cursor (hash KEYS[1], field ARGV[1]) forward to ARGV[2]; return the cursor.
const BUMP: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
if new > cur then redis.call('HSET', KEYS[1], ARGV[1], new); return new end
return cur
"#;

/// Replace a media record (hash KEYS[1]: `v` version, `r` record) if its version is
/// ARGV[1]; 1 if replaced.
const MEDIA_CAS: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if v == false or tonumber(v) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'r', ARGV[3])
return 1
"#;

/// Replace a device's key record (hash KEYS[1], one user's: field ARGV[1] the record,
/// `ARGV[1]:v` its version) if its version is ARGV[2] (0: none yet); 1 if written.
const KEYS_CAS: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1] .. ':v')
local now = 0
if v then now = tonumber(v) end
if now ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. ':v', ARGV[3], ARGV[1], ARGV[4])
return 1
"#;

/// The push queue (PROTOCOL.md §13.4): one slot (`{push}`) on a cluster. A job's record is
/// written once; what changes lives beside it: its seq, its attempts, and its due time as
/// the score in the due set.
/// The user directory: a sorted set of `<username>\0<id>` (scores 0, so by name).
const UNAMES: &str = "n:unames";
/// Users left out of the directory.
const UNLISTED: &str = "n:unlisted";
/// Channel names: a sorted set of `<name>\0<conversation id>`.
const CHANNELS: &str = "n:channames";
const PUSH_JOBS: &str = "n:{push}:jobs";
const PUSH_DUE: &str = "n:{push}:due";
const PUSH_SEQ: &str = "n:{push}:seq";
const PUSH_ATTEMPTS: &str = "n:{push}:attempts";

fn push_keys(inv: &mut redis::ScriptInvocation<'_>) {
    inv.key(PUSH_JOBS).key(PUSH_DUE).key(PUSH_SEQ).key(PUSH_ATTEMPTS);
}

/// ARGV: id, job, due, seq. A queued job takes the larger seq; a new one is queued.
static PUSH_ENQUEUE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  local now = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  if tonumber(ARGV[4]) > now then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
end
"#,
    )
});

/// ARGV: now, until, limit. The due jobs, each now due at `until` (claimed by the caller
/// until then): `(id, until)` pairs.
static PUSH_CLAIM: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[2], ARGV[2], id)
  table.insert(out, id)
  table.insert(out, ARGV[2])
end
return out
"#,
    )
});

/// ARGV: id, sent seq, next due. Gone if nothing newer came; else due again.
static PUSH_FINISH: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return end
if tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') > tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
end
"#,
    )
});

/// ARGV: id, due, attempts.
static PUSH_RETRY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
"#,
    )
});

/// ARGV: id.
static PUSH_DROP: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
"#,
    )
});

/// Documents ([`super::docs`]): per space one slot (`{x:<space>}`) with the values, the
/// versions and the keys in order. KEYS: values, versions, order.
fn doc_keys(inv: &mut redis::ScriptInvocation<'_>, space: &str) {
    inv.key(format!("n:{{x:{space}}}:d"))
        .key(format!("n:{{x:{space}}}:v"))
        .key(format!("n:{{x:{space}}}:z"));
}

/// ARGV: key. `{version, value}` or nil.
static DOC_GET: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return nil end
return {v, redis.call('HGET', KEYS[1], ARGV[1])}
"#,
    )
});

/// ARGV: key, expected version, value. 1 if written.
static DOC_PUT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local v = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if v ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], v + 1)
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
"#,
    )
});

/// ARGV: (seq, event) pairs. Replaces the events that exist; how many.
static REWRITE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"#,
    )
});

/// KEYS: ev, msg, floor. ARGV: through. Removes the events (and message states) above the
/// floor up to `through` and raises the floor, atomically; the caller bounds the count.
static REMOVE_EVENTS: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local cur = tonumber(redis.call('GET', KEYS[3]) or '0')
local through = tonumber(ARGV[1])
if through <= cur then return 0 end
for i = cur + 1, through do
  redis.call('HDEL', KEYS[1], i)
  redis.call('HDEL', KEYS[2], i)
end
redis.call('SET', KEYS[3], through)
return through - cur
"#,
    )
});

/// ARGV: key. 1 if there was one.
static DOC_DELETE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
"#,
    )
});

/// ARGV: lex start ("-" or "(<after>"), limit. Flat `key, version, value` triples.
static DOC_LIST: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local ks = redis.call('ZRANGEBYLEX', KEYS[3], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, k in ipairs(ks) do
  table.insert(out, k)
  table.insert(out, redis.call('HGET', KEYS[2], k) or '0')
  table.insert(out, redis.call('HGET', KEYS[1], k) or '')
end
return out
"#,
    )
});

fn doc_version(v: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt("document version".into()))
}

/// Keys of media records: one hash per file (`v`, `r`), the upload id → file id, and the
/// set of unfinished uploads scored by expiry. Media ids are random, so each record is a
/// slot of its own on a cluster; updates of one record are one script.
fn mk(id: &MediaId) -> String {
    format!("n:{{m:{}}}:media", id.0)
}
fn upk(id: &UploadId) -> String {
    format!("n:upload:{}", id.0)
}
const EXPIRING: &str = "n:media:expiring";

/// How many replicas must confirm a write before it is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durability {
    /// Replicas that must have the write (`WAIT replicas timeout`); 0: the primary alone.
    pub replicas: u32,
    /// How long to wait for them before the write is answered `Unavailable`.
    pub timeout_ms: u64,
}

/// The store on Redis.
#[derive(Debug)]
pub struct RedisStore {
    conn: RedisConn,
    commit: redis::Script,
    bump: redis::Script,
    media_cas: redis::Script,
    keys_cas: redis::Script,
    durability: Durability,
}

impl RedisStore {
    /// The record in `field` of hash `key`, if there is one.
    async fn get_field<T: DeserializeOwned>(
        &self,
        key: String,
        field: impl redis::ToRedisArgs,
    ) -> Result<Option<T>, StoreError> {
        let raw: Option<Vec<u8>> = self.conn.query(redis::cmd("HGET").arg(key).arg(field)).await?;
        raw.map(|b| dec(&b)).transpose()
    }

    /// Write `rec` as `field` of hash `key` (in the user's slot) only over the record at
    /// the version before it (none: 0), by the key records' CAS script; otherwise
    /// [`StoreError::Changed`]. Replicated when it returns.
    async fn put_versioned<T: Versioned + Serialize>(
        &self,
        key: String,
        field: impl redis::ToRedisArgs,
        rec: &T,
    ) -> Result<(), StoreError> {
        let mut inv = self.keys_cas.key(key);
        inv.arg(field)
            .arg(rec.version().saturating_sub(1))
            .arg(rec.version())
            .arg(enc(rec));
        let replaced: i64 = self.conn.script(&inv).await?;
        if replaced == 0 {
            return Err(StoreError::Changed);
        }
        self.replicated().await
    }

    /// A store over an open connection; writes are acknowledged once the primary has them.
    pub fn new(conn: RedisConn) -> Self {
        Self::with_durability(conn, Durability::default())
    }

    /// A store whose acknowledged writes are on `durability.replicas` replicas too.
    pub fn with_durability(conn: RedisConn, durability: Durability) -> Self {
        RedisStore {
            conn,
            commit: redis::Script::new(COMMIT),
            bump: redis::Script::new(BUMP),
            media_cas: redis::Script::new(MEDIA_CAS),
            keys_cas: redis::Script::new(KEYS_CAS),
            durability,
        }
    }

    /// Wait until the configured replicas hold every write made on this connection so far
    /// (Redis tracks the replication offset per client; the connection is one multiplexed
    /// client, so this covers the caller's write). On a cluster `WAIT` goes to every
    /// primary and the smallest count counts.
    async fn replicated(&self) -> Result<(), StoreError> {
        let Durability { replicas, timeout_ms } = self.durability;
        if replicas == 0 {
            return Ok(());
        }
        let got: u64 = self
            .conn
            .query(redis::cmd("WAIT").arg(replicas).arg(timeout_ms.max(1)))
            .await?;
        if got < u64::from(replicas) {
            return Err(StoreError::Unavailable(format!(
                "the write reached {got} of {replicas} required Redis replicas within {timeout_ms} ms"
            )));
        }
        Ok(())
    }

    /// Before answering from a write found in the store (an idempotent retry): make sure
    /// it is on the replicas too. A write of our own to the same slot (`fence`) orders
    /// after the one we read, so waiting for ours covers it, whichever node wrote it.
    async fn replicated_before(&self, fence: String) -> Result<(), StoreError> {
        if self.durability.replicas == 0 {
            return Ok(());
        }
        self.conn.query::<redis::Value>(redis::cmd("INCR").arg(fence)).await?;
        self.replicated().await
    }

    /// The connection (shared with the cluster bus and directory).
    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    async fn next_id(&self) -> Result<u64, StoreError> {
        self.conn.query(redis::cmd("INCR").arg("n:ids")).await
    }

    /// Bind `key` to `candidate` unless bound; return the bound value.
    async fn claim(&self, key: String, candidate: ConversationId) -> Result<ConversationId, StoreError> {
        let set: bool = self
            .conn
            .query(redis::cmd("SET").arg(&key).arg(candidate.0).arg("NX"))
            .await?;
        if set {
            return Ok(candidate);
        }
        let bound: u64 = self.conn.query(redis::cmd("GET").arg(&key)).await?;
        Ok(ConversationId(bound))
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let raw: Option<Vec<u8>> = self.conn.query(redis::cmd("GET").arg(key)).await?;
        raw.map(|b| dec(&b)).transpose()
    }

    async fn hget_seq(&self, key: String, field: u64) -> Result<Seq, StoreError> {
        let v: Option<u64> = self.conn.query(redis::cmd("HGET").arg(key).arg(field)).await?;
        Ok(Seq(v.unwrap_or(0)))
    }

    async fn bump(&self, key: String, user: UserId, seq: Seq) -> Result<Seq, StoreError> {
        let mut inv = self.bump.key(key);
        inv.arg(user.0).arg(seq.0);
        Ok(Seq(self.conn.script(&inv).await?))
    }

    async fn last_seq(&self, conv: ConversationId) -> Result<Seq, StoreError> {
        let v: Option<u64> = self.conn.query(redis::cmd("GET").arg(ck(conv, "last"))).await?;
        Ok(Seq(v.unwrap_or(0)))
    }

    /// Events at these seqs, in the given order, skipping holes.
    async fn events_at(&self, conv: ConversationId, seqs: &[u64]) -> Result<Vec<pb::ConversationEvent>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<Vec<u8>>> = self
            .conn
            .query(redis::cmd("HMGET").arg(ck(conv, "ev")).arg(seqs))
            .await?;
        raw.into_iter().flatten().map(|b| decode_event(&b)).collect()
    }

    /// Commit one conversation's run of events with the compare-and-set script.
    async fn commit_conversation(&self, conv: ConversationId, commits: &[&Commit]) -> Result<bool, StoreError> {
        // The index first: a member is always in their index (see the module docs).
        let index = commits
            .iter()
            .flat_map(|c| &c.upsert_members)
            .map(|m| redis::cmd("SADD").arg(uk(m.user, "convs")).arg(conv.0).to_owned())
            .collect();
        self.conn.each::<redis::Value>(index).await?;

        let expected = commits[0].event.seq - 1;
        let mut inv = self.commit.prepare_invoke();
        for what in ["last", "ev", "meta", "mem", "sent", "read", "msg"] {
            inv.key(ck(conv, what));
        }
        inv.arg(expected).arg(commits.len());
        for c in commits {
            inv.arg(c.event.seq).arg(c.event.encode_to_vec());
            inv.arg(c.meta.as_ref().map(enc).unwrap_or_default());
            inv.arg(c.upsert_members.len());
            for m in &c.upsert_members {
                inv.arg(m.user.0).arg(enc(m));
            }
            inv.arg(c.remove_members.len());
            for u in &c.remove_members {
                inv.arg(u.0);
            }
            match &c.idempotency {
                Some((sender, id)) => {
                    inv.arg(format!("{}:{id}", sender.0))
                        .arg(format!("{}:{}", c.event.seq, c.event.server_time_ms));
                }
                None => {
                    inv.arg("").arg("");
                }
            }
            inv.arg(c.read_cursors.len());
            for (u, s) in &c.read_cursors {
                inv.arg(u.0).arg(s.0);
            }
            match &c.message_state {
                Some((seq, state)) => {
                    inv.arg(seq.0).arg(enc(state));
                }
                None => {
                    inv.arg(0).arg("");
                }
            }
        }
        let (ok, _last): (u8, u64) = self.conn.script(&inv).await?;
        if ok == 0 {
            return Ok(false);
        }
        let prune = commits
            .iter()
            .flat_map(|c| &c.remove_members)
            .map(|u| redis::cmd("SREM").arg(uk(*u, "convs")).arg(conv.0).to_owned())
            .collect();
        self.conn.each::<redis::Value>(prune).await?;
        Ok(true)
    }
}

impl RedisStore {
    /// The queued jobs of `(id, due)` pairs, with their current seq and attempts.
    async fn push_jobs(&self, ids: Vec<String>) -> Result<Vec<PushJob>, StoreError> {
        let mut out = Vec::new();
        for pair in ids.chunks(2) {
            let [id, due] = pair else { break };
            let (job, seq, attempts): (Option<Vec<u8>>, Option<u64>, Option<u32>) = self
                .conn
                .query(
                    redis::cmd("EVAL")
                        .arg("return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HGET', KEYS[2], ARGV[1]), redis.call('HGET', KEYS[3], ARGV[1])}")
                        .arg(3)
                        .arg(PUSH_JOBS)
                        .arg(PUSH_SEQ)
                        .arg(PUSH_ATTEMPTS)
                        .arg(id),
                )
                .await?;
            let Some(job) = job else { continue };
            let mut job: PushJob = dec(&job)?;
            job.seq = seq.unwrap_or(job.seq);
            job.attempts = attempts.unwrap_or(0);
            job.due_ms = due
                .parse()
                .map_err(|e: std::num::ParseIntError| StoreError::Corrupt(e.to_string()))?;
            out.push(job);
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn create_user(&self, username: &str, password_hash: &str, now_ms: u64) -> Result<UserId, StoreError> {
        let id = UserId(self.next_id().await?);
        let rec = UserRecord {
            id,
            username: username.to_string(),
            password_hash: password_hash.to_string(),
            created_ms: now_ms,
        };
        // The record first, then the name: a name never points at a missing record.
        self.conn
            .query::<()>(redis::cmd("SET").arg(uk(id, "user")).arg(enc(&rec)))
            .await?;
        let claimed: bool = self
            .conn
            .query(redis::cmd("SET").arg(format!("n:uname:{username}")).arg(id.0).arg("NX"))
            .await?;
        if claimed {
            // The directory: member `<username>\0<id>`, scores 0, so names sort by bytes.
            self.conn
                .query::<()>(
                    redis::cmd("ZADD")
                        .arg(UNAMES)
                        .arg(0)
                        .arg(format!("{username}\0{}", id.0)),
                )
                .await?;
            self.replicated().await?;
            Ok(id)
        } else {
            Err(StoreError::UsernameTaken)
        }
    }

    async fn users_by_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        let mut out = Vec::new();
        let mut from = format!("[{prefix}");
        let to = format!("[{prefix}\u{10FFFF}");
        // Pages past unlisted users until `limit` are found or the names run out.
        loop {
            let page: Vec<String> = self
                .conn
                .query(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(UNAMES)
                        .arg(&from)
                        .arg(&to)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit.max(16)),
                )
                .await?;
            let Some(last) = page.last().cloned() else {
                return Ok(out);
            };
            let ids: Vec<u64> = page
                .iter()
                .filter_map(|m| m.rsplit_once('\0').and_then(|(_, id)| id.parse().ok()))
                .collect();
            let hidden: Vec<bool> = self
                .conn
                .query(redis::cmd("SMISMEMBER").arg(UNLISTED).arg(&ids))
                .await?;
            for (id, hidden) in ids.iter().zip(hidden) {
                if hidden {
                    continue;
                }
                if let Some(u) = self.get_json::<UserRecord>(&uk(UserId(*id), "user")).await? {
                    out.push(u);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            from = format!("({last}");
        }
    }

    async fn set_unlisted(&self, user: UserId, unlisted: bool) -> Result<(), StoreError> {
        let cmd = if unlisted { "SADD" } else { "SREM" };
        self.conn.query::<()>(redis::cmd(cmd).arg(UNLISTED).arg(user.0)).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let id: Option<u64> = self
            .conn
            .query(redis::cmd("GET").arg(format!("n:uname:{username}")))
            .await?;
        match id {
            Some(id) => self.get_json(&uk(UserId(id), "user")).await,
            None => Ok(None),
        }
    }

    async fn create_device(
        &self,
        user: UserId,
        username: &str,
        name: &str,
        token_hash: [u8; 32],
        now_ms: u64,
    ) -> Result<DeviceId, StoreError> {
        let id = DeviceId(self.next_id().await?);
        let rec = DeviceRecord {
            id,
            user,
            username: username.to_string(),
            name: name.to_string(),
            created_ms: now_ms,
            revoked: false,
        };
        self.conn
            .query::<()>(redis::cmd("HSET").arg(uk(user, "devs")).arg(id.0).arg(enc(&rec)))
            .await?;
        self.conn
            .query::<()>(
                redis::cmd("SET")
                    .arg(format!("n:tok:{}", hex::encode(token_hash)))
                    .arg(format!("{}:{}", user.0, id.0)),
            )
            .await?;
        self.replicated().await?;
        Ok(id)
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError> {
        let bound: Option<String> = self
            .conn
            .query(redis::cmd("GET").arg(format!("n:tok:{}", hex::encode(token_hash))))
            .await?;
        let Some((user, device)) = bound.as_deref().and_then(|b| b.split_once(':')) else {
            return Ok(None);
        };
        let (user, device): (u64, u64) = match (user.parse(), device.parse()) {
            (Ok(u), Ok(d)) => (u, d),
            _ => return Err(StoreError::Corrupt(format!("token binding {bound:?}"))),
        };
        let raw: Option<Vec<u8>> = self
            .conn
            .query(redis::cmd("HGET").arg(uk(UserId(user), "devs")).arg(device))
            .await?;
        let rec: Option<DeviceRecord> = raw.map(|b| dec(&b)).transpose()?;
        Ok(rec.filter(|d| !d.revoked))
    }

    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        let raw: Option<Vec<u8>> = self
            .conn
            .query(redis::cmd("HGET").arg(uk(user, "devs")).arg(device.0))
            .await?;
        let Some(mut rec) = raw.map(|b| dec::<DeviceRecord>(&b)).transpose()? else {
            return Ok(false);
        };
        if rec.revoked {
            return Ok(false);
        }
        rec.revoked = true;
        self.conn
            .query::<()>(redis::cmd("HSET").arg(uk(user, "devs")).arg(device.0).arg(enc(&rec)))
            .await?;
        self.replicated().await?;
        Ok(true)
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        let raw: Vec<Vec<u8>> = self.conn.query(redis::cmd("HVALS").arg(uk(user, "devs"))).await?;
        let mut list = raw
            .iter()
            .map(|b| dec::<DeviceRecord>(b))
            .collect::<Result<Vec<_>, _>>()?;
        list.sort_by_key(|d| d.id);
        Ok(list)
    }

    async fn allocate_conversation_id(&self) -> Result<ConversationId, StoreError> {
        Ok(ConversationId(self.next_id().await?))
    }

    async fn claim_direct(
        &self,
        a: UserId,
        b: UserId,
        encrypted: bool,
        candidate: ConversationId,
    ) -> Result<ConversationId, StoreError> {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let kind = if encrypted { ":e" } else { "" };
        self.claim(format!("n:direct:{}:{}{kind}", lo.0, hi.0), candidate).await
    }

    async fn claim_channel_name(&self, name: &str, candidate: ConversationId) -> Result<ConversationId, StoreError> {
        let owner = self.claim(format!("n:chan:{name}"), candidate).await?;
        self.conn
            .query::<()>(
                redis::cmd("ZADD")
                    .arg(CHANNELS)
                    .arg(0)
                    .arg(format!("{name}\0{}", owner.0)),
            )
            .await?;
        Ok(owner)
    }

    async fn channels_by_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, ConversationId)>, StoreError> {
        let page: Vec<String> = self
            .conn
            .query(
                redis::cmd("ZRANGEBYLEX")
                    .arg(CHANNELS)
                    .arg(format!("[{prefix}"))
                    .arg(format!("[{prefix}\u{10FFFF}"))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        Ok(page
            .iter()
            .filter_map(|m| {
                let (name, id) = m.rsplit_once('\0')?;
                Some((name.to_string(), ConversationId(id.parse().ok()?)))
            })
            .collect())
    }

    async fn channel_by_name(&self, name: &str) -> Result<Option<ConversationId>, StoreError> {
        let v: Option<u64> = self.conn.query(redis::cmd("GET").arg(format!("n:chan:{name}"))).await?;
        Ok(v.map(ConversationId))
    }

    async fn load_conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        let mut p = redis::pipe();
        p.cmd("GET").arg(ck(id, "meta"));
        p.cmd("HVALS").arg(ck(id, "mem"));
        p.cmd("GET").arg(ck(id, "last"));
        let (meta, members, last): (Option<Vec<u8>>, Vec<Vec<u8>>, Option<u64>) = self.conn.pipe(&p).await?;
        let Some(meta) = meta else { return Ok(None) };
        Ok(Some(ConversationRecord {
            meta: dec(&meta)?,
            members: members.iter().map(|b| dec(b)).collect::<Result<_, _>>()?,
            last_seq: Seq(last.unwrap_or(0)),
        }))
    }

    async fn conversations_after(
        &self,
        after: ConversationId,
        limit: usize,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        // Conversation ids come from the counter every id does: look at them in windows.
        const WINDOW: u64 = 512;
        let newest: Option<u64> = self.conn.query(redis::cmd("GET").arg("n:ids")).await?;
        let newest = newest.unwrap_or(0);
        let mut out = Vec::new();
        let mut from = after.0.saturating_add(1);
        while out.len() < limit && from <= newest {
            let to = from.saturating_add(WINDOW - 1).min(newest);
            let ids: Vec<ConversationId> = (from..=to).map(ConversationId).collect();
            let cmds = ids
                .iter()
                .flat_map(|id| {
                    [
                        redis::cmd("EXISTS").arg(ck(*id, "meta")).to_owned(),
                        redis::cmd("GET").arg(ck(*id, "last")).to_owned(),
                    ]
                })
                .collect();
            let found: Vec<redis::Value> = self.conn.each(cmds).await?;
            for (id, pair) in ids.iter().zip(found.chunks(2)) {
                let exists: bool = redis::FromRedisValue::from_redis_value(pair[0].clone())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if exists && out.len() < limit {
                    let last: Option<u64> = redis::FromRedisValue::from_redis_value(pair[1].clone())
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    out.push((*id, Seq(last.unwrap_or(0))));
                }
            }
            from = to + 1;
        }
        Ok(out)
    }

    async fn commit(&self, commits: &[Commit]) -> Result<(), StoreError> {
        // Runs per conversation, in batch order within each.
        let mut runs: Vec<(ConversationId, Vec<&Commit>)> = Vec::new();
        for c in commits {
            let conv = ConversationId(c.event.conversation_id);
            match runs.iter_mut().find(|(id, _)| *id == conv) {
                Some((_, run)) => run.push(c),
                None => runs.push((conv, vec![c])),
            }
        }
        let results =
            futures::future::join_all(runs.iter().map(|(conv, run)| self.commit_conversation(*conv, run))).await;
        let mut conflicts = Vec::new();
        for ((conv, _), r) in runs.iter().zip(results) {
            if !r? {
                conflicts.push(*conv);
            }
        }
        if !conflicts.is_empty() {
            return Err(StoreError::Conflict(conflicts));
        }
        self.replicated().await
    }

    async fn rewrite_events(&self, conv: ConversationId, events: &[pb::ConversationEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // Only events that are there: a rewrite never makes a hole into an event.
        let mut inv = REWRITE.key(ck(conv, "ev"));
        for ev in events {
            inv.arg(ev.seq).arg(ev.encode_to_vec());
        }
        let _: i64 = self.conn.script(&inv).await?;
        self.replicated().await
    }

    async fn remove_events(&self, conv: ConversationId, through: Seq) -> Result<(), StoreError> {
        let mut inv = REMOVE_EVENTS.key(ck(conv, "ev"));
        inv.key(ck(conv, "msg")).key(ck(conv, "floor")).arg(through.0);
        let _: i64 = self.conn.script(&inv).await?;
        self.replicated().await
    }

    async fn removed_through(&self, conv: ConversationId) -> Result<Seq, StoreError> {
        let v: Option<u64> = self.conn.query(redis::cmd("GET").arg(ck(conv, "floor"))).await?;
        Ok(Seq(v.unwrap_or(0)))
    }

    async fn forget_user(&self, _user: UserId) -> Result<(), StoreError> {
        // Redis keeps no older copy of a hash field once it is rewritten; its append-only
        // file does until it is rewritten (BGREWRITEAOF; README, "Deleting a user").
        Ok(())
    }

    async fn find_sent(
        &self,
        conv: ConversationId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<SentRecord>, StoreError> {
        let v: Option<String> = self
            .conn
            .query(
                redis::cmd("HGET")
                    .arg(ck(conv, "sent"))
                    .arg(format!("{}:{client_msg_id}", sender.0)),
            )
            .await?;
        let Some(v) = v else { return Ok(None) };
        let parsed = v
            .split_once(':')
            .and_then(|(s, t)| Some((s.parse().ok()?, t.parse().ok()?)));
        let Some((seq, server_time_ms)) = parsed else {
            return Err(StoreError::Corrupt(format!("sent record {v:?}")));
        };
        self.replicated_before(ck(conv, "fence")).await?;
        Ok(Some(SentRecord {
            seq: Seq(seq),
            server_time_ms,
        }))
    }

    async fn message(
        &self,
        conv: ConversationId,
        seq: Seq,
    ) -> Result<Option<(pb::ConversationEvent, MessageState)>, StoreError> {
        let mut p = redis::pipe();
        p.cmd("HGET").arg(ck(conv, "ev")).arg(seq.0);
        p.cmd("HGET").arg(ck(conv, "msg")).arg(seq.0);
        let (ev, state): (Option<Vec<u8>>, Option<Vec<u8>>) = self.conn.pipe(&p).await?;
        let Some(ev) = ev else { return Ok(None) };
        let ev = decode_event(&ev)?;
        if !matches!(ev.body, Some(pb::conversation_event::Body::Message(_))) {
            return Ok(None);
        }
        let state = state.map(|b| dec(&b)).transpose()?.unwrap_or_default();
        Ok(Some((ev, state)))
    }

    async fn events(
        &self,
        conv: ConversationId,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<pb::ConversationEvent>, bool), StoreError> {
        // The log is gap-free from above its retention floor, so a page is a range of seqs.
        let mut p = redis::pipe();
        p.cmd("GET").arg(ck(conv, "last"));
        p.cmd("GET").arg(ck(conv, "floor"));
        let (last, floor): (Option<u64>, Option<u64>) = self.conn.pipe(&p).await?;
        let (last, first) = (last.unwrap_or(0), floor.unwrap_or(0) + 1);
        let limit = limit as u64;
        let (from, to, more) = match page {
            Page::After(after) => {
                let from = (after.0 + 1).max(first);
                let to = from.saturating_add(limit).saturating_sub(1).min(last);
                (from, to, to < last)
            }
            Page::Before(before) => {
                let to = if before.0 == 0 { last } else { (before.0 - 1).min(last) };
                let from = to.saturating_sub(limit.saturating_sub(1)).max(first);
                (from, to, from > first)
            }
        };
        if from > to || limit == 0 {
            return Ok((Vec::new(), from <= last && limit == 0));
        }
        let seqs: Vec<u64> = (from..=to).collect();
        Ok((self.events_at(conv, &seqs).await?, more))
    }

    async fn user_conversations(&self, user: UserId) -> Result<Vec<ConversationId>, StoreError> {
        let mut ids: Vec<u64> = self.conn.query(redis::cmd("SMEMBERS").arg(uk(user, "convs"))).await?;
        ids.sort_unstable();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Keep only conversations that list the user (index entries may be stale).
        let checks = ids
            .iter()
            .map(|id| {
                redis::cmd("HEXISTS")
                    .arg(ck(ConversationId(*id), "mem"))
                    .arg(user.0)
                    .to_owned()
            })
            .collect();
        let member: Vec<bool> = self.conn.each(checks).await?;
        Ok(ids
            .into_iter()
            .zip(member)
            .filter(|(_, m)| *m)
            .map(|(id, _)| ConversationId(id))
            .collect())
    }

    async fn read_cursor(&self, user: UserId, conv: ConversationId) -> Result<Seq, StoreError> {
        self.hget_seq(ck(conv, "read"), user.0).await
    }

    async fn advance_read_cursor(&self, user: UserId, conv: ConversationId, seq: Seq) -> Result<Seq, StoreError> {
        self.bump(ck(conv, "read"), user, seq).await
    }

    async fn delivered_cursor(&self, user: UserId, conv: ConversationId) -> Result<Seq, StoreError> {
        self.hget_seq(ck(conv, "dlv"), user.0).await
    }

    async fn advance_delivered_cursor(&self, user: UserId, conv: ConversationId, seq: Seq) -> Result<Seq, StoreError> {
        self.bump(ck(conv, "dlv"), user, seq).await
    }

    async fn presence_record(&self, user: UserId) -> Result<PresenceRecord, StoreError> {
        Ok(self.get_json(&uk(user, "presence")).await?.unwrap_or_default())
    }

    async fn put_presence_record(&self, user: UserId, rec: PresenceRecord) -> Result<(), StoreError> {
        self.conn
            .query(redis::cmd("SET").arg(uk(user, "presence")).arg(enc(&rec)))
            .await
    }

    async fn unread_and_last_message(
        &self,
        conv: ConversationId,
        user: UserId,
        after: Seq,
        cap: u32,
    ) -> Result<(u32, Option<pb::ConversationEvent>), StoreError> {
        const PAGE: u64 = 200;
        let is_message = |e: &pb::ConversationEvent| matches!(e.body, Some(pb::conversation_event::Body::Message(_)));
        let mut unread = 0;
        let mut last = None;
        // Newest first, as the sled store does, bounded the same way.
        let mut to = self.last_seq(conv).await?.0;
        // Nothing to read at or below the retention floor.
        let floor = self.removed_through(conv).await?.0;
        let mut budget = u64::from(cap) + 1000;
        while to > floor && budget > 0 {
            let from = to.saturating_sub(PAGE - 1).max(floor + 1);
            let seqs: Vec<u64> = (from..=to).rev().collect();
            for ev in self.events_at(conv, &seqs).await? {
                budget = budget.saturating_sub(1);
                if Seq(ev.seq) <= after && last.is_some() {
                    return Ok((unread, last));
                }
                if !is_message(&ev) {
                    continue;
                }
                if Seq(ev.seq) > after && ev.sender_user_id != user.0 && unread < cap {
                    unread += 1;
                }
                if last.is_none() {
                    last = Some(ev);
                }
            }
            to = from - 1;
        }
        Ok((unread, last))
    }

    async fn create_media(&self, rec: &MediaRecord, quota: u64) -> Result<(), StoreError> {
        let usage = uk(rec.owner, "media_bytes");
        let used: u64 = self.conn.query(redis::cmd("INCRBY").arg(&usage).arg(rec.size)).await?;
        if used > quota {
            self.conn
                .query::<()>(redis::cmd("DECRBY").arg(&usage).arg(rec.size))
                .await?;
            return Err(StoreError::QuotaExceeded);
        }
        // The record before its upload id: an upload id never points at a missing record.
        self.conn
            .query::<()>(
                redis::cmd("HSET")
                    .arg(mk(&rec.media_id))
                    .arg("v")
                    .arg(rec.version)
                    .arg("r")
                    .arg(enc(rec)),
            )
            .await?;
        self.conn
            .query::<()>(redis::cmd("SET").arg(upk(&rec.upload_id)).arg(&rec.media_id.0))
            .await?;
        self.conn
            .query::<()>(
                redis::cmd("ZADD")
                    .arg(EXPIRING)
                    .arg(rec.expires_ms)
                    .arg(&rec.media_id.0),
            )
            .await?;
        self.replicated().await
    }

    async fn media(&self, id: &MediaId) -> Result<Option<MediaRecord>, StoreError> {
        let raw: Option<Vec<u8>> = self.conn.query(redis::cmd("HGET").arg(mk(id)).arg("r")).await?;
        raw.map(|b| dec(&b)).transpose()
    }

    async fn media_by_upload(&self, id: &UploadId) -> Result<Option<MediaRecord>, StoreError> {
        let m: Option<String> = self.conn.query(redis::cmd("GET").arg(upk(id))).await?;
        match m {
            Some(m) => self.media(&MediaId(m)).await,
            None => Ok(None),
        }
    }

    async fn update_media(&self, rec: &MediaRecord) -> Result<(), StoreError> {
        let mut inv = self.media_cas.key(mk(&rec.media_id));
        inv.arg(rec.version.saturating_sub(1)).arg(rec.version).arg(enc(rec));
        let replaced: i64 = self.conn.script(&inv).await?;
        if replaced == 0 {
            return Err(StoreError::Changed);
        }
        if rec.state == MediaState::Ready {
            self.conn
                .query::<()>(redis::cmd("ZREM").arg(EXPIRING).arg(&rec.media_id.0))
                .await?;
        }
        self.replicated().await
    }

    async fn delete_media(&self, id: &MediaId) -> Result<bool, StoreError> {
        let Some(rec) = self.media(id).await? else {
            return Ok(false);
        };
        // Only the caller whose DEL removed the record gives its bytes back.
        let removed: i64 = self.conn.query(redis::cmd("DEL").arg(mk(id))).await?;
        if removed == 0 {
            return Ok(false);
        }
        self.conn
            .query::<()>(redis::cmd("DEL").arg(upk(&rec.upload_id)))
            .await?;
        self.conn
            .query::<()>(redis::cmd("ZREM").arg(EXPIRING).arg(&id.0))
            .await?;
        self.conn
            .query::<()>(redis::cmd("DECRBY").arg(uk(rec.owner, "media_bytes")).arg(rec.size))
            .await?;
        self.replicated().await?;
        Ok(true)
    }

    async fn media_usage(&self, user: UserId) -> Result<u64, StoreError> {
        let v: Option<i64> = self.conn.query(redis::cmd("GET").arg(uk(user, "media_bytes"))).await?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    async fn shared_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let k = format!("n:secret:{name}");
        self.conn
            .query::<()>(redis::cmd("SET").arg(&k).arg(&random_secret()[..]).arg("NX"))
            .await?;
        let v: Vec<u8> = self.conn.query(redis::cmd("GET").arg(&k)).await?;
        self.replicated().await?;
        secret_from(&v)
    }

    async fn key_state(&self, user: UserId, device: DeviceId) -> Result<Option<KeyState>, StoreError> {
        self.get_field(uk(user, "keys"), device.0).await
    }

    async fn user_key_states(&self, user: UserId) -> Result<Vec<KeyState>, StoreError> {
        let all: Vec<(String, Vec<u8>)> = self.conn.query(redis::cmd("HGETALL").arg(uk(user, "keys"))).await?;
        all.into_iter()
            .filter(|(f, _)| !f.ends_with(":v"))
            .map(|(_, v)| dec(&v))
            .collect()
    }

    async fn put_key_state(&self, rec: &KeyState) -> Result<(), StoreError> {
        self.put_versioned(uk(rec.user, "keys"), rec.device.0, rec).await
    }

    async fn delete_key_state(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        let removed: i64 = self
            .conn
            .query(
                redis::cmd("HDEL")
                    .arg(uk(user, "keys"))
                    .arg(device.0)
                    .arg(format!("{}:v", device.0)),
            )
            .await?;
        self.replicated().await?;
        Ok(removed > 0)
    }

    async fn user_key(&self, user: UserId) -> Result<Option<UserKeyRecord>, StoreError> {
        self.get_field(uk(user, "userkey"), "k").await
    }

    async fn put_user_key(&self, rec: &UserKeyRecord) -> Result<(), StoreError> {
        // Field `k` of its own hash in the user's slot.
        self.put_versioned(uk(rec.user, "userkey"), "k", rec).await
    }

    async fn key_backup(&self, user: UserId) -> Result<Option<KeyBackupRecord>, StoreError> {
        self.get_field(uk(user, "backup"), "b").await
    }

    async fn put_key_backup(&self, rec: &KeyBackupRecord) -> Result<(), StoreError> {
        // Field `b` of its own hash in the user's slot.
        self.put_versioned(uk(rec.user, "backup"), "b", rec).await
    }

    async fn put_backup_keys(&self, user: UserId, keys: &[BackupKeyRecord]) -> Result<(), StoreError> {
        // One hash per conversation (field: the key's id), in the user's slot.
        let mut by_conv: std::collections::BTreeMap<ConversationId, Vec<&BackupKeyRecord>> = Default::default();
        for k in keys {
            by_conv.entry(k.conversation).or_default().push(k);
        }
        for (conv, ks) in by_conv {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(uk(user, &format!("bk:{}", conv.0)));
            for k in ks {
                cmd.arg(k.id()).arg(enc(k));
            }
            self.conn.query::<()>(&cmd).await?;
        }
        self.replicated().await
    }

    async fn backup_keys(
        &self,
        user: UserId,
        conv: ConversationId,
        version: u64,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<BackupKeyRecord>, StoreError> {
        let all: Vec<(Vec<u8>, Vec<u8>)> = self
            .conn
            .query(redis::cmd("HGETALL").arg(uk(user, &format!("bk:{}", conv.0))))
            .await?;
        let mut page: Vec<(Vec<u8>, Vec<u8>)> = all.into_iter().filter(|(id, _)| id.as_slice() > after).collect();
        page.sort();
        let mut out = Vec::new();
        for (_, v) in page {
            let rec: BackupKeyRecord = dec(&v)?;
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
        let ids: Vec<String> = self
            .conn
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(EXPIRING)
                    .arg("-inf")
                    .arg(format!("({now_ms}"))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        Ok(ids.into_iter().map(MediaId).collect())
    }

    async fn push_record(&self, user: UserId) -> Result<Option<PushRecord>, StoreError> {
        self.get_field(uk(user, "push"), "p").await
    }

    async fn put_push_record(&self, rec: &PushRecord) -> Result<(), StoreError> {
        // Field `p` of its own hash in the user's slot.
        self.put_versioned(uk(rec.user, "push"), "p", rec).await
    }

    async fn enqueue_push(&self, job: &PushJob) -> Result<(), StoreError> {
        let mut inv = PUSH_ENQUEUE.prepare_invoke();
        push_keys(&mut inv);
        inv.arg(&job.id).arg(enc(job)).arg(job.due_ms).arg(job.seq);
        let () = self.conn.script(&inv).await?;
        self.replicated().await
    }

    async fn due_pushes(&self, now_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError> {
        let ids: Vec<String> = self
            .conn
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(PUSH_DUE)
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        self.push_jobs(ids).await
    }

    async fn claim_pushes(&self, now_ms: u64, until_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError> {
        let mut inv = PUSH_CLAIM.prepare_invoke();
        push_keys(&mut inv);
        inv.arg(now_ms).arg(until_ms).arg(limit);
        let ids: Vec<String> = self.conn.script(&inv).await?;
        self.replicated().await?;
        self.push_jobs(ids).await
    }

    async fn finish_push(&self, id: &str, sent_seq: u64, next_due_ms: u64) -> Result<(), StoreError> {
        let mut inv = PUSH_FINISH.prepare_invoke();
        push_keys(&mut inv);
        inv.arg(id).arg(sent_seq).arg(next_due_ms);
        let () = self.conn.script(&inv).await?;
        self.replicated().await
    }

    async fn retry_push(&self, id: &str, due_ms: u64, attempts: u32) -> Result<(), StoreError> {
        let mut inv = PUSH_RETRY.prepare_invoke();
        push_keys(&mut inv);
        inv.arg(id).arg(due_ms).arg(attempts);
        let () = self.conn.script(&inv).await?;
        self.replicated().await
    }

    async fn drop_push(&self, id: &str) -> Result<(), StoreError> {
        let mut inv = PUSH_DROP.prepare_invoke();
        push_keys(&mut inv);
        inv.arg(id);
        let () = self.conn.script(&inv).await?;
        self.replicated().await
    }

    async fn get_push(&self, id: &str) -> Result<Option<PushJob>, StoreError> {
        let due: Option<String> = self.conn.query(redis::cmd("ZSCORE").arg(PUSH_DUE).arg(id)).await?;
        let Some(due) = due else { return Ok(None) };
        Ok(self.push_jobs(vec![id.to_string(), due]).await?.pop())
    }

    async fn doc(&self, space: &str, key: &str) -> Result<Option<Doc>, StoreError> {
        let mut inv = DOC_GET.prepare_invoke();
        doc_keys(&mut inv, space);
        inv.arg(key);
        let got: Option<(Vec<u8>, Vec<u8>)> = self.conn.script(&inv).await?;
        got.map(|(v, value)| {
            Ok(Doc {
                version: doc_version(&v)?,
                value,
            })
        })
        .transpose()
    }

    async fn put_doc(&self, space: &str, key: &str, expected: u64, value: Vec<u8>) -> Result<bool, StoreError> {
        let mut inv = DOC_PUT.prepare_invoke();
        doc_keys(&mut inv, space);
        inv.arg(key).arg(expected).arg(value);
        let written: i64 = self.conn.script(&inv).await?;
        if written == 1 {
            self.replicated().await?;
        }
        Ok(written == 1)
    }

    async fn delete_doc(&self, space: &str, key: &str) -> Result<bool, StoreError> {
        let mut inv = DOC_DELETE.prepare_invoke();
        doc_keys(&mut inv, space);
        inv.arg(key);
        let removed: i64 = self.conn.script(&inv).await?;
        self.replicated().await?;
        Ok(removed == 1)
    }

    async fn docs(&self, space: &str, after: &str, limit: usize) -> Result<Vec<(String, Doc)>, StoreError> {
        let mut inv = DOC_LIST.prepare_invoke();
        doc_keys(&mut inv, space);
        let start = if after.is_empty() {
            "-".to_string()
        } else {
            format!("({after}")
        };
        inv.arg(start).arg(limit);
        let flat: Vec<Vec<u8>> = self.conn.script(&inv).await?;
        flat.chunks_exact(3)
            .map(|c| {
                Ok((
                    String::from_utf8_lossy(&c[0]).into_owned(),
                    Doc {
                        version: doc_version(&c[1])?,
                        value: c[2].clone(),
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared store suite on one redis-server, one test per behaviour.
    mod suite {
        use crate::store::{testredis::TestRedis, RedisConn, RedisStore};
        use std::time::Duration;
        crate::store::suite::store_suite!({
            let redis = TestRedis::start();
            let store = RedisStore::new(RedisConn::connect(&[redis.url()], false, Duration::ZERO).await.unwrap());
            (redis, store)
        });
    }

    /// The shared store suite on a 3-master Redis Cluster, one test per behaviour.
    mod cluster_suite {
        use crate::store::{testredis::TestRedis, RedisConn, RedisStore};
        use std::time::Duration;
        crate::store::suite::store_suite!({
            let cluster = TestRedis::cluster(3);
            let store = RedisStore::new(RedisConn::connect(&cluster.urls(), true, Duration::ZERO).await.unwrap());
            (cluster, store)
        });
    }

    /// Redis refusing writes (a replica, as a demoted primary is) or gone answers the typed,
    /// retryable `Unavailable` (STORAGE_UNAVAILABLE on the wire), not an internal error.
    #[tokio::test]
    async fn a_read_only_or_unreachable_redis_is_unavailable_not_internal() {
        let redis = crate::store::testredis::TestRedis::start();
        let store = RedisStore::new(RedisConn::connect(&[redis.url()], false, Duration::ZERO).await.unwrap());
        store.create_user("ann", "h", 1).await.unwrap();
        // Demote it: a replica of a primary that does not exist is read-only.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
        let err = store.create_user("bea", "h", 1).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "read-only: {err:?}");
        assert_eq!(
            natter_protocol::ServerError::from(err).code,
            pb::ErrorCode::StorageUnavailable
        );
        // Reads still answer on a read-only Redis.
        assert!(store.user_by_name("ann").await.unwrap().is_some());
        // Gone altogether.
        drop(c);
        drop(redis);
        let err = store.user_by_name("ann").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "unreachable: {err:?}");
    }

    /// A cluster whose nodes stop answering (SIGSTOP) holds neither a command nor a join
    /// forever: both fail as the retryable `Unavailable`, in bounded time.
    #[tokio::test]
    async fn a_cluster_that_stops_answering_is_unavailable_not_a_hang() {
        let mut cluster = crate::store::testredis::TestRedis::cluster(3);
        let zero = Duration::ZERO;
        let store = RedisStore::new(RedisConn::connect(&cluster.urls(), true, zero).await.unwrap());
        store.create_user("ann", "h", 1).await.unwrap();
        for i in 0..3 {
            cluster.signal(i, "STOP");
        }
        let limit = Duration::from_secs(60);
        let err = tokio::time::timeout(limit, store.user_by_name("ann"))
            .await
            .expect("a command on a stopped cluster ends")
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let joined = tokio::time::timeout(limit, RedisConn::connect(&cluster.urls(), true, zero))
            .await
            .expect("joining a stopped cluster ends");
        assert!(matches!(joined, Err(StoreError::Unavailable(_))), "{joined:?}");
        for i in 0..3 {
            cluster.signal(i, "CONT");
        }
    }

    /// Two nodes committing to one conversation: the second, with a stale view, is refused
    /// with `Conflict` and nothing of its batch is stored.
    #[tokio::test]
    async fn a_commit_on_a_stale_view_is_a_conflict_and_changes_nothing() {
        let redis = crate::store::testredis::TestRedis::start();
        let store = RedisStore::new(RedisConn::connect(&[redis.url()], false, Duration::ZERO).await.unwrap());
        let conv = store.allocate_conversation_id().await.unwrap();
        let ev = |seq: u64, text: &str| Commit {
            event: pb::ConversationEvent {
                conversation_id: conv.0,
                seq,
                body: Some(pb::conversation_event::Body::Message(pb::MessageEvent {
                    client_msg_id: text.into(),
                    body: Some(pb::MessageBody {
                        text: text.into(),
                        ..Default::default()
                    }),
                })),
                ..Default::default()
            },
            idempotency: Some((UserId(1), text.into())),
            ..Default::default()
        };
        store.commit(&[ev(1, "first")]).await.unwrap();
        store.commit(&[ev(2, "node-a")]).await.unwrap();
        match store.commit(&[ev(2, "node-b"), ev(3, "node-b2")]).await {
            Err(StoreError::Conflict(c)) => assert_eq!(c, vec![conv]),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let (events, _) = store.events(conv, Page::After(Seq(0)), 10).await.unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(store.find_sent(conv, UserId(1), "node-b").await.unwrap().is_none());
        assert_eq!(
            store.find_sent(conv, UserId(1), "node-a").await.unwrap().unwrap().seq,
            Seq(2)
        );
    }
}
