//! Saving to Burn's record format and loading back gives the same network.

use resnet3d::burn::tensor::Device;
use resnet3d::{Error, ResNet3d, ResNet3dConfig};

use crate::common::*;

#[test]
fn saved_and_reloaded_model_computes_the_same() {
    let device = Device::flex();
    let config = ResNet3dConfig::resnet50()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(Some(10));
    let model = ResNet3d::from_imagenet(fixtures().join("checkpoints/r50_w4.pth"), &config, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bpk");
    model.save(&path).unwrap();
    let reloaded = ResNet3d::load(&path, &config, &device).unwrap();
    let x = pattern([1, 1, 8, 32, 32], &device);
    let (_, before) = values(model.forward(x.clone()));
    let (_, after) = values(reloaded.forward(x));
    assert_eq!(before, after);
}

#[test]
fn a_record_of_another_configuration_is_refused() {
    let device = Device::flex();
    let small = ResNet3dConfig::resnet18().with_width(4).with_num_classes(None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bpk");
    small.init(&device).save(&path).unwrap();
    let other = ResNet3dConfig::resnet18().with_width(8).with_num_classes(None);
    assert!(matches!(
        ResNet3d::load(&path, &other, &device),
        Err(Error::Record { .. })
    ));
    assert!(matches!(
        ResNet3d::load(dir.path().join("absent.bpk"), &small, &device),
        Err(Error::FileNotFound { .. })
    ));
}
