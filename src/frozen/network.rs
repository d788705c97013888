//! [`FrozenResNet3d`]: a [`ResNet3d`] lowered for inference on the CPU.
//!
//! Not a second network: the model's [`Plan`] with each layer (a convolution and its
//! BatchNorm) mapped through the one fold-and-pack step ([`PackedConv::fold_and_pack`]), and
//! run by the same walk as the model, on channels-last buffers instead of tensors.
//!
//! Burn's CPU convolution converts its input to channels-last, re-flattens the kernel and
//! scatters its output back on every call, and BatchNorm, ReLU and the residual add each take
//! a further pass over memory. Frozen, the network instead:
//! - folds every BatchNorm into its convolution (`W' = W * g / sqrt(v + eps)`,
//!   `b' = beta - mean * g / sqrt(v + eps)`), once;
//! - keeps activations channels-last (`[N, D, H, W, C]`) from the stem to the head, so that
//!   the `kw` taps of a kernel row are one contiguous run of `kw * C` values;
//! - runs each convolution as one matrix product per tile of output voxels, reading its input
//!   in place where it can (see `kernels/conv.rs`); the bias, the residual and the ReLU are
//!   applied to the tile while it is still in cache;
//! - runs 3x3x3 convolutions with stride 1 and up to 256 channels as Winograd products,
//!   their kernels transformed once at freeze: F(4x4x4, 3x3x3) in f32 in layers of up to 128
//!   channels (an eighth of the direct product's multiply-adds; in the bf16 network too),
//!   F(2x2x2, 3x3x3) in the others (bf16 products in the bf16 network);
//! - keeps its activation buffers between layers and calls, so that their pages are not
//!   faulted in again; a bottleneck's last convolution writes its output over the shortcut
//!   it adds, one buffer instead of two;
//! - runs its walk on a thread of rayon's pool, so that each layer's split of work between
//!   the threads does not put the calling thread to sleep and wake it again.
//!
//! It computes what [`ResNet3d::forward`] computes in eval mode, up to float rounding, and
//! is checked against PyTorch by the same tests. It is for inference only: it holds plain
//! `f32` vectors and no gradients. Fine-tune the [`ResNet3d`], then freeze it.

use std::borrow::Cow;

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::arch::geometry::{PoolGeometry, ZeroPadShortcut};
use crate::arch::plan::{BlockPlan, Plan, Site};
use crate::arch::walk::{self, Engine, Tap};
use crate::error::{Error, Result};
use crate::kernels::buffers::{Act, Buffers, DEFAULT_BUDGET};
use crate::kernels::conv::{PackedConv, Precision, Residual, WinogradUse};
use crate::kernels::fold::BatchNormValues;
use crate::kernels::layout::{to_channels_first, to_channels_last};
use crate::kernels::matmul::Kernel;
use crate::kernels::parallel::on_pool;
use crate::kernels::{bf16, pool};
use crate::model::engine::ModelLayer;
use crate::model::network::{Features, ResNet3d};
use crate::model::pool::MaxPool3d;

/// A [`ResNet3d`] frozen for inference on the CPU: BatchNorm folded into the convolutions,
/// activations channels-last, convolutions as tiled matrix products. Build it with
/// [`ResNet3d::freeze`].
///
/// Inputs and outputs are Burn tensors on any device; the work runs on the CPU's threads
/// (rayon's global pool).
///
/// It is `Send + Sync`: one network (in an `Arc`) serves several threads at once, each call
/// giving what it gives alone. Each call holds the activations it needs (a few layers'
/// outputs at a time) and reuses them from layer to layer; between calls the network keeps at
/// most its [buffer budget](Self::set_buffer_budget) of them for the next call.
///
/// A network is checked when it is frozen ([`ResNet3d::validate`]) and every input when it
/// is run: layers that do not fit together or an input that does not fit give an error,
/// never a read outside a buffer. NaN and infinities in the input reach the outputs PyTorch's
/// network gives them to.
#[derive(Debug, Clone)]
pub struct FrozenResNet3d {
    /// The model's plan, each layer folded and packed.
    plan: Plan<PackedConv>,
    /// The head: `[d_input, classes]` row-major, and the bias.
    fc: Option<(Vec<f32>, Vec<f32>)>,
    buffers: Buffers,
}

