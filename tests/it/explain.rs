//! Grad-CAM and CAM (`resnet3d::explain`): at `layer4` they are the same map (the module docs
//! derive why), on the Burn model and the frozen network alike; each batch item gets its own
//! map; wrong uses are typed errors.

use resnet3d::burn::module::{Module, Param};
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::explain::{Heatmap, Stage};
use resnet3d::{Error, ResNet3d, ResNet3dConfig};

use crate::common::*;

fn network(device: &Device) -> ResNet3d {
    let config = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(Some(3));
    let mut model = ResNet3d::from_imagenet(fixtures().join("checkpoints/r18_w4.pth"), &config, device).unwrap();
    // The new head would be drawn at random, and whether a class gives both items a map
    // (which the tests below need) with it: a fixed head instead.
    let fc = model.fc.as_mut().unwrap();
    fc.weight = Param::from_tensor(pattern(fc.weight.dims(), device));
    fc.bias = fc.bias.take().map(|b| Param::from_tensor(b.val().zeros_like()));
    model
}

/// Two different volumes: the test pattern, and a dark volume with one bright cube.
fn two_volumes([d, h, w]: [usize; 3], device: &Device) -> Tensor<5> {
    let mut blob = vec![-1.0f32; d * h * w];
    for z in d / 4..d / 2 {
        for y in h / 2..h / 2 + h / 4 {
            for x in w / 8..w / 8 + w / 4 {
                blob[(z * h + y) * w + x] = 3.0;
            }
        }
    }
    let blob = Tensor::from_data(TensorData::new(blob, [1, 1, d, h, w]), device);
    Tensor::cat(vec![pattern([1, 1, d, h, w], device), blob], 0)
}

