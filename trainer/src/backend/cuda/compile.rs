//! Run-time compilation of `kernels.cu` with NVRTC, cached per GPU
//! architecture.
//!
//! The PTX for compute capability `sm_XY` is kept in
//! `$KILOBYTE_CACHE` (default `$XDG_CACHE_HOME/kilobyte`, else
//! `~/.cache/kilobyte`) under a name that includes a hash of the source and
//! the compiler options, so an edited kernel file or another GPU compiles
//! afresh and a cache entry is never stale. Cache writes are atomic (write,
//! rename); a cache that cannot be written only costs a recompile.

use anyhow::{anyhow, bail, Result};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};
use std::path::PathBuf;

/// The kernels' CUDA C source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Defines [`Kernel`] and [`KERNEL_NAMES`] from one list, so that a kernel
/// is named once and every launch names an enum variant, not a string.
macro_rules! kernels {
    ($($variant:ident = $name:literal,)*) => {
        /// Every `extern "C"` kernel in [`SOURCE`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Kernel {
            $($variant,)*
        }

        impl Kernel {
            /// Every kernel, in declaration order (`k as usize` indexes it).
            pub const ALL: &[Kernel] = &[$(Kernel::$variant,)*];

            /// The kernel's name in [`SOURCE`] and in the compiled module.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$variant => $name,)*
                }
            }
        }

        /// The names of [`Kernel::ALL`], in the same order.
        pub const KERNEL_NAMES: &[&str] = &[$($name,)*];
    };
}

kernels! {
    Scale = "kb_scale",
    AddAssign = "kb_add_assign",
    SumSquaresPartial = "kb_sum_squares_partial",
    ColsumPartial = "kb_colsum_partial",
    ColsumFinish = "kb_colsum_finish",
    ToBf16 = "kb_to_bf16",
    BiasForward = "kb_bias_forward",
    BiasInplace = "kb_bias_inplace",
    GeluForward = "kb_gelu_forward",
    GeluBackward = "kb_gelu_backward",
    TanhForward = "kb_tanh_forward",
    TanhBackward = "kb_tanh_backward",
    AddForward = "kb_add_forward",
    AddBackward = "kb_add_backward",
    MulForward = "kb_mul_forward",
    MulBackward = "kb_mul_backward",
    LayernormForward = "kb_layernorm_forward",
    LayernormBackwardInput = "kb_layernorm_backward_input",
    LayernormBackwardParamsPartial = "kb_layernorm_backward_params_partial",
    EmbeddingForward = "kb_embedding_forward",
    EmbeddingBackward = "kb_embedding_backward",
    ShiftForward = "kb_shift_forward",
    ShiftBackwardInput = "kb_shift_backward_input",
    AttentionForward = "kb_attention_forward",
    AttentionBackwardQuery = "kb_attention_backward_query",
    AttentionBackwardKey = "kb_attention_backward_key",
    MeanPoolForward = "kb_mean_pool_forward",
    MeanPoolBackward = "kb_mean_pool_backward",
    SsmKernelForward = "kb_ssm_kernel_forward",
    SsmKernelBackwardModes = "kb_ssm_kernel_backward_modes",
    SsmKernelBackwardDt = "kb_ssm_kernel_backward_dt",
    SsmConvForward = "kb_ssm_conv_forward",
    SsmConvBackwardInput = "kb_ssm_conv_backward_input",
    SsmConvBackwardKernel = "kb_ssm_conv_backward_kernel",
    CrossEntropyRows = "kb_cross_entropy_rows",
    CrossEntropyGrad = "kb_cross_entropy_grad",
    Adamw = "kb_adamw",
}

/// Whether libnvrtc can be loaded (without letting cudarc panic).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        // Exact division and square roots: the CPU parity bounds are tight.
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--fmad=true".into(),
        "--std=c++17".into(),
    ]
}

/// Compiles [`SOURCE`] for `arch` (e.g. `sm_90` or `compute_80`).
pub fn compile(arch: &str) -> Result<Ptx> {
    if !nvrtc_present() {
        bail!(
            "libnvrtc could not be loaded: install the CUDA toolkit or `pip install \
             nvidia-cuda-nvrtc` and add its lib directory to LD_LIBRARY_PATH, or use --device cpu"
        );
    }
    let opts = CompileOptions {
        options: options(arch),
        name: Some("kernels.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, opts).map_err(|e| match e {
        CompileError::CompileError { log, .. } => {
            anyhow!(
                "NVRTC could not compile kernels.cu for {arch}:\n{}",
                log.to_string_lossy()
            )
        }
        other => anyhow!("NVRTC ({arch}): {other:?}"),
    })
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KILOBYTE_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("kilobyte"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("kilobyte"))
}

/// FNV-1a over the source and options: names the cache entry.
fn fingerprint(arch: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let text = format!("{SOURCE}\0{}", options(arch).join("\0"));
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The kernels' PTX for a GPU of compute capability `major.minor`, from the
/// cache or compiled now (and cached).
pub fn kernels_for(major: i32, minor: i32) -> Result<Ptx> {
    // A virtual architecture: NVRTC emits PTX, which the driver compiles
    // for this exact GPU when the module loads.
    let arch = format!("compute_{major}{minor}");
    let path =
        cache_dir().map(|d| d.join(format!("kernels-{arch}-{:016x}.ptx", fingerprint(&arch))));
    if let Some(ptx) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok(Ptx::from_src(ptx));
    }
    let ptx = compile(&arch)?;
    if let Some(path) = path {
        let _ = store(&path, &ptx.to_src());
    }
    Ok(ptx)
}

fn store(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
