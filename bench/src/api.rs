//! The server API next to the SDK (issue 19): the same number of senders posting into a
//! channel at the same rate, once through natter-sdk over QUIC and once through
//! `POST /api/v1/conversations/{id}/messages` over HTTP/1.1 (keep-alive), each send timed
//! from the request to its durable acknowledgement.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use natter_sdk::ConversationId;
use tokio::sync::Mutex;

use crate::{bench_users, histogram, latency, run_prefix, ProcStats, Report, Target};

/// Options of the `api` scenario.
#[derive(Clone, Debug)]
pub struct ApiOpts {
    /// The web endpoint, e.g. http://127.0.0.1:18080.
    pub web: String,
    /// A write-scoped API key.
    pub key: String,
    /// Senders on each side.
    pub senders: usize,
    /// Sends per second on each side, all senders together.
    pub rate: f64,
    /// Seconds each side sends for.
    pub secs: f64,
}

/// Sends per second achieved and ack latency of one side.
fn side(h: &Histogram<u64>, errors: u64, secs: f64) -> serde_json::Value {
    let l = latency(h);
    serde_json::json!({"sent": l.samples, "per_sec": (l.samples as f64 / secs).round(), "p50_ms": l.p50_ms,
        "p99_ms": l.p99_ms, "max_ms": l.max_ms, "errors": errors})
}

/// Run `senders` loops for `secs`, each sending every `1/rate_each` s with `send`.
async fn paced<F, Fut>(senders: usize, rate_each: f64, secs: f64, send: F) -> (Histogram<u64>, u64)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let hist = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let send = Arc::new(send);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (hist, errors, send) = (hist.clone(), errors.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate_each));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                n += 1;
                let t0 = Instant::now();
                if send(s, n).await {
                    let us = t0.elapsed().as_micros().max(1) as u64;
                    let _ = hist.lock().await.record(us);
                } else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.lock().await.clone();
    (h, errors.load(std::sync::atomic::Ordering::Relaxed))
}

/// SDK sends, then API sends, at the same rate into a channel of the same size.
pub async fn api(t: &Target, o: &ApiOpts) -> anyhow::Result<Report> {
    let prefix = run_prefix();
    let rate_each = o.rate / o.senders as f64;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{}{path}", o.web);
        let key = o.key.clone();
        async move {
            let r = http
                .post(url)
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await?;
            let status = r.status();
            let bytes = r.bytes().await?;
            anyhow::ensure!(
                status.is_success(),
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            Ok::<serde_json::Value, anyhow::Error>(serde_json::from_slice(&bytes).unwrap_or_default())
        }
    };

    // The SDK side: users over QUIC in one channel.
    let users = bench_users(t, o.senders + 1, 64, 16).await?;
    let ch = users[0].client.create_channel(&format!("{prefix}-sdk")).await?;
    let conv = ConversationId(ch.conversation_id);
    for u in &users[1..] {
        u.client.join_channel(&format!("{prefix}-sdk")).await?;
    }
    let clients: Arc<Vec<natter_sdk::Client>> = Arc::new(users[1..].iter().map(|u| u.client.clone()).collect());
    let before = ProcStats::read(t.server_pid);
    let (sdk_hist, sdk_errors) = paced(o.senders, rate_each, o.secs, move |s, n| {
        let c = clients[s].clone();
        async move { c.send(conv, &format!("sdk {s} {n}")).await.is_ok() }
    })
    .await;
    let mid = ProcStats::read(t.server_pid);

    // The API side: users and a channel made through the API.
    for i in 0..=o.senders {
        post(
            "/api/v1/users".into(),
            serde_json::json!({"id": format!("{prefix}-a{i}")}),
        )
        .await
        .context("POST /api/v1/users (is the key write-scoped?)")?;
    }
    let members: Vec<String> = (1..=o.senders).map(|i| format!("{prefix}-a{i}")).collect();
    let ch = post(
        "/api/v1/conversations".into(),
        serde_json::json!({"kind": "channel", "name": format!("{prefix}-api"), "creator": format!("{prefix}-a0"), "members": members}),
    )
    .await?;
    let api_conv = ch["conversation_id"].as_u64().context("conversation id")?;
    let (web, key, prefix2) = (o.web.clone(), o.key.clone(), prefix.clone());
    let (api_hist, api_errors) = paced(o.senders, rate_each, o.secs, move |s, n| {
        let http = http.clone();
        let url = format!("{web}/api/v1/conversations/{api_conv}/messages");
        let auth = format!("Bearer {key}");
        let body =
            serde_json::json!({"sender": format!("{prefix2}-a{}", s + 1), "text": format!("api {s} {n}")}).to_string();
        async move {
            let r = http
                .post(url)
                .header("authorization", auth)
                .header("content-type", "application/json")
                .header("idempotency-key", format!("b{s}-{n}"))
                .body(body)
                .send()
                .await;
            match r {
                Ok(r) => r.status().as_u16() == 201 && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    let after = ProcStats::read(t.server_pid);
    let cpu = |a: ProcStats, b: ProcStats| ((b.cpu_secs - a.cpu_secs) / o.secs * 100.0).round();
    Ok(Report {
        scenario: "api".into(),
        params: serde_json::json!({"senders": o.senders, "rate": o.rate, "secs": o.secs}),
        duration_secs: o.secs * 2.0,
        sent: sdk_hist.len() + api_hist.len(),
        latency: latency(&api_hist),
        errors: sdk_errors + api_errors,
        server_rss_bytes: after.rss_bytes,
        extra: serde_json::json!({
            "sdk": side(&sdk_hist, sdk_errors, o.secs), "sdk_server_cpu_pct": cpu(before, mid),
            "api": side(&api_hist, api_errors, o.secs), "api_server_cpu_pct": cpu(mid, after),
        }),
        ..Default::default()
    })
}
