//! `out = inp * weight^T + bias` and its backward, on the GEMM crate.

use super::float::Float;
use super::gemm::{check, gemm, View};
use super::par::{add_col_sums, rows_mut};
use crate::backend::shapes::Linear;

pub fn forward<T: Float>(out: &mut [T], inp: &[T], weight: &[T], bias: Option<&[T]>, d: Linear) {
    let Linear {
        rows,
        in_dim,
        out_dim,
    } = d;
    check(out.len(), 0, rows, out_dim, out_dim, 1);
    let x = View::of(inp, 0, rows, in_dim, in_dim, 1);
    // W^T as a [in, out] view of the [out, in] weight.
    let wt = View::of(weight, 0, in_dim, out_dim, 1, in_dim);
    // SAFETY: out is checked above and is a distinct &mut borrow.
    unsafe {
        gemm(
            rows,
            out_dim,
            in_dim,
            out.as_mut_ptr(),
            out_dim,
            1,
            false,
            x,
            wt,
            T::ONE,
            true,
        )
    };
    if let Some(b) = bias {
        let b = &b[..out_dim];
        rows_mut(&mut out[..rows * out_dim], out_dim, |_, o| {
            for row in o.chunks_exact_mut(out_dim) {
                for (y, &bb) in row.iter_mut().zip(b) {
                    *y += bb;
                }
            }
        });
    }
}

pub fn backward<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    d: Linear,
) {
    let Linear {
        rows,
        in_dim,
        out_dim,
    } = d;
    if let Some(dinp) = dinp {
        // dinp[rows, in] += dout[rows, out] * W[out, in]
        check(dinp.len(), 0, rows, in_dim, in_dim, 1);
        let dy = View::of(dout, 0, rows, out_dim, out_dim, 1);
        let w = View::of(weight, 0, out_dim, in_dim, in_dim, 1);
        // SAFETY: checked extents; dinp is a distinct &mut borrow.
        unsafe {
            gemm(
                rows,
                in_dim,
                out_dim,
                dinp.as_mut_ptr(),
                in_dim,
                1,
                true,
                dy,
                w,
                T::ONE,
                true,
            )
        };
    }
    // dW[out, in] += dout^T[out, rows] * inp[rows, in]
    check(dweight.len(), 0, out_dim, in_dim, in_dim, 1);
    let dyt = View::of(dout, 0, out_dim, rows, 1, out_dim);
    let x = View::of(inp, 0, rows, in_dim, in_dim, 1);
    // SAFETY: as above.
    unsafe {
        gemm(
            out_dim,
            in_dim,
            rows,
            dweight.as_mut_ptr(),
            in_dim,
            1,
            true,
            dyt,
            x,
            T::ONE,
            true,
        )
    };
    if let Some(db) = dbias {
        add_col_sums(db, dout, rows, out_dim);
    }
}
