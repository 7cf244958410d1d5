//! The CUDA backend: buffers live on an NVIDIA GPU (`CudaSlice<f32>`, fp32
//! master weights, gradients and optimizer state), large products run on
//! cuBLAS, everything else on the kernels of `kernels.cu`, compiled at run
//! time by NVRTC ([`compile`]).
//!
//! The driver, NVRTC and cuBLAS are loaded dynamically (cudarc's
//! `dynamic-loading`), so the binary builds and runs on machines without
//! CUDA; [`CudaBackend::new`] checks for the driver library before touching
//! it (cudarc panics when a library is missing) and answers with a one-line
//! error instead.
//!
//! Precision ([`Precision`]): `Bf16` rounds both operands of every matrix
//! product to bf16 and accumulates in fp32 (cuBLAS `GemmEx`, tensor cores);
//! `Fp32` runs the products in plain fp32 with TF32 disabled (pedantic math
//! mode), for parity with the CPU. Every other op computes in fp32 in both
//! modes, and the master weights and optimizer state are always fp32.
//!
//! Determinism: no kernel uses atomics and reductions have a fixed order, so
//! runs repeat bit for bit on one GPU (see `kernels.cu`); cuBLAS is
//! deterministic for a fixed stream, size and GPU.

pub mod compile;
#[cfg(test)]
mod tests;

use super::shapes::{
    AdamWStep, Attention, CrossEntropy, Direction, LayerNorm, Linear, Logits, NormSaved, SsmConv,
    SsmDims, SsmFilterGrads, SsmParams, SsmShape, WeightBias,
};
use super::Backend;
pub use super::Precision;
use anyhow::{anyhow, bail, Context, Result};
use compile::Kernel;
use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    LaunchConfig, PushKernelArg,
};
use std::sync::{Arc, Mutex};

/// Whether the CUDA driver library can be loaded (checked without letting
/// cudarc panic).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Threads per block for elementwise and grid-stride kernels.
const BLOCK: u32 = 256;
/// Blocks of the sum-of-squares kernel: fixed, so partial sums are added in
/// the same order on every run.
const SUMSQ_BLOCKS: usize = 128;
/// Rows per partial sum in the two-pass column sums.
const COLSUM_CHUNK: usize = 256;

/// Growable scratch buffers for ops that need temporary device memory.
#[derive(Default)]
struct Scratch {
    f32s: Vec<CudaSlice<f32>>,
    f64s: Option<CudaSlice<f64>>,
    bf16: [Option<CudaSlice<u16>>; 2],
}

/// The CUDA backend on one GPU.
/// One operand of [`CudaBackend::gemm`]: a column-major matrix with leading
/// dimension `ld`, used transposed when `trans`.
struct Operand<'a> {
    buf: &'a CudaSlice<f32>,
    ld: usize,
    trans: bool,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    _module: Arc<CudaModule>,
    /// Indexed by [`Kernel`].
    functions: Vec<CudaFunction>,
    precision: Precision,
    device_name: String,
    /// Peak dense bf16 tensor-core rate in FLOP/s, when known (for MFU).
    peak_bf16_flops: Option<f64>,
    scratch: Mutex<Scratch>,
}

/// Shorthand for a kernel argument list: `launch!(self, Kernel::X, cfg; a, b, c)`.
macro_rules! launch {
    ($be:expr, $kernel:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let cfg: LaunchConfig = $cfg;
        let kernel: Kernel = $kernel;
        let f = $be.function(kernel);
        let mut b = $be.stream.launch_builder(f);
        $( b.arg($arg); )*
        // SAFETY: the argument list matches the kernel's signature in
        // kernels.cu, and the callers checked every buffer's length.
        unsafe { b.launch(cfg) }.unwrap_or_else(|e| panic!("CUDA kernel {}: {e:?}", kernel.name()));
    }};
}

