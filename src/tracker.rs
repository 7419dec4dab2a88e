//! The tracker: a registry of live peers and the files they hold, and its gRPC face.
//!
//! Soft state only: the registry can be lost at any time (restart) and is rebuilt from peers'
//! re-registrations. It never sees file content. The [`Registry`] is plain synchronous data behind
//! a mutex that is never held across an `.await`; [`TrackerService`] is the thin async layer.

use crate::chunking::ContentId;
use crate::names::{validate_file_name, validate_peer_id, NameError};
use crate::pb::tracker as pb;
use crate::pb::tracker::tracker_server::{Tracker, TrackerServer};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// A peer silent for this many heartbeat intervals is dropped.
pub const MISSED_HEARTBEATS_BEFORE_DROP: u32 = 3;

/// Errors of the registry. Mapped to gRPC codes in [`crate::status`].
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// A malformed name in a request.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// Any other malformed field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The peer id is not registered (or was dropped): register again.
    #[error("peer {0:?} is not registered (the tracker may have restarted): register again")]
    UnknownPeer(String),
    /// The session token does not belong to the peer id.
    #[error("wrong session token for peer {0:?}")]
    WrongToken(String),
    /// Another live peer holds the id.
    #[error("peer id {peer_id:?} is already in use by a live peer at {address}")]
    PeerIdTaken {
        /// The id asked for.
        peer_id: String,
        /// Where its current holder is.
        address: String,
    },
    /// Nobody holds the file.
    #[error("no peer holds {0:?}")]
    UnknownFile(String),
}

/// A file as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileRecord {
    size: u64,
    content_id: ContentId,
}

#[derive(Debug)]
struct PeerRecord {
    address: String,
    token: String,
    files: HashMap<String, FileRecord>,
    last_seen: Instant,
}

/// Key of the holder index: a name and one of its versions.
type VersionKey = (String, ContentId);

/// Who is alive and who holds what. Synchronous; the caller passes `now` so that tests control
/// time.
#[derive(Debug)]
pub struct Registry {
    heartbeat_interval: Duration,
    peers: HashMap<String, PeerRecord>,
    /// name -> content id -> (size, holders). Kept in step with `peers` so `WhoHas` costs the
    /// holders it returns, not the size of the swarm.
    index: BTreeMap<String, BTreeMap<ContentId, (u64, BTreeSet<String>)>>,
}

/// A registration accepted by [`Registry::register`].
#[derive(Debug, Clone)]
pub struct Registered {
    /// The session token.
    pub token: String,
    /// The address others will be given.
    pub address: String,
}

/// A file in a request, checked.
#[derive(Debug, Clone)]
pub struct CheckedFile {
    name: String,
    record: FileRecord,
}

impl TryFrom<pb::FileEntry> for CheckedFile {
    type Error = TrackerError;
    fn try_from(entry: pb::FileEntry) -> Result<Self, Self::Error> {
        validate_file_name(&entry.name)?;
        let content_id = entry.content_id.parse().map_err(|e| {
            TrackerError::InvalidArgument(format!("file {:?}: {e}", entry.name))
        })?;
        Ok(CheckedFile {
            name: entry.name,
            record: FileRecord {
                size: entry.size,
                content_id,
            },
        })
    }
}

impl Registry {
    /// An empty registry whose peers must heartbeat every `heartbeat_interval`.
    pub fn new(heartbeat_interval: Duration) -> Self {
        Registry {
            heartbeat_interval,
            peers: HashMap::new(),
            index: BTreeMap::new(),
        }
    }

