//! The peers natter is compared with (issue 21), driven by the same scenarios: NATS
//! (async-nats against Debian's `nats-server`) and MQTT (rumqttc against Debian's
//! `mosquitto`). The payload is natter's (`b|<send time µs>|<sender>|<n>`), latency goes
//! into the same histogram, and loss and duplicates are counted the same way, so
//! `bench/compare.sh` can print the three side by side. Both peers run as brokers are
//! usually run: in memory, at most once (NATS core; MQTT QoS 0), plain TCP — no
//! durability and no TLS, which natter always has.
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use super::{histogram, latency, now_us, FanoutOpts, ProcStats, Receipts, Report, Target};

/// Which broker, where.
#[derive(Clone, Debug, Serialize)]
pub enum Broker {
    /// A NATS server, e.g. `127.0.0.1:4222`.
    Nats(String),
    /// An MQTT broker, e.g. `127.0.0.1:1883`.
    Mqtt(String),
}

impl Broker {
    fn name(&self) -> &'static str {
        match self {
            Broker::Nats(_) => "nats",
            Broker::Mqtt(_) => "mqtt",
        }
    }

    /// A subject (NATS) or topic (MQTT) per group.
    fn topic(&self, group: usize) -> String {
        match self {
            Broker::Nats(_) => format!("bench.g{group}"),
            Broker::Mqtt(_) => format!("bench/g{group}"),
        }
    }
}

/// One client connection: publishes, and hands what arrives on its subscription to
/// `receipts` (everything but its own messages).
#[derive(Clone)]
enum Conn {
    Nats(async_nats::Client),
    Mqtt(rumqttc::AsyncClient),
}

impl Conn {
    async fn publish(&self, topic: &str, payload: Bytes) -> anyhow::Result<()> {
        match self {
            Conn::Nats(c) => Ok(c.publish(topic.to_string(), payload).await?),
            Conn::Mqtt(c) => Ok(c.publish_bytes(topic, rumqttc::QoS::AtMostOnce, false, payload).await?),
        }
    }
}

/// Connect client `id` and subscribe it to `topic` (if any); its deliveries count in
/// `receipts`. Returns once the subscription is in place.
async fn connect(b: &Broker, id: u64, topic: Option<String>, receipts: Arc<Receipts>) -> anyhow::Result<Conn> {
    match b {
        Broker::Nats(url) => {
            let c = async_nats::ConnectOptions::new()
                .no_echo()
                .connect(url.as_str())
                .await?;
            if let Some(t) = topic {
                let mut sub = c.subscribe(t).await?;
                c.flush().await?;
                tokio::spawn(async move {
                    let mut seen = HashSet::new();
                    while let Some(m) = sub.next().await {
                        count(&m.payload, id, &mut seen, &receipts);
                    }
                });
            }
            Ok(Conn::Nats(c))
        }
        Broker::Mqtt(addr) => {
            let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "1883"));
            let mut opts = rumqttc::MqttOptions::new(format!("bench-{id}-{}", std::process::id()), host, port.parse()?);
            opts.set_keep_alive(Duration::from_secs(60));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            let (c, mut events) = rumqttc::AsyncClient::new(opts, 1024);
            // Small messages at once, as natter's QUIC streams and NATS send them.
            let mut net = events.network_options();
            net.set_tcp_nodelay(true);
            events.set_network_options(net);
            let subscribed = Arc::new(tokio::sync::Notify::new());
            if let Some(t) = &topic {
                c.subscribe(t, rumqttc::QoS::AtMostOnce).await?;
            }
            let (ready, wants) = (subscribed.clone(), topic.is_some());
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                let mut connected = false;
                loop {
                    match events.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) if !wants => {
                            connected = true;
                            ready.notify_one();
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            connected = true;
                            ready.notify_one();
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            count(&p.payload, id, &mut seen, &receipts);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if !connected {
                                eprintln!("mqtt client {id}: {e}");
                            }
                            return;
                        }
                    }
                }
            });
            tokio::time::timeout(Duration::from_secs(30), subscribed.notified())
                .await
                .map_err(|_| anyhow::anyhow!("mqtt client {id}: not connected within 30 s"))?;
            Ok(Conn::Mqtt(c))
        }
    }
}

