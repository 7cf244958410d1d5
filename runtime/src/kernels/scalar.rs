//! The definition of every kernel, as plain loops. The SIMD versions must
//! match these up to the order of float additions, and they share
//! [`quantize_q8`]'s rounding exactly. These also run on targets without a
//! SIMD version (thumbv7em, wasm32) and under Miri.

use super::{
    check_at_least, check_attention, check_len, check_matmul, check_rows, Heads, I8Rows,
    KernelError, Matrix, Weights,
};
use half::bf16;
use kilobyte_format::dtype::QK;
use kilobyte_format::{BlockQ4, BlockQ8};

// ---------------------------------------------------------------------------
// Quantisation of activations

/// Quantises `x` (a whole number of 32-value blocks) to q8 blocks in `out`,
/// the form in which [`matmul`] multiplies it with q8/q4 weights.
///
/// Per block, the format's one q8 encoder (`quant::encode_q8`): `d` the
/// smallest f16 with `127 d >= amax` (capped at f16's largest) and `q =
/// round_half_even(x / d)` clamped to ±127, with `x / d` computed as
/// `x * (1 / d)`: that is what SIMD does, so every backend produces
/// identical blocks. Each value is off by at most `d / 2`; a product with
/// weights `w` is off by at most `sum_blocks(d / 2 * sum |w|)` (tested). Blocks whose `amax / 127` is below f16's normal range (6.1e-5)
/// lose relative precision; activations after a norm are far above that.
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) -> Result<(), KernelError> {
    if !x.len().is_multiple_of(QK) {
        return Err(KernelError::BadShape {
            rows: 1,
            cols: x.len(),
        });
    }
    check_at_least("out", x.len() / QK, out.len())?;
    for (src, dst) in x.chunks_exact(QK).zip(out) {
        // Whole blocks: the length was checked above.
        if let Ok(src) = src.try_into() {
            kilobyte_format::quant::encode_q8(src, dst);
        }
    }
    Ok(())
}

/// The 32 values of a q4 block in element order: byte `j` holds element `j`
/// in its low nibble and `j + 16` in its high nibble, both offset by 8.
pub(super) fn q4_values(b: &BlockQ4) -> [i8; QK] {
    let mut v = [0i8; QK];
    for (j, &byte) in b.qs.iter().enumerate() {
        v[j] = (byte & 0x0f) as i8 - 8;
        v[j + QK / 2] = (byte >> 4) as i8 - 8;
    }
    v
}

/// The exact integer dot product of two q8 blocks: `SMLAD` on cores with
/// the DSP extension (the same integer), else [`dot_i8_plain`].
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(all(kilobyte_dsp, not(miri)))]
    return super::dsp::dot_i8(a, b);
    #[allow(unreachable_code)]
    dot_i8_plain(a, b)
}

/// `sum a[i] * b[i]`, the plain loop (the reference for the DSP version).
pub fn dot_i8_plain(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&p, &q)| p as i32 * q as i32).sum()
}

fn dot_q8(w: &[BlockQ8], x: &[BlockQ8]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(a, b)| a.scale() * b.scale() * dot_i8(&a.qs, &b.qs) as f32)
        .sum()
}

fn dot_q4(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(a, b)| a.scale() * b.scale() * dot_i8(&q4_values(a), &b.qs) as f32)
        .sum()
}

// ---------------------------------------------------------------------------
// Matrix products

/// `y = W x`; see [`super::matvec`].
pub fn matvec(
    w: &Matrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [BlockQ8],
) -> Result<(), KernelError> {
    check_len("x", w.cols, x.len())?;
    matmul(w, x, y, scratch)
}

/// `y_i = W x_i` for each input; see [`super::matmul`].
pub fn matmul(
    w: &Matrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [BlockQ8],
) -> Result<(), KernelError> {
    let n = check_matmul(w, x, y, scratch)?;
    if w.is_quantized() {
        quantize_q8(x, scratch)?;
    }
    matmul_prepared(w, x, scratch, n, y);
    Ok(())
}

/// [`matmul`] once the shapes are checked and, for q8/q4 weights, `x` is
/// quantised into `xq`: the row loop the dispatcher splits across threads.
pub(super) fn matmul_prepared(w: &Matrix, x: &[f32], xq: &[BlockQ8], n: usize, y: &mut [f32]) {
    let (rows, cols, blocks) = (w.rows, w.cols, w.cols / QK);
    for i in 0..n {
        let x = &x[i * cols..][..cols];
        for (r, y) in y[i * rows..][..rows].iter_mut().enumerate() {
            *y = match w.weights {
                Weights::F32(w) => dot_f32(&w[r * cols..][..cols], x),
                Weights::F16(w) => w[r * cols..][..cols]
                    .iter()
                    .zip(x)
                    .map(|(w, x)| w.to_f32() * x)
                    .sum(),
                Weights::BF16(w) => w[r * cols..][..cols]
                    .iter()
                    .zip(x)
                    .map(|(w, x)| w.to_f32() * x)
                    .sum(),
                Weights::Q8(w) => dot_q8(&w[r * blocks..][..blocks], &xq[i * blocks..]),
                Weights::Q4(w) => dot_q4(&w[r * blocks..][..blocks], &xq[i * blocks..]),
            };
        }
    }
}

