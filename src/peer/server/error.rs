//! What the Peer service refuses, and the gRPC code of each refusal: the one place its errors
//! become statuses.

use crate::names::NameError;
use std::time::Duration;
use tonic::Status;

/// Errors of the Peer service. Each becomes a gRPC status with its own code (see the `From` impl
/// below), so clients in any language can act on it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// A malformed name.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// Any other malformed field.
    #[error("{0}")]
    InvalidArgument(String),
    /// This peer does not share that file.
    #[error("this peer does not share {0}")]
    NotShared(String),
    /// Blocks past the end of the file.
    #[error("blocks {first}..{end} are past the end of the file ({count} blocks)")]
    OutOfRange {
        /// First block asked for.
        first: u64,
        /// One past the last block asked for.
        end: u128,
        /// Blocks in the file.
        count: u64,
    },
    /// Too many streams at once.
    #[error("peer busy: {0} concurrent streams already; retry later or ask another holder")]
    Busy(usize),
    /// Too many streams at once from the client's address.
    #[error(
        "peer busy: {0} concurrent streams from your address already; retry when one ends or ask \
         another holder"
    )]
    AddressBusy(usize),
    /// Every upload slot is taken by other downloaders (choked).
    #[error("choked: serving {slots} other downloaders; retry in {retry:?} or ask another holder")]
    Choked {
        /// Downloaders served at once.
        slots: usize,
        /// When the served set is next recomputed.
        retry: Duration,
    },
    /// A partial holder does not have every piece of the range yet.
    #[error("this peer has not got blocks {first}..{end} yet (it is still downloading the file; ask GetPieces)")]
    NotYet {
        /// First block asked for.
        first: u64,
        /// One past the last block asked for.
        end: u64,
    },
    /// The client read nothing for the idle timeout.
    #[error("stream ended: the client read nothing for {0:?}")]
    Stalled(Duration),
    /// The file on disk no longer matches what was announced.
    #[error("{0} changed on disk since it was shared")]
    ChangedOnDisk(String),
    /// The peer is shutting down: streams in flight end (ask another holder).
    #[error("peer shutting down")]
    ShuttingDown,
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Self {
        let message = e.to_string();
        match e {
            ServeError::BadName(_) | ServeError::InvalidArgument(_) => {
                Status::invalid_argument(message)
            }
            ServeError::NotShared(_) => Status::not_found(message),
            ServeError::OutOfRange { .. } => Status::out_of_range(message),
            ServeError::Busy(_) | ServeError::AddressBusy(_) | ServeError::Choked { .. } => {
                Status::resource_exhausted(message)
            }
            ServeError::NotYet { .. } => Status::failed_precondition(message),
            ServeError::Stalled(_) => Status::deadline_exceeded(message),
            ServeError::ChangedOnDisk(_) => Status::data_loss(message),
            ServeError::ShuttingDown => Status::unavailable(message),
            ServeError::Io(_) => Status::internal(message),
        }
    }
}
