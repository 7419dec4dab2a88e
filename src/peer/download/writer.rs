//! Where a download's pieces go: long-lived writer threads per download verify each piece and
//! write it at its offset, straight to the disk when they can, so that the file is durable soon
//! after its last piece and the final fsync has little left to do.
//!
//! * **Threads, not a task per piece.** A 1 GiB download is 4096 pieces; a blocking task per
//!   piece paid a hand-off, a file-descriptor clone and, with pieces from several holders written
//!   at once, contention on the inode's write lock. [`WRITER_THREADS`] threads take pieces from
//!   one queue: one verifies and copies while the other writes.
//! * **Direct I/O for durable downloads.** The file is opened a second time with `O_DIRECT` and
//!   whole pieces (their sizes and offsets are multiples of 4 KiB) are written from an aligned
//!   buffer: no copy into the page cache (the largest CPU cost of a download: about 0.8 s per
//!   GiB on the reference machine), and the disk writes while data arrives instead of after.
//!   Measured there: `dd oflag=direct bs=256K` wrote 1.1-1.3 GB/s where a buffered write plus
//!   fdatasync managed 0.3-0.65 GB/s.
//! * **Otherwise, writeback as pieces land.** Where the file cannot be opened with `O_DIRECT`
//!   (some file systems), pieces are written through the page cache and, each
//!   time [`WRITEBACK_CHUNK`] such bytes are written, the writeback thread runs `fdatasync` while
//!   the pieces keep landing. Dirty data is bounded: when [`MAX_UNSYNCED`] bytes wait behind a
//!   running sync, the writers wait for it (the download slows to the disk's speed instead of
//!   piling up the page cache). `sync_file_range` would do it per range, but needs `unsafe` FFI.
//!
//! An error of a background sync is kept and returned by the next write and by
//! [`PieceWriter::writeback_error`]: on Linux a failed writeback is reported once per open file,
//! so the final fsync alone could miss it. Scratch downloads that are not durable
//! ([`super::Destination::ScratchNoSync`]) write through the page cache and never sync.

use crate::chunking::{Manifest, PieceIndex};
use crate::grpc::Rope;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Threads verifying and writing the pieces of one download.
const WRITER_THREADS: usize = 2;
/// Alignment of direct writes: memory, offset and length (the largest logical block size).
const ALIGN: usize = 4096;

/// Bytes written between two background syncs.
const WRITEBACK_CHUNK: u64 = 16 * 1024 * 1024;
/// Bytes written and not yet handed to a sync past which the writer waits for the running sync.
const MAX_UNSYNCED: u64 = 4 * WRITEBACK_CHUNK;
/// Pieces queued for the writer; past that, the sessions wait (backpressure on the streams).
const QUEUE: usize = 8;

/// Why a piece was not written.
#[derive(Debug)]
pub(super) enum PieceFailure {
    /// The data does not hash to the piece's hash.
    Corrupt,
    /// Writing (or an earlier background sync) failed.
    Local(io::Error),
}

/// A piece for the writer.
struct Job {
    piece: PieceIndex,
    offset: u64,
    data: Rope,
    done: oneshot::Sender<Result<(), PieceFailure>>,
}

/// The verify-and-write threads of one download (and its writeback thread, if durable).
/// Dropping it lets the threads end once the queued pieces are written; nothing waits for them.
pub(super) struct PieceWriter {
    route: Route,
    writeback: Option<Arc<Writeback>>,
}

/// Where submitted pieces go.
enum Route {
    /// The writer threads' queue.
    Threads(mpsc::Sender<Job>),
    /// A file of one piece: its piece is verified and written on a blocking task. Two threads
    /// and a second (direct) opening of the file cost more than such a piece (at most 64 KiB):
    /// measured, they were a fifth of a small `get`'s CPU. The final fsync makes it durable.
    Inline(Arc<Sink>),
}

impl PieceWriter {
    /// Starts the threads writing the pieces of `manifest` into `file` (at `path`). A `durable`
    /// download writes with direct I/O where the file system allows it, else through the page
    /// cache with background writeback.
    pub(super) fn start(
        manifest: Arc<Manifest>,
        file: &std::fs::File,
        path: &Path,
        durable: bool,
    ) -> io::Result<PieceWriter> {
        if manifest.geometry().piece_count() <= 1 {
            return Ok(PieceWriter {
                route: Route::Inline(Sink::new(manifest, file, None, None)?),
                writeback: None,
            });
        }
        let direct = if durable { open_direct(path) } else { None };
        Self::start_with(manifest, file, direct, durable)
    }

