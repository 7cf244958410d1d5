//! The safetensors bridge (feature `std`): .kbm -> safetensors for tools in
//! the Python world, and safetensors -> .kbm for weights trained elsewhere.
//!
//! The model config travels in the safetensors metadata as
//! `kilobyte.family` plus one `kilobyte.<field>` entry per header word, and
//! each tensor's .kbm dtype as `kilobyte.dtype.<name>`, so a round trip
//! restores the original storage types unless the caller asks for others.

use crate::config::{ModelConfig, ModelFamily};
use crate::dtype::DType;
use crate::error::{tensor_name, FormatError};
use crate::file::ModelFile;
use crate::schema::{find_spec, Role};
use crate::writer::KbmWriter;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::prelude::rust_2021::*;
use std::{format, vec};

/// Errors of the bridge: the .kbm side, or the safetensors side.
#[derive(Debug)]
pub enum BridgeError {
    Format(FormatError),
    SafeTensors(String),
    /// Metadata needed to rebuild the config is missing or malformed.
    Metadata(String),
    /// A safetensors tensor has a dtype the bridge cannot convert.
    UnsupportedDtype {
        name: String,
        dtype: String,
    },
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Format(e) => write!(f, "{e}"),
            BridgeError::SafeTensors(e) => write!(f, "safetensors: {e}"),
            BridgeError::Metadata(e) => write!(f, "safetensors metadata: {e}"),
            BridgeError::UnsupportedDtype { name, dtype } => {
                write!(f, "tensor {name}: safetensors dtype {dtype} is not supported (use F32, F16, BF16 or U8)")
            }
        }
    }
}

impl std::error::Error for BridgeError {}

impl From<FormatError> for BridgeError {
    fn from(e: FormatError) -> Self {
        BridgeError::Format(e)
    }
}

/// How floating-point tensors are exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFloats {
    /// Everything numeric becomes F32 (q8/q4 dequantised).
    F32,
    /// f16 and bf16 stay as they are; q8/q4 are dequantised to F32.
    KeepHalf,
}

/// The metadata map describing `config`.
pub fn config_metadata(config: &ModelConfig) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert("format".to_string(), "kilobyte".to_string());
    m.insert(
        "kilobyte.version".to_string(),
        crate::file::VERSION.to_string(),
    );
    m.insert(
        "kilobyte.family".to_string(),
        config.family().name().to_string(),
    );
    for (name, value) in config.fields() {
        m.insert(format!("kilobyte.{name}"), value.to_string());
    }
    m
}

/// Rebuilds a config from [`config_metadata`]'s map.
pub fn config_from_metadata(m: &HashMap<String, String>) -> Result<ModelConfig, BridgeError> {
    let family = match m.get("kilobyte.family").map(String::as_str) {
        Some("megabyte") => ModelFamily::Megabyte,
        Some("bigs") => ModelFamily::Bigs,
        Some(other) => {
            return Err(BridgeError::Metadata(format!(
                "unknown kilobyte.family {other:?}"
            )))
        }
        None => {
            return Err(BridgeError::Metadata(
                "no kilobyte.family entry: not a kilobyte export".to_string(),
            ))
        }
    };
    let mut bad = None;
    let config = ModelConfig::from_fields(family, |field| {
        let v = m.get(&format!("kilobyte.{field}"))?;
        match v.parse::<u32>() {
            Ok(x) => Some(x),
            Err(_) => {
                bad = Some(format!(
                    "kilobyte.{field} = {v:?} is not an unsigned integer"
                ));
                None
            }
        }
    });
    if let Some(msg) = bad {
        return Err(BridgeError::Metadata(msg));
    }
    Ok(config?)
}

