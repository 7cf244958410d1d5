//! The command-line tool's limits (issue 14): float flags that must be
//! finite, non-finite weights that are never exported, bounded cost for
//! small valid files, inputs checked before they are read whole, and what a
//! non-finite result does to the exit status.

mod common;

use common::{fails, ok, temp_dir};
use std::path::Path;

/// A tiny MEGABYTE, so training runs take a second.
const TINY: [&str; 16] = [
    "--patch-size",
    "2",
    "--d-global",
    "16",
    "--layers-global",
    "1",
    "--heads-global",
    "2",
    "--d-local",
    "16",
    "--layers-local",
    "1",
    "--heads-local",
    "2",
    "--max-seq",
    "32",
];

fn write_corpus(dir: &Path) {
    let text: String = (0..400)
        .map(|i| format!("line {i}: the owl sat on the log.\n"))
        .collect();
    std::fs::write(dir.join("data.txt"), text).unwrap();
}

fn train_args<'a>(run: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--data",
        "data.txt",
        "--run",
        run,
        "--steps",
        "4",
        "--batch",
        "2",
        "--seq",
        "16",
        "--eval-windows",
        "2",
        "--quiet",
    ];
    a.extend(TINY);
    a.extend(extra);
    a
}

/// Overwrites the first f32 of a safetensors file's data with NaN.
fn poison_safetensors(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header..12 + header].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn float_flags_must_be_finite() {
    let dir = temp_dir("float-flags");
    write_corpus(&dir);
    for (flag, value) in [
        ("--weight-decay", "nan"),
        ("--weight-decay", "-1"),
        ("--grad-clip", "nan"),
        ("--time-limit", "nan"),
        ("--time-limit", "-5"),
        ("--lr", "inf"),
        ("--val-fraction", "nan"),
    ] {
        let arg = format!("{flag}={value}");
        let e = fails(&train_args("r", &[&arg]), &dir);
        assert!(e.contains(flag), "{flag} {value}: {e}");
        assert!(!dir.join("r").exists(), "{flag} {value} created the run");
    }
    let e = fails(&["demo", "--time", "nan"], &dir);
    assert!(e.contains("--time NaN"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_finite_weights_are_never_exported() {
    let dir = temp_dir("nan-export");
    write_corpus(&dir);
    ok(&train_args("r", &[]), &dir);
    // A run whose files were damaged after training: both weight files NaN.
    poison_safetensors(&dir.join("r/best.safetensors"));
    for entry in std::fs::read_dir(dir.join("r")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ckpt-")
        {
            poison_safetensors(&p.join("model.safetensors"));
        }
    }
    for dtype in ["f32", "f16", "bf16", "q8", "q4"] {
        for last in [false, true] {
            let mut args = vec!["export", "r", "--dtype", dtype, "-o", "m.kbm"];
            if last {
                args.push("--last");
            }
            let e = fails(&args, &dir);
            assert!(e.contains("not finite"), "{dtype}: {e}");
            assert!(!dir.join("m.kbm").exists());
        }
        // The same through `convert` from a safetensors file.
        let e = fails(
            &["convert", "r/best.safetensors", "c.kbm", "--dtype", dtype],
            &dir,
        );
        assert!(e.contains("not finite"), "{dtype}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
