//! The differential property test of the one geometry check: random convolutions (kernels
//! 1-7, strides 1-4 and huge, padding from 0 to beyond the kernel's reach and huge, dilation
//! 1-3, zero-size and one-voxel axes, 1-40 channels, empty batches, zero or replicate depth
//! padding, NaN and infinities in the input) through every path of the crate against Burn's
//! own `conv3d` on ndarray:
//!
//! - the Burn operation on `flex` ([`Conv::try_forward`]), forward, and on `flex` with
//!   autodiff, the input and kernel gradients (finite inputs);
//! - the eval-mode BatchNorm fold (the layer the model runs in inference), with ReLU and a
//!   residual;
//! - the frozen network's layer ([`PackedConv`]): AVX-512 and portable products, Winograd on
//!   and off, bf16 where the CPU has AVX512_BF16.
//!
//! Each path gives the reference's numbers within its tolerance, or, where PyTorch's rules
//! refuse the convolution (an empty axis, a kernel larger than the padded input), a typed
//! error; never a crash. Non-finite outputs are compared as such: NaN where the reference has
//! NaN, the same infinity where it has one.
//!
//! The reference is Burn's `conv3d` with stride 1 and no padding on the input padded
//! explicitly by the kernel's reach on each side (zeros, or copies of the edge slices), its
//! outputs then picked at each window's start (clamped to the reach: a window entirely in the
//! padding sees what the window at the reach sees). So a padding of 2^21 costs what a padding
//! of the reach costs, and Burn never pads a copy larger than the volume.
//!
//! Cases: `PROPTEST_CASES` (64 by default, a few seconds); the long run is
//! `PROPTEST_CASES=20000 cargo test --release --lib differential`.

use burn::module::Param;
use burn::nn::BatchNormConfig;
use burn::tensor::module::conv3d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Int, Tensor, TensorData};
use proptest::prelude::*;

use crate::arch::geometry::ConvGeometry;
use crate::arch::kinds::DepthPadding;
use crate::arch::plan::{After, LayerName, LayerSpec, Site};
use crate::kernels::bf16;
use crate::kernels::buffers::{Buffers, View};
use crate::kernels::conv::{PackedConv, Precision, WinogradUse};
use crate::kernels::layout::{to_channels_first, to_channels_last};
use crate::kernels::matmul::Kernel;
use crate::model::conv::Conv;
use crate::model::norm::conv_batch_norm;

/// A stride or padding far beyond any volume here.
const HUGE_STRIDE: usize = 1 << 20;
const HUGE_PADDING: usize = 1 << 21;
/// The most multiply-adds the reference may take (a case larger than this is scaled down).
const WORK: usize = 1 << 23;

/// What goes into the input besides finite values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    None,
    Nan,
    Infinity,
    NegativeInfinity,
}

#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    channels: [usize; 2],
    input: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
    replicate: bool,
    special: Special,
    seed: usize,
}

impl Case {
    fn geometry(&self) -> ConvGeometry {
        ConvGeometry {
            in_channels: self.channels[0],
            out_channels: self.channels[1],
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            depth_padding: if self.replicate {
                DepthPadding::Replicate
            } else {
                DepthPadding::Zeros
            },
        }
    }

    fn reach(&self, a: usize) -> usize {
        self.dilation[a] * (self.kernel[a] - 1) + 1
    }

    /// PyTorch's rule, stated apart from the crate's check: extents of at least 1 and each
    /// padded extent at least the reach (kernels, strides, dilations and channels are at
    /// least 1 by construction). The output's extents where it accepts.
    fn pytorch_output(&self) -> Option<[usize; 3]> {
        let extent = |a: usize| {
            let padded = self.input[a] + 2 * self.padding[a];
            (self.input[a] > 0 && padded >= self.reach(a)).then(|| (padded - self.reach(a)) / self.stride[a] + 1)
        };
        Some([extent(0)?, extent(1)?, extent(2)?])
    }

    fn input_dims(&self) -> [usize; 5] {
        let [d, h, w] = self.input;
        [self.batch, self.channels[0], d, h, w]
    }

    /// The reference's multiply-adds (and a floor for each path's own work).
    fn work(&self) -> usize {
        let positions: usize = (0..3).map(|a| self.input[a] + self.reach(a) + 1).product();
        let outputs: usize = self.pytorch_output().map_or(0, |o| o.iter().product());
        let taps: usize = self.kernel.iter().product();
        self.batch.max(1) * self.channels[0] * self.channels[1] * taps * positions.max(outputs)
    }

