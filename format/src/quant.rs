//! Reference scalar codecs for every numeric dtype. These are the definition
//! of each layout: the runtime's SIMD kernels are tested against them.
//!
//! q8 block (34 bytes): `f16 d` (little-endian), then `i8 q[32]`; `x[i] = d * q[i]`.
//! q4 block (18 bytes): `f16 d`, then 16 bytes; byte j holds element j in its
//! low nibble and element j + 16 in its high nibble; `x[i] = d * (nibble - 8)`.
//!
//! Error bounds (tested): q8 |x - x̂| <= |d| / 2 for every element; q4
//! |x - x̂| <= |d| for every element (and <= |d| / 2 except where the value
//! opposite in sign to the block's largest magnitude is clamped to +7).

use crate::dtype::{DType, Q4_BLOCK_BYTES, Q8_BLOCK_BYTES, QK};
use half::{bf16, f16};

/// Why a slice could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CodecError {
    /// Element `index` is NaN or infinite.
    NonFinite { index: usize },
    /// Element `index` needs a scale beyond f16's range (|x| > ~8.3e6 for q8).
    OutOfRange { index: usize },
    /// Quantised data must be a whole number of 32-element blocks.
    NotWholeBlocks { len: usize },
    /// The output buffer has the wrong size.
    WrongOutputLen { expected: usize, actual: usize },
}

impl core::fmt::Display for CodecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            CodecError::NonFinite { index } => write!(f, "element {index} is not finite"),
            CodecError::OutOfRange { index } => {
                write!(f, "element {index} is too large for an f16 block scale")
            }
            CodecError::NotWholeBlocks { len } => {
                write!(
                    f,
                    "{len} elements is not a multiple of the 32-element quantisation block"
                )
            }
            CodecError::WrongOutputLen { expected, actual } => {
                write!(
                    f,
                    "output buffer holds {actual} bytes, {expected} are needed"
                )
            }
        }
    }
}

/// Reads the f16 scale at the start of a block.
#[inline]
pub fn block_scale(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[0], block[1]]).to_f32()
}

/// Smallest f16 `d` with `|d| * limit >= amax`, so that rounding `x / d` never
/// leaves [-limit, limit]. Rounding the ideal scale to f16 can make it slightly
/// too small; stepping up one ulp fixes that and keeps the error bound exact.
fn scale_for(amax: f32, limit: f32) -> Option<f16> {
    let mut d = f16::from_f32(amax / limit);
    while d.to_f32() * limit < amax {
        if !d.is_finite() {
            return None;
        }
        d = f16::from_bits(d.to_bits() + 1);
    }
    if d.is_finite() {
        Some(d)
    } else {
        None
    }
}

fn check_finite(x: &[f32], base: usize) -> Result<(), CodecError> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(CodecError::NonFinite { index: base + i }),
        None => Ok(()),
    }
}

/// The q8 block encoder, the one both weights (export, `quantize`) and the
/// runtime's activations (every SIMD backend matches it bit for bit) go
/// through: `d` is [`q8_scale`]'s and `q = round-half-even(x / d)` clamped
/// to ±127, computed as `x * (1 / d)`, which vector units do in one
/// multiply.
pub fn encode_q8(x: &[f32; QK], out: &mut crate::BlockQ8) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (d, inv) = q8_scale(amax);
    out.d = d;
    for (q, &v) in out.qs.iter_mut().zip(x) {
        *q = libm::rintf((v * inv).clamp(-127.0, 127.0)) as i8;
    }
}

/// A q8 block's f16 scale (as stored) for largest magnitude `amax`, and its
/// inverse: the smallest f16 `d` with `127 d >= amax`, so the clamp never
/// bites and every value is off by at most `d / 2` (f16's subnormals are
/// coarse: rounding `amax / 127` to nearest could lose percents), capped at
/// f16's largest value so huge activations saturate rather than overflow.
/// Public so vector code that finds `amax` its own way scales exactly as
/// [`encode_q8`] does.
#[inline]
pub fn q8_scale(amax: f32) -> ([u8; 2], f32) {
    let d = scale_for(amax, 127.0).unwrap_or(f16::MAX);
    let d32 = d.to_f32();
    let inv = if d32 > 0.0 { 1.0 / d32 } else { 0.0 };
    (d.to_le_bytes(), inv)
}

