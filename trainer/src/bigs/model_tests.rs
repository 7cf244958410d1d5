use super::model::*;
use crate::backend::{Backend, CpuBackend};
use crate::params::ParamSet;
use kilobyte_format::config::{NgramConfig, BIGS_HEAD_CLASSIFY, BIGS_HEAD_MLM};
use kilobyte_format::{BigsConfig, ModelConfig};
use kilobyte_runtime::rng::Rng;

/// Both heads, two SSM kernels, room for padding, n-grams of orders 2 and
/// 3 in 5 rows each (rows repeat, so their gradients add up), and n-gram
/// logits of orders 2 and 3 in 32 rows each.
fn tiny() -> BigsConfig {
    let mut c = BigsConfig::preset(8, 12, 2, 3, 2, 7).with_ngram(NgramConfig::orders(2, 3, 5));
    c.heads = BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY;
    c.n_classes = 3;
    c.head_ngram = NgramConfig::orders(2, 3, 32);
    c
}

/// Parameters with larger weights than the init, so every path carries signal.
fn params(config: BigsConfig, seed: u64) -> ParamSet {
    let mut set = ParamSet::init(ModelConfig::Bigs(config), seed).unwrap();
    let mut rng = Rng::new(seed + 1);
    for p in &mut set.params {
        for v in &mut p.data {
            *v += 0.2 * rng.normal() as f32;
        }
    }
    set
}

fn random_ids(rng: &mut Rng, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| match rng.below(10) {
            0 => MASK_ID,
            _ => rng.below(256) as u32,
        })
        .collect()
}

/// Both tasks without dropout, then both with it (a fixed seed: fixed
/// masks), then both at once (the joint task) without and with it.
fn batches(rng: &mut Rng) -> [BigsBatch; 6] {
    let texts = vec![random_ids(rng, 7), random_ids(rng, 4)];
    let rows = 2 * 7;
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(256) as u32).collect();
    let mut weights = vec![0.0f32; rows];
    for r in [0, 3, 6, 7, 10] {
        weights[r] = 1.0;
    }
    let joint = Task::Joint {
        labels: vec![1, 2],
        targets: targets.clone(),
        weights: weights.clone(),
        mlm_weight: 0.7,
    };
    let mlm = BigsBatch::from_sequences(&texts, Task::Mlm { targets, weights });
    let classify = BigsBatch::from_sequences(&texts, Task::Classify { labels: vec![2, 0] });
    let joint = BigsBatch::from_sequences(&texts, joint);
    let dropout = Some(Dropout {
        rate: 0.3,
        seed: 17,
    });
    [
        mlm.clone(),
        classify.clone(),
        mlm.with_dropout(dropout),
        classify.with_dropout(dropout),
        joint.clone(),
        joint.with_dropout(dropout),
    ]
}

/// Whole-model gradient check in f64 for both heads, SSM parameters
/// included, with and without dropout: the hand-written backward against
/// central differences.
#[test]
fn whole_model_gradients_match_finite_differences() {
    let config = tiny();
    let set = params(config, 3);
    let be = CpuBackend::<f64>::new();
    let mut model = BigsModel::new(&be, &set).unwrap();
    let mut ws = model.workspace(&be, 2, 7).unwrap();
    let mut rng = Rng::new(9);
    for batch in batches(&mut rng) {
        for g in &mut model.grads {
            be.zero(g);
        }
        model.step(&be, &mut ws, &batch, true, 1.0).unwrap();
        let grads: Vec<Vec<f64>> = model
            .grads
            .iter()
            .map(|g| be.download_f64(g).unwrap())
            .collect();
        let h = 1e-5;
        for (i, grad) in grads.iter().enumerate() {
            let base = be.download_f64(&model.params[i]).unwrap();
            let n = base.len();
            // Fixed entries, and the largest gradient: a sparse tensor (the
            // n-gram logits') may have none at the fixed ones.
            let largest = (0..n)
                .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
                .unwrap_or(0);
            for &j in &[0, n / 3, n / 2, n - 1, largest] {
                let mut loss_at = |delta: f64| {
                    let mut v = base.clone();
                    v[j] += delta;
                    be.write_f64(&mut model.params[i], &v).unwrap();
                    let l = model.step(&be, &mut ws, &batch, false, 1.0).unwrap();
                    be.write_f64(&mut model.params[i], &base).unwrap();
                    l.ce.loss
                };
                let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h);
                let analytic = grad[j];
                let err = (numeric - analytic).abs();
                let tol = 1e-9 + 1e-5 * (numeric.abs() + analytic.abs());
                assert!(
                    err <= tol,
                    "{:?} dropout {:?} {}[{j}]: analytic {analytic:e} numeric {numeric:e}",
                    std::mem::discriminant(&batch.task),
                    batch.dropout,
                    model.meta[i].name
                );
            }
        }
    }
}

