//! BiGS inference: the model's weights resolved in place from a `.kbm`
//! file ([`Bigs::from_file`]), run by an [`Encoder`] for classification
//! ([`Encoder::classify`]) and gap filling ([`Encoder::fill`]).
//!
//! The model is ../shared/design/MODELS.md's. This module owns the weight
//! views and their lookup by tensor name; it holds no working memory and
//! computes nothing. `encoder.rs` owns the arena layout and the forward
//! pass, `ssm.rs` the SSM kernel math. None of them reads the file's bytes
//! except through `kilobyte-format`'s parsed tensors.

mod encoder;
mod ssm;
#[cfg(test)]
mod tests;

pub use encoder::{Classification, Encoder, EncoderLayout};

use crate::error::RuntimeError;
use crate::kernels::{Matrix, Weights};
use crate::megabyte::MAX_LAYERS;
use crate::ngram::{NgramLogits, NgramTables};
use crate::tensors::{matrix, norm, vector};
use kilobyte_format::dtype::QK;
use kilobyte_format::schema::{
    Affine, BigsLinear, BigsPart, NgramInput, SsmDirection, SsmPart, TensorId,
};
use kilobyte_format::{BigsConfig, ModelConfig, ModelFile};

/// The windows a classifier reads a text of `len` bytes in: consecutive
/// runs of `t_max` bytes (the model's T_max), the last one shorter. Each
/// window is encoded on its own, and the vector the classification head
/// reads is the mean over every position of every window, so a text of at
/// most T_max bytes is one window and a longer one is read whole rather
/// than cut. The trainer evaluates with this same function.
pub fn text_windows(len: usize, t_max: usize) -> impl Iterator<Item = core::ops::Range<usize>> {
    let step = t_max.max(1);
    (0..len).step_by(step).map(move |s| s..len.min(s + step))
}

/// A linear layer `y = W x + b`.
#[derive(Clone, Copy, Debug)]
pub struct Linear<'m> {
    pub weight: Matrix<'m>,
    pub bias: &'m [f32],
}

/// One direction's SSM parameters (f32, see MODELS.md).
#[derive(Clone, Copy, Debug)]
pub struct Ssm<'m> {
    pub a: &'m [f32],
    pub w: &'m [f32],
    /// `[kernels, modes, 2]` as (re, im).
    pub c: &'m [f32],
    pub log_dt: &'m [f32],
    pub d: &'m [f32],
}

/// One BiGS layer's weights.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'m> {
    pub ln_weight: &'m [f32],
    pub ln_bias: &'m [f32],
    pub v: Linear<'m>,
    pub f: Linear<'m>,
    pub b: Linear<'m>,
    pub uf: Linear<'m>,
    pub ub: Linear<'m>,
    pub l: Linear<'m>,
    pub o: Linear<'m>,
    pub fwd: Ssm<'m>,
    pub bwd: Ssm<'m>,
}

/// The masked-byte head: dense, GELU, LayerNorm, tied output.
#[derive(Clone, Copy, Debug)]
pub struct MlmHead<'m> {
    pub dense: Linear<'m>,
    pub ln_weight: &'m [f32],
    pub ln_bias: &'m [f32],
}

/// The classification head: mean pool, dense, tanh, dense.
#[derive(Clone, Copy, Debug)]
pub struct ClassHead<'m> {
    pub dense: Linear<'m>,
    pub out: Linear<'m>,
}

/// A BiGS model whose weights borrow the file bytes (no copies).
#[derive(Clone, Debug)]
pub struct Bigs<'m> {
    pub config: BigsConfig,
    /// `[259, d]`: bytes, PAD, MASK, SEP; rows 0..256 are also the
    /// masked-byte head's output layer.
    pub tok: Matrix<'m>,
    /// Hashed n-gram tables added to the token embedding.
    pub ngram: NgramTables<'m>,
    pub pos: Matrix<'m>,
    pub emb_ln_weight: &'m [f32],
    pub emb_ln_bias: &'m [f32],
    pub layers: heapless::Vec<Layer<'m>, MAX_LAYERS>,
    pub ln_f_weight: &'m [f32],
    pub ln_f_bias: &'m [f32],
    pub mlm: Option<MlmHead<'m>>,
    pub classifier: Option<ClassHead<'m>>,
    /// The classifier's n-gram logits, if it has them.
    pub head_ngram: Option<NgramLogits<'m>>,
    /// Label names, newline-separated (`meta.labels`).
    labels: &'m str,
}

fn linear<'m>(
    file: &ModelFile<'m>,
    id: &dyn Fn(Affine) -> TensorId,
) -> Result<Linear<'m>, RuntimeError> {
    Ok(Linear {
        weight: matrix(file, id(Affine::Weight))?,
        bias: vector(file, id(Affine::Bias))?,
    })
}

