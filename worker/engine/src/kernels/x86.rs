//! x86-64 kernels: AVX2 + FMA (`vpmaddubsw`), and AVX-512 VNNI on 256-bit vectors
//! (`vpdpbusd`). Callers check the CPU features first (see [`super::Isa::detect`]).
//!
//! Each kernel dots one weight row with up to four activation rows, loading every weight block
//! once and reusing it for each row. The block loops are written with macros and const generics
//! so they stay in registers even in the workspace's opt-level 1 dev builds.

// Index loops over tile rows are deliberate (with const N they unroll into registers).
#![allow(clippy::needless_range_loop)]

use super::{ARows, RowBufs, WRow, QK};
use std::arch::x86_64::*;

/// Horizontal sum of 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// One f16 (bits) to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn h2f(h: *const u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(*h as i32)))
}

/// Unaligned loads through `lddqu`, a plain LLVM intrinsic: `_mm256_loadu_si256` goes through
/// `ptr::copy_nonoverlapping`, whose debug precondition checks cost more than the load in
/// the workspace's dev builds.
macro_rules! ld256 {
    ($p:expr) => {
        _mm256_lddqu_si256($p as *const __m256i)
    };
}

/// 16 bytes of nibbles -> 32 bytes (low nibbles first, then high nibbles).
macro_rules! nibbles {
    ($p:expr, $mask:expr) => {{
        let raw = _mm_lddqu_si128($p as *const __m128i);
        let lo = _mm_and_si128(raw, $mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), $mask);
        _mm256_set_m128i(hi, lo)
    }};
}

/// Row pointers of an activation tile: `base + i * stride` for i < N.
macro_rules! row_ptrs {
    ($base:expr, $stride:expr, $n:ident) => {{
        let mut p = [$base; $n];
        let mut i = 1;
        while i < $n {
            p[i] = p[i - 1].wrapping_add($stride);
            i += 1;
        }
        p
    }};
}

/// One tile kernel: weight row × N activation rows. `$load_w` turns the weight block pointer
/// into the u8 vector, `$y` turns (weight vector, activation vector) into the i8 operand,
/// `$dot` multiplies them into i32 sums of 4. `$min` is the factor of the activation block's
/// `s = d * sum(q)` (the Q4 min, or `d` for VNNI Q8), or `None`; those products are summed
/// in the loop, which beats a separate pass over the short rows.
macro_rules! tile_kernel {
    ($name:ident, $features:literal, $wstep:expr, |$wp:ident| $load_w:expr,
     |$wv:ident, $yv:ident| $y:expr, $dot:ident, |$wm:ident, $dwv:ident| $min:expr) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const N: usize>(w: &WRow, x: &ARows) -> ([__m256; N], [f32; N]) {
            let nb = x.nb;
            let mut $wp = w.qs.as_ptr();
            let mut wd = w.d.as_ptr();
            let mut $wm = w.m.as_ptr();
            let mut xq = row_ptrs!(x.qs.as_ptr(), nb * QK, N);
            let mut xd = row_ptrs!(x.d.as_ptr(), nb, N);
            let mut xs = row_ptrs!(x.s.as_ptr(), nb, N);
            let mut acc = [_mm256_setzero_ps(); N];
            let mut mins = [0f32; N];
            for _ in 0..nb {
                let $wv = $load_w;
                let $dwv = h2f(wd);
                let mf: Option<f32> = $min;
                for i in 0..N {
                    let $yv = ld256!(xq[i]);
                    let p = $dot($wv, $y);
                    let sc = _mm256_set1_ps($dwv * *xd[i]);
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[i]);
                    if let Some(mf) = mf {
                        mins[i] += mf * *xs[i];
                    }
                    xq[i] = xq[i].wrapping_add(QK);
                    xd[i] = xd[i].wrapping_add(1);
                    xs[i] = xs[i].wrapping_add(1);
                }
                $wp = $wp.wrapping_add($wstep);
                wd = wd.wrapping_add(1);
                $wm = $wm.wrapping_add(1);
            }
            (acc, mins)
        }
    };
}

