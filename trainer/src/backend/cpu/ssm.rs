//! The diagonal state-space model of BiGS (MODELS.md, "SSM"): S4D-style
//! complex modes with zero-order-hold discretisation, B fixed to 1.
//!
//! Per kernel, with N modes, `A_n = -exp(a_n) + i w_n`, `dt = exp(log_dt)`,
//! `Abar_n = exp(dt A_n)`, `Bbar_n = (Abar_n - 1) / A_n` and
//! `K[l] = Re(sum_n C_n Bbar_n Abar_n^l)`. A layer's SSM applies
//! `y = K conv u + D u` to every channel, channel `c` using kernel
//! `c / (width / kernels)`.
//!
//! Training is split in two steps so that the kernel is built once per step
//! and shared by every channel and sequence of the batch:
//! [`ssm_kernel`] (parameters -> `K [kernels, seq]`) and [`ssm_forward`]
//! (`K`, `D`, `u` -> `y`), with [`ssm_backward`] and [`ssm_kernel_backward`]
//! undoing them in the opposite order. [`ssm_recurrence`] computes the same
//! function step by step from the parameters; tests use it as an
//! independent reference, inference may use it as is.
//!
//! Parameters and activations may be f32 or f64 ([`Float`]), but the kernel
//! and its gradient are always computed in f64: `Abar^l` is a long product
//! of complex numbers close to the unit circle, and the parameters are tiny
//! (`kernels * modes * seq` work), so the precision costs nothing.
//!
//! The convolution here is direct, `O(seq^2)` per channel and sequence,
//! looping over whole rows so that the inner loops are vector operations;
//! it is also the reference for [`super::fft_conv`], which the CPU backend
//! uses from [`super::fft_conv::FFT_FROM_LEN`] positions on (measured
//! crossover: about 120).
//!
//! Padding: every sequence `b` has a real length `lengths[b] <= seq`. Rows at
//! positions `>= lengths[b]` are absent: their inputs are never read, their
//! outputs are zero and their input gradients are left untouched. The
//! backward direction runs from `lengths[b] - 1` down to 0, so a padded
//! sequence gives exactly the result it gives unpadded.
//!
//! These are CPU kernels: models reach them only through
//! [`crate::backend::Backend`]'s `ssm_*` ops (the CUDA backend has its own),
//! and they must not know which model or parameter they serve.

use super::float::Float;
use crate::backend::shapes::{Direction, SsmConv, SsmDims, SsmFilterGrads, SsmParams, SsmShape};
use core::ops::{Add, AddAssign, Div, Mul, Sub};

// The CPU kernels' own checks of a shape.
impl SsmShape {
    fn channels_per_kernel(&self) -> usize {
        assert!(
            self.kernels > 0 && self.width.is_multiple_of(self.kernels),
            "width {} is not split evenly among {} kernels",
            self.width,
            self.kernels
        );
        self.width / self.kernels
    }

    fn check<T>(&self, lengths: &[usize], act: &[T], kernel: &[T], d: &[T]) {
        assert!(lengths.len() >= self.batch, "lengths shorter than batch");
        for &len in &lengths[..self.batch] {
            assert!(len <= self.seq, "length {len} > seq {}", self.seq);
        }
        assert!(act.len() >= self.batch * self.seq * self.width);
        assert!(kernel.len() >= self.kernels * self.seq);
        assert!(d.len() >= self.kernels);
    }
}

/// A complex number in f64; only what the SSM needs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Complex {
    pub re: f64,
    pub im: f64,
}

impl Complex {
    pub const ZERO: Self = Complex { re: 0.0, im: 0.0 };
    pub const ONE: Self = Complex { re: 1.0, im: 0.0 };

    pub fn new(re: f64, im: f64) -> Self {
        Complex { re, im }
    }

    pub fn exp(self) -> Self {
        let m = self.re.exp();
        Complex::new(m * self.im.cos(), m * self.im.sin())
    }

    pub fn scale(self, s: f64) -> Self {
        Complex::new(self.re * s, self.im * s)
    }
}

