//! Several natter nodes on one Redis (or Redis Cluster): node membership, the user → node
//! directory, cross-node presence and the bus that carries events, signals and typing to
//! members connected elsewhere.
//!
//! - **Membership**: each node writes `n:nodes` field `<node id>` = `<expiry ms>|<address>`
//!   every second ([`NODE_TTL`]); a node that stops (crash, `kill -9`) drops out when its
//!   entry expires.
//! - **Directory**: `n:{u:ID}:nodes` (hash, in the user's slot) maps node id →
//!   `<expiry ms>:<presence state>` for every node holding a session of the user, written
//!   before the session starts (so no event committed after a client's sync can miss its
//!   node), refreshed every [`USER_REFRESH`], expiring after [`USER_TTL`].
//! - **Bus**: the hub hands this module every fan-out ([`Forward`]); one task looks the
//!   recipients up in the directory (live nodes only) and publishes one message per target
//!   node and batch on `n:node:<id>` with Redis pub/sub, in commit order. Each node
//!   subscribes to its own channel and delivers to its local sessions. Pub/sub is
//!   at-most-once: a message lost here (bus outage, node restart) is healed by the SDK —
//!   a later event reveals the gap and the client fetches it (guarantee 4); a reconnect
//!   syncs from cursors.
//! - **Presence**: any node answers for any user by combining its own view with the
//!   directory's states from the other live nodes.
//!
//! Each conversation's order is still decided in one place: the commit script in Redis
//! (store/redis_store.rs), so shards on different nodes may serve the same conversation.
//!
//! - **Devices** (`devices.rs`): which device is attached on which node, so a notification
//!   is decided where the device is (PROTOCOL.md §13.2).
//! - **Search** (`n:search`): every round of the bus also publishes, to every node, how
//!   far each conversation it carried has been committed; each node's search index reads
//!   what it has not indexed from the log in Redis (search/live.rs). A lost message is
//!   healed by the next event of the conversation, or by the reconcile a resubscription
//!   and a timer start.
//!
//! May import: `conversation`, `push` (forwarded events, to watch acknowledgements),
//! `session`, `search` (positions for the index), `store`, `clock`. Must not import `api`, `conn`
//! or `transport`; local presence comes in through [`LocalPresence`], which it defines.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_protocol::pb::{self, PresenceState as State};
use natter_protocol::{ConversationId, Seq, UserId};
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::conversation::Shards;
use crate::push::Push;
use crate::search::Search;
use crate::session::hub::{Forward, Hub};
use crate::store::{RedisConn, StoreError};

mod bus;
mod devices;
use bus::{decode, encode, recipients};

/// A node is dead once its registry entry is this old.
pub const NODE_TTL: Duration = Duration::from_secs(5);
/// How often a node renews its registry entry.
const NODE_BEAT: Duration = Duration::from_secs(1);
/// A directory entry lasts this long unless refreshed.
pub const USER_TTL: Duration = Duration::from_secs(30);
/// How often a node refreshes the directory entries of its users.
const USER_REFRESH: Duration = Duration::from_secs(10);
/// Forwards handled per bus round.
const BUS_BATCH: usize = 512;

const NODES: &str = "n:nodes";
/// Where every node hears how far conversations are committed (for its search index).
const SEARCH_CHANNEL: &str = "n:search";

fn user_key(user: UserId) -> String {
    format!("n:{{u:{}}}:nodes", user.0)
}

/// Set `field` of the hash `key` and give the hash [`USER_TTL`] to live (a directory
/// entry, renewed while its sessions last).
fn hset_for_ttl(key: &str, field: &str, value: &str) -> [redis::Cmd; 2] {
    [
        redis::cmd("HSET").arg(key).arg(field).arg(value).to_owned(),
        redis::cmd("PEXPIRE")
            .arg(key)
            .arg(USER_TTL.as_millis() as u64)
            .to_owned(),
    ]
}

fn channel(node: &str) -> String {
    format!("n:node:{node}")
}

fn rank(s: State) -> u8 {
    match s {
        State::Online => 3,
        State::Away => 2,
        _ => 1,
    }
}

