//! flotilla's own quantized matmul on CPU for the GGUF formats people download: Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0, and the K-quants Q4_K, Q5_K, Q6_K (`kquant.rs`). Other formats (Q2_K,
//! Q3_K, IQ*) stay on candle's `QMatMul`.
//!
//! The weights keep their ggml quantization (4 or 8 bits per value, one scale per 32-block)
//! in a layout repacked for SIMD: per block, quants in one array and f32 scales (and mins) in
//! others. Activations are quantized per 32-block to 8 bits (llama.cpp's Q8_1 / Q8_0
//! arithmetic), and the dot products run on integers, with SIMD picked at run time:
//! AVX-512 VNNI (256-bit `vpdpbusd`), AVX2 + FMA, or a portable scalar fallback. So one portable
//! binary (no `-C target-cpu=native`) is fast on any x86-64 PC.
//!
//! Q4_0 is stored as Q4_1 with min = -8 d: `(q - 8) d == q d + (-8 d)`, so one kernel serves
//! both. The min term of a row is `sum_b m_b * s_b`, with `s_b = d_act_b * sum(q_act_b)`.
//!
//! Work is split with rayon (the global pool, sized by `--threads`) over chunks of output rows
//! and of activation rows; each weight block loaded is reused for a tile of up to four
//! activation rows, which is what makes prefill and batched decoding fast.

mod kquant;
#[cfg(target_arch = "x86_64")]
mod kquant_x86;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use kquant::KFormat;
use kquant::{KActs, KTile, QK_K};

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

/// Values per quantization block.
pub const QK: usize = 32;
/// Activation rows per tile (each weight block is reused this many times).
const TILE: usize = 4;
/// Activation rows per parallel task.
const M_CHUNK: usize = 64;
/// Weight rows processed against every activation tile before moving on (cache blocking).
const ROW_GROUP: usize = 16;

/// How a [`QuantMatrix`] stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QFormat {
    /// 4-bit unsigned quants, value = q * d + m (Q4_1, and Q4_0 with m = -8 d).
    Q4,
    /// 8-bit signed quants, value = q * d (Q8_0).
    Q8,
    /// 5-bit quants, value = (q - 16) * d (Q5_0): 20 bytes per block, fifth bits then
    /// nibbles, against Q8_0 activations (exact, as llama.cpp).
    Q5,
    /// 5-bit quants with a min, value = q * d + m (Q5_1), against Q8_1 activations.
    Q5M,
    /// K-quant super-blocks of 256, kept as stored in the GGUF.
    K(KFormat),
}

impl QFormat {
    /// Quant bytes per 32-value block in [`QuantMatrix`]'s `qs` (not for K formats).
    fn block_bytes(self) -> usize {
        match self {
            QFormat::Q4 => 16,
            QFormat::Q5 | QFormat::Q5M => 20,
            QFormat::Q8 | QFormat::K(_) => 32,
        }
    }
}

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set this CPU supports (detected once).
    pub fn detect() -> Isa {
        use std::sync::OnceLock;
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::env::var_os("FLOTILLA_KERNEL_SCALAR").is_some() {
                    return Isa::Scalar;
                }
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c");
                if avx2
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512f")
                    && std::env::var_os("FLOTILLA_KERNEL_NO_VNNI").is_none()
                {
                    return Isa::Avx512Vnni;
                }
                if avx2 {
                    return Isa::Avx2;
                }
            }
            Isa::Scalar
        })
    }

    /// Whether this CPU can run kernels built for `self`.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => matches!(Isa::detect(), Isa::Avx2 | Isa::Avx512Vnni),
            Isa::Avx512Vnni => Isa::detect() == Isa::Avx512Vnni,
        }
    }
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// Which code multiplies a GGUF weight of `dtype` on this machine's CPU (`model inspect`
/// shows it per tensor type): `dense`, `flotilla <isa>` or `candle QMatMul`.
pub fn cpu_path(dtype: GgmlDType) -> String {
    let off = std::env::var("FLOTILLA_KERNELS").is_ok_and(|v| v == "off" || v == "0");
    match dtype {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => "dense".into(),
        dt if QuantMatrix::supports(dt) && !off => {
            let has_vnni = matches!(dt, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0);
            let isa = match Isa::detect() {
                Isa::Avx512Vnni if !has_vnni => Isa::Avx2,
                isa => isa,
            };
            format!("flotilla {}", isa.name())
        }
        _ => "candle QMatMul".into(),
    }
}

