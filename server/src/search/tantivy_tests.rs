//! The embedded index against golden texts: the same promises as the protocol's search
//! tests, through tantivy, plus what only an index has (scope, edits, deletes, restarts).
use natter_protocol::search::parse;

use super::*;
use natter_protocol::UserId;

fn doc(conv: u64, seq: u64, sender: u64, time_ms: u64, text: &str) -> Doc {
    Doc {
        conversation: ConversationId(conv),
        seq,
        sender: UserId(sender),
        time_ms,
        text: text.into(),
        names: Vec::new(),
        has: Vec::new(),
    }
}

/// A batch of `ops` with no positions.
fn ops(ops: Vec<Op>) -> Batch {
    Batch {
        ops,
        ..Batch::default()
    }
}

fn request(q: &str, convs: &[u64]) -> Request {
    Request {
        query: parse(q, false).expect("parses"),
        conversations: convs.iter().map(|c| ConversationId(*c)).collect(),
        senders: Vec::new(),
        after_ms: None,
        before_ms: None,
        below: None,
        order: Order::Recent,
        offset: 0,
        limit: 20,
    }
}

fn seqs(ix: &TantivyIndex, req: &Request) -> Vec<u64> {
    ix.search(req).expect("search").0.into_iter().map(|h| h.seq).collect()
}

fn golden() -> (tempfile::TempDir, TantivyIndex) {
    let dir = tempfile::tempdir().unwrap();
    let ix = TantivyIndex::open(&dir.path().join("search")).unwrap();
    let texts = [
        "here is foo.png for you",
        "docs at https://example.com/guide/start.html?lang=de and /usr/local/bin/natter",
        "we moved to C++20 last year",
        "To be, or not to be: that is the question",
        "apple banana split",
        "apple pie",
        "Die Straße ist lang",
        "Привет, мир! Ёлка",
        "東京タワーに行きました",
        "hello world",
    ];
    let ops: Vec<Op> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Op::Put(doc(1, i as u64 + 1, 7, 1_000 + i as u64, t)))
        .collect();
    ix.apply(&Batch {
        ops,
        through: vec![(ConversationId(1), 10)],
        cursor: None,
    })
    .unwrap();
    (dir, ix)
}

#[test]
fn golden_queries_find_what_the_protocol_promises() {
    let (_d, ix) = golden();
    let one = |q: &str| seqs(&ix, &request(q, &[1]));
    assert_eq!(one("foo"), vec![1]);
    assert_eq!(one("foo.png"), vec![1]);
    assert_eq!(one("example.com"), vec![2]);
    assert_eq!(one("https://example.com/guide/start.html?lang=de"), vec![2]);
    assert_eq!(one("usr/local"), vec![2]);
    assert_eq!(one("C++20"), vec![3]);
    assert_eq!(one("\"to be or not to be\""), vec![4]);
    assert_eq!(one("apple -banana"), vec![6]);
    assert_eq!(one("apple"), vec![6, 5], "newest first");
    assert_eq!(one("strasse"), vec![7]);
    assert_eq!(one("елка"), vec![8]);
    assert_eq!(one("東京"), vec![9]);
    assert_eq!(one("タワー"), vec![9]);
    assert!(one("京都").is_empty());
    let typing = Request {
        query: parse("hello wor", true).unwrap(),
        ..request("x", &[1])
    };
    assert_eq!(seqs(&ix, &typing), vec![10]);
    let lone_prefix = Request {
        query: parse("hel", true).unwrap(),
        ..request("x", &[1])
    };
    assert_eq!(seqs(&ix, &lone_prefix), vec![10]);
}

#[test]
fn only_the_conversations_in_scope_are_searched() {
    let dir = tempfile::tempdir().unwrap();
    let ix = TantivyIndex::open(dir.path()).unwrap();
    ix.apply(&ops(vec![
        Op::Put(doc(1, 1, 7, 10, "secret plans")),
        Op::Put(doc(2, 1, 8, 20, "secret recipe")),
    ]))
    .unwrap();
    assert_eq!(seqs(&ix, &request("secret", &[2])), vec![1]);
    let (hits, total) = ix.search(&request("secret", &[2])).unwrap();
    assert_eq!((hits[0].conversation, total), (ConversationId(2), 1));
    assert!(
        seqs(&ix, &request("secret", &[])).is_empty(),
        "no conversations, no hits"
    );
    assert!(seqs(&ix, &request("secret", &[3])).is_empty());
}

#[test]
fn filters_narrow_by_sender_time_and_attachment() {
    let dir = tempfile::tempdir().unwrap();
    let ix = TantivyIndex::open(dir.path()).unwrap();
    let mut with_file = doc(1, 3, 8, 300, "report attached report.pdf");
    with_file.has = vec![Has::File];
    ix.apply(&ops(vec![
        Op::Put(doc(1, 1, 7, 100, "report one")),
        Op::Put(doc(1, 2, 8, 200, "report two")),
        Op::Put(with_file),
    ]))
    .unwrap();
    let by_8 = Request {
        senders: vec![UserId(8)],
        ..request("report", &[1])
    };
    assert_eq!(seqs(&ix, &by_8), vec![3, 2]);
    let window = Request {
        after_ms: Some(150),
        before_ms: Some(300),
        ..request("report", &[1])
    };
    assert_eq!(seqs(&ix, &window), vec![2], "after inclusive, before exclusive");
    assert_eq!(seqs(&ix, &request("has:file", &[1])), vec![3], "a filter alone");
    assert_eq!(
        seqs(&ix, &request("report.pdf", &[1])),
        vec![3],
        "attachment names are text"
    );
}

