//! The SSM convolution of [`super::ssm`] computed with FFTs: `O(L log L)`
//! per channel instead of the direct loop's `O(L^2)`, for long sequences.
//! Same signatures, same results up to rounding (tests compare the two),
//! same padding rules: rows at and after a sequence's length are never
//! read, its outputs there are zero and its input gradients untouched.
//!
//! Each sequence of real length `L` is zero-padded to `N = 2^k >= 2L`, so
//! the circular products below are the linear convolution and correlation.
//! Transforms are complex f64 (rustfft) and every real signal rides in one
//! half of a complex one: two channels share a transform in the forward
//! pass, and a channel's `u` and `dy` share one in the backward pass (the
//! spectra of the halves separate by conjugate symmetry).
//!
//! With `F` the DFT, kernel `K`, input `u` and output gradient `dy` in
//! logical (scan) order:
//! - `y  = F^-1(F K . F u)[..L] + D u`
//! - `du = F^-1(conj(F K) . F dy)[..L] + D dy`   (correlation with K)
//! - `dK = F^-1(sum over channels of conj(F u) . F dy)[..L]`
//!
//! A CPU kernel like [`super::ssm`]: the backend picks it by length.

use super::float::Float;
use crate::backend::shapes::{Direction, SsmConv, SsmFilterGrads, SsmShape};
use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};
use std::cell::RefCell;
use std::sync::Arc;

/// Sequences at least this long use the FFT. Measured side by side by
/// `fft_matches_direct_and_times_both` (128 channels, one thread, this
/// 2-core x86_64, 2026-11-30): at length 112 the FFT took 1.1x (forward) and
/// 1.2x (backward) the direct loop's time, at 128 0.81x and 0.80x, at 256
/// 0.43x and 0.66x, at 1024 0.14x and 0.19x.
pub const FFT_FROM_LEN: usize = 120;

thread_local! {
    // Plans are cached per thread (the backend runs one sequence per task).
    static PLANNER: RefCell<FftPlanner<f64>> = RefCell::new(FftPlanner::new());
}

/// Forward and inverse transforms of size `n`, and scratch for them.
struct Plans {
    n: usize,
    fwd: Arc<dyn Fft<f64>>,
    inv: Arc<dyn Fft<f64>>,
    scratch: Vec<Complex64>,
}

impl Plans {
    fn for_len(len: usize) -> Plans {
        let n = (2 * len).next_power_of_two();
        let (fwd, inv) = PLANNER.with(|p| {
            let mut p = p.borrow_mut();
            (p.plan_fft_forward(n), p.plan_fft_inverse(n))
        });
        let s = fwd
            .get_inplace_scratch_len()
            .max(inv.get_inplace_scratch_len());
        Plans {
            n,
            fwd,
            inv,
            scratch: vec![Complex64::default(); s],
        }
    }
    fn forward(&mut self, buf: &mut [Complex64]) {
        self.fwd.process_with_scratch(buf, &mut self.scratch);
    }
    fn inverse(&mut self, buf: &mut [Complex64]) {
        self.inv.process_with_scratch(buf, &mut self.scratch);
    }
}

/// Channel `c` of logical step `t` of a sequence of length `len`.
#[inline]
fn at(dir: Direction, t: usize, len: usize, width: usize, c: usize) -> usize {
    dir.row(t, len) * width + c
}

/// The spectrum of kernel `k`'s first `len` taps.
fn kernel_spectrum<T: Float>(
    p: &mut Plans,
    kernel: &[T],
    seq: usize,
    k: usize,
    len: usize,
) -> Vec<Complex64> {
    let mut kf = vec![Complex64::default(); p.n];
    for (z, &v) in kf.iter_mut().zip(&kernel[k * seq..k * seq + len]) {
        z.re = v.to_f64();
    }
    p.forward(&mut kf);
    kf
}

