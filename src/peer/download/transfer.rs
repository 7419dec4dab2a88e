//! The data phase of a download: a live, bounded set of holder sessions fed from a growing set of
//! known holders, until the last piece is verified.
//!
//! * At most `max_holders` holders are connected at once, picked at random among the known ones
//!   that may be contacted (see [`KnownHolders`]); a slot freed by a holder that left, failed or
//!   had nothing for us is refilled at once.
//! * The set of known holders grows during the download: the tracker is asked again (about every
//!   [`TRACKER_REFRESH`]) and connected holders are asked for the holders they know (peer
//!   exchange, every [`PEX_REFRESH`]), so a download goes on, and finds holders that joined or came
//!   back, while the tracker is down.
//! * The download finishes the moment the last piece is verified and written: sessions still
//!   running (endgame duplicates, slow holders) are cancelled, not waited for.
//! * It gives up when no holder is left that may ever be contacted (all sent corrupt data), or
//!   when nothing was verified for `2 x stall timeout` while no unit was in flight.

use super::contact::{Identity, Link};
use super::known::{KnownHolders, Outcome};
use super::partial::Partial;
use super::picker::{HolderKey, Next, Picker};
use super::version::HolderAddr;
use super::worker::session;
use super::writer::PieceWriter;
use super::{Context, HolderReport, SAVE_PROGRESS_EVERY};
use crate::chunking::{Bitfield, Manifest, PieceIndex};
use crate::grpc::{ChannelPool, ClientSecurity};
use crate::peer::book::SwarmBook;
use crate::peer::store::GrowingFile;
use crate::progress::Progress;
use exchange::Heard;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod exchange;
mod session;

use session::Session;

/// Default number of holders one download is connected to at once.
pub const DEFAULT_MAX_HOLDERS: usize = 12;
/// How often the tracker is asked again for holders during a download (the first time sooner,
/// so a crowd that starts together finds itself).
pub(crate) const TRACKER_REFRESH: Duration = Duration::from_secs(5);
/// How often connected holders are asked for the holders they know.
pub(crate) const PEX_REFRESH: Duration = Duration::from_secs(3);
/// The first refreshes, sooner.
const FIRST_REFRESH: Duration = Duration::from_secs(1);
/// How long stopping sessions may take to finish writing a piece already received.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// Holders asked for peer exchange each time.
const PEX_FANOUT: usize = 2;

/// Per holder: what it delivered and why it was dropped (the first reason).
#[derive(Debug, Default)]
struct Report {
    bytes: u64,
    dropped: Option<String>,
}

/// The state behind the transfer's one lock (never held across an `.await`).
struct State {
    picker: Picker,
    known: KnownHolders,
    sessions: HashMap<HolderKey, Session>,
    /// Clients by peer id, kept across sessions so a holder contacted again reuses its
    /// connection.
    links: HashMap<String, Link>,
    reports: BTreeMap<String, Report>,
    next_key: HolderKey,
    last_progress: Instant,
    rng: SmallRng,
}

/// What a transfer needs besides the manifest and the file.
pub(super) struct Setup {
    pub(super) me: Identity,
    pub(super) my_id: String,
    pub(super) security: ClientSecurity,
    pub(super) pool: ChannelPool,
    pub(super) book: Arc<SwarmBook>,
    pub(super) max_holders: usize,
    pub(super) stall_timeout: Duration,
    /// Set for a download into `files/`: its verified pieces are served meanwhile.
    pub(super) growing: Option<Arc<GrowingFile>>,
    /// Written to disk during the download (it ends with an fsync).
    pub(super) durable: bool,
    /// Where the file is (opened again for direct writes).
    pub(super) path: std::path::PathBuf,
    /// The node's metrics, if it has any.
    pub(super) metrics: Option<Arc<crate::metrics::PeerMetrics>>,
}

/// Shared state of one download's data phase.
pub(super) struct Transfer {
    manifest: Arc<Manifest>,
    state: Mutex<State>,
    /// Woken when a piece is done, a unit released, a holder gains pieces or leaves (workers
    /// waiting for work).
    changed: Notify,
    /// Wakes the transfer's own loop: the last piece is done, or new holders were learned.
    wake: Notify,
    /// Verifies and writes the pieces.
    writer: PieceWriter,
    progress: Arc<Progress>,
    fetched: AtomicU64,
    setup: Setup,
    /// A child of the download's token: cancelled when the transfer ends, it stops every session.
    sessions: CancellationToken,
}

