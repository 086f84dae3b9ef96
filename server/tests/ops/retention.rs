//! Retention (PROTOCOL.md §5.17) end to end: a conversation set to keep its events for one
//! second loses the expired ones from history, search and media when the sweep runs; a
//! client paging back meets the removed range as one tombstone (`removed_through`), never
//! as a silent gap; what is inside the window, and other conversations, stay untouched.
//! Set from the CLI, read through the SDK, the CLI and the server API.
use natter_protocol::pb;
use natter_sdk::{Client, ClientError, ConversationId, HistoryAnchor, Seq};
use serde_json::json;

use crate::common::api::{api_server, make_key, product_login, product_token};
use crate::common::media::file;
use crate::common::*;

fn seqs(page: &pb::HistoryPage) -> Vec<u64> {
    page.events.iter().map(|e| e.seq).collect()
}

/// Hits for `q` in `who`'s conversations, as (conversation, seq).
async fn find(who: &Client, q: &str) -> Vec<(u64, u64)> {
    let r = who
        .search(pb::Search {
            query: q.into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("search");
    let mut hits: Vec<_> = r.hits.iter().map(|h| (h.conversation_id, h.seq)).collect();
    hits.sort();
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_events_leave_history_search_and_media_and_paging_meets_one_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = make_key(&data, "backend", "admin");
    let (s, api) = api_server(&data).await;
    for (id, name) in [("u-ann", "ann"), ("u-bob", "bob")] {
        let (st, u) = api
            .post("/api/v1/users", &key, json!({"id": id, "username": name}))
            .await;
        assert_eq!(st, 201, "{u}");
    }
    let group = |name: &str| {
        let body = json!({"kind": "group", "name": name, "creator": "u-ann", "members": ["u-bob"]});
        let api = &api;
        let key = &key;
        async move {
            let (st, g) = api.post("/api/v1/conversations", key, body).await;
            assert_eq!(st, 201, "{g}");
            ConversationId(g["conversation_id"].as_u64().unwrap())
        }
    };
    let (short, kept) = (group("short").await, group("kept").await);
    let (ann, _) = product_login(&s, "u-ann").await;
    let (bob, _) = product_login(&s, "u-bob").await;

    // Before: a file and two messages in the conversation that will keep one second, one
    // message in a conversation on the server's default (365 days).
    let bytes = file(40_000, 7);
    let info = ann
        .upload(
            short,
            "old.bin",
            "application/octet-stream",
            bytes.clone().into(),
            |_, _| {},
        )
        .await
        .unwrap();
    ann.send_attachments(short, "walrus with a file", std::slice::from_ref(&info))
        .await
        .unwrap();
    ann.send(short, "walrus one").await.unwrap();
    let old_last = ann.send(short, "walrus two").await.unwrap().seq.0;
    let kept_seq = ann.send(kept, "walrus kept").await.unwrap().seq.0;
    for (conv, seq) in [(short, old_last), (kept, kept_seq)] {
        tokio::time::timeout(DEADLINE, s.search_indexed_through(conv, seq))
            .await
            .expect("indexed");
    }
    assert_eq!(find(&bob, "walrus").await.len(), 4);
    assert_eq!(
        bob.download_all(&info.media_id, pb::MediaVariant::Original)
            .await
            .unwrap(),
        bytes
    );
    assert!(
        !files_containing(&data, &bytes[..4096]).is_empty(),
        "the file is stored"
    );

    // The owner sets one second from the CLI (a device logged in with a product token).
    let profile = dir.path().join("ann-cli");
    let (addr, fp) = (s.addr.to_string(), s.fingerprint.clone());
    let token = product_token("u-ann");
    cli(
        &profile,
        &[
            "--server",
            &addr,
            "--fingerprint",
            &fp,
            "login-token",
            "--token",
            &token,
        ],
    )
    .await;
    let short_id = short.0.to_string();
    let set = cli(&profile, &["group", "retention", &short_id, "--seconds", "1"]).await;
    assert_eq!(set[0]["retentionSecs"], 1);
    let refused = bob.set_retention(short, Some(0)).await.unwrap_err();
    assert_eq!(code(&refused), pb::ErrorCode::Forbidden, "only the owner sets it");

    // Event times are wall-clock milliseconds: what comes after this pause is more than a
    // second younger than everything before it.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let first_new = ann.send(short, "walrus fresh").await.unwrap();
    let last_new = ann.send(short, "walrus fresher").await.unwrap().seq.0;
    tokio::time::timeout(DEADLINE, s.search_indexed_through(short, last_new))
        .await
        .expect("indexed");

    // The sweep as of just under a second after the first new message.
    let swept = s.sweep_retention(first_new.server_time_ms + 999).await.unwrap();
    let floor = first_new.seq.0 - 1;
    assert!(floor > old_last, "the RetentionChanged event is old too");
    assert_eq!(swept.events, floor, "every event before the new ones, nothing else");

    // History: the newest page ends at the removed range and says so.
    let page = bob.history(short, HistoryAnchor::Before(Seq(0)), 50).await.unwrap();
    assert_eq!(seqs(&page), vec![first_new.seq.0, last_new]);
    assert_eq!((page.has_more, page.removed_through), (false, floor));
    // Paging back one at a time reaches the tombstone, not a gap.
    let back = bob
        .history(short, HistoryAnchor::Before(Seq(last_new)), 1)
        .await
        .unwrap();
    assert_eq!(seqs(&back), vec![first_new.seq.0]);
    assert_eq!((back.has_more, back.removed_through), (false, floor));
    let below = bob
        .history(short, HistoryAnchor::Before(Seq(first_new.seq.0)), 10)
        .await
        .unwrap();
    assert!(below.events.is_empty());
    assert_eq!((below.has_more, below.removed_through), (false, floor));
    // A device catching up from the start gets what is left, and where it begins.
    let from_start = bob.history(short, HistoryAnchor::After(Seq(0)), 10).await.unwrap();
    assert_eq!(seqs(&from_start), vec![first_new.seq.0, last_new]);
    assert_eq!(from_start.removed_through, floor);
    let summary = bob
        .conversations()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.conversation_id == short.0)
        .unwrap();
    assert_eq!(
        (summary.retention_secs, summary.retention_set, summary.removed_through),
        (1, true, floor)
    );

    // Search: the removed messages are gone, the rest found.
    assert_eq!(
        find(&bob, "walrus").await,
        vec![(short.0, first_new.seq.0), (short.0, last_new), (kept.0, kept_seq)]
    );
    // Media: the removed message's file is deleted, its bytes gone from disk.
    let gone = bob
        .download_all(&info.media_id, pb::MediaVariant::Original)
        .await
        .unwrap_err();
    assert_eq!(code(&gone), pb::ErrorCode::NotFound);
    assert_eq!(
        files_containing(&data, &bytes[..4096]),
        Vec::<std::path::PathBuf>::new()
    );

    // The conversation on the default keeps everything.
    let kept_page = bob.history(kept, HistoryAnchor::Before(Seq(0)), 50).await.unwrap();
    assert_eq!(kept_page.events.last().map(|e| e.seq), Some(kept_seq));
    assert_eq!(
        (kept_page.events.first().map(|e| e.seq), kept_page.removed_through),
        (Some(1), 0)
    );

    // The CLI and the server API show the same floor.
    let lines = cli(&profile, &["history", &short_id]).await;
    assert_eq!(lines.last().unwrap()["removedThrough"], floor);
    let (st, h) = api
        .get(&format!("/api/v1/conversations/{}/messages?user=u-bob", short.0), &key)
        .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["removed_through"], floor);
    assert_eq!(h["events"].as_array().unwrap().len(), 2);

    // A second sweep finds nothing more; the metrics count what went.
    assert_eq!(
        s.sweep_retention(first_new.server_time_ms + 999).await.unwrap().events,
        0
    );
    let (_, _, metrics) = super::get(s.ops_addr.unwrap(), "/metrics", None).await;
    for line in [
        format!("natter_retention_removed_events_total {floor}"),
        "natter_media_uploads_total{result=\"ready\"} 1".into(),
        "natter_media_stored_bytes_total 40000".into(),
        "natter_media_files_deleted_total 1".into(),
        "natter_search_queries_total{result=\"ok\"} 2".into(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains("natter_search_index_lag_seconds"), "{metrics}");

    // Back to the default through the server API: the event says what applies now.
    let (st, _) = api
        .call(
            "PUT",
            &format!("/api/v1/conversations/{}/retention", short.0),
            Some(&key),
            Some(&serde_json::to_vec(&json!({"by": "u-ann", "retention_secs": null})).unwrap()),
            &[],
        )
        .await;
    assert_eq!(st, 204);
    let page = bob.history(short, HistoryAnchor::Before(Seq(0)), 1).await.unwrap();
    let Some(pb::conversation_event::Body::RetentionChanged(r)) = &page.events[0].body else {
        panic!("{:?}", page.events)
    };
    assert_eq!((r.retention_secs, r.effective_secs), (None, 365 * 86_400));
    s.shutdown().await;
}

fn code(e: &ClientError) -> pb::ErrorCode {
    e.server_error().map(|e| e.code).unwrap_or(pb::ErrorCode::Unspecified)
}

/// SIGHUP's reload takes new defaults at once (docs/OPERATIONS.md): summaries report them,
/// and nothing about retention is named as needing a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_kinds_defaults_live() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let s = natter_server::start(&cfg).await.unwrap();
    let (alice, _bob, dm) = alice_and_bob(&s).await;
    let summary = |list: Vec<pb::ConversationSummary>| list.into_iter().find(|c| c.conversation_id == dm.0).unwrap();
    assert_eq!(
        summary(alice.client.conversations().await.unwrap()).retention_secs,
        365 * 86_400
    );
    let mut next = cfg.clone();
    next.retention.direct_days = 30;
    let reloaded = s.reload(&next).unwrap();
    assert!(reloaded.applied.contains(&"retention".to_string()), "{reloaded:?}");
    assert!(reloaded.need_restart.is_empty(), "{reloaded:?}");
    assert_eq!(
        summary(alice.client.conversations().await.unwrap()).retention_secs,
        30 * 86_400
    );
    s.shutdown().await;
}
