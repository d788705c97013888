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
//!   while it is still in cache;
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

use crate::block::{Block, Downsample};
use crate::config::DepthPadding;
use crate::conv::Conv;
use crate::error::{Error, Result};
use crate::matmul::{Kernel, NR, PackedB, matmul};
use crate::model::{Features, ResNet3d};
use crate::pool::MaxPool3d;

/// A [`ResNet3d`] frozen for inference on the CPU: BatchNorm folded into the convolutions,
/// activations channels-last, convolutions as tiled matrix products. Build it with
/// [`ResNet3d::freeze`].
///
/// Inputs and outputs are Burn tensors on any device; the work runs on the CPU's threads
/// (rayon's global pool).
#[derive(Debug, Clone)]
pub struct FrozenResNet3d {
    stem: FrozenConv,
    maxpool: Option<Pool>,
    stages: [Vec<FrozenBlock>; 4],
    /// `[d_input, classes]` row-major, and the bias.
    fc: Option<(Vec<f32>, Vec<f32>)>,
    buffers: Buffers,
}

#[derive(Debug, Clone, Copy)]
struct Pool {
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
}

#[derive(Debug, Clone)]
enum FrozenBlock {
    Basic {
        conv1: FrozenConv,
        conv2: FrozenConv,
        downsample: Option<FrozenConv>,
    },
    Bottleneck {
        conv1: FrozenConv,
        conv2: FrozenConv,
        conv3: FrozenConv,
        downsample: Option<FrozenConv>,
    },
}

/// A convolution with its BatchNorm folded in.
#[derive(Debug, Clone)]
struct FrozenConv {
    /// `[K, out]` row-major, `K` ordered (depth tap, height tap, width tap, input channel):
    /// the order of a gathered patch; packed for `kernel_impl`.
    weight: PackedB,
    kernel_impl: Kernel,
    bias: Vec<f32>,
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    replicate_depth: bool,
}

/// Output voxels per work item.
const TILE_ROWS: usize = 16 * crate::matmul::MR;

thread_local! {
    /// Per thread: the gathered patches of a tile, and the matrix product's packed block.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The output's base pointer, shared by work items that write disjoint parts of it.
struct SendPtr(*mut f32);
// SAFETY: every work item writes only its own rows and columns.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// Activation buffers kept between layers and between calls, so that their pages are not
/// faulted in (and zeroed by the kernel) again for every layer.
#[derive(Default)]
struct Buffers(Mutex<Vec<Vec<f32>>>);

impl Buffers {
    /// At most this many buffers are kept.
    const KEEP: usize = 16;

    /// `len` values, whatever a reused buffer held: the caller writes all of them.
    fn take(&self, len: usize) -> Vec<f32> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // The smallest buffer that fits, and not more than twice too large.
        let best = (0..kept.len())
            .filter(|&i| kept[i].capacity() >= len && kept[i].capacity() <= 2 * len.max(1024))
            .min_by_key(|&i| kept[i].capacity());
        match best {
            Some(i) => {
                let mut buffer = kept.swap_remove(i);
                drop(kept);
                buffer.truncate(len);
                buffer.resize(len, 0.0);
                buffer
            }
            None => vec![0.0; len],
        }
    }

    /// Keeps `buffer` for a later [`take`](Self::take).
    fn give(&self, buffer: Vec<f32>) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.push(buffer);
        if kept.len() > Self::KEEP {
            // Drop the smallest: the large ones are the ones worth keeping.
            if let Some(i) = (0..kept.len()).min_by_key(|&i| kept[i].capacity()) {
                kept.swap_remove(i);
            }
        }
    }
}

impl Clone for Buffers {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.0.lock().map(|k| k.len()).unwrap_or(0);
        write!(f, "Buffers({kept} kept)")
    }
}

/// Activations channels-last: `[n, d, h, w, c]`.
#[derive(Debug, Clone)]
struct Act {
    data: Vec<f32>,
    dims: [usize; 5],
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
    fn new(conv: &Conv, bn: &BatchNorm, kernel_impl: Kernel) -> Result<Self> {
        let [o, i, kd, kh, kw] = conv.weight.dims();
        let w = values(conv.weight.val())?;
        let gamma = values(bn.gamma.val())?;
        let beta = values(bn.beta.val())?;
        let mean = values(bn.running_mean.value())?;
        let var = values(bn.running_var.value())?;
        let eps = bn.epsilon as f32;
        let taps = kd * kh * kw;
        let k = taps * i;
        let scale: Vec<f32> = (0..o).map(|oc| gamma[oc] / (var[oc] + eps).sqrt()).collect();
        let bias: Vec<f32> = (0..o).map(|oc| beta[oc] - mean[oc] * scale[oc]).collect();
        // Row p = (tap, input channel) of the [K, out] matrix, written straight into the
        // kernel's layout: no intermediate copy of the weights.
        let weight = PackedB::from_fn(k, o, kernel_impl, |p, oc| {
            let (tap, ic) = (p / i, p % i);
            w[(oc * i + ic) * taps + tap] * scale[oc]
        });
        drop(w);
        Ok(Self {
            weight,
            kernel_impl,
            bias,
            in_channels: i,
            out_channels: o,
            kernel: [kd, kh, kw],
            stride: conv.stride,
            padding: conv.padding,
            replicate_depth: conv.depth_padding == DepthPadding::Replicate,
        })
    }