/// The frozen network's engine: each layer a [`PackedConv`] on channels-last buffers, which
/// go back to `buffers` once the walk is done with them.
struct Frozen<'a> {
    buffers: &'a Buffers,
}

impl Engine for Frozen<'_> {
    type Layer = PackedConv;
    type Act = Act;

    fn layer(&self, layer: &PackedConv, x: &Act, residual: Option<&Act>) -> Result<Act> {
        layer.forward(x.view(), residual.map(Act::view), self.buffers)
    }

    fn layer_onto(&self, layer: &PackedConv, x: &Act, residual: Act) -> Result<Act> {
        layer.forward_adding(x.view(), Residual::Onto(residual), self.buffers)
    }

    fn max_pool(&self, geometry: &PoolGeometry, x: Act) -> Result<Act> {
        let [n, d, h, w, c] = x.dims;
        // The one check: every axis, padded, covers the window.
        let shape = geometry.on([n, c, d, h, w], "maxpool")?;
        let [od, oh, ow] = shape.output;
        let data = pool::forward(Cow::Owned(x.data), &shape, self.buffers).ok_or_else(|| Error::InvalidInput {
            dims: vec![n, c, d, h, w],
            what: format!(
                "maxpool: its output of {} values cannot be allocated",
                shape.output_len()
            ),
        })?;
        Ok(Act {
            data,
            dims: [n, od, oh, ow, c],
        })
    }

    fn zero_pad(&self, zp: &ZeroPadShortcut, x: &Act, site: Site) -> Result<Act> {
        let [n, d, h, w, c] = x.dims;
        let [_, oc, od, oh, ow] = zp.output_dims([n, c, d, h, w], &site.to_string())?;
        let [sd, sh, sw] = zp.stride;
        let mut out = self
            .buffers
            .take(n * od * oh * ow * oc)
            .ok_or_else(|| Error::InvalidInput {
                dims: vec![n, c, d, h, w],
                what: format!("{site}: its shortcut's output cannot be allocated"),
            })?;
        // Every value is written: the input's channels, then zeros.
        out.par_chunks_mut(oh * ow * oc).enumerate().for_each(|(plane, dst)| {
            let (b, z) = (plane / od, plane % od);
            for (v, voxel) in dst.chunks_exact_mut(oc).enumerate() {
                let (y, xx) = (v / ow, v % ow);
                let src = (((b * d + z * sd) * h + y * sh) * w + xx * sw) * c;
                voxel[..c].copy_from_slice(&x.data[src..src + c]);
                voxel[c..].fill(0.0);
            }
        });
        Ok(Act {
            data: out,
            dims: [n, od, oh, ow, oc],
        })
    }

    fn release(&self, x: Act) {
        self.buffers.give(x.data);
    }
}

/// Values of a tensor as `f32`, whatever the backend.
fn values<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|err| Error::InvalidInput {
            dims: Vec::new(),
            what: format!("the tensor's data could not be read as f32: {err:?}"),
        })
}

/// The lowering of one layer of the model: its kernel and BatchNorm read back, folded and
/// packed for `kernel` in `precision`.
fn lower(layer: &ModelLayer<'_>, kernel: Kernel, precision: Precision) -> Result<PackedConv> {
    let bn = layer.bn;
    let (gamma, beta) = (values(bn.gamma.val())?, values(bn.beta.val())?);
    let (mean, var) = (values(bn.running_mean.value())?, values(bn.running_var.value())?);
    PackedConv::fold_and_pack(
        layer.spec,
        &values(layer.conv.weight.val())?,
        &BatchNormValues {
            gamma: &gamma,
            beta: &beta,
            mean: &mean,
            var: &var,
            epsilon: bn.epsilon,
        },
        kernel,
        precision,
        WinogradUse::Kept,
    )
}

