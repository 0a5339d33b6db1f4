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
use crate::error::Result;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, IndexOp, Module, Tensor, D};

/// A projection: quantized (GGUF blocks, multiplied without dequantizing) or dense.
#[derive(Debug, Clone)]
pub enum Linear {
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
    Dense(candle_nn::Linear),
    /// Q4_0 / Q4_1 / Q8_0 on CPU: flotilla's own SIMD kernels ([`crate::kernels`]).
    Kernel {
        weight: std::sync::Arc<crate::kernels::QuantMatrix>,
        bias: Option<Tensor>,
    },
    /// A base projection plus an unmerged LoRA update: `base(x) + scale * (x A^T) B^T`, with
    /// A (rank, in) and B (out, rank).
    Lora {
        base: Box<Linear>,
        a: Tensor,
        b: Tensor,
        scale: f64,
    },
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Quantized { weight, bias } => {
                let y = weight.forward(x)?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Linear::Dense(l) => l.forward(x)?,
            Linear::Lora { base, a, b, scale } => {
                let y = base.forward(x)?;
                let xa = x.to_dtype(a.dtype())?.broadcast_matmul(&a.t()?)?;
                let up = (xa.broadcast_matmul(&b.t()?)? * *scale)?;
                let up = up.to_dtype(y.dtype())?;
                (y + up)?
            }
            Linear::Kernel { weight, bias } => {
                let y = x.contiguous()?.apply_op1_no_bwd(weight.as_ref())?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
        })
    }
}

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
    /// Token embeddings, dense (vocab, hidden).
    pub embed: Tensor,
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

/// The per-request state of a forward pass: cached keys and values for every layer, and for
/// every sequence in the batch how many left pads it has.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pads: Vec<usize>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a batch whose sequences have these left-pad counts.
    pub fn new(num_layers: usize, pads: Vec<usize>) -> Self {
        Self {
            layers: vec![None; num_layers],
            pads,
            len: 0,
        }
    }

    /// Positions filled so far (pads included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch_size(&self) -> usize {
        self.pads.len()
    }

    /// Keep the sequences at `keep` (indices into the current batch), in that order: drops
    /// finished sequences, and with repeated indices forks one prefix for several
    /// continuations (continuation scoring).
    pub fn retain(&mut self, keep: &[usize]) -> Result<()> {
        if keep.iter().copied().eq(0..self.pads.len()) {
            return Ok(());
        }
        let device = self
            .layers
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.device().clone());
        if let Some(device) = device {
            let idx: Vec<u32> = keep.iter().map(|&i| i as u32).collect();
            let idx = Tensor::new(idx.as_slice(), &device)?;
            for (k, v) in self.layers.iter_mut().flatten() {
                *k = k.index_select(&idx, 0)?;
                *v = v.index_select(&idx, 0)?;
            }
        }
        self.pads = keep.iter().map(|&i| self.pads[i]).collect();
        Ok(())
    }
}

