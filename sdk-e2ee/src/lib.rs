//! natter-e2ee: the end-to-end encryption every natter SDK runs (PROTOCOL.md §12), once.
//!
//! The client core (`natter_protocol::client::e2ee`) decides everything — sealing, opening,
//! device lists, the state log, verification, key sharing, the user's signing key. This
//! crate is the order of steps around it, written once for both SDKs and generic over
//! their I/O ([`Io`]): natter-sdk gives it quinn requests, tokio tasks and a state file;
//! natter-wasm gives it the browser's transport, one thread and IndexedDB.
//!
//! Every event bound for the app passes through [`Engine::handle`] in order: sealed
//! messages come out opened (or as an undecryptable event with its reason), device list
//! changes are learned, the key stock is topped up when the server says so, and a message
//! is acknowledged only once what it changed is written (§12.7). Sends to an encrypted
//! conversation are sealed for its devices, claiming keys where a session is missing and
//! sealing again on `DEVICE_MISMATCH` under the same client message id. Message keys go
//! to the key backup (`backup`); verification, key sharing and the user's signing key
//! are in `verify`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};

use futures::channel::oneshot;
use futures::lock::Mutex;
use natter_protocol::client::e2ee::backup::BackupError;
use natter_protocol::client::e2ee::conversations::{is_sealed, opened, Conversations};
use natter_protocol::client::e2ee::verify::Verification;
use natter_protocol::client::e2ee::{Crypto, SealError, StateError, StateLog, SEAL_RANDOM_BYTES};
use natter_protocol::client::{ops, Call, SendAck};
use natter_protocol::pb::{self, conversation_event::Body};
use natter_protocol::session::{RequestError, SessionEvent};
use natter_protocol::{ClientMsgId, ConversationId, DeviceId, Seq, UserId};

mod backup;
mod search;
mod verify;

pub use search::{LocalResults, FLUSH_MS};
pub use verify::DeviceTrust;

/// `Send` where threads exist (natter-sdk's tokio tasks), nothing in a browser, where
/// one thread runs everything and JavaScript values are not `Send`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send> MaybeSend for T {}
/// `Send` where threads exist, nothing in a browser.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSend for T {}

/// `Sync` where threads exist, nothing in a browser.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Sync> MaybeSync for T {}
/// `Sync` where threads exist, nothing in a browser.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSync for T {}

/// What an SDK gives the engine: its connection, its app, its storage, its clock.
pub trait Io: MaybeSend + MaybeSync + 'static {
    /// One request, answered.
    fn call<T: MaybeSend + 'static>(&self, call: Call<T>) -> impl Future<Output = Result<T, RequestError>> + MaybeSend;
    /// Queue a message body as it is (an envelope); resolves once it is durable.
    fn send(
        &self,
        conv: ConversationId,
        id: ClientMsgId,
        body: pb::MessageBody,
    ) -> impl Future<Output = Result<SendAck, RequestError>> + MaybeSend;
    /// The app is done with `conv` up to `seq` (the session's `ack_by_app`).
    fn acknowledge(&self, conv: ConversationId, seq: Seq);
    /// Hand an event to the app (verification steps, events opened later).
    fn emit(&self, ev: SessionEvent);
    /// Take this device's state for this client alone; false when another holds it.
    fn take_state(&self) -> impl Future<Output = bool> + MaybeSend;
    /// The state log as saved, or `None` when there is none.
    fn load_state(&self) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + MaybeSend;
    /// Append a record to the state log, or (`whole`) replace it; durable when `Ok`.
    fn write_state(&self, bytes: Vec<u8>, whole: bool) -> impl Future<Output = Result<(), String>> + MaybeSend;
    /// The local search index as last written (sealed), or `None`.
    fn load_index(&self) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + MaybeSend;
    /// Replace the local search index (sealed bytes).
    fn write_index(&self, bytes: Vec<u8>) -> impl Future<Output = Result<(), String>> + MaybeSend;
    /// Wait this long.
    fn sleep(&self, ms: u32) -> impl Future<Output = ()> + MaybeSend;
    /// Run `task` on its own.
    fn spawn(&self, task: impl Future<Output = ()> + MaybeSend + 'static);
    /// Something went wrong that no caller hears of (a background step): log it.
    fn warn(&self, what: &str);
}

