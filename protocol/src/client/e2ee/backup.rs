//! The key backup's cryptography (PROTOCOL.md §12.9): the recovery key and how it is
//! written for people, the backup key pair derived from it (RFC 9180 DeriveKeyPair of
//! DHKEM(X25519, HKDF-SHA256)), and message keys sealed to the backup's public key with
//! single-shot HPKE (base mode, HKDF-SHA256, ChaCha20-Poly1305) — any device of the user
//! can seal, only the holder of the recovery key can open.
use std::fmt;

use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

use crate::e2ee::{self, BACKUP_INFO, MESSAGE_KEY_BYTES};
use crate::pb;
use crate::{ConversationId, DeviceId, UserId};

type Kem = X25519HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;
type Kdf = hpke::kdf::HkdfSha256;

/// Crockford's base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Why a backup could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// Not a recovery key as [`RecoveryKey::to_display`] writes them (a typo, most likely).
    #[error("not a recovery key: {0}")]
    Malformed(&'static str),
    /// A well-formed recovery key, but not the one of this backup.
    #[error("the recovery key does not open this backup")]
    WrongKey,
    /// The user has no backup.
    #[error("no key backup was set up")]
    NoBackup,
    /// A backed-up key did not open (altered, or sealed to another key).
    #[error("a backed-up key does not open")]
    Corrupt,
}

/// The 32 secret bytes a person keeps to restore the backup.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryKey([u8; 32]);

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryKey(redacted)")
    }
}

impl RecoveryKey {
    /// A recovery key from 32 fresh random bytes.
    pub fn from_random(bytes: [u8; 32]) -> Self {
        RecoveryKey(bytes)
    }

    /// Written for people: the 32 bytes and a parity byte (XOR of all) in Crockford
    /// base32, 53 characters in groups of four.
    pub fn to_display(&self) -> String {
        let mut bytes = self.0.to_vec();
        bytes.push(parity(&self.0));
        let mut chars = Vec::with_capacity(53);
        let (mut acc, mut bits) = (0u32, 0u32);
        for b in bytes {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                chars.push(ALPHABET[((acc >> bits) & 31) as usize]);
            }
        }
        if bits > 0 {
            chars.push(ALPHABET[((acc << (5 - bits)) & 31) as usize]);
        }
        chars
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A recovery key as a person typed it: spaces and hyphens ignored, any case, `I`
    /// and `L` read as 1 and `O` as 0.
    pub fn parse(text: &str) -> Result<Self, BackupError> {
        let mut bytes = Vec::with_capacity(33);
        let (mut acc, mut bits) = (0u32, 0u32);
        let mut count = 0;
        for c in text.chars().filter(|c| !c.is_whitespace() && *c != '-') {
            let c = match c.to_ascii_uppercase() {
                'I' | 'L' => '1',
                'O' => '0',
                c => c,
            };
            let v = ALPHABET
                .iter()
                .position(|a| char::from(*a) == c)
                .ok_or(BackupError::Malformed("a character outside the alphabet"))?;
            acc = ((acc << 5) | v as u32) & 0xffff;
            bits += 5;
            count += 1;
            if bits >= 8 {
                bits -= 8;
                bytes.push((acc >> bits) as u8);
            }
        }
        if count != 53 || bytes.len() != 33 {
            return Err(BackupError::Malformed("a recovery key is 53 characters"));
        }
        // The last character's spare bit is 0 as written: a typo that changes only it
        // is caught too.
        if acc & ((1 << bits) - 1) != 0 {
            return Err(BackupError::Malformed("the last character does not match (a typo?)"));
        }
        let key: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
        if parity(&key) != bytes[32] {
            return Err(BackupError::Malformed("the check character does not match (a typo?)"));
        }
        Ok(RecoveryKey(key))
    }

    fn keypair(&self) -> (<Kem as hpke::Kem>::PrivateKey, <Kem as hpke::Kem>::PublicKey) {
        Kem::derive_keypair(&self.0)
    }

    /// The backup public key this recovery key stands for (what the server keeps).
    pub fn public_key(&self) -> [u8; 32] {
        self.keypair().1.to_bytes().into()
    }
}

fn parity(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

/// Which message a backed-up key opens.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackedUp {
    /// The conversation.
    pub conversation: ConversationId,
    /// Who sent it.
    pub user: UserId,
    /// From which device.
    pub device: DeviceId,
    /// Its client message id.
    pub client_msg_id: String,
}

impl BackedUp {
    fn aad(&self) -> Vec<u8> {
        e2ee::content_aad(self.conversation, self.user, self.device, &self.client_msg_id)
    }
}

