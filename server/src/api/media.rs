//! Media requests (PROTOCOL.md §11): announcing, inspecting and cancelling uploads, reading
//! files, and the attachments of a send. Who may read a file is decided here, where
//! memberships are known: its uploader, the members of any conversation one of whose
//! messages attaches it, and anyone signed in while it is someone's avatar.
use natter_protocol::pb::{self, response::Result as Res, ErrorCode};
use natter_protocol::{limits, ConversationId, ServerError, UserId};

use super::profiles::{is_avatar, AVATAR_CONVERSATION};
use super::Ctx;
use crate::conversation::Actor;
use crate::media::{self, Media};
use crate::store::{MediaRecord, MediaState};

fn err(code: ErrorCode, msg: &str) -> ServerError {
    ServerError::new(code, msg)
}

/// `CreateUpload`, `GetUpload`, `CancelUpload`, `GetMedia`, `MediaUrl`.
pub async fn handle(ctx: &Ctx, actor: &Actor, op: pb::request::Op) -> Result<Res, ServerError> {
    use pb::request::Op;
    match op {
        Op::CreateUpload(r) => {
            let conv = ConversationId(r.conversation_id);
            if conv == AVATAR_CONVERSATION {
                // An avatar (PROTOCOL.md §5.15): an image anyone signed in may see.
                let image = r.mime.split(';').next().is_some_and(|m| m.trim().starts_with("image/"));
                if r.encrypted || !image {
                    return Err(err(
                        ErrorCode::BadRequest,
                        "an avatar is an image that is not encrypted",
                    ));
                }
                if r.size > limits::MAX_AVATAR_BYTES {
                    return Err(err(ErrorCode::TooLarge, "an avatar is at most 10 MiB"));
                }
            } else {
                ctx.shards.view(conv, actor.user).await?;
            }
            ctx.rates.send(actor.user)?;
            let rec = ctx.media.create(actor.user, conv, r, crate::clock::now_ms()).await?;
            Ok(Res::Upload(media::upload_info(&rec)))
        }
        Op::GetUpload(r) => Ok(Res::Upload(media::upload_info(
            &ctx.media.status(actor.user, &r.upload_id).await?,
        ))),
        Op::CancelUpload(r) => {
            ctx.media.cancel(actor.user, &r.upload_id).await?;
            Ok(Res::Done(pb::Done {}))
        }
        Op::MediaUrl(r) => media_url(ctx, actor, r).await,
        Op::GetMedia(r) => {
            let rec = readable(ctx, actor.user, &r.media_id).await?;
            Ok(Res::Media(media::info(&rec).expect("readable media is ready")))
        }
        _ => Err(err(ErrorCode::Internal, "not a media request")),
    }
}

/// The device an access token belongs to (HTTP requests carry it as a bearer token).
pub async fn actor_for_token(ctx: &Ctx, token: &str) -> Result<Actor, ServerError> {
    if token.is_empty() || token.len() > natter_protocol::limits::MAX_TOKEN_BYTES {
        return Err(err(ErrorCode::Unauthenticated, "malformed token"));
    }
    let d = ctx
        .store
        .device_by_token(crate::security::auth::token_hash(token))
        .await?
        .ok_or_else(|| err(ErrorCode::Unauthenticated, "unknown or revoked token"))?;
    Ok(Actor {
        user: d.user,
        username: d.username,
        device: d.id,
    })
}

/// How long a signed media URL is valid.
pub const URL_VALIDITY_MS: u64 = 3600 * 1000;

fn url_message(id: &str, variant: i32, exp: u64, user: UserId) -> String {
    format!("natter-media-url\n{id}\n{variant}\n{exp}\n{}", user.0)
}

fn url_mac(key: &[u8; 32], id: &str, variant: i32, exp: u64, user: UserId) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex::encode(ring::hmac::sign(&k, url_message(id, variant, exp, user).as_bytes()).as_ref())
}

/// `MediaUrl`: a path on the web endpoint that serves the file to whoever holds it, for an
/// hour — and only while its user may still read the file (checked again on every GET).
pub async fn media_url(ctx: &Ctx, actor: &Actor, r: pb::MediaUrl) -> Result<Res, ServerError> {
    let rec = readable(ctx, actor.user, &r.media_id).await?;
    pb::MediaVariant::try_from(r.variant).map_err(|_| err(ErrorCode::BadRequest, "unknown variant"))?;
    let exp = crate::clock::now_ms() + URL_VALIDITY_MS;
    let key = ctx.store.shared_secret("media-url").await?;
    let sig = url_mac(&key, &rec.media_id.0, r.variant, exp, actor.user);
    Ok(Res::MediaUrl(pb::MediaUrlOk {
        path: format!(
            "/media/{}?v={}&exp={exp}&u={}&sig={sig}",
            rec.media_id.0, r.variant, actor.user.0
        ),
        expires_ms: exp,
    }))
}

