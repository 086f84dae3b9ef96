//! Documents: the small records of the layers above conversations — product identities
//! and their devices' token bindings, user profiles, API keys, webhook subscriptions and
//! their outbox — each a JSON value under `(space, key)` with a version for
//! compare-and-set. Backends implement the four primitives of [`Store`] (`doc`, `put_doc`,
//! `delete_doc`, `docs`); the typed operations every layer uses are here, once, and run in
//! the shared suite on every backend. Nothing on the message path reads a document.
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Store, StoreError};

/// One stored document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    /// 1 for the first write, then one more per write.
    pub version: u64,
    /// The bytes (JSON for every typed document).
    pub value: Vec<u8>,
}

/// A typed document as read: the value and the version to write against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// What it holds.
    pub value: T,
    /// Pass to [`put`] to replace exactly this version.
    pub version: u64,
}

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// The typed document under `(space, key)`.
pub async fn get<T: DeserializeOwned>(
    store: &dyn Store,
    space: &str,
    key: &str,
) -> Result<Option<Versioned<T>>, StoreError> {
    match store.doc(space, key).await? {
        None => Ok(None),
        Some(d) => Ok(Some(Versioned {
            value: serde_json::from_slice(&d.value).map_err(|e| StoreError::Corrupt(format!("{space}/{key}: {e}")))?,
            version: d.version,
        })),
    }
}

/// Write `value` if the document is at `expected` (0: absent). `Ok(false)`: it changed.
pub async fn put<T: Serialize>(
    store: &dyn Store,
    space: &str,
    key: &str,
    expected: u64,
    value: &T,
) -> Result<bool, StoreError> {
    let bytes = serde_json::to_vec(value).expect("documents serialize");
    store.put_doc(space, key, expected, bytes).await
}

/// Write `value` whatever is there (last writer wins).
pub async fn set<T: Serialize>(store: &dyn Store, space: &str, key: &str, value: &T) -> Result<(), StoreError> {
    loop {
        let now = store.doc(space, key).await?.map_or(0, |d| d.version);
        if put(store, space, key, now, value).await? {
            return Ok(());
        }
    }
}

/// Bind `key` to `candidate` unless it is bound already; returns what is bound (first
/// writer wins), like a channel name.
pub async fn claim<T: Serialize + DeserializeOwned>(
    store: &dyn Store,
    space: &str,
    key: &str,
    candidate: T,
) -> Result<T, StoreError> {
    loop {
        if let Some(d) = get::<T>(store, space, key).await? {
            return Ok(d.value);
        }
        if put(store, space, key, 0, &candidate).await? {
            return Ok(candidate);
        }
    }
}

/// Read, change and write back until no one else wrote in between; `f` sees `None` when
/// the document is absent and returns the new value (or `None` to leave it as it is).
pub async fn update<T, R>(
    store: &dyn Store,
    space: &str,
    key: &str,
    mut f: impl FnMut(Option<T>) -> Option<(T, R)>,
) -> Result<Option<R>, StoreError>
where
    T: Serialize + DeserializeOwned,
{
    loop {
        let cur = get::<T>(store, space, key).await?;
        let version = cur.as_ref().map_or(0, |c| c.version);
        let Some((next, out)) = f(cur.map(|c| c.value)) else {
            return Ok(None);
        };
        if put(store, space, key, version, &next).await? {
            return Ok(Some(out));
        }
    }
}

/// Typed documents of `space` in key order after `after` (exclusive), at most `limit`.
pub async fn list<T: DeserializeOwned>(
    store: &dyn Store,
    space: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<(String, Versioned<T>)>, StoreError> {
    store
        .docs(space, after, limit)
        .await?
        .into_iter()
        .map(|(k, d)| {
            let value =
                serde_json::from_slice(&d.value).map_err(|e| StoreError::Corrupt(format!("{space}/{k}: {e}")))?;
            Ok((
                k,
                Versioned {
                    value,
                    version: d.version,
                },
            ))
        })
        .collect()
}
