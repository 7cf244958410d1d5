//! BiGS in the shared training loop ([`crate::train`]): masked-byte
//! pretraining on a byte corpus, and classification fine-tuning on a
//! labelled table, optionally starting from a pretraining run.
//!
//! Both store what shapes their trajectory in the run's `config.txt`
//! (`objective`, data paths, columns) and their data position in the
//! checkpoint, so `kilobyte train --resume RUN` continues bit for bit.
//!
//! Classification batches group sentences of similar length (shuffled pools
//! of 64 batches, sorted by length, cut into batches whose order is shuffled
//! again), because padding a short sentence to a long neighbour wastes the
//! compute of the padding rows.

use super::masking::mask_spans;
use super::model::{argmax, BigsBatch, BigsModel, Dropout, Task, Workspace};
use crate::backend::Backend;
use crate::backend::{CpuBackend, Device};
use crate::checkpoint::{
    load_best, load_params, read_config, Checkpoint, RunConfig, RunDir, TrainState, CONFIG_FILE,
    MODEL_FILE,
};
use crate::data::tsv::{read_labeled, Column, LabeledSet};
use crate::data::{Sampler, Subset, ValBatches};
use crate::params::ParamSet;
use crate::text::{shown, shown_list};
use crate::train::{self, DataSource, Eval, Job, TrainOptions, TrainReport};
use crate::with_backend;
use anyhow::{bail, ensure, Context, Result};
use kilobyte_format::config::{self, NgramConfig, BIGS_HEAD_MLM};
use kilobyte_format::{BigsConfig, ModelConfig};
use kilobyte_runtime::rng::Rng;
use std::path::{Path, PathBuf};

/// A labelled table for a classification run.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledFiles {
    pub train: PathBuf,
    /// Scored at each evaluation, choosing the best weights; with a
    /// holdout, only scored once on the best weights at the end.
    pub dev: Option<PathBuf>,
    /// The share of the training table's rows set aside to choose the best
    /// weights on (0: none; then `dev` must be given).
    pub holdout: f64,
    pub text_column: Column,
    pub label_column: Column,
    /// The n-gram logits' orders and rows per order when the flags set
    /// them (0: off); unset, the default for the table's classes.
    pub head_ngram: HeadNgramChoice,
}

/// The n-gram logits a user asked for (`--head-ngram-orders`,
/// `--head-ngram-buckets`); what is not given comes from
/// `kilobyte_format::config::default_head_ngram` for the classes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeadNgramChoice {
    pub orders: Option<u32>,
    pub buckets: Option<u32>,
}

impl HeadNgramChoice {
    /// The choice that resolves to `h` for any class count.
    pub fn exactly(h: NgramConfig) -> Self {
        HeadNgramChoice {
            orders: Some(h.orders),
            buckets: Some(h.buckets),
        }
    }

    pub fn resolve(self, classes: u32) -> NgramConfig {
        if self.orders == Some(0) || self.buckets == Some(0) {
            return NgramConfig::OFF;
        }
        let orders = self
            .orders
            .unwrap_or(config::default_head_ngram(classes).orders);
        NgramConfig {
            orders,
            buckets: self
                .buckets
                .unwrap_or(config::head_ngram_rows(classes, orders)),
        }
    }
}

/// The holdout of a classification run given no dev table.
pub const DEFAULT_HOLDOUT: f64 = 0.1;
/// The config.txt entry of a run's holdout share.
const HOLDOUT_KEY: &str = "holdout";

/// The one range check of a holdout share, for the flag and for a stored
/// config alike.
pub fn check_holdout(share: f64) -> Result<()> {
    ensure!(
        share > 0.0 && share <= 0.5,
        "--holdout {share}: must be in (0, 0.5]"
    );
    Ok(())
}

/// A classification run's labelled rows: those it trains on, those that
/// choose its best weights (the dev table, or the held-out rows of the
/// training table, which training never reads), and the dev table when it
/// is only scored at the end.
struct Tables {
    train: LabeledSet,
    select: LabeledSet,
    report: Option<LabeledSet>,
}

impl LabelledFiles {
    /// Reads the tables (naming any error in them) and sets the holdout
    /// aside: `holdout` of the rows, at least one, drawn from `seed`, so
    /// that a resumed run holds out the same rows.
    fn read(&self, seed: u64) -> Result<Tables> {
        let mut train = read_labeled(&self.train, &self.text_column, &self.label_column)?;
        if self.holdout == 0.0 {
            let dev = self
                .dev
                .as_ref()
                .context("a classifier needs --dev FILE or --holdout F")?;
            let select = read_labeled(dev, &self.text_column, &self.label_column)?;
            return Ok(Tables {
                train,
                select,
                report: None,
            });
        }
        check_holdout(self.holdout)?;
        let n = train.examples.len();
        let held = ((self.holdout * n as f64).round() as usize).max(1);
        ensure!(
            held < n,
            "{}: {n} rows leave none to train on after a holdout of {}",
            self.train.display(),
            self.holdout
        );
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut Rng::new(seed ^ 0x686f_6c64));
        let mut is_held = vec![false; n];
        for &i in &order[..held] {
            is_held[i] = true;
        }
        let (held, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut train.examples)
            .into_iter()
            .zip(is_held)
            .partition(|(_, h)| *h);
        train.examples = kept.into_iter().map(|(e, _)| e).collect();
        let select = LabeledSet {
            path: self.train.clone(),
            examples: held.into_iter().map(|(e, _)| e).collect(),
        };
        // Read now, so an error in it is named before any training.
        let report = match &self.dev {
            Some(dev) => Some(read_labeled(dev, &self.text_column, &self.label_column)?),
            None => None,
        };
        Ok(Tables {
            train,
            select,
            report,
        })
    }
}

