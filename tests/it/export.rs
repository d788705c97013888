//! ONNX export against ONNX Runtime: the files `examples/export_cases.rs` wrote for every kind
//! of layer the exporter writes (basic, bottleneck v1 and (2+1)-D blocks, the factorised stem,
//! zero-padded shortcuts, dilations, ACS kernels, replicate depth padding, with and without
//! head), run by ONNX Runtime 1.32 in `tests/fixtures/make_export.py`, which also ran
//! `onnx.checker` on each. Here each file is read back as a checkpoint, exported again (the
//! same bytes: export then import is the identity), and run by the crate on ONNX Runtime's
//! inputs: logits (or features) and every stage within 1e-5 of their scale.

use resnet3d::burn::config::Config;
use resnet3d::burn::tensor::{Device, Tensor};
use resnet3d::{Error, OnnxOptions, ResNet3d, ResNet3dConfig, Zoo};
use serde_json::Value;

use crate::common::*;

/// The tolerance the issue asks of the export: 1e-5 of each output's scale.
const EXPORT_TOLERANCE: f32 = 1e-5;

fn folder() -> std::path::PathBuf {
    fixtures().join("export")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(folder().join("ort.json")).unwrap()).unwrap()
}

fn compare<const D: usize>(case: &str, k: usize, name: &str, got: Tensor<D>) -> f32 {
    let file = folder().join("ort.safetensors");
    let (shape, expected) = reference(&file, &format!("{case}.{k}.{name}"));
    let (dims, got) = values(got);
    assert_eq!(dims, shape, "{case} {k} {name}");
    let err = rel_error(&got, &expected);
    assert!(
        err <= EXPORT_TOLERANCE,
        "{case} {k} {name}: rel. error {err:.2e} against ONNX Runtime"
    );
    err
}

#[test]
fn exports_run_in_onnx_runtime_as_in_the_crate_and_read_back_bit_for_bit() {
    let manifest = manifest();
    let cases = manifest["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 5, "{cases:?}");
    let device = Device::flex();
    let ort = folder().join("ort.safetensors");
    for (case, facts) in cases {
        assert_eq!(facts["checker"], "ok", "{case}");
        assert_eq!(facts["opset"], resnet3d::ONNX_OPSET, "{case}");
        let config = ResNet3dConfig::load(folder().join(format!("{case}.json"))).unwrap();
        let path = folder().join(format!("{case}.onnx"));
        let (model, report) = ResNet3d::from_checkpoint_with_report(&path, &config, &device).unwrap();
        assert!(
            matches!(report.zoo, Zoo::Torchvision3d | Zoo::MedicalNet),
            "{case}: {report}"
        );
        assert!(report.ignored.is_empty(), "{case}: {report}");
        // Export then import is the identity: the same bytes, parameters included.
        let again = model.to_onnx(OnnxOptions { stage_outputs: true }).unwrap();
        assert!(
            again == std::fs::read(&path).unwrap(),
            "{case}: the re-export differs from the file"
        );

        let frozen = model.freeze().unwrap();
        let output = if config.num_classes.is_some() {
            "logits"
        } else {
            "features"
        };
        let mut worst = 0f32;
        for k in 0..2 {
            let x = fixture_tensor(&ort, &format!("{case}.{k}.input"), &device);
            worst = worst.max(compare(case, k, output, model.forward(x.clone())));
            worst = worst.max(compare(case, k, output, frozen.forward(x.clone()).unwrap()));
            for (name, got) in named_stages(model.features(x.clone())) {
                worst = worst.max(compare(case, k, name, got));
            }
        }
        println!("{case}: worst rel. error against ONNX Runtime {worst:.2e}");
    }
}

/// A file written by the exporter is read by name: with another configuration it is refused
/// as any checkpoint would be, and a damaged one is a typed error, not a panic.
#[test]
fn an_export_with_another_configuration_or_damaged_is_an_error() {
    let device = Device::flex();
    let path = folder().join("basic.onnx");
    let wider = ResNet3dConfig::load(folder().join("basic.json")).unwrap().with_width(4);
    match ResNet3d::from_checkpoint(&path, &wider, &device) {
        Err(Error::WrongShape { name, .. }) => assert_eq!(name, "conv1.weight"),
        other => panic!("{other:?}"),
    }
    let bytes = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 3] {
        let short = dir.path().join(format!("cut{cut}.onnx"));
        std::fs::write(&short, &bytes[..cut]).unwrap();
        let config = ResNet3dConfig::load(folder().join("basic.json")).unwrap();
        match ResNet3d::from_checkpoint(&short, &config, &device) {
            Err(Error::Corrupt { format: "ONNX", .. }) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}