/// The head as `([d_input, classes] row-major, bias)`.
fn head_of(fc: &Option<burn::nn::Linear>) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let Some(fc) = fc else {
        return Ok(None);
    };
    let weight = values(fc.weight.val())?;
    let classes = fc.weight.dims()[1];
    let bias = match &fc.bias {
        Some(b) => values(b.val())?,
        None => vec![0.0; classes],
    };
    Ok(Some((weight, bias)))
}

impl ResNet3d {
    /// This network frozen for fast inference on the CPU: BatchNorm folded into the
    /// convolutions (with its running statistics, as in eval mode), activations
    /// channels-last. See [`FrozenResNet3d`].
    ///
    /// The network is [validated](ResNet3d::validate) first: nothing is frozen from layers
    /// that do not fit together.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] naming the first layer that does not fit its neighbours;
    /// [`Error::InvalidInput`] if a parameter cannot be read back as `f32`.
    pub fn freeze(&self) -> Result<FrozenResNet3d> {
        self.freeze_with(Kernel::detect(), Precision::F32)
    }

    /// [`freeze`](Self::freeze) with bf16 products where the CPU has AVX512_BF16: every
    /// convolution rounds the inputs of its products to bf16 and accumulates in f32 (the
    /// direct ones their activations and folded weights; the 3x3x3 F(2x2x2) Winograd ones the
    /// transformed tiles and kernels, the transforms staying f32; pointwise ones too, with an
    /// even channel count); activations between layers, residuals and the head stay f32. The
    /// 3x3x3 layers of up to 128 channels run the f32 network's F(4x4x4) Winograd products
    /// where their output has enough of those tiles: faster than F(2x2x2) in bf16 (7.7 against
    /// 12.4 ms on layer1's 64 channels), and in f32.
    /// Faster than the f32 network on every benchmark shape (1.2 to 1.6 times), with logits
    /// within about 5e-3 of it (relative to their largest magnitude; `tests/it/bf16.rs`
    /// states the measured error and its tolerance).
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a CPU without AVX512_BF16 (use [`freeze`](Self::freeze));
    /// otherwise as [`freeze`](Self::freeze).
    pub fn freeze_bf16(&self) -> Result<FrozenResNet3d> {
        let Some(kernel) = Kernel::avx512().filter(|_| bf16::available()) else {
            return Err(Error::Unsupported {
                what: "bf16 inference needs a CPU with AVX512_BF16 (vdpbf16ps), which this one lacks: use freeze()"
                    .into(),
            });
        };
        self.freeze_with(kernel, Precision::Bf16)
    }

    /// [`freeze`](Self::freeze) with the portable matrix product (the `gemm` crate) even
    /// where AVX-512 is available: for tests and comparisons.
    #[doc(hidden)]
    pub fn freeze_portable(&self) -> Result<FrozenResNet3d> {
        self.freeze_with(Kernel::Portable, Precision::F32)
    }

    fn freeze_with(&self, kernel: Kernel, precision: Precision) -> Result<FrozenResNet3d> {
        let plan = self.layers()?.map(|layer| lower(layer, kernel, precision))?;
        Ok(FrozenResNet3d {
            plan,
            fc: head_of(&self.fc)?,
            buffers: Buffers::default(),
        })
    }

    /// [`freeze`](Self::freeze), consuming the network: each block's parameters are freed as
    /// soon as it is frozen, so that the peak memory is one copy of the weights, not two.
    ///
    /// # Errors
    /// As [`freeze`](Self::freeze).
    pub fn into_frozen(self) -> Result<FrozenResNet3d> {
        let (kernel, precision) = (Kernel::detect(), Precision::F32);
        let model = self.layers()?;
        let stem = model
            .stem
            .iter()
            .map(|l| lower(l, kernel, precision))
            .collect::<Result<Vec<_>>>()?;
        let (max_pool, head) = (model.max_pool, model.head);
        drop(model);
        let fc = head_of(&self.fc)?;
        let ResNet3d {
            layer1,
            layer2,
            layer3,
            layer4,
            ..
        } = self;
        let mut stages: [Vec<BlockPlan<PackedConv>>; 4] = Default::default();
        for (stage, (frozen, blocks)) in stages.iter_mut().zip([layer1, layer2, layer3, layer4]).enumerate() {
            for (index, block) in blocks.into_iter().enumerate() {
                let site = Site::Block { stage, index };
                frozen.push(block.plan(site)?.map(|l| lower(l, kernel, precision))?);
                // `block` is dropped here: its parameters are freed once packed.
            }
        }
        Ok(FrozenResNet3d {
            plan: Plan {
                stem,
                max_pool,
                stages,
                head,
            },
            fc,
            buffers: Buffers::default(),
        })
    }
}

