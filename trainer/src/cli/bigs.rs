//! `kilobyte classify` and `kilobyte fill`: BiGS models through the no_std
//! runtime, one input line in, one output line out, so they work in pipes.
//! Also the BiGS branch of `kilobyte eval` for `.kbm` files (accuracy on a
//! labelled table).

use crate::data::tsv::{read_labeled, Column};
use crate::params::{parse_kbm, read_kbm};
use anyhow::{anyhow, bail, Context, Result};
use kilobyte_format::ModelFile;
use kilobyte_runtime::{Bigs, Encoder};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// A BiGS .kbm with a classification head.
    pub model: PathBuf,
    /// The text to classify; `-` or nothing (with --file absent) reads standard input, one text per line.
    pub text: Option<String>,
    /// Classify every line of this file.
    #[arg(long, conflicts_with = "text")]
    pub file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct FillArgs {
    /// A BiGS .kbm with a masked-byte head.
    pub model: PathBuf,
    /// Text with gaps: every GAP byte (default `_`) is one missing byte.
    pub text: String,
    /// The gap marker (one ASCII byte).
    #[arg(long, default_value = "_")]
    pub gap: char,
}

/// The parsed model bytes and a loaded model, kept together.
fn load(path: &Path) -> Result<kilobyte_format::AlignedBytes> {
    read_kbm(path)
}

fn model<'m>(path: &Path, file: &ModelFile<'m>) -> Result<Bigs<'m>> {
    Bigs::from_file(file).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// An encoder over the model's whole T_max in a heap arena.
fn with_encoder<T>(
    path: &Path,
    need: &str,
    f: impl FnOnce(&Bigs<'_>, &mut Encoder<'_, '_>) -> Result<T>,
) -> Result<T> {
    let bytes = load(path)?;
    let file = parse_kbm(path, &bytes)?;
    let m = model(path, &file)?;
    let ok = match need {
        "classification" => m.classifier.is_some(),
        _ => m.mlm.is_some(),
    };
    if !ok {
        bail!(
            "{}: this BiGS model has no {need} head (a {} model)",
            path.display(),
            if m.classifier.is_some() {
                "classification"
            } else {
                "masked-byte"
            }
        );
    }
    let max_len = m.config.max_seq as usize;
    let mut arena = vec![0u8; Bigs::arena_bytes(&m.config, max_len)];
    let mut enc = m.encoder(&mut arena, max_len).map_err(|e| anyhow!("{e}"))?;
    f(&m, &mut enc)
}

fn label_name(m: &Bigs<'_>, i: usize) -> String {
    m.label(i)
        .map(str::to_string)
        .unwrap_or_else(|| i.to_string())
}

pub fn run_classify(a: ClassifyArgs) -> Result<()> {
    with_encoder(&a.model, "classification", |m, enc| {
        let max = enc.max_len();
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut one = |text: &[u8], where_: &str| -> Result<()> {
            if text.is_empty() {
                bail!("{where_}: empty input");
            }
            if text.len() > max {
                bail!(
                    "{where_}: {} bytes, longer than the model's T_max of {max} bytes",
                    text.len()
                );
            }
            let c = enc.classify(text).map_err(|e| anyhow!("{where_}: {e}"))?;
            writeln!(out, "{}\t{:.4}", label_name(m, c.class), c.probs[c.class])?;
            Ok(())
        };
        match (&a.text, &a.file) {
            (Some(t), None) if t != "-" => one(t.as_bytes(), "input"),
            (_, file) => {
                let (reader, name): (Box<dyn BufRead>, String) = match file {
                    Some(f) => (
                        Box::new(std::io::BufReader::new(
                            std::fs::File::open(f)
                                .with_context(|| format!("cannot read {}", f.display()))?,
                        )),
                        f.display().to_string(),
                    ),
                    None => (Box::new(std::io::stdin().lock()), "stdin".into()),
                };
                for (i, line) in reader.split(b'\n').enumerate() {
                    let mut line = line.with_context(|| format!("{name}: line {}", i + 1))?;
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    one(&line, &format!("{name}: line {}", i + 1))?;
                }
                Ok(())
            }
        }
    })
}

pub fn run_fill(a: FillArgs) -> Result<()> {
    if !a.gap.is_ascii() {
        bail!(
            "--gap {:?}: the gap marker must be one ASCII character",
            a.gap
        );
    }
    let text = a.text.as_bytes();
    let gaps: Vec<bool> = text.iter().map(|&b| b == a.gap as u8).collect();
    if !gaps.iter().any(|&g| g) {
        bail!(
            "the text has no gap: mark each missing byte with '{}'",
            a.gap
        );
    }
    with_encoder(&a.model, "masked-byte", |_, enc| {
        if text.len() > enc.max_len() {
            bail!(
                "the text is {} bytes, longer than the model's T_max of {} bytes",
                text.len(),
                enc.max_len()
            );
        }
        let mut out = vec![0u8; text.len()];
        enc.fill(text, &gaps, &mut out)
            .map_err(|e| anyhow!("{e}"))?;
        std::io::stdout().write_all(&out)?;
        println!();
        Ok(())
    })
}

/// Accuracy of a BiGS classifier `.kbm` on a labelled table, through the
/// runtime. Label names in the table must be the model's.
pub fn eval_kbm(path: &Path, dev: &Path, text: &Column, label: &Column) -> Result<(f64, usize)> {
    let set = read_labeled(dev, text, label)?;
    with_encoder(path, "classification", |m, enc| {
        let classes = m.config.n_classes as usize;
        let names: Vec<String> = (0..classes).map(|i| label_name(m, i)).collect();
        let mut correct = 0;
        for e in &set.examples {
            let at = || format!("{}: line {}", dev.display(), e.line);
            let want = names.iter().position(|n| *n == e.label).with_context(|| {
                format!(
                    "{}: label '{}' is not one of the model's ({})",
                    at(),
                    e.label,
                    names.join(", ")
                )
            })?;
            if e.text.len() > enc.max_len() {
                bail!(
                    "{}: {} bytes, longer than the model's T_max of {} bytes",
                    at(),
                    e.text.len(),
                    enc.max_len()
                );
            }
            let c = enc
                .classify(&e.text)
                .map_err(|err| anyhow!("{}: {err}", at()))?;
            correct += (c.class == want) as usize;
        }
        Ok((
            correct as f64 / set.examples.len() as f64,
            set.examples.len(),
        ))
    })
}

/// Whether a `.kbm` holds a BiGS model (for `kilobyte eval`'s dispatch).
pub fn is_bigs_kbm(path: &Path) -> Result<bool> {
    let bytes = load(path)?;
    let file = parse_kbm(path, &bytes)?;
    Ok(matches!(
        file.config(),
        kilobyte_format::ModelConfig::Bigs(_)
    ))
}
