//! `resnet3d`: 3-D ResNets from 2-D ImageNet weights, for CT and MRI, from the command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use resnet3d::burn::tensor::Device;
use resnet3d_cli::{explain, export, inflate, inspect, predict, train};

/// `resnet3d --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  resnet3d inspect resnet50.pth
  resnet3d inflate --weights resnet50.pth --out resnet3d-50 --check
  resnet3d train --labels scans/labels.csv --out runs/nodules
  resnet3d predict scans/ --model runs/nodules --out scores.csv
  resnet3d predict archive/ --model runs/nodules --sliding-window --maps maps/ --out scores.csv
  resnet3d predict archive/ --model runs/nodules --shard $SLURM_ARRAY_TASK_ID/$N --out part-$SLURM_ARRAY_TASK_ID.csv --resume
  resnet3d explain scan.nii.gz --model runs/nodules --cam cam.png --cam-nifti cam.nii.gz
  resnet3d export --model runs/nodules --out nodules.onnx

Exit status: 0 done; 1 an error (the message says what to change); 2 a bad command line;
3 predict finished but some scans could not be scored (their rows carry the error).";

#[derive(Parser, Debug)]
#[command(name = "resnet3d", version, about = "3-D ResNets for CT and MRI, started from 2-D ImageNet weights", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inflate a 2-D ImageNet ResNet into a 3-D one; save it as a Burn record + config.
    Inflate(inflate::Args),
    /// Say what a checkpoint is and the exact settings that load it.
    Inspect(inspect::Args),
    /// Fine-tune on labelled scans with Burn's training loop.
    Train(train::Args),
    /// Score a label CSV, a folder or an archive of scans; write a CSV (and probability maps).
    Predict(predict::Args),
    /// Classify one scan and map where the network looked (CAM, Grad-CAM).
    Explain(explain::Args),
    /// Write a trained network as an ONNX model.
    Export(export::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome: Result<ExitCode, Box<dyn std::error::Error>> = match &cli.command {
        Command::Inflate(args) => inflate::run(args).map(|ok| if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        Command::Inspect(args) => inspect::run(args).map(|()| ExitCode::SUCCESS),
        Command::Train(args) => train::run(args).map(|summary| {
            println!(
                "best epoch {}: validation AUROC {:.1}%, accuracy {:.1}%; model in {}",
                summary.best_epoch,
                summary.best_valid_auroc,
                summary.best_valid_accuracy,
                summary.model.display()
            );
            ExitCode::SUCCESS
        }),
        Command::Predict(args) => predict::run(args).map(|summary| match summary.failed {
            0 => ExitCode::SUCCESS,
            _ => ExitCode::from(3),
        }),
        Command::Export(args) => export::run(args).map(|what| {
            println!("{what}");
            ExitCode::SUCCESS
        }),
        Command::Explain(args) => explain::classify(args, &Device::flex()).map(|scores| {
            for (class, score) in scores.iter().enumerate() {
                println!("class {class}: {score:.4}");
            }
            ExitCode::SUCCESS
        }),
    };
    outcome.unwrap_or_else(|err| {
        eprintln!("error: {err}");
        ExitCode::FAILURE
    })
}
