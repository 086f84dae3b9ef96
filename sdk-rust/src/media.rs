//! Files (PROTOCOL.md §11): uploads that survive cut streams and reconnects — each attempt
//! asks the server's committed offset and sends from there — and range downloads. The
//! requests and the upload header come from the client core (`ops`), the download's
//! assembly from its `Router`; here is only the waiting.
use std::time::Duration;

use bytes::Bytes;
use natter_protocol::client::ops;
use natter_protocol::pb::{self, ErrorCode};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::driver::UploadWatch;
use crate::{Client, ClientError, Command, ConversationId, RequestError};

/// How long an upload keeps trying (reconnects included) before it gives up; what was
/// stored stays, and [`Client::resume_upload`] goes on from there.
const UPLOAD_PATIENCE: Duration = Duration::from_secs(120);

/// Refusals that no retry can change.
fn permanent(code: ErrorCode) -> bool {
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

fn server_error(code: ErrorCode, message: String) -> ClientError {
    ClientError::Request(RequestError::Server(natter_protocol::ServerError::new(code, message)))
}

impl Client {
    /// Upload `data` as a file for `conv` and wait until the server has checked it (and
    /// made its thumbnails): its [`pb::MediaInfo`], to attach with
    /// [`Client::send_attachments`]. `progress` hears `(stored, size)` each time a piece is
    /// durable. A lost connection or a cut stream costs at most the piece in flight.
    pub async fn upload(
        &self,
        conv: ConversationId,
        name: &str,
        mime: &str,
        data: Bytes,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<pb::MediaInfo, ClientError> {
        let sha = Sha256::digest(&data).to_vec();
        let info = self
            .call(ops::create_upload(conv, data.len() as u64, mime, name, sha))
            .await?;
        self.resume_upload(&info.upload_id, data, progress).await
    }

    /// Go on with an upload from wherever the server stands (after a crash of the app, say:
    /// keep the upload id and the file).
    pub async fn resume_upload(
        &self,
        upload_id: &str,
        data: Bytes,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<pb::MediaInfo, ClientError> {
        let (tx, mut reports) = mpsc::unbounded_channel();
        self.cmd
            .send(Command::WatchUpload(upload_id.to_string(), tx))
            .map_err(|_| ClientError::Closed)?;
        let size = data.len() as u64;
        let until = tokio::time::Instant::now() + UPLOAD_PATIENCE;
        loop {
            if tokio::time::Instant::now() > until {
                return Err(ClientError::Upload("gave up: no progress in time".into()));
            }
            let st = match self.call(ops::get_upload(upload_id)).await {
                Ok(st) => st,
                Err(ClientError::Request(RequestError::ConnectionLost | RequestError::Timeout)) => continue,
                Err(e) => return Err(e),
            };
            progress(st.committed, size);
            // Reports come on the connection that carried the stream: after one of ours, wait
            // for them; while another connection's stream finishes (a reconnect), look again
            // soon.
            let mut patience = Duration::from_millis(500);
            match st.state() {
                pb::UploadState::Ready => return st.media.ok_or(ClientError::Unexpected),
                pb::UploadState::Rejected => return Err(server_error(st.error(), "upload rejected".into())),
                pb::UploadState::Processing => {}
                _ => {
                    patience = Duration::from_secs(30);
                    let from = st.committed.min(size) as usize;
                    let (done, sent) = oneshot::channel();
                    let rest = data.slice(from..);
                    self.cmd
                        .send(Command::UploadStream(upload_id.to_string(), st.committed, rest, done))
                        .map_err(|_| ClientError::Closed)?;
                    if !matches!(sent.await, Ok(Ok(()))) {
                        // Not connected, or the stream was cut: let the client reconnect.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            // Wait for the outcome: ready, rejected, or a refusal of the stream.
            let outcome = tokio::time::timeout(patience, async {
                while let Some(w) = reports.recv().await {
                    let p = match w {
                        UploadWatch::Progress(p) => *p,
                        // Reports for that stream are lost with the connection: look again.
                        UploadWatch::Disconnected => return None,
                    };
                    progress(p.committed, size);
                    if p.error != 0 {
                        return Some(p);
                    }
                    if matches!(p.state(), pb::UploadState::Ready | pb::UploadState::Rejected) {
                        return Some(p);
                    }
                }
                None
            })
            .await;
            match outcome {
                Ok(Some(p)) if p.state() == pb::UploadState::Ready => {
                    return p.media.ok_or(ClientError::Unexpected);
                }
                Ok(Some(p)) if p.error != 0 && permanent(p.error()) => {
                    return Err(server_error(p.error(), p.message));
                }
                Ok(Some(p)) if p.state() == pb::UploadState::Rejected => {
                    return Err(server_error(p.error(), p.message));
                }
                // A refusal that a fresh look can fix (offset, a concurrent stream), a
                // report lost to a reconnect, or silence: ask where it stands.
                _ => continue,
            }
        }
    }

    /// Bytes `offset..offset + length` (`length` 0: to the end) of a file or one of its
    /// thumbnails.
    pub async fn download(
        &self,
        media_id: &str,
        variant: pb::MediaVariant,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let waiter = crate::driver::DownloadWaiter::new(tx);
        self.cmd
            .send(Command::Download(
                ops::download(media_id, variant, offset, length),
                waiter,
            ))
            .map_err(|_| ClientError::Closed)?;
        let (_, bytes) = rx.await.map_err(|_| ClientError::Closed)??;
        Ok(bytes)
    }

    /// A whole file, resumed across lost connections from the last byte received.
    pub async fn download_all(&self, media_id: &str, variant: pb::MediaVariant) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        let until = tokio::time::Instant::now() + UPLOAD_PATIENCE;
        loop {
            match self.download(media_id, variant, out.len() as u64, 0).await {
                Ok(b) => {
                    out.extend_from_slice(&b);
                    return Ok(out);
                }
                Err(ClientError::Download(natter_protocol::client::DownloadError::Cut { .. }))
                | Err(ClientError::Download(natter_protocol::client::DownloadError::Request(
                    RequestError::ConnectionLost,
                ))) if tokio::time::Instant::now() < until => {
                    // The bytes that arrived before the cut are not handed out by `download`;
                    // start again from what we have.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Send a message with files (finished uploads) and optional text.
    pub async fn send_attachments(
        &self,
        conv: ConversationId,
        text: &str,
        files: &[pb::MediaInfo],
    ) -> Result<crate::SendAck, ClientError> {
        let attachments = files
            .iter()
            .map(|m| pb::Attachment {
                media_id: m.media_id.clone(),
                name: m.name.clone(),
                ..Default::default()
            })
            .collect();
        let kind = if !files.is_empty() && files.iter().all(|m| m.mime.starts_with("image/")) {
            pb::MessageKind::Image
        } else if !files.is_empty() && files.iter().all(|m| m.mime.starts_with("video/")) {
            pb::MessageKind::Video
        } else if text.is_empty() {
            pb::MessageKind::File
        } else {
            pb::MessageKind::Text
        };
        let body = pb::MessageBody {
            kind: kind as i32,
            text: text.into(),
            attachments,
            ..Default::default()
        };
        self.send_with_id(conv, crate::new_message_id(), body).await
    }
}
