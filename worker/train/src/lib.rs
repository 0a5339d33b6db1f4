//! LoRA fine-tuning on one worker (flotilla-train).
//!
//! - [`data`] turns chat / prompt-completion JSONL into token batches with a loss mask on the
//!   assistant tokens (padding or packing, seeded shuffling, a resumable position).
//! - [`lora`] holds the adapter: configuration, PEFT layout on disk, merge.
//! - [`model`] is a differentiable llama / qwen2 forward whose projections carry LoRA; it uses
//!   only ops that record a backward (candle's fused rms_norm, softmax_last_dim, rope and
//!   quantized matmul record none).
//! - [`trainer`] runs AdamW with warmup + cosine, accumulation, clipping, checkpoints, resume.

pub mod apply;
pub mod data;
pub mod lora;
pub mod model;
pub mod optim;
pub mod trainer;
pub mod weights;

/// The training configuration is part of the contract (the coordinator checks it).
pub use flotilla_contract::train_config as config;

pub use apply::{apply_adapter, load_with_adapter, merge_to_hf_dir};
pub use config::{LoraSettings, TargetModule, TrainConfig};
pub use lora::{LoraAdapter, LoraKey};
pub use trainer::{train, TrainEvent, TrainSummary, Trainer};
