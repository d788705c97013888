//! [`EpochLines`]: Burn's training progress as one plain line per split and epoch, for logs
//! and pipes (Burn's own plain renderer prints a line per batch).

use std::collections::BTreeMap;
use std::time::Instant;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation, MetricsRendererTraining,
};

/// Prints, at the end of each split of each epoch, a line such as
/// `epoch 3/20 valid: Accuracy 83.333 % | AUROC [Macro] 95.139 % | Loss 0.412 (24 scans, 0.2 s)`:
/// every metric's value over the epoch, as Burn formats it.
#[derive(Debug)]
pub struct EpochLines {
    names: BTreeMap<String, String>,
    values: BTreeMap<String, String>,
    epoch: usize,
    epochs: usize,
    split: String,
    items: usize,
    started: Instant,
}

impl Default for EpochLines {
    fn default() -> Self {
        Self {
            names: BTreeMap::new(),
            values: BTreeMap::new(),
            epoch: 1,
            epochs: 0,
            split: String::new(),
            items: 0,
            started: Instant::now(),
        }
    }
}

impl EpochLines {
    /// A renderer that has printed nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the epoch's value of a metric: Burn formats numeric metrics as
    /// `epoch <value> - batch <value>`; the first part is kept.
    fn keep(&mut self, entry: &MetricEntry) {
        let formatted = &entry.serialized_entry.formatted;
        let value = formatted.split(" - batch").next().unwrap_or(formatted);
        let value = value.strip_prefix("epoch ").unwrap_or(value).trim();
        let id = format!("{:?}", entry.metric_id);
        self.values.insert(id, value.to_string());
    }

    /// The line for the split that just ended.
    fn line(&self) -> String {
        let metrics: Vec<String> = self
            .values
            .iter()
            .map(|(id, value)| format!("{} {value}", self.names.get(id).map_or(id.as_str(), String::as_str)))
            .collect();
        format!(
            "epoch {}/{} {}: {} ({} scans, {:.1} s)",
            self.epoch,
            self.epochs,
            self.split,
            metrics.join(" | "),
            self.items,
            self.started.elapsed().as_secs_f64()
        )
    }
}

impl MetricsRendererTraining for EpochLines {
    fn update_train(&mut self, state: MetricState) {
        match state {
            MetricState::Generic(entry) | MetricState::Numeric(entry, _) => self.keep(&entry),
        }
    }

    fn update_valid(&mut self, state: MetricState) {
        self.update_train(state);
    }
}

impl TrainingProgressLogger for EpochLines {
    fn start(&mut self, total_epochs: usize, starting_epoch: usize, _items: Option<usize>, _label: Option<&str>) {
        self.epochs = total_epochs;
        self.epoch = starting_epoch.max(1);
    }

    fn update_epoch(&mut self, epoch: usize) {
        self.epoch = epoch + 1;
    }

    fn start_split(&mut self, split: &str, _total_items: usize) {
        self.split = split.to_string();
        self.values.clear();
        self.items = 0;
        self.started = Instant::now();
    }

    fn update_split(&mut self, items_processed: usize) {
        self.items = items_processed;
    }

    fn end_split(&mut self) {
        println!("{}", self.line());
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for EpochLines {
    fn start_global_progress(&mut self, _total_tests: usize) {}

    fn start_test(&mut self, name: &str, _total_items: usize) {
        self.start_split(name, 0);
    }

    fn update_test_progress(&mut self, items_processed: usize) {
        self.items = items_processed;
    }

    fn end_test(&mut self) {
        println!("{}", self.line());
    }

    fn end_global_progress(&mut self) {}

    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for EpochLines {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.update_train(state);
    }
}

impl MetricsRenderer for EpochLines {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(format!("{:?}", definition.metric_id), definition.name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use burn::train::metric::{MetricId, SerializedEntry};

    use super::*;

    /// The epoch's value of each metric, under its registered name, in a line.
    #[test]
    fn a_line_holds_each_metrics_epoch_value() {
        let mut lines = EpochLines::new();
        let id = MetricId::new(Arc::new("Loss".to_string()));
        lines.start(20, 3, None, None);
        lines.start_split("valid", 24);
        let entry = |text: &str| MetricEntry::new(id.clone(), SerializedEntry::new(text.into(), String::new()));
        lines.update_valid(MetricState::Generic(entry("epoch 0.70 - batch 0.90")));
        lines.update_valid(MetricState::Generic(entry("epoch 0.41 - batch N/A")));
        lines.update_split(24);
        let line = lines.line();
        assert!(line.starts_with("epoch 3/20 valid: "), "{line}");
        assert!(line.contains("0.41 (24 scans"), "{line}");
        assert!(!line.contains("0.70") && !line.contains("batch"), "{line}");
    }
}
