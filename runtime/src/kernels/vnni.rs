//! x86_64 q8/q4 rows with AVX-VNNI (`Isa::Avx2Vnni`): `vpdpbusd` adds four
//! u8 x i8 products straight into each i32 lane, one instruction where AVX2
//! needs `maddubs` then `madd` (and, for q8, two sign operations). The loops
//! around these integer steps, the quantiser and every other kernel are
//! [`super::avx2`]'s, so the two sets give the same results bit for bit:
//! the integer block sums are exact in both, and all the float arithmetic
//! is shared.
//!
//! This is the VEX form (AVX-VNNI: Alder Lake, Sapphire Rapids, Zen 5 and
//! on); `super::avx512` compiles the same kernels with the EVEX form, which
//! every AVX-512 VNNI CPU has.

use super::avx2::{self, Rows4};
use super::Matrix;
use core::arch::x86_64::*;
use kilobyte_format::{BlockQ4, BlockQ8};

pub(super) use avx2::{
    axpy, dot, gelu_tanh, head_dots, head_dots_i8, head_mix, head_mix_i8, quantize_q8,
};

/// The `vpdpbusd` kernels.
struct Vnni;

impl Rows4<BlockQ8> for Vnni {
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn rows4<const N: usize>(w: [&[BlockQ8]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
        q8_rows4(w, x)
    }
}

impl Rows4<BlockQ4> for Vnni {
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn rows4<const N: usize>(w: [&[BlockQ4]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
        q4_rows4(w, x)
    }
}

/// `acc` plus, in each i32 lane, the four products of `a`'s bytes read as
/// u8 and `b`'s as i8: `vpdpbusd`, VEX-encoded.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dpbusd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, a, b)
}

/// `y_i = W x_i` for `n` inputs; the dispatcher checked the shapes and,
/// for q8/q4 weights, quantised the inputs into `xq`.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) unsafe fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32], xq: &[BlockQ8]) {
    avx2::matmul_with::<Vnni>(w, x, n, y, xq)
}

/// q8 weights `w` are signed, and `vpdpbusd` wants one operand unsigned:
/// `w ^ 0x80` is `w + 128` as a u8, so the product sums `(w + 128) x` and
/// starting each lane from `-128 x` (summed in fours, once per input for
/// all four rows) leaves exactly `w x`. Every lane stays far inside i32
/// (four products of at most 255 * 127).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn q8_rows4<const N: usize>(w: [&[BlockQ8]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
    dpbusd_q8_rows4!(dpbusd, w, x)
}

/// The stored nibbles `u` are already unsigned; each lane starts from
/// `-8 x` (summed in fours, once per input for all four rows) so that it
/// ends at the exact `sum (u - 8) x`.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn q4_rows4<const N: usize>(w: [&[BlockQ4]; 4], x: [&[BlockQ8]; N]) -> [[f32; N]; 4] {
    dpbusd_q4_rows4!(dpbusd, w, x)
}

/// The body of [`q8_rows4`] with `$dpbusd` as the `vpdpbusd` step: a macro
/// so that `super::avx512` compiles the same kernel with the EVEX form,
/// which AVX-512 CPUs without AVX-VNNI have.
macro_rules! dpbusd_q8_rows4 {
    ($dpbusd:path, $w:expr, $x:expr) => {{
        let flip = _mm256_set1_epi8(i8::MIN);
        let zero = _mm256_setzero_si256();
        $crate::kernels::avx2::q8_rows4_with!(
            $w,
            $x,
            |v| _mm256_xor_si256(v, flip),
            |_: &[__m256i; 4], biased: &[__m256i; 4], xv| {
                // Negated as i32 after the sum, not as i8 before it: exact
                // for every i8 x, -128 included, whatever the quantiser
                // produces.
                let start = _mm256_sub_epi32(zero, $dpbusd(zero, flip, xv));
                core::array::from_fn(|r| $dpbusd(start, biased[r], xv))
            }
        )
    }};
}
pub(super) use dpbusd_q8_rows4;

/// The body of [`q4_rows4`], as [`dpbusd_q8_rows4`] is of `q8_rows4`.
macro_rules! dpbusd_q4_rows4 {
    ($dpbusd:path, $w:expr, $x:expr) => {{
        let eight = _mm256_set1_epi8(8);
        let zero = _mm256_setzero_si256();
        $crate::kernels::avx2::q4_rows4_with!(
            $w,
            $x,
            |nibbles: &[[__m256i; 2]; 4], x_low, x_high| {
                // Negated after the sum, as in q8_rows4: exact at x = -128.
                let offset = $dpbusd($dpbusd(zero, eight, x_low), eight, x_high);
                let start = _mm256_sub_epi32(zero, offset);
                let p = core::array::from_fn(|r| {
                    let [low, high] = nibbles[r];
                    let p = $dpbusd(start, low, x_low);
                    $dpbusd(p, high, x_high)
                });
                $crate::kernels::avx2::reduce_rows4(p)
            }
        )
    }};
}
pub(super) use dpbusd_q4_rows4;
