//! What the tracker-bounds tests share: a tracker in this process or as a real process, clients
//! from many loopback addresses, and paging helpers.

use super::common::TestPeer;
use p2pshare::chunking::ContentId;
use p2pshare::console::ProgressMode;
use p2pshare::pb::tracker as tpb;
use p2pshare::pb::tracker::tracker_client::TrackerClient;
use p2pshare::pb::tracker::tracker_server::{Tracker, TrackerServer};
use p2pshare::tracker::{TrackerConfig, TrackerLimits};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// A tracker in this process with the caps `limits`, stopped when dropped.
pub struct InProcessTracker {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessTracker {
    /// A tracker on a fresh port, heartbeats every 600 s.
    pub async fn start(limits: TrackerLimits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, limits, Duration::from_secs(600))
    }

    /// A tracker on `listener`, heartbeats every `heartbeat`.
    pub fn start_on(listener: TcpListener, limits: TrackerLimits, heartbeat: Duration) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            p2pshare::tracker::serve_with_limits(
                listener,
                TrackerConfig {
                    heartbeat_interval: heartbeat,
                },
                limits,
                p2pshare::grpc::ServerSecurity::default(),
                async move { token.cancelled().await },
            )
            .await
            .unwrap();
        });
        InProcessTracker {
            addr,
            stop,
            task: Some(task),
        }
    }

    /// Stops the tracker and waits until its port is closed (bounded).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("tracker stopped")
                .unwrap();
        }
    }

    /// A client connecting from `127.1.0.0 + n`.
    pub fn client(&self, n: u32) -> TrackerClient<Channel> {
        client_from(self.addr, loopback(n))
    }
}

impl Drop for InProcessTracker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub use super::common::tracker_process::TrackerProcess;

/// A client of the tracker at `addr` whose connection comes from `from` (any 127.0.0.0/8
/// address works on Linux), so one test can be many peers' addresses.
pub fn client_from(addr: SocketAddr, from: IpAddr) -> TrackerClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(from))
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    TrackerClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// The `n`th loopback address past 127.1.0.0.
pub fn loopback(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + n))
}

/// A file entry whose content id is derived from its name (the tracker never checks content).
pub fn entry(name: String) -> tpb::FileEntry {
    tpb::FileEntry {
        content_id: ContentId::of(name.as_bytes()).to_hex(),
        size: 1 << 20,
        name,
        ..Default::default()
    }
}

pub fn register(peer_id: &str, files: Vec<tpb::FileEntry>) -> tpb::RegisterRequest {
    tpb::RegisterRequest {
        peer_id: peer_id.into(),
        port: 7000,
        files,
        ..Default::default()
    }
}

