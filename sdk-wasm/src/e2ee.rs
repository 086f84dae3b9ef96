//! End-to-end encrypted direct conversations in the browser (PROTOCOL.md §12): the I/O
//! around the client core's [`Crypto`], as natter-sdk's `e2ee.rs` does it natively. Every
//! event bound for the app passes through [`pump`] in order: sealed messages come out
//! opened (or as an undecryptable event with its reason), device list changes are
//! learned, the key stock is topped up when the server says so, and a message is
//! acknowledged only once what it changed in the state is written (§12.7). Sends to an
//! encrypted conversation are sealed for its devices, claiming keys where a session is
//! missing and sealing again on `DEVICE_MISMATCH` (same client message id).
//!
//! Message keys also go to the user's key backup when there is one (`backup`), and device
//! verification and key sharing between a user's verified devices are in `verify`.
//!
//! The state lives in IndexedDB (`store`), encrypted with the app's store key. What is
//! policy rather than I/O — device lists, when to rewrite the state, which undecryptable
//! events wait for keys — is the client core's (`client::e2ee`), shared with natter-sdk.
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use futures::lock::Mutex;
use futures::{FutureExt, StreamExt};
use natter_protocol::client::e2ee::conversations::{is_sealed, opened, Conversations};
use natter_protocol::client::e2ee::{Crypto, SealError, StateLog, SEAL_RANDOM_BYTES};
use natter_protocol::client::model::NatterEvent;
use natter_protocol::client::ops;
use natter_protocol::pb::{self, conversation_event::Body};
use natter_protocol::session::{RequestError, SessionEvent};
use natter_protocol::{ClientMsgId, ConversationId, DeviceId, Seq, UserId};

use crate::client::{Inner, Wake};
use crate::view::JsError;

mod backup;
mod store;
mod verify;

/// Times a sealed send is sealed again after `DEVICE_MISMATCH` before it gives up.
const SEAL_ATTEMPTS: usize = 6;
/// How long a send or history read waits for the device's first authentication (ms).
const READY_WAIT_MS: u32 = 30_000;

/// An encryption failure as a rejected promise sees it.
pub(crate) fn error(message: impl std::fmt::Display) -> JsError {
    JsError::local("ENCRYPTION", message.to_string())
}

/// Fresh random bytes from the browser's CSPRNG.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("crypto.getRandomValues");
    b
}

/// What the pump and the client's calls share.
struct State {
    crypto: Option<Crypto>,
    verifications: HashMap<String, natter_protocol::client::e2ee::verify::Verification>,
}

/// The browser client's encryption.
pub(crate) struct E2ee {
    store_key: [u8; 32],
    db: store::StateDb,
    name: String,
    /// The account and sessions; held across the state write that follows a change.
    state: Mutex<State>,
    /// Which conversations are encrypted, their device lists, the events the app got
    /// undecryptable (never held across an await).
    convs: RefCell<Conversations>,
    /// The state log's size: when to write it afresh.
    log: RefCell<StateLog>,
    /// The account is loaded (after the first authentication); who waits for it.
    ready: Cell<bool>,
    waiting: RefCell<Vec<oneshot::Sender<()>>>,
    /// The state could not be written after the event being handed on.
    unsaved_event: Cell<bool>,
    /// A backup upload is running (one at a time).
    backing_up: Cell<bool>,
}

impl E2ee {
    /// `name`: the IndexedDB database of this device's state.
    pub(crate) fn new(store_key: [u8; 32], name: String) -> Rc<Self> {
        Rc::new(E2ee {
            store_key,
            db: store::StateDb::new(name.clone()),
            name,
            state: Mutex::new(State {
                crypto: None,
                verifications: HashMap::new(),
            }),
            convs: RefCell::default(),
            log: RefCell::default(),
            ready: Cell::new(false),
            waiting: RefCell::default(),
            unsaved_event: Cell::new(false),
            backing_up: Cell::new(false),
        })
    }

    /// Write what changed before anything acts on it: one record, or the whole state when
    /// the log has grown well past it (or there is none yet).
    async fn save(&self, crypto: &mut Crypto) -> Result<(), JsError> {
        let whole = self.log.borrow().whole_next();
        let bytes = if whole {
            crypto.save(&self.store_key, random())
        } else {
            crypto.save_record(&self.store_key, random())
        };
        self.db
            .write(&bytes, whole)
            .await
            .map_err(|e| error(format!("writing the encryption state: {e}")))?;
        self.log.borrow_mut().wrote(whole, bytes.len() as u64);
        Ok(())
    }

    async fn wait_ready(&self) -> Result<(), JsError> {
        if self.ready.get() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().push(tx);
        futures::select! {
            r = rx.fuse() => r.map_err(|_| error("the client closed")),
            _ = gloo_timers::future::TimeoutFuture::new(READY_WAIT_MS).fuse() =>
                Err(JsError::local("ENCRYPTION", "not connected as a device yet")),
        }
    }

