//! The tracker scenario on the Redis store: a `redis-server` of the benchmark's own (loopback,
//! nothing saved), two real `tracker --store redis://...` processes on it, the synthetic peers
//! registered through one, then `WhoHas` on one tracker and on both together (the same load
//! generator, its connections dealt over both), alternating in each run. Reports the ratio of
//! the two, p99, Redis's own memory, and the CPU each process spent (where a ratio below 2x
//! goes: the machine's cores are shared by Redis, both trackers and the load generator).

use super::{rate, Runner};
use crate::cgroup::CpuQuota;
use crate::child::{ChildReport, LoadReport, Plan, TrackerLoadReport};
use crate::error::BenchError;
use crate::memory::cpu_seconds;
use crate::report::{median, ratio, Row};
use std::io::BufRead;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to be ready.
const READY: Duration = Duration::from_secs(20);

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `tracker` binary beside the bench (as the `peer` one is found).
fn tracker_binary(bench_exe: &Path) -> Result<PathBuf, BenchError> {
    let tracker = bench_exe.with_file_name(format!("tracker{}", std::env::consts::EXE_SUFFIX));
    if !tracker.is_file() {
        return Err(BenchError::Setup(format!(
            "tracker-redis runs the real tracker binary, and there is none at {}: cargo build \
             --release --bin tracker --bin peer --bin p2pshare-bench",
            tracker.display()
        )));
    }
    Ok(tracker)
}

/// `redis-server` on a free loopback port, answering.
fn start_redis(dir: &Path) -> Result<(Killed, u16), BenchError> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Setup(format!("tracker-redis needs redis-server on PATH: {e}")))?;
    let server = Killed(child);
    let deadline = Instant::now() + READY;
    while Instant::now() < deadline {
        if redis_info(port).is_ok() {
            return Ok((server, port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BenchError::Setup("redis-server did not answer".into()))
}

/// `INFO memory` of the server on `port`: (used_memory, used_memory_rss) in bytes.
fn redis_info(port: u16) -> Result<(u64, u64), String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut connection)
        .map_err(|e| e.to_string())?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((field("used_memory"), field("used_memory_rss")))
}

/// How many keys the server on `port` holds (0: nothing registered yet).
fn redis_dbsize(port: u16) -> Result<u64, String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    redis::cmd("DBSIZE")
        .query(&mut connection)
        .map_err(|e| e.to_string())
}

/// A `tracker` process on the Redis store; its address.
fn start_tracker_process(exe: &Path, port: u16) -> Result<(Killed, String), BenchError> {
    let unlimited = usize::MAX.to_string();
    let mut child = Command::new(exe)
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--heartbeat-interval",
            "3600",
        ])
        .args(["--store", &format!("redis://127.0.0.1:{port}")])
        .args(["--max-peers", &unlimited, "--max-peers-per-ip", &unlimited])
        .args([
            "--max-files-per-peer",
            &unlimited,
            "--max-files-per-ip",
            &unlimited,
        ])
        .args(["--max-catalog-files", &unlimited])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take();
    let process = Killed(child);
    let mut lines =
        std::io::BufReader::new(stdout.ok_or_else(|| BenchError::Setup("tracker stdout".into()))?)
            .lines();
    // The banner is a few lines, printed at once: a bounded read (the process is killed if
    // the bench gives up).
    for _ in 0..20 {
        let Some(Ok(line)) = lines.next() else {
            break;
        };
        if let Some(address) = line.strip_prefix("tracker listening on ") {
            let address = address.trim().to_string();
            // The rest of stdout is drained on a thread so the tracker never blocks on it.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((process, address));
        }
    }
    Err(BenchError::Setup(
        "tracker did not print its address".into(),
    ))
}

