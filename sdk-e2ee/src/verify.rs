//! Device verification (PROTOCOL.md §12.10): the steps around the client core's
//! [`Verification`] — relayed to the other device with `SendToDevice`, the
//! other device's identity key as the server lists it, each step reported to the app as
//! a [`VerificationUpdate`], and a verified device kept in the state (written before the
//! app hears "verified"). Two devices of one user that verified each other then share
//! the message keys they keep (§12.11), and the app hears "verified" once this device
//! sent its keys and has the other's (or after [`SHARE_WAIT_MS`] without them). The user's signing key (§12.12) is made
//! or adopted on connect, signs a verified own device and goes to it with the shared keys.
use std::sync::Arc;

use natter_protocol::client::e2ee::share::ShareError;
use natter_protocol::client::e2ee::verify::{Outcome, Party, Verification};
use natter_protocol::client::e2ee::{SealError, TrustLevel};
use natter_protocol::client::ops;
use natter_protocol::pb;
use natter_protocol::session::{SessionEvent, VerificationState, VerificationUpdate};
use natter_protocol::{DeviceId, UserId};
use prost::Message as _;

use super::{random, E2eeError, Engine, Io};

/// A device of a user as this device trusts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTrust {
    /// Which.
    pub device_id: DeviceId,
    /// Its Ed25519 identity key (what a verification compares).
    pub ed25519: Vec<u8>,
    /// Verified, unverified, or changed since it was verified.
    pub trust: TrustLevel,
}

/// How long "verified" for one of the user's own devices waits for its keys (ms).
const SHARE_WAIT_MS: u32 = 30_000;
/// Times one key share step is sent again after `RATE_LIMITED`.
const SHARE_ATTEMPTS: usize = 20;

fn txn() -> String {
    hex::encode(random::<16>())
}

/// Which verification an update is about: transaction, user, device.
type Update = (String, UserId, DeviceId);

fn update(v: &Verification) -> Update {
    (v.txn().to_owned(), v.peer().user, v.peer().device)
}

/// What one step of a verification gave.
struct Advanced {
    to: Update,
    peer: Party,
    send: Option<pb::VerificationMessage>,
    state: Option<VerificationState>,
}

fn no_such(txn: &str) -> E2eeError {
    E2eeError::Verification(format!("no verification {txn} under way"))
}

fn share_error(e: ShareError) -> E2eeError {
    E2eeError::Verification(format!("key share: {e}"))
}

impl<I: Io> Engine<I> {
    /// The server's word for a device's identity.
    async fn party_of(&self, user: UserId, device: DeviceId) -> Result<Party, E2eeError> {
        let d = self.keys_of(user, device).await?;
        Ok(Party {
            user,
            device,
            ed25519: d.ed25519,
        })
    }

    async fn me(&self) -> Result<Party, E2eeError> {
        self.wait_ready().await?;
        let inner = self.inner.lock().await;
        let crypto = inner.crypto.as_ref().ok_or(E2eeError::NoDevice)?;
        Ok(crypto.party())
    }

    async fn send_step(&self, to: &Party, msg: &pb::VerificationMessage) -> Result<(), E2eeError> {
        Ok(self
            .io
            .call(ops::send_to_device(to.user.0, to.device.0, msg.encode_to_vec()))
            .await?)
    }

    fn tell(&self, to: Update, state: VerificationState) {
        self.io.emit(SessionEvent::Verification(VerificationUpdate {
            txn: to.0,
            user_id: to.1,
            device_id: to.2,
            state,
        }));
    }

