//! The llama / qwen2 inference forward pass, for quantized (GGUF) and dense (safetensors)
//! weights alike, with a KV cache and real batching.
//!
//! Batching: prompts of different lengths are left-padded to one length; each sequence keeps
//! its own pad count, so its positions start at 0 on its first real token and an additive mask
//! hides the pads from attention. Finished sequences can be dropped from the cache
//! ([`KvCache::retain`]) so the rest run without them.
//!
//! This is the fast path (fused rms_norm, rope, softmax): it records no usable backward and
//! must not be used for training.

use super::config::ModelConfig;
use super::layers::{append_kv, attention, attention_mask, positions, rope_rows, round_f16};
use crate::error::Result;
use candle_core::{DType, Device, IndexOp, Tensor};

// The shared pieces, where callers have always found them.
pub use super::layers::{argmax_last, rope_tables, Embedding, KvCache, Linear};

/// One transformer block's weights.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Tensor,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub ffn_norm: Tensor,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// A loaded llama-family model, ready to run.
#[derive(Debug, Clone)]
pub struct Llama {
    pub config: ModelConfig,
    /// Token embeddings (vocab, hidden).
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub norm: Tensor,
    pub lm_head: Linear,
    /// Rotate adjacent pairs (GGUF llama, whose q/k rows llama.cpp's converter permuted) rather
    /// than the two halves of each head (Hugging Face layout, GGUF qwen2).
    pub rope_interleaved: bool,
    cos: Tensor,
    sin: Tensor,
    /// Activation dtype (f32 on CPU).
    pub dtype: DType,
    /// Round queries, keys, values and attention weights to f16, as llama.cpp's f16 KV cache
    /// and f16 attention matmuls do. Set for GGUF models, so greedy decoding follows
    /// llama.cpp through near-ties; off for Hugging Face weights (transformers keeps f32).
    pub f16_attention: bool,
}

impl Llama {
    /// Assemble a model from loaded weights. `freq_factors` are Llama 3.1 GGUF `rope_freqs`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: ModelConfig,
        embed: Embedding,
        blocks: Vec<Block>,
        norm: Tensor,
        lm_head: Linear,
        rope_interleaved: bool,
        freq_factors: Option<&[f32]>,
        dtype: DType,
    ) -> Result<Self> {
        let device = embed.device().clone();
        let (cos, sin) = rope_tables(&config, freq_factors, &device)?;
        Ok(Self {
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            config,
            embed,
            blocks,
            norm,
            lm_head,
            rope_interleaved,
            dtype,
            f16_attention: false,
        })
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
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
        let (b, t) = tokens.dims2()?;
        let cfg = &self.config;
        let device = self.device().clone();
        let past = cache.len;
        let total = past + t;
        if total > cfg.max_position_embeddings {
            return Err(crate::Error::input(format!(
                "sequence of {total} tokens is longer than the model's context ({})",
                cfg.max_position_embeddings
            )));
        }

        let positions = positions(cache, t, &device)?;
        let (cos, sin) = rope_rows(&self.cos, &self.sin, &positions, b, t)?;
        let mask = attention_mask(cache, t, None, &device)?;

        let flat = tokens.flatten_all()?;
        let mut x = self
            .embed
            .lookup(&flat)?
            .reshape((b, t, cfg.hidden_size))?
            .to_dtype(self.dtype)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = self.block_forward(
                block,
                &x,
                &cos,
                &sin,
                mask.as_ref(),
                &mut cache.layers[i],
                past,
            )?;
        }
        cache.len = total;

        let x = if all_positions {
            x
        } else {
            x.i((.., t - 1..t, ..))?.contiguous()?
        };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, cfg.rms_norm_eps as f32)?;
        let logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        Ok(if all_positions {
            logits
        } else {
            logits.squeeze(1)?
        })
    }

    fn block_forward(
        &self,
        blk: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
        past: usize,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t, _) = x.dims3()?;
        let eps = cfg.rms_norm_eps as f32;
        let h = candle_nn::ops::rms_norm(x, &blk.attn_norm, eps)?;

        let q = blk.q_proj.forward(&h)?;
        let k = blk.k_proj.forward(&h)?;
        let v = blk.v_proj.forward(&h)?;
        let q = q
            .reshape((b, t, cfg.num_heads, cfg.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = k
            .reshape((b, t, cfg.num_kv_heads, cfg.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = v
            .reshape((b, t, cfg.num_kv_heads, cfg.head_dim))?
            .transpose(1, 2)?;
        let (q, k) = if self.rope_interleaved {
            (
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            )
        } else {
            (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            )
        };
        let f16 = self.f16_attention && q.dtype() == DType::F32;
        let (q, k, v) = if f16 {
            (round_f16(&q)?, round_f16(&k)?, round_f16(&v.contiguous()?)?)
        } else {
            (q, k, v)
        };
        let (k, v) = append_kv(cache, &k, &v, past, cfg.max_position_embeddings)?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let y = attention(&q, &k, &v, mask, scale, f16)?;
        let x = (x + blk.o_proj.forward(&y)?)?;

        let h = candle_nn::ops::rms_norm(&x, &blk.ffn_norm, eps)?;
        let gate = candle_nn::ops::silu(&blk.gate_proj.forward(&h)?)?;
        let up = blk.up_proj.forward(&h)?;
        let y = blk.down_proj.forward(&(gate * up)?)?;
        Ok((x + y)?)
    }
}
