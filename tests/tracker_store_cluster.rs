//! The Redis store on a real Redis Cluster (`--store redis+cluster://...`): trackers given
//! different seed nodes, neither of them the node that owns the swarm's slot, share one view
//! and one set of tokens; the slot moved to another node while they serve (the clients then
//! get MOVED) changes nothing; the owner killed is UNAVAILABLE within the store's bound; and
//! the real `tracker` names the Cluster in its banner.

mod common;
#[path = "tracker_store/support.rs"]
mod support;

use common::redis::RedisCluster;
use common::tracker_process::TrackerProcess;
use p2pshare::pb::tracker as pb;
use p2pshare::tracker::{StoreConfig, TrackerLimits};
use std::time::Duration;
use support::*;
use tonic::Code;

/// The nodes of `cluster` other than the one that owns the slot of `prefix`'s keys.
fn not_owning(cluster: &RedisCluster, prefix: &str) -> (u16, usize, Vec<usize>) {
    let slot = cluster.slot(&format!("{{{prefix}}}:counts"));
    let owner = cluster.owner(slot);
    let others = (0..cluster.nodes.len()).filter(|&i| i != owner).collect();
    (slot, owner, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_on_a_cluster_share_one_view_through_any_seed_and_a_moved_slot() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let (slot, owner, others) = not_owning(&cluster, "test");
    let interval = Duration::from_secs(10);
    let limits = TrackerLimits::default();
    // Different seeds, neither owning the slot: each learns where it lives.
    let on = |seed: usize| StoreConfig::parse(&cluster.url(&[seed]), "test").unwrap();
    let a = Served::start(&on(others[0]), interval, limits.clone()).await;
    let b = Served::start(&on(others[1]), interval, limits.clone()).await;
    let (mut ca, mut cb) = (a.client(), b.client());

    let token = register(&mut ca, "p1", 7001, &[entry("a", false)])
        .await
        .unwrap();
    assert_eq!(
        holders(&mut cb, "a").await.unwrap(),
        [("p1".into(), "127.0.0.1:7001".into(), false)]
    );
    // A's token is good on B.
    cb.heartbeat(heartbeat("p1", &token)).await.unwrap();
    cb.announce_file(pb::AnnounceFileRequest {
        peer_id: "p1".into(),
        session_token: token.clone(),
        file: Some(entry("b", true)),
    })
    .await
    .unwrap();
    assert_eq!(
        holders(&mut ca, "b").await.unwrap(),
        [("p1".into(), "127.0.0.1:7001".into(), true)]
    );
    // The keys really are on the owner, not on the seeds.
    let keys = |i: usize| cluster.command(i, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
    assert_eq!(keys(others[0]), redis::Value::Int(0));
    assert!(matches!(keys(owner), redis::Value::Int(n) if n > 0));

    // An operator moves the slot to A's seed while both serve: their next calls get MOVED
    // from the old owner and follow it.
    cluster.move_slot(slot, owner, others[0]);
    assert_eq!(cluster.owner(slot), others[0]);
    assert_eq!(keys(owner), redis::Value::Int(0));
    register(&mut cb, "p2", 7002, &[entry("a", true)])
        .await
        .unwrap();
    assert_eq!(
        holders(&mut ca, "a").await.unwrap(),
        [
            ("p1".into(), "127.0.0.1:7001".into(), false),
            ("p2".into(), "127.0.0.1:7002".into(), true),
        ]
    );
    assert_eq!(peer_ids(&mut ca, 1).await, ["p1", "p2"]);
    // They did send to the old owner and were told MOVED (they learned no other way).
    let errors = match cluster.command(owner, &["INFO", "errorstats"]) {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO: {other:?}"),
    };
    assert!(errors.contains("errorstat_MOVED:count="), "{errors}");
    assert_eq!(
        files(&mut cb, 0).await,
        [("a".into(), 2, 1), ("b".into(), 1, 1)]
    );
    ca.leave(pb::LeaveRequest {
        peer_id: "p1".into(),
        session_token: token,
    })
    .await
    .unwrap();
    assert_eq!(
        holders(&mut cb, "b").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(peer_ids(&mut cb, 0).await, ["p2"]);
    // The node that owns the slot dies (no replica to promote): UNAVAILABLE within the store's
    // bound, naming the Cluster, never a hang (the outer timeout only catches one).
    cluster.nodes[others[0]].kill();
    let err = tokio::time::timeout(Duration::from_secs(30), holders(&mut ca, "a"))
        .await
        .expect("WhoHas hung with the owner down")
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("Redis at redis+cluster://127.0.0.1:"),
        "{err:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_binary_with_store_redis_cluster_names_it_and_serves() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let (_, owner, others) = not_owning(&cluster, "bin");
    let url = cluster.url(&[others[0], others[1]]);
    let a = TrackerProcess::start(&["--store", &url, "--store-prefix", "bin"]);
    assert!(
        a.banner.contains(&format!("store {url} (keys {{bin}}:*)")),
        "{:?}",
        a.banner
    );
    let b = TrackerProcess::start(&["--store", &cluster.url(&[owner]), "--store-prefix", "bin"]);
    register(&mut a.client(), "p1", 7001, &[entry("a", false)])
        .await
        .unwrap();
    assert_eq!(holders(&mut b.client(), "a").await.unwrap()[0].0, "p1");
    // A Cluster URL with a database (a Cluster has only 0) fails at start, naming the flag.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tracker"))
        .args(["--port", "0", "--store", &format!("{url}/1")])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--store") && stderr.contains("one database"),
        "{stderr}"
    );
}
