//! From the committed log to the index: which index changes an event makes, and catching a
//! conversation (or every conversation) up from the store to the index's positions. A
//! conversation's events are applied in seq order and its position moves with them in the
//! same commit, so re-running a catch-up after a crash adds nothing twice and misses
//! nothing. Encrypted messages are never indexed here.
use std::sync::Arc;

use natter_protocol::pb::{self, conversation_event::Body};
use natter_protocol::search::{attachment_names, message_has, Has};
use natter_protocol::{ConversationId, Seq, UserId};

use super::{Batch, Doc, Op, SearchError, SearchIndex};
use crate::store::{Page, Store, StoreError};

/// Events read from the store per page (and per index commit) when catching up.
const PAGE: usize = 512;
/// Conversations listed per store read when reconciling.
const LIST: usize = 1024;

/// Why catching up failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] SearchError),
}

/// What a message body says to the index: its attachments' names, and what it has.
fn content(body: &pb::MessageBody, text: &str) -> Option<(Vec<String>, Vec<Has>)> {
    if body.encrypted.is_some() {
        return None;
    }
    Some((
        attachment_names(&body.attachments),
        message_has(text, &body.attachments),
    ))
}

/// The index changes `ev` makes. An edit needs its message's first event (for the sender,
/// time and attachments), read from `store`.
pub async fn ops_for(store: &dyn Store, ev: &pb::ConversationEvent) -> Result<Vec<Op>, StoreError> {
    let conv = ConversationId(ev.conversation_id);
    Ok(match &ev.body {
        Some(Body::Message(m)) => {
            let Some(body) = &m.body else { return Ok(Vec::new()) };
            match content(body, &body.text) {
                Some((names, has)) => vec![Op::Add(Doc {
                    conversation: conv,
                    seq: ev.seq,
                    sender: UserId(ev.sender_user_id),
                    time_ms: ev.server_time_ms,
                    text: body.text.clone(),
                    names,
                    has,
                })],
                None => Vec::new(),
            }
        }
        Some(Body::MessageEdited(e)) => {
            let Some((first, state)) = store.message(conv, Seq(e.target_seq)).await? else {
                return Ok(Vec::new());
            };
            let body = match &first.body {
                Some(Body::Message(m)) => m.body.clone().unwrap_or_default(),
                _ => return Ok(Vec::new()),
            };
            match content(&body, &e.text) {
                Some((names, has)) if !state.deleted => vec![Op::Put(Doc {
                    conversation: conv,
                    seq: e.target_seq,
                    sender: UserId(first.sender_user_id),
                    time_ms: first.server_time_ms,
                    text: e.text.clone(),
                    names,
                    has,
                })],
                _ => Vec::new(),
            }
        }
        Some(Body::MessageDeleted(d)) => vec![Op::Remove {
            conversation: conv,
            seq: d.target_seq,
        }],
        Some(Body::Deleted(_)) => vec![Op::RemoveConversation(conv)],
        // Erased or anonymised, a deleted account's messages leave the index.
        Some(Body::UserErased(u)) => vec![Op::RemoveSender {
            conversation: conv,
            sender: UserId(u.user_id),
        }],
        _ => Vec::new(),
    })
}

/// Apply `batch` off the async runtime (an index commit writes and syncs files).
pub async fn apply<I: SearchIndex + ?Sized + 'static>(index: &Arc<I>, batch: Batch) -> Result<(), SearchError> {
    let index = index.clone();
    // Below chat's priority: a commit's burst of CPU must not show in delivery latency.
    crate::background::blocking(move || index.apply(&batch))
        .await
        .map_err(|e| SearchError::Index(format!("index task: {e}")))?
}

/// Bring `conv` from `indexed` (its position) up to the store's newest event; how many
/// events were read, and the position it is left at.
pub async fn catch_up<I: SearchIndex + ?Sized + 'static>(
    store: &dyn Store,
    index: &Arc<I>,
    conv: ConversationId,
    mut indexed: u64,
) -> Result<(u64, u64), FeedError> {
    let mut read = 0;
    loop {
        let (events, more) = store.events(conv, Page::After(Seq(indexed)), PAGE).await?;
        let Some(last) = events.last().map(|e| e.seq) else {
            // Retention may have removed everything after the position: the floor is
            // where the conversation is indexed through then.
            let floor = store.removed_through(conv).await?.0;
            if floor > indexed {
                let through = vec![(conv, floor)];
                apply(
                    index,
                    Batch {
                        through,
                        ..Default::default()
                    },
                )
                .await?;
                indexed = floor;
            }
            return Ok((read, indexed));
        };
        let mut ops = Vec::new();
        for ev in &events {
            ops.extend(ops_for(store, ev).await?);
        }
        read += events.len() as u64;
        apply(
            index,
            Batch {
                ops,
                through: vec![(conv, last)],
                cursor: None,
            },
        )
        .await?;
        indexed = last;
        if !more {
            return Ok((read, indexed));
        }
    }
}

/// Bring every conversation up to date: what a new, rebuilt or restarted index does
/// before it follows the live feed. Returns (conversations caught up, events read).
pub async fn reconcile<I: SearchIndex + ?Sized + 'static>(
    store: &dyn Store,
    index: &Arc<I>,
) -> Result<(u64, u64), FeedError> {
    let positions: std::collections::HashMap<ConversationId, u64> = index.positions()?.into_iter().collect();
    let (mut convs, mut events) = (0, 0);
    let mut after = ConversationId(0);
    loop {
        let page = store.conversations_after(after, LIST).await?;
        let Some(&(last_id, _)) = page.last() else {
            return Ok((convs, events));
        };
        for (conv, last) in page {
            let indexed = positions.get(&conv).copied().unwrap_or(0);
            if last.0 > indexed {
                events += catch_up(store, index, conv, indexed).await?.0;
                convs += 1;
            }
        }
        after = last_id;
    }
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
