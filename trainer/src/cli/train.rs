//! `kilobyte train`: a new run (MEGABYTE, or BiGS masked-byte pretraining
//! or classification) or `--resume` of one. Owns the flags and what they
//! mean; the training itself is `crate::family`'s (and the jobs and loop it
//! calls), which this only calls.

use super::model::ModelArgs;
use crate::backend;
use crate::bigs::jobs::{self, LabelledFiles};
use crate::data::tsv::Column;
use crate::family::{self, Start};
use crate::train::{DataSource, Eval, TrainOptions};
use anyhow::{anyhow, bail, ensure, Result};
use kilobyte_format::ModelConfig;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

/// What a BiGS run learns.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// Masked bytes of --data.
    Mlm,
    /// Labels of the --train/--dev tables.
    Classify,
}

/// How the GPU computes matrix products (`backend::Precision`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Bf16,
    Fp32,
}

impl Precision {
    fn name(self) -> &'static str {
        self.backend().name()
    }

    fn backend(self) -> backend::Precision {
        match self {
            Precision::Bf16 => backend::Precision::Bf16,
            Precision::Fp32 => backend::Precision::Fp32,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// BiGS: what to learn.
    #[arg(long, value_enum, default_value_t = Objective::Mlm)]
    pub objective: Objective,
    /// BiGS classify: the labelled training table (TSV, or CSV by extension; header line).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// BiGS classify: the labelled table scored at each evaluation (best-dev weights are kept).
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// BiGS classify: set aside this share of the training table's rows
    /// (drawn from the seed) and keep the weights that score best on them;
    /// --dev is then scored only once, on those weights, at the end, so its
    /// figure is clean [default: 0.1 without --dev, else none]
    #[arg(long)]
    pub holdout: Option<f64>,
    /// BiGS classify: orders of the n-gram logits, a linear classifier over
    /// the text's hashed n-grams whose logits add to the head's, as
    /// --ngram-orders ("none": off) [default: 2-5]
    #[arg(long, value_parser = super::model::parse_ngram_orders)]
    pub head_ngram_orders: Option<u32>,
    /// BiGS classify: rows per order of the n-gram logits, a multiple of 32
    /// (0: off) [default: 65,536 weights shared by the classes and orders,
    /// at least 2,048 rows per order; 8,192 for two classes]
    #[arg(long)]
    pub head_ngram_buckets: Option<u32>,
    /// BiGS classify: the text column, by header name or 0-based index.
    #[arg(long, default_value = crate::data::tsv::DEFAULT_TEXT_COLUMN)]
    pub text_column: Column,
    /// BiGS classify: the label column, by header name or 0-based index.
    #[arg(long, default_value = crate::data::tsv::DEFAULT_LABEL_COLUMN)]
    pub label_column: Column,
    /// BiGS: start from this run's weights (e.g. an --objective mlm run;
    /// a classifier then skips its own pretraining).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// BiGS classify: the share of the time budget (of --steps without
    /// --time-limit) spent first on masked-byte pretraining on the training
    /// table's texts, in RUN/pretrain; the fine-tuning gets the rest. 0
    /// trains the classifier from scratch (the default: at the budgets
    /// measured so far pretraining lost; README) and --init skips it.
    #[arg(long)]
    pub pretrain_fraction: Option<f64>,
    /// Training files or directories (the last --val-fraction of the bytes validate).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Run directory for checkpoints, metrics and the best weights.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint (all settings come from it).
    #[arg(long, conflicts_with_all = ["data", "run"])]
    pub resume: Option<PathBuf>,
    /// Optimizer steps [default: 1000; unbounded with --time-limit, which
    /// then ends the run]
    #[arg(long)]
    pub steps: Option<u64>,
    /// [default: 8; 16 for a BiGS classifier]
    #[arg(long)]
    pub batch: Option<usize>,
    /// Bytes per training window (default: T_max, capped at 512; BiGS
    /// classification always pads to the batch's longest text).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Peak learning rate [default: 2e-3; 1e-3 for a BiGS classifier]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warm-up updates [default: 50; 300 for a BiGS classifier]
    #[arg(long)]
    pub warmup: Option<u64>,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    /// BiGS only: dropout rate on the embedding output, each layer's branch
    /// output and the pooled vector the classifier reads (0: off)
    /// [default: 0]
    #[arg(long)]
    pub dropout: Option<f32>,
    /// BiGS classifiers only: while fine-tuning, also train the masked-byte
    /// head on the batch's texts (the classifier then reads them masked),
    /// its loss weighted by this (0: off) [default: 1 for a BiGS
    /// classifier, else 0]
    #[arg(long)]
    pub mlm_weight: Option<f32>,
    /// Evaluate, and keep as the best weights, a moving average of the
    /// weights with this decay per update (for example 0.999; 0: off)
    /// [default: 0]
    #[arg(long)]
    pub ema: Option<f32>,
    /// Evaluate every this many updates (and at the end) [default: 200; 500
    /// for a BiGS classifier]
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Validation windows per evaluation (0: all).
    #[arg(long, default_value_t = 64)]
    pub eval_windows: usize,
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Stop with a checkpoint after this many seconds of training.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// With --time-limit, pace the learning-rate schedule by --steps alone
    /// (the schedule then stops part-way at the deadline; for comparisons)
    #[arg(long)]
    pub step_schedule: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// GPU matrix products: bf16 (bf16 operands, fp32 accumulation; the
    /// default) or fp32 (TF32 off, for parity checks). Weights and optimizer
    /// state are fp32 either way.
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Only print the final summary.
    #[arg(long)]
    pub quiet: bool,
}

/// The defaults of the flags whose best value depends on what is trained.
struct Defaults {
    batch: usize,
    lr: f64,
    warmup: u64,
    eval_every: u64,
    dropout: f32,
    mlm_weight: f32,
    ema: f32,
}

impl Defaults {
    const GENERAL: Defaults = Defaults {
        batch: 8,
        lr: 2e-3,
        warmup: 50,
        eval_every: 200,
        dropout: 0.0,
        mlm_weight: 0.0,
        ema: 0.0,
    };
    /// The classification recipe every SST-2 and speaker-task figure in
    /// the README was measured with (sentences are short, so a batch of 16
    /// costs what 8 windows do). Dropout stays off: on seed 0 at 600 s, 0.1
    /// gained 1.3 points on SST-2 but lost 5.5 on the speaker task (README,
    /// "Dropout for BiGS classifiers"). The joint masked-byte loss is on:
    /// it keeps a small table from being memorised (README, "Long texts
    /// and the joint masked-byte loss").
    const BIGS_CLASSIFY: Defaults = Defaults {
        batch: 16,
        lr: 1e-3,
        warmup: 300,
        eval_every: 500,
        dropout: 0.0,
        mlm_weight: 1.0,
        ema: 0.0,
    };
}

/// The backend device from `--device` and `--precision`.
fn device(a: &TrainArgs) -> Result<backend::Device> {
    Ok(match (a.device, a.precision) {
        (Device::Cpu, Some(p @ Precision::Bf16)) => {
            bail!("--precision {}: the CPU trains in fp32 only", p.name())
        }
        (Device::Cpu, _) => backend::Device::Cpu,
        (Device::Cuda, p) => backend::Device::Cuda(p.unwrap_or(Precision::Bf16).backend()),
    })
}

pub fn run(a: TrainArgs) -> Result<()> {
    super::threads::on_rayon_workers(a.threads, || train(a))
}

fn train(a: TrainArgs) -> Result<()> {
    let device = device(&a)?;
    let report = if let Some(dir) = &a.resume {
        family::resume(dir, a.quiet, device)?
    } else {
        let dir = a
            .run
            .as_ref()
            .ok_or_else(|| anyhow!("--run DIR is required (or --resume DIR)"))?;
        let model = a.model.config()?;
        let d = match model {
            ModelConfig::Bigs(_) if a.objective == Objective::Classify => Defaults::BIGS_CLASSIFY,
            _ => Defaults::GENERAL,
        };
        let opts = TrainOptions {
            steps: a.steps.unwrap_or(if a.time_limit.is_some() {
                u64::MAX
            } else {
                1000
            }),
            batch: a.batch.unwrap_or(d.batch),
            seq: a.seq.unwrap_or((model.max_seq() as usize).min(512)),
            accum: a.accum,
            lr: a.lr.unwrap_or(d.lr),
            warmup: a.warmup.unwrap_or(d.warmup),
            weight_decay: a.weight_decay,
            grad_clip: a.grad_clip,
            dropout: a.dropout.unwrap_or(d.dropout),
            mlm_weight: a.mlm_weight.unwrap_or(d.mlm_weight),
            ema: a.ema.unwrap_or(d.ema),
            eval_every: a.eval_every.unwrap_or(d.eval_every),
            eval_windows: a.eval_windows,
            checkpoint_every: a.checkpoint_every,
            log_every: a.log_every,
            seed: a.seed,
            val_fraction: a.val_fraction,
            time_limit_s: a.time_limit,
            step_schedule: a.step_schedule,
        };
        crate::budget::check_here(&model, opts.batch, opts.seq)?;
        let classifier = model.family() == kilobyte_format::ModelFamily::Bigs
            && a.objective == Objective::Classify;
        if a.holdout.is_some() && !classifier {
            bail!("--holdout: only BiGS classifiers (--model bigs --objective classify) hold rows out");
        }
        if (a.head_ngram_orders.is_some() || a.head_ngram_buckets.is_some()) && !classifier {
            bail!("--head-ngram-orders/--head-ngram-buckets: only BiGS classifiers (--model bigs --objective classify) have n-gram logits");
        }
        if let Some(n) = a.head_ngram_buckets {
            let most = kilobyte_format::config::NGRAM_MAX_BUCKETS / 32 * 32;
            ensure!(
                n <= most && n.is_multiple_of(32),
                "--head-ngram-buckets {n}: must be a multiple of 32 (whole quantisation blocks) up to {most}, or 0 for none"
            );
        }
        match model {
            ModelConfig::Bigs(config) => {
                let objective = match a.objective {
                    Objective::Mlm => {
                        if a.data.is_empty() {
                            bail!("--data PATH... is required for --objective mlm: the bytes to pretrain on");
                        }
                        jobs::Objective::Mlm(DataSource::Paths(a.data.clone()))
                    }
                    Objective::Classify => {
                        let Some(train_file) = &a.train else {
                            bail!("--objective classify needs --train FILE (a labelled table), and --dev FILE or --holdout F");
                        };
                        let holdout = match (a.holdout, &a.dev) {
                            (Some(f), _) => {
                                jobs::check_holdout(f)?;
                                f
                            }
                            (None, None) => jobs::DEFAULT_HOLDOUT,
                            (None, Some(_)) => 0.0,
                        };
                        jobs::Objective::Classify(LabelledFiles {
                            train: train_file.clone(),
                            dev: a.dev.clone(),
                            holdout,
                            text_column: a.text_column.clone(),
                            label_column: a.label_column.clone(),
                            head_ngram: jobs::HeadNgramChoice {
                                orders: a.head_ngram_orders,
                                buckets: a.head_ngram_buckets,
                            },
                        })
                    }
                };
                let pretrain_fraction = match (a.pretrain_fraction, a.objective, &a.init) {
                    (Some(f), _, _) => f,
                    (None, Objective::Classify, None) => jobs::DEFAULT_PRETRAIN_FRACTION,
                    (None, _, _) => 0.0,
                };
                let what = Start::Bigs {
                    config,
                    objective,
                    init: a.init.clone(),
                    pretrain_fraction,
                };
                family::start(dir, what, opts, a.quiet, device)?
            }
            ModelConfig::Megabyte(config) => {
                if a.pretrain_fraction.is_some() {
                    bail!("--pretrain-fraction: only BiGS classifiers pretrain first");
                }
                if a.data.is_empty() {
                    bail!("--data PATH... is required: the files or directories to train on");
                }
                let what = Start::Megabyte {
                    config,
                    data: DataSource::Paths(a.data.clone()),
                };
                family::start(dir, what, opts, a.quiet, device)?
            }
        }
    };
    let (val, best) = match report.final_val {
        Some(Eval {
            accuracy: Some(acc),
            ..
        }) => (
            format!("accuracy {:.2}%", 100.0 * acc),
            report
                .best_score
                .map(|e| format!("{:.2}%", 100.0 * (1.0 - e)))
                .unwrap_or("-".into()),
        ),
        other => {
            let bpb = |v: f64| format!("{:.4} bpb", v / std::f64::consts::LN_2);
            (
                other.map(|e| bpb(e.loss)).unwrap_or("-".into()),
                report.best_score.map(bpb).unwrap_or("-".into()),
            )
        }
    };
    println!(
        "{} after {} steps in {:.1} s ({:.0} bytes/s): validation {val}, best {best}",
        if report.interrupted {
            "stopped"
        } else {
            "done"
        },
        report.steps,
        report.elapsed_s,
        report.bytes_per_s
    );
    let dir = a.resume.as_ref().or(a.run.as_ref());
    if let (false, Some(dir)) = (report.interrupted, dir) {
        if let Some((acc, n, dev)) = jobs::dev_of_held_out_run(dir)? {
            println!(
                "{}: accuracy {:.2}% on {n} examples with the weights chosen on the held-out rows",
                dev.display(),
                100.0 * acc
            );
        }
    }
    Ok(())
}
