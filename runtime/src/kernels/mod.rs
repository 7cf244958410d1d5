//! CPU kernels for the MEGABYTE and BiGS forward passes.
//!
//! Every op is defined by a plain loop in [`scalar`]. The functions here check
//! their arguments, then run the fastest version this machine supports:
//! AVX2+FMA+F16C on x86_64 (detected at run time, since `no_std` has no
//! `is_x86_feature_detected!`), with AVX-VNNI's byte dot products for the
//! q8/q4 rows where the CPU has them and AVX-512 (512-bit float panels and
//! q8 tiles for batches, the EVEX `vpdpbusd` for the rest) where it has
//! that, NEON on aarch64 (always present there),
//! SIMD128 on wasm32 when the crate is built with the `simd128` feature
//! (WebAssembly has no run-time detection), and the scalar code everywhere
//! else and under Miri. The SIMD versions are
//! tested against the scalar ones and differ from them only in the order of
//! float additions.
//!
//! Matrices are row-major `[out, in]`, so `y = W x` streams each row once.
//! With q8/q4 weights the input is first quantised to q8 blocks in the
//! caller's `scratch`, and each block's dot product is an exact integer sum,
//! as in ggml: the inner loop becomes byte multiplies and the weights stay
//! compressed all the way to the registers. The price is the input's
//! rounding error, bounded in [`scalar::quantize_q8`].
//!
//! Nothing here allocates or panics on bad input: wrong lengths and shapes
//! are [`KernelError`]s, and NaNs or infinities only propagate.

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering::Relaxed};
use half::{bf16, f16};
use kilobyte_format::dtype::QK;
use kilobyte_format::error::tensor_name;
use kilobyte_format::{BlockQ4, BlockQ8, DType, FormatError, Shape, Tensor};

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod avx2;
#[cfg(all(target_arch = "x86_64", not(miri)))]
mod avx512;
#[cfg(all(kilobyte_dsp, not(miri)))]
pub mod dsp;
#[cfg(all(target_arch = "aarch64", not(miri)))]
mod neon;
pub mod scalar;
#[cfg(all(target_arch = "wasm32", feature = "simd128"))]
mod simd128;
#[cfg(test)]
mod tests;
#[cfg(any(
    all(any(target_arch = "x86_64", target_arch = "aarch64"), not(miri)),
    all(target_arch = "wasm32", feature = "simd128")
))]
mod tiles;
#[cfg(all(target_arch = "x86_64", not(miri)))]
mod vnni;

pub use scalar::{add, embedding_row, layer_norm, mul, quantize_row_i8, rms_norm, scale, softmax};

/// Why a kernel refused its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// `what` holds `actual` values where the op needs exactly `expected`.
    Length {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// `what` holds `actual` values where the op needs at least `needed`.
    TooShort {
        what: &'static str,
        needed: usize,
        actual: usize,
    },
    /// A zero dimension, a size that overflows `usize`, or q8/q4 rows that
    /// are not whole 32-value blocks.
    BadShape {
        rows: usize,
        cols: usize,
    },
    RowOutOfRange {
        row: usize,
        rows: usize,
    },
    /// [`set_isa`] asked for an instruction set this CPU or build lacks.
    Unsupported(Isa),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KernelError::Length {
                what,
                expected,
                actual,
            } => write!(f, "{what} holds {actual} values, {expected} are needed"),
            KernelError::TooShort {
                what,
                needed,
                actual,
            } => write!(
                f,
                "{what} holds {actual} values, at least {needed} are needed"
            ),
            KernelError::BadShape { rows, cols } => write!(
                f,
                "a {rows} x {cols} matrix is empty, too large, or not whole {QK}-value blocks"
            ),
            KernelError::RowOutOfRange { row, rows } => {
                write!(f, "row {row} is out of range for {rows} rows")
            }
            KernelError::Unsupported(isa) => write!(f, "{isa:?} is not available here"),
        }
    }
}

