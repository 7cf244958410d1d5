//! The training loop shared by both model families: data in, checkpoints,
//! metrics and the best weights out, resumable bit for bit. A family plugs
//! in as a [`Job`] (model, workspace and data position): MEGABYTE's in
//! [`crate::megabyte::job`], BiGS's in [`crate::bigs::jobs`].
//!
//! It knows no family: it must not name a model, a model config or a job
//! type ([`crate::family`] picks the job); what it owns is the loop, the
//! run's options, data sources and the checks every family shares.
//!
//! Every number that shapes the trajectory (model config, hyperparameters,
//! seed, data paths) is written to the run's `config.txt` when the run is
//! created, and a resumed run reads it back from there, so `kilobyte train
//! --resume RUN` needs no other argument. Resuming restores the weights,
//! AdamW's moments and step, and the sampler's position: the resumed run
//! continues exactly as an uninterrupted one (tested bit for bit).

use crate::backend::Backend;
use crate::checkpoint::{interrupted, Checkpoint, Metrics, RunConfig, RunDir, TrainState};
use crate::data::{Corpus, Split, DEFAULT_VAL_FRACTION};
use crate::optim::{AdamW, AdamWConfig, LrSchedule, StepStats};
use crate::params::ParamSet;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Hyperparameters of a run (stored as `train.<name>` in `config.txt`).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Optimizer steps in the whole run.
    pub steps: u64,
    /// Windows per micro-batch.
    pub batch: usize,
    /// Bytes per window (a multiple of P, at most T_max).
    pub seq: usize,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    pub lr: f64,
    pub warmup: u64,
    pub weight_decay: f32,
    pub grad_clip: f32,
    /// BiGS dropout rate (0: off; see `bigs::model::Dropout`).
    pub dropout: f32,
    /// A BiGS classifier's masked-byte loss weight during fine-tuning (0:
    /// off; see `bigs::model::Task::Joint`).
    pub mlm_weight: f32,
    /// Decay of the moving average of the weights that evaluation and the
    /// best weights use (0: off; see `optim::AdamW::with_average`).
    pub ema: f32,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Cap on validation windows per evaluation (0: all).
    pub eval_windows: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Print and log training metrics every this many steps.
    pub log_every: u64,
    pub seed: u64,
    pub val_fraction: f64,
    /// Stop (with a checkpoint) once training has run this many seconds.
    pub time_limit_s: Option<f64>,
    /// Pace the learning-rate schedule by steps alone even with a time limit
    /// (as before time budgets: for comparisons).
    pub step_schedule: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 1000,
            batch: 8,
            seq: 256,
            accum: 1,
            lr: 2e-3,
            warmup: 50,
            weight_decay: 0.1,
            grad_clip: 1.0,
            dropout: 0.0,
            mlm_weight: 0.0,
            ema: 0.0,
            eval_every: 200,
            eval_windows: 64,
            checkpoint_every: 200,
            log_every: 10,
            seed: 0,
            val_fraction: DEFAULT_VAL_FRACTION,
            time_limit_s: None,
            step_schedule: false,
        }
    }
}

impl TrainOptions {
    pub(crate) fn write(&self, c: RunConfig) -> RunConfig {
        let c = c
            .with("steps", self.steps)
            .with("batch", self.batch)
            .with("seq", self.seq)
            .with("accum", self.accum)
            .with("lr", self.lr)
            .with("warmup", self.warmup)
            .with("weight_decay", self.weight_decay)
            .with("grad_clip", self.grad_clip)
            .with("dropout", self.dropout)
            .with("mlm_weight", self.mlm_weight)
            .with("ema", self.ema)
            .with("eval_every", self.eval_every)
            .with("eval_windows", self.eval_windows)
            .with("checkpoint_every", self.checkpoint_every)
            .with("log_every", self.log_every)
            .with("seed", self.seed)
            .with("val_fraction", self.val_fraction);
        let c = match self.time_limit_s {
            Some(t) => c.with("time_limit_s", t),
            None => c,
        };
        if self.step_schedule {
            c.with("step_schedule", 1)
        } else {
            c
        }
    }

