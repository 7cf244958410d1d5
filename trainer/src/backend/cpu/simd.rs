//! Runtime dispatch to AVX2 builds of hot loops.
//!
//! The crate is compiled for baseline x86-64 (SSE2), so auto-vectorised
//! loops use 4 lanes. [`simd_kernel!`] compiles a function body twice, once
//! with AVX2 enabled (8 lanes), and picks the AVX2 copy when the CPU has it.
//! Rust never contracts `a*b + c` into an FMA and the kernels spell out
//! their summation order, so both copies compute bit-identical results: a
//! run resumed on a machine without AVX2 continues exactly.

/// Defines `fn name<T: Float>(args) -> ret { body }` with an AVX2 copy.
macro_rules! simd_kernel {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$T:ident: Float>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$meta])*
        #[inline]
        $vis fn $name<$T: Float>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp<$T: Float>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<$T: Float>($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && $crate::backend::cpu::simd::enabled() {
                    // SAFETY: the CPU supports AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use simd_kernel;

use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether kernels may use their AVX2 copies (default: yes, when the CPU
/// has AVX2).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Allows or forbids the AVX2 copies (tests compare the two; results are
/// bit-identical, only speed differs).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}
