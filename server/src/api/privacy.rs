//! Privacy obligations (PROTOCOL.md §5.16): deleting an account and exporting its data.
//!
//! Deleting a user, in this order: a tombstone (so nothing logs into the account again)
//! and the product's id let go; every device revoked and disconnected, with its keys and
//! push registrations; in every conversation holding the user's events or membership, a
//! `UserErased` event committed through the shard (they leave; an owner's place passes
//! on) and their logged events rewritten in place — erased into `Erased` tombstones or
//! anonymised under "deleted-user", their name taken out of membership events too; the
//! search index drops their messages as it follows the commit; every file they uploaded
//! deleted; reports by or about them dropped; their profile gone; and last the store told
//! to forget them, which for the embedded store destroys the key that sealed every older
//! copy of their events ([`crate::store::content_keys`]). Repeating a deletion that was cut
//! off finishes it.
//!
//! Exporting: a zip of the user's profile, their conversations, every event they sent
//! (JSON lines, in log order per conversation) and the files they uploaded.
use std::io::Write;

use natter_protocol::pb::{self, conversation_event::Body, ErrorCode};
use natter_protocol::timeline::DELETED_USER;
use natter_protocol::{ConversationId, DeviceId, Seq, ServerError, UserId};
use serde::{Deserialize, Serialize};

use super::{accounts, moderation, profiles, Ctx};
use crate::conversation::{Actor, Mutation};
use crate::store::{docs, DeviceRecord, Page};

/// What deleting an account does to the messages it sent (`deleted_user_messages`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeletedMessages {
    /// Each becomes an `Erased` tombstone (the default).
    #[default]
    Erase,
    /// Kept, sent by "deleted-user" (user id 0).
    Anonymise,
}

/// What a deletion did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Erasure {
    /// Conversations it touched.
    pub conversations: u32,
    /// Logged events rewritten.
    pub events: u32,
    /// Files deleted.
    pub media: u32,
    /// Devices revoked.
    pub devices: u32,
}

/// Document space: user id → [`Tombstone`].
const DELETED: &str = "deleted";

/// A deleted account: never logs in again, has no profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// When, ms since the epoch.
    pub deleted_ms: u64,
    /// Its messages were anonymised rather than erased.
    pub anonymised: bool,
}

/// How long a deletion waits for the search index to drop the user's messages.
const SEARCH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Events read per page while scanning a conversation.
const PAGE: usize = 500;

/// Whether the account was deleted.
pub async fn is_deleted(ctx: &Ctx, user: UserId) -> Result<bool, ServerError> {
    Ok(docs::get::<Tombstone>(&*ctx.store, DELETED, &user.0.to_string())
        .await?
        .is_some())
}

/// The server's own actor: the sender of `UserErased`.
fn system() -> Actor {
    Actor {
        user: UserId(0),
        username: String::new(),
        device: DeviceId(0),
    }
}

/// Delete the user's account (see the module docs). `asking`: the device that asked for it
/// (its connection answers first, then closes), not disconnected here.
pub async fn delete_user(
    ctx: &Ctx,
    user: UserId,
    mode: DeletedMessages,
    now_ms: u64,
    asking: Option<DeviceId>,
) -> Result<Erasure, ServerError> {
    if user.0 == 0 {
        return Err(ServerError::new(ErrorCode::BadRequest, "no such user"));
    }
    let anonymised = mode == DeletedMessages::Anonymise;
    let profile = profiles::stored(ctx, user).await?;
    let devices = ctx.store.list_devices(user).await?;
    let username = profile
        .as_ref()
        .map(|p| p.username.clone())
        .or_else(|| devices.first().map(|d| d.username.clone()));
    let Some(username) = username else {
        if is_deleted(ctx, user).await? {
            // Deleted before, and nothing of theirs is left to name them: finish the rest.
            return finish(ctx, user, anonymised, Erasure::default()).await;
        }
        return Err(ServerError::new(ErrorCode::NotFound, "no such user"));
    };
    let tomb = Tombstone {
        deleted_ms: now_ms,
        anonymised,
    };
    docs::set(&*ctx.store, DELETED, &user.0.to_string(), &tomb).await?;
    if let Some(p) = profile.as_ref().filter(|p| !p.external_id.is_empty()) {
        accounts::forget_identity(ctx, &p.external_id).await?;
    }

    let done = Erasure {
        devices: log_out_all(ctx, user, &username, &devices, asking).await? as u32,
        ..Erasure::default()
    };
    if let Some(mut rec) = ctx.store.push_record(user).await? {
        rec.registrations.clear();
        rec.rules = Default::default();
        rec.version += 1;
        ctx.store.put_push_record(&rec).await?;
    }
    finish(ctx, user, anonymised, done).await
}

