//! `swarm-demo`: a whole local swarm end to end in one command. Starts a tracker and seeders on
//! loopback (real gRPC over TCP, the same code as the `tracker` and `peer` binaries), then drives
//! a downloading peer's shell: `whohas`, `get`, `myfiles`, `bench`, `stress`, `files`, `peers`.

use anyhow::{ensure, Context};
use clap::Parser;
use p2pshare::chunking::ContentId;
use p2pshare::peer::shell::{execute, parse};
use p2pshare::peer::{PeerConfig, PeerNode};
use rand::TryRngCore;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// jemalloc instead of glibc's allocator: a transfer allocates and frees buffers of a few hundred
/// KiB per message (ours and tonic's), which glibc hands back to the kernel and faults in again,
/// zeroed (measured: holders' CPU per GiB 1.3 s with glibc, 1.05 s with jemalloc; mimalloc kept
/// faulting in fresh huge pages and did not help).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Run a local p2pshare swarm end to end and print what a user would see.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Size of the shared file, e.g. 64M or 1G.
    #[arg(long, default_value = "256M", value_parser = p2pshare::human::parse_size)]
    size: u64,
    /// Number of seeders holding the file.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    seeders: u32,
    /// Working directory (default: a temporary one, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// `bench` runs.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// `stress` parallel downloads.
    #[arg(long, default_value_t = 4)]
    threads: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    p2pshare::cli::init_logging("warn");
    let args = Args::parse();
    let tmp;
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };

    let tracker_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tracker_addr = tracker_listener.local_addr()?;
    let stop_tracker = tokio_util::sync::CancellationToken::new();
    let token = stop_tracker.clone();
    let tracker = tokio::spawn(p2pshare::tracker::serve(
        tracker_listener,
        p2pshare::tracker::TrackerConfig::default(),
        async move { token.cancelled().await },
    ));
    println!("tracker on {tracker_addr}");

    println!(
        "writing a {} test file ...",
        p2pshare::human::bytes(args.size)
    );
    let name = "video.bin";
    let original = root.join("original.bin");
    std::fs::create_dir_all(&root)?;
    write_random(&original, args.size)?;
    let original_id = ContentId::of_file(&original)?;

    let mut seeders = Vec::new();
    for i in 0..args.seeders {
        let id = format!("S{}", i + 1);
        let files = root.join(&id).join("files");
        std::fs::create_dir_all(&files)?;
        std::fs::copy(&original, files.join(name))?;
        let node = start_peer(&id, &root, &tracker_addr.to_string()).await?;
        println!("seeder {id} serving on {}", node.local_addr());
        seeders.push(node);
    }
    let downloader = start_peer("D", &root, &tracker_addr.to_string()).await?;
    println!("downloader D serving on {}\n", downloader.local_addr());

    let script = [
        format!("whohas {name}"),
        format!("get {name}"),
        "myfiles".to_string(),
        format!("bench {name} {}", args.runs),
        format!("stress {name} {}", args.threads),
        "files".to_string(),
        "peers".to_string(),
    ];
    for line in &script {
        println!("D> {line}");
        let mut out = Vec::new();
        execute(
            &downloader,
            parse(line).map_err(anyhow::Error::msg)?,
            &mut out,
            p2pshare::console::ProgressMode::detect(),
        )
        .await?;
        print!("{}", String::from_utf8_lossy(&out));
        println!();
    }

    let got = root.join("D/files").join(name);
    let got_id = ContentId::of_file(&got).with_context(|| format!("{} missing", got.display()))?;
    ensure!(
        got_id == original_id,
        "downloaded file differs from the original"
    );
    println!(
        "OK: {} is byte-identical to the original (BLAKE3 {})",
        got.display(),
        ContentId::to_hex(&got_id)
    );

    downloader.shutdown().await;
    for s in seeders {
        s.shutdown().await;
    }
    stop_tracker.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker).await;
    Ok(())
}

/// Fills a new file at `path` with `size` random bytes.
fn write_random(path: &Path, size: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    std::io::copy(&mut rand::rng().read_adapter().take(size), &mut out)?;
    out.flush()
}

async fn start_peer(
    id: &str,
    root: &std::path::Path,
    tracker: &str,
) -> anyhow::Result<Arc<PeerNode>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let config = PeerConfig::new(id, root.join(id), tracker);
    let (node, info) = PeerNode::start(config, listener).await?;
    if let Err(e) = info.registration {
        anyhow::bail!("peer {id} could not register: {e}");
    }
    Ok(node)
}
