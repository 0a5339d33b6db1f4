//! The training forward's two custom ops, and their compositions of candle ops.
//!
//! - [`FrozenMatmul`]: `x @ w^T` for a frozen `w` whose backward returns the input gradient
//!   only (candle's matmul backward always computes the weight gradient too, a full extra
//!   matmul per projection and per lm_head that training would throw away).
//! - [`Attention`]: causal grouped-query attention that keeps only its inputs for the
//!   backward and recomputes the probabilities there.
//!
//! Both implement only `cpu_fwd`. On any other device, or with `FLOTILLA_COMPOSED_OPS=1`, the
//! same maths runs as a composition of candle ops, which candle runs and differentiates on
//! CUDA and Metal; the tests below prove on CPU that the composition gives the custom ops'
//! values and gradients, so a GPU's correctness rests on candle's own kernels.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, D};
use flotilla_engine::error::Result;

/// Whether `FLOTILLA_COMPOSED_OPS` asks for the compositions on CPU too (`1`, `true`).
pub fn composed_ops() -> bool {
    static COMPOSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COMPOSED.get_or_init(|| {
        std::env::var("FLOTILLA_COMPOSED_OPS")
            .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
            .unwrap_or(false)
    })
}

/// `x (n, in) @ w^T (in, out)` with a backward for `x` only (`w` is frozen).
struct FrozenMatmul {
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = storage.as_slice::<f32>()?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-matmul: input not contiguous".into()))?;
        let x = Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(v), shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

/// `x @ w^T` for a frozen `w`; `x` is (n, in).
pub(crate) fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    frozen_matmul_with(x, w, composed_ops())
}

/// [`frozen_matmul`], the custom op (CPU, f32) or the composition (`composed`, or any other
/// device or dtype): a plain matmul, whose weight gradient candle computes and drops.
pub(crate) fn frozen_matmul_with(x: &Tensor, w: &Tensor, composed: bool) -> Result<Tensor> {
    if !composed && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })?)
    } else {
        Ok(x.matmul(&w.t()?)?)
    }
}

/// Causal grouped-query attention that stores nothing for its backward but its inputs: the
/// (heads x t x t) scores and probabilities are recomputed in the backward instead of being
/// kept for every layer, which is what bounds memory at long sequences.
///
/// q is (b, heads, t, d), k and v are (b, kv_heads, t, d); the output is (b, heads, t, d).
struct Attention {
    /// Additive mask, (b, 1, t, t): 0 where attention is allowed, -inf elsewhere.
    mask: Tensor,
    scale: f64,
    kv_heads: usize,
}

fn tensor_of(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let data = s.as_slice::<f32>()?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("attention: input not contiguous".into()))?;
    Tensor::from_slice(&data[a..b], l.shape(), &Device::Cpu)
}

impl Attention {
    /// Probabilities, grouped as (b, kv, group * t, t).
    fn probs(&self, q: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        let kv = self.kv_heads;
        let qg = q.reshape((b, kv, (h / kv) * t, d))?;
        let s = (qg.matmul(&k.t()?)? * self.scale)?
            .reshape((b, h, t, t))?
            .broadcast_add(&self.mask)?;
        candle_nn::ops::softmax_last_dim(&s)?.reshape((b, kv, (h / kv) * t, t))
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        self.probs(q, k)?.matmul(v)?.reshape((b, h, t, d))
    }
}

