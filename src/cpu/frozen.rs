//! [`FrozenResNet3d`]: a [`ResNet3d`] frozen for inference on the CPU.
//!
//! Burn's CPU convolution converts its input to channels-last, re-flattens the kernel and
//! scatters its output back on every call, and BatchNorm, ReLU and the residual add each take
//! a further pass over memory. Frozen, the network instead:
//! - folds every BatchNorm into its convolution (`W' = W * g / sqrt(v + eps)`,
//!   `b' = beta - mean * g / sqrt(v + eps)`), once;
//! - keeps activations channels-last (`[N, D, H, W, C]`) from the stem to the head, so that
//!   the `kw` taps of a kernel row are one contiguous run of `kw * C` values;
//! - runs each convolution as one matrix product per tile of output voxels (see
//!   `matmul.rs`), reading its input in place: a 1x1x1 convolution with stride 1 reads the
//!   activations, others with 16+ channels a zero-padded copy, one (depth, height) tap at a
//!   time (implicit GEMM), and the stem and short lines gather the tile's patches into a
//!   buffer that stays in cache; the bias, the residual and the ReLU are applied to the tile
//!   while it is still in cache (by the register tile itself where the product is
//!   prepacked);
//! - runs 3x3x3 convolutions with stride 1 and up to 256 channels as Winograd
//!   F(2x2x2, 3x3x3) products (`winograd.rs`), their kernels transformed once at freeze;
//! - keeps its activation buffers between layers and calls, so that their pages are not
//!   faulted in again.
//!
//! It computes what [`ResNet3d::forward`] computes in eval mode, up to float rounding, and
//! is checked against PyTorch by the same tests. It is for inference only: it holds plain
//! `f32` vectors and no gradients. Fine-tune the [`ResNet3d`], then freeze it.

use burn::nn::BatchNorm;
use burn::tensor::{Tensor, TensorData};
use std::cell::RefCell;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

use super::matmul::{Epilogue, Kernel, NR, PackedB, matmul};
use super::winograd::Winograd;
use crate::block::{Block, ZeroPadShortcut};
use crate::config::DepthPadding;
use crate::conv::Conv;
use crate::conv::conv_output_dims;
use crate::error::{Error, Result};
use crate::model::{Features, ResNet3d};
use crate::pool::MaxPool3d;

/// A [`ResNet3d`] frozen for inference on the CPU: BatchNorm folded into the convolutions,
/// activations channels-last, convolutions as tiled matrix products. Build it with
/// [`ResNet3d::freeze`].
///
/// Inputs and outputs are Burn tensors on any device; the work runs on the CPU's threads
/// (rayon's global pool).
///
/// It is `Send + Sync`: one network (in an `Arc`) serves several threads at once, each call
/// giving what it gives alone. Each call holds the activations it needs (a few layers'
/// outputs at a time); between calls the network keeps at most its
/// [buffer budget](Self::set_buffer_budget) of them for reuse, shared by all callers.
///
/// A network is checked when it is frozen ([`ResNet3d::validate`]) and every input when it
/// is run: layers that do not fit together or an input that does not fit give an error,
/// never a read outside a buffer. NaN in the input propagates to the outputs it reaches, as
/// in the Burn model and PyTorch.
#[derive(Debug, Clone)]
pub struct FrozenResNet3d {
    /// `conv1` with `bn1`, then the factorised stem's depth convolution if any.
    stem: Vec<FrozenConv>,
    maxpool: Option<Pool>,
    stages: [Vec<FrozenBlock>; 4],
    /// `[d_input, classes]` row-major, and the bias.
    fc: Option<(Vec<f32>, Vec<f32>)>,
    buffers: Buffers,
}

/// The max pool, on channels-last activations.
#[derive(Debug, Clone)]
struct Pool(MaxPool3d);

/// A block: its main branch's convolutions in order (ReLU after each, the shortcut added
/// before the last one's ReLU), and the shortcut.
#[derive(Debug, Clone)]
struct FrozenBlock {
    name: String,
    convs: Vec<FrozenConv>,
    shortcut: FrozenShortcut,
}

/// A block's shortcut, on channels-last activations.
#[derive(Debug, Clone)]
// One per block: boxing the projection would only add indirection.
#[allow(clippy::large_enum_variant)]
enum FrozenShortcut {
    Identity,
    /// The projection with its BatchNorm folded in.
    Projection(FrozenConv),
    /// MedicalNet's parameter-free shortcut.
    ZeroPad(ZeroPadShortcut),
}

impl FrozenShortcut {
    /// The shortcut of `x` (whose buffer goes back to `buffers` unless it is the identity).
    /// `name` names the block in errors.
    fn forward(&self, x: Act, buffers: &Buffers, name: &str) -> Result<Act> {
        match self {
            FrozenShortcut::Identity => Ok(x),
            FrozenShortcut::Projection(conv) => {
                let identity = conv.forward(x.view(), None, false, buffers);
                buffers.give(x.data);
                identity
            }
            FrozenShortcut::ZeroPad(zp) => {
                let [n, d, h, w, c] = x.dims;
                let [_, oc, od, oh, ow] = zp.output_dims([n, c, d, h, w], name)?;
                let [sd, sh, sw] = zp.stride;
                let mut out = buffers.take(n * od * oh * ow * oc);
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
                buffers.give(x.data);
                Ok(Act {
                    data: out,
                    dims: [n, od, oh, ow, oc],
                })
            }
        }
    }
}

/// The precision of a frozen network's products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precision {
    /// f32 throughout.
    F32,
    /// bf16 inputs to the implicit products (f32 accumulation, f32 activations between
    /// layers); f32 elsewhere.
    Bf16,
}

/// A convolution with its BatchNorm folded in.
#[derive(Debug, Clone)]
pub(crate) struct FrozenConv {
    /// The layer's name in torchvision naming (`layer1.0.conv2`), for errors.
    name: String,
    /// `[K, out]` row-major, `K` ordered (depth tap, height tap, width tap, input channel):
    /// the order of a gathered patch; packed for the fastest kernel this CPU runs, or the
    /// portable one.
    weight: PackedB,
    /// The same kernel in bf16 pairs, for `freeze_bf16`'s implicit products (see
    /// [`bf16`](super::bf16)); `None` in f32 networks and where that product does not apply.
    weight_bf16: Option<super::bf16::PackedBf16>,
    /// The kernel transformed for F(2x2x2, 3x3x3) (see [`winograd`](super::winograd)), for
    /// f32 3x3x3 convolutions with stride 1 and up to [`WINOGRAD_CHANNELS`] channels.
    winograd: Option<Winograd>,
    bias: Vec<f32>,
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    /// Dilation per axis; only the gathered patches take values other than 1.
    dilation: [usize; 3],
    replicate_depth: bool,
}

/// The most input or output channels of a convolution that runs as a Winograd product: its
/// transformed kernel is 64/27 times the direct one's size (16.8 MB for 256 channels in and
/// out), and the last stage (512) sees too few voxels to repay the transforms.
const WINOGRAD_CHANNELS: usize = 256;

/// The fewest 2x2x2 output tiles for which the Winograd product runs.
const WINOGRAD_TILES: usize = 8;

/// Output voxels per work item.
const TILE_ROWS: usize = 16 * super::matmul::MR;

