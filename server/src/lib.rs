//! natter-server: the natter chat server as a library (the `natter-server` binary is a thin
//! `main` over [`server::start`]).
//!
//! Layers, outside in: [`quic`], [`wt`] (WebTransport) and [`ws`] (WebSocket, served by
//! [`web`]) (transport adapters) → [`conn`] (one connection: handshake,
//! auth, dispatch, delivery streams) → [`handlers`] (one function per request) →
//! [`shard`] (conversation owners: order, permissions, group commit) and [`hub`] (sessions,
//! fan-out, resume) → [`store`] (durable state behind the `Store` trait).
#![forbid(unsafe_code)]

pub mod auth;
pub mod chanwrite;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod handlers;
pub mod hub;
pub mod mem;
pub mod presence;
pub mod quic;
pub mod ratelimit;
pub mod server;
pub mod shard;
pub mod store;
#[doc(hidden)]
pub mod testredis;
pub mod tls;
pub mod web;
pub mod ws;
pub mod wt;

pub use config::Config;
pub use server::{start, RunningServer};
