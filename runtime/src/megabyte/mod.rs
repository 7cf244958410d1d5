//! MEGABYTE inference: weights resolved in place from a `.kbm` file, and a
//! [`Session`] that decodes incrementally inside a caller-given arena.
//!
//! The model is exactly ../shared/design/MODELS.md's (see also
//! format/SPEC.md for the tensor names): a global transformer over patches of
//! P bytes, a shared projection to the local width, and a local transformer
//! over the bytes of one patch with the output tied to the local embedding.

mod session;

pub use session::{ArenaSpec, Session, SessionLayout};

use crate::arena::Arena;
use crate::error::RuntimeError;
use crate::kernels::Matrix;
use crate::ngram::NgramTables;
use crate::tensors::{matrix, norm, vector};
use kilobyte_format::schema::{BlockPart, Level, NgramInput, TensorId};
use kilobyte_format::{MegabyteConfig, ModelConfig, ModelFile};

/// Most transformer layers per level the runtime's fixed tables hold
/// (the `base` preset has 12 global and 4 local). Defined by the format,
/// whose config validation (parser, trainer, `init`) enforces it.
pub const MAX_LAYERS: usize = kilobyte_format::config::MAX_LAYERS as usize;

/// One pre-norm transformer block's weights.
#[derive(Clone, Copy, Debug)]
pub struct Block<'m> {
    pub ln1_weight: &'m [f32],
    pub ln1_bias: &'m [f32],
    /// [3W, W]: q rows, then k rows, then v rows.
    pub qkv: Matrix<'m>,
    pub proj: Matrix<'m>,
    pub ln2_weight: &'m [f32],
    pub ln2_bias: &'m [f32],
    pub fc: Matrix<'m>,
    pub fc_proj: Matrix<'m>,
}

/// Weight bytes generation reads ([`Megabyte::weight_bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightBytes {
    /// The local model and output layer, read for every byte.
    pub local_per_byte: usize,
    /// The global model, and the projection once per position, read once
    /// per patch.
    pub global_per_patch: usize,
}

/// A stack of blocks with its final LayerNorm.
#[derive(Clone, Debug)]
pub struct Transformer<'m> {
    pub blocks: heapless::Vec<Block<'m>, MAX_LAYERS>,
    pub ln_f_weight: &'m [f32],
    pub ln_f_bias: &'m [f32],
    pub width: usize,
    pub heads: usize,
}

/// A MEGABYTE model whose weights borrow the file bytes (no copies).
#[derive(Clone, Debug)]
pub struct Megabyte<'m> {
    pub config: MegabyteConfig,
    /// E_G: [256, D_G].
    pub global_tok: Matrix<'m>,
    /// Hashed n-gram tables added to E_G.
    pub global_ngram: NgramTables<'m>,
    /// E_pos: [T_max, D_G].
    pub global_pos: Matrix<'m>,
    /// G_pad: [P * D_G].
    pub global_pad: &'m [f32],
    pub global: Transformer<'m>,
    /// W_GL: [D_L, D_G].
    pub global_to_local: Matrix<'m>,
    /// E_L: [256, D_L], also the output layer.
    pub local_tok: Matrix<'m>,
    /// Hashed n-gram tables added to E_L.
    pub local_ngram: NgramTables<'m>,
    /// E_Lpad: `[D_L]`.
    pub local_pad: &'m [f32],
    pub local: Transformer<'m>,
}

/// Bytes a matrix's weights occupy (what one full pass over it reads).
pub fn matrix_bytes(m: &Matrix<'_>) -> usize {
    use crate::kernels::Weights;
    match m.weights {
        Weights::F32(w) => core::mem::size_of_val(w),
        Weights::F16(w) => core::mem::size_of_val(w),
        Weights::BF16(w) => core::mem::size_of_val(w),
        Weights::Q8(w) => core::mem::size_of_val(w),
        Weights::Q4(w) => core::mem::size_of_val(w),
    }
}

fn transformer<'m>(
    file: &ModelFile<'m>,
    level: Level,
    layers: u32,
    width: usize,
    heads: usize,
) -> Result<Transformer<'m>, RuntimeError> {
    let mut blocks = heapless::Vec::new();
    for layer in 0..layers {
        let id = |part| TensorId::Block { level, layer, part };
        let (ln1_weight, ln1_bias) = norm(file, &|a| id(BlockPart::Ln1(a)))?;
        let (ln2_weight, ln2_bias) = norm(file, &|a| id(BlockPart::Ln2(a)))?;
        let block = Block {
            ln1_weight,
            ln1_bias,
            qkv: matrix(file, id(BlockPart::Qkv))?,
            proj: matrix(file, id(BlockPart::AttnProj))?,
            ln2_weight,
            ln2_bias,
            fc: matrix(file, id(BlockPart::MlpFc))?,
            fc_proj: matrix(file, id(BlockPart::MlpProj))?,
        };
        blocks
            .push(block)
            .map_err(|_| RuntimeError::TooManyLayers {
                layers,
                max: MAX_LAYERS,
            })?;
    }
    let (ln_f_weight, ln_f_bias) = norm(file, &|a| TensorId::FinalLn(level, a))?;
    Ok(Transformer {
        blocks,
        ln_f_weight,
        ln_f_bias,
        width,
        heads,
    })
}

