//! natter-sdk: the native async natter client.
//!
//! [`Client`] runs natter-protocol's sans-IO [`ClientSession`] over quinn: it owns the
//! sockets, the clock and the reconnect loop (with backoff and resume), and turns session
//! outputs into resolved futures and a stream of [`ClientEvent`]s. All protocol logic
//! (outbox, dedup, gap fetch, cursor sync) lives in the session, not here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod driver;
mod e2ee;
mod media;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use natter_protocol::client::{ops, Call};
pub use natter_protocol::client::{HistoryAnchor, SendAck};
use natter_protocol::pb::{self, request::Op, response::Result as Res};
pub use natter_protocol::session::{DeliveryState, MessageStatus, RequestError, SessionConfig};
pub use natter_protocol::{pb as proto, ClientMsgId, ConversationId, DeviceId, Seq, ServerError, UserId};
use tokio::sync::{mpsc, oneshot};

pub use e2ee::{DeviceTrust, E2eeError, Encryption, StoreKey};
pub use natter_protocol::client::e2ee::TrustLevel;
pub use natter_protocol::session::{VerificationState, VerificationUpdate};
pub use tls::Trust;

/// How to reach and trust a server.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's UDP address.
    pub addr: SocketAddr,
    /// Other nodes of the same deployment. After a lost connection or a `GoAway` the client
    /// reconnects to the next address in turn (`addr`, then these), so a crashed or
    /// draining node's clients move to the others.
    pub fallback_addrs: Vec<SocketAddr>,
    /// QUIC idle timeout: a server that stops answering (crash, lost network, a dead path)
    /// is given up after this long and the client reconnects. The effective timeout is the
    /// smaller of this and the server's (`Limits.idle_timeout_ms`, 60 s by default). Default
    /// 60 s. An app that must notice a silent dead path sooner while in the foreground
    /// lowers it (and `keep_alive_ms` with it); a network change is better told by
    /// [`Client::reconnect`] (PROTOCOL.md §3.1).
    pub idle_timeout_ms: u64,
    /// Keep-alive interval: a QUIC PING after this long without traffic (at most half the
    /// idle timeout). `None` (the default): the interval the server advertises
    /// (`Limits.keep_alive_ms`, 25 s by default; until the first connection, that default).
    /// Shorter costs battery and the server's CPU; a restarted node's stateless reset
    /// reaches an idle client with its next keep-alive.
    pub keep_alive_ms: Option<u64>,
    /// TLS server name (the development certificate is valid for "localhost").
    pub server_name: String,
    /// How to verify the server's certificate.
    pub trust: Trust,
    /// An access token from an earlier login, if any.
    pub access_token: Option<String>,
    /// A resume token from an earlier process's [`Snapshot`]: the first connection resumes
    /// that session (no cursor sync) if the server still holds it.
    pub resume_token: Option<String>,
    /// Delivered cursors from an earlier process's [`Snapshot`]: events at or below them are
    /// not delivered again.
    pub cursors: Vec<(ConversationId, Seq)>,
    /// Unfinished uploads from an earlier process's [`Snapshot`]: go on with each by
    /// [`Client::resume_upload`] (or [`Client::resume_upload_file`]) with the same file.
    pub pending_uploads: Vec<PendingUpload>,
    /// Session tunables.
    pub session: SessionConfig,
    /// First reconnect delay; doubles up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_max_ms: u64,
    /// A quinn endpoint (UDP socket) to share with other clients in this process; `None`
    /// gives the client its own. Many clients on one socket (bots, load generators) save
    /// descriptors and memory.
    pub endpoint: Option<quinn::Endpoint>,
    /// End-to-end encryption (PROTOCOL.md §12): where this device keeps its keys. `None`:
    /// encrypted messages reach the app as `EventBody::Encrypted`, and sending to an
    /// encrypted conversation fails with [`E2eeError::NotConfigured`].
    pub encryption: Option<Encryption>,
    /// Where a fresh product token comes from (PROTOCOL.md §5.13), for a device that
    /// logged in with [`Client::login_with_token`]: asked before the current one expires
    /// and when a reconnect finds it expired, so the session goes on without the app
    /// doing anything. `None`: the app hears `SessionEvent::TokenNeeded` and calls
    /// [`Client::set_token`].
    pub token_provider: Option<TokenProvider>,
}

/// Asks the app's backend for a fresh product token; `None` when it has none (the
/// client then waits for [`Client::set_token`]).
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<String>> + Send + Sync>);

