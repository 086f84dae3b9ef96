//! The typed error a server returns for a request, as both ends see it.
use crate::pb;

/// An error response from the server (PROTOCOL.md §8.1).
#[derive(Clone, Debug, Default, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ServerError {
    /// What went wrong; unknown codes read as `Internal`.
    pub code: pb::ErrorCode,
    /// Detail for logs.
    pub message: String,
    /// For rate limits and drains: when to try again.
    pub retry_after_ms: u32,
    /// For `DEVICE_MISMATCH`: the devices an encrypted send got wrong (PROTOCOL.md §12.5).
    pub device_mismatch: Option<Box<pb::DeviceMismatch>>,
}

// Every field compares as an equivalence (no floats), so equality is total.
impl Eq for ServerError {}

impl ServerError {
    /// An error with a code and message.
    pub fn new(code: pb::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            ..Default::default()
        }
    }

    /// Whether the same request may succeed if retried unchanged later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code,
            pb::ErrorCode::Internal
                | pb::ErrorCode::RateLimited
                | pb::ErrorCode::ShuttingDown
                | pb::ErrorCode::StorageUnavailable
        )
    }
}

impl From<pb::Error> for ServerError {
    fn from(e: pb::Error) -> Self {
        Self {
            code: pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Internal),
            message: e.message,
            retry_after_ms: e.retry_after_ms,
            device_mismatch: e.device_mismatch.map(Box::new),
        }
    }
}

impl From<ServerError> for pb::Error {
    fn from(e: ServerError) -> Self {
        pb::Error {
            code: e.code as i32,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
            device_mismatch: e.device_mismatch.map(|m| *m),
        }
    }
}
