//! In-memory tests of the session against a scripted server, with a fake clock.
use super::*;
use crate::codec::decode_frame;
use bytes::BytesMut;

/// Plays the server: reads what the session transmits, answers with frames.
struct Peer {
    s: ClientSession,
    now: Millis,
}

fn frame(kind: Kind) -> Bytes {
    encode_frame(&pb::Frame { kind: Some(kind) })
}

fn ev(conv: u64, seq: u64, text: &str) -> pb::ConversationEvent {
    pb::ConversationEvent {
        conversation_id: conv,
        seq,
        body: Some(pb::conversation_event::Body::Message(pb::MessageEvent {
            client_msg_id: format!("m{seq}"),
            body: Some(pb::MessageBody {
                text: text.into(),
                ..Default::default()
            }),
        })),
        ..Default::default()
    }
}

/// The first frame of conversation `conv`'s delivery stream.
fn header(conv: u64) -> Kind {
    Kind::StreamHeader(pb::StreamHeader {
        conversation_id: conv,
        ..Default::default()
    })
}

fn text(t: &str) -> pb::MessageBody {
    pb::MessageBody {
        text: t.into(),
        ..Default::default()
    }
}

impl Peer {
    fn new(token: Option<&str>) -> Self {
        // Acknowledgements at once, so each test sees them with the events that caused them;
        // the delay has its own test.
        let config = SessionConfig {
            ack_delay_ms: 0,
            ..Default::default()
        };
        Peer::with_config(config, token)
    }

    fn with_config(config: SessionConfig, token: Option<&str>) -> Self {
        Peer {
            s: ClientSession::new(config, token.map(String::from)),
            now: Millis(1_000),
        }
    }

    /// Every frame the session wants to send.
    fn sent(&mut self) -> Vec<pb::Frame> {
        let mut out = vec![];
        while let Some(b) = self.s.poll_transmit() {
            let mut buf = BytesMut::from(&b[..]);
            out.push(decode_frame(&mut buf, usize::MAX).unwrap().unwrap());
            assert!(buf.is_empty());
        }
        out
    }

    fn requests(&mut self) -> Vec<pb::Request> {
        self.sent()
            .into_iter()
            .map(|f| match f.kind {
                Some(Kind::Request(r)) => r,
                other => panic!("expected a request, got {other:?}"),
            })
            .collect()
    }

    /// Delivery acks (conversation, seq) apart from the other requests.
    fn acks_and_requests(&mut self) -> (Vec<(u64, u64)>, Vec<pb::Request>) {
        let mut acks = vec![];
        let mut rest = vec![];
        for r in self.requests() {
            match r.op {
                Some(Op::MarkDelivered(m)) => acks.push((m.conversation_id, m.seq)),
                _ => rest.push(r),
            }
        }
        (acks, rest)
    }

    fn events(&mut self) -> Vec<SessionEvent> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }

    fn delivered(&mut self) -> Vec<(u64, u64)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                SessionEvent::Event(e) => Some((e.conversation_id, e.seq)),
                _ => None,
            })
            .collect()
    }

    fn control(&mut self, kind: Kind) {
        self.s.handle_control_data(self.now, &frame(kind)).unwrap();
    }

    fn respond(&mut self, id: u64, result: Res) {
        self.control(Kind::Response(pb::Response {
            id,
            result: Some(result),
        }));
    }

    fn stream(&mut self, key: u64, frames: &[Kind]) {
        let bytes: Vec<u8> = frames.iter().flat_map(|k| frame(k.clone()).to_vec()).collect();
        self.s.handle_stream_data(self.now, StreamKey(key), &bytes).unwrap();
    }

    /// Connect and complete the handshake; returns the Authenticate request it triggers.
    fn handshake(&mut self) -> (u64, pb::Authenticate) {
        self.s.handle_connected(self.now);
        let hello = self.sent();
        assert!(matches!(&hello[..], [pb::Frame { kind: Some(Kind::Hello(h)) }] if h.versions == vec![1]));
        self.control(Kind::Welcome(pb::Welcome {
            version: 1,
            limits: Some(limits::default_limits()),
            ..Default::default()
        }));
        match &self.requests()[..] {
            [pb::Request {
                id,
                op: Some(Op::Authenticate(a)),
            }] => (*id, a.clone()),
            other => panic!("expected Authenticate, got {other:?}"),
        }
    }

    /// Connect, handshake and authenticate; returns the Authenticate request.
    fn connect(&mut self, ok: pb::AuthOk) -> pb::Authenticate {
        let (id, auth) = self.handshake();
        self.respond(id, Res::Auth(ok));
        assert_eq!(self.s.state(), State::Ready);
        auth
    }
}

fn auth_ok(resumed: bool, convs: Vec<pb::ConversationSummary>) -> pb::AuthOk {
    pb::AuthOk {
        user_id: 1,
        username: "alice".into(),
        device_id: 9,
        resume_token: "rt-1".into(),
        resume_window_secs: 120,
        resumed,
        conversations: convs,
        key_counts: None,
        token_expires_at_ms: 0,
    }
}

fn summary(conv: u64, last_seq: u64, joined_seq: u64) -> pb::ConversationSummary {
    pb::ConversationSummary {
        conversation_id: conv,
        last_seq,
        joined_seq,
        ..Default::default()
    }
}

