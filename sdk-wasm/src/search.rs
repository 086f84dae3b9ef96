//! Search from a page (PROTOCOL.md §14.3–14.4): `search(query)` takes a `SearchQuery`
//! (`{ query, conversationIds?, fromUserIds?, afterMs?, beforeMs?, order?: "recent" |
//! "relevant", limit?, cursor?, typing? }`) and resolves to a `SearchResults` (`{ hits:
//! [{ conversationId, seq, score, snippet: [{ text, hit }], event }], nextCursor, total,
//! indexLagMs, encryptedConversationIds }`); `searchUsers(prefix, limit)`,
//! `searchChannels(prefix, limit)` and `setUnlisted(bool)` find people and channels.
use js_sys::Promise;
use natter_protocol::client::model::{ChannelMatch, SearchQuery, SearchResults, UserMatch};
use natter_protocol::client::ops;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::client::{js_error, to_js, NatterClient};
use crate::view::JsError;

#[wasm_bindgen(typescript_custom_section)]
const TS_SEARCH: &'static str = r#"
/** What to find (PROTOCOL.md §14.2–14.3): words, "phrases", -excluded, from:, in:, has:,
 * after:/before:; only `query` is required. */
export interface SearchQuery {
  query: string; conversationIds?: number[]; fromUserIds?: number[];
  afterMs?: number; beforeMs?: number; order?: "recent" | "relevant";
  /** 1..=100 (0: 20). */
  limit?: number;
  /** A previous page's nextCursor. */
  cursor?: string;
  /** Being typed: the last word matches as a prefix. */
  typing?: boolean;
}
/** A piece of a hit's snippet; `hit` marks what matched. */
export interface SnippetPart { text: string; hit: boolean }
/** One message that matched; `event` is the message as last edited. */
export interface SearchHit {
  conversationId: number; seq: number; score: number; snippet: SnippetPart[];
  event: ConversationEvent | null;
}
/** One page of hits: `nextCursor` "" when there are no more; `indexLagMs` how far the
 * server's index is behind; encrypted conversations are not searched by the server. */
export interface SearchResults {
  hits: SearchHit[]; nextCursor: string; total: number; indexLagMs: number;
  encryptedConversationIds: number[];
  /** How far back this device has indexed each encrypted conversation in scope (their
   *  hits come from the device's own index, PROTOCOL.md §14.5). */
  local: { conversationId: number; fromSeq: number; toSeq: number; complete: boolean }[];
}
export interface UserMatch { userId: number; username: string }
export interface ChannelMatch { conversationId: number; name: string; memberCount: number; joined: boolean }
"#;

#[wasm_bindgen]
impl NatterClient {
    /// One page of messages matching `query` (a `SearchQuery`); rejects with
    /// `BAD_REQUEST` naming why for a query the server refuses.
    pub fn search(&self, query: JsValue) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let q: SearchQuery = serde_wasm_bindgen::from_value(query)
                .map_err(|e| js_error(&JsError::local("INVALID_INPUT", format!("search: {e}"))))?;
            let req: natter_protocol::pb::Search = q.into();
            let mut r = inner.call(ops::search(req.clone())).await.map_err(|e| js_error(&e))?;
            // Encrypted conversations: this device's own hits (PROTOCOL.md §14.5).
            if let Some(e2ee) = &inner.e2ee {
                e2ee.merge_local(&req, &mut r);
            }
            Ok(to_js(&SearchResults::from(r)))
        })
    }

    /// Users whose username starts with `prefix` (not unlisted ones, not you): `[{ userId,
    /// username }]`.
    #[wasm_bindgen(js_name = searchUsers)]
    pub fn search_users(&self, prefix: String, limit: u32) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let r = inner
                .call(ops::search_users(&prefix, limit))
                .await
                .map_err(|e| js_error(&e))?;
            let r: Vec<UserMatch> = r.into_iter().map(UserMatch::from).collect();
            Ok(to_js(&r))
        })
    }

    /// Public channels whose name starts with `prefix` (empty: all): `[{ conversationId,
    /// name, memberCount, joined }]`.
    #[wasm_bindgen(js_name = searchChannels)]
    pub fn search_channels(&self, prefix: String, limit: u32) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let r = inner
                .call(ops::search_channels(&prefix, limit))
                .await
                .map_err(|e| js_error(&e))?;
            let r: Vec<ChannelMatch> = r.into_iter().map(ChannelMatch::from).collect();
            Ok(to_js(&r))
        })
    }

    /// Leave yourself out of others' `searchUsers` (or list yourself again).
    #[wasm_bindgen(js_name = setUnlisted)]
    pub fn set_unlisted(&self, unlisted: bool) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            inner
                .call(ops::set_unlisted(unlisted))
                .await
                .map_err(|e| js_error(&e))?;
            Ok(JsValue::UNDEFINED)
        })
    }
}
