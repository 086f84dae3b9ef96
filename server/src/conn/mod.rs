//! One client connection, whatever carries it: the handshake, authentication and resume,
//! request dispatch, and the delivery streams (PROTOCOL.md §3–§7).
//!
//! Transports (QUIC, WebTransport, WebSocket, in-process) implement the small
//! [`Transport`] contract ([`transport`]) and hand [`serve`] their control stream; no
//! protocol logic lives in an adapter. A connection is in one [`Phase`]: unauthenticated
//! (handshake, register, login, authenticate, ping) or authenticated, carrying the actor and
//! session every other request uses ([`auth`] makes the transition). Requests are read in
//! order; sends are queued to their shard in that order (so one client's messages commit in
//! the order it sent them) and answered when durable; other requests run concurrently up to
//! the in-flight limit. [`delivery`] writes the control and per-conversation streams.
//!
//! May import: `api` and everything below it, `security`, `clock`. Must not import
//! `transport` (adapters depend on this module, not the other way).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use natter_protocol::codec::{encode_frame, encode_frame_compressed};
use natter_protocol::pb::{self, frame::Kind, request::Op, response::Result as Res, ErrorCode};
use natter_protocol::{limits, validate, ConversationId, FrameDecoder, ServerError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::api::{self, Ctx};
use crate::clock::now_ms;
use crate::conversation::{Actor, Mutation};
use crate::session::hub::{Hub, Session};

mod auth;
mod delivery;
mod media;
pub mod transport;

pub use transport::{ControlSend, NoUpload, Transport, UploadRecv, Violation};

/// Per-connection tunables.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// Time allowed from connect to Hello.
    pub handshake_timeout: Duration,
    /// Time allowed from connect to authenticated.
    pub auth_timeout: Duration,
    /// Connections held at most, over every address.
    pub max_connections: usize,
    /// A delivery stream idle this long is finished (reopened on the next event).
    pub stream_idle: Duration,
    /// Requests in flight per connection.
    pub max_in_flight: usize,
    /// Authenticated connections per user.
    pub max_per_user: usize,
    /// Connections per client IP.
    pub max_per_ip: usize,
    /// QUIC handshakes in progress above which a new connection from an address not yet
    /// validated is sent a Retry first (0: every one).
    pub retry_above_handshakes: usize,
    /// Events queued per delivery stream before the connection counts as a slow reader.
    pub stream_queue: usize,
    /// Limits advertised in Welcome.
    pub limits: pb::Limits,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Handler context.
    pub ctx: Ctx,
    /// Sessions.
    pub hub: Hub,
    /// Tunables.
    pub config: ConnConfig,
    next_conn: AtomicU64,
    /// Connections per address, and (under the same lock) in all.
    per_ip: std::sync::Mutex<(HashMap<std::net::IpAddr, usize>, usize)>,
    /// Every connection being served, in any phase: how a drain reaches them all.
    live: std::sync::Mutex<HashMap<u64, Live>>,
    /// Draining: no new connection is admitted.
    draining: std::sync::atomic::AtomicBool,
}

/// How to reach one live connection from outside it.
#[derive(Debug)]
struct Live {
    /// Its control stream (frames in order with its responses). Weak: the control writer
    /// ends when the connection drops its own sender, which a close waits for.
    out: mpsc::WeakSender<Bytes>,
    /// Its one close path.
    closes: mpsc::Sender<Close>,
}

impl Shared {
    /// Send `frame` (a `GoAway`) on every live connection's control stream, authenticated
    /// or not. Returns how many took it.
    pub fn tell_all(&self, frame: Bytes) -> usize {
        let live = self.live.lock().expect("live lock");
        live.values()
            .filter(|l| l.out.upgrade().is_some_and(|out| out.try_send(frame.clone()).is_ok()))
            .count()
    }

