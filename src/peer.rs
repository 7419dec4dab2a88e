//! A peer node: its store (the shared folder), the Peer service serving it, the link to the
//! tracker (registration, heartbeats, re-registration after a tracker restart), the folder
//! watcher, and the downloader. The shell and the binaries drive a [`PeerNode`].
//!
//! Everything a node runs hangs off one cancellation token: its server and each `GetBlocks`
//! stream, its background tasks, and every download (each under a child token). So
//! [`PeerNode::shutdown`] ends uploads and downloads in flight at once instead of waiting for them,
//! and is bounded: a client that stops reading cannot hold it up.

pub(crate) mod blocks_wire;
pub(crate) mod book;
pub(crate) mod choke;
pub mod download;
pub mod server;
pub mod shell;
pub mod store;
pub(crate) mod tracker_link;

pub use tracker_link::{TrackerLinkError, MAX_TRACKERS};
mod watch;

use crate::grpc::{ChannelPool, ClientSecurity, ServerSecurity, SwarmKey, TlsIdentity, TrustedCa};
use crate::pb::tracker::FileEntry;
use book::SwarmBook;
use download::{ActiveDownloads, DownloadError, DownloadReport, DownloadRequest, Progress};
use server::{PeerService, ServeLimits};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::GrowingFile;
use store::{SharedFile, Store, StoreError};
use tokio::net::TcpListener;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracker_link::TrackerLink;

