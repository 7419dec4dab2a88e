//! One `GetBlocks` stream's producer: a blocking task reading with `pread` (into buffers it
//! does not zero first), several blocks per
//! message, into a bounded channel that is the response stream; the idle clock and watchdog that
//! end it when its client stops reading; and its cancellation when the peer shuts down.
//!
//! The reader checks what it serves ([`PieceCheck`]): every piece that lies wholly inside the
//! range is hashed as it is read and compared with the manifest the file was shared with, and the
//! bytes that complete a piece are sent only once it matches. A file changed on disk since it was
//! hashed (even with its size and mtime put back) therefore ends the stream with DATA_LOSS before
//! its client holds a whole wrong piece (so an honest holder is not taken for a liar), and the
//! store is told to hash the file again, which re-announces or withdraws it. A piece that matched
//! is not hashed again while the file keeps its stamp (device, inode, size, modification and
//! change times: any write moves the change time, which cannot be set back), for a minute at most
//! ([`CheckedFiles`]): a popular file costs one hash per piece per minute, not one per upload
//! (0.18 CPU-s per GiB served). Pieces cut by the
//! range's ends are not checked: checking them would mean reading up to a whole piece more per
//! stream, which a client asking for single blocks could use to multiply the work; downloaders of
//! this crate only ask for whole pieces.

use super::{RateLimiter, ServeError, MAX_BLOCKS_PER_MESSAGE};
mod verify;

pub(super) use verify::{CheckedFiles, FileStamp, PieceCheck};

use crate::chunking::PieceHasher;
use crate::chunking::BLOCK_SIZE;
use crate::pb::peer as pb;
use crate::peer::choke::Choker;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Since when a stream's reader has been waiting for its client to take read-ahead, if it is.
/// Shared by the reader (a blocking thread) and the stream's [`idle_watchdog`].
pub(super) struct IdleClock {
    base: Instant,
    /// Milliseconds after `base` when the wait began, plus one; 0 when not waiting.
    waiting_since: AtomicU64,
}

impl Default for IdleClock {
    fn default() -> Self {
        IdleClock {
            base: Instant::now(),
            waiting_since: AtomicU64::new(0),
        }
    }
}

impl IdleClock {
    fn start_waiting(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.waiting_since.store(ms + 1, Ordering::Relaxed);
    }

    fn stop_waiting(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    fn waiting_since(&self) -> Option<Instant> {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms - 1)),
        }
    }
}

/// Cancels `stop` once the reader has waited `idle` for its client (the stream then ends
/// between one and two `idle` after the client stopped reading). Returns when `stop` is
/// cancelled, by itself, by the reader finishing or by shutdown. Timers live here, in an async
/// task, not in the reader's blocking thread, where a runtime shutting down would make them panic.
pub(super) async fn idle_watchdog(clock: Arc<IdleClock>, idle: Duration, stop: CancellationToken) {
    loop {
        let wake = clock
            .waiting_since()
            .map_or_else(|| Instant::now() + idle, |since| since + idle);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        if clock
            .waiting_since()
            .is_some_and(|since| since.elapsed() >= idle)
        {
            stop.cancel();
            return;
        }
    }
}

/// One `GetBlocks` stream's reads, on a blocking thread.
pub(super) struct ReadJob {
    /// The file's name, for logs and errors.
    pub(super) name: String,
    pub(super) opened: std::fs::File,
    pub(super) first_block: u64,
    pub(super) range: std::ops::Range<u64>,
    pub(super) rate: Option<Arc<RateLimiter>>,
    pub(super) idle_timeout: Duration,
    pub(super) clock: Arc<IdleClock>,
    /// The service's shutdown token: cancelled, the stream ends UNAVAILABLE.
    pub(super) shutdown: CancellationToken,
    /// A child of `shutdown`; also cancelled by the watchdog when the client stalls, and by the
    /// job when it ends (which stops the watchdog).
    pub(super) stop: CancellationToken,
    pub(super) runtime: tokio::runtime::Handle,
    /// Held for the life of the stream.
    pub(super) _permit: OwnedSemaphorePermit,
    /// The upload slot this stream's downloader holds, told how much was sent when it ends.
    pub(super) slot: Option<UploadSlot>,
    /// What the reads are checked against.
    pub(super) check: PieceCheck,
}

