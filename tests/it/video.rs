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
fn r2plus1d_and_mismatched_presets_are_refused_with_what_to_do() {
    let device = Device::flex();
    let path = folder().join("r2plus1d_18_w4.pth");
    let config = ResNet3dConfig::r3d_18().with_width(4).with_num_classes(Some(7));
    match ResNet3d::from_checkpoint(&path, &config, &device) {
        Err(err @ Error::Unsupported { .. }) => assert!(err.to_string().contains("R(2+1)D"), "{err}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // An MC3 file with the R3D preset: its 1x3x3 kernels do not fit 3x3x3 ones.
    let path = folder().join("mc3_18_w4.pth");
    assert!(matches!(
        ResNet3d::from_checkpoint(&path, &config, &device),
        Err(Error::WrongShape { .. })
    ));
}

#[test]
fn full_width_video_presets_have_torchvisions_parameter_counts() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder().join("video.json")).unwrap()).unwrap();
    for (name, config) in [
        ("r3d_18", ResNet3dConfig::r3d_18()),
        ("mc3_18", ResNet3dConfig::mc3_18()),
    ] {
        let expected = json[name]["parameters"].as_u64().unwrap() as usize;
        assert_eq!(config.parameter_count(), Some(expected), "{name}");
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