/// How long a send, a history read or a verification waits for the device's first
/// authentication.
const READY_WAIT_MS: u32 = 30_000;
/// Times a sealed send is sealed again after `DEVICE_MISMATCH` before it gives up.
const SEAL_ATTEMPTS: usize = 6;

/// Why an encrypted operation or the encryption state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eeError {
    /// The client was started without encryption.
    #[error("this client has no encryption state (ClientConfig::encryption)")]
    NotConfigured,
    /// Not logged in yet: the device's keys do not exist before its login.
    #[error("not connected as a device yet")]
    NoDevice,
    /// Sealing failed (a device's keys do not verify, nobody else can read it).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The saved state does not open (another store key) or is malformed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The state could not be written or read.
    #[error("encryption state storage: {0}")]
    Io(String),
    /// Another client (a tab, a process) holds this device's state.
    #[error("this device's encryption state is open in another tab, window or process")]
    InUse,
    /// The server kept naming devices the send did not cover.
    #[error("the conversation's devices kept changing; send again")]
    Unsettled,
    /// The key backup: a malformed or wrong recovery key, no backup, a corrupt key.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// A device verification could not go on (no such transaction, a step out of order,
    /// a device without keys).
    #[error("verification: {0}")]
    Verification(String),
    /// A request the encryption made failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl E2eeError {
    /// The server's error code, when a request failed with one.
    pub fn code(&self) -> Option<pb::ErrorCode> {
        match self {
            E2eeError::Request(RequestError::Server(s)) => Some(s.code),
            _ => None,
        }
    }
}

/// Fresh random bytes.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the platform's random source");
    b
}

/// What the pump and the client's calls share, under one lock.
struct Inner {
    crypto: Option<Crypto>,
    /// Device verifications under way, by transaction.
    verifications: HashMap<String, Verification>,
    /// Devices of this user whose last key share arrived, not yet matched with this
    /// device's own "verified" for them.
    shared_by: HashSet<(u64, u64)>,
    /// Verified devices of this user whose key share the app's "verified" waits for.
    verified_pending: HashMap<(u64, u64), (String, UserId, DeviceId)>,
    /// The keys of a device whose key shares are coming in: asked of the server at its
    /// first share, forgotten at its last.
    sharing: HashMap<(u64, u64), pb::DeviceKeys>,
}

/// One device's encryption: the core's [`Crypto`] and the steps around it.
pub struct Engine<I: Io> {
    io: I,
    store_key: [u8; 32],
    /// Held across the state write that follows a change.
    inner: Mutex<Inner>,
    /// Which conversations are encrypted, their device lists, the events the app got
    /// undecryptable (never held across an await).
    convs: SyncMutex<Conversations>,
    /// The state log's size: when to write it afresh.
    log: SyncMutex<StateLog>,
    /// The account is loaded (after the first authentication), and who waits for it.
    ready: SyncMutex<(bool, Vec<oneshot::Sender<()>>)>,
    /// The state could not be written after the event being handed on.
    unsaved_event: AtomicBool,
    /// A backup upload is running (one at a time).
    backing_up: AtomicBool,
    /// The device's index of what it opened (search.rs).
    search: SyncMutex<search::LocalSearch>,
}

impl<I: Io> std::fmt::Debug for Engine<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// What the session would have acknowledged itself: someone else's message.
fn acknowledgeable(me: Option<UserId>, ev: &pb::ConversationEvent) -> Option<(ConversationId, Seq)> {
    let theirs = matches!(ev.body, Some(Body::Message(_))) && me.map(|u| u.0) != Some(ev.sender_user_id);
    theirs.then_some((ConversationId(ev.conversation_id), Seq(ev.seq)))
}

