//! The flags that describe a model: the family, the preset, the shape
//! overrides of each family (flattened argument groups) and the hashed
//! n-gram flags; [`ModelArgs::config`] builds `train`'s model config from
//! them, once. Owns only the flags and how they apply to a preset: the
//! presets themselves and the validation of a config are kilobyte-format's.

use anyhow::{bail, Result};
use kilobyte_format::config::NgramConfig;
use kilobyte_format::{BigsConfig, MegabyteConfig, ModelConfig};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Megabyte,
    Bigs,
}

impl Family {
    /// The value `--model` takes for this family.
    pub fn name(self) -> &'static str {
        match self {
            Family::Megabyte => "megabyte",
            Family::Bigs => "bigs",
        }
    }
}

/// The presets of MODELS.md.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Micro,
    Small,
    Base,
}

impl Preset {
    pub fn megabyte(self) -> MegabyteConfig {
        match self {
            Preset::Micro => MegabyteConfig::MICRO,
            Preset::Small => MegabyteConfig::SMALL,
            Preset::Base => MegabyteConfig::BASE,
        }
    }

    pub fn bigs(self) -> BigsConfig {
        match self {
            Preset::Micro => BigsConfig::MICRO,
            Preset::Small => BigsConfig::SMALL,
            Preset::Base => BigsConfig::BASE,
        }
    }
}

/// `train`'s model: a family's preset with its shape flags applied.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model family.
    #[arg(long, value_enum, default_value_t = Family::Megabyte)]
    pub model: Family,
    /// Preset from MODELS.md; the shape flags override it.
    #[arg(long, value_enum, default_value_t = Preset::Micro)]
    pub preset: Preset,
    /// T_max: the longest context the model is trained for.
    #[arg(long)]
    pub max_seq: Option<u32>,
    #[command(flatten)]
    pub ngram: NgramArgs,
    #[command(flatten)]
    pub megabyte: MegabyteShape,
    #[command(flatten)]
    pub bigs: BigsShape,
}

// Per-flag headings, not `next_help_heading` on the struct: that one would
// also head every flag declared after the flattened group.
const MEGABYTE: &str = "MEGABYTE shape";
const BIGS: &str = "BiGS shape";

/// MEGABYTE's shape flags (an error with `--model bigs`).
#[derive(clap::Args, Debug)]
pub struct MegabyteShape {
    /// Bytes per patch P.
    #[arg(long, help_heading = MEGABYTE)]
    pub patch_size: Option<u32>,
    /// Global model width per patch byte D_G (the global width is P * D_G).
    #[arg(long, help_heading = MEGABYTE)]
    pub d_global: Option<u32>,
    /// Global transformer layers.
    #[arg(long, help_heading = MEGABYTE)]
    pub layers_global: Option<u32>,
    /// Global attention heads.
    #[arg(long, help_heading = MEGABYTE)]
    pub heads_global: Option<u32>,
    /// Local model width.
    #[arg(long, help_heading = MEGABYTE)]
    pub d_local: Option<u32>,
    /// Local transformer layers.
    #[arg(long, help_heading = MEGABYTE)]
    pub layers_local: Option<u32>,
    /// Local attention heads.
    #[arg(long, help_heading = MEGABYTE)]
    pub heads_local: Option<u32>,
    #[command(flatten)]
    pub local_ngram: LocalNgramArgs,
}

/// BiGS's shape flags (an error with `--model megabyte`).
#[derive(clap::Args, Debug)]
pub struct BigsShape {
    /// BiGS width d.
    #[arg(long, help_heading = BIGS)]
    pub d_model: Option<u32>,
    /// BiGS expanded width e.
    #[arg(long, help_heading = BIGS)]
    pub d_expand: Option<u32>,
    /// BiGS layers.
    #[arg(long, help_heading = BIGS)]
    pub layers: Option<u32>,
    /// BiGS complex modes per SSM kernel.
    #[arg(long, help_heading = BIGS)]
    pub modes: Option<u32>,
    /// BiGS SSM kernels per direction and layer.
    #[arg(long, help_heading = BIGS)]
    pub ssm_kernels: Option<u32>,
}

/// Replaces each slot whose flag was given.
fn set<const N: usize>(slots: [(&mut u32, Option<u32>); N]) {
    for (slot, v) in slots {
        if let Some(v) = v {
            *slot = v;
        }
    }
}

impl MegabyteShape {
    /// The first flag given, by name.
    fn first_given(&self) -> Option<&'static str> {
        let l = &self.local_ngram;
        first_given([
            ("--patch-size", self.patch_size.is_some()),
            ("--d-global", self.d_global.is_some()),
            ("--layers-global", self.layers_global.is_some()),
            ("--heads-global", self.heads_global.is_some()),
            ("--d-local", self.d_local.is_some()),
            ("--layers-local", self.layers_local.is_some()),
            ("--heads-local", self.heads_local.is_some()),
            ("--local-ngram-orders", l.local_ngram_orders.is_some()),
            ("--local-ngram-buckets", l.local_ngram_buckets.is_some()),
        ])
    }
}

impl BigsShape {
    /// The first flag given, by name.
    fn first_given(&self) -> Option<&'static str> {
        first_given([
            ("--d-model", self.d_model.is_some()),
            ("--d-expand", self.d_expand.is_some()),
            ("--layers", self.layers.is_some()),
            ("--modes", self.modes.is_some()),
            ("--ssm-kernels", self.ssm_kernels.is_some()),
        ])
    }
}

