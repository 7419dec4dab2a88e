//! Peers that know several trackers (`PeerConfig::fallback_trackers`, `peer --tracker`): they
//! register with one, move to the next when it stops answering (the session token tried first),
//! come back to the first when it answers again, and `get`/`whohas` work while any one is up.
//! Trackers run in this process on port 0 (real ones, and a fake that writes down each call it
//! gets); the `peer` binary is driven for the command line. Every wait has a deadline.

mod common;
#[path = "tracker_failover/fake.rs"]
mod fake;

use common::{TestPeer, TestTracker};
use fake::{FakeTracker, Store, FAKE_TOKEN};
use p2pshare::pb::tracker as tpb;
use p2pshare::peer::{PeerConfig, PeerNode};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The trackers' heartbeat interval in these tests.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Bound on a peer moving to the next tracker: about one heartbeat, with room for a loaded
/// machine.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(6);
/// Bound on a peer coming back to the first tracker: it looks back every 4 heartbeats.
const RETURN_DEADLINE: Duration = Duration::from_secs(20);
/// Bound on anything else awaited (a download, a process).
const STEP_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// Waits until `check` holds, failing the test past `deadline`.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < end, "not within {deadline:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The peer ids a tracker lists, sorted (none if it does not answer).
async fn peer_ids(tracker: SocketAddr) -> Vec<String> {
    let mut client = tpb::tracker_client::TrackerClient::new(
        p2pshare::grpc::channel(&tracker.to_string()).unwrap(),
    );
    let Ok(answer) = client.list_peers(tpb::ListPeersRequest::default()).await else {
        return Vec::new();
    };
    let mut ids: Vec<String> = answer
        .into_inner()
        .peers
        .into_iter()
        .map(|p| p.peer_id)
        .collect();
    ids.sort();
    ids
}

/// The ids of the holders a tracker lists for `name`, sorted.
async fn holders(tracker: SocketAddr, name: &str) -> Vec<String> {
    let mut client = tpb::tracker_client::TrackerClient::new(
        p2pshare::grpc::channel(&tracker.to_string()).unwrap(),
    );
    let request = tpb::WhoHasRequest {
        name: name.into(),
        ..Default::default()
    };
    let Ok(answer) = client.who_has(request).await else {
        return Vec::new();
    };
    let mut ids: Vec<String> = answer
        .into_inner()
        .versions
        .into_iter()
        .flat_map(|v| v.holders)
        .map(|h| h.peer_id)
        .collect();
    ids.sort();
    ids
}

