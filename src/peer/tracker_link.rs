//! A peer's connection to the tracker: registration with its session token, heartbeats,
//! announcements and queries. Every call has a deadline, so a tracker that is down gives a clear
//! "tracker unreachable" error instead of a hang, and runs in a `tracker_call` span (the RPC and
//! the tracker's address) so a peer's debug log shows which call a line belongs to.
//!
//! A tracker that did not answer (no connection, or no answer in time) is not waited on again:
//! the next call dials a fresh connection (the old one may be a dead TCP connection whose
//! retransmissions back off for seconds after a pulled cable comes back) and has a short
//! deadline ([`PROBE_TIMEOUT`]) until the tracker answers again, so a peer's heartbeat loop can
//! probe often and re-register within a heartbeat of the tracker coming back.
//!
//! Bounded both ways: a catalog too large for one request registers in batches (one `Register`,
//! then `Register` with `append`), and listings are gathered page by page up to a bounded number
//! of entries, pages and seconds, whatever the tracker answers.

use crate::grpc::{ClientChannel, ClientSecurity};
use crate::pb::tracker as pb;
use crate::pb::tracker::tracker_client::TrackerClient;
use prost::Message;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tonic::{Code, Status};
use tracing::Instrument;

/// Deadline of one call to the tracker.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a call while the tracker is unreachable (the last call got no answer): a probe.
/// A tracker that is up answers within a few round trips; one that is not costs the caller (and
/// the heartbeat loop's next probe) this much, not [`CALL_TIMEOUT`].
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of catalog entries in one `Register`: the tracker's request limit less room for
/// the other fields (a peer id, a host name and a token are well under 1 KiB).
const BATCH_BYTES: usize = crate::tracker::MAX_REQUEST_BYTES - 16 * 1024;
/// Entries asked for per listing page: the tracker's maximum (it caps larger asks anyway).
const PAGE_SIZE: u32 = 5000;
/// Most entries gathered for one listing (`peers`, `files`): far past what a person reads, and
/// about 40 MiB of answers at most, whatever the tracker holds or claims.
const MAX_LISTED: usize = 200_000;
/// Most pages asked for one listing: a tracker that answers short pages forever stops here.
const MAX_PAGES: usize = 1000;
/// Deadline of a whole listing, all pages together.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

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

/// What a registration achieved.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    /// The session it opened.
    pub session: Session,
    /// How many catalog entries the tracker took: all of them unless it refused a later batch
    /// (a limit: the reason was logged) or takes one request only (an older tracker).
    pub files: usize,
}

/// `files` cut into batches whose encoded entries take at most `budget` bytes each (at least
/// one entry per batch, and one empty batch for an empty catalog).
fn batches(files: Vec<pb::FileEntry>, budget: usize) -> Vec<Vec<pb::FileEntry>> {
    let mut out = vec![Vec::new()];
    let mut used = 0;
    for file in files {
        // The entry, its field tag and its length prefix (at most 3 bytes below 2 MiB).
        let size = file.encoded_len() + 4;
        if used + size > budget && out.last().is_some_and(|b| !b.is_empty()) {
            out.push(Vec::new());
            used = 0;
        }
        used += size;
        if let Some(batch) = out.last_mut() {
            batch.push(file);
        }
    }
    out
}

/// The link to the tracker.
#[derive(Debug)]
pub(crate) struct TrackerLink {
    address: String,
    /// Replaced by a fresh (not yet connected) channel when a call gets no answer.
    client: Mutex<TrackerClient<ClientChannel>>,
    /// False from a call that got no answer until one that does.
    reachable: AtomicBool,
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
            client: Mutex::new(TrackerClient::new(channel)),
            reachable: AtomicBool::new(true),
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

