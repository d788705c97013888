//! Every loading error names its exact variant.

use resnet3d::burn::tensor::Device;
use resnet3d::{Error, ResNet3d, ResNet3dConfig, Weights, inflate_from_2d};

use crate::common::*;

fn r18() -> ResNet3dConfig {
    ResNet3dConfig::resnet18().with_width(4).with_num_classes(Some(10))
}

fn r18_weights() -> Weights {
    Weights::from_file(fixtures().join("checkpoints/r18_w4.pth")).unwrap()
}

#[test]
fn missing_file() {
    let err = ResNet3d::from_imagenet("/nonexistent/resnet50.pth", &r18(), &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::FileNotFound { .. }), "{err}");
}

#[test]
fn not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "these are my notes, not weights").unwrap();
    let err = ResNet3d::from_imagenet(&text, &r18(), &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("text starting"), "{err}");

    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let err = ResNet3d::from_imagenet(&empty, &r18(), &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");
}

#[test]
fn truncated_checkpoints_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["r18_w4.pth", "r18_w4.safetensors"] {
        let bytes = std::fs::read(fixtures().join("checkpoints").join(name)).unwrap();
        let cut = dir.path().join(name);
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = ResNet3d::from_imagenet(&cut, &r18(), &Device::flex()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
    }
}

