use super::*;
use crate::optim::AdamWState;
use crate::params::ParamSet;
use kilobyte_format::{BigsConfig, MegabyteConfig, ModelConfig, ModelFile};
use kilobyte_runtime::rng::Rng;
use std::path::Path;

use crate::testutil::TempDir;

fn megabyte() -> ModelConfig {
    ModelConfig::Megabyte(MegabyteConfig::preset(2, 32, 1, 2, 32, 1, 2, 16))
}

fn bigs_classifier() -> ModelConfig {
    let mut c = BigsConfig::preset(32, 96, 1, 8, 1, 16);
    c.heads = 3;
    c.n_classes = 2;
    ModelConfig::Bigs(c)
}

fn optimizer_for(params: &ParamSet, seed: u64) -> AdamWState {
    let mut rng = Rng::new(seed);
    let mut fill = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    AdamWState {
        step: 17,
        m: params.params.iter().map(|p| fill(p.data.len())).collect(),
        v: params
            .params
            .iter()
            .map(|p| fill(p.data.len()).iter().map(|x| x * x).collect())
            .collect(),
        average: Vec::new(),
    }
}

fn state_at(step: u64) -> TrainState {
    let mut s = TrainState {
        step,
        sampler: SamplerState {
            rng: Rng::new(step).state(),
            step,
        },
        bytes_seen: step * 4096,
        elapsed_s: step as f64 * 0.123456789,
        ..TrainState::default()
    };
    s.rngs.insert("mask".into(), Rng::new(99 + step).state());
    s.extra.insert("note".into(), "resumed twice".into());
    s
}

fn metrics_at(step: u64, train: f64, val: Option<f64>) -> Metrics {
    Metrics {
        step,
        train_loss: Some(train),
        val_loss: val,
        val_bpb: val.map(|v| v / std::f64::consts::LN_2),
        lr: Some(1e-3),
        ..Metrics::default()
    }
}

fn ckpt_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    v.sort();
    v
}

