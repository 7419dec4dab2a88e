//! The tracker scenario's load generator (run in a child process): registers many synthetic
//! peers, then asks `WhoHas` for random names from several connections with several calls in
//! flight on each, and reports request rates and latency percentiles.
//!
//! Each `WhoHas` measurement has a twin, run in alternating slices with it: the same load of the
//! standard health `Check`, which the tracker's own server answers (same connections, same
//! server stack and middleware) without doing any work of its own. That is the empty unary RPC
//! the `WhoHas` rate is a ratio to, so the figure says what the tracker costs whatever the
//! machine.

use crate::child::{LoadReport, TrackerLoadReport};
use crate::memory::{cpu_seconds, peak_rss, reset_peak_rss};
use crate::report::percentile;
use p2pshare::chunking::ContentId;
use p2pshare::pb::tracker as tpb;
use p2pshare::pb::tracker::tracker_client::TrackerClient;
use rand::RngCore;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The tracker under load.
pub(crate) struct Target<'a> {
    /// Its address, or several trackers' (comma-separated: trackers sharing one store), the
    /// connections dealt over them in turn.
    pub(crate) address: &'a str,
    /// The process serving it, whose CPU time each measurement reports.
    pub(crate) pid: u32,
}

/// The RPC a load measurement sends.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    /// `WhoHas` of a random one of this many synthetic names.
    WhoHas { names: u32 },
    /// The health `Check` of the whole server: the empty RPC.
    HealthCheck,
}

/// The synthetic catalog: peer `p` holds `files` names, `f{(p + k * peers / files) % peers}`,
/// so each of the `peers` names has `files` holders.
fn synthetic_files(peer: u32, peers: u32, files: u32) -> Vec<tpb::FileEntry> {
    let stride = (peers / files.max(1)).max(1);
    (0..files)
        .map(|k| {
            let name = synthetic_name((peer + k * stride) % peers);
            tpb::FileEntry {
                content_id: ContentId::of(name.as_bytes()).to_hex(),
                size: 1 << 20,
                name,
                ..Default::default()
            }
        })
        .collect()
}

fn synthetic_name(index: u32) -> String {
    format!("f{index:07}.bin")
}

/// Registers the synthetic peers (if `register`), then measures `WhoHas` once per `in_flight`
/// value; run in a child process.
pub(crate) async fn tracker_load(
    Target {
        address: tracker,
        pid: tracker_pid,
    }: Target<'_>,
    register: bool,
    peers: u32,
    files_per_peer: u32,
    connections: u32,
    in_flight: &[u32],
    seconds: u32,
) -> Result<TrackerLoadReport, String> {
    let trackers: Vec<&str> = tracker.split(',').collect();
    let channels = (0..connections.max(1) as usize)
        .map(|i| p2pshare::grpc::channel(trackers[i % trackers.len()]).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    reset_peak_rss();
    let mut report = TrackerLoadReport {
        register_seconds: 0.0,
        register_errors: 0,
        loads: vec![],
        baselines: vec![],
        peak_rss: None,
    };
    if register {
        // Four registrations in flight per connection.
        let started = Instant::now();
        let lanes = channels.len() as u32 * 4;
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..lanes {
            let mut client = TrackerClient::new(channels[(lane as usize) % channels.len()].clone());
            tasks.spawn(async move {
                let mut errors = 0u64;
                let mut p = lane;
                while p < peers {
                    let request = tpb::RegisterRequest {
                        peer_id: format!("p{p:07}"),
                        port: 1024 + p % 60_000,
                        advertise_host: String::new(),
                        files: synthetic_files(p, peers, files_per_peer),
                        session_token: String::new(),
                        ..Default::default()
                    };
                    let call =
                        tokio::time::timeout(Duration::from_secs(10), client.register(request));
                    if !matches!(call.await, Ok(Ok(_))) {
                        errors += 1;
                    }
                    p += lanes;
                }
                errors
            });
        }
        while let Some(joined) = tasks.join_next().await {
            report.register_errors += joined.unwrap_or(1);
        }
        report.register_seconds = started.elapsed().as_secs_f64();
    }
    for &depth in in_flight {
        let (empty, who_has) = load_pair(&channels, tracker_pid, peers, depth, seconds).await;
        report.baselines.push(empty);
        report.loads.push(who_has);
    }
    report.peak_rss = peak_rss();
    Ok(report)
}

/// Slices each measurement of a pair is cut into.
const SLICES: u32 = 10;

/// The empty RPC and `WhoHas` (of `names` names), `seconds` of each, in alternating slices
/// (ABBA order): whatever else the machine runs meanwhile weighs on both alike, so their ratio
/// holds on a busy machine where two back-to-back runs can differ by 2x.
async fn load_pair(
    channels: &[Channel],
    tracker_pid: u32,
    names: u32,
    depth: u32,
    seconds: u32,
) -> (LoadReport, LoadReport) {
    let rpcs = [Rpc::HealthCheck, Rpc::WhoHas { names }];
    // Warm up: every connection established and used once by each RPC before the clock starts.
    for channel in channels {
        for rpc in rpcs {
            let mut caller = Caller::new(channel, rpc);
            let _ = tokio::time::timeout(Duration::from_secs(5), caller.call(0)).await;
        }
    }
    let slice = Duration::from_secs(seconds.into()) / SLICES;
    let mut tallies = [Tally::default(), Tally::default()];
    for round in 0..SLICES as usize {
        for k in 0..2 {
            let which = if round % 2 == 0 { k } else { 1 - k };
            let cpu_before = [cpu_seconds(tracker_pid), cpu_seconds(std::process::id())];
            let (latencies, errors, seconds) = load(channels, rpcs[which], depth, slice).await;
            let tally = &mut tallies[which];
            tally.latencies.extend(latencies);
            tally.errors += errors;
            tally.seconds += seconds;
            tally.tracker_cpu += cpu_seconds(tracker_pid) - cpu_before[0];
            tally.client_cpu += cpu_seconds(std::process::id()) - cpu_before[1];
        }
    }
    let [empty, who_has] = tallies;
    (empty.report(depth), who_has.report(depth))
}

/// The sum of the slices of one measurement.
#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    errors: u64,
    seconds: f64,
    tracker_cpu: f64,
    client_cpu: f64,
}

