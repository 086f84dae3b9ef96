//! Files from the browser (PROTOCOL.md §11): `upload` (a `File`, `Blob` or bytes),
//! `download`, `mediaUrl` (a signed URL for `<img>`/`<video>`), `sendFiles`, `getMedia`,
//! `cancelUpload`. What to do after each answer is the client core's upload policy
//! ([`natter_protocol::client::upload`]); here is only the carrying: over WebTransport an
//! upload stream from the committed offset, over WebSocket (which has no client-opened
//! streams) tus `PATCH`es on the web endpoint. Either way a cut costs at most what was
//! in flight, and a page reload can go on with `resumeUpload(uploadId, file)`.
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use gloo_timers::future::TimeoutFuture;
use js_sys::{Array, Function, Promise, Reflect, Uint8Array};
use natter_protocol::client::file_crypto::{self, FileKey};
use natter_protocol::client::model::{MediaInfo, PendingUpload};
use natter_protocol::client::upload::{self, Next, Stopped};
use natter_protocol::client::{ops, DownloadError, DownloadSink};
use natter_protocol::pb;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{future_to_promise, JsFuture};
use web_sys::Blob;

use crate::client::{conv, get_str, js_error, random_id, to_js, Inner, NatterClient, Wake};
use crate::view::{tus_outcome, JsError, Transport, TusOutcome};

/// A download's bytes as they arrive, handed over whole at the end.
pub(crate) struct Collect {
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<Vec<u8>, DownloadError>>,
}

impl DownloadSink for Collect {
    fn data(&mut self, bytes: Bytes) {
        self.bytes.extend_from_slice(&bytes);
    }
    fn finish(self, result: Result<pb::DownloadOk, DownloadError>) {
        let _ = self.done.send(result.map(|_| self.bytes));
    }
}

/// The largest piece one tus `PATCH` carries: progress is reported per piece, and a cut
/// costs at most one.
const TUS_PIECE: f64 = 4.0 * 1024.0 * 1024.0;

fn failed(message: impl Into<String>) -> JsError {
    JsError::local("UPLOAD_FAILED", message)
}

/// The bytes to upload as a `Blob` (a `File` is one; bytes are wrapped).
fn as_blob(file: &JsValue) -> Result<Blob, JsError> {
    if let Some(b) = file.dyn_ref::<Blob>() {
        return Ok(b.clone());
    }
    if file.is_instance_of::<Uint8Array>() || file.is_instance_of::<js_sys::ArrayBuffer>() {
        return Blob::new_with_u8_array_sequence(&Array::of1(file))
            .map_err(|_| JsError::local("INVALID", "could not read the bytes"));
    }
    Err(JsError::local(
        "INVALID",
        "upload a File, a Blob, a Uint8Array or an ArrayBuffer",
    ))
}

fn slice(blob: &Blob, from: u64, to: u64) -> Result<Blob, JsError> {
    blob.slice_with_f64_and_f64(from as f64, to as f64)
        .map_err(|_| failed("could not slice the file"))
}

fn report(progress: &Option<Function>, stored: u64, size: u64) {
    if let Some(f) = progress {
        let _ = f.call2(&JsValue::NULL, &(stored as f64).into(), &(size as f64).into());
    }
}

/// Stops routing an upload's reports when its loop ends, however it ends.
struct Watch {
    inner: Rc<Inner>,
    upload_id: String,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.inner.uploads.borrow_mut().remove(&self.upload_id);
    }
}

/// Why an upload loop stops before the file is ready, if it must: paused, or cancelled
/// (`tracked`: it was in the record, so its leaving means a cancel).
fn stopped(inner: &Inner, upload_id: &str, tracked: bool) -> Option<JsError> {
    let why = inner.pending_uploads.borrow().stop_reason(upload_id, tracked)?;
    Some(match why {
        Stopped::Paused => JsError::local("UPLOAD_PAUSED", format!("upload {upload_id} is paused")),
        Stopped::Cancelled => JsError::local("UPLOAD_CANCELLED", format!("upload {upload_id} was cancelled")),
    })
}

/// Stop a running upload's stream or PATCH and wake its loop (which then sees why).
fn interrupt(inner: &Inner, upload_id: &str) {
    if let Some((reports, abort)) = inner.uploads.borrow().get(upload_id) {
        abort.abort();
        let _ = reports.unbounded_send(None);
    }
}