    pub(crate) fn read(c: &RunConfig) -> Result<Self> {
        let d = TrainOptions::default();
        Ok(TrainOptions {
            steps: c.get("steps")?.unwrap_or(d.steps),
            batch: c.get("batch")?.unwrap_or(d.batch),
            seq: c.get("seq")?.unwrap_or(d.seq),
            accum: c.get("accum")?.unwrap_or(d.accum),
            lr: c.get("lr")?.unwrap_or(d.lr),
            warmup: c.get("warmup")?.unwrap_or(d.warmup),
            weight_decay: c.get("weight_decay")?.unwrap_or(d.weight_decay),
            grad_clip: c.get("grad_clip")?.unwrap_or(d.grad_clip),
            dropout: c.get("dropout")?.unwrap_or(d.dropout),
            mlm_weight: c.get("mlm_weight")?.unwrap_or(d.mlm_weight),
            ema: c.get("ema")?.unwrap_or(d.ema),
            eval_every: c.get("eval_every")?.unwrap_or(d.eval_every),
            eval_windows: c.get("eval_windows")?.unwrap_or(d.eval_windows),
            checkpoint_every: c.get("checkpoint_every")?.unwrap_or(d.checkpoint_every),
            log_every: c.get("log_every")?.unwrap_or(d.log_every),
            seed: c.get("seed")?.unwrap_or(d.seed),
            val_fraction: c.get("val_fraction")?.unwrap_or(d.val_fraction),
            time_limit_s: c.get("time_limit_s")?,
            step_schedule: c.get::<u32>("step_schedule")?.unwrap_or(0) != 0,
        })
    }

    /// The checks that do not depend on the model family.
    pub(crate) fn check_common(&self) -> Result<()> {
        if self.batch == 0 || self.accum == 0 || self.steps == 0 {
            bail!("--batch, --accum and --steps must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr {}: must be a positive number", self.lr);
        }
        // NaN passes every comparison but `is_finite`, so each check starts there.
        let w = self.weight_decay;
        if !(w.is_finite() && w >= 0.0) {
            bail!("--weight-decay {w}: must be a finite number >= 0");
        }
        let g = self.grad_clip;
        if !(g.is_finite() && g >= 0.0) {
            bail!("--grad-clip {g}: must be a finite number >= 0 (0 turns clipping off)");
        }
        let p = self.dropout;
        if !(p.is_finite() && (0.0..1.0).contains(&p)) {
            bail!("--dropout {p}: must be a number in [0, 1)");
        }
        let m = self.mlm_weight;
        if !(m.is_finite() && m >= 0.0) {
            bail!("--mlm-weight {m}: must be a finite number >= 0 (0 turns it off)");
        }
        let e = self.ema;
        if !(e.is_finite() && (0.0..1.0).contains(&e)) {
            bail!("--ema {e}: must be a number in [0, 1) (0 turns averaging off)");
        }
        if let Some(t) = self.time_limit_s {
            check_seconds("--time-limit", t)?;
        }
        let v = self.val_fraction;
        if !(0.0..1.0).contains(&v) {
            bail!("--val-fraction {v}: must be in [0, 1)");
        }
        Ok(())
    }
}

/// A duration flag: a finite number of seconds above 0.
pub(crate) fn check_seconds(flag: &str, s: f64) -> Result<()> {
    if !(s.is_finite() && s > 0.0) {
        bail!("{flag} {s}: must be a finite number of seconds above 0");
    }
    Ok(())
}

/// Where the training bytes come from.
#[derive(Clone, Debug)]
pub enum DataSource {
    /// Files and directories; the last `val_fraction` of the bytes validate.
    Paths(Vec<PathBuf>),
    /// Bytes held in memory (the demo's built-in corpus), split the same way.
    Bytes(String, Vec<u8>),
}

