//! The WebSocket transport (subprotocol `natter.v1`, PROTOCOL.md §3.6): one WebSocket
//! carries the control stream, the delivery streams and datagrams, each binary message
//! tagged with its channel by [`natter_protocol::wsmux`]. Like the QUIC adapter it only
//! moves bytes: a reader task splits incoming messages into the control byte stream and
//! datagrams, one writer task owns the socket's sending half, and every stream writes
//! through a bounded queue to it (so a client that stops reading pushes back on the
//! connection driver exactly as a stalled QUIC stream does).
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use natter_protocol::limits;
use natter_protocol::pb::ErrorCode;
use natter_protocol::wsmux::{self, Channel};
use tokio::sync::{mpsc, oneshot};

use crate::conn::{self, Shared, Transport, Violation};
use crate::transport::chanwrite::ChannelWriter;

/// WebSocket close codes for natter errors: 4000 + the `ErrorCode` number.
pub const CLOSE_CODE_BASE: u16 = 4000;

/// Messages queued for the writer task.
const OUT_QUEUE: usize = 256;
/// Datagrams queued for the connection driver; more are dropped (they are ephemeral).
const DATAGRAM_QUEUE: usize = 64;

/// One WebSocket as a [`Transport`].
#[derive(Debug)]
pub struct WsTransport {
    out: mpsc::Sender<Bytes>,
    close: Mutex<Option<oneshot::Sender<(ErrorCode, String)>>>,
    next_stream: AtomicU64,
    datagrams: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    ip: IpAddr,
}

/// A server→client byte stream on one channel of the WebSocket.
pub type WsStream = ChannelWriter<Bytes>;

fn channel_writer(out: mpsc::Sender<Bytes>, channel: Channel) -> WsStream {
    // An empty payload finishes a delivery stream.
    let fin = matches!(channel, Channel::Stream(_)).then(|| wsmux::encode(channel, b""));
    ChannelWriter::new(out, move |buf| wsmux::encode(channel, buf), fin)
}

#[async_trait]
impl Transport for WsTransport {
    type Stream = WsStream;
    type Upload = crate::conn::NoUpload;
    const KIND: &'static str = "websocket";

    /// Uploads go over HTTP (tus) beside this transport (PROTOCOL.md §11.3).
    async fn accept_upload(&self) -> Option<crate::conn::NoUpload> {
        None
    }

    async fn open_stream(&self) -> io::Result<WsStream> {
        let n = self.next_stream.fetch_add(1, Ordering::Relaxed);
        Ok(channel_writer(self.out.clone(), Channel::Stream(n)))
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        if let Some(tx) = self.close.lock().expect("close lock").take() {
            let _ = tx.send((code, reason.to_string()));
        }
    }

    fn send_datagram(&self, data: Bytes) -> bool {
        self.out.try_send(wsmux::encode(Channel::Datagram, &data)).is_ok()
    }

    async fn read_datagram(&self) -> Option<Bytes> {
        self.datagrams.lock().await.recv().await
    }

    fn peer_ip(&self) -> IpAddr {
        self.ip
    }
}

