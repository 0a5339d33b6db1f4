//! The worker process: what runs on each office PC (or pod) of a cluster, and inside
//! `flotilla run` as in-process workers.
//!
//! - [`agent`] keeps the Work stream to the coordinator: hello, ask, run, report, reconnect.
//! - [`shard_task`] is one attempt: files in, [`exec`] on a blocking thread, artifacts out.
//! - [`exec`] runs one shard by its kind ([`flotilla_contract::ShardSpec`]: generate, judge,
//!   train, noop) on the engine, the benchmark engine and the trainer.
//! - [`artifacts`] keeps a sha256-checked local cache of the files shards need and lays them
//!   out per shard.
//! - [`models`] keeps recently used models loaded (LRU), adapters riding on shared bases.
//! - [`error`]: [`WorkerError`], why the worker process cannot start or go on.
//! - [`capabilities`] says what this machine has (device, memory, models), for the registry
//!   and the coordinator's scheduling.
//!
//! It talks to the coordinator only through `flotilla-client` (the one client, and the etcd
//! registry for membership); what a shard means is `flotilla-contract`'s. It owns no model
//! code: that is `flotilla-engine`, `flotilla-bench` and `flotilla-train`.

pub mod agent;
pub mod artifacts;
pub mod capabilities;
pub mod error;
pub mod exec;
pub mod idle;
pub mod metrics;
pub mod models;
pub mod shard_task;

pub use agent::{run_worker, AgentConfig, CoordinatorAddress};
pub use capabilities::Capabilities;
pub use error::WorkerError;
pub use models::ModelCache;
