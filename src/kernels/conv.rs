//! [`PackedConv`]: a convolution with its kernel packed for the CPU's products, BatchNorm folded
//! in where it has one, run on channels-last activations. One engine for every forward
//! convolution of the crate: each layer of the frozen network, and the Burn operation on
//! `flex` (which packs per call).
//!
//! Every call checks its input against the layer's geometry ([`ConvGeometry::on`], the one
//! check) and then picks how to compute:
//! - 3x3x3 convolutions with stride 1, dilation 1, padding of at most 2 and up to 256 channels
//!   as Winograd products ([`winograd`](super::winograd)): F(4x4x4, 3x3x3) in f32 for a
//!   frozen layer of up to 128 channels (of the bf16 network too), F(2x2x2, 3x3x3) otherwise
//!   (in bf16 in the bf16 network), where the output has
//!   enough tiles and the input's values are finite and below `2^48` (Winograd's transforms
//!   add and subtract inputs, which turns an infinity into NaN and can overflow near
//!   `f32::MAX`; such an input runs the direct product, as PyTorch computes it);
//! - pointwise convolutions with stride 1 and no padding read the activations in place;
//! - others with 16+ channels, padding within the kernel's reach and dilation 1 read a
//!   zero-padded copy in place (implicit GEMM); few channels keep their accumulators over all
//!   of the kernel's rows;
//! - everything else (dilation, padding beyond the reach, short lines) gathers each tile's
//!   patches, which handles any padding by index.
//!
//! Bias, residual and ReLU are applied to each tile while it is in cache.
//!
//! [`ConvGeometry::on`]: crate::arch::geometry::ConvGeometry::on

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::buffers::{Act, Buffers, View};
use super::fold::{BatchNormValues, fold};
use super::gather;
use super::implicit;
use super::matmul::{Epilogue, Kernel, MR, NR, PackedB, matmul};
use super::parallel::{SendPtr, work_items};
use super::winograd::Winograd;

mod winograd_path;
use crate::arch::geometry::ConvShape;
use crate::arch::plan::{LayerSpec, PlanLayer};
use crate::error::{Error, Result};
pub(crate) use winograd_path::WINOGRAD_CHANNELS;

/// The residual a layer adds before its ReLU (the shortcut, where it ends a block).
#[derive(Debug)]
pub(crate) enum Residual<'a> {
    /// Nothing added.
    None,
    /// Added from a buffer the caller keeps.
    Read(View<'a>),
    /// Added from an activation the caller gives up: where the product adds it as it stores
    /// its tiles (pointwise and gathered f32 products: a bottleneck's last convolution), the
    /// output is written over it, one buffer instead of two in cache and memory; elsewhere
    /// it is read, then given back to the buffers.
    Onto(Act),
}

/// The precision of a layer's products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precision {
    /// f32 throughout.
    F32,
    /// bf16 inputs to the implicit and gathered products (f32 accumulation, f32 activations
    /// between layers); f32 elsewhere.
    Bf16,
}

/// Where a layer's kernel is transformed for Winograd products (if its geometry takes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WinogradUse {
    /// Never.
    Never,
    /// Outputs of at least [`WINOGRAD_TILES`] tiles: a kernel transformed once (freeze).
    Kept,
    /// Outputs of at least 64 tiles: a kernel transformed per call, where the transform's work
    /// (64 values per channel pair) is a few percent of the product's savings (152
    /// multiply-adds per channel pair and tile). The `flex` operation's.
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    PerCall,
}

/// A convolution with its kernel packed (and its BatchNorm folded in, if any).
#[derive(Debug, Clone)]
pub(crate) struct PackedConv {
    /// Names, geometry (checked when packed), and what follows (ReLU; the residual's add).
    spec: LayerSpec,
    /// `[K, out]` row-major, `K` ordered (depth tap, height tap, width tap, input channel): the
    /// order of a gathered patch; packed for the fastest kernel this CPU runs, or the portable
    /// one.
    weight: PackedB,
    /// The same kernel in bf16 pairs, for `freeze_bf16`'s products (see
    /// [`bf16`](super::bf16)); `None` in f32 layers and where that product does not apply.
    weight_bf16: Option<super::bf16::PackedBf16>,
    /// The kernel transformed for Winograd products (see [`winograd`](super::winograd)), each
    /// with the fewest output tiles (its own) for which it runs; the first that has them
    /// runs: F(4x4x4, 3x3x3), then F(2x2x2, 3x3x3).
    winograd: Vec<(Winograd, usize)>,
    /// Whether every kernel value (BatchNorm's scale folded in) is finite: only then may a
    /// product skip taps that read padding only (a NaN or infinity there makes the output NaN,
    /// as in Burn's `conv3d`). Found on first need, from the packed kernel: the training
    /// forward packs every call, and most calls never ask.
    finite: OnceLock<bool>,
    bias: Vec<f32>,
}

