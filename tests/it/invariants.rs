//! Properties that hold by construction, checked in Rust against the PyTorch 2-D outputs.
//! Tolerance: 1e-4 of the reference's max abs value.

use resnet3d::burn::tensor::{Device, Tensor};
use resnet3d::{DepthPadding, Inflation, ResNet3d, ResNet3dConfig};

use crate::common::*;

const TOLERANCE: f32 = 1e-4;

/// A reduced-width fixture network of torchvision's ResNet-`depth` layout, and its checkpoint.
fn small(depth: usize) -> (ResNet3dConfig, std::path::PathBuf) {
    let (config, file) = match depth {
        18 => (ResNet3dConfig::resnet18(), "r18_w4.pth"),
        _ => (ResNet3dConfig::resnet50(), "r50_w4.pth"),
    };
    (
        config.with_width(4).with_num_classes(Some(10)),
        fixtures().join("checkpoints").join(file),
    )
}

/// A [N, C, H, W] image repeated over `depth` slices.
fn constant_volume(image: Tensor<4>, depth: usize) -> Tensor<5> {
    let [n, c, h, w] = image.dims();
    image.reshape([n, c, 1, h, w]).repeat_dim(2, depth)
}

/// The 2-D network's PyTorch logits on pattern images: (rgb, grey copied to RGB).
fn reference_2d(depth: usize) -> (Vec<f32>, Vec<f32>) {
    let file = fixtures().join(format!("reference_2d/r{depth}_w4.safetensors"));
    (reference(&file, "rgb_logits").1, reference(&file, "grey_logits").1)
}

#[test]
fn replicate_padding_reproduces_the_2d_network_on_a_depth_constant_volume() {
    for (label, device) in cpu_devices() {
        for depth in [18, 50] {
            let (rgb_ref, grey_ref) = reference_2d(depth);
            for rule in [Inflation::Average, Inflation::Center] {
                // Default cubic layout, every depth stride 2: borders included.
                let (config, path) = small(depth);
                let config = config.with_depth_padding(DepthPadding::Replicate).with_inflation(rule);
                let rgb = ResNet3d::from_imagenet(&path, &config, &device).unwrap();
                let (_, got) = values(rgb.forward(constant_volume(pattern([2, 3, 32, 32], &device), 8)));
                let err = rel_error(&got, &rgb_ref);
                println!("{label} r{depth} {rule:?} rgb: {err:.2e}");
                assert!(err <= TOLERANCE, "{label} r{depth} {rule:?} rgb: {err:e}");

                let grey = ResNet3d::from_imagenet(&path, &config.with_in_channels(1), &device).unwrap();
                let (_, got) = values(grey.forward(constant_volume(pattern([2, 1, 32, 32], &device), 8)));
                let err = rel_error(&got, &grey_ref);
                println!("{label} r{depth} {rule:?} grey: {err:.2e}");
                assert!(err <= TOLERANCE, "{label} r{depth} {rule:?} grey: {err:e}");
            }
        }
    }
}

#[test]
fn depth_kernels_of_one_reproduce_the_2d_network_with_zero_padding() {
    let device = Device::flex();
    for depth in [18, 50] {
        let (rgb_ref, _) = reference_2d(depth);
        let (config, path) = small(depth);
        let model = ResNet3d::from_imagenet(&path, &config.as_2d(), &device).unwrap();
        let (_, got) = values(model.forward(constant_volume(pattern([2, 3, 32, 32], &device), 5)));
        let err = rel_error(&got, &rgb_ref);
        println!("r{depth}: {err:.2e}");
        assert!(err <= TOLERANCE, "r{depth}: {err:e}");
    }
}

#[test]
fn center_with_depth_strides_one_is_the_2d_network_slice_by_slice() {
    let device = Device::flex();
    let (config, path) = small(18);
    let config = config
        .with_inflation(Inflation::Center)
        .with_stem_depth_stride(1)
        .with_max_pool_depth_kernel(1)
        .with_max_pool_depth_stride(1)
        .with_stage_depth_strides([1, 1, 1, 1]);
    let model = ResNet3d::from_imagenet(&path, &config, &device).unwrap();
    let model_2d = ResNet3d::from_imagenet(&path, &config.as_2d(), &device).unwrap();
    let depth = 4;
    let volume = pattern([1, 3, depth, 32, 32], &device);
    let layer4 = model.features(volume.clone()).layer4;
    assert_eq!(layer4.dims()[2], depth);
    for d in 0..depth {
        let slice = volume.clone().slice([0..1, 0..3, d..d + 1, 0..32, 0..32]);
        let (_, expected) = values(model_2d.forward(slice));
        let [n, c, _, h, w] = layer4.dims();
        let (_, got) = values(model.head(layer4.clone().slice([0..n, 0..c, d..d + 1, 0..h, 0..w])));
        let err = rel_error(&got, &expected);
        println!("slice {d}: {err:.2e}");
        assert!(err <= TOLERANCE, "slice {d}: {err:e}");
    }
}

#[test]
fn average_kernels_sum_back_to_the_2d_kernel() {
    let device = Device::flex();
    let (config, path) = small(18);
    let model = ResNet3d::from_imagenet(&path, &config.with_block_depth_kernel(5), &device).unwrap();
    let weights = resnet3d::Weights::from_file(&path).unwrap();
    let resnet3d::Block::Basic(block) = &model.layer2[1] else {
        panic!("basic blocks")
    };
    let w3 = block.conv2.weight.val();
    let [o, i, _, h, w] = w3.dims();
    let (_, summed) = values(w3.sum_dim(2).reshape([o, i, h, w]));
    let w2 = &weights.get("layer2.1.conv2.weight").unwrap().values;
    let err = rel_error(&summed, w2);
    assert!(err <= 1e-6, "{err:e}");
}

#[test]
fn feature_info_matches_the_feature_maps() {
    let device = Device::flex();
    let input: [usize; 5] = [1, 1, 32, 64, 64];
    let configs = [
        ResNet3dConfig::resnet18().with_width(4).with_in_channels(1),
        ResNet3dConfig::resnet50().with_width(2).with_in_channels(1),
        ResNet3dConfig::resnet18().with_width(4).with_in_channels(1).as_2d(),
        ResNet3dConfig::resnet18()
            .with_width(4)
            .with_in_channels(1)
            .with_max_pool(false)
            .with_stem_depth_stride(1)
            .with_stage_depth_strides([1, 1, 2, 2]),
    ];
    for config in configs {
        let f = config.init(&device).features(Tensor::zeros(input, &device));
        let maps = [f.stem, f.layer1, f.layer2, f.layer3, f.layer4];
        for (info, map) in config.feature_info().iter().zip(maps) {
            let [_, c, d, h, w] = map.dims();
            let expected = [0, 1, 2].map(|a| input[2 + a].div_ceil(info.stride[a]));
            assert_eq!(
                (c, [d, h, w]),
                (info.channels, expected),
                "{} of {:?}",
                info.name,
                config.layout()
            );
        }
    }
}
