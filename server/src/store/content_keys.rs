//! Sealing logged events at rest under their sender's content key, so that deleting an
//! account reaches every copy of what it wrote (PROTOCOL.md §5.16). The embedded store
//! (sled) is log-structured: a value it overwrites stays in an old segment of its file
//! until that segment is reused, and a copy of the data directory keeps everything. Each
//! user's events are therefore sealed (ChaCha20-Poly1305, a random nonce) under a 32-byte
//! key of theirs kept *outside* sled, one file per user in `content-keys/`; erasing the
//! account destroys the file (overwritten, synced, unlinked), and every old copy of the
//! user's events becomes unreadable ciphertext.
//!
//! A sealed event is `0xA5 | flags | sender u64 | time u64 | nonce (12) | ciphertext`: the
//! header stays readable (flags bit 0: the event is a message), so an event whose key is
//! gone still reads as an [`pb::Erased`] placeholder at its seq. Events stored before this
//! format (plain protobuf, which never starts with `0xA5`) read as they are.
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use natter_protocol::pb;
use natter_protocol::{ConversationId, Seq, UserId};
use prost::Message;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use super::StoreError;

const MAGIC: u8 = 0xA5;
const HEADER: usize = 1 + 1 + 8 + 8;
const NONCE: usize = 12;

