//! What JavaScript sees: session events, errors, statuses and the server's discovery
//! document as plain serde values. Pure (no browser APIs), so it is tested natively and
//! under Node alike; every name here is part of the npm package's API (see `natter.d.ts`).
use natter_protocol::pb;
use natter_protocol::session::{DeliveryState, MessageStatus, RequestError};
use natter_protocol::{ServerError, SessionEvent};
use serde::{Deserialize, Serialize};

/// An event for the app. `type` names the variant; fields are camelCase.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum JsEvent {
    /// A transport connected (before the handshake): "webtransport" or "websocket".
    Transport {
        /// Which one.
        name: String,
    },
    /// Authenticated (after login, or on every reconnect).
    Connected {
        /// Who we are.
        user_id: u64,
        /// Our username.
        username: String,
        /// This device.
        device_id: u64,
        /// The previous session was resumed.
        resumed: bool,
    },
    /// The connection dropped; the client reconnects by itself.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The stored access token was refused: log in again.
    AuthFailed {
        /// Why.
        error: JsError,
    },
    /// Every conversation, after a (non-resumed) connect.
    Conversations {
        /// Summaries.
        conversations: Vec<pb::ConversationSummary>,
    },
    /// A conversation event (message, edit, membership…), exactly once and in order.
    Event {
        /// The event.
        event: pb::ConversationEvent,
    },
    /// A member's delivered/read cursors moved.
    Receipt {
        /// Where.
        conversation_id: u64,
        /// Whose.
        user_id: u64,
        /// Delivered up to.
        delivered_seq: u64,
        /// Read up to.
        read_seq: u64,
    },
    /// Your unread count changed (on any of your devices).
    Unread {
        /// Where.
        conversation_id: u64,
        /// Your read cursor.
        read_seq: u64,
        /// Unread messages.
        unread_count: u32,
    },
    /// A contact's presence.
    Presence {
        /// Who.
        user_id: u64,
        /// Their name.
        username: String,
        /// "online", "away" or "offline".
        state: String,
        /// Last seen (ms since the epoch; 0 if hidden or unknown).
        last_seen_ms: u64,
    },
    /// Someone is typing.
    Typing {
        /// Where.
        conversation_id: u64,
        /// Who.
        user_id: u64,
        /// Their name.
        username: String,
    },
    /// Someone's typing indicator expired.
    TypingStopped {
        /// Where.
        conversation_id: u64,
        /// Who.
        user_id: u64,
    },
    /// Our typing notice was refused.
    TypingRejected {
        /// Where.
        conversation_id: u64,
        /// Why.
        error: JsError,
    },
    /// A send nobody awaits was refused for good.
    SendFailed {
        /// Its id.
        client_msg_id: String,
        /// Where.
        conversation_id: u64,
        /// Why.
        error: JsError,
    },
    /// The server is going away; the client reconnects after the delay.
    GoAway {
        /// Why.
        reason: String,
        /// Delay.
        reconnect_after_ms: u32,
    },
    /// The server closed the connection with an error.
    ConnectionError {
        /// Why.
        error: JsError,
    },
}

/// An error as JavaScript sees it (also the shape of rejected promises: an `Error` with
/// these as properties).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsError {
    /// "RATE_LIMITED", "INVALID_CREDENTIALS", "NOT_MEMBER", … (the wire `ErrorCode`
    /// without its prefix) for server errors; "TIMEOUT", "CONNECTION_LOST",
    /// "INVALID", "CLOSED" for local ones.
    pub code: String,
    /// Human-readable.
    pub message: String,
    /// For RATE_LIMITED and SHUTTING_DOWN: when to retry.
    pub retry_after_ms: Option<u32>,
}

/// The wire name of an error code without its prefix ("RATE_LIMITED").
pub fn code_name(code: pb::ErrorCode) -> String {
    code.as_str_name().trim_start_matches("ERROR_CODE_").to_string()
}

impl From<&ServerError> for JsError {
    fn from(e: &ServerError) -> Self {
        JsError {
            code: code_name(e.code),
            message: e.message.clone(),
            retry_after_ms: (e.retry_after_ms > 0).then_some(e.retry_after_ms),
        }
    }
}

