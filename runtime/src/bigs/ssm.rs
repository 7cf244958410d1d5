//! The SSM math of a BiGS layer: each kernel `K[l]` from its diagonal
//! complex parameters (in f64, as the trainer computes it), and the causal
//! convolution that applies it along either direction.
//!
//! Owns: the complex arithmetic (firmware-sized, no libm `exp`/`sin`/`cos`)
//! and the convolution. Must not touch: memory beyond the slices it is
//! given (the encoder's arena holds kernels and outputs).

use super::Ssm;
use crate::error::RuntimeError;
use crate::kernels;

/// `1/k` for the Taylor terms: multiplying by a table rather than dividing
/// keeps f64 division (soft-float on Cortex-M, about 1 KB of code) out of the
/// firmware; a term moves by at most an ulp of f64.
const INV_K: [f64; 13] = {
    let mut t = [0.0; 13];
    let mut k = 1;
    while k < t.len() {
        t[k] = 1.0 / k as f64;
        k += 1;
    }
    t
};

/// `exp(z)` and `phi(z) = (exp(z) - 1) / z` for `z = re + i im` in f64, by
/// scaling and squaring: a Taylor series on `w = z / 2^m` (`|w| <= 1/16`,
/// 12 terms, truncation below 1e-23), then `m` doublings, `exp(2w) =
/// exp(w)^2` and `phi(2w) = phi(w) (exp(w) + 1) / 2`. Each doubling can
/// double the relative error, so it ends near `2^m` ulp: 1e-13 for `|z|` =
/// 100, far below the f32 kernel's rounding. It stands in for libm's f64
/// `exp`, `sin` and `cos`, whose argument reduction costs firmware about 6 KB
/// of code, and `phi` gives the discretised `Bbar = dt phi(dt A)` without a
/// complex division (and without the cancellation of `exp(z) - 1` for small
/// `z`). Non-finite inputs give non-finite outputs, never a panic.
fn cexp_phi(re: f64, im: f64) -> ((f64, f64), (f64, f64)) {
    let mut size = re.abs() + im.abs();
    let mut scale = 1.0;
    let mut m = 0;
    // Bounded: 2^1100 exceeds every finite f64.
    while size > 1.0 / 16.0 && m < 1100 {
        size *= 0.5;
        scale *= 0.5;
        m += 1;
    }
    let (wre, wim) = (re * scale, im * scale);
    // 1 + w (1 + w/2 (1 + w/3 (...))), Horner from the highest term; the
    // value before the last step (k = 1) is phi(w) = 1 + w/2 (1 + w/3 (...)).
    let (mut tre, mut tim) = (1.0, 0.0);
    for inv in INV_K[2..].iter().rev() {
        let (pre, pim) = (wre * tre - wim * tim, wre * tim + wim * tre);
        tre = 1.0 + pre * inv;
        tim = pim * inv;
    }
    let (mut pre, mut pim) = (tre, tim);
    let (mut ere, mut eim) = (1.0 + (wre * tre - wim * tim), wre * tim + wim * tre);
    for _ in 0..m {
        let (hre, him) = (0.5 * (ere + 1.0), 0.5 * eim);
        (pre, pim) = (pre * hre - pim * him, pre * him + pim * hre);
        (ere, eim) = (ere * ere - eim * eim, 2.0 * ere * eim);
    }
    ((ere, eim), (pre, pim))
}

/// `exp(re + i im)` (see [`cexp_phi`]).
fn cexp(re: f64, im: f64) -> (f64, f64) {
    cexp_phi(re, im).0
}

/// `(re + i im)^n` by binary exponentiation.
fn cpow(re: f64, im: f64, mut n: usize) -> (f64, f64) {
    let (mut rre, mut rim) = (1.0, 0.0);
    let (mut bre, mut bim) = (re, im);
    while n > 0 {
        if n & 1 == 1 {
            let t = rre * bre - rim * bim;
            rim = rre * bim + rim * bre;
            rre = t;
        }
        let t = bre * bre - bim * bim;
        bim *= 2.0 * bre;
        bre = t;
        n >>= 1;
    }
    (rre, rim)
}

