//! The runtime's error type: everything a caller can get wrong or hand us
//! broken, each with the numbers needed to fix it.

use kilobyte_format::FormatError;

#[derive(Clone, Debug, PartialEq)]
pub enum RuntimeError {
    /// The model file is invalid or lacks what this model needs.
    Format(FormatError),
    /// A kernel was handed slices of the wrong length (a bug in the caller).
    Kernel(crate::kernels::KernelError),
    /// The file holds another model family.
    WrongFamily {
        expected: &'static str,
        found: &'static str,
    },
    /// The arena is smaller than `arena_bytes` says is needed.
    ArenaTooSmall { needed: usize, given: usize },
    /// The requested context is not usable with this model.
    BadContext {
        requested: usize,
        reason: &'static str,
    },
    /// More layers than the runtime's fixed table holds.
    TooManyLayers { layers: u32, max: usize },
    /// Sampling parameters out of range.
    BadSampler { reason: &'static str },
    /// The model computed NaN (its weights are not finite): no result.
    NotFinite { what: &'static str },
    /// The model has no head of this kind (e.g. classifying with a
    /// masked-byte-only BiGS model).
    MissingHead { head: &'static str },
}

impl From<FormatError> for RuntimeError {
    fn from(e: FormatError) -> Self {
        RuntimeError::Format(e)
    }
}

impl From<crate::kernels::KernelError> for RuntimeError {
    fn from(e: crate::kernels::KernelError) -> Self {
        RuntimeError::Kernel(e)
    }
}

impl core::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RuntimeError::Format(e) => write!(f, "{e}"),
            RuntimeError::Kernel(e) => write!(f, "kernel: {e:?}"),
            RuntimeError::WrongFamily { expected, found } => {
                write!(f, "this is a {found} model, a {expected} model is needed")
            }
            RuntimeError::ArenaTooSmall { needed, given } => {
                write!(f, "arena too small: {needed} bytes needed, {given} given")
            }
            RuntimeError::BadContext { requested, reason } => {
                write!(f, "context of {requested} bytes: {reason}")
            }
            RuntimeError::TooManyLayers { layers, max } => {
                write!(
                    f,
                    "{layers} layers: the runtime supports at most {max} per transformer"
                )
            }
            RuntimeError::BadSampler { reason } => write!(f, "sampler: {reason}"),
            RuntimeError::MissingHead { head } => {
                write!(f, "this model has no {head} head")
            }
            RuntimeError::NotFinite { what } => {
                write!(f, "the model's {what} are NaN: its weights are not finite")
            }
        }
    }
}

// core's Error (Rust 1.81) is std's, so no_std callers get it too.
impl core::error::Error for RuntimeError {}
