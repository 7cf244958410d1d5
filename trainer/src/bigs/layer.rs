//! One BiGS layer, forward and hand-written backward over named parameters,
//! activations and gradients (llm.c style, as `megabyte::transformer` does
//! for MEGABYTE's blocks). On the residual stream X (`[rows, d]`):
//!
//! `Z = LN(X)`, `V = GELU(Z Wv)`, `F = GELU(Z Wf)`, `Bk = GELU(Z Wb)`,
//! `Uf = SSM_fwd(F) Wuf`, `Ub = SSM_bwd(Bk) Wub`, `G = Uf * Ub`,
//! `H = GELU(G Wl)`, `M = H * V`, `X_out = X + M Wo` (every linear layer
//! with a bias).
//!
//! It owns one layer's computation, its saved activations and the gradient
//! buffers the layers share. It must not touch embeddings, heads or the
//! batch (the model runs the layers in order between them) nor look up
//! parameters by name (the model hands it their indices).

use crate::backend::{
    Backend, Direction, LayerNorm, Linear, NormSaved, SsmConv, SsmDims, SsmFilterGrads, SsmParams,
    SsmShape, WeightBias,
};
use anyhow::Result;

/// A linear layer's weight and bias, as indices into the parameter list.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lin {
    pub w: usize,
    pub b: usize,
}

/// One SSM's parameters (`a, w, c, log_dt` next to each other, as the
/// schema orders them), as indices.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SsmIx {
    pub a: usize,
    pub w: usize,
    pub c: usize,
    pub log_dt: usize,
    pub d: usize,
}

/// One layer's parameters, as indices.
#[derive(Clone, Debug)]
pub(crate) struct LayerIx {
    pub ln_w: usize,
    pub ln_b: usize,
    pub v: Lin,
    pub f: Lin,
    pub b: Lin,
    pub uf: Lin,
    pub ub: Lin,
    pub l: Lin,
    pub o: Lin,
    pub fwd: SsmIx,
    pub bwd: SsmIx,
}

/// A layer's sizes for one batch shape (forward and backward use the same).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerShapes {
    /// The `d -> d`, `d -> e` and `e -> d` products.
    pub dd: Linear,
    pub de: Linear,
    pub ed: Linear,
    pub ln: LayerNorm,
    pub ssm: SsmShape,
    pub dims: SsmDims,
}

impl LayerShapes {
    fn rows(&self) -> usize {
        self.dd.rows
    }
    fn d(&self) -> usize {
        self.dd.in_dim
    }
    fn e(&self) -> usize {
        self.de.out_dim
    }
}

/// One layer's saved activations (`p*` are pre-GELU values, `s*` SSM
/// outputs, `k*` the SSM kernels).
pub(crate) struct LayerActs<B: Backend> {
    z: B::Buf,
    mean: B::Buf,
    rstd: B::Buf,
    pv: B::Buf,
    v: B::Buf,
    pf: B::Buf,
    f: B::Buf,
    pb: B::Buf,
    bk: B::Buf,
    kf: B::Buf,
    kb: B::Buf,
    sf: B::Buf,
    uf: B::Buf,
    sb: B::Buf,
    ub: B::Buf,
    g: B::Buf,
    pl: B::Buf,
    h: B::Buf,
    m: B::Buf,
}

impl<B: Backend> LayerActs<B> {
    /// For `rows` rows of width `d` (expanded `e`), `kernels` SSM kernels of
    /// up to `seq` taps.
    pub fn new(
        be: &B,
        rows: usize,
        d: usize,
        e: usize,
        kernels: usize,
        seq: usize,
    ) -> Result<Self> {
        let buf = |n: usize| be.alloc(n);
        Ok(LayerActs {
            z: buf(rows * d)?,
            mean: buf(rows)?,
            rstd: buf(rows)?,
            pv: buf(rows * e)?,
            v: buf(rows * e)?,
            pf: buf(rows * d)?,
            f: buf(rows * d)?,
            pb: buf(rows * d)?,
            bk: buf(rows * d)?,
            kf: buf(kernels * seq)?,
            kb: buf(kernels * seq)?,
            sf: buf(rows * d)?,
            uf: buf(rows * d)?,
            sb: buf(rows * d)?,
            ub: buf(rows * d)?,
            g: buf(rows * d)?,
            pl: buf(rows * e)?,
            h: buf(rows * e)?,
            m: buf(rows * e)?,
        })
    }
}

