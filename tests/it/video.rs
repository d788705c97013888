//! torchvision's video ResNets: networks built by torchvision's own `VideoResNet` code
//! (`tests/fixtures/make_video.py`, width 4, 7 classes), their state dicts read as torchvision
//! saves them, compared stage by stage and on the logits with PyTorch's outputs.

use resnet3d::burn::tensor::Device;
use resnet3d::{Error, ResNet3d, ResNet3dConfig, Zoo};

use crate::common::*;

fn folder() -> std::path::PathBuf {
    fixtures().join("video")
}

/// `name` loaded with `config` (width 4, 7 classes) against PyTorch on `device`: every stage
/// and the logits; then the one-channel network (stem's RGB kernels summed) on grey input,
/// against torchvision's logits on that input copied to RGB. The largest error.
pub fn check_on(device: &Device, name: &str, config: ResNet3dConfig) -> f32 {
    let path = folder().join(format!("{name}.pth"));
    let file = folder().join(format!("{name}.safetensors"));
    let config = config.with_width(4).with_num_classes(Some(7));
    let (model, report) = ResNet3d::from_checkpoint_with_report(&path, &config, device).unwrap();
    assert_eq!(report.zoo, Zoo::TorchvisionVideo, "{name}");
    let x = fixture_tensor(&file, "input", device);
    let worst =
        check_stages(&file, model.features(x.clone()), name).max(check_tensor(&file, "logits", model.forward(x), name));

    let grey = config.with_in_channels(1);
    let (model, report) = ResNet3d::from_checkpoint_with_report(&path, &grey, device).unwrap();
    assert_eq!(report.stem_channels, (3, 1));
    assert!(report.to_string().contains("summed into 1"), "{report}");
    let x = fixture_tensor(&file, "input_grey", device);
    worst.max(check_tensor(
        &file,
        "logits_grey",
        model.forward(x),
        &format!("{name} grey"),
    ))
}

#[test]
fn torchvision_video_networks_match_torchvisions_code() {
    for (label, device) in cpu_devices() {
        for (name, config) in [
            ("r3d_18_w4", ResNet3dConfig::r3d_18()),
            ("mc3_18_w4", ResNet3dConfig::mc3_18()),
            ("r2plus1d_18_w4", ResNet3dConfig::r2plus1d_18()),
        ] {
            let err = check_on(&device, name, config);
            println!("{label} {name}: max rel. error {err:.2e}");
        }
    }
}

#[test]
fn video_networks_freeze_to_the_same_logits() {
    let device = Device::flex();
    for (name, config) in [
        ("r3d_18_w4", ResNet3dConfig::r3d_18()),
        ("mc3_18_w4", ResNet3dConfig::mc3_18()),
        ("r2plus1d_18_w4", ResNet3dConfig::r2plus1d_18()),
    ] {
        let path = folder().join(format!("{name}.pth"));
        let file = folder().join(format!("{name}.safetensors"));
        let config = config.with_width(4).with_num_classes(Some(7));
        let frozen = ResNet3d::from_checkpoint(&path, &config, &device)
            .unwrap()
            .freeze()
            .unwrap();
        let got = frozen.forward(fixture_tensor(&file, "input", &device)).unwrap();
        let err = check_tensor(&file, "logits", got, &format!("frozen {name}"));
        println!("frozen {name}: {err:.2e}");
    }
}

#[test]
fn a_video_file_with_another_video_preset_is_refused() {
    let device = Device::flex();
    let r3d = ResNet3dConfig::r3d_18().with_width(4).with_num_classes(Some(7));
    // An MC3 file with the R3D preset: its 1x3x3 kernels do not fit 3x3x3 ones.
    let path = folder().join("mc3_18_w4.pth");
    assert!(matches!(
        ResNet3d::from_checkpoint(&path, &r3d, &device),
        Err(Error::WrongShape { .. })
    ));
    // An R(2+1)D file with the R3D preset: another block kind.
    let path = folder().join("r2plus1d_18_w4.pth");
    assert!(matches!(
        ResNet3d::from_checkpoint(&path, &r3d, &device),
        Err(Error::ArchitectureMismatch { .. })
    ));
}

