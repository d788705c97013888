//! [`ScanClassifier`]: a [`ResNet3d`] with its loss, as Burn's `Learner` trains it.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::softmax;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};

use crate::data::ScanBatch;
use crate::model::ResNet3d;

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
    /// Weight of each class in the loss (`None`: all 1).
    #[module(skip)]
    pub class_weights: Option<Vec<f32>>,
}

impl ScanClassifier {
    /// `net` with an unweighted loss.
    pub fn new(net: ResNet3d) -> Self {
        Self {
            net,
            class_weights: None,
        }
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
