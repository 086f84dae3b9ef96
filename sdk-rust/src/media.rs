//! Files (PROTOCOL.md §11): uploads that survive cut streams, reconnects and app restarts —
//! each attempt asks the server's committed offset and sends from there; unfinished ones
//! are in the snapshot, and may be paused — and range downloads. The requests and the
//! upload header come from the client core (`ops`), the record of unfinished uploads from
//! its `upload::Uploads`, the download's assembly from its `Router`; here is only the
//! waiting.
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use natter_protocol::client::file_crypto::{self, FileKey};
use natter_protocol::client::model::{MediaInfo, PendingUpload};
use natter_protocol::client::ops;
use natter_protocol::client::upload::{self, Next, Stopped, Uploads};
use natter_protocol::pb;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::UploadWatch;
use crate::{Client, ClientError, Command, ConversationId, RequestError};

/// How long an upload keeps trying (reconnects included) before it gives up; what was
/// stored stays, and [`Client::resume_upload`] goes on from there.
const UPLOAD_PATIENCE: Duration = Duration::from_millis(upload::PATIENCE_MS);

fn server_error(e: natter_protocol::ServerError) -> ClientError {
    ClientError::Request(RequestError::Server(e))
}

/// The client's unfinished uploads (the core's record) and a signal that one of them was
/// paused or cancelled, which every running upload loop watches.
#[derive(Debug)]
pub(crate) struct UploadTable {
    uploads: Mutex<Uploads>,
    changed: watch::Sender<u64>,
}

