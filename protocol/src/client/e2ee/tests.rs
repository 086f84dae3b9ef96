//! Devices sealing and opening real Olm (vodozemac) envelopes, with a stand-in for the
//! server's key stock.
use std::collections::HashMap;

use super::share::ShareError;
use super::*;

const CONV: ConversationId = ConversationId(9);

/// A device's identity, its unclaimed one-time keys and its fallback key.
type Published = (pb::DeviceKeys, Vec<pb::OneTimeKey>, Option<pb::OneTimeKey>);

/// The server's part in these tests: each device's published one-time keys and fallback.
#[derive(Default)]
struct Stock {
    keys: HashMap<(u64, u64), Published>,
}

impl Stock {
    fn publish(&mut self, c: &mut Crypto) {
        let counts = self
            .keys
            .get(&(c.user().0, c.device().0))
            .map(|(_, otks, f)| pb::KeyCounts {
                one_time_keys: otks.len() as u32,
                fallback_unused: f.is_some(),
                device_id: c.device().0,
            });
        let Some(up) = c.keys_to_upload(counts.as_ref()) else {
            return;
        };
        let e = self
            .keys
            .entry((c.user().0, c.device().0))
            .or_insert_with(|| (up.device_keys.clone().expect("identity first"), vec![], None));
        e.1.extend(up.one_time_keys);
        if up.fallback_key.is_some() {
            e.2 = up.fallback_key;
        }
        c.uploaded();
    }

    fn identity(&self, c: &Crypto) -> pb::DeviceKeys {
        self.keys[&(c.user().0, c.device().0)].0.clone()
    }

    fn claim(&mut self, devices: &[pb::DeviceKeys]) -> Vec<pb::ClaimedKey> {
        devices
            .iter()
            .map(|d| {
                let (keys, otks, fallback) = self.keys.get_mut(&(d.user_id, d.device_id)).unwrap();
                let (key, fb) = if otks.is_empty() {
                    (fallback.clone().unwrap(), true)
                } else {
                    (otks.remove(0), false)
                };
                pb::ClaimedKey {
                    device: Some(keys.clone()),
                    one_time_key: Some(key),
                    fallback: fb,
                }
            })
            .collect()
    }
}

fn text(t: &str) -> pb::SealedContent {
    pb::SealedContent {
        body: Some(pb::MessageBody {
            kind: pb::MessageKind::Text as i32,
            text: t.into(),
            ..Default::default()
        }),
        change: None,
    }
}

fn event(from: &Crypto, id: &str, env: pb::Envelope) -> pb::ConversationEvent {
    pb::ConversationEvent {
        conversation_id: CONV.0,
        seq: 1,
        sender_user_id: from.user().0,
        sender_device_id: from.device().0,
        body: Some(pb::conversation_event::Body::Message(pb::MessageEvent {
            client_msg_id: id.into(),
            body: Some(pb::MessageBody {
                kind: pb::MessageKind::Text as i32,
                encrypted: Some(env),
                ..Default::default()
            }),
        })),
        ..Default::default()
    }
}

fn random(n: u8) -> [u8; SEAL_RANDOM_BYTES] {
    [n; SEAL_RANDOM_BYTES]
}

/// Seal from `from` to `to`, claiming keys when asked.
fn send(stock: &mut Stock, from: &mut Crypto, to: &[&Crypto], id: &str, t: &str) -> pb::ConversationEvent {
    let devices: Vec<pb::DeviceKeys> = to.iter().map(|c| stock.identity(c)).collect();
    let env = match from.seal(CONV, id, &text(t), &devices, &[], random(id.len() as u8)) {
        Ok(env) => env,
        Err(SealError::NeedKeys(need)) => {
            let claimed = stock.claim(&need);
            from.seal(CONV, id, &text(t), &devices, &claimed, random(1)).unwrap()
        }
        Err(e) => panic!("{e}"),
    };
    event(from, id, env)
}

fn body(c: pb::SealedContent) -> String {
    c.body.unwrap().text
}

fn setup() -> (Stock, Crypto, Crypto, Crypto) {
    let mut stock = Stock::default();
    let (mut a1, mut a2, mut b1) = (
        Crypto::new(UserId(1), DeviceId(11)),
        Crypto::new(UserId(1), DeviceId(12)),
        Crypto::new(UserId(2), DeviceId(21)),
    );
    for c in [&mut a1, &mut a2, &mut b1] {
        stock.publish(c);
    }
    (stock, a1, a2, b1)
}

