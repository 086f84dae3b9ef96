//! The authentication phase's requests (PROTOCOL.md §4–§5.1, §7): register, login,
//! authenticate (with resume or a fresh session and cursor sync), and the device requests
//! of an authenticated connection (logout, list devices). `establish` is the one
//! transition from [`Phase::Unauthenticated`] to [`Phase::Authenticated`].
use std::collections::HashMap;

use natter_protocol::pb::{self, response::Result as Res, ErrorCode};
use natter_protocol::{limits, validate, ConversationId, DeviceId, Seq, ServerError, UserId};

use super::delivery::deliver;
use super::{Authed, Close, Conn, Phase, Transport};
use crate::api;
use crate::clock::now_ms;
use crate::conversation::Actor;
use crate::security::auth;

impl<T: Transport> Conn<T> {
    fn passwords_on(&self) -> Result<(), ServerError> {
        if self.shared.ctx.logins.passwords {
            Ok(())
        } else {
            Err(ServerError::new(
                ErrorCode::Forbidden,
                "password logins are off on this server: log in with a product token",
            ))
        }
    }

    pub(super) async fn register(&self, r: pb::Register) -> Result<Res, ServerError> {
        self.passwords_on()?;
        self.shared.ctx.rates.register(self.transport.peer_ip())?;
        validate::username(&r.username)?;
        validate::password(&r.password)?;
        let pw = r.password;
        let cost = self.shared.ctx.password_cost;
        let hash = tokio::task::spawn_blocking(move || auth::hash_password_with(&pw, cost))
            .await
            .map_err(|e| crate::error::internal(&e))?;
        let id = self
            .shared
            .ctx
            .store
            .create_user(&r.username, &hash, now_ms())
            .await
            .map_err(ServerError::from)?;
        Ok(Res::Register(pb::RegisterOk { user_id: id.0 }))
    }

