//! The end-to-end encryption records the store keeps (PROTOCOL.md §12.1): one
//! [`KeyState`] per device that published keys — its identity keys, its stock of one-time
//! keys, its fallback key and every one-time key it ever published (so none is taken
//! twice). Public keys only: nothing here can read a message.
use std::collections::BTreeSet;

use natter_protocol::pb;
use natter_protocol::{DeviceId, UserId};
use serde::{Deserialize, Serialize};

/// A device's identity keys and their self-signature, as the device published them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeysRecord {
    /// Ed25519 fingerprint key, 32 bytes.
    pub ed25519: Vec<u8>,
    /// Curve25519 identity key, 32 bytes.
    pub curve25519: Vec<u8>,
    /// The device's signature over both (PROTOCOL.md §12.1), 64 bytes.
    pub signature: Vec<u8>,
}

impl DeviceKeysRecord {
    /// The wire form, for `device` of `user`.
    pub fn to_wire(&self, user: UserId, device: DeviceId) -> pb::DeviceKeys {
        pb::DeviceKeys {
            user_id: user.0,
            device_id: device.0,
            ed25519: self.ed25519.clone(),
            curve25519: self.curve25519.clone(),
            signature: self.signature.clone(),
        }
    }
}

/// A one-time or fallback key with its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeKeyRecord {
    /// Curve25519 public key, 32 bytes.
    pub public_key: Vec<u8>,
    /// 64 bytes.
    pub signature: Vec<u8>,
}

/// Everything the server holds about one device's keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// Whose.
    pub user: UserId,
    /// Which device.
    pub device: DeviceId,
    /// Identity keys (set once).
    pub identity: DeviceKeysRecord,
    /// Unclaimed one-time keys, oldest first.
    pub one_time: Vec<OneTimeKeyRecord>,
    /// The fallback key and whether a claim has used it.
    pub fallback: Option<(OneTimeKeyRecord, bool)>,
    /// Every one-time and fallback public key the device ever published.
    pub seen: BTreeSet<Vec<u8>>,
    /// Bumped on every change; the store replaces a record only over the version before.
    pub version: u64,
}

/// A device in an encrypted conversation's list (PROTOCOL.md §12.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedDevice {
    /// Whose.
    pub user: UserId,
    /// Which.
    pub device: DeviceId,
    /// Its identity keys.
    pub keys: DeviceKeysRecord,
}
