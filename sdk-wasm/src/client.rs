//! `NatterClient`, the JavaScript API: one object per signed-in device, Promises for
//! requests, an event callback (or `nextEvent()` / `for await`) for everything pushed.
//! State lives in the shared [`Inner`]; the [`crate::driver`] task owns the connection.
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use js_sys::{Array, Promise, Reflect};
use natter_protocol::client::model::NatterEvent;
use natter_protocol::client::{ops, Call, HistoryAnchor, Reconnect, Reply, Router};
use natter_protocol::pb::{self, request::Op, response::Result as Res};
use natter_protocol::session::RequestError;
use natter_protocol::{
    ClientMsgId, ClientSession, ConversationId, DeviceId, Millis, Seq, SessionConfig, SessionEvent, UserId,
};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use natter_protocol::client::model::{
    self, Conversation, Device, HistoryPage, Member, MemberReceipt, Presence, SendAck,
};

use crate::view::{JsError, Transport, TransportChoice};

/// Wake-ups for the driver.
#[derive(Debug)]
pub(crate) enum Wake {
    /// The session has something to send.
    Flush,
    /// Drop the connection and reconnect now.
    Reconnect,
    /// Stop.
    Close,
    /// A fresh product token (PROTOCOL.md §5.13), from `setToken` or the token provider.
    ProductToken(String),
    /// Open an upload stream with this header and body (WebTransport only).
    UploadStream(
        Vec<u8>,
        web_sys::Blob,
        web_sys::AbortSignal,
        oneshot::Sender<Result<(), String>>,
    ),
}

/// A caller waiting on a futures oneshot (behind a Promise).
pub(crate) struct Waiter<T>(oneshot::Sender<T>);

impl<T> Reply<T> for Waiter<T> {
    fn reply(self, value: T) {
        let _ = self.0.send(value);
    }
}

/// Requests, sends and downloads waiting for their outcome (the client core's router).
pub(crate) type Pending = Router<
    Waiter<Result<Res, RequestError>>,
    Waiter<Result<natter_protocol::client::SendAck, RequestError>>,
    crate::media::Collect,
>;

/// An upload's reports from the control stream; `None`: the connection that carried its
/// stream is gone (its reports with it).
pub(crate) type UploadReports = mpsc::UnboundedSender<Option<pb::UploadProgress>>;

/// Client options that stay fixed.
#[derive(Debug)]
pub(crate) struct Config {
    pub server: String,
    pub choice: TransportChoice,
    pub reconnect_min_ms: u32,
    pub reconnect_max_ms: u32,
}

/// Where events go: the callback if set, else a queue drained by `nextEvent()`.
#[derive(Default)]
struct Events {
    callback: Option<js_sys::Function>,
    queue: VecDeque<JsValue>,
    waiters: VecDeque<oneshot::Sender<JsValue>>,
    finished: bool,
}

/// What the client object and the driver share (single-threaded: `RefCell`s, never held
/// across an await or a call into JavaScript).
pub(crate) struct Inner {
    pub session: RefCell<ClientSession>,
    pub pending: RefCell<Pending>,
    pub transport: Cell<Option<Transport>>,
    /// Backoff and the server's pauses (the client core's policy).
    pub reconnect: RefCell<Reconnect>,
    pub config: Config,
    /// Uploads in progress, by upload id: where their reports go, and what aborts their
    /// stream or PATCH (a pause or cancel).
    pub uploads: RefCell<std::collections::HashMap<String, (UploadReports, web_sys::AbortController)>>,
    /// Unfinished uploads (the client core's record), for the snapshot.
    pub pending_uploads: RefCell<natter_protocol::client::upload::Uploads>,
    /// End-to-end encryption, when `connect` was given `encryption`.
    pub e2ee: Option<Rc<crate::e2ee::E2ee>>,
    /// With encryption, app-bound session events go through its pump, in order (taken
    /// when the client closes, which ends the pump).
    to_pump: RefCell<Option<mpsc::UnboundedSender<SessionEvent>>>,
    wake: mpsc::UnboundedSender<Wake>,
    events: RefCell<Events>,
    start: f64,
    /// `connect`'s `tokenProvider`: `async () => token | null`.
    token_provider: Option<js_sys::Function>,
}

/// A value as JavaScript sees it: plain JSON-compatible objects (numbers, not BigInts).
pub fn to_js<T: Serialize + ?Sized>(value: &T) -> JsValue {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or(JsValue::UNDEFINED)
}

/// A rejected promise's value: an `Error` with `code` (and `retryAfterMs`).
pub(crate) fn js_error(e: &JsError) -> JsValue {
    let err = js_sys::Error::new(&e.message);
    let _ = Reflect::set(&err, &"code".into(), &e.code.clone().into());
    if let Some(ms) = e.retry_after_ms {
        let _ = Reflect::set(&err, &"retryAfterMs".into(), &ms.into());
    }
    err.into()
}

impl Inner {
    pub(crate) fn now(&self) -> Millis {
        Millis((js_sys::Date::now() - self.start).max(0.0) as u64)
    }

    pub(crate) fn wake(&self, w: Wake) {
        let _ = self.wake.unbounded_send(w);
    }

    /// A fresh product token into the session (sent as RefreshToken or Authenticate).
    pub(crate) fn take_token(&self, token: String) {
        let now = self.now();
        self.session.borrow_mut().set_product_token(now, token);
    }

