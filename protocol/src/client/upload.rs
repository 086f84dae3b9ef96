//! The upload policy every SDK shares (PROTOCOL.md §11.2–11.3), as pure decisions: given
//! where the server says an upload stands (`GetUpload`) or what it reported on the control
//! stream (`UploadProgress`), what the driver does next — send the rest from the committed
//! offset, wait, ask again, or stop with the file or a refusal. The drivers (natter-sdk's
//! streams, natter-wasm's WebTransport streams or tus PATCHes) only carry it out.
//!
//! Also here: the client's record of its unfinished uploads ([`Uploads`]), which every
//! SDK keeps in its snapshot so an upload survives an app restart and can be paused, and
//! the message body that attaches finished files, so every SDK names a message's kind the
//! same way.
use super::model::{MediaInfo, PendingUpload};
use crate::pb::{self, ErrorCode};
use crate::ServerError;

/// How long an upload keeps trying (reconnects included) before it gives up; what was
/// stored stays on the server until the upload expires, and a later attempt goes on from
/// there.
pub const PATIENCE_MS: u64 = 120_000;

/// How long to wait for the reports of a stream just sent before asking again.
pub const STREAM_REPORT_WAIT_MS: u64 = 30_000;

/// How often to look again while the server checks a finished upload, or while another
/// connection's stream (one cut by a reconnect) is still being finished.
pub const LOOK_AGAIN_MS: u64 = 500;

/// What to do next with an upload.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Done: the server checked the file.
    Ready(pb::MediaInfo),
    /// Send the file's bytes from `offset` (a new upload stream, or a tus PATCH), then
    /// wait for reports up to [`STREAM_REPORT_WAIT_MS`].
    Send {
        /// The server's committed offset.
        offset: u64,
    },
    /// Keep waiting for reports (or, after [`LOOK_AGAIN_MS`] of silence, ask again).
    Wait,
    /// Ask the server where the upload stands.
    AskAgain,
    /// Refused for good: no retry can change it.
    Failed(ServerError),
}

/// Refusals that no retry can change.
pub fn permanent(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::TooLarge
            | ErrorCode::MediaRejected
            | ErrorCode::Forbidden
            | ErrorCode::NotFound
            | ErrorCode::QuotaExceeded
            | ErrorCode::BadRequest
            | ErrorCode::NotMember
    )
}

/// The next step after `GetUpload` answered `status`.
pub fn after_status(status: &pb::UploadInfo) -> Next {
    match status.state() {
        pb::UploadState::Ready => match &status.media {
            Some(m) => Next::Ready(m.clone()),
            None => Next::Failed(ServerError::new(ErrorCode::Internal, "a ready upload without its file")),
        },
        pb::UploadState::Rejected => Next::Failed(ServerError::new(status.error(), "upload rejected")),
        pb::UploadState::Processing => Next::Wait,
        pb::UploadState::Uploading | pb::UploadState::Unspecified => Next::Send {
            offset: status.committed,
        },
    }
}

/// The next step after a report on the control stream: [`Next::Wait`] while pieces are
/// stored, the file once ready, a refusal that stands, or [`Next::AskAgain`] after a
/// refusal of the stream that a fresh look can fix (an offset behind the server's, a
/// concurrent stream).
pub fn after_report(report: &pb::UploadProgress) -> Next {
    if report.error != 0 && permanent(report.error()) {
        return Next::Failed(ServerError::new(report.error(), report.message.clone()));
    }
    match report.state() {
        pb::UploadState::Ready => match &report.media {
            Some(m) => Next::Ready(m.clone()),
            None => Next::AskAgain,
        },
        pb::UploadState::Rejected => Next::Failed(ServerError::new(report.error(), report.message.clone())),
        _ if report.error != 0 => Next::AskAgain,
        _ => Next::Wait,
    }
}

/// Why a file offered to go on with an upload is refused before a byte is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// Its size is not the upload's.
    #[error("this file has {got} bytes; upload {upload_id} is of {want}")]
    Size {
        /// The upload.
        upload_id: String,
        /// The file offered.
        got: u64,
        /// The upload's.
        want: u64,
    },
    /// Its SHA-256 is not the upload's: another file of the same size.
    #[error("this file is not the one upload {upload_id} started with (SHA-256 differs)")]
    Hash {
        /// The upload.
        upload_id: String,
    },
}

/// Why a running upload stopped before its file was ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The app paused it.
    Paused,
    /// The app cancelled it.
    Cancelled,
}

