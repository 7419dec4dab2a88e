//! A tracker that writes down every call a peer makes to it (the RPC and the token it carried),
//! standing in for a second tracker: one that shares the first one's store (it takes any token
//! at once), or one of its own that knows no one until they register. Optionally it refuses
//! every `Register` as a tracker at its caps does.

use p2pshare::pb::tracker as tpb;
use p2pshare::pb::tracker::tracker_server::{Tracker, TrackerServer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How the fake treats a session token it did not hand out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Store {
    /// As a tracker sharing the other's store: any token is valid.
    Shared,
    /// As a tracker of its own: only tokens it handed out.
    Own,
    /// Its own, and at its caps: every `Register` is refused (RESOURCE_EXHAUSTED).
    Full,
}

/// The token this fake hands out.
pub const FAKE_TOKEN: &str = "fake-token";

/// One call: the RPC, the token it carried, and (for `Register`) the catalog's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub rpc: &'static str,
    pub token: String,
    pub files: usize,
}

struct Fake {
    store: Store,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Fake {
    fn note(&self, rpc: &'static str, token: &str, files: usize) {
        self.calls.lock().unwrap().push(Call {
            rpc,
            token: token.to_string(),
            files,
        });
    }

    fn check(&self, token: &str) -> Result<(), Status> {
        match self.store {
            Store::Shared => Ok(()),
            _ if token == FAKE_TOKEN => Ok(()),
            _ => Err(Status::not_found("unknown peer")),
        }
    }
}

#[tonic::async_trait]
impl Tracker for Fake {
    async fn register(
        &self,
        request: Request<tpb::RegisterRequest>,
    ) -> Result<Response<tpb::RegisterResponse>, Status> {
        let request = request.into_inner();
        self.note("Register", &request.session_token, request.files.len());
        if self.store == Store::Full {
            return Err(Status::resource_exhausted("too many peers (--max-peers)"));
        }
        Ok(Response::new(tpb::RegisterResponse {
            session_token: FAKE_TOKEN.into(),
            heartbeat_interval_secs: 1,
            advertised_address: format!("127.0.0.1:{}", request.port),
            catalog_batches: true,
        }))
    }
    async fn heartbeat(
        &self,
        request: Request<tpb::HeartbeatRequest>,
    ) -> Result<Response<tpb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        self.note("Heartbeat", &request.session_token, 0);
        self.check(&request.session_token)?;
        Ok(Response::new(tpb::HeartbeatResponse {
            heartbeat_interval_secs: 1,
        }))
    }
    async fn announce_file(
        &self,
        request: Request<tpb::AnnounceFileRequest>,
    ) -> Result<Response<tpb::AnnounceFileResponse>, Status> {
        let request = request.into_inner();
        self.note("AnnounceFile", &request.session_token, 1);
        self.check(&request.session_token)?;
        Ok(Response::new(tpb::AnnounceFileResponse::default()))
    }
    async fn withdraw_file(
        &self,
        request: Request<tpb::WithdrawFileRequest>,
    ) -> Result<Response<tpb::WithdrawFileResponse>, Status> {
        let request = request.into_inner();
        self.note("WithdrawFile", &request.session_token, 0);
        self.check(&request.session_token)?;
        Ok(Response::new(tpb::WithdrawFileResponse::default()))
    }
    async fn who_has(
        &self,
        _: Request<tpb::WhoHasRequest>,
    ) -> Result<Response<tpb::WhoHasResponse>, Status> {
        self.note("WhoHas", "", 0);
        Err(Status::not_found("no such file"))
    }
    async fn leave(
        &self,
        request: Request<tpb::LeaveRequest>,
    ) -> Result<Response<tpb::LeaveResponse>, Status> {
        self.note("Leave", &request.into_inner().session_token, 0);
        Ok(Response::new(tpb::LeaveResponse::default()))
    }
    async fn list_peers(
        &self,
        _: Request<tpb::ListPeersRequest>,
    ) -> Result<Response<tpb::ListPeersResponse>, Status> {
        self.note("ListPeers", "", 0);
        Ok(Response::new(tpb::ListPeersResponse::default()))
    }
    async fn list_files(
        &self,
        _: Request<tpb::ListFilesRequest>,
    ) -> Result<Response<tpb::ListFilesResponse>, Status> {
        self.note("ListFiles", "", 0);
        Ok(Response::new(tpb::ListFilesResponse::default()))
    }
}

/// A running fake tracker; stopped when dropped.
pub struct FakeTracker {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    stop: CancellationToken,
}

impl FakeTracker {
    pub async fn start(store: Store) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let fake = Fake {
            store,
            calls: calls.clone(),
        };
        let token = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TrackerServer::new(fake))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move { token.cancelled().await },
                ),
        );
        FakeTracker { addr, calls, stop }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for FakeTracker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
