//! The training loop on tiny MEGABYTE runs: its guard against non-finite
//! steps (a job whose loss is made NaN for a few steps), and the
//! time-budgeted schedule.

use super::*;
use crate::backend::CpuBackend;
use crate::megabyte::job::MegabyteJob;
use crate::testutil::TempDir;
use kilobyte_format::{MegabyteConfig, ModelConfig};
use std::ops::Range;

/// A job whose loss is NaN on the steps (1-based calls) in `bad`; it can
/// also report NaN validation losses, or hand out NaN weights from call
/// `nan_weights_from` on.
struct Spiky<J> {
    inner: J,
    bad: Range<u64>,
    calls: u64,
    nan_eval: bool,
    nan_weights_from: u64,
}

impl<B: Backend, J: Job<B>> Job<B> for Spiky<J> {
    fn train_batch(&mut self, be: &B) -> Result<(f64, u64)> {
        self.calls += 1;
        let (loss, bytes) = self.inner.train_batch(be)?;
        let loss = if self.bad.contains(&self.calls) {
            f64::NAN
        } else {
            loss
        };
        Ok((loss, bytes))
    }
    fn params_and_grads(&mut self) -> (&mut Vec<B::Buf>, &mut Vec<B::Buf>) {
        self.inner.params_and_grads()
    }
    fn evaluate(&mut self, be: &B) -> Result<Eval> {
        let mut e = self.inner.evaluate(be)?;
        if self.nan_eval {
            e.loss = f64::NAN;
        }
        Ok(e)
    }
    fn to_param_set(&self, be: &B) -> Result<ParamSet> {
        let mut set = self.inner.to_param_set(be)?;
        if self.calls >= self.nan_weights_from {
            set.params[1].data[3] = f32::NAN;
        }
        Ok(set)
    }
    fn save_state(&self, state: &mut TrainState) {
        self.inner.save_state(state)
    }
}

fn run_with_spikes(dir: &Path, bad: Range<u64>, steps: u64) -> Result<TrainReport> {
    let opts = TrainOptions {
        steps,
        batch: 2,
        seq: 16,
        checkpoint_every: 4,
        eval_every: 0,
        eval_windows: 2,
        log_every: 1,
        ..TrainOptions::default()
    };
    run_tiny(dir, bad, opts)
}

fn run_tiny(dir: &Path, bad: Range<u64>, opts: TrainOptions) -> Result<TrainReport> {
    run_faulty(dir, bad, opts, false, u64::MAX)
}

fn run_faulty(
    dir: &Path,
    bad: Range<u64>,
    opts: TrainOptions,
    nan_eval: bool,
    nan_weights_from: u64,
) -> Result<TrainReport> {
    let config = MegabyteConfig::preset(2, 16, 1, 2, 16, 1, 2, 16);
    let bytes: Vec<u8> = (0..4000u32)
        .map(|i| b"the quick brown fox "[i as usize % 20])
        .collect();
    let split = DataSource::Bytes("spiky".into(), bytes).split(opts.val_fraction)?;
    let run = RunDir::create(
        dir,
        opts.write(RunConfig::new(ModelConfig::Megabyte(config))),
    )?;
    let params = ParamSet::init(ModelConfig::Megabyte(config), opts.seed)?;
    let be = CpuBackend::<f32>::new();
    let inner = MegabyteJob::new(&be, &params, &opts, split, &TrainState::default())?;
    let job = Spiky {
        inner,
        bad,
        calls: 0,
        nan_eval,
        nan_weights_from,
    };
    let opt = optimizer(&be, &opts, &params)?;
    train_loop(&be, run, job, opt, TrainState::default(), opts, true)
}

/// The learning rates a run logged, by step.
fn logged_lrs(dir: &Path) -> Vec<(u64, f64)> {
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    log.lines()
        .filter(|l| l.contains("\"lr\""))
        .map(|l| {
            let field = |k: &str| l.split(k).nth(1).unwrap().split([',', '}']).next().unwrap();
            (
                field("\"step\":").parse().unwrap(),
                field("\"lr\":").parse().unwrap(),
            )
        })
        .collect()
}