/// This node's own view of a user's presence, as the directory refresh needs it. The
/// cluster defines this narrow interface so it does not depend on the presence tracker.
pub trait LocalPresence: Send + Sync + std::fmt::Debug + 'static {
    /// The user's state over this node's devices.
    fn local_state(&self, user: UserId) -> State;
}

/// This node's part in a multi-node deployment.
#[derive(Debug)]
pub struct Cluster {
    node: String,
    advertise: String,
    conn: RedisConn,
    urls: Vec<String>,
    /// Live nodes other than this one, with their registry expiry, refreshed every beat.
    peers: Mutex<HashMap<String, u64>>,
    /// When `peers` was last read (ms since the epoch, taken before the read).
    peers_read_at: std::sync::atomic::AtomicU64,
    /// Set when the server stops: the heartbeat and the subscriber end (and let go of
    /// the hub, shards and search they hold).
    stop: tokio::sync::watch::Sender<bool>,
    /// Whether this node's bus subscription is live (readiness).
    subscribed: std::sync::atomic::AtomicBool,
    /// Until when this node's registry entry holds, as last written (ms since the epoch).
    registered_until: std::sync::atomic::AtomicU64,
    /// Bus messages and errors.
    metrics: Arc<crate::ops::Metrics>,
}

/// This node's parts the cluster works with.
#[derive(Debug)]
pub struct Local {
    pub hub: Hub,
    pub shards: Shards,
    pub presence: Arc<dyn LocalPresence>,
    pub push: Arc<Push>,
    /// This node's search index, if search is on.
    pub search: Option<Arc<Search>>,
    /// This node's metrics (bus messages and errors).
    pub metrics: Arc<crate::ops::Metrics>,
}

