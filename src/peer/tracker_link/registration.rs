//! Registration: the session a tracker gives (checked), the catalog cut into batches, the
//! heartbeat that moves the registration to the tracker that answers, and the look back at the
//! trackers earlier in the list.

use super::{policy, Switch, TrackerLink, TrackerLinkError};
use crate::pb::tracker as pb;
use prost::Message;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;

/// Most bytes of catalog entries in one `Register`: the tracker's request limit less room for
/// the other fields (a peer id, a host name and a token are well under 1 KiB).
const BATCH_BYTES: usize = crate::tracker::MAX_REQUEST_BYTES - 16 * 1024;

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

impl TrackerLink {
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
    /// changes if none does. Bounded: the questions together take at most
    /// [`super::FAILOVER_TIMEOUT`] (each one its tracker's deadline: a probe's for a tracker
    /// that did not answer last), and a registration as much as one does.
    pub(crate) async fn return_to_earlier(&self, catalog: impl Fn() -> Vec<pb::FileEntry>) {
        let Ok(token) = self.token() else { return };
        let started = tokio::time::Instant::now();
        for at in 0..self.current() {
            let request = pb::HeartbeatRequest {
                peer_id: self.peer_id.clone(),
                session_token: token.clone(),
            };
            let tracker = &self.trackers[at];
            let left = super::FAILOVER_TIMEOUT.saturating_sub(started.elapsed());
            let Some(deadline) = policy::attempt_deadline(tracker.call_timeout(), left) else {
                return;
            };
            let answer = tracker
                .call("Heartbeat", deadline, |mut c| async move {
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
}
