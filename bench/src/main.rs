//! `natter-bench <scenario>`: run one scenario against a running server and print a JSON
//! report (stdout, or `--json FILE`) plus a one-line summary (stderr). See bench/RESULTS.md
//! for the commands behind the published figures.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use natter_bench::{
    ApiOpts, ConnectionsOpts, DmOpts, FanoutOpts, HandshakesOpts, HistoryOpts, MediaOpts, PushOpts, Target,
};

/// The same allocator as the server (its fan-out spent a tenth of its CPU in glibc's
/// malloc); the generator plays every client and every peer's client on one core.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(version, about = "Load generator for natter")]
struct Args {
    /// Server UDP address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: SocketAddr,
    /// The server's certificate fingerprint (printed at start; not needed for the peers).
    #[arg(long, default_value = "")]
    fingerprint: String,
    /// The server's pid, for CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Groups with senders at a fixed rate; end-to-end latency per delivery.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 100)]
        group_size: usize,
        #[arg(long, default_value_t = 1)]
        senders: usize,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// 1:1 conversations, both sides sending.
    Dm {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// End-to-end encrypted conversations.
        #[arg(long)]
        encrypted: bool,
        /// Search freshness probes during the run (0: none).
        #[arg(long, default_value_t = 0)]
        search_probes: usize,
    },
    /// Hold many authenticated connections; memory per connection; delivery while held.
    Connections {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 1000)]
        per_socket: usize,
        #[arg(long, default_value_t = 256)]
        parallel: usize,
        #[arg(long, default_value_t = 200)]
        probes: usize,
        /// Seconds of quiet over which the server's idle CPU is measured.
        #[arg(long, default_value_t = 10.0)]
        idle_secs: f64,
        /// Log in as the users a `register --prefix P` run made (`bench/run.sh` does this
        /// with a server restart between, for `connections … --existing`), instead of
        /// registering new ones.
        #[arg(long)]
        existing: Option<String>,
    },
    /// Register users `<prefix>u0`, `<prefix>u1`, … for a later `connections --existing`.
    Register {
        #[arg(long)]
        users: usize,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 256)]
        parallel: usize,
    },
    /// Connections set up per second with authentication (QUIC + TLS handshake, Hello,
    /// Authenticate with a token), full or resumed TLS.
    Handshakes {
        /// Connections being set up at once (each its own device).
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Present the previous connection's TLS session ticket.
        #[arg(long)]
        resumed: bool,
    },
    /// The fan-out scenario against a peer broker (NATS or MQTT) instead of natter.
    PeerFanout {
        /// nats or mqtt.
        #[arg(long)]
        broker: String,
        /// The broker's address (default: 127.0.0.1:4222 for NATS, 127.0.0.1:1883 for MQTT).
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 100)]
        group_size: usize,
        #[arg(long, default_value_t = 1)]
        senders: usize,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// The idle-connections scenario against a peer broker.
    PeerConnections {
        #[arg(long)]
        broker: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 200)]
        probes: usize,
        #[arg(long, default_value_t = 10.0)]
        idle_secs: f64,
    },
    /// Page through a conversation with many stored messages.
    History {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        pages: usize,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        #[arg(long, default_value_t = 512)]
        window: usize,
    },
    /// The server API next to the SDK: the same senders and rate into a channel, through
    /// natter-sdk and through POST /api/v1/.../messages; sends/s and ack latency of each.
    Api {
        /// The server's web endpoint (e.g. http://127.0.0.1:18080).
        #[arg(long)]
        web: String,
        /// A write-scoped API key (bench/run.sh makes one).
        #[arg(long, env = "NATTER_API_KEY")]
        api_key: String,
        #[arg(long, default_value_t = 20)]
        senders: usize,
        /// Sends per second on each side, all senders together.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// Upload/download throughput over QUIC next to curl over HTTP; chat p99 idle and
    /// while large uploads run.
    Media {
        #[arg(long, default_value_t = 100)]
        size_mib: u64,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// The server's web endpoint, for curl (e.g. http://127.0.0.1:18080).
        #[arg(long)]
        web: Option<String>,
        #[arg(long, default_value_t = 4)]
        loaded_uploads: usize,
        #[arg(long, default_value_t = 100)]
        loaded_upload_mib: u64,
        #[arg(long, default_value_t = 20.0)]
        chat_rate: f64,
        #[arg(long, default_value_t = 15.0)]
        chat_secs: f64,
    },
    /// Users whose one device is offline get direct messages at a rate: each a Web Push
    /// to a sink here (send → push service latency), with online pairs chatting beside.
    Push {
        #[arg(long, default_value_t = 10_000)]
        offline: usize,
        #[arg(long, default_value_t = 50)]
        senders: usize,
        /// Messages per second to the offline users, all together.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        #[arg(long, default_value_t = 50)]
        chat_pairs: usize,
        #[arg(long, default_value_t = 5.0)]
        chat_rate: f64,
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
    },
    /// The server's embedded search index on its own: index synthetic messages, then time
    /// typed queries (no server process; search_index.rs).
    SearchIndex {
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        #[arg(long, default_value_t = 10_000)]
        conversations: u64,
        #[arg(long, default_value_t = 512)]
        batch: usize,
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
        #[arg(long, default_value_t = 50)]
        scope: usize,
        #[arg(long, default_value = "target/bench-data/search-index")]
        dir: std::path::PathBuf,
    },
    /// The media scenario's uploaders (started by `media`; see media_load.rs).
    #[command(hide = true)]
    MediaLoad {
        #[arg(long)]
        uploads: usize,
        #[arg(long)]
        mib: u64,
    },
}

