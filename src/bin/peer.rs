//! `peer <PEER_ID> <PORT> <TRACKER_IP>`: shares `<PEER_ID>/files/`, serves it to the swarm, and
//! runs the interactive shell (or runs headless with `--no-shell`).

use anyhow::{bail, Context};
use clap::Parser;
use p2pshare::grpc::{ConnectionFlags, SwarmKey, TlsIdentity, TrustedCa};
use p2pshare::peer::server::{RateLimiter, ServeLimits};
use p2pshare::peer::{PeerConfig, PeerNode};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// jemalloc instead of glibc's allocator: a transfer allocates and frees buffers of a few hundred
/// KiB per message (ours and tonic's), which glibc hands back to the kernel and faults in again,
/// zeroed (measured: holders' CPU per GiB 1.3 s with glibc, 1.05 s with jemalloc; mimalloc kept
/// faulting in fresh huge pages and did not help).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A p2pshare peer: shares every file in <PEER_ID>/files/ and downloads from the swarm.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// This peer's id (also the name of its directory).
    peer_id: String,
    /// TCP port for the Peer service (0 picks a free one).
    port: u16,
    /// The tracker: IP or host name, optionally with :PORT.
    tracker_ip: String,
    /// Tracker port when TRACKER_IP (or a --tracker) has none.
    #[arg(long, default_value_t = 8000)]
    tracker_port: u16,
    /// Another tracker of the swarm, HOST[:PORT] as TRACKER_IP (repeat the flag for more: at
    /// most 16 in all). The peer registers with TRACKER_IP and, when the tracker in use stops
    /// answering, with the next in the order given; queries go to whichever answers.
    #[arg(long = "tracker", value_name = "HOST[:PORT]")]
    trackers: Vec<String>,
    /// Directory holding <PEER_ID>/ (default: the current directory).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Run without the shell: serve until Ctrl-C or SIGTERM, then leave the swarm.
    #[arg(long)]
    no_shell: bool,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Host other peers should use to reach this one (behind address translation); default: the
    /// address the tracker sees.
    #[arg(long, default_value = "")]
    advertise_addr: String,
    /// Cap on this peer's total upload rate, e.g. 10M (bytes per second).
    #[arg(long, value_parser = p2pshare::human::parse_size)]
    max_upload_rate: Option<u64>,
    /// Cap on concurrent GetBlocks streams served.
    #[arg(long, default_value_t = p2pshare::peer::server::DEFAULT_MAX_STREAMS)]
    max_streams: usize,
    /// Cap on concurrent GetBlocks streams served to one IP address (below --max-streams), so
    /// that one client cannot take every slot.
    #[arg(long, default_value_t = p2pshare::peer::server::DEFAULT_MAX_STREAMS_PER_ADDRESS)]
    max_streams_per_address: usize,
    /// Seconds without data before a holder is given up on during a download.
    #[arg(long, default_value_t = 10)]
    stall_timeout: u64,
    /// Holders one download is connected to at once (chosen at random among those it knows).
    #[arg(long, default_value_t = p2pshare::peer::download::DEFAULT_MAX_HOLDERS)]
    max_holders: usize,
    /// Downloaders served at once; the others are choked (refused for a few seconds) and take
    /// those pieces from other holders. Rotated every few seconds, peers that upload back first.
    #[arg(long, default_value_t = p2pshare::peer::server::DEFAULT_UPLOAD_SLOTS)]
    upload_slots: usize,
    /// Run these shell commands (repeat the flag, or separate commands with ';') and exit:
    /// status 0 if all succeeded, 1 otherwise.
    #[arg(long, value_name = "COMMANDS")]
    exec: Vec<String>,
    /// Seconds between full rescans of files/, the safety net under the folder watcher.
    #[arg(long, default_value_t = 30)]
    rescan_interval: u64,
    /// Private swarm: send this shared secret on every call, and refuse calls (health checks
    /// excepted) that do not carry it. The tracker and every peer need the same key.
    #[arg(
        long,
        env = "P2PSHARE_SWARM_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    swarm_key: Option<SwarmKey>,
    /// Serve TLS with this certificate (PEM; needs an IP SAN for the address others dial).
    /// A TLS peer also needs --tls-key and --tls-ca.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// Connect to the tracker and other peers with TLS, trusting certificates this CA signed
    /// (PEM). Requires --tls-cert and --tls-key: in a TLS swarm everyone serves TLS.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (an IP address or a host name,
    /// resolved at start; port 0 picks one).
    #[arg(long, value_name = "HOST:PORT", value_parser = p2pshare::cli::listen_address)]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    connections: ConnectionFlags,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    p2pshare::cli::init_logging(if args.no_shell { "info" } else { "warn" });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return p2pshare::cli::fail(&e.into()),
    };
    let result = runtime.block_on(run(args, runtime.handle().clone()));
    // Threads blocked on standard input must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => p2pshare::cli::fail(&e),
    }
}