#[test]
fn wrong_depth_names_both() {
    let err = inflate_from_2d(
        &r18_weights(),
        &ResNet3dConfig::resnet50().with_width(4),
        &Device::flex(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ArchitectureMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("checkpoint is a ResNet-18: BasicBlock [2, 2, 2, 2]"),
        "{message}"
    );
    assert!(
        message.contains("the config asks for ResNet-50: Bottleneck [3, 4, 6, 3]"),
        "{message}"
    );
}

#[test]
fn missing_tensors_are_named() {
    let mut weights = r18_weights();
    weights.remove("layer2.0.bn1.running_var").unwrap();
    weights.remove("layer3.1.conv2.weight").unwrap();
    match inflate_from_2d(&weights, &r18(), &Device::flex()) {
        Err(Error::MissingTensors { names }) => {
            assert_eq!(names, ["layer2.0.bn1.running_var", "layer3.1.conv2.weight"])
        }
        other => panic!("expected MissingTensors, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn extra_tensors_are_named() {
    let mut weights = r18_weights();
    weights.insert("aux.fc.weight", vec![2, 4], vec![0.0; 8]).unwrap();
    match inflate_from_2d(&weights, &r18(), &Device::flex()) {
        Err(Error::UnexpectedTensors { names }) => assert_eq!(names, ["aux.fc.weight"]),
        other => panic!("expected UnexpectedTensors, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn wrong_shapes_say_which_setting_to_change() {
    // A width-4 checkpoint into a width-64 model.
    let err = inflate_from_2d(&r18_weights(), &r18().with_width(64), &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::WrongShape { .. }), "{err}");
    assert!(err.to_string().contains("set width to 4"), "{err}");

    // One kernel of the wrong size.
    let mut weights = r18_weights();
    weights
        .insert("layer1.1.conv1.weight", vec![4, 4, 5, 5], vec![0.0; 400])
        .unwrap();
    match inflate_from_2d(&weights, &r18(), &Device::flex()) {
        Err(Error::WrongShape {
            name, expected, found, ..
        }) => {
            assert_eq!(name, "layer1.1.conv1.weight");
            assert_eq!(expected, [4, 4, 3, 3]);
            assert_eq!(found, [4, 4, 5, 5]);
        }
        other => panic!("expected WrongShape, got {:?}", other.map(|_| ())),
    }

    // A native 3-D checkpoint given to from_imagenet.
    let native = manifest()["native"][0]["file"].as_str().unwrap().to_string();
    let config = r18().with_in_channels(1);
    let err = ResNet3d::from_imagenet(fixtures().join(native), &config, &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::WrongShape { .. }), "{err}");
    assert!(err.to_string().contains("ResNet3d::from_checkpoint"), "{err}");

    // A native checkpoint whose block depth kernel is not the config's.
    let native = manifest()["native"][0]["file"].as_str().unwrap().to_string();
    let err = ResNet3d::from_checkpoint(
        fixtures().join(native),
        &config.with_block_depth_kernel(1),
        &Device::flex(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("set block_depth_kernel to 3"), "{err}");
}

#[test]
fn not_a_resnet() {
    let mut weights = Weights::new();
    weights
        .insert("features.0.weight", vec![8, 3, 3, 3], vec![0.0; 216])
        .unwrap();
    let err = inflate_from_2d(&weights, &r18(), &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[test]
fn invalid_configs_name_the_field() {
    let err = inflate_from_2d(&r18_weights(), &r18().with_block_depth_kernel(2), &Device::flex()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "block_depth_kernel",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        r18().with_in_channels(0).validate(),
        Err(Error::InvalidConfig {
            field: "in_channels",
            ..
        })
    ));
    assert!(matches!(
        r18().with_num_classes(Some(0)).validate(),
        Err(Error::InvalidConfig {
            field: "num_classes",
            ..
        })
    ));
    assert!(matches!(
        r18().with_stage_depth_strides([1, 0, 2, 2]).validate(),
        Err(Error::InvalidConfig {
            field: "stage_depth_strides",
            ..
        })
    ));
}

#[test]
#[should_panic(expected = "`stem_depth_kernel` is 4")]
fn init_panics_on_an_invalid_config_naming_the_field() {
    r18().with_stem_depth_kernel(4).init(&Device::flex());
}

#[test]
fn head_of_another_class_count_is_replaced_and_reported() {
    let (_, report) =
        resnet3d::inflate_from_2d_with_report(&r18_weights(), &r18().with_num_classes(Some(2)), &Device::flex())
            .unwrap();
    assert_eq!(
        report.head,
        resnet3d::Head::Fresh {
            checkpoint_classes: Some(10),
            classes: 2
        }
    );
    let ignored: Vec<&str> = report.ignored.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        ignored.contains(&"fc.weight") && ignored.contains(&"fc.bias"),
        "{ignored:?}"
    );
    // Every BatchNorm counter is reported too: nothing left the file unaccounted for.
    assert_eq!(
        report
            .ignored
            .iter()
            .filter(|(n, _)| n.ends_with("num_batches_tracked"))
            .count(),
        20
    );
}

/// A seeded head is the same for the same seed whatever Burn's process-wide generator did
/// in between, differs for another seed, and keeps PyTorch's `nn.Linear` bound
/// `1/sqrt(features)` (32 features at width 4).
#[test]
fn a_seeded_head_depends_on_its_seed_only() {
    let device = Device::flex();
    let config = r18().with_num_classes(Some(3));
    let head = |seed: u64, burn_seed: u64| {
        device.seed(burn_seed);
        let net = inflate_from_2d(&r18_weights(), &config, &device)
            .unwrap()
            .with_seeded_head(seed);
        let fc = net.fc.unwrap();
        let w = fc.weight.val().into_data().try_to_vec::<f32>().unwrap();
        let b = fc.bias.unwrap().val().into_data().try_to_vec::<f32>().unwrap();
        (fc.weight.dims(), w, b)
    };
    let (dims, w, b) = head(7, 1);
    let (_, w2, b2) = head(7, 2);
    assert_eq!((&w, &b), (&w2, &b2), "same seed, another Burn seed");
    let (_, w3, _) = head(8, 1);
    assert!(w.iter().zip(&w3).filter(|(a, b)| a != b).count() > w.len() / 2);
    let bound = 1.0 / (dims[0] as f32).sqrt();
    let largest = w.iter().chain(&b).fold(0f32, |m, v| m.max(v.abs()));
    assert!(largest < bound && largest > 0.8 * bound, "{largest} vs bound {bound}");
    assert_eq!(dims, [32, 3]);
    // A frozen head stays frozen; a trainable one trains.
    let autodiff = Device::flex().autodiff();
    let trains = |frozen: bool| {
        let mut net = inflate_from_2d(&r18_weights(), &config, &autodiff).unwrap();
        if frozen {
            net.fc = net.fc.map(resnet3d::burn::module::Module::no_grad);
        }
        let fc = net.with_seeded_head(7).fc.unwrap();
        (
            fc.weight.val().is_require_grad(),
            fc.bias.unwrap().val().is_require_grad(),
        )
    };
    assert_eq!((trains(false), trains(true)), ((true, true), (false, false)));
}

#[test]
fn nan_and_inf_in_weights_are_reported() {
    let mut weights = r18_weights();
    let mut kernel = weights.remove("layer2.1.conv2.weight").unwrap();
    kernel.values[3] = f32::NAN;
    kernel.values[7] = f32::INFINITY;
    weights
        .insert("layer2.1.conv2.weight", kernel.shape, kernel.values)
        .unwrap();
    let (_, report) = resnet3d::inflate_from_2d_with_report(&weights, &r18(), &Device::flex()).unwrap();
    assert_eq!(report.non_finite, [("layer2.1.conv2.weight".to_string(), 2)]);
    assert!(
        report
            .to_string()
            .contains("layer2.1.conv2.weight holds 2 NaN or infinite"),
        "{report}"
    );
}

#[test]
fn inputs_that_do_not_fit_are_typed_errors() {
    let device = Device::flex();
    let model = r18().with_in_channels(1).init(&device);
    let three = resnet3d::burn::tensor::Tensor::<5>::zeros([1, 3, 8, 32, 32], &device);
    match model.try_forward(three) {
        Err(Error::InvalidInput { dims, what }) => {
            assert_eq!(dims, [1, 3, 8, 32, 32]);
            assert!(what.contains("takes 1 channel"), "{what}");
        }
        other => panic!("expected InvalidInput, got {:?}", other.map(|_| ())),
    }
    let empty = resnet3d::burn::tensor::Tensor::<5>::zeros([1, 1, 0, 32, 32], &device);
    let err = model.try_features(empty).unwrap_err();
    assert!(err.to_string().contains("minimum size is 1 voxel per axis"), "{err}");
    // The smallest volume runs, down to one voxel.
    let tiny = resnet3d::burn::tensor::Tensor::<5>::zeros([1, 1, 1, 1, 1], &device);
    assert_eq!(model.try_forward(tiny.clone()).unwrap().dims(), [1, 10]);

    // The frozen network checks the same, and agrees with the model down to one voxel.
    let frozen = model.freeze().unwrap();
    let three = resnet3d::burn::tensor::Tensor::<5>::zeros([1, 3, 8, 32, 32], &device);
    assert!(matches!(frozen.forward(three), Err(Error::InvalidInput { .. })));
    let empty = resnet3d::burn::tensor::Tensor::<5>::zeros([1, 1, 8, 0, 32], &device);
    assert!(matches!(frozen.features(empty), Err(Error::InvalidInput { .. })));
    let tiny = tiny + 0.5;
    let (_, want) = values(model.forward(tiny.clone()));
    let (shape, got) = values(frozen.forward(tiny).unwrap());
    assert_eq!(shape, [1, 10]);
    assert!(rel_error(&got, &want) <= TOLERANCE, "{got:?} vs {want:?}");
}