/// Carry an upload to its end, then forget it if it is ready or refused for good.
async fn drive(
    inner: Rc<Inner>,
    upload_id: String,
    blob: Blob,
    tracked: bool,
    progress: Option<Function>,
) -> Result<pb::MediaInfo, JsError> {
    let result = drive_inner(&inner, &upload_id, &blob, tracked, &progress).await;
    let done = match &result {
        Ok(_) => true,
        Err(e) => pb::ErrorCode::from_str_name(&e.code).is_some_and(upload::permanent),
    };
    if done {
        inner.pending_uploads.borrow_mut().finished(&upload_id);
    }
    result
}

/// Ask where the upload stands, send the rest, wait for the verdict; until it is ready,
/// refused for good, paused, cancelled, or out of patience.
async fn drive_inner(
    inner: &Rc<Inner>,
    upload_id: &str,
    blob: &Blob,
    tracked: bool,
    progress: &Option<Function>,
) -> Result<pb::MediaInfo, JsError> {
    let (tx, mut reports) = mpsc::unbounded();
    let abort = web_sys::AbortController::new().map_err(|_| failed("no AbortController"))?;
    let signal = abort.signal();
    inner.uploads.borrow_mut().insert(upload_id.to_string(), (tx, abort));
    let _watch = Watch {
        inner: inner.clone(),
        upload_id: upload_id.to_string(),
    };
    let size = blob.size() as u64;
    let until = inner.now().0 + upload::PATIENCE_MS;
    loop {
        if let Some(e) = stopped(inner, upload_id, tracked) {
            return Err(e);
        }
        if inner.now().0 > until {
            return Err(failed("gave up: no progress in time"));
        }
        let st = match inner.call(ops::get_upload(upload_id)).await {
            Ok(st) => st,
            Err(e) if e.code == "CONNECTION_LOST" || e.code == "TIMEOUT" => continue,
            Err(e) => return Err(e),
        };
        report(progress, st.committed, size);
        if let Some(e) = stopped(inner, upload_id, tracked) {
            return Err(e);
        }
        let wait_ms = match upload::after_status(&st) {
            Next::Ready(m) => return Ok(m),
            Next::Failed(e) => return Err((&e).into()),
            Next::Wait | Next::AskAgain => upload::LOOK_AGAIN_MS,
            Next::Send { offset } => match inner.transport.get() {
                Some(Transport::WebTransport) => {
                    let header = ops::upload_header(upload_id, offset).to_vec();
                    let (done, sent) = oneshot::channel();
                    inner.wake(Wake::UploadStream(
                        header,
                        slice(blob, offset, size)?,
                        signal.clone(),
                        done,
                    ));
                    // Reports come in while the stream is written: progress, or a refusal
                    // that ends it; a pause aborts the stream and wakes this loop.
                    let mut sent = sent.fuse();
                    let sent = loop {
                        futures::select! {
                            r = sent => break matches!(r, Ok(Ok(()))),
                            r = reports.next() => match r {
                                Some(Some(p)) => {
                                    report(progress, p.committed, size);
                                    match upload::after_report(&p) {
                                        Next::Wait => {}
                                        Next::Ready(m) => return Ok(m),
                                        Next::Failed(e) => return Err((&e).into()),
                                        Next::Send { .. } | Next::AskAgain => break false,
                                    }
                                }
                                Some(None) | None => break false,
                            },
                        }
                    };
                    if !sent {
                        // Not connected, the stream was cut, or paused: look again.
                        if stopped(inner, upload_id, tracked).is_none() {
                            TimeoutFuture::new(100).await;
                        }
                        continue;
                    }
                    upload::STREAM_REPORT_WAIT_MS
                }
                Some(Transport::WebSocket) => {
                    tus_send(inner, upload_id, blob, offset, size, progress, &signal).await?;
                    upload::LOOK_AGAIN_MS
                }
                None => {
                    TimeoutFuture::new(200).await;
                    continue;
                }
            },
        };
        // Wait for the verdict on the control stream, or look again after `wait_ms`.
        let mut timer = TimeoutFuture::new(wait_ms as u32).fuse();
        let next = loop {
            futures::select! {
                _ = timer => break Next::AskAgain,
                r = reports.next() => match r {
                    Some(Some(p)) => {
                        report(progress, p.committed, size);
                        match upload::after_report(&p) {
                            Next::Wait => {}
                            next => break next,
                        }
                    }
                    // The connection went (and the stream's reports with it), or a pause.
                    Some(None) | None => break Next::AskAgain,
                },
            }
        };
        match next {
            Next::Ready(m) => return Ok(m),
            Next::Failed(e) => return Err((&e).into()),
            _ => continue,
        }
    }
}

