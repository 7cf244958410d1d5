//! The zero-copy reader. `ModelFile::parse` checks every byte of the layout
//! described in `format/SPEC.md` with checked arithmetic, then hands out
//! tensors as slices borrowed from the input.

use crate::config::{ModelConfig, ModelFamily, CONFIG_WORDS};
use crate::crc::crc32;
use crate::dtype::{DType, Q4_BLOCK_BYTES, Q8_BLOCK_BYTES, QK};
use crate::error::{tensor_name, Bound, FormatError, Shape, MAX_NAME_LEN};
use crate::schema::{for_each_tensor, Role, LABELS_TENSOR};

/// The first eight bytes of every .kbm file.
pub const MAGIC: [u8; 8] = *b"KILOBYTE";
/// The version this build reads and writes.
pub const VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 128;
/// Size of one tensor directory entry.
pub const ENTRY_BYTES: usize = 128;
/// Alignment of the data section and of every tensor, relative to the file start.
pub const ALIGN: usize = 64;
/// The CRC-32 trailer.
pub const TRAILER_BYTES: usize = 4;
/// Most tensors a file may hold (a base BiGS with both heads has ~450).
pub const MAX_TENSORS: u32 = 65_536;

/// Byte offsets of the header fields (see SPEC.md).
pub(crate) mod hdr {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const HEADER_BYTES: usize = 10;
    pub const FAMILY: usize = 12;
    pub const RESERVED0: usize = 14;
    pub const TENSOR_COUNT: usize = 16;
    pub const DIRECTORY_BYTES: usize = 20;
    pub const DATA_OFFSET: usize = 24;
    pub const FILE_BYTES: usize = 32;
    pub const RESERVED1: usize = 40;
    pub const CONFIG: usize = 64;
}

/// Byte offsets inside a directory entry.
pub(crate) mod ent {
    pub const NAME_LEN: usize = 0;
    pub const DTYPE: usize = 2;
    pub const RANK: usize = 3;
    pub const DIMS: usize = 4;
    pub const RESERVED: usize = 20;
    pub const OFFSET: usize = 24;
    pub const BYTE_LEN: usize = 32;
    pub const NAME: usize = 40;
}

/// Rounds `x` up to a multiple of [`ALIGN`], `None` on overflow.
pub const fn align_up(x: u64) -> Option<u64> {
    match x.checked_add(ALIGN as u64 - 1) {
        Some(v) => Some(v / ALIGN as u64 * ALIGN as u64),
        None => None,
    }
}

// Callers guarantee `at + N <= bytes.len()` (the header and directory are
// bounds-checked as a whole before any field is read).
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Whether to recompute the CRC-32 while parsing. Firmware that verified the
/// image once (or trusts its flash) can skip the pass over every weight byte;
/// the layout is checked completely either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    Verify,
    Skip,
}

/// A tensor borrowed from a parsed file.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: Shape,
    /// Offset of the data from the start of the file.
    pub offset: u64,
    pub data: &'a [u8],
}

/// One q8 block as stored: f16 scale bytes, then 32 signed values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}

/// One q4 block as stored: f16 scale bytes, then 16 bytes of nibbles.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}

// SAFETY: both are repr(C) arrays of 1-byte integers: no padding, alignment 1,
// and every bit pattern is valid.
unsafe impl bytemuck::Zeroable for BlockQ8 {}
unsafe impl bytemuck::Pod for BlockQ8 {}
unsafe impl bytemuck::Zeroable for BlockQ4 {}
unsafe impl bytemuck::Pod for BlockQ4 {}

// Tensor data is cast to these structs in place, so each must be exactly one
// stored block with alignment 1 (what the SAFETY note above relies on); a
// wider field or padding would misread every weight.
const _: () = assert!(core::mem::size_of::<BlockQ8>() == Q8_BLOCK_BYTES);
const _: () = assert!(core::mem::size_of::<BlockQ4>() == Q4_BLOCK_BYTES);
const _: () =
    assert!(core::mem::align_of::<BlockQ8>() == 1 && core::mem::align_of::<BlockQ4>() == 1);

impl BlockQ8 {
    pub fn scale(&self) -> f32 {
        half::f16::from_le_bytes(self.d).to_f32()
    }
}

impl BlockQ4 {
    pub fn scale(&self) -> f32 {
        half::f16::from_le_bytes(self.d).to_f32()
    }
}

