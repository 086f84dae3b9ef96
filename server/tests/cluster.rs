//! Several natter nodes on one Redis: three `natter-server` processes on loopback sharing a
//! real `redis-server` (or a 3-master Redis Cluster), with SDK clients spread across them.
//! Cross-node order, presence and typing; `kill -9` of a node while its clients send; a
//! graceful drain (SIGTERM). Every wait is bounded.
use crate::common;

use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::*;
use natter_protocol::pb;
use natter_sdk::{Client, ClientEvent, ConversationId, Events, HistoryAnchor, Seq, UserId};
use natter_server::store::testredis::TestRedis;

/// Sends and reconnections in these tests finish well inside this.
const LONG: Duration = Duration::from_secs(60);

struct Node {
    child: Child,
    _stdout: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
    fingerprint: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a node. All nodes share `dir` for the development certificate (so clients pin one
/// fingerprint); their data lives in Redis.
fn node(dir: &Path, redis: &[String], cluster: bool, id: &str) -> Node {
    node_with_env(&[], dir, redis, cluster, id)
}

/// [`node`] with extra environment variables (e.g. libfaketime's, for a skewed clock).
/// The binary runs itself (no wrapper process), so the `Node`'s kill reaches it.
fn node_with_env(env: &[(&str, &str)], dir: &Path, redis: &[String], cluster: bool, id: &str) -> Node {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter-server"));
    cmd.envs(env.iter().copied());
    cmd.args([
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--log",
        "warn",
    ])
    .args(["--web-listen", "off", "--webtransport-listen", "off"])
    .args(["--ops-listen", "127.0.0.1:0", "--ready-grace-secs", "0"])
    .args(["--storage", "redis", "--redis", &redis.join(","), "--node-id", id])
    .stdout(Stdio::piped());
    if cluster {
        cmd.arg("--redis-cluster");
    }
    let mut child = cmd.spawn().expect("server binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut field = |prefix: &str| -> String {
        let line = lines.next().expect("a line").expect("readable");
        assert!(line.starts_with(prefix), "expected {prefix:?}, got {line:?}");
        line.rsplit(' ').next().unwrap().to_string()
    };
    let addr = field("natter-server listening on").parse().unwrap();
    let fingerprint = field("certificate sha256");
    Node {
        child,
        _stdout: lines,
        addr,
        fingerprint,
    }
}

fn three_nodes(dir: &Path, redis: &[String], cluster: bool) -> Vec<Node> {
    // The first creates the shared certificate; the others start once it exists.
    let first = node(dir, redis, cluster, "n0");
    let mut nodes = vec![first];
    for id in ["n1", "n2"] {
        nodes.push(node(dir, redis, cluster, id));
    }
    assert!(nodes.iter().all(|n| n.fingerprint == nodes[0].fingerprint));
    nodes
}

/// A client that starts on `nodes[home]` and falls back to the others in turn.
async fn person(nodes: &[Node], home: usize, name: &str) -> (Client, Events, UserId) {
    let mut config = client_config(nodes[home].addr, &nodes[home].fingerprint, None);
    config.fallback_addrs = (1..nodes.len()).map(|i| nodes[(home + i) % nodes.len()].addr).collect();
    config.idle_timeout_ms = 1_500;
    let (client, mut events) = Client::connect(config).unwrap();
    client.register(name, PASSWORD).await.expect("register");
    let login = client.login(name, PASSWORD, "phone").await.expect("login");
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    (client, events, login.user_id)
}

/// The whole log of a conversation, paged from the start; asserted gap-free.
async fn history(client: &Client, conv: ConversationId) -> Vec<(u64, String)> {
    seqs_and_texts(&history_events(client, conv).await)
}

/// [`history`] as the events themselves.
async fn history_events(client: &Client, conv: ConversationId) -> Vec<pb::ConversationEvent> {
    let mut out: Vec<pb::ConversationEvent> = Vec::new();
    loop {
        let after = Seq(out.last().map_or(0, |e| e.seq));
        let page = client.history(conv, HistoryAnchor::After(after), 100).await.unwrap();
        let more = page.has_more;
        out.extend(page.events);
        if !more {
            break;
        }
    }
    let seqs: Vec<u64> = out.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "history has a gap");
    out
}

/// Everything a member received live in `conv` up to `upto`, asserted in order, once each.
async fn received(events: &mut Events, conv: ConversationId, upto: u64) -> Vec<(u64, String)> {
    let got = tokio::time::timeout(LONG, events_upto(events, conv, upto))
        .await
        .expect("every event arrives");
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    let first = seqs.first().copied().unwrap_or(1);
    assert_eq!(
        seqs,
        (first..=upto).collect::<Vec<_>>(),
        "received out of order, twice or with a gap"
    );
    seqs_and_texts(&got)
}

async fn cross_node_chat(redis_urls: Vec<String>, cluster: bool) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path(), &redis_urls, cluster);
    let (alice, mut a_ev, alice_id) = person(&nodes, 0, "alice").await;
    let (bob, mut b_ev, bob_id) = person(&nodes, 1, "bob").await;
    let (carol, mut c_ev, carol_id) = person(&nodes, 2, "carol").await;

    // A DM across nodes, in order.
    let dm = ConversationId(alice.direct("bob").await.unwrap().conversation_id);
    for i in 0..10 {
        alice.send(dm, &format!("dm {i}")).await.unwrap();
    }
    let got = messages(&mut b_ev, dm, 10).await;
    assert_eq!(
        got.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(),
        (0..10).map(|i| format!("dm {i}")).collect::<Vec<_>>()
    );
    // A seq committed on node 0 can be marked on node 1 at once, before node 1's bus has
    // told its cached conversation state about it.
    for i in 0..10 {
        let seq = alice.send(dm, &format!("read at once {i}")).await.unwrap().seq;
        bob.mark_read(dm, seq)
            .await
            .expect("a seq that exists is markable on any node");
    }

    // A group on three nodes, all sending at once: one order for everyone.
    let group = ConversationId(
        alice
            .create_group("trio", &["bob", "carol"])
            .await
            .unwrap()
            .conversation_id,
    );
    let sends = [(&alice, "a"), (&bob, "b"), (&carol, "c")].map(|(client, who)| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut last = Seq(0);
            for i in 0..15 {
                last = last.max(client.send(group, &format!("{who}{i}")).await.unwrap().seq);
            }
            last
        })
    });
    let mut upto = Seq(0);
    for s in sends {
        upto = upto.max(s.await.unwrap());
    }
    let (la, lb, lc) = (
        received(&mut a_ev, group, upto.0).await,
        received(&mut b_ev, group, upto.0).await,
        received(&mut c_ev, group, upto.0).await,
    );
    assert_eq!(la, lb, "alice and bob saw different orders");
    assert_eq!(lb, lc, "bob and carol saw different orders");
    assert_eq!(la.len() as u64, upto.0, "someone missed the start of the group");
    assert_eq!(
        history(&carol, group).await,
        la,
        "live delivery differs from the stored log"
    );
    for who in ["a", "b", "c"] {
        let mine: Vec<&String> = la.iter().map(|(_, t)| t).filter(|t| t.starts_with(who)).collect();
        let want: Vec<String> = (0..15).map(|i| format!("{who}{i}")).collect();
        assert_eq!(
            mine,
            want.iter().collect::<Vec<_>>(),
            "{who}'s messages out of their order"
        );
    }

    // Presence and typing cross nodes.
    let seen = bob.presence(&[alice_id, carol_id]).await.unwrap();
    assert!(
        seen.iter().all(|p| p.state() == pb::PresenceState::Online) && seen.len() == 2,
        "alice (node 0) and carol (node 2) online for bob (node 1): {seen:?}"
    );
    carol.typing(group);
    for ev in [&mut a_ev, &mut b_ev] {
        wait_for(ev, |e| {
            matches!(e, ClientEvent::Typing { user_id, .. } if *user_id == carol_id).then_some(())
        })
        .await;
    }
    alice.shutdown().await;
    wait_for(&mut b_ev, |e| match e {
        ClientEvent::Presence(p) if p.user_id == alice_id.0 => (p.state() == pb::PresenceState::Offline).then_some(()),
        _ => None,
    })
    .await;
    // And back: bob (node 1) is online for alice's new device on node 2.
    let (alice2, _, _) = login_only(&nodes, 2, "alice").await;
    let seen = alice2.presence(&[bob_id]).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].state(),
        pb::PresenceState::Online,
        "bob's presence answered on node 2"
    );
}

