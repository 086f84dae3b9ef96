//! natter-bench: load over the real protocol, with the real SDK (`natter-sdk` clients, the
//! same `ClientSession` as every app), against a running server. Scenarios:
//! [`fanout`] (groups, senders at a rate, end-to-end latency per delivery), [`dm`] (round
//! trips), [`connections`] (hold many authenticated connections, measure memory per
//! connection and delivery while they are held) and [`history`] (paging over a large
//! conversation) and [`media`] (upload and download throughput next to curl, chat
//! latency while large uploads run) and [`push`] (offline devices notified through a Web
//! Push sink at a rate, chat latency beside it). Every scenario counts lost and duplicated deliveries, which must be zero.
#![forbid(unsafe_code)]

mod api;
mod handshakes;
pub use api::{api, ApiOpts};
pub use handshakes::{handshakes, HandshakesOpts};
mod media;
mod media_load;
mod peers;
mod push;
mod search_index;
pub use media::{media, MediaOpts};
pub use media_load::media_load;
pub use peers::{peer_connections, peer_fanout, Broker};
pub use push::{push, PushOpts};
pub use search_index::{search_index, SearchIndexOpts};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use natter_protocol::pb;
use natter_sdk::{Client, ClientConfig, ClientEvent, ConversationId, Events, HistoryAnchor, Seq};
use serde::Serialize;

pub const PASSWORD: &str = "natter-bench-password";

/// Where the server is.
#[derive(Clone, Debug)]
pub struct Target {
    /// UDP address.
    pub addr: SocketAddr,
    /// Certificate fingerprint to pin.
    pub fingerprint: String,
    /// The server's pid, to read its CPU time and memory from /proc.
    pub server_pid: Option<u32>,
}

/// The server process's CPU time and resident memory.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcStats {
    /// User + system CPU seconds.
    pub cpu_secs: f64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

