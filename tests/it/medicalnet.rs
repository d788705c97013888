//! MedicalNet (Tencent's Med3D) checkpoints: networks built by MedicalNet's own model code
//! (`tests/fixtures/make_medicalnet.py`, width 4, or 2 for MedicalNet-34 and the deepest,
//! MedicalNet-200), saved as MedicalNet releases them
//! (`{'state_dict': {'module.' + name: tensor}}`), compared stage by stage with PyTorch's
//! outputs; and the full-width presets against the parameter counts of MedicalNet's code.

use resnet3d::burn::tensor::{Device, Tensor};
use resnet3d::{Error, FrozenResNet3d, ResNet3d, ResNet3dConfig, Shortcut, Zoo};
use serde_json::Value;

use crate::common::*;

/// (file stem, depth, whether the file holds MedicalNet's `conv_seg` head).
const CASES: [(&str, usize, bool); 5] = [
    ("medicalnet18_w4", 18, false),
    ("medicalnet50_w4", 50, false),
    ("medicalnet10_w4", 10, true),
    ("medicalnet34_w2", 34, false),
    ("medicalnet200_w2", 200, false),
];

fn folder() -> std::path::PathBuf {
    fixtures().join("medicalnet")
}

fn config(depth: usize) -> ResNet3dConfig {
    ResNet3dConfig::medicalnet(depth).unwrap().with_width(4)
}

/// The configuration of the fixture `name` (`medicalnet<depth>_w<width>`).
fn config_of(name: &str, depth: usize) -> ResNet3dConfig {
    let width = name.rsplit_once("_w").and_then(|(_, w)| w.parse().ok()).expect(name);
    ResNet3dConfig::medicalnet(depth).unwrap().with_width(width)
}

/// The stem, the four stages and the pooled features against PyTorch; the largest error.
fn compare(name: &str, features: resnet3d::Features, pooled: Tensor<2>) -> f32 {
    let file = folder().join(format!("{name}.safetensors"));
    check_stages(&file, features, name).max(check_tensor(&file, "pooled", pooled, name))
}

/// One case on `device`: the Burn model against PyTorch, its largest error.
pub fn check_on(device: &Device, name: &str, depth: usize) -> f32 {
    let path = folder().join(format!("{name}.pth"));
    let model = ResNet3d::from_checkpoint(&path, &config_of(name, depth), device).unwrap();
    let x = fixture_tensor(&folder().join(format!("{name}.safetensors")), "input", device);
    compare(name, model.features(x.clone()), model.forward(x))
}

#[test]
fn medicalnet_checkpoints_match_medicalnets_code() {
    for (label, device) in cpu_devices() {
        for (name, depth, seg_head) in CASES {
            let path = folder().join(format!("{name}.pth"));
            let (model, report) =
                ResNet3d::from_checkpoint_with_report(&path, &config_of(name, depth), &device).unwrap();
            assert_eq!(report.zoo, Zoo::MedicalNet, "{name}");
            let ignored: Vec<&str> = report.ignored.iter().map(|(n, _)| n.as_str()).collect();
            // conv_seg: ConvTranspose3d (weight, bias), BatchNorm (5), Conv3d, BatchNorm (5), Conv3d.
            assert_eq!(
                ignored.iter().filter(|n| n.starts_with("conv_seg.")).count(),
                if seg_head { 14 } else { 0 },
                "{name}: {ignored:?}"
            );
            assert!(report.to_string().contains("MedicalNet"), "{report}");
            let x = fixture_tensor(&folder().join(format!("{name}.safetensors")), "input", &device);
            let err = check_on(&device, name, depth);
            let frozen = model.freeze().unwrap();
            let frozen_err = compare(name, frozen.features(x.clone()).unwrap(), frozen.forward(x).unwrap());
            println!("{label} {name}: max rel. error {err:.2e}, frozen {frozen_err:.2e}");
        }
    }
}