/// Writes row `row` of `w`, dequantised, to `out` (`w.cols` values): an
/// embedding lookup.
pub fn embedding_row(w: &Matrix, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
    w.check()?;
    check_len("out", w.cols, out.len())?;
    if row >= w.rows {
        return Err(KernelError::RowOutOfRange { row, rows: w.rows });
    }
    let (cols, blocks) = (w.cols, w.cols / QK);
    match w.weights {
        Weights::F32(w) => out.copy_from_slice(&w[row * cols..][..cols]),
        Weights::F16(w) => {
            for (o, v) in out.iter_mut().zip(&w[row * cols..]) {
                *o = v.to_f32();
            }
        }
        Weights::BF16(w) => {
            for (o, v) in out.iter_mut().zip(&w[row * cols..]) {
                *o = v.to_f32();
            }
        }
        Weights::Q8(w) => {
            for (o, b) in out.chunks_exact_mut(QK).zip(&w[row * blocks..]) {
                let d = b.scale();
                for (o, &q) in o.iter_mut().zip(&b.qs) {
                    *o = d * q as f32;
                }
            }
        }
        Weights::Q4(w) => {
            for (o, b) in out.chunks_exact_mut(QK).zip(&w[row * blocks..]) {
                let d = b.scale();
                for (o, q) in o.iter_mut().zip(q4_values(b)) {
                    *o = d * q as f32;
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Vector ops

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `a · b`.
pub fn dot(a: &[f32], b: &[f32]) -> Result<f32, KernelError> {
    check_len("b", a.len(), b.len())?;
    Ok(dot_f32(a, b))
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    check_len("y", x.len(), y.len())?;
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
    Ok(())
}

/// `acc += x` (residual connections, biases).
pub fn add(acc: &mut [f32], x: &[f32]) -> Result<(), KernelError> {
    check_len("x", acc.len(), x.len())?;
    for (a, x) in acc.iter_mut().zip(x) {
        *a += x;
    }
    Ok(())
}

/// `acc *= x` elementwise (BiGS's gates).
pub fn mul(acc: &mut [f32], x: &[f32]) -> Result<(), KernelError> {
    check_len("x", acc.len(), x.len())?;
    for (a, x) in acc.iter_mut().zip(x) {
        *a *= x;
    }
    Ok(())
}

/// `x *= alpha`.
pub fn scale(x: &mut [f32], alpha: f32) {
    for v in x {
        *v *= alpha;
    }
}

/// `out = (x - mean) / sqrt(var + eps) * weight + bias`, with the biased
/// variance, computed in two passes for accuracy.
pub fn layer_norm(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_len("weight", x.len(), weight.len())?;
    check_len("bias", x.len(), bias.len())?;
    check_len("out", x.len(), out.len())?;
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / libm::sqrtf(var + eps);
    for (((o, v), w), b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v - mean) * inv * w + b;
    }
    Ok(())
}

/// `out = x / sqrt(mean(x^2) + eps) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    check_len("weight", x.len(), weight.len())?;
    check_len("out", x.len(), out.len())?;
    let mean_sq = dot_f32(x, x) / x.len() as f32;
    let inv = 1.0 / libm::sqrtf(mean_sq + eps);
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv * w;
    }
    Ok(())
}

/// `sqrt(2 / pi)`, GELU's constant.
pub(super) const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU, tanh form: `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`,
/// in place.
pub fn gelu_tanh(x: &mut [f32]) {
    for v in x {
        let u = SQRT_2_OVER_PI * (*v + 0.044715 * *v * *v * *v);
        *v = 0.5 * *v * (1.0 + libm::tanhf(u));
    }
}

/// Softmax in place, with the maximum subtracted first so `exp` cannot
/// overflow. Infinite inputs keep their limits instead of becoming NaN
/// (`inf - inf`): the `+inf` entries share all the mass, and when every
/// entry is `-inf` the mass is spread evenly. A NaN input gives NaN, for the
/// caller to report.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max.is_infinite() && !x.iter().any(|v| v.is_nan()) {
        let top = x.iter().filter(|&&v| v == max).count() as f32;
        for v in x.iter_mut() {
            *v = if *v == max { 1.0 / top } else { 0.0 };
        }
        return;
    }
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    scale(x, 1.0 / sum);
}

// ---------------------------------------------------------------------------
// Attention

