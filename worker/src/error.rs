//! The worker process's error: why it could not start, register or keep going. (A shard
//! that fails is not one of these: it is a [`crate::exec::ShardError`] reported to the
//! coordinator, and the worker goes on.)

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting that cannot be used (`--slots 0`, a sweep path that leaves its folder, a
    /// malformed artifact hash).
    #[error("{0}")]
    Invalid(String),
    /// A local file or folder that cannot be read or written.
    #[error("{message}: {cause}")]
    Io {
        message: String,
        cause: std::io::Error,
    },
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

impl WorkerError {
    pub(crate) fn io(message: impl Display) -> impl FnOnce(std::io::Error) -> WorkerError {
        let message = message.to_string();
        move |cause| WorkerError::Io { message, cause }
    }
}