    /// As [`PieceWriter::start`], with the direct file (if any) already opened.
    fn start_with(
        manifest: Arc<Manifest>,
        file: &std::fs::File,
        direct: Option<std::fs::File>,
        durable: bool,
    ) -> io::Result<PieceWriter> {
        // With direct I/O only a last piece of odd length goes through the page cache, and the
        // final fsync takes it: the writeback thread is for where direct I/O is refused.
        let writeback = if durable && direct.is_none() {
            let wb = Arc::new(Writeback::default());
            let sync_file = file.try_clone()?;
            let thread_wb = wb.clone();
            std::thread::Builder::new()
                .name("p2pshare-writeback".into())
                .spawn(move || thread_wb.run(&sync_file))?;
            Some(wb)
        } else {
            None
        };
        let sink = Sink::new(manifest, file, direct, writeback.clone())?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..WRITER_THREADS {
            let (sink, queue) = (sink.clone(), queue.clone());
            std::thread::Builder::new()
                .name("p2pshare-writer".into())
                .spawn(move || write_loop(&queue, &sink))?;
        }
        Ok(PieceWriter {
            route: Route::Threads(jobs),
            writeback,
        })
    }

    /// Queues `data` (piece `piece`, at `offset`) for verification and writing, waiting while
    /// the queue is full; the returned [`Written`] resolves when it is written, or says why not.
    pub(super) async fn submit(
        &self,
        piece: PieceIndex,
        offset: u64,
        data: Rope,
    ) -> Result<Written, PieceFailure> {
        let (done, result) = oneshot::channel();
        match &self.route {
            Route::Threads(jobs) => {
                let job = Job {
                    piece,
                    offset,
                    data,
                    done,
                };
                jobs.send(job).await.map_err(|_| writer_gone())?;
            }
            Route::Inline(sink) => {
                let sink = sink.clone();
                tokio::task::spawn_blocking(move || {
                    let written = sink.verify_and_write(piece, &data, offset, &mut Vec::new());
                    let _ = done.send(written);
                });
            }
        }
        Ok(Written(result))
    }

    /// The first error of a background sync, if one failed.
    pub(super) fn writeback_error(&self) -> Option<io::Error> {
        self.writeback.as_ref().and_then(|wb| wb.lock().error())
    }
}

/// A piece queued for the writer.
pub(super) struct Written(oneshot::Receiver<Result<(), PieceFailure>>);

impl Written {
    /// Waits until the piece is verified and written.
    pub(super) async fn wait(self) -> Result<(), PieceFailure> {
        self.0.await.map_err(|_| writer_gone())?
    }
}

fn writer_gone() -> PieceFailure {
    PieceFailure::Local(io::Error::other("the download's writer stopped"))
}

impl Drop for PieceWriter {
    fn drop(&mut self) {
        if let Some(wb) = &self.writeback {
            wb.lock().closed = true;
            wb.changed.notify_all();
        }
    }
}

/// The file opened for direct I/O, or none where the file system refuses it.
fn open_direct(path: &Path) -> Option<std::fs::File> {
    let direct = rustix::fs::OFlags::DIRECT.bits() as i32;
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(direct)
        .open(path)
    {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::debug!(error = %e, "no direct I/O here; writing through the page cache");
            None
        }
    }
}

/// What the writer threads share.
struct Sink {
    manifest: Arc<Manifest>,
    /// The file, through the page cache.
    buffered: std::fs::File,
    /// The file with `O_DIRECT`, if the file system allows it.
    direct: Option<std::fs::File>,
    /// A direct write was refused (EINVAL): every piece goes through the page cache from then on
    /// (without background writeback: the final fsync does it).
    direct_refused: AtomicBool,
    writeback: Option<Arc<Writeback>>,
}

impl Sink {
    fn new(
        manifest: Arc<Manifest>,
        file: &std::fs::File,
        direct: Option<std::fs::File>,
        writeback: Option<Arc<Writeback>>,
    ) -> io::Result<Arc<Sink>> {
        Ok(Arc::new(Sink {
            manifest,
            buffered: file.try_clone()?,
            direct,
            direct_refused: AtomicBool::new(false),
            writeback,
        }))
    }

