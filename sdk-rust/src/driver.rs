//! The I/O shell around [`ClientSession`]: one task that owns the quinn endpoint, connects
//! and reconnects, pumps bytes and timers into the session and writes what it transmits.
//! Which caller a response resolves and when to reconnect where are the client core's
//! ([`Router`], [`Reconnect`]); nothing here interprets frames.
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_protocol::client::{ops, DownloadSink, Reconnect, Reply, Routed, Router};
use natter_protocol::pb;
use natter_protocol::session::StreamKey;
use natter_protocol::{ClientSession, Millis, RequestError};
use tokio::sync::{mpsc, oneshot};

use crate::{ClientConfig, ClientError, ClientEvent, Command, SendAck, Snapshot};

/// What an upload's watcher hears.
#[derive(Debug)]
pub(crate) enum UploadWatch {
    /// A report from the server.
    Progress(Box<pb::UploadProgress>),
    /// The connection dropped: reports for streams on it will not come.
    Disconnected,
}

/// A caller waiting on a tokio oneshot.
pub(crate) struct Waiter<T>(pub(crate) oneshot::Sender<T>);

impl<T> Reply<T> for Waiter<T> {
    fn reply(self, value: T) {
        let _ = self.0.send(value);
    }
}

type Pending = Router<
    Waiter<Result<natter_protocol::pb::response::Result, RequestError>>,
    Waiter<Result<SendAck, RequestError>>,
    DownloadWaiter,
>;

/// A download's caller: the bytes gather here until the core's router says it is whole.
pub(crate) struct DownloadWaiter {
    bytes: Vec<u8>,
    reply: oneshot::Sender<Result<(pb::DownloadOk, Vec<u8>), natter_protocol::client::DownloadError>>,
}

impl DownloadWaiter {
    pub(crate) fn new(
        reply: oneshot::Sender<Result<(pb::DownloadOk, Vec<u8>), natter_protocol::client::DownloadError>>,
    ) -> Self {
        DownloadWaiter {
            bytes: Vec::new(),
            reply,
        }
    }
}

impl DownloadSink for DownloadWaiter {
    fn data(&mut self, bytes: bytes::Bytes) {
        self.bytes.extend_from_slice(&bytes);
    }

    fn finish(self, result: Result<pb::DownloadOk, natter_protocol::client::DownloadError>) {
        let _ = self.reply.send(result.map(|ok| (ok, self.bytes)));
    }
}

/// Bytes and stream ends from one connection's reader tasks.
enum Input {
    Control(Vec<u8>),
    ControlEnd,
    Stream(StreamKey, Vec<u8>),
    StreamEnd(StreamKey),
    Datagram(bytes::Bytes),
}

enum Exit {
    Reconnect(String),
    Shutdown(Option<oneshot::Sender<()>>),
}

struct Driver {
    config: ClientConfig,
    endpoint: quinn::Endpoint,
    /// Closed on shutdown only if this client made it.
    owns_endpoint: bool,
    /// TLS for every connection (the transport parameters are set per connection).
    crypto: Arc<quinn::crypto::rustls::QuicClientConfig>,
    session: ClientSession,
    start: Instant,
    cmds: mpsc::UnboundedReceiver<Command>,
    /// Back into `cmds`: where the token provider's answers arrive.
    cmds_in: mpsc::WeakUnboundedSender<Command>,
    events: mpsc::UnboundedSender<ClientEvent>,
    pending: Pending,
    reconnect: Reconnect,
    /// The connection being served, for upload streams.
    conn: Option<quinn::Connection>,
    /// Callers waiting on an upload's progress reports, by upload id.
    upload_watchers: std::collections::HashMap<String, Vec<mpsc::UnboundedSender<UploadWatch>>>,
    /// The token provider's calls in flight.
    token_fetches: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) fn spawn(
    config: ClientConfig,
    cmds: mpsc::UnboundedReceiver<Command>,
    cmds_in: mpsc::WeakUnboundedSender<Command>,
    events: mpsc::UnboundedSender<ClientEvent>,
) -> Result<(), ClientError> {
    let tls = crate::tls::client_config(&config.trust).map_err(ClientError::Setup)?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| ClientError::Setup(e.to_string()))?;
    let crypto = Arc::new(crypto);
    quinn::VarInt::from_u64(config.idle_timeout_ms).map_err(|_| ClientError::Setup("idle timeout too long".into()))?;
    let bind: std::net::SocketAddr = if config.addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .expect("valid");
    let (endpoint, owns_endpoint) = match &config.endpoint {
        Some(shared) => (shared.clone(), false),
        None => (
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Setup(e.to_string()))?,
            true,
        ),
    };
    // QUIC keeps the connection alive: presence heartbeats go only when the state changes.
    let session_config = natter_protocol::session::SessionConfig {
        transport_keeps_alive: true,
        ..config.session.clone()
    };
    let mut session = ClientSession::new(session_config, config.access_token.clone());
    session.restore(config.resume_token.clone(), config.cursors.iter().copied());
    let reconnect = Reconnect::new(config.reconnect_min_ms, config.reconnect_max_ms);
    let driver = Driver {
        config,
        endpoint,
        owns_endpoint,
        crypto,
        session,
        start: Instant::now(),
        cmds,
        cmds_in,
        events,
        pending: Router::new(),
        reconnect,
        conn: None,
        upload_watchers: Default::default(),
        token_fetches: Vec::new(),
    };
    tokio::spawn(driver.run());
    Ok(())
}

