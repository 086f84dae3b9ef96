//! The records only this binding has: how to connect and what to restore (the JS package
//! takes an options object instead), and their conversions. Everything the app *receives* —
//! events, conversations, messages, errors' codes — is natter-protocol's app-facing model
//! (`natter_protocol::client::model`, the bindings' `natter_protocol` module), shared with
//! the JS package and re-exported here. Ids are plain `u64`s: uniffi has no newtypes.
use natter_sdk::{ConversationId, Seq};

pub use natter_protocol::client::model::{
    ChannelMatch, LocalCoverage, SearchHit, SearchOrder, SearchQuery, SearchResults, SnippetPart, UserMatch,
};
pub use natter_protocol::client::model::{
    Conversation, ConversationEvent, ConversationKind, Device, ErrorCode, ErrorInfo, EventBody, HistoryPage, MediaInfo,
    MediaVariant, Member, MemberReceipt, Message, ModerationAction, NatterEvent, PendingUpload, Presence,
    PresenceState, Profile, Reaction, Role, SendAck,
};
pub use natter_protocol::session::{DeliveryState, MessageStatus};

/// How to reach and trust a server, and what to restore from an earlier [`Snapshot`].
#[derive(Clone, Debug, uniffi::Record)]
pub struct ConnectOptions {
    /// `host:port` of the server's QUIC endpoint.
    pub address: String,
    /// Other nodes of the same deployment (`host:port`): after a lost connection or a
    /// drain the client moves to the next one in turn.
    #[uniffi(default)]
    pub fallback_addresses: Vec<String>,
    /// TLS server name (development certificates are valid for "localhost").
    #[uniffi(default = "localhost")]
    pub server_name: String,
    /// Pin the server's certificate by its hex SHA-256 (as the server prints it)…
    #[uniffi(default)]
    pub certificate_sha256: Option<String>,
    /// …or verify it against these PEM CA certificates. One of the two is required.
    #[uniffi(default)]
    pub ca_pem: Option<String>,
    /// An access token from an earlier login.
    #[uniffi(default)]
    pub access_token: Option<String>,
    /// A resume token from an earlier [`Snapshot`].
    #[uniffi(default)]
    pub resume_token: Option<String>,
    /// Delivered cursors from an earlier [`Snapshot`].
    #[uniffi(default)]
    pub cursors: Vec<Cursor>,
    /// Unfinished uploads from an earlier [`Snapshot`]: go on with each by
    /// `resume_upload_file` (or `resume_upload` with the same bytes).
    #[uniffi(default)]
    pub pending_uploads: Vec<PendingUpload>,
    /// Shown in the server's logs.
    #[uniffi(default = "natter-ffi")]
    pub client_name: String,
    /// How long a silent connection is given before the client reconnects (ms); unset:
    /// 60 s, the server's default. Lower it (with `keep_alive_ms`) where a silent dead path
    /// must be noticed sooner; a network change is better told by `reconnect()`
    /// (PROTOCOL.md §3.1).
    #[uniffi(default)]
    pub idle_timeout_ms: Option<u64>,
    /// A keep-alive after this long without traffic (ms, at most half the idle timeout);
    /// unset: the server's advertised interval (25 s by default).
    #[uniffi(default)]
    pub keep_alive_ms: Option<u64>,
    /// End-to-end encryption (PROTOCOL.md §12): where this device keeps its keys (a file
    /// in the app's private storage) and the 32-byte key they are sealed with (keep it in
    /// the keychain/keystore). Both or neither; without them encrypted messages arrive as
    /// `EventBody.Encrypted` and sending to an encrypted conversation fails.
    #[uniffi(default)]
    pub encryption_state_path: Option<String>,
    #[uniffi(default)]
    pub encryption_store_key: Option<Vec<u8>>,
}

/// The last seq this device received in a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Cursor {
    /// Conversation.
    pub conversation_id: u64,
    /// Last delivered seq.
    pub seq: u64,
}

/// What to store to restore the session after the app is killed: pass the tokens,
/// cursors and pending uploads to [`ConnectOptions`], re-send each pending send with
/// `sendWithId`, and resume each upload with `resumeUploadFile`.
#[derive(Clone, Debug, uniffi::Record)]
pub struct Snapshot {
    /// Access token (keep it in the keychain/keystore).
    pub access_token: Option<String>,
    /// Resume token.
    pub resume_token: Option<String>,
    /// Delivered cursors.
    pub cursors: Vec<Cursor>,
    /// Sends the server has not acknowledged yet, oldest first.
    pub pending_sends: Vec<PendingSend>,
    /// Uploads not finished yet (paused ones included), oldest first.
    pub pending_uploads: Vec<PendingUpload>,
}

