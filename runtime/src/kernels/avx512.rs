//! x86_64 kernels with AVX-512 (`Isa::Avx512`: F, BW, VL and VNNI, on top
//! of AVX2, FMA and F16C): the float panel tiles of large batches (BiGS
//! over a sentence), whose 16 panel rows are one register here, and the q8
//! rows of batches, eight rows and two blocks at a time. One input's q8/q4
//! rows and every q4 batch are `super::vnni`'s kernels compiled with the
//! EVEX `vpdpbusd` (the 512-bit versions were no faster for one input,
//! whose products are bound by reads, and slower for q4: `bench runtime`,
//! README). Every other kernel is [`super::avx2`]'s.
//!
//! Everything here gives AVX2's results bit for bit: the integer block
//! sums are exact in every set, and every float operation of each row is
//! the one AVX2 does in the same order, only two blocks or sixteen rows to
//! a register. So a model gives the same outputs on every x86 kernel set.
//!
//! Memory accesses are bounded by the lengths of the slices passed in, as
//! in `avx2`.

use super::avx2::{
    self, prefetch, repeat4, rows4, scale_bits4, PanelKernel, PanelTile, QuantWeight, Rows4,
    PANEL_ROWS,
};
use super::tiles::{for_each_tile, shortest};
use super::vnni::{dpbusd_q4_rows4, dpbusd_q8_rows4};
use super::{Matrix, Weights};
use core::arch::x86_64::*;
use kilobyte_format::dtype::QK;
use kilobyte_format::{BlockQ4, BlockQ8};

pub(super) use avx2::{
    axpy, dot, gelu_tanh, head_dots, head_dots_i8, head_mix, head_mix_i8, quantize_q8,
};

/// The 512-bit kernels.
struct Avx512;

/// `y_i = W x_i` for `n` inputs; the dispatcher checked the shapes and,
/// for q8/q4 weights, quantised the inputs into `xq`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32], xq: &[BlockQ8]) {
    let (rows, cols) = (w.rows, w.cols);
    match w.weights {
        Weights::F32(w) => avx2::float_matmul::<_, Avx512>(w, rows, cols, x, n, y),
        Weights::F16(w) => avx2::float_matmul::<_, Avx512>(w, rows, cols, x, n, y),
        Weights::BF16(w) => avx2::float_matmul::<_, Avx512>(w, rows, cols, x, n, y),
        Weights::Q8(w) if n > 1 => q8_batch(w, rows, cols / QK, xq, n, y),
        Weights::Q8(w) => avx2::quant_matmul::<_, Avx512>(w, rows, cols / QK, xq, n, y),
        Weights::Q4(w) => avx2::quant_matmul::<_, Avx512>(w, rows, cols / QK, xq, n, y),
    }
}

impl Rows4<BlockQ8> for Avx512 {
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows4<const N: usize>(w: [&[BlockQ8]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
        dpbusd_q8_rows4!(dpbusd, w, x)
    }
}

impl Rows4<BlockQ4> for Avx512 {
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows4<const N: usize>(w: [&[BlockQ4]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
        dpbusd_q4_rows4!(dpbusd, w, x)
    }
}

/// `vpdpbusd` on 256 bits, EVEX-encoded (AVX512-VNNI with VL).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dpbusd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, a, b)
}

/// Inputs per panel tile: one accumulator register each, plus the panel's
/// column, leave half of the 32 registers for the compiler.
const PANEL_INPUTS: usize = 12;

impl PanelKernel for Avx512 {
    const INPUTS: usize = PANEL_INPUTS;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run(tile: &PanelTile, i0: usize, count: usize, y: &mut [f32]) {
        match count {
            1 => panel_tile::<1>(tile, i0, y),
            2 => panel_tile::<2>(tile, i0, y),
            3 => panel_tile::<3>(tile, i0, y),
            4 => panel_tile::<4>(tile, i0, y),
            5 => panel_tile::<5>(tile, i0, y),
            6 => panel_tile::<6>(tile, i0, y),
            7 => panel_tile::<7>(tile, i0, y),
            8 => panel_tile::<8>(tile, i0, y),
            9 => panel_tile::<9>(tile, i0, y),
            10 => panel_tile::<10>(tile, i0, y),
            11 => panel_tile::<11>(tile, i0, y),
            _ => panel_tile::<PANEL_INPUTS>(tile, i0, y),
        }
    }
}

/// Inputs `i0..i0 + N` of `tile`: each column of the panel (its 16 rows,
/// one register) against every input's value of that column, broadcast.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn panel_tile<const N: usize>(tile: &PanelTile, i0: usize, y: &mut [f32]) {
    let (x, kc) = tile.inputs::<N>(i0);
    let p = tile.panel.as_ptr();
    let mut acc = [_mm512_setzero_ps(); N];
    for c in 0..kc {
        // Unaligned load: as fast when aligned (the panel is), and the
        // tile does not rely on where its caller put the panel.
        let w = _mm512_loadu_ps(p.add(c * PANEL_ROWS));
        for (a, x) in acc.iter_mut().zip(&x) {
            *a = _mm512_fmadd_ps(w, _mm512_set1_ps(*x.as_ptr().add(c)), *a);
        }
    }
    let rows = tile.r.len().min(PANEL_ROWS);
    let mask: __mmask16 = ((1u32 << rows) - 1) as u16;
    for (m, a) in acc.iter().enumerate() {
        let at = (i0 + m) * tile.y_rows;
        let out = &mut y[at + tile.r.start..at + tile.r.end];
        // The mask covers `out`, which holds `rows` values.
        let o = out.as_mut_ptr();
        let a = if tile.add {
            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), *a)
        } else {
            *a
        };
        _mm512_mask_storeu_ps(o, mask, a);
    }
}