// As for `RuntimeError`: callers can `?` it into their own error types.
impl core::error::Error for KernelError {}

fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            actual,
        })
    }
}

fn check_at_least(what: &'static str, needed: usize, actual: usize) -> Result<(), KernelError> {
    if actual >= needed {
        Ok(())
    } else {
        Err(KernelError::TooShort {
            what,
            needed,
            actual,
        })
    }
}

// ---------------------------------------------------------------------------
// Weight views

/// A weight matrix's elements, borrowed (typically straight from a `.kbm`).
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    /// Blocks run along each row: row `r` is blocks `r * cols / 32 ..`.
    Q8(&'a [BlockQ8]),
    Q4(&'a [BlockQ4]),
}

/// A row-major `[rows, cols]` (`[out, in]`) matrix.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub weights: Weights<'a>,
    pub rows: usize,
    pub cols: usize,
}

impl<'a> Matrix<'a> {
    pub fn new(weights: Weights<'a>, rows: usize, cols: usize) -> Result<Self, KernelError> {
        let m = Matrix {
            weights,
            rows,
            cols,
        };
        m.check()?;
        Ok(m)
    }

    /// Views a tensor of a parsed file as a `rows x cols` matrix. The tensor
    /// must hold `rows * cols` elements with `cols` as its last dimension;
    /// errors name the tensor, which is what a model loader wants to report.
    // FormatError is large because it carries that name; boxing is not an
    // option without an allocator.
    #[allow(clippy::result_large_err)]
    pub fn from_tensor(t: &Tensor<'a>, rows: usize, cols: usize) -> Result<Self, FormatError> {
        let wrong_shape = || FormatError::WrongShape {
            name: tensor_name(t.name),
            expected: Shape::new(&[
                u32::try_from(rows).unwrap_or(u32::MAX),
                u32::try_from(cols).unwrap_or(u32::MAX),
            ]),
            found: t.shape,
        };
        let numel_matches = matches!(
            (t.shape.numel(), rows.checked_mul(cols)),
            (Some(have), Some(want)) if have == want as u64
        );
        if !numel_matches || t.shape.last() as usize != cols {
            return Err(wrong_shape());
        }
        let weights = match t.dtype {
            DType::F32 => Weights::F32(t.as_f32()?),
            DType::F16 => Weights::F16(t.as_f16()?),
            DType::BF16 => Weights::BF16(t.as_bf16()?),
            DType::Q8 => Weights::Q8(t.as_q8()?),
            DType::Q4 => Weights::Q4(t.as_q4()?),
            DType::U8 => {
                return Err(FormatError::WrongDtype {
                    name: tensor_name(t.name),
                    dtype: t.dtype,
                })
            }
        };
        Matrix::new(weights, rows, cols).map_err(|_| wrong_shape())
    }

    /// Rows `r0..r1` as a matrix of their own; the caller checked `self`
    /// and `r0 < r1 <= self.rows`.
    fn row_range(&self, r0: usize, r1: usize) -> Matrix<'a> {
        let (c, b) = (self.cols, self.cols / QK);
        let weights = match self.weights {
            Weights::F32(w) => Weights::F32(&w[r0 * c..r1 * c]),
            Weights::F16(w) => Weights::F16(&w[r0 * c..r1 * c]),
            Weights::BF16(w) => Weights::BF16(&w[r0 * c..r1 * c]),
            Weights::Q8(w) => Weights::Q8(&w[r0 * b..r1 * b]),
            Weights::Q4(w) => Weights::Q4(&w[r0 * b..r1 * b]),
        };
        Matrix {
            weights,
            rows: r1 - r0,
            cols: self.cols,
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.weights, Weights::Q8(_) | Weights::Q4(_))
    }

    /// Every op calls this: the fields are public, so a `Matrix` may not
    /// have come through [`Matrix::new`], and the SIMD kernels rely on it.
    fn check(&self) -> Result<(), KernelError> {
        let bad = KernelError::BadShape {
            rows: self.rows,
            cols: self.cols,
        };
        if self.rows == 0
            || self.cols == 0
            || (self.is_quantized() && !self.cols.is_multiple_of(QK))
        {
            return Err(bad);
        }
        let numel = self.rows.checked_mul(self.cols).ok_or(bad)?;
        let (expected, actual) = match self.weights {
            Weights::F32(w) => (numel, w.len()),
            Weights::F16(w) => (numel, w.len()),
            Weights::BF16(w) => (numel, w.len()),
            Weights::Q8(w) => (numel / QK, w.len()),
            Weights::Q4(w) => (numel / QK, w.len()),
        };
        check_len("weights", expected, actual)
    }
}