fn also(trackers: &[SocketAddr]) -> impl FnOnce(&mut PeerConfig) {
    let more: Vec<String> = trackers.iter().map(|t| t.to_string()).collect();
    move |config| config.fallback_trackers = more
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_move_to_the_second_tracker_when_the_first_dies_and_come_back_to_it() {
    let first = TestTracker::start(HEARTBEAT).await;
    let second = TestTracker::start(HEARTBEAT).await;
    let (t1, t2) = (first.addr, second.addr);
    let data = common::content(300_000, 15);
    let seeder = TestPeer::start_with("S", t1, &[("f.bin", &data)], also(&[t2])).await;
    let getter = TestPeer::start_with("D", t1, &[], also(&[t2])).await;
    assert_eq!(peer_ids(t1).await, ["D", "S"]);
    assert!(peer_ids(t2).await.is_empty(), "registered with one only");

    first.stop().await;
    eventually(
        "both peers registered with the second tracker",
        FAILOVER_DEADLINE,
        || async { peer_ids(t2).await == ["D", "S"] },
    )
    .await;
    assert_eq!(
        holders(t2, "f.bin").await,
        ["S"],
        "the full catalog came along"
    );

    // A download starts while the first tracker is down.
    let report = tokio::time::timeout(STEP_DEADLINE, getter.get("f.bin"))
        .await
        .expect("the get ended")
        .expect("the get succeeded");
    assert_eq!(report.size, data.len() as u64);
    assert_eq!(
        std::fs::read(getter.files_dir().join("f.bin")).unwrap(),
        data
    );
    eventually(
        "the new copy announced to the second tracker",
        STEP_DEADLINE,
        || async { holders(t2, "f.bin").await == ["D", "S"] },
    )
    .await;

    // The first tracker comes back (empty) on its port: the peers go back to it.
    let Ok(listener) = tokio::net::TcpListener::bind(t1).await else {
        eprintln!("skipping the return to the first tracker: {t1} cannot be bound again");
        return;
    };
    let _back = TestTracker::start_on(listener, HEARTBEAT);
    eventually(
        "both peers back with the first tracker",
        RETURN_DEADLINE,
        || async { peer_ids(t1).await == ["D", "S"] },
    )
    .await;
    assert_eq!(holders(t1, "f.bin").await, ["D", "S"]);
    drop((seeder, getter, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_tracker_down_a_query_fails_once_with_each_tracker_named() {
    let first = TestTracker::start(HEARTBEAT).await;
    let second = TestTracker::start(HEARTBEAT).await;
    let (t1, t2) = (first.addr, second.addr);
    let peer = TestPeer::start_with("P", t1, &[], also(&[t2])).await;
    first.stop().await;
    second.stop().await;

    let error = tokio::time::timeout(STEP_DEADLINE, peer.get("f.bin"))
        .await
        .expect("the query is bounded")
        .expect_err("no tracker to ask")
        .to_string();
    assert!(
        error.starts_with("tracker unreachable at every address tried: "),
        "{error}"
    );
    assert!(
        error.contains(&format!("{t1}: ")) && error.contains(&format!("{t2}: ")),
        "{error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tracker_sharing_the_store_keeps_the_session_and_gets_the_announcements() {
    let first = TestTracker::start(HEARTBEAT).await;
    let shared = FakeTracker::start(Store::Shared).await;
    let peer = TestPeer::start_with("S", first.addr, &[("a", b"a")], also(&[shared.addr])).await;
    first.stop().await;

    eventually(
        "heartbeats at the second tracker",
        FAILOVER_DEADLINE,
        || async {
            shared
                .calls()
                .iter()
                .filter(|c| c.rpc == "Heartbeat")
                .count()
                >= 2
        },
    )
    .await;
    // A file that appears now is announced to the tracker in use.
    std::fs::write(peer.files_dir().join("b"), b"b").unwrap();
    eventually(
        "the announcement at the second tracker",
        STEP_DEADLINE,
        || async { shared.calls().iter().any(|c| c.rpc == "AnnounceFile") },
    )
    .await;
    let calls = shared.calls();
    assert_eq!(
        calls[0].rpc, "Heartbeat",
        "the token is tried first: {calls:?}"
    );
    let token = &calls[0].token;
    assert!(!token.is_empty() && token != FAKE_TOKEN, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c.rpc != "Register" && c.token == *token),
        "no registration, the first tracker's token throughout: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tracker_of_its_own_gets_the_token_then_the_full_catalog() {
    let first = TestTracker::start(HEARTBEAT).await;
    let own = FakeTracker::start(Store::Own).await;
    let files: [(&str, &[u8]); 3] = [("a", b"a"), ("b", b"b"), ("c", b"c")];
    let _peer = TestPeer::start_with("S", first.addr, &files, also(&[own.addr])).await;
    first.stop().await;

    eventually(
        "heartbeats with the new session",
        FAILOVER_DEADLINE,
        || async {
            own.calls()
                .iter()
                .any(|c| c.rpc == "Heartbeat" && c.token == FAKE_TOKEN)
        },
    )
    .await;
    let calls = own.calls();
    let old = &calls[0].token;
    assert_eq!(
        calls[..2]
            .iter()
            .map(|c| (c.rpc, c.token.as_str(), c.files))
            .collect::<Vec<_>>(),
        [("Heartbeat", old.as_str(), 0), ("Register", "", 3)],
        "the token tried, then (refused) a fresh registration with the whole catalog"
    );
    assert_ne!(old, FAKE_TOKEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_is_an_answer_not_a_reason_to_move_on() {
    let full = FakeTracker::start(Store::Full).await;
    let second = TestTracker::start(HEARTBEAT).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = PeerConfig::new("R", tmp.path().join("R"), &full.addr.to_string());
    config.fallback_trackers = vec![second.addr.to_string()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (node, info) = PeerNode::start(config, listener).await.unwrap();
    let refusal = info.registration.expect_err("the first tracker is full");
    assert!(refusal.contains("too many peers"), "{refusal}");
    assert_eq!(info.tracker_address, full.addr.to_string());
    // The heartbeat loop asks again (after its refusal backoff), still of the first tracker.
    eventually("a second registration attempt", STEP_DEADLINE, || async {
        full.calls().iter().filter(|c| c.rpc == "Register").count() >= 2
    })
    .await;
    assert!(peer_ids(second.addr).await.is_empty(), "never moved on");
    node.shutdown().await;
}

#[tokio::test]
async fn too_many_trackers_are_refused_and_repeats_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = PeerConfig::new("M", tmp.path().join("M"), "127.0.0.1:1");
    config.fallback_trackers = (2..=p2pshare::peer::MAX_TRACKERS as u16 + 1)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = PeerNode::start(config.clone(), listener).await.unwrap_err();
    assert_eq!(error.to_string(), "too many trackers: 17 given, at most 16");

    // The same addresses again and again count once.
    let tracker = TestTracker::start(HEARTBEAT).await;
    let address = tracker.addr.to_string();
    config.tracker_address = address.clone();
    config.fallback_trackers = vec![address.clone(); 40];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (node, info) = PeerNode::start(config, listener).await.unwrap();
    assert!(info.registration.is_ok(), "{:?}", info.registration);
    assert_eq!(info.tracker_address, address);
    node.shutdown().await;
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs the `peer` binary with `args` (under `root`) to its end, within [`STEP_DEADLINE`]:
/// (success, stdout, stderr).
fn run_peer(root: &Path, args: &[String]) -> (bool, String, String) {
    let stdout = root.join("stdout");
    let stderr = root.join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(args)
        .arg("--root")
        .arg(root)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + STEP_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("peer {args:?} still running after {STEP_DEADLINE:?}");
        }
        std::thread::sleep(POLL);
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    (status.success(), read(&stdout), read(&stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_binary_takes_more_trackers_and_says_which_one_it_uses() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let down = format!("127.0.0.1:{}", closed_port());
    let up = tracker.addr.to_string();
    let args: Vec<String> = ["X", "0", &down, "--tracker", &up, "--bind", "127.0.0.1"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--exec".into(), "whohas nothing".into()])
        .collect();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || run_peer(&root, &args))
        .await
        .unwrap();
    // The whohas reached the second tracker, which knows no such file.
    assert!(!ok, "whohas of an unknown file fails:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("registered with tracker {up} as 127.0.0.1:")),
        "{stdout}"
    );
    assert!(
        stdout.contains("error: no peer has \"nothing\""),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_binary_with_every_tracker_down_prints_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (a, b) = (closed_port(), closed_port());
    let args: Vec<String> = [
        "X".to_string(),
        "0".into(),
        format!("127.0.0.1:{a}"),
        "--tracker".into(),
        format!("127.0.0.1:{b}"),
        "--bind".into(),
        "127.0.0.1".into(),
        "--exec".into(),
        "whohas x".into(),
    ]
    .into();
    let (ok, stdout, _) = tokio::task::spawn_blocking(move || run_peer(&root, &args))
        .await
        .unwrap();
    assert!(!ok);
    let errors: Vec<&str> = stdout.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stdout}");
    assert!(
        errors[0].contains("tracker unreachable at every address tried")
            && errors[0].contains(&format!("127.0.0.1:{a}: "))
            && errors[0].contains(&format!("127.0.0.1:{b}: ")),
        "{stdout}"
    );

    // More than 16 trackers: refused with a clear line before anything starts.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mut args: Vec<String> = vec!["Y".into(), "0".into(), "127.0.0.1:1".into()];
    for port in 2..=17 {
        args.extend(["--tracker".into(), format!("127.0.0.1:{port}")]);
    }
    let (ok, _, stderr) = tokio::task::spawn_blocking(move || run_peer(&root, &args))
        .await
        .unwrap();
    assert!(!ok);
    assert!(
        stderr.contains("too many trackers: 17 given, at most 16"),
        "{stderr}"
    );
}
