//! What a training run will ask of the machine, known before anything is
//! allocated: an estimate of parameter, optimizer and activation memory for
//! a config and batch shape, checked against the machine's memory, and the
//! cap on worker threads. A flag that cannot fit is one line naming the
//! estimate, not an abort deep inside an allocation.

use anyhow::{bail, Result};
use kilobyte_format::ModelConfig;

/// More worker threads than this only costs time spawning them.
pub const MAX_THREADS: usize = 1024;

/// The estimate for one run: bytes for parameters with their gradients and
/// AdamW moments, and for the activations one micro-batch keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub params: u64,
    pub activations: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.params.saturating_add(self.activations)
    }
}

/// The memory a run of `config` needs for micro-batches of `batch` windows
/// of `seq` bytes, in f32. Deliberately generous per position (every
/// layer's saved inputs, attention scores and the 256-way logits), so a run
/// it passes does not die of memory; it is a bound to refuse absurd flags
/// with, not a measurement.
pub fn estimate(config: &ModelConfig, batch: usize, seq: usize) -> Estimate {
    let f = 4u64;
    let rows = (batch as u64).saturating_mul(seq as u64);
    // Values, gradients and two AdamW moments per parameter.
    let params = config.param_count().saturating_mul(4 * f);
    let per_row: u64 = match config {
        ModelConfig::Megabyte(c) => {
            let p = c.patch_size.max(1) as u64;
            let (dg, dl) = (c.d_global as u64, c.d_local as u64);
            let patches = (seq as u64).div_ceil(p);
            // A patch's global activations are P * d_global wide, shared by
            // its P bytes: d_global per byte per layer, 16 saved vectors.
            let global = c.layers_global as u64 * 16 * dg;
            let local = c.layers_local as u64 * (16 * dl + c.heads_local as u64 * p);
            let scores = c.layers_global as u64 * c.heads_global as u64 * patches / p;
            global + local + scores + 2 * 256
        }
        ModelConfig::Bigs(c) => {
            let (d, e) = (c.d_model as u64, c.d_expand as u64);
            // Forward and backward SSM paths, gates and their FFT buffers.
            c.layers as u64 * (16 * d + 8 * e) + 2 * 256
        }
    };
    Estimate {
        params,
        activations: rows.saturating_mul(per_row).saturating_mul(f),
    }
}

/// The machine's physical memory, if it can be read (Linux).
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses a run whose estimate exceeds `limit` bytes.
pub fn check(config: &ModelConfig, batch: usize, seq: usize, limit: u64) -> Result<()> {
    let e = estimate(config, batch, seq);
    if e.total() > limit {
        bail!(
            "this run needs about {} ({} for parameters, gradients and optimizer state, {} for the activations of --batch {batch} x --seq {seq}), more than the {} of memory here: use a smaller model, --batch or --seq",
            gib(e.total()),
            gib(e.params),
            gib(e.activations),
            gib(limit)
        );
    }
    Ok(())
}

/// [`check`] against this machine's memory (no limit where it is unknown).
pub fn check_here(config: &ModelConfig, batch: usize, seq: usize) -> Result<()> {
    match machine_memory() {
        Some(limit) => check(config, batch, seq, limit),
        None => Ok(()),
    }
}

/// Refuses a `--threads` of 0 or above [`MAX_THREADS`].
pub fn check_threads(n: usize) -> Result<()> {
    if n == 0 || n > MAX_THREADS {
        bail!("--threads {n}: must be between 1 and {MAX_THREADS}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilobyte_format::{BigsConfig, MegabyteConfig};

    #[test]
    fn estimates_grow_with_the_batch_and_refuse_what_cannot_fit() {
        let c = ModelConfig::Megabyte(MegabyteConfig::MICRO);
        let small = estimate(&c, 8, 256);
        assert_eq!(small.params, c.param_count() * 16);
        assert!(small.total() < 1 << 30, "{small:?}");
        let big = estimate(&c, 100_000_000, 512);
        assert!(big.activations > 1000 * small.activations);
        check(&c, 8, 256, 1 << 30).unwrap();
        let e = check(&c, 100_000_000, 512, 1 << 36)
            .unwrap_err()
            .to_string();
        assert!(e.contains("GiB") && e.contains("--batch 100000000"), "{e}");
        let b = ModelConfig::Bigs(BigsConfig::MICRO);
        assert!(estimate(&b, 1 << 40, 1 << 40).total() == u64::MAX);
        assert!(check_threads(0).is_err() && check_threads(100_000).is_err());
        check_threads(8).unwrap();
    }
}