/// Errors starting a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer's folder is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A tracker address is malformed, or more than [`MAX_TRACKERS`] are given.
    #[error(transparent)]
    Tracker(#[from] TrackerLinkError),
    /// The peer id is malformed.
    #[error("bad peer id: {0}")]
    BadPeerId(#[from] crate::names::NameError),
    /// Anything else local.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How a peer runs.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer id.
    pub peer_id: String,
    /// The peer's directory (holding `files/`), normally `<root>/<peer_id>`.
    pub dir: PathBuf,
    /// Tracker address, `host:port`: the first tracker this peer registers with.
    pub tracker_address: String,
    /// More trackers (`host:port` each), tried in this order after `tracker_address` when the
    /// one in use does not answer ([`MAX_TRACKERS`] in all at most; a repeated address counts
    /// once). Default: none.
    pub fallback_trackers: Vec<String>,
    /// Host to advertise instead of the address the tracker observes (empty: observed).
    pub advertise_host: String,
    /// A holder silent this long during a download is given up on.
    pub stall_timeout: Duration,
    /// Holders one download is connected to at once (chosen at random among those it knows).
    pub max_holders: usize,
    /// How often `files/` is fully rescanned: the safety net under the folder watcher.
    pub rescan_interval: Duration,
    /// Limits of the Peer service.
    pub limits: ServeLimits,
    /// What the Peer service demands of callers (swarm key, TLS). Default: nothing (a LAN swarm).
    pub server_security: ServerSecurity,
    /// What this peer presents when it calls the tracker and other peers (swarm key, the CA it
    /// trusts for TLS). Default: nothing. In a private swarm both sides carry the same key, and a
    /// TLS peer both serves TLS and trusts the swarm's CA.
    pub client_security: ClientSecurity,
}

impl PeerConfig {
    /// Defaults for a peer `peer_id` in `dir` using the tracker at `tracker_address`.
    pub fn new(peer_id: &str, dir: PathBuf, tracker_address: &str) -> Self {
        PeerConfig {
            peer_id: peer_id.to_string(),
            dir,
            tracker_address: tracker_address.to_string(),
            fallback_trackers: Vec::new(),
            advertise_host: String::new(),
            stall_timeout: download::DEFAULT_STALL_TIMEOUT,
            max_holders: download::DEFAULT_MAX_HOLDERS,
            rescan_interval: Duration::from_secs(30),
            limits: ServeLimits::default(),
            server_security: ServerSecurity::default(),
            client_security: ClientSecurity::default(),
        }
    }

    /// Makes this peer a member of a private swarm: `swarm_key` demanded of callers and sent on
    /// every call; with `tls`, the Peer service serves TLS with the identity and every client
    /// trusts the CA.
    pub fn set_swarm_security(
        &mut self,
        swarm_key: Option<SwarmKey>,
        tls: Option<(TlsIdentity, TrustedCa)>,
    ) {
        let (identity, ca) = tls.unzip();
        self.server_security = ServerSecurity {
            swarm_key: swarm_key.clone(),
            tls: identity,
        };
        self.client_security = ClientSecurity {
            swarm_key,
            tls_ca: ca,
        };
    }
}

/// What the peer found in its folder at start.
#[derive(Debug, Clone)]
pub struct StartInfo {
    /// `files/` did not exist and was created.
    pub created_folder: bool,
    /// Files shared.
    pub shared: usize,
    /// Entries not shared, with why.
    pub skipped: Vec<String>,
    /// Bytes hashed at start (0 on a restart over unchanged files: the hash cache answered).
    pub hashed_bytes: u64,
    /// Registration outcome: Ok(advertised address) or the error (retried in the background).
    pub registration: Result<String, String>,
    /// The tracker registered with (`host:port`), or, if none took the registration, the one
    /// tried first.
    pub tracker_address: String,
}

/// How long [`PeerNode::shutdown`] waits for the tracker to acknowledge `Leave`: the tracker
/// drops a silent peer after a few heartbeats anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long [`PeerNode::shutdown`] waits, once everything is cancelled, for its tasks and
/// downloads to wind down before aborting what is left (a server connection whose client stopped
/// reading never drains by itself).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A running peer.
#[derive(Debug)]
pub struct PeerNode {
    config: PeerConfig,
    store: Arc<Store>,
    tracker: Arc<TrackerLink>,
    /// What this peer heard about the swarm: shared by its downloads and its Peer service.
    book: Arc<SwarmBook>,
    /// Channels to holders, shared by its downloads; closed at shutdown.
    pool: ChannelPool,
    /// Bytes of blocks its Peer service has sent.
    uploaded: Arc<std::sync::atomic::AtomicU64>,
    active: ActiveDownloads,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Each download in progress holds a receiver; shutdown waits for them all to be dropped.
    downloads: tokio::sync::watch::Sender<()>,
}

impl PeerNode {
    /// Opens the folder, hashes what needs hashing, serves the Peer service on `listener`,
    /// registers with the tracker (retrying in the background if it is not reachable yet) and
    /// starts heartbeats and the folder watcher.
    pub async fn start(
        config: PeerConfig,
        listener: TcpListener,
    ) -> Result<(Arc<PeerNode>, StartInfo), PeerError> {
        crate::names::validate_peer_id(&config.peer_id)?;
        let (trackers, merged) =
            tracker_link::policy::tracker_list(&config.tracker_address, &config.fallback_trackers)?;
        for address in merged {
            tracing::warn!("tracker {address} given more than once: asked once");
        }
        let local_addr = listener.local_addr()?;
        let dir = config.dir.clone();
        let (store, created_folder, scan) = tokio::task::spawn_blocking(move || {
            let (store, created) = Store::open(&dir)?;
            let scan = store.rescan()?;
            Ok::<_, StoreError>((store, created, scan))
        })
        .await
        .map_err(std::io::Error::other)??;
        for why in &scan.skipped {
            tracing::warn!("not shared: {why}");
        }
        let store = Arc::new(store);
        let tracker = Arc::new(TrackerLink::new(
            &trackers,
            &config.peer_id,
            local_addr.port(),
            &config.advertise_host,
            &config.client_security,
        )?);
        let shutdown = CancellationToken::new();
        let book = Arc::new(SwarmBook::default());
        let service = PeerService::new(store.clone(), config.limits.clone())
            .with_shutdown(shutdown.child_token())
            .with_book(book.clone());
        let uploaded = service.uploaded();
        let server = {
            let token = shutdown.clone();
            let security = config.server_security.clone();
            let connection_limits = config.limits.connections.clone();
            tokio::spawn(async move {
                let routes = tonic::service::Routes::new(service.into_server());
                if let Err(e) = crate::grpc::serve_with_security(
                    listener,
                    routes,
                    crate::grpc::ServiceKind::Peer,
                    &connection_limits,
                    &security,
                    async move { token.cancelled().await },
                )
                .await
                {
                    tracing::error!(error = %e, "peer server failed");
                }
            })
        };
        let node = Arc::new(PeerNode {
            config,
            store,
            tracker,
            book,
            pool: ChannelPool::default(),
            uploaded,
            active: ActiveDownloads::default(),
            local_addr,
            shutdown,
            tasks: Mutex::new(vec![server]),
            downloads: tokio::sync::watch::Sender::new(()),
        });
        let registration = node
            .register()
            .await
            .map(|s| s.advertised_address)
            .map_err(|e| e.to_string());
        let heartbeat = tokio::spawn(node.clone().heartbeat_loop());
        let watcher = watch::spawn(node.clone());
        let sweeper = tokio::spawn(node.pool.clone().sweep_until(node.shutdown.clone()));
        node.tasks_lock().extend([heartbeat, watcher, sweeper]);
        let info = StartInfo {
            created_folder,
            shared: node.store.list().len(),
            skipped: scan.skipped,
            hashed_bytes: scan.hashed_bytes,
            registration,
            tracker_address: node.tracker.address().to_string(),
        };
        Ok((node, info))
    }

    fn tasks_lock(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer id.
    pub fn id(&self) -> &str {
        &self.config.peer_id
    }

    /// Its configuration.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// Bytes of file data this peer has uploaded to others since it started.
    pub fn bytes_uploaded(&self) -> u64 {
        self.uploaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the Peer service listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared folder.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The tracker link.
    pub(crate) fn tracker(&self) -> &Arc<TrackerLink> {
        &self.tracker
    }

    /// Downloads a file from the other holders in the swarm (see [`download`]). The download runs
    /// under a child of the node's cancellation token: when the node shuts down it stops, keeps
    /// its verified pieces for a later `get`, and returns [`DownloadError::Cancelled`].
    pub async fn download(
        &self,
        request: &DownloadRequest,
        progress: Arc<Progress>,
    ) -> Result<DownloadReport, DownloadError> {
        let _running = self.downloads.subscribe();
        let context = download::Context {
            peer_id: &self.config.peer_id,
            tracker: &self.tracker,
            store: &self.store,
            security: &self.config.client_security,
            pool: &self.pool,
            stall_timeout: self.config.stall_timeout,
            active: &self.active,
            book: &self.book,
            max_holders: self.config.max_holders,
            metrics: self.config.limits.peer_metrics(),
        };
        download::run(&context, request, progress, self.shutdown.child_token()).await
    }

    /// The catalog as the tracker wants it.
    /// Whole files, and the downloads in progress this peer serves as a partial holder (unless
    /// a whole file has the name: the tracker keys a peer's files by name).
    fn catalog(&self) -> Vec<FileEntry> {
        let whole = self.store.list();
        let growing = self.store.growing().list();
        let partial = growing
            .iter()
            .filter(|g| !whole.iter().any(|f| f.name == g.name))
            .map(|g| partial_entry(g));
        whole.iter().map(entry).chain(partial).collect()
    }

    /// Registers the whole catalog (in batches if it does not fit in one request).
    async fn register(&self) -> Result<tracker_link::Session, TrackerLinkError> {
        let catalog = self.catalog();
        let count = catalog.len();
        let registration = self.tracker.register(catalog).await?;
        let session = registration.session;
        tracing::info!(
            files = registration.files,
            of = count,
            address = %session.advertised_address,
            tracker = %self.tracker.address(),
            "registered with the tracker"
        );
        Ok(session)
    }

    /// Announces a file the peer now holds.
    pub(crate) async fn announce(&self, file: &SharedFile) -> Result<(), TrackerLinkError> {
        self.tracker.announce(entry(file)).await
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tracker_down = false;
        // After a refusal (the tracker is at one of its caps), registering again waits longer
        // each time (up to a minute) instead of resending a full catalog every second.
        let mut refused: Option<Duration> = None;
        loop {
            let wait = next_beat(
                self.tracker.session().map(|s| s.heartbeat_interval),
                refused,
                self.tracker.reachable(),
            );
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let beat = async {
                let result = match self.tracker.heartbeat().await {
                    Err(TrackerLinkError::NotRegistered) => self.register().await.map(|_| ()),
                    other => other,
                };
                // On a tracker later in the list: now and then, see whether an earlier one is
                // back (see tracker_link::policy).
                if result.is_ok() && self.tracker.return_due() {
                    self.tracker.return_to_earlier(|| self.catalog()).await;
                }
                result
            };
            // A tracker slow to answer must not hold up shutdown.
            let Some(result) = self.shutdown.run_until_cancelled(beat).await else {
                return;
            };
            refused = match &result {
                Err(e) if e.code() == Some(tonic::Code::ResourceExhausted) => {
                    Some(refusal_backoff(refused))
                }
                _ => None,
            };
            match result {
                Ok(()) if tracker_down => {
                    tracing::info!("tracker reachable again");
                    tracker_down = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !tracker_down {
                        tracing::warn!("{e}; still serving, retrying");
                    }
                    tracker_down = true;
                }
            }
        }
    }

    /// Leaves the tracker and stops serving: uploads and downloads in flight end at once. Idempotent.
    ///
    /// Bounded (about 1.5 s at most), whatever clients and holders do: `Leave` gets a short
    /// deadline; then everything is cancelled at once: uploads in flight end with UNAVAILABLE,
    /// downloads stop and keep their verified pieces, background tasks end; what has not stopped
    /// after a short drain (a connection whose client stopped reading) is aborted. Saves the hash
    /// cache.
    pub async fn shutdown(&self) {
        if self.shutdown.is_cancelled() {
            return;
        }
        match tokio::time::timeout(LEAVE_TIMEOUT, self.tracker.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("leave: {e}"),
            Err(_) => tracing::debug!("leave: no answer within {LEAVE_TIMEOUT:?}"),
        }
        self.shutdown.cancel();
        // Idle connections to holders close now, the others as the downloads let go.
        self.pool.close();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        let tasks: Vec<_> = self.tasks_lock().drain(..).collect();
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::debug!("a task did not stop within {DRAIN_TIMEOUT:?}; aborting it");
                task.abort();
            }
        }
        // Downloads save their progress records as they stop.
        if tokio::time::timeout_at(deadline, self.downloads.closed())
            .await
            .is_err()
        {
            tracing::debug!("downloads still stopping after {DRAIN_TIMEOUT:?}");
        }
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.flush_cache()).await;
    }

    /// Stops at once without telling the tracker (as if the process died): for tests of
    /// liveness and failover.
    pub fn kill(&self) {
        self.shutdown.cancel();
        self.pool.close();
        for task in self.tasks_lock().drain(..) {
            task.abort();
        }
    }
}

