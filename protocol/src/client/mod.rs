//! The client core every SDK shares, above [`crate::ClientSession`]: what natter-sdk (quinn),
//! natter-wasm (WebTransport/WebSocket in the browser) and, through natter-sdk, natter-ffi
//! would otherwise each write for themselves. Runtime-free like the session: no tasks, no
//! sockets, no clock.
//!
//! - [`ops`]: the one list of operations — a typed builder per request with the extractor of
//!   its response, so a request added here is one line in each SDK's API.
//! - [`Router`]: the reply side of requests and sends: who is waiting for which response,
//!   and which session events resolve a waiter instead of reaching the app.
//! - [`model`]: the app-facing events and records every binding hands out as they are
//!   (serde for JavaScript, uniffi derives for Kotlin/Swift/Python).
//! - [`upload`]: the upload policy — from a server's status or report, the next step
//!   (send from the committed offset, wait, ask again, stop) — and the body of a message
//!   with files, and the record of unfinished uploads the snapshots keep.
//! - [`file_crypto`]: client-side encryption of a file in independently verifiable
//!   chunks, so any range of an encrypted upload downloads and decrypts on its own.
//! - [`e2ee`] (feature `e2ee`): one device's end-to-end encryption — its Olm account and
//!   sessions, sealing and opening envelopes, the keys it keeps published, its saved state.
//! - [`Reconnect`]: the reconnect policy as a sans-IO step — backoff, the server's pauses
//!   (`GoAway`, `retry_after_ms`), reset on an established session, node rotation.
//!
//! A driver's loop is then: feed the session, drain `poll_transmit`, hand every
//! `poll_event` to [`Router::route`], deliver what comes back to the app, and when the
//! connection ends wait [`Reconnect::next_delay`] and connect to [`Reconnect::address`].
mod reconnect;
mod router;

#[cfg(feature = "e2ee")]
pub mod e2ee;
pub mod file_crypto;
pub mod local_search;
pub mod model;
pub mod ops;
#[cfg(feature = "push")]
pub mod push;
pub mod upload;

pub use ops::{Call, HistoryAnchor, Unexpected};
pub use reconnect::Reconnect;
pub use router::{DownloadError, DownloadSink, NoDownloads, Reply, Routed, Router, SendAck};
