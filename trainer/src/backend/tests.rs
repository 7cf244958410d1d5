//! CPU backend tests: every backward against central differences in f64,
//! forwards against naive loops, determinism across runs and thread counts,
//! and the f32 backend against the f64 one (the conformance harness).

use super::cpu::CpuBackend;
use super::*;
use kilobyte_runtime::rng::Rng;

type B64 = CpuBackend<f64>;

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

fn dotv(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn minus(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Checks `grads[k]` (the analytic gradient of `loss` with respect to
/// `inputs[k]`) element by element against central differences. The
/// relative error of an element is taken against the larger of the two
/// values, floored at 1e-3 of the tensor's largest gradient (so exact zeros
/// meet rounding noise gracefully).
fn grad_check(
    name: &str,
    inputs: &mut [Vec<f64>],
    grads: &[Vec<f64>],
    loss: impl Fn(&[Vec<f64>]) -> f64,
) {
    const H: f64 = 1e-5;
    let mut worst = 0f64;
    for k in 0..inputs.len() {
        assert_eq!(inputs[k].len(), grads[k].len(), "{name}: gradient {k} size");
        let scale = grads[k].iter().fold(0f64, |m, g| m.max(g.abs()));
        assert!(scale > 0.0, "{name}: gradient {k} is all zero");
        for i in 0..inputs[k].len() {
            let x = inputs[k][i];
            inputs[k][i] = x + H;
            let lp = loss(inputs);
            inputs[k][i] = x - H;
            let lm = loss(inputs);
            inputs[k][i] = x;
            let num = (lp - lm) / (2.0 * H);
            let a = grads[k][i];
            let err = (a - num).abs() / a.abs().max(num.abs()).max(1e-3 * scale);
            worst = worst.max(err);
            assert!(
                err < 1e-6,
                "{name}: input {k}[{i}]: analytic {a:e}, numeric {num:e}, relative error {err:e}"
            );
        }
    }
    eprintln!("{name}: worst relative error {worst:.2e}");
}

#[test]
fn matmul_forward_matches_triple_loop() {
    let mut rng = Rng::new(1);
    // Odd sizes, and one large enough for gemm to use several threads.
    for (rows, in_dim, out_dim) in [(7, 5, 3), (1, 9, 4), (67, 129, 33), (130, 70, 301)] {
        let d = Linear {
            rows,
            in_dim,
            out_dim,
        };
        let x = randn(&mut rng, rows * in_dim, 1.0);
        let w = randn(&mut rng, out_dim * in_dim, 1.0);
        let bias = randn(&mut rng, out_dim, 1.0);
        let mut want = vec![0.0; rows * out_dim];
        for r in 0..rows {
            for o in 0..out_dim {
                let mut s = bias[o];
                for i in 0..in_dim {
                    s += x[r * in_dim + i] * w[o * in_dim + i];
                }
                want[r * out_dim + o] = s;
            }
        }
        let b = B64::new();
        let mut y = vec![f64::NAN; rows * out_dim];
        b.matmul_forward(&mut y, &x, &w, Some(&bias), d);
        assert!(max_abs_diff(&y, &want) < 1e-12, "{d:?}");
        // Without bias, and in f32.
        b.matmul_forward(&mut y, &x, &w, None, d);
        let nobias: Vec<f64> = (0..rows * out_dim)
            .map(|i| want[i] - bias[i % out_dim])
            .collect();
        assert!(max_abs_diff(&y, &nobias) < 1e-12);
        let b32 = CpuBackend::<f32>::new();
        let (x32, w32) = (b32.upload_f64(&x).unwrap(), b32.upload_f64(&w).unwrap());
        let mut y32 = vec![0f32; rows * out_dim];
        b32.matmul_forward(&mut y32, &x32, &w32, None, d);
        let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
        assert!(max_abs_diff(&y32, &nobias) < 1e-4);
    }
}

#[test]
fn matmul_gradients() {
    let mut rng = Rng::new(2);
    let b = B64::new();
    let d = Linear {
        rows: 6,
        in_dim: 5,
        out_dim: 3,
    };
    let mut inputs = vec![
        randn(&mut rng, 30, 1.0),
        randn(&mut rng, 15, 1.0),
        randn(&mut rng, 3, 1.0),
    ];
    let r = randn(&mut rng, 18, 1.0);
    let loss = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; 18];
        b.matmul_forward(&mut y, &v[0], &v[1], Some(&v[2]), d);
        dotv(&y, &r)
    };
    // Gradients start from random values: backward must add to them.
    let g0: Vec<Vec<f64>> = inputs
        .iter()
        .map(|v| randn(&mut rng, v.len(), 1.0))
        .collect();
    let (mut gx, mut gw, mut gb) = (g0[0].clone(), g0[1].clone(), g0[2].clone());
    b.matmul_backward(
        Some(&mut gx),
        WeightBias {
            weight: &mut gw,
            bias: Some(&mut gb),
        },
        &r,
        &inputs[0],
        &inputs[1],
        d,
    );
    let grads = vec![minus(&gx, &g0[0]), minus(&gw, &g0[1]), minus(&gb, &g0[2])];
    grad_check("matmul", &mut inputs, &grads, loss);
    // dinp = None leaves the weight gradient unchanged.
    let mut gw2 = g0[1].clone();
    b.matmul_backward(
        None,
        WeightBias {
            weight: &mut gw2,
            bias: None,
        },
        &r,
        &inputs[0],
        &inputs[1],
        d,
    );
    assert_eq!(gw2, gw);
}

fn naive_layernorm(x: &[f64], w: &[f64], bias: &[f64], width: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for row in x.chunks(width) {
        let m = row.iter().sum::<f64>() / width as f64;
        let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / width as f64;
        let s = 1.0 / (var + eps).sqrt();
        out.extend(
            row.iter()
                .enumerate()
                .map(|(j, v)| (v - m) * s * w[j] + bias[j]),
        );
    }
    out
}

#[test]
fn layernorm_forward_and_gradients() {
    let mut rng = Rng::new(3);
    let b = B64::new();
    let (rows, width) = (5, 7);
    let eps = 1e-5f32;
    let mut inputs = vec![
        randn(&mut rng, rows * width, 2.0),
        randn(&mut rng, width, 1.0),
        randn(&mut rng, width, 1.0),
    ];
    let mut y = vec![0.0; rows * width];
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    b.layernorm_forward(
        &mut y,
        &mut mean,
        &mut rstd,
        &inputs[0],
        WeightBias {
            weight: &inputs[1],
            bias: &inputs[2],
        },
        LayerNorm { rows, width, eps },
    );
    let want = naive_layernorm(&inputs[0], &inputs[1], &inputs[2], width, eps as f64);
    assert!(max_abs_diff(&y, &want) < 1e-12);
    let r = randn(&mut rng, rows * width, 1.0);
    let loss = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; rows * width];
        let (mut m, mut s) = (vec![0.0; rows], vec![0.0; rows]);
        b.layernorm_forward(
            &mut y,
            &mut m,
            &mut s,
            &v[0],
            WeightBias {
                weight: &v[1],
                bias: &v[2],
            },
            LayerNorm { rows, width, eps },
        );
        dotv(&y, &r)
    };
    let g0: Vec<Vec<f64>> = inputs
        .iter()
        .map(|v| randn(&mut rng, v.len(), 1.0))
        .collect();
    let (mut gx, mut gw, mut gb) = (g0[0].clone(), g0[1].clone(), g0[2].clone());
    b.layernorm_backward(
        &mut gx,
        WeightBias {
            weight: &mut gw,
            bias: &mut gb,
        },
        &r,
        NormSaved {
            inp: &inputs[0],
            weight: &inputs[1],
            mean: &mean,
            rstd: &rstd,
        },
        LayerNorm { rows, width, eps },
    );
    let grads = vec![minus(&gx, &g0[0]), minus(&gw, &g0[1]), minus(&gb, &g0[2])];
    grad_check("layernorm", &mut inputs, &grads, loss);
}

