//! One device's end-to-end encryption (PROTOCOL.md §12), sans-IO: its Olm account
//! (`vodozemac`, libolm-compatible `SessionConfig::version_1`), its pairwise sessions with
//! other devices, sealing a message for a conversation's devices and opening one, the
//! keys it keeps published, and its state as one encrypted blob the SDK writes before it
//! acknowledges what changed it (§12.7). The SDK does the I/O around it: it uploads what
//! [`Crypto::keys_to_upload`] returns, claims keys for the devices [`SealError::NeedKeys`]
//! names, and answers [`Crypto::open`]'s failures with an undecryptable event.
//!
//! Message keys of every message this device sealed or opened stay in the state (and go
//! to the key backup, [`backup`], and to the user's other devices it verified, [`share`]),
//! so a message reads again (history, a re-delivery after a restart) without Olm — whose
//! message keys are used once.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use prost::Message as _;
use vodozemac::olm::{Account, DecryptionError, OlmMessage, Session, SessionConfig};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

use crate::e2ee::{self, ContentError, ENVELOPE_VERSION, MESSAGE_KEY_BYTES, NONCE_BYTES};
use crate::pb;
use crate::{ConversationId, DeviceId, UserId};

/// One-time keys the SDK keeps published.
pub const KEEP_ONE_TIME_KEYS: usize = 50;
/// Sessions kept per peer device, newest first (older ones still open late messages).
const SESSIONS_PER_DEVICE: usize = 4;
/// Random bytes [`Crypto::seal`] needs: a message key and a nonce.
pub const SEAL_RANDOM_BYTES: usize = MESSAGE_KEY_BYTES + NONCE_BYTES;

/// Why a message could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No session with these devices yet: claim a key of each (`ClaimKeys`) and seal
    /// again with the claimed keys.
    #[error("no session with {} devices yet: claim their keys", .0.len())]
    NeedKeys(Vec<pb::DeviceKeys>),
    /// A device's published keys or a claimed key do not verify: it is left out of
    /// nothing silently, the send stops.
    #[error("device {device} of user {user}: {why}")]
    BadDevice {
        /// Its user.
        user: u64,
        /// The device.
        device: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// Nobody else could read it (no other device has keys).
    #[error("no other device can read an encrypted message here yet")]
    NoRecipients,
}

/// Why an encrypted event could not be opened (PROTOCOL.md §12.6): what the app gets
/// instead of the message, never a silent drop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undecryptable {
    /// No key for this device: sent before it was added, or after it was removed.
    #[error("not encrypted for this device")]
    NotForThisDevice,
    /// The sending device is not one this device knows.
    #[error("the sending device is unknown")]
    UnknownSenderDevice,
    /// The Olm message does not open (no session, replayed or altered).
    #[error("the key does not open: {0}")]
    Olm(String),
    /// The key grant is for another message, sender or recipient.
    #[error("the key is for another message or device")]
    Binding,
    /// The ciphertext, padding or sealed content is altered or malformed.
    #[error("the content does not open: {0}")]
    Content(String),
    /// Not an envelope this version reads.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
}

impl Undecryptable {
    /// The reason as PROTOCOL.md §12.6 names it.
    pub fn reason(&self) -> &'static str {
        match self {
            Undecryptable::NotForThisDevice => "not_for_this_device",
            Undecryptable::UnknownSenderDevice => "unknown_sender_device",
            Undecryptable::Olm(_) => "olm",
            Undecryptable::Binding => "binding",
            Undecryptable::Content(_) => "content",
            Undecryptable::Malformed(_) => "malformed",
        }
    }
}

/// The saved state did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Wrong store key, or altered.
    #[error("the encryption state does not open with this store key")]
    WrongKey,
    /// Opened, but not a state this version reads.
    #[error("the encryption state is malformed: {0}")]
    Malformed(String),
}

/// Identifies a message across devices: its idempotency key (PROTOCOL.md §6.3).
type MessageRef = (u64, u64, u64, String);