    /// Verifies piece `piece` and writes it at `offset`: directly if it can (copied into
    /// `aligned`, the thread's own buffer, and verified there: one pass over contiguous
    /// memory), else through the page cache (counted for the writeback).
    fn verify_and_write(
        &self,
        piece: PieceIndex,
        data: &Rope,
        offset: u64,
        aligned: &mut Vec<u8>,
    ) -> Result<(), PieceFailure> {
        let mut verified = false;
        if let Some(direct) = self.direct_target(data.len(), offset) {
            if let Some(buf) = aligned_slice(aligned, data.len()) {
                data.copy_into(buf);
                if !self.manifest.verify_piece(piece, buf) {
                    return Err(PieceFailure::Corrupt);
                }
                verified = true;
                match direct.write_all_at(buf, offset) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                        tracing::debug!(error = %e, "direct write refused; writing through the page cache");
                        self.direct_refused.store(true, Ordering::Relaxed);
                    }
                    Err(e) => return Err(PieceFailure::Local(e)),
                }
            }
        }
        if !verified && !self.manifest.verify_piece_parts(piece, data.chunks()) {
            return Err(PieceFailure::Corrupt);
        }
        let mut at = offset;
        for chunk in data.chunks() {
            self.buffered
                .write_all_at(chunk, at)
                .map_err(PieceFailure::Local)?;
            at += chunk.len() as u64;
        }
        match &self.writeback {
            Some(wb) => wb.written(data.len() as u64).map_err(PieceFailure::Local),
            None => Ok(()),
        }
    }

    /// The direct file, if a write of `len` bytes at `offset` may go there.
    fn direct_target(&self, len: usize, offset: u64) -> Option<&std::fs::File> {
        let aligned = len.is_multiple_of(ALIGN) && offset.is_multiple_of(ALIGN as u64);
        if !aligned || self.direct_refused.load(Ordering::Relaxed) {
            return None;
        }
        self.direct.as_ref()
    }
}

/// `len` bytes of `buf` starting at an address aligned to [`ALIGN`] (growing `buf` if needed).
fn aligned_slice(buf: &mut Vec<u8>, len: usize) -> Option<&mut [u8]> {
    if buf.len() < len + ALIGN {
        *buf = vec![0; len + ALIGN];
    }
    let skip = buf.as_ptr().align_offset(ALIGN);
    buf.get_mut(skip..skip.checked_add(len)?)
}

/// A writer thread: take a piece, verify it, write it; until the queue closes.
fn write_loop(queue: &Mutex<mpsc::Receiver<Job>>, sink: &Sink) {
    let mut aligned = Vec::new();
    loop {
        // The lock is held while waiting: the other thread is busy with a piece or waits here.
        let job = queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocking_recv();
        let Some(job) = job else { return };
        let result = sink.verify_and_write(job.piece, &job.data, job.offset, &mut aligned);
        // The session may have stopped waiting (cancelled): the piece is on disk either way.
        let _ = job.done.send(result);
    }
}

/// State shared by the writer and the writeback thread.
#[derive(Default)]
struct Writeback {
    state: Mutex<WritebackState>,
    /// Signalled when a sync is requested or ends, or the writer closes.
    changed: Condvar,
}

#[derive(Default)]
struct WritebackState {
    /// Bytes written since the last sync was requested.
    unsynced: u64,
    /// A sync is requested or running.
    syncing: bool,
    /// The writer is gone: the writeback thread ends after its running sync.
    closed: bool,
    /// The first failure of a background sync (kind and text: `io::Error` is not `Clone`).
    failed: Option<(io::ErrorKind, String)>,
}

impl WritebackState {
    fn error(&self) -> Option<io::Error> {
        self.failed
            .as_ref()
            .map(|(kind, text)| io::Error::new(*kind, format!("background sync: {text}")))
    }
}