/// Revoke one device of the user (an operator's `admin devices revoke`) as a logout does:
/// its token, keys and product binding go and its connections close with `TOKEN_REVOKED`.
/// False if the user has no such live device.
pub async fn revoke_device(ctx: &Ctx, user: UserId, username: &str, device: DeviceId) -> Result<bool, ServerError> {
    let devices: Vec<DeviceRecord> = ctx
        .store
        .list_devices(user)
        .await?
        .into_iter()
        .filter(|d| d.id == device && !d.revoked)
        .collect();
    Ok(log_out_all(ctx, user, username, &devices, None).await? > 0)
}

/// Revoke and disconnect every device of the user, `devices` as the store lists them (but
/// `asking`'s connection, which closes itself after its answer), with their keys and
/// product bindings; how many.
async fn log_out_all(
    ctx: &Ctx,
    user: UserId,
    username: &str,
    devices: &[DeviceRecord],
    asking: Option<DeviceId>,
) -> Result<usize, ServerError> {
    let mut revoked = Vec::new();
    for d in devices.iter().filter(|d| !d.revoked) {
        if ctx.store.revoke_device(user, d.id).await? {
            revoked.push(d.id);
        }
        accounts::unbind(ctx, d.id).await?;
        if let Err(e) = ctx.keys.remove(user, d.id).await {
            tracing::warn!(%user, error = %e.message, "a logged-out device's keys stay");
        }
    }
    let actor = Actor {
        user,
        username: username.to_string(),
        device: DeviceId(0),
    };
    super::keys::sync_devices(ctx, &actor, Vec::new(), revoked.clone()).await;
    for d in revoked.iter().filter(|d| Some(**d) != asking) {
        ctx.hub.close_device(user, *d, Some(ErrorCode::TokenRevoked));
    }
    Ok(revoked.len())
}

/// Document space: user id → when their account was deactivated.
const DEACTIVATED: &str = "deactivated";

/// Suspend an account (the server API): every device logged out, and no login until it
/// is reactivated; its messages, conversations and files stay. How many devices went.
pub async fn deactivate(ctx: &Ctx, user: UserId, username: &str, now_ms: u64) -> Result<usize, ServerError> {
    docs::set(&*ctx.store, DEACTIVATED, &user.0.to_string(), &now_ms).await?;
    let devices = ctx.store.list_devices(user).await?;
    log_out_all(ctx, user, username, &devices, None).await
}

/// Let a deactivated account log in again. False if it was not deactivated.
pub async fn reactivate(ctx: &Ctx, user: UserId) -> Result<bool, ServerError> {
    Ok(ctx.store.delete_doc(DEACTIVATED, &user.0.to_string()).await?)
}

