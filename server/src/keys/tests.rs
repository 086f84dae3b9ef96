//! The key rules of PROTOCOL.md §12.1–12.2 on real Ed25519 signatures (ring).
use std::collections::HashSet;
use std::sync::Arc;

use natter_protocol::e2ee;
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::{DeviceId, UserId};
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::*;
use crate::store::MemoryStore;

const U: UserId = UserId(7);
const D: DeviceId = DeviceId(3);

struct Device {
    pair: Ed25519KeyPair,
}

impl Device {
    fn new() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Device {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    fn ed(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    fn identity(&self, user: UserId, device: DeviceId) -> pb::DeviceKeys {
        let curve = vec![0x42; 32];
        let msg = e2ee::device_keys_message(user, device, &self.ed(), &curve);
        pb::DeviceKeys {
            user_id: user.0,
            device_id: device.0,
            ed25519: self.ed(),
            curve25519: curve,
            signature: self.pair.sign(&msg).as_ref().to_vec(),
            ..Default::default()
        }
    }

    fn otk(&self, n: u8) -> pb::OneTimeKey {
        let key = vec![n; 32];
        let msg = e2ee::one_time_key_message(U, D, &key);
        pb::OneTimeKey {
            signature: self.pair.sign(&msg).as_ref().to_vec(),
            public_key: key,
        }
    }

    fn upload(&self, otks: &[u8], fallback: Option<u8>) -> pb::UploadKeys {
        pb::UploadKeys {
            device_keys: Some(self.identity(U, D)),
            one_time_keys: otks.iter().map(|n| self.otk(*n)).collect(),
            fallback_key: fallback.map(|n| self.otk(n)),
        }
    }
}

fn code(r: Result<KeyState, natter_protocol::ServerError>) -> ErrorCode {
    r.expect_err("refused").code
}

#[test]
fn the_first_upload_carries_a_valid_identity_of_the_callers_own_device() {
    let d = Device::new();
    let no_identity = pb::UploadKeys {
        device_keys: None,
        ..d.upload(&[1], None)
    };
    assert_eq!(code(apply_upload(U, D, None, &no_identity, 100)), ErrorCode::BadRequest);
    let mut wrong_device = d.upload(&[1], None);
    wrong_device.device_keys = Some(d.identity(U, DeviceId(4)));
    assert_eq!(
        code(apply_upload(U, D, None, &wrong_device, 100)),
        ErrorCode::BadRequest
    );
    let mut forged = d.upload(&[1], None);
    forged.device_keys.as_mut().unwrap().curve25519 = vec![0x43; 32];
    assert_eq!(code(apply_upload(U, D, None, &forged, 100)), ErrorCode::BadRequest);
    let mut short = d.upload(&[1], None);
    short.device_keys.as_mut().unwrap().ed25519.pop();
    assert_eq!(code(apply_upload(U, D, None, &short, 100)), ErrorCode::BadRequest);

    let s = apply_upload(U, D, None, &d.upload(&[1, 2, 3], Some(9)), 100).unwrap();
    assert_eq!(
        counts(&s),
        pb::KeyCounts {
            one_time_keys: 3,
            fallback_unused: true,
            device_id: Default::default(),
        }
    );
    assert_eq!(s.version, 1);
}

#[test]
fn an_identity_is_set_once_and_a_one_time_key_is_accepted_once_ever() {
    let d = Device::new();
    let s = apply_upload(U, D, None, &d.upload(&[1, 2], Some(9)), 100).unwrap();
    let other = Device::new();
    let mut new_identity = other.upload(&[], None);
    new_identity.one_time_keys.clear();
    assert_eq!(
        code(apply_upload(U, D, Some(s.clone()), &new_identity, 100)),
        ErrorCode::Conflict
    );
    // The same identity again, or none, is fine.
    let again = apply_upload(U, D, Some(s.clone()), &d.upload(&[3], None), 100).unwrap();
    assert_eq!(again.one_time.len(), 3);
    assert_eq!(again.version, 2);
    // Held, and (below) claimed keys are never taken again.
    assert_eq!(
        code(apply_upload(U, D, Some(again.clone()), &d.upload(&[2], None), 100)),
        ErrorCode::Conflict
    );
    let (claimed, _) = apply_claim(again, 100).unwrap();
    assert_eq!(claimed.one_time.len(), 2);
    assert_eq!(
        code(apply_upload(U, D, Some(claimed.clone()), &d.upload(&[1], None), 100)),
        ErrorCode::Conflict
    );
    assert_eq!(
        code(apply_upload(U, D, Some(claimed), &d.upload(&[9], None), 100)),
        ErrorCode::Conflict
    );
    // A key signed by someone else.
    let mut stolen = d.upload(&[], None);
    stolen.one_time_keys.push(other.otk(5));
    assert_eq!(code(apply_upload(U, D, Some(s), &stolen, 100)), ErrorCode::BadRequest);
}

#[test]
fn the_stock_is_capped() {
    let d = Device::new();
    let s = apply_upload(U, D, None, &d.upload(&[1, 2, 3], None), 4).unwrap();
    assert_eq!(
        code(apply_upload(U, D, Some(s.clone()), &d.upload(&[4, 5], None), 4)),
        ErrorCode::LimitExceeded
    );
    assert_eq!(
        apply_upload(U, D, Some(s), &d.upload(&[4], None), 4)
            .unwrap()
            .one_time
            .len(),
        4
    );
}

#[test]
fn claims_take_the_oldest_key_then_the_fallback_and_say_when_to_refill() {
    let d = Device::new();
    let mut s = apply_upload(U, D, None, &d.upload(&[1, 2, 3, 4, 5], Some(9)), 8).unwrap();
    let mut got = Vec::new();
    let mut lows = Vec::new();
    for _ in 0..7 {
        let (next, c) = apply_claim(s, 8).unwrap();
        s = next;
        let key = c.key.one_time_key.unwrap().public_key[0];
        got.push((key, c.key.fallback));
        lows.push(c.low);
        assert_eq!(c.key.device.unwrap().ed25519, d.ed());
    }
    assert_eq!(
        got,
        vec![
            (1, false),
            (2, false),
            (3, false),
            (4, false),
            (5, false),
            (9, true),
            (9, true)
        ]
    );
    // Low once when the stock drops below a quarter of 8 (2), once on the first fallback.
    assert_eq!(lows, vec![false, false, false, true, false, true, false]);
    assert_eq!(
        counts(&s),
        pb::KeyCounts {
            one_time_keys: 0,
            fallback_unused: false,
            device_id: Default::default(),
        }
    );
    // A new fallback key makes it unused again.
    let s = apply_upload(U, D, Some(s), &d.upload(&[], Some(10)), 8).unwrap();
    assert!(counts(&s).fallback_unused);
    let none = apply_upload(U, D, None, &d.upload(&[], None), 8).unwrap();
    assert!(apply_claim(none, 8).is_none(), "no key, no fallback: nothing to claim");
}

#[tokio::test]
async fn concurrent_claims_never_hand_out_one_key_twice() {
    let d = Device::new();
    let keys = Keys::new(Arc::new(MemoryStore::new()));
    keys.upload(U, D, &d.upload(&(1..=20).collect::<Vec<_>>(), Some(99)))
        .await
        .unwrap();
    let claims = futures::future::join_all((0..30).map(|_| keys.claim(U, D))).await;
    let mut one_time = HashSet::new();
    let mut fallbacks = 0;
    for c in claims {
        let c = c.unwrap().expect("a key or the fallback");
        if c.key.fallback {
            fallbacks += 1;
        } else {
            assert!(one_time.insert(c.key.one_time_key.unwrap().public_key), "a key twice");
        }
    }
    assert_eq!((one_time.len(), fallbacks), (20, 10));
    assert_eq!(keys.counts(U, D).await.unwrap().unwrap().one_time_keys, 0);
    assert!(keys.remove(U, D).await.unwrap());
    assert!(keys.claim(U, D).await.unwrap().is_none());
}

/// The user's signing key (§12.12): published by a device that vouches for it and is
/// signed by it, every signature checked; one key per user; a signature over another
/// device only from that key, over that device's identity.
#[tokio::test]
async fn a_user_key_is_kept_only_with_signatures_that_verify() {
    let keys = Keys::new(Arc::new(MemoryStore::new()));
    let (d3, d4, user_key, other_key) = (Device::new(), Device::new(), Device::new(), Device::new());
    let d4_id = DeviceId(4);
    keys.upload(U, D, &d3.upload(&[], None)).await.unwrap();
    let mut up4 = d4.upload(&[], None);
    up4.device_keys = Some(d4.identity(U, d4_id));
    keys.upload(U, d4_id, &up4).await.unwrap();
    let publish = |by: &Device, key: &Device, device: DeviceId| {
        let id = by.identity(U, device);
        pb::PublishUserKey {
            ed25519: key.ed(),
            vouch: by.pair.sign(&e2ee::user_key_message(U, &key.ed())).as_ref().to_vec(),
            device_signature: key
                .pair
                .sign(&e2ee::device_by_user_message(U, device, &id.ed25519, &id.curve25519))
                .as_ref()
                .to_vec(),
        }
    };
    let refused = |r: Result<(), natter_protocol::ServerError>| r.expect_err("refused").code;

    // A vouch by another device's key, or a device signature by another key: refused.
    let mut bad_vouch = publish(&d3, &user_key, D);
    bad_vouch.vouch = publish(&d4, &user_key, D).vouch;
    assert_eq!(
        refused(keys.publish_user_key(U, D, &bad_vouch).await),
        ErrorCode::BadRequest
    );
    let mut bad_sig = publish(&d3, &user_key, D);
    bad_sig.device_signature = publish(&d3, &other_key, D).device_signature;
    assert_eq!(
        refused(keys.publish_user_key(U, D, &bad_sig).await),
        ErrorCode::BadRequest
    );
    // Signing before there is a key: refused.
    let sign4 = |key: &Device| pb::SignDevice {
        device_id: 4,
        signature: key
            .pair
            .sign(&e2ee::device_by_user_message(U, d4_id, &d4.ed(), &[0x42; 32]))
            .as_ref()
            .to_vec(),
    };
    assert_eq!(
        refused(keys.sign_device(U, &sign4(&user_key)).await),
        ErrorCode::BadRequest
    );
    assert_eq!(keys.user_key(U).await.unwrap(), None, "nothing kept");

    keys.publish_user_key(U, D, &publish(&d3, &user_key, D)).await.unwrap();
    // Another key for the same user: CONFLICT; the same one again: fine.
    assert_eq!(
        refused(keys.publish_user_key(U, D, &publish(&d3, &other_key, D)).await),
        ErrorCode::Conflict
    );
    keys.publish_user_key(U, D, &publish(&d3, &user_key, D)).await.unwrap();
    // Device 4 signed by another key: refused; by the user's: kept.
    assert_eq!(
        refused(keys.sign_device(U, &sign4(&other_key)).await),
        ErrorCode::BadRequest
    );
    keys.sign_device(U, &sign4(&user_key)).await.unwrap();
    let rec = keys.user_key(U).await.unwrap().unwrap();
    assert_eq!(rec.ed25519, user_key.ed());
    assert_eq!(rec.vouched_by.keys().copied().collect::<Vec<_>>(), vec![3]);
    assert_eq!(rec.signed.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
}
