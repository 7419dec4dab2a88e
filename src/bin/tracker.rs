//! `tracker`: runs the p2pshare Tracker service.

use anyhow::Context;
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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
    let config = p2pshare::tracker::TrackerConfig {
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval),
    };
    p2pshare::tracker::serve(listener, config, p2pshare::cli::shutdown_signal()).await?;
    println!("tracker stopped");
    Ok(())
}
