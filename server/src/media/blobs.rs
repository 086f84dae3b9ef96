//! Where media bytes live: the [`MediaStore`] trait and its one implementation over the
//! `object_store` crate — the local filesystem under the data dir by default (fsync on every
//! put, so a stored piece survives a crash), an S3-compatible bucket for several nodes.
//!
//! Layout: `media/<media id>/p/<start offset, 16 hex digits>` for each stored piece of the
//! original, `media/<media id>/v/<variant>` for each thumbnail. Objects are written once
//! and never changed; a file is deleted with its prefix.
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::background;
use crate::store::MediaId;

/// A blob store failure: the operation did not take effect.
#[derive(Debug, thiserror::Error)]
#[error("media store: {0}")]
pub struct BlobError(pub String);

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        BlobError(e.to_string())
    }
}

fn panicked(e: tokio::task::JoinError) -> BlobError {
    BlobError(format!("media task failed: {e}"))
}

/// Media bytes, by file and piece.
#[async_trait]
pub trait MediaStore: Send + Sync + fmt::Debug + 'static {
    /// Store the piece of `media` that starts at `start`; durable when it returns.
    async fn put_piece(&self, media: &MediaId, start: u64, bytes: Bytes) -> Result<(), BlobError>;
    /// Bytes `range` (relative to the piece) of the piece that starts at `start`.
    async fn read_piece(&self, media: &MediaId, start: u64, range: Range<u64>) -> Result<Bytes, BlobError>;
    /// Store a variant (thumbnail) of `media`.
    async fn put_variant(&self, media: &MediaId, variant: i32, bytes: Bytes) -> Result<(), BlobError>;
    /// Bytes `range` of a variant.
    async fn read_variant(&self, media: &MediaId, variant: i32, range: Range<u64>) -> Result<Bytes, BlobError>;
    /// Delete every object of `media`.
    async fn delete(&self, media: &MediaId) -> Result<(), BlobError>;
}

/// [`MediaStore`] over any `object_store` backend.
pub struct ObjectMediaStore {
    store: Arc<dyn ObjectStore>,
    what: String,
}

impl fmt::Debug for ObjectMediaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectMediaStore").field("store", &self.what).finish()
    }
}

/// Where an S3-compatible bucket is and how to sign for it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:9000`; empty for AWS itself.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// Region (any string for most S3-compatible servers).
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl ObjectMediaStore {
    /// Files under `dir` (created if missing), each put fsynced.
    pub fn local(dir: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|e| BlobError(format!("{}: {e}", dir.display())))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(ObjectMediaStore {
            store: Arc::new(fs),
            what: format!("local {}", dir.display()),
        })
    }

    /// An S3-compatible bucket (path-style requests; plain HTTP allowed for loopback).
    pub fn s3(s: &S3Settings) -> Result<Self, BlobError> {
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_access_key_id(&s.access_key)
            .with_secret_access_key(&s.secret_key)
            .with_virtual_hosted_style_request(false);
        if !s.endpoint.is_empty() {
            b = b
                .with_endpoint(&s.endpoint)
                .with_allow_http(s.endpoint.starts_with("http://"));
        }
        Ok(ObjectMediaStore {
            store: Arc::new(b.build()?),
            what: format!("s3 {} {}", s.endpoint, s.bucket),
        })
    }
}

fn piece_path(media: &MediaId, start: u64) -> ObjPath {
    ObjPath::from(format!("media/{}/p/{start:016x}", media.0))
}

fn variant_path(media: &MediaId, variant: i32) -> ObjPath {
    ObjPath::from(format!("media/{}/v/{variant}", media.0))
}

#[async_trait]
impl MediaStore for ObjectMediaStore {
    // Every operation runs on the media runtime (background.rs): below chat's priority.
    async fn put_piece(&self, media: &MediaId, start: u64, bytes: Bytes) -> Result<(), BlobError> {
        let (store, path) = (self.store.clone(), piece_path(media, start));
        background::run(async move { store.put(&path, PutPayload::from(bytes)).await })
            .await
            .map_err(panicked)??;
        Ok(())
    }

    async fn read_piece(&self, media: &MediaId, start: u64, range: Range<u64>) -> Result<Bytes, BlobError> {
        let (store, path) = (self.store.clone(), piece_path(media, start));
        Ok(background::run(async move { store.get_range(&path, range).await })
            .await
            .map_err(panicked)??)
    }

    async fn put_variant(&self, media: &MediaId, variant: i32, bytes: Bytes) -> Result<(), BlobError> {
        let (store, path) = (self.store.clone(), variant_path(media, variant));
        background::run(async move { store.put(&path, PutPayload::from(bytes)).await })
            .await
            .map_err(panicked)??;
        Ok(())
    }

    async fn read_variant(&self, media: &MediaId, variant: i32, range: Range<u64>) -> Result<Bytes, BlobError> {
        let (store, path) = (self.store.clone(), variant_path(media, variant));
        Ok(background::run(async move { store.get_range(&path, range).await })
            .await
            .map_err(panicked)??)
    }

    async fn delete(&self, media: &MediaId) -> Result<(), BlobError> {
        let store = self.store.clone();
        let prefix = ObjPath::from(format!("media/{}", media.0));
        background::run(async move {
            let paths: Vec<ObjPath> = store
                .list(Some(&prefix))
                .map(|m| m.map(|m| m.location))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            for p in paths {
                match store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(BlobError::from(e)),
                }
            }
            Ok(())
        })
        .await
        .map_err(panicked)?
    }
}
