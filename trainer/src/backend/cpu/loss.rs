//! Softmax cross-entropy fused with its logits gradient.

use super::float::Float;
use super::par::{exp_shifted_sum, max_of, ordered_sum, sum};
use crate::backend::shapes::CrossEntropy;
use rayon::prelude::*;

/// Rows per task (fixed, so the loss sums in the same order on every run).
const ROWS_PER_TASK: usize = 64;

/// Negative log-likelihood of `target` under softmax(`row`); when `grad` is
/// given, writes `(softmax - onehot) * g` to it.
#[inline]
fn row_nll<T: Float>(row: &[T], target: usize, grad: Option<(&mut [T], T)>) -> f64 {
    let mx = max_of(row);
    let sum = match grad {
        Some((d, g)) => {
            d.copy_from_slice(row);
            let sum = exp_shifted_sum(d, mx);
            let scale = g / sum;
            for dv in d.iter_mut() {
                *dv *= scale;
            }
            d[target] -= g;
            sum
        }
        None => {
            let mut acc = [T::ZERO; 8];
            let chunks = row.chunks_exact(8);
            let rest = chunks.remainder();
            for c in chunks {
                for l in 0..8 {
                    acc[l] += (c[l] - mx).exp();
                }
            }
            let mut s = sum(&acc);
            for &v in rest {
                s += (v - mx).exp();
            }
            s
        }
    };
    (sum.to_f64()).ln() + (mx - row[target]).to_f64()
}

pub fn cross_entropy<T: Float>(
    logits: &[T],
    targets: &[u32],
    mask: Option<&[T]>,
    dlogits: Option<&mut [T]>,
    rows: usize,
    vocab: usize,
    grad_scale: f32,
) -> CrossEntropy {
    assert!(vocab > 0, "cross-entropy needs at least one class");
    let logits = &logits[..rows * vocab];
    let targets = &targets[..rows];
    for &t in targets {
        assert!(
            (t as usize) < vocab,
            "target {t} out of range (vocab {vocab})"
        );
    }
    let mask = mask.map(|m| &m[..rows]);
    let count = match mask {
        Some(m) => m.iter().map(|&x| x.to_f64()).sum::<f64>(),
        None => rows as f64,
    };
    let weight = |r: usize| mask.map_or(T::ONE, |m| m[r]);
    let g_base = if count > 0.0 {
        grad_scale as f64 / count
    } else {
        0.0
    };
    let total = match dlogits {
        Some(d) => {
            let d = &mut d[..rows * vocab];
            let parts: Vec<f64> = d
                .par_chunks_mut(ROWS_PER_TASK * vocab)
                .enumerate()
                .map(|(ti, dchunk)| {
                    let mut acc = 0.0;
                    for (i, drow) in dchunk.chunks_exact_mut(vocab).enumerate() {
                        let r = ti * ROWS_PER_TASK + i;
                        let w = weight(r);
                        if w == T::ZERO {
                            drow.fill(T::ZERO);
                            continue;
                        }
                        let g = T::from_f64(g_base) * w;
                        let nll = row_nll(
                            &logits[r * vocab..][..vocab],
                            targets[r] as usize,
                            Some((drow, g)),
                        );
                        acc += w.to_f64() * nll;
                    }
                    acc
                })
                .collect();
            parts.iter().sum()
        }
        None => ordered_sum(rows, ROWS_PER_TASK, |r0, r1| {
            let mut acc = 0.0;
            for r in r0..r1 {
                let w = weight(r);
                if w != T::ZERO {
                    let nll = row_nll(&logits[r * vocab..][..vocab], targets[r] as usize, None);
                    acc += w.to_f64() * nll;
                }
            }
            acc
        }),
    };
    CrossEntropy {
        loss: if count > 0.0 { total / count } else { 0.0 },
        count,
    }
}
