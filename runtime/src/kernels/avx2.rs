//! x86_64 kernels for AVX2 with FMA and F16C (every CPU with AVX2 has both).
//!
//! Every function is `unsafe` only because it needs those features; the
//! dispatcher calls them after detection. Memory accesses are bounded by the
//! lengths of the slices passed in (each loop runs to the shortest), so no
//! argument can make them read or write out of bounds.

use super::tiles::{for_each_tile, shortest};
use super::{Matrix, Weights};
use core::arch::x86_64::*;
use half::{bf16, f16};
use kilobyte_format::dtype::QK;
use kilobyte_format::quant::q8_scale;
use kilobyte_format::{BlockQ4, BlockQ8};

/// A float weight type that loads as eight f32 lanes.
pub(super) trait FloatWeight: Copy {
    unsafe fn load8(p: *const Self) -> __m256;
    fn to_f32(self) -> f32;
}

impl FloatWeight for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl FloatWeight for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl FloatWeight for bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // A bf16 is the top half of an f32.
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// A quantised weight block.
pub(super) trait QuantWeight {
    /// The 32 values as signed bytes, in element order.
    unsafe fn values(&self) -> __m256i;
    fn scale_bits(&self) -> [u8; 2];
}

/// A set of four-row kernels for weight blocks `W`: [`Avx2`]'s here, the
/// VNNI ones in `super::vnni`, their EVEX versions in `super::avx512`.
pub(super) trait Rows4<W> {
    /// Four rows of `W` blocks against `N` q8 inputs.
    unsafe fn rows4<const N: usize>(w: [&[W]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4];
}

/// The `maddubs` kernels, `q8_rows4` and `q4_rows4`.
struct Avx2;

impl Rows4<BlockQ8> for Avx2 {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows4<const N: usize>(w: [&[BlockQ8]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
        q8_rows4(w, x)
    }
}

impl Rows4<BlockQ4> for Avx2 {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows4<const N: usize>(w: [&[BlockQ4]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
        q4_rows4(w, x)
    }
}

impl QuantWeight for BlockQ8 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values(&self) -> __m256i {
        _mm256_loadu_si256(self.qs.as_ptr().cast())
    }
    fn scale_bits(&self) -> [u8; 2] {
        self.d
    }
}

impl QuantWeight for BlockQ4 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values(&self) -> __m256i {
        // Byte j holds element j in its low nibble and j + 16 in its high
        // one, so the two halves fill the two 128-bit lanes in order.
        let packed = _mm_loadu_si128(self.qs.as_ptr().cast());
        let nibble = _mm_set1_epi8(0x0f);
        let low = _mm_and_si128(packed, nibble);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), nibble);
        _mm256_sub_epi8(_mm256_set_m128i(high, low), _mm256_set1_epi8(8))
    }
    fn scale_bits(&self) -> [u8; 2] {
        self.d
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_bits_to_f32(bits: [u8; 2]) -> f32 {
    let h = _mm_cvtsi32_si128(u16::from_le_bytes(bits) as i32);
    _mm_cvtss_f32(_mm_cvtph_ps(h))
}

/// How far ahead of its reads a tile asks for weights.
const PREFETCH_BYTES: usize = 512;

/// Prefetches the weights `PREFETCH_BYTES` past `p`. A tile reads its rows
/// as several interleaved streams, which the hardware prefetcher follows
/// poorly from DRAM: this made f16 and q4 matvecs about 40% faster there.
/// A prefetch never faults, so running past the end is harmless.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn prefetch<T>(p: *const T) {
    _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(PREFETCH_BYTES));
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The four horizontal sums of `v`, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum4(v: [__m256; 4]) -> [f32; 4] {
    let h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let mut out = [0.0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), s);
    out
}