    /// Close every live connection through its own close path: the `ConnectionError`
    /// with `code` first, then the transport's close (QUIC code, WebSocket 4000 + code).
    pub fn close_all(&self, code: ErrorCode, message: &str) -> usize {
        let live = self.live.lock().expect("live lock");
        live.values()
            .filter(|l| l.closes.try_send(Close::new(code, message)).is_ok())
            .count()
    }

    /// Admit no new connection from now on (a drain).
    pub fn stop_admitting(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Connections being served now.
    pub fn live_connections(&self) -> usize {
        self.live.lock().expect("live lock").len()
    }
}

/// Takes a connection off the live list when its serving ends.
struct LiveGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.shared.live.lock().expect("live lock").remove(&self.id);
    }
}

/// One connection's place in its IP address's count; released on drop. Transports take
/// one with [`Shared::admit`] as soon as a connection is accepted, before anything else
/// is spent on it, and hold it for the connection's life.
#[derive(Debug)]
pub struct IpSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl Shared {
    /// Count a connection from `ip`; `None` when that address, or the node, is at its
    /// limit, or the node is draining (the transport then refuses it: QUIC and
    /// WebTransport with `LIMIT_EXCEEDED`, WebSocket with HTTP 429).
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        if self.draining.load(Ordering::SeqCst) {
            return None;
        }
        let mut guard = self.per_ip.lock().expect("per-ip lock");
        let (map, total) = &mut *guard;
        if *total >= self.config.max_connections {
            return None;
        }
        let n = map.entry(ip).or_insert(0);
        if *n >= self.config.max_per_ip {
            return None;
        }
        *n += 1;
        *total += 1;
        Some(IpSlot {
            shared: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut guard = self.shared.per_ip.lock().expect("per-ip lock");
        let (map, total) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    /// Bundle the parts.
    pub fn new(ctx: Ctx, hub: Hub, config: ConnConfig) -> Self {
        Shared {
            ctx,
            hub,
            config,
            next_conn: AtomicU64::new(1),
            per_ip: Default::default(),
            live: Default::default(),
            draining: Default::default(),
        }
    }
}

/// Ends a connection: the code and message go out in a ConnectionError frame, then the
/// transport closes with the code.
#[derive(Debug)]
pub(super) struct Close(ErrorCode, String, bool);

impl Close {
    pub(super) fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Close(code, msg.into(), false)
    }

    /// A close right after the answer to the request that caused it (a Logout of this
    /// device), which the client must read before the close: it gets longer to close first.
    pub(super) fn after_answer(code: ErrorCode, msg: impl Into<String>) -> Self {
        Close(code, msg.into(), true)
    }
}

/// An authenticated connection's identity and session; only [`auth`] makes one.
struct Authed {
    actor: Actor,
    session: Arc<Session>,
    delivery: JoinHandle<()>,
}

/// Where a connection is in its life (PROTOCOL.md §4). Requests other than the
/// handshake-phase ones run only in `Authenticated`, which carries what they use.
enum Phase {
    Unauthenticated,
    Authenticated(Authed),
}

struct Conn<T: Transport> {
    shared: Arc<Shared>,
    transport: Arc<T>,
    out: mpsc::Sender<Bytes>,
    conn_id: u64,
    phase: Phase,
    in_flight: Arc<Semaphore>,
    /// The authenticated actor, for the datagram reader.
    actor: Arc<std::sync::OnceLock<Actor>>,
    /// Closes the session layer asks for (logged out elsewhere, resumed on another
    /// connection): the read loop ends with them, so they go out like every other close.
    closes: mpsc::Sender<Close>,
    /// For a device a product token made: when that token expires (§5.13).
    token: Option<TokenClock>,
    /// This connection in the connections gauge (by transport and phase).
    gauge: crate::ops::metrics::ConnectionGauge,
    /// Requests awaiting their answer, for the request metrics.
    answers: Answers,
}

/// The requests of one connection awaiting their answer — kind and arrival — so each
/// answer is counted by kind and code and timed (`natter_requests_total`,
/// `natter_request_duration_seconds`). Shared with the tasks that answer them.
#[derive(Clone)]
struct Answers {
    metrics: Arc<crate::ops::Metrics>,
    pending: Arc<std::sync::Mutex<HashMap<u64, (&'static str, std::time::Instant)>>>,
}

impl Answers {
    fn new(metrics: Arc<crate::ops::Metrics>) -> Answers {
        Answers {
            metrics,
            pending: Default::default(),
        }
    }

