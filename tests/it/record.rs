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

/// The networks whose records `records/*.bpk` hold: every block kind and shortcut (basic with
/// projections, bottleneck, (2+1)-D with the factorised stem, MedicalNet's zero-padded
/// shortcuts), narrow so that the files stay small.
fn saved_networks() -> Vec<(&'static str, ResNet3dConfig)> {
    vec![
        (
            "r18_w2",
            ResNet3dConfig::resnet18()
                .with_width(2)
                .with_in_channels(1)
                .with_num_classes(Some(3)),
        ),
        (
            "r50_w2",
            ResNet3dConfig::resnet50()
                .with_width(2)
                .with_in_channels(2)
                .with_num_classes(Some(2)),
        ),
        (
            "r2plus1d_w2",
            ResNet3dConfig::r2plus1d_18()
                .with_width(2)
                .with_in_channels(1)
                .with_num_classes(Some(4)),
        ),
        ("medicalnet18_w2", ResNet3dConfig::medicalnet(18).unwrap().with_width(2)),
    ]
}

/// Records saved by the crate as it was before the network became a plan (main at 653173f,
/// 2026-12-04) load into today's modules and compute what they computed then: the record
/// format (field names, nesting, skipped fields) is unchanged. The expected outputs in
/// `records/outputs.safetensors` were written by that version from the same records (with
/// `RESNET3D_WRITE_RECORDS=1`, which writes the fixtures instead of comparing: run it only on
/// a version whose records are the reference). Tolerance 1e-5 of the output's scale: the
/// same arithmetic up to the order of float sums.
#[test]
fn records_saved_before_the_plan_load_and_compute_the_same() {
    let device = Device::flex();
    let dir = fixtures().join("records");
    let write = std::env::var_os("RESNET3D_WRITE_RECORDS").is_some();
    let x = |config: &ResNet3dConfig| pattern([2, config.in_channels, 9, 20, 18], &device);
    if write {
        std::fs::create_dir_all(&dir).unwrap();
        let mut outputs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, config) in saved_networks() {
            let model = config.init(&device);
            model.save(dir.join(format!("{name}.bpk"))).unwrap();
            let (shape, out) = values(model.forward(x(&config)));
            let bytes = out.iter().flat_map(|v| v.to_le_bytes()).collect();
            outputs.push((name.to_string(), shape, bytes));
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = outputs
            .iter()
            .map(|(name, shape, bytes)| {
                let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap();
                (name.clone(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("outputs.safetensors")).unwrap();
    }
    for (name, config) in saved_networks() {
        let model = ResNet3d::load(dir.join(format!("{name}.bpk")), &config, &device).unwrap();
        let (shape, got) = values(model.forward(x(&config)));
        let (expected_shape, expected) = reference(&dir.join("outputs.safetensors"), name);
        assert_eq!(shape, expected_shape, "{name}");
        let err = rel_error(&got, &expected);
        println!("{name}: {err:e}");
        assert!(err <= 1e-5, "{name}: {err:e}");
    }
}
