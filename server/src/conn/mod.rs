//! One client connection, whatever carries it: the handshake, authentication and resume,
//! request dispatch, and the delivery streams (PROTOCOL.md §3–§7).
//!
//! Transports (QUIC today; WebTransport and WebSocket later) implement the small
//! [`Transport`] trait and hand [`serve`] their control stream; no protocol logic lives in
//! an adapter. Requests are read in order; sends are queued to their shard in that order
//! (so one client's messages commit in the order it sent them) and answered when durable;
//! other requests run concurrently up to the in-flight limit.
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use natter_protocol::codec::{encode_event_frame, encode_frame, encode_frame_compressed};
use natter_protocol::pb::{self, frame::Kind, request::Op, response::Result as Res, ErrorCode};
use natter_protocol::{limits, validate, ConversationId, DeviceId, FrameDecoder, Seq, ServerError, UserId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::api::{self, Ctx};
use crate::clock::now_ms;
use crate::conversation::{Actor, Mutation};
use crate::security::auth;
use crate::session::hub::{Hub, Outbound, Session};
use crate::store::StoreError;

/// A connection as the driver needs it: open server→client streams, close with a code.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A server-opened unidirectional stream.
    type Stream: AsyncWrite + Unpin + Send + 'static;
    /// Open a delivery stream.
    async fn open_stream(&self) -> io::Result<Self::Stream>;
    /// Close the whole connection with an error code (PROTOCOL.md §8.2).
    fn close(&self, code: ErrorCode, reason: &str);
    /// Wait up to `limit` for the client to close the connection itself. Where closing
    /// discards data the peer has received but not yet read (QUIC), this is how a last
    /// response and `ConnectionError` reach the client's app; elsewhere it returns at once.
    async fn peer_closed(&self, _limit: Duration) {}
    /// Send an unreliable datagram; false if the transport has none or it does not fit.
    fn send_datagram(&self, data: Bytes) -> bool;
    /// The next datagram from the client; `None` once there will be no more.
    async fn read_datagram(&self) -> Option<Bytes>;
    /// The client's IP address (for per-IP limits).
    fn peer_ip(&self) -> std::net::IpAddr;
}

/// The server's half of a control stream: written, then finished with a bounded wait for
/// the peer to have read everything (so a closing `ConnectionError` is not discarded by the
/// close that follows it).
#[async_trait]
pub trait ControlSend: AsyncWrite + Unpin + Send + 'static {
    /// Finish the stream and wait until the peer has read it to the end.
    async fn finish_and_wait(&mut self);
}

/// Per-connection tunables.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// Time allowed from connect to Hello.
    pub handshake_timeout: Duration,
    /// A delivery stream idle this long is finished (reopened on the next event).
    pub stream_idle: Duration,
    /// Requests in flight per connection.
    pub max_in_flight: usize,
    /// Authenticated connections per user.
    pub max_per_user: usize,
    /// Connections per client IP.
    pub max_per_ip: usize,
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
    per_ip: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
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
    /// Count a connection from `ip`; `None` when that address is at its limit (the
    /// transport then refuses it with `LIMIT_EXCEEDED`).
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut map = self.per_ip.lock().expect("per-ip lock");
        let n = map.entry(ip).or_insert(0);
        if *n >= self.config.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            shared: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().expect("per-ip lock");
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
        }
    }
}

/// Ends a connection: the code and message go out in a ConnectionError frame, then the
/// transport closes with the code.
#[derive(Debug)]
struct Close(ErrorCode, String);

impl Close {
    fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Close(code, msg.into())
    }
}

struct Authed {
    actor: Actor,
    session: Arc<Session>,
    delivery: JoinHandle<()>,
}

