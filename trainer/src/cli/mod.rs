//! The `kilobyte` commands. Each command lives in its own module and returns
//! `anyhow::Result`; `main` prints any error as one line and exits non-zero.

mod bench;
mod bigs;
mod convert;
mod generate;
mod init;
pub(crate) mod input;
mod inspect;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kilobyte",
    version,
    about = "Byte-level language models for devices: train, quantise, inspect and run .kbm models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a .kbm file's header, config, tensor table, sizes and checksum status.
    Inspect(inspect::Args),
    /// Convert between .kbm and .safetensors (direction from the file extensions).
    Convert(convert::ConvertArgs),
    /// Re-encode a .kbm model's weights as f32, f16, bf16, q8 or q4.
    Quantize(convert::QuantizeArgs),
    /// Write a randomly initialised model (for tests, benchmarks and trying the tools).
    Init(init::Args),
    /// Stream bytes from a MEGABYTE model.
    Generate(generate::Args),
    /// Classify text with a BiGS model: one line in, `label<TAB>probability` out.
    Classify(bigs::ClassifyArgs),
    /// Fill the gaps (`_` per missing byte) of a text with a BiGS model.
    Fill(bigs::FillArgs),
    /// Benchmarks: `kilobyte bench runtime` (generation) or `kilobyte bench train`.
    Bench(bench::Args),
    /// Train a model on CPU (checkpoints, metrics and best weights in --run DIR).
    Train(train::TrainArgs),
    /// Bits per byte of a .kbm (through the runtime) or a run directory on some data;
    /// accuracy on a labelled table (--dev) for a BiGS classifier.
    Eval(train::EvalArgs),
    /// Write a run's weights as a .kbm model.
    Export(train::ExportArgs),
    /// Render a run's loss curves as SVG.
    Plot(train::PlotArgs),
    /// Train the micro preset for a few minutes, export q8, score it and print a sample.
    Demo(train::DemoArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run_convert(a),
        Command::Quantize(a) => convert::run_quantize(a),
        Command::Init(a) => init::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Classify(a) => bigs::run_classify(a),
        Command::Fill(a) => bigs::run_fill(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run_train(a),
        Command::Eval(a) => train::run_eval(a),
        Command::Export(a) => train::run_export(a),
        Command::Plot(a) => train::run_plot(a),
        Command::Demo(a) => train::run_demo(a),
    }
}

/// Parses a dtype name for clap.
pub(crate) fn parse_dtype(s: &str) -> std::result::Result<kilobyte_format::DType, String> {
    match kilobyte_format::DType::parse(s) {
        Some(d) if d.is_numeric() => Ok(d),
        _ => Err(format!(
            "unknown dtype {s:?} (expected f32, f16, bf16, q8 or q4)"
        )),
    }
}

/// The hashed n-gram embedding flags of `train` and `init`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NgramArgs {
    /// Hashed n-gram embeddings: the orders, as a range "3-6", a list "3,5,7",
    /// or "none" (default: the preset's)
    #[arg(long, value_parser = parse_ngram_orders)]
    pub ngram_orders: Option<u32>,
    /// Rows of each n-gram table (up to 65535); 0 turns n-grams off (default:
    /// the preset's, or 4096 when --ngram-orders turns them on)
    #[arg(long)]
    pub ngram_buckets: Option<u32>,
}

impl NgramArgs {
    /// Applies the flags to a preset's n-gram config: either flag at 0 turns
    /// n-grams off; otherwise a flag replaces its half, and the other half
    /// comes from the preset, or from `NgramConfig::DEFAULT` when the preset
    /// has none.
    pub fn apply(&self, c: &mut kilobyte_format::config::NgramConfig) {
        use kilobyte_format::config::NgramConfig;
        if self.ngram_orders.is_none() && self.ngram_buckets.is_none() {
            return;
        }
        if self.ngram_orders == Some(0) || self.ngram_buckets == Some(0) {
            *c = NgramConfig::OFF;
            return;
        }
        let base = if c.enabled() {
            *c
        } else {
            NgramConfig::DEFAULT
        };
        *c = NgramConfig {
            orders: self.ngram_orders.unwrap_or(base.orders),
            buckets: self.ngram_buckets.unwrap_or(base.buckets),
        };
    }
}

/// MEGABYTE's n-gram flags for the local model (as `NgramArgs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LocalNgramArgs {
    /// MEGABYTE: hashed n-gram embeddings of the local model's byte input,
    /// as --ngram-orders (default: the preset's)
    #[arg(long, value_parser = parse_ngram_orders)]
    pub local_ngram_orders: Option<u32>,
    /// MEGABYTE: rows of each local n-gram table; 0 turns them off
    #[arg(long)]
    pub local_ngram_buckets: Option<u32>,
}

impl LocalNgramArgs {
    pub fn apply(&self, c: &mut kilobyte_format::config::NgramConfig) {
        NgramArgs {
            ngram_orders: self.local_ngram_orders,
            ngram_buckets: self.local_ngram_buckets,
        }
        .apply(c)
    }
}

/// Parses `--ngram-orders`: "3-6", "3,5,7" or "none" into a bit set.
fn parse_ngram_orders(s: &str) -> std::result::Result<u32, String> {
    use kilobyte_format::config::{NGRAM_MAX_ORDER, NGRAM_MIN_ORDER};
    if s == "none" || s == "0" {
        return Ok(0);
    }
    let order = |t: &str| -> std::result::Result<u32, String> {
        match t.trim().parse::<u32>() {
            Ok(n) if (NGRAM_MIN_ORDER..=NGRAM_MAX_ORDER).contains(&n) => Ok(n),
            _ => Err(format!(
                "{t:?} is not an n-gram order (expected {NGRAM_MIN_ORDER}..={NGRAM_MAX_ORDER})"
            )),
        }
    };
    let mut bits = 0;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (order(lo)?, order(hi)?);
                if lo > hi {
                    return Err(format!("the range {part:?} is empty"));
                }
                bits |= kilobyte_format::config::NgramConfig::orders(lo, hi, 0).orders;
            }
            None => bits |= 1 << order(part)?,
        }
    }
    Ok(bits)
}

/// Writes command output to stdout. A closed pipe (`kilobyte inspect m.kbm |
/// head`) ends the output quietly instead of panicking like `println!`.
pub(crate) fn print(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
