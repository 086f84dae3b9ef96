//! Search requests (PROTOCOL.md §14.3–14.4): a message query is parsed (typed refusals),
//! scoped to the conversations the caller is a member of at this moment (`in:` and the
//! requested ids narrow it; encrypted ones are named, never searched), run on this node's
//! index, and its hits are checked against the store (a message deleted since it was
//! indexed is left out) and returned with the event and a snippet. People and channels
//! are found by name prefix in the store.
use natter_protocol::pb::{self, conversation_event::Body, response::Result as Res, ErrorCode};
use natter_protocol::search::{hit_snippet, parse, Query};
use natter_protocol::{ConversationId, Seq, ServerError, UserId};

use super::{bad, Ctx};
use crate::conversation::Actor;
use crate::search::{recency, Hit, Order, Request};

/// Hits per page unless asked.
const DEFAULT_LIMIT: u32 = 20;
/// Most hits per page.
const MAX_LIMIT: u32 = 100;
/// Matches counted at most.
const MAX_TOTAL: usize = 10_000;
/// Names per directory answer unless asked, and at most.
const DEFAULT_NAMES: u32 = 20;
const MAX_NAMES: u32 = 50;
const MS_PER_DAY: u64 = 86_400_000;

/// Where a page starts: below a time (newest first) or at an offset (by relevance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    Start,
    /// Newest first: hits below this [`recency`] (the last hit's, so nothing repeats and
    /// messages arriving meanwhile do not shift the pages).
    Below(u64),
    /// By relevance: hits from `offset` on among those committed before `as_of_ms` (when
    /// the first page was made, so newer messages do not shift the pages).
    Offset {
        offset: usize,
        as_of_ms: u64,
    },
}

impl Cursor {
    fn parse(s: &str, order: Order) -> Result<Cursor, ServerError> {
        let refused = || bad("not a cursor from this search");
        if s.is_empty() {
            return Ok(Cursor::Start);
        }
        match (order, s.split_at_checked(1)) {
            (Order::Recent, Some(("t", rest))) => Ok(Cursor::Below(rest.parse().map_err(|_| refused())?)),
            (Order::Relevant, Some(("o", rest))) => {
                let (o, t) = rest.split_once('.').ok_or_else(refused)?;
                Ok(Cursor::Offset {
                    offset: o.parse().map_err(|_| refused())?,
                    as_of_ms: t.parse().map_err(|_| refused())?,
                })
            }
            _ => Err(refused()),
        }
    }

    fn encode(self) -> String {
        match self {
            Cursor::Start => String::new(),
            Cursor::Below(key) => format!("t{key}"),
            Cursor::Offset { offset, as_of_ms } => format!("o{offset}.{as_of_ms}"),
        }
    }
}

fn search_off() -> ServerError {
    ServerError::new(ErrorCode::UnknownRequest, "search is off on this server")
}

