//! BiGS (bidirectional gated SSM) building blocks for the CPU trainer.
//!
//! For now this holds the state-space operations ([`ssm`]): kernel
//! generation from the diagonal S4D-style parameters and the per-channel
//! causal / anti-causal convolution, each with a hand-written backward pass
//! following the backend conventions (row-major `[rows, width]`, backward
//! ops add into gradient outputs, deterministic results).

pub mod ssm;

#[cfg(test)]
mod tests;

pub use ssm::{
    ssm_backward, ssm_forward, ssm_kernel, ssm_kernel_backward, ssm_recurrence, Direction, SsmDims,
    SsmShape,
};
