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
use core::fmt::Write;

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
        if wanted.is_quantized() && shape.last() as usize % QK != 0 {
            DType::F16
        } else {
            wanted
        }
    }
}

/// One required tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: TensorName,
    /// Expected shape; `None` for metadata, whose length varies.
    pub shape: Option<Shape>,
    pub role: Role,
}

/// Name of the metadata tensor holding a classifier's label names,
/// newline-separated UTF-8, one per class in class order.
pub const LABELS_TENSOR: &str = "meta.labels";

fn name(args: core::fmt::Arguments<'_>) -> TensorName {
    let mut s = TensorName::new();
    // Every generated name is far shorter than MAX_NAME_LEN for configs that
    // pass validation (layer indices are at most 7 digits).
    let _ = s.write_fmt(args);
    s
}

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
    let mut emit = |n: TensorName, dims: &[u32], role: Role| {
        f(&TensorSpec {
            name: n,
            shape: Some(Shape::new(dims)),
            role,
        })
    };
    match config {
        ModelConfig::Megabyte(c) => megabyte_tensors(c, &mut emit),
        ModelConfig::Bigs(c) => {
            bigs_tensors(c, &mut emit)?;
            if c.has_classifier() {
                f(&TensorSpec {
                    name: name(format_args!("{LABELS_TENSOR}")),
                    shape: None,
                    role: Role::Meta,
                })?;
            }
            Ok(())
        }
    }
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

type Emit<'f> = dyn FnMut(TensorName, &[u32], Role) -> Result<(), ()> + 'f;

/// The name of the order-`n` n-gram table of the embedding `prefix`
/// (`global` for MEGABYTE, `embed` for BiGS).
pub fn ngram_table_name(prefix: &str, n: u32) -> TensorName {
    name(format_args!("{prefix}.ngram.{n}"))
}

fn ngram_tables(prefix: &str, c: &NgramConfig, width: u32, emit: &mut Emit<'_>) -> Result<(), ()> {
    for n in c.each_order() {
        emit(
            ngram_table_name(prefix, n),
            &[c.buckets, width],
            Role::NgramEmbedding,
        )?;
    }
    Ok(())
}

fn transformer_block(prefix: &str, i: u32, w: u32, emit: &mut Emit<'_>) -> Result<(), ()> {
    let p = |part: &str| name(format_args!("{prefix}.blocks.{i}.{part}"));
    emit(p("ln1.weight"), &[w], Role::Vector)?;
    emit(p("ln1.bias"), &[w], Role::Vector)?;
    emit(p("attn.qkv"), &[3 * w, w], Role::Matrix)?;
    emit(p("attn.proj"), &[w, w], Role::Matrix)?;
    emit(p("ln2.weight"), &[w], Role::Vector)?;
    emit(p("ln2.bias"), &[w], Role::Vector)?;
    emit(p("mlp.fc"), &[4 * w, w], Role::Matrix)?;
    emit(p("mlp.proj"), &[w, 4 * w], Role::Matrix)
}

fn megabyte_tensors(c: &MegabyteConfig, emit: &mut Emit<'_>) -> Result<(), ()> {
    let g = c.patch_size * c.d_global;
    let l = c.d_local;
    emit(
        name(format_args!("global.tok_emb")),
        &[256, c.d_global],
        Role::TokenEmbedding,
    )?;
    ngram_tables("global", &c.ngram, c.d_global, emit)?;
    emit(
        name(format_args!("global.pos_emb")),
        &[c.max_seq, c.d_global],
        Role::PositionEmbedding,
    )?;
    emit(name(format_args!("global.pad")), &[g], Role::Vector)?;
    for i in 0..c.layers_global {
        transformer_block("global", i, g, emit)?;
    }
    emit(name(format_args!("global.ln_f.weight")), &[g], Role::Vector)?;
    emit(name(format_args!("global.ln_f.bias")), &[g], Role::Vector)?;
    emit(
        name(format_args!("global_to_local")),
        &[l, c.d_global],
        Role::Matrix,
    )?;
    emit(
        name(format_args!("local.tok_emb")),
        &[256, l],
        Role::TokenEmbedding,
    )?;
    ngram_tables("local", &c.local_ngram, l, emit)?;
    emit(name(format_args!("local.pad")), &[l], Role::Vector)?;
    for i in 0..c.layers_local {
        transformer_block("local", i, l, emit)?;
    }
    emit(name(format_args!("local.ln_f.weight")), &[l], Role::Vector)?;
    emit(name(format_args!("local.ln_f.bias")), &[l], Role::Vector)
}

