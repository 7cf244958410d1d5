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
/// Most layers per transformer (MEGABYTE's global and local, BiGS's
/// encoder): the runtime holds each model's layers in fixed tables of this
/// size, and checking it here keeps the trainer from training a model no
/// command can run.
pub const MAX_LAYERS: u32 = 24;

/// Hashed n-gram embeddings (as in BLT, arXiv 2412.09871): for every order
/// n in `orders`, the ids of the n positions ending at position t select one
/// of `buckets` rows of that order's table, and the row is added to the
/// token embedding at t. Positions before the start of the text read as
/// [`NGRAM_BOS`]. Zero buckets turn them off.
///
/// The hash ([`NgramConfig::bucket`]) is part of the file format
/// (`format/SPEC.md`): the trainer and the runtime both call this one
/// function, so a model means the same on every device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NgramConfig {
    /// Bit n set: order n is used, for n in `NGRAM_MIN_ORDER..=NGRAM_MAX_ORDER`.
    pub orders: u32,
    /// Rows of each order's table; 0: no n-gram embeddings (then `orders` is 0).
    pub buckets: u32,
}

/// The id that stands for positions before the start of a text.
pub const NGRAM_BOS: u32 = 0xffff;
/// Orders an [`NgramConfig`] may use (order 1 is the token embedding itself).
pub const NGRAM_MIN_ORDER: u32 = 2;
pub const NGRAM_MAX_ORDER: u32 = 8;
/// Rows per n-gram table at most: the CUDA embedding-gradient kernel puts
/// one table row per grid row, and 65,535 is the grid's y limit.
pub const NGRAM_MAX_BUCKETS: u32 = 65_535;

impl NgramConfig {
    pub const OFF: Self = NgramConfig {
        orders: 0,
        buckets: 0,
    };
    /// What the CLI turns on when a preset has none: orders 3..=6 (BLT's
    /// range starts at 3; orders past 6 rarely repeat in small corpora) in
    /// 4,096 rows each.
    pub const DEFAULT: Self = Self::orders(3, 6, 4096);

    /// Orders `lo..=hi` with `buckets` rows each.
    pub const fn orders(lo: u32, hi: u32, buckets: u32) -> Self {
        let mut orders = 0;
        let mut n = lo;
        while n <= hi {
            orders |= 1 << n;
            n += 1;
        }
        NgramConfig { orders, buckets }
    }

    pub const fn enabled(&self) -> bool {
        self.buckets != 0
    }

    /// Tables in the file: one per order.
    pub const fn tables(&self) -> u32 {
        if self.enabled() {
            self.orders.count_ones()
        } else {
            0
        }
    }