/// Blocks of `scratch` that [`matmul`] needs for `n` inputs of `cols` values
/// when the weights are q8 or q4; f32, f16 and bf16 weights ignore `scratch`.
pub const fn scratch_blocks(cols: usize, n: usize) -> usize {
    n.saturating_mul(cols / QK)
}

/// The head layout of attention rows: head `h` uses columns
/// `h * head_dim .. (h + 1) * head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub n_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// Values per row. Saturates, so an absurd layout fails the length checks.
    pub const fn width(self) -> usize {
        self.n_heads.saturating_mul(self.head_dim)
    }
}

/// Rows quantised by [`quantize_row_i8`]: `values` holds rows of
/// `heads.width()` values and `scales` one scale per row per head
/// (`scales[pos * n_heads + h]`). The scales are bf16: they only need the
/// int8 grid's precision (bf16 is 8 times finer), and halving them is what
/// brings micro MEGABYTE's arena at 512 bytes of context under 160 KiB.
#[derive(Clone, Copy, Debug)]
pub struct I8Rows<'a> {
    pub values: &'a [i8],
    pub scales: &'a [bf16],
}

// ---------------------------------------------------------------------------
// Instruction set selection

/// The instruction sets the kernels have versions for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// x86_64 AVX2 with FMA and F16C.
    Avx2,
    /// aarch64 Advanced SIMD.
    Neon,
    /// WebAssembly SIMD128 (wasm32 built with the `simd128` feature).
    Simd128,
    /// [`Isa::Avx2`] plus AVX-VNNI (`vpdpbusd`, VEX-encoded) for the q8/q4
    /// rows; every other kernel is the AVX2 one.
    Avx2Vnni,
    /// [`Isa::Avx2`] plus AVX-512 (F, BW, VL and VNNI) for the q8/q4 rows
    /// and the float panels of large batches; every other kernel is the
    /// AVX2 one.
    Avx512,
}

impl Isa {
    const ALL: [Isa; 6] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Neon,
        Isa::Simd128,
        Isa::Avx2Vnni,
        Isa::Avx512,
    ];

    /// The order [`detected`] picks in: the first usable one.
    const PREFERENCE: [Isa; 6] = [
        Isa::Avx512,
        Isa::Avx2Vnni,
        Isa::Avx2,
        Isa::Neon,
        Isa::Simd128,
        Isa::Scalar,
    ];

    // 0 means "not chosen yet" in SELECTED.
    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.code() == code)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Bit `isa as u8` for every set this machine runs, and [`DETECTED`] once
/// detection ran. A set, not a best-of: AVX-512 CPUs may or may not have
/// AVX-VNNI, so neither of those two sets includes the other.
static USABLE: AtomicU8 = AtomicU8::new(0);
const DETECTED: u8 = 0x80;
static SELECTED: AtomicU8 = AtomicU8::new(0);

fn usable(isa: Isa) -> bool {
    let mut set = USABLE.load(Relaxed);
    if set == 0 {
        set = detect() | Isa::Scalar.bit() | DETECTED;
        USABLE.store(set, Relaxed);
    }
    set & isa.bit() != 0
}