#[test]
fn every_other_device_opens_a_message_and_replies_reuse_the_session() {
    let (mut stock, mut a1, mut a2, mut b1) = setup();
    let ev = send(&mut stock, &mut a1, &[&a2, &b1], "m1", "hello bob");
    let a1_keys = stock.identity(&a1);
    assert_eq!(body(b1.open(&ev, Some(&a1_keys)).unwrap()), "hello bob");
    assert_eq!(body(a2.open(&ev, Some(&a1_keys)).unwrap()), "hello bob");
    // The sender reads its own message back from the key it kept.
    assert_eq!(body(a1.open(&ev, Some(&a1_keys)).unwrap()), "hello bob");
    // And again (history), without Olm.
    assert_eq!(body(b1.open(&ev, Some(&a1_keys)).unwrap()), "hello bob");

    // b1 answers over the session a1 started — a normal Olm message to a1, no claim —
    // and needs a key only for a2, which never wrote to it.
    let devices = vec![stock.identity(&a1), stock.identity(&a2)];
    let need = match b1.seal(CONV, "m2", &text("hi alice"), &devices, &[], random(2)) {
        Err(SealError::NeedKeys(need)) => need,
        other => panic!("{other:?}"),
    };
    assert_eq!(need, vec![stock.identity(&a2)]);
    let claimed = stock.claim(&need);
    let env = b1
        .seal(CONV, "m2", &text("hi alice"), &devices, &claimed, random(2))
        .unwrap();
    let to_a1 = env.keys.iter().find(|k| k.device_id == 11).unwrap();
    assert_eq!(to_a1.olm_type, 1);
    let ev2 = event(&b1, "m2", env);
    let b1_keys = stock.identity(&b1);
    assert_eq!(body(a1.open(&ev2, Some(&b1_keys)).unwrap()), "hi alice");
    assert_eq!(body(a2.open(&ev2, Some(&b1_keys)).unwrap()), "hi alice");

    // Many more, both ways, in order.
    for i in 0..20 {
        let ev = send(&mut stock, &mut a1, &[&a2, &b1], &format!("x{i}"), &format!("a{i}"));
        assert_eq!(body(b1.open(&ev, Some(&a1_keys)).unwrap()), format!("a{i}"));
        let ev = send(&mut stock, &mut b1, &[&a1, &a2], &format!("y{i}"), &format!("b{i}"));
        assert_eq!(body(a1.open(&ev, Some(&b1_keys)).unwrap()), format!("b{i}"));
        assert_eq!(body(a2.open(&ev, Some(&b1_keys)).unwrap()), format!("b{i}"));
    }
}

#[test]
fn what_does_not_open_says_why() {
    let (mut stock, mut a1, a2, mut b1) = setup();
    let a1_keys = stock.identity(&a1);
    let ev = send(&mut stock, &mut a1, &[&b1], "m1", "only bob");
    let mut a2 = a2;
    assert_eq!(a2.open(&ev, Some(&a1_keys)), Err(Undecryptable::NotForThisDevice));
    assert_eq!(b1.open(&ev, None), Err(Undecryptable::UnknownSenderDevice));
    assert_eq!(
        b1.open(&ev, Some(&stock.identity(&a2))),
        Err(Undecryptable::UnknownSenderDevice),
        "another device's keys"
    );

    let mut tampered = ev.clone();
    if let Some(pb::conversation_event::Body::Message(m)) = &mut tampered.body {
        m.body.as_mut().unwrap().encrypted.as_mut().unwrap().ciphertext[5] ^= 1;
    }
    assert!(matches!(
        b1.open(&tampered, Some(&a1_keys)),
        Err(Undecryptable::Content(_))
    ));

    // The same wrapped key moved to another message id: Olm opens, the grant does not match.
    let ev2 = send(&mut stock, &mut a1, &[&b1], "m2", "second");
    let mut moved = ev2.clone();
    if let Some(pb::conversation_event::Body::Message(m)) = &mut moved.body {
        m.client_msg_id = "m3".into();
    }
    assert_eq!(b1.open(&moved, Some(&a1_keys)), Err(Undecryptable::Binding));
    // The Olm message was used by that attempt: a replay of it does not open…
    let mut replay = ev2.clone();
    if let Some(pb::conversation_event::Body::Message(m)) = &mut replay.body {
        m.client_msg_id = "m4".into();
    }
    assert!(matches!(
        b1.open(&replay, Some(&a1_keys)),
        Err(Undecryptable::Olm(_)) | Err(Undecryptable::Binding)
    ));
    // …and garbage is malformed.
    let mut junk = ev.clone();
    if let Some(pb::conversation_event::Body::Message(m)) = &mut junk.body {
        let env = m.body.as_mut().unwrap().encrypted.as_mut().unwrap();
        env.keys[0].olm_body = vec![1, 2, 3];
    }
    let mut fresh_b = Crypto::new(UserId(2), DeviceId(21));
    stock.publish(&mut fresh_b);
    assert!(matches!(
        fresh_b.open(&junk, Some(&a1_keys)),
        Err(Undecryptable::Malformed(_)) | Err(Undecryptable::NotForThisDevice)
    ));
}

