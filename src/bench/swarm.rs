//! The swarm benchmark (issue 5): a local swarm over real loopback TCP, measured against a plain
//! TCP copy of the same file made in the same run.
//!
//! # Shape
//!
//! * The **bench process** hosts the swarm: an in-process tracker and the holders (each a real
//!   [`PeerNode`] on `127.0.0.1:0`, in its own folder under a temporary directory, all on one
//!   tokio runtime). Holders' folders are hard links to one generated copy of each file, and their
//!   hash cache is copied from a seed folder hashed once, so starting a holder costs no hashing.
//! * Every **measured client** (the downloader, the `WhoHas` load generator, a starting or
//!   restarting peer) is a child process: the bench binary re-executed with a hidden subcommand
//!   ([`WORKER_SUBCOMMAND`]), its [`Plan`] as JSON on standard input, its report as JSON on
//!   standard output. Its peak RSS is then its own (`VmHWM`, reset between runs by writing `5` to
//!   `/proc/self/clear_refs`), and it does not share a runtime with the holders.
//! * The **baseline** is a file -> socket -> file copy between two processes: a child
//!   ([`TCP_SEND_SUBCOMMAND`]) reads the file and writes it to a `TcpStream`; the bench process
//!   receives it into a file. Same file, same page cache state, same run.
//!
//! Times are medians over `--runs` runs. Every loop is bounded: downloads end by success or by the
//! downloader's stall timeout, load generators by a deadline, child processes by a deadline after
//! which they are killed (by their own handle).
//!
//! # Non-goals
//!
//! Not a network benchmark: loopback only (`127.0.0.1`), so it measures CPU and memory costs per
//! byte, not a real link's latency or loss. Page cache: the shared files are hot (just written);
//! `--startup-cold` evicts the start-up folder before the first scan.

use crate::chunking::{ContentId, Manifest};
use crate::human;
use crate::pb::tracker as tpb;
use crate::pb::tracker::tracker_client::TrackerClient;
use crate::peer::download::{Destination, DownloadRequest, Progress};
use crate::peer::server::RateLimiter;
use crate::peer::store::Store;
use crate::peer::{PeerConfig, PeerNode};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Hidden subcommand of the bench binary that runs a [`Plan`] read from standard input.
pub const WORKER_SUBCOMMAND: &str = "__worker";
/// Hidden subcommand of the bench binary that sends a file over TCP (the baseline's sender):
/// `__tcp-send <file> <addr>`.
pub const TCP_SEND_SUBCOMMAND: &str = "__tcp-send";

/// Copy buffer of the baseline, both ends.
const COPY_BUFFER: usize = 1 << 20;
/// Largest file of the start-up folder.
const STARTUP_FILE_MAX: u64 = 256 << 20;
/// Where a peer keeps its hash cache, relative to its directory (see [`crate::peer::store`]).
const HASH_CACHE: &str = ".p2pshare/hash-cache.json";
/// Single downloads measured inside the stress scenario, for its reference rate.
const STRESS_SINGLES: usize = 3;

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Setting up the swarm failed.
    #[error("{0}")]
    Setup(String),
    /// A child process failed or answered nonsense.
    #[error("child process: {0}")]
    Child(String),
}

/// A scenario of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// The plain TCP copy every ratio refers to (run whenever a download scenario is).
    Baseline,
    /// Download from one holder.
    OneHolder,
    /// Download from three holders.
    ThreeHolders,
    /// Holders capped at R: K = 1, 2, 4, 8 of them, and four capped at R, 2R, 4R, 8R.
    RateCapped,
    /// Per-file overhead: `get` of small files, one by one and in parallel.
    SmallFiles,
    /// Many parallel downloads of one file from several holders.
    Stress,
    /// `WhoHas` load on a tracker holding many peers.
    Tracker,
    /// First scan of a folder and restart over it unchanged.
    Startup,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 8] = [
        Scenario::Baseline,
        Scenario::OneHolder,
        Scenario::ThreeHolders,
        Scenario::RateCapped,
        Scenario::SmallFiles,
        Scenario::Stress,
        Scenario::Tracker,
        Scenario::Startup,
    ];
}

/// Options of the swarm benchmark (the `p2pshare-bench` command line).
#[derive(Debug, Clone, clap::Args)]
pub struct SwarmOptions {
    /// Size of the file of the baseline and the one-/three-holder downloads (e.g. 256M, 1G).
    #[arg(long, default_value = "1G", value_parser = human::parse_size)]
    pub size: u64,
    /// Runs per scenario; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Scenarios to run, comma-separated (default: all). The baseline runs whenever a download
    /// scenario does.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    /// R, the upload cap per holder in the rate-capped scenario, per second (e.g. 20M).
    #[arg(long, default_value = "20M", value_parser = human::parse_size)]
    pub rate: u64,
    /// Size of the file of the rate-capped scenario.
    #[arg(long, default_value = "128M", value_parser = human::parse_size)]
    pub rate_size: u64,
    /// Size of each small file.
    #[arg(long, default_value = "4K", value_parser = human::parse_size)]
    pub small_size: u64,
    /// Number of small files.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub small_count: u32,
    /// Small-file downloads in flight at once in the parallel pass.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub small_parallel: u32,
    /// Size of the file of the stress scenario.
    #[arg(long, default_value = "64M", value_parser = human::parse_size)]
    pub stress_size: u64,
    /// Parallel downloads in the stress scenario.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub stress_downloads: u32,
    /// Holders in the stress scenario.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub stress_holders: u32,
    /// Peers registered with the tracker in the tracker scenario.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tracker_peers: u32,
    /// Files per registered peer in the tracker scenario.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tracker_files: u32,
    /// Client connections of the `WhoHas` load generator.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub tracker_connections: u32,
    /// Requests in flight per connection, one measurement per value (comma-separated).
    #[arg(long, default_value = "1,8", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=256))]
    pub tracker_in_flight: Vec<u32>,
    /// Seconds of `WhoHas` load per measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub tracker_seconds: u32,
    /// Size of the folder of the start-up scenario (the target is for 4G).
    #[arg(long, default_value = "1G", value_parser = human::parse_size)]
    pub startup_size: u64,
    /// Evict the start-up folder from the page cache (fsync + POSIX_FADV_DONTNEED) before each
    /// first scan, so it is read from disk.
    #[arg(long)]
    pub startup_cold: bool,
    /// Working directory (default: a temporary directory under $TMPDIR, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Skip the independent re-hash of each downloaded copy (the downloader still verifies every
    /// piece): for profiles of the download path alone.
    #[arg(long)]
    pub no_check: bool,
}

impl SwarmOptions {
    fn wants(&self, scenario: Scenario) -> bool {
        if self.scenarios.is_empty() {
            return true;
        }
        if scenario == Scenario::Baseline {
            return self.scenarios.iter().any(|s| {
                matches!(
                    s,
                    Scenario::Baseline | Scenario::OneHolder | Scenario::ThreeHolders
                )
            });
        }
        self.scenarios.contains(&scenario)
    }
}

/// One row of the result table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    /// What was measured.
    pub scenario: String,
    /// Bytes moved (or hashed), if that applies.
    pub bytes: Option<u64>,
    /// Median seconds.
    pub seconds: Option<f64>,
    /// Throughput in MB/s (10^6 bytes per second), from the median time.
    pub mb_per_s: Option<f64>,
    /// Peak RSS of the measured process (the downloader, the load generator, the peer starting).
    pub peak_rss: Option<u64>,
    /// Ratio to the reference named in `ratio_to`.
    pub ratio: Option<f64>,
    /// What the ratio is relative to.
    pub ratio_to: String,
    /// The target for this row.
    pub target: String,
    /// Whether the target is met.
    pub pass: Option<bool>,
    /// Anything else worth knowing (per-holder shares, request rates, failures).
    pub notes: String,
}

