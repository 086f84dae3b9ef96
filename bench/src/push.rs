//! The push scenario (PROTOCOL.md §13): many users whose only device is offline, each with
//! a Web Push registration pointing at a push service sink in this process, get direct
//! messages at a fixed total rate from a few online senders, while online pairs chat beside
//! them. The sink decrypts every notification with the device's keys (as the browser
//! would) and reads the send time from the preview (`b|<µs>|…`): the push latency is send →
//! the push service holding the notification, which includes the server's deliberate burst
//! wait (250 ms). The chat latency shows what the notifications cost everyone else.
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use hdrhistogram::Histogram;
use natter_protocol::pb;
use natter_sdk::{ConversationId, PushKeys};
use serde::Serialize;

use crate::{
    bench_users, histogram, latency, now_us, run_senders, spawn_receiver, FanoutOpts, Latency, Receipts, Report, Target,
};

/// Push parameters.
#[derive(Clone, Debug, Serialize)]
pub struct PushOpts {
    /// Users whose one device is offline and registered for Web Push.
    pub offline: usize,
    /// Online users sending to them (each to its share of direct conversations).
    pub senders: usize,
    /// Messages per second to the offline users, all senders together.
    pub rate: f64,
    /// Online pairs chatting meanwhile, and each one's rate.
    pub chat_pairs: usize,
    pub chat_rate: f64,
    pub secs: f64,
}

/// What the sink saw.
#[derive(Default)]
struct Sink {
    keys: Vec<PushKeys>,
    taken: AtomicU64,
    duplicates: AtomicU64,
    undecryptable: AtomicU64,
    seen: Mutex<HashSet<(u64, u64)>>,
    latency: Mutex<Option<Histogram<u64>>>,
}

/// The push service: `POST /p/<device>` takes one notification.
async fn take(State(sink): State<Arc<Sink>>, Path(device): Path<usize>, body: axum::body::Bytes) -> StatusCode {
    let at = now_us();
    let Some(n) = sink.keys.get(device).and_then(|k| k.decrypt(&body).ok()) else {
        sink.undecryptable.fetch_add(1, Ordering::Relaxed);
        return StatusCode::CREATED;
    };
    if !sink.seen.lock().expect("sink lock").insert((n.conversation_id, n.seq)) {
        sink.duplicates.fetch_add(1, Ordering::Relaxed);
        return StatusCode::CREATED;
    }
    if let Some(sent) = n
        .preview
        .strip_prefix("b|")
        .and_then(|r| r.split('|').next())
        .and_then(|v| v.parse::<u64>().ok())
    {
        let _ = sink
            .latency
            .lock()
            .expect("sink lock")
            .get_or_insert_with(histogram)
            .record(at.saturating_sub(sent).max(1));
    }
    sink.taken.fetch_add(1, Ordering::Relaxed);
    StatusCode::CREATED
}

/// The figures of the push side.
#[derive(Debug, Serialize)]
struct PushFigures {
    /// Messages acknowledged to offline users (one notification each is expected).
    sent: u64,
    /// Distinct notifications the push service took.
    notified: u64,
    lost: u64,
    duplicates: u64,
    undecryptable: u64,
    /// Send → push service.
    latency: Latency,
    notified_per_sec: f64,
}