/// The content keys of one store: a directory of key files and a cache of the keys read.
#[derive(Debug)]
pub struct ContentKeys {
    dir: PathBuf,
    cache: Mutex<HashMap<u64, Option<Arc<LessSafeKey>>>>,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("content keys: {e}"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

impl ContentKeys {
    /// The keys in `dir` (made if missing).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(io)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cache: Mutex::default(),
        })
    }

    /// Where the keys are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, user: UserId) -> PathBuf {
        self.dir.join(user.0.to_string())
    }

    fn cached(&self, user: UserId) -> Option<Option<Arc<LessSafeKey>>> {
        self.cache.lock().expect("content keys lock").get(&user.0).cloned()
    }

    fn remember(&self, user: UserId, key: Option<Arc<LessSafeKey>>) {
        self.cache.lock().expect("content keys lock").insert(user.0, key);
    }

    fn unbound(bytes: &[u8]) -> Result<Arc<LessSafeKey>, StoreError> {
        let k = UnboundKey::new(&aead::CHACHA20_POLY1305, bytes)
            .map_err(|_| StoreError::Corrupt("a content key is not 32 bytes".into()))?;
        Ok(Arc::new(LessSafeKey::new(k)))
    }

    /// The user's key, if it exists (none: never made, or erased).
    fn get(&self, user: UserId) -> Result<Option<Arc<LessSafeKey>>, StoreError> {
        if let Some(k) = self.cached(user) {
            return Ok(k);
        }
        let key = match fs::read(self.path(user)) {
            Ok(bytes) => Some(Self::unbound(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        self.remember(user, key.clone());
        Ok(key)
    }

    /// The user's key, made (durably) on first use.
    fn get_or_make(&self, user: UserId) -> Result<Arc<LessSafeKey>, StoreError> {
        if let Some(k) = self.get(user)? {
            return Ok(k);
        }
        let fresh = super::random_secret();
        let tmp = self.dir.join(format!(".{}.tmp", user.0));
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&fresh).and_then(|_| f.sync_all()).map_err(io)?;
        fs::rename(&tmp, self.path(user)).map_err(io)?;
        sync_dir(&self.dir)?;
        let key = Self::unbound(&fresh)?;
        self.remember(user, Some(key.clone()));
        Ok(key)
    }

    /// Destroy the user's key: every event sealed under it can no longer be opened.
    pub fn erase(&self, user: UserId) -> Result<(), StoreError> {
        let path = self.path(user);
        match fs::OpenOptions::new().write(true).open(&path) {
            Ok(mut f) => {
                f.write_all(&[0u8; 32]).and_then(|_| f.sync_all()).map_err(io)?;
                fs::remove_file(&path).map_err(io)?;
                sync_dir(&self.dir)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        self.remember(user, None);
        Ok(())
    }

    /// An event as stored: sealed under its sender's key.
    pub fn seal(&self, ev: &pb::ConversationEvent) -> Result<Vec<u8>, StoreError> {
        let key = self.get_or_make(UserId(ev.sender_user_id))?;
        let mut out = Vec::with_capacity(HEADER + NONCE + ev.encoded_len() + 16);
        out.push(MAGIC);
        out.push(u8::from(is_message(ev)));
        out.extend_from_slice(&ev.sender_user_id.to_be_bytes());
        out.extend_from_slice(&ev.server_time_ms.to_be_bytes());
        let mut nonce = [0u8; NONCE];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut nonce);
        out.extend_from_slice(&nonce);
        let aad = aad(&out[..HEADER], ev.conversation_id, ev.seq);
        let mut body = ev.encode_to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| StoreError::Backend("sealing an event failed".into()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// A stored event read back: opened, or (its sender's key erased) an `Erased`
    /// placeholder; a plain (older) event as it is.
    pub fn open_event(&self, conv: ConversationId, seq: Seq, b: &[u8]) -> Result<pb::ConversationEvent, StoreError> {
        let Some(h) = SealedHeader::read(b)? else {
            return pb::ConversationEvent::decode(b).map_err(|e| StoreError::Corrupt(e.to_string()));
        };
        let Some(key) = self.get(h.sender)? else {
            return Ok(pb::ConversationEvent {
                conversation_id: conv.0,
                seq: seq.0,
                server_time_ms: h.time_ms,
                body: Some(pb::conversation_event::Body::Erased(pb::Erased { message: h.message })),
                ..Default::default()
            });
        };
        let nonce: [u8; NONCE] = b[HEADER..HEADER + NONCE].try_into().expect("12 bytes");
        let mut body = b[HEADER + NONCE..].to_vec();
        let aad = aad(&b[..HEADER], conv.0, seq.0);
        let plain = key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| StoreError::Corrupt(format!("event {} of {} does not open", seq.0, conv.0)))?;
        pb::ConversationEvent::decode(&plain[..]).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// The sender of a stored event if it is a message, from its plain header alone
    /// (nothing opened: receipts route on it); an older plain event is decoded.
    pub fn message_sender(&self, conv: ConversationId, seq: Seq, b: &[u8]) -> Result<Option<UserId>, StoreError> {
        if let Some(h) = SealedHeader::read(b)? {
            return Ok(h.message.then_some(h.sender));
        }
        let ev = self.open_event(conv, seq, b)?;
        Ok(matches!(ev.body, Some(pb::conversation_event::Body::Message(_))).then_some(UserId(ev.sender_user_id)))
    }
}

/// The plain header of a sealed event (`0xA5 | flags | sender | time`).
struct SealedHeader {
    message: bool,
    sender: UserId,
    time_ms: u64,
}

impl SealedHeader {
    /// `None` for an older plain event; an error for a sealed one too short to be whole.
    fn read(b: &[u8]) -> Result<Option<SealedHeader>, StoreError> {
        if b.first() != Some(&MAGIC) {
            return Ok(None);
        }
        if b.len() < HEADER + NONCE + 16 {
            return Err(StoreError::Corrupt("short sealed event".into()));
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Some(SealedHeader {
            message: b[1] & 1 == 1,
            sender: UserId(u64_at(2)),
            time_ms: u64_at(10),
        }))
    }
}

fn is_message(ev: &pb::ConversationEvent) -> bool {
    matches!(
        ev.body,
        Some(pb::conversation_event::Body::Message(_))
            | Some(pb::conversation_event::Body::Erased(pb::Erased { message: true }))
    )
}

/// What the ciphertext is bound to: its header and its place in the log.
fn aad(header: &[u8], conv: u64, seq: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 16);
    a.extend_from_slice(header);
    a.extend_from_slice(&conv.to_be_bytes());
    a.extend_from_slice(&seq.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(sender: u64, seq: u64, text: &str) -> pb::ConversationEvent {
        pb::ConversationEvent {
            conversation_id: 7,
            seq,
            sender_user_id: sender,
            sender_username: format!("u{sender}"),
            server_time_ms: 1000 + seq,
            body: Some(pb::conversation_event::Body::Message(pb::MessageEvent {
                client_msg_id: format!("m{seq}"),
                body: Some(pb::MessageBody {
                    kind: pb::MessageKind::Text as i32,
                    text: text.into(),
                    ..Default::default()
                }),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn sealed_events_open_until_their_senders_key_is_erased() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ContentKeys::open(dir.path()).unwrap();
        let (a, b) = (msg(1, 1, "alice's secret"), msg(2, 2, "bob's words"));
        let (sa, sb) = (keys.seal(&a).unwrap(), keys.seal(&b).unwrap());
        assert!(!sa.windows(6).any(|w| w == b"secret"), "no plaintext at rest");
        assert_eq!(keys.open_event(ConversationId(7), Seq(1), &sa).unwrap(), a);
        // Bound to its place: the same bytes at another seq do not open.
        assert!(keys.open_event(ConversationId(7), Seq(9), &sa).is_err());

        keys.erase(UserId(1)).unwrap();
        // A fresh handle (a restart) neither: the key file is gone.
        let again = ContentKeys::open(dir.path()).unwrap();
        for k in [&keys, &again] {
            let gone = k.open_event(ConversationId(7), Seq(1), &sa).unwrap();
            assert_eq!(gone.sender_user_id, 0);
            assert_eq!(gone.server_time_ms, 1001);
            assert_eq!(
                gone.body,
                Some(pb::conversation_event::Body::Erased(pb::Erased { message: true }))
            );
            assert_eq!(k.open_event(ConversationId(7), Seq(2), &sb).unwrap(), b);
        }
        assert!(!dir.path().join("1").exists());
        // Plain events from before sealing still read.
        assert_eq!(
            keys.open_event(ConversationId(7), Seq(2), &b.encode_to_vec()).unwrap(),
            b
        );
    }
}
