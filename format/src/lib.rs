//! # kilobyte-format: the .kbm model file
//!
//! The contract between kilobyte's trainer and its runtime. This crate owns:
//! the model configurations of both families ([`MegabyteConfig`],
//! [`BigsConfig`]), the list of tensors each needs ([`schema`]), the dtypes
//! and their reference quantisation codecs ([`quant`]), the zero-copy
//! validating reader ([`ModelFile::parse`]), and, with feature `std`, the
//! atomic writer and the safetensors bridge.
//!
//! It must not own model math (that is the runtime's and the trainer's), and
//! the reader must stay `no_std` with no allocator: firmware parses a model
//! in place from flash. The byte layout is specified in `format/SPEC.md`;
//! this code follows it exactly.
//!
//! No input can make [`ModelFile::parse`] panic or read out of bounds:
//! every offset, length and shape product is checked arithmetic, and the
//! parser is fuzzed (`format/fuzz`).
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(target_endian = "big")]
compile_error!("kilobyte-format reads tensors in place and supports little-endian targets only");

#[cfg(feature = "std")]
extern crate std;

pub mod align;
#[cfg(feature = "std")]
pub mod atomic;
pub mod config;
pub mod crc;
pub mod dtype;
pub mod error;
pub mod file;
pub mod quant;
pub mod schema;
#[cfg(feature = "std")]
pub mod st;
#[cfg(feature = "std")]
pub mod writer;

pub use align::Aligned64;
#[cfg(feature = "std")]
pub use atomic::write_atomic;
pub use config::{BigsConfig, MegabyteConfig, ModelConfig, ModelFamily};
pub use dtype::DType;
pub use error::{Bound, FormatError, Shape, TensorName};
pub use file::{BlockQ4, BlockQ8, Checksum, Header, ModelFile, Tensor};
pub use schema::{for_each_tensor, Role, TensorSpec};
#[cfg(feature = "std")]
pub use writer::{AlignedBytes, KbmWriter};