/// cos and sin tables of rotary embeddings for every position (shared with the training forward).
pub fn rope_tables(
    cfg: &ModelConfig,
    freq_factors: Option<&[f32]>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let mut inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / cfg.head_dim as f32))
        .collect();
    if let Some(rs) = &cfg.rope_scaling {
        let old = rs.original_max_position_embeddings as f32;
        let low_wavelen = old / rs.low_freq_factor;
        let high_wavelen = old / rs.high_freq_factor;
        for f in inv_freq.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *f;
            if wavelen > low_wavelen {
                *f /= rs.factor;
            } else if wavelen >= high_wavelen {
                let smooth = (old / wavelen - rs.low_freq_factor)
                    / (rs.high_freq_factor - rs.low_freq_factor);
                *f = (1.0 - smooth) * *f / rs.factor + smooth * *f;
            }
        }
    }
    if let Some(factors) = freq_factors {
        for (f, d) in inv_freq.iter_mut().zip(factors) {
            *f /= d;
        }
    }
    let max = cfg.max_position_embeddings;
    let inv = Tensor::from_vec(inv_freq, (1, half), device)?;
    let t = Tensor::arange(0u32, max as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((max, 1))?;
    let freqs = t.matmul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

impl Llama {
    /// Assemble a model from loaded weights. `freq_factors` are Llama 3.1 GGUF `rope_freqs`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: ModelConfig,
        embed: Tensor,
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

        // Per-sequence positions: a sequence's first real token is position 0.
        let mut positions = Vec::with_capacity(b * t);
        for &pad in &cache.pads {
            for j in 0..t {
                positions.push((past + j).saturating_sub(pad) as u32);
            }
        }
        let positions = Tensor::from_vec(positions, b * t, &device)?;
        let half = cfg.head_dim / 2;
        let cos = self
            .cos
            .index_select(&positions, 0)?
            .reshape((b, t, half))?;
        let sin = self
            .sin
            .index_select(&positions, 0)?
            .reshape((b, t, half))?;

        // Additive mask over (query, key): hide left pads, and the future during prefill. A
        // pad query still sees itself: a row with every key hidden would softmax to NaN, and
        // NaN in a pad's keys and values reaches the real rows through 0 x NaN in the value
        // product. (Our CPU kernels happen to zero NaN activations; candle's CUDA matmuls do
        // not, which is how the device check found it: batched prompts after the longest one
        // came back as a lone end-of-text token.)
        let needs_mask = t > 1 || cache.pads.iter().any(|&p| p > 0);
        let mask = if needs_mask {
            let mut m = vec![0f32; b * t * total];
            for (bi, &pad) in cache.pads.iter().enumerate() {
                for j in 0..t {
                    let query = past + j;
                    let row = &mut m[(bi * t + j) * total..(bi * t + j + 1) * total];
                    for (s, v) in row.iter_mut().enumerate() {
                        let pad_self = query < pad && s == query;
                        if (s < pad || s > query) && !pad_self {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            Some(Tensor::from_vec(m, (b, 1, t, total), &device)?)
        } else {
            None
        };

        let flat = tokens.flatten_all()?;
        let mut x = self
            .embed
            .index_select(&flat, 0)?
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
        let r16 =
            |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F16)?.to_dtype(DType::F32)?) };
        let (q, k, v) = if f16 {
            (r16(q)?, r16(k)?, r16(v.contiguous()?)?)
        } else {
            (q, k, v)
        };
        let (k, v) = append_kv(cache, &k, &v, past, cfg.max_position_embeddings)?;

        // Grouped-query attention without copying keys and values per query head: the query
        // heads of one kv group are stacked along the sequence axis, (b, kv, rep*t, d).
        let rep = cfg.num_heads / cfg.num_kv_heads;
        let s_len = k.dim(2)?;
        let qg = q.reshape((b, cfg.num_kv_heads, rep * t, cfg.head_dim))?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let att = (qg.matmul(&k.t()?)? * scale)?
            .to_dtype(DType::F32)?
            .reshape((b, cfg.num_heads, t, s_len))?;
        let att = match mask {
            Some(m) => att.broadcast_add(m)?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(v.dtype())?;
        let att = if f16 { r16(att)? } else { att };
        let y = att
            .reshape((b, cfg.num_kv_heads, rep * t, s_len))?
            .matmul(&v)?
            .reshape((b, cfg.num_heads, t, cfg.head_dim))?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, cfg.num_heads * cfg.head_dim))?;
        let x = (x + blk.o_proj.forward(&y)?)?;

        let h = candle_nn::ops::rms_norm(&x, &blk.ffn_norm, eps)?;
        let gate = candle_nn::ops::silu(&blk.gate_proj.forward(&h)?)?;
        let up = blk.up_proj.forward(&h)?;
        let y = blk.down_proj.forward(&(gate * up)?)?;
        Ok((x + y)?)
    }
}

/// Positions a KV buffer grows by when full: one copy of the cache every this many decode steps,
/// and little memory held beyond what is used (batches of long prompts stay under budget).
const KV_GROWTH: usize = 64;

/// Write this step's keys and values into the layer's cache buffers, in place, and return views
/// of everything cached so far: a decode step copies its own token's keys and values, not the
/// whole cache.
fn append_kv(
    slot: &mut Option<(Tensor, Tensor)>,
    k: &Tensor,
    v: &Tensor,
    past: usize,
    max_len: usize,
) -> Result<(Tensor, Tensor)> {
    let (b, h, t, d) = k.dims4()?;
    let need = past + t;
    let (kb, vb) = match slot.take() {
        Some((kb, vb)) if kb.dim(2)? >= need => (kb, vb),
        old => {
            let cap = (need + KV_GROWTH).min(max_len.max(need));
            let kb = Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?;
            let vb = Tensor::zeros((b, h, cap, d), v.dtype(), v.device())?;
            if let (Some((ok, ov)), true) = (old, past > 0) {
                kb.slice_set(&ok.narrow(2, 0, past)?.contiguous()?, 2, 0)?;
                vb.slice_set(&ov.narrow(2, 0, past)?.contiguous()?, 2, 0)?;
            }
            (kb, vb)
        }
    };
    kb.slice_set(&k.contiguous()?, 2, past)?;
    vb.slice_set(&v.contiguous()?, 2, past)?;
    let views = (kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?);
    *slot = Some((kb, vb));
    Ok(views)
}

/// Logits' argmax along the last dimension, as u32 ids.
pub fn argmax_last(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_reorders_drops_and_forks_sequences() {
        let mut c = KvCache::new(1, vec![0, 3, 5]);
        let k = Tensor::arange(0f32, 3.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 1, 1, 1))
            .unwrap();
        c.layers[0] = Some((k.clone(), k));
        c.retain(&[2, 1, 0]).unwrap();
        assert_eq!(
            c.pads,
            vec![5, 3, 0],
            "a same-length permutation must not be skipped"
        );
        let (k, _) = c.layers[0].as_ref().unwrap();
        assert_eq!(
            k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![2.0, 1.0, 0.0]
        );
        c.retain(&[1]).unwrap();
        assert_eq!(c.pads, vec![3]);
        c.retain(&[0, 0]).unwrap();
        assert_eq!(c.pads, vec![3, 3]);
        assert_eq!(c.layers[0].as_ref().unwrap().0.dims4().unwrap().0, 2);
    }
}
