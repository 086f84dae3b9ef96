//! The live feed against the memory store and a real tantivy index: events handed over
//! live are found; a gap, a position from another node and an overflowing queue are all
//! filled from the log; a restart catches up what it never heard of.
use std::sync::Arc;
use std::time::Duration;

use natter_protocol::pb;
use natter_protocol::search::parse;
use natter_protocol::{ConversationId, Seq};

use super::*;
use crate::search::test_log::{created, event, message};
use crate::search::{Order, Request, TantivyIndex};
use crate::store::memory::MemoryStore;
use crate::store::Commit;

const WAIT: Duration = Duration::from_secs(20);

/// Commit `texts` as the next events of `conv` (creating it at seq 1 first if `from` is
/// 1); returns the events.
async fn commit(
    store: &MemoryStore,
    conv: ConversationId,
    from: u64,
    texts: &[&str],
) -> Vec<Arc<pb::ConversationEvent>> {
    let mut commits = Vec::new();
    let mut seq = from;
    if from == 1 {
        commits.push(created(conv));
        seq = 2;
    }
    for t in texts {
        commits.push(Commit {
            event: event(conv, seq, message(t)),
            ..Default::default()
        });
        seq += 1;
    }
    store.commit(&commits).await.unwrap();
    commits.into_iter().map(|c| Arc::new(c.event)).collect()
}

async fn found(search: &Search, q: &str, conv: ConversationId) -> Vec<u64> {
    let req = Request {
        query: parse(q, false).unwrap(),
        conversations: vec![conv],
        senders: vec![],
        after_ms: None,
        before_ms: None,
        below: None,
        order: Order::Recent,
        offset: 0,
        limit: 100,
    };
    let mut seqs: Vec<u64> = search.search(req).await.unwrap().0.iter().map(|h| h.seq).collect();
    seqs.sort();
    seqs
}

fn settings(queue: usize) -> LiveSettings {
    LiveSettings {
        commit_every: Duration::from_millis(20),
        reconcile_every: Duration::from_secs(3_600),
        queue,
    }
}

async fn until(search: &Search, conv: ConversationId, seq: u64) {
    tokio::time::timeout(WAIT, search.indexed_through(conv, seq))
        .await
        .expect("indexed in time");
}

#[tokio::test]
async fn live_events_gaps_and_other_nodes_positions_are_all_indexed_once() {
    let store = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(TantivyIndex::open(dir.path()).unwrap());
    let search = Search::new(store.clone(), index, settings(1_024));
    tokio::spawn(search.clone().run());

    // Handed over live, in order.
    let conv = store.allocate_conversation_id().await.unwrap();
    for ev in commit(&store, conv, 1, &["alpha one", "alpha two"]).await {
        search.committed(&ev);
    }
    until(&search, conv, 3).await;
    assert_eq!(found(&search, "alpha", conv).await, vec![2, 3]);

    // A gap: only the newest is handed over; what came between is read from the log.
    let evs = commit(&store, conv, 4, &["beta four", "beta five", "beta six"]).await;
    search.committed(&evs[2]);
    until(&search, conv, 6).await;
    assert_eq!(found(&search, "beta", conv).await, vec![4, 5, 6]);

    // Another node committed: only its position arrives.
    commit(&store, conv, 7, &["gamma seven"]).await;
    search.seen(conv, 7);
    until(&search, conv, 7).await;
    assert_eq!(found(&search, "gamma", conv).await, vec![7]);

    // Handed over twice (this node's event and the bus's position for it): once.
    let evs = commit(&store, conv, 8, &["delta eight"]).await;
    search.committed(&evs[0]);
    search.seen(conv, 8);
    search.committed(&evs[0]);
    until(&search, conv, 8).await;
    assert_eq!(found(&search, "delta", conv).await, vec![8]);
    assert_eq!(found(&search, "alpha beta gamma delta", conv).await, Vec::<u64>::new());
    assert_eq!(search.indexed(), 8, "every event read once");
    assert_eq!(search.lag_ms(), 0, "nothing waits");
}

#[tokio::test]
async fn an_overflowing_queue_loses_nothing_and_a_restart_catches_up() {
    let store = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let conv = store.allocate_conversation_id().await.unwrap();
    {
        let index = Arc::new(TantivyIndex::open(dir.path()).unwrap());
        // A queue of 2 against 40 events at once: most notices are refused.
        let search = Search::new(store.clone(), index, settings(2));
        let task = tokio::spawn(search.clone().run());
        let texts: Vec<String> = (0..40).map(|i| format!("burst {i}")).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        for ev in commit(&store, conv, 1, &texts).await {
            search.committed(&ev);
        }
        until(&search, conv, 41).await;
        assert_eq!(found(&search, "burst", conv).await, (2..=41).collect::<Vec<_>>());
        // Stopped as a server stops it.
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(Arc::strong_count(&search), 1, "nothing else holds the index");
    }
    // While no index runs, more is committed; a new start finds it in the log.
    commit(&store, conv, 42, &["while away"]).await;
    let index = Arc::new(TantivyIndex::open(dir.path()).expect("the writer's lock went with it"));
    let search = Search::new(store.clone(), index, settings(1_024));
    tokio::spawn(search.clone().run());
    until(&search, conv, 42).await;
    assert_eq!(found(&search, "away", conv).await, vec![42]);
    assert_eq!(search.indexed(), 1, "only what was missed is read again");
}

/// Retention (PROTOCOL.md §5.17): a removed range leaves this node's index in the next
/// round; a conversation whose every event went before it was indexed counts as indexed
/// through the floor (nothing waits for events that no longer exist).
#[tokio::test]
async fn ranges_removed_by_retention_leave_the_index() {
    let store = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(TantivyIndex::open(dir.path()).unwrap());
    let search = Search::new(store.clone(), index, settings(1_024));
    tokio::spawn(search.clone().run());
    let conv = ConversationId(1);
    for e in commit(&store, conv, 1, &["otter a", "otter b", "otter c", "otter d"]).await {
        search.committed(&e);
    }
    until(&search, conv, 5).await;
    assert_eq!(found(&search, "otter", conv).await, vec![2, 3, 4, 5]);
    store.remove_events(conv, Seq(3)).await.unwrap();
    search.remove_through(conv, 3);
    let deadline = tokio::time::Instant::now() + WAIT;
    while found(&search, "otter", conv).await != vec![4, 5] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the range left the index in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Never indexed here, and all gone by the time this node hears of it.
    let quiet = ConversationId(2);
    commit(&store, quiet, 1, &["otter e", "otter f"]).await;
    store.remove_events(quiet, Seq(3)).await.unwrap();
    search.seen(quiet, 3);
    until(&search, quiet, 3).await;
    assert!(found(&search, "otter", quiet).await.is_empty());
}
