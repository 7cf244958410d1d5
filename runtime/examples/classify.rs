//! Classification of each line of standard input by a BiGS model compiled
//! into the program, with a `static` arena sized at compile time:
//! one `label<TAB>probability` line out per line in, as `kilobyte classify`.
//!
//! `printf 'fn main() {}\nThe model reads bytes.\n' | cargo run -p kilobyte-runtime --example classify`
//!
//! The embedded model (models/code-or-prose.kbm, made by models/make.sh)
//! tells a line of Rust from a line of English prose; it was trained on this
//! repository's own files (97% on held-out lines).

use kilobyte_runtime::format::config::BIGS_HEAD_CLASSIFY;
use kilobyte_runtime::format::{include_model, BigsConfig, ModelFile};
use kilobyte_runtime::Bigs;
use std::io::{BufRead, Write};
use std::sync::Mutex;

static MODEL: &[u8] = include_model!("models/code-or-prose.kbm");

/// The embedded model's shape: d, e, layers, complex modes, SSM kernels,
/// T_max; two classes and only the classification head.
const CONFIG: BigsConfig = BigsConfig {
    n_classes: 2,
    heads: BIGS_HEAD_CLASSIFY,
    ..BigsConfig::preset(64, 128, 2, 32, 1, 128)
};
const MAX_LEN: usize = CONFIG.max_seq as usize;
const ARENA_BYTES: usize = Bigs::arena_bytes(&CONFIG, MAX_LEN);

// A Mutex makes the one mutable borrow of the static safe to take.
static ARENA: Mutex<[u8; ARENA_BYTES]> = Mutex::new([0; ARENA_BYTES]);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = ModelFile::parse(MODEL)?;
    let model = Bigs::from_file(&file)?;
    if model.config != CONFIG {
        return Err(
            "the embedded model's config is not CONFIG: update one to match the other".into(),
        );
    }
    let mut arena = ARENA.lock().map_err(|_| "arena lock poisoned")?;
    let mut encoder = model.encoder(&mut arena[..], MAX_LEN)?;
    let mut out = std::io::stdout().lock();
    for (i, line) in std::io::stdin().lock().split(b'\n').enumerate() {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        // Longer lines than the model's T_max keep their first MAX_LEN bytes.
        let text = &line[..line.len().min(MAX_LEN)];
        if text.is_empty() {
            continue;
        }
        let c = encoder
            .classify(text)
            .map_err(|e| format!("stdin line {}: {e}", i + 1))?;
        let label = model.label(c.class).unwrap_or("?");
        writeln!(out, "{label}\t{:.4}", c.probs[c.class])?;
    }
    Ok(())
}
