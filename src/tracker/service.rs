//! The tonic face of the tracker: each RPC checks its request, asks the [`Store`] and answers.
//! Every call runs in a `tracker_request` span (the RPC, the caller's address, its peer id) so a
//! tracker's debug log can be followed call by call.

use super::address::advertised_address;
use super::limits::page_size;
use super::page::{parse_file_token, parse_peer_token};
use super::registry::CheckedFile;
use super::store::{Registration, Store, TrackerStore};
use super::TrackerError;
#[cfg(test)]
use super::{TrackerConfig, TrackerLimits};
use crate::metrics::ServerMetrics;
use crate::names::validate_peer_id;
use crate::pb::tracker as pb;
use crate::pb::tracker::tracker_server::Tracker;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::{field, Instrument, Span};

/// The gRPC Tracker service over a shared [`Store`].
#[derive(Clone)]
pub(crate) struct TrackerService {
    store: Arc<dyn Store>,
    /// The server's metrics, where refusals by a cap are counted (none: not counted).
    metrics: Option<Arc<ServerMetrics>>,
}

impl TrackerService {
    /// A service over a fresh in-memory store bounded by `limits`.
    #[cfg(test)]
    pub(crate) fn new(config: &TrackerConfig, limits: TrackerLimits) -> Self {
        Self::over(TrackerStore::memory(config, limits))
    }

    /// A service over `store` (shared with whoever else holds it).
    pub(crate) fn over(store: TrackerStore) -> Self {
        TrackerService {
            store: store.0,
            metrics: None,
        }
    }

    /// The same service counting its refusals by a cap in `metrics`.
    pub(crate) fn counting_in(self, metrics: Option<Arc<ServerMetrics>>) -> Self {
        TrackerService { metrics, ..self }
    }

    /// `result`, its refusal by a cap (if it is one) counted first.
    fn counted<T>(&self, result: Result<T, TrackerError>) -> Result<T, TrackerError> {
        if let (Err(e), Some(metrics)) = (&result, &self.metrics) {
            if let Some(limit) = e.limit() {
                metrics.refused(limit);
            }
        }
        result
    }

    /// The store the service answers from.
    pub(super) fn store(&self) -> &dyn Store {
        &*self.store
    }

    fn interval_secs(&self) -> u32 {
        self.store.heartbeat_interval().as_secs().max(1) as u32
    }
}

/// The span of one incoming call. The peer id is recorded only when it is well-formed: raw
/// network text never reaches the log (a malformed id is refused by the registry anyway).
fn request_span(rpc: &'static str, remote: Option<SocketAddr>, peer_id: Option<&str>) -> Span {
    let span = tracing::debug_span!(
        "tracker_request",
        rpc,
        remote = field::Empty,
        peer = field::Empty
    );
    if let Some(remote) = remote {
        span.record("remote", field::display(remote));
    }
    if let Some(peer_id) = peer_id.filter(|id| validate_peer_id(id).is_ok()) {
        span.record("peer", peer_id);
    }
    span
}

/// Runs one call's handling in `span`, logging a refusal there (at debug: refusals are the
/// caller's business, but following a call needs to see them).
async fn in_span<T>(
    span: Span,
    handling: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    async move {
        let result = handling.await;
        if let Err(status) = &result {
            tracing::debug!(code = ?status.code(), "refused: {}", status.message());
        }
        result.map(Response::new)
    }
    .instrument(span)
    .await
}

