//! Compiles the trainer's `kernels.cu` as C++ for the CPU (with
//! cpp/cuda_on_cpu.hpp supplying the CUDA names), once as it is and once per
//! planted fault, plus the scheduler and the emulator's self-test kernels;
//! and puts `libcublas.so` beside `libcuda.so` as a link to it, so both
//! names load one library with one device state.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The kernels the backend loads, by the rule its own test uses: every
/// `extern "C" __global__ void NAME(`.
fn kernel_names(source: &str) -> Vec<String> {
    source
        .split("extern \"C\" __global__ void ")
        .skip(1)
        .map(|rest| rest.split('(').next().unwrap().trim().to_string())
        .collect()
}

/// A planted fault: a textual edit of kernels.cu. `None` when the text it
/// edits is gone, so the emulator's test can say that the plant needs
/// updating instead of passing without a fault.
fn plant(source: &str, name: &str) -> Option<String> {
    let (from, to) = match name {
        // Off by one: GELU's grid-stride loop reads and writes element n.
        "offbyone" => (
            "GRID_STRIDE(i, n) out[i] = gelu(inp[i]);",
            "GRID_STRIDE(i, n + 1) out[i] = gelu(inp[i]);",
        ),
        // The barrier between writing each warp's partial and reading them
        // all, in the block reduction every reducing kernel uses.
        "nosync" => (
            "if (lane == 0) scratch[warp] = v;\n    __syncthreads();\n",
            "if (lane == 0) scratch[warp] = v;\n",
        ),
        _ => return Some(source.to_string()),
    };
    (source.matches(from).count() == 1).then(|| source.replacen(from, to, 1))
}

/// One C++ translation unit: `source` in namespace `kbemu_<variant>` (with
/// C linkage dropped, so the variants can coexist) and the registry
/// function `kbemu_kernels_<variant>`.
fn translation_unit(
    out: &Path,
    variant: &str,
    source: Option<&str>,
    names: &[String],
    origin: &Path,
) -> PathBuf {
    let cu = out.join(format!("kernels_{variant}.cu"));
    let mut text = String::new();
    if let Some(source) = source {
        writeln!(text, "#line 1 \"{}\"", origin.display()).unwrap();
        text.push_str(&source.replace("extern \"C\" __global__", "__global__"));
    }
    std::fs::write(&cu, text).unwrap();
    let mut cpp = format!(
        "#include \"cuda_on_cpu.hpp\"\nnamespace kbemu_{variant} {{\n#include \"{}\"\n}}\n",
        cu.display()
    );
    writeln!(
        cpp,
        "extern \"C\" kbemu::KernelTable kbemu_kernels_{variant}() {{"
    )
    .unwrap();
    if source.is_some() && !names.is_empty() {
        cpp.push_str("    static const kbemu::KernelInfo table[] = {\n");
        for n in names {
            writeln!(
                cpp,
                "        kbemu::kernel_info(\"{n}\", &kbemu_{variant}::{n}),"
            )
            .unwrap();
        }
        writeln!(
            cpp,
            "    }};\n    kbemu::KernelTable t = {{table, {}}};\n    return t;\n}}",
            names.len()
        )
        .unwrap();
    } else {
        cpp.push_str("    kbemu::KernelTable t = {nullptr, 0};\n    return t;\n}\n");
    }
    let path = out.join(format!("kernels_{variant}.cpp"));
    std::fs::write(&path, cpp).unwrap();
    path
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let kernels = manifest.join("../../trainer/src/backend/cuda/kernels.cu");
    let kernels = kernels.canonicalize().unwrap_or(kernels);
    let selftest = manifest.join("cpp/selftest.cu");
    for p in [&kernels, &selftest] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    for f in ["cpp/cuda_on_cpu.hpp", "cpp/scheduler.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let source = std::fs::read_to_string(&kernels)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kernels.display()));
    let names = kernel_names(&source);

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(manifest.join("cpp"))
        // siglongjmp leaves a fiber's stack for the launching thread's;
        // glibc's fortified longjmp would call that an error.
        .flag("-U_FORTIFY_SOURCE")
        .flag("-fno-exceptions")
        .flag("-fno-rtti")
        .warnings(false)
        .file(manifest.join("cpp/scheduler.cpp"));
    for variant in ["original", "offbyone", "nosync"] {
        let planted = plant(&source, variant);
        build.file(translation_unit(
            &out,
            variant,
            planted.as_deref(),
            &names,
            &kernels,
        ));
    }
    let selftest_source = std::fs::read_to_string(&selftest).unwrap();
    build.file(translation_unit(
        &out,
        "selftest",
        Some(&selftest_source),
        &kernel_names(&selftest_source),
        &selftest,
    ));
    build.compile("kbemu_kernels");

    // target/<profile>/ is three levels above OUT_DIR
    // (target/<profile>/build/<crate>-<hash>/out).
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let link = profile_dir.join("libcublas.so");
        if std::fs::symlink_metadata(&link).is_err() {
            #[cfg(unix)]
            let _ = std::os::unix::fs::symlink("libcuda.so", &link);
        }
    }
}
