//! The worker process's error: why it could not start, register or keep going. (A shard
//! that fails is not one of these: it is a [`crate::exec::ShardError`] reported to the
//! coordinator, and the worker goes on.)

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting that cannot be used (`--slots 0`, a sweep path that leaves its folder, a
    /// malformed artifact hash).
    #[error("{0}")]
    Invalid(String),
    /// A local file or folder that cannot be read or written (named with the OS's reason).
    #[error(transparent)]
    File(#[from] flotilla_contract::Error),
    /// The coordinator or etcd could not be reached or refused a call.
    #[error(transparent)]
    Client(#[from] flotilla_client::Error),
    /// Bytes that do not match their hash.
    #[error("{0}")]
    Corrupt(String),
    /// The coordinator refused this worker (a wrong token): the worker stops.
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, WorkerError>;

/// The I/O error of `path`, as a worker error naming the path.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> WorkerError + '_ {
    move |e| flotilla_contract::Error::io(path, e).into()
}
