//! The server's Prometheus metrics: one registry per server instance (so in-process
//! multi-node tests stay apart), every name prefixed `natter_`, base units (seconds,
//! bytes), and labels only from closed sets written in this file or by the protocol
//! (transport, state, result, outcome, limit, a request kind's name, an error code's name)
//! — never a user, device or conversation id, so the number of series does not grow with
//! traffic. docs/OPERATIONS.md lists every series and what to alert on.
//!
//! Layers count through the handles here (`metrics.deliveries.inc()`); what is cheaper to
//! read than to count (attached sessions, the process's CPU, memory and descriptors) is read
//! when Prometheus scrapes ([`Metrics::encode`]).
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// A connection's transport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// "quic", "webtransport", "websocket" or "in_process".
    pub transport: &'static str,
}

/// A connection's transport and phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// As [`TransportLabel`].
    pub transport: &'static str,
    /// "unauthenticated" or "authenticated".
    pub state: &'static str,
}

/// How something ended: a handshake, a push, a webhook delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// A short closed word per series ("ok", "failed", "refused", "retried", "gone", …).
    pub result: &'static str,
}

/// A request's kind and how it was answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The kind's name (`pb::request::Op::name`), or "unknown".
    pub op: &'static str,
    /// "OK" or the error code's name (`ErrorCode::as_str_name`).
    pub code: &'static str,
}

/// An HTTP request on the web endpoint: its route template and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route as written in the router (`/api/v1/users/{id}`), or "static".
    pub route: String,
    /// The response's HTTP status.
    pub status: u16,
}

/// An HTTP route template.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// As [`HttpLabels::route`].
    pub route: String,
}

/// A request's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// As [`RequestLabels::op`].
    pub op: &'static str,
}

/// How a reconnecting session came back.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// "replay" (resumed, missed events replayed), "cursor_sync" (a new session that
    /// syncs by cursor) or "expired" (a resume token too old or unknown).
    pub outcome: &'static str,
}

/// Which rate limit refused a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// The limit's name in the configuration (`[rates]`).
    pub limit: &'static str,
}