impl<'a> Tensor<'a> {
    pub fn numel(&self) -> usize {
        // parse() proved numel * element size fits in the input slice.
        self.shape.numel().unwrap_or(0) as usize
    }

    fn typed<T: bytemuck::Pod>(&self, want: DType) -> Result<&'a [T], FormatError> {
        if self.dtype != want {
            return Err(FormatError::DtypeMismatch {
                name: tensor_name(self.name),
                expected: want,
                found: self.dtype,
            });
        }
        bytemuck::try_cast_slice(self.data).map_err(|_| FormatError::UnalignedMemory {
            name: tensor_name(self.name),
        })
    }

    pub fn as_f32(&self) -> Result<&'a [f32], FormatError> {
        self.typed(DType::F32)
    }
    pub fn as_f16(&self) -> Result<&'a [half::f16], FormatError> {
        self.typed(DType::F16)
    }
    pub fn as_bf16(&self) -> Result<&'a [half::bf16], FormatError> {
        self.typed(DType::BF16)
    }
    pub fn as_q8(&self) -> Result<&'a [BlockQ8], FormatError> {
        self.typed(DType::Q8)
    }
    pub fn as_q4(&self) -> Result<&'a [BlockQ4], FormatError> {
        self.typed(DType::Q4)
    }

    /// Dequantises (or copies) the tensor into `out`, which must hold
    /// exactly `numel()` values.
    pub fn decode_into(&self, out: &mut [f32]) -> Result<(), FormatError> {
        crate::quant::decode(self.dtype, self.data, out).map_err(|error| FormatError::Codec {
            name: tensor_name(self.name),
            error,
        })
    }
}

/// A parsed, validated .kbm file borrowing the input bytes.
#[derive(Clone, Copy, Debug)]
pub struct ModelFile<'a> {
    bytes: &'a [u8],
    config: ModelConfig,
    tensor_count: u32,
    checksum: u32,
    checksum_verified: bool,
}

/// Refuses a label name with a control character (C0, DEL or C1): names are
/// printed as they are, so an escape sequence in one would reach the
/// terminal, and a tab or newline would break `label<TAB>p` lines.
pub fn check_labels<'s>(labels: impl Iterator<Item = &'s str>) -> Result<(), FormatError> {
    match labels
        .enumerate()
        .find(|(_, l)| l.chars().any(char::is_control))
    {
        Some((index, _)) => Err(FormatError::LabelControl {
            index: index as u32,
        }),
        None => Ok(()),
    }
}

/// What the fixed 128-byte header says about the file's layout, checked on
/// its own: a reader can check the first 128 bytes of a file, then read
/// exactly `file_bytes`, never more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub family: ModelFamily,
    pub tensor_count: u32,
    pub data_offset: u64,
    /// The whole file's length.
    pub file_bytes: u64,
}

impl Header {
    /// Checks magic, version, header size, family, reserved bytes and the
    /// layout fields of the first 128 bytes of `h` (the config words are
    /// checked by [`ModelFile::parse`]).
    pub fn parse(h: &[u8]) -> Result<Header, FormatError> {
        if h.len() < HEADER_BYTES {
            return Err(FormatError::Truncated {
                len: h.len() as u64,
                needed: HEADER_BYTES as u64,
            });
        }
        let h = &h[..HEADER_BYTES];
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&h[hdr::MAGIC..hdr::MAGIC + 8]);
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = u16_at(h, hdr::VERSION);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let header_bytes = u16_at(h, hdr::HEADER_BYTES);
        if header_bytes as usize != HEADER_BYTES {
            return Err(FormatError::BadHeader {
                field: "header_bytes",
                value: header_bytes as u64,
                expected: HEADER_BYTES as u64,
                bound: Bound::Exactly,
            });
        }
        let family_code = u16_at(h, hdr::FAMILY);
        let family = ModelFamily::from_code(family_code)
            .ok_or(FormatError::UnknownFamily { code: family_code })?;
        check_zero(h, hdr::RESERVED0, hdr::TENSOR_COUNT, 0, reserved)?;
        check_zero(h, hdr::RESERVED1, hdr::CONFIG, 0, reserved)?;

