//! Search end to end (PROTOCOL.md §14): the real server with its tantivy index, clients
//! over QUIC. What users type is found (file names, code tokens, URLs, accents, CJK),
//! only in conversations the searcher is a member of at query time; edits and deletes are
//! followed; pages neither repeat nor skip; bad input gets typed errors; people and
//! channels are found by prefix; an index deleted or killed mid-way is rebuilt from the log.
use crate::common;

use common::*;
use natter_protocol::pb;
use natter_sdk::{ClientError, ConversationId};
use serde_json::json;

/// Search as `who` (all of their conversations, newest first, 100 hits).
async fn find(who: &Device, q: &str) -> Vec<(u64, u64)> {
    let r = who.client.search(query(q)).await.expect("search");
    r.hits.iter().map(|h| (h.conversation_id, h.seq)).collect()
}

fn query(q: &str) -> pb::Search {
    pb::Search {
        query: q.into(),
        limit: 100,
        ..Default::default()
    }
}

fn code(e: ClientError) -> pb::ErrorCode {
    e.server_error().map(|e| e.code).unwrap_or(pb::ErrorCode::Unspecified)
}

/// Send `text` to `conv` as `who` and wait until the server has indexed it.
async fn said(s: &natter_server::RunningServer, who: &Device, conv: ConversationId, text: &str) -> u64 {
    let seq = who.client.send(conv, text).await.unwrap().seq.0;
    indexed(s, conv, seq).await;
    seq
}

/// Send `n` messages `text(i)` to `conv` as `who`, one after another; the last seq.
async fn send_n(who: &Device, conv: ConversationId, n: usize, text: impl Fn(usize) -> String) -> u64 {
    let mut last = 0;
    for i in 0..n {
        last = who.client.send(conv, &text(i)).await.unwrap().seq.0;
    }
    last
}

