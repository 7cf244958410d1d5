//! Runtime dispatch to AVX2 and AVX-512 builds of hot loops.
//!
//! The crate is compiled for baseline x86-64 (SSE2), so auto-vectorised
//! loops use 4 lanes. [`simd_kernel!`] compiles a function body three
//! times, with AVX-512 (16 lanes), with AVX2 (8 lanes) and without, and
//! picks the widest copy the CPU runs. Rust never contracts `a*b + c` into
//! an FMA and the kernels spell out their summation order, so every copy
//! computes bit-identical results. (The matrix products are the gemm
//! crate's, which picks its own AVX-512 or AVX2 microkernel: a run resumed
//! on a CPU of another kind continues correctly, not necessarily to the
//! bit.)

/// Defines `fn name<T: Float>(args) -> ret { body }` with AVX2 and AVX-512
/// copies.
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
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
                unsafe fn avx512<$T: Float>($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<$T: Float>($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                use $crate::backend::cpu::simd::{allowed, Simd};
                if allowed(Simd::Avx512) {
                    // SAFETY: the CPU supports these AVX-512 subsets.
                    return unsafe { avx512($($arg),*) };
                }
                if allowed(Simd::Avx2) {
                    // SAFETY: the CPU supports AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use simd_kernel;

use std::sync::atomic::{AtomicU8, Ordering};

/// The widths a [`simd_kernel!`] has copies for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Baseline x86-64 (SSE2), or any other architecture.
    Baseline,
    Avx2,
    /// AVX-512 F, BW, VL and DQ (every AVX-512 CPU since Skylake-SP).
    Avx512,
}

static WIDEST: AtomicU8 = AtomicU8::new(Simd::Avx512 as u8);

/// Whether kernels may use their `width` copies: the CPU runs them and
/// [`set_widest`] did not forbid them.
pub fn allowed(width: Simd) -> bool {
    if width as u8 > WIDEST.load(Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        match width {
            Simd::Baseline => true,
            Simd::Avx2 => has!("avx2"),
            Simd::Avx512 => {
                // Rust's avx512f implies avx2 at compile time; std's
                // detection does not check it, so this does.
                has!("avx2")
                    && has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512vl")
                    && has!("avx512dq")
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        width == Simd::Baseline
    }
}

/// Makes the kernels use copies no wider than `width` (tests compare the
/// copies; results are bit-identical, only speed differs).
pub fn set_widest(width: Simd) {
    WIDEST.store(width as u8, Ordering::Relaxed);
}
