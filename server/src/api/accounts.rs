//! Accounts of the product's users (PROTOCOL.md §5.13): a product token's subject is the
//! product's id for its user, mapped to one natter user created on first use (its username
//! from `preferred_username` when free, else derived from the subject; its display name
//! and avatar from `name` and `picture`), and the devices such a login creates, bound to
//! the subject until the token's `exp` (the profile itself is [`super::profiles`]). The token's signature and claims are checked
//! before anything here runs ([`crate::security::jwt`]).
use natter_protocol::pb::ErrorCode;
use natter_protocol::{validate, DeviceId, ServerError, UserId};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::profiles::{self, clean_display_name, Profile};
use super::Ctx;
use crate::conversation::Actor;
use crate::security::jwt::Claims;
use crate::store::docs;

/// Document space: product subject → natter user.
const IDENTITY: &str = "identity";
/// Document space: device id → its product binding.
const BINDING: &str = "binding";

/// The natter user of one product subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// Their username.
    pub username: String,
}

/// A device created by a product token: whose it is, and until when its last token holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The product's id for the user.
    pub subject: String,
    /// The last accepted token's `exp`, ms since the epoch.
    pub expires_ms: u64,
}

/// What a product says about its user when it first appears.
#[derive(Clone, Debug, Default)]
pub struct NewUser {
    /// The product's id for the user.
    pub subject: String,
    /// The username to try first.
    pub preferred_username: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Avatar URL (https).
    pub picture: Option<String>,
    /// A bot: an account the product's backend drives.
    pub bot: bool,
}

/// The subject's natter user, created on first use.
pub async fn product_user(ctx: &Ctx, claims: &Claims, now_ms: u64) -> Result<Identity, ServerError> {
    let new = NewUser {
        subject: claims.subject.clone(),
        preferred_username: claims.preferred_username.clone(),
        name: claims.name.clone(),
        picture: claims.picture.clone(),
        bot: false,
    };
    Ok(ensure_user(ctx, &new, now_ms).await?.0)
}

/// The natter user of a product's user id, if it has one.
pub async fn external_user(ctx: &Ctx, subject: &str) -> Result<Option<Identity>, ServerError> {
    Ok(docs::get::<Identity>(&*ctx.store, IDENTITY, subject)
        .await?
        .map(|d| d.value))
}

/// The product's user `id` (a token subject; the server API's user ids and `Natter-User`)
/// as the actor a product's backend acts as: their user on device 0, whatever the state of
/// the account. `BAD_REQUEST` for a malformed id, `NOT_FOUND` for an unknown one.
pub async fn product_actor(ctx: &Ctx, id: &str) -> Result<Actor, ServerError> {
    check_product_id(id)?;
    let who = external_user(ctx, id)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, format!("no user {id:?}")))?;
    Ok(Actor {
        user: who.user,
        username: who.username,
        device: DeviceId(0),
    })
}

/// A product's user id is 1-255 bytes without control characters (`BAD_REQUEST`).
pub fn check_product_id(id: &str) -> Result<(), ServerError> {
    if id.is_empty() || id.len() > crate::security::jwt::MAX_SUBJECT_BYTES || id.chars().any(char::is_control) {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "a user id is 1-255 bytes without control characters",
        ));
    }
    Ok(())
}

/// The subject's user, made now if it has none (`true`: made by this call).
pub async fn ensure_user(ctx: &Ctx, new: &NewUser, now_ms: u64) -> Result<(Identity, bool), ServerError> {
    if let Some(found) = external_user(ctx, &new.subject).await? {
        return Ok((found, false));
    }
    let mut names = Vec::new();
    if let Some(p) = new
        .preferred_username
        .as_deref()
        .filter(|p| validate::username(p).is_ok())
    {
        names.push(p.to_string());
    }
    let digest = hex::encode(sha2::Sha256::digest(new.subject.as_bytes()));
    names.extend([12, 20, 31].map(|n| format!("u{}", &digest[..n])));
    let mut created = None;
    for name in names {
        // No password: such an account logs in only with a product token.
        match ctx.store.create_user(&name, "", now_ms).await {
            Ok(id) => {
                created = Some(Identity {
                    user: id,
                    username: name,
                });
                break;
            }
            Err(crate::store::StoreError::UsernameTaken) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let created = created.ok_or_else(|| ServerError::new(ErrorCode::Conflict, "no free username for this subject"))?;
    let won = docs::claim(&*ctx.store, IDENTITY, &new.subject, created.clone()).await?;
    if won != created {
        // Another login of the same subject won the race; the account made here has no
        // password and no identity, so nothing can log into it.
        tracing::info!(user = %created.user, "product login race: an unused account was left");
        return Ok((won, false));
    }
    let profile = Profile {
        username: created.username.clone(),
        external_id: new.subject.clone(),
        display_name: new.name.as_deref().map(clean_display_name).unwrap_or_default(),
        avatar: new
            .picture
            .as_deref()
            .filter(|p| p.starts_with("https://") && validate::avatar(p).is_ok())
            .unwrap_or_default()
            .to_string(),
        bot: new.bot,
        updated_ms: now_ms,
        ..Profile::default()
    };
    profiles::create(ctx, created.user, &profile).await?;
    let data = serde_json::json!({"user_id": created.user.0, "username": created.username,
        "id": profile.external_id, "display_name": profile.display_name, "bot": profile.bot});
    ctx.webhooks.emit("user.created", data, now_ms).await?;
    Ok((created, true))
}

/// Bind a new device to the token's subject until its `exp`.
pub async fn bind(ctx: &Ctx, device: DeviceId, claims: &Claims) -> Result<(), ServerError> {
    let b = Binding {
        subject: claims.subject.clone(),
        expires_ms: claims.expires_ms,
    };
    docs::set(&*ctx.store, BINDING, &device.0.to_string(), &b).await?;
    Ok(())
}

/// Let the product's id go (its account was deleted): a later login with it makes a new
/// user.
pub async fn forget_identity(ctx: &Ctx, subject: &str) -> Result<(), ServerError> {
    ctx.store.delete_doc(IDENTITY, subject).await?;
    Ok(())
}

/// Forget a device's binding to a product token (the device is gone).
pub async fn unbind(ctx: &Ctx, device: DeviceId) -> Result<(), ServerError> {
    ctx.store.delete_doc(BINDING, &device.0.to_string()).await?;
    Ok(())
}

/// The device's binding, if a product token created it.
pub async fn binding(ctx: &Ctx, device: DeviceId) -> Result<Option<Binding>, ServerError> {
    Ok(docs::get::<Binding>(&*ctx.store, BINDING, &device.0.to_string())
        .await?
        .map(|d| d.value))
}

/// A fresh token for a bound device: same subject, later `exp`. Returns the new expiry.
pub async fn renew(ctx: &Ctx, device: DeviceId, bound: &Binding, claims: &Claims) -> Result<u64, ServerError> {
    if claims.subject != bound.subject {
        return Err(ServerError::new(
            ErrorCode::InvalidToken,
            "the token is for another user than this device's",
        ));
    }
    let expires_ms = claims.expires_ms.max(bound.expires_ms);
    let renewed = Binding {
        subject: bound.subject.clone(),
        expires_ms,
    };
    docs::set(&*ctx.store, BINDING, &device.0.to_string(), &renewed).await?;
    Ok(expires_ms)
}