/// Offline devices notified at a rate, with chat beside them.
pub async fn push(t: &Target, o: &PushOpts) -> anyhow::Result<Report> {
    // The push service sink.
    let sink = Arc::new(Sink {
        keys: (0..o.offline).map(|_| PushKeys::generate()).collect(),
        ..Sink::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new()
        .route("/p/{device}", axum::routing::post(take))
        .with_state(sink.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Offline users: registered for Web Push at the sink, then gone.
    eprintln!("  {} offline users with push registrations", o.offline);
    let offline = bench_users(t, o.offline, 1000, 64).await?;
    let names: Vec<String> = offline.iter().map(|u| u.name.clone()).collect();
    for (n, chunk) in offline.chunks(256).enumerate() {
        futures::future::try_join_all(chunk.iter().enumerate().map(|(j, u)| {
            let i = n * 256 + j;
            let target = sink.keys[i].target(pb::PushProvider::WebPush, &format!("http://127.0.0.1:{port}/p/{i}"));
            u.client.register_push(target)
        }))
        .await?;
    }
    futures::future::join_all(offline.iter().map(|u| u.client.shutdown())).await;
    drop(offline);

    // Senders, each with its share of direct conversations.
    let senders = bench_users(t, o.senders.max(1), 1000, 64).await?;
    let mut targets: Vec<(usize, ConversationId)> = Vec::with_capacity(names.len());
    for chunk in names.chunks(256) {
        let base = targets.len();
        let made = futures::future::try_join_all(chunk.iter().enumerate().map(|(j, name)| {
            let s = (base + j) % senders.len();
            let c = senders[s].client.clone();
            async move { c.direct(name).await.map(|d| (s, ConversationId(d.conversation_id))) }
        }))
        .await?;
        targets.extend(made);
    }

    // Online pairs chatting meanwhile.
    let chatters = bench_users(t, o.chat_pairs.max(1) * 2, 1000, 64).await?;
    let mut convs = Vec::new();
    for pair in chatters.chunks(2) {
        convs.push(ConversationId(
            pair[0].client.direct(&pair[1].name).await?.conversation_id,
        ));
    }
    let receipts = Arc::new(Receipts::default());
    let mut clients = Vec::new();
    for u in chatters {
        spawn_receiver(u.events, u.user_id, receipts.clone());
        clients.push(u.client);
    }
    // The offline devices' connections are closed; give the server a moment to let go of
    // their sessions (a device still attached would get no notification: counted as lost).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The measured phase: notifications at `rate` beside the chat.
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let pushing = {
        let (sent, errors) = (sent.clone(), errors.clone());
        let clients: Vec<_> = senders.iter().map(|s| s.client.clone()).collect();
        let (rate, secs) = (o.rate, o.secs);
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs_f64(secs);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut k = 0usize;
            let mut inflight = Vec::new();
            while Instant::now() < until {
                tick.tick().await;
                let (s, conv) = targets[k % targets.len()];
                k += 1;
                let c = clients[s].clone();
                let (sent, errors) = (sent.clone(), errors.clone());
                inflight.push(tokio::spawn(async move {
                    match c.send(conv, &format!("b|{}|{k}", now_us())).await {
                        Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }));
            }
            for f in inflight {
                let _ = f.await;
            }
        })
    };
    let started = Instant::now();
    let f = FanoutOpts {
        users: o.chat_pairs * 2,
        group_size: 2,
        senders_per_group: 2,
        rate_per_sender: o.chat_rate,
        secs: o.secs,
    };
    let mut r = run_senders(t, &f, &clients, &convs, receipts, "push").await?;
    pushing.await?;
    // Drain: every message to an offline user reaches the push service, or the wait ends.
    let expected = sent.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(30);
    while sink.taken.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let notified = sink.taken.load(Ordering::Relaxed);
    let push_latency = sink
        .latency
        .lock()
        .expect("sink lock")
        .as_ref()
        .map(latency)
        .unwrap_or_default();
    let figures = PushFigures {
        sent: expected,
        notified,
        lost: expected.saturating_sub(notified),
        duplicates: sink.duplicates.load(Ordering::Relaxed),
        undecryptable: sink.undecryptable.load(Ordering::Relaxed),
        latency: push_latency,
        notified_per_sec: notified as f64 / started.elapsed().as_secs_f64(),
    };
    r.params = serde_json::to_value(o)?;
    r.errors += errors.load(Ordering::Relaxed);
    r.lost += figures.lost + figures.undecryptable;
    r.duplicates += figures.duplicates;
    r.extra = serde_json::json!({
        "push": figures,
        "note": "latency is the online chat's (send → delivery); push.latency is send → push service",
    });
    Ok(r)
}
