//! What users run: holders that are `peer` processes (`--no-shell`, the binary next to this
//! one) and a downloader that is `peer ID 0 TRACKER --exec "get FILE"`, timed from its spawn to
//! its exit, its file durable in `files/` (the final fsync included). Compared with the durable
//! baseline (TCP copy, then fdatasync) of the same run.
//!
//! Also measured: CPU time (user + system) of the downloader and of the holders during the
//! download, per GiB, from `/proc` (the holders' `stat`, and this process's `cutime`/`cstime`,
//! which grow by the downloader's time when it is reaped); the final fsync the `get` line
//! reports.

use super::crowd::{error_lines, peer_binary, DownloaderProcess, Downloaders};
use super::Runner;
use crate::baseline::tcp_copy;
use crate::child::wait_bounded;
use crate::crowd::parse_get_line;
use crate::error::BenchError;
use crate::memory::{cpu_seconds, waited_children_cpu_seconds};
use crate::report::{median, ratio, shares_note, Row};
use crate::swarm::{start_tracker, stop_tracker, DataFile};
use p2pshare::chunking::ContentId;
use p2pshare::human;
use p2pshare::pb::tracker as tpb;
use p2pshare::pb::tracker::tracker_client::TrackerClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long holders may take to start and register.
const HOLDERS_READY: Duration = Duration::from_secs(30);
/// How long a holder may take to leave after SIGTERM before it is killed.
const HOLDER_STOP: Duration = Duration::from_secs(10);

/// One downloader run.
struct GetRun {
    seconds: f64,
    /// The durable baseline (TCP copy, then fdatasync) of the same file, run just before it:
    /// the machine is shared, and a ratio to a neighbour in time drifts less than one to a
    /// median taken minutes apart.
    paired_baseline: Option<f64>,
    /// The final fsync, from the `get` line.
    sync_ms: Option<f64>,
    /// CPU seconds of the downloader, and of all holders during the run.
    cpu_downloader: f64,
    cpu_holders: f64,
    holders: Vec<(String, u64)>,
    peak_rss: Option<u64>,
}

/// Holder processes; any still running when this is dropped are killed (by their own handle).
struct Holders(Vec<(String, Child)>);

impl Drop for Holders {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Holders {
    /// CPU seconds (user + system) the holders have used so far.
    fn cpu(&self) -> f64 {
        self.0.iter().map(|(_, c)| cpu_seconds(c.id())).sum()
    }

    /// SIGTERM (they leave the tracker), then a bounded wait, then kill.
    fn stop(mut self) {
        for (_, child) in &self.0 {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for (_, child) in &mut self.0 {
            let _ = wait_bounded(child, HOLDER_STOP);
        }
        self.0.clear();
    }
}

/// The final fsync in a `get` line (`..., final fsync 12.3 ms`), in milliseconds.
fn parse_sync_ms(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("got "))?;
    let rest = &line[line.rfind("final fsync ")? + "final fsync ".len()..];
    rest.strip_suffix(" ms")?.parse().ok()
}

impl Runner<'_> {
    /// `holders` holder processes, `--runs` downloads by `peer --exec "get FILE"`; the row's
    /// ratio is to the durable baseline, `minimum` its target.
    pub(super) fn user_get(
        &mut self,
        holders: usize,
        minimum: Option<f64>,
    ) -> Result<(), BenchError> {
        let peer_exe = peer_binary(&self.swarm.exe)?;
        let (name, data) = self.big_file()?;
        self.say(&format!(
            "get: {holders} holder process(es), {} runs of `peer --exec \"get {name}\"` ({}) into files/, durable",
            self.opts.runs,
            human::bytes(data.size)
        ));
        let tracker = self
            .swarm
            .runtime
            .block_on(start_tracker(Duration::from_secs(10)))?;
        let result =
            self.user_get_runs(&peer_exe, &name, &data, holders, &tracker.addr.to_string());
        self.swarm.runtime.block_on(stop_tracker(tracker));
        let runs = result?;
        self.push(get_row(
            holders,
            data.size,
            &runs,
            self.durable_baseline,
            minimum,
        ));
        Ok(())
    }

