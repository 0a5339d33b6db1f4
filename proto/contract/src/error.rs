//! The contract's error type: every failure names the file, field or flag at fault.

use std::path::PathBuf;

/// What went wrong while reading a case file, a setting or a model reference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder that cannot be used; `path` says which one.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// Bad input from the caller (a value, a flag, a setting).
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub fn input(message: impl std::fmt::Display) -> Self {
        Error::Input(message.to_string())
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