/// u8 × i8 -> i32 sums of 4 with AVX2 (no saturation for |u| * |i| * 2 < 32768).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2(u: __m256i, i: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, i), _mm256_set1_epi16(1))
}

/// u8 × i8 -> i32 sums of 4 with VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vl,avx512vnni")]
fn dot_vnni(u: __m256i, i: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, i)
}

tile_kernel!(
    q4_avx2_t,
    "avx2,fma,f16c",
    16,
    |wp| nibbles!(wp, _mm_set1_epi8(0x0f)),
    |wv, y| y,
    dot_avx2,
    |wm, dw| Some(h2f(wm))
);
tile_kernel!(
    q4_vnni_t,
    "avx2,fma,f16c,avx512vl,avx512vnni",
    16,
    |wp| nibbles!(wp, _mm_set1_epi8(0x0f)),
    |wv, y| y,
    dot_vnni,
    |wm, dw| Some(h2f(wm))
);
/// 32 bytes, 0xFF where bit i of the u32 at `p` is set (byte i), else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes_from_bits(p: *const u8) -> __m256i {
    let bits = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
    let v = _mm256_set1_epi32(bits as i32);
    // Byte i takes source byte i / 8, then every bit but bit i % 8 is set: all ones iff bit i.
    let spread = _mm256_setr_epi64x(
        0x0000_0000_0000_0000,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let b = _mm256_shuffle_epi8(v, spread);
    let b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64));
    _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1))
}

/// A repacked Q5_0 block (fifth bits, then nibbles) as 32 signed bytes `q - 16`: a value
/// whose fifth bit is clear gets 0xF0 ORed in (nibble - 16 as i8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0_load(p: *const u8) -> __m256i {
    let nib = nibbles!(p.add(4), _mm_set1_epi8(0x0f));
    let clear = _mm256_andnot_si256(bytes_from_bits(p), _mm256_set1_epi8(0xF0u8 as i8));
    _mm256_or_si256(nib, clear)
}

/// A repacked Q5_1 block as 32 unsigned bytes `q` (0..31).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_1_load(p: *const u8) -> __m256i {
    let nib = nibbles!(p.add(4), _mm_set1_epi8(0x0f));
    _mm256_or_si256(
        nib,
        _mm256_and_si256(bytes_from_bits(p), _mm256_set1_epi8(0x10)),
    )
}

// 5-bit weights, 20 bytes a block (AVX2 only: AVX-512 machines run these too).
tile_kernel!(
    q5_0_avx2_t,
    "avx2,fma,f16c",
    20,
    |wp| q5_0_load(wp),
    |wv, y| y,
    dot_avx2_signed,
    |wm, dw| None
);
tile_kernel!(
    q5_1_avx2_t,
    "avx2,fma,f16c",
    20,
    |wp| q5_1_load(wp),
    |wv, y| y,
    dot_avx2,
    |wm, dw| Some(h2f(wm))
);
// Q8_0 with AVX2: the sign trick (|w| as u8, y with w's sign).
tile_kernel!(
    q8_avx2_t,
    "avx2,fma,f16c",
    QK,
    |wp| ld256!(wp),
    |wv, y| y,
    dot_avx2_signed,
    |wm, dw| None
);
// Q8_0 with VNNI: (w + 128) as u8, minus 128 * d_w * s_y per block (in the caller).
tile_kernel!(
    q8_vnni_t,
    "avx2,fma,f16c,avx512vl,avx512vnni",
    QK,
    |wp| _mm256_xor_si256(ld256!(wp), _mm256_set1_epi8(-128)),
    |wv, y| y,
    dot_vnni,
    |wm, dw| Some(dw)
);

/// i8 × i8 -> i32 sums of 4 with AVX2, through |w| and y * sign(w).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2_signed(w: __m256i, y: __m256i) -> __m256i {
    dot_avx2(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w))
}

/// Q4 kernel entry for N rows: the block sums plus the min term.
macro_rules! q4_entry {
    ($name:ident, $features:literal, $tile:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const N: usize>(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
            let (acc, mins) = $tile::<N>(w, x);
            for i in 0..N {
                res[i] = hsum(acc[i]) + mins[i];
            }
        }
    };
}

