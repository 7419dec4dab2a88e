//! A peer's connection to the tracker: registration with its session token, heartbeats,
//! announcements and queries. Every call has a deadline, so a tracker that is down gives a clear
//! "tracker unreachable" error instead of a hang, and runs in a `tracker_call` span (the RPC and
//! the tracker's address) so a peer's debug log shows which call a line belongs to.

use crate::grpc::{ClientChannel, ClientSecurity};
use crate::pb::tracker as pb;
use crate::pb::tracker::tracker_client::TrackerClient;
use std::sync::Mutex;
use std::time::Duration;
use tonic::{Code, Status};
use tracing::Instrument;

/// Deadline of one call to the tracker.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors talking to the tracker.
#[derive(Debug, thiserror::Error)]
pub enum TrackerLinkError {
    /// No answer: the tracker is down or the address is wrong.
    #[error("tracker unreachable at {address}: {detail} (is `tracker` running there?)")]
    Unreachable {
        /// Where we tried.
        address: String,
        /// What failed.
        detail: String,
    },
    /// The peer is not registered (yet, or any more).
    #[error("not registered with the tracker (yet); retrying in the background")]
    NotRegistered,
    /// The tracker answered with an error (its message is escaped when shown: it is the
    /// tracker's text).
    #[error("tracker: {}", crate::names::shown(&crate::names::at_most(.0.message(), 500)))]
    Rejected(Status),
    /// The tracker's answer did not make sense (see `Session::checked`).
    #[error("the tracker's answer is malformed: {0}")]
    Malformed(String),
}

impl TrackerLinkError {
    /// The gRPC code, if the tracker answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            TrackerLinkError::Rejected(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// What a successful registration gave us.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Token for authenticated calls.
    pub token: String,
    /// Heartbeat interval the tracker asked for.
    pub heartbeat_interval: Duration,
    /// Address the tracker gives others for us.
    pub advertised_address: String,
}

/// Longest session token taken from a tracker (ours are 32 hex digits; it is sent back on every
/// call, so a tracker cannot make a peer carry megabytes).
const MAX_TOKEN_BYTES: usize = 256;
/// Longest heartbeat interval taken from a tracker (the tracker's own bound): beating more often
/// than asked is harmless, never beating is not.
const MAX_HEARTBEAT_INTERVAL_SECS: u32 = 3600;

/// The heartbeat interval a tracker asked for, within 1 s ..= [`MAX_HEARTBEAT_INTERVAL_SECS`].
fn heartbeat_interval(secs: u32) -> Duration {
    Duration::from_secs(secs.clamp(1, MAX_HEARTBEAT_INTERVAL_SECS).into())
}

impl Session {
    /// The session a `Register` answer gives, checked: a token of 1 to [`MAX_TOKEN_BYTES`] bytes,
    /// a dialable advertised address (it is shown, and told to the holders this peer downloads
    /// from), and an interval within bounds.
    fn checked(answer: pb::RegisterResponse) -> Result<Session, TrackerLinkError> {
        let malformed = |what: String| Err(TrackerLinkError::Malformed(what));
        if answer.session_token.is_empty() || answer.session_token.len() > MAX_TOKEN_BYTES {
            return malformed(format!(
                "a session token of {} bytes",
                answer.session_token.len()
            ));
        }
        let Some(advertised_address) = crate::names::peer_address(&answer.advertised_address)
        else {
            return malformed(format!(
                "advertised address {:?} is not host:port",
                crate::names::at_most(&answer.advertised_address, 64)
            ));
        };
        Ok(Session {
            token: answer.session_token,
            heartbeat_interval: heartbeat_interval(answer.heartbeat_interval_secs),
            advertised_address,
        })
    }
}

/// The link to the tracker.
#[derive(Debug)]
pub(crate) struct TrackerLink {
    address: String,
    client: TrackerClient<ClientChannel>,
    security: ClientSecurity,
    peer_id: String,
    port: u16,
    advertise_host: String,
    session: Mutex<Option<Session>>,
}

impl TrackerLink {
    /// A link to the tracker at `address` (`host:port`) for peer `peer_id` serving on `port`,
    /// connecting (TLS, swarm key) as `security` says.
    pub(crate) fn new(
        address: &str,
        peer_id: &str,
        port: u16,
        advertise_host: &str,
        security: &ClientSecurity,
    ) -> Result<Self, TrackerLinkError> {
        let channel = security
            .channel(address)
            .map_err(|e| TrackerLinkError::Unreachable {
                address: address.to_string(),
                detail: format!("bad address: {}", crate::grpc::error_chain(&e)),
            })?;
        Ok(TrackerLink {
            address: address.to_string(),
            client: TrackerClient::new(channel),
            security: security.clone(),
            peer_id: peer_id.to_string(),
            port,
            advertise_host: advertise_host.to_string(),
            session: Mutex::new(None),
        })
    }

    /// The current session, if registered.
    pub(crate) fn session(&self) -> Option<Session> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_session(&self, session: Option<Session>) {
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = session;
    }

    fn token(&self) -> Result<String, TrackerLinkError> {
        self.session()
            .map(|s| s.token)
            .ok_or(TrackerLinkError::NotRegistered)
    }

