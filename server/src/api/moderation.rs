//! Reports and the moderators' side of moderation (PROTOCOL.md §5.14): a member reports a
//! message; the report is kept (the server API lists them) and goes to the product's
//! webhooks as `message.reported`. Mutes, bans and slow mode are conversation rules
//! (`conversation/rules.rs`); this only finds names for their events.
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::{limits, ConversationId, Seq, ServerError, UserId};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::clock::now_ms;
use crate::conversation::Actor;
use crate::store::docs;

/// Document space: `<conversation:020>/<seq:020>/<reporter>` → [`Report`].
pub const REPORTS: &str = "report";

/// One report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Where.
    pub conversation_id: u64,
    /// Which event.
    pub seq: u64,
    /// Who reported it.
    pub reporter: UserId,
    /// Their username.
    pub reporter_username: String,
    /// Whose message it is.
    pub sender: UserId,
    /// The message's text as first sent (plaintext conversations; "" for an encrypted,
    /// deleted or erased one). Never stored with the report, nor sent in `message.reported`: read
    /// from the log when listed, so erasing a message reaches it (PROTOCOL.md §5.16).
    #[serde(skip_serializing, default)]
    pub text: String,
    /// Why, in the reporter's words.
    pub reason: String,
    /// When, ms.
    pub created_ms: u64,
}

/// The username of `user` for a moderation event: from the conversation, else the profile.
pub async fn username(ctx: &Ctx, actor: &Actor, conv: ConversationId, user: UserId) -> Result<String, ServerError> {
    let view = ctx.shards.view(conv, actor.user).await?;
    if let Some(m) = view.members.iter().find(|m| m.user == user) {
        return Ok(m.username.clone());
    }
    Ok(super::profiles::profile(ctx, user)
        .await?
        .map(|p| p.username)
        .unwrap_or_default())
}

/// A member reports a message.
pub async fn report(ctx: &Ctx, actor: &Actor, r: pb::ReportMessage) -> Result<(), ServerError> {
    if r.reason.chars().count() > limits::MAX_REPORT_REASON_CHARS {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "a reason is at most 500 characters",
        ));
    }
    let conv = ConversationId(r.conversation_id);
    ctx.shards.view(conv, actor.user).await?;
    ctx.rates.send(actor.user)?;
    let (ev, _) = ctx
        .store
        .message(conv, Seq(r.seq))
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "no such message"))?;
    let report = Report {
        conversation_id: conv.0,
        seq: r.seq,
        reporter: actor.user,
        reporter_username: actor.username.clone(),
        sender: UserId(ev.sender_user_id),
        text: String::new(),
        reason: r.reason,
        created_ms: now_ms(),
    };
    let key = format!("{:020}/{:020}/{}", conv.0, r.seq, actor.user.0);
    let fresh = docs::put(&*ctx.store, REPORTS, &key, 0, &report).await?;
    if fresh {
        let data = serde_json::to_value(&report).expect("a report serializes");
        ctx.webhooks.emit("message.reported", data, report.created_ms).await?;
    }
    Ok(())
}

/// Reports, oldest conversation first, after `after` (a key from the previous page).
pub async fn reports(ctx: &Ctx, after: &str, limit: usize) -> Result<Vec<(String, Report)>, ServerError> {
    let mut out = Vec::new();
    for (k, d) in docs::list::<Report>(&*ctx.store, REPORTS, after, limit).await? {
        let mut r = d.value;
        let conv = ConversationId(r.conversation_id);
        if let Some((ev, state)) = ctx.store.message(conv, Seq(r.seq)).await? {
            if let (Some(pb::conversation_event::Body::Message(m)), false) = (&ev.body, state.deleted) {
                r.text = m.body.as_ref().map(|b| b.text.clone()).unwrap_or_default();
            }
        }
        out.push((k, r));
    }
    Ok(out)
}
