//! A download's partial file under `.p2pshare/partial/` (never in `files/`) and its record of
//! verified pieces, and the claims that keep two concurrent downloads of one content from sharing
//! a partial file.
//!
//! A resumable partial is `<content id>.part` (the file, at its full size, pieces written at their
//! offsets) beside `<content id>.done` (one byte per piece, 1 = verified). The record is trusted
//! for nothing: on a resume each piece it claims is hashed again before it counts.
//!
//! Disk space, so that a full disk loses nothing and wastes nothing:
//! * The partial file is reserved at its full size when it is opened (`fallocate`): a disk too
//!   small is found before anything is fetched, and the download's writes need no new space.
//! * The record is created at its full size together with the partial file and rewritten in
//!   place, so saving progress never needs new space (no `.done.tmp` beside it).
//! * A download that stops short keeps its verified pieces and gives back the space of the others
//!   (holes punched), so a stopped download holds only what it verified; one with nothing verified
//!   leaves nothing behind.
//! * On a filesystem without `fallocate` (ext2, some network and FUSE filesystems) the file stays
//!   sparse and a full disk shows up as a failed write instead, handled the same way.
//!
//! A fresh download of a file of one piece (a small file) starts *unnamed* (`O_TMPFILE`): nothing
//! appears in `partial/` at all, and when it is complete the store links it straight into
//! `files/` (`linkat` through `/proc/self/fd`). That spares each small `get` a name created and
//! removed in `partial/`, and with it that directory's lock, which concurrent small downloads
//! otherwise queue on while the file system allocates each new inode. If such a download stops
//! with its piece verified, the piece is kept as `<content id>.part` (linked in then), exactly as
//! a named one would be; one that stops earlier, or a crash, leaves nothing (at most one piece,
//! which a file of one piece never exceeds, to fetch again). Where `O_TMPFILE` or `/proc` is
//! missing, the partial file is named from the start.

use super::request::{is_disk_full, Kept};
use crate::chunking::{ContentId, Geometry, Manifest, MIN_PIECE_SIZE};
use rustix::fs::FallocateFlags;
use std::collections::HashSet;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
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

/// Why a partial file could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    /// No room to reserve the file or create its record. What was there before is kept (the
    /// verified pieces of an earlier attempt); nothing new is left behind.
    #[error("no space to reserve the partial file: {source}")]
    NoSpace {
        /// The system's error.
        source: io::Error,
        /// Bytes not yet stored.
        needed: u64,
        /// Bytes free on the disk, when known.
        free: Option<u64>,
        /// What is on disk now.
        kept: Kept,
    },
    /// Any other local error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The record of verified pieces: its path and the file, open for rewriting in place.
struct Record {
    path: PathBuf,
    file: std::fs::File,
}

/// The partial file of a download and its record of verified pieces.
pub(super) struct Partial {
    pub(super) path: PathBuf,
    /// `<content id>.done`: one byte per piece, 1 = verified. None for scratch downloads, and
    /// for files of one piece (the piece itself says whether it is there: it is hashed on a
    /// resume), which saves a file per small download.
    record: Option<Record>,
    /// A later download can resume from this file (false for scratch downloads).
    resumable: bool,
    /// The file has no name yet (`O_TMPFILE`): `path` is where it goes if it is kept for a
    /// resume, and nothing is there to remove.
    unnamed: AtomicBool,
    pub(super) file: std::fs::File,
    geometry: Geometry,
}

impl Partial {
    /// Opens the resumable partial file for `manifest` (or a fresh scratch one), reserves its
    /// space, and returns it with the pieces already verified in it. Blocking (a resume hashes
    /// what it keeps). `None` if `cancel` fired while the recorded pieces were being checked: the
    /// record is left as it was, so nothing already verified is forgotten.
    #[cfg(test)]
    pub(super) fn open(
        dir: &Path,
        manifest: &Manifest,
        resumable: bool,
        cancel: &CancellationToken,
    ) -> Result<Option<(Self, Vec<bool>)>, OpenError> {
        Self::open_prepared(dir, manifest, resumable, cancel, None)
    }