#[test]
fn keys_that_do_not_verify_stop_the_send() {
    let (mut stock, mut a1, _a2, b1) = setup();
    let mut forged = stock.identity(&b1);
    forged.curve25519 = a1.identity().curve25519;
    assert!(matches!(
        a1.seal(CONV, "m", &text("x"), &[forged], &[], random(1)),
        Err(SealError::BadDevice { .. })
    ));
    let devices = vec![stock.identity(&b1)];
    let mut claimed = stock.claim(&devices);
    claimed[0].one_time_key.as_mut().unwrap().public_key = vec![7; 32];
    assert!(matches!(
        a1.seal(CONV, "m", &text("x"), &devices, &claimed, random(1)),
        Err(SealError::BadDevice { .. })
    ));
    assert_eq!(
        a1.seal(CONV, "m", &text("x"), &[a1.identity()], &[], random(1)),
        Err(SealError::NoRecipients)
    );
}

#[test]
fn the_fallback_key_keeps_an_exhausted_device_reachable() {
    let (mut stock, _a1, _a2, mut b1) = setup();
    let b1_id = stock.identity(&b1);
    stock.keys.get_mut(&(2, 21)).unwrap().1.clear(); // every one-time key claimed
    let b1_keys_before = stock.keys[&(2, 21)].2.clone();
    let mut senders: Vec<Crypto> = (0..3).map(|i| Crypto::new(UserId(5 + i), DeviceId(50 + i))).collect();
    for (i, s) in senders.iter_mut().enumerate() {
        stock.publish(s);
        let claimed = stock.claim(std::slice::from_ref(&b1_id));
        assert!(claimed[0].fallback);
        let env = s
            .seal(
                CONV,
                "f",
                &text(&format!("via fallback {i}")),
                std::slice::from_ref(&b1_id),
                &claimed,
                random(3),
            )
            .unwrap();
        let ev = event(s, "f", env);
        assert_eq!(
            body(b1.open(&ev, Some(&stock.identity(s))).unwrap()),
            format!("via fallback {i}")
        );
    }
    // Back online, the device refills and replaces its used fallback key.
    let counts = pb::KeyCounts {
        one_time_keys: 0,
        fallback_unused: false,
        device_id: 21,
    };
    let up = b1.keys_to_upload(Some(&counts)).unwrap();
    assert_eq!(up.one_time_keys.len(), KEEP_ONE_TIME_KEYS);
    assert!(up.device_keys.is_none());
    assert_ne!(up.fallback_key, b1_keys_before);
}

#[test]
fn keys_are_published_as_the_stock_needs() {
    let mut c = Crypto::new(UserId(1), DeviceId(2));
    let first = c.keys_to_upload(None).unwrap();
    assert_eq!(first.device_keys, Some(c.identity()));
    assert_eq!(first.one_time_keys.len(), KEEP_ONE_TIME_KEYS);
    assert!(first.fallback_key.is_some());
    // Not acknowledged yet: the same keys are offered again, not new ones.
    assert_eq!(c.keys_to_upload(None).unwrap(), first);
    c.uploaded();
    let full = pb::KeyCounts {
        one_time_keys: 50,
        fallback_unused: true,
        device_id: 2,
    };
    assert_eq!(c.keys_to_upload(Some(&full)), None);
    let low = pb::KeyCounts {
        one_time_keys: 20,
        ..full
    };
    let up = c.keys_to_upload(Some(&low)).unwrap();
    assert_eq!((up.one_time_keys.len(), up.fallback_key.is_none()), (30, true));
    c.uploaded();
    let used = pb::KeyCounts {
        fallback_unused: false,
        ..full
    };
    let up = c.keys_to_upload(Some(&used)).unwrap();
    assert_eq!((up.one_time_keys.len(), up.fallback_key.is_some()), (0, true));
}

#[test]
fn saved_state_reopens_only_with_its_key_and_carries_on() {
    let (mut stock, mut a1, a2, mut b1) = setup();
    let a1_keys = stock.identity(&a1);
    let ev = send(&mut stock, &mut a1, &[&a2, &b1], "m1", "before the restart");
    let saved = b1.save(&[7; 32], [1; 24]);
    assert_eq!(Crypto::load(&[8; 32], &saved).unwrap_err(), StateError::WrongKey);
    let mut altered = saved.clone();
    altered[40] ^= 1;
    assert_eq!(Crypto::load(&[7; 32], &altered).unwrap_err(), StateError::WrongKey);
    // Killed after receiving, before acknowledging: the old state opens the event.
    let mut b1 = Crypto::load(&[7; 32], &saved).unwrap();
    assert_eq!(body(b1.open(&ev, Some(&a1_keys)).unwrap()), "before the restart");
    let saved = b1.save(&[7; 32], [2; 24]);
    let mut b1 = Crypto::load(&[7; 32], &saved).unwrap();
    assert_eq!(body(b1.open(&ev, Some(&a1_keys)).unwrap()), "before the restart");
    let ev2 = send(&mut stock, &mut a1, &[&a2, &b1], "m2", "after");
    assert_eq!(body(b1.open(&ev2, Some(&a1_keys)).unwrap()), "after");
    assert!(!format!("{b1:?}").contains("after"));
}

