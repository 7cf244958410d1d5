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

    // A text longer than T_max = 48 is cut to it, as training cuts it.
    assert_eq!(
        ok(&["classify", "c.kbm", &"x".repeat(49)], &dir),
        ok(&["classify", "c.kbm", &"x".repeat(48)], &dir)
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
