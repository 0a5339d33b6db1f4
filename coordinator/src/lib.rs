//! The flotilla coordinator: takes a sweep, turns it into jobs and shards, hands shards to
//! the workers that ask for them, takes results back exactly once, and aggregates them.
//!
//! A tour, in the order a sweep travels:
//! - [`sweep`]: the sweep file (YAML) — parsed with line numbers, checked (every problem
//!   reported at once), and the list of files the CLI uploads.
//! - [`submit`]: `SubmitSweep` — the uploaded files are linked under the data folder, the
//!   sweep checked again against them, planned and stored.
//! - [`plan`]: **where a sweep becomes shards** — the jobs DAG (train -> generate with that
//!   adapter; generate -> judge) and the cut of each job into shards; [`plan::finalize`]
//!   completes a job's specs from the results it depends on.
//! - [`scheduler`]: the in-memory decisions — which shard to which worker (pull, model
//!   affinity, faster workers first at the tail), attempt fencing, the two retry budgets.
//! - [`core`]: glue that makes every decision durable before it is acted on; **where leases
//!   expire** ([`core::Core::reap`] for heartbeats, the registry watch in [`server`], a
//!   dropped stream in [`service`]).
//! - [`store`]: SQLite (one thread, group commit). **Where a result is stored**:
//!   [`core::Core::result`] fences it and writes it through [`writes::apply`].
//! - [`artifacts`]: the content-addressed blob folder (sha256-checked uploads).
//! - [`training`]: distributed LoRA training — each round's shards, and applying a finished
//!   round (sync: summed gradients and one AdamW step; diloco: averaged deltas and an outer
//!   Nesterov step) exactly once, with the adapter checkpointed as artifacts.
//! - [`aggregate`]: the sweep's report over all judged cases (CIs, paired comparisons).
//! - [`error`]: [`CoordinatorError`], the domain's errors (turned into gRPC statuses by the
//!   service alone).
//! - [`service`]: the tonic service and its token check; [`server`]: [`serve`] and
//!   [`RunningCoordinator`].
//! - [`client`]: the one client (`flotilla-client`) plus [`client::SubmitSweep`], which
//!   uploads everything a sweep file names and submits it.
//! - [`bench`]: `flotilla bench dispatch`.
//!
//! What a shard is — its spec and output, one variant per kind, its states and attempt — is
//! `flotilla-contract`'s (`flotilla_contract::shard`, `flotilla_contract::state`); the wire
//! envelope is `proto/flotilla/v1/cluster.proto`. This crate links no model code.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use flotilla_client::registry::MemoryRegistry;
//! use flotilla_coordinator::client::SubmitSweep;
//! use flotilla_coordinator::{serve, CoordinatorConfig};
//! use std::sync::Arc;
//!
//! // Embedded: an in-memory registry instead of etcd, a loopback port.
//! let registry = Arc::new(MemoryRegistry::new());
//! let config = CoordinatorConfig::new("127.0.0.1:0".parse()?, "flotilla-data", registry);
//! let coordinator = serve(config).await?;
//! let client = flotilla_coordinator::client::Client::connect(
//!     &format!("http://{}", coordinator.local_addr()), None).await?;
//! let status = client.submit_file("examples/quickstart.yaml".as_ref()).await?;
//! println!("queued {}", status.sweep_id);
//! coordinator.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub use flotilla_proto as proto;

pub mod aggregate;
pub mod artifacts;
pub mod bench;
pub mod client;
pub mod core;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod models;
pub mod plan;
pub mod provenance;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
pub mod submit;
pub mod sweep;
pub mod training;
pub mod writes;

pub use error::{CoordinatorError, CoordinatorResult};
pub use server::{serve, CoordinatorConfig, RunningCoordinator, TlsConfig};
