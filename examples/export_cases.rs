//! Writes the ONNX export test cases (`tests/fixtures/export/*.onnx`): one small network per
//! kind of layer the exporter writes, with seeded weights and BatchNorm statistics away from
//! the identity. `tests/fixtures/make_export.py` then runs each file in ONNX Runtime.
//!
//! ```sh
//! cargo run --example export_cases -- tests/fixtures/export
//! ```

use std::path::PathBuf;

use resnet3d::burn::module::{Param, RunningState};
use resnet3d::burn::nn::BatchNorm;
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::{Block, DepthPadding, Inflation, OnnxOptions, ResNet3d, ResNet3dConfig, Weights};

/// The cases: name, configuration, and where the weights come from.
fn cases() -> Vec<(&'static str, ResNet3dConfig)> {
    let small = |mut c: ResNet3dConfig| {
        c.layers = [1, 1, 1, 1];
        c
    };
    vec![
        // Basic blocks and a head, one input channel.
        (
            "basic",
            small(
                ResNet3dConfig::resnet18()
                    .with_width(2)
                    .with_in_channels(1)
                    .with_num_classes(Some(3)),
            ),
        ),
        // Bottlenecks strided on their first 1x1 (v1), no max pool, two channels, no head.
        (
            "bottleneck_v1_nohead",
            small(ResNet3dConfig::resnet50())
                .with_width(2)
                .with_in_channels(2)
                .with_num_classes(None)
                .with_stride_in_1x1(true)
                .with_max_pool(false),
        ),
        // R(2+1)D: factorised stem and blocks.
        (
            "r2plus1d",
            small(ResNet3dConfig::r2plus1d_18().with_width(2).with_num_classes(Some(2))),
        ),
        // MedicalNet-18's stages: zero-padded shortcuts, dilations 2 and 4, no head.
        (
            "medicalnet_zero_pad",
            small(
                ResNet3dConfig::medicalnet(18)
                    .expect("a MedicalNet depth")
                    .with_width(2),
            ),
        ),
        // ACS kernels (inflated from the committed 2-D ResNet-18 of width 2) with replicate
        // depth padding.
        (
            "acs_replicate",
            ResNet3dConfig::resnet18()
                .with_width(2)
                .with_in_channels(1)
                .with_num_classes(Some(4))
                .with_inflation(Inflation::Acs)
                .with_depth_padding(DepthPadding::Replicate),
        ),
    ]
}

/// Seeded BatchNorm statistics: scale in [0.6, 1.4], shift and mean in [-0.2, 0.2], variance
/// in [0.5, 1.5].
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
    bn.running_mean = RunningState::new(v(2, 0.2, 0.0));
    bn.running_var = RunningState::new(v(3, 0.5, 1.0));
}

fn randomise_all(model: &mut ResNet3d, device: &Device) {
    let mut norms: Vec<&mut BatchNorm> = vec![&mut model.bn1];
    if let Some(stem) = &mut model.stem_temporal {
        norms.push(&mut stem.bn);
    }
    for stage in [
        &mut model.layer1,
        &mut model.layer2,
        &mut model.layer3,
        &mut model.layer4,
    ] {
        for block in stage.iter_mut() {
            let downsample = match block {
                Block::Basic(b) => {
                    norms.extend([&mut b.bn1, &mut b.bn2]);
                    &mut b.downsample
                }
                Block::Bottleneck(b) => {
                    norms.extend([&mut b.bn1, &mut b.bn2, &mut b.bn3]);
                    &mut b.downsample
                }
                Block::Factorised(b) => {
                    norms.extend([&mut b.conv1.bn, &mut b.bn1, &mut b.conv2.bn, &mut b.bn2]);
                    &mut b.downsample
                }
            };
            if let Some(ds) = downsample {
                norms.push(&mut ds.bn);
            }
        }
    }
    for (seed, bn) in norms.into_iter().enumerate() {
        randomise(bn, seed + 1, device);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/fixtures/export".into()),
    );
    std::fs::create_dir_all(&out)?;
    let device = Device::flex();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (i, (name, config)) in cases().into_iter().enumerate() {
        device.seed(1000 + i as u64);
        let mut model = if config.inflation == Inflation::Acs {
            let weights = Weights::from_file(root.join("tests/fixtures/checkpoints/r18_w2.pth"))?;
            resnet3d::inflate_from_2d(&weights, &config, &device)?
        } else {
            config.init(&device)
        };
        randomise_all(&mut model, &device);
        let path = out.join(format!("{name}.onnx"));
        model.save_onnx(&path, OnnxOptions { stage_outputs: true })?;
        std::fs::write(out.join(format!("{name}.json")), config_json(&config))?;
        println!("{}: {} bytes", path.display(), std::fs::metadata(&path)?.len());
    }
    Ok(())
}

/// The configuration as JSON (Burn's `Config` serialisation), for the test to rebuild it.
fn config_json(config: &ResNet3dConfig) -> String {
    config.to_string()
}