    /// Whether the last call got an answer (any answer, a refusal included) rather than none.
    pub(crate) fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// The deadline of the next call: [`PROBE_TIMEOUT`] while the tracker is unreachable.
    pub(crate) fn call_timeout(&self) -> Duration {
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

    fn token(&self) -> Result<String, TrackerLinkError> {
        self.session()
            .map(|s| s.token)
            .ok_or(TrackerLinkError::NotRegistered)
    }

    /// Makes the call `rpc` (named for the span) with the deadline [`CALL_TIMEOUT`]
    /// ([`PROBE_TIMEOUT`] while the tracker is unreachable).
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
            let deadline = self.call_timeout();
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

    /// Registers with the full catalog `files`, in batches if it does not fit in one request;
    /// remembers the session once the catalog is in.
    ///
    /// A later batch refused for a limit (RESOURCE_EXHAUSTED) leaves the peer registered with
    /// what the tracker took, and says so in the log: sending it again would be refused again.
    /// Any other failure of a later batch clears the session, so the heartbeat loop registers
    /// again from the start.
    pub(crate) async fn register(
        &self,
        files: Vec<pb::FileEntry>,
    ) -> Result<Registration, TrackerLinkError> {
        let total = files.len();
        let mut batches = batches(files, BATCH_BYTES).into_iter();
        let first = batches.next().unwrap_or_default();
        let mut registered = first.len();
        let previous = self.session().map(|s| s.token).unwrap_or_default();
        let request = pb::RegisterRequest {
            peer_id: self.peer_id.clone(),
            port: self.port as u32,
            advertise_host: self.advertise_host.clone(),
            files: first,
            session_token: previous,
            append: false,
        };
        let response = self
            .call("Register", |mut c| async move { c.register(request).await })
            .await?;
        let catalog_batches = response.catalog_batches;
        let session = Session::checked(response)?;
        for batch in batches {
            if !catalog_batches {
                tracing::warn!(
                    "the tracker takes a catalog in one request only (it is older than this \
                     peer): {registered} of {total} files registered"
                );
                break;
            }
            let count = batch.len();
            let request = pb::RegisterRequest {
                peer_id: self.peer_id.clone(),
                session_token: session.token.clone(),
                files: batch,
                append: true,
                ..Default::default()
            };
            match self
                .call("Register", |mut c| async move { c.register(request).await })
                .await
            {
                Ok(_) => registered += count,
                Err(e) if e.code() == Some(Code::ResourceExhausted) => {
                    tracing::warn!("{e}: {registered} of {total} files registered");
                    break;
                }
                Err(e) => {
                    self.set_session(None);
                    return Err(e);
                }
            }
        }
        self.set_session(Some(session.clone()));
        Ok(Registration {
            session,
            files: registered,
        })
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

    /// Gathers a listing page by page: `ask(client, token)` asks for the page after `token`,
    /// `split` takes its entries and next token. Bounded by [`MAX_LISTED`] entries,
    /// [`MAX_PAGES`] pages and [`LIST_TIMEOUT`]: past the first two it keeps what it has and
    /// logs that the listing was cut; past the deadline it fails.
    async fn list_all<R, T, F, Fut>(
        &self,
        rpc: &'static str,
        mut ask: F,
        split: fn(R) -> (Vec<T>, String),
    ) -> Result<Vec<T>, TrackerLinkError>
    where
        F: FnMut(TrackerClient<ClientChannel>, String) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let gather = async {
            let mut all = Vec::new();
            let mut token = String::new();
            for _ in 0..MAX_PAGES {
                let asked = token.clone();
                let (entries, next) = split(self.call(rpc, |c| ask(c, asked)).await?);
                let room = MAX_LISTED - all.len();
                if entries.len() > room {
                    all.extend(entries.into_iter().take(room));
                    tracing::warn!("{rpc}: listing cut at {MAX_LISTED} entries");
                    return Ok(all);
                }
                all.extend(entries);
                if next.is_empty() {
                    return Ok(all);
                }
                if next == token {
                    tracing::warn!(
                        "{rpc}: the tracker gave the same page token again; listing cut"
                    );
                    return Ok(all);
                }
                token = next;
            }
            tracing::warn!("{rpc}: listing cut after {MAX_PAGES} pages");
            Ok(all)
        };
        tokio::time::timeout(LIST_TIMEOUT, gather)
            .await
            .unwrap_or_else(|_| {
                Err(TrackerLinkError::Unreachable {
                    address: self.address.clone(),
                    detail: format!("{rpc}: the listing did not end within {LIST_TIMEOUT:?}"),
                })
            })
    }

    /// Live peers, every page.
    pub(crate) async fn peers(&self) -> Result<Vec<pb::PeerSummary>, TrackerLinkError> {
        self.list_all(
            "ListPeers",
            |mut c, page_token| async move {
                c.list_peers(pb::ListPeersRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                })
                .await
            },
            |r: pb::ListPeersResponse| (r.peers, r.next_page_token),
        )
        .await
    }

    /// Every file in the swarm, every page.
    pub(crate) async fn files(&self) -> Result<Vec<pb::FileSummary>, TrackerLinkError> {
        self.list_all(
            "ListFiles",
            |mut c, page_token| async move {
                c.list_files(pb::ListFilesRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                })
                .await
            },
            |r: pb::ListFilesResponse| (r.files, r.next_page_token),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogs_are_cut_into_batches_under_the_budget() {
        let catalog: Vec<pb::FileEntry> = (0..1000)
            .map(|k| pb::FileEntry {
                name: format!("{k:04}-{}", "n".repeat(200)),
                size: k,
                content_id: "0".repeat(64),
                partial: false,
            })
            .collect();
        let budget = 20_000;
        let cut = batches(catalog.clone(), budget);
        assert!(cut.len() > 1);
        for batch in &cut {
            let request = pb::RegisterRequest {
                files: batch.clone(),
                ..Default::default()
            };
            assert!(request.encoded_len() <= budget, "{}", request.encoded_len());
            assert!(!batch.is_empty());
        }
        assert_eq!(cut.concat(), catalog, "every entry once, in order");
        let empty = batches(vec![], budget);
        assert_eq!(empty, vec![Vec::<pb::FileEntry>::new()]);
        // The real budget leaves room for the rest of a request under the tracker's limit.
        let full = pb::RegisterRequest {
            peer_id: "p".repeat(64),
            advertise_host: "h".repeat(253),
            session_token: "t".repeat(32),
            port: 65535,
            append: true,
            files: batches(vec![catalog; 20].concat(), BATCH_BYTES).swap_remove(0),
        };
        assert!(full.encoded_len() <= crate::tracker::MAX_REQUEST_BYTES);
    }

    #[tokio::test]
    async fn each_call_runs_in_a_span_naming_the_rpc_and_the_tracker() {
        let logs = crate::testing::CapturedLogs::default();
        let _guard = tracing::subscriber::set_default(logs.debug_subscriber());
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

        let text = logs.text();
        let span = format!(r#"tracker_call{{rpc="WhoHas" tracker={closed}}}"#);
        assert!(
            text.lines()
                .any(|line| line.contains(&span) && line.contains("failed: tracker unreachable")),
            "no {span} line in:\n{text}"
        );
    }
}
