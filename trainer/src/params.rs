//! A model's parameters as plain f32 tensors in the schema's order: how they
//! are initialised, read from a .kbm file and written to one. Training,
//! export, `kilobyte init` and `kilobyte quantize` all go through here.

use crate::backend::Backend;
use anyhow::{bail, ensure, Context, Result};
use kilobyte_format::schema::{
    for_each_tensor, Affine, BigsLinear, BigsPart, BlockPart, Role, SsmPart, TensorId,
    LABELS_TENSOR,
};
use kilobyte_format::{DType, FormatError, KbmWriter, ModelConfig, ModelFile, Shape};
use kilobyte_runtime::rng::Rng;

/// One parameter tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Shape,
    pub role: Role,
    pub data: Vec<f32>,
}

/// All parameters of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet {
    pub config: ModelConfig,
    pub params: Vec<Param>,
    /// A BiGS classifier's label names (empty otherwise).
    pub labels: Vec<String>,
}

/// Name, shape and role of a parameter: what a model keeps next to the
/// parameter's device buffer.
#[derive(Clone, Debug)]
pub struct ParamMeta {
    pub name: String,
    pub shape: Shape,
    pub role: Role,
}

/// The index of parameter `id` in `meta`.
pub fn find_param(meta: &[ParamMeta], id: TensorId) -> Result<usize> {
    let name = id.name();
    meta.iter()
        .position(|m| m.name == name.as_str())
        .with_context(|| format!("parameter {name} is missing"))
}

/// A parameter set's tensors on a device (both model families keep theirs
/// this way): descriptions, values and zeroed gradient buffers.
pub struct Uploaded<B: Backend> {
    pub meta: Vec<ParamMeta>,
    pub values: Vec<B::Buf>,
    pub grads: Vec<B::Buf>,
}

