//! Every natter-bench scenario, small and quick, against an in-process server: keeps the
//! benchmark working and asserts what it must always show — nothing lost, nothing
//! duplicated, no errors. Timing is reported, never asserted (figures live in RESULTS.md).
use natter_bench::{Broker, ConnectionsOpts, DmOpts, FanoutOpts, HistoryOpts, Report, Target};

async fn server(dir: &std::path::Path) -> natter_server::RunningServer {
    let mut cfg = natter_server::Config {
        password_hash_memory_kib: 64,
        password_hash_iterations: 1,
        ..natter_server::Config::loopback(dir)
    };
    cfg.rates.register_per_minute_per_ip = 1_000_000;
    cfg.rates.login_per_minute_per_ip = 1_000_000;
    natter_server::start(&cfg).await.unwrap()
}

fn target(s: &natter_server::RunningServer) -> Target {
    Target {
        addr: s.addr,
        fingerprint: s.fingerprint.clone(),
        server_pid: Some(std::process::id()),
    }
}

fn check(r: &Report) {
    eprintln!("{}", r.summary());
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.duplicates, 0, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.sent > 0 && r.delivered > 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_small_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let t = target(&s);
    let fanout = FanoutOpts {
        users: 20,
        group_size: 10,
        senders_per_group: 2,
        rate_per_sender: 20.0,
        secs: 1.0,
    };
    let r = natter_bench::fanout(&t, &fanout).await.unwrap();
    check(&r);
    assert_eq!(r.delivered, r.sent * 9, "every other member got every message");
    let r = natter_bench::dm(
        &t,
        &DmOpts {
            pairs: 5,
            rate_per_sender: 20.0,
            secs: 1.0,
            encrypted: false,
            search_probes: 2,
        },
    )
    .await
    .unwrap();
    check(&r);
    assert_eq!(r.delivered, r.sent);
    let fresh = &r.extra["search_freshness"];
    assert_eq!(fresh["samples"], 2, "both probes found: {fresh}");
    assert!(fresh["max_ms"].as_f64().unwrap() > 0.0);
    let sealed = DmOpts {
        pairs: 3,
        rate_per_sender: 10.0,
        secs: 1.0,
        encrypted: true,
        search_probes: 0,
    };
    let r = natter_bench::dm(&t, &sealed).await.unwrap();
    check(&r);
    assert_eq!(r.scenario, "dm-encrypted");
    assert_eq!(r.delivered, r.sent, "every sealed message opened on the other side");
    assert!(r.extra["client_cpu_us_per_message"].as_f64().unwrap() > 0.0);
    let c = ConnectionsOpts {
        connections: 50,
        per_socket: 20,
        parallel: 16,
        probes: 5,
        idle_secs: 0.2,
        existing: None,
    };
    let r = natter_bench::connections(&t, &c).await.unwrap();
    check(&r);
    assert_eq!(r.extra["connections_held"], 50);
    // Users made by a `register` run, then only logged in (EXISTING_USERS=1 bench/run.sh;
    // there the server restarts in between). Registering them again would be refused.
    let r = natter_bench::register(&t, 20, 8, "pre").await.unwrap();
    assert_eq!(r.scenario, "register");
    let c = ConnectionsOpts {
        connections: 20,
        existing: Some("pre".into()),
        ..c
    };
    let r = natter_bench::connections(&t, &c).await.unwrap();
    check(&r);
    assert_eq!(r.extra["connections_held"], 20);
    assert_eq!(r.extra["users_registered_before_start"], true);
    let h = HistoryOpts {
        messages: 300,
        pages: 20,
        page_size: 50,
        window: 32,
    };
    let r = natter_bench::history(&t, &h).await.unwrap();
    check(&r);
    assert_eq!(r.delivered, 20, "every page is the gap-free run below its anchor");
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker process that is killed when the test ends.
struct Broker_(std::process::Child);

impl Drop for Broker_ {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `program args` and wait until `port` accepts connections.
fn start_broker(program: &str, args: &[&str], port: u16) -> Broker_ {
    let child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (Debian's package; scripts/test.sh installs it): {e}"));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < until, "{program} did not listen on {port}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Broker_(child)
}

/// The peers' side of the comparison (bench/compare.sh): NATS and Mosquitto, Debian's, each
/// on a free loopback port, through the same fan-out and idle-connection scenarios.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_scenarios_run_against_nats_and_mosquitto() {
    let (nats_port, mqtt_port) = (free_port(), free_port());
    let nats = start_broker(
        "nats-server",
        &["-a", "127.0.0.1", "-p", &nats_port.to_string()],
        nats_port,
    );
    let conf = std::env::temp_dir().join(format!("natter-bench-mosquitto-{mqtt_port}.conf"));
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mosquitto.conf")).unwrap();
    std::fs::write(
        &conf,
        shipped.replace("listener 1883", &format!("listener {mqtt_port}")),
    )
    .unwrap();
    let mqtt = start_broker("mosquitto", &["-c", conf.to_str().unwrap()], mqtt_port);
    for (broker, pid) in [
        (Broker::Nats(format!("127.0.0.1:{nats_port}")), nats.0.id()),
        (Broker::Mqtt(format!("127.0.0.1:{mqtt_port}")), mqtt.0.id()),
    ] {
        let t = Target {
            addr: "127.0.0.1:1".parse().unwrap(),
            fingerprint: String::new(),
            server_pid: Some(pid),
        };
        let o = FanoutOpts {
            users: 20,
            group_size: 10,
            senders_per_group: 1,
            rate_per_sender: 20.0,
            secs: 1.0,
        };
        let r = natter_bench::peer_fanout(&t, &broker, &o).await.unwrap();
        check(&r);
        assert_eq!(r.delivered, r.sent * 9, "{r:?}");
        let r = natter_bench::peer_connections(&t, &broker, 30, 5, 0.2).await.unwrap();
        check(&r);
        assert_eq!(r.extra["connections_held"], 30);
        assert!(r.server_rss_bytes > 0, "the broker's memory is read from /proc");
    }
}
