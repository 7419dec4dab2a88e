//! The tracker's stores: one contract, the same assertions run against the in-memory store and
//! the Redis store (a real `redis-server` of the test's own, `common::redis`). What only a
//! shared store does is in `tracker_store_shared.rs`. The trackers are in-process servers on
//! port 0.

mod common;
#[path = "tracker_store/support.rs"]
mod support;

use p2pshare::chunking::ContentId;
use p2pshare::pb::tracker as pb;
use p2pshare::tracker::TrackerLimits;
use std::time::{Duration, Instant};
use support::*;
use tonic::Code;

/// Runs `$body(redis: bool)` as two tests: `memory` and `redis`.
macro_rules! contract {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$body(false).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$body(true).await
            }
        }
    };
}

contract!(calls_are_reflected_in_every_answer, calls_are_reflected);
async fn calls_are_reflected(redis: bool) {
    let Some(backend) = Backend::of(redis) else {
        return;
    };
    let tracker = Served::start(
        &backend.config(),
        Duration::from_secs(10),
        TrackerLimits::default(),
    )
    .await;
    let mut c = tracker.client();
    let t1 = register(&mut c, "p1", 7001, &[entry("a", false), entry("b", false)])
        .await
        .unwrap();
    let t2 = register(&mut c, "p2", 7002, &[entry("a", true)])
        .await
        .unwrap();
    assert_eq!(
        holders(&mut c, "a").await.unwrap(),
        [
            ("p1".into(), "127.0.0.1:7001".into(), false),
            ("p2".into(), "127.0.0.1:7002".into(), true)
        ]
    );
    assert_eq!(
        files(&mut c, 1).await,
        [("a".into(), 2, 1), ("b".into(), 1, 0)]
    );
    let peers = c
        .list_peers(pb::ListPeersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .peers;
    let summary: Vec<_> = peers
        .iter()
        .map(|p| {
            (
                p.peer_id.as_str(),
                p.address.as_str(),
                p.file_count,
                p.total_bytes,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("p1", "127.0.0.1:7001", 2, 2000),
            ("p2", "127.0.0.1:7002", 1, 1000)
        ]
    );

    // Refusals: the codes peers act on.
    let err = c.heartbeat(heartbeat("p1", &t2)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = c.heartbeat(heartbeat("ghost", &t1)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = register(&mut c, "p1", 7009, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("127.0.0.1:7001"), "{err:?}");
    // Its own token re-registers it (same token back), with a new catalog.
    let again = c
        .register(pb::RegisterRequest {
            peer_id: "p1".into(),
            port: 7001,
            files: vec![entry("a", false), entry("b", false)],
            session_token: t1.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.session_token, t1);
    assert_eq!(again.advertised_address, "127.0.0.1:7001");

    // Partial -> complete, withdraw, leave.
    c.announce_file(pb::AnnounceFileRequest {
        peer_id: "p2".into(),
        session_token: t2.clone(),
        file: Some(entry("a", false)),
    })
    .await
    .unwrap();
    assert_eq!(files(&mut c, 10).await[0], ("a".into(), 2, 0));
    c.withdraw_file(pb::WithdrawFileRequest {
        peer_id: "p1".into(),
        session_token: t1.clone(),
        name: "b".into(),
    })
    .await
    .unwrap();
    let err = holders(&mut c, "b").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    c.leave(pb::LeaveRequest {
        peer_id: "p2".into(),
        session_token: t2.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        holders(&mut c, "a").await.unwrap(),
        [("p1".into(), "127.0.0.1:7001".into(), false)]
    );
    assert_eq!(peer_ids(&mut c, 0).await, ["p1"]);
    let err = c.heartbeat(heartbeat("p2", &t2)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    tracker.stop().await;
}

contract!(pages_and_samples_are_bounded, pages_and_samples);
async fn pages_and_samples(redis: bool) {
    let Some(backend) = Backend::of(redis) else {
        return;
    };
    let tracker = Served::start(
        &backend.config(),
        Duration::from_secs(10),
        TrackerLimits::unlimited(),
    )
    .await;
    let mut c = tracker.client();
    let mut ids = Vec::new();
    for i in 0..12 {
        let id = format!("peer-{i:02}");
        let files = [entry("shared", false), entry(&format!("own-{i:02}"), false)];
        register(&mut c, &id, 7000 + i, &files).await.unwrap();
        ids.push(id);
    }
    assert_eq!(peer_ids(&mut c, 5).await, ids);
    let listed = files(&mut c, 5).await;
    assert_eq!(listed.len(), 13);
    assert_eq!(listed.last().unwrap(), &("shared".to_string(), 12, 0));
    // A sample of 3 distinct holders, sorted by id, drawn afresh.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let reply = c
            .who_has(pb::WhoHasRequest {
                name: "shared".into(),
                max_holders: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let got: Vec<String> = reply.versions[0]
            .holders
            .iter()
            .map(|h| h.peer_id.clone())
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        seen.extend(got);
    }
    assert!(seen.len() > 3, "the sample never changed: {seen:?}");
    // A content id prefix selects the version; a wrong one is NOT_FOUND, a malformed one
    // INVALID_ARGUMENT.
    let cid = ContentId::of(b"shared").to_hex();
    let reply = c
        .who_has(pb::WhoHasRequest {
            name: "shared".into(),
            content_id_prefix: cid[..6].into(),
            max_holders: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.versions[0].content_id, cid);
    let other = if cid.starts_with('0') { "1" } else { "0" };
    let err = c
        .who_has(pb::WhoHasRequest {
            name: "shared".into(),
            content_id_prefix: other.into(),
            max_holders: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = c
        .who_has(pb::WhoHasRequest {
            name: "shared".into(),
            content_id_prefix: "XYZ".into(),
            max_holders: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    tracker.stop().await;
}

contract!(caps_hold, caps);
async fn caps(redis: bool) {
    let Some(backend) = Backend::of(redis) else {
        return;
    };
    let limits = TrackerLimits {
        max_peers: 2,
        max_peers_per_ip: 100,
        max_files_per_peer: 2,
        max_files_per_ip: 3,
        max_catalog_files: 100,
    };
    let tracker = Served::start(&backend.config(), Duration::from_secs(10), limits).await;
    let mut c = tracker.client();
    let err = register(
        &mut c,
        "big",
        7000,
        &[entry("a", false), entry("b", false), entry("c", false)],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--max-files-per-peer"), "{err:?}");
    let t1 = register(&mut c, "p1", 7001, &[entry("a", false), entry("b", false)])
        .await
        .unwrap();
    // Two more files from this address would pass its 3.
    let err = register(&mut c, "p2", 7002, &[entry("x", false), entry("y", false)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("127.0.0.1") && err.message().contains("--max-files-per-ip"),
        "{err:?}"
    );
    register(&mut c, "p2", 7002, &[]).await.unwrap();
    let err = register(&mut c, "p3", 7003, &[]).await.unwrap_err();
    assert!(err.message().contains("--max-peers"), "{err:?}");
    // A third file for p1: over its own cap, nothing changes.
    let err = c
        .announce_file(pb::AnnounceFileRequest {
            peer_id: "p1".into(),
            session_token: t1.clone(),
            file: Some(entry("c", false)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Replacing a file by name does not grow the catalog.
    c.announce_file(pb::AnnounceFileRequest {
        peer_id: "p1".into(),
        session_token: t1.clone(),
        file: Some(entry("a", true)),
    })
    .await
    .unwrap();
    assert_eq!(
        files(&mut c, 0).await,
        [("a".into(), 1, 1), ("b".into(), 1, 0)]
    );
    tracker.stop().await;
}

contract!(silent_peers_expire, expiry);
async fn expiry(redis: bool) {
    let Some(backend) = Backend::of(redis) else {
        return;
    };
    let tracker = Served::start(
        &backend.config(),
        Duration::from_secs(1),
        TrackerLimits::default(),
    )
    .await;
    let mut c = tracker.client();
    let token = register(&mut c, "quiet", 7001, &[entry("a", false)])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while holders(&mut c, "a").await.is_ok() {
        assert!(Instant::now() < deadline, "still listed after 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = c.heartbeat(heartbeat("quiet", &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(peer_ids(&mut c, 0).await.is_empty());
    assert!(files(&mut c, 0).await.is_empty());
    tracker.stop().await;
}
