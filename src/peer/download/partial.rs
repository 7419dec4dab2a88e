//! A download's partial file under `.p2pshare/partial/` (never in `files/`) and its record of
//! verified pieces, and the claims that keep two concurrent downloads of one content from sharing
//! a partial file.
//!
//! A resumable partial is `<content id>.part` (the file, at its full size, pieces written at their
//! offsets) beside `<content id>.done` (one byte per piece, 1 = verified). The record is trusted
//! for nothing: on a resume each piece it claims is hashed again before it counts.

use crate::chunking::{ContentId, Manifest};
use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Content ids with a resumable download in progress in this process: a second concurrent `get`
/// of the same content uses its own scratch partial file instead of sharing one.
#[derive(Debug, Default)]
pub(crate) struct ActiveDownloads(Mutex<HashSet<ContentId>>);

/// The right to use a content id's resumable partial file, until dropped.
pub(super) struct Claim<'a> {
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
    /// Claims `id`'s resumable partial file; None if another download in this process has it.
    pub(super) fn claim(&self, id: ContentId) -> Option<Claim<'_>> {
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
pub(super) struct Partial {
    pub(super) path: PathBuf,
    /// `<content id>.done`: one byte per piece, 1 = verified. None for scratch downloads.
    pub(super) record: Option<PathBuf>,
    pub(super) file: std::fs::File,
}

impl Partial {
    /// Opens the resumable partial file for `manifest` (or a fresh scratch one) and returns it
    /// with the pieces already verified in it. Blocking (a resume hashes what it keeps). `None`
    /// if `cancel` fired while the recorded pieces were being checked: the record is left as it
    /// was, so nothing already verified is forgotten.
    pub(super) fn open(
        dir: &Path,
        manifest: &Manifest,
        resumable: bool,
        cancel: &CancellationToken,
    ) -> std::io::Result<Option<(Self, Vec<bool>)>> {
        let size = manifest.geometry().size();
        let pieces = manifest.geometry().piece_count() as usize;
        if !resumable {
            let tmp = tempfile::Builder::new()
                .prefix(&format!("{}.", manifest.content_id().short()))
                .suffix(".tmp")
                .tempfile_in(dir)?;
            let (file, path) = tmp.keep().map_err(|e| e.error)?;
            file.set_len(size)?;
            let partial = Partial {
                path,
                record: None,
                file,
            };
            return Ok(Some((partial, vec![false; pieces])));
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
                    if cancel.is_cancelled() {
                        return Ok(None);
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
        let partial = Partial {
            path,
            record: Some(record),
            file,
        };
        Ok(Some((partial, done)))
    }

    /// True if a later download can resume from this partial file.
    pub(super) fn is_resumable(&self) -> bool {
        self.record.is_some()
    }

    /// Saves the record of verified pieces (atomically: a crash leaves the old or the new one).
    pub(super) fn save_record(&self, done: &[bool]) {
        let Some(record) = &self.record else { return };
        let bytes: Vec<u8> = done.iter().map(|&d| d as u8).collect();
        let tmp = record.with_extension("done.tmp");
        let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, record));
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not save download progress");
        }
    }

    /// Deletes the partial file and its record.
    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
        }
    }

    /// Deletes a scratch partial, which no later download could resume from; keeps a resumable
    /// one.
    pub(super) fn remove_unless_resumable(&self) {
        if !self.is_resumable() {
            self.remove();
        }
    }
}