/// Least wait between two probes of a tracker that does not answer.
const MIN_PROBE_WAIT: Duration = Duration::from_millis(250);

/// How long the heartbeat loop waits before its next call, given the session's heartbeat
/// interval (if registered), the refusal backoff (if the tracker refused the last registration)
/// and whether the tracker answered the last call.
///
/// The backoff is for refusals only. A tracker that did not answer is probed again after a
/// quarter of the heartbeat interval (at least [`MIN_PROBE_WAIT`]), each probe on a fresh
/// connection with a deadline of [`tracker_link::PROBE_TIMEOUT`]: once the network is back, a
/// peer is on the tracker again within about one heartbeat, not a dead connection's
/// retransmission timer or a full call deadline later.
fn next_beat(interval: Option<Duration>, refused: Option<Duration>, reachable: bool) -> Duration {
    match (interval, refused) {
        (Some(interval), _) if !reachable => (interval / 4).max(MIN_PROBE_WAIT),
        (Some(interval), _) => interval,
        (None, Some(backoff)) => backoff,
        (None, None) => Duration::from_secs(1),
    }
}

/// How long to wait before registering again after the tracker refused (RESOURCE_EXHAUSTED),
/// given the previous wait: 2 s, doubling to a minute.
fn refusal_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(Duration::from_secs(2), |b| {
        (b * 2).min(Duration::from_secs(60))
    })
}