    /// The heartbeat interval peers are told.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    fn expiry(&self) -> Duration {
        self.heartbeat_interval * MISSED_HEARTBEATS_BEFORE_DROP
    }

    /// Registers (or re-registers) a peer with its full catalog.
    ///
    /// A peer id held by a live peer is refused unless the caller proves it is that peer (its
    /// token) or comes from the very same address (the old process cannot still own that port, so
    /// it is a restart).
    pub fn register(
        &mut self,
        peer_id: &str,
        address: String,
        presented_token: &str,
        files: Vec<CheckedFile>,
        now: Instant,
    ) -> Result<Registered, TrackerError> {
        validate_peer_id(peer_id)?;
        let token = match self.peers.get(peer_id) {
            Some(old) if now.duration_since(old.last_seen) < self.expiry() => {
                if old.token == presented_token || old.address == address {
                    old.token.clone()
                } else {
                    return Err(TrackerError::PeerIdTaken {
                        peer_id: peer_id.to_string(),
                        address: old.address.clone(),
                    });
                }
            }
            _ => new_token(),
        };
        self.remove_peer(peer_id);
        let record = PeerRecord {
            address: address.clone(),
            token: token.clone(),
            files: HashMap::new(),
            last_seen: now,
        };
        self.peers.insert(peer_id.to_string(), record);
        for file in files {
            self.add_file(peer_id, file);
        }
        Ok(Registered { token, address })
    }

    fn authenticate(
        &mut self,
        peer_id: &str,
        token: &str,
        now: Instant,
    ) -> Result<&mut PeerRecord, TrackerError> {
        let expiry = self.expiry();
        match self.peers.get_mut(peer_id) {
            Some(peer) if now.duration_since(peer.last_seen) < expiry => {
                if peer.token != token {
                    return Err(TrackerError::WrongToken(peer_id.to_string()));
                }
                peer.last_seen = now;
                Ok(peer)
            }
            _ => Err(TrackerError::UnknownPeer(peer_id.to_string())),
        }
    }

    /// Records that a peer is alive.
    pub fn heartbeat(&mut self, peer_id: &str, token: &str, now: Instant) -> Result<(), TrackerError> {
        self.authenticate(peer_id, token, now).map(|_| ())
    }

    /// Adds (or replaces, by name) a file in a peer's catalog.
    pub fn announce(
        &mut self,
        peer_id: &str,
        token: &str,
        file: CheckedFile,
        now: Instant,
    ) -> Result<(), TrackerError> {
        self.authenticate(peer_id, token, now)?;
        self.add_file(peer_id, file);
        Ok(())
    }

    /// Removes a file from a peer's catalog (no error if it was not there).
    pub fn withdraw(
        &mut self,
        peer_id: &str,
        token: &str,
        name: &str,
        now: Instant,
    ) -> Result<(), TrackerError> {
        validate_file_name(name)?;
        let peer = self.authenticate(peer_id, token, now)?;
        if let Some(old) = peer.files.remove(name) {
            self.unindex(peer_id, name, &old);
        }
        Ok(())
    }

    /// Drops a peer at once.
    pub fn leave(&mut self, peer_id: &str, token: &str, now: Instant) -> Result<(), TrackerError> {
        self.authenticate(peer_id, token, now)?;
        self.remove_peer(peer_id);
        Ok(())
    }

    /// Drops every peer not heard from within the expiry; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expiry = self.expiry();
        let dead: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) >= expiry)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.remove_peer(id);
        }
        dead
    }

    /// The versions of `name` (optionally only content ids starting with `prefix`) with their live
    /// holders, most holders first.
    pub fn who_has(
        &self,
        name: &str,
        prefix: &str,
        now: Instant,
    ) -> Result<Vec<pb::FileVersion>, TrackerError> {
        validate_file_name(name)?;
        if !prefix.is_empty() && !crate::chunking::is_content_id_prefix(prefix) {
            return Err(TrackerError::InvalidArgument(format!(
                "content id prefix {prefix:?} is not lowercase hexadecimal"
            )));
        }
        let expiry = self.expiry();
        let mut versions: Vec<pb::FileVersion> = self
            .index
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(cid, _)| cid.to_hex().starts_with(prefix))
            .map(|(cid, (size, holders))| pb::FileVersion {
                name: name.to_string(),
                size: *size,
                content_id: cid.to_hex(),
                holders: holders
                    .iter()
                    .filter_map(|id| {
                        let peer = self.peers.get(id)?;
                        (now.duration_since(peer.last_seen) < expiry).then(|| pb::Holder {
                            peer_id: id.clone(),
                            address: peer.address.clone(),
                        })
                    })
                    .collect(),
            })
            .filter(|v| !v.holders.is_empty())
            .collect();
        if versions.is_empty() {
            return Err(TrackerError::UnknownFile(name.to_string()));
        }
        versions.sort_by(|a, b| {
            b.holders
                .len()
                .cmp(&a.holders.len())
                .then_with(|| a.content_id.cmp(&b.content_id))
        });
        Ok(versions)
    }

    /// Live peers, sorted by id.
    pub fn peers(&self, now: Instant) -> Vec<pb::PeerSummary> {
        let mut peers: Vec<pb::PeerSummary> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) < self.expiry())
            .map(|(id, p)| pb::PeerSummary {
                peer_id: id.clone(),
                address: p.address.clone(),
                file_count: p.files.len() as u32,
                total_bytes: p.files.values().map(|f| f.size).sum(),
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    /// Every version offered by a live peer, sorted by name then content id.
    pub fn files(&self, now: Instant) -> Vec<pb::FileSummary> {
        let alive = |id: &String| {
            self.peers
                .get(id)
                .is_some_and(|p| now.duration_since(p.last_seen) < self.expiry())
        };
        self.index
            .iter()
            .flat_map(|(name, versions)| {
                versions.iter().filter_map(move |(cid, (size, holders))| {
                    let count = holders.iter().filter(|h| alive(h)).count() as u32;
                    (count > 0).then(|| pb::FileSummary {
                        name: name.clone(),
                        size: *size,
                        content_id: cid.to_hex(),
                        holder_count: count,
                    })
                })
            })
            .collect()
    }

    fn add_file(&mut self, peer_id: &str, file: CheckedFile) {
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return;
        };
        let old = peer.files.insert(file.name.clone(), file.record.clone());
        if let Some(old) = old {
            self.unindex(peer_id, &file.name, &old);
        }
        self.index
            .entry(file.name)
            .or_default()
            .entry(file.record.content_id)
            .or_insert_with(|| (file.record.size, BTreeSet::new()))
            .1
            .insert(peer_id.to_string());
    }

    fn unindex(&mut self, peer_id: &str, name: &str, record: &FileRecord) {
        let key: VersionKey = (name.to_string(), record.content_id);
        if let Some(versions) = self.index.get_mut(&key.0) {
            if let Some((_, holders)) = versions.get_mut(&key.1) {
                holders.remove(peer_id);
                if holders.is_empty() {
                    versions.remove(&key.1);
                }
            }
            if versions.is_empty() {
                self.index.remove(&key.0);
            }
        }
    }

    fn remove_peer(&mut self, peer_id: &str) {
        if let Some(peer) = self.peers.remove(peer_id) {
            for (name, record) in &peer.files {
                self.unindex(peer_id, name, record);
            }
        }
    }
}

fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Configuration of a tracker server.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// How often peers must heartbeat.
    pub heartbeat_interval: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            heartbeat_interval: Duration::from_secs(10),
        }
    }
}

/// The gRPC Tracker service over a shared [`Registry`].
#[derive(Clone)]
pub struct TrackerService {
    registry: Arc<Mutex<Registry>>,
}

impl TrackerService {
    /// A service over a fresh registry.
    pub fn new(config: &TrackerConfig) -> Self {
        TrackerService {
            registry: Arc::new(Mutex::new(Registry::new(config.heartbeat_interval))),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        // A panic while holding the lock cannot leave the registry half-updated in a way that
        // matters more than losing the tracker, so poisoning is ignored.
        let mut guard = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    fn interval_secs(&self) -> u32 {
        self.with(|r| r.heartbeat_interval().as_secs().max(1) as u32)
    }
}

fn advertised_address(
    remote: Option<SocketAddr>,
    advertise_host: &str,
    port: u32,
) -> Result<String, TrackerError> {
    if port == 0 || port > u16::MAX as u32 {
        return Err(TrackerError::InvalidArgument(format!(
            "port {port} is not a TCP port (1-65535)"
        )));
    }
    if !advertise_host.is_empty() {
        let valid = advertise_host.len() <= 253
            && advertise_host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !valid {
            return Err(TrackerError::InvalidArgument(format!(
                "advertise_host {advertise_host:?} is not a host name or IP address"
            )));
        }
        return Ok(match advertise_host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]:{port}"),
            Err(_) => format!("{advertise_host}:{port}"),
        });
    }
    let ip = remote
        .map(|a| a.ip().to_canonical())
        .ok_or_else(|| TrackerError::InvalidArgument("cannot see the caller's address; set advertise_host".into()))?;
    Ok(SocketAddr::new(ip, port as u16).to_string())
}

