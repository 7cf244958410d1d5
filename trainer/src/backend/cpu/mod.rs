//! The CPU backend: buffers are `Vec<T>`, products run on the `gemm` crate,
//! everything else on rayon's global pool with a fixed work decomposition
//! (see [`par`]). `T` is f32 for training and f64 for gradient checks.

mod attention;
mod elementwise;
mod embed;
pub mod fft_conv;
pub mod float;
mod gemm;
mod loss;
mod matmul;
mod norm;
pub mod par;
pub mod simd;
pub mod ssm;

#[cfg(test)]
mod ssm_tests;

pub use float::Float;

use super::shapes::{
    AdamWStep, Attention, CrossEntropy, Direction, LayerNorm, Linear, Logits, NormSaved, SsmConv,
    SsmDims, SsmFilterGrads, SsmParams, SsmShape, WeightBias,
};
use super::Backend;
use anyhow::Result;
use fft_conv::{ssm_backward_fft, ssm_forward_fft, FFT_FROM_LEN};
use rayon::prelude::*;
use std::marker::PhantomData;

/// Sequences up to this long use attention's direct loops by default.
pub const DEFAULT_ATTN_SMALL_SEQ: usize = 32;

/// The CPU backend over element type `T`.
#[derive(Clone, Debug)]
pub struct CpuBackend<T: Float = f32> {
    attn_small_seq: usize,
    _elem: PhantomData<fn() -> T>,
}

impl<T: Float> Default for CpuBackend<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend {
            attn_small_seq: DEFAULT_ATTN_SMALL_SEQ,
            _elem: PhantomData,
        }
    }

    /// Attention over sequences of at most `seq` positions uses direct loops,
    /// longer ones GEMMs (both give the same results up to rounding; tests
    /// use this to run both paths on the same inputs).
    pub fn with_attention_small_seq(mut self, seq: usize) -> Self {
        self.attn_small_seq = seq;
        self
    }
}

#[inline]
fn prefix<T>(b: &[T], n: usize, what: &str) -> usize {
    assert!(
        b.len() >= n,
        "{what}: buffer has {} elements, op needs {n}",
        b.len()
    );
    n
}

impl<T: Float> Backend for CpuBackend<T> {
    type Buf = Vec<T>;
    type Ids = Vec<u32>;

    fn name(&self) -> String {
        format!("cpu {} ({} threads)", T::NAME, rayon::current_num_threads())
    }