    /// Request `id` of kind `op` arrived.
    fn arrived(&self, id: u64, op: &'static str) {
        self.pending
            .lock()
            .expect("answers lock")
            .insert(id, (op, std::time::Instant::now()));
    }

    /// The answer to request `id`, counted.
    fn frame(&self, id: u64, result: Result<Res, ServerError>) -> Bytes {
        let arrived = self.pending.lock().expect("answers lock").remove(&id);
        let (op, took) = arrived.map_or(("unknown", Duration::ZERO), |(op, at)| (op, at.elapsed()));
        let code = match &result {
            Ok(_) => "OK",
            Err(e) => e.code.as_str_name(),
        };
        self.metrics.request(op, code, took);
        response_frame(id, result)
    }
}

/// A product token's expiry as one connection watches it: `TokenExpiring` first, then the
/// close with `TOKEN_EXPIRED` unless RefreshToken moved it.
#[derive(Clone, Copy, Debug)]
struct TokenClock {
    expires_ms: u64,
    warn_ms: u64,
    warned: bool,
}

/// Serve one connection until it ends. `recv`/`send` are its control stream.
pub async fn serve<T, R, W>(shared: Arc<Shared>, transport: Arc<T>, mut recv: R, send: W)
where
    T: Transport,
    R: AsyncRead + Unpin + Send,
    W: ControlSend,
{
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (out, out_rx) = mpsc::channel(shared.config.max_in_flight * 2 + 16);
    let writer = tokio::spawn(delivery::write_control(send, out_rx));
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight));
    let actor = Arc::new(std::sync::OnceLock::new());
    let (closes, mut close_requests) = mpsc::channel(1);
    shared.live.lock().expect("live lock").insert(
        conn_id,
        Live {
            out: out.downgrade(),
            closes: closes.clone(),
        },
    );
    let _live = LiveGuard {
        shared: shared.clone(),
        id: conn_id,
    };
    let shared_metrics = shared.ctx.metrics.clone();
    let mut conn = Conn {
        shared,
        transport,
        out,
        conn_id,
        phase: Phase::Unauthenticated,
        in_flight,
        actor,
        closes,
        token: None,
        gauge: shared_metrics.connection(T::KIND),
        answers: Answers::new(shared_metrics.clone()),
    };
    let mut decoder = FrameDecoder::new(conn.shared.config.limits.max_frame_bytes as usize);
    let datagrams = tokio::spawn(read_datagrams(
        conn.shared.clone(),
        conn.transport.clone(),
        conn.actor.clone(),
    ));
    let uploads = tokio::spawn(media::read_uploads(
        conn.shared.clone(),
        conn.transport.clone(),
        conn.actor.clone(),
        conn.out.downgrade(),
    ));
    let result = conn.run(&mut recv, &mut decoder, &mut close_requests).await;
    datagrams.abort();
    uploads.abort();
    if let Phase::Authenticated(a) = std::mem::replace(&mut conn.phase, Phase::Unauthenticated) {
        a.delivery.abort();
        conn.shared.hub.detach(&a.session, conn.conn_id);
        if let Some(cluster) = conn.shared.ctx.cluster.clone() {
            // Notifications for this device are decided anywhere again, unless another
            // session of it is still attached here.
            let (user, device) = (a.actor.user, a.actor.device);
            if !conn.shared.hub.device_attached(user, device) {
                tokio::spawn(async move {
                    if let Err(e) = cluster.detach_device(user, device).await {
                        tracing::warn!(%user, error = %e, "cluster: device detach not recorded");
                    }
                });
            }
        }
        let clean = result.is_ok();
        conn.shared
            .ctx
            .presence
            .disconnected(a.actor.user, a.actor.device, conn.conn_id, clean);
    }
    if let Err(Close(code, message, answered)) = result {
        tracing::debug!(conn = conn.conn_id, ?code, %message, "closing connection");
        let frame = pb::Frame {
            kind: Some(Kind::ConnectionError(pb::ConnectionError {
                code: code as i32,
                message: message.clone(),
            })),
        };
        let _ = conn.out.send(encode_frame(&frame)).await;
        drop(conn.out);
        // Let the error frame out before the close discards unsent data, and give the
        // client a moment to read it and close first (it does on `ConnectionError`). A
        // logout's close follows the answer to the Logout itself, which the client must
        // see (a close that overtakes it reads as a lost connection): a loaded client gets
        // longer to read and close.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        let grace = if answered { 5 } else { 1 };
        conn.transport.peer_closed(Duration::from_secs(grace)).await;
        conn.transport.close(code, &message);
    }
}

