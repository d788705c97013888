//! Grad-CAM and CAM (`resnet3d::explain`): at `layer4` they are the same map (the module docs
//! derive why), on the Burn model and the frozen network alike; each batch item gets its own
//! map; wrong uses are typed errors.

use resnet3d::burn::module::Module;
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::explain::{Heatmap, Stage};
use resnet3d::{Error, ResNet3d, ResNet3dConfig};

use crate::common::*;

fn network(device: &Device) -> ResNet3d {
    let config = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(Some(3));
    ResNet3d::from_imagenet(fixtures().join("checkpoints/r18_w4.pth"), &config, device).unwrap()
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
}
