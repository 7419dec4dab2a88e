//! The result table: one [`Row`] per measurement, the statistics behind it (medians, nearest-rank
//! percentiles, ratios), and its two renderings (a progress line and the Markdown table of the
//! README).

use crate::child::DownloadRun;
use crate::error::BenchError;
use p2pshare::human;
use serde::{Deserialize, Serialize};

/// One row of the result table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Row {
    /// What was measured.
    pub(crate) scenario: String,
    /// Bytes moved (or hashed), if that applies.
    pub(crate) bytes: Option<u64>,
    /// Median seconds.
    pub(crate) seconds: Option<f64>,
    /// Throughput in MB/s (10^6 bytes per second), from the median time.
    pub(crate) mb_per_s: Option<f64>,
    /// Peak RSS of the measured process (the downloader, the load generator, the peer starting).
    pub(crate) peak_rss: Option<u64>,
    /// Ratio to the reference named in `ratio_to`.
    pub(crate) ratio: Option<f64>,
    /// What the ratio is relative to.
    pub(crate) ratio_to: String,
    /// The target for this row.
    pub(crate) target: String,
    /// Whether the target is met.
    pub(crate) pass: Option<bool>,
    /// Anything else worth knowing (per-holder shares, request rates, failures).
    pub(crate) notes: String,
}

/// The `q` quantile of sorted values (nearest rank).
pub(crate) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The median of the finite values, if there are any.
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Ratios of several runs as a row's notes show them: `0.91x / 0.97x`.
pub(crate) fn ratios_note(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| format!("{r:.2}x"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `value / reference`, when both make sense.
pub(crate) fn ratio(value: f64, reference: f64) -> Option<f64> {
    (reference > 0.0 && value.is_finite()).then(|| value / reference)
}

/// Summarises download runs into a row.
pub(crate) fn download_row(
    scenario: String,
    runs: &[DownloadRun],
    reference_bytes_per_s: Option<f64>,
    ratio_to: &str,
    minimum: Option<f64>,
) -> Row {
    let ok: Vec<&DownloadRun> = runs.iter().filter(|r| r.error.is_none()).collect();
    let failures: Vec<&str> = runs.iter().filter_map(|r| r.error.as_deref()).collect();
    let bytes = ok.first().map(|r| r.bytes);
    let seconds = median(ok.iter().map(|r| r.seconds));
    let rate = match (bytes, seconds) {
        (Some(b), Some(s)) if s > 0.0 => Some(b as f64 / s),
        _ => None,
    };
    let r = match (rate, reference_bytes_per_s) {
        (Some(v), Some(reference)) => ratio(v, reference),
        _ => None,
    };
    let mut notes = Vec::new();
    if let Some(last) = ok.last() {
        notes.extend(shares_note(&last.holders));
        let all: Vec<String> = ok.iter().map(|r| format!("{:.3}", r.seconds)).collect();
        notes.push(format!("runs: {} s", all.join(" / ")));
    }
    notes.push(format!("{}/{} ok", ok.len(), runs.len()));
    if !failures.is_empty() {
        notes.push(format!("FAILED: {}", failures.join("; ")));
    }
    Row {
        scenario,
        bytes,
        seconds,
        mb_per_s: rate.map(|r| r / 1e6),
        peak_rss: ok.iter().filter_map(|r| r.peak_rss).max(),
        ratio: r,
        ratio_to: ratio_to.to_string(),
        target: minimum.map_or(String::new(), |m| format!(">= {m:.2}x")),
        pass: match (r, minimum) {
            (Some(r), Some(m)) => Some(r >= m && failures.is_empty()),
            (_, Some(_)) => Some(false),
            _ => None,
        },
        notes: notes.join("; "),
    }
}

/// "shares (last run): A 33%, B 67%": what each holder delivered of a run, when more than one
/// did.
pub(crate) fn shares_note(holders: &[(String, u64)]) -> Option<String> {
    let total: u64 = holders.iter().map(|(_, b)| *b).sum();
    if holders.len() < 2 || total == 0 {
        return None;
    }
    let shares: Vec<String> = holders
        .iter()
        .map(|(id, b)| format!("{id} {:.0}%", 100.0 * *b as f64 / total as f64))
        .collect();
    Some(format!("shares (last run): {}", shares.join(", ")))
}

/// The row of a scenario that could not run.
pub(crate) fn failed_row(scenario: &str, e: &BenchError) -> Row {
    Row {
        scenario: scenario.to_string(),
        pass: Some(false),
        notes: format!("FAILED: {e}"),
        ..Row::default()
    }
}

fn opt(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".into())
}

fn format_seconds(s: f64) -> String {
    if s < 0.1 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

fn cells(row: &Row) -> [String; 8] {
    [
        row.scenario.clone(),
        opt(row.bytes.map(human::bytes)),
        opt(row.seconds.map(format_seconds)),
        opt(row.mb_per_s.map(|m| format!("{m:.1}"))),
        opt(row.peak_rss.map(human::bytes)),
        opt(row.ratio.map(|r| {
            if row.ratio_to.is_empty() {
                format!("{r:.3}x")
            } else {
                format!("{r:.3}x {}", row.ratio_to)
            }
        })),
        match row.pass {
            Some(true) => format!("{} PASS", row.target),
            Some(false) => format!("{} MISS", row.target),
            None => row.target.clone(),
        },
        row.notes.clone(),
    ]
}

/// A row as one line of progress output.
pub(crate) fn format_row_line(row: &Row) -> String {
    let c = cells(row);
    format!(
        "{}: {} in {}, {} MB/s, peak RSS {}, ratio {}, target {}; {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    )
}

/// The rows as a Markdown table.
pub(crate) fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | bytes | seconds (median) | MB/s | peak RSS | ratio | target | notes |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n",
    );
    for row in rows {
        let c = cells(row).map(|s| s.replace('|', "/"));
        out.push_str(&format!("| {} |\n", c.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::<f64>::new()), None);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(50.0));
        assert_eq!(percentile(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile(&sorted[..1], 0.99), Some(1.0));
    }

    #[test]
    fn the_table_has_a_line_per_row() {
        let rows = vec![
            Row {
                scenario: "a | b".into(),
                seconds: Some(0.0012),
                pass: Some(true),
                target: "< 5 ms".into(),
                ..Row::default()
            },
            Row::default(),
        ];
        let table = markdown_table(&rows);
        assert_eq!(table.lines().count(), 4);
        assert!(table.contains("| a / b | - | 1.20 ms |"));
        assert!(table.contains("< 5 ms PASS"));
    }
}
