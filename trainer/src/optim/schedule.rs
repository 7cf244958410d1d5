//! Linear warm-up, then cosine decay to a fraction of the peak rate.

/// The learning rate of every update. `lr(step)` takes the 0-based index of
/// the update about to be made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate, reached at the end of the warm-up.
    pub peak: f64,
    /// Updates of linear warm-up: update `s < warmup` uses `peak*(s+1)/warmup`.
    pub warmup_steps: u64,
    /// Updates in the whole run; the cosine reaches its floor here and stays.
    pub total_steps: u64,
    /// The floor as a fraction of the peak (MODELS.md: 0.1).
    pub final_fraction: f64,
}

impl LrSchedule {
    pub const DEFAULT_FINAL_FRACTION: f64 = 0.1;

    pub fn new(peak: f64, warmup_steps: u64, total_steps: u64) -> Self {
        LrSchedule {
            peak,
            warmup_steps,
            total_steps,
            final_fraction: Self::DEFAULT_FINAL_FRACTION,
        }
    }

    /// A constant rate (tests, fine-tuning experiments).
    pub fn constant(lr: f64) -> Self {
        LrSchedule {
            peak: lr,
            warmup_steps: 0,
            total_steps: 0,
            final_fraction: 1.0,
        }
    }

    pub fn lr(&self, step: u64) -> f64 {
        let floor = self.peak * self.final_fraction;
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps {
            return floor;
        }
        let span = (self.total_steps - self.warmup_steps) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        floor + cosine * (self.peak - floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_ten_percent() {
        let s = LrSchedule::new(1e-3, 10, 110);
        assert!((s.lr(0) - 1e-4).abs() < 1e-15);
        assert!((s.lr(4) - 5e-4).abs() < 1e-15);
        assert!((s.lr(9) - 1e-3).abs() < 1e-15);
        assert!((s.lr(10) - 1e-3).abs() < 1e-15, "peak right after warm-up");
        // Half-way through the decay: floor + half the range.
        assert!((s.lr(60) - (1e-4 + 0.5 * 9e-4)).abs() < 1e-12);
        assert!((s.lr(110) - 1e-4).abs() < 1e-15);
        assert!((s.lr(10_000) - 1e-4).abs() < 1e-15);
        // Monotone non-increasing after the warm-up.
        for step in 10..120 {
            assert!(s.lr(step + 1) <= s.lr(step) + 1e-18);
        }
        let c = LrSchedule::constant(3e-4);
        assert_eq!(c.lr(0), 3e-4);
        assert_eq!(c.lr(1000), 3e-4);
        let no_warmup = LrSchedule::new(1.0, 0, 4);
        assert_eq!(no_warmup.lr(0), 1.0);
    }
}
