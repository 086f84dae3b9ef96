//! Retention (PROTOCOL.md §5.17): how long a conversation keeps its events, and the sweep
//! that removes the expired ones.
//!
//! A conversation keeps its events for its own `retention_secs` (set by `SetRetention`),
//! else for its kind's default from the configuration (`[retention]`, 365 days each;
//! 0 = forever). Event times never decrease along the log (guarantee 1), so what has
//! expired is always a prefix: the sweep removes it oldest first, in batches of at most
//! `batch` events, each batch one atomic store write that also raises the conversation's
//! floor (`removed_through`), which history pages and resumes report instead of a gap.
//!
//! Before a batch goes, the files its messages attach lose those references (a file no
//! message attaches any more is deleted); after it, this node's search index drops the
//! range. A crash in between leaves a file without its message or an index entry without
//! its event: the next sweep finishes the batch, and search never answers with a removed
//! message meanwhile (hits below the floor are left out at query time). Queued push
//! notifications for removed events are dropped when their turn comes. Every node sweeps
//! (removal is idempotent; the floor never moves back), so every node's index follows.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use natter_protocol::pb::{self, ConversationKind as Kind};
use natter_protocol::{ConversationId, Seq, UserId};
use serde::{Deserialize, Serialize};

use crate::media::Media;
use crate::ops::Metrics;
use crate::search::Search;
use crate::store::{ConversationMeta, Page, Store, StoreError};

/// Conversations read per store page while sweeping.
const CONVERSATIONS_PER_PAGE: usize = 500;

/// `[retention]`: how long events are kept, and how the sweep runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days a direct conversation keeps its events unless it says otherwise; 0: forever.
    /// Default 365.
    pub direct_days: u32,
    /// The same for groups. Default 365.
    pub group_days: u32,
    /// The same for channels. Default 365.
    pub channel_days: u32,
    /// Seconds between two sweeps. Default 3600.
    pub sweep_secs: u64,
    /// Events removed per store write. Default 500.
    pub batch: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            direct_days: 365,
            group_days: 365,
            channel_days: 365,
            sweep_secs: 3600,
            batch: 500,
        }
    }
}

impl RetentionSettings {
    /// The default for conversations of `kind`, in seconds (0: forever).
    pub fn default_secs(&self, kind: Kind) -> u64 {
        let days = match kind {
            Kind::Direct => self.direct_days,
            Kind::Channel => self.channel_days,
            _ => self.group_days,
        };
        u64::from(days) * 86_400
    }

    /// What applies to a conversation, in seconds (0: forever).
    pub fn effective(&self, meta: &ConversationMeta) -> u64 {
        meta.retention_secs.unwrap_or_else(|| self.default_secs(meta.kind))
    }
}

/// The retention settings a running server holds; SIGHUP replaces them.
pub type SharedRetention = Arc<RwLock<RetentionSettings>>;

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Conversations looked at.
    pub conversations: u64,
    /// Events removed.
    pub events: u64,
}

/// The sweep: removes expired events from the store, their files' references and this
/// node's search entries.
#[derive(Debug)]
pub struct Retention {
    store: Arc<dyn Store>,
    media: Arc<Media>,
    search: Option<Arc<Search>>,
    settings: SharedRetention,
    metrics: Arc<Metrics>,
    /// How far this node's search index has been told to drop each conversation.
    index_floor: Mutex<HashMap<ConversationId, Seq>>,
}

