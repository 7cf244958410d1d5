//! AdamW over a model's parameter buffers.

use super::LrSchedule;
use crate::backend::{AdamWStep, Backend};
use crate::params::ParamSet;
use anyhow::{ensure, Result};
use kilobyte_format::schema::Role;

/// AdamW's hyper-parameters (MODELS.md defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay, applied to parameters with `decay` set.
    pub weight_decay: f32,
    /// Global gradient-norm clipping threshold; 0 (or less) disables it.
    pub grad_clip: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }
    }
}

/// What the optimizer needs to know about one parameter tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamInfo {
    /// Number of elements.
    pub len: usize,
    /// Whether weight decay applies ([`Role::weight_decay`]).
    pub decay: bool,
    /// Multiplies the scheduled learning rate (e.g. for SSM parameters).
    pub lr_scale: f32,
}

impl ParamInfo {
    pub fn new(len: usize, role: Role) -> Self {
        ParamInfo {
            len,
            decay: role.weight_decay(),
            lr_scale: 1.0,
        }
    }
}

/// What one [`AdamW::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Number of updates made so far (including this one, unless skipped).
    pub step: u64,
    /// The scheduled learning rate used (before per-parameter scales).
    pub lr: f64,
    /// Global L2 norm of the (accumulation-scaled) gradient, before clipping.
    pub grad_norm: f64,
    /// The factor clipping multiplied the gradient by (1 when not clipped).
    pub clip_scale: f64,
    /// True when the gradient norm was not finite: nothing was updated.
    pub skipped: bool,
}

/// The optimizer state as plain data: one f32 vector per parameter for
/// each moment, in parameter order, plus the number of updates made, and
/// the averaged weights when the run keeps them (else empty).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AdamWState {
    pub step: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub average: Vec<Vec<f32>>,
}

/// An exponential moving average of the weights, updated after every
/// step: `avg = d avg + (1 - d) w` with `d = min(decay, (1 + t) / (10 + t))`
/// at update `t`, so the first updates are not averaged with the
/// initialisation for long. Evaluation and the best weights use it;
/// training goes on from the raw weights.
struct Average<B: Backend> {
    decay: f32,
    bufs: Vec<B::Buf>,
}

