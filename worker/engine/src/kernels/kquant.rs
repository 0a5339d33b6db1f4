//! K-quant weights (Q4_K, Q5_K, Q6_K: what Q4_K_M / Q5_K_M files hold) against activations
//! quantized per 256 values to 8 bits (llama.cpp's Q8_K), computed on integers as llama.cpp
//! does.
//!
//! The weights stay in their GGUF blocks, byte for byte (the layouts are in DESIGN.md,
//! decision 18): a super-block of 256 weights carries f16 scales and 6-bit (Q4_K, Q5_K) or
//! 8-bit (Q6_K) sub-block scales, and every kernel reads it as stored, so a K-quant model
//! takes no more memory than its file. Per super-block and activation row the dot product is
//!
//! - Q4_K / Q5_K: `d_a * (d * sum_j sc_j * dot_j - dmin * sum_j m_j * bsum_j)` over the eight
//!   32-value sub-blocks (weights unsigned, 0..15 or 0..31);
//! - Q6_K: `d_a * d * sum_g sc_g * (dot_g - 32 * bsum_g)` over the sixteen 16-value groups
//!   (weights stored unsigned 0..63, meaning q - 32);
//!
//! where `bsum` is the sum of the activation quants over the sub-block (Q8_K keeps one per 16
//! values), so the weights' offsets never have to be applied value by value.
//!
//! This file holds the formats, the activation quantization and the portable (scalar)
//! kernels, the reference the AVX2 ones in `kquant_x86.rs` are tested against.

// Index loops over tile rows are deliberate (with const N they unroll into registers).
#![allow(clippy::needless_range_loop)]

use super::f16_to_f32;
use candle_core::quantized::GgmlDType;

/// Values per super-block.
pub const QK_K: usize = 256;

/// A K-quant block layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KFormat {
    /// d, dmin (f16), 12 bytes of packed 6-bit scales and mins, 128 bytes of nibbles.
    Q4K,
    /// As Q4K plus 32 bytes of fifth bits (before the nibbles).
    Q5K,
    /// 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales, d (f16).
    Q6K,
}

impl KFormat {
    pub fn from_dtype(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4K => Some(KFormat::Q4K),
            GgmlDType::Q5K => Some(KFormat::Q5K),
            GgmlDType::Q6K => Some(KFormat::Q6K),
            _ => None,
        }
    }

    /// Bytes per super-block of 256 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            KFormat::Q4K => 144,
            KFormat::Q5K => 176,
            KFormat::Q6K => 210,
        }
    }
}

/// Activation rows quantized as llama.cpp's Q8_K: per 256 values one f32 scale, 256 int8
/// quants and 16 sums of 16 quants.
pub(crate) struct KActs {
    pub qs: Vec<i8>,
    /// m * nsb scales.
    pub d: Vec<f32>,
    /// m * nsb * 16 sums.
    pub bsums: Vec<i16>,
    /// Super-blocks per row.
    pub nsb: usize,
}

impl KActs {
    /// Quantize `m` rows of `k` values (k a multiple of 256).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> KActs {
        let nsb = k / QK_K;
        let mut a = KActs {
            qs: vec![0; m * k],
            d: vec![0.0; m * nsb],
            bsums: vec![0; m * nsb * 16],
            nsb,
        };
        for (((xr, qs), d), bs) in x
            .chunks_exact(QK_K)
            .zip(a.qs.chunks_exact_mut(QK_K))
            .zip(a.d.iter_mut())
            .zip(a.bsums.chunks_exact_mut(16))
        {
            quantize_block(xr, qs, d, bs);
        }
        a
    }
}

/// One block of 256 as llama.cpp's `quantize_row_q8_K_ref`: the scale comes from the value
/// of largest magnitude (keeping its sign), `q = min(127, round(x * -127 / max))` with ties to
/// even (its `nearest_int`), `d = 1 / iscale`. NaN counts as 0 (the all-NaN rows of fully
/// masked left pads come out as zeros, as in the 32-block path).
fn quantize_block(x: &[f32], qs: &mut [i8], d: &mut f32, bsums: &mut [i16]) {
    let clean = |v: f32| if v.is_nan() { 0.0 } else { v };
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let v = clean(v);
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        *d = 0.0;
        qs.fill(0);
        bsums.fill(0);
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (iscale * clean(v)).round_ties_even().min(127.0) as i8;
    }
    for (s, g) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
        *s = g.iter().map(|&q| q as i16).sum();
    }
    *d = 1.0 / iscale;
}

