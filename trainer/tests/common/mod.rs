//! Helpers shared by the command-line tests: run the `kilobyte` binary,
//! expect success or one clean error line, scratch directories, run state.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn kilobyte(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kilobyte"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run kilobyte")
}

/// Runs a command that must succeed and returns its stdout.
pub fn ok(args: &[&str], dir: &Path) -> String {
    let out = kilobyte(args, dir);
    assert!(
        out.status.success(),
        "kilobyte {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail cleanly and returns its one error line.
pub fn fails(args: &[&str], dir: &Path) -> String {
    let out = kilobyte(args, dir);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "kilobyte {args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("kilobyte: error: "), "{err}");
    err
}

/// A fresh, empty scratch directory for this test process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kilobyte-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The step of a run's last checkpoint, if it has one.
pub fn state_step(run: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(run.join("state.txt")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("step = "))
        .and_then(|v| v.trim().parse().ok())
}

/// The shape flags of a tiny MEGABYTE, so CLI training runs take seconds.
pub const TINY: [&str; 16] = [
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
