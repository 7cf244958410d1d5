//! Elementwise ops (GELU, tanh, add, multiply, bias) and the AdamW update.

use super::float::Float;
use super::par::{add_col_sums, map1, map2, map2_mut, rows_mut, CHUNK};
use super::simd::simd_kernel;
use crate::backend::shapes::AdamWStep;
use rayon::prelude::*;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044715;

pub fn gelu_forward<T: Float>(out: &mut [T], inp: &[T]) {
    map1(out, inp, gelu_forward_chunk);
}

simd_kernel! {
    fn gelu_forward_chunk<T: Float>(out: &mut [T], inp: &[T]) {
        let (s, c, half) = (
            T::from_f64(SQRT_2_OVER_PI),
            T::from_f64(GELU_C),
            T::from_f64(0.5),
        );
        for (y, &x) in out.iter_mut().zip(inp) {
            let u = s * (x + c * x * x * x);
            *y = half * x * (T::ONE + u.tanh());
        }
    }
}

pub fn gelu_backward<T: Float>(dinp: &mut [T], inp: &[T], dout: &[T]) {
    map2(dinp, inp, dout, gelu_backward_chunk);
}

simd_kernel! {
    fn gelu_backward_chunk<T: Float>(dinp: &mut [T], inp: &[T], dout: &[T]) {
        let (s, c, half) = (
            T::from_f64(SQRT_2_OVER_PI),
            T::from_f64(GELU_C),
            T::from_f64(0.5),
        );
        let c3 = T::from_f64(3.0 * GELU_C);
        for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
            let x2 = x * x;
            let t = (s * (x + c * x2 * x)).tanh();
            let dgelu =
                half * (T::ONE + t) + half * x * (T::ONE - t * t) * s * (T::ONE + c3 * x2);
            *d += g * dgelu;
        }
    }
}

pub fn tanh_forward<T: Float>(out: &mut [T], inp: &[T]) {
    map1(out, inp, tanh_forward_chunk);
}

simd_kernel! {
    fn tanh_forward_chunk<T: Float>(out: &mut [T], inp: &[T]) {
        for (y, &x) in out.iter_mut().zip(inp) {
            *y = x.tanh();
        }
    }
}

pub fn tanh_backward<T: Float>(dinp: &mut [T], out: &[T], dout: &[T]) {
    map2(dinp, out, dout, |di, y, g| {
        for ((d, &y), &g) in di.iter_mut().zip(y).zip(g) {
            *d += g * (T::ONE - y * y);
        }
    });
}

pub fn add_forward<T: Float>(out: &mut [T], a: &[T], b: &[T]) {
    map2(out, a, b, |o, a, b| {
        for ((y, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *y = a + b;
        }
    });
}

pub fn add_assign<T: Float>(dst: &mut [T], src: &[T]) {
    map1(dst, src, |d, s| {
        for (d, &s) in d.iter_mut().zip(s) {
            *d += s;
        }
    });
}

pub fn add_backward<T: Float>(da: &mut [T], db: &mut [T], dout: &[T]) {
    map2_mut(da, db, dout, |da, db, g| {
        for ((a, b), &g) in da.iter_mut().zip(db.iter_mut()).zip(g) {
            *a += g;
            *b += g;
        }
    });
}

pub fn mul_forward<T: Float>(out: &mut [T], a: &[T], b: &[T]) {
    map2(out, a, b, |o, a, b| {
        for ((y, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *y = a * b;
        }
    });
}

pub fn mul_backward<T: Float>(da: &mut [T], db: &mut [T], dout: &[T], a: &[T], b: &[T]) {
    let n = dout.len();
    assert!(da.len() == n && db.len() == n && a.len() == n && b.len() == n);
    if n <= CHUNK {
        mul_backward_chunk(da, db, dout, a, b);
    } else {
        da.par_chunks_mut(CHUNK)
            .zip(db.par_chunks_mut(CHUNK))
            .zip(dout.par_chunks(CHUNK))
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(((da, db), g), (a, b))| mul_backward_chunk(da, db, g, a, b));
    }
}

#[inline(always)]
fn mul_backward_chunk<T: Float>(da: &mut [T], db: &mut [T], g: &[T], a: &[T], b: &[T]) {
    for i in 0..g.len() {
        da[i] += g[i] * b[i];
        db[i] += g[i] * a[i];
    }
}

pub fn bias_forward<T: Float>(out: &mut [T], inp: &[T], bias: &[T], rows: usize, width: usize) {
    let bias = &bias[..width];
    let inp = &inp[..rows * width];
    rows_mut(&mut out[..rows * width], width, |r0, o| {
        let x = &inp[r0 * width..][..o.len()];
        for (orow, xrow) in o.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
            for ((y, &x), &b) in orow.iter_mut().zip(xrow).zip(bias) {
                *y = x + b;
            }
        }
    });
}

pub fn bias_backward<T: Float>(
    dinp: Option<&mut [T]>,
    dbias: &mut [T],
    dout: &[T],
    rows: usize,
    width: usize,
) {
    if let Some(di) = dinp {
        add_assign(&mut di[..rows * width], &dout[..rows * width]);
    }
    add_col_sums(dbias, dout, rows, width);
}

pub fn adamw<T: Float>(param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T], s: &AdamWStep) {
    let n = param.len();
    assert!(
        grad.len() == n && m.len() == n && v.len() == n,
        "AdamW buffer sizes differ"
    );
    let (bc1, bc2) = s.bias_corrections();
    let lr = T::from_f32(s.lr);
    let b1 = T::from_f32(s.beta1);
    let b2 = T::from_f32(s.beta2);
    let one_b1 = T::ONE - b1;
    let one_b2 = T::ONE - b2;
    let eps = T::from_f32(s.eps);
    let decay = T::ONE - lr * T::from_f32(s.weight_decay);
    let gs = T::from_f32(s.grad_scale);
    let inv_bc1 = T::from_f64(1.0 / bc1);
    let inv_bc2 = T::from_f64(1.0 / bc2);
    let k = AdamWConsts {
        lr,
        b1,
        b2,
        one_b1,
        one_b2,
        eps,
        decay,
        gs,
        inv_bc1,
        inv_bc2,
    };
    if n <= CHUNK {
        adamw_chunk(param, grad, m, v, &k);
    } else {
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, &k));
    }
}

struct AdamWConsts<T> {
    lr: T,
    b1: T,
    b2: T,
    one_b1: T,
    one_b2: T,
    eps: T,
    decay: T,
    gs: T,
    inv_bc1: T,
    inv_bc2: T,
}

simd_kernel! {
    fn adamw_chunk<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], k: &AdamWConsts<T>) {
        for i in 0..p.len() {
            let g = g[i] * k.gs;
            let mi = k.b1 * m[i] + k.one_b1 * g;
            let vi = k.b2 * v[i] + k.one_b2 * g * g;
            m[i] = mi;
            v[i] = vi;
            let mhat = mi * k.inv_bc1;
            let vhat = vi * k.inv_bc2;
            p[i] = p[i] * k.decay - k.lr * mhat / (vhat.sqrt() + k.eps);
        }
    }
}
