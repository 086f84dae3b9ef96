//! In-process connections: the connection driver ([`conn::serve`]) over channels instead
//! of sockets, with no TLS and no datagrams (signals use the control-stream fallback).
//! For embedding clients in the server's process, for tests, and for the fuzz targets that
//! feed the real request handling arbitrary frames (`fuzz/`). Like every adapter it only
//! moves bytes; the client side decodes frames with natter-protocol's codec.
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::{codec, limits, FrameDecoder, FrameError};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use crate::conn::{self, Shared, Transport};
use crate::transport::chanwrite::ChannelWriter;

/// What the server sends an in-process client, per channel, in order.
#[derive(Debug)]
pub enum Out {
    /// Control-stream bytes.
    Control(Bytes),
    /// Delivery-stream bytes.
    Stream(u64, Bytes),
    /// A delivery stream finished.
    StreamEnd(u64),
    /// The connection closed with this code.
    Closed(ErrorCode),
}

/// Queued server output per connection before the driver feels back-pressure.
const OUT_QUEUE: usize = 1024;

#[derive(Debug)]
struct MemTransport {
    out: mpsc::Sender<Out>,
    next_stream: AtomicU64,
}

/// A server→client byte stream of an in-process connection.
pub type MemStream = ChannelWriter<Out>;

fn stream_writer(out: mpsc::Sender<Out>, stream: Option<u64>) -> MemStream {
    let wrap = move |buf: &[u8]| {
        let data = Bytes::copy_from_slice(buf);
        match stream {
            Some(n) => Out::Stream(n, data),
            None => Out::Control(data),
        }
    };
    ChannelWriter::new(out, wrap, stream.map(Out::StreamEnd))
}

#[async_trait]
impl Transport for MemTransport {
    type Stream = MemStream;
    type Upload = crate::conn::NoUpload;
    const KIND: &'static str = "in_process";

    /// Uploads go over HTTP (tus) beside this transport (PROTOCOL.md §11.3).
    async fn accept_upload(&self) -> Option<crate::conn::NoUpload> {
        None
    }

    async fn open_stream(&self) -> io::Result<MemStream> {
        let n = self.next_stream.fetch_add(1, Ordering::Relaxed);
        Ok(stream_writer(self.out.clone(), Some(n)))
    }

    fn close(&self, code: ErrorCode, _reason: &str) {
        let _ = self.out.try_send(Out::Closed(code));
    }

    fn send_datagram(&self, _data: Bytes) -> bool {
        false
    }

    async fn read_datagram(&self) -> Option<Bytes> {
        None
    }

    fn peer_ip(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    }
}

/// What an in-process client receives.
#[derive(Debug)]
pub enum MemEvent {
    /// A control-stream frame.
    Control(pb::Frame),
    /// A delivery-stream frame (the stream's header, then its conversation's events).
    Delivery(u64, pb::Frame),
    /// The server closed the connection with this code.
    Closed(ErrorCode),
}

/// Why an in-process client's read failed.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The server sent bytes that are not frames: a server bug.
    #[error("server sent a bad frame: {0}")]
    BadFrame(#[from] FrameError),
}

/// The client end of an in-process connection.
#[derive(Debug)]
pub struct MemClient {
    to_server: DuplexStream,
    from_server: mpsc::Receiver<Out>,
    control: FrameDecoder,
    streams: std::collections::HashMap<u64, FrameDecoder>,
    ready: std::collections::VecDeque<MemEvent>,
}

/// Open an in-process connection served by the same driver as network connections.
pub fn connect(shared: Arc<Shared>) -> MemClient {
    let (to_server, server_reads) = tokio::io::duplex(64 * 1024);
    let (out, from_server) = mpsc::channel(OUT_QUEUE);
    let transport = Arc::new(MemTransport {
        out: out.clone(),
        next_stream: AtomicU64::new(1),
    });
    let control = stream_writer(out, None);
    tokio::spawn(conn::serve(shared, transport, server_reads, control));
    MemClient {
        to_server,
        from_server,
        control: FrameDecoder::new(limits::MAX_FRAME_BYTES),
        streams: Default::default(),
        ready: Default::default(),
    }
}

impl MemClient {
    /// Write raw bytes on the control stream (anything at all, for fuzzing).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.to_server.write_all(bytes).await
    }

    /// Write one frame on the control stream.
    pub async fn send(&mut self, kind: pb::frame::Kind) -> io::Result<()> {
        let bytes = codec::encode_frame(&pb::Frame { kind: Some(kind) });
        self.send_bytes(&bytes).await
    }

    /// End the control stream (the server sees end of input).
    pub async fn finish(&mut self) -> io::Result<()> {
        self.to_server.shutdown().await
    }

    /// The next thing the server sent; `None` once the connection is gone.
    pub async fn next(&mut self) -> Result<Option<MemEvent>, MemError> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Ok(Some(ev));
            }
            let Some(out) = self.from_server.recv().await else {
                return Ok(None);
            };
            match out {
                Out::Control(b) => {
                    self.control.push(&b);
                    while let Some(f) = self.control.next_frame()? {
                        self.ready.push_back(MemEvent::Control(f));
                    }
                }
                Out::Stream(n, b) => {
                    let d = self
                        .streams
                        .entry(n)
                        .or_insert_with(|| FrameDecoder::new(limits::MAX_FRAME_BYTES));
                    d.push(&b);
                    while let Some(f) = d.next_frame()? {
                        self.ready.push_back(MemEvent::Delivery(n, f));
                    }
                }
                Out::StreamEnd(n) => {
                    if let Some(d) = self.streams.remove(&n) {
                        d.finish()?;
                    }
                }
                Out::Closed(code) => return Ok(Some(MemEvent::Closed(code))),
            }
        }
    }
}
