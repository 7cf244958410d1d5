//! LayerNorm over the last dimension.

use super::float::Float;
use super::par::{add_to, dot, rows_per_task, sum};
use super::simd::simd_kernel;
use crate::backend::shapes::{LayerNorm, NormSaved};
use rayon::prelude::*;

pub fn forward<T: Float>(
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: &[T],
    ln: LayerNorm,
) {
    let LayerNorm { rows, width, eps } = ln;
    let (w, b) = (&weight[..width], &bias[..width]);
    let inp = &inp[..rows * width];
    let eps = T::from_f32(eps);
    let rpt = rows_per_task(width);
    out[..rows * width]
        .par_chunks_mut(rpt * width)
        .zip(mean[..rows].par_chunks_mut(rpt))
        .zip(rstd[..rows].par_chunks_mut(rpt))
        .enumerate()
        .for_each(|(ti, ((o, mu), rs))| {
            let x = &inp[ti * rpt * width..][..o.len()];
            forward_rows(o, mu, rs, x, w, b, eps);
        });
}

simd_kernel! {
    fn forward_rows<T: Float>(
        out: &mut [T],
        mean: &mut [T],
        rstd: &mut [T],
        inp: &[T],
        w: &[T],
        b: &[T],
        eps: T,
    ) {
        let width = w.len();
        let inv_n = T::ONE / T::from_usize(width);
        for (r, (orow, x)) in out.chunks_exact_mut(width).zip(inp.chunks_exact(width)).enumerate() {
            let m = sum(x) * inv_n;
            let s = T::ONE / (centered_sum_sq(x, m) * inv_n + eps).sqrt();
            for (((y, &v), &ww), &bb) in orow.iter_mut().zip(x).zip(w).zip(b) {
                *y = (v - m) * s * ww + bb;
            }
            mean[r] = m;
            rstd[r] = s;
        }
    }
}

/// `sum (x - m)^2` with eight lanes.
#[inline(always)]
fn centered_sum_sq<T: Float>(x: &[T], m: T) -> T {
    let mut acc = [T::ZERO; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            let d = c[l] - m;
            acc[l] += d * d;
        }
    }
    let mut s = sum(&acc);
    for &v in rest {
        s += (v - m) * (v - m);
    }
    s
}

pub fn backward<T: Float>(
    dinp: &mut [T],
    dweight: &mut [T],
    dbias: &mut [T],
    dout: &[T],
    saved: NormSaved<'_, [T]>,
    ln: LayerNorm,
) {
    let NormSaved {
        inp,
        weight,
        mean,
        rstd,
    } = saved;
    let (rows, width) = (ln.rows, ln.width);
    let w = &weight[..width];
    let (dout, inp) = (&dout[..rows * width], &inp[..rows * width]);
    let (mean, rstd) = (&mean[..rows], &rstd[..rows]);
    let rpt = rows_per_task(width).max(16);
    // Each task returns its partial dweight and dbias; they are added in
    // task order below, so the result does not depend on scheduling.
    let parts: Vec<Vec<T>> = dinp[..rows * width]
        .par_chunks_mut(rpt * width)
        .enumerate()
        .map(|(ti, di)| {
            let mut acc = vec![T::ZERO; 4 * width];
            let (r0, n) = (ti * rpt, di.len());
            backward_rows(
                di,
                &mut acc,
                &dout[r0 * width..][..n],
                &inp[r0 * width..][..n],
                w,
                &mean[r0..],
                &rstd[r0..],
            );
            acc.truncate(2 * width);
            acc
        })
        .collect();
    for p in &parts {
        add_to(&mut dweight[..width], &p[..width]);
        add_to(&mut dbias[..width], &p[width..]);
    }
}

simd_kernel! {
    /// Rows of `dinp`; `acc` is `[dweight, dbias, scratch, scratch]`.
    fn backward_rows<T: Float>(
        dinp: &mut [T],
        acc: &mut [T],
        dout: &[T],
        inp: &[T],
        w: &[T],
        mean: &[T],
        rstd: &[T],
    ) {
        let width = w.len();
        let inv_n = T::ONE / T::from_usize(width);
        let (dw, rest) = acc.split_at_mut(width);
        let (db, rest) = rest.split_at_mut(width);
        let (dn, xhat) = rest.split_at_mut(width);
        for (r, dirow) in dinp.chunks_exact_mut(width).enumerate() {
            let x = &inp[r * width..][..width];
            let g = &dout[r * width..][..width];
            let (m, s) = (mean[r], rstd[r]);
            for j in 0..width {
                let xh = (x[j] - m) * s;
                xhat[j] = xh;
                dn[j] = g[j] * w[j];
                dw[j] += g[j] * xh;
                db[j] += g[j];
            }
            let m1 = sum(dn) * inv_n;
            let m2 = dot(dn, xhat) * inv_n;
            for j in 0..width {
                dirow[j] += s * (dn[j] - m1 - xhat[j] * m2);
            }
        }
    }
}