    /// After each authentication: load or make this device's account, then publish keys.
    async fn connected(&self, inner: &Inner, user: UserId, device: DeviceId) -> Result<(), JsError> {
        let mut state = self.state.lock().await;
        let fresh = state
            .crypto
            .as_ref()
            .is_none_or(|c| (c.user(), c.device()) != (user, device));
        if fresh {
            if !self.db.take().await {
                return Err(JsError::local(
                    "ENCRYPTION_IN_USE",
                    "this device's encryption state is open in another tab or window",
                ));
            }
            let saved = self
                .db
                .load()
                .await
                .map_err(|e| error(format!("reading the encryption state: {e}")))?;
            let loaded = match saved {
                Some(bytes) => {
                    Some(Crypto::load(&self.store_key, &bytes).map_err(|e| JsError::local("STATE", e.to_string()))?)
                }
                None => None,
            };
            // A state of another login is another device's: this login starts afresh
            // (and its first write replaces the old log).
            state.crypto = Some(
                loaded
                    .filter(|c| (c.user(), c.device()) == (user, device))
                    .unwrap_or_else(|| Crypto::new(user, device)),
            );
            *self.log.borrow_mut() = StateLog::default();
        }
        self.ready.set(true);
        for w in self.waiting.borrow_mut().drain(..) {
            let _ = w.send(());
        }
        let published = state.crypto.as_ref().is_some_and(Crypto::published);
        drop(state);
        let counts = if published {
            inner.call(ops::upload_keys(pb::UploadKeys::default())).await.ok()
        } else {
            None
        };
        self.top_up(inner, counts.as_ref()).await?;
        self.ensure_user_key(inner).await?;
        self.sync_backup(inner).await
    }

    /// Publish keys if the stock needs them (saved first: a key the server may hold is
    /// never lost).
    async fn top_up(&self, inner: &Inner, counts: Option<&pb::KeyCounts>) -> Result<(), JsError> {
        let mut state = self.state.lock().await;
        let Some(crypto) = state.crypto.as_mut() else {
            return Ok(());
        };
        let Some(upload) = crypto.keys_to_upload(counts) else {
            return Ok(());
        };
        self.save(crypto).await?;
        match inner.call(ops::upload_keys(upload)).await {
            Ok(_) => {}
            // Already there (an answer lost before): published all the same.
            Err(e) if e.code == "CONFLICT" => {}
            Err(_) => return Ok(()),
        }
        let crypto = state.crypto.as_mut().expect("still set");
        crypto.uploaded();
        self.save(crypto).await
    }

    /// The server's keys of a user's devices.
    pub(crate) async fn device_keys(&self, inner: &Inner, user: u64) -> Result<Vec<pb::DeviceKeys>, JsError> {
        inner.call(ops::device_keys(user)).await
    }

    /// Open a sealed event (learning from it first); the event for the app.
    async fn open(&self, inner: &Inner, ev: pb::ConversationEvent) -> SessionEvent {
        self.convs.borrow_mut().note(ConversationId(ev.conversation_id), true);
        let kept = {
            let state = self.state.lock().await;
            state.crypto.as_ref().is_some_and(|c| c.has_message_key(&ev))
        };
        let listed = self.convs.borrow().sender(&ev);
        let sender = match (kept, listed) {
            (true, _) => None,
            (false, Some(listed)) => Some(listed),
            (false, None) => {
                let who = (ev.sender_user_id, ev.sender_device_id);
                let devices = self.device_keys(inner, ev.sender_user_id).await.unwrap_or_default();
                devices.into_iter().find(|d| (d.user_id, d.device_id) == who)
            }
        };
        let mut state = self.state.lock().await;
        let Some(crypto) = state.crypto.as_mut() else {
            return SessionEvent::Undecryptable {
                event: ev,
                reason: "not_for_this_device".into(),
            };
        };
        let result = crypto.open(&ev, sender.as_ref());
        // Written before the app sees the message (and so before it is acknowledged).
        if !kept && self.save(crypto).await.is_err() {
            // Not acknowledged, then: after a reload the server delivers it again.
            self.unsaved_event.set(true);
        }
        match result {
            Ok(content) => SessionEvent::Event(opened(ev, content)),
            Err(why) => SessionEvent::Undecryptable {
                event: ev,
                reason: why.reason().into(),
            },
        }
    }

    /// Note the event that put this device into a conversation's device list (written
    /// before the event is acknowledged, like every change).
    async fn note_covered(&self, ev: &pb::ConversationEvent) {
        let mut state = self.state.lock().await;
        let Some(crypto) = state.crypto.as_mut() else {
            return;
        };
        if crypto.note_covered(ev) && self.save(crypto).await.is_err() {
            self.unsaved_event.set(true);
        }
    }

