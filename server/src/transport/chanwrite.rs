//! A byte stream written into a bounded channel, one item per write: how the WebSocket and
//! in-process transports turn the driver's streams into messages for a single writer task
//! (the bound gives the driver the same back-pressure a stalled QUIC stream would).
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::conn::ControlSend;

/// Turns written bytes into a channel item.
type Wrap<T> = Box<dyn Fn(&[u8]) -> T + Send + Sync>;

/// Writes become `wrap(bytes)` items; shutting down sends `fin` (if any) and closes.
pub struct ChannelWriter<T: Send + Unpin + 'static> {
    out: PollSender<T>,
    wrap: Wrap<T>,
    fin: Option<T>,
}

impl<T: Send + Unpin + 'static> std::fmt::Debug for ChannelWriter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelWriter").finish_non_exhaustive()
    }
}

impl<T: Send + Unpin + 'static> ChannelWriter<T> {
    /// A writer into `out`.
    pub fn new(out: mpsc::Sender<T>, wrap: impl Fn(&[u8]) -> T + Send + Sync + 'static, fin: Option<T>) -> Self {
        ChannelWriter {
            out: PollSender::new(out),
            wrap: Box::new(wrap),
            fin,
        }
    }
}

fn broken<E>(_: E) -> io::Error {
    io::Error::from(io::ErrorKind::BrokenPipe)
}

impl<T: Send + Unpin + 'static> AsyncWrite for ChannelWriter<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.out.poll_reserve(cx)).map_err(broken)?;
        let item = (this.wrap)(buf);
        this.out.send_item(item).map_err(broken)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.fin.is_some() && !this.out.is_closed() && ready!(this.out.poll_reserve(cx)).is_ok() {
            let fin = this.fin.take().expect("checked");
            let _ = this.out.send_item(fin);
        }
        this.out.close();
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl<T: Send + Unpin + 'static> ControlSend for ChannelWriter<T> {
    async fn finish_and_wait(&mut self) {
        // Items leave in queue order through one writer task, which drains the queue
        // before it closes: nothing to wait for here.
    }
}
