//! Shutdown reaches the work in flight. Through the real binaries: a peer told to stop (SIGTERM,
//! Ctrl-C, or `exit` in its shell) is gone within [`EXIT_BOUND`] even while a client holds a
//! `GetBlocks` stream it never reads, or while the peer is in the middle of a rate-limited `get`,
//! and an interrupted `get` leaves a partial file that the next `get` resumes. In process: a
//! download cancelled by its node's shutdown returns `Cancelled` with its progress record saved,
//! and a client reading a stream from a seeder that shuts down gets UNAVAILABLE at once.
//!
//! Every wait polls with a deadline; every child is killed when its test ends, pass or fail.

mod common;

use common::{TestPeer, TestTracker};
use p2pshare::chunking::{ContentId, BLOCK_SIZE};
use p2pshare::pb::peer as pb;
use p2pshare::pb::peer::peer_client::PeerClient;
use p2pshare::peer::download::{Destination, DownloadError, DownloadRequest, Progress};
use p2pshare::peer::server::RateLimiter;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// What the issue asks of `exit`, Ctrl-C and SIGTERM with uploads and downloads in flight.
const EXIT_BOUND: Duration = Duration::from_secs(2);
/// Bound on a process printing an expected line, or on a whole `get`.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(10);
const MIB: usize = 1 << 20;
/// Large enough that no stream or download of it ends by itself during a test.
const BIG: usize = 64 * MIB;

