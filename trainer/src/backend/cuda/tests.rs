//! CUDA backend tests. The kernels are compiled by NVRTC for several
//! architectures; on a device (a GPU, or in CI the emulated one of
//! tests/cuda-emu, which `cargo test` finds in target/<profile>), every op
//! is checked against the f64 CPU reference (`backend::conformance`) and
//! whole models against the CPU backend. A test that lacks its library is
//! skipped with a message, unless `KILOBYTE_REQUIRE_NVRTC` /
//! `KILOBYTE_REQUIRE_GPU` is set (.ci/run and trainer/gpu-check.sh set
//! them), which turns a skip into a failure.

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

/// A device the backend can open: the driver (or the emulator) and NVRTC,
/// which compiles the kernels for it.
fn device_present() -> bool {
    driver_present() && compile::nvrtc_present()
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
    if skip_unless(
        device_present(),
        "a CUDA device and NVRTC",
        "KILOBYTE_REQUIRE_GPU",
    ) {
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

/// Largest `|a - b|` over `max(max |b|, 1)`.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(1f64, |m, &x| m.max(x.abs() as f64));
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

/// A MEGABYTE and a BiGS model on small configs with n-gram embeddings: the
/// loss and every parameter's gradient on the GPU (fp32) against the CPU.
#[test]
fn whole_models_match_the_cpu() {
    use crate::backend::Backend;
    use crate::backend::CpuBackend;
    use crate::bigs::model::{BigsBatch, BigsModel, Dropout, Task};
    use crate::megabyte::MegabyteModel;
    use crate::params::ParamSet;
    use kilobyte_format::config::NgramConfig;
    use kilobyte_format::{BigsConfig, MegabyteConfig, ModelConfig};
    if skip_unless(
        device_present(),
        "a CUDA device and NVRTC",
        "KILOBYTE_REQUIRE_GPU",
    ) {
        return;
    }
    let gpu = CudaBackend::new(0, Precision::Fp32).unwrap_or_else(|e| panic!("{e:#}"));
    let cpu = CpuBackend::<f32>::new();

    // With hashed n-grams (few rows, so they repeat and their gradients add).
    let config = MegabyteConfig::preset(4, 16, 2, 2, 32, 2, 4, 64)
        .with_ngram(NgramConfig::orders(2, 4, 37))
        .with_local_ngram(NgramConfig::orders(3, 5, 23));
    let set = ParamSet::init(ModelConfig::Megabyte(config), 3).unwrap();
    let bytes: Vec<u8> = (0..2 * 64u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut m_gpu = MegabyteModel::new(&gpu, &set).unwrap();
    let mut m_cpu = MegabyteModel::new(&cpu, &set).unwrap();
    let mut ws_gpu = m_gpu.workspace(&gpu, 2, 64).unwrap();
    let mut ws_cpu = m_cpu.workspace(&cpu, 2, 64).unwrap();
    let l_gpu = m_gpu.step(&gpu, &mut ws_gpu, &bytes, true, 1.0).unwrap();
    let l_cpu = m_cpu.step(&cpu, &mut ws_cpu, &bytes, true, 1.0).unwrap();
    assert!(
        (l_gpu.loss - l_cpu.loss).abs() <= 1e-4 * l_cpu.loss,
        "{l_gpu:?} vs {l_cpu:?}"
    );
    for ((g, c), meta) in m_gpu.grads.iter().zip(&m_cpu.grads).zip(&m_cpu.meta) {
        let e = rel_err(&gpu.download(g).unwrap(), c);
        assert!(e <= 1e-4, "MEGABYTE d{}: {e:.2e}", meta.name);
    }

    // The joint task: both heads, and the classifier's n-gram logits.
    let mut bc = BigsConfig::preset(32, 96, 2, 8, 1, 32)
        .with_ngram(NgramConfig::orders(3, 5, 29))
        .classifier(3, true);
    bc.head_ngram = NgramConfig::orders(2, 3, 32);
    let set = ParamSet::init(ModelConfig::Bigs(bc), 4).unwrap();
    let texts: Vec<Vec<u32>> = vec![
        (0..20).map(|i| (i * 7 % 256) as u32).collect(),
        (0..32).map(|i| (i * 11 % 256) as u32).collect(),
    ];
    let batch = BigsBatch::from_sequences(
        &texts,
        Task::Joint {
            labels: vec![2, 0],
            mlm_weight: 0.5,
            targets: (0..64).map(|i| (i * 5 % 256) as u32).collect(),
            // Every third real position (sequence 0 is 20 long, padded to 32).
            weights: (0..64)
                .map(|i| (!(20..32).contains(&i) && i % 3 == 0) as u32 as f32)
                .collect(),
        },
    )
    // Host-drawn masks: both backends see the same ones.
    .with_dropout(Some(Dropout { rate: 0.2, seed: 3 }));
    let mut b_gpu = BigsModel::new(&gpu, &set).unwrap();
    let mut b_cpu = BigsModel::new(&cpu, &set).unwrap();
    let mut ws_gpu = b_gpu.workspace(&gpu, batch.batch, batch.seq).unwrap();
    let mut ws_cpu = b_cpu.workspace(&cpu, batch.batch, batch.seq).unwrap();
    let l_gpu = b_gpu.step(&gpu, &mut ws_gpu, &batch, true, 1.0).unwrap().ce;
    let l_cpu = b_cpu.step(&cpu, &mut ws_cpu, &batch, true, 1.0).unwrap().ce;
    assert!(
        (l_gpu.loss - l_cpu.loss).abs() <= 1e-4 * l_cpu.loss,
        "{l_gpu:?} vs {l_cpu:?}"
    );
    for ((g, c), meta) in b_gpu.grads.iter().zip(&b_cpu.grads).zip(&b_cpu.meta) {
        let e = rel_err(&gpu.download(g).unwrap(), c);
        assert!(e <= 1e-4, "BiGS d{}: {e:.2e}", meta.name);
    }
}

/// The emulator's proof that it can fail: with each of its planted faults
/// (tests/cuda-emu: an off-by-one index in a kernel, a removed
/// `__syncthreads`, a wrong leading dimension in the gemm calls) the op
/// conformance suite, run in a child process, must fail, and say why.
#[test]
fn the_emulator_catches_planted_faults() {
    if skip_unless(
        device_present(),
        "a CUDA device and NVRTC",
        "KILOBYTE_REQUIRE_GPU",
    ) {
        return;
    }
    let be = CudaBackend::new(0, Precision::Fp32).unwrap_or_else(|e| panic!("{e:#}"));
    if !be.device_name().contains("cuda-emu") {
        eprintln!(
            "skipped: planted faults need the emulated device, not {}",
            be.device_name()
        );
        return;
    }
    for (plant, evidence) in [
        (
            "offbyone",
            &["kernel kb_gelu_forward", "illegal memory access"][..],
        ),
        ("nosync", &["deviates from the f64 reference"][..]),
        (
            "gemm-lda",
            &["cublasSgemm: A spans", "beyond its allocation"][..],
        ),
    ] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "backend::cuda::tests::ops_match_the_cpu_reference",
                "--test-threads=1",
            ])
            .env("KBEMU_PLANT", plant)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() && text.contains("1 failed"),
            "planted fault {plant}: the conformance suite did not fail:\n{text}"
        );
        for e in evidence {
            assert!(
                text.contains(e),
                "planted fault {plant}: no {e:?} in\n{text}"
            );
        }
        eprintln!("planted fault {plant}: caught ({})", evidence.join("; "));
    }
}
