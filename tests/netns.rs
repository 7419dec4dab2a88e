//! p2pshare across real hosts: a tracker, holders and a downloader, each in its own network
//! namespace on one bridge (addresses in 10.77.0.0/24, which exists only inside), running the
//! real `tracker` and `peer` binaries. Links capped with `tc tbf`, cables pulled with
//! `ip link set ... down` while the processes stay alive, a packet-level delay line.
//!
//! These tests assert what happens (completion, byte-identical content, who the tracker lists),
//! never how fast: speed is the benchmark's (`p2pshare-bench --scenarios network`). They need
//! root (namespaces); without it each skips with one line, and on CI (`CI` set) fails.

mod common;
#[path = "netns/delay_line.rs"]
mod delay_line;
#[path = "netns/net.rs"]
mod net;
#[path = "netns/swarm.rs"]
mod swarm;

use net::{Direction, Net};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use swarm::{Binaries, ExecRun, PeerSpec};

/// Bound on one download (with a cable pulled, the stall timeout is part of it).
const GET_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on peers showing up at (or dropping out of) the tracker.
const LISTING_TIMEOUT: Duration = Duration::from_secs(15);
/// Heartbeat interval of the tracker in these tests: peers it has not heard from for three are
/// dropped, so a pulled cable shows within seconds.
const HEARTBEAT_SECS: u32 = 1;

fn binaries() -> Binaries {
    Binaries {
        peer: env!("CARGO_BIN_EXE_peer").into(),
        tracker: env!("CARGO_BIN_EXE_tracker").into(),
    }
}

/// A network of `hosts` (the first is the tracker's), a tracker on it, a file of `size` bytes
/// and a folder for the peers' directories and the logs.
struct Setup {
    net: Net,
    bin: Binaries,
    tracker: SocketAddr,
    dir: tempfile::TempDir,
    source: PathBuf,
    content: Vec<u8>,
}

impl Setup {
    /// `None` (after one line) when this machine cannot make namespaces.
    fn new(hosts: &[&str], size: usize) -> Option<Setup> {
        if !common::require(net::available()) {
            return None;
        }
        let mut net = Net::new(hosts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let bin = binaries();
        let logs = dir.path().join("logs");
        let tracker = swarm::start_tracker(&mut net, hosts[0], &bin, HEARTBEAT_SECS, &logs)
            .unwrap_or_else(|e| panic!("{e}"));
        let content = common::content(size, size as u64);
        let source = dir.path().join("source.bin");
        std::fs::write(&source, &content).unwrap();
        Some(Setup {
            net,
            bin,
            tracker,
            dir,
            source,
            content,
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("peers")
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The peer on `host` (its id is the host's name).
    fn spec<'a>(&self, host: &'a str, root: &'a Path, logs: &'a Path) -> PeerSpec<'a> {
        PeerSpec {
            host,
            id: host,
            port: swarm::PEER_PORT,
            root,
            tracker: self.tracker,
            logs,
        }
    }

    /// Seeders of `name` on `hosts` (peer id = host name), all listed by the tracker.
    fn seeders(&mut self, hosts: &[&str], name: &str, extra: &[&str]) {
        swarm::seed(&self.root(), hosts, name, &self.source).unwrap();
        for host in hosts {
            let (root, logs) = (self.root(), self.logs());
            let spec = self.spec(host, &root, &logs);
            swarm::start_peer(&mut self.net, &self.bin, &spec, extra).unwrap();
        }
        let probe = self.net.hosts()[0].name.clone();
        swarm::wait_for_peers(&self.net, &probe, self.tracker, hosts, LISTING_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.all_logs()));
    }

    /// Starts `peer <host> --exec <commands>` on `host`.
    fn start_exec(&mut self, host: &str, commands: &str, extra: &[&str]) -> Instant {
        let (root, logs) = (self.root(), self.logs());
        let spec = self.spec(host, &root, &logs);
        swarm::start_exec(&mut self.net, &self.bin, &spec, commands, extra).unwrap()
    }

    /// Waits for the `--exec` peer on `host`, which must succeed.
    fn finish_exec(&mut self, host: &str, started: Instant) -> ExecRun {
        let logs = self.logs();
        let run = swarm::wait_exec(&mut self.net, host, started, GET_TIMEOUT, &logs)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.all_logs()));
        assert!(
            run.status.success(),
            "{host} failed ({}): stdout:\n{}\nstderr:\n{}\n{}",
            run.status,
            run.stdout,
            run.stderr,
            self.all_logs()
        );
        run
    }