impl FrozenResNet3d {
    /// The default of [`set_buffer_budget`](Self::set_buffer_budget): 256 MiB, enough to keep
    /// every activation buffer of a ResNet3d-50 on a `1x1x64x128x128` volume between calls.
    pub const DEFAULT_BUFFER_BUDGET: usize = DEFAULT_BUDGET;

    /// Input channels the network takes.
    pub fn in_channels(&self) -> usize {
        self.plan.in_channels()
    }

    /// Sets how many bytes of activation buffers the network keeps between calls (default
    /// [`DEFAULT_BUFFER_BUDGET`](Self::DEFAULT_BUFFER_BUDGET)), freeing the least recently
    /// used ones beyond it. Kept buffers spare the next call the page faults of fresh memory
    /// (about 15% of a forward); 0 keeps none.
    ///
    /// # Memory
    /// Between calls the network holds its weights, at most the budget in buffers, and per
    /// worker thread one tile of gathered patches (at most 192 x 27 x the widest layer's
    /// input channels values: 10.6 MB for 512 channels). During a call it holds the
    /// activations that call needs besides, and up to two of the largest it has freed, for
    /// its next layers; calls running meanwhile share the kept buffers, each taking what fits
    /// its requests.
    pub fn set_buffer_budget(&self, bytes: usize) {
        self.buffers.set_budget(bytes);
    }

    /// Frees every kept activation buffer now (the next call allocates afresh).
    pub fn release_buffers(&self) {
        self.buffers.release();
    }

    /// Bytes of activation buffers kept between calls now: at most the budget.
    pub fn buffer_bytes(&self) -> usize {
        self.buffers.bytes()
    }

    fn input(&self, x: Tensor<5>) -> Result<Act> {
        let dims = x.dims();
        let [n, c, d, h, w] = dims;
        if c != self.in_channels() || dims.contains(&0) {
            return Err(Error::InvalidInput {
                dims: dims.to_vec(),
                what: format!(
                    "the network takes [N, {}, D, H, W] with every extent at least 1",
                    self.in_channels()
                ),
            });
        }
        let data = values(x)?;
        // One channel: both layouts are the same.
        let data = if c == 1 { data } else { to_channels_last(&data, dims) };
        Ok(Act {
            data,
            dims: [n, d, h, w, c],
        })
    }

    /// The walk of `x` through the network with `tap` at each [`Tap`], up to `layer4`.
    fn walk(&self, x: Tensor<5>, tap: impl FnMut(Tap, Act) -> Result<Act> + Send) -> Result<Act> {
        let x = self.input(x)?;
        // The call's own pool: its activations are reused from layer to layer whatever the
        // budget, which then bounds what stays kept after the call.
        let call = self.buffers.for_call();
        let result = on_pool(|| walk::run(&self.plan, &Frozen { buffers: &call }, x, tap));
        self.buffers.end_call(call);
        result
    }

    /// Class logits, or the pooled features without a head: what [`ResNet3d::forward`]
    /// returns, on the input's device.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an input that is not `[N, in_channels, D, H, W]` with
    /// every extent at least 1, or that a layer does not take.
    pub fn forward(&self, x: Tensor<5>) -> Result<Tensor<2>> {
        let device = x.device();
        let act = self.walk(x, |_, a| Ok(a))?;
        let (values, shape) = self.head(&act);
        self.buffers.give(act.data);
        Ok(Tensor::from_data(TensorData::new(values, shape), &device))
    }

