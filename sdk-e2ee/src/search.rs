//! Searching encrypted conversations on the device (PROTOCOL.md §14.5). Every event of an
//! encrypted conversation the engine hands on opened — live, in history pages, and from a
//! budgeted backfill that pages back through each encrypted conversation after connecting
//! — goes into the client core's [`LocalIndex`]. The index is kept beside the encryption
//! state, sealed with the same store key ([`Io::load_index`], [`Io::write_index`]),
//! written at most every [`FLUSH_MS`]; it holds only what this device could read.
use std::sync::Arc;

use natter_protocol::client::local_search::{Coverage, LocalDoc, LocalIndex, LocalRequest};
use natter_protocol::client::ops;
use natter_protocol::pb::{self, conversation_event::Body};
use natter_protocol::search::{attachment_names, hit_snippet, message_has, Query};
use natter_protocol::{ConversationId, Seq};

use crate::{random, Engine, Io};

/// How long changes gather before the index is written.
pub const FLUSH_MS: u32 = 2_000;
/// History pages the backfill reads per connection, over all conversations.
const BACKFILL_PAGES: usize = 40;
/// Events per backfill page.
const BACKFILL_PAGE: u32 = 100;
/// Pause between backfill pages (it yields to the app's own requests).
const BACKFILL_PAUSE_MS: u32 = 50;

/// The index and what is pending for it.
#[derive(Debug, Default)]
pub(crate) struct LocalSearch {
    index: LocalIndex,
    /// Loaded for the current device.
    loaded: bool,
    /// Changed since the last write.
    dirty: bool,
    /// A write is scheduled.
    flushing: bool,
}

/// What the device found.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalResults {
    /// The hits, newest first: the message as this device opened it (text as last edited).
    pub hits: Vec<pb::ConversationEvent>,
    /// Matches in all.
    pub total: usize,
    /// How far back each searched conversation is indexed (none: nothing seen yet).
    pub coverage: Vec<(ConversationId, Option<Coverage>)>,
}

fn doc(ev: &pb::ConversationEvent, body: &pb::MessageBody) -> LocalDoc {
    LocalDoc {
        time_ms: ev.server_time_ms,
        sender: ev.sender_user_id,
        sender_name: ev.sender_username.clone(),
        text: body.text.clone(),
        names: attachment_names(&body.attachments),
        has: message_has(&body.text, &body.attachments),
    }
}

impl<I: Io> Engine<I> {
    /// Load this device's index (after its state: the same key opens both). A missing or
    /// unreadable index starts empty; the backfill fills it again.
    pub(crate) async fn load_index(&self) {
        if self.search.lock().expect("search").loaded {
            return;
        }
        let index = match self.io.load_index().await {
            Ok(Some(bytes)) => LocalIndex::open(
                &bytes,
                &self.store_key,
                natter_protocol::client::local_search::DEFAULT_MAX_MESSAGES,
                natter_protocol::client::local_search::DEFAULT_MAX_TEXT_BYTES,
            )
            .unwrap_or_else(|e| {
                self.io.warn(&format!("the local search index is rebuilt: {e}"));
                LocalIndex::default()
            }),
            Ok(None) => LocalIndex::default(),
            Err(e) => {
                self.io.warn(&format!("reading the local search index failed: {e}"));
                LocalIndex::default()
            }
        };
        let mut s = self.search.lock().expect("search");
        s.index = index;
        s.loaded = true;
    }

    /// Put an event the app gets (opened) into the index, if its conversation is
    /// encrypted, and have the index written soon.
    pub(crate) fn index_event(self: &Arc<Self>, ev: &pb::ConversationEvent) {
        if self.index(ev) {
            self.schedule_flush();
        }
    }