/// The eight 6-bit scales and eight 6-bit mins packed in Q4_K / Q5_K's 12 bytes.
pub(crate) fn scales_mins(p: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = p[j] & 63;
            mn[j] = p[j + 4] & 63;
        } else {
            sc[j] = (p[j + 4] & 0x0F) | ((p[j - 4] >> 6) << 4);
            mn[j] = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

fn f16_le(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The unsigned quant of value `e` (0..256) of a super-block, and its sub-block scale index:
/// Q4_K / Q5_K 0..8 (32 values each), Q6_K 0..16 (16 values each).
#[inline]
fn quant_at(fmt: KFormat, b: &[u8], e: usize) -> i32 {
    match fmt {
        KFormat::Q4K | KFormat::Q5K => {
            let (chunk, half, l) = (e / 64, (e / 32) % 2, e % 32);
            let qs_at = if fmt == KFormat::Q4K { 16 } else { 48 };
            let byte = b[qs_at + 32 * chunk + l];
            let mut v = if half == 0 { byte & 0x0F } else { byte >> 4 } as i32;
            if fmt == KFormat::Q5K && (b[16 + l] >> (2 * chunk + half)) & 1 != 0 {
                v += 16;
            }
            v
        }
        KFormat::Q6K => {
            let (idx, k, l) = (e / 128, (e / 32) % 4, e % 32);
            let ql = b[64 * idx + l + if k % 2 == 1 { 32 } else { 0 }];
            let lo = if k < 2 { ql & 0x0F } else { ql >> 4 };
            let hi = (b[128 + 32 * idx + l] >> (2 * k)) & 3;
            (lo | (hi << 4)) as i32
        }
    }
}

/// The weights of one row (`nsb` super-blocks) as f32, llama.cpp's dequantization.
pub(crate) fn dequantize_row(fmt: KFormat, w: &[u8], out: &mut [f32]) {
    let bb = fmt.block_bytes();
    for (b, dst) in w.chunks_exact(bb).zip(out.chunks_exact_mut(QK_K)) {
        match fmt {
            KFormat::Q4K | KFormat::Q5K => {
                let (d, dmin) = (f16_le(b, 0), f16_le(b, 2));
                let (sc, mn) = scales_mins(&b[4..16]);
                for (e, v) in dst.iter_mut().enumerate() {
                    let s = e / 32;
                    *v = d * sc[s] as f32 * quant_at(fmt, b, e) as f32 - dmin * mn[s] as f32;
                }
            }
            KFormat::Q6K => {
                let d = f16_le(b, 208);
                for (e, v) in dst.iter_mut().enumerate() {
                    let sc = b[192 + e / 16] as i8;
                    *v = d * sc as f32 * (quant_at(fmt, b, e) - 32) as f32;
                }
            }
        }
    }
}

/// One weight row against up to four activation rows: what a tile kernel gets.
pub(crate) struct KTile<'a> {
    /// The weight row's super-blocks, as stored in the GGUF.
    pub w: &'a [u8],
    /// `n` consecutive activation rows' quants, scales and sums.
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub bsums: &'a [i16],
    pub nsb: usize,
    pub n: usize,
}

/// The portable kernel: integer sums per sub-block, as llama.cpp's reference dot products.
pub(crate) fn dot_tile(fmt: KFormat, t: &KTile, res: &mut [f32; 4]) {
    let bb = fmt.block_bytes();
    for i in 0..t.n {
        let mut acc = 0f32;
        for sb in 0..t.nsb {
            let b = &t.w[sb * bb..(sb + 1) * bb];
            let at = i * t.nsb + sb;
            let q = &t.qs[at * QK_K..(at + 1) * QK_K];
            let bs = &t.bsums[at * 16..(at + 1) * 16];
            let da = t.d[at];
            match fmt {
                KFormat::Q4K | KFormat::Q5K => {
                    let (sc, mn) = scales_mins(&b[4..16]);
                    let (mut isum, mut msum) = (0i32, 0i32);
                    for s in 0..8 {
                        let mut dot = 0i32;
                        for e in 32 * s..32 * s + 32 {
                            dot += quant_at(fmt, b, e) * q[e] as i32;
                        }
                        isum += sc[s] as i32 * dot;
                        msum += mn[s] as i32 * (bs[2 * s] as i32 + bs[2 * s + 1] as i32);
                    }
                    acc += da * (f16_le(b, 0) * isum as f32 - f16_le(b, 2) * msum as f32);
                }
                KFormat::Q6K => {
                    let mut isum = 0i32;
                    for g in 0..16 {
                        let mut dot = 0i32;
                        for e in 16 * g..16 * g + 16 {
                            dot += quant_at(fmt, b, e) * q[e] as i32;
                        }
                        isum += b[192 + g] as i8 as i32 * (dot - 32 * bs[g] as i32);
                    }
                    acc += da * f16_le(b, 208) * isum as f32;
                }
            }
        }
        res[i] = acc;
    }
}

/// Legacy 5-bit blocks (32 values, 22 or 24 bytes) repacked for the kernels: per block 20
/// bytes, the 32 fifth bits (little-endian u32, bit i for value i) then the 16 bytes of nibbles
/// (low nibbles values 0..16, high 16..32), as stored; scales (and Q5_1's mins) beside them as
/// f16 bits. Returns (quants, d, m) with m empty for Q5_0; `None` if `data` is not `blocks`
/// whole blocks.
pub(crate) fn repack_q5(
    dtype: GgmlDType,
    blocks: usize,
    data: &[u8],
) -> Option<(Vec<u8>, Vec<u16>, Vec<u16>)> {
    let (bb, q5_1) = match dtype {
        GgmlDType::Q5_0 => (22, false),
        GgmlDType::Q5_1 => (24, true),
        _ => return None,
    };
    if data.len() != blocks * bb {
        return None;
    }
    let mut qs = Vec::with_capacity(blocks * 20);
    let mut d = Vec::with_capacity(blocks);
    let mut m = Vec::with_capacity(if q5_1 { blocks } else { 0 });
    for b in data.chunks_exact(bb) {
        d.push(u16::from_le_bytes([b[0], b[1]]));
        if q5_1 {
            m.push(u16::from_le_bytes([b[2], b[3]]));
        }
        qs.extend_from_slice(&b[bb - 20..]);
    }
    Some((qs, d, m))
}

/// Value `j` (0..32) of a repacked 5-bit block (see [`repack_q5`]), unsigned (0..31).
#[inline]
pub(crate) fn q5_value(block: &[u8], j: usize) -> u8 {
    let qh = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    let nib = block[4 + j % 16];
    let lo = if j < 16 { nib & 0x0F } else { nib >> 4 };
    lo | ((((qh >> j) & 1) as u8) << 4)
}
