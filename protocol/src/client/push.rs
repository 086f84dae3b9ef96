//! A device's side of notifications (PROTOCOL.md §13): its push keys (a P-256 key pair and
//! a 16-byte auth secret, RFC 8291), the target it registers, and decrypting a
//! notification's payload. Every provider (Web Push, UnifiedPush, APNs, FCM) carries the
//! same encrypted body, so an app's notification extension opens it the same way. Needs
//! no client: a notification service extension keeps the keys in a small file
//! ([`PushKeys::to_bytes`]) and calls [`PushKeys::decrypt`].
use prost::Message;
use web_push_native::p256::elliptic_curve::rand_core::OsRng;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;
use web_push_native::p256::SecretKey;
use web_push_native::Auth;

use crate::client::model::PushNotification;
use crate::pb;

/// The key file's first byte: its format.
const FORMAT: u8 = 1;

/// What went wrong on the device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    /// A key file that is not one of ours (wrong length, format or key).
    #[error("malformed push keys")]
    MalformedKeys,
    /// The body does not decrypt with these keys (another device's, or altered).
    #[error("the notification does not decrypt with this device's push keys")]
    Decrypt,
    /// It decrypts, but is not a natter payload.
    #[error("the notification is not a natter payload")]
    Payload,
    /// The device's encryption state does not open with the store key given (or is not
    /// a state this version reads).
    #[error("the encryption state does not open with this store key")]
    State,
}

/// The longest preview opened from a sealed event, in characters (as the server's).
pub const PREVIEW_CHARS: usize = 160;

/// A device's push keys. Secret: `Debug` shows only the public key.
#[derive(Clone)]
pub struct PushKeys {
    secret: SecretKey,
    auth: [u8; 16],
}

impl std::fmt::Debug for PushKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushKeys")
            .field("public", &hex_prefix(&self.public_key()))
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect::<String>() + "…"
}

impl PushKeys {
    /// Fresh keys from the system's randomness.
    pub fn generate() -> Self {
        let mut auth = [0u8; 16];
        rand_fill(&mut auth);
        PushKeys {
            secret: SecretKey::random(&mut OsRng),
            auth,
        }
    }

    /// Keys from their parts: the P-256 private scalar (32 bytes) and the auth secret.
    pub fn from_parts(secret: &[u8], auth: &[u8]) -> Result<Self, PushError> {
        Ok(PushKeys {
            secret: SecretKey::from_slice(secret).map_err(|_| PushError::MalformedKeys)?,
            auth: auth.try_into().map_err(|_| PushError::MalformedKeys)?,
        })
    }

    /// Keys read back from [`PushKeys::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, PushError> {
        match b {
            [FORMAT, rest @ ..] if rest.len() == 48 => Self::from_parts(&rest[..32], &rest[32..]),
            _ => Err(PushError::MalformedKeys),
        }
    }

    /// 49 bytes to keep on the device (a file the notification extension can read).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        out.extend_from_slice(&self.secret.to_bytes());
        out.extend_from_slice(&self.auth);
        out
    }

    /// The public key, 65 bytes uncompressed (a target's `p256dh`).
    pub fn public_key(&self) -> Vec<u8> {
        self.secret.public_key().to_encoded_point(false).as_bytes().to_vec()
    }

    /// The auth secret (a target's `auth`).
    pub fn auth(&self) -> [u8; 16] {
        self.auth
    }

    /// The target to register for `provider` at `endpoint` (a URL, or an APNs/FCM token),
    /// with these keys.
    pub fn target(&self, provider: pb::PushProvider, endpoint: &str) -> pb::PushTarget {
        pb::PushTarget {
            provider: provider as i32,
            endpoint: endpoint.into(),
            p256dh: self.public_key(),
            auth: self.auth.to_vec(),
            ..Default::default()
        }
    }

    /// Decrypt a notification's body (RFC 8291 aes128gcm) to bytes. The body may also be
    /// given as the base64 text APNs and FCM carry (the `n` field, PROTOCOL.md §13.4).
    pub fn decrypt_bytes(&self, body: &[u8]) -> Result<Vec<u8>, PushError> {
        let open = |b: Vec<u8>| {
            web_push_native::decrypt(b, &self.secret, &Auth::clone_from_slice(&self.auth))
                .map_err(|_| PushError::Decrypt)
        };
        match open(body.to_vec()) {
            Err(e) => base64_text(body).map_or(Err(e), open),
            ok => ok,
        }
    }

    /// Decrypt a notification's body to what it says: protobuf for APNs, FCM and
    /// UnifiedPush, JSON for Web Push (PROTOCOL.md §13.3).
    pub fn decrypt(&self, body: &[u8]) -> Result<PushNotification, PushError> {
        payload(&self.decrypt_bytes(body)?)
    }

    /// [`PushKeys::decrypt`], and if the notification carries a sealed event, open it with
    /// the device's encryption state (the SDK's state file and its store key) into
    /// `preview`, with `fetch` false — what a notification extension does, with no client
    /// and no connection (PROTOCOL.md §13.3). Read-only: the state is not written back
    /// (the app opens the event again from its own state, which a copy's ratchet step does
    /// not disturb). An event that does not open leaves `fetch` true.
    #[cfg(feature = "e2ee")]
    pub fn open(&self, body: &[u8], state: &[u8], store_key: &[u8; 32]) -> Result<PushNotification, PushError> {
        let plain = self.decrypt_bytes(body)?;
        let mut n = payload(&plain)?;
        if plain.first() == Some(&b'{') || n.event.is_empty() {
            return Ok(n);
        }
        let p = pb::PushPayload::decode(&plain[..]).map_err(|_| PushError::Payload)?;
        let event = pb::ConversationEvent::decode(&p.event[..]).map_err(|_| PushError::Payload)?;
        let mut crypto = crate::client::e2ee::Crypto::load(store_key, state).map_err(|_| PushError::State)?;
        if let Ok(content) = crypto.open(&event, p.sender_device.as_ref()) {
            let text = content.body.map(|b| b.text).unwrap_or_default();
            n.preview = text.chars().take(PREVIEW_CHARS).collect();
            n.fetch = false;
        }
        Ok(n)
    }
}

