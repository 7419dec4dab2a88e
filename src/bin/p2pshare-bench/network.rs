//! The means of the `network` scenario (`runner/network.rs`): hosts in network namespaces on a
//! bridge, the real `tracker` and `peer` binaries on them, plain TCP between the same hosts as
//! the reference, and a timeline of one `get` (when its data was in, when it said so, when it
//! exited) with a cable optionally pulled partway.
//!
//! The harness is the test suite's (`tests/netns/`), included by path: one implementation of
//! namespaces, caps, cables and the delay line, run by the tests and measured here.

#[path = "../../../tests/netns/delay_line.rs"]
pub(crate) mod delay_line;
#[path = "../../../tests/netns/net.rs"]
pub(crate) mod net;
#[path = "../../../tests/netns/swarm.rs"]
pub(crate) mod swarm;

use crate::baseline::{copy_to_file, TCP_SEND_SUBCOMMAND};
use crate::child::wait_bounded;
use crate::error::BenchError;
use net::Net;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use swarm::{Binaries, ExecRun, PeerSpec};

/// Bound on a plain TCP copy or a download.
pub(crate) const TRANSFER_LIMIT: Duration = Duration::from_secs(120);
/// Between two looks at a download in progress.
const TIMELINE_STEP: Duration = Duration::from_millis(5);

impl From<String> for BenchError {
    fn from(e: String) -> Self {
        BenchError::Setup(e)
    }
}

/// The `peer` and `tracker` binaries beside the bench's.
pub(crate) fn binaries(bench_exe: &Path) -> Result<Binaries, BenchError> {
    let dir = bench_exe
        .parent()
        .ok_or_else(|| BenchError::Setup("the bench executable has no directory".into()))?;
    let find = |name: &str| {
        let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if path.is_file() {
            Ok(path)
        } else {
            Err(BenchError::Setup(format!(
                "the network scenario runs the real {name} binary, and there is none at {}: \
                 build it beside the bench (cargo build --release --bin peer --bin tracker \
                 --bin p2pshare-bench)",
                path.display()
            )))
        }
    };
    Ok(Binaries {
        peer: find("peer")?,
        tracker: find("tracker")?,
    })
}

/// Splits `source` into one part per weight, sized in proportion (the ideal split: every
/// sender done at once), written to `dir`. Returns each part's path and length.
pub(crate) fn split_file(
    source: &Path,
    weights: &[u64],
    dir: &Path,
) -> Result<Vec<(PathBuf, u64)>, BenchError> {
    let size = std::fs::metadata(source)?.len();
    let total: u64 = weights.iter().sum();
    let mut input = std::fs::File::open(source)?;
    let mut parts = Vec::new();
    let mut left = size;
    for (i, weight) in weights.iter().enumerate() {
        let len = if i + 1 == weights.len() {
            left
        } else {
            (size as u128 * *weight as u128 / total.max(1) as u128) as u64
        };
        left -= len;
        let path = dir.join(format!("part-{i}"));
        let mut out = std::fs::File::create(&path)?;
        std::io::copy(&mut (&mut input).take(len), &mut out)?;
        parts.push((path, len));
    }
    Ok(parts)
}

/// Plain TCP on the same paths as a download: each `(host, part)` sends its part from its host
/// (the bench binary's TCP sender, started there) to `receiver`, all at once, one connection
/// each; `receiver` writes each to a file in `scratch`. Returns the time from the first
/// connection accepted to the last byte written.
pub(crate) fn plain_tcp(
    net: &Net,
    exe: &Path,
    receiver: &str,
    senders: &[(String, PathBuf, u64)],
    scratch: &Path,
) -> Result<Duration, BenchError> {
    let addr = net.host(receiver).addr;
    let listener = net.on(receiver, || {
        TcpListener::bind(SocketAddr::new(addr.into(), 0))
    })??;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut children = Vec::new();
    for (host, part, _) in senders {
        let mut command = net.command(host, exe);
        command
            .arg(TCP_SEND_SUBCOMMAND)
            .arg(part)
            .arg(addr.to_string())
            .stdout(Stdio::null());
        children.push(command.spawn()?);
    }
    let outcome = receive_all(listener, senders, scratch);
    let mut statuses = Vec::new();
    for mut child in children {
        statuses.push(wait_bounded(&mut child, Duration::from_secs(30)));
    }
    let elapsed = outcome?;
    for status in statuses {
        let status = status?;
        if !status.success() {
            return Err(BenchError::Child(format!("a TCP sender failed ({status})")));
        }
    }
    Ok(elapsed)
}