/// With --time-limit the cosine follows the clock: a run with room for far
/// more updates than its budget fits still ends at the floor, and its rate
/// falls all the way (a step-paced schedule would barely have left its peak).
#[test]
fn a_time_budgeted_run_ends_annealed_at_its_deadline() {
    let t = TempDir::new("budget");
    let opts = TrainOptions {
        steps: 10_000_000,
        batch: 2,
        seq: 16,
        warmup: 10,
        checkpoint_every: 0,
        eval_every: 0,
        eval_windows: 2,
        log_every: 1,
        time_limit_s: Some(1.5),
        ..TrainOptions::default()
    };
    let report = run_tiny(&t.0, 0..0, opts.clone()).unwrap();
    assert!(report.steps > 20 && report.steps < opts.steps);
    let lrs = logged_lrs(&t.0);
    let (floor, peak) = (0.1 * opts.lr, opts.lr);
    let (_, last) = *lrs.last().unwrap();
    // The last update came just before the deadline: within 10% of the
    // floor's distance from the peak.
    assert!(last - floor <= 0.1 * (peak - floor), "last rate {last}");
    // Monotone after the warm-up, as the clock only moves forward.
    for w in lrs.windows(2).skip(opts.warmup as usize) {
        assert!(w[1].1 <= w[0].1 + 1e-15, "{w:?}");
    }
}

#[test]
fn non_finite_steps_are_skipped_then_rolled_back_with_a_lower_rate() {
    let t = TempDir::new("spikes");
    // Steps 6, 7, 8 are NaN: skipped, then back to the step-4 checkpoint.
    let report = run_with_spikes(&t.0, 6..9, 12).unwrap();
    assert_eq!(report.steps, 12);
    let ckpt = Checkpoint::load(&t.0).unwrap();
    assert_eq!(
        ckpt.state.extra.get(LR_FACTOR_KEY).map(String::as_str),
        Some("0.5")
    );
    assert!(ckpt
        .params
        .params
        .iter()
        .all(|p| p.data.iter().all(|v| v.is_finite())));
    let log = std::fs::read_to_string(t.0.join("metrics.jsonl")).unwrap();
    assert_eq!(log.matches("\"skipped\"").count(), 3, "{log}");
    assert_eq!(log.matches("\"rollback\"").count(), 1, "{log}");
    // The learning rate after the roll-back is half the schedule's.
    let lr_at = |step: u64| -> f64 {
        let line = log
            .lines()
            .rfind(|l| l.starts_with(&format!("{{\"step\":{step},")) && l.contains("\"lr\""))
            .unwrap();
        let v = line.split("\"lr\":").nth(1).unwrap();
        v.split([',', '}']).next().unwrap().parse().unwrap()
    };
    let opts = TrainOptions::default();
    let sched = LrSchedule::new(opts.lr, opts.warmup, 12);
    assert!((lr_at(3) - sched.lr(2)).abs() < 1e-12);
    assert!(
        (lr_at(10) - 0.5 * sched.lr(9)).abs() < 1e-12,
        "{}",
        lr_at(10)
    );

    // Two isolated bad steps only skip.
    let t = TempDir::new("spikes2");
    run_with_spikes(&t.0, 5..6, 8).unwrap();
    let ckpt = Checkpoint::load(&t.0).unwrap();
    assert!(!ckpt.state.extra.contains_key(LR_FACTOR_KEY));

    // Divergence before the first checkpoint is an error, not a loop.
    let t = TempDir::new("spikes3");
    let err = run_with_spikes(&t.0, 1..4, 8).unwrap_err();
    assert!(
        format!("{err:#}").contains("before the first checkpoint"),
        "{err:#}"
    );
}