    fn alloc(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::ZERO; len])
    }
    fn upload(&self, host: &[f32]) -> Result<Vec<T>> {
        Ok(host.iter().map(|&x| T::from_f32(x)).collect())
    }
    fn upload_f64(&self, host: &[f64]) -> Result<Vec<T>> {
        Ok(host.iter().map(|&x| T::from_f64(x)).collect())
    }
    fn write(&self, buf: &mut Vec<T>, host: &[f32]) -> Result<()> {
        anyhow::ensure!(host.len() <= buf.len(), "write past the end of a buffer");
        for (d, &s) in buf.iter_mut().zip(host) {
            *d = T::from_f32(s);
        }
        Ok(())
    }
    fn write_f64(&self, buf: &mut Vec<T>, host: &[f64]) -> Result<()> {
        anyhow::ensure!(host.len() <= buf.len(), "write past the end of a buffer");
        for (d, &s) in buf.iter_mut().zip(host) {
            *d = T::from_f64(s);
        }
        Ok(())
    }
    fn download(&self, buf: &Vec<T>) -> Result<Vec<f32>> {
        Ok(buf.iter().map(|x| x.to_f32()).collect())
    }
    fn download_f64(&self, buf: &Vec<T>) -> Result<Vec<f64>> {
        Ok(buf.iter().map(|x| x.to_f64()).collect())
    }
    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn upload_ids(&self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn write_ids(&self, ids: &mut Vec<u32>, host: &[u32]) -> Result<()> {
        anyhow::ensure!(
            host.len() <= ids.len(),
            "write past the end of an id buffer"
        );
        ids[..host.len()].copy_from_slice(host);
        Ok(())
    }
    fn ids_len(&self, ids: &Vec<u32>) -> usize {
        ids.len()
    }

    fn zero(&self, buf: &mut Vec<T>) {
        par::rows_mut(buf, 1, |_, c| c.fill(T::ZERO));
    }
    fn zero_prefix(&self, buf: &mut Vec<T>, n: usize) {
        prefix(buf, n, "zero");
        par::rows_mut(&mut buf[..n], 1, |_, c| c.fill(T::ZERO));
    }
    fn copy(&self, dst: &mut Vec<T>, src: &Vec<T>) {
        let n = src.len();
        par::map1(&mut dst[..n], src, |d, s| d.copy_from_slice(s));
    }
    fn scale(&self, buf: &mut Vec<T>, s: f32) {
        let s = T::from_f32(s);
        par::rows_mut(buf, 1, |_, c| c.iter_mut().for_each(|v| *v *= s));
    }
    fn add_assign(&self, dst: &mut Vec<T>, src: &Vec<T>) {
        elementwise::add_assign(dst, src);
    }
    fn sum_squares(&self, buf: &Vec<T>) -> f64 {
        par::ordered_sum(buf.len(), par::CHUNK, |a, b| {
            let mut acc = [0f64; 4];
            let c = buf[a..b].chunks_exact(4);
            let rest = c.remainder();
            for q in c {
                for l in 0..4 {
                    let v = q[l].to_f64();
                    acc[l] += v * v;
                }
            }
            let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
            for v in rest {
                s += v.to_f64() * v.to_f64();
            }
            s
        })
    }

    fn matmul_forward(
        &self,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        weight: &Vec<T>,
        bias: Option<&Vec<T>>,
        d: Linear,
    ) {
        prefix(weight, d.out_dim * d.in_dim, "matmul weight");
        if let Some(b) = bias {
            prefix(b, d.out_dim, "matmul bias");
        }
        matmul::forward(out, inp, weight, bias.map(|b| b.as_slice()), d);
    }
    fn matmul_backward(
        &self,
        dinp: Option<&mut Vec<T>>,
        dparams: WeightBias<&mut Vec<T>, Option<&mut Vec<T>>>,
        dout: &Vec<T>,
        inp: &Vec<T>,
        weight: &Vec<T>,
        d: Linear,
    ) {
        let WeightBias {
            weight: dweight,
            bias: dbias,
        } = dparams;
        if let Some(b) = dbias.as_deref() {
            prefix(b, d.out_dim, "matmul dbias");
        }
        matmul::backward(
            dinp.map(|x| x.as_mut_slice()),
            dweight,
            dbias.map(|x| x.as_mut_slice()),
            dout,
            inp,
            weight,
            d,
        );
    }

    fn layernorm_forward(
        &self,
        out: &mut Vec<T>,
        mean: &mut Vec<T>,
        rstd: &mut Vec<T>,
        inp: &Vec<T>,
        params: WeightBias<&Vec<T>>,
        ln: LayerNorm,
    ) {
        let (WeightBias { weight, bias }, rows, width) = (params, ln.rows, ln.width);
        let n = rows * width;
        prefix(out, n, "layernorm out");
        prefix(inp, n, "layernorm inp");
        prefix(mean, rows, "layernorm mean");
        prefix(rstd, rows, "layernorm rstd");
        prefix(weight, width, "layernorm weight");
        prefix(bias, width, "layernorm bias");
        norm::forward(out, mean, rstd, inp, weight, bias, ln);
    }
    fn layernorm_backward(
        &self,
        dinp: &mut Vec<T>,
        dparams: WeightBias<&mut Vec<T>>,
        dout: &Vec<T>,
        saved: NormSaved<'_, Vec<T>>,
        ln: LayerNorm,
    ) {
        let WeightBias {
            weight: dweight,
            bias: dbias,
        } = dparams;
        let NormSaved {
            inp,
            weight,
            mean,
            rstd,
        } = saved;
        let (rows, width) = (ln.rows, ln.width);
        let n = rows * width;
        prefix(dinp, n, "layernorm dinp");
        prefix(dout, n, "layernorm dout");
        prefix(inp, n, "layernorm inp");
        prefix(dweight, width, "layernorm dweight");
        prefix(dbias, width, "layernorm dbias");
        prefix(weight, width, "layernorm weight");
        prefix(mean, rows, "layernorm mean");
        prefix(rstd, rows, "layernorm rstd");
        let saved = NormSaved {
            inp: inp.as_slice(),
            weight: weight.as_slice(),
            mean: mean.as_slice(),
            rstd: rstd.as_slice(),
        };
        norm::backward(dinp, dweight, dbias, dout, saved, ln);
    }

    fn gelu_forward(&self, out: &mut Vec<T>, inp: &Vec<T>, n: usize) {
        elementwise::gelu_forward(&mut out[..n], &inp[..n]);
    }
    fn gelu_backward(&self, dinp: &mut Vec<T>, inp: &Vec<T>, dout: &Vec<T>, n: usize) {
        elementwise::gelu_backward(&mut dinp[..n], &inp[..n], &dout[..n]);
    }
    fn tanh_forward(&self, out: &mut Vec<T>, inp: &Vec<T>, n: usize) {
        elementwise::tanh_forward(&mut out[..n], &inp[..n]);
    }
    fn tanh_backward(&self, dinp: &mut Vec<T>, out: &Vec<T>, dout: &Vec<T>, n: usize) {
        elementwise::tanh_backward(&mut dinp[..n], &out[..n], &dout[..n]);
    }
    fn add_forward(&self, out: &mut Vec<T>, a: &Vec<T>, b: &Vec<T>, n: usize) {
        elementwise::add_forward(&mut out[..n], &a[..n], &b[..n]);
    }
    fn add_backward(&self, da: &mut Vec<T>, db: &mut Vec<T>, dout: &Vec<T>, n: usize) {
        elementwise::add_backward(&mut da[..n], &mut db[..n], &dout[..n]);
    }
    fn mul_forward(&self, out: &mut Vec<T>, a: &Vec<T>, b: &Vec<T>, n: usize) {
        elementwise::mul_forward(&mut out[..n], &a[..n], &b[..n]);
    }
    fn mul_backward(
        &self,
        da: &mut Vec<T>,
        db: &mut Vec<T>,
        dout: &Vec<T>,
        a: &Vec<T>,
        b: &Vec<T>,
        n: usize,
    ) {
        elementwise::mul_backward(&mut da[..n], &mut db[..n], &dout[..n], &a[..n], &b[..n]);
    }
    fn bias_forward(
        &self,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        bias: &Vec<T>,
        rows: usize,
        width: usize,
    ) {
        prefix(out, rows * width, "bias out");
        prefix(inp, rows * width, "bias inp");
        prefix(bias, width, "bias");
        elementwise::bias_forward(out, inp, bias, rows, width);
    }
    fn bias_backward(
        &self,
        dinp: Option<&mut Vec<T>>,
        dbias: &mut Vec<T>,
        dout: &Vec<T>,
        rows: usize,
        width: usize,
    ) {
        prefix(dout, rows * width, "bias dout");
        prefix(dbias, width, "bias dbias");
        elementwise::bias_backward(dinp.map(|x| x.as_mut_slice()), dbias, dout, rows, width);
    }

    fn embedding_forward(
        &self,
        out: &mut Vec<T>,
        table: &Vec<T>,
        ids: &Vec<u32>,
        rows: usize,
        width: usize,
        accumulate: bool,
    ) {
        prefix(out, rows * width, "embedding out");
        prefix(ids, rows, "embedding ids");
        embed::embedding_forward(out, table, ids, rows, width, accumulate);
    }
    fn embedding_backward(
        &self,
        dtable: &mut Vec<T>,
        dout: &Vec<T>,
        ids: &Vec<u32>,
        rows: usize,
        width: usize,
    ) {
        prefix(dout, rows * width, "embedding dout");
        prefix(ids, rows, "embedding ids");
        embed::embedding_backward(dtable, dout, ids, rows, width);
    }

    fn shift_forward(
        &self,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        pad: &Vec<T>,
        seqs: usize,
        len: usize,
        width: usize,
    ) {
        let n = seqs * len * width;
        prefix(out, n, "shift out");
        prefix(inp, n, "shift inp");
        prefix(pad, width, "shift pad");
        embed::shift_forward(out, inp, pad, seqs, len, width);
    }
    fn shift_backward(
        &self,
        dinp: &mut Vec<T>,
        dpad: &mut Vec<T>,
        dout: &Vec<T>,
        seqs: usize,
        len: usize,
        width: usize,
    ) {
        let n = seqs * len * width;
        prefix(dinp, n, "shift dinp");
        prefix(dout, n, "shift dout");
        prefix(dpad, width, "shift dpad");
        embed::shift_backward(dinp, dpad, dout, seqs, len, width);
    }

    fn attention_saved_len(&self, a: Attention) -> usize {
        attention::saved_len(a)
    }
    fn attention_forward(&self, out: &mut Vec<T>, saved: &mut Vec<T>, qkv: &Vec<T>, a: Attention) {
        attention::forward(out, saved, qkv, a, self.attn_small_seq);
    }
    fn attention_backward(
        &self,
        dqkv: &mut Vec<T>,
        dout: &Vec<T>,
        qkv: &Vec<T>,
        saved: &Vec<T>,
        a: Attention,
    ) {
        attention::backward(dqkv, dout, qkv, saved, a, self.attn_small_seq);
    }

    fn mean_pool_forward(
        &self,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        mask: &Vec<T>,
        batch: usize,
        seq: usize,
        width: usize,
    ) {
        prefix(out, batch * width, "mean-pool out");
        prefix(inp, batch * seq * width, "mean-pool inp");
        prefix(mask, batch * seq, "mean-pool mask");
        embed::mean_pool_forward(out, inp, mask, batch, seq, width);
    }
    fn mean_pool_backward(
        &self,
        dinp: &mut Vec<T>,
        dout: &Vec<T>,
        mask: &Vec<T>,
        batch: usize,
        seq: usize,
        width: usize,
    ) {
        prefix(dinp, batch * seq * width, "mean-pool dinp");
        prefix(dout, batch * width, "mean-pool dout");
        prefix(mask, batch * seq, "mean-pool mask");
        embed::mean_pool_backward(dinp, dout, mask, batch, seq, width);
    }

    fn ssm_kernel_forward(
        &self,
        kernel: &mut Vec<T>,
        p: SsmParams<&Vec<T>>,
        dims: SsmDims,
        len: usize,
    ) {
        prefix(kernel, dims.kernels * len, "ssm kernel");
        ssm::ssm_kernel(dims, len, p.a, p.w, p.c, p.log_dt, kernel);
    }
    fn ssm_kernel_backward(
        &self,
        dp: SsmParams<&mut Vec<T>>,
        dkernel: &Vec<T>,
        p: SsmParams<&Vec<T>>,
        dims: SsmDims,
        len: usize,
    ) {
        prefix(dkernel, dims.kernels * len, "ssm dkernel");
        let p = SsmParams {
            a: p.a.as_slice(),
            w: p.w.as_slice(),
            c: p.c.as_slice(),
            log_dt: p.log_dt.as_slice(),
        };
        let dp = SsmParams {
            a: dp.a.as_mut_slice(),
            w: dp.w.as_mut_slice(),
            c: dp.c.as_mut_slice(),
            log_dt: dp.log_dt.as_mut_slice(),
        };
        ssm::ssm_kernel_backward(dims, len, p, dkernel, dp);
    }
    fn ssm_conv_forward(
        &self,
        y: &mut Vec<T>,
        x: SsmConv<'_, Vec<T>, Vec<u32>>,
        s: SsmShape,
        dir: Direction,
    ) {
        let SsmConv {
            u,
            kernel,
            d,
            lengths,
        } = x;
        let per_seq = s.seq * s.width;
        prefix(y, s.batch * per_seq, "ssm y");
        prefix(u, s.batch * per_seq, "ssm u");
        let one = SsmShape { batch: 1, ..s };
        // Sequences are independent: one task each, outputs disjoint.
        y[..s.batch * per_seq]
            .par_chunks_mut(per_seq)
            .zip(u[..s.batch * per_seq].par_chunks(per_seq))
            .zip(&lengths[..s.batch])
            .for_each(|((y, u), &len)| {
                let len = len as usize;
                if len >= FFT_FROM_LEN {
                    ssm_forward_fft(one, dir, len, u, kernel, d, y);
                } else {
                    ssm::ssm_forward(one, dir, &[len], u, kernel, d, y);
                }
            });
    }
    fn ssm_conv_backward(
        &self,
        du: &mut Vec<T>,
        dfilter: SsmFilterGrads<'_, Vec<T>>,
        dy: &Vec<T>,
        x: SsmConv<'_, Vec<T>, Vec<u32>>,
        s: SsmShape,
        dir: Direction,
    ) {
        let SsmFilterGrads {
            kernel: dkernel,
            d: dd,
        } = dfilter;
        let SsmConv {
            u,
            kernel,
            d,
            lengths,
        } = x;
        let per_seq = s.seq * s.width;
        let nk = s.kernels * s.seq;
        prefix(du, s.batch * per_seq, "ssm du");
        prefix(dy, s.batch * per_seq, "ssm dy");
        prefix(u, s.batch * per_seq, "ssm u");
        let one = SsmShape { batch: 1, ..s };
        // Each sequence's kernel and skip gradients go to its own slot and
        // are summed in sequence order afterwards, so the result does not
        // depend on the thread count.
        let mut partial = vec![T::ZERO; s.batch * (nk + s.kernels)];
        du[..s.batch * per_seq]
            .par_chunks_mut(per_seq)
            .zip(partial.par_chunks_mut(nk + s.kernels))
            .enumerate()
            .for_each(|(b, (du, part))| {
                let (dk, dd) = part.split_at_mut(nk);
                let rows = b * per_seq..(b + 1) * per_seq;
                let len = lengths[b] as usize;
                let (u, dy) = (&u[rows.clone()], &dy[rows]);
                let x = SsmConv {
                    u,
                    kernel: kernel.as_slice(),
                    d: d.as_slice(),
                    lengths: &[len][..],
                };
                let df = SsmFilterGrads { kernel: dk, d: dd };
                if len >= FFT_FROM_LEN {
                    ssm_backward_fft(one, dir, x, dy, du, df);
                } else {
                    ssm::ssm_backward(one, dir, x, dy, du, df);
                }
            });
        for part in partial.chunks(nk + s.kernels) {
            for (g, p) in dkernel[..nk].iter_mut().zip(&part[..nk]) {
                *g += *p;
            }
            for (g, p) in dd[..s.kernels].iter_mut().zip(&part[nk..]) {
                *g += *p;
            }
        }
    }

    fn cross_entropy(
        &self,
        logits: &Vec<T>,
        targets: &Vec<u32>,
        mask: Option<&Vec<T>>,
        dlogits: Option<&mut Vec<T>>,
        l: Logits,
        grad_scale: f32,
    ) -> CrossEntropy {
        let (rows, vocab) = (l.rows, l.classes);
        prefix(logits, rows * vocab, "cross-entropy logits");
        prefix(targets, rows, "cross-entropy targets");
        if let Some(m) = mask {
            prefix(m, rows, "cross-entropy mask");
        }
        if let Some(d) = dlogits.as_deref() {
            prefix(d, rows * vocab, "cross-entropy dlogits");
        }
        loss::cross_entropy(
            logits,
            targets,
            mask.map(|m| m.as_slice()),
            dlogits.map(|d| d.as_mut_slice()),
            rows,
            vocab,
            grad_scale,
        )
    }

    fn adamw_update(
        &self,
        param: &mut Vec<T>,
        grad: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        s: &AdamWStep,
    ) {
        elementwise::adamw(param, grad, m, v, s);
    }
}
