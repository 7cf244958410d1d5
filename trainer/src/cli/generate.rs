//! `kilobyte generate`: stream bytes from a MEGABYTE model through the
//! no_std runtime. Owns the prompt, stop sequences and the choice of
//! context; the model and its sampling are the runtime's, opened by
//! `super::open`.

use super::open::{with_kbm, Kbm};
use super::threads::Pool;
use crate::text::shown;
use anyhow::{anyhow, bail, Context, Result};
use kilobyte_runtime::sampling::{StopMatcher, StopSequences};
use kilobyte_runtime::{ArenaSpec, Sampler, SamplerConfig};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The MEGABYTE .kbm model.
    pub model: PathBuf,
    /// Prompt text (escapes: \n \t \\ \xHH).
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt bytes from a file ("-" for stdin).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Bytes to generate.
    #[arg(long, default_value_t = 256)]
    pub bytes: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely bytes (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this byte sequence (repeatable, up to 8; escapes as in --prompt).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Context window in bytes (default: the prompt plus --bytes, rounded up
    /// to whole patches, at most the model's T_max).
    #[arg(long)]
    pub context: Option<usize>,
    /// Keep the global key/value cache in int8 (a quarter of its memory).
    #[arg(long)]
    pub i8_cache: bool,
    /// Report prefill and generation speed on stderr.
    #[arg(long)]
    pub stats: bool,
    /// Threads for the larger matrix-vector products of generation (the
    /// bytes are the same for any count).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Decodes \n, \t, \r, \0, \\ and \xHH escapes.
pub fn unescape(s: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let esc = *b
            .get(i + 1)
            .ok_or_else(|| anyhow!("{}: a lone backslash ends the string", shown(s)))?;
        i += 2;
        out.push(match esc {
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'0' => 0,
            b'\\' => b'\\',
            b'x' => {
                let hex = s
                    .get(i..i + 2)
                    .ok_or_else(|| anyhow!("{}: \\x needs two hex digits", shown(s)))?;
                i += 2;
                u8::from_str_radix(hex, 16).map_err(|_| {
                    anyhow!(
                        "{}: bad hex escape {}",
                        shown(s),
                        shown(format!("\\x{hex}"))
                    )
                })?
            }
            other => bail!("{}: unknown escape {}", shown(s), shown([b'\\', other])),
        });
    }
    Ok(out)
}

pub fn run(args: Args) -> Result<()> {
    with_kbm(&args.model, |kbm| generate(&args, kbm))
}

fn generate(args: &Args, kbm: &Kbm<'_>) -> Result<()> {
    let model = kbm.megabyte()?;
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => unescape(p)?,
        (None, Some(f)) if f.as_os_str() == "-" => super::input::read_stdin()?,
        (None, Some(f)) => super::input::read_regular(f)?,
        (None, None) => Vec::new(),
    };
    let mut stops = StopSequences::new();
    for s in &args.stop {
        let seq = unescape(s)?;
        let seq = heapless::Vec::from_slice(&seq)
            .map_err(|_| anyhow!("--stop {}: longer than 32 bytes", shown(s)))?;
        stops
            .push(seq)
            .map_err(|_| anyhow!("--stop: at most 8 stop sequences"))?;
    }
    let sampler_config = SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let mut sampler = Sampler::new(sampler_config)?;
    // By default the window holds the prompt and every byte asked for (so it
    // never slides, and the output is the one a T_max window gives), and
    // costs no more than that.
    let p = model.config.patch_size as usize;
    let context = args.context.unwrap_or_else(|| {
        // At least the two patches a session needs.
        let wanted = prompt.len().saturating_add(args.bytes).max(2 * p);
        wanted
            .div_ceil(p)
            .saturating_mul(p)
            .min(model.config.max_seq as usize)
    });
    let spec = ArenaSpec::new(context);
    let spec = if args.i8_cache {
        spec.with_i8_cache()
    } else {
        spec
    };
    let pool = Pool::new(args.threads)?;
    let (produced, prefill_s, gen_s) =
        kbm.session(&model, spec, &format!("--context {context}"), |session| {
            session.set_parallel(&pool);
            let t0 = Instant::now();
            session.prefill(&prompt)?;
            let prefill_s = t0.elapsed().as_secs_f64();

            let mut out = std::io::stdout().lock();
            let mut matcher = StopMatcher::new(&stops);
            let t1 = Instant::now();
            let mut produced = 0;
            while produced < args.bytes {
                if session.logits().iter().any(|l| l.is_nan()) {
                    bail!(
                        "{}: the model's logits are NaN: its weights are not finite",
                        kbm.name()
                    );
                }
                let b = sampler.sample(session.logits());
                produced += 1;
                match out.write_all(&[b]).and_then(|()| out.flush()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    r => r.context("stdout")?,
                }
                if matcher.push(b) {
                    break;
                }
                if produced < args.bytes {
                    session.push(b)?;
                }
            }
            Ok((produced, prefill_s, t1.elapsed().as_secs_f64()))
        })?;
    if args.stats {
        eprintln!();
        eprintln!(
            "prompt {} bytes in {:.3} s ({:.0} bytes/s); generated {} bytes in {:.3} s ({:.1} bytes/s); arena {} bytes",
            prompt.len(),
            prefill_s,
            prompt.len() as f64 / prefill_s.max(1e-9),
            produced,
            gen_s,
            produced as f64 / gen_s.max(1e-9),
            spec.arena_bytes(&model.config)
        );
    }
    Ok(())
}
