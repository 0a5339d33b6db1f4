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

const DTYPES: [GgmlDType; 8] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Whether `k` values make whole blocks of `dtype` (K-quants: 256).
fn fits(dtype: GgmlDType, k: usize) -> bool {
    k.is_multiple_of(dtype.block_size())
}

/// The instruction set a kernel for `dtype` runs when `isa` is asked for: 5-bit and K-quants
/// have AVX2 kernels only, which AVX-512 machines run.
fn ran(dtype: GgmlDType, isa: Isa) -> Isa {
    let has_vnni = matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0);
    match isa {
        Isa::Avx512Vnni if !has_vnni => Isa::Avx2,
        _ => isa,
    }
}
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
        for k in [256, 576, 1536].into_iter().filter(|&k| fits(dtype, k)) {
            let n_out = 72;
            let q = quantized(dtype, n_out, k, k as u64);
            let qm = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            assert_eq!((qm.n_out(), qm.k(), qm.dtype()), (n_out, k, dtype));
            for m in [1, 3, 7, 16] {
                let x = rand_vec(m * k, 7 + m as u64);
                let want = reference(&q, &x, m, k);
                // K-quants multiply by activations rounded to 8 bits per 256 values (one
                // scale per 256, as llama.cpp does), which is coarser than the 32-blocks of the
                // other formats: against the f32 input they are checked by the error that
                // rounding must give, and exactly against the rounded activations.
                let k_quant = KFormat::from_dtype(dtype).is_some();
                let rounded = k_quant.then(|| {
                    let a = KActs::quantize(&x, m, k);
                    let xr: Vec<f32> = (0..m * k).map(|j| a.qs[j] as f32 * a.d[j / 256]).collect();
                    reference(&q, &xr, m, k)
                });
                for isa in ISAS.into_iter().filter(|i| i.supported()) {
                    let mut got = vec![0f32; m * n_out];
                    assert_eq!(qm.matmul_with(isa, &x, &mut got), ran(dtype, isa));
                    let (diff, scale) = (max_diff(&got, &want), max_abs(&want));
                    let bound = if k_quant { 3e-2 } else { 1e-2 };
                    assert!(
                        diff < bound * scale,
                        "{dtype:?} {isa:?} m={m} k={k}: max diff {diff} vs max {scale}"
                    );
                    if let Some(exact) = &rounded {
                        let diff = max_diff(&got, exact);
                        assert!(
                            diff < 1e-5 * scale,
                            "{dtype:?} {isa:?} m={m} k={k}: {diff} from the rounded product"
                        );
                    }
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
        let shapes = [(1536, 70), (1536, 1), (576, 1), (96, 5), (256, 3), (768, 9)];
        for (k, m) in shapes.into_iter().filter(|&(k, _)| fits(dtype, k)) {
            let n_out = 301;
            let q = quantized(dtype, n_out, k, 3);
            let qm = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let x = rand_vec(m * k, 11);
            let mut want = vec![0f32; m * n_out];
            assert_eq!(qm.matmul_with(Isa::Scalar, &x, &mut want), Isa::Scalar);
            for isa in simd_isas() {
                let mut got = vec![0f32; m * n_out];
                // The kernel that ran is the one asked for, not a scalar fallback.
                assert_eq!(qm.matmul_with(isa, &x, &mut got), ran(dtype, isa));
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
    for dtype in [GgmlDType::Q2K, GgmlDType::Q3K] {
        let q = quantized(dtype, 8, 256, 2);
        assert!(!QuantMatrix::supports(dtype), "{dtype:?}");
        assert!(
            QuantMatrix::from_qtensor(&q).unwrap().is_none(),
            "{dtype:?}"
        );
    }
}

#[test]
fn dequantize_gives_candles_values() {
    for dtype in DTYPES {
        let (n_out, k) = (5, if fits(dtype, 96) { 96 } else { 512 });
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

#[test]
fn wrong_block_counts_are_refused() {
    // A tensor whose bytes are not whole blocks of its type (a corrupted or truncated file)
    // gets no kernel rather than a read past its end.
    for dtype in DTYPES {
        let (n_out, k) = (4, 256);
        let q = quantized(dtype, n_out, k, 5);
        let data = q.data().unwrap();
        assert!(QuantMatrix::from_ggml_bytes(dtype, n_out, k, &data).is_some());
        let short = &data[..data.len() - 1];
        assert!(
            QuantMatrix::from_ggml_bytes(dtype, n_out, k, short).is_none(),
            "{dtype:?}"
        );
        assert!(QuantMatrix::from_ggml_bytes(dtype, n_out + 1, k, &data).is_none());
    }
    // K-quants need rows of whole super-blocks.
    assert!(QuantMatrix::from_ggml_bytes(GgmlDType::Q4K, 1, 128, &[0u8; 72]).is_none());
}

#[test]
fn k_activations_follow_llamacpp_q8k() {
    // One block of 256: the value of largest magnitude sets the scale,
    // ties round to even, sums per 16 match the quants; an all-zero or all-NaN block is zero.
    let mut x = rand_vec(3 * 256, 8);
    x[17] = -9.0;
    x[256..512].iter_mut().for_each(|v| *v = f32::NAN);
    x[512..].iter_mut().for_each(|v| *v = 0.0);
    let a = KActs::quantize(&x, 3, 256);
    // llama.cpp's convention: iscale = -127 / max, so the largest value always maps to -127.
    assert_eq!(a.qs[17], -127);
    assert_eq!(a.d[0], 1.0 / (-127.0f32 / -9.0));
    for (g, s) in a.bsums[..16].iter().enumerate() {
        let want: i32 = a.qs[16 * g..16 * g + 16].iter().map(|&q| q as i32).sum();
        assert_eq!(*s as i32, want);
    }
    assert!(a.qs[256..].iter().all(|&q| q == 0) && a.d[1] == 0.0 && a.d[2] == 0.0);
    // Dequantized activations are within half a step of the input.
    for (q, v) in a.qs[..256].iter().zip(&x[..256]) {
        assert!((*q as f32 * a.d[0] - v).abs() <= 0.5 * a.d[0].abs() + 1e-6);
    }
}
