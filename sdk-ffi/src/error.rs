//! `NatterError`: every failure an app can see, flattened from natter-sdk's `ClientError`
//! (and the protocol's `RequestError`) into one enum at the FFI edge. Kotlin sees
//! `NatterException.Server`, Swift `NatterError.Server`, Python `NatterError.Server`.
use natter_sdk::{BackupError, ClientError, RequestError};

use crate::types::ErrorCode;

/// Why a natter call failed.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum NatterError {
    /// The server refused the request; `code` says why (e.g. `INVALID_CREDENTIALS`,
    /// `NOT_MEMBER`, `RATE_LIMITED` with `retry_after_ms`).
    #[error("{code:?}: {detail}")]
    Server {
        /// The typed reason.
        code: ErrorCode,
        /// Human-readable detail for logs; never parse it.
        detail: String,
        /// For rate limits and drains: when to try again.
        retry_after_ms: u32,
    },
    /// Refused on the device before sending (bad username, empty text, too long, …).
    #[error("invalid input: {detail}")]
    InvalidInput {
        /// What is wrong.
        detail: String,
    },
    /// The connection dropped before the answer arrived; the request may or may not have
    /// taken effect (sends are retried by the SDK and never fail this way).
    #[error("connection lost before the response")]
    ConnectionLost,
    /// No answer within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The client was shut down.
    #[error("client is closed")]
    Closed,
    /// Bad connect options (address, certificate) or TLS/QUIC set-up failure.
    #[error("setup: {detail}")]
    Setup {
        /// What failed.
        detail: String,
    },
    /// The server answered with a response of the wrong kind.
    #[error("unexpected response from the server")]
    Unexpected,
    /// A download was cut off, or an upload gave up; what the server stored stays and a
    /// retry goes on from there.
    #[error("media: {detail}")]
    Media {
        /// What happened.
        detail: String,
    },
    /// A local file could not be read or written.
    #[error("file: {detail}")]
    File {
        /// What failed.
        detail: String,
    },
    /// The upload was paused (`pause_upload`); `resume_upload` goes on from what was stored.
    #[error("upload {upload_id} is paused")]
    UploadPaused {
        /// The upload.
        upload_id: String,
    },
    /// The upload was cancelled (`cancel_upload`) while it ran.
    #[error("upload {upload_id} was cancelled")]
    UploadCancelled {
        /// The upload.
        upload_id: String,
    },
    /// An encrypted file did not open: the wrong key, an altered chunk, a range past its
    /// end.
    #[error("{detail}")]
    Decrypt {
        /// What failed.
        detail: String,
    },
    /// The file given to go on with an upload is not the one it started with (another
    /// size or SHA-256); nothing was sent.
    #[error("{detail}")]
    NotTheSameFile {
        /// Which upload, and how the file differs.
        detail: String,
    },
    /// End-to-end encryption failed: not configured, a device's keys do not verify, the
    /// state file does not open with the store key.
    #[error("encryption: {detail}")]
    Encryption {
        /// What failed.
        detail: String,
    },
    /// Not a recovery key (a typo, most likely: the check character disagrees); nothing
    /// was read.
    #[error("not a recovery key: {detail}")]
    MalformedRecoveryKey {
        /// What is wrong with it.
        detail: String,
    },
    /// A well-formed recovery key, but not this user's backup's; nothing was read.
    #[error("the recovery key does not open this backup")]
    WrongRecoveryKey,
    /// The user has no key backup to restore from.
    #[error("no key backup was set up")]
    NoKeyBackup,
}

impl From<ClientError> for NatterError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Request(RequestError::Server(e)) => NatterError::Server {
                code: e.code.into(),
                detail: e.message,
                retry_after_ms: e.retry_after_ms,
            },
            ClientError::Request(RequestError::Invalid(v)) => NatterError::InvalidInput { detail: v.to_string() },
            ClientError::Request(RequestError::ConnectionLost) => NatterError::ConnectionLost,
            ClientError::Request(RequestError::Timeout) => NatterError::Timeout,
            ClientError::Closed => NatterError::Closed,
            ClientError::Setup(detail) => NatterError::Setup { detail },
            ClientError::Unexpected => NatterError::Unexpected,
            ClientError::Download(natter_protocol::client::DownloadError::Request(r)) => ClientError::Request(r).into(),
            ClientError::Download(cut) => NatterError::Media {
                detail: cut.to_string(),
            },
            ClientError::Upload(detail) => NatterError::Media { detail },
            ClientError::UploadPaused(upload_id) => NatterError::UploadPaused { upload_id },
            ClientError::UploadCancelled(upload_id) => NatterError::UploadCancelled { upload_id },
            ClientError::Resume(e) => NatterError::NotTheSameFile { detail: e.to_string() },
            ClientError::File(detail) => NatterError::File { detail },
            ClientError::FileCrypto(e) => NatterError::Decrypt { detail: e.to_string() },
            ClientError::E2ee(natter_sdk::E2eeError::Backup(e)) => match e {
                BackupError::Malformed(why) => NatterError::MalformedRecoveryKey { detail: why.into() },
                BackupError::WrongKey => NatterError::WrongRecoveryKey,
                BackupError::NoBackup => NatterError::NoKeyBackup,
                BackupError::Corrupt => NatterError::Encryption { detail: e.to_string() },
            },
            ClientError::E2ee(e) => NatterError::Encryption { detail: e.to_string() },
            // ClientError is non-exhaustive; a new kind reads as unexpected until mapped.
            _ => NatterError::Unexpected,
        }
    }
}
