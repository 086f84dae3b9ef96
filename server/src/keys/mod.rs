//! Device keys for end-to-end encryption (PROTOCOL.md §12.1–12.2): publishing a device's
//! identity, one-time and fallback keys (every signature checked, no one-time key ever
//! accepted twice), claiming one key per device atomically, and the counts a device
//! refills by; and each user's key backup (§12.9), a public key and message keys sealed
//! to it; and each user's signing key (§12.12, `user_key`). Public keys and sealed bytes only: the server can verify who published a key,
//! never read what it protects. Which conversations a new device joins is decided above (api).
//!
//! May import: `store`, `security`, `clock`, `error`.
use std::sync::Arc;

use natter_protocol::e2ee::{self, PUBLIC_KEY_BYTES, SIGNATURE_BYTES};
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::{DeviceId, ServerError, UserId};
use ring::signature::{UnparsedPublicKey, ED25519};

use crate::store::{BackupKeyRecord, DeviceKeysRecord, KeyBackupRecord, KeyState, OneTimeKeyRecord, Store, StoreError};

/// One-time keys the server holds per device.
pub const MAX_ONE_TIME_KEYS: usize = natter_protocol::limits::MAX_ONE_TIME_KEYS;
/// Times a read-modify-write is retried when another writer changed the record meanwhile.
const ATTEMPTS: usize = 16;

fn bad(msg: impl Into<String>) -> ServerError {
    ServerError::new(ErrorCode::BadRequest, msg)
}

fn verify(ed25519: &[u8], message: &[u8], signature: &[u8], what: &str) -> Result<(), ServerError> {
    if signature.len() != SIGNATURE_BYTES {
        return Err(bad(format!("{what}: a signature is {SIGNATURE_BYTES} bytes")));
    }
    UnparsedPublicKey::new(&ED25519, ed25519)
        .verify(message, signature)
        .map_err(|_| bad(format!("{what}: the signature does not verify")))
}

/// A device's published identity, checked: its own user and device, key sizes, signature.
pub fn check_device_keys(user: UserId, device: DeviceId, k: &pb::DeviceKeys) -> Result<DeviceKeysRecord, ServerError> {
    if k.user_id != user.0 || k.device_id != device.0 {
        return Err(bad("device keys must name the caller's own user and device"));
    }
    if k.ed25519.len() != PUBLIC_KEY_BYTES || k.curve25519.len() != PUBLIC_KEY_BYTES {
        return Err(bad(format!("identity keys are {PUBLIC_KEY_BYTES} bytes")));
    }
    let message = e2ee::device_keys_message(user, device, &k.ed25519, &k.curve25519);
    verify(&k.ed25519, &message, &k.signature, "device keys")?;
    Ok(DeviceKeysRecord {
        ed25519: k.ed25519.clone(),
        curve25519: k.curve25519.clone(),
        signature: k.signature.clone(),
    })
}

/// A one-time or fallback key, checked against the device's Ed25519 key.
pub fn check_one_time_key(
    user: UserId,
    device: DeviceId,
    ed25519: &[u8],
    k: &pb::OneTimeKey,
) -> Result<OneTimeKeyRecord, ServerError> {
    if k.public_key.len() != PUBLIC_KEY_BYTES {
        return Err(bad(format!("a one-time key is {PUBLIC_KEY_BYTES} bytes")));
    }
    let message = e2ee::one_time_key_message(user, device, &k.public_key);
    verify(ed25519, &message, &k.signature, "one-time key")?;
    Ok(OneTimeKeyRecord {
        public_key: k.public_key.clone(),
        signature: k.signature.clone(),
    })
}

/// The wire form of a device's identity.
pub fn device_keys(s: &KeyState) -> pb::DeviceKeys {
    s.identity.to_wire(s.user, s.device)
}

fn one_time_key(k: &OneTimeKeyRecord) -> pb::OneTimeKey {
    pb::OneTimeKey {
        public_key: k.public_key.clone(),
        signature: k.signature.clone(),
    }
}

/// A device's stock.
pub fn counts(s: &KeyState) -> pb::KeyCounts {
    pb::KeyCounts {
        one_time_keys: s.one_time.len() as u32,
        fallback_unused: matches!(s.fallback, Some((_, false))),
        device_id: Default::default(),
    }
}