/// What a BiGS run learns.
#[derive(Clone, Debug)]
pub enum Objective {
    /// Masked-byte modelling on windows of a byte corpus.
    Mlm(DataSource),
    /// Classification of a table's texts.
    Classify(LabelledFiles),
}

/// One example as model ids.
#[derive(Clone, Debug)]
struct Example {
    ids: Vec<u32>,
    label: u32,
}

enum Data {
    Mlm {
        sampler: Sampler,
        val: Subset,
        mask_rng: Rng,
    },
    Classify {
        train: Vec<Example>,
        dev: Vec<Example>,
        epoch: u64,
        cursor: usize,
        order: Vec<Vec<usize>>,
    },
}

pub(crate) struct BigsJob<B: Backend> {
    model: BigsModel<B>,
    ws: Workspace<B>,
    data: Data,
    batch: usize,
    seq: usize,
    seed: u64,
    eval_windows: usize,
    dropout: f32,
    /// The masked-byte loss weight of classification batches (0: off).
    mlm_weight: f32,
    /// Draws each training batch's dropout seed.
    dropout_rng: Rng,
}

/// Where a classification run that pretrains keeps its pretraining: a
/// masked-byte run of its own in this subdirectory of the run.
pub const PRETRAIN_DIR: &str = "pretrain";
/// The pretraining text, in the run's directory: the training table's text
/// column, one text per line (never the dev table's).
pub const PRETRAIN_TEXT: &str = "pretrain.txt";
/// The share of a classification run's time budget (or of its steps, with
/// no budget) that goes to masked-byte pretraining when neither
/// `--pretrain-fraction` nor `--init` says otherwise. 0 (from scratch) from
/// the measurements so far (README, "One command, pretraining included"):
/// at 150 and 300 s budgets on a loaded 2-core CPU every fraction tried
/// (0.15, 0.3, 0.5) lost to from-scratch training on SST-2 and on the
/// speaker task; the pretraining did not get past byte frequencies.
pub const DEFAULT_PRETRAIN_FRACTION: f64 = 0.0;
/// The longest pretraining window: task texts are mostly short, and a
/// window much longer than them costs steps without teaching more.
const PRETRAIN_SEQ: usize = 128;
/// The checkpoint's name for the stream of dropout seeds.
const DROPOUT_RNG: &str = "dropout";
/// The config.txt entry of a run that pretrains first.
const PRETRAIN_FRACTION_KEY: &str = "pretrain_fraction";

/// Starts a new BiGS run in `dir`. `init` names a run (pretrained with
/// `--objective mlm`) whose encoder weights a classifier starts from.
///
/// A classifier with `pretrain_fraction` > 0 (and no `init`) first
/// pretrains on masked bytes of its training table's texts, as a run of its
/// own in `dir/pretrain` with that share of the steps and of the time
/// budget, then fine-tunes from those weights with the rest; `dir`'s own
/// config.txt is the fine-tuning's (its steps and budget are that phase's).
#[allow(clippy::too_many_arguments)]
pub fn start(
    dir: &Path,
    config: BigsConfig,
    opts: TrainOptions,
    objective: Objective,
    init: Option<&Path>,
    pretrain_fraction: f64,
    quiet: bool,
    device: Device,
) -> Result<TrainReport> {
    opts.check_common()?;
    ensure!(
        (0.0..1.0).contains(&pretrain_fraction),
        "--pretrain-fraction {pretrain_fraction}: must be in [0, 1)"
    );
    if pretrain_fraction > 0.0 {
        ensure!(
            init.is_none(),
            "--pretrain-fraction with --init: a classifier starts either from a run or from its own pretraining"
        );
        let Objective::Classify(files) = &objective else {
            bail!("--pretrain-fraction: only --objective classify pretrains first");
        };
        return start_with_pretraining(dir, config, opts, files, pretrain_fraction, quiet, device);
    }
    train::ensure_new(dir)?;
    let (params, run_config) = match &objective {
        Objective::Mlm(data) => {
            ensure!(
                opts.mlm_weight == 0.0,
                "--mlm-weight {}: for a classifier (--objective classify); pretraining is all masked-byte loss",
                opts.mlm_weight
            );
            ensure!(
                opts.seq >= 1 && opts.seq <= config.max_seq as usize,
                "--seq {}: must be between 1 and T_max = {}",
                opts.seq,
                config.max_seq
            );
            let config = BigsConfig {
                heads: BIGS_HEAD_MLM,
                n_classes: 0,
                ..config
            };
            let mut params = ParamSet::init(ModelConfig::Bigs(config), opts.seed)?;
            if let Some(init) = init {
                copy_encoder(&mut params, &init_params(init)?)?;
            }
            let data = data.absolute()?;
            let rc = opts
                .write(RunConfig::new(ModelConfig::Bigs(config)))
                .with("objective", "mlm")
                .with("data", data.to_entry())
                .with(
                    train::DATA_FINGERPRINT,
                    data.split(opts.val_fraction)?.fingerprint(),
                );
            (params, rc)
        }
        Objective::Classify(files) => {
            let base = match init {
                Some(init) => Some(init_params(init)?),
                None => None,
            };
            let encoder = match &base {
                Some(b) => match b.config {
                    ModelConfig::Bigs(c) => c,
                    _ => bail!("--init: not a BiGS run"),
                },
                None => config,
            };
            let mlm_head = opts.mlm_weight > 0.0
                || matches!(&base, Some(b) if matches!(b.config, ModelConfig::Bigs(c) if c.has_mlm_head()));
            let (mut params, mut rc) = classifier(files, encoder, mlm_head, &opts)?;
            if let Some(b) = &base {
                copy_encoder(&mut params, b)?;
            }
            if let Some(init) = init {
                rc = rc.with("init", init.display());
            }
            (params, rc)
        }
    };
    with_backend!(device, |be| {
        let job = BigsJob::new(be, &params, &opts, &objective, &TrainState::default())?;
        let run = RunDir::create(dir, run_config)?;
        let opt = train::optimizer(be, &opts, &params)?;
        train::train_loop(be, run, job, opt, TrainState::default(), opts, quiet)
    })
}

