//! The words the coordinator and the workers share, and nothing that runs a model.
//!
//! Both sides of the `Work` stream depend on this crate; the coordinator depends on nothing
//! heavier (no candle, no tokenizers, no document parsers), so everything it must understand
//! about a shard lives here:
//!
//! - [`shard`]: **the shard contract** — one serde-tagged [`ShardSpec`] (one variant per kind
//!   of work) and the matching [`ShardOutput`], carried typed on the wire.
//! - [`state`]: [`JobKind`], [`JobState`], [`ShardState`], [`SweepState`] and the [`Attempt`]
//!   fencing token, with conversions to and from the wire's enums.
//! - [`dataset`]: benchmark cases and the case-file readers (Flow and flotilla formats).
//! - [`case_result`]: what one evaluated case records ([`CaseResult`]) and the settings that
//!   shape it (truncation, chunking).
//! - [`judging`]: the rating [`Scale`], a judge's [`Verdict`], the jury's score, and
//!   [`JudgeSpec`], the one parser of judge names (`self`, a model, `openai:MODEL@URL`).
//! - [`variant`]: prompt [`Variant`]s by name.
//! - [`retrieval`]: how RAG chunks are ranked ([`RetrievalMode`]: hybrid, dense, bm25).
//! - [`sampling`] holds [`SamplingParams`].
//! - [`train_config`]: a LoRA training run's configuration ([`TrainConfig`]), as `train.yaml`
//!   and a sweep's `train:` block write it.
//! - [`model_ref`]: a `--model` value resolved to files (no loading).
//! - [`tensors`] and [`optim`]: named f32 tensors in safetensors files (F32 / F16 / I8) and
//!   the optimizer arithmetic on them (AdamW, clipping, DiLoCo's outer Nesterov step), so the
//!   coordinator can aggregate distributed training without a tensor library.
//! - [`provenance`]: where a result came from (version, settings, file hashes, machines,
//!   times), as results.json records it.
//! - [`report`] and [`stats`]: aggregation of case results into the final table (bootstrap CIs,
//!   paired comparisons) and the output folder.
//!
//! What it does not own: running anything (the engine, the benchmark engine and training are
//! `flotilla-engine`, `flotilla-bench`, `flotilla-train`), scheduling and storage (the
//! coordinator), transport (`flotilla-proto`, `flotilla-client`).

pub mod case_result;
pub mod dataset;
pub mod error;
pub mod judging;
pub mod model_ref;
pub mod optim;
pub mod provenance;
pub mod report;
pub mod retrieval;
pub mod sampling;
pub mod shard;
pub mod state;
pub mod stats;
pub mod tensors;
pub mod train_config;
pub mod variant;

pub use case_result::{CaseResult, ChunkSettings, Hit, Metrics, Truncation, TruncationRecord};
pub use dataset::{Case, Task};
pub use error::{Error, Result};
pub use judging::{JudgeSpec, Scale, Verdict};
pub use retrieval::RetrievalMode;
pub use sampling::SamplingParams;
pub use shard::{ShardOutput, ShardSpec};
pub use state::{Attempt, JobKind, JobState, ShardState, SweepState};
pub use train_config::TrainConfig;
pub use variant::Variant;
