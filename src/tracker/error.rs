//! What the tracker refuses, and the gRPC code each refusal is answered with.

use super::registry::MAX_FILES_PER_PEER;
use crate::names::NameError;
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
    /// The catalog would pass [`MAX_FILES_PER_PEER`].
    #[error("a peer may share at most {MAX_FILES_PER_PEER} files with the tracker")]
    TooManyFiles,
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
            TrackerError::TooManyFiles => Status::resource_exhausted(message),
        }
    }
}