#[tonic::async_trait]
impl Tracker for TrackerService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let remote = request.remote_addr();
        let req = request.into_inner();
        let address = advertised_address(remote, &req.advertise_host, req.port)?;
        let files = req
            .files
            .into_iter()
            .map(CheckedFile::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let count = files.len();
        let registered = self.with(|r| {
            r.register(&req.peer_id, address, &req.session_token, files, Instant::now())
        })?;
        tracing::info!(peer = %req.peer_id, address = %registered.address, files = count, "peer registered");
        Ok(Response::new(pb::RegisterResponse {
            session_token: registered.token,
            heartbeat_interval_secs: self.interval_secs(),
            advertised_address: registered.address,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        self.with(|r| r.heartbeat(&req.peer_id, &req.session_token, Instant::now()))?;
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_interval_secs: self.interval_secs(),
        }))
    }

    async fn announce_file(
        &self,
        request: Request<pb::AnnounceFileRequest>,
    ) -> Result<Response<pb::AnnounceFileResponse>, Status> {
        let req = request.into_inner();
        let file = req
            .file
            .ok_or_else(|| TrackerError::InvalidArgument("file is required".into()))?;
        let file = CheckedFile::try_from(file)?;
        tracing::info!(peer = %req.peer_id, file = %file.name, "file announced");
        self.with(|r| r.announce(&req.peer_id, &req.session_token, file, Instant::now()))?;
        Ok(Response::new(pb::AnnounceFileResponse {}))
    }

    async fn withdraw_file(
        &self,
        request: Request<pb::WithdrawFileRequest>,
    ) -> Result<Response<pb::WithdrawFileResponse>, Status> {
        let req = request.into_inner();
        self.with(|r| r.withdraw(&req.peer_id, &req.session_token, &req.name, Instant::now()))?;
        tracing::info!(peer = %req.peer_id, file = %req.name, "file withdrawn");
        Ok(Response::new(pb::WithdrawFileResponse {}))
    }

    async fn who_has(
        &self,
        request: Request<pb::WhoHasRequest>,
    ) -> Result<Response<pb::WhoHasResponse>, Status> {
        let req = request.into_inner();
        let versions =
            self.with(|r| r.who_has(&req.name, &req.content_id_prefix, Instant::now()))?;
        Ok(Response::new(pb::WhoHasResponse { versions }))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let req = request.into_inner();
        self.with(|r| r.leave(&req.peer_id, &req.session_token, Instant::now()))?;
        tracing::info!(peer = %req.peer_id, "peer left");
        Ok(Response::new(pb::LeaveResponse {}))
    }

    async fn list_peers(
        &self,
        _request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let peers = self.with(|r| r.peers(Instant::now()));
        Ok(Response::new(pb::ListPeersResponse { peers }))
    }

    async fn list_files(
        &self,
        _request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let files = self.with(|r| r.files(Instant::now()));
        Ok(Response::new(pb::ListFilesResponse { files }))
    }
}