/// A quantized weight matrix of shape (n_out, k), multiplied as `x @ W^T`.
#[derive(Clone)]
pub struct QuantMatrix {
    format: QFormat,
    source: GgmlDType,
    n_out: usize,
    k: usize,
    /// Blocks per row (k / 32).
    nb: usize,
    /// Q4: 16 bytes per block (low nibbles = elements 0..16, high = 16..32); Q8: 32 i8; Q5 /
    /// Q5M: 20 bytes (the 32 fifth bits, then nibbles as Q4); K: the GGUF's super-blocks (no
    /// `d` or `m` beside them).
    qs: Vec<u8>,
    /// Scale per block (f16 bits, as in the GGUF: the weights stream from memory in decode,
    /// so every byte counts), n_out * nb.
    d: Vec<u16>,
    /// Q4 and Q5M: min per block (f16 bits), n_out * nb.
    m: Vec<u16>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("source", &self.source)
            .field("n_out", &self.n_out)
            .field("k", &self.k)
            .finish()
    }
}

fn f16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// f16 bits to f32.
#[inline]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

impl QuantMatrix {
    /// Whether this module has a kernel for `dtype`.
    pub fn supports(dtype: GgmlDType) -> bool {
        matches!(
            dtype,
            GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q5_0
                | GgmlDType::Q5_1
                | GgmlDType::Q8_0
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K
        )
    }

    /// Repack a 2-D GGUF tensor (n_out, k); `None` for other dtypes or shapes, so the caller
    /// can fall back to candle's `QMatMul`.
    /// `FLOTILLA_KERNELS=off` turns these kernels off (candle's `QMatMul` then runs), for
    /// comparisons.
    pub fn from_qtensor(t: &QTensor) -> candle_core::Result<Option<Self>> {
        let off = std::env::var("FLOTILLA_KERNELS").is_ok_and(|v| v == "off" || v == "0");
        if off || !Self::supports(t.dtype()) {
            return Ok(None);
        }
        let (n_out, k) = match t.shape().dims() {
            [n, k] => (*n, *k),
            _ => return Ok(None),
        };
        let data = t.data()?;
        Ok(Self::from_ggml_bytes(t.dtype(), n_out, k, &data))
    }