/// The user a signed URL speaks for, if its signature holds and it has not expired.
pub async fn check_url(
    ctx: &Ctx,
    id: &str,
    variant: pb::MediaVariant,
    exp: u64,
    user: UserId,
    sig: &str,
) -> Result<UserId, ServerError> {
    if exp < crate::clock::now_ms() {
        return Err(err(
            ErrorCode::Unauthenticated,
            "the media URL has expired; ask for a new one",
        ));
    }
    let key = ctx.store.shared_secret("media-url").await?;
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let msg = url_message(id, variant as i32, exp, user);
    // ring compares in constant time.
    let ok = hex::decode(sig).is_ok_and(|tag| ring::hmac::verify(&k, msg.as_bytes(), &tag).is_ok());
    if !ok {
        return Err(err(ErrorCode::Unauthenticated, "bad media URL signature"));
    }
    Ok(user)
}

/// A ready file the user may read; otherwise `NOT_FOUND` (no such file, or one the user may
/// not know of) or `MEDIA_NOT_READY`.
pub async fn readable(ctx: &Ctx, user: UserId, id: &str) -> Result<MediaRecord, ServerError> {
    let rec = ctx.media.media(id).await?;
    let allowed = rec.owner == user || is_avatar(&rec) || {
        let mut ok = false;
        let convs: std::collections::BTreeSet<_> = rec.refs.iter().map(|r| r.0).collect();
        // (an avatar reference, conversation 0, was answered above)
        for c in convs {
            if ctx.shards.view(c, user).await.is_ok() {
                ok = true;
                break;
            }
        }
        ok
    };
    if !allowed {
        return Err(err(ErrorCode::NotFound, "no such media"));
    }
    if rec.state != MediaState::Ready {
        return Err(err(ErrorCode::MediaNotReady, "the file is not finished"));
    }
    Ok(rec)
}

/// The byte range a `Download` asks for: `(start, end, total, mime)` of the variant.
pub fn range(rec: &MediaRecord, d: &pb::Download) -> Result<(u64, u64, u64, String), ServerError> {
    let variant = pb::MediaVariant::try_from(d.variant).map_err(|_| err(ErrorCode::BadRequest, "unknown variant"))?;
    let (total, mime) =
        Media::variant_of(rec, variant).ok_or_else(|| err(ErrorCode::NotFound, "the file has no such variant"))?;
    if d.offset > total || (d.offset == total && total > 0 && d.length > 0) {
        return Err(err(ErrorCode::BadRequest, "offset past the end"));
    }
    let end = if d.length == 0 {
        total
    } else {
        d.offset.saturating_add(d.length).min(total)
    };
    Ok((d.offset, end, total, mime))
}

/// Check and complete a send's attachments: each must be a ready file that the sender
/// uploaded (or that is attached in this conversation already), and is recorded as
/// attached by this message before the send commits (so it is never collected under it).
pub async fn attach(
    ctx: &Ctx,
    actor: &Actor,
    conv: natter_protocol::ConversationId,
    client_msg_id: &str,
    body: &mut pb::MessageBody,
) -> Result<(), ServerError> {
    // An envelope's files (PROTOCOL.md §12.4): checked and kept like plain attachments,
    // their details stay sealed.
    if let Some(env) = &body.encrypted {
        for id in &env.media_ids {
            attachable(ctx, actor, conv, client_msg_id, id).await?;
        }
        return Ok(());
    }
    let mut out = Vec::with_capacity(body.attachments.len());
    for a in &body.attachments {
        let rec = attachable(ctx, actor, conv, client_msg_id, &a.media_id).await?;
        out.push(media::attachment(&rec, a));
    }
    body.attachments = out;
    Ok(())
}

/// A file the sender may attach here, recorded as attached by this message.
async fn attachable(
    ctx: &Ctx,
    actor: &Actor,
    conv: natter_protocol::ConversationId,
    client_msg_id: &str,
    media_id: &str,
) -> Result<crate::store::MediaRecord, ServerError> {
    let rec = ctx.media.media(media_id).await?;
    let shared_here = rec.refs.iter().any(|r| r.0 == conv);
    if rec.owner != actor.user && !shared_here {
        return Err(err(ErrorCode::NotFound, "no such media"));
    }
    if rec.state != MediaState::Ready {
        return Err(err(ErrorCode::MediaNotReady, "the file is not finished"));
    }
    ctx.media
        .add_ref(rec, (conv, actor.user, client_msg_id.to_string()))
        .await
}

/// A deleted message no longer holds its files.
pub async fn detach(ctx: &Ctx, conv: natter_protocol::ConversationId, ev: &pb::ConversationEvent) {
    let Some(pb::conversation_event::Body::Message(m)) = &ev.body else {
        return;
    };
    let Some(body) = &m.body else { return };
    let r = (conv, UserId(ev.sender_user_id), m.client_msg_id.clone());
    for a in &body.attachments {
        if let Err(e) = ctx.media.remove_ref(&a.media_id, &r).await {
            tracing::warn!(error = %e.message, "a deleted message's file stays referenced");
        }
    }
}
