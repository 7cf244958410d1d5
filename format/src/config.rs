//! Model configurations: every hyperparameter the runtime needs, shared by the
//! trainer and the runtime so both read the same numbers from one place.
//!
//! The header stores a config as 16 little-endian `u32` words; the word order
//! of each family is listed in `format/SPEC.md` and in [`ModelConfig::to_words`].

use crate::error::FormatError;

/// Which model family a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// The causal multiscale decoder (text generation).
    Megabyte,
    /// The bidirectional state-space encoder (classification, fill-in).
    Bigs,
}

impl ModelFamily {
    pub const fn code(self) -> u16 {
        match self {
            ModelFamily::Megabyte => 1,
            ModelFamily::Bigs => 2,
        }
    }

    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            1 => Some(ModelFamily::Megabyte),
            2 => Some(ModelFamily::Bigs),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            ModelFamily::Megabyte => "megabyte",
            ModelFamily::Bigs => "bigs",
        }
    }
}

/// Layer norm epsilon used by the presets (both families).
pub const DEFAULT_NORM_EPS: f32 = 1e-5;

/// Upper bound on any width, depth or length in a config. It keeps every
/// derived size (weights, arenas) far from `u64` overflow and rejects garbage
/// headers early with a readable error.
pub const MAX_DIM: u32 = 1 << 20;

/// MEGABYTE hyperparameters (see ../shared/design/MODELS.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MegabyteConfig {
    /// P: bytes per patch.
    pub patch_size: u32,
    /// D_G: global width per byte; the global transformer is `P * D_G` wide.
    pub d_global: u32,
    pub layers_global: u32,
    pub heads_global: u32,
    /// D_L: local transformer width.
    pub d_local: u32,
    pub layers_local: u32,
    pub heads_local: u32,
    /// T_max: trained context in bytes (a multiple of P).
    pub max_seq: u32,
    pub norm_eps: f32,
}

impl MegabyteConfig {
    pub const MICRO: Self = Self::preset(4, 32, 4, 4, 128, 2, 4, 512);
    pub const SMALL: Self = Self::preset(8, 64, 4, 8, 256, 2, 4, 2048);
    pub const BASE: Self = Self::preset(8, 96, 12, 12, 384, 4, 6, 8192);

    #[allow(clippy::too_many_arguments)]
    pub const fn preset(
        patch_size: u32,
        d_global: u32,
        layers_global: u32,
        heads_global: u32,
        d_local: u32,
        layers_local: u32,
        heads_local: u32,
        max_seq: u32,
    ) -> Self {
        Self {
            patch_size,
            d_global,
            layers_global,
            heads_global,
            d_local,
            layers_local,
            heads_local,
            max_seq,
            norm_eps: DEFAULT_NORM_EPS,
        }
    }

    /// A preset by the name the CLI, tests and benchmarks use.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "micro" => Some(Self::MICRO),
            "small" => Some(Self::SMALL),
            "base" => Some(Self::BASE),
            _ => None,
        }
    }

    /// Width of the global transformer: `P * D_G`.
    pub const fn global_width(&self) -> usize {
        self.patch_size as usize * self.d_global as usize
    }

    /// Patches in the trained context: `T_max / P`.
    pub const fn max_patches(&self) -> usize {
        self.max_seq as usize / self.patch_size as usize
    }

    pub fn validate(&self) -> Result<(), FormatError> {
        let fields: [(&'static str, u32); 8] = [
            ("patch_size", self.patch_size),
            ("d_global", self.d_global),
            ("layers_global", self.layers_global),
            ("heads_global", self.heads_global),
            ("d_local", self.d_local),
            ("layers_local", self.layers_local),
            ("heads_local", self.heads_local),
            ("max_seq", self.max_seq),
        ];
        for (field, value) in fields {
            check_dim(field, value)?;
        }
        check_dim(
            "global width (patch_size * d_global)",
            self.patch_size.saturating_mul(self.d_global),
        )?;
        if self.max_seq % self.patch_size != 0 {
            return Err(bad_config(
                "max_seq",
                self.max_seq,
                "must be a multiple of patch_size",
            ));
        }
        if (self.global_width() % self.heads_global as usize) != 0 {
            return Err(bad_config(
                "heads_global",
                self.heads_global,
                "must divide the global width patch_size * d_global",
            ));
        }
        if self.d_local % self.heads_local != 0 {
            return Err(bad_config(
                "heads_local",
                self.heads_local,
                "must divide d_local",
            ));
        }
        check_eps(self.norm_eps)
    }

    /// Total parameter count (f32 elements) of the weights this config needs.
    pub fn param_count(&self) -> u64 {
        let g = self.global_width() as u64;
        let l = self.d_local as u64;
        let dg = self.d_global as u64;
        let block = |w: u64| 12 * w * w + 4 * w; // qkv + proj + 2 MLP mats, 2 norms
        256 * dg
            + self.max_seq as u64 * dg
            + g
            + self.layers_global as u64 * block(g)
            + 2 * g
            + dg * l
            + 256 * l
            + l
            + self.layers_local as u64 * block(l)
            + 2 * l
    }
}

