//! Fuzzes what `classify` and `eval --dev` do with a file: parse it,
//! resolve it as a BiGS model, size an encoder to a short text and
//! classify it. No input may panic the runtime, read out of bounds or run
//! unbounded: the arena is capped (larger asks are skipped, as the CLI
//! refuses them), and so is the input's size (`-max_len` in CI).
#![no_main]

use kilobyte_format::{AlignedBytes, Checksum, ModelFile};
use kilobyte_runtime::Bigs;
use libfuzzer_sys::fuzz_target;

/// Most arena bytes one input may use.
const MAX_ARENA: usize = 16 << 20;
/// The text: the input's last bytes (the file's own, so a whole valid
/// file, a seed, still parses), at most this many.
const TEXT: usize = 8;

fuzz_target!(|data: &[u8]| {
    let text = &data[data.len().saturating_sub(TEXT)..];
    if text.is_empty() {
        return;
    }
    let bytes = AlignedBytes::from_slice(data);
    let Ok(file) = ModelFile::parse_with(&bytes, Checksum::Skip) else {
        return;
    };
    let Ok(model) = Bigs::from_file(&file) else {
        return;
    };
    let len = text.len().min(model.config.max_seq as usize);
    let need = Bigs::arena_bytes(&model.config, len);
    if need > MAX_ARENA {
        return;
    }
    let mut arena = vec![0u8; need];
    let Ok(mut enc) = model.encoder(&mut arena, len) else {
        return;
    };
    if let Ok(c) = enc.classify(&text[..len]) {
        assert!(c.class < c.probs.len());
        assert!(c.probs.iter().all(|p| p.is_finite()));
    }
});