#[test]
fn full_width_video_presets_have_torchvisions_parameter_counts() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder().join("video.json")).unwrap()).unwrap();
    for (name, config) in [
        ("r3d_18", ResNet3dConfig::r3d_18()),
        ("mc3_18", ResNet3dConfig::mc3_18()),
        ("r2plus1d_18", ResNet3dConfig::r2plus1d_18()),
    ] {
        let expected = json[name]["parameters"].as_u64().unwrap() as usize;
        assert_eq!(config.parameter_count(), Some(expected), "{name}");
        // Full width, weights generated here: the stage shapes of torchvision's forward.
        let model = config.init(&Device::flex());
        if let Some(mids) = json[name]["mid_channels"].as_object() {
            // R(2+1)D's factorised convolutions: torchvision's middle widths, each of them.
            assert_eq!(model.conv1.weight.dims()[0] as u64, mids["stem"].as_u64().unwrap());
            let mut seen = 1;
            for (stage, blocks) in [&model.layer1, &model.layer2, &model.layer3, &model.layer4]
                .into_iter()
                .enumerate()
            {
                for (i, block) in blocks.iter().enumerate() {
                    let resnet3d::Block::Factorised(b) = block else {
                        panic!("{name}: not factorised")
                    };
                    for (conv, spatial) in [("conv1", &b.conv1.spatial), ("conv2", &b.conv2.spatial)] {
                        let key = format!("layer{}.{i}.{conv}.0", stage + 1);
                        assert_eq!(spatial.weight.dims()[0] as u64, mids[&key].as_u64().unwrap(), "{key}");
                        seen += 1;
                    }
                }
            }
            assert_eq!(seen, mids.len(), "{name}: every middle width checked");
        }
        let frozen = model.freeze().unwrap();
        let x = resnet3d::burn::tensor::Tensor::zeros([1, 3, 8, 32, 32], &Device::flex());
        let f = frozen.features(x.clone()).unwrap();
        let shapes = &json[name]["stage_shapes"];
        assert_stage_shapes(f, shapes, name);
        assert_eq!(frozen.forward(x).unwrap().dims(), [1, 400], "{name}");
    }
    let mean: Vec<f32> = json["kinetics"]["mean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let std: Vec<f32> = json["kinetics"]["std"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(mean, resnet3d::KINETICS_MEAN);
    assert_eq!(std, resnet3d::KINETICS_STD);
}

/// Training R(2+1)D-18 (train mode, factorised blocks and stem): the crate's convolution op
/// and its backward on `Device::flex().autodiff()` against Burn's own `conv3d` on
/// `Device::ndarray().autodiff()`: the loss and the gradients of the stem's two convolutions
/// and of layer2.0's factorised convolution, within 1e-4 of their scale.
#[test]
#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
fn r2plus1d_gradients_agree_between_the_crates_op_and_burns_conv3d() {
    let path = folder().join("r2plus1d_18_w4.pth");
    let file = folder().join("r2plus1d_18_w4.safetensors");
    let config = ResNet3dConfig::r2plus1d_18().with_width(4).with_num_classes(Some(7));
    let run = |device: Device| {
        let model = ResNet3d::from_checkpoint(&path, &config, &device).unwrap();
        let logits = model.forward(fixture_tensor(&file, "input", &device));
        let loss = (logits.clone() * logits).sum();
        let grads = loss.backward();
        let resnet3d::Block::Factorised(block) = &model.layer2[0] else {
            panic!("R(2+1)D builds factorised blocks");
        };
        let grad = |w: resnet3d::burn::tensor::Tensor<5>| values(w.grad(&grads).unwrap()).1;
        let temporal = model.stem_temporal.as_ref().unwrap();
        (
            values(loss.reshape([1, 1])).1,
            [
                grad(model.conv1.weight.val()),
                grad(temporal.conv.weight.val()),
                grad(block.conv1.spatial.weight.val()),
                grad(block.conv1.temporal.weight.val()),
            ],
        )
    };
    let (loss, grads) = run(Device::flex().autodiff());
    let (loss_burn, grads_burn) = run(Device::ndarray().autodiff());
    check_gradients(
        (&loss, &loss_burn),
        &[
            "conv1",
            "stem_temporal.conv",
            "layer2.0.conv1.spatial",
            "layer2.0.conv1.temporal",
        ],
        &grads,
        &grads_burn,
    );
}
