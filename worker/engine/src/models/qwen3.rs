//! The Qwen3 (dense) inference forward pass, from GGUF or a Hugging Face folder: llama's block
//! with RMS norms on each query and key head before RoPE, no q/k/v biases, rotate-half RoPE
//! (llama.cpp's converter leaves Qwen3's q/k rows in Hugging Face order), and a head_dim of its
//! own (128 on Qwen3-0.6B, whose hidden / heads is 64). Same KV cache and batching as
//! [`super::llama`].

use super::config::ModelConfig;
use super::layers::{
    append_kv, attention, attention_mask, positions, rope_rows, rope_tables, round_f16, Embedding,
    KvCache, Linear,
};
use super::WeightSource;
use crate::error::{Error, Result};
use candle_core::{DType, Device, IndexOp, Tensor};

/// The GGUF / Hugging Face name of each Qwen3 block tensor (llama's, plus the q/k norms).
pub const BLOCK_TENSORS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// One Qwen3 block's weights.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Tensor,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Tensor,
    pub k_norm: Tensor,
    pub ffn_norm: Tensor,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// A loaded Qwen3 model, ready to run.
#[derive(Debug, Clone)]
pub struct Qwen3 {
    pub config: ModelConfig,
    /// Token embeddings (vocab, hidden).
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub norm: Tensor,
    pub lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    /// Activation dtype (f32 on CPU).
    pub dtype: DType,
    /// Round attention operands to f16 as llama.cpp's f16 KV cache does; set for GGUF.
    pub f16_attention: bool,
}

/// The (GGUF, Hugging Face) names of tensor `gguf` of block `i`.
fn names(i: usize, gguf: &str) -> (String, String) {
    let hf = BLOCK_TENSORS
        .iter()
        .find(|(g, _)| *g == gguf)
        .map_or(gguf, |(_, h)| h);
    (
        format!("blk.{i}.{gguf}.weight"),
        format!("model.layers.{i}.{hf}.weight"),
    )
}

impl Qwen3 {
    /// Load from `weights` (GGUF or Hugging Face names) with activations in `dtype`.
    pub fn load(config: ModelConfig, weights: &mut dyn WeightSource, dtype: DType) -> Result<Self> {
        let h = config.hidden_size;
        let hd = config.head_dim;
        let qd = config.num_heads * hd;
        let kvd = config.num_kv_heads * hd;
        let ff = config.intermediate_size;
        let bias = config.attention_bias;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let mut dense = |g: &str, n: usize| -> Result<Tensor> {
                let (gn, hn) = names(i, g);
                Ok(weights.dense(&gn, &hn, &[n])?.to_dtype(dtype)?)
            };
            let attn_norm = dense("attn_norm", h)?;
            let q_norm = dense("attn_q_norm", hd)?;
            let k_norm = dense("attn_k_norm", hd)?;
            let ffn_norm = dense("ffn_norm", h)?;
            let mut lin = |g: &str, out: usize, inp: usize, bias: bool| {
                let (gn, hn) = names(i, g);
                weights.linear(&gn, &hn, out, inp, bias)
            };
            blocks.push(Block {
                attn_norm,
                q_proj: lin("attn_q", qd, h, bias)?,
                k_proj: lin("attn_k", kvd, h, bias)?,
                v_proj: lin("attn_v", kvd, h, bias)?,
                o_proj: lin("attn_output", h, qd, false)?,
                q_norm,
                k_norm,
                ffn_norm,
                gate_proj: lin("ffn_gate", ff, h, false)?,
                up_proj: lin("ffn_up", ff, h, false)?,
                down_proj: lin("ffn_down", h, ff, false)?,
            });
        }
        let norm = weights
            .dense("output_norm.weight", "model.norm.weight", &[h])?
            .to_dtype(dtype)?;
        let (embed, lm_head) =
            weights.embedding_and_head(config.vocab_size, h, config.tie_word_embeddings)?;
        let (cos, sin) = rope_tables(&config, None, embed.device())?;
        Ok(Self {
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            f16_attention: weights.is_gguf(),
            config,
            embed,
            blocks,
            norm,
            lm_head,
            dtype,
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
            return Err(Error::input(format!(
                "sequence of {total} tokens is longer than the model's context ({})",
                cfg.max_position_embeddings
            )));
        }
        let pos = positions(cache, t, &device)?;
        let (cos, sin) = rope_rows(&self.cos, &self.sin, &pos, b, t)?;
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
                (&cos, &sin),
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
        (cos, sin): (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
        past: usize,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t, _) = x.dims3()?;
        let eps = cfg.rms_norm_eps as f32;
        let rms = |x: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(x, w, eps);
        let h = rms(x, &blk.attn_norm)?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, cfg.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads(blk.q_proj.forward(&h)?, cfg.num_heads)?;
        let k = heads(blk.k_proj.forward(&h)?, cfg.num_kv_heads)?;
        let v = heads(blk.v_proj.forward(&h)?, cfg.num_kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&rms(&q, &blk.q_norm)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&rms(&k, &blk.k_norm)?, cos, sin)?;
        let f16 = self.f16_attention && q.dtype() == DType::F32;
        let (q, k, v) = if f16 {
            (round_f16(&q)?, round_f16(&k)?, round_f16(&v)?)
        } else {
            (q, k, v)
        };
        let (k, v) = append_kv(cache, &k, &v, past, cfg.max_position_embeddings)?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let y = attention(&q, &k, &v, mask, scale, f16)?;
        let x = (x + blk.o_proj.forward(&y)?)?;
        let h = rms(&x, &blk.ffn_norm)?;
        let gate = candle_nn::ops::silu(&blk.gate_proj.forward(&h)?)?;
        let y = blk.down_proj.forward(&(gate * blk.up_proj.forward(&h)?)?)?;
        Ok((x + y)?)
    }
}
