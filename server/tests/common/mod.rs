//! Test harness: real servers on loopback (in-process or the binary), SDK clients, a raw
//! frame-level client for hostile input, and event waits bounded by a deadline.
#![allow(dead_code)]
pub mod api;
pub mod disk;
pub mod e2ee;
pub mod media;
pub mod push;
pub mod relay;
pub mod wt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use natter_protocol::codec::{decode_frame, encode_frame};
use natter_protocol::pb::{self, frame::Kind, request::Op};
use natter_sdk::{Client, ClientConfig, ClientEvent, ConversationId, Events};
use natter_server::{Config, RunningServer};

/// Every wait in these tests ends by this deadline; a hang is a failure, not a stall.
pub const DEADLINE: Duration = Duration::from_secs(20);
pub const PASSWORD: &str = "correct horse battery";

pub fn config(dir: &Path) -> Config {
    Config {
        web_listen: Some("127.0.0.1:0".parse().unwrap()),
        webtransport_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::loopback(dir)
    }
}

pub async fn server(dir: &Path) -> RunningServer {
    natter_server::start(&config(dir)).await.expect("server starts")
}

/// [`config`] for node `id` of several on one Redis.
pub fn redis_config(dir: &Path, redis: &natter_server::store::testredis::TestRedis, id: &str) -> Config {
    Config {
        storage: natter_server::config::Storage::Redis,
        redis_urls: vec![redis.url()],
        node_id: id.into(),
        ..config(dir)
    }
}

/// A node of several on one Redis, in process.
pub async fn redis_node(dir: &Path, redis: &natter_server::store::testredis::TestRedis, id: &str) -> RunningServer {
    natter_server::start(&redis_config(dir, redis, id))
        .await
        .expect("node starts")
}

/// Start a server again on the same data dir and address. sled may release its directory
/// lock a moment after the previous in-process server's last handle is gone (its I/O pool
/// finishes first), so opening is retried while the lock is held, up to the deadline.
pub async fn restart(dir: &Path, addr: SocketAddr) -> RunningServer {
    let mut cfg = config(dir);
    cfg.listen = addr;
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        match natter_server::start(&cfg).await {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("could not acquire lock") && tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("restart failed: {e:#}"),
        }
    }
}

pub struct Device {
    pub client: Client,
    pub events: Events,
    pub token: String,
}

pub fn client_config(addr: SocketAddr, fingerprint: &str, token: Option<String>) -> ClientConfig {
    let mut c = ClientConfig::pinned(addr, fingerprint);
    c.access_token = token;
    c.reconnect_min_ms = 20;
    c.reconnect_max_ms = 200;
    // A foreground app that wants a dead path or a restarted node noticed within seconds
    // (PROTOCOL.md §3.1): the tests that kill, restart or blackhole a server wait on it.
    c.idle_timeout_ms = 8_000;
    c.keep_alive_ms = Some(2_000);
    c
}

/// Register `name` (if `register`) and log a new device in.
pub async fn device(addr: SocketAddr, fp: &str, name: &str, register: bool) -> Device {
    let (client, events) = Client::connect(client_config(addr, fp, None)).unwrap();
    if register {
        client.register(name, PASSWORD).await.expect("register");
    }
    let info = client
        .login(name, PASSWORD, &format!("{name}-device"))
        .await
        .expect("login");
    let mut events = events;
    // Consume this login's Connected so later waits see only later connections.
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    Device {
        client,
        events,
        token: info.access_token,
    }
}

pub async fn user(s: &RunningServer, name: &str) -> Device {
    device(s.addr, &s.fingerprint, name, true).await
}

/// The usual cast: alice and bob, registered and connected, and their direct conversation.
pub async fn alice_and_bob(s: &RunningServer) -> (Device, Device, ConversationId) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let dm = ConversationId(alice.client.direct("bob").await.unwrap().conversation_id);
    (alice, bob, dm)
}