/// The eight i32 sums of four adjacent products `w * x` of two blocks, as
/// f32. `maddubs` multiplies unsigned by signed bytes, so `w`'s sign moves
/// onto `x`: |w| (read as unsigned, so even -128 is right) times ±x. This is
/// exact as long as `x` is within ±127, which the activation quantiser
/// guarantees; pairs then sum to at most 2 * 128 * 127, inside i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_dot(w: __m256i, abs_w: __m256i, x: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, w));
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Four float weight rows against `N` inputs (a batch: prefill, BiGS over
/// a sentence). With N = 3 the twelve accumulators, three input vectors and
/// one weight vector fill the sixteen registers: each weight vector loaded
/// feeds three FMAs and each input vector four, and the tile's twelve sums
/// are reduced four at a time (`hsum4`) once per tile. No prefetch: in a
/// batch the rows are reused across inputs from L1, and the prefetches
/// only took load slots.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_rows4xn<W: FloatWeight, const N: usize>(
    w: [&[W]; 4],
    x: [&[f32]; N],
) -> [[f32; N]; 4] {
    let cols = shortest(&w, &x);
    let body = cols - cols % 8;
    let mut acc = [[_mm256_setzero_ps(); 4]; N];
    let mut j = 0;
    while j < body {
        let xv: [__m256; N] = core::array::from_fn(|i| _mm256_loadu_ps(x[i].as_ptr().add(j)));
        for (r, w) in w.iter().enumerate() {
            let wv = W::load8(w.as_ptr().add(j));
            for (acc, v) in acc.iter_mut().zip(&xv) {
                acc[r] = _mm256_fmadd_ps(wv, *v, acc[r]);
            }
        }
        j += 8;
    }
    let mut out = [[0.0; N]; 4];
    for (i, (acc, x)) in acc.iter().zip(&x).enumerate() {
        for ((out, sum), w) in out.iter_mut().zip(hsum4(*acc)).zip(&w) {
            let tail = w[body..cols].iter().zip(&x[body..cols]);
            out[i] = sum + tail.map(|(w, x)| w.to_f32() * x).sum::<f32>();
        }
    }
    out
}

/// The scale bits of block `b` of four rows, as four f16 lanes of a u64.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scale_bits4<W: QuantWeight>(w: &[&[W]; 4], b: usize) -> i64 {
    let bits = |r: usize| u16::from_le_bytes((*w[r].as_ptr().add(b)).scale_bits()) as u64;
    (bits(0) | bits(1) << 16 | bits(2) << 32 | bits(3) << 48) as i64
}

/// An f16 scale repeated in four lanes of a u64.
#[inline]
pub(super) fn repeat4(bits: [u8; 2]) -> i64 {
    (u16::from_le_bytes(bits) as u64 * 0x0001_0001_0001_0001) as i64
}

/// Adds the eight lanes `[r0 r1 r2 r3 | r0 r1 r2 r3]` of `acc` pairwise:
/// the four rows' sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows4(acc: __m256) -> [f32; 4] {
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let mut out = [0.0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), s);
    out
}

/// The eight i32 lanes of four rows' block products reduced to
/// `[r0 r1 r2 r3 | r0 r1 r2 r3]`: each 128-bit half holds the rows' sums of
/// that half's lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn reduce_rows4(p: [__m256i; 4]) -> __m256i {
    _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]))
}

/// The loop of the q8 kernels around their integer step, as a macro so it
/// is compiled inside each kernel, with that kernel's target features (a
/// generic function's closures are not inlined across feature sets, which
/// made the VNNI kernels slower than these). `$prepare` makes what the step
/// needs of each weight vector, once for all inputs, and
/// `$products(w, prepared, x)` the four rows' i32 lanes, whose sum is each
/// row's exact block product with `x`.
macro_rules! q8_rows4_with {
    ($w:expr, $x:expr, $prepare:expr, $products:expr) => {{
        use $crate::kernels::avx2::rows4;
        let (w, x): ([&[BlockQ8]; 4], [&[BlockQ8]; N]) = ($w, $x);
        let (prepare, products) = ($prepare, $products);
        let blocks = $crate::kernels::tiles::shortest(&w, &x);
        // Two accumulators per input (even and odd blocks).
        let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
        let mut b = 0;
        while b + 2 <= blocks {
            $crate::kernels::avx2::q8_block!(w, x, b, even, prepare, products);
            $crate::kernels::avx2::q8_block!(w, x, b + 1, odd, prepare, products);
            b += 2;
        }
        if b < blocks {
            $crate::kernels::avx2::q8_block!(w, x, b, even, prepare, products);
        }
        let mut out = [[0.0; N]; 4];
        for (i, (e, o)) in even.iter().zip(&odd).enumerate() {
            for (r, v) in rows4(_mm256_add_ps(*e, *o)).into_iter().enumerate() {
                out[r][i] = v;
            }
        }
        out
    }};
}

/// Block `$b` of `q8_rows4_with`, accumulated into `$acc`; a macro of its
/// own because a closure called three times was not always inlined.
macro_rules! q8_block {
    ($w:ident, $x:ident, $b:expr, $acc:ident, $prepare:ident, $products:ident) => {{
        use $crate::kernels::avx2::QuantWeight as _;
        use $crate::kernels::avx2::{prefetch, reduce_rows4, repeat4, scale_bits4};
        let b: usize = $b;
        // Each input goes through the same operations whatever N is, so a
        // batch (prefill) gives bit for bit the results of one input at a
        // time.
        let wv: [__m256i; 4] = core::array::from_fn(|r| {
            let wb = $w[r].as_ptr().add(b);
            prefetch(wb);
            (*wb).values()
        });
        let prepared = wv.map($prepare);
        let w_bits = scale_bits4(&$w, b);
        for (a, x) in $acc.iter_mut().zip(&$x) {
            let xb = &*x.as_ptr().add(b);
            let p: [__m256i; 4] = $products(&wv, &prepared, xb.values());
            let dots = _mm256_cvtepi32_ps(reduce_rows4(p));
            // [w0 w1 w2 w3 | x x x x] times its halves swapped: the scales,
            // once in each half.
            let s = _mm256_cvtph_ps(_mm_set_epi64x(repeat4(xb.d), w_bits));
            let s = _mm256_mul_ps(s, _mm256_permute2f128_ps::<1>(s, s));
            *a = _mm256_fmadd_ps(dots, s, *a);
        }
    }};
}
pub(super) use q8_block;
pub(super) use q8_rows4_with;

