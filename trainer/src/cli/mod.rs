//! The `kilobyte` commands. Each command lives in its own module (its flags
//! and its `run`) and returns `anyhow::Result`; `main` prints any error as
//! one line and exits non-zero. What several commands share lives beside
//! them: `model` (the model flags), `open` (opening .kbm files and run
//! directories), `input` (bounded reads), `threads` (the `--threads` pool). The commands call the trainer and
//! the runtime; nothing below them calls back into the CLI, except
//! `crate::data::tsv` reading its tables through `input`.

mod bench;
mod classify;
mod convert;
mod demo;
mod eval;
mod export;
mod fill;
mod generate;
mod init;
pub(crate) mod input;
mod inspect;
mod model;
mod open;
mod plot;
mod quantize;
mod roofline;
mod threads;
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
    Convert(convert::Args),
    /// Re-encode a .kbm model's weights as f32, f16, bf16, q8 or q4.
    Quantize(quantize::Args),
    /// Write a randomly initialised model (for tests, benchmarks and trying the tools).
    Init(init::Args),
    /// Stream bytes from a MEGABYTE model.
    Generate(generate::Args),
    /// Classify text with a BiGS model: one line in, `label<TAB>probability` out.
    Classify(classify::Args),
    /// Fill the gaps (`_` per missing byte) of a text with a BiGS model.
    Fill(fill::Args),
    /// Benchmarks: `kilobyte bench runtime` (generation) or `kilobyte bench train`.
    Bench(bench::Args),
    /// Train a model on CPU (checkpoints, metrics and best weights in --run DIR).
    Train(train::TrainArgs),
    /// Bits per byte of a .kbm (through the runtime) or a run directory on some data;
    /// accuracy on a labelled table (--dev) for a BiGS classifier.
    Eval(eval::Args),
    /// Write a run's weights as a .kbm model.
    Export(export::Args),
    /// Render a run's loss curves as SVG.
    Plot(plot::Args),
    /// Train the micro preset for a few minutes, export q8, score it and print a sample.
    Demo(demo::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Init(a) => init::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Fill(a) => fill::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => threads::on_rayon_workers(None, || eval::run(a)),
        Command::Export(a) => export::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Demo(a) => threads::on_rayon_workers(None, || demo::run(a)),
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
