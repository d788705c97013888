//! Which epoch is best, which checkpoints to keep, when to stop: all by validation AUROC
//! (then accuracy, then the earlier epoch), from the metrics Burn's event store holds.
//!
//! Burn's own `MetricCheckpointingStrategy` and `MetricEarlyStoppingStrategy` ask the store
//! for the epoch just finished; an epoch-level metric such as AUROC may reach the store after
//! that question (its metrics are processed asynchronously), and the best checkpoint was then
//! deleted (seen here: a run's best epoch 11 had no checkpoint left). These rules only act
//! on epochs whose metrics are known, so a late metric delays a decision by an epoch but
//! never loses the best checkpoint.

use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::{Aggregate, EventStoreClient, Split};
use burn::train::{EarlyStoppingStrategy, metric::MetricName};

/// The validation AUROC and accuracy of one epoch, if the store holds them.
fn score(store: &EventStoreClient, names: &Names, epoch: usize) -> Option<(f64, f64)> {
    let auroc = store.find_metric(&names.auroc, epoch, Aggregate::Mean, &Split::Valid)?;
    let accuracy = store
        .find_metric(&names.accuracy, epoch, Aggregate::Mean, &Split::Valid)
        .unwrap_or(0.0);
    Some((auroc, accuracy))
}

/// The best of the known epochs `1..=last`: highest AUROC, then accuracy, then earliest.
/// Returns it and the last epoch with known metrics.
fn best_known(store: &EventStoreClient, names: &Names, last: usize) -> Option<(usize, usize)> {
    let mut best: Option<(usize, (f64, f64))> = None;
    let mut latest = None;
    for epoch in 1..=last {
        let Some(s) = score(store, names, epoch) else { continue };
        latest = Some(epoch);
        if best.is_none_or(|(_, b)| s.partial_cmp(&b) == Some(std::cmp::Ordering::Greater)) {
            best = Some((epoch, s));
        }
    }
    Some((best?.0, latest?))
}

/// Metric names as Burn logs them.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    pub(crate) auroc: MetricName,
    pub(crate) accuracy: MetricName,
    pub(crate) loss: MetricName,
}

/// Saves every epoch; deletes an epoch's checkpoint once it is neither among the last two
/// nor the best known, judged only when its metrics are known.
pub(crate) struct KeepBestAndLast {
    names: Names,
    first: usize,
    saved: Vec<usize>,
}

impl KeepBestAndLast {
    /// `first`: the first epoch of this run (earlier checkpoints of a resumed run are left).
    pub(crate) fn new(names: Names, first: usize) -> Self {
        Self {
            names,
            first,
            saved: Vec::new(),
        }
    }
}

impl CheckpointingStrategy for KeepBestAndLast {
    fn checkpointing(&mut self, epoch: usize, store: &EventStoreClient) -> Vec<CheckpointingAction> {
        let mut actions = vec![CheckpointingAction::Save];
        self.saved.push(epoch);
        let best = best_known(store, &self.names, epoch).map(|(b, _)| b);
        self.saved.retain(|&e| {
            let keep = e + 2 > epoch || e < self.first || Some(e) == best || score(store, &self.names, e).is_none();
            if !keep {
                actions.push(CheckpointingAction::Delete(e));
            }
            keep
        });
        actions
    }
}

/// Stops when the best known epoch is `patience` or more epochs before the last known one.
#[derive(Clone)]
pub(crate) struct StopWithoutImprovement {
    pub(crate) names: Names,
    pub(crate) patience: usize,
}

impl EarlyStoppingStrategy for StopWithoutImprovement {
    fn should_stop(&mut self, epoch: usize, store: &EventStoreClient) -> bool {
        match best_known(store, &self.names, epoch) {
            Some((best, latest)) => latest >= best + self.patience,
            None => false,
        }
    }
}
