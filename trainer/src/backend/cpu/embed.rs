//! Embedding gather/scatter, the pad-and-shift op, and mean pooling.

use super::float::Float;
use super::par::{add_to, axpy, rows_mut, SyncPtr};
use rayon::prelude::*;

/// Columns per task in scatter-adds: tasks own disjoint column ranges of the
/// table and walk all rows in order, so repeated ids add up deterministically.
const COLS_PER_TASK: usize = 64;

pub fn embedding_forward<T: Float>(
    out: &mut [T],
    table: &[T],
    ids: &[u32],
    rows: usize,
    width: usize,
    accumulate: bool,
) {
    let ids = &ids[..rows];
    let vocab = table.len() / width.max(1);
    rows_mut(&mut out[..rows * width], width, |r0, o| {
        for (r, orow) in o.chunks_exact_mut(width).enumerate() {
            let id = ids[r0 + r] as usize;
            assert!(
                id < vocab,
                "embedding id {id} out of range (table has {vocab} rows)"
            );
            let src = &table[id * width..][..width];
            if accumulate {
                add_to(orow, src);
            } else {
                orow.copy_from_slice(src);
            }
        }
    });
}

pub fn embedding_backward<T: Float>(
    dtable: &mut [T],
    dout: &[T],
    ids: &[u32],
    rows: usize,
    width: usize,
) {
    let ids = &ids[..rows];
    let dout = &dout[..rows * width];
    let vocab = dtable.len() / width.max(1);
    for &id in ids {
        assert!(
            (id as usize) < vocab,
            "embedding id {id} out of range (table has {vocab} rows)"
        );
    }
    let tasks = width.div_ceil(COLS_PER_TASK);
    let ptr = SyncPtr::new(dtable.as_mut_ptr());
    let task = |t: usize| {
        let c0 = t * COLS_PER_TASK;
        let c1 = (c0 + COLS_PER_TASK).min(width);
        for (r, &id) in ids.iter().enumerate() {
            // SAFETY: id < vocab was checked; tasks write disjoint columns.
            let dst = unsafe { ptr.slice_mut(id as usize * width + c0, c1 - c0) };
            add_to(dst, &dout[r * width + c0..r * width + c1]);
        }
    };
    if tasks <= 1 || rows * width < 1 << 14 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

pub fn shift_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    pad: &[T],
    seqs: usize,
    len: usize,
    width: usize,
) {
    let pad = &pad[..width];
    let inp = &inp[..seqs * len * width];
    rows_mut(&mut out[..seqs * len * width], width, |r0, o| {
        for (r, orow) in o.chunks_exact_mut(width).enumerate() {
            let row = r0 + r;
            if row % len == 0 {
                orow.copy_from_slice(pad);
            } else {
                orow.copy_from_slice(&inp[(row - 1) * width..][..width]);
            }
        }
    });
}

pub fn shift_backward<T: Float>(
    dinp: &mut [T],
    dpad: &mut [T],
    dout: &[T],
    seqs: usize,
    len: usize,
    width: usize,
) {
    let dout = &dout[..seqs * len * width];
    rows_mut(&mut dinp[..seqs * len * width], width, |r0, di| {
        for (r, drow) in di.chunks_exact_mut(width).enumerate() {
            let row = r0 + r;
            if (row + 1) % len != 0 {
                add_to(drow, &dout[(row + 1) * width..][..width]);
            }
        }
    });
    let dpad = &mut dpad[..width];
    for s in 0..seqs {
        add_to(dpad, &dout[s * len * width..][..width]);
    }
}

pub fn mean_pool_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    mask: &[T],
    batch: usize,
    seq: usize,
    width: usize,
) {
    let (inp, mask) = (&inp[..batch * seq * width], &mask[..batch * seq]);
    out[..batch * width]
        .par_chunks_mut(width.max(1))
        .enumerate()
        .for_each(|(b, o)| {
            o.fill(T::ZERO);
            let m = &mask[b * seq..][..seq];
            let count = m.iter().fold(T::ZERO, |a, &x| a + x);
            if count == T::ZERO {
                return;
            }
            for (t, &mt) in m.iter().enumerate() {
                if mt != T::ZERO {
                    axpy(o, mt, &inp[(b * seq + t) * width..][..width]);
                }
            }
            let inv = T::ONE / count;
            o.iter_mut().for_each(|v| *v *= inv);
        });
}

pub fn mean_pool_backward<T: Float>(
    dinp: &mut [T],
    dout: &[T],
    mask: &[T],
    batch: usize,
    seq: usize,
    width: usize,
) {
    let (dout, mask) = (&dout[..batch * width], &mask[..batch * seq]);
    dinp[..batch * seq * width]
        .par_chunks_mut((seq * width).max(1))
        .enumerate()
        .for_each(|(b, di)| {
            let m = &mask[b * seq..][..seq];
            let count = m.iter().fold(T::ZERO, |a, &x| a + x);
            if count == T::ZERO {
                return;
            }
            let g = &dout[b * width..][..width];
            for (t, &mt) in m.iter().enumerate() {
                if mt != T::ZERO {
                    axpy(&mut di[t * width..][..width], mt / count, g);
                }
            }
        });
}
