//! Optimisation: AdamW with decoupled weight decay and global gradient-norm
//! clipping ([`AdamW`]), and the learning-rate schedule ([`LrSchedule`]:
//! linear warm-up, then cosine decay to a floor). Defaults follow MODELS.md.
//!
//! The update runs on the backend ([`crate::backend::Backend::adamw_update`]),
//! in the backend's element type: f32 master weights and f32 moment
//! estimates in training. [`AdamWState`] is the plain-data copy of the
//! optimizer state for checkpoints.

mod adamw;
mod schedule;

pub use adamw::{AdamW, AdamWConfig, AdamWState, ParamInfo, StepStats};
pub use schedule::LrSchedule;

#[cfg(test)]
mod tests;
