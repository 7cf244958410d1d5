//! # kilobyte-cuda-emu: an emulated CUDA device for CI
//!
//! A stand-in for `libcuda.so` and `libcublas.so` that runs the trainer's
//! unchanged CUDA backend on the CPU. cudarc loads both libraries at run
//! time by name, so with `target/<profile>` first on `LD_LIBRARY_PATH`
//! every `kilobyte --device cuda` command and CUDA test uses this instead
//! of a GPU. libnvrtc stays the real one: the backend keeps compiling
//! `kernels.cu` to PTX, and the emulator checks that PTX against its own
//! CPU build of the same file before it runs anything.
//!
//! What it owns:
//! - [`driver`]: the driver API entry points the backend's cudarc calls
//!   reach (device, context, streams, events, memory, modules, launches);
//! - [`memory`]: device memory as guarded host mappings (an access past an
//!   allocation's end faults);
//! - [`kernels`]: the CPU builds of `kernels.cu` (as written, and with the
//!   planted faults its tests use), the PTX check, and the launch;
//! - [`blas`]: `cublasSgemm` and `cublasGemmEx` with cuBLAS's column-major
//!   semantics and argument checks.
//!
//! The block scheduler that runs CUDA threads as fibers is C++
//! (`cpp/scheduler.cpp`), since the kernels it runs are C++.
//!
//! It must not be linked into anything users run: production builds load
//! NVIDIA's libraries, and nothing depends on this crate.
//!
//! Planted faults, for the emulator's own tests: `KBEMU_PLANT=offbyone`
//! (GELU's loop runs one element past the end), `nosync` (the block
//! reduction loses a `__syncthreads`) or `gemm-lda` (every gemm reads A
//! with a leading dimension one too large, as if the backend had passed
//! it) make the emulator behave as the faulty code would.
//! `KBEMU_TRACE=1` prints every launch (kernel, grid and block) to stderr.

// The exported names and argument names are NVIDIA's.
#![allow(non_snake_case)]
// Every export is an `unsafe extern "C"` entry point whose contract is the
// CUDA documentation's.
#![allow(clippy::missing_safety_doc)]

pub mod blas;
pub mod driver;
pub mod kernels;
pub mod memory;
#[cfg(test)]
mod tests;

use std::sync::{Mutex, MutexGuard};

/// `CUresult` values the emulator returns.
pub mod status {
    pub type CUresult = u32;
    pub const SUCCESS: CUresult = 0;
    pub const INVALID_VALUE: CUresult = 1;
    pub const OUT_OF_MEMORY: CUresult = 2;
    pub const NOT_INITIALIZED: CUresult = 3;
    pub const INVALID_DEVICE: CUresult = 101;
    pub const INVALID_IMAGE: CUresult = 200;
    pub const INVALID_CONTEXT: CUresult = 201;
    pub const INVALID_HANDLE: CUresult = 400;
    pub const NOT_FOUND: CUresult = 500;
    pub const ILLEGAL_ADDRESS: CUresult = 700;
    pub const LAUNCH_FAILED: CUresult = 719;
    pub const NOT_SUPPORTED: CUresult = 801;
}

/// The one device's state, behind one lock.
pub(crate) struct Device {
    pub memory: memory::Memory,
    /// cuInit has been called.
    pub initialized: bool,
    /// A fault inside a kernel or a product, which (as on a GPU) every
    /// later call reports until the process ends.
    pub sticky: status::CUresult,
    pub handles: driver::Handles,
}

static DEVICE: Mutex<Device> = Mutex::new(Device {
    memory: memory::Memory::new(),
    initialized: false,
    sticky: status::SUCCESS,
    handles: driver::Handles::new(),
});

/// The device, even after a panic elsewhere held its lock.
pub(crate) fn device() -> MutexGuard<'static, Device> {
    DEVICE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes one line of diagnosis to stderr: what a GPU would not say, but a
/// developer needs.
pub(crate) fn report(line: &str) {
    eprintln!("cuda-emu: {line}");
}

/// The planted fault named by `KBEMU_PLANT`, if any.
pub(crate) fn plant() -> Option<&'static str> {
    static PLANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PLANT
        .get_or_init(|| std::env::var("KBEMU_PLANT").ok().filter(|p| !p.is_empty()))
        .as_deref()
}
