//! Device verification in the browser (PROTOCOL.md §12.10), as natter-sdk's
//! `e2ee/verify.rs` does it natively: the client core's [`Verification`] does the SAS;
//! this relays its steps with `SendToDevice`, checks the other device's identity key
//! against the server's list, writes a verified device into the state before the app
//! hears "verified", and reports every step as a `verification` event. Two devices of
//! one user that verified each other share the message keys they keep (§12.11); the
//! shares that arrive are taken (the core refuses them from an unverified device). The
//! user's signing key (§12.12) is made or adopted on connect, signs a verified own device
//! and goes to it with the shared keys, and counts in `deviceTrust`.
use std::rc::Rc;

use natter_protocol::client::e2ee::share::ShareError;
use natter_protocol::client::e2ee::verify::{Outcome, Party, Verification};
use natter_protocol::client::e2ee::{SealError, TrustLevel};
use natter_protocol::client::ops;
use natter_protocol::pb;
use natter_protocol::session::{SessionEvent, VerificationState, VerificationUpdate};
use natter_protocol::{DeviceId, UserId};
use prost::Message as _;
use serde::Serialize;

use super::{emit, error, random, E2ee};
use crate::client::Inner;
use crate::view::JsError;

/// Times one key share step is sent again after `RATE_LIMITED`.
const SHARE_ATTEMPTS: usize = 20;

/// A device of a user as this device trusts it (what `deviceTrust()` resolves to).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceTrust {
    device_id: u64,
    /// The Ed25519 identity key, hex (what a verification compares).
    ed25519: String,
    /// "verified", "unverified" or "changed" (its key changed since it was verified).
    trust: &'static str,
}

fn no_such(txn: &str) -> JsError {
    error(format!("no verification {txn} under way"))
}

fn txn() -> String {
    hex::encode(random::<16>())
}

/// Where a step leaves a verification: whom to send what, what to tell the app.
struct Advanced {
    update: (String, UserId, DeviceId),
    peer: Party,
    send: Option<pb::VerificationMessage>,
    state: Option<VerificationState>,
}

fn tell(inner: &Inner, (txn, user_id, device_id): (String, UserId, DeviceId), state: VerificationState) {
    emit(
        inner,
        SessionEvent::Verification(VerificationUpdate {
            txn,
            user_id,
            device_id,
            state,
        }),
    );
}

impl E2ee {
    async fn keys_of(&self, inner: &Inner, user: UserId, device: DeviceId) -> Result<pb::DeviceKeys, JsError> {
        let devices = self.device_keys(inner, user.0).await?;
        devices
            .into_iter()
            .find(|d| d.device_id == device.0)
            .ok_or_else(|| error(format!("user {} has no device {} with keys", user.0, device.0)))
    }

    async fn me(&self) -> Result<Party, JsError> {
        self.wait_ready().await?;
        let state = self.state.lock().await;
        Ok(state.crypto.as_ref().ok_or_else(|| error("no device yet"))?.party())
    }

    async fn send_step(&self, inner: &Inner, to: &Party, msg: &pb::VerificationMessage) -> Result<(), JsError> {
        inner
            .call(ops::send_to_device(to.user.0, to.device.0, msg.encode_to_vec()))
            .await
    }

    /// Advance verification `txn` with `f` under the state's lock; a verified device is
    /// written before anyone hears of it; a finished verification leaves the table. The
    /// code is news only after the step that brought the keys (`keys_now`).
    async fn advance(
        &self,
        txn: &str,
        keys_now: bool,
        f: impl FnOnce(&mut Verification) -> Option<pb::VerificationMessage>,
    ) -> Result<Advanced, JsError> {
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        let v = state.verifications.get_mut(txn).ok_or_else(|| no_such(txn))?;
        let send = f(v);
        let news = match v.outcome() {
            Some(Outcome::Verified) => {
                if let Some(crypto) = state.crypto.as_mut() {
                    crypto.mark_verified(v.peer());
                    self.save(crypto).await?;
                }
                Some(VerificationState::Verified)
            }
            Some(Outcome::Cancelled(reason)) => Some(VerificationState::Cancelled(reason.clone())),
            None if !keys_now => None,
            None => v.sas().map(|code| VerificationState::Compare {
                emoji: code.emoji().into_iter().map(|(e, n)| (e.into(), n.into())).collect(),
                decimals: code.decimals,
            }),
        };
        let update = (v.txn().to_owned(), v.peer().user, v.peer().device);
        let peer = v.peer().clone();
        if v.outcome().is_some() {
            state.verifications.remove(txn);
        }
        Ok(Advanced {
            update,
            peer,
            send,
            state: news,
        })
    }

