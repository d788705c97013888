//! [`ScanClassifier`]: a [`ResNet3d`] with its loss, as Burn's `Learner` trains it.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor};
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
        let loss = self.loss(logits.clone(), batch.targets.clone(), &device);
        ClassificationOutput::new(loss, softmax(logits, 1), batch.targets)
    }

    /// The (class-weighted) cross-entropy of `logits` `[N, classes]` for `targets` `[N]`.
    fn loss(&self, logits: Tensor<2>, targets: Tensor<1, Int>, device: &Device) -> Tensor<1> {
        CrossEntropyLossConfig::new()
            .with_weights(self.class_weights.clone())
            .init(device)
            .forward(logits, targets)
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

    /// The loss with class-balanced weights and its gradient against PyTorch's
    /// `CrossEntropyLoss(weight=...)` (`tests/fixtures/make_training.py`): the weights are
    /// those `FitConfig::balance_classes` gives the fixture's training labels.
    #[test]
    fn balanced_cross_entropy_is_pytorchs() {
        use burn::tensor::TensorData;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/train/training.json");
        let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let case = &fixture["cross_entropy"];
        let numbers = |v: &serde_json::Value| -> Vec<f64> {
            let flat = v
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|x| x.as_array().cloned().unwrap_or_else(|| vec![x.clone()]));
            flat.map(|x| x.as_f64().unwrap()).collect()
        };
        let classes = case["classes"].as_u64().unwrap() as usize;
        let labels: Vec<usize> = numbers(&case["labels"]).iter().map(|&l| l as usize).collect();
        let weights = crate::train::fit::balanced_weights_of(&labels, classes);
        let expected_weights = numbers(&case["weights"]);
        for (w, e) in weights.iter().zip(&expected_weights) {
            assert!(
                (f64::from(*w) - e).abs() < 1e-6,
                "{weights:?} against {expected_weights:?}"
            );
        }

        let device = burn::tensor::Device::flex().autodiff();
        let config = ResNet3dConfig::resnet18().with_width(4).with_num_classes(Some(classes));
        let model = ScanClassifier::new(config.init(&device))
            .with_class_weights(weights)
            .unwrap();
        let logits: Vec<f32> = numbers(&case["logits"]).iter().map(|&v| v as f32).collect();
        let n = logits.len() / classes;
        let logits = Tensor::<2>::from_data(TensorData::new(logits, [n, classes]), &device).require_grad();
        let targets: Vec<i64> = numbers(&case["targets"]).iter().map(|&t| t as i64).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &device);
        let loss = model.loss(logits.clone(), targets, &device);
        let value = f64::from(loss.clone().into_scalar::<f32>());
        let expected = case["loss"].as_f64().unwrap();
        assert!(
            (value - expected).abs() < 1e-6,
            "loss {value} against PyTorch's {expected}"
        );
        let grads = loss.backward();
        let grad = logits.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        for (g, e) in grad.iter().zip(numbers(&case["grad"])) {
            assert!((f64::from(*g) - e).abs() < 1e-6, "gradient {grad:?} against PyTorch's");
        }
    }
}
