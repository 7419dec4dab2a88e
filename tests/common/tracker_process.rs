//! A real `tracker` process on a loopback port for a test: its banner read (bounded), its log
//! (stderr, at info) kept in a file, killed when dropped.

use p2pshare::pb::tracker::tracker_client::TrackerClient;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

/// A `tracker` process; killed when dropped.
pub struct TrackerProcess {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it printed before it served.
    pub banner: Vec<String>,
    /// Its log (stderr).
    log: tempfile::NamedTempFile,
}

impl TrackerProcess {
    /// Starts `tracker --port 0 --bind 127.0.0.1 ARGS` and waits for its banner (30 s at most).
    pub fn start(args: &[&str]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tracker"))
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let rx = super::lines_of(stdout);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut banner = Vec::new();
        // The banner ends with the store, or with the metrics' address when they are served.
        let last = if args.contains(&"--metrics-addr") {
            "metrics at "
        } else {
            "store "
        };
        while !banner.iter().any(|l: &String| l.starts_with(last)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("tracker did not start; it printed {banner:?}"));
            banner.push(line);
        }
        let addr = banner
            .iter()
            .find_map(|l| l.strip_prefix("tracker listening on "))
            .expect("listening line")
            .parse()
            .unwrap();
        TrackerProcess {
            child,
            addr,
            banner,
            log,
        }
    }

    /// Where it serves its metrics, if it was started with `--metrics-addr`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.banner.iter().find_map(|l| {
            l.strip_prefix("metrics at http://")?
                .strip_suffix("/metrics")?
                .parse()
                .ok()
        })
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The process's peak RSS in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// The process's RSS now, in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.trim_start_matches(field)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }

    /// A client of it.
    pub fn client(&self) -> TrackerClient<Channel> {
        TrackerClient::new(p2pshare::grpc::channel(&self.addr.to_string()).unwrap())
    }
}

impl Drop for TrackerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
