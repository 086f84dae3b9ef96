//! An encrypted conversation's device list and the coverage rule (PROTOCOL.md §12.3,
//! §12.5): an encrypted message must wrap its key for exactly the list's devices other
//! than the sender, each under the identity key the list holds. Pure functions over the
//! list the conversation's state carries, so a send is checked against the list at the
//! seq it commits at.
use std::collections::HashSet;

use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::{DeviceId, ServerError, UserId};

use super::Actor;
use crate::store::EncryptedDevice;

/// The wire form of a listed device.
pub(crate) fn wire(d: &EncryptedDevice) -> pb::DeviceKeys {
    d.keys.to_wire(d.user, d.device)
}

fn bad(msg: &str) -> ServerError {
    ServerError::new(ErrorCode::BadRequest, msg)
}

/// Check an encrypted send's envelope against the device list.
pub(crate) fn check(devices: &[EncryptedDevice], actor: &Actor, env: &pb::Envelope) -> Result<(), ServerError> {
    let me = (actor.user, actor.device);
    let Some(mine) = devices.iter().find(|d| (d.user, d.device) == me) else {
        return Err(bad(
            "this device has no keys in the conversation: publish them (UploadKeys) first",
        ));
    };
    if env.sender_key != mine.keys.curve25519 {
        return Err(bad("sender_key is not this device's identity key"));
    }
    let mut named = HashSet::with_capacity(env.keys.len());
    let mut mismatch = pb::DeviceMismatch::default();
    for k in &env.keys {
        let who = (UserId(k.user_id), DeviceId(k.device_id));
        if !named.insert(who) {
            return Err(bad("two wrapped keys for one device"));
        }
        match devices.iter().find(|d| (d.user, d.device) == who) {
            Some(d) if who != me => {
                if d.keys.curve25519 != k.identity_key {
                    mismatch.stale.push(wire(d));
                }
            }
            // The sender's own device, or a device the list does not have.
            _ => mismatch.extra.push(pb::DeviceRef {
                user_id: k.user_id,
                device_id: k.device_id,
            }),
        }
    }
    for d in devices {
        if (d.user, d.device) != me && !named.contains(&(d.user, d.device)) {
            mismatch.missing.push(wire(d));
        }
    }
    if mismatch == pb::DeviceMismatch::default() {
        return Ok(());
    }
    Err(ServerError {
        code: ErrorCode::DeviceMismatch,
        message: format!(
            "wrapped keys: {} devices missing, {} extra, {} stale",
            mismatch.missing.len(),
            mismatch.extra.len(),
            mismatch.stale.len()
        ),
        retry_after_ms: 0,
        device_mismatch: Some(Box::new(mismatch)),
    })
}

