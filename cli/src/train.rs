//! `resnet3d train`: fine-tune a 3-D ResNet on a folder of labelled scans with Burn's
//! training loop.
//!
//! Reads `--labels` (a CSV `path,label[,split]`, paths relative to it; without a split
//! column a seeded, class-stratified `--valid-share` goes to validation), checks every row
//! and reads every scan before training, then trains with loss, accuracy and AUROC per epoch
//! on both splits, a warm-up + cosine schedule, class-balanced loss, checkpoints, early
//! stopping on validation AUROC. Writes `--out/summary.json` and the best network as
//! `model.bpk` + `config.json` (+ `preprocessing.json`), which `resnet3d predict` and
//! `resnet3d explain --model` read.
//!
//! Without `--weights` the network is inflated from the bundled small ResNet-18 checkpoint
//! (width 4, for trying things out); `--scratch` starts from random weights instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use resnet3d::burn::config::Config;
use resnet3d::burn::tensor::Device;
use resnet3d::data::{Augmentation, LabelledScans, Preprocessing, ScanDataset, Split, VolumeCache};
use resnet3d::preprocess::Window;
use resnet3d::train::{FitConfig, FitSummary, evaluate, fit};
use resnet3d::{Layout, ResNet3dConfig, Weights};

/// `resnet3d train --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  cargo run --release --example make_nodules -- scans/      # a demo dataset
  resnet3d train --labels scans/labels.csv --out runs/nodules
  resnet3d train --labels scans/labels.csv --depth 50 --weights resnet50.pth \\
      --spacing 1.5 --size 64,128,128 --window lung --epochs 20 --batch 4 --out runs/r50
  resnet3d train --labels scans/labels.csv --out runs/nodules --resume   # after an interruption";

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Fine-tune an inflated 3-D ResNet on labelled scans (NIfTI files, DICOM folders)",
    after_help = EXAMPLES
)]
pub struct Args {
    /// The label file: CSV with header `path,label` and optionally `split`.
    #[arg(long)]
    pub labels: PathBuf,
    /// Output folder: checkpoints, logs, summary.json, model.bpk, config.json.
    #[arg(long)]
    pub out: PathBuf,
    /// ResNet depth: 18, 34, 50, 101 or 152.
    #[arg(long, default_value_t = 18)]
    pub depth: usize,
    /// A 2-D ImageNet checkpoint (.pth, .safetensors, .onnx) to inflate, or the name of
    /// published weights (resnet50.tv2_in1k, ...); default: the bundled small ResNet-18
    /// (depth 18 only).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Start from random weights instead of inflating a checkpoint.
    #[arg(long)]
    pub scratch: bool,
    /// Channel width of a `--scratch` network (64 is the standard ResNet).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Input channels (the grey volume is repeated over them).
    #[arg(long, default_value_t = 1)]
    pub in_channels: usize,
    /// Isotropic voxel spacing to resample to, in mm.
    #[arg(long, default_value_t = 1.5)]
    pub spacing: f32,
    /// Network input extent depth,height,width in voxels.
    #[arg(long, default_value = "64,128,128", value_delimiter = ',')]
    pub size: Vec<usize>,
    /// Hounsfield window: lung, mediastinum, bone, brain, or none (no window, per-volume
    /// normalisation, e.g. for MRI).
    #[arg(long, default_value = "lung")]
    pub window: String,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Epochs of learning-rate warm-up.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Stop after this many epochs without a better validation AUROC (0: never).
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// Share of each class used for validation when the CSV has no split column.
    #[arg(long, default_value_t = 0.25)]
    pub valid_share: f64,
    /// Seed of the split, the training order, the augmentation and the new head.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Loader threads (reading ahead; the run is the same whatever their number).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Devices to train on, comma-separated: `cpu` (flex), `gpu` (wgpu's default) or `gpu:N`
    /// (wgpu's discrete GPU N; several for Burn's multi-device strategy).
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Continue from the last checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Keep the stem and layer1 as loaded (weights and BatchNorm statistics).
    #[arg(long)]
    pub freeze_early: bool,
    /// Recompute the BatchNorm outputs in the backward pass instead of keeping them (Burn's
    /// gradient checkpointing): the same run in less memory, steps about 10% longer.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Train without augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// The augmentations to use, comma-separated: crop, flip (left-right), rotate (quarter
    /// turns in the axial plane, for patches centred on a finding), intensity, noise.
    #[arg(long, default_value = "crop,flip,intensity,noise", value_delimiter = ',')]
    pub augment: Vec<String>,
    /// Memory for cached preprocessed volumes, in MiB (the rest goes to --out/cache).
    #[arg(long, default_value_t = 4096)]
    pub cache_mb: usize,
}