/// `K[l] = Re(sum_n C_n Bbar_n Abar_n^l)` in f64, as the trainer computes it.
pub(super) fn ssm_kernel(s: &Ssm<'_>, kernel: usize, modes: usize, out: &mut [f32]) {
    let dt = cexp(s.log_dt[kernel] as f64, 0.0).0;
    for v in out.iter_mut() {
        *v = 0.0;
    }
    // Accumulate in f64 per position: the f32 output is rounded once.
    let mut acc = [0f64; 64];
    let mut start = 0;
    while start < out.len() {
        let chunk = (out.len() - start).min(acc.len());
        for a in acc[..chunk].iter_mut() {
            *a = 0.0;
        }
        for n in 0..modes {
            let i = kernel * modes + n;
            let (are, aim) = (-cexp(s.a[i] as f64, 0.0).0, s.w[i] as f64);
            // Abar = exp(dt A); Bbar = (Abar - 1) / A = dt phi(dt A).
            let ((abre, abim), (phre, phim)) = cexp_phi(dt * are, dt * aim);
            let (bbre, bbim) = (dt * phre, dt * phim);
            let (cre, cim) = (s.c[2 * i] as f64, s.c[2 * i + 1] as f64);
            // z = C Bbar Abar^start, the power by squaring: a chunk costs
            // O(log start) to enter, so the whole kernel stays linear in
            // its length (stepping from 0 made it quadratic).
            let (pre, pim) = cpow(abre, abim, start);
            let (zre0, zim0) = (cre * bbre - cim * bbim, cre * bbim + cim * bbre);
            let (mut zre, mut zim) = (zre0 * pre - zim0 * pim, zre0 * pim + zim0 * pre);
            for a in acc[..chunk].iter_mut() {
                *a += zre;
                let t = zre * abre - zim * abim;
                zim = zre * abim + zim * abre;
                zre = t;
            }
        }
        for (o, a) in out[start..start + chunk].iter_mut().zip(&acc[..chunk]) {
            *o = *a as f32;
        }
        start += chunk;
    }
}