    /// The file as downloaded into `host`'s `files/` must be the original, byte for byte.
    fn assert_downloaded(&self, host: &str, name: &str) {
        let path = self.root().join(host).join("files").join(name);
        let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(got.len(), self.content.len(), "size of {}", path.display());
        assert!(
            got == self.content,
            "{} differs from the original",
            path.display()
        );
    }

    /// Blocks until `host` has received at least `bytes` on its link (bounded).
    fn wait_received(&self, host: &str, bytes: u64) {
        let deadline = Instant::now() + GET_TIMEOUT;
        while self.net.received_bytes(host) < bytes {
            assert!(
                Instant::now() < deadline,
                "{host} received under {bytes} bytes in {GET_TIMEOUT:?}\n{}",
                self.all_logs()
            );
            std::thread::sleep(swarm::POLL_STEP);
        }
    }

    /// Every log, for a failure message.
    fn all_logs(&self) -> String {
        let mut text = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.logs())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries {
            let body = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: String = body
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            text.push_str(&format!("--- {}\n{tail}\n", file_name(&path)));
        }
        text
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// A holder and a downloader on two hosts: the download crosses the bridge, arrives byte for
/// byte, and the tracker lists each host at its own address (not loopback, not the tracker's).
#[test]
fn download_across_hosts_lists_real_addresses() {
    let Some(mut s) = Setup::new(&["tracker", "h1", "d"], 4 << 20) else {
        return;
    };
    s.seeders(&["h1"], "f.bin", &[]);
    let listed = swarm::list_peers(&s.net, "d", s.tracker).unwrap();
    let listed: Vec<(&str, &str)> = listed
        .iter()
        .map(|p| (p.id.as_str(), p.address.as_str()))
        .collect();
    assert_eq!(
        listed,
        [("h1", &*format!("{}:9000", s.net.host("h1").addr))]
    );
    let started = s.start_exec("d", "get f.bin; peers --json", &[]);
    let run = s.finish_exec("d", started);
    s.assert_downloaded("d", "f.bin");
    assert!(
        run.stdout.contains("from 1 holder(s) [h1 "),
        "{}",
        run.stdout
    );
    // The downloader's own listing, taken after its `get`: both hosts at their addresses.
    let json = run
        .stdout
        .lines()
        .find(|l| l.starts_with('['))
        .expect("peers --json line");
    let peers: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut seen: Vec<(String, String)> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["peer_id"].as_str().unwrap().to_string(),
                p["address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("d".to_string(), format!("{}:9000", s.net.host("d").addr)),
            ("h1".to_string(), format!("{}:9000", s.net.host("h1").addr)),
        ]
    );
}

/// Three holders on links capped at 50, 100 and 200 Mbit/s and a downloader capped at
/// 400 Mbit/s: the download completes from all three, byte for byte.
#[test]
fn capped_links_three_holders_complete() {
    let Some(mut s) = Setup::new(&["tracker", "h1", "h2", "h3", "d"], 16 << 20) else {
        return;
    };
    for (host, mbit) in [("h1", 50), ("h2", 100), ("h3", 200)] {
        s.net.cap(host, Direction::Up, mbit * 1_000_000).unwrap();
    }
    s.net.cap("d", Direction::Down, 400_000_000).unwrap();
    s.seeders(&["h1", "h2", "h3"], "f.bin", &[]);
    let started = s.start_exec("d", "get f.bin", &[]);
    let run = s.finish_exec("d", started);
    s.assert_downloaded("d", "f.bin");
    assert!(run.stdout.contains("from 3 holder(s)"), "{}", run.stdout);
}

