//! ONNX exports of the fixture networks: every exporter variant against the PyTorch
//! reference of the inflated network (tolerance 1e-4 of the reference's max), equality with
//! the .pth of the same network, robustness to renaming and reordering, and refusals.

use resnet3d::burn::tensor::Device;
use resnet3d::{Error, ResNet3d, ResNet3dConfig, Weights};
use serde_json::Value;

use crate::common::*;

fn onnx_cases() -> Vec<Value> {
    manifest()["onnx"].as_array().unwrap().clone()
}

fn each_export_matches(label: &str, device: &Device) {
    for case in onnx_cases() {
        for file in case["files"].as_array().unwrap() {
            let path = fixtures().join(file["file"].as_str().unwrap());
            let (model, report) = ResNet3d::from_imagenet_with_report(&path, &config_of(&case), device)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let fused = file["fused"].as_bool().unwrap();
            assert_eq!(
                report.fused_batch_norms > 0,
                fused,
                "{}: fused BatchNorm reported",
                path.display()
            );
            let err = check_case(&case, &model, device);
            println!(
                "{label} {:<40} max rel. error {err:.2e}",
                file["file"].as_str().unwrap()
            );
        }
    }
}

#[test]
fn every_export_matches_pytorch_on_flex() {
    each_export_matches("flex", &Device::flex());
}

#[test]
fn every_export_matches_pytorch_on_ndarray() {
    each_export_matches("ndarray", &cpu_devices()[1].1);
}

/// Max abs difference over every tensor of `a`, which must have exactly `b`'s names and shapes.
fn max_difference(a: &Weights, b: &Weights) -> f32 {
    let names = |w: &Weights| {
        w.names()
            .filter(|n| !n.ends_with("num_batches_tracked"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(a), names(b));
    let mut worst = 0f32;
    for (name, t) in a.iter().filter(|(n, _)| !n.ends_with("num_batches_tracked")) {
        let u = b.get(name).unwrap();
        assert_eq!(t.shape, u.shape, "{name}");
        worst = t
            .values
            .iter()
            .zip(&u.values)
            .fold(worst, |m, (x, y)| m.max((x - y).abs()));
    }
    worst
}

#[test]
fn unfused_exports_give_the_state_dict_of_the_pth() {
    let pth = Weights::from_file(fixtures().join("checkpoints/r18_w2.pth")).unwrap();
    for file in ["r18_ts_nofold.onnx", "r18_dynamo_noopt.onnx", "r18_ts_matmul_head.onnx"] {
        let onnx = Weights::from_file(fixtures().join("onnx").join(file)).unwrap();
        assert_eq!(onnx.fused_batch_norms(), 0, "{file}");
        assert_eq!(max_difference(&onnx, &pth), 0.0, "{file}: every tensor bit-identical");
    }
}

#[test]
fn renamed_and_reordered_graph_loads_identically() {
    let plain = Weights::from_file(fixtures().join("onnx/r18_ts_fold.onnx")).unwrap();
    let renamed = Weights::from_file(fixtures().join("onnx/r18_ts_fold_renamed.onnx")).unwrap();
    assert_eq!(plain.len(), 102);
    assert_eq!(max_difference(&renamed, &plain), 0.0);
}

#[test]
fn refused_graphs_say_what_was_found() {
    let config = ResNet3dConfig::resnet18().with_width(2).with_num_classes(Some(10));
    for negative in manifest()["onnx_negative"].as_array().unwrap() {
        let path = fixtures().join(negative["file"].as_str().unwrap());
        let err = ResNet3d::from_imagenet(&path, &config, &Device::flex()).unwrap_err();
        let variant = match err {
            Error::Unsupported { .. } => "Unsupported",
            Error::Corrupt { .. } => "Corrupt",
            _ => "other",
        };
        assert_eq!(
            variant,
            negative["error"].as_str().unwrap(),
            "{}: {err}",
            path.display()
        );
        assert!(
            err.to_string().contains(negative["says"].as_str().unwrap()),
            "{}: {err}",
            path.display()
        );
    }
}

#[test]
fn a_graph_of_another_depth_names_both() {
    let config = ResNet3dConfig::resnet50().with_width(2);
    let err = ResNet3d::from_imagenet(fixtures().join("onnx/r18_dynamo.onnx"), &config, &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::ArchitectureMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("ResNet-18") && err.to_string().contains("ResNet-50"),
        "{err}"
    );
}

#[test]
fn resnet_v1_strides_need_the_config_switch() {
    let stride_error = |err: &Error| {
        matches!(
            err,
            Error::InvalidConfig {
                field: "stride_in_1x1",
                ..
            }
        )
    };
    let v1_5 = ResNet3dConfig::resnet50().with_width(2);
    let v1 = fixtures().join("onnx/r50v1_ts_fold.onnx");
    assert_eq!(Weights::from_file(&v1).unwrap().stride_in_1x1(), Some(true));
    let err = ResNet3d::from_imagenet(&v1, &v1_5, &Device::flex()).unwrap_err();
    assert!(stride_error(&err), "{err}");
    let err = ResNet3d::from_imagenet(
        fixtures().join("onnx/r50_dynamo.onnx"),
        &v1_5.with_stride_in_1x1(true),
        &Device::flex(),
    )
    .unwrap_err();
    assert!(stride_error(&err), "{err}");
}

#[test]
fn a_missing_external_data_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("r18_dynamo.onnx");
    std::fs::copy(fixtures().join("onnx/r18_dynamo.onnx"), &lonely).unwrap();
    let err = Weights::from_file(&lonely).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::FileNotFound { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("r18_dynamo.onnx.data"), "{err}");
}

#[test]
fn truncated_and_random_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures().join("onnx/r18_ts_fold.onnx")).unwrap();
    let path = dir.path().join("cut.onnx");
    for cut in [1, 2, 10, 100, 1000, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = Weights::from_file(&path).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { .. } | Error::UnknownFormat { .. }),
            "cut at {cut}: {err}"
        );
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(&path, &noise).unwrap();
    assert!(Weights::from_file(&path).is_err());
}
