//! The sans-IO ClientSession driven by an arbitrary server: control-stream bytes, delivery
//! stream bytes, datagrams, disconnects, timeouts and app commands, in any order. It must
//! never panic, and whatever it hands the app must keep guarantee 4: per conversation,
//! events come in strictly increasing seq with no duplicates.
use std::collections::HashMap;

use natter_protocol::pb;
use natter_protocol::session::{SessionEvent, StreamKey};
use natter_protocol::{ClientMsgId, ClientSession, ConversationId, Millis, SessionConfig};

/// One input (libFuzzer's, or the smoke run's in `server/tests/fuzz_smoke.rs`).
pub fn run(data: &[u8]) {
    let mut s = ClientSession::new(SessionConfig::default(), Some("token".into()));
    let mut now = 0u64;
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut connected = false;
    let mut i = 0;
    while i + 2 <= data.len() {
        let op = data[i];
        let len = usize::from(data[i + 1]);
        let body = &data[(i + 2).min(data.len())..(i + 2 + len).min(data.len())];
        i += 2 + len;
        now += u64::from(op & 0x0f) * 100;
        let t = Millis(now);
        let ok = match op >> 4 {
            0 => {
                s.handle_connected(t);
                connected = true;
                Ok(())
            }
            1..=3 if connected => s.handle_control_data(t, body),
            4 | 5 if connected => s.handle_stream_data(t, StreamKey(u64::from(op & 3)), body),
            6 if connected => s.handle_stream_finished(StreamKey(u64::from(op & 3))),
            7 if connected => {
                s.handle_datagram(t, body);
                Ok(())
            }
            8 => {
                s.handle_disconnected(t, "fuzz");
                connected = false;
                Ok(())
            }
            9 => {
                s.handle_timeout(t);
                Ok(())
            }
            10 => {
                let text = String::from_utf8_lossy(body).into_owned();
                let body = pb::MessageBody {
                    text,
                    ..Default::default()
                };
                let _ = s.send_message(
                    t,
                    ConversationId(u64::from(op & 3) + 1),
                    ClientMsgId(format!("m{i}")),
                    body,
                );
                Ok(())
            }
            11 => {
                s.typing(t, ConversationId(u64::from(op & 3) + 1));
                Ok(())
            }
            _ => Ok(()),
        };
        if ok.is_err() {
            // A protocol error: the driver would drop the connection.
            s.handle_disconnected(t, "protocol error");
            connected = false;
        }
        while s.poll_transmit().is_some() {}
        while s.poll_datagram().is_some() {}
        while let Some(ev) = s.poll_event() {
            if let SessionEvent::Event(e) = ev {
                let prev = last.insert(e.conversation_id, e.seq);
                assert!(
                    prev.is_none_or(|p| e.seq > p),
                    "seq went backwards or repeated: {prev:?} then {}",
                    e.seq
                );
            }
        }
    }
}
