//! Causal multi-head self-attention, parallel over (sequence, head) pairs.
//!
//! The forward saves the attention probabilities `[batch, heads, seq, seq]`
//! (zero above the diagonal); the backward recomputes nothing else. Short
//! sequences (MEGABYTE's local model: one patch of P bytes) run as direct
//! loops, where GEMM calls would cost more than the arithmetic; longer ones
//! (the global model over patches) run as GEMMs on row blocks of 64 queries
//! that only touch keys up to the block's last query, which skips most of
//! the masked half.

use super::float::Float;
use super::gemm::{check, gemm, View};
use super::par::{axpy, dot, exp_shifted_sum, max_of, SyncPtr};
use super::simd::simd_kernel;
use crate::backend::shapes::Attention;
use rayon::prelude::*;

/// Query rows per GEMM block.
const BLOCK: usize = 64;

struct Geom {
    t: usize,
    hd: usize,
    /// Row stride of qkv (3 * width) and of out/dout (width).
    qs: usize,
    os: usize,
    width: usize,
    heads: usize,
}

impl Geom {
    /// The attention scores' scale, `1/sqrt(hd)`.
    fn scale<T: Float>(&self) -> T {
        T::from_f64(1.0 / (self.hd as f64).sqrt())
    }

    fn new(a: Attention) -> Self {
        assert!(
            a.heads > 0 && a.width.is_multiple_of(a.heads),
            "width {} not divisible by heads {}",
            a.width,
            a.heads
        );
        Geom {
            t: a.seq,
            hd: a.width / a.heads,
            qs: 3 * a.width,
            os: a.width,
            width: a.width,
            heads: a.heads,
        }
    }
    /// Offsets of q row 0, k row 0, v row 0 and out row 0 of task `idx`.
    fn offsets(&self, idx: usize) -> (usize, usize, usize, usize) {
        let (b, h) = (idx / self.heads, idx % self.heads);
        let q0 = b * self.t * self.qs + h * self.hd;
        (
            q0,
            q0 + self.width,
            q0 + 2 * self.width,
            b * self.t * self.os + h * self.hd,
        )
    }
}

pub fn saved_len(a: Attention) -> usize {
    a.batch * a.heads * a.seq * a.seq
}

fn check_sizes(a: Attention, qkv: usize, out: usize, saved: usize) {
    let rows = a.batch * a.seq;
    assert!(qkv >= rows * 3 * a.width, "qkv buffer too small");
    assert!(out >= rows * a.width, "attention output buffer too small");
    assert!(saved >= saved_len(a), "attention saved buffer too small");
}

/// Softmax of `row[..=i]` in place (scores already scaled); zeroes `row[i+1..]`.
#[inline]
fn causal_softmax<T: Float>(row: &mut [T], i: usize) {
    let (live, dead) = row.split_at_mut(i + 1);
    let mx = max_of(live);
    let inv = T::ONE / exp_shifted_sum(live, mx);
    for v in live.iter_mut() {
        *v *= inv;
    }
    dead.fill(T::ZERO);
}

