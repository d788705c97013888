//! Peak resident memory of one ResNet3d-50 forward on 1x1x64x128x128, or of three
//! ResNet3d-18 fine-tuning steps on 2x1x32x96x96, for `compare.py`:
//!
//! ```text
//! cargo bench --bench memory -- frozen     # FrozenResNet3d (ResNet3d::into_frozen)
//! cargo bench --bench memory -- frozen whole [kept]  # on 1x1x192x320x320, three calls; `kept`:
//!                                          # a 4 GiB buffer budget (activations kept between calls)
//! cargo bench --bench memory -- flex       # the Burn model on flex
//! cargo bench --bench memory -- train      # train steps on flex with autodiff, Adam
//! cargo bench --bench memory -- train-large [checkpointing]  # ResNet3d-50, 2x1x128x192x192
//! cargo bench --bench memory -- nifti-bomb # Volume::from_nifti on 1024x1024x512 uint8 zeros, gzipped
//! cargo bench --bench memory -- nifti-ct   # Volume::from_nifti on a 512x512x300 int16 CT, gzipped
//! ```
//!
//! Prints one JSON object: the peak resident set of the process (`VmHWM`), and that before the
//! model was built (the file was read), in MB. Run each in its own process: the peak never
//! goes down. The NIfTI files are written (streamed through gzip) to a temporary folder first.

#[path = "../examples/make_nodules.rs"]
#[allow(dead_code)]
mod make_nodules;

use resnet3d::ResNet3dConfig;
use resnet3d::burn::nn::loss::CrossEntropyLossConfig;
use resnet3d::burn::optim::GradientsParams;
use resnet3d::burn::tensor::{Device, Int, Tensor, TensorData};
use resnet3d::train::FusedAdamConfig;

/// `VmHWM` or `VmRSS` of this process from /proc, in MB (0 where /proc is missing).
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let mode = std::env::args()
        .skip(1)
        .find(|a| ["frozen", "flex", "train", "train-large", "nifti-bomb", "nifti-ct"].contains(&a.as_str()))
        .unwrap_or_else(|| "frozen".into());
    if mode == "train" {
        return train();
    }
    if mode == "train-large" {
        return train_large(std::env::args().any(|a| a == "checkpointing"));
    }
    if let Some(kind) = mode.strip_prefix("nifti-") {
        return nifti(kind);
    }
    let device = Device::flex();
    let before = status_mb("VmHWM:");
    let model = ResNet3dConfig::resnet50()
        .with_in_channels(1)
        .with_num_classes(Some(2))
        .init(&device);
    let whole = std::env::args().any(|a| a == "whole");
    let shape = if whole {
        [1, 1, 192, 320, 320]
    } else {
        [1, 1, 64, 128, 128]
    };
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin()).collect();
    let x = Tensor::<5>::from_data(TensorData::new(values, shape), &device);
    let mut seconds = Vec::new();
    let logits = if mode == "frozen" {
        let frozen = model.into_frozen().expect("f32 model");
        if std::env::args().any(|a| a == "kept") {
            frozen.set_buffer_budget(4 << 30);
        }
        // A whole scan: three calls, the later ones reusing what the first allocated.
        for _ in 1..if whole { 3 } else { 1 } {
            let start = std::time::Instant::now();
            let _ = frozen.forward(x.clone()).expect("valid input").into_data();
            seconds.push(start.elapsed().as_secs_f64());
        }
        frozen.forward(x).expect("valid input")
    } else {
        model.forward(x)
    };
    let _ = logits.into_data();
    println!(
        "{{\"mode\": \"{mode}\", \"peak_mb\": {:.1}, \"before_model_mb\": {before:.1}, \"seconds\": {seconds:?}}}",
        status_mb("VmHWM:")
    );
}

