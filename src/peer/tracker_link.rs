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
mod registration;

pub(crate) use registration::Session;

use crate::grpc::{ClientChannel, ClientSecurity};
use crate::pb::tracker as pb;
use crate::pb::tracker::tracker_client::TrackerClient;
use endpoint::Endpoint;
use policy::FAILOVER_TIMEOUT;
pub use policy::MAX_TRACKERS;
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

    /// Makes a call that belongs to the registration (it carries the session token): on the
    /// current tracker, or, if that one does not answer, on the next that does. A tracker that
    /// takes the call with the token shares the current one's store, so the registration moves
    /// there at once: an announcement made while the first tracker is down is not lost. One that
    /// refuses it (NOT_FOUND: its own store) is left to the heartbeat loop, whose full
    /// registration there carries the whole catalog, this file included.
    async fn call_registered<T, F, Fut>(
        &self,
        rpc: &'static str,
        f: F,
    ) -> Result<T, TrackerLinkError>
    where
        F: FnMut(TrackerClient<ClientChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (at, answer) = self.try_each(rpc, self.registration_order(), f).await?;
        if answer.is_ok() && at != self.current() {
            self.switch_to(at, Switch::Failover);
        }
        answer
    }

    /// Announces a file (NEW_FILE) to the tracker of the registration.
    pub(crate) async fn announce(&self, file: pb::FileEntry) -> Result<(), TrackerLinkError> {
        let request = pb::AnnounceFileRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
            file: Some(file),
        };
        self.call_registered("AnnounceFile", |mut c| {
            let request = request.clone();
            async move { c.announce_file(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Withdraws a file at the tracker of the registration.
    pub(crate) async fn withdraw(&self, name: &str) -> Result<(), TrackerLinkError> {
        let request = pb::WithdrawFileRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
            name: name.to_string(),
        };
        self.call_registered("WithdrawFile", |mut c| {
            let request = request.clone();
            async move { c.withdraw_file(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Leaves the swarm at the tracker of the registration (if registered; the next one that
    /// answers if it does not: one sharing the store removes the peer for all). A tracker with
    /// its own store that never had the peer answers NOT_FOUND, harmless; it and the others
    /// forget the peer when its heartbeats stop. The caller bounds the wait.
    pub(crate) async fn leave(&self) -> Result<(), TrackerLinkError> {
        let request = pb::LeaveRequest {
            peer_id: self.peer_id.clone(),
            session_token: self.token()?,
        };
        let result = self
            .call_registered("Leave", |mut c| {
                let request = request.clone();
                async move { c.leave(request).await }
            })
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
