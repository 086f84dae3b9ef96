//! The contract between the connection driver and a transport adapter: what [`super::serve`]
//! needs from a connection (open server→client streams, datagrams, close with a code) and
//! from its control stream. Transport-specific signals (a QUIC peer's clean close) are the
//! adapter's to recognise, through [`Transport::is_clean_close`].
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use natter_protocol::pb::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connection as the driver needs it: open server→client streams, close with a code.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A server-opened unidirectional stream.
    type Stream: AsyncWrite + Unpin + Send + 'static;
    /// A client-opened upload stream (PROTOCOL.md §11.2).
    type Upload: UploadRecv;
    /// The transport's name in metrics: "quic", "webtransport", "websocket", "in_process".
    const KIND: &'static str;
    /// The next upload stream the client opens; `None` once there will be no more (the
    /// connection ended, or the transport has none: WebSocket clients upload over HTTP).
    async fn accept_upload(&self) -> Option<Self::Upload>;
    /// Open a delivery stream.
    async fn open_stream(&self) -> io::Result<Self::Stream>;
    /// Close the whole connection with an error code (PROTOCOL.md §8.2).
    fn close(&self, code: ErrorCode, reason: &str);
    /// Wait up to `limit` for the client to close the connection itself. Where closing
    /// discards data the peer has received but not yet read (QUIC), this is how a last
    /// response and `ConnectionError` reach the client's app; elsewhere it returns at once.
    async fn peer_closed(&self, _limit: Duration) {}
    /// Send an unreliable datagram; false if the transport has none or it does not fit.
    fn send_datagram(&self, data: Bytes) -> bool;
    /// The next datagram from the client; `None` once there will be no more.
    async fn read_datagram(&self) -> Option<Bytes>;
    /// The client's IP address (for per-IP limits).
    fn peer_ip(&self) -> std::net::IpAddr;
    /// Whether a read error on the control stream is really the client ending the
    /// connection cleanly (PROTOCOL.md §8.2: a close with code 0 that overtook its FIN).
    /// Such an end counts like a FIN; by default no error does.
    fn is_clean_close(&self, _error: &io::Error) -> bool {
        false
    }
}

/// A transport-level violation the adapter found under the control stream (a WebSocket
/// text message, a client message on a delivery channel): the adapter yields it as the
/// control stream's read error, and the driver ends the connection with its code through
/// the one close path — the `ConnectionError` first, then the transport's close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Violation {
    /// The close code.
    pub code: ErrorCode,
    /// Why, for the `ConnectionError` and the logs.
    pub message: String,
}

impl Violation {
    /// A violation as the control stream's read error.
    pub fn into_io(code: ErrorCode, message: impl Into<String>) -> io::Error {
        io::Error::other(Violation {
            code,
            message: message.into(),
        })
    }

    /// The violation inside a control-stream read error, if that is what it is.
    pub fn from_io(e: &io::Error) -> Option<&Violation> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Violation>())
    }
}

/// The server's half of a control stream: written, then finished with a bounded wait for
/// the peer to have read everything (so a closing `ConnectionError` is not discarded by the
/// close that follows it).
#[async_trait]
pub trait ControlSend: AsyncWrite + Unpin + Send + 'static {
    /// Finish the stream and wait until the peer has read it to the end.
    async fn finish_and_wait(&mut self);
}

/// The server's half of a client-opened upload stream.
pub trait UploadRecv: AsyncRead + Unpin + Send + 'static {
    /// Tell the client to stop sending, with an error code (QUIC `STOP_SENDING`).
    fn stop(self, code: ErrorCode);
}

/// The upload stream of a transport that has none.
#[derive(Debug)]
pub enum NoUpload {}

impl AsyncRead for NoUpload {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match *self {}
    }
}

impl UploadRecv for NoUpload {
    fn stop(self, _: ErrorCode) {
        match self {}
    }
}