#[test]
fn a_new_device_opens_history_from_the_backup_with_the_recovery_key() {
    let (mut stock, mut a1, a2, mut b1) = setup();
    let recovery = backup::RecoveryKey::from_random([7; 32]);
    let info = pb::KeyBackup {
        version: 1,
        public_key: recovery.public_key().to_vec(),
    };
    let first = send(&mut stock, &mut a1, &[&a2, &b1], "m1", "before the backup");
    let a1_keys = stock.identity(&a1);
    b1.open(&first, Some(&a1_keys)).unwrap();
    // Setting up the backup queues what b1 already kept; what it opens later joins.
    b1.set_backup(&info);
    assert_eq!((b1.backup_version(), b1.backup_pending()), (1, 1));
    let second = send(&mut stock, &mut a1, &[&a2, &b1], "m2", "after it");
    b1.open(&second, Some(&a1_keys)).unwrap();
    let batch = b1.backup_batch(100).unwrap();
    assert_eq!(batch.keys.len(), 2);
    b1.backed_up(&batch);
    assert_eq!(b1.backup_pending(), 0);
    assert!(b1.backup_batch(100).is_none());

    // A new device of bob's, never sent to: opens both from the backup alone.
    let mut b2 = Crypto::new(UserId(2), DeviceId(22));
    assert_eq!(
        b2.open(&first, Some(&a1_keys)).unwrap_err(),
        Undecryptable::NotForThisDevice
    );
    let wrong = backup::RecoveryKey::from_random([8; 32]);
    assert_eq!(backup::check(&wrong, &info), Err(backup::BackupError::WrongKey));
    assert_eq!(b2.restore(&wrong, &batch.keys), Err(backup::BackupError::Corrupt));
    assert_eq!(b2.restore(&recovery, &batch.keys), Ok(2));
    assert_eq!(body(b2.open(&first, None).unwrap()), "before the backup");
    assert_eq!(body(b2.open(&second, None).unwrap()), "after it");
    // The restored keys survive a save.
    let saved = b2.save(&[3; 32], [4; 24]);
    let b2 = Crypto::load(&[3; 32], &saved).unwrap();
    assert!(b2.has_message_key(&first) && b2.has_message_key(&second));
}

#[test]
fn the_state_log_appends_only_what_changed_and_survives_a_torn_record() {
    let (mut stock, mut a1, a2, mut b1) = setup();
    let a1_keys = stock.identity(&a1);
    let key = [7; 32];
    let mut log = b1.save(&key, [1; 24]);
    let mut sizes = Vec::new();
    let mut events = Vec::new();
    for i in 0..20 {
        let ev = send(
            &mut stock,
            &mut a1,
            &[&a2, &b1],
            &format!("m{i}"),
            &format!("message {i}"),
        );
        b1.open(&ev, Some(&a1_keys)).unwrap();
        let record = b1.save_record(&key, [i as u8 + 2; 24]);
        sizes.push(record.len());
        log.extend(record);
        events.push(ev);
    }
    // A record carries the keys kept since the one before, not every key so far.
    let spread = sizes.iter().max().unwrap() - sizes.iter().min().unwrap();
    assert!(spread < 200, "record sizes do not grow with history: {sizes:?}");
    let reopened = Crypto::load(&key, &log).unwrap();
    assert!(
        events.iter().all(|ev| reopened.has_message_key(ev)),
        "every record's keys"
    );
    // The process died while appending one more: the torn tail is left out.
    let ev = send(&mut stock, &mut a1, &[&a2, &b1], "m20", "torn");
    b1.open(&ev, Some(&a1_keys)).unwrap();
    let record = b1.save_record(&key, [99; 24]);
    let mut torn = log.clone();
    torn.extend(&record[..record.len() / 2]);
    let mut back = Crypto::load(&key, &torn).unwrap();
    assert!(!back.has_message_key(&ev));
    assert_eq!(
        body(back.open(&ev, Some(&a1_keys)).unwrap()),
        "torn",
        "opened again from the old state"
    );
    // A damaged record (whole, but altered) is not silently skipped.
    let mut damaged = log.clone();
    let at = damaged.len() - sizes[19] + 40;
    damaged[at] ^= 1;
    assert!(matches!(Crypto::load(&key, &damaged), Err(StateError::Malformed(_))));
    assert_eq!(Crypto::load(&[8; 32], &log).unwrap_err(), StateError::WrongKey);
}

