//! `p2pshare-bench`: the swarm benchmark. Builds a local swarm over loopback TCP (tracker and
//! holders in this process, each measured client a child process), measures each scenario
//! against a plain process-to-process TCP copy of the same file, and prints a Markdown table.
//!
//! ```text
//! cargo run --release --bin p2pshare-bench -- --size 1G --runs 3
//! cargo run --release --bin p2pshare-bench -- --size 256M --runs 3 --scenarios one-holder,three-holders
//! cargo build --release --bin peer --bin p2pshare-bench && target/release/p2pshare-bench --scenarios flash-crowd
//! ```
//!
//! # Shape
//!
//! * The **bench process** hosts the swarm ([`swarm`]): an in-process tracker and the holders
//!   (each a real `PeerNode` on `127.0.0.1:0`, in its own folder under a temporary directory, all
//!   on one tokio runtime). Holders' folders are hard links to one generated copy of each file,
//!   and their hash cache is copied from a seed folder hashed once, so starting a holder costs no
//!   hashing.
//! * Every **measured client** (the downloader, the `WhoHas` load generator, a starting or
//!   restarting peer) is a child process: this binary re-executed with a hidden subcommand
//!   ([`child::WORKER_SUBCOMMAND`]), its [`child::Plan`] as JSON on standard input, its report as
//!   JSON on standard output ([`worker`] does the work). Its peak RSS is then its own (`VmHWM`,
//!   reset between runs by writing `5` to `/proc/self/clear_refs`, see [`memory`]), and it does
//!   not share a runtime with the holders.
//! * The **flash crowd** ([`crowd`], `runner/crowd.rs`) measures what users run: its N
//!   downloaders are the real `peer` binary (next to this one) running `--exec "get FILE"`, and
//!   its seeder, capped at R, is a child process of this binary ([`child::Plan::Seed`]) that
//!   reports the bytes it sent.
//! * The **baseline** is a file -> socket -> file copy between two processes: a child
//!   ([`baseline::TCP_SEND_SUBCOMMAND`]) reads the file and writes it to a `TcpStream`; the bench
//!   process receives it into a file. Same file, same page cache state, same run.
//!
//! The scenarios ([`options::Scenario`]) run in [`runner`]; [`report`] turns what they measured
//! into rows and the table. Times are medians over `--runs` runs. Every loop is bounded: downloads
//! end by success or by the downloader's stall timeout, load generators by a deadline, child
//! processes by a deadline after which they are killed (by their own handle).
//!
//! # Non-goals
//!
//! Not a network benchmark: loopback only (`127.0.0.1`), so it measures CPU and memory costs per
//! byte, not a real link's latency or loss. Page cache: the shared files are hot (just written);
//! `--startup-cold` evicts the start-up folder before the first scan.

mod baseline;
mod cgroup;
mod child;
mod crowd;
mod error;
mod files;
mod memory;
mod network;
mod options;
mod report;
mod runner;
mod swarm;
mod tracker_load;
mod worker;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// jemalloc instead of glibc's allocator: a transfer allocates and frees buffers of a few hundred
/// KiB per message (ours and tonic's), which glibc hands back to the kernel and faults in again,
/// zeroed (measured: holders' CPU per GiB 1.3 s with glibc, 1.05 s with jemalloc; mimalloc kept
/// faulting in fresh huge pages and did not help).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Benchmark a local p2pshare swarm against a plain TCP copy on this machine.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    options: options::SwarmOptions,
    #[command(subcommand)]
    child: Option<Child>,
}

/// The benchmark re-executes itself for the processes it measures.
#[derive(Subcommand, Debug)]
enum Child {
    /// Run a measurement plan read from standard input (internal).
    #[command(name = child::WORKER_SUBCOMMAND, hide = true)]
    Worker,
    /// Send a file over TCP: the baseline's sender (internal).
    #[command(name = baseline::TCP_SEND_SUBCOMMAND, hide = true)]
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
        Some(Child::Worker) => child::worker_main()?,
        Some(Child::TcpSend { file, addr }) => {
            baseline::tcp_send(&file, addr)?;
        }
        None => {
            let rows = runner::run(&cli.options, &mut std::io::stderr())?;
            let table = report::markdown_table(&rows);
            let mut out = std::io::stdout().lock();
            writeln!(out, "\n{table}")?;
            if let Some(path) = &cli.options.json {
                std::fs::write(path, serde_json::to_vec_pretty(&rows)?)?;
            }
        }
    }
    Ok(())
}