/// A child process with its standard output as lines and its standard error in a log file;
/// killed when dropped.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `binary` with `args`, in `logs` for its stderr; standard input piped.
    fn start(logs: &Path, name: &str, binary: &str, args: &[&str]) -> Proc {
        let stderr = logs.join(format!("{name}.stderr"));
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines,
            stderr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The first line of output for which `parse` gives a value (bounded).
    fn expect<T>(&self, what: &str, parse: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut seen = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Some(value) = parse(&line) {
                return value;
            }
            seen.push(line);
        }
        panic!(
            "{}: no {what} within {STEP_TIMEOUT:?}; stdout {seen:?}; stderr:\n{}",
            self.name,
            self.log()
        )
    }

    /// Sends `signal` (`TERM`, `INT`) as a user or a service manager would.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// Waits (bounded by `limit`) for the process to exit; returns how it exited and how long
    /// that took from `since`.
    fn exit_after(&mut self, since: Instant, limit: Duration) -> (ExitStatus, Duration) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, since.elapsed());
            }
            assert!(
                since.elapsed() < limit,
                "{} still running {limit:?} after being told to stop; stderr:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Asserts that the process, told to stop at `since`, exits within [`EXIT_BOUND`].
    fn assert_prompt_exit(&mut self, since: Instant) -> ExitStatus {
        // Wait well past the bound, so a slow exit is measured rather than cut short.
        let (status, took) = self.exit_after(since, 5 * EXIT_BOUND);
        assert!(
            took < EXIT_BOUND,
            "{} took {took:?} to exit (bound {EXIT_BOUND:?}); stderr:\n{}",
            self.name,
            self.log()
        );
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tracker on a free port, and its address.
fn tracker(logs: &Path) -> (Proc, String) {
    let args = ["--port", "0", "--heartbeat-interval", "1"];
    let tracker = Proc::start(logs, "tracker", env!("CARGO_BIN_EXE_tracker"), &args);
    let port = tracker.expect("address", |line| {
        let address = line.strip_prefix("tracker listening on ")?;
        address.trim().parse::<std::net::SocketAddr>().ok()
    });
    (tracker, format!("127.0.0.1:{}", port.port()))
}

/// Starts `peer <id> 0 <tracker> --root <root> <extra...>` and returns it with its Peer service
/// port once it is registered.
fn peer(logs: &Path, id: &str, tracker: &str, root: &Path, extra: &[&str]) -> (Proc, u16) {
    let root = root.to_str().unwrap();
    let mut args = vec![id, "0", tracker, "--root", root];
    args.extend_from_slice(extra);
    let peer = Proc::start(logs, id, env!("CARGO_BIN_EXE_peer"), &args);
    let port = peer.expect("port", |line| {
        line.strip_prefix(&format!("peer {id} serving "))?
            .rsplit_once(" on port ")?
            .1
            .parse::<u16>()
            .ok()
    });
    peer.expect("registration", |line| {
        line.starts_with("registered with tracker").then_some(())
    });
    (peer, port)
}

/// `size` bytes of content, cheap to make: a pseudo-random MiB repeated.
fn big_content(size: usize) -> Vec<u8> {
    let block = common::content(MIB, 42);
    block.iter().copied().cycle().take(size).collect()
}

/// A peer directory `<root>/<id>/files/` holding `files`.
fn seeded(root: &Path, id: &str, files: &[(&str, &[u8])]) {
    let dir = root.join(id).join("files");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
}

/// Opens `GetBlocks` for the whole of `name` (`size` bytes) on the peer at `port` and returns
/// the response stream. A caller that never reads it leaves the server's reader waiting on it
/// once the read-ahead and the HTTP/2 window are full.
async fn open_whole_file_stream(
    port: u16,
    name: &str,
    size: usize,
) -> tonic::Streaming<pb::GetBlocksResponse> {
    let channel = p2pshare::grpc::channel(&format!("127.0.0.1:{port}")).unwrap();
    let request = pb::GetBlocksRequest {
        file: Some(pb::FileSelector {
            name: name.into(),
            content_id: String::new(),
        }),
        first_block: 0,
        block_count: (size / BLOCK_SIZE as usize) as u64,
    };
    PeerClient::new(channel)
        .get_blocks(request)
        .await
        .expect("the stream opens")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_seeder_promptly_while_a_client_holds_an_unread_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_tracker, tracker_address) = tracker(root);
    seeded(root, "seed", &[("big", &big_content(BIG))]);
    let (mut seeder, port) = peer(root, "seed", &tracker_address, root, &["--no-shell"]);

    let _unread = open_whole_file_stream(port, "big", BIG).await;
    let told = Instant::now();
    seeder.signal("TERM");
    let status = seeder.assert_prompt_exit(told);
    assert!(status.success(), "{status}; stderr:\n{}", seeder.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_in_the_shell_is_prompt_while_an_upload_is_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_tracker, tracker_address) = tracker(root);
    seeded(root, "seed", &[("big", &big_content(BIG))]);
    let (mut seeder, port) = peer(root, "seed", &tracker_address, root, &[]);

    let _unread = open_whole_file_stream(port, "big", BIG).await;
    let mut stdin = seeder.child.stdin.take().unwrap();
    let told = Instant::now();
    stdin.write_all(b"exit\n").unwrap();
    let status = seeder.assert_prompt_exit(told);
    assert!(status.success(), "{status}; stderr:\n{}", seeder.log());
}

#[test]
fn ctrl_c_ends_a_get_in_flight_promptly_and_the_next_get_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_tracker, tracker_address) = tracker(root);
    let data = big_content(BIG);
    seeded(root, "seed", &[("big", &data)]);
    // 16 MiB/s: the 64 MiB get takes about 4 s, so it is surely in flight when interrupted.
    let seeder_flags = ["--no-shell", "--max-upload-rate", "16M"];
    let (_seeder, _) = peer(root, "seed", &tracker_address, root, &seeder_flags);

    let partial = root.join("me/.p2pshare/partial");
    let id = ContentId::of(&data);
    let record = partial.join(format!("{id}.done"));
    let verified = || std::fs::read(&record).map_or(0, |r| r.iter().filter(|&&b| b == 1).count());
    let (mut getter, _) = peer(root, "me", &tracker_address, root, &["--exec", "get big"]);
    let deadline = Instant::now() + STEP_TIMEOUT;
    while verified() == 0 {
        assert!(
            Instant::now() < deadline,
            "no progress recorded; stderr:\n{}",
            getter.log()
        );
        std::thread::sleep(POLL);
    }
    let told = Instant::now();
    getter.signal("INT");
    let status = getter.assert_prompt_exit(told);
    assert!(!status.success(), "an interrupted --exec get is a failure");
    assert!(
        partial.join(format!("{id}.part")).exists(),
        "the partial file is kept"
    );
    let kept = verified();
    assert!(kept > 0, "the record of verified pieces is kept");
    assert!(
        !root.join("me/files/big").exists(),
        "nothing half-done in files/"
    );

    // The next get fetches only what is missing.
    let (mut again, _) = peer(root, "me", &tracker_address, root, &["--exec", "get big"]);
    let resumed = again.expect("resume line", |line| {
        line.starts_with("resumed: ").then(|| line.to_string())
    });
    again.expect("got line", |line| {
        line.starts_with("got big ").then_some(())
    });
    let (status, _) = again.exit_after(Instant::now(), STEP_TIMEOUT);
    assert!(status.success(), "{status}; stderr:\n{}", again.log());
    assert!(!resumed.starts_with("resumed: 0 B"), "{resumed}");
    assert!(std::fs::read(root.join("me/files/big")).unwrap() == data);
    assert!(common::names_in(&partial).is_empty());
}

