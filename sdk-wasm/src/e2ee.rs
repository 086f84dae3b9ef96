//! End-to-end encrypted direct conversations in the browser (PROTOCOL.md §12):
//! natter-e2ee's engine — the steps every SDK runs around the client core's `Crypto`, the
//! same code natter-sdk runs — over the browser's I/O ([`WasmIo`]): requests and sends
//! through this client's session, the page's one thread and timers, and the state in
//! IndexedDB (`store`), held by one tab at a time. Every event bound for the app passes
//! through [`pump`] in order. [`E2ee`] is what the JS class calls: the engine's
//! operations with their errors as rejected promises see them.
use std::cell::OnceCell;
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use futures::channel::mpsc;
use futures::StreamExt;
use natter_e2ee::{E2eeError, Engine, Io};
use natter_protocol::client::e2ee::backup::BackupError;
use natter_protocol::client::e2ee::TrustLevel;
use natter_protocol::client::model::NatterEvent;
use natter_protocol::client::{Call, SendAck};
use natter_protocol::pb;
use natter_protocol::session::{RequestError, SessionEvent};
use natter_protocol::{ClientMsgId, ConversationId, DeviceId, Seq, ServerError, UserId};
use serde::Serialize;

use crate::client::{Inner, Wake};
use crate::view::JsError;

mod store;

/// An encryption failure as a rejected promise sees it: ENCRYPTION, ENCRYPTION_IN_USE,
/// MALFORMED_RECOVERY_KEY, WRONG_RECOVERY_KEY, NO_KEY_BACKUP, or a request's own code.
pub(crate) fn js_error(e: E2eeError) -> JsError {
    let code = match &e {
        E2eeError::Request(r) => return r.into(),
        E2eeError::InUse => "ENCRYPTION_IN_USE",
        E2eeError::Backup(BackupError::Malformed(_)) => "MALFORMED_RECOVERY_KEY",
        E2eeError::Backup(BackupError::WrongKey) => "WRONG_RECOVERY_KEY",
        E2eeError::Backup(BackupError::NoBackup) => "NO_KEY_BACKUP",
        _ => "ENCRYPTION",
    };
    JsError::local(code, e.to_string())
}

/// The browser's I/O for the engine.
pub(crate) struct WasmIo {
    /// The client (set once it exists: it holds the engine).
    inner: OnceCell<Weak<Inner>>,
    db: store::StateDb,
    /// The local search index (PROTOCOL.md §14.5): a database of its own, `<state>-search`,
    /// one record, sealed with the same key.
    index_db: store::StateDb,
}

impl WasmIo {
    fn inner(&self) -> Option<Rc<Inner>> {
        self.inner.get().and_then(Weak::upgrade)
    }
}

impl Io for WasmIo {
    fn call<T: 'static>(&self, call: Call<T>) -> impl Future<Output = Result<T, RequestError>> {
        let inner = self.inner();
        async move {
            let inner = inner.ok_or(RequestError::ConnectionLost)?;
            let (op, extract) = call.into_parts();
            // A client closed before the answer: the connection is gone, as for natter-sdk.
            let res = inner.submit(op).await.unwrap_or(Err(RequestError::ConnectionLost))?;
            extract.apply(res).map_err(|_| {
                RequestError::Server(ServerError::new(
                    pb::ErrorCode::Internal,
                    "unexpected response from the server",
                ))
            })
        }
    }

    fn send(
        &self,
        conv: ConversationId,
        id: ClientMsgId,
        body: pb::MessageBody,
    ) -> impl Future<Output = Result<SendAck, RequestError>> {
        let sent = self
            .inner()
            .map(|inner| crate::client::send_request(&inner, conv, id, body));
        async move {
            match sent {
                Some(sent) => sent.await.unwrap_or(Err(RequestError::ConnectionLost)),
                None => Err(RequestError::ConnectionLost),
            }
        }
    }

    fn acknowledge(&self, conv: ConversationId, seq: Seq) {
        if let Some(inner) = self.inner() {
            let now = inner.now();
            inner.session.borrow_mut().acknowledge(now, conv, seq);
            inner.wake(Wake::Flush);
        }
    }

    fn emit(&self, ev: SessionEvent) {
        if let (Some(inner), Some(app)) = (self.inner(), NatterEvent::from_session(ev)) {
            inner.emit(&app);
        }
    }

    async fn take_state(&self) -> bool {
        self.db.take().await
    }

    async fn load_state(&self) -> Result<Option<Vec<u8>>, String> {
        self.db.load().await
    }

    async fn write_state(&self, bytes: Vec<u8>, whole: bool) -> Result<(), String> {
        self.db.write(&bytes, whole).await
    }

    async fn load_index(&self) -> Result<Option<Vec<u8>>, String> {
        self.index_db.load().await
    }

    async fn write_index(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.index_db.write(&bytes, true).await
    }

    fn sleep(&self, ms: u32) -> impl Future<Output = ()> {
        gloo_timers::future::TimeoutFuture::new(ms)
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        wasm_bindgen_futures::spawn_local(task);
    }

    fn warn(&self, what: &str) {
        crate::client::console_error(&format!("natter: {what}"));
    }
}

/// A device of a user as `deviceTrust()` resolves to it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceTrust {
    device_id: u64,
    /// The Ed25519 identity key, hex (what a verification compares).
    ed25519: String,
    /// "verified", "unverified" or "changed".
    trust: &'static str,
}

/// The browser client's encryption.
pub(crate) struct E2ee {
    engine: Arc<Engine<WasmIo>>,
    /// The IndexedDB database of the state.
    name: String,
}