/// AdamW with global gradient-norm clipping and a learning-rate schedule.
/// Moments live on the backend next to the parameters.
///
/// Gradient accumulation: zero the gradients with [`AdamW::zero_grads`],
/// run the backward pass of each micro-batch (backward ops add into the
/// gradient buffers), then call [`AdamW::step`] with `grad_scale =
/// 1/micro_batches` (the scale is folded into the update, so gradients are
/// never rescaled in memory).
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    pub schedule: LrSchedule,
    params: Vec<ParamInfo>,
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
    step: u64,
    average: Option<Average<B>>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(
        backend: &B,
        config: AdamWConfig,
        schedule: LrSchedule,
        params: Vec<ParamInfo>,
    ) -> Result<Self> {
        let m = params
            .iter()
            .map(|p| backend.alloc(p.len))
            .collect::<Result<Vec<_>>>()?;
        let v = params
            .iter()
            .map(|p| backend.alloc(p.len))
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            config,
            schedule,
            params,
            m,
            v,
            step: 0,
            average: None,
        })
    }

    /// Keeps a moving average of the weights with `decay` (in (0, 1)),
    /// starting from `start` (the weights now, in parameter order).
    pub fn with_average(mut self, backend: &B, decay: f32, start: &ParamSet) -> Result<Self> {
        ensure!(
            decay > 0.0 && decay < 1.0,
            "weight-average decay {decay} is not in (0, 1)"
        );
        ensure!(start.params.len() == self.params.len(), "parameter count");
        let bufs = start
            .params
            .iter()
            .map(|p| backend.upload(&p.data))
            .collect::<Result<_>>()?;
        self.average = Some(Average { decay, bufs });
        Ok(self)
    }

    /// Exchanges the weights in `params` with the averaged ones (a second
    /// call swaps them back); without an average it does nothing.
    pub fn swap_average(&mut self, params: &mut Vec<B::Buf>) {
        if let Some(a) = &mut self.average {
            std::mem::swap(params, &mut a.bufs);
        }
    }

    /// An optimizer for every tensor of `set`, in its order, decaying what
    /// the schema's roles say.
    pub fn for_param_set(
        backend: &B,
        config: AdamWConfig,
        schedule: LrSchedule,
        set: &ParamSet,
    ) -> Result<Self> {
        let infos = set
            .params
            .iter()
            .map(|p| ParamInfo::new(p.data.len(), p.role))
            .collect();
        Self::new(backend, config, schedule, infos)
    }

    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// Sets parameter `index`'s learning-rate multiplier.
    pub fn set_lr_scale(&mut self, index: usize, scale: f32) {
        self.params[index].lr_scale = scale;
    }

    /// Updates made so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Zeroes every gradient buffer (start of an accumulation window).
    pub fn zero_grads(backend: &B, grads: &mut [B::Buf]) {
        for g in grads {
            backend.zero(g);
        }
    }

    /// Global L2 norm of `grads * grad_scale`, summed in parameter order.
    pub fn grad_norm(backend: &B, grads: &[B::Buf], grad_scale: f32) -> f64 {
        backend.sum_squares_many(grads).sqrt() * grad_scale.abs() as f64
    }

    /// One update of `params` from the accumulated `grads` (multiplied by
    /// `grad_scale`, e.g. 1/micro-batches), after global-norm clipping.
    /// Skips the update (and says so) when the gradient is not finite.
    pub fn step(
        &mut self,
        backend: &B,
        params: &mut [B::Buf],
        grads: &[B::Buf],
        grad_scale: f32,
    ) -> StepStats {
        assert_eq!(params.len(), self.params.len(), "parameter count");
        assert_eq!(grads.len(), self.params.len(), "gradient count");
        let lr = self.schedule.lr(self.step);
        let grad_norm = Self::grad_norm(backend, grads, grad_scale);
        if !grad_norm.is_finite() {
            return StepStats {
                step: self.step,
                lr,
                grad_norm,
                clip_scale: 1.0,
                skipped: true,
            };
        }
        let clip = self.config.grad_clip as f64;
        let clip_scale = if clip > 0.0 && grad_norm > clip {
            clip / grad_norm
        } else {
            1.0
        };
        self.step += 1;
        for (i, info) in self.params.iter().enumerate() {
            let plr = lr * info.lr_scale as f64;
            let s = AdamWStep {
                lr: plr as f32,
                beta1: self.config.beta1,
                beta2: self.config.beta2,
                eps: self.config.eps,
                weight_decay: if info.decay {
                    self.config.weight_decay
                } else {
                    0.0
                },
                grad_scale: (grad_scale as f64 * clip_scale) as f32,
                step: self.step,
            };
            backend.adamw_update(
                &mut params[i],
                &grads[i],
                &mut self.m[i],
                &mut self.v[i],
                &s,
            );
        }
        if let Some(a) = &mut self.average {
            let t = self.step as f32;
            let d = a.decay.min((1.0 + t) / (10.0 + t));
            // avg = (1 - d) (avg d / (1 - d) + w), from the ops every
            // backend has; d / (1 - d) is at most 1e4 for decay 0.9999.
            for (avg, w) in a.bufs.iter_mut().zip(params.iter()) {
                backend.scale(avg, d / (1.0 - d));
                backend.add_assign(avg, w);
                backend.scale(avg, 1.0 - d);
            }
        }
        StepStats {
            step: self.step,
            lr,
            grad_norm,
            clip_scale,
            skipped: false,
        }
    }

    /// A plain-data copy of the state, for a checkpoint.
    pub fn state(&self, backend: &B) -> Result<AdamWState> {
        Ok(AdamWState {
            step: self.step,
            m: self
                .m
                .iter()
                .map(|b| backend.download(b))
                .collect::<Result<_>>()?,
            v: self
                .v
                .iter()
                .map(|b| backend.download(b))
                .collect::<Result<_>>()?,
            average: match &self.average {
                Some(a) => a
                    .bufs
                    .iter()
                    .map(|b| backend.download(b))
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            },
        })
    }

    /// Restores a state saved by [`AdamW::state`] for the same parameters.
    pub fn load_state(&mut self, backend: &B, state: &AdamWState) -> Result<()> {
        ensure!(
            state.m.len() == self.params.len() && state.v.len() == self.params.len(),
            "optimizer state has {} parameters, the model {}",
            state.m.len(),
            self.params.len()
        );
        for (i, info) in self.params.iter().enumerate() {
            ensure!(
                state.m[i].len() == info.len && state.v[i].len() == info.len,
                "optimizer state for parameter {i} has the wrong size"
            );
        }
        for i in 0..self.params.len() {
            backend.write(&mut self.m[i], &state.m[i])?;
            backend.write(&mut self.v[i], &state.v[i])?;
        }
        if let Some(a) = &mut self.average {
            // A checkpoint from before the run kept an average has none:
            // the average then starts from the initialisation it was given.
            if !state.average.is_empty() {
                ensure!(
                    state.average.len() == a.bufs.len()
                        && state
                            .average
                            .iter()
                            .zip(&self.params)
                            .all(|(w, p)| w.len() == p.len),
                    "the checkpoint's averaged weights do not match the model"
                );
                for (b, w) in a.bufs.iter_mut().zip(&state.average) {
                    backend.write(b, w)?;
                }
            }
        }
        self.step = state.step;
        Ok(())
    }
}
