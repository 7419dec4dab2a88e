//! The bench process's side of its child processes: what a child is asked to do (a [`Plan`], JSON
//! on its standard input), what it answers (a [`ChildReport`], one JSON line on its standard
//! output), and running one with a deadline. A child is this very executable
//! (`std::env::current_exe`) started with the hidden [`WORKER_SUBCOMMAND`]; [`worker_main`] is its
//! entry point.

use crate::error::BenchError;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read, Write};
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
    /// Start a peer whose uploads are capped at `upload_rate` bytes per second (a seeder), say
    /// [`ChildReport::Ready`], serve until standard input closes (or `max_seconds` pass), and
    /// report what it uploaded.
    Seed {
        /// Peer to start (its folder already holds the files it shares).
        peer: ChildPeer,
        /// Upload cap, bytes per second.
        upload_rate: u64,
        /// Serve at most this long, whatever happens to standard input.
        max_seconds: u64,
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
        /// The process serving the tracker, whose CPU time each measurement reports.
        tracker_pid: u32,
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

/// One load measurement (`WhoHas` or its empty-RPC twin).
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
    /// CPU seconds (user + system) the tracker's process spent meanwhile.
    pub(crate) tracker_cpu: f64,
    /// CPU seconds the load generator spent meanwhile.
    pub(crate) client_cpu: f64,
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
    /// The same loads of an empty RPC (the health `Check` of the tracker's own server), each
    /// measured in alternating slices with its `WhoHas` twin.
    pub(crate) baselines: Vec<LoadReport>,
    /// Peak RSS of the load generator.
    pub(crate) peak_rss: Option<u64>,
}

/// What `Seed` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SeedReport {
    /// `PeerNode::bytes_uploaded()` when it stopped: bytes of blocks its Peer service sent.
    pub(crate) bytes_uploaded: u64,
    /// Seconds it served (from ready to stop).
    pub(crate) seconds: f64,
    /// Peak RSS of the seeder process.
    pub(crate) peak_rss: Option<u64>,
}

/// A child's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ChildReport {
    /// For [`Plan::Seed`], before its report: serving and registered.
    Ready,
    /// For [`Plan::Seed`].
    Seed(SeedReport),
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

/// A [`Plan::Seed`] child running in the background: started by [`SeederProcess::start`] (which
/// returns once the seeder is registered and serving), stopped by [`SeederProcess::stop`] (which
/// closes its standard input and collects its [`SeedReport`]). Dropped without `stop`, the child
/// is killed.
pub(crate) struct SeederProcess {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl SeederProcess {
    /// Starts `plan` (a [`Plan::Seed`]) in a child of `exe` and waits up to `ready_within` for it
    /// to be serving.
    pub(crate) fn start(
        exe: &Path,
        plan: &Plan,
        ready_within: Duration,
    ) -> Result<SeederProcess, BenchError> {
        let mut child = Command::new(exe)
            .arg(WORKER_SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take();
        let (tx, lines) = std::sync::mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut seeder = SeederProcess {
            stdin: child.stdin.take(),
            child,
            lines,
        };
        let mut plan_line =
            serde_json::to_vec(plan).map_err(|e| BenchError::Child(e.to_string()))?;
        plan_line.push(b'\n');
        match seeder.stdin.as_mut() {
            Some(stdin) => {
                stdin.write_all(&plan_line)?;
                stdin.flush()?;
            }
            None => return Err(BenchError::Child("seeder: no stdin".into())),
        }
        let deadline = Instant::now() + ready_within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match seeder.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(BenchError::Child(format!(
                        "seeder not serving after {ready_within:?}; killed"
                    )))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(BenchError::Child(
                        "seeder exited before it was serving".into(),
                    ))
                }
            };
            match serde_json::from_str::<ChildReport>(&line) {
                Ok(ChildReport::Ready) => return Ok(seeder),
                Ok(ChildReport::Failed(why)) => {
                    return Err(BenchError::Child(format!("seeder: {why}")))
                }
                _ => continue,
            }
        }
    }

    /// Closes the seeder's standard input (it stops serving and reports), waits up to `limit`
    /// for it to exit (then kills it) and returns its report.
    pub(crate) fn stop(mut self, limit: Duration) -> Result<SeedReport, BenchError> {
        drop(self.stdin.take());
        let status = wait_bounded(&mut self.child, limit)?;
        // The reader thread ends at the child's end of output.
        let last = self
            .lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .last()
            .unwrap_or_default();
        match serde_json::from_str::<ChildReport>(&last) {
            Ok(ChildReport::Seed(report)) => Ok(report),
            Ok(ChildReport::Failed(why)) => Err(BenchError::Child(format!("seeder: {why}"))),
            _ => Err(BenchError::Child(format!(
                "seeder: exit {status}, unreadable report: {}",
                last.chars().take(200).collect::<String>()
            ))),
        }
    }
}

impl Drop for SeederProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Entry point of [`WORKER_SUBCOMMAND`]: reads a [`Plan`] (one line of JSON) from standard
/// input, runs it, prints the [`ChildReport`] as one JSON line on standard output. Standard input
/// stays open after the plan's line for plans that run until it closes ([`Plan::Seed`]).
pub(crate) fn worker_main() -> Result<(), BenchError> {
    let mut input = String::new();
    std::io::stdin().read_line(&mut input)?;
    let report = match serde_json::from_str::<Plan>(&input) {
        Ok(plan) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime
                .block_on(crate::worker::run_plan(plan))
                .unwrap_or_else(ChildReport::Failed);
            // A thread blocked on standard input (a seeder stopped by its own deadline) must not
            // hold the process up.
            runtime.shutdown_timeout(Duration::from_millis(100));
            report
        }
        Err(e) => ChildReport::Failed(format!("bad plan: {e}")),
    };
    let line = serde_json::to_string(&report).map_err(|e| BenchError::Child(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