#[test]
fn checkpoint_round_trips_both_families() {
    for (i, model) in [megabyte(), bigs_classifier()].into_iter().enumerate() {
        let t = TempDir::new(&format!("round{i}"));
        let run_path = t.0.join("run");
        let config = RunConfig::new(model)
            .with("lr", 0.0006)
            .with("batch_size", 8)
            .with("data", "corpus/a b.txt");
        let mut run = RunDir::create(&run_path, config.clone()).unwrap();
        let mut params = ParamSet::init(model, 1).unwrap();
        if i == 1 {
            params.labels = vec!["negative".into(), "positive".into()];
        }
        let mut opt = optimizer_for(&params, 2);
        if i == 1 {
            // A run that keeps averaged weights stores them with the moments.
            opt.average = params.params.iter().map(|p| p.data.clone()).collect();
        }
        run.log(metrics_at(5, 2.0, None)).unwrap();
        run.log(metrics_at(10, 1.9, Some(2.1))).unwrap();
        assert!(run.offer_best(&params, 10, 2.1).unwrap());
        assert!(!run.offer_best(&params, 10, 2.2).unwrap());
        run.save(&params, &opt, &state_at(10)).unwrap();

        let back = Checkpoint::load(&run_path).unwrap();
        assert_eq!(back.config, config);
        assert_eq!(back.config.get::<f64>("lr").unwrap(), Some(0.0006));
        assert_eq!(back.params, params);
        assert_eq!(back.optimizer, opt);
        assert_eq!(back.state, state_at(10));
        assert_eq!(back.metrics, run.metrics());
        assert_eq!(
            back.best,
            Some(Best {
                step: 10,
                val_loss: 2.1
            })
        );
        let (best_params, _) = load_best(&run_path).unwrap();
        assert_eq!(best_params, params);

        // The top-level model.safetensors is the committed weights, in the
        // export layout: it converts to a .kbm as it is.
        let st = std::fs::read(run_path.join(MODEL_FILE)).unwrap();
        let kbm = kilobyte_format::st::from_safetensors(&st, |c| c.stored)
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(
            ParamSet::from_file(&ModelFile::parse(&kbm).unwrap()).unwrap(),
            params
        );

        // A second save replaces the first checkpoint directory.
        drop(run);
        let (mut run, ckpt) = RunDir::resume(&run_path).unwrap();
        let mut p2 = ckpt.params.clone();
        p2.params[0].data[0] += 1.0;
        run.log(metrics_at(20, 1.7, None)).unwrap();
        run.save(&p2, &ckpt.optimizer, &state_at(20)).unwrap();
        assert_eq!(ckpt_dirs(&run_path), ["ckpt-000002-step-20"]);
        let back = Checkpoint::load(&run_path).unwrap();
        assert_eq!(
            (back.params, back.state.step, back.metrics.len()),
            (p2, 20, 3)
        );
        assert_eq!(back.best.unwrap().step, 10);
    }
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_loadable() {
    let t = TempDir::new("atomic");
    let dir = t.0.join("run");
    let mut run = RunDir::create(&dir, RunConfig::new(megabyte())).unwrap();
    let params = ParamSet::init(megabyte(), 3).unwrap();
    let opt = optimizer_for(&params, 4);
    run.log(metrics_at(10, 2.0, Some(2.2))).unwrap();
    run.save(&params, &opt, &state_at(10)).unwrap();
    let committed = Checkpoint::load(&dir).unwrap();

    // What a kill during the next save leaves: a new checkpoint directory
    // with one complete and one half-written tensor file, write_atomic
    // temporaries (one of state.txt itself), and metric lines past the
    // checkpoint, the last one torn.
    let crashed = dir.join("ckpt-000002-step-20");
    std::fs::create_dir(&crashed).unwrap();
    let mut p2 = params.clone();
    p2.params[0].data[0] = 42.0;
    save_params(&crashed.join(MODEL_FILE), &p2, &Default::default()).unwrap();
    let full = std::fs::read(dir.join("ckpt-000001-step-10").join(OPTIMIZER_FILE)).unwrap();
    std::fs::write(
        crashed.join(format!(".{OPTIMIZER_FILE}.tmp.77")),
        &full[..full.len() / 2],
    )
    .unwrap();
    std::fs::write(dir.join(".state.txt.tmp.77"), "checkpoint = ckpt-000002-st").unwrap();
    std::fs::write(dir.join(".model.safetensors.tmp.77"), &full[..100]).unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(METRICS_FILE))
        .unwrap();
    std::io::Write::write_all(
        &mut log,
        b"{\"step\":15,\"train_loss\":1.5}\n{\"step\":20,\"tra",
    )
    .unwrap();
    drop(log);

    assert_eq!(Checkpoint::load(&dir).unwrap(), committed);

    // Resuming drops the metric lines of the lost steps; the next save
    // clears the debris.
    drop(run);
    let (mut run, ckpt) = RunDir::resume(&dir).unwrap();
    assert_eq!(read_metrics(&dir.join(METRICS_FILE)).unwrap(), ckpt.metrics);
    assert_eq!(
        ckpt.metrics.iter().map(|m| m.step).collect::<Vec<_>>(),
        [10]
    );
    run.save(&p2, &opt, &state_at(20)).unwrap();
    assert_eq!(ckpt_dirs(&dir), ["ckpt-000002-step-20"]);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(Checkpoint::load(&dir).unwrap().params, p2);
}

