//! Every SIMD kernel against the scalar definition, the quantised paths
//! against exact arithmetic with proven bounds, and the argument checks.
//! `Backend::best()` is used instead of the global selection, so a test
//! calling `set_isa` cannot change what the others compare.

use super::*;
use crate::rng::Rng;
use kilobyte_format::quant;
use std::vec;
use std::vec::Vec;

const EPS: f64 = f32::EPSILON as f64;

/// Column counts for float weights: 32..=1024 in steps of 31, so most are
/// not multiples of 8 or 4 and every tail length occurs, plus tiny ones.
fn float_cols() -> Vec<usize> {
    if cfg!(miri) {
        return vec![1, 9, 33];
    }
    let mut cols = vec![1, 3, 7, 8, 9, 17];
    cols.extend((32..=1024).step_by(31));
    cols.push(1024);
    cols
}

/// Column counts for q8/q4 weights: whole blocks only.
fn quant_cols() -> Vec<usize> {
    if cfg!(miri) {
        return vec![32, 96];
    }
    (32..=1024).step_by(32).collect()
}

fn row_counts() -> &'static [usize] {
    if cfg!(miri) {
        &[1, 3, 5]
    } else {
        &[1, 2, 3, 4, 5, 7, 8, 13]
    }
}

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const QUANTS: [DType; 2] = [DType::Q8, DType::Q4];

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
}

#[derive(Clone)]
enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q8(Vec<BlockQ8>),
    Q4(Vec<BlockQ4>),
}

/// A random matrix stored as `dtype` through the format crate's reference
/// codec, with its exact f32 values for checking.
struct TestMatrix {
    storage: Storage,
    rows: usize,
    cols: usize,
    dequantised: Vec<f32>,
}

impl TestMatrix {
    fn new(dtype: DType, rows: usize, cols: usize, rng: &mut Rng) -> Self {
        let values = random(rng, rows * cols);
        let mut bytes = vec![0u8; dtype.byte_len((rows * cols) as u64).unwrap() as usize];
        quant::encode(dtype, &values, &mut bytes).unwrap();
        let mut dequantised = vec![0.0; rows * cols];
        quant::decode(dtype, &bytes, &mut dequantised).unwrap();
        let storage = match dtype {
            DType::F32 => Storage::F32(dequantised.clone()),
            DType::F16 => Storage::F16(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            DType::BF16 => Storage::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            DType::Q8 => Storage::Q8(
                bytes
                    .chunks_exact(34)
                    .map(|b| BlockQ8 {
                        d: [b[0], b[1]],
                        qs: core::array::from_fn(|i| b[2 + i] as i8),
                    })
                    .collect(),
            ),
            DType::Q4 => Storage::Q4(
                bytes
                    .chunks_exact(18)
                    .map(|b| BlockQ4 {
                        d: [b[0], b[1]],
                        qs: core::array::from_fn(|i| b[2 + i]),
                    })
                    .collect(),
            ),
            DType::U8 => unreachable!("not a matrix dtype"),
        };
        TestMatrix {
            storage,
            rows,
            cols,
            dequantised,
        }
    }

    fn matrix(&self) -> Matrix<'_> {
        let weights = match &self.storage {
            Storage::F32(w) => Weights::F32(w),
            Storage::F16(w) => Weights::F16(w),
            Storage::BF16(w) => Weights::BF16(w),
            Storage::Q8(w) => Weights::Q8(w),
            Storage::Q4(w) => Weights::Q4(w),
        };
        Matrix::new(weights, self.rows, self.cols).unwrap()
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.dequantised[r * self.cols..][..self.cols]
    }
}

/// `x` as the q8 activation quantiser sees it: the blocks and their values.
fn quantised(x: &[f32]) -> (Vec<BlockQ8>, Vec<f32>) {
    let mut blocks = zero_scratch(x.len() / QK);
    scalar::quantize_q8(x, &mut blocks).unwrap();
    let values = blocks
        .iter()
        .flat_map(|b| b.qs.map(|q| b.scale() * q as f32))
        .collect();
    (blocks, values)
}

fn sum_abs_products(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum()
}

fn assert_within(what: &str, got: f32, want: f64, bound: f64) {
    let err = (got as f64 - want).abs();
    assert!(
        err <= bound,
        "{what}: got {got}, want {want}, error {err:e} > bound {bound:e}"
    );
}

/// Runs the best backend and the scalar definition on `n` random inputs
/// and checks each output against the bound for its dtype:
/// - float weights: 1e-5 of sum |w x| (both sides are f32 dots; for
///   n <= 1024 terms the observed difference is far below this);
/// - q8/q4: both sides do the same exact integer block sums, so they differ
///   only in how the per-block f32 terms are added: at most
///   (blocks + 8) * eps * sum |w x^|, the classic recursive-summation bound
///   for the two orders together (x^ is the quantised input).
fn check_matmul(dtype: DType, rows: usize, cols: usize, n: usize, rng: &mut Rng) {
    let m = TestMatrix::new(dtype, rows, cols, rng);
    let x = random(rng, n * cols);
    let mut scratch = zero_scratch(scratch_blocks(cols, n));
    let mut want = vec![0.0; n * rows];
    scalar::matmul(&m.matrix(), &x, &mut want, &mut scratch).unwrap();
    let scalar_scratch = scratch.clone();
    let x_used = if dtype.is_quantized() {
        quantised(&x).1
    } else {
        x.clone()
    };
    for backend in Backend::every_backend() {
        let mut got = vec![0.0; n * rows];
        matmul_on(backend, &m.matrix(), &x, &mut got, &mut scratch).unwrap();
        let isa = backend.0;
        if dtype.is_quantized() {
            assert_eq!(
                scalar_scratch, scratch,
                "{isa:?} {dtype} activation blocks differ"
            );
        }
        for i in 0..n {
            for r in 0..rows {
                let magnitude = sum_abs_products(m.row(r), &x_used[i * cols..][..cols]);
                let bound = if dtype.is_quantized() {
                    (cols / QK + 8) as f64 * EPS * magnitude
                } else {
                    1e-5 * magnitude
                };
                let what = std::format!("{isa:?} {dtype} {rows}x{cols} n={n} input {i} row {r}");
                assert_within(&what, got[i * rows + r], want[i * rows + r] as f64, bound);
            }
        }
    }
}