impl TokenProvider {
    /// From an async function.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<String>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || Box::pin(f())))
    }

    pub(crate) fn fetch(&self) -> futures::future::BoxFuture<'static, Option<String>> {
        (self.0)()
    }
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider")
    }
}

impl ClientConfig {
    /// Defaults for a server at `addr` whose certificate has this SHA-256 fingerprint.
    pub fn pinned(addr: SocketAddr, fingerprint: &str) -> Self {
        ClientConfig {
            addr,
            fallback_addrs: Vec::new(),
            idle_timeout_ms: natter_protocol::limits::CLIENT_IDLE_TIMEOUT_MS.into(),
            keep_alive_ms: None,
            server_name: "localhost".into(),
            trust: Trust::Fingerprint(fingerprint.to_string()),
            access_token: None,
            resume_token: None,
            cursors: Vec::new(),
            pending_uploads: Vec::new(),
            session: SessionConfig {
                client_name: concat!("natter-sdk/", env!("CARGO_PKG_VERSION")).into(),
                ..Default::default()
            },
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
            endpoint: None,
            encryption: None,
            token_provider: None,
        }
    }
}

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request failed (server error, timeout, connection lost, invalid input).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The client has been shut down.
    #[error("client is closed")]
    Closed,
    /// The server answered with the wrong kind of response.
    #[error("unexpected response from server")]
    Unexpected,
    /// Setting up TLS or QUIC failed.
    #[error("setup: {0}")]
    Setup(String),
    /// A download did not complete (refused, or cut off by a lost connection).
    #[error(transparent)]
    Download(#[from] natter_protocol::client::DownloadError),
    /// An upload gave up: the server kept refusing its stream, or it was not finished in
    /// time (what was stored stays; `resume_upload` goes on from there).
    #[error("upload: {0}")]
    Upload(String),
    /// The upload was paused ([`Client::pause_upload`]): what was stored stays, and
    /// `resume_upload` goes on from there.
    #[error("upload {0} is paused")]
    UploadPaused(String),
    /// The upload was cancelled ([`Client::cancel_upload`]) while it ran.
    #[error("upload {0} was cancelled")]
    UploadCancelled(String),
    /// The file given to go on with an upload is not the one it started with.
    #[error(transparent)]
    Resume(#[from] natter_protocol::client::upload::ResumeError),
    /// A file could not be read.
    #[error("{0}")]
    File(String),
    /// An encrypted file did not open: a bad key, an altered chunk, a wrong range.
    #[error(transparent)]
    FileCrypto(#[from] natter_protocol::client::file_crypto::FileCryptoError),
    /// End-to-end encryption failed (not configured, a device's keys do not verify, the
    /// state file).
    #[error(transparent)]
    E2ee(#[from] E2eeError),
}

impl ClientError {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<pb::ErrorCode> {
        self.server_error().map(|e| e.code)
    }

    /// The server's refusal, if the server refused the request.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ClientError::Request(RequestError::Server(e)) => Some(e),
            ClientError::Download(natter_protocol::client::DownloadError::Request(RequestError::Server(e))) => Some(e),
            _ => None,
        }
    }
}

/// The result of a login.
#[derive(Clone, Debug)]
pub struct LoginInfo {
    /// The user.
    pub user_id: UserId,
    /// The new device.
    pub device_id: DeviceId,
    /// Keep this to authenticate later without the password.
    pub access_token: String,
}

/// What the app hears from the client: the protocol session's own event type, so every SDK
/// (native, FFI, WASM) reports the same events. The client consumes `Response` and
/// `SendAcked` (they resolve the futures of `call`s and `send`s) and a `SendFailed` whose
/// send someone is awaiting; everything else reaches the app.
pub use natter_protocol::session::SessionEvent as ClientEvent;

/// Persistable client state: what an app stores to restore its session after the process
/// is killed. Pass the tokens and cursors back in [`ClientConfig`] and re-send every
/// pending send with [`Client::send_with_id`] (same id: the server keeps each message once).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Access token.
    pub access_token: Option<String>,
    /// Resume token.
    pub resume_token: Option<String>,
    /// Last seq delivered per conversation.
    pub cursors: Vec<(ConversationId, Seq)>,
    /// Sends not yet acknowledged, oldest first.
    pub pending_sends: Vec<PendingSend>,
    /// Uploads not finished yet (paused ones included), oldest first: pass them back in
    /// [`ClientConfig::pending_uploads`] and resume each with the same file.
    pub pending_uploads: Vec<PendingUpload>,
}

