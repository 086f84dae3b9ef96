//! `Timeline` for Kotlin, Swift and Python: natter-protocol's timeline fold (the same one
//! the JS package's `Timeline` class and the web chat use). Feed it a conversation's events
//! — from `NatterEvent.Event` and from `history()` pages, as they arrive — and read each
//! message as it stands: text after edits, deleted, reactions with who.
use std::sync::Mutex;

use natter_protocol::timeline;
use natter_sdk::Seq;

use crate::types::{ConversationEvent, Message};

/// The messages of one conversation, folded from its events. Safe to share across threads.
#[derive(Debug, Default, uniffi::Object)]
pub struct Timeline {
    inner: Mutex<timeline::Timeline>,
}

#[uniffi::export]
impl Timeline {
    /// An empty timeline.
    #[uniffi::constructor]
    pub fn new() -> Self {
        Timeline::default()
    }

    /// Apply one event in seq order. Returns the seq of the message it created or changed
    /// (what to redraw), or `null` when it touched no message this timeline holds
    /// (membership changes, edits of messages not loaded yet).
    pub fn apply(&self, event: ConversationEvent) -> Option<u64> {
        self.lock().apply(&event).map(|s| s.0)
    }

    /// The message at `seq`, or `null`.
    pub fn message(&self, seq: u64) -> Option<Message> {
        self.lock().message(Seq(seq))
    }

    /// Every message, oldest first.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().all()
    }

    /// Retention removed the conversation's events up to `through_seq` (PROTOCOL.md
    /// §5.17: a history page's `removed_through`, or `NatterEvent.HistoryRemoved`): the
    /// messages up to there go. Returns whether anything changed (redraw).
    pub fn remove_through(&self, through_seq: u64) -> bool {
        self.lock().remove_through(Seq(through_seq))
    }

    /// Events up to this seq were removed by retention (0: none): draw one "older
    /// messages were removed" line above the oldest message.
    pub fn removed_through(&self) -> u64 {
        self.lock().removed_through().0
    }
}

impl Timeline {
    fn lock(&self) -> std::sync::MutexGuard<'_, timeline::Timeline> {
        // The fold never panics half-way; a poisoned lock still holds a whole timeline.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
