//! AdamW against a naive reference, clipping, decay masks, gradient
//! accumulation and state round trips.

use super::*;
use crate::backend::{Backend, CpuBackend, WeightBias};
use kilobyte_format::schema::Role;
use kilobyte_runtime::rng::Rng;

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// Textbook AdamW in f64 (PyTorch's formulation), one parameter tensor.
struct NaiveAdamW {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl NaiveAdamW {
    fn step(&mut self, p: &mut [f64], g: &[f64], lr: f64, wd: f64, c: &AdamWConfig) {
        self.t += 1;
        let (b1, b2) = (c.beta1 as f64, c.beta2 as f64);
        for i in 0..p.len() {
            p[i] *= 1.0 - lr * wd;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            let mhat = self.m[i] / (1.0 - b1.powi(self.t));
            let vhat = self.v[i] / (1.0 - b2.powi(self.t));
            p[i] -= lr * mhat / (vhat.sqrt() + c.eps as f64);
        }
    }
}

#[test]
fn matches_naive_adamw_with_decay_mask_and_clipping() {
    let b = CpuBackend::<f64>::new();
    let mut rng = Rng::new(21);
    let roles = [
        Role::Matrix,
        Role::Vector,
        Role::TokenEmbedding,
        Role::PositionEmbedding,
        Role::Ssm,
    ];
    let infos: Vec<ParamInfo> = roles
        .iter()
        .enumerate()
        .map(|(i, &r)| ParamInfo::new(3 + 2 * i, r))
        .collect();
    assert_eq!(
        infos.iter().map(|p| p.decay).collect::<Vec<_>>(),
        vec![true, false, true, false, false]
    );
    let config = AdamWConfig {
        grad_clip: 0.5,
        ..AdamWConfig::default()
    };
    let schedule = LrSchedule::new(1e-2, 2, 6);
    let mut opt = AdamW::new(&b, config, schedule, infos.clone()).unwrap();
    opt.set_lr_scale(4, 0.5);
    let mut params: Vec<Vec<f64>> = infos
        .iter()
        .map(|p| randn(&mut rng, p.len).iter().map(|&x| x as f64).collect())
        .collect();
    let mut want = params.clone();
    let mut naive: Vec<NaiveAdamW> = infos
        .iter()
        .map(|p| NaiveAdamW {
            m: vec![0.0; p.len],
            v: vec![0.0; p.len],
            t: 0,
        })
        .collect();
    let mut clipped = 0;
    for step in 0..8u64 {
        // Alternate large (clipped) and small (unclipped) gradients.
        let mag = if step % 2 == 0 { 3.0 } else { 0.01 };
        let grads: Vec<Vec<f64>> = infos
            .iter()
            .map(|p| {
                randn(&mut rng, p.len)
                    .iter()
                    .map(|&x| x as f64 * mag)
                    .collect()
            })
            .collect();
        let accum = 0.5; // two micro-batches' worth of summed gradient
        let stats = opt.step(&b, &mut params, &grads, accum as f32);
        let norm = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt() * accum;
        assert!((stats.grad_norm - norm).abs() < 1e-12 * norm.max(1.0));
        let clip = if norm > 0.5 { 0.5 / norm } else { 1.0 };
        clipped += (clip < 1.0) as u32;
        assert!((stats.clip_scale - clip).abs() < 1e-12);
        assert_eq!(stats.step, step + 1);
        assert!(!stats.skipped);
        let lr = schedule.lr(step);
        assert_eq!(stats.lr, lr);
        for (i, info) in infos.iter().enumerate() {
            let g: Vec<f64> = grads[i].iter().map(|g| g * accum * clip).collect();
            let wd = if info.decay { 0.1 } else { 0.0 };
            let plr = (lr * if i == 4 { 0.5 } else { 1.0 }) as f32 as f64;
            naive[i].step(&mut want[i], &g, plr, wd, &config);
        }
        for (p, w) in params.iter().zip(&want) {
            for (a, b) in p.iter().zip(w) {
                // Hyper-parameters pass through f32, the rest is f64.
                assert!((a - b).abs() < 1e-9, "step {step}: {a} vs {b}");
            }
        }
    }
    assert_eq!(clipped, 4);
    assert_eq!(opt.step_count(), 8);
}

#[test]
fn weight_decay_only_on_decayed_roles() {
    // Zero gradients: only decay moves the parameters.
    let b = CpuBackend::<f32>::new();
    let infos = vec![
        ParamInfo::new(4, Role::Matrix),
        ParamInfo::new(4, Role::Vector),
    ];
    let config = AdamWConfig::default();
    let mut opt = AdamW::new(&b, config, LrSchedule::constant(0.5), infos).unwrap();
    let mut params = vec![vec![1f32; 4], vec![1f32; 4]];
    let grads = vec![vec![0f32; 4], vec![0f32; 4]];
    opt.step(&b, &mut params, &grads, 1.0);
    assert_eq!(params[0], vec![1.0 - 0.5 * 0.1; 4]);
    assert_eq!(params[1], vec![1.0; 4]);
}

#[test]
fn non_finite_gradients_skip_the_update() {
    let b = CpuBackend::<f32>::new();
    let mut opt = AdamW::new(
        &b,
        AdamWConfig::default(),
        LrSchedule::constant(0.1),
        vec![ParamInfo::new(2, Role::Matrix)],
    )
    .unwrap();
    let mut params = vec![vec![1f32, 2.0]];
    let stats = opt.step(&b, &mut params, &[vec![f32::NAN, 0.0]], 1.0);
    assert!(stats.skipped);
    assert_eq!(params[0], vec![1.0, 2.0]);
    assert_eq!(opt.step_count(), 0);
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    // A linear layer's gradient on 8 rows equals the sum of its gradients on
    // two halves; with grad_scale 1/2 the update equals the one from the mean
    // gradient of the halves' losses.
    let b = CpuBackend::<f64>::new();
    let mut rng = Rng::new(22);
    let d = crate::backend::Linear {
        rows: 4,
        in_dim: 3,
        out_dim: 2,
    };
    let w0: Vec<f64> = randn(&mut rng, 6).iter().map(|&x| x as f64).collect();
    let xs: Vec<f64> = randn(&mut rng, 24).iter().map(|&x| x as f64).collect();
    let dys: Vec<f64> = randn(&mut rng, 16).iter().map(|&x| x as f64).collect();
    let run = |micro: usize| {
        let mut opt = AdamW::new(
            &b,
            AdamWConfig::default(),
            LrSchedule::constant(1e-2),
            vec![ParamInfo::new(6, Role::Matrix)],
        )
        .unwrap();
        let mut params = vec![w0.clone()];
        let mut grads = vec![b.alloc(6).unwrap()];
        for _ in 0..3 {
            AdamW::zero_grads(&b, &mut grads);
            let rows = 8 / micro;
            for k in 0..micro {
                let dl = crate::backend::Linear { rows, ..d };
                let x = xs[k * rows * 3..][..rows * 3].to_vec();
                // Each micro-batch's loss is a mean over its rows.
                let dy: Vec<f64> = dys[k * rows * 2..][..rows * 2]
                    .iter()
                    .map(|v| v / rows as f64)
                    .collect();
                b.matmul_backward(
                    None,
                    WeightBias {
                        weight: &mut grads[0],
                        bias: None,
                    },
                    &dy,
                    &x,
                    &params[0],
                    dl,
                );
            }
            opt.step(&b, &mut params, &grads, 1.0 / micro as f32);
        }
        params.remove(0)
    };
    let one = run(1);
    let two = run(2);
    for (a, c) in one.iter().zip(&two) {
        assert!((a - c).abs() < 1e-12, "{a} vs {c}");
    }
}

#[test]
fn state_round_trip_resumes_bit_identically() {
    let b = CpuBackend::<f32>::new();
    let mut rng = Rng::new(23);
    let infos = vec![
        ParamInfo::new(50, Role::Matrix),
        ParamInfo::new(7, Role::Vector),
    ];
    let schedule = LrSchedule::new(1e-2, 3, 10);
    let new_opt = || AdamW::new(&b, AdamWConfig::default(), schedule, infos.clone()).unwrap();
    let grads: Vec<Vec<Vec<f32>>> = (0..6)
        .map(|_| vec![randn(&mut rng, 50), randn(&mut rng, 7)])
        .collect();
    let start = vec![randn(&mut rng, 50), randn(&mut rng, 7)];

    let mut straight = new_opt();
    let mut p1 = start.clone();
    for g in &grads {
        straight.step(&b, &mut p1, g, 1.0);
    }

    let mut first = new_opt();
    let mut p2 = start.clone();
    for g in &grads[..3] {
        first.step(&b, &mut p2, g, 1.0);
    }
    let state = first.state(&b).unwrap();
    assert_eq!(state.step, 3);
    assert_eq!(
        (state.m.len(), state.m[0].len(), state.v[1].len()),
        (2, 50, 7)
    );
    drop(first);
    let mut resumed = new_opt();
    resumed.load_state(&b, &state).unwrap();
    for g in &grads[3..] {
        resumed.step(&b, &mut p2, g, 1.0);
    }
    assert_eq!(p1, p2);
    assert_eq!(resumed.state(&b).unwrap(), straight.state(&b).unwrap());

    let mut bad = state.clone();
    bad.v[1].pop();
    assert!(new_opt().load_state(&b, &bad).is_err());
    bad.m.pop();
    assert!(new_opt().load_state(&b, &bad).is_err());
}

#[test]
fn builds_from_a_param_set() {
    let b = CpuBackend::<f32>::new();
    let set = crate::params::ParamSet::init(
        kilobyte_format::ModelConfig::Megabyte(kilobyte_format::MegabyteConfig::MICRO),
        1,
    )
    .unwrap();
    let opt = AdamW::for_param_set(
        &b,
        AdamWConfig::default(),
        LrSchedule::new(1e-3, 10, 100),
        &set,
    )
    .unwrap();
    assert_eq!(opt.params().len(), set.params.len());
    for (info, p) in opt.params().iter().zip(&set.params) {
        assert_eq!(info.len, p.data.len());
        assert_eq!(info.decay, p.role.weight_decay(), "{}", p.name);
    }
    assert_eq!(
        opt.state(&b).unwrap().m.iter().map(Vec::len).sum::<usize>(),
        set.numel()
    );
}

/// The moving average follows `avg = d avg + (1 - d) w` with the warm-up
/// `d = min(decay, (1 + t) / (10 + t))`, survives a state round trip, and
/// swaps in and out of the weights.
#[test]
fn the_weight_average_follows_its_formula_and_round_trips() {
    let b = CpuBackend::<f64>::new();
    let set = crate::params::ParamSet::init(
        kilobyte_format::ModelConfig::Megabyte(kilobyte_format::MegabyteConfig::preset(
            2, 8, 1, 2, 8, 1, 2, 16,
        )),
        3,
    )
    .unwrap();
    let new_opt = || {
        AdamW::for_param_set(
            &b,
            AdamWConfig::default(),
            LrSchedule::new(1e-2, 2, 20),
            &set,
        )
        .unwrap()
        .with_average(&b, 0.5, &set)
        .unwrap()
    };
    let mut rng = Rng::new(8);
    let mut params: Vec<_> = set
        .params
        .iter()
        .map(|p| b.upload(&p.data).unwrap())
        .collect();
    let grads: Vec<Vec<_>> = (0..5)
        .map(|_| {
            set.params
                .iter()
                .map(|p| b.upload(&randn(&mut rng, p.data.len())).unwrap())
                .collect()
        })
        .collect();
    let mut expect: Vec<Vec<f64>> = set
        .params
        .iter()
        .map(|p| p.data.iter().map(|&x| x as f64).collect())
        .collect();
    let mut opt = new_opt();
    for (t, g) in grads.iter().enumerate() {
        opt.step(&b, &mut params, g, 1.0);
        let d = 0.5f64.min((2.0 + t as f64) / (11.0 + t as f64));
        for (e, w) in expect.iter_mut().zip(&params) {
            for (e, w) in e.iter_mut().zip(b.download_f64(w).unwrap()) {
                *e = d * *e + (1.0 - d) * w;
            }
        }
    }
    let state = opt.state(&b).unwrap();
    let raw: Vec<Vec<f64>> = params.iter().map(|w| b.download_f64(w).unwrap()).collect();
    opt.swap_average(&mut params);
    for (e, w) in expect.iter().zip(&params) {
        for (e, w) in e.iter().zip(b.download_f64(w).unwrap()) {
            assert!((e - w).abs() <= 1e-6 * (1.0 + e.abs()), "{e} vs {w}");
        }
    }
    opt.swap_average(&mut params);
    let back: Vec<Vec<f64>> = params.iter().map(|w| b.download_f64(w).unwrap()).collect();
    assert_eq!(raw, back);
    let mut resumed = new_opt();
    resumed.load_state(&b, &state).unwrap();
    assert_eq!(resumed.state(&b).unwrap(), state);
    assert!(AdamW::for_param_set(
        &b,
        AdamWConfig::default(),
        LrSchedule::new(1e-2, 2, 20),
        &set
    )
    .unwrap()
    .with_average(&b, 1.0, &set)
    .is_err());
}
