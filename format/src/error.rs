//! The one error type of the format crate. Every variant carries what a user
//! needs to find the problem: a byte offset, a tensor name, a limit.

use crate::dtype::DType;
use crate::quant::CodecError;

/// Longest tensor name a file may hold (bytes of UTF-8).
pub const MAX_NAME_LEN: usize = 88;

/// A tensor name held without an allocator.
pub type TensorName = heapless::String<MAX_NAME_LEN>;

/// A tensor shape: up to four dimensions, `rank` of them used.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub dims: [u32; 4],
    pub rank: u8,
}

impl Shape {
    pub const fn new(dims: &[u32]) -> Self {
        let mut d = [0u32; 4];
        let mut i = 0;
        while i < dims.len() && i < 4 {
            d[i] = dims[i];
            i += 1;
        }
        Shape {
            dims: d,
            rank: dims.len() as u8,
        }
    }

    pub fn dims(&self) -> &[u32] {
        &self.dims[..(self.rank as usize).min(4)]
    }

    /// Product of the dimensions, `None` on overflow.
    pub fn numel(&self) -> Option<u64> {
        self.dims()
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
    }

    /// The last dimension (the row length along which blocks are cut).
    pub fn last(&self) -> u32 {
        self.dims().last().copied().unwrap_or(1)
    }
}

