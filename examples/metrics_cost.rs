//! What metrics cost on the hot path: one process, one tracker, two holder/downloader pairs that
//! differ only in having metrics (`ServerLimits::metrics`), downloads of the same size from each
//! alternated, so both see the same machine noise. Prints each run and the ratio of medians.
//!
//! `cargo run --release --example metrics_cost -- [SIZE_MIB] [ROUNDS]` (default 512 MiB, 5).

use p2pshare::grpc::ServiceKind;
use p2pshare::metrics::Metrics;
use p2pshare::peer::download::{Destination, DownloadRequest, Progress};
use p2pshare::peer::{PeerConfig, PeerNode};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

async fn peer(
    id: &str,
    root: &Path,
    tracker: &str,
    file: Option<(&str, &[u8])>,
    metrics: Option<Metrics>,
) -> Arc<PeerNode> {
    let dir = root.join(id);
    std::fs::create_dir_all(dir.join("files")).unwrap();
    if let Some((name, data)) = file {
        std::fs::write(dir.join("files").join(name), data).unwrap();
    }
    let mut config = PeerConfig::new(id, dir, tracker);
    config.limits.connections.metrics = metrics;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    PeerNode::start(config, listener).await.unwrap().0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(512, |a| a.parse().expect("SIZE_MIB"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let size = mib << 20;
    let root = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracker = listener.local_addr().unwrap().to_string();
    tokio::spawn(p2pshare::tracker::serve(
        listener,
        p2pshare::tracker::TrackerConfig::default(),
        std::future::pending(),
    ));
    // Different content per pair, so each downloader finds only its own holder.
    let data = |seed: u8| -> Vec<u8> {
        (0..size)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
            .collect()
    };
    let on = Metrics::new(ServiceKind::Peer);
    let on_getter = Metrics::new(ServiceKind::Peer);
    let _holder_on = peer(
        "hon",
        root.path(),
        &tracker,
        Some(("on.bin", &data(1))),
        Some(on.clone()),
    )
    .await;
    let _holder_off = peer(
        "hoff",
        root.path(),
        &tracker,
        Some(("off.bin", &data(2))),
        None,
    )
    .await;
    let getter_on = peer("gon", root.path(), &tracker, None, Some(on_getter)).await;
    let getter_off = peer("goff", root.path(), &tracker, None, None).await;
    let get = |node: Arc<PeerNode>, name: &'static str| async move {
        let request = DownloadRequest::parse(name, Destination::ScratchNoSync);
        let started = Instant::now();
        let report = node
            .download(&request, Arc::new(Progress::default()))
            .await
            .expect("download");
        let seconds = started.elapsed().as_secs_f64();
        if let Some(path) = &report.path {
            let _ = std::fs::remove_file(path);
        }
        size as f64 / seconds / 1e6
    };
    // A first download of each, not counted: connections, page cache.
    get(getter_on.clone(), "on.bin").await;
    get(getter_off.clone(), "off.bin").await;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first.
        if round % 2 == 0 {
            with.push(get(getter_on.clone(), "on.bin").await);
            without.push(get(getter_off.clone(), "off.bin").await);
        } else {
            without.push(get(getter_off.clone(), "off.bin").await);
            with.push(get(getter_on.clone(), "on.bin").await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("{mib} MiB from one holder, {rounds} rounds (MB/s)");
    println!(
        "metrics off: {}  median {:.0}",
        show(&without),
        median(without.clone())
    );
    println!(
        "metrics on:  {}  median {:.0}",
        show(&with),
        median(with.clone())
    );
    println!("on / off: {:.3}", median(with) / median(without));
    let served = on
        .encode_text()
        .lines()
        .find(|l| l.starts_with("p2pshare_peer_served_bytes_total"))
        .map(str::to_string);
    println!("holder with metrics: {served:?}");
}