#[test]
fn damaged_run_directories_give_errors_naming_the_file() {
    let t = TempDir::new("damaged");
    let dir = t.0.join("run");
    let err = |dir: &Path| format!("{:#}", Checkpoint::load(dir).unwrap_err());
    assert!(err(&dir).contains("state.txt: missing"), "{}", err(&dir));

    let mut run = RunDir::create(&dir, RunConfig::new(megabyte())).unwrap();
    let params = ParamSet::init(megabyte(), 3).unwrap();
    let opt = optimizer_for(&params, 4);
    run.save(&params, &opt, &state_at(10)).unwrap();
    assert!(RunDir::create(&dir, RunConfig::new(megabyte()))
        .unwrap_err()
        .to_string()
        .contains("already holds a run"));
    let ckpt = dir.join("ckpt-000001-step-10");

    // Truncated tensors.
    let model = std::fs::read(ckpt.join(MODEL_FILE)).unwrap();
    std::fs::write(ckpt.join(MODEL_FILE), &model[..model.len() - 10]).unwrap();
    let e = err(&dir);
    assert!(
        e.contains("ckpt-000001-step-10/model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(ckpt.join(MODEL_FILE), &model).unwrap();

    // An optimizer file from another checkpoint.
    let opt_file = std::fs::read(ckpt.join(OPTIMIZER_FILE)).unwrap();
    save_optimizer(
        &ckpt.join(OPTIMIZER_FILE),
        &params,
        &opt,
        &Default::default(),
    )
    .unwrap();
    let e = err(&dir);
    assert!(
        e.contains("optimizer.safetensors: written for step none generation none, but"),
        "{e}"
    );
    // Tags of another step: the numbers, never Rust's `Some(20)`.
    let tags = std::collections::HashMap::from([
        ("kilobyte.checkpoint.step".to_string(), "20".to_string()),
        (
            "kilobyte.checkpoint.generation".to_string(),
            "1".to_string(),
        ),
    ]);
    save_optimizer(&ckpt.join(OPTIMIZER_FILE), &params, &opt, &tags).unwrap();
    let e = err(&dir);
    assert!(
        e.contains("written for step 20 generation 1, but state.txt names step 10 generation 1"),
        "{e}"
    );
    std::fs::write(ckpt.join(OPTIMIZER_FILE), &opt_file).unwrap();

    // A bad line in state.txt, and a bad metrics line.
    let state = std::fs::read_to_string(dir.join(STATE_FILE)).unwrap();
    std::fs::write(
        dir.join(STATE_FILE),
        state.replace("bytes_seen = ", "bytes_seen = x"),
    )
    .unwrap();
    let e = err(&dir);
    assert!(
        e.contains("state.txt: line") && e.contains("bytes_seen"),
        "{e}"
    );
    std::fs::write(dir.join(STATE_FILE), &state).unwrap();
    std::fs::write(
        dir.join(METRICS_FILE),
        "{\"step\":1}\n{\"step\":2,}\n{\"step\":3}\n",
    )
    .unwrap();
    let e = err(&dir);
    assert!(e.contains("metrics.jsonl: line 2"), "{e}");
    std::fs::write(dir.join(METRICS_FILE), "").unwrap();

    std::fs::remove_file(dir.join(CONFIG_FILE)).unwrap();
    assert!(err(&dir).contains("config.txt"), "{}", err(&dir));
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_directory_that_is_not_a_run_is_refused_and_left_untouched() {
    // A Hugging Face style model folder with another tool's checkpoints.
    let t = TempDir::new("foreign");
    let dir = t.0.join("hf-model");
    for f in [MODEL_FILE, BEST_FILE, METRICS_FILE, "config.json"] {
        t.write(&format!("hf-model/{f}"), b"user data");
    }
    t.write(
        "hf-model/ckpt-000001-step-5/model.safetensors",
        b"user data",
    );
    t.write("hf-model/ckpt-final/weights.bin", b"user data");
    let before = names_in(&dir);

    let e = format!(
        "{:#}",
        RunDir::create(&dir, RunConfig::new(megabyte())).unwrap_err()
    );
    assert!(
        e.contains(&dir.display().to_string()) && e.contains("not a kilobyte run"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    // Not even a lock file is left in it.
    assert_eq!(names_in(&dir), before);
    assert_eq!(
        names_in(&dir.join("ckpt-000001-step-5")),
        ["model.safetensors"]
    );
    assert_eq!(
        std::fs::read(dir.join(MODEL_FILE)).unwrap(),
        b"user data".to_vec()
    );
    // The early check the CLI makes before reading any data says the same.
    assert!(crate::train::ensure_new(&dir).is_err());
}

#[test]
fn a_new_run_removes_only_what_a_run_wrote() {
    // A run that never reached a checkpoint, into which the user put files
    // of their own, some with names like a run's.
    let t = TempDir::new("leftovers");
    let dir = t.0.join("run");
    let mut run = RunDir::create(&dir, RunConfig::new(megabyte())).unwrap();
    let params = ParamSet::init(megabyte(), 3).unwrap();
    run.log(metrics_at(10, 2.0, Some(2.2))).unwrap();
    assert!(run.offer_best(&params, 10, 2.2).unwrap());
    drop(run);
    t.write("run/notes.txt", b"mine");
    t.write("run/ckpt-old/weights.bin", b"mine");
    t.write("run/ckpt-000009-step-90/model.safetensors", b"half a save");
    t.write("run/ckpt-000009-step-90/mine.txt", b"mine");
    t.write("run/ckpt-000008-step-80/model.safetensors", b"half a save");
    t.write("run/.best.safetensors.tmp.12345", b"killed writer");

    RunDir::create(&dir, RunConfig::new(megabyte())).unwrap();
    assert_eq!(
        names_in(&dir),
        [
            "ckpt-000009-step-90",
            "ckpt-old",
            CONFIG_FILE,
            LOCK_FILE,
            "notes.txt"
        ]
    );
    assert_eq!(names_in(&dir.join("ckpt-old")), ["weights.bin"]);
    assert_eq!(names_in(&dir.join("ckpt-000009-step-90")), ["mine.txt"]);
}

#[test]
fn a_second_writer_is_refused_while_the_lock_is_held() {
    let t = TempDir::new("lock");
    let dir = t.0.join("run");
    let mut run = RunDir::create(&dir, RunConfig::new(megabyte())).unwrap();
    let held = |e: anyhow::Error| {
        let e = format!("{e:#}");
        assert!(
            e.contains(&dir.display().to_string()) && e.contains("another kilobyte process"),
            "{e}"
        );
    };
    // Before the first checkpoint: a second start in the same directory.
    held(RunDir::create(&dir, RunConfig::new(megabyte())).unwrap_err());
    let params = ParamSet::init(megabyte(), 3).unwrap();
    let opt = optimizer_for(&params, 4);
    run.save(&params, &opt, &state_at(10)).unwrap();
    // After it: a resume while the first is still writing.
    held(RunDir::resume(&dir).unwrap_err());
    // Readers need no lock.
    Checkpoint::load(&dir).unwrap();
    drop(run);
    let (run, _) = RunDir::resume(&dir).unwrap();
    drop(run);
    // A directory that holds no run gets no lock file from a resume.
    let empty = t.0.join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(RunDir::resume(&empty).is_err());
    assert!(names_in(&empty).is_empty());
}

#[test]
fn config_text_round_trips_and_rejects_bad_entries() {
    let c = RunConfig::new(bigs_classifier())
        .with("lr", 3e-4)
        .with("schedule", "cosine");
    let text = c.to_text().unwrap();
    assert!(
        text.contains("kilobyte.family = bigs\n") && text.contains("train.lr = 0.0003\n"),
        "{text}"
    );
    assert_eq!(RunConfig::parse(&text).unwrap(), c);
    assert!(c
        .get::<u32>("schedule")
        .unwrap_err()
        .to_string()
        .contains("train.schedule"));
    assert!(RunConfig::new(megabyte())
        .with("two words", 1)
        .to_text()
        .is_err());
    assert!(RunConfig::new(megabyte())
        .with("x", "a\nb")
        .to_text()
        .is_err());
    let e = RunConfig::parse(&(text.clone() + "lr = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown key \"lr\""), "{e}");
    let e = RunConfig::parse(&(text + "train.lr = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("appears twice"), "{e}");
}

#[test]
fn metrics_lines_round_trip_and_errors_give_line_numbers() {
    let mut m = metrics_at(7, 1.25, Some(1.5));
    m.grad_norm = Some(f64::NAN);
    m.bytes_per_s = Some(123456.5);
    m.extra.insert("mask \"acc\"".into(), 1e-9);
    let line = m.to_json();
    assert!(
        line.starts_with("{\"step\":7,\"train_loss\":1.25,") && line.contains("\"grad_norm\":null"),
        "{line}"
    );
    let back = Metrics::parse(&line).unwrap();
    m.grad_norm = None;
    assert_eq!(back, m);

    let text = format!(
        "{line}\n\n{{\"step\": 8, \"note\": \"text\", \"flag\": true}}\n{{\"step\": -1}}\n"
    );
    let e = parse_metrics(&text).unwrap_err().to_string();
    assert!(e.contains("line 4") && e.contains("step"), "{e}");
    for bad in [
        "{\"step\":1",
        "{\"step\":1,\"lr\":[1]}",
        "{\"step\":1,\"lr\":NaN}",
        "[]",
        "{\"lr\":1}",
    ] {
        let e = parse_metrics(&format!("{line}\n{bad}\n{line}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{bad}: {e}");
    }
    // An unterminated last line is a write in progress.
    assert_eq!(
        parse_metrics(&format!("{line}\n{{\"step\":8,\"tr")).unwrap(),
        [back]
    );
}

#[test]
fn memorisation_is_detected_only_when_val_rises_as_train_falls() {
    // Evaluations every 100 steps, training logs every 50.
    let history = |vals: &[f64], trains: &[f64]| -> Vec<Metrics> {
        let mut h = Vec::new();
        for (k, &v) in vals.iter().enumerate() {
            let step = 100 * (k as u64 + 1);
            h.push(metrics_at(step - 50, trains[k] + 0.01, None));
            h.push(metrics_at(step, trains[k], Some(v)));
        }
        h
    };
    let falling = [2.0, 1.8, 1.6, 1.4, 1.2, 1.0];
    let rising_val = [2.0, 1.5, 1.6, 1.7, 1.8, 1.9];
    let w = memorisation_warning(&history(&rising_val, &falling), 3, Some(200)).expect("a warning");
    assert!(
        w.contains("rose for 3 evaluations") && w.contains("steps 300..600"),
        "{w}"
    );
    assert!(w.contains("best.safetensors keeps step 200"), "{w}");
    // Four rises are not five.
    assert!(memorisation_warning(&history(&rising_val, &falling), 5, None).is_none());
    // Both rising is divergence, not memorisation.
    let rising_train = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5];
    assert!(memorisation_warning(&history(&rising_val, &rising_train), 3, None).is_none());
    // A dip breaks the run of rises.
    assert!(memorisation_warning(
        &history(&[2.0, 1.5, 1.6, 1.55, 1.8, 1.9], &falling),
        3,
        None
    )
    .is_none());
    assert!(memorisation_warning(&[], 3, None).is_none());
}

#[test]
fn generic_tensor_files_round_trip() {
    let t = TempDir::new("tensors");
    let path = t.0.join("x.safetensors");
    let (a, b) = (vec![1.0f32, -2.5, 3.25, 0.0, 5.0, 6.0], vec![7.0f32]);
    let tensors = [
        TensorRef {
            name: "b",
            shape: vec![1],
            data: &b,
        },
        TensorRef {
            name: "a",
            shape: vec![2, 3],
            data: &a,
        },
    ];
    let meta = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
    write_tensors(&path, &tensors, &meta).unwrap();
    let back = read_tensors(&path).unwrap();
    assert_eq!(back.metadata, meta);
    assert_eq!(
        back.tensors[0],
        NamedTensor {
            name: "a".into(),
            shape: vec![2, 3],
            data: a.clone()
        }
    );
    assert_eq!(back.tensors[1].data, b);
    let bad = [TensorRef {
        name: "a",
        shape: vec![4],
        data: &a,
    }];
    assert!(write_tensors(&path, &bad, &meta)
        .unwrap_err()
        .to_string()
        .contains("shape [4] but 6 values"));
}

/// Runs only as the child of `ctrl_c_sets_the_flag`: installs the handler,
/// sends itself SIGINT and checks the signal is recorded.
#[test]
fn ctrl_c_child() {
    if std::env::var_os("KILOBYTE_CTRLC_CHILD").is_none() {
        return;
    }
    install_interrupt_handler().unwrap();
    install_interrupt_handler().unwrap();
    assert!(!interrupted());
    let pid = std::process::id().to_string();
    std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !interrupted() {
        assert!(t0.elapsed().as_secs() < 10, "no interrupt arrived");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(interrupt_signal(), Some(2));
    assert_eq!(interrupt_status(), Some(130));
    assert!(interrupted());
    println!("CTRLC-OK");
}

#[cfg(unix)]
#[test]
fn ctrl_c_sets_the_flag() {
    // In a child process: the handler is process-wide, and a signal sent
    // to this test binary would reach every other test.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "checkpoint::tests::ctrl_c_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KILOBYTE_CTRLC_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("CTRLC-OK"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("interrupted: saving a checkpoint"),
        "{stderr}"
    );
}
