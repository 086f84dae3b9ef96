//! The WebSocket mapping (PROTOCOL.md §3.6) from a raw client: subprotocol required,
//! channels, a full session (register, login, a message delivered on a delivery channel
//! with its stream header), and typed closes for what breaks the mapping — while the
//! server keeps serving.
use crate::common;

use bytes::BytesMut;
use common::*;
use futures::{SinkExt, StreamExt};
use natter_protocol::codec::{decode_frame, encode_frame};
use natter_protocol::pb::{self, frame::Kind, request::Op, response::Result as Res};
use natter_protocol::wsmux::{self, Channel};
use natter_protocol::{limits, ConversationId};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(s: &natter_server::RunningServer, protocol: Option<&str>) -> Result<Ws, String> {
    let mut req = format!("ws://{}/ws", s.web_addr.unwrap())
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// A raw natter client over WebSocket.
struct RawWs {
    ws: Ws,
    control: BytesMut,
    next_id: u64,
}

#[allow(clippy::large_enum_variant)] // a test helper; one frame at a time
enum In {
    Control(pb::Frame),
    Stream(u64, Vec<pb::Frame>),
    StreamEnd,
    Datagram,
    Closed(Option<u16>),
}

impl RawWs {
    async fn connect(s: &natter_server::RunningServer) -> RawWs {
        let ws = open(s, Some(wsmux::SUBPROTOCOL)).await.expect("upgrade with natter.v1");
        let mut r = RawWs {
            ws,
            control: BytesMut::new(),
            next_id: 1,
        };
        r.send(Kind::Hello(pb::Hello {
            versions: vec![1],
            client: "raw-ws".into(),
        }))
        .await;
        assert!(matches!(r.control().await.kind, Some(Kind::Welcome(_))));
        r
    }

    async fn send(&mut self, kind: Kind) {
        let bytes = encode_frame(&pb::Frame { kind: Some(kind) });
        // Split the frame over two messages: channel 0 is a byte stream.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        for part in [a, b] {
            let msg = wsmux::encode(Channel::Control, part);
            self.ws.send(Message::Binary(msg)).await.unwrap();
        }
    }

    async fn request(&mut self, op: Op) -> Res {
        let id = self.next_id;
        self.next_id += 1;
        self.send(Kind::Request(pb::Request { id, op: Some(op) })).await;
        loop {
            if let Some(Kind::Response(r)) = self.control().await.kind {
                assert_eq!(r.id, id);
                return r.result.unwrap();
            }
        }
    }

    async fn next(&mut self) -> In {
        loop {
            if let Some(f) = decode_frame(&mut self.control, limits::MAX_FRAME_BYTES).unwrap() {
                return In::Control(f);
            }
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("message in time");
            let data = match msg {
                Some(Ok(Message::Binary(d))) => d,
                Some(Ok(Message::Close(c))) => return In::Closed(c.map(|c| u16::from(c.code))),
                None | Some(Err(_)) => return In::Closed(None),
                Some(Ok(_)) => continue,
            };
            match wsmux::decode(&data).unwrap() {
                (Channel::Control, p) => self.control.extend_from_slice(p),
                (Channel::Datagram, _) => return In::Datagram,
                (Channel::Stream(_), []) => return In::StreamEnd,
                (Channel::Stream(n), p) => {
                    let mut buf = BytesMut::from(p);
                    let mut frames = Vec::new();
                    while let Some(f) = decode_frame(&mut buf, limits::MAX_FRAME_BYTES).unwrap() {
                        frames.push(f);
                    }
                    assert!(buf.is_empty(), "the server writes whole frames per message");
                    return In::Stream(n, frames);
                }
            }
        }
    }

    async fn control(&mut self) -> pb::Frame {
        loop {
            match self.next().await {
                In::Control(f) => return f,
                In::Closed(c) => panic!("closed ({c:?}) while waiting for a control frame"),
                _ => {}
            }
        }
    }
}

