//! The tensors each model family needs: names, shapes and roles. The parser
//! checks files against this list, the trainer creates its parameters from
//! it and the runtime resolves its weights with it, so a name is spelled in
//! exactly one place.
//!
//! Linear weights are stored `[out, in]` row-major: a matrix-vector product
//! reads rows, and quantisation blocks run along `in`.

use crate::config::{BigsConfig, MegabyteConfig, ModelConfig, NgramConfig, BIGS_VOCAB};
use crate::dtype::{DType, QK};
use crate::error::{Shape, TensorName};

/// What a tensor is for; decides which dtypes it may have and whether the
/// optimiser decays it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A linear layer's weight `[out, in]`. Any numeric dtype; weight-decayed.
    Matrix,
    /// A token embedding `[vocab, d]` (tied to an output layer). Any numeric dtype; weight-decayed.
    TokenEmbedding,
    /// A learned position embedding `[T_max, d]`. Any numeric dtype; not decayed.
    PositionEmbedding,
    /// A hashed n-gram table `[buckets, d]` (`config::NgramConfig`). Any
    /// numeric dtype, stored like the embeddings; weight-decayed.
    NgramEmbedding,
    /// Norm weights and biases, layer biases, learned pad vectors. f32 only
    /// (they are tiny, and norms are sensitive to rounding); not decayed.
    Vector,
    /// State-space parameters (a, w, C, log_dt, D). f32 only: the kernel is
    /// sensitive to them and they are tiny. Not decayed.
    Ssm,
    /// Raw bytes (`meta.*`), e.g. classifier label names. u8 only.
    Meta,
}

impl Role {
    pub fn allows(self, dtype: DType) -> bool {
        match self {
            Role::Matrix
            | Role::TokenEmbedding
            | Role::PositionEmbedding
            | Role::NgramEmbedding => dtype.is_numeric(),
            Role::Vector | Role::Ssm => dtype == DType::F32,
            Role::Meta => dtype == DType::U8,
        }
    }

    /// Whether AdamW applies weight decay (MODELS.md: matrices only).
    pub fn weight_decay(self) -> bool {
        matches!(
            self,
            Role::Matrix | Role::TokenEmbedding | Role::NgramEmbedding
        )
    }

    /// The storage dtype for a tensor of this role when the user asks for
    /// `matrices` for weight matrices and `embeddings` for embedding tables.
    /// Quantised dtypes fall back to f16 for rows that are not whole blocks.
    pub fn storage_dtype(self, shape: Shape, matrices: DType, embeddings: DType) -> DType {
        let wanted = match self {
            Role::Matrix => matrices,
            Role::TokenEmbedding | Role::PositionEmbedding | Role::NgramEmbedding => embeddings,
            Role::Vector | Role::Ssm => DType::F32,
            Role::Meta => DType::U8,
        };
        if wanted.is_quantized() && !(shape.last() as usize).is_multiple_of(QK) {
            DType::F16
        } else {
            wanted
        }
    }
}

/// Which half of an affine pair (a norm's or a linear layer's) a tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Affine {
    Weight,
    Bias,
}

/// A MEGABYTE level: the global (patch) model or the local (byte) model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    Global,
    Local,
}

/// The embedding a hashed n-gram table adds to (`config::NgramConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NgramInput {
    /// MEGABYTE's global (patch) byte embedding.
    Global,
    /// MEGABYTE's local byte embedding.
    Local,
    /// BiGS's token embedding.
    Bigs,
}

/// One tensor of a MEGABYTE transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockPart {
    Ln1(Affine),
    /// Attention's fused query/key/value projection `[3w, w]`.
    Qkv,
    AttnProj,
    Ln2(Affine),
    MlpFc,
    MlpProj,
}

/// A BiGS layer's linear maps (MODELS.md's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BigsLinear {
    V,
    F,
    B,
    Uf,
    Ub,
    L,
    O,
}

