//! The BiGS encoder: its arena layout and the bidirectional forward pass
//! over one input of up to T_max bytes, with the classification and
//! masked-byte heads (classification reads a longer text window by window).
//!
//! Inputs are processed at their exact length (no padding on the device).
//! The SSMs run as direct causal convolutions whose kernels `K[l]`
//! (l < max_len) are computed once, when the encoder is created, into the
//! arena: a kernel does not depend on the input, and for the lengths an
//! encoder sees (hundreds of bytes) the convolution, one multiply-add per
//! (position, lag) pair and channel with each output row held in registers
//! ([`kernels::mix`]), beats the recurrence's `N`
//! complex multiply-adds per channel and position (N = 32..64 modes) until
//! the input is several times longer than N.
//!
//! Cost per byte is dominated by the dense layers, which run through the
//! shared kernels (SIMD, quantised weights) over all positions at once.
//!
//! Owns: the arena (all working memory, its regions listed once as
//! [`EncoderLayout`], which [`Bigs::layout`] counts, [`Bigs::arena_bytes`]
//! sums and the encoder carves) and the order of operations. Must not
//! touch: the weights (borrowed, read-only, from `Bigs`) or the SSM math
//! (`ssm.rs`).

use super::ssm::{ssm_conv, ssm_kernel};
use super::{first_rows, Bigs, Linear, MlmHead};
use crate::arena::{arena_layout, Arena, ARENA_SLACK};
use crate::error::RuntimeError;
use crate::kernels;
use kilobyte_format::config::{BIGS_MASK, BIGS_VOCAB};
use kilobyte_format::dtype::QK;
use kilobyte_format::{BigsConfig, BlockQ8};

arena_layout! {
    /// Elements in each region of an encoder's arena, in the order they lie
    /// there ([`Bigs::layout`]).
    pub struct EncoderLayout, EncoderMem {
        /// The SSM kernels, `[layer][direction][kernel][max_len]`, with D
        /// added to each lag-0 tap and the forward ones reversed (see
        /// `ssm_conv`).
        kernels: f32,
        /// Per-position activations, `[max_len][d_model]`.
        x: f32,
        z: f32,
        f: f32,
        b: f32,
        sf: f32,
        sb: f32,
        /// Per-position expanded activations, `[max_len][d_expand]`.
        v: f32,
        h: f32,
        /// An embedding row.
        row: f32,
        /// The heads' vectors.
        pooled: f32,
        hidden: f32,
        normed: f32,
        byte_logits: f32,
        class_logits: f32,
        probs: f32,
        /// Quantised activations for the q8/q4 matrix products.
        scratch: BlockQ8,
    }
}

impl<'m> Bigs<'m> {
    /// The element count of every region of an encoder's arena for inputs
    /// of up to `max_len` bytes (all empty when `max_len` is 0 or longer
    /// than T_max). Its [`EncoderLayout::bytes`] is the size of an [`Arena`]
    /// for [`Bigs::encoder_in`].
    pub const fn layout(config: &BigsConfig, max_len: usize) -> EncoderLayout {
        if max_len == 0 || max_len > config.max_seq as usize {
            return EncoderLayout::EMPTY;
        }
        let d = config.d_model as usize;
        let e = config.d_expand as usize;
        let classes = if config.n_classes > 1 {
            config.n_classes as usize
        } else {
            1
        };
        let widest = if e > d { e } else { d };
        EncoderLayout {
            kernels: config.layers as usize * 2 * config.ssm_kernels as usize * max_len,
            x: max_len * d,
            z: max_len * d,
            f: max_len * d,
            b: max_len * d,
            sf: max_len * d,
            sb: max_len * d,
            v: max_len * e,
            h: max_len * e,
            row: d,
            pooled: d,
            hidden: d,
            normed: d,
            byte_logits: 256,
            class_logits: classes,
            probs: classes,
            scratch: max_len * widest / QK + 1,
        }
    }

    /// Exact arena bytes for inputs of up to `max_len` bytes, for a buffer
    /// of any alignment (0 when `max_len` is 0 or longer than T_max): the
    /// layout plus [`ARENA_SLACK`]. A `const fn`, so a `static` buffer can
    /// be sized at compile time.
    pub const fn arena_bytes(config: &BigsConfig, max_len: usize) -> usize {
        if max_len == 0 || max_len > config.max_seq as usize {
            return 0;
        }
        ARENA_SLACK + Self::layout(config, max_len).bytes()
    }

