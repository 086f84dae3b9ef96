//! The byte-exact parts of end-to-end encryption every implementation must agree on
//! (PROTOCOL.md §12), without Olm: what a device signs when it publishes keys, and how a
//! message's content is padded, bound to its message and sealed with its message key.
//! The server uses the first (it checks signatures), clients all of it;
//! `spec/vectors/e2ee.txt` pins the sealing. Olm sessions are the client core's
//! (`client::e2ee`, feature `e2ee`).
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use prost::Message;

use crate::pb;
use crate::{ConversationId, DeviceId, UserId};

/// Envelope version of PROTOCOL.md §12.4.
pub const ENVELOPE_VERSION: u32 = 1;
/// Ed25519 and Curve25519 public keys.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Ed25519 signatures.
pub const SIGNATURE_BYTES: usize = 64;
/// A message key.
pub const MESSAGE_KEY_BYTES: usize = 32;
/// An envelope nonce.
pub const NONCE_BYTES: usize = 24;
/// The smallest padding bucket.
pub const MIN_BUCKET: usize = 256;
/// HPKE `info` of the key backup (PROTOCOL.md §12.9).
pub const BACKUP_INFO: &[u8] = b"natter-key-backup-v1";
/// A backed-up key's HPKE encapsulated key (DHKEM(X25519, HKDF-SHA256)).
pub const BACKUP_ENCAPSULATED_KEY_BYTES: usize = 32;
/// A backed-up key's HPKE ciphertext: the 32-byte message key and a 16-byte tag.
pub const BACKUP_CIPHERTEXT_BYTES: usize = MESSAGE_KEY_BYTES + 16;

const DEVICE_KEYS_CONTEXT: &[u8] = b"natter-device-keys-v1";
const ONE_TIME_KEY_CONTEXT: &[u8] = b"natter-one-time-key-v1";
const DEVICE_BY_USER_CONTEXT: &[u8] = b"natter-device-by-user-v1";
const USER_KEY_CONTEXT: &[u8] = b"natter-user-key-v1";
const CONTENT_CONTEXT: &[u8] = b"natter-e2ee-v1";

/// What a device signs to publish its identity keys.
pub fn device_keys_message(user: UserId, device: DeviceId, ed25519: &[u8], curve25519: &[u8]) -> Vec<u8> {
    let mut m = DEVICE_KEYS_CONTEXT.to_vec();
    m.extend_from_slice(&user.0.to_be_bytes());
    m.extend_from_slice(&device.0.to_be_bytes());
    m.extend_from_slice(ed25519);
    m.extend_from_slice(curve25519);
    m
}

/// What a user's signing key signs to vouch for one of the user's devices (PROTOCOL.md
/// §12.12).
pub fn device_by_user_message(user: UserId, device: DeviceId, ed25519: &[u8], curve25519: &[u8]) -> Vec<u8> {
    let mut m = DEVICE_BY_USER_CONTEXT.to_vec();
    m.extend_from_slice(&user.0.to_be_bytes());
    m.extend_from_slice(&device.0.to_be_bytes());
    m.extend_from_slice(ed25519);
    m.extend_from_slice(curve25519);
    m
}

/// What a device signs to vouch for its user's signing key (PROTOCOL.md §12.12).
pub fn user_key_message(user: UserId, ed25519: &[u8]) -> Vec<u8> {
    let mut m = USER_KEY_CONTEXT.to_vec();
    m.extend_from_slice(&user.0.to_be_bytes());
    m.extend_from_slice(ed25519);
    m
}

/// What a device signs to publish a one-time or fallback key.
pub fn one_time_key_message(user: UserId, device: DeviceId, public_key: &[u8]) -> Vec<u8> {
    let mut m = ONE_TIME_KEY_CONTEXT.to_vec();
    m.extend_from_slice(&user.0.to_be_bytes());
    m.extend_from_slice(&device.0.to_be_bytes());
    m.extend_from_slice(public_key);
    m
}

/// The associated data that binds sealed content to its message.
pub fn content_aad(conversation: ConversationId, user: UserId, device: DeviceId, client_msg_id: &str) -> Vec<u8> {
    let mut m = CONTENT_CONTEXT.to_vec();
    m.extend_from_slice(&conversation.0.to_be_bytes());
    m.extend_from_slice(&user.0.to_be_bytes());
    m.extend_from_slice(&device.0.to_be_bytes());
    m.extend_from_slice(client_msg_id.as_bytes());
    m
}

/// The padded size for `len` content bytes: the smallest power of two, at least
/// [`MIN_BUCKET`], that holds them and their 4-byte length.
pub fn bucket(len: usize) -> usize {
    (len + 4).next_power_of_two().max(MIN_BUCKET)
}

/// Why sealed content did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// The ciphertext fails its tag: altered, or another key, nonce or message.
    #[error("the sealed content does not verify")]
    Tampered,
    /// It opened, but its padding or its protobuf is malformed.
    #[error("the sealed content is malformed: {0}")]
    Malformed(&'static str),
    /// A key or nonce of the wrong size.
    #[error("a message key is 32 bytes and a nonce 24")]
    BadKey,
}

