//! Why Burn's `Adam` costs a fine-tuning step on flex far more than the crate's `FusedAdam`:
//! one optimizer step over ResNet3d-18's 62 parameter tensors (33,161,026 values) with fresh
//! gradients (as after a backward pass), through Burn's module optimizer with either
//! optimizer, and the element-wise operations Burn's update is made of, on a tensor that is
//! not shared (which flex updates in place) and on a shared one (which needs a new buffer).
//!
//! ```text
//! cargo bench --bench adam
//! ```
//!
//! Keys: `adam/step/resnet18/{burn,fused}`, `adam/train_step/resnet18/{burn,fused}` (the
//! whole step of `benches/train.rs`, 2x1x32x96x96) and `adam/op/<op>_{unshared,shared}` (one
//! operation on 33 M values).

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use resnet3d::ResNet3dConfig;
use resnet3d::burn::module::{Module, ModuleVisitor, Param, ParamId};
use resnet3d::burn::nn::loss::CrossEntropyLossConfig;
use resnet3d::burn::optim::{AdamConfig, GradientsParams};
use resnet3d::burn::tensor::{Device, Int, Tensor, TensorData};
use resnet3d::train::FusedAdamConfig;

/// ResNet3d-18's parameter count (one input channel, two classes).
const PARAMETERS: usize = 33_161_026;

fn values(len: usize, seed: f32) -> Vec<f32> {
    (0..len).map(|i| ((i as f32) * 0.37 + seed).sin() * 1e-2).collect()
}

/// The id and shape of every parameter that trains.
struct Shapes(Vec<(ParamId, Vec<usize>)>);

impl ModuleVisitor for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // The parameters that train (not BatchNorm's running statistics).
        if param.val().is_require_grad() {
            self.0.push((param.id, param.val().dims().to_vec()));
        }
    }
}

/// Gradients for every parameter, each in its own new buffer.
fn fresh_grads(shapes: &[(ParamId, Vec<usize>)], device: &Device) -> GradientsParams {
    let mut grads = GradientsParams::new();
    for (i, (id, shape)) in shapes.iter().enumerate() {
        let len = shape.iter().product();
        let t = Tensor::<1>::from_data(TensorData::new(values(len, i as f32), [len]), device);
        match shape.len() {
            1 => grads.register(*id, t),
            2 => grads.register(*id, t.reshape([shape[0], shape[1]])),
            5 => grads.register(*id, t.reshape([shape[0], shape[1], shape[2], shape[3], shape[4]])),
            d => panic!("a parameter of {d} dimensions"),
        }
    }
    grads
}

fn adam(c: &mut Criterion) {
    let mut group = c.benchmark_group("adam");
    group.sample_size(10);

    let device = Device::flex().autodiff();
    let config = ResNet3dConfig::resnet18().with_in_channels(1).with_num_classes(Some(2));
    let plain = device.clone().without_autodiff();
    for name in ["burn", "fused"] {
        let mut model = Some(config.init(&device));
        let mut shapes = Shapes(Vec::new());
        model.as_ref().expect("just built").visit(&mut shapes);
        let count: usize = shapes.0.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!((shapes.0.len(), count), (62, PARAMETERS));
        let mut optimizer = match name {
            "burn" => AdamConfig::new().init(),
            _ => FusedAdamConfig::new().init(),
        };
        group.bench_function(format!("step/resnet18/{name}"), |b| {
            b.iter_batched(
                || fresh_grads(&shapes.0, &plain),
                |grads| {
                    let m = model.take().expect("put back every step");
                    model = Some(optimizer.step(1e-4, m, grads));
                },
                BatchSize::PerIteration,
            )
        });
    }

    // The whole fine-tuning step of benches/train.rs (2x1x32x96x96) with either optimizer.
    let x = {
        let shape = [2, 1, 32, 96, 96];
        let len = shape.iter().product();
        let v: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin()).collect();
        Tensor::<5>::from_data(TensorData::new(v, shape), &device)
    };
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &device);
    let loss = CrossEntropyLossConfig::new().init(&device);
    for name in ["burn", "fused"] {
        let mut model = Some(config.init(&device));
        let mut optimizer = match name {
            "burn" => AdamConfig::new().init(),
            _ => FusedAdamConfig::new().init(),
        };
        group.bench_function(format!("train_step/resnet18/{name}"), |b| {
            b.iter(|| {
                let m = model.take().expect("put back every step");
                let l = loss.forward(m.forward(x.clone()), y.clone());
                let grads = GradientsParams::from_grads(l.backward(), &m);
                model = Some(optimizer.step(1e-4, m, grads));
            })
        });
    }

    // Burn's update is 13 such passes over each parameter.
    let plain = Device::flex();
    let tensor = |seed| Tensor::<1>::from_data(TensorData::new(values(PARAMETERS, seed), [PARAMETERS]), &plain);
    let mut owned = Some(tensor(2.0));
    group.bench_function("op/mul_scalar_unshared", |b| {
        b.iter(|| owned = Some(owned.take().expect("put back").mul_scalar(0.999)))
    });
    let shared = tensor(3.0);
    let other = tensor(4.0);
    group.bench_function("op/mul_scalar_shared", |b| b.iter(|| shared.clone().mul_scalar(0.999)));
    group.bench_function("op/add_shared", |b| b.iter(|| shared.clone().add(other.clone())));
    group.bench_function("op/sqrt_shared", |b| b.iter(|| shared.clone().sqrt()));
    group.finish();
}

criterion_group!(benches, adam);
criterion_main!(benches);
