//! Test helpers shared by the search tests: the events of a conversation as the store
//! commits them.
use natter_protocol::pb::{self, conversation_event::Body};
use natter_protocol::ConversationId;

use crate::store::{Commit, ConversationMeta};

/// Event `seq` of `conv` with `body`, from user 7 at time 1000 + seq.
pub(super) fn event(conv: ConversationId, seq: u64, body: Body) -> pb::ConversationEvent {
    pb::ConversationEvent {
        conversation_id: conv.0,
        seq,
        sender_user_id: 7,
        server_time_ms: 1_000 + seq,
        body: Some(body),
        ..Default::default()
    }
}

/// A text message body.
pub(super) fn message(text: &str) -> Body {
    Body::Message(pb::MessageEvent {
        client_msg_id: text.into(),
        body: Some(pb::MessageBody {
            text: text.into(),
            ..Default::default()
        }),
    })
}

/// The commit that creates group `conv` (seq 1).
pub(super) fn created(conv: ConversationId) -> Commit {
    Commit {
        event: event(conv, 1, Body::Created(pb::ConversationCreated::default())),
        meta: Some(ConversationMeta {
            id: conv,
            kind: pb::ConversationKind::Group,
            name: "g".into(),
            created_ms: 1,
            deleted: false,
            encrypted: false,
            devices: Vec::new(),
            moderation: Default::default(),
            retention_secs: None,
        }),
        ..Default::default()
    }
}
