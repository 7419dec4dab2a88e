//! In-process swarm for integration tests: a tracker and peers on ephemeral loopback ports, each
//! peer in its own temporary directory. Nothing sleeps to wait for a server: every listener is
//! bound before its address is handed out.
#![allow(dead_code)]

use p2pshare::peer::download::{
    Destination, DownloadError, DownloadReport, DownloadRequest, Progress,
};
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