pub fn forward<T: Float>(
    out: &mut [T],
    saved: &mut [T],
    qkv: &[T],
    a: Attention,
    small_seq: usize,
) {
    check_sizes(a, qkv.len(), out.len(), saved.len());
    let g = Geom::new(a);
    let (t, hd) = (g.t, g.hd);
    if t == 0 || a.batch == 0 {
        return;
    }
    let scale = g.scale::<T>();
    let out_len = out.len();
    let outp = SyncPtr::new(out.as_mut_ptr());
    saved[..saved_len(a)]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(idx, probs)| {
            let (q0, k0, v0, o0) = g.offsets(idx);
            if t <= small_seq {
                small_forward(probs, qkv, outp, &g, idx, scale);
                return;
            }
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let m = r1 - r0;
                // S[r0..r1, 0..r1] = scale * Q[r0..r1] K[0..r1]^T
                let q = View::of(qkv, q0 + r0 * g.qs, m, hd, g.qs, 1);
                let kt = View::of(qkv, k0, hd, r1, 1, g.qs);
                check(probs.len(), r0 * t, m, r1, t, 1);
                // SAFETY: probs is this task's own chunk; extents checked.
                unsafe {
                    gemm(
                        m,
                        r1,
                        hd,
                        probs[r0 * t..].as_mut_ptr(),
                        t,
                        1,
                        false,
                        q,
                        kt,
                        scale,
                        false,
                    )
                };
                for i in r0..r1 {
                    causal_softmax(&mut probs[i * t..][..t], i);
                }
                // O[r0..r1] = P[r0..r1, 0..r1] V[0..r1]
                let p = View::of(probs, r0 * t, m, r1, t, 1);
                let v = View::of(qkv, v0, r1, hd, g.qs, 1);
                check(out_len, o0 + r0 * g.os, m, hd, g.os, 1);
                // SAFETY: disjoint (sequence, head) block of out; extents checked.
                unsafe {
                    gemm(
                        m,
                        hd,
                        r1,
                        outp.get().add(o0 + r0 * g.os),
                        g.os,
                        1,
                        false,
                        p,
                        v,
                        T::ONE,
                        false,
                    )
                };
            }
        });
}

pub fn backward<T: Float>(
    dqkv: &mut [T],
    dout: &[T],
    qkv: &[T],
    saved: &[T],
    a: Attention,
    small_seq: usize,
) {
    check_sizes(a, qkv.len(), dout.len(), saved.len());
    assert!(
        dqkv.len() >= a.batch * a.seq * 3 * a.width,
        "dqkv buffer too small"
    );
    let g = Geom::new(a);
    let (t, hd) = (g.t, g.hd);
    if t == 0 || a.batch == 0 {
        return;
    }
    let scale = g.scale::<T>();
    let dlen = dqkv.len();
    let dp = SyncPtr::new(dqkv.as_mut_ptr());
    let small = t <= small_seq;
    let scratch_len = if small { t } else { BLOCK.min(t) * t };
    (0..a.batch * a.heads).into_par_iter().for_each_init(
        || vec![T::ZERO; scratch_len],
        |scratch, idx| {
            let (q0, k0, v0, o0) = g.offsets(idx);
            let probs = &saved[idx * t * t..][..t * t];
            if small {
                small_backward(scratch, dp, dout, qkv, probs, &g, idx);
                return;
            }
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let m = r1 - r0;
                // dP[0..m, 0..r1] = dO[r0..r1] V[0..r1]^T
                let d_o = View::of(dout, o0 + r0 * g.os, m, hd, g.os, 1);
                let vt = View::of(qkv, v0, hd, r1, 1, g.qs);
                // SAFETY: scratch is this task's own; m*t <= scratch_len.
                unsafe {
                    gemm(
                        m,
                        r1,
                        hd,
                        scratch.as_mut_ptr(),
                        t,
                        1,
                        false,
                        d_o,
                        vt,
                        T::ONE,
                        false,
                    )
                };
                // dS = P * (dP - rowsum(P * dP)) * scale, 0 above the diagonal.
                for ii in 0..m {
                    let i = r0 + ii;
                    let prow = &probs[i * t..][..r1];
                    let drow = &mut scratch[ii * t..][..r1];
                    let rowdot = dot(&prow[..=i], &drow[..=i]);
                    for j in 0..=i {
                        drow[j] = prow[j] * (drow[j] - rowdot) * scale;
                    }
                    drow[i + 1..].fill(T::ZERO);
                }
                let ds = View::of(scratch, 0, m, r1, t, 1);
                let dst = View::of(scratch, 0, r1, m, 1, t);
                // SAFETY (all three): this task's (sequence, head) columns of
                // dqkv, extents checked against its length.
                // dQ[r0..r1] += dS K[0..r1]
                let k = View::of(qkv, k0, r1, hd, g.qs, 1);
                check(dlen, q0 + r0 * g.qs, m, hd, g.qs, 1);
                unsafe {
                    gemm(
                        m,
                        hd,
                        r1,
                        dp.get().add(q0 + r0 * g.qs),
                        g.qs,
                        1,
                        true,
                        ds,
                        k,
                        T::ONE,
                        false,
                    )
                };
                // dK[0..r1] += dS^T Q[r0..r1]
                let q = View::of(qkv, q0 + r0 * g.qs, m, hd, g.qs, 1);
                check(dlen, k0, r1, hd, g.qs, 1);
                unsafe {
                    gemm(
                        r1,
                        hd,
                        m,
                        dp.get().add(k0),
                        g.qs,
                        1,
                        true,
                        dst,
                        q,
                        T::ONE,
                        false,
                    )
                };
                // dV[0..r1] += P[r0..r1, 0..r1]^T dO[r0..r1]
                let pt = View::of(probs, r0 * t, r1, m, 1, t);
                check(dlen, v0, r1, hd, g.qs, 1);
                unsafe {
                    gemm(
                        r1,
                        hd,
                        m,
                        dp.get().add(v0),
                        g.qs,
                        1,
                        true,
                        pt,
                        d_o,
                        T::ONE,
                        false,
                    )
                };
            }
        },
    );
}

