//! `resnet3d export`: a trained run as ONNX, read back as the same network.

use resnet3d::burn::tensor::Device;
use resnet3d::infer::TrainedRun;
use resnet3d::{OnnxOptions, ResNet3d};
use resnet3d_cli::export;

use crate::common::*;

#[test]
fn an_exported_run_reads_back_as_the_same_network() {
    let dir = tempfile::tempdir().unwrap();
    let run = crate::predict::detector_run(dir.path());
    let out = dir.path().join("net.onnx");
    let what = export::run(&export::Args {
        model: run.clone(),
        out: out.clone(),
        stages: false,
        force: false,
    })
    .unwrap();
    assert!(
        what.contains("ONNX opset 17") && what.contains("logits [batch, 2]"),
        "{what}"
    );
    let device = Device::flex();
    let trained = TrainedRun::load(&run, &device).unwrap();
    let again = ResNet3d::from_checkpoint(&out, &trained.config, &device).unwrap();
    assert!(again.to_onnx(OnnxOptions::default()).unwrap() == std::fs::read(&out).unwrap());
    let x = pattern([1, trained.config.in_channels, 8, 16, 16], &device);
    let (a, b) = (values(trained.net.forward(x.clone())).1, values(again.forward(x)).1);
    assert_eq!(a, b, "the same network computes the same logits");

    // A run folder that is not one: the error names the missing file.
    let err = export::run(&export::Args {
        model: dir.path().join("nowhere"),
        out: dir.path().join("x.onnx"),
        stages: false,
        force: false,
    })
    .unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
    assert!(!dir.path().join("x.onnx").exists());

    // An existing file is replaced only with --force, and the run's own files never.
    let model = std::fs::read(run.join("model.bpk")).unwrap();
    for (target, force, want) in [
        (out.clone(), false, "--force"),
        (run.join("model.bpk"), true, "run's own files"),
    ] {
        let err = export::run(&export::Args {
            model: run.clone(),
            out: target,
            stages: false,
            force,
        })
        .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    assert_eq!(std::fs::read(run.join("model.bpk")).unwrap(), model);
    export::run(&export::Args {
        model: run.clone(),
        out: out.clone(),
        stages: true,
        force: true,
    })
    .unwrap();
    assert!(ResNet3d::from_checkpoint(&out, &trained.config, &device).is_ok());
}
