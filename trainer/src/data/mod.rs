//! Training data: raw bytes from files, split into training and validation
//! parts, served as batches of fixed-length windows.
//!
//! - [`Corpus`]: the concatenation of a list of files and directories
//!   (directories walked recursively in sorted path order), memory-mapped so
//!   a corpus larger than RAM costs only page cache.
//! - [`Split`]: a deterministic train/validation split (by default the last
//!   [`DEFAULT_VAL_FRACTION`] of the bytes validate), or separate sources.
//! - [`Sampler`]: random training windows drawn with the seeded
//!   [`kilobyte_runtime::rng::Rng`]; its [`crate::checkpoint::SamplerState`] goes into
//!   checkpoints so a resumed run draws exactly the batches it would have.
//! - [`ValBatches`]: consecutive windows over the validation bytes.
//! - [`tsv`]: labelled text (GLUE-style TSV/CSV) for classification.
//! - [`builtin_corpus`]: the project's own documentation and source, compiled
//!   in, so `kilobyte demo` trains without downloading anything.
//!
//! # Windows and targets
//!
//! Everything here deals in *windows* of `window` bytes and leaves the
//! meaning to the model:
//!
//! - a causal model (MEGABYTE) with context T asks for `window = T + 1`
//!   and reads inputs `x[0..T]` ([`Batch::inputs`]) and targets `x[1..T+1]`
//!   ([`Batch::targets`]); for validation it uses `stride = T`, so
//!   consecutive windows share one byte and every validation byte after the
//!   first is predicted exactly once;
//! - a masked model (BiGS) asks for `window = T` and reads [`Batch::row`];
//!   its targets are the unmasked bytes themselves.

mod builtin;
mod corpus;
mod file;
mod sampler;
pub mod tsv;

pub use builtin::{builtin_corpus, builtin_corpus_files};
pub use corpus::{Corpus, CorpusFile, Split, Subset, DEFAULT_VAL_FRACTION};
pub use file::read_regular;
pub use sampler::{Batch, Sampler, ValBatches};

#[cfg(test)]
mod tests;