simd_kernel! {
    /// One (sequence, head) of the forward with direct loops.
    fn small_forward<T: Float>(
        probs: &mut [T],
        qkv: &[T],
        outp: SyncPtr<T>,
        g: &Geom,
        idx: usize,
        scale: T,
    ) {
        let (t, hd) = (g.t, g.hd);
        let (q0, k0, v0, o0) = g.offsets(idx);
        for i in 0..t {
            let qi = &qkv[q0 + i * g.qs..][..hd];
            let row = &mut probs[i * t..][..t];
            for (j, s) in row[..=i].iter_mut().enumerate() {
                *s = dot(qi, &qkv[k0 + j * g.qs..][..hd]) * scale;
            }
            causal_softmax(row, i);
            // SAFETY: (sequence, head, row) regions of out are disjoint
            // between tasks and inside the buffer (checked by the caller).
            let o = unsafe { outp.slice_mut(o0 + i * g.os, hd) };
            o.fill(T::ZERO);
            for (j, &p) in row[..=i].iter().enumerate() {
                axpy(o, p, &qkv[v0 + j * g.qs..][..hd]);
            }
        }
    }
}

simd_kernel! {
    /// One (sequence, head) of the backward with direct loops.
    fn small_backward<T: Float>(
        scratch: &mut [T],
        dp: SyncPtr<T>,
        dout: &[T],
        qkv: &[T],
        probs: &[T],
        g: &Geom,
        idx: usize,
    ) {
        let scale = g.scale::<T>();
        let (t, hd) = (g.t, g.hd);
        let (q0, k0, v0, o0) = g.offsets(idx);
        for i in 0..t {
            let doi = &dout[o0 + i * g.os..][..hd];
            let prow = &probs[i * t..][..t];
            let mut rowdot = T::ZERO;
            for j in 0..=i {
                let d = dot(doi, &qkv[v0 + j * g.qs..][..hd]);
                scratch[j] = d;
                rowdot += prow[j] * d;
            }
            let qi = &qkv[q0 + i * g.qs..][..hd];
            for j in 0..=i {
                let ds = prow[j] * (scratch[j] - rowdot) * scale;
                // SAFETY: this task owns the (sequence, head) columns of
                // dqkv (inside the buffer, checked by the caller); each slice
                // is dropped before the next is made.
                unsafe {
                    axpy(dp.slice_mut(q0 + i * g.qs, hd), ds, &qkv[k0 + j * g.qs..][..hd]);
                    axpy(dp.slice_mut(k0 + j * g.qs, hd), ds, qi);
                    axpy(dp.slice_mut(v0 + j * g.qs, hd), prow[j], doi);
                }
            }
        }
    }
}