    /// The orders in ascending order (the order of their tables).
    pub fn each_order(&self) -> impl Iterator<Item = u32> + '_ {
        (NGRAM_MIN_ORDER..=NGRAM_MAX_ORDER)
            .filter(move |&n| self.enabled() && self.orders >> n & 1 != 0)
    }

    pub fn validate(&self) -> Result<(), FormatError> {
        self.validate_as("ngram_orders", "ngram_buckets")
    }

    /// [`NgramConfig::validate`], naming the header words as given. Out
    /// of line: three callers, and the firmware's code budget (README).
    #[inline(never)]
    pub fn validate_as(
        &self,
        orders_field: &'static str,
        buckets_field: &'static str,
    ) -> Result<(), FormatError> {
        let allowed = Self::orders(NGRAM_MIN_ORDER, NGRAM_MAX_ORDER, 0).orders;
        if self.orders & !allowed != 0 {
            return Err(bad_config(
                orders_field,
                self.orders,
                "may only set bits 2..=8 (the n-gram orders)",
            ));
        }
        if self.buckets > NGRAM_MAX_BUCKETS {
            return Err(bad_config(
                buckets_field,
                self.buckets,
                "exceeds the limit of 65535",
            ));
        }
        if (self.buckets == 0) != (self.orders == 0) {
            return Err(bad_config(
                orders_field,
                self.orders,
                "must be 0 exactly when the matching buckets word is 0",
            ));
        }
        Ok(())
    }

    /// The table row of the order-`n` n-gram ending at position `t`, where
    /// `id(i)` is the id at position `i` (only `t + 1 - n ..= t` are asked).
    ///
    /// The hash: FNV-1a over 32-bit symbols, starting from
    /// `0x811c9dc5 ^ (n * 0x9e3779b9)`; each id (oldest first, NGRAM_BOS
    /// before the start) is XORed in, then the state multiplied by
    /// `0x01000193`; then MurmurHash3's 32-bit finaliser; the row is
    /// `(hash * buckets) >> 32`.
    pub fn bucket(&self, n: u32, t: usize, id: impl Fn(usize) -> u32) -> u32 {
        let mut h = 0x811c_9dc5u32 ^ n.wrapping_mul(0x9e37_79b9);
        for back in (0..n as usize).rev() {
            let v = if back <= t { id(t - back) } else { NGRAM_BOS };
            h = (h ^ v).wrapping_mul(0x0100_0193);
        }
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        ((h as u64 * self.buckets as u64) >> 32) as u32
    }
}

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
    /// Hashed n-gram embeddings added to the global byte embedding (width D_G).
    pub ngram: NgramConfig,
    /// Hashed n-gram embeddings added to the local byte embedding (width D_L),
    /// before the local model's shift: byte t's prediction sees the n-grams
    /// ending at t - 1 within its patch.
    pub local_ngram: NgramConfig,
}

impl MegabyteConfig {
    // Hashed n-grams of orders 3..=6 on the local model's byte input in
    // every preset: the local model predicts each byte, and the n-grams give
    // it the last bytes as units (tinyshakespeare, 187 s on a loaded 2-core
    // machine: 2.44 bpb with them, 3.01 without). Micro's 1,024 rows per
    // order keep it under 2 MB at q8 (1.90 MB).
    pub const MICRO: Self =
        Self::preset(4, 32, 4, 4, 128, 2, 4, 512).with_local_ngram(NgramConfig::orders(3, 6, 1024));
    pub const SMALL: Self = Self::preset(8, 64, 4, 8, 256, 2, 4, 2048)
        .with_local_ngram(NgramConfig::orders(3, 6, 4096));
    pub const BASE: Self = Self::preset(8, 96, 12, 12, 384, 4, 6, 8192)
        .with_local_ngram(NgramConfig::orders(3, 6, 4096));

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
            ngram: NgramConfig::OFF,
            local_ngram: NgramConfig::OFF,
        }
    }

    /// The same with hashed n-gram embeddings in the global model.
    pub const fn with_ngram(mut self, ngram: NgramConfig) -> Self {
        self.ngram = ngram;
        self
    }

    /// The same with hashed n-gram embeddings in the local model.
    pub const fn with_local_ngram(mut self, ngram: NgramConfig) -> Self {
        self.local_ngram = ngram;
        self
    }

    /// Width of the global transformer: `P * D_G`.
    pub const fn global_width(&self) -> usize {
        self.patch_size as usize * self.d_global as usize
    }

    /// Multiply-adds of the weight matrices per byte: the global model's
    /// blocks and its projection to the local width once per patch, the
    /// local model's blocks and its byte head once per byte. Attention over
    /// the context comes on top (it depends on the context). Generation
    /// (runtime) and training (trainer bench) count from this one formula.
    pub fn matrix_macs_per_byte(&self) -> f64 {
        let w = self.global_width() as f64;
        let l = self.d_local as f64;
        let p = self.patch_size as f64;
        // A block: qkv 3, proj 1, fc 4, fc_proj 4 (widths squared).
        let global = self.layers_global as f64 * 12.0 * w * w + p * self.d_global as f64 * l;
        let local = self.layers_local as f64 * 12.0 * l * l + 256.0 * l;
        global / p + local
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
        check_layers("layers_global", self.layers_global)?;
        check_layers("layers_local", self.layers_local)?;
        check_dim(
            "global width (patch_size * d_global)",
            self.patch_size.saturating_mul(self.d_global),
        )?;
        if !self.max_seq.is_multiple_of(self.patch_size) {
            return Err(bad_config(
                "max_seq",
                self.max_seq,
                "must be a multiple of patch_size",
            ));
        }
        if !self
            .global_width()
            .is_multiple_of(self.heads_global as usize)
        {
            return Err(bad_config(
                "heads_global",
                self.heads_global,
                "must divide the global width patch_size * d_global",
            ));
        }
        if !self.d_local.is_multiple_of(self.heads_local) {
            return Err(bad_config(
                "heads_local",
                self.heads_local,
                "must divide d_local",
            ));
        }
        self.ngram.validate()?;
        self.local_ngram
            .validate_as("local_ngram_orders", "local_ngram_buckets")?;
        check_eps(self.norm_eps)
    }

    /// Total parameter count (f32 elements) of the weights this config needs.
    pub fn param_count(&self) -> u64 {
        let g = self.global_width() as u64;
        let l = self.d_local as u64;
        let dg = self.d_global as u64;
        let block = |w: u64| 12 * w * w + 4 * w; // qkv + proj + 2 MLP mats, 2 norms
        256 * dg
            + self.ngram.tables() as u64 * self.ngram.buckets as u64 * dg
            + self.max_seq as u64 * dg
            + g
            + self.layers_global as u64 * block(g)
            + 2 * g
            + dg * l
            + 256 * l
            + self.local_ngram.tables() as u64 * self.local_ngram.buckets as u64 * l
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
    /// Hashed n-gram embeddings added to the token embedding (width d).
    pub ngram: NgramConfig,
    /// The classifier's n-gram logits: the text's bag of hashed n-grams
    /// (each occurrence weighing `1 / sqrt(text length)`) times a
    /// `[n_classes, tables * buckets]` matrix, added to the head's logits.
    /// A linear n-gram classifier inside the model; off without a classifier.
    pub head_ngram: NgramConfig,
}