/// Checks an elementwise op with inputs `k` wide against finite differences.
fn check_elementwise(
    name: &str,
    n_inputs: usize,
    fwd: impl Fn(&B64, &mut Vec<f64>, &[Vec<f64>]),
    bwd: impl Fn(&B64, &mut [Vec<f64>], &[Vec<f64>], &Vec<f64>, &Vec<f64>),
) {
    let mut rng = Rng::new(name.len() as u64);
    let b = B64::new();
    let n = 23;
    let mut inputs: Vec<Vec<f64>> = (0..n_inputs).map(|_| randn(&mut rng, n, 1.5)).collect();
    let r = randn(&mut rng, n, 1.0);
    let loss = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; n];
        fwd(&b, &mut y, v);
        dotv(&y, &r)
    };
    let mut y = vec![0.0; n];
    fwd(&b, &mut y, &inputs);
    let g0: Vec<Vec<f64>> = (0..n_inputs).map(|_| randn(&mut rng, n, 1.0)).collect();
    let mut g = g0.clone();
    bwd(&b, &mut g, &inputs, &y, &r);
    let grads: Vec<Vec<f64>> = g.iter().zip(&g0).map(|(a, b)| minus(a, b)).collect();
    grad_check(name, &mut inputs, &grads, loss);
}

