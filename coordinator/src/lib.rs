//! The flotilla coordinator (being written).
pub use flotilla_proto as proto;

pub mod sweep;
