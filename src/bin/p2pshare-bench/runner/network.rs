//! The `network` scenario: p2pshare between hosts (network namespaces on a bridge, see
//! `network.rs`), the real `tracker` and `peer` binaries, `get` timed as users run it. Each
//! download row is set against plain TCP on the same path in the same run (the same caps, the
//! same delay line, senders on the same holder hosts, parts in proportion to the caps); the
//! cut-cable rows against the ideal (what the download would take had the cut holder never been
//! there from the moment it was cut).
//!
//! Hosts: `tracker`, `h1`..`h4` (holders), `d` (downloaders, a new peer id per run). Files live
//! on a tmpfs when there is one (`/dev/shm`), so the disk's speed is no part of a network figure.
//! The tracker's heartbeat is [`HEARTBEAT_SECS`], so a pulled cable shows at the tracker within
//! seconds; every peer runs with default options.

use super::Runner;
use crate::error::BenchError;
use crate::files::write_random;
use crate::network::delay_line::DelayLine;
use crate::network::net::{self, Direction, Net};
use crate::network::swarm::{self, Binaries, PeerSpec};
use crate::network::{
    binaries, plain_tcp, split_file, tcp_limits, timed_get, Cut, GetPlan, Timeline,
};
use crate::report::{median, ratio, Row};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The tracker's heartbeat interval in this scenario.
const HEARTBEAT_SECS: u32 = 2;
/// Bound on peers (re)appearing at, or dropping out of, the tracker.
const LISTING_TIMEOUT: Duration = Duration::from_secs(30);
/// The holders' hosts.
const HOLDERS: [&str; 4] = ["h1", "h2", "h3", "h4"];
/// Where downloads land.
const DOWNLOADER: &str = "d";
const MBIT: u64 = 1_000_000;

/// One download measurement: which file from which holders, through what links.
#[derive(Clone)]
struct Case {
    label: String,
    file: &'static str,
    /// Each holder and its upload cap (bits per second), if any.
    holders: Vec<(&'static str, Option<u64>)>,
    /// The downloader's own link cap (bits per second), if any.
    down_cap: Option<u64>,
    /// Delay added to the path to the (first) holder.
    delay: Option<Duration>,
    /// The least acceptable ratio, and to what: plain TCP (`None`) or the sum of the caps.
    minimum: f64,
    of_caps: bool,
}

/// The scenario's world: the network, its tracker, where things are.
struct World {
    net: Net,
    bin: Binaries,
    tracker: SocketAddr,
    work: PathBuf,
    runs: u32,
    /// Sizes of the files by name.
    sizes: Vec<(&'static str, u64)>,
    /// Downloads so far (each downloader gets a new id).
    next_id: u32,
}

impl World {
    fn root(&self) -> PathBuf {
        self.work.join("peers")
    }

    fn logs(&self) -> PathBuf {
        self.work.join("logs")
    }

    fn size(&self, file: &str) -> u64 {
        self.sizes
            .iter()
            .find(|(n, _)| *n == file)
            .map_or(0, |(_, s)| *s)
    }

    /// Sets every holder's and the downloader's caps as `case` says (no cap elsewhere).
    fn apply_caps(&self, case: &Case) -> Result<(), BenchError> {
        for host in HOLDERS {
            match case
                .holders
                .iter()
                .find(|(h, _)| *h == host)
                .and_then(|(_, c)| *c)
            {
                Some(bits) => self.net.cap(host, Direction::Up, bits)?,
                None => self.net.uncap(host, Direction::Up),
            }
        }
        match case.down_cap {
            Some(bits) => self.net.cap(DOWNLOADER, Direction::Down, bits)?,
            None => self.net.uncap(DOWNLOADER, Direction::Down),
        }
        Ok(())
    }

    /// One `get` of `file` by a new downloader; its copy is removed afterwards.
    fn get(&mut self, file: &'static str, cut: Option<&Cut>) -> Result<Timeline, BenchError> {
        self.get_probing(file, cut, None)
    }

    /// [`World::get`], taking `probe`'s TCP state near the end.
    fn get_probing(
        &mut self,
        file: &'static str,
        cut: Option<&Cut>,
        probe: Option<&str>,
    ) -> Result<Timeline, BenchError> {
        self.next_id += 1;
        let id = format!("d{}", self.next_id);
        let (root, logs) = (self.root(), self.logs());
        let plan = GetPlan {
            peer: PeerSpec {
                host: DOWNLOADER,
                id: &id,
                root: &root,
                tracker: self.tracker,
                logs: &logs,
            },
            file,
            size: self.size(file),
            probe,
        };
        let timeline = timed_get(&mut self.net, &self.bin, &plan, cut);
        let _ = std::fs::remove_dir_all(root.join(&id));
        timeline
    }