impl<I: Io> Engine<I> {
    /// An engine over `io`, its state sealed with `store_key`.
    pub fn new(io: I, store_key: [u8; 32]) -> Arc<Self> {
        Arc::new(Engine {
            io,
            store_key,
            inner: Mutex::new(Inner {
                crypto: None,
                verifications: HashMap::new(),
                shared_by: HashSet::new(),
                verified_pending: HashMap::new(),
                sharing: HashMap::new(),
            }),
            convs: SyncMutex::default(),
            log: SyncMutex::default(),
            ready: SyncMutex::new((false, Vec::new())),
            unsaved_event: AtomicBool::new(false),
            backing_up: AtomicBool::new(false),
            search: SyncMutex::default(),
        })
    }

    /// The I/O it runs over.
    pub fn io(&self) -> &I {
        &self.io
    }

    fn convs(&self) -> std::sync::MutexGuard<'_, Conversations> {
        self.convs.lock().expect("conversations")
    }

    /// Write what changed before anything acts on it: one record, or the whole state when
    /// the log has grown well past it (or there is none yet).
    async fn save(&self, crypto: &mut Crypto) -> Result<(), E2eeError> {
        let whole = self.log.lock().expect("log sizes").whole_next();
        let bytes = if whole {
            crypto.save(&self.store_key, random())
        } else {
            crypto.save_record(&self.store_key, random())
        };
        let len = bytes.len() as u64;
        self.io.write_state(bytes, whole).await.map_err(E2eeError::Io)?;
        self.log.lock().expect("log sizes").wrote(whole, len);
        Ok(())
    }

    /// Wait (up to 30 s) until the device's account is loaded.
    async fn wait_ready(&self) -> Result<(), E2eeError> {
        let rx = {
            let mut ready = self.ready.lock().expect("ready");
            if ready.0 {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            ready.1.push(tx);
            rx
        };
        let timeout = self.io.sleep(READY_WAIT_MS);
        futures::pin_mut!(timeout);
        match futures::future::select(rx, timeout).await {
            futures::future::Either::Left((Ok(()), _)) => Ok(()),
            _ => Err(E2eeError::NoDevice),
        }
    }

    fn set_ready(&self, on: bool) {
        let mut ready = self.ready.lock().expect("ready");
        ready.0 = on;
        if on {
            for w in ready.1.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// After each authentication: load or make this device's account, then publish what
    /// is due (keys, the user's signing key) and learn the key backup.
    async fn connected(self: &Arc<Self>, user: UserId, device: DeviceId) -> Result<(), E2eeError> {
        let mut inner = self.inner.lock().await;
        let fresh = inner
            .crypto
            .as_ref()
            .is_none_or(|c| (c.user(), c.device()) != (user, device));
        if fresh {
            if !self.io.take_state().await {
                return Err(E2eeError::InUse);
            }
            let loaded = match self.io.load_state().await.map_err(E2eeError::Io)? {
                Some(bytes) => Some(Crypto::load(&self.store_key, &bytes)?),
                None => None,
            };
            // A state of another login is another device's: this login starts afresh
            // (and its first write replaces the old log).
            inner.crypto = Some(
                loaded
                    .filter(|c| (c.user(), c.device()) == (user, device))
                    .unwrap_or_else(|| Crypto::new(user, device)),
            );
            *self.log.lock().expect("log sizes") = StateLog::default();
            *self.search.lock().expect("search") = search::LocalSearch::default();
        }
        self.load_index().await;
        self.set_ready(true);
        let published = inner.crypto.as_ref().is_some_and(Crypto::published);
        drop(inner);
        let counts = if published {
            self.io.call(ops::upload_keys(pb::UploadKeys::default())).await.ok()
        } else {
            None
        };
        self.top_up(counts.as_ref()).await?;
        self.ensure_user_key().await?;
        let me = self.clone();
        self.io.spawn(async move { me.backfill().await });
        self.sync_backup().await
    }

    /// Publish keys if the stock needs them (saved first: a key the server may hold is
    /// never lost).
    async fn top_up(&self, counts: Option<&pb::KeyCounts>) -> Result<(), E2eeError> {
        let mut inner = self.inner.lock().await;
        let Some(crypto) = inner.crypto.as_mut() else {
            return Ok(());
        };
        let Some(upload) = crypto.keys_to_upload(counts) else {
            return Ok(());
        };
        self.save(crypto).await?;
        match self.io.call(ops::upload_keys(upload)).await {
            Ok(_) => {}
            // Already there (an answer lost before): published all the same.
            Err(RequestError::Server(s)) if s.code == pb::ErrorCode::Conflict => {}
            Err(e) => {
                self.io.warn(&format!(
                    "publishing encryption keys failed, again on the next connect: {e}"
                ));
                return Ok(());
            }
        }
        let crypto = inner.crypto.as_mut().expect("still set");
        crypto.uploaded();
        self.save(crypto).await
    }

    /// The server's keys of a user's devices.
    async fn device_keys(&self, user: u64) -> Result<Vec<pb::DeviceKeys>, E2eeError> {
        Ok(self.io.call(ops::device_keys(user)).await?)
    }

    /// Open a sealed event; the event for the app.
    async fn open(&self, ev: pb::ConversationEvent) -> SessionEvent {
        self.convs().note(ConversationId(ev.conversation_id), true);
        // A message this device sealed or opened before opens from its kept key: no
        // lookup of the sender's keys, no state to write (history re-reads stay local).
        let kept = {
            let inner = self.inner.lock().await;
            inner.crypto.as_ref().is_some_and(|c| c.has_message_key(&ev))
        };
        let listed = self.convs().sender(&ev);
        let sender = match (kept, listed) {
            (true, _) => None,
            (false, Some(listed)) => Some(listed),
            (false, None) => {
                let who = (ev.sender_user_id, ev.sender_device_id);
                let devices = self.device_keys(ev.sender_user_id).await.unwrap_or_default();
                devices.into_iter().find(|d| (d.user_id, d.device_id) == who)
            }
        };
        let mut inner = self.inner.lock().await;
        let Some(crypto) = inner.crypto.as_mut() else {
            return SessionEvent::Undecryptable {
                event: ev,
                reason: "not_for_this_device".into(),
            };
        };
        let result = crypto.open(&ev, sender.as_ref());
        // Written before the app sees the message (and so before it is acknowledged).
        if !kept && self.save(crypto).await.is_err() {
            // Not acknowledged, then: after a restart the server delivers it again.
            self.unsaved_event.store(true, Ordering::Release);
        }
        match result {
            Ok(content) => SessionEvent::Event(opened(ev, content)),
            Err(why) => {
                self.io.warn(&format!("seq {} undecryptable: {why}", ev.seq));
                SessionEvent::Undecryptable {
                    event: ev,
                    reason: why.reason().into(),
                }
            }
        }
    }

    /// Note the event that put this device into a conversation's device list (written
    /// before the event is acknowledged, like every change).
    async fn note_covered(&self, ev: &pb::ConversationEvent) {
        let mut inner = self.inner.lock().await;
        let Some(crypto) = inner.crypto.as_mut() else {
            return;
        };
        if crypto.note_covered(ev) && self.save(crypto).await.is_err() {
            self.unsaved_event.store(true, Ordering::Release);
        }
    }

    /// The seq from which `conv`'s messages are sealed for this device, once it saw the
    /// event that added it (PROTOCOL.md §12.6).
    pub async fn readable_from(&self, conv: ConversationId) -> Option<Seq> {
        let inner = self.inner.lock().await;
        inner.crypto.as_ref().and_then(|c| c.covered_from(conv))
    }

    /// Hand on again, opened, every event the app got undecryptable whose key this device
    /// now keeps (after a restore or a key share); how many.
    pub async fn reopen(&self) -> usize {
        let reopened = {
            let mut inner = self.inner.lock().await;
            let Some(crypto) = inner.crypto.as_mut() else {
                return 0;
            };
            self.convs().reopen(crypto)
        };
        let n = reopened.len();
        for ev in reopened {
            self.index(&ev);
            self.io.emit(SessionEvent::Event(ev));
        }
        n
    }

    /// Open the sealed events of a history page; those that do not open wait for their
    /// keys, to come again as events, opened, when they arrive.
    pub async fn open_page(&self, page: &mut pb::HistoryPage) {
        if self.wait_ready().await.is_err() {
            return;
        }
        for ev in page.events.iter_mut() {
            // The event that added this device may be in the page.
            self.note_covered(ev).await;
            if is_sealed(ev) {
                match self.open(ev.clone()).await {
                    SessionEvent::Event(open) => *ev = open,
                    _ => self.convs().keep_unopened(ev.clone()),
                }
            }
            self.index(ev);
        }
    }

    /// Learn which conversations are encrypted from a list of them, and open their last
    /// messages (what a conversation list shows).
    pub async fn open_summaries(&self, list: &mut [pb::ConversationSummary]) {
        for c in list.iter() {
            self.note(ConversationId(c.conversation_id), c.encrypted);
        }
        if !self.ready.lock().expect("ready").0 {
            return;
        }
        for c in list.iter_mut() {
            if let Some(last) = c.last_message.as_mut().filter(|ev| is_sealed(ev)) {
                if let SessionEvent::Event(open) = self.open(last.clone()).await {
                    *last = open;
                }
            }
        }
    }

    /// Remember whether a conversation is encrypted.
    pub fn note(&self, conv: ConversationId, encrypted: bool) {
        self.convs().note(conv, encrypted);
    }

    /// Whether sends to `conv` are sealed (asking the server once if this device has not
    /// heard of it).
    pub async fn sealing(&self, conv: ConversationId) -> Result<bool, E2eeError> {
        if let Some(known) = self.convs().is_encrypted(conv) {
            return Ok(known);
        }
        let mut list = self.io.call(ops::conversations()).await?;
        self.open_summaries(&mut list).await;
        Ok(self.convs().is_encrypted(conv).unwrap_or(false))
    }

    /// The conversation's devices: as learned, else every member's from the server.
    async fn devices(&self, conv: ConversationId) -> Result<Vec<pb::DeviceKeys>, E2eeError> {
        if let Some(l) = self.convs().devices(conv) {
            return Ok(l.to_vec());
        }
        let mut list = Vec::new();
        for m in self.io.call(ops::members(conv)).await? {
            list.extend(self.device_keys(m.user_id).await?);
        }
        self.convs().set_devices(conv, list.clone());
        Ok(list)
    }

    /// Who a message about to be sealed mentions, listed outside the ciphertext so that
    /// "mentions only" works (PROTOCOL.md §13.2): the body's own list, and each `@name` of
    /// its text that names a member — the server cannot read the text to find them.
    async fn mentions(
        &self,
        conv: ConversationId,
        body: Option<&pb::MessageBody>,
    ) -> Result<(Vec<u64>, bool), E2eeError> {
        let Some(body) = body else {
            return Ok((Vec::new(), false));
        };
        let mut ids = body.mentions.clone();
        let mut here = body.mention_here;
        let names: Vec<String> = natter_protocol::mentions::at_names(&body.text).collect();
        if !names.is_empty() {
            let members = self.io.call(ops::members(conv)).await?;
            for name in names {
                if name == "here" {
                    here = true;
                } else if let Some(m) = members.iter().find(|m| m.username == name) {
                    ids.push(m.user_id);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok((ids, here))
    }

    /// Seal and send `content` as message `id`, covering the conversation's devices.
    pub async fn send(
        &self,
        conv: ConversationId,
        id: ClientMsgId,
        content: pb::SealedContent,
    ) -> Result<SendAck, E2eeError> {
        let mut devices = self.devices(conv).await?;
        let (mentions, mention_here) = self.mentions(conv, content.body.as_ref()).await?;
        for _ in 0..SEAL_ATTEMPTS {
            let envelope = self.seal(conv, &id, &content, &devices).await?;
            let body = pb::MessageBody {
                kind: pb::MessageKind::Text as i32,
                encrypted: Some(envelope),
                mentions: mentions.clone(),
                mention_here,
                ..Default::default()
            };
            match self.io.send(conv, id.clone(), body).await {
                Ok(ack) => return Ok(ack),
                Err(RequestError::Server(s)) if s.device_mismatch.is_some() => {
                    let m = s.device_mismatch.expect("checked");
                    devices = self.convs().fix_devices(conv, &devices, &m);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(E2eeError::Unsettled)
    }

    async fn seal(
        &self,
        conv: ConversationId,
        id: &ClientMsgId,
        content: &pb::SealedContent,
        devices: &[pb::DeviceKeys],
    ) -> Result<pb::Envelope, E2eeError> {
        self.wait_ready().await?;
        let mut claimed: Vec<pb::ClaimedKey> = Vec::new();
        loop {
            let mut inner = self.inner.lock().await;
            let crypto = inner.crypto.as_mut().ok_or(E2eeError::NoDevice)?;
            match crypto.seal(conv, &id.0, content, devices, &claimed, random::<SEAL_RANDOM_BYTES>()) {
                Ok(env) => {
                    self.save(crypto).await?;
                    return Ok(env);
                }
                Err(SealError::NeedKeys(need)) if claimed.is_empty() => {
                    drop(inner);
                    let mut by_user: HashMap<u64, Vec<u64>> = HashMap::new();
                    for d in &need {
                        by_user.entry(d.user_id).or_default().push(d.device_id);
                    }
                    for (user, devices) in by_user {
                        claimed.extend(self.io.call(ops::claim_keys(user, devices)).await?);
                    }
                    if claimed.is_empty() {
                        return Err(SealError::NeedKeys(need).into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Forget this device's account (its login is gone); the SDK deletes the state.
    pub async fn unload(&self) {
        self.inner.lock().await.crypto = None;
        *self.search.lock().expect("search") = search::LocalSearch::default();
        self.set_ready(false);
    }

    /// Handle one session event on its way to the app, in order, and hand on what the
    /// app should see (none for what the encryption consumes).
    pub async fn handle(self: &Arc<Self>, ev: SessionEvent) -> Option<SessionEvent> {
        Some(match ev {
            SessionEvent::ToDevice(t) => {
                self.on_to_device(t).await;
                return None;
            }
            SessionEvent::Connected { user_id, device_id, .. } => {
                if let Err(e) = self.connected(user_id, device_id).await {
                    self.io.warn(&format!("encryption unavailable on this connection: {e}"));
                    let reason = match e {
                        E2eeError::InUse => "in_use",
                        E2eeError::State(_) => "state",
                        _ => "storage",
                    };
                    self.io.emit(SessionEvent::EncryptionUnavailable {
                        reason: reason.into(),
                        message: e.to_string(),
                    });
                }
                ev
            }
            SessionEvent::KeyCounts(c) => {
                if let Err(e) = self.top_up(Some(&c)).await {
                    self.io.warn(&format!("topping up one-time keys failed: {e}"));
                }
                return None;
            }
            SessionEvent::Conversations(mut list) => {
                self.open_summaries(&mut list).await;
                SessionEvent::Conversations(list)
            }
            SessionEvent::Event(e) => {
                let me = self.inner.lock().await.crypto.as_ref().map(Crypto::user);
                let ack = acknowledgeable(me, &e);
                self.convs().learn(&e);
                self.note_covered(&e).await;
                let out = if is_sealed(&e) {
                    self.open(e).await
                } else {
                    SessionEvent::Event(e)
                };
                match &out {
                    SessionEvent::Undecryptable { event, .. } => self.convs().keep_unopened(event.clone()),
                    SessionEvent::Event(opened) => self.index_event(opened),
                    _ => {}
                }
                // After the state is written: the message may now count as delivered.
                let unsaved = self.unsaved_event.swap(false, Ordering::AcqRel);
                if let Some((conv, seq)) = ack.filter(|_| !unsaved) {
                    self.io.acknowledge(conv, seq);
                }
                self.kick_backup().await;
                out
            }
            other => other,
        })
    }
}