    /// The seq from which `conv`'s messages are sealed for this device, once it saw the
    /// event that added it.
    pub(crate) async fn readable_from(&self, conv: ConversationId) -> Option<Seq> {
        let state = self.state.lock().await;
        state.crypto.as_ref().and_then(|c| c.covered_from(conv))
    }

    /// Open the sealed events of a history page; those that do not open are kept to come
    /// again, opened, as events when their keys arrive.
    pub(crate) async fn open_page(&self, inner: &Inner, page: &mut pb::HistoryPage) {
        if self.wait_ready().await.is_err() {
            return;
        }
        for ev in page.events.iter_mut() {
            // The event that added this device may be in the page (a device that reads
            // history before its event stream got there).
            self.note_covered(ev).await;
            if is_sealed(ev) {
                match self.open(inner, ev.clone()).await {
                    SessionEvent::Event(open) => *ev = open,
                    // Handed on again, opened, if its key arrives (a restore, a share).
                    _ => self.convs.borrow_mut().keep_unopened(ev.clone()),
                }
            }
        }
    }

    /// Learn which conversations are encrypted from a list of them, and open their last
    /// messages (what a conversation list shows).
    pub(crate) async fn open_summaries(&self, inner: &Inner, list: &mut [pb::ConversationSummary]) {
        for c in list.iter() {
            self.note(ConversationId(c.conversation_id), c.encrypted);
        }
        if !self.ready.get() {
            return;
        }
        for c in list.iter_mut() {
            if let Some(last) = c.last_message.as_mut().filter(|ev| is_sealed(ev)) {
                if let SessionEvent::Event(open) = self.open(inner, last.clone()).await {
                    *last = open;
                }
            }
        }
    }

    /// Remember whether a conversation is encrypted.
    pub(crate) fn note(&self, conv: ConversationId, encrypted: bool) {
        self.convs.borrow_mut().note(conv, encrypted);
    }

    /// Whether sends to `conv` are sealed (asking the server once if this device has not
    /// heard of it).
    pub(crate) async fn sealing(&self, inner: &Inner, conv: ConversationId) -> Result<bool, JsError> {
        if let Some(known) = self.convs.borrow().is_encrypted(conv) {
            return Ok(known);
        }
        for c in inner.call(ops::conversations()).await? {
            self.note(ConversationId(c.conversation_id), c.encrypted);
        }
        Ok(self.convs.borrow().is_encrypted(conv).unwrap_or(false))
    }

    /// The conversation's devices: as learned, else every member's from the server.
    async fn devices(&self, inner: &Inner, conv: ConversationId) -> Result<Vec<pb::DeviceKeys>, JsError> {
        if let Some(l) = self.convs.borrow().devices(conv) {
            return Ok(l.to_vec());
        }
        let mut list = Vec::new();
        for m in inner.call(ops::members(conv)).await? {
            list.extend(self.device_keys(inner, m.user_id).await?);
        }
        self.convs.borrow_mut().set_devices(conv, list.clone());
        Ok(list)
    }

    /// Seal and send `content` as message `id`, covering the conversation's devices.
    pub(crate) async fn send(
        &self,
        inner: &Rc<Inner>,
        conv: ConversationId,
        id: ClientMsgId,
        content: pb::SealedContent,
    ) -> Result<natter_protocol::client::SendAck, JsError> {
        let mut devices = self.devices(inner, conv).await?;
        for _ in 0..SEAL_ATTEMPTS {
            let envelope = self.seal(inner, conv, &id, &content, &devices).await?;
            let body = pb::MessageBody {
                kind: pb::MessageKind::Text as i32,
                encrypted: Some(envelope),
                ..Default::default()
            };
            match crate::client::send_request(inner, conv, id.clone(), body).await {
                Ok(ack) => return Ok(ack),
                Err(RequestError::Server(s)) if s.device_mismatch.is_some() => {
                    let m = s.device_mismatch.expect("checked");
                    devices = self.convs.borrow_mut().fix_devices(conv, &devices, &m);
                }
                Err(e) => return Err((&e).into()),
            }
        }
        Err(error("the conversation's devices kept changing; send again"))
    }

