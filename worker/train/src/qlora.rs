//! QLoRA's frozen projections: the base model's projections stay as the GGUF file quantized
//! them (Q4_0, Q4_1, Q8_0, Q4_K, ...). The forward multiplies through a quantized matmul; the
//! backward, which needs only the input's gradient, dequantizes that one weight for the moment
//! of its matmul and drops it, so the dense model never exists whole. candle's own quantized
//! matmul records no backward (the gradient would silently vanish), hence this op.
//!
//! On the CPU, Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 and the K-quants Q4_K / Q5_K / Q6_K run on
//! flotilla's own integer kernels (`flotilla_engine::kernels`, fast on a batch of rows; the
//! GGUF copy is dropped); other formats, and every format on a GPU, run through candle's
//! quantized matmul.

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use flotilla_engine::error::Result;
use flotilla_engine::kernels::QuantMatrix;
use std::sync::Arc;

/// Where a quantized weight lives and which kernels multiply it.
#[derive(Clone)]
pub enum QuantStore {
    /// candle's `QTensor` (any GGUF format, any device).
    Candle(Arc<QTensor>),
    /// flotilla's CPU kernels (see `QuantMatrix::supports`; f32 input).
    Cpu(Arc<QuantMatrix>),
}

impl std::fmt::Debug for QuantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Candle(q) => write!(f, "Candle({:?}, {:?})", q.dtype(), q.shape()),
            Self::Cpu(m) => write!(f, "Cpu({m:?})"),
        }
    }
}

/// `x (.., in) @ W^T` through the quantized `W (out, in)`, with a backward for `x` only.
struct QuantFrozenMatmul(QuantStore);

impl CustomOp1 for QuantFrozenMatmul {
    fn name(&self) -> &'static str {
        "quantized-frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match &self.0 {
            QuantStore::Cpu(m) => m.cpu_fwd(storage, layout),
            QuantStore::Candle(q) => <QTensor as CustomOp1>::cpu_fwd(q, storage, layout),
        }
    }

    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match &self.0 {
            QuantStore::Candle(q) => <QTensor as CustomOp1>::cuda_fwd(q, storage, layout),
            QuantStore::Cpu(_) => candle_core::bail!("a CPU-packed weight cannot run on CUDA"),
        }
    }

    fn metal_fwd(
        &self,
        storage: &candle_core::MetalStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        match &self.0 {
            QuantStore::Candle(q) => <QTensor as CustomOp1>::metal_fwd(q, storage, layout),
            QuantStore::Cpu(_) => candle_core::bail!("a CPU-packed weight cannot run on Metal"),
        }
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let w = match &self.0 {
            QuantStore::Cpu(m) => {
                Tensor::from_vec(m.dequantize(), (m.n_out(), m.k()), grad_res.device())?
            }
            QuantStore::Candle(q) => q.dequantize(grad_res.device())?,
        }
        .to_dtype(grad_res.dtype())?;
        Ok(Some(grad_res.matmul(&w)?))
    }
}

/// A frozen projection weight: dense, or quantized (QLoRA).
#[derive(Debug, Clone)]
pub enum FrozenWeight {
    Dense(Tensor),
    Quantized {
        store: QuantStore,
        /// For llama.cpp's permuted q/k rows: the product's columns in Hugging Face order.
        order: Option<Tensor>,
    },
}

impl FrozenWeight {
    /// A quantized weight: repacked for the CPU kernels when it lives on the CPU in a format
    /// they have (the GGUF copy is then dropped), else kept as candle's `QTensor`.
    pub fn quantized(q: Arc<QTensor>, order: Option<Tensor>) -> Result<Self> {
        let store = match q.device().is_cpu() {
            true => match QuantMatrix::from_qtensor(&q)? {
                Some(m) => QuantStore::Cpu(Arc::new(m)),
                None => QuantStore::Candle(q),
            },
            false => QuantStore::Candle(q),
        };
        Ok(Self::Quantized { store, order })
    }

    /// `x (n, in) @ W^T` in `x`'s dtype, differentiable with respect to `x`.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => super::ops::frozen_matmul(x, w),
            Self::Quantized { store, order } => {
                let dtype = x.dtype();
                // The CPU kernels take f32 (a bf16 run widens the input for them).
                let input = match store {
                    QuantStore::Cpu(_) => x.to_dtype(DType::F32)?,
                    QuantStore::Candle(_) => x.clone(),
                };
                let y = input
                    .contiguous()?
                    .apply_op1(QuantFrozenMatmul(store.clone()))?
                    .to_dtype(dtype)?;
                Ok(match order {
                    Some(idx) => y.index_select(idx, 1)?,
                    None => y,
                })
            }
        }
    }

    /// Bytes the weight holds.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Self::Quantized {
                store: QuantStore::Candle(q),
                ..
            } => q.storage_size_in_bytes(),
            Self::Quantized {
                store: QuantStore::Cpu(m),
                ..
            } => m.size_in_bytes(),
        }
    }

    /// (out, in).
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Self::Dense(w) => Ok(w.dims2()?),
            Self::Quantized {
                store: QuantStore::Candle(q),
                ..
            } => Ok(q.shape().dims2()?),
            Self::Quantized {
                store: QuantStore::Cpu(m),
                ..
            } => Ok((m.n_out(), m.k())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Var};

    /// A Q4_K_M file's frozen projections (K-quants and Q5_0) run on flotilla's kernels in
    /// QLoRA, and the input's gradient is the dense weight's, exactly.
    #[test]
    fn k_quant_and_5_bit_weights_train_through_flotillas_kernels() {
        let dev = Device::Cpu;
        for dtype in [
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
        ] {
            let w = Tensor::randn(0f32, 1.0, (48, 512), &dev).unwrap();
            let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
            let frozen = FrozenWeight::quantized(q.clone(), None).unwrap();
            assert!(
                matches!(
                    &frozen,
                    FrozenWeight::Quantized {
                        store: QuantStore::Cpu(_),
                        ..
                    }
                ),
                "{dtype:?} is not on flotilla's kernels"
            );
            let dense = q.dequantize(&dev).unwrap();
            let x = Var::randn(0f32, 1.0, (3, 512), &dev).unwrap();
            let y = frozen.matmul(x.as_tensor()).unwrap();
            let want = x.as_tensor().matmul(&dense.t().unwrap()).unwrap();
            let err = (&y - &want).unwrap().abs().unwrap().max_all().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap();
            let (err, scale) = (
                err.to_scalar::<f32>().unwrap(),
                scale.to_scalar::<f32>().unwrap(),
            );
            assert!(err < 3e-2 * scale, "{dtype:?}: forward {err} vs {scale}");
            // d sum(x W^T) / dx = ones (3, out) @ W.
            let grads = y.sum_all().unwrap().backward().unwrap();
            let gx = grads.get(x.as_tensor()).expect("x has a gradient");
            let ones = Tensor::ones((3, 48), DType::F32, &dev).unwrap();
            let want_g = ones.matmul(&dense).unwrap();
            let gerr = (gx - &want_g).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                gerr.to_scalar::<f32>().unwrap() < 1e-4,
                "{dtype:?}: gradient"
            );
        }
    }
}
