use super::*;
use crate::backend::CpuBackend;
use kilobyte_format::config::NgramConfig;
use kilobyte_format::{AlignedBytes, DType, ModelFile};
use kilobyte_runtime::{ArenaSpec, Megabyte};

/// With n-grams (global: orders 2..=4, local: 3 and 5) in a few rows each,
/// so rows repeat within a batch and their gradients add up.
fn tiny() -> MegabyteConfig {
    MegabyteConfig::preset(4, 8, 2, 2, 16, 2, 2, 16)
        .with_ngram(NgramConfig::orders(2, 4, 5))
        .with_local_ngram(NgramConfig {
            orders: 1 << 3 | 1 << 5,
            buckets: 7,
        })
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = kilobyte_runtime::rng::Rng::new(seed);
    (0..n).map(|_| rng.below(256) as u8).collect()
}

/// Whole-model gradient check in f64: the hand-written backward against
/// central finite differences, for a few elements of every parameter.
#[test]
fn whole_model_gradients_match_finite_differences() {
    let config = tiny();
    let mut set = ParamSet::init(ModelConfig::Megabyte(config), 3).unwrap();
    // Larger weights than the init, so every path carries signal.
    let mut rng = kilobyte_runtime::rng::Rng::new(4);
    for p in &mut set.params {
        for v in &mut p.data {
            *v += 0.2 * rng.normal() as f32;
        }
    }
    let be = CpuBackend::<f64>::new();
    let mut model = MegabyteModel::new(&be, &set).unwrap();
    let (batch, seq) = (2, 8);
    let mut ws = model.workspace(&be, batch, seq).unwrap();
    let data = bytes(batch * seq, 5);
    for gbuf in &mut model.grads {
        be.zero(gbuf);
    }
    model.step(&be, &mut ws, &data, true, 1.0).unwrap();
    let grads: Vec<Vec<f64>> = model
        .grads
        .iter()
        .map(|g| be.download_f64(g).unwrap())
        .collect();
    let h = 1e-5;
    let mut checked = 0;
    for (i, grad) in grads.iter().enumerate() {
        let base = be.download_f64(&model.params[i]).unwrap();
        let n = base.len();
        for &j in &[0, n / 3, n - 1] {
            let mut loss_at = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                be.write_f64(&mut model.params[i], &v).unwrap();
                let l = model.step(&be, &mut ws, &data, false, 1.0).unwrap().loss;
                be.write_f64(&mut model.params[i], &base).unwrap();
                l
            };
            let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h);
            let analytic = grad[j];
            // Relative error, with an absolute floor for near-zero gradients
            // where the difference quotient's rounding (~1e-11) dominates.
            let err = (numeric - analytic).abs();
            let tol = 1e-9 + 1e-5 * (numeric.abs() + analytic.abs());
            assert!(
                err <= tol,
                "{}[{j}]: analytic {analytic:e} numeric {numeric:e}",
                model.meta[i].name
            );
            checked += 1;
        }
    }
    assert!(checked >= 3 * model.params.len());
}

/// The trainer's logits and the runtime's, on the exported f32 model, agree
/// at every position.
#[test]
fn trainer_and_runtime_logits_agree_on_the_export() {
    let config = MegabyteConfig::preset(4, 16, 2, 2, 32, 2, 4, 32)
        .with_ngram(NgramConfig::orders(3, 6, 11))
        .with_local_ngram(NgramConfig::orders(2, 4, 13));
    let set = ParamSet::init(ModelConfig::Megabyte(config), 7).unwrap();
    let be = CpuBackend::<f32>::new();
    let mut model = MegabyteModel::new(&be, &set).unwrap();
    let seq = 32;
    let mut ws = model.workspace(&be, 1, seq).unwrap();
    let data = bytes(seq, 8);
    model.step(&be, &mut ws, &data, false, 1.0).unwrap();
    let trainer_logits = be.download(&ws.logits).unwrap();

    let exported = model
        .to_param_set(&be)
        .unwrap()
        .to_writer(DType::F32, DType::F32)
        .unwrap()
        .to_bytes()
        .unwrap();
    let aligned = AlignedBytes::from_slice(&exported);
    let file = ModelFile::parse(&aligned).unwrap();
    let rt = Megabyte::from_file(&file).unwrap();
    let spec = ArenaSpec::new(seq);
    let mut arena = vec![0u8; spec.arena_bytes(&config)];
    let mut session = rt.session(&mut arena, spec).unwrap();
    let mut worst = 0f32;
    for (t, &b) in data.iter().enumerate() {
        let want = &trainer_logits[t * 256..(t + 1) * 256];
        let d = session
            .logits()
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(d);
        if t + 1 < seq {
            session.push(b).unwrap();
        }
    }
    assert!(worst <= 1e-4, "max abs diff {worst}");
    // A prompt prefilled patch-parallel ends with the same logits.
    let mut arena2 = vec![0u8; spec.arena_bytes(&config)];
    let mut prefilled = rt.session(&mut arena2, spec).unwrap();
    prefilled.prefill(&data[..seq - 1]).unwrap();
    let want = &trainer_logits[(seq - 1) * 256..];
    let d = prefilled
        .logits()
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d <= 1e-4, "prefill: max abs diff {d}");
}
