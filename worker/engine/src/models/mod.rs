//! Model families, one file each, in candle's layout: a config and a forward pass per family
//! ([`llama`]: llama and qwen2; [`qwen3`]; [`gemma3`]), the pieces they share in [`layers`], and [`Model`],
//! the one type the generation path runs.

pub mod config;
pub mod gemma3;
pub mod layers;
pub mod llama;
pub mod qwen3;

use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use config::ModelConfig;
use layers::{Embedding, KvCache, Linear};

/// A loaded model of any family flotilla runs.
#[derive(Debug, Clone)]
pub enum Model {
    /// llama and qwen2.
    Llama(llama::Llama),
    Qwen3(qwen3::Qwen3),
    Gemma3(gemma3::Gemma3),
}

/// A projection of a transformer block, by its Hugging Face (PEFT) module name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Model {
    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Llama(m) => &m.config,
            Model::Qwen3(m) => &m.config,
            Model::Gemma3(m) => &m.config,
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Model::Llama(m) => m.device(),
            Model::Qwen3(m) => m.device(),
            Model::Gemma3(m) => m.device(),
        }
    }

    /// The activation dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Model::Llama(m) => m.dtype,
            Model::Qwen3(m) => m.dtype,
            Model::Gemma3(m) => m.dtype,
        }
    }

    /// An empty KV cache for a batch whose sequences have these left-pad counts.
    pub fn new_cache(&self, pads: Vec<usize>) -> KvCache {
        KvCache::new(self.config().num_layers, pads)
    }

    /// Run `tokens` (batch, seq) through the model after what `cache` already holds, and
    /// return logits (f32): for the last position only, (batch, vocab), or for every position,
    /// (batch, seq, vocab), when `all_positions` is set.
    pub fn forward(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor> {
        match self {
            Model::Llama(m) => m.forward(tokens, cache, all_positions),
            Model::Qwen3(m) => m.forward(tokens, cache, all_positions),
            Model::Gemma3(m) => m.forward(tokens, cache, all_positions),
        }
    }

    /// Whether attention operands are rounded to f16 as llama.cpp's f16 KV cache does (set for
    /// GGUF models).
    pub fn f16_attention(&self) -> bool {
        match self {
            Model::Llama(m) => m.f16_attention,
            Model::Qwen3(m) => m.f16_attention,
            Model::Gemma3(m) => m.f16_attention,
        }
    }

    pub fn set_f16_attention(&mut self, on: bool) {
        match self {
            Model::Llama(m) => m.f16_attention = on,
            Model::Qwen3(m) => m.f16_attention = on,
            Model::Gemma3(m) => m.f16_attention = on,
        }
    }

    /// Whether q/k rows are in llama.cpp's interleaved-RoPE order (a llama GGUF), so that a
    /// Hugging Face-layout adapter's q/k rows must be permuted to ride on them.
    pub fn rope_interleaved(&self) -> bool {
        match self {
            Model::Llama(m) => m.rope_interleaved,
            Model::Qwen3(_) | Model::Gemma3(_) => false,
        }
    }

    /// Projection `which` of block `layer`, to put an adapter on; `None` past the last block.
    pub fn projection_mut(&mut self, layer: usize, which: Projection) -> Option<&mut Linear> {
        match self {
            Model::Llama(m) => {
                let b = m.blocks.get_mut(layer)?;
                Some(match which {
                    Projection::Q => &mut b.q_proj,
                    Projection::K => &mut b.k_proj,
                    Projection::V => &mut b.v_proj,
                    Projection::O => &mut b.o_proj,
                    Projection::Gate => &mut b.gate_proj,
                    Projection::Up => &mut b.up_proj,
                    Projection::Down => &mut b.down_proj,
                })
            }
            Model::Qwen3(m) => {
                let b = m.blocks.get_mut(layer)?;
                Some(match which {
                    Projection::Q => &mut b.q_proj,
                    Projection::K => &mut b.k_proj,
                    Projection::V => &mut b.v_proj,
                    Projection::O => &mut b.o_proj,
                    Projection::Gate => &mut b.gate_proj,
                    Projection::Up => &mut b.up_proj,
                    Projection::Down => &mut b.down_proj,
                })
            }
            Model::Gemma3(m) => {
                let b = m.blocks.get_mut(layer)?;
                Some(match which {
                    Projection::Q => &mut b.q_proj,
                    Projection::K => &mut b.k_proj,
                    Projection::V => &mut b.v_proj,
                    Projection::O => &mut b.o_proj,
                    Projection::Gate => &mut b.gate_proj,
                    Projection::Up => &mut b.up_proj,
                    Projection::Down => &mut b.down_proj,
                })
            }
        }
    }
}

/// Where a family's constructor reads its weights: a GGUF file or a Hugging Face folder
/// (implemented by the loader). Each tensor is asked for by both its names, GGUF first; norm
/// weights come as stored, so a family whose GGUF converter shifts them (Gemma's `1 + w`)
/// checks [`WeightSource::is_gguf`].
pub trait WeightSource {
    /// True for GGUF (quantized projections, llama.cpp's tensor conventions).
    fn is_gguf(&self) -> bool;
    /// A dense tensor (norms, embeddings) with the given shape, in the source's dtype for
    /// Hugging Face weights and f32 for GGUF.
    fn dense(&mut self, gguf: &str, hf: &str, shape: &[usize]) -> Result<Tensor>;
    /// A projection `(out, in)`, quantized where the source is; `bias` names its bias tensor.
    fn linear(
        &mut self,
        gguf: &str,
        hf: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear>;
    /// The token embedding (vocab, hidden) and the output head; `tied` means the head is the
    /// embedding (both kept quantized for GGUF).
    fn embedding_and_head(
        &mut self,
        vocab: usize,
        hidden: usize,
        tied: bool,
    ) -> Result<(Embedding, Linear)>;
}
