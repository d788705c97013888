//! The opt-in check of a real-depth third-party inflation: a ResNet-152 inflated by
//! I3ResNet's own code (hassony2/inflated_convnets_pytorch), made by
//! `tests/fixtures/make_i3resnet.py` into the folder `RESNET3D_I3RESNET152` names (about
//! 730 MB, not committed; from ImageNet weights you have, or seeded random ones):
//!
//! ```sh
//! RESNET3D_I3RESNET152=/tmp/i3resnet152 cargo test --test it -- --ignored i3resnet
//! ```

use std::path::PathBuf;

use resnet3d::burn::tensor::Device;
use resnet3d::{Inflation, ResNet3d, ResNet3dConfig, Zoo};

use crate::common::*;

/// I3ResNet's network as a configuration: a 3x7x7 stem with depth stride 1, the 3x3x3 max
/// pool with depth stride 2, 3x3x3 block convolutions striding depth as the stage does,
/// kernels inflated into their middle slice.
fn config() -> ResNet3dConfig {
    ResNet3dConfig::resnet152()
        .with_stem_depth_kernel(3)
        .with_stem_depth_stride(1)
        .with_inflation(Inflation::Center)
}

fn folder() -> PathBuf {
    let dir = std::env::var_os("RESNET3D_I3RESNET152").expect(
        "RESNET3D_I3RESNET152 names the folder tests/fixtures/make_i3resnet.py writes (see tests/it/i3resnet.rs)",
    );
    PathBuf::from(dir)
}

/// I3ResNet's own checkpoint read by `from_checkpoint`, and the 2-D network inflated by
/// `from_imagenet`: both give I3ResNet's stages and logits, on the model and the frozen
/// network, within 1e-4 of each output's scale.
#[test]
#[ignore = "needs RESNET3D_I3RESNET152: the 730 MB made by tests/fixtures/make_i3resnet.py (see the module docs)"]
fn i3resnet152_checkpoint_and_inflation_match_i3resnets_code() {
    let dir = folder();
    let reference = dir.join("i3resnet152.safetensors");
    let device = Device::flex();
    let x = fixture_tensor(&reference, "input", &device);
    let (from_checkpoint, report) =
        ResNet3d::from_checkpoint_with_report(dir.join("i3resnet152.pth"), &config(), &device).unwrap();
    assert_eq!(report.zoo, Zoo::Torchvision3d, "{report}");
    let from_imagenet = ResNet3d::from_imagenet(dir.join("resnet152_2d.pth"), &config(), &device).unwrap();
    for (what, model) in [("from_checkpoint", from_checkpoint), ("from_imagenet", from_imagenet)] {
        let err = check_stages(&reference, model.features(x.clone()), what).max(check_tensor(
            &reference,
            "logits",
            model.forward(x.clone()),
            what,
        ));
        let frozen = model.freeze().unwrap();
        let frozen_err = check_stages(&reference, frozen.features(x.clone()).unwrap(), what).max(check_tensor(
            &reference,
            "logits",
            frozen.forward(x.clone()).unwrap(),
            what,
        ));
        println!("I3ResNet-152 {what}: max rel. error {err:.2e}, frozen {frozen_err:.2e}");
    }
}