/// The portable kernel of the frozen network (what runs without AVX-512).
#[test]
fn medicalnet_on_the_portable_kernel() {
    let (name, depth, _) = CASES[0];
    let path = folder().join(format!("{name}.pth"));
    let device = Device::flex();
    let model = ResNet3d::from_checkpoint(&path, &config(depth), &device).unwrap();
    let x = fixture_tensor(&folder().join(format!("{name}.safetensors")), "input", &device);
    let portable: FrozenResNet3d = model.freeze_portable().unwrap();
    compare(
        name,
        portable.features(x.clone()).unwrap(),
        portable.forward(x).unwrap(),
    );
}

/// Training: MedicalNet-18 in train mode (dilated convolutions, parameter-free shortcuts) on
/// `Device::flex().autodiff()`, the crate's convolution op and its backward, against Burn's own
/// `conv3d`, slicing and concatenation on `Device::ndarray().autodiff()`: the loss and the
/// gradients of the stem, of a convolution dilated by 2 (layer3) and by 4 (layer4), within
/// 1e-4 of their scale.
#[test]
#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
fn medicalnet_gradients_agree_between_the_crates_op_and_burns_conv3d() {
    let (name, depth, _) = CASES[0];
    let path = folder().join(format!("{name}.pth"));
    let run = |device: Device| {
        let model = ResNet3d::from_checkpoint(&path, &config(depth), &device).unwrap();
        let x = fixture_tensor(&folder().join(format!("{name}.safetensors")), "input", &device);
        let pooled = model.forward(x);
        let loss = (pooled.clone() * pooled).sum();
        let grads = loss.backward();
        let conv = |block: &resnet3d::Block| match block {
            resnet3d::Block::Basic(b) => b.conv1.weight.val(),
            resnet3d::Block::Bottleneck(b) => b.conv2.weight.val(),
            _ => unreachable!("these tests build basic and bottleneck blocks only"),
        };
        let grad = |w: Tensor<5>| values(w.grad(&grads).unwrap()).1;
        (
            values(loss.reshape([1, 1])).1,
            [
                grad(model.conv1.weight.val()),
                grad(conv(&model.layer3[0])),
                grad(conv(&model.layer4[1])),
            ],
        )
    };
    let (loss, grads) = run(Device::flex().autodiff());
    let (loss_burn, grads_burn) = run(Device::ndarray().autodiff());
    check_gradients(
        (&loss, &loss_burn),
        &["conv1", "layer3.0.conv1", "layer4.1.conv1"],
        &grads,
        &grads_burn,
    );
}

#[test]
fn a_medicalnet_file_with_another_preset_names_the_preset_to_use() {
    let device = Device::flex();
    let path = folder().join("medicalnet18_w4.pth");
    let plain = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(None);
    match ResNet3d::from_checkpoint(&path, &plain, &device) {
        Err(
            err @ Error::ZooMismatch {
                zoo: Zoo::MedicalNet, ..
            },
        ) => {
            let text = err.to_string();
            assert!(text.contains("ResNet3dConfig::medicalnet(18)"), "{text}");
            assert!(text.contains("type-A"), "{text}");
        }
        other => panic!("expected ZooMismatch, got {other:?}"),
    }
    // MedicalNet's stages but projection shortcuts: still the wrong network for this file.
    let projections = config(18).with_shortcut(Shortcut::Projection);
    assert!(matches!(
        ResNet3d::from_checkpoint(&path, &projections, &device),
        Err(Error::ZooMismatch { .. })
    ));
    // A file with MedicalNet's segmentation head and torchvision's stages.
    let path = folder().join("medicalnet10_w4.pth");
    let torchvision_stages = config(10)
        .with_stage_strides([1, 2, 2, 2])
        .with_stage_depth_strides([1, 2, 2, 2])
        .with_stage_dilations([1, 1, 1, 1]);
    match ResNet3d::from_checkpoint(&path, &torchvision_stages, &device) {
        Err(err @ Error::ZooMismatch { .. }) => {
            assert!(err.to_string().contains("ResNet3dConfig::medicalnet(10)"), "{err}");
            assert!(err.to_string().contains("conv_seg"), "{err}");
        }
        other => panic!("expected ZooMismatch, got {other:?}"),
    }
    // Parameter-free shortcuts asked of a file that has projections.
    let path = folder().join("medicalnet50_w4.pth");
    match ResNet3d::from_checkpoint(&path, &config(50).with_shortcut(Shortcut::ZeroPad), &device) {
        Err(Error::InvalidConfig {
            field: "shortcut",
            reason,
        }) => assert!(reason.contains("Projection"), "{reason}"),
        other => panic!("expected InvalidConfig on shortcut, got {other:?}"),
    }
    assert!(matches!(
        ResNet3dConfig::medicalnet(19),
        Err(Error::InvalidConfig { field: "depth", .. })
    ));
}

