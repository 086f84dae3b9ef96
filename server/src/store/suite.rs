//! The one behaviour suite every [`Store`] backend must pass. A backend's test module
//! invokes [`store_suite!`] with an expression that makes a fresh, empty store (and a guard
//! that keeps its backend alive); the macro expands to one named test per behaviour, so a
//! failure names the backend and the behaviour (`store::sled_store::tests::suite::paging`).
use super::*;
use natter_protocol::pb::conversation_event::Body;

fn msg(conv: ConversationId, seq: u64, sender: UserId, text: &str) -> Commit {
    Commit {
        event: pb::ConversationEvent {
            conversation_id: conv.0,
            seq,
            sender_user_id: sender.0,
            server_time_ms: 1000 + seq,
            body: Some(Body::Message(pb::MessageEvent {
                client_msg_id: format!("c{seq}"),
                body: Some(pb::MessageBody {
                    text: text.into(),
                    ..Default::default()
                }),
            })),
            ..Default::default()
        },
        idempotency: Some((sender, format!("c{seq}"))),
        read_cursors: vec![(sender, Seq(seq))],
        ..Default::default()
    }
}

fn member(user: UserId, name: &str, joined: u64) -> MemberRecord {
    MemberRecord {
        user,
        username: name.into(),
        role: pb::Role::Member,
        joined_seq: Seq(joined),
    }
}

/// One `#[tokio::test]` per behaviour below, each on a fresh store from `$make`, an
/// expression (it may `.await`) giving `(guard, store)`.
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store::suite::store_suite!(@each $make;
            accounts presence_records devices conversation_records paging idempotency_keys
            read_and_delivered_cursors unread_counts message_state member_removal claims
            media_records media_quota shared_secrets key_records key_backups user_keys
            push_records push_queue conversation_listing directory documents
            rewritten_events removed_events message_senders);
    };
    (@each $make:expr; $($behaviour:ident)*) => {
        $(
            #[tokio::test]
            async fn $behaviour() {
                let (_guard, store) = $make;
                // A backend that stops answering fails its test by name instead of holding
                // the whole run until CI's limit.
                let limit = std::time::Duration::from_secs(120);
                tokio::time::timeout(limit, $crate::store::suite::$behaviour(&store))
                    .await
                    .unwrap_or_else(|_| panic!("{} did not finish within {limit:?}", stringify!($behaviour)));
            }
        )*
    };
}
pub(crate) use store_suite;

pub(crate) async fn accounts(store: &dyn Store) {
    let a = store.create_user("alice", "hash-a", 1).await.unwrap();
    let b = store.create_user("bob", "hash-b", 2).await.unwrap();
    assert_ne!(a, b);
    assert!(matches!(
        store.create_user("alice", "x", 3).await,
        Err(StoreError::UsernameTaken)
    ));
    let rec = store.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!((rec.id, rec.password_hash.as_str()), (a, "hash-a"));
    assert!(store.user_by_name("nobody").await.unwrap().is_none());
}

pub(crate) async fn presence_records(store: &dyn Store) {
    let u = UserId(77);
    assert_eq!(store.presence_record(u).await.unwrap(), PresenceRecord::default());
    let rec = PresenceRecord {
        hide_last_seen: true,
        last_seen_ms: 1234,
    };
    store.put_presence_record(u, rec).await.unwrap();
    assert_eq!(store.presence_record(u).await.unwrap(), rec);
}

pub(crate) async fn devices(store: &dyn Store) {
    let u = store.create_user("dora", "h", 1).await.unwrap();
    let d1 = store.create_device(u, "dora", "phone", [1; 32], 5).await.unwrap();
    let d2 = store.create_device(u, "dora", "laptop", [2; 32], 6).await.unwrap();
    assert_eq!(store.device_by_token([1; 32]).await.unwrap().unwrap().id, d1);
    assert!(store.device_by_token([9; 32]).await.unwrap().is_none());
    assert!(store.revoke_device(u, d1).await.unwrap());
    assert!(!store.revoke_device(u, d1).await.unwrap(), "second revoke is a no-op");
    assert!(
        store.device_by_token([1; 32]).await.unwrap().is_none(),
        "revoked token is refused"
    );
    assert_eq!(store.device_by_token([2; 32]).await.unwrap().unwrap().id, d2);
    let list = store.list_devices(u).await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().any(|d| d.id == d1 && d.revoked));
}

/// A group of `a` and `b` with events 1 (created) ..= 11 (messages, even seqs by `a`).
async fn seeded(store: &dyn Store) -> (ConversationId, UserId, UserId, ConversationMeta) {
    let (a, b) = (UserId(100), UserId(200));
    let conv = store.allocate_conversation_id().await.unwrap();
    assert_ne!(conv, store.allocate_conversation_id().await.unwrap());
    assert!(store.load_conversation(conv).await.unwrap().is_none());
    let meta = ConversationMeta {
        id: conv,
        kind: pb::ConversationKind::Group,
        name: "g".into(),
        created_ms: 1,
        deleted: false,
        devices: Vec::new(),
        moderation: Default::default(),
        retention_secs: None,
        encrypted: false,
    };
    let created = Commit {
        event: pb::ConversationEvent {
            conversation_id: conv.0,
            seq: 1,
            ..Default::default()
        },
        meta: Some(meta.clone()),
        upsert_members: vec![member(a, "a", 1), member(b, "b", 1)],
        ..Default::default()
    };
    store.commit(&[created]).await.unwrap();
    let batch: Vec<Commit> = (2..=11)
        .map(|s| msg(conv, s, if s % 2 == 0 { a } else { b }, "hi"))
        .collect();
    store.commit(&batch).await.unwrap();
    (conv, a, b, meta)
}

