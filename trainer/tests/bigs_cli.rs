//! BiGS through the `kilobyte` binary: masked-byte pretraining, classifier
//! fine-tuning from it, kill-and-resume, export, and the runtime commands
//! (classify, fill, eval) with their one-line errors.

mod common;

use common::{fails, ok, state_step, temp_dir};
use std::path::Path;
use std::process::{Command, Stdio};

const TINY: [&str; 12] = [
    "--preset",
    "micro",
    "--d-model",
    "16",
    "--d-expand",
    "32",
    "--layers",
    "1",
    "--modes",
    "4",
    "--max-seq",
    "48",
];

/// A toy sentiment table: the label follows the adjective.
fn write_tables(dir: &Path) {
    let table = |n: usize, offset: usize| -> String {
        let mut s = String::from("sentence\tlabel\n");
        for i in offset..offset + n {
            let good = i % 2 == 0;
            let adj = if good {
                ["great", "good", "fine"][i % 3]
            } else {
                ["awful", "bad", "dull"][i % 3]
            };
            s += &format!(
                "the {} was {adj} {}\t{}\n",
                ["film", "plot", "cast"][i % 3],
                i % 7,
                good as u8
            );
        }
        s
    };
    std::fs::write(dir.join("train.tsv"), table(400, 0)).unwrap();
    std::fs::write(dir.join("dev.tsv"), table(60, 1000)).unwrap();
    let corpus: String = (0..400)
        .map(|i| format!("the film was good {i}. "))
        .collect();
    std::fs::write(dir.join("corpus.txt"), corpus).unwrap();
}

fn classify_args<'a>(run: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--model",
        "bigs",
        "--objective",
        "classify",
        "--train",
        "train.tsv",
        "--dev",
        "dev.tsv",
        "--run",
        run,
        "--steps",
        steps,
        "--batch",
        "8",
        "--lr",
        "3e-3",
        "--warmup",
        "10",
        "--eval-every",
        "40",
        "--checkpoint-every",
        "10",
        "--quiet",
    ];
    a.extend(TINY);
    a
}