thread_local! {
    /// Per thread: the gathered patches of a tile, and the matrix product's packed block.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The output's base pointer, shared by work items that write disjoint parts of it.
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: the pointer is only written through inside the parallel loops of
// `FrozenConv::forward` and `Winograd::forward`, each work item to rows and columns no other
// item touches, while the buffer it points into outlives the loop.
unsafe impl Sync for SendPtr {}
// SAFETY: as for `Sync`.
unsafe impl Send for SendPtr {}

/// Work items `(tile, panels)` for `tiles` tiles of output rows and `panels` column panels:
/// every tile whole where there are enough of them to keep the threads busy, else each split
/// into groups of panels, about two items per thread.
pub(super) fn work_items(tiles: usize, panels: usize) -> Vec<(usize, Range<usize>)> {
    let threads = rayon::current_num_threads().max(1);
    let groups = (2 * threads).div_ceil(tiles.max(1)).clamp(1, panels.max(1));
    let per_group = panels.div_ceil(groups);
    (0..tiles)
        .flat_map(|t| {
            (0..groups)
                .map(move |g| (t, g * per_group..((g + 1) * per_group).min(panels)))
                .filter(|(_, p)| !p.is_empty())
        })
        .collect()
}

/// Activation buffers kept between layers and between calls, so that their pages are not
/// faulted in (and zeroed by the kernel) again for every layer; at most `budget` bytes are
/// kept, the least recently returned buffers going first.
pub(crate) struct Buffers(Mutex<Kept>);

#[derive(Debug)]
struct Kept {
    /// Buffers with the time they were returned.
    buffers: Vec<(u64, Vec<f32>)>,
    clock: u64,
    /// Bytes of capacity held in `buffers`.
    bytes: usize,
    budget: usize,
}

impl Kept {
    /// Frees the least recently returned buffers until the rest fits the budget.
    fn fit_budget(&mut self) {
        while self.bytes > self.budget {
            let Some(oldest) = (0..self.buffers.len()).min_by_key(|&i| self.buffers[i].0) else {
                break;
            };
            let (_, evicted) = self.buffers.swap_remove(oldest);
            self.bytes -= evicted.capacity() * size_of::<f32>();
        }
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::with_budget(FrozenResNet3d::DEFAULT_BUFFER_BUDGET)
    }
}

impl Buffers {
    pub(crate) fn with_budget(budget: usize) -> Self {
        Self(Mutex::new(Kept {
            buffers: Vec::new(),
            clock: 0,
            bytes: 0,
            budget,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic while the lock was held leaves the list consistent (every change is one
        // push or remove), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `len` values, whatever a reused buffer held: the caller writes all of them. A kept
    /// buffer is reused when it fits and is at most twice too large (a larger one would pin
    /// memory a small request does not need); otherwise a new one is allocated.
    fn take(&self, len: usize) -> Vec<f32> {
        self.try_take(len).unwrap_or_else(|| vec![0.0; len])
    }

    /// [`take`](Self::take) from the kept buffers only: `None` if none fits.
    pub(crate) fn try_take(&self, len: usize) -> Option<Vec<f32>> {
        let mut kept = self.lock();
        let best = (0..kept.buffers.len())
            .filter(|&i| {
                let capacity = kept.buffers[i].1.capacity();
                capacity >= len && capacity <= 2 * len.max(1024)
            })
            .min_by_key(|&i| kept.buffers[i].1.capacity())?;
        let (_, mut buffer) = kept.buffers.swap_remove(best);
        kept.bytes -= buffer.capacity() * size_of::<f32>();
        drop(kept);
        buffer.truncate(len);
        buffer.resize(len, 0.0);
        Some(buffer)
    }

    /// Keeps `buffer` for a later [`take`](Self::take), within the budget: a buffer larger
    /// than the whole budget is freed at once, and the least recently returned ones are freed
    /// until the rest fits.
    pub(crate) fn give(&self, buffer: Vec<f32>) {
        let size = buffer.capacity() * size_of::<f32>();
        let mut kept = self.lock();
        if size > kept.budget || size == 0 {
            return;
        }
        kept.clock += 1;
        let now = kept.clock;
        kept.buffers.push((now, buffer));
        kept.bytes += size;
        kept.fit_budget();
    }

    fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Frees every kept buffer, keeping the budget.
    fn release(&self) {
        let mut kept = self.lock();
        kept.buffers.clear();
        kept.bytes = 0;
    }

    fn set_budget(&self, budget: usize) {
        let mut kept = self.lock();
        kept.budget = budget;
        kept.fit_budget();
    }
}

impl Clone for Buffers {
    /// A clone keeps the budget, not the buffers.
    fn clone(&self) -> Self {
        Self::with_budget(self.lock().budget)
    }
}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.lock();
        write!(
            f,
            "Buffers({} kept, {} of {} bytes)",
            kept.buffers.len(),
            kept.bytes,
            kept.budget
        )
    }
}

/// Activations channels-last: `[n, d, h, w, c]`.
#[derive(Debug, Clone)]
pub(crate) struct Act {
    pub data: Vec<f32>,
    pub dims: [usize; 5],
}

/// A channels-last activation borrowed: `dims.iter().product()` values of `[n, d, h, w, c]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub dims: [usize; 5],
}

impl Act {
    fn view(&self) -> View<'_> {
        View {
            data: &self.data,
            dims: self.dims,
        }
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

impl FrozenConv {
    /// `conv` with `bn` folded in. The caller has checked both
    /// ([`check_conv_bn`](crate::block::check_conv_bn)): a kernel with no empty extent, a
    /// BatchNorm of the kernel's width.
    fn new(name: &str, conv: &Conv, bn: &BatchNorm, kernel_impl: Kernel, precision: Precision) -> Result<Self> {
        let [o, i, kd, kh, kw] = conv.weight.dims();
        let w = values(conv.weight.val())?;
        let gamma = values(bn.gamma.val())?;
        let beta = values(bn.beta.val())?;
        let mean = values(bn.running_mean.value())?;
        let var = values(bn.running_var.value())?;
        let eps = bn.epsilon as f32;
        let taps = kd * kh * kw;
        let k = taps * i;
        if [gamma.len(), beta.len(), mean.len(), var.len()] != [o; 4] || w.len() != o * k {
            return Err(Error::InvalidNetwork {
                layer: name.to_string(),
                what: format!(
                    "{} kernel values and BatchNorm parameters that do not fit {o} channels",
                    w.len()
                ),
            });
        }
        let scale: Vec<f32> = (0..o).map(|oc| gamma[oc] / (var[oc] + eps).sqrt()).collect();
        let bias: Vec<f32> = (0..o).map(|oc| beta[oc] - mean[oc] * scale[oc]).collect();
        let mut layer = Self::from_kernel(
            name,
            &w,
            [o, i, kd, kh, kw],
            Some(&scale),
            bias,
            conv.stride,
            conv.padding,
            conv.depth_padding == DepthPadding::Replicate,
            kernel_impl,
        );
        // Dilated kernels (MedicalNet's layer3 and layer4) run on gathered patches.
        layer.dilation = conv.dilation;
        // bf16 for the implicit product (16 channels and more, an even count, so that pairs of
        // rows are pairs of channels of one tap) and for gathered patches (fewer channels: the
        // stem); not for pointwise convolutions.
        if precision == Precision::Bf16 && (i < 16 || i.is_multiple_of(2)) && layer.kernel != [1, 1, 1] {
            layer.weight_bf16 = Some(super::bf16::PackedBf16::conv_kernel(&w, [o, i, taps], &scale));
        }
        if precision == Precision::F32 {
            layer.add_winograd(&w, Some(&scale));
        }
        Ok(layer)
    }

    /// The convolution with kernel `w` (`[o, i, kd, kh, kw]`, each output channel multiplied
    /// by `scale` if given) and `bias` (`o` values): what the Burn op runs on channels-last
    /// data. The caller checks the lengths (asserted when packing).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_kernel(
        name: &str,
        w: &[f32],
        [o, i, kd, kh, kw]: [usize; 5],
        scale: Option<&[f32]>,
        bias: Vec<f32>,
        stride: [usize; 3],
        padding: [usize; 3],
        replicate_depth: bool,
        kernel_impl: Kernel,
    ) -> Self {
        // Rows (tap, input channel) of the [K, out] matrix, written straight into the kernel's
        // layout: no intermediate copy of the weights.
        let weight = PackedB::conv_kernel(w, [o, i, kd * kh * kw], scale, kernel_impl);
        Self {
            name: name.to_string(),
            weight,
            weight_bf16: None,
            winograd: None,
            bias,
            in_channels: i,
            out_channels: o,
            kernel: [kd, kh, kw],
            stride,
            padding,
            dilation: [1, 1, 1],
            replicate_depth,
        }
    }

    /// Adds the Winograd transform of this layer's kernel `w` (`[o, i, 3, 3, 3]`, scaled by
    /// `scale` as in [`from_kernel`](Self::from_kernel)) where the layer takes it: 3x3x3, stride
    /// 1, dilation 1, at most [`WINOGRAD_CHANNELS`] channels in and out. Outputs of at least
    /// [`WINOGRAD_TILES`] tiles then run as Winograd products.
    pub(crate) fn add_winograd(&mut self, w: &[f32], scale: Option<&[f32]>) {
        if self.kernel == [3, 3, 3]
            && self.stride == [1, 1, 1]
            && self.dilation == [1, 1, 1]
            && Self::winograd_takes(self.in_channels, self.out_channels)
        {
            self.winograd = Some(Winograd::new(
                w,
                [self.out_channels, self.in_channels],
                scale,
                self.weight.kernel(),
            ));
        }
    }

    /// Whether a 3x3x3 convolution with stride 1 of `i` input and `o` output channels runs as
    /// a Winograd product (at most [`WINOGRAD_CHANNELS`] each).
    pub(crate) fn winograd_takes(i: usize, o: usize) -> bool {
        i.max(o) <= WINOGRAD_CHANNELS
    }

    /// The extent the kernel covers per axis, `dilation * (kernel - 1) + 1`.
    fn reach(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.dilation[a] * (self.kernel[a] - 1) + 1)
    }

    /// The output's shape (channels-last) for an input of shape `[n, d, h, w, c]`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `c` is not the layer's input channels or the padded input is
    /// smaller than the kernel: the conditions under which the kernels below stay in bounds.
    fn output_dims(&self, [n, d, h, w, c]: [usize; 5]) -> Result<[usize; 5]> {
        let [n, oc, od, oh, ow] = conv_output_dims(
            [n, c, d, h, w],
            self.in_channels,
            self.out_channels,
            self.reach(),
            self.stride,
            self.padding,
            &self.name,
        )?;
        Ok([n, od, oh, ow, oc])
    }

    /// The convolution of `x`, plus `residual` if given, then ReLU if `relu`.
    ///
    /// # Errors
    /// As [`output_dims`](Self::output_dims); [`Error::InvalidNetwork`] if `residual` does not
    /// have the output's shape. Nothing is computed then.
    pub(crate) fn forward(
        &self,
        x: View<'_>,
        residual: Option<View<'_>>,
        relu: bool,
        buffers: &Buffers,
    ) -> Result<Act> {
        // Every read below stays in bounds because of these two checks: `x` holds
        // `in_channels` values per voxel over a padded extent that covers the kernel, and the
        // residual has the output's shape.
        let out_dims = self.output_dims(x.dims)?;
        debug_assert_eq!(x.data.len(), x.dims.iter().product::<usize>());
        if let Some(res) = residual
            && res.dims != out_dims
        {
            return Err(Error::InvalidNetwork {
                layer: self.name.clone(),
                what: format!(
                    "the shortcut gives {:?} (channels-last), the convolution {out_dims:?}",
                    res.dims
                ),
            });
        }
        let [n, od, oh, ow, oc] = out_dims;
        if let Some(winograd) = &self.winograd
            && n * [od, oh, ow].iter().map(|o| o.div_ceil(2)).product::<usize>() >= WINOGRAD_TILES
        {
            return self.forward_winograd(winograd, x, residual, relu, out_dims, buffers);
        }
        let rows = n * od * oh * ow;
        let k = self.kernel.iter().product::<usize>() * self.in_channels;
        // Every value is overwritten below (bias first).
        let mut out = buffers.take(rows * oc);
        let pointwise = self.kernel == [1, 1, 1] && self.stride == [1, 1, 1];
        // Implicit GEMM: the kernel reads a zero-padded copy of the input in place, one
        // (depth tap, height tap) at a time, instead of gathered patches. For 16 channels
        // and more, where a kernel row's kw * C values make a long enough product.
        // Blocks stay within an output line, so lines much shorter than a block waste the
        // tile: only lines where the blocks are at least 7/8 full.
        let mr = super::matmul::MR;
        // A line's blocks cost 12 rows each, the last one 8 where it has at most 8 (the
        // short register tile).
        let tail = ow % mr;
        let cost = ow / mr * mr
            + if tail == 0 {
                0
            } else if tail <= 8 {
                8
            } else {
                mr
            };
        let full_blocks = ow * 8 >= cost * 7;
        // With fewer channels a kernel row is short (a one-channel stem: 7 values), so the
        // product keeps its accumulators over all rows of the kernel instead (`implicit_runs`);
        // the bf16 network keeps its gathered bf16 patches there.
        let implicit = !pointwise
            && self.dilation == [1, 1, 1]
            && self.weight.kernel() == Kernel::Avx512
            && full_blocks
            && (self.in_channels >= 16 || self.weight_bf16.is_none());
        // bf16 activations for the bf16 kernel, else f32 ones for the f32 kernel.
        let padded_bf16 = self
            .weight_bf16
            .as_ref()
            .filter(|_| implicit && self.in_channels.is_multiple_of(2))
            .map(|w| (w, self.pad_bf16(x)));
        let padded = (implicit && padded_bf16.is_none()).then(|| self.pad(x, buffers));

        // Work items: tiles of output voxels, each split into groups of column panels when
        // there are too few tiles to keep every thread busy.
        let threads = rayon::current_num_threads().max(1);
        // Tiles of at most TILE_ROWS rows and of equal size up to a multiple of MR (with 256
        // rows, layer3 on a 64 x 128 x 128 input, tiles of 192 and 64 rows left one thread a
        // third of the work), as many as a multiple of the threads when there are enough rows;
        // with fewer, the panels are split instead (below): each tile reads the whole kernel,
        // and for the last stages (32 rows of a 28 MB kernel) that reading is the cost.
        let natural = rows.div_ceil(TILE_ROWS).max(1);
        let wanted = if natural >= threads {
            natural.div_ceil(threads) * threads
        } else {
            natural
        };
        let tile = rows.div_ceil(wanted).div_ceil(mr).max(1) * mr;
        let tiles = rows.div_ceil(tile);
        let items = work_items(tiles, self.weight.panel_count());
        debug_assert_eq!(out.len(), rows * oc);
        let out_ptr = SendPtr(out.as_mut_ptr());
        items.into_par_iter().for_each(|(t, panel_range)| {
            let out_ptr = &out_ptr;
            let first = t * tile;
            let count = tile.min(rows - first);
            let (c0, c1) = (panel_range.start * NR, (panel_range.end * NR).min(oc));
            // Row `r` of this item's part of the output: columns c0..c1 of output row first + r.
            let row = |r: usize| {
                debug_assert!(r < count && first + r < rows && c1 <= oc);
                // SAFETY: `out` holds rows * oc values (allocated above for `out_dims`), and
                // first + r < rows, c0 <= c1 <= oc. The work items' (tile, panel group) pairs
                // are disjoint, so this item alone touches these values while the loop runs.
                unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((first + r) * oc + c0), c1 - c0) }
            };
            // The prepacked product (pointwise convolutions and gathered f32 patches) applies
            // bias, residual and ReLU as it stores its tiles (with k > 0: it stores nothing
            // else); the others add to rows that hold them first and take the ReLU after.
            let fused = padded_bf16.is_none() && padded.is_none() && (self.weight_bf16.is_none() || pointwise) && k > 0;
            if !fused {
                for r in 0..count {
                    row(r).copy_from_slice(&self.bias[c0..c1]);
                }
                for r in 0..count {
                    let dst = row(r);
                    if let Some(res) = residual {
                        let src = &res.data[(first + r) * oc + c0..(first + r) * oc + c1];
                        dst.iter_mut().zip(src).for_each(|(v, s)| *v += s);
                    }
                }
            }
            if let Some((w, (xp, dims))) = &padded_bf16 {
                let product = |a: usize, lda: usize, rows: usize, ks: Range<usize>, j: usize, c: *mut f32| {
                    // SAFETY: A and C as `implicit` states; `w` is this layer's kernel in bf16
                    // pairs (the f32 kernel's rows), ks a tap row of kw * C values, C even, so
                    // even bounds; `padded_bf16` exists only where `freeze_bf16` found the
                    // bf16 product available.
                    unsafe { super::bf16::accumulate(xp.as_ptr().add(a), lda, rows, w, ks, j, c, oc) }
                };
                // SAFETY: `dims` is `pad_bf16`'s padded shape of `x`, whose shape
                // `output_dims` checked above; `out` holds `out_dims`, and this item alone
                // touches rows first..first + count, columns of `panel_range`.
                unsafe {
                    self.implicit(
                        *dims,
                        xp.len(),
                        out_dims,
                        first,
                        count,
                        panel_range.clone(),
                        out_ptr.0,
                        product,
                    )
                };
            } else if let Some(xp) = padded.as_ref().filter(|_| self.in_channels < 16) {
                // SAFETY: `xp` is `pad`'s copy of `x`, whose shape `output_dims` checked
                // against this layer above; `out` holds `out_dims`, and this item alone touches
                // rows first..first + count, columns of `panel_range`.
                unsafe { self.implicit_runs(xp, out_dims, first, count, panel_range.clone(), out_ptr.0) };
            } else if let Some(xp) = &padded {
                let product = |a: usize, lda: usize, rows: usize, ks: Range<usize>, j: usize, c: *mut f32| {
                    // SAFETY: as `implicit` states for its calls; the f32 kernel's rows ks.
                    unsafe { super::matmul::accumulate(xp.data.as_ptr().add(a), lda, rows, &self.weight, ks, j, c, oc) }
                };
                // SAFETY: `xp` is `pad`'s copy of `x`, whose shape `output_dims` checked
                // against this layer above; `out` holds `out_dims`, and this item alone touches
                // rows first..first + count, columns of `panel_range`.
                unsafe {
                    self.implicit(
                        xp.dims,
                        xp.data.len(),
                        out_dims,
                        first,
                        count,
                        panel_range.clone(),
                        out_ptr.0,
                        product,
                    )
                };
            } else if let (Some(w), false) = (&self.weight_bf16, pointwise) {
                SCRATCH.with_borrow_mut(|(patches, _)| {
                    self.gather(x, out_dims, first, count, k, patches);
                    // The patches in bf16, rows padded to the kernel's even K, and rows to a
                    // whole number of register tiles (zeros, results never stored).
                    let kp = w.k();
                    let mut a = vec![0u16; count.div_ceil(mr) * mr * kp];
                    for (dst, src) in a.chunks_exact_mut(kp).zip(patches[..count * k].chunks_exact(k)) {
                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = super::bf16::to_bf16(v));
                    }
                    for r0 in (0..count).step_by(mr) {
                        for j in panel_range.clone() {
                            // SAFETY: `a` holds MR rows of kp values from row r0 (whole tiles);
                            // 0..kp is `w`'s even row count; C: this item's rows and panel j;
                            // `weight_bf16` exists only where `freeze_bf16` found the bf16
                            // product available.
                            unsafe {
                                super::bf16::accumulate(
                                    a.as_ptr().add(r0 * kp),
                                    kp,
                                    mr.min(count - r0),
                                    w,
                                    0..kp,
                                    j,
                                    out_ptr.0.add((first + r0) * oc),
                                    oc,
                                )
                            };
                        }
                    }
                });
            } else {
                SCRATCH.with_borrow_mut(|(patches, packed)| {
                    let lhs = if pointwise {
                        x.data[first * k..(first + count) * k].as_ptr()
                    } else {
                        self.gather(x, out_dims, first, count, k, patches);
                        patches.as_ptr()
                    };
                    // The residual has the output's shape (checked above): its rows from
                    // `first` are laid out as the output's.
                    let epilogue = Epilogue {
                        bias: &self.bias,
                        residual: residual.map(|r| r.data[first * oc..].as_ptr()),
                        relu,
                    };
                    // lhs holds count rows of k values (`x` has in_channels values per voxel,
                    // checked by `output_dims`; `gather` writes count * k), the output count
                    // rows of oc from `first`, this item alone touching their columns c0..c1;
                    // SAFETY: as just said; the bias has oc values (the kernel's columns), and
                    // `self.weight` was packed for a kernel this CPU runs.
                    unsafe {
                        matmul(
                            lhs,
                            k,
                            count,
                            &self.weight,
                            panel_range.clone(),
                            out_ptr.0.add(first * oc),
                            oc,
                            packed,
                            Some(epilogue),
                        );
                    }
                });
            }
            if relu && !fused {
                for r in 0..count {
                    row(r).iter_mut().for_each(|v| *v = relu_keeping_nan(*v));
                }
            }
        });
        if let Some(xp) = padded {
            buffers.give(xp.data);
        }
        Ok(Act {
            data: out,
            dims: out_dims,
        })
    }

    /// [`forward`](Self::forward) as a Winograd product: `x` padded to whole 2x2x2 tiles of
    /// the output (`out_dims`, checked against `x` and `residual` by the caller).
    fn forward_winograd(
        &self,
        winograd: &Winograd,
        x: View<'_>,
        residual: Option<View<'_>>,
        relu: bool,
        out_dims: [usize; 5],
        buffers: &Buffers,
    ) -> Result<Act> {
        let [n, od, oh, ow, oc] = out_dims;
        let [dp, hp, wp] = Winograd::padded_extent([od, oh, ow]);
        let padded = [n, dp, hp, wp, self.in_channels];
        let mut xp = buffers.take(padded.iter().product());
        xp.fill(0.0);
        self.copy_padded(x, &mut xp, padded, <[f32]>::copy_from_slice);
        // Every value is overwritten.
        let mut out = buffers.take(n * od * oh * ow * oc);
        let done = winograd.forward(&xp, out_dims, &self.bias, residual.map(|r| r.data), relu, &mut out);
        buffers.give(xp);
        if !done {
            buffers.give(out);
            return Err(Error::InvalidNetwork {
                layer: self.name.clone(),
                what: format!("its Winograd kernel does not fit the output {out_dims:?} (channels-last)"),
            });
        }
        Ok(Act {
            data: out,
            dims: out_dims,
        })
    }

    /// `x` padded by this convolution's padding (zeros, or edge slices in depth for
    /// Replicate), as `[n, d', h', w', c]`, followed by zeros enough for the register tile
    /// to read a whole block past the last voxel.
    fn pad(&self, x: View<'_>, buffers: &Buffers) -> Act {
        let (len, dims) = self.padded_len(x.dims);
        let mut data = buffers.take(len);
        data.fill(0.0);
        self.copy_padded(x, &mut data, dims, <[f32]>::copy_from_slice);
        Act { data, dims }
    }

    /// [`pad`](Self::pad) in bf16 (rounded to nearest even), with its padded shape.
    fn pad_bf16(&self, x: View<'_>) -> (Vec<u16>, [usize; 5]) {
        let (len, dims) = self.padded_len(x.dims);
        let mut data = vec![0u16; len];
        self.copy_padded(x, &mut data, dims, |dst, src| {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = super::bf16::to_bf16(v));
        });
        (data, dims)
    }

    /// The length (with the slack) and shape of `pad`'s copy of an input of shape `dims`.
    fn padded_len(&self, [n, d, h, w, c]: [usize; 5]) -> (usize, [usize; 5]) {
        let [pd, ph, pw] = self.padding;
        let (dp, hp, wp) = (d + 2 * pd, h + 2 * ph, w + 2 * pw);
        let slack = (super::matmul::MR * self.stride[2] + self.kernel[2]) * c;
        (n * dp * hp * wp * c + slack, [n, dp, hp, wp, c])
    }

    /// Copies `x`'s rows into the zeroed padded buffer `data` of shape `padded` (at least
    /// the padding on both sides of every axis) with `put(dst, src)`, the first voxel at the
    /// padding's offset; depth planes past `x` replicate its edges if the padding does.
    fn copy_padded<T: Send>(
        &self,
        x: View<'_>,
        data: &mut [T],
        [_, dp, hp, wp, _]: [usize; 5],
        put: impl Fn(&mut [T], &[f32]) + Sync,
    ) {
        let [n, d, h, w, c] = x.dims;
        let [pd, ph, pw] = self.padding;
        debug_assert!(dp >= d + 2 * pd && hp >= h + 2 * ph && wp >= w + 2 * pw);
        let slice = hp * wp * c;
        data[..n * dp * slice]
            .par_chunks_mut(slice)
            .enumerate()
            .for_each(|(index, dst)| {
                let (b, zp) = (index / dp, index % dp);
                let z = zp as isize - pd as isize;
                let z = if self.replicate_depth {
                    z.clamp(0, d as isize - 1) as usize
                } else if z < 0 || z >= d as isize {
                    return;
                } else {
                    z as usize
                };
                for y in 0..h {
                    let src = ((b * d + z) * h + y) * w * c;
                    let at = ((y + ph) * wp + pw) * c;
                    put(&mut dst[at..at + w * c], &x.data[src..src + w * c]);
                }
            });
    }

    /// The blocks of output rows `first..first + count` (up to [`MR`](super::matmul::MR)
    /// voxels of one output line each): `(first row, rows, offset of the first voxel's first
    /// tap in the padded input of shape `padded`)`.
    fn blocks(
        &self,
        padded: [usize; 5],
        out_dims: [usize; 5],
        first: usize,
        count: usize,
    ) -> Vec<(usize, usize, usize)> {
        let [_, dp, hp, wp, c] = padded;
        let [_, od, oh, ow, _] = out_dims;
        let [sd, sh, sw] = self.stride;
        let mr = super::matmul::MR;
        // A line of 64 voxels in 12-row tiles is 5 x 12 + 4, its last (8-row) tile half
        // empty; in 8-row tiles, none is. Lines that are a whole number of 8-row tiles but not
        // of 12-row ones run in 8-row tiles (the stem on 64 x 128 x 128: 30.3 -> 29.4 ms).
        let step = if !ow.is_multiple_of(mr) && ow.is_multiple_of(8) {
            8
        } else {
            mr
        };
        let mut blocks = Vec::with_capacity(count.div_ceil(step) + 1);
        let mut r = first;
        while r < first + count {
            let ox = r % ow;
            let line = r / ow;
            let (oy, oz, b) = (line % oh, (line / oh) % od, line / (oh * od));
            let rows = (ow - ox).min(first + count - r).min(step);
            blocks.push((r, rows, (((b * dp + oz * sd) * hp + oy * sh) * wp + ox * sw) * c));
            r += rows;
        }
        blocks
    }

    /// [`implicit`](Self::implicit) for few input channels: per block of output voxels and
    /// panel, one product over every (depth, height) tap's row of `kw * C` values, the
    /// accumulators kept in registers throughout (the f32 kernel only).
    ///
    /// # Safety
    /// As [`implicit`](Self::implicit), `xp` being [`pad`](Self::pad)'s copy of this
    /// convolution's input.
    unsafe fn implicit_runs(
        &self,
        xp: &Act,
        out_dims: [usize; 5],
        first: usize,
        count: usize,
        panels: Range<usize>,
        out: *mut f32,
    ) {
        let [_, _, hp, wp, c] = xp.dims;
        let oc = out_dims[4];
        let [kd, kh, kw] = self.kernel;
        let sw = self.stride[2];
        let run = kw * c;
        // (offset in the padded input from a voxel's first tap, first kernel row) per
        // (depth, height) tap.
        let runs: Vec<(usize, usize)> = (0..kd)
            .flat_map(|t| (0..kh).map(move |i| ((t * hp + i) * wp * c, (t * kh + i) * run)))
            .collect();
        let reach = runs.last().map_or(0, |&(o, _)| o) + (super::matmul::MR - 1) * sw * c + run;
        for (r, rows, at) in self.blocks(xp.dims, out_dims, first, count) {
            debug_assert!(
                at + reach <= xp.data.len(),
                "{}: the implicit product would read past the padded input",
                self.name
            );
            for j in panels.clone() {
                // SAFETY: as in `implicit`: the padded extents cover the kernel at every output
                // voxel (`output_dims`), rows past a line's end read the slack `pad` appends
                // (asserted above in debug builds); the kernel rows of every run lie in
                // K = kd * kh * kw * C; C: rows r..r + rows of the output, this item's panels.
                unsafe {
                    super::matmul::accumulate_runs(
                        xp.data.as_ptr().add(at),
                        sw * c,
                        rows,
                        &self.weight,
                        &runs,
                        run,
                        j,
                        out.add(r * oc),
                        oc,
                    )
                };
            }
        }
    }

    /// Output rows `first..first + count`, columns of `panels`, `+=` the convolution of the
    /// padded input (of shape `padded`, `len` values with the slack): per block of up to MR
    /// voxels of one output line and per (depth, height) tap, one product of the `kw * C`
    /// values the block's voxels see in a row of the padded input:
    /// `product(at, lda, rows, ks, j, c)` adds to `rows` rows of `c` (`out_channels` apart),
    /// panel `j`, the padded input's rows from value `at`, `lda` apart, times the kernel's
    /// rows `ks`.
    ///
    /// # Safety
    /// `out` must be the output (rows of `out_channels`), this call alone touching those rows
    /// and columns; `padded` and `len` must describe [`pad`](Self::pad)'s (or
    /// [`pad_bf16`](Self::pad_bf16)'s) copy of this convolution's input that `product` reads.
    #[allow(clippy::too_many_arguments)]
    unsafe fn implicit(
        &self,
        padded: [usize; 5],
        len: usize,
        out_dims: [usize; 5],
        first: usize,
        count: usize,
        panels: Range<usize>,
        out: *mut f32,
        product: impl Fn(usize, usize, usize, Range<usize>, usize, *mut f32),
    ) {
        let [_, _, hp, wp, c] = padded;
        let oc = out_dims[4];
        let [_, kh, kw] = self.kernel;
        let sw = self.stride[2];
        let run = kw * c;
        // Per panel and tap, every block of the item: the tap's slice of the panel (kw * C
        // rows of 32) stays in L1 while the blocks stream past it.
        let blocks = self.blocks(padded, out_dims, first, count);
        for j in panels {
            for t in 0..self.kernel[0] {
                for i in 0..kh {
                    let tap = (t * hp + i) * wp * c;
                    for &(r, rows, at) in &blocks {
                        // The farthest value the register tile reads: MR rows sw * c apart,
                        // `run` values each, from the block's first voxel at this tap.
                        debug_assert!(
                            at + tap + (super::matmul::MR - 1) * sw * c + run <= len,
                            "{}: the implicit product would read past the padded input",
                            self.name
                        );
                        // Bounds: `output_dims` checked that the padded extents cover the kernel
                        // at every output voxel, so each block's first row lies in the padded
                        // input; rows past the line's end that the tile reads (results never
                        // stored) lie in the slack the padding appends (asserted above in
                        // debug builds). The kernel rows (t * kh + i) * run .. + run lie in
                        // K = taps * c, c = in_channels (checked). C as the caller says:
                        // `out.add(r * oc)` stays within the output's rows.
                        product(
                            at + tap,
                            sw * c,
                            rows,
                            (t * kh + i) * run..(t * kh + i + 1) * run,
                            j,
                            // SAFETY: r < first + count <= the output's rows.
                            unsafe { out.add(r * oc) },
                        );
                    }
                }
            }
        }
    }

    /// The patches of output voxels `first..first + count` (in `[n, d, h, w]` order), one row
    /// of `k` values each, zeros where the kernel reaches into the padding.
    fn gather(&self, x: View<'_>, out_dims: [usize; 5], first: usize, count: usize, k: usize, patches: &mut Vec<f32>) {
        let [_, d, h, w, c] = x.dims;
        let [_, od, oh, ow, _] = out_dims;
        let [_, kh, kw] = self.kernel;
        let [sd, sh, sw] = self.stride;
        let [pd, ph, pw] = self.padding;
        let [dd, dh, dw] = self.dilation;
        let run = kw * c;
        if patches.len() < count * k {
            patches.resize(count * k, 0.0);
        }
        // Every value is written: copied from the volume, or zero where the kernel reaches
        // into the padding (the buffer is reused between tiles).
        for (r, patch) in patches[..count * k].chunks_exact_mut(k).enumerate() {
            let mut p = first + r;
            let ox = p % ow;
            p /= ow;
            let oy = p % oh;
            p /= oh;
            let oz = p % od;
            let b = p / od;
            let x0 = (ox * sw) as isize - pw as isize;
            // The width taps that land inside the volume (adjacent taps: dilation 1).
            let j_lo = ((-x0).max(0) as usize).min(kw);
            let j_hi = ((w as isize - x0).max(0) as usize).clamp(j_lo, kw);
            for (t, depth_taps) in patch.chunks_exact_mut(kh * run).enumerate() {
                let z = (oz * sd + t * dd) as isize - pd as isize;
                let z = if self.replicate_depth {
                    z.clamp(0, d as isize - 1)
                } else if z < 0 || z >= d as isize {
                    depth_taps.fill(0.0);
                    continue;
                } else {
                    z
                } as usize;
                for (i, dst) in depth_taps.chunks_exact_mut(run).enumerate() {
                    let y = (oy * sh + i * dh) as isize - ph as isize;
                    if y < 0 || y >= h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let line = ((b * d + z) * h + y as usize) * w;
                    if dw != 1 {
                        for (j, tap) in dst.chunks_exact_mut(c).enumerate() {
                            let xj = x0 + (j * dw) as isize;
                            if xj < 0 || xj >= w as isize {
                                tap.fill(0.0);
                            } else {
                                let src = (line + xj as usize) * c;
                                tap.copy_from_slice(&x.data[src..src + c]);
                            }
                        }
                        continue;
                    }
                    if j_lo == j_hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = (line as isize + x0 + j_lo as isize) as usize * c;
                    let len = (j_hi - j_lo) * c;
                    dst[..j_lo * c].fill(0.0);
                    copy_run(&mut dst[j_lo * c..j_hi * c], &x.data[src..src + len]);
                    dst[j_hi * c..].fill(0.0);
                }
            }
        }
    }
}

