//! wasm32 kernels for WebAssembly SIMD128 (Cargo feature `simd128`).
//!
//! WebAssembly cannot ask at run time whether the engine has SIMD (a module
//! that uses it simply fails to load where it is missing), so the choice is
//! made when the runtime is compiled: with the feature, these functions are
//! built with `#[target_feature(enable = "simd128")]` and the dispatcher
//! picks them; everything outside this file stays scalar wasm, which keeps
//! `set_isa(Isa::Scalar)` in the same module a fair baseline.
//!
//! SIMD128 has no fused multiply-add (that is the relaxed-SIMD proposal), so
//! float products round twice, as the scalar code does. Memory accesses are
//! bounded by the lengths of the slices passed in.

use super::tiles::{for_each_tile, shortest};
use super::{Matrix, Weights};
use core::arch::wasm32::*;
use half::{bf16, f16};
use kilobyte_format::dtype::QK;
use kilobyte_format::quant::q8_scale;
use kilobyte_format::{BlockQ4, BlockQ8};

#[inline]
#[target_feature(enable = "simd128")]
unsafe fn load(p: *const f32) -> v128 {
    v128_load(p.cast())
}

#[inline]
#[target_feature(enable = "simd128")]
unsafe fn store(p: *mut f32, v: v128) {
    v128_store(p.cast(), v)
}

#[inline]
#[target_feature(enable = "simd128")]
unsafe fn hsum(v: v128) -> f32 {
    let s = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let s = f32x4_add(s, i32x4_shuffle::<1, 0, 3, 2>(s, s));
    f32x4_extract_lane::<0>(s)
}

/// A float weight type that loads as four f32 lanes.
trait FloatWeight: Copy {
    unsafe fn load4(p: *const Self) -> v128;
    fn to_f32(self) -> f32;
}