    /// Ask the app's `tokenProvider` for a fresh product token; its answer reaches the
    /// driver as a wake-up (PROTOCOL.md §5.13).
    pub(crate) fn ask_for_token(&self) {
        let Some(provider) = &self.token_provider else { return };
        let answer = provider.call0(&JsValue::NULL);
        let wake = self.wake.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let value = match answer {
                Ok(v) if v.has_type::<Promise>() => wasm_bindgen_futures::JsFuture::from(Promise::from(v)).await.ok(),
                Ok(v) => Some(v),
                Err(_) => None,
            };
            if let Some(token) = value.and_then(|v| v.as_string()) {
                let _ = wake.unbounded_send(Wake::ProductToken(token));
            }
        });
    }

    /// Send a request; resolves to its outcome, or `Canceled` when the client closed
    /// before it was answered.
    pub(crate) fn submit(&self, op: Op) -> oneshot::Receiver<Result<Res, RequestError>> {
        let (tx, rx) = oneshot::channel();
        let now = self.now();
        {
            let mut session = self.session.borrow_mut();
            self.pending.borrow_mut().request(&mut session, now, op, Waiter(tx));
        }
        self.wake(Wake::Flush);
        rx
    }

    /// Send a request; resolves to its answer.
    pub(crate) fn request(&self, op: Op) -> impl Future<Output = Result<Res, JsError>> {
        let answer = self.submit(op);
        async move {
            match answer.await {
                Ok(Ok(res)) => Ok(res),
                Ok(Err(e)) => Err((&e).into()),
                Err(_) => Err(closed()),
            }
        }
    }

    /// One of the core's operations, answered.
    pub(crate) async fn call<T>(&self, call: Call<T>) -> Result<T, JsError> {
        let (op, extract) = call.into_parts();
        let res = self.request(op).await?;
        extract
            .apply(res)
            .map_err(|_| JsError::local("UNEXPECTED", "unexpected response from the server"))
    }

    /// Hand one event (a [`model::NatterEvent`], or the transport notice) to the app.
    pub(crate) fn emit<E: Serialize>(&self, ev: &E) {
        let value = to_js(ev);
        let callback = {
            let mut events = self.events.borrow_mut();
            match &events.callback {
                Some(cb) => Some(cb.clone()),
                None => {
                    while let Some(w) = events.waiters.pop_front() {
                        match w.send(value.clone()) {
                            Ok(()) => return,
                            Err(_) => continue,
                        }
                    }
                    events.queue.push_back(value.clone());
                    None
                }
            }
        };
        if let Some(cb) = callback {
            // An exception in the app's handler must not stop the client.
            if let Err(e) = cb.call1(&JsValue::NULL, &value) {
                console_error("natter: event handler threw");
                web_sys_console_error(&e);
            }
        }
    }

    /// A session event for the app: through the encryption's pump when there is one.
    pub(crate) fn deliver(&self, ev: SessionEvent) {
        let ev = match &*self.to_pump.borrow() {
            Some(pump) => match pump.unbounded_send(ev) {
                Ok(()) => return,
                Err(e) => e.into_inner(),
            },
            None => ev,
        };
        if let Some(app) = NatterEvent::from_session(ev) {
            self.emit(&app);
        }
    }

    /// The client stopped: once the events before it are out, pending `nextEvent()` calls
    /// resolve to `null`.
    pub(crate) fn finish(&self) {
        // The pump hands on what it holds, then finishes.
        if self.to_pump.borrow_mut().take().is_none() {
            self.finish_events();
        }
    }

    /// Pending `nextEvent()` calls resolve to `null`.
    pub(crate) fn finish_events(&self) {
        let mut events = self.events.borrow_mut();
        events.finished = true;
        for w in events.waiters.drain(..) {
            let _ = w.send(JsValue::NULL);
        }
    }
}

/// What a request or send the client closed under rejects with.
fn closed() -> JsError {
    JsError::local("CLOSED", "the client is closed")
}

/// A line on the console's error log.
pub(crate) fn console_error(line: &str) {
    web_sys_console_error(&line.into());
}

fn web_sys_console_error(e: &JsValue) {
    let console = Reflect::get(&js_sys::global(), &"console".into()).ok();
    if let Some(error) = console.and_then(|c| Reflect::get(&c, &"error".into()).ok()) {
        if let Ok(f) = error.dyn_into::<js_sys::Function>() {
            let _ = f.call1(&JsValue::NULL, e);
        }
    }
}

pub(crate) fn random_id() -> ClientMsgId {
    let mut bytes = [0u8; 16];
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into())
        .ok()
        .and_then(|c| c.dyn_into::<web_sys::Crypto>().ok());
    match crypto {
        Some(c) if c.get_random_values_with_u8_array(&mut bytes).is_ok() => {}
        _ => {
            for b in &mut bytes {
                *b = (js_sys::Math::random() * 256.0) as u8;
            }
        }
    }
    ClientMsgId::from_random(bytes)
}

pub(crate) fn get_str(options: &JsValue, key: &str) -> Option<String> {
    Reflect::get(options, &key.into()).ok().and_then(|v| v.as_string())
}

pub(crate) fn get_num(options: &JsValue, key: &str) -> Option<f64> {
    Reflect::get(options, &key.into()).ok().and_then(|v| v.as_f64())
}

/// `options.encryption`: `{ storeKey: Uint8Array(32), database?: string }` — the key the
/// encryption state is sealed with at rest, and the IndexedDB database it lives in.
fn encryption(options: &JsValue) -> Result<Option<Rc<crate::e2ee::E2ee>>, JsValue> {
    let e = Reflect::get(options, &"encryption".into()).unwrap_or(JsValue::UNDEFINED);
    if e.is_undefined() || e.is_null() {
        return Ok(None);
    }
    let key = Reflect::get(&e, &"storeKey".into()).unwrap_or(JsValue::UNDEFINED);
    let key: Option<[u8; 32]> = key
        .dyn_ref::<js_sys::Uint8Array>()
        .and_then(|k| k.to_vec().try_into().ok());
    let Some(key) = key else {
        let why = "encryption.storeKey must be a Uint8Array of 32 bytes";
        return Err(js_error(&JsError::local("INVALID", why)));
    };
    let database = get_str(&e, "database").unwrap_or_else(|| "natter-e2ee".into());
    Ok(Some(crate::e2ee::E2ee::new(key, database)))
}

