//! Backend conformance: runs every op of a backend on random inputs and
//! compares forward outputs and (accumulated) gradients with the f64 CPU
//! backend, whose ops the unit tests check against naive loops and finite
//! differences. The CPU f32 backend passes it in the unit tests; a CUDA
//! backend runs the same function in its own tests.

use super::cpu::CpuBackend;
use super::shapes::{
    AdamWStep, Attention, Direction, LayerNorm, Linear, Logits, NormSaved, SsmConv, SsmDims,
    SsmFilterGrads, SsmParams, SsmShape, WeightBias,
};
use super::Backend;
use anyhow::{ensure, Result};
use kilobyte_runtime::rng::Rng;

type Ref = CpuBackend<f64>;

/// One compared output: its name and its error, `max |got - want|` divided
/// by `max(max |want|, 1)`.
#[derive(Clone, Debug)]
pub struct Deviation {
    pub name: String,
    pub error: f64,
}

struct Harness<'a, B: Backend> {
    b: &'a B,
    r: Ref,
    rng: Rng,
    out: Vec<Deviation>,
}

impl<B: Backend> Harness<'_, B> {
    /// Random values representable in f32 (both sides see the same numbers).
    fn host(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| (self.rng.normal() * scale) as f32 as f64)
            .collect()
    }
    /// The same random tensor on both backends.
    fn pair(&mut self, n: usize, scale: f64) -> Result<(B::Buf, Vec<f64>)> {
        let h = self.host(n, scale);
        Ok((self.b.upload_f64(&h)?, h))
    }
    fn ids(&mut self, n: usize, below: u64) -> Result<(B::Ids, Vec<u32>)> {
        let h: Vec<u32> = (0..n).map(|_| self.rng.below(below) as u32).collect();
        Ok((self.b.upload_ids(&h)?, h))
    }
    fn compare(&mut self, name: &str, got: &B::Buf, want: &[f64]) -> Result<()> {
        let got = self.b.download_f64(got)?;
        ensure!(got.len() >= want.len(), "{name}: output too short");
        let scale = want.iter().fold(1f64, |m, w| m.max(w.abs()));
        let err = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f64, f64::max)
            / scale;
        let err = if got[..want.len()].iter().all(|g| g.is_finite()) {
            err
        } else {
            f64::INFINITY
        };
        self.out.push(Deviation {
            name: name.to_string(),
            error: err,
        });
        Ok(())
    }
}