pub use natter_protocol::client::e2ee::backup::BackupError;
pub use natter_protocol::client::file_crypto::FileKey;
pub use natter_protocol::client::model::PendingUpload;
pub use natter_protocol::client::push::{PushError, PushKeys};

/// A send still in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingSend {
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Its idempotency key.
    pub client_msg_id: ClientMsgId,
    /// What it says.
    pub body: pb::MessageBody,
}

enum Command {
    Request(Op, oneshot::Sender<Result<Res, RequestError>>),
    Send(
        ConversationId,
        ClientMsgId,
        pb::MessageBody,
        oneshot::Sender<Result<SendAck, RequestError>>,
    ),
    Snapshot(oneshot::Sender<Snapshot>),
    Status(ConversationId, Seq, oneshot::Sender<Option<MessageStatus>>),
    Typing(ConversationId),
    Presence(pb::PresenceState),
    Unread(ConversationId, oneshot::Sender<Option<u32>>),
    /// Open an upload stream on the current connection: header, bytes, FIN; reset when the
    /// stop sender fires or is dropped (a pause, or the upload's future dropped).
    UploadStream(
        String,
        u64,
        bytes::Bytes,
        oneshot::Receiver<()>,
        oneshot::Sender<Result<(), String>>,
    ),
    /// Hear of one upload's progress reports.
    WatchUpload(String, mpsc::UnboundedSender<driver::UploadWatch>),
    Download(pb::Download, driver::DownloadWaiter),
    Reconnect,
    /// A fresh product token (PROTOCOL.md §5.13), from the app or the token provider.
    ProductToken(String),
    /// The app is done with a conversation up to a seq (with `SessionConfig::ack_by_app`).
    Acknowledge(ConversationId, Seq),
    Shutdown(oneshot::Sender<()>),
}

/// The stream of [`ClientEvent`]s. Implements [`futures::Stream`].
#[derive(Debug)]
pub struct Events(mpsc::UnboundedReceiver<ClientEvent>);

impl Events {
    /// The next event; `None` after the client is shut down.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.0.recv().await
    }
}

impl futures::Stream for Events {
    type Item = ClientEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.0.poll_recv(cx)
    }
}

/// A natter client. Cheap to clone; all clones share one connection.
#[derive(Clone, Debug)]
pub struct Client {
    cmd: mpsc::UnboundedSender<Command>,
    uploads: Arc<media::UploadTable>,
    e2ee: Option<Arc<e2ee::E2ee>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("command")
    }
}

fn sealed_change(change: pb::sealed_content::Change) -> pb::SealedContent {
    pb::SealedContent {
        body: None,
        change: Some(change),
    }
}

/// A fresh random idempotency key for [`Client::send_with_id`]: choose it before sending,
/// persist it with the draft, and a retry after a crash cannot duplicate the message.
pub fn new_message_id() -> ClientMsgId {
    ClientMsgId::from_random(rand::random())
}

impl Client {
    /// Start a client. It connects in the background and keeps reconnecting; requests made
    /// meanwhile wait for the connection.
    pub fn connect(mut config: ClientConfig) -> Result<(Client, Events), ClientError> {
        // An encrypting client acknowledges a message once its state is written (§12.7).
        config.session.ack_by_app |= config.encryption.is_some();
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let uploads = Arc::new(media::UploadTable::restore(config.pending_uploads.clone()));
        let e2ee = config.encryption.clone().map(e2ee::new);
        let weak = cmd.downgrade();
        let client = Client { cmd, uploads, e2ee };
        if let Some(e) = &client.e2ee {
            e2ee::attach(e, client.clone());
        }
        match &client.e2ee {
            // Events pass through the encryption on their way to the app, in order.
            Some(e) => {
                let (raw_tx, raw_rx) = mpsc::unbounded_channel();
                driver::spawn(config, cmd_rx, weak, raw_tx)?;
                tokio::spawn(e2ee::pump(e.clone(), raw_rx, ev_tx));
            }
            None => driver::spawn(config, cmd_rx, weak, ev_tx)?,
        }
        Ok((client, Events(ev_rx)))
    }