/// Heads present in a BiGS file (bit set in config word 7).
pub const BIGS_HEAD_MLM: u32 = 1;
pub const BIGS_HEAD_CLASSIFY: u32 = 2;

/// BiGS ids above the 256 bytes.
pub const BIGS_PAD: u32 = 256;
pub const BIGS_MASK: u32 = 257;
pub const BIGS_SEP: u32 = 258;
/// Rows of the BiGS token embedding: 256 bytes + PAD, MASK, SEP.
pub const BIGS_VOCAB: u32 = 259;

/// BiGS hyperparameters (see ../shared/design/MODELS.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BigsConfig {
    /// d: model width.
    pub d_model: u32,
    /// e: expanded width of the V and gate paths (3d by default).
    pub d_expand: u32,
    pub layers: u32,
    /// N: complex modes per SSM kernel.
    pub n_modes: u32,
    /// Independent SSM kernels per direction per layer; channels are split evenly.
    pub ssm_kernels: u32,
    pub max_seq: u32,
    /// Classes of the classification head (0 when the file has none).
    pub n_classes: u32,
    /// Bit set of `BIGS_HEAD_MLM` and `BIGS_HEAD_CLASSIFY`.
    pub heads: u32,
    pub norm_eps: f32,
}

impl BigsConfig {
    pub const MICRO: Self = Self::preset(128, 384, 4, 32, 1, 256);
    pub const SMALL: Self = Self::preset(256, 768, 8, 64, 1, 512);
    pub const BASE: Self = Self::preset(512, 1536, 12, 64, 1, 1024);

    /// A preset with the masked-byte head only.
    pub const fn preset(
        d_model: u32,
        d_expand: u32,
        layers: u32,
        n_modes: u32,
        ssm_kernels: u32,
        max_seq: u32,
    ) -> Self {
        Self {
            d_model,
            d_expand,
            layers,
            n_modes,
            ssm_kernels,
            max_seq,
            n_classes: 0,
            heads: BIGS_HEAD_MLM,
            norm_eps: DEFAULT_NORM_EPS,
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "micro" => Some(Self::MICRO),
            "small" => Some(Self::SMALL),
            "base" => Some(Self::BASE),
            _ => None,
        }
    }

    pub const fn has_mlm_head(&self) -> bool {
        self.heads & BIGS_HEAD_MLM != 0
    }

    pub const fn has_classifier(&self) -> bool {
        self.heads & BIGS_HEAD_CLASSIFY != 0
    }

    pub fn validate(&self) -> Result<(), FormatError> {
        let fields: [(&'static str, u32); 6] = [
            ("d_model", self.d_model),
            ("d_expand", self.d_expand),
            ("layers", self.layers),
            ("n_modes", self.n_modes),
            ("ssm_kernels", self.ssm_kernels),
            ("max_seq", self.max_seq),
        ];
        for (field, value) in fields {
            check_dim(field, value)?;
        }
        if self.d_model % self.ssm_kernels != 0 {
            return Err(bad_config(
                "ssm_kernels",
                self.ssm_kernels,
                "must divide d_model",
            ));
        }
        if self.heads == 0 || self.heads & !(BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY) != 0 {
            return Err(bad_config(
                "heads",
                self.heads,
                "must be 1 (mlm), 2 (classify) or 3 (both)",
            ));
        }
        if self.has_classifier() {
            if self.n_classes < 2 || self.n_classes > 65536 {
                return Err(bad_config(
                    "n_classes",
                    self.n_classes,
                    "a classifier needs 2..=65536 classes",
                ));
            }
        } else if self.n_classes != 0 {
            return Err(bad_config(
                "n_classes",
                self.n_classes,
                "must be 0 without a classification head",
            ));
        }
        check_eps(self.norm_eps)
    }

    /// Total parameter count (f32 elements) of the weights this config needs.
    pub fn param_count(&self) -> u64 {
        let d = self.d_model as u64;
        let e = self.d_expand as u64;
        let k = self.ssm_kernels as u64;
        let n = self.n_modes as u64;
        let ssm = k * (4 * n + 2); // a, w, C (2 floats) per mode; log_dt, D per kernel
        let layer = 2 * d + (d * e + e) + 4 * (d * d + d) + (d * e + e) + (e * d + d) + 2 * ssm;
        let mut total = BIGS_VOCAB as u64 * d
            + self.max_seq as u64 * d
            + 2 * d
            + self.layers as u64 * layer
            + 2 * d;
        if self.has_mlm_head() {
            total += d * d + d + 2 * d;
        }
        if self.has_classifier() {
            let c = self.n_classes as u64;
            total += d * d + d + c * d + c;
        }
        total
    }
}

/// A model's configuration, tagged with its family.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ModelConfig {
    Megabyte(MegabyteConfig),
    Bigs(BigsConfig),
}

