//! The child process's side: the work of each [`Plan`], run on the child's own runtime with a
//! peer of its own. Timed downloads, `get` of many files, the stress pass and a timed start-up;
//! the `WhoHas` load is in [`crate::tracker_load`].

use crate::child::{
    ChildPeer, ChildReport, DownloadRun, GetManyReport, Plan, SeedReport, StartupReport,
    StressReport,
};
use crate::memory::{peak_rss, reset_peak_rss};
use crate::tracker_load;
use p2pshare::chunking::ContentId;
use p2pshare::peer::download::{Destination, DownloadRequest, Progress};
use p2pshare::peer::server::{RateLimiter, ServeLimits};
use p2pshare::peer::{PeerConfig, PeerNode};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Single downloads measured inside the stress scenario, for its reference rate.
pub(crate) const STRESS_SINGLES: usize = 3;

async fn start_child_peer(peer: &ChildPeer) -> Result<Arc<PeerNode>, String> {
    start_child_peer_with(peer, ServeLimits::default()).await
}

async fn start_child_peer_with(
    peer: &ChildPeer,
    limits: ServeLimits,
) -> Result<Arc<PeerNode>, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let mut config = PeerConfig::new(&peer.id, peer.dir.clone(), &peer.tracker);
    config.limits = limits;
    let (node, info) = PeerNode::start(config, listener)
        .await
        .map_err(|e| format!("peer {}: {e}", peer.id))?;
    if let Err(e) = info.registration {
        node.shutdown().await;
        return Err(format!("peer {} could not register: {e}", peer.id));
    }
    Ok(node)
}

/// Shuts `node` down, or kills it if it has not finished within 10 s.
pub(crate) async fn stop_peer(node: &PeerNode) {
    if tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .is_err()
    {
        node.kill();
    }
}

/// Runs a plan in this (child) process; `Err` is a failure of the plan as a whole.
pub(crate) async fn run_plan(plan: Plan) -> Result<ChildReport, String> {
    match plan {
        Plan::Download {
            peer,
            name,
            content_id,
            runs,
            check,
        } => {
            let expected: ContentId = content_id.parse().map_err(|_| "bad content id")?;
            let node = start_child_peer(&peer).await?;
            let mut results = Vec::new();
            for _ in 0..runs {
                results.push(timed_download(&node, &name, check.then_some(expected)).await);
            }
            stop_peer(&node).await;
            Ok(ChildReport::Download(results))
        }
        Plan::GetMany {
            peer,
            names,
            parallel,
        } => {
            let node = start_child_peer(&peer).await?;
            reset_peak_rss();
            let report = get_many(&node, names, parallel as usize).await;
            stop_peer(&node).await;
            Ok(ChildReport::GetMany(report))
        }
        Plan::Stress {
            peer,
            name,
            content_id,
            downloads,
        } => {
            let expected: ContentId = content_id.parse().map_err(|_| "bad content id")?;
            let node = start_child_peer(&peer).await?;
            let report = stress(&node, &name, expected, downloads).await;
            stop_peer(&node).await;
            Ok(ChildReport::Stress(report))
        }
        Plan::Startup { peer } => {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let config = PeerConfig::new(&peer.id, peer.dir.clone(), &peer.tracker);
            let started = Instant::now();
            let (node, info) = PeerNode::start(config, listener)
                .await
                .map_err(|e| e.to_string())?;
            let seconds = started.elapsed().as_secs_f64();
            let report = StartupReport {
                seconds,
                hashed_bytes: info.hashed_bytes,
                shared: info.shared,
                registration_error: info.registration.err(),
                peak_rss: peak_rss(),
            };
            stop_peer(&node).await;
            Ok(ChildReport::Startup(report))
        }
        Plan::Seed {
            peer,
            upload_rate,
            max_seconds,
        } => {
            let limits = ServeLimits {
                upload_rate: Some(Arc::new(RateLimiter::new(upload_rate))),
                ..ServeLimits::default()
            };
            let node = start_child_peer_with(&peer, limits).await?;
            let report = seed(&node, Duration::from_secs(max_seconds)).await;
            stop_peer(&node).await;
            report.map(ChildReport::Seed)
        }
        Plan::TrackerLoad {
            tracker,
            register,
            peers,
            files_per_peer,
            connections,
            in_flight,
            seconds,
            tracker_pid,
        } => tracker_load::tracker_load(
            tracker_load::Target {
                address: &tracker,
                pid: tracker_pid,
            },
            register,
            peers,
            files_per_peer,
            connections,
            &in_flight,
            seconds,
        )
        .await
        .map(ChildReport::TrackerLoad),
    }
}