/// A device's encryption state.
pub struct Crypto {
    user: UserId,
    device: DeviceId,
    account: Account,
    identity_published: bool,
    /// By the peer device's Curve25519 key, newest first.
    sessions: HashMap<[u8; 32], Vec<Session>>,
    /// (conversation, sender user, sender device, client message id) → message key.
    message_keys: BTreeMap<MessageRef, [u8; MESSAGE_KEY_BYTES]>,
    /// The user's key backup as this device last heard of it: version and public key.
    backup: Option<(u64, Vec<u8>)>,
    /// Kept message keys not yet in that backup.
    backup_pending: BTreeSet<MessageRef>,
    /// Message keys kept since the state was last written.
    unsaved: Vec<MessageRef>,
    /// By conversation: the seq of the event that put this device into its device list
    /// (PROTOCOL.md §12.3): every message from there on was sealed for it.
    covered: BTreeMap<u64, u64>,
    /// The user's signing key (its Ed25519 secret), if this device holds it (§12.12).
    user_key: Option<[u8; 32]>,
    /// Other users' signing keys this device trusts (a device it verified vouched for
    /// them), by user.
    trusted_users: BTreeMap<u64, Vec<u8>>,
    /// Device identities whose self-signature this process already checked.
    verified: std::collections::HashSet<Vec<u8>>,
    /// Devices a SAS verification confirmed (PROTOCOL.md §12.10): their Ed25519 key then.
    trusted: BTreeMap<(u64, u64), Vec<u8>>,
}

/// How far this device trusts another's identity (PROTOCOL.md §12.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustLevel {
    /// Verified by SAS, with the key it has now.
    Verified,
    /// Never verified.
    Unverified,
    /// Verified before, with another key: someone may be in the middle.
    Changed,
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("user", &self.user)
            .field("device", &self.device)
            .field("curve25519", &self.account.curve25519_key().to_base64())
            .field("sessions", &self.sessions.len())
            .field("message_keys", &self.message_keys.len())
            .finish_non_exhaustive()
    }
}

fn key32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

/// A device's published identity keys, parsed (not yet checked).
fn identity_keys(d: &pb::DeviceKeys) -> Result<(Ed25519PublicKey, Curve25519PublicKey), SealError> {
    let bad = |why| SealError::BadDevice {
        user: d.user_id,
        device: d.device_id,
        why,
    };
    let ed = key32(&d.ed25519)
        .and_then(|k| Ed25519PublicKey::from_slice(&k).ok())
        .ok_or(bad("not an Ed25519 key"))?;
    let curve = Curve25519PublicKey::from_slice(&d.curve25519).map_err(|_| bad("not a Curve25519 key"))?;
    Ok((ed, curve))
}

/// A device's published identity, its self-signature checked.
fn verified_identity(d: &pb::DeviceKeys) -> Result<(Ed25519PublicKey, Curve25519PublicKey), SealError> {
    let (ed, curve) = identity_keys(d)?;
    let bad = |why| SealError::BadDevice {
        user: d.user_id,
        device: d.device_id,
        why,
    };
    let msg = e2ee::device_keys_message(UserId(d.user_id), DeviceId(d.device_id), &d.ed25519, &d.curve25519);
    let sig = Ed25519Signature::from_slice(&d.signature).map_err(|_| bad("malformed signature"))?;
    ed.verify(&msg, &sig)
        .map_err(|_| bad("its keys are not signed by it"))?;
    Ok((ed, curve))
}

impl Crypto {
    /// A new device: a fresh Olm account, nothing published yet.
    pub fn new(user: UserId, device: DeviceId) -> Self {
        Crypto {
            user,
            device,
            account: Account::new(),
            identity_published: false,
            sessions: HashMap::new(),
            message_keys: BTreeMap::new(),
            covered: BTreeMap::new(),
            user_key: None,
            trusted_users: BTreeMap::new(),
            backup: None,
            backup_pending: BTreeSet::new(),
            unsaved: Vec::new(),
            verified: Default::default(),
            trusted: BTreeMap::new(),
        }
    }