async fn read_frame<T: Transport, R: AsyncRead + Unpin>(
    transport: &T,
    recv: &mut R,
    decoder: &mut FrameDecoder,
) -> Result<Option<pb::Frame>, Close> {
    // Part of every connection's task while it waits for its next request, so it is held
    // by every idle connection: small (requests are ~100 bytes; a larger frame just takes
    // more reads).
    let mut buf = [0u8; 512];
    loop {
        match decoder.next_frame() {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(natter_protocol::FrameError::TooLarge { len, max }) => {
                return Err(Close::new(
                    ErrorCode::FrameTooLarge,
                    format!("frame of {len} bytes, limit {max}"),
                ))
            }
            Err(e) => return Err(Close::new(ErrorCode::MalformedFrame, e.to_string())),
        }
        let n = match recv.read(&mut buf).await {
            Ok(n) => n,
            // The client's clean close may overtake its FIN (QUIC): still a clean end.
            Err(e) if transport.is_clean_close(&e) => 0,
            Err(e) if Violation::from_io(&e).is_some() => {
                let v = Violation::from_io(&e).expect("checked");
                return Err(Close::new(v.code, v.message.clone()));
            }
            Err(e) => return Err(Close::new(ErrorCode::Unspecified, e.to_string())),
        };
        if n == 0 {
            return match decoder.finish() {
                Ok(()) => Ok(None),
                Err(e) => Err(Close::new(ErrorCode::MalformedFrame, e.to_string())),
            };
        }
        decoder.push(&buf[..n]);
    }
}

fn response_frame(id: u64, result: Result<Res, ServerError>) -> Bytes {
    let result = match result {
        Ok(r) => r,
        Err(e) => Res::Error(e.into()),
    };
    let frame = pb::Frame {
        kind: Some(Kind::Response(pb::Response {
            id,
            result: Some(result),
        })),
    };
    encode_frame_compressed(&frame, limits::MAX_FRAME_BYTES).unwrap_or_else(|e| {
        let err = ServerError::new(ErrorCode::TooLarge, e.to_string());
        encode_frame(&pb::Frame {
            kind: Some(Kind::Response(pb::Response {
                id,
                result: Some(Res::Error(err.into())),
            })),
        })
    })
}

/// A wall-clock time as a tokio deadline.
fn at_wall(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms()))
}

impl<T: Transport> Conn<T> {
    /// Watch the device's product token: told `refresh_ahead` before `expires_ms` (at most
    /// half of what is left), closed after it (and the leeway).
    fn watch_token(&mut self, expires_ms: u64) {
        let left = expires_ms.saturating_sub(now_ms());
        let ahead = self.shared.ctx.logins.refresh_ahead_ms.min(left / 2);
        self.token = Some(TokenClock {
            expires_ms,
            warn_ms: expires_ms - ahead,
            warned: false,
        });
    }

