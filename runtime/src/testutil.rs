//! Test helper: `.kbm` models with seeded random weights.

extern crate std;

use kilobyte_format::schema::TensorSpec;
use kilobyte_format::writer::KbmWriter;
use kilobyte_format::{for_each_tensor, AlignedBytes, DType, FormatError, ModelConfig};
use std::vec::Vec;

/// Every tensor of `config` stored as `dtype` (where its role allows),
/// element `i` of tensor `spec` set to `value(spec, i, r)` with `r` a fresh
/// standard normal sample; a classifier also gets `labels`.
pub fn model_bytes(
    config: ModelConfig,
    dtype: DType,
    seed: u64,
    labels: &[&str],
    value: impl Fn(&TensorSpec, usize, f32) -> f32,
) -> AlignedBytes {
    let mut rng = crate::rng::Rng::new(seed);
    let mut w = KbmWriter::new(config);
    for_each_tensor::<FormatError>(&config, |spec| {
        let Some(shape) = spec.shape else {
            return Ok(()); // meta.labels, added below
        };
        let n = shape.numel().unwrap() as usize;
        let values: Vec<f32> = (0..n)
            .map(|i| value(spec, i, rng.normal() as f32))
            .collect();
        w.add_f32(
            spec.name.as_str(),
            spec.role.storage_dtype(shape, dtype, dtype),
            shape.dims(),
            &values,
        )
    })
    .unwrap();
    if !labels.is_empty() {
        w.add_labels(labels).unwrap();
    }
    AlignedBytes::from_slice(&w.to_bytes().unwrap())
}

/// `len` bytes of `buf` from its first 64-byte boundary.
pub(crate) fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    let align = crate::arena::ARENA_ALIGN;
    buf.resize(len + align, 0);
    let skip = buf.as_ptr().align_offset(align);
    &mut buf[skip..skip + len]
}
