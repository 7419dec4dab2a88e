//! The multi-holder downloader.
//!
//! 1. Ask the tracker who holds the file; pick a version (most holders, or the one asked for).
//! 2. Fetch the manifest from any holder and check it against the content id (a lying holder's
//!    manifest is refused and the next holder asked).
//! 3. Open the partial file under `.p2pshare/partial/` (never in `files/`); on a resumed download,
//!    re-verify the pieces recorded as done and keep the good ones.
//! 4. Run workers per holder that take units from the [`Scheduler`], stream them with
//!    `GetBlocks`, verify each piece off the receive path and write it at its offset. A holder
//!    that sends a bad piece is dropped from the download; one that fails or stalls has its units
//!    handed back to the others.
//! 5. fsync, move into `files/` without replacing different content, announce.

use crate::chunking::{ContentId, Geometry, Manifest, PieceIndex, BLOCK_SIZE};
use crate::grpc::ClientChannel;
use crate::names::{validate_file_name, NameError};
use crate::pb::peer as pb;
use crate::pb::peer::peer_client::PeerClient;
use crate::pb::tracker::FileVersion;
use crate::peer::schedule::{Assignment, HolderIndex, Next, Scheduler};
use crate::peer::store::{SharedFile, StoreError};
use crate::peer::tracker_link::TrackerLinkError;
use crate::peer::PeerNode;
use bytes::{Bytes, BytesMut};
use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tonic::Code;

/// Concurrent `GetBlocks` streams per holder: two keep a holder busy while the other stream's
/// request is on its way.
pub const STREAMS_PER_HOLDER: usize = 2;
/// A holder that sends nothing for this long is given up on (its units go to others).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the record of verified pieces is saved during a download.
const SAVE_PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Errors of a download.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Bad file name.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// The tracker could not be asked.
    #[error(transparent)]
    Tracker(TrackerLinkError),
    /// Nobody has the file.
    #[error("no peer has {0:?}")]
    NotFound(String),
    /// Only this peer has it.
    #[error("no other peer has {0:?}")]
    NoOtherHolder(String),
    /// No holder gave a manifest matching the content id.
    #[error("no holder gave a valid manifest for {name:?}: {details}")]
    NoManifest {
        /// The file.
        name: String,
        /// What each holder did.
        details: String,
    },
    /// Holders failed before every piece arrived; verified pieces are kept for a resume.
    #[error("download of {name:?} incomplete: {missing} of {total} pieces missing ({details}); run get again to resume")]
    Incomplete {
        /// The file.
        name: String,
        /// Pieces not fetched.
        missing: u64,
        /// All pieces.
        total: u64,
        /// What went wrong with each holder.
        details: String,
    },
    /// The store refused (name taken by other content, disk error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local disk error.
    #[error("writing the download failed: {0}")]
    Io(#[from] std::io::Error),
    /// The download was cancelled (shutdown).
    #[error("download cancelled")]
    Cancelled,
}

impl From<TrackerLinkError> for DownloadError {
    fn from(e: TrackerLinkError) -> Self {
        DownloadError::Tracker(e)
    }
}

/// Where a finished download goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Into `files/`, shared and announced.
    Files,
    /// A verified scratch file outside `files/`, not shared; [`DownloadReport::path`] names it
    /// and the caller deletes it (benchmarks: a real transfer that leaves nothing behind).
    Scratch,
}

/// What to download.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    /// File name.
    pub name: String,
    /// Optional content id prefix selecting a version.
    pub content_id_prefix: String,
    /// Where the result goes.
    pub destination: Destination,
}

impl DownloadRequest {
    /// Parses `name` or `name@<content id prefix>`.
    pub fn parse(spec: &str, destination: Destination) -> Self {
        let (name, prefix) = match spec.rsplit_once('@') {
            Some((name, prefix)) if crate::chunking::is_content_id_prefix(prefix) => (name, prefix),
            _ => (spec, ""),
        };
        DownloadRequest {
            name: name.to_string(),
            content_id_prefix: prefix.to_string(),
            destination,
        }
    }
}

pub use crate::progress::Progress;

/// How one holder did.
#[derive(Debug, Clone)]
pub struct HolderReport {
    /// Its peer id.
    pub peer_id: String,
    /// Bytes of verified pieces it delivered first.
    pub bytes: u64,
    /// Why it was dropped, if it was.
    pub dropped: Option<String>,
}