    /// The token's next moment: the warning, or the close.
    fn token_due(&self) -> Option<tokio::time::Instant> {
        self.token.map(|t| {
            if t.warned {
                at_wall(t.expires_ms + self.shared.ctx.logins.leeway_ms)
            } else {
                at_wall(t.warn_ms)
            }
        })
    }

    async fn token_tick(&mut self) -> Result<(), Close> {
        let Some(t) = &mut self.token else { return Ok(()) };
        if t.warned {
            return Err(Close::new(
                ErrorCode::TokenExpired,
                "the product token expired: authenticate again with a fresh one",
            ));
        }
        t.warned = true;
        let frame = pb::Frame {
            kind: Some(Kind::Signal(pb::Signal {
                kind: Some(pb::signal::Kind::TokenExpiring(pb::TokenExpiring {
                    expires_at_ms: t.expires_ms,
                })),
            })),
        };
        let _ = self.out.send(encode_frame(&frame)).await;
        Ok(())
    }

    async fn respond(&self, id: u64, result: Result<Res, ServerError>) {
        let _ = self.out.send(self.answers.frame(id, result)).await;
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        recv: &mut R,
        decoder: &mut FrameDecoder,
        close_requests: &mut mpsc::Receiver<Close>,
    ) -> Result<(), Close> {
        // §4.1: Hello first, within the handshake timeout; authenticated within the
        // authentication deadline, counted from the same moment.
        let auth_deadline = tokio::time::Instant::now() + self.shared.config.auth_timeout;
        let first = tokio::time::timeout(
            self.shared.config.handshake_timeout,
            read_frame(&*self.transport, recv, decoder),
        )
        .await
        .map_err(|_| Close::new(ErrorCode::HandshakeRequired, "no Hello within the handshake timeout"))??;
        let hello = match first {
            Some(pb::Frame {
                kind: Some(Kind::Hello(h)),
            }) => h,
            None => return Ok(()),
            Some(_) => {
                return Err(Close::new(
                    ErrorCode::HandshakeRequired,
                    "the first frame must be Hello",
                ))
            }
        };
        if hello.client.len() > limits::MAX_CLIENT_NAME_BYTES {
            return Err(Close::new(
                ErrorCode::BadRequest,
                format!("Hello.client is over {} bytes", limits::MAX_CLIENT_NAME_BYTES),
            ));
        }
        if !hello.versions.contains(&limits::PROTOCOL_VERSION) {
            return Err(Close::new(
                ErrorCode::UnsupportedVersion,
                format!("server speaks version {}", limits::PROTOCOL_VERSION),
            ));
        }
        let welcome = pb::Welcome {
            version: limits::PROTOCOL_VERSION,
            limits: Some(self.shared.config.limits),
            server: concat!("natter-server/", env!("CARGO_PKG_VERSION")).into(),
            server_time_ms: now_ms(),
        };
        let _ = self
            .out
            .send(encode_frame(&pb::Frame {
                kind: Some(Kind::Welcome(welcome)),
            }))
            .await;

        loop {
            let unauthenticated = matches!(self.phase, Phase::Unauthenticated);
            let token_due = self.token_due();
            let frame = tokio::select! {
                frame = read_frame(&*self.transport, recv, decoder) => frame?,
                Some(close) = close_requests.recv() => return Err(close),
                _ = tokio::time::sleep_until(token_due.unwrap_or_else(tokio::time::Instant::now)), if token_due.is_some() => {
                    Box::pin(self.token_tick()).await?;
                    continue;
                }
                _ = tokio::time::sleep_until(auth_deadline), if unauthenticated => {
                    return Err(Close::new(
                        ErrorCode::HandshakeRequired,
                        "not authenticated within the authentication deadline",
                    ))
                }
            };
            let Some(frame) = frame else { break };
            match frame.kind {
                // Boxed: the largest handler's state would otherwise be part of every
                // connection's task for its whole life, idle or not (bench/RESULTS.md,
                // memory per connection).
                Some(Kind::Request(r)) => Box::pin(self.on_request(r)).await?,
                None => return Err(Close::new(ErrorCode::UnknownFrame, "unknown frame kind")),
                Some(_) => {
                    return Err(Close::new(
                        ErrorCode::BadRequest,
                        "frame kind not allowed from a client",
                    ))
                }
            }
        }
        Ok(())
    }