q4_entry!(q4_avx2_n, "avx2,fma,f16c", q4_avx2_t);
q4_entry!(q4_vnni256_n, "avx2,fma,f16c,avx512vl,avx512vnni", q4_vnni_t);
q4_entry!(q5_0_avx2_n, "avx2,fma,f16c", q5_0_avx2_t);
q4_entry!(q5_1_avx2_n, "avx2,fma,f16c", q5_1_avx2_t);

/// 512-bit VNNI tile kernel, two blocks per step (nb must be even): half the instructions of
/// the 256-bit kernel per block, which is what bounds prefill. `$load_w` gives the 64 weight
/// bytes of a block pair (as u8, in activation order) from `$wp`; per row and pair the float
/// work is one convert, one multiply by the activation scales (pre-expanded to lanes, see
/// [`QActs::dx`](super::QActs)) and one FMA with the weight scales.
macro_rules! tile512 {
    ($name:ident, $wstep:expr, |$wp:ident| $load_w:expr) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name<const N: usize>(w: &WRow, x: &ARows) -> [__m512; N] {
            let nb = x.nb;
            let mut $wp = w.qs.as_ptr();
            let mut wd = w.d.as_ptr();
            let mut xq = row_ptrs!(x.qs.as_ptr(), nb * QK, N);
            let mut xd = row_ptrs!(x.dx.as_ptr(), nb * 8, N);
            let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            let mut acc = [_mm512_setzero_ps(); N];
            for _ in 0..nb / 2 {
                let wv = $load_w;
                let dbits = (*wd as i32) | ((*wd.wrapping_add(1) as i32) << 16);
                let dw = _mm_cvtph_ps(_mm_cvtsi32_si128(dbits));
                let dwz = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(dw));
                for i in 0..N {
                    let y = _mm512_maskz_loadu_epi8(!0, xq[i]);
                    let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, y);
                    let dy = _mm512_maskz_loadu_ps(!0, xd[i]);
                    let t = _mm512_mul_ps(_mm512_cvtepi32_ps(p), dy);
                    acc[i] = _mm512_fmadd_ps(t, dwz, acc[i]);
                    xq[i] = xq[i].wrapping_add(2 * QK);
                    xd[i] = xd[i].wrapping_add(16);
                }
                $wp = $wp.wrapping_add($wstep);
                wd = wd.wrapping_add(2);
            }
            acc
        }
    };
}

// Q4: 32 bytes of nibbles for two blocks -> [lo0, hi0, lo1, hi1] (128-bit lanes): duplicate
// each block's 16 bytes, shift the copies that hold the high nibbles, mask.

/// Q4: 32 bytes of nibbles for two blocks -> [lo0, hi0, lo1, hi1] (128-bit lanes): duplicate
/// each block's 16 bytes, shift the copies that hold the high nibbles, mask.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_pair(wp: *const u8) -> __m512i {
    let raw = _mm512_castsi256_si512(ld256!(wp));
    let dup = _mm512_shuffle_i64x2(raw, raw, 0b01_01_00_00);
    let four = 0x0004_0004_0004_0004;
    let shifts = _mm512_setr_epi64(0, 0, four, four, 0, 0, four, four);
    _mm512_and_si512(_mm512_srlv_epi16(dup, shifts), _mm512_set1_epi8(0x0f))
}

/// Q8_0: two blocks as (w + 128) u8; the caller subtracts 128 * d_w * s_y.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_pair(wp: *const u8) -> __m512i {
    _mm512_xor_si512(
        _mm512_maskz_loadu_epi8(!0, wp as *const i8),
        _mm512_set1_epi8(-128),
    )
}

tile512!(q4_vnni512_t, 32, |wp| q4_pair(wp));
tile512!(q8_vnni512_t, 2 * QK, |wp| q8_pair(wp));

/// Two f16 scales (bits at `p`) spread over the 8 result lanes of each block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scales_pair(p: *const u16, idx: __m512i) -> __m512 {
    let bits = (*p as i32) | ((*p.wrapping_add(1) as i32) << 16);
    _mm512_permutexvar_ps(
        idx,
        _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))),
    )
}

