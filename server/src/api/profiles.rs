//! Profiles (PROTOCOL.md §5.15): what a user shows others beside their username — display
//! name, avatar, status text, the bot flag — kept as one document per user, changed by the
//! user (`SetProfile`), by the product's backend (the server API) or from a product token's
//! claims at first login, and announced to everyone who sees the user: the members of every
//! conversation they are in (channels too) and their own sessions, as a `ProfileChanged`
//! signal. An avatar is an https URL or one of the user's uploaded images (`media:<id>`),
//! which then holds an avatar reference (conversation 0) that lets anyone signed in read it.
use std::collections::HashSet;

use natter_protocol::codec::encode_frame;
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::{limits, validate, ConversationId, ServerError, UserId};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::store::{docs, MediaState};

/// Document space: user id → profile.
pub const PROFILE: &str = "profile";

/// The reference an avatar image holds while it is someone's avatar.
pub const AVATAR_CONVERSATION: ConversationId = ConversationId(0);

/// What a user shows others beside their username.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The username (so a profile also finds a user by id).
    pub username: String,
    /// The product's id for the user, when the product made it.
    #[serde(default)]
    pub external_id: String,
    /// Display name; empty: the username.
    #[serde(default)]
    pub display_name: String,
    /// Avatar: "", an https URL or `media:<id>`.
    #[serde(default)]
    pub avatar: String,
    /// Status text.
    #[serde(default)]
    pub status: String,
    /// A bot the product's backend drives.
    #[serde(default)]
    pub bot: bool,
    /// Last change, ms since the epoch.
    #[serde(default)]
    pub updated_ms: u64,
}

impl Profile {
    /// As the wire shows it.
    pub fn to_wire(&self, user: UserId) -> pb::UserProfile {
        pb::UserProfile {
            user_id: user.0,
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            avatar: self.avatar.clone(),
            status: self.status.clone(),
            bot: self.bot,
            updated_ms: self.updated_ms,
        }
    }
}

/// A display name from outside (a token's `name`): control characters dropped, cut to the
/// limit.
pub fn clean_display_name(n: &str) -> String {
    n.chars()
        .filter(|c| !c.is_control())
        .take(limits::MAX_DISPLAY_NAME_CHARS)
        .collect()
}

/// The user's profile document, if one was written.
pub async fn stored(ctx: &Ctx, user: UserId) -> Result<Option<Profile>, ServerError> {
    Ok(docs::get::<Profile>(&*ctx.store, PROFILE, &user.0.to_string())
        .await?
        .map(|d| d.value))
}

/// The user's profile: the document, else (an account that never set one) its username
/// alone, found through its devices. `None`: no such user the server can name.
pub async fn profile(ctx: &Ctx, user: UserId) -> Result<Option<Profile>, ServerError> {
    if let Some(p) = stored(ctx, user).await? {
        return Ok(Some(p));
    }
    if super::privacy::is_deleted(ctx, user).await? {
        return Ok(None);
    }
    Ok(ctx.store.list_devices(user).await?.into_iter().next().map(|d| Profile {
        username: d.username,
        ..Profile::default()
    }))
}

/// Write a new user's first profile.
pub async fn create(ctx: &Ctx, user: UserId, profile: &Profile) -> Result<(), ServerError> {
    docs::set(&*ctx.store, PROFILE, &user.0.to_string(), profile).await?;
    Ok(())
}

/// `GetProfiles`: up to 100 users' profiles, unknown ones left out.
pub async fn get_many(ctx: &Ctx, ids: &[u64]) -> Result<pb::Profiles, ServerError> {
    validate::count("user_ids", ids.len(), limits::MAX_PROFILES_PER_REQUEST)?;
    let mut seen = HashSet::new();
    let mut profiles = Vec::new();
    for &id in ids {
        if !seen.insert(id) {
            continue;
        }
        if let Some(p) = profile(ctx, UserId(id)).await? {
            profiles.push(p.to_wire(UserId(id)));
        }
    }
    Ok(pb::Profiles { profiles })
}

