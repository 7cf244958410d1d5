//! `kilobyte inspect FILE.kbm`: a .kbm's header, config, tensor table,
//! sizes, checksum status and (with --context) the runtime arena it needs.
//! Reads only; the parsing is kilobyte-format's.

use super::open::{with_kbm, Kbm};
use anyhow::Result;
use kilobyte_format::{DType, ModelConfig};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .kbm file.
    pub file: PathBuf,
    /// Only print the summary, not the tensor table.
    #[arg(long)]
    pub summary: bool,
    /// Also print the runtime arena a session with this many bytes of context needs.
    #[arg(long)]
    pub context: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let text = with_kbm(&args.file, |kbm| describe(&args, kbm))?;
    super::print(&text)
}

fn describe(args: &Args, kbm: &Kbm<'_>) -> Result<String> {
    let f = &kbm.file;
    let config = f.config();
    let mut o = String::new();
    writeln!(o, "file       {}", args.file.display())?;
    writeln!(
        o,
        "format     .kbm version {}, {} bytes",
        kilobyte_format::file::VERSION,
        kbm.len
    )?;
    writeln!(o, "family     {}", config.family().name())?;
    for (name, value) in config.fields() {
        match (name, config) {
            ("norm_eps_bits", _) => {
                writeln!(o, "  {:<14} {:e}", "norm_eps", f32::from_bits(value))?
            }
            ("heads", ModelConfig::Bigs(c)) => {
                let heads: Vec<&str> =
                    [(c.has_mlm_head(), "mlm"), (c.has_classifier(), "classify")]
                        .iter()
                        .filter(|h| h.0)
                        .map(|h| h.1)
                        .collect();
                writeln!(o, "  {name:<14} {value} ({})", heads.join(" + "))?
            }
            _ => writeln!(o, "  {name:<14} {value}")?,
        }
    }
    if let Some(labels) = f.labels() {
        writeln!(
            o,
            "  labels         {}",
            labels.collect::<Vec<_>>().join(", ")
        )?;
    }
    writeln!(
        o,
        "parameters {} ({:.2}M)",
        config.param_count(),
        config.param_count() as f64 / 1e6
    )?;
    writeln!(o, "checksum   CRC-32 {:08x} ok", f.checksum())?;
    if let Some(context) = args.context {
        match config {
            ModelConfig::Megabyte(c) => {
                let spec = kilobyte_runtime::ArenaSpec::new(context);
                if let Some(reason) = spec.check(c) {
                    anyhow::bail!("--context {context}: {reason}");
                }
                writeln!(
                    o,
                    "arena      {} bytes for a {context}-byte context ({} with --i8-cache)",
                    spec.arena_bytes(c),
                    spec.with_i8_cache().arena_bytes(c)
                )?;
            }
            ModelConfig::Bigs(c) => {
                let bytes = kilobyte_runtime::Bigs::arena_bytes(c, context);
                if bytes == 0 {
                    anyhow::bail!(
                        "--context {context}: must be between 1 and T_max = {}",
                        c.max_seq
                    );
                }
                writeln!(
                    o,
                    "arena      {bytes} bytes for inputs of up to {context} bytes"
                )?;
            }
        }
    }

    let mut by_dtype: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for t in f.tensors() {
        let e = by_dtype.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.numel() as u64;
        e.2 += t.data.len() as u64;
    }
    writeln!(
        o,
        "weights    {} bytes in {} tensors",
        f.weight_bytes(),
        f.tensor_count()
    )?;
    for (dtype, (n, elems, bytes)) in &by_dtype {
        let bits = DType::parse(dtype)
            .map(|d| d.bits_per_element())
            .unwrap_or(8.0);
        writeln!(o, "  {dtype:<5} {n:>4} tensors {elems:>12} elements {bytes:>12} bytes ({bits} bits/element)")?;
    }
    if !args.summary {
        writeln!(o)?;
        writeln!(
            o,
            "{:<40} {:<5} {:<16} {:>12} {:>12}",
            "tensor", "dtype", "shape", "offset", "bytes"
        )?;
        for t in f.tensors() {
            let shape = t.shape.to_string();
            writeln!(
                o,
                "{:<40} {:<5} {:<16} {:>12} {:>12}",
                t.name,
                t.dtype.name(),
                shape,
                t.offset,
                t.data.len()
            )?;
        }
    }
    Ok(o)
}
