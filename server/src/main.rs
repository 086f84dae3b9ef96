//! `natter-server`: run the server. Configuration: `--config natter.toml`, then flags and
//! `NATTER_*` environment variables on top.
use std::net::SocketAddr;
use std::path::PathBuf;

use std::io::Write;

use clap::Parser;
use natter_server::Config;

#[path = "main/admin.rs"]
mod admin;

/// mimalloc rather than glibc's malloc: glibc's allocator (its chunk consolidation
/// above all) took about a tenth of the server's CPU in a fan-out; mimalloc cut the CPU
/// per delivery by ~18 % for ~6 % more memory per idle connection (transparent huge pages
/// off, or it would be far more). Measured in bench/RESULTS.md, "Fourth pass".
/// (The `system-alloc` feature keeps glibc's, for heaptrack; bench/run.sh.)
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// natter chat server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "NATTER_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address to listen on (default 127.0.0.1:4433).
    #[arg(long, env = "NATTER_LISTEN")]
    listen: Option<SocketAddr>,
    /// TCP address of the web endpoint: chat page, /natter.json, WebSocket /ws (default
    /// 127.0.0.1:8080; "off" disables it).
    #[arg(long, env = "NATTER_WEB_LISTEN")]
    web_listen: Option<String>,
    /// UDP address for WebTransport (default 127.0.0.1:4434; "off" disables it).
    #[arg(long, env = "NATTER_WEBTRANSPORT_LISTEN")]
    webtransport_listen: Option<String>,
    /// TCP address of the ops listener: /livez, /readyz, /metrics (default 127.0.0.1:9100;
    /// "off" disables it). Keep it off the public network.
    #[arg(long, env = "NATTER_OPS_LISTEN")]
    ops_listen: Option<String>,
    /// Log lines as "text" (default) or "json" (one object per line).
    #[arg(long, env = "NATTER_LOG_FORMAT")]
    log_format: Option<String>,
    /// Seconds between SIGTERM turning /readyz to 503 and the drain (default 5).
    #[arg(long, env = "NATTER_READY_GRACE_SECS")]
    ready_grace_secs: Option<u64>,
    /// Folder with the chat page (default ./web).
    #[arg(long, env = "NATTER_WEB_ROOT")]
    web_root: Option<PathBuf>,
    /// Data directory (default ./data).
    #[arg(long, env = "NATTER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Conversation shards (default: one per core).
    #[arg(long, env = "NATTER_SHARDS")]
    shards: Option<usize>,
    /// Seconds a disconnected session stays resumable.
    #[arg(long, env = "NATTER_RESUME_WINDOW_SECS")]
    resume_window_secs: Option<u32>,
    /// Log filter, e.g. "info" or "natter_server=debug".
    #[arg(long, env = "NATTER_LOG")]
    log: Option<String>,
    /// Storage backend: "sled" (default, one node) or "redis" (several nodes).
    #[arg(long, env = "NATTER_STORAGE")]
    storage: Option<String>,
    /// Redis URL(s), comma-separated (a cluster's seed nodes with --redis-cluster).
    #[arg(long, env = "NATTER_REDIS", value_delimiter = ',')]
    redis: Option<Vec<String>>,
    /// The Redis URLs are a Redis Cluster.
    #[arg(long, env = "NATTER_REDIS_CLUSTER")]
    redis_cluster: bool,
    /// Redis replicas that must confirm each write before it is acknowledged (default 0).
    #[arg(long, env = "NATTER_REDIS_WAIT_REPLICAS")]
    redis_wait_replicas: Option<u32>,
    /// How long a write waits for those replicas, in ms (default 1000).
    #[arg(long, env = "NATTER_REDIS_WAIT_TIMEOUT_MS")]
    redis_wait_timeout_ms: Option<u64>,
    /// This node's id (default: host name and process id).
    #[arg(long, env = "NATTER_NODE_ID")]
    node_id: Option<String>,
    /// Free disk space (bytes) the embedded store keeps in reserve (default: 5 % of the
    /// disk, 1–256 MiB; 0: none).
    #[arg(long, env = "NATTER_DISK_RESERVE_BYTES")]
    disk_reserve_bytes: Option<u64>,
    /// Without a subcommand: run the server.
    #[command(subcommand)]
    cmd: Option<Sub>,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum Sub {
    /// API keys of the server API (on the configured store; the embedded one only while
    /// the server is stopped — a running server takes admin keys at /api/v1/keys).
    #[command(subcommand)]
    ApiKey(ApiKeyCmd),
    /// Print the server API's OpenAPI document.
    Openapi,
    /// The configuration: `--print-defaults` prints every key with its default (TOML), the
    /// reference docs/CONFIG.md explains; without it, the configuration this command line
    /// and file would run with.
    Config {
        #[arg(long)]
        print_defaults: bool,
    },
    /// Exit 0 when the node's /readyz answers 200, 1 otherwise, printing its answer: for
    /// health checks that have no HTTP client (the Dockerfile's HEALTHCHECK).
    Ready {
        /// The ops listener's address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        ops: SocketAddr,
    },
    /// Operate a running node through its ops listener: users, devices, conversations, API
    /// keys, live stats, drain (docs/OPERATIONS.md, "The admin CLI").
    Admin {
        #[command(flatten)]
        target: admin::Target,
        #[command(subcommand)]
        cmd: admin::AdminCmd,
    },
    /// Back a running node's embedded store and local media up into DIR (new or empty, on
    /// the node's machine), consistent as of one moment; writes pause while it copies.
    Backup {
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        target: admin::Target,
    },
    /// Check a backup: every file against its manifest, and every conversation's log whole.
    Verify {
        #[arg(long)]
        from: PathBuf,
    },
    /// Restore a checked backup into this configuration's data directory (the node
    /// stopped). A data directory that holds a database needs --force, and the old one is
    /// moved aside, not deleted.
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
enum ApiKeyCmd {
    /// Make a key; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long, default_value = "write")]
        scope: String,
    },
    /// Every key (never their secrets).
    List,
    /// Revoke a key by its id.
    Revoke { id: String },
}