/// Downloads device buffers described by `meta` into a parameter set.
pub fn download_params<B: Backend>(
    be: &B,
    config: ModelConfig,
    labels: &[String],
    meta: &[ParamMeta],
    values: &[B::Buf],
) -> Result<ParamSet> {
    let params = meta
        .iter()
        .zip(values)
        .map(|(m, buf)| {
            Ok(Param {
                name: m.name.clone(),
                shape: m.shape,
                role: m.role,
                data: be.download(buf)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(ParamSet {
        config,
        params,
        labels: labels.to_vec(),
    })
}

/// Standard deviation of weight matrices and embeddings at initialisation
/// (GPT-2's choice; residual output projections are further scaled down).
pub const INIT_STD: f64 = 0.02;

impl ParamSet {
    /// Uploads every tensor to `be`, with a zeroed gradient buffer each.
    pub fn upload<B: Backend>(&self, be: &B) -> Result<Uploaded<B>> {
        let meta = self
            .params
            .iter()
            .map(|p| ParamMeta {
                name: p.name.clone(),
                shape: p.shape,
                role: p.role,
            })
            .collect();
        let values = self
            .params
            .iter()
            .map(|p| be.upload(&p.data))
            .collect::<Result<Vec<_>>>()?;
        let grads = self
            .params
            .iter()
            .map(|p| be.alloc(p.data.len()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Uploaded {
            meta,
            values,
            grads,
        })
    }

    /// Overwrites device buffers (uploaded from a set of the same schema)
    /// with this set's values.
    pub fn write_to<B: Backend>(&self, be: &B, values: &mut [B::Buf]) -> Result<()> {
        ensure!(
            values.len() == self.params.len(),
            "{} parameter buffers for {} parameters",
            values.len(),
            self.params.len()
        );
        for (buf, p) in values.iter_mut().zip(&self.params) {
            ensure!(be.len(buf) == p.data.len(), "{}: size differs", p.name);
            be.write(buf, &p.data)?;
        }
        Ok(())
    }

    /// Fresh random parameters. Matrices and embeddings ~ N(0, 0.02²), with
    /// residual output projections scaled by 1/sqrt(2 * layers) (BiGS
    /// matrices: N(0, 1/fan_in), the output projection also scaled); norm
    /// weights 1, biases 0, pad vectors ~ N(0, 0.02²); SSM parameters as
    /// MODELS.md prescribes (S4D-Lin, log_dt uniform in [ln 0.001, ln 0.1],
    /// C complex normal of variance 0.5, skip D ~ N(0, 1) as in S4D).
    pub fn init(config: ModelConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let depth = match config {
            ModelConfig::Megabyte(c) => c.layers_global.max(c.layers_local),
            ModelConfig::Bigs(c) => c.layers,
        } as f64;
        let residual_std = INIT_STD / (2.0 * depth).sqrt();
        let mut params = Vec::new();
        for_each_tensor::<FormatError>(&config, |spec| {
            let Some(shape) = spec.shape else {
                return Ok(());
            };
            let n = shape.numel().unwrap_or(0) as usize;
            let name = spec.name.as_str();
            let mut data = vec![0f32; n];
            let mut normal = |std: f64| {
                data.iter_mut()
                    .for_each(|v| *v = (rng.normal() * std) as f32)
            };
            let bigs = matches!(config, ModelConfig::Bigs(_));
            // BiGS multiplies activations (Uf * Ub, then by V): with GPT's
            // 0.02 every factor starts near 0, their product nearer still,
            // and the gradients of each factor are scaled by the others, so
            // training crawls. Fan-in scaling keeps every factor O(1).
            let fan_in = (shape.last() as f64).max(1.0).sqrt().recip();
            // The layers' output projections, which add to the residual
            // stream, start smaller (GPT-2).
            let residual_out = matches!(
                spec.id,
                TensorId::Block {
                    part: BlockPart::AttnProj | BlockPart::MlpProj,
                    ..
                } | TensorId::BigsLayer {
                    part: BigsPart::Linear(BigsLinear::O, Affine::Weight),
                    ..
                }
            );
            let norm_weight = matches!(
                spec.id,
                TensorId::Block {
                    part: BlockPart::Ln1(Affine::Weight) | BlockPart::Ln2(Affine::Weight),
                    ..
                } | TensorId::FinalLn(_, Affine::Weight)
                    | TensorId::BigsEmbedLn(Affine::Weight)
                    | TensorId::BigsLayer {
                        part: BigsPart::Ln(Affine::Weight),
                        ..
                    }
                    | TensorId::BigsFinalLn(Affine::Weight)
                    | TensorId::MlmLn(Affine::Weight)
            );
            match spec.role {
                // A linear classifier needs no symmetry breaking: the
                // n-gram logits start with no opinion.
                _ if spec.id == TensorId::ClsNgram => data.fill(0.0),
                Role::Matrix if bigs && residual_out => normal(fan_in / (2.0 * depth).sqrt()),
                Role::Matrix if bigs => normal(fan_in),
                Role::Matrix if residual_out => normal(residual_std),
                Role::Matrix
                | Role::TokenEmbedding
                | Role::PositionEmbedding
                | Role::NgramEmbedding => normal(INIT_STD),
                Role::Vector if matches!(spec.id, TensorId::Pad(_)) => normal(INIT_STD),
                Role::Vector if norm_weight => data.fill(1.0),
                Role::Vector => {}
                Role::Ssm => init_ssm(spec.id, shape, &mut data, &mut rng),
                Role::Meta => {}
            }
            params.push(Param {
                name: name.to_string(),
                shape,
                role: spec.role,
                data,
            });
            Ok(())
        })?;
        let labels = match config {
            ModelConfig::Bigs(c) if c.has_classifier() => {
                (0..c.n_classes).map(|i| i.to_string()).collect()
            }
            _ => Vec::new(),
        };
        Ok(ParamSet {
            config,
            params,
            labels,
        })
    }

    /// Reads (and dequantises) every parameter of a parsed file.
    pub fn from_file(file: &ModelFile<'_>) -> Result<Self> {
        let config = *file.config();
        let mut params = Vec::new();
        for_each_tensor::<anyhow::Error>(&config, |spec| {
            let Some(shape) = spec.shape else {
                return Ok(());
            };
            let t = file.get(&spec.name)?;
            let mut data = vec![0f32; t.numel()];
            t.decode_into(&mut data)?;
            params.push(Param {
                name: spec.name.to_string(),
                shape,
                role: spec.role,
                data,
            });
            Ok(())
        })?;
        let labels = file
            .labels()
            .map(|l| l.map(str::to_string).collect())
            .unwrap_or_default();
        Ok(ParamSet {
            config,
            params,
            labels,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Refuses a set holding NaN or an infinity: a diverged model is never
    /// saved or exported (the error names the first such parameter).
    pub fn check_finite(&self) -> Result<()> {
        for p in &self.params {
            if let Some(i) = p.data.iter().position(|v| !v.is_finite()) {
                bail!(
                    "parameter {} holds {} at element {i}: the weights are not finite (the model diverged)",
                    p.name,
                    p.data[i]
                );
            }
        }
        Ok(())
    }

    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.data.len()).sum()
    }

    /// A writer holding every parameter, stored as [`Role::storage_dtype`]
    /// decides for the requested matrix and embedding dtypes.
    pub fn to_writer(&self, matrices: DType, embeddings: DType) -> Result<KbmWriter> {
        if !matrices.is_numeric() || !embeddings.is_numeric() {
            bail!("u8 is not a weight dtype (use f32, f16, bf16, q8 or q4)");
        }
        let mut w = KbmWriter::new(self.config);
        for p in &self.params {
            let dtype = p.role.storage_dtype(p.shape, matrices, embeddings);
            w.add_f32(&p.name, dtype, p.shape.dims(), &p.data)?;
        }
        if !self.labels.is_empty() {
            w.add_labels(&self.labels)?;
        }
        Ok(w)
    }
}

fn init_ssm(id: TensorId, shape: Shape, data: &mut [f32], rng: &mut Rng) {
    let modes = shape.dims().get(1).copied().unwrap_or(1) as usize;
    let TensorId::BigsLayer {
        part: BigsPart::Ssm(_, part),
        ..
    } = id
    else {
        unreachable!("only BiGS layers hold SSM parameters, {id:?} is not one");
    };
    match part {
        SsmPart::A => data.fill(0.5f32.ln()),
        SsmPart::W => {
            for (i, v) in data.iter_mut().enumerate() {
                *v = std::f32::consts::PI * (i % modes) as f32;
            }
        }
        // Complex normal with E|C|^2 = 0.5: each part has variance 0.25.
        SsmPart::C => data
            .iter_mut()
            .for_each(|v| *v = (rng.normal() * 0.5) as f32),
        SsmPart::LogDt => {
            let (lo, hi) = (0.001f64.ln(), 0.1f64.ln());
            data.iter_mut()
                .for_each(|v| *v = (lo + rng.next_f64() * (hi - lo)) as f32);
        }
        SsmPart::D => data.iter_mut().for_each(|v| *v = rng.normal() as f32),
    }
}

/// Reads a .kbm file into aligned memory with a one-line error naming it.
pub fn read_kbm(path: &std::path::Path) -> Result<kilobyte_format::AlignedBytes> {
    let bytes = kilobyte_format::AlignedBytes::read_model(path)
        .with_context(|| format!("{}", path.display()))?;
    Ok(bytes)
}

/// The label tensor name, re-exported for commands that print it.
pub const LABELS: &str = LABELS_TENSOR;

#[cfg(test)]
mod tests {
    use super::*;
    use kilobyte_format::{BigsConfig, MegabyteConfig};

    #[test]
    fn init_is_deterministic_and_round_trips_through_a_file() {
        for config in [
            ModelConfig::Megabyte(MegabyteConfig::preset(2, 32, 1, 2, 32, 1, 2, 16)),
            {
                let mut c = BigsConfig::preset(32, 96, 1, 8, 1, 16);
                c.heads = 3;
                c.n_classes = 2;
                ModelConfig::Bigs(c)
            },
        ] {
            let a = ParamSet::init(config, 7).unwrap();
            assert_eq!(a, ParamSet::init(config, 7).unwrap());
            assert_ne!(a, ParamSet::init(config, 8).unwrap());
            assert_eq!(a.numel() as u64, config.param_count());
            let bytes = a
                .to_writer(DType::F32, DType::F32)
                .unwrap()
                .to_bytes()
                .unwrap();
            let back = ParamSet::from_file(&ModelFile::parse(&bytes).unwrap()).unwrap();
            assert_eq!(back, a);
        }
    }
}
