//! CUDA backend tests. Without a GPU (CI) the kernels are compiled by NVRTC
//! for several architectures; with one, every op is checked against the
//! f64 CPU reference (`backend::conformance`). A test that lacks its
//! library is skipped with a message, unless `KILOBYTE_REQUIRE_NVRTC` /
//! `KILOBYTE_REQUIRE_GPU` is set (CI sets the first, trainer/gpu-check.sh
//! both), which turns a skip into a failure.

use super::compile::{self, KERNEL_NAMES, SOURCE};
use super::{driver_present, CudaBackend, Precision};
use crate::backend::conformance::check_backend;

fn skip_unless(present: bool, what: &str, require: &str) -> bool {
    if present {
        return false;
    }
    assert!(
        std::env::var_os(require).is_none(),
        "{what} not found, and {require} is set"
    );
    eprintln!("skipped: {what} not found (set {require} to make this a failure)");
    true
}

/// Every `extern "C" __global__` kernel in the source is in the name list
/// the backend loads, and the other way round.
#[test]
fn kernel_names_match_the_source() {
    let mut in_source: Vec<&str> = SOURCE
        .split("extern \"C\" __global__ void ")
        .skip(1)
        .map(|rest| rest.split('(').next().unwrap().trim())
        .collect();
    let mut listed = KERNEL_NAMES.to_vec();
    in_source.sort_unstable();
    listed.sort_unstable();
    assert_eq!(in_source, listed);
}

#[test]
fn kernels_compile_under_nvrtc() {
    if skip_unless(
        compile::nvrtc_present(),
        "libnvrtc",
        "KILOBYTE_REQUIRE_NVRTC",
    ) {
        return;
    }
    // Ampere, Ada, Hopper (the GPUs bf16 tensor cores need).
    for arch in ["compute_80", "compute_89", "compute_90"] {
        let ptx = compile::compile(arch).unwrap_or_else(|e| panic!("{e:#}"));
        let text = ptx.to_src();
        for name in KERNEL_NAMES {
            assert!(
                text.contains(&format!(".entry {name}(")),
                "{arch}: no entry point {name} in the PTX"
            );
        }
    }
}

/// Every op against the f64 CPU backend: fp32 within 1e-4 relative (the
/// issue's bound), bf16 within 2e-2 (inputs of products rounded to 8
/// mantissa bits: about 2^-8 relative per operand, accumulated in fp32).
#[test]
fn ops_match_the_cpu_reference() {
    if skip_unless(driver_present(), "the CUDA driver", "KILOBYTE_REQUIRE_GPU") {
        return;
    }
    for (precision, tol) in [(Precision::Fp32, 1e-4), (Precision::Bf16, 2e-2)] {
        let be = CudaBackend::new(0, precision).unwrap_or_else(|e| panic!("{e:#}"));
        for seed in 0..3 {
            let devs =
                check_backend(&be, tol, seed).unwrap_or_else(|e| panic!("{precision:?}: {e:#}"));
            if seed == 0 {
                for d in &devs {
                    eprintln!(
                        "{} {:?} {}: {:.2e}",
                        be.device_name(),
                        precision,
                        d.name,
                        d.error
                    );
                }
            }
        }
    }
}