/// Output voxels per work item.
const TILE_ROWS: usize = 16 * MR;

thread_local! {
    /// Per thread: the gathered patches of a tile, and the matrix product's packed block.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl PlanLayer for PackedConv {
    fn spec(&self) -> &LayerSpec {
        &self.spec
    }
}

impl PackedConv {
    /// The one fold-and-pack step: `weight` (`[o, i, kd, kh, kw]`, PyTorch's layout) with the
    /// BatchNorm `bn` folded in ([`fold`]), packed for `kernel` in `precision`, transformed for
    /// Winograd products as `winograd` says.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] naming the layer if its geometry does not check or the kernel
    /// and BatchNorm do not have its lengths.
    pub(crate) fn fold_and_pack(
        spec: LayerSpec,
        weight: &[f32],
        bn: &BatchNormValues<'_>,
        kernel: Kernel,
        precision: Precision,
        winograd: WinogradUse,
    ) -> Result<Self> {
        let o = spec.geometry.out_channels;
        if [bn.gamma.len(), bn.beta.len(), bn.mean.len(), bn.var.len()] != [o; 4] {
            return Err(Error::InvalidNetwork {
                layer: spec.name.norm_path(),
                what: format!("BatchNorm parameters that do not fit {o} channels"),
            });
        }
        let stats: Vec<(f64, f64)> = bn
            .mean
            .iter()
            .zip(bn.var)
            .map(|(&m, &v)| (f64::from(m), f64::from(v)))
            .collect();
        let (scale, shift) = fold(bn.gamma, bn.beta, &stats, bn.epsilon);
        Self::pack(spec, weight, Some(&scale), shift, kernel, precision, winograd)
    }

    /// `weight` (`[o, i, kd, kh, kw]`), each output channel multiplied by `scale` if given, and
    /// `bias` (`o` values), packed for `kernel` in `precision`.
    ///
    /// # Errors
    /// As [`fold_and_pack`](Self::fold_and_pack).
    pub(crate) fn pack(
        spec: LayerSpec,
        weight: &[f32],
        scale: Option<&[f32]>,
        bias: Vec<f32>,
        kernel: Kernel,
        precision: Precision,
        winograd: WinogradUse,
    ) -> Result<Self> {
        let g = spec.geometry;
        g.check(&spec.name.conv_path())?;
        let [o, i, kd, kh, kw] = g.weight_shape();
        let taps = kd * kh * kw;
        if weight.len() != o * i * taps || bias.len() != o || scale.is_some_and(|s| s.len() != o) {
            return Err(Error::InvalidNetwork {
                layer: spec.name.conv_path(),
                what: format!(
                    "{} kernel values and {} bias value(s) for a kernel of shape {:?}",
                    weight.len(),
                    bias.len(),
                    g.weight_shape()
                ),
            });
        }
        // Rows (tap, input channel) of the [K, out] matrix, written straight into the kernel's
        // layout: no intermediate copy of the weights.
        let packed = PackedB::conv_kernel(weight, [o, i, taps], scale, kernel);
        // bf16 for the implicit product (16 channels and more, an even count, so that pairs of
        // rows are pairs of channels of one tap), for gathered patches (fewer channels: the
        // stem) and for pointwise convolutions (an even count).
        let weight_bf16 = (precision == Precision::Bf16 && (i.is_multiple_of(2) || (i < 16 && g.kernel != [1, 1, 1])))
            .then(|| {
                let scale = scale.map_or_else(|| vec![1.0; o], <[f32]>::to_vec);
                super::bf16::PackedBf16::conv_kernel(weight, [o, i, taps], g.kernel[2], &scale)
            });
        Ok(Self {
            winograd: winograd_path::transforms(weight, [o, i, taps], scale, &g, packed.kernel(), precision, winograd),
            finite: OnceLock::new(),
            weight: packed,
            weight_bf16,
            spec,
            bias,
        })
    }

    /// Whether every value of the kernels the products multiply is finite: packed, with
    /// BatchNorm's scale folded in (which can overflow) and in bf16 (which can round to an
    /// infinity).
    fn finite_kernels(&self) -> bool {
        self.weight.all_finite()
            && self
                .weight_bf16
                .as_ref()
                .is_none_or(super::bf16::PackedBf16::all_finite)
    }