    async fn on_request(&mut self, r: pb::Request) -> Result<(), Close> {
        let id = r.id;
        let Some(op) = r.op else {
            self.respond(
                id,
                Err(ServerError::new(ErrorCode::UnknownRequest, "unknown request kind")),
            )
            .await;
            return Ok(());
        };
        if id == 0 {
            self.respond(
                id,
                Err(ServerError::new(ErrorCode::BadRequest, "request id must be non-zero")),
            )
            .await;
            return Ok(());
        }
        if !matches!(op, Op::Download(_)) {
            // A download answers on its own stream and counts itself (media.rs).
            self.answers.arrived(id, op.name());
        }
        match op {
            Op::Register(x) => {
                let res = self.register(x).await;
                self.respond(id, res).await;
            }
            Op::Login(x) => {
                let res = self.login(x).await;
                self.respond(id, res).await;
            }
            Op::Authenticate(x) => {
                let res = self.authenticate(x).await;
                self.respond(id, res).await;
            }
            Op::TokenLogin(x) => {
                let res = self.token_login(x).await;
                self.respond(id, res).await;
            }
            Op::Ping(p) => {
                self.respond(
                    id,
                    Ok(Res::Pong(pb::Pong {
                        nonce: p.nonce,
                        server_time_ms: now_ms(),
                    })),
                )
                .await
            }
            op => {
                let Phase::Authenticated(authed) = &self.phase else {
                    let refused = ServerError::new(ErrorCode::Unauthenticated, "authenticate first");
                    self.respond(id, Err(refused)).await;
                    return Ok(());
                };
                let actor = authed.actor.clone();
                self.on_authenticated_request(id, op, actor).await?;
            }
        }
        Ok(())
    }