    /// [`Partial::open`], taking over what [`Early::prepare`] made (if anything, and if it fits:
    /// else it is dropped).
    pub(super) fn open_prepared(
        dir: &Path,
        manifest: &Manifest,
        resumable: bool,
        cancel: &CancellationToken,
        early: Option<Early>,
    ) -> Result<Option<(Self, Vec<bool>)>, OpenError> {
        let geometry = manifest.geometry();
        let size = geometry.size();
        let pieces = geometry.piece_count() as usize;
        if !resumable {
            let tmp = tempfile::Builder::new()
                .prefix(&format!("{}.", manifest.content_id().short()))
                .suffix(".tmp")
                .tempfile_in(dir)?;
            let (file, path) = tmp.keep().map_err(|e| e.error)?;
            let partial = Partial {
                path,
                record: None,
                resumable: false,
                unnamed: AtomicBool::new(false),
                file,
                geometry,
            };
            let none = vec![false; pieces];
            if let Err(e) = partial.file.set_len(size).and_then(|()| partial.reserve()) {
                partial.remove();
                return Err(partial.open_error(e, &none));
            }
            return Ok(Some((partial, none)));
        }
        let id = manifest.content_id().to_hex();
        let path = dir.join(format!("{id}.part"));
        if pieces <= 1 {
            let early = early.filter(|e| e.size == size);
            return Self::open_one_piece(dir, path, manifest, cancel, early);
        }
        let record_path = dir.join(format!("{id}.done"));
        // Left by versions that saved the record through a temporary file.
        let _ = std::fs::remove_file(dir.join(format!("{id}.done.tmp")));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // What an earlier attempt recorded, if its partial file has the right size (a file of one
        // piece has no record: its piece is claimed, and checked below like any claim).
        let mut claimed = vec![false; pieces];
        if file.metadata()?.len() == size {
            if let Ok(bytes) = std::fs::read(&record_path) {
                for (flag, byte) in claimed.iter_mut().zip(bytes) {
                    *flag = byte == 1;
                }
            }
        } else {
            file.set_len(size)?;
        }
        let record_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&record_path);
        let record_file = match record_file {
            Ok(f) => f,
            Err(e) => {
                // With pieces claimed the record exists: this is no full disk, and the files
                // stay as they are for a later attempt.
                if claimed.contains(&true) || !is_disk_full(&e) {
                    return Err(e.into());
                }
                let free = free_space(&file);
                let _ = std::fs::remove_file(&path);
                return Err(OpenError::NoSpace {
                    source: e,
                    needed: size,
                    free,
                    kept: Kept::Nothing,
                });
            }
        };
        let partial = Partial {
            path,
            record: Some(Record {
                path: record_path,
                file: record_file,
            }),
            resumable: true,
            unnamed: AtomicBool::new(false),
            file,
            geometry,
        };
        if let Err(e) = partial
            .write_record(&claimed)
            .and_then(|()| partial.reserve())
        {
            // Give back what this attempt took; keep what an earlier one verified.
            return Err(partial.open_error(e, &claimed));
        }
        Ok(partial.verify_claims(manifest, &claimed, cancel))
    }

    /// [`Partial::open`] for a file of one piece (or none), which has no record: its piece is
    /// claimed if an earlier attempt kept the file, and hashed like any claim. A fresh download
    /// starts unnamed where the system allows it (see the module's notes).
    fn open_one_piece(
        dir: &Path,
        path: PathBuf,
        manifest: &Manifest,
        cancel: &CancellationToken,
        early: Option<Early>,
    ) -> Result<Option<(Self, Vec<bool>)>, OpenError> {
        let geometry = manifest.geometry();
        let size = geometry.size();
        let pieces = geometry.piece_count() as usize;
        let partial = |file, unnamed| Partial {
            path: path.clone(),
            record: None,
            resumable: true,
            unnamed: AtomicBool::new(unnamed),
            file,
            geometry,
        };
        let kept = match early.map(|e| e.file) {
            Some(EarlyFile::Fresh(file)) => {
                // Created and reserved already.
                return Ok(Some((partial(file, true), vec![false; pieces])));
            }
            Some(EarlyFile::Kept(file)) => Ok(file),
            None => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path),
        };
        let (partial, claimed) = match kept {
            Ok(file) => {
                // Left by versions that saved a record through a temporary file.
                let stray = path.with_extension("done.tmp");
                let _ = std::fs::remove_file(stray);
                let mut claimed = vec![false; pieces];
                if file.metadata()?.len() == size {
                    claimed.fill(size > 0);
                } else {
                    file.set_len(size)?;
                }
                (partial(file, false), claimed)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let none = vec![false; pieces];
                let fresh = match open_unnamed(dir) {
                    Some(file) => partial(file, true),
                    None => {
                        let file = std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(&path)?;
                        partial(file, false)
                    }
                };
                // Empty: `reserve` sizes it too, no separate truncate.
                if let Err(e) = fresh.reserve() {
                    return Err(fresh.open_error(e, &none));
                }
                return Ok(Some((fresh, none)));
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = partial.reserve() {
            return Err(partial.open_error(e, &claimed));
        }
        Ok(partial.verify_claims(manifest, &claimed, cancel))
    }

    /// Trust nothing: a claimed piece counts only if it still hashes right. `None` if `cancel`
    /// fired meanwhile.
    fn verify_claims(
        self,
        manifest: &Manifest,
        claimed: &[bool],
        cancel: &CancellationToken,
    ) -> Option<(Self, Vec<bool>)> {
        let geometry = self.geometry;
        let mut done = vec![false; claimed.len()];
        let mut buf = Vec::new();
        for (piece, _) in claimed.iter().enumerate().filter(|(_, &c)| c) {
            if cancel.is_cancelled() {
                return None;
            }
            let range = geometry.piece_bytes(piece as u64);
            let len = (range.end - range.start) as usize;
            buf.resize(len, 0);
            if self.file.read_exact_at(&mut buf, range.start).is_ok()
                && manifest.verify_piece(piece as u64, &buf)
            {
                done[piece] = true;
            }
        }
        Some((self, done))
    }

    /// The error for a failed open: a full disk says what is kept (after giving back the space
    /// of everything but `kept`), anything else is passed on.
    fn open_error(&self, e: io::Error, kept: &[bool]) -> OpenError {
        if !is_disk_full(&e) {
            return OpenError::Io(e);
        }
        let kept = self.keep_verified(kept);
        let needed = self.geometry.size() - kept_bytes(&kept);
        OpenError::NoSpace {
            source: e,
            needed,
            free: free_space(&self.file),
            kept,
        }
    }

    /// [`reserve`] for this file at its size.
    fn reserve(&self) -> io::Result<()> {
        reserve(&self.file, self.geometry.size())
    }

    /// True if the file has no name yet (see the module's notes).
    pub(super) fn is_unnamed(&self) -> bool {
        self.unnamed.load(Ordering::Relaxed)
    }

    /// A path that opens this very file: its own, or for an unnamed file the link to its
    /// descriptor under `/proc/self/fd` (valid while this `Partial` lives).
    pub(super) fn open_path(&self) -> PathBuf {
        if self.is_unnamed() {
            fd_path(&self.file)
        } else {
            self.path.clone()
        }
    }

    /// Gives the file the new name `dest` (a hard link): an unnamed file through the link to its
    /// descriptor, followed, so that the file itself is linked and not the link.
    pub(super) fn link_to(&self, dest: &Path) -> io::Result<()> {
        let (cwd, follow) = (rustix::fs::CWD, rustix::fs::AtFlags::SYMLINK_FOLLOW);
        Ok(rustix::fs::linkat(
            cwd,
            self.open_path(),
            cwd,
            dest,
            follow,
        )?)
    }

    /// True if a later download can resume from this partial file.
    pub(super) fn is_resumable(&self) -> bool {
        self.resumable
    }

    /// Saves the record of verified pieces, in place: the record has had its full size since the
    /// partial file was opened, so this needs no new space. A crash in the middle leaves each
    /// byte old or new, and every claimed piece is hashed again on a resume anyway.
    pub(super) fn save_record(&self, done: &[bool]) {
        if let Err(e) = self.write_record(done) {
            tracing::warn!(error = %e, "could not save download progress");
        }
    }

    fn write_record(&self, done: &[bool]) -> io::Result<()> {
        let Some(record) = &self.record else {
            return Ok(());
        };
        let bytes: Vec<u8> = done.iter().map(|&d| d as u8).collect();
        // Written, not just sized, the first time: a sparse record would need space later.
        record.file.write_all_at(&bytes, 0)?;
        record.file.set_len(bytes.len() as u64)
    }

    /// Keeps the pieces in `done` for a later resume and gives back the space of the others;
    /// removes everything if there is nothing to keep (or this is a scratch download, which is
    /// never resumed). Returns what is on disk now.
    pub(super) fn keep_verified(&self, done: &[bool]) -> Kept {
        if !self.resumable {
            self.remove();
            return Kept::Scratch;
        }
        let geometry = self.geometry;
        let verified: Vec<u64> = (0..geometry.piece_count())
            .filter(|&p| done.get(p as usize).copied().unwrap_or(false))
            .collect();
        if verified.is_empty() {
            self.remove();
            return Kept::Nothing;
        }
        if self.is_unnamed() {
            // Named now, so that the next attempt finds what is verified.
            if let Err(e) = self.link_to(&self.path) {
                tracing::debug!(error = %e, path = %self.path.display(), "could not keep the verified piece");
                return Kept::Nothing;
            }
            self.unnamed.store(false, Ordering::Relaxed);
        }
        self.save_record(done);
        // Punch the runs of pieces not verified, each in one call.
        let mut piece = 0;
        while piece < geometry.piece_count() {
            if done[piece as usize] {
                piece += 1;
                continue;
            }
            let start = geometry.piece_bytes(piece).start;
            while piece < geometry.piece_count() && !done[piece as usize] {
                piece += 1;
            }
            let end = geometry.piece_bytes(piece - 1).end;
            let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if let Err(e) = rustix::fs::fallocate(&self.file, punch, start, end - start) {
                // Only space: a filesystem without hole punching keeps the bytes (sparse files
                // there held only what was written anyway).
                tracing::debug!(error = %e, "could not give back unverified space");
                break;
            }
        }
        Kept::Pieces {
            path: self.path.clone(),
            pieces: verified.len() as u64,
            total: geometry.piece_count(),
            bytes: verified
                .iter()
                .map(|&p| {
                    let r = geometry.piece_bytes(p);
                    r.end - r.start
                })
                .sum(),
        }
    }

    /// Deletes the partial file and its record (an unnamed file goes when it is closed: its
    /// `path` may be another's, left alone).
    pub(super) fn remove(&self) {
        if !self.is_unnamed() {
            let _ = std::fs::remove_file(&self.path);
        }
        self.remove_record();
    }

    /// Deletes the record only (the file has moved into `files/`).
    pub(super) fn remove_record(&self) {
        if let Some(record) = &self.record {
            let _ = std::fs::remove_file(&record.path);
        }
    }
}