impl From<&RequestError> for JsError {
    fn from(e: &RequestError) -> Self {
        let code = match e {
            RequestError::Server(s) => return s.into(),
            RequestError::ConnectionLost => "CONNECTION_LOST",
            RequestError::Timeout => "TIMEOUT",
            _ => "INVALID",
        };
        JsError {
            code: code.into(),
            message: e.to_string(),
            retry_after_ms: None,
        }
    }
}

impl JsError {
    /// A local error.
    pub fn local(code: &str, message: impl Into<String>) -> Self {
        JsError {
            code: code.into(),
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// "online" / "away" / "offline".
pub fn presence_name(state: i32) -> String {
    match pb::PresenceState::try_from(state) {
        Ok(pb::PresenceState::Online) => "online",
        Ok(pb::PresenceState::Away) => "away",
        _ => "offline",
    }
    .into()
}

/// The app's view of a session event; `None` for those the client consumes itself
/// (responses and acks resolve promises; the handshake is internal).
pub fn event(ev: &SessionEvent) -> Option<JsEvent> {
    Some(match ev {
        SessionEvent::Connected {
            user_id,
            username,
            device_id,
            resumed,
        } => JsEvent::Connected {
            user_id: user_id.0,
            username: username.clone(),
            device_id: device_id.0,
            resumed: *resumed,
        },
        SessionEvent::Disconnected { reason } => JsEvent::Disconnected { reason: reason.clone() },
        SessionEvent::AuthFailed(e) => JsEvent::AuthFailed { error: e.into() },
        SessionEvent::Conversations(c) => JsEvent::Conversations {
            conversations: c.clone(),
        },
        SessionEvent::Event(e) => JsEvent::Event { event: e.clone() },
        SessionEvent::Receipt {
            conversation_id,
            user_id,
            delivered_seq,
            read_seq,
        } => JsEvent::Receipt {
            conversation_id: conversation_id.0,
            user_id: user_id.0,
            delivered_seq: delivered_seq.0,
            read_seq: read_seq.0,
        },
        SessionEvent::Unread {
            conversation_id,
            read_seq,
            unread_count,
        } => JsEvent::Unread {
            conversation_id: conversation_id.0,
            read_seq: read_seq.0,
            unread_count: *unread_count,
        },
        SessionEvent::Presence(p) => JsEvent::Presence {
            user_id: p.user_id,
            username: p.username.clone(),
            state: presence_name(p.state),
            last_seen_ms: p.last_seen_ms,
        },
        SessionEvent::Typing {
            conversation_id,
            user_id,
            username,
        } => JsEvent::Typing {
            conversation_id: conversation_id.0,
            user_id: user_id.0,
            username: username.clone(),
        },
        SessionEvent::TypingStopped {
            conversation_id,
            user_id,
        } => JsEvent::TypingStopped {
            conversation_id: conversation_id.0,
            user_id: user_id.0,
        },
        SessionEvent::TypingRejected { conversation_id, error } => JsEvent::TypingRejected {
            conversation_id: conversation_id.0,
            error: error.into(),
        },
        SessionEvent::SendFailed {
            client_msg_id,
            conversation_id,
            error,
        } => JsEvent::SendFailed {
            client_msg_id: client_msg_id.as_str().to_string(),
            conversation_id: conversation_id.0,
            error: error.into(),
        },
        SessionEvent::GoAway {
            reason,
            reconnect_after_ms,
        } => JsEvent::GoAway {
            reason: reason.clone(),
            reconnect_after_ms: *reconnect_after_ms,
        },
        SessionEvent::ConnectionError(e) => JsEvent::ConnectionError { error: e.into() },
        _ => return None,
    })
}

/// A message's status for the UI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsStatus {
    /// "sent", "delivered" or "read".
    pub state: &'static str,
    /// Other members with a device that has it.
    pub delivered: u32,
    /// Other members who read it.
    pub read: u32,
    /// Other members.
    pub recipients: u32,
}

impl From<MessageStatus> for JsStatus {
    fn from(s: MessageStatus) -> Self {
        JsStatus {
            state: match s.state {
                DeliveryState::Sent => "sent",
                DeliveryState::Delivered => "delivered",
                DeliveryState::Read => "read",
            },
            delivered: s.delivered,
            read: s.read,
            recipients: s.recipients,
        }
    }
}

/// `/natter.json` (server/src/web.rs).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    /// WebTransport, if the server offers it.
    pub webtransport: Option<WebTransportInfo>,
    /// WebSocket.
    pub websocket: WebSocketInfo,
}

/// Where WebTransport is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebTransportInfo {
    /// `https://host:port/path`.
    pub url: String,
    /// Hex SHA-256 hashes for `serverCertificateHashes` (empty: CA-issued certificate).
    #[serde(default)]
    pub certificate_hashes: Vec<String>,
}