/// Serve one upgraded WebSocket until it closes.
pub async fn serve(shared: Arc<Shared>, socket: WebSocket, ip: IpAddr) {
    let (sink, stream) = socket.split();
    let (out, out_rx) = mpsc::channel(OUT_QUEUE);
    let (close_tx, close_rx) = oneshot::channel();
    let (control_tx, control_rx) = mpsc::channel::<io::Result<Bytes>>(64);
    let (dgram_tx, dgram_rx) = mpsc::channel(DATAGRAM_QUEUE);
    let transport = Arc::new(WsTransport {
        out: out.clone(),
        close: Mutex::new(Some(close_tx)),
        next_stream: AtomicU64::new(1),
        datagrams: tokio::sync::Mutex::new(dgram_rx),
        ip,
    });
    let writer = tokio::spawn(write_loop(sink, out_rx, close_rx));
    // Like QUIC's idle timeout (PROTOCOL.md §3.6): a WebSocket silent this long is gone
    // (its client heartbeats well inside it), so a half-open TCP connection ends too.
    let idle = Duration::from_millis(shared.config.limits.idle_timeout_ms.max(1).into());
    let reader = tokio::spawn(read_loop(stream, control_tx, dgram_tx, idle));
    let control_rx = futures::stream::unfold(control_rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let recv = tokio_util::io::StreamReader::new(Box::pin(control_rx));
    let send = channel_writer(out, Channel::Control);
    // Boxed, like QUIC's (transport/quic.rs): the HTTP upgrade's state is not held for life.
    Box::pin(conn::serve(shared, transport.clone(), recv, send)).await;
    transport.close(ErrorCode::Unspecified, "");
    reader.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

async fn read_loop(
    mut stream: futures::stream::SplitStream<WebSocket>,
    control: mpsc::Sender<io::Result<Bytes>>,
    datagrams: mpsc::Sender<Bytes>,
    idle: Duration,
) {
    loop {
        let msg = match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(_) => {
                let silent = io::Error::new(io::ErrorKind::TimedOut, "idle timeout: the client went silent");
                let _ = control.send(Err(silent)).await;
                break;
            }
        };
        let data = match msg {
            Ok(Message::Binary(data)) if data.len() > limits::MAX_WS_MESSAGE_BYTES => {
                let why = format!(
                    "message of {} bytes, limit {}",
                    data.len(),
                    limits::MAX_WS_MESSAGE_BYTES
                );
                violation(&control, ErrorCode::FrameTooLarge, &why).await;
                break;
            }
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) => break,
            // The one read error a client can cause on purpose is a message over the size
            // limit (PROTOCOL.md §3.6); any other (a reset) ends a connection that is gone.
            Err(e) => {
                let text = e.to_string();
                let code = if text.contains("Message too long") || text.contains("Space limit exceeded") {
                    ErrorCode::FrameTooLarge
                } else {
                    ErrorCode::MalformedFrame
                };
                violation(&control, code, &text).await;
                break;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Text(_)) => {
                violation(
                    &control,
                    ErrorCode::MalformedFrame,
                    "text messages are not natter frames",
                )
                .await;
                break;
            }
        };
        match wsmux::decode(&data) {
            Ok((Channel::Control, payload)) => {
                if control.send(Ok(data.slice_ref(payload))).await.is_err() {
                    break;
                }
            }
            Ok((Channel::Datagram, payload)) => {
                let _ = datagrams.try_send(data.slice_ref(payload));
            }
            Ok((Channel::Stream(_), _)) => {
                violation(&control, ErrorCode::MalformedFrame, "clients cannot open streams").await;
                break;
            }
            Err(e) => {
                violation(&control, ErrorCode::MalformedFrame, &e.to_string()).await;
                break;
            }
        }
    }
}

/// Hand a violation of the mapping to the connection driver, which ends the connection
/// with it: the `ConnectionError` first, then close code 4000 + code (PROTOCOL.md §3.6).
async fn violation(control: &mpsc::Sender<io::Result<Bytes>>, code: ErrorCode, message: &str) {
    let _ = control.send(Err(Violation::into_io(code, message))).await;
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut out: mpsc::Receiver<Bytes>,
    mut close: oneshot::Receiver<(ErrorCode, String)>,
) {
    let unspecified = || (ErrorCode::Unspecified, String::new());
    let closing = loop {
        tokio::select! {
            biased;
            msg = out.recv() => match msg {
                Some(msg) => {
                    let send = sink.send(Message::Binary(msg));
                    tokio::pin!(send);
                    tokio::select! {
                        r = &mut send => if r.is_err() { return },
                        c = &mut close => {
                            // The message under way may be the ConnectionError: finish it
                            // (bounded — a peer that stopped reading must not hold the
                            // close back forever), never cut it off.
                            match tokio::time::timeout(Duration::from_secs(1), send).await {
                                Ok(Ok(())) => {}
                                _ => return,
                            }
                            break c.unwrap_or_else(|_| unspecified());
                        }
                    }
                }
                None => break unspecified(),
            },
            c = &mut close => break c.unwrap_or_else(|_| unspecified()),
        }
    };
    // Whatever is already queued (a ConnectionError frame) goes first.
    while let Ok(msg) = out.try_recv() {
        if tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Binary(msg)))
            .await
            .map_or(true, |r| r.is_err())
        {
            break;
        }
    }
    let (code, reason) = closing;
    let mut reason = reason;
    // A close reason is at most 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame {
        code: CLOSE_CODE_BASE + code as u16,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(Some(frame)))).await;
}