/// One offline subcommand, as JSON lines.
async fn subcommand(config: &Config, cmd: Sub) -> anyhow::Result<()> {
    use natter_server::api::access;
    let key_json = |k: &access::ApiKey| {
        serde_json::json!({"id": k.id, "name": k.name, "scope": format!("{:?}", k.scope).to_lowercase(),
            "created_ms": k.created_ms, "revoked": k.revoked})
    };
    match cmd {
        Sub::Openapi => print!("{}", natter_server::transport::http_api::openapi_json()),
        Sub::Admin { target, cmd } => admin::admin(&target, cmd).await?,
        Sub::Backup { to, target } => admin::backup(&target, to).await?,
        Sub::Verify { from } => {
            let m = tokio::task::spawn_blocking(move || natter_server::store::backup::verify(&from)).await??;
            println!(
                "{}",
                serde_json::json!({"verified": true, "created_ms": m.created_ms, "conversations": m.conversations,
                    "events": m.events, "files": m.files.len()})
            );
        }
        Sub::Restore { from, force } => {
            let (data, media) = (
                config.data_dir.clone(),
                config
                    .media_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("media")),
            );
            let now = natter_server::clock::now_ms();
            let m = tokio::task::spawn_blocking(move || {
                natter_server::store::backup::restore(&from, &data, &media, force, now)
            })
            .await??;
            println!(
                "{}",
                serde_json::json!({"restored": true, "created_ms": m.created_ms, "conversations": m.conversations,
                    "events": m.events, "data_dir": config.data_dir})
            );
        }
        Sub::Ready { ops } => {
            let (status, body) = readyz(ops)?;
            println!("{body}");
            if status != 200 {
                anyhow::bail!("not ready (HTTP {status})");
            }
        }
        Sub::Config { print_defaults } => {
            let shown = if print_defaults {
                Config::default()
            } else {
                config.clone()
            };
            print!("{}", toml::to_string(&shown)?);
        }
        Sub::ApiKey(cmd) => {
            let (store, _) = natter_server::app::open_store(config).await?;
            match cmd {
                ApiKeyCmd::Create { name, scope } => {
                    let scope = scope.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                    let new = access::create(&*store, &name, scope, natter_server::clock::now_ms())
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let mut out = key_json(&new.key);
                    out["secret"] = new.secret.0.into();
                    println!("{out}");
                }
                ApiKeyCmd::List => {
                    for k in access::list(&*store).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                        println!("{}", key_json(&k));
                    }
                }
                ApiKeyCmd::Revoke { id } => {
                    if !access::revoke(&*store, &id).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                        anyhow::bail!("no live key {id:?}");
                    }
                    println!("{}", serde_json::json!({"revoked": id}));
                }
            }
        }
    }
    Ok(())
}

