//! Operating a node: its Prometheus metrics ([`metrics`]) and its readiness ([`health`]).
//! Beside the layers: every layer may count through [`metrics::Metrics`]; this module
//! imports none of them (the composition root hands readiness its checks, and
//! `transport/ops_http.rs` serves both on the ops listener, never the public port).
pub mod health;
pub mod metrics;

pub use health::{Check, Readiness};
pub use metrics::Metrics;
