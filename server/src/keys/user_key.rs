//! The user's signing key (PROTOCOL.md §12.12) as the server keeps it: the public half a
//! device published, which devices vouched for it, and its signatures over the user's
//! devices — every signature checked before it is kept, so a listing only ever carries
//! signatures that verify. The server cannot sign anything with it: it never sees the
//! secret.
use natter_protocol::e2ee::{self, PUBLIC_KEY_BYTES};
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::{DeviceId, ServerError, UserId};

use super::{bad, busy, verify, Keys, ATTEMPTS};
use crate::store::{StoreError, UserKeyRecord};

/// The wire form of a user's signing key.
pub fn wire(rec: &UserKeyRecord) -> pb::UserKey {
    pb::UserKey {
        ed25519: rec.ed25519.clone(),
        vouched_by: rec
            .vouched_by
            .iter()
            .map(|(device, signature)| pb::DeviceSignature {
                device_id: *device,
                signature: signature.clone(),
            })
            .collect(),
    }
}

impl Keys {
    /// The user's signing key, if a device published one.
    pub async fn user_key(&self, user: UserId) -> Result<Option<UserKeyRecord>, ServerError> {
        Ok(self.store.user_key(user).await?)
    }

    /// Change the user's key record with `f` (which checks, and may refuse), retried
    /// over concurrent writers.
    async fn change_user_key(
        &self,
        user: UserId,
        f: impl Fn(Option<UserKeyRecord>) -> Result<UserKeyRecord, ServerError>,
    ) -> Result<(), ServerError> {
        for _ in 0..ATTEMPTS {
            let current = self.store.user_key(user).await?;
            let version = current.as_ref().map_or(0, |r| r.version);
            let mut next = f(current)?;
            next.version = version + 1;
            match self.store.put_user_key(&next).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Changed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy())
    }

    /// `device` holds its user's signing key: the key becomes the user's if there is
    /// none (CONFLICT if there is another), with the device's vouch for it and the key's
    /// signature over the device, both checked.
    pub async fn publish_user_key(
        &self,
        user: UserId,
        device: DeviceId,
        r: &pb::PublishUserKey,
    ) -> Result<(), ServerError> {
        if r.ed25519.len() != PUBLIC_KEY_BYTES {
            return Err(bad(format!("a user key is {PUBLIC_KEY_BYTES} bytes")));
        }
        let me = self
            .store
            .key_state(user, device)
            .await?
            .ok_or_else(|| bad("publish this device's keys (UploadKeys) before a user key"))?;
        let vouch = e2ee::user_key_message(user, &r.ed25519);
        verify(
            &me.identity.ed25519,
            &vouch,
            &r.vouch,
            "the device's vouch for the user key",
        )?;
        let signed = e2ee::device_by_user_message(user, device, &me.identity.ed25519, &me.identity.curve25519);
        verify(
            &r.ed25519,
            &signed,
            &r.device_signature,
            "the user key's signature over the device",
        )?;
        self.change_user_key(user, |current| {
            let mut rec = match current {
                Some(rec) if rec.ed25519 != r.ed25519 => {
                    return Err(ServerError::new(
                        ErrorCode::Conflict,
                        "the user has another signing key",
                    ))
                }
                Some(rec) => rec,
                None => UserKeyRecord {
                    user,
                    ed25519: r.ed25519.clone(),
                    vouched_by: Default::default(),
                    signed: Default::default(),
                    version: 0,
                },
            };
            rec.vouched_by.insert(device.0, r.vouch.clone());
            rec.signed.insert(device.0, r.device_signature.clone());
            Ok(rec)
        })
        .await
    }

    /// The user key's signature over another device of the user, checked against the
    /// user's key and that device's published identity.
    pub async fn sign_device(&self, user: UserId, r: &pb::SignDevice) -> Result<(), ServerError> {
        let target = DeviceId(r.device_id);
        let Some(rec) = self.store.user_key(user).await? else {
            return Err(bad("the user has no signing key to sign with"));
        };
        let device = self
            .store
            .key_state(user, target)
            .await?
            .ok_or_else(|| bad(format!("device {} has published no keys", target.0)))?;
        let msg = e2ee::device_by_user_message(user, target, &device.identity.ed25519, &device.identity.curve25519);
        verify(
            &rec.ed25519,
            &msg,
            &r.signature,
            "the user key's signature over the device",
        )?;
        self.change_user_key(user, |current| {
            let mut rec = current.ok_or_else(|| bad("the user has no signing key to sign with"))?;
            rec.signed.insert(target.0, r.signature.clone());
            Ok(rec)
        })
        .await
    }
}
