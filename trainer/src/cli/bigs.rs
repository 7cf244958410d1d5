//! `kilobyte classify` and `kilobyte fill`: BiGS models through the no_std
//! runtime, one input line in, one output line out, so they work in pipes.
//! Also the BiGS branch of `kilobyte eval` for `.kbm` files (accuracy on a
//! labelled table).

use super::input;
use crate::data::tsv::{model_text, read_labeled, Column};
use crate::params::{parse_kbm, read_kbm};
use crate::text::{shown, shown_list};
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

/// The first encoder size for a stream of lines: most texts are shorter,
/// and a longer line grows the encoder (up to T_max) when it comes.
const STREAM_CONTEXT: usize = 512;

fn model<'m>(path: &Path, file: &ModelFile<'m>) -> Result<Bigs<'m>> {
    Bigs::from_file(file).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Loads a BiGS model that has the `need` head ("classification" or
/// "masked-byte").
fn with_model<T>(path: &Path, need: &str, f: impl FnOnce(&Bigs<'_>) -> Result<T>) -> Result<T> {
    let bytes = read_kbm(path)?;
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
    f(&m)
}

/// An encoder for inputs of up to `len` bytes (1..=T_max) in a heap arena
/// of that size: the arena and the kernels cost what the input needs, not
/// what T_max allows. Kernel values do not depend on the size, so neither
/// do the results.
fn with_encoder<T>(
    path: &Path,
    m: &Bigs<'_>,
    len: usize,
    f: impl FnOnce(&mut Encoder<'_, '_>) -> Result<T>,
) -> Result<T> {
    let len = len.clamp(1, m.config.max_seq as usize);
    let mut arena = input::arena(
        Bigs::arena_bytes(&m.config, len),
        &path.display().to_string(),
    )?;
    let mut enc = m
        .encoder(&mut arena, len)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    f(&mut enc)
}

fn label_name(m: &Bigs<'_>, i: usize) -> String {
    m.label(i)
        .map(str::to_string)
        .unwrap_or_else(|| i.to_string())
}

fn too_long(where_: &str, len: usize, max: usize) -> anyhow::Error {
    anyhow!("{where_}: {len} bytes, longer than the model's T_max of {max} bytes")
}

pub fn run_classify(a: ClassifyArgs) -> Result<()> {
    with_model(&a.model, "classification", |m| {
        let max = m.config.max_seq as usize;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut one = |enc: &mut Encoder<'_, '_>, text: &[u8], where_: &str| -> Result<()> {
            let Some(text) = model_text(text, max) else {
                writeln!(out)?;
                return Ok(());
            };
            let c = enc.classify(text).map_err(|e| anyhow!("{where_}: {e}"))?;
            writeln!(out, "{}\t{:.4}", label_name(m, c.class), c.probs[c.class])?;
            Ok(())
        };
        match (&a.text, &a.file) {
            (Some(t), None) if t != "-" => {
                with_encoder(&a.model, m, t.len(), |enc| one(enc, t.as_bytes(), "input"))
            }
            (_, file) => {
                let (mut reader, name): (Box<dyn BufRead>, String) = match file {
                    Some(f) => (
                        Box::new(std::io::BufReader::new(open_stream(f)?)),
                        f.display().to_string(),
                    ),
                    None => (Box::new(std::io::stdin().lock()), "stdin".into()),
                };
                // Each pass classifies lines with an encoder of `cap` bytes
                // until a longer line comes; that line starts the next pass
                // with an encoder big enough for it.
                let mut cap = STREAM_CONTEXT.min(max);
                let mut line_no = 0;
                let mut pending: Option<Vec<u8>> = None;
                loop {
                    let longer = with_encoder(
                        &a.model,
                        m,
                        cap,
                        |enc| -> Result<Option<Vec<u8>>> {
                            let mut buf = Vec::new();
                            if let Some(line) = pending.take() {
                                one(enc, &line, &format!("{name}: line {line_no}"))?;
                            }
                            loop {
                                let got = input::next_line(&mut reader, max, &mut buf)
                                    .with_context(|| format!("{name}: line {}", line_no + 1))?;
                                let at = || format!("{name}: line {}", line_no + 1);
                                match got {
                                    input::Line::End => return Ok(None),
                                    // Cut to T_max like any text; the rest is
                                    // read past, up to the most a prompt may be.
                                    input::Line::TooLong => {
                                        let limit = input::MAX_STDIN_BYTES as u64;
                                        if !input::skip_line(&mut reader, limit).with_context(at)? {
                                            bail!(
                                                "{}: longer than {limit} bytes without a line break",
                                                at()
                                            )
                                        }
                                    }
                                    input::Line::Text => {}
                                }
                                line_no += 1;
                                if buf.len() > enc.max_len() {
                                    return Ok(Some(buf));
                                }
                                one(enc, &buf, &format!("{name}: line {line_no}"))?;
                            }
                        },
                    )?;
                    match longer {
                        None => return Ok(()),
                        Some(line) => {
                            cap = line.len().next_power_of_two().min(max);
                            pending = Some(line);
                        }
                    }
                }
            }
        }
    })
}

/// A file to stream line by line: a regular file or a pipe (`<(...)`),
/// never a device or a directory.
fn open_stream(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !(meta.is_file() || meta.file_type().is_fifo()) {
        bail!("{}: not a regular file or a pipe", path.display());
    }
    std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))
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
    with_model(&a.model, "masked-byte", |m| {
        let max = m.config.max_seq as usize;
        if text.len() > max {
            return Err(too_long("the text", text.len(), max));
        }
        with_encoder(&a.model, m, text.len(), |enc| {
            let mut out = vec![0u8; text.len()];
            enc.fill(text, &gaps, &mut out)
                .map_err(|e| anyhow!("{e}"))?;
            std::io::stdout().write_all(&out)?;
            println!();
            Ok(())
        })
    })
}

