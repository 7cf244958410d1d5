//! `kilobyte quantize`: a .kbm's weights re-encoded as another dtype.
//! Owns only the choice of dtypes; the encoding is `crate::params`' and
//! kilobyte-format's.

use super::open::with_kbm;
use crate::params::ParamSet;
use anyhow::{Context, Result};
use kilobyte_format::{write_atomic, DType};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input .kbm file.
    pub input: PathBuf,
    /// Output .kbm file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Dtype of weight matrices: f32, f16, bf16, q8 or q4.
    #[arg(long, value_parser = super::parse_dtype)]
    pub dtype: DType,
    /// Dtype of embeddings (default: q8 when --dtype is q4, so the tied output layer keeps precision; else --dtype).
    #[arg(long, value_parser = super::parse_dtype)]
    pub embeddings: Option<DType>,
}

pub fn run(args: Args) -> Result<()> {
    let embeddings = args.embeddings.unwrap_or(if args.dtype == DType::Q4 {
        DType::Q8
    } else {
        args.dtype
    });
    let (params, len) = with_kbm(&args.input, |kbm| {
        if kbm.file.tensors().any(|t| t.dtype.is_quantized()) && args.dtype.is_quantized() {
            eprintln!(
                "warning: {} is already quantised; re-quantising compounds the rounding error (quantise from the f32 model when you can)",
                kbm.name()
            );
        }
        let params = ParamSet::from_file(&kbm.file).with_context(|| kbm.name().to_string())?;
        Ok((params, kbm.len))
    })?;
    let out = params.to_writer(args.dtype, embeddings)?.to_bytes()?;
    write_atomic(&args.output, &out).with_context(|| args.output.display().to_string())?;
    eprintln!(
        "wrote {}: {len} -> {} bytes ({:.1}%), matrices {}, embeddings {}",
        args.output.display(),
        out.len(),
        100.0 * out.len() as f64 / len as f64,
        args.dtype,
        embeddings
    );
    Ok(())
}
