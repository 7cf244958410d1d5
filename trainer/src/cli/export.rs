//! `kilobyte export`: a run directory's weights (best-validation, or the
//! last checkpoint's) written as a `.kbm`. Owns only the choice of weights
//! and dtypes; the encoding is `crate::params`' and kilobyte-format's.

use super::open::run_weights;
use anyhow::{Context, Result};
use kilobyte_format::DType;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
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

pub fn run(a: Args) -> Result<()> {
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
