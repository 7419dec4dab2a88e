//! A peer's connection to its trackers: registration with its session token, heartbeats,
//! announcements and queries. Every call has a deadline, so a tracker that is down gives a clear
//! "tracker unreachable" error instead of a hang, and runs in a `tracker_call` span (the RPC and
//! the tracker's address) so a peer's debug log shows which call a line belongs to.
//!
//! A peer knows one tracker or several (at most [`MAX_TRACKERS`], in the order given). It is
//! registered with one of them at a time; a call that gets no answer moves on to the next, and
//! the heartbeat loop moves the registration there (the session token is tried first, so trackers
//! sharing a store keep the session). [`policy`] says which tracker is tried when, and why.
//!
//! A tracker that did not answer (no connection, or no answer in time) is not waited on again
//! (see [`endpoint`]): the next call dials a fresh connection and has a short deadline
//! ([`PROBE_TIMEOUT`]) until the tracker answers again, so a peer's heartbeat loop can probe often
//! and re-register within a heartbeat of the tracker coming back. A call that tries several
//! trackers is bounded as a whole by [`policy::FAILOVER_TIMEOUT`].
//!
//! Bounded both ways: a catalog too large for one request registers in batches (one `Register`,
//! then `Register` with `append`), and listings are gathered page by page up to a bounded number
//! of entries, pages and seconds, whatever the tracker answers (see [`listing`]).

mod endpoint;
mod listing;
pub(crate) mod policy;

use crate::grpc::{ClientChannel, ClientSecurity};
use crate::pb::tracker as pb;
use crate::pb::tracker::tracker_client::TrackerClient;
use endpoint::Endpoint;
use policy::FAILOVER_TIMEOUT;
pub use policy::MAX_TRACKERS;
use prost::Message;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Code, Status};

/// Deadline of one call to the tracker.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a call while the tracker is unreachable (the last call got no answer): a probe.
/// A tracker that is up answers within a few round trips; one that is not costs the caller (and
/// the heartbeat loop's next probe) this much, not [`CALL_TIMEOUT`].
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of catalog entries in one `Register`: the tracker's request limit less room for
/// the other fields (a peer id, a host name and a token are well under 1 KiB).
const BATCH_BYTES: usize = crate::tracker::MAX_REQUEST_BYTES - 16 * 1024;
/// Longest part of one tracker's failure quoted in an error about several.
const MAX_DETAIL_SHOWN: usize = 200;

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
    /// None of several trackers answered.
    #[error(
        "tracker unreachable at every address tried: {tried}{untried} (is `tracker` running at \
         any of them?)"
    )]
    AllUnreachable {
        /// Each tracker tried and what failed, `address: detail; ...`.
        tried: String,
        /// Empty, or why some were not tried (the call's deadline was spent first).
        untried: String,
    },
    /// More trackers than a peer takes.
    #[error("too many trackers: {given} given, at most {}", MAX_TRACKERS)]
    TooManyTrackers {
        /// How many distinct addresses were given.
        given: usize,
    },
}

impl TrackerLinkError {
    /// The gRPC code, if the tracker answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            TrackerLinkError::Rejected(s) => Some(s.code()),
            _ => None,
        }
    }

    /// Whether no tracker answered (as opposed to an answer, a refusal included).
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TrackerLinkError::Unreachable { .. } | TrackerLinkError::AllUnreachable { .. }
        )
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

/// The link to the trackers.
#[derive(Debug)]
pub(crate) struct TrackerLink {
    /// The trackers, in the order given (1 ..= [`MAX_TRACKERS`], distinct addresses).
    trackers: Vec<Endpoint>,
    /// Index of the tracker the peer is registered with (or tries first to register with).
    current: AtomicUsize,
    /// Heartbeats answered by the current tracker since the peer moved to it, or since the
    /// trackers before it were last asked again (see [`policy::return_due`]).
    beats_here: AtomicU32,
    peer_id: String,
    port: u16,
    advertise_host: String,
    session: Mutex<Option<Session>>,
}

/// Why the registration moves to another tracker (for the log).
#[derive(Debug, Clone, Copy)]
enum Switch {
    /// The current tracker did not answer.
    Failover,
    /// A tracker earlier in the list answers again.
    Return,
}

