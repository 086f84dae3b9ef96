//! The native QUIC transport (quinn, ALPN `natter/1`): accepts connections, takes the
//! client's first bidirectional stream as the control stream and hands everything to
//! [`conn::serve`]. Only moves bytes; no protocol logic here.
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_protocol::pb::ErrorCode;

use crate::conn::{self, ControlSend, Shared, Transport, UploadRecv};

/// A quinn connection as a [`Transport`].
#[derive(Debug)]
pub struct QuicTransport(pub quinn::Connection);

#[async_trait]
impl Transport for QuicTransport {
    type Stream = quinn::SendStream;
    type Upload = quinn::RecvStream;
    const KIND: &'static str = "quic";

    async fn open_stream(&self) -> io::Result<quinn::SendStream> {
        self.0.open_uni().await.map_err(io::Error::other)
    }

    async fn accept_upload(&self) -> Option<quinn::RecvStream> {
        self.0.accept_uni().await.ok()
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        self.0.close(quinn::VarInt::from_u32(code as u32), reason.as_bytes());
    }

    async fn peer_closed(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.0.closed()).await;
    }

    fn send_datagram(&self, data: bytes::Bytes) -> bool {
        self.0.send_datagram(data).is_ok()
    }

    async fn read_datagram(&self) -> Option<bytes::Bytes> {
        self.0.read_datagram().await.ok()
    }

    fn peer_ip(&self) -> std::net::IpAddr {
        self.0.remote_address().ip()
    }

    fn is_clean_close(&self, error: &io::Error) -> bool {
        closed_by_peer_with_code_0(error)
    }
}

/// A client that finishes its control stream and closes with code 0 in one go (the SDKs'
/// shutdown) may have the close overtake the FIN: quinn then reports the read as failed
/// with `ApplicationClosed(0)`, which is still a clean end. WebTransport sessions run on
/// the same quinn streams and use this too.
pub fn closed_by_peer_with_code_0(e: &io::Error) -> bool {
    let closed = |c: &quinn::ConnectionError| matches!(c, quinn::ConnectionError::ApplicationClosed(a) if a.error_code == quinn::VarInt::from_u32(0));
    match e.get_ref() {
        Some(inner) => match inner.downcast_ref::<quinn::ReadError>() {
            Some(quinn::ReadError::ConnectionLost(c)) => closed(c),
            _ => inner.downcast_ref::<quinn::ConnectionError>().is_some_and(closed),
        },
        None => false,
    }
}

impl UploadRecv for quinn::RecvStream {
    fn stop(mut self, code: ErrorCode) {
        let _ = quinn::RecvStream::stop(&mut self, quinn::VarInt::from_u32(code as u32));
    }
}

#[async_trait]
impl ControlSend for quinn::SendStream {
    async fn finish_and_wait(&mut self) {
        if self.finish().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.stopped()).await;
        }
    }
}

/// How many ack-eliciting packets a client that supports the ACK frequency extension may
/// receive before it must acknowledge (PROTOCOL.md §3.1): at most every tenth packet, or
/// within its `max_ack_delay` (25 ms), whichever comes first. By default QUIC acknowledges
/// every second packet, so a busy delivery stream brought back one ACK datagram for every
/// two it sent — each received, decrypted and processed by the server like any other.
pub const ACK_ELICITING_THRESHOLD: u32 = 9;

/// Transport parameters: one client-opened bidirectional stream (control), `uploads`
/// client-opened unidirectional streams (PROTOCOL.md §11.2), keep-alives from the client,
/// a bounded idle timeout, and fewer acknowledgements from clients that can be asked.
pub fn transport_config(idle: Duration, uploads: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(uploads.into());
    t.max_idle_timeout(Some(idle.try_into().expect("idle timeout in range")));
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
    t.ack_frequency_config(Some(acks));
    t
}

/// QUIC handshakes under way, counted while one runs.
struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Handshaking(count.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept connections until the endpoint closes. Admission comes before any crypto
/// (PROTOCOL.md §3.1): a connection from an address at its limit, on a full or draining
/// node, is refused from its first packet (QUIC `CONNECTION_REFUSED`, no TLS handshake);
/// under load, one from an address not yet validated gets a Retry first.
pub async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let handshaking = Arc::new(AtomicUsize::new(0));
    let handshakes = &shared.ctx.metrics.handshakes.clone();
    let count = |result: &'static str| crate::ops::Metrics::result(handshakes, result);
    while let Some(incoming) = endpoint.accept().await {
        let Some(slot) = shared.admit(incoming.remote_address().ip()) else {
            count("refused");
            incoming.refuse();
            continue;
        };
        let busy = handshaking.load(Ordering::Relaxed) >= shared.config.retry_above_handshakes;
        if busy && !incoming.remote_address_validated() && incoming.may_retry() {
            drop(slot);
            count("retry");
            let _ = incoming.retry();
            continue;
        }
        let shared = shared.clone();
        let handshake_running = Handshaking::start(&handshaking);
        tokio::spawn(async move {
            let _slot = slot;
            // Each phase in a box of its own: a task's future is as large as its largest
            // state for the task's whole life, and the handshake's (the Initial packet,
            // its keys) would otherwise be held by every idle connection.
            let Some((conn, send, recv)) = Box::pin(handshake(incoming, &shared, handshake_running)).await else {
                return;
            };
            Box::pin(conn::serve(shared, Arc::new(QuicTransport(conn)), recv, send)).await;
        });
    }
}

/// The QUIC and TLS handshake, then the client's control stream (within the handshake
/// timeout); `None` if either fails (counted, logged at debug).
async fn handshake(
    incoming: quinn::Incoming,
    shared: &Shared,
    running: Handshaking,
) -> Option<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let handshakes = &shared.ctx.metrics.handshakes;
    let conn = match incoming.await {
        Ok(c) => {
            crate::ops::Metrics::result(handshakes, "ok");
            c
        }
        Err(e) => {
            crate::ops::Metrics::result(handshakes, "failed");
            tracing::debug!(error = %e, "handshake failed");
            return None;
        }
    };
    drop(running);
    match tokio::time::timeout(shared.config.handshake_timeout, conn.accept_bi()).await {
        Ok(Ok((send, recv))) => Some((conn, send, recv)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no control stream");
            None
        }
        Err(_) => {
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::HandshakeRequired as u32),
                b"no control stream",
            );
            None
        }
    }
}