impl BigsLinear {
    /// Every linear map of a layer, in schema order.
    pub const ALL: [BigsLinear; 7] = [
        BigsLinear::V,
        BigsLinear::F,
        BigsLinear::B,
        BigsLinear::Uf,
        BigsLinear::Ub,
        BigsLinear::L,
        BigsLinear::O,
    ];
}

/// The direction of a BiGS layer's state-space model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SsmDirection {
    Forward,
    Backward,
}

/// One parameter of a state-space model (MODELS.md: a, w, C, log Δt, D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SsmPart {
    A,
    W,
    C,
    LogDt,
    D,
}

impl SsmPart {
    /// Every SSM parameter, in schema order.
    pub const ALL: [SsmPart; 5] = [
        SsmPart::A,
        SsmPart::W,
        SsmPart::C,
        SsmPart::LogDt,
        SsmPart::D,
    ];
}

/// One tensor of a BiGS layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BigsPart {
    Ln(Affine),
    Linear(BigsLinear, Affine),
    Ssm(SsmDirection, SsmPart),
}

/// A tensor of either family, typed: code names a tensor by building one of
/// these, so a misspelt name is a compile error rather than a missing tensor
/// at load time. `TensorId::pieces` (private) is the only place names are
/// spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorId {
    /// A MEGABYTE level's byte embedding `[256, d]` (the local one is also
    /// the output layer).
    TokEmb(Level),
    /// MEGABYTE's global position embedding.
    PosEmb,
    /// A MEGABYTE level's learned pad vector.
    Pad(Level),
    Block {
        level: Level,
        layer: u32,
        part: BlockPart,
    },
    /// A MEGABYTE level's final layer norm.
    FinalLn(Level, Affine),
    /// MEGABYTE's global-to-local projection.
    GlobalToLocal,
    /// The order-`order` hashed n-gram table of an embedding.
    Ngram {
        input: NgramInput,
        order: u32,
    },
    BigsTok,
    BigsPos,
    BigsEmbedLn(Affine),
    BigsLayer {
        layer: u32,
        part: BigsPart,
    },
    BigsFinalLn(Affine),
    MlmDense(Affine),
    MlmLn(Affine),
    ClsDense(Affine),
    ClsOut(Affine),
    /// The n-gram logits' matrix `[n_classes, tables * buckets]`
    /// (`BigsConfig::head_ngram`): column `i * buckets + row` is row `row`
    /// of the i-th order, ascending.
    ClsNgram,
    /// A classifier's label names ([`LABELS_TENSOR`]).
    Labels,
}

impl TensorId {
    /// The name the file stores this tensor under. Built with `push_str`
    /// and a digit loop rather than `core::fmt`: the schema walk names every
    /// tensor, and formatting machinery per name cost the firmware about a
    /// kilobyte. Every generated name is far shorter than `MAX_NAME_LEN` for
    /// configs that pass validation (layer indices are at most 7 digits).
    #[inline(never)]
    pub fn name(&self) -> TensorName {
        let (head, index, mid, tail) = self.pieces();
        let mut s = TensorName::new();
        let _ = (|| {
            s.push_str(head)?;
            if let Some(i) = index {
                s.push_str(decimal(i, &mut [0; 10]))?;
            }
            s.push_str(mid)?;
            s.push_str(tail)
        })();
        s
    }