    /// The convolution of `x`, plus `residual` where the layer ends a block, then ReLU where
    /// its spec says so.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] where `x` does not fit the layer (its geometry's check);
    /// [`Error::InvalidNetwork`] if `residual` does not have the output's shape. Nothing is
    /// computed then. [`Error::InvalidInput`] if the output cannot be allocated.
    pub(crate) fn forward(&self, x: View<'_>, residual: Option<View<'_>>, buffers: &Buffers) -> Result<Act> {
        self.forward_adding(x, residual.map_or(Residual::None, Residual::Read), buffers)
    }

    /// [`forward`](Self::forward) with the residual as a [`Residual`]: one the caller gives up
    /// is written over where the product adds it as it stores its tiles, and otherwise
    /// returned to `buffers`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub(crate) fn forward_adding(&self, x: View<'_>, residual: Residual<'_>, buffers: &Buffers) -> Result<Act> {
        let (read, onto) = match residual {
            Residual::None => (None, None),
            Residual::Read(view) => (Some(view), None),
            Residual::Onto(act) => (None, Some(act)),
        };
        let result = self.forward_onto(x, read, onto, buffers);
        if let Err((err, Some(act))) = result {
            buffers.give(act.data);
            return Err(err);
        }
        result.map_err(|(err, _)| err)
    }

    /// [`forward_adding`](Self::forward_adding) with the residual read from `read` or `onto`
    /// (one of them at most); `onto` is given back with the error if nothing was computed.
    #[allow(clippy::result_large_err)]
    fn forward_onto(
        &self,
        x: View<'_>,
        read: Option<View<'_>>,
        mut onto: Option<Act>,
        buffers: &Buffers,
    ) -> std::result::Result<Act, (Error, Option<Act>)> {
        // Errors before the output is decided give `onto` back to the caller.
        macro_rules! check {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(err) => return Err((err, onto)),
                }
            };
        }
        let residual = read.or(onto.as_ref().map(Act::view));
        let [n, d, h, w, c] = x.dims;
        // The one check: every read below stays in bounds because of it and the two that
        // follow (the buffers hold what their shapes say; the residual has the output's shape).
        let s = check!(self.spec.geometry.on([n, c, d, h, w], &self.spec.name));
        let [od, oh, ow] = s.output;
        let oc = s.out_channels;
        let out_dims = [n, od, oh, ow, oc];
        let rows = n * od * oh * ow;
        if x.data.len() != s.input_len() {
            let err = Error::InvalidInput {
                dims: vec![n, c, d, h, w],
                what: format!("{}: {} values for this shape", self.spec.name, x.data.len()),
            };
            return Err((err, onto));
        }
        if let Some(res) = residual
            && (res.dims != out_dims || res.data.len() != rows * oc)
        {
            let err = Error::InvalidNetwork {
                layer: self.spec.name.conv_path(),
                what: format!(
                    "the shortcut gives {:?} (channels-last), the convolution {out_dims:?}",
                    res.dims
                ),
            };
            return Err((err, onto));
        }
        let relu = self.spec.after.relu();
        if let Some((winograd, _)) =
            (self.winograd.iter()).find(|(w, fewest)| w.tile().tiles(s.batch, s.output) >= *fewest)
            && let Some(act) = check!(self.forward_winograd(winograd, &s, x, residual, relu, buffers))
        {
            if let Some(given) = onto {
                buffers.give(given.data);
            }
            return Ok(act);
        }
        let k = s.k();
        let pointwise = s.kernel == [1, 1, 1] && s.stride == [1, 1, 1] && s.padding == [0, 0, 0];
        // Implicit GEMM: the kernel reads a zero-padded copy of the input in place, one
        // (depth tap, height tap) at a time, instead of gathered patches. For 16 channels
        // and more, where a kernel row's kw * C values make a long enough product.
        // Blocks stay within an output line, so lines much shorter than a block waste the
        // tile: only lines where the blocks are at least 7/8 full. Padding beyond the kernel's
        // reach would make the copy larger than the input by more than a kernel: gathered.
        // A line's blocks cost 12 rows each, the last one 8 where it has at most 8 (the short
        // register tile).
        let tail = ow % MR;
        let cost = ow / MR * MR
            + if tail == 0 {
                0
            } else if tail <= 8 {
                8
            } else {
                MR
            };
        let full_blocks = ow * 8 >= cost * 7;
        // With fewer channels a kernel row is short (a one-channel stem: 7 values), so the
        // product keeps its accumulators over all rows of the kernel instead (`implicit_runs`);
        // the bf16 network keeps its gathered bf16 patches there. A 1x1x1 kernel with a
        // stride (a projection shortcut) gathers its tile's voxels instead: a copy of the
        // voxels it reads, in cache, not a padded copy of its whole input.
        let in_place = !pointwise
            && s.kernel != [1, 1, 1]
            && s.dilation == [1, 1, 1]
            && s.padding_within_reach()
            && self.weight.kernel().tiled()
            && full_blocks;
        let implicit = in_place && (s.in_channels >= 16 || self.weight_bf16.is_none());
        // The output is taken from the buffers before any padded copy (the order the buffers
        // were sized for); only an f32 product without a padded copy may write over a
        // residual given up, and it waits to see whether it does.
        let may_write_over = onto.is_some() && !in_place && self.weight_bf16.is_none();
        let early = match may_write_over {
            true => None,
            false => Some(check!(self.output(rows * oc, s.input_dims(), buffers))),
        };
        // bf16 activations for the bf16 kernel (with fewer channels, its kernel rows padded to
        // even: any count), else f32 ones for the f32 kernel; gathered patches where the
        // padded copy cannot be made.
        let padded_bf16 = self
            .weight_bf16
            .as_ref()
            .filter(|_| in_place && (s.in_channels < 16 || s.in_channels.is_multiple_of(2)))
            .and_then(|w| Some((w, implicit::pad_bf16(&s, x)?)));
        let padded = (implicit && padded_bf16.is_none())
            .then(|| implicit::pad(&s, x, buffers))
            .flatten();
        // The bf16 network's gathered patches come from its input rounded once (rounding
        // commutes with the copy): half the bytes gathered, and no pass rounding them.
        let x_bf16 = match &self.weight_bf16 {
            Some(_) if !pointwise && padded_bf16.is_none() && padded.is_none() => {
                Some(check!(gather::rounded(x.data).ok_or_else(|| Error::InvalidInput {
                    dims: s.input_dims().to_vec(),
                    what: format!("{}: its input in bf16 cannot be allocated", self.spec.name),
                })))
            }
            _ => None,
        };

        // Products skip the depth taps that read only zero padding at every output voxel: the
        // last stages on a small input (one slice deep under 3-deep kernels) read a third of
        // their kernel.
        let finite = || *self.finite.get_or_init(|| self.finite_kernels());
        let depth = Some(s.depth_taps_read())
            .filter(|d| !pointwise && d.len() < s.kernel[0] && finite())
            .unwrap_or(0..s.kernel[0]);
        // The gathered product skips them per output plane too: the last stages two planes
        // deep read two thirds of a 3-deep kernel at each (`gather::accumulate_f32`).
        let planes = !pointwise && (0..s.output[0]).any(|oz| s.depth_taps_of(oz).len() < depth.len()) && finite();
        let cropped = ((depth.len() < s.kernel[0] || planes)
            && padded.is_none()
            && padded_bf16.is_none()
            && self.weight_bf16.is_none()
            && self.weight.kernel().tiled())
        .then(|| depth.clone());
        // The prepacked product (pointwise convolutions and gathered f32 patches) applies
        // bias, residual and ReLU as it stores its tiles (k > 0: it stores nothing else);
        // the others add to rows that hold them first and take the ReLU after.
        let fused = padded_bf16.is_none() && padded.is_none() && self.weight_bf16.is_none() && cropped.is_none();
        // A residual given up becomes the output where the product adds it as it stores a
        // tile, or (the gathered product of cropped taps) where the bias is added to it first:
        // each value is read, then written over, by the one work item of its tile and panel.
        // Else every value is overwritten below (bias first).
        let over = (fused || cropped.is_some()) && early.is_none();
        let mut out = match (early, onto.take_if(|_| over)) {
            (Some(out), _) => out,
            (None, Some(given)) => given.data,
            // No padded copy was made (`may_write_over`): nothing else to give back.
            (None, None) => check!(self.output(rows * oc, s.input_dims(), buffers)),
        };
        let residual = read.or(onto.as_ref().map(Act::view));

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
        let tile = rows.div_ceil(wanted).div_ceil(MR).max(1) * MR;
        let tiles = rows.div_ceil(tile);
        let items = work_items(tiles, self.weight.panel_count());
        debug_assert_eq!(out.len(), rows * oc);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let s = &s;
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
            if !fused {
                let bias = &self.bias[c0..c1];
                for r in 0..count {
                    let dst = row(r);
                    if over {
                        // The output is the residual given up: bias added to it.
                        dst.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                        continue;
                    }
                    dst.copy_from_slice(bias);
                    if let Some(res) = residual {
                        let src = &res.data[(first + r) * oc + c0..(first + r) * oc + c1];
                        dst.iter_mut().zip(src).for_each(|(v, s)| *v += s);
                    }
                }
            }
            let in_place = match (&padded_bf16, &padded) {
                (Some((w, (xp, dims))), _) => Some(implicit::Padded::Bf16(xp, *dims, w)),
                (None, Some(xp)) => Some(implicit::Padded::F32(xp, &self.weight)),
                (None, None) => None,
            };
            if let Some(padded) = in_place {
                // The padded copy is `pad`'s or `pad_bf16`'s of `x` (shape checked by `on`
                // above), with this layer's kernel (bf16 only where `freeze_bf16` found it
                // available). SAFETY: as just said; `out` holds `out_dims`, and this item
                // alone touches rows first..first + count, columns of `panel_range`.
                unsafe {
                    implicit::in_place(
                        s,
                        depth.clone(),
                        padded,
                        out_dims,
                        first,
                        count,
                        panel_range.clone(),
                        out_ptr.0,
                    )
                };
            } else if let Some(w) = &self.weight_bf16 {
                // `w` exists only where `freeze_bf16` found the bf16 product available;
                // `x_bf16` is `x` rounded (none for a pointwise convolution: checked above).
                // SAFETY: as just said; `depth` is the kernel's or `depth_taps_read`'s; `out`
                // as for the in-place products above.
                unsafe {
                    gather::accumulate_bf16(
                        s,
                        w,
                        x,
                        x_bf16.as_deref(),
                        depth.clone(),
                        out_dims,
                        first,
                        count,
                        panel_range.clone(),
                        out_ptr.0,
                    )
                };
            } else {
                SCRATCH.with_borrow_mut(|(patches, packed)| {
                    if let Some(depth) = &cropped {
                        // SAFETY: `cropped` exists only for a tiled kernel, `depth` is
                        // `depth_taps_read`'s; `out` as for the bf16 product above.
                        unsafe {
                            gather::accumulate_f32(
                                s,
                                &self.weight,
                                x,
                                depth.clone(),
                                planes,
                                out_dims,
                                first,
                                count,
                                panel_range.clone(),
                                out_ptr.0,
                                patches,
                            )
                        };
                        return;
                    }
                    let lhs = if pointwise {
                        x.data[first * k..(first + count) * k].as_ptr()
                    } else {
                        gather::gather(s, x, out_dims, first, count, 0..s.kernel[0], patches);
                        patches.as_ptr()
                    };
                    // The residual has the output's shape (checked above): its rows from
                    // `first` are laid out as the output's; written over, it is the output.
                    let residual = match over {
                        // SAFETY: first < rows, and `out` holds rows * oc values.
                        true => Some(unsafe { out_ptr.0.add(first * oc) }.cast_const()),
                        false => residual.map(|r| r.data[first * oc..].as_ptr()),
                    };
                    let epilogue = Epilogue {
                        bias: &self.bias,
                        residual,
                        relu,
                    };
                    // lhs holds count rows of k values (`x` has in_channels values per voxel,
                    // and a pointwise convolution with stride 1 and no padding has one output
                    // row per input row, both checked above; `gather` writes count * k), the
                    // output count rows of oc from `first`, this item alone touching their
                    // columns c0..c1;
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
        if let Some(given) = onto {
            buffers.give(given.data);
        }
        Ok(Act {
            data: out,
            dims: out_dims,
        })
    }

    /// A buffer for `len` values (the output, or a padded copy); `input` is the input's
    /// `[n, c, d, h, w]`, for the error.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (naming the layer) if it cannot be allocated: a size an input
    /// chose, refused instead of aborting.
    fn output(&self, len: usize, input: [usize; 5], buffers: &Buffers) -> Result<Vec<f32>> {
        buffers.take(len).ok_or_else(|| Error::InvalidInput {
            dims: input.to_vec(),
            what: format!(
                "{}: its output of {len} values ({} MiB) cannot be allocated",
                self.spec.name,
                len / (1 << 18)
            ),
        })
    }
}

/// `max(v, 0)` that keeps NaN, as PyTorch's and Burn's ReLU do (`f32::max` would turn NaN
/// into 0 and hide a broken input).
#[inline]
fn relu_keeping_nan(v: f32) -> f32 {
    if v < 0.0 { 0.0 } else { v }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::arch::geometry::ConvGeometry;
    use crate::arch::kinds::DepthPadding;
    use crate::arch::plan::{After, LayerName, Site};

    pub(super) fn spec(geometry: ConvGeometry) -> LayerSpec {
        LayerSpec {
            name: LayerName {
                site: Site::Detached,
                conv: "conv",
                norm: "bn",
            },
            geometry,
            after: After::Nothing,
        }
    }

    pub(super) fn geometry(channels: [usize; 2], kernel: usize, stride: usize, padding: usize) -> ConvGeometry {
        ConvGeometry {
            in_channels: channels[0],
            out_channels: channels[1],
            kernel: [kernel; 3],
            stride: [stride; 3],
            padding: [padding; 3],
            dilation: [1; 3],
            depth_padding: DepthPadding::Zeros,
        }
    }

    /// The definition on channels-last data, in f64: `[n, od, oh, ow, oc]`.
    pub(super) fn naive(x: &[f32], [n, d, h, w, c]: [usize; 5], weight: &[f32], g: &ConvGeometry) -> Vec<f64> {
        let s = g.on([n, c, d, h, w], &"conv").unwrap();
        let [od, oh, ow] = s.output;
        let (o, k) = (g.out_channels, g.kernel[0]);
        let mut y = vec![0.0f64; n * od * oh * ow * o];
        for b in 0..n {
            for (z, yy, xx) in (0..od).flat_map(|z| (0..oh).flat_map(move |y| (0..ow).map(move |x| (z, y, x)))) {
                for oc in 0..o {
                    let mut sum = 0.0f64;
                    for (t, (a, bb, cc)) in (0..k)
                        .flat_map(|a| (0..k).flat_map(move |b| (0..k).map(move |c| (a, b, c))))
                        .enumerate()
                    {
                        let at = |o: usize, tap: usize, size: usize, axis: usize| {
                            let v = (o * g.stride[axis] + tap) as i128 - g.padding[axis] as i128;
                            (0..size as i128).contains(&v).then_some(v as usize)
                        };
                        let (Some(iz), Some(iy), Some(ix)) = (at(z, a, d, 0), at(yy, bb, h, 1), at(xx, cc, w, 2))
                        else {
                            continue;
                        };
                        for ic in 0..c {
                            let v = x[(((b * d + iz) * h + iy) * w + ix) * c + ic];
                            sum += f64::from(v) * f64::from(weight[(oc * c + ic) * k * k * k + t]);
                        }
                    }
                    y[(((b * od + z) * oh + yy) * ow + xx) * o + oc] = sum;
                }
            }
        }
        y
    }

    pub(super) fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919 % 1013) as f32 / 506.0) - 1.0)
            .collect()
    }

    /// `w` packed as the layer of `g` (no bias, the fastest product, f32).
    pub(super) fn pack(g: ConvGeometry, w: &[f32], winograd: WinogradUse) -> PackedConv {
        let bias = vec![0.0; g.out_channels];
        match PackedConv::pack(spec(g), w, None, bias, Kernel::detect(), Precision::F32, winograd) {
            Ok(layer) => layer,
            Err(err) => panic!("{err}"),
        }
    }

    pub(super) fn run(layer: &PackedConv, x: &[f32], dims: [usize; 5]) -> Result<Act> {
        layer.forward(View { data: x, dims }, None, &Buffers::with_budget(0))
    }

    /// A 1x1x1 convolution with stride 1 and padding 1 (PyTorch takes it): the padding ring
    /// of the output is the bias, the inside the product. It used to take the pointwise branch,
    /// which ignores padding, compute the wrong rows and then panic.
    #[test]
    fn a_pointwise_convolution_with_padding_pads() {
        let g = geometry([3, 5], 1, 1, 1);
        let dims = [2, 3, 4, 5, 3];
        let (x, w) = (values(2 * 3 * 4 * 5 * 3, 1), values(15, 2));
        let layer = pack(g, &w, WinogradUse::Kept);
        let got = run(&layer, &x, dims).unwrap();
        assert_eq!(got.dims, [2, 5, 6, 7, 5]);
        let want = naive(&x, dims, &w, &g);
        for (a, b) in got.data.iter().zip(&want) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// 1x1x1 kernels with a stride (projection shortcuts; gathered per tile, not read from a
    /// padded copy), with and without padding, on lines of full register tiles and short
    /// ones: the definition, both kernels.
    #[test]
    fn strided_pointwise_convolutions_compute_the_definition() {
        for (stride, padding, dims) in [
            ([2, 2, 2], [0, 0, 0], [2, 5, 8, 48, 24]),
            ([1, 2, 3], [0, 1, 0], [1, 3, 6, 37, 20]),
            ([2, 2, 2], [1, 1, 1], [1, 4, 4, 26, 16]),
        ] {
            let mut g = geometry([dims[4], 40], 1, 1, 0);
            (g.stride, g.padding) = (stride, padding);
            let x = values(dims.iter().product(), 9);
            let w = values(dims[4] * 40, 10);
            let want = naive(&x, dims, &w, &g);
            for kernel in Kernel::here() {
                let layer = PackedConv::pack(
                    spec(g),
                    &w,
                    None,
                    vec![0.0; 40],
                    kernel,
                    Precision::F32,
                    WinogradUse::Kept,
                )
                .unwrap();
                let got = run(&layer, &x, dims).unwrap();
                assert_eq!(got.data.len(), want.len());
                for (i, (a, b)) in got.data.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(*a) - b).abs() < 1e-5,
                        "{stride:?} {padding:?} {kernel:?} at {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Padding far beyond the kernel's reach with a stride that leaves a few outputs: the
    /// padded copy's length (2^21 + 4 per axis, cubed, times 16 channels) used to wrap in
    /// release builds, and the AVX-512 kernel read past the buffer (a segfault). Now the
    /// windows are cut to the volume by index: the few outputs that see it are its products,
    /// the others zero.
    #[test]
    fn padding_beyond_the_reach_neither_wraps_nor_pads() {
        for (padding, stride) in [(1usize << 21, 1usize << 20), (4096, 2048), (3, 1)] {
            let g = geometry([16, 16], 3, stride, padding);
            let dims = [1, 4, 4, 24, 16];
            let (x, w) = (values(4 * 4 * 24 * 16, 3), values(16 * 16 * 27, 4));
            for winograd in [WinogradUse::Kept, WinogradUse::Never] {
                let layer = pack(g, &w, winograd);
                let got = run(&layer, &x, dims).unwrap();
                let want = naive(&x, dims, &w, &g);
                assert_eq!(got.data.len(), want.len());
                let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                for (a, b) in got.data.iter().zip(&want) {
                    assert!(
                        (f64::from(*a) - b).abs() < 1e-5 * scale,
                        "padding {padding}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// A residual given up (`Residual::Onto`) gives what a residual read from a buffer gives,
    /// bit for bit, NaN included, and the definition plus the residual, then ReLU (keeping
    /// NaN): written over by the products that add it as they store (pointwise, with more
    /// input channels than one block of the product's depth, and gathered patches), read then
    /// given back by the Winograd product. A residual of the wrong shape is an error either way.
    #[test]
    fn a_residual_given_up_is_written_over_and_adds_the_same() {
        // (channels, kernel, stride, padding, input dims, whether the output is the residual's buffer)
        let cases = [
            ([300, 40], 1, 1, 0, [2, 2, 3, 13, 300], true),
            ([16, 24], 3, 2, 1, [1, 5, 6, 7, 16], true),
            ([16, 16], 3, 1, 1, [1, 8, 8, 8, 16], false),
        ];
        for (channels, kernel, stride, padding, dims, over) in cases {
            let g = geometry(channels, kernel, stride, padding);
            let x = values(dims.iter().product(), 5);
            let w = values(channels[0] * channels[1] * kernel.pow(3), 6);
            for kernel_kind in Kernel::here() {
                let bias = values(channels[1], 8);
                let mut layer = PackedConv::pack(
                    spec(g),
                    &w,
                    None,
                    bias.clone(),
                    kernel_kind,
                    Precision::F32,
                    WinogradUse::Kept,
                )
                .unwrap();
                layer.spec.after = After::AddRelu;
                let s = g.on([dims[0], dims[4], dims[1], dims[2], dims[3]], &"conv").unwrap();
                let out_dims = [dims[0], s.output[0], s.output[1], s.output[2], channels[1]];
                let mut residual = values(out_dims.iter().product(), 7);
                residual[5] = f32::NAN;
                let buffers = Buffers::with_budget(0);
                let view = View { data: &x, dims };
                let read = layer
                    .forward(
                        view,
                        Some(View {
                            data: &residual,
                            dims: out_dims,
                        }),
                        &buffers,
                    )
                    .unwrap();
                let given = Act {
                    data: residual.clone(),
                    dims: out_dims,
                };
                let at = given.data.as_ptr();
                let onto = layer.forward_adding(view, Residual::Onto(given), &buffers).unwrap();
                // (The portable kernel has no in-place 3x3x3 products: every output is either.)
                if kernel_kind.tiled() || channels[0] == 300 {
                    let written_over = onto.data.as_ptr() == at;
                    assert_eq!(written_over, over, "{channels:?} {kernel} {kernel_kind:?}");
                }
                assert_eq!(onto.dims, read.dims);
                assert!(onto.data[5].is_nan() && read.data[5].is_nan());
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&onto.data), bits(&read.data), "{channels:?} {kernel}");
                let want = naive(&x, dims, &w, &g);
                for (i, (a, b)) in onto.data.iter().zip(&want).enumerate().filter(|(i, _)| *i != 5) {
                    let b = (b + f64::from(bias[i % channels[1]]) + f64::from(residual[i])).max(0.0);
                    assert!(
                        (f64::from(*a) - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "{channels:?} {kernel} at {i}: {a} vs {b}"
                    );
                }
                let wrong = Act {
                    data: vec![0.0; residual.len()],
                    dims: [out_dims[0], out_dims[1], out_dims[2], out_dims[3] + 1, out_dims[4] - 1],
                };
                let err = layer.forward_adding(view, Residual::Onto(wrong), &buffers).unwrap_err();
                assert!(matches!(err, Error::InvalidNetwork { .. }), "{err}");
            }
        }
    }

    /// Inputs one slice deep under 3-deep kernels on short lines (gathered patches): the
    /// product skips the depth taps that read padding only and computes the definition; a
    /// NaN in such a tap of the kernel still makes its output channel NaN (nothing skipped).
    #[test]
    fn depth_taps_on_padding_only_are_skipped_unless_the_kernel_is_not_finite() {
        // Gathered patches on short lines; read in place on a line of 24 (two register tiles).
        for (stride, dims) in [
            (1, [2, 1, 2, 2, 16]),
            (2, [1, 1, 3, 3, 16]),
            (1, [1, 2, 3, 1, 16]),
            (1, [1, 1, 2, 24, 16]),
        ] {
            let g = geometry([16, 24], 3, stride, 1);
            let (x, mut w) = (values(dims.iter().product(), 7), values(24 * 16 * 27, 8));
            let want = naive(&x, dims, &w, &g);
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            // f32, and bf16 (within its rounding: 8 bits per product input) where available.
            let layers = |w: &[f32]| {
                [(Precision::F32, 1e-5), (Precision::Bf16, 2e-2)]
                    .into_iter()
                    .filter(|&(p, _)| p == Precision::F32 || super::super::bf16::available())
                    .map(|(p, tolerance)| {
                        let bias = vec![0.0; 24];
                        let layer = PackedConv::pack(spec(g), w, None, bias, Kernel::detect(), p, WinogradUse::Never);
                        (layer.unwrap(), p, tolerance)
                    })
                    .collect::<Vec<_>>()
            };
            for (layer, _, tolerance) in layers(&w) {
                let got = run(&layer, &x, dims).unwrap();
                for (a, b) in got.data.iter().zip(&want) {
                    assert!((f64::from(*a) - b).abs() < tolerance * scale, "{dims:?}: {a} vs {b}");
                }
            }
            // Tap (0, 1, 1) of output channel 0, input channel 0: it reads the slice before
            // the first (at the first output slice); output channel 0 is NaN everywhere, the
            // others are finite.
            w[4] = f32::NAN;
            for (layer, precision, _) in layers(&w) {
                let got = run(&layer, &x, dims).unwrap().data;
                for (i, v) in got.iter().enumerate() {
                    assert_eq!(v.is_nan(), i % 24 == 0, "{precision:?} {dims:?}, value {i}: {v}");
                }
            }
            // A finite weight that the product's kernel holds as an infinity (bf16 rounds
            // f32::MAX up; a hostile review's case): on one slice, 0 x inf = NaN too.
            w[4] = f32::MAX;
            for (layer, precision, _) in layers(&w).into_iter().filter(|_| dims[1] == 1) {
                let got = run(&layer, &x, dims).unwrap().data;
                let nan = got.iter().step_by(24).filter(|v| v.is_nan()).count();
                let want = if precision == Precision::Bf16 {
                    got.len() / 24
                } else {
                    0
                };
                assert_eq!(nan, want, "{precision:?} {dims:?}");
            }
        }
    }

    /// An input of other channels than the layer's: refused by the one check before any
    /// product reads the kernel (it used to read 4x past the weights).
    #[test]
    fn an_input_of_other_channels_is_refused() {
        let g = geometry([16, 32], 3, 1, 1);
        let layer = pack(g, &values(32 * 16 * 27, 1), WinogradUse::Kept);
        let x = values(4 * 4 * 24 * 64, 2);
        match run(&layer, &x, [1, 4, 4, 24, 64]) {
            Err(Error::InvalidInput { what, .. }) => {
                assert!(what.contains("takes 16 channel(s), this activation has 64"), "{what}")
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        // A buffer shorter than its shape says is refused too.
        assert!(matches!(
            run(&layer, &x[..100], [1, 4, 4, 24, 16]),
            Err(Error::InvalidInput { .. })
        ));
    }
}
