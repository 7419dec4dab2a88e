//! `tracker`: runs the p2pshare Tracker service.

use anyhow::Context;
use clap::Parser;
use p2pshare::grpc::{ConnectionFlags, ServerSecurity, SwarmKey, TlsIdentity};
use p2pshare::tracker::{StoreConfig, TrackerLimits, TrackerStore, DEFAULT_REDIS_PREFIX};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// jemalloc, as in `peer` (where glibc's allocator cost a quarter of a holder's CPU time in page
/// faults): one allocator for every binary of the crate.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The p2pshare tracker: registers peers and knows who holds which file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on (all interfaces by default).
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Seconds between peer heartbeats; a peer silent for 3 intervals is dropped.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat_interval: u64,
    /// Private swarm: refuse every call (health checks excepted) that does not carry this shared
    /// secret (printable ASCII, e.g. from `openssl rand -hex 32`). Every peer needs the same key.
    #[arg(
        long,
        env = "P2PSHARE_SWARM_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    swarm_key: Option<SwarmKey>,
    /// Serve TLS with this certificate (PEM; needs an IP SAN for each address peers dial).
    /// Plaintext connections are then refused. Requires --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most live peers in all; past it a registration gets RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = TrackerLimits::default().max_peers)]
    max_peers: usize,
    /// Most live peers registered from one IP address (as the tracker sees it).
    #[arg(long, value_name = "N", default_value_t = TrackerLimits::default().max_peers_per_ip)]
    max_peers_per_ip: usize,
    /// Most files in one peer's catalog.
    #[arg(long, value_name = "N", default_value_t = TrackerLimits::default().max_files_per_peer)]
    max_files_per_peer: usize,
    /// Most files in all the catalogs of the peers registered from one IP address.
    #[arg(long, value_name = "N", default_value_t = TrackerLimits::default().max_files_per_ip)]
    max_files_per_ip: usize,
    /// Most catalog entries (one per file per peer) in the whole swarm; bounds the tracker's
    /// memory (about 350-600 bytes an entry, by name length).
    #[arg(long, value_name = "N", default_value_t = TrackerLimits::default().max_catalog_files)]
    max_catalog_files: usize,
    /// Where the tracker keeps who is alive and who holds what: `memory` (this process), a Redis 7
    /// server `redis://HOST:PORT[/DB]`, or a Redis Cluster `redis+cluster://HOST:PORT[,HOST:PORT...]`
    /// (any of its nodes), shared with other trackers: trackers on one Redis serve one swarm, and
    /// a restarted one serves it at once.
    #[arg(long, value_name = "STORE", default_value = "memory")]
    store: String,
    /// With a Redis store: the prefix of its keys (`{PREFIX}:...`, one hash tag), so several
    /// swarms can share one server.
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_REDIS_PREFIX)]
    store_prefix: String,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (an IP address or a host name,
    /// resolved at start; port 0 picks one).
    #[arg(long, value_name = "HOST:PORT", value_parser = p2pshare::cli::listen_address)]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    connections: ConnectionFlags,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    p2pshare::cli::init_logging("info");
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => p2pshare::cli::fail(&e),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::from_files(cert, key)?),
        _ => None,
    };
    let security = ServerSecurity {
        swarm_key: args.swarm_key.clone(),
        tls,
    };
    // Checked before the port is taken: a wrong URL fails at once, naming the flag.
    let store = StoreConfig::parse(&args.store, &args.store_prefix)?;
    let config = p2pshare::tracker::TrackerConfig {
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval),
    };
    let limits = TrackerLimits {
        max_peers: args.max_peers,
        max_peers_per_ip: args.max_peers_per_ip,
        max_files_per_peer: args.max_files_per_peer,
        max_files_per_ip: args.max_files_per_ip,
        max_catalog_files: args.max_catalog_files,
    };
    let opened = TrackerStore::open(&store, &config, limits).await?;
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (port in use? try --port 0 or another port)")
    })?;
    let local = listener.local_addr()?;
    println!("tracker listening on {local}");
    for reachable in p2pshare::cli::reachable_addresses(local) {
        println!("  peers can reach it at {reachable}");
    }
    println!("heartbeat interval {} s", args.heartbeat_interval);
    println!("store {store}");
    if security.swarm_key.is_some() {
        println!("private swarm: calls need the swarm key");
    }
    if let Some(cert) = &args.tls_cert {
        println!("TLS on (certificate {})", cert.display());
    }
    let mut connection_limits = args.connections.limits();
    if let Some(addr) = args.metrics_addr {
        let (metrics, at) =
            p2pshare::metrics::spawn_exporter(addr, p2pshare::grpc::ServiceKind::Tracker)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
        println!("metrics at http://{at}/metrics");
        connection_limits.metrics = Some(metrics);
    }
    p2pshare::tracker::serve_with_store(
        listener,
        config,
        opened,
        security,
        &connection_limits,
        p2pshare::cli::shutdown_signal(),
    )
    .await?;
    println!("tracker stopped");
    Ok(())
}
