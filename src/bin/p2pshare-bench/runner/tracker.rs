//! `WhoHas` load on a tracker holding many synthetic peers (`redis`: the same on the Redis
//! store, one tracker against two).

mod redis;

use super::Runner;
use crate::child::{ChildReport, LoadReport, Plan};
use crate::error::BenchError;
use crate::memory::{peak_rss, reset_peak_rss};
use crate::report::{median, ratio, Row};
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
                tracker_pid: std::process::id(),
            };
            let limit = Duration::from_secs(
                120 + o.tracker_seconds as u64 * o.tracker_in_flight.len() as u64 * 4
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
            let of_depth =
                |loads: &[LoadReport]| loads.iter().find(|l| l.in_flight == depth).cloned();
            // (empty RPC, WhoHas) of each run: a pair measured in alternating slices.
            let pairs: Vec<(LoadReport, LoadReport)> = reports
                .iter()
                .filter_map(|r| Some((of_depth(&r.baselines)?, of_depth(&r.loads)?)))
                .collect();
            let empty: Vec<&LoadReport> = pairs.iter().map(|(e, _)| e).collect();
            let who_has: Vec<&LoadReport> = pairs.iter().map(|(_, w)| w).collect();
            let ratios: Vec<f64> = pairs
                .iter()
                .filter_map(|(e, w)| ratio(rate(w), rate(e)))
                .collect();
            let connections = o.tracker_connections;
            let peak = reports.iter().filter_map(|r| r.peak_rss).max();
            self.push(load_row(
                format!("tracker: empty RPC (health Check), {connections} connections x {depth} in flight"),
                &empty,
                peak,
                "the tracker's own server answering grpc.health.v1.Health/Check: same connections, server stack and middleware, no work",
            ));
            let summary = Summary::of(&who_has);
            let base = Summary::of(&empty);
            let cpu_ratio = |who: Option<f64>, empty: Option<f64>| {
                who.zip(empty)
                    .and_then(|(w, e)| ratio(w, e))
                    .unwrap_or(f64::NAN)
            };
            let total = |s: &Summary| s.tracker_us.zip(s.client_us).map(|(t, c)| t + c);
            let ratio = median(ratios.iter().copied());
            let pass = ratio.unwrap_or(0.0) >= 0.8
                && summary.p99.unwrap_or(1.0) < 0.005
                && summary.errors == 0;
            let runs = crate::report::ratios_note(&ratios);
            self.push(Row {
                ratio,
                ratio_to: "empty RPC".into(),
                target: ">= 0.80x empty RPC, p99 < 5 ms".into(),
                pass: Some(pass),
                ..load_row(
                    format!("tracker: WhoHas, {connections} connections x {depth} in flight"),
                    &who_has,
                    peak,
                    &format!(
                        "ratio per run (to the empty RPC, measured in alternating slices): {runs}; CPU per call {:.2}x the empty RPC's in the tracker, {:.2}x in all",
                        cpu_ratio(summary.tracker_us, base.tracker_us),
                        cpu_ratio(total(&summary), total(&base)),
                    ),
                )
            });
        }
        Ok(())
    }
}

/// `cpu` seconds per call answered in `load`, in microseconds.
fn per_call_us(cpu: f64, load: &LoadReport) -> f64 {
    cpu * 1e6 / load.requests.max(1) as f64
}

/// Requests per second of one measurement.
pub(super) fn rate(load: &LoadReport) -> f64 {
    load.requests as f64 / load.seconds.max(1e-9)
}

/// The medians of some load measurements.
struct Summary {
    seconds: Option<f64>,
    rate: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    errors: u64,
    /// CPU microseconds per call answered, of the tracker's process and of the load generator.
    tracker_us: Option<f64>,
    client_us: Option<f64>,
}

impl Summary {
    fn of(loads: &[&LoadReport]) -> Self {
        Summary {
            seconds: median(loads.iter().map(|l| l.seconds)),
            rate: median(loads.iter().map(|l| rate(l))),
            p50: median(loads.iter().map(|l| l.p50)),
            p99: median(loads.iter().map(|l| l.p99)),
            errors: loads.iter().map(|l| l.errors).sum(),
            tracker_us: median(loads.iter().map(|l| per_call_us(l.tracker_cpu, l))),
            client_us: median(loads.iter().map(|l| per_call_us(l.client_cpu, l))),
        }
    }
}

/// A row of load measurements (medians over the runs), with `extra` after the figures.
fn load_row(scenario: String, loads: &[&LoadReport], peak_rss: Option<u64>, extra: &str) -> Row {
    let s = Summary::of(loads);
    Row {
        scenario,
        seconds: s.seconds,
        peak_rss,
        notes: format!(
            "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors; CPU per call: tracker {:.1} us, load generator {:.1} us; {extra}; peak RSS is the load generator",
            s.rate.unwrap_or(f64::NAN),
            s.p50.unwrap_or(f64::NAN) * 1e3,
            s.p99.unwrap_or(f64::NAN) * 1e3,
            s.errors,
            s.tracker_us.unwrap_or(f64::NAN),
            s.client_us.unwrap_or(f64::NAN),
        ),
        ..Row::default()
    }
}
