//! A device's encryption state at rest (PROTOCOL.md §12.7): the log of sealed records
//! the SDK writes before it acknowledges what changed the state — the whole state as a
//! new log, or one record of what changed — reading it back (a torn last record left
//! out), and [`StateLog`], when to write the whole state afresh.
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use vodozemac::olm::{Account, AccountPickle, Session, SessionPickle};

use super::{key32, Crypto, MessageRef, StateError};
use crate::e2ee::{self, NONCE_BYTES};
use crate::{DeviceId, UserId};

/// The first bytes of a state log (PROTOCOL.md §12.7); then records, each a u32 BE
/// length and a 24-byte nonce with the sealed JSON.
const STATE_MAGIC: &[u8; 8] = b"natterS1";

/// The log is written afresh once its records pass twice the state, or this.
const COMPACT_BYTES: u64 = 256 * 1024;

/// The state log's size as the SDK wrote it: its last whole write, and the records
/// appended since; whether the next write is the whole state or a record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateLog {
    snapshot: u64,
    appended: u64,
}

impl StateLog {
    /// The next write should be the whole state ([`Crypto::save`]): there is no log
    /// yet, or its records outgrew both [`COMPACT_BYTES`] and twice the state.
    pub fn whole_next(&self) -> bool {
        self.snapshot == 0 || self.appended > COMPACT_BYTES.max(2 * self.snapshot)
    }

    /// `len` bytes were written, as the whole state or as one record.
    pub fn wrote(&mut self, whole: bool, len: u64) {
        if whole {
            *self = StateLog {
                snapshot: len,
                appended: 0,
            };
        } else {
            self.appended += len;
        }
    }
}

/// The pickled form of the state (inside the store key's encryption).
#[derive(Serialize, Deserialize)]
struct Saved {
    user: u64,
    device: u64,
    identity_published: bool,
    account: AccountPickle,
    sessions: Vec<(Vec<u8>, Vec<SessionPickle>)>,
    message_keys: Vec<(MessageRef, Vec<u8>)>,
    #[serde(default)]
    backup: Option<(u64, Vec<u8>)>,
    #[serde(default)]
    backup_pending: Vec<MessageRef>,
    #[serde(default)]
    trusted: Vec<((u64, u64), Vec<u8>)>,
    #[serde(default)]
    covered: Vec<(u64, u64)>,
    #[serde(default)]
    user_key: Option<Vec<u8>>,
    #[serde(default)]
    trusted_users: Vec<(u64, Vec<u8>)>,
}

impl Crypto {
    /// The whole state as a new log (PROTOCOL.md §12.7): the magic and one record
    /// holding everything, encrypted under `store_key` (XChaCha20-Poly1305 with `nonce`,
    /// 24 fresh random bytes). What a new state file or a compaction writes.
    pub fn save(&mut self, store_key: &[u8; 32], nonce: [u8; NONCE_BYTES]) -> Vec<u8> {
        self.unsaved.clear();
        let keys = self.message_keys.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect();
        let mut out = STATE_MAGIC.to_vec();
        out.extend(self.record(store_key, nonce, keys));
        out
    }

    /// What changed since the last [`Self::save`] or record, as one record to append to
    /// the log: the account and sessions as they are now, and only the message keys kept
    /// since (so a long history is not written again on every message).
    pub fn save_record(&mut self, store_key: &[u8; 32], nonce: [u8; NONCE_BYTES]) -> Vec<u8> {
        let keys = std::mem::take(&mut self.unsaved)
            .into_iter()
            .filter_map(|id| self.message_keys.get(&id).map(|k| (id, k.to_vec())))
            .collect();
        self.record(store_key, nonce, keys)
    }