fn tiny_opts() -> TrainOptions {
    TrainOptions {
        steps: 12,
        batch: 2,
        seq: 16,
        checkpoint_every: 4,
        eval_every: 4,
        eval_windows: 2,
        log_every: 1,
        ..TrainOptions::default()
    }
}

#[test]
fn a_non_finite_final_validation_is_an_error_after_the_last_checkpoint() {
    let t = TempDir::new("naneval");
    let err = run_faulty(&t.0, 0..0, tiny_opts(), true, u64::MAX).unwrap_err();
    assert!(
        format!("{err:#}").contains("final validation loss is NaN"),
        "{err:#}"
    );
    // Finite weights were still checkpointed, and no NaN score became "best".
    assert_eq!(Checkpoint::load(&t.0).unwrap().state.step, 12);
    assert!(!t.0.join(crate::checkpoint::BEST_FILE).exists());
}

#[test]
fn non_finite_weights_are_never_checkpointed() {
    let t = TempDir::new("nanweights");
    let err = run_faulty(&t.0, 0..0, tiny_opts(), false, 6).unwrap_err();
    assert!(format!("{err:#}").contains("not finite"), "{err:#}");
    // The step-4 checkpoint stays the committed one; nothing NaN was written.
    let ckpt = Checkpoint::load(&t.0).unwrap();
    assert_eq!(ckpt.state.step, 4);
    ckpt.params.check_finite().unwrap();
    let (best, _) = crate::checkpoint::load_best(&t.0).unwrap();
    best.check_finite().unwrap();
}

#[test]
fn float_options_must_be_finite_and_in_range() {
    let config = MegabyteConfig::preset(2, 16, 1, 2, 16, 1, 2, 16);
    let ok = TrainOptions {
        seq: 16,
        ..TrainOptions::default()
    };
    ok.check(&config).unwrap();
    let bad = [
        (
            "--weight-decay",
            TrainOptions {
                weight_decay: f32::NAN,
                ..ok.clone()
            },
        ),
        (
            "--weight-decay",
            TrainOptions {
                weight_decay: -0.1,
                ..ok.clone()
            },
        ),
        (
            "--grad-clip",
            TrainOptions {
                grad_clip: f32::NAN,
                ..ok.clone()
            },
        ),
        (
            "--grad-clip",
            TrainOptions {
                grad_clip: f32::INFINITY,
                ..ok.clone()
            },
        ),
        (
            "--time-limit",
            TrainOptions {
                time_limit_s: Some(f64::NAN),
                ..ok.clone()
            },
        ),
        (
            "--time-limit",
            TrainOptions {
                time_limit_s: Some(-5.0),
                ..ok.clone()
            },
        ),
        (
            "--val-fraction",
            TrainOptions {
                val_fraction: f64::NAN,
                ..ok.clone()
            },
        ),
        (
            "--lr",
            TrainOptions {
                lr: f64::NAN,
                ..ok.clone()
            },
        ),
        (
            "--dropout",
            TrainOptions {
                dropout: f32::NAN,
                ..ok.clone()
            },
        ),
        (
            "--dropout",
            TrainOptions {
                dropout: 1.0,
                ..ok.clone()
            },
        ),
        (
            "--dropout",
            TrainOptions {
                // Valid for BiGS; MEGABYTE has none.
                dropout: 0.1,
                ..ok.clone()
            },
        ),
        (
            "--mlm-weight",
            TrainOptions {
                mlm_weight: f32::NAN,
                ..ok.clone()
            },
        ),
        (
            "--mlm-weight",
            TrainOptions {
                // Valid for a BiGS classifier only.
                mlm_weight: 0.5,
                ..ok.clone()
            },
        ),
    ];
    for (flag, opts) in bad {
        let err = opts.check(&config).unwrap_err().to_string();
        assert!(err.starts_with(flag), "{flag}: {err}");
    }
}