/// The best instruction set this machine supports.
pub fn detected() -> Isa {
    Isa::PREFERENCE
        .into_iter()
        .find(|&isa| usable(isa))
        .unwrap_or(Isa::Scalar)
}

/// The instruction set the kernels use: [`detected`] unless [`set_isa`]
/// chose another.
pub fn isa() -> Isa {
    Isa::from_code(SELECTED.load(Relaxed)).unwrap_or_else(detected)
}

/// Makes every kernel use `isa`, e.g. `Isa::Scalar` to measure what SIMD
/// buys. Only the sets this machine runs are accepted (`Isa::Scalar`,
/// [`detected`], and e.g. `Isa::Avx2` where AVX-512 was detected), which is
/// what keeps the dispatch sound. Affects all threads.
pub fn set_isa(isa: Isa) -> Result<(), KernelError> {
    if !usable(isa) {
        return Err(KernelError::Unsupported(isa));
    }
    SELECTED.store(isa.code(), Relaxed);
    Ok(())
}

/// The sets this CPU and OS run, as [`Isa::bit`]s.
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn detect() -> u8 {
    use core::arch::x86_64::{__cpuid_count, _xgetbv};
    // SAFETY: every x86_64 CPU has cpuid, and xgetbv is only executed once
    // cpuid reports OSXSAVE, i.e. that the OS enabled it.
    let (avx2, avx_vnni, avx512) = unsafe {
        let leaf1 = __cpuid_count(1, 0);
        let bit = |n: u32| leaf1.ecx & (1 << n) != 0;
        let (fma, osxsave, avx, f16c) = (bit(12), bit(27), bit(28), bit(29));
        // The OS must also save the YMM registers on a context switch
        // (XCR0 bits 1 and 2), or AVX state would be corrupted; for
        // AVX-512, the mask registers and all 32 ZMM registers too (bits 5
        // to 7).
        let xcr0 = if osxsave { _xgetbv(0) } else { 0 };
        let os_saves_ymm = xcr0 & 0b110 == 0b110;
        let os_saves_zmm = xcr0 & 0b1110_0110 == 0b1110_0110;
        let leaf7 = (__cpuid_count(0, 0).eax >= 7).then(|| __cpuid_count(7, 0));
        let ebx7 = |n: u32| leaf7.is_some_and(|l| l.ebx & (1 << n) != 0);
        let avx2 = fma && avx && f16c && os_saves_ymm && ebx7(5);
        // AVX-VNNI is leaf 7 subleaf 1, EAX bit 4; being VEX-encoded it
        // needs no more OS support than the YMM state.
        let avx_vnni = leaf7.is_some_and(|l| l.eax >= 1 && __cpuid_count(7, 1).eax & (1 << 4) != 0);
        // AVX512F, BW and VL (EBX bits 16, 30, 31) and AVX512-VNNI (ECX
        // bit 11).
        let vnni512 = leaf7.is_some_and(|l| l.ecx & (1 << 11) != 0);
        let avx512 = os_saves_zmm && ebx7(16) && ebx7(30) && ebx7(31) && vnni512;
        (avx2, avx2 && avx_vnni, avx2 && avx512)
    };
    let mut set = 0;
    for (on, isa) in [
        (avx2, Isa::Avx2),
        (avx_vnni, Isa::Avx2Vnni),
        (avx512, Isa::Avx512),
    ] {
        if on {
            set |= isa.bit();
        }
    }
    set
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
fn detect() -> u8 {
    Isa::Neon.bit()
}

// The engine either validated this module's SIMD instructions or refused
// to load it, so having been compiled in is proof enough.
#[cfg(all(target_arch = "wasm32", feature = "simd128"))]
fn detect() -> u8 {
    Isa::Simd128.bit()
}

#[cfg(not(any(
    all(any(target_arch = "x86_64", target_arch = "aarch64"), not(miri)),
    all(target_arch = "wasm32", feature = "simd128")
)))]
fn detect() -> u8 {
    0
}

