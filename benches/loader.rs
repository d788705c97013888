//! The training data path against the training step it feeds: does loading keep up?
//!
//! ```text
//! cargo bench --bench loader                 # 48 phantoms, size 64x128x128 at 1.5 mm
//! cargo bench --bench loader -- 96 24,32,32 2.0
//! ```
//!
//! On `make_nodules` phantoms written to a temporary folder, it times (wall clock, one run
//! each, so read them as rates, not as precise figures):
//! - the first pass, `ScanDataset::prepare` (decompress, decode, resample, crop, window,
//!   normalise; in parallel): what the first epoch's loading costs;
//! - a cached epoch through Burn's `DataLoader` with 2 workers and augmentation, as training
//!   reads it;
//! - one training step of a full-width ResNet3d-18 on a batch of 4 of those volumes
//!   (forward, backward, Adam), for the rate loading must keep up with.

use std::sync::Arc;
use std::time::Instant;

use resnet3d::burn::data::dataloader::DataLoaderBuilder;
use resnet3d::burn::module::Module;
use resnet3d::burn::nn::loss::CrossEntropyLossConfig;
use resnet3d::burn::optim::GradientsParams;
use resnet3d::burn::tensor::Device;
use resnet3d::data::{Augmentation, LabelledScans, Preprocessing, ScanBatcher, ScanDataset, Split, VolumeCache};
use resnet3d::preprocess::Window;
use resnet3d::train::FusedAdamConfig;
use resnet3d::{ResNet3d, ResNet3dConfig};

#[path = "../examples/make_nodules.rs"]
#[allow(dead_code)]
mod make_nodules;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let count: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(48);
    let size: Vec<usize> = args
        .get(1)
        .map(|a| a.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 128, 128]);
    let size = [size[0], size[1], size[2]];
    let spacing: f32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1.5);

    let dir = tempfile::tempdir().expect("a temporary folder");
    let labels = make_nodules::make_dataset(dir.path(), count, 1, [3.0, 5.0]).expect("phantoms written");
    let scans = LabelledScans::from_csv(&labels, 0.25, 0).expect("labels");
    let cache = Arc::new(VolumeCache::in_memory(8 << 30));
    let dataset = ScanDataset::new(
        &scans,
        Split::Train,
        Preprocessing::ct(spacing, size, Window::LUNG),
        cache,
    )
    .with_augmentation(Augmentation::new())
    .expect("augmentation")
    .with_shuffle(0);
    let n = dataset.scans().len();

    let clock = Instant::now();
    dataset.prepare().expect("scans readable");
    let first = clock.elapsed().as_secs_f64();
    println!(
        "loader/first-pass/{n} scans -> {size:?}: {first:.2} s, {:.1} volumes/s",
        n as f64 / first
    );

    let train = Device::flex().autodiff();
    let loader = DataLoaderBuilder::new(ScanBatcher { channels: 1 })
        .batch_size(4)
        .num_workers(2)
        .set_device(train.clone())
        .build(dataset);
    let clock = Instant::now();
    let batches: Vec<_> = loader.iter().map(|b| b.expect("a batch")).collect();
    let cached = clock.elapsed().as_secs_f64();
    println!(
        "loader/cached-epoch/augmented, 2 workers: {cached:.2} s, {:.1} volumes/s",
        n as f64 / cached
    );

    let config = ResNet3dConfig::resnet18().with_in_channels(1).with_num_classes(Some(2));
    let mut model: ResNet3d = config.init(&train);
    let mut optimizer = FusedAdamConfig::new().init();
    let mut step = |model: ResNet3d, batch: &resnet3d::data::ScanBatch| {
        let logits = model.forward(batch.volumes.clone());
        let loss = CrossEntropyLossConfig::new()
            .init(&train)
            .forward(logits, batch.targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optimizer.step(1e-4, model, grads)
    };
    model = step(model, &batches[0]); // warm-up: packing, allocation
    let clock = Instant::now();
    let steps = batches.len().min(3);
    for batch in &batches[..steps] {
        model = step(model, batch);
    }
    let per_step = clock.elapsed().as_secs_f64() / steps as f64;
    println!(
        "train/resnet18 step, batch 4 x {size:?}: {per_step:.2} s, {:.1} volumes/s ({} parameters)",
        4.0 / per_step,
        model.num_params()
    );
}