    /// The name as `head`, then the layer index or n-gram order if any,
    /// then `mid` and `tail`: the one place tensor names are spelled
    /// (SPEC.md). Static pieces rather than a format string per name keep
    /// the firmware's code small.
    fn pieces(&self) -> (&'static str, Option<u32>, &'static str, &'static str) {
        let affine = |a: &Affine| match a {
            Affine::Weight => "weight",
            Affine::Bias => "bias",
        };
        let global = |l: &Level| *l == Level::Global;
        let pick = |l: &Level, g: &'static str, loc: &'static str| if global(l) { g } else { loc };
        match self {
            TensorId::TokEmb(l) => (pick(l, "global.tok_emb", "local.tok_emb"), None, "", ""),
            TensorId::PosEmb => ("global.pos_emb", None, "", ""),
            TensorId::Pad(l) => (pick(l, "global.pad", "local.pad"), None, "", ""),
            TensorId::Block { level, layer, part } => {
                let (mid, tail) = match part {
                    BlockPart::Ln1(a) => (".ln1.", affine(a)),
                    BlockPart::Qkv => (".attn.qkv", ""),
                    BlockPart::AttnProj => (".attn.proj", ""),
                    BlockPart::Ln2(a) => (".ln2.", affine(a)),
                    BlockPart::MlpFc => (".mlp.fc", ""),
                    BlockPart::MlpProj => (".mlp.proj", ""),
                };
                let head = pick(level, "global.blocks.", "local.blocks.");
                (head, Some(*layer), mid, tail)
            }
            TensorId::FinalLn(l, a) => {
                (pick(l, "global.ln_f.", "local.ln_f."), None, "", affine(a))
            }
            TensorId::GlobalToLocal => ("global_to_local", None, "", ""),
            TensorId::Ngram { input, order } => {
                let head = match input {
                    NgramInput::Global => "global.ngram.",
                    NgramInput::Local => "local.ngram.",
                    NgramInput::Bigs => "embed.ngram.",
                };
                (head, Some(*order), "", "")
            }
            TensorId::BigsTok => ("embed.tok", None, "", ""),
            TensorId::BigsPos => ("embed.pos", None, "", ""),
            TensorId::BigsEmbedLn(a) => ("embed.ln.", None, "", affine(a)),
            TensorId::BigsLayer { layer, part } => {
                let (mid, tail) = match part {
                    BigsPart::Ln(a) => (".ln.", affine(a)),
                    BigsPart::Linear(lin, a) => {
                        let mid = match lin {
                            BigsLinear::V => ".v.",
                            BigsLinear::F => ".f.",
                            BigsLinear::B => ".b.",
                            BigsLinear::Uf => ".uf.",
                            BigsLinear::Ub => ".ub.",
                            BigsLinear::L => ".l.",
                            BigsLinear::O => ".o.",
                        };
                        (mid, affine(a))
                    }
                    BigsPart::Ssm(dir, p) => {
                        let mid = match dir {
                            SsmDirection::Forward => ".ssm_fwd.",
                            SsmDirection::Backward => ".ssm_bwd.",
                        };
                        let tail = match p {
                            SsmPart::A => "a",
                            SsmPart::W => "w",
                            SsmPart::C => "c",
                            SsmPart::LogDt => "log_dt",
                            SsmPart::D => "d",
                        };
                        (mid, tail)
                    }
                };
                ("layers.", Some(*layer), mid, tail)
            }
            TensorId::BigsFinalLn(a) => ("ln_f.", None, "", affine(a)),
            TensorId::MlmDense(a) => ("mlm.dense.", None, "", affine(a)),
            TensorId::MlmLn(a) => ("mlm.ln.", None, "", affine(a)),
            TensorId::ClsDense(a) => ("cls.dense.", None, "", affine(a)),
            TensorId::ClsOut(a) => ("cls.out.", None, "", affine(a)),
            TensorId::ClsNgram => ("cls.ngram.", None, "", "weight"),
            TensorId::Labels => (LABELS_TENSOR, None, "", ""),
        }
    }
}

impl core::fmt::Display for TensorId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.name())
    }
}

/// `n` in decimal, written into the end of `digits` (what `write!(s,
/// "{n}")` would append, without `core::fmt`).
fn decimal(mut n: u32, digits: &mut [u8; 10]) -> &str {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits: always UTF-8.
    core::str::from_utf8(&digits[start..]).unwrap_or("")
}

