use super::*;
use candle_core::{DType, Device, Tensor};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    // xorshift: deterministic, roughly uniform in [-1, 1), with a few outliers.
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            if i % 97 == 0 {
                v * 4.0
            } else {
                v
            }
        })
        .collect()
}

fn reference(q: &QTensor, x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let w = q.dequantize(&Device::Cpu).unwrap();
    let x = Tensor::from_slice(x, (m, k), &Device::Cpu).unwrap();
    x.matmul(&w.t().unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn quantized(dtype: GgmlDType, n_out: usize, k: usize, seed: u64) -> QTensor {
    let w = Tensor::from_vec(rand_vec(n_out * k, seed), (n_out, k), &Device::Cpu).unwrap();
    QTensor::quantize(&w, dtype).unwrap()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |a, x| a.max(x.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

const DTYPES: [GgmlDType; 3] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0];
const ISAS: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

/// The SIMD instruction sets this CPU runs, said out loud (a CPU without AVX-512 VNNI tests
/// AVX2 only; one without AVX2 tests none, and the test says so rather than comparing scalar
/// code with itself). On x86-64 with AVX2, FMA and F16C, AVX2 must be among them.
fn simd_isas() -> Vec<Isa> {
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|i| i.supported())
        .collect();
    eprintln!(
        "kernel tests exercise {isas:?} against scalar (this CPU: {:?})",
        Isa::detect()
    );
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        assert!(isas.contains(&Isa::Avx2), "AVX2 CPU but {isas:?}");
    }
    isas
}

#[test]
fn matches_dequantized_matmul() {
    for dtype in DTYPES {
        for k in [576, 1536] {
            let n_out = 72;
            let q = quantized(dtype, n_out, k, k as u64);
            let qm = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            assert_eq!((qm.n_out(), qm.k(), qm.dtype()), (n_out, k, dtype));
            for m in [1, 3, 7, 16] {
                let x = rand_vec(m * k, 7 + m as u64);
                let want = reference(&q, &x, m, k);
                for isa in ISAS.into_iter().filter(|i| i.supported()) {
                    let mut got = vec![0f32; m * n_out];
                    assert_eq!(qm.matmul_with(isa, &x, &mut got), isa);
                    let (diff, scale) = (max_diff(&got, &want), max_abs(&want));
                    assert!(
                        diff < 1e-2 * scale,
                        "{dtype:?} {isa:?} m={m} k={k}: max diff {diff} vs max {scale}"
                    );
                }
            }
        }
    }
}

#[test]
fn simd_agrees_with_scalar() {
    // Odd sizes: n_out not a multiple of the row chunk, m not of the tile, k / 32 odd; m = 1
    // takes the decode (four weight rows at a time) path.
    for dtype in DTYPES {
        for (k, m) in [(1536, 70), (1536, 1), (576, 1), (96, 5)] {
            let n_out = 301;
            let q = quantized(dtype, n_out, k, 3);
            let qm = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let x = rand_vec(m * k, 11);
            let mut want = vec![0f32; m * n_out];
            assert_eq!(qm.matmul_with(Isa::Scalar, &x, &mut want), Isa::Scalar);
            for isa in simd_isas() {
                let mut got = vec![0f32; m * n_out];
                // The kernel that ran is the one asked for, not a scalar fallback.
                assert_eq!(qm.matmul_with(isa, &x, &mut got), isa);
                let (diff, scale) = (max_diff(&got, &want), max_abs(&want));
                assert!(
                    diff <= 1e-5 * scale,
                    "{dtype:?} {isa:?} k={k} m={m}: {diff} vs {scale}"
                );
            }
        }
    }
}

#[test]
fn activation_quantization_is_identical() {
    let k = 1536;
    let mut x = rand_vec(2 * k, 5);
    // NaN and infinities (a fully masked pad row is all NaN): both paths map NaN to 0.
    x[3] = f32::NAN;
    x[40] = f32::INFINITY;
    x[k..].iter_mut().for_each(|v| *v = f32::NAN);
    let a = QActs::quantize(Isa::Scalar, &x, 2, k);
    let b = QActs::quantize(Isa::detect(), &x, 2, k);
    eprintln!("activation quantization: scalar vs {:?}", Isa::detect());
    assert!(a.qs[k..].iter().all(|&q| q == 0) && a.d[k / 32..].iter().all(|&d| d == 0.0));
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(a.qs, b.qs);
    assert_eq!(bits(&a.d), bits(&b.d));
    assert_eq!(bits(&a.s), bits(&b.s));
    assert_eq!(bits(&a.sq), bits(&b.sq));
}

#[test]
fn custom_op_shapes_and_errors() {
    let (n_out, k) = (40, 64);
    let q = quantized(GgmlDType::Q4_1, n_out, k, 9);
    let qm = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
    let x = Tensor::from_vec(rand_vec(2 * 3 * k, 1), (2, 3, k), &Device::Cpu).unwrap();
    let y = x.apply_op1_no_bwd(&qm).unwrap();
    assert_eq!(y.dims(), &[2, 3, n_out]);
    let want = reference(&q, &x.flatten_all().unwrap().to_vec1().unwrap(), 6, k);
    let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    assert!(max_diff(&got, &want) < 1e-2 * max_abs(&want));
    // Wrong last dimension, wrong dtype, non-contiguous input: errors, not panics.
    let bad = Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(bad.apply_op1_no_bwd(&qm).is_err());
    let f16 = x.to_dtype(DType::F16).unwrap();
    assert!(f16.apply_op1_no_bwd(&qm).is_err());
    let t = Tensor::zeros((k, 4), DType::F32, &Device::Cpu)
        .unwrap()
        .t()
        .unwrap();
    assert!(t.apply_op1_no_bwd(&qm).is_err());
}

#[test]
fn unsupported_dtypes_fall_back() {
    let q = quantized(GgmlDType::Q4K, 8, 256, 2);
    assert!(QuantMatrix::from_qtensor(&q).unwrap().is_none());
}

#[test]
fn dequantize_gives_candles_values() {
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let (n_out, k) = (5, 96);
        let q = quantized(dtype, n_out, k, 11);
        let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        let ours = m.dequantize();
        let theirs: Vec<f32> = q
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Q4_0's min is -8 d rounded to f16, exact for normal scales.
        let d = max_diff(&ours, &theirs);
        assert!(d < 1e-6 * max_abs(&theirs).max(1.0), "{dtype:?}: {d}");
    }
}
