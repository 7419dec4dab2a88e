//! Where a download's pieces go: one long-lived writer thread per download verifies each piece
//! and writes it at its offset, and (for a durable download) a writeback thread makes what was
//! written durable while the download runs, so the final fsync has little left to do.
//!
//! Why a thread of its own rather than a blocking task per piece: a 1 GiB download is 4096
//! pieces, and a task per piece paid a hand-off, a file-descriptor clone and, with pieces from
//! several holders written at once, contention on the inode's write lock (ext4 serialises
//! buffered writes to one file). One writer writes in arrival order without contention and keeps
//! its `File`.
//!
//! Why a background `fdatasync` rather than one at the end: the disk sat idle while data arrived
//! and the network sat idle while the disk wrote (the final fsync of 1 GiB took 0.5-1.5 s). Each
//! time [`WRITEBACK_CHUNK`] bytes have been written, the writeback thread runs `fdatasync` on the
//! file (the pieces keep landing meanwhile). Dirty data is bounded: when [`MAX_UNSYNCED`] bytes
//! are written and not yet being synced while a sync runs, the writer waits for it, which slows
//! the download to the disk's speed instead of piling up the page cache. `sync_file_range` would
//! do the same per range, but needs `unsafe` FFI; `fdatasync` is in std and, on a preallocated
//! file, costs a journal commit per chunk.
//!
//! An error of a background sync is kept and returned by the next write and by
//! [`PieceWriter::writeback_error`]: on Linux a failed writeback is reported once per open file,
//! so the final fsync alone could miss it.

use crate::chunking::{Manifest, PieceIndex};
use bytes::Bytes;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{mpsc, oneshot};

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
    data: Bytes,
    done: oneshot::Sender<Result<(), PieceFailure>>,
}

/// The verify-and-write thread of one download (and its writeback thread, if durable). Dropping
/// it lets both threads end once the queued pieces are written; nothing waits for them.
pub(super) struct PieceWriter {
    jobs: mpsc::Sender<Job>,
    writeback: Option<Arc<Writeback>>,
}

impl PieceWriter {
    /// Starts the threads writing into `file` the pieces of `manifest`; `durable` adds the
    /// background writeback.
    pub(super) fn start(
        manifest: Arc<Manifest>,
        file: &std::fs::File,
        durable: bool,
    ) -> io::Result<PieceWriter> {
        let writeback = if durable {
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
        let (jobs, queue) = mpsc::channel(QUEUE);
        let file = file.try_clone()?;
        let thread_wb = writeback.clone();
        std::thread::Builder::new()
            .name("p2pshare-writer".into())
            .spawn(move || write_loop(queue, &manifest, &file, thread_wb.as_deref()))?;
        Ok(PieceWriter { jobs, writeback })
    }

    /// Queues `data` (piece `piece`, at `offset`) for verification and writing, waiting while
    /// the queue is full; the returned [`Written`] resolves when it is written, or says why not.
    pub(super) async fn submit(
        &self,
        piece: PieceIndex,
        offset: u64,
        data: Bytes,
    ) -> Result<Written, PieceFailure> {
        let (done, result) = oneshot::channel();
        let job = Job {
            piece,
            offset,
            data,
            done,
        };
        self.jobs.send(job).await.map_err(|_| writer_gone())?;
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

/// The writer thread: verify, write, count the bytes for the writeback.
fn write_loop(
    mut queue: mpsc::Receiver<Job>,
    manifest: &Manifest,
    file: &std::fs::File,
    writeback: Option<&Writeback>,
) {
    while let Some(job) = queue.blocking_recv() {
        let result = if !manifest.verify_piece(job.piece, &job.data) {
            Err(PieceFailure::Corrupt)
        } else {
            file.write_all_at(&job.data, job.offset)
                .and_then(|()| match writeback {
                    Some(wb) => wb.written(job.data.len() as u64),
                    None => Ok(()),
                })
                .map_err(PieceFailure::Local)
        };
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

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    fn run_writes(durable: bool) {
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
            let writer = PieceWriter::start(manifest.clone(), &file, durable).unwrap();
            // Out of order, as several holders deliver them.
            for piece in (0..geometry.piece_count()).rev() {
                let range = geometry.piece_bytes(piece);
                let slice =
                    Bytes::copy_from_slice(&bytes[range.start as usize..range.end as usize]);
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
                .submit(1, range.start, Bytes::from(wrong))
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
        run_writes(false);
        run_writes(true);
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