impl FloatWeight for f32 {
    #[inline]
    #[target_feature(enable = "simd128")]
    unsafe fn load4(p: *const f32) -> v128 {
        load(p)
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl FloatWeight for f16 {
    /// Exact for every f16: the exponent and mantissa bits moved into f32
    /// position are the value times 2^-112 (subnormals included, as wasm
    /// never flushes them), so one multiply by 2^112 restores it; infinities
    /// and NaNs get the f32 all-ones exponent instead.
    #[inline]
    #[target_feature(enable = "simd128")]
    unsafe fn load4(p: *const f16) -> v128 {
        let h = u32x4_load_extend_u16x4(p.cast());
        let magnitude = v128_and(h, u32x4_splat(0x7fff));
        let sign = i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16);
        let scaled = f32x4_mul(
            u32x4_shl(magnitude, 13),
            f32x4_splat(f32::from_bits(0x7780_0000)),
        );
        let special = i32x4_ge(magnitude, u32x4_splat(0x7c00));
        let special_bits = v128_or(u32x4_shl(magnitude, 13), u32x4_splat(0x7f80_0000));
        v128_or(v128_bitselect(special_bits, scaled, special), sign)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl FloatWeight for bf16 {
    #[inline]
    #[target_feature(enable = "simd128")]
    unsafe fn load4(p: *const bf16) -> v128 {
        // A bf16 is the top half of an f32.
        u32x4_shl(u32x4_load_extend_u16x4(p.cast()), 16)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// A block scale: f16 bits to f32 by the same exact construction as the
/// f16 weight loads. The `half` crate's portable conversion (wasm has no
/// f16 instruction) branches on the exponent, and once per 32 products it
/// cost more than the products themselves.
#[inline]
fn scale_to_f32(bits: [u8; 2]) -> f32 {
    let h = u16::from_le_bytes(bits) as u32;
    let magnitude = h & 0x7fff;
    let value = if magnitude >= 0x7c00 {
        f32::from_bits(magnitude << 13 | 0x7f80_0000)
    } else {
        f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000)
    };
    f32::from_bits(value.to_bits() | (h & 0x8000) << 16)
}

/// A quantised weight block.
trait QuantWeight {
    /// The 32 values as signed bytes, in element order.
    unsafe fn values(&self) -> [v128; 2];
    fn scale(&self) -> f32;
}

impl QuantWeight for BlockQ8 {
    #[inline]
    #[target_feature(enable = "simd128")]
    unsafe fn values(&self) -> [v128; 2] {
        let p = self.qs.as_ptr();
        [v128_load(p.cast()), v128_load(p.add(16).cast())]
    }
    fn scale(&self) -> f32 {
        scale_to_f32(self.d)
    }
}

impl QuantWeight for BlockQ4 {
    #[inline]
    #[target_feature(enable = "simd128")]
    unsafe fn values(&self) -> [v128; 2] {
        // Byte j holds element j in its low nibble and j + 16 in its high one.
        let packed = v128_load(self.qs.as_ptr().cast());
        let low = v128_and(packed, u8x16_splat(0x0f));
        let high = u8x16_shr(packed, 4);
        let eight = i8x16_splat(8);
        [i8x16_sub(low, eight), i8x16_sub(high, eight)]
    }
    fn scale(&self) -> f32 {
        scale_to_f32(self.d)
    }
}

/// The exact integer dot product of two blocks, in four i32 lanes. A
/// product of two bytes fits in i16, and so does the sum of two of them as
/// long as `x` is within ±127 (the activation quantiser guarantees it):
/// 2 * 128 * 127 < 2^15. So the low and high halves are added as i16
/// before the single widening add.
#[inline]
#[target_feature(enable = "simd128")]
unsafe fn block_dot(w: [v128; 2], x: [v128; 2]) -> v128 {
    i32x4_add(dot16(w[0], x[0]), dot16(w[1], x[1]))
}

/// Half of [`block_dot`]: 16 products summed into four lanes.
#[inline]
#[target_feature(enable = "simd128")]
unsafe fn dot16(w: v128, x: v128) -> v128 {
    let pairs = i16x8_add(i16x8_extmul_low_i8x16(w, x), i16x8_extmul_high_i8x16(w, x));
    i32x4_extadd_pairwise_i16x8(pairs)
}

/// The dot products of `R` weight rows with `N` inputs.
#[target_feature(enable = "simd128")]
unsafe fn float_tile<W: FloatWeight, const R: usize, const N: usize>(
    w: [&[W]; R],
    x: [&[f32]; N],
) -> [[f32; N]; R] {
    let cols = shortest(&w, &x);
    let body = cols - cols % 4;
    let mut acc = [[f32x4_splat(0.0); N]; R];
    let mut j = 0;
    while j < body {
        let mut xv = [f32x4_splat(0.0); N];
        for (v, x) in xv.iter_mut().zip(&x) {
            *v = load(x.as_ptr().add(j));
        }
        for (acc, w) in acc.iter_mut().zip(&w) {
            let wv = W::load4(w.as_ptr().add(j));
            for (a, v) in acc.iter_mut().zip(&xv) {
                *a = f32x4_add(*a, f32x4_mul(wv, *v));
            }
        }
        j += 4;
    }
    let mut out = [[0.0; N]; R];
    for ((out, acc), w) in out.iter_mut().zip(&acc).zip(&w) {
        for ((o, a), x) in out.iter_mut().zip(acc).zip(&x) {
            let tail = w[body..cols].iter().zip(&x[body..cols]);
            *o = hsum(*a) + tail.map(|(w, x)| w.to_f32() * x).sum::<f32>();
        }
    }
    out
}

/// The dot products of `R` quantised weight rows with `N` q8 inputs.
#[target_feature(enable = "simd128")]
unsafe fn quant_tile<W: QuantWeight, const R: usize, const N: usize>(
    w: [&[W]; R],
    x: [&[BlockQ8]; N],
) -> [[f32; N]; R] {
    let blocks = shortest(&w, &x);
    let mut acc = [[f32x4_splat(0.0); N]; R];
    for b in 0..blocks {
        let mut xv = [[i8x16_splat(0); 2]; N];
        let mut xd = [0.0f32; N];
        for ((v, d), x) in xv.iter_mut().zip(&mut xd).zip(&x) {
            let block = &*x.as_ptr().add(b);
            *v = block.values();
            *d = QuantWeight::scale(block);
        }
        for (acc, w) in acc.iter_mut().zip(&w) {
            let block = &*w.as_ptr().add(b);
            let (wv, wd) = (block.values(), QuantWeight::scale(block));
            for ((a, v), d) in acc.iter_mut().zip(&xv).zip(&xd) {
                let dots = f32x4_convert_i32x4(block_dot(wv, *v));
                *a = f32x4_add(*a, f32x4_mul(dots, f32x4_splat(wd * d)));
            }
        }
    }
    let mut out = [[0.0; N]; R];
    for (out, acc) in out.iter_mut().zip(&acc) {
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(*a);
        }
    }
    out
}

/// `y_i = W x_i` for `n` inputs; the dispatcher checked the shapes and,
/// for q8/q4 weights, quantised the inputs into `xq`.
#[target_feature(enable = "simd128")]
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

// As for AVX2 and NEON: 4 rows x 1 input for a matvec (four independent
// accumulator chains), 2 rows x 4 inputs for a batch (each weight vector
// feeds four products); both fit the 16 vector registers engines map to.

#[target_feature(enable = "simd128")]
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
        for_each_tile(rows, n, bytes, y, |r, i| {
            float_tile::<W, 4, 1>(r.map(row), i.map(input))
        });
    } else {
        for_each_tile(rows, n, bytes, y, |r, i| {
            float_tile::<W, 2, 4>(r.map(row), i.map(input))
        });
    }
}

#[target_feature(enable = "simd128")]
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
#[target_feature(enable = "simd128")]
pub(super) unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (src, dst) in x.chunks_exact(QK).zip(out) {
        let mut v = [f32x4_splat(0.0); 8];
        let mut m = f32x4_splat(0.0);
        for (k, v) in v.iter_mut().enumerate() {
            *v = load(src.as_ptr().add(4 * k));
            // pmax keeps `m` for a NaN lane, as the scalar fold's f32::max.
            m = f32x4_pmax(m, f32x4_abs(*v));
        }
        let lanes = [
            f32x4_extract_lane::<0>(m),
            f32x4_extract_lane::<1>(m),
            f32x4_extract_lane::<2>(m),
            f32x4_extract_lane::<3>(m),
        ];
        let (d, inv) = q8_scale(lanes.into_iter().fold(0.0, f32::max));
        dst.d = d;
        let inv = f32x4_splat(inv);
        for (k, v) in v.chunks_exact(4).enumerate() {
            let low = i16x8_narrow_i32x4(round_q8(v[0], inv), round_q8(v[1], inv));
            let high = i16x8_narrow_i32x4(round_q8(v[2], inv), round_q8(v[3], inv));
            v128_store(
                dst.qs.as_mut_ptr().add(16 * k).cast(),
                i8x16_narrow_i16x8(low, high),
            );
        }
    }
}

