//! The live feed: what keeps a running node's index up to date with the log. Conversation
//! shards hand it every committed event ([`Search::committed`]); with several nodes, the
//! cluster bus tells it of events other nodes committed ([`Search::seen`], a position
//! only). Neither ever waits: the queue is bounded, and an event that finds it full is
//! not lost but left to a reconcile (the log is the truth, the index a view of it).
//!
//! One task commits what arrived every `commit_every` (≈250 ms) as one batch. A
//! conversation's events are applied only in seq order from its position; anything else (a
//! gap, a position from another node) is read back from the store (`feed::catch_up`). At
//! start, after an overflow, when the bus resubscribes and every `reconcile_every`, every
//! conversation is compared with the store (`feed::reconcile`), so a restart, a crash
//! between commit and index, or a lost bus message is healed without a rebuild.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use natter_protocol::pb;
use natter_protocol::ConversationId;
use tokio::sync::{mpsc, watch, Notify};

use super::feed::{self, FeedError};
use super::{Batch, Hit, Request, SearchError, SearchIndex};
use crate::clock::now_ms;
use crate::store::Store;

/// How the live feed runs.
#[derive(Clone, Debug)]
pub struct LiveSettings {
    /// How long changes gather before one index commit.
    pub commit_every: Duration,
    /// How often every conversation is compared with the store (lost bus messages).
    pub reconcile_every: Duration,
    /// Notices held between commits; beyond, the next round reconciles instead.
    pub queue: usize,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings {
            commit_every: Duration::from_millis(250),
            reconcile_every: Duration::from_secs(300),
            queue: 65_536,
        }
    }
}

enum Notice {
    /// Committed here: the event itself.
    Event(Arc<pb::ConversationEvent>),
    /// Committed elsewhere: the conversation has reached this seq.
    Seen(ConversationId, u64),
    /// Retention removed the conversation's events up to this seq.
    Removed(ConversationId, u64),
}

/// A node's search: the index and what feeds it.
#[derive(Debug)]
pub struct Search {
    index: Arc<dyn SearchIndex>,
    store: Arc<dyn Store>,
    settings: LiveSettings,
    tx: mpsc::Sender<Notice>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Notice>>>,
    /// A full reconcile is wanted (start, overflow, resubscribe).
    reconcile: AtomicBool,
    wake: Notify,
    /// Since when (ms) something committed has not been indexed; 0 when nothing waits.
    behind_since: AtomicU64,
    /// Notices received (to tell whether more came during a round).
    received: AtomicU64,
    /// Closed: the feed stops.
    closed: AtomicBool,
    /// Events this node has indexed (tests and the benchmark read it).
    indexed: AtomicU64,
    /// How far each conversation is indexed, and a tick per change of it.
    positions: std::sync::Mutex<HashMap<ConversationId, u64>>,
    moved: watch::Sender<u64>,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Event(e) => write!(f, "Event({}, {})", e.conversation_id, e.seq),
            Notice::Seen(c, s) => write!(f, "Seen({}, {s})", c.0),
            Notice::Removed(c, s) => write!(f, "Removed({}, {s})", c.0),
        }
    }
}