fn party(stock: &Stock, c: &Crypto) -> verify::Party {
    let d = stock.identity(c);
    verify::Party {
        user: UserId(d.user_id),
        device: DeviceId(d.device_id),
        ed25519: d.ed25519,
    }
}

#[test]
fn verified_devices_of_one_user_share_their_keys_and_nobody_else_can() {
    let (mut stock, mut a1, a2, mut b1) = setup();
    let a1_keys = stock.identity(&a1);
    let events: Vec<pb::ConversationEvent> = (0..100)
        .map(|i| {
            let ev = send(&mut stock, &mut a1, &[&a2, &b1], &format!("m{i:03}"), "history");
            b1.open(&ev, Some(&a1_keys)).unwrap();
            ev
        })
        .collect();
    // bob's new phone, b2, never sent to: reads nothing.
    let mut b2 = Crypto::new(UserId(2), DeviceId(22));
    stock.publish(&mut b2);
    let (b1_id, b2_id) = (stock.identity(&b1), stock.identity(&b2));
    assert_eq!(
        b2.open(&events[0], Some(&a1_keys)).unwrap_err(),
        Undecryptable::NotForThisDevice
    );
    // Not before b1 verified b2, and never with another user's device.
    assert_eq!(
        b1.share_keys(&b2_id, &[], "t1").unwrap_err(),
        ShareError::NotVerified(22)
    );
    assert_eq!(
        b1.share_keys(&stock.identity(&a2), &[], "t1").unwrap_err(),
        ShareError::NotOwnDevice
    );
    b1.mark_verified(&party(&stock, &b2));
    b2.mark_verified(&party(&stock, &b1));
    let shares = match b1.share_keys(&b2_id, &[], "t1") {
        Err(ShareError::Seal(SealError::NeedKeys(need))) => {
            let claimed = stock.claim(&need);
            b1.share_keys(&b2_id, &claimed, "t1").unwrap()
        }
        other => panic!("expected to need b2's keys, got {other:?}"),
    };
    assert!(shares.len() > 1, "100 keys take several device messages");
    for s in &shares {
        assert!(
            s.encoded_len() <= crate::limits::MAX_TO_DEVICE_BYTES,
            "{} bytes",
            s.encoded_len()
        );
    }
    let share = |m: &pb::VerificationMessage| match &m.kind {
        Some(pb::verification_message::Kind::KeyShare(k)) => k.clone(),
        other => panic!("{other:?}"),
    };
    // A device added with the password (unverified) hands b2 nothing; a1 is not bob's.
    let mut b3 = Crypto::new(UserId(2), DeviceId(23));
    stock.publish(&mut b3);
    b3.mark_verified(&party(&stock, &b2));
    let b3_id = stock.identity(&b3);
    let forged = match b3.share_keys(&b2_id, &stock.claim(std::slice::from_ref(&b2_id)), "t2") {
        Ok(m) => share(&m[0]),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        b2.accept_shared_keys(&b3_id, &forged).unwrap_err(),
        ShareError::NotVerified(23)
    );
    assert_eq!(
        b2.accept_shared_keys(&a1_keys, &forged).unwrap_err(),
        ShareError::NotOwnDevice
    );

    let mut new = 0;
    for (i, m) in shares.iter().enumerate() {
        let (n, last) = b2.accept_shared_keys(&b1_id, &share(m)).unwrap();
        assert_eq!(last, i == shares.len() - 1, "only the last share says so");
        new += n;
    }
    assert_eq!(new, 100);
    for ev in &events {
        assert_eq!(body(b2.open(ev, None).unwrap()), "history");
    }
    // A replayed share, or one altered on the way, opens no more.
    assert!(matches!(
        b2.accept_shared_keys(&b1_id, &share(&shares[0])),
        Err(ShareError::Olm(_))
    ));
    let mut altered = share(&shares[1]);
    let n = altered.olm_body.len();
    altered.olm_body[n - 20] ^= 1;
    assert!(b2.accept_shared_keys(&b1_id, &altered).is_err());
    // Both keep a session with each other: b2 answers without claiming.
    assert_eq!(b2.share_keys(&b1_id, &[], "t1").unwrap().len(), shares.len());
}

#[test]
fn the_state_log_is_written_afresh_once_its_records_outgrow_the_state() {
    let mut log = StateLog::default();
    assert!(log.whole_next(), "no log yet");
    log.wrote(true, 300 * 1024);
    assert!(!log.whole_next());
    log.wrote(false, 600 * 1024);
    assert!(!log.whole_next(), "twice the state, not past it");
    log.wrote(false, 1);
    assert!(log.whole_next());
    log.wrote(true, 1_000);
    log.wrote(false, 256 * 1024 + 1);
    assert!(log.whole_next(), "a small state: past 256 KiB of records");
}