const R4: usize = 4;

/// Decode shape (one activation row): four consecutive weight rows per call, each activation
/// block loaded once for all four.
macro_rules! rows512 {
    ($name:ident, $bytes_per_block:expr, $pair:ident) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(w: &WRow, x: &ARows) -> [__m512; R4] {
            let nb = x.nb;
            let mut wq = row_ptrs!(w.qs.as_ptr(), nb * $bytes_per_block, R4);
            let mut wd = row_ptrs!(w.d.as_ptr(), nb, R4);
            let mut xq = x.qs.as_ptr();
            let mut xd = x.dx.as_ptr();
            let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            let mut acc = [_mm512_setzero_ps(); R4];
            for _ in 0..nb / 2 {
                let y = _mm512_maskz_loadu_epi8(!0, xq);
                let dy = _mm512_maskz_loadu_ps(!0, xd);
                for r in 0..R4 {
                    let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), $pair(wq[r]), y);
                    let t = _mm512_mul_ps(_mm512_cvtepi32_ps(p), dy);
                    acc[r] = _mm512_fmadd_ps(t, scales_pair(wd[r], idx), acc[r]);
                    wq[r] = wq[r].wrapping_add(2 * $bytes_per_block);
                    wd[r] = wd[r].wrapping_add(2);
                }
                xq = xq.wrapping_add(2 * QK);
                xd = xd.wrapping_add(16);
            }
            acc
        }
    };
}

rows512!(q4_rows4, 16, q4_pair);
rows512!(q8_rows4, QK, q8_pair);

/// The decode shape with 256-bit vectors (AVX2): four weight rows per call, one block a step.
macro_rules! rows256 {
    ($name:ident, $bytes_per_block:expr, |$wp:ident| $load_w:expr, $dot:ident,
     |$wm:ident, $dw:ident| $min:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: &WRow, x: &ARows) -> ([__m256; R4], [f32; R4]) {
            let nb = x.nb;
            let mut wq = row_ptrs!(w.qs.as_ptr(), nb * $bytes_per_block, R4);
            let mut wd = row_ptrs!(w.d.as_ptr(), nb, R4);
            let mut wms = row_ptrs!(w.m.as_ptr(), nb, R4);
            let (mut xq, mut xd, mut xs) = (x.qs.as_ptr(), x.d.as_ptr(), x.s.as_ptr());
            let mut acc = [_mm256_setzero_ps(); R4];
            let mut mins = [0f32; R4];
            for _ in 0..nb {
                let y = ld256!(xq);
                let (dy, sy) = (*xd, *xs);
                for r in 0..R4 {
                    let $wp = wq[r];
                    let $wm = wms[r];
                    let $dw = h2f(wd[r]);
                    let p = $dot($load_w, y);
                    let sc = _mm256_set1_ps($dw * dy);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[r]);
                    let mf: Option<f32> = $min;
                    if let Some(mf) = mf {
                        mins[r] += mf * sy;
                    }
                    wq[r] = wq[r].wrapping_add($bytes_per_block);
                    wd[r] = wd[r].wrapping_add(1);
                    wms[r] = wms[r].wrapping_add(1);
                }
                xq = xq.wrapping_add(QK);
                xd = xd.wrapping_add(1);
                xs = xs.wrapping_add(1);
            }
            (acc, mins)
        }
    };
}

rows256!(
    q4_rows4_avx2,
    16,
    |wp| nibbles!(wp, _mm_set1_epi8(0x0f)),
    dot_avx2,
    |wm, dw| Some(h2f(wm))
);
rows256!(
    q8_rows4_avx2,
    QK,
    |wp| ld256!(wp),
    dot_avx2_signed,
    |_wm, dw| None
);

rows256!(
    q5_0_rows4_avx2,
    20,
    |wp| q5_0_load(wp),
    dot_avx2_signed,
    |_wm, dw| None
);
rows256!(
    q5_1_rows4_avx2,
    20,
    |wp| q5_1_load(wp),
    dot_avx2,
    |wm, dw| Some(h2f(wm))
);

