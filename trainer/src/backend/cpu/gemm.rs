//! The one place that calls the GEMM crate. Matrices are described by a
//! pointer plus row and column strides (in elements), so transposed and
//! strided views (attention heads inside `qkv`) need no copies.
//!
//! `gemm` 0.19 splits work over output tiles only and reduces over `k` in a
//! fixed order inside each tile, so its results do not depend on thread
//! scheduling (the determinism tests check this, across thread counts too).

use super::float::Float;
use gemm::Parallelism;

/// A strided matrix view: element `(i, j)` is at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub struct View<T> {
    pub ptr: *const T,
    pub rs: usize,
    pub cs: usize,
}

impl<T> View<T> {
    /// A view into `s` starting at `off`; checks that an `rows x cols` matrix
    /// with these strides fits.
    #[inline]
    pub fn of(s: &[T], off: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        check(s.len(), off, rows, cols, rs, cs);
        View {
            ptr: s[off..].as_ptr(),
            rs,
            cs,
        }
    }
}

#[inline]
pub fn check(len: usize, off: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    if rows > 0 && cols > 0 {
        let last = off + (rows - 1) * rs + (cols - 1) * cs;
        assert!(last < len, "matrix view out of bounds: {last} >= {len}");
    }
}

/// `dst (=|+=) scale * lhs[m, k] * rhs[k, n]`, with `dst` at `dst` with
/// strides `(dst_rs, dst_cs)`.
///
/// # Safety
/// `dst` must be valid for writes of the `m x n` strided matrix and not
/// alias `lhs` or `rhs`; the views must be valid for reads.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: View<T>,
    rhs: View<T>,
    scale: T,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.add(i * dst_rs + j * dst_cs) = T::ZERO;
                }
            }
        }
        return;
    }
    let par = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // gemm's convention: dst := alpha*dst + beta*lhs*rhs (alpha read only
    // when read_dst); strides are passed column stride first.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
        T::ONE,
        scale,
        false,
        false,
        false,
        par,
    );
}
