//! `resnet3d explain`: classify one CT scan (NIfTI file or DICOM folder) and show where the
//! network looked.
//!
//! Reads the volume and its voxel spacing, resamples to `--spacing` mm, crops or pads to
//! `--shape`, applies a Hounsfield window and the ImageNet-grey normalisation, runs the
//! network and prints the class scores. With `--model`, a network trained by
//! `resnet3d train`: its `config.json` and `preprocessing.json` (beside `model.bpk`) give
//! the network and the whole pipeline, and the other settings are ignored. Without it the
//! head of the inflated network is fresh, so the scores only show that the pipeline runs.
//!
//! `--cam` writes a PNG montage of axial slices (the windowed scan, the CAM of `--class`, by
//! default the top class, in colour, a colour bar); `--cam-nifti` writes the map on the scan's
//! own grid with the scan's affine (a NIfTI input's header, a DICOM series' position and
//! orientation), for 3D Slicer or ITK-SNAP to overlay.

use std::path::{Path, PathBuf};

use clap::Parser;
use resnet3d::burn::module::Module;
use resnet3d::burn::tensor::Device;
use resnet3d::burn::tensor::activation::softmax;
use resnet3d::data::{Normalization, Preprocessing};
use resnet3d::explain::{Montage, Slices, Stage};
use resnet3d::infer::{PlacedScan, TrainedRun};
use resnet3d::preprocess::Window;
use resnet3d::{ResNet3d, ResNet3dConfig, Weights};

/// `resnet3d explain --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  resnet3d explain scan.nii.gz --model runs/nodules --cam cam.png --cam-nifti cam.nii.gz
  resnet3d explain dicom/series/ --series 1.2.840.113619... --model runs/nodules --cam cam.png
  resnet3d explain scan.nii.gz --model runs/nodules --stage layer3 --class 1 --around-max --cam cam.png
  resnet3d explain scan.nii.gz --weights resnet18.pth --window mediastinum   # a fresh head: the pipeline only";

#[derive(Parser, Debug)]
#[command(
    about = "Classify one scan (NIfTI or DICOM folder) and map where the network looked (CAM, Grad-CAM)",
    after_help = EXAMPLES
)]
pub struct Args {
    /// The scan: a .nii/.nii.gz file or a folder of DICOM slices, in Hounsfield units.
    pub volume: PathBuf,
    /// The SeriesInstanceUID to read when the DICOM folder holds several series.
    #[arg(long)]
    pub series: Option<String>,
    /// A 2-D ResNet checkpoint, or the name of published weights (resnet50.tv2_in1k, ...);
    /// default: the bundled small one.
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
    /// A trained network: the folder `resnet3d train` wrote, or its `model.bpk` (with
    /// `config.json` and `preprocessing.json` beside it).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Write a PNG montage of the class activation map over axial slices.
    #[arg(long)]
    pub cam: Option<PathBuf>,
    /// Write the class activation map as NIfTI on the scan's grid, with its affine.
    #[arg(long)]
    pub cam_nifti: Option<PathBuf>,
    /// The stage to explain: layer4 (CAM, no gradients) or layer1..layer3 (Grad-CAM, on
    /// Burn's autodiff); earlier stages give finer maps of small inputs.
    #[arg(long, default_value = "layer4")]
    pub stage: String,
    /// The class to map; default: the top-scoring one.
    #[arg(long)]
    pub class: Option<usize>,
    /// Montage slices around the map's maximum instead of evenly spaced.
    #[arg(long)]
    pub around_max: bool,
}