#[test]
fn elementwise_gradients() {
    check_elementwise(
        "gelu",
        1,
        |b, y, v| b.gelu_forward(y, &v[0], v[0].len()),
        |b, g, v, _, r| b.gelu_backward(&mut g[0], &v[0], r, r.len()),
    );
    check_elementwise(
        "tanh",
        1,
        |b, y, v| b.tanh_forward(y, &v[0], v[0].len()),
        |b, g, _, y, r| b.tanh_backward(&mut g[0], y, r, r.len()),
    );
    check_elementwise(
        "add",
        2,
        |b, y, v| b.add_forward(y, &v[0], &v[1], v[0].len()),
        |b, g, _, _, r| {
            let (ga, gb) = g.split_at_mut(1);
            b.add_backward(&mut ga[0], &mut gb[0], r, r.len())
        },
    );
    check_elementwise(
        "mul",
        2,
        |b, y, v| b.mul_forward(y, &v[0], &v[1], v[0].len()),
        |b, g, v, _, r| {
            let (ga, gb) = g.split_at_mut(1);
            b.mul_backward(&mut ga[0], &mut gb[0], r, &v[0], &v[1], r.len())
        },
    );
}

#[test]
fn gelu_and_tanh_values() {
    let xs: Vec<f64> = (-40..=40).map(|i| i as f64 * 0.2).collect();
    let n = xs.len();
    let want: Vec<f64> = xs
        .iter()
        .map(|&x| {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        })
        .collect();
    let b = B64::new();
    let mut y = vec![0.0; n];
    b.gelu_forward(&mut y, &xs, n);
    assert!(max_abs_diff(&y, &want) < 1e-15);
    let b32 = CpuBackend::<f32>::new();
    let x32 = b32.upload_f64(&xs).unwrap();
    let mut y32 = b32.alloc(n).unwrap();
    b32.gelu_forward(&mut y32, &x32, n);
    assert!(max_abs_diff(&b32.download_f64(&y32).unwrap(), &want) < 2e-6);
    b32.tanh_forward(&mut y32, &x32, n);
    let t: Vec<f64> = xs.iter().map(|x| (*x as f32 as f64).tanh()).collect();
    assert!(max_abs_diff(&b32.download_f64(&y32).unwrap(), &t) < 1e-6);
}

#[test]
fn bias_gradients() {
    let mut rng = Rng::new(4);
    let b = B64::new();
    let (rows, width) = (4, 6);
    let mut inputs = vec![
        randn(&mut rng, rows * width, 1.0),
        randn(&mut rng, width, 1.0),
    ];
    let r = randn(&mut rng, rows * width, 1.0);
    let loss = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; rows * width];
        b.bias_forward(&mut y, &v[0], &v[1], rows, width);
        dotv(&y, &r)
    };
    let g0: Vec<Vec<f64>> = inputs
        .iter()
        .map(|v| randn(&mut rng, v.len(), 1.0))
        .collect();
    let (mut gx, mut gb) = (g0[0].clone(), g0[1].clone());
    b.bias_backward(Some(&mut gx), &mut gb, &r, rows, width);
    let grads = vec![minus(&gx, &g0[0]), minus(&gb, &g0[1])];
    grad_check("bias", &mut inputs, &grads, loss);
}

#[test]
fn embedding_with_repeated_ids() {
    let mut rng = Rng::new(5);
    let b = B64::new();
    let (vocab, width) = (6, 5);
    let ids = vec![3u32, 0, 3, 5, 3, 0, 1];
    let rows = ids.len();
    let base = randn(&mut rng, rows * width, 1.0);
    let mut inputs = vec![randn(&mut rng, vocab * width, 1.0)];
    let mut y = base.clone();
    b.embedding_forward(&mut y, &inputs[0], &ids, rows, width, false);
    for (r, &id) in ids.iter().enumerate() {
        assert_eq!(
            y[r * width..][..width],
            inputs[0][id as usize * width..][..width]
        );
    }
    let mut y2 = base.clone();
    b.embedding_forward(&mut y2, &inputs[0], &ids, rows, width, true);
    assert!(max_abs_diff(&minus(&y2, &base), &y) < 1e-15);
    let r = randn(&mut rng, rows * width, 1.0);
    let loss = |v: &[Vec<f64>]| {
        let mut y = base.clone();
        b.embedding_forward(&mut y, &v[0], &ids, rows, width, true);
        dotv(&y, &r)
    };
    let g0 = randn(&mut rng, vocab * width, 1.0);
    let mut g = g0.clone();
    b.embedding_backward(&mut g, &r, &ids, rows, width);
    let grads = vec![minus(&g, &g0)];
    // Rows 2 and 4 (never looked up) get no gradient.
    assert!(grads[0][2 * width..3 * width].iter().all(|&v| v == 0.0));
    grad_check("embedding", &mut inputs, &grads, loss);
}

