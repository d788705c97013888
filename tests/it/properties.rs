//! Property tests (proptest), a few seconds in `cargo test`:
//! - random valid configurations (basic, bottleneck and (2+1)-D blocks, projection and
//!   zero-padding shortcuts, the factorised stem, MedicalNet's dilated stages, mixed depth
//!   kernels, depth kernels and strides, max pool on or off, zero or replicate depth padding,
//!   widths and channel counts that are not multiples of 16, odd sizes, batches of 1 to 3):
//!   the frozen network and the Burn model on flex (which share the crate's kernels) compute
//!   what the same model computes on ndarray with Burn's own `conv3d`: the last stage and the
//!   logits within 1e-4 of their scale (the bf16 network, where the CPU has AVX512_BF16,
//!   within 8e-2);
//! - random byte changes and truncations of fixture files: a typed error or a valid load,
//!   never a panic.
//!
//! A failing case is printed by proptest with its seed-independent minimal input; the
//! regressions it finds are kept in `tests/proptest-regressions/properties.txt` (replayed first).

use proptest::prelude::*;
use resnet3d::burn::module::{Param, RunningState};
use resnet3d::burn::nn::BatchNorm;
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::{Block, BlockKind, DepthPadding, ResNet3d, ResNet3dConfig, Shortcut, Weights, inflate_from_2d};

use crate::common::*;

/// Non-trivial BatchNorm statistics (init leaves them at the identity, which would hide a
/// folding error): values from `seed`, variances in [0.5, 1.5].
fn randomise(bn: &mut BatchNorm, seed: usize, device: &Device) {
    let c = bn.gamma.dims()[0];
    let v = |k: usize, scale: f32, offset: f32| {
        let values: Vec<f32> = (0..c)
            .map(|i| ((seed * 7 + k * 13 + i) as f32 * 0.731).sin() * scale + offset)
            .collect();
        Tensor::<1>::from_data(TensorData::new(values, [c]), device)
    };
    bn.gamma = Param::from_tensor(v(0, 0.4, 1.0));
    bn.beta = Param::from_tensor(v(1, 0.2, 0.0));
    bn.running_mean = RunningState::new(v(2, 0.3, 0.0));
    bn.running_var = RunningState::new(v(3, 0.5, 1.0));
}

pub(crate) fn randomise_all(model: &mut ResNet3d, device: &Device) {
    let mut seed = 0;
    let mut next = |bn: &mut BatchNorm| {
        seed += 1;
        randomise(bn, seed, device);
    };
    next(&mut model.bn1);
    if let Some(stem) = &mut model.stem_temporal {
        next(&mut stem.bn);
    }
    for stage in [
        &mut model.layer1,
        &mut model.layer2,
        &mut model.layer3,
        &mut model.layer4,
    ] {
        for block in stage.iter_mut() {
            match block {
                Block::Basic(b) => {
                    next(&mut b.bn1);
                    next(&mut b.bn2);
                    if let Some(ds) = &mut b.downsample {
                        next(&mut ds.bn);
                    }
                }
                Block::Bottleneck(b) => {
                    next(&mut b.bn1);
                    next(&mut b.bn2);
                    next(&mut b.bn3);
                    if let Some(ds) = &mut b.downsample {
                        next(&mut ds.bn);
                    }
                }
                Block::Factorised(b) => {
                    next(&mut b.conv1.bn);
                    next(&mut b.bn1);
                    next(&mut b.conv2.bn);
                    next(&mut b.bn2);
                    if let Some(ds) = &mut b.downsample {
                        next(&mut ds.bn);
                    }
                }
            }
        }
    }
}