impl<'m> Megabyte<'m> {
    /// Resolves every tensor of a parsed MEGABYTE file into typed views.
    /// The file's bytes must be 64-byte aligned (`include_model!`,
    /// `AlignedBytes`); f32 views of unaligned memory are an error.
    pub fn from_file(file: &ModelFile<'m>) -> Result<Self, RuntimeError> {
        let config = match file.config() {
            ModelConfig::Megabyte(c) => *c,
            other => {
                return Err(RuntimeError::WrongFamily {
                    expected: "megabyte",
                    found: other.family().name(),
                })
            }
        };
        if config.layers_global as usize > MAX_LAYERS {
            return Err(RuntimeError::TooManyLayers {
                layers: config.layers_global,
                max: MAX_LAYERS,
            });
        }
        if config.layers_local as usize > MAX_LAYERS {
            return Err(RuntimeError::TooManyLayers {
                layers: config.layers_local,
                max: MAX_LAYERS,
            });
        }
        let w = config.global_width();
        let l = config.d_local as usize;
        Ok(Megabyte {
            config,
            global_tok: matrix(file, TensorId::TokEmb(Level::Global))?,
            global_ngram: NgramTables::from_file(file, NgramInput::Global, config.ngram)?,
            global_pos: matrix(file, TensorId::PosEmb)?,
            global_pad: vector(file, TensorId::Pad(Level::Global))?,
            global: transformer(
                file,
                Level::Global,
                config.layers_global,
                w,
                config.heads_global as usize,
            )?,
            global_to_local: matrix(file, TensorId::GlobalToLocal)?,
            local_tok: matrix(file, TensorId::TokEmb(Level::Local))?,
            local_ngram: NgramTables::from_file(file, NgramInput::Local, config.local_ngram)?,
            local_pad: vector(file, TensorId::Pad(Level::Local))?,
            local: transformer(
                file,
                Level::Local,
                config.layers_local,
                l,
                config.heads_local as usize,
            )?,
        })
    }

    /// Arena bytes a session with `max_context` bytes of context needs, with
    /// the default [`ArenaSpec`]. A `const fn`, so a `static` buffer can be
    /// sized at compile time (firmware sizes an [`Arena`] by
    /// [`ArenaSpec::layout`] instead, which needs no alignment slack).
    /// Returns 0 when `max_context` is unusable (see [`ArenaSpec::check`]).
    pub const fn arena_bytes(config: &MegabyteConfig, max_context: usize) -> usize {
        ArenaSpec::new(max_context).arena_bytes(config)
    }

    /// Starts a session over `arena` (see [`Session::new`]).
    pub fn session<'a>(
        &'a self,
        arena: &'a mut [u8],
        spec: ArenaSpec,
    ) -> Result<Session<'a, 'm>, RuntimeError> {
        Session::new(self, arena, spec)
    }

    /// Starts a session in an aligned arena (see [`Session::in_arena`]).
    pub fn session_in<'a, const N: usize>(
        &'a self,
        arena: &'a mut Arena<N>,
        spec: ArenaSpec,
    ) -> Result<Session<'a, 'm>, RuntimeError> {
        Session::in_arena(self, arena, spec)
    }

    /// Weight bytes read per generated byte: the local model every byte,
    /// the global model and the projection once per P bytes.
    pub fn weight_bytes_per_byte(&self) -> f64 {
        let w = self.weight_bytes();
        w.global_per_patch as f64 / self.config.patch_size as f64 + w.local_per_byte as f64
    }

    /// The weight bytes generation reads, split by how often: what a
    /// roofline needs, since the two parts come from different working sets.
    pub fn weight_bytes(&self) -> WeightBytes {
        let t = |tr: &Transformer<'_>| -> usize {
            tr.blocks
                .iter()
                .map(|b| {
                    matrix_bytes(&b.qkv)
                        + matrix_bytes(&b.proj)
                        + matrix_bytes(&b.fc)
                        + matrix_bytes(&b.fc_proj)
                })
                .sum()
        };
        WeightBytes {
            local_per_byte: t(&self.local) + matrix_bytes(&self.local_tok),
            global_per_patch: t(&self.global)
                + matrix_bytes(&self.global_to_local) * self.config.patch_size as usize,
        }
    }

    /// Multiply-accumulates per generated byte (same accounting).
    pub fn macs_per_byte(&self) -> f64 {
        self.config.matrix_macs_per_byte()
    }
}

#[cfg(test)]
mod tests;
