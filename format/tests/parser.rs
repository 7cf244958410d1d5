//! The parser against damaged input: every bit flip and every truncation of
//! a valid file is rejected with an error (never a panic), and the writer's
//! output always parses back to the same tensors.
#![cfg(feature = "std")]

use kilobyte_format::config::{BIGS_HEAD_CLASSIFY, BIGS_HEAD_MLM};
use kilobyte_format::file::{Checksum, ALIGN};
use kilobyte_format::schema::Role;
use kilobyte_format::*;

/// A tiny MEGABYTE config so the exhaustive tests stay fast.
fn tiny_megabyte() -> ModelConfig {
    ModelConfig::Megabyte(MegabyteConfig::preset(2, 16, 1, 2, 32, 1, 2, 8))
}

/// The smallest MEGABYTE there is (widths of 1): exhaustive and Miri tests.
fn smallest() -> ModelConfig {
    ModelConfig::Megabyte(MegabyteConfig::preset(1, 1, 1, 1, 1, 1, 1, 1))
}

fn tiny_bigs() -> ModelConfig {
    let mut c = BigsConfig::preset(32, 64, 1, 4, 2, 16);
    c.heads = BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY;
    c.n_classes = 3;
    ModelConfig::Bigs(c)
}

/// Builds a valid file; matrices in `dtype` (vectors in f32).
fn build(config: ModelConfig, dtype: DType) -> Vec<u8> {
    let mut w = KbmWriter::new(config);
    let mut seed = 1u32;
    for_each_tensor::<FormatError>(&config, |spec| {
        let Some(shape) = spec.shape else {
            return w.add_labels(&["neg", "neutral", "pos"]);
        };
        let n = shape.numel().unwrap() as usize;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let dt = spec.role.storage_dtype(shape, dtype, dtype);
        w.add_f32(&spec.name, dt, shape.dims(), &values)
    })
    .unwrap();
    w.to_bytes().unwrap()
}

fn aligned(bytes: &[u8]) -> AlignedBytes {
    AlignedBytes::from_slice(bytes)
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri; the parser paths are covered by the tests Miri runs"
)]
fn writer_output_parses_with_aligned_tensors() {
    for (config, dtype) in [
        (tiny_megabyte(), DType::F32),
        (tiny_megabyte(), DType::Q8),
        (tiny_megabyte(), DType::Q4),
        (tiny_bigs(), DType::F16),
        (tiny_bigs(), DType::BF16),
    ] {
        let bytes = aligned(&build(config, dtype));
        let f = ModelFile::parse(&bytes).unwrap();
        assert_eq!(*f.config(), config);
        assert!(f.checksum_verified());
        let mut n = 0;
        for t in f.tensors() {
            n += 1;
            assert_eq!(t.offset % ALIGN as u64, 0);
            assert_eq!(t.data.as_ptr() as usize % ALIGN, 0, "{}", t.name);
            if t.dtype == DType::F32 {
                assert_eq!(t.as_f32().unwrap().len(), t.numel());
            }
            assert_eq!(f.tensor(t.name).unwrap().offset, t.offset);
        }
        assert_eq!(n, f.tensor_count());
        if let ModelConfig::Bigs(_) = config {
            let labels: Vec<&str> = f.labels().unwrap().collect();
            assert_eq!(labels, ["neg", "neutral", "pos"]);
        }
    }
}

/// Checks one damaged copy: rejected when the checksum is verified; with the
/// checksum skipped it may parse (flips in weights are undetectable without
/// it), and then everything in it must be readable without a panic.
fn check_flip(bad: &[u8], bit: usize) {
    assert!(ModelFile::parse(bad).is_err(), "flip of bit {bit} accepted");
    if let Ok(f) = ModelFile::parse_with(bad, Checksum::Skip) {
        for t in f.tensors() {
            let mut out = vec![0f32; t.numel()];
            if t.dtype.is_numeric() {
                t.decode_into(&mut out).unwrap();
            }
        }
    }
}

