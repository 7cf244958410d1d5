//! Compute backends: the small set of operations the model code is built
//! from, each with a forward and a hand-written backward (llm.c style), and
//! the device memory they run on.
//!
//! Model code is generic over [`Backend`]. It allocates every activation,
//! parameter, gradient and optimizer-state buffer through the backend once,
//! up front, and then only calls ops on those handles, so it never touches
//! the raw memory of a particular device. [`cpu::CpuBackend`] keeps buffers
//! as `Vec<T>` (f32 for training, f64 for gradient checks); a CUDA backend
//! keeps device buffers and implements the same trait.
//!
//! # Conventions (every backend follows them)
//!
//! - Activations are row-major `[rows, width]` and buffers are flat: a
//!   `[B*T, P*D]` buffer is also a `[B*T*P, D]` one. Ops take their sizes as
//!   arguments and work on the first elements of each buffer, so buffers
//!   sized for the largest batch serve smaller ones; they panic when a
//!   buffer is too small (a programming error).
//! - Linear weights are `[out, in]`, as `.kbm` files store them.
//! - **Every backward op adds into its gradient outputs** (`+=`), both for
//!   parameters and for inputs. The caller zeroes gradient buffers before a
//!   step (parameter gradients once per optimizer step, so micro-batches
//!   accumulate; activation gradients once per backward pass). This makes
//!   residual branches, tied embeddings and gradient accumulation free.
//! - Forward ops overwrite their outputs (unless documented otherwise).
//! - Results are deterministic: the same inputs give bit-identical outputs
//!   on every run (reductions run in a fixed order, independent of thread
//!   scheduling), which the kill-and-resume tests depend on.
//! - Memory operations return errors (a device can run out of memory);
//!   compute ops do not: a backend panics on a device failure, as there is
//!   nothing the training loop could do about one.
//! - Scalars (eps, scales, learning rates) are passed as f32; byte/token ids
//!   and targets as u32 in [`Backend::Ids`] buffers; masks and per-position
//!   weights as ordinary float buffers (1.0 counts, 0.0 does not).

pub mod conformance;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod shapes;

pub use cpu::CpuBackend;
pub use shapes::{
    AdamWStep, Attention, CrossEntropy, Direction, LayerNorm, Linear, Logits, NormSaved, SsmConv,
    SsmDims, SsmFilterGrads, SsmParams, SsmShape, WeightBias,
};

/// How a CUDA run computes its matrix products (see [`cuda`]); other ops,
/// master weights and optimizer state are fp32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// bf16 operands, fp32 accumulation (the GPU default).
    Bf16,
    /// fp32 with TF32 disabled, for parity with the CPU.
    Fp32,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Bf16 => "bf16",
            Precision::Fp32 => "fp32",
        }
    }
}

/// Where a run computes. Not stored with the run: a run started on one
/// device resumes on either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(Precision),
}