/// Four q8 weight rows against one q8 input (the generation step). Each
/// row's block product is the exact integer sum `block_dot` makes; the four
/// rows' sums are gathered into one vector by `hadd`, so a block costs one
/// conversion, one scale vector and one FMA for all four rows instead of
/// one each.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_rows4<const N: usize>(w: [&[BlockQ8]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
    let ones = _mm256_set1_epi16(1);
    q8_rows4_with!(
        w,
        x,
        |v| _mm256_sign_epi8(v, v),
        |wv: &[__m256i; 4], abs_w: &[__m256i; 4], xv| {
            core::array::from_fn(|r| {
                let pairs = _mm256_maddubs_epi16(abs_w[r], _mm256_sign_epi8(xv, wv[r]));
                _mm256_madd_epi16(pairs, ones)
            })
        }
    )
}

/// The loop of the q4 kernels around their integer step, a macro for the
/// reason `q8_rows4_with` is. Both blocks' low nibbles fill one register,
/// [block b elements 0..16 | block b + 1 elements 0..16], and the high
/// ones another, against the input rearranged the same way once for all
/// rows: `$products(nibbles, x_low, x_high)` returns the exact block
/// products `[r0 r1 r2 r3]` of block `b` and the same of block `b + 1`, as
/// i32.
macro_rules! q4_rows4_with {
    ($w:expr, $x:expr, $products:expr) => {{
        use $crate::kernels::avx2::QuantWeight as _;
        use $crate::kernels::avx2::{prefetch, q4_finish, repeat4, scale_bits4};
        let (w, x): ([&[BlockQ4]; 4], [&[BlockQ8]; N]) = ($w, $x);
        let products = $products;
        let blocks = $crate::kernels::tiles::shortest(&w, &x);
        let nibble = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut b = 0;
        while b + 2 <= blocks {
            let nibbles: [[__m256i; 2]; 4] = core::array::from_fn(|r| {
                let wb = w[r].as_ptr().add(b);
                prefetch(wb);
                let packed =
                    _mm256_loadu2_m128i((*wb.add(1)).qs.as_ptr().cast(), (*wb).qs.as_ptr().cast());
                let low = _mm256_and_si256(packed, nibble);
                [
                    low,
                    _mm256_and_si256(_mm256_srli_epi16::<4>(packed), nibble),
                ]
            });
            let ws = _mm256_cvtph_ps(_mm_set_epi64x(scale_bits4(&w, b + 1), scale_bits4(&w, b)));
            // Each input goes through the same operations whatever N is
            // (see q8_rows4_with).
            for (a, x) in acc.iter_mut().zip(&x) {
                let (x0, x1) = (&*x.as_ptr().add(b), &*x.as_ptr().add(b + 1));
                let (xv0, xv1) = (x0.values(), x1.values());
                let x_low = _mm256_permute2x128_si256::<0x20>(xv0, xv1);
                let x_high = _mm256_permute2x128_si256::<0x31>(xv0, xv1);
                let p: __m256i = products(&nibbles, x_low, x_high);
                let dots = _mm256_cvtepi32_ps(p);
                let xs = _mm256_cvtph_ps(_mm_set_epi64x(repeat4(x1.d), repeat4(x0.d)));
                *a = _mm256_fmadd_ps(dots, _mm256_mul_ps(ws, xs), *a);
            }
            b += 2;
        }
        q4_finish(acc, w, x, b)
    }};
}
pub(super) use q4_rows4_with;