/// A message still "sending".
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct PendingSend {
    /// Conversation.
    pub conversation_id: u64,
    /// Its idempotency key.
    pub client_msg_id: String,
    /// Its text.
    pub text: String,
    /// The message it answers, 0 for none.
    pub reply_to_seq: u64,
}

/// A file encrypted on this device and uploaded (`upload_encrypted`): the server holds
/// only sealed bytes; `key` (hex) opens them and goes with the message.
#[derive(Clone, Debug, uniffi::Record)]
pub struct EncryptedUpload {
    /// The finished file as the server knows it (`encrypted`, size of the sealed bytes).
    pub media: MediaInfo,
    /// Its key material, hex (keep it secret: it opens the file).
    pub key: String,
}

/// A successful login.
#[derive(Clone, Debug, uniffi::Record)]
pub struct LoginInfo {
    /// The user.
    pub user_id: u64,
    /// This new device.
    pub device_id: u64,
    /// Keep it to connect again without the password.
    pub access_token: String,
}

/// Where a history page starts.
#[derive(Clone, Copy, Debug, uniffi::Enum)]
pub enum HistoryAnchor {
    /// The newest page below `seq` (0: the latest page).
    Before {
        /// Exclusive upper bound.
        seq: u64,
    },
    /// The oldest page above `seq`.
    After {
        /// Exclusive lower bound.
        seq: u64,
    },
}

impl From<(ConversationId, Seq)> for Cursor {
    fn from((c, s): (ConversationId, Seq)) -> Self {
        Cursor {
            conversation_id: c.0,
            seq: s.0,
        }
    }
}

impl From<Cursor> for (ConversationId, Seq) {
    fn from(c: Cursor) -> Self {
        (ConversationId(c.conversation_id), Seq(c.seq))
    }
}

impl From<natter_sdk::Snapshot> for Snapshot {
    fn from(s: natter_sdk::Snapshot) -> Self {
        Snapshot {
            access_token: s.access_token,
            resume_token: s.resume_token,
            cursors: s.cursors.into_iter().map(Cursor::from).collect(),
            pending_sends: s
                .pending_sends
                .into_iter()
                .map(|p| PendingSend {
                    conversation_id: p.conversation_id.0,
                    client_msg_id: p.client_msg_id.0,
                    text: p.body.text,
                    reply_to_seq: p.body.reply_to_seq,
                })
                .collect(),
            pending_uploads: s.pending_uploads,
        }
    }
}

impl From<natter_sdk::LoginInfo> for LoginInfo {
    fn from(l: natter_sdk::LoginInfo) -> Self {
        LoginInfo {
            user_id: l.user_id.0,
            device_id: l.device_id.0,
            access_token: l.access_token,
        }
    }
}

impl From<HistoryAnchor> for natter_sdk::HistoryAnchor {
    fn from(a: HistoryAnchor) -> Self {
        match a {
            HistoryAnchor::Before { seq } => natter_sdk::HistoryAnchor::Before(Seq(seq)),
            HistoryAnchor::After { seq } => natter_sdk::HistoryAnchor::After(Seq(seq)),
        }
    }
}

/// A device of a user and how far this device trusts it (PROTOCOL.md §12.10).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct DeviceTrust {
    /// Which device.
    pub device_id: u64,
    /// Its Ed25519 identity key, hex (what a verification compares).
    pub fingerprint: String,
    /// `verified`, `unverified` (new — or added by someone with the password), or
    /// `changed` (verified before with another key).
    pub trust: String,
}

impl From<natter_sdk::DeviceTrust> for DeviceTrust {
    fn from(d: natter_sdk::DeviceTrust) -> Self {
        DeviceTrust {
            device_id: d.device_id.0,
            fingerprint: d.ed25519.iter().map(|b| format!("{b:02x}")).collect(),
            trust: match d.trust {
                natter_sdk::TrustLevel::Verified => "verified",
                natter_sdk::TrustLevel::Unverified => "unverified",
                natter_sdk::TrustLevel::Changed => "changed",
            }
            .into(),
        }
    }
}