/// A natter client in the browser. Create with `NatterClient.connect({ server })`.
#[wasm_bindgen]
pub struct NatterClient {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for NatterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatterClient")
            .field("transport", &self.inner.transport.get())
            .finish()
    }
}

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Events from `onEvent` / `nextEvent()`; `type` says which. Ids are numbers. The same
 * events the Kotlin/Swift/Python bindings deliver (natter-protocol's app-facing model). */
export type NatterEvent =
  | { type: "transport"; name: "webtransport" | "websocket" }
  | { type: "connected"; userId: number; username: string; deviceId: number; resumed: boolean }
  | { type: "disconnected"; reason: string }
  | { type: "authFailed"; error: ErrorInfo }
  | { type: "conversations"; conversations: Conversation[] }
  | { type: "event"; event: ConversationEvent }
  | { type: "receipt"; conversationId: number; userId: number; deliveredSeq: number; readSeq: number }
  | { type: "unread"; conversationId: number; readSeq: number; unreadCount: number }
  | { type: "presenceChanged"; presence: Presence }
  | { type: "typing"; conversationId: number; userId: number; username: string }
  | { type: "typingStopped"; conversationId: number; userId: number }
  | { type: "typingRejected"; conversationId: number; error: ErrorInfo }
  | { type: "sendFailed"; conversationId: number; clientMsgId: string; error: ErrorInfo }
  | { type: "goAway"; reason: string; reconnectAfterMs: number }
  | { type: "connectionError"; error: ErrorInfo }
  | { type: "uploadProgress"; progress: UploadProgress }
  | { type: "pushRemoved"; deviceId: number; registrationId: string; reason: string }
  | { type: "tokenNeeded"; expiresAtMs: number }
  /** A user's profile changed (yours, a contact's or a fellow member's); not replayed after
   * a connect that did not resume: read the profiles you show again with `profiles`. */
  | { type: "profileChanged"; profile: Profile }
  /** This device's encryption state could not be loaded: `in_use` (open in another tab or
   * window: one client per state), `state` (another store key, or malformed), `storage`. */
  | { type: "encryptionUnavailable"; reason: "in_use" | "state" | "storage"; message: string }
  /** A device verification moved (PROTOCOL.md §12.10): `requested` (accept or cancel),
   * `compare` (show `emoji`, e.g. "🐶 Dog", or `decimals`, and ask whether both screens
   * agree), `verified`, `cancelled` (`reason`: user, mismatch, unexpected, timeout). */
  | { type: "verification"; txn: string; userId: number; deviceId: number;
      state: "requested" | "compare" | "verified" | "cancelled"; emoji: string[]; decimals: number[]; reason: string };
/** "RATE_LIMITED", "NOT_MEMBER", … (spec/natter.proto ErrorCode without its prefix). */
export type ErrorCode = string;
/** Why the server refused something, as events carry it (0: no retry hint). */
export interface ErrorInfo { code: ErrorCode; message: string; retryAfterMs: number }
/** Rejected promises are `Error`s with these fields; local codes: TIMEOUT, CONNECTION_LOST,
 * INVALID, CLOSED, UNEXPECTED, and for encryption ENCRYPTION, MALFORMED_RECOVERY_KEY,
 * WRONG_RECOVERY_KEY, NO_KEY_BACKUP. */
export interface NatterError { code: string; message: string; retryAfterMs?: number }
export type ConversationKind = "unspecified" | "direct" | "group" | "channel";
export type Role = "unspecified" | "member" | "admin" | "owner";
export type PresenceState = "unspecified" | "online" | "away" | "offline";
export interface Member { userId: number; username: string; role: Role; joinedSeq: number }
export interface MemberReceipt { userId: number; deliveredSeq: number; readSeq: number }
export interface Conversation {
  conversationId: number; kind: ConversationKind; name: string; lastSeq: number; joinedSeq: number;
  readSeq: number; unreadCount: number; myRole: Role; memberCount: number;
  lastMessage: ConversationEvent | null; receipts: MemberReceipt[];
  /** End-to-end encrypted (PROTOCOL.md §12): its messages reach this package as `encrypted`. */
  encrypted: boolean;
}
export interface ConversationEvent {
  conversationId: number; seq: number; senderUserId: number; senderUsername: string;
  senderDeviceId: number; serverTimeMs: number; body: EventBody;
}
export type EventBody =
  | { type: "message"; clientMsgId: string; text: string; replyToSeq: number; attachments: Attachment[]; mentions: number[]; mentionHere: boolean }
  | { type: "created"; kind: ConversationKind; name: string; members: Member[]; encrypted: boolean }
  | { type: "membersAdded"; members: Member[] }
  | { type: "memberRemoved"; userId: number; username: string; left: boolean }
  | { type: "renamed"; name: string }
  | { type: "roleChanged"; userId: number; role: Role }
  | { type: "deleted" }
  | { type: "messageEdited"; targetSeq: number; text: string }
  | { type: "messageDeleted"; targetSeq: number }
  | { type: "reaction"; targetSeq: number; emoji: string; added: boolean }
  /** An end-to-end encrypted message, unopened: a client connected without `encryption`. */
  | { type: "encrypted"; clientMsgId: string }
  /** An encrypted message this device could not open, and why (§12.6); it comes again,
   * opened, with the same seq if its key arrives later (a verified device's key share). */
  | { type: "undecryptable"; clientMsgId: string; reason: string }
  /** An encrypted conversation's list of a member's devices changed (§12.3). */
  | { type: "devicesChanged"; userId: number; added: number[]; removed: number[] }
  | { type: "unknown" };
export interface HistoryPage { conversationId: number; events: ConversationEvent[]; hasMore: boolean; lastSeq: number }
export interface Presence { userId: number; username: string; state: PresenceState; lastSeenMs: number }
/** How far this device trusts another's identity key (`deviceTrust`). */
export interface DeviceTrust { deviceId: number; ed25519: string; trust: "verified" | "unverified" | "changed" }
/** `connect({ encryption })`: the key the encryption state is sealed with at rest (keep it
 * outside IndexedDB), and the IndexedDB database the state lives in (default "natter-e2ee";
 * one per signed-in device). */
export interface EncryptionOptions { storeKey: Uint8Array; database?: string }
export interface Device { deviceId: number; name: string; createdMs: number; lastSeenMs: number; current: boolean }
export interface SendAck { conversationId: number; seq: number; serverTimeMs: number; duplicate: boolean; clientMsgId: string }
export interface MessageStatus { state: "sent" | "delivered" | "read"; delivered: number; read: number; recipients: number }
/** A message as a `Timeline` holds it after edits, deletes and reactions. */
export interface Message {
  seq: number; senderUserId: number; senderUsername: string; text: string; replyToSeq: number;
  serverTimeMs: number; edited: boolean; deleted: boolean;
  reactions: { emoji: string; count: number; userIds: number[] }[];
  attachments: Attachment[];
}
export type MediaVariant = "original" | "thumb320" | "thumb800";
export type UploadState = "unspecified" | "uploading" | "processing" | "ready" | "rejected";
export interface Thumbnail { variant: MediaVariant; width: number; height: number; size: number; mime: string }
/** A finished upload: attach it with `sendFiles`. */
export interface MediaInfo {
  mediaId: string; mime: string; size: number; name: string; width: number; height: number;
  blurhash: string; thumbnails: Thumbnail[]; encrypted: boolean; ownerUserId: number;
  createdMs: number; sha256: string;
}
/** A file in a message (the server fills in what it knows of the file). */
export interface Attachment {
  mediaId: string; name: string; mime: string; size: number; width: number; height: number;
  durationMs: number; blurhash: string; thumbnails: Thumbnail[]; encrypted: boolean;
}
export interface UploadProgress {
  uploadId: string; committed: number; state: UploadState; media: MediaInfo | null; error: ErrorInfo | null;
}
export interface UploadOptions {
  /** Default: the File's name, else "file". */ name?: string;
  /** Default: the Blob's type, else application/octet-stream. */ mime?: string;
  /** Hears (stored, size) each time a piece is durable on the server. */
  onProgress?: (stored: number, size: number) => void;
}
"#;

impl NatterClient {
    /// An operation of the encryption as a Promise (rejected when there is none).
    fn encrypting<F, Fut>(&self, f: F) -> Promise
    where
        F: FnOnce(Rc<crate::e2ee::E2ee>) -> Fut,
        Fut: Future<Output = Result<JsValue, JsError>> + 'static,
    {
        let Some(e2ee) = self.inner.e2ee.clone() else {
            let why = "this client has no encryption (connect with options.encryption)";
            return Promise::reject(&js_error(&JsError::local("ENCRYPTION", why)));
        };
        let done = f(e2ee);
        future_to_promise(async move { done.await.map_err(|e| js_error(&e)) })
    }

    /// A change to a message: sealed in an encrypted conversation (the server does not
    /// learn which message, nor what), else the plain request; resolves to its seq.
    fn change(&self, conv: ConversationId, change: pb::sealed_content::Change, plain: Call<Seq>) -> Promise {
        let Some(e2ee) = self.inner.e2ee.clone() else {
            return self.call(plain, seq_number);
        };
        let inner = self.inner.clone();
        future_to_promise(async move {
            let seq = if e2ee.sealing(conv).await.map_err(|e| js_error(&e))? {
                let content = pb::SealedContent {
                    body: None,
                    change: Some(change),
                };
                let id = random_id();
                e2ee.send(conv, id, content).await.map_err(|e| js_error(&e))?.seq
            } else {
                inner.call(plain).await.map_err(|e| js_error(&e))?
            };
            Ok(seq_number(seq))
        })
    }

    /// One of the core's operations as a Promise of its answer, made JavaScript by `js`.
    fn call<T: 'static>(&self, call: Call<T>, js: fn(T) -> JsValue) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let answer = inner.call(call).await.map_err(|e| js_error(&e))?;
            Ok(js(answer))
        })
    }

    pub(crate) fn inner(&self) -> &Rc<Inner> {
        &self.inner
    }
}