#[test]
fn events_are_delivered_once_in_order_and_gaps_are_fetched() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![summary(5, 0, 1)]));
    p.events();
    p.stream(
        1,
        &[
            header(5),
            Kind::Event(ev(5, 1, "a")),
            Kind::Event(ev(5, 2, "b")),
            Kind::Event(ev(5, 2, "b again")),
            Kind::Event(ev(5, 5, "e")),
        ],
    );
    assert_eq!(p.delivered(), vec![(5, 1), (5, 2)]);
    // Seq 5 after 2: a gap, fetched from after 2.
    let (acks, reqs) = p.acks_and_requests();
    assert_eq!(acks, vec![(5, 2)], "one delivery ack with the highest seq delivered");
    let [pb::Request {
        id,
        op: Some(Op::History(h)),
    }] = &reqs[..]
    else {
        panic!("{reqs:?}")
    };
    assert_eq!(h.anchor, Some(pb::get_history::Anchor::After(2)));
    let id = *id;
    p.stream(1, &[Kind::Event(ev(5, 4, "d"))]);
    assert!(p.delivered().is_empty(), "still waiting for 3");
    p.respond(
        id,
        Res::History(pb::HistoryPage {
            conversation_id: 5,
            events: vec![ev(5, 3, "c"), ev(5, 4, "d"), ev(5, 5, "e")],
            has_more: false,
            last_seq: 5,
            ..Default::default()
        }),
    );
    assert_eq!(p.delivered(), vec![(5, 3), (5, 4), (5, 5)]);
    p.stream(1, &[Kind::Event(ev(5, 5, "dup")), Kind::Event(ev(5, 6, "f"))]);
    assert_eq!(p.delivered(), vec![(5, 6)]);
    assert_eq!(
        p.acks_and_requests(),
        (vec![(5, 5), (5, 6)], vec![]),
        "an ack after the gap filled, one after 6"
    );
}

#[test]
fn a_range_removed_by_retention_ends_the_gap_with_one_tombstone() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![summary(5, 0, 1)]));
    p.events();
    p.stream(1, &[header(5), Kind::Event(ev(5, 1, "a")), Kind::Event(ev(5, 2, "b"))]);
    assert_eq!(p.delivered(), vec![(5, 1), (5, 2)]);
    p.acks_and_requests();
    // Back after a long time: 3..=7 expired meanwhile; 9 arrives live, before 8.
    p.stream(1, &[Kind::Event(ev(5, 9, "i"))]);
    assert!(p.delivered().is_empty());
    let (_, reqs) = p.acks_and_requests();
    let (id, anchor) = history_request(&reqs);
    assert_eq!(anchor, Some(pb::get_history::Anchor::After(2)));
    p.respond(
        id,
        Res::History(pb::HistoryPage {
            conversation_id: 5,
            events: vec![ev(5, 8, "h")],
            has_more: true,
            last_seq: 9,
            removed_through: 7,
        }),
    );
    let seen: Vec<_> = p
        .events()
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Event(e) => Some(format!("event {}", e.seq)),
            SessionEvent::HistoryRemoved {
                conversation_id,
                through,
            } => Some(format!("removed {} through {}", conversation_id.0, through.0)),
            _ => None,
        })
        .collect();
    assert_eq!(seen, ["removed 5 through 7", "event 8", "event 9"]);
    let (acks, reqs) = p.acks_and_requests();
    assert_eq!(acks, vec![(5, 9)]);
    assert!(reqs.is_empty(), "no gap is left to fetch: {reqs:?}");
    // A page that says the same again tells the app nothing new.
    p.stream(1, &[Kind::Event(ev(5, 9, "dup")), Kind::Event(ev(5, 10, "j"))]);
    assert_eq!(p.delivered(), vec![(5, 10)]);
}

/// The one History request the session sent, as (request id, anchor).
fn history_request(reqs: &[pb::Request]) -> (u64, Option<pb::get_history::Anchor>) {
    match reqs {
        [pb::Request {
            id,
            op: Some(Op::History(h)),
        }] => (*id, h.anchor),
        other => panic!("expected one History request: {other:?}"),
    }
}