impl UploadTable {
    pub(crate) fn restore(list: Vec<PendingUpload>) -> Self {
        UploadTable {
            uploads: Mutex::new(Uploads::restore(list)),
            changed: watch::channel(0).0,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Uploads) -> T) -> T {
        f(&mut self.uploads.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn list(&self) -> Vec<PendingUpload> {
        self.with(|u| u.list())
    }

    fn signal(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Why an upload loop stops before the file is ready, if it must: paused or cancelled.
fn stopped(table: &UploadTable, upload_id: &str, tracked: bool) -> Option<ClientError> {
    table.with(|u| u.stop_reason(upload_id, tracked)).map(|why| match why {
        Stopped::Paused => ClientError::UploadPaused(upload_id.into()),
        Stopped::Cancelled => ClientError::UploadCancelled(upload_id.into()),
    })
}

/// Resolves once `upload_id` is paused or cancelled (another upload's pause wakes it, and it
/// goes on waiting).
async fn until_stopped(
    table: &UploadTable,
    changed: &mut watch::Receiver<u64>,
    upload_id: &str,
    tracked: bool,
) -> ClientError {
    loop {
        if changed.changed().await.is_err() {
            // The table outlives every loop that borrows it.
            std::future::pending::<()>().await;
        }
        if let Some(e) = stopped(table, upload_id, tracked) {
            return e;
        }
    }
}

/// Reads a whole file for an upload: its bytes and its name.
fn read_file(path: &str) -> Result<(Bytes, String), ClientError> {
    let data = std::fs::read(path).map_err(|e| ClientError::File(format!("{path}: {e}")))?;
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    Ok((data.into(), name))
}

impl Client {
    /// Upload `data` as a file for `conv` and wait until the server has checked it (and
    /// made its thumbnails): its [`pb::MediaInfo`], to attach with
    /// [`Client::send_attachments`]. `progress` hears `(stored, size)` each time a piece is
    /// durable. A lost connection or a cut stream costs at most the piece in flight; until
    /// it is ready the upload is in [`Client::snapshot`], so after an app restart
    /// [`Client::resume_upload`] goes on with it.
    pub async fn upload(
        &self,
        conv: ConversationId,
        name: &str,
        mime: &str,
        data: Bytes,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<pb::MediaInfo, ClientError> {
        self.upload_from(conv, name, mime, data, None, progress).await
    }

    /// Upload an image and make it your avatar (PROTOCOL.md §5.15): anyone signed in may
    /// then read it and its thumbnail. Answers your new profile.
    pub async fn set_avatar(&self, name: &str, mime: &str, data: Bytes) -> Result<pb::UserProfile, ClientError> {
        let info = self.upload(ConversationId(0), name, mime, data, |_, _| {}).await?;
        self.set_profile(None, Some(&format!("media:{}", info.media_id)), None)
            .await
    }

    /// [`Client::upload`] of a file on disk, named by its file name. Its path is kept with
    /// the upload in the snapshot, so [`Client::resume_upload_file`] needs only the id.
    pub async fn upload_file(
        &self,
        conv: ConversationId,
        path: &str,
        mime: &str,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<pb::MediaInfo, ClientError> {
        let (data, name) = read_file(path)?;
        self.upload_from(conv, &name, mime, data, Some(path.to_string()), progress)
            .await
    }

    async fn upload_from(
        &self,
        conv: ConversationId,
        name: &str,
        mime: &str,
        data: Bytes,
        source: Option<String>,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<pb::MediaInfo, ClientError> {
        let sha = Sha256::digest(&data).to_vec();
        let info = self
            .call(ops::create_upload(conv, data.len() as u64, mime, name, sha.clone()))
            .await?;
        self.uploads.with(|u| {
            u.started(PendingUpload {
                upload_id: info.upload_id.clone(),
                conversation_id: conv.0,
                name: name.into(),
                mime: mime.into(),
                size: data.len() as u64,
                sha256: upload::hex(&sha),
                source,
                paused: false,
            })
        });
        self.drive(&info.upload_id, data, true, progress).await
    }

    /// Go on with an upload from wherever the server stands — after a pause, a give-up, or
    /// an app restart (the upload from the snapshot, and the same file: its size and
    /// SHA-256 are checked first, [`ClientError::Resume`]). An upload id this client does
    /// not know (the app kept it itself) is resumed too; the server checks the bytes.
    pub async fn resume_upload(
        &self,
        upload_id: &str,
        data: Bytes,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<pb::MediaInfo, ClientError> {
        let sha = upload::hex(&Sha256::digest(&data));
        let known = self
            .uploads
            .with(|u| u.resume(upload_id, data.len() as u64, &sha))?
            .is_some();
        self.drive(upload_id, data, known, progress).await
    }

    /// [`Client::resume_upload`] from the file the upload was started with
    /// ([`Client::upload_file`]'s path, in the snapshot).
    pub async fn resume_upload_file(
        &self,
        upload_id: &str,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<pb::MediaInfo, ClientError> {
        let path = self
            .uploads
            .with(|u| u.get(upload_id).and_then(|p| p.source.clone()))
            .ok_or_else(|| ClientError::File(format!("upload {upload_id} has no file path here")))?;
        let (data, _) = read_file(&path)?;
        self.resume_upload(upload_id, data, progress).await
    }

    /// Stop sending an upload: its stream is reset, its running `upload`/`resume_upload`
    /// ends with [`ClientError::UploadPaused`], and what the server stored stays (until the
    /// upload expires) for a later `resume_upload`. False if no such upload is unfinished
    /// here.
    pub fn pause_upload(&self, upload_id: &str) -> bool {
        let paused = self.uploads.with(|u| u.pause(upload_id));
        self.uploads.signal();
        paused
    }

    /// Stop an upload for good: the server deletes what it stored, and a running
    /// `upload`/`resume_upload` ends with [`ClientError::UploadCancelled`].
    pub async fn cancel_upload(&self, upload_id: &str) -> Result<(), ClientError> {
        self.uploads.with(|u| u.finished(upload_id));
        self.uploads.signal();
        self.call(ops::cancel_upload(upload_id)).await
    }

    /// Unfinished uploads (paused ones included), oldest first.
    pub fn pending_uploads(&self) -> Vec<PendingUpload> {
        self.uploads.list()
    }

    /// The upload loop: ask where it stands, send the rest, wait for the reports; until it
    /// is ready, refused for good, paused or cancelled (`tracked`: it is in the table, so
    /// leaving it means a cancel), or out of patience.
    async fn drive(
        &self,
        upload_id: &str,
        data: Bytes,
        tracked: bool,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<pb::MediaInfo, ClientError> {
        let result = self.drive_inner(upload_id, data, tracked, progress).await;
        match &result {
            Ok(_) => {
                self.uploads.with(|u| u.finished(upload_id));
            }
            Err(ClientError::Request(RequestError::Server(e))) if upload::permanent(e.code) => {
                self.uploads.with(|u| u.finished(upload_id));
            }
            Err(_) => {}
        }
        result
    }

    async fn drive_inner(
        &self,
        upload_id: &str,
        data: Bytes,
        tracked: bool,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<pb::MediaInfo, ClientError> {
        let (tx, mut reports) = mpsc::unbounded_channel();
        self.cmd
            .send(Command::WatchUpload(upload_id.to_string(), tx))
            .map_err(|_| ClientError::Closed)?;
        let mut changed = self.uploads.changed.subscribe();
        let size = data.len() as u64;
        let until = tokio::time::Instant::now() + UPLOAD_PATIENCE;
        loop {
            if let Some(e) = stopped(&self.uploads, upload_id, tracked) {
                return Err(e);
            }
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
                    // Dropped (a pause, a cancel, this future dropped): the stream is reset.
                    let (stop, stop_rx) = oneshot::channel::<()>();
                    self.cmd
                        .send(Command::UploadStream(
                            upload_id.to_string(),
                            offset,
                            data.slice(from..),
                            stop_rx,
                            done,
                        ))
                        .map_err(|_| ClientError::Closed)?;
                    // While the stream is written, its reports come in: progress, or a
                    // refusal that ends it. Leaving this arm drops `stop`, which resets it.
                    let mut sent = std::pin::pin!(sent);
                    let sent = loop {
                        tokio::select! {
                            r = &mut sent => break matches!(r, Ok(Ok(()))),
                            e = until_stopped(&self.uploads, &mut changed, upload_id, tracked) => return Err(e),
                            w = reports.recv() => match w {
                                Some(UploadWatch::Progress(p)) => {
                                    progress(p.committed, size);
                                    match upload::after_report(&p) {
                                        Next::Wait => {}
                                        Next::Ready(m) => return Ok(m),
                                        Next::Failed(e) => return Err(server_error(e)),
                                        Next::Send { .. } | Next::AskAgain => break false,
                                    }
                                }
                                Some(UploadWatch::Disconnected) | None => break false,
                            },
                        }
                    };
                    if !sent {
                        // Not connected, or the stream was cut: let the client reconnect.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    drop(stop);
                    Duration::from_millis(upload::STREAM_REPORT_WAIT_MS)
                }
            };
            // Wait for the outcome: ready, rejected, or a refusal of the stream.
            let reports = async {
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
            };
            let outcome = tokio::time::timeout(patience, async {
                tokio::select! {
                    next = reports => Ok(next),
                    e = until_stopped(&self.uploads, &mut changed, upload_id, tracked) => Err(e),
                }
            })
            .await;
            let outcome = match outcome {
                Ok(Err(e)) => return Err(e),
                Ok(Ok(next)) => Ok(next),
                Err(elapsed) => Err(elapsed),
            };
            match outcome {
                Ok(Next::Ready(m)) => return Ok(m),
                Ok(Next::Failed(e)) => return Err(server_error(e)),
                // A refusal that a fresh look can fix, a report lost to a reconnect, a
                // pause, or silence: ask where it stands.
                _ => continue,
            }
        }
    }

    /// Encrypt `data` on this device ([`file_crypto`]: a fresh key, chunks that verify
    /// on their own) and upload the result flagged `encrypted`, so the server stores and
    /// serves bytes it cannot read (no sniffing, no thumbnails; `mime` and `name` are as
    /// given — pass neutral ones to keep them from the server too). Returns the finished
    /// file and its key: the key goes with the message (inside the end-to-end envelope in
    /// an encrypted conversation), and [`Client::download_encrypted`] opens any range of
    /// it. An encrypted upload survives lost connections like any other, but is not kept
    /// in the snapshot: its key lives only in this call until it returns.
    pub async fn upload_encrypted(
        &self,
        conv: ConversationId,
        name: &str,
        mime: &str,
        data: &[u8],
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<(pb::MediaInfo, FileKey), ClientError> {
        let mut random = [0u8; FileKey::BYTES];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut random);
        let key = FileKey::from_random(random);
        let sealed = Bytes::from(file_crypto::encrypt(&key, data));
        let sha = Sha256::digest(&sealed).to_vec();
        let info = self
            .call(ops::create_encrypted_upload(conv, sealed.len() as u64, mime, name, sha))
            .await?;
        let media = self.drive(&info.upload_id, sealed, false, progress).await?;
        Ok((media, key))
    }

    /// Plaintext bytes `offset..offset + length` (`length` 0: to the end) of a file
    /// uploaded with [`Client::upload_encrypted`]: only the chunks that hold them are
    /// downloaded, and each is verified before a byte is returned.
    pub async fn download_encrypted(
        &self,
        media_id: &str,
        key: &FileKey,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let info = self.call(ops::get_media(media_id)).await?;
        let plain = file_crypto::plain_size(info.size)?;
        let range = file_crypto::encrypted_range(plain, offset, length)?;
        let sealed = self
            .download(
                media_id,
                pb::MediaVariant::Original,
                range.start,
                range.end - range.start,
            )
            .await?;
        Ok(file_crypto::decrypt_range(key, plain, offset, length, &sealed)?)
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

    /// Send a message with files uploaded by [`Client::upload_encrypted`] and optional
    /// text, each file's key in its attachment. Only for an encrypted conversation: the
    /// keys travel inside the end-to-end envelope, and the server refuses a file key
    /// anywhere else.
    pub async fn send_encrypted_files(
        &self,
        conv: ConversationId,
        text: &str,
        files: &[(pb::MediaInfo, FileKey)],
    ) -> Result<crate::SendAck, ClientError> {
        let infos: Vec<MediaInfo> = files.iter().map(|(m, _)| m.clone().into()).collect();
        let mut body = upload::files_body(text, &infos);
        for (a, (_, key)) in body.attachments.iter_mut().zip(files) {
            a.file_key = key.to_bytes().to_vec();
        }
        self.send_with_id(conv, crate::new_message_id(), body).await
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
