//! BiGS (bidirectional gated SSM) for the trainer.
//!
//! - [`ssm`]: the state-space operations (kernel generation from the
//!   diagonal S4D-style parameters, the per-channel causal / anti-causal
//!   convolution), each with a hand-written backward pass; backends run
//!   them through [`crate::backend::Backend`]'s `ssm_*` ops.
//! - [`fft_conv`]: the same convolution by FFT, which the CPU backend uses
//!   for sequences of [`fft_conv::FFT_FROM_LEN`] bytes and more.
//! - [`model`]: the encoder and its two heads (masked bytes,
//!   classification) built from backend ops, forward and backward.
//! - [`masking`]: the masked-byte objective's span masking.

pub mod fft_conv;
pub mod jobs;
pub mod masking;
pub mod model;
pub mod ssm;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use model::{BigsBatch, BigsModel, StepResult, Task, Workspace};
pub use ssm::{
    ssm_backward, ssm_forward, ssm_kernel, ssm_kernel_backward, ssm_recurrence, Direction, SsmDims,
    SsmShape,
};