    fn output_dims(&self, [n, d, h, w, _]: [usize; 5]) -> [usize; 5] {
        let out = |axis: usize, size: usize| {
            (size + 2 * self.padding[axis]).saturating_sub(self.kernel[axis]) / self.stride[axis] + 1
        };
        [n, out(0, d), out(1, h), out(2, w), self.out_channels]
    }

    /// The convolution of `x`, plus `residual` if given, then ReLU if `relu`.
    fn forward(&self, x: &Act, residual: Option<&Act>, relu: bool, buffers: &Buffers) -> Act {
        let out_dims = self.output_dims(x.dims);
        let [n, od, oh, ow, oc] = out_dims;
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
        let mr = crate::matmul::MR;
        let full_blocks = ow * 8 >= ow.div_ceil(mr) * mr * 7;
        let padded = (!pointwise && self.kernel_impl == Kernel::Avx512 && self.in_channels >= 16 && full_blocks)
            .then(|| self.pad(x, buffers));

        // Work items: tiles of output voxels, each split into groups of column panels when
        // there are too few tiles to keep every thread busy.
        let threads = rayon::current_num_threads().max(1);
        let tile = TILE_ROWS;
        let tiles = rows.div_ceil(tile);
        let panels = self.weight.panel_count();
        let groups = (2 * threads).div_ceil(tiles.max(1)).clamp(1, panels.max(1));
        let per_group = panels.div_ceil(groups);
        let items: Vec<(usize, Range<usize>)> = (0..tiles)
            .flat_map(|t| {
                (0..groups)
                    .map(move |g| (t, g * per_group..((g + 1) * per_group).min(panels)))
                    .filter(|(_, p)| !p.is_empty())
            })
            .collect();
        let out_ptr = SendPtr(out.as_mut_ptr());
        items.into_par_iter().for_each(|(t, panel_range)| {
            let out_ptr = &out_ptr;
            let first = t * tile;
            let count = tile.min(rows - first);
            let (c0, c1) = (panel_range.start * NR, (panel_range.end * NR).min(oc));
            // SAFETY: this item alone writes rows first..first + count, columns c0..c1.
            for r in 0..count {
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.bias[c0..].as_ptr(),
                        out_ptr.0.add((first + r) * oc + c0),
                        c1 - c0,
                    )
                };
            }
            let row =
                |r: usize| unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((first + r) * oc + c0), c1 - c0) };
            for r in 0..count {
                let dst = row(r);
                if let Some(res) = residual {
                    let src = &res.data[(first + r) * oc + c0..(first + r) * oc + c1];
                    dst.iter_mut().zip(src).for_each(|(v, s)| *v += s);
                }
            }
            if let Some(xp) = &padded {
                // SAFETY: as for `matmul` below; `xp` has the slack `pad` promises.
                unsafe { self.implicit(xp, out_dims, first, count, panel_range.clone(), out_ptr.0) };
            } else {
                SCRATCH.with_borrow_mut(|(patches, packed)| {
                    let lhs = if pointwise {
                        x.data[first * k..(first + count) * k].as_ptr()
                    } else {
                        self.gather(x, out_dims, first, count, k, patches);
                        patches.as_ptr()
                    };
                    // SAFETY: lhs holds count rows of k values, the output count rows of oc from
                    // `first`, and this item owns their columns c0..c1.
                    unsafe {
                        matmul(
                            self.kernel_impl,
                            lhs,
                            k,
                            count,
                            &self.weight,
                            panel_range.clone(),
                            out_ptr.0.add(first * oc),
                            oc,
                            packed,
                        );
                    }
                });
            }
            if relu {
                for r in 0..count {
                    row(r).iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
        });
        if let Some(xp) = padded {
            buffers.give(xp.data);
        }
        Act {
            data: out,
            dims: out_dims,
        }
    }

    /// `x` padded by this convolution's padding (zeros, or edge slices in depth for
    /// Replicate), as `[n, d', h', w', c]`, followed by zeros enough for the register tile
    /// to read a whole block past the last voxel.
    fn pad(&self, x: &Act, buffers: &Buffers) -> Act {
        let [n, d, h, w, c] = x.dims;
        let [pd, ph, pw] = self.padding;
        let (dp, hp, wp) = (d + 2 * pd, h + 2 * ph, w + 2 * pw);
        let slack = (crate::matmul::MR * self.stride[2] + self.kernel[2]) * c;
        let mut data = buffers.take(n * dp * hp * wp * c + slack);
        data.fill(0.0);
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
                    dst[at..at + w * c].copy_from_slice(&x.data[src..src + w * c]);
                }
            });
        Act {
            data,
            dims: [n, dp, hp, wp, c],
        }
    }

    /// Output rows `first..first + count`, columns of `panels`, `+=` the convolution of the
    /// padded input `xp`: per block of up to MR voxels of one output line and per (depth,
    /// height) tap, one product of the `kw * C` values the block's voxels see in a row of `xp`.
    ///
    /// # Safety
    /// `out` must be the output (rows of `out_channels`), this call alone touching those rows
    /// and columns; `xp` must come from [`pad`](Self::pad) for this convolution's input.
    unsafe fn implicit(
        &self,
        xp: &Act,
        out_dims: [usize; 5],
        first: usize,
        count: usize,
        panels: Range<usize>,
        out: *mut f32,
    ) {
        let [_, dp, hp, wp, c] = xp.dims;
        let [_, od, oh, ow, oc] = out_dims;
        let [_, kh, kw] = self.kernel;
        let [sd, sh, sw] = self.stride;
        let run = kw * c;
        // Per panel and tap, every block of the item: the tap's slice of the panel (kw * C
        // rows of 32) stays in L1 while the blocks stream past it.
        let mut blocks = Vec::with_capacity(count.div_ceil(crate::matmul::MR) + 1);
        let mut r = first;
        while r < first + count {
            let ox = r % ow;
            let line = r / ow;
            let (oy, oz, b) = (line % oh, (line / oh) % od, line / (oh * od));
            let len = (ow - ox).min(first + count - r).min(crate::matmul::MR);
            blocks.push((r, len, (((b * dp + oz * sd) * hp + oy * sh) * wp + ox * sw) * c));
            r += len;
        }
        for j in panels {
            for t in 0..self.kernel[0] {
                for i in 0..kh {
                    let tap = (t * hp + i) * wp * c;
                    for &(r, len, at) in &blocks {
                        // SAFETY: the block's rows start inside xp, and the slack covers
                        // what the tile reads past the line (results never stored).
                        unsafe {
                            crate::matmul::accumulate(
                                xp.data.as_ptr().add(at + tap),
                                sw * c,
                                len,
                                &self.weight,
                                (t * kh + i) * run..(t * kh + i + 1) * run,
                                j,
                                out.add(r * oc),
                                oc,
                            );
                        }
                    }
                }
            }
        }
    }

    /// The patches of output voxels `first..first + count` (in `[n, d, h, w]` order), one row
    /// of `k` values each, zeros where the kernel reaches into the padding.
    fn gather(&self, x: &Act, out_dims: [usize; 5], first: usize, count: usize, k: usize, patches: &mut Vec<f32>) {
        let [_, d, h, w, c] = x.dims;
        let [_, od, oh, ow, _] = out_dims;
        let [_, kh, kw] = self.kernel;
        let [sd, sh, sw] = self.stride;
        let [pd, ph, pw] = self.padding;
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
            // The width taps that land inside the volume.
            let j_lo = ((-x0).max(0) as usize).min(kw);
            let j_hi = ((w as isize - x0).max(0) as usize).clamp(j_lo, kw);
            for (t, depth_taps) in patch.chunks_exact_mut(kh * run).enumerate() {
                let z = (oz * sd + t) as isize - pd as isize;
                let z = if self.replicate_depth {
                    z.clamp(0, d as isize - 1)
                } else if z < 0 || z >= d as isize {
                    depth_taps.fill(0.0);
                    continue;
                } else {
                    z
                } as usize;
                for (i, dst) in depth_taps.chunks_exact_mut(run).enumerate() {
                    let y = (oy * sh + i) as isize - ph as isize;
                    if y < 0 || y >= h as isize || j_lo == j_hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = ((((b * d + z) * h + y as usize) * w) as isize + x0 + j_lo as isize) as usize * c;
                    let len = (j_hi - j_lo) * c;
                    dst[..j_lo * c].fill(0.0);
                    copy_run(&mut dst[j_lo * c..j_hi * c], &x.data[src..src + len]);
                    dst[j_hi * c..].fill(0.0);
                }
            }
        }
    }
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
    fn new(block: &Block, kernel: Kernel) -> Result<Self> {
        let downsample = |ds: &Option<Downsample>| {
            ds.as_ref()
                .map(|ds| FrozenConv::new(&ds.conv, &ds.bn, kernel))
                .transpose()
        };
        Ok(match block {
            Block::Basic(b) => FrozenBlock::Basic {
                conv1: FrozenConv::new(&b.conv1, &b.bn1, kernel)?,
                conv2: FrozenConv::new(&b.conv2, &b.bn2, kernel)?,
                downsample: downsample(&b.downsample)?,
            },
            Block::Bottleneck(b) => FrozenBlock::Bottleneck {
                conv1: FrozenConv::new(&b.conv1, &b.bn1, kernel)?,
                conv2: FrozenConv::new(&b.conv2, &b.bn2, kernel)?,
                conv3: FrozenConv::new(&b.conv3, &b.bn3, kernel)?,
                downsample: downsample(&b.downsample)?,
            },
        })
    }

    /// The block; `x`'s buffer and the block's intermediates go back to `buffers`.
    fn forward(&self, x: Act, buffers: &Buffers) -> Act {
        let shortcut = |ds: &Option<FrozenConv>, x: Act| match ds {
            Some(ds) => {
                let identity = ds.forward(&x, None, false, buffers);
                buffers.give(x.data);
                identity
            }
            None => x,
        };
        let (y, identity, last) = match self {
            FrozenBlock::Basic {
                conv1,
                conv2,
                downsample,
            } => {
                let y = conv1.forward(&x, None, true, buffers);
                (y, shortcut(downsample, x), conv2)
            }
            FrozenBlock::Bottleneck {
                conv1,
                conv2,
                conv3,
                downsample,
            } => {
                let y1 = conv1.forward(&x, None, true, buffers);
                let y = conv2.forward(&y1, None, true, buffers);
                buffers.give(y1.data);
                (y, shortcut(downsample, x), conv3)
            }
        };
        let out = last.forward(&y, Some(&identity), true, buffers);
        buffers.give(y.data);
        buffers.give(identity.data);
        out
    }
}