    /// The case scaled down until the reference's work fits [`WORK`]: the largest of the
    /// channel counts and extents halved at a time.
    fn fitted(mut self) -> Self {
        for a in 0..3 {
            // A huge padding with a small stride has millions of outputs per axis.
            if self.padding[a] == HUGE_PADDING {
                self.stride[a] = HUGE_STRIDE;
            }
        }
        while self.work() > WORK {
            let [i, o] = self.channels;
            let big = self.input.iter().copied().max().unwrap_or(0);
            let k = self.kernel.iter().copied().max().unwrap_or(1);
            if i.max(o) >= big.max(k) && i.max(o) > 1 {
                let c = if i >= o { 0 } else { 1 };
                self.channels[c] = self.channels[c].div_ceil(2);
            } else if big > 1 && big >= k {
                let a = (0..3).max_by_key(|&a| self.input[a]).unwrap_or(0);
                self.input[a] /= 2;
            } else if k > 1 {
                let a = (0..3).max_by_key(|&a| self.kernel[a]).unwrap_or(0);
                self.kernel[a] -= 1;
            } else {
                self.batch = self.batch.min(1);
                break;
            }
        }
        self
    }
}

/// Deterministic values in `[-1, 1]` away from 0 (no weight multiplies an infinity into NaN
/// by being exactly zero).
fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let h = (i.wrapping_add(seed).wrapping_mul(2_654_435_761)) % 2003;
            let v = h as f32 / 1001.0 - 1.0;
            if v.abs() < 0.05 { v + 0.1 } else { v }
        })
        .collect()
}

/// The input of `case`, with its special values.
fn input(case: &Case) -> Vec<f32> {
    let len = case.input_dims().iter().product();
    let mut x = values(len, case.seed);
    let value = match case.special {
        Special::None => return x,
        Special::Nan => f32::NAN,
        Special::Infinity => f32::INFINITY,
        Special::NegativeInfinity => f32::NEG_INFINITY,
    };
    for k in 0..3 {
        if len > 0 {
            x[(case.seed * 31 + k * 7919) % len] = value;
        }
    }
    x
}

/// `x` as a tensor of `dims` on `device`.
fn tensor(x: &[f32], dims: [usize; 5], device: &Device) -> Tensor<5> {
    Tensor::from_data(TensorData::new(x.to_vec(), dims), device)
}

/// The reference convolution (see the module docs) of `x` with `w`: `[n, o, od, oh, ow]`,
/// `output` being PyTorch's extents. On any device, autodiff included (every step is a
/// differentiable Burn operation).
fn reference_conv(case: &Case, x: Tensor<5>, w: Tensor<5>, output: [usize; 3]) -> Tensor<5> {
    let device = x.device();
    let r = [0, 1, 2].map(|a| case.reach(a));
    let depth = if case.replicate {
        PadMode::Edge
    } else {
        PadMode::Constant(0.0)
    };
    let x = x
        .pad([(r[0], r[0]), (0, 0), (0, 0)], depth)
        .pad([(0, 0), (r[1], r[1]), (r[2], r[2])], PadMode::Constant(0.0));
    let mut y = conv3d(x, w, None, ConvOptions::new([1, 1, 1], [0, 0, 0], case.dilation, 1));
    for a in 0..3 {
        let (size, reach) = (case.input[a] as i128, r[a] as i128);
        let starts: Vec<i64> = (0..output[a])
            .map(|i| {
                let start = i as i128 * case.stride[a] as i128 - case.padding[a] as i128;
                (start.clamp(-reach, size) + reach) as i64
            })
            .collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(starts, [output[a]]), &device);
        y = y.select(a + 2, index);
    }
    y
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

/// The largest finite value of `v` (at least a tiny floor): the scale tolerances refer to.
fn finite_max(v: &[f32]) -> f32 {
    v.iter().filter(|x| x.is_finite()).fold(1e-6f32, |m, x| m.max(x.abs()))
}

/// `got` against `want`: NaN where it has NaN, its infinities, and within `tol * scale`.
fn agree(path: &str, got: &[f32], want: &[f32], scale: f32, tol: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: output length", path);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            prop_assert!(g.is_nan(), "{}: [{}] is {} where the reference has NaN", path, i, g);
        } else if w.is_infinite() {
            prop_assert!(g == w, "{}: [{}] is {} where the reference has {}", path, i, g, w);
        } else {
            let err = (g - w).abs();
            prop_assert!(
                err <= tol * scale,
                "{}: [{}] is {}, the reference {} (scale {})",
                path,
                i,
                g,
                w,
                scale
            );
        }
    }
    Ok(())
}