    async fn seal(
        &self,
        inner: &Inner,
        conv: ConversationId,
        id: &ClientMsgId,
        content: &pb::SealedContent,
        devices: &[pb::DeviceKeys],
    ) -> Result<pb::Envelope, JsError> {
        self.wait_ready().await?;
        let mut claimed: Vec<pb::ClaimedKey> = Vec::new();
        loop {
            let mut state = self.state.lock().await;
            let crypto = state.crypto.as_mut().ok_or_else(|| error("no device yet"))?;
            match crypto.seal(conv, &id.0, content, devices, &claimed, random::<SEAL_RANDOM_BYTES>()) {
                Ok(env) => {
                    self.save(crypto).await?;
                    return Ok(env);
                }
                Err(SealError::NeedKeys(need)) if claimed.is_empty() => {
                    drop(state);
                    let mut by_user: HashMap<u64, Vec<u64>> = HashMap::new();
                    for d in &need {
                        by_user.entry(d.user_id).or_default().push(d.device_id);
                    }
                    for (user, devices) in by_user {
                        claimed.extend(inner.call(ops::claim_keys(user, devices)).await?);
                    }
                    if claimed.is_empty() {
                        return Err(error(SealError::NeedKeys(need)));
                    }
                }
                Err(e) => return Err(error(e)),
            }
        }
    }

    /// Hand on again, opened, every event the app got undecryptable whose key this device
    /// now keeps.
    async fn reopen(&self, inner: &Inner) {
        let reopened = {
            let mut state = self.state.lock().await;
            let Some(crypto) = state.crypto.as_mut() else {
                return;
            };
            self.convs.borrow_mut().reopen(crypto)
        };
        for ev in reopened {
            emit(inner, SessionEvent::Event(ev));
        }
    }

    /// Forget this device's state (its login is gone).
    pub(crate) async fn forget(&self) -> Result<(), JsError> {
        let mut state = self.state.lock().await;
        state.crypto = None;
        self.ready.set(false);
        self.db.close();
        store::forget(&self.name)
            .await
            .map_err(|e| error(format!("deleting the encryption state: {e}")))
    }
}

fn emit(inner: &Inner, ev: SessionEvent) {
    if let Some(app) = NatterEvent::from_session(ev) {
        inner.emit(&app);
    }
}

/// What the session would have acknowledged itself: someone else's message.
fn acknowledgeable(me: Option<UserId>, ev: &pb::ConversationEvent) -> Option<(ConversationId, Seq)> {
    let theirs = matches!(ev.body, Some(Body::Message(_))) && me.map(|u| u.0) != Some(ev.sender_user_id);
    theirs.then_some((ConversationId(ev.conversation_id), Seq(ev.seq)))
}

/// Hand session events to the app in order, opening and learning on the way; ends when
/// the client closes.
pub(crate) async fn pump(inner: Rc<Inner>, e2ee: Rc<E2ee>, mut events: mpsc::UnboundedReceiver<SessionEvent>) {
    while let Some(ev) = events.next().await {
        let out = match ev {
            SessionEvent::ToDevice(t) => {
                e2ee.on_to_device(&inner, t).await;
                continue;
            }
            SessionEvent::Connected { user_id, device_id, .. } => {
                if let Err(e) = e2ee.connected(&inner, user_id, device_id).await {
                    crate::client::console_error(&format!("natter: encryption unavailable: {}", e.message));
                    let reason = match e.code.as_str() {
                        "ENCRYPTION_IN_USE" => "in_use",
                        "STATE" => "state",
                        _ => "storage",
                    };
                    emit(
                        &inner,
                        SessionEvent::EncryptionUnavailable {
                            reason: reason.into(),
                            message: e.message,
                        },
                    );
                }
                ev
            }
            SessionEvent::KeyCounts(c) => {
                let _ = e2ee.top_up(&inner, Some(&c)).await;
                continue;
            }
            SessionEvent::Conversations(mut list) => {
                e2ee.open_summaries(&inner, &mut list).await;
                SessionEvent::Conversations(list)
            }
            SessionEvent::Event(e) => {
                let me = e2ee.state.lock().await.crypto.as_ref().map(Crypto::user);
                let ack = acknowledgeable(me, &e);
                e2ee.convs.borrow_mut().learn(&e);
                e2ee.note_covered(&e).await;
                let out = if is_sealed(&e) {
                    e2ee.open(&inner, e).await
                } else {
                    SessionEvent::Event(e)
                };
                if let SessionEvent::Undecryptable { event, .. } = &out {
                    e2ee.convs.borrow_mut().keep_unopened(event.clone());
                }
                // After the state is written: the message may now count as delivered.
                let unsaved = e2ee.unsaved_event.replace(false);
                if let Some((conv, seq)) = ack.filter(|_| !unsaved) {
                    let now = inner.now();
                    inner.session.borrow_mut().acknowledge(now, conv, seq);
                    inner.wake(Wake::Flush);
                }
                e2ee.kick_backup(&inner).await;
                out
            }
            other => other,
        };
        emit(&inner, out);
    }
    // Closed: another tab may take the state now.
    e2ee.db.close();
    inner.finish_events();
}
