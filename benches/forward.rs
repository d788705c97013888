//! Forward passes and the layers that dominate them, on the CPU backends.
//!
//! `benches/compare.py` runs this next to `benches/pytorch_reference.py` and prints the
//! table (PyTorch ms, ours ms, ratio, GFLOP/s, share of the measured sgemm peak). Alone:
//!
//! ```text
//! cargo bench --features bench --bench forward                  # everything
//! cargo bench --features bench --bench forward -- flex/         # one backend (flex, ndarray, frozen)
//! cargo bench --features bench,wgpu --bench forward -- wgpu/    # the GPU (benches/gpu.sh)
//! ```
//!
//! Group and function names are the keys `compare.py` matches: `<backend>/<what>`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use resnet3d::bench::LayerBench;
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::{ConvGeometry, DepthPadding, MaxPool3d, ResNet3dConfig};

/// The shapes of the issue: a CT crop and a small case, batch 1, one channel.
const LARGE: [usize; 5] = [1, 1, 64, 128, 128];
const SMALL: [usize; 5] = [1, 1, 16, 64, 64];
/// A batch of crops, and a whole CT scan (the frozen networks only: the Burn model takes
/// minutes there).
const BATCH: [usize; 5] = [4, 1, 32, 96, 96];
const WHOLE: [usize; 5] = [1, 1, 192, 320, 320];

/// The frozen networks' shapes (`pytorch_reference.py --shapes all`).
const FROZEN_SHAPES: [(&str, [usize; 5]); 4] = [
    ("64x128x128", LARGE),
    ("16x64x64", SMALL),
    ("4x32x96x96", BATCH),
    ("192x320x320", WHOLE),
];

fn input<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin()).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Blocks until the backend has finished the work behind `t`.
fn sync<const D: usize>(t: Tensor<D>) {
    let _ = t.into_data();
}

#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut devices = vec![("flex", Device::flex()), ("ndarray", Device::ndarray())];
    // With `--features wgpu`: the default adapter (a GPU, or lavapipe without one).
    #[cfg(feature = "wgpu")]
    devices.push(("wgpu", Device::wgpu(resnet3d::burn::tensor::DeviceKind::DefaultDevice)));
    devices
}

/// The models and inputs of the forward benchmarks.
fn models(device: &Device) -> Vec<(&'static str, resnet3d::ResNet3d)> {
    [
        ("resnet18", ResNet3dConfig::resnet18()),
        ("resnet50", ResNet3dConfig::resnet50()),
    ]
    .into_iter()
    // Random weights: the arithmetic is the same as for inflated ones.
    .map(|(name, config)| (name, config.with_in_channels(1).with_num_classes(Some(2)).init(device)))
    .collect()
}