/// The configuration: the file, then flags and environment variables on top. Read again
/// on SIGHUP.
fn build_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.web_listen.clone() {
        config.web_listen = optional_addr(&v)?;
    }
    if let Some(v) = args.ops_listen.clone() {
        config.ops_listen = optional_addr(&v)?;
    }
    if let Some(v) = args.ready_grace_secs {
        config.ready_grace_secs = v;
    }
    if let Some(v) = args.webtransport_listen.clone() {
        config.webtransport_listen = optional_addr(&v)?;
    }
    if let Some(v) = args.web_root.clone() {
        config.web_root = v;
    }
    if let Some(v) = args.data_dir.clone() {
        config.data_dir = v;
    }
    if let Some(v) = args.shards {
        config.shards = v;
    }
    if let Some(v) = args.disk_reserve_bytes {
        config.disk_reserve_bytes = Some(v);
    }
    if let Some(v) = args.resume_window_secs {
        config.resume_window_secs = v;
    }
    if let Some(v) = args.log.clone() {
        config.log = v;
    }
    if let Some(v) = args.storage.clone() {
        config.storage = match v.as_str() {
            "sled" => natter_server::config::Storage::Sled,
            "redis" => natter_server::config::Storage::Redis,
            other => anyhow::bail!("--storage {other:?}: expected sled or redis"),
        };
    }
    if let Some(v) = args.redis.clone() {
        config.redis_urls = v;
    }
    if args.redis_cluster {
        config.redis_cluster = true;
    }
    if let Some(v) = args.redis_wait_replicas {
        config.redis_wait_replicas = v;
    }
    if let Some(v) = args.redis_wait_timeout_ms {
        config.redis_wait_timeout_ms = v;
    }
    if let Some(v) = args.node_id.clone() {
        config.node_id = v;
    }
    if let Some(v) = &args.log_format {
        config.log_format = v.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    }
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = build_config(&args)?;
    let log = logging(&config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(cmd) = args.cmd.clone() {
        return rt.block_on(subcommand(&config, cmd));
    }
    rt.block_on(async {
        let server = natter_server::start(&config).await?;
        // Machine-readable first lines: tests and scripts read the address and fingerprint.
        // Written with errors ignored: a closed stdout must not take the server down.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "natter-server listening on {}", server.addr);
        let _ = writeln!(out, "certificate sha256 {}", server.fingerprint);
        if let Some(addr) = server.webtransport_addr {
            let _ = writeln!(out, "webtransport listening on {addr}");
        }
        if let Some(addr) = server.web_addr {
            let scheme = if server.web_tls { "https" } else { "http" };
            let _ = writeln!(
                out,
                "web chat on {scheme}://{addr}/ (serving {})",
                config.web_root.display()
            );
        }
        if let Some(addr) = server.ops_addr {
            let _ = writeln!(out, "ops listening on http://{addr}/ (livez, readyz, metrics)");
        }
        let _ = writeln!(out, "data dir {}", config.data_dir.display());
        let _ = out.flush();
        let _ = writeln!(out, "node {}", server.node_id());
        let _ = out.flush();
        // SIGHUP: read the configuration again and apply what can change live.
        let reloads = async {
            #[cfg(unix)]
            {
                let mut hup =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP handler");
                while hup.recv().await.is_some() {
                    reload(&args, &server, &log);
                }
            }
            std::future::pending::<()>().await
        };
        let mut reloads = Box::pin(reloads);
        let asked = tokio::select! {
            _ = shutdown_signal() => false,
            _ = &mut reloads => false,
            _ = server.drain_requested() => true,
        };
        if asked {
            tracing::info!("an operator asked this node to drain");
        }
        // Not ready first, so load balancers stop sending new connections; then drain:
        // clients are told to reconnect (to another node, when there is one) and given
        // time to go before the endpoint closes.
        server.stop_being_ready();
        tracing::info!(
            grace_secs = config.ready_grace_secs,
            "not ready; draining after the grace period"
        );
        tokio::time::sleep(std::time::Duration::from_secs(config.ready_grace_secs)).await;
        tracing::info!("draining");
        server.drain(std::time::Duration::from_secs(config.drain_secs)).await;
        if asked {
            // Drained on request: nothing is served any more; stop when told to.
            tracing::info!("drained; stopping on SIGTERM");
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = &mut reloads => {}
            }
        }
        tracing::info!("shutting down");
        drop(reloads);
        server.shutdown().await;
        anyhow::Ok(())
    })
}

/// GET /readyz on the ops listener (plain HTTP/1.0, 3 s bound): status and body.
fn readyz(ops: SocketAddr) -> anyhow::Result<(u16, String)> {
    use std::io::Read;
    let bound = std::time::Duration::from_secs(3);
    let mut tcp = std::net::TcpStream::connect_timeout(&ops, bound)?;
    tcp.set_read_timeout(Some(bound))?;
    tcp.set_write_timeout(Some(bound))?;
    write!(tcp, "GET /readyz HTTP/1.0\r\nHost: {ops}\r\n\r\n")?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer from {ops}"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

/// Logs to stderr, as text or JSON lines (`log_format`); the filter can change on SIGHUP.
fn logging(config: &Config) -> anyhow::Result<LogFilter> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::try_new(&config.log)?);
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        natter_server::config::LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
        natter_server::config::LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    Ok(handle)
}

type LogFilter = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// SIGHUP: the configuration again, applied where it can be; what needs a restart is
/// logged. A configuration that does not load changes nothing.
fn reload(args: &Args, server: &natter_server::RunningServer, log: &LogFilter) {
    let outcome = build_config(args).and_then(|new| {
        let done = server.reload(&new)?;
        if done.applied.iter().any(|a| a.starts_with("log ")) {
            let filter = tracing_subscriber::EnvFilter::try_new(&new.log)?;
            log.modify(|f| *f = filter)?;
        }
        Ok(done)
    });
    match outcome {
        Ok(done) => tracing::warn!(
            applied = ?done.applied,
            need_restart = ?done.need_restart,
            "configuration reloaded"
        ),
        Err(e) => tracing::error!(error = %e, "reload refused; nothing changed"),
    }
}

fn optional_addr(v: &str) -> anyhow::Result<Option<SocketAddr>> {
    if v == "off" {
        return Ok(None);
    }
    Ok(Some(v.parse().map_err(|e| anyhow::anyhow!("{v:?}: {e}"))?))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
