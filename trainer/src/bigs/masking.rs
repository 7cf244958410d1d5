//! Span masking for masked-byte pretraining (MODELS.md, "Pretraining
//! objective"): about 15% of a sequence's bytes are chosen in spans whose
//! lengths are geometric with mean 3; of the chosen bytes 80% become MASK,
//! 10% a random byte and 10% stay as they are. The loss counts the chosen
//! bytes only. Everything is drawn from the caller's seeded RNG, so a run's
//! masks are reproducible (and resume with the RNG state).

use kilobyte_format::config::BIGS_MASK;
use kilobyte_runtime::rng::Rng;

/// Fraction of bytes chosen for the loss.
pub const MASK_FRACTION: f64 = 0.15;
/// Mean span length (geometric distribution on 1, 2, ...).
pub const MEAN_SPAN: f64 = 3.0;

/// One masked sequence: model inputs, the original bytes as targets, and a
/// loss weight per position (1 where chosen).
#[derive(Clone, Debug, PartialEq)]
pub struct Masked {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
}

/// Masks `bytes` (at least one byte is always chosen).
pub fn mask_spans(bytes: &[u8], rng: &mut Rng) -> Masked {
    let n = bytes.len();
    let mut chosen = vec![false; n];
    let budget = ((n as f64 * MASK_FRACTION).round() as usize).clamp(1.min(n), n);
    let mut count = 0;
    // Spans may overlap; the attempt cap only matters for tiny inputs.
    let mut attempts = 0;
    while count < budget && attempts < 16 * n {
        attempts += 1;
        let mut len = 1;
        while rng.next_f64() >= 1.0 / MEAN_SPAN {
            len += 1;
        }
        let len = len.min(budget - count).min(n);
        let start = rng.below((n - len + 1) as u64) as usize;
        for c in &mut chosen[start..start + len] {
            if !*c {
                *c = true;
                count += 1;
            }
        }
    }
    let mut inputs: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
    for (i, _) in chosen.iter().enumerate().filter(|(_, &c)| c) {
        match rng.below(10) {
            0..=7 => inputs[i] = BIGS_MASK,
            8 => inputs[i] = rng.below(256) as u32,
            _ => {}
        }
    }
    Masked {
        inputs,
        targets: bytes.iter().map(|&b| b as u32).collect(),
        weights: chosen.iter().map(|&c| c as u8 as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_fifteen_percent_in_spans_with_the_80_10_10_split() {
        let mut rng = Rng::new(7);
        let bytes: Vec<u8> = (0..256).map(|i| (i * 7 % 251) as u8).collect();
        let (mut chosen, mut masked, mut unchanged, mut spans) = (0, 0, 0, 0);
        let trials = 400;
        for _ in 0..trials {
            let m = mask_spans(&bytes, &mut rng);
            assert_eq!(m.targets.len(), 256);
            let picked: Vec<bool> = m.weights.iter().map(|&w| w == 1.0).collect();
            chosen += picked.iter().filter(|&&c| c).count();
            spans += picked
                .iter()
                .enumerate()
                .filter(|&(i, &c)| c && (i == 0 || !picked[i - 1]))
                .count();
            for (i, &c) in picked.iter().enumerate() {
                if c {
                    masked += (m.inputs[i] == BIGS_MASK) as usize;
                    unchanged += (m.inputs[i] == bytes[i] as u32) as usize;
                } else {
                    assert_eq!(m.inputs[i], bytes[i] as u32, "unchosen bytes stay");
                }
            }
        }
        let per_seq = chosen as f64 / trials as f64;
        assert!((per_seq - 38.0).abs() < 1.0, "{per_seq} chosen per 256");
        let frac_mask = masked as f64 / chosen as f64;
        assert!((frac_mask - 0.8).abs() < 0.02, "{frac_mask}");
        // Unchanged: the 10% kept plus random draws that hit the same byte.
        let frac_same = unchanged as f64 / chosen as f64;
        assert!((frac_same - 0.1).abs() < 0.02, "{frac_same}");
        // Adjacent spans merge, so observed runs are a little longer than 3.
        let mean_run = chosen as f64 / spans as f64;
        assert!((2.5..4.5).contains(&mean_run), "{mean_run}");
    }

    #[test]
    fn same_seed_same_mask_and_tiny_inputs_work() {
        let a = mask_spans(b"hello world", &mut Rng::new(1));
        let b = mask_spans(b"hello world", &mut Rng::new(1));
        assert_eq!(a, b);
        let one = mask_spans(b"x", &mut Rng::new(1));
        assert_eq!(one.weights, [1.0]);
        assert!(mask_spans(b"", &mut Rng::new(1)).inputs.is_empty());
    }
}