impl Add for Complex {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Complex::new(self.re + o.re, self.im + o.im)
    }
}

impl AddAssign for Complex {
    fn add_assign(&mut self, o: Self) {
        *self = *self + o;
    }
}

impl Sub for Complex {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Complex::new(self.re - o.re, self.im - o.im)
    }
}

impl Mul for Complex {
    type Output = Self;
    fn mul(self, o: Self) -> Self {
        Complex::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
}

impl Div for Complex {
    type Output = Self;
    fn div(self, o: Self) -> Self {
        let den = o.re * o.re + o.im * o.im;
        Complex::new(
            (self.re * o.re + self.im * o.im) / den,
            (self.im * o.re - self.re * o.im) / den,
        )
    }
}

/// One mode of one kernel, discretised.
struct Mode {
    /// exp(a), the decay rate (d A / d a = -exp(a)).
    decay: f64,
    a: Complex,
    abar: Complex,
    bbar: Complex,
    c: Complex,
}

impl Mode {
    /// Mode `n` of kernel `k`; `dt` is that kernel's step.
    fn new<T: Float>(
        dims: SsmDims,
        a: &[T],
        w: &[T],
        c: &[T],
        k: usize,
        n: usize,
        dt: f64,
    ) -> Self {
        let i = k * dims.modes + n;
        let decay = a[i].to_f64().exp();
        let a = Complex::new(-decay, w[i].to_f64());
        let abar = a.scale(dt).exp();
        // Re(A) = -exp(a) < 0, so A is never zero.
        let bbar = (abar - Complex::ONE) / a;
        let c = Complex::new(c[2 * i].to_f64(), c[2 * i + 1].to_f64());
        Mode {
            decay,
            a,
            abar,
            bbar,
            c,
        }
    }
}

/// Builds every kernel: `out[k, l] = Re(sum_n C_n Bbar_n Abar_n^l)` for
/// `l < len`, overwriting `out [kernels, len]`.
pub fn ssm_kernel<T: Float>(
    dims: SsmDims,
    len: usize,
    a: &[T],
    w: &[T],
    c: &[T],
    log_dt: &[T],
    out: &mut [T],
) {
    let mut acc = vec![0f64; len];
    for k in 0..dims.kernels {
        let dt = log_dt[k].to_f64().exp();
        acc.fill(0.0);
        for n in 0..dims.modes {
            let m = Mode::new(dims, a, w, c, k, n, dt);
            let mut z = m.c * m.bbar;
            for v in acc.iter_mut() {
                *v += z.re;
                z = z * m.abar;
            }
        }
        for (o, &v) in out[k * len..(k + 1) * len].iter_mut().zip(&acc) {
            *o = T::from_f64(v);
        }
    }
}

/// Gradient of [`ssm_kernel`]: given `dkernel [kernels, len]`, adds into
/// `da, dw [kernels, modes]`, `dc [kernels, modes, 2]`, `dlog_dt [kernels]`.
///
/// With `h = sum_l g_l z Abar^l` (holomorphic in the complex intermediates)
/// and loss `Re(h)`, the gradient with respect to the real and imaginary
/// parts of a complex `p` is `(Re h'(p), -Im h'(p))`.
pub fn ssm_kernel_backward<T: Float>(
    dims: SsmDims,
    len: usize,
    p: SsmParams<&[T]>,
    dkernel: &[T],
    dp: SsmParams<&mut [T]>,
) {
    let SsmParams { a, w, c, log_dt } = p;
    let SsmParams {
        a: da,
        w: dw,
        c: dc,
        log_dt: dlog_dt,
    } = dp;
    for k in 0..dims.kernels {
        let g = &dkernel[k * len..(k + 1) * len];
        let dt = log_dt[k].to_f64().exp();
        let mut ddt = 0f64;
        for n in 0..dims.modes {
            let m = Mode::new(dims, a, w, c, k, n, dt);
            // s0 = sum g_l Abar^l (= dh/dz); s1 = sum g_l l Abar^l
            // (= Abar dh/dAbar / z), so no division by Abar is needed.
            let (mut s0, mut s1, mut p) = (Complex::ZERO, Complex::ZERO, Complex::ONE);
            for (l, &gl) in g.iter().enumerate() {
                let gl = gl.to_f64();
                s0 += p.scale(gl);
                s1 += p.scale(gl * l as f64);
                p = p * m.abar;
            }
            let z = m.c * m.bbar;
            let dh_dc = m.bbar * s0;
            // Bbar = (Abar - 1)/A with Abar = exp(dt A):
            // dBbar/dA = (dt Abar - Bbar)/A, dBbar/ddt = Abar.
            let dbbar_da = (m.abar.scale(dt) - m.bbar) / m.a;
            let dh_da = m.c * s0 * dbbar_da + z * s1.scale(dt);
            let dh_ddt = m.c * s0 * m.abar + z * s1 * m.a;
            let i = k * dims.modes + n;
            dc[2 * i] += T::from_f64(dh_dc.re);
            dc[2 * i + 1] += T::from_f64(-dh_dc.im);
            // dA/da = -exp(a) (real), dA/dw = i.
            da[i] += T::from_f64(-dh_da.re * m.decay);
            dw[i] += T::from_f64(-dh_da.im);
            ddt += dh_ddt.re;
        }
        // d dt / d log_dt = dt.
        dlog_dt[k] += T::from_f64(ddt * dt);
    }
}

/// `y += alpha * x` over matching channels.
#[inline]
fn axpy<T: Float>(alpha: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

#[inline]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    // Eight partial sums let the compiler keep a vector of them.
    let mut acc = [T::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = T::ZERO;
    for (x, y) in ra.iter().zip(rb) {
        sum += *x * *y;
    }
    acc.iter().fold(sum, |s, &v| s + v)
}

/// `y = K conv u + D u` per channel, overwriting `y [batch * seq, width]`
/// (zero at padding rows). `kernel [kernels, seq]` comes from
/// [`ssm_kernel`], `d [kernels]` is the skip.
///
/// The loops run over whole rows (a kernel's channels are contiguous), so
/// every inner loop is a vector `axpy` or dot product.
pub fn ssm_forward<T: Float>(
    s: SsmShape,
    dir: Direction,
    lengths: &[usize],
    u: &[T],
    kernel: &[T],
    d: &[T],
    y: &mut [T],
) {
    s.check(lengths, u, kernel, d);
    assert!(y.len() >= s.batch * s.seq * s.width);
    let per = s.channels_per_kernel();
    let w = s.width;
    for (b, &len) in lengths[..s.batch].iter().enumerate() {
        let base = b * s.seq * w;
        let seq_u = &u[base..base + s.seq * w];
        let seq_y = &mut y[base..base + s.seq * w];
        seq_y[len * w..].fill(T::ZERO);
        for t in 0..len {
            let rt = dir.row(t, len);
            let (yt, ut) = (rt * w, &seq_u[rt * w..(rt + 1) * w]);
            for k in 0..s.kernels {
                let ch = k * per..(k + 1) * per;
                let out = &mut seq_y[yt + ch.start..yt + ch.end];
                for (o, &x) in out.iter_mut().zip(&ut[ch.clone()]) {
                    *o = d[k] * x;
                }
                let kern = &kernel[k * s.seq..];
                for (j, &kj) in kern[..=t].iter().enumerate() {
                    let r = dir.row(t - j, len) * w;
                    axpy(kj, &seq_u[r + ch.start..r + ch.end], out);
                }
            }
        }
    }
}

/// Gradient of [`ssm_forward`]: given `dy`, adds into `du [batch * seq,
/// width]` (real rows only), `dkernel [kernels, seq]` and `dd [kernels]`
/// (each summed over the kernel's channels and the batch).
pub fn ssm_backward<T: Float>(
    s: SsmShape,
    dir: Direction,
    x: SsmConv<'_, [T], [usize]>,
    dy: &[T],
    du: &mut [T],
    dfilter: SsmFilterGrads<'_, [T]>,
) {
    let SsmConv {
        u,
        kernel,
        d,
        lengths,
    } = x;
    let SsmFilterGrads {
        kernel: dkernel,
        d: dd,
    } = dfilter;
    s.check(lengths, u, kernel, d);
    assert!(dy.len() >= s.batch * s.seq * s.width && du.len() >= s.batch * s.seq * s.width);
    assert!(dkernel.len() >= s.kernels * s.seq && dd.len() >= s.kernels);
    let per = s.channels_per_kernel();
    let w = s.width;
    for (b, &len) in lengths[..s.batch].iter().enumerate() {
        let base = b * s.seq * w;
        let seq_u = &u[base..base + s.seq * w];
        let seq_dy = &dy[base..base + s.seq * w];
        let seq_du = &mut du[base..base + s.seq * w];
        for k in 0..s.kernels {
            let ch = k * per..(k + 1) * per;
            let kern = &kernel[k * s.seq..(k + 1) * s.seq];
            let dkern = &mut dkernel[k * s.seq..(k + 1) * s.seq];
            // The channels of this kernel at logical step `step`.
            let at = |step: usize| {
                let r = dir.row(step, len) * w;
                r + ch.start..r + ch.end
            };
            // y[t] = D u[t] + sum_{j<=t} K[j] u[t-j]
            for t in 0..len {
                let g = &seq_dy[at(t)];
                dd[k] += dot(g, &seq_u[at(t)]);
                for (j, dk) in dkern[..=t].iter_mut().enumerate() {
                    *dk += dot(g, &seq_u[at(t - j)]);
                }
            }
            for i in 0..len {
                let out = at(i);
                let g = &seq_dy[at(i)];
                axpy(d[k], g, &mut seq_du[out.clone()]);
                for (t, &kj) in (i..len).zip(kern) {
                    let g = &seq_dy[at(t)];
                    axpy(kj, g, &mut seq_du[out.clone()]);
                }
            }
        }
    }
}

/// The same function as [`ssm_kernel`] + [`ssm_forward`], computed as the
/// recurrence `x_l = Abar x_{l-1} + u_l`, `y_l = Re(sum_n C_n Bbar_n x_l,n)
/// + D u_l` (complex state in f64), overwriting `y`. `O(seq * modes)` per
/// channel instead of `O(seq^2)`: the form for step-by-step inference.
// The one function that needs every operand of an SSM at once (its five
// parameters, input, output, lengths, both sizes and the direction): the
// reference the split kernel and convolution are checked against.
#[allow(clippy::too_many_arguments)]
pub fn ssm_recurrence<T: Float>(
    s: SsmShape,
    dims: SsmDims,
    dir: Direction,
    lengths: &[usize],
    a: &[T],
    w: &[T],
    c: &[T],
    log_dt: &[T],
    d: &[T],
    u: &[T],
    y: &mut [T],
) {
    assert_eq!(s.kernels, dims.kernels);
    let per = s.channels_per_kernel();
    let modes: Vec<Vec<Mode>> = (0..dims.kernels)
        .map(|k| {
            let dt = log_dt[k].to_f64().exp();
            (0..dims.modes)
                .map(|n| Mode::new(dims, a, w, c, k, n, dt))
                .collect()
        })
        .collect();
    let mut x = vec![Complex::ZERO; dims.modes];
    for (b, &len) in lengths[..s.batch].iter().enumerate() {
        y[(b * s.seq + len) * s.width..(b + 1) * s.seq * s.width].fill(T::ZERO);
        for ch in 0..s.width {
            let k = ch / per;
            x.fill(Complex::ZERO);
            for t in 0..len {
                let row = (b * s.seq + dir.row(t, len)) * s.width + ch;
                let ut = u[row].to_f64();
                let mut out = d[k].to_f64() * ut;
                for (xn, m) in x.iter_mut().zip(&modes[k]) {
                    *xn = m.abar * *xn + Complex::new(ut, 0.0);
                    out += (m.c * m.bbar * *xn).re;
                }
                y[row] = T::from_f64(out);
            }
        }
    }
}
