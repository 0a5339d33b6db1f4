//! Reaching a flotilla coordinator, from the CLI, a worker or a test.
//!
//! - [`client`]: **the one client** of the coordinator's gRPC API — the address (with or
//!   without `http://`), the shared token as `authorization: Bearer <token>` on every call,
//!   optional TLS and mutual TLS, chunked artifact upload and sha256-checked download.
//! - [`error`]: the one error type of both, each naming what was at fault.
//! - [`hash`]: content addresses (sha256, hex) and the chunk size artifacts travel in; the
//!   coordinator's artifact store and the worker's cache use the same.
//! - [`registry`]: membership and leadership behind one trait — [`registry::EtcdRegistry`]
//!   (worker keys bound to leases, the elected coordinator's address) and
//!   [`registry::MemoryRegistry`] for embedded runs.
//!
//! What it does not own: what a sweep file names (the coordinator's `sweep`), what a shard
//! means (`flotilla-contract`), running anything.

pub mod client;
pub mod error;
pub mod hash;
pub mod observe;
pub mod registry;
pub mod telemetry;

pub use client::{endpoint_url, explain, read_token_file, Client, ClientTls, Grpc};
pub use error::{Error, Result};