/// Send a message body; resolves to its `SendAck` once durable (the core's outbox retries
/// it across reconnects with the same client message id).
/// In an encrypted conversation a plain body is sealed first (PROTOCOL.md §12.4).
pub(crate) fn send_body(
    inner: &Rc<Inner>,
    conversation: ConversationId,
    id: ClientMsgId,
    body: pb::MessageBody,
) -> Promise {
    let Some(e2ee) = inner.e2ee.clone().filter(|_| body.encrypted.is_none()) else {
        let sent = send_plain(inner, conversation, id, body);
        return future_to_promise(async move { Ok(to_js(&SendAck::from(sent.await?))) });
    };
    let inner = inner.clone();
    future_to_promise(async move {
        let ack = if e2ee.sealing(conversation).await.map_err(|e| js_error(&e))? {
            let content = pb::SealedContent {
                body: Some(body),
                change: None,
            };
            e2ee.send(conversation, id, content).await.map_err(|e| js_error(&e))?
        } else {
            send_plain(&inner, conversation, id, body).await?
        };
        Ok(to_js(&SendAck::from(ack)))
    })
}

/// [`send_request`], with its refusal as a rejected promise sees it.
fn send_plain(
    inner: &Inner,
    conversation: ConversationId,
    id: ClientMsgId,
    body: pb::MessageBody,
) -> impl Future<Output = Result<natter_protocol::client::SendAck, JsValue>> {
    let sent = send_request(inner, conversation, id, body);
    async move {
        match sent.await {
            Ok(answer) => answer.map_err(|e| js_error(&(&e).into())),
            Err(_) => Err(js_error(&closed())),
        }
    }
}

/// Queue a body as it is (the core's outbox retries it across reconnects with the same
/// client message id); resolves once durable, or `Canceled` when the client closed first.
pub(crate) fn send_request(
    inner: &Inner,
    conversation: ConversationId,
    id: ClientMsgId,
    body: pb::MessageBody,
) -> oneshot::Receiver<Result<natter_protocol::client::SendAck, RequestError>> {
    let (tx, rx) = oneshot::channel();
    let now = inner.now();
    {
        let mut session = inner.session.borrow_mut();
        inner
            .pending
            .borrow_mut()
            .send(&mut session, now, conversation, id, body, Waiter(tx));
    }
    inner.wake(Wake::Flush);
    rx
}

/// A wire answer as the app-facing record JavaScript sees (`record::<_, Conversation>`).
fn record<A, B: From<A> + Serialize>(v: A) -> JsValue {
    to_js(&B::from(v))
}

/// A list of wire answers as app-facing records.
fn records<A, B: From<A> + Serialize>(v: Vec<A>) -> JsValue {
    to_js(&model::list::<A, B>(v))
}

pub(crate) fn conv(id: f64) -> ConversationId {
    ConversationId(id as u64)
}

/// A login as JS sees it: `{ userId, deviceId, accessToken }`.
fn login_info(l: pb::LoginOk) -> JsValue {
    let o = js_sys::Object::new();
    let _ = Reflect::set(&o, &"userId".into(), &(l.user_id as f64).into());
    let _ = Reflect::set(&o, &"deviceId".into(), &(l.device_id as f64).into());
    let _ = Reflect::set(&o, &"accessToken".into(), &l.access_token.into());
    o.into()
}