/// Converts a parsed .kbm file to safetensors bytes.
pub fn to_safetensors(file: &ModelFile<'_>, floats: ExportFloats) -> Result<Vec<u8>, BridgeError> {
    let mut metadata = config_metadata(file.config());
    let mut owned: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in file.tensors() {
        metadata.insert(
            format!("kilobyte.dtype.{}", t.name),
            t.dtype.name().to_string(),
        );
        let shape: Vec<usize> = t.shape.dims().iter().map(|&d| d as usize).collect();
        let (dtype, data) = match (t.dtype, floats) {
            (DType::U8, _) => (StDtype::U8, t.data.to_vec()),
            (DType::F16, ExportFloats::KeepHalf) => (StDtype::F16, t.data.to_vec()),
            (DType::BF16, ExportFloats::KeepHalf) => (StDtype::BF16, t.data.to_vec()),
            (DType::F32, _) => (StDtype::F32, t.data.to_vec()),
            _ => {
                let mut values = vec![0f32; t.numel()];
                t.decode_into(&mut values)?;
                (
                    StDtype::F32,
                    values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            }
        };
        owned.push((t.name.to_string(), dtype, shape, data));
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| BridgeError::SafeTensors(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| BridgeError::SafeTensors(e.to_string()))
}

/// The storage dtype chosen for one tensor on import.
pub struct DtypeChoice<'a> {
    pub name: &'a str,
    pub role: Role,
    pub shape: crate::error::Shape,
    /// The dtype recorded in the metadata by a kilobyte export, if any.
    pub original: Option<DType>,
    /// The dtype the safetensors file stores (F32, F16, BF16 or U8).
    pub stored: DType,
}

/// Reads safetensors bytes into a writer ready to produce a .kbm.
/// `choose` picks each tensor's .kbm dtype; its choice must suit the role.
pub fn from_safetensors(
    bytes: &[u8],
    mut choose: impl FnMut(&DtypeChoice<'_>) -> DType,
) -> Result<KbmWriter, BridgeError> {
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| BridgeError::SafeTensors(e.to_string()))?;
    let m = meta.metadata().clone().unwrap_or_default();
    let config = config_from_metadata(&m)?;
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| BridgeError::SafeTensors(e.to_string()))?;
    let mut writer = KbmWriter::new(config);
    let mut names = st.names();
    names.sort();
    for name in names {
        let view = st
            .tensor(name)
            .map_err(|e| BridgeError::SafeTensors(e.to_string()))?;
        let stored = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::U8 => DType::U8,
            other => {
                return Err(BridgeError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let role = find_spec(&config, name)
            .ok_or_else(|| FormatError::UnexpectedTensor {
                name: tensor_name(name),
            })?
            .role;
        let original = m
            .get(&format!("kilobyte.dtype.{name}"))
            .and_then(|d| DType::parse(d));
        let dims: Vec<u32> = view
            .shape()
            .iter()
            .map(|&d| u32::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                BridgeError::Metadata(format!("tensor {name}: a dimension exceeds u32"))
            })?;
        if dims.is_empty() || dims.len() > 4 {
            return Err(FormatError::BadRank {
                name: tensor_name(name),
                rank: dims.len() as u8,
            }
            .into());
        }
        let shape = crate::error::Shape::new(&dims);
        let target = choose(&DtypeChoice {
            name,
            role,
            shape,
            original,
            stored,
        });
        if !role.allows(target) {
            return Err(FormatError::WrongDtype {
                name: tensor_name(name),
                dtype: target,
            }
            .into());
        }
        if stored == DType::U8 || target == stored {
            writer.add_raw(name, stored, &dims, view.data().to_vec())?;
        } else {
            let mut values =
                vec![0f32; view.data().len() / (stored.bits_per_element() as usize / 8)];
            crate::quant::decode(stored, view.data(), &mut values).map_err(|error| {
                FormatError::Codec {
                    name: tensor_name(name),
                    error,
                }
            })?;
            writer.add_f32(name, target, &dims, &values)?;
        }
    }
    Ok(writer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BigsConfig, BIGS_HEAD_CLASSIFY, BIGS_HEAD_MLM};

    #[test]
    fn metadata_round_trip_and_errors() {
        let mut c = BigsConfig::MICRO;
        c.heads = BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY;
        c.n_classes = 4;
        let config = ModelConfig::Bigs(c);
        let m = config_metadata(&config);
        assert_eq!(config_from_metadata(&m).unwrap(), config);
        let mut broken = m.clone();
        broken.insert("kilobyte.d_model".into(), "wide".into());
        assert!(config_from_metadata(&broken)
            .unwrap_err()
            .to_string()
            .contains("kilobyte.d_model"));
        broken.remove("kilobyte.family");
        assert!(matches!(
            config_from_metadata(&broken),
            Err(BridgeError::Metadata(_))
        ));
    }
}