/// `max(v, 0)` that keeps NaN, as PyTorch's and Burn's ReLU do (`f32::max` would turn NaN
/// into 0 and hide a broken input).
#[inline]
fn relu_keeping_nan(v: f32) -> f32 {
    if v < 0.0 { 0.0 } else { v }
}

/// `max(m, x)` that propagates NaN from either side, as PyTorch's max pool does.
#[inline]
fn max_keeping_nan(m: f32, x: f32) -> f32 {
    if x > m || x.is_nan() { x } else { m }
}

/// `dst.copy_from_slice(src)`, without a call to `memcpy` for the short runs of the stem
/// (7 values for a 1-channel 7x7 kernel row), where the call costs more than the copy.
#[inline]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match dst.len().min(src.len()) {
                $($n => dst[..$n].copy_from_slice(&src[..$n]),)*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

impl FrozenBlock {
    /// `block` (named `name`, e.g. `layer1.0`) frozen; the caller has checked it
    /// ([`Block::check`]).
    fn new(name: &str, block: &Block, kernel: Kernel, precision: Precision) -> Result<Self> {
        let convs = block
            .main_branch()
            .into_iter()
            .map(|(conv, bn, conv_name, _)| {
                FrozenConv::new(&format!("{name}.{conv_name}"), conv, bn, kernel, precision)
            })
            .collect::<Result<Vec<_>>>()?;
        let shortcut = match (block.downsample(), block.zero_pad()) {
            (Some(ds), _) => FrozenShortcut::Projection(FrozenConv::new(
                &format!("{name}.downsample.0"),
                &ds.conv,
                &ds.bn,
                kernel,
                precision,
            )?),
            (None, Some(zp)) => FrozenShortcut::ZeroPad(*zp),
            (None, None) => FrozenShortcut::Identity,
        };
        Ok(Self {
            name: name.to_string(),
            convs,
            shortcut,
        })
    }

