//! Writing .kbm files (feature `std`): layout and checksum; the write to
//! disk is [`write_atomic`]'s. Every file the writer produces is re-parsed before it is
//! returned, so the writer can never emit something the reader rejects.

use crate::atomic::write_atomic;
use crate::config::ModelConfig;
use crate::crc::Crc32;
use crate::dtype::DType;
use crate::error::{tensor_name, FormatError, Shape, MAX_NAME_LEN};
use crate::file::{align_up, ent, hdr, ModelFile, ENTRY_BYTES, HEADER_BYTES, MAGIC, VERSION};
use crate::schema::LABELS_TENSOR;
use std::io;
use std::path::Path;
use std::prelude::rust_2021::*;
use std::vec;

/// A tensor waiting to be written.
#[derive(Clone, Debug)]
pub struct PendingTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
    pub data: Vec<u8>,
}

/// Collects tensors for one model, then lays them out as a .kbm file.
#[derive(Clone, Debug)]
pub struct KbmWriter {
    config: ModelConfig,
    tensors: Vec<PendingTensor>,
}

impl KbmWriter {
    pub fn new(config: ModelConfig) -> Self {
        KbmWriter {
            config,
            tensors: Vec::new(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn tensors(&self) -> &[PendingTensor] {
        &self.tensors
    }

    /// Adds already-encoded bytes.
    pub fn add_raw(
        &mut self,
        name: &str,
        dtype: DType,
        dims: &[u32],
        data: Vec<u8>,
    ) -> Result<(), FormatError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || dims.is_empty() || dims.len() > 4 {
            return Err(FormatError::BadRank {
                name: tensor_name(name),
                rank: dims.len() as u8,
            });
        }
        let shape = Shape::new(dims);
        let expected = shape.numel().and_then(|n| dtype.byte_len(n));
        if expected != Some(data.len() as u64) {
            return Err(FormatError::LengthMismatch {
                name: tensor_name(name),
                dtype,
                shape,
                byte_len: data.len() as u64,
            });
        }
        // A diverged model is never written, whatever dtype it is stored in.
        if let Some(index) = crate::quant::first_non_finite(dtype, &data) {
            return Err(FormatError::Codec {
                name: tensor_name(name),
                error: crate::quant::CodecError::NonFinite { index },
            });
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(FormatError::DuplicateTensor {
                name: tensor_name(name),
            });
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dtype,
            shape,
            data,
        });
        Ok(())
    }

    /// Encodes f32 values as `dtype` and adds them.
    pub fn add_f32(
        &mut self,
        name: &str,
        dtype: DType,
        dims: &[u32],
        values: &[f32],
    ) -> Result<(), FormatError> {
        let shape = Shape::new(dims);
        if dtype.is_quantized() && !(shape.last() as usize).is_multiple_of(crate::dtype::QK) {
            return Err(FormatError::NotWholeBlocks {
                name: tensor_name(name),
                last_dim: shape.last(),
            });
        }
        let len = shape
            .numel()
            .filter(|&n| n == values.len() as u64)
            .and_then(|n| dtype.byte_len(n))
            .ok_or(FormatError::LengthMismatch {
                name: tensor_name(name),
                dtype,
                shape,
                byte_len: values.len() as u64,
            })?;
        let mut data = vec![0u8; len as usize];
        crate::quant::encode(dtype, values, &mut data).map_err(|error| FormatError::Codec {
            name: tensor_name(name),
            error,
        })?;
        self.add_raw(name, dtype, dims, data)
    }

    /// Stores a classifier's label names (`meta.labels`).
    pub fn add_labels<S: AsRef<str>>(&mut self, labels: &[S]) -> Result<(), FormatError> {
        let found = labels.len() as u32;
        let bad = labels
            .iter()
            .any(|l| l.as_ref().is_empty() || l.as_ref().contains('\n'));
        let expected = match self.config {
            ModelConfig::Bigs(c) if c.has_classifier() => c.n_classes,
            _ => 0,
        };
        if bad || found != expected {
            return Err(FormatError::BadLabels { expected, found });
        }
        crate::file::check_labels(labels.iter().map(|l| l.as_ref()))?;
        let text = labels
            .iter()
            .map(|l| l.as_ref())
            .collect::<Vec<_>>()
            .join("\n");
        let n = text.len() as u32;
        self.add_raw(LABELS_TENSOR, DType::U8, &[n], text.into_bytes())
    }

    /// Lays the file out as SPEC.md describes and validates the result.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        let mut order: Vec<&PendingTensor> = self.tensors.iter().collect();
        order.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let count = order.len();
        let dir_end = (HEADER_BYTES + count * ENTRY_BYTES) as u64;
        let data_offset = align_up(dir_end).expect("small");
        let mut offsets = Vec::with_capacity(count);
        let mut cursor = data_offset;
        for t in &order {
            offsets.push(cursor);
            cursor = align_up(cursor + t.data.len() as u64).expect("fits in memory");
        }
        let data_end = offsets
            .last()
            .zip(order.last())
            .map(|(o, t)| o + t.data.len() as u64)
            .unwrap_or(data_offset);
        let file_bytes = data_end + 4;

        let mut out = vec![0u8; file_bytes as usize];
        out[hdr::MAGIC..hdr::MAGIC + 8].copy_from_slice(&MAGIC);
        out[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
        out[hdr::HEADER_BYTES..hdr::HEADER_BYTES + 2]
            .copy_from_slice(&(HEADER_BYTES as u16).to_le_bytes());
        out[hdr::FAMILY..hdr::FAMILY + 2]
            .copy_from_slice(&self.config.family().code().to_le_bytes());
        out[hdr::TENSOR_COUNT..hdr::TENSOR_COUNT + 4]
            .copy_from_slice(&(count as u32).to_le_bytes());
        out[hdr::DIRECTORY_BYTES..hdr::DIRECTORY_BYTES + 4]
            .copy_from_slice(&((count * ENTRY_BYTES) as u32).to_le_bytes());
        out[hdr::DATA_OFFSET..hdr::DATA_OFFSET + 8].copy_from_slice(&data_offset.to_le_bytes());
        out[hdr::FILE_BYTES..hdr::FILE_BYTES + 8].copy_from_slice(&file_bytes.to_le_bytes());
        for (i, w) in self.config.to_words().iter().enumerate() {
            out[hdr::CONFIG + 4 * i..hdr::CONFIG + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        for (i, (t, &offset)) in order.iter().zip(&offsets).enumerate() {
            let e = &mut out[HEADER_BYTES + i * ENTRY_BYTES..HEADER_BYTES + (i + 1) * ENTRY_BYTES];
            e[ent::NAME_LEN..ent::NAME_LEN + 2]
                .copy_from_slice(&(t.name.len() as u16).to_le_bytes());
            e[ent::DTYPE] = t.dtype.code();
            e[ent::RANK] = t.shape.rank;
            for (j, d) in t.shape.dims.iter().enumerate() {
                e[ent::DIMS + 4 * j..ent::DIMS + 4 * j + 4].copy_from_slice(&d.to_le_bytes());
            }
            e[ent::OFFSET..ent::OFFSET + 8].copy_from_slice(&offset.to_le_bytes());
            e[ent::BYTE_LEN..ent::BYTE_LEN + 8]
                .copy_from_slice(&(t.data.len() as u64).to_le_bytes());
            e[ent::NAME..ent::NAME + t.name.len()].copy_from_slice(t.name.as_bytes());
            out[offset as usize..offset as usize + t.data.len()].copy_from_slice(&t.data);
        }
        let mut crc = Crc32::new();
        crc.update(&out[..data_end as usize]);
        out[data_end as usize..].copy_from_slice(&crc.finish().to_le_bytes());
        ModelFile::parse(&out)?;
        Ok(out)
    }

    /// Writes the file atomically (see [`write_atomic`]).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let bytes = self
            .to_bytes()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        write_atomic(path, &bytes)
    }
}

/// File bytes in 64-byte aligned heap memory, so typed tensor views work on a
/// model read from disk (a `Vec<u8>` only promises 1-byte alignment).
pub struct AlignedBytes {
    blocks: Vec<crate::align::Aligned64<[u8; 64]>>,
    len: usize,
}

impl AlignedBytes {
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut blocks: Vec<crate::align::Aligned64<[u8; 64]>> =
            Vec::with_capacity(bytes.len().div_ceil(64));
        for chunk in bytes.chunks(64) {
            let mut b = [0u8; 64];
            b[..chunk.len()].copy_from_slice(chunk);
            blocks.push(crate::align::Aligned64(b));
        }
        AlignedBytes {
            blocks,
            len: bytes.len(),
        }
    }

    /// Reads a whole file into aligned memory.
    pub fn read(path: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(path)?;
        Ok(Self::from_slice(&bytes))
    }

    /// Reads a .kbm file: a regular file only, its 128-byte header checked
    /// first, then exactly the `file_bytes` it names, straight into aligned
    /// memory allocated fallibly. Junk, a device or a file whose size
    /// disagrees with its header costs 128 bytes, not its length. The result
    /// still needs [`crate::ModelFile::parse`].
    pub fn read_model(path: &Path) -> io::Result<Self> {
        use io::Read;
        let invalid = |e: FormatError| io::Error::new(io::ErrorKind::InvalidData, e);
        let mut f = std::fs::File::open(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (a device, pipe or directory is not a model)",
            ));
        }
        let len = meta.len();
        let mut h = Vec::with_capacity(HEADER_BYTES);
        f.by_ref().take(HEADER_BYTES as u64).read_to_end(&mut h)?;
        let header = crate::file::Header::parse(&h).map_err(invalid)?;
        if len < header.file_bytes {
            return Err(invalid(FormatError::Truncated {
                len,
                needed: header.file_bytes,
            }));
        }
        if len > header.file_bytes {
            return Err(invalid(FormatError::TrailingBytes {
                expected: header.file_bytes,
                actual: len,
            }));
        }
        let n = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let mut blocks: Vec<crate::align::Aligned64<[u8; 64]>> = Vec::new();
        blocks.try_reserve_exact(n.div_ceil(64)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot allocate {n} bytes for the model"),
            )
        })?;
        blocks.extend((0..n.div_ceil(64)).map(|_| crate::align::Aligned64([0u8; 64])));
        let mut out = AlignedBytes { blocks, len: n };
        out.as_mut_slice()[..HEADER_BYTES].copy_from_slice(&h);
        // The file may have changed since its length was read: exactly the
        // rest, or an error.
        f.read_exact(&mut out.as_mut_slice()[HEADER_BYTES..])?;
        Ok(out)
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; the borrow of `self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr() as *mut u8, self.len) }
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `blocks` is a contiguous array of 64-byte plain arrays
        // (repr(C), size 64, no padding), and `len <= 64 * blocks.len()`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr() as *const u8, self.len) }
    }
}
