//! Server configuration: TOML file, then environment/flags on top, then defaults that run
//! with nothing installed (sled in `./data`, a generated development certificate).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use natter_protocol::limits;
use serde::{Deserialize, Serialize};

/// Everything the server can be told. Every field has a default.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address for QUIC.
    pub listen: SocketAddr,
    /// Where the database and the development certificate live.
    pub data_dir: PathBuf,
    /// Conversation shards; 0 means one per core.
    pub shards: usize,
    /// PEM certificate chain; unset means the generated development certificate.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long a disconnected session can be resumed.
    pub resume_window_secs: u32,
    /// Events kept per session for resume.
    pub session_ring: usize,
    /// Message text limit, in characters.
    pub max_text_chars: usize,
    /// Group size limit.
    pub max_group_members: usize,
    /// Channel size limit.
    pub max_channel_members: usize,
    /// History page limit.
    pub max_history_page: u32,
    /// Requests in flight per connection.
    pub max_requests_in_flight: usize,
    /// Authenticated connections per user (all devices).
    pub max_connections_per_user: u32,
    /// Connections per client IP address.
    pub max_connections_per_ip: u32,
    /// Seconds from connect to Hello.
    pub handshake_timeout_secs: u64,
    /// Seconds from connect to authenticated (Login or Authenticate); a connection still
    /// unauthenticated then is closed with `HANDSHAKE_REQUIRED` (the client reconnects).
    pub auth_timeout_secs: u64,
    /// Connections this node holds at most, over all addresses and transports; beyond it
    /// new ones are closed with `LIMIT_EXCEEDED` at once.
    pub max_connections: u32,
    /// QUIC handshakes in progress above which a new connection must first prove its
    /// address (a QUIC Retry: one packet, no state kept, so a flood from spoofed addresses
    /// costs no handshakes); 0 validates every new address. Default 64.
    pub quic_retry_above_handshakes: u32,
    /// Idle timeout in seconds: a connection of any transport silent this long is dropped
    /// (clients send keep-alives well inside it). Default 60.
    pub idle_timeout_secs: u64,
    /// The keep-alive interval advertised to QUIC clients (ms, `Limits.keep_alive_ms`):
    /// each idle connection costs the node one PING and one ACK this often. Default 25,000.
    pub keep_alive_ms: u32,
    /// Seconds before an idle delivery stream is finished.
    pub stream_idle_secs: u64,
    /// Heartbeat interval (ms) of clients without keep-alives of their own (browsers); a
    /// device whose connection ended without a close stays present this long (a resume
    /// keeps it). Default 25,000.
    pub heartbeat_interval_ms: u32,
    /// How long a typing indicator lasts unless renewed (ms).
    pub typing_ttl_ms: u32,
    /// UDP address for WebTransport (browsers); unset disables it.
    pub webtransport_listen: Option<SocketAddr>,
    /// Days a generated WebTransport certificate is valid (browsers pin at most 14).
    pub webtransport_cert_days: u32,
    /// Seconds between renewals of the generated WebTransport certificate; the new hash is
    /// published at once, connections made with the old one carry on.
    pub webtransport_cert_renew_secs: u64,
    /// TCP address of the web endpoint: the chat page, `/natter.json` and WebSocket at
    /// `/ws`; unset disables it.
    pub web_listen: Option<SocketAddr>,
    /// TLS on the web endpoint.
    pub web_tls: WebTls,
    /// Folder the web endpoint serves at `/` (the chat page and its WASM package).
    pub web_root: PathBuf,
    /// argon2id memory (KiB) for new password hashes; default 19,456 (OWASP). Lower only
    /// where logins are not exposed (load tests).
    pub password_hash_memory_kib: u32,
    /// argon2id passes for new password hashes; default 2.
    pub password_hash_iterations: u32,
    /// Rate limits.
    pub rates: crate::security::ratelimit::RateConfig,
    /// `tracing` filter, e.g. "info" or "natter_server=debug".
    pub log: String,
    /// Where durable state lives: `sled` (embedded, one node) or `redis` (several nodes).
    pub storage: Storage,
    /// Redis URLs (`redis://host:port`): the server, or a cluster's seed nodes.
    pub redis_urls: Vec<String>,
    /// The Redis URLs are a Redis Cluster.
    pub redis_cluster: bool,
    /// Redis replicas that must confirm every write (`WAIT`) before it is acknowledged; 0
    /// (the default): the primary alone, and a failover can lose what was acknowledged in
    /// the last replication lag (docs/SCALING.md).
    pub redis_wait_replicas: u32,
    /// How long a write waits for `redis_wait_replicas` before it fails with
    /// `STORAGE_UNAVAILABLE` (ms).
    pub redis_wait_timeout_ms: u64,
    /// This node's id among the nodes on one Redis (default: host name and process id).
    pub node_id: String,
    /// The address clients reach this node at, published in the node registry (default:
    /// `listen`).
    pub advertise: Option<String>,
    /// Seconds a draining node (SIGTERM) waits for its clients to move before closing.
    pub drain_secs: u64,
    /// Log lines: "text" for people, "json" (one object per line) for log pipelines.
    pub log_format: LogFormat,
    /// TCP address of the ops listener: `/livez`, `/readyz`, `/metrics` (docs/OPERATIONS.md).
    /// Keep it off the public network; unset disables it.
    pub ops_listen: Option<SocketAddr>,
    /// Seconds between SIGTERM turning `/readyz` to 503 and the drain (clients told to
    /// move), so load balancers stop sending new connections first.
    pub ready_grace_secs: u64,
    /// `/readyz` fails once the TLS certificate expires within this many days.
    pub cert_min_valid_days: u64,
    /// Free disk space (bytes) the embedded store keeps in reserve: below it writes are
    /// refused with `STORAGE_UNAVAILABLE` and reads go on (PROTOCOL.md §6). Unset: 5 % of
    /// the file system, 1–256 MiB. 0 turns the reserve off (then a full disk reaches sled,
    /// which needs a restart after a failed write — tests only).
    pub disk_reserve_bytes: Option<u64>,
    /// Largest file one upload may declare (PROTOCOL.md §11). Default 1 GiB.
    pub max_upload_bytes: u64,
    /// Uploads are stored (and resume) in pieces of at most this many bytes. Default 1 MiB.
    pub upload_chunk_bytes: u32,
    /// Upload streams one QUIC or WebTransport connection may have open at once. Default 4.
    pub max_upload_streams: u32,
    /// Unfinished uploads are deleted this long after they were created. Default 24 h.
    pub upload_expiry_secs: u32,
    /// Uploads yield to chat (PROTOCOL.md §11.2): they are read only as fast as chat leaves
    /// room for, measured by the chat runtime's lag and commit times. Default on; off, they
    /// are read as fast as they arrive (up to `upload_bytes_per_sec`).
    pub uploads_yield_to_chat: bool,
    /// Most bytes per second all uploads to this node together are read at. 0 (default):
    /// no ceiling but what chat leaves.
    pub upload_bytes_per_sec: u64,
    /// Send notifications to offline devices (PROTOCOL.md §13). Default on.
    pub push_enabled: bool,
    /// How push services reach the operator: the VAPID `sub` claim, a `mailto:` or https
    /// URL. Default `mailto:postmaster@localhost`.
    pub push_contact: String,
    /// Tests only: accept `http` push endpoints on loopback addresses (the provider
    /// stand-ins). Never in production: it lets clients make the server call itself.
    pub push_allow_loopback_endpoints: bool,
    /// Extra trusted root certificates (PEM) for push services: a relay or a stand-in with
    /// its own CA. Unset: the system's roots only.
    pub push_ca_file: Option<PathBuf>,
    /// A device with a session here that has not acknowledged a new event after this many
    /// milliseconds is notified as if it were offline (a connection that died without a
    /// close). Default 2000.
    pub push_ack_delay_ms: u64,
    /// `[apns]`: Apple's push service (PROTOCOL.md §13.4). Unset: APNs registrations are
    /// refused.
    pub apns: Option<ApnsConfig>,
    /// `[fcm]`: Firebase Cloud Messaging HTTP v1. Unset: FCM registrations are refused.
    pub fcm: Option<FcmConfig>,
    /// `[email]`: digests of unread messages for users who stay offline (PROTOCOL.md
    /// §13.6). Unset: no email.
    pub email: Option<EmailConfig>,
    /// Full-text search of conversations the server can read (PROTOCOL.md §14). Default on.
    pub search_enabled: bool,
    /// Where this node's search index lives. Unset: `<data_dir>/search`, and with Redis
    /// `<data_dir>/search/<node_id>` (every node keeps an index of its own).
    pub search_dir: Option<PathBuf>,
    /// How long committed messages gather before one index commit. Default 250.
    pub search_commit_ms: u64,
    /// How often the index compares every conversation with the log (with several nodes,
    /// what a lost bus message left out). Default 300.
    pub search_reconcile_secs: u64,
    /// Accounts with passwords (Register, Login). Default on; off, only product tokens
    /// log in (PROTOCOL.md §5.13).
    pub password_logins: bool,
    /// What deleting an account does to the messages it sent (PROTOCOL.md §5.16):
    /// `"erase"` (the default: each becomes an `Erased` tombstone) or `"anonymise"`
    /// (kept, sent by "deleted-user").
    pub deleted_user_messages: crate::api::privacy::DeletedMessages,
    /// `[[token_issuers]]`: the product backends whose JWTs log users in (PROTOCOL.md
    /// §5.13). Empty (the default): token logins are off.
    pub token_issuers: Vec<crate::security::jwt::IssuerConfig>,
    /// Clock skew allowed on a product token's `exp` and `nbf`, in seconds. Default 30.
    pub token_leeway_secs: u64,
    /// A connection is told its product token expires (`TokenExpiring`) this many seconds
    /// before it does (at most half its lifetime). Default 60.
    pub token_refresh_ahead_secs: u64,
    /// `[webhooks]`: retries and timeouts of webhook deliveries.
    pub webhooks: crate::webhooks::WebhookSettings,
    /// `[presend_hook]`: the product's endpoint that allows, rejects or rewrites each
    /// plaintext message before it is committed. Unset: none.
    pub presend_hook: Option<crate::webhooks::presend::PresendConfig>,
    /// `[retention]`: how long conversations keep their events by kind (365 days each by
    /// default; 0 = forever), and how often the sweep runs (PROTOCOL.md §5.17). Reloaded
    /// by SIGHUP.
    pub retention: crate::conversation::retention::RetentionSettings,
    /// Bytes of media one user may hold. Default 10 GiB.
    pub media_quota_bytes: u64,
    /// Where media bytes live without S3. Unset: `<data_dir>/media`.
    pub media_dir: Option<PathBuf>,
    /// An S3-compatible bucket for media (needed for several nodes: any node then serves
    /// any upload or download). Unset: `media_dir`.
    pub s3: Option<S3Config>,
}