/// Every page of `ListFiles` (asking `page_size`): the versions in order, and how many pages.
pub async fn all_files(
    client: &mut TrackerClient<Channel>,
    page_size: u32,
) -> (Vec<tpb::FileSummary>, usize) {
    let (mut all, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = client
            .list_files(tpb::ListFilesRequest {
                page_size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        let most = match page_size {
            0 => 1000,
            n => n.min(5000),
        };
        assert!(page.files.len() <= most as usize, "{}", page.files.len());
        all.extend(page.files);
        if page.next_page_token.is_empty() {
            return (all, pages);
        }
        token = page.next_page_token;
    }
}

/// Every page of `ListPeers`.
pub async fn all_peers(
    client: &mut TrackerClient<Channel>,
    page_size: u32,
) -> Vec<tpb::PeerSummary> {
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let page = client
            .list_peers(tpb::ListPeersRequest {
                page_size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.peers);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

/// What the shell prints for `line` on `node`, which must succeed.
pub async fn shell(node: &TestPeer, line: &str) -> String {
    let mut out = Vec::new();
    let command = p2pshare::peer::shell::parse(line).unwrap();
    let outcome = p2pshare::peer::shell::execute(&node.node, command, &mut out, ProgressMode::Off)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(outcome, p2pshare::peer::shell::Outcome::Ok, "{text}");
    text
}

/// `count` files with distinct names of `name_len` bytes, unique to `peer`.
pub fn fat_catalog(peer: u32, count: u32, name_len: usize) -> Vec<tpb::FileEntry> {
    (0..count)
        .map(|k| entry(format!("{peer:05}-{k:07}-{}", "n".repeat(name_len - 14))))
        .collect()
}

/// Every catalog entry the tracker lists (the holder counts of every version, all pages).
pub async fn catalog_entries(client: &mut TrackerClient<Channel>) -> u64 {
    let (mut entries, mut token) = (0, String::new());
    loop {
        let page = client
            .list_files(tpb::ListFilesRequest {
                page_size: 5000,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        entries += page
            .files
            .iter()
            .map(|f| f.holder_count as u64)
            .sum::<u64>();
        if page.next_page_token.is_empty() {
            return entries;
        }
        token = page.next_page_token;
    }
}

/// A hostile tracker whose listings never end: every `ListFiles` page holds one entry and a
/// fresh token, every `ListPeers` page one peer and the token it was asked with. Everything
/// else is accepted.
pub struct EndlessPages {
    pub pages: std::sync::atomic::AtomicU64,
}

#[tonic::async_trait]
impl Tracker for EndlessPages {
    async fn register(
        &self,
        _: Request<tpb::RegisterRequest>,
    ) -> Result<Response<tpb::RegisterResponse>, Status> {
        Ok(Response::new(tpb::RegisterResponse {
            session_token: "t".into(),
            heartbeat_interval_secs: 600,
            advertised_address: "127.0.0.1:9".into(),
            catalog_batches: true,
        }))
    }
    async fn heartbeat(
        &self,
        _: Request<tpb::HeartbeatRequest>,
    ) -> Result<Response<tpb::HeartbeatResponse>, Status> {
        Ok(Response::new(tpb::HeartbeatResponse {
            heartbeat_interval_secs: 600,
        }))
    }
    async fn announce_file(
        &self,
        _: Request<tpb::AnnounceFileRequest>,
    ) -> Result<Response<tpb::AnnounceFileResponse>, Status> {
        Ok(Response::new(tpb::AnnounceFileResponse {}))
    }
    async fn withdraw_file(
        &self,
        _: Request<tpb::WithdrawFileRequest>,
    ) -> Result<Response<tpb::WithdrawFileResponse>, Status> {
        Ok(Response::new(tpb::WithdrawFileResponse {}))
    }
    async fn who_has(
        &self,
        _: Request<tpb::WhoHasRequest>,
    ) -> Result<Response<tpb::WhoHasResponse>, Status> {
        Err(Status::not_found("nothing"))
    }
    async fn leave(
        &self,
        _: Request<tpb::LeaveRequest>,
    ) -> Result<Response<tpb::LeaveResponse>, Status> {
        Ok(Response::new(tpb::LeaveResponse {}))
    }
    async fn list_peers(
        &self,
        request: Request<tpb::ListPeersRequest>,
    ) -> Result<Response<tpb::ListPeersResponse>, Status> {
        let n = self.pages.fetch_add(1, Ordering::Relaxed);
        let token = match request.into_inner().page_token {
            empty if empty.is_empty() => "again".into(),
            asked => asked,
        };
        Ok(Response::new(tpb::ListPeersResponse {
            peers: vec![tpb::PeerSummary {
                peer_id: format!("p{n}"),
                address: "127.0.0.1:9".into(),
                ..Default::default()
            }],
            next_page_token: token,
        }))
    }
    async fn list_files(
        &self,
        _: Request<tpb::ListFilesRequest>,
    ) -> Result<Response<tpb::ListFilesResponse>, Status> {
        let n = self.pages.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(tpb::ListFilesResponse {
            files: vec![tpb::FileSummary {
                name: format!("f{n}"),
                content_id: ContentId::of(&n.to_le_bytes()).to_hex(),
                holder_count: 1,
                ..Default::default()
            }],
            next_page_token: format!("page{n}"),
        }))
    }
}

/// Serves `EndlessPages` on a loopback port (for the life of the test's runtime).
pub async fn start_endless_pages() -> (SocketAddr, Arc<EndlessPages>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(EndlessPages {
        pages: Default::default(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TrackerServer::from_arc(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, fake)
}