#[test]
fn a_new_conversation_first_seen_past_its_start_is_fetched_from_the_start_of_the_view() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![]));
    p.events();
    // With several nodes, this user's own message (seq 3, committed on this node) can
    // arrive before the creation and the first message (committed on another).
    p.stream(1, &[header(8), Kind::Event(ev(8, 3, "mine"))]);
    assert!(p.delivered().is_empty(), "3 is held until what came before is known");
    let (id, anchor) = history_request(&p.acks_and_requests().1);
    assert_eq!(anchor, Some(pb::get_history::Anchor::After(0)), "from the start");
    p.respond(
        id,
        Res::History(pb::HistoryPage {
            conversation_id: 8,
            events: vec![ev(8, 1, "created"), ev(8, 2, "first"), ev(8, 3, "mine")],
            has_more: false,
            last_seq: 3,
            ..Default::default()
        }),
    );
    assert_eq!(
        p.delivered(),
        vec![(8, 1), (8, 2), (8, 3)],
        "nothing skipped, once each"
    );
    p.stream(1, &[Kind::Event(ev(8, 1, "late")), Kind::Event(ev(8, 2, "late"))]);
    assert!(
        p.delivered().is_empty(),
        "the overtaken events come late, and only once"
    );

    // A member whose view begins later (added at 5): the page starts there.
    p.stream(3, &[header(9), Kind::Event(ev(9, 7, "g"))]);
    let (id, anchor) = history_request(&p.acks_and_requests().1);
    assert_eq!(anchor, Some(pb::get_history::Anchor::After(0)));
    p.respond(
        id,
        Res::History(pb::HistoryPage {
            conversation_id: 9,
            events: vec![ev(9, 5, "added"), ev(9, 6, "f"), ev(9, 7, "g")],
            has_more: false,
            last_seq: 7,
            ..Default::default()
        }),
    );
    assert_eq!(p.delivered(), vec![(9, 5), (9, 6), (9, 7)]);

    // Being added begins the view: delivered at once, nothing fetched.
    let mut added = ev(10, 40, "");
    added.body = Some(pb::conversation_event::Body::MembersAdded(pb::MembersAdded {
        members: vec![pb::Member {
            user_id: 1,
            ..Default::default()
        }],
    }));
    p.stream(5, &[header(10), Kind::Event(added)]);
    assert_eq!(p.delivered(), vec![(10, 40)]);
    assert!(p.acks_and_requests().1.is_empty(), "no fetch");
}

#[test]
fn delivery_acks_wait_their_delay_and_cover_a_burst_with_one_per_conversation() {
    let mut p = Peer::with_config(SessionConfig::default(), Some("tok"));
    p.connect(auth_ok(false, vec![summary(5, 0, 1), summary(6, 0, 1)]));
    p.events();
    let start = p.now;
    p.stream(1, &[header(5), Kind::Event(ev(5, 1, "a")), Kind::Event(ev(5, 2, "b"))]);
    p.stream(3, &[header(6), Kind::Event(ev(6, 1, "c"))]);
    assert_eq!(p.delivered().len(), 3, "the app gets events at once");
    assert_eq!(p.acks_and_requests().0, vec![], "acks wait");
    let due = p.s.poll_timeout().expect("a timer for the acks");
    assert_eq!(
        due,
        start.plus(100),
        "SessionConfig::ack_delay_ms after the first event"
    );
    p.now = start.plus(60);
    p.stream(1, &[Kind::Event(ev(5, 3, "d"))]);
    p.s.handle_timeout(p.now);
    assert_eq!(
        p.acks_and_requests().0,
        vec![],
        "a later event does not move the deadline, nor send early"
    );
    p.now = due;
    p.s.handle_timeout(p.now);
    assert_eq!(
        p.acks_and_requests().0,
        vec![(5, 3), (6, 1)],
        "one cumulative ack per conversation"
    );
    assert_eq!(p.s.poll_timeout().map(|t| t > due), Some(true), "no ack timer left");
}

#[test]
fn with_ack_by_app_nothing_is_acknowledged_until_the_app_says_so() {
    let config = SessionConfig {
        ack_by_app: true,
        ack_delay_ms: 0,
        ..Default::default()
    };
    let mut p = Peer::with_config(config, Some("tok"));
    p.connect(auth_ok(false, vec![summary(5, 0, 1)]));
    p.events();
    p.stream(1, &[header(5), Kind::Event(ev(5, 1, "a")), Kind::Event(ev(5, 2, "b"))]);
    assert_eq!(p.delivered(), vec![(5, 1), (5, 2)]);
    assert_eq!(p.acks_and_requests(), (vec![], vec![]), "delivered, not acknowledged");
    p.s.acknowledge(p.now, ConversationId(5), Seq(1));
    assert_eq!(p.acks_and_requests().0, vec![(5, 1)], "up to what the app has written");
    p.s.acknowledge(p.now, ConversationId(5), Seq(2));
    assert_eq!(p.acks_and_requests().0, vec![(5, 2)]);
}

#[test]
fn cursor_sync_fetches_what_a_known_conversation_missed_and_backfills_new_ones() {
    let mut p = Peer::new(Some("tok"));
    p.s.restore(None, [(ConversationId(5), Seq(3)), (ConversationId(6), Seq(2))]);
    let (id, auth) = p.handshake();
    // Conversation 6 is gone (we left); 7 is new with 500 events, joined at 1.
    p.respond(
        id,
        Res::Auth(auth_ok(false, vec![summary(5, 4, 1), summary(7, 500, 1)])),
    );
    assert_eq!(auth.cursors.len(), 2);
    let mut afters: Vec<(u64, Option<pb::get_history::Anchor>)> = p
        .requests()
        .into_iter()
        .map(|r| match r.op {
            Some(Op::History(h)) => (h.conversation_id, h.anchor),
            other => panic!("{other:?}"),
        })
        .collect();
    afters.sort_by_key(|a| a.0);
    use pb::get_history::Anchor::After;
    assert_eq!(afters, vec![(5, Some(After(3))), (7, Some(After(450)))]);
    assert_eq!(
        p.s.cursors(),
        vec![(ConversationId(5), Seq(3)), (ConversationId(7), Seq(450))]
    );
}

