//! `FusedAdam` against PyTorch's `torch.optim.Adam` (computed in float64):
//! `tests/fixtures/adam.safetensors`, written by `make_fixtures.py adam` (torch 2.15.0). Three
//! steps on parameters `pattern(shape)` with gradients `0.1 * pattern([3, shape])[t]`, on flex
//! (the fused update) and ndarray (Burn's Adam underneath), with and without weight decay.
//!
//! Tolerance: 1e-6 of the largest parameter (about 1.5): float32 rounding of three updates of
//! at most `lr` each.

use resnet3d::ResNet3dConfig;
use resnet3d::burn::optim::decay::WeightDecayConfig;
use resnet3d::burn::optim::{AdamConfig, GradientsParams, Optimizer};
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::train::{FusedAdam, FusedAdamConfig};

use crate::common::*;

/// The runs of `make_fixtures.py`'s ADAM_RUNS: `(name, lr, beta_1, beta_2, epsilon, weight decay)`.
const RUNS: [(&str, f64, f32, f32, f32, f32); 2] = [
    ("defaults", 1e-2, 0.9, 0.999, 1e-5, 0.0),
    ("decay", 3e-3, 0.8, 0.99, 1e-6, 0.05),
];

/// Three steps of `optimizer` on `pattern(shape)`; the parameter's values after them.
fn three_steps<const D: usize>(optimizer: &FusedAdam, lr: f64, shape: [usize; D], device: &Device) -> Vec<f32> {
    let len: usize = shape.iter().product();
    let grads: Vec<f32> = values(pattern([3 * len], device)).1;
    let mut p = pattern(shape, device);
    let mut state = None;
    for t in 0..3 {
        let g: Vec<f32> = grads[t * len..(t + 1) * len].iter().map(|v| 0.1 * v).collect();
        let g = Tensor::<D>::from_data(TensorData::new(g, shape), device);
        let (next, s) = optimizer.step(lr, p, g, state);
        (p, state) = (next, s);
    }
    values(p).1
}

#[test]
fn fused_adam_gives_pytorchs_parameters() {
    let file = fixtures().join("adam.safetensors");
    for (backend, device) in cpu_devices() {
        for (run, lr, beta_1, beta_2, epsilon, decay) in RUNS {
            let config = FusedAdamConfig::new()
                .with_beta_1(beta_1)
                .with_beta_2(beta_2)
                .with_epsilon(epsilon)
                .with_weight_decay((decay > 0.0).then(|| WeightDecayConfig::new(decay)));
            let optimizer = config.build();
            let got = [
                ("conv", three_steps(&optimizer, lr, [6, 5, 3, 3, 3], &device)),
                ("bias", three_steps(&optimizer, lr, [7], &device)),
                ("fc", three_steps(&optimizer, lr, [3, 5], &device)),
            ];
            for (name, got) in got {
                let (_, want) = reference(&file, &format!("{run}.{name}"));
                let err = rel_error(&got, &want);
                assert!(err <= 1e-6, "{backend} {run} {name}: {err:e}");
            }
        }
    }
}

/// On a whole network through Burn's module optimizer, the fused update and Burn's Adam agree
/// step for step when given the same gradients (those of the first network, computed twice).
#[test]
fn fused_adam_steps_a_network_as_burns_adam_does() {
    let device = Device::flex().autodiff();
    let config = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(Some(3));
    let x = pattern([2, 1, 8, 16, 16], &device);
    let grads = |model: &resnet3d::ResNet3d| {
        let loss = model.forward(x.clone()).powf_scalar(2.0).mean();
        GradientsParams::from_grads(loss.backward(), model)
    };
    let start = config.init(&device);
    let (mut fused, mut burn) = (FusedAdamConfig::new().init(), AdamConfig::new().init());
    let (mut a, mut b) = (start.clone(), start.clone());
    for _ in 0..3 {
        let (ga, gb) = (grads(&a), grads(&a));
        a = fused.step(1e-3, a, ga);
        b = burn.step(1e-3, b, gb);
    }
    for (name, wa, wb, w0) in [
        (
            "conv1",
            a.conv1.weight.val(),
            b.conv1.weight.val(),
            start.conv1.weight.val(),
        ),
        ("layer4.1.conv2", conv2(&a), conv2(&b), conv2(&start)),
    ] {
        let (wa, wb, w0) = (values(wa).1, values(wb).1, values(w0).1);
        let err = rel_error(&wa, &wb);
        assert!(err <= 1e-6, "{name} after three steps: {err:e}");
        assert!(rel_error(&wa, &w0) > 1e-3, "{name} did not move");
    }
}

fn conv2(model: &resnet3d::ResNet3d) -> Tensor<5> {
    match &model.layer4[1] {
        resnet3d::Block::Basic(b) => b.conv2.weight.val(),
        resnet3d::Block::Bottleneck(b) => b.conv2.weight.val(),
        _ => unreachable!("these tests build basic and bottleneck blocks only"),
    }
}
