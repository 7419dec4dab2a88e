//! What the store tests share: an in-process tracker over a store, the backend of a contract
//! test (memory, or a Redis server of its own), and small clients of the RPCs.
#![allow(dead_code)]

use crate::common::redis::RedisServer;
use p2pshare::chunking::ContentId;
use p2pshare::grpc::{ServerLimits, ServerSecurity};
use p2pshare::pb::tracker as pb;
use p2pshare::pb::tracker::tracker_client::TrackerClient;
use p2pshare::tracker::{StoreConfig, TrackerConfig, TrackerLimits, TrackerStore};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A tracker served in this process over a store.
pub struct Served {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    pub async fn start(store: &StoreConfig, heartbeat: Duration, limits: TrackerLimits) -> Self {
        let config = TrackerConfig {
            heartbeat_interval: heartbeat,
        };
        let opened = TrackerStore::open(store, &config, limits).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            p2pshare::tracker::serve_with_store(
                listener,
                config,
                opened,
                ServerSecurity::default(),
                &ServerLimits::default(),
                async move { token.cancelled().await },
            )
            .await
            .unwrap();
        });
        Served { addr, stop, task }
    }

    pub fn client(&self) -> TrackerClient<Channel> {
        TrackerClient::new(p2pshare::grpc::channel(&self.addr.to_string()).unwrap())
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Which store a contract test runs against; the Redis server lives as long as this.
pub enum Backend {
    Memory,
    Redis(RedisServer),
}

impl Backend {
    /// The backend, or `None` when Redis is missing (the harness printed the skip line).
    pub fn of(redis: bool) -> Option<Self> {
        if redis {
            RedisServer::start().map(Backend::Redis)
        } else {
            Some(Backend::Memory)
        }
    }

    pub fn config(&self) -> StoreConfig {
        match self {
            Backend::Memory => StoreConfig::Memory,
            Backend::Redis(server) => StoreConfig::parse(&server.url(), "test").unwrap(),
        }
    }
}

pub fn entry(name: &str, partial: bool) -> pb::FileEntry {
    pb::FileEntry {
        name: name.into(),
        size: name.len() as u64 * 1000,
        content_id: ContentId::of(name.as_bytes()).to_hex(),
        partial,
    }
}

pub async fn register(
    client: &mut TrackerClient<Channel>,
    id: &str,
    port: u32,
    files: &[pb::FileEntry],
) -> Result<String, tonic::Status> {
    let reply = client
        .register(pb::RegisterRequest {
            peer_id: id.into(),
            port,
            files: files.to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(reply.into_inner().session_token)
}

/// (peer id, address, partial) of each holder of `name`'s first version.
pub async fn holders(
    client: &mut TrackerClient<Channel>,
    name: &str,
) -> Result<Vec<(String, String, bool)>, tonic::Status> {
    let reply = client
        .who_has(pb::WhoHasRequest {
            name: name.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(reply.versions[0]
        .holders
        .iter()
        .map(|h| (h.peer_id.clone(), h.address.clone(), h.partial))
        .collect())
}

/// Every live peer id, following page tokens (pages of `size`).
pub async fn peer_ids(client: &mut TrackerClient<Channel>, size: u32) -> Vec<String> {
    let (mut all, mut token) = (Vec::new(), String::new());
    for _ in 0..1000 {
        let page = client
            .list_peers(pb::ListPeersRequest {
                page_size: size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.peers.into_iter().map(|p| p.peer_id));
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
    panic!("more than 1000 pages");
}

/// Every listed version as (name, holders, partial holders), following page tokens.
pub async fn files(client: &mut TrackerClient<Channel>, size: u32) -> Vec<(String, u32, u32)> {
    let (mut all, mut token) = (Vec::new(), String::new());
    for _ in 0..1000 {
        let page = client
            .list_files(pb::ListFilesRequest {
                page_size: size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(
            page.files
                .into_iter()
                .map(|f| (f.name, f.holder_count, f.partial_holder_count)),
        );
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
    panic!("more than 1000 pages");
}

pub fn heartbeat(id: &str, token: &str) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        peer_id: id.into(),
        session_token: token.into(),
    }
}