impl Driver {
    fn now(&self) -> Millis {
        Millis(self.start.elapsed().as_millis() as u64)
    }

    async fn run(mut self) {
        loop {
            let exit = match self.connect().await {
                Ok(conn) => self.serve(conn).await,
                Err(e) => Exit::Reconnect(e),
            };
            let now = self.now();
            let reason = match &exit {
                Exit::Reconnect(reason) => reason.as_str(),
                Exit::Shutdown(_) => "shut down",
            };
            tracing::debug!(%reason, "disconnected");
            self.session.handle_disconnected(now, reason);
            self.upload_watchers.retain(|_, ws| {
                ws.retain(|w| w.send(UploadWatch::Disconnected).is_ok());
                !ws.is_empty()
            });
            self.dispatch();
            if let Exit::Shutdown(done) = exit {
                if self.owns_endpoint {
                    self.endpoint.close(0u32.into(), b"bye");
                }
                self.let_go_of_the_app().await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            // Back off (the policy also moves on to the next node), still taking commands:
            // they queue in the session.
            let delay = Duration::from_millis(self.reconnect.next_delay());
            let until = tokio::time::Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    cmd = self.cmds.recv() => match cmd {
                        None => return,
                        Some(Command::Shutdown(done)) => {
                            self.let_go_of_the_app().await;
                            let _ = done.send(());
                            return;
                        }
                        Some(Command::Reconnect) => break,
                        Some(cmd) => { self.command(cmd); self.dispatch(); }
                    }
                }
            }
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match self.reconnect.address(self.config.fallback_addrs.len() + 1) {
            0 => self.config.addr,
            i => self.config.fallback_addrs[i - 1],
        }
    }

    /// QUIC parameters for the next connection (PROTOCOL.md §3.1): the idle timeout, and a
    /// PING after `ClientConfig::keep_alive_ms` of silence — by default the interval the
    /// server advertised last (`Limits.keep_alive_ms`) — at most half the idle timeout in
    /// effect (the smaller of ours and the server's last advertised one).
    fn quic_config(&self) -> quinn::ClientConfig {
        let idle = Duration::from_millis(self.config.idle_timeout_ms.max(300));
        let limits = self.session.limits();
        let advertised = |ms: u32| Some(u64::from(ms)).filter(|&ms| ms > 0).map(Duration::from_millis);
        let effective_idle = advertised(limits.idle_timeout_ms).map_or(idle, |server| server.min(idle));
        let keep_alive = self
            .config
            .keep_alive_ms
            .map(Duration::from_millis)
            .or(advertised(limits.keep_alive_ms))
            .unwrap_or(Duration::from_millis(natter_protocol::limits::KEEP_ALIVE_MS.into()));
        let keep_alive = keep_alive.max(Duration::from_millis(100)).min(effective_idle / 2);
        let mut quic = quinn::ClientConfig::new(self.crypto.clone());
        quic.transport_config(Arc::new(transport_config(keep_alive, idle)));
        quic
    }

