//! One tracker of a peer's list: its address, its client, and whether it answered last.
//!
//! A tracker that did not answer (no connection, or no answer in time) is not waited on again:
//! the next call dials a fresh connection (the old one may be a dead TCP connection whose
//! retransmissions back off for seconds after a pulled cable comes back) and has a short
//! deadline ([`PROBE_TIMEOUT`]) until the tracker answers again.

use super::{TrackerLinkError, CALL_TIMEOUT, PROBE_TIMEOUT};
use crate::grpc::{ClientChannel, ClientSecurity};
use crate::pb::tracker::tracker_client::TrackerClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tonic::Status;
use tracing::Instrument;

/// One tracker.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// Its address, `host:port`.
    pub(super) address: String,
    /// Replaced by a fresh (not yet connected) channel when a call gets no answer.
    client: Mutex<TrackerClient<ClientChannel>>,
    /// False from a call that got no answer until one that does.
    reachable: AtomicBool,
    security: ClientSecurity,
}

impl Endpoint {
    /// The tracker at `address`, reached as `security` says (no connection is made yet).
    pub(super) fn new(address: &str, security: &ClientSecurity) -> Result<Self, TrackerLinkError> {
        let channel = security
            .channel(address)
            .map_err(|e| TrackerLinkError::Unreachable {
                address: address.to_string(),
                detail: format!("bad address: {}", crate::grpc::error_chain(&e)),
            })?;
        Ok(Endpoint {
            address: address.to_string(),
            client: Mutex::new(TrackerClient::new(channel)),
            reachable: AtomicBool::new(true),
            security: security.clone(),
        })
    }

    /// Whether the last call got an answer (any answer, a refusal included) rather than none.
    pub(super) fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// The deadline of the next call: [`PROBE_TIMEOUT`] while the tracker is unreachable,
    /// [`CALL_TIMEOUT`] otherwise.
    pub(super) fn call_timeout(&self) -> Duration {
        if self.reachable() {
            CALL_TIMEOUT
        } else {
            PROBE_TIMEOUT
        }
    }

    fn client(&self) -> TrackerClient<ClientChannel> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Notes that a call got no answer: the next call dials a fresh connection instead of
    /// waiting on this one (calls in flight keep theirs), and has a probe's deadline.
    fn unreachable(&self) {
        self.reachable.store(false, Ordering::Relaxed);
        // The address was accepted by `new`, so this does not fail; if it did, the old channel
        // stays (tonic redials it once its connection is seen to be broken).
        if let Ok(channel) = self.security.channel(&self.address) {
            *self.client.lock().unwrap_or_else(|e| e.into_inner()) = TrackerClient::new(channel);
        }
    }

    /// Makes the call `rpc` (named for the span) with the deadline `deadline`.
    pub(super) async fn call<T, F, Fut>(
        &self,
        rpc: &'static str,
        deadline: Duration,
        f: F,
    ) -> Result<T, TrackerLinkError>
    where
        F: FnOnce(TrackerClient<ClientChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let unreachable = |detail: String| TrackerLinkError::Unreachable {
            address: self.address.clone(),
            detail,
        };
        let span = tracing::debug_span!("tracker_call", rpc, tracker = %self.address);
        async move {
            let result = match tokio::time::timeout(deadline, f(self.client())).await {
                Err(_) => Err(unreachable(format!("no answer within {deadline:?}"))),
                Ok(Ok(response)) => Ok(response.into_inner()),
                // Transport failures surface as UNAVAILABLE (or UNKNOWN with a transport cause,
                // as when a plaintext client meets a TLS server).
                Ok(Err(status)) => match self.security.explain_connection_failure(&status) {
                    Some(detail) => Err(unreachable(detail)),
                    None => Err(TrackerLinkError::Rejected(status)),
                },
            };
            match &result {
                Err(TrackerLinkError::Unreachable { .. }) => self.unreachable(),
                _ => self.reachable.store(true, Ordering::Relaxed),
            }
            // The caller decides how much a failure matters; following a call needs to see it.
            if let Err(e) = &result {
                tracing::debug!("failed: {e}");
            }
            result
        }
        .instrument(span)
        .await
    }
}