impl Retention {
    /// A sweep over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        media: Arc<Media>,
        search: Option<Arc<Search>>,
        settings: SharedRetention,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Retention {
            store,
            media,
            search,
            settings,
            metrics,
            index_floor: Mutex::new(HashMap::new()),
        })
    }

    /// Sweep every conversation once, as of `now_ms`.
    pub async fn sweep(&self, now_ms: u64) -> Result<Swept, StoreError> {
        let result = self.sweep_all(now_ms).await;
        Metrics::result(
            &self.metrics.retention_sweeps,
            if result.is_ok() { "ok" } else { "failed" },
        );
        result
    }

    async fn sweep_all(&self, now_ms: u64) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        let mut after = ConversationId(0);
        loop {
            let page = self.store.conversations_after(after, CONVERSATIONS_PER_PAGE).await?;
            let Some(&(last, _)) = page.last() else { break };
            for (conv, _) in page {
                swept.events += self.sweep_conversation(conv, now_ms).await?;
                swept.conversations += 1;
            }
            after = last;
        }
        Ok(swept)
    }

    /// Remove `conv`'s expired events; how many went.
    pub async fn sweep_conversation(&self, conv: ConversationId, now_ms: u64) -> Result<u64, StoreError> {
        let Some(rec) = self.store.load_conversation(conv).await? else {
            return Ok(0);
        };
        let settings = *self.settings.read().expect("retention settings");
        let keep_secs = settings.effective(&rec.meta);
        let mut floor = self.store.removed_through(conv).await?;
        let mut removed = 0;
        if keep_secs > 0 {
            let cutoff = now_ms.saturating_sub(keep_secs.saturating_mul(1000));
            let batch = settings.batch.max(1) as usize;
            loop {
                let (events, _) = self.store.events(conv, Page::After(floor), batch).await?;
                // Times never decrease along the log: what expired is a prefix.
                let expired: Vec<_> = events.iter().take_while(|e| e.server_time_ms < cutoff).collect();
                let Some(through) = expired.last().map(|e| Seq(e.seq)) else {
                    break;
                };
                for ev in &expired {
                    self.release_files(conv, ev).await;
                }
                self.store.remove_events(conv, through).await?;
                removed += expired.len() as u64;
                self.metrics.retention_removed.inc_by(expired.len() as u64);
                floor = through;
                if expired.len() < events.len() || events.len() < batch {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        self.drop_from_index(conv, floor);
        Ok(removed)
    }

    /// A removed message no longer holds the files it attached.
    async fn release_files(&self, conv: ConversationId, ev: &pb::ConversationEvent) {
        let Some(pb::conversation_event::Body::Message(m)) = &ev.body else {
            return;
        };
        let Some(body) = &m.body else { return };
        let r = (conv, UserId(ev.sender_user_id), m.client_msg_id.clone());
        let ids = body
            .attachments
            .iter()
            .map(|a| &a.media_id)
            .chain(body.encrypted.iter().flat_map(|e| &e.media_ids));
        for id in ids {
            if let Err(e) = self.media.remove_ref(id, &r).await {
                tracing::warn!(error = %e.message, "retention: a removed message's file stays referenced");
            }
        }
    }

    /// Tell this node's index to drop what the floor covers, once per move of the floor.
    fn drop_from_index(&self, conv: ConversationId, floor: Seq) {
        let Some(search) = &self.search else { return };
        if floor == Seq(0) {
            return;
        }
        let mut told = self.index_floor.lock().expect("index floors");
        if told.get(&conv).is_some_and(|s| *s >= floor) {
            return;
        }
        told.insert(conv, floor);
        search.remove_through(conv, floor.0);
    }

    /// Sweep every `sweep_secs` (read afresh each time: SIGHUP may change it), for as long
    /// as the server runs.
    pub async fn run(self: Arc<Self>) {
        loop {
            let every = self.settings.read().expect("retention settings").sweep_secs.max(1);
            tokio::time::sleep(std::time::Duration::from_secs(every)).await;
            match self.sweep(crate::clock::now_ms()).await {
                Ok(s) if s.events > 0 => {
                    tracing::info!(
                        events = s.events,
                        conversations = s.conversations,
                        "retention: expired events removed"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention: the sweep failed; the next one tries again"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversations_own_setting_wins_over_its_kinds_default() {
        let s = RetentionSettings {
            direct_days: 1,
            group_days: 2,
            channel_days: 0,
            ..Default::default()
        };
        let mut meta = ConversationMeta {
            id: ConversationId(1),
            kind: Kind::Group,
            name: String::new(),
            created_ms: 0,
            deleted: false,
            encrypted: false,
            devices: Vec::new(),
            moderation: Default::default(),
            retention_secs: None,
        };
        assert_eq!(s.effective(&meta), 2 * 86_400);
        meta.kind = Kind::Channel;
        assert_eq!(s.effective(&meta), 0, "0 days: forever");
        meta.retention_secs = Some(1);
        assert_eq!(s.effective(&meta), 1);
        meta.retention_secs = Some(0);
        assert_eq!(s.effective(&meta), 0);
        assert_eq!(RetentionSettings::default().default_secs(Kind::Direct), 365 * 86_400);
    }
}