/// A decrypted payload, in either of its encodings.
pub fn payload(plain: &[u8]) -> Result<PushNotification, PushError> {
    if plain.first() == Some(&b'{') {
        return serde_json::from_slice(plain).map_err(|_| PushError::Payload);
    }
    pb::PushPayload::decode(plain)
        .map(Into::into)
        .map_err(|_| PushError::Payload)
}

/// `b` read as base64 text (standard or URL-safe, padded or not), if it is.
fn base64_text(b: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(b).ok()?.trim().trim_end_matches('=');
    let e = base64::engine::general_purpose::STANDARD_NO_PAD;
    e.decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .ok()
}

fn rand_fill(b: &mut [u8]) {
    use web_push_native::p256::elliptic_curve::rand_core::RngCore;
    OsRng.fill_bytes(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn vector(name: &str) -> Vec<u8> {
        let text = include_str!("../../../spec/vectors/webpush.txt");
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} in the vector file"));
        if name == "plaintext" {
            return line.as_bytes().to_vec();
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(line).unwrap()
    }

    #[test]
    fn the_rfc_8291_appendix_message_decrypts() {
        let keys = PushKeys::from_parts(&vector("ua_private"), &vector("auth_secret")).unwrap();
        assert_eq!(keys.public_key(), vector("ua_public"));
        assert_eq!(keys.decrypt_bytes(&vector("body")).unwrap(), vector("plaintext"));
        let mut altered = vector("body");
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(keys.decrypt_bytes(&altered), Err(PushError::Decrypt));
        let other = PushKeys::generate();
        assert_eq!(other.decrypt_bytes(&vector("body")), Err(PushError::Decrypt));
    }

    #[test]
    fn keys_round_trip_through_their_file_and_open_what_was_sealed_to_them() {
        let keys = PushKeys::generate();
        let back = PushKeys::from_bytes(&keys.to_bytes()).unwrap();
        assert_eq!(back.public_key(), keys.public_key());
        assert_eq!(back.auth(), keys.auth());
        assert!(
            !format!("{keys:?}").contains(&format!("{:?}", keys.auth)),
            "Debug hides the secret"
        );
        let payload = pb::PushPayload {
            conversation_id: 9,
            seq: 4,
            preview: "hi".into(),
            ..Default::default()
        };
        let public = web_push_native::p256::PublicKey::from_sec1_bytes(&keys.public_key()).unwrap();
        let body =
            web_push_native::encrypt(payload.encode_to_vec(), &public, &Auth::clone_from_slice(&keys.auth())).unwrap();
        assert_eq!(back.decrypt(&body).unwrap(), PushNotification::from(payload.clone()));
        // APNs and FCM carry the body as base64 text.
        let text = base64::engine::general_purpose::STANDARD.encode(&body);
        assert_eq!(
            back.decrypt(text.as_bytes()).unwrap(),
            PushNotification::from(payload.clone())
        );
        // Web Push carries JSON, padded with spaces.
        let mut json = serde_json::to_vec(&PushNotification::from(payload.clone())).unwrap();
        json.resize(300, b' ');
        let body = web_push_native::encrypt(json, &public, &Auth::clone_from_slice(&keys.auth())).unwrap();
        assert_eq!(back.decrypt(&body).unwrap(), PushNotification::from(payload));
        assert_eq!(
            PushKeys::from_bytes(&[FORMAT; 10]).unwrap_err(),
            PushError::MalformedKeys
        );
        assert_eq!(PushKeys::from_bytes(&[2; 49]).unwrap_err(), PushError::MalformedKeys);
        assert_eq!(
            keys.decrypt(
                &web_push_native::encrypt(vec![0xff; 8], &public, &Auth::clone_from_slice(&keys.auth())).unwrap()
            ),
            Err(PushError::Payload)
        );
    }
}