impl Pool {
    /// The max pool, one axis at a time (the maximum over a box is the maximum of maxima
    /// over its rows), padding taking no part, as in PyTorch.
    fn forward(&self, x: Act, buffers: &Buffers) -> Act {
        let x = self.along(x, 3, buffers);
        let x = self.along(x, 2, buffers);
        self.along(x, 1, buffers)
    }

    /// The pool along one axis of `[n, d, h, w, c]` (1 = depth, 2 = height, 3 = width).
    fn along(&self, x: Act, axis: usize, buffers: &Buffers) -> Act {
        let (k, s, p) = (self.kernel[axis - 1], self.stride[axis - 1], self.padding[axis - 1]);
        if k == 1 && s == 1 {
            return x;
        }
        let len = x.dims[axis];
        let out_len = (len + 2 * p).saturating_sub(k) / s + 1;
        // Blocks: everything before the axis; inner: everything after it.
        let outer: usize = x.dims[..axis].iter().product();
        let inner: usize = x.dims[axis + 1..].iter().product();
        let mut dims = x.dims;
        dims[axis] = out_len;
        // Every value is overwritten below.
        let mut out = buffers.take(outer * out_len * inner);
        out.par_chunks_mut(out_len * inner)
            .zip(x.data.par_chunks(len * inner))
            .for_each(|(dst, src)| {
                for (o, row) in dst.chunks_exact_mut(inner).enumerate() {
                    let lo = (o * s).saturating_sub(p);
                    let hi = (o * s + k).saturating_sub(p).min(len);
                    row.fill(f32::NEG_INFINITY);
                    for i in lo..hi {
                        let line = &src[i * inner..(i + 1) * inner];
                        row.iter_mut().zip(line).for_each(|(v, x)| *v = v.max(*x));
                    }
                }
            });
        buffers.give(x.data);
        Act { data: out, dims }
    }
}