/// A grid of `grid` blocks of `threads` threads, no dynamic shared memory.
fn blocks(grid: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn grid_for(n: usize) -> LaunchConfig {
    let count = n.div_ceil(BLOCK as usize).clamp(1, 65_535 * 8) as u32;
    blocks((count, 1, 1), BLOCK)
}

/// One block per (row, head, sequence) of an attention op.
fn attention_blocks(a: Attention) -> u32 {
    u32::try_from(a.seq * a.heads * a.batch).expect("attention grid exceeds 2^32 blocks")
}

/// One warp per row, eight rows per block.
fn warp_rows(rows: usize) -> LaunchConfig {
    blocks((rows.div_ceil(8).max(1) as u32, 1, 1), 256)
}

fn check(what: &str, len: usize, n: usize) {
    assert!(len >= n, "{what}: buffer has {len} elements, op needs {n}");
}

fn i32_of(n: usize) -> i32 {
    i32::try_from(n).expect("size exceeds the kernels' 32-bit range")
}

impl CudaBackend {
    /// Opens GPU `ordinal`, compiles (or loads from the cache) the kernels
    /// and sets up cuBLAS.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self> {
        if !driver_present() {
            bail!("no CUDA driver found (libcuda.so could not be loaded); use --device cpu");
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("cannot open CUDA device {ordinal}: {e:?}; use --device cpu"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| anyhow!("CUDA device {ordinal}: {e:?}"))?;
        // SAFETY: all work goes to one stream, in order, so cudarc's
        // per-buffer events (for cross-stream synchronisation) would only
        // add a driver call per kernel argument.
        unsafe { ctx.disable_event_tracking() };
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let ptx = compile::kernels_for(major, minor)?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| anyhow!("loading the CUDA kernels on {device_name}: {e:?}"))?;
        let functions = Kernel::ALL
            .iter()
            .map(|k| {
                let name = k.name();
                module
                    .load_function(name)
                    .map_err(|e| anyhow!("kernel {name} missing from the module: {e:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| {
            anyhow!("cuBLAS could not be loaded ({e:?}); install the CUDA libraries or use --device cpu")
        })?;
        let math = match precision {
            // TF32 off: products are true fp32, as on the CPU.
            Precision::Fp32 => blas_sys::cublasMath_t::CUBLAS_PEDANTIC_MATH,
            Precision::Bf16 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        };
        // SAFETY: a valid handle and an enum value.
        unsafe { blas_sys::cublasSetMathMode(*blas.handle(), math) }
            .result()
            .map_err(|e| anyhow!("cublasSetMathMode: {e:?}"))?;
        let peak_bf16_flops = peak_bf16_flops(&device_name);
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            _module: module,
            functions,
            precision,
            device_name,
            peak_bf16_flops,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Peak dense bf16 rate of this GPU (FLOP/s) when it is in the table.
    pub fn peak_bf16_flops(&self) -> Option<f64> {
        self.peak_bf16_flops
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    fn function(&self, kernel: Kernel) -> &CudaFunction {
        &self.functions[kernel as usize]
    }

    fn fail<T, E: std::fmt::Debug>(r: std::result::Result<T, E>, what: &str) -> T {
        r.unwrap_or_else(|e| panic!("CUDA {what}: {e:?}"))
    }

    /// Runs `f` with `count` f32 scratch buffers of at least `lens[i]`
    /// elements (contents undefined).
    fn with_f32_scratch<R>(&self, lens: &[usize], f: impl FnOnce(&mut [CudaSlice<f32>]) -> R) -> R {
        let mut s = self.scratch.lock().expect("scratch lock");
        while s.f32s.len() < lens.len() {
            let b = Self::fail(self.stream.alloc_zeros::<f32>(1), "alloc");
            s.f32s.push(b);
        }
        for (buf, &len) in s.f32s.iter_mut().zip(lens) {
            if buf.len() < len {
                *buf = Self::fail(self.stream.alloc_zeros::<f32>(len), "alloc");
            }
        }
        f(&mut s.f32s[..lens.len()])
    }

    fn with_f64_scratch<R>(&self, len: usize, f: impl FnOnce(&mut CudaSlice<f64>) -> R) -> R {
        let mut s = self.scratch.lock().expect("scratch lock");
        if s.f64s.as_ref().is_none_or(|b| b.len() < len) {
            s.f64s = Some(Self::fail(self.stream.alloc_zeros::<f64>(len), "alloc"));
        }
        f(s.f64s.as_mut().unwrap())
    }

    /// `out[c] += sum over rows r of x[r * row_stride + c]` (two passes,
    /// fixed order).
    fn colsum_into(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        rows: usize,
        width: usize,
        row_stride: usize,
    ) {
        if rows == 0 || width == 0 {
            return;
        }
        let chunks = rows.div_ceil(COLSUM_CHUNK);
        self.with_f32_scratch(&[chunks * width], |s| {
            let partial = &mut s[0];
            let cfg = blocks(
                (width.div_ceil(BLOCK as usize) as u32, chunks as u32, 1),
                BLOCK,
            );
            let (r, w, st, ch) = (
                i32_of(rows),
                i32_of(width),
                row_stride as i64,
                COLSUM_CHUNK as i32,
            );
            launch!(self, Kernel::ColsumPartial, cfg; x, &r, &w, &st, &ch, &mut *partial);
            self.colsum_finish(out, partial, chunks, width);
        });
    }

    fn colsum_finish(
        &self,
        out: &mut CudaSlice<f32>,
        partial: &CudaSlice<f32>,
        chunks: usize,
        width: usize,
    ) {
        let (c, w) = (i32_of(chunks), i32_of(width));
        launch!(self, Kernel::ColsumFinish, grid_for(width); partial, &c, &w, out);
    }

    /// `c[m, n] (col-major, ldc) = alpha op(a) op(b) + beta c` in the
    /// backend's precision. Row-major callers pass transposed roles (see
    /// `matmul_forward`).
    fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        a: Operand<'_>,
        b: Operand<'_>,
        beta: f32,
        c: &mut CudaSlice<f32>,
        ldc: usize,
    ) {
        let Operand {
            buf: a,
            ld: lda,
            trans: transa,
        } = a;
        let Operand {
            buf: b,
            ld: ldb,
            trans: transb,
        } = b;
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let op = |t| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let alpha = 1.0f32;
        let (m, n, k) = (i32_of(m), i32_of(n), i32_of(k));
        let (lda, ldb, ldc) = (i32_of(lda), i32_of(ldb), i32_of(ldc));
        match self.precision {
            Precision::Fp32 => {
                use cudarc::cublas::{Gemm, GemmConfig};
                let cfg = GemmConfig {
                    transa: op(transa),
                    transb: op(transb),
                    m,
                    n,
                    k,
                    alpha,
                    lda,
                    ldb,
                    beta,
                    ldc,
                };
                // SAFETY: the callers checked the buffers' lengths against
                // the sizes.
                Self::fail(unsafe { self.blas.gemm(cfg, a, b, c) }, "sgemm");
            }
            Precision::Bf16 => {
                let mut s = self.scratch.lock().expect("scratch lock");
                let lens = [a.len(), b.len()];
                for (slot, len) in s.bf16.iter_mut().zip(lens) {
                    if slot.as_ref().is_none_or(|x| x.len() < len) {
                        *slot = Some(Self::fail(self.stream.alloc_zeros::<u16>(len), "alloc"));
                    }
                }
                let [a16, b16] = &mut s.bf16;
                let (a16, b16) = (a16.as_mut().unwrap(), b16.as_mut().unwrap());
                for (src, dst) in [(a, &mut *a16), (b, &mut *b16)] {
                    let n = src.len() as i64;
                    launch!(self, Kernel::ToBf16, grid_for(src.len()); src, &mut *dst, &n);
                }
                let (pa, _ra) = a16.device_ptr(&self.stream);
                let (pb, _rb) = b16.device_ptr(&self.stream);
                let (pc, _rc) = c.device_ptr_mut(&self.stream);
                // SAFETY: device pointers of live buffers of the checked
                // sizes; alpha and beta are host f32s (the default pointer
                // mode).
                let r = unsafe {
                    cudarc::cublas::result::gemm_ex(
                        *self.blas.handle(),
                        op(transa),
                        op(transb),
                        m,
                        n,
                        k,
                        (&alpha) as *const f32 as *const _,
                        pa as *const _,
                        blas_sys::cudaDataType::CUDA_R_16BF,
                        lda,
                        pb as *const _,
                        blas_sys::cudaDataType::CUDA_R_16BF,
                        ldb,
                        (&beta) as *const f32 as *const _,
                        pc as *mut _,
                        blas_sys::cudaDataType::CUDA_R_32F,
                        ldc,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                    )
                };
                Self::fail(r, "gemm_ex (bf16)");
            }
        }
    }
}

/// Dense bf16 tensor-core peaks (FLOP/s, without sparsity) of the GPUs the
/// project measures on; MFU is reported only for these.
fn peak_bf16_flops(name: &str) -> Option<f64> {
    let table = [
        ("H200", 989e12),
        ("H100 PCIe", 756e12),
        ("H100", 989e12),
        ("A100", 312e12),
        ("L40S", 362e12),
        ("RTX 4090", 165e12),
    ];
    table
        .iter()
        .find(|(key, _)| name.contains(key))
        .map(|&(_, flops)| flops)
}

impl Backend for CudaBackend {
    type Buf = CudaSlice<f32>;
    type Ids = CudaSlice<u32>;

    fn name(&self) -> String {
        format!("cuda {} ({})", self.precision.name(), self.device_name)
    }

    fn peak_flops(&self) -> Option<f64> {
        self.peak_bf16_flops
    }

    fn alloc(&self, len: usize) -> Result<Self::Buf> {
        self.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| anyhow!("CUDA: allocating {len} floats: {e:?}"))
    }
    fn upload(&self, host: &[f32]) -> Result<Self::Buf> {
        if host.is_empty() {
            return self.alloc(0);
        }
        self.stream
            .clone_htod(host)
            .map_err(|e| anyhow!("CUDA upload: {e:?}"))
    }
    fn write(&self, buf: &mut Self::Buf, host: &[f32]) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        check("write", buf.len(), host.len());
        self.stream
            .memcpy_htod(host, &mut buf.slice_mut(0..host.len()))
            .map_err(|e| anyhow!("CUDA write: {e:?}"))
    }
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        self.stream
            .clone_dtoh(buf)
            .map_err(|e| anyhow!("CUDA download: {e:?}"))
    }
    fn len(&self, buf: &Self::Buf) -> usize {
        buf.len()
    }
    fn upload_ids(&self, host: &[u32]) -> Result<Self::Ids> {
        if host.is_empty() {
            return self
                .stream
                .alloc_zeros::<u32>(1)
                .map_err(|e| anyhow!("CUDA alloc: {e:?}"));
        }
        self.stream
            .clone_htod(host)
            .map_err(|e| anyhow!("CUDA upload: {e:?}"))
    }
    fn write_ids(&self, ids: &mut Self::Ids, host: &[u32]) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        check("write_ids", ids.len(), host.len());
        self.stream
            .memcpy_htod(host, &mut ids.slice_mut(0..host.len()))
            .map_err(|e| anyhow!("CUDA write: {e:?}"))
    }
    fn ids_len(&self, ids: &Self::Ids) -> usize {
        ids.len()
    }
    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("CUDA synchronize: {e:?}"))
    }

    fn zero(&self, buf: &mut Self::Buf) {
        Self::fail(self.stream.memset_zeros(buf), "memset");
    }
    fn zero_prefix(&self, buf: &mut Self::Buf, n: usize) {
        if n == 0 {
            return;
        }
        check("zero_prefix", buf.len(), n);
        Self::fail(self.stream.memset_zeros(&mut buf.slice_mut(0..n)), "memset");
    }
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf) {
        check("copy", dst.len(), src.len());
        Self::fail(
            self.stream
                .memcpy_dtod(src, &mut dst.slice_mut(0..src.len())),
            "copy",
        );
    }
    fn scale(&self, buf: &mut Self::Buf, s: f32) {
        let n = buf.len() as i64;
        launch!(self, Kernel::Scale, grid_for(buf.len()); &mut *buf, &s, &n);
    }
    fn add_assign(&self, dst: &mut Self::Buf, src: &Self::Buf) {
        assert_eq!(dst.len(), src.len(), "add_assign: lengths differ");
        let n = dst.len() as i64;
        launch!(self, Kernel::AddAssign, grid_for(dst.len()); &mut *dst, src, &n);
    }
    fn sum_squares(&self, buf: &Self::Buf) -> f64 {
        self.sum_squares_many(std::slice::from_ref(buf))
    }
    fn sum_squares_many(&self, bufs: &[Self::Buf]) -> f64 {
        if bufs.is_empty() {
            return 0.0;
        }
        let partials = self.with_f64_scratch(bufs.len() * SUMSQ_BLOCKS, |out| {
            for (i, b) in bufs.iter().enumerate() {
                let n = b.len() as i64;
                let cfg = blocks((SUMSQ_BLOCKS as u32, 1, 1), BLOCK);
                let mut part = out.slice_mut(i * SUMSQ_BLOCKS..(i + 1) * SUMSQ_BLOCKS);
                launch!(self, Kernel::SumSquaresPartial, cfg; b, &n, &mut part);
            }
            Self::fail(
                self.stream
                    .clone_dtoh(&out.slice(0..bufs.len() * SUMSQ_BLOCKS)),
                "download",
            )
        });
        // Buffer by buffer, block by block: the CPU's order of buffers.
        partials
            .chunks(SUMSQ_BLOCKS)
            .map(|p| p.iter().sum::<f64>())
            .sum()
    }

    fn matmul_forward(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        weight: &Self::Buf,
        bias: Option<&Self::Buf>,
        d: Linear,
    ) {
        check("matmul out", out.len(), d.rows * d.out_dim);
        check("matmul inp", inp.len(), d.rows * d.in_dim);
        check("matmul weight", weight.len(), d.out_dim * d.in_dim);
        if d.rows == 0 || d.out_dim == 0 {
            return;
        }
        // Row-major out = inp W^T is column-major out^T = W inp^T:
        // (out x rows) = op_T(W as in x out) * (inp^T as in x rows).
        self.gemm(
            (d.out_dim, d.rows, d.in_dim),
            Operand {
                buf: weight,
                ld: d.in_dim,
                trans: true,
            },
            Operand {
                buf: inp,
                ld: d.in_dim,
                trans: false,
            },
            0.0,
            out,
            d.out_dim,
        );
        if let Some(bias) = bias {
            check("matmul bias", bias.len(), d.out_dim);
            let (r, w) = (i32_of(d.rows), i32_of(d.out_dim));
            launch!(self, Kernel::BiasInplace, grid_for(d.rows * d.out_dim); &mut *out, bias, &r, &w);
        }
    }
    fn matmul_backward(
        &self,
        dinp: Option<&mut Self::Buf>,
        dparams: WeightBias<&mut Self::Buf, Option<&mut Self::Buf>>,
        dout: &Self::Buf,
        inp: &Self::Buf,
        weight: &Self::Buf,
        d: Linear,
    ) {
        let WeightBias {
            weight: dweight,
            bias: dbias,
        } = dparams;
        check("matmul dout", dout.len(), d.rows * d.out_dim);
        check("matmul inp", inp.len(), d.rows * d.in_dim);
        check("matmul dweight", dweight.len(), d.out_dim * d.in_dim);
        if d.rows == 0 {
            return;
        }
        if let Some(dinp) = dinp {
            check("matmul dinp", dinp.len(), d.rows * d.in_dim);
            // dinp^T (in x rows) += W^T (in x out) dout^T (out x rows).
            self.gemm(
                (d.in_dim, d.rows, d.out_dim),
                Operand {
                    buf: weight,
                    ld: d.in_dim,
                    trans: false,
                },
                Operand {
                    buf: dout,
                    ld: d.out_dim,
                    trans: false,
                },
                1.0,
                dinp,
                d.in_dim,
            );
        }
        // dW^T (in x out) += inp^T (in x rows) op_T(dout^T as out x rows).
        self.gemm(
            (d.in_dim, d.out_dim, d.rows),
            Operand {
                buf: inp,
                ld: d.in_dim,
                trans: false,
            },
            Operand {
                buf: dout,
                ld: d.out_dim,
                trans: true,
            },
            1.0,
            dweight,
            d.in_dim,
        );
        if let Some(dbias) = dbias {
            check("matmul dbias", dbias.len(), d.out_dim);
            self.colsum_into(dbias, dout, d.rows, d.out_dim, d.out_dim);
        }
    }

    fn layernorm_forward(
        &self,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        inp: &Self::Buf,
        params: WeightBias<&Self::Buf>,
        ln: LayerNorm,
    ) {
        let WeightBias { weight, bias } = params;
        let LayerNorm { rows, width, eps } = ln;
        check("layernorm out", out.len(), rows * width);
        check("layernorm inp", inp.len(), rows * width);
        check("layernorm stats", mean.len().min(rstd.len()), rows);
        check("layernorm params", weight.len().min(bias.len()), width);
        let (r, w) = (i32_of(rows), i32_of(width));
        launch!(self, Kernel::LayernormForward, warp_rows(rows);
            &mut *out, &mut *mean, &mut *rstd, inp, weight, bias, &r, &w, &eps);
    }
    fn layernorm_backward(
        &self,
        dinp: &mut Self::Buf,
        dparams: WeightBias<&mut Self::Buf>,
        dout: &Self::Buf,
        saved: NormSaved<'_, Self::Buf>,
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
        check("layernorm dinp", dinp.len(), rows * width);
        check("layernorm dout", dout.len(), rows * width);
        check("layernorm dparams", dweight.len().min(dbias.len()), width);
        if rows == 0 {
            return;
        }
        let (r, w) = (i32_of(rows), i32_of(width));
        launch!(self, Kernel::LayernormBackwardInput, warp_rows(rows);
            &mut *dinp, dout, inp, weight, mean, rstd, &r, &w);
        let chunks = rows.div_ceil(COLSUM_CHUNK);
        self.with_f32_scratch(&[chunks * width, chunks * width], |s| {
            let (pw, pb) = s.split_at_mut(1);
            let cfg = blocks(
                (width.div_ceil(BLOCK as usize) as u32, chunks as u32, 1),
                BLOCK,
            );
            let ch = COLSUM_CHUNK as i32;
            launch!(self, Kernel::LayernormBackwardParamsPartial, cfg;
                &mut pw[0], &mut pb[0], dout, inp, mean, rstd, &r, &w, &ch);
            self.colsum_finish(dweight, &pw[0], chunks, width);
            self.colsum_finish(dbias, &pb[0], chunks, width);
        });
    }

    fn gelu_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, n: usize) {
        check("gelu", out.len().min(inp.len()), n);
        let n64 = n as i64;
        launch!(self, Kernel::GeluForward, grid_for(n); &mut *out, inp, &n64);
    }
    fn gelu_backward(&self, dinp: &mut Self::Buf, inp: &Self::Buf, dout: &Self::Buf, n: usize) {
        check(
            "gelu backward",
            dinp.len().min(inp.len()).min(dout.len()),
            n,
        );
        let n64 = n as i64;
        launch!(self, Kernel::GeluBackward, grid_for(n); &mut *dinp, inp, dout, &n64);
    }
    fn tanh_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, n: usize) {
        check("tanh", out.len().min(inp.len()), n);
        let n64 = n as i64;
        launch!(self, Kernel::TanhForward, grid_for(n); &mut *out, inp, &n64);
    }
    fn tanh_backward(&self, dinp: &mut Self::Buf, out: &Self::Buf, dout: &Self::Buf, n: usize) {
        check(
            "tanh backward",
            dinp.len().min(out.len()).min(dout.len()),
            n,
        );
        let n64 = n as i64;
        launch!(self, Kernel::TanhBackward, grid_for(n); &mut *dinp, out, dout, &n64);
    }
    fn add_forward(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, n: usize) {
        check("add", out.len().min(a.len()).min(b.len()), n);
        let n64 = n as i64;
        launch!(self, Kernel::AddForward, grid_for(n); &mut *out, a, b, &n64);
    }
    fn add_backward(&self, da: &mut Self::Buf, db: &mut Self::Buf, dout: &Self::Buf, n: usize) {
        check("add backward", da.len().min(db.len()).min(dout.len()), n);
        let n64 = n as i64;
        launch!(self, Kernel::AddBackward, grid_for(n); &mut *da, &mut *db, dout, &n64);
    }
    fn mul_forward(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, n: usize) {
        check("mul", out.len().min(a.len()).min(b.len()), n);
        let n64 = n as i64;
        launch!(self, Kernel::MulForward, grid_for(n); &mut *out, a, b, &n64);
    }
    fn mul_backward(
        &self,
        da: &mut Self::Buf,
        db: &mut Self::Buf,
        dout: &Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        n: usize,
    ) {
        check("mul backward", da.len().min(db.len()).min(dout.len()), n);
        let n64 = n as i64;
        launch!(self, Kernel::MulBackward, grid_for(n); &mut *da, &mut *db, dout, a, b, &n64);
    }

    fn bias_forward(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        bias: &Self::Buf,
        rows: usize,
        width: usize,
    ) {
        check("bias", out.len().min(inp.len()), rows * width);
        check("bias vector", bias.len(), width);
        let (r, w) = (i32_of(rows), i32_of(width));
        launch!(self, Kernel::BiasForward, grid_for(rows * width); &mut *out, inp, bias, &r, &w);
    }
    fn bias_backward(
        &self,
        dinp: Option<&mut Self::Buf>,
        dbias: &mut Self::Buf,
        dout: &Self::Buf,
        rows: usize,
        width: usize,
    ) {
        check("bias dout", dout.len(), rows * width);
        if let Some(dinp) = dinp {
            check("bias dinp", dinp.len(), rows * width);
            let n = (rows * width) as i64;
            let mut view = dinp.slice_mut(0..rows * width);
            let src = dout.slice(0..rows * width);
            launch!(self, Kernel::AddAssign, grid_for(rows * width); &mut view, &src, &n);
        }
        self.colsum_into(dbias, dout, rows, width, width);
    }

    fn embedding_forward(
        &self,
        out: &mut Self::Buf,
        table: &Self::Buf,
        ids: &Self::Ids,
        rows: usize,
        width: usize,
        accumulate: bool,
    ) {
        check("embedding out", out.len(), rows * width);
        check("embedding ids", ids.len(), rows);
        let (r, w, acc) = (i32_of(rows), i32_of(width), accumulate as i32);
        launch!(self, Kernel::EmbeddingForward, grid_for(rows * width);
            &mut *out, table, ids, &r, &w, &acc);
    }
    fn embedding_backward(
        &self,
        dtable: &mut Self::Buf,
        dout: &Self::Buf,
        ids: &Self::Ids,
        rows: usize,
        width: usize,
    ) {
        check("embedding dout", dout.len(), rows * width);
        if rows == 0 || width == 0 {
            return;
        }
        let vocab = dtable.len() / width;
        assert!(
            vocab <= 65_535,
            "embedding backward: {vocab} table rows exceed the grid's y limit"
        );
        let cfg = blocks(
            (width.div_ceil(BLOCK as usize) as u32, vocab as u32, 1),
            BLOCK,
        );
        let (r, w) = (i32_of(rows), i32_of(width));
        launch!(self, Kernel::EmbeddingBackward, cfg; &mut *dtable, dout, ids, &r, &w);
    }

    fn shift_forward(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        pad: &Self::Buf,
        seqs: usize,
        len: usize,
        width: usize,
    ) {
        let n = seqs * len * width;
        check("shift", out.len().min(inp.len()), n);
        check("shift pad", pad.len(), width);
        let (s, l, w) = (i32_of(seqs), i32_of(len), i32_of(width));
        launch!(self, Kernel::ShiftForward, grid_for(n); &mut *out, inp, pad, &s, &l, &w);
    }
    fn shift_backward(
        &self,
        dinp: &mut Self::Buf,
        dpad: &mut Self::Buf,
        dout: &Self::Buf,
        seqs: usize,
        len: usize,
        width: usize,
    ) {
        let n = seqs * len * width;
        check("shift backward", dinp.len().min(dout.len()), n);
        let (s, l, w) = (i32_of(seqs), i32_of(len), i32_of(width));
        launch!(self, Kernel::ShiftBackwardInput, grid_for(n); &mut *dinp, dout, &s, &l, &w);
        self.colsum_into(dpad, dout, seqs, width, len * width);
    }

    fn attention_saved_len(&self, a: Attention) -> usize {
        // The probabilities; the backward keeps the scores' gradient in
        // scratch memory, as `saved` is read-only there.
        a.batch * a.heads * a.seq * a.seq
    }
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        saved: &mut Self::Buf,
        qkv: &Self::Buf,
        a: Attention,
    ) {
        check("attention out", out.len(), a.rows() * a.width);
        check("attention qkv", qkv.len(), a.rows() * 3 * a.width);
        check("attention saved", saved.len(), self.attention_saved_len(a));
        if a.rows() == 0 {
            return;
        }
        let cfg = blocks((attention_blocks(a), 1, 1), 128);
        let (b, s, w, h) = (
            i32_of(a.batch),
            i32_of(a.seq),
            i32_of(a.width),
            i32_of(a.heads),
        );
        launch!(self, Kernel::AttentionForward, cfg; &mut *out, &mut *saved, qkv, &b, &s, &w, &h);
    }
    fn attention_backward(
        &self,
        dqkv: &mut Self::Buf,
        dout: &Self::Buf,
        qkv: &Self::Buf,
        saved: &Self::Buf,
        a: Attention,
    ) {
        check("attention dqkv", dqkv.len(), a.rows() * 3 * a.width);
        check("attention dout", dout.len(), a.rows() * a.width);
        check("attention saved", saved.len(), self.attention_saved_len(a));
        if a.rows() == 0 {
            return;
        }
        let probs_len = a.batch * a.heads * a.seq * a.seq;
        let cfg = blocks((attention_blocks(a), 1, 1), 128);
        let (b, s, w, h) = (
            i32_of(a.batch),
            i32_of(a.seq),
            i32_of(a.width),
            i32_of(a.heads),
        );
        self.with_f32_scratch(&[probs_len], |scr| {
            let probs = saved.slice(0..probs_len);
            let ds = &mut scr[0];
            launch!(self, Kernel::AttentionBackwardQuery, cfg;
                &mut *dqkv, &mut *ds, dout, qkv, &probs, &b, &s, &w, &h);
            launch!(self, Kernel::AttentionBackwardKey, cfg;
                &mut *dqkv, &*ds, dout, qkv, &probs, &b, &s, &w, &h);
        });
    }

    fn mean_pool_forward(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        mask: &Self::Buf,
        batch: usize,
        seq: usize,
        width: usize,
    ) {
        check("mean_pool out", out.len(), batch * width);
        check("mean_pool inp", inp.len(), batch * seq * width);
        check("mean_pool mask", mask.len(), batch * seq);
        let cfg = blocks((batch.max(1) as u32, 1, 1), BLOCK);
        let (b, s, w) = (i32_of(batch), i32_of(seq), i32_of(width));
        launch!(self, Kernel::MeanPoolForward, cfg; &mut *out, inp, mask, &b, &s, &w);
    }
    fn mean_pool_backward(
        &self,
        dinp: &mut Self::Buf,
        dout: &Self::Buf,
        mask: &Self::Buf,
        batch: usize,
        seq: usize,
        width: usize,
    ) {
        check("mean_pool dinp", dinp.len(), batch * seq * width);
        check("mean_pool dout", dout.len(), batch * width);
        check("mean_pool mask", mask.len(), batch * seq);
        let cfg = blocks((batch.max(1) as u32, 1, 1), BLOCK);
        let (b, s, w) = (i32_of(batch), i32_of(seq), i32_of(width));
        launch!(self, Kernel::MeanPoolBackward, cfg; &mut *dinp, dout, mask, &b, &s, &w);
    }

    fn ssm_kernel_forward(
        &self,
        kernel: &mut Self::Buf,
        p: SsmParams<&Self::Buf>,
        dims: SsmDims,
        len: usize,
    ) {
        let SsmParams { a, w, c, log_dt } = p;
        check("ssm kernel", kernel.len(), dims.kernels * len);
        check(
            "ssm params",
            a.len().min(w.len()),
            dims.kernels * dims.modes,
        );
        check("ssm c", c.len(), 2 * dims.kernels * dims.modes);
        check("ssm log_dt", log_dt.len(), dims.kernels);
        let (k, m, l) = (i32_of(dims.kernels), i32_of(dims.modes), i32_of(len));
        launch!(self, Kernel::SsmKernelForward, grid_for(dims.kernels * len);
            &mut *kernel, a, w, c, log_dt, &k, &m, &l);
    }
    fn ssm_kernel_backward(
        &self,
        dp: SsmParams<&mut Self::Buf>,
        dkernel: &Self::Buf,
        p: SsmParams<&Self::Buf>,
        dims: SsmDims,
        len: usize,
    ) {
        let SsmParams {
            a: da,
            w: dw,
            c: dc,
            log_dt: dlog_dt,
        } = dp;
        let SsmParams { a, w, c, log_dt } = p;
        check("ssm dkernel", dkernel.len(), dims.kernels * len);
        check(
            "ssm dparams",
            da.len().min(dw.len()),
            dims.kernels * dims.modes,
        );
        check("ssm dc", dc.len(), 2 * dims.kernels * dims.modes);
        check("ssm dlog_dt", dlog_dt.len(), dims.kernels);
        let n = dims.kernels * dims.modes;
        if n == 0 {
            return;
        }
        let (k, m, l) = (i32_of(dims.kernels), i32_of(dims.modes), i32_of(len));
        self.with_f64_scratch(n, |ddt| {
            launch!(self, Kernel::SsmKernelBackwardModes, grid_for(n);
                &mut *da, &mut *dw, &mut *dc, &mut *ddt, dkernel, a, w, c, log_dt, &k, &m, &l);
            launch!(self, Kernel::SsmKernelBackwardDt, grid_for(dims.kernels);
                &mut *dlog_dt, &*ddt, log_dt, &k, &m);
        });
    }
    fn ssm_conv_forward(
        &self,
        y: &mut Self::Buf,
        x: SsmConv<'_, Self::Buf, Self::Ids>,
        s: SsmShape,
        dir: Direction,
    ) {
        let SsmConv {
            u,
            kernel,
            d,
            lengths,
        } = x;
        let n = s.batch * s.seq * s.width;
        check("ssm y", y.len().min(u.len()), n);
        check("ssm kernel", kernel.len(), s.kernels * s.seq);
        check("ssm d", d.len(), s.kernels);
        check("ssm lengths", lengths.len(), s.batch);
        assert!(
            s.kernels > 0 && s.width.is_multiple_of(s.kernels),
            "width not split evenly among kernels"
        );
        let (b, q, w, k) = (
            i32_of(s.batch),
            i32_of(s.seq),
            i32_of(s.width),
            i32_of(s.kernels),
        );
        let dir = (dir == Direction::Backward) as i32;
        launch!(self, Kernel::SsmConvForward, grid_for(n);
            &mut *y, u, kernel, d, lengths, &b, &q, &w, &k, &dir);
    }
    fn ssm_conv_backward(
        &self,
        du: &mut Self::Buf,
        dfilter: SsmFilterGrads<'_, Self::Buf>,
        dy: &Self::Buf,
        x: SsmConv<'_, Self::Buf, Self::Ids>,
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
        let n = s.batch * s.seq * s.width;
        check("ssm du", du.len().min(dy.len()).min(u.len()), n);
        check(
            "ssm dkernel",
            dkernel.len().min(kernel.len()),
            s.kernels * s.seq,
        );
        check("ssm dd", dd.len().min(d.len()), s.kernels);
        check("ssm lengths", lengths.len(), s.batch);
        assert!(
            s.kernels > 0 && s.width.is_multiple_of(s.kernels),
            "width not split evenly among kernels"
        );
        if n == 0 {
            return;
        }
        let (b, q, w, k) = (
            i32_of(s.batch),
            i32_of(s.seq),
            i32_of(s.width),
            i32_of(s.kernels),
        );
        let dir = (dir == Direction::Backward) as i32;
        launch!(self, Kernel::SsmConvBackwardInput, grid_for(n);
            &mut *du, dy, kernel, d, lengths, &b, &q, &w, &k, &dir);
        let cfg = blocks((s.seq as u32, s.kernels as u32, 1), BLOCK);
        launch!(self, Kernel::SsmConvBackwardKernel, cfg;
            &mut *dkernel, &mut *dd, dy, u, lengths, &b, &q, &w, &k, &dir);
    }

    fn cross_entropy(
        &self,
        logits: &Self::Buf,
        targets: &Self::Ids,
        mask: Option<&Self::Buf>,
        dlogits: Option<&mut Self::Buf>,
        l: Logits,
        grad_scale: f32,
    ) -> CrossEntropy {
        let (rows, vocab) = (l.rows, l.classes);
        check("cross_entropy logits", logits.len(), rows * vocab);
        check("cross_entropy targets", targets.len(), rows);
        if rows == 0 {
            return CrossEntropy {
                loss: 0.0,
                count: 0.0,
            };
        }
        // Ids outside the vocabulary would read out of bounds on the GPU;
        // the CPU backend panics on them, so check here too.
        let host_targets = Self::fail(self.stream.clone_dtoh(&targets.slice(0..rows)), "download");
        if let Some(bad) = host_targets.iter().find(|&&t| t as usize >= vocab) {
            panic!("cross_entropy: target {bad} outside the vocabulary of {vocab}");
        }
        let (r, v) = (i32_of(rows), i32_of(vocab));
        let has_mask = mask.is_some() as i32;
        // Without a mask the kernels never read it; any buffer will do.
        let mask = mask.unwrap_or(logits);
        check(
            "cross_entropy mask",
            mask.len(),
            if has_mask == 1 { rows } else { 0 },
        );
        self.with_f32_scratch(&[rows, rows, rows], |s| {
            let (loss, rest) = s.split_at_mut(1);
            let (weight, lse) = rest.split_at_mut(1);
            let (loss, weight, lse) = (&mut loss[0], &mut weight[0], &mut lse[0]);
            launch!(self, Kernel::CrossEntropyRows, warp_rows(rows);
                &mut *loss, &mut *weight, &mut *lse, logits, targets, mask, &has_mask, &r, &v);
            let losses = Self::fail(self.stream.clone_dtoh(&loss.slice(0..rows)), "download");
            let weights = Self::fail(self.stream.clone_dtoh(&weight.slice(0..rows)), "download");
            // In row order, in f64, as the CPU adds them.
            let count: f64 = weights.iter().map(|&w| w as f64).sum();
            let total: f64 = losses.iter().map(|&l| l as f64).sum();
            if let Some(dlogits) = dlogits {
                check("cross_entropy dlogits", dlogits.len(), rows * vocab);
                let scale = if count > 0.0 {
                    (grad_scale as f64 / count) as f32
                } else {
                    0.0
                };
                launch!(self, Kernel::CrossEntropyGrad, grid_for(rows * vocab);
                    &mut *dlogits, logits, &*lse, targets, mask, &has_mask, &r, &v, &scale);
            }
            CrossEntropy {
                loss: if count > 0.0 { total / count } else { 0.0 },
                count,
            }
        })
    }

    fn adamw_update(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        s: &AdamWStep,
    ) {
        let n = param.len();
        check("adamw", grad.len().min(m.len()).min(v.len()), n);
        let (bc1, bc2) = s.bias_corrections();
        let (bc1, bc2) = (bc1 as f32, bc2 as f32);
        let n64 = n as i64;
        launch!(self, Kernel::Adamw, grid_for(n);
            &mut *param, grad, &mut *m, &mut *v, &n64, &s.lr, &s.beta1, &s.beta2, &s.eps,
            &s.weight_decay, &s.grad_scale, &bc1, &bc2);
    }
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device_name)
            .field("ordinal", &self.ctx.ordinal())
            .field("precision", &self.precision)
            .finish()
    }
}

/// Opens the GPU for `--device cuda`, with the error users see when there
/// is none.
pub fn open(precision: Precision) -> Result<CudaBackend> {
    CudaBackend::new(0, precision).context("--device cuda")
}
