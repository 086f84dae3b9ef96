//! Notifications for Kotlin, Swift and Python (PROTOCOL.md §13): this device's push
//! registrations on [`NatterClient`], and the functions a notification extension calls
//! without a client — make push keys once, register their public half with the app's APNs
//! or FCM token, and open each notification body with [`decrypt_notification`] from the
//! 49-byte key file.
use natter_sdk::{proto as pb, PushKeys};

use crate::client::{run, NatterClient};
use crate::error::NatterError;
pub use natter_protocol::client::model::{
    ConversationNotify, NotifyLevel, NotifySettings, PushNotification, PushProvider, PushRegistration,
    PushRegistrations,
};

/// The public half of push keys: what a registration carries.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PushPublicKeys {
    /// The P-256 public key, 65 bytes uncompressed.
    pub p256dh: Vec<u8>,
    /// The 16-byte auth secret.
    pub auth: Vec<u8>,
}

fn keys(bytes: &[u8]) -> Result<PushKeys, NatterError> {
    PushKeys::from_bytes(bytes).map_err(|e| NatterError::InvalidInput { detail: e.to_string() })
}

/// Fresh push keys as 49 bytes: keep them where the notification extension can read them
/// (an app group container on iOS, app storage on Android).
#[uniffi::export]
pub fn generate_push_keys() -> Vec<u8> {
    PushKeys::generate().to_bytes()
}

/// The public half of push keys made by [`generate_push_keys`].
#[uniffi::export]
pub fn push_public_keys(keys_file: Vec<u8>) -> Result<PushPublicKeys, NatterError> {
    let k = keys(&keys_file)?;
    Ok(PushPublicKeys {
        p256dh: k.public_key(),
        auth: k.auth().to_vec(),
    })
}

/// Open a notification's body (RFC 8291) with the device's push keys. Starts no client,
/// no runtime and no connection: made for an iOS Notification Service Extension or an
/// Android messaging service.
#[uniffi::export]
pub fn decrypt_notification(keys_file: Vec<u8>, body: Vec<u8>) -> Result<PushNotification, NatterError> {
    keys(&keys_file)?
        .decrypt(&body)
        .map_err(|e| NatterError::Decrypt { detail: e.to_string() })
}

/// [`decrypt_notification`], and for an encrypted conversation also open the sealed
/// message it carries (APNs, FCM and UnifiedPush carry it when it fits) with the device's
/// encryption state — the file at `encryption_state_path` and its 32-byte store key, as
/// given to `ConnectOptions` — into `preview`, with `fetch` false. Read-only, and still no
/// client: the extension never writes the app's state. A message that does not open
/// (or none carried) leaves `fetch` true: show "New message" and let the app fetch.
#[uniffi::export]
pub fn open_notification(
    keys_file: Vec<u8>,
    body: Vec<u8>,
    encryption_state_path: String,
    encryption_store_key: Vec<u8>,
) -> Result<PushNotification, NatterError> {
    let store_key: [u8; 32] = encryption_store_key.try_into().map_err(|_| NatterError::InvalidInput {
        detail: "the store key is 32 bytes".into(),
    })?;
    let state = std::fs::read(&encryption_state_path).map_err(|e| NatterError::InvalidInput {
        detail: format!("reading the encryption state {encryption_state_path}: {e}"),
    })?;
    keys(&keys_file)?
        .open(&body, &state, &store_key)
        .map_err(|e| NatterError::Decrypt { detail: e.to_string() })
}

#[uniffi::export]
impl NatterClient {
    /// Register this device's push target (replacing its earlier one): the push service
    /// URL (Web Push, UnifiedPush) or the APNs/FCM token, with the keys notifications are
    /// encrypted to (from [`generate_push_keys`], or a Web Push subscription's).
    pub async fn register_push(
        &self,
        provider: PushProvider,
        endpoint: String,
        keys: PushPublicKeys,
        apns_topic: String,
        apns_sandbox: bool,
    ) -> Result<PushRegistrations, NatterError> {
        let c = self.inner.clone();
        let target = pb::PushTarget {
            provider: pb::PushProvider::from(provider) as i32,
            endpoint,
            p256dh: keys.p256dh,
            auth: keys.auth,
            apns_topic,
            apns_sandbox,
        };
        run(async move { c.register_push(target).await }).await
    }

    /// This device's registrations and the server's VAPID key.
    pub async fn list_push(&self) -> Result<PushRegistrations, NatterError> {
        let c = self.inner.clone();
        run(async move { c.list_push().await }).await
    }

    /// The user's notification rules.
    pub async fn notify_settings(&self) -> Result<NotifySettings, NatterError> {
        let c = self.inner.clone();
        run(async move { c.notify_settings().await }).await
    }

    /// Replace the user's notification rules (level, mutes, do-not-disturb hours in an
    /// IANA time zone, per-conversation rules).
    pub async fn set_notify_settings(&self, settings: NotifySettings) -> Result<NotifySettings, NatterError> {
        let c = self.inner.clone();
        run(async move { c.set_notify_settings(settings.into()).await }).await
    }

    /// Remove one of this device's registrations.
    pub async fn remove_push(&self, registration_id: String) -> Result<PushRegistrations, NatterError> {
        let c = self.inner.clone();
        run(async move { c.remove_push(&registration_id).await }).await
    }
}
