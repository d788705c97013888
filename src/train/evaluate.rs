//! [`evaluate`]: a trained network measured once on held-out scans, with the training run's
//! metrics (Burn's `AccuracyMetric`, `LossMetric`, `AurocMetric`).

use burn::config::Config;
use burn::data::dataloader::{DataLoaderBuilder, Dataset, Progress};
use burn::module::Module;
use burn::tensor::Device;
use burn::train::metric::{
    AccuracyMetric, Adaptor, AurocMetric, LossMetric, Metric, MetricMetadata, Numeric, NumericEntry,
};

use super::classifier::ScanClassifier;
use crate::data::{ScanBatcher, ScanDataset};
use crate::error::{Error, Result};
use crate::model::network::ResNet3d;

/// Metrics of one evaluation of held-out scans.
#[derive(Config, Debug, PartialEq)]
pub struct TestMetrics {
    /// Scans evaluated.
    pub scans: usize,
    /// Mean loss (unweighted cross-entropy).
    pub loss: f64,
    /// Accuracy, in %.
    pub accuracy: f64,
    /// AUROC, in % (one-vs-rest, macro over classes, on the softmax probabilities); `None`
    /// when the scans hold a single class (AUROC is then undefined; Burn would report 50%).
    pub auroc: Option<f64>,
}

/// Measures `net` (with its head; `in_channels` input channels) on `dataset`, batch by batch,
/// with the metrics the training loop reports.
///
/// # Errors
/// [`Error::InvalidLabels`] from [`ScanDataset::prepare`], [`Error::InvalidConfig`] for an
/// empty dataset or a network without head, [`Error::Training`] when a batch cannot be read
/// or a metric cannot be computed.
pub fn evaluate(net: ResNet3d, in_channels: usize, dataset: ScanDataset, device: &Device) -> Result<TestMetrics> {
    if net.fc.is_none() || dataset.len() == 0 {
        return Err(Error::InvalidConfig {
            field: "evaluate",
            reason: format!(
                "needs a network with a head and at least one scan ({} given)",
                dataset.len()
            ),
        });
    }
    dataset.prepare()?;
    let scans = dataset.len();
    let one_class = dataset.scans().windows(2).all(|w| w[0].label == w[1].label);
    let device = device.clone().without_autodiff();
    let loader = DataLoaderBuilder::new(ScanBatcher { channels: in_channels })
        .batch_size(4)
        .set_device(device.clone())
        .build(dataset);
    let model = ScanClassifier::new(net.fork(&device).valid());
    let (mut accuracy, mut loss, mut auroc) = (AccuracyMetric::new(), LossMetric::new(), AurocMetric::default());
    let failed = |what: String| Error::Training { what };
    for (iteration, batch) in loader.iter().enumerate() {
        let batch = batch.map_err(|err| failed(err.to_string()))?;
        let output = model.forward_classification(batch);
        let metadata = MetricMetadata {
            progress: Progress::new(iteration, scans, None),
            iteration: Some(iteration),
            lr: None,
        };
        let read = |err: burn::tensor::TensorReadError| failed(format!("{err:?}"));
        accuracy.update(&output.adapt(), &metadata).map_err(read)?;
        loss.update(&output.adapt(), &metadata).map_err(read)?;
        auroc.update(&output.adapt(), &metadata).map_err(read)?;
    }
    let read = |err: burn::tensor::TensorReadError| failed(format!("{err:?}"));
    let value = |entry: NumericEntry| match entry {
        NumericEntry::Value(v) | NumericEntry::Final(v) => v,
        NumericEntry::Aggregated { aggregated_value, .. } => aggregated_value,
    };
    accuracy.compute().map_err(read)?;
    loss.compute().map_err(read)?;
    auroc.compute().map_err(read)?;
    Ok(TestMetrics {
        scans,
        loss: value(loss.final_value()),
        accuracy: value(accuracy.final_value()),
        auroc: (!one_class).then(|| value(auroc.final_value())),
    })
}
