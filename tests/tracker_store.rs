//! The tracker's stores: one contract, the same assertions run against the in-memory store and
//! the Redis store (a real `redis-server` of the test's own, `common::redis`), then what only a
//! shared store does: several trackers on one Redis serving one view, a tracker restarted empty
//! answering at once, Redis down answered UNAVAILABLE, garbage in Redis answered without a
//! panic. The trackers are in-process servers on port 0, except one test of the real binaries
//! (`tracker --store redis://...`).

mod common;

use common::redis::RedisServer;
use p2pshare::chunking::ContentId;
use p2pshare::grpc::{ServerLimits, ServerSecurity};
use p2pshare::pb::tracker as pb;
use p2pshare::pb::tracker::tracker_client::TrackerClient;
use p2pshare::tracker::{StoreConfig, TrackerConfig, TrackerLimits, TrackerStore};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

/// A tracker served in this process over a store.
struct Served {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(store: &StoreConfig, heartbeat: Duration, limits: TrackerLimits) -> Self {
        let config = TrackerConfig {
            heartbeat_interval: heartbeat,
        };
        let opened = TrackerStore::open(store, &config, limits).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            p2pshare::tracker::serve_with_store(
                listener,
                config,
                opened,
                ServerSecurity::default(),
                &ServerLimits::default(),
                async move { token.cancelled().await },
            )
            .await
            .unwrap();
        });
        Served { addr, stop, task }
    }

    fn client(&self) -> TrackerClient<Channel> {
        TrackerClient::new(p2pshare::grpc::channel(&self.addr.to_string()).unwrap())
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Which store a contract test runs against; the Redis server lives as long as this.
enum Backend {
    Memory,
    Redis(RedisServer),
}

impl Backend {
    /// The backend, or `None` when Redis is missing (the harness printed the skip line).
    fn of(redis: bool) -> Option<Self> {
        if redis {
            RedisServer::start().map(Backend::Redis)
        } else {
            Some(Backend::Memory)
        }
    }

    fn config(&self) -> StoreConfig {
        match self {
            Backend::Memory => StoreConfig::Memory,
            Backend::Redis(server) => StoreConfig::parse(&server.url(), "test").unwrap(),
        }
    }
}

fn entry(name: &str, partial: bool) -> pb::FileEntry {
    pb::FileEntry {
        name: name.into(),
        size: name.len() as u64 * 1000,
        content_id: ContentId::of(name.as_bytes()).to_hex(),
        partial,
    }
}

async fn register(
    client: &mut TrackerClient<Channel>,
    id: &str,
    port: u32,
    files: &[pb::FileEntry],
) -> Result<String, tonic::Status> {
    let reply = client
        .register(pb::RegisterRequest {
            peer_id: id.into(),
            port,
            files: files.to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(reply.into_inner().session_token)
}

/// (peer id, address, partial) of each holder of `name`'s first version.
async fn holders(
    client: &mut TrackerClient<Channel>,
    name: &str,
) -> Result<Vec<(String, String, bool)>, tonic::Status> {
    let reply = client
        .who_has(pb::WhoHasRequest {
            name: name.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(reply.versions[0]
        .holders
        .iter()
        .map(|h| (h.peer_id.clone(), h.address.clone(), h.partial))
        .collect())
}

/// Every live peer id, following page tokens (pages of `size`).
async fn peer_ids(client: &mut TrackerClient<Channel>, size: u32) -> Vec<String> {
    let (mut all, mut token) = (Vec::new(), String::new());
    for _ in 0..1000 {
        let page = client
            .list_peers(pb::ListPeersRequest {
                page_size: size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.peers.into_iter().map(|p| p.peer_id));
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
    panic!("more than 1000 pages");
}

/// Every listed version as (name, holders, partial holders), following page tokens.
async fn files(client: &mut TrackerClient<Channel>, size: u32) -> Vec<(String, u32, u32)> {
    let (mut all, mut token) = (Vec::new(), String::new());
    for _ in 0..1000 {
        let page = client
            .list_files(pb::ListFilesRequest {
                page_size: size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(
            page.files
                .into_iter()
                .map(|f| (f.name, f.holder_count, f.partial_holder_count)),
        );
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
    panic!("more than 1000 pages");
}

fn heartbeat(id: &str, token: &str) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        peer_id: id.into(),
        session_token: token.into(),
    }
}

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

// ---------------------------------------------------------------------------------------------
// What only a shared store does
// ---------------------------------------------------------------------------------------------

/// Two trackers on one Redis (each with its own connection, as two processes would have).
async fn two_trackers(server: &RedisServer, heartbeat: Duration) -> (Served, Served) {
    let store = StoreConfig::parse(&server.url(), "test").unwrap();
    let a = Served::start(&store, heartbeat, TrackerLimits::default()).await;
    let b = Served::start(&store, heartbeat, TrackerLimits::default()).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_on_one_redis_share_one_view_and_tokens() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = two_trackers(&server, Duration::from_secs(10)).await;
    let (mut ca, mut cb) = (a.client(), b.client());
    let token = register(&mut ca, "p1", 7001, &[entry("a", false)])
        .await
        .unwrap();
    register(&mut cb, "p2", 7002, &[entry("a", true)])
        .await
        .unwrap();
    let both = vec![
        ("p1".to_string(), "127.0.0.1:7001".to_string(), false),
        ("p2".to_string(), "127.0.0.1:7002".to_string(), true),
    ];
    assert_eq!(holders(&mut ca, "a").await.unwrap(), both);
    assert_eq!(holders(&mut cb, "a").await.unwrap(), both);
    assert_eq!(peer_ids(&mut cb, 1).await, ["p1", "p2"]);
    assert_eq!(files(&mut ca, 0).await, [("a".into(), 2, 1)]);
    // A's token is good on B: heartbeat, announce, leave.
    cb.heartbeat(heartbeat("p1", &token)).await.unwrap();
    cb.announce_file(pb::AnnounceFileRequest {
        peer_id: "p1".into(),
        session_token: token.clone(),
        file: Some(entry("b", false)),
    })
    .await
    .unwrap();
    assert_eq!(holders(&mut ca, "b").await.unwrap()[0].0, "p1");
    cb.leave(pb::LeaveRequest {
        peer_id: "p1".into(),
        session_token: token.clone(),
    })
    .await
    .unwrap();
    assert_eq!(holders(&mut ca, "a").await.unwrap(), both[1..]);
    assert_eq!(
        holders(&mut ca, "b").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(peer_ids(&mut ca, 0).await, ["p2"]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_restarted_empty_serves_the_full_view_at_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = two_trackers(&server, Duration::from_secs(10)).await;
    let mut ca = a.client();
    for i in 0..5 {
        register(&mut ca, &format!("p{i}"), 7000 + i, &[entry("a", false)])
            .await
            .unwrap();
    }
    a.stop().await;
    b.stop().await;
    let store = StoreConfig::parse(&server.url(), "test").unwrap();
    let fresh = Served::start(&store, Duration::from_secs(10), TrackerLimits::default()).await;
    let mut c = fresh.client();
    // Its first answer, no re-registration in between.
    assert_eq!(holders(&mut c, "a").await.unwrap().len(), 5);
    assert_eq!(peer_ids(&mut c, 0).await.len(), 5);
    // Another prefix is another swarm on the same server.
    let other = StoreConfig::parse(&server.url(), "other").unwrap();
    let elsewhere = Served::start(&other, Duration::from_secs(10), TrackerLimits::default()).await;
    assert_eq!(
        holders(&mut elsewhere.client(), "a")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    fresh.stop().await;
    elsewhere.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_with_a_clear_message_then_the_tracker_reconnects() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let (a, _b) = two_trackers(&server, Duration::from_secs(10)).await;
    let mut c = a.client();
    register(&mut c, "p1", 7001, &[entry("a", false)])
        .await
        .unwrap();
    server.kill();
    // Bounded: the store gives up within seconds; the outer timeout only catches a hang.
    for call in 0..3 {
        let answer = tokio::time::timeout(Duration::from_secs(30), holders(&mut c, "a"))
            .await
            .expect("WhoHas hung with Redis down");
        let err = answer.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "call {call}: {err:?}");
        assert!(
            err.message().contains("store is unavailable")
                && err.message().contains("Redis at redis://127.0.0.1:"),
            "{err:?}"
        );
        let err = tokio::time::timeout(Duration::from_secs(30), register(&mut c, "p2", 7002, &[]))
            .await
            .expect("Register hung with Redis down")
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    // The tracker itself still answers (health) and does not crash.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        p2pshare::grpc::channel(&a.addr.to_string()).unwrap(),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    // Redis back (empty: soft state): the same tracker reconnects, peers register again.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match register(&mut c, "p1", 7001, &[entry("a", false)]).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(
                    Instant::now() < deadline,
                    "no reconnection within 30 s: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(holders(&mut c, "a").await.unwrap().len(), 1);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_is_never_a_panic() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = StoreConfig::parse(&server.url(), "test").unwrap();
    let tracker = Served::start(&store, Duration::from_secs(10), TrackerLimits::default()).await;
    let mut c = tracker.client();
    register(&mut c, "p1", 7001, &[entry("a", false)])
        .await
        .unwrap();
    let cid = ContentId::of(b"a").to_hex();
    let good = format!("a\0{cid}\0{:020}", 1000);
    let mut r = server.connection();
    let mut run = |args: &[&[u8]]| {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::RedisResult<redis::Value> = cmd.query(&mut r);
    };
    // Holders that are not peer ids, a live one with a bad address, members that are not
    // versions, a peer record of the wrong type, counters that are not numbers.
    run(&[
        b"SADD",
        format!("{{test}}:vc:{good}").as_bytes(),
        b"bad id!",
        b"evil",
        "\u{202e}x".as_bytes(),
    ]);
    run(&[b"SET", b"{test}:live:evil", b"1"]);
    run(&[
        b"HSET",
        b"{test}:peer:evil",
        b"addr",
        b"not an address\x1b[2J",
        b"token",
        b"x",
    ]);
    run(&[
        b"ZADD",
        b"{test}:versions",
        b"0",
        b"garbage",
        b"0",
        b"a\0zz\0x",
        b"0",
        b"a\0\xff\xfe\0",
    ]);
    run(&[b"ZADD", b"{test}:peers", b"0", b"bad id!", b"0", b"\xff"]);
    run(&[b"SET", b"{test}:live:bad id!", b"1"]);
    run(&[b"SET", b"{test}:peer:\xff", b"not a hash"]);
    run(&[b"SET", b"{test}:live:\xff", b"1"]);
    let answer = holders(&mut c, "a").await;
    // p1 is still listed; nothing malformed reaches the answer.
    assert_eq!(
        answer.unwrap(),
        [("p1".into(), "127.0.0.1:7001".into(), false)]
    );
    let peers = c.list_peers(pb::ListPeersRequest::default()).await;
    match peers {
        Ok(page) => {
            let ids: Vec<_> = page
                .into_inner()
                .peers
                .into_iter()
                .map(|p| p.peer_id)
                .collect();
            assert_eq!(ids, ["p1"]);
        }
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
    }
    match c.list_files(pb::ListFilesRequest::default()).await {
        Ok(page) => {
            let names: Vec<_> = page
                .into_inner()
                .files
                .into_iter()
                .map(|f| f.name)
                .collect();
            assert_eq!(names, ["a"]);
        }
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
    }
    run(&[b"HSET", b"{test}:counts", b"peers", b"lots"]);
    run(&[b"SET", b"{test}:ipp", b"a string"]);
    let err = register(&mut c, "p2", 7002, &[entry("b", false)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // And the tracker still serves.
    assert_eq!(holders(&mut c, "a").await.unwrap().len(), 1);
    tracker.stop().await;
}

/// A `tracker` process; killed when dropped.
struct TrackerProcess {
    child: std::process::Child,
    addr: SocketAddr,
    /// What it printed before it served.
    banner: Vec<String>,
}

impl TrackerProcess {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tracker"))
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut banner = Vec::new();
        while !banner.iter().any(|l: &String| l.starts_with("store ")) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("tracker did not start; it printed {banner:?}"));
            banner.push(line);
        }
        let addr = banner
            .iter()
            .find_map(|l| l.strip_prefix("tracker listening on "))
            .expect("listening line")
            .parse()
            .unwrap();
        TrackerProcess {
            child,
            addr,
            banner,
        }
    }

    fn client(&self) -> TrackerClient<Channel> {
        TrackerClient::new(p2pshare::grpc::channel(&self.addr.to_string()).unwrap())
    }
}

impl Drop for TrackerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_binaries_with_store_redis_share_one_swarm() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let args = ["--store", url.as_str(), "--store-prefix", "bin"];
    let a = TrackerProcess::start(&args);
    let b = TrackerProcess::start(&args);
    assert!(
        a.banner.contains(&format!("store {url} (keys {{bin}}:*)")),
        "{:?}",
        a.banner
    );
    let token = register(&mut a.client(), "p1", 7001, &[entry("a", false)])
        .await
        .unwrap();
    assert_eq!(holders(&mut b.client(), "a").await.unwrap()[0].0, "p1");
    // A is killed; a new process on the same Redis answers at once, and takes A's token.
    drop(a);
    let c = TrackerProcess::start(&args);
    assert_eq!(holders(&mut c.client(), "a").await.unwrap()[0].0, "p1");
    c.client().heartbeat(heartbeat("p1", &token)).await.unwrap();
    // The default store is still memory, and a bad --store fails at start, naming the flag.
    let memory = TrackerProcess::start(&[]);
    assert!(
        memory.banner.contains(&"store memory".to_string()),
        "{:?}",
        memory.banner
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tracker"))
        .args(["--port", "0", "--store", "mongodb://x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--store") && stderr.contains("redis://HOST:PORT"),
        "{stderr}"
    );
    drop(b);
}