/// Apply an upload to a device's record (`None`: it has none yet). Pure: the rules of
/// PROTOCOL.md §12.1 in one place.
pub fn apply_upload(
    user: UserId,
    device: DeviceId,
    current: Option<KeyState>,
    r: &pb::UploadKeys,
    max_one_time: usize,
) -> Result<KeyState, ServerError> {
    let mut s = match (current, &r.device_keys) {
        (None, None) => return Err(bad("the first upload of a device carries its identity keys")),
        (None, Some(k)) => KeyState {
            user,
            device,
            identity: check_device_keys(user, device, k)?,
            one_time: Vec::new(),
            fallback: None,
            seen: Default::default(),
            version: 0,
        },
        (Some(s), Some(k)) => {
            if check_device_keys(user, device, k)? != s.identity {
                return Err(ServerError::new(
                    ErrorCode::Conflict,
                    "this device published other identity keys; a new identity is a new login",
                ));
            }
            s
        }
        (Some(s), None) => s,
    };
    let ed = s.identity.ed25519.clone();
    let mut fresh = Vec::with_capacity(r.one_time_keys.len());
    for k in &r.one_time_keys {
        let k = check_one_time_key(user, device, &ed, k)?;
        if !s.seen.insert(k.public_key.clone()) {
            return Err(ServerError::new(
                ErrorCode::Conflict,
                "a one-time key this device published before",
            ));
        }
        fresh.push(k);
    }
    if s.one_time.len() + fresh.len() > max_one_time {
        return Err(ServerError::new(
            ErrorCode::LimitExceeded,
            format!("a device holds at most {max_one_time} one-time keys"),
        ));
    }
    s.one_time.extend(fresh);
    if let Some(k) = &r.fallback_key {
        let k = check_one_time_key(user, device, &ed, k)?;
        let same = s.fallback.as_ref().is_some_and(|(f, _)| f.public_key == k.public_key);
        if !same {
            if !s.seen.insert(k.public_key.clone()) {
                return Err(ServerError::new(
                    ErrorCode::Conflict,
                    "a fallback key this device published before",
                ));
            }
            s.fallback = Some((k, false));
        }
    }
    s.version += 1;
    Ok(s)
}

/// What a claim took from a device.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The key, for the wire.
    pub key: pb::ClaimedKey,
    /// The device's stock after the claim.
    pub counts: pb::KeyCounts,
    /// The device should refill now (its stock fell below a quarter of the maximum, or
    /// its fallback key was used for the first time).
    pub low: bool,
}

/// Take one key from a device's record. Pure.
pub fn apply_claim(mut s: KeyState, max_one_time: usize) -> Option<(KeyState, Claimed)> {
    let (key, fallback, first_fallback_use) = if s.one_time.is_empty() {
        let (k, used) = s.fallback.as_mut()?;
        let first = !*used;
        *used = true;
        (k.clone(), true, first)
    } else {
        (s.one_time.remove(0), false, false)
    };
    s.version += 1;
    // Said once per cause: the claim that takes the stock below a quarter, and the first
    // use of the fallback key.
    let low = first_fallback_use || (!fallback && s.one_time.len() + 1 == low_mark(max_one_time));
    let claimed = Claimed {
        key: pb::ClaimedKey {
            device: Some(device_keys(&s)),
            one_time_key: Some(one_time_key(&key)),
            fallback,
        },
        counts: counts(&s),
        low,
    };
    Some((s, claimed))
}

/// Below this many one-time keys a device is told to refill.
pub fn low_mark(max_one_time: usize) -> usize {
    (max_one_time / 4).max(1)
}

pub mod user_key;

/// The key service over the store.
#[derive(Debug, Clone)]
pub struct Keys {
    store: Arc<dyn Store>,
    max_one_time: usize,
}

