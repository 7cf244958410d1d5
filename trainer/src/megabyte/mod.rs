//! MEGABYTE for training: the model of ../shared/design/MODELS.md built from
//! the backend's ops, with a hand-written backward pass.
//!
//! Shapes for a batch of B windows of T bytes (K = T / P patches):
//! 1. byte embeddings E_G[x_t] + E_pos[t]: [B*T, D_G], which is also
//!    [B*K, P*D_G], the patch vectors;
//! 2. shifted one patch right with the learned pad patch in front, then the
//!    global transformer over (B, K, P*D_G);
//! 3. its output viewed as [B*T, D_G], projected by W_GL to [B*T, D_L], plus
//!    the local byte embeddings E_L[x] shifted one byte right within each
//!    patch (E_Lpad in front);
//! 4. the local transformer over (B*K, P, D_L);
//! 5. logits = h * E_L^T (tied), cross-entropy against the same bytes: the
//!    shifts make logit row t depend only on bytes before t.

pub mod job;
pub mod transformer;

use crate::backend::{Attention, Backend, CrossEntropy, Linear, Logits, WeightBias};
use crate::ngram::NgramRows;
use crate::params::{download_params, find_param as find, ParamMeta, ParamSet};
use anyhow::{bail, ensure, Result};
use kilobyte_format::schema::{Affine, BlockPart, Level, NgramInput, TensorId};
use kilobyte_format::{MegabyteConfig, ModelConfig};
use transformer::{BlockParams, TransformerActs, TransformerParams};

/// Training FLOPs per byte on windows of `seq` bytes, the usual estimate:
/// 6 per parameter use (forward multiply-add 2, backward 4) plus PaLM's
/// 12 * layers * width * context for attention. The global model runs once
/// per patch, the local model and the global-to-local projection once per
/// byte.
pub fn train_flops_per_byte(c: &MegabyteConfig, seq: usize) -> f64 {
    let p = c.patch_size as f64;
    let (w, dg, l) = (c.global_width() as f64, c.d_global as f64, c.d_local as f64);
    let (lg, ll) = (c.layers_global as f64, c.layers_local as f64);
    let patches = seq as f64 / p;
    let per_patch = 6.0 * lg * 12.0 * w * w + 12.0 * lg * w * patches;
    let per_byte = 6.0 * (ll * 12.0 * l * l + dg * l + 256.0 * l) + 12.0 * ll * l * p;
    per_patch / p + per_byte
}

/// Where each named parameter sits in the parameter list.
#[derive(Clone, Debug)]
struct Indices {
    global_tok: usize,
    global_pos: usize,
    global_pad: usize,
    global: TransformerParams,
    global_to_local: usize,
    local_tok: usize,
    local_pad: usize,
    local: TransformerParams,
}

/// Parameters and their gradients on a backend.
pub struct MegabyteModel<B: Backend> {
    pub config: MegabyteConfig,
    pub meta: Vec<ParamMeta>,
    pub params: Vec<B::Buf>,
    pub grads: Vec<B::Buf>,
    ix: Indices,
}

/// Activation buffers for one (batch, seq) shape.
pub struct Workspace<B: Backend> {
    pub batch: usize,
    pub seq: usize,
    ids: B::Ids,
    /// The n-grams of E_G and of E_L.
    global_ngram: NgramRows<B>,
    local_ngram: NgramRows<B>,
    pos: B::Ids,
    emb: B::Buf,
    global: TransformerActs<B>,
    local_in: B::Buf,
    local_emb: B::Buf,
    local_shift: B::Buf,
    local: TransformerActs<B>,
    pub logits: B::Buf,
    dlogits: B::Buf,
    d_local_out: B::Buf,
    d_local_emb: B::Buf,
    d_global_out: B::Buf,
    d_emb: B::Buf,
    host_ids: Vec<u32>,
}