/// An instruction set known to work on this machine. Only `current` and
/// `best` make one, which is what makes the `unsafe` in [`dispatch!`] sound.
#[derive(Clone, Copy, Debug)]
struct Backend(Isa);

impl Backend {
    fn current() -> Backend {
        Backend(isa())
    }

    #[cfg(test)]
    fn best() -> Backend {
        Backend(detected())
    }

    /// The best kernel set, then every other SIMD set this machine runs:
    /// the q8/q4 tests check the AVX2 kernels too where the VNNI or
    /// AVX-512 ones are the default, and still check the scalar dispatch where no SIMD set
    /// runs (Miri, wasm without simd128).
    #[cfg(test)]
    fn every_backend() -> impl Iterator<Item = Backend> {
        let best = detected();
        let others = Isa::ALL
            .into_iter()
            .filter(move |&i| i != best && i != Isa::Scalar && usable(i));
        core::iter::once(best).chain(others).map(Backend)
    }
}

/// Evaluates `$simd` with `$m` naming the backend's module (`avx2`, `vnni`,
/// `avx512`, `neon` or `simd128`, whose functions all share one signature), or
/// `$scalar`.
macro_rules! dispatch {
    ($backend:expr, |$m:ident| $simd:expr, $scalar:expr) => {
        match $backend.0 {
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            // SAFETY: a Backend holds Avx2 only if the CPU has AVX2, FMA and
            // F16C. The SIMD functions bound every access by the lengths of
            // the slices they get.
            Isa::Avx2 => unsafe {
                use avx2 as $m;
                $simd
            },
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            // SAFETY: a Backend holds Avx2Vnni only if the CPU also has
            // AVX-VNNI; accesses are bounded as above.
            Isa::Avx2Vnni => unsafe {
                use vnni as $m;
                $simd
            },
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            // SAFETY: a Backend holds Avx512 only if the CPU also has
            // AVX-512 F, BW, VL and VNNI and the OS saves their registers;
            // accesses are bounded as above.
            Isa::Avx512 => unsafe {
                use avx512 as $m;
                $simd
            },
            #[cfg(all(target_arch = "aarch64", not(miri)))]
            // SAFETY: NEON is part of every aarch64 target; accesses are
            // bounded as above.
            Isa::Neon => unsafe {
                use neon as $m;
                $simd
            },
            #[cfg(all(target_arch = "wasm32", feature = "simd128"))]
            // SAFETY: a Backend holds Simd128 only in a module built with
            // it, which an engine without SIMD128 refuses to instantiate;
            // accesses are bounded as above.
            Isa::Simd128 => unsafe {
                use simd128 as $m;
                $simd
            },
            _ => $scalar,
        }
    };
}

// ---------------------------------------------------------------------------
// Matrix products

/// `y = W x`: `x` holds `w.cols` values, `y` `w.rows`. For q8/q4 weights,
/// `scratch` needs [`scratch_blocks`]`(w.cols, 1)` blocks and receives `x`
/// quantised; float weights ignore it.
pub fn matvec(
    w: &Matrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [BlockQ8],
) -> Result<(), KernelError> {
    check_len("x", w.cols, x.len())?;
    matmul(w, x, y, scratch)
}

/// `y_i = W x_i` for the `n = x.len() / w.cols` inputs stored one after the
/// other in `x`; `y` holds `n` rows of `w.rows`. Much faster than `n`
/// [`matvec`]s: each weight row is loaded once for a batch of inputs.
/// `scratch` needs [`scratch_blocks`]`(w.cols, n)` blocks for q8/q4 weights.
pub fn matmul(
    w: &Matrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [BlockQ8],
) -> Result<(), KernelError> {
    matmul_on(Backend::current(), w, x, y, scratch)
}

fn matmul_on(
    backend: Backend,
    w: &Matrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [BlockQ8],
) -> Result<(), KernelError> {
    let n = check_matmul(w, x, y, scratch)?;
    quantize_input(backend, w, x, scratch)?;
    rows_on(backend, w, x, scratch, n, y);
    Ok(())
}