/// `rintf(clamp(v * inv, -127, 127))` as i32 lanes. min/max propagate NaN,
/// which truncates to 0 as the scalar `rintf(NaN) as i8` does; `nearest`
/// rounds half to even like rintf.
#[inline]
#[target_feature(enable = "simd128")]
unsafe fn round_q8(v: v128, inv: v128) -> v128 {
    let c = f32x4_min(
        f32x4_max(f32x4_mul(v, inv), f32x4_splat(-127.0)),
        f32x4_splat(127.0),
    );
    i32x4_trunc_sat_f32x4(f32x4_nearest(c))
}

// ---------------------------------------------------------------------------
// Vector ops

#[inline]
#[target_feature(enable = "simd128")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Four accumulators: independent add chains.
    let mut acc = [f32x4_splat(0.0); 4];
    let mut j = 0;
    while j + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let p = f32x4_mul(load(pa.add(j + 4 * k)), load(pb.add(j + 4 * k)));
            *acc = f32x4_add(*acc, p);
        }
        j += 16;
    }
    while j + 4 <= n {
        acc[0] = f32x4_add(acc[0], f32x4_mul(load(pa.add(j)), load(pb.add(j))));
        j += 4;
    }
    let sum = f32x4_add(f32x4_add(acc[0], acc[1]), f32x4_add(acc[2], acc[3]));
    hsum(sum)
        + a[j..n]
            .iter()
            .zip(&b[j..n])
            .map(|(a, b)| a * b)
            .sum::<f32>()
}

#[inline]
#[target_feature(enable = "simd128")]
pub(super) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let a = f32x4_splat(alpha);
    let mut j = 0;
    while j + 4 <= n {
        store(
            py.add(j),
            f32x4_add(load(py.add(j)), f32x4_mul(load(px.add(j)), a)),
        );
        j += 4;
    }
    for (y, x) in y[j..n].iter_mut().zip(&x[j..n]) {
        *y += alpha * x;
    }
}

/// Eight i8 values widened to f32.
#[inline]
#[target_feature(enable = "simd128")]
unsafe fn load8_i8(p: *const i8) -> [v128; 2] {
    let wide = i16x8_load_extend_i8x8(p);
    [
        f32x4_convert_i32x4(i32x4_extend_low_i16x8(wide)),
        f32x4_convert_i32x4(i32x4_extend_high_i16x8(wide)),
    ]
}

