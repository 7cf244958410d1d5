//! `kilobyte train`, `eval`, `export`, `plot` and `demo`.

use crate::backend::{self, CpuBackend};
use crate::bigs::jobs::{LabelledFiles, Objective};
use crate::checkpoint::{load_best, load_params, BEST_FILE, CONFIG_FILE, MODEL_FILE};
use crate::data::{Corpus, Split, ValBatches};
use crate::megabyte::MegabyteModel;
use crate::params::{parse_kbm, read_kbm, ParamSet};
use crate::train::{self, DataSource, Eval, TrainOptions};
use anyhow::{anyhow, bail, Context, Result};
use kilobyte_format::{BigsConfig, DType, MegabyteConfig, ModelConfig};
use kilobyte_runtime::{ArenaSpec, Megabyte, Sampler, SamplerConfig};
use std::path::{Path, PathBuf};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Model family: megabyte or bigs.
    #[arg(long, default_value = "megabyte")]
    pub model: String,
    /// BiGS: what to learn: mlm (masked bytes of --data) or classify (--train/--dev tables).
    #[arg(long, default_value = "mlm")]
    pub objective: String,
    /// BiGS classify: the labelled training table (TSV, or CSV by extension; header line).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// BiGS classify: the labelled table scored at each evaluation (best-dev weights are kept).
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// BiGS classify: the text column, by header name or 0-based index.
    #[arg(long, default_value = crate::data::tsv::DEFAULT_TEXT_COLUMN)]
    pub text_column: String,
    /// BiGS classify: the label column, by header name or 0-based index.
    #[arg(long, default_value = crate::data::tsv::DEFAULT_LABEL_COLUMN)]
    pub label_column: String,
    /// BiGS: start from this run's weights (e.g. an --objective mlm run).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// BiGS width d.
    #[arg(long)]
    pub d_model: Option<u32>,
    /// BiGS expanded width e.
    #[arg(long)]
    pub d_expand: Option<u32>,
    /// BiGS layers.
    #[arg(long)]
    pub layers: Option<u32>,
    /// BiGS complex modes per SSM kernel.
    #[arg(long)]
    pub modes: Option<u32>,
    /// BiGS SSM kernels per direction and layer.
    #[arg(long)]
    pub ssm_kernels: Option<u32>,
    /// Preset from MODELS.md: micro, small or base; the shape flags below override it.
    #[arg(long, default_value = "micro")]
    pub preset: String,
    #[arg(long)]
    pub patch_size: Option<u32>,
    #[arg(long)]
    pub d_global: Option<u32>,
    #[arg(long)]
    pub layers_global: Option<u32>,
    #[arg(long)]
    pub heads_global: Option<u32>,
    #[arg(long)]
    pub d_local: Option<u32>,
    #[arg(long)]
    pub layers_local: Option<u32>,
    #[arg(long)]
    pub heads_local: Option<u32>,
    /// T_max: the longest context the model is trained for.
    #[arg(long)]
    pub max_seq: Option<u32>,
    #[command(flatten)]
    pub ngram: super::NgramArgs,
    #[command(flatten)]
    pub local_ngram: super::LocalNgramArgs,
    /// Training files or directories (the last --val-fraction of the bytes validate).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Run directory for checkpoints, metrics and the best weights.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint (all settings come from it).
    #[arg(long, conflicts_with_all = ["data", "run"])]
    pub resume: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Bytes per training window (default: T_max, capped at 512; BiGS
    /// classification always pads to the batch's longest text).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 50)]
    pub warmup: u64,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    #[arg(long, default_value_t = 200)]
    pub eval_every: u64,
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
    #[arg(long)]
    pub precision: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Only print the final summary.
    #[arg(long)]
    pub quiet: bool,
}

fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        crate::budget::check_threads(n)?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow!("--threads {n}: {e}"))?;
    }
    Ok(())
}

/// The backend device from `--device` and `--precision`.
fn device(a: &TrainArgs) -> Result<backend::Device> {
    let precision = match a.precision.as_deref() {
        None | Some("bf16") => backend::Precision::Bf16,
        Some("fp32") => backend::Precision::Fp32,
        Some(other) => bail!("--precision {other}: expected bf16 or fp32"),
    };
    Ok(match a.device {
        Device::Cpu if a.precision.as_deref().is_some_and(|p| p != "fp32") => {
            bail!(
                "--precision {}: the CPU trains in fp32 only",
                a.precision.as_deref().unwrap_or("")
            )
        }
        Device::Cpu => backend::Device::Cpu,
        Device::Cuda => backend::Device::Cuda(precision),
    })
}