impl Cluster {
    /// Join the cluster: register this node and start the heartbeat, the bus publisher
    /// (fed by the hub) and the subscriber (delivering to the hub and invalidating shards).
    pub async fn start(
        conn: RedisConn,
        urls: Vec<String>,
        node: String,
        advertise: String,
        local: Local,
    ) -> Result<Arc<Cluster>, StoreError> {
        let Local {
            hub,
            shards,
            presence,
            push,
            search,
            metrics,
        } = local;
        let cluster = Arc::new(Cluster {
            node,
            advertise,
            conn,
            urls,
            peers: Mutex::new(HashMap::new()),
            peers_read_at: 0.into(),
            stop: tokio::sync::watch::channel(false).0,
            subscribed: false.into(),
            registered_until: 0.into(),
            metrics: metrics.clone(),
        });
        cluster.beat().await?;
        let weak = Arc::downgrade(&cluster);
        let beat_hub = hub.clone();
        let mut stop = cluster.stop.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(NODE_BEAT);
            let mut last_refresh = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
                let Some(c) = weak.upgrade() else { return };
                if let Err(e) = c.beat().await {
                    tracing::warn!(error = %e, "cluster: heartbeat failed");
                }
                if last_refresh.elapsed() >= USER_REFRESH {
                    last_refresh = tokio::time::Instant::now();
                    let users: Vec<(UserId, State)> = beat_hub
                        .local_users()
                        .into_iter()
                        .map(|u| (u, presence.local_state(u)))
                        .collect();
                    if let Err(e) = c.refresh(&users).await {
                        tracing::warn!(error = %e, "cluster: directory refresh failed");
                    }
                    if let Err(e) = c.refresh_devices(&beat_hub.local_devices()).await {
                        tracing::warn!(error = %e, "cluster: device refresh failed");
                    }
                }
            }
        });
        let forwards = hub.set_forwarder();
        tokio::spawn(publish_loop(Arc::downgrade(&cluster), forwards));
        let sub = Subscriber {
            hub,
            shards,
            push,
            search,
            metrics,
        };
        tokio::spawn(subscribe_loop(Arc::downgrade(&cluster), sub, cluster.stop.subscribe()));
        Ok(cluster)
    }

    /// The server stops: end this node's heartbeat and bus subscription (leaving is
    /// [`Cluster::leave`], part of a drain).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Renew this node's registry entry and re-read the live peers.
    async fn beat(&self) -> Result<(), StoreError> {
        let until = now_ms() + NODE_TTL.as_millis() as u64;
        let entry = format!("{until}|{}", self.advertise);
        self.conn
            .query::<()>(redis::cmd("HSET").arg(NODES).arg(&self.node).arg(entry))
            .await?;
        self.registered_until.store(until, std::sync::atomic::Ordering::Release);
        self.read_peers().await
    }

    /// Readiness (`/readyz`): the bus subscription is live and this node's registry entry
    /// holds (other nodes route to it); `Err(why)` otherwise.
    pub fn health(&self) -> Result<(), String> {
        if !self.subscribed.load(std::sync::atomic::Ordering::Acquire) {
            return Err("not subscribed to the cluster bus".into());
        }
        let until = self.registered_until.load(std::sync::atomic::Ordering::Acquire);
        if until <= now_ms() {
            return Err("this node's registration has lapsed (heartbeats to Redis fail)".into());
        }
        Ok(())
    }

    /// Re-read the registry: which other nodes are alive.
    async fn read_peers(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let read_at = now;
        let all: HashMap<String, String> = self.conn.query(redis::cmd("HGETALL").arg(NODES)).await?;
        let mut dead = Vec::new();
        let mut live = HashMap::new();
        for (node, v) in all {
            let expiry: u64 = v.split('|').next().and_then(|e| e.parse().ok()).unwrap_or(0);
            if expiry < now {
                dead.push(node);
            } else if node != self.node {
                live.insert(node, expiry);
            }
        }
        *self.peers.lock().expect("peers") = live;
        self.peers_read_at.store(read_at, std::sync::atomic::Ordering::Relaxed);
        if !dead.is_empty() {
            // Tidy up after crashed nodes (any node may; HDEL is idempotent).
            self.conn.query::<()>(redis::cmd("HDEL").arg(NODES).arg(dead)).await?;
        }
        Ok(())
    }

    fn alive(&self, node: &str, now: u64) -> bool {
        self.peers.lock().expect("peers").get(node).is_some_and(|e| *e >= now)
    }

    fn entry(state: State) -> String {
        format!("{}:{}", now_ms() + USER_TTL.as_millis() as u64, state as i32)
    }

    /// Record that `user` has a session here, in `state`. Awaited before the session
    /// starts, so every event committed after the client's sync is routed to this node.
    pub async fn attach(&self, user: UserId, state: State) -> Result<(), StoreError> {
        let key = user_key(user);
        let mut p = redis::pipe();
        p.cmd("HSET").arg(&key).arg(&self.node).arg(Self::entry(state)).ignore();
        p.cmd("PEXPIRE").arg(&key).arg(USER_TTL.as_millis() as u64).ignore();
        self.conn.pipe::<()>(&p).await
    }

    /// Renew the directory entries of these users (every session on this node, resumable
    /// ones included: their replay rings must keep receiving).
    async fn refresh(&self, users: &[(UserId, State)]) -> Result<(), StoreError> {
        let cmds = users
            .iter()
            .flat_map(|(u, state)| hset_for_ttl(&user_key(*u), &self.node, &Self::entry(*state)))
            .collect();
        self.conn.each::<redis::Value>(cmds).await?;
        Ok(())
    }

    /// The nodes other than this one holding a session of each user.
    async fn lookup(&self, users: &[UserId]) -> Result<HashMap<UserId, Vec<(String, State)>>, StoreError> {
        let cmds = users
            .iter()
            .map(|u| redis::cmd("HGETALL").arg(user_key(*u)).to_owned())
            .collect();
        let found: Vec<HashMap<String, String>> = self.conn.each(cmds).await?;
        let now = now_ms();
        // (node, entry expiry, state) of other nodes' live directory entries, per user.
        let entries: Vec<Vec<(String, u64, State)>> = found
            .into_iter()
            .map(|fields| {
                fields
                    .into_iter()
                    .filter(|(node, _)| *node != self.node)
                    .filter_map(|(node, v)| {
                        let (expiry, state) = v.split_once(':')?;
                        let expiry: u64 = expiry.parse().ok()?;
                        let state = State::try_from(state.parse::<i32>().ok()?).ok()?;
                        (expiry >= now).then_some((node, expiry, state))
                    })
                    .collect()
            })
            .collect();
        // A node missing from the last registry read is either dead or joined since. Only
        // an entry written after that read can be a newcomer's (nodes register before
        // they serve anyone): read the registry again for those rather than drop what is
        // routed to them, and not for a crashed node's leftovers. Two beats of slack cover
        // clock skew between nodes.
        let read_at = self
            .peers_read_at
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(2 * NODE_BEAT.as_millis() as u64);
        let newcomer = {
            let peers = self.peers.lock().expect("peers");
            entries.iter().flatten().any(|(node, expiry, _)| {
                !peers.contains_key(node) && expiry.saturating_sub(USER_TTL.as_millis() as u64) >= read_at
            })
        };
        if newcomer {
            self.read_peers().await?;
        }
        let mut out = HashMap::new();
        for (user, nodes) in users.iter().zip(entries) {
            let nodes: Vec<(String, State)> = nodes
                .into_iter()
                .filter(|(node, _, _)| self.alive(node, now))
                .map(|(node, _, state)| (node, state))
                .collect();
            if !nodes.is_empty() {
                out.insert(*user, nodes);
            }
        }
        Ok(out)
    }

    /// The user's best presence on the other live nodes, if any holds a session of theirs.
    pub async fn remote_presence(&self, user: UserId) -> Option<State> {
        match self.lookup(&[user]).await {
            Ok(found) => found.get(&user)?.iter().map(|(_, s)| *s).max_by_key(|s| rank(*s)),
            Err(e) => {
                tracing::warn!(%user, error = %e, "cluster: presence lookup failed");
                None
            }
        }
    }

    /// Combine this node's view of a user's presence with the other nodes'.
    pub async fn merge_presence(&self, mut local: pb::PresenceUpdate) -> pb::PresenceUpdate {
        if let Some(remote) = self.remote_presence(UserId(local.user_id)).await {
            if rank(remote) > rank(local.state()) {
                local.state = remote as i32;
            }
        }
        local
    }

    /// Leave: drop this node's registry entry and its users' directory entries, so nothing
    /// more is routed here (draining, after the clients were told to move).
    pub async fn leave(&self, users: &[UserId]) -> Result<(), StoreError> {
        let cmds = users
            .iter()
            .map(|u| redis::cmd("HDEL").arg(user_key(*u)).arg(&self.node).to_owned())
            .collect();
        self.conn.each::<redis::Value>(cmds).await?;
        self.conn
            .query::<()>(redis::cmd("HDEL").arg(NODES).arg(&self.node))
            .await
    }
}