fn first_given<const N: usize>(flags: [(&'static str, bool); N]) -> Option<&'static str> {
    flags
        .into_iter()
        .find(|&(_, given)| given)
        .map(|(name, _)| name)
}

impl ModelArgs {
    /// The preset of `--model` with the flags of that family applied,
    /// validated. A shape flag of the other family is an error: silently
    /// training a model other than the one asked for wastes a whole run.
    pub fn config(&self) -> Result<ModelConfig> {
        let (other, flag) = match self.model {
            Family::Megabyte => ("BiGS", self.bigs.first_given()),
            Family::Bigs => ("MEGABYTE", self.megabyte.first_given()),
        };
        if let Some(flag) = flag {
            bail!(
                "{flag} is a {other} shape flag; --model {} has no such setting",
                self.model.name()
            );
        }
        Ok(match self.model {
            Family::Megabyte => {
                let mut c = self.preset.megabyte();
                let s = &self.megabyte;
                set([
                    (&mut c.patch_size, s.patch_size),
                    (&mut c.d_global, s.d_global),
                    (&mut c.layers_global, s.layers_global),
                    (&mut c.heads_global, s.heads_global),
                    (&mut c.d_local, s.d_local),
                    (&mut c.layers_local, s.layers_local),
                    (&mut c.heads_local, s.heads_local),
                    (&mut c.max_seq, self.max_seq),
                ]);
                self.ngram.apply(&mut c.ngram);
                s.local_ngram.apply(&mut c.local_ngram);
                c.validate()?;
                ModelConfig::Megabyte(c)
            }
            Family::Bigs => {
                let mut c = self.preset.bigs();
                let s = &self.bigs;
                set([
                    (&mut c.d_model, s.d_model),
                    (&mut c.d_expand, s.d_expand),
                    (&mut c.layers, s.layers),
                    (&mut c.n_modes, s.modes),
                    (&mut c.ssm_kernels, s.ssm_kernels),
                    (&mut c.max_seq, self.max_seq),
                ]);
                self.ngram.apply(&mut c.ngram);
                c.validate()?;
                ModelConfig::Bigs(c)
            }
        })
    }
}

/// The hashed n-gram embedding flags of `train` and `init`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NgramArgs {
    /// Hashed n-gram embeddings: the orders, as a range "3-6", a list "3,5,7",
    /// or "none" (default: the preset's)
    #[arg(long, value_parser = parse_ngram_orders)]
    pub ngram_orders: Option<u32>,
    /// Rows of each n-gram table (up to 65535); 0 turns n-grams off (default:
    /// the preset's, or 4096 when --ngram-orders turns them on)
    #[arg(long)]
    pub ngram_buckets: Option<u32>,
}

impl NgramArgs {
    /// Applies the flags to a preset's n-gram config: either flag at 0 turns
    /// n-grams off; otherwise a flag replaces its half, and the other half
    /// comes from the preset, or from `NgramConfig::DEFAULT` when the preset
    /// has none.
    pub fn apply(&self, c: &mut NgramConfig) {
        if self.ngram_orders.is_none() && self.ngram_buckets.is_none() {
            return;
        }
        if self.ngram_orders == Some(0) || self.ngram_buckets == Some(0) {
            *c = NgramConfig::OFF;
            return;
        }
        let base = if c.enabled() {
            *c
        } else {
            NgramConfig::DEFAULT
        };
        *c = NgramConfig {
            orders: self.ngram_orders.unwrap_or(base.orders),
            buckets: self.ngram_buckets.unwrap_or(base.buckets),
        };
    }
}

/// MEGABYTE's n-gram flags for the local model (as `NgramArgs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LocalNgramArgs {
    /// MEGABYTE: hashed n-gram embeddings of the local model's byte input,
    /// as --ngram-orders (default: the preset's)
    #[arg(long, value_parser = parse_ngram_orders, help_heading = MEGABYTE)]
    pub local_ngram_orders: Option<u32>,
    /// MEGABYTE: rows of each local n-gram table; 0 turns them off
    #[arg(long, help_heading = MEGABYTE)]
    pub local_ngram_buckets: Option<u32>,
}

impl LocalNgramArgs {
    pub fn apply(&self, c: &mut NgramConfig) {
        NgramArgs {
            ngram_orders: self.local_ngram_orders,
            ngram_buckets: self.local_ngram_buckets,
        }
        .apply(c)
    }
}

/// Parses `--ngram-orders`: "3-6", "3,5,7" or "none" into a bit set.
pub fn parse_ngram_orders(s: &str) -> std::result::Result<u32, String> {
    use kilobyte_format::config::{NGRAM_MAX_ORDER, NGRAM_MIN_ORDER};
    if s == "none" || s == "0" {
        return Ok(0);
    }
    let order = |t: &str| -> std::result::Result<u32, String> {
        match t.trim().parse::<u32>() {
            Ok(n) if (NGRAM_MIN_ORDER..=NGRAM_MAX_ORDER).contains(&n) => Ok(n),
            _ => Err(format!(
                "{t:?} is not an n-gram order (expected {NGRAM_MIN_ORDER}..={NGRAM_MAX_ORDER})"
            )),
        }
    };
    let mut bits = 0;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (order(lo)?, order(hi)?);
                if lo > hi {
                    return Err(format!("the range {part:?} is empty"));
                }
                bits |= NgramConfig::orders(lo, hi, 0).orders;
            }
            None => bits |= 1 << order(part)?,
        }
    }
    Ok(bits)
}