    fn user_get_runs(
        &mut self,
        peer_exe: &Path,
        name: &str,
        data: &DataFile,
        count: usize,
        tracker: &str,
    ) -> Result<Vec<GetRun>, BenchError> {
        let dir = self.swarm.root.join("user-get");
        std::fs::create_dir_all(&dir)?;
        let mut holders = Holders(Vec::new());
        for _ in 0..count {
            let (id, folder) = self
                .swarm
                .holder_folder(&format!("P{count}"), &[name.to_string()])?;
            let root = folder.parent().unwrap_or(&folder).to_path_buf();
            let child = Command::new(peer_exe)
                .args([
                    id.as_str(),
                    "0",
                    tracker,
                    "--no-shell",
                    "--bind",
                    "127.0.0.1",
                ])
                .arg("--root")
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("{id}.err")))?)
                .spawn()?;
            holders.0.push((id, child));
        }
        let ids: Vec<String> = holders.0.iter().map(|(id, _)| id.clone()).collect();
        self.swarm
            .runtime
            .block_on(wait_listed(tracker, name, &ids, &mut holders))?;
        let mut runs = Vec::new();
        for run in 0..self.opts.runs {
            let id = self.swarm.fresh_id(&format!("G{count}"));
            let source = self.swarm.data_path(name);
            let dest = self.swarm.root.join("paired-baseline.out");
            let paired = tcp_copy(&self.swarm.exe, &source, &dest, data.size, true)
                .ok()
                .map(|t| t.total.as_secs_f64());
            let outcome = self
                .one_get(peer_exe, name, data, tracker, &dir, &id, &holders)
                .map(|got| GetRun {
                    paired_baseline: paired,
                    ..got
                });
            let _ = std::fs::remove_dir_all(dir.join(&id));
            let got = outcome?;
            self.say(&format!(
                "    run {}: {:.3} s, final fsync {} ms, CPU {:.2} s downloader + {:.2} s holders",
                run + 1,
                got.seconds,
                got.sync_ms.map_or("?".into(), |s| format!("{s:.1}")),
                got.cpu_downloader,
                got.cpu_holders
            ));
            runs.push(got);
        }
        holders.stop();
        for id in &ids {
            let _ = std::fs::remove_dir_all(self.swarm.root.join("peers").join(id));
        }
        Ok(runs)
    }

    #[allow(clippy::too_many_arguments)]
    fn one_get(
        &self,
        peer_exe: &Path,
        name: &str,
        data: &DataFile,
        tracker: &str,
        dir: &Path,
        id: &str,
        holders: &Holders,
    ) -> Result<GetRun, BenchError> {
        let (out_path, err_path) = (dir.join(format!("{id}.out")), dir.join(format!("{id}.err")));
        let children_before = waited_children_cpu_seconds();
        let holders_before = holders.cpu();
        let started = Instant::now();
        let child = Command::new(peer_exe)
            .args([id, "0", tracker, "--bind", "127.0.0.1", "--exec"])
            .arg(format!("get {name}"))
            .arg("--root")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .spawn()?;
        let mut downloader = Downloaders(vec![DownloaderProcess {
            id: id.to_string(),
            child,
            exit: None,
            peak_rss: None,
        }]);
        let limit = super::limit_for(data.size * 2);
        let seconds = downloader.wait_all(started, limit)?;
        let cpu_holders = holders.cpu() - holders_before;
        let cpu_downloader = waited_children_cpu_seconds() - children_before;
        let process = &downloader.0[0];
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        match process.exit {
            None => {
                return Err(BenchError::Child(format!(
                    "get still running after {limit:?}"
                )))
            }
            Some((_, status)) if !status.success() => {
                return Err(BenchError::Child(format!(
                    "get: {status}: {}",
                    error_lines(&out, &err)
                )))
            }
            Some(_) => {}
        }
        // Off the clock: the copy in files/ is the file.
        let copy: PathBuf = dir.join(id).join("files").join(name);
        if !self.opts.no_check {
            match ContentId::of_file(&copy) {
                Ok(got) if got == data.content_id => {}
                Ok(got) => {
                    return Err(BenchError::Child(format!(
                        "the copy hashes to {}, not {}",
                        got.short(),
                        data.content_id.short()
                    )))
                }
                Err(e) => {
                    return Err(BenchError::Child(format!(
                        "no copy at {}: {e}",
                        copy.display()
                    )))
                }
            }
        }
        Ok(GetRun {
            seconds,
            paired_baseline: None,
            sync_ms: parse_sync_ms(&out),
            cpu_downloader,
            cpu_holders,
            holders: parse_get_line(&out).unwrap_or_default(),
            peak_rss: process.peak_rss,
        })
    }
}

