//! How the trackerless mode of `docs/scaling.md` would find holders: each holder announces the
//! file's content id (its first 20 bytes: the DHT's 160-bit key) on a BitTorrent mainline DHT,
//! and a downloader asks the DHT instead of a tracker's `WhoHas`. This runs a local DHT
//! (`mainline::Testnet`, every node on 127.0.0.1), announces, looks up, checks that every
//! lookup finds every holder, and prints the latencies next to the tracker's (from the
//! benchmark's tracker scenario: p50 about 0.15 ms, p99 under 5 ms).
//!
//! Loopback hides the network's round trips: a lookup is several sequential hops of UDP, so on
//! a LAN add about (hops x RTT), on the Internet far more. The figures here are what the DHT
//! itself costs.
#![allow(deprecated)] // mainline's blocking API: simplest for a measurement loop.

use clap::Parser;
use mainline::{Dht, Id, Testnet};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Times announcements and lookups of content ids on a local mainline DHT.
#[derive(Parser, Debug)]
struct Args {
    /// DHT nodes in the local network (besides the holders and the downloader).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Files announced.
    #[arg(long, default_value_t = 20)]
    files: usize,
    /// Holders announcing each file (each its own DHT node).
    #[arg(long, default_value_t = 3)]
    holders: usize,
}

fn key_of(file: usize) -> Id {
    // A content id is a BLAKE3 hash; the DHT's keys are 160 bits, so its first 20 bytes.
    let content_id = blake3::hash(format!("file {file}").as_bytes());
    Id::from_bytes(&content_id.as_bytes()[..20]).expect("20 bytes")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn show(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<34} n={:<4} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let started = Instant::now();
    let testnet = Testnet::builder(args.nodes).build()?;
    println!(
        "local DHT of {} nodes up in {:.2} s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );
    let node = || -> Result<Dht, std::io::Error> {
        Dht::builder()
            .bootstrap(&testnet.bootstrap)
            .server_mode()
            .build()
    };
    let holders: Vec<Dht> = (0..args.holders)
        .map(|_| node())
        .collect::<Result<_, _>>()?;
    for h in &holders {
        h.bootstrapped();
    }
    let mut announce = Vec::new();
    for file in 0..args.files {
        for (i, holder) in holders.iter().enumerate() {
            let t = Instant::now();
            holder.announce_peer(key_of(file), Some(7000 + i as u16))?;
            announce.push(t.elapsed());
        }
    }
    let downloader = node()?;
    downloader.bootstrapped();
    let (mut first, mut full, mut missing) = (Vec::new(), Vec::new(), 0usize);
    for file in 0..args.files {
        let t = Instant::now();
        let mut seen = BTreeSet::new();
        for batch in downloader.get_peers(key_of(file)) {
            if seen.is_empty() && !batch.is_empty() {
                first.push(t.elapsed());
            }
            seen.extend(batch.iter().map(|a| a.port()));
        }
        full.push(t.elapsed());
        let wanted: BTreeSet<u16> = (0..args.holders).map(|i| 7000 + i as u16).collect();
        missing += wanted.difference(&seen).count();
    }
    show("announce (one holder, one file)", announce);
    show("lookup: first holder found", first);
    show("lookup: query finished", full);
    println!(
        "holders missed by lookups: {missing} of {}",
        args.files * args.holders
    );
    Ok(())
}