/// The whole run: labels, pipeline, network, Burn's training loop.
pub fn run(args: &Args) -> Result<FitSummary, Box<dyn std::error::Error>> {
    let devices = args.devices.iter().map(|d| device(d)).collect::<Result<Vec<_>, _>>()?;
    let labels = LabelledScans::from_csv(&args.labels, args.valid_share, args.seed)?;
    let [d, h, w] = <[usize; 3]>::try_from(args.size.as_slice()).map_err(|_| "--size takes depth,height,width")?;
    let preprocessing = match args.window.as_str() {
        "none" => Preprocessing::new([d, h, w])
            .with_spacing(Some([args.spacing; 3]))
            .with_normalization(resnet3d::data::Normalization::PerVolume)
            .with_fill(0.0),
        name => {
            let window = Window::preset(name)
                .ok_or_else(|| format!("--window {name}: use lung, mediastinum, bone, brain or none"))?;
            Preprocessing::ct(args.spacing, [d, h, w], window)
        }
    };
    let cache = Arc::new(VolumeCache::with_disk(args.cache_mb << 20, args.out.join("cache"))?);
    let train = ScanDataset::new(&labels, Split::Train, preprocessing.clone(), cache.clone());
    let train = if args.no_augment {
        train
    } else {
        train.with_augmentation(augmentation(&args.augment, args.seed)?)?
    };
    let valid = ScanDataset::new(&labels, Split::Valid, preprocessing.clone(), cache.clone());
    println!(
        "{}: {} training scans {:?}, {} validation scans {:?} (per class)",
        args.labels.display(),
        labels.split(Split::Train).count(),
        labels.class_counts(Split::Train),
        labels.split(Split::Valid).count(),
        labels.class_counts(Split::Valid)
    );

    devices[0].seed(args.seed); // a --scratch network's convolutions
    let (net, config) = network(args, labels.classes(), &devices[0])?;
    let settings = FitConfig::new()
        .with_epochs(args.epochs)
        .with_batch_size(args.batch)
        .with_learning_rate(args.lr)
        .with_warmup_epochs(args.warmup)
        .with_patience((args.patience > 0).then_some(args.patience))
        .with_workers(args.workers)
        .with_seed(args.seed)
        .with_freeze_early(args.freeze_early)
        .with_gradient_checkpointing(args.gradient_checkpointing)
        .with_resume(args.resume);
    let mut summary = fit(net, &config, train, valid, &settings, &devices, &args.out)?;
    // The held-out scans, once, with the best network.
    let test = ScanDataset::new(&labels, Split::Test, preprocessing, cache);
    if !test.scans().is_empty() {
        let best = resnet3d::ResNet3d::load(&summary.model, &config, &devices[0])?;
        let metrics = evaluate(best, config.in_channels, test, &devices[0])?;
        println!(
            "test ({} scans): AUROC {}, accuracy {:.1}%",
            metrics.scans,
            metrics
                .auroc
                .map_or("undefined (one class)".into(), |a| format!("{a:.1}%")),
            metrics.accuracy
        );
        summary.test = Some(metrics);
        summary.save(args.out.join("summary.json"))?;
    }
    Ok(summary)
}

/// The network to fine-tune and its configuration.
pub fn network(
    args: &Args,
    classes: usize,
    device: &Device,
) -> Result<(resnet3d::ResNet3d, ResNet3dConfig), Box<dyn std::error::Error>> {
    let layout =
        Layout::preset(args.depth).ok_or_else(|| format!("--depth {}: use 18, 34, 50, 101 or 152", args.depth))?;
    if args.scratch {
        let config = ResNet3dConfig::from_layout(layout)
            .with_width(args.width)
            .with_in_channels(args.in_channels)
            .with_num_classes(Some(classes));
        config.validate()?;
        return Ok((config.init(device).with_seeded_head(args.seed), config));
    }
    let path = match &args.weights {
        Some(path) => crate::weights_file(path)?,
        None if args.depth == 18 => bundled_checkpoint(),
        None => return Err(format!("--depth {} needs --weights (or --scratch)", args.depth).into()),
    };
    let weights = Weights::from_file(&path)?;
    let (_, width) = weights.layout()?;
    let config = ResNet3dConfig::from_layout(layout)
        .with_width(width)
        .with_in_channels(args.in_channels)
        .with_num_classes(Some(classes));
    let (net, report) = resnet3d::inflate_from_2d_with_report(&weights, &config, device)?;
    // A new head from the run's seed, not from Burn's process-wide generator (which other
    // threads may draw from between a seeding and the head's initialisation); a head the
    // checkpoint gave (as many classes as the labels) is kept.
    let net = match report.head {
        resnet3d::Head::Fresh { .. } => net.with_seeded_head(args.seed),
        _ => net,
    };
    Ok((net, config))
}

/// The default augmentation with the kinds not listed switched off.
fn augmentation(kinds: &[String], seed: u64) -> Result<Augmentation, String> {
    let known = ["crop", "flip", "rotate", "intensity", "noise"];
    if let Some(unknown) = kinds.iter().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("--augment {unknown}: use some of {}", known.join(", ")));
    }
    let on = |kind: &str| kinds.iter().any(|k| k == kind);
    let mut aug = Augmentation::new().with_seed(seed);
    if !on("crop") {
        aug = aug.with_crop_margin([0; 3]);
    }
    if !on("flip") {
        aug = aug.with_flip([false; 3]);
    }
    aug.rotate = on("rotate");
    if !on("intensity") {
        aug = aug.with_intensity_scale(0.0).with_intensity_shift(0.0);
    }
    if !on("noise") {
        aug = aug.with_noise_std(0.0);
    }
    Ok(aug)
}

/// `cpu`, `gpu` or `gpu:N`.
fn device(name: &str) -> Result<Device, String> {
    match name.trim() {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "gpu" => Ok(Device::wgpu(resnet3d::burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "wgpu")]
        other if other.starts_with("gpu:") => other[4..]
            .parse()
            .map(|n| Device::wgpu(resnet3d::burn::tensor::DeviceKind::DiscreteGpu(n)))
            .map_err(|_| format!("--devices {other}: gpu:N takes a number")),
        other => Err(format!(
            "--devices {other}: use cpu{}",
            if cfg!(feature = "wgpu") {
                ", gpu or gpu:N"
            } else {
                " (gpu needs --features wgpu)"
            }
        )),
    }
}

/// The small ResNet-18 (width 4) of the crate's repository, for trying things out.
pub fn bundled_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/checkpoints/r18_w4.pth")
}
