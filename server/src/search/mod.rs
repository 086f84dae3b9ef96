//! Full-text search of conversations the server can read (PROTOCOL.md §14). This module
//! owns the index: what a message's document holds, how a parsed query
//! (`natter_protocol::search`) becomes an index query, and the [`SearchIndex`] trait with
//! tantivy as the embedded default (`tantivy_index.rs`, under the data dir). The index is a
//! view derived from the committed log: documents are put, replaced (edits) and removed
//! (deletes, conversation deletion) in batches, each committed together with how far each
//! conversation it touched is indexed (and the feed's cursor), so after a restart or a
//! crash the feed resumes from where the index stands.
//!
//! Authorization is part of every query: the caller's conversations are a required filter,
//! decided by the layer above at query time.
//!
//! May import: `store` (the log the feed reads, `feed.rs`), `clock`, `error`. Must not
//! import the layers above it.
use natter_protocol::search::{Has, Query};
use natter_protocol::{ConversationId, UserId};

pub mod feed;
pub mod live;
pub mod tantivy_index;
#[cfg(test)]
mod test_log;

pub use live::{LiveSettings, Search};
pub use tantivy_index::TantivyIndex;

/// One message as the index sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub conversation: ConversationId,
    pub seq: u64,
    pub sender: UserId,
    /// Commit time, ms since the epoch.
    pub time_ms: u64,
    /// The message's text (as last edited).
    pub text: String,
    /// Its attachments' file names (found like the text).
    pub names: Vec<String>,
    pub has: Vec<Has>,
}

impl Doc {
    /// What is indexed: the text, then each name on a line of its own.
    pub fn indexed_text(&self) -> String {
        natter_protocol::search::indexed_text(&self.text, &self.names)
    }
}

/// A change to the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new message, past its conversation's position: nothing in the index to replace
    /// (a conversation's events are applied in seq order, each batch with the position
    /// it reaches, in one commit).
    Add(Doc),
    /// Add a message, or replace it (an edit).
    Put(Doc),
    /// A message was deleted.
    Remove { conversation: ConversationId, seq: u64 },
    /// A conversation was deleted.
    RemoveConversation(ConversationId),
    /// Retention removed the conversation's messages up to `seq` (PROTOCOL.md §5.17).
    RemoveThrough { conversation: ConversationId, seq: u64 },
    /// A user's account was deleted (PROTOCOL.md §5.16): every message they sent here goes.
    RemoveSender {
        conversation: ConversationId,
        sender: UserId,
    },
}

/// Hit order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Order {
    /// Newest first.
    #[default]
    Recent,
    /// Best match first (BM25), newest first among equals.
    Relevant,
}

/// What a search may return: the query, and the filters the caller's rights and request
/// add to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub query: Query,
    /// Only these conversations (the caller's, within the requested scope). Empty finds
    /// nothing.
    pub conversations: Vec<ConversationId>,
    /// Only messages from these senders (empty: anyone).
    pub senders: Vec<UserId>,
    /// Only messages committed in `[after_ms, before_ms)`.
    pub after_ms: Option<u64>,
    pub before_ms: Option<u64>,
    /// Only messages whose [`recency`] is below this (the next page of a newest-first walk).
    pub below: Option<u64>,
    pub order: Order,
    pub offset: usize,
    pub limit: usize,
}

/// Where a message stands in newest-first order: its commit time, then its seq (messages
/// of one conversation committed in the same millisecond keep their order).
pub fn recency(time_ms: u64, seq: u64) -> u64 {
    (time_ms << 20) | (seq & 0xF_FFFF)
}

/// One hit.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub conversation: ConversationId,
    pub seq: u64,
    pub time_ms: u64,
    pub score: f32,
    /// The message's text as indexed (as last edited).
    pub text: String,
    /// Its attachments' names.
    pub names: Vec<String>,
}

/// A batch of changes and where they leave the index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
    /// Each conversation the batch brings up to date, and the seq it is indexed through.
    pub through: Vec<(ConversationId, u64)>,
    /// The feed's cursor after the batch (e.g. a stream id), if it has one.
    pub cursor: Option<String>,
}

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(String),
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> Self {
        SearchError::Index(e.to_string())
    }
}

/// A search index. Tantivy is the embedded default; a distributed engine can take its
/// place at larger scale (docs/SCALING.md).
pub trait SearchIndex: Send + Sync + std::fmt::Debug {
    /// Apply a batch's ops in order and make them durable together with its positions.
    fn apply(&self, batch: &Batch) -> Result<(), SearchError>;
    /// How far each conversation is indexed (conversations never indexed are absent).
    fn positions(&self) -> Result<Vec<(ConversationId, u64)>, SearchError>;
    /// The feed's cursor the last batch that had one was committed with.
    fn cursor(&self) -> Result<Option<String>, SearchError>;
    /// The hits of `req`, and how many matched in all.
    fn search(&self, req: &Request) -> Result<(Vec<Hit>, usize), SearchError>;
    /// Stop writing (the server stops): another process may open the index afterwards.
    fn close(&self) {}
}
