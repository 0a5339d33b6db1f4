//! The Gemma 3 (dense, text) inference forward pass, from GGUF or a Hugging Face
//! `gemma3_text` folder, with the same KV cache and left-padded batching as [`super::llama`].
//!
//! What Gemma 3 does differently from llama:
//! - token embeddings are scaled by sqrt(hidden);
//! - four RMS norms per block: before and after attention, before and after the MLP. Gemma's
//!   norm multiplies by `1 + w`; llama.cpp's converter already stores `1 + w` in the GGUF (its
//!   270M file has norm weights around 1-50, some exactly 0), so GGUF weights are used as they
//!   are and Hugging Face weights get the 1 added at load;
//! - q and k are RMS-normed per head before RoPE, and queries are scaled by
//!   `query_pre_attn_scalar^-0.5` (head_dim = 256 is not hidden / heads);
//! - five sliding-window layers (RoPE base 10 000, a window of keys) between global ones (the
//!   file's RoPE base): llama.cpp's pattern, layer `i` is global when `(i + 1) % 6 == 0`;
//! - a GELU (tanh) gated MLP, tied embeddings, and final logit soft-capping when the file sets it.
//!
//! For GGUF models, as llama.cpp on a CPU computes them: attention operands rounded to f16 (its
//! f16 KV cache), and GELU read from a table of f16 values.

use super::config::{Gemma3Attention, ModelConfig};
use super::layers::{
    append_kv, attention, attention_mask, positions, rope_rows, rope_table, round_f16, Embedding,
    KvCache, Linear,
};
use super::WeightSource;
use crate::error::{Error, Result};
use candle_core::{DType, Device, IndexOp, Tensor};

/// One Gemma 3 block's weights (norm weights are the multipliers, `1 + w` already added).
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Tensor,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Tensor,
    pub k_norm: Tensor,
    pub post_attention_norm: Tensor,
    pub ffn_norm: Tensor,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub post_ffw_norm: Tensor,
}

/// The GGUF / Hugging Face name of each Gemma 3 block tensor, in one table so loading and
/// converting cannot drift apart. (llama.cpp's `ffn_norm` is Gemma's pre-feedforward norm.)
pub const BLOCK_TENSORS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

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

/// A loaded Gemma 3 model, ready to run.
#[derive(Debug, Clone)]
pub struct Gemma3 {
    pub config: ModelConfig,
    /// Token embeddings (vocab, hidden), unscaled.
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub norm: Tensor,
    pub lm_head: Linear,
    global_rope: (Tensor, Tensor),
    local_rope: (Tensor, Tensor),
    /// Activation dtype (f32 on CPU).
    pub dtype: DType,
    /// Compute as llama.cpp does on a CPU (f16 attention operands, f16 GELU table); set for GGUF.
    pub f16_attention: bool,
}

impl Gemma3 {
    /// Load from `weights` (GGUF or Hugging Face names) with activations in `dtype`.
    pub fn load(config: ModelConfig, weights: &mut dyn WeightSource, dtype: DType) -> Result<Self> {
        let g = gemma(&config)?.clone();
        let h = config.hidden_size;
        let hd = config.head_dim;
        let qd = config.num_heads * hd;
        let kvd = config.num_kv_heads * hd;
        let ff = config.intermediate_size;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let w = &mut *weights;
            blocks.push(Block {
                attn_norm: norm_weight(w, names(i, "attn_norm"), h, dtype)?,
                q_proj: linear(w, names(i, "attn_q"), qd, h)?,
                k_proj: linear(w, names(i, "attn_k"), kvd, h)?,
                v_proj: linear(w, names(i, "attn_v"), kvd, h)?,
                o_proj: linear(w, names(i, "attn_output"), h, qd)?,
                q_norm: norm_weight(w, names(i, "attn_q_norm"), hd, dtype)?,
                k_norm: norm_weight(w, names(i, "attn_k_norm"), hd, dtype)?,
                post_attention_norm: norm_weight(w, names(i, "post_attention_norm"), h, dtype)?,
                ffn_norm: norm_weight(w, names(i, "ffn_norm"), h, dtype)?,
                gate_proj: linear(w, names(i, "ffn_gate"), ff, h)?,
                up_proj: linear(w, names(i, "ffn_up"), ff, h)?,
                down_proj: linear(w, names(i, "ffn_down"), h, ff)?,
                post_ffw_norm: norm_weight(w, names(i, "post_ffw_norm"), h, dtype)?,
            });
        }
        let names = ("output_norm.weight".into(), "model.norm.weight".into());
        let final_norm = norm_weight(weights, names, h, dtype)?;
        let (embed, lm_head) =
            weights.embedding_and_head(config.vocab_size, h, config.tie_word_embeddings)?;
        let device = embed.device().clone();
        let table = |theta: f32, factor: f32| -> Result<(Tensor, Tensor)> {
            let factors = vec![factor; hd / 2];
            let (cos, sin) = rope_table(
                theta,
                hd,
                config.max_position_embeddings,
                None,
                (factor != 1.0).then_some(factors.as_slice()),
                &device,
            )?;
            Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
        };
        let global_rope = table(config.rope_theta, g.rope_global_factor)?;
        let local_rope = table(g.rope_local_theta, 1.0)?;
        Ok(Self {
            config,
            embed,
            blocks,
            norm: final_norm,
            lm_head,
            global_rope,
            local_rope,
            dtype,
            f16_attention: weights.is_gguf(),
        })
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    fn gemma(&self) -> Result<&Gemma3Attention> {
        gemma(&self.config)
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
        let g = self.gemma()?;
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
        let global = rope_rows(&self.global_rope.0, &self.global_rope.1, &pos, b, t)?;
        let local = rope_rows(&self.local_rope.0, &self.local_rope.1, &pos, b, t)?;
        let global_mask = attention_mask(cache, t, None, &device)?;
        let local_mask = attention_mask(cache, t, Some(g.sliding_window), &device)?;

        // Hugging Face scales by sqrt(hidden) in the activation dtype; llama.cpp in f32.
        let mut scale = (cfg.hidden_size as f64).sqrt();
        if self.dtype == DType::BF16 {
            scale = half::bf16::from_f64(scale).to_f64();
        }
        let flat = tokens.flatten_all()?;
        let mut x = (self
            .embed
            .lookup(&flat)?
            .reshape((b, t, cfg.hidden_size))?
            .to_dtype(self.dtype)?
            * scale)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let (rope, mask) = if g.is_sliding(i) {
                (&local, local_mask.as_ref())
            } else {
                (&global, global_mask.as_ref())
            };
            x = self.block_forward(block, &x, rope, mask, &mut cache.layers[i], past)?;
        }
        cache.len = total;

