//! Read + map + inflate a full-width ResNet-50 (ONNX and .pth), as `from_imagenet` does.
//!
//! The checkpoints are generated, not committed:
//!
//! ```text
//! /opt/torch-venv/bin/python benches/make_bench_data.py     # writes target/bench-data/
//! cargo bench --bench import
//! ```
//!
//! Peak memory is measured outside criterion, on one run of the `resnet3d inflate` command:
//! `/usr/bin/time -v target/release/resnet3d inflate --weights target/bench-data/resnet50.onnx --out /tmp/r50`.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use resnet3d::burn::tensor::Device;
use resnet3d::{ResNet3d, ResNet3dConfig};

fn data(file: &str) -> PathBuf {
    let dir = std::env::var_os("RESNET3D_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing: run `python benches/make_bench_data.py` first",
        path.display()
    );
    path
}

fn import(c: &mut Criterion) {
    let device = Device::flex();
    let config = ResNet3dConfig::resnet50().with_in_channels(1);
    let mut group = c.benchmark_group("from_imagenet resnet50 (full width, 1 channel)");
    group.sample_size(10);
    for file in ["resnet50.onnx", "resnet50.pth"] {
        let path = data(file);
        group.bench_function(file, |b| {
            b.iter(|| {
                let model = ResNet3d::from_imagenet(&path, &config, &device).unwrap();
                // Make sure the weights exist on the device, not only as pending work.
                let _ = model.conv1.weight.val().into_data();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, import);
criterion_main!(benches);
