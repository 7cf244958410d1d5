//! One pre-norm decoder-only transformer (MODELS.md: LayerNorm, causal
//! multi-head attention, 4x GELU MLP, residual adds, final LayerNorm, no
//! biases in linear layers), forward and hand-written backward over the
//! backend's ops. MEGABYTE uses two: the global one over patches and the
//! local one over the bytes of each patch.

use crate::backend::{Attention, Backend, LayerNorm, Linear, NormSaved, WeightBias};
use anyhow::Result;

/// Indices of one block's parameters in the model's parameter list.
#[derive(Clone, Copy, Debug)]
pub struct BlockParams {
    pub ln1_weight: usize,
    pub ln1_bias: usize,
    pub qkv: usize,
    pub proj: usize,
    pub ln2_weight: usize,
    pub ln2_bias: usize,
    pub fc: usize,
    pub fc_proj: usize,
}

/// Indices of a transformer's parameters.
#[derive(Clone, Debug)]
pub struct TransformerParams {
    pub blocks: Vec<BlockParams>,
    pub ln_f_weight: usize,
    pub ln_f_bias: usize,
}

/// Activations one layer keeps for its backward pass.
struct LayerActs<B: Backend> {
    ln1: B::Buf,
    ln1_mean: B::Buf,
    ln1_rstd: B::Buf,
    qkv: B::Buf,
    att: B::Buf,
    att_saved: B::Buf,
    mid: B::Buf,
    ln2: B::Buf,
    ln2_mean: B::Buf,
    ln2_rstd: B::Buf,
    fc: B::Buf,
    gelu: B::Buf,
}

/// Every buffer of one transformer at a fixed shape (`a`).
pub struct TransformerActs<B: Backend> {
    pub a: Attention,
    /// `res[l]` is the input of layer l; `res[L]` the last layer's output.
    /// The caller writes the input into `res[0]`.
    pub res: Vec<B::Buf>,
    layers: Vec<LayerActs<B>>,
    /// The final LayerNorm's output: the transformer's result.
    pub out: B::Buf,
    out_mean: B::Buf,
    out_rstd: B::Buf,
    tmp: B::Buf,
    // Gradient scratch, shared by all layers.
    /// Gradient of `res[0]` after [`backward`]: what flows to the input.
    pub d_input: B::Buf,
    d_mid: B::Buf,
    d_ln: B::Buf,
    d_att: B::Buf,
    d_qkv: B::Buf,
    d_fc: B::Buf,
    d_gelu: B::Buf,
}

impl<B: Backend> TransformerActs<B> {
    pub fn new(be: &B, a: Attention, layers: usize) -> Result<Self> {
        let (r, w) = (a.rows(), a.width);
        let mut ls = Vec::with_capacity(layers);
        for _ in 0..layers {
            ls.push(LayerActs {
                ln1: be.alloc(r * w)?,
                ln1_mean: be.alloc(r)?,
                ln1_rstd: be.alloc(r)?,
                qkv: be.alloc(r * 3 * w)?,
                att: be.alloc(r * w)?,
                att_saved: be.alloc(be.attention_saved_len(a))?,
                mid: be.alloc(r * w)?,
                ln2: be.alloc(r * w)?,
                ln2_mean: be.alloc(r)?,
                ln2_rstd: be.alloc(r)?,
                fc: be.alloc(r * 4 * w)?,
                gelu: be.alloc(r * 4 * w)?,
            });
        }
        Ok(TransformerActs {
            a,
            res: (0..=layers)
                .map(|_| be.alloc(r * w))
                .collect::<Result<_>>()?,
            layers: ls,
            out: be.alloc(r * w)?,
            out_mean: be.alloc(r)?,
            out_rstd: be.alloc(r)?,
            tmp: be.alloc(r * w)?,
            d_input: be.alloc(r * w)?,
            d_mid: be.alloc(r * w)?,
            d_ln: be.alloc(r * w)?,
            d_att: be.alloc(r * w)?,
            d_qkv: be.alloc(r * 3 * w)?,
            d_fc: be.alloc(r * 4 * w)?,
            d_gelu: be.alloc(r * 4 * w)?,
        })
    }
}

fn lin(rows: usize, in_dim: usize, out_dim: usize) -> Linear {
    Linear {
        rows,
        in_dim,
        out_dim,
    }
}

