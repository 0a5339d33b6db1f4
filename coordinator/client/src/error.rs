//! The client's error: every failure says what it was doing and names the flag, file,
//! address or artifact at fault, in one sentence (the cause is part of it).

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot be used: an address, a token, TLS files, a worker id.
    #[error("{0}")]
    Invalid(String),
    /// A local file that cannot be read or written.
    #[error("{message}: {cause}")]
    Io {
        message: String,
        cause: std::io::Error,
    },
    /// The coordinator cannot be reached.
    #[error("{message}: {cause}")]
    Transport {
        message: String,
        cause: tonic::transport::Error,
    },
    /// The coordinator answered a call with an error (explained for people).
    #[error("{0}")]
    Refused(String),
    /// An artifact that did not arrive intact, or was stored under another hash.
    #[error("{0}")]
    Corrupt(String),
    /// etcd failed or cannot be reached.
    #[error("{message}: {cause}")]
    Etcd {
        message: String,
        cause: etcd_client::Error,
    },
    /// A lease, a watch or a background task was lost.
    #[error("{0}")]
    Lost(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(message: impl Display) -> impl FnOnce(std::io::Error) -> Error {
        let message = message.to_string();
        move |cause| Error::Io { message, cause }
    }

    pub(crate) fn etcd(message: impl Display) -> impl FnOnce(etcd_client::Error) -> Error {
        let message = message.to_string();
        move |cause| Error::Etcd { message, cause }
    }
}