/// The partial file of a small download (one piece), prepared while its manifest is on its way:
/// once the tracker has said which content and what size, nothing else is needed to know where it
/// goes, so the file system's part of the start of a `get` overlaps the holder's answer.
pub(super) struct Early {
    size: u64,
    file: EarlyFile,
}

enum EarlyFile {
    /// `<content id>.part`, kept by an earlier attempt: opened, not changed (its piece is checked
    /// against the manifest, and it is sized, by [`Partial::open_prepared`]).
    Kept(std::fs::File),
    /// A fresh unnamed file, reserved at the size.
    Fresh(std::fs::File),
}

impl Early {
    /// True if it is a fresh file: taking it over is then no blocking work.
    pub(super) fn is_fresh(&self) -> bool {
        matches!(self.file, EarlyFile::Fresh(_))
    }

    /// Prepares the resumable partial file of content `id`, of `size` bytes, if it will have one
    /// piece (at most [`MIN_PIECE_SIZE`] bytes, whatever the manifest's piece size) and an
    /// unnamed file can be made. Blocking. `None`: [`Partial::open_prepared`] does it all, and
    /// reports what fails (a full disk).
    pub(super) fn prepare(dir: &Path, id: ContentId, size: u64) -> Option<Early> {
        if size == 0 || size > u64::from(MIN_PIECE_SIZE) {
            return None;
        }
        let path = dir.join(format!("{}.part", id.to_hex()));
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(file) => EarlyFile::Kept(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = open_unnamed(dir)?;
                reserve(&file, size).ok()?;
                EarlyFile::Fresh(file)
            }
            Err(_) => return None,
        };
        Some(Early { size, file })
    }
}

