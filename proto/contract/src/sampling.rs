//! Sampling settings: how a model generates (the sampler itself lives in the engine).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How to generate. `temperature == 0` is greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`
    /// (1.0 turns it off).
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 turns it off).
    pub top_k: usize,
    /// Divide positive (multiply negative) logits of tokens already in the sequence by this
    /// (1.0 turns it off), as transformers does.
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Tokens to generate at most (`--max-tokens`, the sweep's `generation.max_tokens`).
    #[serde(alias = "max_new_tokens")]
    pub max_tokens: usize,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks that need exact lengths).
    pub ignore_eos: bool,
    /// Benchmarks: answers per case (`--samples`, the sweep's `generation.samples`), sample
    /// `i` drawn with seed `seed + i`; more than one needs `temperature > 0`. The engine
    /// itself generates one sequence per prompt and ignores it.
    pub samples: usize,
    /// A thinking model's switch (Qwen3): rendered into the chat template as `enable_thinking`
    /// when set (`false` answers without a think block); `None` leaves the template's default.
    /// Answers are judged with any `<think>` block stripped either way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_thinking: Option<bool>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 0,
            max_tokens: 128,
            stop: Vec::new(),
            ignore_eos: false,
            samples: 1,
            enable_thinking: None,
        }
    }
}

impl SamplingParams {
    /// Check ranges; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::input(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::input(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::input(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            )));
        }
        if self.max_tokens == 0 {
            return Err(Error::input("max_tokens must be at least 1"));
        }
        if self.samples == 0 {
            return Err(Error::input("samples must be at least 1"));
        }
        if self.samples > 1 && self.temperature == 0.0 {
            return Err(Error::input(format!(
                "samples {} needs temperature > 0: greedy decoding gives the same answer every time",
                self.samples
            )));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::input("a stop string must not be empty"));
        }
        Ok(())
    }
}
