//! The cut-cable rows of the `network` scenario: a holder's cable pulled halfway, near the end
//! and before the `get`, against the ideal; the tracker's cable pulled halfway (when `get` says
//! it is done, how long the exit takes) and plugged back (how long until the tracker lists the
//! holders again).

use super::{list, World, DOWNLOADER, HEARTBEAT_SECS, HOLDERS, LISTING_TIMEOUT, MBIT};
use crate::error::BenchError;
use crate::network::net::Direction;
use crate::network::swarm;
use crate::network::Cut;
use crate::report::{median, Row};
use crate::runner::Runner;
use std::time::{Duration, Instant};

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
    pub(super) fn network_cuts(
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
                                "{s:.2} s vs ideal {ideal:.2} s (cut at {:.0}%, exit at {:.2} s; {})",
                                f * 100.0,
                                t.run.wall.as_secs_f64(),
                                shares(&t.run.stdout)
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

/// What each holder gave, from the `got` line (`[h1 20.0 MiB, h2 ... (dropped: ...), ...]`);
/// peers that gave nothing and were dropped (departed ones passed on by holders) are counted,
/// not listed.
fn shares(stdout: &str) -> String {
    let Some(entries) = stdout
        .lines()
        .find(|l| l.starts_with("got "))
        .and_then(|l| {
            l.split_once(" [")?
                .1
                .rsplit_once("] in ")
                .map(|(s, _)| s.to_string())
        })
    else {
        return "no `got` line".into();
    };
    let (empty, gave): (Vec<&str>, Vec<&str>) = entries
        .split(", ")
        .partition(|e| e.contains(" 0 B (dropped:"));
    if empty.is_empty() {
        gave.join(", ")
    } else {
        format!(
            "{}; {} more peer(s) dropped having given nothing",
            gave.join(", "),
            empty.len()
        )
    }
}