#[test]
fn events_before_auth_ok_wait_for_it() {
    let mut p = Peer::new(Some("tok"));
    p.s.restore(Some("rt-0".into()), [(ConversationId(5), Seq(1))]);
    let (id, a) = p.handshake();
    assert_eq!(a.resume_token, "rt-0");
    // The replay overtakes the AuthOk on another stream.
    p.stream(3, &[header(5), Kind::Event(ev(5, 2, "x"))]);
    assert!(p.delivered().is_empty());
    p.respond(id, Res::Auth(auth_ok(true, vec![])));
    assert_eq!(p.delivered(), vec![(5, 2)]);
    assert_eq!(p.s.resume_token(), Some("rt-1"));
}

#[test]
fn the_outbox_survives_a_disconnect_and_resends_with_the_same_id() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![]));
    p.s.send_message(p.now, ConversationId(5), ClientMsgId("c1".into()), text("hi"))
        .unwrap();
    let first = p.requests();
    let [pb::Request {
        op: Some(Op::Send(s1)), ..
    }] = &first[..]
    else {
        panic!()
    };
    assert_eq!(s1.client_msg_id, "c1");
    p.s.handle_disconnected(p.now, "test");
    assert_eq!(p.s.outbox().len(), 1);
    p.connect(auth_ok(true, vec![]));
    let again = p.requests();
    let [pb::Request {
        id,
        op: Some(Op::Send(s2)),
    }] = &again[..]
    else {
        panic!("{again:?}")
    };
    assert_eq!(s2.client_msg_id, "c1");
    p.respond(
        *id,
        Res::Sent(pb::SendOk {
            conversation_id: 5,
            seq: 1,
            server_time_ms: 7,
            duplicate: true,
        }),
    );
    let acks: Vec<_> = p
        .events()
        .into_iter()
        .filter(|e| matches!(e, SessionEvent::SendAcked { .. }))
        .collect();
    assert_eq!(acks.len(), 1);
    assert!(p.s.outbox().is_empty());
}

#[test]
fn a_send_without_a_response_is_resent_after_the_timeout_and_acked_once() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![]));
    p.s.send_message(p.now, ConversationId(5), ClientMsgId("c1".into()), text("hi"))
        .unwrap();
    let r1 = p.requests();
    let deadline = p.s.poll_timeout().unwrap();
    p.now = deadline;
    p.s.handle_timeout(deadline);
    // (A heartbeat may fall due at the same instant; only the sends matter here.)
    let r2: Vec<pb::Request> = p
        .requests()
        .into_iter()
        .filter(|r| matches!(r.op, Some(Op::Send(_))))
        .collect();
    assert_eq!(r2.len(), 1);
    assert_ne!(r1[0].id, r2[0].id);
    // The stale response is ignored, the fresh one acks.
    p.respond(
        r1[0].id,
        Res::Sent(pb::SendOk {
            conversation_id: 5,
            seq: 1,
            ..Default::default()
        }),
    );
    p.respond(
        r2[0].id,
        Res::Sent(pb::SendOk {
            conversation_id: 5,
            seq: 1,
            duplicate: true,
            ..Default::default()
        }),
    );
    let acks = p
        .events()
        .into_iter()
        .filter(|e| matches!(e, SessionEvent::SendAcked { .. }))
        .count();
    assert_eq!(acks, 1);
}

#[test]
fn requests_time_out_and_fail_on_disconnect_with_typed_errors() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![]));
    p.events();
    let a =
        p.s.request(p.now, Op::ListConversations(pb::ListConversations {}))
            .unwrap();
    p.requests();
    p.now = p.s.poll_timeout().unwrap();
    p.s.handle_timeout(p.now);
    assert_eq!(
        p.events(),
        vec![SessionEvent::Response {
            id: a,
            result: Err(RequestError::Timeout)
        }]
    );
    let b = p.s.request(p.now, Op::ListDevices(pb::ListDevices {})).unwrap();
    p.s.handle_disconnected(p.now, "test");
    assert_eq!(
        p.events(),
        vec![
            SessionEvent::Response {
                id: b,
                result: Err(RequestError::ConnectionLost)
            },
            SessionEvent::Disconnected { reason: "test".into() },
        ]
    );
}

#[test]
fn bad_input_is_refused_locally() {
    let mut p = Peer::new(None);
    let long = "x".repeat(limits::MAX_TEXT_CHARS + 1);
    assert!(matches!(
        p.s.send_message(p.now, ConversationId(1), ClientMsgId("a".into()), text(&long)),
        Err(ValidationError::TextTooLong { .. })
    ));
    assert_eq!(
        p.s.send_message(p.now, ConversationId(1), ClientMsgId("a b".into()), text("x")),
        Err(ValidationError::ClientMsgId)
    );
    assert!(p
        .s
        .request(
            p.now,
            Op::Register(pb::Register {
                username: "X".into(),
                password: "password1".into()
            })
        )
        .is_err());
}