/// `Search`: one page of message hits.
pub(super) async fn messages(ctx: &Ctx, actor: &Actor, r: pb::Search) -> Result<Res, ServerError> {
    let search = ctx.search.as_ref().ok_or_else(search_off)?;
    ctx.rates.search(actor.user)?;
    let query = parse(&r.query, r.typing).map_err(|e| bad(&e.to_string()))?;
    let limit = match r.limit {
        0 => DEFAULT_LIMIT,
        n if n <= MAX_LIMIT => n,
        _ => {
            return Err(ServerError::new(
                ErrorCode::LimitExceeded,
                format!("limit is at most {MAX_LIMIT}"),
            ))
        }
    } as usize;
    let order = match pb::SearchOrder::try_from(r.order) {
        Ok(pb::SearchOrder::Relevant) => Order::Relevant,
        _ => Order::Recent,
    };
    let cursor = Cursor::parse(&r.cursor, order)?;
    let started_ms = crate::clock::now_ms() + 1;
    let (conversations, encrypted) = scope(ctx, actor, &r.conversation_ids, &query).await?;
    let mut senders: Vec<UserId> = r.from_user_ids.iter().map(|u| UserId(*u)).collect();
    let mut nobody = false;
    for name in &query.from {
        match ctx.store.user_by_name(&name.to_ascii_lowercase()).await? {
            Some(u) => senders.push(u.id),
            None => nobody = true,
        }
    }
    let (after_ms, before_ms) = bounds(&r, &query);
    let mut req = Request {
        query,
        conversations,
        senders,
        after_ms,
        before_ms,
        below: None,
        order,
        offset: 0,
        limit: limit + 1,
    };
    if nobody {
        req.conversations.clear();
    }
    match cursor {
        Cursor::Start => {}
        Cursor::Offset { offset, as_of_ms } => {
            req.offset = offset;
            req.before_ms = Some(before_ms.map_or(as_of_ms, |x| x.min(as_of_ms)));
        }
        Cursor::Below(key) => req.below = Some(key),
    }
    let (mut found, mut total) = search.search(req.clone()).await.map_err(internal)?;
    if cursor != Cursor::Start {
        // The total counts every match, not only those below the page.
        let all = Request {
            before_ms,
            below: None,
            offset: 0,
            limit: 1,
            ..req.clone()
        };
        total = search.search(all).await.map_err(internal)?.1;
    }
    let more = found.len() > limit;
    found.truncate(limit);
    let next = if !more {
        Cursor::Start
    } else {
        match (order, cursor) {
            (Order::Relevant, Cursor::Offset { offset, as_of_ms }) => Cursor::Offset {
                offset: offset + limit,
                as_of_ms,
            },
            (Order::Relevant, _) => Cursor::Offset {
                offset: limit,
                as_of_ms: started_ms,
            },
            (Order::Recent, _) => Cursor::Below(found.last().map_or(0, |h| recency(h.time_ms, h.seq))),
        }
    };
    let mut hits = Vec::with_capacity(found.len());
    for h in found {
        if let Some(hit) = hit(ctx, &req.query, h).await? {
            hits.push(hit);
        }
    }
    Ok(Res::Search(pb::SearchResults {
        hits,
        next_cursor: next.encode(),
        total: total.min(MAX_TOTAL) as u32,
        index_lag_ms: search.lag_ms(),
        encrypted_conversation_ids: encrypted.iter().map(|c| c.0).collect(),
        // The client's own (§14.5).
        local: Vec::new(),
    }))
}

fn internal(e: crate::search::SearchError) -> ServerError {
    tracing::error!(error = %e, "search failed");
    ServerError::new(ErrorCode::Internal, "search failed")
}

/// The query's time bounds: the request's milliseconds and its `after:`/`before:` days
/// (inclusive days), the narrower of each.
fn bounds(r: &pb::Search, q: &Query) -> (Option<u64>, Option<u64>) {
    let day_ms = |d: i64| u64::try_from(d).unwrap_or(0).saturating_mul(MS_PER_DAY);
    let after = [(r.after_ms > 0).then_some(r.after_ms), q.after_day.map(day_ms)]
        .into_iter()
        .flatten()
        .max();
    let before = [
        (r.before_ms > 0).then_some(r.before_ms),
        q.before_day.map(|d| day_ms(d + 1)),
    ]
    .into_iter()
    .flatten()
    .min();
    (after, before)
}

/// The conversations a query may look in — the caller's own, now, narrowed by the
/// requested ids and `in:` names — and, apart, the encrypted ones among them.
async fn scope(
    ctx: &Ctx,
    actor: &Actor,
    requested: &[u64],
    q: &Query,
) -> Result<(Vec<ConversationId>, Vec<ConversationId>), ServerError> {
    let mine = ctx.store.user_conversations(actor.user).await?;
    let candidates: Vec<ConversationId> = if requested.is_empty() {
        mine
    } else {
        let mut out = Vec::with_capacity(requested.len());
        for id in requested {
            let c = super::conv_id(*id)?;
            if !mine.contains(&c) {
                return Err(ServerError::new(
                    ErrorCode::NotMember,
                    "not a member of this conversation",
                ));
            }
            out.push(c);
        }
        out.sort();
        out.dedup();
        out
    };
    let within: Vec<String> = q.within.iter().map(|n| natter_protocol::search::fold(n)).collect();
    let (mut plain, mut encrypted) = (Vec::new(), Vec::new());
    for c in candidates {
        let view = match ctx.shards.view(c, actor.user).await {
            Ok(v) => v,
            // Left or deleted since the membership list was read.
            Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::NotMember) => continue,
            Err(e) => return Err(e),
        };
        if !within.is_empty() {
            let names: Vec<String> = match view.meta.kind {
                pb::ConversationKind::Direct => view
                    .members
                    .iter()
                    .filter(|m| m.user != actor.user)
                    .map(|m| natter_protocol::search::fold(&m.username))
                    .collect(),
                _ => vec![natter_protocol::search::fold(&view.meta.name)],
            };
            if !within.iter().any(|w| names.contains(w)) {
                continue;
            }
        }
        if view.meta.encrypted {
            encrypted.push(c);
        } else {
            plain.push(c);
        }
    }
    Ok((plain, encrypted))
}