/// A sequence gives the same logits alone and inside a padded batch with
/// longer neighbours: padding never leaks into real positions.
#[test]
fn padding_does_not_leak() {
    let config = tiny();
    let set = params(config, 5);
    let be = CpuBackend::<f32>::new();
    let mut model = BigsModel::new(&be, &set).unwrap();
    let mut rng = Rng::new(2);
    let short = random_ids(&mut rng, 3);
    let texts = vec![
        random_ids(&mut rng, 7),
        short.clone(),
        random_ids(&mut rng, 5),
    ];
    let mlm = |n: usize| Task::Mlm {
        targets: vec![0; n],
        weights: vec![1.0; n],
    };
    let run = |model: &mut BigsModel<CpuBackend<f32>>, batch: &BigsBatch| {
        let mut ws = model.workspace(&be, batch.batch, batch.seq).unwrap();
        model.step(&be, &mut ws, batch, false, 1.0).unwrap();
        let logits = be.download(&ws.logits).unwrap();
        (logits, ws)
    };
    let alone = BigsBatch::from_sequences(std::slice::from_ref(&short), mlm(3));
    let padded = BigsBatch::from_sequences(&texts, mlm(21));
    let (a, _) = run(&mut model, &alone);
    let (p, _) = run(&mut model, &padded);
    // Sequence 1 starts at row 7 of the padded batch.
    for (x, y) in a[..3 * 256].iter().zip(&p[7 * 256..10 * 256]) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
    }
    let cls = |labels: Vec<u32>| Task::Classify { labels };
    let alone = BigsBatch::from_sequences(&[short], cls(vec![0]));
    let padded = BigsBatch::from_sequences(&texts, cls(vec![0, 0, 0]));
    let class_logits = |model: &mut BigsModel<CpuBackend<f32>>, batch: &BigsBatch| {
        let mut ws = model.workspace(&be, batch.batch, batch.seq).unwrap();
        model.step(&be, &mut ws, batch, false, 1.0).unwrap();
        be.download(&ws.class_logits).unwrap()
    };
    let a = class_logits(&mut model, &alone);
    let p = class_logits(&mut model, &padded);
    for (x, y) in a[..3].iter().zip(&p[3..6]) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
    }
}

#[test]
fn bad_batches_are_errors() {
    let set = params(tiny(), 1);
    let be = CpuBackend::<f32>::new();
    let mut model = BigsModel::new(&be, &set).unwrap();
    let mut ws = model.workspace(&be, 2, 7).unwrap();
    let too_long = BigsBatch::from_sequences(&[vec![1; 8]], Task::Classify { labels: vec![0] });
    assert!(model.step(&be, &mut ws, &too_long, false, 1.0).is_err());
    let bad_label = BigsBatch::from_sequences(&[vec![1; 3]], Task::Classify { labels: vec![3] });
    let e = model
        .step(&be, &mut ws, &bad_label, false, 1.0)
        .unwrap_err();
    assert!(e.to_string().contains("3 classes"), "{e}");
    assert!(model.workspace(&be, 1, 8).is_err());
}