#[test]
fn edits_replace_deletes_remove_and_a_reopened_index_keeps_both_and_its_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("search");
    let (c1, c2) = (ConversationId(1), ConversationId(2));
    {
        let ix = TantivyIndex::open(&path).unwrap();
        assert!(ix.positions().unwrap().is_empty(), "a new index has no positions");
        assert_eq!(ix.cursor().unwrap(), None);
        ix.apply(&Batch {
            ops: vec![
                // New messages are added (nothing to replace); the edit below replaces.
                Op::Add(doc(1, 1, 7, 10, "first draft")),
                Op::Add(doc(1, 2, 7, 20, "to be deleted")),
                Op::Add(doc(2, 1, 7, 30, "draft elsewhere")),
            ],
            through: vec![(c1, 2), (c2, 1)],
            cursor: Some("s1".into()),
        })
        .unwrap();
        ix.apply(&Batch {
            ops: vec![
                Op::Put(doc(1, 1, 7, 10, "final version")),
                Op::Remove {
                    conversation: c1,
                    seq: 2,
                },
                Op::RemoveConversation(c2),
            ],
            through: vec![(c1, 4), (c2, 2)],
            cursor: None,
        })
        .unwrap();
        assert!(
            seqs(&ix, &request("draft", &[1, 2])).is_empty(),
            "the edit replaced the text"
        );
        assert_eq!(seqs(&ix, &request("final", &[1])), vec![1]);
        assert!(seqs(&ix, &request("deleted", &[1])).is_empty());
    }
    let ix = TantivyIndex::open(&path).unwrap();
    let mut positions = ix.positions().unwrap();
    positions.sort();
    assert_eq!(positions, vec![(c1, 4), (c2, 2)], "one position each, the newest");
    assert_eq!(
        ix.cursor().unwrap().as_deref(),
        Some("s1"),
        "a batch without a cursor keeps it"
    );
    assert_eq!(seqs(&ix, &request("final", &[1])), vec![1]);
    assert!(seqs(&ix, &request("deleted elsewhere", &[1, 2])).is_empty());
    let (_, total) = ix.search(&request("final", &[1])).unwrap();
    assert_eq!(total, 1, "one document for the edited message");
    let (_, all) = ix.search(&request("after:1970-01-01", &[1, 2])).unwrap();
    assert_eq!(all, 1, "a filter-only query finds messages, not positions");
}

#[test]
fn relevant_order_ranks_the_better_match_first_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let ix = TantivyIndex::open(dir.path()).unwrap();
    ix.apply(&ops(vec![
        Op::Put(doc(1, 1, 7, 10, "rust rust rust rust")),
        Op::Put(doc(
            1,
            2,
            7,
            20,
            "rust and a long sentence about many other things entirely",
        )),
    ]))
    .unwrap();
    let relevant = Request {
        order: Order::Relevant,
        ..request("rust", &[1])
    };
    assert_eq!(seqs(&ix, &relevant), vec![1, 2]);
    let second_page = Request {
        offset: 1,
        limit: 1,
        ..request("rust", &[1])
    };
    assert_eq!(seqs(&ix, &second_page), vec![1], "recent order, second hit");
}

/// A deleted account (PROTOCOL.md §5.16): its messages leave the index and its files (the
/// segments are merged without them); others' messages stay.
#[test]
fn a_removed_senders_messages_leave_the_index_and_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let ix = TantivyIndex::open(&dir.path().join("search")).unwrap();
    ix.apply(&ops(vec![
        Op::Put(doc(1, 1, 7, 10, "zebra-secret words")),
        Op::Put(doc(1, 2, 8, 11, "zebra others")),
    ]))
    .unwrap();
    ix.apply(&ops(vec![Op::Put(doc(2, 1, 7, 12, "zebra-secret elsewhere"))]))
        .unwrap();
    let grep = |needle: &[u8]| {
        std::fs::read_dir(dir.path().join("search"))
            .unwrap()
            .flatten()
            .any(|f| std::fs::read(f.path()).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
    };
    assert!(grep(b"zebra-secret"), "the text is in the files at first");
    for conv in [1, 2] {
        ix.apply(&ops(vec![Op::RemoveSender {
            conversation: ConversationId(conv),
            sender: UserId(7),
        }]))
        .unwrap();
    }
    assert_eq!(seqs(&ix, &request("zebra", &[1, 2])), vec![2]);
    assert!(!grep(b"zebra-secret"), "merged out of every file");
    assert!(grep(b"zebra others"));
}

/// Retention (PROTOCOL.md §5.17): a conversation's messages up to a seq leave the index;
/// later ones, other conversations and the conversation's position stay.
#[test]
fn a_range_removed_by_retention_leaves_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let ix = TantivyIndex::open(&dir.path().join("search")).unwrap();
    ix.apply(&Batch {
        ops: (1..=5).map(|s| Op::Put(doc(1, s, 7, 10 + s, "otter"))).collect(),
        through: vec![(ConversationId(1), 5)],
        cursor: None,
    })
    .unwrap();
    ix.apply(&ops(vec![Op::Put(doc(2, 1, 7, 10, "otter"))])).unwrap();
    ix.apply(&ops(vec![Op::RemoveThrough {
        conversation: ConversationId(1),
        seq: 3,
    }]))
    .unwrap();
    assert_eq!(seqs(&ix, &request("otter", &[1])), vec![5, 4]);
    assert_eq!(seqs(&ix, &request("otter", &[2])), vec![1]);
    assert!(ix.positions().unwrap().contains(&(ConversationId(1), 5)));
}
