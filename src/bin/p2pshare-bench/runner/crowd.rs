//! The flash crowd: one seeder capped at R (a child process of this binary running a `PeerNode`,
//! [`Plan::Seed`], which reports its own `bytes_uploaded()`), then N downloaders started together,
//! each the real `peer` binary next to this one running `--exec "get FILE"`, on a tracker of
//! their own. Measured: the time from starting the downloaders until the last one exits; checked:
//! every one exits 0 with a copy that hashes to the content id. Figures and targets are in
//! [`crate::crowd`].

use super::Runner;
use crate::child::{ChildPeer, Plan, SeederProcess};
use crate::crowd::{crowd_row, parse_get_line, traffic, CrowdRun, DownloaderOutcome};
use crate::error::BenchError;
use crate::memory::peak_rss_of;
use crate::swarm::{start_tracker, stop_tracker, DataFile};
use p2pshare::chunking::ContentId;
use p2pshare::human;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Name of the crowd's file.
const CROWD_FILE: &str = "crowd.bin";
/// How long the seeder may take to start and register.
const SEEDER_READY: Duration = Duration::from_secs(30);
/// How long the seeder may take to stop and report.
const SEEDER_STOP: Duration = Duration::from_secs(15);
/// How often the downloaders are polled for their exit.
const POLL: Duration = Duration::from_millis(5);
/// How often their peak RSS is sampled.
const RSS_SAMPLE: Duration = Duration::from_millis(200);

/// The `peer` binary next to this executable (`target/<profile>/peer`), or why not.
pub(crate) fn peer_binary(bench_exe: &Path) -> Result<PathBuf, BenchError> {
    let dir = bench_exe
        .parent()
        .ok_or_else(|| BenchError::Setup("the bench executable has no directory".into()))?;
    let peer = dir.join(format!("peer{}", std::env::consts::EXE_SUFFIX));
    if !peer.is_file() {
        return Err(BenchError::Setup(format!(
            "flash-crowd runs the real peer binary, and there is none at {}: build it beside the \
             bench (cargo build --release --bin peer --bin p2pshare-bench)",
            peer.display()
        )));
    }
    Ok(peer)
}

/// One downloader process.
pub(super) struct DownloaderProcess {
    /// Its peer id.
    pub(super) id: String,
    pub(super) child: Child,
    /// Seconds from the start of the crowd to its exit, and its status, once it has exited.
    pub(super) exit: Option<(f64, std::process::ExitStatus)>,
    /// Largest peak RSS sampled while it ran.
    pub(super) peak_rss: Option<u64>,
}

/// The downloader processes of one run; any still running when this is dropped are killed (by
/// their own handle).
pub(super) struct Downloaders(pub(super) Vec<DownloaderProcess>);

impl Drop for Downloaders {
    fn drop(&mut self) {
        for d in &mut self.0 {
            if d.exit.is_none() {
                let _ = d.child.kill();
                let _ = d.child.wait();
            }
        }
    }
}

/// What one run of the crowd needs.
struct Round<'a> {
    /// Downloaders.
    n: u32,
    /// The seeder's upload cap, bytes per second.
    rate: u64,
    seeder_id: &'a str,
    seeder_dir: &'a Path,
    /// The run's tracker, `host:port`.
    tracker: String,
    /// Folder of the downloaders' folders and outputs.
    dir: PathBuf,
    /// Downloaders still running after this are killed.
    limit: Duration,
}

