//! aarch64 kernels for Advanced SIMD (NEON), which every aarch64 target has.
//!
//! The functions are `unsafe` only to share the dispatcher with AVX2; they
//! need nothing that is not always there. Memory accesses are bounded by the
//! lengths of the slices passed in (each loop runs to the shortest).

use super::tiles::{for_each_tile, shortest};
use super::{Matrix, Weights};
use core::arch::aarch64::*;
use core::arch::asm;
use half::{bf16, f16};
use kilobyte_format::dtype::QK;
use kilobyte_format::quant::q8_scale;
use kilobyte_format::{BlockQ4, BlockQ8};

/// Four f16 to f32. `fcvtl` is baseline AArch64, but Rust's f16 vector
/// intrinsics are not stable yet.
#[inline]
unsafe fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) out, in(vreg) h,
        options(pure, nomem, nostack, preserves_flags));
    out
}

#[inline]
unsafe fn f16_bits_to_f32(bits: [u8; 2]) -> f32 {
    let out: f32;
    asm!("fcvt {0:s}, {1:h}", out(vreg) out, in(vreg) u16::from_le_bytes(bits),
        options(pure, nomem, nostack, preserves_flags));
    out
}

/// A float weight type that loads as four f32 lanes.
trait FloatWeight: Copy {
    unsafe fn load4(p: *const Self) -> float32x4_t;
    fn to_f32(self) -> f32;
}

impl FloatWeight for f32 {
    #[inline]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl FloatWeight for f16 {
    #[inline]
    unsafe fn load4(p: *const f16) -> float32x4_t {
        f16x4_to_f32(vld1_u16(p.cast()))
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl FloatWeight for bf16 {
    #[inline]
    unsafe fn load4(p: *const bf16) -> float32x4_t {
        // A bf16 is the top half of an f32.
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p.cast())))
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// A quantised weight block.
trait QuantWeight {
    /// The 32 values as signed bytes, in element order.
    unsafe fn values(&self) -> [int8x16_t; 2];
    fn scale_bits(&self) -> [u8; 2];
}

impl QuantWeight for BlockQ8 {
    #[inline]
    unsafe fn values(&self) -> [int8x16_t; 2] {
        let p = self.qs.as_ptr();
        [vld1q_s8(p), vld1q_s8(p.add(16))]
    }
    fn scale_bits(&self) -> [u8; 2] {
        self.d
    }
}

impl QuantWeight for BlockQ4 {
    #[inline]
    unsafe fn values(&self) -> [int8x16_t; 2] {
        // Byte j holds element j in its low nibble and j + 16 in its high one.
        let packed = vld1q_u8(self.qs.as_ptr());
        let low = vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f)));
        let high = vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed));
        let eight = vdupq_n_s8(8);
        [vsubq_s8(low, eight), vsubq_s8(high, eight)]
    }
    fn scale_bits(&self) -> [u8; 2] {
        self.d
    }
}

/// Sums of the products of two blocks, in four i32 lanes. Each i8 x i8
/// product fits in i16; pairs are widened to i32 before they are added.
#[inline]
unsafe fn block_dot(w: [int8x16_t; 2], x: [int8x16_t; 2]) -> int32x4_t {
    let mut s = vpaddlq_s16(vmull_s8(vget_low_s8(w[0]), vget_low_s8(x[0])));
    s = vpadalq_s16(s, vmull_high_s8(w[0], x[0]));
    s = vpadalq_s16(s, vmull_s8(vget_low_s8(w[1]), vget_low_s8(x[1])));
    vpadalq_s16(s, vmull_high_s8(w[1], x[1]))
}

/// The dot products of `R` weight rows with `N` inputs.
unsafe fn float_tile<W: FloatWeight, const R: usize, const N: usize>(
    w: [&[W]; R],
    x: [&[f32]; N],
) -> [[f32; N]; R] {
    let cols = shortest(&w, &x);
    let body = cols - cols % 4;
    let mut acc = [[vdupq_n_f32(0.0); N]; R];
    let mut j = 0;
    while j < body {
        let mut xv = [vdupq_n_f32(0.0); N];
        for (v, x) in xv.iter_mut().zip(&x) {
            *v = vld1q_f32(x.as_ptr().add(j));
        }
        for (acc, w) in acc.iter_mut().zip(&w) {
            let wv = W::load4(w.as_ptr().add(j));
            for (a, v) in acc.iter_mut().zip(&xv) {
                *a = vfmaq_f32(*a, wv, *v);
            }
        }
        j += 4;
    }
    let mut out = [[0.0; N]; R];
    for ((out, acc), w) in out.iter_mut().zip(&acc).zip(&w) {
        for ((o, a), x) in out.iter_mut().zip(acc).zip(&x) {
            let tail = w[body..cols].iter().zip(&x[body..cols]);
            *o = vaddvq_f32(*a) + tail.map(|(w, x)| w.to_f32() * x).sum::<f32>();
        }
    }
    out
}

