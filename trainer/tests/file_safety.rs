//! The `kilobyte` binary never destroys what it did not write: outputs
//! onto devices and pipes, temporaries left by killed writers, run
//! directories that are not runs, a second process on one run, and the
//! demo's directory in the shared temp directory.

mod common;

use common::{fails, ok, temp_dir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn an_output_onto_a_device_node_writes_through_it() {
    use std::os::unix::fs::FileTypeExt;
    let dir = temp_dir("device-node");
    // A private /dev/null: the real one must not be at stake in a test.
    let made = Command::new("mknod")
        .args(["-m", "666", "./mynull", "c", "1", "3"])
        .current_dir(&dir)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mknod failed (needs root)");
        std::fs::remove_dir_all(&dir).unwrap();
        return;
    }
    ok(&["init", "-o", "./mynull"], &dir);
    let kind = std::fs::symlink_metadata(dir.join("mynull"))
        .unwrap()
        .file_type();
    assert!(kind.is_char_device(), "{kind:?}");
    assert_eq!(names_in(&dir), ["mynull"], "no temporary left");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_output_onto_a_directory_is_refused() {
    let dir = temp_dir("dir-output");
    std::fs::create_dir(dir.join("out")).unwrap();
    std::fs::write(dir.join("out/keep.txt"), b"mine").unwrap();
    let e = fails(&["init", "-o", "out"], &dir);
    assert!(e.contains("out") && e.contains("is a directory"), "{e}");
    assert_eq!(names_in(&dir.join("out")), ["keep.txt"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_output_removes_a_killed_writers_temporaries_and_follows_no_planted_link() {
    let dir = temp_dir("stale-temps");
    // What a kill during `init -o x.kbm` left (old and new naming), a link
    // planted under a temporary's name, and files that only look similar.
    std::fs::write(dir.join(".x.kbm.tmp.31337"), vec![7u8; 2 << 20]).unwrap();
    std::fs::write(dir.join(".x.kbm.tmp.0123456789abcdef"), b"dead").unwrap();
    std::fs::write(dir.join("victim"), b"precious").unwrap();
    std::os::unix::fs::symlink("victim", dir.join(".x.kbm.tmp.4242")).unwrap();
    std::fs::write(dir.join(".y.kbm.tmp.31337"), b"another target's").unwrap();
    ok(&["init", "-o", "x.kbm"], &dir);
    assert_eq!(
        names_in(&dir),
        [".x.kbm.tmp.4242", ".y.kbm.tmp.31337", "victim", "x.kbm"]
    );
    assert_eq!(std::fs::read(dir.join("victim")).unwrap(), b"precious");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Run flags beside `common::TINY`'s shape, so training takes seconds.
const QUICK: [&str; 8] = [
    "--batch",
    "4",
    "--seq",
    "32",
    "--eval-windows",
    "4",
    "--log-every",
    "10",
];

fn write_corpus(dir: &Path) {
    let text: String = (0..2000)
        .map(|i| format!("line {i}: the cat sat on the mat.\n"))
        .collect();
    std::fs::write(dir.join("data.txt"), text).unwrap();
}

#[test]
fn train_refuses_a_directory_that_is_not_a_run() {
    let dir = temp_dir("foreign-run");
    write_corpus(&dir);
    // A model folder of another tool: a model.safetensors, a metrics log,
    // checkpoint folders.
    let hf = dir.join("hf-model");
    std::fs::create_dir_all(hf.join("ckpt-000001-step-5")).unwrap();
    for f in ["model.safetensors", "best.safetensors", "metrics.jsonl"] {
        std::fs::write(hf.join(f), b"user data").unwrap();
    }
    std::fs::write(hf.join("ckpt-000001-step-5/model.safetensors"), b"x").unwrap();
    let before = names_in(&hf);
    let mut args = vec!["train", "--data", "data.txt", "--run", "hf-model"];
    args.extend(["--steps", "2", "--quiet"]);
    args.extend(common::TINY);
    args.extend(QUICK);
    let e = fails(&args, &dir);
    assert!(
        e.contains("hf-model") && e.contains("not a kilobyte run"),
        "{e}"
    );
    assert_eq!(names_in(&hf), before);
    assert_eq!(
        std::fs::read(hf.join("model.safetensors")).unwrap(),
        b"user data"
    );
    assert_eq!(
        names_in(&hf.join("ckpt-000001-step-5")),
        ["model.safetensors"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_process_on_a_run_being_trained_is_refused() {
    let dir = temp_dir("two-writers");
    write_corpus(&dir);
    let mut args = vec!["train", "--data", "data.txt", "--run", "run"];
    args.extend(["--steps", "1000000", "--checkpoint-every", "5", "--quiet"]);
    args.extend(common::TINY);
    args.extend(QUICK);
    let mut first = Command::new(env!("CARGO_BIN_EXE_kilobyte"))
        .args(&args)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !dir.join("run/state.txt").exists() {
        assert!(first.try_wait().unwrap().is_none(), "training ended early");
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A second writer that is let in would train on: give it a deadline.
    let mut second = Command::new(env!("CARGO_BIN_EXE_kilobyte"))
        .args(["train", "--resume", "run", "--quiet"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while second.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused = second.try_wait().unwrap();
    if refused.is_none() {
        second.kill().unwrap();
    }
    let out = second.wait_with_output().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(refused.and_then(|s| s.code()), Some(1), "not refused: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(
        e.contains("run") && e.contains("another kilobyte process"),
        "{e}"
    );
    // The lock dies with its process: a resume now gets it.
    let mut resume = Command::new(env!("CARGO_BIN_EXE_kilobyte"))
        .args(["train", "--resume", "run", "--quiet"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::fs::metadata(dir.join("run/state.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let now = std::fs::metadata(dir.join("run/state.txt"))
            .and_then(|m| m.modified())
            .unwrap_or(start);
        if now > start {
            break;
        }
        if let Some(status) = resume.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut resume.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the resume ended ({status}) without a checkpoint: {err}");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    resume.kill().unwrap();
    resume.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_demo_trains_in_a_fresh_directory_with_a_random_name() {
    let dir = temp_dir("demo-dir");
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kilobyte"))
        .args(["demo", "--time", "0.5", "--sample", "8"])
        .env("TMPDIR", &tmp)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let made = names_in(&tmp);
    assert_eq!(made.len(), 1, "{made:?}");
    // Not a name anyone could have planted a link under in advance.
    assert_ne!(made[0], format!("kilobyte-demo-{pid}"));
    assert!(made[0].starts_with("kilobyte-demo-"), "{made:?}");
    let meta = std::fs::symlink_metadata(tmp.join(&made[0])).unwrap();
    assert!(meta.is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}
