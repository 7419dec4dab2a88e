//! The scenarios, run in order against one [`Swarm`]: the [`Runner`] and its shared helpers here,
//! each scenario in a file of its own below.

mod crowd;
mod downloads;
mod network;
mod small_files;
mod startup;
mod stress;
mod tracker;
mod user_get;

use crate::error::BenchError;
use crate::options::{Scenario, SwarmOptions};
use crate::report::{failed_row, format_row_line, Row};
use crate::swarm::{DataFile, Swarm};
use p2pshare::human;
use std::io::Write;
use std::time::Duration;

/// Time limit of a child process that moves `bytes` (generous: 20 MB/s, plus a minute).
fn limit_for(bytes: u64) -> Duration {
    Duration::from_secs(60 + bytes / 20_000_000)
}

/// Runs the scenarios in order against one swarm, collecting rows and reporting progress.
struct Runner<'a> {
    opts: &'a SwarmOptions,
    swarm: Swarm,
    rows: Vec<Row>,
    progress: &'a mut dyn Write,
    /// Baseline throughput (TCP copy into the page cache), bytes per second.
    baseline: Option<f64>,
    /// Durable baseline throughput (the same copy, then fdatasync), bytes per second.
    durable_baseline: Option<f64>,
}

impl Runner<'_> {
    /// A line of progress.
    fn say(&mut self, text: &str) {
        let _ = writeln!(self.progress, "{text}");
    }

    /// Records a row and shows it as a line of progress.
    fn push(&mut self, row: Row) {
        let _ = writeln!(self.progress, "  {}", format_row_line(&row));
        self.rows.push(row);
    }

    /// The large file of the baseline and the one-/three-holder downloads, written once.
    fn big_file(&mut self) -> Result<(String, DataFile), BenchError> {
        let name = "big.bin".to_string();
        if !self.swarm.data.contains_key(&name) {
            self.say(&format!(
                "writing and hashing a {} file ...",
                human::bytes(self.opts.size)
            ));
        }
        self.swarm.ensure_data(&[(name.clone(), self.opts.size)])?;
        let data = self.swarm.data[&name].clone();
        Ok((name, data))
    }
}

/// Runs the scenarios `opts` selects and returns the table rows; progress goes to `progress`.
pub(crate) fn run(opts: &SwarmOptions, progress: &mut dyn Write) -> Result<Vec<Row>, BenchError> {
    let tmp;
    let root = match &opts.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::Builder::new()
                .prefix("p2pshare-bench.")
                .tempdir_in(dir)?
                .keep()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("p2pshare-bench.")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let _ = writeln!(progress, "working in {}", root.display());
    let swarm = Swarm::start(&root)?;
    let mut runner = Runner {
        opts,
        swarm,
        rows: Vec::new(),
        progress,
        baseline: None,
        durable_baseline: None,
    };
    for scenario in Scenario::ALL {
        if !opts.wants(scenario) {
            continue;
        }
        let (name, result) = match scenario {
            Scenario::Baseline => ("baseline", runner.baseline()),
            Scenario::OneHolder => ("one-holder", runner.user_get(1, None)),
            Scenario::ThreeHolders => ("three-holders", runner.user_get(3, Some(1.3))),
            Scenario::RateCapped => ("rate-capped", runner.rate_capped()),
            Scenario::SmallFiles => ("small-files", runner.small_files()),
            Scenario::Stress => ("stress", runner.stress()),
            Scenario::Tracker => ("tracker", runner.tracker()),
            Scenario::TrackerRedis => ("tracker-redis", runner.tracker_redis()),
            Scenario::Startup => ("startup", runner.startup()),
            Scenario::FlashCrowd => ("flash-crowd", runner.flash_crowd()),
            Scenario::Network => ("network", runner.network()),
        };
        if let Err(e) = result {
            runner.push(failed_row(name, &e));
        }
        // The same transfers without processes or fsync: what the download path itself costs.
        let scratch = match scenario {
            Scenario::OneHolder => Some(("one-holder scratch", runner.holders_download(1, 0.7))),
            Scenario::ThreeHolders => {
                Some(("three-holders scratch", runner.holders_download(3, 0.9)))
            }
            _ => None,
        };
        if let Some((name, Err(e))) = scratch {
            runner.push(failed_row(name, &e));
        }
    }
    let rows = runner.rows;
    runner.swarm.stop();
    if opts.dir.is_some() {
        // Kept only on request, and then without the bulky data.
        let _ = std::fs::remove_dir_all(root.join("seed"));
        let _ = std::fs::remove_dir_all(root.join("peers"));
    }
    Ok(rows)
}