/// Why the account may not log in or be acted for, if it may not: deleted
/// (`INVALID_CREDENTIALS`, as if it never was) or deactivated (`FORBIDDEN`).
pub async fn refusal(ctx: &Ctx, user: UserId) -> Result<Option<ServerError>, ServerError> {
    if is_deleted(ctx, user).await? {
        return Ok(Some(ServerError::new(ErrorCode::InvalidCredentials, "no such account")));
    }
    if docs::get::<u64>(&*ctx.store, DEACTIVATED, &user.0.to_string())
        .await?
        .is_some()
    {
        return Ok(Some(ServerError::new(
            ErrorCode::Forbidden,
            "the account is deactivated",
        )));
    }
    Ok(None)
}

/// The product's user `id` as the actor its backend acts as ([`accounts::product_actor`]),
/// refused as [`refusal`] says when the account is deleted or deactivated: what every
/// server API call made *as* a user goes through (the JSON API and tus/media alike).
pub async fn acting_for(ctx: &Ctx, id: &str) -> Result<Actor, ServerError> {
    let actor = accounts::product_actor(ctx, id).await?;
    match refusal(ctx, actor.user).await? {
        Some(refused) => Err(refused),
        None => Ok(actor),
    }
}

/// Conversations, files, reports, profile, and the store's last copies.
async fn finish(ctx: &Ctx, user: UserId, anonymised: bool, mut done: Erasure) -> Result<Erasure, ServerError> {
    for conv in all_conversations(ctx).await? {
        let rewrites = scan(ctx, conv, |ev| rewrite(ev, user, anonymised)).await?;
        let member = ctx
            .store
            .load_conversation(conv)
            .await?
            .is_some_and(|c| c.members.iter().any(|m| m.user == user));
        if rewrites.is_empty() && !member {
            continue;
        }
        done.conversations += 1;
        let m = Mutation::EraseUser { user, anonymised };
        match ctx.shards.mutate(conv, system(), m).await {
            // The answer means "gone from search" too: wait for the index to drop them.
            Ok(c) => {
                if let Some(search) = &ctx.search {
                    let indexed = search.indexed_through(conv, c.seq.0);
                    if tokio::time::timeout(SEARCH_WAIT, indexed).await.is_err() {
                        tracing::warn!(%conv, "search has not yet dropped a deleted account's messages");
                    }
                }
            }
            // A deleted conversation takes no events; its log is still rewritten.
            Err(e) => tracing::info!(%conv, error = %e.message, "no UserErased event here"),
        }
        ctx.store.rewrite_events(conv, &rewrites).await?;
        done.events += rewrites.len() as u32;
    }
    for id in ctx.media.owned(user).await? {
        ctx.media.delete(&id).await?;
        done.media += 1;
    }
    drop_reports(ctx, user).await?;
    ctx.store.delete_doc(profiles::PROFILE, &user.0.to_string()).await?;
    ctx.store.forget_user(user).await?;
    let data = serde_json::json!({"user_id": user.0, "anonymised": anonymised});
    ctx.webhooks.emit("user.deleted", data, crate::clock::now_ms()).await?;
    Ok(done)
}

/// Every conversation id, oldest first.
async fn all_conversations(ctx: &Ctx) -> Result<Vec<ConversationId>, ServerError> {
    let mut out = Vec::new();
    let mut after = ConversationId(0);
    loop {
        let page = ctx.store.conversations_after(after, 500).await?;
        let Some(&(last, _)) = page.last() else {
            return Ok(out);
        };
        out.extend(page.into_iter().map(|(c, _)| c));
        after = last;
    }
}

/// What `pick` makes of each event of the conversation's log, in seq order.
async fn scan<T>(
    ctx: &Ctx,
    conv: ConversationId,
    mut pick: impl FnMut(&pb::ConversationEvent) -> Option<T>,
) -> Result<Vec<T>, ServerError> {
    let mut out = Vec::new();
    let mut after = Seq(0);
    loop {
        let (events, more) = ctx.store.events(conv, Page::After(after), PAGE).await?;
        for ev in &events {
            if let Some(t) = pick(ev) {
                out.push(t);
            }
        }
        match events.last() {
            Some(last) if more => after = Seq(last.seq),
            _ => return Ok(out),
        }
    }
}