    async fn connect(&mut self) -> Result<quinn::Connection, String> {
        let connecting = self
            .endpoint
            .connect_with(self.quic_config(), self.addr(), &self.config.server_name)
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    async fn serve(&mut self, conn: quinn::Connection) -> Exit {
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return Exit::Reconnect(e.to_string()),
        };
        let (in_tx, mut inputs) = mpsc::unbounded_channel();
        let control_tx = in_tx.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                if control_tx.send(Input::Control(chunk.bytes.to_vec())).is_err() {
                    return;
                }
            }
            let _ = control_tx.send(Input::ControlEnd);
        });
        let dgram_conn = conn.clone();
        let dgram_tx = in_tx.clone();
        let datagrams = tokio::spawn(async move {
            while let Ok(d) = dgram_conn.read_datagram().await {
                if dgram_tx.send(Input::Datagram(d)).is_err() {
                    return;
                }
            }
        });
        let accept_conn = conn.clone();
        let acceptor = tokio::spawn(async move {
            let mut next = 0u64;
            while let Ok(mut stream) = accept_conn.accept_uni().await {
                next += 1;
                let key = StreamKey(next);
                let tx = in_tx.clone();
                tokio::spawn(async move {
                    while let Ok(Some(chunk)) = stream.read_chunk(64 * 1024, true).await {
                        if tx.send(Input::Stream(key, chunk.bytes.to_vec())).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Input::StreamEnd(key));
                });
            }
        });
        self.session.handle_connected(self.now());
        self.session.set_datagrams_supported(conn.max_datagram_size().is_some());
        self.conn = Some(conn.clone());
        let exit = self.pump(&conn, &mut send, &mut inputs).await;
        self.conn = None;
        reader.abort();
        datagrams.abort();
        acceptor.abort();
        if let Exit::Shutdown(_) = exit {
            let _ = send.finish();
            conn.close(0u32.into(), b"bye");
        } else {
            conn.close(1u32.into(), b"reconnecting");
        }
        exit
    }

    async fn pump(
        &mut self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        inputs: &mut mpsc::UnboundedReceiver<Input>,
    ) -> Exit {
        loop {
            while let Some(bytes) = self.session.poll_transmit() {
                if let Err(e) = send.write_all(&bytes).await {
                    return Exit::Reconnect(e.to_string());
                }
            }
            while let Some(d) = self.session.poll_datagram() {
                // Loss-tolerant by design: a datagram that cannot go is dropped.
                let _ = conn.send_datagram(d);
            }
            if let Some(exit) = self.dispatch() {
                return exit;
            }
            let deadline = self
                .session
                .poll_timeout()
                .map(|m| self.start + Duration::from_millis(m.0));
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    None => return Exit::Shutdown(None),
                    Some(Command::Shutdown(done)) => return Exit::Shutdown(Some(done)),
                    Some(Command::Reconnect) => return Exit::Reconnect("reconnect requested".into()),
                    Some(cmd) => self.command(cmd),
                },
                input = inputs.recv() => if let Err(exit) = self.input(input, conn) {
                    return exit;
                },
                _ = sleep => { let now = self.now(); self.session.handle_timeout(now); },
                e = conn.closed() => {
                    // What the readers took off the connection before it closed is still
                    // the server's word (a response sent right before a close, e.g. to a
                    // Logout): apply it before giving up on the connection.
                    while let Ok(input) = inputs.try_recv() {
                        if self.input(Some(input), conn).is_err() {
                            break;
                        }
                    }
                    self.dispatch();
                    return Exit::Reconnect(e.to_string());
                }
            }
        }
    }

    /// Feed one reader input to the session; `Err` when the connection is over.
    fn input(&mut self, input: Option<Input>, conn: &quinn::Connection) -> Result<(), Exit> {
        let now = self.now();
        let result = match input {
            Some(Input::Control(b)) => self.session.handle_control_data(now, &b),
            Some(Input::Stream(k, b)) => self.session.handle_stream_data(now, k, &b),
            Some(Input::StreamEnd(k)) => self.session.handle_stream_finished(k),
            Some(Input::Datagram(d)) => {
                self.session.handle_datagram(now, &d);
                Ok(())
            }
            Some(Input::ControlEnd) | None => {
                return Err(Exit::Reconnect(
                    conn.close_reason()
                        .map_or("control stream closed".into(), |r| r.to_string()),
                ))
            }
        };
        result.map_err(|e| Exit::Reconnect(format!("protocol error: {e}")))
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Request(op, reply) => self.pending.request(&mut self.session, now, op, Waiter(reply)),
            Command::Send(conv, id, body, reply) => {
                self.pending.send(&mut self.session, now, conv, id, body, Waiter(reply))
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(Snapshot {
                    access_token: self.session.access_token().map(String::from),
                    resume_token: self.session.resume_token().map(String::from),
                    cursors: self.session.cursors(),
                    pending_sends: self
                        .session
                        .outbox()
                        .iter()
                        .map(|e| crate::PendingSend {
                            conversation_id: e.conversation_id,
                            client_msg_id: e.client_msg_id.clone(),
                            body: e.body.clone(),
                        })
                        .collect(),
                    pending_uploads: Vec::new(),
                });
            }
            Command::Status(conv, seq, reply) => {
                let _ = reply.send(self.session.message_status(conv, seq));
            }
            Command::Unread(conv, reply) => {
                let _ = reply.send(self.session.unread(conv));
            }
            Command::Typing(conv) => self.session.typing(now, conv),
            Command::Acknowledge(conv, seq) => self.session.acknowledge(now, conv, seq),
            Command::Download(d, waiter) => self.pending.download(&mut self.session, now, d, waiter),
            Command::WatchUpload(id, tx) => self.upload_watchers.entry(id).or_default().push(tx),
            Command::UploadStream(id, offset, data, stop, done) => match self.conn.clone() {
                Some(conn) => {
                    tokio::spawn(async move {
                        let _ = done.send(upload_stream(conn, &id, offset, data, stop).await);
                    });
                }
                None => {
                    let _ = done.send(Err("not connected".into()));
                }
            },
            Command::Presence(state) => self.session.set_presence(now, state),
            Command::ProductToken(token) => self.session.set_product_token(now, token),
            Command::Reconnect | Command::Shutdown(_) => unreachable!("handled by the loops"),
        }
    }

    /// Route session events through the core's router: it resolves waiting futures and
    /// keeps the reconnect policy; the rest goes to the app. Returns an exit when the
    /// server asked us to go.
    fn dispatch(&mut self) -> Option<Exit> {
        let mut exit = None;
        while let Some(ev) = self.session.poll_event() {
            let state = self.session.state();
            match self.pending.route(ev, state, &mut self.reconnect) {
                Routed::Handled => {}
                Routed::App(ev) => {
                    if let natter_protocol::SessionEvent::TokenNeeded { .. } = &ev {
                        self.ask_for_token();
                    }
                    if let natter_protocol::SessionEvent::UploadProgress(p) = &ev {
                        if let Some(watchers) = self.upload_watchers.get_mut(&p.upload_id) {
                            watchers.retain(|w| w.send(UploadWatch::Progress(Box::new(p.clone()))).is_ok());
                            if watchers.is_empty() {
                                self.upload_watchers.remove(&p.upload_id);
                            }
                        }
                    }
                    let _ = self.events.send(ev);
                }
                Routed::AppAndReconnect(ev, why) => {
                    let _ = self.events.send(ev);
                    exit = Some(Exit::Reconnect(why));
                }
            }
        }
        exit
    }
}

