//! LoRA fine-tuning on a worker (flotilla-train): a whole run, or one worker's part of a
//! distributed round.
//!
//! - [`data`] turns chat / prompt-completion JSONL into token batches with a loss mask on the
//!   assistant tokens (padding or packing, seeded shuffling, a resumable position).
//! - [`lora`] holds the adapter: configuration, PEFT layout on disk, merge.
//! - [`model`] is a differentiable llama / qwen2 forward whose projections carry LoRA; it uses
//!   only ops that record a backward (candle's fused rms_norm, softmax_last_dim, rope and
//!   quantized matmul record none).
//! - [`trainer`] runs AdamW with warmup + cosine, accumulation, clipping, checkpoints, resume.
//! - [`rounds`] is a worker's part of a distributed round (sync gradients, DiLoCo local steps
//!   and delta), with the model and data kept between rounds.
//! - [`optim`] is AdamW as PyTorch computes it, the schedules and global-norm clipping.
//! - [`weights`] loads dense Hugging Face-layout base weights from GGUF or safetensors.
//! - [`apply`] puts an adapter on a loaded model unmerged, or merges it into a Hugging Face
//!   folder.
//! - [`config`] is the contract's `train_config` ([`TrainConfig`]): the coordinator checks a
//!   sweep's `train:` block with the same type, without linking this crate.
//!
//! Owns: everything from training records to a PEFT adapter on disk. Does not own: the
//! inference forward, tokenizers and loading (`flotilla-engine`), where training runs (the
//! worker process runs a train shard; `flotilla train` runs it in-process).

pub mod apply;
pub mod data;
pub mod lora;
pub mod memory;
pub mod model;
pub mod ops;
pub mod optim;
pub mod qlora;
pub mod rounds;
pub mod trainer;
pub mod weights;

/// The training configuration is part of the contract (the coordinator checks it).
pub use flotilla_contract::train_config as config;

pub use apply::{apply_adapter, load_with_adapter, merge_to_hf_dir};
pub use config::{LoraSettings, TargetModule, TrainConfig};
pub use lora::{LoraAdapter, LoraKey};
pub use trainer::{train, TrainEvent, TrainSummary, Trainer};