        let tensor_count = u32_at(h, hdr::TENSOR_COUNT);
        if tensor_count > MAX_TENSORS {
            return Err(FormatError::BadHeader {
                field: "tensor_count",
                value: tensor_count as u64,
                expected: MAX_TENSORS as u64,
                bound: Bound::AtMost,
            });
        }
        let dir_bytes = u32_at(h, hdr::DIRECTORY_BYTES) as u64;
        let want_dir = tensor_count as u64 * ENTRY_BYTES as u64;
        if dir_bytes != want_dir {
            return Err(FormatError::BadHeader {
                field: "directory_bytes",
                value: dir_bytes,
                expected: want_dir,
                bound: Bound::Exactly,
            });
        }
        let dir_end = HEADER_BYTES as u64 + dir_bytes;
        let data_offset = u64_at(h, hdr::DATA_OFFSET);
        let want_data = align_up(dir_end).unwrap_or(u64::MAX);
        if data_offset != want_data {
            return Err(FormatError::BadHeader {
                field: "data_offset",
                value: data_offset,
                expected: want_data,
                bound: Bound::Exactly,
            });
        }
        let file_bytes = u64_at(h, hdr::FILE_BYTES);
        let min_file = data_offset + TRAILER_BYTES as u64;
        if file_bytes < min_file {
            return Err(FormatError::BadHeader {
                field: "file_bytes",
                value: file_bytes,
                expected: min_file,
                bound: Bound::AtLeast,
            });
        }
        Ok(Header {
            family,
            tensor_count,
            data_offset,
            file_bytes,
        })
    }
}