/// Says [`ChildReport::Ready`] on standard output, serves until standard input closes (or
/// `max` passes), and reports what `node` uploaded meanwhile.
async fn seed(node: &PeerNode, max: Duration) -> Result<SeedReport, String> {
    let ready = serde_json::to_string(&ChildReport::Ready).map_err(|e| e.to_string())?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ready}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    reset_peak_rss();
    let started = Instant::now();
    // The plan's line has been read; the rest of standard input is the stop signal (EOF). The
    // blocking read is left behind if `max` passes first: the process ends after the report.
    let closed = tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    });
    if tokio::time::timeout(max, closed).await.is_err() {
        tracing::warn!(
            ?max,
            "seeder: stopped by its own deadline, not by the bench"
        );
    }
    Ok(SeedReport {
        bytes_uploaded: node.bytes_uploaded(),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss: peak_rss(),
    })
}

/// Checks a downloaded copy against `expected` (off the clock; `None`: no check), then deletes
/// it.
async fn check_and_remove(path: Option<PathBuf>, expected: Option<ContentId>) -> Option<String> {
    let path = path?;
    let Some(expected) = expected else {
        let _ = std::fs::remove_file(&path);
        return None;
    };
    let checked = tokio::task::spawn_blocking(move || {
        let id = ContentId::of_file(&path);
        let _ = std::fs::remove_file(&path);
        id
    })
    .await;
    match checked {
        Ok(Ok(id)) if id == expected => None,
        Ok(Ok(id)) => Some(format!(
            "copy hashes to {}, not {}",
            id.short(),
            expected.short()
        )),
        Ok(Err(e)) => Some(format!("copy unreadable: {e}")),
        Err(e) => Some(format!("check failed: {e}")),
    }
}

async fn timed_download(node: &PeerNode, name: &str, expected: Option<ContentId>) -> DownloadRun {
    let request = DownloadRequest::parse(name, Destination::ScratchNoSync);
    reset_peak_rss();
    let started = Instant::now();
    let result = node.download(&request, Arc::new(Progress::default())).await;
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss();
    match result {
        Ok(report) => {
            let error = check_and_remove(report.path.clone(), expected).await;
            DownloadRun {
                seconds,
                bytes: report.size,
                peak_rss: peak,
                holders: report
                    .holders
                    .iter()
                    .map(|h| (h.peer_id.clone(), h.bytes))
                    .collect(),
                error,
            }
        }
        Err(e) => DownloadRun {
            seconds,
            bytes: 0,
            peak_rss: peak,
            holders: vec![],
            error: Some(e.to_string()),
        },
    }
}

async fn get_many(node: &Arc<PeerNode>, names: Vec<String>, parallel: usize) -> GetManyReport {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut latencies = Vec::with_capacity(names.len());
    let mut failures = Vec::new();
    let mut record = |joined: Result<Result<f64, String>, tokio::task::JoinError>| match joined {
        Ok(Ok(seconds)) => latencies.push(seconds),
        Ok(Err(e)) => failures.push(e),
        Err(e) => failures.push(e.to_string()),
    };
    for name in names {
        while tasks.len() >= parallel.max(1) {
            if let Some(joined) = tasks.join_next().await {
                record(joined);
            }
        }
        let node = node.clone();
        tasks.spawn(async move {
            let request = DownloadRequest::parse(&name, Destination::Files);
            let t = Instant::now();
            node.download(&request, Arc::new(Progress::default()))
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            Ok(t.elapsed().as_secs_f64())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        record(joined);
    }
    GetManyReport {
        latencies,
        seconds: started.elapsed().as_secs_f64(),
        failures,
        peak_rss: peak_rss(),
    }
}

async fn stress(
    node: &Arc<PeerNode>,
    name: &str,
    expected: ContentId,
    downloads: u32,
) -> StressReport {
    let mut single_seconds = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..STRESS_SINGLES {
        let run = timed_download(node, name, Some(expected)).await;
        match run.error {
            None => single_seconds.push(run.seconds),
            Some(e) => failures.push(format!("single: {e}")),
        }
    }
    reset_peak_rss();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..downloads {
        let node = node.clone();
        let request = DownloadRequest::parse(name, Destination::ScratchNoSync);
        tasks.spawn(async move { node.download(&request, Arc::new(Progress::default())).await });
    }
    let mut copies = Vec::new();
    let mut bytes = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(report)) => {
                bytes += report.size;
                copies.push(report.path);
            }
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss();
    // Off the clock: every copy is hashed again, whole, and deleted.
    let succeeded = copies.len() as u32;
    let mut mismatched = 0;
    for path in copies {
        if let Some(why) = check_and_remove(path, Some(expected)).await {
            mismatched += 1;
            failures.push(why);
        }
    }
    StressReport {
        single_seconds,
        seconds,
        succeeded,
        failures,
        mismatched,
        bytes,
        peak_rss: peak,
    }
}