/// [`super::ssm::ssm_forward`] for one sequence (`s.batch == 1`).
pub fn ssm_forward_fft<T: Float>(
    s: SsmShape,
    dir: Direction,
    len: usize,
    u: &[T],
    kernel: &[T],
    d: &[T],
    y: &mut [T],
) {
    assert_eq!(s.batch, 1, "one sequence at a time");
    assert!(len <= s.seq && u.len() >= s.seq * s.width && y.len() >= s.seq * s.width);
    let w = s.width;
    y[len * w..s.seq * w].fill(T::ZERO);
    if len == 0 {
        return;
    }
    let per = w / s.kernels;
    let mut p = Plans::for_len(len);
    let scale = 1.0 / p.n as f64;
    let mut buf = vec![Complex64::default(); p.n];
    for (k, dk) in d[..s.kernels].iter().enumerate() {
        let kf = kernel_spectrum(&mut p, kernel, s.seq, k, len);
        let dk = dk.to_f64();
        // Channels two at a time: (c, c + 1) as the real and imaginary parts.
        for c in (k * per..(k + 1) * per).step_by(2) {
            let pair = c + 1 < (k + 1) * per;
            buf.fill(Complex64::default());
            for (t, z) in buf[..len].iter_mut().enumerate() {
                let i = at(dir, t, len, w, c);
                z.re = u[i].to_f64();
                if pair {
                    z.im = u[i + 1].to_f64();
                }
            }
            p.forward(&mut buf);
            for (z, f) in buf.iter_mut().zip(&kf) {
                *z *= f;
            }
            p.inverse(&mut buf);
            for (t, z) in buf[..len].iter().enumerate() {
                let i = at(dir, t, len, w, c);
                y[i] = T::from_f64(z.re * scale + dk * u[i].to_f64());
                if pair {
                    y[i + 1] = T::from_f64(z.im * scale + dk * u[i + 1].to_f64());
                }
            }
        }
    }
}