/// The event as it is kept once `user`'s account is deleted; `None` if it does not change.
/// Their messages, edits and reactions become `Erased` (or, anonymised, stay under
/// "deleted-user"); their other events lose the sender; their name leaves membership
/// events.
pub fn rewrite(ev: &pb::ConversationEvent, user: UserId, anonymised: bool) -> Option<pb::ConversationEvent> {
    let mut out = ev.clone();
    if ev.sender_user_id == user.0 {
        out.sender_user_id = 0;
        out.sender_device_id = 0;
        out.sender_username = if anonymised { DELETED_USER.into() } else { String::new() };
        let content = matches!(
            ev.body,
            Some(Body::Message(_) | Body::MessageEdited(_) | Body::Reaction(_))
        );
        if content && !anonymised {
            out.body = Some(Body::Erased(pb::Erased {
                message: matches!(ev.body, Some(Body::Message(_))),
            }));
        }
    }
    match &mut out.body {
        Some(Body::MembersAdded(m)) => {
            for m in m.members.iter_mut().filter(|m| m.user_id == user.0) {
                m.username = DELETED_USER.into();
            }
        }
        Some(Body::MemberRemoved(m)) if m.user_id == user.0 => m.username = DELETED_USER.into(),
        Some(Body::MemberModerated(m)) if m.user_id == user.0 => m.username = DELETED_USER.into(),
        _ => {}
    }
    (out != *ev).then_some(out)
}

async fn drop_reports(ctx: &Ctx, user: UserId) -> Result<(), ServerError> {
    let mut after = String::new();
    loop {
        let page = docs::list::<moderation::Report>(&*ctx.store, moderation::REPORTS, &after, 500).await?;
        let done = page.len() < 500;
        for (key, r) in page {
            if r.value.reporter == user || r.value.sender == user {
                ctx.store.delete_doc(moderation::REPORTS, &key).await?;
            }
            after = key;
        }
        if done {
            return Ok(());
        }
    }
}

/// A zip of the user's data: `profile.json`, `conversations.json`, `messages.jsonl` (every
/// event they sent, as the server keeps it) and `media/<id>/<name>` (the files they
/// uploaded, as uploaded). Built in memory: a user's files are bounded by their quota.
pub async fn export(ctx: &Ctx, user: UserId) -> Result<Vec<u8>, ServerError> {
    if is_deleted(ctx, user).await? {
        return Err(ServerError::new(ErrorCode::NotFound, "the account was deleted"));
    }
    let profile = profiles::profile(ctx, user)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "no such user"))?;
    let mut conversations = Vec::new();
    for conv in ctx.store.user_conversations(user).await? {
        if let Ok(v) = ctx.shards.view(conv, user).await {
            let role = v.members.iter().find(|m| m.user == user).map(|m| m.role);
            conversations.push(serde_json::json!({
                "conversation_id": conv.0,
                "kind": format!("{:?}", v.meta.kind).to_lowercase(),
                "name": v.meta.name,
                "role": role.map(|r| format!("{r:?}").to_lowercase()),
            }));
        }
    }
    let mut lines = String::new();
    for conv in all_conversations(ctx).await? {
        let mine = scan(ctx, conv, |ev| (ev.sender_user_id == user.0).then(|| exported(ev))).await?;
        for line in mine {
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
    }
    let mut files = Vec::new();
    for id in ctx.media.owned(user).await? {
        let Ok(rec) = ctx.media.media(&id).await else { continue };
        if rec.state != crate::store::MediaState::Ready {
            continue;
        }
        let bytes = read_all(ctx, &rec).await?;
        files.push((format!("media/{}/{}", rec.media_id.0, rec.name), bytes));
    }
    let profile_json = serde_json::json!({
        "user_id": user.0,
        "username": profile.username,
        "id": profile.external_id,
        "display_name": profile.display_name,
        "avatar": profile.avatar,
        "status": profile.status,
        "bot": profile.bot,
    });
    let entries = [
        (
            "profile.json".to_string(),
            serde_json::to_vec_pretty(&profile_json).expect("json"),
        ),
        (
            "conversations.json".to_string(),
            serde_json::to_vec_pretty(&conversations).expect("json"),
        ),
        ("messages.jsonl".to_string(), lines.into_bytes()),
    ];
    let zip_err = |e: zip::result::ZipError| ServerError::new(ErrorCode::Internal, format!("export: {e}"));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries.into_iter().chain(files) {
        zip.start_file(name, opts).map_err(zip_err)?;
        zip.write_all(&bytes)
            .map_err(|e| ServerError::new(ErrorCode::Internal, format!("export: {e}")))?;
    }
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

/// How long an export's signed path is valid.
pub const EXPORT_URL_VALIDITY_MS: u64 = 15 * 60 * 1000;

fn export_mac(key: &[u8; 32], user: UserId, exp: u64) -> ring::hmac::Tag {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, format!("natter-export\n{}\n{exp}", user.0).as_bytes())
}