pub(crate) async fn conversation_records(store: &dyn Store) {
    let (conv, a, _, meta) = seeded(store).await;
    let rec = store.load_conversation(conv).await.unwrap().unwrap();
    assert_eq!(rec.meta, meta);
    assert_eq!(rec.last_seq, Seq(11));
    assert_eq!(rec.members.len(), 2);
    assert_eq!(store.user_conversations(a).await.unwrap(), vec![conv]);
}

pub(crate) async fn conversation_listing(store: &dyn Store) {
    let none = ConversationId(0);
    assert!(store.conversations_after(none, 10).await.unwrap().is_empty());
    // seeded() also takes an id it never uses, and so does an account: both are skipped.
    let (c1, ..) = seeded(store).await;
    store.create_user("between", "h", 1).await.unwrap();
    let (c2, a, ..) = seeded(store).await;
    store.commit(&[msg(c2, 12, a, "one more")]).await.unwrap();
    assert_eq!(
        store.conversations_after(none, 10).await.unwrap(),
        vec![(c1, Seq(11)), (c2, Seq(12))]
    );
    assert_eq!(store.conversations_after(none, 1).await.unwrap(), vec![(c1, Seq(11))]);
    assert_eq!(store.conversations_after(c1, 10).await.unwrap(), vec![(c2, Seq(12))]);
    assert!(store.conversations_after(c2, 10).await.unwrap().is_empty());
}

pub(crate) async fn documents(store: &dyn Store) {
    use super::docs;
    assert_eq!(store.doc("t", "a").await.unwrap(), None);
    // First write only against "absent"; then only against the version read.
    assert!(store.put_doc("t", "a", 0, b"1".to_vec()).await.unwrap());
    assert!(!store.put_doc("t", "a", 0, b"x".to_vec()).await.unwrap());
    assert!(!store.put_doc("t", "a", 2, b"x".to_vec()).await.unwrap());
    assert!(store.put_doc("t", "a", 1, b"2".to_vec()).await.unwrap());
    let d = store.doc("t", "a").await.unwrap().unwrap();
    assert_eq!((d.version, d.value), (2, b"2".to_vec()));
    // Spaces are apart; listing is in key byte order, after the given key, bounded.
    for k in ["c", "b", "d/1", "d"] {
        assert!(store.put_doc("t", k, 0, k.as_bytes().to_vec()).await.unwrap());
    }
    assert!(store.put_doc("u", "a", 0, b"other".to_vec()).await.unwrap());
    let keys = |v: Vec<(String, Doc)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(store.docs("t", "", 10).await.unwrap()),
        ["a", "b", "c", "d", "d/1"]
    );
    assert_eq!(keys(store.docs("t", "b", 2).await.unwrap()), ["c", "d"]);
    assert_eq!(keys(store.docs("t", "d/1", 10).await.unwrap()), Vec::<String>::new());
    assert_eq!(store.docs("u", "", 10).await.unwrap()[0].1.value, b"other");
    // Deleting frees the key for a first write again.
    assert!(store.delete_doc("t", "b").await.unwrap());
    assert!(!store.delete_doc("t", "b").await.unwrap());
    assert!(store.put_doc("t", "b", 0, b"again".to_vec()).await.unwrap());
    // The typed layer: first claim wins; update retries on its own.
    assert_eq!(docs::claim(store, "claims", "k", 7u64).await.unwrap(), 7);
    assert_eq!(docs::claim(store, "claims", "k", 9u64).await.unwrap(), 7);
    let n = docs::update(store, "counter", "n", |v: Option<u64>| Some((v.unwrap_or(0) + 1, ())));
    n.await.unwrap();
    docs::update(store, "counter", "n", |v: Option<u64>| Some((v.unwrap_or(0) + 1, ())))
        .await
        .unwrap();
    let got = docs::get::<u64>(store, "counter", "n").await.unwrap().unwrap();
    assert_eq!((got.value, got.version), (2, 2));
}