/// Runs every op on `backend` and on the f64 CPU reference; returns each
/// output's deviation, and an error naming the first that exceeds `tol`.
pub fn check_backend<B: Backend>(backend: &B, tol: f64, seed: u64) -> Result<Vec<Deviation>> {
    let mut h = Harness {
        b: backend,
        r: Ref::new(),
        rng: Rng::new(seed),
        out: Vec::new(),
    };
    let r = h.r.clone();

    // matmul with bias, odd sizes; gradients accumulate onto random values.
    let d = Linear {
        rows: 37,
        in_dim: 29,
        out_dim: 19,
    };
    let (x, xh) = h.pair(d.rows * d.in_dim, 1.0)?;
    let (w, wh) = h.pair(d.out_dim * d.in_dim, 0.3)?;
    let (bias, bh) = h.pair(d.out_dim, 0.3)?;
    let (dy, dyh) = h.pair(d.rows * d.out_dim, 1.0)?;
    let mut y = backend.alloc(d.rows * d.out_dim)?;
    let mut yh = vec![0.0; d.rows * d.out_dim];
    backend.matmul_forward(&mut y, &x, &w, Some(&bias), d);
    r.matmul_forward(&mut yh, &xh, &wh, Some(&bh), d);
    h.compare("matmul forward", &y, &yh)?;
    let (mut dx, mut dxh) = h.pair(d.rows * d.in_dim, 1.0)?;
    let (mut dw, mut dwh) = h.pair(d.out_dim * d.in_dim, 1.0)?;
    let (mut db, mut dbh) = h.pair(d.out_dim, 1.0)?;
    backend.matmul_backward(
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
    r.matmul_backward(
        Some(&mut dxh),
        WeightBias {
            weight: &mut dwh,
            bias: Some(&mut dbh),
        },
        &dyh,
        &xh,
        &wh,
        d,
    );
    h.compare("matmul dinp", &dx, &dxh)?;
    h.compare("matmul dweight", &dw, &dwh)?;
    h.compare("matmul dbias", &db, &dbh)?;

    // layernorm
    let (rows, width) = (23, 37);
    let (x, xh) = h.pair(rows * width, 2.0)?;
    let (g, gh) = h.pair(width, 1.0)?;
    let (bb, bbh) = h.pair(width, 1.0)?;
    let mut y = backend.alloc(rows * width)?;
    let mut mean = backend.alloc(rows)?;
    let mut rstd = backend.alloc(rows)?;
    let mut yh = vec![0.0; rows * width];
    let (mut meanh, mut rstdh) = (vec![0.0; rows], vec![0.0; rows]);
    backend.layernorm_forward(
        &mut y,
        &mut mean,
        &mut rstd,
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
    r.layernorm_forward(
        &mut yh,
        &mut meanh,
        &mut rstdh,
        &xh,
        WeightBias {
            weight: &gh,
            bias: &bbh,
        },
        LayerNorm {
            rows,
            width,
            eps: 1e-5,
        },
    );
    h.compare("layernorm forward", &y, &yh)?;
    let (dy, dyh) = h.pair(rows * width, 1.0)?;
    let (mut dx, mut dxh) = h.pair(rows * width, 1.0)?;
    let (mut dg, mut dgh) = h.pair(width, 1.0)?;
    let (mut dbb, mut dbbh) = h.pair(width, 1.0)?;
    backend.layernorm_backward(
        &mut dx,
        WeightBias {
            weight: &mut dg,
            bias: &mut dbb,
        },
        &dy,
        NormSaved {
            inp: &x,
            weight: &g,
            mean: &mean,
            rstd: &rstd,
        },
        LayerNorm {
            rows,
            width,
            eps: 1e-5,
        },
    );
    r.layernorm_backward(
        &mut dxh,
        WeightBias {
            weight: &mut dgh,
            bias: &mut dbbh,
        },
        &dyh,
        NormSaved {
            inp: &xh,
            weight: &gh,
            mean: &meanh,
            rstd: &rstdh,
        },
        LayerNorm {
            rows,
            width,
            eps: 1e-5,
        },
    );
    h.compare("layernorm dinp", &dx, &dxh)?;
    h.compare("layernorm dweight", &dg, &dgh)?;
    h.compare("layernorm dbias", &dbb, &dbbh)?;

    // elementwise
    let n = 1000;
    let (a, ah) = h.pair(n, 2.0)?;
    let (b2, b2h) = h.pair(n, 2.0)?;
    let (dy, dyh) = h.pair(n, 1.0)?;
    let mut y = backend.alloc(n)?;
    let mut yh = vec![0.0; n];
    backend.gelu_forward(&mut y, &a, n);
    r.gelu_forward(&mut yh, &ah, n);
    h.compare("gelu forward", &y, &yh)?;
    let (mut da, mut dah) = h.pair(n, 1.0)?;
    backend.gelu_backward(&mut da, &a, &dy, n);
    r.gelu_backward(&mut dah, &ah, &dyh, n);
    h.compare("gelu backward", &da, &dah)?;
    backend.tanh_forward(&mut y, &a, n);
    r.tanh_forward(&mut yh, &ah, n);
    h.compare("tanh forward", &y, &yh)?;
    backend.tanh_backward(&mut da, &y, &dy, n);
    r.tanh_backward(&mut dah, &yh, &dyh, n);
    h.compare("tanh backward", &da, &dah)?;
    backend.add_forward(&mut y, &a, &b2, n);
    r.add_forward(&mut yh, &ah, &b2h, n);
    h.compare("add forward", &y, &yh)?;
    let (mut db2, mut db2h) = h.pair(n, 1.0)?;
    backend.add_backward(&mut da, &mut db2, &dy, n);
    r.add_backward(&mut dah, &mut db2h, &dyh, n);
    h.compare("add backward a", &da, &dah)?;
    h.compare("add backward b", &db2, &db2h)?;
    backend.mul_forward(&mut y, &a, &b2, n);
    r.mul_forward(&mut yh, &ah, &b2h, n);
    h.compare("mul forward", &y, &yh)?;
    backend.mul_backward(&mut da, &mut db2, &dy, &a, &b2, n);
    r.mul_backward(&mut dah, &mut db2h, &dyh, &ah, &b2h, n);
    h.compare("mul backward a", &da, &dah)?;
    h.compare("mul backward b", &db2, &db2h)?;
    let (rows, width) = (40, 25);
    let (bias, bh) = h.pair(width, 1.0)?;
    backend.bias_forward(&mut y, &a, &bias, rows, width);
    r.bias_forward(&mut yh, &ah, &bh, rows, width);
    h.compare("bias forward", &y, &yh)?;
    let (mut dbias, mut dbiash) = h.pair(width, 1.0)?;
    backend.bias_backward(Some(&mut da), &mut dbias, &dy, rows, width);
    r.bias_backward(Some(&mut dah), &mut dbiash, &dyh, rows, width);
    h.compare("bias backward dinp", &da, &dah)?;
    h.compare("bias backward dbias", &dbias, &dbiash)?;

    // embedding (repeated ids), accumulate mode, shift
    let (vocab, width, rows) = (11, 70, 50);
    let (table, tableh) = h.pair(vocab * width, 1.0)?;
    let (ids, idsh) = h.ids(rows, vocab as u64)?;
    let (mut y, mut yh) = h.pair(rows * width, 1.0)?;
    backend.embedding_forward(&mut y, &table, &ids, rows, width, true);
    r.embedding_forward(&mut yh, &tableh, &idsh, rows, width, true);
    h.compare("embedding forward (accumulate)", &y, &yh)?;
    backend.embedding_forward(&mut y, &table, &ids, rows, width, false);
    r.embedding_forward(&mut yh, &tableh, &idsh, rows, width, false);
    h.compare("embedding forward", &y, &yh)?;
    let (dy, dyh) = h.pair(rows * width, 1.0)?;
    let (mut dt, mut dth) = h.pair(vocab * width, 1.0)?;
    backend.embedding_backward(&mut dt, &dy, &ids, rows, width);
    r.embedding_backward(&mut dth, &dyh, &idsh, rows, width);
    h.compare("embedding backward", &dt, &dth)?;
    let (seqs, len) = (5, 10);
    let (pad, padh) = h.pair(width, 1.0)?;
    backend.shift_forward(&mut y, &dy, &pad, seqs, len, width);
    r.shift_forward(&mut yh, &dyh, &padh, seqs, len, width);
    h.compare("shift forward", &y, &yh)?;
    let (mut dpad, mut dpadh) = h.pair(width, 1.0)?;
    let (mut dx, mut dxh) = h.pair(rows * width, 1.0)?;
    backend.shift_backward(&mut dx, &mut dpad, &y, seqs, len, width);
    r.shift_backward(&mut dxh, &mut dpadh, &yh, seqs, len, width);
    h.compare("shift backward dinp", &dx, &dxh)?;
    h.compare("shift backward dpad", &dpad, &dpadh)?;

    // attention: short sequences (local model) and long ones (global model)
    for (name, a) in [
        (
            "attention (local shape)",
            Attention {
                batch: 12,
                seq: 4,
                width: 24,
                heads: 3,
            },
        ),
        (
            "attention (global shape)",
            Attention {
                batch: 2,
                seq: 83,
                width: 32,
                heads: 2,
            },
        ),
    ] {
        let rows = a.rows();
        let (qkv, qkvh) = h.pair(rows * 3 * a.width, 1.0)?;
        let mut y = backend.alloc(rows * a.width)?;
        let mut saved = backend.alloc(backend.attention_saved_len(a))?;
        let mut yh = vec![0.0; rows * a.width];
        let mut savedh = vec![0.0; r.attention_saved_len(a)];
        backend.attention_forward(&mut y, &mut saved, &qkv, a);
        r.attention_forward(&mut yh, &mut savedh, &qkvh, a);
        h.compare(&format!("{name} forward"), &y, &yh)?;
        let (dy, dyh) = h.pair(rows * a.width, 1.0)?;
        let (mut dq, mut dqh) = h.pair(rows * 3 * a.width, 1.0)?;
        backend.attention_backward(&mut dq, &dy, &qkv, &saved, a);
        r.attention_backward(&mut dqh, &dyh, &qkvh, &savedh, a);
        h.compare(&format!("{name} backward"), &dq, &dqh)?;
    }

    // mean pool with a mask (one sequence entirely masked)
    let (batch, seq, width) = (3, 7, 9);
    let (x, xh) = h.pair(batch * seq * width, 1.0)?;
    let maskh: Vec<f64> = (0..batch * seq)
        .map(|i| if i / seq == 2 || i % 3 == 1 { 0.0 } else { 1.0 })
        .collect();
    let mask = backend.upload_f64(&maskh)?;
    let mut y = backend.alloc(batch * width)?;
    let mut yh = vec![0.0; batch * width];
    backend.mean_pool_forward(&mut y, &x, &mask, batch, seq, width);
    r.mean_pool_forward(&mut yh, &xh, &maskh, batch, seq, width);
    h.compare("mean-pool forward", &y, &yh)?;
    let (dy, dyh) = h.pair(batch * width, 1.0)?;
    let (mut dx, mut dxh) = h.pair(batch * seq * width, 1.0)?;
    backend.mean_pool_backward(&mut dx, &dy, &mask, batch, seq, width);
    r.mean_pool_backward(&mut dxh, &dyh, &maskh, batch, seq, width);
    h.compare("mean-pool backward", &dx, &dxh)?;

    // cross-entropy, with and without a mask
    let (rows, vocab) = (70, 256);
    let (logits, logitsh) = h.pair(rows * vocab, 3.0)?;
    let (targets, targetsh) = h.ids(rows, vocab as u64)?;
    let maskh: Vec<f64> = (0..rows).map(|i| (i % 4 != 0) as u8 as f64).collect();
    let mask = backend.upload_f64(&maskh)?;
    for masked in [false, true] {
        let mut dl = backend.alloc(rows * vocab)?;
        let mut dlh = vec![0.0; rows * vocab];
        let (m, mh) = if masked {
            (Some(&mask), Some(&maskh))
        } else {
            (None, None)
        };
        let got = backend.cross_entropy(
            &logits,
            &targets,
            m,
            Some(&mut dl),
            Logits {
                rows,
                classes: vocab,
            },
            0.5,
        );
        let want = r.cross_entropy(
            &logitsh,
            &targetsh,
            mh,
            Some(&mut dlh),
            Logits {
                rows,
                classes: vocab,
            },
            0.5,
        );
        let err = (got.loss - want.loss).abs() / want.loss.abs().max(1.0);
        h.out.push(Deviation {
            name: format!("cross-entropy loss (mask: {masked})"),
            error: if got.count == want.count {
                err
            } else {
                f64::INFINITY
            },
        });
        h.compare(
            &format!("cross-entropy dlogits (mask: {masked})"),
            &dl,
            &dlh,
        )?;
    }

    // BiGS SSM: kernel generation, then the convolution in both directions
    // over a padded batch (lengths 7, 1 and the full 9).
    let dims = SsmDims {
        kernels: 2,
        modes: 3,
    };
    let len = 9;
    let km = dims.kernels * dims.modes;
    let (a, ah) = h.pair(km, 0.5)?;
    let (w, wh) = h.pair(km, 1.0)?;
    let (c, ch) = h.pair(2 * km, 1.0)?;
    let log_dt_h: Vec<f64> = (0..dims.kernels).map(|i| -2.0 - 0.5 * i as f64).collect();
    let log_dt = backend.upload_f64(&log_dt_h)?;
    let mut kern = backend.alloc(dims.kernels * len)?;
    let mut kernh = vec![0.0; dims.kernels * len];
    backend.ssm_kernel_forward(
        &mut kern,
        SsmParams {
            a: &a,
            w: &w,
            c: &c,
            log_dt: &log_dt,
        },
        dims,
        len,
    );
    r.ssm_kernel_forward(
        &mut kernh,
        SsmParams {
            a: &ah,
            w: &wh,
            c: &ch,
            log_dt: &log_dt_h,
        },
        dims,
        len,
    );
    h.compare("ssm kernel forward", &kern, &kernh)?;
    let (dk, dkh) = h.pair(dims.kernels * len, 1.0)?;
    let (mut da, mut dah) = h.pair(km, 1.0)?;
    let (mut dw, mut dwh) = h.pair(km, 1.0)?;
    let (mut dc, mut dch) = h.pair(2 * km, 1.0)?;
    let (mut ddt, mut ddth) = h.pair(dims.kernels, 1.0)?;
    backend.ssm_kernel_backward(
        SsmParams {
            a: &mut da,
            w: &mut dw,
            c: &mut dc,
            log_dt: &mut ddt,
        },
        &dk,
        SsmParams {
            a: &a,
            w: &w,
            c: &c,
            log_dt: &log_dt,
        },
        dims,
        len,
    );
    r.ssm_kernel_backward(
        SsmParams {
            a: &mut dah,
            w: &mut dwh,
            c: &mut dch,
            log_dt: &mut ddth,
        },
        &dkh,
        SsmParams {
            a: &ah,
            w: &wh,
            c: &ch,
            log_dt: &log_dt_h,
        },
        dims,
        len,
    );
    h.compare("ssm kernel da", &da, &dah)?;
    h.compare("ssm kernel dw", &dw, &dwh)?;
    h.compare("ssm kernel dc", &dc, &dch)?;
    h.compare("ssm kernel dlog_dt", &ddt, &ddth)?;
    let shape = SsmShape {
        batch: 3,
        seq: len,
        width: 6,
        kernels: dims.kernels,
    };
    let lengths_h = [7u32, 1, 9];
    let lengths = backend.upload_ids(&lengths_h)?;
    let lengths_r = r.upload_ids(&lengths_h)?;
    let n = shape.batch * shape.seq * shape.width;
    for dir in [Direction::Forward, Direction::Backward] {
        let (u, uh) = h.pair(n, 1.0)?;
        let (d, dh) = h.pair(dims.kernels, 1.0)?;
        let mut y = backend.alloc(n)?;
        let mut yh = vec![0.0; n];
        backend.ssm_conv_forward(
            &mut y,
            SsmConv {
                u: &u,
                kernel: &kern,
                d: &d,
                lengths: &lengths,
            },
            shape,
            dir,
        );
        r.ssm_conv_forward(
            &mut yh,
            SsmConv {
                u: &uh,
                kernel: &kernh,
                d: &dh,
                lengths: &lengths_r,
            },
            shape,
            dir,
        );
        h.compare(&format!("ssm conv forward ({dir:?})"), &y, &yh)?;
        let (dy, dyh) = h.pair(n, 1.0)?;
        let (mut du, mut duh) = h.pair(n, 1.0)?;
        let (mut dkern, mut dkernh) = h.pair(dims.kernels * len, 1.0)?;
        let (mut dd, mut ddh) = h.pair(dims.kernels, 1.0)?;
        backend.ssm_conv_backward(
            &mut du,
            SsmFilterGrads {
                kernel: &mut dkern,
                d: &mut dd,
            },
            &dy,
            SsmConv {
                u: &u,
                kernel: &kern,
                d: &d,
                lengths: &lengths,
            },
            shape,
            dir,
        );
        r.ssm_conv_backward(
            &mut duh,
            SsmFilterGrads {
                kernel: &mut dkernh,
                d: &mut ddh,
            },
            &dyh,
            SsmConv {
                u: &uh,
                kernel: &kernh,
                d: &dh,
                lengths: &lengths_r,
            },
            shape,
            dir,
        );
        h.compare(&format!("ssm conv du ({dir:?})"), &du, &duh)?;
        h.compare(&format!("ssm conv dkernel ({dir:?})"), &dkern, &dkernh)?;
        h.compare(&format!("ssm conv dd ({dir:?})"), &dd, &ddh)?;
    }

    // AdamW: three updates
    let n = 333;
    let (mut p, mut ph) = h.pair(n, 1.0)?;
    let (g, gh) = h.pair(n, 1.0)?;
    let (mut m, mut mh) = (backend.alloc(n)?, vec![0.0; n]);
    let (mut v, mut vh) = (backend.alloc(n)?, vec![0.0; n]);
    for step in 1..=3 {
        let s = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_scale: 0.5,
            step,
        };
        backend.adamw_update(&mut p, &g, &mut m, &mut v, &s);
        r.adamw_update(&mut ph, &gh, &mut mh, &mut vh, &s);
    }
    h.compare("adamw param", &p, &ph)?;
    h.compare("adamw m", &m, &mh)?;
    h.compare("adamw v", &v, &vh)?;
    let ss = backend.sum_squares(&g);
    let ssh = r.sum_squares(&gh);
    h.out.push(Deviation {
        name: "sum_squares".into(),
        error: (ss - ssh).abs() / ssh.max(1.0),
    });

    if let Some(bad) = h.out.iter().find(|d| d.error.is_nan() || d.error > tol) {
        anyhow::bail!(
            "{}: {} deviates from the f64 reference by {:e} (tolerance {tol:e})",
            backend.name(),
            bad.name,
            bad.error
        );
    }
    Ok(h.out)
}