#[test]
fn conversations_follow_device_list_events_and_refusals_and_reopen_what_keys_came_for() {
    use super::conversations::{Conversations, UNOPENED_KEPT};
    let (mut stock, mut a1, a2, mut b1) = setup();
    let (ka1, ka2, kb1) = (stock.identity(&a1), stock.identity(&a2), stock.identity(&b1));
    let ids = |c: &Conversations| -> Vec<(u64, u64)> {
        c.devices(CONV)
            .unwrap()
            .iter()
            .map(|d| (d.user_id, d.device_id))
            .collect()
    };
    let at = |seq: u64, body: pb::conversation_event::Body| pb::ConversationEvent {
        conversation_id: CONV.0,
        seq,
        body: Some(body),
        ..Default::default()
    };
    let mut c = Conversations::default();
    assert_eq!(c.is_encrypted(CONV), None);
    c.learn(&at(
        1,
        pb::conversation_event::Body::Created(pb::ConversationCreated {
            encrypted: true,
            devices: vec![ka1.clone(), kb1.clone()],
            ..Default::default()
        }),
    ));
    assert_eq!(c.is_encrypted(CONV), Some(true));
    assert_eq!(ids(&c), vec![(1, 11), (2, 21)]);
    c.learn(&at(
        2,
        pb::conversation_event::Body::DevicesChanged(pb::DevicesChanged {
            user_id: 1,
            added: vec![ka2.clone(), kb1.clone()],
            removed: vec![11],
        }),
    ));
    assert_eq!(ids(&c), vec![(2, 21), (1, 12)], "a1 removed, a2 added, b1 not twice");
    // A device that joined later hears only a change: its list stays unknown (to be asked
    // of the server), never just the change.
    let mut late = Conversations::default();
    late.learn(&at(
        3,
        pb::conversation_event::Body::DevicesChanged(pb::DevicesChanged {
            user_id: 2,
            added: vec![kb1.clone()],
            removed: vec![],
        }),
    ));
    assert_eq!(late.is_encrypted(CONV), Some(true));
    assert_eq!(
        late.devices(CONV),
        None,
        "a partial list would leave out every other device"
    );
    let ev = send(&mut stock, &mut a1, &[&a2, &b1], "m1", "hi");
    assert_eq!(c.sender(&ev), None, "a1 is no longer listed");
    // A refusal: a2 extra, b1 stale (new keys), a1 missing.
    let mut b1_new = kb1.clone();
    b1_new.signature.push(0);
    let fixed = c.fix_devices(
        CONV,
        &[kb1.clone(), ka2.clone()],
        &pb::DeviceMismatch {
            missing: vec![ka1.clone()],
            extra: vec![pb::DeviceRef {
                user_id: 1,
                device_id: 12,
            }],
            stale: vec![b1_new.clone()],
        },
    );
    assert_eq!(fixed, vec![ka1.clone(), b1_new]);
    assert_eq!(c.devices(CONV).unwrap(), &fixed[..]);
    assert_eq!(c.sender(&ev), Some(ka1.clone()));

    // Undecryptable events wait for their keys, the newest UNOPENED_KEPT of them.
    let mut b2 = Crypto::new(UserId(2), DeviceId(22));
    for seq in 0..UNOPENED_KEPT as u64 {
        let mut old = ev.clone();
        old.seq = 10_000 + seq;
        c.keep_unopened(old);
    }
    let mut kept = ev.clone();
    kept.seq = 20_000;
    c.keep_unopened(kept);
    assert!(c.reopen(&mut b2).is_empty(), "no keys yet");
    b1.open(&ev, Some(&ka1)).unwrap();
    let recovery = backup::RecoveryKey::from_random([7; 32]);
    b1.set_backup(&pb::KeyBackup {
        version: 1,
        public_key: recovery.public_key().to_vec(),
    });
    b2.restore(&recovery, &b1.backup_batch(10).unwrap().keys).unwrap();
    let reopened = c.reopen(&mut b2);
    // All 1,001 share one message id here: the oldest (10_000) fell out of the kept ones.
    assert_eq!(reopened.len(), UNOPENED_KEPT);
    assert_eq!(reopened[0].seq, 10_001);
    assert_eq!(reopened.last().unwrap().seq, 20_000);
    assert!(matches!(
        &reopened[0].body,
        Some(pb::conversation_event::Body::Message(m)) if m.body.as_ref().unwrap().text == "hi"
    ));
    assert!(c.reopen(&mut b2).is_empty(), "handed on once");
}