impl DataSource {
    pub(crate) fn describe(&self) -> String {
        match self {
            DataSource::Paths(p) => p
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            DataSource::Bytes(name, _) => format!("builtin:{name}"),
        }
    }

    /// The same source with every path made absolute, as a run records
    /// it: a resume from another directory reads the same files.
    pub(crate) fn absolute(&self) -> Result<DataSource> {
        Ok(match self {
            DataSource::Paths(p) => DataSource::Paths(
                p.iter()
                    .map(|p| std::path::absolute(p).with_context(|| format!("{}", p.display())))
                    .collect::<Result<_>>()?,
            ),
            DataSource::Bytes(..) => self.clone(),
        })
    }

    /// The `train.data` entry of config.txt.
    pub(crate) fn to_entry(&self) -> String {
        self.describe().replace('\n', "|")
    }

    pub(crate) fn split(&self, val_fraction: f64) -> Result<Split> {
        let corpus = match self {
            DataSource::Paths(p) => Corpus::open(p)?,
            DataSource::Bytes(name, b) => Corpus::from_bytes(name, b.clone()),
        };
        Split::by_fraction(corpus, val_fraction)
    }
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub steps: u64,
    pub final_val: Option<Eval>,
    /// The best checkpoint's score: validation loss, or a classifier's
    /// error rate (1 - accuracy).
    pub best_score: Option<f64>,
    pub elapsed_s: f64,
    pub bytes_per_s: f64,
    pub interrupted: bool,
}

/// Refuses a run directory before any data is read (see
/// [`RunDir::check_new`]).
pub(crate) fn ensure_new(dir: &Path) -> Result<()> {
    RunDir::check_new(dir).map(|_| ())
}

/// The data source a run's `config.txt` names.
pub(crate) fn stored_data_of(c: &RunConfig) -> Result<DataSource> {
    let data: String = c
        .get("data")?
        .context("config.txt has no train.data entry")?;
    Ok(match data.strip_prefix("builtin:") {
        Some(name) => DataSource::Bytes(name.to_string(), crate::data::builtin_corpus()),
        None => DataSource::Paths(data.split('|').map(PathBuf::from).collect()),
    })
}

/// The config.txt entry holding [`crate::data::Corpus::fingerprint`] of
/// the training data (BiGS classification: of each table, by file key).
pub(crate) const DATA_FINGERPRINT: &str = "data_fingerprint";