#[test]
fn every_bit_flip_is_rejected_without_panic() {
    // The smallest model, so that flipping every one of its bits stays fast.
    let dtypes: &[DType] = if cfg!(miri) {
        &[DType::F32]
    } else {
        &[DType::F32, DType::F16]
    };
    for &dtype in dtypes {
        let config = smallest();
        let good = build(config, dtype);
        let step = if cfg!(miri) { 3989 } else { 1 };
        let mut bad = good.clone();
        for bit in (0..good.len() * 8).step_by(step) {
            bad[bit / 8] ^= 1 << (bit % 8);
            check_flip(&bad, bit);
            bad[bit / 8] ^= 1 << (bit % 8);
        }
        assert_eq!(bad, good);
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri; the parser paths are covered by the tests Miri runs"
)]
fn bit_flips_in_a_quantised_file_are_rejected() {
    // Every bit of the header and directory; in the data one bit per byte,
    // rotating through the bit positions (CRC-32 catches any single-bit
    // error by construction, so the data flips all take the same path).
    let good = build(tiny_megabyte(), DType::Q8);
    let data_offset = ModelFile::parse(&good)
        .unwrap()
        .tensors()
        .next()
        .unwrap()
        .offset as usize;
    let step = if cfg!(miri) { 97 } else { 1 };
    let bits =
        (0..data_offset * 8).chain((data_offset..good.len()).map(|byte| byte * 8 + byte % 8));
    let mut bad = good.clone();
    for bit in bits.step_by(step) {
        bad[bit / 8] ^= 1 << (bit % 8);
        check_flip(&bad, bit);
        bad[bit / 8] ^= 1 << (bit % 8);
    }
}

#[test]
fn every_truncation_and_extension_is_rejected() {
    let good = build(tiny_bigs(), DType::Q4);
    let step = if cfg!(miri) { 2999 } else { 1 };
    for len in (0..good.len()).step_by(step) {
        let err = ModelFile::parse(&good[..len]).unwrap_err();
        assert!(
            matches!(err, FormatError::Truncated { .. }),
            "len {len}: {err}"
        );
        assert!(ModelFile::parse_with(&good[..len], Checksum::Skip).is_err());
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        ModelFile::parse(&longer),
        Err(FormatError::TrailingBytes { .. })
    ));
}

