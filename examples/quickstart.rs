//! Inflate a 2-D ImageNet ResNet into 3-D and run it on a synthetic CT-like volume.
//!
//! ```text
//! cargo run --release --example quickstart                      # the small bundled checkpoint
//! cargo run --release --example quickstart -- resnet50.pth      # your own (.pth / .safetensors)
//! ```
//!
//! Prints the load report, the class scores of a 1-channel volume, and the 2-D equivalence
//! check: a volume constant along depth must give the 2-D network's output.

use std::path::PathBuf;
use std::time::Instant;

use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::{DepthPadding, ResNet3d, ResNet3dConfig, Weights};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints/r18_w4.pth"));
    let device = Device::flex();

    // The checkpoint's depth and width decide the preset.
    let (layout, width) = Weights::from_file(&path)?.layout()?;
    println!("{}: {layout}, width {width}", path.display());
    let config = ResNet3dConfig::from_layout(layout)
        .with_width(width)
        .with_in_channels(1)
        .with_num_classes(Some(2));

    let start = Instant::now();
    let (model, report) = ResNet3d::from_imagenet_with_report(&path, &config, &device)?;
    println!("inflated in {:.2?}\n{report}", start.elapsed());

    // A CT-like volume: a water-like body ellipse, two dark lungs, a bright spine.
    let [d, h, w] = [32, 96, 96];
    let volume = Tensor::<5>::from_data(TensorData::new(phantom(d, h, w), [1, 1, d, h, w]), &device);
    let start = Instant::now();
    let logits = model.forward(volume);
    println!(
        "logits of a 1x1x{d}x{h}x{w} volume: {} ({:.2?})",
        logits.to_data(),
        start.elapsed()
    );

    // 2-D equivalence: with Replicate depth padding the inflated network reproduces the 2-D
    // network on a depth-constant volume. The 2-D network is the same checkpoint with every
    // depth kernel and stride 1, run on a single slice. Both without a head (the new 2-class
    // head is random), comparing the pooled features.
    let config = config.with_num_classes(None);
    let slice = Tensor::<5>::from_data(TensorData::new(phantom(1, h, w), [1, 1, 1, h, w]), &device);
    let inflated = ResNet3d::from_imagenet(
        &path,
        &config.clone().with_depth_padding(DepthPadding::Replicate),
        &device,
    )?;
    let two_d = ResNet3d::from_imagenet(&path, &config.as_2d(), &device)?;
    let out_3d = inflated.forward(slice.clone().repeat_dim(2, 16));
    let out_2d = two_d.forward(slice);
    let diff: f32 = (out_3d - out_2d.clone()).abs().max().into_scalar();
    let scale: f32 = out_2d.abs().max().into_scalar();
    println!("2-D equivalence on a depth-constant volume: max |3-D - 2-D| = {diff:.2e} (scale {scale:.3})");
    Ok(())
}

/// A synthetic chest-CT-like volume in [0, 1]: air 0, lungs 0.1, soft tissue 0.5, bone 0.9.
fn phantom(d: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(d * h * w);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f32 / w as f32 * 2.0 - 1.0, y as f32 / h as f32 * 2.0 - 1.0);
                let body = (u / 0.9).powi(2) + (v / 0.7).powi(2) < 1.0;
                let lung = ((u.abs() - 0.4) / 0.3).powi(2) + (v / 0.45).powi(2) < 1.0;
                let spine = u.powi(2) + (v - 0.5).powi(2) < 0.01;
                let value = if spine {
                    0.9
                } else if lung {
                    0.1
                } else if body {
                    0.5
                } else {
                    0.0
                };
                // A little texture that varies with depth, so slices differ.
                let texture = 0.02 * ((x * 7 + y * 13 + z * 29) % 11) as f32 / 11.0;
                out.push(value + texture);
            }
        }
    }
    out
}
