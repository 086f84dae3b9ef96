//! Writers: the control stream's writer task, and delivery — one server-opened stream per
//! conversation (PROTOCOL.md §3.2), each written by its own task so one blocked
//! conversation never blocks another. A reader too slow for its queues is cut off (its
//! session keeps what it missed for resume).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use natter_protocol::codec::encode_frame;
use natter_protocol::pb::{self, frame::Kind, ErrorCode};
use natter_protocol::ConversationId;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{Close, ControlSend, Transport};
use crate::ops::Metrics;
use crate::session::hub::{EventFrame, Outbound};

/// Write queued frames to the control stream, then finish it (with a bounded wait for the
/// peer to read everything).
pub(super) async fn write_control<W: ControlSend>(mut w: W, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            return;
        }
    }
    w.finish_and_wait().await;
}

/// Route a session's events onto one delivery stream per conversation (PROTOCOL.md §3.2),
/// each written by its own task so one blocked conversation never blocks another.
pub(super) async fn deliver<T: Transport>(
    transport: Arc<T>,
    mut rx: mpsc::Receiver<Outbound>,
    control: mpsc::Sender<Bytes>,
    closes: mpsc::Sender<Close>,
    idle: Duration,
    queue: usize,
    metrics: Arc<Metrics>,
) {
    let mut writers: HashMap<ConversationId, mpsc::Sender<EventFrame>> = HashMap::new();
    while let Some(o) = rx.recv().await {
        let mut ev = match o {
            Outbound::Event(ev) => ev,
            Outbound::Signal(frame) => {
                if control.try_send(frame).is_err() {
                    metrics.slow_consumer_cutoffs.inc();
                    return transport.close(ErrorCode::LimitExceeded, "slow reader: control queue full");
                }
                continue;
            }
            Outbound::Ephemeral(frame) => {
                // Loss-tolerant: a datagram if possible, else the control stream, else dropped.
                if !transport.send_datagram(Bytes::from(prost::Message::encode_to_vec(&*frame)))
                    && control.try_send(encode_frame(&frame)).is_err()
                {
                    metrics.datagrams_dropped.inc();
                }
                continue;
            }
            // The connection's own task says why and closes (serve's one close path); only
            // if it is gone already does the transport close here.
            Outbound::Close(code, why) => {
                if let Err(mpsc::error::TrySendError::Closed(_)) = closes.try_send(Close::new(code, why)) {
                    transport.close(code, why);
                }
                return;
            }
            Outbound::Cut => return transport.close(ErrorCode::Unspecified, "disconnected by the server"),
        };
        let conv = ConversationId(ev.conversation_id);
        loop {
            let tx = writers.entry(conv).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(queue);
                tokio::spawn(write_conversation(transport.clone(), conv, rx, idle, metrics.clone()));
                tx
            });
            match tx.try_send(ev) {
                Ok(()) => break,
                // The writer went idle and finished its stream: start a new one.
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    writers.remove(&conv);
                    ev = back;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics.slow_consumer_cutoffs.inc();
                    return transport.close(ErrorCode::LimitExceeded, "slow reader: delivery queue full");
                }
            }
        }
    }
    // The hub let go of this connection (slow reader, or the session moved on).
    transport.close(ErrorCode::LimitExceeded, "session detached from this connection");
}

/// Most events one stream write carries.
const WRITE_BATCH: usize = 64;

async fn write_conversation<T: Transport>(
    transport: Arc<T>,
    conv: ConversationId,
    mut rx: mpsc::Receiver<EventFrame>,
    idle: Duration,
    metrics: Arc<Metrics>,
) {
    let delivered = |ev: &pb::ConversationEvent| {
        metrics.deliveries.inc();
        let waited = crate::clock::now_ms().saturating_sub(ev.server_time_ms);
        metrics.delivery_latency.observe(waited as f64 / 1000.0);
    };
    let Ok(mut stream) = transport.open_stream().await else {
        return;
    };
    let header = pb::Frame {
        kind: Some(Kind::StreamHeader(pb::StreamHeader {
            conversation_id: conv.0,
            download_request_id: 0,
        })),
    };
    if stream.write_all(&encode_frame(&header)).await.is_err() {
        return;
    }
    let mut batch: Vec<EventFrame> = Vec::with_capacity(WRITE_BATCH);
    let mut out = bytes::BytesMut::new();
    // One idle timer for the stream's life, moved on only when it fires early: re-arming
    // a timeout for every event cost a timer-wheel insert and removal per delivery.
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut last_write = tokio::time::Instant::now();
    loop {
        let ev = tokio::select! {
            biased;
            got = rx.recv() => match got {
                Some(ev) => ev,
                None => break,
            },
            () = &mut idle_timer => {
                let due = last_write + idle;
                if due > tokio::time::Instant::now() {
                    idle_timer.as_mut().reset(due);
                    continue;
                }
                // Idle: refuse new events, write what raced in, then finish the stream.
                rx.close();
                while let Ok(ev) = rx.try_recv() {
                    if stream.write_all(ev.frame()).await.is_err() {
                        return;
                    }
                    delivered(&ev);
                }
                break;
            }
        };
        // Whatever queued meanwhile goes out in the same write (fewer stream writes and
        // packets under load; one event at a time when it is quiet).
        batch.push(ev);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        // One event: its shared frame as it is; several: one buffer, one write.
        let written = if let [one] = &batch[..] {
            stream.write_all(one.frame()).await
        } else {
            out.clear();
            for ev in &batch {
                out.extend_from_slice(ev.frame());
            }
            stream.write_all(&out).await
        };
        if written.is_err() {
            return;
        }
        last_write = tokio::time::Instant::now();
        for ev in batch.drain(..) {
            delivered(&ev);
        }
    }
    let _ = stream.shutdown().await;
}
