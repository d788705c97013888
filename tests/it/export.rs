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

/// Protobuf by hand, for files the exporter would never write.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(number: u64, body: &[u8], out: &mut Vec<u8>) {
    varint(number << 3 | 2, out);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A float32 TensorProto: dims (1), data_type (2), name (8), raw_data (9), float_data (4).
fn tensor_proto(name: &str, values: &[f32], float_data: bool) -> Vec<u8> {
    let mut t = Vec::new();
    varint(1 << 3, &mut t);
    varint(values.len() as u64, &mut t);
    varint(2 << 3, &mut t);
    varint(1, &mut t);
    field(8, name.as_bytes(), &mut t);
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    field(9, &raw, &mut t);
    if float_data {
        field(4, &raw, &mut t);
    }
    t
}

/// `basic.onnx` with a second graph message appended (protobuf merges it into the first).
fn with_graph(graph: &[u8]) -> Vec<u8> {
    let mut bytes = std::fs::read(folder().join("basic.onnx")).unwrap();
    field(7, graph, &mut bytes);
    bytes
}

/// Files that claim to be the exporter's and are not: two initializers of one name (ONNX
/// Runtime takes the first, a map the last), raw and float data at once, an initializer of
/// another type: typed errors. Half a million empty nodes: read within twice the file.
#[test]
fn hostile_exports_are_refused_or_read_within_the_file_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = ResNet3dConfig::load(folder().join("basic.json")).unwrap();
    let device = Device::flex();
    let mut duplicate = Vec::new();
    field(
        5,
        &tensor_proto("bn1.running_var", &[1000.0, 1000.0], false),
        &mut duplicate,
    );
    let mut both = Vec::new();
    field(5, &tensor_proto("extra", &[1.0], true), &mut both);
    let mut double = Vec::new();
    let mut t = tensor_proto("extra", &[1.0], false);
    t.extend_from_slice(&[2 << 3, 11]); // data_type again: DOUBLE (the last one counts)
    field(5, &t, &mut double);
    for (what, graph, want) in [
        ("duplicate", duplicate, "two initializers"),
        ("both", both, "both raw and float"),
        ("double", double, "element type 11"),
    ] {
        let path = dir.path().join(format!("{what}.onnx"));
        std::fs::write(&path, with_graph(&graph)).unwrap();
        let err = ResNet3d::from_checkpoint(&path, &config, &device).unwrap_err();
        assert!(err.to_string().contains(want), "{what}: {err}");
    }

    let mut nodes = Vec::new();
    for _ in 0..500_000 {
        field(1, &[], &mut nodes);
    }
    let path = dir.path().join("nodes.onnx");
    let bytes = with_graph(&nodes);
    std::fs::write(&path, &bytes).unwrap();
    let (weights, peak) = crate::tracking::peak_during(|| resnet3d::Weights::from_file(&path));
    assert!(weights.unwrap().get("conv1.weight").is_some());
    assert!(
        peak <= 2 * bytes.len() + (2 << 20),
        "{peak} bytes to read a {}-byte file",
        bytes.len()
    );
}

/// Zero-padded shortcuts with torchvision's stages (not MedicalNet's): the export reads back
/// with its own configuration (it was taken for a MedicalNet file of the wrong preset).
#[test]
fn a_zero_padded_network_of_other_stages_reads_back() {
    let device = Device::flex();
    let config = ResNet3dConfig::resnet18()
        .with_width(2)
        .with_in_channels(1)
        .with_num_classes(Some(2))
        .with_shortcut(resnet3d::Shortcut::ZeroPad);
    let model = config.init(&device);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero_pad.onnx");
    model.save_onnx(&path, OnnxOptions::default()).unwrap();
    let again = ResNet3d::from_checkpoint(&path, &config, &device).unwrap();
    assert!(again.to_onnx(OnnxOptions::default()).unwrap() == std::fs::read(&path).unwrap());
    // With projection shortcuts asked for, the file's missing projections are named.
    let projection = config.with_shortcut(resnet3d::Shortcut::Projection);
    assert!(ResNet3d::from_checkpoint(&path, &projection, &device).is_err());
}