/// A send refused for its device list is sealed again under the same client message id
/// (PROTOCOL.md §12.5): whichever envelope the server keeps, the sender reads its own
/// message back from the key it kept, and so do the devices of both seals.
#[test]
fn sealing_one_message_again_keeps_one_message_key() {
    let (mut stock, mut a1, a2, b1) = setup();
    let first = send(&mut stock, &mut a1, &[&b1], "m1", "hello");
    // The server said a2 was missing: the same message, sealed for both, fresh randomness.
    let devices = vec![stock.identity(&a2), stock.identity(&b1)];
    let env = match a1.seal(CONV, "m1", &text("hello"), &devices, &[], random(7)) {
        Err(SealError::NeedKeys(need)) => {
            let claimed = stock.claim(&need);
            a1.seal(CONV, "m1", &text("hello"), &devices, &claimed, random(7))
                .unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_ne!(env.nonce, first_nonce(&first), "a fresh nonce");
    let second = event(&a1, "m1", env);
    let a1_keys = stock.identity(&a1);
    for ev in [&first, &second] {
        assert_eq!(
            body(a1.open(ev, None).unwrap()),
            "hello",
            "the sender's kept key opens it"
        );
    }
    let (mut a2, mut b1) = (a2, b1);
    assert_eq!(body(a2.open(&second, Some(&a1_keys)).unwrap()), "hello");
    assert_eq!(body(b1.open(&second, Some(&a1_keys)).unwrap()), "hello");
}

fn first_nonce(ev: &pb::ConversationEvent) -> Vec<u8> {
    match &ev.body {
        Some(pb::conversation_event::Body::Message(m)) => {
            m.body.as_ref().unwrap().encrypted.as_ref().unwrap().nonce.clone()
        }
        _ => unreachable!(),
    }
}

/// A device learns from which seq a conversation's messages are sealed for it: the
/// creation that listed it, or the change that added it — with its own identity key, not
/// an earlier device's under the same id — and keeps that across a restart.
#[test]
fn a_device_knows_from_which_seq_it_can_read() {
    let (stock, mut a1, mut a2, _b1) = setup();
    let (ka1, ka2) = (stock.identity(&a1), stock.identity(&a2));
    let at = |seq: u64, body: pb::conversation_event::Body| pb::ConversationEvent {
        conversation_id: CONV.0,
        seq,
        body: Some(body),
        ..Default::default()
    };
    let created = at(
        1,
        pb::conversation_event::Body::Created(pb::ConversationCreated {
            encrypted: true,
            devices: vec![ka1.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(a1.covered_from(CONV), None);
    assert!(a1.note_covered(&created));
    assert!(!a1.note_covered(&created), "not news twice");
    assert!(!a2.note_covered(&created), "a2 is not listed");
    // A change adding a device of the same id under another identity key is not a2's.
    let mut other = ka2.clone();
    other.curve25519 = ka1.curve25519.clone();
    let wrong = pb::DevicesChanged {
        user_id: 1,
        added: vec![other],
        removed: vec![],
    };
    assert!(!a2.note_covered(&at(4, pb::conversation_event::Body::DevicesChanged(wrong))));
    let added = pb::DevicesChanged {
        user_id: 1,
        added: vec![ka2.clone()],
        removed: vec![],
    };
    assert!(a2.note_covered(&at(5, pb::conversation_event::Body::DevicesChanged(added))));
    assert_eq!(a1.covered_from(CONV), Some(crate::Seq(1)));
    assert_eq!(a2.covered_from(CONV), Some(crate::Seq(5)));
    let key = [3u8; 32];
    let mut log = a2.save(&key, [1; 24]);
    log.extend(a2.save_record(&key, [2; 24]));
    let again = Crypto::load(&key, &log).unwrap();
    assert_eq!(again.covered_from(CONV), Some(crate::Seq(5)), "kept in the state");
}

/// What the server keeps of a user's signing key (PROTOCOL.md §12.12), applied as it
/// would: the key, who vouched for it, whom it signed.
#[derive(Default)]
struct UserKeyListing {
    key: Vec<u8>,
    vouched_by: Vec<pb::DeviceSignature>,
    signed: Vec<(u64, Vec<u8>)>,
}

impl UserKeyListing {
    fn publish(&mut self, from: &Crypto, p: pb::PublishUserKey) {
        assert!(self.key.is_empty() || self.key == p.ed25519, "one key per user");
        self.key = p.ed25519;
        self.vouched_by.push(pb::DeviceSignature {
            device_id: from.device().0,
            signature: p.vouch,
        });
        self.signed.push((from.device().0, p.device_signature));
    }

    fn listing(&self, stock: &Stock, devices: &[&Crypto]) -> pb::UserDevices {
        pb::UserDevices {
            user_id: devices[0].user().0,
            devices: devices
                .iter()
                .map(|c| {
                    let mut d = stock.identity(c);
                    d.user_signature = self
                        .signed
                        .iter()
                        .find(|(id, _)| *id == d.device_id)
                        .map(|(_, s)| s.clone())
                        .unwrap_or_default();
                    d
                })
                .collect(),
            user_key: (!self.key.is_empty()).then(|| pb::UserKey {
                ed25519: self.key.clone(),
                vouched_by: self.vouched_by.clone(),
            }),
        }
    }
}

/// Bob's first device makes his signing key, verifies his second and hands it the key;
/// Alice verifies the first only, and trusts the second through the key — not a third
/// added with the password, not a key the server swapped in.
#[test]
fn the_user_key_vouches_for_the_devices_it_signed_and_no_others() {
    let (mut stock, mut a1, _a2, mut b1) = setup();
    let mut b2 = Crypto::new(UserId(2), DeviceId(22));
    let mut b3 = Crypto::new(UserId(2), DeviceId(23));
    stock.publish(&mut b2);
    stock.publish(&mut b3);
    let mut server = UserKeyListing::default();
    // b1 finds no key: makes one, vouches for it, signs itself; asked again, nothing new.
    let p = b1
        .user_key_to_publish(&server.listing(&stock, &[&b1]))
        .expect("a new key");
    server.publish(&b1, p);
    assert_eq!(b1.user_key_to_publish(&server.listing(&stock, &[&b1])), None);
    // b2 (logged in with the password) holds no key: nothing to publish.
    assert_eq!(b2.user_key_to_publish(&server.listing(&stock, &[&b1, &b2])), None);
    // b1 verifies b2: signs it, and the key goes along with the message keys.
    b1.mark_verified(&party(&stock, &b2));
    b2.mark_verified(&party(&stock, &b1));
    let b2_id = stock.identity(&b2);
    server
        .signed
        .push((22, b1.sign_own_device(&b2_id).expect("b1 holds the key")));
    assert_eq!(b1.sign_own_device(&stock.identity(&a1)), None, "only its own user's");
    let claimed = stock.claim(std::slice::from_ref(&b2_id));
    let shares = b1.share_keys(&b2_id, &claimed, "t").unwrap();
    for m in &shares {
        let Some(pb::verification_message::Kind::KeyShare(k)) = &m.kind else {
            panic!()
        };
        b2.accept_shared_keys(&stock.identity(&b1), k).unwrap();
    }
    assert_eq!(b2.user_key(), b1.user_key(), "b2 holds the key now");
    let p = b2
        .user_key_to_publish(&server.listing(&stock, &[&b1, &b2]))
        .expect("b2 vouches");
    server.publish(&b2, p);
    let bob = server.listing(&stock, &[&b1, &b2, &b3]);
    use TrustLevel::*;
    // Bob's devices as b2 sees them: both signed by the key it holds; b3 not.
    assert_eq!(b2.trust_all(&bob).0, vec![Verified, Verified, Unverified]);

    // Alice has verified nobody: nothing is trusted, no key pinned.
    assert_eq!(a1.trust_all(&bob), (vec![Unverified, Unverified, Unverified], false));
    // She verifies b1, which vouched for the key: b2 is trusted through it, b3 is not.
    a1.mark_verified(&party(&stock, &b1));
    assert_eq!(a1.trust_all(&bob), (vec![Verified, Verified, Unverified], true));
    assert!(!a1.trust_all(&bob).1, "pinned once");
    // The pin survives a restart.
    let key = [5u8; 32];
    let mut a1 = Crypto::load(&key, &a1.save(&key, [0; 24])).unwrap();
    assert_eq!(a1.trust_all(&bob).0, vec![Verified, Verified, Unverified]);

    // The server swaps in a key of its own that signs b3 (and vouches with nobody Alice
    // verified): Alice trusts none of what it signed, and says the key changed.
    let forged = vodozemac::Ed25519SecretKey::new();
    let mut swapped = bob.clone();
    swapped.user_key = Some(pb::UserKey {
        ed25519: forged.public_key().as_bytes().to_vec(),
        vouched_by: vec![],
    });
    for d in swapped.devices.iter_mut() {
        let msg =
            crate::e2ee::device_by_user_message(UserId(d.user_id), DeviceId(d.device_id), &d.ed25519, &d.curve25519);
        d.user_signature = forged.sign(&msg).to_bytes().to_vec();
    }
    assert_eq!(a1.trust_all(&swapped).0, vec![Verified, Changed, Changed]);
    // And someone who verified b1 but never saw the real key cannot be talked into it.
    let mut c1 = Crypto::new(UserId(3), DeviceId(31));
    stock.publish(&mut c1);
    c1.mark_verified(&party(&stock, &b1));
    assert_eq!(c1.trust_all(&swapped), (vec![Verified, Unverified, Unverified], false));
}