impl Runner<'_> {
    pub(in crate::runner) fn tracker_redis(&mut self) -> Result<(), BenchError> {
        let o = self.opts;
        self.say(&format!(
            "tracker-redis: {} peers x {} files on the Redis store, WhoHas on one tracker and on two, {} connections, {} s per measurement",
            o.tracker_peers, o.tracker_files, o.tracker_connections, o.tracker_seconds
        ));
        let exe = tracker_binary(&self.swarm.exe)?;
        let dir = tempfile::tempdir()?;
        let (redis, port) = start_redis(dir.path())?;
        let (a, address_a) = start_tracker_process(&exe, port)?;
        let (b, address_b) = start_tracker_process(&exe, port)?;
        let pids = [redis.0.id(), a.0.id(), b.0.id()];
        let addresses = [address_a, address_b];
        let (one, two, memory) = self.redis_runs(&addresses, pids, port, o.runs)?;
        if let Some((first, _)) = one.first() {
            let (used, rss) = memory.unwrap_or((0, 0));
            self.push(Row {
                scenario: format!(
                    "tracker-redis: register {} peers x {} files (Redis store)",
                    o.tracker_peers, o.tracker_files
                ),
                seconds: Some(first.register_seconds),
                notes: format!(
                    "{:.0} registrations/s through one tracker; {} refused; Redis INFO memory: used_memory {:.1} MiB, used_memory_rss {:.1} MiB ({:.0} B per catalog entry)",
                    o.tracker_peers as f64 / first.register_seconds.max(1e-9),
                    first.register_errors,
                    used as f64 / 1048576.0,
                    rss as f64 / 1048576.0,
                    used as f64 / (o.tracker_peers as f64 * o.tracker_files as f64).max(1.0),
                ),
                ..Row::default()
            });
        }
        self.redis_rows(&one, &two, "");
        if o.tracker_cpu_quota > 0.0 {
            let cores = o.tracker_cpu_quota;
            let capped = |n: u32| {
                let group =
                    CpuQuota::new(&format!("p2pshare-bench-{}-{n}", std::process::id()), cores)?;
                group.add(pids[n as usize])?;
                Ok::<_, String>(group)
            };
            match capped(1).and_then(|a| Ok((a, capped(2)?))) {
                Ok(_groups) => {
                    let (one, two, _) = self.redis_runs(&addresses, pids, port, o.runs)?;
                    self.redis_rows(&one, &two, &format!(", each tracker held to {cores} core"));
                }
                Err(e) => self.say(&format!(
                    "tracker-redis: no capped rows (each tracker held to {cores} core): {e}"
                )),
            }
        }
        drop((a, b, redis));
        Ok(())
    }

    /// `runs` runs of WhoHas on one tracker then on both (`addresses`); the first run of a
    /// scenario registers the synthetic peers through the first tracker (the store is empty
    /// until then). Each result with the CPU seconds of Redis, tracker A, tracker B and the load
    /// generator (`pids`: the first three); and Redis's memory after registering.
    #[allow(clippy::type_complexity)]
    fn redis_runs(
        &mut self,
        addresses: &[String; 2],
        pids: [u32; 3],
        port: u16,
        runs: u32,
    ) -> Result<
        (
            Vec<(TrackerLoadReport, [f64; 4])>,
            Vec<(TrackerLoadReport, [f64; 4])>,
            Option<(u64, u64)>,
        ),
        BenchError,
    > {
        let o = self.opts;
        let mut one: Vec<(TrackerLoadReport, [f64; 4])> = Vec::new();
        let mut two: Vec<(TrackerLoadReport, [f64; 4])> = Vec::new();
        let mut memory = None;
        let empty = redis_dbsize(port).unwrap_or(0) == 0;
        for run in 0..runs {
            // Each run: one tracker, then both.
            for (both, into) in [(false, &mut one), (true, &mut two)] {
                let register = empty && run == 0 && !both;
                let plan = Plan::TrackerLoad {
                    tracker: if both {
                        addresses.join(",")
                    } else {
                        addresses[0].clone()
                    },
                    register,
                    peers: o.tracker_peers,
                    files_per_peer: o.tracker_files,
                    connections: o.tracker_connections,
                    in_flight: o.tracker_in_flight.clone(),
                    seconds: o.tracker_seconds,
                    tracker_pid: pids[1],
                };
                let limit = Duration::from_secs(
                    120 + o.tracker_seconds as u64 * o.tracker_in_flight.len() as u64 * 4
                        + o.tracker_peers as u64 / 50,
                );
                let before = pids.map(cpu_seconds);
                let child_cpu = crate::memory::waited_children_cpu_seconds();
                let report = match self.swarm.run_child(&plan, limit)? {
                    ChildReport::TrackerLoad(r) => r,
                    _ => return Err(BenchError::Child("unexpected report".into())),
                };
                let after = pids.map(cpu_seconds);
                let load_cpu = crate::memory::waited_children_cpu_seconds() - child_cpu;
                into.push((
                    report,
                    [
                        after[0] - before[0],
                        after[1] - before[1],
                        after[2] - before[2],
                        load_cpu,
                    ],
                ));
                if register {
                    memory = redis_info(port).ok();
                }
            }
        }
        Ok((one, two, memory))
    }

    /// The rows of one set of [`Self::redis_runs`]: one tracker, two trackers and their ratio,
    /// per depth; `label` says how the trackers were run.
    #[allow(clippy::type_complexity)]
    fn redis_rows(
        &mut self,
        one: &[(TrackerLoadReport, [f64; 4])],
        two: &[(TrackerLoadReport, [f64; 4])],
        label: &str,
    ) {
        let o = self.opts;
        for &depth in &o.tracker_in_flight {
            let of = |runs: &[(TrackerLoadReport, [f64; 4])]| -> Vec<(LoadReport, [f64; 4])> {
                runs.iter()
                    .filter_map(|(r, cpu)| {
                        Some((r.loads.iter().find(|l| l.in_flight == depth)?.clone(), *cpu))
                    })
                    .collect()
            };
            let (ones, twos) = (of(one), of(two));
            let ratios: Vec<f64> = ones
                .iter()
                .zip(&twos)
                .filter_map(|((o1, _), (o2, _))| ratio(rate(o2), rate(o1)))
                .collect();
            let connections = o.tracker_connections;
            let ratio_median = median(ratios.iter().copied());
            for (which, loads) in [("one tracker", &ones), ("two trackers", &twos)] {
                let p99 = median(loads.iter().map(|(l, _)| l.p99));
                let errors: u64 = loads.iter().map(|(l, _)| l.errors).sum();
                // Where the CPU went, by process, over these runs' whole child (every depth and
                // the empty-RPC twin included): shares of the total.
                let cpu: [f64; 4] = loads.iter().fold([0.0; 4], |acc, (_, c)| {
                    [acc[0] + c[0], acc[1] + c[1], acc[2] + c[2], acc[3] + c[3]]
                });
                let total: f64 = cpu.iter().sum::<f64>().max(1e-9);
                let per = |s: f64| 100.0 * s / total;
                let is_two = which == "two trackers";
                let runs = crate::report::ratios_note(&ratios);
                self.push(Row {
                    scenario: format!(
                        "tracker-redis: WhoHas, {which}{label}, {connections} connections x {depth} in flight"
                    ),
                    seconds: median(loads.iter().map(|(l, _)| l.seconds)),
                    ratio: if is_two { ratio_median } else { None },
                    ratio_to: if is_two { "one tracker".into() } else { String::new() },
                    target: if is_two { ">= 1.6x one tracker".into() } else { String::new() },
                    pass: is_two.then(|| ratio_median.unwrap_or(0.0) >= 1.6 && errors == 0),
                    notes: format!(
                        "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {errors} errors; CPU {:.1} s in all (whole child runs: every depth, registration and the empty-RPC twin included): redis {:.0}%, tracker A {:.0}%, tracker B {:.0}%, load generator {:.0}%{}",
                        median(loads.iter().map(|(l, _)| rate(l))).unwrap_or(f64::NAN),
                        median(loads.iter().map(|(l, _)| l.p50)).unwrap_or(f64::NAN) * 1e3,
                        p99.unwrap_or(f64::NAN) * 1e3,
                        total,
                        per(cpu[0]),
                        per(cpu[1]),
                        per(cpu[2]),
                        per(cpu[3]),
                        if is_two { format!("; ratio per run: {runs}") } else { String::new() },
                    ),
                    ..Row::default()
                });
            }
        }
    }
}