/// The whole path from file to class probabilities (and the maps asked for).
pub fn classify(args: &Args, device: &Device) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let scan = PlacedScan::read(&args.volume, args.series.as_deref())?;
    if let Some(uid) = &scan.series {
        println!("DICOM series {uid}");
    }
    let (volume, placement) = (scan.volume, scan.placement);
    println!(
        "{}: {:?} voxels of {:?} mm, HU range {:.0} .. {:.0}",
        args.volume.display(),
        volume.shape,
        volume.spacing,
        volume.data.iter().copied().fold(f32::INFINITY, f32::min),
        volume.data.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    );
    let (net, preprocessing, in_channels) = match &args.model {
        Some(model) => trained(model, device)?,
        None => inflated(args, device)?,
    };
    let x = preprocessing.apply(volume.clone(), [0; 3])?.to_tensor(device)?;
    let x = x.repeat_dim(1, in_channels);
    let probabilities: Vec<f32> = softmax(net.forward(x.clone()), 1)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    if args.cam.is_some() || args.cam_nifti.is_some() {
        let top = (0..probabilities.len()).fold(0, |b, c| if probabilities[c] > probabilities[b] { c } else { b });
        let class = args.class.unwrap_or(top);
        let stage: Stage = args.stage.parse()?;
        let heatmap = if stage == Stage::Layer4 {
            net.cam(x, class)?
        } else {
            // Grad-CAM: the network (eval mode, running statistics) and input on autodiff.
            let autodiff = device.clone().autodiff();
            let x = resnet3d::burn::tensor::Tensor::from_data(x.into_data(), &autodiff);
            net.valid().fork(&autodiff).grad_cam(x, class, stage)?
        };
        if heatmap.empty[0] {
            println!(
                "class {class}: no voxel at {} speaks for it; the map is all zero",
                args.stage
            );
        }
        if heatmap.source.contains(&1) {
            println!(
                "{}'s maps are {:?} voxels: an axis of 1 cannot show where; try --stage layer3 or a larger --shape",
                args.stage, heatmap.source
            );
        }
        let spacing = preprocessing.spacing.unwrap_or(volume.spacing);
        let map = heatmap.volume(0, spacing)?;
        if let Some(png) = &args.cam {
            // The scan on the network's grid, in HU: the pipeline without window and scaling.
            let hu = Preprocessing {
                window: None,
                normalization: Normalization::None,
                ..preprocessing.clone()
            }
            .apply(volume.clone(), [0; 3])?;
            let window = preprocessing.window.unwrap_or(Window::LUNG);
            let slices = if args.around_max {
                Slices::AroundMaximum
            } else {
                Slices::Even
            };
            let picture = Montage::new(window).with_slices(slices).render(&hu, &map)?;
            picture.save_png(png)?;
            println!(
                "class {class} map: {} ({} x {} pixels)",
                png.display(),
                picture.width,
                picture.height
            );
        }
        if let Some(nifti) = &args.cam_nifti {
            let back = preprocessing.to_scan_grid(&map, volume.shape, volume.spacing)?;
            back.save_nifti(nifti, &placement)?;
            println!("class {class} map on the scan's grid: {}", nifti.display());
        }
    }
    Ok(probabilities)
}

/// A network, its input pipeline and its number of input channels.
type Setup = (ResNet3d, Preprocessing, usize);

/// The checkpoint inflated with a fresh head, and the pipeline of the command line.
fn inflated(args: &Args, device: &Device) -> Result<Setup, Box<dyn std::error::Error>> {
    let window = Window::preset(&args.window)
        .ok_or_else(|| format!("--window {}: use lung, mediastinum, bone or brain", args.window))?;
    let shape = <[usize; 3]>::try_from(args.shape.as_slice()).map_err(|_| "--shape takes depth,height,width")?;
    let path = match &args.weights {
        Some(path) => crate::weights_file(path)?,
        None => crate::train::bundled_checkpoint(),
    };
    let weights = Weights::from_file(&path)?;
    let (layout, width) = weights.layout()?;
    let config = ResNet3dConfig::from_layout(layout)
        .with_width(width)
        .with_in_channels(1)
        .with_num_classes(Some(args.classes));
    // Resample, crop/pad with air, window, ImageNet-grey normalisation: the training pipeline.
    Ok((
        resnet3d::inflate_from_2d(&weights, &config, device)?,
        Preprocessing::ct(args.spacing, shape, window),
        1,
    ))
}

/// The network and pipeline a training run saved.
fn trained(model: &Path, device: &Device) -> Result<Setup, Box<dyn std::error::Error>> {
    let run = TrainedRun::load(model, device)?;
    Ok((run.net, run.preprocessing, run.config.in_channels))
}