    /// Send what a step gave, then tell the app; a device of this user just verified
    /// gets this device's message keys (in a task of its own: the pump must not wait).
    async fn finish_step(self: &Rc<Self>, inner: &Rc<Inner>, a: Advanced) -> Result<(), JsError> {
        if let Some(msg) = &a.send {
            self.send_step(inner, &a.peer, msg).await?;
        }
        let Some(state) = a.state else {
            return Ok(());
        };
        let own = {
            let s = self.state.lock().await;
            s.crypto
                .as_ref()
                .is_some_and(|c| c.user() == a.peer.user && c.device() != a.peer.device)
        };
        if matches!(state, VerificationState::Verified) && own {
            let (me, inner, peer, txn) = (self.clone(), inner.clone(), a.peer.clone(), a.update.0.clone());
            wasm_bindgen_futures::spawn_local(async move {
                // Signed first, so the device is vouched for by the time it holds the key.
                if let Err(e) = me.sign_own(&inner, &peer).await {
                    crate::client::console_error(&format!("natter: signing a verified device failed: {}", e.message));
                }
                if let Err(e) = me.share_with(&inner, &peer, &txn).await {
                    crate::client::console_error(&format!("natter: sharing keys failed: {}", e.message));
                }
            });
        }
        tell(inner, a.update, state);
        Ok(())
    }

    /// Make, adopt or vouch for the user's signing key as the server lists it (§12.12): a
    /// key this device made is written before it is published.
    pub(crate) async fn ensure_user_key(&self, inner: &Inner) -> Result<(), JsError> {
        let Some(me) = self.state.lock().await.crypto.as_ref().map(|c| c.user()) else {
            return Ok(());
        };
        let Ok(listing) = inner.call(ops::user_devices(me.0)).await else {
            // Unknown on this connection: again on the next.
            return Ok(());
        };
        let publish = {
            let mut state = self.state.lock().await;
            let Some(crypto) = state.crypto.as_mut() else {
                return Ok(());
            };
            let held = crypto.user_key();
            let publish = crypto.user_key_to_publish(&listing);
            if publish.is_some() || crypto.user_key() != held {
                self.save(crypto).await?;
            }
            publish
        };
        if let Some(p) = publish {
            if let Err(e) = inner.call(ops::publish_user_key(p)).await {
                crate::client::console_error(&format!("natter: publishing the user key failed: {}", e.message));
            }
        }
        Ok(())
    }

    /// Sign a device of this user that this device just verified with the user's key, if
    /// this device holds it.
    async fn sign_own(&self, inner: &Inner, peer: &Party) -> Result<(), JsError> {
        let keys = self.keys_of(inner, peer.user, peer.device).await?;
        let signature = {
            let state = self.state.lock().await;
            state.crypto.as_ref().and_then(|c| c.sign_own_device(&keys))
        };
        match signature {
            Some(sig) => inner.call(ops::sign_device(peer.device.0, sig)).await,
            None => Ok(()),
        }
    }

    /// Send every message key this device keeps to `peer`, a device of its user it just
    /// verified (§12.11).
    async fn share_with(&self, inner: &Inner, peer: &Party, txn: &str) -> Result<(), JsError> {
        let keys = self.keys_of(inner, peer.user, peer.device).await?;
        let mut claimed = Vec::new();
        let steps = loop {
            let mut state = self.state.lock().await;
            let crypto = state.crypto.as_mut().ok_or_else(|| error("no device yet"))?;
            match crypto.share_keys(&keys, &claimed, txn) {
                Ok(steps) => {
                    self.save(crypto).await?;
                    break steps;
                }
                Err(ShareError::Seal(SealError::NeedKeys(_))) if claimed.is_empty() => {
                    drop(state);
                    claimed = inner.call(ops::claim_keys(peer.user.0, vec![peer.device.0])).await?;
                    if claimed.is_empty() {
                        return Err(error("the device has no one-time key left"));
                    }
                }
                Err(e) => return Err(error(e)),
            }
        };
        for step in &steps {
            let mut attempt = 0;
            loop {
                match self.send_step(inner, peer, step).await {
                    Err(e) if e.code == "RATE_LIMITED" && attempt < SHARE_ATTEMPTS => {
                        attempt += 1;
                        let wait = e.retry_after_ms.unwrap_or(100).max(10);
                        gloo_timers::future::TimeoutFuture::new(wait).await;
                    }
                    other => break other?,
                }
            }
        }
        Ok(())
    }

    /// Keys another device of this user shared: kept and written if this device verified
    /// it; what the app got undecryptable and can read now comes again, opened.
    async fn shared_keys(&self, inner: &Inner, from: (UserId, DeviceId), share: &pb::KeyShare) -> Result<(), JsError> {
        let keys = self.keys_of(inner, from.0, from.1).await?;
        let (new, got_user_key) = {
            let mut state = self.state.lock().await;
            let crypto = state.crypto.as_mut().ok_or_else(|| error("no device yet"))?;
            let held = crypto.user_key();
            let (new, _last) = crypto.accept_shared_keys(&keys, share).map_err(error)?;
            self.save(crypto).await?;
            (new, crypto.user_key() != held)
        };
        if new > 0 {
            self.reopen(inner).await;
        }
        // The user's key came with the share: vouch for it.
        if got_user_key {
            self.ensure_user_key(inner).await?;
        }
        Ok(())
    }