impl core::fmt::Debug for Shape {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

impl core::fmt::Display for Shape {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Copies a name into a [`TensorName`], cutting it at the capacity on a char
/// boundary (names from a corrupt file may be anything).
pub fn tensor_name(name: &str) -> TensorName {
    // One push_str of the longest prefix that fits, not a push per char: the
    // same cut, in a third of the firmware code.
    let mut end = name.len().min(MAX_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = TensorName::new();
    let _ = out.push_str(&name[..end]);
    out
}

/// How [`FormatError::BadHeader`]'s value relates to the one it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Exactly,
    AtMost,
    AtLeast,
}

/// Everything that can be wrong with a .kbm file or a model description.
#[derive(Clone, Debug, PartialEq)]
pub enum FormatError {
    /// The input ends at byte `len` but at least `needed` bytes are required.
    Truncated {
        len: u64,
        needed: u64,
    },
    /// The input is longer than its header says (`expected` bytes).
    TrailingBytes {
        expected: u64,
        actual: u64,
    },
    BadMagic {
        found: [u8; 8],
    },
    UnsupportedVersion {
        found: u16,
        supported: u16,
    },
    /// A fixed header field holds a value this version does not allow:
    /// `value` must be `expected` exactly, at most or at least (`bound`).
    BadHeader {
        field: &'static str,
        value: u64,
        expected: u64,
        bound: Bound,
    },
    /// A reserved byte range is not zero.
    ReservedNotZero {
        offset: u64,
    },
    UnknownFamily {
        code: u16,
    },
    BadConfig {
        field: &'static str,
        value: u32,
        reason: &'static str,
    },
    /// A config word that holds an f32 (`norm_eps`), shown as the number.
    BadFloatConfig {
        field: &'static str,
        value: f32,
        reason: &'static str,
    },
    MissingConfigField {
        field: &'static str,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    /// Directory entry `index` has a name that is empty, too long or not UTF-8.
    BadTensorName {
        index: u32,
    },
    /// Names must be strictly increasing (bytewise), which also rules out duplicates.
    TensorsNotSorted {
        index: u32,
        name: TensorName,
    },
    DuplicateTensor {
        name: TensorName,
    },
    UnknownDtype {
        name: TensorName,
        code: u8,
    },
    BadRank {
        name: TensorName,
        rank: u8,
    },
    /// The byte length stored for a tensor does not match its dtype and shape.
    LengthMismatch {
        name: TensorName,
        dtype: DType,
        shape: Shape,
        byte_len: u64,
    },
    /// Quantised tensors need a last dimension that is a multiple of 32.
    NotWholeBlocks {
        name: TensorName,
        last_dim: u32,
    },
    OutOfBounds {
        name: TensorName,
        offset: u64,
        byte_len: u64,
        limit: u64,
    },
    Misaligned {
        name: TensorName,
        offset: u64,
    },
    Overlapping {
        name: TensorName,
        offset: u64,
        previous_end: u64,
    },
    /// Tensors are packed: each starts at the next 64-byte boundary after the last.
    Gap {
        name: TensorName,
        offset: u64,
        expected: u64,
    },
    NonZeroPadding {
        offset: u64,
    },
    MissingTensor {
        name: TensorName,
    },
    UnexpectedTensor {
        name: TensorName,
    },
    WrongShape {
        name: TensorName,
        expected: Shape,
        found: Shape,
    },
    /// The tensor's dtype is not allowed for its role (e.g. q4 layer-norm weights).
    WrongDtype {
        name: TensorName,
        dtype: DType,
    },
    /// Data could not be encoded or decoded.
    Codec {
        name: TensorName,
        error: CodecError,
    },
    /// The metadata tensor `meta.labels` does not list exactly n_classes names.
    BadLabels {
        expected: u32,
        found: u32,
    },
    /// Label `index` of `meta.labels` holds a control character (ESC, tab,
    /// CR, NUL...): labels reach terminals and `label<TAB>p` lines as they are.
    LabelControl {
        index: u32,
    },
    /// An accessor needed a different dtype (e.g. `as_f32` on a q8 tensor).
    DtypeMismatch {
        name: TensorName,
        expected: DType,
        found: DType,
    },
    /// A tensor's bytes are not aligned in memory for a typed view; load the
    /// file into 64-byte aligned memory (see `include_model!` and `AlignedBytes`).
    UnalignedMemory {
        name: TensorName,
    },
}

impl core::fmt::Display for FormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use FormatError::*;
        match self {
            Truncated { len, needed } => write!(
                f,
                "truncated at byte {len}: at least {needed} bytes are needed"
            ),
            TrailingBytes { expected, actual } => {
                write!(f, "{} trailing bytes: the header says the file is {expected} bytes, it is {actual}", actual - expected)
            }
            BadMagic { found } => write!(
                f,
                "not a .kbm file: bad magic bytes {found:02x?} at offset 0"
            ),
            UnsupportedVersion { found, supported } => {
                write!(
                    f,
                    "unsupported .kbm version {found} (this build reads version {supported})"
                )
            }
            BadHeader {
                field,
                value,
                expected,
                bound,
            } => {
                let need = match bound {
                    Bound::Exactly => "expected",
                    Bound::AtMost => "at most",
                    Bound::AtLeast => "at least",
                };
                write!(f, "bad header field {field}: {value} ({need} {expected})")
            }
            ReservedNotZero { offset } => {
                write!(f, "reserved header bytes at offset {offset} are not zero")
            }
            UnknownFamily { code } => write!(
                f,
                "unknown model family code {code} (1 = megabyte, 2 = bigs)"
            ),
            BadConfig {
                field,
                value,
                reason,
            } => write!(f, "bad config: {field} = {value} {reason}"),
            BadFloatConfig {
                field,
                value,
                reason,
            } => write!(f, "bad config: {field} = {value} {reason}"),
            MissingConfigField { field } => write!(f, "config field {field} is missing"),
            ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch: stored CRC-32 {stored:08x}, computed {computed:08x} (the file is corrupt)")
            }
            BadTensorName { index } => write!(
                f,
                "tensor directory entry {index}: name is empty, too long or not UTF-8"
            ),
            TensorsNotSorted { index, name } => {
                write!(
                    f,
                    "tensor directory entry {index} ({name}) is out of order: names must be sorted"
                )
            }
            DuplicateTensor { name } => write!(f, "tensor {name} appears twice"),
            UnknownDtype { name, code } => write!(f, "tensor {name}: unknown dtype code {code}"),
            BadRank { name, rank } => write!(f, "tensor {name}: rank {rank} is not in 1..=4"),
            LengthMismatch {
                name,
                dtype,
                shape,
                byte_len,
            } => {
                write!(f, "tensor {name}: {byte_len} bytes does not match dtype {dtype} with shape {shape}")
            }
            NotWholeBlocks { name, last_dim } => {
                write!(f, "tensor {name}: last dimension {last_dim} is not a multiple of the 32-element quantisation block")
            }
            OutOfBounds {
                name,
                offset,
                byte_len,
                limit,
            } => {
                write!(f, "tensor {name} is out of bounds: bytes {offset}..{} but the data ends at {limit}", offset.saturating_add(*byte_len))
            }
            Misaligned { name, offset } => {
                write!(f, "tensor {name} at offset {offset} is not 64-byte aligned")
            }
            Overlapping {
                name,
                offset,
                previous_end,
            } => {
                write!(f, "tensor {name} at offset {offset} overlaps the previous tensor, which ends at {previous_end}")
            }
            Gap {
                name,
                offset,
                expected,
            } => {
                write!(f, "tensor {name} starts at offset {offset}, expected {expected} (tensors are packed in directory order)")
            }
            NonZeroPadding { offset } => write!(f, "padding byte at offset {offset} is not zero"),
            MissingTensor { name } => write!(f, "required tensor {name} is missing"),
            UnexpectedTensor { name } => {
                write!(f, "tensor {name} is not part of this model family")
            }
            WrongShape {
                name,
                expected,
                found,
            } => {
                write!(
                    f,
                    "tensor {name} has shape {found}, the config needs {expected}"
                )
            }
            WrongDtype { name, dtype } => write!(
                f,
                "tensor {name}: dtype {dtype} is not allowed for this tensor"
            ),
            Codec { name, error } => write!(f, "tensor {name}: {error}"),
            BadLabels { expected, found } => {
                write!(
                    f,
                    "meta.labels lists {found} label names, the classifier has {expected} classes"
                )
            }
            LabelControl { index } => write!(
                f,
                "meta.labels: label {index} holds a control character (not allowed in label names)"
            ),
            DtypeMismatch {
                name,
                expected,
                found,
            } => {
                write!(f, "tensor {name} is {found}, {expected} was needed")
            }
            UnalignedMemory { name } => {
                write!(f, "tensor {name} is not aligned in memory: load the file into 64-byte aligned memory")
            }
        }
    }
}

// core's Error (Rust 1.81) is std's, so no_std callers get it too.
impl core::error::Error for FormatError {}
