//! `WhoHas` load on a tracker holding many synthetic peers.

use super::Runner;
use crate::child::{ChildReport, LoadReport, Plan};
use crate::error::BenchError;
use crate::memory::{peak_rss, reset_peak_rss};
use crate::report::{median, Row};
use crate::swarm::{start_tracker, stop_tracker};
use std::time::Duration;

impl Runner<'_> {
    pub(super) fn tracker(&mut self) -> Result<(), BenchError> {
        let o = self.opts;
        self.say(&format!(
            "tracker: {} peers x {} files registered, then WhoHas from {} connections, {} s per measurement",
            o.tracker_peers, o.tracker_files, o.tracker_connections, o.tracker_seconds
        ));
        // A tracker of its own, with heartbeats far apart: the synthetic peers never heartbeat.
        let tracker = self
            .swarm
            .runtime
            .block_on(start_tracker(Duration::from_secs(3600)))?;
        reset_peak_rss();
        let mut reports = Vec::new();
        let mut failure = None;
        for run in 0..o.runs {
            let plan = Plan::TrackerLoad {
                tracker: tracker.addr.to_string(),
                register: run == 0,
                peers: o.tracker_peers,
                files_per_peer: o.tracker_files,
                connections: o.tracker_connections,
                in_flight: o.tracker_in_flight.clone(),
                seconds: o.tracker_seconds,
            };
            let limit = Duration::from_secs(
                120 + o.tracker_seconds as u64 * o.tracker_in_flight.len() as u64 * 2
                    + o.tracker_peers as u64 / 100,
            );
            match self.swarm.run_child(&plan, limit) {
                Ok(ChildReport::TrackerLoad(r)) => reports.push(r),
                Ok(_) => failure = Some(BenchError::Child("unexpected report".into())),
                Err(e) => failure = Some(e),
            }
        }
        let tracker_peak = peak_rss();
        self.swarm.runtime.block_on(stop_tracker(tracker));
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(first) = reports.first() {
            let peers = o.tracker_peers as f64;
            self.push(Row {
                scenario: format!(
                    "tracker: register {} peers x {} files",
                    o.tracker_peers, o.tracker_files
                ),
                seconds: Some(first.register_seconds),
                peak_rss: tracker_peak,
                notes: format!(
                    "{:.0} registrations/s over {} connections; {} refused; peak RSS is the bench process (tracker, no holders running)",
                    peers / first.register_seconds.max(1e-9),
                    o.tracker_connections,
                    first.register_errors
                ),
                ..Row::default()
            });
        }
        for &depth in &o.tracker_in_flight {
            let loads: Vec<&LoadReport> = reports
                .iter()
                .flat_map(|r| r.loads.iter().filter(|l| l.in_flight == depth))
                .collect();
            let rps = median(
                loads
                    .iter()
                    .map(|l| l.requests as f64 / l.seconds.max(1e-9)),
            );
            let p50 = median(loads.iter().map(|l| l.p50));
            let p99 = median(loads.iter().map(|l| l.p99));
            let errors: u64 = loads.iter().map(|l| l.errors).sum();
            self.push(Row {
                scenario: format!(
                    "tracker: WhoHas, {} connections x {depth} in flight",
                    o.tracker_connections
                ),
                seconds: median(loads.iter().map(|l| l.seconds)),
                peak_rss: reports.iter().filter_map(|r| r.peak_rss).max(),
                target: ">= 20000 req/s, p99 < 5 ms".into(),
                pass: Some(
                    rps.unwrap_or(0.0) >= 20_000.0 && p99.unwrap_or(1.0) < 0.005 && errors == 0,
                ),
                notes: format!(
                    "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {errors} errors; peak RSS is the load generator",
                    rps.unwrap_or(f64::NAN),
                    p50.unwrap_or(f64::NAN) * 1e3,
                    p99.unwrap_or(f64::NAN) * 1e3
                ),
                ..Row::default()
            });
        }
        Ok(())
    }
}