impl Writeback {
    fn lock(&self) -> std::sync::MutexGuard<'_, WritebackState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `len` bytes written; requests a sync every [`WRITEBACK_CHUNK`], and waits while
    /// [`MAX_UNSYNCED`] bytes wait behind a running sync.
    fn written(&self, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        state.unsynced += len;
        loop {
            if let Some(e) = state.error() {
                return Err(e);
            }
            if state.unsynced >= WRITEBACK_CHUNK && !state.syncing {
                state.syncing = true;
                state.unsynced = 0;
                self.changed.notify_all();
            }
            // Not waiting: under the bound, or no sync running (then under a chunk).
            if !state.syncing || state.unsynced < MAX_UNSYNCED {
                return Ok(());
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The writeback thread: runs a sync whenever one is requested, until the writer closes.
    fn run(&self, file: &std::fs::File) {
        let mut state = self.lock();
        loop {
            while !state.syncing && !state.closed {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if !state.syncing {
                return; // closed, nothing requested
            }
            drop(state);
            let result = file.sync_data();
            state = self.lock();
            state.syncing = false;
            if let Err(e) = result {
                tracing::warn!(error = %e, "background sync of a download failed");
                state.failed.get_or_insert((e.kind(), e.to_string()));
            }
            self.changed.notify_all();
            if state.closed {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::Manifest;
    use bytes::Bytes;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// How a test writer writes.
    #[derive(Clone, Copy)]
    enum Mode {
        /// Page cache, never synced.
        Volatile,
        /// Direct I/O where the file system allows it (the temporary directory's).
        Durable,
        /// Page cache with the background writeback (as where direct I/O is refused).
        DurableBuffered,
    }

    fn run_writes(mode: Mode) {
        let bytes = data(3 * 64 * 1024 + 1000);
        let manifest = Arc::new(Manifest::from_reader(&bytes[..], bytes.len() as u64).unwrap());
        let geometry = manifest.geometry();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.set_len(bytes.len() as u64).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let writer = match mode {
                Mode::Volatile => PieceWriter::start(manifest.clone(), &file, &path, false),
                Mode::Durable => PieceWriter::start(manifest.clone(), &file, &path, true),
                Mode::DurableBuffered => {
                    PieceWriter::start_with(manifest.clone(), &file, None, true)
                }
            }
            .unwrap();
            assert_eq!(
                writer.writeback.is_some(),
                matches!(mode, Mode::DurableBuffered)
                    || (matches!(mode, Mode::Durable) && open_direct(&path).is_none()),
                "a writeback thread exactly where durable pieces go through the page cache"
            );
            // Out of order, as several holders deliver them.
            for piece in (0..geometry.piece_count()).rev() {
                let range = geometry.piece_bytes(piece);
                // Each piece in two slices, as a piece straddling two messages arrives.
                let (start, end) = (range.start as usize, range.end as usize);
                let middle = start + (end - start) / 3;
                let mut slice = Rope::from(Bytes::copy_from_slice(&bytes[start..middle]));
                slice.push(Bytes::copy_from_slice(&bytes[middle..end]));
                writer
                    .submit(piece, range.start, slice)
                    .await
                    .unwrap()
                    .wait()
                    .await
                    .unwrap();
            }
            // A corrupt piece is refused and not written.
            let range = geometry.piece_bytes(1);
            let mut wrong = bytes[range.start as usize..range.end as usize].to_vec();
            wrong[5] ^= 1;
            let queued = writer
                .submit(1, range.start, Rope::from(Bytes::from(wrong)))
                .await
                .unwrap();
            match queued.wait().await {
                Err(PieceFailure::Corrupt) => {}
                other => panic!("expected Corrupt, got {other:?}"),
            }
            assert!(writer.writeback_error().is_none());
        });
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn pieces_written_in_any_order_make_the_file() {
        run_writes(Mode::Volatile);
        run_writes(Mode::Durable);
        run_writes(Mode::DurableBuffered);
    }

    #[test]
    fn a_file_of_one_piece_is_written_without_threads() {
        let bytes = data(5000);
        let manifest = Arc::new(Manifest::from_reader(&bytes[..], bytes.len() as u64).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(bytes.len() as u64).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let writer = PieceWriter::start(manifest, &file, &path, true).unwrap();
            assert!(matches!(writer.route, Route::Inline(_)));
            let mut wrong = bytes.clone();
            wrong[0] ^= 1;
            let corrupt = writer.submit(0, 0, Rope::from(Bytes::from(wrong))).await;
            assert!(matches!(
                corrupt.unwrap().wait().await,
                Err(PieceFailure::Corrupt)
            ));
            let mut halves = Rope::from(Bytes::copy_from_slice(&bytes[..100]));
            halves.push(Bytes::copy_from_slice(&bytes[100..]));
            writer
                .submit(0, 0, halves)
                .await
                .unwrap()
                .wait()
                .await
                .unwrap();
        });
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn writeback_syncs_every_chunk_and_bounds_what_waits() {
        let wb = Arc::new(Writeback::default());
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let thread_wb = wb.clone();
        let thread = std::thread::spawn(move || thread_wb.run(&file));
        wb.written(WRITEBACK_CHUNK - 1).unwrap();
        assert!(!wb.lock().syncing, "no sync before a chunk is written");
        wb.written(1).unwrap();
        // A sync was requested (it may already have ended); the count restarted.
        assert_eq!(wb.lock().unsynced, 0);
        // However fast the writes, what waits behind a running sync stays under the bound.
        for _ in 0..64 {
            wb.written(WRITEBACK_CHUNK / 2).unwrap();
            assert!(wb.lock().unsynced < MAX_UNSYNCED);
        }
        wb.lock().closed = true;
        wb.changed.notify_all();
        thread.join().unwrap();
    }

    #[test]
    fn a_failed_background_sync_fails_the_next_write() {
        let wb = Writeback::default();
        wb.lock().failed = Some((io::ErrorKind::StorageFull, "no space".into()));
        let e = wb.written(1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(e.to_string().contains("no space"), "{e}");
    }
}
