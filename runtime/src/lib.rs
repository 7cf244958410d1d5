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
//! ## Generating text
//!
//! A model is parsed in place ([`format::ModelFile::parse`], which needs its
//! bytes 64-byte aligned: [`format::include_model!`] embeds a file so),
//! viewed as a [`Megabyte`], and run by a [`Session`] over an arena of
//! [`ArenaSpec::arena_bytes`] bytes. Bytes go in with [`Session::prefill`]
//! and [`Session::push`]; [`Session::logits`] scores the next one, and a
//! [`Sampler`] picks it.
//!
//! ```
//! use kilobyte_runtime::format::{include_model, ModelFile};
//! use kilobyte_runtime::{ArenaSpec, Megabyte, Sampler, SamplerConfig};
//!
//! static MODEL: &[u8] = include_model!("../examples/models/tiny-megabyte.kbm");
//!
//! # fn main() -> Result<(), kilobyte_runtime::RuntimeError> {
//! let file = ModelFile::parse(MODEL)?;
//! let model = Megabyte::from_file(&file)?;
//! // 128 bytes of context; the size is a const fn of the config.
//! let spec = ArenaSpec::new(128);
//! let mut arena = vec![0u8; spec.arena_bytes(&model.config)];
//! let mut session = model.session(&mut arena, spec)?;
//! session.prefill(b"The runtime ")?;
//! let mut sampler = Sampler::new(SamplerConfig { seed: 1, ..SamplerConfig::default() })?;
//! let mut text = Vec::new();
//! for _ in 0..32 {
//!     let byte = sampler.sample(session.logits());
//!     session.push(byte)?;
//!     text.push(byte);
//! }
//! assert_eq!(session.len(), 12 + 32);
//! # Ok(())
//! # }
//! ```
//!
//! An arena that is too small is an error, not a crash:
//!
//! ```
//! # use kilobyte_runtime::format::{include_model, ModelFile};
//! # use kilobyte_runtime::{ArenaSpec, Megabyte, RuntimeError};
//! # static MODEL: &[u8] = include_model!("../examples/models/tiny-megabyte.kbm");
//! let file = ModelFile::parse(MODEL).unwrap();
//! let model = Megabyte::from_file(&file).unwrap();
//! let mut arena = [0u8; 1024];
//! let err = model.session(&mut arena, ArenaSpec::new(128)).err().unwrap();
//! assert!(matches!(err, RuntimeError::ArenaTooSmall { .. }));
//! ```
//!
//! ## Classifying and filling gaps
//!
//! A BiGS model runs in an [`Encoder`], sized by [`Bigs::arena_bytes`]:
//! [`Encoder::classify`] gives the class and every class probability,
//! [`Encoder::fill`] replaces marked bytes with the most likely ones (for a
//! model exported with its masked-byte head).
//!
//! ```
//! use kilobyte_runtime::format::{include_model, ModelFile};
//! use kilobyte_runtime::Bigs;
//!
//! static MODEL: &[u8] = include_model!("../examples/models/code-or-prose.kbm");
//!
//! # fn main() -> Result<(), kilobyte_runtime::RuntimeError> {
//! let file = ModelFile::parse(MODEL)?;
//! let model = Bigs::from_file(&file)?;
//! let mut arena = vec![0u8; Bigs::arena_bytes(&model.config, 128)];
//! let mut encoder = model.encoder(&mut arena, 128)?;
//! let c = encoder.classify(b"let arena = vec![0u8; spec.arena_bytes(&config)];")?;
//! assert_eq!(model.label(c.class), Some("code"));
//! assert!((c.probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
//! # Ok(())
//! # }
//! ```
//!
//! `runtime/examples/` has both as programs with `static` arenas sized at
//! compile time (`cargo run -p kilobyte-runtime --example generate`), and
//! the firmware test (`tests/firmware/`) does the same on a Cortex-M4F.
//!
//! ## Modules
//!
//! - [`arena`]: working memory: each session type's regions declared once
//!   (the layout that sizes the arena and the carving into it), and
//!   [`Arena`] / [`StaticArena`] for aligned, `static` arenas without slack.
//! - [`kernels`]: scalar reference ops and their SIMD versions (AVX2+FMA
//!   chosen at run time, NEON on aarch64, SIMD128 on wasm32 with the
//!   `simd128` feature, scalar elsewhere).
//! - [`megabyte`]: weight views, arena layout, prefill and incremental decoding.
//! - [`sampling`]: greedy / temperature / top-k / top-p with a seeded PRNG.
//! - [`bigs`]: the bidirectional SSM encoder, classification and fill-in.
//! - [`ngram`]: hashed n-gram embedding lookups.
//! - `capi` (feature `capi`): the C ABI, `runtime/include/kilobyte.h`, which
//!   is also the WebAssembly module's interface (`web/`).
//!
//! ## Features
//!
//! - `std`: `kilobyte-format`'s std side (its writer, `AlignedBytes`, the
//!   safetensors bridge), for host programs that also write models.
//! - `capi`, `capi-staticlib`: the C ABI, and the panic handler a standalone
//!   static library (or wasm module) needs.
//! - `simd128`: WebAssembly SIMD128 kernels on wasm32, chosen at compile time.
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
mod tensors;
#[cfg(test)]
mod testutil;

pub use arena::{Arena, StaticArena};
pub use bigs::{Bigs, Classification, Encoder, EncoderLayout};
pub use error::RuntimeError;
pub use megabyte::{ArenaSpec, Megabyte, Session, SessionLayout};
pub use sampling::{Sampler, SamplerConfig};