    /// Repack raw ggml blocks (row-major, `n_out` rows of `k` values).
    pub fn from_ggml_bytes(dtype: GgmlDType, n_out: usize, k: usize, data: &[u8]) -> Option<Self> {
        if k == 0 || !k.is_multiple_of(QK) || !Self::supports(dtype) {
            return None;
        }
        let nb = k / QK;
        let blocks = n_out * nb;
        if let Some(kf) = KFormat::from_dtype(dtype) {
            if !k.is_multiple_of(QK_K) || data.len() != n_out * (k / QK_K) * kf.block_bytes() {
                return None;
            }
            let (d, m) = (Vec::new(), Vec::new());
            let (format, source, qs) = (QFormat::K(kf), dtype, data.to_vec());
            return Some(Self {
                format,
                source,
                n_out,
                k,
                nb,
                qs,
                d,
                m,
            });
        }
        if let Some((qs, d, m)) = kquant::repack_q5(dtype, blocks, data) {
            let format = if dtype == GgmlDType::Q5_1 {
                QFormat::Q5M
            } else {
                QFormat::Q5
            };
            let source = dtype;
            return Some(Self {
                format,
                source,
                n_out,
                k,
                nb,
                qs,
                d,
                m,
            });
        }
        let block_bytes = match dtype {
            GgmlDType::Q4_0 => 18,
            GgmlDType::Q4_1 => 20,
            _ => 34,
        };
        if data.len() != blocks * block_bytes {
            return None;
        }
        let mut d = Vec::with_capacity(blocks);
        let (format, qs, m) = match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
                let q_at = block_bytes - 16;
                let mut qs = Vec::with_capacity(blocks * 16);
                let mut m = Vec::with_capacity(blocks);
                for b in data.chunks_exact(block_bytes) {
                    let scale = f16_at(b, 0);
                    d.push(scale);
                    m.push(if dtype == GgmlDType::Q4_1 {
                        f16_at(b, 2)
                    } else {
                        // Exact: scaling by 8 only changes the exponent (barring overflow).
                        half::f16::from_f32(-8.0 * f16_to_f32(scale)).to_bits()
                    });
                    qs.extend_from_slice(&b[q_at..]);
                }
                (QFormat::Q4, qs, m)
            }
            _ => {
                let mut qs = Vec::with_capacity(blocks * 32);
                for b in data.chunks_exact(block_bytes) {
                    d.push(f16_at(b, 0));
                    qs.extend_from_slice(&b[2..]);
                }
                (QFormat::Q8, qs, Vec::new())
            }
        };
        Some(Self {
            format,
            source: dtype,
            n_out,
            k,
            nb,
            qs,
            d,
            m,
        })
    }

    pub fn n_out(&self) -> usize {
        self.n_out
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The GGUF dtype this matrix was built from.
    pub fn dtype(&self) -> GgmlDType {
        self.source
    }

    /// Bytes held.
    /// The weights as f32, (n_out, k) row-major: `q * d + m` (Q4) or `q * d` (Q8), the values
    /// the integer kernels multiply by.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n_out * self.k];
        out.par_chunks_mut(self.k).enumerate().for_each(|(r, row)| {
            if let QFormat::K(kf) = self.format {
                let bytes = self.k / QK_K * kf.block_bytes();
                kquant::dequantize_row(kf, &self.qs[r * bytes..(r + 1) * bytes], row);
                return;
            }
            for b in 0..self.nb {
                let i = r * self.nb + b;
                let d = f16_to_f32(self.d[i]);
                let dst = &mut row[b * QK..(b + 1) * QK];
                match self.format {
                    QFormat::Q4 => {
                        let m = f16_to_f32(self.m[i]);
                        let q = &self.qs[i * 16..(i + 1) * 16];
                        for j in 0..16 {
                            dst[j] = (q[j] & 0x0F) as f32 * d + m;
                            dst[j + 16] = (q[j] >> 4) as f32 * d + m;
                        }
                    }
                    QFormat::Q8 => {
                        let q = &self.qs[i * QK..(i + 1) * QK];
                        for j in 0..QK {
                            dst[j] = q[j] as i8 as f32 * d;
                        }
                    }
                    QFormat::Q5 | QFormat::Q5M => {
                        let block = &self.qs[i * 20..(i + 1) * 20];
                        for j in 0..QK {
                            let q = kquant::q5_value(block, j) as f32;
                            dst[j] = match self.format {
                                QFormat::Q5M => q * d + f16_to_f32(self.m[i]),
                                _ => (q - 16.0) * d,
                            };
                        }
                    }
                    QFormat::K(_) => unreachable!("K formats return above"),
                }
            }
        });
        out
    }

    pub fn size_in_bytes(&self) -> usize {
        self.qs.len() + 2 * (self.d.len() + self.m.len())
    }

    /// `out (m × n_out) = x (m × k) @ W^T`, both row-major, with the best kernel for this CPU.
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) {
        self.matmul_with(Isa::detect(), x, out);
    }

    /// [`Self::matmul`] with a chosen instruction set (falls back to scalar if unsupported).
    ///
    /// Returns the instruction set that ran: `isa`, or scalar code where this CPU lacks it.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], out: &mut [f32]) -> Isa {
        let isa = match (isa.supported(), isa, self.format) {
            (false, _, _) => Isa::Scalar,
            // 5-bit and K-quants have AVX2 kernels only (AVX-512 machines run them).
            (true, Isa::Avx512Vnni, QFormat::K(_) | QFormat::Q5 | QFormat::Q5M) => Isa::Avx2,
            (true, isa, _) => isa,
        };
        assert_eq!(x.len() % self.k, 0, "input length is not a multiple of k");
        let m = x.len() / self.k;
        assert_eq!(out.len(), m * self.n_out, "output length is not m * n_out");
        if m == 0 || self.n_out == 0 {
            return isa;
        }
        let acts = match self.format {
            QFormat::K(_) => Acts::K(KActs::quantize(x, m, self.k)),
            _ => Acts::Blocks(QActs::quantize(isa, x, m, self.k)),
        };
        let work = m * self.n_out * self.nb;
        let threads = rayon::current_num_threads();
        let out_ptr = OutPtr(out.as_mut_ptr());
        if threads <= 1 || work < 4096 {
            self.run_task(isa, &acts, 0..self.n_out, 0..m, out_ptr);
            return isa;
        }
        let n_mc = m.div_ceil(M_CHUNK);
        let want = 4 * threads;
        let n_rc = want.div_ceil(n_mc).max(1);
        let row_chunk = self.n_out.div_ceil(n_rc).next_multiple_of(8).max(8);
        let n_rc = self.n_out.div_ceil(row_chunk);
        (0..n_rc * n_mc).into_par_iter().for_each(|t| {
            let (rc, mc) = (t / n_mc, t % n_mc);
            let rows = rc * row_chunk..((rc + 1) * row_chunk).min(self.n_out);
            let ms = mc * M_CHUNK..((mc + 1) * M_CHUNK).min(m);
            self.run_task(isa, &acts, rows, ms, out_ptr);
        });
        isa
    }

    /// Compute output rows `rows` × activation rows `ms`.
    fn run_task(
        &self,
        isa: Isa,
        acts: &Acts,
        rows: std::ops::Range<usize>,
        ms: std::ops::Range<usize>,
        out: OutPtr,
    ) {
        let acts = match (acts, self.format) {
            (Acts::Blocks(a), _) => a,
            (Acts::K(a), QFormat::K(kf)) => return self.run_task_k(isa, kf, a, rows, ms, out),
            (Acts::K(_), _) => unreachable!("K activations are made for K formats only"),
        };
        let mut r = rows.start;
        while r < rows.end {
            let r_end = (r + ROW_GROUP).min(rows.end);
            let mut i = ms.start;
            while i < ms.end {
                let n = (ms.end - i).min(TILE);
                let mut row = r;
                #[cfg(target_arch = "x86_64")]
                if n == 1
                    && (isa == Isa::Avx2 || isa == Isa::Avx512Vnni && self.nb.is_multiple_of(2))
                {
                    while row + 4 <= r_end {
                        let mut res = [0f32; 4];
                        self.rows4(isa, acts, row, i, &mut res);
                        for (j, v) in res.iter().enumerate() {
                            // SAFETY: as below.
                            unsafe { *out.0.add(i * self.n_out + row + j) = *v };
                        }
                        row += 4;
                    }
                }
                for row in row..r_end {
                    let mut res = [0f32; TILE];
                    self.dot_tile(isa, acts, row, i, n, &mut res);
                    for (j, v) in res[..n].iter().enumerate() {
                        // SAFETY: (i + j, row) is inside the m × n_out output, and tasks
                        // cover disjoint (row, activation row) ranges.
                        unsafe { *out.0.add((i + j) * self.n_out + row) = *v };
                    }
                }
                i += n;
            }
            r = r_end;
        }
    }

    /// [`Self::run_task`] for K-quant weights: tiles of up to four activation rows per weight
    /// row, weight rows in groups that stay in cache while the tiles pass.
    fn run_task_k(
        &self,
        isa: Isa,
        kf: KFormat,
        acts: &KActs,
        rows: std::ops::Range<usize>,
        ms: std::ops::Range<usize>,
        out: OutPtr,
    ) {
        let nsb = acts.nsb;
        let row_bytes = nsb * kf.block_bytes();
        let mut r = rows.start;
        while r < rows.end {
            let r_end = (r + ROW_GROUP).min(rows.end);
            let mut i = ms.start;
            while i < ms.end {
                let n = (ms.end - i).min(TILE);
                for row in r..r_end {
                    let t = KTile {
                        w: &self.qs[row * row_bytes..(row + 1) * row_bytes],
                        qs: &acts.qs[i * self.k..(i + n) * self.k],
                        d: &acts.d[i * nsb..(i + n) * nsb],
                        bsums: &acts.bsums[i * nsb * 16..(i + n) * nsb * 16],
                        nsb,
                        n,
                    };
                    let mut res = [0f32; TILE];
                    match isa {
                        // SAFETY: the ISA was detected (AVX-512 implies AVX2 here), and `t`
                        // holds whole super-blocks for n rows.
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2 | Isa::Avx512Vnni => unsafe {
                            kquant_x86::dot_tile(kf, &t, &mut res)
                        },
                        _ => kquant::dot_tile(kf, &t, &mut res),
                    }
                    for (j, v) in res[..n].iter().enumerate() {
                        // SAFETY: as in `run_task`.
                        unsafe { *out.0.add((i + j) * self.n_out + row) = *v };
                    }
                }
                i += n;
            }
            r = r_end;
        }
    }

    /// Dot weight rows `row..row + 4` with activation row `i` (AVX2, or 512-bit VNNI).
    #[cfg(target_arch = "x86_64")]
    fn rows4(&self, isa: Isa, a: &QActs, row: usize, i: usize, res: &mut [f32; 4]) {
        let nb = self.nb;
        let q4 = self.format == QFormat::Q4;
        let with_min = matches!(self.format, QFormat::Q4 | QFormat::Q5M);
        let bb = self.format.block_bytes();
        let (wb, we) = (row * nb, (row + 4) * nb);
        let w = WRow {
            qs: &self.qs[wb * bb..we * bb],
            d: &self.d[wb..we],
            m: if with_min { &self.m[wb..we] } else { &[] },
        };
        let x = ARows {
            qs: &a.qs[i * self.k..(i + 1) * self.k],
            d: &a.d[i * nb..(i + 1) * nb],
            s: if with_min {
                &a.s[i * nb..(i + 1) * nb]
            } else {
                &a.sq[i * nb..(i + 1) * nb]
            },
            dx: if a.dx.is_empty() {
                &[]
            } else {
                &a.dx[i * nb * 8..(i + 1) * nb * 8]
            },
            nb,
            n: 1,
        };
        // SAFETY: the ISA was detected; VNNI is only asked for with nb even (and so dx filled),
        // and never for 5-bit weights (matmul_with runs those with AVX2).
        unsafe {
            match (isa, self.format) {
                (_, QFormat::Q5 | QFormat::Q5M) => {
                    x86::rows4_q5_avx2(self.format == QFormat::Q5M, &w, &x, res)
                }
                (Isa::Avx512Vnni, _) => x86::rows4_vnni(q4, &w, &x, res),
                _ => x86::rows4_avx2(q4, &w, &x, res),
            }
        }
    }

    /// Dot weight row `row` with activation rows `i..i + n` (n <= 4).
    #[inline]
    fn dot_tile(&self, isa: Isa, a: &QActs, row: usize, i: usize, n: usize, res: &mut [f32; 4]) {
        let nb = self.nb;
        let wb = row * nb;
        let bb = self.format.block_bytes();
        let qb = wb * bb;
        let with_min = matches!(self.format, QFormat::Q4 | QFormat::Q5M);
        let w = WRow {
            qs: &self.qs[qb..qb + nb * bb],
            d: &self.d[wb..wb + nb],
            m: if with_min { &self.m[wb..wb + nb] } else { &[] },
        };
        let x = ARows {
            qs: &a.qs[i * self.k..(i + n) * self.k],
            d: &a.d[i * nb..(i + n) * nb],
            s: if with_min {
                &a.s[i * nb..(i + n) * nb]
            } else {
                &a.sq[i * nb..(i + n) * nb]
            },
            dx: if a.dx.is_empty() {
                &[]
            } else {
                &a.dx[i * nb * 8..(i + n) * nb * 8]
            },
            nb,
            n,
        };
        match (isa, self.format) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, QFormat::Q4) => unsafe { x86::q4_vnni(&w, &x, res) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, QFormat::Q8) => unsafe { x86::q8_vnni(&w, &x, res) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, QFormat::Q4) => unsafe { x86::q4_avx2(&w, &x, res) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, QFormat::Q8) => unsafe { x86::q8_avx2(&w, &x, res) },
            // (matmul_with runs 5-bit weights with AVX2 on AVX-512 machines.)
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2 | Isa::Avx512Vnni, QFormat::Q5 | QFormat::Q5M) => unsafe {
                x86::q5_avx2(self.format == QFormat::Q5M, &w, &x, res)
            },
            (_, QFormat::Q4) => scalar::q4(&w, &x, res),
            (_, QFormat::Q8) => scalar::q8(&w, &x, res),
            (_, QFormat::Q5 | QFormat::Q5M) => scalar::q5(self.format == QFormat::Q5M, &w, &x, res),
            (_, QFormat::K(_)) => unreachable!("K formats run in run_task_k"),
        }
    }
}

