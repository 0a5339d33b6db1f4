//! The engine's error type: every failure names the file, field or flag at fault.
//!
//! Files, inputs and I/O failures are the contract's [`flotilla_contract::Error`] (one
//! definition for every crate); the engine adds what only it can hit: chat templates and the
//! tensor library.

use std::path::PathBuf;

/// What went wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file, a bad input (a prompt, a flag, a setting) or an I/O failure, naming the
    /// file or setting.
    #[error(transparent)]
    Contract(#[from] flotilla_contract::Error),
    /// A chat template that does not render.
    #[error("chat template: {0}")]
    Template(String),
    /// A failure inside the tensor library while running a model.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A model file or folder that cannot be used; `path` says which one.
    pub fn model(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        flotilla_contract::Error::file(path, message).into()
    }

    /// Bad input from the caller (a prompt, a flag, a setting).
    pub fn input(message: impl std::fmt::Display) -> Self {
        flotilla_contract::Error::input(message).into()
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        flotilla_contract::Error::io(path, source).into()
    }
}
