//! `kilobyte convert`: .kbm <-> .safetensors, the direction from the file
//! extensions. Owns only the flags; the bridge is kilobyte-format's `st`.

use super::open::with_kbm;
use anyhow::{anyhow, bail, Context, Result};
use kilobyte_format::st::{from_safetensors, to_safetensors, ExportFloats};
use kilobyte_format::write_atomic;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
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

fn extension(p: &Path) -> Option<String> {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

pub fn run(args: Args) -> Result<()> {
    match (extension(&args.input).as_deref(), extension(&args.output).as_deref()) {
        (Some("kbm"), Some("safetensors")) => {
            let floats = match args.dtype.as_deref() {
                None | Some("f32") => ExportFloats::F32,
                Some("keep") => ExportFloats::KeepHalf,
                Some(other) => bail!("--dtype {other:?}: exporting to safetensors takes f32 or keep"),
            };
            with_kbm(&args.input, |kbm| {
                let out = to_safetensors(&kbm.file, floats).with_context(|| kbm.name().to_string())?;
                write_atomic(&args.output, &out).with_context(|| args.output.display().to_string())?;
                eprintln!("wrote {} ({} tensors, {} bytes)", args.output.display(), kbm.file.tensor_count(), out.len());
                Ok(())
            })?;
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
