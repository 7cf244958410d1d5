//! # kilobyte-trainer
//!
//! The std side of kilobyte: training (CPU backend now, CUDA later behind
//! the same backend interface), checkpoints, evaluation, export to `.kbm`,
//! and the `kilobyte` command-line tool's commands.
//!
//! It owns everything that needs an allocator, files or threads. It must not
//! re-implement the file layout (`kilobyte-format` owns it) or the inference
//! kernels (`kilobyte-runtime` owns them): evaluation of a `.kbm` runs
//! through the runtime so users measure what devices run.

pub mod backend;
pub mod bigs;
pub mod budget;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod family;
pub mod megabyte;
pub mod ngram;
pub mod optim;
pub mod params;
pub mod plot;
pub mod text;
pub mod train;

#[cfg(test)]
mod testutil;
