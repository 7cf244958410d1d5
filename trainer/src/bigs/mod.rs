//! BiGS (bidirectional gated SSM) for the trainer.
//!
//! - [`model`]: the encoder and its two heads (masked bytes,
//!   classification) built from backend ops, forward and backward; the
//!   state-space kernels themselves are the backend's (`Backend::ssm_*`).
//! - `layer`: one encoder layer, forward and backward.
//! - [`masking`]: the masked-byte objective's span masking.
//! - [`jobs`]: BiGS runs in the shared training loop.

pub mod jobs;
mod layer;
pub mod masking;
pub mod model;

#[cfg(test)]
mod model_tests;

pub use model::{BigsBatch, BigsModel, StepResult, Task, Workspace};