#[test]
#[should_panic(expected = "out of range")]
fn embedding_rejects_bad_ids() {
    let b = B64::new();
    let mut y = vec![0.0; 4];
    b.embedding_forward(&mut y, &vec![0.0; 8], &vec![4u32, 0], 2, 2, false);
}

#[test]
fn shift_forward_and_gradients() {
    let mut rng = Rng::new(6);
    let b = B64::new();
    let (seqs, len, width) = (3, 4, 2);
    let n = seqs * len * width;
    let mut inputs = vec![randn(&mut rng, n, 1.0), randn(&mut rng, width, 1.0)];
    let mut y = vec![0.0; n];
    b.shift_forward(&mut y, &inputs[0], &inputs[1], seqs, len, width);
    for s in 0..seqs {
        assert_eq!(y[s * len * width..][..width], inputs[1][..]);
        for t in 1..len {
            let o = (s * len + t) * width;
            assert_eq!(y[o..o + width], inputs[0][o - width..o]);
        }
    }
    let r = randn(&mut rng, n, 1.0);
    let loss = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; n];
        b.shift_forward(&mut y, &v[0], &v[1], seqs, len, width);
        dotv(&y, &r)
    };
    let g0: Vec<Vec<f64>> = inputs
        .iter()
        .map(|v| randn(&mut rng, v.len(), 1.0))
        .collect();
    let (mut gx, mut gp) = (g0[0].clone(), g0[1].clone());
    b.shift_backward(&mut gx, &mut gp, &r, seqs, len, width);
    let grads = vec![minus(&gx, &g0[0]), minus(&gp, &g0[1])];
    // Each sequence's last row is not used: its gradient is zero.
    assert!(grads[0][(len - 1) * width..len * width]
        .iter()
        .all(|&v| v == 0.0));
    grad_check("shift", &mut inputs, &grads, loss);
}

#[test]
fn mean_pool_gradients() {
    let mut rng = Rng::new(7);
    let b = B64::new();
    let (batch, seq, width) = (3, 5, 4);
    // Sequence 1 counts nothing (all padding); others count some positions.
    let mask: Vec<f64> = vec![
        1.0, 1.0, 0.0, 1.0, 0.0, //
        0.0, 0.0, 0.0, 0.0, 0.0, //
        1.0, 1.0, 1.0, 1.0, 1.0,
    ];
    let mut inputs = vec![randn(&mut rng, batch * seq * width, 1.0)];
    let mut y = vec![f64::NAN; batch * width];
    b.mean_pool_forward(&mut y, &inputs[0], &mask, batch, seq, width);
    for c in 0..width {
        let x = &inputs[0];
        let want0 = (x[c] + x[width + c] + x[3 * width + c]) / 3.0;
        assert!((y[c] - want0).abs() < 1e-15);
        assert_eq!(y[width + c], 0.0);
    }
    let r = randn(&mut rng, batch * width, 1.0);
    let loss = |v: &[Vec<f64>]| {
        let mut y = vec![0.0; batch * width];
        b.mean_pool_forward(&mut y, &v[0], &mask, batch, seq, width);
        dotv(&y, &r)
    };
    let g0 = randn(&mut rng, batch * seq * width, 1.0);
    let mut g = g0.clone();
    b.mean_pool_backward(&mut g, &r, &mask, batch, seq, width);
    grad_check("mean-pool", &mut inputs, &[minus(&g, &g0)], loss);
}

fn naive_cross_entropy(logits: &[f64], targets: &[u32], mask: Option<&[f64]>, vocab: usize) -> f64 {
    let (mut total, mut count) = (0.0, 0.0);
    for (r, row) in logits.chunks(vocab).enumerate() {
        let w = mask.map_or(1.0, |m| m[r]);
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        total += w * (lse - row[targets[r] as usize]);
        count += w;
    }
    total / count
}