pub(crate) async fn directory(store: &dyn Store) {
    let names = |v: Vec<UserRecord>| v.into_iter().map(|u| u.username).collect::<Vec<_>>();
    for n in ["anna", "ann", "annika", "bob", "an"] {
        store.create_user(n, "h", 1).await.unwrap();
    }
    assert_eq!(
        names(store.users_by_prefix("ann", 10).await.unwrap()),
        ["ann", "anna", "annika"]
    );
    assert_eq!(names(store.users_by_prefix("an", 2).await.unwrap()), ["an", "ann"]);
    assert!(store.users_by_prefix("z", 10).await.unwrap().is_empty());
    let anna = store.user_by_name("anna").await.unwrap().unwrap().id;
    store.set_unlisted(anna, true).await.unwrap();
    assert_eq!(
        names(store.users_by_prefix("an", 2).await.unwrap()),
        ["an", "ann"],
        "limit counts listed users only"
    );
    assert_eq!(
        names(store.users_by_prefix("ann", 10).await.unwrap()),
        ["ann", "annika"]
    );
    store.set_unlisted(anna, false).await.unwrap();
    assert_eq!(names(store.users_by_prefix("anna", 10).await.unwrap()), ["anna"]);

    let (c1, c2, c3) = (ConversationId(901), ConversationId(902), ConversationId(903));
    assert_eq!(store.claim_channel_name("rust", c1).await.unwrap(), c1);
    assert_eq!(store.claim_channel_name("rustaceans", c2).await.unwrap(), c2);
    assert_eq!(store.claim_channel_name("go", c3).await.unwrap(), c3);
    assert_eq!(store.claim_channel_name("rust", c3).await.unwrap(), c1, "taken");
    assert_eq!(
        store.channels_by_prefix("rust", 10).await.unwrap(),
        vec![("rust".to_string(), c1), ("rustaceans".to_string(), c2)]
    );
    assert_eq!(store.channels_by_prefix("", 2).await.unwrap().len(), 2);
    assert_eq!(
        store.channels_by_prefix("", 10).await.unwrap()[0],
        ("go".to_string(), c3)
    );
}

pub(crate) async fn paging(store: &dyn Store) {
    let (conv, ..) = seeded(store).await;
    // Both directions, ascending order, has_more.
    let seqs = |v: &[pb::ConversationEvent]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    let (p, more) = store.events(conv, Page::After(Seq(3)), 4).await.unwrap();
    assert_eq!((seqs(&p), more), (vec![4, 5, 6, 7], true));
    let (p, more) = store.events(conv, Page::After(Seq(9)), 4).await.unwrap();
    assert_eq!((seqs(&p), more), (vec![10, 11], false));
    let (p, more) = store.events(conv, Page::Before(Seq(0)), 3).await.unwrap();
    assert_eq!((seqs(&p), more), (vec![9, 10, 11], true));
    let (p, more) = store.events(conv, Page::Before(Seq(3)), 5).await.unwrap();
    assert_eq!((seqs(&p), more), (vec![1, 2], false));
}

pub(crate) async fn message_senders(store: &dyn Store) {
    // Seq 1 created the conversation (not a message); 2..=11 are messages, even seqs a's.
    let (conv, a, b, _) = seeded(store).await;
    let senders = |after: u64, upto: u64, limit: usize| store.message_senders(conv, Seq(after), Seq(upto), limit);
    assert_eq!(
        senders(0, 4, 256).await.unwrap(),
        Some(vec![a, b, a]),
        "messages only, in order"
    );
    assert_eq!(senders(3, 3, 256).await.unwrap(), Some(vec![]), "an empty range");
    assert_eq!(
        senders(7, 11, 4).await.unwrap(),
        Some(vec![a, b, a, b]),
        "exactly the limit"
    );
    assert_eq!(senders(1, 11, 4).await.unwrap(), None, "more events than the limit");
    assert_eq!(
        senders(9, 20, 4).await.unwrap(),
        Some(vec![a, b]),
        "past the last event"
    );
    let other = store.allocate_conversation_id().await.unwrap();
    assert_eq!(
        store.message_senders(other, Seq(0), Seq(5), 4).await.unwrap(),
        Some(vec![])
    );
}

pub(crate) async fn idempotency_keys(store: &dyn Store) {
    let (conv, a, b, _) = seeded(store).await;
    let sent = store.find_sent(conv, a, "c4").await.unwrap().unwrap();
    assert_eq!(sent.seq, Seq(4));
    assert!(
        store.find_sent(conv, b, "c4").await.unwrap().is_none(),
        "keys are per sender"
    );
}

pub(crate) async fn read_and_delivered_cursors(store: &dyn Store) {
    let (conv, a, b, _) = seeded(store).await;
    // Read cursors only move forward; a sender has read their own message.
    assert_eq!(store.read_cursor(a, conv).await.unwrap(), Seq(10));
    assert_eq!(store.advance_read_cursor(a, conv, Seq(5)).await.unwrap(), Seq(10));
    assert_eq!(store.advance_read_cursor(b, conv, Seq(11)).await.unwrap(), Seq(11));
    assert_eq!(store.delivered_cursor(b, conv).await.unwrap(), Seq(0));
    assert_eq!(store.advance_delivered_cursor(b, conv, Seq(9)).await.unwrap(), Seq(9));
    assert_eq!(
        store.advance_delivered_cursor(b, conv, Seq(4)).await.unwrap(),
        Seq(9),
        "never backward"
    );
    assert_eq!(store.delivered_cursor(b, conv).await.unwrap(), Seq(9));
}

pub(crate) async fn unread_counts(store: &dyn Store) {
    let (conv, a, ..) = seeded(store).await;
    // a has read to 10; 11 is b's: one unread. Last message is 11.
    let (unread, last) = store.unread_and_last_message(conv, a, Seq(10), 1000).await.unwrap();
    assert_eq!((unread, last.map(|e| e.seq)), (1, Some(11)));
    let (unread, _) = store.unread_and_last_message(conv, a, Seq(0), 3).await.unwrap();
    assert_eq!(unread, 3, "capped");
}

