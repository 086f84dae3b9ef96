//! Security primitives beside the layers: password hashing and token derivation
//! ([`auth`]), rate limits ([`ratelimit`]) and certificates ([`tls`]). Imports none of the
//! crate's layers; every layer may use it.
pub mod auth;
pub mod ratelimit;
pub mod tls;
