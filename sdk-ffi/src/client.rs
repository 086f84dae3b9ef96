//! `NatterClient` for the foreign languages: each method forwards to `natter_sdk::Client`
//! and converts. Events reach the app through `NatterListener`s registered with
//! `subscribe`; the returned `Subscription` stops delivery when cancelled or dropped.
//!
//! Listener callbacks run on one thread per client ("natter-events"), in order, never on
//! the I/O threads: a slow listener delays later events, not the connection. Events that
//! arrive before the first `subscribe` wait for it, so nothing between connect and
//! subscribe is lost.
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

use natter_sdk::proto as pb;
use natter_sdk::{
    Client, ClientConfig, ClientError, ClientMsgId, ConversationId, DeviceId, Events, Seq, Trust, UserId,
};

use natter_protocol::client::model::list;

use crate::error::NatterError;
use crate::types::*;
use crate::{foreign, runtime};

/// Receives a client's events. Implement it in Kotlin, Swift or Python.
#[uniffi::export(with_foreign)]
pub trait NatterListener: Send + Sync {
    /// One event; called in order on the client's event thread.
    fn on_event(&self, event: NatterEvent);
}

/// Where the client gets a fresh product token (PROTOCOL.md §5.13): ask your backend for
/// one. Called on a background thread (it may block) before the device's token expires and
/// when a reconnect finds it expired; `None` when there is none (the client then waits for
/// `set_token`). Implement it in Kotlin, Swift or Python.
#[uniffi::export(with_foreign)]
pub trait TokenSource: Send + Sync {
    /// A fresh token for this device's user, or `None`.
    fn fresh_token(&self) -> Option<String>;
}

/// Hears an upload's progress. Implement it in Kotlin, Swift or Python.
#[uniffi::export(with_foreign)]
pub trait UploadListener: Send + Sync {
    /// `stored` of `size` bytes are durable on the server.
    fn on_progress(&self, stored: u64, size: u64);
}

