//! flotilla's engine: everything that touches a model, and nothing about benchmarks, training
//! or clusters.
//!
//! - [`loader`] finds a model (GGUF file, Hugging Face directory, `hf:` hub id in the local
//!   cache, or a demo alias; the resolution itself is `flotilla_contract::model_ref`) and loads
//!   weights, tokenizer and chat template.
//! - [`tokenizer`] builds tokenizers from `tokenizer.json` or GGUF metadata (gpt2-style BPE
//!   split the way llama.cpp does for each GGUF pre-tokenizer, or SentencePiece joined by score).
//! - [`chat`] renders chat templates with minijinja.
//! - [`models`] holds the inference forward passes (llama / qwen2, qwen3, gemma3), one file per
//!   family, and [`models::Model`], the enum the generation path runs.
//! - [`kernels`] is flotilla's own quantized matmul (Q4_0 / Q4_1 / Q8_0, SIMD chosen at run
//!   time).
//! - [`generate`] and [`sampling`] turn prompts into completions, batched; [`logprobs`] gives
//!   the log-probabilities of generated and prompt tokens.
//! - [`embed`] computes sentence embeddings (BERT family).
//! - [`convert`] writes a GGUF model out as a dequantized Hugging Face directory.
//! - [`device`] parses `--device` and owns the engine's thread pool.
//!
//! Used in-process by `flotilla generate / embed / serve / eval`, and by the benchmark engine
//! (`flotilla-bench`), LoRA training (`flotilla-train`) and the worker process
//! (`flotilla-worker`). It owns no scheduling and no storage of results.

pub mod chat;
pub mod convert;
pub mod device;
pub mod embed;
pub mod error;
pub mod generate;
pub mod kernels;
pub mod loader;
pub mod logprobs;
pub mod models;
pub mod sampling;
pub mod tokenizer;

pub use chat::{strip_thinking, ChatMessage, ChatTemplate};
pub use embed::EmbeddingModel;
pub use error::{Error, Result};
pub use generate::{Completion, FinishReason, GenerationStats, Prompt};
pub use loader::{LanguageModel, LoadOptions, ModelInfo};
pub use logprobs::{Candidate, TokenLogprob};
pub use sampling::SamplingParams;