    fn record(&self, store_key: &[u8; 32], nonce: [u8; NONCE_BYTES], keys: Vec<(MessageRef, Vec<u8>)>) -> Vec<u8> {
        let saved = Saved {
            user: self.user.0,
            device: self.device.0,
            identity_published: self.identity_published,
            account: self.account.pickle(),
            sessions: self
                .sessions
                .iter()
                .map(|(k, v)| (k.to_vec(), v.iter().map(Session::pickle).collect()))
                .collect(),
            message_keys: keys,
            backup: self.backup.clone(),
            backup_pending: self.backup_pending.iter().cloned().collect(),
            trusted: self.trusted.iter().map(|(k, v)| (*k, v.clone())).collect(),
            covered: self.covered.iter().map(|(c, s)| (*c, *s)).collect(),
            user_key: self.user_key.map(|k| k.to_vec()),
            trusted_users: self.trusted_users.iter().map(|(u, k)| (*u, k.clone())).collect(),
        };
        let json = serde_json::to_vec(&saved).expect("the state serializes");
        let sealed = e2ee::seal_blob(store_key, &nonce, &json);
        let mut out = ((NONCE_BYTES + sealed.len()) as u32).to_be_bytes().to_vec();
        out.extend(nonce);
        out.extend(sealed);
        out
    }

    /// A state log [`Self::save`] and [`Self::save_record`] wrote: the last record's
    /// account and sessions, every record's message keys. A torn last record (the
    /// process died while appending it) is left out: it was never acknowledged.
    pub fn load(store_key: &[u8; 32], bytes: &[u8]) -> Result<Self, StateError> {
        let Some(mut rest) = bytes.strip_prefix(STATE_MAGIC) else {
            // A state written before the log: one sealed blob (nonce, then ciphertext).
            let (nonce, sealed) = bytes.split_at_checked(NONCE_BYTES).ok_or(StateError::WrongKey)?;
            let json = e2ee::open_blob(store_key, nonce, sealed).ok_or(StateError::WrongKey)?;
            let s: Saved = serde_json::from_slice(&json).map_err(|e| StateError::Malformed(e.to_string()))?;
            return Crypto::from_saved(s);
        };
        let mut state: Option<Crypto> = None;
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let Some(record) = rest.get(4..4 + len) else { break };
            rest = &rest[4 + len..];
            let (nonce, sealed) = record.split_at_checked(NONCE_BYTES).ok_or(StateError::WrongKey)?;
            let Some(json) = e2ee::open_blob(store_key, nonce, sealed) else {
                return Err(match state {
                    None => StateError::WrongKey,
                    Some(_) => StateError::Malformed("a damaged record".into()),
                });
            };
            let s: Saved = serde_json::from_slice(&json).map_err(|e| StateError::Malformed(e.to_string()))?;
            let mut next = Crypto::from_saved(s)?;
            if let Some(before) = state.take() {
                let mut keys = before.message_keys;
                keys.append(&mut next.message_keys);
                next.message_keys = keys;
            }
            state = Some(next);
        }
        state.ok_or(StateError::WrongKey)
    }

    fn from_saved(s: Saved) -> Result<Self, StateError> {
        let mut sessions = HashMap::new();
        for (k, v) in s.sessions {
            let k = key32(&k).ok_or(StateError::Malformed("a session key".into()))?;
            sessions.insert(k, v.into_iter().map(Session::from_pickle).collect());
        }
        let mut message_keys = BTreeMap::new();
        for (k, v) in s.message_keys {
            message_keys.insert(k, key32(&v).ok_or(StateError::Malformed("a message key".into()))?);
        }
        Ok(Crypto {
            user: UserId(s.user),
            device: DeviceId(s.device),
            account: Account::from_pickle(s.account),
            identity_published: s.identity_published,
            sessions,
            message_keys,
            backup: s.backup,
            backup_pending: s.backup_pending.into_iter().collect(),
            unsaved: Vec::new(),
            verified: Default::default(),
            trusted: s.trusted.into_iter().collect(),
            covered: s.covered.into_iter().collect(),
            user_key: match s.user_key {
                Some(k) => Some(key32(&k).ok_or(StateError::Malformed("the user key".into()))?),
                None => None,
            },
            trusted_users: s.trusted_users.into_iter().collect(),
        })
    }
}