/// `--broker nats|mqtt` and its address.
fn broker_of(name: &str, url: Option<String>) -> anyhow::Result<natter_bench::Broker> {
    Ok(match name {
        "nats" => natter_bench::Broker::Nats(url.unwrap_or_else(|| "127.0.0.1:4222".into())),
        "mqtt" => natter_bench::Broker::Mqtt(url.unwrap_or_else(|| "127.0.0.1:1883".into())),
        other => anyhow::bail!("--broker {other:?}: nats or mqtt"),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Target {
        addr: args.server,
        fingerprint: args.fingerprint.clone(),
        server_pid: args.server_pid,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Scenario::MediaLoad { uploads, mib } = args.scenario {
        return rt.block_on(natter_bench::media_load(&target, uploads, mib));
    }
    if let Scenario::SearchIndex {
        messages,
        conversations,
        batch,
        queries,
        scope,
        dir,
    } = args.scenario
    {
        let o = natter_bench::SearchIndexOpts {
            messages,
            conversations,
            batch,
            queries,
            scope,
            dir,
        };
        let report = natter_bench::search_index(&o)?;
        let json = serde_json::to_string_pretty(&report)?;
        if let Some(path) = &args.json {
            std::fs::write(path, &json)?;
        }
        println!("{json}");
        return Ok(());
    }
    let report = rt.block_on(async {
        match args.scenario {
            Scenario::Fanout {
                users,
                group_size,
                senders,
                rate,
                secs,
            } => {
                let o = FanoutOpts {
                    users,
                    group_size,
                    senders_per_group: senders,
                    rate_per_sender: rate,
                    secs,
                };
                natter_bench::fanout(&target, &o).await
            }
            Scenario::Dm {
                pairs,
                rate,
                secs,
                encrypted,
                search_probes,
            } => {
                let o = DmOpts {
                    pairs,
                    rate_per_sender: rate,
                    secs,
                    encrypted,
                    search_probes,
                };
                natter_bench::dm(&target, &o).await
            }
            Scenario::Connections {
                connections,
                per_socket,
                parallel,
                probes,
                idle_secs,
                existing,
            } => {
                let o = ConnectionsOpts {
                    connections,
                    per_socket,
                    parallel,
                    probes,
                    idle_secs,
                    existing,
                };
                natter_bench::connections(&target, &o).await
            }
            Scenario::Register {
                users,
                prefix,
                parallel,
            } => natter_bench::register(&target, users, parallel, &prefix).await,
            Scenario::Handshakes {
                parallel,
                secs,
                resumed,
            } => {
                let o = HandshakesOpts {
                    parallel,
                    secs,
                    resumed,
                };
                natter_bench::handshakes(&target, &o).await
            }
            Scenario::PeerFanout {
                broker,
                url,
                users,
                group_size,
                senders,
                rate,
                secs,
            } => {
                let o = FanoutOpts {
                    users,
                    group_size,
                    senders_per_group: senders,
                    rate_per_sender: rate,
                    secs,
                };
                natter_bench::peer_fanout(&target, &broker_of(&broker, url)?, &o).await
            }
            Scenario::PeerConnections {
                broker,
                url,
                connections,
                probes,
                idle_secs,
            } => {
                natter_bench::peer_connections(&target, &broker_of(&broker, url)?, connections, probes, idle_secs).await
            }
            Scenario::History {
                messages,
                pages,
                page_size,
                window,
            } => {
                let o = HistoryOpts {
                    messages,
                    pages,
                    page_size,
                    window,
                };
                natter_bench::history(&target, &o).await
            }
            Scenario::Media {
                size_mib,
                repeats,
                web,
                loaded_uploads,
                loaded_upload_mib,
                chat_rate,
                chat_secs,
            } => {
                let o = MediaOpts {
                    size_mib,
                    repeats,
                    web,
                    loaded_uploads,
                    loaded_upload_mib,
                    chat_rate,
                    chat_secs,
                };
                natter_bench::media(&target, &o).await
            }
            Scenario::Push {
                offline,
                senders,
                rate,
                chat_pairs,
                chat_rate,
                secs,
            } => {
                let o = PushOpts {
                    offline,
                    senders,
                    rate,
                    chat_pairs,
                    chat_rate,
                    secs,
                };
                natter_bench::push(&target, &o).await
            }
            Scenario::Api {
                web,
                api_key,
                senders,
                rate,
                secs,
            } => {
                let o = ApiOpts {
                    web,
                    key: api_key,
                    senders,
                    rate,
                    secs,
                };
                natter_bench::api(&target, &o).await
            }
            Scenario::MediaLoad { .. } | Scenario::SearchIndex { .. } => unreachable!("handled above"),
        }
    })?;
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = args.json {
        std::fs::write(path, &json)?;
    }
    eprintln!("{}", report.summary());
    // Exit at once: thousands of clients need not say goodbye.
    std::process::exit(if report.lost == 0 && report.duplicates == 0 {
        0
    } else {
        2
    });
}
