//! Assembles a running server from a [`Config`]: store, hub, shards, TLS, the QUIC
//! endpoint and housekeeping tasks. The binary and in-process tests both start here.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use natter_protocol::{pb, UserId};

use crate::api;
use crate::api::Ctx;
use crate::cluster::{Cluster, LocalPresence};
use crate::config::Config;
use crate::config::Storage;
use crate::conn::{ConnConfig, Shared};
use crate::conversation::retention::{Retention, SharedRetention, Swept};
use crate::conversation::{MemberLimits, Shards};
use crate::security::tls;
use crate::session::hub::{Hub, HubConfig};
use crate::session::presence::{Presence, PresenceOutlet};
use crate::store::PresenceRecord;
use crate::store::{Durability, RedisConn, RedisStore, SledStore, Store};
use crate::transport::quic;

/// Presence changes go out through the request layer, which knows contacts and nodes.
/// Holds the server weakly, so presence never keeps a stopped server alive.
struct PublishPresence(std::sync::Weak<Shared>);

#[async_trait::async_trait]
impl PresenceOutlet for PublishPresence {
    async fn flush(&self, changes: Vec<pb::PresenceUpdate>, offline: Vec<(UserId, PresenceRecord)>) -> bool {
        let Some(shared) = self.0.upgrade() else { return false };
        api::presence::publish(&shared.ctx, changes, offline).await;
        true
    }
}

impl LocalPresence for Presence {
    fn local_state(&self, user: UserId) -> pb::PresenceState {
        self.get(user).state()
    }
}

/// What a reload ([`RunningServer::reload`]) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings now in effect.
    pub applied: Vec<String>,
    /// Settings that changed but take effect only after a restart.
    pub need_restart: Vec<String>,
}

/// A server that is accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound UDP address.
    pub addr: SocketAddr,
    /// SHA-256 of the certificate, for clients to pin.
    pub fingerprint: String,
    /// The WebTransport endpoint's UDP address, if enabled.
    pub webtransport_addr: Option<SocketAddr>,
    /// The web endpoint (page, `/natter.json`, WebSocket `/ws`), if enabled.
    pub web_addr: Option<SocketAddr>,
    /// Whether the web endpoint speaks TLS.
    pub web_tls: bool,
    /// The ops listener (`/livez`, `/readyz`, `/metrics`), if enabled.
    pub ops_addr: Option<SocketAddr>,
    readiness: Arc<crate::ops::Readiness>,
    /// The certificate new handshakes get (replaced by a reload).
    live_cert: Arc<tls::LiveCert>,
    /// The configuration in effect (a reload changes its live settings).
    running: std::sync::Mutex<Config>,
    webtransport: Option<Arc<crate::transport::webtransport::WtEndpoint>>,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    cluster: Option<Arc<Cluster>>,
    store: std::sync::Weak<dyn Store>,
    /// The retention sweep (it also runs by itself every `[retention] sweep_secs`).
    retention: Arc<Retention>,
    /// The embedded store and local media directory, for backups (`None` on Redis).
    backup: Option<(Arc<SledStore>, Option<std::path::PathBuf>)>,
    /// Notified when an operator asks this node to drain (`POST /admin/v1/drain`).
    drain_requests: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Open storage, bind, and start serving.
pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
    // One process-wide rustls provider (ring) for the HTTP clients that ask for the
    // default one (object_store's S3 client); a second call finds it installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(crate::ops::Metrics::new());
    let (store, redis, sled) = open_store_parts(config).await?;
    let identity = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => tls::load(c, k)?,
        (None, None) => tls::dev_identity(&config.data_dir)?,
        _ => anyhow::bail!("tls_cert and tls_key go together"),
    };
    let hub = Hub::new(HubConfig {
        ring_capacity: config.session_ring.max(1),
        resume_window: Duration::from_secs(config.resume_window_secs.into()),
    });
    let member_limits = MemberLimits {
        group: config.max_group_members,
        channel: config.max_channel_members,
    };
    // Uploads read only what chat leaves over (chat_first.rs): shards report their commit
    // times, the probe runs on this (the chat) runtime.
    let chat_first = crate::chat_first::ChatFirst::new(config.chat_first());
    let push = crate::push::Push::new(store.clone(), hub.clone(), config.push(), metrics.clone())?;
    let search = if config.search_enabled {
        let dir = config.search_dir();
        let index = crate::search::TantivyIndex::open(&dir)
            .with_context(|| format!("opening the search index in {}", dir.display()))?;
        Some(crate::search::Search::new(
            store.clone(),
            Arc::new(index),
            config.search(),
        ))
    } else {
        None
    };
    let webhooks = crate::webhooks::Webhooks::new(store.clone(), config.webhooks.clone(), metrics.clone());
    webhooks
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("webhooks: {}", e.message))?;
    let shards = Shards::start(
        config.shard_count(),
        crate::conversation::ShardParts {
            store: store.clone(),
            hub: hub.clone(),
            limits: member_limits,
            chat_first: chat_first.clone(),
            push: push.clone(),
            taps: {
                let mut taps: Vec<Arc<dyn crate::conversation::CommitTap>> = vec![webhooks.clone()];
                if let Some(s) = &search {
                    taps.push(s.clone());
                }
                taps
            },
            metrics: metrics.clone(),
        },
    );
    let weak_store = Arc::downgrade(&store);
    let presence = Presence::new(Duration::from_millis(config.heartbeat_interval_ms.max(1).into()));
    let cluster = match redis {
        Some(conn) => {
            let node = if config.node_id.is_empty() {
                format!("node-{}-{:08x}", std::process::id(), rand::random::<u32>())
            } else {
                config.node_id.clone()
            };
            let advertise = config.advertise.clone().unwrap_or_else(|| config.listen.to_string());
            let urls = config.redis_urls.clone();
            let (hub, shards) = (hub.clone(), shards.clone());
            let local = crate::cluster::Local {
                hub,
                shards,
                presence: Arc::new(presence.clone()),
                push: push.clone(),
                search: search.clone(),
                metrics: metrics.clone(),
            };
            let cluster = Cluster::start(conn, urls, node, advertise, local).await?;
            push.set_elsewhere(cluster.clone());
            Some(cluster)
        }
        None => None,
    };
    let store_for_media = store.clone();
    let keys = crate::keys::Keys::new(store.clone());
    let retention_settings: SharedRetention = Arc::new(std::sync::RwLock::new(config.retention));
    let ctx = Ctx {
        store,
        hub: hub.clone(),
        presence: presence.clone(),
        typing_ttl_ms: config.typing_ttl_ms,
        rates: crate::security::ratelimit::RateLimits::new(&config.rates, metrics.clone()),
        shards,
        member_limits,
        max_text_chars: config.max_text_chars,
        max_history_page: config.max_history_page,
        password_cost: crate::security::auth::PasswordCost {
            memory_kib: config.password_hash_memory_kib,
            iterations: config.password_hash_iterations,
        },
        cluster: cluster.clone(),
        media: Arc::new(crate::media::Media::new(
            store_for_media,
            media_store(config)?,
            config.media_config(),
            chat_first.clone(),
            metrics.clone(),
        )),
        keys,
        push: push.clone(),
        search: search.clone(),
        logins: crate::api::Logins {
            passwords: config.password_logins,
            tokens: Arc::new(crate::security::jwt::ProductTokens::new(
                &config.token_issuers,
                config.token_leeway_secs,
            )?),
            leeway_ms: config.token_leeway_secs * 1000,
            refresh_ahead_ms: config.token_refresh_ahead_secs * 1000,
        },
        webhooks,
        deleted_user_messages: config.deleted_user_messages,
        metrics: metrics.clone(),
        retention: retention_settings.clone(),
        presend: match &config.presend_hook {
            Some(c) => Some(Arc::new(crate::webhooks::presend::Presend::new(c.clone())?)),
            None => None,
        },
    };
    let shared = Arc::new(Shared::new(
        ctx,
        hub.clone(),
        ConnConfig {
            handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
            auth_timeout: Duration::from_secs(config.auth_timeout_secs.max(1)),
            max_connections: config.max_connections.max(1) as usize,
            stream_idle: Duration::from_secs(config.stream_idle_secs),
            max_in_flight: config.max_requests_in_flight.max(1),
            max_per_user: config.max_connections_per_user.max(1) as usize,
            max_per_ip: config.max_connections_per_ip.max(1) as usize,
            retry_above_handshakes: config.quic_retry_above_handshakes as usize,
            stream_queue: config.session_ring.max(1) * 2 + 64,
            limits: config.wire_limits(),
        },
    ));

    let live_cert = tls::LiveCert::new(&identity, shared.ctx.metrics.tls_full_handshakes.clone())?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(&live_cert)?)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(Arc::new(quic::transport_config(
        Duration::from_secs(config.idle_timeout_secs),
        config.max_upload_streams,
    )));
    // A reset key that survives restarts: the clients of a restarted node learn at once
    // that their connection is gone (security/reset.rs).
    let endpoint_config = crate::security::reset::endpoint_config(&config.data_dir, &config.node_id)?;
    let socket = std::net::UdpSocket::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    shared.ctx.metrics.watch_udp_socket(&socket);
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("binding {}", config.listen))?;
    let addr = endpoint.local_addr()?;

    let mut tasks = vec![
        tokio::spawn(quic::accept_loop(endpoint.clone(), shared.clone())),
        tokio::spawn(chat_first.run_probe()),
        tokio::spawn(push.run()),
    ];
    if let Some(search) = &search {
        tasks.push(tokio::spawn(search.clone().run()));
    }

    let idle = Duration::from_secs(config.idle_timeout_secs);
    let pem = config.tls_cert.as_deref().zip(config.tls_key.as_deref());
    let webtransport = match config.webtransport_listen {
        Some(addr) => {
            // Its own stable reset key too, so browsers of a restarted node learn at once.
            let keys =
                crate::security::reset::endpoint_config(&config.data_dir, &format!("{}|webtransport", config.node_id))?;
            let wt =
                crate::transport::webtransport::WtEndpoint::bind(addr, pem, config.webtransport_cert_days, idle, keys)
                    .await
                    .with_context(|| format!("binding WebTransport on {addr}"))?;
            Some(Arc::new(wt))
        }
        None => None,
    };
    if let Some(wt) = &webtransport {
        tasks.push(tokio::spawn(wt.clone().accept_loop(Arc::downgrade(&shared))));
        let renew = Duration::from_secs(config.webtransport_cert_renew_secs.max(1));
        let wt = wt.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(renew).await;
                if let Err(e) = wt.renew() {
                    tracing::error!(error = %e, "renewing the WebTransport certificate failed");
                }
            }
        }));
    }
    let (web_addr, web_tls) = match config.web_listen {
        Some(addr) => {
            let tls = if config.web_tls.enabled_for(addr)? {
                Some(tls::server_config(&live_cert)?)
            } else {
                None
            };
            if !config.web_root.join("pkg/natter_wasm_bg.wasm").exists() {
                tracing::warn!(
                    root = %config.web_root.display(),
                    "no web chat to serve (build it with sdk-wasm/build.sh, or run scripts/serve.sh)"
                );
            }
            let wt_info = webtransport.as_ref().map(|wt| (wt.addr.port(), wt.certs.clone()));
            let web = crate::transport::web::WebEndpoint::bind(
                addr,
                tls,
                config.web_root.clone(),
                Arc::downgrade(&shared),
                wt_info,
            )
            .await
            .with_context(|| format!("binding the web endpoint on {addr}"))?;
            let bound = (Some(web.addr), web.tls);
            tasks.push(tokio::spawn(web.serve()));
            bound
        }
        None => (None, false),
    };
    let drain_requests = Arc::new(tokio::sync::Notify::new());
    let readiness = Arc::new(crate::ops::Readiness::new(readiness_checks(
        config,
        &shared.ctx.store,
        cluster.clone(),
        &live_cert,
    )));
    let ops_addr = match config.ops_listen {
        Some(addr) => {
            let hub = hub.clone();
            let ops = crate::transport::ops_http::Ops {
                metrics: metrics.clone(),
                readiness: readiness.clone(),
                attached_sessions: Arc::new(move || hub.attached_sessions()),
            };
            let admin = crate::transport::ops_admin::Admin {
                shared: Arc::downgrade(&shared),
                backup: sled.clone().map(|s| (s, local_media_dir(config))),
                drain: drain_requests.clone(),
                readiness: readiness.clone(),
                node_id: cluster.as_ref().map_or("single".into(), |c| c.node_id().to_string()),
                started_ms: crate::clock::now_ms(),
            };
            let endpoint = crate::transport::ops_http::OpsEndpoint::bind(addr, ops, admin)
                .await
                .with_context(|| format!("binding the ops listener on {addr}"))?;
            let bound = endpoint.addr;
            tasks.push(tokio::spawn(endpoint.serve()));
            Some(bound)
        }
        None => None,
    };
    tasks.push(tokio::spawn(presence.run(PublishPresence(Arc::downgrade(&shared)))));
    let housekeeping = Arc::downgrade(&shared);
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            hub.sweep();
            if let Some(shared) = housekeeping.upgrade() {
                shared.ctx.rates.retain_recent();
                if let Some(search) = &shared.ctx.search {
                    shared.ctx.metrics.search_index_lag.set(search.lag_ms() as f64 / 1000.0);
                }
            }
        }
    }));
    // Unfinished uploads are deleted once expired: checked at half the expiry, at least
    // once a minute.
    let sweeping = Arc::downgrade(&shared);
    let every = Duration::from_secs(u64::from(config.upload_expiry_secs / 2).clamp(1, 60));
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(shared) = sweeping.upgrade() else { return };
            match shared.ctx.media.sweep(crate::clock::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(n, "deleted expired uploads"),
                Err(e) => tracing::warn!(error = %e.message, "sweeping expired uploads failed"),
            }
        }
    }));
    let retention = Retention::new(
        shared.ctx.store.clone(),
        shared.ctx.media.clone(),
        search.clone(),
        retention_settings,
        metrics.clone(),
    );
    tasks.push(tokio::spawn(retention.clone().run()));
    Ok(RunningServer {
        retention,
        backup: sled.map(|s| (s, local_media_dir(config))),
        drain_requests,
        addr,
        fingerprint: identity.fingerprint,
        webtransport_addr: webtransport.as_ref().map(|wt| wt.addr),
        web_addr,
        web_tls,
        ops_addr,
        readiness,
        live_cert,
        running: std::sync::Mutex::new(config.clone()),
        webtransport,
        endpoint,
        shared,
        cluster,
        store: weak_store,
        tasks,
    })
}

