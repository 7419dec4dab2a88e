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

mod cuts;

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
                // Its own port: the peers that earlier downloaders were (which holders may
                // still pass on) must not be this one.
                port: swarm::PEER_PORT + (self.next_id % 20_000) as u16 + 1,
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
                port: swarm::PEER_PORT,
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
