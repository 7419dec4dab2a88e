//! Many parallel downloads of one file from several holders, against single downloads of it.

use super::{limit_for, Runner};
use crate::child::{ChildReport, Plan};
use crate::error::BenchError;
use crate::memory::{peak_rss, reset_peak_rss};
use crate::report::{median, ratio, Row};
use crate::worker::STRESS_SINGLES;
use p2pshare::human;

impl Runner<'_> {
    pub(super) fn stress(&mut self) -> Result<(), BenchError> {
        let name = "stress.bin".to_string();
        let size = self.opts.stress_size;
        let downloads = self.opts.stress_downloads;
        let holders = self.opts.stress_holders as usize;
        self.swarm.ensure_data(&[(name.clone(), size)])?;
        let data = self.swarm.data[&name].clone();
        let mut reports = Vec::new();
        let mut holder_peaks = Vec::new();
        for run in 0..self.opts.runs {
            self.say(&format!(
                "stress run {}/{}: {downloads} parallel downloads of {} from {holders} holders",
                run + 1,
                self.opts.runs,
                human::bytes(size)
            ));
            let nodes = self.swarm.start_holders(
                "HX",
                std::slice::from_ref(&name),
                &vec![None; holders],
            )?;
            let plan = Plan::Stress {
                peer: self.swarm.child_peer("DX"),
                name: name.clone(),
                content_id: data.content_id.to_hex(),
                downloads,
            };
            reset_peak_rss();
            let report = self
                .swarm
                .run_child(&plan, limit_for(size * (downloads as u64 + 3) * 2));
            holder_peaks.extend(peak_rss());
            self.swarm.stop_holders(nodes);
            match report? {
                ChildReport::Stress(r) => reports.push(r),
                _ => return Err(BenchError::Child("unexpected report".into())),
            }
        }
        let single = median(reports.iter().flat_map(|r| r.single_seconds.clone()));
        let single_rate = single.map(|s| size as f64 / s);
        self.push(Row {
            scenario: format!(
                "stress reference: 1 download of {} from {holders} holders",
                human::bytes(size)
            ),
            bytes: Some(size),
            seconds: single,
            mb_per_s: single_rate.map(|r| r / 1e6),
            ratio: single_rate.and_then(|r| self.baseline.and_then(|b| ratio(r, b))),
            ratio_to: if self.baseline.is_some() {
                "baseline".into()
            } else {
                String::new()
            },
            notes: format!("median of {} singles", STRESS_SINGLES * reports.len()),
            ..Row::default()
        });
        let seconds = median(reports.iter().map(|r| r.seconds));
        let bytes = size * downloads as u64;
        let rate = seconds.map(|s| bytes as f64 / s);
        let all_ok = reports
            .iter()
            .all(|r| r.succeeded == downloads && r.mismatched == 0 && r.failures.is_empty());
        let r = match (rate, single_rate) {
            (Some(a), Some(s)) => ratio(a, s),
            _ => None,
        };
        let failures: Vec<String> = reports
            .iter()
            .flat_map(|r| r.failures.iter().take(3).cloned())
            .collect();
        let counts: Vec<String> = reports
            .iter()
            .map(|r| {
                format!(
                    "{}/{downloads} ok, {} mismatched",
                    r.succeeded, r.mismatched
                )
            })
            .collect();
        self.push(Row {
            scenario: format!(
                "stress: {downloads} parallel downloads of {}, {holders} holders",
                human::bytes(size)
            ),
            bytes: Some(bytes),
            seconds,
            mb_per_s: rate.map(|r| r / 1e6),
            peak_rss: reports.iter().filter_map(|r| r.peak_rss).max(),
            ratio: r,
            ratio_to: "single".into(),
            target: ">= 0.80x, all ok".into(),
            pass: Some(all_ok && r.is_some_and(|r| r >= 0.8)),
            notes: format!(
                "{}; holders+tracker process peak {}{}",
                counts.join(" / "),
                holder_peaks
                    .iter()
                    .max()
                    .map_or("?".into(), |b| human::bytes(*b)),
                if failures.is_empty() {
                    String::new()
                } else {
                    format!("; FAILED e.g. {}", failures.join("; "))
                }
            ),
        });
        Ok(())
    }
}