    /// Advance verification `txn` with `f` under the state's lock, so a step from the
    /// other device and the person's answer never miss each other: what `f` returns to
    /// send, the other device, and where it now stands for the app. The code is news only
    /// after the step that brought the keys (`keys_now`); a verified device is kept (and
    /// written) before anyone hears of it; a finished verification leaves the table.
    async fn advance(
        &self,
        txn: &str,
        keys_now: bool,
        f: impl FnOnce(&mut Verification) -> Option<pb::VerificationMessage>,
    ) -> Result<Advanced, E2eeError> {
        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        let v = inner.verifications.get_mut(txn).ok_or_else(|| no_such(txn))?;
        let send = f(v);
        let state = match v.outcome() {
            Some(Outcome::Verified) => {
                if let Some(crypto) = inner.crypto.as_mut() {
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
        let (to, peer) = (update(v), v.peer().clone());
        if v.outcome().is_some() {
            inner.verifications.remove(txn);
        }
        Ok(Advanced { to, peer, send, state })
    }

    /// Send what a step gave, then tell the app. A device of this user just verified gets
    /// this device's keys first, and "verified" waits for its keys too.
    async fn finish_step(self: &Arc<Self>, a: Advanced) -> Result<(), E2eeError> {
        if let Some(msg) = &a.send {
            self.send_step(&a.peer, msg).await?;
        }
        let Some(state) = a.state.clone() else {
            return Ok(());
        };
        if matches!(state, VerificationState::Verified) && self.own_device(&a.peer).await {
            // A task of its own: a large key store takes many device messages, and the
            // event pump (which may be running this step) must not wait on them.
            let me = self.clone();
            self.io.spawn(async move { me.share_then_tell(a).await });
            return Ok(());
        }
        self.tell(a.to, state);
        Ok(())
    }

    /// Make, adopt or vouch for the user's signing key as the server lists it (§12.12): a
    /// key this device made is written before it is published.
    pub(crate) async fn ensure_user_key(&self) -> Result<(), E2eeError> {
        let me = match self.inner.lock().await.crypto.as_ref() {
            Some(c) => c.user(),
            None => return Ok(()),
        };
        let listing = match self.io.call(ops::user_devices(me.0)).await {
            Ok(l) => l,
            Err(e) => {
                self.io
                    .warn(&format!("the user's signing key is unknown on this connection: {e}"));
                return Ok(());
            }
        };
        let publish = {
            let mut inner = self.inner.lock().await;
            let Some(crypto) = inner.crypto.as_mut() else {
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
            if let Err(e) = self.io.call(ops::publish_user_key(p)).await {
                self.io.warn(&format!(
                    "publishing the user's signing key failed, again on the next connect: {e}"
                ));
            }
        }
        Ok(())
    }

    /// Sign a device of this user that this device just verified with the user's key, if
    /// this device holds it.
    async fn sign_own(&self, peer: &Party) -> Result<(), E2eeError> {
        let keys = self.keys_of(peer.user, peer.device).await?;
        let signature = {
            let inner = self.inner.lock().await;
            inner.crypto.as_ref().and_then(|c| c.sign_own_device(&keys))
        };
        if let Some(sig) = signature {
            self.io.call(ops::sign_device(peer.device.0, sig)).await?;
        }
        Ok(())
    }

    /// Share this device's keys with a device of its user it just verified, then tell the
    /// app "verified" once that device's keys are in too (or after [`SHARE_WAIT_MS`]).
    async fn share_then_tell(self: Arc<Self>, a: Advanced) {
        // Signed first, so the device is vouched for by the time it holds the key.
        if let Err(e) = self.sign_own(&a.peer).await {
            self.io
                .warn(&format!("signing a verified device of this user failed: {e}"));
        }
        if let Err(e) = self.share_with(&a.peer, &a.to.0).await {
            self.io
                .warn(&format!("sharing keys with a verified device of this user failed: {e}"));
        }
        let who = (a.peer.user.0, a.peer.device.0);
        {
            let mut inner = self.inner.lock().await;
            if !inner.shared_by.remove(&who) {
                inner.verified_pending.insert(who, a.to);
                drop(inner);
                self.io.sleep(SHARE_WAIT_MS).await;
                let pending = self.inner.lock().await.verified_pending.remove(&who);
                if let Some(to) = pending {
                    self.io
                        .warn(&format!("device {} verified, but its keys did not come", who.1));
                    self.tell(to, VerificationState::Verified);
                }
                return;
            }
        }
        self.tell(a.to, VerificationState::Verified);
    }

    /// Another device of this device's user.
    async fn own_device(&self, peer: &Party) -> bool {
        let inner = self.inner.lock().await;
        inner
            .crypto
            .as_ref()
            .is_some_and(|c| c.user() == peer.user && c.device() != peer.device)
    }

    /// The server's keys of one device.
    async fn keys_of(&self, user: UserId, device: DeviceId) -> Result<pb::DeviceKeys, E2eeError> {
        let devices = self.io.call(ops::device_keys(user.0)).await?;
        devices
            .into_iter()
            .find(|d| d.device_id == device.0)
            .ok_or_else(|| E2eeError::Verification(format!("{user:?} has no device {device:?} with keys")))
    }

    /// Send every message key this device keeps to `peer`, a device of its user it just
    /// verified (PROTOCOL.md §12.11); how many steps that took.
    async fn share_with(&self, peer: &Party, txn: &str) -> Result<usize, E2eeError> {
        let keys = self.keys_of(peer.user, peer.device).await?;
        let mut claimed = Vec::new();
        let steps = loop {
            let mut inner = self.inner.lock().await;
            let crypto = inner.crypto.as_mut().ok_or(E2eeError::NoDevice)?;
            match crypto.share_keys(&keys, &claimed, txn) {
                Ok(steps) => {
                    // A session made for it is written before anything is sent with it.
                    self.save(crypto).await?;
                    break steps;
                }
                Err(ShareError::Seal(SealError::NeedKeys(need))) if claimed.is_empty() => {
                    drop(inner);
                    claimed = self.io.call(ops::claim_keys(peer.user.0, vec![peer.device.0])).await?;
                    if claimed.is_empty() {
                        return Err(share_error(ShareError::Seal(SealError::NeedKeys(need))));
                    }
                }
                Err(e) => return Err(share_error(e)),
            }
        };
        for step in &steps {
            let mut attempt = 0;
            loop {
                match self.send_step(peer, step).await {
                    Err(e) if e.code() == Some(pb::ErrorCode::RateLimited) && attempt < SHARE_ATTEMPTS => {
                        attempt += 1;
                        let wait = match &e {
                            E2eeError::Request(natter_protocol::session::RequestError::Server(s)) => s.retry_after_ms,
                            _ => 100,
                        };
                        self.io.sleep(wait.max(10)).await;
                    }
                    other => break other?,
                }
            }
        }
        Ok(steps.len())
    }

    /// Keys another device of this user shared: kept (and written) if this device verified
    /// it, then what the app got undecryptable and can read now comes again, opened; the
    /// last share lets this device's "verified" for it through.
    async fn shared_keys(&self, from: (UserId, DeviceId), share: &pb::KeyShare) -> Result<(), E2eeError> {
        let who = (from.0 .0, from.1 .0);
        // A large key store comes in many shares: the sender's keys are asked once.
        let known = self.inner.lock().await.sharing.get(&who).cloned();
        let keys = match known {
            Some(keys) => keys,
            None => self.keys_of(from.0, from.1).await?,
        };
        let (new, tell, got_user_key) = {
            let mut guard = self.inner.lock().await;
            let inner = &mut *guard;
            let crypto = inner.crypto.as_mut().ok_or(E2eeError::NoDevice)?;
            let held = crypto.user_key();
            let (new, last) = crypto.accept_shared_keys(&keys, share).map_err(share_error)?;
            let got_user_key = crypto.user_key() != held;
            // The Olm session moved on: written even when no key was new.
            self.save(crypto).await?;
            if last {
                inner.sharing.remove(&who);
            } else {
                inner.sharing.insert(who, keys);
            }
            let tell = if last {
                let pending = inner.verified_pending.remove(&who);
                if pending.is_none() {
                    inner.shared_by.insert(who);
                }
                pending
            } else {
                None
            };
            (new, tell, got_user_key)
        };
        if new > 0 {
            self.reopen().await;
        }
        // The user's key came with the share: vouch for it (others who verified this
        // device then trust what the key signs).
        if got_user_key {
            self.ensure_user_key().await?;
        }
        if let Some(to) = tell {
            self.tell(to, VerificationState::Verified);
        }
        Ok(())
    }

    /// Start verifying `device` of `user`; the transaction id.
    pub async fn verify_device(&self, user: UserId, device: DeviceId) -> Result<String, E2eeError> {
        let me = self.me().await?;
        let peer = self.party_of(user, device).await?;
        let (v, start) = Verification::start(me, peer.clone(), txn());
        let id = v.txn().to_owned();
        self.inner.lock().await.verifications.insert(id.clone(), v);
        self.send_step(&peer, &start).await?;
        Ok(id)
    }

    /// Accept the other device's request.
    pub async fn accept_verification(self: &Arc<Self>, txn: &str) -> Result<(), E2eeError> {
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
            return Err(E2eeError::Verification(e.to_string()));
        }
        self.finish_step(a).await
    }

    /// The person compared the codes: `matches` or not.
    pub async fn confirm_verification(self: &Arc<Self>, txn: &str, matches: bool) -> Result<(), E2eeError> {
        let a = self
            .advance(txn, false, |v| {
                Some(match v.confirm(matches) {
                    Ok(m) => m,
                    Err(e) => v.cancel_message(e.reason()),
                })
            })
            .await?;
        self.finish_step(a).await
    }

    /// Stop a verification.
    pub async fn cancel_verification(&self, txn: &str) -> Result<(), E2eeError> {
        let v = self
            .inner
            .lock()
            .await
            .verifications
            .remove(txn)
            .ok_or_else(|| no_such(txn))?;
        let peer = v.peer().clone();
        self.send_step(&peer, &v.cancel_message("user")).await?;
        self.tell(update(&v), VerificationState::Cancelled("user".into()));
        Ok(())
    }

    /// A step from another device (the pump hands them here, in order).
    pub(crate) async fn on_to_device(self: &Arc<Self>, t: pb::ToDevice) {
        if let Err(e) = self.step_from(t).await {
            self.io.warn(&format!("verification step failed: {e}"));
        }
    }

    async fn step_from(self: &Arc<Self>, t: pb::ToDevice) -> Result<(), E2eeError> {
        let Ok(msg) = pb::VerificationMessage::decode(&t.payload[..]) else {
            return Ok(());
        };
        let from = (UserId(t.from_user_id), DeviceId(t.from_device_id));
        if let Some(pb::verification_message::Kind::KeyShare(share)) = &msg.kind {
            return self.shared_keys(from, share).await;
        }
        let with = {
            let inner = self.inner.lock().await;
            inner
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
                    .advance(&msg.txn, keys_now, |v| match v.receive(&msg) {
                        Ok(reply) => reply,
                        Err(e) => Some(v.cancel_message(e.reason())),
                    })
                    .await?;
                self.finish_step(a).await
            }
            None if matches!(msg.kind, Some(pb::verification_message::Kind::Start(_))) => {
                let me = self.me().await?;
                let peer = self.party_of(from.0, from.1).await?;
                match Verification::requested(me, peer, &msg) {
                    Ok(v) => {
                        let to = update(&v);
                        self.inner.lock().await.verifications.insert(v.txn().to_owned(), v);
                        self.tell(to, VerificationState::Requested);
                    }
                    Err(e) => self.io.warn(&format!("a malformed verification request: {e}")),
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// `user`'s devices with keys, and how far this device trusts each.
    pub async fn device_trust(&self, user: UserId) -> Result<Vec<DeviceTrust>, E2eeError> {
        self.me().await?;
        let listing = self.io.call(ops::user_devices(user.0)).await?;
        let mut inner = self.inner.lock().await;
        let crypto = inner.crypto.as_mut().ok_or(E2eeError::NoDevice)?;
        // The user's signing key counts (§12.12); a key trusted just now is written.
        let (levels, pinned) = crypto.trust_all(&listing);
        if pinned {
            self.save(crypto).await?;
        }
        Ok(listing
            .devices
            .into_iter()
            .zip(levels)
            .map(|(d, trust)| DeviceTrust {
                device_id: DeviceId(d.device_id),
                trust,
                ed25519: d.ed25519,
            })
            .collect())
    }
}
