//! A p2pshare swarm on a [`Net`]: the real `tracker` and `peer` binaries, each on its host,
//! started and watched from outside, and the tracker's listing read from inside a host. Every
//! wait is bounded; every process belongs to the network, which kills it when dropped.

// Shared by the `netns` tests and the benchmark, each of which uses a part.
#![allow(dead_code)]

use super::net::Net;
use p2pshare::pb::tracker as tracker_pb;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The tracker's port (every host has its own address, so fixed ports do not collide).
pub(crate) const TRACKER_PORT: u16 = 8000;
/// The port every peer serves on.
pub(crate) const PEER_PORT: u16 = 9000;
/// Bound on the tracker printing that it listens.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one `ListPeers` call.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Between two looks at something awaited.
pub(crate) const POLL_STEP: Duration = Duration::from_millis(20);

/// Where the binaries are.
#[derive(Clone, Debug)]
pub(crate) struct Binaries {
    /// The `peer` binary.
    pub(crate) peer: PathBuf,
    /// The `tracker` binary.
    pub(crate) tracker: PathBuf,
}

/// How a `peer --exec` run ended.
#[derive(Debug)]
pub(crate) struct ExecRun {
    /// Its exit status.
    pub(crate) status: ExitStatus,
    /// Its standard output.
    pub(crate) stdout: String,
    /// Its standard error (logs).
    pub(crate) stderr: String,
    /// From its start to its exit.
    pub(crate) wall: Duration,
}

impl ExecRun {
    /// The seconds of its `got NAME (...) from N holder(s) [...] in T, R MB/s` line.
    pub(crate) fn get_seconds(&self) -> Option<f64> {
        let line = self.stdout.lines().find(|l| l.starts_with("got "))?;
        let time = line.rsplit_once("] in ")?.1.split(',').next()?.trim();
        let (value, unit) = time.split_once(' ')?;
        let value: f64 = value.parse().ok()?;
        match unit {
            "ms" => Some(value / 1e3),
            "s" => Some(value),
            _ => None,
        }
    }
}

/// Where a process's output goes: `<logs>/<label>.stdout` and `.stderr`.
fn log_files(logs: &Path, label: &str) -> Result<(File, File), String> {
    let open = |ext: &str| {
        let path = logs.join(format!("{label}.{ext}"));
        File::create(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    Ok((open("stdout")?, open("stderr")?))
}

/// Starts the tracker on `host` (heartbeats every `heartbeat_secs`) and returns its address once
/// it listens.
pub(crate) fn start_tracker(
    net: &mut Net,
    host: &str,
    bin: &Binaries,
    heartbeat_secs: u32,
    logs: &Path,
) -> Result<SocketAddr, String> {
    let (_, stderr) = log_files(logs, "tracker")?;
    let mut command = net.command(host, &bin.tracker);
    command
        .args(["--port", &TRACKER_PORT.to_string()])
        .args(["--heartbeat-interval", &heartbeat_secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(stderr);
    let child = net.spawn("tracker", command)?;
    let stdout = child.stdout.take().ok_or("no tracker stdout")?;
    let (tx, rx) = mpsc::channel();
    // Drains its output to the end, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("tracker listening on ") => break,
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "the tracker did not listen within {STARTUP_TIMEOUT:?}: {}",
                    std::fs::read_to_string(logs.join("tracker.stderr")).unwrap_or_default()
                ))
            }
        }
    }
    Ok(SocketAddr::new(net.host(host).addr.into(), TRACKER_PORT))
}

/// Where and how a peer process runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerSpec<'a> {
    /// Its host.
    pub(crate) host: &'a str,
    /// Its peer id (also the name of its logs).
    pub(crate) id: &'a str,
    /// The port it serves on ([`PEER_PORT`] unless several run on one host in turn).
    pub(crate) port: u16,
    /// The folder that holds `<id>/`.
    pub(crate) root: &'a Path,
    /// The tracker.
    pub(crate) tracker: SocketAddr,
    /// Where its output goes.
    pub(crate) logs: &'a Path,
}

impl PeerSpec<'_> {
    /// `peer <id> <port> <tracker> --root <root>` on its host, output to its logs.
    fn command(&self, net: &Net, bin: &Binaries) -> Result<std::process::Command, String> {
        let (stdout, stderr) = log_files(self.logs, self.id)?;
        let mut command = net.command(self.host, &bin.peer);
        command
            .arg(self.id)
            .arg(self.port.to_string())
            .arg(self.tracker.to_string())
            .arg("--root")
            .arg(self.root)
            .stdout(stdout)
            .stderr(stderr);
        Ok(command)
    }
}

/// Starts a headless peer (`--no-shell`) as `spec` says, with `extra` options.
pub(crate) fn start_peer(
    net: &mut Net,
    bin: &Binaries,
    spec: &PeerSpec<'_>,
    extra: &[&str],
) -> Result<(), String> {
    let mut command = spec.command(net, bin)?;
    command.arg("--no-shell").args(extra);
    net.spawn(spec.id, command).map(|_| ())
}