/// One weight row's blocks.
pub(crate) struct WRow<'a> {
    pub qs: &'a [u8],
    /// f16 bits.
    pub d: &'a [u16],
    /// f16 bits.
    pub m: &'a [u16],
}

/// Up to four consecutive quantized activation rows.
pub(crate) struct ARows<'a> {
    /// n * k quants.
    pub qs: &'a [i8],
    /// n * nb scales.
    pub d: &'a [f32],
    /// n * nb of d * sum(q): [`QActs::s`] for Q4 weights, [`QActs::sq`] for Q8_0.
    pub s: &'a [f32],
    /// n * nb * 8: d repeated (AVX-512 kernels only).
    pub dx: &'a [f32],
    pub nb: usize,
    pub n: usize,
}

/// Activations quantized to 8 bits per value, one f32 scale (and d * sum) per 32-block.
pub(crate) struct QActs {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    /// f16(d * sum(q)), as llama.cpp's Q8_1 (the Q4 min term).
    pub s: Vec<f32>,
    /// d * sum(q) unrounded, with the stored d (the VNNI Q8_0 offset correction, which must
    /// cancel exactly).
    pub sq: Vec<f32>,
    /// AVX-512 only: each d repeated 8 times.
    pub dx: Vec<f32>,
}

impl QActs {
    pub fn quantize(isa: Isa, x: &[f32], m: usize, k: usize) -> QActs {
        let nb = k / QK;
        // The 512-bit kernels want each block's scale repeated over its 8 result lanes.
        let dx_len = if isa == Isa::Avx512Vnni { 8 * nb } else { 0 };
        let mut a = QActs {
            qs: vec![0; m * k],
            d: vec![0.0; m * nb],
            s: vec![0.0; m * nb],
            sq: vec![0.0; m * nb],
            dx: vec![0.0; m * dx_len],
        };
        let mut dx_rows: Vec<&mut [f32]> = if dx_len > 0 {
            a.dx.chunks_exact_mut(dx_len).collect()
        } else {
            (0..m).map(|_| Default::default()).collect()
        };
        let rows: Vec<(&[f32], RowBufs)> = x
            .chunks_exact(k)
            .zip(a.qs.chunks_exact_mut(k))
            .zip(a.d.chunks_exact_mut(nb))
            .zip(a.s.chunks_exact_mut(nb))
            .zip(a.sq.chunks_exact_mut(nb))
            .zip(dx_rows.drain(..))
            .map(|(((((x, qs), d), s), sq), dx)| (x, RowBufs { qs, d, s, sq, dx }))
            .collect();
        let row = |(x, mut o): (&[f32], RowBufs)| match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::quantize_row(x, &mut o) },
            _ => scalar::quantize_row(x, &mut o),
        };
        if m >= 16 && rayon::current_num_threads() > 1 {
            rows.into_par_iter().for_each(row);
        } else {
            rows.into_iter().for_each(row);
        }
        a
    }
}