/// Poll `f` until it holds, within [`DEADLINE`]: for state another process changes later
/// than the event a test can see (an index following commits, a delayed acknowledgement).
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let until = std::time::Instant::now() + DEADLINE;
    while !f().await {
        assert!(std::time::Instant::now() < until, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait for the first event matching `f`, up to the deadline.
pub async fn wait_for<T>(events: &mut Events, mut f: impl FnMut(&ClientEvent) -> Option<T>) -> T {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let ev = events.next().await.expect("event stream open");
            if std::env::var("NATTER_TEST_TRACE").is_ok() {
                eprintln!("EV {ev:?}");
            }
            if let Some(t) = f(&ev) {
                return t;
            }
        }
    })
    .await
    .expect("expected event before the deadline")
}

/// Message texts of a conversation, with seqs, until `n` messages have arrived.
pub async fn messages(events: &mut Events, conv: ConversationId, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = wait_for(events, |e| match e {
            ClientEvent::Event(ev) if ev.conversation_id == conv.0 => Some(ev.clone()),
            _ => None,
        })
        .await;
        if let Some(pb::conversation_event::Body::Message(msg)) = m.body {
            out.push((m.seq, msg.body.unwrap_or_default().text));
        }
    }
    out
}

/// All events of a conversation with seq ≤ `upto`, asserting they arrive gap-free.
pub async fn events_upto(events: &mut Events, conv: ConversationId, upto: u64) -> Vec<pb::ConversationEvent> {
    let mut out: Vec<pb::ConversationEvent> = Vec::new();
    while out.last().map_or(0, |e| e.seq) < upto {
        let ev = wait_for(events, |e| match e {
            ClientEvent::Event(ev) if ev.conversation_id == conv.0 => Some(ev.clone()),
            _ => None,
        })
        .await;
        out.push(ev);
    }
    out
}

pub fn seqs_and_texts(evs: &[pb::ConversationEvent]) -> Vec<(u64, String)> {
    evs.iter()
        .map(|e| {
            let text = match &e.body {
                Some(pb::conversation_event::Body::Message(m)) => m.body.clone().unwrap_or_default().text,
                other => format!("{other:?}"),
            };
            (e.seq, text)
        })
        .collect()
}

