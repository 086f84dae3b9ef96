//! The app-facing model: the mapping from the wire and the session, and the JSON shape
//! JavaScript sees (which is the npm package's API, so it is pinned here).
use super::*;
use crate::session::SessionEvent;
use crate::{ClientMsgId, ConversationId, DeviceId, Seq, UserId};

fn wire_message(seq: u64, text: &str) -> pb::ConversationEvent {
    pb::ConversationEvent {
        conversation_id: 7,
        seq,
        sender_user_id: 2,
        sender_username: "bob".into(),
        sender_device_id: 3,
        server_time_ms: 1_000,
        body: Some(pb::conversation_event::Body::Message(pb::MessageEvent {
            client_msg_id: "m1".into(),
            body: Some(pb::MessageBody {
                text: text.into(),
                reply_to_seq: 4,
                mentions: vec![9],
                ..Default::default()
            }),
        })),
    }
}

#[test]
fn a_wire_event_becomes_a_typed_body() {
    let e = ConversationEvent::from(wire_message(5, "hi"));
    assert_eq!(
        e,
        ConversationEvent {
            conversation_id: 7,
            seq: 5,
            sender_user_id: 2,
            sender_username: "bob".into(),
            sender_device_id: 3,
            server_time_ms: 1_000,
            body: EventBody::Message {
                client_msg_id: "m1".into(),
                text: "hi".into(),
                reply_to_seq: 4,
                attachments: Vec::new(),
                mentions: vec![9],
                mention_here: false,
            },
        }
    );
    let empty = ConversationEvent::from(pb::ConversationEvent::default());
    assert_eq!(empty.body, EventBody::Unknown, "no body (a newer kind) is Unknown");
}

#[test]
fn a_summary_keeps_its_enums_and_unknown_wire_numbers_read_as_unspecified() {
    let c = Conversation::from(pb::ConversationSummary {
        conversation_id: 9,
        kind: pb::ConversationKind::Group as i32,
        my_role: 99,
        name: "team".into(),
        member_count: 3,
        last_message: Some(wire_message(1, "x")),
        receipts: vec![pb::MemberReceipt {
            user_id: 2,
            delivered_seq: 1,
            read_seq: 0,
        }],
        ..Default::default()
    });
    assert_eq!((c.kind, c.my_role), (ConversationKind::Group, Role::Unspecified));
    assert_eq!(c.last_message.map(|m| m.seq), Some(1));
    assert_eq!(
        c.receipts,
        vec![MemberReceipt {
            user_id: 2,
            delivered_seq: 1,
            read_seq: 0
        }]
    );
    assert_eq!(pb::Role::from(Role::Admin), pb::Role::Admin, "and back to the wire");
}

#[test]
fn session_events_for_the_app_map_and_the_sdks_own_do_not() {
    let connected = SessionEvent::Connected {
        user_id: UserId(1),
        username: "ann".into(),
        device_id: DeviceId(2),
        resumed: true,
    };
    assert_eq!(
        NatterEvent::from_session(connected),
        Some(NatterEvent::Connected {
            user_id: 1,
            username: "ann".into(),
            device_id: 2,
            resumed: true
        })
    );
    let refused = SessionEvent::SendFailed {
        client_msg_id: ClientMsgId("m9".into()),
        conversation_id: ConversationId(7),
        error: ServerError {
            code: pb::ErrorCode::RateLimited,
            message: "slow down".into(),
            retry_after_ms: 250,
            device_mismatch: None,
        },
    };
    assert_eq!(
        NatterEvent::from_session(refused),
        Some(NatterEvent::SendFailed {
            conversation_id: 7,
            client_msg_id: "m9".into(),
            error: ErrorInfo {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                retry_after_ms: 250
            },
        })
    );
    let acked = SessionEvent::SendAcked {
        client_msg_id: ClientMsgId("m1".into()),
        conversation_id: ConversationId(7),
        seq: Seq(3),
        server_time_ms: 1,
        duplicate: false,
    };
    assert_eq!(
        NatterEvent::from_session(acked),
        None,
        "an ack resolves the send instead"
    );
    let welcomed = SessionEvent::Welcomed {
        version: 1,
        limits: pb::Limits::default(),
    };
    assert_eq!(NatterEvent::from_session(welcomed), None);
}

#[cfg(feature = "serde")]
mod json {
    use super::*;
    use serde_json::json;

    #[test]
    fn javascript_sees_tagged_camel_case_events_with_string_enums() {
        let ev = NatterEvent::from_session(SessionEvent::Event(wire_message(5, "hi"))).unwrap();
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            json!({
                "type": "event",
                "event": {
                    "conversationId": 7, "seq": 5, "senderUserId": 2, "senderUsername": "bob",
                    "senderDeviceId": 3, "serverTimeMs": 1000,
                    "body": { "type": "message", "clientMsgId": "m1", "text": "hi", "replyToSeq": 4, "attachments": [],
                              "mentions": [9], "mentionHere": false }
                }
            })
        );
        let presence = NatterEvent::PresenceChanged {
            presence: Presence {
                user_id: 2,
                username: "bob".into(),
                state: PresenceState::Online,
                last_seen_ms: 0,
            },
        };
        assert_eq!(
            serde_json::to_value(&presence).unwrap(),
            json!({ "type": "presenceChanged",
                    "presence": { "userId": 2, "username": "bob", "state": "online", "lastSeenMs": 0 } })
        );
        let failed = NatterEvent::ConnectionError {
            error: ErrorInfo {
                code: ErrorCode::TokenRevoked,
                message: "logged out".into(),
                retry_after_ms: 0,
            },
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            json!({ "type": "connectionError",
                    "error": { "code": "TOKEN_REVOKED", "message": "logged out", "retryAfterMs": 0 } })
        );
    }

    #[test]
    fn every_error_code_has_the_wire_name_javascript_always_saw() {
        for n in 0..64 {
            let Ok(wire) = pb::ErrorCode::try_from(n) else { continue };
            let js = serde_json::to_value(ErrorCode::from(wire)).unwrap();
            let expected = wire.as_str_name().trim_start_matches("ERROR_CODE_");
            assert_eq!(js, json!(expected), "code {n}");
        }
    }

    #[test]
    fn an_event_read_back_from_javascript_is_the_same_and_unknown_bodies_survive() {
        let e = ConversationEvent::from(wire_message(5, "hi"));
        let back: ConversationEvent = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        let newer = json!({
            "conversationId": 7, "seq": 6, "senderUserId": 2, "senderUsername": "bob",
            "senderDeviceId": 3, "serverTimeMs": 1, "body": { "type": "poll", "question": "?" }
        });
        let read: ConversationEvent = serde_json::from_value(newer).unwrap();
        assert_eq!(read.body, EventBody::Unknown);
        let kind: ConversationKind = serde_json::from_value(json!("channel")).unwrap();
        assert_eq!(kind, ConversationKind::Channel);
    }
}