/// Four q4 weight rows against one q8 input, two blocks per step. The
/// nibbles are used as they are stored, 0..=15 (unsigned, as `maddubs`
/// wants them), and the offset of 8 comes off the integer sum once:
/// `sum (u - 8) x = sum u x - 8 sum x`, exact as in `block_dot` (pairs of
/// `u x` are within 2 * 15 * 127 and `8 x` within 2 * 8 * 127, so the i16
/// sums below cannot overflow).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_rows4<const N: usize>(w: [&[BlockQ4]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
    let ones = _mm256_set1_epi16(1);
    let eight = _mm256_set1_epi8(8);
    q4_rows4_with!(w, x, |nibbles: &[[__m256i; 2]; 4], x_low, x_high| {
        // 8 sum x per block, in every lane of its half.
        let offset = _mm256_add_epi16(
            _mm256_maddubs_epi16(eight, x_low),
            _mm256_maddubs_epi16(eight, x_high),
        );
        let offset = _mm256_madd_epi16(offset, ones);
        let offset = _mm256_hadd_epi32(offset, offset);
        let offset = _mm256_hadd_epi32(offset, offset);
        let p = core::array::from_fn(|r| {
            let [low, high] = nibbles[r];
            let pairs = _mm256_add_epi16(
                _mm256_maddubs_epi16(low, x_low),
                _mm256_maddubs_epi16(high, x_high),
            );
            _mm256_madd_epi16(pairs, ones)
        });
        _mm256_sub_epi32(reduce_rows4(p), offset)
    })
}

/// The four rows' sums of a q4 kernel's accumulators, `[r0 r1 r2 r3]` of
/// even blocks in the low half and of odd ones in the high, plus block `b`
/// if it is the (odd) last one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_finish<const N: usize>(
    acc: [__m256; N],
    w: [&[BlockQ4]; 4],
    x: [&[BlockQ8]; N],
    b: usize,
) -> [[f32; N]; 4] {
    let blocks = shortest(&w, &x);
    let mut out = [[0.0; N]; 4];
    for (i, (a, x)) in acc.iter().zip(&x).enumerate() {
        let mut sums = rows4(*a);
        if b < blocks {
            let xb = &*x.as_ptr().add(b);
            let (xv, xd) = (xb.values(), f16_bits_to_f32(xb.d));
            for (o, w) in sums.iter_mut().zip(&w) {
                let wb = &*w.as_ptr().add(b);
                let wv = wb.values();
                let dot = block_dot(wv, _mm256_sign_epi8(wv, wv), xv);
                *o += hsum(dot) * (f16_bits_to_f32(wb.d) * xd);
            }
        }
        for (r, v) in sums.into_iter().enumerate() {
            out[r][i] = v;
        }
    }
    out
}

/// Four float weight rows against one input (the generation step): 16
/// columns per step in two accumulators per row, so eight FMA chains hide
/// the FMA latency, and one prefetch per row per step.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_rows4<W: FloatWeight>(w: [&[W]; 4], x: &[f32]) -> [[f32; 1]; 4] {
    let cols = shortest(&w, &[x]);
    let body = cols - cols % 16;
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut j = 0;
    while j < body {
        let xv = [
            _mm256_loadu_ps(x.as_ptr().add(j)),
            _mm256_loadu_ps(x.as_ptr().add(j + 8)),
        ];
        for (acc, w) in acc.iter_mut().zip(&w) {
            prefetch(w.as_ptr().wrapping_add(j));
            let p = w.as_ptr().add(j);
            acc[0] = _mm256_fmadd_ps(W::load8(p), xv[0], acc[0]);
            acc[1] = _mm256_fmadd_ps(W::load8(p.add(8)), xv[1], acc[1]);
        }
        j += 16;
    }
    if j + 8 <= cols {
        let xv = _mm256_loadu_ps(x.as_ptr().add(j));
        for (acc, w) in acc.iter_mut().zip(&w) {
            acc[0] = _mm256_fmadd_ps(W::load8(w.as_ptr().add(j)), xv, acc[0]);
        }
        j += 8;
    }
    let sums = hsum4(acc.map(|a| _mm256_add_ps(a[0], a[1])));
    let mut out = [[0.0; 1]; 4];
    for ((out, sum), w) in out.iter_mut().zip(sums).zip(&w) {
        let tail = w[j..cols].iter().zip(&x[j..cols]);
        out[0] = sum + tail.map(|(w, x)| w.to_f32() * x).sum::<f32>();
    }
    out
}

/// `y_i = W x_i` for `n` inputs; the dispatcher checked the shapes and,
/// for q8/q4 weights, quantised the inputs into `xq`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32], xq: &[BlockQ8]) {
    matmul_with::<Avx2>(w, x, n, y, xq)
}

/// [`matmul`] with the q8/q4 rows of kernel set `K`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_with<K: Rows4<BlockQ8> + Rows4<BlockQ4>>(
    w: &Matrix,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    xq: &[BlockQ8],
) {
    let (rows, cols) = (w.rows, w.cols);
    match w.weights {
        Weights::F32(w) => float_matmul::<_, Avx2>(w, rows, cols, x, n, y),
        Weights::F16(w) => float_matmul::<_, Avx2>(w, rows, cols, x, n, y),
        Weights::BF16(w) => float_matmul::<_, Avx2>(w, rows, cols, x, n, y),
        Weights::Q8(w) => quant_matmul::<_, K>(w, rows, cols / QK, xq, n, y),
        Weights::Q4(w) => quant_matmul::<_, K>(w, rows, cols / QK, xq, n, y),
    }
}

