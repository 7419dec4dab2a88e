//! A tracker written against the generated stubs whose answers a test scripts (and may change
//! while it runs): hostile answers for the client-boundary tests, a fixed holder list for the
//! live-swarm tests. It remembers who registered on which port.

use p2pshare::pb::tracker as tpb;
use p2pshare::pb::tracker::tracker_server::{Tracker, TrackerServer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// A clear-screen sequence: a refusal quoting it must not reach a terminal raw.
const CLEAR: &str = "\u{1b}[2J";

/// What a scripted tracker says about files and the rest of the swarm.
#[derive(Clone)]
pub struct Answers {
    /// The answer to `Register`, or `None` for an honest one (the peer's own address).
    pub register: Option<tpb::RegisterResponse>,
    /// `WhoHas` answers by file name (INVALID_ARGUMENT for other names).
    pub versions: Vec<(String, Vec<tpb::FileVersion>)>,
    pub files: Vec<tpb::FileSummary>,
    pub peers: Vec<tpb::PeerSummary>,
}

/// A tracker that answers with `Answers` (which a test may change) whatever is asked, and
/// remembers who registered on which port.
pub struct ScriptedTracker {
    answers: Arc<Mutex<Answers>>,
    registered: Arc<Mutex<Vec<(String, u32)>>>,
}

impl ScriptedTracker {
    fn answers(&self) -> Answers {
        self.answers.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl Tracker for ScriptedTracker {
    async fn register(
        &self,
        request: Request<tpb::RegisterRequest>,
    ) -> Result<Response<tpb::RegisterResponse>, Status> {
        let request = request.into_inner();
        self.registered
            .lock()
            .unwrap()
            .push((request.peer_id.clone(), request.port));
        Ok(Response::new(self.answers().register.unwrap_or(
            tpb::RegisterResponse {
                session_token: "t".into(),
                heartbeat_interval_secs: 10,
                advertised_address: format!("127.0.0.1:{}", request.port),
                ..Default::default()
            },
        )))
    }
    async fn heartbeat(
        &self,
        _: Request<tpb::HeartbeatRequest>,
    ) -> Result<Response<tpb::HeartbeatResponse>, Status> {
        Ok(Response::new(tpb::HeartbeatResponse {
            heartbeat_interval_secs: 10,
        }))
    }
    async fn announce_file(
        &self,
        _: Request<tpb::AnnounceFileRequest>,
    ) -> Result<Response<tpb::AnnounceFileResponse>, Status> {
        Ok(Response::new(tpb::AnnounceFileResponse::default()))
    }
    async fn withdraw_file(
        &self,
        _: Request<tpb::WithdrawFileRequest>,
    ) -> Result<Response<tpb::WithdrawFileResponse>, Status> {
        Ok(Response::new(tpb::WithdrawFileResponse::default()))
    }
    async fn who_has(
        &self,
        request: Request<tpb::WhoHasRequest>,
    ) -> Result<Response<tpb::WhoHasResponse>, Status> {
        let name = request.into_inner().name;
        match self
            .answers()
            .versions
            .into_iter()
            .find(|(n, _)| *n == name)
        {
            Some((_, versions)) => Ok(Response::new(tpb::WhoHasResponse { versions })),
            // A refusal whose message would clear the screen and break the line.
            None => Err(Status::invalid_argument(format!(
                "{CLEAR}bad {name}\nsecond line"
            ))),
        }
    }
    async fn leave(
        &self,
        _: Request<tpb::LeaveRequest>,
    ) -> Result<Response<tpb::LeaveResponse>, Status> {
        Ok(Response::new(tpb::LeaveResponse::default()))
    }
    async fn list_peers(
        &self,
        _: Request<tpb::ListPeersRequest>,
    ) -> Result<Response<tpb::ListPeersResponse>, Status> {
        Ok(Response::new(tpb::ListPeersResponse {
            peers: self.answers().peers,
            ..Default::default()
        }))
    }
    async fn list_files(
        &self,
        _: Request<tpb::ListFilesRequest>,
    ) -> Result<Response<tpb::ListFilesResponse>, Status> {
        Ok(Response::new(tpb::ListFilesResponse {
            files: self.answers().files,
            ..Default::default()
        }))
    }
}

/// A running [`ScriptedTracker`].
pub struct Running {
    pub addr: SocketAddr,
    /// What it answers from now on.
    pub answers: Arc<Mutex<Answers>>,
    /// (peer id, Peer service port) of each registration.
    pub registered: Arc<Mutex<Vec<(String, u32)>>>,
}

/// Serves a [`ScriptedTracker`] on a loopback port.
pub async fn start_scripted_tracker(answers: Answers) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registered = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(answers));
    let tracker = ScriptedTracker {
        answers: answers.clone(),
        registered: registered.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TrackerServer::new(tracker))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Running {
        addr,
        answers,
        registered,
    }
}
