//! `kilobyte demo`: the whole path in one command: train the micro preset
//! on the CPU for a fixed time, export q8, score it through the runtime and
//! print a sample. Owns only the demo's settings; every step is another
//! command's code (`crate::train`, `export`'s weights, `eval`'s scoring).

use super::open::{run_weights, with_kbm};
use crate::backend;
use crate::data::{Corpus, Split};
use crate::family::{self, Start};
use crate::train::{self, DataSource, TrainOptions};
use anyhow::{Context, Result};
use kilobyte_format::{DType, MegabyteConfig};
use kilobyte_runtime::{ArenaSpec, Sampler, SamplerConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
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
pub fn run(a: Args) -> Result<()> {
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
    let what = Start::Megabyte {
        config,
        data: data.clone(),
    };
    let report = family::start(&run, what, opts, false, backend::Device::Cpu)?;
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
    with_kbm(&model_path, |kbm| {
        let spec = ArenaSpec::new(128);
        let bpb = super::eval::bits_per_byte(kbm, &split.val, spec, 64)?;
        println!(
            "trained {} steps in {:.0} s ({:.0} bytes/s); q8 model {} ({} bytes): validation {bpb:.3} bits per byte",
            report.steps,
            report.elapsed_s,
            report.bytes_per_s,
            model_path.display(),
            kbm.len
        );
        let model = kbm.megabyte()?;
        let mut sampler = Sampler::new(SamplerConfig {
            temperature: 0.7,
            top_k: 0,
            top_p: 0.9,
            seed: 1,
        })?;
        let prompt = b"The runtime ";
        let text = kbm.session(&model, spec, "the demo's 128-byte context", |s| {
            s.prefill(prompt)?;
            let mut text = prompt.to_vec();
            for _ in 0..a.sample {
                let b = sampler.sample(s.logits());
                text.push(b);
                s.push(b)?;
            }
            Ok(text)
        })?;
        println!("sample:\n{}", String::from_utf8_lossy(&text));
        Ok(())
    })?;
    println!(
        "\nnext: kilobyte generate {} --prompt \"...\"; kilobyte plot {}",
        model_path.display(),
        run.display()
    );
    Ok(())
}
