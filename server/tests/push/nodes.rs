//! Notifications with several nodes on one Redis (PROTOCOL.md §13.2): the node that commits
//! a message notifies devices attached nowhere; a device attached to another node is that
//! node's to watch, and is notified (once) only if it does not acknowledge.
use std::time::Duration;

use natter_server::store::testredis::TestRedis;

use super::{ack, payload, Trio};
use crate::common::push::Provider;
use crate::common::*;

async fn node(dir: &std::path::Path, redis: &TestRedis, id: &str) -> natter_server::RunningServer {
    let cfg = natter_server::Config {
        push_allow_loopback_endpoints: true,
        push_ack_delay_ms: 600,
        ..redis_config(dir, redis, id)
    };
    natter_server::start(&cfg).await.expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_attached_to_another_node_is_watched_there_and_notified_once() {
    let provider = Provider::start().await;
    let redis = TestRedis::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &redis, "a").await;
    let b = node(db.path(), &redis, "b").await;
    // Bob sends on node A; carol, erin and dave's devices are on node B.
    let bob = user(&a, "bob").await;
    let Trio {
        mut carol,
        erin,
        to_carol,
        to_erin,
        to_dave,
    } = Trio::new(&bob, &b, &provider).await;

    // Carol acknowledges on node B at once; erin, attached there too, never does.
    let for_carol = bob.client.send(to_carol, "for carol").await.unwrap().seq.0;
    ack(&mut carol, to_carol.0, for_carol).await;
    let sent = tokio::time::Instant::now();
    let for_erin = bob.client.send(to_erin, "for erin").await.unwrap().seq.0;
    let got = provider.until("erin", 1).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(600),
        "node A did not notify a device attached to node B: {:?}",
        sent.elapsed()
    );
    assert_eq!(payload(&got[0]).seq, for_erin);

    // Dave is attached nowhere: node A notifies him. By then carol's and a second one for
    // erin would have come.
    let for_dave = bob.client.send(to_dave, "for dave").await.unwrap().seq.0;
    assert_eq!(payload(&provider.until("dave", 1).await[0]).seq, for_dave);
    assert!(
        provider.received("carol").await.is_empty(),
        "an acknowledging device gets none"
    );
    assert_eq!(
        provider.received("erin").await.len(),
        1,
        "one notification, from one node"
    );
    drop((carol, erin));
}