impl Downloaders {
    /// Polls until every process has exited or `limit` has passed since `started` (then kills
    /// the rest). Returns the seconds from `started` to the last exit (or to the kill).
    pub(super) fn wait_all(
        &mut self,
        started: Instant,
        limit: Duration,
    ) -> Result<f64, BenchError> {
        let deadline = started + limit;
        let mut next_sample = Instant::now();
        loop {
            let now = Instant::now();
            let sample = now >= next_sample;
            if sample {
                next_sample = now + RSS_SAMPLE;
            }
            let mut running = 0;
            for d in self.0.iter_mut().filter(|d| d.exit.is_none()) {
                if sample {
                    if let Some(peak) = peak_rss_of(d.child.id()) {
                        d.peak_rss = Some(d.peak_rss.map_or(peak, |p| p.max(peak)));
                    }
                }
                match d.child.try_wait()? {
                    Some(status) => d.exit = Some((started.elapsed().as_secs_f64(), status)),
                    None => running += 1,
                }
            }
            if running == 0 {
                let last = self
                    .0
                    .iter()
                    .filter_map(|d| d.exit.map(|(s, _)| s))
                    .fold(0.0, f64::max);
                return Ok(last);
            }
            if Instant::now() > deadline {
                let killed_at = started.elapsed().as_secs_f64();
                for d in self.0.iter_mut().filter(|d| d.exit.is_none()) {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                }
                return Ok(killed_at);
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The `error: ...` lines a failed peer printed (its shell's and its top level's), shortened.
pub(super) fn error_lines(out: &str, err: &str) -> String {
    let lines: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.starts_with("error:") || l.contains(" ERROR "))
        .take(2)
        .collect();
    lines.join(" / ").chars().take(300).collect()
}

impl Runner<'_> {
    pub(super) fn flash_crowd(&mut self) -> Result<(), BenchError> {
        let peer_exe = peer_binary(&self.swarm.exe)?;
        let size = self.opts.crowd_size;
        let rate = self.opts.crowd_rate;
        let name = CROWD_FILE.to_string();
        self.say(&format!(
            "flash-crowd: writing and hashing a {} file; seeder at {}/s; downloaders: {}",
            human::bytes(size),
            human::bytes(rate),
            peer_exe.display()
        ));
        self.swarm.ensure_data(&[(name.clone(), size)])?;
        let data = self.swarm.data[&name].clone();
        let opts = self.opts;
        for &n in &opts.crowd_downloaders {
            let mut runs = Vec::new();
            let mut seeder_id = String::new();
            for run in 0..opts.crowd_runs {
                self.say(&format!(
                    "flash-crowd: {n} downloader(s) at once, run {}/{} (seeder alone would take {:.1} s)",
                    run + 1,
                    opts.crowd_runs,
                    n as f64 * size as f64 / rate as f64
                ));
                let (id, result) = self.crowd_run(&peer_exe, &name, &data, n, rate);
                seeder_id = id;
                match result {
                    Ok(r) => runs.push(r),
                    Err(e) => runs.push(CrowdRun {
                        error: Some(e.to_string()),
                        seconds: f64::NAN,
                        ..CrowdRun::default()
                    }),
                }
            }
            self.push(crowd_row(n, size, rate, &seeder_id, &runs));
        }
        Ok(())
    }

    /// One run: a tracker and a seeder of their own, `n` downloaders, their outcomes. Returns the
    /// seeder's id with the run.
    fn crowd_run(
        &mut self,
        peer_exe: &Path,
        name: &str,
        data: &DataFile,
        n: u32,
        rate: u64,
    ) -> (String, Result<CrowdRun, BenchError>) {
        let (seeder_id, seeder_dir) = match self.swarm.holder_folder("S", &[name.to_string()]) {
            Ok(folder) => folder,
            Err(e) => return (String::new(), Err(e)),
        };
        let tracker = match self
            .swarm
            .runtime
            .block_on(start_tracker(Duration::from_secs(10)))
        {
            Ok(t) => t,
            Err(e) => return (seeder_id, Err(e)),
        };
        // Generous bound: three times what the seeder alone would take, plus a minute.
        let limit = Duration::from_secs_f64(60.0 + 3.0 * n as f64 * data.size as f64 / rate as f64);
        let round = Round {
            n,
            rate,
            seeder_id: &seeder_id,
            seeder_dir: &seeder_dir,
            tracker: tracker.addr.to_string(),
            dir: self
                .swarm
                .root
                .join("crowd")
                .join(self.swarm.fresh_id(&format!("n{n}"))),
            limit,
        };
        let result = self.crowd_round(peer_exe, name, data, &round);
        self.swarm.runtime.block_on(stop_tracker(tracker));
        let _ = std::fs::remove_dir_all(&seeder_dir);
        (seeder_id, result)
    }

    fn crowd_round(
        &mut self,
        peer_exe: &Path,
        name: &str,
        data: &DataFile,
        round: &Round<'_>,
    ) -> Result<CrowdRun, BenchError> {
        let Round {
            n,
            rate,
            seeder_id,
            seeder_dir,
            ref tracker,
            dir: ref round,
            limit,
        } = *round;
        std::fs::create_dir_all(round)?;
        let seeder = SeederProcess::start(
            &self.swarm.exe,
            &Plan::Seed {
                peer: ChildPeer {
                    id: seeder_id.to_string(),
                    dir: seeder_dir.to_path_buf(),
                    tracker: tracker.to_string(),
                },
                upload_rate: rate,
                max_seconds: limit.as_secs() + 120,
            },
            SEEDER_READY,
        )?;
        let ids: Vec<String> = (0..n).map(|_| self.swarm.fresh_id("C")).collect();
        let command = format!("get {name}");
        let mut crowd = Downloaders(Vec::with_capacity(ids.len()));
        let started = Instant::now();
        for id in &ids {
            let child = Command::new(peer_exe)
                .arg(id)
                .arg("0")
                .arg(tracker)
                .arg("--root")
                .arg(round)
                .arg("--exec")
                .arg(&command)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(round.join(format!("{id}.out")))?)
                .stderr(std::fs::File::create(round.join(format!("{id}.err")))?)
                .spawn()?;
            crowd.0.push(DownloaderProcess {
                id: id.clone(),
                child,
                exit: None,
                peak_rss: None,
            });
        }
        let spawned = started.elapsed();
        let seconds = crowd.wait_all(started, limit)?;
        let seeder_report = seeder.stop(SEEDER_STOP);

        // Off the clock: every copy checked, every output read.
        let mut downloaders = Vec::new();
        for DownloaderProcess {
            id, exit, peak_rss, ..
        } in &crowd.0
        {
            let out = std::fs::read_to_string(round.join(format!("{id}.out"))).unwrap_or_default();
            let err = std::fs::read_to_string(round.join(format!("{id}.err"))).unwrap_or_default();
            let copy = round.join(id).join("files").join(name);
            let failure = match exit {
                None => Some(format!("still running after {limit:?}; killed")),
                Some((_, status)) if !status.success() => {
                    Some(format!("{status}: {}", error_lines(&out, &err)))
                }
                Some(_) => match ContentId::of_file(&copy) {
                    Ok(id) if id == data.content_id => None,
                    Ok(id) => Some(format!(
                        "copy hashes to {}, not {}",
                        id.short(),
                        data.content_id.short()
                    )),
                    Err(e) => Some(format!("no copy at {}: {e}", copy.display())),
                },
            };
            let _ = std::fs::remove_dir_all(round.join(id));
            downloaders.push(DownloaderOutcome {
                id: id.clone(),
                exit_seconds: exit.map(|(s, _)| s),
                failure,
                received: parse_get_line(&out).unwrap_or_default(),
                peak_rss: *peak_rss,
            });
        }
        let run = CrowdRun {
            seconds,
            seeder_bytes: seeder_report.as_ref().ok().map(|r| r.bytes_uploaded),
            downloaders,
            error: seeder_report.as_ref().err().map(|e| e.to_string()),
        };
        self.say_crowd_detail(&run, seeder_id, data.size, spawned);
        Ok(run)
    }

    /// Who delivered what to whom, one line per downloader: the data behind a missed target.
    fn say_crowd_detail(&mut self, run: &CrowdRun, seeder_id: &str, size: u64, spawned: Duration) {
        let t = traffic(run, seeder_id);
        let copies = |b: u64| b as f64 / size.max(1) as f64;
        self.say(&format!(
            "    {} downloaders spawned in {:.1} ms; last exit {:.2} s; seeder sent {} (bytes_uploaded); downloaders' reports: {:.2} copies from the seeder, {:.2} from peers",
            run.downloaders.len(),
            spawned.as_secs_f64() * 1e3,
            run.seconds,
            run.seeder_bytes
                .map_or("?".into(), |b| format!("{:.2} copies", copies(b))),
            copies(t.from_seeder),
            copies(t.from_peers),
        ));
        let mut order: Vec<&DownloaderOutcome> = run.downloaders.iter().collect();
        order.sort_by(|a, b| {
            a.exit_seconds
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.exit_seconds.unwrap_or(f64::INFINITY))
        });
        for d in order {
            let from_seeder: u64 = d
                .received
                .iter()
                .filter(|(h, _)| h == seeder_id)
                .map(|(_, b)| b)
                .sum();
            let from_peers: u64 = d
                .received
                .iter()
                .filter(|(h, _)| h != seeder_id)
                .map(|(_, b)| b)
                .sum();
            self.say(&format!(
                "    {}: exit {}; got {} from the seeder, {} from {} peer(s); gave others {}{}",
                d.id,
                d.exit_seconds
                    .map_or("-".into(), |s| format!("at {s:.2} s")),
                human::bytes(from_seeder),
                human::bytes(from_peers),
                d.received.iter().filter(|(h, _)| h != seeder_id).count(),
                human::bytes(t.by_holder.get(&d.id).copied().unwrap_or(0)),
                d.failure
                    .as_ref()
                    .map_or(String::new(), |f| format!("; FAILED: {f}")),
            ));
        }
    }
}