/// How the tracker is told of a download in progress that serves its verified pieces.
fn partial_entry(file: &GrowingFile) -> FileEntry {
    FileEntry {
        name: file.name.clone(),
        size: file.manifest.geometry().size(),
        content_id: file.content_id().to_hex(),
        partial: true,
    }
}

fn entry(file: &SharedFile) -> FileEntry {
    FileEntry {
        name: file.name.clone(),
        size: file.size,
        content_id: file.content_id().to_hex(),
        partial: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registering_after_a_refusal_backs_off_to_a_minute() {
        let mut wait = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let next = refusal_backoff(wait);
            seen.push(next.as_secs());
            wait = Some(next);
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn an_unreachable_tracker_is_probed_within_a_heartbeat() {
        let s = Duration::from_secs;
        // Answering: beat at the interval; refused before registering: the backoff.
        assert_eq!(next_beat(Some(s(2)), None, true), s(2));
        assert_eq!(next_beat(None, Some(s(8)), true), s(8));
        assert_eq!(next_beat(None, None, true), s(1));
        // Not answering: a probe and its deadline fit in one interval (of 2 s or more).
        for interval in [s(2), s(10), s(3600)] {
            let wait = next_beat(Some(interval), None, false);
            assert!(
                wait + tracker_link::PROBE_TIMEOUT <= interval,
                "{interval:?}"
            );
        }
        assert_eq!(next_beat(Some(s(1)), None, false), MIN_PROBE_WAIT);
        assert_eq!(
            next_beat(Some(s(2)), None, false),
            Duration::from_millis(500)
        );
        // Never the refusal backoff while unreachable with a session.
        assert_eq!(
            next_beat(Some(s(2)), Some(s(60)), false),
            Duration::from_millis(500)
        );
        // Unregistered and unreachable: as before, every second (plus the probe's deadline).
        assert_eq!(next_beat(None, None, false), s(1));
    }
}