/// The gradients of one layer's activations, shared by every layer's
/// backward (each buffer is zeroed before the op that adds into it).
pub(crate) struct LayerGrads<B: Backend> {
    d_m: B::Buf,
    d_h: B::Buf,
    d_v: B::Buf,
    d_pl: B::Buf,
    d_pv: B::Buf,
    d_g: B::Buf,
    d_uf: B::Buf,
    d_ub: B::Buf,
    // The SSM branches' output (`sf`/`sb`), input (`f`/`bk`) and pre-GELU
    // (`pf`/`pb`) gradients, one direction at a time.
    d_s: B::Buf,
    d_u: B::Buf,
    d_pre: B::Buf,
    d_z: B::Buf,
    d_kernel: B::Buf,
    /// The branch output's gradient under a dropout mask.
    d_y: B::Buf,
}

impl<B: Backend> LayerGrads<B> {
    pub fn new(
        be: &B,
        rows: usize,
        d: usize,
        e: usize,
        kernels: usize,
        seq: usize,
    ) -> Result<Self> {
        let buf = |n: usize| be.alloc(n);
        Ok(LayerGrads {
            d_m: buf(rows * e)?,
            d_h: buf(rows * e)?,
            d_v: buf(rows * e)?,
            d_pl: buf(rows * e)?,
            d_pv: buf(rows * e)?,
            d_g: buf(rows * d)?,
            d_uf: buf(rows * d)?,
            d_ub: buf(rows * d)?,
            d_s: buf(rows * d)?,
            d_u: buf(rows * d)?,
            d_pre: buf(rows * d)?,
            d_z: buf(rows * d)?,
            d_kernel: buf(kernels * seq)?,
            d_y: buf(rows * d)?,
        })
    }
}

/// A norm's or a linear layer's weight and bias.
pub(crate) fn wb<T>(p: &[T], l: Lin) -> WeightBias<&T> {
    WeightBias {
        weight: &p[l.w],
        bias: &p[l.b],
    }
}

/// A norm's weight and bias gradients.
pub(crate) fn wb_mut<T>(g: &mut [T], l: Lin) -> WeightBias<&mut T> {
    let (weight, bias) = pair_mut(g, l.w, l.b);
    WeightBias { weight, bias }
}

/// The layer's norm, as a weight-and-bias pair.
fn ln(l: &LayerIx) -> Lin {
    Lin {
        w: l.ln_w,
        b: l.ln_b,
    }
}

fn ssm_params<B>(p: &[B], s: SsmIx) -> SsmParams<&B> {
    SsmParams {
        a: &p[s.a],
        w: &p[s.w],
        c: &p[s.c],
        log_dt: &p[s.log_dt],
    }
}

