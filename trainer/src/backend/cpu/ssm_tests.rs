//! Finite-difference gradient checks (f64, central differences) and
//! agreement tests for the BiGS SSM.

use super::ssm::*;
use crate::backend::shapes::{Direction, SsmConv, SsmDims, SsmFilterGrads, SsmParams, SsmShape};
use kilobyte_runtime::rng::Rng;

const DIMS: SsmDims = SsmDims {
    kernels: 2,
    modes: 3,
};
/// Two sequences of unequal real length, so padding and the backward
/// direction's start position are exercised.
const SHAPE: SsmShape = SsmShape {
    batch: 2,
    seq: 7,
    width: 4,
    kernels: 2,
};
const LENGTHS: [usize; 2] = [7, 4];
const EPS: f64 = 1e-5;

/// The parameters of one SSM, as the trainer stores them.
#[derive(Clone)]
struct Params {
    a: Vec<f64>,
    w: Vec<f64>,
    c: Vec<f64>,
    log_dt: Vec<f64>,
    d: Vec<f64>,
}

impl Params {
    /// Like `init_ssm`, but with larger steps (dt in [0.1, 0.5]) so that a
    /// 7-step kernel is far from its small-dt limit and every term matters.
    fn random(dims: SsmDims, rng: &mut Rng) -> Self {
        let kn = dims.kernels * dims.modes;
        let a = (0..kn).map(|_| 0.5f64.ln() + 0.3 * rng.normal()).collect();
        let w = (0..kn)
            .map(|i| std::f64::consts::PI * (i % dims.modes) as f64)
            .collect();
        let c = (0..2 * kn).map(|_| 0.5 * rng.normal()).collect();
        let d = (0..dims.kernels).map(|_| rng.normal()).collect();
        let (lo, hi) = (0.1f64.ln(), 0.5f64.ln());
        let log_dt = (0..dims.kernels)
            .map(|_| lo + rng.next_f64() * (hi - lo))
            .collect();
        Params { a, w, c, log_dt, d }
    }

    fn kernel(&self, len: usize) -> Vec<f64> {
        let mut k = vec![0.0; DIMS.kernels * len];
        ssm_kernel(DIMS, len, &self.a, &self.w, &self.c, &self.log_dt, &mut k);
        k
    }