/// `content` padded to its bucket: 4-byte big-endian length, the bytes, zeros.
pub fn pad(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket(content.len()));
    out.extend_from_slice(&(content.len() as u32).to_be_bytes());
    out.extend_from_slice(content);
    out.resize(bucket(content.len()), 0);
    out
}

/// The content inside a padded plaintext. Any padding that is not what [`pad`] writes
/// is refused, so one plaintext has exactly one encoding.
pub fn unpad(padded: &[u8]) -> Result<&[u8], ContentError> {
    let Some((len, rest)) = padded.split_first_chunk::<4>() else {
        return Err(ContentError::Malformed("shorter than its length"));
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() || padded.len() != bucket(len) {
        return Err(ContentError::Malformed("length and padding disagree"));
    }
    if rest[len..].iter().any(|b| *b != 0) {
        return Err(ContentError::Malformed("padding is not zero"));
    }
    Ok(&rest[..len])
}

fn cipher(key: &[u8]) -> Result<XChaCha20Poly1305, ContentError> {
    XChaCha20Poly1305::new_from_slice(key).map_err(|_| ContentError::BadKey)
}

/// Seal `content` under a message key (PROTOCOL.md §12.4 steps 2–3).
pub fn seal_content(
    key: &[u8; MESSAGE_KEY_BYTES],
    nonce: &[u8; NONCE_BYTES],
    aad: &[u8],
    content: &pb::SealedContent,
) -> Vec<u8> {
    let plain = pad(&content.encode_to_vec());
    cipher(key)
        .expect("a 32-byte key")
        .encrypt(XNonce::from_slice(nonce), Payload { msg: &plain, aad })
        .expect("XChaCha20-Poly1305 seals any length a frame holds")
}

/// Open sealed content.
pub fn open_content(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<pb::SealedContent, ContentError> {
    if nonce.len() != NONCE_BYTES {
        return Err(ContentError::BadKey);
    }
    let plain = cipher(key)?
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .map_err(|_| ContentError::Tampered)?;
    pb::SealedContent::decode(unpad(&plain)?).map_err(|_| ContentError::Malformed("not a SealedContent"))
}

/// Seal bytes at rest (a client's saved encryption state) under a 32-byte store key.
pub fn seal_blob(key: &[u8; 32], nonce: &[u8; NONCE_BYTES], plain: &[u8]) -> Vec<u8> {
    cipher(key)
        .expect("a 32-byte key")
        .encrypt(XNonce::from_slice(nonce), plain)
        .expect("XChaCha20-Poly1305 seals any length")
}

/// Open what [`seal_blob`] sealed; `None` for another key or altered bytes.
pub fn open_blob(key: &[u8; 32], nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if nonce.len() != NONCE_BYTES {
        return None;
    }
    cipher(key).ok()?.decrypt(XNonce::from_slice(nonce), sealed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_from_256() {
        assert_eq!(bucket(0), 256);
        assert_eq!(bucket(252), 256);
        assert_eq!(bucket(253), 512);
        assert_eq!(bucket(1000), 1024);
        for len in [0, 1, 100, 252, 253, 5000] {
            let p = pad(&vec![7; len]);
            assert_eq!(p.len(), bucket(len));
            assert_eq!(unpad(&p).unwrap(), &vec![7; len][..]);
        }
    }

    #[test]
    fn padding_other_than_what_pad_writes_is_refused() {
        let mut p = pad(b"hello");
        *p.last_mut().unwrap() = 1;
        assert!(matches!(unpad(&p), Err(ContentError::Malformed(_))));
        let mut p = pad(b"hello");
        p[2] = 1; // a length past the bucket (261)
        assert!(unpad(&p).is_err());
        let mut p = pad(b"hello");
        p.truncate(255);
        assert!(unpad(&p).is_err());
        assert!(unpad(&[0, 0]).is_err());
    }

    #[test]
    fn sealed_content_opens_only_for_its_message() {
        let (key, nonce) = ([3u8; 32], [4u8; 24]);
        let aad = content_aad(ConversationId(1), UserId(2), DeviceId(3), "m1");
        let content = pb::SealedContent {
            body: Some(pb::MessageBody {
                text: "hi".into(),
                ..Default::default()
            }),
            change: None,
        };
        let ct = seal_content(&key, &nonce, &aad, &content);
        assert_eq!(ct.len(), 256 + 16);
        assert_eq!(open_content(&key, &nonce, &aad, &ct).unwrap(), content);
        let other = content_aad(ConversationId(1), UserId(2), DeviceId(3), "m2");
        assert_eq!(open_content(&key, &nonce, &other, &ct), Err(ContentError::Tampered));
        assert_eq!(open_content(&[5; 32], &nonce, &aad, &ct), Err(ContentError::Tampered));
        let mut bad = ct.clone();
        bad[10] ^= 1;
        assert_eq!(open_content(&key, &nonce, &aad, &bad), Err(ContentError::Tampered));
        assert_eq!(open_content(&key[..31], &nonce, &aad, &ct), Err(ContentError::BadKey));
    }
}
