//! Writes a run folder as `resnet3d train` leaves one (`model.bpk`, `config.json`,
//! `preprocessing.json`) holding a seeded, untrained full-width network, so that `resnet3d
//! predict` can be measured without training first; then times the frozen network alone on
//! one input of the pipeline's size (what `predict` is compared with).
//!
//! ```text
//! cargo run --release -p resnet3d-cli --example make_run -- /var/tmp/run18 --depth 18 \
//!     --size 64,128,128 --spacing 1.5
//! ```

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use resnet3d::burn::config::Config;
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::data::Preprocessing;
use resnet3d::preprocess::Window;
use resnet3d::{Layout, ResNet3dConfig};

#[derive(Parser, Debug)]
#[command(about = "Write an untrained run folder for `resnet3d predict` benchmarks, and time its frozen network")]
struct Args {
    /// The folder to write.
    dir: PathBuf,
    /// ResNet depth: 18, 34, 50, 101 or 152.
    #[arg(long, default_value_t = 18)]
    depth: usize,
    /// The network's input, depth,height,width voxels.
    #[arg(long, default_value = "64,128,128", value_delimiter = ',')]
    size: Vec<usize>,
    /// Isotropic spacing the pipeline resamples to, mm.
    #[arg(long, default_value_t = 1.5)]
    spacing: f32,
    /// Forward passes timed (after one warm-up).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let size = <[usize; 3]>::try_from(args.size.as_slice()).map_err(|_| "--size takes depth,height,width")?;
    let layout = Layout::preset(args.depth).ok_or("--depth: 18, 34, 50, 101 or 152")?;
    let device = Device::flex();
    device.seed(0);
    let config = ResNet3dConfig::from_layout(layout)
        .with_in_channels(1)
        .with_num_classes(Some(2));
    let net = config.init(&device);
    std::fs::create_dir_all(&args.dir)?;
    net.save(args.dir.join("model.bpk"))?;
    config.save(args.dir.join("config.json"))?;
    Preprocessing::ct(args.spacing, size, Window::LUNG).save(args.dir.join("preprocessing.json"))?;
    println!("wrote {}", args.dir.display());

    let frozen = net.freeze()?;
    let [d, h, w] = size;
    let values: Vec<f32> = (0..d * h * w).map(|i| ((i as f32) * 0.37).sin()).collect();
    let x = Tensor::<5>::from_data(TensorData::new(values, [1, 1, d, h, w]), &device);
    frozen.forward(x.clone())?;
    let mut times = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        let start = Instant::now();
        frozen.forward(x.clone())?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "frozen ResNet3d-{} on 1x1x{d}x{h}x{w}: median {:.3} s over {} runs ({:.2} inputs/s)",
        args.depth,
        times[times.len() / 2],
        times.len(),
        1.0 / times[times.len() / 2]
    );
    Ok(())
}