impl Tally {
    fn report(mut self, depth: u32) -> LoadReport {
        self.latencies.sort_by(f64::total_cmp);
        LoadReport {
            in_flight: depth,
            requests: self.latencies.len() as u64,
            errors: self.errors,
            seconds: self.seconds,
            p50: percentile(&self.latencies, 0.50).unwrap_or(f64::NAN),
            p99: percentile(&self.latencies, 0.99).unwrap_or(f64::NAN),
            tracker_cpu: self.tracker_cpu,
            client_cpu: self.client_cpu,
        }
    }
}

/// `rpc` from every connection, `depth` calls in flight on each, for `length`: the latencies
/// of the calls answered, the calls that failed, and the seconds it took.
async fn load(
    channels: &[Channel],
    rpc: Rpc,
    depth: u32,
    length: Duration,
) -> (Vec<f64>, u64, f64) {
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = tokio::task::JoinSet::new();
    for channel in channels {
        for _ in 0..depth.max(1) {
            let mut caller = Caller::new(channel, rpc);
            let mut seed = rand::rng().next_u64() | 1;
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    // xorshift: cheap and good enough to spread the names.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let t = Instant::now();
                    let answer =
                        tokio::time::timeout(Duration::from_secs(5), caller.call(seed)).await;
                    match answer {
                        Ok(Ok(())) => latencies.push(t.elapsed().as_secs_f64()),
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            });
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    (latencies, errors, started.elapsed().as_secs_f64())
}

/// One lane's client: the same channel and loop for every [`Rpc`], only the call differs.
enum Caller {
    WhoHas {
        client: TrackerClient<Channel>,
        names: u32,
    },
    HealthCheck(HealthClient<Channel>),
}

impl Caller {
    fn new(channel: &Channel, rpc: Rpc) -> Self {
        match rpc {
            Rpc::WhoHas { names } => Caller::WhoHas {
                client: TrackerClient::new(channel.clone()),
                names,
            },
            Rpc::HealthCheck => Caller::HealthCheck(HealthClient::new(channel.clone())),
        }
    }

    /// One call; `random` picks the name asked for.
    async fn call(&mut self, random: u64) -> Result<(), tonic::Status> {
        match self {
            Caller::WhoHas { client, names } => {
                let request = tpb::WhoHasRequest {
                    name: synthetic_name((random % u64::from((*names).max(1))) as u32),
                    content_id_prefix: String::new(),
                    ..Default::default()
                };
                client.who_has(request).await.map(drop)
            }
            Caller::HealthCheck(client) => {
                // The whole server's status (""), which every server of this crate reports.
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                client.check(request).await.map(drop)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn synthetic_names_have_files_per_peer_holders() {
        let (peers, files) = (100, 10);
        let mut holders = BTreeMap::<String, u32>::new();
        for p in 0..peers {
            let entries = synthetic_files(p, peers, files);
            assert_eq!(entries.len(), files as usize);
            for e in entries {
                *holders.entry(e.name).or_default() += 1;
            }
        }
        assert_eq!(holders.len(), peers as usize);
        assert!(holders.values().all(|&n| n == files));
    }
}
