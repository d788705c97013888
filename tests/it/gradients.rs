//! One training step against PyTorch: the loss and the gradients of inflated networks in train
//! mode (BatchNorm on batch statistics), through the crate's convolution and BatchNorm and
//! their backward passes on `Device::flex().autodiff()` (also with gradient checkpointing, and
//! Burn's own on ndarray), and the
//! running statistics after the step. References: `tests/fixtures/grads/*.safetensors`,
//! written by `make_fixtures.py grads` (torch 2.15.0, computed in float64).
//!
//! Tolerance: 1e-4 of each reference's largest magnitude, or 3 times the error of PyTorch's own
//! float32 step where that is larger: the bottleneck network's early gradients lose 3 to 4
//! digits in float32 in PyTorch too (2e-4 to 7e-4), because BatchNorm in train mode takes the
//! mean out of the gradient it passes back and the sums that remain cancel.

use resnet3d::burn::nn::loss::CrossEntropyLossConfig;
use resnet3d::burn::tensor::{Device, Int, Tensor, TensorData};
use resnet3d::{Block, ResNet3d, ResNet3dConfig};

use crate::common::*;

/// The values of a parameter's gradient in PyTorch's layout (a linear weight transposed).
fn gradient(model: &ResNet3d, name: &str, grads: &resnet3d::burn::tensor::Gradients) -> Vec<f32> {
    fn flat<const D: usize>(t: Option<Tensor<D>>, name: &str) -> Vec<f32> {
        let t = t.unwrap_or_else(|| panic!("{name} has no gradient"));
        t.into_data().try_to_vec::<f32>().unwrap()
    }
    fn block(stage: &[Block], i: usize) -> Vec<(&'static str, &resnet3d::Conv)> {
        match &stage[i] {
            Block::Basic(b) => vec![("conv1", &b.conv1), ("conv2", &b.conv2)],
            Block::Bottleneck(b) => vec![("conv1", &b.conv1), ("conv2", &b.conv2), ("conv3", &b.conv3)],
            _ => unreachable!("these tests build basic and bottleneck blocks only"),
        }
    }
    let stages = [&model.layer1, &model.layer2, &model.layer3, &model.layer4];
    match name {
        "conv1.weight" => flat(model.conv1.weight.val().grad(grads), name),
        "bn1.weight" => flat(model.bn1.gamma.val().grad(grads), name),
        "bn1.bias" => flat(model.bn1.beta.val().grad(grads), name),
        "fc.weight" => {
            let fc = model.fc.as_ref().unwrap();
            flat(fc.weight.val().grad(grads).map(|g| g.transpose()), name)
        }
        "fc.bias" => flat(
            model.fc.as_ref().unwrap().bias.as_ref().unwrap().val().grad(grads),
            name,
        ),
        _ => {
            // layer<s>.<b>.<module>.weight
            let parts: Vec<&str> = name.split('.').collect();
            let stage = stages[parts[0].trim_start_matches("layer").parse::<usize>().unwrap() - 1];
            let b: usize = parts[1].parse().unwrap();
            match parts[2] {
                "downsample" => {
                    let ds = match &stage[b] {
                        Block::Basic(x) => x.downsample.as_ref(),
                        Block::Bottleneck(x) => x.downsample.as_ref(),
                        _ => unreachable!("these tests build basic and bottleneck blocks only"),
                    }
                    .unwrap();
                    flat(ds.conv.weight.val().grad(grads), name)
                }
                "bn1" => {
                    let bn = match &stage[b] {
                        Block::Basic(x) => &x.bn1,
                        Block::Bottleneck(x) => &x.bn1,
                        _ => unreachable!("these tests build basic and bottleneck blocks only"),
                    };
                    flat(bn.gamma.val().grad(grads), name)
                }
                conv => {
                    let (_, c) = block(stage, b).into_iter().find(|(n, _)| *n == conv).unwrap();
                    flat(c.weight.val().grad(grads), name)
                }
            }
        }
    }
}

#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
#[test]
fn a_training_step_gives_pytorchs_loss_and_gradients() {
    for (backend, device) in [
        ("flex", Device::flex().autodiff()),
        // Burn's gradient checkpointing: the crate's BatchNorm outputs are recomputed in the
        // backward pass instead of kept (src/ops/norm.rs), to the same gradients.
        ("flex checkpointing", Device::flex().autodiff().gradient_checkpointing()),
        ("ndarray", Device::ndarray().autodiff()),
    ] {
        for (ckpt, config) in [
            ("r18_w4", ResNet3dConfig::resnet18()),
            ("r50_w4", ResNet3dConfig::resnet50()),
        ] {
            let file = fixtures().join(format!("grads/{ckpt}.safetensors"));
            let config = config.with_width(4).with_in_channels(1).with_num_classes(Some(10));
            let model =
                ResNet3d::from_imagenet(fixtures().join(format!("checkpoints/{ckpt}.pth")), &config, &device).unwrap();
            let x = pattern([2, 1, 32, 64, 64], &device);
            let y = Tensor::<1, Int>::from_data(TensorData::new(vec![3i64, 7], [2]), &device);
            let loss = CrossEntropyLossConfig::new().init(&device).forward(model.forward(x), y);
            let (_, expected) = reference(&file, "loss");
            let (_, got) = values(loss.clone());
            let err = rel_error(&got, &expected);
            println!("{backend} {ckpt} loss {} (PyTorch {}): {err:.1e}", got[0], expected[0]);
            assert!(err <= TOLERANCE, "{backend} {ckpt} loss: {err:e}");
            let grads = loss.backward();
            let st = std::fs::read(&file).unwrap();
            let names: Vec<String> = safetensors::SafeTensors::deserialize(&st)
                .unwrap()
                .names()
                .into_iter()
                .filter_map(|n| n.strip_prefix("grad.").map(String::from))
                .collect();
            assert!(names.len() >= 10, "{names:?}");
            // PyTorch's running statistics after the step: momentum 0.1, unbiased variance.
            for (key, state) in [
                ("running.bn1.mean", &model.bn1.running_mean),
                ("running.bn1.var", &model.bn1.running_var),
            ] {
                let (_, expected) = reference(&file, key);
                let err = rel_error(&values(state.value_sync()).1, &expected);
                println!("{backend} {ckpt} {key}: {err:.1e}");
                assert!(err <= TOLERANCE, "{backend} {ckpt} {key}: rel. error {err:e}");
            }
            for name in names {
                let (_, expected) = reference(&file, &format!("grad.{name}"));
                let got = gradient(&model, &name, &grads);
                let err = rel_error(&got, &expected);
                let (_, fp32) = reference(&file, &format!("fp32_error.{name}"));
                let tolerance = TOLERANCE.max(3.0 * fp32[0]);
                println!("{backend} {ckpt} {name}: {err:.1e} (PyTorch fp32: {:.1e})", fp32[0]);
                assert!(
                    err <= tolerance,
                    "{backend} {ckpt} gradient of {name}: rel. error {err:e} > {tolerance:e}"
                );
            }
        }
    }
}
