//! The BiGS encoder: its arena layout and the bidirectional forward pass
//! over one input, with the classification and masked-byte heads.
//!
//! Inputs are processed at their exact length (no padding on the device).
//! The SSMs run as direct causal convolutions whose kernels `K[l]`
//! (l < max_len) are computed once, when the encoder is created, into the
//! arena: a kernel does not depend on the input, and for the lengths an
//! encoder sees (hundreds of bytes) the convolution, one vector `axpy` per
//! (position, lag) pair over the channels, beats the recurrence's `N`
//! complex multiply-adds per channel and position (N = 32..64 modes) until
//! the input is several times longer than N.
//!
//! Cost per byte is dominated by the dense layers, which run through the
//! shared kernels (SIMD, quantised weights) over all positions at once.
//!
//! Owns: the arena (all working memory) and the order of operations. Must
//! not touch: the weights (borrowed, read-only, from `Bigs`) or the SSM
//! math (`ssm.rs`).

use super::ssm::{ssm_conv, ssm_kernel};
use super::{first_rows, Bigs, Linear, MlmHead};
use crate::arena::{f32_region, q8_region, Carver, ARENA_SLACK};
use crate::error::RuntimeError;
use crate::kernels;
use kilobyte_format::config::{BIGS_MASK, BIGS_VOCAB};
use kilobyte_format::dtype::QK;
use kilobyte_format::{BigsConfig, BlockQ8};

impl<'m> Bigs<'m> {
    /// Exact arena bytes for inputs of up to `max_len` bytes (0 when
    /// `max_len` is 0 or longer than T_max). A `const fn`, so firmware can
    /// size a `static` buffer at compile time.
    pub const fn arena_bytes(config: &BigsConfig, max_len: usize) -> usize {
        if max_len == 0 || max_len > config.max_seq as usize {
            return 0;
        }
        let d = config.d_model as usize;
        let e = config.d_expand as usize;
        let layers = config.layers as usize;
        let k = config.ssm_kernels as usize;
        let classes = if config.n_classes > 1 {
            config.n_classes as usize
        } else {
            1
        };
        let widest = if e > d { e } else { d };
        ARENA_SLACK
            + f32_region(layers * 2 * k * max_len) // SSM kernels
            + 6 * f32_region(max_len * d) // x, z, f, b, sf, sb
            + 2 * f32_region(max_len * e) // v, h
            + 4 * f32_region(d) // embedding row, pooled, head hidden, normed
            + f32_region(256) // byte logits
            + 2 * f32_region(classes) // class logits, probabilities
            + q8_region(max_len * widest / QK + 1) // quantised activations
    }

    /// An encoder for inputs of up to `max_len` bytes in `arena`, with the
    /// SSM kernels computed.
    pub fn encoder<'a>(
        &'a self,
        arena: &'a mut [u8],
        max_len: usize,
    ) -> Result<Encoder<'a, 'm>, RuntimeError> {
        let c = &self.config;
        if max_len == 0 || max_len > c.max_seq as usize {
            return Err(RuntimeError::BadContext {
                requested: max_len,
                reason: "the encoder's max_len must be between 1 and T_max",
            });
        }
        let needed = Self::arena_bytes(c, max_len);
        if arena.len() < needed {
            return Err(RuntimeError::ArenaTooSmall {
                needed,
                given: arena.len(),
            });
        }
        let given = arena.len();
        let mut carve = Carver::new(arena).ok_or(RuntimeError::ArenaTooSmall { needed, given })?;
        let (d, e) = (c.d_model as usize, c.d_expand as usize);
        let k = c.ssm_kernels as usize;
        let classes = (c.n_classes as usize).max(1);
        let widest = d.max(e);
        let mut enc = Encoder {
            model: self,
            max_len,
            len: 0,
            kernels: carve.f32s(c.layers as usize * 2 * k * max_len),
            x: carve.f32s(max_len * d),
            z: carve.f32s(max_len * d),
            f: carve.f32s(max_len * d),
            b: carve.f32s(max_len * d),
            sf: carve.f32s(max_len * d),
            sb: carve.f32s(max_len * d),
            v: carve.f32s(max_len * e),
            h: carve.f32s(max_len * e),
            row: carve.f32s(d),
            pooled: carve.f32s(d),
            hidden: carve.f32s(d),
            normed: carve.f32s(d),
            byte_logits: carve.f32s(256),
            class_logits: carve.f32s(classes),
            probs: carve.f32s(classes),
            scratch: carve.q8_blocks(max_len * widest / QK + 1),
        };
        enc.build_kernels();
        Ok(enc)
    }
}

