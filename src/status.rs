//! The one place where domain errors become gRPC statuses. Each error keeps its own message; the
//! code says what kind of failure it is, so clients in any language can act on it.

use crate::peer::server::ServeError;
use tonic::Status;

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Self {
        let message = e.to_string();
        match e {
            ServeError::BadName(_) | ServeError::InvalidArgument(_) => {
                Status::invalid_argument(message)
            }
            ServeError::NotShared(_) => Status::not_found(message),
            ServeError::OutOfRange { .. } => Status::out_of_range(message),
            ServeError::Busy(_) => Status::resource_exhausted(message),
            ServeError::Stalled(_) => Status::deadline_exceeded(message),
            ServeError::ChangedOnDisk(_) => Status::data_loss(message),
            ServeError::Io(_) => Status::internal(message),
        }
    }
}