/// A downloader's admission by the choker, for one stream: when the stream ends, the choker
/// learns how many bytes it sent (to serve the least served first at the next rotation).
pub(super) struct UploadSlot {
    pub(super) choker: Arc<std::sync::Mutex<Choker>>,
    pub(super) key: String,
    pub(super) sent: AtomicU64,
    /// The service's count of bytes uploaded, all streams together.
    pub(super) total: Arc<AtomicU64>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.choker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finished(&self.key, *self.sent.get_mut(), Instant::now());
    }
}

pub(super) type Sender = mpsc::Sender<Result<pb::GetBlocksResponse, Status>>;

impl ReadJob {
    /// Streams the range into `tx`, then the final status if it failed.
    pub(super) fn run(self, tx: Sender) {
        let result = self.stream(&tx);
        // Stop the watchdog and free the stream slot *before* the stream ends (when `tx` drops),
        // so a client that saw the end can open another stream at once.
        self.stop.cancel();
        drop(self);
        if let Err(status) = result {
            // `send` always leaves a slot free, so the final status fits even when the client has
            // stopped reading; if the client is gone, nobody needs it.
            let _ = tx.try_send(Err(status));
        }
    }

    /// Why `stop` fired: shutdown, or a client that stopped reading.
    fn stopped(&self) -> ServeError {
        if self.shutdown.is_cancelled() {
            tracing::debug!(file = %self.name, "stream ended: shutting down");
            ServeError::ShuttingDown
        } else {
            tracing::debug!(file = %self.name, "stream ended: the client stopped reading");
            ServeError::Stalled(self.idle_timeout)
        }
    }

