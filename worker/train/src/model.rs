//! The differentiable llama / qwen2 forward used for training, beside the inference one in
//! [`flotilla_engine::models::llama`] and sharing its configuration and RoPE tables.
//!
//! Every op here records a backward. candle 0.11's fused `rms_norm`, `softmax_last_dim`,
//! `rope*` and quantized matmul record none (backward succeeds, the gradient is silently
//! missing), so this file spells them out with primitive ops: RMS norm from `sqr`/`mean`/
//! `sqrt`, softmax as `candle_nn::ops::softmax` over the last dimension, rotate-half RoPE
//! from `narrow`/`cat`. Base weights are plain tensors (frozen, dequantized); only the LoRA
//! matrices are [`Var`]s.
//!
//! Frozen projections and attention go through the custom ops of [`super::ops`] (input
//! gradient only; attention recomputed in the backward), or their compositions of candle ops.
//!
//! Mixed precision (`precision: bf16`): the frozen weights, the embeddings and the residual
//! stream are bf16 and the projections multiply in bf16; the LoRA matrices (the `Var`s the
//! optimizer updates) stay f32 and their product is computed in f32 from the bf16 input;
//! RMS norm, attention's softmax and the loss run in f32. bf16 keeps f32's exponent range, so
//! no loss scaling is needed.

use super::config::{LoraSettings, TargetModule};
use super::data::Batch;
use super::lora::{LoraAdapter, LoraKey};
use super::ops::{attention, frozen_matmul};
use super::qlora::FrozenWeight;
use super::weights::BaseWeights;

mod checkpoint;
use candle_core::{DType, Device, Tensor, Var, D};
pub use checkpoint::Grads;
use flotilla_engine::error::{Error, Result};
use flotilla_engine::models::config::ModelConfig;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// One LoRA pair: `A` (rank, in) and `B` (out, rank).
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
}

/// A frozen projection, optionally carrying LoRA.
#[derive(Debug, Clone)]
pub struct TrainLinear {
    pub weight: FrozenWeight,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraPair>,
}

impl TrainLinear {
    /// `x` is (n, in), in the weights' dtype; returns (n, out) in that dtype. `dropout` is a
    /// 0/1-scaled mask for the LoRA input. The LoRA product is computed in f32 (the dtype of
    /// its matrices) and added back in the weights' dtype.
    fn forward(&self, x: &Tensor, scaling: f64, dropout: Option<&Tensor>) -> Result<Tensor> {
        let mut y = self.weight.matmul(x)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            let xin = x.to_dtype(DType::F32)?;
            let xin = match dropout {
                Some(m) => (xin * m)?,
                None => xin,
            };
            let down = xin.matmul(&l.a.as_tensor().t()?)?;
            let up = down.matmul(&l.b.as_tensor().t()?)?;
            let dtype = y.dtype();
            y = (y + (up * scaling)?.to_dtype(dtype)?)?;
        }
        Ok(y)
    }
}

#[derive(Debug, Clone)]
struct TrainBlock {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    proj: BTreeMap<TargetModule, TrainLinear>,
}

/// What every block of one batch shares: RoPE tables and the attention mask.
struct BatchContext {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    b: usize,
    t: usize,
}

/// A llama / qwen2 model whose projections carry LoRA adapters.
pub struct TrainModel {
    pub config: ModelConfig,
    embed: Tensor,
    blocks: Vec<TrainBlock>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    pub lora: LoraSettings,
    scaling: f64,
    modules: Vec<TargetModule>,
    /// The dtype of the frozen weights and the activations (f32 or bf16).
    pub dtype: DType,
}

/// PEFT's default initialisation of `A`: kaiming-uniform with a = sqrt(5), i.e. uniform in
/// +-1/sqrt(in_features).
fn init_a(
    rank: usize,
    inp: usize,
    rng: &mut rand::rngs::StdRng,
    device: &Device,
) -> Result<Tensor> {
    let bound = 1.0 / (inp as f32).sqrt();
    let v: Vec<f32> = (0..rank * inp)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Ok(Tensor::from_vec(v, (rank, inp), device)?)
}

/// RMS norm with primitive ops (the fused one records no backward), computed in f32 (`w` is
/// f32) and returned in `x`'s dtype.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?.to_dtype(dtype)?)
}

/// Rotate-half RoPE (Hugging Face layout); `cos`/`sin` are (b, 1, t, d/2).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[a, b], D::Minus1)?)
}

impl TrainModel {
    /// Build from dense base weights, with fresh adapters (A as PEFT initialises it, B zero)
    /// drawn from `seed`, training in f32.
    pub fn new(base: BaseWeights, lora: &LoraSettings, seed: u64) -> Result<Self> {
        Self::with_dtype(base, lora, seed, DType::F32)
    }

