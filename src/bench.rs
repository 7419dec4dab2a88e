//! Measurements: `bench` (sequential downloads, logged to `download_times.csv`) and `stress`
//! (parallel downloads, every copy checked) for the peer shell.

use crate::chunking::{ContentId, Manifest};
use crate::console::{ProgressDisplay, ProgressMode};
use crate::human;
use crate::peer::download::{Destination, DownloadReport, DownloadRequest};
use crate::peer::PeerNode;
use crate::progress::Progress;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Name of the CSV file `bench` appends to, in the peer's directory.
pub(crate) const CSV_NAME: &str = "download_times.csv";
/// The CSV header.
pub(crate) const CSV_HEADER: [&str; 8] = [
    "timestamp",
    "peer_id",
    "file",
    "bytes",
    "run",
    "seconds",
    "mb_per_s",
    "holders",
];

/// One row of `download_times.csv`.
#[derive(Debug, Clone)]
pub(crate) struct BenchRow {
    /// Seconds since the Unix epoch when the run ended.
    pub timestamp: f64,
    /// The downloading peer.
    pub peer_id: String,
    /// File name.
    pub file: String,
    /// Bytes transferred.
    pub bytes: u64,
    /// Run number, from 1.
    pub run: u32,
    /// Wall time.
    pub seconds: f64,
    /// Throughput in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// Holders used.
    pub holders: usize,
}

/// Appends rows to the CSV at `path`, writing the header first if the file is new or empty.
pub(crate) fn append_csv(path: &Path, rows: &[BenchRow]) -> std::io::Result<()> {
    let new = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut writer = csv::Writer::from_writer(file);
    if new {
        writer.write_record(CSV_HEADER)?;
    }
    for r in rows {
        writer.write_record([
            format!("{:.3}", r.timestamp),
            r.peer_id.clone(),
            r.file.clone(),
            r.bytes.to_string(),
            r.run.to_string(),
            format!("{:.6}", r.seconds),
            format!("{:.3}", r.mb_per_s),
            r.holders.to_string(),
        ])?;
    }
    writer.flush()
}

/// One scratch download: a real transfer from the other holders, verified and made durable
/// (fsync, as `get` does before the file appears in `files/`), then deleted.
async fn scratch_download(
    node: &PeerNode,
    file: &str,
    progress: Arc<Progress>,
) -> Result<DownloadReport, String> {
    let request = DownloadRequest::parse(file, Destination::Scratch);
    let report = node
        .download(&request, progress)
        .await
        .map_err(|e| e.to_string())?;
    Ok(report)
}

fn remove_scratch(report: &DownloadReport) {
    if let Some(path) = &report.path {
        let _ = std::fs::remove_file(path);
    }
}

/// `bench <file> [runs]`: downloads `file` `runs` times in a row, prints each run and the mean,
/// appends one row per run to `download_times.csv`. Each run is durable like a `get` (its copy is
/// fsynced before the clock stops), so `bench` times what `get` costs.
pub(crate) async fn bench(
    node: &Arc<PeerNode>,
    file: &str,
    runs: u32,
    out: &mut dyn Write,
    mode: ProgressMode,
) -> Result<Vec<BenchRow>, String> {
    let csv_path = node.store().root().join(CSV_NAME);
    let mut rows = Vec::new();
    for run in 1..=runs {
        let progress = Arc::new(Progress::default());
        let display =
            ProgressDisplay::start(format!("run {run}/{runs}"), vec![progress.clone()], mode);
        // One span per run, so each run's logs say which run they belong to.
        let report = scratch_download(node, file, progress)
            .instrument(tracing::info_span!("bench", file, run))
            .await;
        display.finish().await;
        let report = report?;
        remove_scratch(&report);
        let row = BenchRow {
            timestamp: crate::peer::store::unix_now(),
            peer_id: node.id().to_string(),
            file: report.name.clone(),
            bytes: report.size,
            run,
            seconds: report.elapsed.as_secs_f64(),
            mb_per_s: human::mb_per_sec(report.size, report.elapsed),
            holders: report.holders.len(),
        };
        let _ = writeln!(
            out,
            "run {run}/{runs}: {} in {}, {:.1} MB/s from {} holder(s)",
            human::bytes(row.bytes),
            human::duration(report.elapsed),
            row.mb_per_s,
            row.holders
        );
        append_csv(&csv_path, std::slice::from_ref(&row))
            .map_err(|e| format!("writing {}: {e}", csv_path.display()))?;
        rows.push(row);
    }
    let mean_secs = rows.iter().map(|r| r.seconds).sum::<f64>() / rows.len().max(1) as f64;
    let mean_rate = rows.iter().map(|r| r.mb_per_s).sum::<f64>() / rows.len().max(1) as f64;
    let _ = writeln!(
        out,
        "mean of {runs} run(s): {}, {mean_rate:.1} MB/s (durable: each copy fsynced before its clock stops, like get); rows appended to {}",
        human::duration(Duration::from_secs_f64(mean_secs)),
        csv_path.display()
    );
    Ok(rows)
}