/// Starts a peer that runs `commands` (`--exec`) as `spec` says, with `extra` options; wait for
/// it with [`wait_exec`].
pub(crate) fn start_exec(
    net: &mut Net,
    bin: &Binaries,
    spec: &PeerSpec<'_>,
    commands: &str,
    extra: &[&str],
) -> Result<Instant, String> {
    let mut command = spec.command(net, bin)?;
    command.arg("--exec").arg(commands).args(extra);
    let started = Instant::now();
    net.spawn(spec.id, command)?;
    Ok(started)
}

/// Waits (at most `timeout`, then kills it) for the `--exec` peer `id` started at `started`.
pub(crate) fn wait_exec(
    net: &mut Net,
    id: &str,
    started: Instant,
    timeout: Duration,
    logs: &Path,
) -> Result<ExecRun, String> {
    let deadline = started + timeout;
    let status = loop {
        let child = net.child(id);
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{id} still running after {timeout:?}; stdout:\n{}\nstderr:\n{}",
                read_log(logs, id, "stdout"),
                read_log(logs, id, "stderr")
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = started.elapsed();
    Ok(ExecRun {
        status,
        stdout: read_log(logs, id, "stdout"),
        stderr: read_log(logs, id, "stderr"),
        wall,
    })
}

/// A log of process `label`.
pub(crate) fn read_log(logs: &Path, label: &str, ext: &str) -> String {
    std::fs::read_to_string(logs.join(format!("{label}.{ext}"))).unwrap_or_default()
}

/// A live peer as the tracker lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Listed {
    /// Its id.
    pub(crate) id: String,
    /// Its address, as the tracker hands it out.
    pub(crate) address: String,
    /// How many files it shares.
    pub(crate) files: u32,
}

/// The tracker's listing of live peers, asked from `host`, by id.
pub(crate) fn list_peers(
    net: &Net,
    host: &str,
    tracker: SocketAddr,
) -> Result<Vec<Listed>, String> {
    net.on(host, move || {
        // A runtime on this thread alone, so the connection is made in this namespace.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let channel =
                p2pshare::grpc::channel(&tracker.to_string()).map_err(|e| e.to_string())?;
            let mut client = tracker_pb::tracker_client::TrackerClient::new(channel);
            let mut peers = Vec::new();
            let mut token = String::new();
            // A handful of peers: one page; the bound is only a guard.
            for _ in 0..10 {
                let call = client.list_peers(tracker_pb::ListPeersRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                });
                let answer = tokio::time::timeout(CALL_TIMEOUT, call)
                    .await
                    .map_err(|_| format!("ListPeers took over {CALL_TIMEOUT:?}"))?
                    .map_err(|s| format!("ListPeers: {s}"))?
                    .into_inner();
                peers.extend(answer.peers.into_iter().map(|p| Listed {
                    id: p.peer_id,
                    address: p.address,
                    files: p.file_count,
                }));
                if answer.next_page_token.is_empty() {
                    break;
                }
                token = answer.next_page_token;
            }
            peers.sort();
            Ok(peers)
        })
    })
    .map_err(|e| e.to_string())?
}

/// Polls the tracker's listing (from `host`) until every one of `ids` is in it, for at most
/// `timeout`; returns the listing and when it was first complete.
pub(crate) fn wait_for_peers(
    net: &Net,
    host: &str,
    tracker: SocketAddr,
    ids: &[&str],
    timeout: Duration,
) -> Result<(Vec<Listed>, Instant), String> {
    wait_for_catalogs(
        net,
        host,
        tracker,
        &ids.iter().map(|id| (*id, 0)).collect::<Vec<_>>(),
        timeout,
    )
}

/// Polls the tracker's listing (from `host`) until each `(id, files)` is in it sharing at
/// least `files` files, for at most `timeout`; returns the listing and when it was complete.
pub(crate) fn wait_for_catalogs(
    net: &Net,
    host: &str,
    tracker: SocketAddr,
    wanted: &[(&str, u32)],
    timeout: Duration,
) -> Result<(Vec<Listed>, Instant), String> {
    let deadline = Instant::now() + timeout;
    let mut last = Err("never asked".to_string());
    while Instant::now() < deadline {
        last = list_peers(net, host, tracker);
        if let Ok(peers) = &last {
            let listed =
                |(id, files): &(&str, u32)| peers.iter().any(|p| p.id == *id && p.files >= *files);
            if wanted.iter().all(listed) {
                return Ok((peers.clone(), Instant::now()));
            }
        }
        std::thread::sleep(POLL_STEP);
    }
    Err(format!(
        "not all of {wanted:?} listed within {timeout:?}; last: {last:?}"
    ))
}

/// Makes `<root>/<id>/files/` for each id and puts `name` there: a hard link to `source` (no
/// copy, no extra page cache).
pub(crate) fn seed(root: &Path, ids: &[&str], name: &str, source: &Path) -> Result<(), String> {
    for id in ids {
        let files = root.join(id).join("files");
        std::fs::create_dir_all(&files).map_err(|e| format!("{}: {e}", files.display()))?;
        let dest = files.join(name);
        if !dest.exists() {
            std::fs::hard_link(source, &dest)
                .or_else(|_| std::fs::copy(source, &dest).map(|_| ()))
                .map_err(|e| format!("{}: {e}", dest.display()))?;
        }
    }
    Ok(())
}