    async fn request(&self, op: Op) -> Result<Res, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Request(op, tx))
            .map_err(|_| ClientError::Closed)?;
        Ok(rx.await.map_err(|_| ClientError::Closed)??)
    }

    /// Make one of the core's operations ([`natter_protocol::client::ops`]) and take its
    /// answer out of the response.
    pub async fn call<T>(&self, call: Call<T>) -> Result<T, ClientError> {
        let (op, extract) = call.into_parts();
        let res = self.request(op).await?;
        extract.apply(res).map_err(|_| ClientError::Unexpected)
    }

    /// Create an account (does not log in).
    pub async fn register(&self, username: &str, password: &str) -> Result<UserId, ClientError> {
        self.call(ops::register(username, password)).await
    }

    /// Log in as a new device; the connection is authenticated from then on, and the token
    /// is kept for reconnects.
    pub async fn login(&self, username: &str, password: &str, device_name: &str) -> Result<LoginInfo, ClientError> {
        let r = self.call(ops::login(username, password, device_name)).await?;
        Ok(LoginInfo {
            user_id: UserId(r.user_id),
            device_id: DeviceId(r.device_id),
            access_token: r.access_token,
        })
    }

    /// Log in as a new device with a product token: a JWT the product's backend minted
    /// for its user (PROTOCOL.md §5.13). The user is made on first use. Give the client a
    /// [`TokenProvider`] (or answer `SessionEvent::TokenNeeded` with [`Client::set_token`])
    /// so the session outlives the token.
    pub async fn login_with_token(&self, token: &str, device_name: &str) -> Result<LoginInfo, ClientError> {
        let r = self.call(ops::token_login(token, device_name)).await?;
        Ok(LoginInfo {
            user_id: UserId(r.user_id),
            device_id: DeviceId(r.device_id),
            access_token: r.access_token,
        })
    }

    /// Renew this device's product token now and hear how it went: the new expiry (ms
    /// since the epoch), or the typed refusal (`INVALID_TOKEN`, `TOKEN_EXPIRED`).
    pub async fn refresh_token(&self, token: &str) -> Result<u64, ClientError> {
        self.call(ops::refresh_token(token)).await
    }

    /// A fresh product token for this device: renews it now if connected, and is used
    /// for the next authentication (PROTOCOL.md §5.13).
    pub fn set_token(&self, token: &str) {
        let _ = self.cmd.send(Command::ProductToken(token.to_string()));
    }

    /// Revoke a device's token (0: this device; the connection then closes).
    pub async fn logout(&self, device: DeviceId) -> Result<(), ClientError> {
        self.call(ops::logout(device)).await
    }

    /// This user's devices.
    pub async fn devices(&self) -> Result<Vec<pb::Device>, ClientError> {
        self.call(ops::devices()).await
    }

    /// Register this device's push target, replacing its earlier one (PROTOCOL.md §13.1).
    /// Build it with [`PushKeys::target`] for APNs, FCM or UnifiedPush; a browser's
    /// subscription carries its own keys.
    pub async fn register_push(&self, target: pb::PushTarget) -> Result<pb::PushRegistrations, ClientError> {
        self.call(ops::register_push(target)).await
    }

    /// This device's push registrations and the server's VAPID key.
    pub async fn list_push(&self) -> Result<pb::PushRegistrations, ClientError> {
        self.call(ops::list_push()).await
    }

    /// Remove one of this device's push registrations.
    pub async fn remove_push(&self, registration_id: &str) -> Result<pb::PushRegistrations, ClientError> {
        self.call(ops::remove_push(registration_id)).await
    }

    /// The user's notification rules (PROTOCOL.md §13.2).
    pub async fn notify_settings(&self) -> Result<pb::NotifySettings, ClientError> {
        self.call(ops::notify_settings()).await
    }

    /// Replace the user's notification rules: level, mutes, do-not-disturb hours and
    /// per-conversation rules. `BAD_REQUEST` for an unknown time zone or level.
    pub async fn set_notify_settings(&self, settings: pb::NotifySettings) -> Result<pb::NotifySettings, ClientError> {
        self.call(ops::set_notify_settings(settings)).await
    }

    /// The 1:1 conversation with `username`, created on first use.
    pub async fn direct(&self, username: &str) -> Result<pb::ConversationSummary, ClientError> {
        self.call(ops::direct(username)).await
    }

    /// Acknowledge delivery of `conv` up to `seq` (only with `SessionConfig::ack_by_app`;
    /// an encrypting client does it itself once its state is written).
    pub fn acknowledge(&self, conv: ConversationId, seq: Seq) {
        let _ = self.cmd.send(Command::Acknowledge(conv, seq));
    }

    /// The end-to-end encrypted 1:1 conversation with `username` (PROTOCOL.md §12),
    /// created on first use; needs [`ClientConfig::encryption`].
    pub async fn encrypted_direct(&self, username: &str) -> Result<pb::ConversationSummary, ClientError> {
        let e2ee = self.e2ee()?;
        let c = self.call(ops::encrypted_direct(username)).await?;
        e2ee.note(ConversationId(c.conversation_id), true);
        Ok(c)
    }

    /// Set up a key backup for this user (PROTOCOL.md §12.9), replacing any earlier one,
    /// and back up every message key this device holds; every device of the user backs
    /// up what it reads from then on. Returns the recovery key, written for people (53
    /// characters in groups of four): the only way to open the backup — show it once and
    /// let the person keep it.
    pub async fn enable_backup(&self) -> Result<String, ClientError> {
        let key = self.e2ee()?.enable_backup().await.map_err(e2ee::client_error)?;
        Ok(key.to_display())
    }

    /// Restore message keys from the key backup with the person's recovery key, so this
    /// device opens history no other device of theirs sealed for it; how many keys were
    /// new. A mistyped key is [`BackupError::Malformed`], another backup's key
    /// [`BackupError::WrongKey`] (both inside [`E2eeError::Backup`]), and nothing is read.
    /// Messages the event stream brought undecryptable and whose keys came are on it
    /// again, opened (same conversation and seq), by the time this returns.
    pub async fn restore_backup(&self, recovery_key: &str) -> Result<u64, ClientError> {
        self.e2ee()?
            .restore_backup(recovery_key)
            .await
            .map_err(e2ee::client_error)
    }

    /// Upload the message keys still waiting for the backup now, rather than shortly
    /// after the messages that brought them (before a logout, say).
    pub async fn backup_now(&self) -> Result<(), ClientError> {
        self.e2ee()?.flush_backup().await.map_err(e2ee::client_error)
    }

    /// Start verifying `device` of `user` (PROTOCOL.md §12.10): both devices then hear
    /// [`ClientEvent::Verification`] steps — the other is asked to accept, both show the
    /// same seven emoji, and each person confirms with [`Client::confirm_verification`].
    /// Returns the transaction id.
    pub async fn verify_device(&self, user: UserId, device: DeviceId) -> Result<String, ClientError> {
        self.e2ee()?
            .verify_device(user, device)
            .await
            .map_err(e2ee::client_error)
    }

    /// Accept another device's request to verify this one.
    pub async fn accept_verification(&self, txn: &str) -> Result<(), ClientError> {
        self.e2ee()?.accept_verification(txn).await.map_err(e2ee::client_error)
    }

    /// Say whether the codes on both screens agree. Both people saying yes, and the
    /// keys checking out, makes the other device verified on this one.
    pub async fn confirm_verification(&self, txn: &str, matches: bool) -> Result<(), ClientError> {
        let e = self.e2ee()?;
        e.confirm_verification(txn, matches).await.map_err(e2ee::client_error)
    }

    /// Stop a verification.
    pub async fn cancel_verification(&self, txn: &str) -> Result<(), ClientError> {
        self.e2ee()?.cancel_verification(txn).await.map_err(e2ee::client_error)
    }

    /// `user`'s devices with keys and how far this device trusts each: verified,
    /// unverified (a new device — or one an attacker with the password added), or changed
    /// since it was verified.
    pub async fn device_trust(&self, user: UserId) -> Result<Vec<DeviceTrust>, ClientError> {
        self.e2ee()?.device_trust(user).await.map_err(e2ee::client_error)
    }

    /// Which part of an encrypted conversation this device can read (PROTOCOL.md §12.6):
    /// the seq from which every message was sealed for it (the event that added it to the
    /// conversation's device list); messages before it open only with keys restored from
    /// the backup or shared by a verified device of this user. `None` until this device
    /// has seen that event.
    pub async fn readable_from(&self, conv: ConversationId) -> Result<Option<Seq>, ClientError> {
        Ok(self.e2ee()?.readable_from(conv).await)
    }

    fn e2ee(&self) -> Result<&Arc<e2ee::E2ee>, ClientError> {
        self.e2ee.as_ref().ok_or(ClientError::E2ee(E2eeError::NotConfigured))
    }

    /// The encryption, if `conv` is encrypted (asked of the server once if this client has
    /// not heard of the conversation yet).
    async fn sealing(&self, conv: ConversationId) -> Option<&Arc<e2ee::E2ee>> {
        let e = self.e2ee.as_ref()?;
        e.sealing(conv).await.unwrap_or(false).then_some(e)
    }

    /// Send sealed content (a message, or a change to one) to an encrypted conversation.
    async fn send_sealed(
        &self,
        e2ee: &e2ee::E2ee,
        conv: ConversationId,
        content: pb::SealedContent,
    ) -> Result<SendAck, ClientError> {
        e2ee.send(conv, new_message_id(), content)
            .await
            .map_err(e2ee::client_error)
    }

    /// A new private group owned by the caller.
    pub async fn create_group(&self, name: &str, members: &[&str]) -> Result<pb::ConversationSummary, ClientError> {
        let usernames = members.iter().map(|s| s.to_string()).collect();
        self.call(ops::create_group(name, usernames)).await
    }

    /// A new public channel owned by the caller.
    pub async fn create_channel(&self, name: &str) -> Result<pb::ConversationSummary, ClientError> {
        self.call(ops::create_channel(name)).await
    }

    /// Join a public channel.
    pub async fn join_channel(&self, name: &str) -> Result<pb::ConversationSummary, ClientError> {
        self.call(ops::join_channel(name)).await
    }

    /// Add members (owners and admins).
    pub async fn add_members(&self, conv: ConversationId, usernames: &[&str]) -> Result<(), ClientError> {
        let usernames = usernames.iter().map(|s| s.to_string()).collect();
        self.call(ops::add_members(conv, usernames)).await
    }

    /// Remove a member.
    pub async fn remove_member(&self, conv: ConversationId, user: UserId) -> Result<(), ClientError> {
        self.call(ops::remove_member(conv, user)).await
    }

    /// Leave a group or channel.
    pub async fn leave(&self, conv: ConversationId) -> Result<(), ClientError> {
        self.call(ops::leave(conv)).await
    }

    /// Rename a group or channel.
    pub async fn rename(&self, conv: ConversationId, name: &str) -> Result<(), ClientError> {
        self.call(ops::rename(conv, name)).await
    }

    /// Delete a conversation (owner).
    pub async fn delete(&self, conv: ConversationId) -> Result<(), ClientError> {
        self.call(ops::delete(conv)).await
    }

    /// Change a member's role (owner); `Owner` transfers ownership.
    pub async fn set_role(&self, conv: ConversationId, user: UserId, role: pb::Role) -> Result<(), ClientError> {
        self.call(ops::set_role(conv, user, role)).await
    }

    /// Mute (until `until_ms`; 0: until unmuted), unmute, ban or unban a user in a group or
    /// channel (owners and admins; PROTOCOL.md §5.14).
    pub async fn moderate(
        &self,
        conv: ConversationId,
        user: UserId,
        action: pb::ModerationAction,
        until_ms: u64,
    ) -> Result<(), ClientError> {
        self.call(ops::moderate(conv, user, action, until_ms)).await
    }

    /// A channel's slow mode: one message per member per `interval_secs` (0: off).
    pub async fn set_slow_mode(&self, conv: ConversationId, interval_secs: u32) -> Result<(), ClientError> {
        self.call(ops::set_slow_mode(conv, interval_secs)).await
    }

    /// How long the conversation keeps its events (PROTOCOL.md §5.17): `Some(secs)` (0:
    /// forever) or `None` for the server's default for its kind. Groups and channels:
    /// the owner; direct conversations: either member.
    pub async fn set_retention(&self, conv: ConversationId, retention_secs: Option<u64>) -> Result<(), ClientError> {
        self.call(ops::set_retention(conv, retention_secs)).await
    }

    /// Report a message to the product's moderators.
    pub async fn report(&self, conv: ConversationId, seq: Seq, reason: &str) -> Result<(), ClientError> {
        self.call(ops::report(conv, seq, reason)).await
    }

    /// Change your profile (PROTOCOL.md §5.15): only the fields given change (`Some("")`
    /// clears one). Your contacts, fellow members and your other devices hear
    /// `ProfileChanged`.
    pub async fn set_profile(
        &self,
        display_name: Option<&str>,
        avatar: Option<&str>,
        status: Option<&str>,
    ) -> Result<pb::UserProfile, ClientError> {
        let change = pb::SetProfile {
            display_name: display_name.map(String::from),
            avatar: avatar.map(String::from),
            status: status.map(String::from),
        };
        self.call(ops::set_profile(change)).await
    }

    /// Delete your own account (PROTOCOL.md §5.16): your messages are erased (or
    /// anonymised, as the server is configured), your files, devices and profile deleted.
    /// A password account confirms with its password; a product login's with "". Every
    /// device is logged out: this client then reports `AuthFailed`.
    pub async fn delete_account(&self, password: &str) -> Result<(), ClientError> {
        self.call(ops::delete_account(password)).await
    }

    /// A path on the server's web endpoint (`https://<web address><path>`) that serves a
    /// zip of your data — profile, conversations, every event you sent, your files — for
    /// 15 minutes.
    pub async fn export_account(&self) -> Result<pb::ExportReady, ClientError> {
        self.call(ops::export_account()).await
    }

    /// Up to 100 users' profiles (unknown ones are left out).
    pub async fn profiles(&self, users: &[UserId]) -> Result<Vec<pb::UserProfile>, ClientError> {
        self.call(ops::profiles_of(users)).await
    }

    /// Every conversation of the user, with last message (opened, in an encrypted one) and
    /// unread count.
    pub async fn conversations(&self) -> Result<Vec<pb::ConversationSummary>, ClientError> {
        let mut list = self.call(ops::conversations()).await?;
        if let Some(e) = &self.e2ee {
            e.open_summaries(&mut list).await;
        }
        Ok(list)
    }

    /// Members of a conversation.
    pub async fn members(&self, conv: ConversationId) -> Result<Vec<pb::Member>, ClientError> {
        self.call(ops::members(conv)).await
    }

    /// Send a text message; resolves when the server has it durably. In an encrypted
    /// conversation it is sealed for the conversation's devices first.
    pub async fn send(&self, conv: ConversationId, text: &str) -> Result<SendAck, ClientError> {
        let body = pb::MessageBody {
            kind: pb::MessageKind::Text as i32,
            text: text.into(),
            ..Default::default()
        };
        self.send_with_id(conv, new_message_id(), body).await
    }

    /// Send with a caller-chosen idempotency key (to retry across app restarts). In an
    /// encrypted conversation a plain body is sealed first (PROTOCOL.md §12.4).
    pub async fn send_with_id(
        &self,
        conv: ConversationId,
        id: ClientMsgId,
        body: pb::MessageBody,
    ) -> Result<SendAck, ClientError> {
        if body.encrypted.is_none() {
            if let Some(e) = self.sealing(conv).await {
                let content = pb::SealedContent {
                    body: Some(body),
                    change: None,
                };
                return e.send(conv, id, content).await.map_err(e2ee::client_error);
            }
        }
        self.send_as_is(conv, id, body).await
    }

    /// Queue a body as it is (an envelope the encryption made, or a plain message).
    async fn send_as_is(
        &self,
        conv: ConversationId,
        id: ClientMsgId,
        body: pb::MessageBody,
    ) -> Result<SendAck, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Send(conv, id, body, tx))
            .map_err(|_| ClientError::Closed)?;
        Ok(rx.await.map_err(|_| ClientError::Closed)??)
    }

    /// A page of history: `before` (newest page before a seq; `Seq(0)` = latest) or `after`.
    pub async fn history(
        &self,
        conv: ConversationId,
        anchor: HistoryAnchor,
        limit: u32,
    ) -> Result<pb::HistoryPage, ClientError> {
        let mut page = self.call(ops::history(conv, anchor, limit)).await?;
        if let Some(e) = &self.e2ee {
            e.open_page(&mut page).await;
        }
        Ok(page)
    }

    /// Replace the text of your message; returns the seq of the edit event (sealed in an
    /// encrypted conversation).
    pub async fn edit(&self, conv: ConversationId, target: Seq, text: &str) -> Result<Seq, ClientError> {
        if let Some(e) = self.sealing(conv).await {
            let change = pb::sealed_content::Change::Edit(pb::MessageEdited {
                target_seq: target.0,
                text: text.into(),
            });
            return Ok(self.send_sealed(e, conv, sealed_change(change)).await?.seq);
        }
        self.call(ops::edit(conv, target, text)).await
    }

    /// Delete a message; returns the seq of the delete event (sealed in an encrypted
    /// conversation: the server does not learn which message).
    pub async fn delete_message(&self, conv: ConversationId, target: Seq) -> Result<Seq, ClientError> {
        if let Some(e) = self.sealing(conv).await {
            let change = pb::sealed_content::Change::Delete(pb::MessageDeleted { target_seq: target.0 });
            return Ok(self.send_sealed(e, conv, sealed_change(change)).await?.seq);
        }
        self.call(ops::delete_message(conv, target)).await
    }

    /// Add (or with `remove`, take back) an emoji reaction; returns the event's seq.
    pub async fn react(
        &self,
        conv: ConversationId,
        target: Seq,
        emoji: &str,
        remove: bool,
    ) -> Result<Seq, ClientError> {
        if let Some(e) = self.sealing(conv).await {
            natter_protocol::validate::emoji(emoji).map_err(|v| RequestError::Server(v.into()))?;
            let change = pb::sealed_content::Change::Reaction(pb::ReactionChanged {
                target_seq: target.0,
                emoji: emoji.into(),
                added: !remove,
            });
            return Ok(self.send_sealed(e, conv, sealed_change(change)).await?.seq);
        }
        self.call(ops::react(conv, target, emoji, remove)).await
    }

    /// Move the read cursor.
    pub async fn mark_read(&self, conv: ConversationId, seq: Seq) -> Result<(), ClientError> {
        self.call(ops::mark_read(conv, seq)).await
    }

    /// Where your message `seq` stands with the other members (✓ sent, ✓✓ delivered, read,
    /// with counts for groups); `None` for channels and unknown conversations.
    pub async fn message_status(&self, conv: ConversationId, seq: Seq) -> Result<Option<MessageStatus>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Status(conv, seq, tx))
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Your unread count in a conversation, as this client knows it.
    pub async fn unread(&self, conv: ConversationId) -> Result<Option<u32>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Unread(conv, tx))
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Every member's delivered and read cursors (direct conversations and groups).
    pub async fn receipts(&self, conv: ConversationId) -> Result<Vec<pb::MemberReceipt>, ClientError> {
        self.call(ops::receipts(conv)).await
    }

    /// Say you are typing in a conversation; call on every keystroke, the client rate-limits.
    pub fn typing(&self, conv: ConversationId) {
        let _ = self.cmd.send(Command::Typing(conv));
    }

    /// Report this device as online or away.
    pub fn set_presence(&self, state: pb::PresenceState) {
        let _ = self.cmd.send(Command::Presence(state));
    }

    /// Hide (or show) your last-seen time from contacts.
    pub async fn set_hide_last_seen(&self, hide: bool) -> Result<(), ClientError> {
        self.call(ops::set_hide_last_seen(hide)).await
    }

    /// One page of messages matching `req.query` in your conversations (PROTOCOL.md
    /// §14.3): words, "phrases", -excluded, `from:`, `in:`, `has:`, `after:`/`before:`.
    /// A query the server refuses is `BAD_REQUEST` naming why; pass `next_cursor` back as
    /// `req.cursor` for the next page.
    ///
    /// With encryption on, the encrypted conversations in scope are searched on this
    /// device (PROTOCOL.md §14.5): their hits join the first page, and `local` says how
    /// far back each is indexed here.
    pub async fn search(&self, req: pb::Search) -> Result<pb::SearchResults, ClientError> {
        let mut answer = self.call(ops::search(req.clone())).await?;
        if let Some(e2ee) = &self.e2ee {
            e2ee.merge_local(&req, &mut answer);
        }
        Ok(answer)
    }

    /// Users whose username starts with `prefix` (except those unlisted, and you).
    pub async fn search_users(&self, prefix: &str, limit: u32) -> Result<Vec<pb::UserMatch>, ClientError> {
        self.call(ops::search_users(prefix, limit)).await
    }

    /// Public channels whose name starts with `prefix` (empty: all, by name).
    pub async fn search_channels(&self, prefix: &str, limit: u32) -> Result<Vec<pb::ChannelMatch>, ClientError> {
        self.call(ops::search_channels(prefix, limit)).await
    }

    /// Leave yourself out of other users' [`Client::search_users`] (or list yourself again).
    pub async fn set_unlisted(&self, unlisted: bool) -> Result<(), ClientError> {
        self.call(ops::set_unlisted(unlisted)).await
    }

    /// Presence of these users, as far as they are your contacts (others are left out).
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<pb::PresenceUpdate>, ClientError> {
        self.call(ops::presence(users)).await
    }

    /// Round trip to the server.
    pub async fn ping(&self) -> Result<u64, ClientError> {
        self.call(ops::ping()).await
    }

    /// State to persist (tokens, cursors, unacknowledged sends, unfinished uploads).
    pub async fn snapshot(&self) -> Result<Snapshot, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::Snapshot(tx)).map_err(|_| ClientError::Closed)?;
        let mut snap = rx.await.map_err(|_| ClientError::Closed)?;
        snap.pending_uploads = self.uploads.list();
        Ok(snap)
    }

    /// Drop the current connection at once and reconnect (e.g. after a network change).
    /// Sends in flight stay in the outbox and are retried.
    pub fn reconnect(&self) {
        let _ = self.cmd.send(Command::Reconnect);
    }

    /// Close the connection and stop (writing the device's search index first).
    pub async fn shutdown(&self) {
        if let Some(e2ee) = &self.e2ee {
            e2ee.flush_index().await;
        }
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
