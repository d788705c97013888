//! Classify a CT volume from a NIfTI file with an inflated ResNet.
//!
//! ```text
//! cargo run --release --example classify_ct -- scan.nii.gz
//! cargo run --release --example classify_ct -- scan.nii.gz --weights resnet18.pth --window mediastinum
//! cargo run --release --example classify_ct -- scan.nii.gz --model runs/nodules/model.bpk
//! ```
//!
//! Reads the volume and its voxel spacing, resamples to `--spacing` mm, crops or pads to
//! `--shape`, applies a Hounsfield window and the ImageNet-grey normalisation, runs the
//! network and prints the class scores. With `--model`, a network trained by
//! `examples/train.rs`: its `config.json` and `preprocessing.json` (beside `model.bpk`) give
//! the network and the whole pipeline, and the other settings are ignored. Without it the
//! head of the inflated network is fresh, so the scores only show that the pipeline runs.

use std::path::{Path, PathBuf};

use clap::Parser;
use resnet3d::burn::tensor::Device;
use resnet3d::burn::tensor::activation::softmax;
use resnet3d::data::Preprocessing;
use resnet3d::preprocess::{Volume, Window};
use resnet3d::{ResNet3dConfig, Weights};

#[derive(Parser, Debug)]
#[command(about = "Classify a NIfTI CT volume with an inflated 3-D ResNet")]
pub struct Args {
    /// The volume: .nii or .nii.gz, in Hounsfield units.
    pub volume: PathBuf,
    /// A 2-D ResNet checkpoint; default: the bundled small one.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Hounsfield window: lung, mediastinum, bone or brain.
    #[arg(long, default_value = "lung")]
    pub window: String,
    /// Isotropic voxel spacing to resample to, in mm.
    #[arg(long, default_value_t = 1.5)]
    pub spacing: f32,
    /// Shape to crop or pad to (depth,height,width).
    #[arg(long, default_value = "64,128,128", value_delimiter = ',')]
    pub shape: Vec<usize>,
    /// Number of classes of the (fresh) head.
    #[arg(long, default_value_t = 2)]
    pub classes: usize,
    /// A trained network (`model.bpk` written by the train example, with its `config.json`
    /// and `preprocessing.json` in the same folder).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scores = classify(&Args::parse(), &Device::flex())?;
    for (class, score) in scores.iter().enumerate() {
        println!("class {class}: {score:.4}");
    }
    Ok(())
}

/// The whole path from file to class probabilities.
pub fn classify(args: &Args, device: &Device) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let volume = Volume::from_nifti(&args.volume)?;
    println!(
        "{}: {:?} voxels of {:?} mm, HU range {:.0} .. {:.0}",
        args.volume.display(),
        volume.shape,
        volume.spacing,
        volume.data.iter().copied().fold(f32::INFINITY, f32::min),
        volume.data.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    );
    if let Some(model) = &args.model {
        return classify_trained(volume, model, device);
    }
    let window = Window::preset(&args.window)
        .ok_or_else(|| format!("--window {}: use lung, mediastinum, bone or brain", args.window))?;
    let shape = <[usize; 3]>::try_from(args.shape.as_slice()).map_err(|_| "--shape takes depth,height,width")?;
    // Resample, crop/pad with air, window, ImageNet-grey normalisation: the training pipeline.
    let volume = Preprocessing::ct(args.spacing, shape, window).apply(volume, [0; 3])?;

    let path = args.weights.clone().unwrap_or_else(bundled_checkpoint);
    let weights = Weights::from_file(&path)?;
    let (layout, width) = weights.layout()?;
    let config = ResNet3dConfig::from_layout(layout)
        .with_width(width)
        .with_in_channels(1)
        .with_num_classes(Some(args.classes));
    let model = resnet3d::inflate_from_2d(&weights, &config, device)?;
    let probabilities = softmax(model.forward(volume.to_tensor(device)?), 1);
    Ok(probabilities
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?)
}

/// The network and pipeline a training run saved next to `model`.
fn classify_trained(volume: Volume, model: &Path, device: &Device) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    use resnet3d::burn::config::Config;
    let dir = model.parent().unwrap_or(Path::new("."));
    let config = ResNet3dConfig::load(dir.join("config.json"))
        .map_err(|e| format!("{}: {e}", dir.join("config.json").display()))?;
    let preprocessing = Preprocessing::load(dir.join("preprocessing.json"))
        .map_err(|e| format!("{}: {e}", dir.join("preprocessing.json").display()))?;
    let net = resnet3d::ResNet3d::load(model, &config, device)?;
    let x = preprocessing.apply(volume, [0; 3])?.to_tensor(device)?;
    let x = x.repeat_dim(1, config.in_channels);
    let probabilities = softmax(net.forward(x), 1);
    Ok(probabilities
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?)
}

fn bundled_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints/r18_w4.pth")
}
