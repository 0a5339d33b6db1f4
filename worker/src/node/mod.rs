//! The worker process (being written).

pub mod spec;
