//! Linear warm-up, then cosine decay to a fraction of the peak rate, over
//! the run's updates or, with a time budget, over whichever of its updates
//! and its time runs out first.

/// The learning rate of every update. `lr(step)` takes the 0-based index of
/// the update about to be made.
///
/// With a time budget (`time_limit_s`), progress is the larger of the
/// fraction of updates made and the fraction of the budget spent
/// (`elapsed_s`, which the training loop keeps current): the warm-up takes
/// the first `warmup_steps / total_steps` of that progress and the cosine
/// the rest, so a run stopped by its deadline ends fully annealed.
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
    /// Seconds of training the run may take, if it has a budget.
    pub time_limit_s: Option<f64>,
    /// Seconds of training so far (with a budget, set before each update).
    pub elapsed_s: f64,
}

impl LrSchedule {
    pub const DEFAULT_FINAL_FRACTION: f64 = 0.1;

    pub fn new(peak: f64, warmup_steps: u64, total_steps: u64) -> Self {
        LrSchedule {
            peak,
            warmup_steps,
            total_steps,
            final_fraction: Self::DEFAULT_FINAL_FRACTION,
            time_limit_s: None,
            elapsed_s: 0.0,
        }
    }

    /// The same schedule, paced by a time budget as well as by updates.
    pub fn with_time_limit(mut self, time_limit_s: Option<f64>) -> Self {
        self.time_limit_s = time_limit_s.filter(|t| t.is_finite() && *t > 0.0);
        self
    }

    /// A constant rate (tests, fine-tuning experiments).
    pub fn constant(lr: f64) -> Self {
        LrSchedule {
            peak: lr,
            warmup_steps: 0,
            total_steps: 0,
            final_fraction: 1.0,
            time_limit_s: None,
            elapsed_s: 0.0,
        }
    }

    pub fn lr(&self, step: u64) -> f64 {
        let floor = self.peak * self.final_fraction;
        if let Some(limit) = self.time_limit_s {
            let total = self.total_steps.max(1) as f64;
            let progress = ((step + 1) as f64 / total)
                .max(self.elapsed_s / limit)
                .min(1.0);
            let warm = (self.warmup_steps as f64 / total).min(1.0);
            if progress < warm {
                return self.peak * progress / warm;
            }
            let rest = if warm < 1.0 {
                (progress - warm) / (1.0 - warm)
            } else {
                1.0
            };
            let cosine = 0.5 * (1.0 + (std::f64::consts::PI * rest).cos());
            return floor + cosine * (self.peak - floor);
        }
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
    fn a_time_budget_paces_warmup_and_decay_by_elapsed_time() {
        // 10% warm-up; far more updates allowed than the budget's time fits.
        let mut s = LrSchedule::new(1e-3, 100, 1000).with_time_limit(Some(200.0));
        let at = |s: &mut LrSchedule, step: u64, t: f64| {
            s.elapsed_s = t;
            s.lr(step)
        };
        // 10 s of 200 is 5%: half-way through the warm-up, whatever the step.
        assert!((at(&mut s, 3, 10.0) - 5e-4).abs() < 1e-12);
        // 20 s: the warm-up ends.
        assert!((at(&mut s, 5, 20.0) - 1e-3).abs() < 1e-12);
        // Half of the cosine at 110 s, the floor at the deadline and after.
        assert!((at(&mut s, 50, 110.0) - (1e-4 + 0.5 * 9e-4)).abs() < 1e-12);
        assert!((at(&mut s, 60, 200.0) - 1e-4).abs() < 1e-15);
        assert!((at(&mut s, 61, 250.0) - 1e-4).abs() < 1e-15);
        // Updates that outrun the clock lead: the step fraction counts too.
        assert!((at(&mut s, 999, 1.0) - 1e-4).abs() < 1e-15);
        // No budget, or a bad one: the step schedule.
        let plain = LrSchedule::new(1e-3, 100, 1000);
        for limit in [None, Some(0.0), Some(f64::NAN)] {
            let mut t = plain.with_time_limit(limit);
            assert_eq!(at(&mut t, 500, 150.0), plain.lr(500));
        }
    }

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