    /// Makes the call `rpc` (named for the span) with the deadline [`CALL_TIMEOUT`].
    async fn call<T, F, Fut>(&self, rpc: &'static str, f: F) -> Result<T, TrackerLinkError>
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
            let result = match tokio::time::timeout(CALL_TIMEOUT, f(self.client.clone())).await {
                Err(_) => Err(unreachable(format!("no answer within {CALL_TIMEOUT:?}"))),
                Ok(Ok(response)) => Ok(response.into_inner()),
                // Transport failures surface as UNAVAILABLE (or UNKNOWN with a transport cause,
                // as when a plaintext client meets a TLS server).
                Ok(Err(status)) => match self.security.explain_connection_failure(&status) {
                    Some(detail) => Err(unreachable(detail)),
                    None => Err(TrackerLinkError::Rejected(status)),
                },
            };
            // The caller decides how much a failure matters; following a call needs to see it.
            if let Err(e) = &result {
                tracing::debug!("failed: {e}");
            }
            result
        }
        .instrument(span)
        .await
    }

    /// Registers with the full catalog `files`; remembers the session.
    pub(crate) async fn register(
        &self,
        files: Vec<pb::FileEntry>,
    ) -> Result<Session, TrackerLinkError> {
        let previous = self.session().map(|s| s.token).unwrap_or_default();
        let request = pb::RegisterRequest {
            peer_id: self.peer_id.clone(),
            port: self.port as u32,
            advertise_host: self.advertise_host.clone(),
            files,
            session_token: previous,
        };
        let response = self
            .call("Register", |mut c| async move { c.register(request).await })
            .await?;
        let session = Session::checked(response)?;
        self.set_session(Some(session.clone()));
        Ok(session)
    }

    /// Heartbeats. `Err(NotRegistered)` means: register again (the tracker forgot us).
    pub(crate) async fn heartbeat(&self) -> Result<(), TrackerLinkError> {
        let request = pb::HeartbeatRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
        };
        match self
            .call(
                "Heartbeat",
                |mut c| async move { c.heartbeat(request).await },
            )
            .await
        {
            Ok(response) => {
                if let Some(mut s) = self.session() {
                    s.heartbeat_interval = heartbeat_interval(response.heartbeat_interval_secs);
                    self.set_session(Some(s));
                }
                Ok(())
            }
            // Unknown (tracker restarted) or a token it no longer accepts: register afresh.
            Err(e) if matches!(e.code(), Some(Code::NotFound | Code::PermissionDenied)) => {
                self.set_session(None);
                Err(TrackerLinkError::NotRegistered)
            }
            Err(e) => Err(e),
        }
    }

    /// Announces a file (NEW_FILE).
    pub(crate) async fn announce(&self, file: pb::FileEntry) -> Result<(), TrackerLinkError> {
        let request = pb::AnnounceFileRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
            file: Some(file),
        };
        self.call("AnnounceFile", |mut c| async move {
            c.announce_file(request).await
        })
        .await
        .map(|_| ())
    }

    /// Withdraws a file.
    pub(crate) async fn withdraw(&self, name: &str) -> Result<(), TrackerLinkError> {
        let request = pb::WithdrawFileRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
            name: name.to_string(),
        };
        self.call("WithdrawFile", |mut c| async move {
            c.withdraw_file(request).await
        })
        .await
        .map(|_| ())
    }

    /// Leaves the swarm (if registered).
    pub(crate) async fn leave(&self) -> Result<(), TrackerLinkError> {
        let request = pb::LeaveRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
        };
        let result = self
            .call("Leave", |mut c| async move { c.leave(request).await })
            .await
            .map(|_| ());
        self.set_session(None);
        result
    }

    /// Versions of a file and their holders.
    pub(crate) async fn who_has(
        &self,
        name: &str,
        content_id_prefix: &str,
    ) -> Result<Vec<pb::FileVersion>, TrackerLinkError> {
        let request = pb::WhoHasRequest {
            name: name.to_string(),
            content_id_prefix: content_id_prefix.to_string(),
            ..Default::default()
        };
        self.call("WhoHas", |mut c| async move { c.who_has(request).await })
            .await
            .map(|r| r.versions)
    }

    /// Live peers.
    pub(crate) async fn peers(&self) -> Result<Vec<pb::PeerSummary>, TrackerLinkError> {
        self.call("ListPeers", |mut c| async move {
            c.list_peers(pb::ListPeersRequest {}).await
        })
        .await
        .map(|r| r.peers)
    }

    /// Every file in the swarm.
    pub(crate) async fn files(&self) -> Result<Vec<pb::FileSummary>, TrackerLinkError> {
        self.call("ListFiles", |mut c| async move {
            c.list_files(pb::ListFilesRequest {}).await
        })
        .await
        .map(|r| r.files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Write};
    use std::sync::Arc;

    /// Log output written to memory, to be read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn each_call_runs_in_a_span_naming_the_rpc_and_the_tracker() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // A port nobody listens on any more: the call fails at once.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let link =
            TrackerLink::new(&closed.to_string(), "A", 1, "", &ClientSecurity::default()).unwrap();
        let error = link.who_has("f", "").await.unwrap_err();
        assert!(
            matches!(error, TrackerLinkError::Unreachable { .. }),
            "{error}"
        );

        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let span = format!(r#"tracker_call{{rpc="WhoHas" tracker={closed}}}"#);
        assert!(
            text.lines()
                .any(|line| line.contains(&span) && line.contains("failed: tracker unreachable")),
            "no {span} line in:\n{text}"
        );
    }
}
