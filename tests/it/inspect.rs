//! `Inspection`: for every checkpoint fixture (2-D ImageNet files in each format, native 3-D
//! files in f16 and bf16, MedicalNet, torchvision's video nets), the configuration it
//! suggests loads the file through the strict loader, and it says which tensors that
//! configuration takes exactly as the loader does.

use resnet3d::burn::tensor::Device;
use resnet3d::{Inspection, ResNet3d, Zoo};

use crate::common::fixtures;

#[test]
fn the_suggested_configuration_loads_every_checkpoint_fixture() {
    let device = Device::flex();
    let cases = [
        (
            "checkpoints/r18_w4.pth",
            Zoo::ImageNet,
            "ResNet3dConfig::resnet18().with_width(4).with_in_channels(1).with_num_classes(Some(10))",
        ),
        (
            "checkpoints/r50_w4.pth",
            Zoo::ImageNet,
            "ResNet3dConfig::resnet50().with_width(4)",
        ),
        (
            "checkpoints/r101_w2.safetensors",
            Zoo::ImageNet,
            "ResNet3dConfig::resnet101().with_width(2)",
        ),
        (
            "onnx/r18_ts_fold.onnx",
            Zoo::ImageNet,
            "ResNet3dConfig::resnet18().with_width(2)",
        ),
        (
            "checkpoints/r18_cubic_avg_c1_f16.pth",
            Zoo::Torchvision3d,
            ".with_stem_depth_kernel(7).with_block_depth_kernel(3)",
        ),
        (
            "checkpoints/r50_flat_avg_c1_bf16.pth",
            Zoo::Torchvision3d,
            ".with_stem_depth_kernel(1).with_block_depth_kernel(1)",
        ),
        (
            "medicalnet/medicalnet10_w4.pth",
            Zoo::MedicalNet,
            "ResNet3dConfig::medicalnet(10)?.with_width(4)",
        ),
        (
            "medicalnet/medicalnet18_w4.pth",
            Zoo::MedicalNet,
            "ResNet3dConfig::medicalnet(18)?.with_width(4)",
        ),
        (
            "video/r3d_18_w4.pth",
            Zoo::TorchvisionVideo,
            "ResNet3dConfig::r3d_18().with_width(4).with_num_classes(Some(7))",
        ),
        (
            "video/mc3_18_w4.pth",
            Zoo::TorchvisionVideo,
            "ResNet3dConfig::mc3_18().with_width(4)",
        ),
        (
            "video/r2plus1d_18_w4.pth",
            Zoo::TorchvisionVideo,
            "ResNet3dConfig::r2plus1d_18().with_width(4)",
        ),
    ];
    for (file, zoo, call) in cases {
        let path = fixtures().join(file);
        let inspection = Inspection::of_file(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(inspection.zoo, zoo, "{file}");
        assert!(inspection.rust.contains(call), "{file}: {}", inspection.rust);
        assert_eq!(inspection.matched, inspection.expected, "{file}: {inspection}");
        assert!(
            inspection.missing.is_empty() && inspection.wrong_shape.is_empty(),
            "{file}"
        );
        // The strict loader agrees: every tensor the configuration takes, nothing missing.
        let report = match inspection.kernel_dims {
            2 => ResNet3d::from_imagenet_with_report(&path, &inspection.config, &device),
            _ => ResNet3d::from_checkpoint_with_report(&path, &inspection.config, &device),
        }
        .unwrap_or_else(|e| panic!("{file}: the suggested configuration does not load: {e}"))
        .1;
        assert_eq!(report.zoo, zoo, "{file}");
        let params = inspection.config.parameter_count().unwrap();
        assert!(params > 0, "{file}");
    }
}

#[test]
fn element_types_and_shape_mismatches_are_reported() {
    let f16 = Inspection::of_file(fixtures().join("checkpoints/r18_cubic_avg_c1_f16.pth")).unwrap();
    assert_eq!(f16.element_types.get("f16"), Some(&102));
    let bf16 = Inspection::of_file(fixtures().join("checkpoints/r50_flat_avg_c1_bf16.pth")).unwrap();
    assert!(
        bf16.element_types.get("bf16").is_some_and(|&n| n > 200),
        "{:?}",
        bf16.element_types
    );
    // A tensor taken out, one given another shape: both named.
    let mut weights = resnet3d::Weights::from_file(fixtures().join("checkpoints/r18_w4.pth")).unwrap();
    weights.remove("layer3.1.bn2.running_var").unwrap();
    weights
        .insert("layer2.0.conv1.weight", vec![8, 4, 1, 1], vec![0.0; 8 * 4])
        .unwrap();
    let damaged = Inspection::of_weights(&weights, resnet3d::Format::Pytorch).unwrap();
    assert_eq!((damaged.matched, damaged.expected), (100, 102));
    assert_eq!(damaged.missing, ["layer3.1.bn2.running_var"]);
    assert_eq!(
        damaged.wrong_shape,
        [("layer2.0.conv1.weight".to_string(), vec![8, 4, 1, 1], vec![8, 4, 3, 3])]
    );
    assert!(Inspection::of_file(fixtures().join("onnx/neg_vgg.onnx")).is_err());
}

#[test]
fn a_3d_file_with_a_head_is_not_taken_for_medicalnet() {
    // MedicalNet-18's tensors (parameter-free shortcuts) with a classifier added: a
    // torchvision-3-D network built with zero-pad shortcuts, not a MedicalNet file.
    let mut weights = resnet3d::Weights::from_file(fixtures().join("medicalnet/medicalnet18_w4.pth")).unwrap();
    weights.insert("fc.weight", vec![7, 32], vec![0.01; 7 * 32]).unwrap();
    weights.insert("fc.bias", vec![7], vec![0.0; 7]).unwrap();
    let inspection = Inspection::of_weights(&weights, resnet3d::Format::Pytorch).unwrap();
    assert_eq!((inspection.zoo, inspection.classes), (Zoo::Torchvision3d, Some(7)));
    assert!(
        inspection.rust.contains(".with_shortcut(Shortcut::ZeroPad)"),
        "{}",
        inspection.rust
    );
    assert_eq!(inspection.config.shortcut, resnet3d::Shortcut::ZeroPad);
    assert!(
        !inspection.unused.iter().any(|n| n.starts_with("fc.")),
        "{:?}",
        inspection.unused
    );
}