/// This client's unfinished uploads, oldest first: one is added when the server created
/// it and forgotten once it is ready, rejected or cancelled. The SDKs put
/// [`Uploads::list`] in their snapshot and give it back with [`Uploads::restore`] after a
/// restart; a paused upload stays here (and on the server, until it expires) without a
/// byte being sent.
#[derive(Debug, Clone, Default)]
pub struct Uploads {
    list: Vec<PendingUpload>,
}

impl Uploads {
    /// The uploads of an earlier snapshot.
    pub fn restore(list: impl IntoIterator<Item = PendingUpload>) -> Self {
        let mut u = Uploads::default();
        for p in list {
            u.started(p);
        }
        u
    }

    /// The server created an upload (or a restored one is known again).
    pub fn started(&mut self, p: PendingUpload) {
        self.list.retain(|q| q.upload_id != p.upload_id);
        self.list.push(p);
    }

    /// Ready, rejected or cancelled: nothing left to resume.
    pub fn finished(&mut self, upload_id: &str) -> Option<PendingUpload> {
        let i = self.list.iter().position(|p| p.upload_id == upload_id)?;
        Some(self.list.remove(i))
    }

    /// Stop sending `upload_id` until [`Uploads::resume`]; false if it is not here.
    pub fn pause(&mut self, upload_id: &str) -> bool {
        self.list
            .iter_mut()
            .find(|p| p.upload_id == upload_id)
            .map(|p| p.paused = true)
            .is_some()
    }

    /// Why a running upload of `upload_id` must stop before its file is ready, if it
    /// must: paused, or gone from the record (`tracked`: it was here when the upload
    /// started, so its leaving means a cancel; an untracked upload is never cancelled so).
    pub fn stop_reason(&self, upload_id: &str, tracked: bool) -> Option<Stopped> {
        match self.get(upload_id) {
            Some(p) if p.paused => Some(Stopped::Paused),
            None if tracked => Some(Stopped::Cancelled),
            _ => None,
        }
    }

    /// Whether `upload_id` is paused.
    pub fn is_paused(&self, upload_id: &str) -> bool {
        self.get(upload_id).is_some_and(|p| p.paused)
    }

    /// Go on with `upload_id` with a file of `size` bytes and SHA-256 `sha256` (hex): it
    /// must be the file the upload started with. Unpauses it; its record, or `None` for
    /// an upload this client does not know (the app kept the id itself): the server's
    /// checks of the bytes then decide.
    pub fn resume(&mut self, upload_id: &str, size: u64, sha256: &str) -> Result<Option<PendingUpload>, ResumeError> {
        let Some(p) = self.list.iter_mut().find(|p| p.upload_id == upload_id) else {
            return Ok(None);
        };
        if p.size != size {
            return Err(ResumeError::Size {
                upload_id: upload_id.into(),
                got: size,
                want: p.size,
            });
        }
        if !p.sha256.is_empty() && !p.sha256.eq_ignore_ascii_case(sha256) {
            return Err(ResumeError::Hash {
                upload_id: upload_id.into(),
            });
        }
        p.paused = false;
        Ok(Some(p.clone()))
    }

    /// One upload's record.
    pub fn get(&self, upload_id: &str) -> Option<&PendingUpload> {
        self.list.iter().find(|p| p.upload_id == upload_id)
    }

    /// Every unfinished upload, oldest first: what the snapshot keeps.
    pub fn list(&self) -> Vec<PendingUpload> {
        self.list.clone()
    }
}