/// What `stress` found.
#[derive(Debug, Clone)]
pub(crate) struct StressReport {
    /// Downloads that completed.
    pub succeeded: usize,
    /// Failures with their messages.
    pub failed: Vec<String>,
    /// Completed copies whose bytes do not hash to the expected content id.
    pub mismatched: usize,
    /// Wall time for all of them.
    pub elapsed: Duration,
    /// Bytes delivered by the successful downloads.
    pub bytes: u64,
}

/// `stress <file> [threads]`: runs `threads` downloads at once, then re-hashes every copy from
/// disk and checks it against the content id the tracker announced.
pub(crate) async fn stress(
    node: &Arc<PeerNode>,
    file: &str,
    threads: u32,
    out: &mut dyn Write,
    mode: ProgressMode,
) -> Result<StressReport, String> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let progress: Vec<Arc<Progress>> = (0..threads).map(|_| Arc::default()).collect();
    let display = ProgressDisplay::start(format!("stress x{threads}"), progress.clone(), mode);
    for (n, item) in progress.into_iter().enumerate() {
        let node = node.clone();
        // One span per download (spawned tasks do not inherit the caller's), so the logs of
        // concurrent downloads can be told apart.
        let span = tracing::info_span!("stress", file, n);
        let file = file.to_string();
        let download = async move {
            let report = scratch_download(&node, &file, item).await?;
            // Independent check of the copy on disk: hash it again, whole.
            let path = report.path.clone();
            let copy_id = tokio::task::spawn_blocking(move || -> Option<ContentId> {
                let path = path?;
                let f = std::fs::File::open(&path).ok()?;
                let size = f.metadata().ok()?.len();
                Some(
                    Manifest::from_reader(std::io::BufReader::new(f), size)
                        .ok()?
                        .content_id(),
                )
            })
            .await
            .ok()
            .flatten();
            remove_scratch(&report);
            Ok::<_, String>((report, copy_id))
        };
        tasks.spawn(download.instrument(span));
    }
    let mut result = StressReport {
        succeeded: 0,
        failed: vec![],
        mismatched: 0,
        elapsed: Duration::ZERO,
        bytes: 0,
    };
    let mut ids = std::collections::BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((report, copy_id))) => {
                result.succeeded += 1;
                result.bytes += report.size;
                ids.insert(report.content_id);
                if copy_id != Some(report.content_id) {
                    result.mismatched += 1;
                }
            }
            Ok(Err(e)) => result.failed.push(e),
            Err(e) => result.failed.push(format!("task failed: {e}")),
        }
    }
    result.elapsed = started.elapsed();
    display.finish().await;
    let identical = result.mismatched == 0 && ids.len() <= 1;
    let _ = writeln!(
        out,
        "stress {file}: {}/{threads} succeeded, {} failed; copies {}; {} in {}, aggregate {:.1} MB/s",
        result.succeeded,
        result.failed.len(),
        if identical { "all byte-identical to the original" } else { "NOT all identical" },
        human::bytes(result.bytes),
        human::duration(result.elapsed),
        human::mb_per_sec(result.bytes, result.elapsed)
    );
    let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
    for f in &result.failed {
        *reasons.entry(f.as_str()).or_default() += 1;
    }
    for (why, n) in reasons {
        let _ = writeln!(out, "  {n} failed: {why}");
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_gets_one_header_and_a_row_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CSV_NAME);
        let row = |run| BenchRow {
            timestamp: 1.5,
            peer_id: "A".into(),
            file: "f,1".into(),
            bytes: 10,
            run,
            seconds: 0.25,
            mb_per_s: 4e-5,
            holders: 2,
        };
        append_csv(&path, &[row(1)]).unwrap();
        append_csv(&path, &[row(2), row(3)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "timestamp,peer_id,file,bytes,run,seconds,mb_per_s,holders"
        );
        assert_eq!(lines[3], "1.500,A,\"f,1\",10,3,0.250000,0.000,2");
    }
}