/// A new classifier over `encoder` (with a masked-byte head too if
/// `mlm_head`) for the labels of `files.train`, and its run config.
fn classifier(
    files: &LabelledFiles,
    encoder: BigsConfig,
    mlm_head: bool,
    opts: &TrainOptions,
) -> Result<(ParamSet, RunConfig)> {
    let train_set = read_labeled(&files.train, &files.text_column, &files.label_column)?;
    // Every label of the table, held-out rows included.
    let labels = train_set.label_names();
    ensure!(
        labels.len() >= 2,
        "{}: a classifier needs at least 2 labels, found {}",
        files.train.display(),
        labels.len()
    );
    let classes = labels.len() as u32;
    let config = BigsConfig {
        head_ngram: files.head_ngram.resolve(classes),
        ..encoder.classifier(classes, mlm_head)
    };
    config.validate()?;
    let mut params = ParamSet::init(ModelConfig::Bigs(config), opts.seed)?;
    params.labels = labels;
    let mut rc = opts
        .write(RunConfig::new(ModelConfig::Bigs(config)))
        .with("objective", "classify")
        .with("train_file", absolute(&files.train)?.display())
        .with(
            &fingerprint_key("train_file"),
            table_fingerprint(&files.train)?,
        )
        .with("text_column", column_text(&files.text_column))
        .with("label_column", column_text(&files.label_column));
    if let Some(dev) = &files.dev {
        rc = rc
            .with("dev_file", absolute(dev)?.display())
            .with(&fingerprint_key("dev_file"), table_fingerprint(dev)?);
    }
    if files.holdout > 0.0 {
        rc = rc.with(HOLDOUT_KEY, files.holdout);
    }
    Ok((params, rc))
}

/// The options of the two phases of a run that pretrains for `fraction`
/// of `opts`'s steps and time budget: (pretraining, fine-tuning). Each
/// phase's schedule warms up and anneals within its own share. The
/// pretraining window is at most [`PRETRAIN_SEQ`], T_max, `--seq`, and the
/// validation part of `text_len` bytes of text (a small table still has a
/// window to validate on).
fn phase_options(
    opts: &TrainOptions,
    fraction: f64,
    max_seq: usize,
    text_len: usize,
) -> Result<(TrainOptions, TrainOptions)> {
    ensure!(
        opts.steps >= 2,
        "--steps {}: a run that pretrains first needs at least 2 (one per phase)",
        opts.steps
    );
    let pre_steps = ((opts.steps as f64 * fraction).round() as u64).clamp(1, opts.steps - 1);
    let pre = TrainOptions {
        steps: pre_steps,
        seq: opts
            .seq
            .min(PRETRAIN_SEQ)
            .min(max_seq)
            .min(match (text_len as f64 * opts.val_fraction) as usize {
                0 => usize::MAX,
                val => val,
            })
            .max(1),
        time_limit_s: opts.time_limit_s.map(|t| t * fraction),
        mlm_weight: 0.0,
        ..opts.clone()
    };
    let fine = TrainOptions {
        steps: opts.steps - pre_steps,
        time_limit_s: opts.time_limit_s.map(|t| t * (1.0 - fraction)),
        ..opts.clone()
    };
    Ok((pre, fine))
}

/// [`start`] of a classifier that pretrains first.
fn start_with_pretraining(
    dir: &Path,
    config: BigsConfig,
    opts: TrainOptions,
    files: &LabelledFiles,
    fraction: f64,
    quiet: bool,
    device: Device,
) -> Result<TrainReport> {
    let pre_dir = dir.join(PRETRAIN_DIR);
    if Checkpoint::exists(&pre_dir) {
        bail!(
            "{} already holds a run in its pretraining phase: use --resume {} to continue it, or another directory",
            dir.display(),
            dir.display()
        );
    }
    train::ensure_new(dir)?;
    // Both tables are read (and any error in them named) before any
    // training, as a run without pretraining does. Held-out rows are not
    // pretrained on either.
    let Tables {
        train: train_set,
        select: dev_set,
        report,
    } = files.read(opts.seed)?;
    let mut text = Vec::new();
    for e in train_set.examples.iter().filter(|e| !e.text.is_empty()) {
        text.extend_from_slice(&e.text);
        text.push(b'\n');
    }
    let max_seq = config.max_seq as usize;
    let (pre_opts, fine_opts) = phase_options(&opts, fraction, max_seq, text.len())?;
    let (params, rc) = classifier(files, config, true, &fine_opts)?;
    for set in std::iter::once(&dev_set).chain(&report) {
        examples(set, &params.labels, max_seq)?;
    }
    let rc = rc
        .with(PRETRAIN_FRACTION_KEY, fraction)
        .with("init", absolute(&pre_dir)?.display());
    let run = RunDir::create(dir, rc)?;
    let text_path = absolute(&dir.join(PRETRAIN_TEXT))?;
    kilobyte_format::write_atomic(&text_path, &text)
        .with_context(|| format!("{}", text_path.display()))?;
    let pre_config = BigsConfig {
        heads: BIGS_HEAD_MLM,
        n_classes: 0,
        ..config
    };
    let source = Objective::Mlm(DataSource::Paths(vec![text_path]));
    if !quiet {
        eprintln!(
            "pretraining: masked bytes of the {} texts of {} in {}",
            train_set.examples.len(),
            files.train.display(),
            pre_dir.display()
        );
    }
    let report = start(
        &pre_dir, pre_config, pre_opts, source, None, 0.0, quiet, device,
    )?;
    finish_pretrained(run, params, fine_opts, report, quiet, device)
}

