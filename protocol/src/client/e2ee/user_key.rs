//! The user's signing key (PROTOCOL.md §12.12): one Ed25519 key per user that the user's
//! devices hold and sign each other's identities with. The first device of a user makes
//! it; a device verified by one that holds it gets it in the key share (§12.11) and is
//! signed by it. Someone who verified one device of a user, and saw that device vouch for
//! the user's key, trusts every device that key signed — and a device added with the
//! password alone, which nobody signed, stays unverified for everyone.
use vodozemac::{Ed25519PublicKey, Ed25519SecretKey, Ed25519Signature};

use super::{Crypto, TrustLevel};
use crate::e2ee;
use crate::pb;
use crate::{DeviceId, UserId};

/// Whether `signature` is `key`'s over `message` (all as bytes off the wire).
fn signed_by(key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = <&[u8; 32]>::try_from(key) else {
        return false;
    };
    let Ok(key) = Ed25519PublicKey::from_slice(key) else {
        return false;
    };
    Ed25519Signature::from_slice(signature).is_ok_and(|sig| key.verify(message, &sig).is_ok())
}

/// Whether `user_key` signed `d` (its `user_signature`).
fn user_signed(user_key: &[u8], d: &pb::DeviceKeys) -> bool {
    let msg = e2ee::device_by_user_message(UserId(d.user_id), DeviceId(d.device_id), &d.ed25519, &d.curve25519);
    signed_by(user_key, &msg, &d.user_signature)
}

impl Crypto {
    fn user_secret(&self) -> Option<Ed25519SecretKey> {
        self.user_key.as_ref().map(Ed25519SecretKey::from_slice)
    }

    /// The public half of the user's signing key, if this device holds it.
    pub fn user_key(&self) -> Option<Vec<u8>> {
        self.user_secret().map(|k| k.public_key().as_bytes().to_vec())
    }

    /// What this device publishes about its user's signing key, given its user's listing
    /// (`GetDeviceKeys` of itself): when the user has none and this device holds none, a
    /// new key is made (write the state before publishing it); when this device holds the
    /// listed key and has not vouched for it or been signed by it, both. A held key the
    /// server does not list (another device's made it first) is dropped. `None`: nothing
    /// to publish.
    pub fn user_key_to_publish(&mut self, mine: &pb::UserDevices) -> Option<pb::PublishUserKey> {
        let listed = mine
            .user_key
            .as_ref()
            .map(|k| k.ed25519.clone())
            .filter(|k| !k.is_empty());
        match (&listed, self.user_key()) {
            (None, None) => self.user_key = Some(*Ed25519SecretKey::new().to_bytes()),
            (Some(l), Some(held)) if *l != held => {
                self.user_key = None;
                return None;
            }
            (Some(_), None) => return None,
            _ => {}
        }
        let secret = self.user_secret().expect("held");
        let public = secret.public_key().as_bytes().to_vec();
        if let (Some(listed), Some(me)) = (
            mine.user_key.as_ref().filter(|_| listed.is_some()),
            mine.devices.iter().find(|d| d.device_id == self.device.0),
        ) {
            let vouched = listed.vouched_by.iter().any(|v| v.device_id == self.device.0);
            if vouched && user_signed(&public, me) {
                return None;
            }
        }
        let me = self.identity();
        let vouch = self.account.sign(e2ee::user_key_message(self.user, &public));
        let signature = secret.sign(&e2ee::device_by_user_message(
            self.user,
            self.device,
            &me.ed25519,
            &me.curve25519,
        ));
        Some(pb::PublishUserKey {
            ed25519: public,
            vouch: vouch.to_bytes().to_vec(),
            device_signature: signature.to_bytes().to_vec(),
        })
    }

    /// The user key's signature over `d`, another device of this user (one this device
    /// just verified), if this device holds the key.
    pub fn sign_own_device(&self, d: &pb::DeviceKeys) -> Option<Vec<u8>> {
        if d.user_id != self.user.0 || d.device_id == self.device.0 {
            return None;
        }
        let msg = e2ee::device_by_user_message(UserId(d.user_id), DeviceId(d.device_id), &d.ed25519, &d.curve25519);
        Some(self.user_secret()?.sign(&msg).to_bytes().to_vec())
    }

    /// How far this device trusts each of a user's devices (`listing`: `GetDeviceKeys`),
    /// the user's signing key counted: a device it verified itself (with its key now), or
    /// one signed by a user key it trusts — its own, held, or another user's that a device
    /// it verified vouched for (trusted from then on: true when that is news, and the
    /// state has something to write). A device of a user whose listed key is not the one
    /// trusted is `Changed` unless verified itself.
    pub fn trust_all(&mut self, listing: &pb::UserDevices) -> (Vec<TrustLevel>, bool) {
        let user = listing.user_id;
        let listed = listing.user_key.as_ref().filter(|k| !k.ed25519.is_empty());
        let mut pinned_now = false;
        let trusted_key: Option<Vec<u8>> = if user == self.user.0 {
            self.user_key()
        } else {
            if let (Some(k), false) = (listed, self.trusted_users.contains_key(&user)) {
                let msg = e2ee::user_key_message(UserId(user), &k.ed25519);
                let vouched = k.vouched_by.iter().any(|v| {
                    listing.devices.iter().any(|d| {
                        d.device_id == v.device_id
                            && self.trust(d) == TrustLevel::Verified
                            && signed_by(&d.ed25519, &msg, &v.signature)
                    })
                });
                if vouched {
                    self.trusted_users.insert(user, k.ed25519.clone());
                    pinned_now = true;
                }
            }
            self.trusted_users.get(&user).cloned()
        };
        let key_changed = trusted_key.is_some() && listed.map(|k| &k.ed25519) != trusted_key.as_ref();
        let levels = listing
            .devices
            .iter()
            .map(|d| match self.trust(d) {
                TrustLevel::Verified => TrustLevel::Verified,
                _ if trusted_key.as_ref().is_some_and(|k| !key_changed && user_signed(k, d)) => TrustLevel::Verified,
                TrustLevel::Unverified if key_changed && user != self.user.0 => TrustLevel::Changed,
                other => other,
            })
            .collect();
        (levels, pinned_now)
    }
}