fn max_difference(a: &Heatmap, b: &Heatmap) -> f32 {
    assert_eq!(a.dims, b.dims);
    a.values
        .iter()
        .zip(&b.values)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn cam_equals_grad_cam_at_layer4_and_each_item_has_its_own_map() {
    let device = Device::flex();
    let model = network(&device);
    let size = [16, 48, 40];
    let x = two_volumes(size, &device);
    // Eval mode on the autodiff device (running statistics), as on the plain one.
    let autodiff = Device::flex().autodiff();
    let traced = model.valid().fork(&autodiff);
    let mut compared = 0;
    for class in 0..3 {
        let cam = model.cam(x.clone(), class).unwrap();
        assert_eq!(cam.dims, [2, 16, 48, 40]);
        assert!(cam.values.iter().all(|v| (0.0..=1.0).contains(v)));
        let grad_cam = traced
            .grad_cam(two_volumes(size, &autodiff), class, Stage::Layer4)
            .unwrap();
        let diff = max_difference(&cam, &grad_cam);
        assert!(diff <= 1e-4, "class {class}: CAM and Grad-CAM differ by {diff:.2e}");
        let frozen = ResNet3d::freeze(&model).unwrap().cam(x.clone(), class).unwrap();
        let diff = max_difference(&cam, &frozen);
        assert!(diff <= 1e-4, "class {class}: frozen CAM differs by {diff:.2e}");
        // Two different volumes, two different maps (a batch is not explained as one).
        for (n, empty) in cam.empty.iter().enumerate() {
            if !empty {
                let top = cam.item(n).unwrap().iter().fold(0f32, |m, &v| m.max(v));
                assert!((top - 1.0).abs() < 1e-6, "item {n} scaled to a maximum of {top}");
            }
        }
        if cam.empty.iter().all(|e| !e) {
            let (a, b) = (grad_cam.item(0).unwrap(), grad_cam.item(1).unwrap());
            let differ = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                differ > 1e-3,
                "class {class}: the two items' maps differ by only {differ}"
            );
            // Each item's map is the one it gets alone: nothing leaks across the batch.
            for n in 0..2 {
                let alone = traced
                    .grad_cam(two_volumes(size, &autodiff).narrow(0, n, 1), class, Stage::Layer4)
                    .unwrap();
                let diff = alone
                    .values
                    .iter()
                    .zip(grad_cam.item(n).unwrap())
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(diff <= 1e-4, "class {class}, item {n}: {diff:.2e} from its map alone");
            }
            compared += 1;
        }
    }
    assert!(compared > 0, "no class gave both items a map");
    // Earlier stages run too, at the input's size.
    for stage in [Stage::Layer1, Stage::Layer2, Stage::Layer3] {
        let map = traced.grad_cam(two_volumes(size, &autodiff), 1, stage).unwrap();
        assert_eq!(map.dims, [2, 16, 48, 40]);
        assert!(map.values.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
fn wrong_uses_are_typed_errors() {
    let device = Device::flex();
    let model = network(&device);
    let x = pattern([1, 1, 8, 32, 32], &device);
    let says = |result: Result<Heatmap, Error>, what: &str| match result {
        Err(err @ Error::InvalidInput { .. }) => assert!(err.to_string().contains(what), "{err}"),
        other => panic!("expected InvalidInput ({what}), got {other:?}"),
    };
    says(model.grad_cam(x.clone(), 0, Stage::Layer4), "autodiff");
    says(model.cam(x.clone(), 3), "class 3 of a head with 3 classes");
    let headless = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(None)
        .init(&device);
    says(headless.cam(x.clone(), 0), "no head");
    says(model.cam(pattern([1, 3, 8, 32, 32], &device), 0), "channel");
    // Stages by name, as `resnet3d explain --stage` takes them.
    assert_eq!("layer3".parse::<Stage>().unwrap(), Stage::Layer3);
    assert!(matches!(
        "layer5".parse::<Stage>(),
        Err(Error::InvalidConfig { field: "Stage", .. })
    ));
    // The map says how coarse it is: 8 x 32 x 32 at layer4 (stride 32 in-plane, 16 in depth).
    assert_eq!(model.cam(x.clone(), 0).unwrap().source, [1, 1, 1]);
}

/// Two 32^3 volumes of background noise in [-1, 0.3], each with a bright ball of radius 7
/// (4.4% of the voxels, 1 at its rim to 2 at its centre) at a different place; the balls'
/// masks.
fn blob_volumes(device: &Device) -> (Tensor<5>, [Vec<bool>; 2]) {
    const S: usize = 32;
    let centres = [[20.0f32, 12.0, 18.0], [9.0, 21.0, 11.0]];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut values = Vec::with_capacity(2 * S * S * S);
    let mut masks = [vec![false; S * S * S], vec![false; S * S * S]];
    for (n, centre) in centres.iter().enumerate() {
        for (i, inside_mask) in masks[n].iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = -1.0 + 1.3 * ((state >> 40) as f32 / (1u64 << 24) as f32);
            let p = [i / (S * S), i / S % S, i % S].map(|v| v as f32);
            let r2 = (0..3).map(|a| (p[a] - centre[a]).powi(2)).sum::<f32>();
            let inside = r2 <= 49.0;
            *inside_mask = inside;
            values.push(if inside { 2.0 - r2 / 49.0 } else { noise });
        }
    }
    (
        Tensor::from_data(TensorData::new(values, [2, 1, S, S, S]), device),
        masks,
    )
}

/// Intersection over union of the map's top 5% voxels with `mask`.
fn top5_iou(map: &[f32], mask: &[bool]) -> f32 {
    let mut sorted = map.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[map.len() / 20 - 1];
    let top: Vec<bool> = map.iter().map(|&v| v >= threshold && v > 0.0).collect();
    let both = top.iter().zip(mask).filter(|(t, m)| **t && **m).count();
    let either = top.iter().zip(mask).filter(|(t, m)| **t || **m).count();
    both as f32 / either as f32
}

#[test]
fn maps_of_a_blob_detector_cover_the_blob() {
    let device = Device::flex();
    let (model, _) = blob_detector(&device);
    let (x, masks) = blob_volumes(&device);
    // The premise: the class-1 logit rises with the blob, and noise alone gives nothing.
    let logits: Vec<f32> = model.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
    assert!(logits[1] > 0.01 && logits[3] > 0.01, "{logits:?}");
    let noise_only = x.clone().clamp_max(0.3);
    let logits: Vec<f32> = model.forward(noise_only).into_data().try_to_vec::<f32>().unwrap();
    assert!(logits.iter().all(|v| v.abs() < 1e-6), "{logits:?}");

    let autodiff = Device::flex().autodiff();
    let traced = model.valid().fork(&autodiff);
    let (xa, _) = blob_volumes(&autodiff);
    let maps = [
        ("CAM", model.cam(x.clone(), 1).unwrap()),
        (
            "frozen CAM",
            ResNet3d::freeze(&model).unwrap().cam(x.clone(), 1).unwrap(),
        ),
        (
            "Grad-CAM layer4",
            traced.grad_cam(xa.clone(), 1, Stage::Layer4).unwrap(),
        ),
        ("Grad-CAM layer3", traced.grad_cam(xa, 1, Stage::Layer3).unwrap()),
    ];
    for (what, map) in &maps {
        for (n, mask) in masks.iter().enumerate() {
            let own = top5_iou(map.item(n).unwrap(), mask);
            let other = top5_iou(map.item(n).unwrap(), &masks[1 - n]);
            eprintln!("{what}, item {n}: top-5% IoU {own:.3} with its blob, {other:.3} with the other");
            assert!(own >= 0.5, "{what}, item {n}: IoU {own:.3} with its blob");
            assert!(
                other < 0.05,
                "{what}, item {n}: IoU {other:.3} with the other item's blob"
            );
        }
    }
    // Class 0 speaks against the blob: nothing at layer4 is evidence for it.
    let against = model.cam(x, 0).unwrap();
    assert_eq!(against.empty, [true, true]);
}