#[test]
fn login_overtakes_requests_waiting_for_auth_which_follow_it() {
    let mut p = Peer::new(None);
    let list =
        p.s.request(p.now, Op::ListConversations(pb::ListConversations {}))
            .unwrap();
    let login =
        p.s.request(
            p.now,
            Op::Login(pb::Login {
                username: "alice".into(),
                password: "password1".into(),
                device_name: "laptop".into(),
            }),
        )
        .unwrap();
    p.s.handle_connected(p.now);
    p.sent();
    p.control(Kind::Welcome(pb::Welcome {
        version: 1,
        ..Default::default()
    }));
    assert_eq!(p.s.state(), State::Unauthenticated);
    let reqs = p.requests();
    assert_eq!(reqs.iter().map(|r| r.id).collect::<Vec<_>>(), vec![login.0]);
    p.respond(
        login.0,
        Res::Login(pb::LoginOk {
            user_id: 1,
            device_id: 2,
            access_token: "secret".into(),
            session: Some(auth_ok(false, vec![])),
        }),
    );
    assert_eq!(p.s.state(), State::Ready);
    assert_eq!(p.s.access_token(), Some("secret"));
    let reqs = p.requests();
    assert_eq!(reqs.iter().map(|r| r.id).collect::<Vec<_>>(), vec![list.0]);
}

#[test]
fn a_revoked_token_reports_auth_failed() {
    let mut p = Peer::new(Some("old"));
    p.s.handle_connected(p.now);
    p.sent();
    p.control(Kind::Welcome(pb::Welcome {
        version: 1,
        ..Default::default()
    }));
    let reqs = p.requests();
    p.control(Kind::Response(pb::Response {
        id: reqs[0].id,
        result: Some(Res::Error(pb::Error {
            code: pb::ErrorCode::TokenRevoked as i32,
            ..Default::default()
        })),
    }));
    assert!(p
        .events()
        .iter()
        .any(|e| matches!(e, SessionEvent::AuthFailed(e) if e.code == pb::ErrorCode::TokenRevoked)));
    assert_eq!(p.s.access_token(), None);
    assert_eq!(p.s.state(), State::Unauthenticated);
}

#[test]
fn a_server_choosing_an_unknown_version_is_a_session_error() {
    let mut p = Peer::new(None);
    p.s.handle_connected(p.now);
    p.sent();
    let bytes = frame(Kind::Welcome(pb::Welcome {
        version: 2,
        ..Default::default()
    }));
    assert!(matches!(
        p.s.handle_control_data(p.now, &bytes),
        Err(SessionError::UnsupportedVersion(2))
    ));
}

#[test]
fn typing_renewals_are_rate_limited_and_indicators_expire_by_themselves() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![]));
    p.s.set_datagrams_supported(true);
    let t0 = p.now;
    let ttl = u64::from(limits::TYPING_TTL_MS);
    p.s.typing(t0, ConversationId(5));
    p.s.typing(t0.plus(ttl / 2 - 1), ConversationId(5));
    assert_eq!(
        std::iter::from_fn(|| p.s.poll_datagram()).count(),
        1,
        "a renewal inside ttl/2 is dropped"
    );
    p.s.typing(t0.plus(ttl / 2), ConversationId(5));
    assert_eq!(
        std::iter::from_fn(|| p.s.poll_datagram()).count(),
        1,
        "after ttl/2 it is renewed"
    );
    // Someone else's indicator shows until its expiry, then stops without any input.
    let update = pb::TypingUpdate {
        conversation_id: 5,
        user_id: 2,
        username: "bob".into(),
        expires_in_ms: 6000,
    };
    let frame = pb::Frame {
        kind: Some(Kind::Signal(pb::Signal {
            kind: Some(pb::signal::Kind::Typing(update)),
        })),
    };
    p.s.handle_datagram(t0, &prost::Message::encode_to_vec(&frame));
    p.events();
    assert_eq!(p.s.poll_timeout().map(|t| t <= t0.plus(6000)), Some(true));
    p.s.handle_timeout(t0.plus(5999));
    assert!(!p
        .events()
        .iter()
        .any(|e| matches!(e, SessionEvent::TypingStopped { .. })));
    p.s.handle_timeout(t0.plus(6000));
    assert!(p
        .events()
        .iter()
        .any(|e| matches!(e, SessionEvent::TypingStopped { user_id: UserId(2), .. })));
}

#[test]
fn a_message_ends_typing_on_both_sides() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![]));
    p.s.set_datagrams_supported(true);
    let t0 = p.now;
    let conv = ConversationId(5);
    p.s.typing(t0, conv);
    p.s.send_message(t0.plus(10), conv, ClientMsgId("m1".into()), text("hi"))
        .unwrap();
    let _ = std::iter::from_fn(|| p.s.poll_datagram()).count();
    // Typing again right after sending announces at once (no renewal throttle).
    p.s.typing(t0.plus(20), conv);
    assert_eq!(std::iter::from_fn(|| p.s.poll_datagram()).count(), 1);

    // Bob's indicator stops when his message arrives, not only when it expires.
    let update = pb::TypingUpdate {
        conversation_id: 5,
        user_id: 2,
        username: "bob".into(),
        expires_in_ms: 6000,
    };
    let signal = pb::Frame {
        kind: Some(Kind::Signal(pb::Signal {
            kind: Some(pb::signal::Kind::Typing(update)),
        })),
    };
    p.s.handle_datagram(t0, &prost::Message::encode_to_vec(&signal));
    assert!(p.events().iter().any(|e| matches!(e, SessionEvent::Typing { .. })));
    let mut m = ev(5, 1, "hi");
    m.sender_user_id = 2;
    p.stream(1, &[header(5), Kind::Event(m)]);
    let evs = p.events();
    let at = |f: &dyn Fn(&SessionEvent) -> bool| evs.iter().position(f);
    let event = at(&|e| matches!(e, SessionEvent::Event(_))).expect("the message");
    let stopped = at(&|e| matches!(e, SessionEvent::TypingStopped { user_id: UserId(2), .. })).expect("typing stopped");
    assert!(event < stopped, "the message shows before the indicator goes");
}