/// Four float weight rows against one input (the generation step): 8
/// columns per step in two accumulators per row, eight FMA chains.
unsafe fn float_rows4<W: FloatWeight>(w: [&[W]; 4], x: &[f32]) -> [[f32; 1]; 4] {
    let cols = shortest(&w, &[x]);
    let body = cols - cols % 8;
    let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
    let mut j = 0;
    while j < body {
        let xv = [
            vld1q_f32(x.as_ptr().add(j)),
            vld1q_f32(x.as_ptr().add(j + 4)),
        ];
        for (acc, w) in acc.iter_mut().zip(&w) {
            let p = w.as_ptr().add(j);
            acc[0] = vfmaq_f32(acc[0], W::load4(p), xv[0]);
            acc[1] = vfmaq_f32(acc[1], W::load4(p.add(4)), xv[1]);
        }
        j += 8;
    }
    if j + 4 <= cols {
        let xv = vld1q_f32(x.as_ptr().add(j));
        for (acc, w) in acc.iter_mut().zip(&w) {
            acc[0] = vfmaq_f32(acc[0], W::load4(w.as_ptr().add(j)), xv);
        }
        j += 4;
    }
    let mut out = [[0.0; 1]; 4];
    for ((out, acc), w) in out.iter_mut().zip(&acc).zip(&w) {
        let tail = w[j..cols].iter().zip(&x[j..cols]);
        out[0] =
            vaddvq_f32(vaddq_f32(acc[0], acc[1])) + tail.map(|(w, x)| w.to_f32() * x).sum::<f32>();
    }
    out
}

/// The dot products of `R` quantised weight rows with `N` q8 inputs.
unsafe fn quant_tile<W: QuantWeight, const R: usize, const N: usize>(
    w: [&[W]; R],
    x: [&[BlockQ8]; N],
) -> [[f32; N]; R] {
    let blocks = shortest(&w, &x);
    let mut acc = [[vdupq_n_f32(0.0); N]; R];
    for b in 0..blocks {
        let mut xv = [[vdupq_n_s8(0); 2]; N];
        let mut xd = [0.0f32; N];
        for ((v, d), x) in xv.iter_mut().zip(&mut xd).zip(&x) {
            let block = &*x.as_ptr().add(b);
            *v = block.values();
            *d = f16_bits_to_f32(block.d);
        }
        for (acc, w) in acc.iter_mut().zip(&w) {
            let block = &*w.as_ptr().add(b);
            let (wv, wd) = (block.values(), f16_bits_to_f32(block.scale_bits()));
            for ((a, v), d) in acc.iter_mut().zip(&xv).zip(&xd) {
                *a = vfmaq_n_f32(*a, vcvtq_f32_s32(block_dot(wv, *v)), wd * d);
            }
        }
    }
    let mut out = [[0.0; N]; R];
    for (out, acc) in out.iter_mut().zip(&acc) {
        for (o, a) in out.iter_mut().zip(acc) {
            *o = vaddvq_f32(*a);
        }
    }
    out
}

/// `y_i = W x_i` for `n` inputs; the dispatcher checked the shapes and,
/// for q8/q4 weights, quantised the inputs into `xq`.
pub(super) unsafe fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32], xq: &[BlockQ8]) {
    let (rows, cols) = (w.rows, w.cols);
    match w.weights {
        Weights::F32(w) => float_matmul(w, rows, cols, x, n, y),
        Weights::F16(w) => float_matmul(w, rows, cols, x, n, y),
        Weights::BF16(w) => float_matmul(w, rows, cols, x, n, y),
        Weights::Q8(w) => quant_matmul(w, rows, cols / QK, xq, n, y),
        Weights::Q4(w) => quant_matmul(w, rows, cols / QK, xq, n, y),
    }
}