/// A bus message's direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// "published" or "received".
    pub direction: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.5 ms … ~16 s: requests, store commits.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every series this server exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open connections, by transport and phase.
    pub connections: Family<ConnectionLabels, Gauge>,
    /// Connections accepted, by transport.
    pub connections_accepted: Family<TransportLabel, Counter>,
    /// QUIC and WebTransport handshakes, by result ("ok", "failed", "refused").
    pub handshakes: Family<ResultLabel, Counter>,
    /// Full TLS handshakes (the certificate's key signed); the rest of the successful
    /// handshakes resumed a TLS session from a ticket.
    pub tls_full_handshakes: Counter,
    /// Requests answered, by kind and code.
    pub requests: Family<RequestLabels, Counter>,
    /// From a request's arrival to its answer, by kind.
    pub request_duration: Histograms<OpLabel>,
    /// HTTP requests on the web endpoint (server API, tus, media, WebSocket upgrades, the
    /// page), by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// From an HTTP request's arrival to its response's head, by route.
    pub http_request_duration: Histograms<RouteLabel>,
    /// Events committed to conversation logs (messages, edits, membership, …).
    pub events_committed: Counter,
    /// Messages a send found already committed (a retry absorbed by idempotency).
    pub duplicates: Counter,
    /// Store commits (one per shard batch): their duration.
    pub store_commit_duration: Histogram,
    /// Store commits that failed (the batch's senders got an error and retry).
    pub store_commit_failures: Counter,
    /// Store commits that lost a race for a conversation to another node (its commands
    /// are applied again).
    pub store_commit_conflicts: Counter,
    /// Events written to a connection's delivery stream.
    pub deliveries: Counter,
    /// From an event's commit to its write on a recipient's connection.
    pub delivery_latency: Histogram,
    /// Connections cut off for reading too slowly.
    pub slow_consumer_cutoffs: Counter,
    /// Ephemeral events (typing, presence) dropped: no datagram room and a full queue.
    pub datagrams_dropped: Counter,
    /// Sessions resumed or started after a reconnect, by outcome.
    pub resumes: Family<OutcomeLabel, Counter>,
    /// Requests refused by a rate limit, by limit.
    pub rate_limited: Family<LimitLabel, Counter>,
    /// Sessions with a live connection on this node (read at scrape).
    pub sessions_attached: Gauge,
    /// Messages on the cluster bus, by direction.
    pub bus_messages: Family<DirectionLabel, Counter>,
    /// Cluster bus failures (publish or subscribe).
    pub bus_errors: Counter,
    /// Push notifications posted to providers, by result.
    pub push_notifications: Family<ResultLabel, Counter>,
    /// Webhook deliveries, by result.
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    /// Uploads that ended, by result (`ready`, `rejected`, `cancelled`, `expired`).
    pub media_uploads: Family<ResultLabel, Counter>,
    /// Bytes of uploads stored (pieces made durable).
    pub media_bytes_stored: Counter,
    /// Files deleted (no message attaches them any more, or their owner's account went).
    pub media_files_deleted: Counter,
    /// Message searches answered, by result (`ok`, `refused`).
    pub search_queries: Family<ResultLabel, Counter>,
    /// How far this node's search index is behind the log, seconds (set every few
    /// seconds).
    pub search_index_lag: Gauge<f64, AtomicU64>,
    /// Events removed by retention.
    pub retention_removed: Counter,
    /// Retention sweeps over every conversation, by result (`ok`, `failed`).
    pub retention_sweeps: Family<ResultLabel, Counter>,
    /// Process: CPU time used (read at scrape).
    process_cpu: Counter<f64, AtomicU64>,
    process_cpu_seen: Mutex<f64>,
    /// Process: resident memory (read at scrape).
    process_memory: Gauge<i64, AtomicI64>,
    /// Process: open file descriptors (read at scrape).
    process_fds: Gauge<i64, AtomicI64>,
    /// Datagrams the kernel dropped because the QUIC socket's receive buffer was full (read
    /// at scrape from /proc/self/net/udp{,6}; bench/RESULTS.md, many groups).
    udp_drops: Counter,
    udp_drops_seen: Mutex<u64>,
    /// The watched socket's inode, which names it in /proc/net/udp.
    udp_inode: Mutex<Option<u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every series registered.
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("natter");
        let m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            connections_accepted: Family::default(),
            handshakes: Family::default(),
            tls_full_handshakes: Counter::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_buckets),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(latency_buckets),
            events_committed: Counter::default(),
            duplicates: Counter::default(),
            store_commit_duration: latency_buckets(),
            store_commit_failures: Counter::default(),
            store_commit_conflicts: Counter::default(),
            deliveries: Counter::default(),
            delivery_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            slow_consumer_cutoffs: Counter::default(),
            datagrams_dropped: Counter::default(),
            resumes: Family::default(),
            rate_limited: Family::default(),
            sessions_attached: Gauge::default(),
            bus_messages: Family::default(),
            bus_errors: Counter::default(),
            push_notifications: Family::default(),
            webhook_deliveries: Family::default(),
            media_uploads: Family::default(),
            media_bytes_stored: Counter::default(),
            media_files_deleted: Counter::default(),
            search_queries: Family::default(),
            search_index_lag: Gauge::default(),
            retention_removed: Counter::default(),
            retention_sweeps: Family::default(),
            process_cpu: Counter::default(),
            process_cpu_seen: Mutex::new(0.0),
            process_memory: Gauge::default(),
            process_fds: Gauge::default(),
            udp_drops: Counter::default(),
            udp_drops_seen: Mutex::new(0),
            udp_inode: Mutex::new(None),
        };
        r.register(
            "build",
            "natter-server's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register("connections", "Open connections", m.connections.clone());
        r.register(
            "connections_accepted",
            "Connections accepted",
            m.connections_accepted.clone(),
        );
        r.register("handshakes", "Transport handshakes by result", m.handshakes.clone());
        r.register(
            "tls_full_handshakes",
            "TLS handshakes that signed with the certificate's key (not resumed from a ticket)",
            m.tls_full_handshakes.clone(),
        );
        r.register("requests", "Requests answered, by kind and code", m.requests.clone());
        r.register_with_unit(
            "request_duration",
            "From a request's arrival to its answer",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests on the web endpoint, by route and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "From an HTTP request's arrival to its response's head",
            Unit::Seconds,
            m.http_request_duration.clone(),
        );
        r.register("events_committed", "Events committed", m.events_committed.clone());
        r.register(
            "media_uploads",
            "Uploads that ended, by result",
            m.media_uploads.clone(),
        );
        r.register_with_unit(
            "media_stored",
            "Bytes of uploads made durable",
            Unit::Bytes,
            m.media_bytes_stored.clone(),
        );
        r.register("media_files_deleted", "Files deleted", m.media_files_deleted.clone());
        r.register(
            "search_queries",
            "Message searches, by result",
            m.search_queries.clone(),
        );
        r.register_with_unit(
            "search_index_lag",
            "How far this node's search index is behind the log",
            Unit::Seconds,
            m.search_index_lag.clone(),
        );
        r.register(
            "retention_removed_events",
            "Events removed by retention",
            m.retention_removed.clone(),
        );
        r.register(
            "retention_sweeps",
            "Retention sweeps over every conversation, by result",
            m.retention_sweeps.clone(),
        );
        r.register(
            "duplicates",
            "Sends absorbed as duplicates of a committed message",
            m.duplicates.clone(),
        );
        r.register_with_unit(
            "store_commit_duration",
            "Store commits of a shard batch",
            Unit::Seconds,
            m.store_commit_duration.clone(),
        );
        r.register(
            "store_commit_failures",
            "Store commits that failed",
            m.store_commit_failures.clone(),
        );
        r.register(
            "store_commit_conflicts",
            "Store commits that lost a conversation to another node",
            m.store_commit_conflicts.clone(),
        );
        r.register("deliveries", "Events written to a connection", m.deliveries.clone());
        r.register_with_unit(
            "delivery_latency",
            "From an event's commit to its write on a recipient's connection",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        r.register(
            "slow_consumer_cutoffs",
            "Connections cut off for reading too slowly",
            m.slow_consumer_cutoffs.clone(),
        );
        r.register(
            "datagrams_dropped",
            "Ephemeral events dropped",
            m.datagrams_dropped.clone(),
        );
        r.register("resumes", "Reconnected sessions by outcome", m.resumes.clone());
        r.register(
            "rate_limited",
            "Requests refused by a rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "sessions_attached",
            "Sessions with a live connection",
            m.sessions_attached.clone(),
        );
        r.register("bus_messages", "Cluster bus messages", m.bus_messages.clone());
        r.register("bus_errors", "Cluster bus failures", m.bus_errors.clone());
        r.register(
            "push_notifications",
            "Push notifications posted to providers",
            m.push_notifications.clone(),
        );
        r.register("webhook_deliveries", "Webhook deliveries", m.webhook_deliveries.clone());
        r.register(
            "udp_receive_drops",
            "Datagrams the kernel dropped at the QUIC socket (receive buffer full)",
            m.udp_drops.clone(),
        );
        let p = root.sub_registry_with_prefix("process");
        p.register_with_unit("cpu", "CPU time used", Unit::Seconds, m.process_cpu.clone());
        p.register_with_unit(
            "resident_memory",
            "Resident memory",
            Unit::Bytes,
            m.process_memory.clone(),
        );
        p.register("open_fds", "Open file descriptors", m.process_fds.clone());
        Metrics { registry: root, ..m }
    }

    /// A request of kind `op` answered with `code` after `took`.
    pub fn request(&self, op: &'static str, code: &'static str, took: Duration) {
        self.requests.get_or_create(&RequestLabels { op, code }).inc();
        self.request_duration
            .get_or_create(&OpLabel { op })
            .observe(took.as_secs_f64());
    }

    /// An HTTP request on route template `route` answered `status` after `took`.
    pub fn http(&self, route: String, status: u16, took: Duration) {
        self.http_request_duration
            .get_or_create(&RouteLabel { route: route.clone() })
            .observe(took.as_secs_f64());
        self.http_requests.get_or_create(&HttpLabels { route, status }).inc();
    }

    /// A connection of `transport` opened: counted and shown unauthenticated until
    /// [`ConnectionGauge::authenticated`]; the gauge goes down when the guard drops.
    pub fn connection(self: &std::sync::Arc<Self>, transport: &'static str) -> ConnectionGauge {
        self.connections_accepted
            .get_or_create(&TransportLabel { transport })
            .inc();
        let g = ConnectionGauge {
            metrics: self.clone(),
            transport,
            state: "unauthenticated",
        };
        g.gauge().inc();
        g
    }

    /// `result` of something counted by result.
    pub fn result(family: &Family<ResultLabel, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabel { result }).inc();
    }

    /// The registry in Prometheus's text format (version 0.0.4), or OpenMetrics text.
    pub fn encode(&self, openmetrics: bool) -> String {
        self.read_process();
        self.read_udp_drops();
        let mut out = String::new();
        let done = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Every sample name this registry can export (`natter_requests_total`,
    /// `natter_request_duration_seconds_bucket`, …): a labelled family shows in the
    /// exposition only once it has a series, so this fills a fresh registry's families with
    /// one series each and reads the result. Dashboards and alert rules are checked
    /// against it.
    pub fn sample_names() -> Vec<String> {
        let m = std::sync::Arc::new(Metrics::new());
        let one = "x";
        drop(m.connection(one));
        Metrics::result(&m.handshakes, one);
        m.request(one, one, Duration::ZERO);
        m.http(one.into(), 200, Duration::ZERO);
        m.resumes.get_or_create(&OutcomeLabel { outcome: one }).inc();
        m.rate_limited.get_or_create(&LimitLabel { limit: one }).inc();
        m.bus_messages.get_or_create(&DirectionLabel { direction: one }).inc();
        Metrics::result(&m.push_notifications, one);
        Metrics::result(&m.webhook_deliveries, one);
        Metrics::result(&m.retention_sweeps, one);
        Metrics::result(&m.media_uploads, one);
        Metrics::result(&m.search_queries, one);
        let mut names: Vec<String> = m
            .encode(false)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Count the kernel's drops at this UDP socket (the QUIC endpoint's) from now on.
    pub fn watch_udp_socket(&self, socket: &impl std::os::fd::AsRawFd) {
        use std::os::unix::fs::MetadataExt;
        let fd = socket.as_raw_fd();
        if let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{fd}")) {
            *self.udp_inode.lock().expect("udp lock") = Some(meta.ino());
        }
    }

    /// The watched socket's drop count from /proc/self/net/udp or udp6 (the last column).
    fn read_udp_drops(&self) {
        let Some(inode) = *self.udp_inode.lock().expect("udp lock") else {
            return;
        };
        let inode = inode.to_string();
        let found = ["/proc/self/net/udp", "/proc/self/net/udp6"].iter().find_map(|path| {
            let table = std::fs::read_to_string(path).ok()?;
            table.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.get(9) == Some(&inode.as_str())).then(|| f.last()?.parse::<u64>().ok())?
            })
        });
        if let Some(drops) = found {
            let mut seen = self.udp_drops_seen.lock().expect("udp lock");
            if drops > *seen {
                self.udp_drops.inc_by(drops - *seen);
                *seen = drops;
            }
        }
    }

    /// CPU, memory and descriptors from /proc (Linux; elsewhere they stay 0).
    fn read_process(&self) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        // Fields after the command (which may hold spaces) closes with ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the command.
        if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
            let ticks = u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0);
            let secs = ticks / clock_ticks();
            let mut seen = self.process_cpu_seen.lock().expect("cpu lock");
            if secs > *seen {
                self.process_cpu.inc_by(secs - *seen);
                *seen = secs;
            }
        }
        if let Some(rss) = fields.get(21).and_then(|p| p.parse::<i64>().ok()) {
            self.process_memory.set(rss * 4096);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.process_fds.set(dir.count() as i64);
        }
    }
}