impl RunningServer {
    /// Sessions with a live connection.
    pub fn attached_sessions(&self) -> usize {
        self.shared.hub.attached_sessions()
    }

    /// Hex SHA-256 hashes browsers pass as `serverCertificateHashes` for WebTransport.
    pub fn webtransport_cert_hashes(&self) -> Vec<String> {
        self.webtransport
            .as_ref()
            .map(|wt| wt.certs.hashes())
            .unwrap_or_default()
    }

    /// Renew the generated WebTransport certificate now (as the timer does).
    pub fn renew_webtransport_cert(&self) -> anyhow::Result<()> {
        match &self.webtransport {
            Some(wt) => wt.renew(),
            None => Ok(()),
        }
    }

    /// Open an in-process connection (no sockets, no TLS) served like any other.
    pub fn connect_in_process(&self) -> crate::transport::mem::MemClient {
        crate::transport::mem::connect(self.shared.clone())
    }

    /// Stop accepting WebTransport (existing sessions close too); browsers fall back to
    /// WebSocket. For draining UDP and for tests.
    pub async fn stop_webtransport(&self) {
        if let Some(wt) = &self.webtransport {
            wt.close().await;
        }
    }

    /// Close every connection of `user` as a network failure would (their sessions stay
    /// resumable). For operators (a ban takes revocation too) and tests.
    pub fn disconnect_user(&self, user: natter_protocol::UserId) -> usize {
        self.shared.hub.disconnect_user(user)
    }