async fn indexed(s: &natter_server::RunningServer, conv: ConversationId, seq: u64) {
    tokio::time::timeout(DEADLINE, s.search_indexed_through(conv, seq))
        .await
        .expect("indexed before the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_users_type_is_found_only_where_they_are_members() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let (alice, bob, dm) = alice_and_bob(&s).await;
    let carol = user(&s, "carol").await;
    let group = ConversationId(
        alice
            .client
            .create_group("launch", &["bob", "carol"])
            .await
            .unwrap()
            .conversation_id,
    );

    let png = said(&s, &alice, dm, "the screenshot foo.png is ready").await;
    let cpp = said(&s, &bob, dm, "we moved to C++20 modules").await;
    let cafe = said(&s, &alice, dm, "Café CRÈME at noon?").await;
    let link = said(&s, &alice, group, "launch plan at https://natter.dev/launch").await;
    let cjk = said(&s, &carol, group, "我们明天开会").await;
    let the = said(&s, &bob, group, "the the the").await;

    // Words inside file names, code tokens, URLs; folding; CJK; no stop words.
    assert_eq!(find(&bob, "foo").await, vec![(dm.0, png)]);
    assert_eq!(find(&bob, "foo.png").await, vec![(dm.0, png)]);
    assert_eq!(find(&bob, "C++20").await, vec![(dm.0, cpp)]);
    assert_eq!(find(&bob, "creme cafe").await, vec![(dm.0, cafe)]);
    assert_eq!(find(&bob, "natter.dev").await, vec![(group.0, link)]);
    assert_eq!(find(&bob, "明天").await, vec![(group.0, cjk)]);
    assert_eq!(
        find(&bob, "the").await,
        vec![(group.0, the), (dm.0, png)],
        "newest first"
    );
    // Filters and exclusions.
    assert_eq!(find(&bob, "has:link").await, vec![(group.0, link)]);
    assert_eq!(find(&bob, "from:bob the").await, vec![(group.0, the)]);
    assert_eq!(find(&bob, "in:launch the").await, vec![(group.0, the)]);
    assert_eq!(
        find(&bob, "in:alice the").await,
        vec![(dm.0, png)],
        "a DM by the other's name"
    );
    assert_eq!(find(&bob, "the -screenshot").await, vec![(group.0, the)]);
    assert!(find(&bob, "from:nobody the").await.is_empty());
    // Search as you type: the last word is a prefix.
    let typed = pb::Search {
        typing: true,
        ..query("screensh")
    };
    assert_eq!(bob.client.search(typed).await.unwrap().hits.len(), 1);

    // Only where the searcher is a member: carol is not in the DM.
    assert!(find(&carol, "foo").await.is_empty());
    let theirs = pb::Search {
        conversation_ids: vec![dm.0],
        ..query("foo")
    };
    assert_eq!(
        code(carol.client.search(theirs).await.unwrap_err()),
        pb::ErrorCode::NotMember
    );

    // A hit carries the message and a snippet with the match marked.
    let r = bob.client.search(query("C++20")).await.unwrap();
    let h = &r.hits[0];
    let marked: Vec<(&str, bool)> = h.snippet.iter().map(|p| (p.text.as_str(), p.hit)).collect();
    assert_eq!(
        marked,
        vec![("we moved to ", false), ("C++20", true), (" modules", false)]
    );
    let ev = h.event.as_ref().unwrap();
    assert_eq!((ev.seq, ev.sender_username.as_str()), (cpp, "bob"));
    assert_eq!(r.total, 1);
    assert_eq!(r.index_lag_ms, 0, "nothing waits to be indexed");
    assert!(r.next_cursor.is_empty());

    // Edits replace the text; deletes remove the message.
    let edit = bob
        .client
        .edit(dm, natter_sdk::Seq(cpp), "now on Rust 2024 editions")
        .await
        .unwrap();
    indexed(&s, dm, edit.0).await;
    assert!(find(&alice, "modules").await.is_empty(), "the old text is gone");
    let r = alice.client.search(query("editions")).await.unwrap();
    assert_eq!(r.hits.len(), 1);
    match &r.hits[0].event.as_ref().unwrap().body {
        Some(pb::conversation_event::Body::Message(m)) => {
            assert_eq!(
                m.body.as_ref().unwrap().text,
                "now on Rust 2024 editions",
                "as last edited"
            )
        }
        other => panic!("{other:?}"),
    }
    let del = alice.client.delete_message(dm, natter_sdk::Seq(cafe)).await.unwrap();
    indexed(&s, dm, del.0).await;
    assert!(find(&bob, "creme").await.is_empty(), "deleted");

    // A member who leaves finds nothing there afterwards.
    assert_eq!(find(&carol, "明天").await, vec![(group.0, cjk)]);
    carol.client.leave(group).await.unwrap();
    assert!(find(&carol, "明天").await.is_empty());
    assert!(find(&carol, "launch").await.is_empty());

    // Typed refusals.
    assert_eq!(
        code(bob.client.search(query("  ")).await.unwrap_err()),
        pb::ErrorCode::BadRequest
    );
    // Hostile input: typed refusals or bounded work, and the server keeps serving.
    let huge = "a".repeat(100_000);
    assert_eq!(
        code(bob.client.search(query(&huge)).await.unwrap_err()),
        pb::ErrorCode::BadRequest
    );
    let many = vec!["w"; 1_000].join(" ");
    assert_eq!(
        code(bob.client.search(query(&many)).await.unwrap_err()),
        pb::ErrorCode::BadRequest
    );
    let nested = "\"".repeat(500) + "x" + &"\"".repeat(500);
    let _ = bob.client.search(query(&nested)).await;
    assert!(
        bob.client.search(query("(a+)+$ [a-z]*.*")).await.is_ok(),
        "regex-like text is text"
    );
    assert_eq!(
        code(bob.client.search(query("-only")).await.unwrap_err()),
        pb::ErrorCode::BadRequest
    );
    let e = bob.client.search(query("has:video")).await.unwrap_err();
    assert!(e.to_string().contains("video"), "{e}");
    let big = pb::Search {
        limit: 101,
        ..query("the")
    };
    assert_eq!(
        code(bob.client.search(big).await.unwrap_err()),
        pb::ErrorCode::LimitExceeded
    );
    let forged = pb::Search {
        cursor: "t12.x".into(),
        ..query("the")
    };
    assert_eq!(
        code(bob.client.search(forged).await.unwrap_err()),
        pb::ErrorCode::BadRequest
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_neither_repeat_nor_skip_and_new_messages_do_not_shift_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let (alice, bob, dm) = alice_and_bob(&s).await;
    let last = send_n(&alice, dm, 45, |i| format!("report number {i}")).await;
    indexed(&s, dm, last).await;
    let mut matching = 45;
    let mut newest = last;
    for order in [pb::SearchOrder::Recent, pb::SearchOrder::Relevant] {
        // What exists when the walk starts is what it must find, each once.
        let upto = newest;
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let r = bob
                .client
                .search(pb::Search {
                    query: "report".into(),
                    limit: 20,
                    order: order as i32,
                    cursor: cursor.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(r.total, matching, "every match counted");
            seen.extend(r.hits.iter().map(|h| h.seq));
            pages += 1;
            if pages == 1 {
                // Arriving between pages: not on the next pages of a newest-first walk.
                let extra = alice.client.send(dm, "report late").await.unwrap().seq.0;
                indexed(&s, dm, extra).await;
                matching += 1;
                newest = extra;
            }
            if r.next_cursor.is_empty() {
                break;
            }
            cursor = r.next_cursor;
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "{order:?}: a hit repeated: {seen:?}");
        assert_eq!(pages, 3);
        if order == pb::SearchOrder::Recent {
            assert_eq!(seen, (2..=upto).rev().collect::<Vec<_>>(), "newest first, none skipped");
        } else {
            assert_eq!(sorted, (2..=upto).collect::<Vec<_>>(), "{order:?}: none skipped");
        }
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_and_public_channels_are_found_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let anna = user(&s, "anna").await;
    let annika = user(&s, "annika").await;
    let _bob = user(&s, "bob").await;
    let names = |v: Vec<pb::UserMatch>| v.into_iter().map(|u| u.username).collect::<Vec<_>>();
    assert_eq!(
        names(anna.client.search_users("ann", 0).await.unwrap()),
        ["annika"],
        "not oneself"
    );
    assert_eq!(
        names(_bob.client.search_users("@ANN", 0).await.unwrap()),
        ["anna", "annika"]
    );
    annika.client.set_unlisted(true).await.unwrap();
    assert_eq!(names(_bob.client.search_users("ann", 0).await.unwrap()), ["anna"]);
    annika.client.set_unlisted(false).await.unwrap();
    assert_eq!(names(_bob.client.search_users("annik", 0).await.unwrap()), ["annika"]);
    assert_eq!(
        code(_bob.client.search_users("", 0).await.unwrap_err()),
        pb::ErrorCode::BadRequest
    );
    assert_eq!(
        code(_bob.client.search_users("a", 51).await.unwrap_err()),
        pb::ErrorCode::LimitExceeded
    );

    let rust = anna.client.create_channel("rust").await.unwrap().conversation_id;
    anna.client.create_channel("rustaceans").await.unwrap();
    anna.client.create_channel("golang").await.unwrap();
    annika.client.join_channel("rust").await.unwrap();
    let found = _bob.client.search_channels("#Rust", 0).await.unwrap();
    let got: Vec<(&str, u32, bool)> = found
        .iter()
        .map(|c| (c.name.as_str(), c.member_count, c.joined))
        .collect();
    assert_eq!(got, vec![("rust", 2, false), ("rustaceans", 1, false)]);
    assert_eq!(found[0].conversation_id, rust);
    let mine = annika.client.search_channels("rust", 1).await.unwrap();
    assert!(mine[0].joined && mine.len() == 1);
    assert_eq!(_bob.client.search_channels("", 0).await.unwrap().len(), 3);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_searches_is_rate_limited_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let (alice, ..) = alice_and_bob(&s).await;
    let mut limited = 0;
    for _ in 0..40 {
        match alice.client.search(query("anything")).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(code(e), pb::ErrorCode::RateLimited);
                limited += 1;
            }
        }
    }
    assert!(limited > 0, "40 searches at once pass a burst of 20");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_index_is_rebuilt_from_the_log_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let addr = s.addr;
    let (alice, bob, dm) = alice_and_bob(&s).await;
    let last = send_n(&alice, dm, 30, |i| format!("archived note {i}")).await;
    indexed(&s, dm, last).await;
    let before = find(&bob, "archived").await;
    assert_eq!(before.len(), 30);
    drop((alice, bob));
    s.shutdown().await;
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    let s = restart(dir.path(), addr).await;
    indexed(&s, dm, last).await;
    let bob = device(s.addr, &s.fingerprint, "bob", false).await;
    assert_eq!(find(&bob, "archived").await, before);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_searches_pages_and_finds_people_and_channels() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    cli_user(&a, &s, "alice").await;
    cli_user(&b, &s, "bob").await;
    let dm = cli(&a, &["dm", "bob"]).await[0]["conversationId"].as_u64().unwrap();
    let dm_s = dm.to_string();
    let mut last = 0;
    for i in 0..3 {
        last = cli(&a, &["send", &dm_s, "deploy", "step", &i.to_string()]).await[0]["seq"]
            .as_u64()
            .unwrap();
    }
    indexed(&s, ConversationId(dm), last).await;
    let out = cli(&b, &["search", "deploy", "--limit", "2"]).await;
    assert_eq!(out.len(), 3, "two hits and the closing line: {out:?}");
    assert_eq!(out[0]["seq"], last, "newest first");
    assert_eq!(out[0]["snippet"][0], json!({"text": "deploy", "hit": true}));
    assert_eq!(out[2]["total"], 3);
    let cursor = out[2]["nextCursor"].as_str().unwrap().to_string();
    assert!(!cursor.is_empty());
    let next = cli(&b, &["search", "deploy", "--limit", "2", "--cursor", &cursor]).await;
    assert_eq!(next.len(), 2, "the last hit and the closing line: {next:?}");
    assert_eq!(next[0]["seq"], last - 2);
    assert_eq!(next[1]["nextCursor"], "");
    let refused = cli_fails(&b, &["search", "has:video"]).await;
    assert!(
        refused.contains("BAD_REQUEST") || refused.contains("video"),
        "{refused}"
    );

    let found = cli(&b, &["find-users", "al"]).await;
    assert_eq!(found, vec![json!({"userId": found[0]["userId"], "username": "alice"})]);
    cli(&a, &["unlisted"]).await;
    assert!(cli(&b, &["find-users", "al"]).await.is_empty(), "unlisted");
    cli(&a, &["channel", "ops"]).await;
    let chans = cli(&b, &["find-channels", "op"]).await;
    assert_eq!(
        (chans[0]["name"].as_str(), chans[0]["joined"].as_bool()),
        (Some("ops"), Some(false))
    );
    s.shutdown().await;
}

/// A node of a Redis deployment, in process, on its own data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers_and_a_node_that_joins_later_catches_up_by_itself() {
    let redis = natter_server::store::testredis::TestRedis::start();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = redis_node(dirs[0].path(), &redis, "a").await;
    let b = redis_node(dirs[1].path(), &redis, "b").await;
    let c = redis_node(dirs[2].path(), &redis, "c").await;
    // Alice writes on A; bob reads on C; the group's third member never connects to B.
    let alice = user(&a, "alice").await;
    let bob = user(&c, "bob").await;
    drop(user(&b, "carol").await);
    let group = ConversationId(
        alice
            .client
            .create_group("ops", &["bob", "carol"])
            .await
            .unwrap()
            .conversation_id,
    );
    let last = send_n(&alice, group, 20, |i| format!("incident {i} resolved")).await;
    // Every node indexes every committed message, wherever it was committed and whoever
    // is connected there.
    for n in [&a, &b, &c] {
        indexed(n, group, last).await;
    }
    assert_eq!(find(&bob, "incident").await.len(), 20, "node C answers");
    let on_b = device(b.addr, &b.fingerprint, "bob", false).await;
    assert_eq!(find(&on_b, "incident").await.len(), 20, "node B answers");

    // A node that joins afterwards catches up from the log in Redis, then follows.
    let d = redis_node(dirs[3].path(), &redis, "d").await;
    indexed(&d, group, last).await;
    let on_d = device(d.addr, &d.fingerprint, "bob", false).await;
    assert_eq!(find(&on_d, "incident").await.len(), 20, "node D caught up");
    let more = alice.client.send(group, "incident 20 resolved").await.unwrap().seq.0;
    indexed(&d, group, more).await;
    assert_eq!(find(&on_d, "incident").await.len(), 21, "and follows");

    // A node stopped while messages go on comes back caught up.
    drop(on_b);
    b.shutdown().await;
    let last = send_n(&alice, group, 9, |i| format!("incident {} resolved", i + 21)).await;
    let b = redis_node(dirs[1].path(), &redis, "b").await;
    indexed(&b, group, last).await;
    let on_b = device(b.addr, &b.fingerprint, "bob", false).await;
    assert_eq!(
        find(&on_b, "incident").await.len(),
        30,
        "node B caught up after its restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_indexing_loses_nothing_from_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_server_binary(dir.path(), "127.0.0.1:0");
    let addr = p.addr;
    let alice = device(p.addr, &p.fingerprint, "alice", true).await;
    drop(device(p.addr, &p.fingerprint, "bob", true).await);
    let dm = ConversationId(alice.client.direct("bob").await.unwrap().conversation_id);
    // Acknowledged sends, then kill -9 with the index (a commit every 250 ms) behind.
    let sends: Vec<_> = (0..400)
        .map(|i| {
            let c = alice.client.clone();
            tokio::spawn(async move { c.send(dm, &format!("durable line {i}")).await.unwrap() })
        })
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(alice);
    let p = spawn_server_binary(dir.path(), &addr.to_string());
    let bob = device(p.addr, &p.fingerprint, "bob", false).await;
    // The restarted node reconciles from the log: every acknowledged message is found,
    // once. Synchronised on the index lag the server reports, bounded in rounds.
    let mut total = 0;
    // Paced under the search rate limit (10 per second).
    for _ in 0..150 {
        let r = bob.client.search(query("durable")).await.unwrap();
        total = r.total;
        if r.index_lag_ms == 0 && total == 400 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    }
    assert_eq!(total, 400, "every acknowledged message is searchable after kill -9");
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let r = bob
            .client
            .search(pb::Search {
                cursor: cursor.clone(),
                ..query("durable")
            })
            .await
            .unwrap();
        for h in &r.hits {
            assert!(seen.insert(h.seq), "seq {} found twice", h.seq);
        }
        if r.next_cursor.is_empty() {
            break;
        }
        cursor = r.next_cursor;
    }
    assert_eq!(seen.len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_sent_only_in_an_encrypted_dm_is_found_on_the_device_and_nowhere_on_the_server() {
    use common::e2ee::{phone, read};
    use common::files_containing;
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let s = server(data.path()).await;
    let addr = s.addr;
    let alice = phone(&s, phones.path(), "alice", 1, true).await;
    let mut bob = phone(&s, phones.path(), "bob", 1, true).await;
    let bob_token = bob.client.snapshot().await.unwrap().access_token.expect("logged in");
    let dm = ConversationId(alice.client.encrypted_direct("bob").await.unwrap().conversation_id);
    let plain = ConversationId(alice.client.direct("bob").await.unwrap().conversation_id);
    const WORD: &str = "zanzibarquokka";
    let secret = alice
        .client
        .send(dm, &format!("the {WORD} plan, file.pdf"))
        .await
        .unwrap()
        .seq
        .0;
    let edited = alice.client.send(dm, "first draft").await.unwrap().seq;
    alice.client.edit(dm, edited, "final wording").await.unwrap();
    let public = alice.client.send(plain, "the public plan").await.unwrap().seq.0;
    assert_eq!(read(&mut bob, dm, 2).await.len(), 2);
    indexed(&s, plain, public).await;

    // The recipient's device finds it, merged with the server's hits, and says how far
    // back it has indexed the encrypted conversation.
    let wait_edit = async {
        loop {
            let r = bob.client.search(query("final")).await.unwrap();
            if !r.hits.is_empty() {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(120)).await;
        }
    };
    let r = tokio::time::timeout(DEADLINE, wait_edit)
        .await
        .expect("the edit reaches the index");
    assert_eq!(
        (r.hits[0].conversation_id, r.hits[0].seq),
        (dm.0, edited.0),
        "the edited text"
    );
    assert!(
        bob.client.search(query("draft")).await.unwrap().hits.is_empty(),
        "the old text is gone"
    );
    let r = bob.client.search(query(WORD)).await.unwrap();
    assert_eq!(
        r.hits.iter().map(|h| (h.conversation_id, h.seq)).collect::<Vec<_>>(),
        vec![(dm.0, secret)]
    );
    assert!(r.hits[0].snippet.iter().any(|p| p.hit && p.text == WORD));
    assert_eq!(r.encrypted_conversation_ids, vec![dm.0]);
    assert_eq!(r.local.len(), 1);
    assert_eq!(r.local[0].conversation_id, dm.0);
    assert!(r.local[0].to_seq >= edited.0);
    let r = bob.client.search(query("plan")).await.unwrap();
    let mut found: Vec<(u64, u64)> = r.hits.iter().map(|h| (h.conversation_id, h.seq)).collect();
    found.sort();
    let mut want = vec![(plain.0, public), (dm.0, secret)];
    want.sort();
    assert_eq!(found, want, "server and device hits, merged, once each");
    // The server found only the plain one.
    assert_eq!(
        find(&device(addr, &s.fingerprint, "carol", true).await, "plan").await,
        vec![]
    );

    // Nowhere on the server: not in its store, not in its index.
    assert!(files_containing(data.path(), WORD.as_bytes()).is_empty());
    // The device's own index is sealed at rest.
    bob.client.shutdown().await;
    assert!(
        files_containing(phones.path(), WORD.as_bytes()).is_empty(),
        "sealed at rest"
    );

    // A new start of the same device (its token) opens its index from the file.
    let again = common::e2ee::phone_at(&s, &phones.path().join("bob-1.state"), "bob", false, Some(bob_token)).await;
    assert_eq!(again.device, bob.device);
    let r = again.client.search(query(WORD)).await.unwrap();
    assert_eq!(r.hits.len(), 1, "the index came back from its file");
    s.shutdown().await;
}