/// Runs layer `l` on `x`, writing `out = x + M Wo` (`y` is scratch for
/// `M Wo`), or `out = x + mask * (M Wo)` with a dropout mask. `lengths`
/// are the sequences' real lengths.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<B: Backend>(
    be: &B,
    p: &[B::Buf],
    l: &LayerIx,
    a: &mut LayerActs<B>,
    (x, out, y): (&B::Buf, &mut B::Buf, &mut B::Buf),
    mask: Option<&B::Buf>,
    lengths: &B::Ids,
    sh: LayerShapes,
) {
    let (rows, d, e) = (sh.rows(), sh.d(), sh.e());
    be.layernorm_forward(&mut a.z, &mut a.mean, &mut a.rstd, x, wb(p, ln(l)), sh.ln);
    be.matmul_forward(&mut a.pv, &a.z, &p[l.v.w], Some(&p[l.v.b]), sh.de);
    be.gelu_forward(&mut a.v, &a.pv, rows * e);
    be.matmul_forward(&mut a.pf, &a.z, &p[l.f.w], Some(&p[l.f.b]), sh.dd);
    be.gelu_forward(&mut a.f, &a.pf, rows * d);
    be.matmul_forward(&mut a.pb, &a.z, &p[l.b.w], Some(&p[l.b.b]), sh.dd);
    be.gelu_forward(&mut a.bk, &a.pb, rows * d);
    for (s, kern, inp, sout, dir) in [
        (l.fwd, &mut a.kf, &a.f, &mut a.sf, Direction::Forward),
        (l.bwd, &mut a.kb, &a.bk, &mut a.sb, Direction::Backward),
    ] {
        be.ssm_kernel_forward(kern, ssm_params(p, s), sh.dims, sh.ssm.seq);
        let conv = SsmConv {
            u: inp,
            kernel: kern,
            d: &p[s.d],
            lengths,
        };
        be.ssm_conv_forward(sout, conv, sh.ssm, dir);
    }
    be.matmul_forward(&mut a.uf, &a.sf, &p[l.uf.w], Some(&p[l.uf.b]), sh.dd);
    be.matmul_forward(&mut a.ub, &a.sb, &p[l.ub.w], Some(&p[l.ub.b]), sh.dd);
    be.mul_forward(&mut a.g, &a.uf, &a.ub, rows * d);
    be.matmul_forward(&mut a.pl, &a.g, &p[l.l.w], Some(&p[l.l.b]), sh.de);
    be.gelu_forward(&mut a.h, &a.pl, rows * e);
    be.mul_forward(&mut a.m, &a.h, &a.v, rows * e);
    be.matmul_forward(y, &a.m, &p[l.o.w], Some(&p[l.o.b]), sh.ed);
    match mask {
        Some(mask) => {
            be.mul_forward(out, y, mask, rows * d);
            be.add_assign(out, x);
        }
        None => be.add_forward(out, x, y, rows * d),
    }
}