/// What a child process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Plan {
    /// Start a peer, download `name` (scratch) `runs` times, check each copy, delete it.
    Download {
        /// Peer to start.
        peer: ChildPeer,
        /// File name.
        name: String,
        /// Expected content id, hex.
        content_id: String,
        /// Downloads in a row.
        runs: u32,
        /// Re-hash each copy, off the clock, before deleting it.
        check: bool,
    },
    /// Start a peer and `get` every name into `files/`, `parallel` at a time.
    GetMany {
        /// Peer to start.
        peer: ChildPeer,
        /// The files.
        names: Vec<String>,
        /// Downloads in flight at once.
        parallel: u32,
    },
    /// Start a peer; a few single downloads, then `downloads` at once; check every copy.
    Stress {
        /// Peer to start.
        peer: ChildPeer,
        /// File name.
        name: String,
        /// Expected content id, hex.
        content_id: String,
        /// Parallel downloads.
        downloads: u32,
    },
    /// Start a peer over an existing folder, report how long `PeerNode::start` took, leave.
    Startup {
        /// Peer to start.
        peer: ChildPeer,
    },
    /// Optionally register `peers` synthetic peers, then load the tracker with `WhoHas`.
    TrackerLoad {
        /// Tracker address.
        tracker: String,
        /// Register the synthetic peers first.
        register: bool,
        /// Synthetic peers (also the number of distinct file names).
        peers: u32,
        /// Files per peer (also holders per file name).
        files_per_peer: u32,
        /// Client connections.
        connections: u32,
        /// One measurement per value: requests in flight per connection.
        in_flight: Vec<u32>,
        /// Seconds per measurement.
        seconds: u32,
    },
}

/// A peer a child process starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildPeer {
    /// Peer id.
    pub id: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Tracker address.
    pub tracker: String,
}

/// One timed download in a child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownloadRun {
    /// Wall time of `PeerNode::download`.
    pub seconds: f64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Peak RSS during the download (reset before it), if the kernel tells.
    pub peak_rss: Option<u64>,
    /// Bytes each holder delivered, by peer id.
    pub holders: Vec<(String, u64)>,
    /// Why it failed (download error or a copy that does not hash right).
    pub error: Option<String>,
}

/// What `GetMany` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetManyReport {
    /// Seconds of each successful `get`.
    pub latencies: Vec<f64>,
    /// Wall time of the whole pass.
    pub seconds: f64,
    /// Failures.
    pub failures: Vec<String>,
    /// Peak RSS of the pass.
    pub peak_rss: Option<u64>,
}

/// What `Stress` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StressReport {
    /// Seconds of each single download before the parallel ones.
    pub single_seconds: Vec<f64>,
    /// Wall time of all parallel downloads.
    pub seconds: f64,
    /// Parallel downloads that completed.
    pub succeeded: u32,
    /// Failures, with their messages.
    pub failures: Vec<String>,
    /// Completed copies that do not hash to the content id.
    pub mismatched: u32,
    /// Bytes delivered by the parallel downloads.
    pub bytes: u64,
    /// Peak RSS during the parallel downloads.
    pub peak_rss: Option<u64>,
}

/// What `Startup` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartupReport {
    /// Wall time of `PeerNode::start` (scan, hashing, serving, registration).
    pub seconds: f64,
    /// Bytes hashed (0: the hash cache answered).
    pub hashed_bytes: u64,
    /// Files shared.
    pub shared: usize,
    /// Registration outcome, if it failed.
    pub registration_error: Option<String>,
    /// Peak RSS of the process.
    pub peak_rss: Option<u64>,
}

/// One `WhoHas` load measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests in flight per connection.
    pub in_flight: u32,
    /// Requests answered OK.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Wall time.
    pub seconds: f64,
    /// Median latency, seconds.
    pub p50: f64,
    /// 99th percentile latency, seconds.
    pub p99: f64,
}

/// What `TrackerLoad` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrackerLoadReport {
    /// Seconds to register the synthetic peers (0 if not asked).
    pub register_seconds: f64,
    /// Registrations refused.
    pub register_errors: u64,
    /// One per `in_flight` value.
    pub loads: Vec<LoadReport>,
    /// Peak RSS of the load generator.
    pub peak_rss: Option<u64>,
}

/// A child's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChildReport {
    /// For [`Plan::Download`].
    Download(Vec<DownloadRun>),
    /// For [`Plan::GetMany`].
    GetMany(GetManyReport),
    /// For [`Plan::Stress`].
    Stress(StressReport),
    /// For [`Plan::Startup`].
    Startup(StartupReport),
    /// For [`Plan::TrackerLoad`].
    TrackerLoad(TrackerLoadReport),
    /// The plan failed as a whole.
    Failed(String),
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Resets this process's peak RSS (`VmHWM`) to its current RSS. False if the kernel refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// This process's peak RSS in bytes (`VmHWM`), if `/proc` tells.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

// ---------------------------------------------------------------------------------------------
// Baseline

/// The baseline's sender (run in a child process): reads `file` and writes it to a TCP
/// connection to `addr`, then closes the connection.
pub fn tcp_send(file: &Path, addr: SocketAddr) -> std::io::Result<u64> {
    let mut source = std::fs::File::open(file)?;
    let mut socket = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    socket.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut sent = 0u64;
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        socket.write_all(&buf[..n])?;
        sent += n as u64;
    }
    socket.shutdown(std::net::Shutdown::Write)?;
    Ok(sent)
}

/// One baseline copy: a child process sends `file`, this process writes what arrives to `dest`.
/// Returns the time from the accepted connection to the last byte written.
fn tcp_copy(exe: &Path, file: &Path, dest: &Path, size: u64) -> Result<Duration, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut child = Command::new(exe)
        .arg(TCP_SEND_SUBCOMMAND)
        .arg(file)
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let socket = loop {
        match listener.accept() {
            Ok((socket, _)) => break socket,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline || child.try_wait()?.is_some() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BenchError::Child("the TCP sender never connected".into()));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let started = Instant::now();
    let copied = (|| -> std::io::Result<u64> {
        let mut socket = socket;
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut out = std::fs::File::create(dest)?;
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut total = 0u64;
        loop {
            let n = match socket.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            out.write_all(&buf[..n])?;
            total += n as u64;
        }
        Ok(total)
    })();
    let elapsed = started.elapsed();
    let status = wait_bounded(&mut child, Duration::from_secs(30))?;
    let copied = copied?;
    let _ = std::fs::remove_file(dest);
    if !status.success() || copied != size {
        return Err(BenchError::Child(format!(
            "TCP copy moved {copied} of {size} bytes (sender {status})"
        )));
    }
    Ok(elapsed)
}

