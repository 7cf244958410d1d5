//! Named f32 tensors in safetensors files: the generic reader and writer,
//! and the [`ParamSet`] and optimizer-state files built on them.

use crate::optim::AdamWState;
use crate::params::{Param, ParamSet};
use anyhow::{anyhow, bail, Context, Result};
use kilobyte_format::schema::{for_each_tensor, LABELS_TENSOR};
use kilobyte_format::st::{config_from_metadata, config_metadata};
use kilobyte_format::write_atomic;
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// A borrowed tensor to write.
#[derive(Clone, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

/// A tensor read back.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A safetensors file's contents: its f32 tensors, its u8 tensors (a
/// classifier's labels) and its metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorFile {
    pub tensors: Vec<NamedTensor>,
    pub bytes: Vec<(String, Vec<u8>)>,
    pub metadata: HashMap<String, String>,
}

enum Data<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

struct Entry<'a> {
    shape: Vec<usize>,
    data: Data<'a>,
}

impl View for &Entry<'_> {
    fn dtype(&self) -> Dtype {
        match self.data {
            Data::F32(_) => Dtype::F32,
            Data::U8(_) => Dtype::U8,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    // Converted one tensor at a time, so a checkpoint costs the file's size
    // in memory plus one tensor, not two copies of everything.
    fn data(&self) -> Cow<'_, [u8]> {
        match self.data {
            Data::F32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::U8(b) => Cow::Borrowed(b),
        }
    }

    fn data_len(&self) -> usize {
        match self.data {
            Data::F32(v) => 4 * v.len(),
            Data::U8(b) => b.len(),
        }
    }
}

fn write_entries(
    path: &Path,
    entries: Vec<(String, Entry<'_>)>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    for (name, e) in &entries {
        let numel: usize = e.shape.iter().product();
        let len = match e.data {
            Data::F32(v) => v.len(),
            Data::U8(b) => b.len(),
        };
        if numel != len {
            bail!(
                "{}: tensor {name} has shape {:?} but {len} values",
                path.display(),
                e.shape
            );
        }
    }
    let views = entries.iter().map(|(n, e)| (n.as_str(), e));
    let bytes = safetensors::serialize(views, Some(metadata.clone()))
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    write_atomic(path, &bytes).with_context(|| format!("{}", path.display()))
}

/// Writes f32 tensors and string metadata as a safetensors file, atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[TensorRef<'_>],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let entries = tensors
        .iter()
        .map(|t| {
            let e = Entry {
                shape: t.shape.clone(),
                data: Data::F32(t.data),
            };
            (t.name.to_string(), e)
        })
        .collect();
    write_entries(path, entries, metadata)
}

