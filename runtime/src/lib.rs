//! # kilobyte-runtime: on-device inference
//!
//! Runs kilobyte's MEGABYTE and BiGS models from a `.kbm` file in place
//! (zero-copy, even from flash), with no allocator: all working memory is a
//! caller-provided arena whose size is known at compile time.
//!
//! This crate owns the model forward passes, the decoding caches, sampling
//! and the CPU kernels. It must not own file layout (that is
//! `kilobyte-format`'s) or anything needing `std`; every public entry point
//! returns a `Result`, so no input can panic it.
//!
//! Module plan:
//! - `kernels`: scalar reference ops and their SIMD versions (AVX2+FMA chosen
//!   at run time, NEON on aarch64, scalar elsewhere).
//! - `megabyte`: weight views, arena layout, prefill and incremental decoding.
//! - `sampling`: greedy / temperature / top-k / top-p with a seeded PRNG.
//! - `bigs`: the bidirectional SSM encoder, classification and fill-in.
//! - `capi` (feature `capi`): the C ABI, `runtime/include/kilobyte.h`.
#![no_std]

#[cfg(any(feature = "std", test))]
extern crate std;

pub use kilobyte_format as format;

pub mod arena;
pub mod bigs;
#[cfg(feature = "capi")]
pub mod capi;
pub mod error;
pub mod kernels;
pub mod megabyte;
pub mod ngram;
pub mod rng;
pub mod sampling;
#[cfg(test)]
mod testutil;

pub use bigs::{Bigs, Classification, Encoder};
pub use error::RuntimeError;
pub use megabyte::{ArenaSpec, Megabyte, Session};
pub use sampling::{Sampler, SamplerConfig};