/// Linux reports CPU time in clock ticks: 100 per second on every architecture it runs
/// natter on (USER_HZ).
fn clock_ticks() -> f64 {
    100.0
}

/// One open connection in [`Metrics::connections`]; moves to "authenticated" once, and
/// leaves the gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGauge {
    metrics: std::sync::Arc<Metrics>,
    transport: &'static str,
    state: &'static str,
}

impl ConnectionGauge {
    fn gauge(&self) -> Gauge {
        self.metrics
            .connections
            .get_or_create(&ConnectionLabels {
                transport: self.transport,
                state: self.state,
            })
            .clone()
    }

    /// The connection authenticated.
    pub fn authenticated(&mut self) {
        if self.state != "authenticated" {
            self.gauge().dec();
            self.state = "authenticated";
            self.gauge().inc();
        }
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.gauge().dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_prefixed_and_counters_count() {
        let m = std::sync::Arc::new(Metrics::new());
        m.events_committed.inc();
        m.request("send", "OK", Duration::from_millis(3));
        let mut c = m.connection("quic");
        c.authenticated();
        let text = m.encode(false);
        assert!(text.contains("natter_events_committed_total 1"), "{text}");
        assert!(
            text.contains("natter_requests_total{op=\"send\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("natter_connections{transport=\"quic\",state=\"authenticated\"} 1"),
            "{text}"
        );
        assert!(text.contains("natter_build_info{version="), "{text}");
        drop(c);
        assert!(m
            .encode(false)
            .contains("natter_connections{transport=\"quic\",state=\"authenticated\"} 0"),);
        assert!(m.encode(true).ends_with("# EOF\n"), "OpenMetrics on request");
        let names = Metrics::sample_names();
        for name in [
            "natter_requests_total",
            "natter_request_duration_seconds_bucket",
            "natter_webhook_deliveries_total",
            "natter_udp_receive_drops_total",
            "process_cpu_seconds_total",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }

    #[test]
    fn a_full_socket_buffer_shows_as_udp_receive_drops() {
        let m = Metrics::new();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        m.watch_udp_socket(&socket);
        let drops = |m: &Metrics| {
            let text = m.encode(false);
            text.lines()
                .find_map(|l| l.strip_prefix("natter_udp_receive_drops_total "))
                .map(|v| v.trim().parse::<f64>().unwrap())
                .unwrap_or_else(|| panic!("no drop count in {text}"))
        };
        assert_eq!(drops(&m), 0.0, "nothing sent yet");
        // Nobody reads the socket: sends on loopback land in its buffer until it is full,
        // then the kernel drops them (bounded: at most 40 MB).
        let to = socket.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload = [7u8; 1200];
        let mut seen = 0.0;
        for _ in 0..32 {
            for _ in 0..1000 {
                let _ = sender.send_to(&payload, to);
            }
            seen = drops(&m);
            if seen > 0.0 {
                break;
            }
        }
        assert!(seen > 0.0, "32,000 unread datagrams and no drop counted");
    }
}
