//! natter-wasm: natter for browsers.
//!
//! A wasm-bindgen wrapper over natter-protocol's sans-IO `ClientSession` — the same
//! protocol core as the native and mobile SDKs, no second copy of its logic. The browser
//! side adds only I/O: WebTransport through web-sys (trusting development certificates by
//! `serverCertificateHashes` from the server's `/natter.json`), a WebSocket fallback when
//! WebTransport is missing or does not connect in time, timers, and reconnect with resume.
//!
//! Modules: [`view`] (what JavaScript sees; pure, tested natively and under Node),
//! `client` (the `NatterClient` JS class), `driver` (the I/O loop), `link` (the two
//! transports), `e2ee` (encrypted direct conversations: sealing, opening, the state in
//! IndexedDB, device verification), `media` (uploads, downloads, media URLs), `timeline` (the `Timeline` JS
//! class over the protocol's fold). All but `view` exist only on wasm32. Requests, reply routing and the reconnect policy are
//! natter-protocol's client core, shared with natter-sdk.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod view;

#[cfg(target_arch = "wasm32")]
mod client;
#[cfg(target_arch = "wasm32")]
mod driver;
#[cfg(target_arch = "wasm32")]
mod e2ee;
#[cfg(target_arch = "wasm32")]
mod link;
#[cfg(target_arch = "wasm32")]
mod media;
#[cfg(target_arch = "wasm32")]
mod profile;
#[cfg(target_arch = "wasm32")]
mod push;
#[cfg(target_arch = "wasm32")]
mod search;
#[cfg(target_arch = "wasm32")]
mod timeline;

#[cfg(target_arch = "wasm32")]
pub use client::NatterClient;
#[cfg(target_arch = "wasm32")]
pub use timeline::Timeline;