    /// This device's user.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The server has this device's identity (and keys) since an upload it took.
    pub fn published(&self) -> bool {
        self.identity_published
    }

    /// This device's identity keys, self-signed (PROTOCOL.md §12.1).
    pub fn identity(&self) -> pb::DeviceKeys {
        let ed = self.account.ed25519_key().as_bytes().to_vec();
        let curve = self.account.curve25519_key().to_vec();
        let msg = e2ee::device_keys_message(self.user, self.device, &ed, &curve);
        pb::DeviceKeys {
            user_id: self.user.0,
            device_id: self.device.0,
            signature: self.account.sign(&msg).to_bytes().to_vec(),
            ed25519: ed,
            curve25519: curve,
            user_signature: Vec::new(),
        }
    }

    fn signed(&self, key: &Curve25519PublicKey) -> pb::OneTimeKey {
        let msg = e2ee::one_time_key_message(self.user, self.device, key.as_bytes());
        pb::OneTimeKey {
            public_key: key.to_vec(),
            signature: self.account.sign(&msg).to_bytes().to_vec(),
        }
    }

    /// What to publish, given the server's last word on this device's stock (`None`: it
    /// has said nothing yet): the identity until it is published, one-time keys up to
    /// [`KEEP_ONE_TIME_KEYS`], a new fallback key when the last one was used. Keys made
    /// earlier and not yet published are offered again rather than new ones. `None`
    /// when nothing is due.
    pub fn keys_to_upload(&mut self, counts: Option<&pb::KeyCounts>) -> Option<pb::UploadKeys> {
        let held = counts.map_or(0, |c| c.one_time_keys as usize);
        if self.account.one_time_keys().is_empty() && held < KEEP_ONE_TIME_KEYS {
            self.account.generate_one_time_keys(KEEP_ONE_TIME_KEYS - held);
        }
        let fallback_due = counts.is_none_or(|c| !c.fallback_unused);
        if self.account.fallback_key().is_empty() && fallback_due {
            self.account.generate_fallback_key();
        }
        let mut one_time: Vec<Curve25519PublicKey> = self.account.one_time_keys().into_values().collect();
        one_time.sort_by_key(|k| k.to_bytes());
        let upload = pb::UploadKeys {
            device_keys: (!self.identity_published).then(|| self.identity()),
            one_time_keys: one_time.iter().map(|k| self.signed(k)).collect(),
            fallback_key: self.account.fallback_key().values().next().map(|k| self.signed(k)),
        };
        let nothing = upload.device_keys.is_none() && upload.one_time_keys.is_empty() && upload.fallback_key.is_none();
        (!nothing).then_some(upload)
    }

    /// The server took the last [`Self::keys_to_upload`] (or already had it).
    pub fn uploaded(&mut self) {
        self.account.mark_keys_as_published();
        self.identity_published = true;
    }

