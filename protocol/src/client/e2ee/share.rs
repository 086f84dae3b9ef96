//! Key sharing between two devices of one user once they verified each other (PROTOCOL.md
//! §12.11): every message key a device keeps, in Olm messages small enough for a device
//! message, and taking them in on the other side — only from a device of the same user
//! that this device verified, so neither the server nor a device added with the password
//! can hand it keys.
use prost::Message as _;
use vodozemac::olm::OlmMessage;

use super::{Crypto, SealError, TrustLevel, Undecryptable};
use crate::e2ee::MESSAGE_KEY_BYTES;
use crate::pb::{self, verification_message::Kind};

/// Bytes of encoded keys in one share: with the Olm message around them and the
/// `VerificationMessage` around that, well under `MAX_TO_DEVICE_BYTES`.
const SHARE_PLAINTEXT_BYTES: usize = 2_800;

/// Why keys could not be shared with a device or taken from one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// Keys go only between two devices of one user.
    #[error("keys are shared only between devices of one user")]
    NotOwnDevice,
    /// This device has not verified that device (or its key changed since).
    #[error("device {0} is not verified by this device")]
    NotVerified(u64),
    /// No session with the device yet (claim a key, [`SealError::NeedKeys`]) or its keys
    /// do not verify.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The Olm message does not open (replayed, altered, no session).
    #[error("the shared keys do not open: {0}")]
    Olm(Undecryptable),
    /// Opened, but not shared keys.
    #[error("malformed key share: {0}")]
    Malformed(&'static str),
}

impl Crypto {
    /// The steps of transaction `txn` that share every message key this device keeps with
    /// `peer` (another device of its user, verified), the last one marked `last` (one
    /// empty share when there are none). A session is made from `claimed` where there is
    /// none; without a claimed key that is [`SealError::NeedKeys`].
    pub fn share_keys(
        &mut self,
        peer: &pb::DeviceKeys,
        claimed: &[pb::ClaimedKey],
        txn: &str,
    ) -> Result<Vec<pb::VerificationMessage>, ShareError> {
        self.own_verified(peer)?;
        let (ed, curve) = self.checked_identity(peer)?;
        if self.sessions.get(curve.as_bytes()).is_none_or(|s| s.is_empty()) {
            let claim = claimed
                .iter()
                .find(|c| {
                    c.device.as_ref().is_some_and(|k| {
                        (k.user_id, k.device_id) == (peer.user_id, peer.device_id) && k.curve25519 == peer.curve25519
                    })
                })
                .ok_or_else(|| SealError::NeedKeys(vec![peer.clone()]))?;
            let session = self.outbound(peer, &ed, &curve, claim)?;
            self.sessions.entry(curve.to_bytes()).or_default().insert(0, session);
        }
        let mut batches = vec![pb::SharedKeys::default()];
        let mut size = 0;
        for ((conversation_id, sender_user_id, sender_device_id, client_msg_id), key) in &self.message_keys {
            let k = pb::SharedKey {
                conversation_id: *conversation_id,
                sender_user_id: *sender_user_id,
                sender_device_id: *sender_device_id,
                client_msg_id: client_msg_id.clone(),
                message_key: key.to_vec(),
            };
            let len = k.encoded_len() + 3;
            let batch = batches.last_mut().expect("one batch at least");
            if size + len > SHARE_PLAINTEXT_BYTES && !batch.keys.is_empty() {
                batches.push(pb::SharedKeys::default());
                size = 0;
            }
            size += len;
            batches.last_mut().expect("one batch at least").keys.push(k);
        }
        let last = batches.last_mut().expect("one batch at least");
        last.last = true;
        // The user's signing key goes along (§12.12): the other device can vouch for it
        // and sign this user's next devices too.
        last.user_key = self.user_key.map(|k| k.to_vec()).unwrap_or_default();
        let session = self
            .sessions
            .get_mut(curve.as_bytes())
            .and_then(|s| s.first_mut())
            .expect("a session made above");
        batches
            .into_iter()
            .map(|b| {
                let olm = session.encrypt(b.encode_to_vec()).map_err(|_| SealError::BadDevice {
                    user: peer.user_id,
                    device: peer.device_id,
                    why: "its identity key is not usable",
                })?;
                let (olm_type, olm_body) = olm.to_parts();
                Ok(pb::VerificationMessage {
                    txn: txn.to_owned(),
                    kind: Some(Kind::KeyShare(pb::KeyShare {
                        olm_type: olm_type as u32,
                        olm_body,
                    })),
                })
            })
            .collect()
    }

    /// Take in a share `from` another device of this user that this device verified:
    /// how many keys were new, and whether it was the sender's last share.
    pub fn accept_shared_keys(
        &mut self,
        from: &pb::DeviceKeys,
        share: &pb::KeyShare,
    ) -> Result<(usize, bool), ShareError> {
        self.own_verified(from)?;
        let (_, curve) = self.checked_identity(from)?;
        let olm = OlmMessage::from_parts(share.olm_type as usize, &share.olm_body)
            .map_err(|_| ShareError::Malformed("not an Olm message"))?;
        let plain = self.olm_decrypt(curve, &olm).map_err(ShareError::Olm)?;
        let shared = pb::SharedKeys::decode(&plain[..]).map_err(|_| ShareError::Malformed("not shared keys"))?;
        let mut keys = Vec::with_capacity(shared.keys.len());
        for k in shared.keys {
            let key: [u8; MESSAGE_KEY_BYTES] = k
                .message_key
                .as_slice()
                .try_into()
                .map_err(|_| ShareError::Malformed("a message key is 32 bytes"))?;
            keys.push((
                (k.conversation_id, k.sender_user_id, k.sender_device_id, k.client_msg_id),
                key,
            ));
        }
        let user_key: Option<[u8; 32]> = match shared.user_key.len() {
            0 => None,
            _ => Some(
                shared
                    .user_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| ShareError::Malformed("a user key is 32 bytes"))?,
            ),
        };
        let mut new = 0;
        for (id, key) in keys {
            if !self.message_keys.contains_key(&id) {
                self.keep(id, key);
                new += 1;
            }
        }
        if let Some(k) = user_key {
            self.user_key = Some(k);
        }
        Ok((new, shared.last))
    }

    fn own_verified(&self, d: &pb::DeviceKeys) -> Result<(), ShareError> {
        if d.user_id != self.user.0 || d.device_id == self.device.0 {
            return Err(ShareError::NotOwnDevice);
        }
        if self.trust(d) != TrustLevel::Verified {
            return Err(ShareError::NotVerified(d.device_id));
        }
        Ok(())
    }
}