/// A frame-level client for sending what the SDK never would.
pub struct Raw {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    next_id: u64,
    /// The server's Welcome, once [`Raw::hello`] got it.
    pub welcome: Option<pb::Welcome>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr, fp: &str) -> Raw {
        Raw::connect_from("127.0.0.1", addr, fp).await
    }

    /// A bare QUIC connection from a chosen loopback address (every 127.x.y.z is this
    /// machine).
    pub async fn quic_from(ip: &str, addr: SocketAddr, fp: &str) -> quinn::Connection {
        Raw::quic_attempt_from(ip, addr, fp).await.unwrap()
    }

    /// A QUIC connection attempt from a chosen loopback address, which the server may
    /// refuse before the handshake.
    pub async fn quic_attempt_from(
        ip: &str,
        addr: SocketAddr,
        fp: &str,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        let tls = natter_sdk::tls::client_config(&natter_sdk::Trust::Fingerprint(fp.into())).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client(format!("{ip}:0").parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        tokio::time::timeout(DEADLINE, ep.connect(addr, "localhost").unwrap())
            .await
            .expect("connected or refused before the deadline")
    }

    /// Assert that the server refused a connection attempt before the TLS handshake
    /// (PROTOCOL.md §3.1: admission comes before crypto).
    pub async fn assert_refused_before_tls(ip: &str, addr: SocketAddr, fp: &str) {
        match Raw::quic_attempt_from(ip, addr, fp).await {
            Err(quinn::ConnectionError::ConnectionClosed(c)) => assert_eq!(
                c.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED,
                "refused with CONNECTION_REFUSED"
            ),
            Err(e) => panic!("expected CONNECTION_REFUSED before the handshake, got {e}"),
            Ok(_) => panic!("expected a refusal before the handshake, the connection was accepted"),
        }
    }

    /// Connect from a chosen loopback address.
    pub async fn connect_from(ip: &str, addr: SocketAddr, fp: &str) -> Raw {
        Raw::try_connect_from(ip, addr, fp).await.expect("connection admitted")
    }

    /// Connect from a chosen loopback address; `None` if the server refused it.
    pub async fn try_connect_from(ip: &str, addr: SocketAddr, fp: &str) -> Option<Raw> {
        let conn = Raw::quic_attempt_from(ip, addr, fp).await.ok()?;
        let (send, recv) = conn.open_bi().await.unwrap();
        Some(Raw {
            conn,
            send,
            recv,
            buf: BytesMut::new(),
            next_id: 1,
            welcome: None,
        })
    }

    /// Connect and complete the handshake.
    pub async fn hello(addr: SocketAddr, fp: &str) -> Raw {
        let mut r = Raw::connect(addr, fp).await;
        r.frame(Kind::Hello(pb::Hello {
            versions: vec![1],
            client: "raw".into(),
        }))
        .await;
        match r.read().await {
            Some(pb::Frame {
                kind: Some(Kind::Welcome(w)),
            }) => {
                r.welcome = Some(w);
                r
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub async fn bytes(&mut self, b: &[u8]) {
        self.send.write_all(b).await.unwrap();
    }

    pub async fn frame(&mut self, kind: Kind) {
        let b = encode_frame(&pb::Frame { kind: Some(kind) });
        self.bytes(&b).await;
    }

    pub async fn read(&mut self) -> Option<pb::Frame> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(f) = decode_frame(&mut self.buf, usize::MAX).unwrap() {
                    return Some(f);
                }
                match self.recv.read_chunk(65536, true).await {
                    Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                    _ => return None,
                }
            }
        })
        .await
        .expect("frame or end before the deadline")
    }

    pub async fn request(&mut self, op: Op) -> pb::response::Result {
        let id = self.next_id;
        self.next_id += 1;
        self.frame(Kind::Request(pb::Request { id, op: Some(op) })).await;
        loop {
            match self.read().await {
                Some(pb::Frame {
                    kind: Some(Kind::Response(r)),
                }) if r.id == id => return r.result.unwrap(),
                Some(_) => continue,
                None => panic!("connection ended before response {id}"),
            }
        }
    }

    pub async fn login(&mut self, user: &str) {
        let op = Op::Login(pb::Login {
            username: user.into(),
            password: PASSWORD.into(),
            device_name: "raw".into(),
        });
        match self.request(op).await {
            pb::response::Result::Login(_) => {}
            other => panic!("login failed: {other:?}"),
        }
    }

    /// The next event on a delivery stream the server opens (§3.2): the stream's header,
    /// then its first event. Enough for tests that expect one event per stream.
    pub async fn next_delivered(&mut self) -> pb::ConversationEvent {
        tokio::time::timeout(DEADLINE, async {
            let mut stream = self.conn.accept_uni().await.expect("a delivery stream");
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            while frames.len() < 2 {
                while let Some(f) = decode_frame(&mut buf, usize::MAX).unwrap() {
                    frames.push(f);
                }
                if frames.len() >= 2 {
                    break;
                }
                let chunk = stream.read_chunk(65536, true).await.unwrap().expect("more frames");
                buf.extend_from_slice(&chunk.bytes);
            }
            assert!(
                matches!(frames[0].kind, Some(Kind::StreamHeader(_))),
                "a delivery stream starts with its header: {:?}",
                frames[0]
            );
            match frames.swap_remove(1).kind {
                Some(Kind::Event(e)) => e,
                other => panic!("expected an event, got {other:?}"),
            }
        })
        .await
        .expect("an event before the deadline")
    }

    /// The connection's close: the ConnectionError frame (if any) and the close code.
    pub async fn closed(&mut self) -> (Option<pb::ConnectionError>, u64) {
        let mut err = None;
        while let Some(f) = self.read().await {
            if let Some(Kind::ConnectionError(e)) = f.kind {
                err = Some(e);
            }
        }
        let reason = tokio::time::timeout(DEADLINE, self.conn.closed())
            .await
            .expect("closed before the deadline");
        let code = match reason {
            quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("expected an application close, got {other}"),
        };
        (err, code)
    }
}