/// Runs the encoder; all memory is the arena given to [`Bigs::encoder`].
pub struct Encoder<'a, 'm> {
    model: &'a Bigs<'m>,
    max_len: usize,
    /// Length of the last encoded input.
    len: usize,
    /// `[layer][direction][kernel][max_len]`.
    kernels: &'a mut [f32],
    x: &'a mut [f32],
    z: &'a mut [f32],
    f: &'a mut [f32],
    b: &'a mut [f32],
    sf: &'a mut [f32],
    sb: &'a mut [f32],
    v: &'a mut [f32],
    h: &'a mut [f32],
    row: &'a mut [f32],
    pooled: &'a mut [f32],
    hidden: &'a mut [f32],
    normed: &'a mut [f32],
    byte_logits: &'a mut [f32],
    class_logits: &'a mut [f32],
    probs: &'a mut [f32],
    scratch: &'a mut [BlockQ8],
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
    fn build_kernels(&mut self) {
        let c = &self.model.config;
        let (k, modes) = (c.ssm_kernels as usize, c.n_modes as usize);
        let per_layer = 2 * k * self.max_len;
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (dir, s) in [&layer.fwd, &layer.bwd].into_iter().enumerate() {
                for g in 0..k {
                    let at = i * per_layer + (dir * k + g) * self.max_len;
                    ssm_kernel(s, g, modes, &mut self.kernels[at..at + self.max_len]);
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
            let x = &mut self.z[t * d..(t + 1) * d];
            kernels::scalar::embedding_row(&m.tok, id as usize, x)?;
            m.ngram.add_rows(t, &ids, x, self.row)?;
            kernels::scalar::embedding_row(&m.pos, t, self.row)?;
            kernels::add(x, self.row)?;
            kernels::layer_norm(
                x,
                m.emb_ln_weight,
                m.emb_ln_bias,
                eps,
                &mut self.x[t * d..(t + 1) * d],
            )?;
        }
        let (nd, ne) = (n * d, n * e);
        let per_layer = 2 * k * self.max_len;
        for (i, l) in m.layers.iter().enumerate() {
            for t in 0..n {
                let r = t * d..(t + 1) * d;
                kernels::layer_norm(
                    &self.x[r.clone()],
                    l.ln_weight,
                    l.ln_bias,
                    eps,
                    &mut self.z[r],
                )?;
            }
            let z = &self.z[..nd];
            linear_rows(&l.v, z, &mut self.v[..ne], self.scratch)?;
            kernels::gelu_tanh(&mut self.v[..ne]);
            linear_rows(&l.f, z, &mut self.f[..nd], self.scratch)?;
            kernels::gelu_tanh(&mut self.f[..nd]);
            linear_rows(&l.b, z, &mut self.b[..nd], self.scratch)?;
            kernels::gelu_tanh(&mut self.b[..nd]);
            let kern = &self.kernels[i * per_layer..(i + 1) * per_layer];
            let (kf, kb) = kern.split_at(k * self.max_len);
            ssm_conv(
                kf,
                self.max_len,
                l.fwd.d,
                &self.f[..nd],
                &mut self.sf[..nd],
                n,
                d,
                false,
            )?;
            ssm_conv(
                kb,
                self.max_len,
                l.bwd.d,
                &self.b[..nd],
                &mut self.sb[..nd],
                n,
                d,
                true,
            )?;
            // Uf into f, Ub into b, then their product (the gate) in f.
            linear_rows(&l.uf, &self.sf[..nd], &mut self.f[..nd], self.scratch)?;
            linear_rows(&l.ub, &self.sb[..nd], &mut self.b[..nd], self.scratch)?;
            kernels::mul(&mut self.f[..nd], &self.b[..nd])?;
            linear_rows(&l.l, &self.f[..nd], &mut self.h[..ne], self.scratch)?;
            kernels::gelu_tanh(&mut self.h[..ne]);
            kernels::mul(&mut self.h[..ne], &self.v[..ne])?;
            linear_rows(&l.o, &self.h[..ne], &mut self.z[..nd], self.scratch)?;
            kernels::add(&mut self.x[..nd], &self.z[..nd])?;
        }
        for t in 0..n {
            let r = t * d..(t + 1) * d;
            kernels::layer_norm(
                &self.x[r.clone()],
                m.ln_f_weight,
                m.ln_f_bias,
                eps,
                &mut self.z[r],
            )?;
        }
        self.len = n;
        Ok(())
    }

    /// The class logits of `text` (before the softmax), for parity checks.
    pub fn class_logits(&mut self, text: &[u8]) -> Result<&[f32], RuntimeError> {
        let head = self.model.classifier.ok_or(RuntimeError::MissingHead {
            head: "classification",
        })?;
        self.encode(|t| text[t] as u32, text.len())?;
        let d = self.model.config.d_model as usize;
        let n = self.len;
        self.pooled.fill(0.0);
        for t in 0..n {
            kernels::add(self.pooled, &self.z[t * d..(t + 1) * d])?;
        }
        kernels::scale(self.pooled, 1.0 / n as f32);
        linear_rows(&head.dense, self.pooled, self.hidden, self.scratch)?;
        for v in self.hidden.iter_mut() {
            *v = libm::tanhf(*v);
        }
        let classes = self.model.config.n_classes as usize;
        linear_rows(
            &head.out,
            self.hidden,
            &mut self.class_logits[..classes],
            self.scratch,
        )?;
        Ok(&self.class_logits[..classes])
    }

    /// The most probable class of `text` and every class's probability.
    pub fn classify(&mut self, text: &[u8]) -> Result<Classification<'_>, RuntimeError> {
        let classes = self.class_logits(text)?.len();
        self.probs[..classes].copy_from_slice(&self.class_logits[..classes]);
        kernels::softmax(&mut self.probs[..classes]);
        if self.probs[..classes].iter().any(|p| p.is_nan()) {
            return Err(RuntimeError::NotFinite {
                what: "class probabilities",
            });
        }
        let class = argmax(&self.probs[..classes]);
        Ok(Classification {
            class,
            probs: &self.probs[..classes],
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
            each(t, self.byte_logits);
        }
        Ok(())
    }

    fn position_logits(&mut self, head: &MlmHead<'_>, t: usize) -> Result<(), RuntimeError> {
        let d = self.model.config.d_model as usize;
        linear_rows(
            &head.dense,
            &self.z[t * d..(t + 1) * d],
            self.hidden,
            self.scratch,
        )?;
        kernels::gelu_tanh(self.hidden);
        kernels::layer_norm(
            self.hidden,
            head.ln_weight,
            head.ln_bias,
            self.model.config.norm_eps,
            self.normed,
        )?;
        let bytes = first_rows(&self.model.tok, 256)?;
        kernels::matvec(&bytes, self.normed, self.byte_logits, self.scratch)?;
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
                out[t] = crate::sampling::argmax(self.byte_logits);
            }
        }
        Ok(())
    }
}