/// An in-process seeder of `data` as "big", its uploads capped at `rate` bytes per second.
async fn rate_capped_seeder(tracker: &TestTracker, data: &[u8], rate: u64) -> TestPeer {
    TestPeer::start_with("seed", tracker.addr, &[("big", data)], |c| {
        c.limits.upload_rate = Some(Arc::new(RateLimiter::new(rate)))
    })
    .await
}

/// Polls `done` every [`POLL`] until it holds (bounded by [`STEP_TIMEOUT`]).
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "no {what} within {STEP_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_cancelled_by_shutdown_returns_cancelled_with_its_progress_saved() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = big_content(16 * MIB);
    let _seeder = rate_capped_seeder(&tracker, &data, 8 * MIB as u64).await;
    let me = TestPeer::start("me", tracker.addr, &[]).await;

    let progress = Arc::new(Progress::default());
    let download = {
        let node = me.node.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let request = DownloadRequest::parse("big", Destination::Files);
            node.download(&request, progress).await
        })
    };
    until("progress", || {
        progress.done.load(Ordering::Relaxed) >= MIB as u64
    })
    .await;
    let told = Instant::now();
    me.node.shutdown().await;
    assert!(
        told.elapsed() < EXIT_BOUND,
        "shutdown took {:?}",
        told.elapsed()
    );
    let result = tokio::time::timeout(EXIT_BOUND, download)
        .await
        .expect("the download ends with the node")
        .unwrap();
    assert!(
        matches!(result, Err(DownloadError::Cancelled)),
        "{result:?}"
    );

    // The record saved on the way out holds every piece verified, no more, no less.
    let partial = me.dir.join(".p2pshare/partial");
    let id = ContentId::of(&data);
    let record = std::fs::read(partial.join(format!("{id}.done"))).unwrap();
    let piece_size = data.len() / record.len();
    let recorded = record.iter().filter(|&&b| b == 1).count() * piece_size;
    let verified = progress.done.load(Ordering::Relaxed);
    assert_eq!(recorded as u64, verified);
    assert!(verified < data.len() as u64, "cancelled before the end");

    // Started again over the same folder, the node resumes from those pieces.
    let again = TestPeer::start_in("me", tracker.addr, me.dir.clone(), |_| {}).await;
    let report = again.get("big").await.unwrap();
    assert_eq!(report.resumed, verified);
    assert_eq!(report.resumed + report.fetched, data.len() as u64);
    assert!(std::fs::read(again.files_dir().join("big")).unwrap() == data);
    again.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_reading_from_a_seeder_that_shuts_down_gets_unavailable_at_once() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = big_content(16 * MIB);
    let seeder = rate_capped_seeder(&tracker, &data, 4 * MIB as u64).await;
    let mut stream = {
        let port = seeder.node.local_addr().port();
        open_whole_file_stream(port, "big", data.len()).await
    };
    stream.message().await.unwrap().expect("a first message");

    let node = seeder.node.clone();
    let told = Instant::now();
    let shutdown = tokio::spawn(async move { node.shutdown().await });
    let status = loop {
        match tokio::time::timeout(EXIT_BOUND, stream.message()).await {
            Err(_) => panic!("the stream still runs {EXIT_BOUND:?} after shutdown"),
            Ok(Ok(Some(_))) => continue, // read-ahead queued before the shutdown
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "peer shutting down");
    assert!(told.elapsed() < EXIT_BOUND, "{:?}", told.elapsed());
    tokio::time::timeout(EXIT_BOUND, shutdown)
        .await
        .expect("shutdown is bounded")
        .unwrap();
}