/// [`super::ssm::ssm_backward`] for one sequence (`s.batch == 1`, one
/// length): adds into `du` (real rows), `dfilter.kernel [kernels, seq]`
/// and `dfilter.d [kernels]`.
pub fn ssm_backward_fft<T: Float>(
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
    assert_eq!(s.batch, 1, "one sequence at a time");
    assert_eq!(lengths.len(), 1, "one sequence at a time");
    let len = lengths[0];
    assert!(len <= s.seq);
    if len == 0 {
        return;
    }
    let w = s.width;
    let n_per = w / s.kernels;
    let mut p = Plans::for_len(len);
    let n = p.n;
    let scale = 1.0 / n as f64;
    let mut z = vec![Complex64::default(); n];
    let mut acc = vec![Complex64::default(); n];
    // Two channels' conj(F K) . F dy, packed for one inverse transform.
    let mut dup = vec![Complex64::default(); n];
    for k in 0..s.kernels {
        let kf = kernel_spectrum(&mut p, kernel, s.seq, k, len);
        let dk = d[k].to_f64();
        acc.fill(Complex64::default());
        let channels: Vec<usize> = (k * n_per..(k + 1) * n_per).collect();
        for pair in channels.chunks(2) {
            dup.fill(Complex64::default());
            for (slot, &c) in pair.iter().enumerate() {
                // z = F(u + i dy); F u and F dy separate by symmetry:
                // F u[m] = (z[m] + conj z[-m]) / 2, F dy[m] = (z[m] - conj z[-m]) / 2i.
                z.fill(Complex64::default());
                let mut skip = 0.0;
                for (t, zt) in z[..len].iter_mut().enumerate() {
                    let i = at(dir, t, len, w, c);
                    let (ui, gi) = (u[i].to_f64(), dy[i].to_f64());
                    *zt = Complex64::new(ui, gi);
                    skip += ui * gi;
                }
                dd[k] += T::from_f64(skip);
                p.forward(&mut z);
                for m in 0..n {
                    let zc = z[(n - m) % n].conj();
                    let fu = (z[m] + zc) * 0.5;
                    let fg = (z[m] - zc) * Complex64::new(0.0, -0.5);
                    acc[m] += fu.conj() * fg;
                    let g = kf[m].conj() * fg;
                    // Slot 0 in the real part, slot 1 in the imaginary part.
                    dup[m] += if slot == 0 {
                        g
                    } else {
                        g * Complex64::new(0.0, 1.0)
                    };
                }
            }
            p.inverse(&mut dup);
            for (slot, &c) in pair.iter().enumerate() {
                for (t, v) in dup[..len].iter().enumerate() {
                    let i = at(dir, t, len, w, c);
                    let part = if slot == 0 { v.re } else { v.im };
                    du[i] += T::from_f64(part * scale + dk * dy[i].to_f64());
                }
            }
        }
        p.inverse(&mut acc);
        for (g, v) in dkernel[k * s.seq..k * s.seq + len].iter_mut().zip(&acc) {
            *g += T::from_f64(v.re * scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ssm::{ssm_backward, ssm_forward};
    use super::*;
    use kilobyte_runtime::rng::Rng;
    use std::time::Instant;

    fn random(rng: &mut Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.normal()).collect()
    }

    /// Forward and backward against the direct loops, both directions,
    /// padded and full lengths, odd channel counts per kernel; then both
    /// timed at the preset lengths (the crossover sets FFT_FROM_LEN).
    #[test]
    fn fft_matches_direct_and_times_both() {
        let mut rng = Rng::new(4);
        for &(seq, len, width, kernels) in &[
            (9, 9, 6, 2),
            (9, 5, 3, 1),
            (16, 1, 4, 4),
            (40, 33, 10, 2),
            (64, 64, 7, 1),
            (140, 130, 4, 2),
        ] {
            let s = SsmShape {
                batch: 1,
                seq,
                width,
                kernels,
            };
            for dir in [Direction::Forward, Direction::Backward] {
                let u = random(&mut rng, seq * width);
                let kern = random(&mut rng, kernels * seq);
                let d = random(&mut rng, kernels);
                let dy = random(&mut rng, seq * width);
                let (mut y1, mut y2) = (vec![7.0; seq * width], vec![7.0; seq * width]);
                ssm_forward(s, dir, &[len], &u, &kern, &d, &mut y1);
                ssm_forward_fft(s, dir, len, &u, &kern, &d, &mut y2);
                let init = random(&mut rng, seq * width + kernels * seq + kernels);
                let (mut g1, mut g2) = (init.clone(), init);
                {
                    let (du, rest) = g1.split_at_mut(seq * width);
                    let (dk, dd) = rest.split_at_mut(kernels * seq);
                    ssm_backward(
                        s,
                        dir,
                        SsmConv {
                            u: &u,
                            kernel: &kern,
                            d: &d,
                            lengths: &[len],
                        },
                        &dy,
                        du,
                        SsmFilterGrads { kernel: dk, d: dd },
                    );
                }
                {
                    let (du, rest) = g2.split_at_mut(seq * width);
                    let (dk, dd) = rest.split_at_mut(kernels * seq);
                    ssm_backward_fft(
                        s,
                        dir,
                        SsmConv {
                            u: &u,
                            kernel: &kern,
                            d: &d,
                            lengths: &[len],
                        },
                        &dy,
                        du,
                        SsmFilterGrads { kernel: dk, d: dd },
                    );
                }
                for (what, a, b) in [("y", &y1, &y2), ("grads", &g1, &g2)] {
                    let worst = a
                        .iter()
                        .zip(b.iter())
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f64::max);
                    assert!(
                        worst < 1e-9,
                        "{what} seq {seq} len {len} {dir:?}: {worst:e}"
                    );
                }
            }
        }

        // Timing, f32, one thread, the micro/small/base widths' shape.
        for &len in &[64usize, 80, 96, 112, 128, 256, 512, 1024] {
            let s = SsmShape {
                batch: 1,
                seq: len,
                width: 128,
                kernels: 1,
            };
            let u: Vec<f32> = (0..len * 128).map(|i| (i % 7) as f32 * 0.1).collect();
            let kern: Vec<f32> = (0..len).map(|i| 1.0 / (1 + i) as f32).collect();
            let mut y = vec![0f32; len * 128];
            let reps = (1 << 22) / (len * len) + 1;
            let t0 = Instant::now();
            for _ in 0..reps {
                ssm_forward(s, Direction::Forward, &[len], &u, &kern, &[0.5], &mut y);
            }
            let direct = t0.elapsed().as_secs_f64() / reps as f64;
            let t0 = Instant::now();
            for _ in 0..reps {
                ssm_forward_fft(s, Direction::Forward, len, &u, &kern, &[0.5], &mut y);
            }
            let fft = t0.elapsed().as_secs_f64() / reps as f64;
            let dy = u.clone();
            let mut g = vec![0f32; len * 128 + len + 1];
            let t0 = Instant::now();
            for _ in 0..reps {
                let (du, rest) = g.split_at_mut(len * 128);
                let (dk, dd) = rest.split_at_mut(len);
                ssm_backward(
                    s,
                    Direction::Forward,
                    SsmConv {
                        u: &u,
                        kernel: &kern,
                        d: &[0.5],
                        lengths: &[len],
                    },
                    &dy,
                    du,
                    SsmFilterGrads { kernel: dk, d: dd },
                );
            }
            let direct_b = t0.elapsed().as_secs_f64() / reps as f64;
            let t0 = Instant::now();
            for _ in 0..reps {
                let (du, rest) = g.split_at_mut(len * 128);
                let (dk, dd) = rest.split_at_mut(len);
                ssm_backward_fft(
                    s,
                    Direction::Forward,
                    SsmConv {
                        u: &u,
                        kernel: &kern,
                        d: &[0.5],
                        lengths: &[len],
                    },
                    &dy,
                    du,
                    SsmFilterGrads { kernel: dk, d: dd },
                );
            }
            let fft_b = t0.elapsed().as_secs_f64() / reps as f64;
            eprintln!(
                "ssm, 128 channels, length {len}: forward direct {:.1} us, fft {:.1} us ({:.2}x); \
                 backward direct {:.1} us, fft {:.1} us ({:.2}x)",
                direct * 1e6,
                fft * 1e6,
                direct / fft,
                direct_b * 1e6,
                fft_b * 1e6,
                direct_b / fft_b
            );
        }
    }
}