/// One query against a key/value cache; see [`super::attention`].
pub fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n_pos: usize,
    heads: Heads,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_attention(q, n_pos, heads, scores, out)?;
    check_rows("keys", n_pos, heads.width(), keys.len())?;
    check_rows("values", n_pos, heads.width(), values.len())?;
    let (hd, width) = (heads.head_dim, heads.width());
    if width == 0 {
        return Ok(());
    }
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let scores = &mut scores[..n_pos];
    for h in 0..heads.n_heads {
        let q_h = &q[h * hd..][..hd];
        for (i, s) in scores.iter_mut().enumerate() {
            *s = dot_f32(q_h, &keys[i * width + h * hd..][..hd]) * scale;
        }
        softmax(scores);
        let out_h = &mut out[h * hd..][..hd];
        out_h.fill(0.0);
        for (i, &p) in scores.iter().enumerate() {
            for (o, v) in out_h.iter_mut().zip(&values[i * width + h * hd..][..hd]) {
                *o += p * v;
            }
        }
    }
    Ok(())
}

/// Quantises one cache row (`heads.width()` values) to `q`, with one scale
/// per head in `scales`: `q = round_half_even(x / s)` with `s` the bf16
/// nearest `amax / 127`, clamped to ±127, so each value is off by at most
/// `s / 2` (bf16 rounding moves `amax / s` by under 0.5%, well inside the
/// clamp's half step).
pub fn quantize_row_i8(
    x: &[f32],
    heads: Heads,
    q: &mut [i8],
    scales: &mut [bf16],
) -> Result<(), KernelError> {
    check_len("x", heads.width(), x.len())?;
    check_len("q", heads.width(), q.len())?;
    check_len("scales", heads.n_heads, scales.len())?;
    if heads.head_dim == 0 {
        return Ok(());
    }
    let parts = x
        .chunks_exact(heads.head_dim)
        .zip(q.chunks_exact_mut(heads.head_dim));
    for ((x, q), s) in parts.zip(scales) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        *s = bf16::from_f32(amax / 127.0);
        let stored = s.to_f32();
        let inv = if stored > 0.0 { 1.0 / stored } else { 0.0 };
        for (q, &v) in q.iter_mut().zip(x) {
            *q = libm::rintf((v * inv).clamp(-127.0, 127.0)) as i8;
        }
    }
    Ok(())
}

/// [`attention`] over an i8 cache; see [`super::attention_i8`].
pub fn attention_i8(
    q: &[f32],
    keys: I8Rows,
    values: I8Rows,
    n_pos: usize,
    heads: Heads,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_attention(q, n_pos, heads, scores, out)?;
    for (what, rows) in [("keys", keys), ("values", values)] {
        check_rows(what, n_pos, heads.width(), rows.values.len())?;
        check_rows(what, n_pos, heads.n_heads, rows.scales.len())?;
    }
    let (hd, width, n_heads) = (heads.head_dim, heads.width(), heads.n_heads);
    if width == 0 {
        return Ok(());
    }
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let scores = &mut scores[..n_pos];
    for h in 0..n_heads {
        let q_h = &q[h * hd..][..hd];
        for (i, s) in scores.iter_mut().enumerate() {
            let k = &keys.values[i * width + h * hd..][..hd];
            let dot: f32 = q_h.iter().zip(k).map(|(a, &b)| a * b as f32).sum();
            *s = dot * keys.scales[i * n_heads + h].to_f32() * scale;
        }
        softmax(scores);
        let out_h = &mut out[h * hd..][..hd];
        out_h.fill(0.0);
        for (i, &p) in scores.iter().enumerate() {
            let p = p * values.scales[i * n_heads + h].to_f32();
            for (o, &v) in out_h
                .iter_mut()
                .zip(&values.values[i * width + h * hd..][..hd])
            {
                *o += p * v as f32;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The per-head steps of the attention driver in `super`, with the same
// signatures as the SIMD backends'. Row `i` of a cache starts at
// `cache[i * stride]`; the slices are already offset to the head's columns.

/// `scores[i] = q · keys[i]`.
pub(super) fn head_dots(q: &[f32], keys: &[f32], stride: usize, scores: &mut [f32]) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = dot_f32(q, &keys[i * stride..][..q.len()]);
    }
}

/// `scores[i] = q · keys[i]` with i8 keys.
pub(super) fn head_dots_i8(q: &[f32], keys: &[i8], stride: usize, scores: &mut [f32]) {
    for (i, s) in scores.iter_mut().enumerate() {
        let k = &keys[i * stride..][..q.len()];
        *s = q.iter().zip(k).map(|(a, &b)| a * b as f32).sum();
    }
}

/// `out = sum_i p[i] * values[i]`.
pub(super) fn head_mix(p: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (i, &p) in p.iter().enumerate() {
        for (o, v) in out.iter_mut().zip(&values[i * stride..]) {
            *o += p * v;
        }
    }
}

/// `out = sum_i p[i] * values[i]` with i8 values.
pub(super) fn head_mix_i8(p: &[f32], values: &[i8], stride: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (i, &p) in p.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&values[i * stride..]) {
            *o += p * v as f32;
        }
    }
}