#[test]
fn only_a_refused_token_logs_out_other_authentication_errors_reconnect() {
    use pb::response::Result as R;
    for (code, logs_out) in [
        (pb::ErrorCode::Unauthenticated, true),
        (pb::ErrorCode::TokenRevoked, true),
        (pb::ErrorCode::InvalidToken, true),
        (pb::ErrorCode::LimitExceeded, false),
        (pb::ErrorCode::Internal, false),
        (pb::ErrorCode::BadRequest, false),
    ] {
        let mut p = Peer::new(Some("tok"));
        let (id, _) = p.handshake();
        p.respond(id, R::Error(ServerError::new(code, "no").into()));
        let evs = p.events();
        if logs_out {
            assert!(evs.iter().any(|e| matches!(e, SessionEvent::AuthFailed(_))), "{code:?}");
            assert_eq!(p.s.access_token(), None);
        } else {
            assert!(
                evs.iter().any(|e| matches!(e, SessionEvent::ConnectionError(_))),
                "{code:?}"
            );
            assert!(
                !evs.iter().any(|e| matches!(e, SessionEvent::AuthFailed(_))),
                "{code:?}"
            );
            assert_eq!(p.s.access_token(), Some("tok"), "{code:?} keeps the login");
        }
    }
}

#[test]
fn an_expired_product_token_waits_for_a_fresh_one_and_keeps_the_login() {
    use pb::response::Result as R;
    let mut p = Peer::new(Some("tok"));
    let (id, first) = p.handshake();
    assert_eq!(first.product_token, "");
    p.respond(
        id,
        R::Error(ServerError::new(pb::ErrorCode::TokenExpired, "expired").into()),
    );
    let evs = p.events();
    assert!(evs
        .iter()
        .any(|e| matches!(e, SessionEvent::TokenNeeded { expires_at_ms: 0 })));
    assert!(!evs.iter().any(|e| matches!(e, SessionEvent::AuthFailed(_))));
    assert_eq!(p.s.access_token(), Some("tok"), "the device stays logged in");
    assert!(p.requests().is_empty(), "nothing is sent until a token comes");

    // The fresh token goes out with Authenticate, and the session is ready.
    p.s.set_product_token(p.now, "jwt-2".into());
    let reqs = p.requests();
    let [pb::Request {
        id,
        op: Some(Op::Authenticate(a)),
    }] = &reqs[..]
    else {
        panic!("expected Authenticate, got {reqs:?}")
    };
    assert_eq!((a.access_token.as_str(), a.product_token.as_str()), ("tok", "jwt-2"));
    p.respond(*id, R::Auth(auth_ok(false, vec![])));
    assert_eq!(p.s.state(), State::Ready);

    // Told the token expires soon: the app is asked, and its token renews it in place.
    p.control(Kind::Signal(pb::Signal {
        kind: Some(pb::signal::Kind::TokenExpiring(pb::TokenExpiring { expires_at_ms: 99 })),
    }));
    assert!(p
        .events()
        .iter()
        .any(|e| matches!(e, SessionEvent::TokenNeeded { expires_at_ms: 99 })));
    p.s.set_product_token(p.now, "jwt-3".into());
    let reqs = p.requests();
    assert!(
        matches!(&reqs[..], [pb::Request { op: Some(Op::RefreshToken(r)), .. }] if r.token == "jwt-3"),
        "{reqs:?}"
    );
}

#[test]
fn a_refused_refresh_keeps_the_token_that_works_and_requests_fail_with_a_refused_login() {
    use pb::response::Result as R;
    let mut p = Peer::new(Some("tok"));
    let (id, _) = p.handshake();
    p.respond(id, R::Auth(auth_ok(false, vec![])));
    p.s.set_product_token(p.now, "good".into());
    p.requests();
    let bad =
        p.s.request(
            p.now,
            Op::RefreshToken(pb::RefreshToken {
                token: "other user's".into(),
            }),
        )
        .unwrap();
    p.requests();
    p.respond(
        bad.0,
        R::Error(ServerError::new(pb::ErrorCode::InvalidToken, "another user").into()),
    );
    p.s.handle_disconnected(p.now, "test");
    let (_, auth) = p.handshake();
    assert_eq!(auth.product_token, "good", "only an accepted token is kept");

    // A request queued behind an Authenticate that is refused fails with the refusal
    // instead of waiting forever.
    let mut p = Peer::new(Some("revoked"));
    let queued =
        p.s.request(p.now, Op::ListConversations(pb::ListConversations {}))
            .unwrap();
    let (id, _) = p.handshake();
    p.respond(
        id,
        R::Error(ServerError::new(pb::ErrorCode::TokenRevoked, "gone").into()),
    );
    let evs = p.events();
    assert!(
        evs.iter().any(
            |e| matches!(e, SessionEvent::Response { id, result: Err(RequestError::Server(e)) }
        if *id == queued && e.code == pb::ErrorCode::TokenRevoked)
        ),
        "{evs:?}"
    );
}

