//! The transfer itself: per-holder workers that take units from the [`Scheduler`], stream them
//! with `GetBlocks`, verify each piece off the receive path and write it at its offset.
//!
//! A holder that sends a bad piece is dropped from the download; one that fails or stalls has its
//! units handed back to the others; one that is busy loses this worker but keeps its others. On
//! cancellation every worker stops at its next await (the call, the next message, a wait) and the
//! record of verified pieces is saved one last time.

use super::partial::Partial;
use super::version::Holder;
use super::{describe, SAVE_PROGRESS_EVERY, STREAMS_PER_HOLDER};
use crate::chunking::{Manifest, PieceIndex, BLOCK_SIZE};
use crate::grpc::ClientChannel;
use crate::pb::peer as pb;
use crate::pb::peer::peer_client::PeerClient;
use crate::peer::schedule::{Assignment, HolderIndex, Next, Scheduler};
use crate::progress::Progress;
use bytes::{Bytes, BytesMut};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::Instrument;

/// How long a worker with nothing to do waits before asking the scheduler again, unless a change
/// (a unit released, a piece done) wakes it sooner.
const IDLE_RECHECK: Duration = Duration::from_millis(200);

/// Shared state of one download's workers.
pub(super) struct Transfer {
    manifest: Arc<Manifest>,
    scheduler: Mutex<Scheduler>,
    /// Woken when a unit is released or a piece is done (waiting workers may have work).
    changed: Notify,
    file: std::fs::File,
    holders: Vec<HolderState>,
    progress: Arc<Progress>,
    fetched: AtomicU64,
    stall_timeout: Duration,
    cancel: CancellationToken,
}

/// One holder within a download.
struct HolderState {
    peer_id: String,
    address: String,
    client: PeerClient<ClientChannel>,
    /// Why it was dropped; the first reason wins.
    dropped: Mutex<Option<String>>,
    /// Its workers stop taking units.
    gone: AtomicBool,
    /// Bytes of verified pieces it delivered first.
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
    /// The download is cancelled: stop.
    Cancelled,
}

/// A piece being verified and written on a blocking thread.
struct PendingPiece {
    piece: PieceIndex,
    len: u64,
    task: tokio::task::JoinHandle<Result<(), FetchError>>,
}

