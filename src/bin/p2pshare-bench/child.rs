//! The bench process's side of its child processes: what a child is asked to do (a [`Plan`], JSON
//! on its standard input), what it answers (a [`ChildReport`], one JSON line on its standard
//! output), and running one with a deadline. A child is this very executable
//! (`std::env::current_exe`) started with the hidden [`WORKER_SUBCOMMAND`]; [`worker_main`] is its
//! entry point.

use crate::error::BenchError;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Hidden subcommand of the bench binary that runs a [`Plan`] read from standard input.
pub(crate) const WORKER_SUBCOMMAND: &str = "__worker";

/// What a child process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Plan {
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
pub(crate) struct ChildPeer {
    /// Peer id.
    pub(crate) id: String,
    /// Its directory.
    pub(crate) dir: PathBuf,
    /// Tracker address.
    pub(crate) tracker: String,
}

/// One timed download in a child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DownloadRun {
    /// Wall time of `PeerNode::download`.
    pub(crate) seconds: f64,
    /// Bytes of the file.
    pub(crate) bytes: u64,
    /// Peak RSS during the download (reset before it), if the kernel tells.
    pub(crate) peak_rss: Option<u64>,
    /// Bytes each holder delivered, by peer id.
    pub(crate) holders: Vec<(String, u64)>,
    /// Why it failed (download error or a copy that does not hash right).
    pub(crate) error: Option<String>,
}

/// What `GetMany` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GetManyReport {
    /// Seconds of each successful `get`.
    pub(crate) latencies: Vec<f64>,
    /// Wall time of the whole pass.
    pub(crate) seconds: f64,
    /// Failures.
    pub(crate) failures: Vec<String>,
    /// Peak RSS of the pass.
    pub(crate) peak_rss: Option<u64>,
}

/// What `Stress` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StressReport {
    /// Seconds of each single download before the parallel ones.
    pub(crate) single_seconds: Vec<f64>,
    /// Wall time of all parallel downloads.
    pub(crate) seconds: f64,
    /// Parallel downloads that completed.
    pub(crate) succeeded: u32,
    /// Failures, with their messages.
    pub(crate) failures: Vec<String>,
    /// Completed copies that do not hash to the content id.
    pub(crate) mismatched: u32,
    /// Bytes delivered by the parallel downloads.
    pub(crate) bytes: u64,
    /// Peak RSS during the parallel downloads.
    pub(crate) peak_rss: Option<u64>,
}

/// What `Startup` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StartupReport {
    /// Wall time of `PeerNode::start` (scan, hashing, serving, registration).
    pub(crate) seconds: f64,
    /// Bytes hashed (0: the hash cache answered).
    pub(crate) hashed_bytes: u64,
    /// Files shared.
    pub(crate) shared: usize,
    /// Registration outcome, if it failed.
    pub(crate) registration_error: Option<String>,
    /// Peak RSS of the process.
    pub(crate) peak_rss: Option<u64>,
}

/// One `WhoHas` load measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoadReport {
    /// Requests in flight per connection.
    pub(crate) in_flight: u32,
    /// Requests answered OK.
    pub(crate) requests: u64,
    /// Requests that failed.
    pub(crate) errors: u64,
    /// Wall time.
    pub(crate) seconds: f64,
    /// Median latency, seconds.
    pub(crate) p50: f64,
    /// 99th percentile latency, seconds.
    pub(crate) p99: f64,
}

/// What `TrackerLoad` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrackerLoadReport {
    /// Seconds to register the synthetic peers (0 if not asked).
    pub(crate) register_seconds: f64,
    /// Registrations refused.
    pub(crate) register_errors: u64,
    /// One per `in_flight` value.
    pub(crate) loads: Vec<LoadReport>,
    /// Peak RSS of the load generator.
    pub(crate) peak_rss: Option<u64>,
}

/// A child's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ChildReport {
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

/// Waits for `child` to exit; kills it (by its own handle) after `limit`.
pub(crate) fn wait_bounded(
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

/// Runs `plan` in a child process (this binary, [`WORKER_SUBCOMMAND`]) and returns its report.
/// The child is killed if it runs longer than `limit`.
pub(crate) fn run_child(
    exe: &Path,
    plan: &Plan,
    limit: Duration,
) -> Result<ChildReport, BenchError> {
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
pub(crate) fn worker_main() -> Result<(), BenchError> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let report = match serde_json::from_str::<Plan>(&input) {
        Ok(plan) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(crate::worker::run_plan(plan))
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
