//! The app-facing media records (PROTOCOL.md §11): uploads, finished files, attachments,
//! converted once from the wire types.
use super::{ErrorCode, ErrorInfo};
use crate::pb;

app_enum!(
    /// Where an upload stands. JS: `"uploading"`, `"processing"`, `"ready"`, `"rejected"`.
    UploadState from pb::UploadState, serde "lowercase" { Unspecified, Uploading, Processing, Ready, Rejected }
);
app_enum!(
    /// A file or one of its thumbnails. JS: `"original"`, `"thumb320"`, `"thumb800"`.
    MediaVariant from pb::MediaVariant, serde "lowercase" { Original, Thumb320, Thumb800 }
);

record! {
    /// A thumbnail the server made of an image.
    pub struct Thumbnail {
        /// Which one.
        pub variant: MediaVariant,
        /// Pixels.
        pub width: u32,
        /// Pixels.
        pub height: u32,
        /// Bytes.
        pub size: u64,
        /// Its content type.
        pub mime: String,
    }
}

record! {
    /// A finished file.
    pub struct MediaInfo {
        /// Names it in attachments and downloads.
        pub media_id: String,
        /// The sniffed content type where the server recognised it, else the declared one.
        pub mime: String,
        /// Bytes.
        pub size: u64,
        /// The file name.
        pub name: String,
        /// Images: pixels (0 otherwise).
        pub width: u32,
        /// Images: pixels (0 otherwise).
        pub height: u32,
        /// Images: a BlurHash placeholder.
        pub blurhash: String,
        /// Images: thumbnails.
        pub thumbnails: Vec<Thumbnail>,
        /// Encrypted by the client.
        pub encrypted: bool,
        /// Who uploaded it.
        pub owner_user_id: u64,
        /// When the upload was created (ms since the epoch).
        pub created_ms: u64,
        /// SHA-256 of the whole file, hex.
        pub sha256: String,
    }
}

record! {
    /// An upload this client started that the server has not finished: kept in the
    /// snapshot so it survives an app restart — resume it with the same file (its size and
    /// hash are checked) and it goes on from the server's committed offset.
    pub struct PendingUpload {
        /// The server's id of the upload.
        pub upload_id: String,
        /// The conversation it is for.
        pub conversation_id: u64,
        /// The file name.
        pub name: String,
        /// The declared content type.
        pub mime: String,
        /// Bytes.
        pub size: u64,
        /// SHA-256 of the whole file, hex.
        pub sha256: String,
        /// Where the app read the file from (a path), when it said: the FFI's `upload_file`
        /// records it, so `resume_upload_file` needs only the upload id.
        pub source: Option<String>,
        /// Paused by the app: nothing is sent until it resumes the upload.
        pub paused: bool,
    }
}

record! {
    /// A file in a message.
    pub struct Attachment {
        /// The file.
        pub media_id: String,
        /// Its name.
        pub name: String,
        /// Its content type.
        pub mime: String,
        /// Bytes.
        pub size: u64,
        /// Images: pixels.
        pub width: u32,
        /// Images: pixels.
        pub height: u32,
        /// Audio and video: as the sender measured it (0: unknown).
        pub duration_ms: u32,
        /// Images: a BlurHash placeholder.
        pub blurhash: String,
        /// Images: thumbnails.
        pub thumbnails: Vec<Thumbnail>,
        /// Encrypted by the client.
        pub encrypted: bool,
    }
}

record! {
    /// An upload as the server reported it.
    pub struct UploadProgress {
        /// The upload.
        pub upload_id: String,
        /// Bytes durably stored.
        pub committed: u64,
        /// Where it stands.
        pub state: UploadState,
        /// Once ready: the file.
        pub media: Option<MediaInfo>,
        /// A refused upload stream, or why the upload was rejected.
        pub error: Option<ErrorInfo>,
    }
}

impl From<pb::Thumbnail> for Thumbnail {
    fn from(t: pb::Thumbnail) -> Self {
        Thumbnail {
            variant: t.variant().into(),
            width: t.width,
            height: t.height,
            size: t.size,
            mime: t.mime,
        }
    }
}

impl From<pb::MediaInfo> for MediaInfo {
    fn from(m: pb::MediaInfo) -> Self {
        MediaInfo {
            media_id: m.media_id,
            mime: m.mime,
            size: m.size,
            name: m.name,
            width: m.width,
            height: m.height,
            blurhash: m.blurhash,
            thumbnails: m.thumbnails.into_iter().map(Into::into).collect(),
            encrypted: m.encrypted,
            owner_user_id: m.owner_user_id,
            created_ms: m.created_ms,
            sha256: hex(&m.sha256),
        }
    }
}

impl From<pb::Attachment> for Attachment {
    fn from(a: pb::Attachment) -> Self {
        Attachment {
            media_id: a.media_id,
            name: a.name,
            mime: a.mime,
            size: a.size,
            width: a.width,
            height: a.height,
            duration_ms: a.duration_ms,
            blurhash: a.blurhash,
            thumbnails: a.thumbnails.into_iter().map(Into::into).collect(),
            encrypted: a.encrypted,
        }
    }
}

impl From<pb::UploadProgress> for UploadProgress {
    fn from(u: pb::UploadProgress) -> Self {
        let error = (u.error != 0).then(|| ErrorInfo {
            code: ErrorCode::from(pb::ErrorCode::try_from(u.error).unwrap_or(pb::ErrorCode::Internal)),
            message: u.message.clone(),
            retry_after_ms: 0,
        });
        UploadProgress {
            state: u.state().into(),
            upload_id: u.upload_id,
            committed: u.committed,
            media: u.media.map(Into::into),
            error,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