/// One required tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub id: TensorId,
    /// `id`'s name.
    pub name: TensorName,
    /// Expected shape; `None` for metadata, whose length varies.
    pub shape: Option<Shape>,
    pub role: Role,
}

/// Name of the metadata tensor holding a classifier's label names,
/// newline-separated UTF-8, one per class in class order.
pub const LABELS_TENSOR: &str = "meta.labels";

/// Calls `f` with every tensor `config` needs, in a fixed canonical order.
pub fn for_each_tensor<E>(
    config: &ModelConfig,
    mut f: impl FnMut(&TensorSpec) -> Result<(), E>,
) -> Result<(), E> {
    // The schema walk itself is not generic, so firmware that validates
    // files and looks names up carries one copy of it, not one per caller.
    let mut err = None;
    let _ = walk(config, &mut |spec| f(spec).map_err(|e| err = Some(e)));
    err.map_or(Ok(()), Err)
}

/// Calls `f` with every tensor, stopping at its first `Err`.
fn walk(config: &ModelConfig, f: &mut dyn FnMut(&TensorSpec) -> Result<(), ()>) -> Result<(), ()> {
    let mut emit = |id: TensorId, dims: &[u32], role: Role| emit_spec(f, id, Some(dims), role);
    match config {
        ModelConfig::Megabyte(c) => megabyte_tensors(c, &mut emit),
        ModelConfig::Bigs(c) => {
            bigs_tensors(c, &mut emit)?;
            if c.has_classifier() {
                emit_spec(f, TensorId::Labels, None, Role::Meta)?;
            }
            Ok(())
        }
    }
}

/// Builds one spec and hands it to `f`. Not inlined: the walk has some forty
/// call sites, and a copy of the spec building (name, shape, a 120-byte
/// struct) at each cost the firmware kilobytes.
#[inline(never)]
fn emit_spec(
    f: &mut dyn FnMut(&TensorSpec) -> Result<(), ()>,
    id: TensorId,
    dims: Option<&[u32]>,
    role: Role,
) -> Result<(), ()> {
    f(&TensorSpec {
        id,
        name: id.name(),
        shape: dims.map(Shape::new),
        role,
    })
}

/// The spec for one name, if the config has such a tensor.
pub fn find_spec(config: &ModelConfig, wanted: &str) -> Option<TensorSpec> {
    let mut found = None;
    let _ = walk(config, &mut |s| {
        if s.name.as_str() == wanted {
            found = Some(s.clone());
            Err(())
        } else {
            Ok(())
        }
    });
    found
}

type Emit<'f> = dyn FnMut(TensorId, &[u32], Role) -> Result<(), ()> + 'f;

fn ngram_tables(
    input: NgramInput,
    c: &NgramConfig,
    width: u32,
    emit: &mut Emit<'_>,
) -> Result<(), ()> {
    for order in c.each_order() {
        emit(
            TensorId::Ngram { input, order },
            &[c.buckets, width],
            Role::NgramEmbedding,
        )?;
    }
    Ok(())
}

fn transformer_block(level: Level, layer: u32, w: u32, emit: &mut Emit<'_>) -> Result<(), ()> {
    // A table and one call site, not eight inlined calls.
    let parts: [(BlockPart, &[u32], Role); 8] = [
        (BlockPart::Ln1(Affine::Weight), &[w], Role::Vector),
        (BlockPart::Ln1(Affine::Bias), &[w], Role::Vector),
        (BlockPart::Qkv, &[3 * w, w], Role::Matrix),
        (BlockPart::AttnProj, &[w, w], Role::Matrix),
        (BlockPart::Ln2(Affine::Weight), &[w], Role::Vector),
        (BlockPart::Ln2(Affine::Bias), &[w], Role::Vector),
        (BlockPart::MlpFc, &[4 * w, w], Role::Matrix),
        (BlockPart::MlpProj, &[w, 4 * w], Role::Matrix),
    ];
    for (part, dims, role) in parts {
        emit(TensorId::Block { level, layer, part }, dims, role)?;
    }
    Ok(())
}

