//! Signals around the log: typing (ephemeral, never stored), and the receipts that follow a
//! moved delivered or read cursor (PROTOCOL.md §5.10, §5.12): who hears of them, and the
//! members' cursors as `GetReceipts` answers them.
use std::sync::Arc;

use natter_protocol::pb::{self, ConversationKind as Kind};
use natter_protocol::{limits, ConversationId, Seq, ServerError, UserId};

use super::{bad, conv_id, Ctx};
use crate::conversation::{Actor, ConvView};

/// "Typing" in a conversation: members only; goes to the other members' connected devices
/// and nowhere else (never stored, never replayed) (PROTOCOL.md §5.12).
pub async fn typing(ctx: &Ctx, actor: &Actor, conv: u64) -> Result<(), ServerError> {
    let conv = conv_id(conv)?;
    ctx.rates.typing(actor.user)?;
    let view = ctx.shards.view(conv, actor.user).await?;
    let update = pb::TypingUpdate {
        conversation_id: conv.0,
        user_id: actor.user.0,
        username: actor.username.clone(),
        expires_in_ms: ctx.typing_ttl_ms,
    };
    let frame = pb::Frame {
        kind: Some(pb::frame::Kind::Signal(pb::Signal {
            kind: Some(pb::signal::Kind::Typing(update)),
        })),
    };
    let members: Vec<UserId> = view.members.iter().map(|m| m.user).collect();
    ctx.hub.ephemeral(&members, actor.user, Arc::new(frame));
    Ok(())
}

/// Every member's cursors.
pub(super) async fn receipts(ctx: &Ctx, v: &ConvView) -> Result<Vec<pb::MemberReceipt>, ServerError> {
    let mut out = Vec::with_capacity(v.members.len());
    for m in v.members.iter() {
        out.push(pb::MemberReceipt {
            user_id: m.user.0,
            delivered_seq: ctx.store.delivered_cursor(m.user, v.meta.id).await?.0,
            read_seq: ctx.store.read_cursor(m.user, v.meta.id).await?.0,
        });
    }
    out.sort_by_key(|r| r.user_id);
    Ok(out)
}

/// The conversation a cursor moves in: members only, and never past the last seq.
pub(super) async fn cursor_target(
    ctx: &Ctx,
    actor: &Actor,
    conv: ConversationId,
    seq: u64,
) -> Result<ConvView, ServerError> {
    let view = ctx.shards.view_at_least(conv, actor.user, Seq(seq)).await?;
    if seq > view.last_seq.0 {
        return Err(bad("cannot mark beyond the last seq"));
    }
    Ok(view)
}

/// Tell who needs to know that a member's cursors moved (PROTOCOL.md §5.10): the member's
/// own devices, and in direct conversations and groups every other member. Only a moved read
/// cursor changes the unread count, so only then is it computed (a log scan) and sent; a
/// delivery ack, sent for every batch of messages a device receives, skips it.
/// Most events a receipt looks through to find whom it concerns; beyond that (a device
/// catching up on a long backlog) it goes to every member.
const RECEIPT_SCAN: usize = 256;

/// A member's cursors moved from `since` up: their own devices hear it (unread sync), and of
/// the other members only those whose messages it covers (their ✓✓/read marks). Telling
/// every member of a group about every member's cursor would cost O(members²) signals per
/// message; natter-bench's fan-out showed it dominating.
pub(super) async fn cursors_moved(
    ctx: &Ctx,
    actor: &Actor,
    v: &ConvView,
    since: Seq,
    delivered: Seq,
    read: Seq,
    read_moved: bool,
) -> Result<(), ServerError> {
    let conv = v.meta.id;
    let update = |unread_count, last_seq| pb::Frame {
        kind: Some(pb::frame::Kind::Signal(pb::Signal {
            kind: Some(pb::signal::Kind::Receipt(pb::ReceiptUpdate {
                conversation_id: conv.0,
                user_id: actor.user.0,
                delivered_seq: delivered.0,
                read_seq: read.0,
                unread_count,
                last_seq,
            })),
        })),
    };
    let frame = |f: pb::Frame| natter_protocol::codec::encode_frame(&f);
    let own = if read_moved {
        let (unread, _) = ctx
            .store
            .unread_and_last_message(conv, actor.user, read, limits::MAX_UNREAD_COUNT)
            .await?;
        update(unread, v.last_seq.0)
    } else {
        update(0, 0)
    };
    if read_moved {
        ctx.hub.signal(&[actor.user], frame(own));
    } else {
        // Only the delivered cursor moved, by this device's own ack: its `Done` says so,
        // and the SDK applies it (one packet less per delivery ack).
        ctx.hub.signal_other_devices(actor.user, actor.device, frame(own));
    }
    if v.meta.kind == Kind::Channel {
        return Ok(());
    }
    let upto = delivered.max(read);
    let mut others: Vec<UserId> = match ctx.store.message_senders(conv, since, upto, RECEIPT_SCAN).await? {
        Some(senders) => senders.into_iter().filter(|u| *u != actor.user).collect(),
        None => v.members.iter().map(|m| m.user).filter(|u| *u != actor.user).collect(),
    };
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        ctx.hub.signal(&others, frame(update(0, 0)));
    }
    Ok(())
}
