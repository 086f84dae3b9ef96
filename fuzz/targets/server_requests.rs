//! The server's per-connection request handling fed arbitrary client bytes after an
//! authenticated start (a prepared user's Hello + Authenticate): every request kind with
//! any field values, truncated and oversized frames, frames that are not allowed from a
//! client. The server must not panic (a panic in any task aborts the fuzzer), must answer
//! only with well-formed frames, must answer each request id at most as often as the
//! input carries a request with it (a client may reuse an id, even while it is in flight —
//! against the rules, PROTOCOL.md §5 — and then gets an answer per request), and a fresh
//! connection must still be served afterwards.
#[path = "../common/server.rs"]
mod server;

use std::collections::HashMap;
use std::time::Duration;

use natter_protocol::pb::{self, frame::Kind, request::Op, response::Result as Res};
use natter_server::transport::mem::MemEvent;

/// One input (libFuzzer's, or the smoke run's in `server/tests/fuzz_smoke.rs`).
pub fn run(data: &[u8]) {
    let f = server::fixture();
    f.rt.block_on(async {
        let (mut c, _) = server::authenticated(f, usize::from(data.first().copied().unwrap_or(0) % 3)).await;
        let _ = c.send_bytes(data.get(1..).unwrap_or_default()).await;
        let _ = c.finish().await;
        let sent = request_ids(data.get(1..).unwrap_or_default());
        let mut answered: HashMap<u64, usize> = HashMap::new();
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(ev) = c.next().await.expect("the server only writes well-formed frames") {
                match ev {
                    MemEvent::Control(pb::Frame {
                        kind: Some(Kind::Response(r)),
                    }) if r.id != 0 => {
                        let n = answered.entry(r.id).or_default();
                        *n += 1;
                        let asked = sent.get(&r.id).copied().unwrap_or(0);
                        assert!(*n <= asked, "request {} answered {n} times, asked {asked}", r.id);
                    }
                    MemEvent::Closed(_) => break,
                    _ => {}
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the connection ends once its input has");
        // Still serving.
        let mut fresh = server::hello(&f.server).await;
        let pong = server::request(&mut fresh, 9, Op::Ping(pb::Ping { nonce: 9 })).await;
        assert!(matches!(pong, Some(Res::Pong(_))), "{pong:?}");
    });
}

/// How many requests with each id the input's frames carry, up to its first undecodable
/// frame (where the server stops reading too).
fn request_ids(bytes: &[u8]) -> HashMap<u64, usize> {
    let mut dec = natter_protocol::codec::FrameDecoder::new(natter_protocol::limits::MAX_FRAME_BYTES);
    dec.push(bytes);
    let mut ids = HashMap::new();
    while let Ok(Some(frame)) = dec.next_frame() {
        if let Some(Kind::Request(r)) = frame.kind {
            *ids.entry(r.id).or_default() += 1;
        }
    }
    ids
}
