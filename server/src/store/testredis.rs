//! Test support: throwaway `redis-server` processes on loopback — one server, or a Redis
//! Cluster of N masters — each in its own temporary directory, killed on drop. Used by the
//! Redis store's suite and the multi-node tests; needs Debian's `redis-server` (and
//! `redis-cli` for clusters), which `scripts/test.sh` installs.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a Redis may take to come up.
const START: Duration = Duration::from_secs(20);
/// How long `redis-cli --cluster create` may take.
const CREATE: Duration = Duration::from_secs(60);

/// One or more running `redis-server` processes.
#[derive(Debug)]
pub struct TestRedis {
    children: Vec<Child>,
    ports: Vec<u16>,
    _dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Send one inline command and return the raw reply. A signal may interrupt the blocking
/// calls — SIGCHLD comes whenever a child stops or goes on (`signal(i, "STOP")`), and the
/// test binary has handlers installed (tokio's, for the tests that run processes) — so
/// interrupted calls are retried.
fn ask(port: u16, cmd: &str) -> Option<String> {
    let mut s = again(|| TcpStream::connect(("127.0.0.1", port))).ok()?;
    // Generous: with `appendfsync always` a reply waits for an fsync, which a busy disk
    // (the disk-full tests beside this one) can hold for seconds.
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = again(|| s.read(&mut buf)).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `op`, again while a signal interrupts it.
fn again<T>(mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// The last `n` lines of a log file (or why it could not be read).
fn tail(log: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("({}: {e})", log.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + START;
    while !ok() {
        assert!(Instant::now() < until, "redis: {what} within {START:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl TestRedis {
    /// Start one `redis-server` on a free port and wait until it answers. A port picked as
    /// free may be taken before the server binds it (tests run in parallel, and a cluster
    /// node also needs a second, bus port), so a server that exits, or a port that turns
    /// out to answer for another process, costs a fresh try on new ports.
    fn spawn(dir: &std::path::Path, cluster: bool) -> (Child, u16) {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let data = dir.join(port.to_string());
            std::fs::create_dir_all(&data).expect("redis data dir");
            let mut cmd = Command::new("redis-server");
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .arg("--dir")
                .arg(&data)
                .arg("--logfile")
                .arg(data.join("redis.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if cluster {
                // The default bus port is port + 10000, which may be taken or past 65535.
                let bus = free_port().to_string();
                cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                    .args(["--cluster-port", &bus]);
            }
            let mut child = cmd
                .spawn()
                .expect("redis-server runs (apt-get install redis-server; scripts/test.sh does)");
            match Self::wait_up(&mut child, port) {
                Ok(()) => return (child, port),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("{why}; its log ends:\n{}", tail(&data.join("redis.log"), 5));
                }
            }
        }
        panic!("redis-server did not come up in 5 tries: {last}")
    }

    /// Wait until `child` answers PING on `port` as itself (its `process_id`).
    fn wait_up(child: &mut Child, port: u16) -> Result<(), String> {
        let until = Instant::now() + START;
        let me = format!("process_id:{}\r\n", child.id());
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("port {port}: redis-server exited ({status})"));
            }
            if let Some(info) = ask(port, "INFO server") {
                if info.contains(&me) {
                    return Ok(());
                }
                if info.contains("process_id:") {
                    return Err(format!("port {port} answers for another process"));
                }
            }
            if Instant::now() >= until {
                return Err(format!("port {port}: no answer within {START:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("natter-redis-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// A single Redis.
    pub fn start() -> Self {
        let dir = Self::dir();
        let (child, port) = Self::spawn(&dir, false);
        TestRedis {
            children: vec![child],
            ports: vec![port],
            _dir: dir,
        }
    }

    /// A Redis Cluster of `masters` masters and no replicas, all slots assigned. A create
    /// that fails (a node's port taken in between) is tried again on new servers, and the
    /// last failure's output is in the panic.
    pub fn cluster(masters: usize) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = Self::dir();
            let (children, ports): (Vec<Child>, Vec<u16>) = (0..masters).map(|_| Self::spawn(&dir, true)).unzip();
            let redis = TestRedis {
                children,
                ports,
                _dir: dir,
            };
            // `redis-cli --cluster create` waits for the nodes to agree with no limit of its
            // own; a join that never settles is cut short and tried again on new servers.
            let out = Command::new("timeout")
                .args(["-k", "5", &CREATE.as_secs().to_string(), "redis-cli"])
                .args(["--cluster", "create"])
                .args(redis.ports.iter().map(|p| format!("127.0.0.1:{p}")))
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
                .expect("timeout and redis-cli run");
            if !out.status.success() {
                last = format!(
                    "({}) {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                continue; // `redis` drops here: its servers are killed
            }
            for p in &redis.ports {
                wait_until("cluster_state:ok", || {
                    ask(*p, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok"))
                });
            }
            return redis;
        }
        panic!("redis-cli --cluster create failed 3 times; last output:\n{last}")
    }

    /// A primary (index 0) and one replica of it (index 1), linked and in sync.
    pub fn primary_and_replica() -> Self {
        let mut redis = Self::start();
        let (child, port) = Self::spawn(&redis._dir, false);
        redis.children.push(child);
        redis.ports.push(port);
        let primary = redis.ports[0];
        let ok = ask(port, &format!("REPLICAOF 127.0.0.1 {primary}"));
        assert!(ok.is_some_and(|r| r.starts_with("+OK")), "REPLICAOF");
        wait_until("the replica is linked", || {
            ask(port, "INFO replication").is_some_and(|r| r.contains("master_link_status:up"))
        });
        redis
    }

    /// Send server `i` one inline command; its raw reply (None if it does not answer).
    pub fn ask(&self, i: usize, cmd: &str) -> Option<String> {
        ask(self.ports[i], cmd)
    }

    /// The last lines of server `i`'s log, for a failure message.
    pub fn log_tail(&self, i: usize) -> String {
        tail(&self._dir.join(self.ports[i].to_string()).join("redis.log"), 15)
    }

    /// Send server `i` a signal (`kill -s SIG`): `KILL`, `STOP`, `CONT`.
    pub fn signal(&mut self, i: usize, sig: &str) {
        let pid = self.children[i].id().to_string();
        let ok = Command::new("kill")
            .args(["-s", sig, &pid])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill -s {sig} {pid}");
        if sig == "KILL" {
            let _ = self.children[i].wait();
        }
    }

    /// Make server `i` a primary (`REPLICAOF NO ONE`), as a failover does.
    pub fn promote(&self, i: usize) {
        let ok = self.ask(i, "REPLICAOF NO ONE");
        assert!(ok.is_some_and(|r| r.starts_with("+OK")), "REPLICAOF NO ONE");
    }

    /// Write a dump of every server (`SAVE`, strings uncompressed so they can be searched)
    /// next to its append-only file, and return the directory that holds them all.
    pub fn dump(&self) -> &std::path::Path {
        for i in 0..self.ports.len() {
            let ok = self.ask(i, "CONFIG SET rdbcompression no");
            assert!(ok.is_some_and(|r| r.starts_with("+OK")), "CONFIG SET");
            let ok = self.ask(i, "SAVE");
            assert!(ok.is_some_and(|r| r.starts_with("+OK")), "SAVE");
        }
        &self._dir
    }

    /// `redis://127.0.0.1:PORT` of server `i`.
    pub fn url_of(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[i])
    }

    /// `redis://127.0.0.1:PORT` of the first (or only) server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// URLs of every server (a cluster's seed nodes).
    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}