/// [`rows4_avx2`] for 5-bit weights (`min`: Q5_1, else Q5_0).
///
/// # Safety
/// As [`rows4_avx2`]; `w.qs` holds 20 bytes per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows4_q5_avx2(min: bool, w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    let (acc, mins) = if min {
        q5_1_rows4_avx2(w, x)
    } else {
        q5_0_rows4_avx2(w, x)
    };
    for r in 0..R4 {
        res[r] = hsum(acc[r]) + mins[r];
    }
}

/// Four consecutive weight rows (`w` spans them) against one activation row, AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x.n == 1`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows4_avx2(q4: bool, w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    let (acc, mins) = if q4 {
        q4_rows4_avx2(w, x)
    } else {
        q8_rows4_avx2(w, x)
    };
    for r in 0..R4 {
        res[r] = hsum(acc[r]) + mins[r];
    }
}

/// Four consecutive weight rows (`w` spans them) against one activation row, 512-bit VNNI.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `x.nb` even, `x.n == 1`,
/// `x.dx` filled.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows4_vnni(q4: bool, w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    let nb = x.nb;
    let acc = if q4 { q4_rows4(w, x) } else { q8_rows4(w, x) };
    for r in 0..R4 {
        let h = if q4 { w.m.as_ptr() } else { w.d.as_ptr() };
        let extra = hdot512::<1>(h.wrapping_add(r * nb), x)[0];
        let extra = if q4 { extra } else { -128.0 * extra };
        res[r] = _mm512_reduce_add_ps(acc[r]) + extra;
    }
}

