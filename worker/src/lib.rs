//! flotilla's engine: everything that touches a model.
//!
//! - [`loader`] finds a model (GGUF file, Hugging Face directory, `hf:` hub id in the local
//!   cache, or a demo alias) and loads weights, tokenizer and chat template.
//! - [`tokenizer`] builds tokenizers from `tokenizer.json` or GGUF metadata, splitting text the
//!   way llama.cpp does for each GGUF pre-tokenizer.
//! - [`chat`] renders chat templates with minijinja.
//! - [`models`] holds the forward passes (llama / qwen2), one file per family.
//! - [`generate`] and [`sampling`] turn prompts into completions, batched.
//! - [`embed`] computes sentence embeddings (BERT family).
//! - [`convert`] writes a GGUF model out as a dequantized Hugging Face directory.
//!
//! It works as a library in-process (`flotilla generate`, `flotilla run`) and, later, inside
//! worker processes that pull shards from the coordinator. It owns no scheduling and no
//! storage of results.

pub mod bench;
pub mod chat;
pub mod convert;
pub mod device;
pub mod embed;
pub mod error;
pub mod generate;
pub mod kernels;
pub mod loader;
pub mod models;
pub mod node;
pub mod registry;
pub mod sampling;
pub mod tokenizer;
pub mod train;

pub use chat::{ChatMessage, ChatTemplate};
pub use embed::EmbeddingModel;
pub use error::{Error, Result};
pub use generate::{Completion, FinishReason, GenerationStats, Prompt};
pub use loader::{LanguageModel, LoadOptions, ModelInfo};
pub use sampling::SamplingParams;