/// Runs the transformer on `acts.res[0]`, leaving the result in `acts.out`.
pub fn forward<B: Backend>(
    be: &B,
    p: &[B::Buf],
    tp: &TransformerParams,
    acts: &mut TransformerActs<B>,
    eps: f32,
) {
    let a = acts.a;
    let (r, w) = (a.rows(), a.width);
    for (l, bp) in tp.blocks.iter().enumerate() {
        let (done, rest) = acts.res.split_at_mut(l + 1);
        let (x, next) = (&done[l], &mut rest[0]);
        let la = &mut acts.layers[l];
        be.layernorm_forward(
            &mut la.ln1,
            &mut la.ln1_mean,
            &mut la.ln1_rstd,
            x,
            WeightBias {
                weight: &p[bp.ln1_weight],
                bias: &p[bp.ln1_bias],
            },
            LayerNorm {
                rows: r,
                width: w,
                eps,
            },
        );
        be.matmul_forward(&mut la.qkv, &la.ln1, &p[bp.qkv], None, lin(r, w, 3 * w));
        be.attention_forward(&mut la.att, &mut la.att_saved, &la.qkv, a);
        be.matmul_forward(&mut acts.tmp, &la.att, &p[bp.proj], None, lin(r, w, w));
        be.add_forward(&mut la.mid, x, &acts.tmp, r * w);
        be.layernorm_forward(
            &mut la.ln2,
            &mut la.ln2_mean,
            &mut la.ln2_rstd,
            &la.mid,
            WeightBias {
                weight: &p[bp.ln2_weight],
                bias: &p[bp.ln2_bias],
            },
            LayerNorm {
                rows: r,
                width: w,
                eps,
            },
        );
        be.matmul_forward(&mut la.fc, &la.ln2, &p[bp.fc], None, lin(r, w, 4 * w));
        be.gelu_forward(&mut la.gelu, &la.fc, r * 4 * w);
        be.matmul_forward(
            &mut acts.tmp,
            &la.gelu,
            &p[bp.fc_proj],
            None,
            lin(r, 4 * w, w),
        );
        be.add_forward(next, &la.mid, &acts.tmp, r * w);
    }
    let last = &acts.res[tp.blocks.len()];
    be.layernorm_forward(
        &mut acts.out,
        &mut acts.out_mean,
        &mut acts.out_rstd,
        last,
        WeightBias {
            weight: &p[tp.ln_f_weight],
            bias: &p[tp.ln_f_bias],
        },
        LayerNorm {
            rows: r,
            width: w,
            eps,
        },
    );
}

/// Backpropagates `d_out` (the gradient of `acts.out`), adding parameter
/// gradients into `g` and leaving the input's gradient in `acts.d_input`.
pub fn backward<B: Backend>(
    be: &B,
    p: &[B::Buf],
    g: &mut [B::Buf],
    tp: &TransformerParams,
    acts: &mut TransformerActs<B>,
    d_out: &B::Buf,
    eps: f32,
) {
    let a = acts.a;
    let (r, w) = (a.rows(), a.width);
    let n_layers = tp.blocks.len();
    // `d_input` carries the residual stream's gradient down the layers.
    let dx = &mut acts.d_input;
    be.zero(dx);
    let (gw, gb) = two(g, tp.ln_f_weight, tp.ln_f_bias);
    be.layernorm_backward(
        dx,
        WeightBias {
            weight: gw,
            bias: gb,
        },
        d_out,
        NormSaved {
            inp: &acts.res[n_layers],
            weight: &p[tp.ln_f_weight],
            mean: &acts.out_mean,
            rstd: &acts.out_rstd,
        },
        LayerNorm {
            rows: r,
            width: w,
            eps,
        },
    );
    for l in (0..n_layers).rev() {
        let bp = tp.blocks[l];
        let la = &acts.layers[l];
        // res[l+1] = mid + gelu(ln2(mid) Wfc) Wproj
        be.zero(&mut acts.d_gelu);
        be.matmul_backward(
            Some(&mut acts.d_gelu),
            WeightBias {
                weight: &mut g[bp.fc_proj],
                bias: None,
            },
            dx,
            &la.gelu,
            &p[bp.fc_proj],
            lin(r, 4 * w, w),
        );
        be.zero(&mut acts.d_fc);
        be.gelu_backward(&mut acts.d_fc, &la.fc, &acts.d_gelu, r * 4 * w);
        be.zero(&mut acts.d_ln);
        be.matmul_backward(
            Some(&mut acts.d_ln),
            WeightBias {
                weight: &mut g[bp.fc],
                bias: None,
            },
            &acts.d_fc,
            &la.ln2,
            &p[bp.fc],
            lin(r, w, 4 * w),
        );
        be.copy(&mut acts.d_mid, dx);
        let (gw, gb) = two(g, bp.ln2_weight, bp.ln2_bias);
        be.layernorm_backward(
            &mut acts.d_mid,
            WeightBias {
                weight: gw,
                bias: gb,
            },
            &acts.d_ln,
            NormSaved {
                inp: &la.mid,
                weight: &p[bp.ln2_weight],
                mean: &la.ln2_mean,
                rstd: &la.ln2_rstd,
            },
            LayerNorm {
                rows: r,
                width: w,
                eps,
            },
        );
        // mid = res[l] + attention(ln1(res[l]) Wqkv) Wproj
        be.zero(&mut acts.d_att);
        be.matmul_backward(
            Some(&mut acts.d_att),
            WeightBias {
                weight: &mut g[bp.proj],
                bias: None,
            },
            &acts.d_mid,
            &la.att,
            &p[bp.proj],
            lin(r, w, w),
        );
        be.zero(&mut acts.d_qkv);
        be.attention_backward(&mut acts.d_qkv, &acts.d_att, &la.qkv, &la.att_saved, a);
        be.zero(&mut acts.d_ln);
        be.matmul_backward(
            Some(&mut acts.d_ln),
            WeightBias {
                weight: &mut g[bp.qkv],
                bias: None,
            },
            &acts.d_qkv,
            &la.ln1,
            &p[bp.qkv],
            lin(r, w, 3 * w),
        );
        be.copy(dx, &acts.d_mid);
        let (gw, gb) = two(g, bp.ln1_weight, bp.ln1_bias);
        be.layernorm_backward(
            dx,
            WeightBias {
                weight: gw,
                bias: gb,
            },
            &acts.d_ln,
            NormSaved {
                inp: &acts.res[l],
                weight: &p[bp.ln1_weight],
                mean: &la.ln1_mean,
                rstd: &la.ln1_rstd,
            },
            LayerNorm {
                rows: r,
                width: w,
                eps,
            },
        );
    }
}

/// Two distinct mutable elements of a slice.
pub fn two<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}