/// Reads a safetensors file of f32 (and u8) tensors. Errors name the file.
pub fn read_tensors(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let corrupt = |e: safetensors::SafeTensorError| {
        anyhow!(
            "{}: not a valid safetensors file ({e}); it may be truncated",
            path.display()
        )
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
    let st = SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let mut out = TensorFile {
        metadata: meta.metadata().clone().unwrap_or_default(),
        ..TensorFile::default()
    };
    for (name, view) in st.tensors() {
        match view.dtype() {
            Dtype::F32 => out.tensors.push(NamedTensor {
                name,
                shape: view.shape().to_vec(),
                data: view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            }),
            Dtype::U8 => out.bytes.push((name, view.data().to_vec())),
            other => bail!(
                "{}: tensor {name} is {other:?}; checkpoints hold F32 only",
                path.display()
            ),
        }
    }
    // The safetensors map has no useful order; names give a stable one.
    out.tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes a model's parameters in f32 with its config (and `extra`) in the
/// metadata, labels as the `meta.labels` u8 tensor: the same layout as a
/// `kilobyte convert` export, so the file converts back to a `.kbm` as is.
pub fn save_params(path: &Path, params: &ParamSet, extra: &HashMap<String, String>) -> Result<()> {
    params
        .check_finite()
        .with_context(|| format!("{}: not written", path.display()))?;
    let mut metadata = config_metadata(&params.config);
    metadata.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut entries: Vec<(String, Entry<'_>)> = params
        .params
        .iter()
        .map(|p| {
            let shape = p.shape.dims().iter().map(|&d| d as usize).collect();
            (
                p.name.clone(),
                Entry {
                    shape,
                    data: Data::F32(&p.data),
                },
            )
        })
        .collect();
    let labels = params.labels.join("\n");
    if !params.labels.is_empty() {
        let e = Entry {
            shape: vec![labels.len()],
            data: Data::U8(labels.as_bytes()),
        };
        entries.push((LABELS_TENSOR.to_string(), e));
    }
    write_entries(path, entries, &metadata)
}

/// Reads a file written by [`save_params`], checking every tensor against
/// the schema of the config in its metadata. Returns the metadata too.
pub fn load_params(path: &Path) -> Result<(ParamSet, HashMap<String, String>)> {
    let file = read_tensors(path)?;
    let config =
        config_from_metadata(&file.metadata).with_context(|| format!("{}", path.display()))?;
    let mut found: HashMap<String, NamedTensor> = file
        .tensors
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut params = Vec::new();
    for_each_tensor::<anyhow::Error>(&config, |spec| {
        let Some(shape) = spec.shape else {
            return Ok(());
        };
        let t = found
            .remove(spec.name.as_str())
            .ok_or_else(|| anyhow!("{}: tensor {} is missing", path.display(), spec.name))?;
        let dims: Vec<usize> = shape.dims().iter().map(|&d| d as usize).collect();
        if t.shape != dims {
            bail!(
                "{}: tensor {} has shape {:?}, the config needs {dims:?}",
                path.display(),
                t.name,
                t.shape
            );
        }
        params.push(Param {
            name: t.name,
            shape,
            role: spec.role,
            data: t.data,
        });
        Ok(())
    })?;
    if let Some(name) = found.keys().min() {
        bail!(
            "{}: tensor {name} is not part of this model",
            path.display()
        );
    }
    let mut labels = Vec::new();
    for (name, bytes) in &file.bytes {
        if name != LABELS_TENSOR {
            bail!(
                "{}: tensor {name} is not part of this model",
                path.display()
            );
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| anyhow!("{}: {LABELS_TENSOR} is not UTF-8", path.display()))?;
        labels = text.split('\n').map(str::to_string).collect();
    }
    Ok((
        ParamSet {
            config,
            params,
            labels,
        },
        file.metadata,
    ))
}

/// Metadata key of the optimizer's update count.
pub const OPTIMIZER_STEP_KEY: &str = "kilobyte.optimizer.step";

/// The name prefix of the averaged weights in the optimizer file.
const AVERAGE_PREFIX: &str = "avg";

/// Writes AdamW's moments as `m.<param>` and `v.<param>`, and the averaged
/// weights (if the run keeps them) as `avg.<param>`, shaped like the
/// parameters; `state.m[i]` belongs to `params.params[i]`.
pub fn save_optimizer(
    path: &Path,
    params: &ParamSet,
    state: &AdamWState,
    extra: &HashMap<String, String>,
) -> Result<()> {
    let n = params.params.len();
    if state.m.len() != n
        || state.v.len() != n
        || !(state.average.is_empty() || state.average.len() == n)
    {
        bail!(
            "{}: the optimizer has {} first and {} second moments and {} averaged weights for {n} parameters",
            path.display(),
            state.m.len(),
            state.v.len(),
            state.average.len()
        );
    }
    let groups = [
        ("m", &state.m),
        ("v", &state.v),
        (AVERAGE_PREFIX, &state.average),
    ];
    let names: Vec<Vec<String>> = groups
        .iter()
        .map(|(prefix, values)| {
            params.params[..values.len()]
                .iter()
                .map(|p| format!("{prefix}.{}", p.name))
                .collect()
        })
        .collect();
    let mut tensors = Vec::with_capacity(3 * n);
    for ((_, values), names) in groups.iter().zip(&names) {
        for ((p, name), data) in params.params.iter().zip(names).zip(values.iter()) {
            tensors.push(TensorRef {
                name,
                shape: p.shape.dims().iter().map(|&d| d as usize).collect(),
                data,
            });
        }
    }
    let mut metadata = extra.clone();
    metadata.insert(OPTIMIZER_STEP_KEY.to_string(), state.step.to_string());
    write_tensors(path, &tensors, &metadata)
}

/// Reads [`save_optimizer`]'s file back in the order of `params`.
pub fn load_optimizer(
    path: &Path,
    params: &ParamSet,
) -> Result<(AdamWState, HashMap<String, String>)> {
    let file = read_tensors(path)?;
    let step = file
        .metadata
        .get(OPTIMIZER_STEP_KEY)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "{}: no valid {OPTIMIZER_STEP_KEY} in the metadata",
                path.display()
            )
        })?;
    let mut found: HashMap<String, NamedTensor> = file
        .tensors
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    // The averaged weights are there for all parameters or for none.
    let has_average = params
        .params
        .first()
        .is_some_and(|p| found.contains_key(&format!("{AVERAGE_PREFIX}.{}", p.name)));
    let mut take = |prefix: &str, p: &Param| -> Result<Vec<f32>> {
        let name = format!("{prefix}.{}", p.name);
        let t = found
            .remove(&name)
            .ok_or_else(|| anyhow!("{}: tensor {name} is missing", path.display()))?;
        if t.data.len() != p.data.len() {
            bail!(
                "{}: tensor {name} has {} values, the parameter {}",
                path.display(),
                t.data.len(),
                p.data.len()
            );
        }
        Ok(t.data)
    };
    let mut state = AdamWState {
        step,
        ..AdamWState::default()
    };
    for p in &params.params {
        state.m.push(take("m", p)?);
        state.v.push(take("v", p)?);
    }
    if has_average {
        for p in &params.params {
            state.average.push(take(AVERAGE_PREFIX, p)?);
        }
    }
    if let Some(name) = found.keys().min() {
        bail!("{}: tensor {name} matches no parameter", path.display());
    }
    Ok((state, file.metadata))
}
