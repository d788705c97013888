//! Fine-tune an inflated ResNet3d-18 on a labelled set made on the fly: noisy 32^3 volumes
//! holding a sphere (class 0) or a cube (class 1).
//!
//! ```text
//! cargo run --release --example finetune                              # bundled small checkpoint
//! cargo run --release --example finetune -- --weights resnet18.pth --freeze-early --epochs 5
//! ```
//!
//! Shows the training loop a user writes: Burn's autodiff device, cross-entropy, Adam
//! ([`FusedAdam`](resnet3d::train::FusedAdam): Burn's Adam in one pass per parameter),
//! optionally frozen stem and `layer1` (their BatchNorm statistics stay as inflated), a
//! progress bar per epoch, and the validation accuracy at the end.

use std::path::PathBuf;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use resnet3d::burn::module::Module;
use resnet3d::burn::nn::loss::CrossEntropyLossConfig;
use resnet3d::burn::optim::{GradientsParams, ModuleOptimizer};
use resnet3d::burn::tensor::{Device, Int, Tensor, TensorData};
use resnet3d::train::FusedAdamConfig;
use resnet3d::{ResNet3d, ResNet3dConfig, Weights};

/// Side of the cubic volumes.
pub const SIZE: usize = 32;
/// Standard deviation of the noise.
pub const NOISE: f32 = 0.2;

#[derive(Parser, Debug)]
#[command(about = "Fine-tune an inflated ResNet3d-18 on spheres vs cubes")]
struct Args {
    /// A 2-D ResNet-18 checkpoint (.pth, .safetensors, .onnx); default: the bundled small one.
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    steps_per_epoch: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Freeze the stem and layer1 (parameters and BatchNorm statistics).
    #[arg(long)]
    freeze_early: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let path = args
        .weights
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints/r18_w4.pth"));
    let device = Device::flex().autodiff();
    device.seed(42); // the fresh head's initialisation: runs repeat
    let mut model = inflated_resnet18(&path, &device)?;
    if args.freeze_early {
        model = freeze_early(model);
        println!("stem and layer1 frozen");
    }
    let mut optimizer = FusedAdamConfig::new().init();
    let validation = 1_000_000;
    println!(
        "validation accuracy before training: {:.1}%",
        100.0 * accuracy(&model.valid(), validation, 64, &device)
    );
    for epoch in 1..=args.epochs {
        let bar = ProgressBar::new(args.steps_per_epoch as u64);
        bar.set_style(ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} loss {msg}",
        )?);
        bar.set_prefix(format!("{epoch}/{}", args.epochs));
        let mut total = 0.0;
        for step in 0..args.steps_per_epoch {
            let first = ((epoch - 1) * args.steps_per_epoch + step) * args.batch;
            let (x, y) = batch(first as u64, args.batch, &device);
            let loss;
            (model, loss) = train_step(model, &mut optimizer, x, y, args.lr);
            total += loss;
            bar.set_message(format!("{loss:.4}"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        println!(
            "epoch {epoch}/{}: mean loss {:.4}",
            args.epochs,
            total / args.steps_per_epoch as f32
        );
    }
    println!(
        "validation accuracy after training: {:.1}%",
        100.0 * accuracy(&model.valid(), validation, 64, &device)
    );
    Ok(())
}

/// A 1-channel, 2-class ResNet3d-18 inflated from `path`, at the checkpoint's width.
pub fn inflated_resnet18(path: &std::path::Path, device: &Device) -> Result<ResNet3d, resnet3d::Error> {
    let weights = Weights::from_file(path)?;
    let (_, width) = weights.layout()?;
    let config = ResNet3dConfig::resnet18()
        .with_width(width)
        .with_in_channels(1)
        .with_num_classes(Some(2));
    resnet3d::inflate_from_2d(&weights, &config, device)
}

/// Stops training the stem and `layer1`: no gradients, BatchNorm statistics kept.
pub fn freeze_early(mut model: ResNet3d) -> ResNet3d {
    model.conv1 = model.conv1.freeze();
    model.bn1 = model.bn1.freeze();
    model.layer1 = model.layer1.into_iter().map(Module::freeze).collect();
    model
}

/// One optimisation step on a batch; returns the updated model and the batch's loss.
pub fn train_step(
    model: ResNet3d,
    optimizer: &mut ModuleOptimizer,
    x: Tensor<5>,
    y: Tensor<1, Int>,
    lr: f64,
) -> (ResNet3d, f32) {
    let logits = model.forward(x);
    let loss = CrossEntropyLossConfig::new().init(&logits.device()).forward(logits, y);
    let value: f32 = loss.clone().into_scalar();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optimizer.step(lr, model, grads), value)
}

/// Share of `n` samples, from index `first` on, that the model classifies right.
pub fn accuracy(model: &ResNet3d, first: u64, n: usize, device: &Device) -> f32 {
    let (x, y) = batch(first, n, &device.clone().without_autodiff());
    let predicted = model.forward(x).argmax(1).reshape([n]);
    let correct: i64 = predicted.equal(y).int().sum().into_scalar();
    correct as f32 / n as f32
}

/// `n` samples from index `first` on: volumes `[n, 1, 32, 32, 32]` and labels `[n]`.
pub fn batch(first: u64, n: usize, device: &Device) -> (Tensor<5>, Tensor<1, Int>) {
    let mut data = Vec::with_capacity(n * SIZE * SIZE * SIZE);
    let mut labels = Vec::with_capacity(n);
    for i in first..first + n as u64 {
        let (volume, label) = sample(i);
        data.extend(volume);
        labels.push(label as i64);
    }
    (
        Tensor::from_data(TensorData::new(data, [n, 1, SIZE, SIZE, SIZE]), device),
        Tensor::from_data(TensorData::new(labels, [n]), device),
    )
}

/// Sample `index`: a sphere (label 0) or the cube around a sphere of the same radius (label 1)
/// at a random place and size, intensity 1 on 0, with noise of standard deviation [`NOISE`].
pub fn sample(index: u64) -> (Vec<f32>, usize) {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    let label = (index % 2) as usize;
    let centre: [f32; 3] = [0; 3].map(|_| 10.0 + 12.0 * uniform());
    let radius = 5.0 + 4.0 * uniform();
    let half_side = radius; // the cube holds the sphere of the same radius
    let mut out = Vec::with_capacity(SIZE * SIZE * SIZE);
    for z in 0..SIZE {
        for y in 0..SIZE {
            for x in 0..SIZE {
                let d = [z, y, x]
                    .map(|v| v as f32)
                    .iter()
                    .zip(centre)
                    .map(|(v, c)| v - c)
                    .collect::<Vec<_>>();
                let inside = match label {
                    0 => d.iter().map(|v| v * v).sum::<f32>().sqrt() <= radius,
                    _ => d.iter().all(|v| v.abs() <= half_side),
                };
                // Sum of 4 uniforms: mean 2, variance 1/3; scaled to std NOISE.
                let noise = (uniform() + uniform() + uniform() + uniform() - 2.0) * NOISE * 3f32.sqrt();
                out.push(if inside { 1.0 } else { 0.0 } + noise);
            }
        }
    }
    (out, label)
}