#[test]
fn pretrain_finetune_resume_export_and_run() {
    let dir = temp_dir("flow");
    write_tables(&dir);
    let mut mlm = vec![
        "train",
        "--model",
        "bigs",
        "--objective",
        "mlm",
        "--data",
        "corpus.txt",
        "--run",
        "mlm",
        "--steps",
        "30",
        "--batch",
        "4",
        "--seq",
        "48",
        "--eval-every",
        "30",
        "--eval-windows",
        "4",
        "--quiet",
    ];
    mlm.extend(TINY);
    let out = ok(&mlm, &dir);
    assert!(out.contains("bpb"), "{out}");

    // Fine-tune from the pretrained encoder, straight through...
    let mut straight = classify_args("straight", "120");
    straight.extend(["--init", "mlm"]);
    let out = ok(&straight, &dir);
    assert!(out.contains("accuracy"), "{out}");
    // ...and killed at an arbitrary instant, then resumed: bit-identical.
    let mut killed_args = classify_args("killed", "120");
    killed_args.extend(["--init", "mlm"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kilobyte"))
        .args(&killed_args)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let killed = dir.join("killed");
    loop {
        if state_step(&killed).is_some_and(|s| s >= 30) {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(state_step(&killed).unwrap() < 120);
    ok(&["train", "--resume", "killed", "--quiet"], &dir);
    let load = |run: &str| {
        kilobyte_trainer::checkpoint::load_params(&dir.join(run).join("model.safetensors"))
            .unwrap()
            .0
    };
    let (a, b) = (load("straight"), load("killed"));
    assert_eq!(a.labels, ["0", "1"]);
    for (x, y) in a.params.iter().zip(&b.params) {
        assert!(
            x.data
                .iter()
                .zip(&y.data)
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "{} differs after kill and resume",
            x.name
        );
    }

    // Export and run through the runtime; accuracy agrees with the trainer's.
    ok(
        &["export", "straight", "--dtype", "f32", "-o", "c.kbm"],
        &dir,
    );
    let acc = |s: &str| -> f64 {
        s.split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    let kbm = ok(&["eval", "c.kbm", "--dev", "dev.tsv"], &dir);
    let run = ok(&["eval", "straight", "--dev", "dev.tsv"], &dir);
    assert!((acc(&kbm) - acc(&run)).abs() < 1e-9, "{kbm} vs {run}");
    assert!(acc(&kbm) > 60.0, "the toy task is learnable: {kbm}");
    let out = ok(&["classify", "c.kbm", "the plot was great 3"], &dir);
    let (label, p) = out.trim().split_once('\t').unwrap();
    assert!(label == "0" || label == "1");
    assert!((0.5..=1.0).contains(&p.parse::<f64>().unwrap()));
    std::fs::write(dir.join("lines.txt"), "a\nthe cast was bad 2\n").unwrap();
    assert_eq!(
        ok(&["classify", "c.kbm", "--file", "lines.txt"], &dir)
            .lines()
            .count(),
        2
    );
    // The classifier kept the pretrained masked-byte head: it can fill.
    let filled = ok(&["fill", "c.kbm", "the f_lm"], &dir);
    assert_eq!(filled.trim_end().len(), 8);

    // A text longer than T_max = 48 is read whole, in windows of 48 bytes
    // whose positions are pooled together: two copies of one window get
    // that window's class (the head's pooled vector is the same; the
    // n-gram logits, over sqrt(length), grow with the repeated evidence),
    // another second window changes the answer, and a line of a file
    // reads as the same text given as an argument.
    let w = format!("{:<48}", "the plot was great 3");
    let v = format!("{:<48}", "the cast was bad 2, bad 2");
    let one = ok(&["classify", "c.kbm", &w], &dir);
    let class = |out: &str| out.split('\t').next().unwrap().to_string();
    let twice = ok(&["classify", "c.kbm", &format!("{w}{w}")], &dir);
    assert_eq!(class(&twice), class(&one));
    assert_ne!(ok(&["classify", "c.kbm", &format!("{w}{v}")], &dir), one);
    std::fs::write(dir.join("long.txt"), format!("{w}{v}\n")).unwrap();
    assert_eq!(
        ok(&["classify", "c.kbm", "--file", "long.txt"], &dir),
        ok(&["classify", "c.kbm", &format!("{w}{v}")], &dir)
    );
    // Errors name the problem.
    ok(&["export", "mlm", "--dtype", "q8", "-o", "m.kbm"], &dir);
    assert!(fails(&["classify", "m.kbm", "hi"], &dir).contains("no classification head"));
    assert!(fails(&["fill", "m.kbm", "no gap"], &dir).contains("no gap"));
    std::fs::write(
        dir.join("bad.tsv"),
        "sentence\tlabel\nfine\t1\nmissing label\n",
    )
    .unwrap();
    let e = fails(&["eval", "c.kbm", "--dev", "bad.tsv"], &dir);
    assert!(e.contains("bad.tsv: line 3"), "{e}");
    let e = fails(
        &classify_args("new", "5")
            .iter()
            .map(|a| if *a == "dev.tsv" { "bad.tsv" } else { a })
            .collect::<Vec<_>>(),
        &dir,
    );
    assert!(e.contains("bad.tsv: line 3"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Spawns `kilobyte args` and kills it once `run` has a checkpoint at step
/// `at` or later (it must not finish first).
fn kill_at(args: &[&str], dir: &Path, run: &Path, at: u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kilobyte"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if state_step(run).is_some_and(|s| s >= at) {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} finished before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn same_weights(a: &Path, b: &Path) {
    let load = |p: &Path| kilobyte_trainer::checkpoint::load_params(p).unwrap().0;
    let (a, b) = (load(a), load(b));
    assert_eq!(a.config, b.config);
    for (x, y) in a.params.iter().zip(&b.params) {
        assert!(
            x.data
                .iter()
                .zip(&y.data)
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "{} differs after kill and resume",
            x.name
        );
    }
}

/// The one-command recipe: masked-byte pretraining on the training table's
/// texts (in RUN/pretrain), then fine-tuning from it (in RUN). Killed in
/// the pretraining and again in the fine-tuning, each time resumed with
/// `--resume RUN`, it ends bit for bit where a straight run ends (its
/// fine-tuning with dropout and the joint masked-byte loss); the
/// classifier exports and evaluates as any other.
#[test]
fn classify_pretrains_first_and_resumes_in_either_phase() {
    let dir = temp_dir("recipe");
    write_tables(&dir);
    let args = |run: &'static str| {
        let mut a = classify_args(run, "160");
        a.extend(["--pretrain-fraction", "0.5", "--dropout", "0.1"]);
        a.extend(["--mlm-weight", "0.5"]);
        a
    };
    ok(&args("straight"), &dir);
    let straight = dir.join("straight");
    assert_eq!(state_step(&straight.join("pretrain")), Some(80));
    assert_eq!(state_step(&straight), Some(80));
    // The pretraining text is the training table's text column, no dev text.
    let text = std::fs::read_to_string(straight.join("pretrain.txt")).unwrap();
    assert_eq!(text.lines().count(), 400);
    assert!(text.starts_with("the film was great 0\nthe plot was bad 1\n"));
    assert!(!text.contains('\t'));
    let config = std::fs::read_to_string(straight.join("config.txt")).unwrap();
    assert!(
        config.contains("train.pretrain_fraction = 0.5\n"),
        "{config}"
    );
    assert!(config.contains("train.steps = 80\n"), "{config}");
    assert!(config.contains("train.mlm_weight = 0.5\n"), "{config}");
    let pre_config = std::fs::read_to_string(straight.join("pretrain/config.txt")).unwrap();
    assert!(
        pre_config.contains("train.mlm_weight = 0\n"),
        "{pre_config}"
    );
    // Both phases log: masked-byte bpb below, dev accuracy on top.
    let log = |p: &Path| std::fs::read_to_string(p.join("metrics.jsonl")).unwrap();
    assert!(log(&straight.join("pretrain")).contains("val_bpb"));
    assert!(log(&straight).contains("val_accuracy"));

    let killed = dir.join("killed");
    kill_at(&args("killed"), &dir, &killed.join("pretrain"), 10);
    assert!(state_step(&killed.join("pretrain")).unwrap() < 80);
    assert_eq!(state_step(&killed), None, "killed in the pretraining");
    // A new run there is refused: it holds a run to resume.
    let e = fails(&args("killed"), &dir);
    assert!(
        e.contains("pretraining phase") && e.contains("--resume"),
        "{e}"
    );
    let resume = ["train", "--resume", "killed", "--quiet"];
    kill_at(&resume, &dir, &killed, 10);
    assert_eq!(state_step(&killed.join("pretrain")), Some(80));
    assert!(
        state_step(&killed).unwrap() < 80,
        "killed in the fine-tuning"
    );
    ok(&resume, &dir);
    assert_eq!(state_step(&killed), Some(80));
    for f in ["pretrain/model.safetensors", "model.safetensors"] {
        same_weights(&straight.join(f), &killed.join(f));
    }

    ok(
        &["export", "straight", "--dtype", "f32", "-o", "c.kbm"],
        &dir,
    );
    let kbm = ok(&["eval", "c.kbm", "--dev", "dev.tsv"], &dir);
    let run = ok(&["eval", "straight", "--dev", "dev.tsv"], &dir);
    assert_eq!(kbm.split(" on ").next(), run.split(" on ").next());
    // It kept the masked-byte head of its pretraining.
    assert_eq!(ok(&["fill", "c.kbm", "the f_lm"], &dir).trim_end().len(), 8);

    let mut e = args("bad");
    e.extend(["--init", "straight"]);
    assert!(fails(&e, &dir).contains("--init"));
    let mut e = classify_args("bad", "10");
    e.extend(["--pretrain-fraction", "1"]);
    assert!(fails(&e, &dir).contains("[0, 1)"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--pretrain-fraction 0` is the classifier from scratch, as before the
/// recipe: no pretraining directory or text, a classification head alone,
/// all steps fine-tuning; without the flag the default fraction applies,
/// and `--init` turns the built-in pretraining off.
#[test]
fn pretrain_fraction_0_trains_from_scratch() {
    let dir = temp_dir("fraction0");
    write_tables(&dir);
    let mut scratch = classify_args("scratch", "20");
    scratch.extend(["--pretrain-fraction", "0"]);
    ok(&scratch, &dir);
    let run = dir.join("scratch");
    assert!(!run.join("pretrain").exists() && !run.join("pretrain.txt").exists());
    assert_eq!(state_step(&run), Some(20));
    let config = std::fs::read_to_string(run.join("config.txt")).unwrap();
    assert!(!config.contains("pretrain") && config.contains("train.steps = 20\n"));
    ok(
        &["export", "scratch", "--dtype", "f32", "-o", "s.kbm"],
        &dir,
    );
    // The joint masked-byte loss (on by default) trained a masked-byte
    // head, so the classifier fills; without it there is none.
    assert_eq!(ok(&["fill", "s.kbm", "the f_lm"], &dir).trim_end().len(), 8);
    let mut plain = classify_args("plain", "4");
    plain.extend(["--pretrain-fraction", "0", "--mlm-weight", "0"]);
    ok(&plain, &dir);
    ok(&["export", "plain", "--dtype", "f32", "-o", "p.kbm"], &dir);
    assert!(fails(&["fill", "p.kbm", "the f_lm"], &dir).contains("masked-byte"));
    // Twice the same: the from-scratch path is deterministic.
    ok(
        &{
            let mut a = classify_args("again", "20");
            a.extend(["--pretrain-fraction", "0"]);
            a
        },
        &dir,
    );
    same_weights(
        &run.join("model.safetensors"),
        &dir.join("again/model.safetensors"),
    );

    // Without the flag: the default fraction.
    ok(&classify_args("default", "20"), &dir);
    let pre = (20.0 * kilobyte_trainer::bigs::jobs::DEFAULT_PRETRAIN_FRACTION).round() as u64;
    if pre == 0 {
        assert!(!dir.join("default/pretrain").exists());
        same_weights(
            &run.join("model.safetensors"),
            &dir.join("default/model.safetensors"),
        );
    } else {
        assert_eq!(state_step(&dir.join("default/pretrain")), Some(pre));
    }
    assert_eq!(state_step(&dir.join("default")), Some(20 - pre));
    let mut init = classify_args("init", "20");
    init.extend(["--init", "scratch"]);
    ok(&init, &dir);
    assert!(!dir.join("init/pretrain").exists());
    assert_eq!(state_step(&dir.join("init")), Some(20));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A classifier without hyper-parameter flags gets the classification
/// recipe's defaults (batch 16, lr 1e-3, 300 warm-up updates, evaluation
/// every 500, no dropout, the joint masked-byte loss at weight 1), recorded
/// in its config.txt; a MEGABYTE run keeps the general ones and refuses
/// dropout.
#[test]
fn a_classifier_gets_the_recipe_defaults() {
    let dir = temp_dir("defaults");
    write_tables(&dir);
    let mut a = vec![
        "train",
        "--model",
        "bigs",
        "--objective",
        "classify",
        "--train",
        "train.tsv",
        "--dev",
        "dev.tsv",
        "--run",
        "c",
        "--steps",
        "3",
        "--quiet",
    ];
    a.extend(TINY);
    ok(&a, &dir);
    let config = std::fs::read_to_string(dir.join("c/config.txt")).unwrap();
    for line in [
        "train.batch = 16\n",
        "train.lr = 0.001\n",
        "train.warmup = 300\n",
        "train.eval_every = 500\n",
        "train.dropout = 0\n",
        "train.mlm_weight = 1\n",
        // The default n-gram logits for two classes: orders 2..=5
        // (bits 2-5), 8,192 rows each.
        "kilobyte.head_ngram_orders = 60\n",
        "kilobyte.head_ngram_buckets = 8192\n",
    ] {
        assert!(config.contains(line), "{line}: {config}");
    }
    // The flags set them, or turn them off; the rows are whole blocks.
    let with = |extra: &[&'static str], run: &'static str| {
        let mut b = a.clone();
        b[10] = run;
        b.extend(extra);
        b
    };
    ok(
        &with(
            &["--head-ngram-orders", "3,5", "--head-ngram-buckets", "64"],
            "h",
        ),
        &dir,
    );
    let config = std::fs::read_to_string(dir.join("h/config.txt")).unwrap();
    assert!(
        config.contains("kilobyte.head_ngram_orders = 40\n"),
        "{config}"
    );
    assert!(
        config.contains("kilobyte.head_ngram_buckets = 64\n"),
        "{config}"
    );
    ok(&with(&["--head-ngram-orders", "none"], "off"), &dir);
    let config = std::fs::read_to_string(dir.join("off/config.txt")).unwrap();
    assert!(
        config.contains("kilobyte.head_ngram_buckets = 0\n"),
        "{config}"
    );
    let e = fails(&with(&["--head-ngram-buckets", "40"], "bad"), &dir);
    assert!(e.contains("a multiple of 32"), "{e}");
    std::fs::write(dir.join("text.txt"), "the film was good. ".repeat(200)).unwrap();
    let megabyte = [
        "train",
        "--data",
        "text.txt",
        "--run",
        "m",
        "--steps",
        "2",
        "--seq",
        "32",
        "--dropout",
        "0.1",
    ];
    assert!(fails(&megabyte, &dir).contains("--dropout 0.1: MEGABYTE"));
    let mut m = megabyte[..7].to_vec();
    m.extend(["--head-ngram-buckets", "64"]);
    assert!(fails(&m, &dir).contains("only BiGS classifiers"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without --dev a classifier holds out a share of its training table and
/// keeps the weights that score best on it; with --holdout and --dev, the
/// dev table is scored once, on those weights, and resume keeps the split.
#[test]
fn a_classifier_can_choose_its_weights_on_held_out_rows() {
    let dir = temp_dir("holdout");
    write_tables(&dir);
    let without_dev = |run: &'static str| -> Vec<&'static str> {
        let mut a = classify_args(run, "40");
        let at = a.iter().position(|&x| x == "--dev").unwrap();
        a.drain(at..at + 2);
        a
    };
    let out = ok(&without_dev("nodev"), &dir);
    assert!(out.contains("validation accuracy"), "{out}");
    assert!(!out.contains("held-out rows"), "{out}");
    let config = std::fs::read_to_string(dir.join("nodev/config.txt")).unwrap();
    assert!(config.contains("train.holdout = 0.1"), "{config}");
    assert!(!config.contains("dev_file"), "{config}");
    // Held-out rows in place of --dev, and the dev table reported at the end.
    let mut both = classify_args("both", "40");
    both.extend(["--holdout", "0.25"]);
    let out = ok(&both, &dir);
    assert!(
        out.contains("dev.tsv: accuracy") && out.contains("on 60 examples"),
        "{out}"
    );
    let again = ok(&["eval", "both", "--dev", "dev.tsv"], &dir);
    let acc = |s: &str| s.split("accuracy ").nth(1).unwrap()[..6].to_string();
    assert_eq!(
        acc(out.lines().last().unwrap()),
        acc(&again),
        "{out}\n{again}"
    );
    // Killed and resumed, the run holds out the same rows: it ends bit for
    // bit where the straight run ends.
    let mut killed = classify_args("killed", "40");
    killed.extend(["--holdout", "0.25"]);
    kill_at(&killed, &dir, &dir.join("killed"), 12);
    ok(&["train", "--resume", "killed", "--quiet"], &dir);
    same_weights(
        &dir.join("both/model.safetensors"),
        &dir.join("killed/model.safetensors"),
    );
    for (bad, want) in [
        ("0", "--holdout 0: must be in (0, 0.5]"),
        ("0.9", "--holdout 0.9: must be in (0, 0.5]"),
    ] {
        let mut a = classify_args("bad", "10");
        a.extend(["--holdout", bad]);
        let e = fails(&a, &dir);
        assert!(e.contains(want), "{e}");
    }
    // A dev table that is only scored at the end is still checked first.
    std::fs::write(dir.join("unknown.tsv"), "sentence\tlabel\nthe film\t7\n").unwrap();
    let mut late: Vec<&str> = classify_args("late", "10")
        .into_iter()
        .map(|a| if a == "dev.tsv" { "unknown.tsv" } else { a })
        .collect();
    late.extend(["--holdout", "0.25"]);
    let e = fails(&late, &dir);
    assert!(e.contains("unknown.tsv: line 2: label"), "{e}");
    assert!(!dir.join("late/model.safetensors").exists());
    let mut mlm = vec![
        "train",
        "--model",
        "bigs",
        "--objective",
        "mlm",
        "--data",
        "corpus.txt",
    ];
    mlm.extend(["--run", "m", "--steps", "2", "--holdout", "0.1", "--quiet"]);
    mlm.extend(TINY);
    let e = fails(&mlm, &dir);
    assert!(e.contains("--holdout: only BiGS classifiers"), "{e}");
}
