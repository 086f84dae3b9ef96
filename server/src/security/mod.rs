//! Security primitives beside the layers: password hashing and token derivation
//! ([`auth`]), product tokens ([`jwt`]), rate limits ([`ratelimit`]), certificates ([`tls`]) and the QUIC
//! stateless-reset key ([`reset`]). Imports none of the
//! crate's layers; every layer may use it.
pub mod auth;
pub mod jwt;
pub mod ratelimit;
pub mod reset;
pub mod tls;

/// A secret from the configuration (an S3 secret key): never printed.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