/// A hit as the client gets it: the message's first event (text as last edited) and a
/// snippet; `None` if the message was deleted after it was indexed.
async fn hit(ctx: &Ctx, q: &Query, h: Hit) -> Result<Option<pb::SearchHit>, ServerError> {
    let Some((mut event, state)) = ctx.store.message(h.conversation, Seq(h.seq)).await? else {
        return Ok(None);
    };
    if state.deleted {
        return Ok(None);
    }
    if state.edited {
        if let Some(Body::Message(m)) = &mut event.body {
            if let Some(b) = &mut m.body {
                b.text = h.text.clone();
            }
        }
    }
    Ok(Some(pb::SearchHit {
        conversation_id: h.conversation.0,
        seq: h.seq,
        score: h.score,
        snippet: hit_snippet(&h.text, &h.names, q),
        event: Some(event),
    }))
}

fn names_limit(limit: u32) -> Result<usize, ServerError> {
    match limit {
        0 => Ok(DEFAULT_NAMES as usize),
        n if n <= MAX_NAMES => Ok(n as usize),
        _ => Err(ServerError::new(
            ErrorCode::LimitExceeded,
            format!("limit is at most {MAX_NAMES}"),
        )),
    }
}

/// `SearchUsers`: listed users by username prefix.
pub(super) async fn users(ctx: &Ctx, actor: &Actor, r: pb::SearchUsers) -> Result<Res, ServerError> {
    ctx.rates.search(actor.user)?;
    let limit = names_limit(r.limit)?;
    let prefix = r.prefix.trim().trim_start_matches('@').to_lowercase();
    if prefix.is_empty() || prefix.chars().count() > 32 {
        return Err(bad("the prefix is 1 to 32 characters"));
    }
    let found = ctx.store.users_by_prefix(&prefix, limit + 1).await?;
    let users = found
        .into_iter()
        .filter(|u| u.id != actor.user)
        .take(limit)
        .map(|u| pb::UserMatch {
            user_id: u.id.0,
            username: u.username,
        })
        .collect();
    Ok(Res::Users(pb::UserMatches { users }))
}

/// `SearchChannels`: public channels by name prefix.
pub(super) async fn channels(ctx: &Ctx, actor: &Actor, r: pb::SearchChannels) -> Result<Res, ServerError> {
    ctx.rates.search(actor.user)?;
    let limit = names_limit(r.limit)?;
    let prefix = r.prefix.trim().trim_start_matches('#').to_lowercase();
    if prefix.chars().count() > 64 {
        return Err(bad("the prefix is at most 64 characters"));
    }
    let mut channels = Vec::new();
    for (name, id) in ctx.store.channels_by_prefix(&prefix, limit).await? {
        let Some(rec) = ctx.store.load_conversation(id).await? else {
            continue;
        };
        if rec.meta.deleted {
            continue;
        }
        channels.push(pb::ChannelMatch {
            conversation_id: id.0,
            name,
            member_count: rec.members.len() as u32,
            joined: rec.members.iter().any(|m| m.user == actor.user),
        });
    }
    Ok(Res::Channels(pb::ChannelMatches { channels }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        for (c, o) in [
            (Cursor::Below(17 << 20), Order::Recent),
            (
                Cursor::Offset {
                    offset: 40,
                    as_of_ms: 9,
                },
                Order::Relevant,
            ),
        ] {
            assert_eq!(Cursor::parse(&c.encode(), o).unwrap(), c);
        }
        assert_eq!(Cursor::parse("", Order::Recent).unwrap(), Cursor::Start);
        for bad in ["x", "t5.1", "tq", "o40", "o4.x", "é"] {
            let e = Cursor::parse(bad, Order::Recent).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
        }
        assert!(
            Cursor::parse("t5.0", Order::Relevant).is_err(),
            "another order's cursor"
        );
    }
}