impl BigsConfig {
    // Hashed n-grams of orders 3..=6 in every preset: they give a small
    // classifier the multi-byte units a character n-gram baseline has
    // (SST-2 from scratch in 10 CPU minutes: 81% with them, 65% without).
    // Micro's 1,536 rows per order keep it under 2 MB at q8 (1.90 MB).
    pub const MICRO: Self =
        Self::preset(128, 384, 4, 32, 1, 256).with_ngram(NgramConfig::orders(3, 6, 1536));
    pub const SMALL: Self =
        Self::preset(256, 768, 8, 64, 1, 512).with_ngram(NgramConfig::orders(3, 6, 4096));
    pub const BASE: Self =
        Self::preset(512, 1536, 12, 64, 1, 1024).with_ngram(NgramConfig::orders(3, 6, 4096));

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
            ngram: NgramConfig::OFF,
            head_ngram: NgramConfig::OFF,
        }
    }

    /// The same with hashed n-gram embeddings.
    pub const fn with_ngram(mut self, ngram: NgramConfig) -> Self {
        self.ngram = ngram;
        self
    }

    /// The same as a classifier of `n_classes` (with the masked-byte head
    /// too if `mlm`), with the default n-gram logits for that many classes.
    pub const fn classifier(mut self, n_classes: u32, mlm: bool) -> Self {
        self.heads = if mlm {
            BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY
        } else {
            BIGS_HEAD_CLASSIFY
        };
        self.n_classes = n_classes;
        self.head_ngram = default_head_ngram(n_classes);
        self
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
        check_layers("layers", self.layers)?;
        if !self.d_model.is_multiple_of(self.ssm_kernels) {
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
        self.ngram.validate()?;
        self.validate_head_ngram()?;
        check_eps(self.norm_eps)
    }

    /// Columns of the n-gram logits' matrix: one per row of every order.
    pub const fn head_ngram_features(&self) -> u64 {
        self.head_ngram.tables() as u64 * self.head_ngram.buckets as u64
    }

    fn validate_head_ngram(&self) -> Result<(), FormatError> {
        let h = self.head_ngram;
        h.validate_as("head_ngram_orders", "head_ngram_buckets")?;
        // Whole 32-element blocks per order keep every quantised block
        // inside one order's columns, so the runtime reads one block per
        // n-gram and class. One message for the three rules keeps the
        // firmware's code small.
        // In u32: orders x buckets <= 7 x 65,535 cannot overflow.
        let weights = self.n_classes.checked_mul(h.tables() * h.buckets);
        if h.enabled()
            && !(self.has_classifier()
                && h.buckets.is_multiple_of(32)
                && weights.is_some_and(|w| w <= HEAD_NGRAM_MAX_WEIGHTS))
        {
            return Err(bad_config(
                "head_ngram_buckets",
                h.buckets,
                "needs a classification head, a multiple of 32, and n_classes x orders x buckets <= 16777216",
            ));
        }
        Ok(())
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
            + self.ngram.tables() as u64 * self.ngram.buckets as u64 * d
            + self.max_seq as u64 * d
            + 2 * d
            + self.layers as u64 * layer
            + 2 * d;
        if self.has_mlm_head() {
            total += d * d + d + 2 * d;
        }
        if self.has_classifier() {
            let c = self.n_classes as u64;
            total += d * d + d + c * d + c + c * self.head_ngram_features();
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
                w[..13].copy_from_slice(&[
                    c.patch_size,
                    c.d_global,
                    c.layers_global,
                    c.heads_global,
                    c.d_local,
                    c.layers_local,
                    c.heads_local,
                    c.max_seq,
                    c.norm_eps.to_bits(),
                    c.ngram.orders,
                    c.ngram.buckets,
                    c.local_ngram.orders,
                    c.local_ngram.buckets,
                ]);
            }
            ModelConfig::Bigs(c) => {
                w[..11].copy_from_slice(&[
                    c.d_model,
                    c.d_expand,
                    c.layers,
                    c.n_modes,
                    c.ssm_kernels,
                    c.max_seq,
                    c.n_classes,
                    c.heads,
                    c.norm_eps.to_bits(),
                    c.ngram.orders,
                    c.ngram.buckets,
                ]);
                w[HEAD_NGRAM_WORDS].copy_from_slice(&[c.head_ngram.orders, c.head_ngram.buckets]);
            }
        }
        w
    }

    /// Reads and validates a config block. Unused words must be zero so that a
    /// later version can give them meaning without old readers misreading them.
    pub fn from_words(family: ModelFamily, w: &[u32; CONFIG_WORDS]) -> Result<Self, FormatError> {
        let end = match family {
            ModelFamily::Megabyte => LOCAL_NGRAM_WORDS.end,
            ModelFamily::Bigs => HEAD_NGRAM_WORDS.end,
        };
        if let Some(i) = w[end..].iter().position(|&x| x != 0) {
            return Err(FormatError::ReservedNotZero {
                offset: (64 + 4 * (end + i)) as u64,
            });
        }
        let eps = f32::from_bits(w[8]);
        let ngram = NgramConfig {
            orders: w[NGRAM_WORDS.start],
            buckets: w[NGRAM_WORDS.start + 1],
        };
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
                ngram,
                local_ngram: NgramConfig {
                    orders: w[LOCAL_NGRAM_WORDS.start],
                    buckets: w[LOCAL_NGRAM_WORDS.start + 1],
                },
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
                ngram,
                head_ngram: NgramConfig {
                    orders: w[HEAD_NGRAM_WORDS.start],
                    buckets: w[HEAD_NGRAM_WORDS.start + 1],
                },
            }),
        };
        config.validate()?;
        Ok(config)
    }

    /// Named fields, in header word order, for printing and for the
    /// safetensors metadata. `norm_eps` is given as its f32 bit pattern.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, u32)> {
        let w = self.to_words();
        let names: &'static [&'static str] = match self {
            ModelConfig::Megabyte(_) => &MEGABYTE_FIELDS,
            ModelConfig::Bigs(_) => &BIGS_FIELDS,
        };
        names.iter().zip(w).map(|(&n, v)| (n, v))
    }

    /// Inverse of [`ModelConfig::fields`]: builds a config from named values.
    pub fn from_fields(
        family: ModelFamily,
        mut get: impl FnMut(&str) -> Option<u32>,
    ) -> Result<Self, FormatError> {
        let names: &[&str] = match family {
            ModelFamily::Megabyte => &MEGABYTE_FIELDS,
            ModelFamily::Bigs => &BIGS_FIELDS,
        };
        let mut w = [0u32; CONFIG_WORDS];
        for (i, name) in names.iter().enumerate() {
            // Files from before n-grams lack their fields: off.
            let optional = i >= NGRAM_WORDS.start;
            w[i] = match get(name) {
                Some(v) => v,
                None if optional => 0,
                None => return Err(FormatError::MissingConfigField { field: name }),
            };
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

/// The header words of the n-gram config (the same in both families), and
/// of MEGABYTE's local one.
pub const NGRAM_WORDS: core::ops::Range<usize> = 9..11;
pub const LOCAL_NGRAM_WORDS: core::ops::Range<usize> = 11..13;
/// The header words of BiGS's n-gram logits (`BigsConfig::head_ngram`).
pub const HEAD_NGRAM_WORDS: core::ops::Range<usize> = 11..13;

/// Most weights of the n-gram logits' matrix (64 MiB in f32).
pub const HEAD_NGRAM_MAX_WEIGHTS: u32 = 1 << 24;

/// Weights the default n-gram logits spend for up to eight classes: 64 KiB
/// at q8, about 3.5% of the micro model's flash.
pub const HEAD_NGRAM_DEFAULT_WEIGHTS: u32 = 1 << 16;

/// Fewest rows per order the default n-gram logits get, whatever the
/// classes. Past eight classes the 64 KiB share would leave each order
/// under 2,048 rows, and there the collisions cost more than the flash
/// saves: on 24 speakers of tinyshakespeare a logistic regression over
/// these features fell from 27.7% to 21.1% at 672 rows, and the model
/// from 30.9% to 26.7% (README, "Many classes"). So a many-class table
/// pays 8 KiB at q8 per class instead.
pub const HEAD_NGRAM_MIN_ROWS: u32 = 2048;

/// The n-gram logits a new classifier of `n_classes` gets: orders 2..=5
/// (a character n-gram baseline's range, order 1 being the bytes the
/// encoder already sees), rows as [`head_ngram_rows`] gives them: 8,192
/// per order for two classes, 2,048 from eight classes on.
pub const fn default_head_ngram(n_classes: u32) -> NgramConfig {
    let orders = NgramConfig::orders(2, 5, 0).orders;
    NgramConfig {
        orders,
        buckets: head_ngram_rows(n_classes, orders),
    }
}

/// Rows per order of `orders` (a bit set) for `n_classes`: as many as
/// [`HEAD_NGRAM_DEFAULT_WEIGHTS`] allows, but at least
/// [`HEAD_NGRAM_MIN_ROWS`], within [`HEAD_NGRAM_MAX_WEIGHTS`] and the
/// bucket limit; a multiple of 32 (at least 32).
pub const fn head_ngram_rows(n_classes: u32, orders: u32) -> u32 {
    let classes = if n_classes == 0 { 1 } else { n_classes };
    let tables = if orders == 0 { 1 } else { orders.count_ones() };
    let mut buckets = HEAD_NGRAM_DEFAULT_WEIGHTS / classes / tables;
    if buckets < HEAD_NGRAM_MIN_ROWS {
        buckets = HEAD_NGRAM_MIN_ROWS;
    }
    let most = HEAD_NGRAM_MAX_WEIGHTS / classes / tables;
    if buckets > most {
        buckets = most;
    }
    if buckets > NGRAM_MAX_BUCKETS {
        buckets = NGRAM_MAX_BUCKETS;
    }
    buckets = buckets / 32 * 32;
    if buckets < 32 {
        32
    } else {
        buckets
    }
}

/// Header word names for MEGABYTE, in order.
pub const MEGABYTE_FIELDS: [&str; LOCAL_NGRAM_WORDS.end] = [
    "patch_size",
    "d_global",
    "layers_global",
    "heads_global",
    "d_local",
    "layers_local",
    "heads_local",
    "max_seq",
    "norm_eps_bits",
    "ngram_orders",
    "ngram_buckets",
    "local_ngram_orders",
    "local_ngram_buckets",
];

/// Header word names for BiGS, in order.
pub const BIGS_FIELDS: [&str; HEAD_NGRAM_WORDS.end] = [
    "d_model",
    "d_expand",
    "layers",
    "n_modes",
    "ssm_kernels",
    "max_seq",
    "n_classes",
    "heads",
    "norm_eps_bits",
    "ngram_orders",
    "ngram_buckets",
    "head_ngram_orders",
    "head_ngram_buckets",
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

/// A layer count: a dimension the runtime can hold.
fn check_layers(field: &'static str, value: u32) -> Result<(), FormatError> {
    // The reason is a literal (errors hold &'static str): keep it in step.
    const _: () = assert!(MAX_LAYERS == 24);
    check_dim(field, value)?;
    if value > MAX_LAYERS {
        return Err(bad_config(
            field,
            value,
            "is more than the runtime runs: at most 24 layers per transformer",
        ));
    }
    Ok(())
}

fn check_eps(eps: f32) -> Result<(), FormatError> {
    if eps.is_finite() && eps > 0.0 && eps < 1.0 {
        Ok(())
    } else {
        Err(FormatError::BadFloatConfig {
            field: "norm_eps",
            value: eps,
            reason: "must be a finite number in (0, 1)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is part of the format: these rows must never change.
    #[test]
    fn ngram_buckets_are_the_specified_hash() {
        let c = NgramConfig::orders(2, 4, 4096);
        let text = b"hello";
        let id = |i: usize| text[i] as u32;
        let rows: [u32; 3] = core::array::from_fn(|i| c.bucket(i as u32 + 2, 4, id));
        assert_eq!(rows, GOLDEN);
        // Before the start: NGRAM_BOS, so position 0 of order 3 hashes
        // (BOS, BOS, 'h').
        let reference = |window: &[u32], n: u32| {
            let mut h = 0x811c_9dc5u32 ^ n.wrapping_mul(0x9e37_79b9);
            for &v in window {
                h = (h ^ v).wrapping_mul(0x0100_0193);
            }
            h ^= h >> 16;
            h = h.wrapping_mul(0x85eb_ca6b);
            h ^= h >> 13;
            h = h.wrapping_mul(0xc2b2_ae35);
            h ^= h >> 16;
            ((h as u64 * 4096) >> 32) as u32
        };
        assert_eq!(
            c.bucket(3, 0, id),
            reference(&[NGRAM_BOS, NGRAM_BOS, 104], 3)
        );
        assert_eq!(c.bucket(2, 4, id), reference(&[108, 111], 2));
        // Spread: 10,000 distinct trigrams fill rows as a random function
        // would (4,096 * (1 - e^-2.44) = 3,740).
        let mut seen = [false; 4096];
        for i in 0..10_000u32 {
            let w = [i % 256, i / 256 % 256, i / 65_536];
            seen[c.bucket(3, 2, |j| w[j]) as usize] = true;
        }
        assert!(seen.iter().filter(|&&s| s).count() > 3_600); // 3,740 expected
    }
    // Rows of "hello"'s last 2-, 3- and 4-gram in 4,096 buckets.
    const GOLDEN: [u32; 3] = [2258, 2446, 590];

    #[test]
    fn ngram_configs_validate() {
        assert!(NgramConfig::orders(3, 8, 10).each_order().eq(3..=8));
        assert_eq!(NgramConfig::orders(3, 8, 10).tables(), 6);
        assert_eq!(NgramConfig::OFF.tables(), 0);
        NgramConfig::OFF.validate().unwrap();
        NgramConfig::orders(2, 8, 65_535).validate().unwrap();
        for bad in [
            NgramConfig::orders(1, 3, 10),
            NgramConfig::orders(2, 9, 10),
            NgramConfig::orders(3, 4, 0),
            NgramConfig::orders(3, 4, 65_536),
            NgramConfig {
                orders: 0,
                buckets: 5,
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        // Words 9 and 10 round-trip; older files (zeros) read as off.
        let c = ModelConfig::Bigs(BigsConfig::MICRO.with_ngram(NgramConfig::orders(3, 5, 999)));
        let w = c.to_words();
        assert_eq!(ModelConfig::from_words(ModelFamily::Bigs, &w).unwrap(), c);
        let old = ModelConfig::Bigs(BigsConfig::MICRO.with_ngram(NgramConfig::OFF)).to_words();
        assert_eq!(old[9..].iter().sum::<u32>(), 0);
        let m = ModelConfig::Megabyte(
            MegabyteConfig::MICRO
                .with_ngram(NgramConfig::orders(3, 4, 10))
                .with_local_ngram(NgramConfig::orders(2, 6, 20)),
        );
        assert_eq!(
            ModelConfig::from_words(ModelFamily::Megabyte, &m.to_words()).unwrap(),
            m
        );
        let mut bad = m.to_words();
        bad[13] = 1;
        assert!(ModelConfig::from_words(ModelFamily::Megabyte, &bad).is_err());
        let mut bad = ModelConfig::Bigs(BigsConfig::MICRO).to_words();
        bad[HEAD_NGRAM_WORDS.end] = 1;
        assert!(ModelConfig::from_words(ModelFamily::Bigs, &bad).is_err());
        let fields: [(&str, u32); NGRAM_WORDS.end] = {
            let mut f = [("", 0); NGRAM_WORDS.end];
            for (slot, x) in f.iter_mut().zip(c.fields()) {
                *slot = x;
            }
            f
        };
        let back = ModelConfig::from_fields(ModelFamily::Bigs, |n| {
            fields.iter().find(|f| f.0 == n).map(|f| f.1)
        })
        .unwrap();
        assert_eq!(back, c);
        let without = ModelConfig::from_fields(ModelFamily::Bigs, |n| {
            fields
                .iter()
                .find(|f| f.0 == n && !n.starts_with("ngram"))
                .map(|f| f.1)
        })
        .unwrap();
        assert_eq!(
            without,
            ModelConfig::Bigs(BigsConfig::MICRO.with_ngram(NgramConfig::OFF))
        );
    }

    #[test]
    fn head_ngram_logits_validate_and_round_trip() {
        assert_eq!(default_head_ngram(2), NgramConfig::orders(2, 5, 8192));
        assert_eq!(default_head_ngram(4).buckets, 4096);
        assert_eq!(default_head_ngram(8).buckets, 2048);
        assert_eq!(default_head_ngram(24).buckets, HEAD_NGRAM_MIN_ROWS);
        // Past what HEAD_NGRAM_MAX_WEIGHTS holds at the floor, the rows shrink.
        assert_eq!(default_head_ngram(65_536).buckets, 64);
        assert_eq!(default_head_ngram(1 << 20).buckets, 32);
        for classes in [2, 3, 8, 10, 24, 100, 2047, 2048, 2049, 65_536] {
            BigsConfig::MICRO
                .classifier(classes, true)
                .validate()
                .unwrap();
        }
        let c = BigsConfig::MICRO.classifier(2, true);
        c.validate().unwrap();
        assert_eq!(c.head_ngram_features(), 4 * 8192);
        let m = BigsConfig::MICRO.classifier(2, true);
        let plain = BigsConfig {
            head_ngram: NgramConfig::OFF,
            ..m
        };
        assert_eq!(m.param_count() - plain.param_count(), 2 * 4 * 8192);
        let w = ModelConfig::Bigs(c).to_words();
        assert_eq!(w[HEAD_NGRAM_WORDS], [c.head_ngram.orders, 8192]);
        assert_eq!(
            ModelConfig::from_words(ModelFamily::Bigs, &w).unwrap(),
            ModelConfig::Bigs(c)
        );
        let named = |c: BigsConfig| match c.validate() {
            Err(FormatError::BadConfig { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let with = |h| BigsConfig { head_ngram: h, ..c };
        assert_eq!(
            named(with(NgramConfig::orders(2, 3, 40))),
            "head_ngram_buckets"
        );
        assert_eq!(
            named(with(NgramConfig::orders(1, 3, 64))),
            "head_ngram_orders"
        );
        // Without a classifier the logits have nowhere to go.
        let mlm_only = BigsConfig {
            head_ngram: NgramConfig::orders(2, 3, 64),
            ..BigsConfig::MICRO
        };
        assert_eq!(named(mlm_only), "head_ngram_buckets");
        // The weight limit, whatever the class count.
        let wide = BigsConfig {
            n_classes: 65_536,
            head_ngram: NgramConfig::orders(2, 8, 64),
            ..c
        };
        assert_eq!(named(wide), "head_ngram_buckets");
    }

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
        let m = |c: MegabyteConfig| {
            c.with_ngram(NgramConfig::OFF)
                .with_local_ngram(NgramConfig::OFF)
                .param_count() as f64
                / 1e6
        };
        assert!((m(MegabyteConfig::MICRO) - 1.2).abs() < 0.1);
        assert!((m(MegabyteConfig::SMALL) - 14.0).abs() < 1.0);
        assert!((m(MegabyteConfig::BASE) - 92.0).abs() < 4.0);
        // MODELS.md's counts are of the architecture without n-gram tables.
        let b = |c: BigsConfig| c.with_ngram(NgramConfig::OFF).param_count() as f64 / 1e6;
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
            let again = ModelConfig::from_fields(c.family(), |n| {
                c.fields().find(|f| f.0 == n).map(|f| f.1)
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
        // The runtime's layer limit, for both families.
        c = MegabyteConfig::MICRO;
        c.layers_global = MAX_LAYERS;
        assert!(c.validate().is_ok());
        c.layers_local = MAX_LAYERS + 1;
        assert!(matches!(
            c.validate(),
            Err(FormatError::BadConfig {
                field: "layers_local",
                value: 25,
                ..
            })
        ));
        let mut deep = BigsConfig::MICRO;
        deep.layers = MAX_LAYERS + 1;
        assert!(matches!(
            deep.validate(),
            Err(FormatError::BadConfig {
                field: "layers",
                ..
            })
        ));
        c = MegabyteConfig::MICRO;
        c.norm_eps = f32::NAN;
        // Kept as the number, so messages print it, not its bits (2143289344).
        assert!(matches!(
            c.validate(),
            Err(FormatError::BadFloatConfig { field: "norm_eps", value, .. }) if value.is_nan()
        ));
        let mut b = BigsConfig::MICRO;
        b.heads = BIGS_HEAD_CLASSIFY;
        assert!(b.validate().is_err(), "classifier without classes");
        b.n_classes = 3;
        b.validate().unwrap();
    }
}