/// Quantises one block of 32 weights into 34 bytes with [`encode_q8`],
/// refusing what a weight must not be: non-finite, or too large for the
/// f16 scale (which would saturate).
pub fn quantize_q8_block(x: &[f32], out: &mut [u8], base: usize) -> Result<(), CodecError> {
    check_finite(x, base)?;
    let x: &[f32; QK] = x
        .try_into()
        .map_err(|_| CodecError::NotWholeBlocks { len: x.len() })?;
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    scale_for(amax, 127.0).ok_or(CodecError::OutOfRange { index: base })?;
    let mut block = crate::BlockQ8 {
        d: [0; 2],
        qs: [0; QK],
    };
    encode_q8(x, &mut block);
    out[..Q8_BLOCK_BYTES].copy_from_slice(bytemuck::bytes_of(&block));
    Ok(())
}

/// Quantises one block of 32 values into 18 bytes.
pub fn quantize_q4_block(x: &[f32], out: &mut [u8], base: usize) -> Result<(), CodecError> {
    check_finite(x, base)?;
    // As in ggml's Q4_0, the value of largest magnitude maps to -8 so the
    // full 16-level range is used on its side.
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    let mag = scale_for(max.abs(), 8.0).ok_or(CodecError::OutOfRange { index: base })?;
    let d = if max > 0.0 { -mag } else { mag };
    out[..2].copy_from_slice(&d.to_le_bytes());
    let df = d.to_f32();
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        let r = if df != 0.0 { libm::roundf(v / df) } else { 0.0 };
        *qi = (r.clamp(-8.0, 7.0) + 8.0) as u8;
    }
    for j in 0..QK / 2 {
        out[2 + j] = q[j] | (q[j + QK / 2] << 4);
    }
    Ok(())
}

fn dequantize_q8_block(block: &[u8], out: &mut [f32]) {
    let d = block_scale(block);
    for (o, &b) in out.iter_mut().zip(&block[2..2 + QK]) {
        *o = d * (b as i8) as f32;
    }
}

fn dequantize_q4_block(block: &[u8], out: &mut [f32]) {
    let d = block_scale(block);
    for j in 0..QK / 2 {
        let b = block[2 + j];
        out[j] = d * ((b & 0x0f) as i32 - 8) as f32;
        out[j + QK / 2] = d * ((b >> 4) as i32 - 8) as f32;
    }
}

/// The first element of encoded `data` that decodes to NaN or an infinity
/// (in a q8/q4 block, a non-finite scale makes the whole block so; the index
/// is the block's first element). Without a copy, so a writer can check
/// bytes it is handed as they are.
pub fn first_non_finite(dtype: DType, data: &[u8]) -> Option<usize> {
    match dtype {
        DType::F32 => data
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
        DType::F16 => data
            .chunks_exact(2)
            .position(|b| !f16::from_le_bytes([b[0], b[1]]).is_finite()),
        DType::BF16 => data
            .chunks_exact(2)
            .position(|b| !bf16::from_le_bytes([b[0], b[1]]).is_finite()),
        DType::Q8 | DType::Q4 => {
            let block = if dtype == DType::Q8 {
                Q8_BLOCK_BYTES
            } else {
                Q4_BLOCK_BYTES
            };
            data.chunks_exact(block)
                .position(|b| !block_scale(b).is_finite())
                .map(|i| i * QK)
        }
        DType::U8 => None,
    }
}