#[test]
fn an_app_that_keeps_giving_expired_tokens_is_logged_out() {
    use pb::response::Result as R;
    let mut p = Peer::new(Some("tok"));
    let (mut id, _) = p.handshake();
    for round in 0..5 {
        p.respond(
            id,
            R::Error(ServerError::new(pb::ErrorCode::TokenExpired, "expired").into()),
        );
        if p.events().iter().any(|e| matches!(e, SessionEvent::AuthFailed(_))) {
            assert_eq!(round, 4, "logged out after the fourth stale token");
            assert_eq!(p.s.access_token(), None);
            return;
        }
        p.s.set_product_token(p.now, format!("stale-{round}"));
        id = p.requests()[0].id;
    }
    panic!("never logged out");
}

#[test]
fn a_token_login_goes_before_authentication_and_keeps_the_token() {
    let mut p = Peer::new(None);
    p.s.handle_connected(p.now);
    p.sent();
    p.control(Kind::Welcome(pb::Welcome {
        version: 1,
        ..Default::default()
    }));
    let bad = p.s.request(
        p.now,
        Op::TokenLogin(pb::TokenLogin {
            token: "x".repeat(limits::MAX_PRODUCT_TOKEN_BYTES + 1),
            device_name: String::new(),
        }),
    );
    assert!(bad.is_err(), "an oversized token is refused locally");
    p.s.request(
        p.now,
        Op::TokenLogin(pb::TokenLogin {
            token: "jwt".into(),
            device_name: "phone".into(),
        }),
    )
    .unwrap();
    assert!(matches!(
        &p.requests()[..],
        [pb::Request {
            op: Some(Op::TokenLogin(_)),
            ..
        }]
    ));
    // Reconnecting later sends it along with the access token.
    p.s.handle_disconnected(p.now, "test");
    p.s.set_access_token(Some("tok".into()));
    let (_, auth) = p.handshake();
    assert_eq!(auth.product_token, "jwt");
}

#[test]
fn unread_counts_stay_capped_and_cheap_in_a_conversation_nobody_reads() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![summary(5, 0, 1)]));
    p.events();
    let n = 5_000u64;
    let frames: Vec<Kind> = std::iter::once(header(5))
        .chain((1..=n).map(|seq| {
            let mut e = ev(5, seq, "x");
            e.sender_user_id = 99;
            Kind::Event(e)
        }))
        .collect();
    p.stream(1, &frames);
    assert_eq!(p.s.unread(ConversationId(5)), Some(limits::MAX_UNREAD_COUNT));
    let st = &p.s.convs[&ConversationId(5)];
    assert!(
        st.unread_new.len() <= limits::MAX_UNREAD_COUNT as usize + 1,
        "bounded memory"
    );
}

#[test]
fn heartbeats_run_only_while_ready_at_the_servers_interval() {
    let mut p = Peer::new(Some("nt_x"));
    let (id, _) = p.handshake();
    assert_eq!(p.s.state(), State::Authenticating);
    let interval = u64::from(limits::default_limits().heartbeat_interval_ms.max(100));
    // While authenticating only the Authenticate request's deadline is armed.
    assert_eq!(
        p.s.poll_timeout(),
        Some(p.now.plus(SessionConfig::default().request_timeout_ms))
    );
    p.respond(id, Res::Auth(auth_ok(true, vec![])));
    p.sent();
    assert_eq!(
        p.s.poll_timeout(),
        Some(p.now.plus(interval)),
        "the next heartbeat is due"
    );
    p.now = p.now.plus(interval);
    p.s.handle_timeout(p.now);
    let beats = p
        .requests()
        .into_iter()
        .filter(|r| matches!(r.op, Some(Op::Heartbeat(_))))
        .count();
    assert_eq!(beats, 1);
    // Disconnected: no heartbeat is due until the session is established again.
    p.s.handle_disconnected(p.now, "gone");
    p.now = p.now.plus(interval * 3);
    p.s.handle_timeout(p.now);
    assert!(p.sent().is_empty());
    assert_eq!(p.s.poll_timeout(), None, "nothing armed while disconnected");
}

/// PROTOCOL.md §4.1: the server refuses a `Hello.client` over 128 bytes, so the session
/// cuts a longer client name at a character boundary instead of getting refused.
#[test]
fn a_long_client_name_is_cut_to_128_bytes_at_a_character_boundary() {
    let config = SessionConfig {
        client_name: "é".repeat(100),
        ..SessionConfig::default()
    };
    let mut s = ClientSession::new(config, None);
    s.handle_connected(Millis(0));
    let mut buf = BytesMut::from(&s.poll_transmit().expect("Hello")[..]);
    let Some(pb::Frame {
        kind: Some(Kind::Hello(hello)),
    }) = decode_frame(&mut buf, usize::MAX).unwrap()
    else {
        panic!("the first frame is Hello")
    };
    assert_eq!(hello.client, "é".repeat(64), "128 bytes, whole characters");
}