    /// [`TrainModel::new`] with the frozen weights and activations in `dtype` (f32 or bf16);
    /// the adapters stay f32.
    pub fn with_dtype(
        mut base: BaseWeights,
        lora: &LoraSettings,
        seed: u64,
        dtype: DType,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(Error::input(format!(
                "training runs in f32 or bf16, not {dtype:?}"
            )));
        }
        let modules = lora.modules()?;
        let cfg = base.config.clone();
        let device = base.get("model.embed_tokens.weight")?.device().clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let mut proj = BTreeMap::new();
            for m in TargetModule::ALL {
                let name = format!("{p}.{}.weight", m.path());
                let weight = match base.quantized.remove(&name) {
                    Some(qw) => {
                        let out = qw.q.shape().dims2()?.0;
                        let order = match qw.heads {
                            Some(heads) => Some(Tensor::new(
                                super::weights::hf_row_order(out, heads).as_slice(),
                                &device,
                            )?),
                            None => None,
                        };
                        FrozenWeight::quantized(qw.q, order)?
                    }
                    None => FrozenWeight::Dense(base.take(&name)?.to_dtype(dtype)?),
                };
                let bias = base
                    .tensors
                    .remove(&format!("{p}.{}.bias", m.path()))
                    .map(|b| b.to_dtype(dtype))
                    .transpose()?;
                let (out, inp) = weight.dims()?;
                let lora_pair = if modules.contains(&m) {
                    let a = init_a(lora.rank, inp, &mut rng, &device)?;
                    let b = Tensor::zeros((out, lora.rank), DType::F32, &device)?;
                    Some(LoraPair {
                        a: Var::from_tensor(&a)?,
                        b: Var::from_tensor(&b)?,
                    })
                } else {
                    None
                };
                proj.insert(
                    m,
                    TrainLinear {
                        weight,
                        bias,
                        lora: lora_pair,
                    },
                );
            }
            blocks.push(TrainBlock {
                attn_norm: base.take(&format!("{p}.input_layernorm.weight"))?,
                ffn_norm: base.take(&format!("{p}.post_attention_layernorm.weight"))?,
                proj,
            });
        }
        let embed = base.take("model.embed_tokens.weight")?.to_dtype(dtype)?;
        let norm = base.take("model.norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            base.take("lm_head.weight")?.to_dtype(dtype)?
        };
        let (cos, sin) = flotilla_engine::models::llama::rope_tables(
            &cfg,
            base.freq_factors.as_deref(),
            &device,
        )?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        Ok(Self {
            dtype,
            config: cfg,
            embed,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
            scaling: lora.scaling(),
            lora: lora.clone(),
            modules,
        })
    }

    /// Bytes held by the frozen tensors (projections, norms, embeddings, lm_head once when
    /// tied, RoPE tables): what the precision changes.
    pub fn frozen_bytes(&self) -> usize {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let mut n = size(&self.embed) + size(&self.norm) + size(&self.cos) + size(&self.sin);
        if !self.config.tie_word_embeddings {
            n += size(&self.lm_head);
        }
        for b in &self.blocks {
            n += size(&b.attn_norm) + size(&b.ffn_norm);
            for p in b.proj.values() {
                n += p.weight.bytes() + p.bias.as_ref().map_or(0, size);
            }
        }
        n
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// The LoRA variables in a fixed order (layer, then module; A before B).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (m, lin) in &b.proj {
                if let Some(l) = &lin.lora {
                    let key = LoraKey {
                        layer: i,
                        module: *m,
                    };
                    out.push((key.peft_name("lora_A"), l.a.clone()));
                    out.push((key.peft_name("lora_B"), l.b.clone()));
                }
            }
        }
        out
    }

    /// The adapter as it stands, for saving or inference.
    pub fn adapter(&self, base_model: &str) -> Result<LoraAdapter> {
        let mut weights = BTreeMap::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (m, lin) in &b.proj {
                if let Some(l) = &lin.lora {
                    weights.insert(
                        LoraKey {
                            layer: i,
                            module: *m,
                        },
                        (l.a.as_tensor().copy()?, l.b.as_tensor().copy()?),
                    );
                }
            }
        }
        Ok(LoraAdapter::new(&self.lora, base_model, weights))
    }

    /// Overwrite the LoRA variables with `adapter`'s (a checkpoint being resumed); shapes and
    /// modules must match.
    pub fn load_adapter(&self, adapter: &LoraAdapter) -> Result<()> {
        for (i, b) in self.blocks.iter().enumerate() {
            for (m, lin) in &b.proj {
                let key = LoraKey {
                    layer: i,
                    module: *m,
                };
                match (&lin.lora, adapter.weights.get(&key)) {
                    (Some(l), Some((a, bb))) => {
                        l.a.set(&a.to_device(self.device())?)?;
                        l.b.set(&bb.to_device(self.device())?)?;
                    }
                    (None, None) => {}
                    _ => {
                        return Err(Error::input(format!(
                            "adapter does not match the training config at layer {i} {}",
                            m.name()
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// Target modules carrying LoRA.
    pub fn modules(&self) -> &[TargetModule] {
        &self.modules
    }

    /// Rotary tables and the attention mask of a batch, shared by every block.
    fn context(&self, batch: &Batch) -> Result<BatchContext> {
        let cfg = &self.config;
        let dev = self.device().clone();
        let (b, t) = (batch.rows, batch.seq_len);
        let n = b * t;
        // Rotary tables per token position, (b, 1, t, d/2).
        let pos = Tensor::from_slice(&batch.positions, n, &dev)?;
        let half = cfg.head_dim / 2;
        let cos = self.cos.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
        // Causal mask within each segment, (b, 1, t, t).
        let mut mask = vec![0f32; b * t * t];
        for r in 0..b {
            let seg = &batch.segments[r * t..(r + 1) * t];
            for i in 0..t {
                for j in 0..t {
                    if j > i || seg[i] != seg[j] {
                        mask[(r * t + i) * t + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, t), &dev)?;
        Ok(BatchContext {
            cos,
            sin,
            mask,
            b,
            t,
        })
    }

    /// The embeddings of a batch's tokens, (rows * seq, hidden).
    fn embed_tokens(&self, batch: &Batch) -> Result<Tensor> {
        let ids = Tensor::from_slice(&batch.input_ids, batch.rows * batch.seq_len, self.device())?;
        Ok(self.embed.index_select(&ids, 0)?)
    }

    /// Block `layer` applied to `x`. Dropout masks are drawn from (`dropout_seed`, `layer`),
    /// so a block recomputed for checkpointing draws the masks of its first forward.
    fn block(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &BatchContext,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let blk = &self.blocks[layer];
        let dev = self.device().clone();
        let (b, t) = (ctx.b, ctx.t);
        let n = b * t;
        let heads = cfg.num_heads;
        let kv = cfg.num_kv_heads;
        let hd = cfg.head_dim;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut rng = dropout_seed.filter(|_| self.lora.dropout > 0.0).map(|s| {
            rand::rngs::SmallRng::seed_from_u64(
                s ^ (layer as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            )
        });
        let p = self.lora.dropout;
        let mut drop_mask = |rows: usize, cols: usize| -> Result<Option<Tensor>> {
            let Some(rng) = rng.as_mut() else {
                return Ok(None);
            };
            let keep = 1.0 / (1.0 - p);
            let v: Vec<f32> = (0..rows * cols)
                .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
                .collect();
            Ok(Some(Tensor::from_vec(v, (rows, cols), &dev)?))
        };
        let proj = |m: TargetModule, inp: &Tensor, d: Option<&Tensor>| -> Result<Tensor> {
            blk.proj[&m].forward(inp, self.scaling, d)
        };

        let h = rms_norm(x, &blk.attn_norm, cfg.rms_norm_eps)?;
        let hid = h.dim(1)?;
        let dq = drop_mask(n, hid)?;
        let dk = drop_mask(n, hid)?;
        let dv = drop_mask(n, hid)?;
        let q = proj(TargetModule::QProj, &h, dq.as_ref())?
            .reshape((b, t, heads, hd))?
            .transpose(1, 2)?;
        let k = proj(TargetModule::KProj, &h, dk.as_ref())?
            .reshape((b, t, kv, hd))?
            .transpose(1, 2)?;
        let v = proj(TargetModule::VProj, &h, dv.as_ref())?
            .reshape((b, t, kv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = rope(&q.contiguous()?, &ctx.cos, &ctx.sin)?;
        let k = rope(&k.contiguous()?, &ctx.cos, &ctx.sin)?;
        // Grouped-query attention without copying keys: the `group` query heads sharing a
        // key head are stacked along the time axis.
        let o = if self.dtype == DType::F32 {
            attention(&q, &k, &v, &ctx.mask, scale, kv)?
        } else {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            attention(&f(&q)?, &f(&k)?, &f(&v)?, &ctx.mask, scale, kv)?.to_dtype(self.dtype)?
        };
        let o = o.transpose(1, 2)?.reshape((n, heads * hd))?;
        let d_o = drop_mask(n, heads * hd)?;
        let x = (x + proj(TargetModule::OProj, &o, d_o.as_ref())?)?;

        let h2 = rms_norm(&x, &blk.ffn_norm, cfg.rms_norm_eps)?;
        let dg = drop_mask(n, hid)?;
        let du = drop_mask(n, hid)?;
        let g = proj(TargetModule::GateProj, &h2, dg.as_ref())?.silu()?;
        let u = proj(TargetModule::UpProj, &h2, du.as_ref())?;
        let gu = (g * u)?;
        let dd = drop_mask(n, gu.dim(1)?)?;
        Ok((&x + proj(TargetModule::DownProj, &gu, dd.as_ref())?)?)
    }

    /// Final hidden states for a batch, (rows * seq, hidden). `dropout_seed` draws LoRA
    /// dropout masks (none when the config's dropout is 0 or the seed is `None`, as in eval).
    pub fn hidden(&self, batch: &Batch, dropout_seed: Option<u64>) -> Result<Tensor> {
        let ctx = self.context(batch)?;
        let mut x = self.embed_tokens(batch)?;
        for layer in 0..self.blocks.len() {
            x = self.block(layer, &x, &ctx, dropout_seed)?;
        }
        rms_norm(&x, &self.norm, self.config.rms_norm_eps)
    }

    /// Logits (n, vocab) for the given hidden rows.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        frozen_matmul(hidden, &self.lm_head)
    }

    /// Summed negative log-likelihood of the batch's target tokens, and a scalar whose
    /// gradient is that of the sum divided by `normalizer` (the target tokens of the whole
    /// accumulated step). Only rows with a target reach the lm_head.
    ///
    /// The cross-entropy over the vocabulary is not recorded as a graph: for each chunk of
    /// rows it computes the logits, the loss and their gradient `(softmax - onehot) * w / N`
    /// directly, multiplies back through the frozen lm_head, and returns the surrogate
    /// `sum(hidden * grad)`, whose gradient with respect to the hidden states is exactly that.
    /// The (rows x vocab) logits then live one chunk at a time instead of five times over for
    /// every op of a recorded log-softmax. The scalar's value is not the loss; the sum is.
    pub fn loss(
        &self,
        batch: &Batch,
        normalizer: f64,
        dropout_seed: Option<u64>,
    ) -> Result<(Tensor, f64)> {
        if !batch.loss_mask.iter().any(|&m| m > 0.0) {
            return Err(Error::input("a training batch has no target tokens"));
        }
        let hidden = self.hidden(batch, dropout_seed)?;
        self.loss_from_hidden(&hidden, batch, normalizer)
    }

    /// [`TrainModel::loss`] from the final hidden states.
    fn loss_from_hidden(
        &self,
        hidden: &Tensor,
        batch: &Batch,
        normalizer: f64,
    ) -> Result<(Tensor, f64)> {
        use rayon::prelude::*;
        let dev = self.device().clone();
        let rows: Vec<u32> = batch
            .loss_mask
            .iter()
            .enumerate()
            .filter(|(_, &m)| m > 0.0)
            .map(|(i, _)| i as u32)
            .collect();
        if rows.is_empty() {
            return Err(Error::input("a training batch has no target tokens"));
        }
        let idx = Tensor::from_vec(rows.clone(), rows.len(), &dev)?;
        let picked = hidden.index_select(&idx, 0)?;
        let fixed = picked.detach();
        let vocab = self.lm_head.dim(0)?;
        let mut total = 0f64;
        let mut grads = Vec::new();
        const CHUNK: usize = 256;
        for start in (0..rows.len()).step_by(CHUNK) {
            let len = CHUNK.min(rows.len() - start);
            let h = fixed.narrow(0, start, len)?;
            let logits = h.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?;
            let mut data = logits.flatten_all()?.to_vec1::<f32>()?;
            let spans: Vec<(u32, f32)> = rows[start..start + len]
                .iter()
                .map(|&r| (batch.targets[r as usize], batch.loss_mask[r as usize]))
                .collect();
            let scale = 1.0 / normalizer as f32;
            let nll: f64 = data
                .par_chunks_mut(vocab)
                .zip(spans.par_iter())
                .map(|(row, &(target, w))| {
                    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let target_logit = row[target as usize];
                    let mut sum = 0f64;
                    for x in row.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x as f64;
                    }
                    let nll = sum.ln() - (target_logit - max) as f64;
                    let s = w * scale;
                    let k = (s as f64 / sum) as f32;
                    for x in row.iter_mut() {
                        *x *= k;
                    }
                    row[target as usize] -= s;
                    nll * w as f64
                })
                .sum();
            total += nll;
            let g = Tensor::from_vec(data, (len, vocab), &dev)?.to_dtype(self.dtype)?;
            grads.push(g.matmul(&self.lm_head)?);
        }
        let g = Tensor::cat(&grads, 0)?;
        let surrogate = (picked * g)?.sum_all()?;
        Ok((surrogate, total))
    }
}