/// The trainer's logits and the runtime's, on the exported f32 model, agree
/// (both heads) at lengths 1, a middle one and T_max, and the class logits
/// of texts longer than T_max, which both read in windows.
#[test]
fn trainer_and_runtime_logits_agree_on_the_export() {
    use kilobyte_format::{AlignedBytes, DType, ModelFile};
    use kilobyte_runtime::Bigs;
    let config = tiny();
    let mut set = params(config, 8);
    set.labels = vec!["a".into(), "b".into(), "c".into()];
    let bytes = AlignedBytes::from_slice(
        &set.to_writer(DType::F32, DType::F32)
            .unwrap()
            .to_bytes()
            .unwrap(),
    );
    let file = ModelFile::parse(&bytes).unwrap();
    let runtime = Bigs::from_file(&file).unwrap();
    let t_max = config.max_seq as usize;
    let mut arena = vec![0u8; Bigs::arena_bytes(&config, t_max)];
    let mut enc = runtime.encoder(&mut arena, t_max).unwrap();
    let be = CpuBackend::<f32>::new();
    let mut model = BigsModel::new(&be, &set).unwrap();
    let mut ws = model.workspace(&be, 1, t_max).unwrap();
    let mut rng = Rng::new(4);
    let mut worst = 0.0f32;
    for n in [1, 4, t_max] {
        let text: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
        let mut ids = byte_ids(&text);
        ids[n / 2] = MASK_ID;
        let mlm = Task::Mlm {
            targets: vec![0; n],
            weights: vec![1.0; n],
        };
        model
            .step(
                &be,
                &mut ws,
                &BigsBatch::from_sequences(&[ids.clone()], mlm),
                false,
                1.0,
            )
            .unwrap();
        let trainer = be.download(&ws.logits).unwrap();
        enc.byte_logits(&ids, |pos, l| {
            for (a, b) in l.iter().zip(&trainer[pos * 256..(pos + 1) * 256]) {
                worst = worst.max((a - b).abs());
            }
        })
        .unwrap();
        let cls = Task::Classify { labels: vec![0] };
        model
            .step(
                &be,
                &mut ws,
                &BigsBatch::from_sequences(&[byte_ids(&text)], cls),
                false,
                1.0,
            )
            .unwrap();
        let trainer = be.download(&ws.class_logits).unwrap();
        for (a, b) in enc.class_logits(&text).unwrap().iter().zip(&trainer) {
            worst = worst.max((a - b).abs());
        }
    }
    // Texts longer than T_max, read in windows: more windows than the
    // workspace's batch, and a short text beside them.
    let mut ws = model.workspace(&be, 2, t_max).unwrap();
    let texts: Vec<Vec<u8>> = [3 * t_max + 2, 5, t_max + 1]
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(256) as u8).collect())
        .collect();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| byte_ids(t)).collect();
    let mut trainer = model.class_logits(&be, &mut ws, &ids[..2]).unwrap();
    trainer.extend(model.class_logits(&be, &mut ws, &ids[2..]).unwrap());
    for (text, want) in texts.iter().zip(trainer.chunks(3)) {
        for (a, b) in enc.class_logits(text).unwrap().iter().zip(want) {
            worst = worst.max((*a as f64 - b).abs() as f32);
        }
    }
    assert!(worst <= 1e-4, "max abs difference {worst}");
}

/// Dropout changes the loss, the same seed gives the same loss, another
/// seed another one, and a rate of 0 is the same as none.
#[test]
fn dropout_masks_follow_their_seed() {
    let set = params(tiny(), 5);
    let be = CpuBackend::<f64>::new();
    let mut model = BigsModel::new(&be, &set).unwrap();
    let mut ws = model.workspace(&be, 2, 7).unwrap();
    let [_, classify, ..] = batches(&mut Rng::new(2));
    let mut loss = |rate: Option<f32>, seed: u64| {
        let b = classify
            .clone()
            .with_dropout(rate.map(|rate| Dropout { rate, seed }));
        model.step(&be, &mut ws, &b, false, 1.0).unwrap().ce.loss
    };
    let plain = loss(None, 0);
    let a = loss(Some(0.5), 1);
    assert_ne!(plain, a);
    assert_eq!(a, loss(Some(0.5), 1));
    assert_ne!(a, loss(Some(0.5), 2));
    assert_eq!(plain, loss(Some(0.0), 3));
    // Evaluation after a dropout batch runs without masks again.
    assert_eq!(plain, loss(None, 0));
    let bad = classify
        .clone()
        .with_dropout(Some(Dropout { rate: 1.0, seed: 0 }));
    assert!(model.step(&be, &mut ws, &bad, false, 1.0).is_err());
}

/// A mask drops about `rate` of its elements and keeps the mean at 1.
#[test]
fn dropout_masks_drop_their_rate_and_keep_the_mean() {
    let mut rng = Rng::new(4);
    let mut mask = vec![0.0f32; 100_001];
    for rate in [0.1f32, 0.5] {
        fill_mask(&mut rng, rate, &mut mask);
        let dropped = mask.iter().filter(|&&v| v == 0.0).count() as f64 / mask.len() as f64;
        let mean = mask.iter().map(|&v| v as f64).sum::<f64>() / mask.len() as f64;
        assert!((dropped - rate as f64).abs() < 0.01, "{rate}: {dropped}");
        assert!((mean - 1.0).abs() < 0.02, "{rate}: {mean}");
    }
}
