//! A connection's media streams (PROTOCOL.md §11.2, §11.4): client-opened upload streams —
//! an `UploadHeader` frame, then raw bytes until FIN, each stored piece reported on the
//! control stream — and server-opened download streams — a `StreamHeader` naming the
//! `Download` request, then raw bytes until FIN.
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use natter_protocol::codec::encode_frame;
use natter_protocol::pb::{self, frame::Kind, response::Result as Res, ErrorCode};
use natter_protocol::ServerError;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{response_frame, Shared, Transport, UploadRecv};
use crate::api;
use crate::conversation::Actor;

/// Largest `UploadHeader` frame.
const MAX_HEADER_BYTES: u64 = 1024;

fn signal(p: pb::UploadProgress) -> Bytes {
    encode_frame(&pb::Frame {
        kind: Some(Kind::Signal(pb::Signal {
            kind: Some(pb::signal::Kind::Upload(p)),
        })),
    })
}

/// Accept the client's upload streams for as long as the connection lasts; each is served
/// by a task of its own.
pub(super) async fn read_uploads<T: Transport>(
    shared: Arc<Shared>,
    transport: Arc<T>,
    actor: Arc<std::sync::OnceLock<Actor>>,
    out: mpsc::WeakSender<Bytes>,
) {
    while let Some(stream) = transport.accept_upload().await {
        let Some(actor) = actor.get().cloned() else {
            stream.stop(ErrorCode::HandshakeRequired);
            continue;
        };
        let Some(out) = out.upgrade() else { return };
        tokio::spawn(upload(shared.clone(), actor, out, stream));
    }
}

/// Read the varint-prefixed header frame, byte by byte (what follows it is file bytes).
async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<pb::UploadHeader, ServerError> {
    let bad = |m: &str| ServerError::new(ErrorCode::MalformedFrame, m);
    let mut len = 0u64;
    for i in 0..10 {
        let b = r
            .read_u8()
            .await
            .map_err(|_| bad("upload stream ended before its header"))?;
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
        if i == 9 {
            return Err(bad("bad varint"));
        }
    }
    if len > MAX_HEADER_BYTES {
        return Err(ServerError::new(ErrorCode::FrameTooLarge, "upload header too large"));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)
        .await
        .map_err(|_| bad("upload stream ended inside its header"))?;
    match pb::Frame::decode(&buf[..]) {
        Ok(pb::Frame {
            kind: Some(Kind::UploadHeader(h)),
        }) => Ok(h),
        _ => Err(bad("an upload stream starts with an UploadHeader frame")),
    }
}

async fn upload<U: UploadRecv>(shared: Arc<Shared>, actor: Actor, out: mpsc::Sender<Bytes>, mut stream: U) {
    let header = match read_header(&mut stream).await {
        Ok(h) => h,
        Err(e) => {
            let _ = out.try_send(signal(pb::UploadProgress {
                error: e.code as i32,
                message: e.message,
                ..Default::default()
            }));
            return stream.stop(e.code);
        }
    };
    let report = |p: pb::UploadProgress| {
        // Progress is advisory (the committed offset can always be asked for): a full
        // control queue drops a report rather than stall the upload.
        let _ = out.try_send(signal(p));
    };
    let media = &shared.ctx.media;
    if let Err(e) = media
        .write(actor.user, &header.upload_id, header.offset, &mut stream, &report)
        .await
    {
        stream.stop(e.code);
    }
}

/// Answer a `Download` with `DownloadOk`, then open a download stream with the bytes.
pub(super) async fn download<T: Transport>(
    shared: Arc<Shared>,
    transport: Arc<T>,
    out: mpsc::Sender<Bytes>,
    actor: Actor,
    id: u64,
    d: pb::Download,
    _permit: OwnedSemaphorePermit,
) {
    let ctx = &shared.ctx;
    let arrived = std::time::Instant::now();
    let checked = async {
        let rec = api::media::readable(ctx, actor.user, &d.media_id).await?;
        let (start, end, total, mime) = api::media::range(&rec, &d)?;
        Ok::<_, ServerError>((rec, start, end, total, mime))
    }
    .await;
    let (rec, start, end, total, mime) = match checked {
        Ok(v) => v,
        Err(e) => {
            ctx.metrics.request("download", e.code.as_str_name(), arrived.elapsed());
            let _ = out.send(response_frame(id, Err(e))).await;
            return;
        }
    };
    ctx.metrics.request("download", "OK", arrived.elapsed());
    let ok = Res::Download(pb::DownloadOk {
        media_id: d.media_id.clone(),
        offset: start,
        length: end - start,
        total,
        mime,
    });
    if out.send(response_frame(id, Ok(ok))).await.is_err() {
        return;
    }
    let variant = pb::MediaVariant::try_from(d.variant).unwrap_or(pb::MediaVariant::Original);
    let Ok(mut stream) = transport.open_stream().await else {
        return;
    };
    let header = pb::Frame {
        kind: Some(Kind::StreamHeader(pb::StreamHeader {
            conversation_id: 0,
            download_request_id: id,
        })),
    };
    if stream.write_all(&encode_frame(&header)).await.is_err() {
        return;
    }
    let mut bytes = ctx.media.range_stream(&rec, variant, start, end);
    while let Some(chunk) = bytes.next().await {
        match chunk {
            Ok(b) => {
                if stream.write_all(&b).await.is_err() {
                    return;
                }
            }
            // The stream ends short of `length`: the client sees a download cut off and
            // asks again for the rest.
            Err(e) => return tracing::warn!(error = %e, "download failed"),
        }
    }
    let _ = stream.shutdown().await;
}
