//! A peer's first scan of a folder, and its restart over the folder unchanged.

use super::{limit_for, Runner};
use crate::child::{ChildPeer, ChildReport, Plan};
use crate::error::BenchError;
use crate::files::{evict_from_page_cache, write_random, HASH_CACHE};
use crate::report::{median, Row};
use p2pshare::human;

/// Largest file of the start-up folder.
const STARTUP_FILE_MAX: u64 = 256 << 20;

impl Runner<'_> {
    pub(super) fn startup(&mut self) -> Result<(), BenchError> {
        let size = self.opts.startup_size;
        let dir = self.swarm.root.join("startup");
        let files_dir = dir.join("files");
        std::fs::create_dir_all(&files_dir)?;
        let mut paths = Vec::new();
        let mut left = size;
        while left > 0 {
            let n = left.min(STARTUP_FILE_MAX);
            let path = files_dir.join(format!("startup-{:03}.bin", paths.len()));
            paths.push((path, n));
            left -= n;
        }
        self.say(&format!(
            "startup: writing a folder of {} in {} file(s) ...",
            human::bytes(size),
            paths.len()
        ));
        for (path, n) in &paths {
            write_random(path, *n)?;
        }
        let tracker = self.swarm.tracker.addr.to_string();
        let mut first = Vec::new();
        let mut restart = Vec::new();
        let limit = limit_for(size * 2);
        for run in 0..self.opts.runs {
            self.say(&format!(
                "startup run {}/{}: first scan{}, then restart",
                run + 1,
                self.opts.runs,
                if self.opts.startup_cold {
                    " (cold page cache)"
                } else {
                    ""
                }
            ));
            let _ = std::fs::remove_file(dir.join(HASH_CACHE));
            if self.opts.startup_cold {
                for (path, _) in &paths {
                    evict_from_page_cache(path)?;
                }
            }
            for into in [&mut first, &mut restart] {
                let plan = Plan::Startup {
                    peer: ChildPeer {
                        id: self.swarm.fresh_id("ST"),
                        dir: dir.clone(),
                        tracker: tracker.clone(),
                    },
                };
                match self.swarm.run_child(&plan, limit)? {
                    ChildReport::Startup(r) => into.push(r),
                    _ => return Err(BenchError::Child("unexpected report".into())),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        let errors: Vec<String> = first
            .iter()
            .chain(&restart)
            .filter_map(|r| r.registration_error.clone())
            .collect();
        let err_note = if errors.is_empty() {
            String::new()
        } else {
            format!("; registration FAILED: {}", errors[0])
        };
        let seconds = median(first.iter().map(|r| r.seconds));
        let hashed = first.iter().map(|r| r.hashed_bytes).min().unwrap_or(0);
        let rate = seconds.map(|s| hashed as f64 / s);
        let all: Vec<String> = first.iter().map(|r| format!("{:.3}", r.seconds)).collect();
        self.push(Row {
            scenario: format!(
                "startup: first scan of a {} folder ({} files{})",
                human::bytes(size),
                paths.len(),
                if self.opts.startup_cold {
                    ", cold cache"
                } else {
                    ", page cache warm"
                }
            ),
            bytes: Some(hashed),
            seconds,
            mb_per_s: rate.map(|r| r / 1e6),
            peak_rss: first.iter().filter_map(|r| r.peak_rss).max(),
            target: ">= 1 GB/s (4 GiB folder)".into(),
            pass: rate.map(|r| r >= 1e9 && hashed == size && errors.is_empty()),
            notes: format!(
                "{:.2} GB/s; hashed {} of {}; runs: {} s{err_note}",
                rate.unwrap_or(f64::NAN) / 1e9,
                human::bytes(hashed),
                human::bytes(size),
                all.join(" / ")
            ),
            ..Row::default()
        });
        let seconds = median(restart.iter().map(|r| r.seconds));
        let rehashed = restart.iter().map(|r| r.hashed_bytes).max().unwrap_or(0);
        let all: Vec<String> = restart
            .iter()
            .map(|r| format!("{:.4}", r.seconds))
            .collect();
        self.push(Row {
            scenario: "startup: restart over the unchanged folder".into(),
            bytes: Some(size),
            seconds,
            peak_rss: restart.iter().filter_map(|r| r.peak_rss).max(),
            target: "< 1 s, no rehash".into(),
            pass: seconds.map(|s| s < 1.0 && rehashed == 0 && errors.is_empty()),
            notes: format!(
                "rehashed {}; runs: {} s (PeerNode::start, in a fresh process)",
                human::bytes(rehashed),
                all.join(" / ")
            ),
            ..Row::default()
        });
        Ok(())
    }
}