    /// Put an event into the index (written with the next flush); whether it was one of
    /// an encrypted conversation.
    pub(crate) fn index(&self, ev: &pb::ConversationEvent) -> bool {
        let conv = ConversationId(ev.conversation_id);
        if self.convs().is_encrypted(conv) != Some(true) {
            return false;
        }
        {
            let mut s = self.search.lock().expect("search");
            let ix = &mut s.index;
            let (c, seq) = (ev.conversation_id, ev.seq);
            match &ev.body {
                Some(Body::Message(m)) => match m.body.as_ref().filter(|b| b.encrypted.is_none()) {
                    Some(body) => ix.put(c, seq, doc(ev, body)),
                    // Not opened (yet): seen, nothing to find.
                    None => ix.observe(c, seq),
                },
                Some(Body::MessageEdited(e)) => {
                    ix.observe(c, seq);
                    ix.edit(c, e.target_seq, &e.text);
                }
                Some(Body::MessageDeleted(d)) => {
                    ix.observe(c, seq);
                    ix.remove(c, d.target_seq);
                }
                Some(Body::Deleted(_)) => ix.remove_conversation(c),
                _ => ix.observe(c, seq),
            }
            s.dirty = true;
        }
        true
    }

    /// Write the index within [`FLUSH_MS`] (one write for everything that changed).
    fn schedule_flush(self: &Arc<Self>) {
        {
            let mut s = self.search.lock().expect("search");
            if s.flushing || !s.dirty {
                return;
            }
            s.flushing = true;
        }
        let me = self.clone();
        self.io.spawn(async move {
            me.io.sleep(FLUSH_MS).await;
            me.flush_index().await;
        });
    }

    /// Write the index now if it changed.
    pub async fn flush_index(&self) {
        let sealed = {
            let mut s = self.search.lock().expect("search");
            s.flushing = false;
            if !s.dirty || !s.loaded {
                return;
            }
            s.dirty = false;
            s.index.seal(&self.store_key, random::<24>())
        };
        if let Err(e) = self.io.write_index(sealed).await {
            self.io.warn(&format!("writing the local search index failed: {e}"));
            self.search.lock().expect("search").dirty = true;
        }
    }

    /// Page back through each encrypted conversation this device has not indexed from its
    /// start, at most [`BACKFILL_PAGES`] pages per connection (newest conversations'
    /// history first as the server lists them).
    pub(crate) async fn backfill(self: &Arc<Self>) {
        let mut pages = 0;
        let convs = self.convs().encrypted_ids();
        for conv in convs {
            loop {
                if pages >= BACKFILL_PAGES {
                    return;
                }
                let before = match self.search.lock().expect("search").index.coverage(conv.0) {
                    Some(c) if c.complete() => break,
                    Some(c) => c.from_seq,
                    None => 0,
                };
                let anchor = natter_protocol::client::HistoryAnchor::Before(Seq(before));
                let mut page = match self.io.call(ops::history(conv, anchor, BACKFILL_PAGE)).await {
                    Ok(p) => p,
                    Err(e) => {
                        self.io.warn(&format!("search backfill of {conv:?} stopped: {e}"));
                        break;
                    }
                };
                pages += 1;
                let reached_start = !page.has_more;
                // Opening a page indexes it.
                self.open_page(&mut page).await;
                self.schedule_flush();
                if reached_start {
                    // Nothing older: the start of the history is covered.
                    let mut s = self.search.lock().expect("search");
                    s.index.observe(conv.0, 1);
                    s.dirty = true;
                    drop(s);
                    self.schedule_flush();
                    break;
                }
                if page.events.is_empty() {
                    break;
                }
                self.io.sleep(BACKFILL_PAUSE_MS).await;
            }
        }
    }