/// The fine-tuning phase of a run that pretrained (unless the pretraining
/// was interrupted: then its report, and the run resumes from it).
fn finish_pretrained(
    run: RunDir,
    mut params: ParamSet,
    opts: TrainOptions,
    pretraining: TrainReport,
    quiet: bool,
    device: Device,
) -> Result<TrainReport> {
    let dir = run.path().to_path_buf();
    if pretraining.interrupted {
        if !quiet {
            eprintln!(
                "the run continues (pretraining, then fine-tuning) with --resume {}",
                dir.display()
            );
        }
        return Ok(pretraining);
    }
    copy_encoder(&mut params, &init_params(&dir.join(PRETRAIN_DIR))?)?;
    if !quiet {
        eprintln!(
            "pretraining done after {} steps in {:.1} s; fine-tuning in {}",
            pretraining.steps,
            pretraining.elapsed_s,
            dir.display()
        );
    }
    let objective = stored_objective(run.config(), run.path())?;
    with_backend!(device, |be| {
        let job = BigsJob::new(be, &params, &opts, &objective, &TrainState::default())?;
        let opt = train::optimizer(be, &opts, &params)?;
        train::train_loop(be, run, job, opt, TrainState::default(), opts, quiet)
    })
}

/// Whether `dir` is a classification run still in its pretraining phase
/// (it pretrains first and has no checkpoint of its own yet).
pub fn in_pretraining(dir: &Path) -> bool {
    !Checkpoint::exists(dir)
        && read_config(dir).is_ok_and(|c| c.train.contains_key(PRETRAIN_FRACTION_KEY))
}

/// Continues a run that [`in_pretraining`] says is pretraining: the rest of
/// its pretraining (from its last checkpoint, or from the start if it
/// reached none), then the fine-tuning.
pub fn resume_pretraining(dir: &Path, quiet: bool, device: Device) -> Result<TrainReport> {
    let rc = read_config(dir)?;
    let opts = TrainOptions::read(&rc)?;
    opts.check_common()
        .with_context(|| format!("{}", dir.join(CONFIG_FILE).display()))?;
    let ModelConfig::Bigs(config) = rc.model else {
        bail!("{}: not a BiGS run", dir.join(CONFIG_FILE).display());
    };
    let files = match stored_objective(&rc, dir)? {
        Objective::Classify(files) => files,
        Objective::Mlm(_) => bail!(
            "{}: a masked-byte run does not pretrain first",
            dir.join(CONFIG_FILE).display()
        ),
    };
    // The same classifier as at the start: its labels come from the same
    // (fingerprinted) training table, its initial weights from the seed.
    let (params, _) = classifier(&files, config, true, &opts)?;
    // Holds the lock; what a fine-tuning that reached no checkpoint left
    // is removed, as for any run that never checkpointed.
    let run = RunDir::create(dir, rc)?;
    let pre_dir = dir.join(PRETRAIN_DIR);
    let report = if Checkpoint::exists(&pre_dir) {
        let (pre_run, ckpt) = RunDir::resume(&pre_dir)?;
        let pre_opts = TrainOptions::read(pre_run.config())?;
        pre_opts
            .check_common()
            .and_then(|()| {
                crate::budget::check_here(&ckpt.params.config, pre_opts.batch, pre_opts.seq)
            })
            .with_context(|| format!("{}", pre_dir.join(CONFIG_FILE).display()))?;
        let done = ckpt.state.step >= pre_opts.steps
            || pre_opts
                .time_limit_s
                .is_some_and(|t| ckpt.state.elapsed_s >= t);
        if done {
            TrainReport {
                steps: ckpt.state.step,
                final_val: None,
                best_score: ckpt.best.map(|b| b.val_loss),
                elapsed_s: ckpt.state.elapsed_s,
                bytes_per_s: ckpt.state.bytes_seen as f64 / ckpt.state.elapsed_s.max(1e-9),
                interrupted: false,
            }
        } else {
            with_backend!(device, |be| {
                let opt = train::resumed_optimizer(be, &pre_dir, &ckpt, &pre_opts, quiet)?;
                let job = BigsJob::resume(be, &pre_run, &ckpt, &pre_opts)?;
                train::train_loop(be, pre_run, job, opt, ckpt.state, pre_opts, quiet)
            })?
        }
    } else {
        // Stopped before its first checkpoint: it starts again, as its own
        // config.txt (written at the start) describes it.
        let pre_rc = read_config(&pre_dir).with_context(|| {
            format!(
                "{}: the pretraining phase left no run to resume; start the run again",
                dir.display()
            )
        })?;
        let pre_opts = TrainOptions::read(&pre_rc)?;
        let ModelConfig::Bigs(pre_config) = pre_rc.model else {
            bail!("{}: not a BiGS run", pre_dir.join(CONFIG_FILE).display());
        };
        let source = stored_objective(&pre_rc, &pre_dir)?;
        start(
            &pre_dir, pre_config, pre_opts, source, None, 0.0, quiet, device,
        )?
    };
    finish_pretrained(run, params, opts, report, quiet, device)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}", path.display()))
}

/// The config.txt entry holding a table's fingerprint.
fn fingerprint_key(file_key: &str) -> String {
    format!("{file_key}_fingerprint")
}

/// [`crate::data::Corpus::fingerprint`] of one table file.
fn table_fingerprint(path: &Path) -> Result<String> {
    Ok(crate::data::Corpus::open(&[path])?.fingerprint())
}