/// q8 rows of a batch, eight rows by four inputs a tile.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_batch(
    w: &[BlockQ8],
    rows: usize,
    blocks: usize,
    xq: &[BlockQ8],
    n: usize,
    y: &mut [f32],
) {
    let row = |r: usize| &w[r * blocks..][..blocks];
    let input = |i: usize| &xq[i * blocks..][..blocks];
    let bytes = blocks * size_of::<BlockQ8>();
    for_each_tile(rows, n, bytes, y, |r, i| {
        q8_rows8::<4>(r.map(row), i.map(input))
    });
}

/// The 32 values of blocks `b` and `b + 1` (two 256-bit halves), or of `b`
/// alone with zeros above when `pair` is false.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_values(p: *const BlockQ8, pair: bool) -> __m512i {
    let low = _mm512_zextsi256_si512((*p).values());
    if pair {
        _mm512_inserti64x4::<1>(low, (*p.add(1)).values())
    } else {
        low
    }
}

/// The i32 lanes of four rows' products reduced to `[r0 r1 r2 r3]` in
/// each 128-bit lane, exactly (integers): each lane's four sums of its
/// rows' four i32 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn reduce_rows4(p: [__m512i; 4]) -> __m512i {
    let pair = |a, b| _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    let (ab, cd) = (pair(p[0], p[1]), pair(p[2], p[3]));
    _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd))
}

/// Four u64s of f16 lanes as sixteen f32s, the first u64 lowest.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f16x16(q: [i64; 4]) -> __m512 {
    _mm512_cvtph_ps(_mm256_set_epi64x(q[3], q[2], q[1], q[0]))
}

/// The upper 256 bits of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn high_half(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// Rows `4g..4g + 4` of eight.
fn group<'a, W>(w: &[&'a [W]; 8], g: usize) -> [&'a [W]; 4] {
    core::array::from_fn(|k| w[4 * g + k])
}

/// Eight q8 weight rows against `N` q8 inputs, two blocks per step. Per
/// row this is `super::vnni`'s kernel: `vpdpbusd` on `w ^ 0x80` from a
/// `-128 x` start, the exact integer sums of each block's two 16-byte
/// halves as f32, times the f16 scales multiplied in f32, into the even
/// blocks' accumulator (the low 256 bits here) or the odd ones' (the high),
/// an odd last block into the even one, and the halves and the two
/// accumulators added as `avx2::rows4` does: so bit for bit AVX2's result.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_rows8<const N: usize>(w: [&[BlockQ8]; 8], x: [&[BlockQ8]; N]) -> [[f32; N]; 8] {
    let blocks = shortest(&w, &x);
    let flip = _mm512_set1_epi8(i8::MIN);
    let zero = _mm512_setzero_si512();
    // Rows 0-3 and 4-7, per input.
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    let mut b = 0;
    while b < blocks {
        let pair = b + 2 <= blocks;
        let biased: [__m512i; 8] = core::array::from_fn(|r| {
            let wb = w[r].as_ptr().add(b);
            prefetch(wb);
            _mm512_xor_si512(q8_values(wb, pair), flip)
        });
        let next = if pair { b + 1 } else { b };
        // An odd last block goes into the even blocks' lanes only.
        let lanes: __mmask16 = if pair { 0xffff } else { 0x00ff };
        let ws = [0, 1].map(|g| {
            let rows = group(&w, g);
            let (lo, hi) = (scale_bits4(&rows, b), scale_bits4(&rows, next));
            f16x16([lo, lo, hi, hi])
        });
        for (a, x) in acc.iter_mut().zip(&x) {
            let xb = x.as_ptr().add(b);
            let xv = q8_values(xb, pair);
            // Negated as i32 after the sum: exact at x = -128 too.
            let start = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, flip, xv));
            let (x0, x1) = (repeat4((*xb).d), repeat4((*x.as_ptr().add(next)).d));
            let xs = f16x16([x0, x0, x1, x1]);
            for (g, a) in a.iter_mut().enumerate() {
                let p = core::array::from_fn(|k| _mm512_dpbusd_epi32(start, biased[4 * g + k], xv));
                let dots = _mm512_cvtepi32_ps(reduce_rows4(p));
                let s = _mm512_mul_ps(ws[g], xs);
                *a = _mm512_mask3_fmadd_ps(dots, s, *a, lanes);
            }
        }
        b += 2;
    }
    let mut out = [[0.0; N]; 8];
    for (i, a) in acc.iter().enumerate() {
        for (g, a) in a.iter().enumerate() {
            let sums = _mm256_add_ps(_mm512_castps512_ps256(*a), high_half(*a));
            for (k, v) in rows4(sums).into_iter().enumerate() {
                out[4 * g + k][i] = v;
            }
        }
    }
    out
}