    pub(super) async fn login(&mut self, r: pb::Login) -> Result<Res, ServerError> {
        if matches!(self.phase, Phase::Authenticated(_)) {
            return Err(ServerError::new(ErrorCode::Conflict, "already authenticated"));
        }
        self.passwords_on()?;
        validate::username(&r.username)?;
        validate::password(&r.password)?;
        // Counted before the password is checked: brute force meets the limit either way.
        self.shared.ctx.rates.login(self.transport.peer_ip(), &r.username)?;
        let device_name = if r.device_name.is_empty() {
            "unnamed device".to_string()
        } else {
            r.device_name
        };
        validate::name(&device_name)?;
        let user = self
            .shared
            .ctx
            .store
            .user_by_name(&r.username)
            .await
            .map_err(ServerError::from)?;
        let hash = user.as_ref().map_or_else(
            || auth::dummy_hash(self.shared.ctx.password_cost),
            |u| u.password_hash.clone(),
        );
        let pw = r.password;
        let ok = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &pw))
            .await
            .unwrap_or(false);
        // A deleted account answers as if it never was; a deactivated one says so.
        let refused = match &user {
            Some(u) if ok => crate::api::privacy::refusal(&self.shared.ctx, u.id).await?,
            _ => None,
        };
        if let Some(e) = refused.as_ref().filter(|e| e.code == ErrorCode::Forbidden) {
            return Err(e.clone());
        }
        let user = match user {
            Some(u) if ok && refused.is_none() => u,
            _ => {
                return Err(ServerError::new(
                    ErrorCode::InvalidCredentials,
                    "wrong username or password",
                ))
            }
        };
        // A new device would be one connection too many: refuse before creating it.
        self.check_user_connections(user.id, DeviceId(0))?;
        let (device, token) = self.new_device(user.id, &user.username, &device_name).await?;
        let session = self.establish(user.id, user.username, device, "", &[]).await?;
        Ok(Res::Login(pb::LoginOk {
            user_id: user.id.0,
            device_id: device.0,
            access_token: token,
            session: Some(session),
        }))
    }

    /// Log in with a product token (PROTOCOL.md §5.13): the subject's user (made on first
    /// use), a new device bound to the subject until the token's `exp`.
    pub(super) async fn token_login(&mut self, t: pb::TokenLogin) -> Result<Res, ServerError> {
        if matches!(self.phase, Phase::Authenticated(_)) {
            return Err(ServerError::new(ErrorCode::Conflict, "already authenticated"));
        }
        let ctx = &self.shared.ctx;
        if !ctx.logins.tokens.enabled() {
            return Err(ServerError::new(
                ErrorCode::Forbidden,
                "token logins are off on this server (no token issuer is configured)",
            ));
        }
        if t.token.is_empty() || t.token.len() > limits::MAX_PRODUCT_TOKEN_BYTES {
            return Err(ServerError::new(
                ErrorCode::InvalidToken,
                "a product token is 1-8192 bytes",
            ));
        }
        let device_name = if t.device_name.is_empty() {
            "unnamed device".to_string()
        } else {
            t.device_name
        };
        validate::name(&device_name)?;
        ctx.rates.token_login(self.transport.peer_ip())?;
        let claims = ctx.logins.tokens.verify(&t.token).await?;
        let who = api::accounts::product_user(ctx, &claims, now_ms()).await?;
        if let Some(e) = api::privacy::refusal(ctx, who.user).await? {
            return Err(e);
        }
        self.check_user_connections(who.user, DeviceId(0))?;
        let (device, token) = self.new_device(who.user, &who.username, &device_name).await?;
        api::accounts::bind(&self.shared.ctx, device, &claims).await?;
        let mut session = self.establish(who.user, who.username, device, "", &[]).await?;
        session.token_expires_at_ms = claims.expires_ms;
        self.watch_token(claims.expires_ms);
        Ok(Res::Login(pb::LoginOk {
            user_id: who.user.0,
            device_id: device.0,
            access_token: token,
            session: Some(session),
        }))
    }

    /// A new device of `user` and its access token (shown once; the store keeps its hash).
    async fn new_device(&self, user: UserId, username: &str, name: &str) -> Result<(DeviceId, String), ServerError> {
        let token = auth::new_token("nt_");
        let device = self
            .shared
            .ctx
            .store
            .create_device(user, username, name, auth::token_hash(&token), now_ms())
            .await?;
        Ok((device, token))
    }

    /// Renew this device's product token (PROTOCOL.md §5.13).
    pub(super) async fn refresh_token(&mut self, r: pb::RefreshToken, actor: &Actor) -> Result<Res, ServerError> {
        let ctx = &self.shared.ctx;
        let bound = api::accounts::binding(ctx, actor.device).await?.ok_or_else(|| {
            ServerError::new(
                ErrorCode::BadRequest,
                "this device logged in with a password: it has no product token to renew",
            )
        })?;
        if r.token.is_empty() || r.token.len() > limits::MAX_PRODUCT_TOKEN_BYTES {
            return Err(ServerError::new(
                ErrorCode::InvalidToken,
                "a product token is 1-8192 bytes",
            ));
        }
        let claims = ctx.logins.tokens.verify(&r.token).await?;
        let expires_at_ms = api::accounts::renew(ctx, actor.device, &bound, &claims).await?;
        self.watch_token(expires_at_ms);
        Ok(Res::TokenRefreshed(pb::TokenRefreshed { expires_at_ms }))
    }

    pub(super) async fn authenticate(&mut self, a: pb::Authenticate) -> Result<Res, ServerError> {
        if matches!(self.phase, Phase::Authenticated(_)) {
            return Err(ServerError::new(ErrorCode::Conflict, "already authenticated"));
        }
        if a.access_token.is_empty() || a.access_token.len() > limits::MAX_TOKEN_BYTES {
            return Err(ServerError::new(ErrorCode::Unauthenticated, "malformed token"));
        }
        // A resume token is only a hint: one that cannot name a session (too long) means a
        // fresh session with cursor sync, never a refused login.
        let resume_token = if a.resume_token.len() > limits::MAX_TOKEN_BYTES {
            ""
        } else {
            a.resume_token.as_str()
        };
        validate::count("cursors", a.cursors.len(), limits::MAX_CURSORS)?;
        let device = self
            .shared
            .ctx
            .store
            .device_by_token(auth::token_hash(&a.access_token))
            .await
            .map_err(ServerError::from)?
            .ok_or_else(|| ServerError::new(ErrorCode::Unauthenticated, "unknown or revoked token"))?;
        // A device a product token made holds only as long as its last token (§5.13).
        let ctx = &self.shared.ctx;
        let expires = match api::accounts::binding(ctx, device.id).await? {
            None => None,
            Some(bound) => {
                // A fresh token renews the binding. One that does not check out is only
                // an error once the binding has run out: a login that still holds is
                // never lost to a bad token.
                let renewed = if a.product_token.is_empty() {
                    Err(ServerError::new(
                        ErrorCode::TokenExpired,
                        "this device's product token has expired: authenticate with a fresh one",
                    ))
                } else if a.product_token.len() > limits::MAX_PRODUCT_TOKEN_BYTES {
                    Err(ServerError::new(
                        ErrorCode::InvalidToken,
                        "a product token is 1-8192 bytes",
                    ))
                } else {
                    match ctx.logins.tokens.verify(&a.product_token).await {
                        Ok(claims) => api::accounts::renew(ctx, device.id, &bound, &claims).await,
                        Err(e) => Err(e.into()),
                    }
                };
                match renewed {
                    Ok(until) => Some(until),
                    Err(_) if now_ms() <= bound.expires_ms + ctx.logins.leeway_ms => Some(bound.expires_ms),
                    Err(e) => return Err(e),
                }
            }
        };
        let mut ok = self
            .establish(device.user, device.username, device.id, resume_token, &a.cursors)
            .await?;
        if let Some(at) = expires {
            ok.token_expires_at_ms = at;
            self.watch_token(at);
        }
        Ok(Res::Auth(ok))
    }

    /// The per-user connection limit, counting the user's other devices.
    fn check_user_connections(&self, user: UserId, device: DeviceId) -> Result<(), ServerError> {
        let max = self.shared.config.max_per_user;
        if self.shared.hub.attached_elsewhere(user, device) >= max {
            return Err(ServerError::new(
                ErrorCode::LimitExceeded,
                format!("this account already has {max} connections open"),
            ));
        }
        Ok(())
    }

    /// Resume the session if the token allows, else open a fresh one with cursor sync
    /// (PROTOCOL.md §7). The session is attached before the conversation list is read, so
    /// nothing committed in between is missed.
    async fn establish(
        &mut self,
        user: UserId,
        username: String,
        device: DeviceId,
        resume_token: &str,
        cursors: &[pb::Cursor],
    ) -> Result<pb::AuthOk, ServerError> {
        self.check_user_connections(user, device)?;
        if let Some(cluster) = &self.shared.ctx.cluster {
            // Before the session starts: events committed on other nodes from now on are
            // routed here, so none falls between the cursor sync and live delivery.
            cluster
                .attach(user, pb::PresenceState::Online)
                .await
                .map_err(|e| crate::error::internal(&e))?;
            // Where the device is, so other nodes do not notify it (PROTOCOL.md §13.2).
            cluster
                .attach_device(user, device)
                .await
                .map_err(|e| crate::error::internal(&e))?;
        }
        let hub = &self.shared.hub;
        let resumed = if resume_token.is_empty() {
            None
        } else {
            let map: HashMap<ConversationId, Seq> = cursors
                .iter()
                .map(|c| (ConversationId(c.conversation_id), Seq(c.seq)))
                .collect();
            hub.resume(resume_token, user, device, &map, self.conn_id)
        };
        // A reconnect's outcome: resumed with a replay, or a fresh session syncing by
        // cursor (its token expired or unknown, or none given with cursors to sync from).
        let outcome = match (&resumed, resume_token.is_empty()) {
            (Some(_), _) => Some("replay"),
            (None, false) => Some("expired"),
            (None, true) if !cursors.is_empty() => Some("cursor_sync"),
            (None, true) => None,
        };
        if let Some(outcome) = outcome {
            let m = &self.shared.ctx.metrics;
            m.resumes
                .get_or_create(&crate::ops::metrics::OutcomeLabel { outcome })
                .inc();
        }
        let (session, token, rx, conversations, was_resumed) = match resumed {
            Some((session, token, rx, replayed)) => {
                tracing::debug!(%user, %device, replayed, "session resumed");
                (session, token, rx, vec![], true)
            }
            None => {
                let (session, token, rx) = hub.open(user, device, self.conn_id);
                let list = api::all_summaries(&self.shared.ctx, user).await?;
                hub.set_floor(
                    &session,
                    list.iter()
                        .map(|s| (ConversationId(s.conversation_id), Seq(s.last_seq))),
                );
                (session, token, rx, list, false)
            }
        };
        let delivery = tokio::spawn(deliver(
            self.transport.clone(),
            rx,
            self.out.clone(),
            self.closes.clone(),
            self.shared.config.stream_idle,
            self.shared.config.stream_queue,
            self.shared.ctx.metrics.clone(),
        ));
        let actor = Actor {
            user,
            username: username.clone(),
            device,
        };
        let presence = &self.shared.ctx.presence;
        if let Err(e) = presence.ensure_loaded(&*self.shared.ctx.store, user).await {
            tracing::warn!(%user, error = %e, "presence record not loaded");
        }
        presence.connected(user, &username, device, self.conn_id);
        let _ = self.actor.set(actor.clone());
        self.phase = Phase::Authenticated(Authed {
            actor,
            session,
            delivery,
        });
        self.gauge.authenticated();
        // Best effort: a device learns its stock again from its next upload.
        let key_counts = match self.shared.ctx.keys.counts(user, device).await {
            Ok(c) => c.map(|mut c| {
                c.device_id = device.0;
                c
            }),
            Err(e) => {
                tracing::warn!(%user, error = %e.message, "key counts unreadable");
                None
            }
        };
        Ok(pb::AuthOk {
            user_id: user.0,
            username,
            device_id: device.0,
            resume_token: token.expose().to_string(),
            resume_window_secs: hub.resume_window().as_secs() as u32,
            resumed: was_resumed,
            conversations,
            key_counts,
            token_expires_at_ms: 0,
        })
    }

    pub(super) async fn logout(&mut self, id: u64, l: pb::Logout, actor: Actor) -> Result<(), Close> {
        let device = if l.device_id == 0 {
            actor.device
        } else {
            DeviceId(l.device_id)
        };
        match self.shared.ctx.store.revoke_device(actor.user, device).await {
            Ok(true) => {}
            Ok(false) => {
                self.respond(id, Err(ServerError::new(ErrorCode::NotFound, "no such device")))
                    .await;
                return Ok(());
            }
            Err(e) => {
                self.respond(id, Err(e.into())).await;
                return Ok(());
            }
        }
        // The device leaves its encrypted conversations' lists before the answer: a send
        // after it no longer wraps a key for it (PROTOCOL.md §12.3).
        let ctx = &self.shared.ctx;
        if let Err(e) = ctx.keys.remove(actor.user, device).await {
            tracing::warn!(error = %e.message, "a logged-out device's keys stay until its next removal");
        }
        crate::api::keys::sync_devices(ctx, &actor, Vec::new(), vec![device]).await;
        self.respond(id, Ok(Res::Done(pb::Done {}))).await;
        if device == actor.device {
            self.shared.hub.close_device(actor.user, device, None);
            return Err(Close::after_answer(ErrorCode::TokenRevoked, "logged out"));
        }
        self.shared
            .hub
            .close_device(actor.user, device, Some(ErrorCode::TokenRevoked));
        Ok(())
    }

    /// `DeleteAccount` (PROTOCOL.md §5.16): the account goes, this connection answers and
    /// then closes like a logout (the user's other devices were closed by the deletion).
    pub(super) async fn delete_account(&mut self, id: u64, d: pb::DeleteAccount, actor: Actor) -> Result<(), Close> {
        let ctx = &self.shared.ctx;
        match crate::api::privacy::delete_own(ctx, &actor, d.password).await {
            Ok(_) => {
                self.respond(id, Ok(Res::Done(pb::Done {}))).await;
                self.shared.hub.close_device(actor.user, actor.device, None);
                Err(Close::after_answer(ErrorCode::TokenRevoked, "account deleted"))
            }
            Err(e) => {
                self.respond(id, Err(e)).await;
                Ok(())
            }
        }
    }

    pub(super) async fn list_devices(&self, actor: &Actor) -> Result<Res, ServerError> {
        let devices = self
            .shared
            .ctx
            .store
            .list_devices(actor.user)
            .await
            .map_err(ServerError::from)?;
        Ok(Res::Devices(pb::DeviceList {
            devices: devices
                .into_iter()
                .filter(|d| !d.revoked)
                .map(|d| pb::Device {
                    device_id: d.id.0,
                    name: d.name,
                    created_ms: d.created_ms,
                    last_seen_ms: 0,
                    current: d.id == actor.device,
                })
                .collect(),
        }))
    }
}