/// Send `offset..size` by tus `PATCH`es of at most [`TUS_PIECE`]. Returns once every
/// piece is stored, or when the server's offset is not ours (the loop asks again); a
/// refusal that stands is an error.
async fn tus_send(
    inner: &Inner,
    upload_id: &str,
    blob: &Blob,
    mut offset: u64,
    size: u64,
    progress: &Option<Function>,
    signal: &web_sys::AbortSignal,
) -> Result<(), JsError> {
    let token = inner
        .session
        .borrow()
        .access_token()
        .map(String::from)
        .ok_or_else(|| JsError::local("UNAUTHENTICATED", "log in before uploading"))?;
    let url = format!("{}/tus/{upload_id}", inner.config.server.trim_end_matches('/'));
    while offset < size {
        let end = (offset as f64 + TUS_PIECE).min(size as f64) as u64;
        let headers = web_sys::Headers::new().map_err(|_| failed("no Headers"))?;
        for (k, v) in [
            ("Authorization", format!("Bearer {token}")),
            ("Tus-Resumable", "1.0.0".into()),
            ("Upload-Offset", offset.to_string()),
            ("Content-Type", "application/offset+octet-stream".into()),
        ] {
            headers.set(k, &v).map_err(|_| failed("bad header"))?;
        }
        let init = web_sys::RequestInit::new();
        init.set_method("PATCH");
        init.set_headers(&headers);
        init.set_body(&slice(blob, offset, end)?.into());
        init.set_signal(Some(signal));
        let response = match fetch(&url, &init).await {
            Ok(r) => r,
            // The network, or a pause: ask where it stands and go on from there.
            Err(_) => return Ok(()),
        };
        let h = response.headers();
        let text = match response.text() {
            Ok(p) => JsFuture::from(p)
                .await
                .ok()
                .and_then(|t| t.as_string())
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        let outcome = tus_outcome(
            response.status(),
            h.get("upload-offset").ok().flatten().as_deref(),
            h.get("natter-error").ok().flatten().as_deref(),
            &text,
        );
        match outcome {
            TusOutcome::Stored(o) => {
                offset = o;
                report(progress, offset, size);
            }
            TusOutcome::AskAgain => return Ok(()),
            TusOutcome::Failed(e) => return Err(e),
        }
    }
    Ok(())
}

async fn fetch(url: &str, init: &web_sys::RequestInit) -> Result<web_sys::Response, JsValue> {
    let global = js_sys::global();
    let fetch: Function = Reflect::get(&global, &"fetch".into())?.dyn_into()?;
    let promise: Promise = fetch.call2(&global, &url.into(), init)?.dyn_into()?;
    JsFuture::from(promise).await?.dyn_into()
}

/// Bytes `offset..offset + length` (`length` 0: to the end) of a file or thumbnail, over
/// the connection.
async fn fetch_range(
    inner: &Rc<Inner>,
    media_id: &str,
    v: pb::MediaVariant,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, JsError> {
    let (done, rx) = oneshot::channel();
    {
        let now = inner.now();
        let mut session = inner.session.borrow_mut();
        let sink = Collect {
            bytes: Vec::new(),
            done,
        };
        inner
            .pending
            .borrow_mut()
            .download(&mut session, now, ops::download(media_id, v, offset, length), sink);
    }
    inner.wake(Wake::Flush);
    match rx.await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(DownloadError::Request(e))) => Err((&e).into()),
        Ok(Err(e @ DownloadError::Cut { .. })) => Err(JsError::local("CONNECTION_LOST", e.to_string())),
        Err(_) => Err(JsError::local("CLOSED", "the client is closed")),
    }
}

fn decrypt_failed(e: file_crypto::FileCryptoError) -> JsError {
    JsError::local("DECRYPT_FAILED", e.to_string())
}