fn wait_bounded(
    child: &mut std::process::Child,
    limit: Duration,
) -> Result<std::process::ExitStatus, BenchError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::Child(format!(
                "child {} still running after {limit:?}; killed",
                child.id()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Runs `plan` in a child process (this binary, [`WORKER_SUBCOMMAND`]) and returns its report.
/// The child is killed if it runs longer than `limit`.
fn run_child(exe: &Path, plan: &Plan, limit: Duration) -> Result<ChildReport, BenchError> {
    let mut child = Command::new(exe)
        .arg(WORKER_SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let plan_json = serde_json::to_vec(plan).map_err(|e| BenchError::Child(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&plan_json)?;
    }
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Child("no stdout".into()))?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let status = wait_bounded(&mut child, limit)?;
    let text = reader
        .join()
        .map_err(|_| BenchError::Child("reader thread panicked".into()))?;
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    match serde_json::from_str::<ChildReport>(last) {
        Ok(ChildReport::Failed(why)) => Err(BenchError::Child(why)),
        Ok(report) => Ok(report),
        Err(e) => Err(BenchError::Child(format!(
            "exit {status}, unreadable report ({e}): {}",
            last.chars().take(200).collect::<String>()
        ))),
    }
}

/// Entry point of [`WORKER_SUBCOMMAND`]: reads a [`Plan`] from standard input, runs it, prints
/// the [`ChildReport`] as one JSON line on standard output.
pub fn worker_main() -> Result<(), BenchError> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let report = match serde_json::from_str::<Plan>(&input) {
        Ok(plan) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(run_plan(plan))
                .unwrap_or_else(ChildReport::Failed)
        }
        Err(e) => ChildReport::Failed(format!("bad plan: {e}")),
    };
    let line = serde_json::to_string(&report).map_err(|e| BenchError::Child(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

async fn start_child_peer(peer: &ChildPeer) -> Result<Arc<PeerNode>, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let config = PeerConfig::new(&peer.id, peer.dir.clone(), &peer.tracker);
    let (node, info) = PeerNode::start(config, listener)
        .await
        .map_err(|e| format!("peer {}: {e}", peer.id))?;
    if let Err(e) = info.registration {
        node.shutdown().await;
        return Err(format!("peer {} could not register: {e}", peer.id));
    }
    Ok(node)
}

async fn stop_child_peer(node: &PeerNode) {
    if tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .is_err()
    {
        node.kill();
    }
}

async fn run_plan(plan: Plan) -> Result<ChildReport, String> {
    match plan {
        Plan::Download {
            peer,
            name,
            content_id,
            runs,
            check,
        } => {
            let expected: ContentId = content_id.parse().map_err(|_| "bad content id")?;
            let node = start_child_peer(&peer).await?;
            let mut results = Vec::new();
            for _ in 0..runs {
                results.push(timed_download(&node, &name, check.then_some(expected)).await);
            }
            stop_child_peer(&node).await;
            Ok(ChildReport::Download(results))
        }
        Plan::GetMany {
            peer,
            names,
            parallel,
        } => {
            let node = start_child_peer(&peer).await?;
            reset_peak_rss();
            let report = get_many(&node, names, parallel as usize).await;
            stop_child_peer(&node).await;
            Ok(ChildReport::GetMany(report))
        }
        Plan::Stress {
            peer,
            name,
            content_id,
            downloads,
        } => {
            let expected: ContentId = content_id.parse().map_err(|_| "bad content id")?;
            let node = start_child_peer(&peer).await?;
            let report = stress(&node, &name, expected, downloads).await;
            stop_child_peer(&node).await;
            Ok(ChildReport::Stress(report))
        }
        Plan::Startup { peer } => {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let config = PeerConfig::new(&peer.id, peer.dir.clone(), &peer.tracker);
            let started = Instant::now();
            let (node, info) = PeerNode::start(config, listener)
                .await
                .map_err(|e| e.to_string())?;
            let seconds = started.elapsed().as_secs_f64();
            let report = StartupReport {
                seconds,
                hashed_bytes: info.hashed_bytes,
                shared: info.shared,
                registration_error: info.registration.err(),
                peak_rss: peak_rss(),
            };
            stop_child_peer(&node).await;
            Ok(ChildReport::Startup(report))
        }
        Plan::TrackerLoad {
            tracker,
            register,
            peers,
            files_per_peer,
            connections,
            in_flight,
            seconds,
        } => tracker_load(
            &tracker,
            register,
            peers,
            files_per_peer,
            connections,
            &in_flight,
            seconds,
        )
        .await
        .map(ChildReport::TrackerLoad),
    }
}

/// Hashes the file at `path` into its content id (blocking).
/// The content id of a file on disk, hashed whole.
pub fn content_id_of(path: &Path) -> std::io::Result<ContentId> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let reader = std::io::BufReader::with_capacity(COPY_BUFFER, file);
    Ok(Manifest::from_reader(reader, size)?.content_id())
}

/// Checks a downloaded copy against `expected` (off the clock; `None`: no check), then deletes
/// it.
async fn check_and_remove(path: Option<PathBuf>, expected: Option<ContentId>) -> Option<String> {
    let path = path?;
    let Some(expected) = expected else {
        let _ = std::fs::remove_file(&path);
        return None;
    };
    let checked = tokio::task::spawn_blocking(move || {
        let id = content_id_of(&path);
        let _ = std::fs::remove_file(&path);
        id
    })
    .await;
    match checked {
        Ok(Ok(id)) if id == expected => None,
        Ok(Ok(id)) => Some(format!(
            "copy hashes to {}, not {}",
            id.short(),
            expected.short()
        )),
        Ok(Err(e)) => Some(format!("copy unreadable: {e}")),
        Err(e) => Some(format!("check failed: {e}")),
    }
}

async fn timed_download(node: &PeerNode, name: &str, expected: Option<ContentId>) -> DownloadRun {
    let request = DownloadRequest::parse(name, Destination::Scratch);
    reset_peak_rss();
    let started = Instant::now();
    let result = node.download(&request, Arc::new(Progress::default())).await;
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss();
    match result {
        Ok(report) => {
            let error = check_and_remove(report.path.clone(), expected).await;
            DownloadRun {
                seconds,
                bytes: report.size,
                peak_rss: peak,
                holders: report
                    .holders
                    .iter()
                    .map(|h| (h.peer_id.clone(), h.bytes))
                    .collect(),
                error,
            }
        }
        Err(e) => DownloadRun {
            seconds,
            bytes: 0,
            peak_rss: peak,
            holders: vec![],
            error: Some(e.to_string()),
        },
    }
}

async fn get_many(node: &Arc<PeerNode>, names: Vec<String>, parallel: usize) -> GetManyReport {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut latencies = Vec::with_capacity(names.len());
    let mut failures = Vec::new();
    let mut record = |joined: Result<Result<f64, String>, tokio::task::JoinError>| match joined {
        Ok(Ok(seconds)) => latencies.push(seconds),
        Ok(Err(e)) => failures.push(e),
        Err(e) => failures.push(e.to_string()),
    };
    for name in names {
        while tasks.len() >= parallel.max(1) {
            if let Some(joined) = tasks.join_next().await {
                record(joined);
            }
        }
        let node = node.clone();
        tasks.spawn(async move {
            let request = DownloadRequest::parse(&name, Destination::Files);
            let t = Instant::now();
            node.download(&request, Arc::new(Progress::default()))
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            Ok(t.elapsed().as_secs_f64())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        record(joined);
    }
    GetManyReport {
        latencies,
        seconds: started.elapsed().as_secs_f64(),
        failures,
        peak_rss: peak_rss(),
    }
}

async fn stress(
    node: &Arc<PeerNode>,
    name: &str,
    expected: ContentId,
    downloads: u32,
) -> StressReport {
    let mut single_seconds = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..STRESS_SINGLES {
        let run = timed_download(node, name, Some(expected)).await;
        match run.error {
            None => single_seconds.push(run.seconds),
            Some(e) => failures.push(format!("single: {e}")),
        }
    }
    reset_peak_rss();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..downloads {
        let node = node.clone();
        let request = DownloadRequest::parse(name, Destination::Scratch);
        tasks.spawn(async move { node.download(&request, Arc::new(Progress::default())).await });
    }
    let mut copies = Vec::new();
    let mut bytes = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(report)) => {
                bytes += report.size;
                copies.push(report.path);
            }
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss();
    // Off the clock: every copy is hashed again, whole, and deleted.
    let succeeded = copies.len() as u32;
    let mut mismatched = 0;
    for path in copies {
        if let Some(why) = check_and_remove(path, Some(expected)).await {
            mismatched += 1;
            failures.push(why);
        }
    }
    StressReport {
        single_seconds,
        seconds,
        succeeded,
        failures,
        mismatched,
        bytes,
        peak_rss: peak,
    }
}

/// The synthetic catalog: peer `p` holds `files` names, `f{(p + k * peers / files) % peers}`,
/// so each of the `peers` names has `files` holders.
fn synthetic_files(peer: u32, peers: u32, files: u32) -> Vec<tpb::FileEntry> {
    let stride = (peers / files.max(1)).max(1);
    (0..files)
        .map(|k| {
            let name = synthetic_name((peer + k * stride) % peers);
            tpb::FileEntry {
                content_id: ContentId::of(name.as_bytes()).to_hex(),
                size: 1 << 20,
                name,
            }
        })
        .collect()
}

fn synthetic_name(index: u32) -> String {
    format!("f{index:07}.bin")
}

async fn tracker_load(
    tracker: &str,
    register: bool,
    peers: u32,
    files_per_peer: u32,
    connections: u32,
    in_flight: &[u32],
    seconds: u32,
) -> Result<TrackerLoadReport, String> {
    let channels = (0..connections.max(1))
        .map(|_| crate::grpc::channel(tracker).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    reset_peak_rss();
    let mut report = TrackerLoadReport {
        register_seconds: 0.0,
        register_errors: 0,
        loads: vec![],
        peak_rss: None,
    };
    if register {
        // Four registrations in flight per connection.
        let started = Instant::now();
        let lanes = channels.len() as u32 * 4;
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..lanes {
            let mut client = TrackerClient::new(channels[(lane as usize) % channels.len()].clone());
            tasks.spawn(async move {
                let mut errors = 0u64;
                let mut p = lane;
                while p < peers {
                    let request = tpb::RegisterRequest {
                        peer_id: format!("p{p:07}"),
                        port: 1024 + p % 60_000,
                        advertise_host: String::new(),
                        files: synthetic_files(p, peers, files_per_peer),
                        session_token: String::new(),
                    };
                    let call =
                        tokio::time::timeout(Duration::from_secs(10), client.register(request));
                    if !matches!(call.await, Ok(Ok(_))) {
                        errors += 1;
                    }
                    p += lanes;
                }
                errors
            });
        }
        while let Some(joined) = tasks.join_next().await {
            report.register_errors += joined.unwrap_or(1);
        }
        report.register_seconds = started.elapsed().as_secs_f64();
    }
    for &depth in in_flight {
        report
            .loads
            .push(who_has_load(&channels, peers, depth, seconds).await);
    }
    report.peak_rss = peak_rss();
    Ok(report)
}

/// `WhoHas` of random synthetic names from every connection, `depth` calls in flight on each,
/// for `seconds`.
async fn who_has_load(
    channels: &[tonic::transport::Channel],
    names: u32,
    depth: u32,
    seconds: u32,
) -> LoadReport {
    // Warm up: every connection established and used once before the clock starts.
    for channel in channels {
        let mut client = TrackerClient::new(channel.clone());
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            client.who_has(tpb::WhoHasRequest {
                name: synthetic_name(0),
                content_id_prefix: String::new(),
            }),
        )
        .await;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds.into());
    let mut tasks = tokio::task::JoinSet::new();
    for channel in channels {
        for _ in 0..depth.max(1) {
            let mut client = TrackerClient::new(channel.clone());
            let mut seed = rand::rng().next_u64() | 1;
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    // xorshift: cheap and good enough to spread the names.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let request = tpb::WhoHasRequest {
                        name: synthetic_name((seed % names.max(1) as u64) as u32),
                        content_id_prefix: String::new(),
                    };
                    let t = Instant::now();
                    let answer =
                        tokio::time::timeout(Duration::from_secs(5), client.who_has(request)).await;
                    match answer {
                        Ok(Ok(_)) => latencies.push(t.elapsed().as_secs_f64()),
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            });
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    LoadReport {
        in_flight: depth,
        requests: latencies.len() as u64,
        errors,
        seconds,
        p50: percentile(&latencies, 0.50).unwrap_or(f64::NAN),
        p99: percentile(&latencies, 0.99).unwrap_or(f64::NAN),
    }
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

// ---------------------------------------------------------------------------------------------
// The swarm (bench process side)

/// A generated file in the seed folder.
#[derive(Debug, Clone)]
struct DataFile {
    size: u64,
    content_id: ContentId,
}

struct TrackerHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The bench process: runtime, tracker, seed folder, holders.
struct Swarm {
    runtime: tokio::runtime::Runtime,
    exe: PathBuf,
    root: PathBuf,
    tracker: TrackerHandle,
    /// Folder where every shared file is generated and hashed once; holders hard-link from it.
    seed: Store,
    data: BTreeMap<String, DataFile>,
    next_id: u32,
}

impl Swarm {
    fn start(root: &Path) -> Result<Swarm, BenchError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let tracker = runtime.block_on(start_tracker(Duration::from_secs(10)))?;
        let (seed, _) =
            Store::open(&root.join("seed")).map_err(|e| BenchError::Setup(e.to_string()))?;
        Ok(Swarm {
            runtime,
            exe: std::env::current_exe()?,
            root: root.to_path_buf(),
            tracker,
            seed,
            data: BTreeMap::new(),
            next_id: 0,
        })
    }

    fn stop(self) {
        self.runtime.block_on(stop_tracker(self.tracker));
    }

    fn fresh_id(&mut self, label: &str) -> String {
        self.next_id += 1;
        format!("{label}-{}", self.next_id)
    }

    /// Generates the random files `(name, size)` missing from the seed folder and hashes them.
    fn ensure_data(&mut self, files: &[(String, u64)]) -> Result<(), BenchError> {
        let mut added = false;
        for (name, size) in files {
            if self.data.get(name).is_some_and(|d| d.size == *size) {
                continue;
            }
            write_random(&self.seed.files_dir().join(name), *size)?;
            added = true;
        }
        if added {
            self.seed
                .rescan()
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            for (name, size) in files {
                let shared = self
                    .seed
                    .get(name)
                    .ok_or_else(|| BenchError::Setup(format!("{name} was not shared")))?;
                self.data.insert(
                    name.clone(),
                    DataFile {
                        size: *size,
                        content_id: shared.content_id(),
                    },
                );
            }
        }
        Ok(())
    }

    fn data_path(&self, name: &str) -> PathBuf {
        self.seed.files_dir().join(name)
    }

    /// Starts one holder per entry of `rates` (an upload cap in bytes per second, or none), each
    /// sharing hard links to `files`, with the seed's hash cache (no hashing).
    fn start_holders(
        &mut self,
        label: &str,
        files: &[String],
        rates: &[Option<u64>],
    ) -> Result<Vec<Arc<PeerNode>>, BenchError> {
        let mut nodes = Vec::new();
        for rate in rates {
            let id = self.fresh_id(label);
            let dir = self.root.join("peers").join(&id);
            std::fs::create_dir_all(dir.join("files"))?;
            std::fs::create_dir_all(dir.join(".p2pshare"))?;
            for name in files {
                std::fs::hard_link(self.data_path(name), dir.join("files").join(name))?;
            }
            // Best effort: without it the holder hashes its files at start.
            let _ = std::fs::copy(self.seed.root().join(HASH_CACHE), dir.join(HASH_CACHE));
            let mut config = PeerConfig::new(&id, dir, &self.tracker.addr.to_string());
            config.limits.upload_rate = rate.map(|r| Arc::new(RateLimiter::new(r)));
            let node = self.runtime.block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let (node, info) = PeerNode::start(config, listener)
                    .await
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                if let Err(e) = info.registration {
                    return Err(BenchError::Setup(format!("holder {id}: {e}")));
                }
                if info.hashed_bytes > 0 {
                    tracing::warn!(holder = %id, bytes = info.hashed_bytes, "holder hashed at start: the seeded cache was not used");
                }
                Ok(node)
            });
            match node {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    self.stop_holders(nodes);
                    return Err(e);
                }
            }
        }
        Ok(nodes)
    }

    fn stop_holders(&self, nodes: Vec<Arc<PeerNode>>) {
        self.runtime.block_on(async {
            for node in &nodes {
                stop_child_peer(node).await;
            }
        });
        for node in nodes {
            let _ = std::fs::remove_dir_all(node.store().root());
        }
    }

    /// A fresh directory and id for a child's peer.
    fn child_peer(&mut self, label: &str) -> ChildPeer {
        let id = self.fresh_id(label);
        ChildPeer {
            dir: self.root.join("peers").join(&id),
            id,
            tracker: self.tracker.addr.to_string(),
        }
    }

    fn run_child(&self, plan: &Plan, limit: Duration) -> Result<ChildReport, BenchError> {
        let report = run_child(&self.exe, plan, limit);
        let dir = match plan {
            Plan::Download { peer, .. }
            | Plan::GetMany { peer, .. }
            | Plan::Stress { peer, .. } => Some(&peer.dir),
            Plan::Startup { .. } | Plan::TrackerLoad { .. } => None,
        };
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        report
    }
}