    /// Seal `content` as message `client_msg_id` in `conversation` for `devices` — the
    /// conversation's list except this device — creating sessions from `claimed` keys
    /// where there is none. `random`: [`SEAL_RANDOM_BYTES`] fresh random bytes.
    pub fn seal(
        &mut self,
        conversation: ConversationId,
        client_msg_id: &str,
        content: &pb::SealedContent,
        devices: &[pb::DeviceKeys],
        claimed: &[pb::ClaimedKey],
        random: [u8; SEAL_RANDOM_BYTES],
    ) -> Result<pb::Envelope, SealError> {
        let targets: Vec<&pb::DeviceKeys> = devices
            .iter()
            .filter(|d| (d.user_id, d.device_id) != (self.user.0, self.device.0))
            .collect();
        if targets.is_empty() {
            return Err(SealError::NoRecipients);
        }
        let mut missing = Vec::new();
        let mut checked = Vec::with_capacity(targets.len());
        for d in &targets {
            let (ed, curve) = self.checked_identity(d)?;
            let has_session = self.sessions.get(curve.as_bytes()).is_some_and(|s| !s.is_empty());
            if !has_session {
                let claim = claimed.iter().find(|c| {
                    c.device.as_ref().is_some_and(|k| {
                        (k.user_id, k.device_id) == (d.user_id, d.device_id) && k.curve25519 == d.curve25519
                    })
                });
                let Some(claim) = claim else {
                    missing.push((*d).clone());
                    continue;
                };
                let session = self.outbound(d, &ed, &curve, claim)?;
                self.sessions.entry(curve.to_bytes()).or_default().insert(0, session);
            }
            checked.push((*d, ed));
        }
        if !missing.is_empty() {
            return Err(SealError::NeedKeys(missing));
        }
        let (fresh, nonce) = random.split_at(MESSAGE_KEY_BYTES);
        // Sealed again (after DEVICE_MISMATCH, or a retry of the same client message id):
        // the same message key, so whichever envelope the server keeps — this one, or an
        // earlier one it answers as a duplicate — opens with the key this device keeps.
        let id = (conversation.0, self.user.0, self.device.0, client_msg_id.to_owned());
        let key: [u8; MESSAGE_KEY_BYTES] = match self.message_keys.get(&id) {
            Some(kept) => *kept,
            None => fresh.try_into().expect("32 bytes"),
        };
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().expect("24 bytes");
        let aad = e2ee::content_aad(conversation, self.user, self.device, client_msg_id);
        let ciphertext = e2ee::seal_content(&key, &nonce, &aad, content);
        let my_ed = self.account.ed25519_key().as_bytes().to_vec();
        let mut keys = Vec::with_capacity(checked.len());
        for (d, ed) in checked {
            let grant = pb::KeyGrant {
                message_key: key.to_vec(),
                conversation_id: conversation.0,
                client_msg_id: client_msg_id.to_owned(),
                sender_ed25519: my_ed.clone(),
                recipient_ed25519: ed.as_bytes().to_vec(),
            };
            let session = self
                .sessions
                .get_mut(&key32(&d.curve25519).expect("checked above"))
                .and_then(|s| s.first_mut())
                .expect("a session for every checked device");
            let olm = session
                .encrypt(grant.encode_to_vec())
                .map_err(|_| SealError::BadDevice {
                    user: d.user_id,
                    device: d.device_id,
                    why: "its identity key is not usable",
                })?;
            let (olm_type, olm_body) = olm.to_parts();
            keys.push(pb::WrappedKey {
                user_id: d.user_id,
                device_id: d.device_id,
                identity_key: d.curve25519.clone(),
                olm_type: olm_type as u32,
                olm_body,
            });
        }
        self.keep(id, key);
        Ok(pb::Envelope {
            version: ENVELOPE_VERSION,
            sender_key: self.account.curve25519_key().to_vec(),
            nonce: nonce.to_vec(),
            ciphertext,
            keys,
            media_ids: content
                .body
                .iter()
                .flat_map(|b| b.attachments.iter().map(|a| a.media_id.clone()))
                .collect(),
        })
    }

    fn outbound(
        &self,
        d: &pb::DeviceKeys,
        ed: &Ed25519PublicKey,
        curve: &Curve25519PublicKey,
        claim: &pb::ClaimedKey,
    ) -> Result<Session, SealError> {
        let bad = |why| SealError::BadDevice {
            user: d.user_id,
            device: d.device_id,
            why,
        };
        let otk = claim.one_time_key.as_ref().ok_or(bad("a claim without a key"))?;
        let msg = e2ee::one_time_key_message(UserId(d.user_id), DeviceId(d.device_id), &otk.public_key);
        let sig = Ed25519Signature::from_slice(&otk.signature).map_err(|_| bad("malformed key signature"))?;
        ed.verify(&msg, &sig)
            .map_err(|_| bad("a claimed key it did not sign"))?;
        let otk = Curve25519PublicKey::from_slice(&otk.public_key).map_err(|_| bad("not a Curve25519 key"))?;
        self.account
            .create_outbound_session(SessionConfig::version_1(), *curve, otk)
            .map_err(|_| bad("its keys make no safe session"))
    }