impl Driver {
    /// Ask the app's token provider for a fresh product token; its answer comes back as a
    /// command (PROTOCOL.md §5.13).
    fn ask_for_token(&mut self) {
        let (Some(provider), Some(cmds)) = (self.config.token_provider.clone(), self.cmds_in.upgrade()) else {
            return;
        };
        self.token_fetches.retain(|h| !h.is_finished());
        self.token_fetches.push(tokio::spawn(async move {
            if let Some(token) = provider.fetch().await {
                let _ = cmds.send(Command::ProductToken(token));
            }
        }));
    }

    /// Before the app hears the client is shut down: the token provider's call in flight
    /// ends (bounded), and the provider goes. A foreign one (Kotlin/Swift/Python) is then
    /// never called nor freed from this client's threads after `shutdown` returned — a
    /// Python interpreter exiting then aborts a thread that calls into it.
    async fn let_go_of_the_app(&mut self) {
        let fetches = futures::future::join_all(std::mem::take(&mut self.token_fetches));
        let _ = tokio::time::timeout(Duration::from_secs(5), fetches).await;
        self.config.token_provider = None;
    }
}

/// One upload stream (PROTOCOL.md §11.2): the core's header, the bytes, FIN; `Ok` once the
/// server has read them all. `stop` (fired or dropped) resets the stream: the server keeps
/// the pieces it stored.
async fn upload_stream(
    conn: quinn::Connection,
    id: &str,
    offset: u64,
    data: bytes::Bytes,
    stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
    let write = async |s: &mut quinn::SendStream| {
        s.write_all(&ops::upload_header(id, offset))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(&data).await.map_err(|e| e.to_string())?;
        s.finish().map_err(|e| e.to_string())?;
        match s.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(format!("stopped by the server with {code}")),
            Err(e) => Err(e.to_string()),
        }
    };
    let done = tokio::select! {
        r = write(&mut s) => Some(r),
        _ = stop => None,
    };
    match done {
        Some(r) => r,
        None => {
            let _ = s.reset(0u32.into());
            Err("stopped".into())
        }
    }
}

/// A connection's QUIC transport: a PING after `keep_alive` of silence, the idle timeout,
/// room for the server's delivery streams, and immediate acknowledgements from the server.
fn transport_config(keep_alive: Duration, idle: Duration) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    transport.max_idle_timeout(idle.try_into().ok());
    transport.max_concurrent_uni_streams(1024u32.into());
    // Ask the server to acknowledge each of our ack-eliciting packets at once (the ACK
    // frequency extension, PROTOCOL.md §3.1): an idle connection's keep-alive PING is then
    // received and acknowledged in one wake-up of the server's connection instead of two
    // (its arrival, then the delayed ACK's timer 25 ms later). What a client sends is mostly
    // requests answered at once anyway, whose answer carries the ACK.
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(0u32.into());
    transport.ack_frequency_config(Some(acks));
    transport
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_asked_to_acknowledge_at_once() {
        let t = format!(
            "{:?}",
            transport_config(Duration::from_secs(25), Duration::from_secs(60))
        );
        assert!(
            t.contains("ack_frequency_config: Some(AckFrequencyConfig { ack_eliciting_threshold: 0"),
            "{t}"
        );
    }
}