/// A tracker, three seeders of `f.bin` (`size` bytes) each capped at 40 Mbit/s up (so a
/// download lasts long enough to pull a cable in the middle of it), and a downloader `d`.
fn three_capped_seeders(size: usize) -> Option<Setup> {
    let mut s = Setup::new(&["tracker", "h1", "h2", "h3", "d"], size)?;
    for host in ["h1", "h2", "h3"] {
        s.net.cap(host, Direction::Up, 40_000_000).unwrap();
    }
    s.seeders(&["h1", "h2", "h3"], "f.bin", &[]);
    Some(s)
}

/// One of three holders has its cable pulled mid-download (the process lives on, silent): the
/// download finishes from the other two, byte for byte.
#[test]
fn cut_cable_of_one_holder_mid_download() {
    let size = 24 << 20;
    let Some(mut s) = three_capped_seeders(size) else {
        return;
    };
    // A short stall timeout keeps the test short; the benchmark measures the defaults.
    let started = s.start_exec("d", "get f.bin", &["--stall-timeout", "2"]);
    s.wait_received("d", size as u64 * 3 / 10);
    s.net.set_link("h2", false).unwrap();
    let run = s.finish_exec("d", started);
    s.assert_downloaded("d", "f.bin");
    assert!(run.stdout.contains("got f.bin"), "{}", run.stdout);
    assert!(
        s.net.child("h2").try_wait().unwrap().is_none(),
        "h2 must still run: only its cable was pulled"
    );
}

/// The tracker's cable pulled mid-download: `get` still completes byte for byte (holders are
/// known). The tracker drops the silent peers; once the cable is back they re-appear on it by
/// themselves.
#[test]
fn tracker_cut_mid_download_then_peers_come_back() {
    let size = 24 << 20;
    let Some(mut s) = three_capped_seeders(size) else {
        return;
    };
    let started = s.start_exec("d", "get f.bin", &[]);
    s.wait_received("d", size as u64 * 3 / 10);
    s.net.set_link("tracker", false).unwrap();
    let run = s.finish_exec("d", started);
    s.assert_downloaded("d", "f.bin");
    assert!(run.stdout.contains("got f.bin"), "{}", run.stdout);

    // Asked on the tracker's own host, which still reaches it: the holders drop out after three
    // missed heartbeats ...
    let deadline = Instant::now() + LISTING_TIMEOUT;
    loop {
        let listed = swarm::list_peers(&s.net, "tracker", s.tracker).unwrap();
        if listed.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still listed with the cable out: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and come back once it is plugged in again, within about a heartbeat: a peer whose
    // tracker does not answer probes it every quarter heartbeat on a fresh connection (not the
    // dead one, whose retransmissions back off for seconds) with a 1 s deadline. The bound is
    // three heartbeats; waiting out a 5 s call deadline, as peers did, misses it.
    s.net.set_link("tracker", true).unwrap();
    let (listed, _) = swarm::wait_for_peers(
        &s.net,
        "tracker",
        s.tracker,
        &["h1", "h2", "h3"],
        Duration::from_secs(3 * u64::from(HEARTBEAT_SECS)),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.all_logs()));
    for peer in &listed {
        assert_eq!(peer.address, format!("{}:9000", s.net.host(&peer.id).addr));
    }
}

/// A download through the delay line: it completes byte for byte, and its packets did go
/// through the line (the line is what the benchmark's latency rows rely on).
#[test]
fn download_through_a_delay_line() {
    let Some(mut s) = Setup::new(&["tracker", "h1", "d"], 4 << 20) else {
        return;
    };
    s.seeders(&["h1"], "f.bin", &[]);
    let line = delay_line::DelayLine::start(&s.net, "d", "h1", Duration::from_millis(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = s.start_exec("d", "get f.bin", &[]);
    s.finish_exec("d", started);
    s.assert_downloaded("d", "f.bin");
    let forwarded = line.forwarded.load(std::sync::atomic::Ordering::Relaxed);
    // At least one ACK per 64 KiB received (far more in practice).
    assert!(
        forwarded > 64,
        "only {forwarded} packets went through the delay line"
    );
}