    /// Waits until every holder is listed with its whole catalog (after a cable is back).
    fn holders_listed(&self) -> Result<Duration, BenchError> {
        let started = Instant::now();
        let wanted: Vec<(&str, u32)> = HOLDERS
            .iter()
            .map(|h| (*h, catalog(h).len() as u32))
            .collect();
        swarm::wait_for_catalogs(&self.net, "tracker", self.tracker, &wanted, LISTING_TIMEOUT)?;
        Ok(started.elapsed())
    }
}

/// The files each holder shares: `u*` are the large file, `c*` the capped-size one; the digit is
/// how many holders share it.
fn catalog(holder: &str) -> Vec<&'static str> {
    match holder {
        "h1" => vec!["u1.bin", "u3.bin", "c1.bin", "c2.bin", "c3.bin", "c4.bin"],
        "h2" => vec!["u3.bin", "c3.bin", "c4.bin"],
        "h3" => vec!["u3.bin", "c2.bin", "c3.bin", "c4.bin"],
        _ => vec!["c4.bin"],
    }
}

/// `seconds` as `1.234`, runs joined.
fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

impl Runner<'_> {
    pub(super) fn network(&mut self) -> Result<(), BenchError> {
        if let Err(why) = net::available() {
            self.push(Row {
                scenario: "network".into(),
                notes: format!("skipped: needs {why}"),
                ..Row::default()
            });
            return Ok(());
        }
        let bin = binaries(&self.swarm.exe)?;
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            self.swarm.root.as_path()
        };
        let work = tempfile::Builder::new()
            .prefix("p2pshare-net.")
            .tempdir_in(base)?;
        std::fs::create_dir_all(work.path().join("logs"))?;
        std::fs::create_dir_all(work.path().join("scratch"))?;
        self.say(&format!(
            "network: 6 hosts in namespaces on a bridge (10.77.0.0/24), files in {}",
            work.path().display()
        ));
        let mut net = Net::new(&["tracker", "h1", "h2", "h3", "h4", DOWNLOADER])?;
        let logs = work.path().join("logs");
        let tracker = swarm::start_tracker(&mut net, "tracker", &bin, HEARTBEAT_SECS, &logs)?;
        let (big, small) = (self.opts.size, self.opts.net_capped_size);
        let mut world = World {
            net,
            bin,
            tracker,
            work: work.path().to_path_buf(),
            runs: self.opts.runs,
            sizes: vec![
                ("u1.bin", big),
                ("u3.bin", big),
                ("c1.bin", small),
                ("c2.bin", small),
                ("c3.bin", small),
                ("c4.bin", small),
            ],
            next_id: 0,
        };
        write_random(&world.work.join("big.src"), big)?;
        write_random(&world.work.join("small.src"), small)?;
        for holder in HOLDERS {
            for file in catalog(holder) {
                let source = if file.starts_with('u') {
                    "big.src"
                } else {
                    "small.src"
                };
                swarm::seed(&world.root(), &[holder], file, &world.work.join(source))?;
            }
            let (root, logs) = (world.root(), world.logs());
            let spec = PeerSpec {
                host: holder,
                id: holder,
                root: &root,
                tracker,
                logs: &logs,
            };
            swarm::start_peer(&mut world.net, &world.bin, &spec, &[])?;
        }
        world.holders_listed()?;

