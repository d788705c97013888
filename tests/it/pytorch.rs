//! The inflated networks against PyTorch's own Conv3d/BatchNorm3d/MaxPool3d
//! (tests/fixtures/make_fixtures.py). Tolerance: max abs error <= 1e-4 of the reference's
//! max abs value, for the logits and for all five feature maps.

use resnet3d::ResNet3d;
use resnet3d::burn::tensor::Device;
use serde_json::Value;

use crate::common::*;

const TOLERANCE: f32 = 1e-4;

fn input_shape(case: &Value) -> [usize; 5] {
    let v: Vec<usize> = case["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    [v[0], v[1], v[2], v[3], v[4]]
}

/// Runs one case and returns the largest relative error over its outputs.
fn check_case(case: &Value, model: &ResNet3d, device: &Device) -> f32 {
    let name = case["name"].as_str().unwrap();
    let file = fixtures().join("cases").join(format!("{name}.safetensors"));
    let x = pattern(input_shape(case), device);
    let features = model.features(x.clone());
    let head = if case["config"]["num_classes"].is_null() {
        "features"
    } else {
        "logits"
    };
    let outputs = [
        ("stem", values(features.stem)),
        ("layer1", values(features.layer1)),
        ("layer2", values(features.layer2)),
        ("layer3", values(features.layer3)),
        ("layer4", values(features.layer4)),
        (head, values(model.forward(x))),
    ];
    let mut worst = 0f32;
    for (key, (shape, got)) in outputs {
        let (ref_shape, expected) = reference(&file, key);
        assert_eq!(shape, ref_shape, "{name}: shape of {key}");
        let err = rel_error(&got, &expected);
        assert!(err <= TOLERANCE, "{name}: {key} rel. error {err:e} > {TOLERANCE:e}");
        worst = worst.max(err);
    }
    worst
}

fn inflated_cases_match(label: &str, device: &Device) {
    let manifest = manifest();
    for case in manifest["cases"].as_array().unwrap() {
        let checkpoint = &manifest["checkpoints"][case["checkpoint"].as_str().unwrap()];
        let path = fixtures().join(checkpoint["file"].as_str().unwrap());
        let (model, report) = ResNet3d::from_imagenet_with_report(&path, &config_of(case), device)
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        assert!(report.tensors_used > 0);
        let err = check_case(case, &model, device);
        println!(
            "{label} {:<34} max rel. error {err:.2e}",
            case["name"].as_str().unwrap()
        );
    }
}

fn native_cases_match(label: &str, device: &Device) {
    for case in manifest()["native"].as_array().unwrap() {
        let path = fixtures().join(case["file"].as_str().unwrap());
        let model = ResNet3d::from_checkpoint(&path, &config_of(case), device)
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        let err = check_case(case, &model, device);
        println!(
            "{label} {:<34} max rel. error {err:.2e}",
            case["name"].as_str().unwrap()
        );
    }
}

#[test]
fn inflated_networks_match_pytorch_on_flex() {
    inflated_cases_match("flex", &Device::flex());
}

#[test]
fn inflated_networks_match_pytorch_on_ndarray() {
    inflated_cases_match("ndarray", &cpu_devices()[1].1);
}

#[test]
fn native_3d_checkpoints_in_f16_and_bf16_match_pytorch() {
    for (label, device) in cpu_devices() {
        native_cases_match(label, &device);
    }
}

#[test]
fn pth_and_safetensors_of_one_network_give_the_same_model() {
    let device = Device::flex();
    let config = resnet3d::ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(Some(10));
    let from_pth = ResNet3d::from_imagenet(fixtures().join("checkpoints/r18_w4.pth"), &config, &device).unwrap();
    let from_st = ResNet3d::from_imagenet(fixtures().join("checkpoints/r18_w4.safetensors"), &config, &device).unwrap();
    let x = pattern([1, 1, 8, 32, 32], &device);
    let (_, a) = values(from_pth.forward(x.clone()));
    let (_, b) = values(from_st.forward(x));
    assert_eq!(a, b, "same weights, same arithmetic: bit-identical");
}