    /// Search `conversations` (the encrypted ones the server named; all this device knows
    /// to be encrypted when empty) on the device.
    pub fn search_local(
        &self,
        query: &Query,
        conversations: &[u64],
        senders: &[u64],
        after_ms: Option<u64>,
        before_ms: Option<u64>,
        limit: usize,
    ) -> LocalResults {
        let mut scope: Vec<u64> = if conversations.is_empty() {
            self.convs().encrypted_ids().into_iter().map(|c| c.0).collect()
        } else {
            // The server's word: it knows which of the caller's conversations are encrypted
            // even before this device's list has arrived.
            for c in conversations {
                self.note(ConversationId(*c), true);
            }
            conversations.to_vec()
        };
        scope.sort_unstable();
        scope.dedup();
        let s = self.search.lock().expect("search");
        let req = LocalRequest {
            query: Some(query),
            conversations: &scope,
            senders,
            after_ms,
            before_ms,
            limit,
        };
        let (found, total) = s.index.search(&req);
        let hits = found
            .into_iter()
            .filter_map(|h| {
                let d = s.index.doc(h.conversation, h.seq)?;
                Some(pb::ConversationEvent {
                    conversation_id: h.conversation,
                    seq: h.seq,
                    sender_user_id: d.sender,
                    sender_username: d.sender_name.clone(),
                    server_time_ms: d.time_ms,
                    body: Some(Body::Message(pb::MessageEvent {
                        client_msg_id: String::new(),
                        body: Some(pb::MessageBody {
                            text: d.text.clone(),
                            ..Default::default()
                        }),
                    })),
                    ..Default::default()
                })
            })
            .collect();
        LocalResults {
            hits,
            total,
            coverage: scope
                .iter()
                .map(|c| (ConversationId(*c), s.index.coverage(*c)))
                .collect(),
        }
    }
}

impl<I: Io> Engine<I> {
    /// Merge this device's hits in the encrypted conversations of a server answer's scope
    /// (`encrypted_conversation_ids`) into it: on the first page (no cursor) up to
    /// `limit` local hits join the server's, de-duplicated by (conversation, seq), in the
    /// requested order (newest first; by relevance, after the server's scored hits), and
    /// `local` says how far back each of those conversations is indexed.
    pub fn merge_local(&self, req: &pb::Search, answer: &mut pb::SearchResults) {
        let Ok(query) = natter_protocol::search::parse(&req.query, req.typing) else {
            return;
        };
        let scope = answer.encrypted_conversation_ids.clone();
        if scope.is_empty() {
            return;
        }
        let limit = match req.limit {
            0 => 20,
            n => n as usize,
        };
        let after = (req.after_ms > 0).then_some(req.after_ms);
        let before = (req.before_ms > 0).then_some(req.before_ms);
        let local = self.search_local(&query, &scope, &req.from_user_ids, after, before, limit);
        answer.local = local
            .coverage
            .iter()
            .map(|(c, cov)| pb::LocalCoverage {
                conversation_id: c.0,
                from_seq: cov.map_or(0, |c| c.from_seq),
                to_seq: cov.map_or(0, |c| c.to_seq),
                complete: cov.is_some_and(|c| c.complete()),
            })
            .collect();
        if !req.cursor.is_empty() {
            return;
        }
        answer.total = answer.total.saturating_add(local.total as u32);
        for ev in local.hits {
            if answer
                .hits
                .iter()
                .any(|h| (h.conversation_id, h.seq) == (ev.conversation_id, ev.seq))
            {
                continue;
            }
            let text = match &ev.body {
                Some(Body::Message(m)) => m.body.as_ref().map(|b| b.text.clone()).unwrap_or_default(),
                _ => String::new(),
            };
            answer.hits.push(pb::SearchHit {
                conversation_id: ev.conversation_id,
                seq: ev.seq,
                score: 0.0,
                // The local hit's event carries its text only.
                snippet: hit_snippet(&text, &[], &query),
                event: Some(ev),
            });
        }
        if req.order != pb::SearchOrder::Relevant as i32 {
            let time = |h: &pb::SearchHit| h.event.as_ref().map_or(0, |e| e.server_time_ms);
            answer
                .hits
                .sort_by_key(|h| std::cmp::Reverse((time(h), h.seq, h.conversation_id)));
        }
    }
}