#[allow(clippy::too_many_arguments)] // buffers and sizes, listed as the kernels do
/// `out[t] = D u[t] + sum_{j<=t} K[j] u[t-j]` along `dir` over `n` rows of
/// `width`, channel group `g` of `groups` using kernel `g`, whose lag-0 tap
/// the caller has made `K[0] + D` (so the skip term costs nothing). Each
/// output row is one [`kernels::mix`] of the input rows it depends on,
/// which runs over rows in increasing order: the backward direction weights
/// rows `t..n` by `K[0..n-t]`, and the forward one rows `0..=t` by
/// `K[t..=0]`, so its kernels are given reversed (`K[max_len - 1 - l]` at
/// `l`).
pub(super) fn ssm_conv(
    kernels: &[f32],
    max_len: usize,
    groups: usize,
    u: &[f32],
    out: &mut [f32],
    n: usize,
    width: usize,
    backward: bool,
) -> Result<(), RuntimeError> {
    let per = width / groups;
    for t in 0..n {
        let rt = t * width;
        for g in 0..groups {
            let ch = g * per..(g + 1) * per;
            let kern = &kernels[g * max_len..(g + 1) * max_len];
            let (p, first) = if backward {
                (&kern[..n - t], rt)
            } else {
                (&kern[max_len - 1 - t..], 0)
            };
            let o = &mut out[rt + ch.start..rt + ch.end];
            kernels::mix(p, &u[first + ch.start..], width, o)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::bigs::tests::max_diff;
    use std::vec;
    use std::vec::Vec;

    /// The firmware-sized complex exponential against std's exp, sin and cos,
    /// over the range SSM parameters reach and beyond.
    #[test]
    fn cexp_matches_std() {
        let mut rng = crate::rng::Rng::new(3);
        let mut worst = 0f64;
        for i in 0..20_000 {
            let span = [1e-3, 1.0, 30.0, 700.0][i % 4];
            let re = -span * rng.next_f64();
            let im = span * (2.0 * rng.next_f64() - 1.0);
            let (gre, gim) = super::cexp(re, im);
            let m = re.exp();
            let (wre, wim) = (m * im.cos(), m * im.sin());
            let err = ((gre - wre).powi(2) + (gim - wim).powi(2)).sqrt() / m.max(f64::MIN_POSITIVE);
            if m > 1e-290 {
                worst = worst.max(err);
            }
        }
        assert!(worst < 1e-10, "relative error {worst}");
        assert_eq!(super::cexp(0.0, 0.0), (1.0, 0.0));
        assert!((super::cexp(5.0, 0.0).0 - 5f64.exp()).abs() < 1e-12 * 5f64.exp());
        assert!(super::cexp(f64::NAN, 0.0).0.is_nan());
        assert!(!super::cexp(f64::INFINITY, 1.0).0.is_finite());
    }

    /// One SSM kernel (one group of `modes` modes) with parameters in the
    /// trainer's init ranges.
    fn ssm_params(modes: usize) -> [Vec<f32>; 5] {
        let mut rng = crate::rng::Rng::new(5);
        let a = (0..modes)
            .map(|_| -0.7 + 0.1 * rng.next_f64() as f32)
            .collect();
        let w = (0..modes)
            .map(|n| core::f32::consts::PI * n as f32)
            .collect();
        let c = (0..2 * modes)
            .map(|_| rng.next_f64() as f32 - 0.5)
            .collect();
        [a, w, c, vec![-3.0], vec![0.5]]
    }

    /// The kernel against its definition, stepped one power at a time, across
    /// several 64-position chunks.
    #[test]
    fn ssm_kernel_matches_its_definition_across_chunks() {
        let [a, w, c, log_dt, d] = ssm_params(4);
        let s = Ssm {
            a: &a,
            w: &w,
            c: &c,
            log_dt: &log_dt,
            d: &d,
        };
        let mut out = vec![0f32; 300];
        super::ssm_kernel(&s, 0, 4, &mut out);
        let dt = (log_dt[0] as f64).exp();
        let mut want = vec![0f64; out.len()];
        for n in 0..4 {
            let (are, aim) = (-(a[n] as f64).exp(), w[n] as f64);
            let m = (dt * are).exp();
            let (abre, abim) = (m * (dt * aim).cos(), m * (dt * aim).sin());
            let den = are * are + aim * aim;
            let (nre, nim) = (abre - 1.0, abim);
            let (bre, bim) = ((nre * are + nim * aim) / den, (nim * are - nre * aim) / den);
            let (cre, cim) = (c[2 * n] as f64, c[2 * n + 1] as f64);
            let (mut zre, mut zim) = (cre * bre - cim * bim, cre * bim + cim * bre);
            for v in want.iter_mut() {
                *v += zre;
                let t = zre * abre - zim * abim;
                zim = zre * abim + zim * abre;
                zre = t;
            }
        }
        let worst = max_diff(&out, &want);
        assert!(worst < 1e-6, "largest difference {worst}");
    }

    /// Kernel generation is linear in its length: a 131,072-position kernel of
    /// 16 modes takes 2M complex steps and milliseconds; stepping each 64-position
    /// chunk's start from 0 took 2.1G steps, most of them on subnormals, and
    /// over a minute.
    #[test]
    fn ssm_kernel_cost_is_linear_in_its_length() {
        let [a, w, c, log_dt, d] = ssm_params(16);
        let s = Ssm {
            a: &a,
            w: &w,
            c: &c,
            log_dt: &log_dt,
            d: &d,
        };
        let mut out = vec![0f32; 1 << 17];
        let t = std::time::Instant::now();
        super::ssm_kernel(&s, 0, 16, &mut out);
        let took = t.elapsed().as_secs_f64();
        // Linear generation takes milliseconds natively and about a second
        // in a debug build under qemu-aarch64 on a busy host (1.18 s was
        // seen); the quadratic one it replaced took over a minute natively.
        // 10 s tells the two apart without failing on a loaded machine.
        assert!(
            took < 10.0,
            "{took:.2} s for a kernel of {} positions",
            out.len()
        );
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
