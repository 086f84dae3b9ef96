//! natter-server: the natter chat server as a library (the `natter-server` binary is a thin
//! `main` over [`app::start`]).
//!
//! One folder per layer; every import points down (checked by `tests/layers.rs`), and
//! `ARCHITECTURE.md` at the repository root is the map:
//!
//! [`app`] (composition root) → [`transport`] (QUIC, WebTransport, WebSocket, web endpoint,
//! in-process) → [`conn`] (one connection: handshake, auth phases, request loop, delivery
//! streams) → [`api`] (one function per request) → [`cluster`] (several nodes on Redis) →
//! [`conversation`] (shards: order, permissions, group commit) → [`session`] (hub, presence)
//! → [`store`] (durable state behind the `Store` trait). [`security`] (accounts and tokens,
//! rate limits, TLS), [`ops`] (metrics and readiness), [`background`] (CPU work below chat's
//! priority), [`chat_first`], [`clock`] and [`error`] sit beside the
//! layers and import none of them.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod background;
pub mod chat_first;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod conversation;
pub mod error;
pub mod keys;
pub mod media;
pub mod ops;
pub mod push;
pub mod search;
pub mod security;
pub mod session;
pub mod store;
pub mod transport;
pub mod webhooks;

pub use app::{start, RunningServer};
pub use config::Config;
