//! AVX2 kernels for K-quant weights against Q8_K activations (see `kquant.rs` for the
//! arithmetic). Each super-block's weights are unpacked to unsigned bytes once per tile and
//! reused for every activation row of it; `vpmaddubsw` multiplies them with the activation
//! quants, `vpmaddwd` with the sub-block scales (broadcast by a byte shuffle), and the offsets
//! (Q4_K / Q5_K mins, Q6_K's 32) are applied through the activations' 16-value sums.
//!
//! Callers check the CPU features first (see [`super::Isa::detect`]).

// Index loops over tile rows are deliberate (with const N they unroll into registers).
#![allow(clippy::needless_range_loop)]

use super::kquant::{KFormat, KTile, QK_K};
use std::arch::x86_64::*;

macro_rules! ld256 {
    ($p:expr) => {
        _mm256_lddqu_si256($p as *const __m256i)
    };
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn h2f(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Shuffle controls that broadcast one i16 of a 128-bit lane to all eight i16 of each lane:
/// `BCAST[s]` picks element `s` (0..8) in both lanes.
const fn bcast_controls() -> [[u8; 32]; 8] {
    let mut out = [[0u8; 32]; 8];
    let mut s = 0;
    while s < 8 {
        let mut i = 0;
        while i < 32 {
            out[s][i] = (2 * s + i % 2) as u8;
            i += 1;
        }
        s += 1;
    }
    out
}
static BCAST: [[u8; 32]; 8] = bcast_controls();

/// Q6_K: element `2k` of the lane in the low lane, `2k + 1` in the high lane (k 0..4).
const fn pair_controls() -> [[u8; 32]; 4] {
    let mut out = [[0u8; 32]; 4];
    let mut k = 0;
    while k < 4 {
        let mut i = 0;
        while i < 32 {
            let elem = 2 * k + if i < 16 { 0 } else { 1 };
            out[k][i] = (2 * elem + i % 2) as u8;
            i += 1;
        }
        k += 1;
    }
    out
}
static PAIRS: [[u8; 32]; 4] = pair_controls();

/// Q4_K / Q5_K's packed 6-bit scales and mins as 16 i16: scales 0..8 in the low lane, mins
/// 0..8 in the high lane (llama.cpp's unpacking of the 12 bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_and_mins(p: *const u8) -> __m256i {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let mut u = [0u32; 4];
    std::ptr::copy_nonoverlapping(p, u.as_mut_ptr() as *mut u8, 12);
    u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let uaux = u[1] & KMASK1;
    u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    u[2] = uaux;
    u[0] &= KMASK1;
    _mm256_cvtepu8_epi16(_mm_set_epi32(
        u[3] as i32,
        u[2] as i32,
        u[1] as i32,
        u[0] as i32,
    ))
}

/// Bit `s` of every byte of `qh`, moved to bit 4 (Q5_K's fifth bits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bit(qh: __m256i, one: __m256i, s: i32) -> __m256i {
    let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s));
    _mm256_slli_epi16(_mm256_and_si256(h, one), 4)
}

/// Bits `s` and `s + 1` of every byte of `qh`, moved to bits 4 and 5 (Q6_K's high bits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn two_high_bits(qh: __m256i, m3: __m256i, s: i32) -> __m256i {
    let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s));
    _mm256_slli_epi16(_mm256_and_si256(h, m3), 4)
}

