//! What safe code can do to the frozen network: edited layers, inputs that do not fit, NaN,
//! memory kept between calls, several threads at once. Every case is an error or the right
//! answer, never a read out of bounds (the reproductions below used to read far past their
//! buffers) and never a NaN turned into a number.

use std::sync::Arc;

use resnet3d::burn::module::Param;
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::{Block, Conv, DepthPadding, Error, FrozenResNet3d, MaxPool3d, ResNet3d, ResNet3dConfig};

use crate::common::*;

fn conv(in_channels: usize, out_channels: usize, kernel: [usize; 3], padding: [usize; 3], device: &Device) -> Conv {
    let [d, h, w] = kernel;
    let weight = pattern([out_channels, in_channels, d, h, w], device);
    Conv {
        weight: Param::from_tensor(weight),
        stride: [1, 1, 1],
        padding,
        depth_padding: DepthPadding::Zeros,
        dilation: [1, 1, 1],
    }
}

fn expect_invalid_input<T: std::fmt::Debug>(result: Result<T, Error>, says: &str) {
    match result {
        Err(err @ Error::InvalidInput { .. }) => {
            println!("{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

fn expect_invalid_network<T: std::fmt::Debug>(result: Result<T, Error>, at: &str) {
    match result {
        Err(err @ Error::InvalidNetwork { .. }) => {
            println!("{err}");
            assert!(
                matches!(&err, Error::InvalidNetwork { layer, .. } if layer == at),
                "{err}"
            );
        }
        other => panic!("expected InvalidNetwork at {at}, got {other:?}"),
    }
}

/// A convolution given an input of other channels: the one geometry check refuses it before
/// any kernel runs (the frozen layer's kernel read 4x past its weights before it had the
/// check; the same input through the frozen layer: `kernels::conv`'s unit tests).
#[test]
fn a_conv_input_with_other_channels_is_refused() {
    let device = Device::flex();
    // 16 -> 32 channels, 3x3x3, on a 64-channel input.
    let layer = conv(16, 32, [3, 3, 3], [1, 1, 1], &device);
    expect_invalid_input(
        layer.try_forward(pattern([1, 64, 4, 4, 24], &device)),
        "takes 16 channel(s), this activation has 64",
    );
    // The right input runs.
    let y = layer.try_forward(pattern([1, 16, 4, 4, 24], &device)).unwrap();
    assert_eq!(y.dims().iter().product::<usize>(), 4 * 4 * 24 * 32);
}

#[test]
fn a_kernel_larger_than_the_padded_input_is_refused() {
    let device = Device::flex();
    // No padding, 1x1 in-plane: the 3x3x3 kernel does not fit (it used to give one voxel and
    // read past the buffer).
    let layer = conv(16, 16, [3, 3, 3], [0, 0, 0], &device);
    expect_invalid_input(
        layer.try_forward(pattern([1, 16, 1, 1, 14], &device)),
        "fewer than its kernel of 3",
    );
    let pool = MaxPool3d::new([3, 3, 3], [2, 2, 2], [0, 0, 0]).unwrap();
    expect_invalid_input(
        pool.try_forward(pattern([1, 4, 1, 5, 5], &device)),
        "fewer than its window of 3",
    );
}

/// A ResNet-18 of width 32 (so that layer1 takes the implicit-GEMM path).
fn resnet18_w32(device: &Device) -> ResNet3d {
    ResNet3dConfig::resnet18()
        .with_width(32)
        .with_in_channels(1)
        .with_num_classes(Some(3))
        .init(device)
}

#[test]
fn a_conv_replaced_by_one_of_other_channels_is_refused_at_freeze() {
    let device = Device::flex();
    let mut model = resnet18_w32(&device);
    let Block::Basic(block) = &mut model.layer1[0] else {
        unreachable!("ResNet-18 has basic blocks")
    };
    block.conv2 = conv(16, 32, [3, 3, 3], [1, 1, 1], &device);
    expect_invalid_network(model.freeze(), "layer1.0.conv2");
    expect_invalid_network(model.validate(), "layer1.0.conv2");
    expect_invalid_network(
        model.try_forward(Tensor::zeros([1, 1, 16, 96, 96], &device)),
        "layer1.0.conv2",
    );
    expect_invalid_network(model.into_frozen(), "layer1.0.conv2");
}

#[test]
fn every_kind_of_inconsistent_layer_is_named() {
    let device = Device::flex();
    type Edit = Box<dyn Fn(&mut ResNet3d)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "bn1",
            Box::new(|m: &mut ResNet3d| {
                m.bn1 = resnet3d::burn::nn::BatchNormConfig::new(31).init(&Device::flex());
            }),
        ),
        ("conv1", Box::new(|m: &mut ResNet3d| m.conv1.stride = [0, 2, 2])),
        // (Padding at or beyond the kernel's reach is PyTorch's and computes: see
        // `padding_beyond_the_reach_runs_as_pytorch_pads`.)
        ("conv1", Box::new(|m: &mut ResNet3d| m.conv1.dilation = [0, 1, 1])),
        (
            "maxpool",
            Box::new(|m: &mut ResNet3d| {
                if let Some(pool) = &mut m.maxpool {
                    pool.padding = [2, 1, 1];
                }
            }),
        ),
        (
            "layer2.0.downsample.0",
            Box::new(|m: &mut ResNet3d| {
                if let Block::Basic(b) = &mut m.layer2[0]
                    && let Some(ds) = &mut b.downsample
                {
                    ds.conv.stride = [1, 1, 1];
                }
            }),
        ),
        (
            "layer2.0 (identity shortcut)",
            Box::new(|m: &mut ResNet3d| {
                if let Block::Basic(b) = &mut m.layer2[0] {
                    b.downsample = None;
                }
            }),
        ),
        (
            "fc",
            Box::new(|m: &mut ResNet3d| {
                m.fc = Some(resnet3d::burn::nn::LinearConfig::new(100, 3).init(&Device::flex()));
            }),
        ),
        ("layer4", Box::new(|m: &mut ResNet3d| m.layer4.clear())),
    ];
    for (layer, edit) in edits {
        let mut model = resnet18_w32(&device);
        edit(&mut model);
        expect_invalid_network(model.freeze(), layer);
    }
}

#[test]
fn a_shortcut_that_does_not_match_on_this_input_is_an_error_in_both_paths() {
    let device = Device::flex();
    // Without padding the main branch shrinks by 2 per axis and no longer matches the identity;
    // the fields themselves are valid, so this shows only on an input.
    let mut model = resnet18_w32(&device);
    let Block::Basic(block) = &mut model.layer1[1] else {
        unreachable!("ResNet-18 has basic blocks")
    };
    block.conv2.padding = [0, 0, 0];
    let frozen = model.freeze().unwrap();
    let x = pattern([1, 1, 16, 64, 64], &device);
    expect_invalid_network(frozen.forward(x.clone()), "layer1.1.conv2");
    expect_invalid_network(model.try_forward(x), "layer1.1");
}

fn all_nan(t: Tensor<2>) -> bool {
    t.into_data().try_to_vec::<f32>().unwrap().iter().all(|v| v.is_nan())
}

#[test]
fn nan_voxels_give_nan_logits_in_both_paths() {
    let device = Device::flex();
    let model = ResNet3dConfig::resnet18()
        .with_width(16)
        .with_in_channels(1)
        .with_num_classes(Some(4))
        .init(&device);
    let frozen = model.freeze().unwrap();
    let shape = [2, 1, 16, 32, 32];
    let full = Tensor::<5>::full(shape, f32::NAN, &device);
    let mut one: Vec<f32> = pattern(shape, &device).into_data().try_to_vec().unwrap();
    one[16 * 32 * 32 + 7 * 32 * 32 + 5 * 32 + 9] = f32::NAN; // one voxel of the second volume
    let one = Tensor::<5>::from_data(TensorData::new(one, shape), &device);

    assert!(all_nan(model.forward(full.clone())), "Burn model, all NaN");
    assert!(all_nan(frozen.forward(full).unwrap()), "frozen, all NaN");
    for (name, logits) in [
        ("Burn model", model.forward(one.clone())),
        ("frozen", frozen.forward(one).unwrap()),
    ] {
        let values = logits.into_data().try_to_vec::<f32>().unwrap();
        // The first volume is clean, the second has the NaN voxel.
        assert!(values[..4].iter().all(|v| v.is_finite()), "{name}: {values:?}");
        assert!(values[4..].iter().all(|v| v.is_nan()), "{name}: {values:?}");
    }
}

/// The calls run in a rayon pool of the test's own thread, so that the per-thread count
/// sees every allocation and free: the network's walk runs on a pool thread and reuses
/// buffers the caller's thread allocated (a shrink on a worker would count on neither side).
#[test]
fn buffers_kept_between_calls_stay_within_the_budget() {
    let device = Device::flex();
    let model = ResNet3dConfig::resnet18()
        .with_width(16)
        .with_in_channels(1)
        .with_num_classes(Some(2))
        .init(&device);
    let frozen = model.into_frozen().unwrap();
    let large = Tensor::<5>::zeros([1, 1, 64, 256, 256], &device);
    let small = pattern([1, 1, 16, 64, 64], &device);

    // The default budget: one large call keeps at most the budget.
    let (_, held) = crate::tracking::held_with_rayon_here(|| {
        frozen.forward(large.clone()).unwrap();
    });
    let budget = FrozenResNet3d::DEFAULT_BUFFER_BUDGET;
    println!(
        "after one large call: {held} bytes held, {} kept (budget {budget})",
        frozen.buffer_bytes()
    );
    assert!(held <= budget && frozen.buffer_bytes() <= budget, "{held} > {budget}");

    // A smaller budget, from an empty pool: after one large call and 20 small ones, what this
    // thread still holds (the kept buffers) is within it, and the small calls reuse buffers.
    let budget = 8 << 20;
    frozen.set_buffer_budget(budget);
    let reference = frozen.forward(small.clone()).unwrap().into_data();
    frozen.release_buffers();
    let (_, held) = crate::tracking::held_with_rayon_here(|| {
        // A clone: the input's own buffer is not freed inside the measurement.
        frozen.forward(large.clone()).unwrap();
        let kept = frozen.buffer_bytes();
        assert!(kept <= budget, "after the large call: {kept} kept, budget {budget}");
        for _ in 0..20 {
            assert_eq!(frozen.forward(small.clone()).unwrap().into_data(), reference);
        }
    });
    println!(
        "after one large and 20 small calls: {held} bytes held, {} kept (budget {budget})",
        frozen.buffer_bytes()
    );
    assert!(held <= budget, "{held} > {budget}");
    assert!(frozen.buffer_bytes() <= budget);
    assert!(frozen.buffer_bytes() > 0, "the small calls' buffers are kept");

    frozen.release_buffers();
    assert_eq!(frozen.buffer_bytes(), 0);
}

#[test]
fn four_threads_on_one_network_give_the_sequential_results() {
    let device = Device::flex();
    let model = ResNet3dConfig::resnet50()
        .with_width(8)
        .with_in_channels(1)
        .with_num_classes(Some(3))
        .init(&device);
    let frozen = Arc::new(model.freeze().unwrap());
    let inputs: Vec<Tensor<5>> = (0..4)
        .map(|k| pattern([1 + k % 2, 1, 8 + 4 * k, 32, 24 + 8 * k], &device) * (1.0 + k as f32))
        .collect();
    let sequential: Vec<_> = inputs
        .iter()
        .map(|x| frozen.forward(x.clone()).unwrap().into_data())
        .collect();
    for _ in 0..3 {
        let handles: Vec<_> = inputs
            .iter()
            .cloned()
            .map(|x| {
                let frozen = Arc::clone(&frozen);
                std::thread::spawn(move || {
                    (0..3)
                        .map(|_| frozen.forward(x.clone()).unwrap().into_data())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (handle, expected) in handles.into_iter().zip(&sequential) {
            for got in handle.join().unwrap() {
                assert_eq!(&got, expected);
            }
        }
    }
}

#[test]
fn the_frozen_network_is_send_and_sync() {
    fn shared<T: Send + Sync>(_: &T) -> usize {
        std::mem::size_of::<T>()
    }
    let frozen = resnet18_w32(&Device::flex()).freeze().unwrap();
    assert!(shared(&frozen) > 0);
}

/// A network on an autodiff device given an input from the plain device (a batch loaded
/// without `.autodiff()`): the crate's ops do not take the mix (it used to stop the program
/// in the folded eval op), and the output equals the one from an autodiff input.
#[test]
fn plain_input_to_an_autodiff_network_does_not_stop() {
    let train = Device::flex().autodiff();
    let config = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(Some(2));
    let model = config.init(&train);
    let x = pattern([1, 1, 8, 16, 16], &Device::flex());
    let mixed = model.forward(x.clone());
    let tracked = model.forward(pattern([1, 1, 8, 16, 16], &train));
    assert!(!x.device().is_autodiff());
    let (_, a) = values(mixed);
    let (_, b) = values(tracked);
    assert!(rel_error(&a, &b) < 1e-5, "{a:?} vs {b:?}");
}

/// A convolution of `shape` on `device` with a positive pattern kernel, `stride` and `padding`.
fn positive_conv(shape: [usize; 5], stride: usize, padding: usize, device: &Device) -> Conv {
    let weight = pattern(shape, device).abs() + 0.01;
    Conv {
        weight: Param::from_tensor(weight),
        stride: [stride; 3],
        padding: [padding; 3],
        depth_padding: DepthPadding::Zeros,
        dilation: [1, 1, 1],
    }
}

/// The same convolution's output on flex (the crate's kernels) and on ndarray (Burn's own
/// `conv3d`), as values; `conv` built on flex and moved.
#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
fn flex_and_burn(conv: &Conv, x: &Tensor<5>) -> (Vec<f32>, Vec<f32>) {
    let ndarray = Device::ndarray();
    let reference = Conv {
        weight: Param::from_tensor(conv.weight.val().to_device(&ndarray)),
        ..conv.clone()
    };
    let (_, ours) = values(conv.forward(x.clone()));
    let (_, theirs) = values(reference.forward(x.clone().to_device(&ndarray)));
    (ours, theirs)
}

/// Padding at or beyond the kernel's reach is PyTorch's: the windows that see only padding
/// give zeros (then the BatchNorm's shift). A ResNet whose stem pads depth by 7 (the kernel's
/// whole reach) used to be refused at freeze by one check and run by another; now it is one
/// network on every path, which agrees with Burn's own convolution on ndarray.
#[test]
#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
fn padding_beyond_the_reach_runs_as_pytorch_pads() {
    let device = Device::flex();
    let mut model = resnet18_w32(&device);
    model.conv1.padding = [7, 3, 3];
    let frozen = model.freeze().unwrap();
    let x = pattern([1, 1, 8, 32, 32], &device);
    let on_ndarray = resnet3d::burn::module::Module::to_device(model.clone(), &Device::ndarray());
    let (_, reference) = values(on_ndarray.forward(x.clone().to_device(&Device::ndarray())));
    for (path, got) in [
        ("flex", values(model.forward(x.clone())).1),
        ("frozen", values(frozen.forward(x).unwrap()).1),
    ] {
        let err = rel_error(&got, &reference);
        assert!(err <= TOLERANCE, "{path}: {err:e}");
    }
}

/// A 1x1x1 convolution with stride 1 and padding 1 (legal in PyTorch): the crate's kernels
/// used to take the pointwise branch, which ignores padding, and panic.
#[test]
fn a_pointwise_convolution_with_padding_is_burns() {
    let device = Device::flex();
    let conv = positive_conv([24, 20, 1, 1, 1], 1, 1, &device);
    let (ours, theirs) = flex_and_burn(&conv, &pattern([2, 20, 5, 6, 7], &device));
    assert_eq!(ours.len(), 2 * 24 * 7 * 8 * 9);
    let err = rel_error(&ours, &theirs);
    assert!(err <= 1e-5, "{err:e}");
}

/// The convolution of `conv` (stride, padding and dilation on every axis alike, zero padding)
/// on `x` by its definition, in f64: the reference where Burn's own `conv3d` would pad first.
fn definition(conv: &Conv, x: &Tensor<5>) -> Vec<f32> {
    let (xd, [n, c, d, h, w]) = (x.clone().into_data().try_to_vec::<f32>().unwrap(), x.dims());
    let [o, _, k, _, _] = conv.weight.dims();
    let wt = conv.weight.val().into_data().try_to_vec::<f32>().unwrap();
    let (s, p) = (conv.stride[0] as i128, conv.padding[0] as i128);
    let extent = |size: usize| ((size as i128 + 2 * p - k as i128) / s + 1) as usize;
    let (od, oh, ow) = (extent(d), extent(h), extent(w));
    let mut y = Vec::with_capacity(n * o * od * oh * ow);
    for (b, oc, z, yy, xx) in (0..n).flat_map(|b| {
        (0..o).flat_map(move |oc| {
            (0..od).flat_map(move |z| (0..oh).flat_map(move |yy| (0..ow).map(move |xx| (b, oc, z, yy, xx))))
        })
    }) {
        let mut sum = 0.0f64;
        for (ic, t) in (0..c).flat_map(|ic| (0..k * k * k).map(move |t| (ic, t))) {
            let at = |o: usize, tap: usize, size: usize| {
                let v = o as i128 * s + tap as i128 - p;
                (0..size as i128).contains(&v).then_some(v as usize)
            };
            if let (Some(iz), Some(iy), Some(ix)) = (at(z, t / (k * k), d), at(yy, (t / k) % k, h), at(xx, t % k, w)) {
                let v = xd[(((b * c + ic) * d + iz) * h + iy) * w + ix];
                sum += f64::from(v) * f64::from(wt[(oc * c + ic) * k * k * k + t]);
            }
        }
        y.push(sum as f32);
    }
    y
}

/// Huge padding with a huge stride: a few outputs, most of them windows of padding. The
/// padded buffer's length used to wrap in release builds and the AVX-512 kernel read past it
/// (a segfault); with a padding of 200 it built a padded copy of 4.5 GB. Now the padding is
/// never materialised: the result is the convolution's definition, and the call holds a few MB.
#[test]
fn huge_padding_and_stride_neither_wrap_nor_allocate_the_padding() {
    let device = Device::flex();
    let x = pattern([1, 16, 4, 4, 24], &device);
    for (padding, stride) in [(1 << 21, 1 << 20), (200, 100)] {
        let conv = positive_conv([16, 16, 3, 3, 3], stride, padding, &device);
        let (y, peak) = crate::tracking::peak_during(|| conv.forward(x.clone()));
        let (_, ours) = values(y);
        println!(
            "padding {padding}, stride {stride}: {} outputs, peak {peak} bytes",
            ours.len()
        );
        assert!(peak < 16 << 20, "{peak} bytes");
        let want = definition(&conv, &x);
        assert_eq!(ours.len(), want.len());
        assert!(rel_error(&ours, &want) <= 1e-5);
    }
}

/// +infinity in a convolution's input: a 3x3x3 convolution with stride 1 on 16x16x16 voxels
/// runs as a Winograd product on flex, whose transforms subtract inputs (inf - inf = NaN).
/// Now the infinity stays one, as in Burn's convolution and PyTorch's (positive weights: every
/// window that holds it gives +infinity, nothing NaN).
#[test]
fn infinity_in_a_convolution_stays_infinity() {
    let device = Device::flex();
    let conv = positive_conv([16, 16, 3, 3, 3], 1, 1, &device);
    let mut x: Vec<f32> = pattern([1, 16, 16, 16, 16], &device).into_data().try_to_vec().unwrap();
    x[7 * 16 * 16 * 16 + (5 * 16 + 9) * 16 + 3] = f32::INFINITY;
    let x = Tensor::<5>::from_data(TensorData::new(x, [1, 16, 16, 16, 16]), &device);
    let (ours, theirs) = flex_and_burn(&conv, &x);
    assert!(ours.iter().all(|v| !v.is_nan()), "NaN in the output");
    assert_eq!(ours.iter().filter(|v| **v == f32::INFINITY).count(), 27 * 16);
    for (a, b) in ours.iter().zip(&theirs) {
        assert!(a == b || (a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
    // And through a frozen network's layers: the model and the frozen network agree.
    let model = ResNet3dConfig::resnet18()
        .with_width(16)
        .with_in_channels(1)
        .with_num_classes(Some(2))
        .init(&device);
    let mut input: Vec<f32> = pattern([1, 1, 16, 64, 64], &device).into_data().try_to_vec().unwrap();
    input[9 * 64 * 64 + 30 * 64 + 17] = f32::INFINITY;
    let input = Tensor::<5>::from_data(TensorData::new(input, [1, 1, 16, 64, 64]), &device);
    let (_, a) = values(model.forward(input.clone()));
    let (_, b) = values(model.freeze().unwrap().forward(input).unwrap());
    for (a, b) in a.iter().zip(&b) {
        let same = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-3 * a.abs().max(1.0);
        assert!(same, "{a} vs {b}");
    }
}

/// A max pool over an empty axis padded up to the window, with its gradient on flex: windows
/// of padding only give minus infinity and the (empty) input an empty gradient. The backward
/// pass used to panic on chunks of zero values.
#[test]
fn max_pool_gradient_on_an_empty_axis() {
    let device = Device::flex().autodiff();
    let pool = MaxPool3d::new([2, 2, 2], [2, 2, 2], [1, 1, 1]).unwrap();
    let x = Tensor::<5>::zeros([1, 2, 0, 3, 3], &device).require_grad();
    let y = pool.forward(x.clone());
    assert_eq!(y.dims(), [1, 2, 1, 2, 2]);
    let (_, out) = values(y.clone());
    assert!(out.iter().all(|v| *v == f32::NEG_INFINITY), "{out:?}");
    let grads = y.sum().backward();
    assert_eq!(x.grad(&grads).map(|g| g.dims()), Some([1, 2, 0, 3, 3]));
}

/// Outputs no allocator can give (a 1-voxel input padded by 2^19 on each side: 10^18 values)
/// are errors from every `try_` path, with or without dilation (the dilated path went through
/// the channels-first kernels, whose allocation aborted the process; the others panicked
/// inside the Burn operation), and from the frozen network: refused before the output is
/// allocated (under 1 MiB allocated by each call, rayon's work counted).
#[test]
fn outputs_too_large_to_allocate_are_errors() {
    use crate::tracking::peak_with_rayon_here;
    let device = Device::flex();
    let x = Tensor::<5>::ones([1, 1, 1, 1, 1], &device);
    for dilation in [[2, 1, 1], [1, 1, 1]] {
        let mut conv = positive_conv([1, 1, 1, 1, 1], 1, 1 << 19, &device);
        conv.dilation = dilation;
        let _ = conv.weight.val(); // made before the measurement
        let (result, peak) = peak_with_rayon_here(|| conv.try_forward(x.clone()));
        expect_invalid_input(result, "cannot be allocated");
        assert!(
            peak < 1 << 20,
            "convolution, dilation {dilation:?}: {peak} bytes allocated"
        );
    }
    let mut model = resnet18_w32(&device);
    model.conv1.padding = [1 << 19; 3];
    model.maxpool = None;
    let frozen = model.clone().freeze().unwrap();
    let x = Tensor::<5>::ones([1, 1, 4, 4, 4], &device);
    let (result, peak) = peak_with_rayon_here(|| model.try_forward(x.clone()));
    expect_invalid_input(result, "cannot be allocated");
    assert!(peak < 1 << 20, "model: {peak} bytes allocated");
    let (result, peak) = peak_with_rayon_here(|| frozen.forward(x));
    expect_invalid_input(result, "cannot be allocated");
    assert!(peak < 1 << 20, "frozen network: {peak} bytes allocated");
}

/// An input on another device or of another element type than the network's: an error from
/// `try_forward`, not a panic inside Burn (the frozen network converts any input).
#[test]
#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
fn inputs_on_another_device_or_type_are_errors() {
    let device = Device::flex();
    let model = resnet18_w32(&device);
    let x = pattern([1, 1, 8, 16, 16], &Device::ndarray());
    expect_invalid_input(model.try_forward(x.clone()), "move the input");
    let half = pattern([1, 1, 8, 16, 16], &device).cast(resnet3d::burn::tensor::DType::F16);
    expect_invalid_input(model.try_forward(half), "move the input");
    assert!(model.freeze().unwrap().forward(x).is_ok());
}
