//! Operating a node (docs/OPERATIONS.md): the ops listener's `/livez`, `/readyz` and
//! `/metrics`; a real Prometheus (Debian's) scraping three nodes on one Redis; series that
//! do not multiply with users and conversations; readiness that tells the truth (Redis
//! paused, a full disk, SIGTERM before any client hears `GoAway`). Every wait is bounded.
#[path = "ops/admin.rs"]
mod admin;
#[path = "ops/backup.rs"]
mod backup;
use crate::common;
#[path = "ops/retention.rs"]
mod retention;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::api::product_token;
use common::disk::{fill, Tmpfs};
use common::*;
use natter_sdk::{Client, ClientEvent, ConversationId};
use natter_server::store::testredis::TestRedis;
use serde_json::Value;

/// An ops endpoint's answer: status, content type, body.
async fn get(ops: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(format!("http://{ops}{path}"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().await.expect("the ops listener answers");
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, kind, r.text().await.unwrap())
}

/// `/readyz` as (status, its JSON).
async fn readyz(ops: SocketAddr) -> (u16, Value) {
    let (status, _, body) = get(ops, "/readyz", None).await;
    (status, serde_json::from_str(&body).expect("readyz answers JSON"))
}

/// Every sample of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("a sample line");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

/// One sample's value (0 when the series does not exist yet).
fn sample(text: &str, key: &str) -> f64 {
    samples(text).get(key).copied().unwrap_or(0.0)
}

async fn scrape(ops: SocketAddr) -> String {
    let (status, kind, body) = get(ops, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    body
}

/// `promtool check metrics` (Debian's prometheus package) accepts the exposition.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test.sh installs Debian's prometheus)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const SENDS: &str = "natter_requests_total{op=\"send\",code=\"OK\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_listener_answers_liveness_readiness_and_metrics_that_count_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let ops = s.ops_addr.expect("the ops listener is on");
    assert_eq!(get(ops, "/livez", None).await.0, 200);
    let (status, ready) = readyz(ops).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    for check in ["store", "certificate", "draining"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }

    let (alice, mut bob, dm) = alice_and_bob(&s).await;
    let before = scrape(ops).await;
    for i in 0..5 {
        alice.client.send(dm, &format!("m{i}")).await.unwrap();
    }
    for _ in 0..5 {
        wait_for(&mut bob.events, |e| match e {
            ClientEvent::Event(ev) if ev.conversation_id == dm.0 => Some(()),
            _ => None,
        })
        .await;
    }
    let after = scrape(ops).await;
    let moved = |key: &str| sample(&after, key) - sample(&before, key);
    assert_eq!(moved(SENDS), 5.0, "five sends answered OK");
    assert_eq!(
        moved("natter_request_duration_seconds_count{op=\"send\"}"),
        5.0,
        "and timed"
    );
    assert_eq!(moved("natter_events_committed_total"), 5.0);
    // Each message is written to both members' connections (the sender's other devices
    // see what it sent too): ten deliveries, each timed from its commit.
    let delivered = moved("natter_deliveries_total");
    assert_eq!(delivered, 10.0, "{after}");
    assert_eq!(moved("natter_delivery_latency_seconds_count"), delivered);
    assert_eq!(
        sample(&after, "natter_connections{transport=\"quic\",state=\"authenticated\"}"),
        2.0
    );
    assert_eq!(sample(&after, "natter_sessions_attached"), 2.0);
    assert!(sample(&after, "natter_handshakes_total{result=\"ok\"}") >= 2.0);
    assert!(sample(&after, "process_resident_memory_bytes") > 1e6, "{after}");
    assert!(sample(&after, "process_open_fds") > 0.0);
    assert!(after.contains("natter_build_info{version=\""));
    promtool_accepts(&after);

    // HTTP on the web endpoint: counted by route template and status, never by path.
    let web = format!("http://{}", s.web_addr.unwrap());
    for path in ["/natter.json", "/api/v1/users/u-1", "/api/v1/users/u-2"] {
        reqwest::get(format!("{web}{path}")).await.unwrap();
    }
    let http = scrape(ops).await;
    assert_eq!(
        sample(
            &http,
            "natter_http_requests_total{route=\"/natter.json\",status=\"200\"}"
        ),
        1.0,
        "{http}"
    );
    assert_eq!(
        sample(
            &http,
            "natter_http_requests_total{route=\"/api/v1/users/{id}\",status=\"401\"}"
        ),
        2.0,
        "two users' paths, one series"
    );
    assert!(!http.contains("u-1"), "no path in a label");

    // OpenMetrics when the scraper asks for it.
    let (status, kind, om) = get(ops, "/metrics", Some("application/openmetrics-text;version=1.0.0")).await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(om.ends_with("# EOF\n"));

    // A planned stop: not ready first, alive still.
    s.stop_being_ready();
    let (status, ready) = readyz(ops).await;
    assert_eq!(status, 503);
    assert_eq!(ready["checks"]["draining"], "the node is draining", "{ready}");
    assert_eq!(get(ops, "/livez", None).await.0, 200);
    let _ = (alice, bob);
}

/// One user's activity: log in with a product token, create or join channel `name`, send
/// once, go.
async fn active_user(s: &natter_server::RunningServer, id: usize, name: &str, creates: bool) {
    let (client, mut events) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    client
        .login_with_token(&product_token(&format!("user-{id}")), "phone")
        .await
        .expect("token login");
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    let conv = if creates {
        client.create_channel(name).await.expect("create")
    } else {
        client.join_channel(name).await.expect("join")
    };
    client
        .send(ConversationId(conv.conversation_id), "hello")
        .await
        .expect("send");
    client.shutdown().await;
}

/// Users `from..to` active in `channels` channels named `c<k>` (each created by its first
/// user, then joined by the rest, 16 at a time).
async fn activity(s: &natter_server::RunningServer, from: usize, to: usize, channels: usize, first_channel: usize) {
    use futures::StreamExt;
    let per = (to - from) / channels;
    for k in 0..channels {
        let name = format!("c{}", first_channel + k);
        let start = from + k * per;
        active_user(s, start, &name, true).await;
        futures::stream::iter(start + 1..start + per)
            .for_each_concurrent(16, |id| {
                let name = name.clone();
                async move { active_user(s, id, &name, false).await }
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_series_does_not_grow_with_users_and_conversations() {
    let dir = tempfile::tempdir().unwrap();
    // Token logins: no password hashing per user; the address may log in often.
    let mut cfg = config(dir.path());
    cfg.rates.login_per_minute_per_ip = 100_000;
    cfg.token_issuers = vec![common::api::product_issuer()];
    let s = natter_server::start(&cfg).await.unwrap();
    let ops = s.ops_addr.unwrap();
    activity(&s, 0, 10, 2, 0).await;
    let after_ten = samples(&scrape(ops).await);
    assert!(after_ten.contains_key(SENDS) && after_ten[SENDS] == 10.0);
    activity(&s, 10, 1_000, 99, 2).await;
    let after_thousand = samples(&scrape(ops).await);
    assert_eq!(after_thousand[SENDS], 1_000.0, "every user sent once");
    let names = |m: &BTreeMap<String, f64>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&after_thousand),
        names(&after_ten),
        "the same series after 1,000 users in 101 channels as after 10 in 2"
    );
}

/// A real Prometheus on loopback, scraping `targets` every second; killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let list = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: natter\n    static_configs:\n      - targets: [{list}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (scripts/test.sh installs Debian's prometheus)");
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        p.until("prometheus is ready", || async {
            reqwest::get(format!("{}/-/ready", p.base))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        p
    }

    /// An instant query's samples: labels → value.
    async fn query(&self, q: &str) -> Vec<(Value, f64)> {
        let v = reqwest::Client::new()
            .post(format!("{}/api/v1/query", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "query={}",
                url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }

    /// Wait (bounded) until `ok`.
    async fn until<F: std::future::Future<Output = bool>>(&self, what: &str, mut ok: impl FnMut() -> F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !ok().await {
            assert!(tokio::time::Instant::now() < deadline, "{what}: not within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_three_nodes_and_their_counters_move_by_exactly_the_traffic() {
    let redis = TestRedis::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        nodes.push(redis_node(d.path(), &redis, &format!("n{i}")).await);
    }
    let targets: Vec<SocketAddr> = nodes.iter().map(|n| n.ops_addr.unwrap()).collect();
    for t in &targets {
        assert_eq!(readyz(*t).await.0, 200, "every node is ready on Redis");
    }
    let prom = Prometheus::start(&targets).await;
    prom.until("every node is up", || async {
        let up = prom.query("up").await;
        up.len() == 3 && up.iter().all(|(_, v)| *v == 1.0)
    })
    .await;

    // Three people, one per node, in one group; then the traffic the counters must show.
    let ann = user(&nodes[0], "ann").await;
    let mut ben = user(&nodes[1], "ben").await;
    let mut cat = user(&nodes[2], "cat").await;
    let group = ConversationId(
        ann.client
            .create_group("ops", &["ben", "cat"])
            .await
            .unwrap()
            .conversation_id,
    );
    for d in [&mut ben, &mut cat] {
        wait_for(&mut d.events, |e| match e {
            ClientEvent::Event(ev) if ev.conversation_id == group.0 => Some(()),
            _ => None,
        })
        .await;
    }
    let total = |key: &'static str| {
        let targets = targets.clone();
        async move {
            let mut sum = 0.0;
            for t in &targets {
                sum += sample(&scrape(*t).await, key);
            }
            sum
        }
    };
    let sends_before = total(SENDS).await;
    let deliveries_before = total("natter_deliveries_total").await;
    const N: usize = 12;
    for i in 0..N {
        ann.client.send(group, &format!("m{i}")).await.unwrap();
    }
    for d in [&mut ben, &mut cat] {
        for _ in 0..N {
            wait_for(&mut d.events, |e| match e {
                ClientEvent::Event(ev) if ev.conversation_id == group.0 => Some(()),
                _ => None,
            })
            .await;
        }
    }
    let sends = total(SENDS).await;
    let deliveries = total("natter_deliveries_total").await;
    assert_eq!(sends - sends_before, N as f64, "N sends, answered OK");
    assert_eq!(
        deliveries - deliveries_before,
        (3 * N) as f64,
        "each message written once to each of the three members' connections"
    );
    for t in &targets {
        promtool_accepts(&scrape(*t).await);
    }
    // Prometheus sees the same numbers, summed over the nodes, once it has scraped them.
    let q_sends = format!("sum({SENDS})");
    prom.until("prometheus has the sends", || async {
        prom.query(&q_sends).await.first().map(|(_, v)| *v) == Some(sends)
    })
    .await;
    prom.until("prometheus has the deliveries", || async {
        prom.query("sum(natter_deliveries_total)")
            .await
            .first()
            .map(|(_, v)| *v)
            == Some(deliveries)
    })
    .await;
    let per_node = prom.query(&format!("sum by (instance) ({SENDS})")).await;
    assert_eq!(per_node.len(), 1, "only ann's node answered sends: {per_node:?}");
    assert_eq!(per_node[0].1, sends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_within_two_seconds_of_redis_stopping_and_comes_back_with_it() {
    let mut redis = TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let node = redis_node(dir.path(), &redis, "solo").await;
    let ops = node.ops_addr.unwrap();
    assert_eq!(readyz(ops).await.0, 200);
    redis.signal(0, "STOP");
    let stopped = tokio::time::Instant::now();
    let failing = loop {
        let (status, body) = readyz(ops).await;
        if status == 503 {
            break body;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(2),
            "still ready 2 s after Redis stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(
        failing["checks"]["store"], "ok",
        "the store check names the failure: {failing}"
    );
    assert_eq!(get(ops, "/livez", None).await.0, 200, "alive all along");
    redis.signal(0, "CONT");
    let resumed = tokio::time::Instant::now();
    loop {
        let (status, body) = readyz(ops).await;
        if status == 200 {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(10),
            "not ready 10 s after Redis came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_readiness_off_until_there_is_room_again() {
    let fs = Tmpfs::mount("24m");
    let s = server(&fs.dir).await;
    let ops = s.ops_addr.unwrap();
    assert_eq!(readyz(ops).await.0, 200);
    let filler = fs.dir.join("filler");
    fill(&filler, 512 << 10);
    let (status, body) = readyz(ops).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["store"].as_str().unwrap().contains("disk nearly full"),
        "{body}"
    );
    assert_eq!(get(ops, "/livez", None).await.0, 200);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(readyz(ops).await.0, 200, "room again, ready again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_before_any_client_hears_go_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_server_binary_with(
        dir.path(),
        "127.0.0.1:0",
        &["--ops-listen", "127.0.0.1:0", "--ready-grace-secs", "1"],
    );
    let ops: SocketAddr = loop {
        let line = p.stdout.next().expect("the server prints its ops address").unwrap();
        if let Some(rest) = line.strip_prefix("ops listening on http://") {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    let mut dev = device(p.addr, &p.fingerprint, "ann", true).await;
    assert_eq!(readyz(ops).await.0, 200);
    let pid = p.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let signalled = tokio::time::Instant::now();
    let mut not_ready_at = None;
    let go_away = loop {
        if not_ready_at.is_none() && readyz(ops).await.0 == 503 {
            not_ready_at = Some(signalled.elapsed());
        }
        match tokio::time::timeout(Duration::from_millis(20), dev.events.next()).await {
            Ok(Some(ClientEvent::GoAway { .. })) => break signalled.elapsed(),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the client's events ended before a GoAway"),
        }
        assert!(signalled.elapsed() < Duration::from_secs(20), "no GoAway after SIGTERM");
    };
    let not_ready_at = not_ready_at.expect("/readyz turned 503 before the GoAway");
    assert!(not_ready_at < go_away, "503 at {not_ready_at:?}, GoAway at {go_away:?}");
}

/// A self-signed certificate for 127.0.0.1 written as PEM: (cert path, key path, sha256).
fn certificate(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key, natter_server::security::tls::fingerprint(ck.cert.der()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_gives_new_connections_a_new_certificate_and_existing_ones_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first) = certificate(dir.path(), "first");
    let (next_cert, next_key, second) = certificate(dir.path(), "second");
    let config = dir.path().join("natter.toml");
    // The configuration file: the certificate's files, then `more`.
    let write_config = |more: &str| {
        let files = format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        std::fs::write(&config, files + more).unwrap();
    };
    write_config("");
    let log = dir.path().join("server.log");
    let p = spawn_server_binary_logging(
        dir.path(),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap(), "--log-format", "json"],
        "warn",
        &log,
    );
    assert_eq!(p.fingerprint, first);
    let mut p = p;
    let wt: SocketAddr = loop {
        let line = p
            .stdout
            .next()
            .expect("the server prints its WebTransport address")
            .unwrap();
        if let Some(rest) = line.strip_prefix("webtransport listening on ") {
            break rest.trim().parse().unwrap();
        }
    };
    let wt_url = format!("https://127.0.0.1:{}/wt", wt.port());
    assert_eq!(
        wt_connect(&wt_url, &first).await,
        Ok(()),
        "WebTransport serves the configured certificate"
    );
    let mut ann = device(p.addr, &first, "ann", true).await;
    let own = ConversationId(ann.client.create_group("notes", &[]).await.unwrap().conversation_id);
    ann.client.send(own, "before").await.unwrap();

    // The files change, then SIGHUP; a rate also changes, and a key that needs a restart.
    std::fs::copy(&next_cert, &cert).unwrap();
    std::fs::copy(&next_key, &key).unwrap();
    write_config("max_text_chars = 100\n[rates]\nsends_per_second_per_user = 7\n");
    let pid = p.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    // The reload is logged as one JSON object: what it applied and what needs a restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let reloaded = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "configuration reloaded");
        if let Some(v) = found {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reload logged:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let applied = reloaded["applied"].as_str().unwrap();
    assert!(
        applied.contains(&format!("tls certificate (sha256 {second})")),
        "{reloaded}"
    );
    assert!(applied.contains("rates"), "{reloaded}");
    assert!(applied.contains("webtransport certificate"), "{reloaded}");
    assert!(
        reloaded["need_restart"].as_str().unwrap().contains("max_text_chars"),
        "{reloaded}"
    );
    assert_eq!(reloaded["level"], "WARN");

    // New connections get the new certificate: pinned to it they connect, pinned to the
    // old one they do not.
    let bea = device(p.addr, &second, "bea", true).await;
    let group = ConversationId(
        bea.client
            .create_group("after", &["ann"])
            .await
            .unwrap()
            .conversation_id,
    );
    bea.client.send(group, "new certificate").await.unwrap();
    let (stale, _events) = Client::connect(client_config(p.addr, &first, None)).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), stale.register("cid", PASSWORD)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a client pinned to the old certificate still got through"
    );
    // WebTransport too: the new certificate, not the old one.
    assert_eq!(wt_connect(&wt_url, &second).await, Ok(()));
    assert!(
        wt_connect(&wt_url, &first).await.is_err(),
        "WebTransport still serves the old certificate"
    );
    // The connection made before goes on, on the old certificate, without reconnecting.
    ann.client.send(own, "after").await.unwrap();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(1), ann.events.next()).await {
        assert!(
            !matches!(ev, ClientEvent::Disconnected { .. }),
            "ann's connection was cut: {ev:?}"
        );
    }
}

/// A WebTransport session to `url`, the server's certificate pinned by its SHA-256.
async fn wt_connect(url: &str, hex_hash: &str) -> Result<(), String> {
    // natter's own pinning verifier (browsers' hash pinning wants certificates valid for
    // at most 14 days; a configured certificate is not one), with WebTransport's ALPN.
    let mut tls = natter_sdk::tls::client_config(&natter_sdk::tls::Trust::Fingerprint(hex_hash.into())).unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_custom_tls(tls)
        .build();
    let endpoint = wtransport::Endpoint::client(config).map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(Duration::from_secs(5), endpoint.connect(url))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    conn.close(wtransport::VarInt::from_u32(0), b"");
    Ok(())
}

/// TLS resumption (PROTOCOL.md §3.1): a client that reconnects presents the ticket of its
/// last session, so the handshake signs nothing — `natter_tls_full_handshakes_total` stays
/// while the successful handshakes go up. A fresh client, with no ticket, signs once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_resumes_its_tls_session_and_a_new_one_does_not() {
    const OK: &str = "natter_handshakes_total{result=\"ok\"}";
    const FULL: &str = "natter_tls_full_handshakes_total";
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let ops = s.ops_addr.expect("the ops listener is on");
    let mut ann = user(&s, "ann").await;
    let before = scrape(ops).await;
    for round in 0..3 {
        ann.client.reconnect();
        wait_for(&mut ann.events, |e| {
            matches!(e, ClientEvent::Connected { .. }).then_some(())
        })
        .await;
        let now = scrape(ops).await;
        let moved = |key: &str| sample(&now, key) - sample(&before, key);
        assert_eq!(
            moved(OK),
            f64::from(round + 1),
            "round {round}: a new handshake each time"
        );
        assert_eq!(moved(FULL), 0.0, "round {round}: resumed, nothing signed");
    }
    let _bob = user(&s, "bob").await;
    let after = scrape(ops).await;
    assert_eq!(
        sample(&after, FULL) - sample(&before, FULL),
        1.0,
        "a client without a ticket makes a full handshake"
    );
    s.shutdown().await;
}