        let cap = |bits| Some(bits * MBIT);
        let mut cases = vec![Case {
            label: "1 holder, no cap".into(),
            file: "u1.bin",
            holders: vec![("h1", None)],
            down_cap: None,
            delay: None,
            minimum: 0.9,
            of_caps: false,
        }];
        for ms in &self.opts.net_delays {
            cases.push(Case {
                label: format!("1 holder, no cap, RTT +{ms} ms"),
                delay: Some(Duration::from_millis(u64::from(*ms))),
                ..cases[0].clone()
            });
        }
        let last_delay = self.opts.net_delays.iter().max().copied().unwrap_or(20);
        cases.push(Case {
            label: format!("1 holder, 100 Mbit/s, RTT +{last_delay} ms"),
            file: "c1.bin",
            holders: vec![("h1", cap(100))],
            down_cap: None,
            delay: Some(Duration::from_millis(u64::from(last_delay))),
            minimum: 0.95,
            of_caps: false,
        });
        cases.push(Case {
            label: "2 holders, 100 Mbit/s each".into(),
            file: "c2.bin",
            holders: vec![("h1", cap(100)), ("h3", cap(100))],
            down_cap: None,
            delay: None,
            minimum: 0.9,
            of_caps: true,
        });
        cases.push(Case {
            label: "3 holders, 100 Mbit/s each".into(),
            file: "c3.bin",
            holders: vec![("h1", cap(100)), ("h2", cap(100)), ("h3", cap(100))],
            down_cap: None,
            delay: None,
            minimum: 0.9,
            of_caps: true,
        });
        cases.push(Case {
            label: "4 holders, 50/100/200/400 Mbit/s".into(),
            file: "c4.bin",
            holders: vec![
                ("h1", cap(50)),
                ("h2", cap(100)),
                ("h3", cap(200)),
                ("h4", cap(400)),
            ],
            down_cap: None,
            delay: None,
            minimum: 0.9,
            of_caps: true,
        });
        cases.push(Case {
            label: "3 holders, no cap; downloader's link 200 Mbit/s".into(),
            file: "c3.bin",
            holders: vec![("h1", None), ("h2", None), ("h3", None)],
            down_cap: cap(200),
            delay: None,
            minimum: 0.95,
            of_caps: false,
        });
        let mut medians = Vec::new();
        for case in &cases {
            let seconds = self.network_case(&mut world, case)?;
            medians.push((case.label.clone(), seconds));
        }
        let of = |label: &str| {
            medians
                .iter()
                .find(|(l, _)| l == label)
                .and_then(|(_, s)| *s)
        };
        let (t2, t3) = (
            of("2 holders, 100 Mbit/s each"),
            of("3 holders, 100 Mbit/s each"),
        );
        self.network_cuts(&mut world, t2, t3)?;
        world.net.set_link("tracker", true)?;
        Ok(())
    }

    /// Runs `case`: downloads and plain TCP copies, alternately; pushes its row and returns the
    /// median download time.
    fn network_case(&mut self, world: &mut World, case: &Case) -> Result<Option<f64>, BenchError> {
        self.say(&format!("network: {}", case.label));
        world.apply_caps(case)?;
        let _line = match case.delay {
            Some(delay) => Some(DelayLine::start(
                &world.net,
                DOWNLOADER,
                case.holders[0].0,
                delay,
            )?),
            None => None,
        };
        // Plain TCP: parts in proportion to the caps (equal when uncapped), one per holder.
        let weights: Vec<u64> = case.holders.iter().map(|(_, c)| c.unwrap_or(1)).collect();
        let source = world.work.join(if case.file.starts_with('u') {
            "big.src"
        } else {
            "small.src"
        });
        let scratch = world.work.join("scratch");
        let parts = split_file(&source, &weights, &scratch)?;
        let senders: Vec<(String, PathBuf, u64)> = case
            .holders
            .iter()
            .zip(parts)
            .map(|((h, _), (p, len))| (h.to_string(), p, len))
            .collect();
        let size = world.size(case.file);
        let (mut gets, mut tcps, mut failures) = (Vec::new(), Vec::new(), Vec::new());
        // With a delay, the holder's TCP state near the end says where the time goes.
        let probe = case.delay.map(|_| case.holders[0].0);
        let downloader = format!("{}:", world.net.host(DOWNLOADER).addr);
        let mut limits = None;
        for _ in 0..world.runs {
            match world.get_probing(case.file, None, probe) {
                Ok(t) => {
                    if let Some(ss) = &t.holder_tcp {
                        limits = tcp_limits(ss, &downloader).or(limits);
                    }
                    match t.get_seconds {
                        Some(s) => gets.push(s),
                        None => failures.push(format!("no `got` line: {}", t.run.stdout.trim())),
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
            match plain_tcp(&world.net, &self.swarm.exe, DOWNLOADER, &senders, &scratch) {
                Ok(d) => tcps.push(d.as_secs_f64()),
                Err(e) => failures.push(format!("plain TCP: {e}")),
            }
        }
        for (part, _, _) in &senders {
            let _ = std::fs::remove_file(part);
        }
        let seconds = median(gets.iter().copied());
        let rate = seconds.map(|s| size as f64 / s);
        let tcp_rate = median(tcps.iter().copied()).map(|s| size as f64 / s);
        let r = rate.zip(tcp_rate).and_then(|(v, t)| ratio(v, t));
        let caps: Option<u64> = case.holders.iter().map(|(_, c)| *c).sum::<Option<u64>>();
        let caps = caps.map(|c| case.down_cap.map_or(c, |d| d.min(c)));
        let caps = caps.or(case.down_cap);
        let of_caps = rate.zip(caps).and_then(|(v, c)| ratio(v, c as f64 / 8.0));
        let judged = if case.of_caps { of_caps } else { r };
        let mut notes = vec![format!(
            "plain TCP {}",
            tcp_rate.map_or("-".into(), |t| format!("{:.1} MB/s", t / 1e6))
        )];
        if let Some(c) = of_caps {
            notes.push(format!("{c:.3}x the caps"));
        }
        notes.push(format!(
            "get runs: {} s; TCP runs: {} s",
            list(&gets),
            list(&tcps)
        ));
        if let Some(limits) = limits {
            notes.push(format!("holder's TCP at 90% (last run): {limits}"));
        }
        if !failures.is_empty() {
            notes.push(format!("FAILED: {}", failures.join("; ")));
        }
        self.push(Row {
            scenario: format!("network: {}", case.label),
            bytes: Some(size),
            seconds,
            mb_per_s: rate.map(|r| r / 1e6),
            ratio: r,
            ratio_to: "plain TCP".into(),
            target: format!(
                ">= {:.2}x {}",
                case.minimum,
                if case.of_caps { "caps" } else { "TCP" }
            ),
            pass: Some(judged.is_some_and(|j| j >= case.minimum) && failures.is_empty()),
            notes: notes.join("; "),
            ..Row::default()
        });
        Ok(seconds)
    }
}

/// A cut-cable row: its seconds (median), target, notes.
struct CutRow {
    label: String,
    seconds: Vec<f64>,
    /// Largest acceptable median, seconds.
    limit: f64,
    target: String,
    notes: Vec<String>,
    failures: Vec<String>,
}

impl CutRow {
    fn new(label: &str, limit: f64, target: &str) -> CutRow {
        CutRow {
            label: label.into(),
            seconds: Vec::new(),
            limit,
            target: target.into(),
            notes: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn row(self, bytes: Option<u64>) -> Row {
        let seconds = median(self.seconds.iter().copied());
        let mut notes = self.notes;
        notes.push(format!("runs: {} s", list(&self.seconds)));
        if !self.failures.is_empty() {
            notes.push(format!("FAILED: {}", self.failures.join("; ")));
        }
        Row {
            scenario: format!("network cut: {}", self.label),
            bytes,
            seconds,
            target: self.target,
            pass: Some(seconds.is_some_and(|s| s <= self.limit) && self.failures.is_empty()),
            notes: notes.join("; "),
            ..Row::default()
        }
    }
}

impl Runner<'_> {
    /// The cut-cable rows, with three holders capped at 100 Mbit/s (default peer options):
    /// `t2` and `t3` are the medians of the uncut 2- and 3-holder downloads of the same file.
    fn network_cuts(
        &mut self,
        world: &mut World,
        t2: Option<f64>,
        t3: Option<f64>,
    ) -> Result<(), BenchError> {
        let file = "c3.bin";
        let size = Some(world.size(file));
        for host in ["h1", "h2", "h3"] {
            world.net.cap(host, Direction::Up, 100 * MBIT)?;
        }
        world.net.uncap("h4", Direction::Up);
        world.net.uncap(DOWNLOADER, Direction::Down);
        let (Some(t2), Some(t3)) = (t2, t3) else {
            return Err(BenchError::Setup(
                "no uncut 2- and 3-holder times to compare with".into(),
            ));
        };

        // A holder's cable pulled halfway, and near the end: ideal = the part in by then at the
        // 3-holder pace, the rest at the 2-holder pace.
        for percent in [50, 90] {
            self.say(&format!(
                "network: h2's cable pulled at {percent}% of a 3-holder download"
            ));
            let label = format!("1 of 3 holders at {percent}%, time over the ideal");
            let mut mid = CutRow::new(&label, 1.0, "<= 1 s");
            for _ in 0..world.runs {
                let cut = Cut {
                    host: "h2".into(),
                    at_fraction: f64::from(percent) / 100.0,
                };
                match world.get(file, Some(&cut)) {
                    Ok(t) => match (t.get_seconds, t.cut) {
                        (Some(s), Some((_, f))) => {
                            let ideal = f * t3 + (1.0 - f) * t2;
                            mid.seconds.push(s - ideal);
                            mid.notes.push(format!(
                                "{s:.2} s vs ideal {ideal:.2} s (cut at {:.0}%, exit at {:.2} s)",
                                f * 100.0,
                                t.run.wall.as_secs_f64()
                            ));
                        }
                        _ => mid
                            .failures
                            .push(format!("no `got` line or no cut: {}", t.run.stdout.trim())),
                    },
                    Err(e) => mid.failures.push(e.to_string()),
                }
                world.net.set_link("h2", true)?;
                world.holders_listed()?;
            }
            mid.notes.insert(
                0,
                format!("uncut: 3 holders {t3:.2} s, 2 holders {t2:.2} s"),
            );
            self.push(mid.row(size));
        }

        // A holder's cable pulled before the `get` (the tracker still lists it): ideal = the
        // two others alone.
        self.say("network: h2's cable pulled just before a 3-holder download");
        let mut before = CutRow::new(
            "1 of 3 holders before `get`, time over the ideal",
            0.5,
            "< 0.5 s",
        );
        for _ in 0..world.runs {
            let cut = Cut {
                host: "h2".into(),
                at_fraction: 0.0,
            };
            match world.get(file, Some(&cut)) {
                Ok(t) => match t.get_seconds {
                    Some(s) => {
                        before.seconds.push(s - t2);
                        before.notes.push(format!(
                            "{s:.2} s vs ideal {t2:.2} s (exit at {:.2} s)",
                            t.run.wall.as_secs_f64()
                        ));
                    }
                    None => before
                        .failures
                        .push(format!("no `got` line: {}", t.run.stdout.trim())),
                },
                Err(e) => before.failures.push(e.to_string()),
            }
            world.net.set_link("h2", true)?;
            world.holders_listed()?;
        }
        self.push(before.row(size));

        // The tracker's cable pulled halfway: when `get` says so against when the file is in,
        // how long the exit takes; then, cable back, how long until the tracker lists the
        // holders again.
        self.say("network: the tracker's cable pulled halfway through a 3-holder download");
        let mut report = CutRow::new(
            "tracker at 50%, `got` line after the file is in",
            0.1,
            "<= 100 ms",
        );
        let mut exit = CutRow::new("tracker at 50%, exit after the `got` line", 2.0, "< 2 s");
        let heartbeat = f64::from(HEARTBEAT_SECS);
        let mut back = CutRow::new(
            "tracker's cable back, holders listed again",
            heartbeat,
            &format!("<= 1 heartbeat ({HEARTBEAT_SECS} s)"),
        );
        for _ in 0..world.runs {
            let cut = Cut {
                host: "tracker".into(),
                at_fraction: 0.5,
            };
            match world.get(file, Some(&cut)) {
                Ok(t) => {
                    if let (Some(file_in), Some(got)) = (t.file_in, t.got_line) {
                        report
                            .seconds
                            .push(got.saturating_sub(file_in).as_secs_f64());
                        exit.seconds
                            .push(t.run.wall.saturating_sub(got).as_secs_f64());
                        report.notes.push(format!(
                            "in at {:.2} s, `got` at {:.2} s, exit at {:.2} s",
                            file_in.as_secs_f64(),
                            got.as_secs_f64(),
                            t.run.wall.as_secs_f64()
                        ));
                    }
                }
                Err(e) => report.failures.push(e.to_string()),
            }
            // The holders drop out of the tracker (3 missed heartbeats) ...
            let deadline = Instant::now() + LISTING_TIMEOUT;
            loop {
                let listed = swarm::list_peers(&world.net, "tracker", world.tracker)?;
                if !listed.iter().any(|p| HOLDERS.contains(&p.id.as_str())) {
                    break;
                }
                if Instant::now() > deadline {
                    back.failures
                        .push(format!("still listed with the cable out: {listed:?}"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // ... and come back with it.
            world.net.set_link("tracker", true)?;
            match world.holders_listed() {
                Ok(d) => back.seconds.push(d.as_secs_f64()),
                Err(e) => back.failures.push(e.to_string()),
            }
        }
        self.push(report.row(size));
        self.push(exit.row(None));
        self.push(back.row(None));
        Ok(())
    }
}
