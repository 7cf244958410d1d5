//! `kilobyte convert` (.kbm <-> .safetensors) and `kilobyte quantize`.

use crate::params::{parse_kbm, read_kbm, ParamSet};
use anyhow::{anyhow, bail, Context, Result};
use kilobyte_format::st::{from_safetensors, to_safetensors, ExportFloats};
use kilobyte_format::{write_atomic, DType};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Input: a .kbm or .safetensors file.
    pub input: PathBuf,
    /// Output: a .safetensors or .kbm file.
    pub output: PathBuf,
    /// To safetensors: f32 widens everything (default), keep leaves f16/bf16 as they are.
    /// To .kbm: the dtype for weight matrices and embeddings (default: the dtypes a
    /// kilobyte export recorded, else what the safetensors file stores).
    #[arg(long)]
    pub dtype: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
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

fn extension(p: &Path) -> Option<String> {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

pub fn run_convert(args: ConvertArgs) -> Result<()> {
    match (extension(&args.input).as_deref(), extension(&args.output).as_deref()) {
        (Some("kbm"), Some("safetensors")) => {
            let floats = match args.dtype.as_deref() {
                None | Some("f32") => ExportFloats::F32,
                Some("keep") => ExportFloats::KeepHalf,
                Some(other) => bail!("--dtype {other:?}: exporting to safetensors takes f32 or keep"),
            };
            let bytes = read_kbm(&args.input)?;
            let f = parse_kbm(&args.input, &bytes)?;
            let out = to_safetensors(&f, floats).with_context(|| args.input.display().to_string())?;
            write_atomic(&args.output, &out).with_context(|| args.output.display().to_string())?;
            eprintln!("wrote {} ({} tensors, {} bytes)", args.output.display(), f.tensor_count(), out.len());
        }
        (Some("safetensors"), Some("kbm")) => {
            let wanted = match args.dtype.as_deref() {
                None => None,
                Some(s) => Some(super::parse_dtype(s).map_err(|e| anyhow!("--dtype: {e}"))?),
            };
            let bytes = std::fs::read(&args.input).with_context(|| args.input.display().to_string())?;
            let writer = from_safetensors(&bytes, |c| match wanted {
                Some(d) => c.role.storage_dtype(c.shape, d, d),
                None => c.original.filter(|d| c.role.allows(*d)).unwrap_or(c.stored),
            })
            .with_context(|| args.input.display().to_string())?;
            writer.write(&args.output).with_context(|| args.output.display().to_string())?;
            eprintln!("wrote {} ({} tensors)", args.output.display(), writer.tensors().len());
        }
        _ => bail!(
            "cannot tell the direction from {} -> {}: use .kbm -> .safetensors or .safetensors -> .kbm",
            args.input.display(),
            args.output.display()
        ),
    }
    Ok(())
}

pub fn run_quantize(args: QuantizeArgs) -> Result<()> {
    let bytes = read_kbm(&args.input)?;
    let f = parse_kbm(&args.input, &bytes)?;
    if f.tensors().any(|t| t.dtype.is_quantized()) && args.dtype.is_quantized() {
        eprintln!(
            "warning: {} is already quantised; re-quantising compounds the rounding error (quantise from the f32 model when you can)",
            args.input.display()
        );
    }
    let embeddings = args.embeddings.unwrap_or(if args.dtype == DType::Q4 {
        DType::Q8
    } else {
        args.dtype
    });
    let params = ParamSet::from_file(&f).with_context(|| args.input.display().to_string())?;
    let writer = params.to_writer(args.dtype, embeddings)?;
    let out = writer.to_bytes()?;
    write_atomic(&args.output, &out).with_context(|| args.output.display().to_string())?;
    eprintln!(
        "wrote {}: {} -> {} bytes ({:.1}%), matrices {}, embeddings {}",
        args.output.display(),
        bytes.len(),
        out.len(),
        100.0 * out.len() as f64 / bytes.len() as f64,
        args.dtype,
        embeddings
    );
    Ok(())
}