fn column_text(c: &Column) -> String {
    match c {
        Column::Name(n) => n.clone(),
        Column::Index(i) => i.to_string(),
    }
}

/// The weights a run offers for initialisation: best, else last.
fn init_params(dir: &Path) -> Result<ParamSet> {
    if let Ok((p, _)) = load_best(dir) {
        return Ok(p);
    }
    let (p, _) =
        load_params(&dir.join(MODEL_FILE)).with_context(|| format!("--init {}", dir.display()))?;
    Ok(p)
}

/// Copies every tensor of `from` that `to` has with the same shape (the
/// encoder and any head both have); a shape mismatch is an error.
fn copy_encoder(to: &mut ParamSet, from: &ParamSet) -> Result<()> {
    let mut copied = 0;
    for p in &mut to.params {
        if let Some(src) = from.get(&p.name) {
            ensure!(
                src.shape == p.shape,
                "--init: {} has shape {:?} there and {:?} here",
                p.name,
                src.shape.dims(),
                p.shape.dims()
            );
            p.data.copy_from_slice(&src.data);
            copied += 1;
        }
    }
    ensure!(copied > 0, "--init: no tensor in common");
    Ok(())
}

/// A table's non-empty texts as examples, whole, and how many are longer
/// than `max_seq` (read in windows: see [`crop`] and [`classify_eval`]).
fn examples(set: &LabeledSet, labels: &[String], max_seq: usize) -> Result<(Vec<Example>, usize)> {
    let mut long = 0;
    let out = set
        .examples
        .iter()
        .filter(|e| !e.text.is_empty())
        .map(|e| {
            let label = labels.iter().position(|l| *l == e.label).with_context(|| {
                format!(
                    "{}: line {}: label {} does not occur in the training file (labels: {})",
                    set.path.display(),
                    e.line,
                    shown(&e.label),
                    shown_list(labels)
                )
            })? as u32;
            long += (e.text.len() > max_seq) as usize;
            Ok(Example {
                ids: e.text.iter().map(|&b| b as u32).collect(),
                label,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        !out.is_empty(),
        "{}: no non-empty texts",
        set.path.display()
    );
    Ok((out, long))
}

/// What a training batch reads of a text longer than `max_seq`: one
/// window of `max_seq` bytes at a random offset, a new one at each visit
/// (evaluation and the runtime read all of its windows). The offset comes
/// from `rng`, which the caller derives from the batch's place in the run,
/// so a resumed run draws the same windows.
fn crop(ids: &[u32], max_seq: usize, rng: &mut Rng) -> Vec<u32> {
    if ids.len() <= max_seq {
        return ids.to_vec();
    }
    let start = rng.below((ids.len() - max_seq + 1) as u64) as usize;
    ids[start..start + max_seq].to_vec()
}

impl<B: Backend> BigsJob<B> {
    fn new(
        be: &B,
        params: &ParamSet,
        opts: &TrainOptions,
        objective: &Objective,
        state: &TrainState,
    ) -> Result<Self> {
        let model = BigsModel::new(be, params)?;
        let max_seq = model.config.max_seq as usize;
        let (data, seq) = match objective {
            Objective::Mlm(source) => {
                let split = source.split(opts.val_fraction)?;
                let mut sampler =
                    Sampler::new(split.train.clone(), opts.seq, opts.batch, opts.seed)?;
                let mut mask_rng = Rng::new(opts.seed ^ 0x6d61_736b);
                if state.step > 0 {
                    sampler.restore(state.sampler);
                    if let Some(s) = state.rngs.get("mask") {
                        mask_rng = Rng::from_state(*s);
                    }
                }
                let data = Data::Mlm {
                    sampler,
                    val: split.val,
                    mask_rng,
                };
                (data, opts.seq)
            }
            Objective::Classify(files) => {
                let labels = &params.labels;
                let Tables {
                    train: train_set,
                    select: dev_set,
                    report,
                } = files.read(opts.seed)?;
                let (train, cut) = examples(&train_set, labels, max_seq)?;
                let (dev, dev_cut) = examples(&dev_set, labels, max_seq)?;
                if let Some(report) = &report {
                    // Its labels checked before any training, not at the end.
                    examples(report, labels, max_seq)?;
                }
                if cut + dev_cut > 0 && state.step == 0 {
                    eprintln!(
                        "note: {cut} training and {dev_cut} {} texts are longer than T_max = {max_seq} bytes: training reads a random window of {max_seq} bytes of each, evaluation all of its windows",
                        if files.holdout > 0.0 { "held-out" } else { "dev" }
                    );
                }
                let get = |k: &str| -> Result<u64> {
                    state
                        .extra
                        .get(k)
                        .map(|v| v.parse().context("bad checkpoint state"))
                        .unwrap_or(Ok(0))
                };
                let (epoch, cursor) = (get("epoch")?, get("cursor")? as usize);
                let order = epoch_order(&train, opts.batch, opts.seed, epoch);
                let data = Data::Classify {
                    train,
                    dev,
                    epoch,
                    cursor,
                    order,
                };
                (data, max_seq)
            }
        };
        Ok(BigsJob {
            ws: model.workspace(be, opts.batch, seq)?,
            model,
            data,
            batch: opts.batch,
            seq,
            seed: opts.seed,
            eval_windows: opts.eval_windows,
            dropout: opts.dropout,
            mlm_weight: opts.mlm_weight,
            dropout_rng: match state.rngs.get(DROPOUT_RNG) {
                Some(s) if state.step > 0 => Rng::from_state(*s),
                _ => Rng::new(opts.seed ^ 0x6472_6f70),
            },
        })
    }

    /// The job of a run being resumed, from its `config.txt`.
    pub(crate) fn resume(
        be: &B,
        run: &RunDir,
        ckpt: &Checkpoint,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let objective = stored_objective(run.config(), run.path())?;
        BigsJob::new(be, &ckpt.params, opts, &objective, &ckpt.state)
    }
}

/// The objective a run's `config.txt` names, with its data checked
/// against the fingerprints the run recorded.
fn stored_objective(c: &RunConfig, dir: &Path) -> Result<Objective> {
    let objective = match c.get::<String>("objective")?.as_deref() {
        Some("mlm") => {
            // Opens the data once here for the check, once for the job.
            let val_fraction = TrainOptions::read(c)?.val_fraction;
            train::stored_split_of(c, dir, val_fraction)?;
            Objective::Mlm(train::stored_data_of(c)?)
        }
        Some("classify") => {
            let path = |k: &str| -> Result<PathBuf> {
                c.get::<String>(k)?
                    .map(PathBuf::from)
                    .with_context(|| format!("config.txt has no train.{k} entry"))
            };
            let col = |k: &str| -> Result<Column> {
                Ok(c.get::<String>(k)?
                    .with_context(|| format!("config.txt has no train.{k} entry"))?
                    .parse()
                    .expect("infallible"))
            };
            let holdout = c.get::<f64>(HOLDOUT_KEY)?.unwrap_or(0.0);
            let dev = match holdout > 0.0 {
                true => c.get::<String>("dev_file")?.map(PathBuf::from),
                false => Some(path("dev_file")?),
            };
            let files = [
                Some(("train_file", path("train_file")?)),
                dev.clone().map(|d| ("dev_file", d)),
            ];
            for (key, file) in files.into_iter().flatten() {
                train::check_fingerprint_of(
                    c,
                    dir,
                    &fingerprint_key(key),
                    &file.display().to_string(),
                    &table_fingerprint(&file)?,
                )?;
            }
            Objective::Classify(LabelledFiles {
                train: path("train_file")?,
                dev,
                holdout,
                text_column: col("text_column")?,
                label_column: col("label_column")?,
                // The stored classifier's, so that rebuilding it (a run
                // resumed in pretraining) gives the same model.
                head_ngram: match c.model {
                    ModelConfig::Bigs(b) => HeadNgramChoice::exactly(b.head_ngram),
                    ModelConfig::Megabyte(_) => HeadNgramChoice::exactly(NgramConfig::OFF),
                },
            })
        }
        Some(other) => bail!("config.txt: unknown BiGS objective {}", shown(other)),
        None => bail!("config.txt has no train.objective entry"),
    };
    Ok(objective)
}

/// The batches of one epoch, as indices into `train`.
fn epoch_order(train: &[Example], batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x636c_7373);
    let mut idx: Vec<usize> = (0..train.len()).collect();
    shuffle(&mut idx, &mut rng);
    let mut batches = Vec::new();
    for pool in idx.chunks_mut(64 * batch) {
        pool.sort_by_key(|&i| train[i].ids.len());
        batches.extend(pool.chunks(batch).map(<[usize]>::to_vec));
    }
    shuffle(&mut batches, &mut rng);
    batches
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

impl<B: Backend> Job<B> for BigsJob<B> {
    fn train_batch(&mut self, be: &B) -> Result<(f64, u64)> {
        let batch = match &mut self.data {
            Data::Mlm {
                sampler, mask_rng, ..
            } => {
                let b = sampler.next_batch();
                mlm_batch((0..b.rows()).map(|r| b.row(r)), mask_rng)
            }
            Data::Classify {
                train,
                epoch,
                cursor,
                order,
                ..
            } => {
                if *cursor >= order.len() {
                    *epoch += 1;
                    *cursor = 0;
                    *order = epoch_order(train, self.batch, self.seed, *epoch);
                }
                let picked = &order[*cursor];
                let mut rng = Rng::new(
                    self.seed
                        ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ ((*cursor as u64) << 20)
                        ^ 0x7769_6e64,
                );
                *cursor += 1;
                let texts: Vec<Vec<u32>> = picked
                    .iter()
                    .map(|&i| crop(&train[i].ids, self.seq, &mut rng))
                    .collect();
                let labels = picked.iter().map(|&i| train[i].label).collect();
                if self.mlm_weight > 0.0 {
                    joint_batch(&texts, labels, self.mlm_weight, &mut rng)
                } else {
                    BigsBatch::from_sequences(&texts, Task::Classify { labels })
                }
            }
        };
        let dropout = (self.dropout > 0.0).then(|| Dropout {
            rate: self.dropout,
            seed: self.dropout_rng.next_u64(),
        });
        let batch = batch.with_dropout(dropout);
        let bytes: u64 = batch.lengths.iter().map(|&l| l as u64).sum();
        let r = self.model.step(be, &mut self.ws, &batch, true, 1.0)?;
        Ok((r.ce.loss, bytes))
    }

    fn params_and_grads(&mut self) -> (&mut Vec<B::Buf>, &mut Vec<B::Buf>) {
        (&mut self.model.params, &mut self.model.grads)
    }

    fn evaluate(&mut self, be: &B) -> Result<Eval> {
        match &self.data {
            Data::Mlm { val, .. } => {
                // The same masks at every evaluation, so losses compare.
                let mut rng = Rng::new(self.seed ^ 0x7661_6c00);
                let windows = ValBatches::new(val.clone(), self.seq, self.batch)?
                    .stride(self.seq)
                    .max_windows((self.eval_windows > 0).then_some(self.eval_windows));
                let (mut sum, mut count) = (0.0, 0.0);
                for b in windows {
                    let batch = mlm_batch((0..b.rows()).map(|r| b.row(r)), &mut rng);
                    let r = self.model.step(be, &mut self.ws, &batch, false, 1.0)?;
                    sum += r.ce.loss * r.ce.count;
                    count += r.ce.count;
                }
                ensure!(
                    count > 0.0,
                    "the validation data holds no window of {} bytes",
                    self.seq
                );
                Ok(Eval {
                    loss: sum / count,
                    accuracy: None,
                })
            }
            Data::Classify { dev, .. } => {
                let (loss, accuracy) =
                    classify_eval(be, &mut self.model, &mut self.ws, dev, self.batch)?;
                Ok(Eval {
                    loss,
                    accuracy: Some(accuracy),
                })
            }
        }
    }

    fn to_param_set(&self, be: &B) -> Result<ParamSet> {
        self.model.to_param_set(be)
    }

    fn save_state(&self, state: &mut TrainState) {
        state
            .rngs
            .insert(DROPOUT_RNG.into(), self.dropout_rng.state());
        match &self.data {
            Data::Mlm {
                sampler, mask_rng, ..
            } => {
                state.sampler = sampler.state();
                state.rngs.insert("mask".into(), mask_rng.state());
            }
            Data::Classify { epoch, cursor, .. } => {
                state.extra.insert("epoch".into(), epoch.to_string());
                state.extra.insert("cursor".into(), cursor.to_string());
            }
        }
    }

    fn loss_is_per_byte(&self) -> bool {
        matches!(self.data, Data::Mlm { .. })
    }
    fn train_flops_per_byte(&self) -> Option<f64> {
        Some(crate::bigs::model::train_flops_per_byte(
            &self.model.config,
            self.seq,
        ))
    }
}

/// `rows` masked as for pretraining: the model inputs, and the targets and
/// loss weights padded to the longest row (as `from_sequences` pads ids).
fn masked_rows<'a>(
    rows: impl Iterator<Item = &'a [u8]>,
    rng: &mut Rng,
) -> (Vec<Vec<u32>>, Vec<u32>, Vec<f32>) {
    let masked: Vec<_> = rows.map(|row| mask_spans(row, rng)).collect();
    let seq = masked
        .iter()
        .map(|m| m.inputs.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let (mut inputs, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for m in masked {
        targets.extend(m.targets);
        weights.extend(m.weights);
        inputs.push(m.inputs);
        targets.resize(inputs.len() * seq, 0);
        weights.resize(inputs.len() * seq, 0.0);
    }
    (inputs, targets, weights)
}

/// Masked windows of equal length.
fn mlm_batch<'a>(rows: impl Iterator<Item = &'a [u8]>, rng: &mut Rng) -> BigsBatch {
    let (inputs, targets, weights) = masked_rows(rows, rng);
    BigsBatch::from_sequences(&inputs, Task::Mlm { targets, weights })
}

/// A classification batch whose texts are also masked, for the joint
/// loss of `--mlm-weight`.
fn joint_batch(texts: &[Vec<u32>], labels: Vec<u32>, mlm_weight: f32, rng: &mut Rng) -> BigsBatch {
    // Classification texts are bytes (ids < 256).
    let bytes: Vec<Vec<u8>> = texts
        .iter()
        .map(|t| t.iter().map(|&id| id as u8).collect())
        .collect();
    let (inputs, targets, weights) = masked_rows(bytes.iter().map(Vec::as_slice), rng);
    let task = Task::Joint {
        labels,
        targets,
        weights,
        mlm_weight,
    };
    BigsBatch::from_sequences(&inputs, task)
}

/// Mean cross-entropy and accuracy over `dev`, in batches of similar
/// length, each text read whole in the runtime's windows.
fn classify_eval<B: Backend>(
    be: &B,
    model: &mut BigsModel<B>,
    ws: &mut Workspace<B>,
    dev: &[Example],
    batch: usize,
) -> Result<(f64, f64)> {
    let mut idx: Vec<usize> = (0..dev.len()).collect();
    idx.sort_by_key(|&i| dev[i].ids.len());
    let classes = model.config.n_classes as usize;
    let (mut loss, mut correct) = (0.0, 0usize);
    for chunk in idx.chunks(batch) {
        let texts: Vec<Vec<u32>> = chunk.iter().map(|&i| dev[i].ids.clone()).collect();
        let logits = model.class_logits(be, ws, &texts)?;
        for (row, &i) in logits.chunks(classes).zip(chunk) {
            let label = dev[i].label as usize;
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            loss += lse - row[label];
            // A row with a NaN predicts nothing (argmax would say class
            // 0): it counts as wrong, as the runtime's eval counts it.
            correct += (!row.iter().any(|v| v.is_nan()) && argmax(row) == label) as usize;
        }
    }
    Ok((loss / dev.len() as f64, correct as f64 / dev.len() as f64))
}

/// For a classification run that chose its weights on held-out training
/// rows and was given a dev table: that table's accuracy with the best
/// weights, its path and its size (the dev table never chose anything, so
/// this is a clean figure).
pub fn dev_of_held_out_run(dir: &Path) -> Result<Option<(f64, usize, PathBuf)>> {
    let config = read_config(dir)?;
    if config.get::<String>("objective")?.as_deref() != Some("classify") {
        return Ok(None);
    }
    let Objective::Classify(files) = stored_objective(&config, dir)? else {
        return Ok(None);
    };
    let Some(dev) = files.dev.filter(|_| files.holdout > 0.0) else {
        return Ok(None);
    };
    let (params, _) = load_best(dir)?;
    let (acc, n) = evaluate_run_params(&params, &dev, &files.text_column, &files.label_column)?;
    Ok(Some((acc, n, dev)))
}

/// Accuracy of a run's weights on a labelled file, through the trainer.
pub fn evaluate_run_params(
    params: &ParamSet,
    dev: &Path,
    text: &Column,
    label: &Column,
) -> Result<(f64, usize)> {
    let be = CpuBackend::<f32>::new();
    let mut model = BigsModel::new(&be, params)?;
    ensure!(
        model.config.has_classifier(),
        "this BiGS model has no classification head"
    );
    let set = read_labeled(dev, text, label)?;
    let (examples, _) = examples(&set, &params.labels, model.config.max_seq as usize)?;
    let mut ws = model.workspace(&be, 32, model.config.max_seq as usize)?;
    let (_, acc) = classify_eval(&be, &mut model, &mut ws, &examples, 32)?;
    Ok((acc, examples.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The holdout takes its share of the rows (at least one), the same
    /// rows for the same seed and others for another, and training keeps
    /// the rest: every row is in exactly one part.
    #[test]
    fn the_holdout_splits_the_table_by_its_seed() {
        let dir = crate::testutil::TempDir::new("holdout");
        let rows: String = (0..50).map(|i| format!("text {i}\t{}\n", i % 2)).collect();
        let path = dir.write("t.tsv", format!("sentence\tlabel\n{rows}").as_bytes());
        let files = |holdout| LabelledFiles {
            train: path.clone(),
            dev: None,
            holdout,
            text_column: Column::Name("sentence".into()),
            label_column: Column::Name("label".into()),
            head_ngram: HeadNgramChoice::default(),
        };
        let lines = |s: &LabeledSet| s.examples.iter().map(|e| e.line).collect::<Vec<_>>();
        let a = files(0.1).read(1).unwrap();
        assert_eq!((a.train.examples.len(), a.select.examples.len()), (45, 5));
        let mut all = [lines(&a.train), lines(&a.select)].concat();
        all.sort();
        assert_eq!(all, (2..52).collect::<Vec<_>>());
        assert_eq!(lines(&files(0.1).read(1).unwrap().select), lines(&a.select));
        assert_ne!(lines(&files(0.1).read(2).unwrap().select), lines(&a.select));
        assert_eq!(files(0.001).read(1).unwrap().select.examples.len(), 1);
        assert!(files(0.0).read(1).is_err(), "no dev and no holdout");
    }

    #[test]
    fn the_n_gram_logits_flags_resolve_against_the_classes() {
        let none = HeadNgramChoice::default();
        assert_eq!(none.resolve(2), NgramConfig::orders(2, 5, 8192));
        assert_eq!(none.resolve(10).buckets, 2048, "the floor of rows");
        let orders = NgramConfig::orders(2, 8, 0).orders;
        let wide = HeadNgramChoice {
            orders: Some(orders),
            buckets: None,
        };
        // Seven orders share the same weights as the default's four.
        assert_eq!(
            wide.resolve(2),
            NgramConfig {
                orders,
                buckets: 4672
            }
        );
        let rows = HeadNgramChoice {
            orders: None,
            buckets: Some(64),
        };
        assert_eq!(rows.resolve(3), NgramConfig::orders(2, 5, 64));
        for off in [Some(0), None] {
            let c = HeadNgramChoice {
                orders: off,
                buckets: Some(0).filter(|_| off.is_none()),
            };
            assert_eq!(c.resolve(2), NgramConfig::OFF);
        }
        let h = NgramConfig::orders(3, 4, 96);
        assert_eq!(HeadNgramChoice::exactly(h).resolve(7), h);
        assert_eq!(
            HeadNgramChoice::exactly(NgramConfig::OFF).resolve(7),
            NgramConfig::OFF
        );
    }

    #[test]
    fn the_phases_share_the_steps_and_the_budget() {
        let opts = TrainOptions {
            steps: 1000,
            seq: 256,
            time_limit_s: Some(600.0),
            ..TrainOptions::default()
        };
        let (pre, fine) = phase_options(&opts, 0.3, 256, 1 << 20).unwrap();
        assert_eq!((pre.steps, fine.steps), (300, 700));
        assert_eq!(pre.time_limit_s, Some(180.0));
        assert!((fine.time_limit_s.unwrap() - 420.0).abs() < 1e-9);
        assert_eq!((pre.seq, fine.seq), (PRETRAIN_SEQ, 256));
        assert_eq!(
            (pre.lr, pre.warmup, pre.seed),
            (opts.lr, opts.warmup, opts.seed)
        );
        // Without a budget only the steps are shared; every phase gets one.
        let opts = TrainOptions {
            steps: 2,
            time_limit_s: None,
            ..opts
        };
        let (pre, fine) = phase_options(&opts, 0.01, 256, 1 << 20).unwrap();
        assert_eq!((pre.steps, fine.steps, pre.time_limit_s), (1, 1, None));
        // A small table's window fits its validation bytes (10% of 79).
        let (pre, _) = phase_options(&opts, 0.5, 256, 79).unwrap();
        assert_eq!(pre.seq, 7);
        let one = TrainOptions { steps: 1, ..opts };
        assert!(phase_options(&one, 0.5, 256, 79).is_err());
    }

    /// A long text gives a window of exactly `max_seq` bytes from inside
    /// it, the draws differ, and a short text is kept whole.
    #[test]
    fn crop_takes_one_window_of_a_long_text() {
        let ids: Vec<u32> = (0..40).collect();
        let mut rng = Rng::new(1);
        let starts: Vec<u32> = (0..20)
            .map(|_| {
                let w = crop(&ids, 8, &mut rng);
                assert_eq!(w.len(), 8);
                assert!(w.windows(2).all(|p| p[1] == p[0] + 1) && w[7] < 40);
                w[0]
            })
            .collect();
        assert!(starts.iter().any(|&s| s != starts[0]));
        assert_eq!(crop(&ids[..5], 8, &mut rng), ids[..5].to_vec());
        assert_eq!(crop(&ids[..8], 8, &mut rng), ids[..8].to_vec());
    }
}