#[inline]
#[target_feature(enable = "simd128")]
unsafe fn dot_i8(a: &[f32], b: &[i8]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [f32x4_splat(0.0); 2];
    let mut j = 0;
    while j + 8 <= n {
        let v = load8_i8(b.as_ptr().add(j));
        acc[0] = f32x4_add(acc[0], f32x4_mul(load(a.as_ptr().add(j)), v[0]));
        acc[1] = f32x4_add(acc[1], f32x4_mul(load(a.as_ptr().add(j + 4)), v[1]));
        j += 8;
    }
    let tail = a[j..n].iter().zip(&b[j..n]).map(|(a, &b)| a * b as f32);
    hsum(f32x4_add(acc[0], acc[1])) + tail.sum::<f32>()
}

#[inline]
#[target_feature(enable = "simd128")]
unsafe fn axpy_i8(alpha: f32, x: &[i8], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let a = f32x4_splat(alpha);
    let mut j = 0;
    while j + 8 <= n {
        let v = load8_i8(x.as_ptr().add(j));
        for (k, v) in v.into_iter().enumerate() {
            let py = y.as_mut_ptr().add(j + 4 * k);
            store(py, f32x4_add(load(py), f32x4_mul(v, a)));
        }
        j += 8;
    }
    for (y, &x) in y[j..n].iter_mut().zip(&x[j..n]) {
        *y += alpha * x as f32;
    }
}

// ---------------------------------------------------------------------------
// Attention steps; see `super::scalar::head_dots` for the contract.

#[target_feature(enable = "simd128")]
pub(super) unsafe fn head_dots(q: &[f32], keys: &[f32], stride: usize, scores: &mut [f32]) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = dot(q, &keys[i * stride..]);
    }
}

#[target_feature(enable = "simd128")]
pub(super) unsafe fn head_dots_i8(q: &[f32], keys: &[i8], stride: usize, scores: &mut [f32]) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = dot_i8(q, &keys[i * stride..]);
    }
}

#[target_feature(enable = "simd128")]
pub(super) unsafe fn head_mix(p: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (i, &p) in p.iter().enumerate() {
        axpy(p, &values[i * stride..], out);
    }
}

#[target_feature(enable = "simd128")]
pub(super) unsafe fn head_mix_i8(p: &[f32], values: &[i8], stride: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (i, &p) in p.iter().enumerate() {
        axpy_i8(p, &values[i * stride..], out);
    }
}

/// `e^x` for `x` in [-88, 88] (callers clamp); the AVX2 version's method.
/// Without FMA, `n * 0.693359375` is still exact (that constant has 9
/// significant bits and |n| <= 127), which is why ln 2 is split this way.
#[inline]
#[target_feature(enable = "simd128")]
unsafe fn exp4(x: v128) -> v128 {
    let n = f32x4_nearest(f32x4_mul(x, f32x4_splat(core::f32::consts::LOG2_E)));
    let r = f32x4_sub(x, f32x4_mul(n, f32x4_splat(0.693_359_4)));
    let r = f32x4_sub(r, f32x4_mul(n, f32x4_splat(-2.121_944_4e-4)));
    let mut p = f32x4_splat(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = f32x4_add(f32x4_mul(p, r), f32x4_splat(c));
    }
    let e_r = f32x4_add(
        f32x4_add(f32x4_mul(p, f32x4_mul(r, r)), r),
        f32x4_splat(1.0),
    );
    let two_n = i32x4_shl(i32x4_add(i32x4_trunc_sat_f32x4(n), i32x4_splat(127)), 23);
    f32x4_mul(e_r, two_n)
}

/// [`super::scalar::gelu_tanh`] as `x / (1 + e^(-2u))`; see the AVX2 version.
#[target_feature(enable = "simd128")]
pub(super) unsafe fn gelu_tanh(x: &mut [f32]) {
    let body = x.len() - x.len() % 4;
    let k = f32x4_splat(-2.0 * super::scalar::SQRT_2_OVER_PI);
    let c = f32x4_splat(0.044715);
    let (lo, hi) = (f32x4_splat(-88.0), f32x4_splat(88.0));
    for chunk in x[..body].chunks_exact_mut(4) {
        let v = load(chunk.as_ptr());
        let v3 = f32x4_mul(f32x4_mul(v, v), v);
        let t = f32x4_mul(k, f32x4_add(f32x4_mul(c, v3), v));
        // min/max propagate NaN, so NaN survives the clamp.
        let t = f32x4_max(lo, f32x4_min(hi, t));
        let y = f32x4_div(v, f32x4_add(f32x4_splat(1.0), exp4(t)));
        store(chunk.as_mut_ptr(), y);
    }
    super::scalar::gelu_tanh(&mut x[body..]);
}
