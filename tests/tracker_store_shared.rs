//! What only a shared store does: several trackers on one Redis serving one view (a peer
//! registered with one is listed by another, a `Leave` on one is seen by all, tokens are good on
//! every one), a tracker restarted empty answering at once, Redis down answered UNAVAILABLE
//! (never a hang) and the reconnection after it, garbage in Redis answered without a panic, and
//! the real `tracker --store redis://...` processes.

mod common;
#[path = "tracker_store/support.rs"]
mod support;

use common::redis::RedisServer;
use common::tracker_process::TrackerProcess;
use p2pshare::chunking::ContentId;
use p2pshare::pb::tracker as pb;
use p2pshare::tracker::{StoreConfig, TrackerLimits};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tonic::Code;

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

/// A `peer` process (headless), killed when dropped.
struct PeerProcess(std::process::Child);

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` every 50 ms until it holds, failing the test after `deadline`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> F,
) {
    let end = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < end, "not within {deadline:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 15 end to end, as users run it: two `tracker --store redis://` processes and peers
/// given both (`--tracker`). The first tracker is killed: the seeder goes on with the second
/// under the same session (its token is good there: no new registration), its next
/// announcement lands, and a new `peer --exec "get ..."` whose first tracker is the dead one
/// downloads the file byte for byte through the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_fail_over_between_trackers_sharing_redis_with_their_session() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let args = ["--store", url.as_str(), "--heartbeat-interval", "1"];
    let a = TrackerProcess::start(&args);
    let b = TrackerProcess::start(&[&args[..], &["--metrics-addr", "127.0.0.1:0"]].concat());
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let root = tempfile::tempdir().unwrap();
    let files = root.path().join("S").join("files");
    std::fs::create_dir_all(&files).unwrap();
    let movie: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
    std::fs::write(files.join("movie.bin"), &movie).unwrap();
    let peer = |id: &str, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_peer"))
            .args([
                id,
                "0",
                &a_addr,
                "--tracker",
                &b_addr,
                "--bind",
                "127.0.0.1",
            ])
            .arg("--root")
            .arg(root.path())
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let _seeder = PeerProcess(peer("S", &["--no-shell"]));
    let step = Duration::from_secs(30);
    let listed_on_b = |name: &'static str| {
        let b = b.client();
        move || {
            let mut b = b.clone();
            async move {
                holders(&mut b, name)
                    .await
                    .is_ok_and(|h| h.iter().any(|(id, _, _)| id == "S"))
            }
        }
    };
    eventually("S registered (seen on B)", step, listed_on_b("movie.bin")).await;
    assert!(
        a.log_text().contains("peer registered"),
        "S registered with its first tracker: {}",
        a.log_text()
    );
    // B's gauges read the shared store: S, registered with A, is counted there too.
    let metrics = b.metrics_addr().expect("B serves metrics");
    eventually("B's gauges count S (a scrape of B)", step, || async move {
        scrape_line(metrics, "p2pshare_tracker_peers ")
            .await
            .as_deref()
            == Some("1")
    })
    .await;
    drop(a);

    // S moves to B with its token (shared store): its next announcement lands there...
    std::fs::write(
        files.join("later.bin"),
        b"announced through the second tracker",
    )
    .unwrap();
    eventually(
        "later.bin announced (seen on B)",
        step,
        listed_on_b("later.bin"),
    )
    .await;
    // ...and B never saw a registration of S: the session carried over.
    let b_log = b.log_text();
    assert!(
        !b_log
            .lines()
            .any(|l| l.contains("peer registered") && l.contains("peer=S")),
        "S registered again on B: {b_log}"
    );

    // A new peer whose first tracker is the dead one downloads through B.
    let mut get = peer("D", &["--exec", "get movie.bin"]);
    let end = Instant::now() + step;
    let status = loop {
        if let Some(status) = get.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "get still running after {step:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut get.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
    assert!(
        out.contains(&format!("registered with tracker {b_addr}")),
        "{out}"
    );
    let got = std::fs::read(root.path().join("D").join("files").join("movie.bin")).unwrap();
    assert!(got == movie, "downloaded copy differs");
}

/// The value of the first line of a scrape of `metrics` starting with `series` (None if the
/// scrape failed or has no such line).
async fn scrape_line(metrics: SocketAddr, series: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(metrics).await.ok()?;
        let request = "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        Some(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()??;
    answer
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map(|v| v.trim().to_string())
}