    /// Forget the sessions with a device (its next message from us starts a new one).
    pub fn forget_sessions(&mut self, curve25519: &[u8]) {
        if let Some(k) = key32(curve25519) {
            self.sessions.remove(&k);
        }
    }

    /// This device kept the message key of this event (it sealed or opened it before):
    /// [`Self::open`] then needs neither the sender's keys nor Olm, and changes no state.
    pub fn has_message_key(&self, event: &pb::ConversationEvent) -> bool {
        message_ref(event).is_some_and(|id| self.message_keys.contains_key(&id))
    }

    /// Learn from an event whether it put this device (with its current identity key) into
    /// the conversation's device list — its creation, or a `DevicesChanged` that added it;
    /// true when that is news (the state then has something to write).
    pub fn note_covered(&mut self, event: &pb::ConversationEvent) -> bool {
        use pb::conversation_event::Body;
        let me = |d: &pb::DeviceKeys| {
            (d.user_id, d.device_id) == (self.user.0, self.device.0)
                && d.curve25519 == self.account.curve25519_key().as_bytes()
        };
        let added = match &event.body {
            Some(Body::Created(c)) => c.encrypted && c.devices.iter().any(me),
            Some(Body::DevicesChanged(d)) => d.added.iter().any(me),
            _ => false,
        };
        if !added || self.covered.contains_key(&event.conversation_id) {
            return false;
        }
        self.covered.insert(event.conversation_id, event.seq);
        true
    }

    /// The seq from which this device is in `conversation`'s device list, once it has seen
    /// the event that put it there: every message at or after it was sealed for this
    /// device; earlier ones open only with keys from the backup or another verified device
    /// of this user (§12.9, §12.11). `None`: not seen (yet).
    pub fn covered_from(&self, conversation: ConversationId) -> Option<crate::Seq> {
        self.covered.get(&conversation.0).map(|s| crate::Seq(*s))
    }

    /// Open an encrypted message event. `sender`: the sending device's keys as this
    /// device knows them (the conversation's list, or `GetDeviceKeys`); `None` if unknown.
    pub fn open(
        &mut self,
        event: &pb::ConversationEvent,
        sender: Option<&pb::DeviceKeys>,
    ) -> Result<pb::SealedContent, Undecryptable> {
        let Some(pb::conversation_event::Body::Message(m)) = &event.body else {
            return Err(Undecryptable::Malformed("not a message"));
        };
        let env = m
            .body
            .as_ref()
            .and_then(|b| b.encrypted.as_ref())
            .ok_or(Undecryptable::Malformed("no envelope"))?;
        if env.version != ENVELOPE_VERSION {
            return Err(Undecryptable::Malformed("unknown envelope version"));
        }
        let conv = ConversationId(event.conversation_id);
        let (su, sd) = (UserId(event.sender_user_id), DeviceId(event.sender_device_id));
        let aad = e2ee::content_aad(conv, su, sd, &m.client_msg_id);
        let id = message_ref(event).expect("a message event");
        if let Some(key) = self.message_keys.get(&id) {
            return e2ee::open_content(key, &env.nonce, &aad, &env.ciphertext).map_err(content);
        }
        let sender = sender
            .filter(|s| (s.user_id, s.device_id) == (su.0, sd.0) && s.curve25519 == env.sender_key)
            .ok_or(Undecryptable::UnknownSenderDevice)?;
        let sender_curve =
            Curve25519PublicKey::from_slice(&sender.curve25519).map_err(|_| Undecryptable::UnknownSenderDevice)?;
        let mine = self.account.curve25519_key().to_vec();
        let wrapped = env
            .keys
            .iter()
            .find(|k| (k.user_id, k.device_id) == (self.user.0, self.device.0) && k.identity_key == mine)
            .ok_or(Undecryptable::NotForThisDevice)?;
        let olm = OlmMessage::from_parts(wrapped.olm_type as usize, &wrapped.olm_body)
            .map_err(|_| Undecryptable::Malformed("not an Olm message"))?;
        let plain = self.olm_decrypt(sender_curve, &olm)?;
        let grant = pb::KeyGrant::decode(&plain[..]).map_err(|_| Undecryptable::Malformed("not a key grant"))?;
        let bound = grant.conversation_id == conv.0
            && grant.client_msg_id == m.client_msg_id
            && grant.sender_ed25519 == sender.ed25519
            && grant.recipient_ed25519 == self.account.ed25519_key().as_bytes();
        if !bound {
            return Err(Undecryptable::Binding);
        }
        let key: [u8; MESSAGE_KEY_BYTES] = grant
            .message_key
            .try_into()
            .map_err(|_| Undecryptable::Malformed("a message key is 32 bytes"))?;
        let content = e2ee::open_content(&key, &env.nonce, &aad, &env.ciphertext).map_err(content)?;
        self.keep(id, key);
        Ok(content)
    }

