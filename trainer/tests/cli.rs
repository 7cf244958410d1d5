//! The `kilobyte` binary end to end: init, inspect, quantize, convert, and
//! bad input getting a one-line error with a non-zero exit (never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kilobyte(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kilobyte"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run kilobyte")
}

fn ok(args: &[&str], dir: &Path) -> String {
    let out = kilobyte(args, dir);
    assert!(
        out.status.success(),
        "kilobyte {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail cleanly and returns its one error line.
fn fails(args: &[&str], dir: &Path) -> String {
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

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kilobyte-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn init_inspect_quantize_convert() {
    let dir = temp_dir("flow");
    ok(
        &["init", "--preset", "micro", "--seed", "3", "-o", "m.kbm"],
        &dir,
    );
    let text = ok(&["inspect", "m.kbm"], &dir);
    for needle in [
        "family     megabyte",
        "patch_size     4",
        "max_seq        512",
        "CRC-32",
        " ok",
        "global.blocks.3.attn.qkv",
        "[384, 128]",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let f32_len = std::fs::metadata(dir.join("m.kbm")).unwrap().len();
    ok(
        &["quantize", "m.kbm", "-o", "q8.kbm", "--dtype", "q8"],
        &dir,
    );
    ok(
        &["quantize", "m.kbm", "-o", "q4.kbm", "--dtype", "q4"],
        &dir,
    );
    let q8_len = std::fs::metadata(dir.join("q8.kbm")).unwrap().len();
    let q4_len = std::fs::metadata(dir.join("q4.kbm")).unwrap().len();
    // 8.5 and 4.5 bits per weight against 32, plus f32 norms and the q8 embeddings of q4.
    assert!(q8_len * 100 < f32_len * 28, "{q8_len} vs {f32_len}");
    assert!(q4_len * 100 < f32_len * 16, "{q4_len} vs {f32_len}");
    assert!(ok(&["inspect", "q4.kbm", "--summary"], &dir).contains("q4"));

    ok(&["convert", "q4.kbm", "q4.safetensors"], &dir);
    ok(&["convert", "q4.safetensors", "back.kbm"], &dir);
    assert_eq!(
        std::fs::read(dir.join("back.kbm")).unwrap(),
        std::fs::read(dir.join("q4.kbm")).unwrap()
    );
    ok(&["convert", "m.kbm", "m.safetensors"], &dir);
    ok(
        &["convert", "m.safetensors", "m16.kbm", "--dtype", "f16"],
        &dir,
    );
    assert!(ok(&["inspect", "m16.kbm", "--summary"], &dir).contains("f16"));

    ok(
        &[
            "init", "--model", "bigs", "--labels", "neg,pos", "--dtype", "q8", "-o", "b.kbm",
        ],
        &dir,
    );
    let text = ok(&["inspect", "b.kbm"], &dir);
    assert!(
        text.contains("labels         neg, pos") && text.contains("mlm + classify"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_get_one_line_errors() {
    let dir = temp_dir("bad");
    ok(
        &["init", "--preset", "micro", "--dtype", "q8", "-o", "m.kbm"],
        &dir,
    );
    let good = std::fs::read(dir.join("m.kbm")).unwrap();
    std::fs::write(dir.join("short.kbm"), &good[..1000]).unwrap();
    assert!(fails(&["inspect", "short.kbm"], &dir).contains("short.kbm: truncated at byte 1000"));
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 4;
    std::fs::write(dir.join("flip.kbm"), &flipped).unwrap();
    assert!(fails(&["inspect", "flip.kbm"], &dir).contains("checksum mismatch"));
    std::fs::write(
        dir.join("text.kbm"),
        b"hello, this is not a model at all, but it is long enough for a header? no. ".repeat(4),
    )
    .unwrap();
    assert!(fails(&["inspect", "text.kbm"], &dir).contains("bad magic"));
    assert!(fails(&["inspect", "missing.kbm"], &dir).contains("missing.kbm"));
    assert!(fails(
        &["quantize", "short.kbm", "-o", "x.kbm", "--dtype", "q4"],
        &dir
    )
    .contains("truncated"));
    assert!(fails(&["convert", "m.kbm", "m.bin"], &dir).contains("direction"));
    std::fs::write(
        dir.join("junk.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    )
    .unwrap();
    assert!(fails(&["convert", "junk.safetensors", "j.kbm"], &dir).contains("junk.safetensors"));
    assert!(fails(&["init", "--preset", "huge", "-o", "h.kbm"], &dir).contains("unknown preset"));
    assert!(
        !dir.join("x.kbm").exists() && !dir.join("j.kbm").exists(),
        "no output on failure"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_streams_reproducible_bytes() {
    let dir = temp_dir("gen");
    ok(
        &["init", "--preset", "micro", "--dtype", "q8", "-o", "m.kbm"],
        &dir,
    );
    assert!(
        ok(&["inspect", "m.kbm", "--summary", "--context", "512"], &dir).contains("arena      ")
    );
    let run = |seed: &str| {
        let out = kilobyte(
            &[
                "generate",
                "m.kbm",
                "--prompt",
                "Once upon",
                "--bytes",
                "600",
                "--seed",
                seed,
            ],
            &dir,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let a = run("5");
    assert_eq!(
        a.len(),
        600,
        "600 bytes, past the 512-byte window (it slides)"
    );
    assert_eq!(a, run("5"), "same seed, same bytes");
    assert_ne!(a, run("6"));
    let out = kilobyte(
        &[
            "generate",
            "m.kbm",
            "--prompt",
            "x",
            "--bytes",
            "20",
            "--temperature",
            "0",
        ],
        &dir,
    );
    assert_eq!(out.stdout.len(), 20);
    // Stopping at the greedy output's third byte ends the stream there.
    let stop = format!("\\x{:02x}", out.stdout[2]);
    let args = [
        "generate",
        "m.kbm",
        "--prompt",
        "x",
        "--bytes",
        "20",
        "--temperature",
        "0",
        "--stop",
        &stop,
    ];
    let stopped = kilobyte(&args, &dir).stdout;
    let first = out.stdout.iter().position(|&b| b == out.stdout[2]).unwrap();
    assert_eq!(stopped, out.stdout[..=first]);
    assert!(fails(&["generate", "m.kbm", "--context", "6"], &dir)
        .contains("multiple of the patch size"));
    assert!(fails(&["generate", "m.kbm", "--top-p", "0"], &dir).contains("top_p"));
    ok(&["init", "--model", "bigs", "-o", "b.kbm"], &dir);
    assert!(fails(&["generate", "b.kbm"], &dir).contains("bigs model"));
    std::fs::remove_dir_all(&dir).unwrap();
}
