//! The one place where domain errors become gRPC statuses. Each error keeps its own message; the
//! code says what kind of failure it is, so clients in any language can act on it.

use crate::chunking::ChunkingError;
use crate::names::NameError;
use crate::tracker::TrackerError;
use tonic::Status;

impl From<NameError> for Status {
    fn from(e: NameError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<ChunkingError> for Status {
    fn from(e: ChunkingError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

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
