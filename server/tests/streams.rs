//! Delivery streams (PROTOCOL.md §3.2): one server-opened stream per conversation, opened
//! when an event comes and finished when the conversation has been quiet for the stream
//! idle time — so an idle connection holds no streams — with nothing lost across the change;
//! and the acknowledgement frequency the server asks of the clients it streams to (§3.1).
use crate::common;

use bytes::BytesMut;
use common::*;
use natter_protocol::codec::decode_frame;
use natter_protocol::pb::{self, frame::Kind};

/// Every frame on a delivery stream until the server finishes it.
async fn read_to_end(stream: &mut quinn::RecvStream) -> Vec<pb::Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    while let Some(chunk) = stream.read_chunk(65536, true).await.expect("finished, not reset") {
        buf.extend_from_slice(&chunk.bytes);
        while let Some(f) = decode_frame(&mut buf, usize::MAX).unwrap() {
            frames.push(f);
        }
    }
    assert!(buf.is_empty(), "the stream ends on a frame boundary");
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_conversation_s_stream_is_finished_and_its_next_event_opens_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = natter_server::Config {
        stream_idle_secs: 1,
        ..common::config(dir.path())
    };
    let s = natter_server::start(&config).await.expect("server starts");
    let (alice, _bob, dm) = alice_and_bob(&s).await;
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.login("bob").await;

    // Three events close together: one stream, all three on it, then its end.
    for k in 0..3 {
        alice.client.send(dm, &format!("first-{k}")).await.unwrap();
    }
    let mut first = tokio::time::timeout(DEADLINE, raw.conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let frames = tokio::time::timeout(DEADLINE, read_to_end(&mut first))
        .await
        .expect("the quiet stream is finished within the deadline");
    assert!(matches!(&frames[0].kind, Some(Kind::StreamHeader(h)) if h.conversation_id == dm.0));
    let texts: Vec<String> = frames[1..]
        .iter()
        .map(|f| match &f.kind {
            Some(Kind::Event(e)) => match &e.body {
                Some(pb::conversation_event::Body::Message(m)) => m.body.as_ref().unwrap().text.clone(),
                other => panic!("a message, not {other:?}"),
            },
            other => panic!("an event, not {other:?}"),
        })
        .collect();
    assert_eq!(texts, ["first-0", "first-1", "first-2"]);

    // The next event opens a new stream; nothing between the two was lost.
    alice.client.send(dm, "second").await.unwrap();
    let ev = raw.next_delivered().await;
    assert_eq!(ev.conversation_id, dm.0);
    let last_seq = match &frames.last().unwrap().kind {
        Some(Kind::Event(e)) => e.seq,
        _ => unreachable!(),
    };
    assert_eq!(ev.seq, last_seq + 1, "the next seq, on the new stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quinn_client_is_asked_to_acknowledge_less_often() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&common::config(dir.path()))
        .await
        .expect("server starts");
    let (alice, _bob, dm) = alice_and_bob(&s).await;
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.login("bob").await;
    alice.client.send(dm, "hello").await.unwrap();
    let ev = raw.next_delivered().await;
    assert_eq!(ev.conversation_id, dm.0);
    // quinn advertises `min_ack_delay`, so the server asks it for fewer acknowledgements
    // (PROTOCOL.md §3.1) as soon as the handshake is done, long before this delivery.
    let asked = raw.conn.stats().frame_rx.ack_frequency;
    assert!(asked >= 1, "the server sent an ACK_FREQUENCY frame (got {asked})");
}