/// What a path gave: its output (channels-first values) or its refusal.
type Outcome = Result<Vec<f32>, crate::Error>;

/// `outcome` against the reference (`None`: PyTorch refuses the convolution).
fn check(path: &str, outcome: Outcome, reference: Option<&(Vec<f32>, f32)>, tol: f32) -> Result<(), TestCaseError> {
    match (outcome, reference) {
        (Ok(got), Some((want, scale))) => agree(path, &got, want, *scale, tol),
        (Err(_), None) => Ok(()),
        (Ok(_), None) => Err(TestCaseError::fail(format!("{path}: computed what PyTorch refuses"))),
        (Err(err), Some(_)) => Err(TestCaseError::fail(format!(
            "{path}: refused what PyTorch computes: {err}"
        ))),
    }
}

/// A layer spec for the frozen paths.
fn spec(geometry: ConvGeometry, after: After) -> LayerSpec {
    LayerSpec {
        name: LayerName {
            site: Site::Detached,
            conv: "conv",
            norm: "bn",
        },
        geometry,
        after,
    }
}

/// The whole property: every path against the reference.
#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped
fn every_path(case: &Case) -> Result<(), TestCaseError> {
    let g = case.geometry();
    let dims = case.input_dims();
    let [n, c, d, h, wd] = dims;
    let o = case.channels[1];
    let x = input(case);
    let w = values(g.weight_shape().iter().product(), case.seed + 17);
    let accepted = case.pytorch_output();
    let out_dims = accepted.map(|[od, oh, ow]| [n, o, od, oh, ow]);
    let ndarray = Device::ndarray();
    // The reference and the scale its tolerances refer to (the same convolution of |x| and
    // |w|: a bound on every product's sum, whatever cancels).
    let reference = accepted.map(|output| {
        if n == 0 {
            return (Vec::new(), 1.0);
        }
        let y = reference_conv(
            case,
            tensor(&x, dims, &ndarray),
            tensor(&w, g.weight_shape(), &ndarray),
            output,
        );
        let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let bound = reference_conv(
            case,
            tensor(&abs, dims, &ndarray),
            tensor(&w, g.weight_shape(), &ndarray).abs(),
            output,
        );
        (to_vec(y), finite_max(&to_vec(bound)))
    });
    let tol = 1e-4;

    // The Burn operation on flex.
    let flex = Device::flex();
    let conv: Conv = g.build(Param::from_tensor(tensor(&w, g.weight_shape(), &flex)));
    check(
        "flex",
        conv.try_forward(tensor(&x, dims, &flex)).map(to_vec),
        reference.as_ref(),
        tol,
    )?;

    // The frozen layer, every product.
    let x_last = to_channels_last(&x, dims);
    let mut paths = vec![
        ("frozen", Kernel::detect(), Precision::F32, WinogradUse::Kept, tol),
        (
            "frozen portable",
            Kernel::Portable,
            Precision::F32,
            WinogradUse::Kept,
            tol,
        ),
        (
            "frozen direct",
            Kernel::detect(),
            Precision::F32,
            WinogradUse::Never,
            tol,
        ),
        // F(4x4x4, 3x3x3) wherever the layer takes it, however few its tiles (the network
        // runs it on 24 or more): its error follows the largest terms of each 4x4x4 block, within
        // 5e-5 of them, so within the tolerance of the largest over the output.
        (
            "frozen largest tile",
            Kernel::detect(),
            Precision::F32,
            WinogradUse::Kept,
            tol,
        ),
        (
            "frozen per call",
            Kernel::detect(),
            Precision::F32,
            WinogradUse::PerCall,
            tol,
        ),
    ];
    // The AVX2 tile where the CPU has AVX-512 too (elsewhere it is `detect`'s already).
    if Kernel::detect().is_avx512()
        && let Some(avx2) = Kernel::avx2()
    {
        paths.push(("frozen avx2", avx2, Precision::F32, WinogradUse::Kept, tol));
    }
    if bf16::available() && Kernel::detect().is_avx512() {
        // Inputs and weights rounded to 8 bits of mantissa: each product within 2^-7 of its
        // magnitude, so the sum within 2^-7 of the sum of magnitudes.
        paths.push((
            "frozen bf16",
            Kernel::detect(),
            Precision::Bf16,
            WinogradUse::Never,
            1e-2,
        ));
        // Winograd's bf16 products round the transformed tiles and kernels, whose magnitudes
        // are sums of up to 8 inputs and 27 halved taps: a looser bound, 5e-2 of the sum of
        // magnitudes.
        paths.push((
            "frozen bf16 Winograd",
            Kernel::detect(),
            Precision::Bf16,
            WinogradUse::Kept,
            5e-2,
        ));
    }
    for (path, kernel, precision, winograd, tol) in paths {
        let largest = path.ends_with("largest tile");
        let layer = PackedConv::pack(
            spec(g, After::Nothing),
            &w,
            None,
            vec![0.0; o],
            kernel,
            precision,
            winograd,
        )
        .map_err(|e| TestCaseError::fail(format!("{path}: packing: {e}")))?;
        let layer = if largest { layer.largest_tile_always() } else { layer };
        let view = View {
            data: &x_last,
            dims: [n, d, h, wd, c],
        };
        let outcome = layer
            .forward(view, None, &Buffers::with_budget(0))
            .map(|act| to_channels_first(&act.data, act.dims));
        check(path, outcome, reference.as_ref(), tol)?;
    }

    // The eval-mode layer: BatchNorm folded in, a residual, ReLU (as the model runs it).
    let gamma = values(o, case.seed + 3);
    let beta = values(o, case.seed + 5);
    let mean = values(o, case.seed + 7);
    let var: Vec<f32> = values(o, case.seed + 11).iter().map(|v| v.abs() + 0.5).collect();
    let mut bn = BatchNormConfig::new(o).init(&flex);
    let vector = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [o]), &flex);
    bn.gamma = Param::from_tensor(vector(&gamma));
    bn.beta = Param::from_tensor(vector(&beta));
    bn.running_mean = burn::module::RunningState::new(vector(&mean));
    bn.running_var = burn::module::RunningState::new(vector(&var));
    let residual = out_dims.map(|od| values(od.iter().product(), case.seed + 13));
    let relu = case.seed.is_multiple_of(2);
    let with_residual = relu && !case.seed.is_multiple_of(3);
    let name = spec(g, After::Nothing).name;
    let outcome = conv_batch_norm(
        &conv,
        &bn,
        &name,
        tensor(&x, dims, &flex),
        relu,
        residual
            .as_ref()
            .zip(out_dims)
            .filter(|_| with_residual)
            .map(|(r, od)| tensor(r, od, &flex)),
    )
    .map(to_vec);
    let folded = reference
        .as_ref()
        .zip(out_dims)
        .map(|((y, scale), [_, _, od, oh, ow])| {
            let voxels = od * oh * ow;
            let eps = bn.epsilon;
            let mut bound = 0.0f32;
            let z = y
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = (i / voxels) % o;
                    let a = f64::from(gamma[ch]) / (f64::from(var[ch]) + eps).sqrt();
                    let mut z = (f64::from(v) - f64::from(mean[ch])) * a + f64::from(beta[ch]);
                    let r = match (&residual, with_residual) {
                        (Some(r), true) => f64::from(r[i]),
                        _ => 0.0,
                    };
                    z += r;
                    bound = bound.max(
                        (a.abs() * (f64::from(*scale) + f64::from(mean[ch]).abs())
                            + f64::from(beta[ch]).abs()
                            + r.abs()) as f32,
                    );
                    let z = z as f32;
                    if relu && z < 0.0 { 0.0 } else { z }
                })
                .collect::<Vec<f32>>();
            (z, bound)
        });
    check("eval fold", outcome, folded.as_ref(), tol)?;

    // Gradients on flex with autodiff, finite inputs.
    if case.special == Special::None
        && n > 0
        && let (Some(output), Some(od)) = (accepted, out_dims)
    {
        let r = values(od.iter().product(), case.seed + 19);
        let ours = gradients(case, &x, &w, &r, Device::flex().autodiff(), None, dims)?;
        let theirs = gradients(case, &x, &w, &r, ndarray.clone().autodiff(), Some(output), dims)?;
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
        let bound = gradients(
            case,
            &abs(&x),
            &abs(&w),
            &abs(&r),
            ndarray.autodiff(),
            Some(output),
            dims,
        )?;
        for (k, what) in ["input gradient", "kernel gradient"].iter().enumerate() {
            let path = format!("flex autodiff, {what}");
            agree(&path, &ours[k], &theirs[k], finite_max(&bound[k]), tol)?;
        }
    }
    Ok(())
}