/// Full width (64), no committed weights: every depth's parameter count equals that of
/// MedicalNet's own constructor (without `conv_seg`), and the 18 and 50 networks' stage shapes
/// on `[1, 1, 32, 64, 64]` equal its forward's.
#[test]
fn full_width_medicalnet_presets_have_medicalnets_shapes() {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(folder().join("medicalnet.json")).unwrap()).unwrap();
    let depths = json["models"].as_array().unwrap();
    assert_eq!(depths.len(), 7);
    let device = Device::flex();
    for entry in depths {
        let depth = entry["depth"].as_u64().unwrap() as usize;
        let config = ResNet3dConfig::medicalnet(depth).unwrap();
        assert_eq!(
            config.parameter_count(),
            Some(entry["parameters"].as_u64().unwrap() as usize),
            "MedicalNet-{depth}"
        );
        let shortcut = if config.shortcut == Shortcut::ZeroPad { "A" } else { "B" };
        assert_eq!(entry["shortcut"].as_str().unwrap(), shortcut, "MedicalNet-{depth}");
        let Some(shapes) = entry.get("stage_shapes") else {
            continue;
        };
        let model = config.init(&device);
        let frozen = model.freeze().unwrap();
        let f = frozen.features(Tensor::zeros([1, 1, 32, 64, 64], &device)).unwrap();
        assert_stage_shapes(f, shapes, &format!("MedicalNet-{depth}"));
        // feature_info states the same strides.
        let info = config.feature_info();
        assert_eq!(info[3].stride, [8, 8, 8]);
        assert_eq!(info[4].stride, [8, 8, 8]);
    }
}

/// MedicalNet's stage settings are config fields: `from_imagenet` builds them from a 2-D
/// torchvision checkpoint too (dilated layer3/layer4 at the resolution of layer2), and the
/// frozen network computes the same as the Burn model there.
#[test]
fn imagenet_weights_inflate_into_medicalnets_stages() {
    let device = Device::flex();
    let config = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(Some(2))
        .with_stage_strides([1, 2, 1, 1])
        .with_stage_depth_strides([1, 2, 1, 1])
        .with_stage_dilations([1, 1, 2, 4]);
    let model = ResNet3d::from_imagenet(fixtures().join("checkpoints/r18_w4.pth"), &config, &device).unwrap();
    let x = fixture_tensor(&folder().join("medicalnet18_w4.safetensors"), "input", &device);
    let f = model.features(x.clone());
    assert_eq!(f.layer2.dims()[2..], f.layer4.dims()[2..]);
    assert_eq!(config.feature_info()[4].stride, [8, 8, 8]);
    let frozen = model.freeze().unwrap();
    let (_, expected) = values(model.forward(x.clone()));
    let (_, got) = values(frozen.forward(x).unwrap());
    let err = rel_error(&got, &expected);
    assert!(err <= TOLERANCE, "frozen vs Burn model: {err:.2e}");
}
