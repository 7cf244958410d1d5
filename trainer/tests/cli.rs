//! The `kilobyte` binary end to end: init, inspect, quantize, convert, and
//! bad input getting a one-line error with a non-zero exit (never a panic).

mod common;

use common::{fails, kilobyte, ok, state_step, temp_dir, TINY};
use std::path::Path;
use std::process::Command;

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
    // 8.5 and 4.5 bits per weight against 32, plus f32 norms and the q8
    // embeddings of q4 (token, position and the local n-gram tables: a third
    // of micro's parameters, so q4 is about 18.5% of f32).
    assert!(q8_len * 100 < f32_len * 28, "{q8_len} vs {f32_len}");
    assert!(q4_len * 100 < f32_len * 20, "{q4_len} vs {f32_len}");
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
    // A value outside the flag's set is clap's to reject (status 2, a
    // usage error) with the values it takes.
    let out = kilobyte(&["init", "--preset", "huge", "-o", "h.kbm"], &dir);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'huge'") && err.contains("--preset") && err.contains("micro, small, base"),
        "{err}"
    );
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

fn write_corpus(dir: &Path) {
    let text: String = (0..3000)
        .map(|i| {
            format!(
                "line {i}: the {} sat on the {}.\n",
                ["cat", "dog", "owl"][i % 3],
                ["mat", "log"][i % 2]
            )
        })
        .collect();
    std::fs::write(dir.join("data.txt"), text).unwrap();
}

fn train_args<'a>(run: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "train", "--data", "data.txt", "--run", run, "--steps", steps, "--batch", "4", "--seq",
        "32",
    ];
    a.extend([
        "--eval-every",
        "50",
        "--eval-windows",
        "4",
        "--checkpoint-every",
        "20",
        "--log-every",
        "10",
        "--quiet",
    ]);
    a.extend(TINY);
    a
}

/// Killing training at an arbitrary instant (SIGKILL, possibly mid-save) and
/// resuming gives bit-identical weights to a run that was never interrupted,
/// the averaged best weights included.
#[test]
fn kill_and_resume_matches_an_uninterrupted_run() {
    let dir = temp_dir("resume");
    write_corpus(&dir);
    let args = |run| {
        let mut a = train_args(run, "400");
        a.extend(["--ema", "0.99"]);
        a
    };
    ok(&args("straight"), &dir);

    let mut child = Command::new(env!("CARGO_BIN_EXE_kilobyte"))
        .args(args("killed"))
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let killed = dir.join("killed");
    loop {
        if state_step(&killed).is_some_and(|s| s >= 100) {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "training finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let at = state_step(&killed).unwrap();
    assert!(at < 400, "killed at step {at}");
    ok(&["train", "--resume", "killed", "--quiet"], &dir);
    assert_eq!(state_step(&killed), Some(400));

    let load = |run: &str, file: &str| {
        kilobyte_trainer::checkpoint::load_params(&dir.join(run).join(file))
            .unwrap()
            .0
    };
    for file in ["model.safetensors", "best.safetensors"] {
        let (a, b) = (load("straight", file), load("killed", file));
        assert_eq!(a.params.len(), b.params.len());
        for (x, y) in a.params.iter().zip(&b.params) {
            let same = x
                .data
                .iter()
                .zip(&y.data)
                .all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{file}: {} differs after kill and resume", x.name);
        }
    }
    // The best weights are the average, not a copy of the last ones.
    let (last, best) = (
        load("straight", "model.safetensors"),
        load("straight", "best.safetensors"),
    );
    assert!(last
        .params
        .iter()
        .zip(&best.params)
        .any(|(x, y)| x.data != y.data));
    // Export, eval through the runtime and through the trainer, and plot.
    ok(
        &["export", "straight", "--dtype", "q8", "-o", "m.kbm"],
        &dir,
    );
    let kbm = ok(
        &["eval", "m.kbm", "--data", "data.txt", "--seq", "32"],
        &dir,
    );
    let run = ok(
        &["eval", "straight", "--data", "data.txt", "--seq", "32"],
        &dir,
    );
    let bpb = |s: &str| s.split_whitespace().next().unwrap().parse::<f64>().unwrap();
    assert!(
        (bpb(&kbm) - bpb(&run)).abs() < 0.05 * bpb(&run),
        "q8 {kbm} vs f32 {run}"
    );
    ok(&["plot", "straight", "-o", "loss.svg"], &dir);
    assert!(std::fs::read_to_string(dir.join("loss.svg"))
        .unwrap()
        .starts_with("<svg"));
    assert!(fails(
        &["train", "--data", "data.txt", "--run", "straight", "--steps", "5"],
        &dir
    )
    .contains("already holds a run"));
    assert!(
        fails(&["train", "--data", "missing.txt", "--run", "new"], &dir).contains("missing.txt")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--device cuda` on a machine without a GPU is a one-line error that
/// points to the CPU; where a device opens (a GPU, or the emulated one that
/// `cargo test` finds in target/ when libnvrtc is on LD_LIBRARY_PATH) the
/// two-step run succeeds, and trainer/gpu-check.sh checks the rest. A CPU
/// run rejects `--precision bf16`.
#[test]
fn device_choice_errors_are_one_line() {
    let dir = temp_dir("device");
    write_corpus(&dir);
    let mut args = train_args("gpu-run", "2");
    args.extend(["--device", "cuda"]);
    let out = kilobyte(&args, &dir);
    if !out.status.success() {
        let err = fails(&args, &dir);
        assert!(
            err.contains("--device cuda") && err.contains("--device cpu"),
            "{err}"
        );
    }
    let mut args = train_args("cpu-run", "2");
    args.extend(["--precision", "bf16"]);
    let err = fails(&args, &dir);
    assert!(err.contains("fp32"), "{err}");
}

/// A shape flag of the other family is refused before any work, naming the
/// flag, rather than silently training the preset's shape.
#[test]
fn the_other_familys_shape_flags_are_errors() {
    let dir = temp_dir("family-flags");
    write_corpus(&dir);
    let mut args = train_args("mb-run", "1");
    args.extend(["--d-model", "32"]);
    let err = fails(&args, &dir);
    assert!(err.contains("--d-model is a BiGS shape flag"), "{err}");
    assert!(err.contains("--model megabyte"), "{err}");
    assert!(
        !dir.join("mb-run").exists(),
        "nothing written before the check"
    );
    let err = fails(
        &[
            "train",
            "--model",
            "bigs",
            "--data",
            "data.txt",
            "--run",
            "bigs-run",
            "--d-local",
            "64",
        ],
        &dir,
    );
    assert!(err.contains("--d-local is a MEGABYTE shape flag"), "{err}");
    assert!(err.contains("--model bigs"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
