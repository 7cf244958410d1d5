//! The command-line tool's limits (issue 14): float flags that must be
//! finite, non-finite weights that are never exported, bounded cost for
//! small valid files, inputs checked before they are read whole, what a
//! non-finite result does to the exit status, and what runs promise: a
//! corrupt best is an error, signals stop with their status, resume reads
//! the data it started on.

mod common;

use common::{fails, ok, temp_dir, TINY};
use std::path::Path;

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
        "--seq",
        "16",
        "--eval-windows",
        "2",
        "--quiet",
    ];
    if !extra.contains(&"--batch") {
        a.extend(["--batch", "2"]);
    }
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

/// Writes a randomly initialised q8 model.
fn write_model(path: &Path, config: kilobyte_format::ModelConfig, labels: &[&str]) {
    write_model_as(path, config, labels, kilobyte_format::DType::Q8)
}

fn write_model_as(
    path: &Path,
    config: kilobyte_format::ModelConfig,
    labels: &[&str],
    dtype: kilobyte_format::DType,
) {
    let mut params = kilobyte_trainer::params::ParamSet::init(config, 1).unwrap();
    if !labels.is_empty() {
        params.labels = labels.iter().map(|l| l.to_string()).collect();
    }
    params.to_writer(dtype, dtype).unwrap().write(path).unwrap();
}

fn long_bigs(max_seq: u32) -> kilobyte_format::ModelConfig {
    use kilobyte_format::config::{BIGS_HEAD_CLASSIFY, BIGS_HEAD_MLM};
    let mut c = kilobyte_format::BigsConfig::MICRO;
    c.max_seq = max_seq;
    c.heads = BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY;
    c.n_classes = 2;
    kilobyte_format::ModelConfig::Bigs(c)
}