impl<'a> ModelFile<'a> {
    /// Parses and fully validates `bytes`, including the CRC-32.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        Self::parse_with(bytes, Checksum::Verify)
    }

    pub fn parse_with(bytes: &'a [u8], checksum: Checksum) -> Result<Self, FormatError> {
        let len = bytes.len() as u64;
        let Header {
            family,
            tensor_count,
            data_offset,
            file_bytes,
        } = Header::parse(bytes)?;
        let h = &bytes[..HEADER_BYTES];
        let dir_end = HEADER_BYTES as u64 + tensor_count as u64 * ENTRY_BYTES as u64;
        if len < file_bytes {
            return Err(FormatError::Truncated {
                len,
                needed: file_bytes,
            });
        }
        if len > file_bytes {
            return Err(FormatError::TrailingBytes {
                expected: file_bytes,
                actual: len,
            });
        }
        // From here on every offset below `len` fits in usize (len came from a slice).
        let mut words = [0u32; CONFIG_WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u32_at(h, hdr::CONFIG + 4 * i);
        }
        let config = ModelConfig::from_words(family, &words)?;

        let body_end = bytes.len() - TRAILER_BYTES;
        let stored = u32_at(bytes, body_end);
        if checksum == Checksum::Verify {
            let computed = crc32(&bytes[..body_end]);
            if computed != stored {
                return Err(FormatError::ChecksumMismatch { stored, computed });
            }
        }

        let file = ModelFile {
            bytes,
            config,
            tensor_count,
            checksum: stored,
            checksum_verified: checksum == Checksum::Verify,
        };
        check_zero(bytes, dir_end as usize, data_offset as usize, 0, padding)?;
        file.check_directory(data_offset, body_end as u64)?;
        file.check_schema()?;
        Ok(file)
    }

    /// Walks the directory: names sorted and valid, dtypes known, lengths
    /// matching shapes, tensors packed at 64-byte boundaries with zero padding.
    fn check_directory(&self, data_offset: u64, data_end: u64) -> Result<(), FormatError> {
        let mut prev_name: &[u8] = &[];
        let mut expected = data_offset;
        let mut prev_end = data_offset;
        for index in 0..self.tensor_count {
            let e = self.entry_bytes(index);
            let base = (HEADER_BYTES + index as usize * ENTRY_BYTES) as u64;
            let name_len = u16_at(e, ent::NAME_LEN) as usize;
            if name_len == 0 || name_len > MAX_NAME_LEN {
                return Err(FormatError::BadTensorName { index });
            }
            let raw_name = &e[ent::NAME..ent::NAME + name_len];
            let name =
                core::str::from_utf8(raw_name).map_err(|_| FormatError::BadTensorName { index })?;
            check_zero(e, ent::NAME + name_len, ENTRY_BYTES, base, reserved)?;
            check_zero(e, ent::RESERVED, ent::OFFSET, base, reserved)?;
            if index > 0 && raw_name <= prev_name {
                return Err(if raw_name == prev_name {
                    FormatError::DuplicateTensor {
                        name: tensor_name(name),
                    }
                } else {
                    FormatError::TensorsNotSorted {
                        index,
                        name: tensor_name(name),
                    }
                });
            }
            prev_name = raw_name;

            let t = self.entry(index)?;
            let numel = t.shape.numel().ok_or(FormatError::LengthMismatch {
                name: tensor_name(name),
                dtype: t.dtype,
                shape: t.shape,
                byte_len: t.data.len() as u64,
            })?;
            if t.dtype.is_quantized() && !(t.shape.last() as usize).is_multiple_of(QK) {
                return Err(FormatError::NotWholeBlocks {
                    name: tensor_name(name),
                    last_dim: t.shape.last(),
                });
            }
            let byte_len = u64_at(e, ent::BYTE_LEN);
            if t.dtype.byte_len(numel) != Some(byte_len) {
                return Err(FormatError::LengthMismatch {
                    name: tensor_name(name),
                    dtype: t.dtype,
                    shape: t.shape,
                    byte_len,
                });
            }
            let offset = t.offset;
            if offset % ALIGN as u64 != 0 {
                return Err(FormatError::Misaligned {
                    name: tensor_name(name),
                    offset,
                });
            }
            if offset < prev_end {
                return Err(FormatError::Overlapping {
                    name: tensor_name(name),
                    offset,
                    previous_end: prev_end,
                });
            }
            if offset != expected {
                return Err(FormatError::Gap {
                    name: tensor_name(name),
                    offset,
                    expected,
                });
            }
            let end = offset
                .checked_add(byte_len)
                .filter(|&end| end <= data_end)
                .ok_or(FormatError::OutOfBounds {
                    name: tensor_name(name),
                    offset,
                    byte_len,
                    limit: data_end,
                })?;
            check_zero(self.bytes, prev_end as usize, offset as usize, 0, padding)?;
            prev_end = end;
            expected = align_up(end).unwrap_or(u64::MAX);
        }
        if prev_end != data_end {
            return Err(FormatError::BadHeader {
                field: "file_bytes",
                value: data_end + TRAILER_BYTES as u64,
                expected: prev_end + TRAILER_BYTES as u64,
                bound: Bound::Exactly,
            });
        }
        Ok(())
    }

    /// Checks the directory against the family's tensor list: nothing
    /// missing, nothing extra, shapes and dtypes as the config requires.
    fn check_schema(&self) -> Result<(), FormatError> {
        let mut required = 0u32;
        for_each_tensor(&self.config, |spec| {
            required += 1;
            let t = self
                .tensor(&spec.name)
                .ok_or_else(|| FormatError::MissingTensor {
                    name: spec.name.clone(),
                })?;
            if !spec.role.allows(t.dtype) {
                return Err(FormatError::WrongDtype {
                    name: spec.name.clone(),
                    dtype: t.dtype,
                });
            }
            match spec.shape {
                Some(shape) if shape != t.shape => Err(FormatError::WrongShape {
                    name: spec.name.clone(),
                    expected: shape,
                    found: t.shape,
                }),
                None if t.shape.rank != 1 => Err(FormatError::BadRank {
                    name: spec.name.clone(),
                    rank: t.shape.rank,
                }),
                _ => Ok(()),
            }
        })?;
        if required != self.tensor_count {
            // Some tensor is not in the schema; name the first one.
            for t in self.tensors() {
                if crate::schema::find_spec(&self.config, t.name).is_none() {
                    return Err(FormatError::UnexpectedTensor {
                        name: tensor_name(t.name),
                    });
                }
            }
        }
        if let ModelConfig::Bigs(c) = self.config {
            if c.has_classifier() {
                let found = self.labels().map(|l| l.count() as u32).unwrap_or(0);
                let valid = self.labels().is_some_and(|mut l| l.all(|s| !s.is_empty()));
                if found != c.n_classes || !valid {
                    return Err(FormatError::BadLabels {
                        expected: c.n_classes,
                        found,
                    });
                }
                check_labels(self.labels().into_iter().flatten())?;
            }
        }
        Ok(())
    }

    /// Directory entry `index`; callers keep `index < tensor_count`, which
    /// the header check proved lies inside the input.
    fn entry_bytes(&self, index: u32) -> &'a [u8] {
        let start = HEADER_BYTES + index as usize * ENTRY_BYTES;
        &self.bytes[start..start + ENTRY_BYTES]
    }

    /// Decodes entry `index`. Before `check_directory` has accepted the entry
    /// this only bounds-checks; afterwards it cannot fail.
    fn entry(&self, index: u32) -> Result<Tensor<'a>, FormatError> {
        let e = self.entry_bytes(index);
        let name_len = (u16_at(e, ent::NAME_LEN) as usize).min(MAX_NAME_LEN);
        let name = core::str::from_utf8(&e[ent::NAME..ent::NAME + name_len]).unwrap_or("?");
        let code = e[ent::DTYPE];
        let dtype = DType::from_code(code).ok_or(FormatError::UnknownDtype {
            name: tensor_name(name),
            code,
        })?;
        let rank = e[ent::RANK];
        if !(1..=4).contains(&rank) {
            return Err(FormatError::BadRank {
                name: tensor_name(name),
                rank,
            });
        }
        let mut dims = [0u32; 4];
        for (i, d) in dims.iter_mut().enumerate() {
            *d = u32_at(e, ent::DIMS + 4 * i);
            if i >= rank as usize && *d != 0 {
                let offset =
                    (HEADER_BYTES + index as usize * ENTRY_BYTES + ent::DIMS + 4 * i) as u64;
                return Err(FormatError::ReservedNotZero { offset });
            }
        }
        let offset = u64_at(e, ent::OFFSET);
        let byte_len = u64_at(e, ent::BYTE_LEN);
        let limit = (self.bytes.len() - TRAILER_BYTES) as u64;
        let end = offset
            .checked_add(byte_len)
            .filter(|&end| end <= limit)
            .ok_or(FormatError::OutOfBounds {
                name: tensor_name(name),
                offset,
                byte_len,
                limit,
            })?;
        Ok(Tensor {
            name,
            dtype,
            shape: Shape { dims, rank },
            offset,
            data: &self.bytes[offset as usize..end as usize],
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn family(&self) -> ModelFamily {
        self.config.family()
    }

    pub fn tensor_count(&self) -> usize {
        self.tensor_count as usize
    }

    /// The input this file borrows.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The stored CRC-32.
    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    /// Whether `parse` recomputed and matched the checksum.
    pub fn checksum_verified(&self) -> bool {
        self.checksum_verified
    }

    /// All tensors in directory (name) order.
    pub fn tensors(&self) -> impl Iterator<Item = Tensor<'a>> + '_ {
        (0..self.tensor_count).filter_map(move |i| self.entry(i).ok())
    }

    /// Looks a tensor up by name (binary search over the sorted directory).
    pub fn tensor(&self, name: &str) -> Option<Tensor<'a>> {
        let (mut lo, mut hi) = (0u32, self.tensor_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.entry_bytes(mid);
            let n = (u16_at(e, ent::NAME_LEN) as usize).min(MAX_NAME_LEN);
            match e[ent::NAME..ent::NAME + n].cmp(name.as_bytes()) {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
                core::cmp::Ordering::Equal => return self.entry(mid).ok(),
            }
        }
        None
    }

    /// Like [`ModelFile::tensor`], with an error naming the missing tensor.
    pub fn get(&self, name: &str) -> Result<Tensor<'a>, FormatError> {
        self.tensor(name).ok_or_else(|| FormatError::MissingTensor {
            name: tensor_name(name),
        })
    }

    /// The role of a tensor in this file's model (for printing and export).
    pub fn role(&self, name: &str) -> Option<Role> {
        crate::schema::find_spec(&self.config, name).map(|s| s.role)
    }

    /// A BiGS classifier's label names, in class order.
    pub fn labels(&self) -> Option<impl Iterator<Item = &'a str>> {
        let t = self.tensor(LABELS_TENSOR)?;
        let text = core::str::from_utf8(t.data).ok()?;
        Some(text.split('\n'))
    }

    /// Bytes of tensor data (without header, directory, padding and trailer).
    pub fn weight_bytes(&self) -> u64 {
        self.tensors().map(|t| t.data.len() as u64).sum()
    }
}

/// Checks that `bytes[from..to]` (offsets relative to `base`) are all zero;
/// `err` receives the offset of the first byte that is not.
fn check_zero(
    bytes: &[u8],
    from: usize,
    to: usize,
    base: u64,
    err: fn(u64) -> FormatError,
) -> Result<(), FormatError> {
    match bytes.get(from..to) {
        Some(s) => match s.iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(i) => Err(err(base + (from + i) as u64)),
        },
        None => Err(err(base + from as u64)),
    }
}

fn reserved(offset: u64) -> FormatError {
    FormatError::ReservedNotZero { offset }
}

fn padding(offset: u64) -> FormatError {
    FormatError::NonZeroPadding { offset }
}