fn bigs_tensors(c: &BigsConfig, emit: &mut Emit<'_>) -> Result<(), ()> {
    let (d, e, k, n) = (c.d_model, c.d_expand, c.ssm_kernels, c.n_modes);
    emit(
        name(format_args!("embed.tok")),
        &[BIGS_VOCAB, d],
        Role::TokenEmbedding,
    )?;
    ngram_tables("embed", &c.ngram, d, emit)?;
    emit(
        name(format_args!("embed.pos")),
        &[c.max_seq, d],
        Role::PositionEmbedding,
    )?;
    emit(name(format_args!("embed.ln.weight")), &[d], Role::Vector)?;
    emit(name(format_args!("embed.ln.bias")), &[d], Role::Vector)?;
    for i in 0..c.layers {
        let p = |part: &str| name(format_args!("layers.{i}.{part}"));
        emit(p("ln.weight"), &[d], Role::Vector)?;
        emit(p("ln.bias"), &[d], Role::Vector)?;
        for (lin, out, inp) in [
            ("v", e, d),
            ("f", d, d),
            ("b", d, d),
            ("uf", d, d),
            ("ub", d, d),
            ("l", e, d),
            ("o", d, e),
        ] {
            emit(
                name(format_args!("layers.{i}.{lin}.weight")),
                &[out, inp],
                Role::Matrix,
            )?;
            emit(
                name(format_args!("layers.{i}.{lin}.bias")),
                &[out],
                Role::Vector,
            )?;
        }
        for dir in ["ssm_fwd", "ssm_bwd"] {
            emit(name(format_args!("layers.{i}.{dir}.a")), &[k, n], Role::Ssm)?;
            emit(name(format_args!("layers.{i}.{dir}.w")), &[k, n], Role::Ssm)?;
            emit(
                name(format_args!("layers.{i}.{dir}.c")),
                &[k, n, 2],
                Role::Ssm,
            )?;
            emit(
                name(format_args!("layers.{i}.{dir}.log_dt")),
                &[k],
                Role::Ssm,
            )?;
            emit(name(format_args!("layers.{i}.{dir}.d")), &[k], Role::Ssm)?;
        }
    }
    emit(name(format_args!("ln_f.weight")), &[d], Role::Vector)?;
    emit(name(format_args!("ln_f.bias")), &[d], Role::Vector)?;
    if c.has_mlm_head() {
        emit(
            name(format_args!("mlm.dense.weight")),
            &[d, d],
            Role::Matrix,
        )?;
        emit(name(format_args!("mlm.dense.bias")), &[d], Role::Vector)?;
        emit(name(format_args!("mlm.ln.weight")), &[d], Role::Vector)?;
        emit(name(format_args!("mlm.ln.bias")), &[d], Role::Vector)?;
    }
    if c.has_classifier() {
        emit(
            name(format_args!("cls.dense.weight")),
            &[d, d],
            Role::Matrix,
        )?;
        emit(name(format_args!("cls.dense.bias")), &[d], Role::Vector)?;
        emit(
            name(format_args!("cls.out.weight")),
            &[c.n_classes, d],
            Role::Matrix,
        )?;
        emit(
            name(format_args!("cls.out.bias")),
            &[c.n_classes],
            Role::Vector,
        )?;
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
        ] {
            assert_eq!(count_params(&c), c.param_count(), "{c:?}");
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