impl Transfer {
    /// The transfer of the pieces not yet `done` of `manifest` into `file`, from `holders`.
    pub(super) fn new(
        manifest: Arc<Manifest>,
        done: Vec<bool>,
        file: std::fs::File,
        holders: Vec<Holder>,
        progress: Arc<Progress>,
        stall_timeout: Duration,
        cancel: CancellationToken,
    ) -> Self {
        let geometry = manifest.geometry();
        let unit =
            Scheduler::unit_pieces(geometry.piece_count(), geometry.piece_size(), holders.len());
        Transfer {
            manifest,
            scheduler: Mutex::new(Scheduler::new(done, unit)),
            changed: Notify::new(),
            file,
            holders: holders
                .into_iter()
                .map(|h| HolderState {
                    peer_id: h.peer_id,
                    address: h.address,
                    client: h.client,
                    dropped: Mutex::new(None),
                    gone: AtomicBool::new(false),
                    bytes: AtomicU64::new(0),
                })
                .collect(),
            progress,
            fetched: AtomicU64::new(0),
            stall_timeout,
            cancel,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pieces not yet verified.
    pub(super) fn missing(&self) -> u64 {
        self.lock().remaining()
    }

    /// Bytes of verified pieces fetched in this run.
    pub(super) fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// How each holder did.
    pub(super) fn holder_reports(&self) -> Vec<super::HolderReport> {
        self.holders
            .iter()
            .map(|h| super::HolderReport {
                peer_id: h.peer_id.clone(),
                bytes: h.bytes.load(Ordering::Relaxed),
                dropped: h.dropped.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
            .collect()
    }

    /// Runs every holder's workers to the end (every piece verified, every holder gone, or
    /// cancellation) and keeps the progress record saved, a last time at the end.
    pub(super) async fn run(self: &Arc<Self>, partial: &Partial) -> Result<(), std::io::Error> {
        let mut workers = tokio::task::JoinSet::new();
        for (index, holder) in self.holders.iter().enumerate() {
            // A child of the download's span: every line a worker logs says which holder.
            let span =
                tracing::info_span!("holder", peer = %holder.peer_id, address = %holder.address);
            for _ in 0..STREAMS_PER_HOLDER {
                workers.spawn(self.clone().worker(index).instrument(span.clone()));
            }
        }
        let mut last_save = Instant::now();
        let mut result = Ok(());
        loop {
            let joined = tokio::time::timeout(SAVE_PROGRESS_EVERY, workers.join_next()).await;
            if last_save.elapsed() >= SAVE_PROGRESS_EVERY || joined.is_ok() {
                if partial.is_resumable() {
                    partial.save_record(&self.snapshot());
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

    /// Which pieces are verified.
    fn snapshot(&self) -> Vec<bool> {
        let scheduler = self.lock();
        (0..self.manifest.geometry().piece_count())
            .map(|p| scheduler.is_done(p))
            .collect()
    }

    /// One of a holder's workers: takes units until none is left, the holder is dropped or busy,
    /// or the download is cancelled.
    async fn worker(self: Arc<Self>, holder: HolderIndex) -> Result<(), std::io::Error> {
        loop {
            if self.holders[holder].gone.load(Ordering::SeqCst) || self.cancel.is_cancelled() {
                return Ok(());
            }
            let changed = self.changed.notified();
            let next = self.lock().next(holder);
            let assignment = match next {
                Next::Done => return Ok(()),
                Next::Wait => {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::timeout(IDLE_RECHECK, changed) => continue,
                    }
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
                Err(FetchError::Cancelled) => return Ok(()),
                Err(FetchError::Local(e)) => {
                    for h in &self.holders {
                        h.gone.store(true, Ordering::SeqCst);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Waits for `future` up to the stall timeout, unless the download is cancelled first.
    async fn within_stall_timeout<T>(
        &self,
        future: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, FetchError> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(FetchError::Cancelled),
            outcome = tokio::time::timeout(self.stall_timeout, future) => Ok(outcome.ok()),
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
        tracing::debug!(pieces = ?assignment.pieces, "requesting");
        let mut stream = match self
            .within_stall_timeout(client.get_blocks(request))
            .await?
        {
            None => {
                return Err(FetchError::Failed(format!(
                    "no answer within {:?}",
                    self.stall_timeout
                )))
            }
            Some(Err(status)) if status.code() == Code::ResourceExhausted => {
                return Err(FetchError::Busy(status.message().to_string()))
            }
            Some(Err(status)) => return Err(FetchError::Failed(describe(&status))),
            Some(Ok(response)) => response.into_inner(),
        };
        let mut piece = assignment.pieces.start;
        let mut expected_block = blocks.start;
        let mut buf = BytesMut::new();
        let mut pending: Option<PendingPiece> = None;
        while piece < assignment.pieces.end {
            let message = match self.within_stall_timeout(stream.message()).await {
                Err(cancelled) => {
                    // A piece already received is kept: it counts for the resume.
                    if let Some(previous) = pending.take() {
                        self.finish_piece(holder, previous).await?;
                    }
                    return Err(cancelled);
                }
                Ok(None) => {
                    return Err(FetchError::Failed(format!(
                        "stalled: no data for {:?}",
                        self.stall_timeout
                    )))
                }
                Ok(Some(Err(status))) => return Err(FetchError::Failed(describe(&status))),
                Ok(Some(Ok(None))) => {
                    return Err(FetchError::Failed(
                        "stream ended before the range was complete".into(),
                    ))
                }
                Ok(Some(Ok(Some(m)))) => m,
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