    /// Wait until this node's search index has `conversation` through `seq` (tests and
    /// tools synchronise on it instead of sleeping). Returns at once without search.
    pub async fn search_indexed_through(&self, conversation: natter_protocol::ConversationId, seq: u64) {
        if let Some(search) = &self.shared.ctx.search {
            search.indexed_through(conversation, seq).await;
        }
    }

    /// This node's id in a multi-node deployment; "single" on sled.
    pub fn node_id(&self) -> &str {
        self.cluster.as_ref().map_or("single", |c| c.node_id())
    }

    /// Apply what can change while running (SIGHUP): the TLS certificate and key (new
    /// connections get them; connections already made go on), the rate limits, the log
    /// filter (the binary applies it; reported here) — and report every other setting that
    /// changed, which takes effect only after a restart. A certificate that does not load
    /// fails the whole reload, and nothing changes.
    pub fn reload(&self, new: &Config) -> anyhow::Result<Reloaded> {
        let mut running = self.running.lock().expect("config lock");
        let mut out = Reloaded::default();
        let identity = match (&new.tls_cert, &new.tls_key) {
            (Some(c), Some(k)) => Some(tls::load(c, k)?),
            (None, None) => None,
            _ => anyhow::bail!("tls_cert and tls_key go together"),
        };
        if let Some(id) = identity {
            if id.fingerprint != self.live_cert.fingerprint() {
                self.live_cert.replace(&id)?;
                out.applied.push(format!("tls certificate (sha256 {})", id.fingerprint));
                // WebTransport has an endpoint of its own with the same certificate.
                if let Some(wt) = &self.webtransport {
                    match wt.replace_identity(&id) {
                        Ok(true) => out.applied.push("webtransport certificate".into()),
                        Ok(false) => {}
                        Err(e) => out.need_restart.push(format!("webtransport_listen (certificate: {e})")),
                    }
                }
            }
        } else if running.tls_cert.is_some() {
            out.need_restart.push("tls_cert".into());
        }
        if new.rates != running.rates {
            self.shared.ctx.rates.reconfigure(&new.rates);
            out.applied.push("rates".into());
        }
        if new.log != running.log {
            out.applied.push(format!("log ({})", new.log));
        }
        if new.retention != running.retention {
            *self.shared.ctx.retention.write().expect("retention settings") = new.retention;
            out.applied.push("retention".into());
        }
        let live = ["tls_cert", "tls_key", "rates", "log", "retention"];
        let (was, now) = (toml::Table::try_from(&*running)?, toml::Table::try_from(new)?);
        let mut keys: Vec<&String> = was.keys().chain(now.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if !live.contains(&k.as_str()) && was.get(k) != now.get(k) {
                out.need_restart.push(k.clone());
            }
        }
        // What now runs: the live settings as applied (a removed certificate stays until
        // the restart it needs).
        if !out.need_restart.iter().any(|k| k == "tls_cert") {
            running.tls_cert = new.tls_cert.clone();
            running.tls_key = new.tls_key.clone();
        }
        running.rates = new.rates.clone();
        running.log = new.log.clone();
        running.retention = new.retention;
        Ok(out)
    }