/// Accuracy of a BiGS classifier `.kbm` on a labelled table, through the
/// runtime. Label names in the table must be the model's.
pub fn eval_kbm(path: &Path, dev: &Path, text: &Column, label: &Column) -> Result<(f64, usize)> {
    let set = read_labeled(dev, text, label)?;
    with_model(path, "classification", |m| {
        let classes = m.config.n_classes as usize;
        let max = m.config.max_seq as usize;
        let names: Vec<String> = (0..classes).map(|i| label_name(m, i)).collect();
        let texts: Vec<_> = set
            .examples
            .iter()
            .filter_map(|e| model_text(&e.text, max).map(|t| (e, t)))
            .collect();
        if texts.is_empty() {
            bail!("{}: no non-empty texts", dev.display());
        }
        let cut = texts.iter().filter(|(e, t)| e.text.len() > t.len()).count();
        if cut > 0 {
            eprintln!("note: {cut} dev texts longer than T_max = {max} bytes are cut to it");
        }
        let longest = texts.iter().map(|(_, t)| t.len()).max().unwrap_or(1);
        with_encoder(path, m, longest, |enc| {
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
                    Err(err) => bail!("{}: {err}", at()),
                }
            }
            if not_finite > 0 {
                eprintln!(
                    "warning: {}: {not_finite} of {} predictions are NaN (counted as wrong): the model's weights are not finite",
                    path.display(),
                    texts.len()
                );
            }
            Ok((correct as f64 / texts.len() as f64, texts.len()))
        })
    })
}

/// Whether a `.kbm` holds a BiGS model (for `kilobyte eval`'s dispatch).
pub fn is_bigs_kbm(path: &Path) -> Result<bool> {
    let bytes = read_kbm(path)?;
    let file = parse_kbm(path, &bytes)?;
    Ok(matches!(
        file.config(),
        kilobyte_format::ModelConfig::Bigs(_)
    ))
}
