//! The `kilobyte` commands. Each command lives in its own module and returns
//! `anyhow::Result`; `main` prints any error as one line and exits non-zero.

mod bench;
mod bigs;
mod convert;
mod generate;
mod init;
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
