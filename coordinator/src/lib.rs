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
//! - [`aggregate`]: the sweep's report over all judged cases (CIs, paired comparisons).
//! - [`service`]: the tonic service and its token check; [`server`]: [`serve`] and
//!   [`RunningCoordinator`].
//! - [`client`]: what the CLI uses to talk to a coordinator (upload a sweep's files, submit,
//!   watch, fetch results).
//! - [`bench`]: `flotilla bench dispatch`.
//!
//! The shard specs and results exchanged with workers are defined beside the worker code, in
//! `flotilla_contract::shard`; the wire envelope is `proto/flotilla/v1/cluster.proto`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use flotilla_coordinator::{serve, CoordinatorConfig};
//! use flotilla_client::registry::MemoryRegistry;
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
pub mod plan;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
pub mod submit;
pub mod sweep;
pub mod writes;

pub use server::{serve, CoordinatorConfig, RunningCoordinator, TlsConfig};
