//! The handshakes scenario (issue 21): connections set up per second with authentication,
//! each a QUIC + TLS 1.3 handshake, `Hello`/`Welcome` and `Authenticate` with an access
//! token (no password, no argon2), then a clean close. `full`: every handshake without a
//! ticket (the certificate is sent and signed); `resumed`: each worker presents the ticket
//! its previous connection received (PROTOCOL.md §3.1). Workers are separate devices, each
//! with its own TLS session store, so a device never displaces itself (`CONFLICT`).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use natter_protocol::codec::{decode_frame, encode_frame};
use natter_protocol::pb::{self, frame::Kind, request::Op, response::Result as Res};
use serde::Serialize;

use crate::{ProcStats, Report, Target, PASSWORD};

/// Handshake scenario parameters.
#[derive(Clone, Debug, Serialize)]
pub struct HandshakesOpts {
    /// Connections being set up at once (each its own device).
    pub parallel: usize,
    pub secs: f64,
    /// Present the previous connection's TLS ticket.
    pub resumed: bool,
}

/// One raw control stream: frames out, frames in.
struct Control {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl Control {
    async fn open(conn: &quinn::Connection) -> anyhow::Result<Control> {
        let (send, recv) = conn.open_bi().await?;
        let mut c = Control {
            send,
            recv,
            buf: BytesMut::new(),
        };
        c.send(Kind::Hello(pb::Hello {
            versions: vec![1],
            client: "natter-bench".into(),
        }))
        .await?;
        match c.read().await? {
            Kind::Welcome(_) => Ok(c),
            other => anyhow::bail!("expected Welcome, got {other:?}"),
        }
    }

    async fn send(&mut self, kind: Kind) -> anyhow::Result<()> {
        self.send
            .write_all(&encode_frame(&pb::Frame { kind: Some(kind) }))
            .await?;
        Ok(())
    }

    async fn read(&mut self) -> anyhow::Result<Kind> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, usize::MAX)? {
                return f.kind.context("an empty frame");
            }
            let chunk = self
                .recv
                .read_chunk(64 * 1024, true)
                .await?
                .context("the stream ended")?;
            self.buf.extend_from_slice(&chunk.bytes);
        }
    }

    /// Request `op` (as request 1) and return its result.
    async fn request(&mut self, op: Op) -> anyhow::Result<Res> {
        self.send(Kind::Request(pb::Request { id: 1, op: Some(op) })).await?;
        loop {
            if let Kind::Response(r) = self.read().await? {
                return r.result.context("an empty response");
            }
        }
    }
}

fn tls(t: &Target, resumed: bool) -> anyhow::Result<quinn::ClientConfig> {
    let mut tls = natter_sdk::tls::client_config(&natter_sdk::Trust::Fingerprint(t.fingerprint.clone()))
        .map_err(|e| anyhow::anyhow!(e))?;
    if !resumed {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// A new device's access token (a raw Register + Login on one connection).
async fn device_token(t: &Target, endpoint: &quinn::Endpoint, name: &str) -> anyhow::Result<String> {
    let conn = endpoint.connect_with(tls(t, false)?, t.addr, "localhost")?.await?;
    let mut c = Control::open(&conn).await?;
    let register = Op::Register(pb::Register {
        username: name.into(),
        password: PASSWORD.into(),
    });
    match c.request(register).await? {
        Res::Register(_) => {}
        other => anyhow::bail!("register {name}: {other:?}"),
    }
    let login = Op::Login(pb::Login {
        username: name.into(),
        password: PASSWORD.into(),
        device_name: "bench".into(),
    });
    let token = match c.request(login).await? {
        Res::Login(ok) => ok.access_token,
        other => anyhow::bail!("login {name}: {other:?}"),
    };
    conn.close(0u32.into(), b"");
    Ok(token)
}

/// One connection with authentication, closed cleanly once authenticated.
async fn connect_once(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    t: &Target,
    token: &str,
) -> anyhow::Result<()> {
    let conn = endpoint.connect_with(config.clone(), t.addr, "localhost")?.await?;
    let mut c = Control::open(&conn).await?;
    let auth = Op::Authenticate(pb::Authenticate {
        access_token: token.into(),
        ..Default::default()
    });
    match c.request(auth).await? {
        Res::Auth(_) => {}
        other => anyhow::bail!("authenticate: {other:?}"),
    }
    let _ = c.send.finish();
    conn.close(0u32.into(), b"");
    Ok(())
}

/// Set up connections for `secs`, `parallel` at a time; report completed handshakes/s.
pub async fn handshakes(t: &Target, o: &HandshakesOpts) -> anyhow::Result<Report> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let prefix = crate::run_prefix();
    let mut tokens = Vec::new();
    for i in 0..o.parallel.max(1) {
        tokens.push(device_token(t, &endpoint, &format!("{prefix}h{i}")).await?);
    }
    // One connection each first, so that in `resumed` every worker holds a ticket.
    let configs = tokens
        .iter()
        .map(|_| tls(t, o.resumed))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (config, token) in configs.iter().zip(&tokens) {
        connect_once(&endpoint, config, t, token).await?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(std::sync::Mutex::new(hdrhistogram::Histogram::<u64>::new(3)?));
    let before = ProcStats::read(t.server_pid);
    let me = Some(std::process::id());
    let client_before = ProcStats::read(me);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(o.secs);
    let workers = configs.into_iter().zip(tokens).map(|(config, token)| {
        let (endpoint, done, errors, hist, t) =
            (endpoint.clone(), done.clone(), errors.clone(), hist.clone(), t.clone());
        tokio::spawn(async move {
            while Instant::now() < until {
                let one = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), connect_once(&endpoint, &config, &t, &token)).await
                {
                    Ok(Ok(())) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        let _ = hist
                            .lock()
                            .expect("histogram lock")
                            .record(one.elapsed().as_micros().max(1) as u64);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    });
    futures::future::join_all(workers).await;
    let secs = started.elapsed().as_secs_f64();
    let after = ProcStats::read(t.server_pid);
    let client = ProcStats::read(me);
    let n = done.load(Ordering::Relaxed);
    let hist = hist.lock().expect("histogram lock").clone();
    endpoint.close(0u32.into(), b"");
    Ok(Report {
        scenario: "handshakes".into(),
        params: serde_json::to_value(o)?,
        duration_secs: secs,
        sent: n,
        delivered: n,
        delivered_per_sec: n as f64 / secs,
        latency: crate::latency(&hist),
        errors: errors.load(Ordering::Relaxed),
        lost: 0,
        duplicates: 0,
        server_cpu_secs: after.cpu_secs - before.cpu_secs,
        server_cpu_share: (after.cpu_secs - before.cpu_secs) / secs,
        server_rss_bytes: after.rss_bytes,
        client_cpu_share: (client.cpu_secs - client_before.cpu_secs) / secs,
        extra: serde_json::json!({
            "handshakes_per_sec": n as f64 / secs,
            "server_cpu_us_per_handshake": 1e6 * (after.cpu_secs - before.cpu_secs) / (n.max(1) as f64),
        }),
    })
}
