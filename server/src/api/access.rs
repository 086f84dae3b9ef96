//! API keys of the server API (README "Server API"): random secrets a product's backend
//! presents as `Authorization: Bearer nk_<id>_<secret>`, stored as the SHA-256 of the
//! secret, each with scopes (`read` ⊂ `write` ⊂ `admin`), made and revoked by
//! `natter-server api-key` or by an admin key. Checking a key costs one document read and
//! a constant-time comparison.
use natter_protocol::pb::ErrorCode;
use natter_protocol::ServerError;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::store::{docs, Store};

/// How every API key begins.
pub const KEY_PREFIX: &str = "nk_";

/// Document space: key id → [`ApiKey`].
const SPACE: &str = "apikey";

/// What a key may do; each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read users, conversations, messages.
    Read,
    /// Also create and change them, and send.
    Write,
    /// Also manage API keys.
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("scope {other:?}: read, write or admin")),
        }
    }
}

/// A stored key (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Its public id (`nk_<id>_…`).
    pub id: String,
    /// What it is for, e.g. "billing backend".
    pub name: String,
    /// The most it may do.
    pub scope: Scope,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// Revoked keys stay listed and never authenticate again.
    pub revoked: bool,
}

/// A key as made: the record and the full secret, shown once.
#[derive(Debug)]
pub struct NewKey {
    /// The record.
    pub key: ApiKey,
    /// `nk_<id>_<secret>`: give this to the backend.
    pub secret: crate::security::Secret,
}

fn hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Make a key.
pub async fn create(store: &dyn Store, name: &str, scope: Scope, now_ms: u64) -> Result<NewKey, ServerError> {
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "a key's name is 1-64 characters without control characters",
        ));
    }
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 24]>());
    let key = ApiKey {
        id: id.clone(),
        name: name.to_string(),
        scope,
        secret_sha256: hash(&secret),
        created_ms: now_ms,
        revoked: false,
    };
    if !docs::put(store, SPACE, &id, 0, &key).await? {
        return Err(ServerError::new(ErrorCode::Conflict, "key id collision; try again"));
    }
    Ok(NewKey {
        key,
        secret: crate::security::Secret(format!("{KEY_PREFIX}{id}_{secret}")),
    })
}

/// Every key, revoked ones included.
pub async fn list(store: &dyn Store) -> Result<Vec<ApiKey>, ServerError> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = docs::list::<ApiKey>(store, SPACE, &after, 200).await?;
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        out.extend(page.into_iter().map(|(_, v)| v.value));
    }
    Ok(out)
}

/// Revoke a key; false if there is no such live key.
pub async fn revoke(store: &dyn Store, id: &str) -> Result<bool, ServerError> {
    let done = docs::update(store, SPACE, id, |k: Option<ApiKey>| match k {
        Some(mut k) if !k.revoked => {
            k.revoked = true;
            Some((k, ()))
        }
        _ => None,
    })
    .await?;
    Ok(done.is_some())
}

/// The live key a bearer secret belongs to, if its scope reaches `needed`.
pub async fn check(store: &dyn Store, bearer: &str, needed: Scope) -> Result<ApiKey, ServerError> {
    let unauthenticated = || ServerError::new(ErrorCode::Unauthenticated, "a valid API key is required");
    let rest = bearer.strip_prefix(KEY_PREFIX).ok_or_else(unauthenticated)?;
    let (id, secret) = rest.split_once('_').ok_or_else(unauthenticated)?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(unauthenticated());
    }
    let key = docs::get::<ApiKey>(store, SPACE, id)
        .await?
        .map(|d| d.value)
        .ok_or_else(unauthenticated)?;
    let given = hash(secret);
    // Hashes of equal length: compared without an early exit.
    let (a, b) = (given.as_bytes(), key.secret_sha256.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if !same {
        return Err(unauthenticated());
    }
    if key.revoked {
        return Err(ServerError::new(ErrorCode::TokenRevoked, "this API key was revoked"));
    }
    if key.scope < needed {
        return Err(ServerError::new(
            ErrorCode::Forbidden,
            format!("this API key's scope is {:?}; the request needs {needed:?}", key.scope),
        ));
    }
    Ok(key)
}
