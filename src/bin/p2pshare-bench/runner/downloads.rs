//! Transfer scenarios: the TCP baseline, downloads from one and three holders, and holders
//! capped at R, 2R, 4R, 8R.

use super::{limit_for, Runner};
use crate::baseline::{tcp_copy, CopyTime};
use crate::child::{ChildReport, Plan};
use crate::error::BenchError;
use crate::report::{download_row, failed_row, median, ratio, Row};
use p2pshare::human;
use std::time::Duration;

/// One measurement of the rate-capped scenario.
struct RateConfig {
    scenario: String,
    /// Each holder's upload cap.
    rates: Vec<Option<u64>>,
    /// The rate the downloader should get, bytes per second.
    reference: f64,
    /// Least acceptable ratio to `reference`.
    minimum: f64,
    /// How the reference is named in the table.
    basis: String,
}

impl Runner<'_> {
    pub(super) fn baseline(&mut self) -> Result<(), BenchError> {
        let (name, data) = self.big_file()?;
        self.say("baseline: TCP copy file -> socket -> file between two processes, then the same with fdatasync");
        let source = self.swarm.data_path(&name);
        let dest = self.swarm.root.join("baseline.out");
        let (mut plain, mut durable) = (Vec::new(), Vec::new());
        // Interleaved, so that both see the same machine.
        for _ in 0..self.opts.runs {
            plain.push(tcp_copy(&self.swarm.exe, &source, &dest, data.size, false)?);
            durable.push(tcp_copy(&self.swarm.exe, &source, &dest, data.size, true)?);
        }
        let row = |scenario: &str, times: &[CopyTime], ratio: f64, extra: String| {
            let seconds = median(times.iter().map(|t| t.total.as_secs_f64()));
            let all: Vec<String> = times
                .iter()
                .map(|t| format!("{:.3}", t.total.as_secs_f64()))
                .collect();
            Row {
                scenario: scenario.into(),
                bytes: Some(data.size),
                seconds,
                mb_per_s: seconds.map(|s| data.size as f64 / s / 1e6),
                ratio: Some(ratio),
                ratio_to: "baseline".into(),
                notes: format!(
                    "runs: {} s; 1 MiB read/write buffers{extra}",
                    all.join(" / ")
                ),
                ..Row::default()
            }
        };
        let plain_row = row(
            "baseline: TCP copy, process -> process, page cache",
            &plain,
            1.0,
            String::new(),
        );
        self.baseline = plain_row.mb_per_s.map(|r| r * 1e6);
        let syncs: Vec<String> = durable
            .iter()
            .map(|t| format!("{:.0}", t.sync.as_secs_f64() * 1e3))
            .collect();
        let mut durable_row = row(
            "durable baseline: the same TCP copy, then fdatasync",
            &durable,
            f64::NAN,
            format!("; fdatasync {} ms", syncs.join(" / ")),
        );
        self.durable_baseline = durable_row.mb_per_s.map(|r| r * 1e6);
        durable_row.ratio = self
            .durable_baseline
            .zip(self.baseline)
            .and_then(|(d, b)| ratio(d, b));
        self.push(plain_row);
        self.push(durable_row);
        Ok(())
    }

    pub(super) fn holders_download(
        &mut self,
        holders: usize,
        minimum: f64,
    ) -> Result<(), BenchError> {
        let (name, data) = self.big_file()?;
        self.say(&format!(
            "{holders} holder(s): {} downloads of {} each",
            self.opts.runs,
            human::bytes(data.size)
        ));
        let nodes = self.swarm.start_holders(
            &format!("H{holders}"),
            std::slice::from_ref(&name),
            &vec![None; holders],
        )?;
        let plan = Plan::Download {
            peer: self.swarm.child_peer(&format!("D{holders}")),
            name,
            content_id: data.content_id.to_hex(),
            runs: self.opts.runs,
            check: !self.opts.no_check,
        };
        let report = self
            .swarm
            .run_child(&plan, limit_for(data.size * self.opts.runs as u64 * 2));
        self.swarm.stop_holders(nodes);
        let ChildReport::Download(runs) = report? else {
            return Err(BenchError::Child("unexpected report".into()));
        };
        let scenario = format!(
            "scratch: {holders} in-process holder(s) -> PeerNode download, page cache (no fsync), verified"
        );
        let row = download_row(scenario, &runs, self.baseline, "baseline", Some(minimum));
        self.push(row);
        Ok(())
    }

    pub(super) fn rate_capped(&mut self) -> Result<(), BenchError> {
        let name = "rate.bin".to_string();
        let r = self.opts.rate;
        self.swarm
            .ensure_data(&[(name.clone(), self.opts.rate_size)])?;
        let data = self.swarm.data[&name].clone();
        let mut configs: Vec<RateConfig> = [1u64, 2, 4, 8]
            .iter()
            .map(|&k| RateConfig {
                scenario: format!("rate-capped: {k} holder(s) at R each"),
                rates: vec![Some(r); k as usize],
                reference: (k * r) as f64,
                minimum: 0.9,
                basis: format!("{k}R"),
            })
            .collect();
        configs.push(RateConfig {
            scenario: "rate-capped: holders at R, 2R, 4R, 8R".into(),
            rates: vec![Some(r), Some(2 * r), Some(4 * r), Some(8 * r)],
            reference: (15 * r) as f64,
            minimum: 0.85,
            basis: "15R".into(),
        });
        for RateConfig {
            scenario,
            rates,
            reference,
            minimum,
            basis,
        } in configs
        {
            self.say(&format!(
                "{scenario} (R = {}/s), {} downloads of {}",
                human::bytes(r),
                self.opts.runs,
                human::bytes(data.size)
            ));
            let result = (|| {
                let nodes = self
                    .swarm
                    .start_holders("R", std::slice::from_ref(&name), &rates)?;
                let plan = Plan::Download {
                    peer: self.swarm.child_peer("DR"),
                    name: name.clone(),
                    content_id: data.content_id.to_hex(),
                    runs: self.opts.runs,
                    check: !self.opts.no_check,
                };
                let expected = data.size as f64 / reference * self.opts.runs as f64;
                let report = self
                    .swarm
                    .run_child(&plan, Duration::from_secs_f64(60.0 + 3.0 * expected));
                self.swarm.stop_holders(nodes);
                match report? {
                    ChildReport::Download(runs) => Ok(runs),
                    _ => Err(BenchError::Child("unexpected report".into())),
                }
            })();
            let row = match result {
                Ok(runs) => download_row(
                    scenario.clone(),
                    &runs,
                    Some(reference),
                    &basis,
                    Some(minimum),
                ),
                Err(e) => failed_row(&scenario, &e),
            };
            self.push(row);
        }
        Ok(())
    }
}