fn transformer_params(meta: &[ParamMeta], level: Level, layers: u32) -> Result<TransformerParams> {
    let blocks = (0..layers)
        .map(|layer| {
            let f = |part| find(meta, TensorId::Block { level, layer, part });
            Ok(BlockParams {
                ln1_weight: f(BlockPart::Ln1(Affine::Weight))?,
                ln1_bias: f(BlockPart::Ln1(Affine::Bias))?,
                qkv: f(BlockPart::Qkv)?,
                proj: f(BlockPart::AttnProj)?,
                ln2_weight: f(BlockPart::Ln2(Affine::Weight))?,
                ln2_bias: f(BlockPart::Ln2(Affine::Bias))?,
                fc: f(BlockPart::MlpFc)?,
                fc_proj: f(BlockPart::MlpProj)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(TransformerParams {
        blocks,
        ln_f_weight: find(meta, TensorId::FinalLn(level, Affine::Weight))?,
        ln_f_bias: find(meta, TensorId::FinalLn(level, Affine::Bias))?,
    })
}

impl<B: Backend> MegabyteModel<B> {
    /// Uploads a parameter set to the backend.
    pub fn new(be: &B, set: &ParamSet) -> Result<Self> {
        let config = match set.config {
            ModelConfig::Megabyte(c) => c,
            _ => bail!("not a MEGABYTE parameter set"),
        };
        let up = set.upload(be)?;
        let meta = up.meta;
        let ix = Indices {
            global_tok: find(&meta, TensorId::TokEmb(Level::Global))?,
            global_pos: find(&meta, TensorId::PosEmb)?,
            global_pad: find(&meta, TensorId::Pad(Level::Global))?,
            global: transformer_params(&meta, Level::Global, config.layers_global)?,
            global_to_local: find(&meta, TensorId::GlobalToLocal)?,
            local_tok: find(&meta, TensorId::TokEmb(Level::Local))?,
            local_pad: find(&meta, TensorId::Pad(Level::Local))?,
            local: transformer_params(&meta, Level::Local, config.layers_local)?,
        };
        Ok(MegabyteModel {
            config,
            meta,
            params: up.values,
            grads: up.grads,
            ix,
        })
    }

    /// Downloads the parameters into a parameter set (for export and checkpoints).
    pub fn to_param_set(&self, be: &B) -> Result<ParamSet> {
        let config = ModelConfig::Megabyte(self.config);
        download_params(be, config, &[], &self.meta, &self.params)
    }

    /// Buffers for batches of `batch` windows of `seq` bytes (`seq` a
    /// multiple of P, at most T_max).
    pub fn workspace(&self, be: &B, batch: usize, seq: usize) -> Result<Workspace<B>> {
        let c = &self.config;
        let p = c.patch_size as usize;
        ensure!(batch > 0, "batch size must be at least 1");
        ensure!(
            seq >= p && seq.is_multiple_of(p) && seq <= c.max_seq as usize,
            "sequence length {seq} must be a multiple of the patch size {p} between {p} and T_max = {}",
            c.max_seq
        );
        let (dg, dl, k) = (c.d_global as usize, c.d_local as usize, seq / p);
        let rows = batch * seq;
        let global = Attention {
            batch,
            seq: k,
            width: p * dg,
            heads: c.heads_global as usize,
        };
        let local = Attention {
            batch: batch * k,
            seq: p,
            width: dl,
            heads: c.heads_local as usize,
        };
        let pos: Vec<u32> = (0..rows).map(|i| (i % seq) as u32).collect();
        Ok(Workspace {
            batch,
            seq,
            ids: be.upload_ids(&vec![0; rows])?,
            global_ngram: NgramRows::new(be, &self.meta, NgramInput::Global, c.ngram, rows)?,
            local_ngram: NgramRows::new(be, &self.meta, NgramInput::Local, c.local_ngram, rows)?,
            pos: be.upload_ids(&pos)?,
            emb: be.alloc(rows * dg)?,
            global: TransformerActs::new(be, global, c.layers_global as usize)?,
            local_in: be.alloc(rows * dl)?,
            local_emb: be.alloc(rows * dl)?,
            local_shift: be.alloc(rows * dl)?,
            local: TransformerActs::new(be, local, c.layers_local as usize)?,
            logits: be.alloc(rows * 256)?,
            dlogits: be.alloc(rows * 256)?,
            d_local_out: be.alloc(rows * dl)?,
            d_local_emb: be.alloc(rows * dl)?,
            d_global_out: be.alloc(rows * dg)?,
            d_emb: be.alloc(rows * dg)?,
            host_ids: vec![0; rows],
        })
    }

    /// Forward pass over `bytes` (batch * seq of them, window after window),
    /// and, with `backward`, the backward pass adding into `self.grads`
    /// (scaled by `grad_scale`). Returns the mean cross-entropy in nats.
    pub fn step(
        &mut self,
        be: &B,
        ws: &mut Workspace<B>,
        bytes: &[u8],
        backward: bool,
        grad_scale: f32,
    ) -> Result<CrossEntropy> {
        let rows = ws.batch * ws.seq;
        ensure!(
            bytes.len() == rows,
            "a batch needs {rows} bytes, got {}",
            bytes.len()
        );
        for (h, &b) in ws.host_ids.iter_mut().zip(bytes) {
            *h = b as u32;
        }
        be.write_ids(&mut ws.ids, &ws.host_ids)?;
        ws.global_ngram.write(be, &ws.host_ids, ws.seq)?;
        ws.local_ngram.write(be, &ws.host_ids, ws.seq)?;
        self.forward(be, ws);
        let ce = be.cross_entropy(
            &ws.logits,
            &ws.ids,
            None,
            if backward {
                Some(&mut ws.dlogits)
            } else {
                None
            },
            Logits { rows, classes: 256 },
            grad_scale,
        );
        if backward {
            self.backward(be, ws);
        }
        Ok(ce)
    }

    fn forward(&self, be: &B, ws: &mut Workspace<B>) {
        let c = &self.config;
        let p = &self.params;
        let ix = &self.ix;
        let (pp, dg, dl) = (
            c.patch_size as usize,
            c.d_global as usize,
            c.d_local as usize,
        );
        let rows = ws.batch * ws.seq;
        let k = ws.seq / pp;
        let eps = c.norm_eps;
        be.embedding_forward(&mut ws.emb, &p[ix.global_tok], &ws.ids, rows, dg, false);
        ws.global_ngram.forward(be, p, &mut ws.emb, rows, dg);
        be.embedding_forward(&mut ws.emb, &p[ix.global_pos], &ws.pos, rows, dg, true);
        be.shift_forward(
            &mut ws.global.res[0],
            &ws.emb,
            &p[ix.global_pad],
            ws.batch,
            k,
            pp * dg,
        );
        transformer::forward(be, p, &ix.global, &mut ws.global, eps);
        let gl = Linear {
            rows,
            in_dim: dg,
            out_dim: dl,
        };
        be.matmul_forward(
            &mut ws.local_in,
            &ws.global.out,
            &p[ix.global_to_local],
            None,
            gl,
        );
        be.embedding_forward(
            &mut ws.local_emb,
            &p[ix.local_tok],
            &ws.ids,
            rows,
            dl,
            false,
        );
        ws.local_ngram.forward(be, p, &mut ws.local_emb, rows, dl);
        be.shift_forward(
            &mut ws.local_shift,
            &ws.local_emb,
            &p[ix.local_pad],
            ws.batch * k,
            pp,
            dl,
        );
        be.add_forward(
            &mut ws.local.res[0],
            &ws.local_in,
            &ws.local_shift,
            rows * dl,
        );
        transformer::forward(be, p, &ix.local, &mut ws.local, eps);
        let out = Linear {
            rows,
            in_dim: dl,
            out_dim: 256,
        };
        be.matmul_forward(&mut ws.logits, &ws.local.out, &p[ix.local_tok], None, out);
    }

    fn backward(&mut self, be: &B, ws: &mut Workspace<B>) {
        let c = &self.config;
        let eps = c.norm_eps;
        let p = &self.params;
        let g = &mut self.grads;
        let ix = &self.ix;
        let (pp, dg, dl) = (
            c.patch_size as usize,
            c.d_global as usize,
            c.d_local as usize,
        );
        let rows = ws.batch * ws.seq;
        let k = ws.seq / pp;
        be.zero(&mut ws.d_local_out);
        let out = Linear {
            rows,
            in_dim: dl,
            out_dim: 256,
        };
        be.matmul_backward(
            Some(&mut ws.d_local_out),
            WeightBias {
                weight: &mut g[ix.local_tok],
                bias: None,
            },
            &ws.dlogits,
            &ws.local.out,
            &p[ix.local_tok],
            out,
        );
        transformer::backward(be, p, g, &ix.local, &mut ws.local, &ws.d_local_out, eps);
        // local input = projection + shifted byte embeddings: both get d_input.
        let d_in = &ws.local.d_input;
        be.zero(&mut ws.d_local_emb);
        be.shift_backward(
            &mut ws.d_local_emb,
            &mut g[ix.local_pad],
            d_in,
            ws.batch * k,
            pp,
            dl,
        );
        be.embedding_backward(&mut g[ix.local_tok], &ws.d_local_emb, &ws.ids, rows, dl);
        ws.local_ngram.backward(be, g, &ws.d_local_emb, rows, dl);
        be.zero(&mut ws.d_global_out);
        let gl = Linear {
            rows,
            in_dim: dg,
            out_dim: dl,
        };
        be.matmul_backward(
            Some(&mut ws.d_global_out),
            WeightBias {
                weight: &mut g[ix.global_to_local],
                bias: None,
            },
            d_in,
            &ws.global.out,
            &p[ix.global_to_local],
            gl,
        );
        transformer::backward(be, p, g, &ix.global, &mut ws.global, &ws.d_global_out, eps);
        be.zero(&mut ws.d_emb);
        be.shift_backward(
            &mut ws.d_emb,
            &mut g[ix.global_pad],
            &ws.global.d_input,
            ws.batch,
            k,
            pp * dg,
        );
        be.embedding_backward(&mut g[ix.global_tok], &ws.d_emb, &ws.ids, rows, dg);
        ws.global_ngram.backward(be, g, &ws.d_emb, rows, dg);
        be.embedding_backward(&mut g[ix.global_pos], &ws.d_emb, &ws.pos, rows, dg);
    }
}

#[cfg(test)]
mod tests;
