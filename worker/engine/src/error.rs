//! The engine's error type: every failure names the file, field or flag at fault.

use std::path::PathBuf;

/// What went wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file or directory that cannot be used; `path` says which one.
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    /// Bad input from the caller (a prompt, a flag, a setting).
    #[error("{0}")]
    Input(String),
    /// A chat template that does not render.
    #[error("chat template: {0}")]
    Template(String),
    /// A failure inside the tensor library while running a model.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A case file, setting or model reference the contract refused.
    #[error(transparent)]
    Contract(#[from] flotilla_contract::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn model(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Model {
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