/// `ExportAccount`: a path on the web endpoint that serves the user's archive for 15
/// minutes to whoever holds it.
pub async fn export_url(ctx: &Ctx, user: UserId) -> Result<pb::ExportReady, ServerError> {
    if is_deleted(ctx, user).await? {
        return Err(ServerError::new(ErrorCode::NotFound, "the account was deleted"));
    }
    let exp = crate::clock::now_ms() + EXPORT_URL_VALIDITY_MS;
    let key = ctx.store.shared_secret("export-url").await?;
    let sig = hex::encode(export_mac(&key, user, exp).as_ref());
    Ok(pb::ExportReady {
        path: format!("/export/{}?exp={exp}&sig={sig}", user.0),
        expires_ms: exp,
    })
}

/// Whether a signed export path holds (its signature, and not expired).
pub async fn check_export_url(ctx: &Ctx, user: UserId, exp: u64, sig: &str) -> Result<(), ServerError> {
    if exp < crate::clock::now_ms() {
        return Err(ServerError::new(
            ErrorCode::Unauthenticated,
            "the export link has expired; ask for a new one",
        ));
    }
    let key = ctx.store.shared_secret("export-url").await?;
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let msg = format!("natter-export\n{}\n{exp}", user.0);
    // ring compares in constant time.
    let ok = hex::decode(sig).is_ok_and(|tag| ring::hmac::verify(&k, msg.as_bytes(), &tag).is_ok());
    if !ok {
        return Err(ServerError::new(
            ErrorCode::Unauthenticated,
            "bad export link signature",
        ));
    }
    Ok(())
}

/// `DeleteAccount` from one of the user's devices: a password account confirms with its
/// password; a product login's account (no password) with nothing.
pub async fn delete_own(ctx: &Ctx, actor: &Actor, password: String) -> Result<Erasure, ServerError> {
    let rec = ctx
        .store
        .user_by_name(&actor.username)
        .await?
        .filter(|u| u.id == actor.user)
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "no such user"))?;
    if !rec.password_hash.is_empty() {
        let hash = rec.password_hash.clone();
        let ok = tokio::task::spawn_blocking(move || crate::security::auth::verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(ServerError::new(ErrorCode::InvalidCredentials, "wrong password"));
        }
    }
    delete_user(
        ctx,
        actor.user,
        ctx.deleted_user_messages,
        crate::clock::now_ms(),
        Some(actor.device),
    )
    .await
}