// As for AVX2: 4 rows x 1 input for a matvec (independent FMA chains),
// 2 rows x 4 inputs for a batch (each weight vector feeds four FMAs).

unsafe fn float_matmul<W: FloatWeight>(
    w: &[W],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let row = |r: usize| &w[r * cols..][..cols];
    let input = |i: usize| &x[i * cols..][..cols];
    let bytes = cols * 4;
    if n == 1 {
        for_each_tile(rows, n, bytes, y, |r, [i]| {
            float_rows4::<W>(r.map(row), input(i))
        });
    } else {
        for_each_tile(rows, n, bytes, y, |r, i| {
            float_tile::<W, 2, 4>(r.map(row), i.map(input))
        });
    }
}

unsafe fn quant_matmul<W: QuantWeight>(
    w: &[W],
    rows: usize,
    blocks: usize,
    xq: &[BlockQ8],
    n: usize,
    y: &mut [f32],
) {
    let row = |r: usize| &w[r * blocks..][..blocks];
    let input = |i: usize| &xq[i * blocks..][..blocks];
    let bytes = blocks * size_of::<BlockQ8>();
    if n == 1 {
        for_each_tile(rows, n, bytes, y, |r, i| {
            quant_tile::<W, 4, 1>(r.map(row), i.map(input))
        });
    } else {
        for_each_tile(rows, n, bytes, y, |r, i| {
            quant_tile::<W, 2, 4>(r.map(row), i.map(input))
        });
    }
}

/// [`super::scalar::quantize_q8`], bit for bit, over whole blocks of `x`.
pub(super) unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    let (lo, hi) = (vdupq_n_f32(-127.0), vdupq_n_f32(127.0));
    for (src, dst) in x.chunks_exact(QK).zip(out) {
        let mut v = [vdupq_n_f32(0.0); 8];
        let mut m = vdupq_n_f32(0.0);
        for (k, v) in v.iter_mut().enumerate() {
            *v = vld1q_f32(src.as_ptr().add(4 * k));
            m = vmaxq_f32(m, vabsq_f32(*v));
        }
        let (d, inv) = q8_scale(vmaxvq_f32(m));
        dst.d = d;
        for (k, v) in v.chunks_exact(2).enumerate() {
            // vcvtnq rounds half to even, like rintf.
            let round = |v| vcvtnq_s32_f32(vminq_f32(vmaxq_f32(vmulq_n_f32(v, inv), lo), hi));
            let halves = vcombine_s16(vmovn_s32(round(v[0])), vmovn_s32(round(v[1])));
            vst1_s8(dst.qs.as_mut_ptr().add(8 * k), vmovn_s16(halves));
        }
    }
}

// ---------------------------------------------------------------------------
// Vector ops

#[inline]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Four accumulators hide the FMA latency.
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut j = 0;
    while j + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = vfmaq_f32(
                *acc,
                vld1q_f32(pa.add(j + 4 * k)),
                vld1q_f32(pb.add(j + 4 * k)),
            );
        }
        j += 16;
    }
    while j + 4 <= n {
        acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(j)), vld1q_f32(pb.add(j)));
        j += 4;
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    vaddvq_f32(sum)
        + a[j..n]
            .iter()
            .zip(&b[j..n])
            .map(|(a, b)| a * b)
            .sum::<f32>()
}

#[inline]
pub(super) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let mut j = 0;
    while j + 4 <= n {
        vst1q_f32(
            py.add(j),
            vfmaq_n_f32(vld1q_f32(py.add(j)), vld1q_f32(px.add(j)), alpha),
        );
        j += 4;
    }
    for (y, x) in y[j..n].iter_mut().zip(&x[j..n]) {
        *y += alpha * x;
    }
}

/// Eight i8 values widened to f32.
#[inline]
unsafe fn load8_i8(p: *const i8) -> [float32x4_t; 2] {
    let wide = vmovl_s8(vld1_s8(p));
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide))),
        vcvtq_f32_s32(vmovl_high_s16(wide)),
    ]
}

#[inline]
unsafe fn dot_i8(a: &[f32], b: &[i8]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut j = 0;
    while j + 8 <= n {
        let v = load8_i8(b.as_ptr().add(j));
        acc[0] = vfmaq_f32(acc[0], vld1q_f32(a.as_ptr().add(j)), v[0]);
        acc[1] = vfmaq_f32(acc[1], vld1q_f32(a.as_ptr().add(j + 4)), v[1]);
        j += 8;
    }
    let tail = a[j..n].iter().zip(&b[j..n]).map(|(a, &b)| a * b as f32);
    vaddvq_f32(vaddq_f32(acc[0], acc[1])) + tail.sum::<f32>()
}

