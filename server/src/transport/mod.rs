//! Transport adapters: each accepts connections of one kind, admits them (per-address
//! limit) and hands the control stream to [`crate::conn::serve`] behind the
//! [`crate::conn::Transport`] contract. No protocol logic lives here: an adapter moves bytes,
//! opens streams, and maps its own close and error signals onto the contract.
//!
//! May import: `conn` (the contract and the driver), `security` (TLS). Must not import
//! `api`, the domain services or `store`.
pub mod chanwrite;
pub mod mem;
pub mod quic;
pub mod web;
pub mod websocket;
pub mod webtransport;