/// Change a user's profile (only the fields given), keep its avatar image readable and let
/// the old one go, and tell everyone who sees the user. `username` names an account that
/// never wrote a profile.
pub async fn update(ctx: &Ctx, user: UserId, username: &str, change: pb::SetProfile) -> Result<Profile, ServerError> {
    validate::set_profile(&change)?;
    let key = user.0.to_string();
    let before = profile(ctx, user).await?;
    if let Some(avatar) = change.avatar.as_deref().and_then(|a| a.strip_prefix("media:")) {
        hold_avatar(ctx, user, avatar).await?;
    }
    let now = crate::clock::now_ms();
    let fallback = before.unwrap_or_else(|| Profile {
        username: username.to_string(),
        ..Profile::default()
    });
    let (old, new) = docs::update(&*ctx.store, PROFILE, &key, |p: Option<Profile>| {
        let old = p.unwrap_or_else(|| fallback.clone());
        let mut p = old.clone();
        if let Some(n) = &change.display_name {
            p.display_name.clone_from(n);
        }
        if let Some(a) = &change.avatar {
            p.avatar.clone_from(a);
        }
        if let Some(s) = &change.status {
            p.status.clone_from(s);
        }
        p.updated_ms = now.max(old.updated_ms + 1);
        Some((p.clone(), (old, p)))
    })
    .await?
    .ok_or_else(|| ServerError::new(ErrorCode::Internal, "profile not written"))?;
    if old.avatar != new.avatar {
        if let Some(id) = old.avatar.strip_prefix("media:") {
            let r = avatar_ref(user);
            if let Err(e) = ctx.media.remove_ref(id, &r).await {
                tracing::warn!(%user, error = %e.message, "an old avatar stays referenced");
            }
        }
    }
    announce(ctx, user, &new).await;
    Ok(new)
}

fn avatar_ref(user: UserId) -> crate::store::MediaRef {
    (AVATAR_CONVERSATION, user, "avatar".to_string())
}

/// An avatar image must be the user's own ready image that is not encrypted; it then holds
/// an avatar reference, which keeps it and lets anyone signed in read it.
async fn hold_avatar(ctx: &Ctx, user: UserId, id: &str) -> Result<(), ServerError> {
    let not_found = || ServerError::new(ErrorCode::NotFound, "no such media");
    let rec = match ctx.media.media(id).await {
        Ok(rec) => rec,
        Err(e) if e.code == ErrorCode::NotFound => return Err(not_found()),
        Err(e) => return Err(e),
    };
    if rec.owner != user {
        return Err(not_found());
    }
    if rec.state != MediaState::Ready {
        return Err(ServerError::new(ErrorCode::MediaNotReady, "the file is not finished"));
    }
    let image = rec.ready.as_ref().is_some_and(|r| r.mime.starts_with("image/"));
    if rec.encrypted || !image {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "an avatar is an image that is not encrypted",
        ));
    }
    ctx.media.add_ref(rec, avatar_ref(user)).await?;
    Ok(())
}

/// Whether a file is someone's avatar (anyone signed in may read it).
pub fn is_avatar(rec: &crate::store::MediaRecord) -> bool {
    rec.refs.iter().any(|r| r.0 == AVATAR_CONVERSATION)
}

/// Everyone who sees the user: members of their conversations (channels too) and the user.
async fn audience(ctx: &Ctx, user: UserId) -> Result<Vec<UserId>, ServerError> {
    let mut out = HashSet::from([user]);
    for conv in ctx.store.user_conversations(user).await? {
        if let Ok(v) = ctx.shards.view(conv, user).await {
            out.extend(v.members.iter().map(|m| m.user));
        }
    }
    Ok(out.into_iter().collect())
}

/// Send `ProfileChanged` to the user's audience (a signal: sessions that miss it read
/// profiles again when they reconnect without resuming).
async fn announce(ctx: &Ctx, user: UserId, p: &Profile) {
    let to = match audience(ctx, user).await {
        Ok(to) => to,
        Err(e) => {
            tracing::warn!(%user, error = %e, "profile change not announced");
            return;
        }
    };
    let frame = pb::Frame {
        kind: Some(pb::frame::Kind::Signal(pb::Signal {
            kind: Some(pb::signal::Kind::ProfileChanged(p.to_wire(user))),
        })),
    };
    ctx.hub.signal(&to, encode_frame(&frame));
}
