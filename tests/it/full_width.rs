//! Full-width ResNet-18 and -50, generated from a formula (not committed): real shapes.

use resnet3d::burn::tensor::Device;
use resnet3d::{BlockKind, Layout, ResNet3d, ResNet3dConfig};

use crate::common::*;

/// The state-dict names and shapes of torchvision's ResNet of `layout` (width 64, 1000 classes).
fn torchvision_shapes(layout: Layout) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![("conv1.weight".to_string(), vec![64, 3, 7, 7])];
    let bn = |out: &mut Vec<(String, Vec<usize>)>, name: &str, c: usize| {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{name}.{p}"), vec![c]));
        }
    };
    bn(&mut out, "bn1", 64);
    let exp = layout.block.expansion();
    let mut inp = 64;
    for (i, &n) in layout.layers.iter().enumerate() {
        let planes = 64 << i;
        for b in 0..n {
            let p = format!("layer{}.{b}", i + 1);
            let stride = if b == 0 && i > 0 { 2 } else { 1 };
            let convs: Vec<(usize, usize, usize)> = match layout.block {
                BlockKind::Basic => vec![(inp, planes, 3), (planes, planes, 3)],
                BlockKind::Bottleneck => vec![(inp, planes, 1), (planes, planes, 3), (planes, planes * 4, 1)],
                _ => unreachable!("these tests build basic and bottleneck blocks only"),
            };
            for (k, (ci, co, ks)) in convs.into_iter().enumerate() {
                out.push((format!("{p}.conv{}.weight", k + 1), vec![co, ci, ks, ks]));
                bn(&mut out, &format!("{p}.bn{}", k + 1), co);
            }
            if stride != 1 || inp != planes * exp {
                out.push((format!("{p}.downsample.0.weight"), vec![planes * exp, inp, 1, 1]));
                bn(&mut out, &format!("{p}.downsample.1"), planes * exp);
            }
            inp = planes * exp;
        }
    }
    out.push(("fc.weight".into(), vec![1000, inp]));
    out.push(("fc.bias".into(), vec![1000]));
    out
}