// Float weights: a single input gets four rows per tile (eight FMA chains,
// `float_rows4`); a small batch 4 rows x 3 inputs (`float_rows4xn`), and a
// large one packed panels (`float_matmul_panels`). Quantised weights: four
// rows per tile, one input or four (`q8_rows4`, `q4_rows4`), each input
// computed exactly as alone, so prefill and byte-by-byte generation agree
// bit for bit.

/// Float weights, with the panel tiles of kernel set `P` for large batches.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn float_matmul<W: FloatWeight, P: PanelKernel>(
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
    } else if n < PANEL_MIN_INPUTS {
        for_each_tile(rows, n, bytes, y, |r, i| {
            float_rows4xn::<W, 3>(r.map(row), i.map(input))
        });
    } else {
        float_matmul_panels::<W, P>(w, rows, cols, x, n, y);
    }
}

/// Weight rows per packed panel: two vectors (one of AVX-512's).
pub(super) const PANEL_ROWS: usize = 16;
/// Columns per packed panel: 16 x 384 f32 are 24 KiB (on the stack), half
/// of a 48 KiB L1, leaving room for the inputs streaming past; BiGS's
/// widest products (3d = 384 columns in micro) then take a single pass.
const PANEL_COLS: usize = 384;
/// Inputs per panel tile: 6 x 2 accumulators, two weight vectors and one
/// broadcast input use 15 of the 16 registers.
const PANEL_INPUTS: usize = 6;
/// The batch size from which the panels are used. Packing costs a pass
/// over the weights, which the panel tiles win back from `float_rows4xn`'s
/// horizontal sums over enough inputs: at 16 inputs the panels were 1.4
/// to 1.6 times faster with 128 columns, about even with 384 (smaller
/// batches were not measured).
const PANEL_MIN_INPUTS: usize = 16;

/// A set of panel tile kernels: [`Avx2`]'s here, 512-bit ones in
/// `super::avx512`.
pub(super) trait PanelKernel {
    /// The most inputs one call takes.
    const INPUTS: usize;
    /// Inputs `i0..i0 + count` of `tile`, `count` at most [`Self::INPUTS`].
    unsafe fn run(tile: &PanelTile, i0: usize, count: usize, y: &mut [f32]);
}

impl PanelKernel for Avx2 {
    const INPUTS: usize = PANEL_INPUTS;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run(tile: &PanelTile, i0: usize, count: usize, y: &mut [f32]) {
        match count {
            1 => tile.run::<1>(i0, y),
            2 => tile.run::<2>(i0, y),
            3 => tile.run::<3>(i0, y),
            4 => tile.run::<4>(i0, y),
            5 => tile.run::<5>(i0, y),
            _ => tile.run::<PANEL_INPUTS>(i0, y),
        }
    }
}

// 64-byte aligned, so that each column's 16 values are one aligned
// AVX-512 load.
#[repr(align(64))]
struct Panel([f32; PANEL_ROWS * PANEL_COLS]);

/// `y_i = W x_i` for a large batch in outer-product form, without
/// horizontal sums: a panel of 16 weight rows is transposed once into
/// `[column][16 rows]` as f32, then every input's column value is broadcast
/// against the panel's two row vectors, so each weight vector loaded feeds
/// six FMAs and the accumulators are the outputs themselves. Each output is
/// summed in column order, as in the scalar definition (in parts of
/// `PANEL_COLS` columns).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_matmul_panels<W: FloatWeight, P: PanelKernel>(
    w: &[W],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let mut panel = Panel([0.0; PANEL_ROWS * PANEL_COLS]);
    for r0 in (0..rows).step_by(PANEL_ROWS) {
        let r = r0..rows.min(r0 + PANEL_ROWS);
        for k0 in (0..cols).step_by(PANEL_COLS) {
            let k = k0..cols.min(k0 + PANEL_COLS);
            let panel = &mut panel.0[..k.len() * PANEL_ROWS];
            pack_panel(w, cols, r.clone(), k.clone(), panel);
            let tile = PanelTile {
                panel,
                x,
                cols,
                k: k.clone(),
                y_rows: rows,
                r: r.clone(),
                add: k0 > 0,
            };
            for i0 in (0..n).step_by(P::INPUTS) {
                P::run(&tile, i0, (n - i0).min(P::INPUTS), y);
            }
        }
    }
}