/// A message from someone else, counted once with its latency (a second copy is a
/// duplicate); `b|<µs>|<sender>|<n>`.
fn count(payload: &[u8], me: u64, seen: &mut HashSet<(u64, u64)>, receipts: &Receipts) {
    let Ok(text) = std::str::from_utf8(payload) else { return };
    let mut parts = text.strip_prefix("b|").unwrap_or_default().split('|');
    let (Some(sent), Some(sender), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(sent), Ok(sender), Ok(n)) = (sent.parse::<u64>(), sender.parse::<u64>(), n.parse::<u64>()) else {
        return;
    };
    if sender == me {
        return;
    }
    if !seen.insert((sender, n)) {
        receipts.duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let _ = receipts
        .latency
        .lock()
        .expect("histogram lock")
        .get_or_insert_with(histogram)
        .record(now_us().saturating_sub(sent).max(1));
    receipts.delivered.fetch_add(1, Ordering::Relaxed);
}

/// natter's fan-out scenario on a broker: `users` connections in groups of `group_size`,
/// each subscribed to its group's subject; `senders` per group publish at `rate` each.
pub async fn peer_fanout(t: &Target, b: &Broker, o: &FanoutOpts) -> anyhow::Result<Report> {
    let group_size = o.group_size.max(2);
    let groups = (o.users / group_size).max(1);
    eprintln!(
        "{} fanout: {} connections in {groups} groups of {group_size}",
        b.name(),
        groups * group_size
    );
    let receipts = Arc::new(Receipts::default());
    let mut conns = Vec::new();
    for g in 0..groups {
        let members = futures::stream::iter(0..group_size)
            .map(|m| connect(b, (g * group_size + m) as u64, Some(b.topic(g)), receipts.clone()))
            .buffered(64)
            .collect::<Vec<_>>()
            .await;
        for c in members {
            conns.push(c?);
        }
    }
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let before = ProcStats::read(t.server_pid);
    let me_before = ProcStats::read(Some(std::process::id()));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(o.secs);
    let mut tasks = Vec::new();
    for g in 0..groups {
        for s in 0..o.senders_per_group.min(group_size) {
            let id = (g * group_size + s) as u64;
            let (conn, topic) = (conns[id as usize].clone(), b.topic(g));
            let (sent, errors) = (sent.clone(), errors.clone());
            let interval = Duration::from_secs_f64(1.0 / o.rate_per_sender.max(0.001));
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut k = 0u64;
                while Instant::now() < until {
                    tick.tick().await;
                    k += 1;
                    let payload = Bytes::from(format!("b|{}|{id}|{k}", now_us()));
                    match conn.publish(&topic, payload).await {
                        Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let send_secs = started.elapsed().as_secs_f64();
    let expected = sent.load(Ordering::Relaxed) * (group_size as u64 - 1);
    let drain_until = Instant::now() + Duration::from_secs(30);
    while receipts.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = ProcStats::read(t.server_pid);
    let delivered = receipts.delivered.load(Ordering::Relaxed);
    let hist = receipts.latency.lock().expect("histogram lock").clone();
    Ok(Report {
        scenario: format!("{}-fanout", b.name()),
        params: serde_json::json!({"broker": b, "opts": o}),
        duration_secs: send_secs,
        sent: sent.load(Ordering::Relaxed),
        delivered,
        delivered_per_sec: delivered as f64 / elapsed,
        latency: hist.as_ref().map(latency).unwrap_or_default(),
        errors: errors.load(Ordering::Relaxed),
        lost: expected.saturating_sub(delivered),
        duplicates: receipts.duplicates.load(Ordering::Relaxed),
        server_cpu_secs: after.cpu_secs - before.cpu_secs,
        server_cpu_share: (after.cpu_secs - before.cpu_secs) / elapsed,
        server_rss_bytes: after.rss_bytes,
        client_cpu_share: (ProcStats::read(Some(std::process::id())).cpu_secs - me_before.cpu_secs) / elapsed,
        extra: serde_json::Value::Null,
    })
}

/// Idle connections on a broker: open `connections`, each subscribed to a subject of its
/// own; memory per connection, the broker's CPU over `idle_secs` of quiet, then `probes`
/// deliveries timed one at a time between two of them while all are held.
pub async fn peer_connections(
    t: &Target,
    b: &Broker,
    connections: usize,
    probes: usize,
    idle_secs: f64,
) -> anyhow::Result<Report> {
    let before = ProcStats::read(t.server_pid);
    let receipts = Arc::new(Receipts::default());
    let started = Instant::now();
    let n = connections.max(2);
    let opened = futures::stream::iter(0..n)
        .map(|i| connect(b, i as u64, Some(b.topic(i)), receipts.clone()))
        .buffered(256)
        .collect::<Vec<_>>()
        .await;
    let conns = opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = ProcStats::read(t.server_pid);
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let quiet = ProcStats::read(t.server_pid);
    let idle_share = (quiet.cpu_secs - held.cpu_secs) / idle_secs.max(1e-9);
    // Probes: connection 0 publishes to connection 1's subject.
    let topic = b.topic(1);
    let probe_start = Instant::now();
    let mut sent = 0;
    for i in 0..probes {
        conns[0]
            .publish(&topic, Bytes::from(format!("b|{}|0|{i}", now_us())))
            .await?;
        sent += 1;
        let until = Instant::now() + Duration::from_secs(10);
        while receipts.delivered.load(Ordering::Relaxed) < sent && Instant::now() < until {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let probe_secs = probe_start.elapsed().as_secs_f64();
    let after = ProcStats::read(t.server_pid);
    let delivered = receipts.delivered.load(Ordering::Relaxed);
    let hist = receipts.latency.lock().expect("histogram lock").clone();
    let per_conn = held.rss_bytes.saturating_sub(before.rss_bytes) / n as u64;
    Ok(Report {
        scenario: format!("{}-connections", b.name()),
        params: serde_json::json!({"broker": b, "connections": n, "probes": probes, "idle_secs": idle_secs}),
        duration_secs: probe_secs,
        sent,
        delivered,
        delivered_per_sec: delivered as f64 / probe_secs.max(1e-9),
        latency: hist.as_ref().map(latency).unwrap_or_default(),
        errors: 0,
        lost: sent.saturating_sub(delivered),
        duplicates: receipts.duplicates.load(Ordering::Relaxed),
        server_cpu_secs: after.cpu_secs - before.cpu_secs,
        server_cpu_share: (after.cpu_secs - before.cpu_secs) / started.elapsed().as_secs_f64(),
        server_rss_bytes: after.rss_bytes,
        client_cpu_share: 0.0,
        extra: serde_json::json!({
            "connections_held": n,
            "connections_per_sec": n as f64 / open_secs,
            "server_bytes_per_connection": per_conn,
            "server_idle_cpu_share": idle_share,
            "server_rss_held_bytes": held.rss_bytes,
        }),
    })
}
