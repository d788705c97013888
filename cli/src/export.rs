//! `resnet3d export`: a trained network as an ONNX model, for ONNX Runtime, TensorRT or
//! Triton (see [`resnet3d::ResNet3d::to_onnx`]).
//!
//! The file takes the network's input after the run's preprocessing (resampling, cropping,
//! window, normalisation: `preprocessing.json`, which the deployment applies itself) and is a
//! checkpoint too: `ResNet3d::from_checkpoint` reads it back with the run's `config.json`.

use std::path::PathBuf;

use clap::Parser;
use resnet3d::OnnxOptions;
use resnet3d::burn::tensor::Device;
use resnet3d::infer::TrainedRun;

/// `resnet3d export --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  resnet3d export --model runs/nodules --out nodules.onnx
  resnet3d export --model runs/nodules --out nodules.onnx --force   # replace an earlier export
  resnet3d export --model runs/nodules/model.bpk --out nodules.onnx --stages   # also the stem and layer1..layer4";

#[derive(Parser, Debug)]
#[command(about = "Write a trained network as an ONNX model (opset 17, dynamic batch and spatial axes)", after_help = EXAMPLES)]
pub struct Args {
    /// A trained network: the folder `resnet3d train` wrote, or its `model.bpk` (with
    /// `config.json` and `preprocessing.json` beside it).
    #[arg(long)]
    pub model: PathBuf,
    /// The ONNX file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Also output the stem and every stage (`stem`, `layer1`..`layer4`) after the logits.
    #[arg(long)]
    pub stages: bool,
    /// Replace an existing --out (never the run's own files).
    #[arg(long)]
    pub force: bool,
}

/// Writes the file; what was written, for the caller to print.
///
/// # Errors
/// Those of reading the run and of writing the file.
pub fn run(args: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let run = TrainedRun::load(&args.model, &Device::flex())?;
    if std::fs::symlink_metadata(&args.out).is_ok() {
        let same = |p: &std::path::Path| {
            std::fs::canonicalize(p)
                .ok()
                .is_some_and(|p| Some(p) == std::fs::canonicalize(&args.out).ok())
        };
        let folder = run.model.parent().unwrap_or(std::path::Path::new("."));
        let own = ["model.bpk", "config.json", "preprocessing.json"]
            .iter()
            .any(|f| same(&folder.join(f)));
        if own || !args.force {
            return Err(format!(
                "{} exists{}; give another --out{}",
                args.out.display(),
                if own { " and is one of the run's own files" } else { "" },
                if own { "" } else { ", or --force to replace it" }
            )
            .into());
        }
    }
    let options = OnnxOptions {
        stage_outputs: args.stages,
    };
    run.net.save_onnx(&args.out, options)?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    let output = match run.config.num_classes {
        Some(classes) => format!("logits [batch, {classes}]"),
        None => format!("features [batch, {}]", run.config.feature_channels()),
    };
    Ok(format!(
        "wrote {} ({:.1} MB, ONNX opset {}): input [batch, {}, depth, height, width] after {}'s preprocessing, output {output}{}",
        args.out.display(),
        bytes as f64 / 1e6,
        resnet3d::ONNX_OPSET,
        run.config.in_channels,
        run.model.display(),
        if args.stages {
            ", then stem and layer1..layer4"
        } else {
            ""
        }
    ))
}
