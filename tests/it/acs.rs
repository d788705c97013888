//! ACS convolutions (`Inflation::Acs`) against ACSConv 0.1.1's own converter and operator
//! (`tests/fixtures/make_acs.py`): the repository's 2-D ResNet-18 (width 4, 10 classes)
//! converted by `ACSConverter`, every stage and the logits on a `[2, 3, 15, 20, 18]` input.

use resnet3d::burn::tensor::Device;
use resnet3d::{Error, FrozenResNet3d, Inflation, ResNet3d, ResNet3dConfig};

use crate::common::*;

fn config() -> ResNet3dConfig {
    ResNet3dConfig::resnet18()
        .with_width(4)
        .with_num_classes(Some(10))
        .with_inflation(Inflation::Acs)
}

fn paths() -> (std::path::PathBuf, std::path::PathBuf) {
    (
        fixtures().join("checkpoints/r18_w4.pth"),
        fixtures().join("acs/r18_w4_acs.safetensors"),
    )
}

#[test]
fn acs_inflation_matches_acsconv() {
    let (checkpoint, file) = paths();
    for (label, device) in cpu_devices() {
        let model = ResNet3d::from_imagenet(&checkpoint, &config(), &device).unwrap();
        let x = fixture_tensor(&file, "input", &device);
        let err = check_stages(&file, model.features(x.clone()), "acs").max(check_tensor(
            &file,
            "logits",
            model.forward(x.clone()),
            "acs",
        ));
        let frozen: FrozenResNet3d = model.freeze().unwrap();
        let frozen_err = check_stages(&file, frozen.features(x.clone()).unwrap(), "frozen acs").max(check_tensor(
            &file,
            "logits",
            frozen.forward(x).unwrap(),
            "frozen acs",
        ));
        println!("{label} ACS: max rel. error {err:.2e}, frozen {frozen_err:.2e}");
    }
}

#[test]
fn acs_needs_cubic_kernels() {
    let (checkpoint, _) = paths();
    let config = config().with_block_depth_kernel(1);
    match ResNet3d::from_imagenet(&checkpoint, &config, &Device::flex()) {
        Err(Error::InvalidConfig {
            field: "inflation",
            reason,
        }) => assert!(reason.contains("cubic"), "{reason}"),
        other => panic!("expected InvalidConfig on inflation, got {other:?}"),
    }
}
