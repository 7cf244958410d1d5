use super::*;
use std::path::Path;

use crate::testutil::TempDir;

/// Pseudo-random bytes with no short period, so a misplaced read shows up.
fn counting(n: usize) -> Vec<u8> {
    (0..n as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect()
}

#[test]
fn corpus_concatenates_in_sorted_path_order() {
    let t = TempDir::new("order");
    t.write("tree/b.txt", b"BBB");
    t.write("tree/a/2.txt", b"22");
    t.write("tree/a/1.txt", b"1");
    t.write("tree/a/10.txt", b"ten");
    t.write("tree/empty.txt", b"");
    t.write("tree/.hidden", b"never");
    t.write("tree/.git/objects", b"never");
    let extra = t.write("extra.txt", b"XY");
    #[cfg(unix)]
    let _socket = std::os::unix::net::UnixListener::bind(t.0.join("tree/sock")).unwrap();

    let c = Corpus::open(&[t.0.join("tree"), extra]).unwrap();
    // Byte order of names: "1.txt" < "10.txt" < "2.txt".
    assert_eq!(c.to_vec(), b"1ten22BBBXY");
    let names: Vec<_> = c
        .files()
        .iter()
        .map(|f| {
            f.path
                .strip_prefix(&t.0)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "tree/a/1.txt",
            "tree/a/10.txt",
            "tree/a/2.txt",
            "tree/b.txt",
            "extra.txt"
        ]
    );
    assert_eq!((c.files()[3].start, c.files()[3].len), (6, 3));
    #[cfg(unix)]
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("sock") && w.contains("not a regular file")),
        "{:?}",
        c.warnings()
    );

    // Reads that cross file boundaries.
    let mut buf = [0u8; 5];
    c.read_at(3, &mut buf);
    assert_eq!(&buf, b"n22BB");
}

#[test]
fn corpus_errors_name_the_file_or_limit() {
    let t = TempDir::new("errors");
    let missing = t.0.join("nope.txt");
    let e = Corpus::open(&[&missing]).unwrap_err();
    assert!(format!("{e:#}").contains("nope.txt"), "{e:#}");

    t.write("empty/a.txt", b"");
    let e = Corpus::open(&[t.0.join("empty")]).unwrap_err().to_string();
    assert!(e.contains("no training data") && e.contains("empty"), "{e}");

    let small = t.write("small.txt", &counting(10));
    let split = Split::by_fraction(Corpus::open(&[&small]).unwrap(), 0.2).unwrap();
    let e = Sampler::new(split.train.clone(), 9, 1, 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("9 bytes") && e.contains("training data (8 bytes") && e.contains("small.txt"),
        "{e}"
    );
    let e = ValBatches::new(split.val, 3, 1).unwrap_err().to_string();
    assert!(e.contains("validation data (2 bytes"), "{e}");

    let e = Split::by_fraction(Corpus::from_bytes("tiny", vec![1; 5]), 0.1).unwrap_err();
    assert!(e.to_string().contains("validation split is empty"), "{e}");
    assert!(Split::by_fraction(Corpus::from_bytes("x", vec![1; 5]), 1.0).is_err());
    assert!(Split::separate(
        Corpus::from_bytes("a", vec![1]),
        Corpus::from_bytes("b", vec![])
    )
    .is_err());
}

#[test]
fn split_boundaries() {
    let bytes = counting(1000);
    let split =
        Split::by_fraction(Corpus::from_bytes("c", bytes.clone()), DEFAULT_VAL_FRACTION).unwrap();
    assert_eq!((split.train.start(), split.train.len()), (0, 900));
    assert_eq!((split.val.start(), split.val.len()), (900, 100));
    let mut v = vec![0; 100];
    split.val.read_at(0, &mut v);
    assert_eq!(v, bytes[900..]);

    // Rounded down: 2.5 validation bytes become 2.
    let split = Split::by_fraction(Corpus::from_bytes("c", counting(10)), 0.25).unwrap();
    assert_eq!((split.train.len(), split.val.len()), (8, 2));

    let split = Split::by_fraction(Corpus::from_bytes("c", counting(10)), 0.0).unwrap();
    assert_eq!((split.train.len(), split.val.len()), (10, 0));

    let split = Split::separate(
        Corpus::from_bytes("t", b"train".to_vec()),
        Corpus::from_bytes("v", b"val".to_vec()),
    )
    .unwrap();
    assert_eq!((split.train.len(), split.val.len()), (5, 3));
}

