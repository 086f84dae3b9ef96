//! History pages (PROTOCOL.md §5.6): members read the whole log, a page at a time, and a
//! page always fits in one frame.
use natter_protocol::pb::{self, response::Result as Res, ErrorCode};
use natter_protocol::{limits, Seq, ServerError};

use super::{conv_id, Ctx};
use crate::conversation::Actor;
use crate::store::Page;

/// Encoded bytes of events in one history page: a page always fits in one frame.
const PAGE_BYTE_BUDGET: usize = limits::MAX_FRAME_BYTES - 64 * 1024;

/// A page of history; members may read the whole log (PROTOCOL.md §5.6).
pub(super) async fn history(ctx: &Ctx, actor: &Actor, r: pb::GetHistory) -> Result<Res, ServerError> {
    let conv = conv_id(r.conversation_id)?;
    let view = ctx.shards.view(conv, actor.user).await?;
    if r.limit > ctx.max_history_page {
        return Err(ServerError::new(
            ErrorCode::LimitExceeded,
            format!("limit is at most {}", ctx.max_history_page),
        ));
    }
    let limit = if r.limit == 0 { ctx.max_history_page } else { r.limit } as usize;
    let page = match r.anchor {
        Some(pb::get_history::Anchor::After(s)) => Page::After(Seq(s)),
        Some(pb::get_history::Anchor::Before(s)) => Page::Before(Seq(s)),
        None => Page::Before(Seq(0)),
    };
    // The floor first: events removed after it was read can only leave the page shorter,
    // never show a hole below a floor the page does not report (PROTOCOL.md §5.17).
    let removed_through = ctx.store.removed_through(conv).await?;
    let (mut events, mut has_more) = ctx.store.events(conv, page, limit).await?;
    // Keep the page inside one frame whatever its compressibility (PROTOCOL.md §5.6).
    let mut budget = PAGE_BYTE_BUDGET;
    let fits = |e: &pb::ConversationEvent, budget: &mut usize| {
        let len = prost::Message::encoded_len(e) + 8;
        let ok = len <= *budget;
        *budget = budget.saturating_sub(len);
        ok
    };
    let keep = match page {
        Page::After(_) => events.iter().take_while(|e| fits(e, &mut budget)).count().max(1),
        Page::Before(_) => events.iter().rev().take_while(|e| fits(e, &mut budget)).count().max(1),
    };
    if keep < events.len() {
        has_more = true;
        match page {
            Page::After(_) => events.truncate(keep),
            Page::Before(_) => {
                events.drain(..events.len() - keep);
            }
        }
    }
    Ok(Res::History(pb::HistoryPage {
        conversation_id: conv.0,
        events,
        has_more,
        last_seq: view.last_seq.0,
        removed_through: removed_through.0,
    }))
}