/// Quantises `x` into `scratch` if `w` is q8/q4: what the products of
/// [`rows_on`] read.
fn quantize_input(
    backend: Backend,
    w: &Matrix,
    x: &[f32],
    scratch: &mut [BlockQ8],
) -> Result<(), KernelError> {
    if w.is_quantized() {
        dispatch!(
            backend,
            |simd| simd::quantize_q8(x, scratch),
            scalar::quantize_q8(x, scratch)?
        );
    }
    Ok(())
}

/// The products of a checked matmul whose input is prepared.
fn rows_on(backend: Backend, w: &Matrix, x: &[f32], xq: &[BlockQ8], n: usize, y: &mut [f32]) {
    dispatch!(
        backend,
        |simd| simd::matmul(w, x, n, y, xq),
        scalar::matmul_prepared(w, x, xq, n, y)
    )
}

/// [`matmul`] with the rows of one input split across `par`'s threads when
/// the matrix is large enough for that to pay ([`Parallel::min_macs`]).
/// The result is bit for bit [`matmul`]'s: each part is a run of whole
/// tiles through the same kernel. Batches (`n > 1`, prefill) run serially:
/// their output rows are not contiguous per weight row.
pub fn matmul_parallel(
    par: &dyn Parallel,
    w: &Matrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [BlockQ8],
) -> Result<(), KernelError> {
    matmul_parallel_on(Backend::current(), par, w, x, y, scratch)
}

fn matmul_parallel_on(
    backend: Backend,
    par: &dyn Parallel,
    w: &Matrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [BlockQ8],
) -> Result<(), KernelError> {
    let threads = par.threads();
    if threads < 2 || x.len() != w.cols || w.rows.saturating_mul(w.cols) < par.min_macs() {
        return matmul_on(backend, w, x, y, scratch);
    }
    check_matmul(w, x, y, scratch)?;
    quantize_input(backend, w, x, scratch)?;
    let xq = &*scratch;
    let chunk = w
        .rows
        .div_ceil(threads.saturating_mul(PARTS_PER_THREAD))
        .next_multiple_of(SPLIT_ROWS);
    let out = RowsOut(y.as_mut_ptr());
    par.run(w.rows.div_ceil(chunk), &|part| {
        let r0 = part * chunk;
        let r1 = w.rows.min(r0 + chunk);
        if r0 >= r1 {
            return;
        }
        // SAFETY: `y` holds `w.rows` values (checked above) and outlives
        // `run`, which returns only after every part has (the `Parallel`
        // contract); part `part` is the only one given rows `r0..r1`, as
        // `run` calls each part once, so no two slices overlap.
        let y = unsafe { core::slice::from_raw_parts_mut(out.at(r0), r1 - r0) };
        rows_on(backend, &w.row_range(r0, r1), x, xq, 1, y);
    });
    Ok(())
}

/// [`Parallel::min_macs`] unless an executor knows better: waking and joining another costs about a microsecond, and
/// the parts' claims cross cores. On the 2-core development machine
/// (`bench_split_threshold` in the trainer's `cli/threads.rs`), f32 gained
/// 1.3x from 384 x 384 and q8/q4 broke even at 768 x 256 and gained from
/// 1024 x 256 (1.1 to 1.2x) up to 1.7x at 3072 x 768; 256 x 256 lost.
pub const PARALLEL_MIN_MACS: usize = 1 << 17;

/// Parts per thread: a thread that the scheduler preempts (or wakes late)
/// holds up only the part it is in, while the others take the rest; more
/// parts cost more claims (4 measured slower than 2 for q8).
const PARTS_PER_THREAD: usize = 2;

/// Parts are whole multiples of this many rows: a multiple of every SIMD
/// kernel's tile height, so each row goes through the same tile, and so
/// the same operations, whatever the split.
const SPLIT_ROWS: usize = 16;