#[test]
fn sampling_is_deterministic_and_windows_match_the_corpus() {
    let t = TempDir::new("sample");
    // Several files, so windows straddle boundaries.
    let all = counting(3000);
    let paths: Vec<_> = all
        .chunks(700)
        .enumerate()
        .map(|(i, c)| t.write(&format!("f{i}.bin"), c))
        .collect();
    let split = Split::by_fraction(Corpus::open(&paths).unwrap(), 0.1).unwrap();
    let mut a = Sampler::new(split.train.clone(), 65, 4, 11).unwrap();
    let mut b = Sampler::new(split.train.clone(), 65, 4, 11).unwrap();
    let mut c = Sampler::new(split.train.clone(), 65, 4, 12).unwrap();
    let mut differs = false;
    for _ in 0..50 {
        let x = a.next_batch();
        assert_eq!(x, b.next_batch());
        differs |= x != c.next_batch();
        assert_eq!(x.rows(), 4);
        for r in 0..x.rows() {
            let o = x.offsets[r] as usize;
            assert!(o + 65 <= 2700, "window {o} leaves the training part");
            assert_eq!(x.row(r), &all[o..o + 65]);
            assert_eq!(x.inputs(r), &all[o..o + 64]);
            assert_eq!(x.targets(r), &all[o + 1..o + 65]);
        }
    }
    assert!(differs);
    assert_eq!(a.step(), 50);
}

#[test]
fn a_restored_sampler_draws_the_same_batches() {
    let split = Split::by_fraction(Corpus::from_bytes("c", counting(5000)), 0.1).unwrap();
    let mut s = Sampler::new(split.train.clone(), 33, 3, 5).unwrap();
    for _ in 0..7 {
        s.next_batch();
    }
    let saved = s.state();
    assert_eq!(saved.step, 7);
    let expected: Vec<Batch> = (0..10).map(|_| s.next_batch()).collect();

    // A fresh sampler, seeded differently, continues exactly from the state.
    let mut resumed = Sampler::new(split.train, 33, 3, 999).unwrap();
    resumed.restore(saved);
    let mut reused = resumed.next_batch();
    assert_eq!(reused, expected[0]);
    for e in &expected[1..] {
        resumed.next_into(&mut reused);
        assert_eq!(&reused, e);
    }
    assert_eq!(resumed.state(), s.state());
}

#[test]
fn validation_windows_are_consecutive_and_capped_evenly() {
    let bytes = counting(1000);
    let split = Split::by_fraction(Corpus::from_bytes("c", bytes.clone()), 0.1).unwrap();
    // Causal convention: window T+1 = 11, stride T = 10: the targets of
    // successive windows tile the validation bytes after the first.
    let it = ValBatches::new(split.val.clone(), 11, 4)
        .unwrap()
        .stride(10);
    assert_eq!(it.windows(), 9);
    let batches: Vec<Batch> = it.collect();
    assert_eq!(
        batches.iter().map(Batch::rows).collect::<Vec<_>>(),
        [4, 4, 1]
    );
    let targets: Vec<u8> = batches
        .iter()
        .flat_map(|b| (0..b.rows()).flat_map(move |r| b.targets(r).to_vec()))
        .collect();
    assert_eq!(targets, bytes[901..991]);

    // Non-overlapping windows by default; a cap spreads them out.
    let it = ValBatches::new(split.val.clone(), 10, 100).unwrap();
    assert_eq!(it.windows(), 10);
    let capped: Vec<u64> = ValBatches::new(split.val.clone(), 10, 2)
        .unwrap()
        .max_windows(Some(3))
        .flat_map(|b| b.offsets)
        .collect();
    assert_eq!(capped, [0, 30, 60]);
    let b = ValBatches::new(split.val, 10, 100).unwrap().next().unwrap();
    assert_eq!(b.row(9), &bytes[990..1000]);
}

#[test]
fn builtin_corpus_is_text_about_kilobyte() {
    let c = builtin_corpus();
    assert!(c.len() > 100_000, "{}", c.len());
    assert!(std::str::from_utf8(&c).is_ok());
    let text = String::from_utf8_lossy(&c);
    assert!(text.starts_with("==> README.md <==\n# kilobyte"));
    assert!(text.contains("==> format/SPEC.md <==") && text.contains("MEGABYTE"));
    assert!(builtin_corpus_files()
        .iter()
        .all(|(p, t)| !t.is_empty() && Path::new(p).extension().is_some()));
    let split = Split::by_fraction(
        Corpus::from_bytes("built-in corpus", c),
        DEFAULT_VAL_FRACTION,
    )
    .unwrap();
    assert!(Sampler::new(split.train, 513, 8, 0).is_ok());
    assert!(ValBatches::new(split.val, 513, 8).is_ok());
}