/// Writes a checkpoint with values from a formula, as safetensors, and returns its path.
fn write_checkpoint(layout: Layout, dir: &std::path::Path) -> std::path::PathBuf {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = torchvision_shapes(layout)
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let len: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let var = name.ends_with("running_var");
            let bytes = (0..len)
                .flat_map(|i| {
                    let v = ((i * 7 + k * 13) % 17) as f32 / 17.0 - 0.5;
                    let v = if var {
                        1.0 + v.abs()
                    } else {
                        v * (3.0 / fan_in as f32).sqrt()
                    };
                    v.to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let path = dir.join("full.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

fn full_width(depth: usize, config: ResNet3dConfig) {
    let device = Device::flex();
    let layout = Layout::preset(depth).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_checkpoint(layout, dir.path());
    let config = config.with_in_channels(1).with_num_classes(Some(2));
    let (model, report) = ResNet3d::from_imagenet_with_report(&path, &config, &device).unwrap();
    // Every kernel of torchvision's network, inflated to depth 3 (stem 7, 1x1 convs 1).
    let shapes = torchvision_shapes(layout);
    let kernels = shapes.iter().filter(|(n, s)| s.len() == 4 && n != "fc.weight").count();
    assert_eq!(report.kernels.len(), kernels);
    for kernel in &report.kernels {
        let (o, i, kh) = (kernel.from[0], kernel.from[1], kernel.from[2]);
        let depth = if kernel.name == "conv1.weight" {
            7
        } else if kh == 3 {
            3
        } else {
            1
        };
        let i = if kernel.name == "conv1.weight" { 1 } else { i };
        assert_eq!(kernel.to, [o, i, depth, kh, kernel.from[3]], "{}", kernel.name);
    }
    assert_eq!(
        report.head,
        resnet3d::Head::Fresh {
            checkpoint_classes: Some(1000),
            classes: 2
        }
    );
    let x = pattern([1, 1, 16, 64, 64], &device);
    let features = model.features(x.clone());
    let c = 64 * layout.block.expansion();
    assert_eq!(features.stem.dims(), [1, 64, 8, 32, 32]);
    assert_eq!(features.layer1.dims(), [1, c, 4, 16, 16]);
    assert_eq!(features.layer4.dims(), [1, 8 * c, 1, 2, 2]);
    let (shape, logits) = values(model.forward(x));
    assert_eq!(shape, [1, 2]);
    assert!(logits.iter().all(|v| v.is_finite()));

    // The frozen CPU engine and the Burn model on flex (which share the crate's kernels) at
    // full width, against the same model on ndarray, whose convolution is Burn's own `conv3d`:
    // 128 voxels wide, so that layer1's 32-voxel lines take the implicit-GEMM path and the
    // later stages the gathered one. Tolerance: 1e-4 of each output's scale.
    let frozen = model.freeze().unwrap();
    let x = pattern([1, 1, 8, 64, 128], &device);
    let reference = on_ndarray(&model);
    let want = reference.features(x.clone().to_device(&ndarray()));
    let paths = [
        ("flex", model.features(x.clone())),
        ("frozen", frozen.features(x.clone()).unwrap()),
    ];
    for (path, got) in paths {
        for (name, a, b) in [
            ("stem", &want.stem, got.stem),
            ("layer1", &want.layer1, got.layer1),
            ("layer2", &want.layer2, got.layer2),
            ("layer3", &want.layer3, got.layer3),
            ("layer4", &want.layer4, got.layer4),
        ] {
            let ((sa, a), (sb, b)) = (values(a.clone()), values(b));
            assert_eq!(sa, sb, "{path} {name}");
            let err = rel_error(&b, &a);
            assert!(err <= TOLERANCE, "{path} {name}: rel. error {err:e} against ndarray");
        }
    }
    let logits = values(reference.forward(x.clone().to_device(&ndarray()))).1;
    let flex_err = rel_error(&values(model.forward(x.clone())).1, &logits);
    let err = rel_error(&values(frozen.forward(x).unwrap()).1, &logits);
    assert!(
        flex_err <= TOLERANCE,
        "flex logits: rel. error {flex_err:e} against ndarray"
    );
    assert!(err <= TOLERANCE, "frozen logits: rel. error {err:e} against ndarray");
    println!(
        "full-width resnet{depth} against ndarray's conv3d: logits rel. error flex {flex_err:.2e}, frozen {err:.2e}"
    );
}

#[test]
fn full_width_resnet18() {
    full_width(18, ResNet3dConfig::resnet18());
}

#[test]
fn full_width_resnet50() {
    full_width(50, ResNet3dConfig::resnet50());
}

/// Every zoo preset at full width (weights made here: kaiming convolutions, BatchNorm
/// statistics away from the identity), each stage and the pooled features of the frozen
/// network and of the model on flex against the same model on ndarray (Burn's own `conv3d`,
/// not the crate's kernels): MedicalNet's zero-padding and projection shortcuts with dilated
/// stages, torchvision's R3D, MC3 and R(2+1)D. Tolerance: 1e-4 of each output's scale.
#[test]
fn every_zoo_preset_at_full_width_computes_what_burns_conv3d_computes() {
    let device = Device::flex();
    for (name, config, shape) in [
        (
            "medicalnet10",
            ResNet3dConfig::medicalnet(10).unwrap(),
            [1, 1, 4, 16, 16],
        ),
        (
            "medicalnet18",
            ResNet3dConfig::medicalnet(18).unwrap(),
            [1, 1, 4, 16, 16],
        ),
        (
            "medicalnet50",
            ResNet3dConfig::medicalnet(50).unwrap(),
            [1, 1, 4, 16, 16],
        ),
        ("r3d_18", ResNet3dConfig::r3d_18(), [1, 3, 4, 16, 16]),
        ("mc3_18", ResNet3dConfig::mc3_18(), [1, 3, 4, 16, 16]),
        ("r2plus1d_18", ResNet3dConfig::r2plus1d_18(), [1, 3, 4, 16, 16]),
    ] {
        let mut model = config.init(&device);
        crate::properties::randomise_all(&mut model, &device);
        let frozen = model.freeze().unwrap();
        let x = pattern(shape, &device);
        let reference = on_ndarray(&model);
        let want = reference.features(x.clone().to_device(&ndarray()));
        let stages = |f: resnet3d::Features| [f.stem, f.layer1, f.layer2, f.layer3, f.layer4];
        let want = stages(want);
        for (path, got) in [
            ("flex", stages(model.features(x.clone()))),
            ("frozen", stages(frozen.features(x.clone()).unwrap())),
        ] {
            let mut worst = 0f32;
            for (stage, (a, b)) in want.iter().zip(got).enumerate() {
                let ((sa, a), (sb, b)) = (values(a.clone()), values(b));
                assert_eq!(sa, sb, "{name} {path} stage {stage}");
                let err = rel_error(&b, &a);
                assert!(
                    err <= TOLERANCE,
                    "{name} {path} stage {stage}: rel. error {err:e} against ndarray"
                );
                worst = worst.max(err);
            }
            println!("{name} at full width, {path} against ndarray's conv3d: worst stage rel. error {worst:.2e}");
        }
    }
}