impl E2ee {
    /// `name`: the IndexedDB database of this device's state.
    pub(crate) fn new(store_key: [u8; 32], name: String) -> Rc<Self> {
        let io = WasmIo {
            inner: OnceCell::new(),
            db: store::StateDb::new(name.clone()),
            index_db: store::StateDb::new(format!("{name}-search")),
        };
        Rc::new(E2ee {
            engine: Engine::new(io, store_key),
            name,
        })
    }

    /// The client the engine makes its requests with.
    pub(crate) fn attach(&self, inner: &Rc<Inner>) {
        let _ = self.engine.io().inner.set(Rc::downgrade(inner));
    }

    /// Whether sends to `conv` are sealed.
    pub(crate) async fn sealing(&self, conv: ConversationId) -> Result<bool, JsError> {
        self.engine.sealing(conv).await.map_err(js_error)
    }

    /// Seal and send `content` as message `id`.
    pub(crate) async fn send(
        &self,
        conv: ConversationId,
        id: ClientMsgId,
        content: pb::SealedContent,
    ) -> Result<SendAck, JsError> {
        self.engine.send(conv, id, content).await.map_err(js_error)
    }

    /// Remember whether a conversation is encrypted.
    pub(crate) fn note(&self, conv: ConversationId, encrypted: bool) {
        self.engine.note(conv, encrypted);
    }

    /// Open the last messages of a conversation list.
    pub(crate) async fn open_summaries(&self, list: &mut [pb::ConversationSummary]) {
        self.engine.open_summaries(list).await;
    }

    /// Open the sealed events of a history page.
    pub(crate) async fn open_page(&self, page: &mut pb::HistoryPage) {
        self.engine.open_page(page).await;
    }

    /// From which seq this device can read `conv`.
    pub(crate) async fn readable_from(&self, conv: ConversationId) -> Option<Seq> {
        self.engine.readable_from(conv).await
    }

    /// Start verifying a device; the transaction.
    pub(crate) async fn verify_device(&self, user: UserId, device: DeviceId) -> Result<String, JsError> {
        self.engine.verify_device(user, device).await.map_err(js_error)
    }

    /// Accept a requested verification.
    pub(crate) async fn accept(&self, txn: &str) -> Result<(), JsError> {
        self.engine.accept_verification(txn).await.map_err(js_error)
    }

    /// The person compared the codes.
    pub(crate) async fn confirm(&self, txn: &str, matches: bool) -> Result<(), JsError> {
        self.engine.confirm_verification(txn, matches).await.map_err(js_error)
    }

    /// Stop a verification.
    pub(crate) async fn cancel(&self, txn: &str) -> Result<(), JsError> {
        self.engine.cancel_verification(txn).await.map_err(js_error)
    }

    /// A user's devices and how far this device trusts each.
    pub(crate) async fn device_trust(&self, user: UserId) -> Result<Vec<DeviceTrust>, JsError> {
        let list = self.engine.device_trust(user).await.map_err(js_error)?;
        Ok(list
            .into_iter()
            .map(|d| DeviceTrust {
                device_id: d.device_id.0,
                ed25519: hex::encode(&d.ed25519),
                trust: match d.trust {
                    TrustLevel::Verified => "verified",
                    TrustLevel::Unverified => "unverified",
                    TrustLevel::Changed => "changed",
                },
            })
            .collect())
    }

    /// Set up a key backup; the recovery key as the person should write it down.
    pub(crate) async fn enable_backup(&self) -> Result<String, JsError> {
        Ok(self.engine.enable_backup().await.map_err(js_error)?.to_display())
    }

    /// Upload the keys waiting for the backup now.
    pub(crate) async fn flush_backup(&self) -> Result<(), JsError> {
        self.engine.flush_backup().await.map_err(js_error)
    }

    /// Restore from the backup; how many keys were new.
    pub(crate) async fn restore_backup(&self, recovery_key: &str) -> Result<u64, JsError> {
        self.engine.restore_backup(recovery_key).await.map_err(js_error)
    }

    /// Add this device's hits in the encrypted conversations of a search answer's scope
    /// (PROTOCOL.md §14.5).
    pub(crate) fn merge_local(
        &self,
        req: &natter_protocol::pb::Search,
        answer: &mut natter_protocol::pb::SearchResults,
    ) {
        self.engine.merge_local(req, answer);
    }

    /// Forget this device's state (its login is gone): unloaded, released, deleted.
    pub(crate) async fn forget(&self) -> Result<(), JsError> {
        self.engine.unload().await;
        self.engine.io().db.close();
        self.engine.io().index_db.close();
        store::forget(&format!("{}-search", self.name))
            .await
            .map_err(|e| JsError::local("ENCRYPTION", format!("deleting the search index: {e}")))?;
        store::forget(&self.name)
            .await
            .map_err(|e| JsError::local("ENCRYPTION", format!("deleting the encryption state: {e}")))
    }
}

/// Hand session events to the app in order, opening and learning on the way; ends when
/// the client closes (and lets another tab take the state).
pub(crate) async fn pump(inner: Rc<Inner>, e2ee: Rc<E2ee>, mut events: mpsc::UnboundedReceiver<SessionEvent>) {
    e2ee.attach(&inner);
    while let Some(ev) = events.next().await {
        if let Some(app) = e2ee.engine.handle(ev).await.and_then(NatterEvent::from_session) {
            inner.emit(&app);
        }
    }
    e2ee.engine.io().db.close();
    inner.finish_events();
}