/// Rows `r` of `w` (`cols` per row) over columns `k`, transposed into
/// `panel[column * 16 + row]` as f32, with zeros for rows past `r`'s end.
/// Whole 8 x 8 blocks go through registers (`transpose8`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_panel<W: FloatWeight>(
    w: &[W],
    cols: usize,
    r: core::ops::Range<usize>,
    k: core::ops::Range<usize>,
    panel: &mut [f32],
) {
    let kc = k.len().min(panel.len() / PANEL_ROWS);
    for h in (0..PANEL_ROWS).step_by(8) {
        let r8 = r.start + h;
        let mut c = 0;
        if r8 + 8 <= r.end {
            while c + 8 <= kc {
                let v: [__m256; 8] = core::array::from_fn(|m| {
                    W::load8(w[(r8 + m) * cols + k.start + c..][..8].as_ptr())
                });
                for (m, t) in transpose8(v).iter().enumerate() {
                    _mm256_storeu_ps(panel[(c + m) * PANEL_ROWS + h..][..8].as_mut_ptr(), *t);
                }
                c += 8;
            }
        }
        for c in c..kc {
            for (m, p) in panel[c * PANEL_ROWS + h..][..8].iter_mut().enumerate() {
                let row = r8 + m;
                *p = if row < r.end {
                    w[row * cols + k.start + c].to_f32()
                } else {
                    0.0
                };
            }
        }
    }
}

/// The 8 x 8 transpose of `v`: lane `m` of output `c` is lane `c` of `v[m]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
    // Pairs of rows interleaved, then quads, then the 128-bit halves.
    let t: [__m256; 8] = core::array::from_fn(|i| {
        let (a, b) = (v[i / 2 * 2], v[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // s[4q + j]: column j (and j + 4) of rows 4q..4q + 4.
    let s: [__m256; 8] = core::array::from_fn(|i| {
        let (q, j) = (i / 4, i % 4);
        let (a, b) = (t[4 * q + j / 2], t[4 * q + 2 + j / 2]);
        if j % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xee>(a, b)
        }
    });
    core::array::from_fn(|c| {
        let (a, b) = (s[c % 4], s[4 + c % 4]);
        if c < 4 {
            _mm256_permute2f128_ps::<0x20>(a, b)
        } else {
            _mm256_permute2f128_ps::<0x31>(a, b)
        }
    })
}

/// One packed panel against the inputs, a tile at a time.
pub(super) struct PanelTile<'a> {
    pub(super) panel: &'a [f32],
    pub(super) x: &'a [f32],
    pub(super) cols: usize,
    /// The panel's columns.
    pub(super) k: core::ops::Range<usize>,
    /// Values per output row of `y`.
    pub(super) y_rows: usize,
    /// The panel's rows.
    pub(super) r: core::ops::Range<usize>,
    /// Add to `y` (a later column block) rather than store.
    pub(super) add: bool,
}

impl PanelTile<'_> {
    /// The column slices of inputs `i0..i0 + N`, and how many columns the
    /// tile may read of them and of the panel.
    pub(super) fn inputs<const N: usize>(&self, i0: usize) -> ([&[f32]; N], usize) {
        let x: [&[f32]; N] = core::array::from_fn(|m| {
            let at = (i0 + m) * self.cols;
            &self.x[at + self.k.start..at + self.k.end]
        });
        let kc = x
            .iter()
            .map(|x| x.len())
            .min()
            .unwrap_or(0)
            .min(self.panel.len() / PANEL_ROWS);
        (x, kc)
    }

    /// Inputs `i0..i0 + N`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run<const N: usize>(&self, i0: usize, y: &mut [f32]) {
        let (x, kc) = self.inputs::<N>(i0);
        let p = self.panel.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for c in 0..kc {
            let w = [
                _mm256_load_ps(p.add(c * PANEL_ROWS)),
                _mm256_load_ps(p.add(c * PANEL_ROWS + 8)),
            ];
            for (a, x) in acc.iter_mut().zip(&x) {
                let xv = _mm256_broadcast_ss(&*x.as_ptr().add(c));
                a[0] = _mm256_fmadd_ps(w[0], xv, a[0]);
                a[1] = _mm256_fmadd_ps(w[1], xv, a[1]);
            }
        }
        for (m, acc) in acc.iter().enumerate() {
            let at = (i0 + m) * self.y_rows;
            let out = &mut y[at + self.r.start..at + self.r.end];
            if let Ok(out) = <&mut [f32; PANEL_ROWS]>::try_from(&mut *out) {
                let o = out.as_mut_ptr();
                for (h, a) in acc.iter().enumerate() {
                    let a = if self.add {
                        _mm256_add_ps(_mm256_loadu_ps(o.add(8 * h)), *a)
                    } else {
                        *a
                    };
                    _mm256_storeu_ps(o.add(8 * h), a);
                }
                continue;
            }
            let mut sums = [0.0f32; PANEL_ROWS];
            _mm256_storeu_ps(sums.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc[1]);
            for (o, s) in out.iter_mut().zip(sums) {
                *o = if self.add { *o + s } else { s };
            }
        }
    }
}

