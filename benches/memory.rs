//! Peak resident memory of one ResNet3d-50 forward on 1x1x64x128x128, or of three
//! ResNet3d-18 fine-tuning steps on 2x1x32x96x96, for `compare.py`:
//!
//! ```text
//! cargo bench --bench memory -- frozen     # FrozenResNet3d (ResNet3d::into_frozen)
//! cargo bench --bench memory -- flex       # the Burn model on flex
//! cargo bench --bench memory -- train      # train steps on flex with autodiff, Adam
//! ```
//!
//! Prints one JSON object: the peak resident set of the process (`VmHWM`), and that before the
//! model was built, in MB. Run each in its own process: the peak never goes down.

use resnet3d::ResNet3dConfig;
use resnet3d::burn::nn::loss::CrossEntropyLossConfig;
use resnet3d::burn::optim::GradientsParams;
use resnet3d::burn::tensor::{Device, Int, Tensor, TensorData};
use resnet3d::train::FusedAdamConfig;

/// `VmHWM` or `VmRSS` of this process from /proc, in MB (0 where /proc is missing).
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let mode = std::env::args()
        .skip(1)
        .find(|a| a == "frozen" || a == "flex" || a == "train")
        .unwrap_or_else(|| "frozen".into());
    if mode == "train" {
        return train();
    }
    let device = Device::flex();
    let before = status_mb("VmHWM:");
    let model = ResNet3dConfig::resnet50()
        .with_in_channels(1)
        .with_num_classes(Some(2))
        .init(&device);
    let shape = [1, 1, 64, 128, 128];
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin()).collect();
    let x = Tensor::<5>::from_data(TensorData::new(values, shape), &device);
    let logits = if mode == "frozen" {
        let frozen = model.into_frozen().expect("f32 model");
        frozen.forward(x).expect("valid input")
    } else {
        model.forward(x)
    };
    let _ = logits.into_data();
    println!(
        "{{\"mode\": \"{mode}\", \"peak_mb\": {:.1}, \"before_model_mb\": {before:.1}}}",
        status_mb("VmHWM:")
    );
}

/// Three Adam steps of a ResNet3d-18 in train mode, as `pytorch_reference.py --memory --train`.
fn train() {
    let device = Device::flex().autodiff();
    let before = status_mb("VmHWM:");
    let mut model = ResNet3dConfig::resnet18()
        .with_in_channels(1)
        .with_num_classes(Some(2))
        .init(&device);
    let shape = [2, 1, 32, 96, 96];
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin()).collect();
    let x = Tensor::<5>::from_data(TensorData::new(values, shape), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &device);
    let mut optimizer = FusedAdamConfig::new().init();
    let loss = CrossEntropyLossConfig::new().init(&device);
    for _ in 0..3 {
        let l = loss.forward(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optimizer.step(1e-4, model, grads);
    }
    println!(
        "{{\"mode\": \"train\", \"peak_mb\": {:.1}, \"before_model_mb\": {before:.1}}}",
        status_mb("VmHWM:")
    );
}
