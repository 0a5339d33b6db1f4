//! The worker process: what runs on each office PC (or pod) of a cluster, and inside
//! `flotilla run` as in-process workers.
//!
//! - [`agent`] keeps the Work stream to the coordinator: hello, ask, run, report, reconnect.
//! - [`exec`] runs one shard by kind (generate, judge, train, noop) on the engine.
//! - [`spec`] is the contract with the coordinator: the JSON inside assignments and results.
//! - [`artifacts`] moves files by content: a sha256-checked local cache, chunked uploads.
//! - [`models`] keeps recently used models loaded (LRU), adapters riding on shared bases.
//! - [`capabilities`] says what this machine has (device, memory, models), for the registry
//!   and the coordinator's scheduling.
//! - [`client`] opens an authenticated gRPC client of the coordinator (the CLI uses it too).
//!
//! Membership (the etcd key, the leader lookup) lives in [`crate::registry`].

pub mod agent;
pub mod artifacts;
pub mod capabilities;
pub mod client;
pub mod exec;
pub mod models;
pub mod spec;

pub use agent::{run_worker, AgentConfig, CoordinatorAddress};
pub use capabilities::Capabilities;
pub use models::ModelCache;