/// Words of the config block in the header.
pub const CONFIG_WORDS: usize = 16;

impl ModelConfig {
    pub const fn family(&self) -> ModelFamily {
        match self {
            ModelConfig::Megabyte(_) => ModelFamily::Megabyte,
            ModelConfig::Bigs(_) => ModelFamily::Bigs,
        }
    }

    pub fn validate(&self) -> Result<(), FormatError> {
        match self {
            ModelConfig::Megabyte(c) => c.validate(),
            ModelConfig::Bigs(c) => c.validate(),
        }
    }

    pub fn param_count(&self) -> u64 {
        match self {
            ModelConfig::Megabyte(c) => c.param_count(),
            ModelConfig::Bigs(c) => c.param_count(),
        }
    }

    /// The header's config block. Unused words are zero.
    pub fn to_words(&self) -> [u32; CONFIG_WORDS] {
        let mut w = [0u32; CONFIG_WORDS];
        match self {
            ModelConfig::Megabyte(c) => {
                w[..9].copy_from_slice(&[
                    c.patch_size,
                    c.d_global,
                    c.layers_global,
                    c.heads_global,
                    c.d_local,
                    c.layers_local,
                    c.heads_local,
                    c.max_seq,
                    c.norm_eps.to_bits(),
                ]);
            }
            ModelConfig::Bigs(c) => {
                w[..9].copy_from_slice(&[
                    c.d_model,
                    c.d_expand,
                    c.layers,
                    c.n_modes,
                    c.ssm_kernels,
                    c.max_seq,
                    c.n_classes,
                    c.heads,
                    c.norm_eps.to_bits(),
                ]);
            }
        }
        w
    }

    /// Reads and validates a config block. Unused words must be zero so that a
    /// later version can give them meaning without old readers misreading them.
    pub fn from_words(family: ModelFamily, w: &[u32; CONFIG_WORDS]) -> Result<Self, FormatError> {
        if let Some(i) = w[9..].iter().position(|&x| x != 0) {
            return Err(FormatError::ReservedNotZero {
                offset: (64 + 4 * (9 + i)) as u64,
            });
        }
        let eps = f32::from_bits(w[8]);
        let config = match family {
            ModelFamily::Megabyte => ModelConfig::Megabyte(MegabyteConfig {
                patch_size: w[0],
                d_global: w[1],
                layers_global: w[2],
                heads_global: w[3],
                d_local: w[4],
                layers_local: w[5],
                heads_local: w[6],
                max_seq: w[7],
                norm_eps: eps,
            }),
            ModelFamily::Bigs => ModelConfig::Bigs(BigsConfig {
                d_model: w[0],
                d_expand: w[1],
                layers: w[2],
                n_modes: w[3],
                ssm_kernels: w[4],
                max_seq: w[5],
                n_classes: w[6],
                heads: w[7],
                norm_eps: eps,
            }),
        };
        config.validate()?;
        Ok(config)
    }

    /// Named fields, in header word order, for printing and for the
    /// safetensors metadata. `norm_eps` is given as its f32 bit pattern.
    pub fn fields(&self) -> [(&'static str, u32); 9] {
        let w = self.to_words();
        let names = match self {
            ModelConfig::Megabyte(_) => MEGABYTE_FIELDS,
            ModelConfig::Bigs(_) => BIGS_FIELDS,
        };
        let mut out = [("", 0u32); 9];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = (names[i], w[i]);
        }
        out
    }

    /// Inverse of [`ModelConfig::fields`]: builds a config from named values.
    pub fn from_fields(
        family: ModelFamily,
        mut get: impl FnMut(&str) -> Option<u32>,
    ) -> Result<Self, FormatError> {
        let names = match family {
            ModelFamily::Megabyte => MEGABYTE_FIELDS,
            ModelFamily::Bigs => BIGS_FIELDS,
        };
        let mut w = [0u32; CONFIG_WORDS];
        for (i, name) in names.iter().enumerate() {
            w[i] = get(name).ok_or(FormatError::MissingConfigField { field: name })?;
        }
        Self::from_words(family, &w)
    }