/// Key material from the page's CSPRNG (`crypto.getRandomValues`); never a weaker source.
fn secure_random() -> Result<[u8; FileKey::BYTES], JsError> {
    let mut bytes = [0u8; FileKey::BYTES];
    Reflect::get(&js_sys::global(), &"crypto".into())
        .ok()
        .and_then(|c| c.dyn_into::<web_sys::Crypto>().ok())
        .and_then(|c| c.get_random_values_with_u8_array(&mut bytes).ok())
        .ok_or_else(|| JsError::local("UNSUPPORTED", "no crypto.getRandomValues for a file key"))?;
    Ok(bytes)
}

fn variant(name: Option<String>) -> Result<pb::MediaVariant, JsError> {
    Ok(match name.as_deref().unwrap_or("original") {
        "original" => pb::MediaVariant::Original,
        "thumb320" => pb::MediaVariant::Thumb320,
        "thumb800" => pb::MediaVariant::Thumb800,
        other => {
            return Err(JsError::local(
                "INVALID",
                format!("variant is original, thumb320 or thumb800, not {other:?}"),
            ))
        }
    })
}

fn reject(e: JsError) -> Promise {
    Promise::reject(&js_error(&e))
}

#[wasm_bindgen]
impl NatterClient {
    /// Upload a `File`, `Blob` or bytes for a conversation; resolves to its `MediaInfo`
    /// once the server has checked it (and made thumbnails of an image). Options: `name`,
    /// `mime`, `onProgress(stored, size)`. Survives reconnects; keep the `uploadId` from
    /// `uploadProgress` events to go on after a reload with `resumeUpload`.
    pub fn upload(&self, conversation_id: f64, file: JsValue, options: JsValue) -> Promise {
        let blob = match as_blob(&file) {
            Ok(b) => b,
            Err(e) => return reject(e),
        };
        let name = get_str(&options, "name")
            .or_else(|| file.dyn_ref::<web_sys::File>().map(|f| f.name()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "file".into());
        let mime = get_str(&options, "mime")
            .or_else(|| Some(blob.type_()))
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "application/octet-stream".into());
        let progress = on_progress(&options);
        let inner = self.inner().clone();
        let conversation = conv(conversation_id);
        future_to_promise(async move {
            let size = blob.size() as u64;
            let info = inner
                .call(ops::create_upload(conversation, size, &mime, &name, Vec::new()))
                .await
                .map_err(|e| js_error(&e))?;
            inner.pending_uploads.borrow_mut().started(PendingUpload {
                upload_id: info.upload_id.clone(),
                conversation_id: conversation.0,
                name,
                mime,
                size,
                // Hashing a large File in the page would cost a full read first; a resumed
                // file is checked by its size here and by the server's checks of the bytes.
                sha256: String::new(),
                source: None,
                paused: false,
            });
            let media = drive(inner, info.upload_id, blob, true, progress)
                .await
                .map_err(|e| js_error(&e))?;
            Ok(to_js(&MediaInfo::from(media)))
        })
    }

    /// Go on with an upload from wherever the server stands (after a page reload: the
    /// same `uploadId` and the same file). Options: `onProgress`.
    #[wasm_bindgen(js_name = resumeUpload)]
    pub fn resume_upload(&self, upload_id: String, file: JsValue, options: JsValue) -> Promise {
        let blob = match as_blob(&file) {
            Ok(b) => b,
            Err(e) => return reject(e),
        };
        let progress = on_progress(&options);
        let inner = self.inner().clone();
        let known = match inner
            .pending_uploads
            .borrow_mut()
            .resume(&upload_id, blob.size() as u64, "")
        {
            Ok(p) => p.is_some(),
            Err(e) => return reject(JsError::local("NOT_THE_SAME_FILE", e.to_string())),
        };
        future_to_promise(async move {
            let media = drive(inner, upload_id, blob, known, progress)
                .await
                .map_err(|e| js_error(&e))?;
            Ok(to_js(&MediaInfo::from(media)))
        })
    }

