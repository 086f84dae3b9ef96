//! Search in the browser (PROTOCOL.md §14): the page's search box finds a message as it is
//! typed, marks the match, and a hit opens its conversation at that message (older pages
//! loaded until it is drawn); the package's search, searchUsers and searchChannels from
//! plain JavaScript, with typed errors.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_box_finds_as_you_type_and_a_hit_opens_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&web_config(dir.path())).await.unwrap();
    let mut b = Browser::start().await;
    b.open("web", &page_url(&s, "websocket")).await;
    sign_up(&mut b, "web", "wendy", "websocket").await;

    let nate = user(&s, "nate").await;
    let conv = ConversationId(nate.client.direct("wendy").await.unwrap().conversation_id);
    let target = nate
        .client
        .send(conv, "the quarterly report.pdf is attached")
        .await
        .unwrap()
        .seq;
    // Enough after it that the page's first history page does not hold it.
    let mut last = target;
    for i in 0..80 {
        last = nate.client.send(conv, &format!("filler {i}")).await.unwrap().seq;
    }
    tokio::time::timeout(DEADLINE, s.search_indexed_through(conv, last.0))
        .await
        .expect("indexed");

    // Typed, not submitted: the last word is a prefix.
    b.type_text("web", "#search-q", "quarterly rep").await;
    let hit = format!(
        "#search-results li.hit[data-conversation='{}'][data-seq='{}']",
        conv.0, target.0
    );
    b.wait("web", &hit).await;
    let marked = b.texts("web", "#search-results li.hit mark").await;
    assert_eq!(
        marked,
        vec!["quarterly".to_string(), "report.pdf".to_string()],
        "the prefix marks the word it began"
    );
    assert_eq!(b.texts("web", "#search-results li.hit").await.len(), 1, "one hit");
    b.click("web", &hit).await;
    let found = format!("#message-list li[data-seq='{}'].found", target.0);
    b.wait("web", &found).await;
    assert!(page_messages(&mut b, "web", conv.0)
        .await
        .contains(&(target.0, "the quarterly report.pdf is attached".to_string())));

    // A query the server refuses is said, not thrown.
    b.fill("web", "#search-q", "-only").await;
    b.press("web", "#search-q", "Enter").await;
    b.wait_fn(
        "web",
        "document.getElementById('search-status').textContent.includes('only excludes')",
    )
    .await;

    // The package from plain JavaScript.
    let reports = nate.client.create_channel("reports").await.unwrap().conversation_id;
    tokio::time::timeout(DEADLINE, s.search_indexed_through(ConversationId(reports), 1))
        .await
        .expect("indexed");
    let out = b
        .eval(
            "web",
            "const c = window.natter.client;
             const r = await c.search({ query: 'report.pdf', order: 'relevant' });
             let bad;
             try { await c.search({ query: 'has:video' }); } catch (e) { bad = e.code; }
             const users = await c.searchUsers('na', 0);
             const channels = await c.searchChannels('#rep', 0);
             return { hits: r.hits.map(h => [h.conversationId, h.seq, h.snippet.filter(p => p.hit).map(p => p.text)]),
                      total: r.total, lag: r.indexLagMs, bad,
                      users: users.map(u => u.username), channels: channels.map(c => [c.name, c.memberCount, c.joined]) };",
        )
        .await;
    assert_eq!(out["hits"], json!([[conv.0, target.0, ["report.pdf"]]]), "{out}");
    assert_eq!(out["total"], json!(1));
    assert_eq!(out["lag"], json!(0));
    assert_eq!(out["bad"], "BAD_REQUEST");
    assert_eq!(out["users"], json!(["nate"]));
    assert_eq!(out["channels"], json!([["reports", 1, false]]));
    s.shutdown().await;
}
