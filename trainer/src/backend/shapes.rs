//! The plain descriptors backend ops take besides buffers: sizes
//! ([`Linear`], [`Attention`], [`LayerNorm`], [`Logits`], [`SsmDims`],
//! [`SsmShape`]), the SSM's [`Direction`], per-call hyper-parameters
//! ([`AdamWStep`]), results ([`CrossEntropy`]), and the bundles that keep
//! an op's related buffers together ([`WeightBias`], [`NormSaved`],
//! [`SsmParams`], [`SsmConv`], [`SsmFilterGrads`]), generic over the
//! buffer type so that kernels take them over slices.
//!
//! Kernels and models both name these, so they sit below both: this module
//! holds data and the arithmetic on its own fields, no buffer and no op.

/// Sizes of `out[rows, out_dim] = inp[rows, in_dim] * weight[out_dim, in_dim]^T (+ bias[out_dim])`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub rows: usize,
    pub in_dim: usize,
    pub out_dim: usize,
}

/// Sizes of causal multi-head self-attention over `batch` independent
/// sequences of `seq` positions each, `width` channels split into `heads`
/// heads of `width / heads` channels.
///
/// MEGABYTE's global model is `{ batch: B, seq: K, width: P*D_G, .. }`; its
/// local model is `{ batch: B*K, seq: P, width: D_L, .. }` on the same
/// row-major layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attention {
    pub batch: usize,
    pub seq: usize,
    pub width: usize,
    pub heads: usize,
}

impl Attention {
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }
}

/// What [`Backend::cross_entropy`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropy {
    /// Mean negative log-likelihood over the counted positions, in nats
    /// (0 when none counted). Bits per byte = `loss / ln 2`.
    pub loss: f64,
    /// How many positions counted: the sum of the mask (rows without one).
    pub count: f64,
}

/// One AdamW update's hyper-parameters, for [`Backend::adamw_update`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate of this step (schedule and per-parameter scale applied).
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay (0 for parameters that are not decayed).
    pub weight_decay: f32,
    /// Multiplies the stored gradient before use: 1/micro-batches times the
    /// clipping factor.
    pub grad_scale: f32,
    /// 1-based index of this update (for the bias corrections).
    pub step: u64,
}

impl AdamWStep {
    /// `1 - beta1^step` and `1 - beta2^step`, computed in f64.
    pub fn bias_corrections(&self) -> (f64, f64) {
        let t = self.step.min(i32::MAX as u64) as i32;
        (
            1.0 - (self.beta1 as f64).powi(t),
            1.0 - (self.beta2 as f64).powi(t),
        )
    }
}

/// Sizes of one SSM's parameters: `a, w [kernels, modes]`,
/// `c [kernels, modes, 2]` as (re, im), `log_dt, d [kernels]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsmDims {
    pub kernels: usize,
    pub modes: usize,
}

/// Sizes of an SSM application: `batch` sequences of `seq` rows of `width`
/// channels (`[batch * seq, width]` row-major), the channels split evenly
/// among `kernels` kernels. Kernel buffers are `[kernels, seq]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsmShape {
    pub batch: usize,
    pub seq: usize,
    pub width: usize,
    pub kernels: usize,
}

/// Which way information flows along the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Left to right: `y[t]` depends on `u[0..=t]`.
    Forward,
    /// Right to left: `y[t]` depends on `u[t..len]`, the forward SSM on the
    /// reversed (unpadded) sequence.
    Backward,
}

impl Direction {
    /// The row (within its sequence) of logical step `t` of a sequence of
    /// real length `len`: both directions become a causal scan in steps.
    #[inline]
    pub(crate) fn row(self, t: usize, len: usize) -> usize {
        match self {
            Direction::Forward => t,
            Direction::Backward => len - 1 - t,
        }
    }
}

/// A LayerNorm over the last dimension of `[rows, width]`, `eps` added to
/// the variance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNorm {
    pub rows: usize,
    pub width: usize,
    pub eps: f32,
}

/// A weight and a bias (`bias` may be an `Option`), or their gradients.
#[derive(Debug)]
pub struct WeightBias<W, B = W> {
    pub weight: W,
    pub bias: B,
}

/// What a LayerNorm's backward reads: the forward's input and weight, and
/// the per-row `mean[rows]` and `rstd[rows]` it saved.
#[derive(Debug)]
pub struct NormSaved<'a, B: ?Sized> {
    pub inp: &'a B,
    pub weight: &'a B,
    pub mean: &'a B,
    pub rstd: &'a B,
}

/// One SSM's kernel parameters `a, w [kernels, modes]`,
/// `c [kernels, modes, 2]` as (re, im) and `log_dt [kernels]`, or their
/// gradients.
#[derive(Debug)]
pub struct SsmParams<T> {
    pub a: T,
    pub w: T,
    pub c: T,
    pub log_dt: T,
}

/// An SSM convolution's operands: input `u [batch * seq, width]`, kernel
/// `[kernels, seq]`, skip weights `d [kernels]` and the real length of each
/// sequence.
#[derive(Debug)]
pub struct SsmConv<'a, B: ?Sized, I: ?Sized> {
    pub u: &'a B,
    pub kernel: &'a B,
    pub d: &'a B,
    pub lengths: &'a I,
}

/// The gradients of an SSM convolution's kernel `[kernels, seq]` and skip
/// weights `[kernels]`.
#[derive(Debug)]
pub struct SsmFilterGrads<'a, B: ?Sized> {
    pub kernel: &'a mut B,
    pub d: &'a mut B,
}

/// Sizes of a cross-entropy: `rows` rows of `classes` logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logits {
    pub rows: usize,
    pub classes: usize,
}