/// Rewrites a header or directory field and fixes the checksum, so that
/// the structural check (not the CRC) must catch the damage.
fn patch(good: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    let end = b.len() - 4;
    let crc = kilobyte_format::crc::crc32(&b[..end]);
    b[end..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn structural_errors_are_named() {
    let good = build(smallest(), DType::F32);
    let f = ModelFile::parse(&good).unwrap();
    let first = f.tensors().next().unwrap();
    let second = f.tensors().nth(1).unwrap();
    let entry = |i: usize| 128 + 128 * i;
    // Entry 1 renamed to entry 0's name: length field plus zero-padded name.
    let mut dup_name = good[entry(0)..entry(0) + 2].to_vec();
    dup_name.extend_from_slice(&good[entry(1) + 2..entry(1) + 40]);
    dup_name.extend_from_slice(&good[entry(0) + 40..entry(0) + 128]);

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (patch(&good, 0, b"KILOBYTF"), "bad magic"),
        (
            patch(&good, 8, &2u16.to_le_bytes()),
            "unsupported .kbm version 2",
        ),
        (
            patch(&good, 12, &9u16.to_le_bytes()),
            "unknown model family code 9",
        ),
        (
            patch(&good, 64, &3u32.to_le_bytes()),
            "must be a multiple of patch_size",
        ),
        // Words 9..13 are MEGABYTE's n-gram configs; 13.. are reserved.
        (
            patch(&good, 64 + 4 * 13, &1u32.to_le_bytes()),
            "reserved header bytes at offset 116",
        ),
        (
            patch(&good, 64 + 4 * 12, &1u32.to_le_bytes()),
            "local_ngram_orders = 0 must be 0 exactly when the matching buckets word is 0",
        ),
        // More layers than the runtime holds (word 2: layers_global).
        (
            patch(&good, 64 + 4 * 2, &25u32.to_le_bytes()),
            "layers_global = 25 is more than the runtime runs: at most 24",
        ),
        // A limit reads as one: "at most", not "expected".
        (
            patch(&good, 16, &70_000u32.to_le_bytes()),
            "bad header field tensor_count: 70000 (at most 65536)",
        ),
        (
            patch(&good, 32, &1u64.to_le_bytes()),
            "bad header field file_bytes: 1 (at least",
        ),
        (patch(&good, entry(0) + 2, &[9]), "unknown dtype code 9"),
        (patch(&good, entry(0) + 3, &[0]), "rank 0"),
        (
            patch(&good, entry(1) + 24, &(second.offset + 64).to_le_bytes()),
            "expected",
        ),
        (
            patch(&good, entry(1) + 24, &(second.offset - 64).to_le_bytes()),
            "overlaps",
        ),
        (
            patch(&good, entry(1) + 24, &(second.offset + 4).to_le_bytes()),
            "not 64-byte aligned",
        ),
        (
            patch(
                &good,
                entry(0) + 32,
                &(first.data.len() as u64 + 4).to_le_bytes(),
            ),
            "does not match dtype",
        ),
        (
            patch(&good, entry(0) + 24, &u64::MAX.to_le_bytes()),
            "out of bounds",
        ),
        (patch(&good, entry(0) + 40, b"zzz"), "out of order"),
        (patch(&good, entry(1), &dup_name), "appears twice"),
        (patch(&good, entry(0) + 4, &7u32.to_le_bytes()), "shape"),
    ];
    for (bytes, needle) in cases {
        let msg = ModelFile::parse(&bytes).unwrap_err().to_string();
        assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    let mut flipped = good.clone();
    let last = flipped.len() - 10;
    flipped[last] ^= 0x40;
    assert!(matches!(
        ModelFile::parse(&flipped),
        Err(FormatError::ChecksumMismatch { .. })
    ));

    // Padding after a tensor whose length is not a multiple of 64 (the
    // labels). Building a BiGS file is too slow under Miri.
    if cfg!(miri) {
        return;
    }
    let bigs = build(tiny_bigs(), DType::F32);
    let f = ModelFile::parse(&bigs).unwrap();
    let t = f.get("meta.labels").unwrap();
    let end = (t.offset + t.data.len() as u64) as usize;
    assert_ne!(end % 64, 0);
    let msg = ModelFile::parse(&patch(&bigs, end, &[1]))
        .unwrap_err()
        .to_string();
    assert_eq!(msg, format!("padding byte at offset {end} is not zero"));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri; the parser paths are covered by the tests Miri runs"
)]
fn schema_violations_are_named() {
    let config = tiny_megabyte();
    // Missing tensor.
    let mut w = KbmWriter::new(config);
    w.add_f32("global.pad", DType::F32, &[32], &[0.0; 32])
        .unwrap();
    let err = w.to_bytes().unwrap_err();
    assert!(matches!(err, FormatError::MissingTensor { .. }), "{err}");

    // Wrong dtype for the role and an unexpected extra tensor.
    let bytes = build(config, DType::F32);
    let f = ModelFile::parse(&bytes).unwrap();
    let rebuild = |edit: &dyn Fn(&mut KbmWriter, &Tensor<'_>) -> bool| {
        let mut w = KbmWriter::new(config);
        for t in f.tensors() {
            if !edit(&mut w, &t) {
                w.add_raw(t.name, t.dtype, t.shape.dims(), t.data.to_vec())
                    .unwrap();
            }
        }
        w.to_bytes()
    };
    let err = rebuild(&|w, t| {
        if t.name == "global.ln_f.weight" {
            w.add_f32(t.name, DType::Q8, &[32], &[1.0; 32]).unwrap();
            return true;
        }
        false
    })
    .unwrap_err();
    assert!(matches!(err, FormatError::WrongDtype { .. }), "{err}");
    let err = rebuild(&|w, t| {
        if t.name == "global.pad" {
            w.add_f32("global.zzz", DType::F32, &[4], &[1.0; 4])
                .unwrap();
        }
        false
    })
    .unwrap_err();
    assert!(err.to_string().contains("global.zzz"), "{err}");
    assert_eq!(f.role("local.tok_emb"), Some(Role::TokenEmbedding));
}

#[test]
fn unaligned_memory_is_an_error_not_ub() {
    let bytes = build(smallest(), DType::F32);
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let a = aligned(&shifted);
    let f = ModelFile::parse(&a[1..]).unwrap();
    let t = f.get("global.pad").unwrap();
    assert!(matches!(
        t.as_f32(),
        Err(FormatError::UnalignedMemory { .. })
    ));
    assert!(matches!(t.as_f16(), Err(FormatError::DtypeMismatch { .. })));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri; the parser paths are covered by the tests Miri runs"
)]
fn safetensors_round_trip_keeps_names_shapes_and_values() {
    use kilobyte_format::st::{from_safetensors, to_safetensors, ExportFloats};
    let bytes = aligned(&build(tiny_bigs(), DType::Q8));
    let f = ModelFile::parse(&bytes).unwrap();
    let st = to_safetensors(&f, ExportFloats::F32).unwrap();
    // Back to .kbm with the recorded dtypes: the quantised blocks are
    // re-encoded from their own dequantised values, which is lossless.
    let w = from_safetensors(&st, |c| c.original.unwrap()).unwrap();
    let again = w.to_bytes().unwrap();
    assert_eq!(
        again,
        bytes.to_vec(),
        "round trip must reproduce the file byte for byte"
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri; the parser paths are covered by the tests Miri runs"
)]
fn atomic_write_replaces_the_file() {
    let dir = std::env::temp_dir().join(format!("kbm-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.kbm");
    std::fs::write(&path, b"old").unwrap();
    let w = {
        let bytes = build(tiny_megabyte(), DType::Q4);
        let f = ModelFile::parse(&bytes).unwrap();
        let mut w = KbmWriter::new(*f.config());
        for t in f.tensors() {
            w.add_raw(t.name, t.dtype, t.shape.dims(), t.data.to_vec())
                .unwrap();
        }
        w
    };
    w.write(&path).unwrap();
    let back = AlignedBytes::read(&path).unwrap();
    ModelFile::parse(&back).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes small valid files as a seed corpus for the fuzzer
/// (`KILOBYTE_FUZZ_SEEDS=dir cargo test ... -- --ignored write_fuzz_seeds`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("KILOBYTE_FUZZ_SEEDS") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mut bigs = BigsConfig::preset(32, 32, 1, 1, 1, 1);
    bigs.heads = BIGS_HEAD_CLASSIFY;
    bigs.n_classes = 3;
    let seeds = [
        ("megabyte-f32", build(smallest(), DType::F32)),
        ("megabyte-q8", build(tiny_megabyte(), DType::Q8)),
        ("bigs-q4", build(ModelConfig::Bigs(bigs), DType::Q4)),
    ];
    for (name, bytes) in seeds {
        std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
    }
}

/// Label names reach terminals as they are: the writer and the parser both
/// refuse one with a control character.
#[test]
fn labels_with_control_characters_are_refused() {
    let c = tiny_bigs();
    for bad in ["\x1b[2Jpos", "a\tb", "cr\r", "nul\0", "del\x7f", "c1\u{9b}"] {
        let mut w = KbmWriter::new(c);
        assert_eq!(
            w.add_labels(&["neg", bad, "pos"]),
            Err(FormatError::LabelControl { index: 1 }),
            "{bad:?}"
        );
    }
    // A file whose label bytes were changed after writing, CRC resealed.
    let mut bytes = build(c, DType::F32);
    let at = {
        let a = aligned(&bytes);
        let file = ModelFile::parse(&a).unwrap();
        file.get(schema::LABELS_TENSOR).unwrap().offset as usize
    };
    assert_eq!(&bytes[at..at + 4], b"neg\n");
    bytes[at + 1] = 0x1b;
    let end = bytes.len() - 4;
    let crc = crc::crc32(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    let err = ModelFile::parse(&aligned(&bytes)).unwrap_err();
    assert_eq!(err, FormatError::LabelControl { index: 0 });
    assert!(err.to_string().contains("control character"), "{err}");
}