/// The gradients of `sum(conv(x, w) * r)` with respect to `x` and `w` on `device`: through
/// [`Conv::try_forward`] where `output` is `None`, else through the reference.
fn gradients(
    case: &Case,
    x: &[f32],
    w: &[f32],
    r: &[f32],
    device: Device,
    output: Option<[usize; 3]>,
    dims: [usize; 5],
) -> Result<[Vec<f32>; 2], TestCaseError> {
    let g = case.geometry();
    let xt = tensor(x, dims, &device).require_grad();
    let wt = tensor(w, g.weight_shape(), &device).require_grad();
    let y = match output {
        None => g
            .build(Param::from_tensor(wt.clone()))
            .try_forward(xt.clone())
            .map_err(|err| TestCaseError::fail(format!("flex autodiff: refused what ran without autodiff: {err}")))?,
        Some(output) => reference_conv(case, xt.clone(), wt.clone(), output),
    };
    let rt = tensor(r, y.dims(), &device);
    let grads = (y * rt).sum().backward();
    Ok([xt.grad(&grads), wt.grad(&grads)].map(|grad| grad.map(to_vec).unwrap_or_default()))
}

fn batch() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 10 => 1usize..=3]
}

fn special() -> impl Strategy<Value = Special> {
    prop_oneof![
        12 => Just(Special::None),
        1 => Just(Special::Nan),
        1 => Just(Special::Infinity),
        1 => Just(Special::NegativeInfinity),
    ]
}