async fn start_tracker(heartbeat_interval: Duration) -> Result<TrackerHandle, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let config = crate::tracker::TrackerConfig { heartbeat_interval };
        if let Err(e) =
            crate::tracker::serve(listener, config, async move { token.cancelled().await }).await
        {
            tracing::error!(error = %e, "bench tracker failed");
        }
    });
    Ok(TrackerHandle { addr, stop, task })
}

async fn stop_tracker(tracker: TrackerHandle) {
    tracker.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.task).await;
}

/// Writes `size` random bytes to `path` and flushes them to disk.
pub fn write_random(path: &Path, size: u64) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::with_capacity(COPY_BUFFER, std::fs::File::create(path)?);
    let mut rng = rand::rng();
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let file = file.into_inner().map_err(|e| e.into_error())?;
    // Written back now, not during a measurement: writeback of a large file just written slows
    // whatever runs next (the first baseline copy ran 4x slower without this).
    if size >= COPY_BUFFER as u64 {
        file.sync_all()?;
    }
    Ok(())
}

/// Drops a file's pages from the page cache (after writing them back), so the next read comes
/// from disk.
fn evict_from_page_cache(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        use std::os::fd::AsRawFd;
        extern "C" {
            fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
        }
        const POSIX_FADV_DONTNEED: i32 = 4;
        // SAFETY: a plain syscall wrapper from the C library std links; `file` keeps the
        // descriptor open for the call, and the call only drops clean cached pages.
        let rc = unsafe { posix_fadvise(file.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Time limit of a child process that moves `bytes` (generous: 20 MB/s, plus a minute).
fn limit_for(bytes: u64) -> Duration {
    Duration::from_secs(60 + bytes / 20_000_000)
}

fn ratio(value: f64, reference: f64) -> Option<f64> {
    (reference > 0.0 && value.is_finite()).then(|| value / reference)
}

/// Summarises download runs into a row.
fn download_row(
    scenario: String,
    runs: &[DownloadRun],
    reference_bytes_per_s: Option<f64>,
    ratio_to: &str,
    minimum: Option<f64>,
) -> Row {
    let ok: Vec<&DownloadRun> = runs.iter().filter(|r| r.error.is_none()).collect();
    let failures: Vec<&str> = runs.iter().filter_map(|r| r.error.as_deref()).collect();
    let bytes = ok.first().map(|r| r.bytes);
    let seconds = median(ok.iter().map(|r| r.seconds));
    let rate = match (bytes, seconds) {
        (Some(b), Some(s)) if s > 0.0 => Some(b as f64 / s),
        _ => None,
    };
    let r = match (rate, reference_bytes_per_s) {
        (Some(v), Some(reference)) => ratio(v, reference),
        _ => None,
    };
    let mut notes = Vec::new();
    if let Some(last) = ok.last() {
        let total: u64 = last.holders.iter().map(|(_, b)| *b).sum();
        if last.holders.len() > 1 && total > 0 {
            let shares: Vec<String> = last
                .holders
                .iter()
                .map(|(id, b)| format!("{id} {:.0}%", 100.0 * *b as f64 / total as f64))
                .collect();
            notes.push(format!("shares (last run): {}", shares.join(", ")));
        }
        let all: Vec<String> = ok.iter().map(|r| format!("{:.3}", r.seconds)).collect();
        notes.push(format!("runs: {} s", all.join(" / ")));
    }
    notes.push(format!("{}/{} ok", ok.len(), runs.len()));
    if !failures.is_empty() {
        notes.push(format!("FAILED: {}", failures.join("; ")));
    }
    Row {
        scenario,
        bytes,
        seconds,
        mb_per_s: rate.map(|r| r / 1e6),
        peak_rss: ok.iter().filter_map(|r| r.peak_rss).max(),
        ratio: r,
        ratio_to: ratio_to.to_string(),
        target: minimum.map_or(String::new(), |m| format!(">= {m:.2}x")),
        pass: match (r, minimum) {
            (Some(r), Some(m)) => Some(r >= m && failures.is_empty()),
            (_, Some(_)) => Some(false),
            _ => None,
        },
        notes: notes.join("; "),
    }
}

fn failed_row(scenario: &str, e: &BenchError) -> Row {
    Row {
        scenario: scenario.to_string(),
        pass: Some(false),
        notes: format!("FAILED: {e}"),
        ..Row::default()
    }
}

/// One measurement of the rate-capped scenario.
struct RateConfig {
    scenario: String,
    /// Each holder's upload cap.
    rates: Vec<Option<u64>>,
    /// The rate the downloader should get, bytes per second.
    reference: f64,
    /// Least acceptable ratio to `reference`.
    minimum: f64,
    /// How the reference is named in the table.
    basis: String,
}

struct Runner<'a> {
    opts: &'a SwarmOptions,
    swarm: Swarm,
    rows: Vec<Row>,
    progress: &'a mut dyn Write,
    /// Baseline throughput, bytes per second.
    baseline: Option<f64>,
}

impl Runner<'_> {
    fn say(&mut self, text: &str) {
        let _ = writeln!(self.progress, "{text}");
    }

    fn push(&mut self, row: Row) {
        let _ = writeln!(self.progress, "  {}", format_row_line(&row));
        self.rows.push(row);
    }

    fn big_file(&mut self) -> Result<(String, DataFile), BenchError> {
        let name = "big.bin".to_string();
        if !self.swarm.data.contains_key(&name) {
            self.say(&format!(
                "writing and hashing a {} file ...",
                human::bytes(self.opts.size)
            ));
        }
        self.swarm.ensure_data(&[(name.clone(), self.opts.size)])?;
        let data = self.swarm.data[&name].clone();
        Ok((name, data))
    }

    fn baseline(&mut self) -> Result<(), BenchError> {
        let (name, data) = self.big_file()?;
        self.say("baseline: TCP copy file -> socket -> file between two processes");
        let source = self.swarm.data_path(&name);
        let dest = self.swarm.root.join("baseline.out");
        let mut times = Vec::new();
        for _ in 0..self.opts.runs {
            times.push(tcp_copy(&self.swarm.exe, &source, &dest, data.size)?.as_secs_f64());
        }
        let seconds = median(times.iter().copied());
        let rate = seconds.map(|s| data.size as f64 / s);
        self.baseline = rate;
        let all: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
        self.push(Row {
            scenario: "baseline: TCP copy, process -> process".into(),
            bytes: Some(data.size),
            seconds,
            mb_per_s: rate.map(|r| r / 1e6),
            ratio: Some(1.0),
            ratio_to: "baseline".into(),
            notes: format!("runs: {} s; 1 MiB read/write buffers", all.join(" / ")),
            ..Row::default()
        });
        Ok(())
    }

    fn holders_download(&mut self, holders: usize, minimum: f64) -> Result<(), BenchError> {
        let (name, data) = self.big_file()?;
        self.say(&format!(
            "{holders} holder(s): {} downloads of {} each",
            self.opts.runs,
            human::bytes(data.size)
        ));
        let nodes = self.swarm.start_holders(
            &format!("H{holders}"),
            std::slice::from_ref(&name),
            &vec![None; holders],
        )?;
        let plan = Plan::Download {
            peer: self.swarm.child_peer(&format!("D{holders}")),
            name,
            content_id: data.content_id.to_hex(),
            runs: self.opts.runs,
            check: !self.opts.no_check,
        };
        let report = self
            .swarm
            .run_child(&plan, limit_for(data.size * self.opts.runs as u64 * 2));
        self.swarm.stop_holders(nodes);
        let ChildReport::Download(runs) = report? else {
            return Err(BenchError::Child("unexpected report".into()));
        };
        let scenario = format!("{holders} holder(s) -> 1 downloader, to disk, verified");
        let row = download_row(scenario, &runs, self.baseline, "baseline", Some(minimum));
        self.push(row);
        Ok(())
    }

    fn rate_capped(&mut self) -> Result<(), BenchError> {
        let name = "rate.bin".to_string();
        let r = self.opts.rate;
        self.swarm
            .ensure_data(&[(name.clone(), self.opts.rate_size)])?;
        let data = self.swarm.data[&name].clone();
        let mut configs: Vec<RateConfig> = [1u64, 2, 4, 8]
            .iter()
            .map(|&k| RateConfig {
                scenario: format!("rate-capped: {k} holder(s) at R each"),
                rates: vec![Some(r); k as usize],
                reference: (k * r) as f64,
                minimum: 0.9,
                basis: format!("{k}R"),
            })
            .collect();
        configs.push(RateConfig {
            scenario: "rate-capped: holders at R, 2R, 4R, 8R".into(),
            rates: vec![Some(r), Some(2 * r), Some(4 * r), Some(8 * r)],
            reference: (15 * r) as f64,
            minimum: 0.85,
            basis: "15R".into(),
        });
        for RateConfig {
            scenario,
            rates,
            reference,
            minimum,
            basis,
        } in configs
        {
            self.say(&format!(
                "{scenario} (R = {}/s), {} downloads of {}",
                human::bytes(r),
                self.opts.runs,
                human::bytes(data.size)
            ));
            let result = (|| {
                let nodes = self
                    .swarm
                    .start_holders("R", std::slice::from_ref(&name), &rates)?;
                let plan = Plan::Download {
                    peer: self.swarm.child_peer("DR"),
                    name: name.clone(),
                    content_id: data.content_id.to_hex(),
                    runs: self.opts.runs,
                    check: !self.opts.no_check,
                };
                let expected = data.size as f64 / reference * self.opts.runs as f64;
                let report = self
                    .swarm
                    .run_child(&plan, Duration::from_secs_f64(60.0 + 3.0 * expected));
                self.swarm.stop_holders(nodes);
                match report? {
                    ChildReport::Download(runs) => Ok(runs),
                    _ => Err(BenchError::Child("unexpected report".into())),
                }
            })();
            let row = match result {
                Ok(runs) => download_row(
                    scenario.clone(),
                    &runs,
                    Some(reference),
                    &basis,
                    Some(minimum),
                ),
                Err(e) => failed_row(&scenario, &e),
            };
            self.push(row);
        }
        Ok(())
    }

    fn small_files(&mut self) -> Result<(), BenchError> {
        let count = self.opts.small_count;
        let size = self.opts.small_size;
        let names: Vec<String> = (0..count).map(|i| format!("small-{i:06}.bin")).collect();
        self.say(&format!(
            "small files: writing {count} files of {} ...",
            human::bytes(size)
        ));
        let files: Vec<(String, u64)> = names.iter().map(|n| (n.clone(), size)).collect();
        self.swarm.ensure_data(&files)?;
        let nodes = self.swarm.start_holders("HS", &names, &[None])?;
        let mut sequential = Vec::new();
        let mut parallel = Vec::new();
        let mut failure = None;
        for run in 0..self.opts.runs {
            self.say(&format!(
                "small files run {}/{}: {count} gets one by one, then {} at a time",
                run + 1,
                self.opts.runs,
                self.opts.small_parallel
            ));
            for (depth, into) in [
                (1, &mut sequential),
                (self.opts.small_parallel, &mut parallel),
            ] {
                let plan = Plan::GetMany {
                    peer: self.swarm.child_peer("DS"),
                    names: names.clone(),
                    parallel: depth,
                };
                match self
                    .swarm
                    .run_child(&plan, Duration::from_secs(60 + count as u64))
                {
                    Ok(ChildReport::GetMany(report)) => into.push(report),
                    Ok(_) => failure = Some(BenchError::Child("unexpected report".into())),
                    Err(e) => failure = Some(e),
                }
            }
        }
        self.swarm.stop_holders(nodes);
        if let Some(e) = failure {
            return Err(e);
        }
        let failures = |reports: &[GetManyReport]| -> String {
            let n: usize = reports.iter().map(|r| r.failures.len()).sum();
            let first = reports.iter().flat_map(|r| r.failures.first()).next();
            match first {
                None => String::new(),
                Some(f) => format!("; FAILED: {n} gets, e.g. {f}"),
            }
        };
        // Per-file latency: median over every get of every sequential run.
        let mut all: Vec<f64> = sequential
            .iter()
            .flat_map(|r| r.latencies.clone())
            .collect();
        all.sort_by(f64::total_cmp);
        let p50 = percentile(&all, 0.5);
        let p99 = percentile(&all, 0.99);
        let first_runs: Vec<String> = sequential
            .iter()
            .map(|r| {
                let n = r.latencies.len().min(100);
                let mut head = r.latencies[..n].to_vec();
                head.sort_by(f64::total_cmp);
                format!("{:.2}", percentile(&head, 0.5).unwrap_or(f64::NAN) * 1e3)
            })
            .collect();
        let seq_fail = failures(&sequential);
        self.push(Row {
            scenario: format!(
                "get of one {} file (median of all gets)",
                human::bytes(size)
            ),
            bytes: Some(size),
            seconds: p50,
            mb_per_s: p50.map(|s| size as f64 / s / 1e6),
            peak_rss: sequential.iter().filter_map(|r| r.peak_rss).max(),
            target: "< 5 ms".into(),
            pass: p50.map(|s| s < 0.005 && seq_fail.is_empty()),
            notes: format!(
                "p99 {:.2} ms; median of the first 100 gets per run: {} ms{seq_fail}",
                p99.unwrap_or(f64::NAN) * 1e3,
                first_runs.join(" / ")
            ),
            ..Row::default()
        });
        for (label, reports, target) in [
            ("one at a time", &sequential, Some(500.0)),
            ("parallel", &parallel, None),
        ] {
            let seconds = median(reports.iter().map(|r| r.seconds));
            let ok = reports.iter().map(|r| r.latencies.len()).min().unwrap_or(0);
            let files_per_s = seconds.map(|s| ok as f64 / s);
            let label = if label == "parallel" {
                format!("{} at a time", self.opts.small_parallel)
            } else {
                label.to_string()
            };
            let fail = failures(reports);
            self.push(Row {
                scenario: format!("{count} files of {}, {label}", human::bytes(size)),
                bytes: Some(size * count as u64),
                seconds,
                mb_per_s: seconds.map(|s| (size * count as u64) as f64 / s / 1e6),
                peak_rss: reports.iter().filter_map(|r| r.peak_rss).max(),
                target: target.map_or(String::new(), |t| format!("> {t:.0} files/s")),
                pass: target.map(|t| files_per_s.unwrap_or(0.0) > t && fail.is_empty()),
                notes: format!("{:.0} files/s{fail}", files_per_s.unwrap_or(f64::NAN)),
                ..Row::default()
            });
        }
        Ok(())
    }

    fn stress(&mut self) -> Result<(), BenchError> {
        let name = "stress.bin".to_string();
        let size = self.opts.stress_size;
        let downloads = self.opts.stress_downloads;
        let holders = self.opts.stress_holders as usize;
        self.swarm.ensure_data(&[(name.clone(), size)])?;
        let data = self.swarm.data[&name].clone();
        let mut reports = Vec::new();
        let mut holder_peaks = Vec::new();
        for run in 0..self.opts.runs {
            self.say(&format!(
                "stress run {}/{}: {downloads} parallel downloads of {} from {holders} holders",
                run + 1,
                self.opts.runs,
                human::bytes(size)
            ));
            let nodes = self.swarm.start_holders(
                "HX",
                std::slice::from_ref(&name),
                &vec![None; holders],
            )?;
            let plan = Plan::Stress {
                peer: self.swarm.child_peer("DX"),
                name: name.clone(),
                content_id: data.content_id.to_hex(),
                downloads,
            };
            reset_peak_rss();
            let report = self
                .swarm
                .run_child(&plan, limit_for(size * (downloads as u64 + 3) * 2));
            holder_peaks.extend(peak_rss());
            self.swarm.stop_holders(nodes);
            match report? {
                ChildReport::Stress(r) => reports.push(r),
                _ => return Err(BenchError::Child("unexpected report".into())),
            }
        }
        let single = median(reports.iter().flat_map(|r| r.single_seconds.clone()));
        let single_rate = single.map(|s| size as f64 / s);
        self.push(Row {
            scenario: format!(
                "stress reference: 1 download of {} from {holders} holders",
                human::bytes(size)
            ),
            bytes: Some(size),
            seconds: single,
            mb_per_s: single_rate.map(|r| r / 1e6),
            ratio: single_rate.and_then(|r| self.baseline.and_then(|b| ratio(r, b))),
            ratio_to: if self.baseline.is_some() {
                "baseline".into()
            } else {
                String::new()
            },
            notes: format!("median of {} singles", STRESS_SINGLES * reports.len()),
            ..Row::default()
        });
        let seconds = median(reports.iter().map(|r| r.seconds));
        let bytes = size * downloads as u64;
        let rate = seconds.map(|s| bytes as f64 / s);
        let all_ok = reports
            .iter()
            .all(|r| r.succeeded == downloads && r.mismatched == 0 && r.failures.is_empty());
        let r = match (rate, single_rate) {
            (Some(a), Some(s)) => ratio(a, s),
            _ => None,
        };
        let failures: Vec<String> = reports
            .iter()
            .flat_map(|r| r.failures.iter().take(3).cloned())
            .collect();
        let counts: Vec<String> = reports
            .iter()
            .map(|r| {
                format!(
                    "{}/{downloads} ok, {} mismatched",
                    r.succeeded, r.mismatched
                )
            })
            .collect();
        self.push(Row {
            scenario: format!(
                "stress: {downloads} parallel downloads of {}, {holders} holders",
                human::bytes(size)
            ),
            bytes: Some(bytes),
            seconds,
            mb_per_s: rate.map(|r| r / 1e6),
            peak_rss: reports.iter().filter_map(|r| r.peak_rss).max(),
            ratio: r,
            ratio_to: "single".into(),
            target: ">= 0.80x, all ok".into(),
            pass: Some(all_ok && r.is_some_and(|r| r >= 0.8)),
            notes: format!(
                "{}; holders+tracker process peak {}{}",
                counts.join(" / "),
                holder_peaks
                    .iter()
                    .max()
                    .map_or("?".into(), |b| human::bytes(*b)),
                if failures.is_empty() {
                    String::new()
                } else {
                    format!("; FAILED e.g. {}", failures.join("; "))
                }
            ),
        });
        Ok(())
    }

    fn tracker(&mut self) -> Result<(), BenchError> {
        let o = self.opts;
        self.say(&format!(
            "tracker: {} peers x {} files registered, then WhoHas from {} connections, {} s per measurement",
            o.tracker_peers, o.tracker_files, o.tracker_connections, o.tracker_seconds
        ));
        // A tracker of its own, with heartbeats far apart: the synthetic peers never heartbeat.
        let tracker = self
            .swarm
            .runtime
            .block_on(start_tracker(Duration::from_secs(3600)))?;
        reset_peak_rss();
        let mut reports = Vec::new();
        let mut failure = None;
        for run in 0..o.runs {
            let plan = Plan::TrackerLoad {
                tracker: tracker.addr.to_string(),
                register: run == 0,
                peers: o.tracker_peers,
                files_per_peer: o.tracker_files,
                connections: o.tracker_connections,
                in_flight: o.tracker_in_flight.clone(),
                seconds: o.tracker_seconds,
            };
            let limit = Duration::from_secs(
                120 + o.tracker_seconds as u64 * o.tracker_in_flight.len() as u64 * 2
                    + o.tracker_peers as u64 / 100,
            );
            match self.swarm.run_child(&plan, limit) {
                Ok(ChildReport::TrackerLoad(r)) => reports.push(r),
                Ok(_) => failure = Some(BenchError::Child("unexpected report".into())),
                Err(e) => failure = Some(e),
            }
        }
        let tracker_peak = peak_rss();
        self.swarm.runtime.block_on(stop_tracker(tracker));
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(first) = reports.first() {
            let peers = o.tracker_peers as f64;
            self.push(Row {
                scenario: format!(
                    "tracker: register {} peers x {} files",
                    o.tracker_peers, o.tracker_files
                ),
                seconds: Some(first.register_seconds),
                peak_rss: tracker_peak,
                notes: format!(
                    "{:.0} registrations/s over {} connections; {} refused; peak RSS is the bench process (tracker, no holders running)",
                    peers / first.register_seconds.max(1e-9),
                    o.tracker_connections,
                    first.register_errors
                ),
                ..Row::default()
            });
        }
        for &depth in &o.tracker_in_flight {
            let loads: Vec<&LoadReport> = reports
                .iter()
                .flat_map(|r| r.loads.iter().filter(|l| l.in_flight == depth))
                .collect();
            let rps = median(
                loads
                    .iter()
                    .map(|l| l.requests as f64 / l.seconds.max(1e-9)),
            );
            let p50 = median(loads.iter().map(|l| l.p50));
            let p99 = median(loads.iter().map(|l| l.p99));
            let errors: u64 = loads.iter().map(|l| l.errors).sum();
            self.push(Row {
                scenario: format!(
                    "tracker: WhoHas, {} connections x {depth} in flight",
                    o.tracker_connections
                ),
                seconds: median(loads.iter().map(|l| l.seconds)),
                peak_rss: reports.iter().filter_map(|r| r.peak_rss).max(),
                target: ">= 20000 req/s, p99 < 5 ms".into(),
                pass: Some(
                    rps.unwrap_or(0.0) >= 20_000.0 && p99.unwrap_or(1.0) < 0.005 && errors == 0,
                ),
                notes: format!(
                    "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {errors} errors; peak RSS is the load generator",
                    rps.unwrap_or(f64::NAN),
                    p50.unwrap_or(f64::NAN) * 1e3,
                    p99.unwrap_or(f64::NAN) * 1e3
                ),
                ..Row::default()
            });
        }
        Ok(())
    }

    fn startup(&mut self) -> Result<(), BenchError> {
        let size = self.opts.startup_size;
        let dir = self.swarm.root.join("startup");
        let files_dir = dir.join("files");
        std::fs::create_dir_all(&files_dir)?;
        let mut paths = Vec::new();
        let mut left = size;
        while left > 0 {
            let n = left.min(STARTUP_FILE_MAX);
            let path = files_dir.join(format!("startup-{:03}.bin", paths.len()));
            paths.push((path, n));
            left -= n;
        }
        self.say(&format!(
            "startup: writing a folder of {} in {} file(s) ...",
            human::bytes(size),
            paths.len()
        ));
        for (path, n) in &paths {
            write_random(path, *n)?;
        }
        let tracker = self.swarm.tracker.addr.to_string();
        let mut first = Vec::new();
        let mut restart = Vec::new();
        let limit = limit_for(size * 2);
        for run in 0..self.opts.runs {
            self.say(&format!(
                "startup run {}/{}: first scan{}, then restart",
                run + 1,
                self.opts.runs,
                if self.opts.startup_cold {
                    " (cold page cache)"
                } else {
                    ""
                }
            ));
            let _ = std::fs::remove_file(dir.join(HASH_CACHE));
            if self.opts.startup_cold {
                for (path, _) in &paths {
                    evict_from_page_cache(path)?;
                }
            }
            for into in [&mut first, &mut restart] {
                let plan = Plan::Startup {
                    peer: ChildPeer {
                        id: self.swarm.fresh_id("ST"),
                        dir: dir.clone(),
                        tracker: tracker.clone(),
                    },
                };
                match self.swarm.run_child(&plan, limit)? {
                    ChildReport::Startup(r) => into.push(r),
                    _ => return Err(BenchError::Child("unexpected report".into())),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        let errors: Vec<String> = first
            .iter()
            .chain(&restart)
            .filter_map(|r| r.registration_error.clone())
            .collect();
        let err_note = if errors.is_empty() {
            String::new()
        } else {
            format!("; registration FAILED: {}", errors[0])
        };
        let seconds = median(first.iter().map(|r| r.seconds));
        let hashed = first.iter().map(|r| r.hashed_bytes).min().unwrap_or(0);
        let rate = seconds.map(|s| hashed as f64 / s);
        let all: Vec<String> = first.iter().map(|r| format!("{:.3}", r.seconds)).collect();
        self.push(Row {
            scenario: format!(
                "startup: first scan of a {} folder ({} files{})",
                human::bytes(size),
                paths.len(),
                if self.opts.startup_cold {
                    ", cold cache"
                } else {
                    ", page cache warm"
                }
            ),
            bytes: Some(hashed),
            seconds,
            mb_per_s: rate.map(|r| r / 1e6),
            peak_rss: first.iter().filter_map(|r| r.peak_rss).max(),
            target: ">= 1 GB/s (4 GiB folder)".into(),
            pass: rate.map(|r| r >= 1e9 && hashed == size && errors.is_empty()),
            notes: format!(
                "{:.2} GB/s; hashed {} of {}; runs: {} s{err_note}",
                rate.unwrap_or(f64::NAN) / 1e9,
                human::bytes(hashed),
                human::bytes(size),
                all.join(" / ")
            ),
            ..Row::default()
        });
        let seconds = median(restart.iter().map(|r| r.seconds));
        let rehashed = restart.iter().map(|r| r.hashed_bytes).max().unwrap_or(0);
        let all: Vec<String> = restart
            .iter()
            .map(|r| format!("{:.4}", r.seconds))
            .collect();
        self.push(Row {
            scenario: "startup: restart over the unchanged folder".into(),
            bytes: Some(size),
            seconds,
            peak_rss: restart.iter().filter_map(|r| r.peak_rss).max(),
            target: "< 1 s, no rehash".into(),
            pass: seconds.map(|s| s < 1.0 && rehashed == 0 && errors.is_empty()),
            notes: format!(
                "rehashed {}; runs: {} s (PeerNode::start, in a fresh process)",
                human::bytes(rehashed),
                all.join(" / ")
            ),
            ..Row::default()
        });
        Ok(())
    }
}

/// Runs the scenarios `opts` selects and returns the table rows; progress goes to `progress`.
pub fn run(opts: &SwarmOptions, progress: &mut dyn Write) -> Result<Vec<Row>, BenchError> {
    let tmp;
    let root = match &opts.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::Builder::new()
                .prefix("p2pshare-bench.")
                .tempdir_in(dir)?
                .keep()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("p2pshare-bench.")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let _ = writeln!(progress, "working in {}", root.display());
    let swarm = Swarm::start(&root)?;
    let mut runner = Runner {
        opts,
        swarm,
        rows: Vec::new(),
        progress,
        baseline: None,
    };
    for scenario in Scenario::ALL {
        if !opts.wants(scenario) {
            continue;
        }
        let (name, result) = match scenario {
            Scenario::Baseline => ("baseline", runner.baseline()),
            Scenario::OneHolder => ("one-holder", runner.holders_download(1, 0.7)),
            Scenario::ThreeHolders => ("three-holders", runner.holders_download(3, 0.8)),
            Scenario::RateCapped => ("rate-capped", runner.rate_capped()),
            Scenario::SmallFiles => ("small-files", runner.small_files()),
            Scenario::Stress => ("stress", runner.stress()),
            Scenario::Tracker => ("tracker", runner.tracker()),
            Scenario::Startup => ("startup", runner.startup()),
        };
        if let Err(e) = result {
            runner.push(failed_row(name, &e));
        }
    }
    let rows = runner.rows;
    runner.swarm.stop();
    if opts.dir.is_some() {
        // Kept only on request, and then without the bulky data.
        let _ = std::fs::remove_dir_all(root.join("seed"));
        let _ = std::fs::remove_dir_all(root.join("peers"));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Output

fn opt(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".into())
}

fn format_seconds(s: f64) -> String {
    if s < 0.1 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

fn cells(row: &Row) -> [String; 8] {
    [
        row.scenario.clone(),
        opt(row.bytes.map(human::bytes)),
        opt(row.seconds.map(format_seconds)),
        opt(row.mb_per_s.map(|m| format!("{m:.1}"))),
        opt(row.peak_rss.map(human::bytes)),
        opt(row.ratio.map(|r| {
            if row.ratio_to.is_empty() {
                format!("{r:.3}x")
            } else {
                format!("{r:.3}x {}", row.ratio_to)
            }
        })),
        match row.pass {
            Some(true) => format!("{} PASS", row.target),
            Some(false) => format!("{} MISS", row.target),
            None => row.target.clone(),
        },
        row.notes.clone(),
    ]
}

fn format_row_line(row: &Row) -> String {
    let c = cells(row);
    format!(
        "{}: {} in {}, {} MB/s, peak RSS {}, ratio {}, target {}; {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    )
}

/// The rows as a Markdown table.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | bytes | seconds (median) | MB/s | peak RSS | ratio | target | notes |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n",
    );
    for row in rows {
        let c = cells(row).map(|s| s.replace('|', "/"));
        out.push_str(&format!("| {} |\n", c.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::<f64>::new()), None);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(50.0));
        assert_eq!(percentile(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile(&sorted[..1], 0.99), Some(1.0));
    }

    #[test]
    fn synthetic_names_have_files_per_peer_holders() {
        let (peers, files) = (100, 10);
        let mut holders = BTreeMap::<String, u32>::new();
        for p in 0..peers {
            let entries = synthetic_files(p, peers, files);
            assert_eq!(entries.len(), files as usize);
            for e in entries {
                *holders.entry(e.name).or_default() += 1;
            }
        }
        assert_eq!(holders.len(), peers as usize);
        assert!(holders.values().all(|&n| n == files));
    }

    #[test]
    fn peak_rss_is_readable_here() {
        // Linux only; elsewhere the column shows "-".
        if cfg!(target_os = "linux") {
            assert!(peak_rss().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn the_table_has_a_line_per_row() {
        let rows = vec![
            Row {
                scenario: "a | b".into(),
                seconds: Some(0.0012),
                pass: Some(true),
                target: "< 5 ms".into(),
                ..Row::default()
            },
            Row::default(),
        ];
        let table = markdown_table(&rows);
        assert_eq!(table.lines().count(), 4);
        assert!(table.contains("| a / b | - | 1.20 ms |"));
        assert!(table.contains("< 5 ms PASS"));
    }
}