pub(crate) async fn message_state(store: &dyn Store) {
    let (conv, _, b, _) = seeded(store).await;
    // Only message events have one; it commits with its event.
    assert!(
        store.message(conv, Seq(1)).await.unwrap().is_none(),
        "seq 1 is not a message"
    );
    let (ev, state) = store.message(conv, Seq(4)).await.unwrap().unwrap();
    assert_eq!((ev.seq, state), (4, MessageState::default()));
    let mut reacted = MessageState::default();
    reacted.reactions.insert("👍".into(), vec![b]);
    let reaction = Commit {
        event: pb::ConversationEvent {
            conversation_id: conv.0,
            seq: 12,
            ..Default::default()
        },
        message_state: Some((Seq(4), reacted.clone())),
        ..Default::default()
    };
    store.commit(&[reaction]).await.unwrap();
    assert_eq!(store.message(conv, Seq(4)).await.unwrap().unwrap().1, reacted);
}

pub(crate) async fn member_removal(store: &dyn Store) {
    let (conv, _, b, _) = seeded(store).await;
    // Removing a member drops them from the index.
    let removed = Commit {
        event: pb::ConversationEvent {
            conversation_id: conv.0,
            seq: 12,
            ..Default::default()
        },
        remove_members: vec![b],
        ..Default::default()
    };
    store.commit(&[removed]).await.unwrap();
    assert!(store.user_conversations(b).await.unwrap().is_empty());
    assert_eq!(store.load_conversation(conv).await.unwrap().unwrap().members.len(), 1);
}

pub(crate) async fn claims(store: &dyn Store) {
    let (x, y) = (UserId(7), UserId(8));
    let c1 = store.allocate_conversation_id().await.unwrap();
    let c2 = store.allocate_conversation_id().await.unwrap();
    assert_eq!(store.claim_direct(x, y, false, c1).await.unwrap(), c1);
    assert_eq!(
        store.claim_direct(y, x, false, c2).await.unwrap(),
        c1,
        "one direct conversation per pair, either order"
    );
    // The pair's encrypted conversation is another one, also one per pair.
    let c3 = store.allocate_conversation_id().await.unwrap();
    let c4 = store.allocate_conversation_id().await.unwrap();
    assert_eq!(store.claim_direct(y, x, true, c3).await.unwrap(), c3);
    assert_eq!(store.claim_direct(x, y, true, c4).await.unwrap(), c3);
    assert_eq!(store.claim_direct(x, y, false, c4).await.unwrap(), c1);
    assert_eq!(store.claim_channel_name("general", c2).await.unwrap(), c2);
    assert_eq!(store.claim_channel_name("general", c1).await.unwrap(), c2);
    assert_eq!(store.channel_by_name("general").await.unwrap(), Some(c2));
    assert_eq!(store.channel_by_name("random").await.unwrap(), None);
}

fn media_rec(n: u8, owner: UserId, size: u64, expires_ms: u64) -> MediaRecord {
    MediaRecord {
        media_id: MediaId(format!("media-{n}")),
        upload_id: UploadId(format!("upload-{n}")),
        owner,
        conversation: ConversationId(1),
        size,
        declared_mime: "image/png".into(),
        name: "cat.png".into(),
        encrypted: false,
        expected_sha256: None,
        chunk_bytes: 1024,
        pieces: Vec::new(),
        state: MediaState::Uploading,
        ready: None,
        created_ms: 1,
        expires_ms,
        refs: Default::default(),
        version: 1,
    }
}

pub(crate) async fn media_records(store: &dyn Store) {
    let owner = UserId(3);
    let rec = media_rec(1, owner, 3000, 100);
    store.create_media(&rec, 1 << 20).await.unwrap();
    assert_eq!(store.media(&rec.media_id).await.unwrap().as_ref(), Some(&rec));
    assert_eq!(
        store.media_by_upload(&rec.upload_id).await.unwrap().as_ref(),
        Some(&rec)
    );
    assert!(store.media(&MediaId("nope".into())).await.unwrap().is_none());
    assert!(store.media_by_upload(&UploadId("nope".into())).await.unwrap().is_none());

    // Updates compare the version: a stale writer is refused and changes nothing.
    let mut next = rec.clone();
    next.pieces.push(1024);
    next.version = 2;
    store.update_media(&next).await.unwrap();
    let mut stale = rec.clone();
    stale.pieces.push(2048);
    stale.version = 2;
    assert!(matches!(store.update_media(&stale).await, Err(StoreError::Changed)));
    assert_eq!(store.media(&rec.media_id).await.unwrap().unwrap().committed(), 1024);

    // Unfinished uploads past their expiry are listed; ready ones never.
    let other = media_rec(2, owner, 10, 500);
    store.create_media(&other, 1 << 20).await.unwrap();
    assert_eq!(
        store.expired_uploads(200, 10).await.unwrap(),
        vec![rec.media_id.clone()]
    );
    let mut ready = next.clone();
    ready.state = MediaState::Ready;
    ready.version = 3;
    store.update_media(&ready).await.unwrap();
    assert!(store.expired_uploads(200, 10).await.unwrap().is_empty());
    assert_eq!(
        store.expired_uploads(1000, 10).await.unwrap(),
        vec![other.media_id.clone()]
    );

    // Deleting removes the record and its upload id, once.
    assert!(store.delete_media(&rec.media_id).await.unwrap());
    assert!(!store.delete_media(&rec.media_id).await.unwrap());
    assert!(store.media(&rec.media_id).await.unwrap().is_none());
    assert!(store.media_by_upload(&rec.upload_id).await.unwrap().is_none());
    assert!(matches!(store.update_media(&ready).await, Err(StoreError::Changed)));
}