/// [`FrozenResNet3d`](resnet3d::FrozenResNet3d): BatchNorm folded, channels-last, on the CPU.
fn frozen(c: &mut Criterion) {
    let device = Device::flex();
    let mut group = c.benchmark_group("frozen/forward");
    group.sample_size(10);
    for (name, model) in models(&device) {
        let frozen = model.freeze().expect("f32 model");
        for (size, shape) in FROZEN_SHAPES {
            let x = input(shape, &device);
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| sync(frozen.forward(x.clone()).expect("valid input")))
            });
        }
    }
    group.finish();
    // bf16 products, where the CPU has AVX512_BF16 (`compare.py --backend frozen_bf16`).
    let mut group = c.benchmark_group("frozen_bf16/forward");
    group.sample_size(10);
    for (name, model) in models(&device) {
        let Ok(frozen) = model.freeze_bf16() else {
            eprintln!("frozen_bf16: this CPU has no AVX512_BF16, nothing to time");
            break;
        };
        for (size, shape) in FROZEN_SHAPES {
            let x = input(shape, &device);
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| sync(frozen.forward(x.clone()).expect("valid input")))
            });
        }
    }
    group.finish();
    let mut group = c.benchmark_group("frozen/layer");
    group.sample_size(10);
    let (conv, x) = layer1_conv(&device);
    let bench = LayerBench::conv(&conv, x.clone(), false).expect("f32");
    group.bench_function("conv3d_64x64x3x3x3_16x56x56", |b| {
        b.iter(|| bench.run().expect("checked input"))
    });
    // The same with the gemm crate's product (AVX2 on stable Rust).
    let bench = LayerBench::conv(&conv, x.clone(), true).expect("f32");
    group.bench_function("conv3d_64x64x3x3x3_16x56x56_portable", |b| {
        b.iter(|| bench.run().expect("checked input"))
    });
    // The same as a direct (implicit) product, without the Winograd transform.
    let bench = LayerBench::conv_direct(&conv, x).expect("f32");
    group.bench_function("conv3d_64x64x3x3x3_16x56x56_direct", |b| {
        b.iter(|| bench.run().expect("checked input"))
    });
    // ResNet3d-50's layer1 pointwise convolutions on the large input (16 x 32 x 32 voxels).
    for (i, o) in [(64, 256), (256, 64)] {
        let conv = conv_of(i, o, [1, 1, 1], &device);
        let bench = LayerBench::conv(&conv, input([1, i, 16, 32, 32], &device), false).expect("f32");
        group.bench_function(format!("conv3d_{i}x{o}x1x1x1_16x32x32"), |b| {
            b.iter(|| bench.run().expect("checked input"))
        });
    }
    // The same layers in bf16 (`freeze_bf16`'s products), where the CPU has AVX512_BF16.
    if LayerBench::conv_bf16(&conv_of(64, 64, [3, 3, 3], &device), input([1, 64, 4, 8, 8], &device)).is_ok() {
        let (conv, x) = layer1_conv(&device);
        let bench = LayerBench::conv_bf16(&conv, x).expect("bf16");
        group.bench_function("conv3d_64x64x3x3x3_16x56x56_bf16", |b| {
            b.iter(|| bench.run().expect("checked input"))
        });
        for (i, o) in [(64, 256), (256, 64)] {
            let conv = conv_of(i, o, [1, 1, 1], &device);
            let bench = LayerBench::conv_bf16(&conv, input([1, i, 16, 32, 32], &device)).expect("bf16");
            group.bench_function(format!("conv3d_{i}x{o}x1x1x1_16x32x32_bf16"), |b| {
                b.iter(|| bench.run().expect("checked input"))
            });
        }
    }
    // The one-channel stem: 7x7x7, stride 2, 1 -> 64 channels on the large input.
    let (conv, x) = stem_conv(&device);
    let bench = LayerBench::conv(&conv, x, false).expect("f32");
    group.bench_function("conv3d_1x64x7x7x7s2_64x128x128", |b| {
        b.iter(|| bench.run().expect("checked input"))
    });
    let (conv, x) = stem_conv(&device);
    if let Ok(bench) = LayerBench::conv_bf16(&conv, x) {
        group.bench_function("conv3d_1x64x7x7x7s2_64x128x128_bf16", |b| {
            b.iter(|| bench.run().expect("checked input"))
        });
    }
    let pool = MaxPool3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]).expect("valid pool");
    let bench = LayerBench::pool(&pool, input([1, 64, 32, 56, 56], &device)).expect("f32");
    group.bench_function("maxpool3d_3x3x3s2_64x32x56x56", |b| {
        b.iter(|| bench.run().expect("checked input"))
    });
    group.finish();
}

/// The 3x3x3 convolution of layer1: 64 -> 64 channels on 1x64x16x56x56.
fn layer1_conv(device: &Device) -> (resnet3d::Conv, Tensor<5>) {
    (conv_of(64, 64, [3, 3, 3], device), input([1, 64, 16, 56, 56], device))
}

/// A convolution with stride 1 and random weights.
fn conv_of(i: usize, o: usize, kernel: [usize; 3], device: &Device) -> resnet3d::Conv {
    ConvGeometry::same(i, o, kernel, [1, 1, 1], [1, 1, 1], DepthPadding::Zeros).build(
        resnet3d::burn::module::Param::from_tensor(input([o, i, kernel[0], kernel[1], kernel[2]], device)),
    )
}

/// The stem of every preset with one input channel, on the large input.
fn stem_conv(device: &Device) -> (resnet3d::Conv, Tensor<5>) {
    let conv = ConvGeometry::same(1, 64, [7, 7, 7], [2, 2, 2], [1, 1, 1], DepthPadding::Zeros).build(
        resnet3d::burn::module::Param::from_tensor(input([64, 1, 7, 7, 7], device)),
    );
    (conv, input(LARGE, device))
}

fn forward(c: &mut Criterion) {
    for (backend, device) in devices() {
        let mut group = c.benchmark_group(format!("{backend}/forward"));
        group.sample_size(10);
        for (name, model) in models(&device) {
            for (size, shape) in [("64x128x128", LARGE), ("16x64x64", SMALL)] {
                let x = input(shape, &device);
                group.bench_function(BenchmarkId::new(name, size), |b| {
                    b.iter(|| sync(model.forward(x.clone())))
                });
            }
        }
        group.finish();
    }
}

fn layers(c: &mut Criterion) {
    for (backend, device) in devices() {
        let mut group = c.benchmark_group(format!("{backend}/layer"));
        group.sample_size(10);
        let (conv, x) = layer1_conv(&device);
        group.bench_function("conv3d_64x64x3x3x3_16x56x56", |b| {
            b.iter(|| sync(conv.forward(x.clone())))
        });
        // The stem's max pool on 1x64x32x56x56.
        let pool = MaxPool3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]).expect("valid pool");
        let x = input([1, 64, 32, 56, 56], &device);
        group.bench_function("maxpool3d_3x3x3s2_64x32x56x56", |b| {
            b.iter(|| sync(pool.forward(x.clone())))
        });
        group.finish();
    }
}

criterion_group!(benches, frozen, forward, layers);
criterion_main!(benches);
