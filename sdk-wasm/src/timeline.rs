//! `Timeline`, the JavaScript face of natter-protocol's timeline fold: feed it a
//! conversation's events (from `onEvent` and `history()`, as they arrive) and read each
//! message as it stands — text after edits, deleted, reactions with who. The same fold the
//! native SDKs use; the web chat draws from it instead of folding events itself.
use natter_protocol::client::model::ConversationEvent;
use natter_protocol::Seq;
use wasm_bindgen::prelude::*;

use crate::client::to_js;

/// The messages of one conversation, folded from its events.
#[wasm_bindgen]
#[derive(Debug, Default)]
pub struct Timeline {
    inner: natter_protocol::timeline::Timeline,
}

#[wasm_bindgen]
impl Timeline {
    /// An empty timeline.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Timeline {
        Timeline::default()
    }

    /// Apply one conversation event (the `event` of an `{ type: "event" }`, or one of a
    /// history page's `events`). Returns the seq of the message it created or changed, or
    /// 0 when it touched none this timeline holds (membership changes, edits of messages
    /// not loaded yet). Throws on something that is not a conversation event.
    pub fn apply(&mut self, event: JsValue) -> Result<f64, JsValue> {
        let ev: ConversationEvent = serde_wasm_bindgen::from_value(event)
            .map_err(|e| js_sys::Error::new(&format!("not a conversation event: {e}")))?;
        Ok(self.inner.apply(&ev).map_or(0.0, |s| s.0 as f64))
    }

    /// The message at `seq` (`{ seq, senderUserId, senderUsername, text, replyToSeq,
    /// serverTimeMs, edited, deleted, reactions: [{ emoji, count, userIds }] }`), or null.
    pub fn message(&self, seq: f64) -> JsValue {
        self.inner.message(Seq(seq as u64)).map_or(JsValue::NULL, |m| to_js(&m))
    }

    /// Every message, oldest first.
    pub fn messages(&self) -> JsValue {
        to_js(&self.inner.all())
    }

    /// Retention removed the conversation's events up to `throughSeq` (PROTOCOL.md §5.17:
    /// a history page's `removedThrough`, or a `{ type: "historyRemoved" }` event): the
    /// messages up to there go. Returns whether anything changed (redraw).
    #[wasm_bindgen(js_name = removeThrough)]
    pub fn remove_through(&mut self, through_seq: f64) -> bool {
        self.inner.remove_through(Seq(through_seq as u64))
    }

    /// Events up to this seq were removed by retention (0: none): draw one "older
    /// messages were removed" line above the oldest message.
    #[wasm_bindgen(getter, js_name = removedThrough)]
    pub fn removed_through(&self) -> f64 {
        self.inner.removed_through().0 as f64
    }
}
