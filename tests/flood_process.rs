//! Floods against real processes (issue 12, items 2 and 3), measured from `/proc`:
//!
//! * a `tracker` under `ulimit -n 64` that is sent more connections than it has descriptors
//!   neither spins (CPU under 5 %) nor stays down: with its default cap it stops accepting before
//!   `accept` fails, and with the cap raised past the limit it backs off on EMFILE; either way it
//!   serves again by itself once the connections go;
//! * a seeding `peer` under 1,000 zero-window `GetBlocks` streams from one attacker address stays
//!   under 256 MiB, and an honest download from another address keeps at least half its speed.
//!
//! Run with `--nocapture` to see the figures.

mod common;
#[path = "support/raw_h2.rs"]
mod raw_h2;

use common::{content, TestPeer, TestTracker};
use raw_h2::{get_blocks, Answer, Raw};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A child process, killed when dropped; its stderr goes to a file.
struct Process {
    child: Child,
    stderr: std::path::PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `program args` with at most `nofile` open files (`ulimit -n`, through `sh`).
    fn start(program: &str, args: &[String], nofile: Option<u32>, logs: &Path) -> Process {
        let stderr = logs.join("stderr");
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$@\""))
                    .arg("sh")
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        Process {
            child,
            stderr,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The first line of standard output for which `find` says something, within 30 s.
    fn wait_line<T>(&self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = find(&line) {
                        return found;
                    }
                }
                Err(_) => panic!("no {what} on stdout; stderr:\n{}", self.stderr()),
            }
        }
    }

    /// Polls until standard error contains `text` (within 10 s).
    fn wait_stderr(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields[10] + fields[11];
    static TICKS_PER_SECOND: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let per_second = TICKS_PER_SECOND.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    });
    ticks as f64 / per_second
}

/// Share of one core `pid` used over `window`.
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    std::thread::sleep(window);
    (cpu_seconds(pid) - before) / window.as_secs_f64()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in status"))
}

const FD_LIMIT: u32 = 64;