fn nothing(_: ()) -> JsValue {
    JsValue::UNDEFINED
}

fn seq_number(s: Seq) -> JsValue {
    JsValue::from_f64(s.0 as f64)
}

#[wasm_bindgen]
impl NatterClient {
    /// Start a client; it connects in the background and keeps reconnecting (requests
    /// made meanwhile wait). Options: `server` (base URL of the web endpoint, default the
    /// page's origin), `transport` ("auto" | "webtransport" | "websocket"), `token` (an
    /// access token from an earlier login), `resumeToken` and `cursors` (from
    /// `snapshot()`), `onEvent` (callback), `reconnectMinMs`, `reconnectMaxMs`, and
    /// `encryption` (`{ storeKey, database }`: end-to-end encrypted direct conversations;
    /// sealed messages then reach `onEvent` opened), and `tokenProvider`
    /// (`async () => string | null`: a fresh product token from your backend, asked before
    /// the device's expires; PROTOCOL.md §5.13).
    pub fn connect(options: JsValue) -> Result<NatterClient, JsValue> {
        let server = match get_str(&options, "server") {
            Some(s) => s,
            None => Reflect::get(&js_sys::global(), &"location".into())
                .and_then(|l| Reflect::get(&l, &"origin".into()))
                .ok()
                .and_then(|o| o.as_string())
                .ok_or_else(|| js_error(&JsError::local("INVALID", "options.server is required")))?,
        };
        let choice = TransportChoice::parse(get_str(&options, "transport").as_deref()).map_err(|e| js_error(&e))?;
        let config = Config {
            server,
            choice,
            reconnect_min_ms: get_num(&options, "reconnectMinMs").unwrap_or(250.0) as u32,
            reconnect_max_ms: get_num(&options, "reconnectMaxMs").unwrap_or(10_000.0) as u32,
        };
        let e2ee = encryption(&options)?;
        let mut session = ClientSession::new(
            SessionConfig {
                client_name: concat!("natter-wasm/", env!("CARGO_PKG_VERSION")).into(),
                // An encrypting client acknowledges a message once its state is written.
                ack_by_app: e2ee.is_some(),
                ..Default::default()
            },
            get_str(&options, "token"),
        );
        let cursors: Vec<(ConversationId, Seq)> = Reflect::get(&options, &"cursors".into())
            .ok()
            .filter(Array::is_array)
            .map(|c| {
                Array::from(&c)
                    .iter()
                    .filter_map(|pair| {
                        let pair = Array::from(&pair);
                        Some((
                            ConversationId(pair.get(0).as_f64()? as u64),
                            Seq(pair.get(1).as_f64()? as u64),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        session.restore(get_str(&options, "resumeToken"), cursors);
        let pending_uploads: Vec<natter_protocol::client::model::PendingUpload> =
            Reflect::get(&options, &"pendingUploads".into())
                .ok()
                .filter(Array::is_array)
                .and_then(|v| serde_wasm_bindgen::from_value(v).ok())
                .unwrap_or_default();
        let (wake, wake_rx) = mpsc::unbounded();
        let token_provider = Reflect::get(&options, &"tokenProvider".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        let callback = Reflect::get(&options, &"onEvent".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        let (to_pump, pumped) = mpsc::unbounded();
        let inner = Rc::new(Inner {
            to_pump: RefCell::new(e2ee.is_some().then_some(to_pump)),
            e2ee: e2ee.clone(),
            session: RefCell::new(session),
            pending: RefCell::new(Router::new()),
            transport: Cell::new(None),
            reconnect: RefCell::new(Reconnect::new(
                config.reconnect_min_ms.into(),
                config.reconnect_max_ms.into(),
            )),
            config,
            uploads: RefCell::default(),
            pending_uploads: RefCell::new(natter_protocol::client::upload::Uploads::restore(pending_uploads)),
            wake,
            events: RefCell::new(Events {
                callback,
                ..Default::default()
            }),
            start: js_sys::Date::now(),
            token_provider,
        });
        if let Some(e2ee) = e2ee {
            wasm_bindgen_futures::spawn_local(crate::e2ee::pump(inner.clone(), e2ee, pumped));
        }
        wasm_bindgen_futures::spawn_local(crate::driver::run(inner.clone(), wake_rx));
        Ok(NatterClient { inner })
    }

    /// Deliver events to `callback` from now on (queued ones first).
    #[wasm_bindgen(js_name = onEvent)]
    pub fn on_event(&self, callback: js_sys::Function) {
        let queued: Vec<JsValue> = {
            let mut events = self.inner.events.borrow_mut();
            events.callback = Some(callback.clone());
            events.queue.drain(..).collect()
        };
        for v in queued {
            let _ = callback.call1(&JsValue::NULL, &v);
        }
    }

    /// The next event (when no callback is set); `null` once the client is closed.
    #[wasm_bindgen(js_name = nextEvent)]
    pub fn next_event(&self) -> Promise {
        let mut events = self.inner.events.borrow_mut();
        if let Some(v) = events.queue.pop_front() {
            return Promise::resolve(&v);
        }
        if events.finished {
            return Promise::resolve(&JsValue::NULL);
        }
        let (tx, rx) = oneshot::channel();
        events.waiters.push_back(tx);
        future_to_promise(async move { Ok(rx.await.unwrap_or(JsValue::NULL)) })
    }

    /// "webtransport", "websocket", or undefined while disconnected.
    #[wasm_bindgen(getter)]
    pub fn transport(&self) -> Option<String> {
        self.inner.transport.get().map(|t| t.name().to_string())
    }

    /// "disconnected", "handshaking", "unauthenticated", "authenticating" or "ready".
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> String {
        format!("{:?}", self.inner.session.borrow().state()).to_lowercase()
    }

    /// Create an account (does not log in). Resolves to the user id.
    pub fn register(&self, username: String, password: String) -> Promise {
        self.call(ops::register(&username, &password), |u: UserId| {
            JsValue::from_f64(u.0 as f64)
        })
    }

    /// Log in as a new device: `{ userId, deviceId, accessToken }`. Keep the token (e.g.
    /// in localStorage) to connect later without the password.
    pub fn login(&self, username: String, password: String, device_name: String) -> Promise {
        self.call(ops::login(&username, &password, &device_name), login_info)
    }

    /// Log in as a new device with a product token: a JWT your backend minted for its user
    /// (PROTOCOL.md §5.13). Resolves like `login`. Give `connect` a `tokenProvider`
    /// (`async () => token`) so the session outlives the token, or answer `tokenNeeded`
    /// events with `setToken`.
    #[wasm_bindgen(js_name = loginWithToken)]
    pub fn login_with_token(&self, token: String, device_name: String) -> Promise {
        self.call(ops::token_login(&token, &device_name), login_info)
    }

    /// Renew this device's product token now: resolves to its new expiry (ms since the
    /// epoch), or rejects with `INVALID_TOKEN` / `TOKEN_EXPIRED`.
    #[wasm_bindgen(js_name = refreshToken)]
    pub fn refresh_token(&self, token: String) -> Promise {
        self.call(ops::refresh_token(&token), |t| JsValue::from_f64(t as f64))
    }

    /// A fresh product token (e.g. answering a `tokenNeeded` event): renews the device's
    /// now and is used for its next authentication.
    #[wasm_bindgen(js_name = setToken)]
    pub fn set_token(&self, token: String) {
        self.inner.wake(Wake::ProductToken(token));
    }

    /// Revoke this device's token (the connection then closes); with encryption, its
    /// state in IndexedDB is deleted too (the device is gone for good).
    pub fn logout(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            inner
                .call(ops::logout(natter_protocol::DeviceId(0)))
                .await
                .map_err(|e| js_error(&e))?;
            if let Some(e2ee) = &inner.e2ee {
                e2ee.forget().await.map_err(|e| js_error(&e))?;
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// This user's devices.
    pub fn devices(&self) -> Promise {
        self.call(ops::devices(), records::<_, Device>)
    }

    /// Every conversation with last message and unread count.
    pub fn conversations(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let mut list = inner.call(ops::conversations()).await.map_err(|e| js_error(&e))?;
            if let Some(e2ee) = &inner.e2ee {
                e2ee.open_summaries(&mut list).await;
            }
            Ok(records::<_, Conversation>(list))
        })
    }

    /// The 1:1 conversation with `username` (created on first use). `{ encrypted: true }`:
    /// the end-to-end encrypted one instead (PROTOCOL.md §12; needs `encryption` in
    /// `connect`), a conversation of its own beside the plain one.
    pub fn direct(&self, username: String, options: JsValue) -> Promise {
        let encrypted = Reflect::get(&options, &"encrypted".into())
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if !encrypted {
            return self.call(ops::direct(&username), record::<_, Conversation>);
        }
        let inner = self.inner.clone();
        self.encrypting(move |e2ee| async move {
            let c = inner.call(ops::encrypted_direct(&username)).await?;
            e2ee.note(ConversationId(c.conversation_id), true);
            Ok(record::<_, Conversation>(c))
        })
    }

    /// Start verifying another device (one of yours, or of the person you talk to):
    /// resolves to the transaction id; `verification` events follow (`compare` with the
    /// emoji to show, then `verified` or `cancelled`).
    #[wasm_bindgen(js_name = verifyDevice)]
    pub fn verify_device(&self, user_id: f64, device_id: f64) -> Promise {
        self.encrypting(move |e2ee| async move {
            let txn = e2ee
                .verify_device(UserId(user_id as u64), DeviceId(device_id as u64))
                .await?;
            Ok(txn.into())
        })
    }

    /// Accept a `requested` verification.
    #[wasm_bindgen(js_name = acceptVerification)]
    pub fn accept_verification(&self, txn: String) -> Promise {
        self.encrypting(move |e2ee| async move {
            e2ee.accept(&txn).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The person compared the codes on both screens: `matches` or not.
    #[wasm_bindgen(js_name = confirmVerification)]
    pub fn confirm_verification(&self, txn: String, matches: bool) -> Promise {
        self.encrypting(move |e2ee| async move {
            e2ee.confirm(&txn, matches).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Stop a verification.
    #[wasm_bindgen(js_name = cancelVerification)]
    pub fn cancel_verification(&self, txn: String) -> Promise {
        self.encrypting(move |e2ee| async move {
            e2ee.cancel(&txn).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Set up a key backup (replacing the user's previous one) and back up every message
    /// key this device keeps, then each new one as it comes; resolves to the recovery key
    /// for the person to write down (the only way to read the backup).
    #[wasm_bindgen(js_name = enableBackup)]
    pub fn enable_backup(&self) -> Promise {
        self.encrypting(move |e2ee| async move { Ok(e2ee.enable_backup().await?.into()) })
    }

    /// Upload every message key waiting for the backup now (they go in the background
    /// anyway; e.g. before signing out).
    #[wasm_bindgen(js_name = backupNow)]
    pub fn backup_now(&self) -> Promise {
        self.encrypting(move |e2ee| async move {
            e2ee.flush_backup().await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Restore message keys from the backup with the recovery key as the person typed it;
    /// resolves to how many keys were new (messages that came undecryptable come again,
    /// opened, first). Rejects with MALFORMED_RECOVERY_KEY, WRONG_RECOVERY_KEY or
    /// NO_KEY_BACKUP before reading anything.
    #[wasm_bindgen(js_name = restoreBackup)]
    pub fn restore_backup(&self, recovery_key: String) -> Promise {
        self.encrypting(move |e2ee| async move {
            let n = e2ee.restore_backup(&recovery_key).await?;
            Ok(JsValue::from_f64(n as f64))
        })
    }

    /// Which part of an encrypted conversation this device can read (PROTOCOL.md §12.6):
    /// resolves to the seq from which every message was sealed for it (the event that
    /// added it to the conversation's devices), or null until it has seen that event.
    /// Earlier messages open only with keys from the backup or a verified device of yours.
    #[wasm_bindgen(js_name = readableFrom)]
    pub fn readable_from(&self, conversation_id: f64) -> Promise {
        self.encrypting(move |e2ee| async move {
            let from = e2ee.readable_from(conv(conversation_id)).await;
            Ok(from.map_or(JsValue::NULL, seq_number))
        })
    }

    /// A user's devices with keys and how far this device trusts each:
    /// `[{ deviceId, ed25519, trust: "verified" | "unverified" | "changed" }]`.
    #[wasm_bindgen(js_name = deviceTrust)]
    pub fn device_trust(&self, user_id: f64) -> Promise {
        self.encrypting(move |e2ee| async move {
            let list = e2ee.device_trust(UserId(user_id as u64)).await?;
            Ok(to_js(&list))
        })
    }

    /// A new private group with these members.
    #[wasm_bindgen(js_name = createGroup)]
    pub fn create_group(&self, name: String, usernames: Vec<String>) -> Promise {
        self.call(ops::create_group(&name, usernames), record::<_, Conversation>)
    }

    /// A new public channel.
    #[wasm_bindgen(js_name = createChannel)]
    pub fn create_channel(&self, name: String) -> Promise {
        self.call(ops::create_channel(&name), record::<_, Conversation>)
    }

    /// Join a public channel by name.
    #[wasm_bindgen(js_name = joinChannel)]
    pub fn join_channel(&self, name: String) -> Promise {
        self.call(ops::join_channel(&name), record::<_, Conversation>)
    }

    /// Add members (owners and admins).
    #[wasm_bindgen(js_name = addMembers)]
    pub fn add_members(&self, conversation_id: f64, usernames: Vec<String>) -> Promise {
        self.call(ops::add_members(conv(conversation_id), usernames), nothing)
    }

    /// Remove a member (owners remove anyone else, admins remove members).
    #[wasm_bindgen(js_name = removeMember)]
    pub fn remove_member(&self, conversation_id: f64, user_id: f64) -> Promise {
        self.call(
            ops::remove_member(conv(conversation_id), UserId(user_id as u64)),
            nothing,
        )
    }

    /// Leave a group or channel.
    pub fn leave(&self, conversation_id: f64) -> Promise {
        self.call(ops::leave(conv(conversation_id)), nothing)
    }

    /// Rename a group or channel (owners and admins).
    pub fn rename(&self, conversation_id: f64, name: String) -> Promise {
        self.call(ops::rename(conv(conversation_id), &name), nothing)
    }

    /// Delete a conversation (owner).
    #[wasm_bindgen(js_name = deleteConversation)]
    pub fn delete_conversation(&self, conversation_id: f64) -> Promise {
        self.call(ops::delete(conv(conversation_id)), nothing)
    }

    /// Change a member's role (owner): "owner" (transfers ownership), "admin" or "member".
    #[wasm_bindgen(js_name = setRole)]
    pub fn set_role(&self, conversation_id: f64, user_id: f64, role: String) -> Promise {
        let role = match role.as_str() {
            "owner" => pb::Role::Owner,
            "admin" => pb::Role::Admin,
            "member" => pb::Role::Member,
            _ => return Promise::reject(&js_error(&JsError::local("INVALID", "role is owner, admin or member"))),
        };
        self.call(
            ops::set_role(conv(conversation_id), UserId(user_id as u64), role),
            nothing,
        )
    }

    /// Mute (`untilMs`; 0: until unmuted), unmute, ban or unban a user in a group or
    /// channel (owners and admins). `action`: "mute" | "unmute" | "ban" | "unban".
    pub fn moderate(&self, conversation_id: f64, user_id: f64, action: String, until_ms: f64) -> Promise {
        let action = match action.as_str() {
            "mute" => pb::ModerationAction::Mute,
            "unmute" => pb::ModerationAction::Unmute,
            "ban" => pb::ModerationAction::Ban,
            "unban" => pb::ModerationAction::Unban,
            _ => {
                let why = "action is mute, unmute, ban or unban";
                return Promise::reject(&js_error(&JsError::local("INVALID", why)));
            }
        };
        let call = ops::moderate(conv(conversation_id), UserId(user_id as u64), action, until_ms as u64);
        self.call(call, nothing)
    }

    /// A channel's slow mode: one message per member per `intervalSecs` (0: off).
    #[wasm_bindgen(js_name = setSlowMode)]
    pub fn set_slow_mode(&self, conversation_id: f64, interval_secs: u32) -> Promise {
        self.call(ops::set_slow_mode(conv(conversation_id), interval_secs), nothing)
    }

    /// How long the conversation keeps its events (PROTOCOL.md §5.17): seconds (0:
    /// forever), or `null`/`undefined` for the server's default for its kind.
    #[wasm_bindgen(js_name = setRetention)]
    pub fn set_retention(&self, conversation_id: f64, retention_secs: Option<f64>) -> Promise {
        let secs = match retention_secs {
            Some(s) if !(s >= 0.0 && s.fract() == 0.0 && s <= 2f64.powi(53)) => {
                return Promise::reject(&js_error(&JsError::local(
                    "INVALID",
                    "retentionSecs is a whole number of seconds, 0 or more",
                )));
            }
            s => s.map(|s| s as u64),
        };
        self.call(ops::set_retention(conv(conversation_id), secs), nothing)
    }

    /// Report a message to the product's moderators.
    pub fn report(&self, conversation_id: f64, seq: f64, reason: String) -> Promise {
        self.call(ops::report(conv(conversation_id), Seq(seq as u64), &reason), nothing)
    }

    /// Members with roles.
    pub fn members(&self, conversation_id: f64) -> Promise {
        self.call(ops::members(conv(conversation_id)), records::<_, Member>)
    }

    /// Send a text; resolves (`{ conversationId, seq, serverTimeMs, duplicate,
    /// clientMsgId }`) once durable. Survives reconnects; pass your own `clientMsgId` to
    /// retry safely across page reloads.
    pub fn send(&self, conversation_id: f64, text: String, client_msg_id: Option<String>) -> Promise {
        // A caller's id is validated with the send (length, characters).
        let id = client_msg_id.map_or_else(random_id, ClientMsgId);
        let body = pb::MessageBody {
            text,
            ..Default::default()
        };
        send_body(&self.inner, conv(conversation_id), id, body)
    }

    /// A page of events: `{ before: seq }` (newest page before; 0 or absent = latest) or
    /// `{ after: seq }`, and `limit`. Resolves to `{ events, hasMore, lastSeq }`.
    pub fn history(&self, conversation_id: f64, options: JsValue) -> Promise {
        let anchor = match (get_num(&options, "after"), get_num(&options, "before")) {
            (Some(a), _) => HistoryAnchor::After(Seq(a as u64)),
            (None, b) => HistoryAnchor::Before(Seq(b.unwrap_or(0.0) as u64)),
        };
        let limit = get_num(&options, "limit").unwrap_or(50.0) as u32;
        let inner = self.inner.clone();
        let call = ops::history(conv(conversation_id), anchor, limit);
        future_to_promise(async move {
            let mut page = inner.call(call).await.map_err(|e| js_error(&e))?;
            if let Some(e2ee) = &inner.e2ee {
                e2ee.open_page(&mut page).await;
            }
            Ok(record::<_, HistoryPage>(page))
        })
    }

    /// Move your read cursor (clears unread on your other devices, sends read receipts).
    #[wasm_bindgen(js_name = markRead)]
    pub fn mark_read(&self, conversation_id: f64, seq: f64) -> Promise {
        self.call(ops::mark_read(conv(conversation_id), Seq(seq as u64)), nothing)
    }

    /// Replace the text of your message; resolves to the edit event's seq.
    pub fn edit(&self, conversation_id: f64, target_seq: f64, text: String) -> Promise {
        let (c, target) = (conv(conversation_id), Seq(target_seq as u64));
        let change = pb::sealed_content::Change::Edit(pb::MessageEdited {
            target_seq: target.0,
            text: text.clone(),
        });
        self.change(c, change, ops::edit(c, target, &text))
    }

    /// Delete a message; resolves to the delete event's seq.
    #[wasm_bindgen(js_name = deleteMessage)]
    pub fn delete_message(&self, conversation_id: f64, target_seq: f64) -> Promise {
        let (c, target) = (conv(conversation_id), Seq(target_seq as u64));
        let change = pb::sealed_content::Change::Delete(pb::MessageDeleted { target_seq: target.0 });
        self.change(c, change, ops::delete_message(c, target))
    }

    /// Add (or with `remove`, take back) a reaction.
    pub fn react(&self, conversation_id: f64, target_seq: f64, emoji: String, remove: bool) -> Promise {
        let (c, target) = (conv(conversation_id), Seq(target_seq as u64));
        if let Err(v) = natter_protocol::validate::emoji(&emoji) {
            return Promise::reject(&js_error(&(&RequestError::Invalid(v)).into()));
        }
        let change = pb::sealed_content::Change::Reaction(pb::ReactionChanged {
            target_seq: target.0,
            emoji: emoji.clone(),
            added: !remove,
        });
        self.change(c, change, ops::react(c, target, &emoji, remove))
    }

    /// Members' delivered/read cursors.
    pub fn receipts(&self, conversation_id: f64) -> Promise {
        self.call(ops::receipts(conv(conversation_id)), records::<_, MemberReceipt>)
    }

    /// Presence of these users (contacts only).
    pub fn presence(&self, user_ids: Vec<f64>) -> Promise {
        let users: Vec<UserId> = user_ids.into_iter().map(|u| UserId(u as u64)).collect();
        self.call(ops::presence(&users), records::<_, Presence>)
    }

    /// Hide (or show) your last-seen time from contacts.
    #[wasm_bindgen(js_name = setHideLastSeen)]
    pub fn set_hide_last_seen(&self, hide: bool) -> Promise {
        self.call(ops::set_hide_last_seen(hide), nothing)
    }

    /// Say you are typing; call on every keystroke (the client rate-limits).
    pub fn typing(&self, conversation_id: f64) {
        let now = self.inner.now();
        self.inner
            .session
            .borrow_mut()
            .typing(now, ConversationId(conversation_id as u64));
        self.inner.wake(Wake::Flush);
    }

    /// "online" or "away" (e.g. from `visibilitychange`).
    #[wasm_bindgen(js_name = setPresence)]
    pub fn set_presence(&self, state: String) -> Result<(), JsValue> {
        let state = match state.as_str() {
            "online" => pb::PresenceState::Online,
            "away" => pb::PresenceState::Away,
            _ => return Err(js_error(&JsError::local("INVALID", "presence is online or away"))),
        };
        let now = self.inner.now();
        self.inner.session.borrow_mut().set_presence(now, state);
        self.inner.wake(Wake::Flush);
        Ok(())
    }

    /// Where your message stands: `{ state: "sent"|"delivered"|"read", delivered, read,
    /// recipients }`, or null (channels, unknown).
    #[wasm_bindgen(js_name = messageStatus)]
    pub fn message_status(&self, conversation_id: f64, seq: f64) -> JsValue {
        let status = self
            .inner
            .session
            .borrow()
            .message_status(ConversationId(conversation_id as u64), Seq(seq as u64));
        status.map_or(JsValue::NULL, |s| to_js(&s))
    }

    /// Your unread count in a conversation, as this client knows it.
    pub fn unread(&self, conversation_id: f64) -> Option<u32> {
        self.inner
            .session
            .borrow()
            .unread(ConversationId(conversation_id as u64))
    }

    /// What to persist to restore this session after a reload: `{ accessToken,
    /// resumeToken, cursors: [[conversationId, seq]…], unackedSends, pendingUploads }`
    /// (pass `pendingUploads` back to `connect` and go on with each by `resumeUpload`
    /// with the same file).
    pub fn snapshot(&self) -> JsValue {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Snapshot {
            access_token: Option<String>,
            resume_token: Option<String>,
            cursors: Vec<(u64, u64)>,
            unacked_sends: usize,
            pending_uploads: Vec<natter_protocol::client::model::PendingUpload>,
        }
        let s = self.inner.session.borrow();
        to_js(&Snapshot {
            access_token: s.access_token().map(String::from),
            resume_token: s.resume_token().map(String::from),
            cursors: s.cursors().into_iter().map(|(c, q)| (c.0, q.0)).collect(),
            unacked_sends: s.outbox().len(),
            pending_uploads: self.inner.pending_uploads.borrow().list(),
        })
    }

    /// Round trip to the server; resolves to the server's clock (ms).
    pub fn ping(&self) -> Promise {
        self.call(ops::ping(), |ms| JsValue::from_f64(ms as f64))
    }

    /// Drop the connection now and reconnect (sends stay queued).
    pub fn reconnect(&self) {
        self.inner.wake(Wake::Reconnect);
    }

    /// Close the connection and stop.
    pub fn close(&self) {
        self.inner.wake(Wake::Close);
    }
}
