//! The flotilla coordinator: turns a sweep into jobs and shards, hands shards to workers,
//! takes results back exactly once and aggregates them.
//!
//! Not built yet: the cluster issue brings the gRPC service, the SQLite state and the
//! scheduler. Until then flotilla runs every model in-process through `flotilla-worker`.
pub use flotilla_proto as proto;