pub(crate) async fn media_quota(store: &dyn Store) {
    let (a, b) = (UserId(5), UserId(6));
    store.create_media(&media_rec(1, a, 600, 9), 1000).await.unwrap();
    assert!(matches!(
        store.create_media(&media_rec(2, a, 401, 9), 1000).await,
        Err(StoreError::QuotaExceeded)
    ));
    assert!(
        store.media(&MediaId("media-2".into())).await.unwrap().is_none(),
        "nothing recorded"
    );
    assert_eq!(store.media_usage(a).await.unwrap(), 600);
    store.create_media(&media_rec(3, a, 400, 9), 1000).await.unwrap();
    store.create_media(&media_rec(4, b, 1000, 9), 1000).await.unwrap();
    assert_eq!(store.media_usage(a).await.unwrap(), 1000);
    store.delete_media(&MediaId("media-1".into())).await.unwrap();
    assert_eq!(
        store.media_usage(a).await.unwrap(),
        400,
        "deleting gives the bytes back"
    );
    assert_eq!(store.media_usage(b).await.unwrap(), 1000);
}

pub(crate) async fn shared_secrets(store: &dyn Store) {
    let a = store.shared_secret("media-url").await.unwrap();
    assert_eq!(
        store.shared_secret("media-url").await.unwrap(),
        a,
        "made once, then kept"
    );
    assert_ne!(store.shared_secret("other").await.unwrap(), a, "one per name");
    assert_ne!(a, [0u8; 32]);
}

pub(crate) async fn key_records(store: &dyn Store) {
    let (u, other) = (UserId(5), UserId(6));
    let rec = |device: u64, version: u64, otks: &[u8]| KeyState {
        user: u,
        device: DeviceId(device),
        identity: DeviceKeysRecord {
            ed25519: vec![device as u8; 32],
            curve25519: vec![device as u8 + 1; 32],
            signature: vec![9; 64],
        },
        one_time: otks
            .iter()
            .map(|b| OneTimeKeyRecord {
                public_key: vec![*b; 32],
                signature: vec![1; 64],
            })
            .collect(),
        fallback: Some((
            OneTimeKeyRecord {
                public_key: vec![200; 32],
                signature: vec![2; 64],
            },
            false,
        )),
        seen: otks.iter().map(|b| vec![*b; 32]).collect(),
        version,
    };
    assert!(store.key_state(u, DeviceId(1)).await.unwrap().is_none());
    assert!(store.user_key_states(u).await.unwrap().is_empty());
    // Creation is version 1, and only once.
    assert!(matches!(
        store.put_key_state(&rec(1, 2, &[1])).await,
        Err(StoreError::Changed)
    ));
    store.put_key_state(&rec(1, 1, &[1, 2])).await.unwrap();
    assert!(matches!(
        store.put_key_state(&rec(1, 1, &[3])).await,
        Err(StoreError::Changed)
    ));
    assert_eq!(
        store.key_state(u, DeviceId(1)).await.unwrap().unwrap(),
        rec(1, 1, &[1, 2])
    );
    // A replacement must follow the version it read.
    store.put_key_state(&rec(1, 2, &[2])).await.unwrap();
    assert!(matches!(
        store.put_key_state(&rec(1, 2, &[7])).await,
        Err(StoreError::Changed)
    ));
    assert!(matches!(
        store.put_key_state(&rec(1, 4, &[7])).await,
        Err(StoreError::Changed)
    ));
    assert_eq!(store.key_state(u, DeviceId(1)).await.unwrap().unwrap(), rec(1, 2, &[2]));
    store.put_key_state(&rec(2, 1, &[4])).await.unwrap();
    let mut theirs = rec(1, 1, &[]);
    theirs.user = other;
    store.put_key_state(&theirs).await.unwrap();
    let mut all = store.user_key_states(u).await.unwrap();
    all.sort_by_key(|k| k.device);
    assert_eq!(all, vec![rec(1, 2, &[2]), rec(2, 1, &[4])]);
    assert!(store.delete_key_state(u, DeviceId(1)).await.unwrap());
    assert!(!store.delete_key_state(u, DeviceId(1)).await.unwrap());
    assert!(store.key_state(u, DeviceId(1)).await.unwrap().is_none());
    assert_eq!(store.user_key_states(u).await.unwrap(), vec![rec(2, 1, &[4])]);
    assert_eq!(store.user_key_states(other).await.unwrap(), vec![theirs]);
    // A deleted record can be made again from version 1.
    store.put_key_state(&rec(1, 1, &[8])).await.unwrap();
}

