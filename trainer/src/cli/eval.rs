//! `kilobyte eval`: bits per byte of a MEGABYTE `.kbm` (through the
//! runtime) or run directory (through the trainer) on some data, and the
//! accuracy of a BiGS classifier (`.kbm` or run) on a labelled table. Owns
//! the scoring loops over the runtime's sessions and encoders; the trainer's
//! side is `crate::megabyte::job::evaluate`'s and `crate::bigs::jobs`'s.

use super::open::{label_name, run_weights, with_kbm, Head, Kbm};
use crate::backend::CpuBackend;
use crate::data::tsv::{read_labeled, Column};
use crate::data::{Corpus, Split, Subset, ValBatches};
use crate::megabyte::{self, MegabyteModel};
use crate::text::{shown, shown_list};
use anyhow::{bail, Context, Result};
use kilobyte_format::ModelConfig;
use kilobyte_runtime::ArenaSpec;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
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
    pub text_column: Column,
    /// With --dev: the label column, by header name or 0-based index.
    #[arg(long, default_value = crate::data::tsv::DEFAULT_LABEL_COLUMN)]
    pub label_column: Column,
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

pub fn run(a: Args) -> Result<()> {
    if let Some(dev) = &a.dev {
        let (acc, n) = if a.model.is_dir() {
            let (params, what) = run_weights(&a.model, false)?;
            eprintln!("scoring the {what} weights of {}", a.model.display());
            crate::bigs::jobs::evaluate_run_params(&params, dev, &a.text_column, &a.label_column)?
        } else {
            accuracy_kbm(&a.model, dev, &a.text_column, &a.label_column)?
        };
        println!(
            "accuracy {:.2}% on {n} examples of {}",
            100.0 * acc,
            dev.display()
        );
        return Ok(());
    }
    if a.model.is_dir() {
        let val = validation(&a)?;
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
        let bpb = megabyte::job::evaluate(&be, &mut model, &mut ws, &val, a.windows)?
            / std::f64::consts::LN_2;
        return report(&a, &val, bpb);
    }
    with_kbm(&a.model, |kbm| {
        if let ModelConfig::Bigs(_) = kbm.file.config() {
            bail!(
                "{} is a BiGS model: score it on a labelled table with --dev FILE",
                a.model.display()
            );
        }
        let val = validation(&a)?;
        let spec = ArenaSpec::new(a.seq.unwrap_or(256));
        let spec = if a.i8_cache {
            spec.with_i8_cache()
        } else {
            spec
        };
        report(&a, &val, bits_per_byte(kbm, &val, spec, a.windows)?)
    })
}

/// The bytes `--data` and `--val-fraction` choose.
fn validation(a: &Args) -> Result<Subset> {
    let v = a.val_fraction;
    // `!(..)` so that NaN is refused too.
    if !(v > 0.0 && v <= 1.0) {
        bail!("--val-fraction {v}: must be in (0, 1] (1 scores all of the data)");
    }
    Ok(if v == 1.0 {
        Split::by_fraction(Corpus::open(&a.data)?, 0.0)?.train
    } else {
        Split::by_fraction(Corpus::open(&a.data)?, v)?.val
    })
}

fn report(a: &Args, val: &Subset, bpb: f64) -> Result<()> {
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

/// Validation bits per byte of a MEGABYTE `.kbm` through the runtime: each
/// window is scored from an empty context, as the trainer scores it.
pub fn bits_per_byte(kbm: &Kbm<'_>, val: &Subset, spec: ArenaSpec, windows: usize) -> Result<f64> {
    let seq = spec.max_context;
    let model = kbm.megabyte()?;
    kbm.session(&model, spec, &format!("--seq {seq}"), |session| {
        let batches = ValBatches::new(val.clone(), seq, 1)?
            .stride(seq)
            .max_windows((windows > 0).then_some(windows));
        let (mut nats, mut count) = (0.0f64, 0u64);
        for batch in batches {
            session.reset()?;
            let row = batch.row(0);
            for (t, &b) in row.iter().enumerate() {
                let logits = session.logits();
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let z: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
                nats += z.ln() - (logits[b as usize] - max) as f64;
                count += 1;
                if t + 1 < row.len() {
                    session.push(b)?;
                }
            }
        }
        if count == 0 {
            bail!("no full window of {seq} bytes to score");
        }
        if !nats.is_finite() {
            bail!(
                "{}: the model's predictions are not finite ({nats} nats): its weights are not finite",
                kbm.name()
            );
        }
        Ok(nats / count as f64 / std::f64::consts::LN_2)
    })
}

/// Accuracy of a BiGS classifier `.kbm` on a labelled table, through the
/// runtime. Label names in the table must be the model's.
fn accuracy_kbm(path: &Path, dev: &Path, text: &Column, label: &Column) -> Result<(f64, usize)> {
    let set = read_labeled(dev, text, label)?;
    with_kbm(path, |kbm| {
        let m = kbm.bigs(Head::Classification)?;
        let classes = m.config.n_classes as usize;
        let max = m.config.max_seq as usize;
        let names: Vec<String> = (0..classes).map(|i| label_name(&m, i)).collect();
        let texts: Vec<_> = set
            .examples
            .iter()
            .filter(|e| !e.text.is_empty())
            .map(|e| (e, &e.text[..]))
            .collect();
        if texts.is_empty() {
            bail!("{}: no non-empty texts", dev.display());
        }
        let long = texts.iter().filter(|(_, t)| t.len() > max).count();
        if long > 0 {
            eprintln!("note: {long} dev texts are longer than T_max = {max} bytes: each is read in windows of {max} bytes");
        }
        let longest = texts
            .iter()
            .map(|(_, t)| t.len())
            .max()
            .unwrap_or(1)
            .min(max);
        kbm.encoder(&m, longest, |enc| {
            let (mut correct, mut not_finite) = (0, 0);
            for &(e, text) in &texts {
                let at = || format!("{}: line {}", dev.display(), e.line);
                let want = names.iter().position(|n| *n == e.label).with_context(|| {
                    format!(
                        "{}: label {} is not one of the model's ({})",
                        at(),
                        shown(&e.label),
                        shown_list(&names)
                    )
                })?;
                match enc.classify(text) {
                    Ok(c) => correct += (c.class == want) as usize,
                    // A NaN prediction is no prediction: it counts as wrong.
                    Err(kilobyte_runtime::RuntimeError::NotFinite { .. }) => not_finite += 1,
                    Err(err) => return Err(err).with_context(at),
                }
            }
            if not_finite > 0 {
                eprintln!(
                    "warning: {}: {not_finite} of {} predictions are NaN (counted as wrong): the model's weights are not finite",
                    kbm.name(),
                    texts.len()
                );
            }
            Ok((correct as f64 / texts.len() as f64, texts.len()))
        })
    })
}
