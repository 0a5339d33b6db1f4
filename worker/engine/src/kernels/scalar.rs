//! Portable kernels: the reference the SIMD ones are tested against, and the fallback on CPUs
//! without them.

// Index loops over tile rows are deliberate (with const N they unroll into registers).
#![allow(clippy::needless_range_loop)]

use super::{f16_to_f32, ARows, RowBufs, WRow, QK};

/// Quantize one row to 8 bits per value: per 32-block d = amax / 127, q = round(x / d) (ties to
/// even, as the SIMD path rounds), s = d * sum(q). NaN counts as 0, as in candle (`NaN as i8`
/// is 0): the NaN rows of fully masked left pads come out as zeros. d and s are rounded to
/// f16, as llama.cpp stores them, so that results track llama.cpp's closely.
pub(crate) fn quantize_row(x: &[f32], o: &mut RowBufs) {
    for (b, (xb, qb)) in x
        .chunks_exact(QK)
        .zip(o.qs.chunks_exact_mut(QK))
        .enumerate()
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        let db = amax / 127.0;
        o.d[b] = round_f16(db);
        o.s[b] = round_f16(db * sum as f32);
        o.sq[b] = o.d[b] * sum as f32;
        if !o.dx.is_empty() {
            o.dx[8 * b..8 * b + 8].fill(o.d[b]);
        }
    }
}

/// Round to the nearest f16, as llama.cpp stores activation scales (its Q8_0 / Q8_1 blocks).
#[inline]
pub(crate) fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Q4 weights (q * d + m) against Q8_1 activations.
pub(crate) fn q4(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    let nb = x.nb;
    for i in 0..x.n {
        let (xq, xd, xs) = (
            &x.qs[i * nb * QK..(i + 1) * nb * QK],
            &x.d[i * nb..(i + 1) * nb],
            &x.s[i * nb..(i + 1) * nb],
        );
        let mut acc = 0f32;
        for b in 0..nb {
            let wq = &w.qs[b * 16..b * 16 + 16];
            let yq = &xq[b * QK..(b + 1) * QK];
            let mut dot = 0i32;
            for j in 0..16 {
                dot += (wq[j] & 0x0f) as i32 * yq[j] as i32;
                dot += (wq[j] >> 4) as i32 * yq[j + 16] as i32;
            }
            acc += dot as f32 * (f16_to_f32(w.d[b]) * xd[b]) + f16_to_f32(w.m[b]) * xs[b];
        }
        res[i] = acc;
    }
}

/// 5-bit weights (repacked, see [`super::kquant::repack_q5`]): Q5_0 as `(q - 16) * d`
/// against Q8_0 activations, Q5_1 (`min`) as `q * d + m` against Q8_1 activations.
pub(crate) fn q5(min: bool, w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    let nb = x.nb;
    for i in 0..x.n {
        let (xq, xd, xs) = (
            &x.qs[i * nb * QK..(i + 1) * nb * QK],
            &x.d[i * nb..(i + 1) * nb],
            &x.s[i * nb..(i + 1) * nb],
        );
        let mut acc = 0f32;
        for b in 0..nb {
            let block = &w.qs[b * 20..(b + 1) * 20];
            let yq = &xq[b * QK..(b + 1) * QK];
            let off = if min { 0 } else { 16 };
            let dot: i32 = (0..QK)
                .map(|j| (super::kquant::q5_value(block, j) as i32 - off) * yq[j] as i32)
                .sum();
            acc += dot as f32 * (f16_to_f32(w.d[b]) * xd[b]);
            if min {
                acc += f16_to_f32(w.m[b]) * xs[b];
            }
        }
        res[i] = acc;
    }
}

/// Q8_0 weights against Q8_0 activations.
pub(crate) fn q8(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    let nb = x.nb;
    for i in 0..x.n {
        let (xq, xd) = (
            &x.qs[i * nb * QK..(i + 1) * nb * QK],
            &x.d[i * nb..(i + 1) * nb],
        );
        let mut acc = 0f32;
        for b in 0..nb {
            let wq = &w.qs[b * QK..(b + 1) * QK];
            let yq = &xq[b * QK..(b + 1) * QK];
            let mut dot = 0i32;
            for j in 0..QK {
                dot += wq[j] as i8 as i32 * yq[j] as i32;
            }
            acc += dot as f32 * (f16_to_f32(w.d[b]) * xd[b]);
        }
        res[i] = acc;
    }
}
