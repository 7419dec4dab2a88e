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
    /// Local disk error.
    #[error("writing the download failed: {0}")]
    Io(#[from] std::io::Error),
    /// The download was cancelled (the peer is shutting down). Verified pieces of a download
    /// into `files/` are kept, so a later `get` resumes.
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
}