/// Runs `$body` with `$be` bound to a reference to the backend `$device`
/// names (each arm type-checks the body for its own backend type). Returns
/// early with an error when the device cannot be opened.
#[macro_export]
macro_rules! with_backend {
    ($device:expr, |$be:ident| $body:expr) => {
        match $device {
            $crate::backend::Device::Cpu => {
                let backend = $crate::backend::CpuBackend::<f32>::new();
                let $be = &backend;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::Device::Cuda(precision) => {
                let backend = $crate::backend::cuda::open(precision)?;
                let $be = &backend;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::backend::Device::Cuda(_) => {
                anyhow::bail!("--device cuda: this kilobyte was built without the `cuda` feature; use --device cpu")
            }
        }
    };
}

use anyhow::Result;

/// A compute device: memory plus the ops the models are built from.
///
/// See the [module documentation](self) for the conventions: row-major
/// activations, `[out, in]` weights, backward ops that accumulate.
pub trait Backend: Send + Sync {
    /// A float buffer on the device (CPU: `Vec<T>`).
    type Buf: Send + Sync;
    /// A u32 buffer on the device (byte ids, positions, targets).
    type Ids: Send + Sync;

    /// A short description, e.g. "cpu f32 (2 threads)".
    fn name(&self) -> String;

    // ---- memory ----------------------------------------------------------

    /// A zeroed buffer of `len` elements.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding `host`.
    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    /// A buffer holding `host` (f64 values are rounded to the element type).
    fn upload_f64(&self, host: &[f64]) -> Result<Self::Buf> {
        let v: Vec<f32> = host.iter().map(|&x| x as f32).collect();
        self.upload(&v)
    }
    /// Overwrites the first `host.len()` elements of `buf`.
    fn write(&self, buf: &mut Self::Buf, host: &[f32]) -> Result<()>;
    /// Overwrites the first `host.len()` elements of `buf`.
    fn write_f64(&self, buf: &mut Self::Buf, host: &[f64]) -> Result<()> {
        let v: Vec<f32> = host.iter().map(|&x| x as f32).collect();
        self.write(buf, &v)
    }
    /// The buffer's contents as f32.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// The buffer's contents as f64 (exact for every element type).
    fn download_f64(&self, buf: &Self::Buf) -> Result<Vec<f64>> {
        Ok(self.download(buf)?.into_iter().map(f64::from).collect())
    }
    fn len(&self, buf: &Self::Buf) -> usize;

    fn upload_ids(&self, host: &[u32]) -> Result<Self::Ids>;
    /// Overwrites the first `host.len()` ids.
    fn write_ids(&self, ids: &mut Self::Ids, host: &[u32]) -> Result<()>;
    fn ids_len(&self, ids: &Self::Ids) -> usize;

    /// The device's peak dense bf16 rate in FLOP/s, when known: the
    /// denominator of the model FLOPs utilisation in the metrics log.
    fn peak_flops(&self) -> Option<f64> {
        None
    }

    /// Waits until all queued work is done (a no-op on the CPU).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    // ---- whole-buffer arithmetic ----------------------------------------

    /// `buf = 0`.
    fn zero(&self, buf: &mut Self::Buf);
    /// `buf[..n] = 0`: buffers sized for the largest batch, used by a
    /// smaller one, need only their first `n` elements cleared.
    fn zero_prefix(&self, buf: &mut Self::Buf, n: usize);
    /// `dst[..src.len()] = src`.
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf);
    /// `buf *= s`.
    fn scale(&self, buf: &mut Self::Buf, s: f32);
    /// `dst += src` (lengths equal).
    fn add_assign(&self, dst: &mut Self::Buf, src: &Self::Buf);
    /// Sum of squares of all elements, accumulated in f64 in a fixed order.
    fn sum_squares(&self, buf: &Self::Buf) -> f64;
    /// Sum of squares over several buffers, added in the given order (the
    /// global gradient norm; a device backend can answer with one read-back).
    fn sum_squares_many(&self, bufs: &[Self::Buf]) -> f64 {
        bufs.iter().map(|b| self.sum_squares(b)).sum()
    }

    // ---- ops --------------------------------------------------------------

    /// `out = inp * weight^T (+ bias)`, sizes `d`.
    fn matmul_forward(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        weight: &Self::Buf,
        bias: Option<&Self::Buf>,
        d: Linear,
    );
    /// `dinp += dout * weight`, `dweight += dout^T * inp`, `dbias += column
    /// sums of dout`. `dinp` may be `None` when the input needs no gradient.
    fn matmul_backward(
        &self,
        dinp: Option<&mut Self::Buf>,
        dparams: WeightBias<&mut Self::Buf, Option<&mut Self::Buf>>,
        dout: &Self::Buf,
        inp: &Self::Buf,
        weight: &Self::Buf,
        d: Linear,
    );

    /// LayerNorm over the last dimension of `inp[rows, width]`:
    /// `out = (inp - mean) * rstd * weight + bias`, with
    /// `rstd = 1/sqrt(var + eps)` (biased variance). Saves `mean[rows]` and
    /// `rstd[rows]` for the backward pass.
    fn layernorm_forward(
        &self,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        inp: &Self::Buf,
        params: WeightBias<&Self::Buf>,
        n: LayerNorm,
    );
    /// Adds `dinp`, `dparams` (weight and bias) given `dout` and what the
    /// forward saw and saved (`n.eps` is not used).
    fn layernorm_backward(
        &self,
        dinp: &mut Self::Buf,
        dparams: WeightBias<&mut Self::Buf>,
        dout: &Self::Buf,
        saved: NormSaved<'_, Self::Buf>,
        n: LayerNorm,
    );

    /// `out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` elementwise.
    fn gelu_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, n: usize);
    fn gelu_backward(&self, dinp: &mut Self::Buf, inp: &Self::Buf, dout: &Self::Buf, n: usize);

    /// `out = tanh(inp)` elementwise.
    fn tanh_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, n: usize);
    /// Uses the forward's output: `dinp += dout * (1 - out^2)`.
    fn tanh_backward(&self, dinp: &mut Self::Buf, out: &Self::Buf, dout: &Self::Buf, n: usize);

    /// `out = a + b` elementwise (residual connections).
    fn add_forward(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, n: usize);
    /// `da += dout`, `db += dout`.
    fn add_backward(&self, da: &mut Self::Buf, db: &mut Self::Buf, dout: &Self::Buf, n: usize);

    /// `out = a * b` elementwise (BiGS gates).
    fn mul_forward(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, n: usize);
    /// `da += dout * b`, `db += dout * a`.
    fn mul_backward(
        &self,
        da: &mut Self::Buf,
        db: &mut Self::Buf,
        dout: &Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        n: usize,
    );

    /// `out[r, :] = inp[r, :] + bias` for `rows` rows of `width`.
    /// ([`Backend::matmul_forward`] also takes a bias, fused.)
    fn bias_forward(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        bias: &Self::Buf,
        rows: usize,
        width: usize,
    );
    /// `dinp += dout` (when given), `dbias += column sums of dout`.
    fn bias_backward(
        &self,
        dinp: Option<&mut Self::Buf>,
        dbias: &mut Self::Buf,
        dout: &Self::Buf,
        rows: usize,
        width: usize,
    );

    /// Row gather: `out[i, :] = table[ids[i], :]` for `i < rows`, each row
    /// `width` wide; with `accumulate`, `out[i, :] += table[ids[i], :]`
    /// instead (token plus position embedding in one pass).
    /// Panics on an id outside the table.
    fn embedding_forward(
        &self,
        out: &mut Self::Buf,
        table: &Self::Buf,
        ids: &Self::Ids,
        rows: usize,
        width: usize,
        accumulate: bool,
    );
    /// Scatter-add: `dtable[ids[i], :] += dout[i, :]` (repeated ids add up).
    fn embedding_backward(
        &self,
        dtable: &mut Self::Buf,
        dout: &Self::Buf,
        ids: &Self::Ids,
        rows: usize,
        width: usize,
    );

    /// Shifts each of `seqs` sequences of `len` rows right by one row and puts
    /// the learned `pad[width]` in front: `out[s, 0] = pad`,
    /// `out[s, t] = inp[s, t-1]`; each sequence's last input row is dropped.
    /// MEGABYTE's global input is this over (B, K, P*D_G) patch vectors and
    /// its local byte input this over (B*K, P, D_L) byte embeddings.
    fn shift_forward(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        pad: &Self::Buf,
        seqs: usize,
        len: usize,
        width: usize,
    );
    /// `dinp[s, t-1] += dout[s, t]`, `dpad += sum over s of dout[s, 0]`.
    fn shift_backward(
        &self,
        dinp: &mut Self::Buf,
        dpad: &mut Self::Buf,
        dout: &Self::Buf,
        seqs: usize,
        len: usize,
        width: usize,
    );

    /// How many elements the `saved` buffer of the attention ops needs.
    fn attention_saved_len(&self, a: Attention) -> usize;
    /// Causal multi-head self-attention. `qkv[rows, 3*width]` holds q in
    /// columns `0..width`, k in `width..2*width`, v in `2*width..3*width`;
    /// head `h` uses columns `h*hd..(h+1)*hd` of each, `hd = width/heads`.
    /// Position `t` of a sequence attends to positions `0..=t` of the same
    /// sequence, scores scaled by `1/sqrt(hd)`. Writes `out[rows, width]`
    /// (heads side by side) and whatever the backward pass needs to `saved`.
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        saved: &mut Self::Buf,
        qkv: &Self::Buf,
        a: Attention,
    );
    /// `dqkv += d(out)/d(qkv)^T dout`, using the forward's `qkv` and `saved`.
    fn attention_backward(
        &self,
        dqkv: &mut Self::Buf,
        dout: &Self::Buf,
        qkv: &Self::Buf,
        saved: &Self::Buf,
        a: Attention,
    );

    /// Mean over the counted positions of each of `batch` sequences of `seq`
    /// rows: `out[b, :] = sum_t mask[b, t] inp[b, t, :] / sum_t mask[b, t]`
    /// (0 for a sequence with nothing counted). BiGS's classifier pooling.
    fn mean_pool_forward(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        mask: &Self::Buf,
        batch: usize,
        seq: usize,
        width: usize,
    );
    fn mean_pool_backward(
        &self,
        dinp: &mut Self::Buf,
        dout: &Self::Buf,
        mask: &Self::Buf,
        batch: usize,
        seq: usize,
        width: usize,
    );

    /// BiGS SSM kernels (see [`cpu::ssm`]): overwrites
    /// `kernel[kernels, len]` with `Re(sum_n C_n Bbar_n Abar_n^l)` from the
    /// parameters `p`.
    fn ssm_kernel_forward(
        &self,
        kernel: &mut Self::Buf,
        p: SsmParams<&Self::Buf>,
        dims: SsmDims,
        len: usize,
    );
    /// Adds the parameters' gradients `dp` given `dkernel[kernels, len]`.
    fn ssm_kernel_backward(
        &self,
        dp: SsmParams<&mut Self::Buf>,
        dkernel: &Self::Buf,
        p: SsmParams<&Self::Buf>,
        dims: SsmDims,
        len: usize,
    );
    /// `y = kernel conv u + d u` per channel along each sequence, in
    /// direction `dir`, over the first `lengths[b]` rows of sequence `b`
    /// (the rest of `y` is zeroed and `u` there is never read, so padding
    /// cannot leak). Overwrites `y[batch * seq, width]`.
    fn ssm_conv_forward(
        &self,
        y: &mut Self::Buf,
        x: SsmConv<'_, Self::Buf, Self::Ids>,
        s: SsmShape,
        dir: Direction,
    );
    /// Adds `du` (real rows only), `dfilter.kernel[kernels, seq]` and
    /// `dfilter.d[kernels]`.
    fn ssm_conv_backward(
        &self,
        du: &mut Self::Buf,
        dfilter: SsmFilterGrads<'_, Self::Buf>,
        dy: &Self::Buf,
        x: SsmConv<'_, Self::Buf, Self::Ids>,
        s: SsmShape,
        dir: Direction,
    );

    /// Softmax cross-entropy of `logits[l.rows, l.classes]` against
    /// `targets[l.rows]` (every id in `0..l.classes` is an ordinary class, byte 0 included),
    /// averaged over the rows where `mask` is non-zero (weighted by it; all
    /// rows without a mask). When `dlogits` is given it is **overwritten**
    /// with `grad_scale * d(mean loss)/d(logits)`: `(softmax - onehot) *
    /// mask / count * grad_scale`, 0 on rows that do not count. The
    /// forward and the logits gradient are fused: nothing is saved.
    fn cross_entropy(
        &self,
        logits: &Self::Buf,
        targets: &Self::Ids,
        mask: Option<&Self::Buf>,
        dlogits: Option<&mut Self::Buf>,
        l: Logits,
        grad_scale: f32,
    ) -> CrossEntropy;

    /// One AdamW update of `param` from `grad` (scaled by `s.grad_scale`),
    /// in the element type (f32 master weights and state in training):
    /// `p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr * (m/bc1) / (sqrt(v/bc2) + eps)`.
    fn adamw_update(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        s: &AdamWStep,
    );
}

#[cfg(test)]
mod tests;
