//! Transport adapters: each accepts connections of one kind, admits them (per-address
//! limit) and hands the control stream to [`crate::conn::serve`] behind the
//! [`crate::conn::Transport`] contract. No protocol logic lives here: an adapter moves bytes,
//! opens streams, and maps its own close and error signals onto the contract.
//!
//! May import: `conn` (the contract and the driver), `security` (TLS). Must not import
//! the domain services or `store`. The one exception is [`http_media`]: HTTP requests on
//! the web endpoint (tus uploads, media GETs) have no connection to run in, so it maps each
//! onto the `api::media` handlers and the media layer directly — still no rule of its own;
//! and likewise [`http_api`], the server API for a product's backend, which maps each
//! request onto the api handlers and the shards. [`ops_http`] serves the node's metrics
//! and readiness (`ops/`) to operators' tools.
pub mod chanwrite;
pub mod http_api;
pub mod http_media;
pub mod mem;
pub mod ops_admin;
pub mod ops_http;
pub mod quic;
pub mod web;
pub mod websocket;
pub mod webtransport;
