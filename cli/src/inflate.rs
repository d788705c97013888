//! `resnet3d inflate`: a 2-D ImageNet ResNet inflated into a 3-D one.
//!
//! Prints the load report (tensors used, inflated shapes, what happened to the head and to
//! BatchNorm). `--out NAME` writes `NAME.bpk` (Burn's record format) and `NAME.json` (the
//! configuration, to build the network again with `ResNet3dConfig::load` and
//! `ResNet3d::load`). `--check` runs the 2-D equivalence check.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use resnet3d::burn::config::Config;
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::{DepthPadding, Inflation, Layout, ResNet3dConfig, Weights, inflate_from_2d_with_report};

/// `resnet3d inflate --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  resnet3d inflate --weights resnet50.pth --out resnet3d-50 --check
  resnet3d inflate --weights resnet50.tv2_in1k --out resnet3d-50   # torchvision's weights, by name
  resnet3d inflate --weights resnet50.pth --in-channels 1 --inflation center \\
      --stem-depth-kernel 3 --stem-depth-stride 1 --no-head --out resnet3d-50-encoder";

#[derive(Parser, Debug)]
#[command(
    about = "Inflate a 2-D ImageNet ResNet (.pth, .safetensors, .onnx) into a 3-D ResNet",
    after_help = EXAMPLES
)]
pub struct Args {
    /// The 2-D checkpoint: .pth/.pt, .safetensors or .onnx, or the name of published
    /// weights (resnet50.tv2_in1k, ...), downloaded once into a verified cache.
    #[arg(long)]
    pub weights: PathBuf,
    /// ResNet depth; by default the checkpoint's (an error if they differ).
    #[arg(long, value_parser = ["18", "34", "50", "101", "152"])]
    pub depth: Option<String>,
    /// Channels of the input volumes.
    #[arg(long, default_value_t = 1)]
    pub in_channels: usize,
    /// How 2-D kernels are spread over depth.
    #[arg(long, value_enum, default_value_t = Rule::Average)]
    pub inflation: Rule,
    /// Classes of a new head; by default the checkpoint's head is kept.
    #[arg(long, conflicts_with = "no_head")]
    pub num_classes: Option<usize>,
    /// Leave the head out: the network returns pooled features.
    #[arg(long)]
    pub no_head: bool,
    /// Depth of the stem kernel (odd).
    #[arg(long, default_value_t = 7)]
    pub stem_depth_kernel: usize,
    /// Depth stride of the stem.
    #[arg(long, default_value_t = 2)]
    pub stem_depth_stride: usize,
    /// Leave out the max pool after the stem.
    #[arg(long)]
    pub no_max_pool: bool,
    /// Depth of the max-pool window (odd).
    #[arg(long, default_value_t = 3)]
    pub max_pool_depth_kernel: usize,
    /// Depth stride of the max pool.
    #[arg(long, default_value_t = 2)]
    pub max_pool_depth_stride: usize,
    /// Depth of the 3x3 kernels in the blocks (odd; 1 = 2.5-D).
    #[arg(long, default_value_t = 3)]
    pub block_depth_kernel: usize,
    /// Depth strides of layer1..layer4, comma-separated.
    #[arg(long, default_value = "1,2,2,2", value_delimiter = ',')]
    pub stage_depth_strides: Vec<usize>,
    /// Padding of the depth axis.
    #[arg(long, value_enum, default_value_t = Padding::Zeros)]
    pub depth_padding: Padding,
    /// Bottlenecks stride their first 1x1 (ResNet v1); ONNX files say which they are.
    #[arg(long)]
    pub stride_in_1x1: bool,
    /// Write NAME.bpk (the weights, Burn's record format) and NAME.json (the configuration).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Check that a volume constant along depth gives the 2-D network's output.
    #[arg(long)]
    pub check: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Rule {
    Average,
    Center,
    /// ACS convolutions: output channels split over the axial, coronal and sagittal planes.
    Acs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Padding {
    Zeros,
    Replicate,
}

/// Inflates, prints the report, saves what `--out` asks for; `Ok(false)` when `--check`
/// finds the 3-D network does not reproduce the 2-D one.
pub fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let device = Device::flex();
    let start = Instant::now();
    let weights = Weights::from_file(crate::weights_file(&args.weights)?)?;
    let (found, width) = weights.layout()?;
    let layout = match &args.depth {
        Some(depth) => Layout::preset(depth.parse()?).ok_or("unknown depth")?,
        None => found,
    };
    let checkpoint_classes = weights.get("fc.weight").and_then(|t| t.shape.first().copied());
    let num_classes = if args.no_head {
        None
    } else {
        args.num_classes.or(checkpoint_classes)
    };
    let strides = <[usize; 4]>::try_from(args.stage_depth_strides.as_slice())
        .map_err(|_| "--stage-depth-strides takes four strides, e.g. 1,2,2,2")?;
    let config = ResNet3dConfig::from_layout(layout)
        .with_width(width)
        .with_in_channels(args.in_channels)
        .with_num_classes(num_classes)
        .with_stem_depth_kernel(args.stem_depth_kernel)
        .with_stem_depth_stride(args.stem_depth_stride)
        .with_max_pool(!args.no_max_pool)
        .with_max_pool_depth_kernel(args.max_pool_depth_kernel)
        .with_max_pool_depth_stride(args.max_pool_depth_stride)
        .with_block_depth_kernel(args.block_depth_kernel)
        .with_stage_depth_strides(strides)
        .with_depth_padding(match args.depth_padding {
            Padding::Zeros => DepthPadding::Zeros,
            Padding::Replicate => DepthPadding::Replicate,
        })
        .with_inflation(match args.inflation {
            Rule::Average => Inflation::Average,
            Rule::Center => Inflation::Center,
            Rule::Acs => Inflation::Acs,
        })
        .with_stride_in_1x1(args.stride_in_1x1 || weights.stride_in_1x1() == Some(true));
    let (model, report) = inflate_from_2d_with_report(&weights, &config, &device)?;
    println!(
        "{}: {found}, width {width}; read and inflated in {:.2?}",
        args.weights.display(),
        start.elapsed()
    );
    print!("{report}");

    if let Some(out) = &args.out {
        let (record, json) = (out.with_extension("bpk"), out.with_extension("json"));
        model.save(&record)?;
        config.save(&json)?;
        println!("saved {} and {}", record.display(), json.display());
    }
    Ok(!args.check || check(&weights, &config, &device)?)
}

/// The 2-D equivalence check: with Replicate depth padding the inflated network gives the
/// 2-D network's output on a depth-constant volume (exactly, up to float rounding). Both
/// networks are built headless so that a freshly initialised head does not enter.
fn check(weights: &Weights, config: &ResNet3dConfig, device: &Device) -> Result<bool, Box<dyn std::error::Error>> {
    let config = config.clone().with_num_classes(None);
    let inflated = resnet3d::inflate_from_2d(
        weights,
        &config.clone().with_depth_padding(DepthPadding::Replicate),
        device,
    )?;
    let two_d = resnet3d::inflate_from_2d(weights, &config.as_2d(), device)?;
    let (c, h, w) = (config.in_channels, 64, 64);
    let image: Vec<f32> = (0..c * h * w).map(|i| ((i as f32) * 0.37).sin()).collect();
    let slice = Tensor::<5>::from_data(TensorData::new(image, [1, c, 1, h, w]), device);
    let out_3d = inflated.forward(slice.clone().repeat_dim(2, 16));
    let out_2d = two_d.forward(slice);
    let diff: f32 = (out_3d - out_2d.clone()).abs().max().into_scalar();
    let scale: f32 = out_2d.abs().max().into_scalar();
    let ok = diff <= 1e-4 * scale;
    println!(
        "2-D equivalence check ({}x{h}x{w} image repeated over 16 slices, Replicate depth padding): \
         max |3-D - 2-D| = {diff:.2e}, {:.2e} of the output's scale: {}",
        c,
        diff / scale,
        if ok { "ok" } else { "FAILED" }
    );
    Ok(ok)
}