/// Quantised weights, with the four-row kernels of set `K`. No target
/// features of its own and always inlined, so that `K`'s kernels, whose
/// features may be wider than AVX2's (`super::avx512`), are inlined into
/// the caller.
///
/// # Safety
/// Unlike the rest of this module, this function's requirement is `K`'s:
/// the CPU must have `K`'s target features (the callers, `matmul_with` and
/// `avx512::matmul`, have them).
#[inline(always)]
pub(super) unsafe fn quant_matmul<W, K: Rows4<W>>(
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
            K::rows4::<1>(r.map(row), i.map(input))
        });
    } else {
        for_each_tile(rows, n, bytes, y, |r, i| {
            K::rows4::<4>(r.map(row), i.map(input))
        });
    }
}

/// [`super::scalar::quantize_q8`], bit for bit, over whole blocks of `x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    let sign = _mm256_set1_ps(-0.0);
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    for (src, dst) in x.chunks_exact(QK).zip(out) {
        let mut v = [_mm256_setzero_ps(); 4];
        let mut m = _mm256_setzero_ps();
        for (k, v) in v.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(src.as_ptr().add(8 * k));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *v));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let (d, inv) = q8_scale(_mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m))));
        dst.d = d;
        let inv = _mm256_set1_ps(inv);
        let mut q = [_mm256_setzero_si256(); 4];
        for (q, v) in q.iter_mut().zip(&v) {
            let clamped = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(*v, inv), lo), hi);
            // Rounds half to even under the default MXCSR, like rintf.
            *q = _mm256_cvtps_epi32(clamped);
        }
        // The packs work within 128-bit lanes, leaving the 4-byte groups
        // in the order 0 2 4 6 1 3 5 7; the permute puts them back.
        let (q01, q23) = (
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q01, q23), order);
        _mm256_storeu_si256(dst.qs.as_mut_ptr().cast(), bytes);
    }
}

// ---------------------------------------------------------------------------
// Vector ops

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Four accumulators hide the FMA latency.
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut j = 0;
    while j + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let (va, vb) = (
                _mm256_loadu_ps(pa.add(j + 8 * k)),
                _mm256_loadu_ps(pb.add(j + 8 * k)),
            );
            *acc = _mm256_fmadd_ps(va, vb, *acc);
        }
        j += 32;
    }
    while j + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(j)),
            _mm256_loadu_ps(pb.add(j)),
            acc[0],
        );
        j += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum(sum)
        + a[j..n]
            .iter()
            .zip(&b[j..n])
            .map(|(a, b)| a * b)
            .sum::<f32>()
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let a = _mm256_set1_ps(alpha);
    let mut j = 0;
    while j + 8 <= n {
        let v = _mm256_fmadd_ps(a, _mm256_loadu_ps(px.add(j)), _mm256_loadu_ps(py.add(j)));
        _mm256_storeu_ps(py.add(j), v);
        j += 8;
    }
    for (y, x) in y[j..n].iter_mut().zip(&x[j..n]) {
        *y += alpha * x;
    }
}

/// Eight i8 values widened to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_i8(p: *const i8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8(a: &[f32], b: &[i8]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = _mm256_setzero_ps();
    let mut j = 0;
    while j + 8 <= n {
        acc = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(j)),
            load8_i8(b.as_ptr().add(j)),
            acc,
        );
        j += 8;
    }
    hsum(acc)
        + a[j..n]
            .iter()
            .zip(&b[j..n])
            .map(|(a, &b)| a * b as f32)
            .sum::<f32>()
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_i8(alpha: f32, x: &[i8], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let a = _mm256_set1_ps(alpha);
    let mut j = 0;
    while j + 8 <= n {
        let py = y.as_mut_ptr().add(j);
        _mm256_storeu_ps(
            py,
            _mm256_fmadd_ps(a, load8_i8(x.as_ptr().add(j)), _mm256_loadu_ps(py)),
        );
        j += 8;
    }
    for (y, &x) in y[j..n].iter_mut().zip(&x[j..n]) {
        *y += alpha * x as f32;
    }
}

// ---------------------------------------------------------------------------
// Attention steps; see `super::scalar::head_dots` for the contract.