impl Keys {
    /// Keys kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Keys {
            store,
            max_one_time: MAX_ONE_TIME_KEYS,
        }
    }

    /// Publish keys for the caller's device; the record after, and whether this upload
    /// set the device's identity (it then joins its user's encrypted conversations).
    pub async fn upload(
        &self,
        user: UserId,
        device: DeviceId,
        r: &pb::UploadKeys,
    ) -> Result<(KeyState, bool), ServerError> {
        for _ in 0..ATTEMPTS {
            let current = self.store.key_state(user, device).await?;
            let first = current.is_none();
            let next = apply_upload(user, device, current, r, self.max_one_time)?;
            match self.store.put_key_state(&next).await {
                Ok(()) => return Ok((next, first)),
                Err(StoreError::Changed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy())
    }

    /// Take one key of `device` (a one-time key, else its fallback key); `None` when it
    /// has neither (or no keys at all).
    pub async fn claim(&self, user: UserId, device: DeviceId) -> Result<Option<Claimed>, ServerError> {
        for _ in 0..ATTEMPTS {
            let Some(current) = self.store.key_state(user, device).await? else {
                return Ok(None);
            };
            let Some((next, claimed)) = apply_claim(current, self.max_one_time) else {
                return Ok(None);
            };
            match self.store.put_key_state(&next).await {
                Ok(()) => return Ok(Some(claimed)),
                Err(StoreError::Changed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy())
    }

    /// The key records of `user`'s devices among `live` (revoked devices drop out even
    /// before their record is deleted), by device id.
    pub async fn devices(&self, user: UserId, live: &[DeviceId]) -> Result<Vec<KeyState>, ServerError> {
        let mut all = self.store.user_key_states(user).await?;
        all.retain(|s| live.contains(&s.device));
        all.sort_by_key(|s| s.device);
        Ok(all)
    }

    /// A device's stock, if it published keys.
    pub async fn counts(&self, user: UserId, device: DeviceId) -> Result<Option<pb::KeyCounts>, ServerError> {
        Ok(self.store.key_state(user, device).await?.as_ref().map(counts))
    }

    /// Forget a logged-out device's keys.
    pub async fn remove(&self, user: UserId, device: DeviceId) -> Result<bool, ServerError> {
        Ok(self.store.delete_key_state(user, device).await?)
    }

    /// The user's key backup (version 0: none) (PROTOCOL.md §12.9).
    pub async fn backup(&self, user: UserId) -> Result<pb::KeyBackup, ServerError> {
        Ok(self.store.key_backup(user).await?.map(backup_wire).unwrap_or_default())
    }

    /// Start a new backup version over `replaces` (the version the caller saw; 0: none).
    pub async fn create_backup(
        &self,
        user: UserId,
        public_key: &[u8],
        replaces: u64,
    ) -> Result<pb::KeyBackup, ServerError> {
        if public_key.len() != PUBLIC_KEY_BYTES {
            return Err(bad(format!("a backup public key is {PUBLIC_KEY_BYTES} bytes")));
        }
        let rec = KeyBackupRecord {
            user,
            version: replaces + 1,
            public_key: public_key.to_vec(),
        };
        match self.store.put_key_backup(&rec).await {
            Ok(()) => Ok(backup_wire(rec)),
            Err(StoreError::Changed) => Err(changed_backup()),
            Err(e) => Err(e.into()),
        }
    }

    /// Store sealed keys in the current backup version `version`. Every key is checked
    /// first; none is stored unless all are well-formed.
    pub async fn put_backup_keys(&self, user: UserId, r: &pb::PutBackupKeys) -> Result<(), ServerError> {
        natter_protocol::validate::count("backed-up keys", r.keys.len(), MAX_BACKUP_KEYS)?;
        for k in &r.keys {
            natter_protocol::validate::backup_key(k)?;
        }
        if r.version == 0 || self.backup(user).await?.version != r.version {
            return Err(changed_backup());
        }
        let recs: Vec<BackupKeyRecord> = r
            .keys
            .iter()
            .map(|k| BackupKeyRecord::from_wire(r.version, k))
            .collect();
        Ok(self.store.put_backup_keys(user, &recs).await?)
    }

    /// A page of the user's backed-up keys of `r.version` in one conversation.
    pub async fn backup_keys(&self, user: UserId, r: &pb::GetBackupKeys) -> Result<pb::BackupKeys, ServerError> {
        let limit = match r.limit as usize {
            0 => MAX_BACKUP_KEYS,
            n => n.min(MAX_BACKUP_KEYS),
        };
        let conv = natter_protocol::ConversationId(r.conversation_id);
        let page = self.store.backup_keys(user, conv, r.version, &r.after, limit).await?;
        let next = if page.len() == limit {
            page.last().map(BackupKeyRecord::id).unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(pb::BackupKeys {
            keys: page.iter().map(BackupKeyRecord::to_wire).collect(),
            next,
        })
    }
}

/// Backed-up keys in one request or page.
const MAX_BACKUP_KEYS: usize = natter_protocol::limits::MAX_BACKUP_KEYS;

fn backup_wire(rec: KeyBackupRecord) -> pb::KeyBackup {
    pb::KeyBackup {
        version: rec.version,
        public_key: rec.public_key,
    }
}

fn changed_backup() -> ServerError {
    ServerError::new(
        ErrorCode::Conflict,
        "the key backup was replaced; fetch the current one",
    )
}

fn busy() -> ServerError {
    ServerError {
        code: ErrorCode::StorageUnavailable,
        message: "the key record kept changing; retry".into(),
        retry_after_ms: 100,
        device_mismatch: None,
    }
}

#[cfg(test)]
mod tests;
