// `kilobyte_dsp` marks targets whose cores all have the Armv7E-M DSP
// extension (SMLAD and friends): thumbv7em (Cortex-M4, M7). Rust does not
// expose Arm target features to `cfg` on stable, so the target name decides.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(kilobyte_dsp)");
    println!("cargo:rerun-if-env-changed=TARGET");
    if std::env::var("TARGET").is_ok_and(|t| t.starts_with("thumbv7em")) {
        println!("cargo:rustc-cfg=kilobyte_dsp");
    }
}