#[test]
fn cross_entropy_value_and_gradients() {
    let mut rng = Rng::new(8);
    let b = B64::new();
    let (rows, vocab) = (6, 7);
    // Byte 0 is an ordinary class: several targets are 0.
    let targets = vec![0u32, 3, 0, 6, 2, 0];
    let mask = vec![1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
    let mut inputs = vec![randn(&mut rng, rows * vocab, 2.0)];
    for (m, scale) in [(None, 1.0f32), (Some(&mask), 0.5)] {
        let mut d = vec![f64::NAN; rows * vocab];
        let ce = b.cross_entropy(
            &inputs[0],
            &targets,
            m,
            Some(&mut d),
            Logits {
                rows,
                classes: vocab,
            },
            scale,
        );
        let want = naive_cross_entropy(&inputs[0], &targets, m.map(|v| v.as_slice()), vocab);
        assert!((ce.loss - want).abs() < 1e-13, "{} vs {want}", ce.loss);
        assert_eq!(ce.count, if m.is_some() { 4.0 } else { 6.0 });
        // Without a gradient buffer the loss is the same.
        let ce2 = b.cross_entropy(
            &inputs[0],
            &targets,
            m,
            None,
            Logits {
                rows,
                classes: vocab,
            },
            scale,
        );
        assert_eq!(ce2, ce);
        if m.is_some() {
            assert!(d[vocab..2 * vocab].iter().all(|&v| v == 0.0), "masked row");
        }
        let loss = |v: &[Vec<f64>]| {
            scale as f64 * naive_cross_entropy(&v[0], &targets, m.map(|v| v.as_slice()), vocab)
        };
        grad_check(
            &format!("cross-entropy (mask: {})", m.is_some()),
            &mut inputs,
            &[d],
            loss,
        );
    }
    // Nothing counted: zero loss and zero gradient.
    let mut d = vec![1.0; rows * vocab];
    let none = vec![0.0; rows];
    let ce = b.cross_entropy(
        &inputs[0],
        &targets,
        Some(&none),
        Some(&mut d),
        Logits {
            rows,
            classes: vocab,
        },
        1.0,
    );
    assert_eq!((ce.loss, ce.count), (0.0, 0.0));
    assert!(d.iter().all(|&v| v == 0.0));
    // Uniform logits over 256 bytes: ln 256 nats = 8 bits per byte.
    let flat = vec![0.0; 2 * 256];
    let ce = b.cross_entropy(
        &flat,
        &vec![0, 255],
        None,
        None,
        Logits {
            rows: 2,
            classes: 256,
        },
        1.0,
    );
    assert!((ce.loss / std::f64::consts::LN_2 - 8.0).abs() < 1e-12);
}

fn naive_attention(qkv: &[f64], a: Attention) -> Vec<f64> {
    let (t, w, hd) = (a.seq, a.width, a.head_dim());
    let mut out = vec![0.0; a.rows() * w];
    let at = |b: usize, i: usize, part: usize, h: usize, c: usize| {
        qkv[(b * t + i) * 3 * w + part * w + h * hd + c]
    };
    for b in 0..a.batch {
        for h in 0..a.heads {
            for i in 0..t {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|c| at(b, i, 0, h, c) * at(b, j, 1, h, c))
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..hd {
                    out[(b * t + i) * w + h * hd + c] =
                        (0..=i).map(|j| e[j] / z * at(b, j, 2, h, c)).sum();
                }
            }
        }
    }
    out
}

#[test]
fn attention_forward_matches_naive() {
    let mut rng = Rng::new(9);
    for a in [
        Attention {
            batch: 3,
            seq: 5,
            width: 12,
            heads: 3,
        },
        Attention {
            batch: 2,
            seq: 70,
            width: 10,
            heads: 2,
        },
        Attention {
            batch: 1,
            seq: 1,
            width: 4,
            heads: 4,
        },
    ] {
        let qkv = randn(&mut rng, a.rows() * 3 * a.width, 1.0);
        let want = naive_attention(&qkv, a);
        // Direct loops, GEMM blocks, in f64 and f32.
        for small in [usize::MAX, 0] {
            let b = B64::new().with_attention_small_seq(small);
            let mut y = vec![f64::NAN; a.rows() * a.width];
            let mut saved = vec![f64::NAN; b.attention_saved_len(a)];
            b.attention_forward(&mut y, &mut saved, &qkv, a);
            assert!(max_abs_diff(&y, &want) < 1e-12, "{a:?} small_seq {small}");
            // Probabilities: rows sum to one, zero above the diagonal.
            for row in saved.chunks(a.seq).take(a.seq) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
            assert!(saved[1..a.seq].iter().all(|&p| p == 0.0));
            let b32 = CpuBackend::<f32>::new().with_attention_small_seq(small);
            let q32 = b32.upload_f64(&qkv).unwrap();
            let mut y32 = b32.alloc(a.rows() * a.width).unwrap();
            let mut s32 = b32.alloc(b32.attention_saved_len(a)).unwrap();
            b32.attention_forward(&mut y32, &mut s32, &q32, a);
            assert!(max_abs_diff(&b32.download_f64(&y32).unwrap(), &want) < 1e-5);
        }
    }
}