    /// Queues one message once the upload budget allows it. Waits for *two* free slots and takes
    /// one, so a slot always stays free for the final status. `Ok(false)`: the client went away.
    /// Fails when the client has taken nothing for the idle timeout, or on shutdown.
    fn send(&self, tx: &Sender, message: pb::GetBlocksResponse) -> Result<bool, ServeError> {
        let reserved = self.runtime.block_on(async {
            if let Some(rate) = &self.rate {
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return None,
                    // A client that went away while the budget was short frees the thread now,
                    // not after the wait (at a low rate, many seconds).
                    _ = tx.closed() => return Some(Err(mpsc::error::SendError(()))),
                    _ = rate.wait(message.data.len()) => {}
                }
            }
            // Only this wait is the client's doing: the idle clock runs during it alone.
            self.clock.start_waiting();
            let reserved = tokio::select! {
                biased;
                reserved = tx.reserve_many(2) => Some(reserved),
                _ = self.stop.cancelled() => None,
            };
            self.clock.stop_waiting();
            reserved
        });
        match reserved {
            None => Err(self.stopped()),
            Some(Err(_)) => Ok(false),
            Some(Ok(mut permits)) => match permits.next() {
                Some(permit) => {
                    permit.send(Ok(message));
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }

    /// The file no longer holds what was shared: ends the stream DATA_LOSS and has the store
    /// hash it again.
    fn changed(&self, why: &str) -> Status {
        tracing::warn!(file = %self.name, "{why}: not served any more; hashing it again");
        let manifest = &self.check.manifest;
        self.check
            .store
            .content_changed(&self.name, manifest.content_id());
        ServeError::ChangedOnDisk(self.name.clone()).into()
    }

    fn stream(&self, tx: &Sender) -> Result<(), Status> {
        let message_bytes = MAX_BLOCKS_PER_MESSAGE * BLOCK_SIZE as u64;
        let manifest = &self.check.manifest;
        let geometry = manifest.geometry();
        let mut offset = self.range.start;
        let mut block = self.first_block;
        // The piece being hashed, if the range holds all of it and it was not checked yet.
        let mut hashing: Option<PieceHasher> = None;
        while offset < self.range.end {
            if self.stop.is_cancelled() {
                return Err(self.stopped().into());
            }
            let end = self.range.end.min(offset + message_bytes);
            let buf = self.read(offset, end)?;
            // Check the pieces whose bytes this message holds: one that completes here goes out
            // only if it matches.
            let mut at = offset;
            while at < end {
                let piece = at / geometry.piece_size() as u64;
                let piece_bytes = geometry.piece_bytes(piece);
                let starts_here = at == piece_bytes.start;
                if starts_here
                    && piece_bytes.end <= self.range.end
                    && !self.check.checked.is_checked(piece)
                {
                    hashing = Some(PieceHasher::new(&geometry, piece));
                }
                let upto = piece_bytes.end.min(end);
                if let Some(hasher) = &mut hashing {
                    hasher.update(&buf[(at - offset) as usize..(upto - offset) as usize]);
                    if upto == piece_bytes.end {
                        if !hasher.matches(manifest) {
                            let why = format!("piece {piece} no longer matches what was shared");
                            return Err(self.changed(&why));
                        }
                        self.check.checked.checked(piece);
                        hashing = None;
                    }
                }
                at = upto;
            }
            offset = end;
            let len = buf.len() as u64;
            let message = pb::GetBlocksResponse {
                first_block: block,
                data: Bytes::from(buf),
            };
            if !self.send(tx, message)? {
                return Ok(()); // The client went away.
            }
            block += len / BLOCK_SIZE as u64;
            if let Some(slot) = &self.slot {
                slot.sent.fetch_add(len, Ordering::Relaxed);
                slot.total.fetch_add(len, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Reads `start..end` of the file into a new buffer, without zeroing it first (`pread`
    /// into the vector's spare capacity). A file shorter than shared is a changed file.
    fn read(&self, start: u64, end: u64) -> Result<Vec<u8>, Status> {
        let len = (end - start) as usize;
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = start + buf.len() as u64;
            match rustix::io::pread(&self.opened, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Err(self.changed("shorter than when it was shared")),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ServeError::Io(e.into()).into()),
            }
        }
        // The spare capacity may exceed what was asked for: never send more than the range.
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::verify::{manifest_with_pieces, pattern};
    use super::*;
    use crate::chunking::Manifest;
    use crate::peer::store::Store;
    use std::os::unix::fs::FileExt;
    use tokio::sync::Semaphore;

    /// A job streaming all of `data` as shared, from a file on disk holding `on_disk`.
    fn job(
        dir: &std::path::Path,
        data: &[u8],
        on_disk: &[u8],
        shutdown: CancellationToken,
    ) -> ReadJob {
        let path = dir.join("f");
        std::fs::write(&path, on_disk).unwrap();
        let (store, _) = Store::open(&dir.join("peer")).unwrap();
        let manifest = Arc::new(Manifest::of_bytes(data));
        job_over(
            &path,
            manifest,
            Arc::new(store),
            0..data.len() as u64,
            shutdown,
        )
    }

    /// A job streaming `range` of the file at `path`, shared as `manifest` by `store`.
    fn job_over(
        path: &std::path::Path,
        manifest: Arc<Manifest>,
        store: Arc<Store>,
        range: std::ops::Range<u64>,
        shutdown: CancellationToken,
    ) -> ReadJob {
        ReadJob {
            name: "f".into(),
            opened: std::fs::File::open(path).unwrap(),
            first_block: range.start / BLOCK_SIZE as u64,
            range,
            rate: None,
            idle_timeout: Duration::from_secs(30),
            clock: Arc::default(),
            stop: shutdown.child_token(),
            shutdown,
            runtime: tokio::runtime::Handle::current(),
            _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            slot: None,
            check: PieceCheck::new(
                manifest.clone(),
                store,
                CheckedFiles::default().of(
                    manifest.content_id(),
                    FileStamp::of(&std::fs::metadata(path).unwrap()),
                    manifest.geometry().piece_count(),
                ),
            ),
        }
    }

    /// The data a client received (from byte `start`) before the stream ended, and how it ended.
    fn split_end(
        all: Vec<Result<pb::GetBlocksResponse, Status>>,
        start: u64,
    ) -> (Vec<u8>, Option<Status>) {
        let mut data = Vec::new();
        let mut end = None;
        for item in all {
            match item {
                Ok(m) => {
                    let at = m.first_block * BLOCK_SIZE as u64;
                    assert_eq!(at, start + data.len() as u64);
                    data.extend_from_slice(&m.data);
                }
                Err(status) => end = Some(status),
            }
        }
        (data, end)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_piece_changed_in_place_is_never_sent_whole_and_the_store_hears_of_it() {
        // Pieces smaller than a message, and larger (sent in several messages).
        for piece_size in [65536u64, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = Store::open(dir.path()).unwrap();
            let store = Arc::new(store);
            let data = pattern(6 << 20);
            let path = store.files_dir().join("f");
            std::fs::write(&path, &data).unwrap();
            store.rescan().unwrap();
            let shared = store.get("f").unwrap();
            let manifest = Arc::new(manifest_with_pieces(&data, piece_size));
            assert_eq!(manifest.content_id(), shared.content_id());

            // Unchanged: every byte, in order.
            let all = received(job_over(
                &path,
                manifest.clone(),
                store.clone(),
                0..data.len() as u64,
                CancellationToken::new(),
            ))
            .await;
            let (sent, end) = split_end(all, 0);
            assert!(end.is_none(), "{end:?}");
            assert!(sent == data);

            // One byte of piece 3 changed in place.
            let bad = manifest.geometry().piece_bytes(3);
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&[data[bad.start as usize + 5] ^ 0xff], bad.start + 5)
                .unwrap();
            assert!(!store.has_suspects());
            let all = received(job_over(
                &path,
                manifest.clone(),
                store.clone(),
                0..data.len() as u64,
                CancellationToken::new(),
            ))
            .await;
            let (sent, end) = split_end(all, 0);
            assert_eq!(end.map(|s| s.code()), Some(tonic::Code::DataLoss));
            // Every message before the one that completes piece 3, and nothing after.
            let message = MAX_BLOCKS_PER_MESSAGE * BLOCK_SIZE as u64;
            assert_eq!(
                sent.len() as u64,
                (bad.end - 1) / message * message,
                "{piece_size}"
            );
            // What was sent is the file as it is now: whole pieces as shared, and at most the
            // start of the changed piece (the client cannot complete it).
            let whole = sent.len().min(bad.start as usize);
            assert!(sent[..whole] == data[..whole]);
            assert!(store.has_suspects());

            // The store hashes it again: new content, to be announced.
            let changes = store.rescan().unwrap();
            assert_eq!(changes.added.len(), 1);
            assert_ne!(changes.added[0].content_id(), shared.content_id());
            assert!(!store.has_suspects());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_cut_inside_pieces_are_served_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let data = pattern(3 << 20);
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let manifest = Arc::new(manifest_with_pieces(&data, 1 << 20));
        let range = 3 * 4096..(2 << 20) + 5 * 4096;
        let all = received(job_over(
            &path,
            manifest,
            Arc::new(store),
            range.clone(),
            CancellationToken::new(),
        ))
        .await;
        let mut got = vec![0u8; range.start as usize];
        let (sent, end) = split_end(all, range.start);
        assert!(end.is_none(), "{end:?}");
        got.extend_from_slice(&sent);
        assert_eq!(
            got[range.start as usize..],
            data[range.start as usize..range.end as usize]
        );
    }

    /// Runs `job` on a blocking thread and returns what its client receives, to the end.
    async fn received(job: ReadJob) -> Vec<Result<pb::GetBlocksResponse, Status>> {
        let (tx, mut rx) = mpsc::channel(super::super::READ_AHEAD_MESSAGES + 1);
        tokio::task::spawn_blocking(move || job.run(tx));
        let mut all = Vec::new();
        while let Some(item) = rx.recv().await {
            all.push(item);
        }
        all
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pieces_that_matched_are_recorded_and_not_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let store = Arc::new(store);
        let data = pattern(1 << 20);
        let path = store.files_dir().join("f");
        std::fs::write(&path, &data).unwrap();
        store.rescan().unwrap();
        let manifest = Arc::new(manifest_with_pieces(&data, 65536));
        let pieces = manifest.geometry().piece_count();
        let stamp = FileStamp::of(&std::fs::metadata(&path).unwrap());
        let checked = CheckedFiles::default().of(manifest.content_id(), stamp, pieces);
        let with = |checked: &Arc<super::verify::CheckedPieces>| {
            let mut job = job_over(
                &path,
                manifest.clone(),
                store.clone(),
                0..data.len() as u64,
                CancellationToken::new(),
            );
            job.check = PieceCheck::new(manifest.clone(), store.clone(), checked.clone());
            job
        };
        // A whole stream checks, and records, every piece.
        let (sent, end) = split_end(received(with(&checked)).await, 0);
        assert!(end.is_none() && sent == data, "{end:?}");
        assert!((0..pieces).all(|p| checked.is_checked(p)));
        // A change the record does not show (the same record kept, as within one clock tick) is
        // not looked for: the pieces are served unhashed. (Any real change moves the stamp, and
        // `CheckedFiles::of` then starts a fresh record: see the verify tests.)
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[data[70_000] ^ 0xff], 70_000).unwrap();
        let (sent, end) = split_end(received(with(&checked)).await, 0);
        assert!(end.is_none(), "{end:?}");
        assert_eq!(sent[70_000], data[70_000] ^ 0xff);
        // With a fresh record the same stream ends DATA_LOSS before piece 1 goes out whole.
        let fresh = CheckedFiles::default().of(manifest.content_id(), stamp, pieces);
        let (_, end) = split_end(received(with(&fresh)).await, 0);
        assert_eq!(end.map(|s| s.code()), Some(tonic::Code::DataLoss));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_shorter_than_shared_ends_the_stream_with_data_loss() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 300 * 1024];
        let all = received(job(
            dir.path(),
            &data,
            &data[..100 * 1024],
            CancellationToken::new(),
        ))
        .await;
        let (last, before) = all.split_last().unwrap();
        assert!(
            before.is_empty(),
            "the first message already runs past the end"
        );
        let status = last.as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_ends_a_stream_waiting_on_its_client_with_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 64 << 20];
        let shutdown = CancellationToken::new();
        let job = job(dir.path(), &data, &data, shutdown.clone());
        let (tx, mut rx) = mpsc::channel(super::super::READ_AHEAD_MESSAGES + 1);
        let reader = tokio::task::spawn_blocking(move || job.run(tx));
        // The client takes one message and stops reading; the reader fills the read-ahead.
        assert!(rx.recv().await.unwrap().is_ok());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .expect("the reader stops at once")
            .unwrap();
        let mut last = None;
        while let Some(item) = rx.recv().await {
            last = Some(item);
        }
        let status = last.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_ends_a_stream_waiting_for_upload_budget() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 4 << 20];
        let shutdown = CancellationToken::new();
        let mut job = job(dir.path(), &data, &data, shutdown.clone());
        // 1 KiB/s: after the first message (the burst), the next is minutes away.
        job.rate = Some(Arc::new(RateLimiter::new(1024)));
        let (tx, mut rx) = mpsc::channel(super::super::READ_AHEAD_MESSAGES + 1);
        let reader = tokio::task::spawn_blocking(move || job.run(tx));
        assert!(rx.recv().await.unwrap().is_ok());
        shutdown.cancel();
        let next = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("the stream ends at once");
        let status = next.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        reader.await.unwrap();
    }
}