pub fn error_code(r: &pb::response::Result) -> pb::ErrorCode {
    match r {
        pb::response::Result::Error(e) => pb::ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The `natter` CLI binary (built by `cargo build --workspace --bins`, which the test
/// script runs first) sits next to this test's directory.
pub fn natter_cli() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("natter");
    assert!(
        bin.exists(),
        "build the CLI first: cargo build --workspace --bins ({})",
        bin.display()
    );
    bin
}

/// Run the CLI off the async runtime (the in-process server needs its threads).
pub async fn cli(profile: &std::path::Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut cmd = std::process::Command::new(natter_cli());
    cmd.arg("--profile").arg(profile).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "natter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Run the CLI expecting it to fail; its stderr.
pub async fn cli_fails(profile: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(natter_cli());
    cmd.arg("--profile").arg(profile).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success(), "natter {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A CLI profile at `profile` for a new user `name` on `s`: registered (saving the server
/// and its fingerprint in the profile) and logged in.
pub async fn cli_user(profile: &std::path::Path, s: &RunningServer, name: &str) {
    let (addr, fp) = (s.addr.to_string(), s.fingerprint.clone());
    let register = [
        "--server",
        &addr,
        "--fingerprint",
        &fp,
        "register",
        name,
        "--password",
        PASSWORD,
    ];
    assert_eq!(cli(profile, &register).await[0]["registered"], name);
    cli(profile, &["login", name, "--password", PASSWORD]).await;
}

/// A new CLI profile at `profile` logged in as `name` (registered already) on `s`: a
/// new device of that user.
pub async fn cli_login(profile: &std::path::Path, s: &RunningServer, name: &str) {
    let (addr, fp) = (s.addr.to_string(), s.fingerprint.clone());
    let login = [
        "--server",
        &addr,
        "--fingerprint",
        &fp,
        "login",
        name,
        "--password",
        PASSWORD,
    ];
    cli(profile, &login).await;
}

/// The last word of the server's next stdout line (an address, a fingerprint).
pub fn last_word(lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>) -> String {
    let line = lines.next().expect("a line").expect("readable");
    line.rsplit(' ').next().unwrap_or_default().to_string()
}

/// The server binary in its own process (for `kill -9`), on loopback.
pub struct ServerProcess {
    pub child: std::process::Child,
    /// The rest of the server's stdout (held so it stays open).
    pub stdout: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    pub addr: std::net::SocketAddr,
    pub fingerprint: String,
}

impl Drop for ServerProcess {
    /// A failed test must not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the server binary on `dir` (the QUIC endpoint on `listen`) and read its address
/// and certificate fingerprint from its first two lines.
pub fn spawn_server_binary(dir: &std::path::Path, listen: &str) -> ServerProcess {
    spawn_server_binary_with(dir, listen, &[])
}

/// [`spawn_server_binary`] with extra command-line flags.
pub fn spawn_server_binary_with(dir: &std::path::Path, listen: &str, extra: &[&str]) -> ServerProcess {
    spawn_server(dir, listen, extra, "warn", std::process::Stdio::inherit())
}

/// [`spawn_server_binary_with`] logging at `level` (`debug`, `trace`…) into the file `log`.
pub fn spawn_server_binary_logging(
    dir: &std::path::Path,
    listen: &str,
    extra: &[&str],
    level: &str,
    log: &std::path::Path,
) -> ServerProcess {
    let file = std::fs::File::create(log).expect("log file");
    spawn_server(dir, listen, extra, level, file.into())
}

fn spawn_server(
    dir: &std::path::Path,
    listen: &str,
    extra: &[&str],
    level: &str,
    stderr: std::process::Stdio,
) -> ServerProcess {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .args(["--data-dir", dir.to_str().unwrap(), "--listen", listen, "--log", level])
        .stderr(stderr)
        .args(["--web-listen", "127.0.0.1:0"])
        .args(if extra.contains(&"--ops-listen") {
            &[][..]
        } else {
            &["--ops-listen", "127.0.0.1:0", "--ready-grace-secs", "0"][..]
        })
        .args(if extra.contains(&"--webtransport-listen") {
            &[][..]
        } else {
            &["--webtransport-listen", "127.0.0.1:0"][..]
        })
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("server binary starts");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let addr = last_word(&mut lines).parse().unwrap();
    let fingerprint = last_word(&mut lines);
    ServerProcess {
        child,
        stdout: lines,
        addr,
        fingerprint,
    }
}

/// Every file under `dir` (or `dir` itself, a file) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    // A running server may delete a file between the listing and the read (search index
    // merges): a file that is gone holds nothing.
    let holds = |path: &Path| std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle));
    if dir.is_file() {
        return if holds(dir) { vec![dir.to_path_buf()] } else { vec![] };
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if holds(&path) {
                out.push(path);
            }
        }
    }
    out
}