    /// Stop sending an upload: its stream or PATCH is aborted, its running `upload` /
    /// `resumeUpload` rejects with code `UPLOAD_PAUSED`, and what the server stored stays
    /// (it is in `snapshot().pendingUploads`) for a later `resumeUpload`. False if no such
    /// upload is unfinished here.
    #[wasm_bindgen(js_name = pauseUpload)]
    pub fn pause_upload(&self, upload_id: String) -> bool {
        let inner = self.inner();
        let paused = inner.pending_uploads.borrow_mut().pause(&upload_id);
        if paused {
            interrupt(inner, &upload_id);
        }
        paused
    }

    /// Unfinished uploads (paused ones included), oldest first: `PendingUpload[]`.
    #[wasm_bindgen(js_name = pendingUploads)]
    pub fn pending_uploads(&self) -> JsValue {
        to_js(&self.inner().pending_uploads.borrow().list())
    }

    /// Stop an upload and delete what it stored; its running `upload` / `resumeUpload`
    /// rejects with code `UPLOAD_CANCELLED`.
    #[wasm_bindgen(js_name = cancelUpload)]
    pub fn cancel_upload(&self, upload_id: String) -> Promise {
        let inner = self.inner().clone();
        inner.pending_uploads.borrow_mut().finished(&upload_id);
        interrupt(&inner, &upload_id);
        future_to_promise(async move {
            inner
                .call(ops::cancel_upload(&upload_id))
                .await
                .map_err(|e| js_error(&e))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// A finished file's `MediaInfo` (members of a conversation that references it).
    #[wasm_bindgen(js_name = getMedia)]
    pub fn get_media(&self, media_id: String) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let m = inner.call(ops::get_media(&media_id)).await.map_err(|e| js_error(&e))?;
            Ok(to_js(&MediaInfo::from(m)))
        })
    }

    /// Bytes of a file or thumbnail over the connection: options `variant` ("original",
    /// "thumb320", "thumb800"), `offset`, `length` (0 or absent: to the end). Resolves to
    /// a `Uint8Array`.
    pub fn download(&self, media_id: String, options: JsValue) -> Promise {
        let v = match variant(get_str(&options, "variant")) {
            Ok(v) => v,
            Err(e) => return reject(e),
        };
        let offset = crate::client::get_num(&options, "offset").unwrap_or(0.0) as u64;
        let length = crate::client::get_num(&options, "length").unwrap_or(0.0) as u64;
        let inner = self.inner().clone();
        future_to_promise(async move {
            let bytes = fetch_range(&inner, &media_id, v, offset, length)
                .await
                .map_err(|e| js_error(&e))?;
            Ok(Uint8Array::from(bytes.as_slice()).into())
        })
    }

    /// Encrypt a `File`, `Blob` or bytes in the page (a fresh key; 64 KiB chunks that
    /// verify on their own) and upload the sealed bytes: the server cannot read them and
    /// makes no thumbnails. Options: `name`, `mime` (sent as given: pass neutral ones to keep
    /// them from the server), `onProgress`. Resolves to `{ media, key }`; the key (hex) goes
    /// with the message, and `downloadEncrypted` opens any range with it.
    #[wasm_bindgen(js_name = uploadEncrypted)]
    pub fn upload_encrypted(&self, conversation_id: f64, file: JsValue, options: JsValue) -> Promise {
        let blob = match as_blob(&file) {
            Ok(b) => b,
            Err(e) => return reject(e),
        };
        let name = get_str(&options, "name").unwrap_or_else(|| "file".into());
        let mime = get_str(&options, "mime").unwrap_or_else(|| "application/octet-stream".into());
        let progress = on_progress(&options);
        let inner = self.inner().clone();
        let conversation = conv(conversation_id);
        future_to_promise(async move {
            let key = FileKey::from_random(secure_random().map_err(|e| js_error(&e))?);
            let plain = JsFuture::from(blob.array_buffer())
                .await
                .map_err(|_| js_error(&failed("could not read the file")))?;
            let sealed = file_crypto::encrypt(&key, &Uint8Array::new(&plain).to_vec());
            let size = sealed.len() as u64;
            let sealed = as_blob(&Uint8Array::from(sealed.as_slice()).into()).map_err(|e| js_error(&e))?;
            let info = inner
                .call(ops::create_encrypted_upload(
                    conversation,
                    size,
                    &mime,
                    &name,
                    Vec::new(),
                ))
                .await
                .map_err(|e| js_error(&e))?;
            let media = drive(inner, info.upload_id, sealed, false, progress)
                .await
                .map_err(|e| js_error(&e))?;
            #[derive(serde::Serialize)]
            struct Encrypted {
                media: MediaInfo,
                key: String,
            }
            Ok(to_js(&Encrypted {
                media: MediaInfo::from(media),
                key: key.to_hex(),
            }))
        })
    }