    pub fn max_seq(&self) -> u32 {
        match self {
            ModelConfig::Megabyte(c) => c.max_seq,
            ModelConfig::Bigs(c) => c.max_seq,
        }
    }

    pub fn norm_eps(&self) -> f32 {
        match self {
            ModelConfig::Megabyte(c) => c.norm_eps,
            ModelConfig::Bigs(c) => c.norm_eps,
        }
    }
}

/// Header word names for MEGABYTE, in order.
pub const MEGABYTE_FIELDS: [&str; 9] = [
    "patch_size",
    "d_global",
    "layers_global",
    "heads_global",
    "d_local",
    "layers_local",
    "heads_local",
    "max_seq",
    "norm_eps_bits",
];

/// Header word names for BiGS, in order.
pub const BIGS_FIELDS: [&str; 9] = [
    "d_model",
    "d_expand",
    "layers",
    "n_modes",
    "ssm_kernels",
    "max_seq",
    "n_classes",
    "heads",
    "norm_eps_bits",
];

fn bad_config(field: &'static str, value: u32, reason: &'static str) -> FormatError {
    FormatError::BadConfig {
        field,
        value,
        reason,
    }
}

fn check_dim(field: &'static str, value: u32) -> Result<(), FormatError> {
    if value == 0 {
        Err(bad_config(field, value, "must be at least 1"))
    } else if value > MAX_DIM {
        Err(bad_config(field, value, "exceeds the limit of 1048576"))
    } else {
        Ok(())
    }
}

fn check_eps(eps: f32) -> Result<(), FormatError> {
    if eps.is_finite() && eps > 0.0 && eps < 1.0 {
        Ok(())
    } else {
        Err(bad_config(
            "norm_eps",
            eps.to_bits(),
            "must be a finite number in (0, 1)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_match_the_design_sizes() {
        for c in [
            MegabyteConfig::MICRO,
            MegabyteConfig::SMALL,
            MegabyteConfig::BASE,
        ] {
            c.validate().unwrap();
        }
        for c in [BigsConfig::MICRO, BigsConfig::SMALL, BigsConfig::BASE] {
            c.validate().unwrap();
        }
        // MODELS.md quotes approximate counts: 1.2M, 14M, 92M; 0.9M, 6.8M, 41M.
        let m = |c: MegabyteConfig| c.param_count() as f64 / 1e6;
        assert!((m(MegabyteConfig::MICRO) - 1.2).abs() < 0.1);
        assert!((m(MegabyteConfig::SMALL) - 14.0).abs() < 1.0);
        assert!((m(MegabyteConfig::BASE) - 92.0).abs() < 4.0);
        let b = |c: BigsConfig| c.param_count() as f64 / 1e6;
        assert!((b(BigsConfig::MICRO) - 0.9).abs() < 0.1);
        assert!((b(BigsConfig::SMALL) - 6.8).abs() < 0.4);
        assert!((b(BigsConfig::BASE) - 41.0).abs() < 2.0);
    }

    #[test]
    fn words_round_trip() {
        let mut bigs = BigsConfig::MICRO;
        bigs.heads = BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY;
        bigs.n_classes = 2;
        for c in [
            ModelConfig::Megabyte(MegabyteConfig::SMALL),
            ModelConfig::Bigs(bigs),
        ] {
            let back = ModelConfig::from_words(c.family(), &c.to_words()).unwrap();
            assert_eq!(back, c);
            let fields = c.fields();
            let again = ModelConfig::from_fields(c.family(), |n| {
                fields.iter().find(|f| f.0 == n).map(|f| f.1)
            })
            .unwrap();
            assert_eq!(again, c);
        }
    }

    #[test]
    fn invalid_configs_are_named() {
        let mut c = MegabyteConfig::MICRO;
        c.max_seq = 510;
        let e = c.validate().unwrap_err();
        assert!(matches!(
            e,
            FormatError::BadConfig {
                field: "max_seq",
                ..
            }
        ));
        c = MegabyteConfig::MICRO;
        c.heads_local = 3;
        assert!(c.validate().is_err());
        c = MegabyteConfig::MICRO;
        c.norm_eps = f32::NAN;
        assert!(c.validate().is_err());
        let mut b = BigsConfig::MICRO;
        b.heads = BIGS_HEAD_CLASSIFY;
        assert!(b.validate().is_err(), "classifier without classes");
        b.n_classes = 3;
        b.validate().unwrap();
    }
}
