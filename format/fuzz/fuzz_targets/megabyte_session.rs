//! Fuzzes what `generate` and `eval --data` do with a file: parse it,
//! resolve it as a MEGABYTE model, open a session and push one byte. No
//! input may panic the runtime, read out of bounds or run unbounded: the
//! arena is capped (an input asking for more is skipped, as the CLI
//! refuses it), and so is the input's size (`-max_len` in CI).
#![no_main]

use kilobyte_format::{AlignedBytes, Checksum, ModelFile};
use kilobyte_runtime::{ArenaSpec, Megabyte};
use libfuzzer_sys::fuzz_target;

/// Most arena bytes one input may use.
const MAX_ARENA: usize = 16 << 20;

fuzz_target!(|data: &[u8]| {
    // The pushed byte comes from the input, so the fuzzer varies it too,
    // while a whole valid file (a seed) still parses.
    let byte = data.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    let bytes = AlignedBytes::from_slice(data);
    // Skipping the checksum lets generated inputs reach the runtime.
    let Ok(file) = ModelFile::parse_with(&bytes, Checksum::Skip) else {
        return;
    };
    let Ok(model) = Megabyte::from_file(&file) else {
        return;
    };
    // The smallest window the session takes: two patches.
    let spec = ArenaSpec::new(2 * model.config.patch_size as usize);
    if spec.check(&model.config).is_some() {
        return;
    }
    let need = spec.arena_bytes(&model.config);
    if need > MAX_ARENA {
        return;
    }
    let mut arena = vec![0u8; need];
    let Ok(mut session) = model.session(&mut arena, spec) else {
        return;
    };
    let _ = session.logits().len();
    if session.push(byte).is_ok() {
        assert_eq!(session.logits().len(), 256);
    }
});