#[test]
fn attention_gradients() {
    let mut rng = Rng::new(10);
    // Several heads with causal masking; the second case runs the GEMM path
    // over two row blocks (seq > 64).
    for (a, small) in [
        (
            Attention {
                batch: 2,
                seq: 5,
                width: 6,
                heads: 3,
            },
            usize::MAX,
        ),
        (
            Attention {
                batch: 2,
                seq: 4,
                width: 6,
                heads: 2,
            },
            0,
        ),
        (
            Attention {
                batch: 1,
                seq: 67,
                width: 4,
                heads: 2,
            },
            0,
        ),
    ] {
        let b = B64::new().with_attention_small_seq(small);
        let n = a.rows() * 3 * a.width;
        let mut inputs = vec![randn(&mut rng, n, 1.0)];
        let r = randn(&mut rng, a.rows() * a.width, 1.0);
        let fwd = |v: &[Vec<f64>], saved: &mut Vec<f64>| {
            let mut y = vec![0.0; a.rows() * a.width];
            b.attention_forward(&mut y, saved, &v[0], a);
            dotv(&y, &r)
        };
        let mut saved = vec![0.0; b.attention_saved_len(a)];
        fwd(&inputs, &mut saved);
        let g0 = randn(&mut rng, n, 1.0);
        let mut g = g0.clone();
        b.attention_backward(&mut g, &r, &inputs[0], &saved, a);
        let loss = |v: &[Vec<f64>]| fwd(v, &mut vec![0.0; b.attention_saved_len(a)]);
        grad_check(
            &format!("attention {a:?} small_seq {small}"),
            &mut inputs,
            &[minus(&g, &g0)],
            loss,
        );
    }
}

#[test]
fn memory_ops() {
    let b = CpuBackend::<f32>::new();
    let mut x = b.upload(&[1.0, -2.0, 3.0]).unwrap();
    assert_eq!(b.len(&x), 3);
    assert_eq!(b.sum_squares(&x), 14.0);
    b.scale(&mut x, 2.0);
    assert_eq!(b.download(&x).unwrap(), vec![2.0, -4.0, 6.0]);
    let mut y = b.alloc(3).unwrap();
    b.copy(&mut y, &x);
    b.add_assign(&mut y, &x);
    assert_eq!(b.download(&y).unwrap(), vec![4.0, -8.0, 12.0]);
    b.write(&mut y, &[7.0]).unwrap();
    assert_eq!(b.download(&y).unwrap(), vec![7.0, -8.0, 12.0]);
    assert!(b.write(&mut y, &[0.0; 4]).is_err());
    b.zero(&mut y);
    assert_eq!(b.download(&y).unwrap(), vec![0.0; 3]);
    let mut ids = b.upload_ids(&[1, 2, 3]).unwrap();
    b.write_ids(&mut ids, &[9]).unwrap();
    assert_eq!((ids.clone(), b.ids_len(&ids)), (vec![9, 2, 3], 3));
    // sum_squares over many chunks is exact for small integers.
    let big: Vec<f32> = (0..100_000).map(|i| (i % 7) as f32).collect();
    let want: f64 = big.iter().map(|&v| (v as f64) * (v as f64)).sum();
    assert_eq!(b.sum_squares(&b.upload(&big).unwrap()), want);
    assert!(b.name().starts_with("cpu f32"));
}

#[test]
fn f32_backend_conforms_to_f64_reference() {
    let devs = conformance::check_backend(&CpuBackend::<f32>::new(), 2e-5, 11).unwrap();
    assert!(devs.len() > 40);
    let worst = devs.iter().fold(0f64, |m, d| m.max(d.error));
    eprintln!(
        "f32 vs f64: worst deviation {worst:.2e} over {} outputs",
        devs.len()
    );
    // The f64 backend agrees with itself exactly.
    let devs = conformance::check_backend(&B64::new(), 0.0, 12).unwrap();
    assert!(devs.iter().all(|d| d.error == 0.0));
}

