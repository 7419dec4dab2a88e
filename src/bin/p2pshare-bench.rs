//! `p2pshare-bench`: the swarm benchmark. Builds a local swarm over loopback TCP (tracker and
//! holders in this process, each measured client a child process), measures each scenario
//! against a plain process-to-process TCP copy of the same file, and prints a Markdown table.
//!
//! ```text
//! cargo run --release --bin p2pshare-bench -- --size 1G --runs 3
//! cargo run --release --bin p2pshare-bench -- --size 256M --runs 3 --scenarios one-holder,three-holders
//! ```
//!
//! See [`p2pshare::bench::swarm`] for what each scenario does.

use clap::{Parser, Subcommand};
use p2pshare::bench::swarm;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Benchmark a local p2pshare swarm against a plain TCP copy on this machine.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    options: swarm::SwarmOptions,
    #[command(subcommand)]
    child: Option<Child>,
}

/// The benchmark re-executes itself for the processes it measures.
#[derive(Subcommand, Debug)]
enum Child {
    /// Run a measurement plan read from standard input (internal).
    #[command(name = swarm::WORKER_SUBCOMMAND, hide = true)]
    Worker,
    /// Send a file over TCP: the baseline's sender (internal).
    #[command(name = swarm::TCP_SEND_SUBCOMMAND, hide = true)]
    TcpSend {
        /// File to send.
        file: PathBuf,
        /// Where to connect.
        addr: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    p2pshare::cli::init_logging("warn");
    let cli = Cli::parse();
    match cli.child {
        Some(Child::Worker) => swarm::worker_main()?,
        Some(Child::TcpSend { file, addr }) => {
            swarm::tcp_send(&file, addr)?;
        }
        None => {
            let rows = swarm::run(&cli.options, &mut std::io::stderr())?;
            let table = swarm::markdown_table(&rows);
            let mut out = std::io::stdout().lock();
            writeln!(out, "\n{table}")?;
            if let Some(path) = &cli.options.json {
                std::fs::write(path, serde_json::to_vec_pretty(&rows)?)?;
            }
        }
    }
    Ok(())
}