async fn run(args: Args, handle: tokio::runtime::Handle) -> anyhow::Result<()> {
    if let Err(e) = p2pshare::names::validate_peer_id(&args.peer_id) {
        bail!("bad PEER_ID: {e}");
    }
    let tracker = p2pshare::cli::tracker_address(&args.tracker_ip, args.tracker_port)
        .map_err(|e| anyhow::anyhow!("bad TRACKER_IP: {e}"))?;
    let fallback_trackers = args
        .trackers
        .iter()
        .map(|t| p2pshare::cli::tracker_address(t, args.tracker_port))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bad --tracker: {e}"))?;
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some((
            TlsIdentity::from_files(cert, key)?,
            TrustedCa::from_file(ca)?,
        )),
        _ => None,
    };
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (port in use? pick another PORT, or 0 for any free one)")
    })?;
    let dir = args.root.join(&args.peer_id);
    let mut config = PeerConfig::new(&args.peer_id, dir.clone(), &tracker);
    config.fallback_trackers = fallback_trackers;
    config.advertise_host = args.advertise_addr.clone();
    config.stall_timeout = Duration::from_secs(args.stall_timeout.max(1));
    config.max_holders = args.max_holders.max(1);
    config.rescan_interval = Duration::from_secs(args.rescan_interval.max(1));
    config.set_swarm_security(args.swarm_key.clone(), tls);
    config.limits = ServeLimits {
        max_streams: args.max_streams.max(1),
        max_streams_per_address: args.max_streams_per_address.max(1),
        upload_rate: args.max_upload_rate.map(|r| Arc::new(RateLimiter::new(r))),
        upload_slots: args.upload_slots.max(1),
        connections: args.connections.limits(),
    };
    if let Some(addr) = args.metrics_addr {
        let (metrics, at) =
            p2pshare::metrics::spawn_exporter(addr, p2pshare::grpc::ServiceKind::Peer)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
        println!("metrics at http://{at}/metrics");
        config.limits.connections.metrics = Some(metrics);
    }
    let (node, info) = PeerNode::start(config, listener)
        .await
        .with_context(|| format!("cannot start peer {}", args.peer_id))?;
    if info.created_folder {
        println!(
            "created {} (it did not exist): put files there to share them",
            dir.join("files").display()
        );
    }
    for why in &info.skipped {
        println!("not shared: {why}");
    }
    println!(
        "peer {} serving {} file(s) from {} on port {}",
        node.id(),
        info.shared,
        dir.join("files").display(),
        node.local_addr().port()
    );
    match &info.registration {
        Ok(address) => println!(
            "registered with tracker {} as {address}",
            info.tracker_address
        ),
        Err(e) => println!("warning: {e}; serving anyway and retrying in the background"),
    }
    let mut all_ok = true;
    if !args.exec.is_empty() {
        let lines: Vec<String> = args
            .exec
            .iter()
            .flat_map(|e| e.split(';'))
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let script_node = node.clone();
        let script = tokio::task::spawn_blocking(move || {
            p2pshare::peer::shell::run_script(script_node, handle, &lines)
        });
        tokio::select! {
            ok = script => all_ok = ok.unwrap_or(false),
            _ = p2pshare::cli::shutdown_signal() => all_ok = false,
        }
    } else if args.no_shell {
        p2pshare::cli::shutdown_signal().await;
    } else {
        println!("type help for commands");
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let shell_node = node.clone();
        std::thread::spawn(move || {
            p2pshare::peer::shell::run(shell_node, handle);
            let _ = done_tx.send(());
        });
        tokio::select! {
            _ = done_rx => {},
            _ = p2pshare::cli::shutdown_signal() => {},
        }
    }
    node.shutdown().await;
    println!("peer {} left the swarm", node.id());
    if !all_ok {
        bail!("a command failed");
    }
    Ok(())
}
