//! What a download is asked to do and what it reports: the request, where the result goes, the
//! report of a finished download (overall and per holder), and the ways a download fails.

use crate::chunking::ContentId;
use crate::names::NameError;
use crate::peer::store::StoreError;
use crate::peer::tracker_link::TrackerLinkError;
use std::path::PathBuf;
use std::time::Duration;

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
    /// The disk holding the download filled up: what was kept, and where.
    #[error(transparent)]
    DiskFull(Box<DiskFull>),
    /// Local disk error.
    #[error("writing the download failed: {0}")]
    Io(#[from] std::io::Error),
    /// The download was cancelled (the peer is shutting down). Verified pieces of a download
    /// into `files/` are kept, so a later `get` resumes.
    #[error("download cancelled")]
    Cancelled,
}

impl From<DiskFull> for DownloadError {
    fn from(e: DiskFull) -> Self {
        DownloadError::DiskFull(Box::new(e))
    }
}

impl From<TrackerLinkError> for DownloadError {
    fn from(e: TrackerLinkError) -> Self {
        DownloadError::Tracker(e)
    }
}

/// A download stopped by a full disk (ENOSPC, or a quota): where, how much more it needed, and
/// what it left behind.
#[derive(Debug, thiserror::Error)]
#[error(
    "no space left for {name:?} in {}{}: {source}; {kept}",
    dir.display(),
    shortfall(*needed, *free)
)]
pub struct DiskFull {
    /// The file.
    pub name: String,
    /// The folder that filled up (`.p2pshare/partial/`, or `files/` when moving the file in).
    pub dir: PathBuf,
    /// Bytes the download still had to store, when known.
    pub needed: Option<u64>,
    /// Bytes free on that disk when it failed, when known.
    pub free: Option<u64>,
    /// What is on disk now.
    pub kept: Kept,
    /// The system's error.
    pub source: std::io::Error,
}

/// " (8.0 MiB more needed, 1.9 MiB free)", or what of it is known.
fn shortfall(needed: Option<u64>, free: Option<u64>) -> String {
    match (needed, free) {
        (Some(n), Some(f)) => format!(
            " ({} more needed, {} free)",
            crate::human::bytes(n),
            crate::human::bytes(f)
        ),
        (Some(n), None) => format!(" ({} more needed)", crate::human::bytes(n)),
        (None, Some(f)) => format!(" ({} free)", crate::human::bytes(f)),
        (None, None) => String::new(),
    }
}

/// What a download stopped by a full disk left on disk. Never a half-written piece that counts:
/// only verified pieces are kept, and the space reserved for the others is given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Nothing: no piece had been verified, so the partial file and its record were removed.
    Nothing,
    /// A scratch download (bench, stress) is never resumed: its file was removed.
    Scratch,
    /// Verified pieces, in the partial file a later `get` of the same content resumes from.
    Pieces {
        /// The partial file (`.p2pshare/partial/<content id>.part`).
        path: PathBuf,
        /// Verified pieces in it.
        pieces: u64,
        /// Pieces in the file.
        total: u64,
        /// Bytes of those pieces.
        bytes: u64,
    },
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::Nothing => f.write_str(
                "nothing was kept (no piece was verified yet, so the partial file was removed); \
                 free some space and run get again",
            ),
            Kept::Scratch => {
                f.write_str("the scratch file was removed (scratch downloads are never resumed)")
            }
            Kept::Pieces {
                path,
                pieces,
                total,
                bytes,
            } if pieces == total => write!(
                f,
                "the whole file ({}) is verified and kept in {}; free some space and run get \
                 again to finish without fetching anything",
                crate::human::bytes(*bytes),
                path.display()
            ),
            Kept::Pieces {
                path,
                pieces,
                total,
                bytes,
            } => write!(
                f,
                "kept {pieces} of {total} pieces ({}, verified) in {}; free some space and run \
                 get again to resume from them",
                crate::human::bytes(*bytes),
                path.display()
            ),
        }
    }
}

/// True if `e` says the disk (or the user's quota) is full.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Where a finished download goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Into `files/`, shared and announced.
    Files,
    /// A verified scratch file outside `files/`, not shared, made durable (fsync) like a file
    /// in `files/`; [`DownloadReport::path`] names it and the caller deletes it (the shell's
    /// `bench` and `stress`: a real download that leaves nothing behind).
    Scratch,
    /// As [`Destination::Scratch`], but never synced to disk: the transfer alone, for benchmarks
    /// that set it beside a copy into the page cache.
    ScratchNoSync,
}

impl Destination {
    /// Whether the download ends with its file on disk (fsync), its writeback started early.
    pub(crate) fn is_durable(self) -> bool {
        !matches!(self, Destination::ScratchNoSync)
    }
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
    /// How long the final fsync took (durable destinations; none if nothing was written).
    pub sync: Option<Duration>,
}

impl DownloadReport {
    /// Throughput of this run in MB/s (10^6 bytes), over the bytes fetched.
    pub(crate) fn mb_per_sec(&self) -> f64 {
        self.fetched as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
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

    #[test]
    fn a_full_disk_says_what_was_kept_and_where() {
        let enospc = || std::io::Error::from_raw_os_error(28);
        assert!(is_disk_full(&enospc()));
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(122))); // EDQUOT
        assert!(!is_disk_full(&std::io::Error::from_raw_os_error(5)));
        let full = |kept| DiskFull {
            name: "big".into(),
            dir: "/p/.p2pshare/partial".into(),
            needed: Some(6 << 20),
            free: Some(1 << 20),
            kept,
            source: enospc(),
        };
        let text = full(Kept::Nothing).to_string();
        assert!(text.starts_with("no space left for \"big\" in /p/.p2pshare/partial (6.0 MiB more needed, 1.0 MiB free): No space left on device"), "{text}");
        assert!(text.contains("nothing was kept"), "{text}");
        let text = full(Kept::Pieces {
            path: "/p/x.part".into(),
            pieces: 3,
            total: 8,
            bytes: 3 << 16,
        })
        .to_string();
        assert!(
            text.contains("kept 3 of 8 pieces (192.0 KiB, verified) in /p/x.part"),
            "{text}"
        );
        assert!(text.contains("run get again to resume"), "{text}");
    }
}