/// `[s3]`: an S3-compatible bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:9000`; empty for AWS.
    pub endpoint: String,
    /// The bucket (it must exist).
    pub bucket: String,
    /// Region; S3-compatible servers take any.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret key (or env `NATTER_S3_SECRET_KEY`).
    pub secret_key: crate::security::Secret,
}

pub use crate::push::apns::ApnsConfig;
pub use crate::push::email::EmailConfig;
pub use crate::push::fcm::FcmConfig;

/// The storage backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// sled in `data_dir`: one node, nothing to install.
    #[default]
    Sled,
    /// Redis or Redis Cluster at `redis_urls`: any number of nodes.
    Redis,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:4433".parse().expect("valid address"),
            data_dir: PathBuf::from("data"),
            shards: 0,
            tls_cert: None,
            tls_key: None,
            resume_window_secs: limits::RESUME_WINDOW_SECS,
            session_ring: 1024,
            max_text_chars: limits::MAX_TEXT_CHARS,
            max_group_members: limits::MAX_GROUP_MEMBERS,
            max_channel_members: limits::MAX_CHANNEL_MEMBERS,
            max_history_page: limits::MAX_HISTORY_PAGE,
            max_requests_in_flight: limits::MAX_REQUESTS_IN_FLIGHT as usize,
            max_connections_per_user: limits::MAX_CONNECTIONS_PER_USER,
            max_connections_per_ip: limits::MAX_CONNECTIONS_PER_IP,
            handshake_timeout_secs: 10,
            auth_timeout_secs: 30,
            max_connections: 100_000,
            quic_retry_above_handshakes: 64,
            idle_timeout_secs: u64::from(limits::IDLE_TIMEOUT_MS / 1000),
            keep_alive_ms: limits::KEEP_ALIVE_MS,
            stream_idle_secs: 30,
            heartbeat_interval_ms: limits::HEARTBEAT_INTERVAL_MS,
            typing_ttl_ms: limits::TYPING_TTL_MS,
            webtransport_listen: Some("127.0.0.1:4434".parse().expect("valid address")),
            webtransport_cert_days: 14,
            webtransport_cert_renew_secs: 6 * 24 * 3600,
            web_listen: Some("127.0.0.1:8080".parse().expect("valid address")),
            web_tls: WebTls::Auto,
            web_root: PathBuf::from("web"),
            password_hash_memory_kib: crate::security::auth::PasswordCost::default().memory_kib,
            password_hash_iterations: crate::security::auth::PasswordCost::default().iterations,
            rates: crate::security::ratelimit::RateConfig::default(),
            log: "info".into(),
            storage: Storage::Sled,
            redis_urls: vec!["redis://127.0.0.1:6379".into()],
            redis_cluster: false,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 1000,
            node_id: String::new(),
            advertise: None,
            drain_secs: 10,
            log_format: LogFormat::Text,
            ops_listen: Some("127.0.0.1:9100".parse().expect("valid address")),
            ready_grace_secs: 5,
            cert_min_valid_days: 7,
            disk_reserve_bytes: None,
            max_upload_bytes: limits::MAX_UPLOAD_BYTES,
            upload_chunk_bytes: limits::UPLOAD_CHUNK_BYTES,
            max_upload_streams: limits::MAX_UPLOAD_STREAMS,
            upload_expiry_secs: limits::UPLOAD_EXPIRY_SECS,
            uploads_yield_to_chat: true,
            upload_bytes_per_sec: 0,
            push_enabled: true,
            push_contact: crate::push::PushSettings::default().contact,
            push_allow_loopback_endpoints: false,
            push_ca_file: None,
            push_ack_delay_ms: 2_000,
            apns: None,
            fcm: None,
            email: None,
            search_enabled: true,
            search_dir: None,
            search_commit_ms: 250,
            search_reconcile_secs: 300,
            webhooks: Default::default(),
            presend_hook: None,
            password_logins: true,
            deleted_user_messages: Default::default(),
            token_issuers: Vec::new(),
            token_leeway_secs: 30,
            token_refresh_ahead_secs: 60,
            media_quota_bytes: limits::MEDIA_QUOTA_BYTES,
            retention: Default::default(),
            media_dir: None,
            s3: None,
        }
    }
}

