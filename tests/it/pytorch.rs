//! The inflated networks against PyTorch's own Conv3d/BatchNorm3d/MaxPool3d
//! (tests/fixtures/make_fixtures.py). Tolerance: max abs error <= 1e-4 of the reference's
//! max abs value, for the logits and for all five feature maps.

use resnet3d::ResNet3d;
use resnet3d::burn::tensor::Device;

use crate::common::*;

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

/// The frozen CPU engine (BatchNorm folded, channels-last, tiled GEMM) against PyTorch, on
/// every inflated and native case: the same tolerance as the Burn model.
#[test]
fn frozen_networks_match_pytorch() {
    let device = Device::flex();
    let manifest = manifest();
    for case in manifest["cases"].as_array().unwrap() {
        let checkpoint = &manifest["checkpoints"][case["checkpoint"].as_str().unwrap()];
        let path = fixtures().join(checkpoint["file"].as_str().unwrap());
        let model = ResNet3d::from_imagenet(&path, &config_of(case), &device).unwrap();
        let err = check_case(case, &model.freeze().unwrap(), &device);
        let portable = check_case(case, &model.freeze_portable().unwrap(), &device);
        println!(
            "frozen {:<34} max rel. error {err:.2e}, portable kernel {portable:.2e}",
            case["name"].as_str().unwrap()
        );
    }
    for case in manifest["native"].as_array().unwrap() {
        let path = fixtures().join(case["file"].as_str().unwrap());
        // Consuming the model: the same network, parameters freed block by block.
        let frozen = ResNet3d::from_checkpoint(&path, &config_of(case), &device)
            .unwrap()
            .into_frozen()
            .unwrap();
        let err = check_case(case, &frozen, &device);
        println!("frozen {:<34} max rel. error {err:.2e}", case["name"].as_str().unwrap());
    }
}

#[test]
fn pth_and_safetensors_of_one_network_give_the_same_model() {
    let device = Device::flex();
    let config = resnet3d::ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(Some(10));
    let (from_pth, pth_report) =
        ResNet3d::from_imagenet_with_report(fixtures().join("checkpoints/r18_w4.pth"), &config, &device).unwrap();
    let (from_st, st_report) =
        ResNet3d::from_imagenet_with_report(fixtures().join("checkpoints/r18_w4.safetensors"), &config, &device)
            .unwrap();
    // 20 kernels, 20 BatchNorms of 4 tensors, the head's 2: every tensor but the counters.
    assert_eq!(pth_report.tensors_used, 102);
    assert_eq!(st_report.tensors_used, 102);
    assert_eq!(pth_report.ignored.len(), 20, "the .pth's num_batches_tracked");
    assert!(st_report.ignored.is_empty(), "timm's safetensors has no counters");
    let x = pattern([1, 1, 8, 32, 32], &device);
    let (_, a) = values(from_pth.forward(x.clone()));
    let (_, b) = values(from_st.forward(x));
    assert_eq!(a, b, "same weights, same arithmetic: bit-identical");
}

#[test]
fn native_checkpoints_with_or_without_a_head() {
    let device = Device::flex();
    let case = &manifest()["native"][0];
    let config = config_of(case);
    let mut weights = resnet3d::Weights::from_file(fixtures().join(case["file"].as_str().unwrap())).unwrap();

    // The checkpoint's head is dropped, and reported, when the config has none.
    let (_, report) = resnet3d::load_3d(&weights, &config.clone().with_num_classes(None), &device).unwrap();
    assert_eq!(report.head, resnet3d::Head::Absent);
    assert!(report.ignored.iter().any(|(n, _)| n == "fc.weight"), "{report}");

    // A headless checkpoint gets a fresh head of the configured size.
    weights.remove("fc.weight").unwrap();
    weights.remove("fc.bias").unwrap();
    let (model, report) = resnet3d::load_3d(&weights, &config.with_num_classes(Some(3)), &device).unwrap();
    assert_eq!(
        report.head,
        resnet3d::Head::Fresh {
            checkpoint_classes: None,
            classes: 3
        }
    );
    let x = pattern([1, 1, 8, 16, 16], &device);
    assert_eq!(model.forward(x).dims(), [1, 3]);
}
