//! End-to-end encrypted direct conversations in the native SDK (PROTOCOL.md §12): the I/O
//! around the client core's [`Crypto`]. Events pass through [`pump`] in order on their way
//! to the app: encrypted messages come out opened (or as an undecryptable event with its
//! reason), device list changes are learned, and the device's key stock is topped up when
//! the server says so. Sends to an encrypted conversation are sealed for its devices,
//! claiming keys where a session is missing and sealing again when the server answers
//! `DEVICE_MISMATCH` (same client message id: exactly-once makes the retry safe).
//!
//! Message keys also go to the user's key backup when there is one (`backup`). A message
//! handed to the app undecryptable is handed on again, opened, when its key arrives
//! later (a restore from the backup): same conversation and seq, so a timeline replaces it.
//!
//! The state (Olm account, sessions, message keys) is one file, encrypted with the app's
//! store key: a log of records, one appended (and synced) after every change and before
//! the event that caused it reaches the app (§12.7), written afresh when it has grown.
//! What is policy rather than I/O — device lists, the state log's compaction, which
//! undecryptable events wait for keys — is the client core's (`client::e2ee`), for the
//! browser package to share.
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use natter_protocol::client::e2ee::backup::BackupError;
use natter_protocol::client::e2ee::conversations::{is_sealed, opened, Conversations};
use natter_protocol::client::e2ee::{Crypto, SealError, StateError, StateLog, SEAL_RANDOM_BYTES};
use natter_protocol::client::ops;
use natter_protocol::pb::{self, conversation_event::Body};
use natter_protocol::session::SessionEvent;
use natter_protocol::{ClientMsgId, ConversationId, DeviceId, UserId};
use tokio::sync::{mpsc, Mutex};

use crate::{Client, ClientError, ClientEvent, SendAck};

/// Times a sealed send is sealed again after `DEVICE_MISMATCH` before it gives up.
const SEAL_ATTEMPTS: usize = 6;
/// How long a send or history read waits for the device's first authentication.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The key the app keeps (in the platform's keystore) to encrypt the state at rest.
#[derive(Clone)]
pub struct StoreKey(pub [u8; 32]);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(…)")
    }
}

/// Where this device keeps its encryption state, and the key it is encrypted with.
#[derive(Clone, Debug)]
pub struct Encryption {
    /// The state file (created on first use; one per device login).
    pub state_path: PathBuf,
    /// Its key.
    pub store_key: StoreKey,
}

/// Why an encrypted send or the encryption state failed.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    /// The client was started without [`Encryption`].
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
    /// The state file could not be written or read.
    #[error("encryption state file: {0}")]
    Io(String),
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
}

struct Inner {
    crypto: Option<Crypto>,
    /// Which conversations are encrypted, their device lists, the events the app got
    /// undecryptable.
    convs: Conversations,
    /// Device verifications under way, by transaction.
    verifications: HashMap<String, natter_protocol::client::e2ee::verify::Verification>,
    /// Devices of this user whose last key share arrived (user, device), not yet matched
    /// with this device's own "verified" for them.
    shared_by: std::collections::HashSet<(u64, u64)>,
    /// Verified devices of this user whose key share the app's "verified" waits for:
    /// (transaction, user, device) of the update.
    verified_pending: HashMap<(u64, u64), (String, UserId, DeviceId)>,
}

/// The SDK's encryption, shared by the client handle and the event pump.
pub(crate) struct E2ee {
    config: Encryption,
    inner: Mutex<Inner>,
    /// True once this device's account is loaded (after the first authentication).
    ready: tokio::sync::watch::Sender<bool>,
    /// A backup upload is running (one at a time).
    backing_up: std::sync::atomic::AtomicBool,
    /// The state could not be written after the event being handed on.
    unsaved_event: std::sync::atomic::AtomicBool,
    /// The state log's size: when to write it afresh.
    log: std::sync::Mutex<StateLog>,
    /// The app's event stream (set by the pump), for verification steps.
    app: std::sync::OnceLock<mpsc::UnboundedSender<ClientEvent>>,
}