// ───────────────────────────── the bus ─────────────────────────────

/// Take the hub's forwards in order, route them by the directory and publish one message
/// per target node per round.
async fn publish_loop(cluster: std::sync::Weak<Cluster>, mut rx: mpsc::Receiver<Forward>) {
    let mut batch = Vec::with_capacity(BUS_BATCH);
    while rx.recv_many(&mut batch, BUS_BATCH).await > 0 {
        let Some(c) = cluster.upgrade() else { return };
        let mut users: Vec<UserId> = batch.iter().flat_map(|f| recipients(f).iter().copied()).collect();
        users.sort_unstable();
        users.dedup();
        let found = match c.lookup(&users).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, dropped = batch.len(), "cluster: directory lookup failed");
                batch.clear();
                continue;
            }
        };
        let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
        let mut committed: HashMap<u64, u64> = HashMap::new();
        for f in &batch {
            if let Forward::Event(_, ev) = f {
                let at = committed.entry(ev.conversation_id).or_default();
                *at = (*at).max(ev.seq);
            }
        }
        for f in batch.drain(..) {
            let mut per_node: HashMap<&str, Vec<UserId>> = HashMap::new();
            for u in recipients(&f) {
                for (node, _) in found.get(u).into_iter().flatten() {
                    per_node.entry(node.as_str()).or_default().push(*u);
                }
            }
            for (node, to) in per_node {
                let at = match messages.iter().position(|(n, _)| n == node) {
                    Some(i) => i,
                    None => {
                        messages.push((node.to_string(), Vec::new()));
                        messages.len() - 1
                    }
                };
                encode(&mut messages[at].1, &f, &to);
            }
        }
        let search = (!committed.is_empty()).then(|| (SEARCH_CHANNEL.to_string(), bus::encode_positions(&committed)));
        let messages = messages
            .into_iter()
            .map(|(node, body)| (channel(&node), body))
            .chain(search);
        for (target, body) in messages {
            match c.conn.query::<()>(redis::cmd("PUBLISH").arg(&target).arg(body)).await {
                Ok(()) => {
                    c.metrics.bus_messages.get_or_create(&PUBLISHED).inc();
                }
                Err(e) => {
                    c.metrics.bus_errors.inc();
                    tracing::warn!(%target, error = %e, "cluster: publish failed");
                }
            }
        }
    }
}

