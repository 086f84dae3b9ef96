//! The device's index: it finds exactly what the server's rules find, follows edits and
//! deletes, stays in its budget (and says how far back it reaches), and opens only with
//! its key.
use super::*;
use crate::search::parse;

fn doc(time_ms: u64, sender: u64, name: &str, text: &str) -> LocalDoc {
    LocalDoc {
        time_ms,
        sender,
        sender_name: name.into(),
        text: text.into(),
        names: Vec::new(),
        has: Vec::new(),
    }
}

fn find(ix: &LocalIndex, q: &str, convs: &[u64]) -> Vec<(u64, u64)> {
    let query = parse(q, true).unwrap();
    let req = LocalRequest {
        query: Some(&query),
        conversations: convs,
        limit: 100,
        ..Default::default()
    };
    ix.search(&req).0.into_iter().map(|h| (h.conversation, h.seq)).collect()
}

fn sample() -> LocalIndex {
    let mut ix = LocalIndex::default();
    ix.put(1, 2, doc(10, 7, "alice", "the screenshot foo.png is ready"));
    ix.put(1, 3, doc(11, 8, "bob", "we moved to C++20 modules"));
    ix.put(1, 4, doc(12, 7, "alice", "Café CRÈME at noon?"));
    ix.put(2, 2, doc(13, 8, "bob", "我们明天开会 https://natter.dev/x"));
    let mut with_file = doc(14, 7, "alice", "see attached");
    with_file.names = vec!["report.pdf".into()];
    with_file.has = vec![Has::File];
    ix.put(2, 3, with_file);
    ix
}

#[test]
fn it_finds_what_the_server_rules_find_in_scope_only() {
    let ix = sample();
    let all = [1, 2];
    assert_eq!(find(&ix, "foo", &all), vec![(1, 2)]);
    assert_eq!(find(&ix, "foo.png", &all), vec![(1, 2)]);
    assert_eq!(find(&ix, "C++20", &all), vec![(1, 3)]);
    assert_eq!(find(&ix, "creme cafe", &all), vec![(1, 4)]);
    assert_eq!(find(&ix, "明天", &all), vec![(2, 2)]);
    assert_eq!(find(&ix, "natter.dev", &all), vec![(2, 2)]);
    assert_eq!(find(&ix, "report", &all), vec![(2, 3)], "attachment names");
    assert_eq!(find(&ix, "has:file", &all), vec![(2, 3)]);
    assert_eq!(find(&ix, "from:bob", &all), vec![(2, 2), (1, 3)], "newest first");
    assert_eq!(find(&ix, "scr", &all), vec![(1, 2)], "the last word as a prefix");
    assert_eq!(find(&ix, "the -screenshot", &all), Vec::<(u64, u64)>::new());
    assert_eq!(find(&ix, "foo", &[2]), Vec::<(u64, u64)>::new(), "out of scope");
    // The same answers as the shared rule, message by message.
    for q in ["foo", "modules", "\"moved to\"", "noon -creme", "明"] {
        let query = parse(q, true).unwrap();
        let want: Vec<(u64, u64)> = ix
            .docs
            .iter()
            .filter(|(_, d)| crate::search::text_matches(&d.indexed_text(), &query))
            .map(|(k, _)| *k)
            .collect();
        let mut got = find(&ix, q, &all);
        got.sort();
        assert_eq!(got, want, "{q}");
    }
}

#[test]
fn edits_deletes_and_forgotten_conversations_are_followed() {
    let mut ix = sample();
    ix.edit(1, 3, "now on Rust 2024 editions");
    assert!(find(&ix, "modules", &[1]).is_empty());
    assert_eq!(find(&ix, "editions", &[1]), vec![(1, 3)]);
    ix.remove(1, 2);
    assert!(find(&ix, "foo", &[1]).is_empty());
    ix.remove_conversation(2);
    assert!(find(&ix, "明天", &[2]).is_empty());
    assert_eq!(ix.coverage(2), None);
    assert!(
        ix.postings.values().all(|p| p.iter().all(|(c, _)| *c == 1)),
        "no stale postings"
    );
}

#[test]
fn the_budget_drops_the_oldest_and_coverage_says_how_far_back_it_reaches() {
    let mut ix = LocalIndex::new(3, usize::MAX);
    ix.observe(5, 1);
    for seq in 2..=6 {
        ix.put(5, seq, doc(seq, 1, "a", &format!("note {seq}")));
    }
    assert_eq!(ix.len(), 3);
    assert_eq!(find(&ix, "note", &[5]), vec![(5, 6), (5, 5), (5, 4)]);
    let cov = ix.coverage(5).unwrap();
    assert_eq!(cov, Coverage { from_seq: 4, to_seq: 6 });
    assert!(!cov.complete());
    let mut small = LocalIndex::new(100, 200);
    for seq in 1..=20 {
        small.put(9, seq, doc(seq, 1, "a", "x".repeat(40).as_str()));
    }
    assert!(small.text_bytes <= 200 && small.len() < 20);
    let mut whole = LocalIndex::default();
    whole.observe(3, 1);
    whole.put(3, 2, doc(1, 1, "a", "hi"));
    assert!(whole.coverage(3).unwrap().complete());
}

#[test]
fn sealed_it_opens_only_with_its_key_and_comes_back_the_same() {
    let mut ix = sample();
    ix.observe(1, 1);
    let key = [7u8; 32];
    let sealed = ix.seal(&key, [1; 24]);
    assert!(
        !sealed.windows(10).any(|w| w == b"screenshot"),
        "no plaintext in the sealed bytes"
    );
    let back = LocalIndex::open(&sealed, &key, DEFAULT_MAX_MESSAGES, DEFAULT_MAX_TEXT_BYTES).unwrap();
    assert_eq!(back, ix);
    assert_eq!(
        LocalIndex::open(&sealed, &[8u8; 32], DEFAULT_MAX_MESSAGES, DEFAULT_MAX_TEXT_BYTES),
        Err(LocalIndexError::Key)
    );
    let mut bent = sealed.clone();
    let last = bent.len() - 1;
    bent[last] ^= 1;
    assert_eq!(
        LocalIndex::open(&bent, &key, DEFAULT_MAX_MESSAGES, DEFAULT_MAX_TEXT_BYTES),
        Err(LocalIndexError::Key)
    );
    assert!(LocalIndex::open(&sealed[..10], &key, 10, 10).is_err());
}