    fn olm_decrypt(&mut self, sender: Curve25519PublicKey, olm: &OlmMessage) -> Result<Vec<u8>, Undecryptable> {
        let sessions = self.sessions.entry(sender.to_bytes()).or_default();
        if let OlmMessage::PreKey(pre) = olm {
            // A later pre-key message of a session this device already made from one.
            if let Some(s) = sessions.iter_mut().find(|s| s.session_id() == pre.session_id()) {
                return s.decrypt(olm).map_err(|e| Undecryptable::Olm(e.to_string()));
            }
            let created = self
                .account
                .create_inbound_session(SessionConfig::version_1(), sender, pre)
                .map_err(|e| Undecryptable::Olm(e.to_string()))?;
            sessions.insert(0, created.session);
            sessions.truncate(SESSIONS_PER_DEVICE);
            return Ok(created.plaintext);
        }
        let mut diverged = false;
        let mut last = String::from("no session with the sending device");
        for s in sessions.iter_mut() {
            match s.decrypt(olm) {
                Ok(p) => return Ok(p),
                Err(e) => {
                    diverged |= matches!(e, DecryptionError::InvalidMAC(_));
                    last = e.to_string();
                }
            }
        }
        // Sessions that no longer agree heal by starting over (PROTOCOL.md §12.6); a
        // replay (its message key is used up) changes nothing.
        if diverged || sessions.is_empty() {
            self.sessions.remove(&sender.to_bytes());
        }
        Err(Undecryptable::Olm(last))
    }

    /// This device as a party to a verification.
    pub fn party(&self) -> verify::Party {
        verify::Party {
            user: self.user,
            device: self.device,
            ed25519: self.account.ed25519_key().as_bytes().to_vec(),
        }
    }

    /// A verification confirmed `peer` with the key it holds for it.
    pub fn mark_verified(&mut self, peer: &verify::Party) {
        self.trusted.insert((peer.user.0, peer.device.0), peer.ed25519.clone());
    }

    /// How far this device trusts `device`'s published identity.
    pub fn trust(&self, device: &pb::DeviceKeys) -> TrustLevel {
        match self.trusted.get(&(device.user_id, device.device_id)) {
            None => TrustLevel::Unverified,
            Some(k) if *k == device.ed25519 => TrustLevel::Verified,
            Some(_) => TrustLevel::Changed,
        }
    }

    /// [`verified_identity`], each distinct identity checked once per process.
    fn checked_identity(&mut self, d: &pb::DeviceKeys) -> Result<(Ed25519PublicKey, Curve25519PublicKey), SealError> {
        let mut id = Vec::with_capacity(16 + 128);
        id.extend(d.user_id.to_be_bytes());
        id.extend(d.device_id.to_be_bytes());
        for part in [&d.ed25519, &d.curve25519, &d.signature] {
            id.extend(part);
        }
        if self.verified.contains(&id) {
            return identity_keys(d);
        }
        let keys = verified_identity(d)?;
        self.verified.insert(id);
        Ok(keys)
    }

