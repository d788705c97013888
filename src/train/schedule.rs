//! [`WarmupCosine`]: the learning rate of a fine-tuning run at every optimizer step, as
//! PyTorch's `SequentialLR([LinearLR(start_factor=0.01, total_iters=W), CosineAnnealingLR(T_max=T - W)],
//! milestones=[W])` gives it, in closed form.
//!
//! Burn 0.22's `LinearLrScheduler` returns its first value one step late (its first `step()`
//! is `initial + (final - initial) / n`, never `initial`), so a warm-up built from it runs one
//! step ahead of PyTorch's and repeats the peak; this schedule is PyTorch's at every step
//! (`tests/fixtures/make_training.py`, within 1e-12 relative).

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

/// Linear warm-up from `peak / 100` over `warmup` steps, then a cosine from `peak` towards 0
/// over the remaining `total - warmup` steps. Step `i` (from 0):
/// - `i < W`: `peak * (0.01 + 0.99 * i / W)`;
/// - otherwise: `peak * (1 + cos(pi * (i - W) / (T - W))) / 2`.
///
/// Past the last step the cosine goes on (it rises again), as PyTorch's does.
#[derive(Debug, Clone)]
pub(crate) struct WarmupCosine {
    peak: f64,
    warmup: usize,
    total: usize,
    /// The step whose rate the next `step()` returns.
    next: usize,
}

impl WarmupCosine {
    /// `warmup` is cut to `total - 1` so that at least one step is the cosine's; `total` of 0
    /// is taken as 1.
    pub(crate) fn new(peak: f64, warmup: usize, total: usize) -> Self {
        let total = total.max(1);
        Self {
            peak,
            warmup: warmup.min(total - 1),
            total,
            next: 0,
        }
    }

    /// The rate of step `i`.
    pub(crate) fn at(&self, i: usize) -> LearningRate {
        let (w, t) = (self.warmup as f64, self.total as f64);
        if i < self.warmup {
            self.peak * (0.01 + 0.99 * i as f64 / w)
        } else {
            self.peak * (1.0 + (std::f64::consts::PI * (i as f64 - w) / (t - w)).cos()) / 2.0
        }
    }
}

impl LrScheduler for WarmupCosine {
    fn step(&mut self) -> LearningRate {
        let lr = self.at(self.next);
        self.next += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("next", self.next as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(next) = record.scalar::<u64>("next") {
            self.next = usize::try_from(next).unwrap_or(usize::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Every step of PyTorch's schedules (`tests/fixtures/make_training.py`).
    #[test]
    fn every_step_is_pytorchs() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/train/training.json");
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = fixture["schedules"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for case in cases {
            let number = |key: &str| case[key].as_f64().unwrap();
            let (epochs, steps) = (number("epochs") as usize, number("steps_per_epoch") as usize);
            let warmup = number("warmup_epochs") as usize * steps;
            let mut schedule = WarmupCosine::new(number("lr"), warmup, epochs * steps);
            let expected: Vec<f64> = case["lrs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(expected.len(), epochs * steps);
            for (i, lr) in expected.iter().enumerate() {
                let got = schedule.step();
                assert!(
                    (got - lr).abs() <= 1e-12 * lr.abs(),
                    "{case:?} step {i}: {got} against {lr}"
                );
            }
        }
    }

    /// A resumed schedule continues where its record says.
    #[test]
    fn the_record_keeps_the_step() {
        let mut first = WarmupCosine::new(1e-3, 3, 10);
        (0..4).for_each(|_| {
            first.step();
        });
        let mut resumed = WarmupCosine::new(1e-3, 3, 10);
        resumed.load_record(first.to_record());
        assert_eq!(resumed.step(), first.step());
        assert_eq!(resumed.next, 5);
    }
}