impl Config {
    /// A server for tests and embedding: QUIC and the ops listener on ephemeral loopback
    /// ports, no web or WebTransport endpoint, two shards, warnings only, data in `data_dir`.
    pub fn loopback(data_dir: &Path) -> Self {
        Config {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            web_listen: None,
            webtransport_listen: None,
            ops_listen: Some("127.0.0.1:0".parse().expect("valid address")),
            data_dir: data_dir.to_path_buf(),
            shards: 2,
            log: "warn".into(),
            ..Default::default()
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: expected text or json")),
        }
    }
}

/// Whether the web endpoint (page, discovery, WebSocket) speaks TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebTls {
    /// Plain HTTP on a loopback address (browsers treat `http://127.0.0.1` as a secure
    /// context), TLS on any other.
    #[default]
    Auto,
    /// Always TLS (the configured certificate, else the development one).
    On,
    /// Never TLS. Refused on non-loopback addresses: tokens would cross the network in clear.
    Off,
}

impl WebTls {
    /// Whether a listener on `addr` uses TLS; an error for plain text off loopback.
    pub fn enabled_for(self, addr: SocketAddr) -> anyhow::Result<bool> {
        match self {
            WebTls::On => Ok(true),
            WebTls::Auto => Ok(!addr.ip().is_loopback()),
            WebTls::Off if addr.ip().is_loopback() => Ok(false),
            WebTls::Off => anyhow::bail!("web_tls = \"off\" is only allowed on a loopback address, not {addr}"),
        }
    }
}

