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
/// Returns it and the last epoch with known metrics; `score` gives an epoch's (AUROC,
/// accuracy) if known.
fn best_known(last: usize, score: impl Fn(usize) -> Option<(f64, f64)>) -> Option<(usize, usize)> {
    let mut best: Option<(usize, (f64, f64))> = None;
    let mut latest = None;
    for epoch in 1..=last {
        let Some(s) = score(epoch) else { continue };
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
    saved: Vec<usize>,
}

impl KeepBestAndLast {
    /// A strategy that has saved nothing yet (checkpoints of a run it resumes are left alone).
    pub(crate) fn new(names: Names) -> Self {
        Self {
            names,
            saved: Vec::new(),
        }
    }
}

impl CheckpointingStrategy for KeepBestAndLast {
    fn checkpointing(&mut self, epoch: usize, store: &EventStoreClient) -> Vec<CheckpointingAction> {
        let mut actions = vec![CheckpointingAction::Save];
        self.saved.push(epoch);
        let known = |e: usize| score(store, &self.names, e);
        let best = best_known(epoch, known).map(|(b, _)| b);
        self.saved.retain(|&e| {
            let keep = keeps(e, epoch, best, known(e).is_some());
            if !keep {
                actions.push(CheckpointingAction::Delete(e));
            }
            keep
        });
        actions
    }
}

/// Whether the checkpoint of epoch `e` stays after epoch `epoch`: one of the last two, the
/// best known, or one whose metrics are not known yet.
fn keeps(e: usize, epoch: usize, best: Option<usize>, known: bool) -> bool {
    e + 2 > epoch || Some(e) == best || !known
}

/// Stops when the best known epoch of this run is `patience` or more epochs before the last
/// known one. Only epochs from `first` count: a resumed run restarts the count, whether or
/// not the store has read the earlier epochs' logs back (it sometimes does, sometimes not;
/// counting them made a resumed run's length depend on that).
#[derive(Clone)]
pub(crate) struct StopWithoutImprovement {
    pub(crate) names: Names,
    pub(crate) patience: usize,
    pub(crate) first: usize,
}

impl EarlyStoppingStrategy for StopWithoutImprovement {
    fn should_stop(&mut self, epoch: usize, store: &EventStoreClient) -> bool {
        let first = self.first;
        best_known(epoch, |e| (e >= first).then(|| score(store, &self.names, e)).flatten())
            .is_some_and(|(best, latest)| stops(best, latest, self.patience))
    }
}

/// No improvement since the best epoch for `patience` known epochs.
fn stops(best: usize, latest: usize, patience: usize) -> bool {
    latest >= best + patience
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Highest AUROC wins, then accuracy, then the earlier epoch; unknown epochs are skipped
    /// and the last known one is reported.
    #[test]
    fn best_of_the_known_epochs() {
        let scores = [
            Some((80.0, 60.0)),
            Some((90.0, 70.0)),
            Some((90.0, 75.0)),
            Some((90.0, 75.0)),
            None,
        ];
        let score = |e: usize| scores[e - 1];
        assert_eq!(best_known(5, score), Some((3, 4)));
        assert_eq!(best_known(2, score), Some((2, 2)));
        assert_eq!(best_known(5, |_| None), None);
    }

    /// Stopping: patience 2 with the best at epoch 3 stops once epoch 5 is known, not before.
    #[test]
    fn stops_after_patience_epochs_without_improvement() {
        let scores = [
            Some((70.0, 0.0)),
            Some((60.0, 0.0)),
            Some((95.0, 0.0)),
            Some((90.0, 0.0)),
            Some((94.0, 0.0)),
        ];
        let stop = |last: usize| best_known(last, |e| scores[e - 1]).is_some_and(|(b, l)| stops(b, l, 2));
        assert!(!stop(4));
        assert!(stop(5));
        // Counting from epoch 4 (a resumed run), epoch 5 is the best so far: no stop.
        let from4 = |e: usize| (e >= 4).then(|| scores[e - 1]).flatten();
        assert!(!best_known(5, from4).is_some_and(|(b, l)| stops(b, l, 2)));
    }

    /// The last two, the best and the not-yet-known stay; an old, known, worse one goes.
    #[test]
    fn which_checkpoints_stay() {
        assert!(keeps(9, 10, Some(3), true) && keeps(10, 10, Some(3), true));
        assert!(keeps(3, 10, Some(3), true));
        assert!(keeps(5, 10, Some(3), false));
        assert!(!keeps(5, 10, Some(3), true));
    }
}
