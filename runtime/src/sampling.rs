//! Choosing the next byte from logits: greedy, temperature, top-k, top-p,
//! with a seeded PRNG so a seed gives the same bytes on every run of the
//! same build; and stop sequences.

use crate::error::RuntimeError;
use crate::rng::Rng;

/// Sampling settings. `temperature == 0` is greedy decoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep only the k most likely bytes (0: all 256).
    pub top_k: usize,
    /// Keep the smallest set of most likely bytes whose probability reaches
    /// p (1.0: all).
    pub top_p: f32,
    pub seed: u64,
}

impl SamplerConfig {
    pub const GREEDY: Self = SamplerConfig {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.95,
            seed: 0,
        }
    }
}

pub struct Sampler {
    config: SamplerConfig,
    rng: Rng,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Result<Self, RuntimeError> {
        if !(config.temperature.is_finite() && config.temperature >= 0.0) {
            return Err(RuntimeError::BadSampler {
                reason: "temperature must be a finite number >= 0",
            });
        }
        if !(config.top_p > 0.0 && config.top_p <= 1.0) {
            return Err(RuntimeError::BadSampler {
                reason: "top_p must be in (0, 1]",
            });
        }
        if config.top_k > 256 {
            return Err(RuntimeError::BadSampler {
                reason: "top_k must be at most 256",
            });
        }
        Ok(Sampler {
            config,
            rng: Rng::new(config.seed),
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Picks a byte from 256 logits. Non-finite logits are never chosen
    /// (unless all are, in which case byte 0 is returned).
    pub fn sample(&mut self, logits: &[f32]) -> u8 {
        let n = logits.len().min(256);
        if self.config.temperature == 0.0 {
            return argmax(&logits[..n]);
        }
        // (probability, byte) sorted by probability, most likely first.
        let mut items = [(0f32, 0u8); 256];
        let max = logits[..n]
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        let inv_t = 1.0 / self.config.temperature;
        for (i, item) in items[..n].iter_mut().enumerate() {
            let v = logits[i];
            let e = if v.is_finite() {
                libm::expf((v - max) * inv_t)
            } else {
                0.0
            };
            *item = (e, i as u8);
        }
        let items = &mut items[..n];
        // Ties keep byte order so the choice depends only on the logits.
        items.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut keep = if self.config.top_k == 0 {
            n
        } else {
            self.config.top_k.min(n)
        };
        let kept_total: f32 = items[..keep].iter().map(|x| x.0).sum();
        if self.config.top_p < 1.0 {
            let target = self.config.top_p * kept_total;
            let mut acc = 0.0;
            for (i, item) in items[..keep].iter().enumerate() {
                acc += item.0;
                if acc >= target {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept_total: f32 = items[..keep].iter().map(|x| x.0).sum();
        let mut r = self.rng.next_f32() * kept_total;
        for item in &items[..keep] {
            if r < item.0 {
                return item.1;
            }
            r -= item.0;
        }
        items[keep - 1].1
    }
}

/// Index of the largest finite logit (the lowest index on ties).
pub fn argmax(logits: &[f32]) -> u8 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u8
}

/// Up to 8 stop sequences of up to 32 bytes each.
pub type StopSequences = heapless::Vec<heapless::Vec<u8, 32>, 8>;

/// Tracks the last bytes generated to detect a stop sequence.
pub struct StopMatcher<'s> {
    stops: &'s [heapless::Vec<u8, 32>],
    tail: [u8; 32],
    filled: usize,
}

impl<'s> StopMatcher<'s> {
    pub fn new(stops: &'s [heapless::Vec<u8, 32>]) -> Self {
        StopMatcher {
            stops,
            tail: [0; 32],
            filled: 0,
        }
    }

    /// Records a byte; true when the bytes so far end with a stop sequence.
    pub fn push(&mut self, byte: u8) -> bool {
        self.tail.copy_within(1.., 0);
        self.tail[31] = byte;
        self.filled = (self.filled + 1).min(32);
        let seen = &self.tail[32 - self.filled..];
        self.stops
            .iter()
            .any(|s| !s.is_empty() && seen.ends_with(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> [f32; 256] {
        core::array::from_fn(|i| ((i * 37) % 101) as f32 / 10.0)
    }

    #[test]
    fn greedy_picks_the_argmax() {
        let l = logits();
        let mut s = Sampler::new(SamplerConfig::GREEDY).unwrap();
        let best = (0..256)
            .max_by(|&a, &b| l[a].total_cmp(&l[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(s.sample(&l) as usize, best);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let l = logits();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
            seed: 9,
        };
        let mut a = Sampler::new(cfg).unwrap();
        let mut b = Sampler::new(cfg).unwrap();
        let mut sorted: [usize; 256] = core::array::from_fn(|i| i);
        sorted.sort_by(|&x, &y| l[y].total_cmp(&l[x]).then(x.cmp(&y)));
        let mut seen = [false; 256];
        for _ in 0..500 {
            let x = a.sample(&l);
            assert_eq!(x, b.sample(&l));
            assert!(sorted[..3].contains(&(x as usize)));
            seen[x as usize] = true;
        }
        assert_eq!(seen.iter().filter(|&&s| s).count(), 3);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let mut l = [-100.0f32; 256];
        l[10] = 10.0; // ~all the mass
        l[20] = 0.0;
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        })
        .unwrap();
        for _ in 0..100 {
            assert_eq!(s.sample(&l), 10);
        }
        assert!(Sampler::new(SamplerConfig {
            top_p: 0.0,
            ..SamplerConfig::default()
        })
        .is_err());
        assert!(Sampler::new(SamplerConfig {
            temperature: f32::NAN,
            ..SamplerConfig::default()
        })
        .is_err());
    }

    #[test]
    fn stop_sequences_match_across_pushes() {
        let mut stops = StopSequences::new();
        stops
            .push(heapless::Vec::from_slice(b"\n\n").unwrap())
            .unwrap();
        stops
            .push(heapless::Vec::from_slice(b"END").unwrap())
            .unwrap();
        let mut m = StopMatcher::new(&stops);
        let hits: [bool; 7] = core::array::from_fn(|i| m.push(b"aE\nENDx"[i]));
        assert_eq!(hits, [false, false, false, false, false, true, false]);
    }
}