/// What a call that may try several trackers got: the index of the tracker that answered and its
/// answer (a refusal included). `Err` when none answered.
type Answered<T> = Result<(usize, Result<T, TrackerLinkError>), TrackerLinkError>;

impl TrackerLink {
    /// A link to the trackers at `addresses` (`host:port` each, in the order to try them: 1 to
    /// [`MAX_TRACKERS`], distinct) for peer `peer_id` serving on `port`, connecting (TLS, swarm
    /// key) as `security` says.
    pub(crate) fn new(
        addresses: &[String],
        peer_id: &str,
        port: u16,
        advertise_host: &str,
        security: &ClientSecurity,
    ) -> Result<Self, TrackerLinkError> {
        if addresses.len() > MAX_TRACKERS {
            return Err(TrackerLinkError::TooManyTrackers {
                given: addresses.len(),
            });
        }
        let trackers = addresses
            .iter()
            .map(|a| Endpoint::new(a, security))
            .collect::<Result<Vec<_>, _>>()?;
        if trackers.is_empty() {
            return Err(TrackerLinkError::Unreachable {
                address: String::new(),
                detail: "no tracker address given".into(),
            });
        }
        Ok(TrackerLink {
            trackers,
            current: AtomicUsize::new(0),
            beats_here: AtomicU32::new(0),
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

    fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The address of the tracker the peer is registered with (or tries first).
    pub(crate) fn address(&self) -> &str {
        &self.trackers[self.current()].address
    }

    /// Whether the current tracker's last call got an answer (any answer, a refusal included)
    /// rather than none.
    pub(crate) fn reachable(&self) -> bool {
        self.trackers[self.current()].reachable()
    }

    /// Makes the registration's tracker `to` the current one, and says so.
    fn switch_to(&self, to: usize, why: Switch) {
        let from = self.current.swap(to, Ordering::Relaxed);
        self.beats_here.store(0, Ordering::Relaxed);
        if from != to {
            let (from, to) = (&self.trackers[from].address, &self.trackers[to].address);
            match why {
                Switch::Failover => {
                    tracing::warn!("tracker {from} does not answer: now using tracker {to}")
                }
                Switch::Return => {
                    tracing::info!("tracker {to} answers again: back to it from tracker {from}")
                }
            }
        }
    }

    fn token(&self) -> Result<String, TrackerLinkError> {
        self.session()
            .map(|s| s.token)
            .ok_or(TrackerLinkError::NotRegistered)
    }

    /// Makes the call `rpc` on the trackers in `order`, one after the other, until one answers
    /// (an answer or a refusal: a refusal does not move on). Each attempt has its tracker's
    /// deadline, and all of them together [`FAILOVER_TIMEOUT`].
    async fn try_each<T, F, Fut>(
        &self,
        rpc: &'static str,
        order: Vec<usize>,
        mut f: F,
    ) -> Answered<T>
    where
        F: FnMut(TrackerClient<ClientChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut failed = Vec::new();
        let mut tried = 0;
        for &at in &order {
            let tracker = &self.trackers[at];
            let left = FAILOVER_TIMEOUT.saturating_sub(started.elapsed());
            let Some(deadline) = policy::attempt_deadline(tracker.call_timeout(), left) else {
                break;
            };
            tried += 1;
            match tracker.call(rpc, deadline, &mut f).await {
                Err(e) if e.is_unreachable() => failed.push(e),
                answer => return Ok((at, answer)),
            }
        }
        Err(self.none_answered(failed, order.len() - tried))
    }

    /// The error for a call no tracker answered: as it was for a peer with one tracker, else
    /// every tracker tried (each failure cut short) and how many were not.
    fn none_answered(&self, mut failed: Vec<TrackerLinkError>, untried: usize) -> TrackerLinkError {
        if self.trackers.len() == 1 && failed.len() == 1 {
            if let Some(only) = failed.pop() {
                return only;
            }
        }
        let tried = failed
            .iter()
            .map(|e| match e {
                TrackerLinkError::Unreachable { address, detail } => format!(
                    "{address}: {}",
                    crate::names::at_most(detail, MAX_DETAIL_SHOWN)
                ),
                other => crate::names::at_most(&other.to_string(), MAX_DETAIL_SHOWN).into(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        let untried = match untried {
            0 => String::new(),
            n => format!(
                "; {n} more not tried within {}s",
                FAILOVER_TIMEOUT.as_secs()
            ),
        };
        TrackerLinkError::AllUnreachable { tried, untried }
    }

    /// A call for the registration: the current tracker first (even if it did not answer last:
    /// it may be back), then the others.
    fn registration_order(&self) -> Vec<usize> {
        policy::try_order(self.current(), &self.answered(), true)
    }

    /// A query: the trackers that answered last first.
    fn query_order(&self) -> Vec<usize> {
        policy::try_order(self.current(), &self.answered(), false)
    }

    fn answered(&self) -> Vec<bool> {
        self.trackers.iter().map(Endpoint::reachable).collect()
    }

    /// Makes the call `rpc` on the current tracker only (with its deadline): calls that belong to
    /// the registration there.
    async fn call_current<T, F, Fut>(&self, rpc: &'static str, f: F) -> Result<T, TrackerLinkError>
    where
        F: FnOnce(TrackerClient<ClientChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let tracker = &self.trackers[self.current()];
        tracker.call(rpc, tracker.call_timeout(), f).await
    }

    /// Registers with the full catalog `files`, in batches if it does not fit in one request;
    /// remembers the session once the catalog is in. The current tracker is asked first, then the
    /// others until one answers; the one that takes the registration becomes the current one.
    ///
    /// A later batch refused for a limit (RESOURCE_EXHAUSTED) leaves the peer registered with
    /// what the tracker took, and says so in the log: sending it again would be refused again.
    /// Any other failure of a later batch leaves the peer unregistered, so the heartbeat loop
    /// registers again from the start.
    pub(crate) async fn register(
        &self,
        files: Vec<pb::FileEntry>,
    ) -> Result<Registration, TrackerLinkError> {
        let (at, registration) = self.register_on(self.registration_order(), files).await?;
        self.switch_to(at, Switch::Failover);
        self.set_session(Some(registration.session.clone()));
        Ok(registration)
    }

    /// Registers with the first tracker of `order` that answers; changes nothing of the link's
    /// state (the caller takes the session).
    async fn register_on(
        &self,
        order: Vec<usize>,
        files: Vec<pb::FileEntry>,
    ) -> Result<(usize, Registration), TrackerLinkError> {
        let total = files.len();
        let mut batches = batches(files, BATCH_BYTES).into_iter();
        let first = batches.next().unwrap_or_default();
        let mut registered = first.len();
        // The token is tried first: a tracker that shares a store with the last one keeps it.
        let previous = self.session().map(|s| s.token).unwrap_or_default();
        let request = pb::RegisterRequest {
            peer_id: self.peer_id.clone(),
            port: self.port as u32,
            advertise_host: self.advertise_host.clone(),
            files: first,
            session_token: previous,
            append: false,
        };
        let (at, answer) = self
            .try_each("Register", order, |mut c| {
                let request = request.clone();
                async move { c.register(request).await }
            })
            .await?;
        let response = answer?;
        let tracker = &self.trackers[at];
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
            let deadline = tracker.call_timeout();
            match tracker
                .call("Register", deadline, |mut c| async move {
                    c.register(request).await
                })
                .await
            {
                Ok(_) => registered += count,
                Err(e) if e.code() == Some(Code::ResourceExhausted) => {
                    tracing::warn!("{e}: {registered} of {total} files registered");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let registration = Registration {
            session,
            files: registered,
        };
        Ok((at, registration))
    }

    /// Heartbeats: the current tracker first, then the others until one answers (it becomes the
    /// current one, with the same token). `Err(NotRegistered)` means: register again (the
    /// tracker that answered does not know us, or not with this token).
    pub(crate) async fn heartbeat(&self) -> Result<(), TrackerLinkError> {
        let request = pb::HeartbeatRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
        };
        let (at, answer) = self
            .try_each("Heartbeat", self.registration_order(), |mut c| {
                let request = request.clone();
                async move { c.heartbeat(request).await }
            })
            .await?;
        if at == self.current() {
            self.beats_here.fetch_add(1, Ordering::Relaxed);
        } else {
            self.switch_to(at, Switch::Failover);
        }
        self.heartbeat_answer(answer)
    }

    /// What a heartbeat's answer means for the session.
    fn heartbeat_answer(
        &self,
        answer: Result<pb::HeartbeatResponse, TrackerLinkError>,
    ) -> Result<(), TrackerLinkError> {
        match answer {
            Ok(response) => {
                if let Some(mut s) = self.session() {
                    s.heartbeat_interval = heartbeat_interval(response.heartbeat_interval_secs);
                    self.set_session(Some(s));
                }
                Ok(())
            }
            // Unknown (tracker restarted, or another tracker without our store) or a token it
            // no longer accepts: register afresh.
            Err(e) if matches!(e.code(), Some(Code::NotFound | Code::PermissionDenied)) => {
                self.set_session(None);
                Err(TrackerLinkError::NotRegistered)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the heartbeat loop should call [`TrackerLink::return_to_earlier`] now: the peer
    /// is on a tracker other than the first and has been for a few heartbeats since it last
    /// looked back. Counts as looking back.
    pub(crate) fn return_due(&self) -> bool {
        let due = policy::return_due(self.current(), self.beats_here.load(Ordering::Relaxed));
        if due {
            self.beats_here.store(0, Ordering::Relaxed);
        }
        due
    }

    /// Asks the trackers before the current one, in list order, whether they answer again, and
    /// moves the registration to the first that does and takes it: with the session's token (a
    /// tracker sharing the store accepts it at once), else with the full `catalog`. Nothing
    /// changes if none does. Bounded: at most [`FAILOVER_TIMEOUT`] per tracker asked, probes
    /// of trackers that did not answer last at [`PROBE_TIMEOUT`].
    pub(crate) async fn return_to_earlier(&self, catalog: impl Fn() -> Vec<pb::FileEntry>) {
        let Ok(token) = self.token() else { return };
        for at in 0..self.current() {
            let request = pb::HeartbeatRequest {
                peer_id: self.peer_id.clone(),
                session_token: token.clone(),
            };
            let tracker = &self.trackers[at];
            let answer = tracker
                .call("Heartbeat", tracker.call_timeout(), |mut c| async move {
                    c.heartbeat(request).await
                })
                .await;
            match answer {
                Ok(_) => {
                    self.switch_to(at, Switch::Return);
                    return;
                }
                Err(e) if matches!(e.code(), Some(Code::NotFound | Code::PermissionDenied)) => {
                    match self.register_on(vec![at], catalog()).await {
                        Ok((at, registration)) => {
                            self.set_session(Some(registration.session));
                            tracing::info!(
                                files = registration.files,
                                "registered again with tracker {}",
                                self.trackers[at].address
                            );
                            self.switch_to(at, Switch::Return);
                            return;
                        }
                        Err(e) => tracing::debug!("not back to tracker {}: {e}", tracker.address),
                    }
                }
                Err(e) => tracing::debug!("not back to tracker {}: {e}", tracker.address),
            }
        }
    }

    /// Announces a file (NEW_FILE) to the current tracker.
    pub(crate) async fn announce(&self, file: pb::FileEntry) -> Result<(), TrackerLinkError> {
        let request = pb::AnnounceFileRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
            file: Some(file),
        };
        self.call_current("AnnounceFile", |mut c| async move {
            c.announce_file(request).await
        })
        .await
        .map(|_| ())
    }

    /// Withdraws a file at the current tracker.
    pub(crate) async fn withdraw(&self, name: &str) -> Result<(), TrackerLinkError> {
        let request = pb::WithdrawFileRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
            name: name.to_string(),
        };
        self.call_current("WithdrawFile", |mut c| async move {
            c.withdraw_file(request).await
        })
        .await
        .map(|_| ())
    }

    /// Leaves the swarm at the current tracker (if registered). The others are not told: one
    /// that shares the store sees the `Leave`, one that does not forgets the peer when its
    /// heartbeats stop.
    pub(crate) async fn leave(&self) -> Result<(), TrackerLinkError> {
        let request = pb::LeaveRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
        };
        let result = self
            .call_current("Leave", |mut c| async move { c.leave(request).await })
            .await
            .map(|_| ());
        self.set_session(None);
        result
    }

    /// Versions of a file and their holders, from the first tracker that answers.
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
        let (_, answer) = self
            .try_each("WhoHas", self.query_order(), |mut c| {
                let request = request.clone();
                async move { c.who_has(request).await }
            })
            .await?;
        answer.map(|r| r.versions)
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
        let link = TrackerLink::new(
            &[closed.to_string()],
            "A",
            1,
            "",
            &ClientSecurity::default(),
        )
        .unwrap();
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