/// Four keys per step: four independent FMA chains against one load of
/// `q`, and one horizontal reduction for the four scores.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn head_dots(q: &[f32], keys: &[f32], stride: usize, scores: &mut [f32]) {
    let hd = q.len();
    let body = hd - hd % 8;
    let n = scores.len();
    // Rows i..i + 4 lie inside `keys`.
    let fits = |i: usize| (i + 3).saturating_mul(stride).saturating_add(hd) <= keys.len();
    let mut i = 0;
    while i + 4 <= n && fits(i) {
        let k: [*const f32; 4] = core::array::from_fn(|m| keys.as_ptr().add((i + m) * stride));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        while j < body {
            let qv = _mm256_loadu_ps(q.as_ptr().add(j));
            for (a, k) in acc.iter_mut().zip(&k) {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(k.add(j)), qv, *a);
            }
            j += 8;
        }
        for (m, sum) in hsum4(acc).into_iter().enumerate() {
            let row = &keys[(i + m) * stride..][..hd];
            let tail = row[body..].iter().zip(&q[body..]);
            scores[i + m] = sum + tail.map(|(k, q)| k * q).sum::<f32>();
        }
        i += 4;
    }
    for (i, s) in scores.iter_mut().enumerate().skip(i) {
        *s = dot(q, &keys[i * stride..]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn head_dots_i8(q: &[f32], keys: &[i8], stride: usize, scores: &mut [f32]) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = dot_i8(q, &keys[i * stride..]);
    }
}

/// The same sums as `axpy` per position, in the same order (bit for bit),
/// but with `out` held in registers 64 columns at a time (eight FMA chains,
/// enough to hide the FMA latency; BiGS's convolution mixes rows of 128),
/// then 32 and 8, while the positions stream past, instead of loaded and
/// stored once per position.
#[target_feature(enable = "avx2,fma,f16c")]
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
    let (v, o) = (values.as_ptr(), out.as_mut_ptr());
    let mut c = 0;
    while c + 64 <= hd {
        mix_columns::<8>(p, v.add(c), stride, o.add(c));
        c += 64;
    }
    while c + 32 <= hd {
        mix_columns::<4>(p, v.add(c), stride, o.add(c));
        c += 32;
    }
    while c + 8 <= hd {
        mix_columns::<1>(p, v.add(c), stride, o.add(c));
        c += 8;
    }
    out[c..].fill(0.0);
    for (i, &p) in p.iter().enumerate() {
        for (o, x) in out[c..].iter_mut().zip(&values[i * stride + c..]) {
            *o += p * x;
        }
    }
}

/// `8 V` columns of `head_mix` from `v` (row `i` at `v + i * stride`) into
/// `out`, the accumulators in registers; `head_mix` checked the bounds.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mix_columns<const V: usize>(p: &[f32], v: *const f32, stride: usize, out: *mut f32) {
    let mut acc = [_mm256_setzero_ps(); V];
    for (i, &p) in p.iter().enumerate() {
        let (pv, row) = (_mm256_set1_ps(p), v.add(i * stride));
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(row.add(8 * k)), *a);
        }
    }
    for (k, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(8 * k), *a);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn head_mix_i8(p: &[f32], values: &[i8], stride: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (i, &p) in p.iter().enumerate() {
        axpy_i8(p, &values[i * stride..], out);
    }
}

/// `e^x` for `x` in [-88, 88] (callers clamp): `2^n e^r` with `r` in
/// [-ln2/2, ln2/2] and Cephes' degree-6 polynomial for `e^r`, about 1 ulp.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp8(x: __m256) -> __m256 {
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(core::f32::consts::LOG2_E),
    ));
    // ln 2 in two parts so `n * ln2` is exact in the first.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e_r = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(e_r, _mm256_castsi256_ps(two_n))
}

/// [`super::scalar::gelu_tanh`] as `x / (1 + e^(-2u))`, the same function
/// (`(1 + tanh u) / 2` is the logistic of `2u`) without libm's scalar
/// `tanhf`, which took a sixth of a q8 generation step.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gelu_tanh(x: &mut [f32]) {
    let body = x.len() - x.len() % 8;
    let (k, c) = (
        _mm256_set1_ps(-2.0 * super::scalar::SQRT_2_OVER_PI),
        _mm256_set1_ps(0.044715),
    );
    let (lo, hi) = (_mm256_set1_ps(-88.0), _mm256_set1_ps(88.0));
    for chunk in x[..body].chunks_exact_mut(8) {
        let v = _mm256_loadu_ps(chunk.as_ptr());
        let v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
        let t = _mm256_mul_ps(k, _mm256_fmadd_ps(c, v3, v));
        // min/max return their second operand for a NaN, so NaN survives.
        let t = _mm256_max_ps(lo, _mm256_min_ps(hi, t));
        let y = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0), exp8(t)));
        _mm256_storeu_ps(chunk.as_mut_ptr(), y);
    }
    super::scalar::gelu_tanh(&mut x[body..]);
}