#[tonic::async_trait]
impl Tracker for TrackerService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let remote = request.remote_addr();
        let span = request_span("Register", remote, Some(&request.get_ref().peer_id));
        in_span(span, async move {
            let req = request.into_inner();
            // The cheap checks first: a batch keeps the registered address.
            let address = if req.append {
                None
            } else {
                Some(advertised_address(remote, &req.advertise_host, req.port)?)
            };
            let files = req
                .files
                .into_iter()
                .map(CheckedFile::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            let count = files.len();
            let registered = if let Some(address) = address {
                let observed_ip = remote.map(|a| a.ip().to_canonical());
                let registered = self.counted(
                    self.store
                        .register(Registration {
                            peer_id: req.peer_id.clone(),
                            address,
                            observed_ip,
                            presented_token: req.session_token,
                            files,
                        })
                        .await,
                )?;
                tracing::info!(
                    peer = %req.peer_id,
                    address = %registered.address,
                    files = count,
                    "peer registered"
                );
                registered
            } else {
                // One more batch of a registered peer's catalog.
                let registered = self.counted(
                    self.store
                        .register_more(&req.peer_id, &req.session_token, files)
                        .await,
                )?;
                tracing::debug!(peer = %req.peer_id, files = count, "catalog batch added");
                registered
            };
            Ok(pb::RegisterResponse {
                session_token: registered.token,
                heartbeat_interval_secs: self.interval_secs(),
                advertised_address: registered.address,
                catalog_batches: true,
            })
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let span = request_span(
            "Heartbeat",
            request.remote_addr(),
            Some(&request.get_ref().peer_id),
        );
        in_span(span, async move {
            let req = request.into_inner();
            self.store
                .heartbeat(&req.peer_id, &req.session_token)
                .await?;
            Ok(pb::HeartbeatResponse {
                heartbeat_interval_secs: self.interval_secs(),
            })
        })
        .await
    }

    async fn announce_file(
        &self,
        request: Request<pb::AnnounceFileRequest>,
    ) -> Result<Response<pb::AnnounceFileResponse>, Status> {
        let span = request_span(
            "AnnounceFile",
            request.remote_addr(),
            Some(&request.get_ref().peer_id),
        );
        in_span(span, async move {
            let req = request.into_inner();
            let file = req
                .file
                .ok_or_else(|| TrackerError::InvalidArgument("file is required".into()))?;
            let file = CheckedFile::try_from(file)?;
            let name = file.name().to_string();
            self.counted(
                self.store
                    .announce(&req.peer_id, &req.session_token, file)
                    .await,
            )?;
            // Logged once checked: nothing unvalidated reaches the log.
            tracing::info!(peer = %req.peer_id, file = %name, "file announced");
            Ok(pb::AnnounceFileResponse {})
        })
        .await
    }

    async fn withdraw_file(
        &self,
        request: Request<pb::WithdrawFileRequest>,
    ) -> Result<Response<pb::WithdrawFileResponse>, Status> {
        let span = request_span(
            "WithdrawFile",
            request.remote_addr(),
            Some(&request.get_ref().peer_id),
        );
        in_span(span, async move {
            let req = request.into_inner();
            self.store
                .withdraw(&req.peer_id, &req.session_token, &req.name)
                .await?;
            tracing::info!(peer = %req.peer_id, file = %req.name, "file withdrawn");
            Ok(pb::WithdrawFileResponse {})
        })
        .await
    }

    async fn who_has(
        &self,
        request: Request<pb::WhoHasRequest>,
    ) -> Result<Response<pb::WhoHasResponse>, Status> {
        let span = request_span("WhoHas", request.remote_addr(), None);
        in_span(span, async move {
            let req = request.into_inner();
            let versions = self
                .store
                .who_has(&req.name, &req.content_id_prefix, req.max_holders)
                .await?;
            Ok(pb::WhoHasResponse { versions })
        })
        .await
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let span = request_span(
            "Leave",
            request.remote_addr(),
            Some(&request.get_ref().peer_id),
        );
        in_span(span, async move {
            let req = request.into_inner();
            self.store.leave(&req.peer_id, &req.session_token).await?;
            tracing::info!(peer = %req.peer_id, "peer left");
            Ok(pb::LeaveResponse {})
        })
        .await
    }

    async fn list_peers(
        &self,
        request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let span = request_span("ListPeers", request.remote_addr(), None);
        in_span(span, async move {
            let req = request.into_inner();
            let after = parse_peer_token(&req.page_token)?;
            let size = page_size(req.page_size);
            let (peers, next) = self.store.peers_page(after.as_deref(), size).await?;
            Ok(pb::ListPeersResponse {
                peers,
                next_page_token: next.unwrap_or_default(),
            })
        })
        .await
    }

    async fn list_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let span = request_span("ListFiles", request.remote_addr(), None);
        in_span(span, async move {
            let req = request.into_inner();
            let after = parse_file_token(&req.page_token)?;
            let size = page_size(req.page_size);
            let (files, next) = self.store.files_page(after, size).await?;
            Ok(pb::ListFilesResponse {
                files,
                next_page_token: next.unwrap_or_default(),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[tokio::test]
    async fn each_call_runs_in_a_span_naming_the_rpc_and_only_a_well_formed_peer() {
        let logs = crate::testing::CapturedLogs::default();
        let _guard = tracing::subscriber::set_default(logs.debug_subscriber());
        let service = TrackerService::new(&TrackerConfig::default(), TrackerLimits::default());
        let heartbeat = |peer_id: &str| {
            Request::new(pb::HeartbeatRequest {
                peer_id: peer_id.into(),
                session_token: "t".into(),
            })
        };
        let unknown = service.heartbeat(heartbeat("ghost")).await.unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
        let malformed = service
            .heartbeat(heartbeat("evil\u{202E}id"))
            .await
            .unwrap_err();
        assert_eq!(malformed.code(), Code::InvalidArgument);

        let text = logs.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains(r#"tracker_request{rpc="Heartbeat" peer="ghost"}"#)
                && lines[0].contains("refused: peer \"ghost\" is not registered"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(r#"tracker_request{rpc="Heartbeat"}"#)
                && lines[1].contains("refused: peer id"),
            "{}",
            lines[1]
        );
        assert!(
            !text.contains('\u{202E}'),
            "raw network text logged: {text}"
        );
    }
}