#[inline]
unsafe fn axpy_i8(alpha: f32, x: &[i8], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut j = 0;
    while j + 8 <= n {
        let v = load8_i8(x.as_ptr().add(j));
        for (k, v) in v.into_iter().enumerate() {
            let py = y.as_mut_ptr().add(j + 4 * k);
            vst1q_f32(py, vfmaq_n_f32(vld1q_f32(py), v, alpha));
        }
        j += 8;
    }
    for (y, &x) in y[j..n].iter_mut().zip(&x[j..n]) {
        *y += alpha * x as f32;
    }
}

// ---------------------------------------------------------------------------
// Attention steps; see `super::scalar::head_dots` for the contract.

pub(super) unsafe fn head_dots(q: &[f32], keys: &[f32], stride: usize, scores: &mut [f32]) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = dot(q, &keys[i * stride..]);
    }
}

pub(super) unsafe fn head_dots_i8(q: &[f32], keys: &[i8], stride: usize, scores: &mut [f32]) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = dot_i8(q, &keys[i * stride..]);
    }
}

/// The same sums as `axpy` per position, in the same order (bit for bit),
/// with `out` held in registers 16 columns at a time while the positions
/// stream past.
pub(super) unsafe fn head_mix(p: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    let hd = out.len();
    let fits = p
        .len()
        .saturating_sub(1)
        .saturating_mul(stride)
        .saturating_add(hd)
        <= values.len();
    if !fits {
        out.fill(0.0);
        for (i, &p) in p.iter().enumerate() {
            axpy(p, &values[i * stride..], out);
        }
        return;
    }
    let v = values.as_ptr();
    let mut c = 0;
    while c + 16 <= hd {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for (i, &p) in p.iter().enumerate() {
            let row = v.add(i * stride + c);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = vfmaq_n_f32(*a, vld1q_f32(row.add(4 * k)), p);
            }
        }
        for (k, a) in acc.iter().enumerate() {
            vst1q_f32(out.as_mut_ptr().add(c + 4 * k), *a);
        }
        c += 16;
    }
    while c + 4 <= hd {
        let mut acc = vdupq_n_f32(0.0);
        for (i, &p) in p.iter().enumerate() {
            acc = vfmaq_n_f32(acc, vld1q_f32(v.add(i * stride + c)), p);
        }
        vst1q_f32(out.as_mut_ptr().add(c), acc);
        c += 4;
    }
    out[c..].fill(0.0);
    for (i, &p) in p.iter().enumerate() {
        for (o, x) in out[c..].iter_mut().zip(&values[i * stride + c..]) {
            *o += p * x;
        }
    }
}

pub(super) unsafe fn head_mix_i8(p: &[f32], values: &[i8], stride: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (i, &p) in p.iter().enumerate() {
        axpy_i8(p, &values[i * stride..], out);
    }
}

/// `e^x` for `x` in [-88, 88] (callers clamp); see the AVX2 version.
#[inline]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let n = vrndnq_f32(vmulq_n_f32(x, core::f32::consts::LOG2_E));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let e_r = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0));
    let two_n = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(e_r, vreinterpretq_f32_s32(two_n))
}

/// [`super::scalar::gelu_tanh`] as `x / (1 + e^(-2u))`; see the AVX2 version.
pub(super) unsafe fn gelu_tanh(x: &mut [f32]) {
    let body = x.len() - x.len() % 4;
    let (k, c) = (-2.0 * super::scalar::SQRT_2_OVER_PI, 0.044715);
    let (lo, hi) = (vdupq_n_f32(-88.0), vdupq_n_f32(88.0));
    for chunk in x[..body].chunks_exact_mut(4) {
        let v = vld1q_f32(chunk.as_ptr());
        let v3 = vmulq_f32(vmulq_f32(v, v), v);
        let t = vmulq_n_f32(vfmaq_n_f32(v, v3, c), k);
        // fmin/fmax propagate NaN.
        let t = vmaxq_f32(lo, vminq_f32(hi, t));
        let y = vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0), exp4(t)));
        vst1q_f32(chunk.as_mut_ptr(), y);
    }
    super::scalar::gelu_tanh(&mut x[body..]);
}
