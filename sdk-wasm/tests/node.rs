//! natter-wasm's pure logic, compiled to wasm32 and run under Node by
//! wasm-bindgen-test (`cargo test -p natter-wasm --target wasm32-unknown-unknown`): the
//! protocol core running inside wasm, what JavaScript receives (serialized by the same
//! serializer the client uses), discovery parsing and the transport plan. Also runs
//! natively as ordinary tests, minus the JS-value checks.
use natter_protocol::client::model::{ConversationEvent, NatterEvent};
use natter_protocol::codec::encode_frame;
use natter_protocol::pb::{self, frame::Kind};
use natter_protocol::{ClientSession, ConversationId, Millis, Seq, SessionConfig, SessionEvent, UserId};
use natter_wasm::view::{self, Discovery, Transport, TransportChoice};
use wasm_bindgen_test::wasm_bindgen_test;

fn discovery(with_wt: bool) -> Discovery {
    let json = if with_wt {
        r#"{"protocol":"natter.v1","webtransport":{"url":"https://127.0.0.1:4434/natter","certificateHashes":["00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","zz"]},"websocket":{"url":"ws://127.0.0.1:8080/ws"}}"#
    } else {
        r#"{"protocol":"natter.v1","webtransport":null,"websocket":{"url":"wss://chat.example/ws"}}"#
    };
    serde_json::from_str(json).unwrap()
}

#[wasm_bindgen_test]
#[test]
fn discovery_parses_and_bad_hashes_are_skipped() {
    let d = discovery(true);
    let wt = d.webtransport.as_ref().unwrap();
    assert_eq!(wt.url, "https://127.0.0.1:4434/natter");
    let hashes = wt.hash_bytes();
    assert_eq!(hashes.len(), 1, "the malformed hash is dropped");
    assert_eq!(hashes[0][..4], [0x00, 0x11, 0x22, 0x33]);
    assert_eq!(discovery(false).websocket.url, "wss://chat.example/ws");
}

#[wasm_bindgen_test]
#[test]
fn auto_prefers_webtransport_and_falls_back_to_websocket() {
    use Transport::{WebSocket as Ws, WebTransport as Wt};
    let with = discovery(true);
    let without = discovery(false);
    assert_eq!(TransportChoice::Auto.plan(true, &with, false), vec![Wt, Ws]);
    assert_eq!(
        TransportChoice::Auto.plan(false, &with, false),
        vec![Ws],
        "browser without WebTransport"
    );
    assert_eq!(
        TransportChoice::Auto.plan(true, &without, false),
        vec![Ws],
        "server without it"
    );
    assert_eq!(
        TransportChoice::Auto.plan(true, &with, true),
        vec![Ws],
        "after it failed once"
    );
    assert_eq!(
        TransportChoice::WebTransport.plan(false, &without, true),
        vec![Wt],
        "forced"
    );
    assert_eq!(TransportChoice::WebSocket.plan(true, &with, false), vec![Ws]);
    assert_eq!(TransportChoice::parse(None).unwrap(), TransportChoice::Auto);
    assert_eq!(TransportChoice::parse(Some("quic")).unwrap_err().code, "INVALID");
}

/// The protocol core in wasm: handshake, login-free authentication, an event, and what
/// the app receives for it.
#[wasm_bindgen_test]
#[test]
fn the_session_runs_in_wasm_and_its_events_become_js_events() {
    let mut s = ClientSession::new(SessionConfig::default(), Some("token".into()));
    s.handle_connected(Millis(0));
    let hello = s.poll_transmit().expect("hello goes out");
    assert!(!hello.is_empty());
    let welcome = encode_frame(&pb::Frame {
        kind: Some(Kind::Welcome(pb::Welcome {
            version: 1,
            limits: Some(natter_protocol::limits::default_limits()),
            ..Default::default()
        })),
    });
    s.handle_control_data(Millis(1), &welcome).unwrap();
    let auth = s.poll_transmit().expect("authenticate goes out");
    let mut buf = bytes::BytesMut::from(&auth[..]);
    let frame = natter_protocol::decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
    let Some(Kind::Request(req)) = frame.kind else {
        panic!("a request")
    };
    let ok = encode_frame(&pb::Frame {
        kind: Some(Kind::Response(pb::Response {
            id: req.id,
            result: Some(pb::response::Result::Auth(pb::AuthOk {
                user_id: 7,
                username: "ann".into(),
                device_id: 3,
                resume_token: "r".into(),
                resume_window_secs: 60,
                ..Default::default()
            })),
        })),
    });
    s.handle_control_data(Millis(2), &ok).unwrap();
    let events: Vec<SessionEvent> = std::iter::from_fn(|| s.poll_event()).collect();
    let js: Vec<NatterEvent> = events.into_iter().filter_map(NatterEvent::from_session).collect();
    assert!(js.contains(&NatterEvent::Connected {
        user_id: 7,
        username: "ann".into(),
        device_id: 3,
        resumed: false
    }));
    assert_eq!(s.resume_token(), Some("r"));
    assert_eq!(s.cursors(), Vec::<(ConversationId, Seq)>::new());
    let _ = UserId(7);
}