        let x = if all_positions {
            x
        } else {
            x.i((.., t - 1..t, ..))?.contiguous()?
        };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, cfg.rms_norm_eps as f32)?;
        let mut logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        if let Some(cap) = g.final_logit_softcapping {
            logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
        }
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
        (cos, sin): &(Tensor, Tensor),
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
        past: usize,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let g = self.gemma()?;
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
        let q = (q * (g.query_pre_attn_scalar as f64).powf(-0.5))?;
        let f16 = self.f16_attention && q.dtype() == DType::F32;
        let (q, k, v) = if f16 {
            (round_f16(&q)?, round_f16(&k)?, round_f16(&v)?)
        } else {
            (q, k, v)
        };
        let (k, v) = append_kv(cache, &k, &v, past, cfg.max_position_embeddings)?;
        let y = attention(&q, &k, &v, mask, 1.0, f16)?;
        let y = rms(&blk.o_proj.forward(&y)?, &blk.post_attention_norm)?;
        let x = (x + y)?;

        let h = rms(&x, &blk.ffn_norm)?;
        let gate = blk.gate_proj.forward(&h)?;
        let gate = if f16 {
            // llama.cpp's CPU GELU reads a table of f16 inputs and outputs.
            round_f16(&round_f16(&gate)?.gelu()?)?
        } else {
            gate.gelu()?
        };
        let y = blk.down_proj.forward(&(gate * blk.up_proj.forward(&h)?)?)?;
        let y = rms(&y, &blk.post_ffw_norm)?;
        Ok((x + y)?)
    }
}

/// A norm's multiplier: Gemma's norm is `x * (1 + w)`; llama.cpp's converter stored `1 + w`
/// in the GGUF, a Hugging Face folder stores `w` (the 1 is added in f32, then cast).
fn norm_weight(
    weights: &mut dyn WeightSource,
    (gguf, hf): (String, String),
    n: usize,
    dtype: DType,
) -> Result<Tensor> {
    let w = weights.dense(&gguf, &hf, &[n])?;
    if weights.is_gguf() {
        Ok(w.to_dtype(dtype)?)
    } else {
        Ok((w.to_dtype(DType::F32)? + 1.0)?.to_dtype(dtype)?)
    }
}

/// A bias-free projection `(out, in)`.
fn linear(
    weights: &mut dyn WeightSource,
    (gguf, hf): (String, String),
    out: usize,
    inp: usize,
) -> Result<Linear> {
    weights.linear(&gguf, &hf, out, inp, false)
}

fn gemma(config: &ModelConfig) -> Result<&Gemma3Attention> {
    config
        .gemma3
        .as_ref()
        .ok_or_else(|| Error::input("a gemma3 model's config has no sliding-window layout"))
}

/// Gemma's chat template (Google's, text only), for GGUF files that ship none: llama.cpp
/// falls back to the same turns (`<start_of_turn>user ... <end_of_turn>`).
pub const CHAT_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim -}}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;
