//! `resnet3d inspect FILE`: what a checkpoint is (format, zoo, layout, width, channels,
//! classes, element types, parameters), which of its tensors the matching configuration
//! takes, and the exact call that loads it, worked out from names and shapes without
//! building a network.

use std::path::PathBuf;

use clap::Parser;
use resnet3d::Inspection;

/// `resnet3d inspect --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  resnet3d inspect resnet50.pth          # a torchvision or timm ImageNet ResNet
  resnet3d inspect resnet_50_23dataset.pth   # MedicalNet
  resnet3d inspect r3d_18-b3b3357e.pth   # a torchvision video ResNet";

#[derive(Parser, Debug, Clone)]
#[command(about = "Say what a checkpoint is and the exact settings that load it", after_help = EXAMPLES)]
pub struct Args {
    /// The checkpoint: .pth/.pt, .safetensors or .onnx (recognised from its bytes).
    pub file: PathBuf,
}

/// Prints the inspection.
pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let inspection = Inspection::of_file(&args.file)?;
    // Written, not printed: a closed pipe (`| head`) is an error, not a panic.
    let mut out = std::io::stdout().lock();
    write!(out, "{}\n{inspection}", args.file.display())?;
    out.flush()?;
    Ok(())
}
