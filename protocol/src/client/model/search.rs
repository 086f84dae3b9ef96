//! The app-facing search records (PROTOCOL.md §14.3–14.4): a query with its filters, a
//! page of hits with snippets, and the people and channel directories, converted once from
//! the wire types.
use super::{list, ConversationEvent};
use crate::pb;

app_enum!(
    /// Hit order. JS: `"recent"`, `"relevant"`.
    SearchOrder from pb::SearchOrder, serde "lowercase" { Recent, Relevant }
);

record! {
    /// What to find (PROTOCOL.md §14.2–14.3).
    pub struct SearchQuery {
        /// Words, "phrases", -excluded, `from:`, `in:`, `has:`, `after:`/`before:`.
        pub query: String,
        /// Only these conversations (empty: all of yours).
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "uniffi", uniffi(default = []))]
        pub conversation_ids: Vec<u64>,
        /// Only messages from these users.
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "uniffi", uniffi(default = []))]
        pub from_user_ids: Vec<u64>,
        /// Sent at or after (ms since the epoch; 0: any time).
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "uniffi", uniffi(default = 0))]
        pub after_ms: u64,
        /// Sent before (ms since the epoch; 0: any time).
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "uniffi", uniffi(default = 0))]
        pub before_ms: u64,
        /// Newest first (default) or best match first.
        #[cfg_attr(feature = "serde", serde(default = "recent"))]
        pub order: SearchOrder,
        /// Hits per page, 1..=100 (0: 20).
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "uniffi", uniffi(default = 0))]
        pub limit: u32,
        /// A previous page's `next_cursor` ("" for the first page).
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "uniffi", uniffi(default = ""))]
        pub cursor: String,
        /// Being typed: the last word matches as a prefix.
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "uniffi", uniffi(default = false))]
        pub typing: bool,
    }
}

#[cfg(feature = "serde")]
fn recent() -> SearchOrder {
    SearchOrder::Recent
}

record! {
    /// A piece of a snippet; `hit` marks what matched.
    pub struct SnippetPart {
        /// The text.
        pub text: String,
        /// It matched the query.
        pub hit: bool,
    }
}

/// One message that matched.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "camelCase")
)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct SearchHit {
    /// Where.
    pub conversation_id: u64,
    /// The message's seq.
    pub seq: u64,
    /// Relevance (best-match order; 0 newest first).
    pub score: f32,
    /// Up to ~160 characters around the first match.
    pub snippet: Vec<SnippetPart>,
    /// The message (its text as last edited).
    pub event: Option<ConversationEvent>,
}

/// One page of hits.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "camelCase")
)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct SearchResults {
    /// The hits, in the requested order.
    pub hits: Vec<SearchHit>,
    /// Pass back as `cursor` for the next page ("": no more).
    pub next_cursor: String,
    /// Matches in all (at most 10,000 counted).
    pub total: u32,
    /// How far the server's index is behind (ms; 0: everything sent is searchable).
    pub index_lag_ms: u64,
    /// Encrypted conversations in the scope, which the server cannot search.
    pub encrypted_conversation_ids: Vec<u64>,
    /// How far back this device has indexed each of them (their hits are its own).
    #[cfg_attr(feature = "serde", serde(default))]
    pub local: Vec<LocalCoverage>,
}

record! {
    /// How much of one encrypted conversation this device has indexed (PROTOCOL.md §14.5).
    pub struct LocalCoverage {
        /// The conversation.
        pub conversation_id: u64,
        /// The oldest event looked at (0: none yet).
        pub from_seq: u64,
        /// The newest.
        pub to_seq: u64,
        /// From the conversation's start.
        pub complete: bool,
    }
}

impl From<pb::LocalCoverage> for LocalCoverage {
    fn from(c: pb::LocalCoverage) -> Self {
        LocalCoverage {
            conversation_id: c.conversation_id,
            from_seq: c.from_seq,
            to_seq: c.to_seq,
            complete: c.complete,
        }
    }
}

record! {
    /// A user found by name.
    pub struct UserMatch {
        /// Who.
        pub user_id: u64,
        /// Their username.
        pub username: String,
    }
}

record! {
    /// A public channel found by name.
    pub struct ChannelMatch {
        /// Its conversation.
        pub conversation_id: u64,
        /// Its name.
        pub name: String,
        /// How many members it has.
        pub member_count: u32,
        /// You are one of them.
        pub joined: bool,
    }
}

impl From<SearchQuery> for pb::Search {
    fn from(q: SearchQuery) -> Self {
        pb::Search {
            query: q.query,
            conversation_ids: q.conversation_ids,
            from_user_ids: q.from_user_ids,
            after_ms: q.after_ms,
            before_ms: q.before_ms,
            order: pb::SearchOrder::from(q.order) as i32,
            limit: q.limit,
            cursor: q.cursor,
            typing: q.typing,
        }
    }
}

impl From<pb::SnippetPart> for SnippetPart {
    fn from(p: pb::SnippetPart) -> Self {
        SnippetPart {
            text: p.text,
            hit: p.hit,
        }
    }
}

impl From<pb::SearchHit> for SearchHit {
    fn from(h: pb::SearchHit) -> Self {
        SearchHit {
            conversation_id: h.conversation_id,
            seq: h.seq,
            score: h.score,
            snippet: list(h.snippet),
            event: h.event.map(ConversationEvent::from),
        }
    }
}

impl From<pb::SearchResults> for SearchResults {
    fn from(r: pb::SearchResults) -> Self {
        SearchResults {
            hits: list(r.hits),
            next_cursor: r.next_cursor,
            total: r.total,
            index_lag_ms: r.index_lag_ms,
            encrypted_conversation_ids: r.encrypted_conversation_ids,
            local: list(r.local),
        }
    }
}

impl From<pb::UserMatch> for UserMatch {
    fn from(u: pb::UserMatch) -> Self {
        UserMatch {
            user_id: u.user_id,
            username: u.username,
        }
    }
}

impl From<pb::ChannelMatch> for ChannelMatch {
    fn from(c: pb::ChannelMatch) -> Self {
        ChannelMatch {
            conversation_id: c.conversation_id,
            name: c.name,
            member_count: c.member_count,
            joined: c.joined,
        }
    }
}