    /// Take a backup of the embedded store and local media into `to`, a new or empty
    /// directory, while serving (docs/OPERATIONS.md): what `POST /admin/v1/backup` does.
    pub async fn backup(&self, to: &std::path::Path) -> anyhow::Result<crate::store::backup::Manifest> {
        let Some((store, media)) = &self.backup else {
            anyhow::bail!("this node stores in Redis: back it up with Redis's own tools");
        };
        Ok(crate::store::backup::take(store, media.as_deref(), to, crate::clock::now_ms()).await?)
    }

    /// Resolves when an operator asks this node to drain (`natter-server admin drain`); the
    /// owner of the server then drains it as on SIGTERM.
    pub async fn drain_requested(&self) {
        self.drain_requests.notified().await
    }

    /// Run a retention sweep (PROTOCOL.md §5.17) as the periodic one does, as if it were
    /// `now_ms` (ms since the epoch; the periodic one uses the clock).
    pub async fn sweep_retention(&self, now_ms: u64) -> anyhow::Result<Swept> {
        Ok(self.retention.sweep(now_ms).await?)
    }

    /// Turn `/readyz` to 503 (the first step of a planned stop: load balancers stop sending
    /// new connections before [`RunningServer::drain`] tells the clients to move).
    pub fn stop_being_ready(&self) {
        self.readiness.set_draining();
    }