/// A `tracker` under `ulimit -n 64` with `extra` flags, and its address.
fn limited_tracker(extra: &[&str], logs: &Path) -> (Process, SocketAddr) {
    let mut args: Vec<String> = ["--port", "0", "--bind", "127.0.0.1"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    args.extend(["--heartbeat-interval".into(), "10".into()]);
    let tracker = Process::start(env!("CARGO_BIN_EXE_tracker"), &args, Some(FD_LIMIT), logs);
    let addr = tracker.wait_line("address", |l| {
        l.strip_prefix("tracker listening on ")?.trim().parse().ok()
    });
    (tracker, addr)
}

/// Whether the server at `addr` answers a health check within 10 s (retrying).
async fn serves_again(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        let channel = p2pshare::grpc::channel(&addr.to_string()).unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let check = health.check(tonic_health::pb::HealthCheckRequest::default());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), check).await {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "{addr} never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_tracker_backs_off_and_recovers_by_itself() {
    if !common::require(common::program("getconf", "reads the clock tick of /proc")) {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    // Caps far past the limit: accept itself runs out of descriptors (EMFILE).
    let (tracker, addr) = limited_tracker(
        &[
            "--max-connections",
            "100000",
            "--max-connections-per-address",
            "100000",
        ],
        logs.path(),
    );
    let flood: Vec<std::net::TcpStream> = (0..2 * FD_LIMIT)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    tracker.wait_stderr("accepting connections failed");
    // (One more than the limit can show: a descriptor inherited from this test process.)
    let fds = open_fds(tracker.pid());
    assert!(fds >= FD_LIMIT as usize, "{fds} descriptors open");
    let cpu = cpu_share(tracker.pid(), Duration::from_secs(2));
    eprintln!(
        "tracker at its fd limit ({fds} fds open, limit {FD_LIMIT}, EMFILE): CPU {:.1} %",
        cpu * 100.0
    );
    assert!(cpu < 0.05, "the tracker spins at its fd limit: {cpu:.3}");
    // One warning for the episode, not one per attempt.
    let warnings = tracker
        .stderr()
        .matches("accepting connections failed")
        .count();
    assert_eq!(warnings, 1, "{}", tracker.stderr());
    drop(flood);
    let took = serves_again(addr).await;
    eprintln!("tracker serves again {took:?} after the connections closed");
    tracker.wait_stderr("accepting connections again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_default_cap_the_tracker_stops_accepting_before_running_out_of_descriptors() {
    if !common::require(common::program("getconf", "reads the clock tick of /proc")) {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let (tracker, addr) = limited_tracker(&[], logs.path());
    let flood: Vec<std::net::TcpStream> = (0..2 * FD_LIMIT)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    tracker.wait_stderr("connection cap reached");
    let fds = open_fds(tracker.pid());
    assert!(fds < FD_LIMIT as usize, "{fds} descriptors open");
    assert!(!tracker.stderr().contains("accepting connections failed"));
    let cpu = cpu_share(tracker.pid(), Duration::from_secs(2));
    eprintln!(
        "tracker at its connection cap ({fds} of {FD_LIMIT} fds): CPU {:.1} %",
        cpu * 100.0
    );
    assert!(
        cpu < 0.05,
        "the tracker spins at its connection cap: {cpu:.3}"
    );
    drop(flood);
    let took = serves_again(addr).await;
    eprintln!("tracker serves again {took:?} after the connections closed");
    tracker.wait_stderr("accepting connections again");
}

/// What the attacker got.
#[derive(Default)]
struct Attack {
    /// Streams the seeder is serving it now (its responses started), and the most at once. (A
    /// little over the seeder's count at times: the attacker learns that the seeder closed a
    /// connection, freeing its share, a moment after the seeder may have served new streams.
    /// The exact cap is tested in `tests/flood.rs`.)
    held: AtomicUsize,
    held_max: AtomicUsize,
    refused: AtomicU64,
    /// Connections the seeder closed under it.
    closed_by_server: AtomicU64,
}

/// Counts one held stream while it lives.
struct Holding(Arc<Attack>);

impl Holding {
    fn new(attack: &Arc<Attack>) -> Self {
        let now = attack.held.fetch_add(1, Ordering::SeqCst) + 1;
        attack.held_max.fetch_max(now, Ordering::SeqCst);
        Holding(attack.clone())
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One attacker stream slot: asks for the whole file and never reads; when refused, asks again
/// a second later; ends with its connection.
async fn hold_one(raw: Arc<Raw>, server: SocketAddr, blocks: u64, attack: Arc<Attack>) {
    loop {
        match get_blocks(&raw, server, "big.bin", blocks).await {
            Ok(Answer::Held(recv, send)) => {
                let _holding = Holding::new(&attack);
                raw.ended.cancelled().await;
                drop((recv, send));
                return;
            }
            Ok(Answer::Status(..)) => {
                attack.refused.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = raw.ended.cancelled() => return,
                }
            }
            Err(_) => return,
        }
    }
}

/// One attacker connection from 127.0.0.2 with `streams` zero-window streams, reconnecting
/// whenever the seeder closes it, until `stop`.
async fn attack_connection(
    server: SocketAddr,
    blocks: u64,
    streams: usize,
    attack: Arc<Attack>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let Ok(raw) = Raw::connect([127, 0, 0, 2].into(), server, 0).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let raw = Arc::new(raw);
        let mut slots = tokio::task::JoinSet::new();
        for _ in 0..streams {
            slots.spawn(hold_one(raw.clone(), server, blocks, attack.clone()));
        }
        tokio::select! {
            _ = raw.ended.cancelled() => {
                attack.closed_by_server.fetch_add(1, Ordering::SeqCst);
            }
            _ = stop.cancelled() => {}
        }
        slots.shutdown().await;
    }
}

/// Downloads `big.bin` with a fresh peer on 127.0.0.1 that then leaves (so it never serves the
/// next one), and returns the time the download took.
async fn honest_get(tracker: SocketAddr, id: &str, expected: &[u8]) -> Duration {
    let peer = TestPeer::start(id, tracker, &[]).await;
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(120), peer.get("big.bin"))
        .await
        .expect("the honest download never ended")
        .unwrap_or_else(|e| panic!("honest download failed: {e}"));
    let took = started.elapsed();
    assert_eq!(report.size, expected.len() as u64);
    let got = std::fs::read(peer.files_dir().join("big.bin")).unwrap();
    assert!(got == expected, "the honest download is not the file");
    peer.node.shutdown().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_unread_streams_neither_bloat_a_seeder_nor_starve_an_honest_download() {
    const SIZE: usize = 64 << 20;
    const CONNECTIONS: usize = 40;
    const STREAMS_PER_CONNECTION: usize = 25;
    const ROUNDS: usize = 3;
    let data = content(SIZE, 7);
    let blocks = (SIZE / 4096) as u64;
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("seeder/files")).unwrap();
    std::fs::write(root.path().join("seeder/files/big.bin"), &data).unwrap();
    let args: Vec<String> = [
        "seeder",
        "0",
        &tracker.addr.to_string(),
        "--root",
        &root.path().to_string_lossy(),
        "--no-shell",
        "--bind",
        "127.0.0.1",
        // Stalled connections are closed (and their buffers freed) every 2 s, so the attacker
        // retakes its share several times during the test.
        "--client-stall-timeout",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let seeder = Process::start(env!("CARGO_BIN_EXE_peer"), &args, None, root.path());
    let port: u16 = seeder.wait_line("port", |l| {
        l.strip_prefix("peer seeder serving ")?
            .rsplit_once(" on port ")?
            .1
            .trim()
            .parse()
            .ok()
    });
    seeder.wait_line("registration", |l| {
        l.starts_with("registered with tracker").then_some(())
    });
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let pid = seeder.pid();

    let rss_before = status_kib(pid, "VmRSS");
    let per_address = p2pshare::peer::server::DEFAULT_MAX_STREAMS_PER_ADDRESS;
    let attack = Arc::new(Attack::default());
    let rss_peak = Arc::new(AtomicU64::new(0));
    let sampling = CancellationToken::new();
    let sampler = {
        let (rss_peak, sampling) = (rss_peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while !sampling.is_cancelled() {
                rss_peak.fetch_max(status_kib(pid, "VmRSS"), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Rounds of one download without the attack and one under it, interleaved so that load
    // from elsewhere on the machine weighs on both alike; the best of each is compared.
    let (mut quiet, mut attacked) = (Vec::new(), Vec::new());
    let mut rss_end = 0;
    for round in 0..ROUNDS {
        quiet.push(honest_get(tracker.addr, &format!("quiet{round}"), &data).await);
        let stop = CancellationToken::new();
        let attackers: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                tokio::spawn(attack_connection(
                    server,
                    blocks,
                    STREAMS_PER_CONNECTION,
                    attack.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while attack.held.load(Ordering::SeqCst) < per_address {
            assert!(
                Instant::now() < deadline,
                "the attacker never got its share"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if round == 0 {
            // What the attack alone costs the seeder (refusing about a thousand calls a second).
            let cpu = tokio::task::spawn_blocking(move || cpu_share(pid, Duration::from_secs(1)))
                .await
                .unwrap();
            eprintln!("seeder CPU under the attack alone: {:.0} %", cpu * 100.0);
        }
        attacked.push(honest_get(tracker.addr, &format!("attacked{round}"), &data).await);
        if round + 1 == ROUNDS {
            // The attack goes on until the seeder has closed stalled connections three times
            // over and the attacker has retaken its share on new ones: the buffers of the old
            // ones must not pile up.
            let deadline = Instant::now() + Duration::from_secs(30);
            let closed_at_start = attack.closed_by_server.load(Ordering::SeqCst);
            while attack.closed_by_server.load(Ordering::SeqCst) < closed_at_start + 3
                || attack.held.load(Ordering::SeqCst) < per_address
            {
                assert!(
                    Instant::now() < deadline,
                    "stalled connections were not closed and retaken"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            rss_end = status_kib(pid, "VmRSS");
        }
        stop.cancel();
        for a in attackers {
            a.await.unwrap();
        }
    }
    sampling.cancel();
    sampler.await.unwrap();
    let hwm = status_kib(pid, "VmHWM");

    let best = |t: &[Duration]| t.iter().min().copied().unwrap();
    let (quiet_best, attacked_best) = (best(&quiet), best(&attacked));
    let mb_s = |t: Duration| SIZE as f64 / t.as_secs_f64() / 1e6;
    eprintln!(
        "honest get of {} MiB: unattacked {:?} ({:.0} MB/s), under attack {:?} ({:.0} MB/s): \
         {:.2}x the speed",
        SIZE >> 20,
        quiet,
        mb_s(quiet_best),
        attacked,
        mb_s(attacked_best),
        quiet_best.as_secs_f64() / attacked_best.as_secs_f64()
    );
    eprintln!(
        "seeder RSS: {} MiB before the attack, peak {} MiB during it, {} MiB at its end; VmHWM \
         {} MiB",
        rss_before >> 10,
        rss_peak.load(Ordering::SeqCst) >> 10,
        rss_end >> 10,
        hwm >> 10
    );
    eprintln!(
        "attacker: {} streams held at most at once, {} refused, {} connections closed by the \
         seeder",
        attack.held_max.load(Ordering::SeqCst),
        attack.refused.load(Ordering::SeqCst),
        attack.closed_by_server.load(Ordering::SeqCst)
    );
    assert!(attack.refused.load(Ordering::SeqCst) > 0);
    assert!(hwm < 256 << 10, "the seeder peaked at {} MiB", hwm >> 10);
    assert!(
        attacked_best <= quiet_best * 2,
        "under attack the honest download took {attacked_best:?}, unattacked {quiet_best:?}"
    );
    assert!(
        seeder.stderr().contains("a response went unread"),
        "{}",
        seeder.stderr()
    );
    tracker.stop().await;
}
