//! [`ScanClassifier`]: a [`ResNet3d`] with its loss, as Burn's `Learner` trains it.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::softmax;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};

use crate::data::ScanBatch;
use crate::error::{Error, Result};
use crate::model::network::ResNet3d;

/// A [`ResNet3d`] with a classification head and its cross-entropy loss (optionally weighted
/// per class): the model Burn's `Learner` trains on [`ScanBatch`]es.
///
/// Both steps report the class probabilities (softmax of the logits) as the output, so that
/// Burn's AUROC ranks scans by probability (for two classes, one-vs-rest AUROC of either
/// class is then the usual binary AUROC).
#[derive(Module, Debug)]
pub struct ScanClassifier {
    /// The network; its record paths are prefixed `net.` in checkpoints.
    pub net: ResNet3d,
    /// Weight of each class in the loss (`None`: all 1); set through
    /// [`with_class_weights`](Self::with_class_weights), which checks them.
    #[module(skip)]
    class_weights: Option<Vec<f32>>,
}

impl ScanClassifier {
    /// `net` with an unweighted loss.
    pub fn new(net: ResNet3d) -> Self {
        Self {
            net,
            class_weights: None,
        }
    }

    /// Weighs each class's scans in the loss: `sum(w[y_i] * nll_i) / sum(w[y_i])` over the
    /// batch, as PyTorch's `CrossEntropyLoss(weight=...)` (Burn's weighted cross-entropy).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] unless there is one finite, positive weight per class of the
    /// head.
    pub fn with_class_weights(mut self, weights: Vec<f32>) -> Result<Self> {
        let classes = self.net.fc.as_ref().map(|fc| fc.weight.dims()[1]);
        if Some(weights.len()) != classes || !weights.iter().all(|w| w.is_finite() && *w > 0.0) {
            return Err(Error::InvalidConfig {
                field: "class_weights",
                reason: format!(
                    "{weights:?} must hold one finite, positive weight for each of the head's {} classes",
                    classes.map_or("(no head)".to_string(), |c| c.to_string())
                ),
            });
        }
        self.class_weights = Some(weights);
        Ok(self)
    }

    /// The loss and the class probabilities of a batch.
    ///
    /// # Shapes
    /// - `batch.volumes`: `[N, C, D, H, W]`, `batch.targets`: `[N]`
    /// - output: `[N, classes]`
    pub fn forward_classification(&self, batch: ScanBatch) -> ClassificationOutput {
        let device = batch.volumes.device();
        let logits = self.net.forward(batch.volumes);
        let loss = CrossEntropyLossConfig::new()
            .with_weights(self.class_weights.clone())
            .init(&device)
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, softmax(logits, 1), batch.targets)
    }
}

impl TrainStep for ScanClassifier {
    type Input = ScanBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ScanBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.forward_classification(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl InferenceStep for ScanClassifier {
    type Input = ScanBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ScanBatch) -> ClassificationOutput {
        self.forward_classification(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResNet3dConfig;

    /// One finite, positive weight per class, or `InvalidConfig` (Burn's loss would stop the
    /// program on a weight of 0 or less).
    #[test]
    fn class_weights_are_checked() {
        let config = ResNet3dConfig::resnet18().with_width(4).with_num_classes(Some(2));
        let model = || ScanClassifier::new(config.init(&burn::tensor::Device::flex()));
        for bad in [vec![1.0], vec![1.0, 0.0], vec![1.0, f32::NAN], vec![1.0, 2.0, 3.0]] {
            let err = model().with_class_weights(bad.clone()).err();
            assert!(
                matches!(
                    err,
                    Some(Error::InvalidConfig {
                        field: "class_weights",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(model().with_class_weights(vec![0.5, 2.0]).is_ok());
    }
}