/// What the subscriber hands messages to.
struct Subscriber {
    hub: Hub,
    shards: Shards,
    push: Arc<Push>,
    search: Option<Arc<Search>>,
    metrics: Arc<crate::ops::Metrics>,
}

const PUBLISHED: crate::ops::metrics::DirectionLabel = crate::ops::metrics::DirectionLabel { direction: "published" };
const RECEIVED: crate::ops::metrics::DirectionLabel = crate::ops::metrics::DirectionLabel { direction: "received" };

/// Receive this node's channel and deliver to local sessions, and the search channel for
/// the index; reconnect (to the next URL) when the subscription breaks.
async fn subscribe_loop(
    cluster: std::sync::Weak<Cluster>,
    sub: Subscriber,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures::StreamExt;
    let Subscriber {
        hub,
        shards,
        push,
        search,
        metrics,
    } = sub;
    let mut attempt = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(c) = cluster.upgrade() else { return };
        let url = c.urls[attempt % c.urls.len().max(1)].clone();
        let name = channel(&c.node);
        drop(c);
        attempt += 1;
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&name).await?;
            if search.is_some() {
                pubsub.subscribe(SEARCH_CHANNEL).await?;
            }
            redis::RedisResult::Ok(pubsub)
        }
        .await;
        let pubsub = match subscribed {
            Ok(p) => {
                if let Some(c) = cluster.upgrade() {
                    c.subscribed.store(true, std::sync::atomic::Ordering::Release);
                }
                p
            }
            Err(e) => {
                metrics.bus_errors.inc();
                tracing::warn!(%url, error = %e, "cluster: subscribing failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Some(search) = &search {
            // Whatever was published while this node was not listening is in the log.
            search.reconcile_soon();
        }
        let mut stream = pubsub.into_on_message();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let Some(msg) = msg else { break };
            if cluster.strong_count() == 0 {
                return;
            }
            metrics.bus_messages.get_or_create(&RECEIVED).inc();
            if msg.get_channel_name() == SEARCH_CHANNEL {
                if let Some(search) = &search {
                    match bus::decode_positions(msg.get_payload_bytes()) {
                        Ok(at) => at
                            .into_iter()
                            .for_each(|(conv, seq)| search.seen(ConversationId(conv), seq)),
                        Err(e) => tracing::warn!(error = %e, "cluster: bad search message"),
                    }
                }
                continue;
            }
            match decode(msg.get_payload_bytes()) {
                Ok(forwards) => {
                    for f in forwards {
                        if let Forward::Event(users, ev) = &f {
                            shards.forget(ConversationId(ev.conversation_id), Seq(ev.seq));
                            // Delivered here: this node watches its devices' acknowledgements.
                            push.forwarded(ev, users);
                        }
                        hub.deliver_forwarded(f);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cluster: bad bus message"),
            }
        }
        if let Some(c) = cluster.upgrade() {
            c.subscribed.store(false, std::sync::atomic::Ordering::Release);
        }
        metrics.bus_errors.inc();
        tracing::warn!(%url, "cluster: subscription ended; resubscribing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