impl candle_core::CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "recomputing-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.forward(
            &tensor_of(s1, l1)?,
            &tensor_of(s2, l2)?,
            &tensor_of(s3, l3)?,
        )?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let (b, h, t, d) = q.dims4()?;
        let kv = self.kv_heads;
        let gt = (h / kv) * t;
        let p = self.probs(&q, &k)?; // (b, kv, gt, t)
        let go = grad.detach().contiguous()?.reshape((b, kv, gt, d))?;
        let dv = p.t()?.matmul(&go)?; // (b, kv, t, d)
        let dp = go.matmul(&v.t()?)?; // (b, kv, gt, t)
        let dot = (&dp * &p)?.sum_keepdim(3)?;
        let ds = ((p * dp.broadcast_sub(&dot)?)? * self.scale)?;
        let dq = ds.matmul(&k)?.reshape((b, h, t, d))?;
        let qg = q.reshape((b, kv, gt, d))?;
        let dk = ds.t()?.matmul(&qg)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Attention through [`Attention`] on CPU; elsewhere the same maths recorded op by op.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    kv_heads: usize,
) -> Result<Tensor> {
    attention_with(q, k, v, mask, scale, kv_heads, composed_ops())
}

/// [`attention`], the custom op (CPU, f32) or the composition (`composed`, or any other device
/// or dtype): candle's own ops, which it runs and differentiates on CUDA and Metal.
pub(crate) fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    kv_heads: usize,
    composed: bool,
) -> Result<Tensor> {
    let op = Attention {
        mask: mask.clone(),
        scale,
        kv_heads,
    };
    if !composed && q.device().is_cpu() && q.dtype() == DType::F32 {
        Ok(q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
    } else {
        let (b, h, t, d) = q.dims4()?;
        let qg = q.reshape((b, kv_heads, (h / kv_heads) * t, d))?;
        let s = (qg.matmul(&k.t()?)? * scale)?
            .reshape((b, h, t, t))?
            .broadcast_add(mask)?;
        let p = candle_nn::ops::softmax(&s, D::Minus1)?.reshape((
            b,
            kv_heads,
            (h / kv_heads) * t,
            t,
        ))?;
        Ok(p.matmul(v)?.reshape((b, h, t, d))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn the_composed_frozen_matmul_gives_the_custom_ops_values_and_gradients() {
        let w = random(&[24, 16], 1);
        let upstream = random(&[5, 24], 2);
        let run = |composed: bool| {
            let x = Var::from_tensor(&random(&[5, 16], 3)).unwrap();
            let y = frozen_matmul_with(x.as_tensor(), &w, composed).unwrap();
            let grads = (&y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (y, grads.get(x.as_tensor()).unwrap().clone())
        };
        let (y1, g1) = run(false);
        let (y2, g2) = run(true);
        assert!(max_diff(&y1, &y2) < 1e-5, "values");
        assert!(max_diff(&g1, &g2) < 1e-5, "input gradients");
    }

    #[test]
    fn the_composed_attention_gives_the_custom_ops_values_and_gradients() {
        // 4 query heads over 2 key/value heads, 6 positions, a causal mask.
        let (b, h, kv, t, d) = (2, 4, 2, 6, 8);
        let mut mask = vec![0f32; t * t];
        for i in 0..t {
            for j in i + 1..t {
                mask[i * t + j] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(mask, (1, 1, t, t), &Device::Cpu)
            .unwrap()
            .broadcast_as((b, 1, t, t))
            .unwrap()
            .contiguous()
            .unwrap();
        let upstream = random(&[b, h, t, d], 9);
        let run = |composed: bool| {
            let q = Var::from_tensor(&random(&[b, h, t, d], 4)).unwrap();
            let k = Var::from_tensor(&random(&[b, kv, t, d], 5)).unwrap();
            let v = Var::from_tensor(&random(&[b, kv, t, d], 6)).unwrap();
            let y = attention_with(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                &mask,
                0.35,
                kv,
                composed,
            )
            .unwrap();
            let grads = (&y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
            (y, g(&q), g(&k), g(&v))
        };
        let (y1, q1, k1, v1) = run(false);
        let (y2, q2, k2, v2) = run(true);
        assert!(max_diff(&y1, &y2) < 1e-5, "values");
        for (name, a, b) in [("q", &q1, &q2), ("k", &k1, &k2), ("v", &v1, &v2)] {
            let diff = max_diff(a, b);
            assert!(diff < 1e-4, "{name} gradients differ by {diff}");
        }
    }
}
