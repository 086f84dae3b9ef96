//! The end-to-end encryption records the store keeps (PROTOCOL.md §12.1): one
//! [`KeyState`] per device that published keys — its identity keys, its stock of one-time
//! keys, its fallback key and every one-time key it ever published (so none is taken
//! twice) — and each user's key backup (§12.9): its public key and the message keys
//! sealed to it. Public keys and sealed bytes only: nothing here can read a message.
use std::collections::BTreeSet;

use natter_protocol::pb;
use natter_protocol::{ConversationId, DeviceId, UserId};
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
            user_signature: Vec::new(),
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

/// A record the store replaces only over the version before it (compare-and-set).
pub trait Versioned {
    /// 1, 2, …; the store keeps a record at `version` only over one at `version - 1`.
    fn version(&self) -> u64;
}

impl Versioned for KeyState {
    fn version(&self) -> u64 {
        self.version
    }
}

impl Versioned for UserKeyRecord {
    fn version(&self) -> u64 {
        self.version
    }
}

impl Versioned for KeyBackupRecord {
    fn version(&self) -> u64 {
        self.version
    }
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

/// A user's signing key (PROTOCOL.md §12.12): its public half, the devices that hold it
/// and vouched for it, and its signatures over the user's devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserKeyRecord {
    /// Whose.
    pub user: UserId,
    /// Ed25519, 32 bytes; set once.
    pub ed25519: Vec<u8>,
    /// Device → its signature over the key.
    pub vouched_by: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Device → the key's signature over its identity.
    pub signed: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Bumped on every change; the store replaces a record only over the version before.
    pub version: u64,
}

/// A user's key backup (PROTOCOL.md §12.9): which version is current and the public key
/// its keys are sealed to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyBackupRecord {
    /// Whose.
    pub user: UserId,
    /// 1, 2, …: each new backup replaces the one before.
    pub version: u64,
    /// X25519, 32 bytes.
    pub public_key: Vec<u8>,
}

/// One message key in a backup, sealed to its public key: opaque to the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupKeyRecord {
    /// The backup version it was sealed for.
    pub version: u64,
    /// The message it opens.
    pub conversation: ConversationId,
    /// Its sender.
    pub sender_user: UserId,
    /// Its sender's device.
    pub sender_device: DeviceId,
    /// Its client message id.
    pub client_msg_id: String,
    /// HPKE encapsulated key.
    pub encapsulated_key: Vec<u8>,
    /// HPKE ciphertext.
    pub ciphertext: Vec<u8>,
}

impl BackupKeyRecord {
    /// Orders a conversation's keys (and is the cursor of a page): sender user and
    /// device big-endian, then the client message id.
    pub fn id(&self) -> Vec<u8> {
        let mut id = self.sender_user.0.to_be_bytes().to_vec();
        id.extend(self.sender_device.0.to_be_bytes());
        id.extend(self.client_msg_id.as_bytes());
        id
    }

    /// From the wire, for backup `version`.
    pub fn from_wire(version: u64, k: &pb::BackupKey) -> Self {
        BackupKeyRecord {
            version,
            conversation: ConversationId(k.conversation_id),
            sender_user: UserId(k.sender_user_id),
            sender_device: DeviceId(k.sender_device_id),
            client_msg_id: k.client_msg_id.clone(),
            encapsulated_key: k.encapsulated_key.clone(),
            ciphertext: k.ciphertext.clone(),
        }
    }

    /// The wire form.
    pub fn to_wire(&self) -> pb::BackupKey {
        pb::BackupKey {
            conversation_id: self.conversation.0,
            sender_user_id: self.sender_user.0,
            sender_device_id: self.sender_device.0,
            client_msg_id: self.client_msg_id.clone(),
            encapsulated_key: self.encapsulated_key.clone(),
            ciphertext: self.ciphertext.clone(),
        }
    }
}
