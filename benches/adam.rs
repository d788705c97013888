//! Why Burn's `Adam` costs a fine-tuning step about 200 ms on flex, and the crate's
//! `FusedAdam` 15 to 30: one update of ResNet3d-18's 33,161,026 parameters as one tensor,
//! through either optimizer's `step` (the state carried from step to step, as in training),
//! and the single element-wise operations Burn's update is made of.
//!
//! ```text
//! cargo bench --bench adam
//! ```
//!
//! Keys: `adam/step/{burn,fused}` and `adam/op/...` (one operation on a 33 M tensor: on a
//! tensor that is not shared, which flex may update in place, and on a shared one, which
//! needs a new buffer).

use criterion::{Criterion, criterion_group, criterion_main};
use resnet3d::burn::optim::{AdamConfig, Optimizer};
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::train::FusedAdamConfig;

/// ResNet3d-18's parameter count (one input channel, two classes).
const PARAMETERS: usize = 33_161_026;

fn tensor(seed: f32, device: &Device) -> Tensor<1> {
    let values: Vec<f32> = (0..PARAMETERS)
        .map(|i| ((i as f32) * 0.37 + seed).sin() * 1e-2)
        .collect();
    Tensor::from_data(TensorData::new(values, [PARAMETERS]), device)
}

fn adam(c: &mut Criterion) {
    let device = Device::flex();
    let grad = tensor(1.0, &device);
    let mut group = c.benchmark_group("adam");
    group.sample_size(10);

    let burn = AdamConfig::new().build();
    let (mut weights, mut state) = (Some(tensor(0.0, &device)), None);
    group.bench_function("step/burn", |b| {
        b.iter(|| {
            let w = weights.take().expect("put back every step");
            let (w, s) = burn.step(1e-4, w, grad.clone(), state.take());
            (weights, state) = (Some(w), s);
        })
    });

    let fused = FusedAdamConfig::new().build();
    let (mut weights, mut state) = (Some(tensor(0.0, &device)), None);
    group.bench_function("step/fused", |b| {
        b.iter(|| {
            let w = weights.take().expect("put back every step");
            let (w, s) = fused.step(1e-4, w, grad.clone(), state.take());
            (weights, state) = (Some(w), s);
        })
    });

    // Burn's update is 13 such passes; each reads one or two 133 MB tensors and writes one.
    let mut owned = Some(tensor(2.0, &device));
    group.bench_function("op/mul_scalar_unshared", |b| {
        b.iter(|| owned = Some(owned.take().expect("put back").mul_scalar(0.999)))
    });
    let shared = tensor(3.0, &device);
    group.bench_function("op/mul_scalar_shared", |b| b.iter(|| shared.clone().mul_scalar(0.999)));
    group.bench_function("op/add_shared", |b| b.iter(|| shared.clone().add(grad.clone())));
    group.bench_function("op/sqrt_shared", |b| b.iter(|| shared.clone().sqrt()));
    group.finish();
}

criterion_group!(benches, adam);
criterion_main!(benches);