/// The result of a download.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    /// File name.
    pub name: String,
    /// Content id.
    pub content_id: ContentId,
    /// Size in bytes.
    pub size: u64,
    /// Each holder used.
    pub holders: Vec<HolderReport>,
    /// Wall time from the tracker query to the file in place.
    pub elapsed: Duration,
    /// Bytes fetched over the network in this run (verified pieces only).
    pub fetched: u64,
    /// Bytes kept from an earlier interrupted attempt.
    pub resumed: u64,
    /// A note for the user (e.g. which version was picked).
    pub note: Option<String>,
    /// True if the file was already in `files/` with this content (nothing fetched).
    pub already_had: bool,
    /// Where the file is (for [`Destination::Files`]).
    pub path: Option<PathBuf>,
}

impl DownloadReport {
    /// Throughput of this run in MB/s (10^6 bytes), over the bytes fetched.
    pub fn mb_per_sec(&self) -> f64 {
        self.fetched as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Content ids with a resumable download in progress in this process: a second concurrent `get`
/// of the same content uses its own scratch partial file instead of sharing one.
#[derive(Debug, Default)]
pub struct ActiveDownloads(Mutex<HashSet<ContentId>>);

struct Claim<'a> {
    set: &'a ActiveDownloads,
    id: ContentId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl ActiveDownloads {
    fn claim(&self, id: ContentId) -> Option<Claim<'_>> {
        // The guard must be gone before a Claim can exist: dropping a Claim takes the lock.
        let inserted = self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        if inserted {
            Some(Claim { set: self, id })
        } else {
            None
        }
    }
}

/// The partial file of a download and its record of verified pieces.
struct Partial {
    path: PathBuf,
    /// `<content id>.done`: one byte per piece, 1 = verified. None for scratch downloads.
    record: Option<PathBuf>,
    file: std::fs::File,
}

impl Partial {
    /// Opens the resumable partial file for `manifest` (or a fresh scratch one) and returns it
    /// with the pieces already verified in it.
    fn open(
        dir: &Path,
        manifest: &Manifest,
        resumable: bool,
    ) -> std::io::Result<(Self, Vec<bool>)> {
        let size = manifest.geometry().size();
        let pieces = manifest.geometry().piece_count() as usize;
        if !resumable {
            let tmp = tempfile::Builder::new()
                .prefix(&format!("{}.", manifest.content_id().short()))
                .suffix(".tmp")
                .tempfile_in(dir)?;
            let (file, path) = tmp.keep().map_err(|e| e.error)?;
            file.set_len(size)?;
            return Ok((
                Partial {
                    path,
                    record: None,
                    file,
                },
                vec![false; pieces],
            ));
        }
        let id = manifest.content_id().to_hex();
        let path = dir.join(format!("{id}.part"));
        let record = dir.join(format!("{id}.done"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut done = vec![false; pieces];
        if file.metadata()?.len() == size {
            if let Ok(bytes) = std::fs::read(&record) {
                // Trust nothing: a claimed piece counts only if it still hashes right.
                let geometry = manifest.geometry();
                let mut buf = vec![0u8; geometry.piece_size() as usize];
                for (piece, flag) in bytes.iter().enumerate().take(pieces) {
                    if *flag != 1 {
                        continue;
                    }
                    let range = geometry.piece_bytes(piece as u64);
                    let len = (range.end - range.start) as usize;
                    if file.read_exact_at(&mut buf[..len], range.start).is_ok()
                        && manifest.verify_piece(piece as u64, &buf[..len])
                    {
                        done[piece] = true;
                    }
                }
            }
        } else {
            file.set_len(size)?;
        }
        Ok((
            Partial {
                path,
                record: Some(record),
                file,
            },
            done,
        ))
    }

    fn save_record(&self, done: &[bool]) {
        let Some(record) = &self.record else { return };
        let bytes: Vec<u8> = done.iter().map(|&d| d as u8).collect();
        let tmp = record.with_extension("done.tmp");
        let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, record));
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not save download progress");
        }
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
        }
    }
}

/// Shared state of one download's workers.
struct Run {
    manifest: Arc<Manifest>,
    scheduler: Mutex<Scheduler>,
    changed: Notify,
    file: std::fs::File,
    holders: Vec<HolderState>,
    progress: Arc<Progress>,
    fetched: AtomicU64,
    stall_timeout: Duration,
}

