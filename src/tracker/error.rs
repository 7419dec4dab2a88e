//! What the tracker refuses, and the gRPC code each refusal is answered with.

use crate::names::NameError;
use std::net::IpAddr;
use tonic::Status;

/// Errors of the registry, answered to the caller as the [`Status`] its `From` impl gives.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TrackerError {
    /// A malformed name in a request.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// Any other malformed field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The peer id is not registered (or was dropped): register again.
    #[error("peer {0:?} is not registered (the tracker may have restarted): register again")]
    UnknownPeer(String),
    /// The session token does not belong to the peer id.
    #[error("wrong session token for peer {0:?}")]
    WrongToken(String),
    /// Another live peer holds the id.
    #[error("peer id {peer_id:?} is already in use by a live peer at {address}")]
    PeerIdTaken {
        /// The id asked for.
        peer_id: String,
        /// Where its current holder is.
        address: String,
    },
    /// Nobody holds the file (or that version of it); the text names what was asked for.
    #[error("no peer holds {0}")]
    UnknownFile(String),
    /// The peer's catalog would pass the files-per-peer cap (the cap).
    #[error("a peer may share at most {0} files with this tracker (its --max-files-per-peer)")]
    TooManyFiles(usize),
    /// The tracker holds as many peers as it may (the cap).
    #[error("this tracker is full: it holds at most {0} peers (its --max-peers)")]
    TooManyPeers(usize),
    /// The peers registered from this address are as many as one address may have.
    #[error("this tracker holds at most {1} peers registered from {0} (its --max-peers-per-ip)")]
    TooManyPeersFrom(IpAddr, usize),
    /// The peers registered from this address would share more files than one address may.
    #[error(
        "peers registered from {0} may share at most {1} files in all with this tracker \
         (its --max-files-per-ip)"
    )]
    TooManyFilesFrom(IpAddr, usize),
    /// The whole catalog would pass its cap.
    #[error("this tracker's catalog is full: it holds at most {0} files in all (its --max-catalog-files)")]
    CatalogFull(usize),
    /// The shared store (Redis) did not answer in time, or answered something unusable: the
    /// call may be tried again, here or on another tracker.
    #[error("the tracker's store is unavailable ({0}); try again shortly or another tracker")]
    StoreUnavailable(String),
}

impl TrackerError {
    /// The tracker cap this error is a refusal by, if it is one (for the metrics).
    pub(crate) fn limit(&self) -> Option<crate::metrics::Refusal> {
        use crate::metrics::Refusal;
        match self {
            TrackerError::TooManyPeers(_) => Some(Refusal::TrackerPeers),
            TrackerError::TooManyPeersFrom(..) => Some(Refusal::TrackerPeersPerIp),
            TrackerError::TooManyFiles(_) => Some(Refusal::TrackerFilesPerPeer),
            TrackerError::TooManyFilesFrom(..) => Some(Refusal::TrackerFilesPerIp),
            TrackerError::CatalogFull(_) => Some(Refusal::TrackerCatalog),
            _ => None,
        }
    }
}

/// The error's own text, under the canonical code that says what kind of failure it is, so
/// clients in any language can act on it (a peer re-registers on NOT_FOUND, for one).
impl From<TrackerError> for Status {
    fn from(e: TrackerError) -> Self {
        let message = e.to_string();
        match e {
            TrackerError::BadName(_) | TrackerError::InvalidArgument(_) => {
                Status::invalid_argument(message)
            }
            TrackerError::UnknownPeer(_) | TrackerError::UnknownFile(_) => {
                Status::not_found(message)
            }
            TrackerError::WrongToken(_) => Status::permission_denied(message),
            TrackerError::PeerIdTaken { .. } => Status::already_exists(message),
            TrackerError::TooManyFiles(_)
            | TrackerError::TooManyPeers(_)
            | TrackerError::TooManyPeersFrom(..)
            | TrackerError::TooManyFilesFrom(..)
            | TrackerError::CatalogFull(_) => Status::resource_exhausted(message),
            TrackerError::StoreUnavailable(_) => Status::unavailable(message),
        }
    }
}