impl Transfer {
    /// The transfer of the pieces not yet `done` of `manifest` into `file`, from the holders in
    /// `known`. Fails if the writer's threads cannot start.
    pub(super) fn new(
        manifest: Arc<Manifest>,
        done: Vec<bool>,
        file: std::fs::File,
        known: KnownHolders,
        progress: Arc<Progress>,
        setup: Setup,
        cancel: &CancellationToken,
    ) -> std::io::Result<Self> {
        let writer = PieceWriter::start(manifest.clone(), &file, &setup.path, setup.durable)?;
        let geometry = manifest.geometry();
        let expected_holders = known.len().clamp(1, setup.max_holders.max(1));
        let unit = Picker::unit_pieces(
            geometry.piece_count(),
            geometry.piece_size(),
            expected_holders,
        );
        Ok(Transfer {
            state: Mutex::new(State {
                picker: Picker::new(done, unit, rand::random()),
                known,
                sessions: HashMap::new(),
                links: HashMap::new(),
                reports: BTreeMap::new(),
                next_key: 0,
                last_progress: Instant::now(),
                rng: SmallRng::from_os_rng(),
            }),
            manifest,
            changed: Notify::new(),
            wake: Notify::new(),
            writer,
            progress,
            fetched: AtomicU64::new(0),
            setup,
            sessions: cancel.child_token(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    pub(super) fn me(&self) -> &Identity {
        &self.setup.me
    }

    pub(super) fn writer(&self) -> &PieceWriter {
        &self.writer
    }

    /// The node's metrics, if it has any.
    pub(super) fn metrics(&self) -> Option<&crate::metrics::PeerMetrics> {
        self.setup.metrics.as_deref()
    }

    pub(super) fn stall_timeout(&self) -> Duration {
        self.setup.stall_timeout
    }

    pub(super) fn changed(&self) -> &Notify {
        &self.changed
    }

    pub(super) fn sessions_cancel(&self) -> &CancellationToken {
        &self.sessions
    }

    /// Pieces not yet verified.
    pub(super) fn missing(&self) -> u64 {
        self.lock().picker.remaining()
    }

    /// Bytes of verified pieces fetched in this run.
    pub(super) fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// How each holder that was connected did.
    pub(super) fn holder_reports(&self) -> Vec<HolderReport> {
        self.lock()
            .reports
            .iter()
            .map(|(peer_id, r)| HolderReport {
                peer_id: peer_id.clone(),
                bytes: r.bytes,
                dropped: r.dropped.clone(),
            })
            .collect()
    }

    /// Which pieces are verified.
    pub(super) fn snapshot(&self) -> Vec<bool> {
        self.lock().picker.done().to_vec()
    }

    pub(super) fn is_done(&self, piece: PieceIndex) -> bool {
        self.lock().picker.is_done(piece)
    }

    pub(super) fn all_done(&self, pieces: std::ops::Range<PieceIndex>) -> bool {
        let state = self.lock();
        pieces.into_iter().all(|p| state.picker.is_done(p))
    }

    /// The next unit for a connected holder.
    pub(super) fn next_unit(&self, key: HolderKey) -> Next {
        let mut state = self.lock();
        let State {
            picker, sessions, ..
        } = &mut *state;
        let now = Instant::now();
        match sessions.get(&key) {
            Some(session) => {
                let max_unit = session.unit(now, self.manifest.geometry().piece_size());
                let help = |owner| session.help(sessions.get(&owner), now);
                picker.next_up_to(key, &session.has, max_unit, help)
            }
            None => Next::Done,
        }
    }

    /// Ends an assignment; its undelivered pieces are free again.
    pub(super) fn release(&self, id: u64) {
        self.lock().picker.release(id);
        self.changed.notify_waiters();
    }

    /// True if some known holder waits to be contacted.
    pub(super) fn others_waiting(&self) -> bool {
        self.lock().known.contactable_now(Instant::now())
    }

    /// A holder's session begins with what it has.
    pub(super) fn holder_joined(&self, key: HolderKey, peer_id: &str, has: Bitfield) {
        {
            let mut state = self.lock();
            state.picker.add_holder(&has);
            state.reports.entry(peer_id.to_string()).or_default();
            state.sessions.insert(key, Session::new(peer_id, has));
        }
        self.changed.notify_waiters();
    }

    /// A partial holder's new bitfield; returns true once it has every piece.
    pub(super) fn holder_gained(&self, key: HolderKey, now: &Bitfield) -> bool {
        let mut state = self.lock();
        let State {
            picker, sessions, ..
        } = &mut *state;
        let Some(session) = sessions.get_mut(&key) else {
            return true;
        };
        // Pieces only ever count once gained; a holder that "loses" some keeps them on our
        // books (asking for them gets a clear refusal, which ends its session).
        let gained: Vec<PieceIndex> = now.gained_since(&session.has).collect();
        for &piece in &gained {
            session.has.set(piece);
        }
        picker.holder_gained(gained.iter().copied());
        let full = session.has.is_full();
        drop(state);
        if !full {
            self.changed.notify_waiters();
        }
        full
    }

    /// A holder's session ended.
    pub(super) fn holder_left(&self, key: HolderKey) {
        {
            let mut state = self.lock();
            if let Some(session) = state.sessions.remove(&key) {
                state.picker.remove_holder(&session.has);
            }
            state.picker.release_holder(key);
        }
        self.changed.notify_waiters();
    }

    /// A piece from holder `key` was verified and written.
    pub(super) fn piece_done(&self, key: HolderKey, piece: PieceIndex, len: u64) {
        let mut state = self.lock();
        if !state.picker.complete(piece) {
            return; // A duplicate in endgame.
        }
        let now = Instant::now();
        state.last_progress = now;
        let peer_id = state.sessions.get_mut(&key).map(|s| {
            s.delivered(len, now);
            s.peer_id.clone()
        });
        if let Some(peer_id) = &peer_id {
            state.reports.entry(peer_id.clone()).or_default().bytes += len;
            state.known.delivered(peer_id);
        }
        drop(state);
        if let Some(growing) = &self.setup.growing {
            growing.mark(piece);
        }
        if let Some(peer_id) = &peer_id {
            self.setup.book.record_received(peer_id, len);
        }
        self.fetched.fetch_add(len, Ordering::Relaxed);
        self.progress.done.fetch_add(len, Ordering::Relaxed);
        self.changed.notify_waiters();
        if self.missing() == 0 {
            self.wake.notify_one();
        }
    }

    /// Starts sessions with known holders while there is room.
    fn fill(self: &Arc<Self>, sessions: &mut JoinSet<(HolderKey, String, SessionEnd)>) {
        let mut state = self.lock();
        let room = self
            .setup
            .max_holders
            .saturating_sub(state.known.connected());
        if room == 0 {
            return;
        }
        let State {
            known, rng, links, ..
        } = &mut *state;
        let chosen = known.take(room, Instant::now(), rng);
        let mut started = Vec::new();
        for (peer_id, address) in chosen {
            let link = match links.get(&peer_id) {
                Some(link) if link.address == address => link.clone(),
                _ => match Link::dial(&peer_id, &address, &self.setup.pool, &self.setup.security) {
                    Some(link) => {
                        links.insert(peer_id.clone(), link.clone());
                        link
                    }
                    None => {
                        known.disconnected(&peer_id, Outcome::Corrupt, Instant::now());
                        continue;
                    }
                },
            };
            started.push(link);
        }
        for link in started {
            let key = state.next_key;
            state.next_key += 1;
            self.start_session(sessions, key, link);
        }
    }

    fn start_session(
        self: &Arc<Self>,
        sessions: &mut JoinSet<(HolderKey, String, SessionEnd)>,
        key: HolderKey,
        link: Link,
    ) {
        let span = tracing::info_span!("holder", peer = %link.peer_id, address = %link.address);
        let transfer = self.clone();
        sessions.spawn(
            async move {
                let peer_id = link.peer_id.clone();
                let end = session(transfer, key, link).await;
                (key, peer_id, end)
            }
            .instrument(span),
        );
    }

    /// Records how a session ended; a local error is returned to stop the download.
    fn session_ended(&self, peer_id: &str, end: SessionEnd) -> Result<(), std::io::Error> {
        let (outcome, why) = end?;
        let mut state = self.lock();
        state.known.disconnected(peer_id, outcome, Instant::now());
        let dropped = matches!(outcome, Outcome::Failed | Outcome::Corrupt);
        if dropped {
            // A dead holder's channel is not kept (here nor in the pool): it is dialled afresh
            // if it comes back.
            if let Some(link) = state.links.remove(peer_id) {
                link.connection_failed();
            }
        }
        match (&why, outcome) {
            (Some(why), Outcome::Corrupt) => {
                tracing::warn!(holder = %peer_id, "{why}; never asking this holder again")
            }
            (Some(why), Outcome::Failed) => {
                tracing::info!(holder = %peer_id, "{why}; its pieces go to other holders")
            }
            // A refusal (choked, busy) is not a drop: the holder is asked again soon.
            (Some(why), _) => tracing::debug!(holder = %peer_id, "{why}"),
            (None, _) => {}
        }
        if let Some(why) = why.filter(|_| dropped) {
            state
                .reports
                .entry(peer_id.to_string())
                .or_default()
                .dropped
                .get_or_insert(why);
        }
        drop(state);
        if dropped {
            // Hearsay about it is not passed on in peer exchange any more.
            self.setup.book.forget(&self.manifest.content_id(), peer_id);
        }
        Ok(())
    }

    /// Whether to stop now: nothing is being fetched and either no holder may ever be contacted
    /// again (all sent corrupt data) or nothing was verified for twice the stall timeout (the
    /// holders connected have nothing we need, and none that has is reachable).
    fn hopeless(&self, running_sessions: usize) -> bool {
        let state = self.lock();
        if state.picker.in_flight() {
            return false;
        }
        (running_sessions == 0 && state.known.all_banned())
            || state.last_progress.elapsed() >= self.setup.stall_timeout * 2
    }

    /// Runs the transfer until every piece is verified, no holder is left, or cancellation;
    /// `first` is the holder that gave the manifest (already counted as connected). Keeps the
    /// progress record saved, a last time at the end.
    pub(super) async fn run(
        self: &Arc<Self>,
        ctx: &Context<'_>,
        name: &str,
        partial: &Partial,
        first: Link,
    ) -> Result<(), std::io::Error> {
        let mut sessions = JoinSet::new();
        {
            let mut state = self.lock();
            // It gave the manifest: it took part, whatever else happens (an empty file needs
            // nothing more).
            state.reports.entry(first.peer_id.clone()).or_default();
            state.links.insert(first.peer_id.clone(), first.clone());
            let key = state.next_key;
            state.next_key += 1;
            drop(state);
            self.start_session(&mut sessions, key, first);
        }
        let content_hex = self.manifest.content_id().to_hex();
        let mut tracker_call: Option<Pin<Box<dyn Future<Output = Vec<HolderAddr>> + Send + '_>>> =
            None;
        let mut exchanges: JoinSet<Vec<HolderAddr>> = JoinSet::new();
        let started = Instant::now();
        let mut next_tracker = started + FIRST_REFRESH;
        let mut next_pex = started + FIRST_REFRESH;
        let mut last_save = started;
        let mut result = Ok(());
        loop {
            if self.missing() == 0 || self.sessions.is_cancelled() {
                break;
            }
            self.fill(&mut sessions);
            if self.hopeless(sessions.len()) && tracker_call.is_none() {
                break;
            }
            let now = Instant::now();
            if now >= next_tracker && tracker_call.is_none() {
                next_tracker = now + TRACKER_REFRESH;
                tracker_call = Some(Box::pin(self.ask_tracker(ctx, name, &content_hex)));
            }
            if now >= next_pex {
                next_pex = now + PEX_REFRESH;
                self.exchange(&mut exchanges);
            }
            // A holder out of backoff matters only while a slot is free.
            let retry = {
                let state = self.lock();
                (state.known.connected() < self.setup.max_holders)
                    .then(|| state.known.next_retry(now))
                    .flatten()
            };
            let wake = [
                Some(next_tracker),
                Some(next_pex),
                retry,
                Some(last_save + SAVE_PROGRESS_EVERY),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + SAVE_PROGRESS_EVERY)
            .max(now + Duration::from_millis(5));
            tokio::select! {
                _ = self.sessions.cancelled() => {}
                Some(joined) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Ok((_, peer_id, end)) = joined {
                        if let Err(e) = self.session_ended(&peer_id, end) {
                            result = Err(e);
                            break;
                        }
                    }
                }
                holders = async { tracker_call.as_mut().expect("guarded").await }, if tracker_call.is_some() => {
                    tracker_call = None;
                    self.learn(holders, Heard::Tracker);
                }
                Some(Ok(holders)) = exchanges.join_next(), if !exchanges.is_empty() => {
                    self.learn(holders, Heard::Exchange);
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if last_save.elapsed() >= SAVE_PROGRESS_EVERY {
                partial.save_record(&self.snapshot());
                last_save = Instant::now();
            }
        }
        // Done (or given up, or cancelled): sessions stop at their next await, after finishing
        // the write of a piece already received (it counts for a resume); one that does not
        // stop at once (a blocked disk) is abandoned after a short wait.
        self.sessions.cancel();
        exchanges.abort_all();
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
            sessions.abort_all();
        }
        partial.save_record(&self.snapshot());
        result
    }
}

/// How a session ended: its outcome and why, or a local error.
type SessionEnd = Result<(Outcome, Option<String>), std::io::Error>;