struct Conn<T: Transport> {
    shared: Arc<Shared>,
    transport: Arc<T>,
    out: mpsc::Sender<Bytes>,
    conn_id: u64,
    auth: Option<Authed>,
    in_flight: Arc<Semaphore>,
    /// The authenticated actor, for the datagram reader.
    actor: Arc<std::sync::OnceLock<Actor>>,
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
    let writer = tokio::spawn(write_control(send, out_rx));
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight));
    let actor = Arc::new(std::sync::OnceLock::new());
    let mut conn = Conn {
        shared,
        transport,
        out,
        conn_id,
        auth: None,
        in_flight,
        actor,
    };
    let mut decoder = FrameDecoder::new(conn.shared.config.limits.max_frame_bytes as usize);
    let datagrams = tokio::spawn(read_datagrams(
        conn.shared.clone(),
        conn.transport.clone(),
        conn.actor.clone(),
    ));
    let result = conn.run(&mut recv, &mut decoder).await;
    datagrams.abort();
    if let Some(a) = conn.auth.take() {
        a.delivery.abort();
        conn.shared.hub.detach(&a.session, conn.conn_id);
        let clean = result.is_ok();
        conn.shared
            .ctx
            .presence
            .disconnected(a.actor.user, a.actor.device, conn.conn_id, clean);
    }
    if let Err(Close(code, message)) = result {
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
        // client a moment to read it and close first (it does on `ConnectionError`).
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        conn.transport.peer_closed(Duration::from_secs(1)).await;
        conn.transport.close(code, &message);
    }
}

async fn write_control<W: ControlSend>(mut w: W, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            return;
        }
    }
    w.finish_and_wait().await;
}

fn closed_by_peer_with_code_0(e: &std::io::Error) -> bool {
    let closed = |c: &quinn::ConnectionError| matches!(c, quinn::ConnectionError::ApplicationClosed(a) if a.error_code == quinn::VarInt::from_u32(0));
    match e.get_ref() {
        Some(inner) => match inner.downcast_ref::<quinn::ReadError>() {
            Some(quinn::ReadError::ConnectionLost(c)) => closed(c),
            _ => inner.downcast_ref::<quinn::ConnectionError>().is_some_and(closed),
        },
        None => false,
    }
}

