//! What a `GetBlocks` stream checks its reads against ([`PieceCheck`]), the hash of a piece
//! computed as its bytes are read ([`crate::chunking::PieceHasher`]), and the pieces already checked since the file
//! last changed ([`CheckedPieces`]). See the parent module for how the reader uses them.

use crate::chunking::{ContentId, Manifest, PieceIndex};
use crate::peer::store::Store;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A piece checked once is not hashed again while the file is unchanged, for this long at most
/// (a bound on what a change the file's stamp cannot show, such as one within the same clock
/// tick as the last check, can go unnoticed).
const RECHECK_AFTER: Duration = Duration::from_secs(60);
/// Files whose checked pieces are remembered (past that, the oldest is forgotten).
const MAX_CHECKED_FILES: usize = 1024;

/// What identifies the bytes of a file on disk: any write changes the change time (`ctime`),
/// which, unlike the modification time, no one can set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of an opened file's metadata.
    pub(crate) fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The pieces of one file found to match its manifest, while the file keeps one stamp.
pub(crate) struct CheckedPieces {
    stamp: FileStamp,
    since: Instant,
    pieces: Box<[AtomicBool]>,
}

impl CheckedPieces {
    fn new(stamp: FileStamp, pieces: u64) -> Self {
        CheckedPieces {
            stamp,
            since: Instant::now(),
            pieces: (0..pieces).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// True if `piece` was checked (and matched) since the file last changed.
    pub(super) fn is_checked(&self, piece: PieceIndex) -> bool {
        self.pieces
            .get(piece as usize)
            .is_some_and(|p| p.load(Ordering::Relaxed))
    }

    /// Records that `piece` matched.
    pub(super) fn checked(&self, piece: PieceIndex) {
        if let Some(p) = self.pieces.get(piece as usize) {
            p.store(true, Ordering::Relaxed);
        }
    }
}

/// The checked pieces of the files this peer serves, by content id (bounded).
#[derive(Default)]
pub(crate) struct CheckedFiles {
    files: Mutex<HashMap<ContentId, Arc<CheckedPieces>>>,
}

impl CheckedFiles {
    /// The checked pieces of the content `id`, as long as the file still has `stamp` (and the
    /// record is younger than [`RECHECK_AFTER`]); otherwise a fresh record with none checked.
    pub(crate) fn of(&self, id: ContentId, stamp: FileStamp, pieces: u64) -> Arc<CheckedPieces> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = files.get(&id) {
            if known.stamp == stamp && known.since.elapsed() < RECHECK_AFTER {
                return known.clone();
            }
        }
        if files.len() >= MAX_CHECKED_FILES && !files.contains_key(&id) {
            if let Some(oldest) = files.iter().min_by_key(|(_, c)| c.since).map(|(k, _)| *k) {
                files.remove(&oldest);
            }
        }
        let fresh = Arc::new(CheckedPieces::new(stamp, pieces));
        files.insert(id, fresh.clone());
        fresh
    }
}

/// What a stream checks its reads against, and whom it tells when the file no longer matches.
pub(crate) struct PieceCheck {
    /// The manifest the file was shared (or is being downloaded) with.
    pub(super) manifest: Arc<Manifest>,
    /// Told when a shared file no longer matches its manifest (it ignores names it does not share
    /// with this content, such as a download in progress).
    pub(super) store: Arc<Store>,
    /// Pieces already checked since the file last changed: not hashed again.
    pub(super) checked: Arc<CheckedPieces>,
}

impl PieceCheck {
    /// Checks reads against `manifest`, telling `store` of a mismatch; `checked` holds the pieces
    /// that need no check.
    pub(crate) fn new(
        manifest: Arc<Manifest>,
        store: Arc<Store>,
        checked: Arc<CheckedPieces>,
    ) -> Self {
        PieceCheck {
            manifest,
            store,
            checked,
        }
    }
}

/// The hash of one piece, computed as its bytes are read, in as many parts as they come.
#[cfg(test)]
/// Deterministic bytes that differ from piece to piece.
pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// The manifest of `data` with pieces of `piece_size` bytes (not the size `Geometry` picks).
#[cfg(test)]
pub(super) fn manifest_with_pieces(data: &[u8], piece_size: u64) -> Manifest {
    let geometry = crate::chunking::Geometry::new(data.len() as u64, piece_size).unwrap();
    let hashes = (0..geometry.piece_count())
        .map(|p| {
            let r = geometry.piece_bytes(p);
            let piece = &data[r.start as usize..r.end as usize];
            crate::chunking::piece_hash(&geometry, p, piece).to_vec()
        })
        .collect();
    Manifest::from_parts(crate::chunking::ContentId::of(data), geometry, hashes).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::PieceHasher;

    #[test]
    fn checked_pieces_last_while_the_file_keeps_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"one").unwrap();
        let stamp = |p: &std::path::Path| FileStamp::of(&std::fs::metadata(p).unwrap());
        let files = CheckedFiles::default();
        let id = ContentId::of(b"one");
        let first = files.of(id, stamp(&path), 4);
        assert!(!first.is_checked(2));
        first.checked(2);
        assert!(files.of(id, stamp(&path), 4).is_checked(2));
        // Rewritten with the same size and its mtime put back: the change time still moves.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        // File times come from a coarse clock (a tick of up to 10 ms): the rewrite must fall in
        // a later tick for its change time to differ, as any rewrite after a check does.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, b"two").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(!files.of(id, stamp(&path), 4).is_checked(2));
    }

    #[test]
    fn checked_files_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let stamp = FileStamp::of(&std::fs::metadata(&path).unwrap());
        let files = CheckedFiles::default();
        for i in 0..MAX_CHECKED_FILES + 10 {
            files.of(ContentId::of(&i.to_le_bytes()), stamp, 1);
        }
        assert_eq!(files.files.lock().unwrap().len(), MAX_CHECKED_FILES);
    }

    #[test]
    fn the_piece_hasher_agrees_with_the_manifest_however_the_bytes_come() {
        for (size, piece_size) in [
            (1, 65536),
            (65536, 65536),
            (65537, 65536),
            (3 * 65536 + 5, 65536),
            (5 << 20, 1 << 20),
            ((3 << 20) + 4097, 1 << 20),
        ] {
            let data = pattern(size);
            let manifest = manifest_with_pieces(&data, piece_size);
            let g = manifest.geometry();
            for piece in 0..g.piece_count() {
                let r = g.piece_bytes(piece);
                let bytes = &data[r.start as usize..r.end as usize];
                for step in [1000, 4096, 262_144, usize::MAX] {
                    let mut hasher = PieceHasher::new(&g, piece);
                    for part in bytes.chunks(step.min(bytes.len()).max(1)) {
                        hasher.update(part);
                    }
                    assert!(hasher.matches(&manifest), "{size} {piece} {step}");
                }
                let mut changed = bytes.to_vec();
                changed[bytes.len() / 2] ^= 1;
                let mut hasher = PieceHasher::new(&g, piece);
                hasher.update(&changed);
                assert!(!hasher.matches(&manifest), "{size} {piece}");
            }
        }
    }
}