/// A layer norm's (or linear layer's) weight `[out, ..]` and bias `[out]`.
/// Not inlined, for the reason `emit_spec` is not.
#[inline(never)]
fn affine_pair(
    id: &dyn Fn(Affine) -> TensorId,
    weight: &[u32],
    weight_role: Role,
    emit: &mut Emit<'_>,
) -> Result<(), ()> {
    emit(id(Affine::Weight), weight, weight_role)?;
    emit(id(Affine::Bias), &weight[..1], Role::Vector)
}

fn megabyte_tensors(c: &MegabyteConfig, emit: &mut Emit<'_>) -> Result<(), ()> {
    let g = c.patch_size * c.d_global;
    let l = c.d_local;
    emit(
        TensorId::TokEmb(Level::Global),
        &[256, c.d_global],
        Role::TokenEmbedding,
    )?;
    ngram_tables(NgramInput::Global, &c.ngram, c.d_global, emit)?;
    emit(
        TensorId::PosEmb,
        &[c.max_seq, c.d_global],
        Role::PositionEmbedding,
    )?;
    emit(TensorId::Pad(Level::Global), &[g], Role::Vector)?;
    for i in 0..c.layers_global {
        transformer_block(Level::Global, i, g, emit)?;
    }
    affine_pair(
        &|a| TensorId::FinalLn(Level::Global, a),
        &[g],
        Role::Vector,
        emit,
    )?;
    emit(TensorId::GlobalToLocal, &[l, c.d_global], Role::Matrix)?;
    emit(
        TensorId::TokEmb(Level::Local),
        &[256, l],
        Role::TokenEmbedding,
    )?;
    ngram_tables(NgramInput::Local, &c.local_ngram, l, emit)?;
    emit(TensorId::Pad(Level::Local), &[l], Role::Vector)?;
    for i in 0..c.layers_local {
        transformer_block(Level::Local, i, l, emit)?;
    }
    affine_pair(
        &|a| TensorId::FinalLn(Level::Local, a),
        &[l],
        Role::Vector,
        emit,
    )
}