/// Apply a change to `user`'s devices in the list: add those not listed yet, remove those
/// listed. The event that says what changed, or `None` if nothing did.
pub(crate) fn change_devices(
    devices: &mut Vec<EncryptedDevice>,
    user: UserId,
    add: Vec<EncryptedDevice>,
    remove: &[DeviceId],
) -> Option<pb::DevicesChanged> {
    let mut out = pb::DevicesChanged {
        user_id: user.0,
        ..Default::default()
    };
    let before = devices.len();
    devices.retain(|d| !(d.user == user && remove.contains(&d.device)));
    if devices.len() != before {
        let mut gone: Vec<u64> = remove.iter().map(|d| d.0).collect();
        gone.sort_unstable();
        gone.dedup();
        out.removed = gone;
    }
    for d in add {
        if d.user == user && !devices.iter().any(|x| x.user == user && x.device == d.device) {
            out.added.push(wire(&d));
            devices.push(d);
        }
    }
    devices.sort_by_key(|d| (d.user, d.device));
    (!out.added.is_empty() || !out.removed.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeviceKeysRecord;

    fn dev(user: u64, device: u64) -> EncryptedDevice {
        EncryptedDevice {
            user: UserId(user),
            device: DeviceId(device),
            keys: DeviceKeysRecord {
                ed25519: vec![device as u8; 32],
                curve25519: vec![device as u8 + 100; 32],
                signature: vec![0; 64],
            },
        }
    }

    fn key_for(d: &EncryptedDevice) -> pb::WrappedKey {
        pb::WrappedKey {
            user_id: d.user.0,
            device_id: d.device.0,
            identity_key: d.keys.curve25519.clone(),
            olm_type: 0,
            olm_body: vec![1],
        }
    }

    fn actor() -> Actor {
        Actor {
            user: UserId(1),
            username: "a".into(),
            device: DeviceId(11),
        }
    }

    fn envelope(keys: Vec<pb::WrappedKey>) -> pb::Envelope {
        pb::Envelope {
            version: 1,
            sender_key: dev(1, 11).keys.curve25519,
            nonce: vec![0; 24],
            ciphertext: vec![0; 272],
            keys,
            media_ids: vec![],
        }
    }

    fn mismatch(r: Result<(), ServerError>) -> pb::DeviceMismatch {
        let e = r.expect_err("refused");
        assert_eq!(e.code, ErrorCode::DeviceMismatch);
        *e.device_mismatch.expect("the details")
    }

    #[test]
    fn a_send_covers_exactly_every_other_listed_device() {
        let list = vec![dev(1, 11), dev(1, 12), dev(2, 21), dev(2, 22)];
        let all: Vec<_> = list[1..].iter().map(key_for).collect();
        assert!(check(&list, &actor(), &envelope(all.clone())).is_ok());

        let m = mismatch(check(&list, &actor(), &envelope(all[..2].to_vec())));
        assert_eq!(m.missing, vec![wire(&dev(2, 22))]);
        assert!(m.extra.is_empty() && m.stale.is_empty());

        let mut more = all.clone();
        more.push(key_for(&dev(2, 23)));
        more.push(key_for(&dev(1, 11))); // the sender itself
        let m = mismatch(check(&list, &actor(), &envelope(more)));
        let extra: Vec<_> = m.extra.iter().map(|r| (r.user_id, r.device_id)).collect();
        assert_eq!(extra, vec![(2, 23), (1, 11)]);

        let mut stale = all.clone();
        stale[2].identity_key = vec![9; 32];
        let m = mismatch(check(&list, &actor(), &envelope(stale)));
        assert_eq!(m.stale, vec![wire(&dev(2, 22))]);
    }

    #[test]
    fn the_sender_must_be_listed_under_its_own_identity_key_and_name_each_device_once() {
        let list = vec![dev(1, 11), dev(2, 21)];
        let mut wrong_key = envelope(vec![key_for(&list[1])]);
        wrong_key.sender_key = vec![5; 32];
        assert_eq!(
            check(&list, &actor(), &wrong_key).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let unlisted = vec![dev(2, 21)];
        assert_eq!(
            check(&unlisted, &actor(), &envelope(vec![key_for(&list[1])]))
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
        let twice = envelope(vec![key_for(&list[1]), key_for(&list[1])]);
        assert_eq!(check(&list, &actor(), &twice).unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn device_changes_touch_only_the_users_own_devices_and_say_what_changed() {
        let mut list = vec![dev(1, 11), dev(2, 21)];
        let c = change_devices(&mut list, UserId(1), vec![dev(1, 12), dev(2, 29)], &[]).unwrap();
        assert_eq!(c.added, vec![wire(&dev(1, 12))], "another user's device is not added");
        assert_eq!(list, vec![dev(1, 11), dev(1, 12), dev(2, 21)]);
        assert!(change_devices(&mut list, UserId(1), vec![dev(1, 12)], &[]).is_none());
        assert!(change_devices(&mut list, UserId(1), vec![], &[DeviceId(21)]).is_none());
        let c = change_devices(&mut list, UserId(1), vec![], &[DeviceId(11)]).unwrap();
        assert_eq!(c.removed, vec![11]);
        assert_eq!(list, vec![dev(1, 12), dev(2, 21)]);
    }
}