/// Runs a set of ops big enough to be split across threads (multi-threaded
/// GEMMs, several row blocks and tasks everywhere) and returns every output.
fn determinism_workload() -> Vec<Vec<u32>> {
    let b = CpuBackend::<f32>::new();
    let mut rng = Rng::new(13);
    let mut outs = Vec::new();
    let mut rnd = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();

    let d = Linear {
        rows: 300,
        in_dim: 192,
        out_dim: 320,
    };
    let (x, w, bias, dy) = (rnd(300 * 192), rnd(320 * 192), rnd(320), rnd(300 * 320));
    let mut y = vec![0f32; 300 * 320];
    b.matmul_forward(&mut y, &x, &w, Some(&bias), d);
    outs.push(bits(&y));
    let (mut dx, mut dw, mut db) = (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; 320]);
    b.matmul_backward(
        Some(&mut dx),
        WeightBias {
            weight: &mut dw,
            bias: Some(&mut db),
        },
        &dy,
        &x,
        &w,
        d,
    );
    outs.extend([bits(&dx), bits(&dw), bits(&db)]);

    for a in [
        Attention {
            batch: 2,
            seq: 130,
            width: 64,
            heads: 4,
        },
        Attention {
            batch: 64,
            seq: 8,
            width: 32,
            heads: 4,
        },
    ] {
        let qkv = rnd(a.rows() * 3 * a.width);
        let dy = rnd(a.rows() * a.width);
        let mut y = vec![0f32; a.rows() * a.width];
        let mut saved = vec![0f32; b.attention_saved_len(a)];
        b.attention_forward(&mut y, &mut saved, &qkv, a);
        let mut dq = vec![0f32; qkv.len()];
        b.attention_backward(&mut dq, &dy, &qkv, &saved, a);
        outs.extend([bits(&y), bits(&dq)]);
    }

    let (rows, width) = (1024, 96);
    let (x, g, bb, dy) = (rnd(rows * width), rnd(width), rnd(width), rnd(rows * width));
    let mut y = vec![0f32; rows * width];
    let (mut m, mut s) = (vec![0f32; rows], vec![0f32; rows]);
    b.layernorm_forward(
        &mut y,
        &mut m,
        &mut s,
        &x,
        WeightBias {
            weight: &g,
            bias: &bb,
        },
        LayerNorm {
            rows,
            width,
            eps: 1e-5,
        },
    );
    let (mut dx, mut dg, mut dbb) = (vec![0f32; x.len()], vec![0f32; width], vec![0f32; width]);
    b.layernorm_backward(
        &mut dx,
        WeightBias {
            weight: &mut dg,
            bias: &mut dbb,
        },
        &dy,
        NormSaved {
            inp: &x,
            weight: &g,
            mean: &m,
            rstd: &s,
        },
        LayerNorm {
            rows,
            width,
            eps: 1e-5,
        },
    );
    outs.extend([bits(&y), bits(&dx), bits(&dg), bits(&dbb)]);

    let (rows, vocab) = (600, 256);
    let logits = rnd(rows * vocab);
    let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 37) % 256).collect();
    let mask: Vec<f32> = (0..rows).map(|i| (i % 5 != 0) as u8 as f32).collect();
    let mut dl = vec![0f32; rows * vocab];
    let ce = b.cross_entropy(
        &logits,
        &targets,
        Some(&mask),
        Some(&mut dl),
        Logits {
            rows,
            classes: vocab,
        },
        1.0,
    );
    outs.extend([
        bits(&dl),
        vec![ce.loss.to_bits() as u32, (ce.loss.to_bits() >> 32) as u32],
    ]);

    let (rows, width) = (400, 200);
    let ids: Vec<u32> = (0..rows as u32).map(|i| (i * 7) % 13).collect();
    let mut dt = vec![0f32; 13 * width];
    b.embedding_backward(&mut dt, &rnd(rows * width), &ids, rows, width);
    outs.push(bits(&dt));
    let (mut dbias, gy) = (vec![0f32; width], rnd(rows * width));
    b.bias_backward(None, &mut dbias, &gy, rows, width);
    outs.push(bits(&dbias));
    let ss = b.sum_squares(&gy);
    outs.push(vec![ss.to_bits() as u32, (ss.to_bits() >> 32) as u32]);
    let mut ge = vec![0f32; gy.len()];
    b.gelu_forward(&mut ge, &gy, gy.len());
    outs.push(bits(&ge));
    outs
}

#[test]
fn results_are_deterministic_across_runs_and_thread_counts() {
    let first = determinism_workload();
    assert_eq!(first, determinism_workload(), "second run differs");
    // The baseline (SSE2) and AVX2 copies of the kernels agree bit for bit
    // with the widest ones, so a run can resume on a machine without
    // AVX-512 or AVX2.
    use super::cpu::simd::{set_widest, Simd};
    for narrower in [Simd::Avx2, Simd::Baseline] {
        set_widest(narrower);
        let other = determinism_workload();
        set_widest(Simd::Avx512);
        for (i, (a, b)) in first.iter().zip(&other).enumerate() {
            assert!(a == b, "output {i} differs with {narrower:?} kernels");
        }
    }
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let other = pool.install(determinism_workload);
        for (i, (a, b)) in first.iter().zip(&other).enumerate() {
            assert!(a == b, "output {i} differs with {threads} threads");
        }
    }
}

