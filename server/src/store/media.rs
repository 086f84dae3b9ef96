//! The media metadata records the store keeps (PROTOCOL.md §11): one [`MediaRecord`] per
//! upload, from `CreateUpload` to deletion. The bytes are not here: they live in the media
//! layer's blob store, one object per stored piece.
use std::collections::BTreeSet;

use natter_protocol::{ConversationId, UserId};
use serde::{Deserialize, Serialize};

/// Names a finished file (attachments, downloads). 128 random bits, base64url.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MediaId(pub String);

/// Names an upload in progress (upload streams, the tus URL). Only its creator may use it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UploadId(pub String);

/// Where an upload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaState {
    /// Bytes still expected.
    Uploading,
    /// Every byte stored; the type check and thumbnails run.
    Processing,
    /// Ready to attach and download.
    Ready,
}

/// A thumbnail the server made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbRecord {
    /// The wire variant number (`pb::MediaVariant`).
    pub variant: i32,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Bytes (one object of its own).
    pub size: u64,
    /// Its type.
    pub mime: String,
}

/// What processing found out about a finished file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// The sniffed type, or the declared one when the bytes are not recognised.
    pub mime: String,
    /// Images: pixels.
    pub width: u32,
    /// Images: pixels.
    pub height: u32,
    /// Images: BlurHash.
    pub blurhash: String,
    /// Images: thumbnails.
    pub thumbnails: Vec<ThumbRecord>,
    /// SHA-256 of the whole file.
    pub sha256: Vec<u8>,
}

/// A message that attaches a file: (conversation, sender, client message id).
pub type MediaRef = (ConversationId, UserId, String);

/// One upload and the file it becomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// The file's id.
    pub media_id: MediaId,
    /// The upload's id.
    pub upload_id: UploadId,
    /// Who uploads it (and whose quota it counts against).
    pub owner: UserId,
    /// The conversation it was announced for.
    pub conversation: ConversationId,
    /// Declared size in bytes.
    pub size: u64,
    /// Declared type.
    pub declared_mime: String,
    /// File name (validated; never a path).
    pub name: String,
    /// Encrypted by the client.
    pub encrypted: bool,
    /// The SHA-256 the client declared, if any.
    pub expected_sha256: Option<Vec<u8>>,
    /// Stored pieces are at most this long.
    pub chunk_bytes: u32,
    /// End offset of every stored piece, ascending; the last is the committed offset.
    /// Piece `i` covers `pieces[i-1]..pieces[i]` (from 0 for the first).
    pub pieces: Vec<u64>,
    /// Where it stands.
    pub state: MediaState,
    /// Set once ready.
    pub ready: Option<ReadyInfo>,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// An unfinished upload is deleted after this, ms since the epoch.
    pub expires_ms: u64,
    /// Messages that attach it; it is kept while any is left.
    pub refs: BTreeSet<MediaRef>,
    /// Bumped by every update ([`super::Store::update_media`] compares it).
    pub version: u64,
}

impl MediaRecord {
    /// Bytes durably stored.
    pub fn committed(&self) -> u64 {
        self.pieces.last().copied().unwrap_or(0)
    }

    /// Piece `i`'s byte range.
    pub fn piece_range(&self, i: usize) -> std::ops::Range<u64> {
        let start = if i == 0 { 0 } else { self.pieces[i - 1] };
        start..self.pieces[i]
    }
}