/// Log an existing user in on `nodes[home]`.
async fn login_only(nodes: &[Node], home: usize, name: &str) -> (Client, Events, UserId) {
    let config = client_config(nodes[home].addr, &nodes[home].fingerprint, None);
    let (client, mut events) = Client::connect(config).unwrap();
    let login = client.login(name, PASSWORD, "tablet").await.expect("login");
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    (client, events, login.user_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_redis_deliver_in_one_order_with_presence_and_typing() {
    let redis = TestRedis::start();
    cross_node_chat(vec![redis.url()], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_redis_cluster_deliver_in_one_order_with_presence_and_typing() {
    let redis = TestRedis::cluster(3);
    cross_node_chat(redis.urls(), true).await;
}

/// People on the given nodes (index, name) and a group of them all created by the first,
/// its Created event seen by everyone.
async fn group_on(nodes: &[Node], people: &[(usize, &str)]) -> (Vec<(Client, Events)>, ConversationId) {
    let mut members = Vec::new();
    for (home, name) in people {
        let (client, events, _) = person(nodes, *home, name).await;
        members.push((client, events));
    }
    let others: Vec<&str> = people[1..].iter().map(|(_, n)| *n).collect();
    let created = members[0].0.create_group("group", &others).await.unwrap();
    let group = ConversationId(created.conversation_id);
    for (_, ev) in members.iter_mut() {
        received(ev, group, 1).await;
    }
    (members, group)
}

/// Send `n` messages one after another (each awaited: the SDK retries across reconnects);
/// the returned watch counts the acks so far.
fn sender(
    client: &Client,
    conv: ConversationId,
    who: &'static str,
    n: usize,
) -> (tokio::task::JoinHandle<Vec<Seq>>, tokio::sync::watch::Receiver<usize>) {
    let client = client.clone();
    let (progress, acks) = tokio::sync::watch::channel(0);
    let task = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in 0..n {
            let ack = tokio::time::timeout(LONG, client.send(conv, &format!("{who}{i}")))
                .await
                .expect("the send is acknowledged in time")
                .expect("the send succeeds");
            seqs.push(ack.seq);
            progress.send_replace(seqs.len());
        }
        seqs
    });
    (task, acks)
}

async fn until_acked(acks: &mut tokio::sync::watch::Receiver<usize>, n: usize) {
    tokio::time::timeout(LONG, acks.wait_for(|k| *k >= n))
        .await
        .expect("sends are acknowledged")
        .expect("sender alive");
}

/// Everyone ends with the same complete history: each sender's messages once, in their
/// order, and each member's live events equal to it.
async fn assert_same_complete_history(
    members: &mut [(Client, Events)],
    conv: ConversationId,
    senders: &[(&str, usize)],
) {
    // A closing message: a member who missed the last forwarded events (the bus is
    // at-most-once) sees the gap before it and fetches (guarantee 4).
    let done = members[members.len() - 1].0.send(conv, "done").await.unwrap();
    let log = history(&members[0].0, conv).await;
    for (who, n) in senders {
        let mine: Vec<&String> = log
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.strip_prefix(who).is_some_and(|r| r.parse::<usize>().is_ok()))
            .collect();
        let want: Vec<String> = (0..*n).map(|i| format!("{who}{i}")).collect();
        assert_eq!(
            mine,
            want.iter().collect::<Vec<_>>(),
            "{who}'s sends missing, doubled or reordered"
        );
    }
    for (client, events) in members.iter_mut() {
        assert_eq!(history(client, conv).await, log, "members' histories differ");
        let live = received(events, conv, done.seq.0).await;
        let tail = &log[log.len() - live.len()..];
        assert_eq!(live, tail, "live delivery differs from the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_moves_its_clients_without_loss_or_duplicates() {
    let redis = TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path(), &[redis.url()], false);
    let (mut members, group) = group_on(&nodes, &[(0, "alice"), (0, "bob"), (1, "carol"), (2, "dave")]).await;
    let [alice, bob, carol] = [0, 1, 2].map(|i| members[i].0.clone());
    let (a, mut a_acks) = sender(&alice, group, "a", 30);
    let (b, _) = sender(&bob, group, "b", 30);
    let (c, _) = sender(&carol, group, "c", 30);
    // Kill node 0 (alice's and bob's) mid-stream: once some of alice's sends are durable.
    until_acked(&mut a_acks, 5).await;
    nodes[0].child.kill().expect("kill -9 node 0");
    nodes[0].child.wait().unwrap();
    for s in [a, b, c] {
        assert_eq!(s.await.unwrap().len(), 30);
    }
    assert_same_complete_history(&mut members, group, &[("a", 30), ("b", 30), ("c", 30)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_moves_every_client_to_the_others_without_loss() {
    let redis = TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path(), &[redis.url()], false);
    let (mut members, group) = group_on(&nodes, &[(0, "alice"), (0, "bob"), (1, "carol")]).await;
    let [alice, bob] = [0, 1].map(|i| members[i].0.clone());
    let (a, mut a_acks) = sender(&alice, group, "a", 30);
    let (b, _) = sender(&bob, group, "b", 30);
    until_acked(&mut a_acks, 10).await;
    let mut drained = nodes.remove(0);
    let pid = drained.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for s in [a, b] {
        assert_eq!(s.await.unwrap().len(), 30);
    }
    // Both of node 0's clients were told to go (a typed GoAway), not cut off.
    for (_, ev) in members.iter_mut().take(2) {
        wait_for(ev, |e| matches!(e, ClientEvent::GoAway { .. }).then_some(())).await;
    }
    // The drained node exits by itself once its clients have gone.
    let exited = tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + LONG;
        loop {
            if let Some(status) = drained.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < until, "the draining node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(exited.success(), "drain then shutdown exits cleanly: {exited:?}");
    assert_same_complete_history(&mut members, group, &[("a", 30), ("b", 30)]).await;
}

/// PROTOCOL.md §7.2 across nodes: a session lives in the memory of the node that holds it,
/// so a resume token presented to another node is never a resume there — the answer is a
/// cursor sync whose `last_seq` covers what the client missed, and fetching from its cursor
/// returns every event, none skipped. (Through the raw protocol: no SDK logic helps.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_presented_to_another_node_gets_a_cursor_sync_with_nothing_missing() {
    use pb::{request::Op, response::Result as Res};
    let redis = TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), &[redis.url()], false, "a");
    let b = node(dir.path(), &[redis.url()], false, "b");
    let (alice, _alice_events, _) = person(std::slice::from_ref(&a), 0, "alice").await;
    let register = |name: &str| {
        Op::Register(pb::Register {
            username: name.into(),
            password: PASSWORD.into(),
        })
    };
    let mut bob = Raw::hello(a.addr, &a.fingerprint).await;
    assert!(matches!(bob.request(register("bob")).await, Res::Register(_)));
    let login = Op::Login(pb::Login {
        username: "bob".into(),
        password: PASSWORD.into(),
        device_name: "raw".into(),
    });
    let Res::Login(ok) = bob.request(login).await else {
        panic!("login failed")
    };
    let dm = ConversationId(alice.direct("bob").await.unwrap().conversation_id);
    for i in 0..3 {
        alice.send(dm, &format!("before{i}")).await.unwrap();
    }
    // Bob reconnects on node a (a fresh session: no resume token) and learns where the DM
    // stands.
    bob.conn.close(0u32.into(), b"gone");
    let auth = |resume: &str, cursor: u64| {
        Op::Authenticate(pb::Authenticate {
            access_token: ok.access_token.clone(),
            resume_token: resume.into(),
            cursors: vec![pb::Cursor {
                conversation_id: dm.0,
                seq: cursor,
            }],
            product_token: String::new(),
        })
    };
    let mut bob = Raw::hello(a.addr, &a.fingerprint).await;
    let first = match bob.request(auth("", 0)).await {
        Res::Auth(first) => first,
        other => panic!("authenticate failed: {other:?}"),
    };
    let last = |s: &pb::AuthOk| {
        s.conversations
            .iter()
            .find(|c| c.conversation_id == dm.0)
            .map(|c| c.last_seq)
    };
    let cursor = last(&first).expect("the DM is listed");
    assert_eq!(cursor, 4, "created + 3 messages");
    // His connection to a drops; meanwhile more is said (through a).
    bob.conn.close(0u32.into(), b"gone");
    drop(bob);
    for i in 0..3 {
        alice.send(dm, &format!("after{i}")).await.unwrap();
    }
    // He comes back on node b with a's token and his cursor.
    let mut bob = Raw::hello(b.addr, &b.fingerprint).await;
    let Res::Auth(there) = bob.request(auth(&first.resume_token, cursor)).await else {
        panic!("authenticate failed")
    };
    assert!(
        !there.resumed,
        "node b holds no session of a's: never a resume that replays nothing"
    );
    assert_eq!(last(&there), Some(7), "the cursor sync tells him the DM moved on");
    let Res::History(page) = bob
        .request(Op::History(pb::GetHistory {
            conversation_id: dm.0,
            anchor: Some(pb::get_history::Anchor::After(cursor)),
            limit: 50,
        }))
        .await
    else {
        panic!("history failed")
    };
    assert_eq!(
        seqs_and_texts(&page.events),
        vec![(5, "after0".into()), (6, "after1".into()), (7, "after2".into())],
        "every event after his cursor, none skipped"
    );
    // And a token of b's resumes on b, replaying what came after.
    bob.conn.close(0u32.into(), b"gone");
    drop(bob);
    alice.send(dm, "later").await.unwrap();
    let mut bob = Raw::hello(b.addr, &b.fingerprint).await;
    let Res::Auth(back) = bob.request(auth(&there.resume_token, 7)).await else {
        panic!("authenticate failed")
    };
    assert!(back.resumed, "b's own session resumes on b");
    let replayed = bob.next_delivered().await;
    assert_eq!(seqs_and_texts(&[replayed]), vec![(8, "later".into())]);
}

/// PROTOCOL.md §6: event times are non-decreasing in seq order even when the nodes' clocks
/// disagree. Node b runs two minutes behind (libfaketime, Debian's `faketime`); alice on a
/// and bob on b take turns in one DM, and the log's times never go back — bob's events
/// carry the time of the event before them instead of b's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_never_go_back_when_a_nodes_clock_is_behind() {
    let redis = TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), &[redis.url()], false, "a");
    // libfaketime preloaded into the binary itself: the `faketime` wrapper forks, and
    // killing it would leave the server running.
    let lib = libfaketime();
    let skewed = [("LD_PRELOAD", lib.as_str()), ("FAKETIME", "-120s")];
    let b = node_with_env(&skewed, dir.path(), &[redis.url()], false, "b");
    // The skew is real: b's Welcome tells a time two minutes before a's.
    let welcome_time = |raw: &Raw| raw.welcome.as_ref().map(|w| w.server_time_ms).unwrap();
    let on_a = Raw::hello(a.addr, &a.fingerprint).await;
    let on_b = Raw::hello(b.addr, &b.fingerprint).await;
    let skew = welcome_time(&on_a).saturating_sub(welcome_time(&on_b));
    assert!(skew >= 100_000, "node b's clock is behind by {skew} ms only");
    let (alice, _ae, _) = person(std::slice::from_ref(&a), 0, "alice").await;
    let (bob, _be, _) = person(std::slice::from_ref(&b), 0, "bob").await;
    let dm = ConversationId(alice.direct("bob").await.unwrap().conversation_id);
    for i in 0..5 {
        alice.send(dm, &format!("a{i}")).await.unwrap();
        bob.send(dm, &format!("b{i}")).await.unwrap();
    }
    let log = history_events(&alice, dm).await;
    assert_eq!(log.len(), 11, "created + 10 messages");
    let times: Vec<u64> = log.iter().map(|e| e.server_time_ms).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "event times go back in seq order: {times:?}"
    );
}

/// Debian's libfaketime (package `faketime`, which scripts/test.sh installs).
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found
        .expect("libfaketime.so.1 under /usr/lib/*/faketime (apt-get install faketime)")
        .to_string_lossy()
        .into_owned()
}
