//! `kilobyte init`: a randomly initialised model in a .kbm file. Owns only
//! the flags; the initialisation is `crate::params`'.

use super::model::{Family, NgramArgs, Preset};
use crate::params::ParamSet;
use anyhow::{bail, Context, Result};
use kilobyte_format::{DType, ModelConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model family.
    #[arg(long, value_enum, default_value_t = Family::Megabyte)]
    pub model: Family,
    /// Preset from MODELS.md.
    #[arg(long, value_enum, default_value_t = Preset::Micro)]
    pub preset: Preset,
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
    pub ngram: NgramArgs,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let config = match args.model {
        Family::Megabyte => {
            if !args.labels.is_empty() {
                bail!("--labels is for BiGS classifiers, not MEGABYTE");
            }
            let mut c = args.preset.megabyte();
            args.ngram.apply(&mut c.ngram);
            ModelConfig::Megabyte(c)
        }
        Family::Bigs => {
            let mut c = args.preset.bigs();
            if !args.labels.is_empty() {
                c = c.classifier(args.labels.len() as u32, true);
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
        .with_context(|| args.output.display().to_string())?;
    eprintln!(
        "wrote {} ({} parameters)",
        args.output.display(),
        config.param_count()
    );
    Ok(())
}