/// Q4_K (`Q5 = false`) or Q5_K (`Q5 = true`) × N activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45k<const N: usize, const Q5: bool>(t: &KTile, res: &mut [f32; 4]) {
    let bb = if Q5 { 176 } else { 144 };
    let qs_at = if Q5 { 48 } else { 16 };
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut accm = [_mm_setzero_ps(); N];
    for sb in 0..t.nsb {
        let b = t.w.as_ptr().add(sb * bb);
        let (d, dmin) = (h2f(b), h2f(b.add(2)));
        let ms = scales_and_mins(b.add(4));
        let scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(ms));
        let mins = _mm256_extracti128_si256(ms, 1);
        let qh = if Q5 {
            ld256!(b.add(16))
        } else {
            _mm256_setzero_si256()
        };
        let mut sumi = [_mm256_setzero_si256(); N];
        for j in 0..4 {
            let raw = ld256!(b.add(qs_at + 32 * j));
            let mut lo = _mm256_and_si256(raw, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if Q5 {
                lo = _mm256_or_si256(lo, fifth_bit(qh, one, 2 * j as i32));
                hi = _mm256_or_si256(hi, fifth_bit(qh, one, 2 * j as i32 + 1));
            }
            let sl = _mm256_shuffle_epi8(scales, ld256!(BCAST[2 * j].as_ptr()));
            let sh = _mm256_shuffle_epi8(scales, ld256!(BCAST[2 * j + 1].as_ptr()));
            for i in 0..N {
                let a = t.qs.as_ptr().add((i * t.nsb + sb) * QK_K + 64 * j);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ld256!(a)), sl);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ld256!(a.add(32))), sh);
                sumi[i] = _mm256_add_epi32(sumi[i], _mm256_add_epi32(p0, p1));
            }
        }
        for i in 0..N {
            let at = i * t.nsb + sb;
            let da = *t.d.get_unchecked(at);
            let bs = ld256!(t.bsums.as_ptr().add(at * 16));
            let q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            let pm = _mm_madd_epi16(mins, q8s);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[i]), _mm256_set1_ps(d * da), acc[i]);
            accm[i] = _mm_fmadd_ps(_mm_cvtepi32_ps(pm), _mm_set1_ps(dmin * da), accm[i]);
        }
    }
    for i in 0..N {
        let m = accm[i];
        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
        res[i] = hsum(acc[i]) - _mm_cvtss_f32(m);
    }
}

/// Q6_K × N activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k<const N: usize>(t: &KTile, res: &mut [f32; 4]) {
    let m4 = _mm256_set1_epi8(0x0F);
    let m3 = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); N];
    for sb in 0..t.nsb {
        let b = t.w.as_ptr().add(sb * 210);
        let d = h2f(b.add(208));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
        let mut sumi = [_mm256_setzero_si256(); N];
        for idx in 0..2 {
            let half = if idx == 0 {
                _mm256_castsi256_si128(sc16)
            } else {
                _mm256_extracti128_si256(sc16, 1)
            };
            let scales = _mm256_broadcastsi128_si256(half);
            let ql0 = ld256!(b.add(64 * idx));
            let ql1 = ld256!(b.add(64 * idx + 32));
            let qh = ld256!(b.add(128 + 32 * idx));
            let e = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), two_high_bits(qh, m3, 0)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), two_high_bits(qh, m3, 2)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    two_high_bits(qh, m3, 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    two_high_bits(qh, m3, 6),
                ),
            ];
            for k in 0..4 {
                let sk = _mm256_shuffle_epi8(scales, ld256!(PAIRS[k].as_ptr()));
                for i in 0..N {
                    let a =
                        t.qs.as_ptr()
                            .add((i * t.nsb + sb) * QK_K + 128 * idx + 32 * k);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(e[k], ld256!(a)), sk);
                    sumi[i] = _mm256_add_epi32(sumi[i], p);
                }
            }
        }
        for i in 0..N {
            let at = i * t.nsb + sb;
            let bs = ld256!(t.bsums.as_ptr().add(at * 16));
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            let s = _mm256_sub_epi32(sumi[i], offset);
            let f = d * *t.d.get_unchecked(at);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(f), acc[i]);
        }
    }
    for i in 0..N {
        res[i] = hsum(acc[i]);
    }
}

macro_rules! by_rows {
    ($f:ident, $t:expr, $res:expr $(, $c:expr)?) => {
        match $t.n {
            1 => $f::<1 $(, $c)?>($t, $res),
            2 => $f::<2 $(, $c)?>($t, $res),
            3 => $f::<3 $(, $c)?>($t, $res),
            _ => $f::<4 $(, $c)?>($t, $res),
        }
    };
}

/// One weight row against `t.n` (1..=4) activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `t` must hold `t.nsb` super-blocks of `fmt` and
/// `t.n` rows of `t.nsb` activation blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_tile(fmt: KFormat, t: &KTile, res: &mut [f32; 4]) {
    match fmt {
        KFormat::Q4K => by_rows!(q45k, t, res, false),
        KFormat::Q5K => by_rows!(q45k, t, res, true),
        KFormat::Q6K => by_rows!(q6k, t, res),
    }
}