impl fmt::Debug for E2ee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2ee")
            .field("state_path", &self.config.state_path)
            .finish()
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    b
}

mod backup;
mod verify;
pub use verify::DeviceTrust;

impl E2ee {
    pub(crate) fn new(config: Encryption) -> Arc<Self> {
        Arc::new(E2ee {
            config,
            inner: Mutex::new(Inner {
                crypto: None,
                convs: Conversations::default(),
                verifications: HashMap::new(),
                shared_by: Default::default(),
                verified_pending: HashMap::new(),
            }),
            ready: tokio::sync::watch::Sender::new(false),
            backing_up: Default::default(),
            unsaved_event: Default::default(),
            log: Default::default(),
            app: std::sync::OnceLock::new(),
        })
    }

    /// Write what changed in the state before anything acts on it: one record appended
    /// to the state log and synced; when the log has grown well past the state it holds
    /// (or there is none yet), the whole state instead, written to a temporary file,
    /// synced and renamed over the old one.
    async fn save(&self, crypto: &mut Crypto) -> Result<(), E2eeError> {
        let compact = self.log.lock().expect("log sizes").whole_next();
        let path = self.config.state_path.clone();
        let bytes = if compact {
            crypto.save(&self.config.store_key.0, random())
        } else {
            crypto.save_record(&self.config.store_key.0, random())
        };
        let len = bytes.len() as u64;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            if !compact {
                let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
                f.write_all(&bytes)?;
                return f.sync_data();
            }
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| E2eeError::Io(e.to_string()))?
        .map_err(|e| E2eeError::Io(e.to_string()))?;
        self.log.lock().expect("log sizes").wrote(compact, len);
        Ok(())
    }

    /// After each authentication: load or make this device's account, then publish what
    /// is due.
    async fn connected(&self, client: &Client, user: UserId, device: DeviceId) -> Result<(), E2eeError> {
        let mut inner = self.inner.lock().await;
        let fresh = match inner.crypto.as_ref() {
            Some(c) => (c.user(), c.device()) != (user, device),
            None => true,
        };
        if fresh {
            let loaded = match std::fs::read(&self.config.state_path) {
                Ok(bytes) => Some(Crypto::load(&self.config.store_key.0, &bytes)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(E2eeError::Io(e.to_string())),
            };
            // A state of another login is another device's: this login starts afresh.
            let crypto = loaded
                .filter(|c| (c.user(), c.device()) == (user, device))
                .unwrap_or_else(|| Crypto::new(user, device));
            inner.crypto = Some(crypto);
        }
        self.ready.send_replace(true);
        let crypto = inner.crypto.as_mut().expect("set above");
        let counts = if crypto.published() {
            client.call(ops::upload_keys(pb::UploadKeys::default())).await.ok()
        } else {
            None
        };
        drop(inner);
        self.top_up(client, counts.as_ref()).await?;
        self.ensure_user_key(client).await?;
        self.sync_backup(client).await
    }

    /// Wait (up to `limit`) until the device's account is loaded: a send or a history
    /// read made right after connecting waits for the login it needs.
    async fn wait_ready(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.ready.subscribe();
        let ready = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Publish keys if the stock needs them.
    async fn top_up(&self, client: &Client, counts: Option<&pb::KeyCounts>) -> Result<(), E2eeError> {
        let mut inner = self.inner.lock().await;
        let Some(crypto) = inner.crypto.as_mut() else {
            return Ok(());
        };
        let Some(upload) = crypto.keys_to_upload(counts) else {
            return Ok(());
        };
        // Saved before the upload: a key the server may hold is never lost.
        self.save(crypto).await?;
        match client.call(ops::upload_keys(upload)).await {
            Ok(_) => {}
            // Already there (an answer lost before): published all the same.
            Err(e) if e.code() == Some(pb::ErrorCode::Conflict) => {}
            Err(e) => {
                tracing::warn!(error = %e, "publishing encryption keys failed; retried on the next connect");
                return Ok(());
            }
        }
        let crypto = inner.crypto.as_mut().expect("still set");
        crypto.uploaded();
        self.save(crypto).await
    }

    /// A device's keys for opening its message: the conversation's list, else the server.
    async fn sender_keys(&self, client: &Client, ev: &pb::ConversationEvent) -> Option<pb::DeviceKeys> {
        let listed = self.inner.lock().await.convs.sender(ev);
        if listed.is_some() {
            return listed;
        }
        let who = (ev.sender_user_id, ev.sender_device_id);
        let devices = client.call(ops::device_keys(ev.sender_user_id)).await.ok()?;
        devices.into_iter().find(|d| (d.user_id, d.device_id) == who)
    }

    /// What the session would have acknowledged for this event itself: someone else's
    /// message (the session hands this client's own messages on unacknowledged too).
    async fn acknowledgeable(&self, ev: &pb::ConversationEvent) -> Option<(ConversationId, natter_protocol::Seq)> {
        let me = self.inner.lock().await.crypto.as_ref().map(|c| c.user().0);
        let theirs = matches!(ev.body, Some(Body::Message(_))) && me != Some(ev.sender_user_id);
        theirs.then_some((ConversationId(ev.conversation_id), natter_protocol::Seq(ev.seq)))
    }

    /// Learn from an event, and open it if it is sealed.
    async fn on_event(&self, client: &Client, ev: pb::ConversationEvent) -> ClientEvent {
        self.inner.lock().await.convs.learn(&ev);
        self.note_covered(&ev).await;
        if is_sealed(&ev) {
            return self.open(client, ev).await;
        }
        SessionEvent::Event(ev)
    }

    async fn open(&self, client: &Client, ev: pb::ConversationEvent) -> ClientEvent {
        // A message this device sealed or opened before opens from its kept key: no
        // lookup of the sender's keys, no state to write (history re-reads stay local).
        let kept = {
            let inner = self.inner.lock().await;
            inner.crypto.as_ref().is_some_and(|c| c.has_message_key(&ev))
        };
        let sender = if kept {
            None
        } else {
            self.sender_keys(client, &ev).await
        };
        let mut inner = self.inner.lock().await;
        inner.convs.note(ConversationId(ev.conversation_id), true);
        let Some(crypto) = inner.crypto.as_mut() else {
            return SessionEvent::Undecryptable {
                event: ev,
                reason: "not_for_this_device".into(),
            };
        };
        let result = crypto.open(&ev, sender.as_ref());
        // Written before the app sees the message (and so before it can be acknowledged).
        if !kept {
            if let Err(e) = self.save(crypto).await {
                // Not acknowledged, then: after a restart the server delivers it again.
                tracing::error!(error = %e, "encryption state not saved");
                self.unsaved_event.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        match result {
            Ok(content) => SessionEvent::Event(opened(ev, content)),
            Err(why) => {
                tracing::warn!(seq = ev.seq, reason = why.reason(), error = %why, "undecryptable event");
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
            self.unsaved_event.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// The seq from which `conv`'s messages are sealed for this device, once it saw the
    /// event that added it.
    pub(crate) async fn readable_from(&self, conv: ConversationId) -> Option<natter_protocol::Seq> {
        let inner = self.inner.lock().await;
        inner.crypto.as_ref().and_then(|c| c.covered_from(conv))
    }

    /// Keep an event the app got undecryptable, to open when its key arrives.
    async fn unopened(&self, ev: pb::ConversationEvent) {
        self.inner.lock().await.convs.keep_unopened(ev);
    }

    /// Hand on again, opened, every event the app got undecryptable whose key this
    /// device now keeps (after keys arrived: a restore from the backup); how many.
    pub(crate) async fn reopen(&self) -> usize {
        let reopened: Vec<pb::ConversationEvent> = {
            let mut guard = self.inner.lock().await;
            let inner = &mut *guard;
            let Some(crypto) = inner.crypto.as_mut() else {
                return 0;
            };
            inner.convs.reopen(crypto)
        };
        let n = reopened.len();
        if let Some(app) = self.app.get() {
            for ev in reopened {
                let _ = app.send(SessionEvent::Event(ev));
            }
        }
        n
    }

    /// Open the events of a history page (message keys of opened messages are kept, so
    /// what this device read before opens again); those that do not open are kept to come
    /// again, opened, as events when their keys arrive.
    pub(crate) async fn open_page(&self, client: &Client, page: &mut pb::HistoryPage) {
        self.wait_ready(READY_WAIT).await;
        for ev in page.events.iter_mut() {
            // The event that added this device may be in the page (a device that reads
            // history before its event stream got there).
            self.note_covered(ev).await;
            if is_sealed(ev) {
                match self.open(client, ev.clone()).await {
                    SessionEvent::Event(open) => *ev = open,
                    // Handed on again, opened, if its key arrives (a restore, a share).
                    _ => self.unopened(ev.clone()).await,
                }
            }
        }
    }

    /// Learn which conversations are encrypted from a list of them, and open their last
    /// messages (what a conversation list shows).
    pub(crate) async fn open_summaries(&self, client: &Client, list: &mut [pb::ConversationSummary]) {
        for c in list.iter() {
            self.note(ConversationId(c.conversation_id), c.encrypted).await;
        }
        if !*self.ready.borrow() {
            return;
        }
        for c in list.iter_mut() {
            if let Some(last) = c.last_message.as_mut().filter(|ev| is_sealed(ev)) {
                if let SessionEvent::Event(open) = self.open(client, last.clone()).await {
                    *last = open;
                }
            }
        }
    }

    /// Remember whether a conversation is encrypted.
    pub(crate) async fn note(&self, conv: ConversationId, encrypted: bool) {
        self.inner.lock().await.convs.note(conv, encrypted);
    }

    /// Whether a conversation is encrypted, if this device knows.
    pub(crate) async fn is_encrypted(&self, conv: ConversationId) -> Option<bool> {
        self.inner.lock().await.convs.is_encrypted(conv)
    }

    /// The conversation's devices: as learned, else every member's from the server.
    async fn list(&self, client: &Client, conv: ConversationId) -> Result<Vec<pb::DeviceKeys>, ClientError> {
        if let Some(l) = self.inner.lock().await.convs.devices(conv) {
            return Ok(l.to_vec());
        }
        let mut list = Vec::new();
        for m in client.members(conv).await? {
            list.extend(client.call(ops::device_keys(m.user_id)).await?);
        }
        self.inner.lock().await.convs.set_devices(conv, list.clone());
        Ok(list)
    }

    /// Seal and send `content` as message `id`, covering the conversation's devices.
    pub(crate) async fn send(
        &self,
        client: &Client,
        conv: ConversationId,
        id: ClientMsgId,
        content: pb::SealedContent,
    ) -> Result<SendAck, ClientError> {
        let mut devices = self.list(client, conv).await?;
        for _ in 0..SEAL_ATTEMPTS {
            let envelope = self.seal(client, conv, &id, &content, &devices).await?;
            let body = pb::MessageBody {
                kind: pb::MessageKind::Text as i32,
                encrypted: Some(envelope),
                ..Default::default()
            };
            match client.send_as_is(conv, id.clone(), body).await {
                Ok(ack) => return Ok(ack),
                Err(e) if e.code() == Some(pb::ErrorCode::DeviceMismatch) => {
                    let Some(m) = e.server_error().and_then(|s| s.device_mismatch.clone()) else {
                        return Err(e);
                    };
                    devices = self.inner.lock().await.convs.fix_devices(conv, &devices, &m);
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::E2ee(E2eeError::Unsettled))
    }

    async fn seal(
        &self,
        client: &Client,
        conv: ConversationId,
        id: &ClientMsgId,
        content: &pb::SealedContent,
        devices: &[pb::DeviceKeys],
    ) -> Result<pb::Envelope, ClientError> {
        if !self.wait_ready(READY_WAIT).await {
            return Err(ClientError::E2ee(E2eeError::NoDevice));
        }
        let mut claimed: Vec<pb::ClaimedKey> = Vec::new();
        loop {
            let mut inner = self.inner.lock().await;
            let crypto = inner.crypto.as_mut().ok_or(ClientError::E2ee(E2eeError::NoDevice))?;
            let r = crypto.seal(conv, &id.0, content, devices, &claimed, random::<SEAL_RANDOM_BYTES>());
            match r {
                Ok(env) => {
                    self.save(crypto).await.map_err(ClientError::E2ee)?;
                    return Ok(env);
                }
                Err(SealError::NeedKeys(need)) if claimed.is_empty() => {
                    drop(inner);
                    let mut by_user: HashMap<u64, Vec<u64>> = HashMap::new();
                    for d in &need {
                        by_user.entry(d.user_id).or_default().push(d.device_id);
                    }
                    for (user, devices) in by_user {
                        claimed.extend(client.call(ops::claim_keys(user, devices)).await?);
                    }
                    if claimed.is_empty() {
                        return Err(ClientError::E2ee(E2eeError::Seal(SealError::NeedKeys(need))));
                    }
                }
                Err(e) => return Err(ClientError::E2ee(E2eeError::Seal(e))),
            }
        }
    }
}

/// Pass session events to the app in order, opening and learning on the way.
pub(crate) async fn pump(
    e2ee: Arc<E2ee>,
    client: Client,
    mut raw: mpsc::UnboundedReceiver<ClientEvent>,
    app: mpsc::UnboundedSender<ClientEvent>,
) {
    let _ = e2ee.app.set(app.clone());
    while let Some(ev) = raw.recv().await {
        let out = match ev {
            SessionEvent::ToDevice(t) => {
                e2ee.on_to_device(&client, t).await;
                continue;
            }
            SessionEvent::Connected { user_id, device_id, .. } => {
                if let Err(e) = e2ee.connected(&client, user_id, device_id).await {
                    tracing::error!(error = %e, "encryption unavailable on this connection");
                    let reason = if matches!(e, E2eeError::State(_)) {
                        "state"
                    } else {
                        "storage"
                    };
                    let _ = app.send(SessionEvent::EncryptionUnavailable {
                        reason: reason.into(),
                        message: e.to_string(),
                    });
                }
                ev
            }
            SessionEvent::KeyCounts(c) => {
                if let Err(e) = e2ee.top_up(&client, Some(&c)).await {
                    tracing::warn!(error = %e, "topping up one-time keys failed");
                }
                continue;
            }
            SessionEvent::Conversations(mut list) => {
                e2ee.open_summaries(&client, &mut list).await;
                SessionEvent::Conversations(list)
            }
            SessionEvent::Event(e) => {
                let ack = e2ee.acknowledgeable(&e).await;
                let out = e2ee.on_event(&client, e).await;
                if let SessionEvent::Undecryptable { event, .. } = &out {
                    e2ee.unopened(event.clone()).await;
                }
                // After the state is written: the message may now count as delivered.
                let unsaved = e2ee.unsaved_event.swap(false, std::sync::atomic::Ordering::AcqRel);
                if let Some((conv, seq)) = ack.filter(|_| !unsaved) {
                    client.acknowledge(conv, seq);
                }
                e2ee.kick_backup(&client).await;
                out
            }
            other => other,
        };
        if app.send(out).is_err() {
            return;
        }
    }
}
