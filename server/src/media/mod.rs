//! Media (PROTOCOL.md §11): an upload from `CreateUpload` to a finished file — size, name,
//! type and quota checks before a byte moves; bytes stored in pieces, each durable before
//! its offset is reported; resumption from the last stored piece, on any node; the type
//! check and thumbnails once the last byte is in; references from messages, and deletion
//! of what expired or is no longer referenced. Transport-neutral: an upload stream, a tus
//! PATCH and a download all come here as byte streams.
//!
//! May import: `store`, `security`, `clock`, `error`, `chat_first`, `ops` (its counters). Must not import `conversation`,
//! `session`, `api`, `conn` or `transport`: who may read a file is decided above (api),
//! which knows memberships.
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::{limits, validate, ConversationId, ServerError, UserId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::chat_first::ChatFirst;
use crate::ops::Metrics;
use crate::store::{MediaId, MediaRecord, MediaRef, MediaState, ReadyInfo, Store, StoreError, ThumbRecord, UploadId};

pub mod background;
pub mod blobs;
pub mod process;

pub use blobs::{MediaStore, ObjectMediaStore, S3Settings};

/// The media limits a server enforces and advertises (`Welcome.limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    /// Largest declared size.
    pub max_upload_bytes: u64,
    /// Stored pieces are at most this long.
    pub chunk_bytes: u32,
    /// Upload streams per connection.
    pub max_upload_streams: u32,
    /// Unfinished uploads are deleted after this long.
    pub upload_expiry_secs: u32,
    /// Bytes of media per user.
    pub quota_bytes: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_upload_bytes: limits::MAX_UPLOAD_BYTES,
            chunk_bytes: limits::UPLOAD_CHUNK_BYTES,
            max_upload_streams: limits::MAX_UPLOAD_STREAMS,
            upload_expiry_secs: limits::UPLOAD_EXPIRY_SECS,
            quota_bytes: limits::MEDIA_QUOTA_BYTES,
        }
    }
}

impl MediaConfig {
    /// Write these limits into the advertised ones.
    pub fn advertise(&self, l: &mut pb::Limits) {
        l.max_upload_bytes = self.max_upload_bytes;
        l.upload_chunk_bytes = self.chunk_bytes;
        l.max_upload_streams = self.max_upload_streams;
        l.upload_expiry_secs = self.upload_expiry_secs;
        l.media_quota_bytes = self.quota_bytes;
        l.max_attachments = limits::MAX_ATTACHMENTS as u32;
    }
}

/// How long a stream that has carried every declared byte is given to end (or to show it
/// carries more) before the file is processed anyway.
const END_OF_STREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Where progress reports go (the control stream of the uploading connection).
pub type Progress<'a> = &'a (dyn Fn(pb::UploadProgress) + Send + Sync);

/// The media service of one node.
#[derive(Debug)]
pub struct Media {
    /// Uploads and deletions are counted here.
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    blobs: Arc<dyn MediaStore>,
    /// Its limits.
    pub config: MediaConfig,
    /// Uploads with a writer on this node, each with the token that asks it to let go
    /// (one writer at a time per upload; across nodes the record's version decides).
    writing: Mutex<HashMap<UploadId, CancellationToken>>,
    /// Signalled whenever a writer lets go of an upload.
    released: Notify,
    /// Type checks and thumbnails running at once.
    processing: tokio::sync::Semaphore,
    /// The pace uploads are read at: what chat leaves over.
    chat_first: Arc<ChatFirst>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ServerError {
    ServerError::new(code, msg)
}

fn unavailable(e: impl std::fmt::Display) -> ServerError {
    tracing::warn!(error = %e, "media store failed");
    ServerError {
        code: ErrorCode::StorageUnavailable,
        message: "media storage unavailable; retry".into(),
        retry_after_ms: 1000,
        device_mismatch: None,
    }
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Most bytes an upload reads before paying for them (chat_first.rs).
const READ_SLICE: u64 = 64 * 1024;

/// How long a new upload stream waits for the one before it to let go (that one may be
/// storing its last piece, or processing the finished file) before it is refused.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Takes an upload for one writer; released on drop. `stop` is cancelled when a newer
/// stream of the same owner wants the upload.
struct Writing<'a> {
    media: &'a Media,
    id: UploadId,
    stop: CancellationToken,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.media.writing.lock().expect("writing lock").remove(&self.id);
        self.media.released.notify_waiters();
    }
}

