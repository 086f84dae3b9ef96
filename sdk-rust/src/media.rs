//! Files (PROTOCOL.md §11): uploads that survive cut streams and reconnects — each attempt
//! asks the server's committed offset and sends from there — and range downloads. The
//! requests and the upload header come from the client core (`ops`), the download's
//! assembly from its `Router`; here is only the waiting.
use std::time::Duration;

use bytes::Bytes;
use natter_protocol::client::model::MediaInfo;
use natter_protocol::client::ops;
use natter_protocol::client::upload::{self, Next};
use natter_protocol::pb;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::driver::UploadWatch;
use crate::{Client, ClientError, Command, ConversationId, RequestError};

/// How long an upload keeps trying (reconnects included) before it gives up; what was
/// stored stays, and [`Client::resume_upload`] goes on from there.
const UPLOAD_PATIENCE: Duration = Duration::from_millis(upload::PATIENCE_MS);

fn server_error(e: natter_protocol::ServerError) -> ClientError {
    ClientError::Request(RequestError::Server(e))
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
            // for them; while the server checks the file, or another connection's stream
            // finishes (a reconnect), look again soon.
            let patience = match upload::after_status(&st) {
                Next::Ready(m) => return Ok(m),
                Next::Failed(e) => return Err(server_error(e)),
                Next::Wait | Next::AskAgain => Duration::from_millis(upload::LOOK_AGAIN_MS),
                Next::Send { offset } => {
                    let from = offset.min(size) as usize;
                    let (done, sent) = oneshot::channel();
                    self.cmd
                        .send(Command::UploadStream(
                            upload_id.to_string(),
                            offset,
                            data.slice(from..),
                            done,
                        ))
                        .map_err(|_| ClientError::Closed)?;
                    if !matches!(sent.await, Ok(Ok(()))) {
                        // Not connected, or the stream was cut: let the client reconnect.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Duration::from_millis(upload::STREAM_REPORT_WAIT_MS)
                }
            };
            // Wait for the outcome: ready, rejected, or a refusal of the stream.
            let outcome = tokio::time::timeout(patience, async {
                while let Some(w) = reports.recv().await {
                    let p = match w {
                        UploadWatch::Progress(p) => *p,
                        // Reports for that stream are lost with the connection: look again.
                        UploadWatch::Disconnected => return Next::AskAgain,
                    };
                    progress(p.committed, size);
                    match upload::after_report(&p) {
                        Next::Wait => {}
                        next => return next,
                    }
                }
                Next::AskAgain
            })
            .await;
            match outcome {
                Ok(Next::Ready(m)) => return Ok(m),
                Ok(Next::Failed(e)) => return Err(server_error(e)),
                // A refusal that a fresh look can fix, a report lost to a reconnect, or
                // silence: ask where it stands.
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
        let files: Vec<MediaInfo> = files.iter().cloned().map(Into::into).collect();
        let body = upload::files_body(text, &files);
        self.send_with_id(conv, crate::new_message_id(), body).await
    }
}
