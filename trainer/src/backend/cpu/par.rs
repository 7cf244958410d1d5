//! Parallel loops with a fixed decomposition. Work is split into chunks
//! whose size depends only on the problem's shape, never on the thread
//! count, and partial results are combined in chunk order, so results are
//! bit-identical from run to run and across thread counts.

use super::float::Float;
use super::simd::simd_kernel;
use rayon::prelude::*;

/// Elements per parallel task for elementwise work (64 KiB of f32).
pub const CHUNK: usize = 1 << 14;

/// A raw pointer that may cross threads. Every user writes disjoint regions.
#[derive(Clone, Copy)]
pub struct SyncPtr<T>(*mut T);
// SAFETY: only used to hand disjoint regions of one buffer to parallel tasks.
unsafe impl<T: Send> Send for SyncPtr<T> {}
unsafe impl<T: Send> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    pub fn new(p: *mut T) -> Self {
        SyncPtr(p)
    }
    /// The pointer (a method, so closures capture the `Sync` wrapper).
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }
    /// # Safety
    /// `off..off + len` is inside the allocation and no other live reference
    /// overlaps it.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut<'a>(self, off: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// `f(out_chunk, a_chunk)` over matching chunks.
pub fn map1<T: Float>(out: &mut [T], a: &[T], f: impl Fn(&mut [T], &[T]) + Sync) {
    assert_eq!(out.len(), a.len());
    if out.len() <= CHUNK {
        f(out, a);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .for_each(|(o, a)| f(o, a));
    }
}

/// `f(out_chunk, a_chunk, b_chunk)` over matching chunks.
pub fn map2<T: Float>(out: &mut [T], a: &[T], b: &[T], f: impl Fn(&mut [T], &[T], &[T]) + Sync) {
    assert!(out.len() == a.len() && a.len() == b.len());
    if out.len() <= CHUNK {
        f(out, a, b);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .zip(b.par_chunks(CHUNK))
            .for_each(|((o, a), b)| f(o, a, b));
    }
}

/// `f(x_chunk, y_chunk, a_chunk)` over matching chunks, two outputs.
pub fn map2_mut<T: Float>(
    x: &mut [T],
    y: &mut [T],
    a: &[T],
    f: impl Fn(&mut [T], &mut [T], &[T]) + Sync,
) {
    assert!(x.len() == y.len() && y.len() == a.len());
    if x.len() <= CHUNK {
        f(x, y, a);
    } else {
        x.par_chunks_mut(CHUNK)
            .zip(y.par_chunks_mut(CHUNK))
            .zip(a.par_chunks(CHUNK))
            .for_each(|((x, y), a)| f(x, y, a));
    }
}

/// Rows per task for row-wise work on rows of `width`.
pub fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// `f(first_row, rows_chunk)` over blocks of whole rows of `out`.
pub fn rows_mut<T: Float>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if width == 0 {
        return;
    }
    let rpt = rows_per_task(width);
    if out.len() <= rpt * width {
        f(0, out);
    } else {
        out.par_chunks_mut(rpt * width)
            .enumerate()
            .for_each(|(i, o)| f(i * rpt, o));
    }
}

/// Sum of `f(chunk)` over fixed chunks of `0..n`, combined in order.
pub fn ordered_sum(n: usize, chunk: usize, f: impl Fn(usize, usize) -> f64 + Sync) -> f64 {
    let chunk = chunk.max(1);
    let tasks = n.div_ceil(chunk);
    if tasks <= 1 {
        return if n == 0 { 0.0 } else { f(0, n) };
    }
    let parts: Vec<f64> = (0..tasks)
        .into_par_iter()
        .map(|i| f(i * chunk, ((i + 1) * chunk).min(n)))
        .collect();
    parts.iter().sum()
}

/// `dst += column sums of src[rows, width]`, in a fixed order.
pub fn add_col_sums<T: Float>(dst: &mut [T], src: &[T], rows: usize, width: usize) {
    let dst = &mut dst[..width];
    let src = &src[..rows * width];
    let rpt = rows_per_task(width).max(16);
    let tasks = rows.div_ceil(rpt);
    if tasks <= 1 {
        for row in src.chunks_exact(width) {
            add_to(dst, row);
        }
        return;
    }
    let parts: Vec<Vec<T>> = src
        .par_chunks(rpt * width)
        .map(|block| {
            let mut acc = vec![T::ZERO; width];
            for row in block.chunks_exact(width) {
                add_to(&mut acc, row);
            }
            acc
        })
        .collect();
    for p in &parts {
        add_to(dst, p);
    }
}

/// `dst += src`.
#[inline(always)]
pub fn add_to<T: Float>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// `dst += a * src`.
#[inline(always)]
pub fn axpy<T: Float>(dst: &mut [T], a: T, src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += a * s;
    }
}

/// Sum in a fixed order with eight independent accumulators (vectorises).
#[inline(always)]
pub fn sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in rest {
        s += v;
    }
    s
}

/// Dot product in a fixed order with eight independent accumulators.
#[inline(always)]
pub fn dot<T: Float>(x: &[T], y: &[T]) -> T {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [T::ZERO; 8];
    let xc = x.chunks_exact(8);
    let yc = y.chunks_exact(8);
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&a, &b) in xr.iter().zip(yr) {
        s += a * b;
    }
    s
}

/// Largest element (non-empty input), eight lanes so it vectorises.
#[inline(always)]
pub fn max_of<T: Float>(x: &[T]) -> T {
    let mut acc = [x[0]; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = acc[l].maxf(c[l]);
        }
    }
    let mut m = acc[0];
    for &v in acc[1..].iter().chain(rest) {
        m = m.maxf(v);
    }
    m
}

simd_kernel! {
    /// `x = exp(x - shift)` in place; returns the sum of the new values.
    pub fn exp_shifted_sum<T: Float>(x: &mut [T], shift: T) -> T {
        for v in x.iter_mut() {
            *v = (*v - shift).exp();
        }
        sum(x)
    }
}