impl Search {
    /// A search over `index`, fed from `store` once [`Search::run`] is spawned.
    pub fn new(store: Arc<dyn Store>, index: Arc<dyn SearchIndex>, settings: LiveSettings) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        Arc::new(Search {
            index,
            store,
            settings,
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            reconcile: AtomicBool::new(true),
            wake: Notify::new(),
            behind_since: AtomicU64::new(now_ms()),
            received: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            indexed: AtomicU64::new(0),
            positions: std::sync::Mutex::new(HashMap::new()),
            moved: watch::channel(0).0,
        })
    }

    /// `event` was committed on this node (never waits).
    pub fn committed(&self, event: &Arc<pb::ConversationEvent>) {
        self.notice(Notice::Event(event.clone()));
    }

    /// Another node committed `conversation` up to `seq` (never waits).
    pub fn seen(&self, conversation: ConversationId, seq: u64) {
        self.notice(Notice::Seen(conversation, seq));
    }

    /// Retention removed `conversation`'s events up to `seq` (PROTOCOL.md §5.17): their
    /// entries go in the next round (never waits). Hits below the floor are left out at
    /// query time meanwhile, so a lost notice costs only space.
    pub fn remove_through(&self, conversation: ConversationId, seq: u64) {
        self.notice(Notice::Removed(conversation, seq));
    }

    /// Stop following the feed and close the index (the server stops): its directory
    /// can be opened again at once.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        self.index.close();
    }

    /// Compare every conversation with the store soon (the bus may have lost messages).
    pub fn reconcile_soon(&self) {
        self.reconcile.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn notice(&self, n: Notice) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        self.received.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .behind_since
            .compare_exchange(0, now_ms(), Ordering::SeqCst, Ordering::SeqCst);
        if self.tx.try_send(n).is_err() {
            // Not lost: the log has it, and a reconcile finds it.
            self.reconcile_soon();
        }
    }

    /// How far the index is behind the log, in milliseconds (0: up to date).
    pub fn lag_ms(&self) -> u64 {
        match self.behind_since.load(Ordering::SeqCst) {
            0 => 0,
            since => now_ms().saturating_sub(since).max(1),
        }
    }

    /// Events indexed by this node since it started.
    pub fn indexed(&self) -> u64 {
        self.indexed.load(Ordering::Relaxed)
    }

    /// How far `conversation` is indexed.
    pub fn position(&self, conversation: ConversationId) -> u64 {
        self.positions
            .lock()
            .expect("positions")
            .get(&conversation)
            .copied()
            .unwrap_or(0)
    }

    /// Wait until `conversation` is indexed through `seq`.
    pub async fn indexed_through(&self, conversation: ConversationId, seq: u64) {
        let mut moved = self.moved.subscribe();
        while self.position(conversation) < seq {
            if moved.changed().await.is_err() {
                return;
            }
        }
    }

    fn publish(&self, positions: &HashMap<ConversationId, u64>, changed: impl IntoIterator<Item = ConversationId>) {
        let mut shared = self.positions.lock().expect("positions");
        for c in changed {
            if let Some(p) = positions.get(&c) {
                shared.insert(c, *p);
            }
        }
        drop(shared);
        self.moved.send_modify(|n| *n += 1);
    }

    /// Run `req` (off the async runtime).
    pub async fn search(&self, req: Request) -> Result<(Vec<Hit>, usize), SearchError> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.search(&req))
            .await
            .map_err(|e| SearchError::Index(format!("search task: {e}")))?
    }

    /// Follow the feed until the server stops. Spawn once.
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = self.rx.lock().expect("search rx").take() else {
            return;
        };
        let mut positions: HashMap<ConversationId, u64> = HashMap::new();
        let mut next_reconcile = tokio::time::Instant::now();
        let mut notices = Vec::new();
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            if self.reconcile.swap(false, Ordering::Relaxed) || tokio::time::Instant::now() >= next_reconcile {
                next_reconcile = tokio::time::Instant::now() + self.settings.reconcile_every;
                let (received, at) = (self.received.load(Ordering::SeqCst), now_ms());
                match self.full_reconcile(&mut positions).await {
                    // What came during the reconcile is in the queue (or the log).
                    Ok(()) if rx.is_empty() => self.settled(received, at),
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "search: reconcile failed; retrying");
                        self.reconcile.store(true, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                n = rx.recv_many(&mut notices, self.settings.queue.max(1)) => if n == 0 { return },
                _ = self.wake.notified() => continue,
                _ = tokio::time::sleep_until(next_reconcile) => continue,
            }
            // Let a commit's worth gather, then take all of it.
            tokio::time::sleep(self.settings.commit_every).await;
            while let Ok(n) = rx.try_recv() {
                notices.push(n);
            }
            let (received, at) = (self.received.load(Ordering::SeqCst), now_ms());
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            match self.round(std::mem::take(&mut notices), &mut positions).await {
                Ok(()) => self.settled(received, at),
                Err(e) => {
                    tracing::warn!(error = %e, "search: indexing failed; reconciling");
                    self.reconcile.store(true, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Everything received up to `received` (counted at `at`) is indexed: the lag is 0,
    /// or, if more came meanwhile, counts from `at`.
    fn settled(&self, received: u64, at: u64) {
        self.behind_since.store(0, Ordering::SeqCst);
        if self.received.load(Ordering::SeqCst) != received {
            let _ = self
                .behind_since
                .compare_exchange(0, at.max(1), Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    async fn full_reconcile(&self, positions: &mut HashMap<ConversationId, u64>) -> Result<(), FeedError> {
        let started = std::time::Instant::now();
        let (convs, events) = feed::reconcile(self.store.as_ref(), &self.index).await?;
        *positions = self.index.positions()?.into_iter().collect();
        *self.positions.lock().expect("positions") = positions.clone();
        self.moved.send_modify(|n| *n += 1);
        self.indexed.fetch_add(events, Ordering::Relaxed);
        if events > 0 {
            tracing::info!(convs, events, took = ?started.elapsed(), "search: caught up with the log");
        }
        Ok(())
    }

    /// Index one round of notices as one commit; conversations with a gap catch up from
    /// the store.
    async fn round(&self, notices: Vec<Notice>, positions: &mut HashMap<ConversationId, u64>) -> Result<(), FeedError> {
        let mut events: BTreeMap<ConversationId, Vec<Arc<pb::ConversationEvent>>> = BTreeMap::new();
        let mut seen: BTreeMap<ConversationId, u64> = BTreeMap::new();
        let mut removed: BTreeMap<ConversationId, u64> = BTreeMap::new();
        for n in notices {
            match n {
                Notice::Event(e) => events.entry(ConversationId(e.conversation_id)).or_default().push(e),
                Notice::Seen(c, s) => {
                    let e = seen.entry(c).or_default();
                    *e = (*e).max(s);
                }
                Notice::Removed(c, s) => {
                    let e = removed.entry(c).or_default();
                    *e = (*e).max(s);
                }
            }
        }
        let mut batch = Batch::default();
        let mut lagging: BTreeSet<ConversationId> = BTreeSet::new();
        let mut count = 0u64;
        for (conv, mut evs) in events {
            evs.sort_by_key(|e| e.seq);
            let mut pos = positions.get(&conv).copied().unwrap_or(0);
            let start = pos;
            for e in evs {
                if e.seq <= pos {
                    continue;
                }
                if e.seq != pos + 1 {
                    // A gap (an overflow dropped what came between): the log has it.
                    lagging.insert(conv);
                    break;
                }
                batch.ops.extend(feed::ops_for(self.store.as_ref(), &e).await?);
                pos = e.seq;
                count += 1;
            }
            if pos > start {
                batch.through.push((conv, pos));
            }
        }
        let batch_through: Vec<ConversationId> = batch.through.iter().map(|(c, _)| *c).collect();
        if !batch.through.is_empty() {
            let through = batch.through.clone();
            feed::apply(&self.index, batch).await?;
            positions.extend(through);
        }
        for (conv, seq) in seen {
            if seq > positions.get(&conv).copied().unwrap_or(0) {
                lagging.insert(conv);
            }
        }
        let mut changed: Vec<ConversationId> = batch_through;
        for conv in lagging {
            let from = positions.get(&conv).copied().unwrap_or(0);
            let (read, at) = feed::catch_up(self.store.as_ref(), &self.index, conv, from).await?;
            positions.insert(conv, at);
            changed.push(conv);
            count += read;
        }
        // Last, after whatever this round put in: the removed ranges go.
        if !removed.is_empty() {
            let ops = removed
                .into_iter()
                .map(|(conversation, seq)| super::Op::RemoveThrough { conversation, seq })
                .collect();
            feed::apply(
                &self.index,
                Batch {
                    ops,
                    ..Default::default()
                },
            )
            .await?;
        }
        self.indexed.fetch_add(count, Ordering::Relaxed);
        self.publish(positions, changed);
        Ok(())
    }
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