    /// Drain before a planned stop (SIGTERM), one sequence for every connection of every
    /// transport, authenticated or not (PROTOCOL.md §7.6): refuse new QUIC connections,
    /// tell every client to reconnect (a `GoAway`; with several nodes their SDKs move to
    /// another), wait up to `grace` for them to go, close the rest with `SHUTTING_DOWN`
    /// (a `ConnectionError` first; WebSocket 4019), then leave the cluster so nothing
    /// more is routed here. Sends in flight are retried by the clients on their new node
    /// (idempotent, no loss).
    pub async fn drain(&self, grace: Duration) {
        self.readiness.set_draining();
        self.endpoint.set_server_config(None);
        self.shared.stop_admitting();
        let frame = natter_protocol::codec::encode_frame(&natter_protocol::pb::Frame {
            kind: Some(natter_protocol::pb::frame::Kind::GoAway(natter_protocol::pb::GoAway {
                reason: "node draining".into(),
                reconnect_after_ms: 0,
            })),
        });
        let told = self.shared.tell_all(frame);
        tracing::info!(connections = told, "draining: clients told to reconnect");
        let until = tokio::time::Instant::now() + grace;
        while self.shared.live_connections() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let closed = self
            .shared
            .close_all(natter_protocol::pb::ErrorCode::ShuttingDown, "server stopping");
        if closed > 0 {
            tracing::info!(connections = closed, "draining: closing the connections that stayed");
        }
        // Each close lets its ConnectionError out and waits briefly for the client.
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        while self.shared.live_connections() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop_webtransport().await;
        if let Some(cluster) = &self.cluster {
            // Bounded: a node draining because Redis is gone must still stop.
            let users = self.shared.hub.local_users();
            match tokio::time::timeout(Duration::from_secs(2), cluster.leave(&users)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "draining: leaving the cluster failed"),
                Err(_) => tracing::warn!("draining: Redis did not answer; the registry entry will expire"),
            }
        }
    }

    /// Fault injection (feature `faults`, tests only): while `on`, committed messages are not
    /// delivered live. Proves that client tests fail when delivery fails.
    #[cfg(feature = "faults")]
    pub fn set_withhold_messages(&self, on: bool) {
        self.shared.hub.set_withhold_messages(on);
    }

    /// Close every connection and stop. Returns once the store is closed (its directory
    /// can be opened again), or after 10 s if some task still holds it.
    pub async fn shutdown(self) {
        let RunningServer {
            endpoint,
            shared,
            store,
            tasks,
            webtransport,
            cluster,
            retention,
            backup,
            readiness,
            ..
        } = self;
        // What holds the store and is not a task goes first: a field left to the end of
        // this function would hold sled's directory lock through the wait below (it once
        // made every shutdown wait the full 10 s).
        drop((retention, backup, readiness));
        if let Some(cluster) = &cluster {
            cluster.stop();
        }
        if let Some(wt) = &webtransport {
            wt.close().await;
        }
        let code = quinn::VarInt::from_u32(natter_protocol::pb::ErrorCode::ShuttingDown as u32);
        endpoint.close(code, b"shutting down");
        for t in &tasks {
            t.abort();
        }
        // The search index's directory lock goes now, whoever still holds the index.
        if let Some(search) = &shared.ctx.search {
            search.close();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        drop(shared);
        // Connection and shard tasks wind down as their connections and queues close; the
        // store (and sled's directory lock) goes with the last of them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What `/readyz` checks: a store write within its bound (a full disk, a lost Redis), the
/// cluster's bus subscription and registration (several nodes), the certificate's expiry.
fn readiness_checks(
    config: &Config,
    store: &Arc<dyn Store>,
    cluster: Option<Arc<Cluster>>,
    cert: &Arc<tls::LiveCert>,
) -> Vec<Box<dyn crate::ops::Check>> {
    let mut checks: Vec<Box<dyn crate::ops::Check>> = vec![Box::new(StoreProbe(Arc::downgrade(store)))];
    if let Some(cluster) = cluster {
        checks.push(Box::new(ClusterCheck(Arc::downgrade(&cluster))));
    }
    checks.push(Box::new(CertificateCheck {
        cert: cert.clone(),
        min_valid: Duration::from_secs(config.cert_min_valid_days * 86_400),
    }));
    checks
}

/// A small durable write: what every send needs from the store.
struct StoreProbe(std::sync::Weak<dyn Store>);

#[async_trait::async_trait]
impl crate::ops::Check for StoreProbe {
    fn name(&self) -> &'static str {
        "store"
    }
    async fn check(&self) -> Result<(), String> {
        let store = self.0.upgrade().ok_or("the store is closed")?;
        crate::store::docs::set(&*store, "ops-probe", "readyz", &crate::clock::now_ms())
            .await
            .map_err(|e| format!("a write failed: {e}"))
    }
}

/// The bus subscription and this node's registration in the node registry.
struct ClusterCheck(std::sync::Weak<Cluster>);

#[async_trait::async_trait]
impl crate::ops::Check for ClusterCheck {
    fn name(&self) -> &'static str {
        "cluster"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.upgrade().ok_or("the cluster is stopped")?.health()
    }
}