/// One event of the user's as the export shows it.
fn exported(ev: &pb::ConversationEvent) -> serde_json::Value {
    let (kind, text, target, emoji, attachments) = match &ev.body {
        Some(Body::Message(m)) => {
            let b = m.body.clone().unwrap_or_default();
            let files: Vec<_> = b
                .attachments
                .iter()
                .map(|a| serde_json::json!({"media_id": a.media_id, "name": a.name, "mime": a.mime, "size": a.size}))
                .collect();
            let text = if b.encrypted.is_some() { String::new() } else { b.text };
            ("message", text, b.reply_to_seq, String::new(), files)
        }
        Some(Body::MessageEdited(e)) => ("edit", e.text.clone(), e.target_seq, String::new(), vec![]),
        Some(Body::MessageDeleted(d)) => ("delete", String::new(), d.target_seq, String::new(), vec![]),
        Some(Body::Reaction(r)) => ("reaction", String::new(), r.target_seq, r.emoji.clone(), vec![]),
        Some(Body::Renamed(r)) => ("renamed", r.name.clone(), 0, String::new(), vec![]),
        Some(Body::Created(_)) => ("created", String::new(), 0, String::new(), vec![]),
        _ => ("other", String::new(), 0, String::new(), vec![]),
    };
    serde_json::json!({
        "conversation_id": ev.conversation_id,
        "seq": ev.seq,
        "time_ms": ev.server_time_ms,
        "type": kind,
        "text": text,
        "target_seq": target,
        "emoji": emoji,
        "attachments": attachments,
    })
}

async fn read_all(ctx: &Ctx, rec: &crate::store::MediaRecord) -> Result<Vec<u8>, ServerError> {
    use futures::StreamExt;
    let mut s = ctx.media.range_stream(rec, pb::MediaVariant::Original, 0, rec.size);
    let mut out = Vec::with_capacity(rec.size as usize);
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| ServerError::new(ErrorCode::Internal, format!("export: {e}")))?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(sender: u64, body: Body) -> pb::ConversationEvent {
        pb::ConversationEvent {
            conversation_id: 1,
            seq: 5,
            sender_user_id: sender,
            sender_username: format!("u{sender}"),
            sender_device_id: 9,
            server_time_ms: 77,
            body: Some(body),
        }
    }

    fn text(t: &str) -> Body {
        Body::Message(pb::MessageEvent {
            client_msg_id: "c".into(),
            body: Some(pb::MessageBody {
                text: t.into(),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn a_deleted_users_events_are_erased_or_anonymised_and_others_keep_theirs() {
        let u = UserId(3);
        let erased = rewrite(&ev(3, text("mine")), u, false).unwrap();
        assert_eq!(erased.body, Some(Body::Erased(pb::Erased { message: true })));
        assert_eq!(
            (
                erased.sender_user_id,
                erased.sender_username.as_str(),
                erased.sender_device_id
            ),
            (0, "", 0)
        );
        assert_eq!((erased.seq, erased.server_time_ms), (5, 77), "its place and time stay");
        let edit = Body::MessageEdited(pb::MessageEdited {
            target_seq: 2,
            text: "mine, edited".into(),
        });
        assert_eq!(
            rewrite(&ev(3, edit), u, false).unwrap().body,
            Some(Body::Erased(pb::Erased { message: false }))
        );
        let anon = rewrite(&ev(3, text("mine")), u, true).unwrap();
        assert_eq!(anon.body, ev(3, text("mine")).body, "anonymised: the text stays");
        assert_eq!((anon.sender_user_id, anon.sender_username.as_str()), (0, DELETED_USER));
        // Someone else's message is left alone; a removal naming the user loses the name.
        assert_eq!(rewrite(&ev(4, text("theirs")), u, false), None);
        let removed = Body::MemberRemoved(pb::MemberRemoved {
            user_id: 3,
            username: "alice".into(),
            left: true,
        });
        let r = rewrite(&ev(4, removed), u, false).unwrap();
        assert!(matches!(r.body, Some(Body::MemberRemoved(m)) if m.username == DELETED_USER && m.user_id == 3));
        assert_eq!(r.sender_user_id, 4);
    }
}