    /// Every parameter as a mutable slice, with its name, for perturbation.
    fn fields(&mut self) -> [(&'static str, &mut Vec<f64>); 5] {
        [
            ("a", &mut self.a),
            ("w", &mut self.w),
            ("c", &mut self.c),
            ("log_dt", &mut self.log_dt),
            ("d", &mut self.d),
        ]
    }
}

fn random_vec(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn assert_close(what: &str, analytic: f64, numeric: f64) {
    let err = (analytic - numeric).abs() / (analytic.abs() + numeric.abs()).max(1e-6);
    assert!(
        err < 1e-6,
        "{what}: analytic {analytic:e} vs numeric {numeric:e} (rel err {err:e})"
    );
}

/// Central difference of `f` with respect to `x[i]`.
fn numeric(x: &mut [f64], i: usize, mut f: impl FnMut(&[f64]) -> f64) -> f64 {
    let x0 = x[i];
    x[i] = x0 + EPS;
    let plus = f(x);
    x[i] = x0 - EPS;
    let minus = f(x);
    x[i] = x0;
    (plus - minus) / (2.0 * EPS)
}

/// The scalar loss `sum(g * y)` of the whole SSM, end to end from the parameters.
fn ssm_loss(p: &Params, dir: Direction, u: &[f64], g: &[f64]) -> f64 {
    let mut y = vec![0.0; u.len()];
    ssm_forward(SHAPE, dir, &LENGTHS, u, &p.kernel(SHAPE.seq), &p.d, &mut y);
    dot(g, &y)
}

/// Checks `grads` (in `Params::fields` order, possibly fewer) of `loss`
/// against central differences in every parameter element.
fn check_param_grads(what: &str, p: &Params, grads: &[Vec<f64>], loss: impl Fn(&Params) -> f64) {
    for (f, grad) in grads.iter().enumerate() {
        for (i, &analytic) in grad.iter().enumerate() {
            let mut q = p.clone();
            let at = |q: &mut Params, x: f64| {
                q.fields()[f].1[i] = x;
                loss(q)
            };
            let x0 = p.clone().fields()[f].1[i];
            let num = (at(&mut q, x0 + EPS) - at(&mut q, x0 - EPS)) / (2.0 * EPS);
            let name = q.fields()[f].0;
            assert_close(&format!("{what} d{name}[{i}]"), analytic, num);
        }
    }
}

#[test]
fn kernel_gradient_matches_finite_differences() {
    let mut rng = Rng::new(1);
    let p = Params::random(DIMS, &mut rng);
    let len = 9;
    let g = random_vec(&mut rng, DIMS.kernels * len);
    let kn = DIMS.kernels * DIMS.modes;
    let mut grads = [
        vec![0.0; kn],
        vec![0.0; kn],
        vec![0.0; 2 * kn],
        vec![0.0; 2],
    ];
    let [da, dw, dc, dlog_dt] = &mut grads;
    ssm_kernel_backward(
        DIMS,
        len,
        SsmParams {
            a: &p.a,
            w: &p.w,
            c: &p.c,
            log_dt: &p.log_dt,
        },
        &g,
        SsmParams {
            a: da,
            w: dw,
            c: dc,
            log_dt: dlog_dt,
        },
    );
    check_param_grads("kernel", &p, &grads, |p| dot(&g, &p.kernel(len)));

    // Backward ops add into their outputs: a second call doubles the gradient.
    let mut twice = grads.clone();
    let [da, dw, dc, dlog_dt] = &mut twice;
    ssm_kernel_backward(
        DIMS,
        len,
        SsmParams {
            a: &p.a,
            w: &p.w,
            c: &p.c,
            log_dt: &p.log_dt,
        },
        &g,
        SsmParams {
            a: da,
            w: dw,
            c: dc,
            log_dt: dlog_dt,
        },
    );
    for (t, g) in twice.iter().zip(&grads) {
        for (t, g) in t.iter().zip(g) {
            assert!((t - 2.0 * g).abs() <= 1e-12 * g.abs());
        }
    }
}

#[test]
fn ssm_gradients_match_finite_differences_both_directions() {
    for dir in [Direction::Forward, Direction::Backward] {
        let mut rng = Rng::new(2);
        let p = Params::random(DIMS, &mut rng);
        let rows = SHAPE.batch * SHAPE.seq;
        let u = random_vec(&mut rng, rows * SHAPE.width);
        let g = random_vec(&mut rng, rows * SHAPE.width);
        let kernel = p.kernel(SHAPE.seq);

        let mut du = vec![0.0; u.len()];
        let mut dkernel = vec![0.0; kernel.len()];
        let mut dd = vec![0.0; DIMS.kernels];
        ssm_backward(
            SHAPE,
            dir,
            SsmConv {
                u: &u,
                kernel: &kernel,
                d: &p.d,
                lengths: &LENGTHS,
            },
            &g,
            &mut du,
            SsmFilterGrads {
                kernel: &mut dkernel,
                d: &mut dd,
            },
        );

        // Inputs: pad rows get no gradient (they are absent).
        let mut x = u.clone();
        for (i, &analytic) in du.iter().enumerate() {
            let num = numeric(&mut x, i, |x| ssm_loss(&p, dir, x, &g));
            assert_close(&format!("{dir:?} du[{i}]"), analytic, num);
        }

        // The kernel itself, as an input of ssm_forward.
        let mut k = kernel.clone();
        for (i, &analytic) in dkernel.iter().enumerate() {
            let num = numeric(&mut k, i, |k| {
                let mut y = vec![0.0; u.len()];
                ssm_forward(SHAPE, dir, &LENGTHS, &u, k, &p.d, &mut y);
                dot(&g, &y)
            });
            assert_close(&format!("{dir:?} dK[{i}]"), analytic, num);
        }

        // The SSM parameters end to end, through ssm_kernel_backward.
        let kn = DIMS.kernels * DIMS.modes;
        let mut grads = [
            vec![0.0; kn],
            vec![0.0; kn],
            vec![0.0; 2 * kn],
            vec![0.0; DIMS.kernels],
            dd,
        ];
        {
            let [da, dw, dc, dlog_dt, _] = &mut grads;
            ssm_kernel_backward(
                DIMS,
                SHAPE.seq,
                SsmParams {
                    a: &p.a,
                    w: &p.w,
                    c: &p.c,
                    log_dt: &p.log_dt,
                },
                &dkernel,
                SsmParams {
                    a: da,
                    w: dw,
                    c: dc,
                    log_dt: dlog_dt,
                },
            );
        }
        check_param_grads(&format!("{dir:?}"), &p, &grads, |p| {
            ssm_loss(p, dir, &u, &g)
        });
    }
}

#[test]
fn convolution_equals_recurrence() {
    for dir in [Direction::Forward, Direction::Backward] {
        let mut rng = Rng::new(3);
        let p = Params::random(DIMS, &mut rng);
        // Longer sequences than the gradient checks: the recurrence and the
        // kernel's powers of Abar accumulate rounding differently.
        let s = SsmShape { seq: 64, ..SHAPE };
        let lengths = [64, 37];
        let u = random_vec(&mut rng, s.batch * s.seq * s.width);
        let mut conv = vec![f64::NAN; u.len()];
        let mut rec = vec![f64::NAN; u.len()];
        ssm_forward(s, dir, &lengths, &u, &p.kernel(s.seq), &p.d, &mut conv);
        ssm_recurrence(
            s, DIMS, dir, &lengths, &p.a, &p.w, &p.c, &p.log_dt, &p.d, &u, &mut rec,
        );
        for (i, (x, y)) in conv.iter().zip(&rec).enumerate() {
            assert!(
                (x - y).abs() < 1e-10,
                "{dir:?} [{i}]: conv {x} vs recurrence {y}"
            );
        }
    }
}

#[test]
fn padding_does_not_leak() {
    for dir in [Direction::Forward, Direction::Backward] {
        let mut rng = Rng::new(4);
        let p = Params::random(DIMS, &mut rng);
        let w = SHAPE.width;
        let mut u = random_vec(&mut rng, SHAPE.batch * SHAPE.seq * w);
        let dy = random_vec(&mut rng, u.len());
        // Garbage at the pad rows of the short sequence must change nothing.
        let pad_start = (SHAPE.seq + LENGTHS[1]) * w;
        u[pad_start..].fill(1e6);
        let mut y = vec![f64::NAN; u.len()];
        let kernel = p.kernel(SHAPE.seq);
        ssm_forward(SHAPE, dir, &LENGTHS, &u, &kernel, &p.d, &mut y);
        assert!(y[pad_start..].iter().all(|&v| v == 0.0));

        // The short sequence on its own, unpadded.
        let alone = SsmShape {
            batch: 1,
            seq: LENGTHS[1],
            ..SHAPE
        };
        let u1 = &u[SHAPE.seq * w..pad_start];
        let dy1 = &dy[SHAPE.seq * w..pad_start];
        let kernel1 = p.kernel(alone.seq);
        let mut y1 = vec![0.0; u1.len()];
        ssm_forward(alone, dir, &LENGTHS[1..], u1, &kernel1, &p.d, &mut y1);
        assert_eq!(&y[SHAPE.seq * w..pad_start], &y1[..], "{dir:?} forward");

        // Backward: the padded batch's gradients are the sum of each
        // sequence's own, and pad rows of du are left as they were.
        let mut du = vec![0.5; u.len()];
        let mut dk = vec![0.0; kernel.len()];
        let mut dd = vec![0.0; DIMS.kernels];
        ssm_backward(
            SHAPE,
            dir,
            SsmConv {
                u: &u,
                kernel: &kernel,
                d: &p.d,
                lengths: &LENGTHS,
            },
            &dy,
            &mut du,
            SsmFilterGrads {
                kernel: &mut dk,
                d: &mut dd,
            },
        );
        assert!(du[pad_start..].iter().all(|&v| v == 0.5));
        let mut du1 = vec![0.5; u1.len()];
        let mut dk1 = vec![0.0; kernel1.len()];
        let mut dd1 = vec![0.0; DIMS.kernels];
        ssm_backward(
            alone,
            dir,
            SsmConv {
                u: u1,
                kernel: &kernel1,
                d: &p.d,
                lengths: &LENGTHS[1..],
            },
            dy1,
            &mut du1,
            SsmFilterGrads {
                kernel: &mut dk1,
                d: &mut dd1,
            },
        );
        assert_eq!(&du[SHAPE.seq * w..pad_start], &du1[..], "{dir:?} du");

        let first = SsmShape { batch: 1, ..SHAPE };
        let mut du0 = vec![0.0; SHAPE.seq * w];
        let mut dk0 = vec![0.0; kernel.len()];
        let mut dd0 = vec![0.0; DIMS.kernels];
        ssm_backward(
            first,
            dir,
            SsmConv {
                u: &u,
                kernel: &kernel,
                d: &p.d,
                lengths: &LENGTHS,
            },
            &dy,
            &mut du0,
            SsmFilterGrads {
                kernel: &mut dk0,
                d: &mut dd0,
            },
        );
        for k in 0..DIMS.kernels {
            let l1 = alone.seq;
            for j in 0..SHAPE.seq {
                let extra = if j < l1 { dk1[k * l1 + j] } else { 0.0 };
                let want = dk0[k * SHAPE.seq + j] + extra;
                assert!((dk[k * SHAPE.seq + j] - want).abs() < 1e-12, "{dir:?} dK");
            }
            assert!((dd[k] - (dd0[k] + dd1[k])).abs() < 1e-12, "{dir:?} dD");
        }
    }
}

#[test]
fn f32_matches_f64() {
    let mut rng = Rng::new(5);
    let p = Params::random(DIMS, &mut rng);
    let u = random_vec(&mut rng, SHAPE.batch * SHAPE.seq * SHAPE.width);
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let mut k32 = vec![0f32; DIMS.kernels * SHAPE.seq];
    ssm_kernel(
        DIMS,
        SHAPE.seq,
        &f(&p.a),
        &f(&p.w),
        &f(&p.c),
        &f(&p.log_dt),
        &mut k32,
    );
    let mut y32 = vec![0f32; u.len()];
    ssm_forward(
        SHAPE,
        Direction::Backward,
        &LENGTHS,
        &f(&u),
        &k32,
        &f(&p.d),
        &mut y32,
    );
    let mut y64 = vec![0.0; u.len()];
    let kernel = p.kernel(SHAPE.seq);
    ssm_forward(
        SHAPE,
        Direction::Backward,
        &LENGTHS,
        &u,
        &kernel,
        &p.d,
        &mut y64,
    );
    for (a, b) in y32.iter().zip(&y64) {
        assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}