/// The TLS certificate (as reloaded) is valid for a while yet.
struct CertificateCheck {
    cert: Arc<tls::LiveCert>,
    min_valid: Duration,
}

#[async_trait::async_trait]
impl crate::ops::Check for CertificateCheck {
    fn name(&self) -> &'static str {
        "certificate"
    }
    async fn check(&self) -> Result<(), String> {
        let not_after = self.cert.not_after().ok_or("the certificate's expiry is unreadable")?;
        let left = not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        if left < self.min_valid {
            return Err(format!(
                "the certificate expires in {} h (renew it; readiness wants {} days)",
                left.as_secs() / 3600,
                self.min_valid.as_secs() / 86_400
            ));
        }
        Ok(())
    }
}

/// Where media bytes go: the configured S3-compatible bucket, else `media_dir`.
fn media_store(config: &Config) -> anyhow::Result<Arc<dyn crate::media::MediaStore>> {
    use crate::media::{ObjectMediaStore, S3Settings};
    if let Some(s3) = &config.s3 {
        let secret = std::env::var("NATTER_S3_SECRET_KEY").unwrap_or_else(|_| s3.secret_key.0.clone());
        let settings = S3Settings {
            endpoint: s3.endpoint.clone(),
            bucket: s3.bucket.clone(),
            region: if s3.region.is_empty() {
                "us-east-1".into()
            } else {
                s3.region.clone()
            },
            access_key: s3.access_key.clone(),
            secret_key: secret,
        };
        return Ok(Arc::new(ObjectMediaStore::s3(&settings)?));
    }
    if config.storage == crate::config::Storage::Redis {
        tracing::warn!("storage = redis without [s3]: media stays on this node's disk, so other nodes cannot serve it");
    }
    let dir = config
        .media_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("media"));
    Ok(Arc::new(ObjectMediaStore::local(&dir)?))
}

/// The configured store (and the Redis connection, when it is Redis), as the server opens
/// it; also for the offline subcommands (`natter-server api-key`). The embedded store is
/// locked by a running server: stop it first, or use the server API.
pub async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn Store>, Option<RedisConn>)> {
    let (store, redis, _) = open_store_parts(config).await?;
    Ok((store, redis))
}

/// [`open_store`], and the embedded store as itself (backups need it).
async fn open_store_parts(
    config: &Config,
) -> anyhow::Result<(Arc<dyn Store>, Option<RedisConn>, Option<Arc<SledStore>>)> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    Ok(match config.storage {
        Storage::Sled => {
            let sled = Arc::new(SledStore::open_with_reserve(
                &config.data_dir.join("db"),
                config.disk_reserve_bytes,
            )?);
            (sled.clone(), None, Some(sled))
        }
        Storage::Redis => {
            let conn = RedisConn::connect(
                &config.redis_urls,
                config.redis_cluster,
                std::time::Duration::from_millis(config.redis_wait_timeout_ms),
            )
            .await
            .with_context(|| format!("connecting to Redis at {:?}", config.redis_urls))?;
            let durability = Durability {
                replicas: config.redis_wait_replicas,
                timeout_ms: config.redis_wait_timeout_ms,
            };
            (
                Arc::new(RedisStore::with_durability(conn.clone(), durability)),
                Some(conn),
                None,
            )
        }
    })
}

/// Where media bytes are on this machine, when they are not in S3.
fn local_media_dir(config: &Config) -> Option<std::path::PathBuf> {
    config.s3.is_none().then(|| {
        config
            .media_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("media"))
    })
}