prop_compose! {
    fn configs()(
        block in prop::sample::select(vec![BlockKind::Basic, BlockKind::Bottleneck, BlockKind::Basic2Plus1d]),
        zero_pad_shortcut in any::<bool>(),
        factorised_stem in any::<bool>(),
        medicalnet_stages in any::<bool>(),
        mixed_depth_kernels in any::<bool>(),
        layers in prop::array::uniform4(1usize..=2),
        width in prop::sample::select(vec![3usize, 5, 8, 12, 16, 20]),
        in_channels in 1usize..=3,
        num_classes in prop::option::of(1usize..=5),
        stem_depth_kernel in prop::sample::select(vec![1usize, 3, 5, 7]),
        stem_depth_stride in 1usize..=2,
        max_pool in any::<bool>(),
        max_pool_depth_kernel in prop::sample::select(vec![1usize, 3]),
        max_pool_depth_stride in 1usize..=2,
        block_depth_kernel in prop::sample::select(vec![1usize, 3]),
        stage_depth_strides in prop::array::uniform4(1usize..=2),
        replicate in any::<bool>(),
        stride_in_1x1 in any::<bool>(),
    ) -> ResNet3dConfig {
        let config = ResNet3dConfig::new(block, layers)
            .with_width(width)
            .with_in_channels(in_channels)
            .with_num_classes(num_classes)
            .with_stem_depth_kernel(stem_depth_kernel)
            .with_stem_depth_stride(stem_depth_stride)
            .with_max_pool(max_pool)
            .with_max_pool_depth_kernel(max_pool_depth_kernel)
            .with_max_pool_depth_stride(max_pool_depth_stride)
            .with_block_depth_kernel(block_depth_kernel)
            .with_stage_depth_strides(stage_depth_strides)
            .with_depth_padding(if replicate { DepthPadding::Replicate } else { DepthPadding::Zeros })
            .with_stride_in_1x1(stride_in_1x1)
            .with_shortcut(if zero_pad_shortcut { Shortcut::ZeroPad } else { Shortcut::Projection })
            .with_factorised_stem(factorised_stem)
            .with_stage_block_depth_kernels(mixed_depth_kernels.then_some([block_depth_kernel, 1, 1, 1]));
        if medicalnet_stages {
            config
                .with_stage_depth_strides([1, 2, 1, 1])
                .with_stage_strides([1, 2, 1, 1])
                .with_stage_dilations([1, 1, 2, 4])
        } else {
            config
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_frozen_network_computes_what_the_model_computes(
        config in configs(),
        batch in 1usize..=3,
        // Up to 48 wide: without the max pool, layer1 then has lines long enough for the
        // implicit product (16+ channels).
        size in (1usize..=9, 1usize..=23, 1usize..=48),
    ) {
        let device = Device::flex();
        prop_assume!(config.validate().is_ok());
        let mut model = config.init(&device);
        randomise_all(&mut model, &device);
        let frozen = model.freeze().unwrap();
        let x = pattern([batch, config.in_channels, size.0, size.1, size.2], &device);
        // The last stage and the logits together, against the scale of both: a head of one
        // class can give a logit near 0, whose own scale would turn a rounding difference
        // of 1e-7 into a "relative error" of 1e-3 (seen in CI on 2026-12-06).
        let outputs = |layer4: Tensor<5>, logits: Tensor<2>| [values(layer4).1, values(logits).1].concat();
        let reference = on_ndarray(&model);
        let xn = x.clone().to_device(&ndarray());
        let x_bf16 = x.clone();
        let expected = outputs(reference.features(xn.clone()).layer4, reference.forward(xn));
        for (path, got) in [
            ("flex", outputs(model.features(x.clone()).layer4, model.forward(x.clone()))),
            ("frozen", outputs(frozen.features(x.clone()).unwrap().layer4, frozen.forward(x).unwrap())),
        ] {
            let err = rel_error(&got, &expected);
            prop_assert!(err <= TOLERANCE, "{path}: rel. error {err:e} for {config:?} on {batch} x {size:?}");
        }
        // The bf16 network (its implicit, gathered, pointwise and Winograd bf16 products),
        // where the CPU has AVX512_BF16: within bf16's rounding, BF16_TOLERANCE of the scale.
        if let Ok(bf16) = model.freeze_bf16() {
            let got = outputs(bf16.features(x_bf16.clone()).unwrap().layer4, bf16.forward(x_bf16).unwrap());
            let err = rel_error(&got, &expected);
            prop_assert!(err <= BF16_TOLERANCE, "bf16: rel. error {err:e} for {config:?} on {batch} x {size:?}");
        }
    }
}

/// The bf16 network against Burn's f32 `conv3d`: 8 significant bits per product input over a
/// dozen layers of random widths and BatchNorms; the largest error seen in 260 cases was
/// 3.0e-2 of the scale (a wrong index or a missed tile gives errors of the scale itself).
const BF16_TOLERANCE: f32 = 8e-2;

/// The fixture files the mutations start from, with a configuration they load onto.
fn samples() -> Vec<(&'static str, ResNet3dConfig)> {
    let r18 = ResNet3dConfig::resnet18().with_width(2).with_num_classes(Some(10));
    let r34 = ResNet3dConfig::resnet34().with_width(2).with_num_classes(Some(10));
    vec![
        ("checkpoints/r18_w2.pth", r18.clone()),
        ("checkpoints/r34_w2.safetensors", r34),
        ("onnx/r18_ts_fold.onnx", r18.clone()),
        ("onnx/r18_ts_matmul_head.onnx", r18),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn changed_or_cut_files_load_or_give_a_typed_error(
        sample in 0usize..4,
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        // Most changes land in the first 2 KiB, where headers, pickles and graphs start.
        early in any::<bool>(),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let (file, config) = samples().swap_remove(sample);
        let mut bytes = std::fs::read(fixtures().join(file)).unwrap();
        for (at, value) in changes {
            let span = if early { bytes.len().min(2048) } else { bytes.len() };
            let i = at.index(span);
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(std::path::Path::new(file).file_name().unwrap());
        std::fs::write(&path, &bytes).unwrap();
        // Any outcome but a panic: a typed error, or weights that then load or are refused.
        if let Ok(weights) = Weights::from_file(&path) {
            let _ = inflate_from_2d(&weights, &config, &Device::flex());
        }
    }
}