/// Serves the Tracker service (with reflection and health) on an already-bound listener until
/// `shutdown` completes, then drains in-flight calls. A background task drops silent peers.
pub async fn serve(
    listener: TcpListener,
    config: TrackerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = TrackerService::new(&config);
    let reaper = {
        let service = service.clone();
        let period = (config.heartbeat_interval / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                for id in service.with(|r| r.expire(Instant::now())) {
                    tracing::info!(peer = %id, "peer dropped: no heartbeat");
                }
            }
        })
    };
    let result = crate::grpc::serve(
        listener,
        tonic::service::Routes::new(TrackerServer::new(service)),
        crate::grpc::ServiceKind::Tracker,
        shutdown,
    )
    .await;
    reaper.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &[u8]) -> CheckedFile {
        CheckedFile::try_from(pb::FileEntry {
            name: name.into(),
            size: content.len() as u64,
            content_id: ContentId::of(content).to_hex(),
        })
        .unwrap()
    }

    fn holders(r: &Registry, name: &str, now: Instant) -> Vec<Vec<String>> {
        match r.who_has(name, "", now) {
            Ok(versions) => versions
                .into_iter()
                .map(|v| v.holders.into_iter().map(|h| h.peer_id).collect())
                .collect(),
            Err(TrackerError::UnknownFile(_)) => vec![],
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn register_announce_withdraw_leave_are_reflected() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        let a = r.register("A", "1.1.1.1:1".into(), "", vec![file("f", b"1")], now).unwrap();
        let b = r.register("B", "1.1.1.2:1".into(), "", vec![], now).unwrap();
        assert_eq!(holders(&r, "f", now), vec![vec!["A"]]);
        r.announce("B", &b.token, file("f", b"1"), now).unwrap();
        assert_eq!(holders(&r, "f", now), vec![vec!["A", "B"]]);
        r.withdraw("A", &a.token, "f", now).unwrap();
        assert_eq!(holders(&r, "f", now), vec![vec!["B"]]);
        r.leave("B", &b.token, now).unwrap();
        assert!(holders(&r, "f", now).is_empty());
        assert!(r.files(now).is_empty());
    }

    #[test]
    fn versions_are_grouped_by_content_and_sorted_by_holders() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        r.register("A", "a:1".into(), "", vec![file("f", b"old")], now).unwrap();
        r.register("B", "b:1".into(), "", vec![file("f", b"new")], now).unwrap();
        r.register("C", "c:1".into(), "", vec![file("f", b"new")], now).unwrap();
        assert_eq!(holders(&r, "f", now), vec![vec!["B", "C"], vec!["A"]]);
        let old = ContentId::of(b"old").to_hex();
        let only_old = r.who_has("f", &old[..6], now).unwrap();
        assert_eq!(only_old.len(), 1);
        assert_eq!(only_old[0].content_id, old);
        assert!(r.who_has("f", "XYZ", now).is_err());
    }

    #[test]
    fn silent_peers_expire_and_tokens_are_enforced() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(1));
        let a = r.register("A", "a:1".into(), "", vec![file("f", b"x")], t0).unwrap();
        assert!(matches!(r.heartbeat("A", "forged", t0), Err(TrackerError::WrongToken(_))));
        assert!(matches!(r.leave("A", "forged", t0), Err(TrackerError::WrongToken(_))));
        // Someone else cannot take the id while A lives...
        assert!(matches!(
            r.register("A", "evil:1".into(), "", vec![], t0),
            Err(TrackerError::PeerIdTaken { .. })
        ));
        // ...but A restarting on its own address can.
        r.register("A", "a:1".into(), "", vec![file("f", b"x")], t0).unwrap();
        r.heartbeat("A", &a.token, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(holders(&r, "f", t0 + Duration::from_secs(4)), vec![vec!["A"]]);
        // Silent for three intervals: gone, even before the reaper runs.
        let later = t0 + Duration::from_secs(5);
        assert!(holders(&r, "f", later).is_empty());
        assert_eq!(r.expire(later), vec!["A".to_string()]);
        assert!(matches!(r.heartbeat("A", &a.token, later), Err(TrackerError::UnknownPeer(_))));
        r.register("A", "evil:1".into(), "", vec![], later).unwrap();
    }

    #[test]
    fn bad_input_is_refused() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(1));
        assert!(r.register("a/b", "x:1".into(), "", vec![], now).is_err());
        assert!(r.who_has("../etc", "", now).is_err());
        assert!(CheckedFile::try_from(pb::FileEntry {
            name: "ok".into(),
            size: 1,
            content_id: "nothex".into()
        })
        .is_err());
        assert!(advertised_address(None, "", 0).is_err());
        assert!(advertised_address(None, "", 70000).is_err());
        assert!(advertised_address(None, "bad host!", 1).is_err());
        assert_eq!(advertised_address(None, "::1", 5).unwrap(), "[::1]:5");
        assert_eq!(
            advertised_address(Some("127.0.0.1:999".parse().unwrap()), "", 5).unwrap(),
            "127.0.0.1:5"
        );
    }
}