    /// The block; `x`'s buffer and the block's intermediates go back to `buffers`.
    ///
    /// # Errors
    /// As [`FrozenConv::forward`].
    fn forward(&self, x: Act, buffers: &Buffers) -> Result<Act> {
        // Every block kind has at least two convolutions; the first reads `x` before the
        // shortcut consumes it.
        let (Some((first, middle)), Some(last)) = (self.convs.split_first(), self.convs.last()) else {
            return Err(Error::InvalidNetwork {
                layer: self.name.clone(),
                what: "a block without convolutions".into(),
            });
        };
        if self.convs.len() < 2 {
            return Err(Error::InvalidNetwork {
                layer: self.name.clone(),
                what: "a block with a single convolution".into(),
            });
        }
        let mut y = first.forward(x.view(), None, true, buffers)?;
        for conv in &middle[..middle.len() - 1] {
            let next = conv.forward(y.view(), None, true, buffers)?;
            buffers.give(std::mem::replace(&mut y, next).data);
        }
        let identity = self.shortcut.forward(x, buffers, &self.name)?;
        let out = last.forward(y.view(), Some(identity.view()), true, buffers)?;
        buffers.give(y.data);
        buffers.give(identity.data);
        Ok(out)
    }
}

impl Pool {
    /// The max pool, one axis at a time (the maximum over a box is the maximum of maxima
    /// over its rows), padding taking no part and NaN propagating, as in PyTorch.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] where an axis, padded, is shorter than the window.
    fn forward(&self, x: Act, buffers: &Buffers) -> Result<Act> {
        let [n, d, h, w, c] = x.dims;
        // Every axis, padded, covers the window: `along` then never reads outside a line.
        let [_, _, od, oh, ow] = self.0.output_dims([n, c, d, h, w], "maxpool")?;
        let x = self.along(x, 3, ow, buffers);
        let x = self.along(x, 2, oh, buffers);
        Ok(self.along(x, 1, od, buffers))
    }