pub(crate) async fn user_keys(store: &dyn Store) {
    let (u, other) = (UserId(5), UserId(6));
    let rec = |version: u64, devices: &[u64]| UserKeyRecord {
        user: u,
        ed25519: vec![1; 32],
        vouched_by: devices.iter().map(|d| (*d, vec![*d as u8; 64])).collect(),
        signed: devices.iter().map(|d| (*d, vec![*d as u8 + 1; 64])).collect(),
        version,
    };
    assert_eq!(store.user_key(u).await.unwrap(), None);
    assert!(matches!(
        store.put_user_key(&rec(2, &[1])).await,
        Err(StoreError::Changed)
    ));
    store.put_user_key(&rec(1, &[1])).await.unwrap();
    assert!(
        matches!(store.put_user_key(&rec(1, &[2])).await, Err(StoreError::Changed)),
        "two devices publishing at once: one wins, the other reads again"
    );
    store.put_user_key(&rec(2, &[1, 2])).await.unwrap();
    assert_eq!(store.user_key(u).await.unwrap(), Some(rec(2, &[1, 2])));
    assert_eq!(store.user_key(other).await.unwrap(), None);
}

pub(crate) async fn key_backups(store: &dyn Store) {
    let (u, other) = (UserId(5), UserId(6));
    let (c1, c2) = (ConversationId(10), ConversationId(11));
    let backup = |version: u64| KeyBackupRecord {
        user: u,
        version,
        public_key: vec![version as u8; 32],
    };
    let key = |version: u64, conv: ConversationId, sender: u64, id: &str| BackupKeyRecord {
        version,
        conversation: conv,
        sender_user: UserId(sender),
        sender_device: DeviceId(1),
        client_msg_id: id.into(),
        encapsulated_key: vec![version as u8; 32],
        ciphertext: vec![7; 48],
    };
    assert_eq!(store.key_backup(u).await.unwrap(), None);
    assert!(matches!(
        store.put_key_backup(&backup(2)).await,
        Err(StoreError::Changed)
    ));
    store.put_key_backup(&backup(1)).await.unwrap();
    assert!(
        matches!(store.put_key_backup(&backup(1)).await, Err(StoreError::Changed)),
        "two devices starting a backup at once: one wins"
    );
    assert_eq!(store.key_backup(u).await.unwrap(), Some(backup(1)));
    assert_eq!(store.key_backup(other).await.unwrap(), None);

    // Keys of two conversations, out of order; a page reads one conversation in id order.
    let keys = vec![
        key(1, c1, 9, "b"),
        key(1, c2, 1, "x"),
        key(1, c1, 2, "z"),
        key(1, c1, 9, "a"),
    ];
    store.put_backup_keys(u, &keys).await.unwrap();
    let ids = |v: Vec<BackupKeyRecord>| -> Vec<(u64, String)> {
        v.into_iter().map(|k| (k.sender_user.0, k.client_msg_id)).collect()
    };
    let all = store.backup_keys(u, c1, 1, &[], 10).await.unwrap();
    assert_eq!(
        ids(all.clone()),
        vec![(2, "z".into()), (9, "a".into()), (9, "b".into())]
    );
    let first = store.backup_keys(u, c1, 1, &[], 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.backup_keys(u, c1, 1, &first[1].id(), 10).await.unwrap();
    assert_eq!(ids(rest), vec![(9, "b".into())]);
    assert_eq!(
        ids(store.backup_keys(u, c2, 1, &[], 10).await.unwrap()),
        vec![(1, "x".into())]
    );
    assert!(store.backup_keys(other, c1, 1, &[], 10).await.unwrap().is_empty());

    // A new version: keys of the old one are not read, and re-sealed ones replace them.
    store.put_key_backup(&backup(2)).await.unwrap();
    assert!(store.backup_keys(u, c1, 2, &[], 10).await.unwrap().is_empty());
    store.put_backup_keys(u, &[key(2, c1, 9, "a")]).await.unwrap();
    assert_eq!(
        store.backup_keys(u, c1, 2, &[], 10).await.unwrap(),
        vec![key(2, c1, 9, "a")]
    );
    assert_eq!(
        ids(store.backup_keys(u, c1, 1, &[], 10).await.unwrap()),
        vec![(2, "z".into()), (9, "b".into())]
    );
}

pub(crate) async fn push_records(store: &dyn Store) {
    let u = UserId(7);
    assert_eq!(store.push_record(u).await.unwrap(), None);
    let reg = |id: &str, device: u64| PushRegistrationRecord {
        id: id.into(),
        device: DeviceId(device),
        provider: pb::PushProvider::WebPush as i32,
        endpoint: format!("https://push.example/{id}"),
        p256dh: vec![4; 65],
        auth: vec![1; 16],
        apns_topic: String::new(),
        apns_sandbox: false,
        created_ms: 1,
    };
    let v1 = PushRecord {
        user: u,
        registrations: vec![reg("a", 1)],
        rules: Default::default(),
        version: 1,
    };
    store.put_push_record(&v1).await.unwrap();
    assert_eq!(store.push_record(u).await.unwrap(), Some(v1.clone()));
    let v2 = PushRecord {
        registrations: vec![reg("a", 1), reg("b", 2)],
        rules: super::push::NotifyRules {
            level: pb::NotifyLevel::Mentions as i32,
            time_zone: "Europe/Berlin".into(),
            dnd_start_minute: 1320,
            dnd_end_minute: 420,
            conversations: [(
                9,
                super::push::ConversationRule {
                    level: 3,
                    mute_until_ms: 77,
                },
            )]
            .into(),
            ..Default::default()
        },
        version: 2,
        ..v1.clone()
    };
    assert!(
        matches!(store.put_push_record(&v1).await, Err(StoreError::Changed)),
        "same version again"
    );
    store.put_push_record(&v2).await.unwrap();
    assert!(
        matches!(store.put_push_record(&v2).await, Err(StoreError::Changed)),
        "a stale writer"
    );
    assert_eq!(store.push_record(u).await.unwrap(), Some(v2));
    assert_eq!(store.push_record(UserId(8)).await.unwrap(), None, "one record per user");
}

pub(crate) async fn push_queue(store: &dyn Store) {
    let job = |reg: &str, conv: u64, seq: u64, due: u64| PushJob {
        id: PushJob::id_for(reg, ConversationId(conv)),
        user: UserId(7),
        device: DeviceId(1),
        registration: reg.into(),
        conversation: ConversationId(conv),
        seq,
        due_ms: due,
        attempts: 0,
        withdraw: false,
        unacked: false,
    };
    let ids = |v: Vec<PushJob>| {
        v.into_iter()
            .map(|j| (j.id, j.seq, j.due_ms, j.attempts))
            .collect::<Vec<_>>()
    };
    store.enqueue_push(&job("r", 1, 5, 100)).await.unwrap();
    store.enqueue_push(&job("r", 2, 9, 50)).await.unwrap();
    // A burst: the queued job takes the newer seq and keeps its due time, also when the
    // burst comes in one batch.
    store
        .enqueue_pushes(&[job("r", 1, 6, 300), job("r", 1, 4, 300)])
        .await
        .unwrap();
    assert_eq!(ids(store.due_pushes(49, 10).await.unwrap()), vec![]);
    assert_eq!(
        ids(store.due_pushes(100, 10).await.unwrap()),
        vec![("r/2".into(), 9, 50, 0), ("r/1".into(), 6, 100, 0)],
        "earliest first, the burst's newest seq"
    );
    assert_eq!(store.due_pushes(100, 1).await.unwrap().len(), 1, "limited");

    // A failure: due later, attempts counted.
    store.retry_push("r/2", 1_000, 1).await.unwrap();
    assert_eq!(
        ids(store.due_pushes(999, 10).await.unwrap()),
        vec![("r/1".into(), 6, 100, 0)]
    );
    assert_eq!(
        ids(store.due_pushes(1_000, 10).await.unwrap())[1],
        ("r/2".into(), 9, 1_000, 1)
    );

    // Sent up to 6, but 7 came meanwhile: due again (attempts reset); then sent for good.
    store.enqueue_push(&job("r", 1, 7, 0)).await.unwrap();
    store.finish_push("r/1", 6, 2_000).await.unwrap();
    assert_eq!(
        ids(store.due_pushes(1_999, 10).await.unwrap()),
        vec![("r/2".into(), 9, 1_000, 1)]
    );
    assert_eq!(
        ids(store.due_pushes(2_000, 10).await.unwrap())[1],
        ("r/1".into(), 7, 2_000, 0)
    );
    store.finish_push("r/1", 7, 3_000).await.unwrap();
    store.drop_push("r/2").await.unwrap();
    assert_eq!(ids(store.due_pushes(u64::MAX / 2, 10).await.unwrap()), vec![]);
    // Gone jobs: finishing or retrying them does nothing, a new one starts afresh.
    store.finish_push("r/1", 7, 0).await.unwrap();
    store.retry_push("r/1", 0, 3).await.unwrap();
    assert_eq!(ids(store.due_pushes(u64::MAX / 2, 10).await.unwrap()), vec![]);
    store.enqueue_push(&job("r", 1, 8, 10)).await.unwrap();
    assert_eq!(
        ids(store.due_pushes(10, 10).await.unwrap()),
        vec![("r/1".into(), 8, 10, 0)]
    );

    // Markers are never due, read back whole, and take the newer seq; withdrawals keep
    // their kind.
    let shown = PushJob {
        id: PushJob::shown_id("r", ConversationId(1)),
        due_ms: PushJob::NEVER,
        ..job("r", 1, 8, 0)
    };
    store.enqueue_push(&shown).await.unwrap();
    store
        .enqueue_push(&PushJob {
            seq: 9,
            ..shown.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_push(&shown.id).await.unwrap(),
        Some(PushJob {
            seq: 9,
            ..shown.clone()
        })
    );
    assert_eq!(
        ids(store
            .claim_pushes(1_000_000_000_000_000, 1_000_000_000_000_001, 10)
            .await
            .unwrap()),
        vec![("r/1".into(), 8, 1_000_000_000_000_001, 0)],
        "the marker is never due"
    );
    let w = PushJob {
        id: PushJob::withdraw_id("r", ConversationId(1)),
        withdraw: true,
        ..job("r", 1, 9, 5)
    };
    store.enqueue_push(&w).await.unwrap();
    assert_eq!(store.get_push(&w.id).await.unwrap(), Some(w.clone()));
    store.drop_push(&shown.id).await.unwrap();
    assert_eq!(store.get_push(&shown.id).await.unwrap(), None);
    assert_eq!(store.get_push("nothing/here").await.unwrap(), None);

    // A batch that queues a new job twice: one job, the first due time, the newest seq.
    store
        .enqueue_pushes(&[job("q", 3, 2, 400), job("q", 3, 3, 500), job("q", 4, 1, 450)])
        .await
        .unwrap();
    assert_eq!(
        store.get_push("q/3").await.unwrap().map(|j| (j.seq, j.due_ms)),
        Some((3, 400))
    );
    assert_eq!(store.get_push("q/4").await.unwrap().map(|j| j.seq), Some(1));
    store.enqueue_pushes(&[]).await.unwrap();
}

/// A deleted account's events are rewritten in place (PROTOCOL.md §5.16): same seqs, the
/// rest of the log untouched, no event made where there was none, and the rewrite is what
/// every later read sees — also after the store is told to forget the user.
pub(crate) async fn rewritten_events(store: &dyn Store) {
    let (conv, a, b, _) = seeded(store).await;
    let (before, _) = store.events(conv, Page::After(Seq(0)), 100).await.unwrap();
    let mut rewrites: Vec<pb::ConversationEvent> = before
        .iter()
        .filter(|e| e.sender_user_id == a.0 && matches!(e.body, Some(Body::Message(_))))
        .map(|e| pb::ConversationEvent {
            sender_user_id: 0,
            sender_username: String::new(),
            body: Some(Body::Erased(pb::Erased { message: true })),
            ..e.clone()
        })
        .collect();
    assert!(!rewrites.is_empty());
    let hole = pb::ConversationEvent {
        conversation_id: conv.0,
        seq: 999,
        body: Some(Body::Erased(pb::Erased { message: true })),
        ..Default::default()
    };
    rewrites.push(hole);
    store.rewrite_events(conv, &rewrites).await.unwrap();
    store.forget_user(a).await.unwrap();
    let (after, _) = store.events(conv, Page::After(Seq(0)), 100).await.unwrap();
    assert_eq!(after.len(), before.len(), "no event made where there was none");
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.seq, new.seq);
        if old.sender_user_id == a.0 && matches!(old.body, Some(Body::Message(_))) {
            assert_eq!(new.body, Some(Body::Erased(pb::Erased { message: true })));
            assert_eq!((new.sender_user_id, new.server_time_ms), (0, old.server_time_ms));
        } else {
            assert_eq!(old, new, "others' events untouched");
        }
    }
    assert!(after
        .iter()
        .any(|e| e.sender_user_id == b.0 && matches!(e.body, Some(Body::Message(_)))));
    let first_erased = after.iter().find(|e| matches!(e.body, Some(Body::Erased(_)))).unwrap();
    assert!(
        store.message(conv, Seq(first_erased.seq)).await.unwrap().is_none(),
        "an erased message is no message to edit or react to"
    );
}