async fn read_frame<R: AsyncRead + Unpin>(
    recv: &mut R,
    decoder: &mut FrameDecoder,
) -> Result<Option<pb::Frame>, Close> {
    let mut buf = [0u8; 16 * 1024];
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
            // A client that finishes its control stream and closes with code 0 in one go
            // (the SDKs' shutdown) may have the close overtake the FIN: still a clean end.
            Err(e) if closed_by_peer_with_code_0(&e) => 0,
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

fn store_err(e: StoreError) -> ServerError {
    match e {
        StoreError::UsernameTaken => ServerError::new(ErrorCode::UsernameTaken, "username is taken"),
        other => ServerError::new(ErrorCode::Internal, other.to_string()),
    }
}

impl<T: Transport> Conn<T> {
    async fn respond(&self, id: u64, result: Result<Res, ServerError>) {
        let _ = self.out.send(response_frame(id, result)).await;
    }

    async fn run<R: AsyncRead + Unpin>(&mut self, recv: &mut R, decoder: &mut FrameDecoder) -> Result<(), Close> {
        // §4.1: Hello first, within the handshake timeout.
        let first = tokio::time::timeout(self.shared.config.handshake_timeout, read_frame(recv, decoder))
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

        while let Some(frame) = read_frame(recv, decoder).await? {
            match frame.kind {
                Some(Kind::Request(r)) => self.on_request(r).await?,
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
            Op::Heartbeat(h) if self.auth.is_some() => {
                let a = &self.auth.as_ref().expect("checked").actor;
                let state = pb::PresenceState::try_from(h.state).unwrap_or(pb::PresenceState::Online);
                self.shared
                    .ctx
                    .presence
                    .heartbeat(a.user, a.device, self.conn_id, state);
                self.respond(id, Ok(Res::Done(pb::Done {}))).await;
            }
            _ if self.auth.is_none() => {
                self.respond(
                    id,
                    Err(ServerError::new(ErrorCode::Unauthenticated, "authenticate first")),
                )
                .await;
            }
            Op::Logout(x) => return self.logout(id, x).await,
            Op::ListDevices(_) => {
                let res = self.list_devices().await;
                self.respond(id, res).await;
            }
            Op::Send(s) => self.send(id, s).await,
            op => {
                let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                    self.respond(id, Err(too_many())).await;
                    return Ok(());
                };
                let shared = self.shared.clone();
                let actor = self.auth.as_ref().expect("checked above").actor.clone();
                let out = self.out.clone();
                tokio::spawn(async move {
                    let res = api::handle(&shared.ctx, &actor, op).await;
                    let _ = out.send(response_frame(id, res)).await;
                    drop(permit);
                });
            }
        }
        Ok(())
    }

    /// Guarantee 2 and 3: queue to the shard now (in order), answer when durable.
    async fn send(&mut self, id: u64, s: pb::SendMessage) {
        let checked = (|| {
            validate::client_msg_id(&s.client_msg_id)?;
            let body = s.body.ok_or(validate::ValidationError::Missing("body"))?;
            validate::message_body(&body, self.shared.ctx.max_text_chars)?;
            if s.conversation_id == 0 {
                return Err(validate::ValidationError::Missing("conversation_id"));
            }
            Ok(body)
        })();
        let body = match checked {
            Ok(b) => b,
            Err(e) => return self.respond(id, Err(e.into())).await,
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return self.respond(id, Err(too_many())).await;
        };
        let actor = self.auth.as_ref().expect("authenticated").actor.clone();
        if let Err(e) = self.shared.ctx.rates.send(actor.user) {
            return self.respond(id, Err(e)).await;
        }
        let conv = ConversationId(s.conversation_id);
        let m = Mutation::Send {
            client_msg_id: s.client_msg_id,
            body,
        };
        let rx = match self.shared.ctx.shards.submit(conv, actor, m).await {
            Ok(rx) => rx,
            Err(e) => return self.respond(id, Err(e)).await,
        };
        let out = self.out.clone();
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
            let _ = out.send(response_frame(id, res)).await;
            drop(permit);
        });
    }

    async fn register(&self, r: pb::Register) -> Result<Res, ServerError> {
        self.shared.ctx.rates.register(self.transport.peer_ip())?;
        validate::username(&r.username)?;
        validate::password(&r.password)?;
        let pw = r.password;
        let cost = self.shared.ctx.password_cost;
        let hash = tokio::task::spawn_blocking(move || auth::hash_password_with(&pw, cost))
            .await
            .map_err(|e| ServerError::new(ErrorCode::Internal, e.to_string()))?;
        let id = self
            .shared
            .ctx
            .store
            .create_user(&r.username, &hash, now_ms())
            .await
            .map_err(store_err)?;
        Ok(Res::Register(pb::RegisterOk { user_id: id.0 }))
    }

    async fn login(&mut self, r: pb::Login) -> Result<Res, ServerError> {
        if self.auth.is_some() {
            return Err(ServerError::new(ErrorCode::Conflict, "already authenticated"));
        }
        validate::username(&r.username)?;
        validate::password(&r.password)?;
        // Counted before the password is checked: brute force meets the limit either way.
        self.shared.ctx.rates.login(self.transport.peer_ip(), &r.username)?;
        let device_name = if r.device_name.is_empty() {
            "unnamed device".to_string()
        } else {
            r.device_name
        };
        validate::name(&device_name)?;
        let user = self
            .shared
            .ctx
            .store
            .user_by_name(&r.username)
            .await
            .map_err(store_err)?;
        let hash = user.as_ref().map_or_else(
            || auth::dummy_hash(self.shared.ctx.password_cost),
            |u| u.password_hash.clone(),
        );
        let pw = r.password;
        let ok = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &pw))
            .await
            .unwrap_or(false);
        let user = match user {
            Some(u) if ok => u,
            _ => {
                return Err(ServerError::new(
                    ErrorCode::InvalidCredentials,
                    "wrong username or password",
                ))
            }
        };
        // A new device would be one connection too many: refuse before creating it.
        self.check_user_connections(user.id, DeviceId(0))?;
        let token = auth::new_token("nt_");
        let device = self
            .shared
            .ctx
            .store
            .create_device(
                user.id,
                &user.username,
                &device_name,
                auth::token_hash(&token),
                now_ms(),
            )
            .await
            .map_err(store_err)?;
        let session = self.establish(user.id, user.username, device, "", &[]).await?;
        Ok(Res::Login(pb::LoginOk {
            user_id: user.id.0,
            device_id: device.0,
            access_token: token,
            session: Some(session),
        }))
    }

    async fn authenticate(&mut self, a: pb::Authenticate) -> Result<Res, ServerError> {
        if self.auth.is_some() {
            return Err(ServerError::new(ErrorCode::Conflict, "already authenticated"));
        }
        if a.access_token.is_empty() || a.access_token.len() > limits::MAX_TOKEN_BYTES {
            return Err(ServerError::new(ErrorCode::Unauthenticated, "malformed token"));
        }
        // A resume token is only a hint: one that cannot name a session (too long) means a
        // fresh session with cursor sync, never a refused login.
        let resume_token = if a.resume_token.len() > limits::MAX_TOKEN_BYTES {
            ""
        } else {
            a.resume_token.as_str()
        };
        validate::count("cursors", a.cursors.len(), limits::MAX_CURSORS)?;
        let device = self
            .shared
            .ctx
            .store
            .device_by_token(auth::token_hash(&a.access_token))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ServerError::new(ErrorCode::Unauthenticated, "unknown or revoked token"))?;
        let ok = self
            .establish(device.user, device.username, device.id, resume_token, &a.cursors)
            .await?;
        Ok(Res::Auth(ok))
    }

    /// The per-user connection limit, counting the user's other devices.
    fn check_user_connections(&self, user: UserId, device: DeviceId) -> Result<(), ServerError> {
        let max = self.shared.config.max_per_user;
        if self.shared.hub.attached_elsewhere(user, device) >= max {
            return Err(ServerError::new(
                ErrorCode::LimitExceeded,
                format!("this account already has {max} connections open"),
            ));
        }
        Ok(())
    }

    /// Resume the session if the token allows, else open a fresh one with cursor sync
    /// (PROTOCOL.md §7). The session is attached before the conversation list is read, so
    /// nothing committed in between is missed.
    async fn establish(
        &mut self,
        user: UserId,
        username: String,
        device: DeviceId,
        resume_token: &str,
        cursors: &[pb::Cursor],
    ) -> Result<pb::AuthOk, ServerError> {
        self.check_user_connections(user, device)?;
        if let Some(cluster) = &self.shared.ctx.cluster {
            // Before the session starts: events committed on other nodes from now on are
            // routed here, so none falls between the cursor sync and live delivery.
            cluster
                .attach(user, pb::PresenceState::Online)
                .await
                .map_err(|e| ServerError::new(ErrorCode::Internal, e.to_string()))?;
        }
        let hub = &self.shared.hub;
        let resumed = if resume_token.is_empty() {
            None
        } else {
            let map: HashMap<ConversationId, Seq> = cursors
                .iter()
                .map(|c| (ConversationId(c.conversation_id), Seq(c.seq)))
                .collect();
            hub.resume(resume_token, user, device, &map, self.conn_id)
        };
        let (session, token, rx, conversations, was_resumed) = match resumed {
            Some((session, token, rx, replayed)) => {
                tracing::debug!(%user, %device, replayed, "session resumed");
                (session, token, rx, vec![], true)
            }
            None => {
                let (session, token, rx) = hub.open(user, device, self.conn_id);
                let list = api::all_summaries(&self.shared.ctx, user).await?;
                (session, token, rx, list, false)
            }
        };
        let delivery = tokio::spawn(deliver(
            self.transport.clone(),
            rx,
            self.out.clone(),
            self.shared.config.stream_idle,
            self.shared.config.stream_queue,
        ));
        let actor = Actor {
            user,
            username: username.clone(),
            device,
        };
        let presence = &self.shared.ctx.presence;
        if let Err(e) = presence.ensure_loaded(&*self.shared.ctx.store, user).await {
            tracing::warn!(%user, error = %e, "presence record not loaded");
        }
        presence.connected(user, &username, device, self.conn_id);
        let _ = self.actor.set(actor.clone());
        self.auth = Some(Authed {
            actor,
            session,
            delivery,
        });
        Ok(pb::AuthOk {
            user_id: user.0,
            username,
            device_id: device.0,
            resume_token: token.expose().to_string(),
            resume_window_secs: hub.resume_window().as_secs() as u32,
            resumed: was_resumed,
            conversations,
        })
    }

    async fn logout(&mut self, id: u64, l: pb::Logout) -> Result<(), Close> {
        let actor = self.auth.as_ref().expect("authenticated").actor.clone();
        let device = if l.device_id == 0 {
            actor.device
        } else {
            DeviceId(l.device_id)
        };
        match self.shared.ctx.store.revoke_device(actor.user, device).await {
            Ok(true) => {}
            Ok(false) => {
                self.respond(id, Err(ServerError::new(ErrorCode::NotFound, "no such device")))
                    .await;
                return Ok(());
            }
            Err(e) => {
                self.respond(id, Err(store_err(e))).await;
                return Ok(());
            }
        }
        self.respond(id, Ok(Res::Done(pb::Done {}))).await;
        if device == actor.device {
            self.shared.hub.close_device(actor.user, device, None);
            return Err(Close::new(ErrorCode::TokenRevoked, "logged out"));
        }
        self.shared
            .hub
            .close_device(actor.user, device, Some(ErrorCode::TokenRevoked));
        Ok(())
    }

    async fn list_devices(&self) -> Result<Res, ServerError> {
        let actor = &self.auth.as_ref().expect("authenticated").actor;
        let devices = self
            .shared
            .ctx
            .store
            .list_devices(actor.user)
            .await
            .map_err(store_err)?;
        Ok(Res::Devices(pb::DeviceList {
            devices: devices
                .into_iter()
                .filter(|d| !d.revoked)
                .map(|d| pb::Device {
                    device_id: d.id.0,
                    name: d.name,
                    created_ms: d.created_ms,
                    last_seen_ms: 0,
                    current: d.id == actor.device,
                })
                .collect(),
        }))
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

/// Route a session's events onto one delivery stream per conversation (PROTOCOL.md §3.2),
/// each written by its own task so one blocked conversation never blocks another.
async fn deliver<T: Transport>(
    transport: Arc<T>,
    mut rx: mpsc::Receiver<Outbound>,
    control: mpsc::Sender<Bytes>,
    idle: Duration,
    queue: usize,
) {
    let mut writers: HashMap<ConversationId, mpsc::Sender<Arc<pb::ConversationEvent>>> = HashMap::new();
    while let Some(o) = rx.recv().await {
        let mut ev = match o {
            Outbound::Event(ev) => ev,
            Outbound::Signal(frame) => {
                if control.try_send(frame).is_err() {
                    return transport.close(ErrorCode::LimitExceeded, "slow reader: control queue full");
                }
                continue;
            }
            Outbound::Ephemeral(frame) => {
                // Loss-tolerant: a datagram if possible, else the control stream, else dropped.
                if !transport.send_datagram(Bytes::from(prost::Message::encode_to_vec(&*frame))) {
                    let _ = control.try_send(encode_frame(&frame));
                }
                continue;
            }
            Outbound::Close(code, why) => return transport.close(code, why),
        };
        let conv = ConversationId(ev.conversation_id);
        loop {
            let tx = writers.entry(conv).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(queue);
                tokio::spawn(write_conversation(transport.clone(), conv, rx, idle));
                tx
            });
            match tx.try_send(ev) {
                Ok(()) => break,
                // The writer went idle and finished its stream: start a new one.
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    writers.remove(&conv);
                    ev = back;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return transport.close(ErrorCode::LimitExceeded, "slow reader: delivery queue full");
                }
            }
        }
    }
    // The hub let go of this connection (slow reader, or the session moved on).
    transport.close(ErrorCode::LimitExceeded, "session detached from this connection");
}

async fn write_conversation<T: Transport>(
    transport: Arc<T>,
    conv: ConversationId,
    mut rx: mpsc::Receiver<Arc<pb::ConversationEvent>>,
    idle: Duration,
) {
    let Ok(mut stream) = transport.open_stream().await else {
        return;
    };
    let header = pb::Frame {
        kind: Some(Kind::StreamHeader(pb::StreamHeader {
            conversation_id: conv.0,
        })),
    };
    if stream.write_all(&encode_frame(&header)).await.is_err() {
        return;
    }
    loop {
        match tokio::time::timeout(idle, rx.recv()).await {
            Ok(Some(ev)) => {
                if stream.write_all(&encode_event_frame(&ev)).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => {
                // Idle: refuse new events, write what raced in, then finish the stream.
                rx.close();
                while let Ok(ev) = rx.try_recv() {
                    if stream.write_all(&encode_event_frame(&ev)).await.is_err() {
                        return;
                    }
                }
                break;
            }
        }
    }
    let _ = stream.shutdown().await;
}