impl Config {
    /// Read a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Shards to run.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            self.shards
        }
    }

    /// The limits advertised in Welcome.
    pub fn wire_limits(&self) -> natter_protocol::pb::Limits {
        let idle_timeout_ms = u32::try_from(self.idle_timeout_secs.saturating_mul(1000)).unwrap_or(u32::MAX);
        natter_protocol::pb::Limits {
            max_text_chars: self.max_text_chars as u32,
            max_group_members: self.max_group_members as u32,
            max_channel_members: self.max_channel_members as u32,
            max_history_page: self.max_history_page,
            resume_window_secs: self.resume_window_secs,
            max_requests_in_flight: self.max_requests_in_flight as u32,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            // Two keep-alives fit in the idle timeout, whatever the configuration says.
            keep_alive_ms: self.keep_alive_ms.min(idle_timeout_ms / 2),
            typing_ttl_ms: self.typing_ttl_ms,
            idle_timeout_ms,
            max_upload_bytes: self.max_upload_bytes,
            upload_chunk_bytes: self.upload_chunk_bytes,
            max_upload_streams: self.max_upload_streams,
            upload_expiry_secs: self.upload_expiry_secs,
            media_quota_bytes: self.media_quota_bytes,
            ..limits::default_limits()
        }
    }

    /// How notifications are sent (push/).
    pub fn push(&self) -> crate::push::PushSettings {
        crate::push::PushSettings {
            enabled: self.push_enabled,
            contact: self.push_contact.clone(),
            allow_loopback_endpoints: self.push_allow_loopback_endpoints,
            ca_file: self.push_ca_file.clone(),
            ack_delay: std::time::Duration::from_millis(self.push_ack_delay_ms.max(100)),
            apns: self.apns.clone(),
            fcm: self.fcm.clone(),
            email: self.email.clone(),
            ..crate::push::PushSettings::default()
        }
    }

    /// This node's search index directory.
    pub fn search_dir(&self) -> PathBuf {
        match (&self.search_dir, self.storage) {
            (Some(d), _) => d.clone(),
            (None, Storage::Redis) if !self.node_id.is_empty() => self.data_dir.join("search").join(&self.node_id),
            (None, Storage::Redis) => self.data_dir.join("search").join("node"),
            (None, _) => self.data_dir.join("search"),
        }
    }

    /// How the search index follows the log (search/live.rs).
    pub fn search(&self) -> crate::search::LiveSettings {
        crate::search::LiveSettings {
            commit_every: std::time::Duration::from_millis(self.search_commit_ms.max(1)),
            reconcile_every: std::time::Duration::from_secs(self.search_reconcile_secs.max(1)),
            ..crate::search::LiveSettings::default()
        }
    }

    /// The upload pace's settings (chat_first.rs).
    pub fn chat_first(&self) -> crate::chat_first::Settings {
        crate::chat_first::Settings {
            yield_to_chat: self.uploads_yield_to_chat,
            ceiling: match self.upload_bytes_per_sec {
                0 => f64::INFINITY,
                n => n as f64,
            },
        }
    }

    /// The media limits, as the media layer takes them.
    pub fn media_config(&self) -> crate::media::MediaConfig {
        crate::media::MediaConfig {
            max_upload_bytes: self.max_upload_bytes,
            chunk_bytes: self.upload_chunk_bytes.max(1),
            max_upload_streams: self.max_upload_streams,
            upload_expiry_secs: self.upload_expiry_secs,
            quota_bytes: self.media_quota_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c: Config = toml::from_str("listen = \"127.0.0.1:9000\"\nshards = 3\n").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.shards, 3);
        assert_eq!(c.max_text_chars, limits::MAX_TEXT_CHARS);
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
    }

    /// The names of a struct's `pub` fields, read from its source.
    fn fields(source: &str, name: &str) -> Vec<String> {
        let start = source
            .find(&format!("pub struct {name} {{"))
            .unwrap_or_else(|| panic!("struct {name}"));
        let body = &source[start..];
        let body = &body[..body.find("\n}").unwrap()];
        body.lines()
            .filter_map(|l| l.trim().strip_prefix("pub "))
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
            .filter(|n| !n.starts_with("struct"))
            .collect()
    }

    /// docs/CONFIG.md is the one reference of every key: a key added here and not there
    /// fails this test.
    #[test]
    fn every_key_is_in_the_configuration_reference() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let reference = std::fs::read_to_string(root.join("../docs/CONFIG.md")).unwrap();
        let config = std::fs::read_to_string(root.join("src/config.rs")).unwrap();
        let rates = std::fs::read_to_string(root.join("src/security/ratelimit.rs")).unwrap();
        let mut missing = Vec::new();
        for key in fields(&config, "Config")
            .into_iter()
            .chain(fields(&rates, "RateConfig"))
        {
            if !reference.contains(&format!("`{key}`")) {
                missing.push(key);
            }
        }
        assert!(missing.is_empty(), "not in docs/CONFIG.md: {missing:?}");
        // And the defaults it prints are what the server runs with.
        let defaults = toml::to_string(&Config::default()).unwrap();
        assert!(defaults.contains("ops_listen = \"127.0.0.1:9100\""), "{defaults}");
    }
}
