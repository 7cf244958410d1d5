//! The MEGABYTE training loop: data in, checkpoints, metrics and the best
//! weights out, resumable bit for bit.
//!
//! Every number that shapes the trajectory (model config, hyperparameters,
//! seed, data paths) is written to the run's `config.txt` when the run is
//! created, and a resumed run reads it back from there, so `kilobyte train
//! --resume RUN` needs no other argument. Resuming restores the weights,
//! AdamW's moments and step, and the sampler's position: the resumed run
//! continues exactly as an uninterrupted one (tested bit for bit).

use crate::backend::{Backend, CpuBackend};
use crate::checkpoint::{interrupted, Checkpoint, Metrics, RunConfig, RunDir, TrainState};
use crate::data::{Corpus, Sampler, Split, Subset, ValBatches, DEFAULT_VAL_FRACTION};
use crate::megabyte::{MegabyteModel, Workspace};
use crate::optim::{AdamW, AdamWConfig, LrSchedule};
use crate::params::ParamSet;
use anyhow::{bail, Context, Result};
use kilobyte_format::{MegabyteConfig, ModelConfig};
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
            eval_every: 200,
            eval_windows: 64,
            checkpoint_every: 200,
            log_every: 10,
            seed: 0,
            val_fraction: DEFAULT_VAL_FRACTION,
            time_limit_s: None,
        }
    }
}

impl TrainOptions {
    fn write(&self, c: RunConfig) -> RunConfig {
        let c = c
            .with("steps", self.steps)
            .with("batch", self.batch)
            .with("seq", self.seq)
            .with("accum", self.accum)
            .with("lr", self.lr)
            .with("warmup", self.warmup)
            .with("weight_decay", self.weight_decay)
            .with("grad_clip", self.grad_clip)
            .with("eval_every", self.eval_every)
            .with("eval_windows", self.eval_windows)
            .with("checkpoint_every", self.checkpoint_every)
            .with("log_every", self.log_every)
            .with("seed", self.seed)
            .with("val_fraction", self.val_fraction);
        match self.time_limit_s {
            Some(t) => c.with("time_limit_s", t),
            None => c,
        }
    }

    fn read(c: &RunConfig) -> Result<Self> {
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
            eval_every: c.get("eval_every")?.unwrap_or(d.eval_every),
            eval_windows: c.get("eval_windows")?.unwrap_or(d.eval_windows),
            checkpoint_every: c.get("checkpoint_every")?.unwrap_or(d.checkpoint_every),
            log_every: c.get("log_every")?.unwrap_or(d.log_every),
            seed: c.get("seed")?.unwrap_or(d.seed),
            val_fraction: c.get("val_fraction")?.unwrap_or(d.val_fraction),
            time_limit_s: c.get("time_limit_s")?,
        })
    }

    fn check(&self, config: &MegabyteConfig) -> Result<()> {
        let p = config.patch_size as usize;
        if self.seq == 0 || self.seq % p != 0 || self.seq > config.max_seq as usize {
            bail!(
                "--seq {}: must be a multiple of the patch size {p}, at most T_max = {}",
                self.seq,
                config.max_seq
            );
        }
        if self.batch == 0 || self.accum == 0 || self.steps == 0 {
            bail!("--batch, --accum and --steps must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr {}: must be a positive number", self.lr);
        }
        Ok(())
    }
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
    fn describe(&self) -> String {
        match self {
            DataSource::Paths(p) => p
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            DataSource::Bytes(name, _) => format!("builtin:{name}"),
        }
    }

    fn split(&self, val_fraction: f64) -> Result<Split> {
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
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub elapsed_s: f64,
    pub bytes_per_s: f64,
    pub interrupted: bool,
}