/// One activation row's outputs of quantization.
pub(crate) struct RowBufs<'a> {
    pub qs: &'a mut [i8],
    pub d: &'a mut [f32],
    pub s: &'a mut [f32],
    pub sq: &'a mut [f32],
    /// Empty, or 8 * nb (AVX-512).
    pub dx: &'a mut [f32],
}

/// Quantized activations: per 32-block for the block formats, per 256 for K-quants.
enum Acts {
    Blocks(QActs),
    K(KActs),
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements of one output buffer that outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `x.apply_op1_no_bwd(&matrix)`: f32 (..., k) -> (..., n_out) on CPU.
impl CustomOp1 for QuantMatrix {
    fn name(&self) -> &'static str {
        "flotilla-quant-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = match storage {
            CpuStorage::F32(v) => v,
            other => {
                candle_core::bail!("quantized matmul wants f32 input, got {:?}", other.dtype())
            }
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quantized matmul wants a contiguous input");
        };
        let dims = layout.shape().dims();
        match dims.last() {
            Some(&k) if k == self.k => {}
            _ => candle_core::bail!(
                "quantized matmul: input shape {:?} does not end in k = {}",
                dims,
                self.k
            ),
        }
        let x = &x[start..end];
        let m = x.len() / self.k;
        let mut out = vec![0f32; m * self.n_out];
        self.matmul(x, &mut out);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = self.n_out;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}