/// Lower-case hex of a digest (the form [`PendingUpload::sha256`] and `MediaInfo.sha256`
/// use).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A message attaching finished files, with optional text. Its kind says what a client
/// can show without opening the files: images only → `IMAGE`, videos only → `VIDEO`,
/// other files without text → `FILE`, else `TEXT` with attachments.
pub fn files_body(text: &str, files: &[MediaInfo]) -> pb::MessageBody {
    let attachments = files
        .iter()
        .map(|m| pb::Attachment {
            media_id: m.media_id.clone(),
            name: m.name.clone(),
            ..Default::default()
        })
        .collect();
    let all = |prefix: &str| !files.is_empty() && files.iter().all(|m| m.mime.starts_with(prefix));
    let kind = if all("image/") {
        pb::MessageKind::Image
    } else if all("video/") {
        pb::MessageKind::Video
    } else if text.is_empty() {
        pb::MessageKind::File
    } else {
        pb::MessageKind::Text
    };
    pb::MessageBody {
        kind: kind as i32,
        text: text.into(),
        attachments,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: pb::UploadState, committed: u64) -> pb::UploadInfo {
        pb::UploadInfo {
            state: state as i32,
            committed,
            ..Default::default()
        }
    }

    #[test]
    fn an_unfinished_upload_goes_on_from_the_committed_offset() {
        assert_eq!(
            after_status(&status(pb::UploadState::Uploading, 4096)),
            Next::Send { offset: 4096 }
        );
        assert_eq!(after_status(&status(pb::UploadState::Processing, 10)), Next::Wait);
        let mut ready = status(pb::UploadState::Ready, 10);
        assert!(matches!(after_status(&ready), Next::Failed(e) if e.code == ErrorCode::Internal));
        ready.media = Some(pb::MediaInfo::default());
        assert!(matches!(after_status(&ready), Next::Ready(_)));
    }

    #[test]
    fn reports_wait_ask_again_or_stop_by_their_error() {
        let stored = pb::UploadProgress {
            state: pb::UploadState::Uploading as i32,
            committed: 10,
            ..Default::default()
        };
        assert_eq!(after_report(&stored), Next::Wait);
        let behind = pb::UploadProgress {
            error: ErrorCode::OffsetMismatch as i32,
            ..stored.clone()
        };
        assert_eq!(after_report(&behind), Next::AskAgain);
        let refused = pb::UploadProgress {
            error: ErrorCode::QuotaExceeded as i32,
            message: "quota".into(),
            ..stored
        };
        assert!(matches!(after_report(&refused), Next::Failed(e) if e.code == ErrorCode::QuotaExceeded));
    }

    fn pending(id: &str, size: u64, sha: &str) -> PendingUpload {
        PendingUpload {
            upload_id: id.into(),
            conversation_id: 7,
            name: "a.bin".into(),
            mime: "application/octet-stream".into(),
            size,
            sha256: sha.into(),
            source: None,
            paused: false,
        }
    }

    #[test]
    fn uploads_are_kept_until_finished_and_survive_a_restore() {
        let mut u = Uploads::default();
        u.started(pending("u1", 10, "aa"));
        u.started(pending("u2", 20, "bb"));
        assert!(u.pause("u1"));
        assert!(!u.pause("nope"));
        // A restart: the snapshot's list, in order, paused state and all.
        let mut u = Uploads::restore(u.list());
        assert_eq!(
            u.list().iter().map(|p| p.upload_id.as_str()).collect::<Vec<_>>(),
            ["u1", "u2"]
        );
        assert!(u.is_paused("u1") && !u.is_paused("u2"));
        assert_eq!(u.stop_reason("u1", true), Some(Stopped::Paused));
        assert_eq!(u.stop_reason("u2", true), None);
        assert_eq!(u.stop_reason("gone", true), Some(Stopped::Cancelled));
        assert_eq!(u.stop_reason("gone", false), None);
        assert_eq!(u.finished("u2").map(|p| p.size), Some(20));
        assert_eq!(u.finished("u2"), None);
        assert_eq!(u.list().len(), 1);
    }

    #[test]
    fn only_the_same_file_resumes_an_upload() {
        let mut u = Uploads::restore([pending("u1", 10, "aa")]);
        u.pause("u1");
        assert!(matches!(
            u.resume("u1", 11, "aa"),
            Err(ResumeError::Size { got: 11, want: 10, .. })
        ));
        assert!(matches!(u.resume("u1", 10, "ab"), Err(ResumeError::Hash { .. })));
        assert!(u.is_paused("u1"), "a refused file leaves it paused");
        assert_eq!(u.resume("u1", 10, "AA").unwrap().map(|p| p.paused), Some(false));
        assert!(!u.is_paused("u1"));
        assert_eq!(u.resume("unknown", 1, "x"), Ok(None));
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn a_message_of_files_is_named_by_what_they_all_are() {
        let file = |mime: &str| MediaInfo {
            media_id: "m".into(),
            mime: mime.into(),
            size: 1,
            name: "n".into(),
            width: 0,
            height: 0,
            blurhash: String::new(),
            thumbnails: vec![],
            encrypted: false,
            owner_user_id: 1,
            created_ms: 0,
            sha256: String::new(),
        };
        let kind = |text: &str, f: &[MediaInfo]| files_body(text, f).kind();
        assert_eq!(
            kind("", &[file("image/png"), file("image/jpeg")]),
            pb::MessageKind::Image
        );
        assert_eq!(kind("look", &[file("video/mp4")]), pb::MessageKind::Video);
        assert_eq!(
            kind("", &[file("image/png"), file("application/pdf")]),
            pb::MessageKind::File
        );
        assert_eq!(kind("see", &[file("application/pdf")]), pb::MessageKind::Text);
        assert_eq!(files_body("x", &[file("a/b")]).attachments[0].media_id, "m");
    }
}