/// Throughput of the main kernels (run with `cargo test --release -p
/// kilobyte-trainer --lib bench_cpu -- --ignored --nocapture`).
#[test]
#[ignore]
fn bench_cpu_kernels() {
    use std::time::Instant;
    let b = CpuBackend::<f32>::new();
    // Best of several runs: the machine may be shared.
    let time = |f: &mut dyn FnMut()| {
        f();
        (0..10)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let d = Linear {
        rows: 2048,
        in_dim: 512,
        out_dim: 512,
    };
    let x = vec![0.5f32; 2048 * 512];
    let w = vec![0.25f32; 512 * 512];
    let mut y = vec![0f32; 2048 * 512];
    let flops = 2.0 * 2048.0 * 512.0 * 512.0;
    let s = time(&mut || b.matmul_forward(&mut y, &x, &w, None, d));
    eprintln!(
        "matmul forward 2048x512x512: {:.1} GFLOP/s",
        flops / s / 1e9
    );
    let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; w.len()]);
    let s = time(&mut || {
        b.matmul_backward(
            Some(&mut dx),
            WeightBias {
                weight: &mut dw,
                bias: None,
            },
            &y,
            &x,
            &w,
            d,
        )
    });
    eprintln!(
        "matmul backward 2048x512x512: {:.1} GFLOP/s",
        2.0 * flops / s / 1e9
    );
    for a in [
        Attention {
            batch: 8,
            seq: 256,
            width: 512,
            heads: 8,
        },
        Attention {
            batch: 2048,
            seq: 8,
            width: 256,
            heads: 4,
        },
    ] {
        let qkv: Vec<f32> = (0..a.rows() * 3 * a.width)
            .map(|i| ((i % 17) as f32) * 0.1)
            .collect();
        let mut y = vec![0f32; a.rows() * a.width];
        let mut saved = vec![0f32; b.attention_saved_len(a)];
        let fs = time(&mut || b.attention_forward(&mut y, &mut saved, &qkv, a));
        let mut dq = vec![0f32; qkv.len()];
        let bs = time(&mut || b.attention_backward(&mut dq, &y, &qkv, &saved, a));
        eprintln!(
            "attention {a:?}: forward {:.2} ms, backward {:.2} ms",
            fs * 1e3,
            bs * 1e3
        );
    }
    let n = 2048 * 2048;
    let xs: Vec<f32> = (0..n).map(|i| (i % 100) as f32 * 0.05 - 2.5).collect();
    let mut ys = vec![0f32; n];
    let s = time(&mut || b.gelu_forward(&mut ys, &xs, n));
    eprintln!("gelu forward: {:.2} ns/element", s / n as f64 * 1e9);
    let mut ds = vec![0f32; n];
    let s = time(&mut || b.gelu_backward(&mut ds, &xs, &ys, n));
    eprintln!("gelu backward: {:.2} ns/element", s / n as f64 * 1e9);
    let (rows, width) = (8192, 512);
    let lw = vec![1f32; width];
    let (mut m, mut r) = (vec![0f32; rows], vec![0f32; rows]);
    let s = time(&mut || {
        b.layernorm_forward(
            &mut ys,
            &mut m,
            &mut r,
            &xs,
            WeightBias {
                weight: &lw,
                bias: &lw,
            },
            LayerNorm {
                rows,
                width,
                eps: 1e-5,
            },
        )
    });
    eprintln!("layernorm forward 8192x512: {:.2} ms", s * 1e3);
    let (mut dw, mut db) = (vec![0f32; width], vec![0f32; width]);
    let s = time(&mut || {
        b.layernorm_backward(
            &mut ds,
            WeightBias {
                weight: &mut dw,
                bias: &mut db,
            },
            &xs,
            NormSaved {
                inp: &xs,
                weight: &lw,
                mean: &m,
                rstd: &r,
            },
            LayerNorm {
                rows,
                width,
                eps: 1e-5,
            },
        )
    });
    eprintln!("layernorm backward 8192x512: {:.2} ms", s * 1e3);
    let (rows, vocab) = (16384, 256);
    let targets: Vec<u32> = (0..rows as u32).map(|i| i % 256).collect();
    let s = time(&mut || {
        b.cross_entropy(
            &xs,
            &targets,
            None,
            Some(&mut ys),
            Logits {
                rows,
                classes: vocab,
            },
            1.0,
        );
    });
    eprintln!("cross-entropy 16384x256 with gradient: {:.2} ms", s * 1e3);
}