    /// Start verifying `device` of `user`; the transaction id.
    pub(crate) async fn verify_device(&self, inner: &Inner, user: UserId, device: DeviceId) -> Result<String, JsError> {
        let me = self.me().await?;
        let keys = self.keys_of(inner, user, device).await?;
        let peer = Party {
            user,
            device,
            ed25519: keys.ed25519,
        };
        let (v, start) = Verification::start(me, peer.clone(), txn());
        let id = v.txn().to_owned();
        self.state.lock().await.verifications.insert(id.clone(), v);
        self.send_step(inner, &peer, &start).await?;
        Ok(id)
    }

    /// Accept the other device's request.
    pub(crate) async fn accept(self: &Rc<Self>, inner: &Rc<Inner>, txn: &str) -> Result<(), JsError> {
        let mut refused = None;
        let a = self
            .advance(txn, false, |v| match v.accept() {
                Ok(key) => Some(key),
                Err(e) => {
                    refused = Some(e);
                    None
                }
            })
            .await?;
        if let Some(e) = refused {
            return Err(error(e));
        }
        self.finish_step(inner, a).await
    }

    /// The person compared the codes: `matches` or not.
    pub(crate) async fn confirm(self: &Rc<Self>, inner: &Rc<Inner>, txn: &str, matches: bool) -> Result<(), JsError> {
        let a = self
            .advance(txn, false, |v| {
                Some(v.confirm(matches).unwrap_or_else(|e| v.cancel_message(e.reason())))
            })
            .await?;
        self.finish_step(inner, a).await
    }

    /// Stop a verification.
    pub(crate) async fn cancel(&self, inner: &Inner, txn: &str) -> Result<(), JsError> {
        let v = self
            .state
            .lock()
            .await
            .verifications
            .remove(txn)
            .ok_or_else(|| no_such(txn))?;
        self.send_step(inner, v.peer(), &v.cancel_message("user")).await?;
        let update = (v.txn().to_owned(), v.peer().user, v.peer().device);
        tell(inner, update, VerificationState::Cancelled("user".into()));
        Ok(())
    }

    /// A device message from another device (the pump hands them here, in order).
    pub(crate) async fn on_to_device(self: &Rc<Self>, inner: &Rc<Inner>, t: pb::ToDevice) {
        if let Err(e) = self.step_from(inner, t).await {
            crate::client::console_error(&format!("natter: verification step failed: {}", e.message));
        }
    }

    async fn step_from(self: &Rc<Self>, inner: &Rc<Inner>, t: pb::ToDevice) -> Result<(), JsError> {
        let Ok(msg) = pb::VerificationMessage::decode(&t.payload[..]) else {
            return Ok(());
        };
        let from = (UserId(t.from_user_id), DeviceId(t.from_device_id));
        if let Some(pb::verification_message::Kind::KeyShare(share)) = &msg.kind {
            return self.shared_keys(inner, from, share).await;
        }
        let with = {
            let state = self.state.lock().await;
            state
                .verifications
                .get(&msg.txn)
                .map(|v| (v.peer().user, v.peer().device))
        };
        match with {
            // A step of ours must come from the device it is with.
            Some(with) if with != from => Ok(()),
            Some(_) => {
                let keys_now = matches!(msg.kind, Some(pb::verification_message::Kind::Key(_)));
                let a = self
                    .advance(&msg.txn, keys_now, |v| {
                        v.receive(&msg).unwrap_or_else(|e| Some(v.cancel_message(e.reason())))
                    })
                    .await?;
                self.finish_step(inner, a).await
            }
            None if matches!(msg.kind, Some(pb::verification_message::Kind::Start(_))) => {
                let me = self.me().await?;
                let keys = self.keys_of(inner, from.0, from.1).await?;
                let peer = Party {
                    user: from.0,
                    device: from.1,
                    ed25519: keys.ed25519,
                };
                if let Ok(v) = Verification::requested(me, peer, &msg) {
                    let update = (v.txn().to_owned(), v.peer().user, v.peer().device);
                    self.state.lock().await.verifications.insert(v.txn().to_owned(), v);
                    tell(inner, update, VerificationState::Requested);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// `user`'s devices with keys, and how far this device trusts each.
    pub(crate) async fn device_trust(&self, inner: &Inner, user: UserId) -> Result<Vec<DeviceTrust>, JsError> {
        self.me().await?;
        let listing = inner.call(ops::user_devices(user.0)).await?;
        let mut state = self.state.lock().await;
        let crypto = state.crypto.as_mut().ok_or_else(|| error("no device yet"))?;
        // The user's signing key counts (§12.12); a key trusted just now is written.
        let (levels, pinned) = crypto.trust_all(&listing);
        if pinned {
            self.save(crypto).await?;
        }
        Ok(listing
            .devices
            .into_iter()
            .zip(levels)
            .map(|(d, level)| DeviceTrust {
                device_id: d.device_id,
                trust: match level {
                    TrustLevel::Verified => "verified",
                    TrustLevel::Unverified => "unverified",
                    TrustLevel::Changed => "changed",
                },
                ed25519: hex::encode(&d.ed25519),
            })
            .collect())
    }
}