impl Media {
    /// A media service over these stores.
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn MediaStore>,
        config: MediaConfig,
        chat_first: Arc<ChatFirst>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Media {
            metrics,
            chat_first,
            store,
            blobs,
            config,
            writing: Mutex::new(HashMap::new()),
            released: Notify::new(),
            processing: tokio::sync::Semaphore::new(2),
        }
    }

    /// Announce an upload (the caller has checked membership of `conversation`).
    pub async fn create(
        &self,
        owner: UserId,
        conversation: ConversationId,
        r: pb::CreateUpload,
        now_ms: u64,
    ) -> Result<MediaRecord, ServerError> {
        if r.size == 0 {
            return Err(err(ErrorCode::BadRequest, "size must be at least 1 byte"));
        }
        if r.size > self.config.max_upload_bytes {
            return Err(err(
                ErrorCode::TooLarge,
                format!("{} bytes; the limit is {}", r.size, self.config.max_upload_bytes),
            ));
        }
        validate::file_name(&r.name)?;
        validate::mime(&r.mime)?;
        if !(r.sha256.is_empty() || r.sha256.len() == 32) {
            return Err(err(ErrorCode::BadRequest, "sha256 must be 32 bytes"));
        }
        let rec = MediaRecord {
            media_id: MediaId(random_id()),
            upload_id: UploadId(random_id()),
            owner,
            conversation,
            size: r.size,
            declared_mime: r.mime,
            name: r.name,
            encrypted: r.encrypted,
            expected_sha256: (!r.sha256.is_empty()).then_some(r.sha256),
            chunk_bytes: self.config.chunk_bytes,
            pieces: Vec::new(),
            state: MediaState::Uploading,
            ready: None,
            created_ms: now_ms,
            expires_ms: now_ms + u64::from(self.config.upload_expiry_secs) * 1000,
            refs: Default::default(),
            version: 1,
        };
        self.store.create_media(&rec, self.config.quota_bytes).await?;
        // The owner's index of files, for deleting and exporting an account (§5.16).
        let owned = owned_key(owner, &rec.media_id.0);
        if let Err(e) = crate::store::docs::set(&*self.store, OWNED, &owned, &()).await {
            tracing::warn!(error = %e, "a file is missing from its owner's index");
        }
        Ok(rec)
    }

    /// The ids of every file the user uploaded (finished or not), oldest index key first.
    pub async fn owned(&self, owner: UserId) -> Result<Vec<String>, ServerError> {
        let prefix = owned_key(owner, "");
        let mut out = Vec::new();
        let mut after = prefix.clone();
        loop {
            let page = crate::store::docs::list::<()>(&*self.store, OWNED, &after, 500).await?;
            let done = page.len() < 500;
            for (k, _) in page {
                let Some(id) = k.strip_prefix(&prefix) else {
                    return Ok(out);
                };
                out.push(id.to_string());
                after = k;
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// Delete a file whoever attaches it (its owner's account is deleted, §5.16).
    pub async fn delete(&self, id: &str) -> Result<(), ServerError> {
        match self.media(id).await {
            Ok(rec) => {
                let _writing = self.try_take(&rec.upload_id, false);
                self.discard(&rec).await;
                Ok(())
            }
            Err(e) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The caller's upload.
    pub async fn upload_of(&self, owner: UserId, id: &str) -> Result<MediaRecord, ServerError> {
        validate::media_id(id)?;
        let rec = self
            .store
            .media_by_upload(&UploadId(id.into()))
            .await?
            .ok_or_else(|| err(ErrorCode::NotFound, "no such upload"))?;
        if rec.owner != owner {
            return Err(err(ErrorCode::Forbidden, "another user's upload"));
        }
        Ok(rec)
    }

    /// A file by id, whatever its state.
    pub async fn media(&self, id: &str) -> Result<MediaRecord, ServerError> {
        validate::media_id(id)?;
        self.store
            .media(&MediaId(id.into()))
            .await?
            .ok_or_else(|| err(ErrorCode::NotFound, "no such media"))
    }

    /// The caller's upload, finishing it first if its processing was cut off (a crash
    /// between the last byte and the thumbnails).
    pub async fn status(&self, owner: UserId, id: &str) -> Result<MediaRecord, ServerError> {
        let rec = self.upload_of(owner, id).await?;
        if rec.state != MediaState::Processing {
            return Ok(rec);
        }
        // Held until the file is finished (a guard in the `if` would be dropped at once).
        let Some(_writing) = self.try_take(&rec.upload_id, false) else {
            return Ok(rec);
        };
        self.finish(rec, &|_| {}).await
    }

    /// The upload, if no writer has it; else (with `preempt`) ask that writer to let go.
    fn try_take(&self, id: &UploadId, preempt: bool) -> Option<Writing<'_>> {
        let mut writing = self.writing.lock().expect("writing lock");
        if let Some(holder) = writing.get(id) {
            if preempt {
                holder.cancel();
            }
            return None;
        }
        let stop = CancellationToken::new();
        writing.insert(id.clone(), stop.clone());
        Some(Writing {
            media: self,
            id: id.clone(),
            stop,
        })
    }

    /// The upload for a new stream: the newest stream wins. A stream whose connection
    /// vanished without a close would otherwise hold the upload until its idle timeout;
    /// the writer before is asked to stop at its next read (the piece it is storing is
    /// finished, a partly read one is dropped) and this one waits for it.
    async fn take_over(&self, id: &UploadId) -> Result<Writing<'_>, ServerError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(w) = self.try_take(id, true) {
                return Ok(w);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(err(ErrorCode::Conflict, "another upload stream is writing this upload"));
            }
        }
    }

    /// Store the bytes of `body` at `offset` of the caller's upload, piece by piece, each
    /// reported through `progress` once durable; when the last byte is in, check and
    /// finish the file. Ends when `body` ends (what was stored stays) or fails; a failure
    /// is reported through `progress` too (with its code, the committed offset and whether
    /// the upload is gone).
    pub async fn write<R: AsyncRead + Unpin + Send>(
        &self,
        owner: UserId,
        id: &str,
        offset: u64,
        body: R,
        progress: Progress<'_>,
    ) -> Result<MediaRecord, ServerError> {
        let result = self.write_pieces(owner, id, offset, body, progress).await;
        if let Err(e) = &result {
            let now = match validate::media_id(id) {
                Ok(()) => self.store.media_by_upload(&UploadId(id.into())).await.ok().flatten(),
                Err(_) => None,
            };
            let mine = now.filter(|r| r.owner == owner);
            progress(pb::UploadProgress {
                upload_id: id.into(),
                committed: mine.as_ref().map_or(0, |r| r.committed()),
                state: match &mine {
                    Some(r) => state_of(r),
                    None if e.code == ErrorCode::TooLarge || e.code == ErrorCode::MediaRejected => {
                        pb::UploadState::Rejected
                    }
                    None => pb::UploadState::Unspecified,
                } as i32,
                media: None,
                error: e.code as i32,
                message: e.message.clone(),
            });
        }
        result
    }

    async fn write_pieces<R: AsyncRead + Unpin + Send>(
        &self,
        owner: UserId,
        id: &str,
        offset: u64,
        mut body: R,
        progress: Progress<'_>,
    ) -> Result<MediaRecord, ServerError> {
        let mut rec = self.upload_of(owner, id).await?;
        let writing = self.take_over(&rec.upload_id).await?;
        // Re-read under the lock: the writer before may have moved it on.
        rec = self.upload_of(owner, id).await?;
        match rec.state {
            MediaState::Uploading => {}
            MediaState::Processing => return self.finish(rec, progress).await,
            MediaState::Ready => return Err(err(ErrorCode::Conflict, "the upload is complete")),
        }
        if offset != rec.committed() {
            return Err(err(
                ErrorCode::OffsetMismatch,
                format!("offset {offset}; the committed offset is {}", rec.committed()),
            ));
        }
        let chunk = rec.chunk_bytes.max(1) as u64;
        while rec.committed() < rec.size {
            let start = rec.committed();
            let want = chunk.min(rec.size - start);
            let mut buf = BytesMut::with_capacity(want as usize);
            while (buf.len() as u64) < want {
                // Read in slices, each paid for before the next is read: a stream read
                // slower than it arrives holds its sender back (flow control).
                let slice = (want - buf.len() as u64).min(READ_SLICE);
                let mut sliced = (&mut body).take(slice);
                let n = tokio::select! {
                    // A reset stream, or one whose connection dropped, is its sender
                    // stopping (PROTOCOL.md §11.2: how a client pauses, and what a
                    // reconnect does to a stream under way), not a refusal: the pieces
                    // stored stay, the partly read one goes, and the report says where
                    // the upload stands, without an error.
                    n = sliced.read_buf(&mut buf) => match n {
                        Ok(n) => n,
                        Err(_) => {
                            progress(progress_of(&rec));
                            return Ok(rec);
                        }
                    },
                    // A newer stream took over: what is stored stays, the partial piece
                    // goes (that stream starts at the committed offset).
                    () = writing.stop.cancelled() => return Ok(rec),
                };
                if n == 0 {
                    break;
                }
                tokio::select! {
                    () = self.chat_first.take(n) => {}
                    () = writing.stop.cancelled() => return Ok(rec),
                }
            }
            if buf.is_empty() {
                return Ok(rec); // the stream ended on a piece boundary: paused
            }
            let end = start + buf.len() as u64;
            let short = end < start + want;
            self.blobs
                .put_piece(&rec.media_id, start, buf.freeze())
                .await
                .map_err(unavailable)?;
            rec.pieces.push(end);
            rec = self.save(rec).await?;
            self.metrics.media_bytes_stored.inc_by(end - start);
            progress(progress_of(&rec));
            if short {
                return Ok(rec); // the stream ended inside a piece: that much is stored
            }
        }
        // Every declared byte is in: one more is a lie about the size. A stream that then
        // neither ends nor sends (or is reset) does not hold the file back: what was
        // declared is stored.
        let mut one = [0u8; 1];
        let more = tokio::select! {
            more = tokio::time::timeout(END_OF_STREAM_WAIT, body.read(&mut one)) => more.ok(),
            () = writing.stop.cancelled() => None,
        };
        if matches!(more, Some(Ok(n)) if n > 0) {
            self.discard(&rec).await;
            return Err(err(
                ErrorCode::TooLarge,
                format!("more bytes than the declared {}", rec.size),
            ));
        }
        rec.state = MediaState::Processing;
        rec = self.save(rec).await?;
        progress(progress_of(&rec));
        self.finish(rec, progress).await
    }

    /// Write a record moved on by one version.
    async fn save(&self, mut rec: MediaRecord) -> Result<MediaRecord, ServerError> {
        rec.version += 1;
        match self.store.update_media(&rec).await {
            Ok(()) => Ok(rec),
            Err(StoreError::Changed) => Err(err(
                ErrorCode::Conflict,
                "the upload changed meanwhile (cancelled or written elsewhere)",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Check a fully stored file and make it ready, or reject and delete it.
    async fn finish(&self, mut rec: MediaRecord, progress: Progress<'_>) -> Result<MediaRecord, ServerError> {
        let _permit = self.processing.acquire().await.expect("semaphore open");
        let checked = self.check(&rec).await;
        match checked {
            Ok(info) => {
                rec.state = MediaState::Ready;
                rec.ready = Some(info);
                rec = self.save(rec).await?;
                Metrics::result(&self.metrics.media_uploads, "ready");
                progress(progress_of(&rec));
                Ok(rec)
            }
            Err(e) if e.code == ErrorCode::StorageUnavailable => Err(e),
            Err(e) => {
                Metrics::result(&self.metrics.media_uploads, "rejected");
                self.discard(&rec).await;
                Err(e)
            }
        }
    }

    async fn check(&self, rec: &MediaRecord) -> Result<ReadyInfo, ServerError> {
        let mut hasher = Sha256::new();
        let keep_all = !rec.encrypted && rec.size <= process::MAX_THUMBNAIL_SOURCE_BYTES;
        let mut head = Vec::new();
        let mut all = Vec::new();
        let mut pieces = self.range_stream(rec, pb::MediaVariant::Original, 0, rec.size);
        while let Some(b) = pieces.next().await {
            let b = b.map_err(unavailable)?;
            // Hashing is file work too: below chat's priority (background.rs).
            hasher = {
                let b = b.clone();
                crate::background::blocking(move || {
                    hasher.update(&b);
                    hasher
                })
                .await
                .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
            };
            if head.len() < 8192 {
                head.extend_from_slice(&b[..b.len().min(8192 - head.len())]);
            }
            if keep_all {
                all.extend_from_slice(&b);
            }
        }
        let sha256 = hasher.finalize().to_vec();
        if rec.expected_sha256.as_ref().is_some_and(|e| *e != sha256) {
            return Err(err(
                ErrorCode::MediaRejected,
                "the bytes do not have the declared SHA-256",
            ));
        }
        if rec.encrypted {
            return Ok(ReadyInfo {
                mime: process::check_type(&rec.declared_mime, None).unwrap_or_else(|_| rec.declared_mime.clone()),
                sha256,
                ..Default::default()
            });
        }
        let mime = process::check_type(&rec.declared_mime, process::sniff(&head))
            .map_err(|e| err(ErrorCode::MediaRejected, e.0))?;
        let mut info = ReadyInfo {
            mime: mime.clone(),
            sha256,
            ..Default::default()
        };
        if process::is_raster(&mime) && keep_all {
            let out = crate::background::blocking(move || process::image(&all, &mime))
                .await
                .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
                .map_err(|e| err(ErrorCode::MediaRejected, e.0))?;
            for t in out.thumbs {
                let size = t.jpeg.len() as u64;
                self.blobs
                    .put_variant(&rec.media_id, t.variant as i32, Bytes::from(t.jpeg))
                    .await
                    .map_err(unavailable)?;
                info.thumbnails.push(ThumbRecord {
                    variant: t.variant as i32,
                    width: t.width,
                    height: t.height,
                    size,
                    mime: "image/jpeg".into(),
                });
            }
            (info.width, info.height, info.blurhash) = (out.width, out.height, out.blurhash);
        }
        Ok(info)
    }

    /// Delete a file's bytes and record (quota given back). Best effort: a failure leaves
    /// the record for the expiry sweep.
    async fn discard(&self, rec: &MediaRecord) {
        if let Err(e) = self.blobs.delete(&rec.media_id).await {
            return tracing::warn!(error = %e, "deleting media bytes failed; the sweep retries");
        }
        if let Err(e) = self.store.delete_media(&rec.media_id).await {
            return tracing::warn!(error = %e, "deleting a media record failed; the sweep retries");
        }
        if rec.state == MediaState::Ready {
            self.metrics.media_files_deleted.inc();
        }
        let _ = self
            .store
            .delete_doc(OWNED, &owned_key(rec.owner, &rec.media_id.0))
            .await;
    }

    /// Stop the caller's upload and delete what it stored.
    pub async fn cancel(&self, owner: UserId, id: &str) -> Result<(), ServerError> {
        let rec = self.upload_of(owner, id).await?;
        if !rec.refs.is_empty() {
            return Err(err(ErrorCode::Conflict, "the file is attached to messages"));
        }
        self.blobs.delete(&rec.media_id).await.map_err(unavailable)?;
        self.store.delete_media(&rec.media_id).await?;
        Metrics::result(&self.metrics.media_uploads, "cancelled");
        Ok(())
    }

    /// The bytes `start..end` of a variant of a ready file, piece by piece.
    pub fn range_stream(
        &self,
        rec: &MediaRecord,
        variant: pb::MediaVariant,
        start: u64,
        end: u64,
    ) -> BoxStream<'static, Result<Bytes, io::Error>> {
        let blobs = self.blobs.clone();
        let media = rec.media_id.clone();
        if variant != pb::MediaVariant::Original {
            let v = variant as i32;
            return futures::stream::once(async move {
                blobs
                    .read_variant(&media, v, start..end)
                    .await
                    .map_err(io::Error::other)
            })
            .boxed();
        }
        let parts: Vec<(u64, std::ops::Range<u64>)> = (0..rec.pieces.len())
            .filter_map(|i| {
                let r = rec.piece_range(i);
                let (s, e) = (r.start.max(start), r.end.min(end));
                (s < e).then(|| (r.start, s - r.start..e - r.start))
            })
            .collect();
        futures::stream::iter(parts)
            .then(move |(piece, range)| {
                let (blobs, media) = (blobs.clone(), media.clone());
                async move { blobs.read_piece(&media, piece, range).await.map_err(io::Error::other) }
            })
            .boxed()
    }

    /// Size and content type of a variant of a ready file, if it has that variant.
    pub fn variant_of(rec: &MediaRecord, variant: pb::MediaVariant) -> Option<(u64, String)> {
        let ready = rec.ready.as_ref();
        if variant == pb::MediaVariant::Original {
            return Some((rec.size, ready.map(|r| r.mime.clone()).unwrap_or_default()));
        }
        ready?
            .thumbnails
            .iter()
            .find(|t| t.variant == variant as i32)
            .map(|t| (t.size, t.mime.clone()))
    }

    /// Record that a message attaches a file; the file is kept while any such message is.
    pub async fn add_ref(&self, rec: MediaRecord, r: MediaRef) -> Result<MediaRecord, ServerError> {
        let mut rec = rec;
        for _ in 0..5 {
            if rec.refs.contains(&r) {
                return Ok(rec);
            }
            let mut next = rec.clone();
            next.refs.insert(r.clone());
            match self.save(next).await {
                Ok(saved) => return Ok(saved),
                Err(e) if e.code == ErrorCode::Conflict => rec = self.media(&rec.media_id.0).await?,
                Err(e) => return Err(e),
            }
        }
        Err(err(ErrorCode::Conflict, "the file changed too often; retry"))
    }

    /// A message that attached the file is gone: forget it, and delete the file once no
    /// message attaches it.
    pub async fn remove_ref(&self, id: &str, r: &MediaRef) -> Result<(), ServerError> {
        for _ in 0..5 {
            let rec = match self.media(id).await {
                Ok(rec) => rec,
                Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            if !rec.refs.contains(r) {
                return Ok(());
            }
            let mut next = rec.clone();
            next.refs.remove(r);
            let last = next.refs.is_empty();
            match self.save(next).await {
                Ok(saved) if last => {
                    self.discard(&saved).await;
                    return Ok(());
                }
                Ok(_) => return Ok(()),
                Err(e) if e.code == ErrorCode::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(err(ErrorCode::Conflict, "the file changed too often; retry"))
    }

    /// Delete unfinished uploads past their expiry; how many went.
    pub async fn sweep(&self, now_ms: u64) -> Result<usize, ServerError> {
        let ids = self.store.expired_uploads(now_ms, 100).await?;
        let mut n = 0;
        for id in ids {
            if let Some(rec) = self.store.media(&id).await? {
                if rec.state == MediaState::Ready {
                    continue;
                }
                if let Some(_writing) = self.try_take(&rec.upload_id, false) {
                    self.discard(&rec).await;
                    Metrics::result(&self.metrics.media_uploads, "expired");
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Document space: `<owner>/<media id>` for every file a user holds.
const OWNED: &str = "owned";

fn owned_key(owner: UserId, media: &str) -> String {
    format!("{:020}/{media}", owner.0)
}

fn state_of(rec: &MediaRecord) -> pb::UploadState {
    match rec.state {
        MediaState::Uploading => pb::UploadState::Uploading,
        MediaState::Processing => pb::UploadState::Processing,
        MediaState::Ready => pb::UploadState::Ready,
    }
}

/// A ready file as the wire shows it.
pub fn info(rec: &MediaRecord) -> Option<pb::MediaInfo> {
    let ready = rec.ready.as_ref().filter(|_| rec.state == MediaState::Ready)?;
    Some(pb::MediaInfo {
        media_id: rec.media_id.0.clone(),
        mime: ready.mime.clone(),
        size: rec.size,
        name: rec.name.clone(),
        width: ready.width,
        height: ready.height,
        blurhash: ready.blurhash.clone(),
        thumbnails: ready.thumbnails.iter().map(thumbnail).collect(),
        encrypted: rec.encrypted,
        owner_user_id: rec.owner.0,
        created_ms: rec.created_ms,
        sha256: ready.sha256.clone(),
    })
}

fn thumbnail(t: &ThumbRecord) -> pb::Thumbnail {
    pb::Thumbnail {
        variant: t.variant,
        width: t.width,
        height: t.height,
        size: t.size,
        mime: t.mime.clone(),
    }
}

/// An upload as the wire shows it.
pub fn upload_info(rec: &MediaRecord) -> pb::UploadInfo {
    pb::UploadInfo {
        upload_id: rec.upload_id.0.clone(),
        media_id: rec.media_id.0.clone(),
        chunk_bytes: rec.chunk_bytes,
        committed: rec.committed(),
        size: rec.size,
        expires_ms: rec.expires_ms,
        state: state_of(rec) as i32,
        media: info(rec),
        error: 0,
    }
}

/// A progress report of where `rec` stands.
pub fn progress_of(rec: &MediaRecord) -> pb::UploadProgress {
    pb::UploadProgress {
        upload_id: rec.upload_id.0.clone(),
        committed: rec.committed(),
        state: state_of(rec) as i32,
        media: info(rec),
        error: 0,
        message: String::new(),
    }
}

/// The message's attachment as stored: for a file that is not encrypted every field but
/// the sender's name and duration comes from the finished upload.
pub fn attachment(rec: &MediaRecord, sent: &pb::Attachment) -> pb::Attachment {
    let i = info(rec).unwrap_or_default();
    if rec.encrypted {
        return pb::Attachment {
            media_id: rec.media_id.0.clone(),
            size: rec.size,
            encrypted: true,
            ..sent.clone()
        };
    }
    pb::Attachment {
        media_id: rec.media_id.0.clone(),
        name: if sent.name.is_empty() {
            rec.name.clone()
        } else {
            sent.name.clone()
        },
        mime: i.mime,
        size: rec.size,
        width: i.width,
        height: i.height,
        duration_ms: sent.duration_ms,
        blurhash: i.blurhash,
        thumbnails: i.thumbnails,
        encrypted: false,
        file_key: Vec::new(),
    }
}
