//! The feed against the memory store and a real tantivy index: catching up finds every
//! message once, follows edits and deletes, skips encrypted messages, and a second run
//! (a restart) reads nothing again; a deleted index directory is rebuilt from the log.
use natter_protocol::pb::{self, conversation_event::Body};
use natter_protocol::search::parse;
use natter_protocol::{ConversationId, Seq};

use super::*;
use crate::search::test_log::{created, event, message};
use crate::search::{Order, Request, TantivyIndex};
use crate::store::memory::MemoryStore;
use crate::store::{Commit, MessageState};

async fn conversation(store: &MemoryStore, bodies: Vec<Body>) -> ConversationId {
    let conv = store.allocate_conversation_id().await.unwrap();
    let mut commits = vec![created(conv)];
    for (i, b) in bodies.into_iter().enumerate() {
        let seq = i as u64 + 2;
        let state = match &b {
            Body::MessageDeleted(d) => Some((
                Seq(d.target_seq),
                MessageState {
                    deleted: true,
                    ..Default::default()
                },
            )),
            Body::MessageEdited(e) => Some((
                Seq(e.target_seq),
                MessageState {
                    edited: true,
                    ..Default::default()
                },
            )),
            _ => None,
        };
        commits.push(Commit {
            event: event(conv, seq, b),
            message_state: state,
            ..Default::default()
        });
    }
    store.commit(&commits).await.unwrap();
    conv
}

fn found(ix: &TantivyIndex, q: &str, convs: &[ConversationId]) -> Vec<(u64, u64)> {
    let req = Request {
        query: parse(q, false).unwrap(),
        conversations: convs.to_vec(),
        senders: Vec::new(),
        after_ms: None,
        before_ms: None,
        below: None,
        order: Order::Recent,
        offset: 0,
        limit: 2_000,
    };
    let mut hits: Vec<(u64, u64)> = ix
        .search(&req)
        .unwrap()
        .0
        .into_iter()
        .map(|h| (h.conversation.0, h.seq))
        .collect();
    hits.sort();
    hits
}

#[tokio::test]
async fn a_catch_up_indexes_every_message_once_and_follows_edits_and_deletes() {
    let store = MemoryStore::new();
    let many: Vec<Body> = (0..1_200).map(|i| message(&format!("bulk message {i}"))).collect();
    let big = conversation(&store, many).await;
    let sealed = Body::Message(pb::MessageEvent {
        client_msg_id: "s".into(),
        body: Some(pb::MessageBody {
            encrypted: Some(pb::Envelope::default()),
            ..Default::default()
        }),
    });
    let small = conversation(
        &store,
        vec![
            message("first draft of the plan"), // 2
            message("to be deleted soon"),      // 3
            Body::MessageEdited(pb::MessageEdited {
                target_seq: 2,
                text: "final plan".into(),
            }), // 4
            Body::MessageDeleted(pb::MessageDeleted { target_seq: 3 }), // 5
            sealed,                             // 6
        ],
    )
    .await;
    let gone = conversation(
        &store,
        vec![message("doomed words"), Body::Deleted(pb::ConversationDeleted {})],
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let ix = std::sync::Arc::new(TantivyIndex::open(&dir.path().join("search")).unwrap());
    let (convs, events) = reconcile(&store, &ix).await.unwrap();
    assert_eq!((convs, events), (3, 1_201 + 6 + 3));
    let all = [big, small, gone];
    assert_eq!(found(&ix, "bulk", &all).len(), 1_200, "every message once");
    assert_eq!(found(&ix, "\"bulk message 1199\"", &all), vec![(big.0, 1_201)]);
    assert_eq!(
        found(&ix, "plan", &all),
        vec![(small.0, 2)],
        "the edit replaced the draft"
    );
    assert!(found(&ix, "draft", &all).is_empty());
    assert!(found(&ix, "deleted", &all).is_empty(), "a deleted message is gone");
    assert!(found(&ix, "doomed", &all).is_empty(), "a deleted conversation is gone");
    let mut positions = ix.positions().unwrap();
    positions.sort();
    assert_eq!(positions, vec![(big, 1_201), (small, 6), (gone, 3)]);

    // A restart: nothing to read again. Then one new message: only it is read.
    assert_eq!(reconcile(&store, &ix).await.unwrap(), (0, 0));
    store
        .commit(&[Commit {
            event: event(small, 7, message("a late addition")),
            ..Default::default()
        }])
        .await
        .unwrap();
    assert_eq!(reconcile(&store, &ix).await.unwrap(), (1, 1));
    assert_eq!(found(&ix, "late", &all), vec![(small.0, 7)]);
    assert_eq!(found(&ix, "bulk", &all).len(), 1_200, "nothing twice");

    // The index directory deleted: rebuilt from the log, the same answers.
    drop(ix);
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    let ix = std::sync::Arc::new(TantivyIndex::open(&dir.path().join("search")).unwrap());
    reconcile(&store, &ix).await.unwrap();
    assert_eq!(found(&ix, "bulk", &all).len(), 1_200);
    assert_eq!(found(&ix, "plan", &all), vec![(small.0, 2)]);
    assert_eq!(found(&ix, "late", &all), vec![(small.0, 7)]);
    assert!(found(&ix, "deleted doomed draft", &all).is_empty());
}

#[test]
fn attachments_give_their_names_and_kinds() {
    let body = pb::MessageBody {
        text: "see https://example.com".into(),
        attachments: vec![pb::Attachment {
            name: "holiday.jpg".into(),
            mime: "image/jpeg".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (names, has) = content(&body, &body.text).unwrap();
    assert_eq!(names, vec!["holiday.jpg".to_string()]);
    assert_eq!(has, vec![Has::File, Has::Image, Has::Link]);
}