/// The output of [`matmul_parallel_on`], shared by its parts, each of
/// which writes only its own rows.
#[derive(Clone, Copy)]
struct RowsOut(*mut f32);

// SAFETY: the parts that share it write disjoint rows (see its one use).
unsafe impl Sync for RowsOut {}

impl RowsOut {
    /// A method, so that closures capture the `Sync` wrapper, not the field.
    fn at(self, row: usize) -> *mut f32 {
        self.0.wrapping_add(row)
    }
}

// ---------------------------------------------------------------------------
// Threads

/// Runs the parts of one op at once on threads the caller owns: the
/// runtime starts none (it also runs in firmware), so a host that has
/// threads hands them in, e.g. with `Session::set_parallel`. [`Serial`] is
/// the default.
///
/// # Safety
/// `run(parts, f)` must call `f(i)` exactly once for every `i < parts`, on
/// any threads and in any order, and return only after every call has
/// returned: [`matmul_parallel`] gives each part its own rows of the output
/// through a raw pointer, which is sound only then.
pub unsafe trait Parallel: Sync {
    /// How many parts run at once (1: serial).
    fn threads(&self) -> usize;
    /// Matrix sizes (rows x cols) below which a product stays on one thread.
    fn min_macs(&self) -> usize {
        PARALLEL_MIN_MACS
    }
    fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync));
}

/// One thread: parts run one after the other.
pub struct Serial;

// SAFETY: each part is called once, before `run` returns.
unsafe impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..parts).for_each(f)
    }
}