/// The listeners of one client and the rule that makes cancelling exact: no event reaches
/// a listener after its `cancel` has returned.
#[derive(Default)]
struct Listeners {
    list: Mutex<Vec<(u64, Arc<dyn NatterListener>)>>,
    /// True while a listener runs; `cancel` waits for it to turn false (except on the event
    /// thread itself, where a listener may cancel from inside `on_event`, and once the
    /// app's runtime has ended a thread inside a call: that listener never comes back).
    running: Mutex<bool>,
    finished: std::sync::Condvar,
    thread: std::sync::OnceLock<std::thread::ThreadId>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A listener that panicked must not stop every later event.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Listeners {
    fn add(&self, id: u64, listener: Arc<dyn NatterListener>) {
        lock(&self.list).push((id, listener));
    }

    fn remove(&self, id: u64) {
        lock(&self.list).retain(|(i, _)| *i != id);
        if self.thread.get() == Some(&std::thread::current().id()) {
            return;
        }
        let mut running = lock(&self.running);
        while *running && !foreign::ended() {
            running = self
                .finished
                .wait_timeout(running, std::time::Duration::from_millis(50))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Give `event` to every listener registered now, each checked again just before.
    fn deliver(&self, event: &NatterEvent) {
        let ids: Vec<u64> = lock(&self.list).iter().map(|(id, _)| *id).collect();
        for id in ids {
            // Marked running before the check, so a `remove` after the check waits for it.
            *lock(&self.running) = true;
            let listener = lock(&self.list).iter().find(|(i, _)| *i == id).map(|(_, l)| l.clone());
            if let Some(listener) = listener {
                foreign::call(|| listener.on_event(event.clone()));
            }
            *lock(&self.running) = false;
            self.finished.notify_all();
        }
    }
}

/// A registered listener; events stop when it is cancelled or dropped (Kotlin: `close()`,
/// Swift: released, Python: garbage-collected).
#[derive(uniffi::Object)]
pub struct Subscription {
    id: u64,
    listeners: std::sync::Weak<Listeners>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("id", &self.id).finish()
    }
}

#[uniffi::export]
impl Subscription {
    /// Stop delivering events to this listener; once this returns it gets no more.
    pub fn cancel(&self) {
        if let Some(listeners) = self.listeners.upgrade() {
            listeners.remove(self.id);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A natter client: one connection that reconnects and resumes by itself.
#[derive(uniffi::Object)]
pub struct NatterClient {
    pub(crate) inner: Client,
    /// The SDK's event stream until the first subscription starts the event thread.
    events: Mutex<Option<Events>>,
    listeners: Arc<Listeners>,
    next_subscription: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for NatterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatterClient").finish_non_exhaustive()
    }
}

impl NatterClient {
    /// Connect with a finished configuration.
    fn start(config: ClientConfig) -> Result<Arc<Self>, NatterError> {
        let _rt = runtime().enter();
        let (inner, events) = Client::connect(config)?;
        Ok(Arc::new(NatterClient {
            inner,
            events: Mutex::new(Some(events)),
            listeners: Arc::new(Listeners::default()),
            next_subscription: 0.into(),
        }))
    }
}

/// Run an SDK future on the library's runtime and convert its result.
pub(crate) async fn run<T, R>(
    fut: impl Future<Output = Result<T, ClientError>> + Send + 'static,
) -> Result<R, NatterError>
where
    T: Send + 'static,
    R: From<T>,
{
    match foreign::Resumed(runtime().spawn(fut)).await {
        Ok(result) => Ok(result?.into()),
        Err(_) => Err(NatterError::Closed),
    }
}

/// An upload's progress callback for the SDK: the app's listener, if it gave one.
fn progress_of(listener: Option<Arc<dyn UploadListener>>) -> impl Fn(u64, u64) + Send {
    move |stored, size| {
        if let Some(l) = &listener {
            foreign::call(|| l.on_progress(stored, size));
        }
    }
}

fn text_body(text: String, reply_to_seq: u64) -> pb::MessageBody {
    pb::MessageBody {
        kind: pb::MessageKind::Text as i32,
        text,
        reply_to_seq,
        ..Default::default()
    }
}

fn resolve(address: &str) -> Result<SocketAddr, NatterError> {
    address
        .to_socket_addrs()
        .map_err(|e| NatterError::Setup {
            detail: format!("address {address:?}: {e}"),
        })?
        .next()
        .ok_or_else(|| NatterError::Setup {
            detail: format!("address {address:?} resolves to nothing"),
        })
}

fn config(options: ConnectOptions) -> Result<ClientConfig, NatterError> {
    let addr = resolve(&options.address)?;
    let fallback_addrs = options
        .fallback_addresses
        .iter()
        .map(|a| resolve(a))
        .collect::<Result<Vec<_>, _>>()?;
    let trust = match (options.certificate_sha256, options.ca_pem) {
        (Some(fingerprint), None) => Trust::Fingerprint(fingerprint),
        (None, Some(pem)) => Trust::CaPem(pem.into_bytes()),
        _ => {
            return Err(NatterError::Setup {
                detail: "give exactly one of certificate_sha256 and ca_pem".into(),
            })
        }
    };
    let mut config = ClientConfig::pinned(addr, "");
    config.fallback_addrs = fallback_addrs;
    config.trust = trust;
    config.server_name = options.server_name;
    config.access_token = options.access_token;
    config.resume_token = options.resume_token;
    config.cursors = options.cursors.into_iter().map(Into::into).collect();
    config.pending_uploads = options.pending_uploads;
    config.session.client_name = options.client_name;
    if let Some(ms) = options.idle_timeout_ms {
        config.idle_timeout_ms = ms;
    }
    config.keep_alive_ms = options.keep_alive_ms;
    config.encryption = match (options.encryption_state_path, options.encryption_store_key) {
        (None, None) => None,
        (Some(path), Some(key)) => {
            let key: [u8; 32] = key.try_into().map_err(|_| NatterError::Setup {
                detail: "encryption_store_key must be 32 bytes".into(),
            })?;
            Some(natter_sdk::Encryption {
                state_path: path.into(),
                store_key: natter_sdk::StoreKey(key),
            })
        }
        _ => {
            return Err(NatterError::Setup {
                detail: "give both encryption_state_path and encryption_store_key, or neither".into(),
            })
        }
    };
    Ok(config)
}

#[uniffi::export]
impl NatterClient {
    /// Start a client; it connects in the background (calls made meanwhile wait).
    #[uniffi::constructor]
    pub fn new(options: ConnectOptions) -> Result<Arc<Self>, NatterError> {
        Self::start(config(options)?)
    }

    /// Start a client whose product token (PROTOCOL.md §5.13) is renewed from `source`:
    /// the session outlives every token without the app doing anything.
    #[uniffi::constructor]
    pub fn with_token_source(options: ConnectOptions, source: Arc<dyn TokenSource>) -> Result<Arc<Self>, NatterError> {
        let mut config = config(options)?;
        config.token_provider = Some(natter_sdk::TokenProvider::new(move || {
            let source = source.clone();
            async move {
                tokio::task::spawn_blocking(move || foreign::call(|| source.fresh_token()))
                    .await
                    .ok()
                    .flatten()
            }
        }));
        Self::start(config)
    }

    /// Deliver events to `listener` until the returned subscription is cancelled/dropped.
    pub fn subscribe(&self, listener: Arc<dyn NatterListener>) -> Arc<Subscription> {
        let id = self
            .next_subscription
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.listeners.add(id, listener);
        if let Some(mut events) = lock(&self.events).take() {
            let listeners = Arc::downgrade(&self.listeners);
            std::thread::Builder::new()
                .name("natter-events".into())
                .spawn(move || {
                    while let Some(event) = runtime().block_on(events.next()) {
                        let Some(listeners) = listeners.upgrade() else { return };
                        let _ = listeners.thread.set(std::thread::current().id());
                        if let Some(event) = NatterEvent::from_session(event) {
                            listeners.deliver(&event);
                        }
                    }
                })
                .expect("natter: starting the event thread");
        }
        Arc::new(Subscription {
            id,
            listeners: Arc::downgrade(&self.listeners),
        })
    }

    /// Create an account (does not log in).
    pub async fn register(&self, username: String, password: String) -> Result<u64, NatterError> {
        let c = self.inner.clone();
        run(async move { c.register(&username, &password).await.map(|u| u.0) }).await
    }

    /// Log in as a new device; keep `accessToken` to connect later without the password.
    pub async fn login(
        &self,
        username: String,
        password: String,
        device_name: String,
    ) -> Result<LoginInfo, NatterError> {
        let c = self.inner.clone();
        run(async move { c.login(&username, &password, &device_name).await }).await
    }

    /// Log in as a new device with a product token: a JWT your backend minted for its user
    /// (PROTOCOL.md §5.13); the user is made on first use.
    pub async fn login_with_token(&self, token: String, device_name: String) -> Result<LoginInfo, NatterError> {
        let c = self.inner.clone();
        run(async move { c.login_with_token(&token, &device_name).await }).await
    }

    /// Renew this device's product token now: its new expiry (ms since the epoch), or a
    /// typed refusal (`INVALID_TOKEN`, `TOKEN_EXPIRED`).
    pub async fn refresh_token(&self, token: String) -> Result<u64, NatterError> {
        let c = self.inner.clone();
        run(async move { c.refresh_token(&token).await }).await
    }

    /// A fresh product token, e.g. answering `TokenNeeded`: renews the device's now and is
    /// used for its next authentication.
    pub fn set_token(&self, token: String) {
        self.inner.set_token(&token);
    }

    /// Revoke a device (0: this one; its connection closes).
    pub async fn logout(&self, device_id: u64) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.logout(DeviceId(device_id)).await }).await
    }

    /// This user's devices.
    pub async fn devices(&self) -> Result<Vec<Device>, NatterError> {
        let c = self.inner.clone();
        run(async move { c.devices().await.map(list) }).await
    }

    /// Every conversation, with last message, unread count and receipts.
    pub async fn conversations(&self) -> Result<Vec<Conversation>, NatterError> {
        let c = self.inner.clone();
        run(async move { c.conversations().await.map(list) }).await
    }

    /// The 1:1 conversation with `username`, created on first use.
    pub async fn direct(&self, username: String) -> Result<Conversation, NatterError> {
        let c = self.inner.clone();
        run(async move { c.direct(&username).await }).await
    }

    /// The end-to-end encrypted 1:1 conversation with `username` (PROTOCOL.md §12),
    /// created on first use; sends, edits, reactions and history there are sealed and
    /// opened by the client. Needs the encryption options.
    pub async fn encrypted_direct(&self, username: String) -> Result<Conversation, NatterError> {
        let c = self.inner.clone();
        run(async move { c.encrypted_direct(&username).await }).await
    }

    /// Set up a key backup for this user (replacing any earlier one) and back up every
    /// message key this device holds; returns the recovery key (53 characters in groups
    /// of four) — show it once, the person keeps it.
    pub async fn enable_backup(&self) -> Result<String, NatterError> {
        let c = self.inner.clone();
        run(async move { c.enable_backup().await }).await
    }

    /// Restore message keys from the key backup with the person's recovery key; how many
    /// were new. `MalformedRecoveryKey` / `WrongRecoveryKey` / `NoKeyBackup` read nothing.
    pub async fn restore_backup(&self, recovery_key: String) -> Result<u64, NatterError> {
        let c = self.inner.clone();
        run(async move { c.restore_backup(&recovery_key).await }).await
    }

    /// Upload the message keys still waiting for the backup now.
    pub async fn backup_now(&self) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.backup_now().await }).await
    }

    /// Start verifying `device_id` of `user_id` (PROTOCOL.md §12.10); the transaction id.
    /// Both devices then hear `NatterEvent.Verification` steps: `requested` on the other
    /// (accept it), then `compare` with the emoji on both, then `verified` or `cancelled`.
    pub async fn verify_device(&self, user_id: u64, device_id: u64) -> Result<String, NatterError> {
        let c = self.inner.clone();
        run(async move { c.verify_device(UserId(user_id), DeviceId(device_id)).await }).await
    }

    /// Accept another device's request to verify this one.
    pub async fn accept_verification(&self, txn: String) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.accept_verification(&txn).await }).await
    }

    /// Say whether the emoji on both screens agree.
    pub async fn confirm_verification(&self, txn: String, matches: bool) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.confirm_verification(&txn, matches).await }).await
    }

    /// Stop a verification.
    pub async fn cancel_verification(&self, txn: String) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.cancel_verification(&txn).await }).await
    }

    /// Which part of an encrypted conversation this device can read (PROTOCOL.md §12.6):
    /// the seq from which every message was sealed for it (the event that added it to the
    /// conversation's devices); `null` until it has seen that event. Earlier messages open
    /// only with keys from the backup or a verified device of this user.
    pub async fn readable_from(&self, conversation_id: u64) -> Result<Option<u64>, NatterError> {
        let c = self.inner.clone();
        let from: Option<natter_sdk::Seq> =
            run(async move { c.readable_from(ConversationId(conversation_id)).await }).await?;
        Ok(from.map(|s| s.0))
    }

    /// A user's devices with keys and how far this device trusts each.
    pub async fn device_trust(&self, user_id: u64) -> Result<Vec<DeviceTrust>, NatterError> {
        let c = self.inner.clone();
        let devices: Vec<natter_sdk::DeviceTrust> = run(async move { c.device_trust(UserId(user_id)).await }).await?;
        Ok(devices.into_iter().map(DeviceTrust::from).collect())
    }

    /// A new private group owned by the caller.
    pub async fn create_group(&self, name: String, usernames: Vec<String>) -> Result<Conversation, NatterError> {
        let c = self.inner.clone();
        run(async move {
            let members: Vec<&str> = usernames.iter().map(String::as_str).collect();
            c.create_group(&name, &members).await
        })
        .await
    }

    /// A new public channel owned by the caller.
    pub async fn create_channel(&self, name: String) -> Result<Conversation, NatterError> {
        let c = self.inner.clone();
        run(async move { c.create_channel(&name).await }).await
    }

    /// Join a public channel by name.
    pub async fn join_channel(&self, name: String) -> Result<Conversation, NatterError> {
        let c = self.inner.clone();
        run(async move { c.join_channel(&name).await }).await
    }

    /// Members of a conversation.
    pub async fn members(&self, conversation_id: u64) -> Result<Vec<Member>, NatterError> {
        let c = self.inner.clone();
        run(async move { c.members(ConversationId(conversation_id)).await.map(list) }).await
    }

    /// Add members to a group or channel (owners and admins).
    pub async fn add_members(&self, conversation_id: u64, usernames: Vec<String>) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move {
            let names: Vec<&str> = usernames.iter().map(String::as_str).collect();
            c.add_members(ConversationId(conversation_id), &names).await
        })
        .await
    }

    /// Remove a member.
    pub async fn remove_member(&self, conversation_id: u64, user_id: u64) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.remove_member(ConversationId(conversation_id), UserId(user_id)).await }).await
    }

    /// Leave a group or channel.
    pub async fn leave(&self, conversation_id: u64) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.leave(ConversationId(conversation_id)).await }).await
    }

    /// Rename a group or channel.
    pub async fn rename(&self, conversation_id: u64, name: String) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.rename(ConversationId(conversation_id), &name).await }).await
    }

    /// Change a member's role (owner); `OWNER` transfers ownership.
    /// Mute (until `until_ms`; 0: until unmuted), unmute, ban or unban a user in a group
    /// or channel (owners and admins).
    pub async fn moderate(
        &self,
        conversation_id: u64,
        user_id: u64,
        action: ModerationAction,
        until_ms: u64,
    ) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move {
            c.moderate(
                ConversationId(conversation_id),
                UserId(user_id),
                action.into(),
                until_ms,
            )
            .await
        })
        .await
    }

    /// A channel's slow mode: one message per member per `interval_secs` (0: off).
    pub async fn set_slow_mode(&self, conversation_id: u64, interval_secs: u32) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.set_slow_mode(ConversationId(conversation_id), interval_secs).await }).await
    }

    /// How long the conversation keeps its events (PROTOCOL.md §5.17): seconds (0:
    /// forever), or null for the server's default for its kind. Groups and channels: the
    /// owner; direct conversations: either member.
    pub async fn set_retention(&self, conversation_id: u64, retention_secs: Option<u64>) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.set_retention(ConversationId(conversation_id), retention_secs).await }).await
    }

    /// Report a message to the product's moderators.
    pub async fn report(&self, conversation_id: u64, seq: u64, reason: String) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.report(ConversationId(conversation_id), Seq(seq), &reason).await }).await
    }

    /// Change your profile (PROTOCOL.md §5.15): only the fields given change (`""` clears
    /// one); `avatar` is an https URL or `media:<id>` (see [`Self::set_avatar`]). Your
    /// contacts, fellow members and other devices hear `ProfileChanged`.
    pub async fn set_profile(
        &self,
        display_name: Option<String>,
        avatar: Option<String>,
        status: Option<String>,
    ) -> Result<Profile, NatterError> {
        let c = self.inner.clone();
        run(async move {
            c.set_profile(display_name.as_deref(), avatar.as_deref(), status.as_deref())
                .await
        })
        .await
    }

    /// Upload an image (PNG, JPEG, GIF or WebP bytes) and make it your avatar: anyone
    /// signed in may then read it and its thumbnails.
    pub async fn set_avatar(&self, name: String, mime: String, data: Vec<u8>) -> Result<Profile, NatterError> {
        let c = self.inner.clone();
        run(async move { c.set_avatar(&name, &mime, data.into()).await }).await
    }

    /// Delete your own account (PROTOCOL.md §5.16): your messages erased (or anonymised,
    /// as the server is configured), your files, devices and profile deleted. A password
    /// account confirms with its password; a product login's with "". Every device is
    /// logged out: listeners then hear `AuthFailed`.
    pub async fn delete_account(&self, password: String) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.delete_account(&password).await }).await
    }

    /// A path on the server's web endpoint that serves a zip of your data (profile,
    /// conversations, every event you sent, your files) for 15 minutes.
    pub async fn export_account(&self) -> Result<String, NatterError> {
        let c = self.inner.clone();
        run(async move { c.export_account().await.map(|e| e.path) }).await
    }

    /// Up to 100 users' profiles (unknown ones are left out).
    pub async fn profiles(&self, user_ids: Vec<u64>) -> Result<Vec<Profile>, NatterError> {
        let c = self.inner.clone();
        let users: Vec<UserId> = user_ids.into_iter().map(UserId).collect();
        run(async move { c.profiles(&users).await.map(list) }).await
    }

    pub async fn set_role(&self, conversation_id: u64, user_id: u64, role: Role) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move {
            c.set_role(ConversationId(conversation_id), UserId(user_id), role.into())
                .await
        })
        .await
    }

    /// Delete a conversation (owner).
    pub async fn delete_conversation(&self, conversation_id: u64) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.delete(ConversationId(conversation_id)).await }).await
    }

    /// Send a text message (`reply_to_seq` 0: not a reply); returns once it is durable on
    /// the server ("sent"). Survives reconnects; never duplicated.
    pub async fn send(&self, conversation_id: u64, text: String, reply_to_seq: u64) -> Result<SendAck, NatterError> {
        self.send_with_id(conversation_id, natter_sdk::new_message_id().0, text, reply_to_seq)
            .await
    }

    /// Send with an id from `newMessageId()` kept by the app: after a restart, re-send each
    /// pending send from the snapshot with its id and the server keeps it once.
    pub async fn send_with_id(
        &self,
        conversation_id: u64,
        client_msg_id: String,
        text: String,
        reply_to_seq: u64,
    ) -> Result<SendAck, NatterError> {
        let c = self.inner.clone();
        let body = text_body(text, reply_to_seq);
        run(async move {
            c.send_with_id(ConversationId(conversation_id), ClientMsgId(client_msg_id), body)
                .await
        })
        .await
    }

    /// Upload `data` for a conversation and wait until the server has checked it (PROTOCOL.md
    /// §11); `listener` hears each durable piece. Survives lost connections: each retry
    /// goes on from the server's committed offset.
    pub async fn upload(
        &self,
        conversation_id: u64,
        name: String,
        mime: String,
        data: Vec<u8>,
        listener: Option<Arc<dyn UploadListener>>,
    ) -> Result<MediaInfo, NatterError> {
        let c = self.inner.clone();
        run(async move {
            c.upload(
                ConversationId(conversation_id),
                &name,
                &mime,
                data.into(),
                progress_of(listener),
            )
            .await
        })
        .await
    }

    /// [`Self::upload`] of a file on disk (its name is the file name). Its path is kept
    /// with the upload in the snapshot, so after an app restart `resume_upload_file` needs
    /// only the upload id.
    pub async fn upload_file(
        &self,
        conversation_id: u64,
        path: String,
        mime: String,
        listener: Option<Arc<dyn UploadListener>>,
    ) -> Result<MediaInfo, NatterError> {
        let c = self.inner.clone();
        run(async move {
            c.upload_file(ConversationId(conversation_id), &path, &mime, progress_of(listener))
                .await
        })
        .await
    }

    /// Go on with an unfinished upload (after a pause, a give-up or an app restart) with
    /// the same bytes, from the server's committed offset. Another file is refused first
    /// (`NotTheSameFile`).
    pub async fn resume_upload(
        &self,
        upload_id: String,
        data: Vec<u8>,
        listener: Option<Arc<dyn UploadListener>>,
    ) -> Result<MediaInfo, NatterError> {
        let c = self.inner.clone();
        run(async move { c.resume_upload(&upload_id, data.into(), progress_of(listener)).await }).await
    }

    /// [`Self::resume_upload`] from the file `upload_file` started with (its path is in
    /// the snapshot's pending upload).
    pub async fn resume_upload_file(
        &self,
        upload_id: String,
        listener: Option<Arc<dyn UploadListener>>,
    ) -> Result<MediaInfo, NatterError> {
        let c = self.inner.clone();
        run(async move { c.resume_upload_file(&upload_id, progress_of(listener)).await }).await
    }

    /// Encrypt `data` on this device (a fresh key; chunks that verify on their own) and
    /// upload the sealed bytes: the server cannot read them and makes no thumbnails. The
    /// returned key goes with the message; `download_encrypted` opens any range with it.
    pub async fn upload_encrypted(
        &self,
        conversation_id: u64,
        name: String,
        mime: String,
        data: Vec<u8>,
        listener: Option<Arc<dyn UploadListener>>,
    ) -> Result<EncryptedUpload, NatterError> {
        let c = self.inner.clone();
        let (media, key): (MediaInfo, String) = run(async move {
            let (media, key) = c
                .upload_encrypted(
                    ConversationId(conversation_id),
                    &name,
                    &mime,
                    &data,
                    progress_of(listener),
                )
                .await?;
            Ok((MediaInfo::from(media), key.to_hex()))
        })
        .await?;
        Ok(EncryptedUpload { media, key })
    }

    /// Plaintext bytes `offset..offset + length` (`length` 0: to the end) of an encrypted
    /// file, opened with its key (hex); only the chunks that hold them are downloaded, each
    /// verified (`Decrypt` if one does not).
    pub async fn download_encrypted(
        &self,
        media_id: String,
        key: String,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, NatterError> {
        let key =
            natter_sdk::FileKey::from_hex(&key).map_err(|e| NatterError::InvalidInput { detail: e.to_string() })?;
        let c = self.inner.clone();
        run(async move { c.download_encrypted(&media_id, &key, offset, length).await }).await
    }

    /// Stop sending an upload; its running call ends with `UploadPaused`, and what the
    /// server stored stays for `resume_upload`. False if no such upload is unfinished here.
    pub fn pause_upload(&self, upload_id: String) -> bool {
        self.inner.pause_upload(&upload_id)
    }

    /// Stop an upload for good: the server deletes what it stored; its running call ends
    /// with `UploadCancelled`.
    pub async fn cancel_upload(&self, upload_id: String) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.cancel_upload(&upload_id).await }).await
    }

    /// Unfinished uploads (paused ones included), oldest first.
    pub fn pending_uploads(&self) -> Vec<PendingUpload> {
        self.inner.pending_uploads()
    }

    /// Bytes `offset..offset + length` (`length` 0: to the end) of a file or a thumbnail;
    /// from offset 0 and to the end, a lost connection is resumed by itself.
    pub async fn download(
        &self,
        media_id: String,
        variant: MediaVariant,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, NatterError> {
        let c = self.inner.clone();
        let variant = pb::MediaVariant::from(variant);
        run(async move {
            if offset == 0 && length == 0 {
                c.download_all(&media_id, variant).await
            } else {
                c.download(&media_id, variant, offset, length).await
            }
        })
        .await
    }

    /// Send a message with finished uploads attached (and optional text).
    pub async fn send_files(
        &self,
        conversation_id: u64,
        text: String,
        files: Vec<MediaInfo>,
    ) -> Result<SendAck, NatterError> {
        let c = self.inner.clone();
        let files: Vec<pb::MediaInfo> = files
            .into_iter()
            .map(|m| pb::MediaInfo {
                media_id: m.media_id,
                name: m.name,
                mime: m.mime,
                ..Default::default()
            })
            .collect();
        run(async move { c.send_attachments(ConversationId(conversation_id), &text, &files).await }).await
    }

    /// A page of history (at most `limit` events).
    pub async fn history(
        &self,
        conversation_id: u64,
        anchor: HistoryAnchor,
        limit: u32,
    ) -> Result<HistoryPage, NatterError> {
        let c = self.inner.clone();
        run(async move { c.history(ConversationId(conversation_id), anchor.into(), limit).await }).await
    }

    /// Replace the text of your message; returns the edit event's seq.
    pub async fn edit(&self, conversation_id: u64, target_seq: u64, text: String) -> Result<u64, NatterError> {
        let c = self.inner.clone();
        run(async move {
            c.edit(ConversationId(conversation_id), Seq(target_seq), &text)
                .await
                .map(|s| s.0)
        })
        .await
    }

    /// Delete a message; returns the delete event's seq.
    pub async fn delete_message(&self, conversation_id: u64, target_seq: u64) -> Result<u64, NatterError> {
        let c = self.inner.clone();
        run(async move {
            c.delete_message(ConversationId(conversation_id), Seq(target_seq))
                .await
                .map(|s| s.0)
        })
        .await
    }

    /// Add (or with `remove`, take back) a reaction; returns the event's seq.
    pub async fn react(
        &self,
        conversation_id: u64,
        target_seq: u64,
        emoji: String,
        remove: bool,
    ) -> Result<u64, NatterError> {
        let c = self.inner.clone();
        run(async move {
            c.react(ConversationId(conversation_id), Seq(target_seq), &emoji, remove)
                .await
                .map(|s| s.0)
        })
        .await
    }

    /// Move your read cursor (senders see "read").
    pub async fn mark_read(&self, conversation_id: u64, seq: u64) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.mark_read(ConversationId(conversation_id), Seq(seq)).await }).await
    }

    /// Where your message stands (sent / delivered / read, with counts for groups); `null`
    /// for channels and conversations this client has not seen.
    pub async fn message_status(&self, conversation_id: u64, seq: u64) -> Result<Option<MessageStatus>, NatterError> {
        let c = self.inner.clone();
        run(async move { c.message_status(ConversationId(conversation_id), Seq(seq)).await }).await
    }

    /// Your unread count as this client knows it.
    pub async fn unread(&self, conversation_id: u64) -> Result<Option<u32>, NatterError> {
        let c = self.inner.clone();
        run(async move { c.unread(ConversationId(conversation_id)).await }).await
    }

    /// Every member's delivered and read cursors.
    pub async fn receipts(&self, conversation_id: u64) -> Result<Vec<MemberReceipt>, NatterError> {
        let c = self.inner.clone();
        run(async move { c.receipts(ConversationId(conversation_id)).await.map(list) }).await
    }

    /// Call on every keystroke; the client rate-limits what it sends.
    pub fn typing(&self, conversation_id: u64) {
        self.inner.typing(ConversationId(conversation_id));
    }

    /// Report this device online or away (e.g. when the app goes to the background).
    pub fn set_presence(&self, state: PresenceState) {
        self.inner.set_presence(state.into());
    }

    /// Presence of these users (your contacts only).
    pub async fn presence(&self, user_ids: Vec<u64>) -> Result<Vec<Presence>, NatterError> {
        let c = self.inner.clone();
        run(async move {
            let users: Vec<UserId> = user_ids.into_iter().map(UserId).collect();
            c.presence(&users).await.map(list)
        })
        .await
    }

    /// Hide (or show) your last-seen time.
    pub async fn set_hide_last_seen(&self, hide: bool) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.set_hide_last_seen(hide).await }).await
    }

    /// One page of messages matching `query` in your conversations (PROTOCOL.md §14.3);
    /// a query the server refuses is `BAD_REQUEST` naming why. Pass `next_cursor` back as
    /// `cursor` for the next page.
    pub async fn search(&self, query: SearchQuery) -> Result<SearchResults, NatterError> {
        let c = self.inner.clone();
        run(async move { c.search(query.into()).await }).await
    }

    /// Users whose username starts with `prefix` (except those unlisted, and you).
    pub async fn search_users(&self, prefix: String, limit: u32) -> Result<Vec<UserMatch>, NatterError> {
        let c = self.inner.clone();
        run(async move { c.search_users(&prefix, limit).await.map(list) }).await
    }

    /// Public channels whose name starts with `prefix` (empty: all, by name).
    pub async fn search_channels(&self, prefix: String, limit: u32) -> Result<Vec<ChannelMatch>, NatterError> {
        let c = self.inner.clone();
        run(async move { c.search_channels(&prefix, limit).await.map(list) }).await
    }

    /// Leave yourself out of other users' `search_users` (or list yourself again).
    pub async fn set_unlisted(&self, unlisted: bool) -> Result<(), NatterError> {
        let c = self.inner.clone();
        run(async move { c.set_unlisted(unlisted).await }).await
    }

    /// Round trip to the server; returns its clock (ms since the epoch).
    pub async fn ping(&self) -> Result<u64, NatterError> {
        let c = self.inner.clone();
        run(async move { c.ping().await }).await
    }

    /// What to persist to restore the session after the app is killed.
    pub async fn snapshot(&self) -> Result<Snapshot, NatterError> {
        let c = self.inner.clone();
        run(async move { c.snapshot().await }).await
    }

    /// Drop the connection now and reconnect (e.g. on a network change); sends in flight
    /// are kept and retried.
    pub fn reconnect(&self) {
        self.inner.reconnect();
    }

    /// Close the connection and stop; events end.
    pub async fn shutdown(&self) {
        let c = self.inner.clone();
        let _ = foreign::Resumed(runtime().spawn(async move { c.shutdown().await })).await;
    }
}
