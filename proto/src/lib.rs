//! `flotilla.v1`: the protobuf messages and gRPC stubs every flotilla process speaks.
//!
//! The `.proto` files under `proto/flotilla/v1/` are the single source of truth; this crate
//! only exposes the code `tonic-prost-build` generates from them at build time (never
//! committed, never edited) plus small conversion helpers. It owns no behaviour.

/// Generated types for package `flotilla.v1`.
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}