/// A small file with a long T_max costs what its input needs: the encoder
/// (arena and SSM kernels) is sized to the text, the kernels are generated
/// in linear time, and a stream's encoder grows only to its longest line.
#[test]
fn a_long_t_max_costs_what_the_input_needs() {
    let dir = temp_dir("long-tmax");
    write_model(&dir.join("b.kbm"), long_bigs(131_072), &["neg", "pos"]);
    let t = std::time::Instant::now();
    let out = ok(&["classify", "b.kbm", "hi"], &dir);
    assert!(
        out.starts_with("neg\t") || out.starts_with("pos\t"),
        "{out}"
    );
    // Before: a 131,072-byte encoder, about 14 minutes.
    assert!(t.elapsed().as_secs_f64() < 20.0, "{:?}", t.elapsed());
    assert!(common::kilobyte(&["fill", "b.kbm", "h_"], &dir)
        .status
        .success());
    // Same labels whatever size the encoder has: a stream whose long line
    // grows it midway gives what one line at a time gives.
    let lines = ["short one", &"x".repeat(700), "short one"];
    std::fs::write(dir.join("in.txt"), lines.join("\n")).unwrap();
    let streamed = ok(&["classify", "b.kbm", "--file", "in.txt"], &dir);
    let single: String = lines
        .iter()
        .map(|l| ok(&["classify", "b.kbm", l], &dir))
        .collect();
    assert_eq!(streamed, single);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_sizes_its_arena_to_the_prompt_and_the_bytes() {
    let dir = temp_dir("gen-arena");
    let mut c = kilobyte_format::MegabyteConfig::MICRO;
    c.max_seq = 65_536;
    write_model(
        &dir.join("m.kbm"),
        kilobyte_format::ModelConfig::Megabyte(c),
        &[],
    );
    let out = common::kilobyte(
        &[
            "generate", "m.kbm", "--prompt", "ab", "--bytes", "4", "--stats",
        ],
        &dir,
    );
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let arena: u64 = err
        .split("arena ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    // A 65,536-byte window needs tens of megabytes; six bytes, kilobytes.
    assert!(arena < 1 << 20, "arena {arena} bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Nothing is read whole before it is checked: a device, a file of junk and
/// endless lines all end in one line of error, at once.
#[test]
fn inputs_are_checked_before_they_are_read_whole() {
    let dir = temp_dir("read-whole");
    write_model(&dir.join("b.kbm"), long_bigs(256), &["neg", "pos"]);
    write_model(
        &dir.join("m.kbm"),
        kilobyte_format::ModelConfig::Megabyte(kilobyte_format::MegabyteConfig::MICRO),
        &[],
    );
    let t = std::time::Instant::now();
    let e = fails(&["inspect", "/dev/zero"], &dir);
    assert!(
        e.contains("/dev/zero") && e.contains("not a regular file"),
        "{e}"
    );
    let e = fails(&["generate", "m.kbm", "--prompt-file", "/dev/zero"], &dir);
    assert!(e.contains("not a regular file"), "{e}");
    let e = fails(&["eval", "b.kbm", "--dev", "/dev/zero"], &dir);
    assert!(e.contains("not a regular file"), "{e}");
    let e = fails(&["classify", "b.kbm", "--file", "/dev/zero"], &dir);
    assert!(
        e.contains("/dev/zero") && e.contains("not a regular file"),
        "{e}"
    );
    // A 1 GiB file of junk (sparse: no disk) is refused by its magic, and
    // as text it is a line with no end in sight, given up after 64 MiB.
    let junk = dir.join("junk.kbm");
    std::fs::File::create(&junk)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let e = fails(&["inspect", "junk.kbm"], &dir);
    assert!(e.contains("magic"), "{e}");
    let e = fails(&["classify", "b.kbm", "--file", "junk.kbm"], &dir);
    assert!(
        e.contains("junk.kbm: line 1") && e.contains("longer than 67108864 bytes"),
        "{e}"
    );
    // A valid header on a file of the wrong length: refused by the length.
    let mut m = std::fs::read(dir.join("m.kbm")).unwrap();
    m.extend([0u8; 64]);
    std::fs::write(dir.join("long.kbm"), &m).unwrap();
    let e = fails(&["inspect", "long.kbm"], &dir);
    assert!(e.contains("long.kbm"), "{e}");
    assert!(t.elapsed().as_secs_f64() < 10.0, "{:?}", t.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Flags that cannot fit are refused with the estimate before anything is
/// allocated, and so are the same values edited into a run's config.txt.
#[test]
fn training_flags_are_bounded_before_anything_is_allocated() {
    let dir = temp_dir("train-bounds");
    write_corpus(&dir);
    let t = std::time::Instant::now();
    let e = fails(&train_args("r", &["--batch", "100000000"]), &dir);
    assert!(e.contains("needs about") && e.contains("GiB"), "{e}");
    let e = fails(&train_args("r", &["--threads", "100000"]), &dir);
    assert!(e.contains("--threads 100000"), "{e}");
    assert!(t.elapsed().as_secs_f64() < 10.0, "{:?}", t.elapsed());
    assert!(!dir.join("r").exists());
    ok(&train_args("r", &[]), &dir);
    let config = dir.join("r/config.txt");
    let text = std::fs::read_to_string(&config).unwrap();
    for (key, bad, flag) in [
        ("weight_decay", "NaN", "--weight-decay"),
        ("batch", "100000000", "needs about"),
    ] {
        let edited: String = text
            .lines()
            .map(|l| match l.split_once(" = ") {
                Some((k, _)) if k.ends_with(&format!("train.{key}")) => format!("{k} = {bad}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        assert_ne!(edited, text, "no train.{key} line in\n{text}");
        std::fs::write(&config, edited).unwrap();
        let e = fails(&["train", "--resume", "r", "--quiet"], &dir);
        assert!(e.contains("config.txt") && e.contains(flag), "{key}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sets element `index` of f32 tensor `name` in a .kbm file and re-seals
/// its CRC-32: a format-valid file with a non-finite weight, which no
/// kilobyte writer produces.
fn set_weight(path: &Path, name: &str, index: usize, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = {
        let aligned = kilobyte_format::AlignedBytes::from_slice(&bytes);
        let file = kilobyte_format::ModelFile::parse(&aligned).unwrap();
        let t = file.get(name).unwrap();
        assert_eq!(t.dtype, kilobyte_format::DType::F32);
        t.offset as usize + 4 * index
    };
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    let end = bytes.len() - 4;
    let crc = kilobyte_format::crc::crc32(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn non_finite_outputs_are_errors_never_results() {
    let dir = temp_dir("nan-outputs");
    write_model(&dir.join("b.kbm"), long_bigs(64), &["neg", "pos"]);
    std::fs::write(
        dir.join("dev.tsv"),
        "sentence\tlabel\nfine\tneg\ngood\tpos\n",
    )
    .unwrap();
    // +inf on one class is that class for sure, not NaN.
    set_weight(&dir.join("b.kbm"), "cls.out.bias", 1, f32::INFINITY);
    assert_eq!(ok(&["classify", "b.kbm", "hi"], &dir), "pos\t1.0000\n");
    set_weight(&dir.join("b.kbm"), "cls.out.bias", 0, f32::NAN);
    let e = fails(&["classify", "b.kbm", "hi"], &dir);
    assert!(e.contains("NaN"), "{e}");
    // eval counts NaN predictions as wrong (it said 50% for a coin's worth).
    let out = ok(&["eval", "b.kbm", "--dev", "dev.tsv"], &dir);
    assert!(out.starts_with("accuracy 0.00%"), "{out}");
    // The same weights as a run's last checkpoint, scored by the trainer.
    std::fs::create_dir(dir.join("r")).unwrap();
    std::fs::write(dir.join("r/config.txt"), "# kilobyte run configuration\n").unwrap();
    ok(&["convert", "b.kbm", "r/model.safetensors"], &dir);
    let out = ok(&["eval", "r", "--dev", "dev.tsv"], &dir);
    assert!(out.starts_with("accuracy 0.00%"), "{out}");

    let mut c = kilobyte_format::MegabyteConfig::MICRO;
    c.max_seq = 64;
    // f32, whose products carry a NaN through (q8 activations round it away).
    let f32 = kilobyte_format::DType::F32;
    write_model_as(
        &dir.join("m.kbm"),
        kilobyte_format::ModelConfig::Megabyte(c),
        &[],
        f32,
    );
    set_weight(&dir.join("m.kbm"), "local.ln_f.weight", 0, f32::NAN);
    let e = fails(&["generate", "m.kbm", "--bytes", "2"], &dir);
    assert!(e.contains("NaN"), "{e}");
    std::fs::write(dir.join("data.txt"), "x".repeat(4000)).unwrap();
    let e = fails(
        &["eval", "m.kbm", "--data", "data.txt", "--seq", "32"],
        &dir,
    );
    assert!(e.contains("not finite"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Trains a tiny run in `dir/run` that has a best.safetensors.
fn tiny_run(dir: &Path, run: &str) {
    ok(&train_args(run, &["--eval-every", "2"]), dir);
    assert!(dir.join(run).join("best.safetensors").is_file());
}

#[test]
fn a_corrupt_best_is_an_error_and_only_a_missing_one_falls_back() {
    let dir = temp_dir("corrupt-best");
    write_corpus(&dir);
    tiny_run(&dir, "r");
    let best = dir.join("r/best.safetensors");
    std::fs::write(&best, b"not a safetensors file").unwrap();
    let e = fails(&["export", "r", "--dtype", "f32", "-o", "m.kbm"], &dir);
    assert!(e.contains("best.safetensors"), "{e}");
    assert!(!dir.join("m.kbm").exists());
    let e = fails(&["eval", "r", "--data", "data.txt"], &dir);
    assert!(e.contains("best.safetensors"), "{e}");
    // --last never reads it; without the file, the last checkpoint is used.
    ok(
        &["export", "r", "--last", "--dtype", "f32", "-o", "m.kbm"],
        &dir,
    );
    std::fs::remove_file(&best).unwrap();
    let out = common::kilobyte(&["export", "r", "--dtype", "f32", "-o", "m2.kbm"], &dir);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last-checkpoint"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_checks_its_directory_and_its_val_fraction() {
    let dir = temp_dir("eval-args");
    write_corpus(&dir);
    std::fs::create_dir(dir.join("not-a-run")).unwrap();
    let e = fails(&["eval", "not-a-run", "--data", "data.txt"], &dir);
    assert!(e.contains("not-a-run: not a kilobyte run directory"), "{e}");
    let e = fails(&["export", "not-a-run", "-o", "m.kbm"], &dir);
    assert!(e.contains("not a kilobyte run directory"), "{e}");

    tiny_run(&dir, "r");
    let all = ok(
        &["eval", "r", "--data", "data.txt", "--val-fraction", "1"],
        &dir,
    );
    let size = std::fs::metadata(dir.join("data.txt")).unwrap().len();
    assert!(all.contains(&format!("on {size} bytes")), "{all}");
    for bad in ["5", "0", "1.5", "nan"] {
        let e = fails(
            &["eval", "r", "--data", "data.txt", "--val-fraction", bad],
            &dir,
        );
        let shown = if bad == "nan" { "NaN" } else { bad };
        assert!(e.contains(&format!("--val-fraction {shown}:")), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_stopping_signal_saves_then_exits_with_its_status() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = temp_dir("signals");
    write_corpus(&dir);
    for (signal, status) in [("TERM", 143), ("INT", 130)] {
        let run = format!("run-{signal}");
        let mut args = train_args(&run, &["--checkpoint-every", "3"]);
        let steps = args.iter().position(|&a| a == "--steps").unwrap();
        args[steps + 1] = "100000000";
        let mut child = Command::new(env!("CARGO_BIN_EXE_kilobyte"))
            .args(&args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while common::state_step(&dir.join(&run)).is_none() {
            assert!(child.try_wait().unwrap().is_none(), "training ended early");
            assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = common::state_step(&dir.join(&run)).unwrap();
        Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "SIG{signal}: {err}");
        assert!(err.contains("saving a checkpoint"), "{err}");
        // The checkpoint is the step it stopped at, taken after the signal.
        let after = common::state_step(&dir.join(&run)).unwrap();
        assert!(after >= before, "{before} -> {after}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_reads_the_same_data_from_anywhere_and_refuses_changed_data() {
    let dir = temp_dir("resume-data");
    std::fs::create_dir(dir.join("corpus")).unwrap();
    write_corpus(&dir.join("corpus"));
    // The run sits inside the data directory: it must never become data.
    let mut args = train_args("corpus/r", &["--checkpoint-every", "2"]);
    args[2] = "corpus";
    ok(&args, &dir);
    let config = std::fs::read_to_string(dir.join("corpus/r/config.txt")).unwrap();
    let data = config
        .lines()
        .find_map(|l| l.strip_prefix("train.data = "))
        .unwrap();
    assert!(Path::new(data).is_absolute(), "{config}");
    assert!(
        config.contains("train.data_fingerprint = 1 files, "),
        "{config}"
    );
    // From another directory, with the run's metrics and checkpoints now
    // inside the data directory: same data, same fingerprint.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    ok(&["train", "--resume", "../corpus/r", "--quiet"], &elsewhere);
    // The same length, other bytes: refused, the run untouched.
    let path = dir.join("corpus/data.txt");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let step = common::state_step(&dir.join("corpus/r"));
    let e = fails(&["train", "--resume", "corpus/r", "--quiet"], &dir);
    assert!(e.contains("the training data changed"), "{e}");
    assert_eq!(common::state_step(&dir.join("corpus/r")), step);
    // Naming a run directory as data is refused.
    let mut args = train_args("r2", &[]);
    args[2] = "corpus/r";
    let e = fails(&args, &dir);
    assert!(
        e.contains("a kilobyte run directory, not training data"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_command_makes_a_model_the_runtime_cannot_run() {
    let dir = temp_dir("max-layers");
    write_corpus(&dir);
    let mut args = train_args("deep", &[]);
    let at = args.iter().position(|&a| a == "--layers-global").unwrap();
    args[at + 1] = "25";
    let e = fails(&args, &dir);
    assert!(
        e.contains("layers_global = 25") && e.contains("at most 24"),
        "{e}"
    );
    assert!(!dir.join("deep").exists());
    let e = fails(
        &[
            "train", "--model", "bigs", "--data", "data.txt", "--run", "b", "--layers", "25",
        ],
        &dir,
    );
    assert!(e.contains("layers = 25") && e.contains("at most 24"), "{e}");
    args[at + 1] = "24";
    ok(&args, &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn messages_escape_and_cut_what_files_and_flags_hold() {
    let dir = temp_dir("shown");
    ok(
        &[
            "init", "--model", "bigs", "--labels", "neg,pos", "-o", "c.kbm",
        ],
        &dir,
    );
    let long = "L".repeat(5000);
    let table = format!("sentence\tlabel\nfine\tneg\nbad\t\x1b[2J\x07{long}\n");
    std::fs::write(dir.join("dev.tsv"), table).unwrap();
    let e = fails(&["eval", "c.kbm", "--dev", "dev.tsv"], &dir);
    assert!(!e.contains('\x1b') && !e.contains('\x07'), "{e:?}");
    assert!(e.contains("label \"\\x1b[2J\\x07LLL"), "{e}");
    assert!(e.contains("bytes)") && e.len() < 300, "{e}");
    assert!(e.contains("(\"neg\", \"pos\")"), "{e}");
    let e = fails(
        &[
            "eval",
            "c.kbm",
            "--dev",
            "dev.tsv",
            "--text-column",
            "te\x1bxt",
        ],
        &dir,
    );
    assert!(e.contains("no text column named \"te\\x1bxt\""), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A two-label table with an empty text and one longer than T_max = 64.
fn awkward_table(dir: &Path) {
    let long = format!("{}tail", "a".repeat(64));
    let table = format!("sentence\tlabel\nfine\tneg\n\tpos\n{long}\tpos\ngood\tpos\n");
    std::fs::write(dir.join("t.tsv"), table).unwrap();
}

#[test]
fn one_table_is_read_one_way_by_training_eval_and_classify() {
    let dir = temp_dir("one-rule");
    awkward_table(&dir);
    let mut train = vec!["train", "--model", "bigs", "--objective", "classify"];
    train.extend([
        "--train", "t.tsv", "--dev", "t.tsv", "--run", "r", "--steps", "3",
    ]);
    train.extend(["--batch", "2", "--eval-every", "3", "--quiet"]);
    train.extend([
        "--d-model",
        "16",
        "--d-expand",
        "32",
        "--layers",
        "1",
        "--modes",
        "4",
    ]);
    train.extend(["--max-seq", "64", "--ngram-orders", "none"]);
    let out = common::kilobyte(&train, &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1 training and 1 dev texts are longer than T_max = 64 bytes"),
        "{err}"
    );
    ok(&["export", "r", "--dtype", "f32", "-o", "c.kbm"], &dir);
    // Both evaluations skip the empty text and read the long one in two
    // windows: 3 scored, with the same accuracy.
    let run = ok(&["eval", "r", "--dev", "t.tsv"], &dir);
    let kbm = common::kilobyte(&["eval", "c.kbm", "--dev", "t.tsv"], &dir);
    assert!(
        kbm.status.success(),
        "{}",
        String::from_utf8_lossy(&kbm.stderr)
    );
    let kbm = String::from_utf8(kbm.stdout).unwrap();
    assert!(run.contains("on 3 examples"), "{run}");
    assert_eq!(
        run.split(" on ").next(),
        kbm.split(" on ").next(),
        "{run} vs {kbm}"
    );
    // classify: a blank line gets a blank line and the stream goes on; the
    // long line is read whole, as the same text given as an argument.
    let long = format!("{}tail", "a".repeat(64));
    std::fs::write(dir.join("lines.txt"), format!("fine\n\n{long}\ngood\n")).unwrap();
    let lines = ok(&["classify", "c.kbm", "--file", "lines.txt"], &dir);
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], ok(&["classify", "c.kbm", &long], &dir).trim_end());
    assert_eq!(
        lines[3],
        ok(&["classify", "c.kbm", "good"], &dir).trim_end()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