/// Starts a new run in `dir` (which must not hold one).
pub fn start(
    dir: &Path,
    config: MegabyteConfig,
    opts: TrainOptions,
    data: DataSource,
    quiet: bool,
) -> Result<TrainReport> {
    opts.check(&config)?;
    if Checkpoint::exists(dir) {
        bail!(
            "{} already holds a run: use --resume to continue it, or another directory",
            dir.display()
        );
    }
    let split = data.split(opts.val_fraction)?;
    let run_config = opts
        .write(RunConfig::new(ModelConfig::Megabyte(config)))
        .with("data", data.describe().replace('\n', "|"));
    let run = RunDir::create(dir, run_config)?;
    let params = ParamSet::init(ModelConfig::Megabyte(config), opts.seed)?;
    let be = CpuBackend::<f32>::new();
    let model = MegabyteModel::new(&be, &params)?;
    let opt = optimizer(&be, &opts, &params)?;
    train_loop(
        &be,
        run,
        model,
        opt,
        TrainState::default(),
        opts,
        split,
        quiet,
    )
}

/// Continues the run in `dir` from its last checkpoint.
pub fn resume(dir: &Path, quiet: bool) -> Result<TrainReport> {
    let (run, ckpt) = RunDir::resume(dir)?;
    let opts = TrainOptions::read(run.config())?;
    let data: String = run
        .config()
        .get("data")?
        .context("config.txt has no train.data entry")?;
    let data = match data.strip_prefix("builtin:") {
        Some(name) => DataSource::Bytes(name.to_string(), crate::data::builtin_corpus()),
        None => DataSource::Paths(data.split('|').map(PathBuf::from).collect()),
    };
    let split = data.split(opts.val_fraction)?;
    let be = CpuBackend::<f32>::new();
    let model = MegabyteModel::new(&be, &ckpt.params)?;
    let mut opt = optimizer(&be, &opts, &ckpt.params)?;
    opt.load_state(&be, &ckpt.optimizer)?;
    if !quiet {
        eprintln!("resuming {} at step {}", dir.display(), ckpt.state.step);
    }
    train_loop(&be, run, model, opt, ckpt.state, opts, split, quiet)
}

fn optimizer<B: Backend>(be: &B, opts: &TrainOptions, params: &ParamSet) -> Result<AdamW<B>> {
    let adamw = AdamWConfig {
        weight_decay: opts.weight_decay,
        grad_clip: opts.grad_clip,
        ..AdamWConfig::default()
    };
    AdamW::for_param_set(
        be,
        adamw,
        LrSchedule::new(opts.lr, opts.warmup, opts.steps),
        params,
    )
}

/// Mean cross-entropy (nats per byte) of the model over validation windows.
pub fn evaluate<B: Backend>(
    be: &B,
    model: &mut MegabyteModel<B>,
    ws: &mut Workspace<B>,
    val: &Subset,
    max_windows: usize,
) -> Result<f64> {
    let batches = ValBatches::new(val.clone(), ws.seq, ws.batch)?
        .stride(ws.seq)
        .max_windows(if max_windows == 0 {
            None
        } else {
            Some(max_windows)
        });
    let (mut sum, mut count) = (0.0, 0.0);
    let mut bytes = vec![0u8; ws.batch * ws.seq];
    for batch in batches {
        // A short last batch is padded by repeating its first window; only
        // the real rows count.
        let rows = batch.rows();
        for r in 0..ws.batch {
            bytes[r * ws.seq..(r + 1) * ws.seq].copy_from_slice(batch.row(r.min(rows - 1)));
        }
        let ce = model.step(be, ws, &bytes, false, 1.0)?;
        if rows == ws.batch {
            sum += ce.loss * ce.count;
            count += ce.count;
        } else {
            // Rare: recompute the real rows alone so padding does not count.
            let mut one = model.workspace(be, 1, ws.seq)?;
            for r in 0..rows {
                let ce = model.step(be, &mut one, batch.row(r), false, 1.0)?;
                sum += ce.loss * ce.count;
                count += ce.count;
            }
        }
    }
    if count == 0.0 {
        bail!(
            "the validation data holds no full window of {} bytes",
            ws.seq
        );
    }
    Ok(sum / count)
}

