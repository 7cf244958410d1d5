//! Linear warm-up, then cosine decay to a fraction of the peak rate, over
//! the run's updates or, with a time budget, over whichever of its updates
//! and its time runs out first.

/// The learning rate of every update. `lr(step)` takes the 0-based index of
/// the update about to be made.
///
/// With a time budget (`time_limit_s`), the cosine's progress is the larger
/// of the fraction of post-warm-up updates made and the fraction of the
/// budget spent (`elapsed_s`, which the training loop keeps current), so a
/// run stopped by its deadline ends fully annealed. The warm-up stays a
/// count of updates: it is there for the optimizer's early statistics,
/// which a slower machine does not make any less noisy (as a fraction of
/// the time, a run on a loaded machine warmed up in 30 updates instead of
/// 100).
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
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let by_steps = if step >= self.total_steps {
            1.0
        } else {
            (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64
        };
        let by_time = self.time_limit_s.map_or(0.0, |t| self.elapsed_s / t);
        let progress = by_steps.max(by_time).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        floor + cosine * (self.peak - floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_budget_paces_the_decay_by_elapsed_time() {
        // 100 updates of warm-up; far more updates allowed than the budget's
        // time fits.
        let mut s = LrSchedule::new(1e-3, 100, 1000).with_time_limit(Some(200.0));
        let at = |s: &mut LrSchedule, step: u64, t: f64| {
            s.elapsed_s = t;
            s.lr(step)
        };
        // The warm-up counts updates, whatever the clock says.
        assert!((at(&mut s, 3, 150.0) - 4e-5).abs() < 1e-15);
        assert!((at(&mut s, 99, 1.0) - 1e-3).abs() < 1e-15);
        // After it: half of the cosine at 100 s, the floor at the deadline.
        assert!((at(&mut s, 150, 100.0) - (1e-4 + 0.5 * 9e-4)).abs() < 1e-12);
        assert!((at(&mut s, 160, 200.0) - 1e-4).abs() < 1e-15);
        assert!((at(&mut s, 161, 250.0) - 1e-4).abs() < 1e-15);
        // Updates that outrun the clock lead: the step fraction counts too.
        assert!((at(&mut s, 550, 1.0) - (1e-4 + 0.5 * 9e-4)).abs() < 1e-12);
        assert!(
            (at(&mut s, 999, 1.0) - at(&mut LrSchedule::new(1e-3, 100, 1000), 999, 0.0)).abs()
                < 1e-18
        );
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