/// The backward of [`forward`] on its input `x`: `d_x` holds dL/dX_out on
/// entry and dL/dX on return (X_out = X + Y, so it is also dL/dY and the
/// identity part of dL/dX, to which the branch is added last; with the
/// forward's dropout `mask`, dL/dY is that times the mask). Parameter
/// gradients are added into `g`; `gr` is scratch shared by the layers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend>(
    be: &B,
    (p, g): (&[B::Buf], &mut [B::Buf]),
    l: &LayerIx,
    (a, gr): (&LayerActs<B>, &mut LayerGrads<B>),
    (x, d_x): (&B::Buf, &mut B::Buf),
    mask: Option<&B::Buf>,
    lengths: &B::Ids,
    sh: LayerShapes,
) {
    let (rows, d, e) = (sh.rows(), sh.d(), sh.e());
    let zero = |be: &B, b: &mut B::Buf, n| be.zero_prefix(b, n);
    let d_y = match mask {
        Some(mask) => {
            be.mul_forward(&mut gr.d_y, d_x, mask, rows * d);
            &gr.d_y
        }
        None => &*d_x,
    };
    zero(be, &mut gr.d_m, rows * e);
    be.matmul_backward(
        Some(&mut gr.d_m),
        grads(g, l.o),
        d_y,
        &a.m,
        &p[l.o.w],
        sh.ed,
    );
    zero(be, &mut gr.d_h, rows * e);
    zero(be, &mut gr.d_v, rows * e);
    be.mul_backward(&mut gr.d_h, &mut gr.d_v, &gr.d_m, &a.h, &a.v, rows * e);
    zero(be, &mut gr.d_pl, rows * e);
    be.gelu_backward(&mut gr.d_pl, &a.pl, &gr.d_h, rows * e);
    zero(be, &mut gr.d_g, rows * d);
    be.matmul_backward(
        Some(&mut gr.d_g),
        grads(g, l.l),
        &gr.d_pl,
        &a.g,
        &p[l.l.w],
        sh.de,
    );
    zero(be, &mut gr.d_uf, rows * d);
    zero(be, &mut gr.d_ub, rows * d);
    be.mul_backward(&mut gr.d_uf, &mut gr.d_ub, &gr.d_g, &a.uf, &a.ub, rows * d);
    // dZ gathers the three projections' input gradients: F's and Bk's here,
    // V's after the loop.
    zero(be, &mut gr.d_z, rows * d);
    for (s, lin_u, d_u_out, kern, inp, sout, gate_pre, gate_lin, dir) in [
        (
            l.fwd,
            l.uf,
            &gr.d_uf,
            &a.kf,
            &a.f,
            &a.sf,
            &a.pf,
            l.f,
            Direction::Forward,
        ),
        (
            l.bwd,
            l.ub,
            &gr.d_ub,
            &a.kb,
            &a.bk,
            &a.sb,
            &a.pb,
            l.b,
            Direction::Backward,
        ),
    ] {
        zero(be, &mut gr.d_s, rows * d);
        be.matmul_backward(
            Some(&mut gr.d_s),
            grads(g, lin_u),
            d_u_out,
            sout,
            &p[lin_u.w],
            sh.dd,
        );
        zero(be, &mut gr.d_u, rows * d);
        zero(be, &mut gr.d_kernel, sh.dims.kernels * sh.ssm.seq);
        let conv = SsmConv {
            u: inp,
            kernel: kern,
            d: &p[s.d],
            lengths,
        };
        let d_filter = SsmFilterGrads {
            kernel: &mut gr.d_kernel,
            d: &mut g[s.d],
        };
        be.ssm_conv_backward(&mut gr.d_u, d_filter, &gr.d_s, conv, sh.ssm, dir);
        be.ssm_kernel_backward(
            ssm_grads(g, s),
            &gr.d_kernel,
            ssm_params(p, s),
            sh.dims,
            sh.ssm.seq,
        );
        zero(be, &mut gr.d_pre, rows * d);
        be.gelu_backward(&mut gr.d_pre, gate_pre, &gr.d_u, rows * d);
        be.matmul_backward(
            Some(&mut gr.d_z),
            grads(g, gate_lin),
            &gr.d_pre,
            &a.z,
            &p[gate_lin.w],
            sh.dd,
        );
    }
    zero(be, &mut gr.d_pv, rows * e);
    be.gelu_backward(&mut gr.d_pv, &a.pv, &gr.d_v, rows * e);
    be.matmul_backward(
        Some(&mut gr.d_z),
        grads(g, l.v),
        &gr.d_pv,
        &a.z,
        &p[l.v.w],
        sh.de,
    );
    let saved = NormSaved {
        inp: x,
        weight: &p[l.ln_w],
        mean: &a.mean,
        rstd: &a.rstd,
    };
    be.layernorm_backward(d_x, wb_mut(g, ln(l)), &gr.d_z, saved, sh.ln);
}

/// A linear layer's weight and bias gradients, for `matmul_backward`.
pub(crate) fn grads<T>(g: &mut [T], l: Lin) -> WeightBias<&mut T, Option<&mut T>> {
    let (weight, bias) = pair_mut(g, l.w, l.b);
    WeightBias {
        weight,
        bias: Some(bias),
    }
}

/// The gradients of an SSM's `a, w, c, log_dt`, which the schema keeps
/// next to each other (checked in `BigsModel::new`).
fn ssm_grads<T>(g: &mut [T], s: SsmIx) -> SsmParams<&mut T> {
    let [a, w, c, log_dt] = &mut g[s.a..s.a + 4] else {
        unreachable!("a slice of 4")
    };
    SsmParams { a, w, c, log_dt }
}

/// Two distinct elements of a slice, mutably (a weight's and a bias's
/// gradients).
pub(crate) fn pair_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "two different parameters");
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}