/// Seal a message key to the backup's `public_key` (32 bytes); `None` if that is not an
/// X25519 public key.
pub fn seal_key(public_key: &[u8], id: &BackedUp, key: &[u8; MESSAGE_KEY_BYTES]) -> Option<pb::BackupKey> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(public_key).ok()?;
    let (enc, ciphertext) =
        hpke::single_shot_seal::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, BACKUP_INFO, key, &id.aad()).ok()?;
    Some(pb::BackupKey {
        conversation_id: id.conversation.0,
        sender_user_id: id.user.0,
        sender_device_id: id.device.0,
        client_msg_id: id.client_msg_id.clone(),
        encapsulated_key: enc.to_bytes().to_vec(),
        ciphertext,
    })
}

/// Open a backed-up key with the recovery key.
pub fn open_key(recovery: &RecoveryKey, k: &pb::BackupKey) -> Result<(BackedUp, [u8; MESSAGE_KEY_BYTES]), BackupError> {
    let id = BackedUp {
        conversation: ConversationId(k.conversation_id),
        user: UserId(k.sender_user_id),
        device: DeviceId(k.sender_device_id),
        client_msg_id: k.client_msg_id.clone(),
    };
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&k.encapsulated_key).map_err(|_| BackupError::Corrupt)?;
    let (sk, _) = recovery.keypair();
    let plain =
        hpke::single_shot_open::<Aead, Kdf, Kem>(&OpModeR::Base, &sk, &enc, BACKUP_INFO, &k.ciphertext, &id.aad())
            .map_err(|_| BackupError::Corrupt)?;
    let key = plain.try_into().map_err(|_| BackupError::Corrupt)?;
    Ok((id, key))
}

/// Check `recovery` against the backup the server reports, before reading any of it.
pub fn check(recovery: &RecoveryKey, backup: &pb::KeyBackup) -> Result<(), BackupError> {
    if backup.version == 0 {
        return Err(BackupError::NoBackup);
    }
    if recovery.public_key()[..] != backup.public_key[..] {
        return Err(BackupError::WrongKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> BackedUp {
        BackedUp {
            conversation: ConversationId(7),
            user: UserId(1),
            device: DeviceId(2),
            client_msg_id: "m1".into(),
        }
    }

    #[test]
    fn a_recovery_key_reads_back_as_written_and_catches_typos() {
        let k = RecoveryKey::from_random([0xa5; 32]);
        let text = k.to_display();
        assert_eq!(text.replace(' ', "").len(), 53);
        assert_eq!(RecoveryKey::parse(&text).unwrap(), k);
        assert_eq!(RecoveryKey::parse(&text.to_lowercase().replace(' ', "-")).unwrap(), k);
        // One character changed: the check byte disagrees (or the length is off).
        let mut typo: Vec<char> = text.chars().collect();
        typo[5] = if typo[5] == 'Z' { 'Y' } else { 'Z' };
        let typo: String = typo.into_iter().collect();
        assert!(matches!(RecoveryKey::parse(&typo), Err(BackupError::Malformed(_))));
        assert!(matches!(RecoveryKey::parse("abc"), Err(BackupError::Malformed(_))));
        // Every other last character, the one that differs only in the spare bit included
        // (a typo a Python test once made of a key ending in 0: read as the same key).
        let last = text.chars().last().unwrap();
        for c in ALPHABET.iter().map(|b| char::from(*b)).filter(|c| *c != last) {
            let typo = format!("{}{c}", &text[..text.len() - 1]);
            assert!(
                matches!(RecoveryKey::parse(&typo), Err(BackupError::Malformed(_))),
                "{last} -> {c} read as a key"
            );
        }
        assert_eq!(format!("{k:?}"), "RecoveryKey(redacted)");
    }

    #[test]
    fn a_sealed_key_opens_with_its_recovery_key_only_and_for_its_message_only() {
        let k = RecoveryKey::from_random([1; 32]);
        let sealed = seal_key(&k.public_key(), &id(), &[9; 32]).unwrap();
        assert_eq!(sealed.encapsulated_key.len(), e2ee::BACKUP_ENCAPSULATED_KEY_BYTES);
        assert_eq!(sealed.ciphertext.len(), e2ee::BACKUP_CIPHERTEXT_BYTES);
        crate::validate::backup_key(&sealed).unwrap();
        assert_eq!(open_key(&k, &sealed).unwrap(), (id(), [9; 32]));
        let other = RecoveryKey::from_random([2; 32]);
        assert_eq!(open_key(&other, &sealed), Err(BackupError::Corrupt));
        let mut moved = sealed.clone();
        moved.client_msg_id = "m2".into();
        assert_eq!(open_key(&k, &moved), Err(BackupError::Corrupt), "bound to its message");
        let backup = pb::KeyBackup {
            version: 3,
            public_key: k.public_key().to_vec(),
        };
        assert_eq!(check(&k, &backup), Ok(()));
        assert_eq!(check(&other, &backup), Err(BackupError::WrongKey));
        assert_eq!(check(&k, &pb::KeyBackup::default()), Err(BackupError::NoBackup));
    }
}