/// `sum_b f16(h[b]) * s[i][b]` for N activation rows (the Q4 min term, or the d term of
/// VNNI Q8), 16 blocks at a time.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn hdot512<const N: usize>(h: *const u16, x: &ARows) -> [f32; N] {
    let nb = x.nb;
    let mut acc = [_mm512_setzero_ps(); N];
    let mut b = 0;
    while b < nb {
        let left = nb - b;
        let mask: u16 = if left >= 16 { !0 } else { (1u16 << left) - 1 };
        let hv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
            mask,
            h.wrapping_add(b) as *const i16,
        ));
        let mut s = x.s.as_ptr().wrapping_add(b);
        for i in 0..N {
            acc[i] = _mm512_fmadd_ps(hv, _mm512_maskz_loadu_ps(mask, s), acc[i]);
            s = s.wrapping_add(nb);
        }
        b += 16;
    }
    let mut out = [0f32; N];
    for i in 0..N {
        out[i] = _mm512_reduce_add_ps(acc[i]);
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_vnni_n<const N: usize>(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    if !x.nb.is_multiple_of(2) {
        return q4_vnni256_n::<N>(w, x, res);
    }
    let acc = q4_vnni512_t::<N>(w, x);
    let mins = hdot512::<N>(w.m.as_ptr(), x);
    for i in 0..N {
        res[i] = _mm512_reduce_add_ps(acc[i]) + mins[i];
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_avx2_n<const N: usize>(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    let (acc, _) = q8_avx2_t::<N>(w, x);
    for i in 0..N {
        res[i] = hsum(acc[i]);
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_vnni_n<const N: usize>(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    if x.nb.is_multiple_of(2) {
        let acc = q8_vnni512_t::<N>(w, x);
        let ds = hdot512::<N>(w.d.as_ptr(), x);
        for i in 0..N {
            res[i] = _mm512_reduce_add_ps(acc[i]) - 128.0 * ds[i];
        }
        return;
    }
    let (acc, mins) = q8_vnni_t::<N>(w, x);
    for i in 0..N {
        res[i] = hsum(acc[i]) - 128.0 * mins[i];
    }
}

macro_rules! dispatch_n {
    ($f:ident, $w:expr, $x:expr, $res:expr) => {
        match $x.n {
            1 => $f::<1>($w, $x, $res),
            2 => $f::<2>($w, $x, $res),
            3 => $f::<3>($w, $x, $res),
            _ => $f::<4>($w, $x, $res),
        }
    };
}

/// # Safety
/// The CPU must support AVX2 and FMA; `w` and `x` must hold `x.nb` blocks (per row).
pub(crate) unsafe fn q4_avx2(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    dispatch_n!(q4_avx2_n, w, x, res)
}

/// # Safety
/// As [`q4_avx2`], plus AVX-512 VL and VNNI.
pub(crate) unsafe fn q4_vnni(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    dispatch_n!(q4_vnni_n, w, x, res)
}

/// # Safety
/// As [`q4_avx2`].
pub(crate) unsafe fn q8_avx2(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    dispatch_n!(q8_avx2_n, w, x, res)
}

/// # Safety
/// As [`q4_vnni`].
pub(crate) unsafe fn q8_vnni(w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    dispatch_n!(q8_vnni_n, w, x, res)
}

/// 5-bit weights (`min`: Q5_1, else Q5_0) against up to four activation rows.
///
/// # Safety
/// As [`q4_avx2`]; `w.qs` holds 20 bytes per block.
pub(crate) unsafe fn q5_avx2(min: bool, w: &WRow, x: &ARows, res: &mut [f32; 4]) {
    if min {
        dispatch_n!(q5_1_avx2_n, w, x, res)
    } else {
        dispatch_n!(q5_0_avx2_n, w, x, res)
    }
}

/// NaN lanes to 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn no_nan(v: __m256) -> __m256 {
    _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v))
}

/// AVX2 version of [`super::scalar::quantize_row`], bit-identical to it.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x.len()` a multiple of 32, `qs` as long, `d` and `s`
/// one per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_row(x: &[f32], o: &mut RowBufs) {
    let expand = o.dx.len() == 8 * (x.len() / QK);
    let nb = x.len() / QK;
    let sign = _mm256_set1_ps(-0.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        let p = x.as_ptr().add(b * QK);
        // NaN counts as 0 (as in the scalar path, and candle's: `NaN as i8 == 0`). Rows
        // that are all NaN (fully masked left pads) thus come out as zeros instead of
        // spreading NaN into the real rows through attention.
        let v0 = no_nan(_mm256_loadu_ps(p));
        let v1 = no_nan(_mm256_loadu_ps(p.add(8)));
        let v2 = no_nan(_mm256_loadu_ps(p.add(16)));
        let v3 = no_nan(_mm256_loadu_ps(p.add(24)));
        let mut mx = _mm256_andnot_ps(sign, v0);
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v1));
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v2));
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v3));
        let m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        let amax = _mm_cvtss_f32(m4);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        const R: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        // (inf * 0 is NaN: no_nan again.)
        let i0 = _mm256_cvtps_epi32(_mm256_round_ps::<R>(no_nan(_mm256_mul_ps(v0, idv))));
        let i1 = _mm256_cvtps_epi32(_mm256_round_ps::<R>(no_nan(_mm256_mul_ps(v1, idv))));
        let i2 = _mm256_cvtps_epi32(_mm256_round_ps::<R>(no_nan(_mm256_mul_ps(v2, idv))));
        let i3 = _mm256_cvtps_epi32(_mm256_round_ps::<R>(no_nan(_mm256_mul_ps(v3, idv))));
        let sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        let s4 = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01));
        let isum = _mm_cvtsi128_si32(s4);
        let p01 = _mm256_packs_epi32(i0, i1);
        let p23 = _mm256_packs_epi32(i2, i3);
        let packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm);
        _mm256_storeu_si256(o.qs.as_mut_ptr().add(b * QK) as *mut __m256i, packed);
        let db = amax / 127.0;
        // Rounded to f16 as llama.cpp stores them (see the scalar version).
        let both = _mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_setr_ps(
            db,
            db * isum as f32,
            0.0,
            0.0,
        )));
        let db = _mm_cvtss_f32(both);
        o.d[b] = db;
        o.s[b] = _mm_cvtss_f32(_mm_movehdup_ps(both));
        o.sq[b] = db * isum as f32;
        if expand {
            _mm256_storeu_ps(o.dx.as_mut_ptr().add(8 * b), _mm256_set1_ps(db));
        }
    }
}