struct HolderState {
    peer_id: String,
    client: PeerClient<ClientChannel>,
    dropped: Mutex<Option<String>>,
    gone: AtomicBool,
    bytes: AtomicU64,
}

impl HolderState {
    fn drop_with(&self, reason: String) {
        let mut slot = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.gone.store(true, Ordering::SeqCst);
    }
}

/// How a unit fetch ended, other than success.
enum FetchError {
    /// The holder sent data that failed verification: drop it.
    Corrupt(String),
    /// The holder failed (connection, stall, protocol): drop it.
    Failed(String),
    /// The holder is busy: this worker stops, others of that holder may go on.
    Busy(String),
    /// Writing locally failed: stop everything.
    Local(std::io::Error),
}

impl Run {
    fn lock(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn worker(self: Arc<Self>, holder: HolderIndex) -> Result<(), std::io::Error> {
        loop {
            if self.holders[holder].gone.load(Ordering::SeqCst) {
                return Ok(());
            }
            let changed = self.changed.notified();
            let next = self.lock().next(holder);
            let assignment = match next {
                Next::Done => return Ok(()),
                Next::Wait => {
                    // Bounded wait: a change (unit released, piece done) wakes us sooner.
                    let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
                    continue;
                }
                Next::Fetch(a) => a,
            };
            let result = self.fetch(holder, &assignment).await;
            self.lock().release(assignment.id);
            self.changed.notify_waiters();
            let state = &self.holders[holder];
            match result {
                Ok(()) => {}
                Err(FetchError::Corrupt(why)) => {
                    tracing::warn!(holder = %state.peer_id, "{why}; dropping this holder from the download");
                    state.drop_with(why);
                }
                Err(FetchError::Failed(why)) => {
                    tracing::warn!(holder = %state.peer_id, "{why}; its pieces go to other holders");
                    state.drop_with(why);
                }
                Err(FetchError::Busy(why)) => {
                    tracing::info!(holder = %state.peer_id, "{why}");
                    return Ok(());
                }
                Err(FetchError::Local(e)) => {
                    for h in &self.holders {
                        h.gone.store(true, Ordering::SeqCst);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Streams one unit, verifying and writing each piece as it completes.
    async fn fetch(&self, holder: HolderIndex, assignment: &Assignment) -> Result<(), FetchError> {
        let geometry = self.manifest.geometry();
        let blocks = geometry.blocks_of_pieces(assignment.pieces.clone());
        let request = pb::GetBlocksRequest {
            file: Some(pb::FileSelector {
                name: String::new(),
                content_id: self.manifest.content_id().to_hex(),
            }),
            first_block: blocks.start,
            block_count: blocks.end - blocks.start,
        };
        let state = &self.holders[holder];
        let mut client = state.client.clone();
        let call = tokio::time::timeout(self.stall_timeout, client.get_blocks(request));
        let mut stream = match call.await {
            Err(_) => {
                return Err(FetchError::Failed(format!(
                    "no answer within {:?}",
                    self.stall_timeout
                )))
            }
            Ok(Err(status)) if status.code() == Code::ResourceExhausted => {
                return Err(FetchError::Busy(status.message().to_string()))
            }
            Ok(Err(status)) => return Err(FetchError::Failed(describe(&status))),
            Ok(Ok(response)) => response.into_inner(),
        };
        let mut piece = assignment.pieces.start;
        let mut expected_block = blocks.start;
        let mut buf = BytesMut::new();
        let mut pending: Option<PendingPiece> = None;
        while piece < assignment.pieces.end {
            let message = match tokio::time::timeout(self.stall_timeout, stream.message()).await {
                Err(_) => {
                    return Err(FetchError::Failed(format!(
                        "stalled: no data for {:?}",
                        self.stall_timeout
                    )))
                }
                Ok(Err(status)) => return Err(FetchError::Failed(describe(&status))),
                Ok(Ok(None)) => {
                    return Err(FetchError::Failed(
                        "stream ended before the range was complete".into(),
                    ))
                }
                Ok(Ok(Some(m))) => m,
            };
            if message.first_block != expected_block || message.data.is_empty() {
                return Err(FetchError::Corrupt(format!(
                    "sent block {} ({} bytes) where block {expected_block} was due",
                    message.first_block,
                    message.data.len()
                )));
            }
            expected_block += message.data.len().div_ceil(BLOCK_SIZE as usize) as u64;
            let mut incoming = message.data;
            while piece < assignment.pieces.end {
                let range = geometry.piece_bytes(piece);
                let len = (range.end - range.start) as usize;
                // A piece wholly inside the message is taken without a copy; one that straddles
                // messages is gathered in `buf`.
                let data = if buf.is_empty() && incoming.len() >= len {
                    incoming.split_to(len)
                } else {
                    let take = (len - buf.len()).min(incoming.len());
                    buf.extend_from_slice(&incoming.split_to(take));
                    if buf.len() < len {
                        break;
                    }
                    buf.split().freeze()
                };
                if let Some(previous) = pending.take() {
                    self.finish_piece(holder, previous).await?;
                }
                // In endgame another holder may have delivered this piece already.
                if !self.lock().is_done(piece) {
                    pending = Some(self.spawn_verify_write(piece, range.start, data));
                }
                piece += 1;
            }
            if !incoming.is_empty() {
                return Err(FetchError::Corrupt(
                    "sent more bytes than the range holds".into(),
                ));
            }
            // Endgame: stop streaming once others have delivered the rest of this unit.
            if piece < assignment.pieces.end && {
                let s = self.lock();
                (piece..assignment.pieces.end).all(|p| s.is_done(p))
            } {
                break;
            }
        }
        if let Some(previous) = pending.take() {
            self.finish_piece(holder, previous).await?;
        }
        Ok(())
    }

    fn spawn_verify_write(&self, piece: PieceIndex, offset: u64, data: Bytes) -> PendingPiece {
        let manifest = self.manifest.clone();
        let file = self.file.try_clone();
        let len = data.len() as u64;
        let task = tokio::task::spawn_blocking(move || {
            if !manifest.verify_piece(piece, &data) {
                return Err(FetchError::Corrupt(format!(
                    "sent corrupt data for piece {piece}"
                )));
            }
            let file = file.map_err(FetchError::Local)?;
            file.write_all_at(&data, offset).map_err(FetchError::Local)
        });
        PendingPiece { piece, len, task }
    }

    /// Waits for a piece's verification and write, then records it.
    async fn finish_piece(
        &self,
        holder: HolderIndex,
        pending: PendingPiece,
    ) -> Result<(), FetchError> {
        pending
            .task
            .await
            .map_err(|e| FetchError::Local(std::io::Error::other(e)))??;
        if self.lock().complete(pending.piece) {
            self.fetched.fetch_add(pending.len, Ordering::Relaxed);
            self.holders[holder]
                .bytes
                .fetch_add(pending.len, Ordering::Relaxed);
            self.progress.done.fetch_add(pending.len, Ordering::Relaxed);
            self.changed.notify_waiters();
        }
        Ok(())
    }
}

/// A piece being verified and written on a blocking thread.
struct PendingPiece {
    piece: PieceIndex,
    len: u64,
    task: tokio::task::JoinHandle<Result<(), FetchError>>,
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

impl PeerNode {
    /// Downloads a file from the other holders in the swarm.
    pub async fn download(
        &self,
        request: &DownloadRequest,
        progress: Arc<Progress>,
    ) -> Result<DownloadReport, DownloadError> {
        let started = Instant::now();
        validate_file_name(&request.name)?;
        let versions = match self
            .tracker()
            .who_has(&request.name, &request.content_id_prefix)
            .await
        {
            Ok(v) => v,
            Err(e) if e.code() == Some(Code::NotFound) => {
                return Err(DownloadError::NotFound(request.name.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        let (version, note) = pick_version(&versions, request)?;
        let content_id: ContentId = version
            .content_id
            .parse()
            .map_err(|_| DownloadError::NotFound(request.name.clone()))?;

        if request.destination == Destination::Files {
            if let Some(mine) = self.store().get(&request.name) {
                if mine.content_id() == content_id {
                    return Ok(already_had(&mine, started, note));
                }
            }
        }
        let holders: Vec<_> = version
            .holders
            .iter()
            .filter(|h| h.peer_id != self.id())
            .collect();
        if holders.is_empty() {
            return Err(DownloadError::NoOtherHolder(request.name.clone()));
        }
        let clients: Vec<(String, PeerClient<ClientChannel>)> = holders
            .iter()
            .filter_map(|h| {
                let channel = self.config().client_security.channel(&h.address).ok()?;
                Some((
                    h.peer_id.clone(),
                    PeerClient::new(channel)
                        .max_decoding_message_size(crate::grpc::MAX_MESSAGE_SIZE),
                ))
            })
            .collect();
        let manifest =
            Arc::new(fetch_manifest(&request.name, content_id, version.size, &clients).await?);
        progress
            .total
            .store(manifest.geometry().size(), Ordering::Relaxed);

        let claim = match request.destination {
            Destination::Files => self.active_downloads().claim(content_id),
            Destination::Scratch => None,
        };
        let dir = self.store().partial_dir().to_path_buf();
        let (partial, done) = {
            let manifest = manifest.clone();
            let resumable = claim.is_some();
            tokio::task::spawn_blocking(move || Partial::open(&dir, &manifest, resumable))
                .await
                .map_err(std::io::Error::other)??
        };
        let geometry = manifest.geometry();
        let resumed: u64 = done
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .map(|(p, _)| {
                let r = geometry.piece_bytes(p as u64);
                r.end - r.start
            })
            .sum();
        progress.done.store(resumed, Ordering::Relaxed);
        let unit =
            Scheduler::unit_pieces(geometry.piece_count(), geometry.piece_size(), clients.len());
        let run = Arc::new(Run {
            manifest: manifest.clone(),
            scheduler: Mutex::new(Scheduler::new(done, unit)),
            changed: Notify::new(),
            file: partial.file.try_clone()?,
            holders: clients
                .into_iter()
                .map(|(peer_id, client)| HolderState {
                    peer_id,
                    client,
                    dropped: Mutex::new(None),
                    gone: AtomicBool::new(false),
                    bytes: AtomicU64::new(0),
                })
                .collect(),
            progress: progress.clone(),
            fetched: AtomicU64::new(0),
            stall_timeout: self.config().stall_timeout,
        });
        let outcome = run_workers(&run, &partial).await;
        let missing = run.lock().remaining();
        let holder_reports: Vec<HolderReport> = run
            .holders
            .iter()
            .map(|h| HolderReport {
                peer_id: h.peer_id.clone(),
                bytes: h.bytes.load(Ordering::Relaxed),
                dropped: h.dropped.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
            .collect();
        if let Err(e) = outcome {
            if partial.record.is_none() {
                partial.remove();
            }
            return Err(e.into());
        }
        if missing > 0 {
            if partial.record.is_none() {
                partial.remove();
            }
            let details = holder_reports
                .iter()
                .map(|h| match &h.dropped {
                    Some(why) => format!("{}: {why}", h.peer_id),
                    None => format!("{}: busy", h.peer_id),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(DownloadError::Incomplete {
                name: request.name.clone(),
                missing,
                total: geometry.piece_count(),
                details,
            });
        }
        let fetched = run.fetched.load(Ordering::Relaxed);
        drop(run);
        let mut report = DownloadReport {
            name: request.name.clone(),
            content_id,
            size: geometry.size(),
            holders: holder_reports,
            elapsed: Duration::ZERO,
            fetched,
            resumed,
            note,
            already_had: false,
            path: None,
        };
        match request.destination {
            Destination::Scratch => report.path = Some(partial.path.clone()),
            Destination::Files => {
                let store = self.store_arc();
                let name = request.name.clone();
                let file =
                    tokio::task::spawn_blocking(move || -> Result<SharedFile, DownloadError> {
                        partial.file.sync_all()?;
                        let result = store.adopt(&partial.path, &name, manifest);
                        if let Some(record) = &partial.record {
                            let _ = std::fs::remove_file(record);
                        }
                        if result.is_err() {
                            let _ = std::fs::remove_file(&partial.path);
                        }
                        Ok(result?)
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                report.path = Some(file.path.clone());
                if let Err(e) = self.announce(&file).await {
                    tracing::warn!(error = %e, file = %file.name, "downloaded but not announced yet; will be on the next registration");
                }
            }
        }
        drop(claim);
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// Runs every holder's workers to the end and keeps the progress record saved.
async fn run_workers(run: &Arc<Run>, partial: &Partial) -> Result<(), std::io::Error> {
    let mut workers = tokio::task::JoinSet::new();
    for holder in 0..run.holders.len() {
        for _ in 0..STREAMS_PER_HOLDER {
            workers.spawn(run.clone().worker(holder));
        }
    }
    let mut last_save = Instant::now();
    let mut result = Ok(());
    loop {
        let joined = tokio::time::timeout(SAVE_PROGRESS_EVERY, workers.join_next()).await;
        if last_save.elapsed() >= SAVE_PROGRESS_EVERY || joined.is_ok() {
            if partial.record.is_some() {
                let done = snapshot(run);
                partial.save_record(&done);
            }
            last_save = Instant::now();
        }
        match joined {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(Ok(Ok(())))) => {}
            Ok(Some(Ok(Err(e)))) => result = Err(e),
            Ok(Some(Err(join))) => result = Err(std::io::Error::other(join)),
        }
    }
    result
}

fn snapshot(run: &Run) -> Vec<bool> {
    let scheduler = run.lock();
    (0..run.manifest.geometry().piece_count())
        .map(|p| scheduler.is_done(p))
        .collect()
}

fn already_had(mine: &SharedFile, started: Instant, note: Option<String>) -> DownloadReport {
    DownloadReport {
        name: mine.name.clone(),
        content_id: mine.content_id(),
        size: mine.size,
        holders: vec![],
        elapsed: started.elapsed(),
        fetched: 0,
        resumed: 0,
        note,
        already_had: true,
        path: Some(mine.path.clone()),
    }
}

/// Picks the version to fetch: the one asked for, else the one with most holders (with a note
/// when there was a choice).
fn pick_version<'a>(
    versions: &'a [FileVersion],
    request: &DownloadRequest,
) -> Result<(&'a FileVersion, Option<String>), DownloadError> {
    let first = versions
        .first()
        .ok_or_else(|| DownloadError::NotFound(request.name.clone()))?;
    let note = (versions.len() > 1).then(|| {
        format!(
            "{} versions of {:?} exist; picked {} (most holders: {}); choose one with get {}@<id-prefix>",
            versions.len(),
            request.name,
            &first.content_id[..12],
            first.holders.len(),
            request.name
        )
    });
    Ok((first, note))
}

/// Asks holders in turn for the manifest until one matches the content id.
async fn fetch_manifest(
    name: &str,
    content_id: ContentId,
    size: u64,
    clients: &[(String, PeerClient<ClientChannel>)],
) -> Result<Manifest, DownloadError> {
    let mut problems = Vec::new();
    for (peer_id, client) in clients {
        let request = pb::GetManifestRequest {
            file: Some(pb::FileSelector {
                name: String::new(),
                content_id: content_id.to_hex(),
            }),
        };
        let mut client = client.clone();
        let answer = tokio::time::timeout(
            crate::peer::tracker_link::CALL_TIMEOUT,
            client.get_manifest(request),
        )
        .await;
        let response = match answer {
            Err(_) => {
                problems.push(format!("{peer_id}: no answer"));
                continue;
            }
            Ok(Err(status)) => {
                problems.push(format!("{peer_id}: {}", describe(&status)));
                continue;
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let checked = Geometry::new(response.size, response.piece_size as u64)
            .map_err(|e| e.to_string())
            .and_then(|g| {
                if g.size() != size {
                    return Err(format!(
                        "size {} differs from the tracker's {size}",
                        g.size()
                    ));
                }
                Manifest::from_parts(
                    content_id,
                    g,
                    response
                        .piece_hashes
                        .into_iter()
                        .map(|b| b.to_vec())
                        .collect(),
                )
                .map_err(|e| e.to_string())
            });
        match checked {
            Ok(m) => return Ok(m),
            Err(why) => {
                tracing::warn!(holder = %peer_id, "bad manifest: {why}");
                problems.push(format!("{peer_id}: {why}"));
            }
        }
    }
    Err(DownloadError::NoManifest {
        name: name.to_string(),
        details: problems.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_specs_parse() {
        let r = DownloadRequest::parse("a.txt", Destination::Files);
        assert_eq!(
            (r.name.as_str(), r.content_id_prefix.as_str()),
            ("a.txt", "")
        );
        let r = DownloadRequest::parse("a.txt@ea8f16", Destination::Files);
        assert_eq!(
            (r.name.as_str(), r.content_id_prefix.as_str()),
            ("a.txt", "ea8f16")
        );
        let r = DownloadRequest::parse("me@home.txt", Destination::Files);
        assert_eq!(r.name, "me@home.txt");
    }
}