/// This user's (user 1's) cursors in conversation 5 as another of its devices moved them:
/// the server's `ReceiptUpdate` with an unread count of 0 as of `last_seq`.
fn own_update(p: &mut Peer, delivered_seq: u64, read_seq: u64, last_seq: u64) {
    p.control(Kind::Signal(pb::Signal {
        kind: Some(pb::signal::Kind::Receipt(pb::ReceiptUpdate {
            conversation_id: 5,
            user_id: 1,
            delivered_seq,
            read_seq,
            unread_count: 0,
            last_seq,
        })),
    }))
}

#[test]
fn the_unread_count_follows_others_messages_the_read_cursor_and_ones_own_sends() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![summary(5, 0, 1)]));
    let others = |seqs: std::ops::RangeInclusive<u64>| -> Vec<Kind> {
        std::iter::once(header(5))
            .chain(seqs.map(|seq| {
                let mut e = ev(5, seq, "x");
                e.sender_user_id = 2;
                Kind::Event(e)
            }))
            .collect()
    };
    let unread = |p: &Peer| p.s.unread(ConversationId(5));
    p.stream(1, &others(1..=10));
    assert_eq!(unread(&p), Some(10));
    // This user read up to 4 elsewhere; the server's count (0) is as of seq 4.
    let read_elsewhere = |p: &mut Peer, read_seq: u64, last_seq: u64| own_update(p, read_seq, read_seq, last_seq);
    read_elsewhere(&mut p, 4, 4);
    assert_eq!(unread(&p), Some(6));
    // A read cursor past the count's seq: what it passed is read all the same.
    read_elsewhere(&mut p, 8, 6);
    assert_eq!(unread(&p), Some(2));
    // An older update changes nothing.
    read_elsewhere(&mut p, 3, 3);
    assert_eq!(unread(&p), Some(2));
    // Sending reads the conversation up to one's own message.
    let mut mine = ev(5, 11, "mine");
    mine.sender_user_id = 1;
    p.stream(1, &[Kind::Event(mine)]);
    assert_eq!(unread(&p), Some(0));
    p.stream(1, &others(12..=13)[1..]);
    assert_eq!(unread(&p), Some(2));
}

#[test]
fn a_delivery_acks_done_is_this_users_own_receipt_and_a_refusal_is_not() {
    let mut p = Peer::new(Some("tok"));
    p.connect(auth_ok(false, vec![summary(5, 0, 1)]));
    let from_bob = |seq: u64| {
        let mut e = ev(5, seq, "x");
        e.sender_user_id = 2;
        Kind::Event(e)
    };
    let own_receipts = |p: &mut Peer| -> Vec<(u64, u64)> {
        p.events()
            .into_iter()
            .filter_map(|e| match e {
                SessionEvent::Receipt {
                    user_id: UserId(1),
                    delivered_seq,
                    read_seq,
                    ..
                } => Some((delivered_seq.0, read_seq.0)),
                _ => None,
            })
            .collect()
    };
    p.stream(1, &[header(5), from_bob(1), from_bob(2)]);
    let ack_id = |p: &mut Peer| {
        let reqs = p.requests();
        let [pb::Request {
            id,
            op: Some(Op::MarkDelivered(m)),
        }] = &reqs[..]
        else {
            panic!("one delivery ack: {reqs:?}")
        };
        (*id, m.seq)
    };
    let (id, seq) = ack_id(&mut p);
    assert_eq!(seq, 2);
    assert!(own_receipts(&mut p).is_empty(), "nothing before the server accepts it");
    // The server's Done moves this user's delivered cursor; it sends this device no
    // ReceiptUpdate of its own for that (PROTOCOL.md §5.10).
    p.respond(id, Res::Done(pb::Done {}));
    assert_eq!(own_receipts(&mut p), vec![(2, 0)]);
    // Read elsewhere up to 2: the read cursor is kept when a later ack moves delivery.
    own_update(&mut p, 2, 2, 2);
    assert_eq!(own_receipts(&mut p), vec![(2, 2)]);
    p.stream(1, &[from_bob(3)]);
    let (id, _) = ack_id(&mut p);
    p.respond(id, Res::Done(pb::Done {}));
    assert_eq!(own_receipts(&mut p), vec![(3, 2)]);
    // Another device's ack took the cursor there first: its update is the one event, and
    // the Done (the server did not move the cursor) adds none.
    p.stream(1, &[from_bob(4)]);
    let (id, _) = ack_id(&mut p);
    own_update(&mut p, 4, 2, 0);
    p.respond(id, Res::Done(pb::Done {}));
    assert_eq!(own_receipts(&mut p), vec![(4, 2)]);
    // A refused ack moves nothing.
    p.stream(1, &[from_bob(5)]);
    let (id, _) = ack_id(&mut p);
    p.respond(
        id,
        Res::Error(pb::Error {
            code: pb::ErrorCode::NotMember as i32,
            message: "gone".into(),
            ..Default::default()
        }),
    );
    assert!(own_receipts(&mut p).is_empty());
}