#[wasm_bindgen_test]
#[test]
fn errors_carry_their_wire_code_and_retry_time() {
    let e = natter_protocol::ServerError {
        code: pb::ErrorCode::RateLimited,
        message: "slow down".into(),
        retry_after_ms: 1500,
        device_mismatch: None,
    };
    let js = view::JsError::from(&e);
    assert_eq!(js.code, "RATE_LIMITED");
    assert_eq!(js.retry_after_ms, Some(1500));
    let lost = view::JsError::from(&natter_protocol::RequestError::ConnectionLost);
    assert_eq!(lost.code, "CONNECTION_LOST");
}

/// What JavaScript actually gets: camelCase fields, a `type` tag, numbers for ids.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test]
fn js_values_have_the_documented_shape() {
    use serde::Serialize;
    use wasm_bindgen::JsValue;
    let get = |v: &JsValue, k: &str| js_sys::Reflect::get(v, &k.into()).unwrap();
    let ser = serde_wasm_bindgen::Serializer::json_compatible();
    let ev = NatterEvent::Unread {
        conversation_id: 5,
        read_seq: 9,
        unread_count: 2,
    };
    let v = ev.serialize(&ser).unwrap();
    assert_eq!(get(&v, "type").as_string().unwrap(), "unread");
    assert_eq!(get(&v, "conversationId").as_f64(), Some(5.0));
    assert_eq!(get(&v, "unreadCount").as_f64(), Some(2.0));

    let event = message_event(3, 7, "hi");
    let v = NatterEvent::Event { event }.serialize(&ser).unwrap();
    let e = get(&v, "event");
    assert_eq!(get(&e, "senderUsername").as_string().unwrap(), "user7");
    let body = get(&e, "body");
    assert_eq!(get(&body, "type").as_string().unwrap(), "message");
    assert_eq!(get(&body, "text").as_string().unwrap(), "hi");

    let v = view::TransportEvent { name: "websocket" }.serialize(&ser).unwrap();
    assert_eq!(get(&v, "type").as_string().unwrap(), "transport");
    assert_eq!(get(&v, "name").as_string().unwrap(), "websocket");
}

fn message_event(seq: u64, sender: u64, text: &str) -> ConversationEvent {
    ConversationEvent::from(pb::ConversationEvent {
        conversation_id: 5,
        seq,
        sender_user_id: sender,
        sender_username: format!("user{sender}"),
        server_time_ms: 1_000 + seq,
        body: Some(pb::conversation_event::Body::Message(pb::MessageEvent {
            client_msg_id: format!("c{seq}"),
            body: Some(pb::MessageBody {
                text: text.into(),
                reply_to_seq: 0,
                ..Default::default()
            }),
        })),
        ..Default::default()
    })
}

fn reaction(seq: u64, sender: u64, target: u64, emoji: &str) -> ConversationEvent {
    ConversationEvent::from(pb::ConversationEvent {
        conversation_id: 5,
        seq,
        sender_user_id: sender,
        body: Some(pb::conversation_event::Body::Reaction(pb::ReactionChanged {
            target_seq: target,
            emoji: emoji.into(),
            added: true,
        })),
        ..Default::default()
    })
}

fn edit(seq: u64, sender: u64, target: u64, text: &str) -> ConversationEvent {
    ConversationEvent::from(pb::ConversationEvent {
        conversation_id: 5,
        seq,
        sender_user_id: sender,
        body: Some(pb::conversation_event::Body::MessageEdited(pb::MessageEdited {
            target_seq: target,
            text: text.into(),
        })),
        ..Default::default()
    })
}

/// What the page hands back to `Timeline.apply` is what the client gave it: the event's
/// JavaScript form must read back as the same event (every field, every body kind).
#[wasm_bindgen_test]
#[test]
fn conversation_events_read_back_from_their_javascript_form() {
    for ev in [
        message_event(1, 7, "hi"),
        reaction(2, 8, 1, "👍"),
        edit(4, 7, 1, "fixed"),
    ] {
        let json = serde_json::to_value(&ev).unwrap();
        let back: ConversationEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
    }
    // A body of a kind this version does not know (a newer server) reads as "unknown".
    let newer = r#"{"conversationId":5,"seq":9,"senderUserId":1,"senderUsername":"a","senderDeviceId":1,
                    "serverTimeMs":1,"body":{"type":"poll","question":"?"}}"#;
    let read: ConversationEvent = serde_json::from_str(newer).unwrap();
    assert_eq!(read.body, natter_protocol::client::model::EventBody::Unknown);
}