impl WebTransportInfo {
    /// The hashes as bytes; malformed ones are skipped (the browser would refuse them).
    pub fn hash_bytes(&self) -> Vec<Vec<u8>> {
        self.certificate_hashes
            .iter()
            .filter_map(|h| hex::decode(h).ok().filter(|b| b.len() == 32))
            .collect()
    }
}

/// Where WebSocket is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct WebSocketInfo {
    /// `ws(s)://host:port/ws`.
    pub url: String,
}

/// Which transport the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportChoice {
    /// WebTransport if the browser and server have it, WebSocket otherwise.
    Auto,
    /// Only WebTransport.
    WebTransport,
    /// Only WebSocket.
    WebSocket,
}

impl TransportChoice {
    /// Parse the `transport` option.
    pub fn parse(s: Option<&str>) -> Result<Self, JsError> {
        match s.unwrap_or("auto") {
            "auto" => Ok(TransportChoice::Auto),
            "webtransport" => Ok(TransportChoice::WebTransport),
            "websocket" => Ok(TransportChoice::WebSocket),
            other => Err(JsError::local(
                "INVALID",
                format!("transport must be auto, webtransport or websocket, not {other:?}"),
            )),
        }
    }

    /// What to try, in order, on the next connect. `wt_failed`: WebTransport already failed
    /// on this client (then `Auto` goes straight to WebSocket rather than paying the
    /// timeout again on every reconnect).
    pub fn plan(self, browser_has_wt: bool, discovery: &Discovery, wt_failed: bool) -> Vec<Transport> {
        let wt_possible = browser_has_wt && discovery.webtransport.is_some();
        match self {
            TransportChoice::WebTransport => vec![Transport::WebTransport],
            TransportChoice::WebSocket => vec![Transport::WebSocket],
            TransportChoice::Auto if wt_possible && !wt_failed => vec![Transport::WebTransport, Transport::WebSocket],
            TransportChoice::Auto => vec![Transport::WebSocket],
        }
    }
}

/// A transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/3 WebTransport.
    WebTransport,
    /// WebSocket (natter.v1).
    WebSocket,
}

impl Transport {
    /// "webtransport" / "websocket".
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebTransport => "webtransport",
            Transport::WebSocket => "websocket",
        }
    }
}

/// One message of a [`natter_protocol::timeline::Timeline`] as JavaScript sees it (the
/// `Timeline` class's `message()` and `messages()`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsMessage {
    /// Its seq.
    pub seq: u64,
    /// Who sent it.
    pub sender_user_id: u64,
    /// Their username.
    pub sender_username: String,
    /// Current text (empty once deleted).
    pub text: String,
    /// The message it answers, 0 for none.
    pub reply_to_seq: u64,
    /// Commit time of the original (ms since the epoch).
    pub server_time_ms: u64,
    /// Edited at least once.
    pub edited: bool,
    /// Deleted (a tombstone).
    pub deleted: bool,
    /// Reactions, most used first.
    pub reactions: Vec<JsReaction>,
}

/// One emoji on a message and who reacted with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsReaction {
    /// The emoji.
    pub emoji: String,
    /// How many reacted with it.
    pub count: u32,
    /// Who.
    pub user_ids: Vec<u64>,
}

impl From<&natter_protocol::timeline::MessageView> for JsMessage {
    fn from(m: &natter_protocol::timeline::MessageView) -> Self {
        let reactions = m
            .reaction_counts()
            .into_iter()
            .map(|(emoji, count)| JsReaction {
                user_ids: m.reactions[&emoji].iter().map(|u| u.0).collect(),
                emoji,
                count: count as u32,
            })
            .collect();
        JsMessage {
            seq: m.seq.0,
            sender_user_id: m.sender.0,
            sender_username: m.sender_username.clone(),
            text: m.text.clone(),
            reply_to_seq: m.reply_to.0,
            server_time_ms: m.server_time_ms,
            edited: m.edited,
            deleted: m.deleted,
            reactions,
        }
    }
}