/// Retention (PROTOCOL.md §5.17): a prefix of the log goes, the floor says how far, and the
/// newest seq stays.
pub(crate) async fn removed_events(store: &dyn Store) {
    let (conv, a, _b, _) = seeded(store).await;
    assert_eq!(store.removed_through(conv).await.unwrap(), Seq(0));
    store.remove_events(conv, Seq(4)).await.unwrap();
    assert_eq!(store.removed_through(conv).await.unwrap(), Seq(4));
    let seqs = |evs: &[pb::ConversationEvent]| evs.iter().map(|e| e.seq).collect::<Vec<_>>();
    let (evs, more) = store.events(conv, Page::After(Seq(0)), 100).await.unwrap();
    assert_eq!((seqs(&evs), more), ((5..=11).collect(), false));
    let (evs, more) = store.events(conv, Page::After(Seq(2)), 3).await.unwrap();
    assert_eq!((seqs(&evs), more), (vec![5, 6, 7], true));
    let (evs, more) = store.events(conv, Page::Before(Seq(8)), 2).await.unwrap();
    assert_eq!((seqs(&evs), more), (vec![6, 7], true));
    let (evs, more) = store.events(conv, Page::Before(Seq(7)), 10).await.unwrap();
    assert_eq!((seqs(&evs), more), (vec![5, 6], false), "a page ends at the floor");
    assert!(store.message(conv, Seq(2)).await.unwrap().is_none());
    assert!(store.message(conv, Seq(6)).await.unwrap().is_some());
    store.remove_events(conv, Seq(2)).await.unwrap();
    assert_eq!(
        store.removed_through(conv).await.unwrap(),
        Seq(4),
        "the floor never moves back"
    );
    // Everything gone: the newest seq stays, and the log goes on after it.
    store.remove_events(conv, Seq(11)).await.unwrap();
    assert_eq!(store.load_conversation(conv).await.unwrap().unwrap().last_seq, Seq(11));
    let listed = store.conversations_after(ConversationId(0), 10).await.unwrap();
    assert!(listed.contains(&(conv, Seq(11))), "{listed:?}");
    assert_eq!(
        store.events(conv, Page::Before(Seq(0)), 10).await.unwrap(),
        (vec![], false)
    );
    assert_eq!(
        store.unread_and_last_message(conv, a, Seq(0), 10).await.unwrap(),
        (0, None)
    );
    store.commit(&[msg(conv, 12, a, "after")]).await.unwrap();
    let (evs, _) = store.events(conv, Page::After(Seq(0)), 10).await.unwrap();
    assert_eq!(seqs(&evs), vec![12]);
    let (_, last) = store.unread_and_last_message(conv, a, Seq(0), 10).await.unwrap();
    assert_eq!(last.map(|e| e.seq), Some(12));
}