fn bigs_tensors(c: &BigsConfig, emit: &mut Emit<'_>) -> Result<(), ()> {
    let (d, e, k, n) = (c.d_model, c.d_expand, c.ssm_kernels, c.n_modes);
    emit(TensorId::BigsTok, &[BIGS_VOCAB, d], Role::TokenEmbedding)?;
    ngram_tables(NgramInput::Bigs, &c.ngram, d, emit)?;
    emit(TensorId::BigsPos, &[c.max_seq, d], Role::PositionEmbedding)?;
    affine_pair(&TensorId::BigsEmbedLn, &[d], Role::Vector, emit)?;
    for layer in 0..c.layers {
        let id = |part| TensorId::BigsLayer { layer, part };
        affine_pair(&|a| id(BigsPart::Ln(a)), &[d], Role::Vector, emit)?;
        for lin in BigsLinear::ALL {
            let (out, inp) = match lin {
                BigsLinear::V | BigsLinear::L => (e, d),
                BigsLinear::O => (d, e),
                BigsLinear::F | BigsLinear::B | BigsLinear::Uf | BigsLinear::Ub => (d, d),
            };
            affine_pair(
                &|a| id(BigsPart::Linear(lin, a)),
                &[out, inp],
                Role::Matrix,
                emit,
            )?;
        }
        for dir in [SsmDirection::Forward, SsmDirection::Backward] {
            for p in SsmPart::ALL {
                let dims: &[u32] = match p {
                    SsmPart::A | SsmPart::W => &[k, n],
                    SsmPart::C => &[k, n, 2],
                    SsmPart::LogDt | SsmPart::D => &[k],
                };
                emit(id(BigsPart::Ssm(dir, p)), dims, Role::Ssm)?;
            }
        }
    }
    affine_pair(&TensorId::BigsFinalLn, &[d], Role::Vector, emit)?;
    if c.has_mlm_head() {
        affine_pair(&TensorId::MlmDense, &[d, d], Role::Matrix, emit)?;
        affine_pair(&TensorId::MlmLn, &[d], Role::Vector, emit)?;
    }
    if c.has_classifier() {
        affine_pair(&TensorId::ClsDense, &[d, d], Role::Matrix, emit)?;
        affine_pair(&TensorId::ClsOut, &[c.n_classes, d], Role::Matrix, emit)?;
        if c.head_ngram.enabled() {
            // Validation bounds the columns to 16,777,216 / n_classes.
            let cols = c.head_ngram_features() as u32;
            emit(TensorId::ClsNgram, &[c.n_classes, cols], Role::Matrix)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BIGS_HEAD_CLASSIFY, BIGS_HEAD_MLM};

    fn count_params(c: &ModelConfig) -> u64 {
        let mut total = 0;
        for_each_tensor::<()>(c, |s| {
            if let Some(shape) = s.shape {
                total += shape.numel().unwrap();
            }
            Ok(())
        })
        .unwrap();
        total
    }

    #[test]
    fn schema_matches_param_count() {
        let mut cls = BigsConfig::SMALL;
        cls.heads = BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY;
        cls.n_classes = 5;
        for c in [
            ModelConfig::Megabyte(MegabyteConfig::MICRO),
            ModelConfig::Megabyte(MegabyteConfig::BASE),
            ModelConfig::Bigs(BigsConfig::MICRO),
            ModelConfig::Bigs(cls),
            ModelConfig::Megabyte(
                MegabyteConfig::MICRO
                    .with_ngram(NgramConfig::orders(3, 6, 100))
                    .with_local_ngram(NgramConfig::orders(2, 4, 30)),
            ),
            ModelConfig::Bigs(cls.with_ngram(NgramConfig::orders(2, 8, 7))),
            ModelConfig::Bigs(BigsConfig::MICRO.classifier(7, false)),
        ] {
            assert_eq!(count_params(&c), c.param_count(), "{c:?}");
        }
    }

    /// The names files store (SPEC.md): pinned here, so a change to the one
    /// spelling function shows up as a format change.
    #[test]
    fn tensor_ids_spell_the_format_names() {
        let block = |level, layer, part| TensorId::Block { level, layer, part };
        let bigs = |layer, part| TensorId::BigsLayer { layer, part };
        for (id, want) in [
            (TensorId::TokEmb(Level::Global), "global.tok_emb"),
            (TensorId::TokEmb(Level::Local), "local.tok_emb"),
            (TensorId::PosEmb, "global.pos_emb"),
            (TensorId::Pad(Level::Local), "local.pad"),
            (
                block(Level::Global, 3, BlockPart::Ln1(Affine::Bias)),
                "global.blocks.3.ln1.bias",
            ),
            (
                block(Level::Local, 0, BlockPart::Qkv),
                "local.blocks.0.attn.qkv",
            ),
            (
                block(Level::Local, 1, BlockPart::AttnProj),
                "local.blocks.1.attn.proj",
            ),
            (
                block(Level::Global, 2, BlockPart::Ln2(Affine::Weight)),
                "global.blocks.2.ln2.weight",
            ),
            (
                block(Level::Global, 0, BlockPart::MlpFc),
                "global.blocks.0.mlp.fc",
            ),
            (
                block(Level::Global, 11, BlockPart::MlpProj),
                "global.blocks.11.mlp.proj",
            ),
            (
                TensorId::FinalLn(Level::Local, Affine::Bias),
                "local.ln_f.bias",
            ),
            (TensorId::GlobalToLocal, "global_to_local"),
            (
                TensorId::Ngram {
                    input: NgramInput::Bigs,
                    order: 5,
                },
                "embed.ngram.5",
            ),
            (
                TensorId::Ngram {
                    input: NgramInput::Local,
                    order: 3,
                },
                "local.ngram.3",
            ),
            (TensorId::BigsTok, "embed.tok"),
            (TensorId::BigsPos, "embed.pos"),
            (TensorId::BigsEmbedLn(Affine::Weight), "embed.ln.weight"),
            (bigs(4, BigsPart::Ln(Affine::Bias)), "layers.4.ln.bias"),
            (
                bigs(0, BigsPart::Linear(BigsLinear::Uf, Affine::Weight)),
                "layers.0.uf.weight",
            ),
            (
                bigs(1, BigsPart::Ssm(SsmDirection::Backward, SsmPart::LogDt)),
                "layers.1.ssm_bwd.log_dt",
            ),
            (
                bigs(2, BigsPart::Ssm(SsmDirection::Forward, SsmPart::C)),
                "layers.2.ssm_fwd.c",
            ),
            (TensorId::BigsFinalLn(Affine::Weight), "ln_f.weight"),
            (TensorId::MlmDense(Affine::Bias), "mlm.dense.bias"),
            (TensorId::MlmLn(Affine::Weight), "mlm.ln.weight"),
            (TensorId::ClsDense(Affine::Weight), "cls.dense.weight"),
            (TensorId::ClsOut(Affine::Bias), "cls.out.bias"),
            (TensorId::ClsNgram, "cls.ngram.weight"),
            (TensorId::Labels, "meta.labels"),
        ] {
            assert_eq!(id.name().as_str(), want);
        }
    }

    /// Every tensor of every config has its own name, and looking the name
    /// up gives back the same id: no two ids spell alike.
    #[test]
    // Quadratic in the tensor count, so small configs (two layers a level
    // cover every part; more layers only repeat them) and not under miri,
    // where it is pure logic and would take minutes.
    #[cfg_attr(miri, ignore)]
    fn tensor_ids_and_names_are_one_to_one() {
        let mut cls = BigsConfig::MICRO
            .with_ngram(NgramConfig::orders(2, 8, 7))
            .classifier(3, true);
        cls.layers = 2;
        let mut mb = MegabyteConfig::MICRO
            .with_ngram(NgramConfig::orders(3, 6, 100))
            .with_local_ngram(NgramConfig::orders(2, 4, 30));
        (mb.layers_global, mb.layers_local) = (2, 2);
        for c in [ModelConfig::Megabyte(mb), ModelConfig::Bigs(cls)] {
            for_each_tensor::<()>(&c, |s| {
                assert_eq!(s.name, s.id.name());
                let mut same = 0;
                for_each_tensor::<()>(&c, |t| {
                    same += usize::from(t.name == s.name);
                    Ok(())
                })
                .unwrap();
                assert_eq!(same, 1, "{} more than once", s.name);
                assert_eq!(find_spec(&c, &s.name).unwrap().id, s.id);
                Ok(())
            })
            .unwrap();
        }
    }

    #[test]
    fn find_spec_and_roles() {
        let c = ModelConfig::Megabyte(MegabyteConfig::MICRO);
        let s = find_spec(&c, "global.blocks.3.attn.qkv").unwrap();
        assert_eq!(s.shape, Some(Shape::new(&[384, 128])));
        assert_eq!(s.role, Role::Matrix);
        assert!(find_spec(&c, "global.blocks.4.attn.qkv").is_none());
        assert!(!Role::Vector.allows(DType::Q8));
        assert_eq!(
            Role::Vector.storage_dtype(Shape::new(&[128]), DType::Q4, DType::Q8),
            DType::F32
        );
        assert_eq!(
            Role::Matrix.storage_dtype(Shape::new(&[3, 40]), DType::Q4, DType::Q8),
            DType::F16
        );
        assert_eq!(
            Role::Ssm.storage_dtype(Shape::new(&[1, 32]), DType::F16, DType::F16),
            DType::F32
        );
    }
}