/// Allocates `file` at `size` bytes now (`fallocate`, which also extends it), so that its writes
/// cannot run out of space. A filesystem without `fallocate` only has it sized, sparse: a full
/// disk then shows when writing.
fn reserve(file: &std::fs::File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
            tracing::debug!(
                "this filesystem cannot reserve space; a full disk will show when writing"
            );
            file.set_len(size)
        }
        Err(e) => Err(e.into()),
    }
}

/// An unnamed file open for reading and writing in `dir` (`O_TMPFILE`), if the system can create
/// one and name it later (through `/proc/self/fd`).
fn open_unnamed(dir: &Path) -> Option<std::fs::File> {
    static PROC_FD: OnceLock<bool> = OnceLock::new();
    if !*PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        return None;
    }
    let flags =
        rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC;
    match rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        flags,
        rustix::fs::Mode::from_raw_mode(0o666),
    ) {
        Ok(fd) => Some(fd.into()),
        Err(e) => {
            // EOPNOTSUPP on file systems without it, EISDIR on old kernels.
            tracing::debug!(error = %e, "no unnamed files here; the partial file is named");
            None
        }
    }
}

/// The path of `file`'s descriptor under `/proc/self/fd`.
fn fd_path(file: &std::fs::File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Bytes of the pieces `kept` holds.
pub(super) fn kept_bytes(kept: &Kept) -> u64 {
    match kept {
        Kept::Pieces { bytes, .. } => *bytes,
        Kept::Nothing | Kept::Scratch => 0,
    }
}

/// Bytes an unprivileged writer may still use on the disk holding `file`.
pub(super) fn free_space(file: &std::fs::File) -> Option<u64> {
    let stat = rustix::fs::fstatvfs(file).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests;