    /// The pool along one axis of `[n, d, h, w, c]` (1 = depth, 2 = height, 3 = width), to
    /// `out_len` values.
    fn along(&self, x: Act, axis: usize, out_len: usize, buffers: &Buffers) -> Act {
        let pool = &self.0;
        let window = (
            pool.kernel_size[axis - 1],
            pool.stride[axis - 1],
            pool.padding[axis - 1],
        );
        if window.0 == 1 && window.1 == 1 {
            return x;
        }
        let mut dims = x.dims;
        dims[axis] = out_len;
        // Every value is overwritten.
        let mut out = buffers.take(dims.iter().product());
        max_pool_along(&x.data, x.dims, axis, window, &mut out);
        buffers.give(x.data);
        Act { data: out, dims }
    }
}

/// The max pool of channels-last `x` (`dims` = `[n, d, h, w, c]`) along one axis (1 = depth, 2
/// = height, 3 = width) with window `(kernel, stride, padding)`, into `out` (every value
/// written; its length fixes the output extent): padding takes no part, NaN propagates (the
/// maximum over a box is the maximum of the maxima over its rows). The caller checks that
/// the padded axis covers the window. Shared with the flex op's forward.
pub(crate) fn max_pool_along(
    x: &[f32],
    dims: [usize; 5],
    axis: usize,
    (k, s, p): (usize, usize, usize),
    out: &mut [f32],
) {
    if out.is_empty() {
        return;
    }
    let len = dims[axis];
    // Blocks: everything before the axis; inner: everything after it.
    let inner: usize = dims[axis + 1..].iter().product();
    if len == 0 || inner == 0 {
        // Only padding in every window (an empty axis padded to the window): no value.
        out.fill(f32::NEG_INFINITY);
        return;
    }
    let out_len = out.len() / (dims[..axis].iter().product::<usize>() * inner).max(1);
    out.par_chunks_mut(out_len * inner)
        .zip(x.par_chunks(len * inner))
        .for_each(|(dst, src)| {
            for (o, row) in dst.chunks_exact_mut(inner).enumerate() {
                let lo = (o * s).saturating_sub(p);
                let hi = (o * s + k).saturating_sub(p).min(len);
                row.fill(f32::NEG_INFINITY);
                for i in lo..hi {
                    let line = &src[i * inner..(i + 1) * inner];
                    row.iter_mut().zip(line).for_each(|(v, x)| *v = max_keeping_nan(*v, *x));
                }
            }
        });
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
    /// convolution but the pointwise ones (the stem and the 3x3x3 ones of the presets) rounds
    /// its inputs, activations and folded weights, to bf16 and accumulates in f32;
    /// activations between layers, pointwise convolutions, residuals and the head stay f32.
    /// 1.4 to 1.6 times the speed of the f32 network on the benchmarks' large input, with
    /// logits within about 2e-3 of it (relative to their largest magnitude;
    /// `tests/it/bf16.rs` states the measured error and its tolerance).
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a CPU without AVX512_BF16 (use [`freeze`](Self::freeze));
    /// otherwise as [`freeze`](Self::freeze).
    pub fn freeze_bf16(&self) -> Result<FrozenResNet3d> {
        if !super::bf16::available() || Kernel::detect() != Kernel::Avx512 {
            return Err(Error::Unsupported {
                what: "bf16 inference needs a CPU with AVX512_BF16 (vdpbf16ps), which this one lacks: use freeze()"
                    .into(),
            });
        }
        self.freeze_with(Kernel::Avx512, Precision::Bf16)
    }

    /// [`freeze`](Self::freeze) with the portable matrix product (the `gemm` crate) even
    /// where AVX-512 is available: for tests and comparisons.
    #[doc(hidden)]
    pub fn freeze_portable(&self) -> Result<FrozenResNet3d> {
        self.freeze_with(Kernel::Portable, Precision::F32)
    }

    fn freeze_with(&self, kernel: Kernel, precision: Precision) -> Result<FrozenResNet3d> {
        self.validate()?;
        let stage = |s: usize, blocks: &[Block]| {
            blocks
                .iter()
                .enumerate()
                .map(|(b, block)| FrozenBlock::new(&format!("layer{}.{b}", s + 1), block, kernel, precision))
                .collect::<Result<Vec<_>>>()
        };
        Ok(FrozenResNet3d {
            stem: self.frozen_stem(kernel, precision)?,
            maxpool: pool_of(&self.maxpool),
            stages: [
                stage(0, &self.layer1)?,
                stage(1, &self.layer2)?,
                stage(2, &self.layer3)?,
                stage(3, &self.layer4)?,
            ],
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
        self.validate()?;
        let kernel = Kernel::detect();
        let stem = self.frozen_stem(kernel, Precision::F32)?;
        let ResNet3d {
            conv1,
            bn1,
            stem_temporal,
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            fc,
        } = self;
        drop((conv1, bn1, stem_temporal));
        let mut stages: [Vec<FrozenBlock>; 4] = Default::default();
        for (s, (frozen, blocks)) in stages.iter_mut().zip([layer1, layer2, layer3, layer4]).enumerate() {
            for (b, block) in blocks.into_iter().enumerate() {
                frozen.push(FrozenBlock::new(
                    &format!("layer{}.{b}", s + 1),
                    &block,
                    kernel,
                    Precision::F32,
                )?);
            }
        }
        Ok(FrozenResNet3d {
            stem,
            maxpool: pool_of(&maxpool),
            stages,
            fc: head_of(&fc)?,
            buffers: Buffers::default(),
        })
    }
}

impl ResNet3d {
    /// `conv1` with `bn1`, then the factorised stem's depth convolution if any.
    fn frozen_stem(&self, kernel: Kernel, precision: Precision) -> Result<Vec<FrozenConv>> {
        let mut stem = vec![FrozenConv::new("conv1", &self.conv1, &self.bn1, kernel, precision)?];
        if let Some(t) = &self.stem_temporal {
            stem.push(FrozenConv::new(
                "stem_temporal.conv",
                &t.conv,
                &t.bn,
                kernel,
                precision,
            )?);
        }
        Ok(stem)
    }
}

fn pool_of(pool: &Option<MaxPool3d>) -> Option<Pool> {
    pool.clone().map(Pool)
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

impl FrozenResNet3d {
    /// The default of [`set_buffer_budget`](Self::set_buffer_budget): 256 MiB, enough to keep
    /// every activation buffer of a ResNet3d-50 on a `1x1x64x128x128` volume between calls.
    pub const DEFAULT_BUFFER_BUDGET: usize = 256 << 20;

    /// Input channels the network takes.
    pub fn in_channels(&self) -> usize {
        self.stem.first().map_or(0, |c| c.in_channels)
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
    /// activations that call needs besides; concurrent calls each hold their own, and share
    /// the kept buffers.
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
        if c == 1 {
            // One channel: both layouts are the same.
            return Ok(Act {
                data: values(x)?,
                dims: [n, d, h, w, c],
            });
        }
        channels_last_act(x)
    }

    /// Class logits, or the pooled features without a head: what [`ResNet3d::forward`]
    /// returns, on the input's device.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an input that is not `[N, in_channels, D, H, W]` with
    /// every extent at least 1.
    pub fn forward(&self, x: Tensor<5>) -> Result<Tensor<2>> {
        let device = x.device();
        let mut act = self.stem_forward(self.input(x)?)?;
        for stage in &self.stages {
            for block in stage {
                act = block.forward(act, &self.buffers)?;
            }
        }
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
        let to_tensor = |act: &Act| {
            let [n, d, h, w, c] = act.dims;
            Tensor::from_data(
                TensorData::new(to_channels_first(&act.data, act.dims), [n, c, d, h, w]),
                &device,
            )
        };
        let buffers = &self.buffers;
        let input = self.input(x)?;
        let stem = self.run_stem(input)?;
        // Each map is copied out once, as a tensor, and then moved on: no copies of the
        // activations themselves.
        let stem_map = to_tensor(&stem);
        let mut act = match &self.maxpool {
            Some(pool) => pool.forward(stem, buffers)?,
            None => stem,
        };
        let mut maps = Vec::with_capacity(4);
        for stage in &self.stages {
            for block in stage {
                act = block.forward(act, buffers)?;
            }
            maps.push(to_tensor(&act));
        }
        buffers.give(act.data);
        let [layer1, layer2, layer3, layer4]: [Tensor<5>; 4] = maps.try_into().map_err(|_| Error::InvalidInput {
            dims: Vec::new(),
            what: "the network has four stages".into(),
        })?;
        Ok(Features {
            stem: stem_map,
            layer1,
            layer2,
            layer3,
            layer4,
        })
    }

    /// The stem's convolutions (each with its BatchNorm and ReLU) on `x`, whose buffer goes
    /// back to the pool.
    fn run_stem(&self, mut x: Act) -> Result<Act> {
        for conv in &self.stem {
            let y = conv.forward(x.view(), None, true, &self.buffers)?;
            self.buffers.give(std::mem::replace(&mut x, y).data);
        }
        Ok(x)
    }

    fn stem_forward(&self, x: Act) -> Result<Act> {
        let y = self.run_stem(x)?;
        match &self.maxpool {
            Some(pool) => pool.forward(y, &self.buffers),
            None => Ok(y),
        }
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

/// `[n, c, d, h, w]` -> `[n, d, h, w, c]`.
fn to_channels_last(x: &[f32], [n, c, d, h, w]: [usize; 5]) -> Vec<f32> {
    let voxels = d * h * w;
    let mut out = vec![0.0f32; x.len()];
    for b in 0..n {
        let src = &x[b * c * voxels..(b + 1) * c * voxels];
        let dst = &mut out[b * c * voxels..(b + 1) * c * voxels];
        for (v, px) in dst.chunks_exact_mut(c).enumerate() {
            for (ch, value) in px.iter_mut().enumerate() {
                *value = src[ch * voxels + v];
            }
        }
    }
    out
}

/// `[n, d, h, w, c]` -> `[n, c, d, h, w]`.
fn to_channels_first(x: &[f32], [n, d, h, w, c]: [usize; 5]) -> Vec<f32> {
    let voxels = d * h * w;
    let mut out = vec![0.0f32; x.len()];
    for b in 0..n {
        let src = &x[b * c * voxels..(b + 1) * c * voxels];
        let dst = &mut out[b * c * voxels..(b + 1) * c * voxels];
        for (v, px) in src.chunks_exact(c).enumerate() {
            for (ch, value) in px.iter().enumerate() {
                dst[ch * voxels + v] = *value;
            }
        }
    }
    out
}

/// One frozen layer on a channels-last input, for `benches/forward.rs`: what a layer costs
/// inside [`FrozenResNet3d`], without the layout changes at its ends.
#[doc(hidden)]
#[derive(Debug)]
pub struct LayerBench {
    input: Act,
    layer: BenchLayer,
    buffers: Buffers,
}

#[derive(Debug)]
// Two values per benchmark: size does not matter.
#[allow(clippy::large_enum_variant)]
enum BenchLayer {
    Conv(FrozenConv),
    Pool(Pool),
}

impl LayerBench {
    /// `conv` with an identity BatchNorm, on `x` (`[N, C, D, H, W]`); with the `gemm`
    /// crate's product if `portable`, else the fastest this CPU runs.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for a convolution whose fields do not fit together;
    /// [`Error::InvalidInput`] if `x` does not fit the convolution (channels, or smaller than
    /// the kernel), or cannot be read as `f32`.
    pub fn conv(conv: &Conv, x: Tensor<5>, portable: bool) -> Result<Self> {
        let kernel = if portable { Kernel::Portable } else { Kernel::detect() };
        let bn = burn::nn::BatchNormConfig::new(conv.out_channels()).init(&x.device());
        crate::block::check_conv_bn(conv, &bn, conv.in_channels(), "conv", "bn")?;
        let layer = FrozenConv::new("conv", conv, &bn, kernel, Precision::F32)?;
        let input = channels_last_act(x)?;
        layer.output_dims(input.dims)?;
        Ok(Self {
            layer: BenchLayer::Conv(layer),
            input,
            buffers: Buffers::default(),
        })
    }

    /// [`conv`](Self::conv) with the fastest product, as a direct (implicit) product even
    /// where the Winograd transform applies: what the transform gains.
    ///
    /// # Errors
    /// As [`conv`](Self::conv).
    pub fn conv_direct(conv: &Conv, x: Tensor<5>) -> Result<Self> {
        let mut bench = Self::conv(conv, x, false)?;
        if let BenchLayer::Conv(layer) = &mut bench.layer {
            layer.winograd = None;
        }
        Ok(bench)
    }

    /// `pool` on `x` (`[N, C, D, H, W]`).
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for a pool whose fields do not fit together;
    /// [`Error::InvalidInput`] if `x` is smaller than the window or cannot be read as `f32`.
    pub fn pool(pool: &MaxPool3d, x: Tensor<5>) -> Result<Self> {
        pool.check("maxpool")?;
        pool.output_dims(x.dims(), "maxpool")?;
        Ok(Self {
            layer: BenchLayer::Pool(Pool(pool.clone())),
            input: channels_last_act(x)?,
            buffers: Buffers::default(),
        })
    }

    /// Runs the layer; returns the output's length.
    ///
    /// # Errors
    /// None in practice: the input was checked against the layer when the bench was built.
    pub fn run(&self) -> Result<usize> {
        let out = match &self.layer {
            BenchLayer::Conv(conv) => conv.forward(self.input.view(), None, true, &self.buffers)?,
            BenchLayer::Pool(pool) => pool.forward(self.input.clone(), &self.buffers)?,
        };
        let len = out.data.len();
        self.buffers.give(out.data);
        Ok(len)
    }
}

fn channels_last_act(x: Tensor<5>) -> Result<Act> {
    let dims = x.dims();
    let [n, c, d, h, w] = dims;
    Ok(Act {
        data: to_channels_last(&values(x)?, dims),
        dims: [n, d, h, w, c],
    })
}