impl ResNet3d {
    /// This network frozen for fast inference on the CPU: BatchNorm folded into the
    /// convolutions (with its running statistics, as in eval mode), activations
    /// channels-last. See [`FrozenResNet3d`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if a parameter cannot be read back as `f32`.
    pub fn freeze(&self) -> Result<FrozenResNet3d> {
        self.freeze_with(Kernel::detect())
    }

    /// [`freeze`](Self::freeze) with the portable matrix product (the `gemm` crate) even
    /// where AVX-512 is available: for tests and comparisons.
    #[doc(hidden)]
    pub fn freeze_portable(&self) -> Result<FrozenResNet3d> {
        self.freeze_with(Kernel::Portable)
    }

    fn freeze_with(&self, kernel: Kernel) -> Result<FrozenResNet3d> {
        let stage = |blocks: &[Block]| {
            blocks
                .iter()
                .map(|b| FrozenBlock::new(b, kernel))
                .collect::<Result<Vec<_>>>()
        };
        Ok(FrozenResNet3d {
            stem: FrozenConv::new(&self.conv1, &self.bn1, kernel)?,
            maxpool: pool_of(&self.maxpool),
            stages: [
                stage(&self.layer1)?,
                stage(&self.layer2)?,
                stage(&self.layer3)?,
                stage(&self.layer4)?,
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
        let kernel = Kernel::detect();
        let ResNet3d {
            conv1,
            bn1,
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            fc,
        } = self;
        let stem = FrozenConv::new(&conv1, &bn1, kernel)?;
        drop((conv1, bn1));
        let mut stages: [Vec<FrozenBlock>; 4] = Default::default();
        for (frozen, blocks) in stages.iter_mut().zip([layer1, layer2, layer3, layer4]) {
            for block in blocks {
                frozen.push(FrozenBlock::new(&block, kernel)?);
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

fn pool_of(pool: &Option<MaxPool3d>) -> Option<Pool> {
    pool.as_ref().map(|p| Pool {
        kernel: p.kernel_size,
        stride: p.stride,
        padding: p.padding,
    })
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
    /// Input channels the network takes.
    pub fn in_channels(&self) -> usize {
        self.stem.in_channels
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
        let mut act = self.stem_forward(self.input(x)?);
        for stage in &self.stages {
            act = stage.iter().fold(act, |x, block| block.forward(x, &self.buffers));
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
        let stem = self.stem.forward(&self.input(x)?, None, true, buffers);
        // Each map is copied out once, as a tensor, and then moved on: no copies of the
        // activations themselves.
        let stem_map = to_tensor(&stem);
        let mut act = match &self.maxpool {
            Some(pool) => pool.forward(stem, buffers),
            None => stem,
        };
        let mut maps = Vec::with_capacity(4);
        for stage in &self.stages {
            act = stage.iter().fold(act, |x, block| block.forward(x, buffers));
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

    fn stem_forward(&self, x: Act) -> Act {
        let y = self.stem.forward(&x, None, true, &self.buffers);
        self.buffers.give(x.data);
        match &self.maxpool {
            Some(pool) => pool.forward(y, &self.buffers),
            None => y,
        }
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
enum BenchLayer {
    Conv(FrozenConv),
    Pool(Pool),
}

impl LayerBench {
    /// `conv` with an identity BatchNorm, on `x` (`[N, C, D, H, W]`); with the `gemm`
    /// crate's product if `portable`, else the fastest this CPU runs.
    ///
    /// # Errors
    /// If a tensor cannot be read as `f32`.
    pub fn conv(conv: &Conv, x: Tensor<5>, portable: bool) -> Result<Self> {
        let kernel = if portable { Kernel::Portable } else { Kernel::detect() };
        let channels = conv.weight.dims()[0];
        let bn = burn::nn::BatchNormConfig::new(channels).init(&x.device());
        Ok(Self {
            layer: BenchLayer::Conv(FrozenConv::new(conv, &bn, kernel)?),
            input: channels_last_act(x)?,
            buffers: Buffers::default(),
        })
    }

    /// `pool` on `x` (`[N, C, D, H, W]`).
    ///
    /// # Errors
    /// If the tensor cannot be read as `f32`.
    pub fn pool(pool: &MaxPool3d, x: Tensor<5>) -> Result<Self> {
        Ok(Self {
            layer: BenchLayer::Pool(Pool {
                kernel: pool.kernel_size,
                stride: pool.stride,
                padding: pool.padding,
            }),
            input: channels_last_act(x)?,
            buffers: Buffers::default(),
        })
    }

    /// Runs the layer; returns the output's length.
    pub fn run(&self) -> usize {
        match &self.layer {
            BenchLayer::Conv(conv) => {
                let out = conv.forward(&self.input, None, true, &self.buffers);
                let len = out.data.len();
                self.buffers.give(out.data);
                len
            }
            BenchLayer::Pool(pool) => {
                let out = pool.forward(self.input.clone(), &self.buffers);
                let len = out.data.len();
                self.buffers.give(out.data);
                len
            }
        }
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