/// The MEGABYTE config from a preset name and override flags.
fn megabyte_config(a: &TrainArgs) -> Result<MegabyteConfig> {
    let mut c = MegabyteConfig::by_name(&a.preset).ok_or_else(|| {
        anyhow!(
            "unknown preset {:?} (expected micro, small or base)",
            a.preset
        )
    })?;
    let set = |slot: &mut u32, v: Option<u32>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut c.patch_size, a.patch_size);
    set(&mut c.d_global, a.d_global);
    set(&mut c.layers_global, a.layers_global);
    set(&mut c.heads_global, a.heads_global);
    set(&mut c.d_local, a.d_local);
    set(&mut c.layers_local, a.layers_local);
    set(&mut c.heads_local, a.heads_local);
    set(&mut c.max_seq, a.max_seq);
    a.ngram.apply(&mut c.ngram);
    a.local_ngram.apply(&mut c.local_ngram);
    c.validate()?;
    Ok(c)
}

/// The BiGS config from a preset name and override flags.
fn bigs_config(a: &TrainArgs) -> Result<BigsConfig> {
    let mut c = BigsConfig::by_name(&a.preset).ok_or_else(|| {
        anyhow!(
            "unknown preset {:?} (expected micro, small or base)",
            a.preset
        )
    })?;
    for (slot, v) in [
        (&mut c.d_model, a.d_model),
        (&mut c.d_expand, a.d_expand),
        (&mut c.layers, a.layers),
        (&mut c.n_modes, a.modes),
        (&mut c.ssm_kernels, a.ssm_kernels),
        (&mut c.max_seq, a.max_seq),
    ] {
        if let Some(v) = v {
            *slot = v;
        }
    }
    a.ngram.apply(&mut c.ngram);
    c.validate()?;
    Ok(c)
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    let device = device(&a)?;
    set_threads(a.threads)?;
    if a.model != "megabyte" && a.model != "bigs" {
        bail!("--model {}: expected megabyte or bigs", a.model);
    }
    let report = if let Some(dir) = &a.resume {
        train::resume(dir, a.quiet, device)?
    } else {
        let dir = a
            .run
            .as_ref()
            .ok_or_else(|| anyhow!("--run DIR is required (or --resume DIR)"))?;
        let max_seq = if a.model == "bigs" {
            bigs_config(&a)?.max_seq
        } else {
            megabyte_config(&a)?.max_seq
        };
        let opts = TrainOptions {
            steps: a.steps,
            batch: a.batch,
            seq: a.seq.unwrap_or((max_seq as usize).min(512)),
            accum: a.accum,
            lr: a.lr,
            warmup: a.warmup,
            weight_decay: a.weight_decay,
            grad_clip: a.grad_clip,
            eval_every: a.eval_every,
            eval_windows: a.eval_windows,
            checkpoint_every: a.checkpoint_every,
            log_every: a.log_every,
            seed: a.seed,
            val_fraction: a.val_fraction,
            time_limit_s: a.time_limit,
            step_schedule: a.step_schedule,
        };
        let model = if a.model == "bigs" {
            ModelConfig::Bigs(bigs_config(&a)?)
        } else {
            ModelConfig::Megabyte(megabyte_config(&a)?)
        };
        crate::budget::check_here(&model, opts.batch, opts.seq)?;
        if a.model == "bigs" {
            let objective = match a.objective.as_str() {
                "mlm" => {
                    if a.data.is_empty() {
                        bail!("--data PATH... is required for --objective mlm: the bytes to pretrain on");
                    }
                    Objective::Mlm(DataSource::Paths(a.data.clone()))
                }
                "classify" => {
                    let (Some(train_file), Some(dev)) = (&a.train, &a.dev) else {
                        bail!("--objective classify needs --train FILE and --dev FILE (labelled tables)");
                    };
                    Objective::Classify(LabelledFiles {
                        train: train_file.clone(),
                        dev: dev.clone(),
                        text_column: a.text_column.parse().expect("infallible"),
                        label_column: a.label_column.parse().expect("infallible"),
                    })
                }
                other => bail!("--objective {other}: expected mlm or classify"),
            };
            crate::bigs::jobs::start(
                dir,
                bigs_config(&a)?,
                opts,
                objective,
                a.init.as_deref(),
                a.quiet,
                device,
            )?
        } else {
            if a.data.is_empty() {
                bail!("--data PATH... is required: the files or directories to train on");
            }
            train::start(
                dir,
                megabyte_config(&a)?,
                opts,
                DataSource::Paths(a.data.clone()),
                a.quiet,
                device,
            )?
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
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A .kbm model (evaluated through the runtime) or a run directory (through the trainer).
    pub model: PathBuf,
    /// The data file(s) to score (bits per byte).
    #[arg(long, num_args = 1.., required_unless_present = "dev")]
    pub data: Vec<PathBuf>,
    /// A labelled table (TSV/CSV with a header) to score a BiGS classifier's accuracy on.
    #[arg(long, conflicts_with = "data")]
    pub dev: Option<PathBuf>,
    /// With --dev: the text column, by header name or 0-based index.
    #[arg(long, default_value = crate::data::tsv::DEFAULT_TEXT_COLUMN)]
    pub text_column: String,
    /// With --dev: the label column, by header name or 0-based index.
    #[arg(long, default_value = crate::data::tsv::DEFAULT_LABEL_COLUMN)]
    pub label_column: String,
    /// Score the last fraction of the bytes (the validation split); 1 scores everything.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Bytes per window (default: the run's training window, or 256 for a .kbm).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Cap on windows scored (0: all).
    #[arg(long, default_value_t = 0)]
    pub windows: usize,
    /// .kbm: keep the global key/value cache in int8, as small devices do.
    #[arg(long)]
    pub i8_cache: bool,
}

/// Validation bits per byte of a .kbm through the runtime: each window is
/// scored from an empty context, as the trainer scores it.
pub fn eval_kbm(
    path: &Path,
    val: &crate::data::Subset,
    spec: ArenaSpec,
    windows: usize,
) -> Result<f64> {
    let seq = spec.max_context;
    let bytes = read_kbm(path)?;
    let file = parse_kbm(path, &bytes)?;
    let model = Megabyte::from_file(&file).with_context(|| path.display().to_string())?;
    let mut arena = super::input::arena(
        spec.arena_bytes(&model.config),
        &format!("{} (--seq {seq})", path.display()),
    )?;
    let mut session = model
        .session(&mut arena, spec)
        .map_err(|e| anyhow!("--seq {seq}: {e}"))?;
    let batches = ValBatches::new(val.clone(), seq, 1)?
        .stride(seq)
        .max_windows((windows > 0).then_some(windows));
    let (mut nats, mut count) = (0.0f64, 0u64);
    for batch in batches {
        session.reset().map_err(|e| anyhow!("{e}"))?;
        let row = batch.row(0);
        for (t, &b) in row.iter().enumerate() {
            let logits = session.logits();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
            nats += z.ln() - (logits[b as usize] - max) as f64;
            count += 1;
            if t + 1 < row.len() {
                session.push(b).map_err(|e| anyhow!("{e}"))?;
            }
        }
    }
    if count == 0 {
        bail!("no full window of {seq} bytes to score");
    }
    if !nats.is_finite() {
        bail!(
            "{}: the model's predictions are not finite ({nats} nats): its weights are not finite",
            path.display()
        );
    }
    Ok(nats / count as f64 / std::f64::consts::LN_2)
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    if let Some(dev) = &a.dev {
        let text: crate::data::tsv::Column = a.text_column.parse().expect("infallible");
        let label: crate::data::tsv::Column = a.label_column.parse().expect("infallible");
        let (acc, n) = if a.model.is_dir() {
            let (params, what) = run_weights(&a.model, false)?;
            eprintln!("scoring the {what} weights of {}", a.model.display());
            crate::bigs::jobs::evaluate_run_params(&params, dev, &text, &label)?
        } else {
            super::bigs::eval_kbm(&a.model, dev, &text, &label)?
        };
        println!(
            "accuracy {:.2}% on {n} examples of {}",
            100.0 * acc,
            dev.display()
        );
        return Ok(());
    }
    if !a.model.is_dir() && super::bigs::is_bigs_kbm(&a.model)? {
        bail!(
            "{} is a BiGS model: score it on a labelled table with --dev FILE",
            a.model.display()
        );
    }
    let v = a.val_fraction;
    // `!(..)` so that NaN is refused too.
    if !(v > 0.0 && v <= 1.0) {
        bail!("--val-fraction {v}: must be in (0, 1] (1 scores all of the data)");
    }
    let val = if v == 1.0 {
        Split::by_fraction(Corpus::open(&a.data)?, 0.0)?.train
    } else {
        Split::by_fraction(Corpus::open(&a.data)?, v)?.val
    };
    let bpb = if a.model.is_dir() {
        let (params, what) = run_weights(&a.model, false)?;
        let seq_default: Option<usize> = crate::checkpoint::RunConfig::parse(
            &std::fs::read_to_string(a.model.join(crate::checkpoint::CONFIG_FILE))
                .unwrap_or_default(),
        )
        .ok()
        .and_then(|c| c.get("seq").ok().flatten());
        let seq = a.seq.or(seq_default).unwrap_or(256);
        let be = CpuBackend::<f32>::new();
        let mut model = MegabyteModel::new(&be, &params)?;
        let mut ws = model.workspace(&be, 8, seq)?;
        eprintln!("scoring the {what} weights of {}", a.model.display());
        train::evaluate(&be, &mut model, &mut ws, &val, a.windows)? / std::f64::consts::LN_2
    } else {
        let spec = ArenaSpec::new(a.seq.unwrap_or(256));
        let spec = if a.i8_cache {
            spec.with_i8_cache()
        } else {
            spec
        };
        eval_kbm(&a.model, &val, spec, a.windows)?
    };
    println!(
        "{bpb:.5} bits per byte on {} bytes of {}",
        val.len(),
        a.data
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// The best-validation weights of a run (or the last checkpoint's with
/// `last`). A `best.safetensors` that is there but unreadable is an error:
/// falling back would pass other weights off as the best.
fn run_weights(dir: &Path, last: bool) -> Result<(ParamSet, &'static str)> {
    if !dir.join(CONFIG_FILE).is_file() {
        bail!(
            "{}: not a kilobyte run directory (no {CONFIG_FILE}); give a run made by `kilobyte train` or a .kbm file",
            dir.display()
        );
    }
    if !last && std::fs::symlink_metadata(dir.join(BEST_FILE)).is_ok() {
        let (params, _) = load_best(dir)?;
        return Ok((params, "best-validation"));
    }
    let (params, _) =
        load_params(&dir.join(MODEL_FILE)).with_context(|| dir.display().to_string())?;
    Ok((params, "last-checkpoint"))
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The run directory.
    pub run: PathBuf,
    /// Dtype of weight matrices: f32, f16, bf16, q8 or q4.
    #[arg(long, default_value = "q8", value_parser = super::parse_dtype)]
    pub dtype: DType,
    /// Dtype of embeddings (default: q8 under q4, else --dtype).
    #[arg(long, value_parser = super::parse_dtype)]
    pub embeddings: Option<DType>,
    /// Export the last checkpoint instead of the best-validation weights.
    #[arg(long)]
    pub last: bool,
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    let (params, what) = run_weights(&a.run, a.last)?;
    let embeddings = a.embeddings.unwrap_or(if a.dtype == DType::Q4 {
        DType::Q8
    } else {
        a.dtype
    });
    let writer = params.to_writer(a.dtype, embeddings)?;
    writer
        .write(&a.output)
        .with_context(|| a.output.display().to_string())?;
    let len = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({len} bytes) from the {what} weights of {}",
        a.output.display(),
        a.run.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// The run directory.
    pub run: PathBuf,
    /// Output SVG (default: RUN/loss.svg).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn run_plot(a: PlotArgs) -> Result<()> {
    let out = a.output.unwrap_or_else(|| a.run.join("loss.svg"));
    crate::plot::plot_metrics(&a.run.join(crate::checkpoint::METRICS_FILE), &out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Train on these files or directories instead of the built-in corpus.
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Seconds of training.
    #[arg(long, default_value_t = 150.0)]
    pub time: f64,
    /// Run directory (default: a fresh one under the system temp directory).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Bytes of sample text to generate.
    #[arg(long, default_value_t = 300)]
    pub sample: usize,
}

/// Trains the micro preset on CPU for a fixed time, exports q8, scores it
/// through the runtime and prints a sample.
pub fn run_demo(a: DemoArgs) -> Result<()> {
    train::check_seconds("--time", a.time)?;
    let run = match &a.run {
        Some(dir) => dir.clone(),
        // Created exclusively under a random name: a name planted in the
        // shared temp directory (a symlink to a victim) is never followed.
        None => tempfile::Builder::new()
            .prefix("kilobyte-demo-")
            .tempdir()
            .context("a directory for the demo run under the system temp directory")?
            .keep(),
    };
    let data = if a.data.is_empty() {
        DataSource::Bytes("kilobyte-source".into(), crate::data::builtin_corpus())
    } else {
        DataSource::Paths(a.data.clone())
    };
    let config = MegabyteConfig {
        max_seq: 128,
        ..MegabyteConfig::MICRO
    };
    let opts = TrainOptions {
        steps: 100_000,
        batch: 16,
        seq: 128,
        lr: 3e-3,
        warmup: 30,
        eval_every: 0,
        eval_windows: 64,
        checkpoint_every: 0,
        log_every: 25,
        time_limit_s: Some(a.time),
        ..TrainOptions::default()
    };
    // The cosine schedule needs a horizon: size it to what fits in the time.
    let probe_bps = 25_000.0;
    let steps = ((a.time * probe_bps) / (opts.batch * opts.seq) as f64).max(50.0) as u64;
    let opts = TrainOptions {
        steps,
        eval_every: steps / 4,
        checkpoint_every: steps / 4,
        ..opts
    };
    eprintln!(
        "demo: training MEGABYTE micro (T = 128) for {:.0} s in {}",
        a.time,
        run.display()
    );
    let report = train::start(
        &run,
        config,
        opts,
        data.clone(),
        false,
        backend::Device::Cpu,
    )?;
    let model_path = run.join("demo-q8.kbm");
    let (params, _) = run_weights(&run, false)?;
    params
        .to_writer(DType::Q8, DType::Q8)?
        .write(&model_path)
        .with_context(|| model_path.display().to_string())?;
    let split = match &data {
        DataSource::Paths(p) => Split::by_fraction(Corpus::open(p)?, 0.1)?,
        DataSource::Bytes(n, b) => Split::by_fraction(Corpus::from_bytes(n, b.clone()), 0.1)?,
    };
    let bpb = eval_kbm(&model_path, &split.val, ArenaSpec::new(128), 64)?;
    println!(
        "trained {} steps in {:.0} s ({:.0} bytes/s); q8 model {} ({} bytes): validation {bpb:.3} bits per byte",
        report.steps,
        report.elapsed_s,
        report.bytes_per_s,
        model_path.display(),
        std::fs::metadata(&model_path).map(|m| m.len()).unwrap_or(0)
    );
    let bytes = read_kbm(&model_path)?;
    let file = parse_kbm(&model_path, &bytes)?;
    let model = Megabyte::from_file(&file).map_err(|e| anyhow!("{e}"))?;
    let spec = ArenaSpec::new(128);
    let mut arena = vec![0u8; spec.arena_bytes(&model.config)];
    let mut s = model
        .session(&mut arena, spec)
        .map_err(|e| anyhow!("{e}"))?;
    let prompt = b"The runtime ";
    s.prefill(prompt).map_err(|e| anyhow!("{e}"))?;
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: 0.7,
        top_k: 0,
        top_p: 0.9,
        seed: 1,
    })
    .map_err(|e| anyhow!("{e}"))?;
    let mut text = prompt.to_vec();
    for _ in 0..a.sample {
        let b = sampler.sample(s.logits());
        text.push(b);
        s.push(b).map_err(|e| anyhow!("{e}"))?;
    }
    println!("sample:\n{}", String::from_utf8_lossy(&text));
    println!(
        "\nnext: kilobyte generate {} --prompt \"...\"; kilobyte plot {}",
        model_path.display(),
        run.display()
    );
    let _ = ModelConfig::Megabyte(config);
    Ok(())
}