#[wasm_bindgen_test]
#[test]
fn the_timeline_view_has_the_documented_shape() {
    let mut t = natter_protocol::timeline::Timeline::new();
    t.apply(&message_event(1, 7, "hi"));
    t.apply(&reaction(2, 8, 1, "👍"));
    t.apply(&reaction(3, 9, 1, "👍"));
    t.apply(&reaction(4, 9, 1, "🎉"));
    let m = t.message(Seq(1)).unwrap();
    assert_eq!((m.seq, m.sender_user_id, m.text.as_str()), (1, 7, "hi"));
    let r: Vec<(&str, u32, Vec<u64>)> = m
        .reactions
        .iter()
        .map(|r| (r.emoji.as_str(), r.count, r.user_ids.clone()))
        .collect();
    assert_eq!(r, vec![("👍", 2, vec![8, 9]), ("🎉", 1, vec![9])]);
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["senderUsername"], "user7");
    assert_eq!(json["reactions"][0]["userIds"][1], 9);
}

/// The `Timeline` class folds events in their JavaScript form, as the page feeds them.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test]
fn the_timeline_class_folds_javascript_events() {
    use serde::Serialize;
    let ser = serde_wasm_bindgen::Serializer::json_compatible();
    let get = |v: &wasm_bindgen::JsValue, k: &str| js_sys::Reflect::get(v, &k.into()).unwrap();
    let mut t = natter_wasm::Timeline::new();
    assert_eq!(
        t.apply(message_event(1, 7, "helo").serialize(&ser).unwrap()).unwrap(),
        1.0
    );
    let edit = edit(2, 7, 1, "hello");
    assert_eq!(t.apply(edit.serialize(&ser).unwrap()).unwrap(), 1.0);
    assert_eq!(t.apply(reaction(3, 8, 1, "👍").serialize(&ser).unwrap()).unwrap(), 1.0);
    assert_eq!(t.apply(reaction(4, 8, 99, "👍").serialize(&ser).unwrap()).unwrap(), 0.0);
    let m = t.message(1.0);
    assert_eq!(get(&m, "text").as_string().unwrap(), "hello");
    assert_eq!(get(&m, "edited").as_bool(), Some(true));
    let reactions = js_sys::Array::from(&get(&m, "reactions"));
    assert_eq!(get(&reactions.get(0), "count").as_f64(), Some(1.0));
    assert!(t.message(2.0).is_null(), "an edit is not a message of its own");
    assert!(t.apply(wasm_bindgen::JsValue::from_str("nonsense")).is_err());
    // Retention (PROTOCOL.md §5.17): a page's `removedThrough` drops what it covers.
    t.apply(message_event(5, 7, "later").serialize(&ser).unwrap()).unwrap();
    assert_eq!(t.removed_through(), 0.0);
    assert!(t.remove_through(4.0));
    assert_eq!(t.removed_through(), 4.0);
    assert!(t.message(1.0).is_null(), "removed");
    assert_eq!(get(&t.message(5.0), "text").as_string().unwrap(), "later");
    assert!(!t.remove_through(3.0), "never back");
}

#[wasm_bindgen_test]
#[test]
fn tus_answers_store_ask_again_or_fail_with_the_natter_code() {
    use view::{tus_outcome, TusOutcome};
    assert_eq!(
        tus_outcome(204, Some("4194304"), None, ""),
        TusOutcome::Stored(4_194_304)
    );
    assert_eq!(
        tus_outcome(409, None, Some("OFFSET_MISMATCH"), ""),
        TusOutcome::AskAgain
    );
    assert_eq!(tus_outcome(423, None, Some("CONFLICT"), ""), TusOutcome::AskAgain);
    match tus_outcome(413, None, Some("QUOTA_EXCEEDED"), "QUOTA_EXCEEDED: over your quota\n") {
        TusOutcome::Failed(e) => {
            assert_eq!(e.code, "QUOTA_EXCEEDED");
            assert_eq!(e.message, "over your quota");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(tus_outcome(204, None, None, ""), TusOutcome::Failed(e) if e.code == "UNEXPECTED"));
    assert!(matches!(tus_outcome(502, None, None, "bad gateway"), TusOutcome::Failed(e) if e.code == "HTTP_502"));
}

#[wasm_bindgen_test]
#[test]
fn a_blurhash_decodes_to_rgba_pixels_and_garbage_is_refused() {
    // An all-red 1x1-component hash made by the same crate the server encodes with.
    let red: Vec<u8> = [255u8, 0, 0, 255].repeat(16);
    let hash = blurhash::encode(1, 1, 4, 4, &red).unwrap();
    let px = view::blurhash_rgba(&hash, 8, 6).unwrap();
    assert_eq!(px.len(), 8 * 6 * 4);
    assert!(
        px.chunks(4)
            .all(|p| p[0] > 240 && p[1] < 16 && p[2] < 16 && p[3] == 255),
        "{:?}",
        &px[..8]
    );
    assert_eq!(view::blurhash_rgba("not a hash", 8, 8).unwrap_err().code, "INVALID");
    assert_eq!(view::blurhash_rgba(&hash, 0, 8).unwrap_err().code, "INVALID");
}