    async fn on_authenticated_request(&mut self, id: u64, op: Op, actor: Actor) -> Result<(), Close> {
        match op {
            Op::Heartbeat(h) => {
                let state = pb::PresenceState::try_from(h.state).unwrap_or(pb::PresenceState::Online);
                self.shared
                    .ctx
                    .presence
                    .heartbeat(actor.user, actor.device, self.conn_id, state);
                self.respond(id, Ok(Res::Done(pb::Done {}))).await;
            }
            Op::Logout(x) => return self.logout(id, x, actor).await,
            Op::DeleteAccount(x) => return self.delete_account(id, x, actor).await,
            Op::RefreshToken(r) => {
                let res = self.refresh_token(r, &actor).await;
                self.respond(id, res).await;
            }
            Op::ListDevices(_) => {
                let res = self.list_devices(&actor).await;
                self.respond(id, res).await;
            }
            Op::Send(s) => self.send(id, s, actor).await,
            Op::Download(d) => {
                let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                    self.respond(id, Err(too_many())).await;
                    return Ok(());
                };
                let (shared, transport, out) = (self.shared.clone(), self.transport.clone(), self.out.clone());
                tokio::spawn(media::download(shared, transport, out, actor, id, d, permit));
            }
            op => {
                let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                    self.respond(id, Err(too_many())).await;
                    return Ok(());
                };
                let shared = self.shared.clone();
                let out = self.out.clone();
                let answers = self.answers.clone();
                tokio::spawn(async move {
                    let res = api::handle(&shared.ctx, &actor, op).await;
                    let _ = out.send(answers.frame(id, res)).await;
                    drop(permit);
                });
            }
        }
        Ok(())
    }

    /// Guarantee 2 and 3: queue to the shard now (in order), answer when durable.
    async fn send(&mut self, id: u64, s: pb::SendMessage, actor: Actor) {
        let checked = (|| {
            validate::client_msg_id(&s.client_msg_id)?;
            let body = s.body.ok_or(validate::ValidationError::Missing("body"))?;
            validate::message_body(&body, self.shared.ctx.max_text_chars)?;
            if s.conversation_id == 0 {
                return Err(validate::ValidationError::Missing("conversation_id"));
            }
            Ok(body)
        })();
        let mut body = match checked {
            Ok(b) => b,
            Err(e) => return self.respond(id, Err(e.into())).await,
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return self.respond(id, Err(too_many())).await;
        };
        if let Err(e) = self.shared.ctx.rates.send(actor.user) {
            return self.respond(id, Err(e)).await;
        }
        let conv = ConversationId(s.conversation_id);
        if let Some(hook) = &self.shared.ctx.presend {
            // Awaited in read order: the hook's latency is the send's (README "Server API").
            body = match hook.check(conv.0, (actor.user.0, &actor.username), body).await {
                Ok(b) => b,
                Err(e) => return self.respond(id, Err(e)).await,
            };
        }
        if !body.attachments.is_empty() || body.encrypted.as_ref().is_some_and(|e| !e.media_ids.is_empty()) {
            // Awaited here, in read order, so sends still reach their shard in order.
            if let Err(e) = api::media::attach(&self.shared.ctx, &actor, conv, &s.client_msg_id, &mut body).await {
                return self.respond(id, Err(e)).await;
            }
        }
        let m = Mutation::Send {
            client_msg_id: s.client_msg_id,
            body,
        };
        let rx = match self.shared.ctx.shards.submit(conv, actor, m).await {
            Ok(rx) => rx,
            Err(e) => return self.respond(id, Err(e)).await,
        };
        let out = self.out.clone();
        let answers = self.answers.clone();
        tokio::spawn(async move {
            let res = match rx.await {
                Ok(Ok(c)) => Ok(Res::Sent(pb::SendOk {
                    conversation_id: conv.0,
                    seq: c.seq.0,
                    server_time_ms: c.server_time_ms,
                    duplicate: c.duplicate,
                })),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ServerError::new(ErrorCode::ShuttingDown, "server is shutting down")),
            };
            if matches!(&res, Ok(Res::Sent(ok)) if ok.duplicate) {
                answers.metrics.duplicates.inc();
            }
            let _ = out.send(answers.frame(id, res)).await;
            drop(permit);
        });
    }
}

/// Ephemeral requests in datagrams (typing): `Frame { request { id: 0, op } }` without a
/// length prefix. Refusals go back as a `SignalRejected` datagram; junk is dropped.
async fn read_datagrams<T: Transport>(shared: Arc<Shared>, transport: Arc<T>, actor: Arc<std::sync::OnceLock<Actor>>) {
    while let Some(d) = transport.read_datagram().await {
        let Some(actor) = actor.get() else { continue };
        if d.len() > limits::MAX_DATAGRAM_BYTES {
            continue;
        }
        let Ok(pb::Frame {
            kind:
                Some(Kind::Request(pb::Request {
                    op: Some(Op::Typing(t)),
                    ..
                })),
        }) = <pb::Frame as prost::Message>::decode(d)
        else {
            continue;
        };
        if let Err(e) = api::typing(&shared.ctx, actor, t.conversation_id).await {
            let rejected = pb::SignalRejected {
                conversation_id: t.conversation_id,
                code: e.code as i32,
            };
            let frame = pb::Frame {
                kind: Some(Kind::Signal(pb::Signal {
                    kind: Some(pb::signal::Kind::Rejected(rejected)),
                })),
            };
            transport.send_datagram(Bytes::from(prost::Message::encode_to_vec(&frame)));
        }
    }
}

fn too_many() -> ServerError {
    ServerError::new(ErrorCode::LimitExceeded, "too many requests in flight")
}