/// `count` Adam steps (FusedAdam, cross-entropy, train mode) of `config` (one input channel,
/// two classes) on a patterned input of `shape` on `device`: each step's seconds.
fn steps(config: ResNet3dConfig, shape: [usize; 5], device: &Device, count: usize) -> Vec<f64> {
    let mut model = config.with_in_channels(1).with_num_classes(Some(2)).init(device);
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin()).collect();
    let x = Tensor::<5>::from_data(TensorData::new(values, shape), device);
    let labels: Vec<i64> = (0..shape[0] as i64).map(|i| i % 2).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [shape[0]]), device);
    let mut optimizer = FusedAdamConfig::new().init();
    let loss = CrossEntropyLossConfig::new().init(device);
    let mut seconds = Vec::with_capacity(count);
    for _ in 0..count {
        let start = std::time::Instant::now();
        let l = loss.forward(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optimizer.step(1e-4, model, grads);
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds
}

/// Three Adam steps of a ResNet3d-18 in train mode, as `pytorch_reference.py --memory --train`.
fn train() {
    let device = Device::flex().autodiff();
    let before = status_mb("VmHWM:");
    steps(ResNet3dConfig::resnet18(), [2, 1, 32, 96, 96], &device, 3);
    println!(
        "{{\"mode\": \"train\", \"peak_mb\": {:.1}, \"before_model_mb\": {before:.1}}}",
        status_mb("VmHWM:")
    );
}

/// Peak resident set and time of ResNet3d-50 steps (Adam) on a whole-scan batch,
/// 2x1x128x192x192: one warm-up step, then the median of two, as `pytorch_reference.py
/// --large-train`. `checkpointing`: on a device with Burn's gradient checkpointing, where the
/// crate's BatchNorm ops recompute their outputs in the backward pass instead of keeping them.
fn train_large(checkpointing: bool) {
    let device = if checkpointing {
        Device::flex().autodiff().gradient_checkpointing()
    } else {
        Device::flex().autodiff()
    };
    let before = status_mb("VmHWM:");
    let shape = [2, 1, 128, 192, 192];
    let seconds = steps(ResNet3dConfig::resnet50(), shape, &device, 3);
    let mut timed = seconds[1..].to_vec();
    timed.sort_by(f64::total_cmp);
    println!(
        "{{\"mode\": \"train-large{}\", \"batch\": {shape:?}, \"peak_mb\": {:.1}, \"before_model_mb\": {before:.1}, \"step_s\": {:.3}}}",
        if checkpointing { "-checkpointing" } else { "" },
        status_mb("VmHWM:"),
        (timed[0] + timed[timed.len() - 1]) / 2.0
    );
}

/// Reads a NIfTI file written here: the issue's bomb (512 MiB of uint8 zeros in about half a
/// megabyte) or an honest CT (512 x 512 x 300 int16, HU + 1024 with `scl_inter` -1024).
fn nifti(kind: &str) {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("resnet3d-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp folder");
    let path = dir.join(format!("{kind}.nii.gz"));
    let (dims, datatype, bitpix, inter, level): ([u16; 3], i16, i16, f32, u32) = if kind == "bomb" {
        ([1024, 1024, 512], 2, 8, 0.0, 9)
    } else {
        ([512, 512, 300], 4, 16, -1024.0, 1)
    };
    let header = make_nodules::nifti_header(dims.map(usize::from), (datatype, bitpix), [0.8, 0.8, 2.0], 1.0, inter);
    let file = std::io::BufWriter::new(std::fs::File::create(&path).expect("file"));
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::new(level));
    gz.write_all(&header).expect("write");
    let [nx, ny, nz] = dims.map(usize::from);
    for z in 0..nz {
        let slice: Vec<u8> = if kind == "bomb" {
            vec![0; nx * ny]
        } else {
            (0..nx * ny)
                .flat_map(|i| {
                    let (u, v) = ((i % nx) as f32 / nx as f32 - 0.5, (i / nx) as f32 / ny as f32 - 0.5);
                    let stored: i16 = if u * u + v * v > 0.16 {
                        24
                    } else {
                        1024 + (z % 5) as i16
                    };
                    stored.to_le_bytes()
                })
                .collect()
        };
        gz.write_all(&slice).expect("write");
    }
    gz.finish().expect("gzip").flush().expect("flush");
    let bytes = std::fs::metadata(&path).expect("file").len();
    let before = status_mb("VmHWM:");
    let volume = resnet3d::preprocess::Volume::from_nifti(&path).expect("a readable file");
    let f32_mb = (volume.data.len() * 4) as f64 / (1 << 20) as f64;
    println!(
        "{{\"mode\": \"nifti-{kind}\", \"file_mb\": {:.2}, \"volume_f32_mb\": {f32_mb:.1}, \"peak_mb\": {:.1}, \"before_read_mb\": {before:.1}}}",
        bytes as f64 / (1 << 20) as f64,
        status_mb("VmHWM:")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
