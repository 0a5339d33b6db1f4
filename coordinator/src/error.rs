//! The coordinator's own error: what a request or a decision can fail with, in the domain's
//! words. Only the gRPC service (`service.rs`) turns it into a `tonic::Status`.

use crate::artifacts::ArtifactError;
use crate::store::StoreError;
use crate::sweep::SweepErrors;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The request is wrong: a sweep with problems (every one listed), a file that was not
    /// uploaded, an empty worker id.
    #[error("{0}")]
    Invalid(String),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sweep file with problems, every one listed with its line.
    #[error(transparent)]
    Sweep(#[from] SweepErrors),
    /// The artifact folder refused or failed.
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    /// Membership (etcd) or a call to another coordinator failed.
    #[error(transparent)]
    Client(#[from] flotilla_client::Error),
    /// Something on the coordinator's side failed (a port it cannot listen on, a file it
    /// could not lay out).
    #[error("{0}")]
    Internal(String),
}

pub type CoordinatorResult<T> = Result<T, CoordinatorError>;
