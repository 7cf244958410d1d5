//! The element types the CPU backend computes in: f32 for training, f64 for
//! the gradient checks. The f32 versions of `exp` and `tanh` are branch-free
//! polynomial/rational approximations (a few ulp) so that loops over them
//! vectorise; libm's scalar calls would cost more than the matrix products in
//! the MLP. The f64 versions are libm's, so finite differences in f64 see the
//! exact functions the backward passes differentiate.

use core::fmt::Debug;
use core::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// A floating-point element type of the CPU backend.
pub trait Float:
    Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialEq
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NAME: &'static str;
    fn from_f64(x: f64) -> Self;
    fn from_f32(x: f32) -> Self;
    fn to_f64(self) -> f64;
    fn to_f32(self) -> f32;
    fn from_usize(n: usize) -> Self {
        Self::from_f64(n as f64)
    }
    /// e^x (f32: about 2 ulp, clamped to [-87, 88]).
    fn exp(self) -> Self;
    /// tanh x (f32: a few ulp).
    fn tanh(self) -> Self;
    fn sqrt(self) -> Self;
    fn ln(self) -> Self;
    /// The larger of two numbers (no NaN handling needed here).
    #[inline(always)]
    fn maxf(self, other: Self) -> Self {
        if self > other {
            self
        } else {
            other
        }
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f64::ln(self)
    }
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        tanh_f32(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f32::ln(self)
    }
}

/// Branch-free e^x for f32 (Cephes' polynomial after reduction by ln 2).
/// Inputs are clamped to [-87, 88], so the result is a normal number; that
/// is harmless where it is used (softmax terms relative to the row maximum).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4; // ln 2 split in two for an exact reduction
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
    // without a libm call (SSE2 has no vector floor).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * C1 - n * C2;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r2 + r + 1.0;
    // 2^n from the integer already sitting in t's low mantissa bits
    // (t = 1.5*2^23 + n): integer ops only, so the loop vectorises (a
    // saturating `as i32` would not).
    let bits = t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23;
    y * f32::from_bits(bits)
}

/// Branch-free tanh for f32, within 2e-7 of the true value (about 2 ulp
/// near ±1, 4 ulp relative near 0). Below |x| = 0.625 a [13/6] rational
/// approximation (Eigen's coefficients), above it `1 - 2/(e^{2|x|} + 1)`,
/// which has no cancellation there.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    // (Not `a.min(10.0)`: that would turn a NaN into 10.)
    let e = exp_f32(2.0 * if a > 10.0 { 10.0 } else { a });
    let big = 1.0 - 2.0 / (e + 1.0);
    let big = if x < 0.0 { -big } else { big };
    let xc = x.clamp(-1.0, 1.0);
    let x2 = xc * xc;
    let mut p = -2.760_768_5e-16_f32;
    p = p * x2 + 2.000_188e-13;
    p = p * x2 - 8.604_672e-11;
    p = p * x2 + 5.122_297e-8;
    p = p * x2 + 1.485_722_4e-5;
    p = p * x2 + 6.372_619_3e-4;
    p = p * x2 + 4.893_524_6e-3;
    p *= xc;
    let mut q = 1.198_258_4e-6_f32;
    q = q * x2 + 1.185_347e-4;
    q = q * x2 + 2.268_434_6e-3;
    q = q * x2 + 4.893_525e-3;
    let small = if a < 4e-4 { x } else { p / q };
    if a < 0.625 {
        small
    } else {
        big
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_tanh_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_tanh = 0f64;
        let n = 200_000;
        for i in 0..=n {
            let x = -80.0 + 160.0 * i as f64 / n as f64;
            let xf = x as f32;
            let e = exp_f32(xf) as f64;
            let want = (xf as f64).exp();
            if (-87.0..=88.0).contains(&xf) {
                worst_exp = worst_exp.max(((e - want) / want).abs());
            }
            let t = tanh_f32(xf / 8.0) as f64;
            let want = (xf as f64 / 8.0).tanh();
            worst_tanh = worst_tanh.max((t - want).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp:e}");
        assert!(worst_tanh < 2e-7, "tanh absolute error {worst_tanh:e}");
        for x in [0.0f32, 1e-5, -3e-4, 5e-4, 1e-2, -0.3] {
            let rel = ((tanh_f32(x) as f64 - (x as f64).tanh())
                / (x as f64).tanh().abs().max(1e-30))
            .abs();
            assert!(rel < 5e-7 || x == 0.0, "tanh({x}) relative error {rel:e}");
        }
        assert_eq!(tanh_f32(100.0), 1.0);
        assert_eq!(tanh_f32(-100.0), -1.0);
        assert!(exp_f32(-1000.0) < 1e-37 && exp_f32(-1000.0) >= 0.0);
        // NaN stays NaN (divergence must stay visible).
        assert!(exp_f32(f32::NAN).is_nan() && tanh_f32(f32::NAN).is_nan());
    }
}
