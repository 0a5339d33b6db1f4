//! The pieces every model family here shares: projections ([`Linear`]), the KV cache and its
//! in-place growth, rotary tables, per-sequence positions, the attention mask of a left-padded
//! batch (causal, optionally sliding-window), and grouped-query attention.
//!
//! Fast fused ops only: nothing here records a usable backward (the training forward lives in
//! `flotilla-train`).

use super::config::{Llama3RopeScaling, ModelConfig};
use crate::error::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

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

/// Token embeddings: dense (vocab, hidden), or a GGUF's quantized rows, dequantized only for the
/// tokens looked up, as llama.cpp's get_rows does (Gemma 3 270M's Q8_0 table is 178 MB; dense
/// f32 it would be 671 MB).
#[derive(Debug, Clone)]
pub enum Embedding {
    Dense(Tensor),
    Quantized {
        weight: std::sync::Arc<QTensor>,
        device: Device,
    },
}

impl Embedding {
    /// Quantized rows stay quantized on a CPU; float tables, and every table on a GPU, are
    /// dequantized once.
    pub fn from_qtensor(q: QTensor, device: &Device) -> Result<Self> {
        let float = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if float || !device.is_cpu() || q.shape().dims().len() != 2 {
            return Ok(Embedding::Dense(q.dequantize(device)?));
        }
        Ok(Embedding::Quantized {
            weight: std::sync::Arc::new(q),
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        match self {
            Embedding::Dense(t) => t.device(),
            Embedding::Quantized { device, .. } => device,
        }
    }

    /// The rows of `ids` (a flat u32 tensor), (ids, hidden), in f32 for quantized tables.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        let (weight, device) = match self {
            Embedding::Dense(t) => return Ok(t.index_select(ids, 0)?),
            Embedding::Quantized { weight, device } => (weight, device),
        };
        let (vocab, hidden) = weight.shape().dims2()?;
        let dtype = weight.dtype();
        let row_bytes = hidden / dtype.block_size() * dtype.type_size();
        let data = weight.data()?;
        let ids = ids.to_vec1::<u32>()?;
        let mut rows = Vec::with_capacity(ids.len() * row_bytes);
        for &id in &ids {
            let id = id as usize;
            if id >= vocab {
                return Err(crate::Error::input(format!(
                    "token id {id} is outside the vocabulary ({vocab})"
                )));
            }
            rows.extend_from_slice(&data[id * row_bytes..(id + 1) * row_bytes]);
        }
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype,
            &rows,
            vec![ids.len(), hidden],
            device,
        )?;
        Ok(q.dequantize(device)?)
    }
}

/// The per-request state of a forward pass: cached keys and values for every layer, and for
/// every sequence in the batch how many left pads it has.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) pads: Vec<usize>,
    pub(crate) len: usize,
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
    rope_table(
        cfg.rope_theta,
        cfg.head_dim,
        cfg.max_position_embeddings,
        cfg.rope_scaling.as_ref(),
        freq_factors,
        device,
    )
}

