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
use super::model::{BigsBatch, BigsModel, Task, Workspace};
use crate::backend::Backend;
use crate::backend::{CpuBackend, Device};
use crate::checkpoint::{
    load_best, load_params, Checkpoint, RunConfig, RunDir, TrainState, MODEL_FILE,
};
use crate::data::tsv::{model_text, read_labeled, Column, LabeledSet};
use crate::data::{Sampler, Subset, ValBatches};
use crate::params::ParamSet;
use crate::text::{shown, shown_list};
use crate::train::{self, DataSource, Eval, Job, TrainOptions, TrainReport};
use crate::with_backend;
use anyhow::{bail, ensure, Context, Result};
use kilobyte_format::config::{BIGS_HEAD_CLASSIFY, BIGS_HEAD_MLM};
use kilobyte_format::{BigsConfig, ModelConfig};
use kilobyte_runtime::rng::Rng;
use std::path::{Path, PathBuf};

/// A labelled table for a classification run.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledFiles {
    pub train: PathBuf,
    pub dev: PathBuf,
    pub text_column: Column,
    pub label_column: Column,
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
}

/// Starts a new BiGS run in `dir`. `init` names a run (pretrained with
/// `--objective mlm`) whose encoder weights a classifier starts from.
pub fn start(
    dir: &Path,
    config: BigsConfig,
    opts: TrainOptions,
    objective: Objective,
    init: Option<&Path>,
    quiet: bool,
    device: Device,
) -> Result<TrainReport> {
    opts.check_common()?;
    train::ensure_new(dir)?;
    let (params, run_config) = match &objective {
        Objective::Mlm(data) => {
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
            let train_set = read_labeled(&files.train, &files.text_column, &files.label_column)?;
            let labels = train_set.label_names();
            ensure!(
                labels.len() >= 2,
                "{}: a classifier needs at least 2 labels, found {}",
                files.train.display(),
                labels.len()
            );
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
            let heads = match &base {
                Some(b) if matches!(b.config, ModelConfig::Bigs(c) if c.has_mlm_head()) => {
                    BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY
                }
                _ => BIGS_HEAD_CLASSIFY,
            };
            let config = BigsConfig {
                heads,
                n_classes: labels.len() as u32,
                ..encoder
            };
            let mut params = ParamSet::init(ModelConfig::Bigs(config), opts.seed)?;
            params.labels = labels;
            if let Some(b) = &base {
                copy_encoder(&mut params, b)?;
            }
            let mut rc = opts
                .write(RunConfig::new(ModelConfig::Bigs(config)))
                .with("objective", "classify")
                .with("train_file", absolute(&files.train)?.display())
                .with("dev_file", absolute(&files.dev)?.display())
                .with(
                    &fingerprint_key("train_file"),
                    table_fingerprint(&files.train)?,
                )
                .with(&fingerprint_key("dev_file"), table_fingerprint(&files.dev)?)
                .with("text_column", column_text(&files.text_column))
                .with("label_column", column_text(&files.label_column));
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

fn examples(set: &LabeledSet, labels: &[String], max_seq: usize) -> Result<(Vec<Example>, usize)> {
    let mut truncated = 0;
    let out = set
        .examples
        .iter()
        .filter_map(|e| model_text(&e.text, max_seq).map(|text| (e, text)))
        .map(|(e, text)| {
            let label = labels.iter().position(|l| *l == e.label).with_context(|| {
                format!(
                    "{}: line {}: label {} does not occur in the training file (labels: {})",
                    set.path.display(),
                    e.line,
                    shown(&e.label),
                    shown_list(labels)
                )
            })? as u32;
            truncated += (e.text.len() > text.len()) as usize;
            Ok(Example {
                ids: text.iter().map(|&b| b as u32).collect(),
                label,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        !out.is_empty(),
        "{}: no non-empty texts",
        set.path.display()
    );
    Ok((out, truncated))
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
                let train_set =
                    read_labeled(&files.train, &files.text_column, &files.label_column)?;
                let dev_set = read_labeled(&files.dev, &files.text_column, &files.label_column)?;
                let (train, cut) = examples(&train_set, labels, max_seq)?;
                let (dev, dev_cut) = examples(&dev_set, labels, max_seq)?;
                if cut + dev_cut > 0 && state.step == 0 {
                    eprintln!(
                        "note: {cut} training and {dev_cut} dev texts longer than T_max = {max_seq} bytes are cut to it"
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
        })
    }

    /// The job of a run being resumed, from its `config.txt`.
    pub(crate) fn resume(
        be: &B,
        run: &RunDir,
        ckpt: &Checkpoint,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let c = run.config();
        let objective = match c.get::<String>("objective")?.as_deref() {
            Some("mlm") => {
                // Opens the data once here for the check, once for the job.
                train::stored_split(run, opts.val_fraction)?;
                Objective::Mlm(train::stored_data(run)?)
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
                for key in ["train_file", "dev_file"] {
                    let file = path(key)?;
                    train::check_fingerprint(
                        run,
                        &fingerprint_key(key),
                        &file.display().to_string(),
                        &table_fingerprint(&file)?,
                    )?;
                }
                Objective::Classify(LabelledFiles {
                    train: path("train_file")?,
                    dev: path("dev_file")?,
                    text_column: col("text_column")?,
                    label_column: col("label_column")?,
                })
            }
            Some(other) => bail!("config.txt: unknown BiGS objective {}", shown(other)),
            None => bail!("config.txt has no train.objective entry"),
        };
        BigsJob::new(be, &ckpt.params, opts, &objective, &ckpt.state)
    }
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
                *cursor += 1;
                let texts: Vec<Vec<u32>> = picked.iter().map(|&i| train[i].ids.clone()).collect();
                let labels = picked.iter().map(|&i| train[i].label).collect();
                BigsBatch::from_sequences(&texts, Task::Classify { labels })
            }
        };
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

/// Masked windows of equal length.
fn mlm_batch<'a>(rows: impl Iterator<Item = &'a [u8]>, rng: &mut Rng) -> BigsBatch {
    let (mut texts, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let m = mask_spans(row, rng);
        texts.push(m.inputs);
        targets.extend(m.targets);
        weights.extend(m.weights);
    }
    BigsBatch::from_sequences(&texts, Task::Mlm { targets, weights })
}

/// Mean cross-entropy and accuracy over `dev`, in batches of similar length.
fn classify_eval<B: Backend>(
    be: &B,
    model: &mut BigsModel<B>,
    ws: &mut Workspace<B>,
    dev: &[Example],
    batch: usize,
) -> Result<(f64, f64)> {
    let mut idx: Vec<usize> = (0..dev.len()).collect();
    idx.sort_by_key(|&i| dev[i].ids.len());
    let (mut loss, mut correct) = (0.0, 0usize);
    for chunk in idx.chunks(batch) {
        let texts: Vec<Vec<u32>> = chunk.iter().map(|&i| dev[i].ids.clone()).collect();
        let labels = chunk.iter().map(|&i| dev[i].label).collect();
        let b = BigsBatch::from_sequences(&texts, Task::Classify { labels });
        let r = model.step(be, ws, &b, false, 1.0)?;
        loss += r.ce.loss * chunk.len() as f64;
        correct += r.correct;
    }
    Ok((loss / dev.len() as f64, correct as f64 / dev.len() as f64))
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
