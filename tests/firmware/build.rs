// Puts memory.x where the linker finds it and rebuilds when a model changes.
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    for var in ["KILOBYTE_FW_MEGABYTE", "KILOBYTE_FW_BIGS"] {
        println!("cargo:rerun-if-env-changed={var}");
        if let Ok(p) = std::env::var(var) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
