//! Text generation in a program that needs no file and no allocator for the
//! model: the `.kbm` is compiled in with `include_model!` and the working
//! memory is a `static` whose size the runtime's `const fn` computes from
//! the model's config at compile time, as firmware would do it.
//!
//! `cargo run -p kilobyte-runtime --example generate -- [PROMPT] [BYTES] [SEED]`
//!
//! The embedded model (models/tiny-megabyte.kbm, made by models/make.sh) is a
//! small MEGABYTE trained for 90 s on this repository's text: expect
//! text-shaped babble, not sense. To use another model, change the path and
//! `CONFIG` to its values (`kilobyte inspect` prints them).

use kilobyte_runtime::format::{include_model, MegabyteConfig, ModelFile};
use kilobyte_runtime::{ArenaSpec, Megabyte, Sampler, SamplerConfig};
use std::io::Write;
use std::sync::Mutex;

static MODEL: &[u8] = include_model!("models/tiny-megabyte.kbm");

/// The embedded model's shape: P, D_G, global layers and heads, D_L, local
/// layers and heads, T_max.
const CONFIG: MegabyteConfig = MegabyteConfig::preset(4, 16, 2, 2, 32, 2, 2, 256);
const SPEC: ArenaSpec = ArenaSpec::new(CONFIG.max_seq as usize);
const ARENA_BYTES: usize = SPEC.arena_bytes(&CONFIG);

// A Mutex makes the one mutable borrow of the static safe to take.
static ARENA: Mutex<[u8; ARENA_BYTES]> = Mutex::new([0; ARENA_BYTES]);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let prompt = args.next().unwrap_or_else(|| "The runtime ".into());
    let bytes: usize = args.next().map_or(Ok(200), |s| s.parse())?;
    let seed: u64 = args.next().map_or(Ok(0), |s| s.parse())?;

    let file = ModelFile::parse(MODEL)?;
    let model = Megabyte::from_file(&file)?;
    if model.config != CONFIG {
        return Err(
            "the embedded model's config is not CONFIG: update one to match the other".into(),
        );
    }
    let mut arena = ARENA.lock().map_err(|_| "arena lock poisoned")?;
    let mut session = model.session(&mut arena[..], SPEC)?;
    let mut sampler = Sampler::new(SamplerConfig {
        seed,
        ..SamplerConfig::default()
    })?;
    eprintln!(
        "model: {} bytes embedded; arena: {ARENA_BYTES} bytes, static",
        MODEL.len()
    );

    session.prefill(prompt.as_bytes())?;
    let mut out = std::io::stdout().lock();
    out.write_all(prompt.as_bytes())?;
    for _ in 0..bytes {
        let byte = sampler.sample(session.logits());
        // Bytes are streamed as produced; a byte-level model may split a
        // UTF-8 character, which the terminal reassembles.
        out.write_all(&[byte])?;
        out.flush()?;
        session.push(byte)?;
    }
    writeln!(out)?;
    Ok(())
}