    /// An encoder for inputs of up to `max_len` bytes in `arena`, with the
    /// SSM kernels computed. `arena` needs [`Bigs::arena_bytes`] bytes.
    pub fn encoder<'a>(
        &'a self,
        arena: &'a mut [u8],
        max_len: usize,
    ) -> Result<Encoder<'a, 'm>, RuntimeError> {
        Encoder::carve(self, arena, ARENA_SLACK, max_len)
    }

    /// [`Bigs::encoder`] in an aligned arena, which needs only
    /// `Bigs::layout(&config, max_len).bytes()` bytes.
    pub fn encoder_in<'a, const N: usize>(
        &'a self,
        arena: &'a mut Arena<N>,
        max_len: usize,
    ) -> Result<Encoder<'a, 'm>, RuntimeError> {
        Encoder::carve(self, arena.bytes_mut(), 0, max_len)
    }
}

/// Runs the encoder; all memory is the arena given to [`Bigs::encoder`].
pub struct Encoder<'a, 'm> {
    model: &'a Bigs<'m>,
    max_len: usize,
    /// Length of the last encoded input.
    len: usize,
    mem: EncoderMem<'a>,
}

/// A classification result, borrowing the encoder's arena.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Classification<'e> {
    /// The most probable class.
    pub class: usize,
    /// Softmax probabilities of every class.
    pub probs: &'e [f32],
}

/// Index of the largest value (the first on ties).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// `out = x W^T + b` for `n` rows.
fn linear_rows(
    l: &Linear<'_>,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut [BlockQ8],
) -> Result<(), RuntimeError> {
    kernels::matmul(&l.weight, x, out, scratch)?;
    for row in out.chunks_exact_mut(l.weight.rows) {
        kernels::add(row, l.bias)?;
    }
    Ok(())
}

impl<'a, 'm> Encoder<'a, 'm> {
    /// Needs the layout plus `slack` bytes for aligning the start of `arena`.
    fn carve(
        model: &'a Bigs<'m>,
        arena: &'a mut [u8],
        slack: usize,
        max_len: usize,
    ) -> Result<Self, RuntimeError> {
        if max_len == 0 || max_len > model.config.max_seq as usize {
            return Err(RuntimeError::BadContext {
                requested: max_len,
                reason: "the encoder's max_len must be between 1 and T_max",
            });
        }
        let layout = Bigs::layout(&model.config, max_len);
        let needed = slack + layout.bytes();
        let given = arena.len();
        let too_small = RuntimeError::ArenaTooSmall { needed, given };
        if given < needed {
            return Err(too_small);
        }
        let mem = EncoderMem::carve(&layout, arena).ok_or(too_small)?;
        let mut enc = Encoder {
            model,
            max_len,
            len: 0,
            mem,
        };
        enc.build_kernels();
        Ok(enc)
    }