/// cos and sin, (positions, head_dim / 2), for a base frequency `theta`, with Llama 3.1 scaling
/// or per-frequency divisors (Llama 3.1 GGUF `rope_freqs`, or a linear scaling factor repeated)
/// when given.
pub fn rope_table(
    theta: f32,
    head_dim: usize,
    max_positions: usize,
    scaling: Option<&Llama3RopeScaling>,
    freq_factors: Option<&[f32]>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    if let Some(rs) = scaling {
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
    let max = max_positions;
    let inv = Tensor::from_vec(inv_freq, (1, half), device)?;
    let t = Tensor::arange(0u32, max as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((max, 1))?;
    let freqs = t.matmul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// The positions of this step's `t` tokens, sequence by sequence, as (batch * t) ids: a
/// sequence's first real token (after its left pads) is position 0.
pub fn positions(cache: &KvCache, t: usize, device: &Device) -> Result<Tensor> {
    let past = cache.len;
    let mut positions = Vec::with_capacity(cache.pads.len() * t);
    for &pad in &cache.pads {
        for j in 0..t {
            positions.push((past + j).saturating_sub(pad) as u32);
        }
    }
    Ok(Tensor::from_vec(positions, cache.pads.len() * t, device)?)
}

/// The rows of a (cos, sin) table at `positions`, shaped (batch, t, half) for candle's rope.
pub fn rope_rows(
    cos: &Tensor,
    sin: &Tensor,
    positions: &Tensor,
    b: usize,
    t: usize,
) -> Result<(Tensor, Tensor)> {
    let half = cos.dim(1)?;
    Ok((
        cos.index_select(positions, 0)?.reshape((b, t, half))?,
        sin.index_select(positions, 0)?.reshape((b, t, half))?,
    ))
}

/// The additive mask over (query, key) for this step's `t` queries after what `cache` holds:
/// hides left pads and the future, and with `window` every key `window` or more positions
/// back (llama.cpp's sliding window: a query sees itself and the `window - 1` keys before it).
/// `None` when nothing needs hiding.
///
/// A pad query still sees itself: a row with every key hidden would softmax to NaN, and NaN in
/// a pad's keys and values reaches the real rows through 0 x NaN in the value product. (Our CPU
/// kernels happen to zero NaN activations; candle's CUDA matmuls do not, which is how the device
/// check found it: batched prompts after the longest one came back as a lone end-of-text token.)
pub fn attention_mask(
    cache: &KvCache,
    t: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let past = cache.len;
    let total = past + t;
    let b = cache.pads.len();
    let slides = window.is_some_and(|w| total > w);
    if t == 1 && !slides && cache.pads.iter().all(|&p| p == 0) {
        return Ok(None);
    }
    let window = window.unwrap_or(usize::MAX);
    let mut m = vec![0f32; b * t * total];
    for (bi, &pad) in cache.pads.iter().enumerate() {
        for j in 0..t {
            let query = past + j;
            let row = &mut m[(bi * t + j) * total..(bi * t + j + 1) * total];
            for (s, v) in row.iter_mut().enumerate() {
                let pad_self = query < pad && s == query;
                let hidden = s < pad || s > query || query - s >= window;
                if hidden && !pad_self {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Some(Tensor::from_vec(m, (b, 1, t, total), device)?))
}

/// A tensor's values rounded to f16 (and back), as llama.cpp's f16 KV cache and f16 attention
/// matmuls round them.
pub fn round_f16(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F16)?.to_dtype(t.dtype())?)
}

/// Scaled dot-product attention of queries (b, heads, t, d) over cached keys and values
/// (b, kv_heads, s, d), returned as (b, t, heads * d). Grouped-query attention without copying
/// keys and values per query head: the query heads of one kv group are stacked along the
/// sequence axis, (b, kv, rep * t, d). With `f16`, the attention weights are rounded to f16
/// before the value product, as llama.cpp's is.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    f16: bool,
) -> Result<Tensor> {
    let (b, heads, t, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let rep = heads / kv_heads;
    let s_len = k.dim(2)?;
    let qg = q.reshape((b, kv_heads, rep * t, d))?;
    let att = qg.matmul(&k.t()?)?;
    let att = if scale == 1.0 { att } else { (att * scale)? };
    let att = att.to_dtype(DType::F32)?.reshape((b, heads, t, s_len))?;
    let att = match mask {
        Some(m) => att.broadcast_add(m)?,
        None => att,
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(v.dtype())?;
    let att = if f16 { round_f16(&att)? } else { att };
    let y = att
        .reshape((b, kv_heads, rep * t, s_len))?
        .matmul(v)?
        .reshape((b, heads, t, d))?;
    Ok(y.transpose(1, 2)?.reshape((b, t, heads * d))?)
}

/// Positions a KV buffer grows by when full: one copy of the cache every this many decode steps,
/// and little memory held beyond what is used (batches of long prompts stay under budget).
const KV_GROWTH: usize = 64;

/// Write this step's keys and values into the layer's cache buffers, in place, and return views
/// of everything cached so far: a decode step copies its own token's keys and values, not the
/// whole cache.
pub(crate) fn append_kv(
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
    fn a_sliding_window_hides_far_keys_as_well_as_pads_and_the_future() {
        // One left pad, four queries, a window of 2: a query sees itself and one key back.
        let c = KvCache::new(1, vec![1]);
        let m = attention_mask(&c, 4, Some(2), &Device::Cpu)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let seen: Vec<Vec<usize>> = m
            .chunks(4)
            .map(|row| (0..4).filter(|&s| row[s] == 0.0).collect())
            .collect();
        assert_eq!(seen, vec![vec![0], vec![1], vec![1, 2], vec![2, 3]]);
        let global = attention_mask(&c, 4, None, &Device::Cpu).unwrap().unwrap();
        let row = global.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(row[12..16], [f32::NEG_INFINITY, 0.0, 0.0, 0.0]);
        // One decode step past the window still needs the sliding mask, not the global one.
        let mut c = KvCache::new(1, vec![0]);
        c.len = 5;
        assert!(attention_mask(&c, 1, None, &Device::Cpu).unwrap().is_none());
        assert!(attention_mask(&c, 1, Some(2), &Device::Cpu)
            .unwrap()
            .is_some());
    }

    #[test]
    fn quantized_embedding_rows_equal_the_dequantized_table() {
        let table = Tensor::randn(0f32, 1.0, (8, 64), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&table, GgmlDType::Q8_0).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let e = Embedding::from_qtensor(q, &Device::Cpu).unwrap();
        assert!(matches!(e, Embedding::Quantized { .. }));
        let ids = Tensor::new(&[5u32, 0, 5, 7], &Device::Cpu).unwrap();
        let rows = e.lookup(&ids).unwrap();
        let want = dense.index_select(&ids, 0).unwrap();
        let diff = (rows - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let past = Tensor::new(&[8u32], &Device::Cpu).unwrap();
        assert!(e.lookup(&past).is_err());
    }

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
