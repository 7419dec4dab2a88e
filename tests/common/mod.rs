//! In-process swarm for integration tests: a tracker and peers on ephemeral loopback ports, each
//! peer in its own temporary directory. Nothing sleeps to wait for a server: every listener is
//! bound before its address is handed out.
//!
//! Also what a test needs beyond `cargo test` (root, a program, Python, PyPI): checked with
//! [`require`] before the test starts, so that a missing need is one clear line, not a panic
//! deep in the test. CI has every need; there (`CI` set, as CI services and `.ci/run` do) a
//! missing need fails the test instead, because a CI that silently skips is a hole.
#![allow(dead_code)]

pub mod redis;
pub mod scripted_tracker;
pub mod tracker_process;

use p2pshare::peer::download::{
    Destination, DownloadError, DownloadReport, DownloadRequest, Progress,
};
use p2pshare::peer::server::{RateLimiter, ServeLimits};
use p2pshare::peer::{PeerConfig, PeerNode};
use p2pshare::tracker::TrackerConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A tracker running in this process.
pub struct TestTracker {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestTracker {
    pub async fn start(heartbeat: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, heartbeat)
    }

    pub fn start_on(listener: TcpListener, heartbeat: Duration) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            p2pshare::tracker::serve(
                listener,
                TrackerConfig {
                    heartbeat_interval: heartbeat,
                },
                async move { token.cancelled().await },
            )
            .await
            .unwrap();
        });
        TestTracker { addr, stop, task }
    }

    /// A tracker of a private swarm: `security` says what it demands (swarm key, TLS).
    pub async fn start_secured(
        heartbeat: Duration,
        security: p2pshare::grpc::ServerSecurity,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            p2pshare::tracker::serve_with_security(
                listener,
                TrackerConfig {
                    heartbeat_interval: heartbeat,
                },
                security,
                async move { token.cancelled().await },
            )
            .await
            .unwrap();
        });
        TestTracker { addr, stop, task }
    }

    /// A client presenting `security` (swarm key, trusted CA).
    pub fn secured_client(
        &self,
        security: &p2pshare::grpc::ClientSecurity,
    ) -> p2pshare::pb::tracker::tracker_client::TrackerClient<p2pshare::grpc::ClientChannel> {
        p2pshare::pb::tracker::tracker_client::TrackerClient::new(
            security.channel(&self.addr.to_string()).unwrap(),
        )
    }

    /// Stops the tracker and waits until its port is closed.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    pub fn client(
        &self,
    ) -> p2pshare::pb::tracker::tracker_client::TrackerClient<tonic::transport::Channel> {
        p2pshare::pb::tracker::tracker_client::TrackerClient::new(
            p2pshare::grpc::channel(&self.addr.to_string()).unwrap(),
        )
    }
}

/// A peer in its own directory (kept alive by `_dir`).
pub struct TestPeer {
    pub node: Arc<PeerNode>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestPeer {
    /// Starts peer `id` with `files` (name, content) in its `files/`.
    pub async fn start(id: &str, tracker: SocketAddr, files: &[(&str, &[u8])]) -> Self {
        Self::start_with(id, tracker, files, |_| {}).await
    }

    pub async fn start_with(
        id: &str,
        tracker: SocketAddr,
        files: &[(&str, &[u8])],
        configure: impl FnOnce(&mut PeerConfig),
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(id);
        std::fs::create_dir_all(dir.join("files")).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join("files").join(name), content).unwrap();
        }
        let mut peer = Self::start_in(id, tracker, dir, configure).await;
        peer._tmp = Some(tmp);
        peer
    }

    /// Starts peer `id` over an existing directory.
    pub async fn start_in(
        id: &str,
        tracker: SocketAddr,
        dir: PathBuf,
        configure: impl FnOnce(&mut PeerConfig),
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = PeerConfig::new(id, dir.clone(), &tracker.to_string());
        config.stall_timeout = Duration::from_secs(3);
        configure(&mut config);
        let (node, info) = PeerNode::start(config, listener).await.unwrap();
        assert!(info.registration.is_ok(), "{:?}", info.registration);
        TestPeer {
            node,
            dir,
            _tmp: None,
        }
    }

    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }

    pub async fn get(&self, spec: &str) -> Result<DownloadReport, DownloadError> {
        self.node
            .download(
                &DownloadRequest::parse(spec, Destination::Files),
                Arc::new(Progress::default()),
            )
            .await
    }
}