impl ProcStats {
    /// Read `/proc/<pid>`; zeros where unavailable.
    pub fn read(pid: Option<u32>) -> ProcStats {
        let Some(pid) = pid else { return ProcStats::default() };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command (which may contain spaces): utime is 14th, stime 15th.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let cpu_secs = (ticks(11) + ticks(12)) / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        ProcStats {
            cpu_secs,
            rss_bytes: rss_kib * 1024,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

pub(crate) fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        samples: h.len(),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// What a scenario measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub params: serde_json::Value,
    /// Seconds of the measured phase.
    pub duration_secs: f64,
    /// Messages acknowledged by the server.
    pub sent: u64,
    /// Deliveries received by clients (other members' messages).
    pub delivered: u64,
    /// Deliveries per second over the measured phase.
    pub delivered_per_sec: f64,
    pub latency: Latency,
    /// Requests that failed.
    pub errors: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries that arrived more than once.
    pub duplicates: u64,
    /// Server CPU seconds used in the measured phase, and as a share of one core.
    pub server_cpu_secs: f64,
    pub server_cpu_share: f64,
    /// Server resident memory at the end.
    pub server_rss_bytes: u64,
    /// The load generator's own CPU over the run, as a share of one core (near 1.0 means
    /// the generator, not the server, is the limit).
    pub client_cpu_share: f64,
    /// Scenario-specific figures.
    pub extra: serde_json::Value,
}

impl Report {
    /// One line for humans.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} sent, {} delivered ({:.0}/s), latency p50 {:.1} ms p99 {:.1} ms p999 {:.1} ms, {} errors, {} lost, {} duplicates, server {:.0}% of a core, RSS {:.1} MiB, generator {:.0}% of a core {}",
            self.scenario,
            self.sent,
            self.delivered,
            self.delivered_per_sec,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.errors,
            self.lost,
            self.duplicates,
            self.server_cpu_share * 100.0,
            self.server_rss_bytes as f64 / (1 << 20) as f64,
            self.client_cpu_share * 100.0,
            if self.extra.is_null() { String::new() } else { self.extra.to_string() },
        )
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Shared UDP sockets for many clients (one per `per` clients).
#[derive(Debug)]
pub struct Endpoints {
    list: Vec<quinn::Endpoint>,
    per: usize,
}

impl Endpoints {
    pub fn new(clients: usize, per: usize) -> anyhow::Result<Endpoints> {
        let n = clients.div_ceil(per.max(1)).max(1);
        let list = (0..n)
            .map(|_| quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")))
            .collect::<Result<_, _>>()?;
        Ok(Endpoints { list, per: per.max(1) })
    }

    fn for_client(&self, i: usize) -> quinn::Endpoint {
        self.list[(i / self.per) % self.list.len()].clone()
    }
}

/// One benchmark user with a connected client.
#[derive(Debug)]
pub struct BenchUser {
    pub name: String,
    pub client: Client,
    pub events: Events,
    pub user_id: u64,
}

/// A run-unique user name prefix (runs share a server).
pub fn run_prefix() -> String {
    format!("b{:08x}", rand::random::<u32>())
}

/// Whose users a scenario connects as.
#[derive(Clone, Debug)]
pub enum Users {
    /// New users, registered by the scenario under a run-unique prefix.
    New,
    /// New users, registered under this prefix.
    Register(String),
    /// Users `<prefix>u0`, `<prefix>u1`, … that an earlier `register` run created: only
    /// logged in, so the server's figures leave out what registering them cost.
    Existing(String),
}

/// Register (unless `existing`) and log in `name` on a client sharing `endpoint`.
pub async fn bench_user(
    t: &Target,
    endpoint: quinn::Endpoint,
    name: &str,
    existing: bool,
    encryption: Option<natter_sdk::Encryption>,
) -> anyhow::Result<BenchUser> {
    let mut config = ClientConfig::pinned(t.addr, &t.fingerprint);
    config.endpoint = Some(endpoint);
    config.encryption = encryption;
    config.reconnect_min_ms = 50;
    config.reconnect_max_ms = 1_000;
    config.session.request_timeout_ms = 60_000;
    // NATTER_BENCH_ACK_DELAY_MS: the clients' delivery-ack delay (SessionConfig::ack_delay_ms),
    // to measure what cumulative acks save (bench/RESULTS.md).
    if let Some(ms) = std::env::var("NATTER_BENCH_ACK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.session.ack_delay_ms = ms;
    }
    let (client, mut events) = Client::connect(config)?;
    // Under heavy setup load a connection can drop before a response: retry (a register
    // whose response was lost reads USERNAME_TAKEN the second time, which is success).
    let mut attempt = 0;
    if !existing {
        loop {
            attempt += 1;
            match client.register(name, PASSWORD).await {
                Ok(_) => break,
                Err(e) if e.code() == Some(pb::ErrorCode::UsernameTaken) && attempt > 1 => break,
                Err(e) if attempt < 4 && e.code().is_none() => continue,
                Err(e) => return Err(e).with_context(|| format!("register {name}")),
            }
        }
    }
    let mut attempt = 0;
    let login = loop {
        attempt += 1;
        match client.login(name, PASSWORD, "bench").await {
            Ok(l) => break l,
            Err(e) if attempt < 4 && e.code().is_none() => continue,
            Err(e) => return Err(e).with_context(|| format!("login {name}")),
        }
    };
    // Wait for the session to be ready.
    loop {
        match tokio::time::timeout(Duration::from_secs(60), events.next()).await {
            Ok(Some(ClientEvent::Connected { .. })) => break,
            Ok(Some(_)) => continue,
            _ => anyhow::bail!("{name} never connected"),
        }
    }
    Ok(BenchUser {
        name: name.to_string(),
        client,
        events,
        user_id: login.user_id.0,
    })
}

/// Create `n` users, `parallel` at a time, printing progress.
pub async fn bench_users(t: &Target, n: usize, per_socket: usize, parallel: usize) -> anyhow::Result<Vec<BenchUser>> {
    bench_users_with(t, n, per_socket, parallel, &Users::New, None).await
}

/// [`bench_users`], each an encrypting device with its state file in `keys` when given.
pub async fn bench_users_with(
    t: &Target,
    n: usize,
    per_socket: usize,
    parallel: usize,
    who: &Users,
    keys: Option<&std::path::Path>,
) -> anyhow::Result<Vec<BenchUser>> {
    use futures::StreamExt;
    let (prefix, existing) = match who {
        Users::New => (run_prefix(), false),
        Users::Register(prefix) => (prefix.clone(), false),
        Users::Existing(prefix) => (prefix.clone(), true),
    };
    let endpoints = Endpoints::new(n, per_socket)?;
    let started = Instant::now();
    let done = AtomicU64::new(0);
    let mut users: Vec<(usize, BenchUser)> = futures::stream::iter(0..n)
        .map(|i| {
            let t = t.clone();
            let ep = endpoints.for_client(i);
            let name = format!("{prefix}u{i}");
            let encryption = keys.map(|dir| natter_sdk::Encryption {
                state_path: dir.join(format!("{name}.state")),
                store_key: natter_sdk::StoreKey([7; 32]),
            });
            let done = &done;
            async move {
                let u = bench_user(&t, ep, &name, existing, encryption).await;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % 1000 == 0 {
                    eprintln!(
                        "  {d}/{n} users connected ({:.0}/s)",
                        d as f64 / started.elapsed().as_secs_f64()
                    );
                }
                u.map(|u| (i, u))
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    users.sort_by_key(|(i, _)| *i);
    Ok(users.into_iter().map(|(_, u)| u).collect())
}

/// Counts kept by a receiver task.
#[derive(Default)]
struct Receipts {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

/// Consume a client's events: every message from someone else whose text is
/// `b|<send time µs>|…` counts once, with its latency; a second copy counts as a duplicate.
fn spawn_receiver(mut events: Events, me: u64, receipts: Arc<Receipts>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        while let Some(ev) = events.next().await {
            let ClientEvent::Event(e) = ev else { continue };
            let Some(pb::conversation_event::Body::Message(m)) = &e.body else {
                continue;
            };
            if e.sender_user_id == me {
                continue;
            }
            let text = m.body.as_ref().map_or("", |b| b.text.as_str());
            let Some(sent) = text
                .strip_prefix("b|")
                .and_then(|r| r.split('|').next())
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            if !seen.insert((e.conversation_id, e.seq)) {
                receipts.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let latency_us = now_us().saturating_sub(sent).max(1);
            // Recorded before the count moves, so a reader that sees the count sees the sample.
            let _ = receipts
                .latency
                .lock()
                .expect("histogram lock")
                .get_or_insert_with(histogram)
                .record(latency_us);
            receipts.delivered.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Fan-out parameters.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutOpts {
    pub users: usize,
    pub group_size: usize,
    pub senders_per_group: usize,
    pub rate_per_sender: f64,
    pub secs: f64,
}

/// Groups of `group_size`; `senders_per_group` members each send `rate_per_sender`
/// messages/s for `secs`; every other member's client records end-to-end latency.
pub async fn fanout(t: &Target, o: &FanoutOpts) -> anyhow::Result<Report> {
    let groups = (o.users / o.group_size.max(2)).max(1);
    let n = groups * o.group_size.max(2);
    eprintln!("fanout: {n} users in {groups} groups of {}", o.group_size);
    let users = bench_users(t, n, 1000, 64).await?;
    let receipts = Arc::new(Receipts::default());
    let mut convs = Vec::new();
    let mut clients = Vec::new();
    for g in 0..groups {
        let members = &users[g * o.group_size..(g + 1) * o.group_size];
        let names: Vec<&str> = members[1..].iter().map(|u| u.name.as_str()).collect();
        let conv = members[0].client.create_group(&format!("bench {g}"), &names).await?;
        convs.push(ConversationId(conv.conversation_id));
    }
    for u in users {
        spawn_receiver(u.events, u.user_id, receipts.clone());
        clients.push(u.client);
    }
    run_senders(t, o, &clients, &convs, receipts, "fanout").await
}

async fn run_senders(
    t: &Target,
    o: &FanoutOpts,
    clients: &[Client],
    convs: &[ConversationId],
    receipts: Arc<Receipts>,
    name: &str,
) -> anyhow::Result<Report> {
    let group_size = o.group_size.max(2);
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let before = ProcStats::read(t.server_pid);
    let me_before = ProcStats::read(Some(std::process::id()));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(o.secs);
    let mut tasks = Vec::new();
    for (g, conv) in convs.iter().enumerate() {
        for s in 0..o.senders_per_group.min(group_size) {
            let client = clients[g * group_size + s].clone();
            let (conv, sent, errors) = (*conv, sent.clone(), errors.clone());
            let interval = Duration::from_secs_f64(1.0 / o.rate_per_sender.max(0.001));
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut k = 0u64;
                let mut inflight = Vec::new();
                while Instant::now() < until {
                    tick.tick().await;
                    k += 1;
                    let c = client.clone();
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
            }));
        }
    }
    // Progress once a second while sending.
    let progress = {
        let (sent, receipts) = (sent.clone(), receipts.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "  {:.0}s: {} sent, {} delivered",
                    started.elapsed().as_secs_f64(),
                    sent.load(Ordering::Relaxed),
                    receipts.delivered.load(Ordering::Relaxed)
                );
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    let send_secs = started.elapsed().as_secs_f64();
    // Drain: every acknowledged message reaches every other member, or the wait ends.
    let expected = sent.load(Ordering::Relaxed) * (group_size as u64 - 1);
    let drain_until = Instant::now() + Duration::from_secs(30);
    while receipts.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let after = ProcStats::read(t.server_pid);
    let delivered = receipts.delivered.load(Ordering::Relaxed);
    let hist = receipts.latency.lock().expect("histogram lock").clone();
    let lat = hist.as_ref().map(latency).unwrap_or_default();
    Ok(Report {
        scenario: name.into(),
        params: serde_json::to_value(o)?,
        duration_secs: send_secs,
        sent: sent.load(Ordering::Relaxed),
        delivered,
        delivered_per_sec: delivered as f64 / elapsed,
        latency: lat,
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

/// DM parameters.
#[derive(Clone, Debug, Serialize)]
pub struct DmOpts {
    pub pairs: usize,
    pub rate_per_sender: f64,
    pub secs: f64,
    /// End-to-end encrypted conversations (PROTOCOL.md §12): every client seals and opens.
    pub encrypted: bool,
    /// Measure search freshness during the run: this many marker messages, each searched
    /// for until found (plain conversations only).
    pub search_probes: usize,
}

/// 1:1 pairs: both sides send at a rate; each side records the other's delivery latency.
pub async fn dm(t: &Target, o: &DmOpts) -> anyhow::Result<Report> {
    let keys = tempfile::tempdir()?;
    let users = bench_users_with(
        t,
        o.pairs * 2,
        1000,
        64,
        &Users::New,
        o.encrypted.then_some(keys.path()),
    )
    .await?;
    let receipts = Arc::new(Receipts::default());
    let mut convs = Vec::new();
    let mut clients = Vec::new();
    for pair in users.chunks(2) {
        let conv = if o.encrypted {
            let conv = pair[0].client.encrypted_direct(&pair[1].name).await?;
            // One message each way first, so the measured phase runs over established
            // Olm sessions (the first message of a pair claims keys).
            let conv_id = ConversationId(conv.conversation_id);
            pair[0].client.send(conv_id, "warm-up").await?;
            pair[1].client.send(conv_id, "warm-up").await?;
            conv
        } else {
            pair[0].client.direct(&pair[1].name).await?
        };
        convs.push(ConversationId(conv.conversation_id));
    }
    for u in users {
        spawn_receiver(u.events, u.user_id, receipts.clone());
        clients.push(u.client);
    }
    let f = FanoutOpts {
        users: o.pairs * 2,
        group_size: 2,
        senders_per_group: 2,
        rate_per_sender: o.rate_per_sender,
        secs: o.secs,
    };
    let name = if o.encrypted { "dm-encrypted" } else { "dm" };
    let probes = (o.search_probes > 0 && !o.encrypted).then(|| {
        let every = Duration::from_secs_f64(o.secs / o.search_probes as f64);
        tokio::spawn(search_freshness(clients[0].clone(), convs[0], o.search_probes, every))
    });
    let mut r = run_senders(t, &f, &clients, &convs, receipts, name).await?;
    r.params = serde_json::to_value(o)?;
    // The clients' CPU per delivered message (sealing on one side, opening on the other).
    let cpu_secs = r.client_cpu_share * r.duration_secs.max(f64::MIN_POSITIVE);
    r.extra = serde_json::json!({
        "client_cpu_us_per_message": 1e6 * cpu_secs / r.delivered.max(1) as f64,
    });
    if let Some(p) = probes {
        r.extra["search_freshness"] = serde_json::to_value(p.await??)?;
    }
    drop(keys);
    Ok(r)
}

/// From a send's acknowledgement to its first search hit, `n` times, one every `every`
/// (searched for every 5 ms; a marker word that occurs nowhere else).
async fn search_freshness(client: Client, conv: ConversationId, n: usize, every: Duration) -> anyhow::Result<Latency> {
    let mut h = histogram();
    for i in 0..n {
        let marker = format!("fresh{i}x{}", now_us());
        client.send(conv, &format!("probe {marker}")).await?;
        let acked = Instant::now();
        let until = acked + Duration::from_secs(30);
        loop {
            let q = pb::Search {
                query: marker.clone(),
                conversation_ids: vec![conv.0],
                limit: 1,
                ..Default::default()
            };
            match client.search(q).await {
                Ok(r) if !r.hits.is_empty() => {
                    h.record(acked.elapsed().as_micros().max(1) as u64)?;
                    break;
                }
                Ok(_) => {}
                // A server with the default search rate: wait as it says.
                Err(e) if e.server_error().is_some_and(|e| e.code == pb::ErrorCode::RateLimited) => {
                    let wait = e.server_error().map_or(100, |e| e.retry_after_ms);
                    tokio::time::sleep(Duration::from_millis(wait.into())).await;
                }
                Err(e) => return Err(e.into()),
            }
            anyhow::ensure!(Instant::now() < until, "probe {i} not found within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(every.saturating_sub(acked.elapsed())).await;
    }
    Ok(latency(&h))
}

/// Idle-connection parameters.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionsOpts {
    pub connections: usize,
    /// Clients per UDP socket.
    pub per_socket: usize,
    /// Logins in flight.
    pub parallel: usize,
    /// Messages timed while all are held.
    pub probes: usize,
    /// Seconds of quiet, once all are held, over which the server's idle CPU is measured.
    pub idle_secs: f64,
    /// Log in as the users `<prefix>u<i>` an earlier `register` run made, rather than
    /// registering new ones: the memory per connection then leaves the users' records out.
    pub existing: Option<String>,
}

/// Register `n` users `<prefix>u0`, `<prefix>u1`, … (each logged in once, then
/// disconnected) for a later run on the same store: `connections --existing <prefix>`.
pub async fn register(t: &Target, n: usize, parallel: usize, prefix: &str) -> anyhow::Result<Report> {
    let before = ProcStats::read(t.server_pid);
    let started = Instant::now();
    let users = bench_users_with(t, n, 1000, parallel, &Users::Register(prefix.to_string()), None).await?;
    let secs = started.elapsed().as_secs_f64();
    drop(users);
    let after = ProcStats::read(t.server_pid);
    Ok(Report {
        scenario: "register".into(),
        params: serde_json::json!({ "users": n, "parallel": parallel, "prefix": prefix }),
        duration_secs: secs,
        server_cpu_secs: after.cpu_secs - before.cpu_secs,
        server_cpu_share: (after.cpu_secs - before.cpu_secs) / secs.max(1e-9),
        server_rss_bytes: after.rss_bytes,
        extra: serde_json::json!({ "registrations_and_logins_per_sec": n as f64 / secs.max(1e-9) }),
        ..Report::default()
    })
}

/// Open and hold `connections` authenticated connections; report handshakes/s and server
/// memory per connection; then time deliveries between two of them while all are held.
pub async fn connections(t: &Target, o: &ConnectionsOpts) -> anyhow::Result<Report> {
    let before = ProcStats::read(t.server_pid);
    let started = Instant::now();
    let who = match &o.existing {
        Some(prefix) => Users::Existing(prefix.clone()),
        None => Users::New,
    };
    let users = bench_users_with(t, o.connections.max(2), o.per_socket, o.parallel, &who, None).await?;
    let open_secs = started.elapsed().as_secs_f64();
    // Let the server settle (presence publishing, allocator) before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = ProcStats::read(t.server_pid);
    // Idle: nothing but what the held connections cost by themselves (keep-alives,
    // heartbeats).
    tokio::time::sleep(Duration::from_secs_f64(o.idle_secs)).await;
    let quiet = ProcStats::read(t.server_pid);
    let idle_share = (quiet.cpu_secs - held.cpu_secs) / o.idle_secs.max(1e-9);
    let mut iter = users.into_iter();
    let a = iter.next().expect("two users");
    let b = iter.next().expect("two users");
    let rest: Vec<BenchUser> = iter.collect();
    let conv = ConversationId(a.client.direct(&b.name).await?.conversation_id);
    let receipts = Arc::new(Receipts::default());
    let rx = spawn_receiver(b.events, b.user_id, receipts.clone());
    let probe_start = Instant::now();
    let mut sent = 0;
    for i in 0..o.probes {
        a.client.send(conv, &format!("b|{}|{i}", now_us())).await?;
        sent += 1;
        // One at a time: each probe's latency is measured on an otherwise idle server.
        let until = Instant::now() + Duration::from_secs(10);
        while receipts.delivered.load(Ordering::Relaxed) < sent && Instant::now() < until {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let probe_secs = probe_start.elapsed().as_secs_f64();
    // Handshakes alone: every held client drops its connection and reconnects (QUIC + TLS
    // handshake, Hello, Authenticate with resume), `parallel` at a time.
    let mut rest = rest;
    let reconnect_start = Instant::now();
    {
        use futures::StreamExt;
        futures::stream::iter(rest.iter_mut())
            .for_each_concurrent(o.parallel.max(1), |u| async move {
                u.client.reconnect();
                let until = Instant::now() + Duration::from_secs(60);
                while Instant::now() < until {
                    match tokio::time::timeout(Duration::from_secs(60), u.events.next()).await {
                        Ok(Some(ClientEvent::Connected { .. })) | Ok(None) | Err(_) => break,
                        Ok(Some(_)) => {}
                    }
                }
            })
            .await;
    }
    let handshakes_per_sec = rest.len() as f64 / reconnect_start.elapsed().as_secs_f64();
    let after = ProcStats::read(t.server_pid);
    let delivered = receipts.delivered.load(Ordering::Relaxed);
    let hist = receipts.latency.lock().expect("histogram lock").clone();
    let n = (rest.len() + 2) as u64;
    let per_conn = held.rss_bytes.saturating_sub(before.rss_bytes) / n.max(1);
    drop(rx);
    drop(rest);
    Ok(Report {
        scenario: "connections".into(),
        params: serde_json::to_value(o)?,
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
            "open_secs": open_secs,
            "registrations_and_logins_per_sec": n as f64 / open_secs,
            "server_rss_before_bytes": before.rss_bytes,
            "server_rss_held_bytes": held.rss_bytes,
            "server_bytes_per_connection": per_conn,
            "users_registered_before_start": o.existing.is_some(),
            "server_idle_cpu_share": idle_share,
            "handshakes_per_sec": handshakes_per_sec,
        }),
    })
}

/// History parameters.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryOpts {
    pub messages: u64,
    pub pages: usize,
    pub page_size: u32,
    /// Sends in flight while filling.
    pub window: usize,
}

/// Fill one conversation with `messages`, then time `pages` random history pages.
pub async fn history(t: &Target, o: &HistoryOpts) -> anyhow::Result<Report> {
    use futures::StreamExt;
    let mut users = bench_users(t, 2, 1000, 2).await?;
    let b = users.pop().expect("two");
    let a = users.pop().expect("two");
    drop(b.events);
    let conv = ConversationId(a.client.direct(&b.name).await?.conversation_id);
    let fill_start = Instant::now();
    let errors = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    futures::stream::iter(0..o.messages)
        .for_each_concurrent(o.window.max(1), |i| {
            let c = a.client.clone();
            let (errors, done) = (&errors, &done);
            async move {
                if c.send(conv, &format!("history message {i}")).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % 100_000 == 0 {
                    eprintln!("  {d} stored ({:.0}/s)", d as f64 / fill_start.elapsed().as_secs_f64());
                }
            }
        })
        .await;
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let before = ProcStats::read(t.server_pid);
    let started = Instant::now();
    let mut h = histogram();
    let last = o.messages + 1; // the creation event is seq 1
    let mut pages_ok = 0u64;
    for _ in 0..o.pages {
        let anchor = 2 + rand::random::<u64>() % last.max(1);
        let t0 = Instant::now();
        let page = b
            .client
            .history(conv, HistoryAnchor::Before(Seq(anchor)), o.page_size)
            .await?;
        let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
        // A page is the run just below the anchor, gap-free.
        let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        if seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs.last().is_none_or(|s| *s == anchor - 1) {
            pages_ok += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let after = ProcStats::read(t.server_pid);
    Ok(Report {
        scenario: "history".into(),
        params: serde_json::to_value(o)?,
        duration_secs: secs,
        sent: o.messages,
        delivered: pages_ok,
        delivered_per_sec: pages_ok as f64 / secs,
        latency: latency(&h),
        errors: errors.load(Ordering::Relaxed) + (o.pages as u64 - pages_ok),
        lost: 0,
        duplicates: 0,
        server_cpu_secs: after.cpu_secs - before.cpu_secs,
        server_cpu_share: (after.cpu_secs - before.cpu_secs) / secs,
        server_rss_bytes: after.rss_bytes,
        client_cpu_share: 0.0,
        extra: serde_json::json!({ "fill_secs": fill_secs, "fill_sends_per_sec": o.messages as f64 / fill_secs }),
    })
}