/// Polls the tracker until it lists every one of `ids` as a holder of `name`; fails if a holder
/// exits or the wait passes [`HOLDERS_READY`].
async fn wait_listed(
    tracker: &str,
    name: &str,
    ids: &[String],
    holders: &mut Holders,
) -> Result<(), BenchError> {
    let channel = p2pshare::grpc::channel(tracker).map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut client = TrackerClient::new(channel);
    let deadline = Instant::now() + HOLDERS_READY;
    loop {
        let request = tpb::WhoHasRequest {
            name: name.to_string(),
            max_holders: ids.len() as u32 + 8,
            ..Default::default()
        };
        if let Ok(Ok(answer)) =
            tokio::time::timeout(Duration::from_secs(2), client.who_has(request)).await
        {
            let listed: Vec<String> = answer
                .into_inner()
                .versions
                .iter()
                .flat_map(|v| v.holders.iter().map(|h| h.peer_id.clone()))
                .collect();
            if ids.iter().all(|id| listed.contains(id)) {
                return Ok(());
            }
        }
        for (id, child) in &mut holders.0 {
            if let Some(status) = child.try_wait()? {
                return Err(BenchError::Setup(format!("holder {id} exited: {status}")));
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "the holders were not all listed within {HOLDERS_READY:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The row of `holders` holder processes over `runs`.
fn get_row(
    holders: usize,
    size: u64,
    runs: &[GetRun],
    durable_baseline: Option<f64>,
    minimum: Option<f64>,
) -> Row {
    let seconds = median(runs.iter().map(|r| r.seconds));
    let rate = seconds.filter(|s| *s > 0.0).map(|s| size as f64 / s);
    // The ratio: the median of each run's ratio to the durable baseline run just before it
    // (else to the baseline scenario's median).
    let paired: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.paired_baseline.map(|b| b / r.seconds))
        .collect();
    let r = if paired.len() == runs.len() && !runs.is_empty() {
        median(paired.iter().copied())
    } else {
        rate.zip(durable_baseline).and_then(|(v, b)| ratio(v, b))
    };
    let gib = size as f64 / (1u64 << 30) as f64;
    let cpu: Vec<f64> = runs
        .iter()
        .map(|r| (r.cpu_downloader + r.cpu_holders) / gib)
        .collect();
    let fmt = |values: Vec<String>| values.join(" / ");
    let mut notes = vec![
        format!(
            "runs: {} s",
            fmt(runs.iter().map(|r| format!("{:.3}", r.seconds)).collect())
        ),
        format!(
            "each against a durable baseline run just before it: {} s, ratios {}",
            fmt(runs
                .iter()
                .map(|r| r.paired_baseline.map_or("?".into(), |b| format!("{b:.3}")))
                .collect()),
            fmt(paired.iter().map(|p| format!("{p:.2}x")).collect())
        ),
        format!(
            "final fsync {} ms",
            fmt(runs
                .iter()
                .map(|r| r.sync_ms.map_or("?".into(), |s| format!("{s:.1}")))
                .collect())
        ),
        format!(
            "CPU (user+sys, downloader + holders) {} s/GiB, median {:.2} (downloader {:.2}, holders {:.2})",
            fmt(cpu.iter().map(|c| format!("{c:.2}")).collect()),
            median(cpu.iter().copied()).unwrap_or(f64::NAN),
            median(runs.iter().map(|r| r.cpu_downloader / gib)).unwrap_or(f64::NAN),
            median(runs.iter().map(|r| r.cpu_holders / gib)).unwrap_or(f64::NAN),
        ),
    ];
    notes.extend(runs.last().and_then(|last| shares_note(&last.holders)));
    Row {
        scenario: format!(
            "get: {holders} holder process(es) -> `peer --exec get`, durable into files/ (process start to exit)"
        ),
        bytes: Some(size),
        seconds,
        mb_per_s: rate.map(|r| r / 1e6),
        peak_rss: runs.iter().filter_map(|r| r.peak_rss).max(),
        ratio: r,
        ratio_to: "durable baseline".into(),
        target: minimum.map_or(String::new(), |m| format!(">= {m:.2}x")),
        pass: minimum.map(|m| r.is_some_and(|r| r >= m) && !runs.is_empty()),
        notes: notes.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_fsync_is_read_from_the_get_line() {
        let out = "got big.bin (1.0 GiB, id 0123abcd) from 1 holder(s) [A 1.0 GiB] in 2.1 s, 500.0 MB/s, final fsync 12.5 ms\n";
        assert_eq!(parse_sync_ms(out), Some(12.5));
        assert_eq!(
            parse_sync_ms("got x (1 B, id 1) from 1 holder(s) [A 1 B] in 1 s, 1.0 MB/s\n"),
            None
        );
    }
}