#[allow(clippy::too_many_arguments)]
fn train_loop<B: Backend>(
    be: &B,
    mut run: RunDir,
    mut model: MegabyteModel<B>,
    mut opt: AdamW<B>,
    mut state: TrainState,
    opts: TrainOptions,
    split: Split,
    quiet: bool,
) -> Result<TrainReport> {
    let _ = crate::checkpoint::interrupt_flag();
    let mut sampler = Sampler::new(split.train.clone(), opts.seq, opts.batch, opts.seed)?;
    if state.step > 0 {
        sampler.restore(state.sampler);
    }
    let mut ws = model.workspace(be, opts.batch, opts.seq)?;
    let mut eval_ws = model.workspace(be, opts.batch, opts.seq)?;
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut window_start = Instant::now();
    let mut window_bytes = 0u64;
    let mut loss_window = (0.0, 0u64);
    let mut final_val = None;
    let mut stopped = false;
    let bytes_per_step = (opts.batch * opts.seq * opts.accum) as u64;
    while state.step < opts.steps {
        AdamW::zero_grads(be, &mut model.grads);
        let mut loss = 0.0;
        for _ in 0..opts.accum {
            let batch = sampler.next_batch();
            loss += model.step(be, &mut ws, &batch.bytes, true, 1.0)?.loss;
        }
        loss /= opts.accum as f64;
        let stats = opt.step(be, &mut model.params, &model.grads, 1.0 / opts.accum as f32);
        if stats.skipped {
            eprintln!(
                "warning: step {}: gradient norm is {}, update skipped",
                state.step + 1,
                stats.grad_norm
            );
        }
        state.step += 1;
        state.bytes_seen += bytes_per_step;
        window_bytes += bytes_per_step;
        loss_window.0 += loss;
        loss_window.1 += 1;
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let last = state.step == opts.steps;
        let out_of_time = opts.time_limit_s.is_some_and(|t| state.elapsed_s >= t);
        stopped = interrupted();

        if state.step % opts.log_every.max(1) == 0 || last {
            let bps = window_bytes as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
            let m = Metrics {
                step: state.step,
                train_loss: Some(loss_window.0 / loss_window.1 as f64),
                lr: Some(stats.lr),
                grad_norm: Some(stats.grad_norm),
                bytes_per_s: Some(bps),
                elapsed_s: Some(state.elapsed_s),
                ..Metrics::default()
            };
            if !quiet {
                eprintln!(
                    "step {:>6}  loss {:.4}  ({:.3} bpb)  lr {:.2e}  |g| {:.2}  {:.0} bytes/s",
                    state.step,
                    m.train_loss.unwrap_or(0.0),
                    m.train_loss.unwrap_or(0.0) / std::f64::consts::LN_2,
                    stats.lr,
                    stats.grad_norm,
                    bps
                );
            }
            run.log(m)?;
            window_start = Instant::now();
            window_bytes = 0;
            loss_window = (0.0, 0);
        }
        let eval_due = opts.eval_every > 0 && state.step % opts.eval_every == 0;
        if eval_due || last || out_of_time || stopped {
            let val = evaluate(be, &mut model, &mut eval_ws, &split.val, opts.eval_windows)?;
            final_val = Some(val);
            let bpb = val / std::f64::consts::LN_2;
            if !quiet {
                eprintln!(
                    "step {:>6}  validation {val:.4} nats/byte = {bpb:.4} bpb",
                    state.step
                );
            }
            run.log(Metrics {
                step: state.step,
                val_loss: Some(val),
                val_bpb: Some(bpb),
                elapsed_s: Some(state.elapsed_s),
                ..Metrics::default()
            })?;
            let set = model.to_param_set(be)?;
            run.offer_best(&set, state.step, val)?;
            if let Some(w) = run.memorisation_warning(3) {
                eprintln!("warning: {w}");
            }
        }
        let ckpt_due = opts.checkpoint_every > 0 && state.step % opts.checkpoint_every == 0;
        if ckpt_due || last || out_of_time || stopped {
            state.sampler = sampler.state();
            let set = model.to_param_set(be)?;
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
    Ok(TrainReport {
        steps: state.step,
        final_val_loss: final_val,
        best_val_loss: run.best().map(|b| b.val_loss),
        elapsed_s: state.elapsed_s,
        bytes_per_s: state.bytes_seen as f64 / state.elapsed_s.max(1e-9),
        interrupted: stopped,
    })
}