/// Returns the number of inputs.
fn check_matmul(
    w: &Matrix,
    x: &[f32],
    y: &[f32],
    scratch: &[BlockQ8],
) -> Result<usize, KernelError> {
    w.check()?;
    let n = x.len() / w.cols;
    check_len("x", n * w.cols, x.len())?;
    check_len("y", n.saturating_mul(w.rows), y.len())?;
    if w.is_quantized() {
        check_at_least("scratch", scratch_blocks(w.cols, n), scratch.len())?;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// Vector ops

/// GELU, tanh form, in place (see [`scalar::gelu_tanh`]). The SIMD
/// versions compute the same function through `e^x` and differ from the
/// scalar one by a few ulp.
pub fn gelu_tanh(x: &mut [f32]) {
    gelu_tanh_on(Backend::current(), x)
}

fn gelu_tanh_on(backend: Backend, x: &mut [f32]) {
    dispatch!(backend, |simd| simd::gelu_tanh(x), scalar::gelu_tanh(x))
}

/// `a · b`.
pub fn dot(a: &[f32], b: &[f32]) -> Result<f32, KernelError> {
    dot_on(Backend::current(), a, b)
}

fn dot_on(backend: Backend, a: &[f32], b: &[f32]) -> Result<f32, KernelError> {
    check_len("b", a.len(), b.len())?;
    Ok(dispatch!(
        backend,
        |simd| simd::dot(a, b),
        scalar::dot(a, b)?
    ))
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    axpy_on(Backend::current(), alpha, x, y)
}

fn axpy_on(backend: Backend, alpha: f32, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    check_len("y", x.len(), y.len())?;
    dispatch!(
        backend,
        |simd| simd::axpy(alpha, x, y),
        scalar::axpy(alpha, x, y)?
    );
    Ok(())
}

/// `out = sum_i p[i] * rows[i * stride..][..out.len()]`: a weighted sum of
/// `p.len()` rows `stride` apart (attention's mix of value rows, BiGS's SSM
/// convolution), with `out` held in registers while the rows stream past.
pub fn mix(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) -> Result<(), KernelError> {
    mix_on(Backend::current(), p, rows, stride, out)
}

fn mix_on(
    backend: Backend,
    p: &[f32],
    rows: &[f32],
    stride: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if let Some(last) = p.len().checked_sub(1) {
        let needed = last.saturating_mul(stride).saturating_add(out.len());
        check_at_least("rows", needed, rows.len())?;
    }
    dispatch!(
        backend,
        |simd| simd::head_mix(p, rows, stride, out),
        scalar::head_mix(p, rows, stride, out)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Attention

/// One query against the first `n_pos` rows of a key/value cache:
/// per head, scores `q·k / sqrt(head_dim)`, softmax over positions, then
/// the weighted sum of the values. `q` and `out` hold `heads.width()` values;
/// `keys` and `values` at least `n_pos` rows of that width (more is ignored,
/// so a whole cache buffer can be passed); `scores` is scratch for at least
/// `n_pos` values. Causal masking is the caller's choice of `n_pos`.
pub fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n_pos: usize,
    heads: Heads,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    attention_on(
        Backend::current(),
        q,
        keys,
        values,
        n_pos,
        heads,
        scores,
        out,
    )
}

/// [`attention`] over a cache quantised with [`quantize_row_i8`] (a quarter
/// of the memory, for microcontrollers). `keys` and `values` hold at least
/// `n_pos` rows and `n_pos * n_heads` scales.
pub fn attention_i8(
    q: &[f32],
    keys: I8Rows,
    values: I8Rows,
    n_pos: usize,
    heads: Heads,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    attention_i8_on(
        Backend::current(),
        q,
        keys,
        values,
        n_pos,
        heads,
        scores,
        out,
    )
}

/// Checks the lengths every attention call shares.
fn check_attention(
    q: &[f32],
    n_pos: usize,
    heads: Heads,
    scores: &[f32],
    out: &[f32],
) -> Result<(), KernelError> {
    check_len("q", heads.width(), q.len())?;
    check_len("out", heads.width(), out.len())?;
    check_at_least("positions", 1, n_pos)?;
    check_at_least("scores", n_pos, scores.len())
}

/// Checks that a cache holds `n_pos` rows of `per_row` values.
fn check_rows(
    what: &'static str,
    n_pos: usize,
    per_row: usize,
    len: usize,
) -> Result<(), KernelError> {
    check_at_least(what, n_pos.saturating_mul(per_row), len)
}

// The public arguments plus the backend.
#[allow(clippy::too_many_arguments)]
fn attention_on(
    backend: Backend,
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
    for (h, (q_h, out_h)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
        let (k_h, v_h) = (&keys[h * hd..], &values[h * hd..]);
        dispatch!(
            backend,
            |simd| simd::head_dots(q_h, k_h, width, scores),
            scalar::head_dots(q_h, k_h, width, scores)
        );
        scores.iter_mut().for_each(|s| *s *= scale);
        softmax(scores);
        dispatch!(
            backend,
            |simd| simd::head_mix(scores, v_h, width, out_h),
            scalar::head_mix(scores, v_h, width, out_h)
        );
    }
    Ok(())
}

// The public arguments plus the backend.
#[allow(clippy::too_many_arguments)]
fn attention_i8_on(
    backend: Backend,
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
    for (h, (q_h, out_h)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
        let (k_h, v_h) = (&keys.values[h * hd..], &values.values[h * hd..]);
        dispatch!(
            backend,
            |simd| simd::head_dots_i8(q_h, k_h, width, scores),
            scalar::head_dots_i8(q_h, k_h, width, scores)
        );
        for (s, ks) in scores
            .iter_mut()
            .zip(keys.scales[h..].iter().step_by(n_heads))
        {
            *s = *s * ks.to_f32() * scale;
        }
        softmax(scores);
        // Folding each value row's scale into its weight leaves an i8 axpy.
        for (p, vs) in scores
            .iter_mut()
            .zip(values.scales[h..].iter().step_by(n_heads))
        {
            *p *= vs.to_f32();
        }
        dispatch!(
            backend,
            |simd| simd::head_mix_i8(scores, v_h, width, out_h),
            scalar::head_mix_i8(scores, v_h, width, out_h)
        );
    }
    Ok(())
}