fn close_code(e: pb::ErrorCode) -> Option<u16> {
    Some(natter_server::transport::websocket::CLOSE_CODE_BASE + e as u16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_websocket_client_chats_on_channels() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let bob = user(&s, "bob").await;
    let mut r = RawWs::connect(&s).await;
    let reg = Op::Register(pb::Register {
        username: "wendy".into(),
        password: PASSWORD.into(),
    });
    assert!(matches!(r.request(reg).await, Res::Register(_)));
    let login = Op::Login(pb::Login {
        username: "wendy".into(),
        password: PASSWORD.into(),
        device_name: "raw".into(),
    });
    assert!(matches!(r.request(login).await, Res::Login(_)));

    let conv = bob.client.direct("wendy").await.unwrap().conversation_id;
    bob.client.send(ConversationId(conv), "over a websocket").await.unwrap();
    // Events arrive on a delivery channel: its header first, then the conversation's
    // events in seq order (creation, then the message).
    let mut frames = Vec::new();
    let mut channel = None;
    let text = |f: &pb::Frame| match &f.kind {
        Some(Kind::Event(e)) => match &e.body {
            Some(pb::conversation_event::Body::Message(m)) => Some(m.body.clone().unwrap().text),
            _ => None,
        },
        _ => None,
    };
    while !frames.iter().any(|f| text(f).is_some()) {
        if let In::Stream(n, more) = r.next().await {
            assert_eq!(*channel.get_or_insert(n), n, "one conversation, one delivery channel");
            frames.extend(more);
        }
    }
    assert!(matches!(&frames[0].kind, Some(Kind::StreamHeader(h)) if h.conversation_id == conv));
    let seqs: Vec<u64> = frames[1..]
        .iter()
        .map(|f| match &f.kind {
            Some(Kind::Event(e)) => e.seq,
            other => panic!("only events after the header, got {other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(text(&frames[2]).as_deref(), Some("over a websocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_mapping_violations_get_typed_closes_and_others_keep_chatting() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let alice = user(&s, "alice").await;
    let mut bob = user(&s, "bob").await;
    let conv = ConversationId(alice.client.direct("bob").await.unwrap().conversation_id);

    // No subprotocol: refused at the upgrade.
    let err = open(&s, None).await.unwrap_err();
    assert!(err.contains("400"), "{err}");
    let err = open(&s, Some("chat.v2")).await.unwrap_err();
    assert!(err.contains("400"), "{err}");

    // Every way of breaking the mapping ends the connection the same way: the
    // ConnectionError first, then close code 4000 + the same code — 20 times each.
    type Case = (&'static str, fn() -> Message, pb::ErrorCode);
    let cases: [Case; 5] = [
        (
            "a text message",
            || Message::Text("hello".into()),
            pb::ErrorCode::MalformedFrame,
        ),
        (
            "a client message on a delivery channel",
            || Message::Binary(wsmux::encode(Channel::Stream(1), b"x")),
            pb::ErrorCode::MalformedFrame,
        ),
        (
            "no channel number at all",
            || Message::Binary(vec![0x80].into()),
            pb::ErrorCode::MalformedFrame,
        ),
        (
            "a WebSocket message over the limit",
            || {
                Message::Binary(wsmux::encode(
                    Channel::Control,
                    &vec![0u8; limits::MAX_WS_MESSAGE_BYTES + 1],
                ))
            },
            pb::ErrorCode::FrameTooLarge,
        ),
        (
            "a frame length over the limit, on the control channel",
            || {
                let mut prefix = Vec::new();
                prost::encoding::encode_varint(10 << 20, &mut prefix);
                Message::Binary(wsmux::encode(Channel::Control, &prefix))
            },
            pb::ErrorCode::FrameTooLarge,
        ),
    ];
    for (what, message, code) in cases {
        for attempt in 0..20 {
            let mut r = RawWs::connect(&s).await;
            let _ = r.ws.send(message()).await;
            let e = ws_ending(r).await;
            assert_eq!(
                (e.error, e.close),
                (Some(code as i32), close_code(code).map(u64::from)),
                "{what}, attempt {attempt}: {e:?}"
            );
        }
    }
    // A request before authentication is refused, typed, without closing.
    let mut r = RawWs::connect(&s).await;
    let res = r.request(Op::ListConversations(pb::ListConversations {})).await;
    assert_eq!(error_code(&res), pb::ErrorCode::Unauthenticated);

    // Meanwhile the others chat as usual.
    alice.client.send(conv, "still here").await.unwrap();
    let got = messages(&mut bob.events, conv, 1).await;
    assert_eq!(got[0].1, "still here");
}

/// What a raw client saw until its connection ended: control frame kinds in order (GoAway,
/// ConnectionError) and the close code.
#[derive(Debug, Default)]
struct Ending {
    go_away: bool,
    error: Option<i32>,
    close: Option<u64>,
}

async fn ws_ending(mut r: RawWs) -> Ending {
    let mut e = Ending::default();
    loop {
        match r.next().await {
            In::Control(f) => match f.kind {
                Some(Kind::GoAway(_)) => e.go_away = true,
                Some(Kind::ConnectionError(c)) => e.error = Some(c.code),
                _ => {}
            },
            In::Closed(code) => {
                e.close = code.map(u64::from);
                return e;
            }
            _ => {}
        }
    }
}

async fn quic_ending(mut r: Raw) -> Ending {
    let mut e = Ending::default();
    while let Some(f) = r.read().await {
        match f.kind {
            Some(Kind::GoAway(_)) => e.go_away = true,
            Some(Kind::ConnectionError(c)) => e.error = Some(c.code),
            _ => {}
        }
    }
    let reason = tokio::time::timeout(DEADLINE, r.conn.closed())
        .await
        .expect("closed in time");
    if let quinn::ConnectionError::ApplicationClosed(c) = reason {
        e.close = Some(c.error_code.into_inner());
    }
    e
}

async fn wt_ending(mut r: common::wt::RawWt) -> Ending {
    let mut e = Ending::default();
    while let Some(f) = r.read().await {
        match f.kind {
            Some(Kind::GoAway(_)) => e.go_away = true,
            Some(Kind::ConnectionError(c)) => e.error = Some(c.code),
            _ => {}
        }
    }
    e.close = r.close_code().await;
    e
}

/// Panics in this process (server tasks included) since the hook went in, apart from
/// other tests' own threads.
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The drain test's name: its thread's is this behind the module path.
const DRAIN_TEST: &str = "a_drain_tells_every_connection_of_every_transport_and_then_closes_it_with_its_reason";

/// PROTOCOL.md §7.6: a drain (what SIGTERM runs) follows one sequence for every connection
/// of every transport, authenticated or not — `GoAway`, then, for those that stay,
/// `ConnectionError SHUTTING_DOWN` and the close (QUIC and WebTransport 19, WebSocket 4019)
/// — new connections are refused meanwhile, and nothing panics (wtransport once did while
/// its endpoint closed). 20 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_tells_every_connection_of_every_transport_and_then_closes_it_with_its_reason() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The other tests of this binary run alongside on their own threads (named after
        // them, `area::test`); their panics are theirs to report. Server tasks run on
        // runtime workers.
        let thread = std::thread::current();
        let another_test = thread
            .name()
            .is_some_and(|n| n.contains("::") && !n.ends_with(DRAIN_TEST));
        if !another_test {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        default(info);
    }));
    for run in 0..20 {
        one_drain(run).await;
    }
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a panic during a drain"
    );
}

async fn one_drain(run: usize) {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let _bob = user(&s, "bob").await;
    let mut quic_authed = Raw::hello(s.addr, &s.fingerprint).await;
    quic_authed.login("bob").await;
    let quic_unauthed = Raw::hello(s.addr, &s.fingerprint).await;
    let mut ws_authed = RawWs::connect(&s).await;
    let login = Op::Login(pb::Login {
        username: "bob".into(),
        password: PASSWORD.into(),
        device_name: "raw".into(),
    });
    assert!(matches!(ws_authed.request(login).await, Res::Login(_)));
    let ws_unauthed = RawWs::connect(&s).await;
    let mut wt_authed = common::wt::RawWt::hello(&s).await;
    wt_authed.login("bob").await;
    let wt_unauthed = common::wt::RawWt::hello(&s).await;

    let endings = async {
        tokio::join!(
            quic_ending(quic_authed),
            quic_ending(quic_unauthed),
            ws_ending(ws_authed),
            ws_ending(ws_unauthed),
            wt_ending(wt_authed),
            wt_ending(wt_unauthed)
        )
    };
    let ((qa, qu, wa, wu, ta, tu), ()) = tokio::join!(endings, async {
        s.drain(std::time::Duration::from_millis(300)).await;
    });
    let shutting_down = pb::ErrorCode::ShuttingDown as u64;
    for (what, e, close) in [
        ("QUIC, authenticated", &qa, shutting_down),
        ("QUIC, not authenticated", &qu, shutting_down),
        ("WebSocket, authenticated", &wa, 4000 + shutting_down),
        ("WebSocket, not authenticated", &wu, 4000 + shutting_down),
        ("WebTransport, authenticated", &ta, shutting_down),
        ("WebTransport, not authenticated", &tu, shutting_down),
    ] {
        assert!(e.go_away, "run {run}, {what}: no GoAway ({e:?})");
        assert_eq!(
            e.error,
            Some(shutting_down as i32),
            "run {run}, {what}: ConnectionError first ({e:?})"
        );
        assert_eq!(e.close, Some(close), "run {run}, {what}: close code ({e:?})");
    }
    // Draining admits nobody new.
    assert!(
        open(&s, Some(wsmux::SUBPROTOCOL)).await.is_err(),
        "a WebSocket during the drain"
    );
    s.shutdown().await;
}

/// §8.2 on WebTransport: the closes the session layer starts say why first, exactly as on
/// QUIC — the older session of a device that authenticated again elsewhere reads
/// `ConnectionError CONFLICT` and closes with 5, a device logged out from another one reads
/// `TOKEN_REVOKED` and closes with 21. 20 tries each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_session_layer_closes_send_their_reason_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.rates.login_per_minute_per_user = 1_000;
    cfg.rates.login_per_minute_per_ip = 1_000;
    let s = natter_server::start(&cfg).await.unwrap();
    let bob = user(&s, "bob").await;
    let conflict = pb::ErrorCode::Conflict as u64;
    let revoked = pb::ErrorCode::TokenRevoked as u64;
    for run in 0..20 {
        // The same device on a second session: the first one ends with CONFLICT.
        let mut first = common::wt::RawWt::hello(&s).await;
        let ok = first.login("bob").await;
        let mut second = common::wt::RawWt::hello(&s).await;
        let ending = tokio::spawn(wt_ending(first));
        let auth = Op::Authenticate(pb::Authenticate {
            access_token: ok.access_token.clone(),
            ..Default::default()
        });
        assert!(matches!(second.request(auth).await, Res::Auth(_)), "run {run}");
        let e = ending.await.unwrap();
        assert_eq!(e.error, Some(conflict as i32), "run {run}: CONFLICT first ({e:?})");
        assert_eq!(e.close, Some(conflict), "run {run}: close code ({e:?})");

        // Logged out from another device: TOKEN_REVOKED.
        let ending = tokio::spawn(wt_ending(second));
        bob.client.logout(natter_sdk::DeviceId(ok.device_id)).await.unwrap();
        let e = ending.await.unwrap();
        assert_eq!(e.error, Some(revoked as i32), "run {run}: TOKEN_REVOKED first ({e:?})");
        assert_eq!(e.close, Some(revoked), "run {run}: close code ({e:?})");
    }
    s.shutdown().await;
}