    fn build_kernels(&mut self) {
        let c = &self.model.config;
        let (k, modes) = (c.ssm_kernels as usize, c.n_modes as usize);
        let per_layer = 2 * k * self.max_len;
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (dir, s) in [&layer.fwd, &layer.bwd].into_iter().enumerate() {
                for g in 0..k {
                    let at = i * per_layer + (dir * k + g) * self.max_len;
                    let kernel = &mut self.mem.kernels[at..at + self.max_len];
                    ssm_kernel(s, g, modes, kernel);
                    // The skip term D u[t] rides on the lag-0 tap, and the
                    // forward convolution reads its kernel backwards.
                    kernel[0] += s.d[g];
                    if dir == 0 {
                        kernel.reverse();
                    }
                }
            }
        }
    }

    /// The longest input this encoder takes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Runs the encoder over `ids` (bytes, or `BIGS_MASK` at gaps); leaves
    /// the final normalised states in `z`.
    fn encode(&mut self, ids: impl Fn(usize) -> u32, n: usize) -> Result<(), RuntimeError> {
        if n == 0 {
            return Err(RuntimeError::BadContext {
                requested: 0,
                reason: "the input is empty",
            });
        }
        if n > self.max_len {
            return Err(RuntimeError::BadContext {
                requested: n,
                reason: "the input is longer than the encoder's max_len",
            });
        }
        let m = self.model;
        let c = &m.config;
        let (d, e) = (c.d_model as usize, c.d_expand as usize);
        let eps = c.norm_eps;
        let k = c.ssm_kernels as usize;
        for t in 0..n {
            let id = ids(t);
            if id >= BIGS_VOCAB {
                return Err(RuntimeError::BadContext {
                    requested: n,
                    reason: "an input id is outside the model's vocabulary",
                });
            }
            // token + n-grams + position, in the trainer's order.
            let x = &mut self.mem.z[t * d..(t + 1) * d];
            kernels::scalar::embedding_row(&m.tok, id as usize, x)?;
            m.ngram.add_rows(t, &ids, x, self.mem.row)?;
            kernels::scalar::embedding_row(&m.pos, t, self.mem.row)?;
            kernels::add(x, self.mem.row)?;
            kernels::layer_norm(
                x,
                m.emb_ln_weight,
                m.emb_ln_bias,
                eps,
                &mut self.mem.x[t * d..(t + 1) * d],
            )?;
        }
        let (nd, ne) = (n * d, n * e);
        let per_layer = 2 * k * self.max_len;
        for (i, l) in m.layers.iter().enumerate() {
            for t in 0..n {
                let r = t * d..(t + 1) * d;
                kernels::layer_norm(
                    &self.mem.x[r.clone()],
                    l.ln_weight,
                    l.ln_bias,
                    eps,
                    &mut self.mem.z[r],
                )?;
            }
            let z = &self.mem.z[..nd];
            linear_rows(&l.v, z, &mut self.mem.v[..ne], self.mem.scratch)?;
            kernels::gelu_tanh(&mut self.mem.v[..ne]);
            linear_rows(&l.f, z, &mut self.mem.f[..nd], self.mem.scratch)?;
            kernels::gelu_tanh(&mut self.mem.f[..nd]);
            linear_rows(&l.b, z, &mut self.mem.b[..nd], self.mem.scratch)?;
            kernels::gelu_tanh(&mut self.mem.b[..nd]);
            let kern = &self.mem.kernels[i * per_layer..(i + 1) * per_layer];
            let (kf, kb) = kern.split_at(k * self.max_len);
            ssm_conv(
                kf,
                self.max_len,
                l.fwd.d.len(),
                &self.mem.f[..nd],
                &mut self.mem.sf[..nd],
                n,
                d,
                false,
            )?;
            ssm_conv(
                kb,
                self.max_len,
                l.bwd.d.len(),
                &self.mem.b[..nd],
                &mut self.mem.sb[..nd],
                n,
                d,
                true,
            )?;
            // Uf into f, Ub into b, then their product (the gate) in f.
            linear_rows(
                &l.uf,
                &self.mem.sf[..nd],
                &mut self.mem.f[..nd],
                self.mem.scratch,
            )?;
            linear_rows(
                &l.ub,
                &self.mem.sb[..nd],
                &mut self.mem.b[..nd],
                self.mem.scratch,
            )?;
            kernels::mul(&mut self.mem.f[..nd], &self.mem.b[..nd])?;
            linear_rows(
                &l.l,
                &self.mem.f[..nd],
                &mut self.mem.h[..ne],
                self.mem.scratch,
            )?;
            kernels::gelu_tanh(&mut self.mem.h[..ne]);
            kernels::mul(&mut self.mem.h[..ne], &self.mem.v[..ne])?;
            linear_rows(
                &l.o,
                &self.mem.h[..ne],
                &mut self.mem.z[..nd],
                self.mem.scratch,
            )?;
            kernels::add(&mut self.mem.x[..nd], &self.mem.z[..nd])?;
        }
        for t in 0..n {
            let r = t * d..(t + 1) * d;
            kernels::layer_norm(
                &self.mem.x[r.clone()],
                m.ln_f_weight,
                m.ln_f_bias,
                eps,
                &mut self.mem.z[r],
            )?;
        }
        self.len = n;
        Ok(())
    }

    /// The class logits of `text` (before the softmax), for parity checks.
    /// A text longer than T_max is read in the windows of
    /// [`super::text_windows`], which needs an encoder of `max_len` = T_max;
    /// a smaller encoder takes texts up to its `max_len`.
    pub fn class_logits(&mut self, text: &[u8]) -> Result<&[f32], RuntimeError> {
        let head = self.model.classifier.ok_or(RuntimeError::MissingHead {
            head: "classification",
        })?;
        if text.is_empty() {
            return Err(RuntimeError::BadContext {
                requested: 0,
                reason: "the input is empty",
            });
        }
        let d = self.model.config.d_model as usize;
        self.mem.pooled.fill(0.0);
        for w in super::text_windows(text.len(), self.model.config.max_seq as usize) {
            let window = &text[w];
            self.encode(|t| window[t] as u32, window.len())?;
            for t in 0..self.len {
                kernels::add(self.mem.pooled, &self.mem.z[t * d..(t + 1) * d])?;
            }
        }
        kernels::scale(self.mem.pooled, 1.0 / text.len() as f32);
        linear_rows(
            &head.dense,
            self.mem.pooled,
            self.mem.hidden,
            self.mem.scratch,
        )?;
        for v in self.mem.hidden.iter_mut() {
            *v = libm::tanhf(*v);
        }
        let classes = self.model.config.n_classes as usize;
        let logits = &mut self.mem.class_logits[..classes];
        linear_rows(&head.out, self.mem.hidden, logits, self.mem.scratch)?;
        if let Some(bag) = &self.model.head_ngram {
            bag.add(text, self.model.config.max_seq as usize, logits)?;
        }
        Ok(&self.mem.class_logits[..classes])
    }

    /// The most probable class of `text` and every class's probability.
    pub fn classify(&mut self, text: &[u8]) -> Result<Classification<'_>, RuntimeError> {
        let classes = self.class_logits(text)?.len();
        self.mem.probs[..classes].copy_from_slice(&self.mem.class_logits[..classes]);
        kernels::softmax(&mut self.mem.probs[..classes]);
        if self.mem.probs[..classes].iter().any(|p| p.is_nan()) {
            return Err(RuntimeError::NotFinite {
                what: "class probabilities",
            });
        }
        let class = argmax(&self.mem.probs[..classes]);
        Ok(Classification {
            class,
            probs: &self.mem.probs[..classes],
        })
    }

    /// The masked-byte head's 256 logits at every position of `ids`
    /// (bytes, or `BIGS_MASK`), handed to `each(position, logits)`.
    pub fn byte_logits(
        &mut self,
        ids: &[u32],
        mut each: impl FnMut(usize, &[f32]),
    ) -> Result<(), RuntimeError> {
        let head = self.model.mlm.ok_or(RuntimeError::MissingHead {
            head: "masked-byte",
        })?;
        self.encode(|t| ids[t], ids.len())?;
        for t in 0..self.len {
            self.position_logits(&head, t)?;
            each(t, self.mem.byte_logits);
        }
        Ok(())
    }

    fn position_logits(&mut self, head: &MlmHead<'_>, t: usize) -> Result<(), RuntimeError> {
        let d = self.model.config.d_model as usize;
        linear_rows(
            &head.dense,
            &self.mem.z[t * d..(t + 1) * d],
            self.mem.hidden,
            self.mem.scratch,
        )?;
        kernels::gelu_tanh(self.mem.hidden);
        kernels::layer_norm(
            self.mem.hidden,
            head.ln_weight,
            head.ln_bias,
            self.model.config.norm_eps,
            self.mem.normed,
        )?;
        let bytes = first_rows(&self.model.tok, 256)?;
        kernels::matvec(
            &bytes,
            self.mem.normed,
            self.mem.byte_logits,
            self.mem.scratch,
        )?;
        Ok(())
    }

    /// Fills the gaps of `text`: `out` receives `text` with every position
    /// where `gaps` is true replaced by the masked-byte head's most likely
    /// byte. All gaps are predicted together in one pass (each from the
    /// text around it with every gap masked).
    pub fn fill(&mut self, text: &[u8], gaps: &[bool], out: &mut [u8]) -> Result<(), RuntimeError> {
        let head = self.model.mlm.ok_or(RuntimeError::MissingHead {
            head: "masked-byte",
        })?;
        if gaps.len() != text.len() || out.len() != text.len() {
            return Err(RuntimeError::BadContext {
                requested: text.len(),
                reason: "text, gaps and out must have the same length",
            });
        }
        self.encode(
            |t| {
                if gaps[t] {
                    BIGS_MASK
                } else {
                    text[t] as u32
                }
            },
            text.len(),
        )?;
        out.copy_from_slice(text);
        for t in 0..text.len() {
            if gaps[t] {
                self.position_logits(&head, t)?;
                out[t] = crate::sampling::argmax(self.mem.byte_logits);
            }
        }
        Ok(())
    }
}
