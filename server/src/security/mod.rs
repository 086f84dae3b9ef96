//! Security primitives beside the layers: password hashing and token derivation
//! ([`auth`]), rate limits ([`ratelimit`]), certificates ([`tls`]) and the QUIC
//! stateless-reset key ([`reset`]). Imports none of the
//! crate's layers; every layer may use it.
pub mod auth;
pub mod ratelimit;
pub mod reset;
pub mod tls;