    /// Keep a message key (and queue it for the backup, if there is one).
    fn keep(&mut self, id: MessageRef, key: [u8; MESSAGE_KEY_BYTES]) {
        if self.message_keys.contains_key(&id) {
            return;
        }
        if self.backup.is_some() {
            self.backup_pending.insert(id.clone());
        }
        self.unsaved.push(id.clone());
        self.message_keys.insert(id, key);
    }

    /// The user's key backup as the server reports it (PROTOCOL.md §12.9). A new version
    /// queues every kept key for it; version 0 (none) stops backing up.
    pub fn set_backup(&mut self, b: &pb::KeyBackup) {
        if b.version == 0 {
            self.backup = None;
            self.backup_pending.clear();
            return;
        }
        if self.backup.as_ref().map(|(v, _)| *v) != Some(b.version) {
            self.backup = Some((b.version, b.public_key.clone()));
            self.backup_pending = self.message_keys.keys().cloned().collect();
        }
    }

    /// The backup version this device backs up to (0: none).
    pub fn backup_version(&self) -> u64 {
        self.backup.as_ref().map_or(0, |(v, _)| *v)
    }

    /// Kept keys waiting for the backup.
    pub fn backup_pending(&self) -> usize {
        self.backup_pending.len()
    }

    /// Up to `max` waiting keys sealed to the backup, as the request that stores them.
    pub fn backup_batch(&self, max: usize) -> Option<pb::PutBackupKeys> {
        let (version, public_key) = self.backup.as_ref()?;
        let keys: Vec<pb::BackupKey> = self
            .backup_pending
            .iter()
            .take(max)
            .filter_map(|id| {
                let key = self.message_keys.get(id)?;
                backup::seal_key(public_key, &backed_up(id), key)
            })
            .collect();
        (!keys.is_empty()).then_some(pb::PutBackupKeys {
            version: *version,
            keys,
        })
    }

    /// The server stored `batch`: those keys wait no more.
    pub fn backed_up(&mut self, batch: &pb::PutBackupKeys) {
        if batch.version != self.backup_version() {
            return;
        }
        for k in &batch.keys {
            self.backup_pending.remove(&(
                k.conversation_id,
                k.sender_user_id,
                k.sender_device_id,
                k.client_msg_id.clone(),
            ));
        }
    }

    /// Keep the message keys of a backup page, opened with the recovery key (checked
    /// against the backup first with [`backup::check`]); how many were new.
    pub fn restore(
        &mut self,
        recovery: &backup::RecoveryKey,
        keys: &[pb::BackupKey],
    ) -> Result<usize, backup::BackupError> {
        let mut opened = Vec::with_capacity(keys.len());
        for k in keys {
            opened.push(backup::open_key(recovery, k)?);
        }
        let mut new = 0;
        for (id, key) in opened {
            let id = (id.conversation.0, id.user.0, id.device.0, id.client_msg_id);
            if !self.message_keys.contains_key(&id) {
                self.unsaved.push(id.clone());
                self.message_keys.insert(id, key);
                new += 1;
            }
        }
        Ok(new)
    }
}

fn backed_up(id: &MessageRef) -> backup::BackedUp {
    backup::BackedUp {
        conversation: ConversationId(id.0),
        user: UserId(id.1),
        device: DeviceId(id.2),
        client_msg_id: id.3.clone(),
    }
}

/// The kept-key name of a message event.
fn message_ref(event: &pb::ConversationEvent) -> Option<MessageRef> {
    let Some(pb::conversation_event::Body::Message(m)) = &event.body else {
        return None;
    };
    Some((
        event.conversation_id,
        event.sender_user_id,
        event.sender_device_id,
        m.client_msg_id.clone(),
    ))
}

fn content(e: ContentError) -> Undecryptable {
    Undecryptable::Content(e.to_string())
}

pub mod backup;
pub mod conversations;
pub mod share;
mod state;
pub mod user_key;
pub mod verify;

pub use state::StateLog;

#[cfg(test)]
mod tests;