/// Refuses to resume on data that is not what the run started on (the run
/// in `dir`, whose config is `c`). Runs from before fingerprints were kept
/// have none to compare.
pub(crate) fn check_fingerprint_of(
    c: &RunConfig,
    dir: &Path,
    key: &str,
    what: &str,
    found: &str,
) -> Result<()> {
    match c.get::<String>(key)? {
        Some(recorded) if recorded != found => bail!(
            "{}: the training data changed since the run started ({what} now has {found}; the run recorded {recorded}): restore it, or start a new run",
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// The split of the data a run's config.txt names, checked against the
/// fingerprint it recorded.
pub(crate) fn stored_split(run: &RunDir, val_fraction: f64) -> Result<Split> {
    stored_split_of(run.config(), run.path(), val_fraction)
}

/// [`stored_split`] for the config `c` of the run in `dir`.
pub(crate) fn stored_split_of(c: &RunConfig, dir: &Path, val_fraction: f64) -> Result<Split> {
    let data = stored_data_of(c)?;
    let split = data.split(val_fraction)?;
    check_fingerprint_of(
        c,
        dir,
        DATA_FINGERPRINT,
        &data.describe().replace('\n', " "),
        &split.fingerprint(),
    )?;
    Ok(split)
}

/// The optimizer of a run being resumed from `ckpt` in `dir`: moments and
/// step as the checkpoint left them.
pub(crate) fn resumed_optimizer<B: Backend>(
    be: &B,
    dir: &Path,
    ckpt: &Checkpoint,
    opts: &TrainOptions,
    quiet: bool,
) -> Result<AdamW<B>> {
    let mut opt = optimizer(be, opts, &ckpt.params)?;
    opt.load_state(be, &ckpt.optimizer)?;
    if !quiet {
        eprintln!(
            "resuming {} at step {} on {}",
            dir.display(),
            ckpt.state.step,
            be.name()
        );
    }
    Ok(opt)
}

pub(crate) fn optimizer<B: Backend>(
    be: &B,
    opts: &TrainOptions,
    params: &ParamSet,
) -> Result<AdamW<B>> {
    let adamw = AdamWConfig {
        weight_decay: opts.weight_decay,
        grad_clip: opts.grad_clip,
        ..AdamWConfig::default()
    };
    let opt = AdamW::for_param_set(
        be,
        adamw,
        LrSchedule::new(opts.lr, opts.warmup, opts.steps).with_time_limit(if opts.step_schedule {
            None
        } else {
            opts.time_limit_s
        }),
        params,
    )?;
    if opts.ema > 0.0 {
        opt.with_average(be, opts.ema, params)
    } else {
        Ok(opt)
    }
}

/// What a validation pass measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eval {
    /// Mean cross-entropy in nats (per byte, or per sequence for a classifier).
    pub loss: f64,
    /// A classifier's accuracy on the dev set.
    pub accuracy: Option<f64>,
}

impl Eval {
    /// Lower is better: the best checkpoint is the one with the lowest score
    /// (the error rate for a classifier, else the loss).
    fn score(&self) -> f64 {
        self.accuracy.map_or(self.loss, |a| 1.0 - a)
    }
}

/// A model family with its data, as the shared training loop drives it.
pub(crate) trait Job<B: Backend> {
    /// One micro-batch, forward and backward (gradients added). Returns the
    /// loss and the bytes it covered.
    fn train_batch(&mut self, be: &B) -> Result<(f64, u64)>;
    fn params_and_grads(&mut self) -> (&mut Vec<B::Buf>, &mut Vec<B::Buf>);
    fn evaluate(&mut self, be: &B) -> Result<Eval>;
    fn to_param_set(&self, be: &B) -> Result<ParamSet>;
    /// Writes the data position and RNGs into `state` for a checkpoint.
    fn save_state(&self, state: &mut TrainState);
    /// "bpb" for byte losses; "nats" for a classifier's loss per sequence.
    fn loss_is_per_byte(&self) -> bool {
        true
    }
    /// Training FLOPs per byte (for the MFU in the metrics), if known.
    fn train_flops_per_byte(&self) -> Option<f64> {
        None
    }
}

/// Evaluates the job's weights now and offers them as the run's best.
fn evaluate_and_offer_best<B: Backend, J: Job<B>>(
    be: &B,
    job: &mut J,
    run: &mut RunDir,
    step: u64,
) -> Result<Eval> {
    let val = job.evaluate(be)?;
    let set = job.to_param_set(be)?;
    run.offer_best(&set, step, val.score())?;
    Ok(val)
}

/// Non-finite steps in a row (loss or gradient norm) after which the loop
/// rolls back to the last checkpoint and halves the learning rate.
pub(crate) const SPIKE_LIMIT: u32 = 3;
/// The learning-rate multiplier left by roll-backs, kept in the run's state
/// so that a resumed run keeps it.
const LR_FACTOR_KEY: &str = "lr_factor";

/// The shared loop: steps, logging, evaluation, best and last checkpoints,
/// time limit and Ctrl-C, and the guard against non-finite steps: such a
/// step is skipped and logged, and after [`SPIKE_LIMIT`] in a row the
/// weights and optimizer state go back to the last checkpoint with half the
/// learning rate (the data sampler does not rewind, so the batches that blew
/// up are not replayed).
pub(crate) fn train_loop<B: Backend, J: Job<B>>(
    be: &B,
    mut run: RunDir,
    mut job: J,
    mut opt: AdamW<B>,
    mut state: TrainState,
    opts: TrainOptions,
    quiet: bool,
) -> Result<TrainReport> {
    if let Err(e) = crate::checkpoint::install_interrupt_handler() {
        // The run still trains and keeps its periodic checkpoints; only
        // Ctrl-C loses the steps since the last one.
        eprintln!("warning: {e:#}: Ctrl-C will stop this run without saving a checkpoint");
    }
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut window_start = Instant::now();
    let mut window_bytes = 0u64;
    let mut loss_window = (0.0, 0u64);
    let mut final_val = None;
    let mut stopped = false;
    let per_byte = job.loss_is_per_byte();
    let mut lr_factor: f64 = match state.extra.get(LR_FACTOR_KEY) {
        Some(v) => v.parse().context("state.txt: bad lr_factor")?,
        None => 1.0,
    };
    opt.schedule.peak *= lr_factor;
    let mut bad_in_a_row = 0u32;
    while state.step < opts.steps {
        {
            let (_, grads) = job.params_and_grads();
            AdamW::zero_grads(be, grads);
        }
        let mut loss = 0.0;
        let mut step_bytes = 0;
        // A time-budgeted schedule reads the training time so far (a resumed
        // run continues from the time its state recorded).
        opt.schedule.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        for _ in 0..opts.accum {
            let (l, bytes) = job.train_batch(be)?;
            loss += l;
            step_bytes += bytes;
        }
        loss /= opts.accum as f64;
        let stats = if loss.is_finite() {
            let (params, grads) = job.params_and_grads();
            opt.step(be, params, grads, 1.0 / opts.accum as f32)
        } else {
            StepStats {
                step: opt.step_count(),
                lr: opt.schedule.lr(opt.step_count()),
                grad_norm: f64::NAN,
                clip_scale: 1.0,
                skipped: true,
            }
        };
        if stats.skipped {
            bad_in_a_row += 1;
            eprintln!(
                "warning: step {}: loss {loss}, gradient norm {}: not finite, update skipped",
                state.step + 1,
                stats.grad_norm
            );
            let mut m = Metrics {
                step: state.step + 1,
                ..Metrics::default()
            };
            m.extra.insert("skipped".into(), 1.0);
            run.log(m)?;
            if bad_in_a_row >= SPIKE_LIMIT {
                let ckpt = Checkpoint::load(run.path()).with_context(|| {
                    format!("{SPIKE_LIMIT} non-finite steps in a row before the first checkpoint: training diverged")
                })?;
                ckpt.params.write_to(be, job.params_and_grads().0)?;
                opt.load_state(be, &ckpt.optimizer)?;
                opt.schedule.peak *= 0.5;
                lr_factor *= 0.5;
                let (elapsed, bytes) = (state.elapsed_s, state.bytes_seen);
                state = ckpt.state;
                state.elapsed_s = elapsed;
                state.bytes_seen = bytes;
                state
                    .extra
                    .insert(LR_FACTOR_KEY.into(), format!("{lr_factor}"));
                eprintln!(
                    "warning: {SPIKE_LIMIT} non-finite steps in a row: back to the checkpoint of step {}, learning rate x{lr_factor}",
                    state.step
                );
                let mut m = Metrics {
                    step: state.step,
                    ..Metrics::default()
                };
                m.extra.insert("rollback".into(), 1.0);
                m.extra.insert(LR_FACTOR_KEY.into(), lr_factor);
                run.log(m)?;
                bad_in_a_row = 0;
                continue;
            }
        } else {
            bad_in_a_row = 0;
        }
        state.step += 1;
        state.bytes_seen += step_bytes;
        window_bytes += step_bytes;
        loss_window.0 += loss;
        loss_window.1 += 1;
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let last = state.step == opts.steps;
        let out_of_time = opts.time_limit_s.is_some_and(|t| state.elapsed_s >= t);
        stopped = interrupted();

        if state.step.is_multiple_of(opts.log_every.max(1)) || last {
            let bps = window_bytes as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
            let mfu = match (be.peak_flops(), job.train_flops_per_byte()) {
                (Some(peak), Some(per_byte)) => Some(bps * per_byte / peak),
                _ => None,
            };
            let mut m = Metrics {
                step: state.step,
                train_loss: Some(loss_window.0 / loss_window.1 as f64),
                lr: Some(stats.lr),
                grad_norm: Some(stats.grad_norm),
                bytes_per_s: Some(bps),
                elapsed_s: Some(state.elapsed_s),
                ..Metrics::default()
            };
            if let Some(mfu) = mfu {
                m.extra.insert("mfu".into(), mfu);
            }
            if !quiet {
                let l = m.train_loss.unwrap_or(0.0);
                let unit = if per_byte {
                    format!("  ({:.3} bpb)", l / std::f64::consts::LN_2)
                } else {
                    String::new()
                };
                let mfu = mfu
                    .map(|f| format!("  MFU {:.1}%", 100.0 * f))
                    .unwrap_or_default();
                eprintln!(
                    "step {:>6}  loss {l:.4}{unit}  lr {:.2e}  |g| {:.2}  {:.0} bytes/s{mfu}",
                    state.step, stats.lr, stats.grad_norm, bps
                );
            }
            run.log(m)?;
            window_start = Instant::now();
            window_bytes = 0;
            loss_window = (0.0, 0);
        }
        let eval_due = opts.eval_every > 0 && state.step.is_multiple_of(opts.eval_every);
        if eval_due || last || out_of_time || stopped {
            // Evaluation, and the best weights, read the averaged weights
            // when the run keeps them; training goes on from the raw ones.
            opt.swap_average(job.params_and_grads().0);
            let evaluated = evaluate_and_offer_best(be, &mut job, &mut run, state.step);
            opt.swap_average(job.params_and_grads().0);
            let val = evaluated?;
            final_val = Some(val);
            let mut m = Metrics {
                step: state.step,
                val_loss: Some(val.loss),
                elapsed_s: Some(state.elapsed_s),
                ..Metrics::default()
            };
            if per_byte {
                m.val_bpb = Some(val.loss / std::f64::consts::LN_2);
            }
            if let Some(acc) = val.accuracy {
                m.extra.insert("val_accuracy".into(), acc);
            }
            if !quiet {
                let what = match val.accuracy {
                    Some(acc) => format!("accuracy {:.2}%, loss {:.4}", 100.0 * acc, val.loss),
                    None => format!(
                        "{:.4} nats/byte = {:.4} bpb",
                        val.loss,
                        val.loss / std::f64::consts::LN_2
                    ),
                };
                eprintln!("step {:>6}  validation {what}", state.step);
            }
            run.log(m)?;
            if let Some(w) = run.memorisation_warning(3) {
                eprintln!("warning: {w}");
            }
        }
        let ckpt_due =
            opts.checkpoint_every > 0 && state.step.is_multiple_of(opts.checkpoint_every);
        if ckpt_due || last || out_of_time || stopped {
            job.save_state(&mut state);
            let set = job.to_param_set(be)?;
            run.save(&set, &opt.state(be)?, &state)?;
        }
        if stopped || out_of_time {
            if !quiet {
                let why = if stopped {
                    "interrupted"
                } else {
                    "time limit reached"
                };
                eprintln!(
                    "{why}: checkpoint saved at step {}; continue with --resume {}",
                    state.step,
                    run.path().display()
                );
            }
            break;
        }
    }
    if let Some(v) = final_val.filter(|v| !v.loss.is_finite()) {
        // The checkpoint above holds the last finite weights (a save refuses
        // any other): the run can be resumed or its best exported.
        bail!(
            "the final validation loss is {}: training diverged (the last checkpoint is step {} in {})",
            v.loss,
            state.step,
            run.path().display()
        );
    }
    Ok(TrainReport {
        steps: state.step,
        final_val,
        best_score: run.best().map(|b| b.val_loss),
        elapsed_s: state.elapsed_s,
        bytes_per_s: state.bytes_seen as f64 / state.elapsed_s.max(1e-9),
        interrupted: stopped,
    })
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