    /// Plaintext bytes of an encrypted file, opened with its key (hex): options `offset`,
    /// `length` (0: to the end). Only the chunks that hold them are downloaded, each
    /// verified; rejects with `DECRYPT_FAILED` if one does not, `INVALID` for a bad key.
    #[wasm_bindgen(js_name = downloadEncrypted)]
    pub fn download_encrypted(&self, media_id: String, key: String, options: JsValue) -> Promise {
        let key = match FileKey::from_hex(&key) {
            Ok(k) => k,
            Err(e) => return reject(JsError::local("INVALID", e.to_string())),
        };
        let offset = crate::client::get_num(&options, "offset").unwrap_or(0.0) as u64;
        let length = crate::client::get_num(&options, "length").unwrap_or(0.0) as u64;
        let inner = self.inner().clone();
        future_to_promise(async move {
            let opened = async {
                let info = inner.call(ops::get_media(&media_id)).await?;
                let plain = file_crypto::plain_size(info.size).map_err(decrypt_failed)?;
                let range = file_crypto::encrypted_range(plain, offset, length).map_err(decrypt_failed)?;
                let sealed = fetch_range(
                    &inner,
                    &media_id,
                    pb::MediaVariant::Original,
                    range.start,
                    range.end - range.start,
                )
                .await?;
                file_crypto::decrypt_range(&key, plain, offset, length, &sealed).map_err(decrypt_failed)
            };
            let bytes = opened.await.map_err(|e| js_error(&e))?;
            Ok(Uint8Array::from(bytes.as_slice()).into())
        })
    }

    /// A signed URL of a file or thumbnail for `<img src>`, `<video src>` or a download
    /// link (HTTP Range works, so video seeks); valid for a few minutes (`expiresMs`).
    /// Resolves to `{ url, expiresMs }`.
    #[wasm_bindgen(js_name = mediaUrl)]
    pub fn media_url(&self, media_id: String, variant_name: Option<String>) -> Promise {
        let v = match variant(variant_name) {
            Ok(v) => v,
            Err(e) => return reject(e),
        };
        let inner = self.inner().clone();
        future_to_promise(async move {
            let ok = inner
                .call(ops::media_url(&media_id, v))
                .await
                .map_err(|e| js_error(&e))?;
            let o = js_sys::Object::new();
            let url = format!("{}{}", inner.config.server.trim_end_matches('/'), ok.path);
            let _ = Reflect::set(&o, &"url".into(), &url.into());
            let _ = Reflect::set(&o, &"expiresMs".into(), &(ok.expires_ms as f64).into());
            Ok(o.into())
        })
    }

    /// Send a message with finished uploads (`MediaInfo`s from `upload`) and optional
    /// text; resolves like `send`.
    #[wasm_bindgen(js_name = sendFiles)]
    pub fn send_files(&self, conversation_id: f64, text: String, files: JsValue) -> Promise {
        let files: Vec<MediaInfo> = match serde_wasm_bindgen::from_value(files) {
            Ok(f) => f,
            Err(e) => {
                return reject(JsError::local(
                    "INVALID",
                    format!("files must be MediaInfo objects from upload(): {e}"),
                ))
            }
        };
        let body = upload::files_body(&text, &files);
        crate::client::send_body(self.inner(), conv(conversation_id), random_id(), body)
    }
}

fn on_progress(options: &JsValue) -> Option<Function> {
    Reflect::get(options, &"onProgress".into())
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
}

/// A BlurHash as `width`×`height` RGBA pixels (a `Uint8ClampedArray` for `ImageData`):
/// the placeholder to draw while an image's thumbnail loads.
#[wasm_bindgen(js_name = decodeBlurhash)]
pub fn decode_blurhash(hash: &str, width: u32, height: u32) -> Result<js_sys::Uint8ClampedArray, JsValue> {
    let px = crate::view::blurhash_rgba(hash, width, height).map_err(|e| js_error(&e))?;
    Ok(js_sys::Uint8ClampedArray::from(px.as_slice()))
}