/// Encodes `x` as `dtype` into `out`, which must be exactly
/// `dtype.byte_len(x.len())` bytes.
pub fn encode(dtype: DType, x: &[f32], out: &mut [u8]) -> Result<(), CodecError> {
    let need = dtype
        .byte_len(x.len() as u64)
        .ok_or(CodecError::NotWholeBlocks { len: x.len() })? as usize;
    if out.len() != need {
        return Err(CodecError::WrongOutputLen {
            expected: need,
            actual: out.len(),
        });
    }
    match dtype {
        DType::F32 => {
            // A non-finite weight is a diverged model, never a valid one:
            // refused here so that no writer can store it in any dtype.
            check_finite(x, 0)?;
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            check_finite(x, 0)?;
            for (i, (o, v)) in out.chunks_exact_mut(2).zip(x).enumerate() {
                let h = f16::from_f32(*v);
                if !h.is_finite() {
                    return Err(CodecError::OutOfRange { index: i });
                }
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        DType::BF16 => {
            check_finite(x, 0)?;
            for (i, (o, v)) in out.chunks_exact_mut(2).zip(x).enumerate() {
                let h = bf16::from_f32(*v);
                if !h.is_finite() {
                    return Err(CodecError::OutOfRange { index: i });
                }
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        DType::Q8 => {
            for (i, (o, v)) in out
                .chunks_exact_mut(Q8_BLOCK_BYTES)
                .zip(x.chunks_exact(QK))
                .enumerate()
            {
                quantize_q8_block(v, o, i * QK)?;
            }
        }
        DType::Q4 => {
            for (i, (o, v)) in out
                .chunks_exact_mut(Q4_BLOCK_BYTES)
                .zip(x.chunks_exact(QK))
                .enumerate()
            {
                quantize_q4_block(v, o, i * QK)?;
            }
        }
        DType::U8 => {
            // Raw bytes carry no numbers; callers store them directly.
            return Err(CodecError::WrongOutputLen {
                expected: 0,
                actual: out.len(),
            });
        }
    }
    Ok(())
}

/// Decodes `data` (of `dtype`) into `out`; `out.len()` is the element count.
pub fn decode(dtype: DType, data: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    let need = dtype
        .byte_len(out.len() as u64)
        .ok_or(CodecError::NotWholeBlocks { len: out.len() })? as usize;
    if data.len() != need {
        return Err(CodecError::WrongOutputLen {
            expected: need,
            actual: data.len(),
        });
    }
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::Q8 => {
            for (o, b) in out
                .chunks_exact_mut(QK)
                .zip(data.chunks_exact(Q8_BLOCK_BYTES))
            {
                dequantize_q8_block(b, o);
            }
        }
        DType::Q4 => {
            for (o, b) in out
                .chunks_exact_mut(QK)
                .zip(data.chunks_exact(Q4_BLOCK_BYTES))
            {
                dequantize_q4_block(b, o);
            }
        }
        DType::U8 => {
            for (o, &b) in out.iter_mut().zip(data) {
                *o = b as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator so the tests need no crate.
    struct Lcg(u64);
    impl Lcg {
        fn next_f32(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    fn blocks(seed: u64) -> impl Iterator<Item = [f32; QK]> {
        let mut rng = Lcg(seed);
        (0..if cfg!(miri) { 40 } else { 2000 }).map(move |i| {
            // Vary the magnitude over many decades, include zeros and a lone spike.
            let scale = 10f32.powi((i % 11) as i32 - 8);
            let mut b = [0.0; QK];
            for v in b.iter_mut() {
                *v = rng.next_f32() * scale;
            }
            match i % 7 {
                0 => b = [0.0; QK],
                1 => b[(i / 7) % QK] = 1000.0 * scale,
                2 => b[3] = -b[3].abs() * 50.0,
                _ => {}
            }
            b
        })
    }

    #[test]
    fn q8_error_is_at_most_half_the_scale() {
        let mut buf = [0u8; Q8_BLOCK_BYTES];
        let mut back = [0f32; QK];
        for x in blocks(1) {
            encode(DType::Q8, &x, &mut buf).unwrap();
            decode(DType::Q8, &buf, &mut back).unwrap();
            let d = block_scale(&buf).abs();
            for (a, b) in x.iter().zip(&back) {
                assert!(
                    (a - b).abs() <= d / 2.0 * (1.0 + 1e-6),
                    "{a} vs {b}, d = {d}"
                );
            }
        }
    }

    #[test]
    fn q4_error_is_at_most_the_scale() {
        let mut buf = [0u8; Q4_BLOCK_BYTES];
        let mut back = [0f32; QK];
        for x in blocks(2) {
            encode(DType::Q4, &x, &mut buf).unwrap();
            decode(DType::Q4, &buf, &mut back).unwrap();
            let d = block_scale(&buf).abs();
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let biggest = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
            for (a, b) in x.iter().zip(&back) {
                let err = (a - b).abs();
                assert!(err <= d * (1.0 + 1e-6), "{a} vs {b}, d = {d}");
                if a.signum() == biggest.signum() || *a == 0.0 {
                    assert!(err <= d / 2.0 * (1.0 + 1e-6), "{a} vs {b}, d = {d}");
                }
            }
        }
    }

    #[test]
    fn float_codecs_round_trip() {
        let x: [f32; 5] = [0.0, -1.5, 3.25, 1e-3, 6.0e4];
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let mut buf = [0u8; 20];
            let n = dtype.byte_len(5).unwrap() as usize;
            encode(dtype, &x, &mut buf[..n]).unwrap();
            let mut back = [0f32; 5];
            decode(dtype, &buf[..n], &mut back).unwrap();
            for (a, b) in x.iter().zip(&back) {
                let tol = match dtype {
                    DType::F32 => 0.0,
                    DType::F16 => a.abs() / 1024.0,
                    _ => a.abs() / 128.0,
                };
                assert!((a - b).abs() <= tol, "{dtype}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut buf = [0u8; Q8_BLOCK_BYTES];
        let mut x = [0.5f32; QK];
        x[7] = f32::NAN;
        assert_eq!(
            encode(DType::Q8, &x, &mut buf),
            Err(CodecError::NonFinite { index: 7 })
        );
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q4] {
            let len = dtype.byte_len(QK as u64).unwrap() as usize;
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                x[7] = bad;
                assert_eq!(
                    encode(dtype, &x, &mut [0u8; 4 * QK][..len]),
                    Err(CodecError::NonFinite { index: 7 }),
                    "{dtype} {bad}"
                );
            }
        }
        // Bytes handed over already encoded are checked the same way.
        let mut raw = [0u8; 4 * QK];
        raw[8..12].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert_eq!(first_non_finite(DType::F32, &raw), Some(2));
        raw[..2].copy_from_slice(&f16::NAN.to_le_bytes());
        assert_eq!(first_non_finite(DType::F16, &raw), Some(0));
        assert_eq!(first_non_finite(DType::Q8, &raw[Q8_BLOCK_BYTES..]), None);
        raw[..2].fill(0);
        raw[Q8_BLOCK_BYTES..Q8_BLOCK_BYTES + 2].copy_from_slice(&f16::INFINITY.to_le_bytes());
        assert_eq!(
            first_non_finite(DType::Q8, &raw[..2 * Q8_BLOCK_BYTES]),
            Some(QK)
        );
        assert_eq!(first_non_finite(DType::U8, &raw), None);
        x[7] = 1e30;
        assert_eq!(
            encode(DType::Q8, &x, &mut buf),
            Err(CodecError::OutOfRange { index: 0 })
        );
        assert!(matches!(
            encode(DType::Q8, &x[..31], &mut buf),
            Err(CodecError::NotWholeBlocks { .. })
        ));
        assert!(matches!(
            encode(DType::F16, &[1e6], &mut buf[..2]),
            Err(CodecError::OutOfRange { .. })
        ));
        assert!(matches!(
            decode(DType::Q8, &buf[..33], &mut [0.0; 32]),
            Err(CodecError::WrongOutputLen { .. })
        ));
    }

    #[test]
    fn nibble_layout_matches_the_spec() {
        let mut x = [0f32; QK];
        x[0] = -8.0; // largest magnitude, negative: d = +1, nibble 0
        x[16] = 7.0; // nibble 15, stored in the high half of byte 0
        x[1] = 1.0; // nibble 9
        let mut buf = [0u8; Q4_BLOCK_BYTES];
        encode(DType::Q4, &x, &mut buf).unwrap();
        assert_eq!(block_scale(&buf), 1.0);
        assert_eq!(buf[2], 15 << 4);
        assert_eq!(buf[3], 9 | (8 << 4));
    }
}
