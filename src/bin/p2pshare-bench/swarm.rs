//! The swarm the bench process hosts: its runtime, a tracker, the seed folder where every shared
//! file is generated and hashed once, and holders started over hard links to those files.

use crate::child::{self, ChildPeer, ChildReport, Plan};
use crate::error::BenchError;
use crate::files::{write_random, HASH_CACHE};
use crate::worker::stop_peer;
use p2pshare::chunking::ContentId;
use p2pshare::peer::server::RateLimiter;
use p2pshare::peer::store::Store;
use p2pshare::peer::{PeerConfig, PeerNode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A generated file in the seed folder.
#[derive(Debug, Clone)]
pub(crate) struct DataFile {
    pub(crate) size: u64,
    pub(crate) content_id: ContentId,
}

/// A tracker running on the bench process's runtime.
pub(crate) struct TrackerHandle {
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The bench process: runtime, tracker, seed folder, holders.
pub(crate) struct Swarm {
    pub(crate) runtime: tokio::runtime::Runtime,
    /// This executable, started again for every child process.
    pub(crate) exe: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) tracker: TrackerHandle,
    /// Folder where every shared file is generated and hashed once; holders hard-link from it.
    seed: Store,
    pub(crate) data: BTreeMap<String, DataFile>,
    next_id: u32,
}

impl Swarm {
    pub(crate) fn start(root: &Path) -> Result<Swarm, BenchError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let tracker = runtime.block_on(start_tracker(Duration::from_secs(10)))?;
        let (seed, _) =
            Store::open(&root.join("seed")).map_err(|e| BenchError::Setup(e.to_string()))?;
        Ok(Swarm {
            runtime,
            exe: std::env::current_exe()?,
            root: root.to_path_buf(),
            tracker,
            seed,
            data: BTreeMap::new(),
            next_id: 0,
        })
    }

    /// Stops the tracker (holders are stopped by whoever started them).
    pub(crate) fn stop(self) {
        self.runtime.block_on(stop_tracker(self.tracker));
    }

    /// A peer id not used before in this run: `label-N`.
    pub(crate) fn fresh_id(&mut self, label: &str) -> String {
        self.next_id += 1;
        format!("{label}-{}", self.next_id)
    }

    /// Generates the random files `(name, size)` missing from the seed folder and hashes them.
    pub(crate) fn ensure_data(&mut self, files: &[(String, u64)]) -> Result<(), BenchError> {
        let mut added = false;
        for (name, size) in files {
            if self.data.get(name).is_some_and(|d| d.size == *size) {
                continue;
            }
            write_random(&self.seed.files_dir().join(name), *size)?;
            added = true;
        }
        if added {
            self.seed
                .rescan()
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            for (name, size) in files {
                let shared = self
                    .seed
                    .get(name)
                    .ok_or_else(|| BenchError::Setup(format!("{name} was not shared")))?;
                self.data.insert(
                    name.clone(),
                    DataFile {
                        size: *size,
                        content_id: shared.content_id(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Where the seed copy of `name` is.
    pub(crate) fn data_path(&self, name: &str) -> PathBuf {
        self.seed.files_dir().join(name)
    }

    /// Starts one holder per entry of `rates` (an upload cap in bytes per second, or none), each
    /// sharing hard links to `files`, with the seed's hash cache (no hashing).
    pub(crate) fn start_holders(
        &mut self,
        label: &str,
        files: &[String],
        rates: &[Option<u64>],
    ) -> Result<Vec<Arc<PeerNode>>, BenchError> {
        let mut nodes = Vec::new();
        for rate in rates {
            let (id, dir) = match self.holder_folder(label, files) {
                Ok(folder) => folder,
                Err(e) => {
                    self.stop_holders(nodes);
                    return Err(e);
                }
            };
            let mut config = PeerConfig::new(&id, dir, &self.tracker.addr.to_string());
            config.limits.upload_rate = rate.map(|r| Arc::new(RateLimiter::new(r)));
            let node = self.runtime.block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let (node, info) = PeerNode::start(config, listener)
                    .await
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                if let Err(e) = info.registration {
                    return Err(BenchError::Setup(format!("holder {id}: {e}")));
                }
                if info.hashed_bytes > 0 {
                    tracing::warn!(holder = %id, bytes = info.hashed_bytes, "holder hashed at start: the seeded cache was not used");
                }
                Ok(node)
            });
            match node {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    self.stop_holders(nodes);
                    return Err(e);
                }
            }
        }
        Ok(nodes)
    }

    /// A fresh holder id and its folder under `peers/`, sharing hard links to `files` with the
    /// seed's hash cache (so the holder hashes nothing at start).
    pub(crate) fn holder_folder(
        &mut self,
        label: &str,
        files: &[String],
    ) -> Result<(String, PathBuf), BenchError> {
        let id = self.fresh_id(label);
        let dir = self.root.join("peers").join(&id);
        std::fs::create_dir_all(dir.join("files"))?;
        std::fs::create_dir_all(dir.join(".p2pshare"))?;
        for name in files {
            std::fs::hard_link(self.data_path(name), dir.join("files").join(name))?;
        }
        // Best effort: without it the holder hashes its files at start.
        let _ = std::fs::copy(self.seed.root().join(HASH_CACHE), dir.join(HASH_CACHE));
        Ok((id, dir))
    }

    /// Stops holders and removes their folders.
    pub(crate) fn stop_holders(&self, nodes: Vec<Arc<PeerNode>>) {
        self.runtime.block_on(async {
            for node in &nodes {
                stop_peer(node).await;
            }
        });
        for node in nodes {
            let _ = std::fs::remove_dir_all(node.store().root());
        }
    }

    /// A fresh directory and id for a child's peer.
    pub(crate) fn child_peer(&mut self, label: &str) -> ChildPeer {
        let id = self.fresh_id(label);
        ChildPeer {
            dir: self.root.join("peers").join(&id),
            id,
            tracker: self.tracker.addr.to_string(),
        }
    }

    /// Runs `plan` in a child process, then removes the child peer's folder.
    pub(crate) fn run_child(
        &self,
        plan: &Plan,
        limit: Duration,
    ) -> Result<ChildReport, BenchError> {
        let report = child::run_child(&self.exe, plan, limit);
        Self::remove_child_folder(plan);
        report
    }

    /// Runs `plan` in a child process and keeps the child peer's folder (removed later with
    /// [`Swarm::remove_child_folder`]).
    pub(crate) fn run_child_keeping_its_folder(
        &self,
        plan: &Plan,
        limit: Duration,
    ) -> Result<ChildReport, BenchError> {
        child::run_child(&self.exe, plan, limit)
    }

    /// Removes the folder of the child peer of `plan`, if it has one.
    pub(crate) fn remove_child_folder(plan: &Plan) {
        let dir = match plan {
            Plan::Download { peer, .. }
            | Plan::GetMany { peer, .. }
            | Plan::Stress { peer, .. }
            | Plan::Seed { peer, .. } => Some(&peer.dir),
            Plan::Startup { .. } | Plan::TrackerLoad { .. } => None,
        };
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts a tracker on `127.0.0.1:0` on the current runtime.
pub(crate) async fn start_tracker(
    heartbeat_interval: Duration,
) -> Result<TrackerHandle, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let config = p2pshare::tracker::TrackerConfig { heartbeat_interval };
        // Every synthetic peer of the tracker scenario connects from 127.0.0.1: no per-address cap.
        let limits = p2pshare::tracker::TrackerLimits::unlimited();
        let security = p2pshare::grpc::ServerSecurity::default();
        let stopped = async move { token.cancelled().await };
        if let Err(e) =
            p2pshare::tracker::serve_with_limits(listener, config, limits, security, stopped).await
        {
            tracing::error!(error = %e, "bench tracker failed");
        }
    });
    Ok(TrackerHandle { addr, stop, task })
}

/// Stops a tracker and waits (up to 10 s) for it to end.
pub(crate) async fn stop_tracker(tracker: TrackerHandle) {
    tracker.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.task).await;
}