/// Accepts one connection per sender and copies each to a file on its own thread.
fn receive_all(
    listener: TcpListener,
    senders: &[(String, PathBuf, u64)],
    scratch: &Path,
) -> Result<Duration, BenchError> {
    let expected: u64 = senders.iter().map(|(_, _, len)| len).sum();
    let deadline = Instant::now() + TRANSFER_LIMIT;
    let mut started = None;
    let mut threads = Vec::new();
    while threads.len() < senders.len() {
        match listener.accept() {
            Ok((socket, _)) => {
                started.get_or_insert_with(Instant::now);
                let dest = scratch.join(format!("tcp-{}", threads.len()));
                threads.push(std::thread::spawn(move || copy_to_file(socket, &dest)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(BenchError::Child("a TCP sender never connected".into()));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut copied = 0;
    for thread in threads {
        copied += thread
            .join()
            .map_err(|_| BenchError::Child("a TCP receiver panicked".into()))??;
    }
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    for i in 0..senders.len() {
        let _ = std::fs::remove_file(scratch.join(format!("tcp-{i}")));
    }
    if copied != expected {
        return Err(BenchError::Child(format!(
            "plain TCP moved {copied} of {expected} bytes"
        )));
    }
    Ok(elapsed)
}

/// A cable to pull during a download.
#[derive(Clone, Debug)]
pub(crate) struct Cut {
    /// The host whose cable is pulled.
    pub(crate) host: String,
    /// When: once the downloader has received this share of the file (0 = before it starts).
    pub(crate) at_fraction: f64,
}

/// What one timed `get` showed, every time from the downloader's start.
#[derive(Debug)]
pub(crate) struct Timeline {
    /// The run itself.
    pub(crate) run: ExecRun,
    /// The seconds its `got` line reports (the download proper).
    pub(crate) get_seconds: Option<f64>,
    /// When the file appeared in `files/` (its data all in).
    pub(crate) file_in: Option<Duration>,
    /// When the `got` line was printed.
    pub(crate) got_line: Option<Duration>,
    /// When the cable was pulled, and the share of the file in by then.
    pub(crate) cut: Option<(Duration, f64)>,
    /// The TCP state of the probed holder's connections (`ss -tin`), taken once 90% of the file
    /// was in: why its sender waited (see [`tcp_limits`]).
    pub(crate) holder_tcp: Option<String>,
}

/// What one download needs: the downloader (a new peer id per run, so the tracker never lists
/// an earlier run's downloader) and the file.
pub(crate) struct GetPlan<'a> {
    /// The downloader.
    pub(crate) peer: PeerSpec<'a>,
    /// The file to get.
    pub(crate) file: &'a str,
    /// Its size.
    pub(crate) size: u64,
    /// A holder whose TCP state to take once 90% of the file is in.
    pub(crate) probe: Option<&'a str>,
}

/// Runs `peer <id> --exec "get FILE"` on its host, watching its link, its `files/` and its
/// output every few milliseconds; pulls `cut`'s cable when its moment comes. The cable stays
/// out: plugging it back is the caller's.
pub(crate) fn timed_get(
    net: &mut Net,
    bin: &Binaries,
    plan: &GetPlan<'_>,
    cut: Option<&Cut>,
) -> Result<Timeline, BenchError> {
    let spec = &plan.peer;
    let received_before = net.received_bytes(spec.host);
    let mut cut_at = None;
    if let Some(c) = cut.filter(|c| c.at_fraction <= 0.0) {
        net.set_link(&c.host, false)?;
        cut_at = Some((Duration::ZERO, 0.0));
    }
    let started = swarm::start_exec(net, bin, spec, &format!("get {}", plan.file), &[])?;
    let dest = spec.root.join(spec.id).join("files").join(plan.file);
    let stdout = spec.logs.join(format!("{}.stdout", spec.id));
    let (mut file_in, mut got_line, mut holder_tcp) = (None, None, None);
    let deadline = started + TRANSFER_LIMIT;
    loop {
        if net.child(spec.id).try_wait()?.is_some() || Instant::now() > deadline {
            break;
        }
        let share = || {
            net.received_bytes(spec.host)
                .saturating_sub(received_before) as f64
                / plan.size.max(1) as f64
        };
        if let (Some(holder), None) = (plan.probe, &holder_tcp) {
            if share() >= 0.9 {
                let ns = net.host(holder).ns.clone();
                holder_tcp = net::run("ip", &["netns", "exec", &ns, "ss", "-tinH"]).ok();
            }
        }
        if let (Some(c), None) = (cut, cut_at) {
            let share = share();
            if share >= c.at_fraction {
                net.set_link(&c.host, false)?;
                cut_at = Some((started.elapsed(), share));
            }
        }
        if file_in.is_none() && dest.exists() {
            file_in = Some(started.elapsed());
        }
        if got_line.is_none() && std::fs::read_to_string(&stdout).is_ok_and(|t| t.contains("got "))
        {
            got_line = Some(started.elapsed());
        }
        std::thread::sleep(TIMELINE_STEP);
    }
    let run = swarm::wait_exec(net, spec.id, started, TRANSFER_LIMIT, spec.logs)?;
    if !run.status.success() {
        return Err(BenchError::Child(format!(
            "{} failed ({}): {} {}",
            spec.id,
            run.status,
            run.stdout.trim(),
            run.stderr.lines().last().unwrap_or_default()
        )));
    }
    // Caught between two looks: it was there by the exit.
    file_in = file_in.or(Some(run.wall));
    got_line = got_line.or(Some(run.wall));
    Ok(Timeline {
        get_seconds: run.get_seconds(),
        run,
        file_in,
        got_line,
        cut: cut_at,
        holder_tcp,
    })
}

/// From `ss -tin` output: for the connection to `peer` (an address), the sender's TCP figures
/// that say why it waited: `busy` (time with data in flight), `rwnd_limited` (waiting for the
/// receiver's TCP window), `sndbuf_limited` (waiting for its own send buffer), `cwnd`, `rtt`,
/// and `send-q` (bytes unacknowledged: about what is in flight).
/// Time neither busy nor limited is time the application (here: HTTP/2 flow control, or the
/// holder itself) had nothing to send.
pub(crate) fn tcp_limits(ss: &str, peer: &str) -> Option<String> {
    // `ss -tinH`: a line with the addresses, then an indented line of TCP_INFO fields.
    let lines: Vec<&str> = ss.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(peer) && !l.starts_with(char::is_whitespace))?;
    // Send-Q: bytes written to the socket and not yet acknowledged (in flight, or queued).
    let send_q = lines[at].split_whitespace().nth(2).unwrap_or("?");
    let info = lines.get(at + 1)?;
    let wanted = [
        "cwnd:",
        "rtt:",
        "busy:",
        "rwnd_limited:",
        "sndbuf_limited:",
        "app_limited",
    ];
    let fields: Vec<&str> = info
        .split_whitespace()
        .filter(|f| wanted.iter().any(|w| f.starts_with(w)))
        .collect();
    Some(format!("send-q:{send_q} {}", fields.join(" ")))
}