fn ssm<'m>(file: &ModelFile<'m>, layer: u32, dir: SsmDirection) -> Result<Ssm<'m>, RuntimeError> {
    let v = |p| {
        vector(
            file,
            TensorId::BigsLayer {
                layer,
                part: BigsPart::Ssm(dir, p),
            },
        )
    };
    Ok(Ssm {
        a: v(SsmPart::A)?,
        w: v(SsmPart::W)?,
        c: v(SsmPart::C)?,
        log_dt: v(SsmPart::LogDt)?,
        d: v(SsmPart::D)?,
    })
}

/// The first `rows` rows of a matrix (the byte rows of the token table).
fn first_rows<'m>(m: &Matrix<'m>, rows: usize) -> Result<Matrix<'m>, RuntimeError> {
    let n = rows * m.cols;
    let weights = match m.weights {
        Weights::F32(w) => Weights::F32(&w[..n]),
        Weights::F16(w) => Weights::F16(&w[..n]),
        Weights::BF16(w) => Weights::BF16(&w[..n]),
        Weights::Q8(w) => Weights::Q8(&w[..n / QK]),
        Weights::Q4(w) => Weights::Q4(&w[..n / QK]),
    };
    Ok(Matrix::new(weights, rows, m.cols)?)
}

impl<'m> Bigs<'m> {
    /// Resolves every tensor of a parsed BiGS file (the parser has checked
    /// names, shapes and dtypes against the header's config).
    pub fn from_file(file: &ModelFile<'m>) -> Result<Self, RuntimeError> {
        let config = match *file.config() {
            ModelConfig::Bigs(c) => c,
            ModelConfig::Megabyte(_) => {
                return Err(RuntimeError::WrongFamily {
                    expected: "BiGS",
                    found: "MEGABYTE",
                })
            }
        };
        if config.layers as usize > MAX_LAYERS {
            return Err(RuntimeError::TooManyLayers {
                layers: config.layers,
                max: MAX_LAYERS,
            });
        }
        let mut layers = heapless::Vec::new();
        for layer in 0..config.layers {
            let id = |part| TensorId::BigsLayer { layer, part };
            let lin = |l| linear(file, &|a| id(BigsPart::Linear(l, a)));
            let (ln_weight, ln_bias) = norm(file, &|a| id(BigsPart::Ln(a)))?;
            let layer = Layer {
                ln_weight,
                ln_bias,
                v: lin(BigsLinear::V)?,
                f: lin(BigsLinear::F)?,
                b: lin(BigsLinear::B)?,
                uf: lin(BigsLinear::Uf)?,
                ub: lin(BigsLinear::Ub)?,
                l: lin(BigsLinear::L)?,
                o: lin(BigsLinear::O)?,
                fwd: ssm(file, layer, SsmDirection::Forward)?,
                bwd: ssm(file, layer, SsmDirection::Backward)?,
            };
            // Checked above: the table has room.
            let _ = layers.push(layer);
        }
        let mlm = if config.has_mlm_head() {
            let (ln_weight, ln_bias) = norm(file, &TensorId::MlmLn)?;
            Some(MlmHead {
                dense: linear(file, &TensorId::MlmDense)?,
                ln_weight,
                ln_bias,
            })
        } else {
            None
        };
        let classifier = if config.has_classifier() {
            Some(ClassHead {
                dense: linear(file, &TensorId::ClsDense)?,
                out: linear(file, &TensorId::ClsOut)?,
            })
        } else {
            None
        };
        let labels = file
            .tensor(TensorId::Labels.name().as_str())
            .and_then(|t| core::str::from_utf8(t.data).ok())
            .unwrap_or("");
        let (emb_ln_weight, emb_ln_bias) = norm(file, &TensorId::BigsEmbedLn)?;
        let (ln_f_weight, ln_f_bias) = norm(file, &TensorId::BigsFinalLn)?;
        Ok(Bigs {
            config,
            tok: matrix(file, TensorId::BigsTok)?,
            ngram: NgramTables::from_file(file, NgramInput::Bigs, config.ngram)?,
            pos: matrix(file, TensorId::BigsPos)?,
            emb_ln_weight,
            emb_ln_bias,
            layers,
            ln_f_weight,
            ln_f_bias,
            mlm,
            classifier,
            head_ngram: NgramLogits::from_file(file, &config)?,
            labels,
        })
    }

    /// The name of class `i` (the file's label names; the index as text is
    /// the caller's fallback when the file has none).
    pub fn label(&self, i: usize) -> Option<&'m str> {
        if self.labels.is_empty() {
            return None;
        }
        self.labels.split('\n').nth(i)
    }
}