    /// The output of the stem and of every stage, as [`ResNet3d::features`] returns them
    /// (`[N, C, D, H, W]`, on the input's device).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn features(&self, x: Tensor<5>) -> Result<Features> {
        let device = x.device();
        // Each map is copied out once, as a tensor, and the walk goes on with the buffer.
        let mut maps = Vec::with_capacity(5);
        let act = self.walk(x, |_, act| {
            let [n, d, h, w, c] = act.dims;
            maps.push(Tensor::from_data(
                TensorData::new(to_channels_first(&act.data, act.dims), [n, c, d, h, w]),
                &device,
            ));
            Ok(act)
        })?;
        self.buffers.give(act.data);
        Features::from_taps(maps)
    }

    /// The head's weights (`[d_input, classes]` row-major) and its classes, if any.
    pub(crate) fn head_weights(&self) -> Option<(&[f32], usize)> {
        self.fc.as_ref().map(|(weight, bias)| (weight.as_slice(), bias.len()))
    }

    /// Global average pool and the head: values and shape.
    fn head(&self, act: &Act) -> (Vec<f32>, [usize; 2]) {
        let [n, d, h, w, c] = act.dims;
        let voxels = d * h * w;
        let mut pooled = vec![0.0f32; n * c];
        for (b, sum) in pooled.chunks_exact_mut(c).enumerate() {
            for v in act.data[b * voxels * c..(b + 1) * voxels * c].chunks_exact(c) {
                sum.iter_mut().zip(v).for_each(|(s, x)| *s += x);
            }
            sum.iter_mut().for_each(|s| *s /= voxels as f32);
        }
        let Some((weight, bias)) = &self.fc else {
            return (pooled, [n, c]);
        };
        let classes = bias.len();
        let mut logits = vec![0.0f32; n * classes];
        for (row, feats) in logits.chunks_exact_mut(classes).zip(pooled.chunks_exact(c)) {
            row.copy_from_slice(bias);
            for (f, wrow) in feats.iter().zip(weight.chunks_exact(classes)) {
                row.iter_mut().zip(wrow).for_each(|(v, w)| *v += f * w);
            }
        }
        (logits, [n, classes])
    }
}

impl MaxPool3d {
    /// The pool of `x` (channels-last) as the frozen network runs it, for the benches.
    #[cfg(feature = "bench")]
    pub(crate) fn frozen(&self, x: Act, buffers: &Buffers) -> Result<Act> {
        Frozen { buffers }.max_pool(&self.geometry(), x)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::arch::config::ResNet3dConfig;

    /// A one-channel ResNet3d-18 of `width` channels with `classes` classes, for tests.
    pub(crate) fn small_resnet18(width: usize, classes: usize, device: &Device) -> ResNet3d {
        let config = ResNet3dConfig::resnet18().with_width(width).with_in_channels(1);
        config.with_num_classes(Some(classes)).init(device)
    }

    /// `sin(i * step)` over `shape`, as a tensor on `device`.
    pub(crate) fn wave(shape: [usize; 5], step: f32, device: &Device) -> Tensor<5> {
        let values: Vec<f32> = (0..shape.iter().product()).map(|i| (i as f32 * step).sin()).collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// The walk runs on a thread of rayon's pool, so that a layer's fork does not put the
    /// caller's thread to sleep and wake it again: every tap sees a pool thread, and the
    /// output is what the walk gives on the pool's own thread.
    #[test]
    fn the_walk_runs_on_a_pool_thread() {
        let device = Device::flex();
        let net = small_resnet18(4, 3, &device).freeze().unwrap();
        let x = || wave([2, 1, 8, 12, 12], 0.37, &device);
        let mut threads = Vec::new();
        let act = net
            .walk(x(), |_, a| {
                threads.push(rayon::current_thread_index());
                Ok(a)
            })
            .unwrap();
        assert_eq!(threads.len(), 5, "the stem and four stages");
        assert!(threads.iter().all(Option::is_some), "taps ran on {threads:?}");
        let outside = net.head(&act).0;
        let inside = rayon::scope(|_| net.forward(x()).unwrap().into_data().try_to_vec::<f32>().unwrap());
        assert_eq!(outside, inside);
    }
}
