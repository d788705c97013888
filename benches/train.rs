//! One fine-tuning step: forward in train mode (BatchNorm on batch statistics), cross-entropy,
//! backward, Adam. What a user runs right after `from_imagenet`, in a loop of their own: inside
//! `train::on_cpu_threads`, as its docs advise (5-10% faster than from the main thread).
//!
//! `benches/compare.py --mode train` runs this next to PyTorch's eager train step
//! (`benches/pytorch_reference.py --train`). Alone:
//!
//! ```text
//! cargo bench --bench train                      # flex (and ndarray)
//! cargo bench --bench train -- flex/             # one backend
//! cargo bench --features wgpu --bench train -- wgpu/   # the GPU (benches/gpu.sh)
//! cargo bench --bench train -- --profile-time 20 flex/train/resnet18   # for perf
//! ```
//!
//! Keys: `<backend>/train/<model>/<batch shape>`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use resnet3d::burn::nn::loss::CrossEntropyLossConfig;
use resnet3d::burn::optim::GradientsParams;
use resnet3d::burn::tensor::{Device, Int, Tensor, TensorData};
use resnet3d::train::{FusedAdamConfig, on_cpu_threads};
use resnet3d::{ResNet3d, ResNet3dConfig};

/// The issue's fine-tuning batch: two 1-channel CT crops of 32 x 96 x 96.
const BATCH: [usize; 5] = [2, 1, 32, 96, 96];

fn input(shape: [usize; 5], device: &Device) -> Tensor<5> {
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin()).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut devices = vec![("flex", Device::flex().autodiff())];
    // With `--features wgpu`: the default adapter (benches/gpu.sh; Burn's Adam there, as
    // `FusedAdam` falls back to it off flex).
    #[cfg(feature = "wgpu")]
    devices.push((
        "wgpu",
        Device::wgpu(resnet3d::burn::tensor::DeviceKind::DefaultDevice).autodiff(),
    ));
    devices
}

fn train(c: &mut Criterion) {
    for (backend, device) in devices() {
        let mut group = c.benchmark_group(format!("{backend}/train"));
        group.sample_size(10);
        for (name, config) in [
            ("resnet18", ResNet3dConfig::resnet18()),
            ("resnet50", ResNet3dConfig::resnet50()),
        ] {
            let config = config.with_in_channels(1).with_num_classes(Some(2));
            let x = input(BATCH, &device);
            let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &device);
            let mut model: Option<ResNet3d> = Some(config.init(&device));
            let mut optimizer = FusedAdamConfig::new().init();
            let loss = CrossEntropyLossConfig::new().init(&device);
            group.bench_function(BenchmarkId::new(name, "2x1x32x96x96"), |b| {
                b.iter(|| {
                    on_cpu_threads(|| {
                        let m = model.take().expect("the model is put back every step");
                        let logits = m.forward(x.clone());
                        let l = loss.forward(logits, y.clone());
                        let grads = GradientsParams::from_grads(l.backward(), &m);
                        model = Some(optimizer.step(1e-4, m, grads));
                    })
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, train);
criterion_main!(benches);
