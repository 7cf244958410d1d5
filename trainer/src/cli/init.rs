//! `kilobyte init`: a randomly initialised model in a .kbm file.

use crate::params::ParamSet;
use anyhow::{anyhow, bail, Result};
use kilobyte_format::config::{BIGS_HEAD_CLASSIFY, BIGS_HEAD_MLM};
use kilobyte_format::{BigsConfig, DType, MegabyteConfig, ModelConfig};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Megabyte,
    Bigs,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model family.
    #[arg(long, value_enum, default_value = "megabyte")]
    pub model: Family,
    /// Preset from MODELS.md: micro, small or base.
    #[arg(long, default_value = "micro")]
    pub preset: String,
    /// Storage dtype of weight matrices: f32, f16, bf16, q8 or q4.
    #[arg(long, default_value = "f32", value_parser = super::parse_dtype)]
    pub dtype: DType,
    /// Storage dtype of embeddings (default: as --dtype).
    #[arg(long, value_parser = super::parse_dtype)]
    pub embeddings: Option<DType>,
    /// BiGS: add a classification head with these comma-separated labels.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub ngram: super::NgramArgs,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let unknown = || {
        anyhow!(
            "unknown preset {:?} (expected micro, small or base)",
            args.preset
        )
    };
    let config = match args.model {
        Family::Megabyte => {
            if !args.labels.is_empty() {
                bail!("--labels is for BiGS classifiers, not MEGABYTE");
            }
            let mut c = MegabyteConfig::by_name(&args.preset).ok_or_else(unknown)?;
            args.ngram.apply(&mut c.ngram);
            ModelConfig::Megabyte(c)
        }
        Family::Bigs => {
            let mut c = BigsConfig::by_name(&args.preset).ok_or_else(unknown)?;
            if !args.labels.is_empty() {
                c.heads = BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY;
                c.n_classes = args.labels.len() as u32;
            }
            args.ngram.apply(&mut c.ngram);
            ModelConfig::Bigs(c)
        }
    };
    let mut params = ParamSet::init(config, args.seed)?;
    if !args.labels.is_empty() {
        params.labels = args.labels.clone();
    }
    let writer = params.to_writer(args.dtype, args.embeddings.unwrap_or(args.dtype))?;
    writer
        .write(&args.output)
        .map_err(|e| anyhow!("{}: {e}", args.output.display()))?;
    eprintln!(
        "wrote {} ({} parameters)",
        args.output.display(),
        config.param_count()
    );
    Ok(())
}