#[test]
fn matvec_matches_scalar_for_every_dtype() {
    let mut rng = Rng::new(1);
    for &rows in row_counts() {
        for dtype in FLOATS {
            for cols in float_cols() {
                check_matmul(dtype, rows, cols, 1, &mut rng);
            }
        }
        for dtype in QUANTS {
            for cols in quant_cols() {
                check_matmul(dtype, rows, cols, 1, &mut rng);
            }
        }
    }
}

#[test]
fn matmul_matches_scalar_for_every_dtype() {
    let mut rng = Rng::new(2);
    let inputs: &[usize] = if cfg!(miri) {
        &[2, 5]
    } else {
        &[1, 2, 3, 4, 5, 6, 7, 8, 9]
    };
    for &n in inputs {
        for &rows in row_counts() {
            for dtype in FLOATS {
                for cols in float_cols().into_iter().step_by(3) {
                    check_matmul(dtype, rows, cols, n, &mut rng);
                }
            }
            for dtype in QUANTS {
                for cols in quant_cols().into_iter().step_by(3) {
                    check_matmul(dtype, rows, cols, n, &mut rng);
                }
            }
        }
    }
}

/// Batches large enough for the packed float panels (16 rows x 384
/// columns; 6 inputs a tile with AVX2, 12 with AVX-512), with every edge
/// ragged: rows around 16, columns around 8 and 384 (later column blocks
/// add to the first), inputs not a multiple of 6 or 12. Other backends
/// take their usual batch path.
#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn large_float_batches_match_scalar() {
    let mut rng = Rng::new(4);
    for n in [16, 17, 18, 19, 20, 21, 22, 23, 37] {
        for rows in [1, 5, 16, 17, 33] {
            for dtype in FLOATS {
                for cols in [1, 7, 8, 9, 100, 383, 384, 385, 800] {
                    check_matmul(dtype, rows, cols, n, &mut rng);
                }
            }
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn matmul_spans_several_input_chunks() {
    // 1024 f32 columns are 4 KiB per input, so 70 inputs need two chunks of
    // the tile walker; 245 q8 inputs of 32 blocks need two as well.
    let mut rng = Rng::new(3);
    check_matmul(DType::F32, 3, 1024, 70, &mut rng);
    check_matmul(DType::Q8, 3, 1024, 245, &mut rng);
}

/// The loose check: the q8 x q8 product against the exact product of the
/// stored weights with the unquantised input. Each quantised input value is
/// off by at most half its block scale d (see `scalar::quantize_q8`; the
/// 1e-4 covers the f32 rounding of x * (1 / d)), so the error is at most
/// sum_blocks(d / 2 * sum |w|) plus the summation bound above.
#[test]
fn quantised_matvec_is_close_to_the_exact_product() {
    let mut rng = Rng::new(4);
    for dtype in QUANTS {
        for cols in quant_cols() {
            let m = TestMatrix::new(dtype, 5, cols, &mut rng);
            let x = random(&mut rng, cols);
            let (blocks, xq) = quantised(&x);
            let mut y = vec![0.0; 5];
            let mut scratch = blocks.clone();
            matmul_on(Backend::best(), &m.matrix(), &x, &mut y, &mut scratch).unwrap();
            for (r, &got) in y.iter().enumerate() {
                let w = m.row(r);
                let exact: f64 = w.iter().zip(&x).map(|(w, x)| *w as f64 * *x as f64).sum();
                let quantisation: f64 = blocks
                    .iter()
                    .zip(w.chunks_exact(QK))
                    .map(|(b, w)| {
                        b.scale() as f64 / 2.0 * w.iter().map(|w| w.abs() as f64).sum::<f64>()
                    })
                    .sum();
                let rounding = (cols / QK + 8) as f64 * EPS * sum_abs_products(w, &xq);
                let bound = quantisation * (1.0 + 1e-4) + rounding;
                assert_within(&std::format!("{dtype} {cols} row {r}"), got, exact, bound);
                // The bound is meaningful: far below the product's scale.
                assert!(bound < 0.05 * sum_abs_products(w, &x) + 1e-6);
            }
        }
    }
}

/// The integer block sums at their extremes, where an i16 intermediate of
/// the SIMD kernels would overflow or saturate first: every weight at
/// -128 or 127 (q8) or nibble 0 or 15 (q4), every input at ±127, scales 1,
/// so every product is an exact integer in f32 and SIMD must equal scalar
/// exactly. Row and block counts cover the four-row tiles' ragged edges and
/// q4's odd last block.
#[test]
fn quantised_products_at_the_integer_extremes_are_exact() {
    let one = f16::from_f32(1.0).to_le_bytes();
    for blocks in [1, 2, 3, 5, 8] {
        let cols = blocks * QK;
        let x: Vec<f32> = (0..cols)
            .map(|j| if (j / 3) % 2 == 0 { 127.0 } else { -127.0 })
            .collect();
        for rows in [1, 3, 4, 5, 9] {
            for pattern in 0..4usize {
                // Signs agreeing with x (largest sums), opposing it, or mixed.
                let pick = |r: usize, j: usize| match pattern {
                    0 => (j / 3).is_multiple_of(2),
                    1 => !(j / 3).is_multiple_of(2),
                    2 => (r + j).is_multiple_of(2),
                    _ => (r + j / 7).is_multiple_of(3),
                };
                let q8: Vec<BlockQ8> = (0..rows * blocks)
                    .map(|k| BlockQ8 {
                        d: one,
                        qs: core::array::from_fn(|i| {
                            if pick(k / blocks, (k % blocks) * QK + i) {
                                127
                            } else {
                                -128
                            }
                        }),
                    })
                    .collect();
                let q4: Vec<BlockQ4> = (0..rows * blocks)
                    .map(|k| BlockQ4 {
                        d: one,
                        qs: core::array::from_fn(|i| {
                            let j = (k % blocks) * QK + i;
                            let nib = |j| if pick(k / blocks, j) { 15u8 } else { 0 };
                            nib(j) | nib(j + 16) << 4
                        }),
                    })
                    .collect();
                for (dtype, w) in [("q8", Weights::Q8(&q8)), ("q4", Weights::Q4(&q4))] {
                    let m = Matrix::new(w, rows, cols).unwrap();
                    for n in [1, 2, 5] {
                        let xs: Vec<f32> = x.iter().copied().cycle().take(n * cols).collect();
                        let mut scratch = zero_scratch(scratch_blocks(cols, n));
                        let mut want = vec![0.0; n * rows];
                        scalar::matmul(&m, &xs, &mut want, &mut scratch).unwrap();
                        for backend in Backend::every_backend() {
                            let mut got = vec![0.0; n * rows];
                            matmul_on(backend, &m, &xs, &mut got, &mut scratch).unwrap();
                            let isa = backend.0;
                            let what = std::format!("{isa:?} {dtype} {rows}x{cols} n={n}");
                            assert_eq!(got, want, "{what} pattern {pattern}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn activation_quantisation_rounds_half_to_even_on_every_backend() {
    // amax 127 gives d = 1 exactly, so x.5 values are exact ties.
    let mut x = [0.0f32; QK];
    let ties = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5];
    x[..ties.len()].copy_from_slice(&ties);
    x[31] = 127.0;
    let (blocks, _) = quantised(&x);
    assert_eq!(blocks[0].scale(), 1.0);
    assert_eq!(&blocks[0].qs[..8], &[0, 2, 2, 0, -2, -2, 126, -126]);
    assert_eq!(blocks[0].qs[31], 127);
    // The SIMD quantiser leaves its blocks in scratch.
    let w = [BlockQ8 {
        d: [0; 2],
        qs: [0; QK],
    }];
    let m = Matrix::new(Weights::Q8(&w), 1, QK).unwrap();
    let mut scratch = [BlockQ8 {
        d: [0; 2],
        qs: [0; QK],
    }];
    matmul_on(Backend::best(), &m, &x, &mut [0.0], &mut scratch).unwrap();
    assert_eq!(scratch[0], blocks[0]);
    // Values too large for an f16 scale saturate instead of becoming NaN.
    let huge = [1e30f32; QK];
    matmul_on(Backend::best(), &m, &huge, &mut [0.0], &mut scratch).unwrap();
    assert_eq!(scratch[0].qs, [127; QK]);
    assert!(scratch[0].scale().is_finite());
}

#[test]
fn embedding_row_matches_the_format_codec() {
    let mut rng = Rng::new(5);
    for dtype in FLOATS.into_iter().chain(QUANTS) {
        let m = TestMatrix::new(dtype, 3, 64, &mut rng);
        let mut out = vec![0.0; 64];
        for r in 0..3 {
            embedding_row(&m.matrix(), r, &mut out).unwrap();
            assert_eq!(out, m.row(r), "{dtype} row {r}");
        }
    }
}

#[test]
fn dot_and_axpy_match_scalar() {
    let mut rng = Rng::new(6);
    let lengths: Vec<usize> = if cfg!(miri) {
        vec![0, 5, 33]
    } else {
        (0..=300)
            .step_by(7)
            .chain([1, 8, 16, 31, 32, 33, 1024])
            .collect()
    };
    for n in lengths {
        let (a, b) = (random(&mut rng, n), random(&mut rng, n));
        let got = dot_on(Backend::best(), &a, &b).unwrap();
        let want = scalar::dot(&a, &b).unwrap();
        assert_within("dot", got, want as f64, 1e-5 * sum_abs_products(&a, &b));
        let (mut y1, mut y2) = (b.clone(), b.clone());
        axpy_on(Backend::best(), 0.75, &a, &mut y1).unwrap();
        scalar::axpy(0.75, &a, &mut y2).unwrap();
        for (g, w) in y1.iter().zip(&y2) {
            // FMA rounds once where the scalar code rounds twice.
            assert_within("axpy", *g, *w as f64, 2.0 * EPS * 2.0);
        }
    }
}

#[test]
fn simd_gelu_matches_scalar() {
    let mut rng = Rng::new(11);
    // Odd lengths exercise the tails; the scale reaches both saturated ends
    // (|x| > 10) where the SIMD form clamps its exponent.
    for n in [1usize, 7, 8, 9, 31, 100, 1027] {
        let x: Vec<f32> = random(&mut rng, n).iter().map(|v| v * 12.0).collect();
        let mut got = x.clone();
        gelu_tanh_on(Backend::best(), &mut got);
        let mut want = x.clone();
        scalar::gelu_tanh(&mut want);
        for (g, w) in got.iter().zip(&want) {
            assert_within("gelu", *g, *w as f64, 4.0 * EPS * (1.0 + w.abs() as f64));
        }
    }
    let mut nan = [f32::NAN; 9];
    gelu_tanh_on(Backend::best(), &mut nan);
    assert!(nan.iter().all(|v| v.is_nan()));
}

fn head_layouts() -> &'static [Heads] {
    if cfg!(miri) {
        &[Heads {
            n_heads: 2,
            head_dim: 5,
        }]
    } else {
        &[
            Heads {
                n_heads: 1,
                head_dim: 8,
            },
            Heads {
                n_heads: 2,
                head_dim: 17,
            },
            Heads {
                n_heads: 4,
                head_dim: 32,
            },
            Heads {
                n_heads: 3,
                head_dim: 64,
            },
            // The SIMD head_mix's 32-, 8- and 1-column steps all at once.
            Heads {
                n_heads: 2,
                head_dim: 45,
            },
            // And with AVX2's 64-column step before them.
            Heads {
                n_heads: 2,
                head_dim: 107,
            },
        ]
    }
}

fn positions() -> &'static [usize] {
    if cfg!(miri) {
        &[1, 3]
    } else {
        // Around the four keys per step of the SIMD head_dots.
        &[1, 2, 4, 5, 7, 33, 100]
    }
}

/// Attention outputs are convex combinations of value rows, so they are
/// compared to within 1e-5 of the largest value (|v| <= 1 here), which
/// covers score perturbations of the same relative size.
#[test]
fn attention_matches_scalar() {
    let mut rng = Rng::new(7);
    for &heads in head_layouts() {
        for &n_pos in positions() {
            let w = heads.width();
            // One spare row: callers may pass a whole cache buffer.
            let keys = random(&mut rng, (n_pos + 1) * w);
            let values = random(&mut rng, (n_pos + 1) * w);
            let q: Vec<f32> = random(&mut rng, w).iter().map(|v| v * 3.0).collect();
            let mut scores = vec![0.0; n_pos + 2];
            let (mut got, mut want) = (vec![0.0; w], vec![0.0; w]);
            let b = Backend::best();
            attention_on(b, &q, &keys, &values, n_pos, heads, &mut scores, &mut got).unwrap();
            scalar::attention(&q, &keys, &values, n_pos, heads, &mut scores, &mut want).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_within("attention", *g, *w as f64, 1e-5);
            }
        }
    }
}

#[test]
fn attention_of_one_position_is_its_value_row() {
    let heads = Heads {
        n_heads: 2,
        head_dim: 3,
    };
    let (q, k, v) = ([1.0; 6], [0.5; 6], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let mut out = [0.0; 6];
    attention(&q, &k, &v, 1, heads, &mut [0.0], &mut out).unwrap();
    assert_eq!(out, v);
    // Equal keys: the mean of the value rows.
    let v2 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    attention(&q, &[0.5; 12], &v2, 2, heads, &mut [0.0; 2], &mut out).unwrap();
    for (o, want) in out.iter().zip([2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) {
        assert!((o - want).abs() < 1e-6, "{o} vs {want}");
    }
}

/// Quantises `rows` and checks the promised bound: every value within half
/// its (stored, bf16) scale of the original.
fn quantise_cache(rows: &[f32], heads: Heads) -> (Vec<i8>, Vec<bf16>, Vec<f32>) {
    let n = rows.len() / heads.width();
    let mut q = vec![0i8; rows.len()];
    let mut scales = vec![bf16::ZERO; n * heads.n_heads];
    for ((x, q), s) in rows
        .chunks_exact(heads.width())
        .zip(q.chunks_exact_mut(heads.width()))
        .zip(scales.chunks_exact_mut(heads.n_heads))
    {
        quantize_row_i8(x, heads, q, s).unwrap();
    }
    let back: Vec<f32> = q
        .chunks_exact(heads.head_dim)
        .zip(&scales)
        .flat_map(|(q, &s)| q.iter().map(move |&q| q as f32 * s.to_f32()))
        .collect();
    let per_value_scale = scales
        .iter()
        .flat_map(|s| core::iter::repeat_n(s.to_f32(), heads.head_dim));
    for ((&x, &b), s) in rows.iter().zip(&back).zip(per_value_scale) {
        assert!(
            (x - b).abs() <= s * 0.5 * (1.0 + 1e-6),
            "{x} -> {b} (scale {s})"
        );
    }
    (q, scales, back)
}

/// The i8 cache: against the scalar i8 definition (same arithmetic, so as
/// tight as the f32 attention), and against f32 attention over the
/// dequantised rows (same math up to rounding), and loosely against the
/// unquantised cache (each value is off by at most s / 2 = amax / 254).
#[test]
fn attention_i8_matches_scalar_and_the_dequantised_cache() {
    let mut rng = Rng::new(8);
    for &heads in head_layouts() {
        for &n_pos in positions() {
            let w = heads.width();
            let keys = random(&mut rng, n_pos * w);
            let values = random(&mut rng, n_pos * w);
            let q = random(&mut rng, w);
            let (kq, ks, kback) = quantise_cache(&keys, heads);
            let (vq, vs, vback) = quantise_cache(&values, heads);
            let (k8, v8) = (
                I8Rows {
                    values: &kq,
                    scales: &ks,
                },
                I8Rows {
                    values: &vq,
                    scales: &vs,
                },
            );
            let mut scores = vec![0.0; n_pos];
            let mut out = [vec![0.0; w], vec![0.0; w], vec![0.0; w], vec![0.0; w]];
            let b = Backend::best();
            attention_i8_on(b, &q, k8, v8, n_pos, heads, &mut scores, &mut out[0]).unwrap();
            scalar::attention_i8(&q, k8, v8, n_pos, heads, &mut scores, &mut out[1]).unwrap();
            scalar::attention(&q, &kback, &vback, n_pos, heads, &mut scores, &mut out[2]).unwrap();
            scalar::attention(&q, &keys, &values, n_pos, heads, &mut scores, &mut out[3]).unwrap();
            let [simd, reference, dequantised, unquantised] = &out;
            let all = simd.iter().zip(reference).zip(dequantised).zip(unquantised);
            for (((&s, &r), &d), &u) in all {
                assert_within("i8 vs scalar i8", s, r as f64, 1e-5);
                assert_within("i8 vs dequantised", s, d as f64, 1e-5);
                assert_within("i8 vs f32 cache", s, u as f64, 0.02);
            }
        }
    }
}

#[test]
fn norms_activations_and_softmax_follow_their_formulas() {
    let mut rng = Rng::new(9);
    let x: Vec<f32> = random(&mut rng, 37).iter().map(|v| v * 4.0 + 1.0).collect();
    let (w, b) = (random(&mut rng, 37), random(&mut rng, 37));
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let mut out = vec![0.0; 37];
    layer_norm(&x, &w, &b, 1e-5, &mut out).unwrap();
    for i in 0..37 {
        let want = (x[i] as f64 - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64;
        assert_within("layer_norm", out[i], want, 1e-5);
    }
    let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n;
    rms_norm(&x, &w, 1e-6, &mut out).unwrap();
    for i in 0..37 {
        assert_within(
            "rms_norm",
            out[i],
            x[i] as f64 / (ms + 1e-6).sqrt() * w[i] as f64,
            1e-5,
        );
    }
    let mut g = x.clone();
    gelu_tanh(&mut g);
    for (g, &v) in g.iter().zip(&x) {
        let v = v as f64;
        let want = 0.5
            * v
            * (1.0 + ((2.0 / core::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
        assert_within("gelu", *g, want, 1e-5 * (1.0 + want.abs()));
    }
    // Softmax survives inputs whose exp would overflow.
    let mut s = [1000.0f32, 1000.0, 999.0];
    softmax(&mut s);
    let e = (-1.0f64).exp();
    assert_within("softmax", s[0], 1.0 / (2.0 + e), 1e-6);
    assert_within("softmax", s[2], e / (2.0 + e), 1e-6);
    // Infinities keep their limits (inf - inf would make every entry NaN).
    let mut s = [f32::INFINITY, 0.0, f32::INFINITY, f32::NEG_INFINITY];
    softmax(&mut s);
    assert_eq!(s, [0.5, 0.0, 0.5, 0.0]);
    let mut s = [f32::NEG_INFINITY; 4];
    softmax(&mut s);
    assert_eq!(s, [0.25; 4]);
    let mut s = [1.0, f32::NAN, f32::INFINITY];
    softmax(&mut s);
    assert!(s.iter().any(|v| v.is_nan()));
    let mut acc = [1.0f32, 2.0];
    add(&mut acc, &[0.5, 0.5]).unwrap();
    mul(&mut acc, &[2.0, 3.0]).unwrap();
    scale(&mut acc, 0.5);
    assert_eq!(acc, [1.5, 3.75]);
}

#[test]
fn wrong_lengths_and_shapes_are_errors() {
    let block = BlockQ8 {
        d: [0; 2],
        qs: [0; QK],
    };
    let w = [0.0f32; 6];
    let m = Matrix::new(Weights::F32(&w), 2, 3).unwrap();
    let mut scratch = [block; 4];
    let len = |what, expected, actual| {
        Err(KernelError::Length {
            what,
            expected,
            actual,
        })
    };

    // Matrix shapes.
    assert_eq!(
        Matrix::new(Weights::F32(&w), 2, 4).unwrap_err(),
        KernelError::Length {
            what: "weights",
            expected: 8,
            actual: 6
        }
    );
    assert!(Matrix::new(Weights::F32(&[]), 0, 3).is_err());
    assert!(Matrix::new(Weights::F32(&w), usize::MAX, 2).is_err());
    let q = [block; 2];
    assert_eq!(
        Matrix::new(Weights::Q8(&q), 2, 48).unwrap_err(),
        KernelError::BadShape { rows: 2, cols: 48 }
    );
    // A Matrix built by hand is checked by every op.
    let bad = Matrix {
        weights: Weights::F32(&w),
        rows: 3,
        cols: 3,
    };
    assert!(matvec(&bad, &[0.0; 3], &mut [0.0; 3], &mut []).is_err());
    assert!(embedding_row(&bad, 0, &mut [0.0; 3]).is_err());

    // matvec / matmul.
    assert_eq!(
        matvec(&m, &[0.0; 2], &mut [0.0; 2], &mut []),
        len("x", 3, 2)
    );
    assert_eq!(
        matvec(&m, &[0.0; 3], &mut [0.0; 3], &mut []),
        len("y", 2, 3)
    );
    assert_eq!(
        matmul(&m, &[0.0; 7], &mut [0.0; 4], &mut []),
        len("x", 6, 7)
    );
    assert_eq!(
        matmul(&m, &[0.0; 6], &mut [0.0; 3], &mut []),
        len("y", 4, 3)
    );
    assert_eq!(matmul(&m, &[], &mut [], &mut []), Ok(()));
    let qm = Matrix::new(Weights::Q8(&q), 2, 32).unwrap();
    assert_eq!(
        matmul(&qm, &[0.0; 96], &mut [0.0; 6], &mut scratch[..2]),
        Err(KernelError::TooShort {
            what: "scratch",
            needed: 3,
            actual: 2
        })
    );
    assert!(scalar::matmul(&qm, &[0.0; 96], &mut [0.0; 6], &mut scratch[..2]).is_err());
    assert!(scalar::quantize_q8(&[0.0; 33], &mut scratch).is_err());
    assert!(scalar::quantize_q8(&[0.0; 64], &mut scratch[..1]).is_err());

    // Rows and vectors.
    assert_eq!(
        embedding_row(&m, 2, &mut [0.0; 3]),
        Err(KernelError::RowOutOfRange { row: 2, rows: 2 })
    );
    assert_eq!(embedding_row(&m, 0, &mut [0.0; 2]), len("out", 3, 2));
    assert!(dot(&[1.0; 3], &[1.0; 4]).is_err());
    assert!(axpy(1.0, &[1.0; 3], &mut [1.0; 2]).is_err());
    let rows = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut mixed = [1.0; 3];
    assert!(mix(&[1.0; 2], &rows[..5], 3, &mut mixed).is_err());
    mix(&[2.0, 1.0], &rows, 3, &mut mixed).unwrap();
    assert_eq!(mixed, [6.0, 9.0, 12.0]);
    mix(&[], &[], 3, &mut mixed).unwrap();
    assert_eq!(mixed, [0.0; 3]);
    assert!(add(&mut [1.0; 3], &[1.0; 2]).is_err());
    assert!(mul(&mut [1.0; 3], &[1.0; 2]).is_err());
    assert!(layer_norm(&[1.0; 3], &[1.0; 3], &[1.0; 2], 1e-5, &mut [0.0; 3]).is_err());
    assert!(layer_norm(&[1.0; 3], &[1.0; 3], &[1.0; 3], 1e-5, &mut [0.0; 4]).is_err());
    assert!(rms_norm(&[1.0; 3], &[1.0; 2], 1e-5, &mut [0.0; 3]).is_err());

    // Attention.
    let heads = Heads {
        n_heads: 2,
        head_dim: 2,
    };
    let kv = [0.0f32; 12];
    let (mut s, mut o) = ([0.0; 3], [0.0; 4]);
    assert!(attention(&[0.0; 4], &kv, &kv, 3, heads, &mut s, &mut o).is_ok());
    assert!(attention(&[0.0; 3], &kv, &kv, 3, heads, &mut s, &mut o).is_err());
    assert!(attention(&[0.0; 4], &kv, &kv, 4, heads, &mut [0.0; 4], &mut o).is_err());
    assert!(attention(&[0.0; 4], &kv, &kv[..11], 3, heads, &mut s, &mut o).is_err());
    assert!(attention(&[0.0; 4], &kv, &kv, 3, heads, &mut s[..2], &mut o).is_err());
    assert!(attention(&[0.0; 4], &kv, &kv, 0, heads, &mut s, &mut o).is_err());
    assert!(attention(&[0.0; 4], &kv, &kv, 3, heads, &mut s, &mut o[..3]).is_err());
    let huge = Heads {
        n_heads: usize::MAX,
        head_dim: 2,
    };
    assert!(attention(&[0.0; 4], &kv, &kv, 3, huge, &mut s, &mut o).is_err());
    let (k8, sc) = ([0i8; 12], [bf16::ONE; 6]);
    let rows = I8Rows {
        values: &k8,
        scales: &sc,
    };
    assert!(attention_i8(&[0.0; 4], rows, rows, 3, heads, &mut s, &mut o).is_ok());
    let few = I8Rows {
        values: &k8,
        scales: &sc[..5],
    };
    assert!(attention_i8(&[0.0; 4], rows, few, 3, heads, &mut s, &mut o).is_err());
    assert!(scalar::attention_i8(&[0.0; 4], few, rows, 3, heads, &mut s, &mut o).is_err());
    let (mut q8, mut scales) = ([0i8; 4], [bf16::ZERO; 2]);
    assert!(quantize_row_i8(&[0.0; 4], heads, &mut q8, &mut scales).is_ok());
    assert!(quantize_row_i8(&[0.0; 4], heads, &mut q8, &mut scales[..1]).is_err());
    assert!(quantize_row_i8(&[0.0; 5], heads, &mut q8, &mut scales).is_err());
}

#[test]
fn from_tensor_views_every_dtype_and_checks_the_shape() {
    use kilobyte_format::Shape;
    let mut rng = Rng::new(10);
    for dtype in FLOATS.into_iter().chain(QUANTS) {
        let m = TestMatrix::new(dtype, 2, 64, &mut rng);
        let view = m.matrix();
        let data: &[u8] = match view.weights {
            Weights::F32(w) => bytemuck::cast_slice(w),
            Weights::F16(w) => bytemuck::cast_slice(w),
            Weights::BF16(w) => bytemuck::cast_slice(w),
            Weights::Q8(w) => bytemuck::cast_slice(w),
            Weights::Q4(w) => bytemuck::cast_slice(w),
        };
        let tensor = Tensor {
            name: "w",
            dtype,
            shape: Shape::new(&[2, 64]),
            offset: 0,
            data,
        };
        let back = Matrix::from_tensor(&tensor, 2, 64).unwrap();
        let mut row = vec![0.0; 64];
        embedding_row(&back, 1, &mut row).unwrap();
        assert_eq!(row, m.row(1), "{dtype}");
        assert!(matches!(
            Matrix::from_tensor(&tensor, 4, 32),
            Err(FormatError::WrongShape { .. })
        ));
        assert!(Matrix::from_tensor(&tensor, 1, 64).is_err());
    }
    let raw = Tensor {
        name: "m",
        dtype: DType::U8,
        shape: Shape::new(&[4]),
        offset: 0,
        data: &[0; 4],
    };
    assert!(matches!(
        Matrix::from_tensor(&raw, 1, 4),
        Err(FormatError::WrongDtype { .. })
    ));
}

#[test]
fn set_isa_accepts_scalar_and_the_detected_sets_only() {
    let supported = |i: Isa| i == Isa::Scalar || Backend::every_backend().any(|b| b.0 == i);
    for other in Isa::ALL {
        if supported(other) {
            set_isa(other).unwrap();
            assert_eq!(isa(), other);
        } else {
            assert_eq!(set_isa(other), Err(KernelError::Unsupported(other)));
        }
    }
    // The AVX-VNNI and AVX-512 sets run AVX2's kernels for most ops.
    for extended in [Isa::Avx2Vnni, Isa::Avx512] {
        assert!(!supported(extended) || supported(Isa::Avx2));
    }
    set_isa(detected()).unwrap();
    assert_eq!(isa(), detected());
}

#[test]
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn cpuid_detection_agrees_with_std() {
    use std::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni");
    for (isa, std_says) in [
        (Isa::Avx2, avx2),
        (Isa::Avx2Vnni, avx2 && has!("avxvnni")),
        (Isa::Avx512, avx2 && avx512),
    ] {
        assert_eq!(usable(isa), std_says, "{isa:?}");
    }
    assert_eq!(detected() != Isa::Scalar, avx2);
}

/// The q8/q4 kernel sets share every float operation and their integer
/// block sums are exact, so where a machine runs several (AVX2, VNNI,
/// AVX-512) they must agree to the bit, batches included.
#[test]
fn quantised_kernel_sets_agree_bit_for_bit() {
    let mut rng = Rng::new(12);
    for dtype in QUANTS {
        for (rows, cols, n) in [
            (5, 32, 1),
            (7, 96, 1),
            (4, 320, 3),
            (11, 224, 5),
            (9, 1024, 6),
        ] {
            every_kernel_set_agrees(dtype, rows, cols, n, &mut rng);
        }
    }
}

/// `blocks` zeroed quantised-activation blocks, for a kernel's scratch.
fn zero_scratch(blocks: usize) -> Vec<BlockQ8> {
    let zero = BlockQ8 {
        d: [0; 2],
        qs: [0; QK],
    };
    vec![zero; blocks]
}

/// `matmul` of a random `rows x cols` matrix of `dtype` by `n` random
/// inputs gives the same bits on every kernel set this machine runs.
fn every_kernel_set_agrees(dtype: DType, rows: usize, cols: usize, n: usize, rng: &mut Rng) {
    let m = TestMatrix::new(dtype, rows, cols, rng);
    let x = random(rng, n * cols);
    let mut scratch = zero_scratch(scratch_blocks(cols, n));
    let outputs: Vec<(Isa, Vec<f32>)> = Backend::every_backend()
        .map(|backend| {
            let mut y = vec![0.0; n * rows];
            matmul_on(backend, &m.matrix(), &x, &mut y, &mut scratch).unwrap();
            (backend.0, y)
        })
        .collect();
    for (isa, y) in &outputs[1..] {
        let (best, want) = &outputs[0];
        assert_eq!(y, want, "{dtype} {rows}x{cols} n={n}: {isa:?} vs {best:?}");
    }
}

/// The float panels sum every output in column order in every x86 set
/// (AVX2's 6-input tiles and AVX-512's 12-input ones alike), so the sets
/// agree to the bit on batches too: ragged rows, columns past one
/// 384-column block, and last tiles of 1 to 11 inputs.
#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn float_kernel_sets_agree_bit_for_bit() {
    let mut rng = Rng::new(13);
    for dtype in FLOATS {
        for (rows, cols, n) in [
            (17, 385, 23),
            (5, 100, 16),
            (1, 9, 26),
            (33, 64, 40),
            (16, 800, 17),
        ] {
            every_kernel_set_agrees(dtype, rows, cols, n, &mut rng);
        }
    }
}

#[test]
#[cfg(all(target_arch = "aarch64", not(miri)))]
fn aarch64_uses_neon() {
    assert_eq!(detected(), Isa::Neon);
}

#[test]
#[cfg(target_arch = "wasm32")]
fn wasm32_uses_simd128_exactly_when_built_with_it() {
    let want = if cfg!(feature = "simd128") {
        Isa::Simd128
    } else {
        Isa::Scalar
    };
    assert_eq!(detected(), want);
}

// ---------------------------------------------------------------------------
// Parallel products

/// Runs the parts in reverse order, on one thread: the split, not the
/// threads, is what decides the values (the trainer's pool tests the
/// threads).
struct Reversed(usize, usize, core::sync::atomic::AtomicUsize);

impl Reversed {
    fn new(threads: usize) -> Self {
        Reversed::splitting_from(threads, PARALLEL_MIN_MACS)
    }

    fn splitting_from(threads: usize, min_macs: usize) -> Self {
        Reversed(threads, min_macs, Default::default())
    }

    /// Parts run so far.
    fn parts(&self) -> usize {
        self.2.load(Relaxed)
    }
}

// SAFETY: each part once, before returning.
unsafe impl Parallel for Reversed {
    fn threads(&self) -> usize {
        self.0
    }

    fn min_macs(&self) -> usize {
        self.1
    }

    fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        self.2.fetch_add(parts, Relaxed);
        (0..parts).rev().for_each(f)
    }
}

/// Split rows give exactly the one-thread result, for every dtype, ragged
/// row counts (not whole parts or tiles, fewer rows than threads), 2 to 5
/// threads and every kernel set; a batch and a matrix under the threshold
/// take the serial path, also exactly.
#[test]
fn parallel_matvec_equals_one_thread_bit_for_bit() {
    let mut rng = Rng::new(21);
    let cols = 256;
    const MIN: usize = PARALLEL_MIN_MACS;
    // (rows, inputs, the size below which the product stays serial): at the
    // threshold, above it with ragged rows, a batch, a small matrix, and
    // small ragged ones split regardless.
    let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
        &[(37, 1, 0), (5, 1, 0)]
    } else {
        &[
            (MIN / cols, 1, MIN),
            (MIN / cols + 5, 1, MIN),
            (3 * MIN / cols + 17, 1, MIN),
            (MIN / cols + 3, 3, MIN),
            (7, 1, MIN),
            (37, 1, 0),
            (5, 1, 0),
        ]
    };
    for dtype in FLOATS.into_iter().chain(QUANTS) {
        for &(rows, n, min_macs) in shapes {
            let m = TestMatrix::new(dtype, rows, cols, &mut rng);
            let x = random(&mut rng, n * cols);
            let blank = BlockQ8 {
                d: [0; 2],
                qs: [0; QK],
            };
            for backend in Backend::every_backend().chain([Backend(Isa::Scalar)]) {
                let mut want = vec![0.0; n * rows];
                let mut scratch = vec![blank; scratch_blocks(cols, n)];
                matmul_on(backend, &m.matrix(), &x, &mut want, &mut scratch).unwrap();
                for threads in 2..=5 {
                    let mut got = vec![f32::NAN; n * rows];
                    let mut scratch = vec![blank; scratch_blocks(cols, n)];
                    let par = Reversed::splitting_from(threads, min_macs);
                    matmul_parallel_on(backend, &par, &m.matrix(), &x, &mut got, &mut scratch)
                        .unwrap();
                    let split = n == 1 && rows * cols >= min_macs;
                    assert_eq!(par.parts() > 0, split, "{rows}x{cols} n={n}");
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{dtype:?} {rows}x{cols} n={n} {threads} threads {backend:?}"
                    );
                }
            }
        }
    }
}

/// The parallel entry checks its arguments as `matmul` does.
#[test]
fn parallel_matvec_refuses_what_matmul_refuses() {
    let rows = PARALLEL_MIN_MACS / 64 + 1;
    let w = vec![0.0f32; rows * 64];
    let m = Matrix::new(Weights::F32(&w), rows, 64).unwrap();
    let par = Reversed::new(2);
    let mut y = vec![0.0; rows];
    assert!(matmul_parallel(&par, &m, &[0.0; 64], &mut y[1..], &mut []).is_err());
    assert!(matmul_parallel(&par, &m, &[0.0; 63], &mut y, &mut []).is_err());
    let q = zero_scratch(rows * 2);
    let m = Matrix::new(Weights::Q8(&q), rows, 64).unwrap();
    assert!(matmul_parallel(&par, &m, &[0.0; 64], &mut y, &mut []).is_err());
    assert!(matmul_parallel(&Serial, &m, &[0.0; 64], &mut y, &mut []).is_err());
}

// ---------------------------------------------------------------------------
// Throughput

/// The fastest of many timed calls of `f` (about 0.3 s in all): the
/// minimum is what the code can do, without the other processes' noise.
fn fastest_call(mut f: impl FnMut()) -> f64 {
    let (mut best, mut total) = (f64::MAX, 0.0);
    let mut calls = 0;
    while total < 0.3 || calls < 5 {
        let start = std::time::Instant::now();
        f();
        let t = start.elapsed().as_secs_f64();
        (best, total, calls) = (best.min(t), total + t, calls + 1);
    }
    best
}

/// Prints matvec speed on a 768 x 3072 matrix for every dtype, with every
/// SIMD set this machine runs and scalar, with the weights in cache ("hot")
/// and cycling through copies larger than the L3 ("cold", i.e. from DRAM),
/// then the matmul speed-up.
#[test]
#[ignore = "benchmark: cargo test --release -p kilobyte-runtime bench -- --ignored --nocapture"]
fn bench_matvec_and_matmul() {
    use std::println;
    let mut rng = Rng::new(11);
    let (rows, cols) = (768, 3072);
    let flops = 2.0 * (rows * cols) as f64;
    let big = vec![1.0f32; 32 << 20];
    let (a, b) = big.split_at(16 << 20);
    let t = fastest_call(|| {
        core::hint::black_box(dot_on(Backend::best(), a, b).unwrap());
    });
    println!(
        "DRAM read bandwidth (SIMD dot of two 64 MiB vectors): {:.1} GB/s",
        128.0 * 1.048576e6 / t / 1e9
    );
    drop(big);
    println!("matvec {rows}x{cols}            hot: us   GB/s GFLOP/s |   cold: us   GB/s GFLOP/s");
    for dtype in FLOATS.into_iter().chain(QUANTS) {
        let m = TestMatrix::new(dtype, rows, cols, &mut rng);
        let bytes = dtype.byte_len((rows * cols) as u64).unwrap() as f64;
        let copies: Vec<TestMatrix> = (0..(128e6 / bytes) as usize + 1)
            .map(|_| TestMatrix {
                storage: m.storage.clone(),
                rows,
                cols,
                dequantised: Vec::new(),
            })
            .collect();
        let x = random(&mut rng, 64 * cols);
        let mut y = vec![0.0; 64 * rows];
        let mut scratch = zero_scratch(scratch_blocks(cols, 64));
        let mut hot_simd = 0.0;
        let isas: Vec<Isa> = Backend::every_backend().map(|b| b.0).collect();
        for isa in isas.into_iter().chain([Isa::Scalar]) {
            set_isa(isa).unwrap();
            let mut matvec = |w: &TestMatrix| {
                matvec(&w.matrix(), &x[..cols], &mut y[..rows], &mut scratch).unwrap()
            };
            let hot = fastest_call(|| matvec(&m));
            let mut k = 0;
            let cold = fastest_call(|| {
                k = (k + 1) % copies.len();
                matvec(&copies[k]);
            });
            if isa == detected() {
                hot_simd = hot;
            }
            println!(
                "  {:>4} {:<8} {:9.1} {:6.1} {:7.1} | {:9.1} {:6.1} {:7.1}",
                dtype.name(),
                std::format!("{isa:?}"),
                hot * 1e6,
                bytes / hot / 1e9,
                flops / hot / 1e9,
                cold * 1e6,
                bytes / cold / 1e9,
                flops / cold / 1e9,
            );
        }
        for isa in Backend::every_backend().map(|b| b.0) {
            set_isa(isa).unwrap();
            for n in [8, 64] {
                let t = fastest_call(|| {
                    matmul(
                        &m.matrix(),
                        &x[..n * cols],
                        &mut y[..n * rows],
                        &mut scratch,
                    )
                    .unwrap()
                });
                println!(
                    "  {:>4} {:<8} matmul n={n:<2}: {:8.1} us {:6.1} GFLOP/s, {:.1}x faster than {n} hot matvecs of the best set",
                    dtype.name(), std::format!("{isa:?}"), t * 1e6, n as f64 * flops / t / 1e9, n as f64 * hot_simd / t
                );
            }
        }
        set_isa(detected()).unwrap();
    }
}