prop_compose! {
    /// Anything PyTorch's rules may meet: every axis its own kernel, stride, padding (often
    /// beyond the reach, sometimes huge) and dilation; empty and one-voxel axes.
    fn wild()(
        batch in batch(),
        channels in [1usize..=40, 1usize..=40],
        input in prop::array::uniform3(prop_oneof![1 => Just(0usize), 3 => Just(1usize), 10 => 2usize..=12]),
        kernel in prop::array::uniform3(1usize..=7),
        stride in prop::array::uniform3(prop_oneof![12 => 1usize..=4, 1 => Just(HUGE_STRIDE)]),
        padding in prop::array::uniform3(prop_oneof![16 => 0usize..=10, 1 => Just(HUGE_PADDING)]),
        dilation in prop::array::uniform3(prop_oneof![4 => Just(1usize), 1 => 2usize..=3]),
        replicate in any::<bool>(),
        special in special(),
        seed in 0usize..1_000_000,
    ) -> Case {
        Case { batch, channels, input, kernel, stride, padding, dilation, replicate, special, seed }.fitted()
    }
}

prop_compose! {
    /// The layers of the networks: cubic, 1x3x3 or 3x1x1 kernels, torchvision's padding,
    /// stride 1 or 2, dilation 1 or 2; the shapes that take the implicit, pointwise and
    /// Winograd products.
    fn layer_like()(
        batch in batch(),
        channels in [1usize..=40, 1usize..=40],
        input in prop::array::uniform3(prop_oneof![1 => Just(1usize), 6 => 2usize..=12]),
        kernel in prop_oneof![
            4 => Just([3, 3, 3]),
            2 => Just([1, 1, 1]),
            1 => Just([7, 7, 7]),
            1 => Just([1, 3, 3]),
            1 => Just([3, 1, 1]),
            1 => Just([5, 5, 5]),
        ],
        stride in prop_oneof![4 => Just([1usize; 3]), 2 => Just([2usize; 3]), 1 => Just([1, 2, 2])],
        dilation in prop_oneof![5 => Just(1usize), 1 => Just(2usize)],
        replicate in any::<bool>(),
        special in special(),
        seed in 0usize..1_000_000,
    ) -> Case {
        let padding = [0, 1, 2].map(|a| dilation * (kernel[a] / 2));
        let case = Case { batch, channels, input, kernel, stride, padding, dilation: [dilation; 3], replicate, special, seed };
        case.fitted()
    }
}

fn cases() -> impl Strategy<Value = Case> {
    prop_oneof![1 => layer_like(), 1 => wild()]
}

/// Cases per run: `PROPTEST_CASES`, else 64.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_path_computes_burns_convolution_or_refuses_as_pytorch(case in cases()) {
        every_path(&case)?;
    }
}

/// Cases the property found, kept as regressions (each once made a path disagree or crash).
#[test]
fn found_cases() {
    let cases: [Case; 0] = [];
    for case in cases {
        let outcome = every_path(&case);
        assert!(outcome.is_ok(), "{case:?}: {outcome:?}");
    }
}