/// A peer running on its own runtime and thread, so that killing it drops every socket and task
/// at once, as a crashed process would.
pub struct IsolatedPeer {
    pub addr: SocketAddr,
    pub node: Arc<PeerNode>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl IsolatedPeer {
    pub async fn start(
        id: &str,
        tracker: SocketAddr,
        dir: PathBuf,
        upload_rate: Option<u64>,
    ) -> Self {
        Self::start_at(
            "127.0.0.1:0".parse().unwrap(),
            id,
            tracker,
            dir,
            upload_rate,
        )
        .await
    }

    /// Starts it listening on `bind` (a restart on the address it had: the same port).
    pub async fn start_at(
        bind: SocketAddr,
        id: &str,
        tracker: SocketAddr,
        dir: PathBuf,
        upload_rate: Option<u64>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let id = id.to_string();
        let node = runtime.spawn(async move {
            // The address may still be held for a moment by a killed predecessor's runtime.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let listener = loop {
                match tokio::net::TcpListener::bind(bind).await {
                    Ok(listener) => break listener,
                    Err(e) if std::time::Instant::now() < deadline => {
                        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("cannot bind {bind}: {e}"),
                }
            };
            let mut config = PeerConfig::new(&id, dir, &tracker.to_string());
            config.limits = ServeLimits {
                upload_rate: upload_rate.map(|r| Arc::new(RateLimiter::new(r))),
                ..ServeLimits::default()
            };
            config.stall_timeout = Duration::from_secs(2);
            PeerNode::start(config, listener).await.unwrap().0
        });
        let node = node.await.unwrap();
        IsolatedPeer {
            addr: node.local_addr(),
            node,
            runtime: Some(runtime),
        }
    }

    /// Dies without a word to anyone.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Runs `f` on this peer's runtime (it dies with the peer).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.runtime.as_ref().unwrap().spawn(f)
    }
}

impl Drop for IsolatedPeer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lines a child writes to `stdout`, read on a thread of their own (so the child never
/// blocks on a full pipe), as they come; the receiver's `recv_timeout` bounds each wait.
pub fn lines_of(stdout: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

pub fn seeded_dir(id: &str, files: &[(&str, &[u8])]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(id);
    std::fs::create_dir_all(dir.join("files")).unwrap();
    for (name, data) in files {
        std::fs::write(dir.join("files").join(name), data).unwrap();
    }
    (tmp, dir)
}

/// Deterministic pseudo-random content.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Names in a directory, sorted (to check nothing stray was left).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// What a test needs from the machine
// ---------------------------------------------------------------------------------------------

/// A missing need: what is needed and what for, e.g. `root (mounts a tmpfs)`.
pub type Need = Result<(), String>;

/// Whether a missing need fails the test rather than skipping it: on CI.
fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether the test can go on. When `need` is missing, prints one line,
/// `<test>: skipped: needs <what>`, and returns false (the test returns at once); on CI it
/// fails the test with that line instead.
pub fn require(need: Need) -> bool {
    provided(need).is_some()
}

/// [`require`] for a check that finds something the test then uses (an interpreter, say):
/// `None` when it is missing.
pub fn provided<T>(need: Result<T, String>) -> Option<T> {
    let what = match need {
        Ok(found) => return Some(found),
        Err(what) => what,
    };
    let current = std::thread::current();
    let test = current.name().unwrap_or("test");
    assert!(
        !on_ci(),
        "{test}: needs {what}; CI is set, so a missing need fails the test instead of skipping it"
    );
    let line = format!("{test}: skipped: needs {what}");
    // Straight to the terminal: the harness would capture `eprintln!` of a passing test.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    None
}

/// A capability that a root process may lack (in a container, say).
#[derive(Clone, Copy, Debug)]
pub enum Capability {
    /// `CAP_LINUX_IMMUTABLE`: setting the immutable flag (`chattr +i`).
    LinuxImmutable = 9,
    /// `CAP_SYS_ADMIN`: mounting a filesystem.
    SysAdmin = 21,
}

impl Capability {
    fn name(self) -> &'static str {
        match self {
            Capability::LinuxImmutable => "CAP_LINUX_IMMUTABLE",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
        }
    }
}

/// Root, holding `capability`, for `why`.
pub fn root(capability: Capability, why: &str) -> Need {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    // "Uid:" lists the real, effective, saved and filesystem ids.
    if field("Uid:").get(1) != Some(&"0") {
        return Err(format!("root ({why})"));
    }
    let effective = field("CapEff:")
        .first()
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0);
    if effective & (1 << capability as u32) == 0 {
        return Err(format!(
            "root with {}, which this root lacks ({why})",
            capability.name()
        ));
    }
    Ok(())
}

/// The program `name` on `PATH`, for `why`.
pub fn program(name: &str, why: &str) -> Need {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    if found {
        Ok(())
    } else {
        Err(format!("the `{name}` program on PATH ({why})"))
    }
}

/// Directories made immutable with `chattr +i` where tests keep their folders: root with
/// `CAP_LINUX_IMMUTABLE`, the program, and a filesystem that has the flag. For `why`.
pub fn immutable_dirs(why: &str) -> Need {
    root(Capability::LinuxImmutable, why)?;
    program("chattr", why)?;
    let probe = tempfile::tempdir().map_err(|e| format!("a temporary directory ({e})"))?;
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(probe.path())
            .output()
    };
    match chattr("+i") {
        Ok(out) if out.status.success() => {
            let _ = chattr("-i");
            Ok(())
        }
        Ok(out) => Err(format!(
            "a temporary directory that takes the immutable flag ({why}; `chattr +i` in {}: {})",
            std::env::temp_dir().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("a working `chattr` ({why}; {e})")),
    }
}

/// Mounting a tmpfs: root with `CAP_SYS_ADMIN` and the `mount` and `umount` programs. For
/// `why`.
pub fn tmpfs_mounts(why: &str) -> Need {
    root(Capability::SysAdmin, why)?;
    program("mount", why)?;
    program("umount", why)
}
