//! 3-D convolution on channels-last `[N, D, H, W, C]` `f32` data, forward and gradients:
//! what the Burn op runs on `flex` (the activations between the network's layers stay
//! channels-last there, as in [`FrozenResNet3d`](crate::FrozenResNet3d)).
//!
//! With voxels as rows and channels as columns, every patch row is `kw * C` contiguous values
//! of the input, so nothing is gathered one value at a time:
//!
//! - forward: [`PackedConv`]'s products (the padded input read in place, one
//!   (depth, height) tap at a time) with the kernel packed per call;
//! - input gradient: `dP[v, (tap, ic)] = sum_oc dY[v, oc] * W[oc, ic, tap]` for a tile of
//!   output voxels `v` (`dY` read in place), each row of `dP` then added, `ic` values at a
//!   time, to the input voxels its taps read (col2im). Output depth planes whose input planes
//!   overlap are never processed at the same time;
//! - weight gradient: `dW[oc, (tap, ic)] = sum_v dY^T[oc, v] * P[v, (tap, ic)]`, every output
//!   voxel of the batch one step of the sum, the patch panels (32 channels of one tap) copied
//!   from the input as they are needed;
//! - bias gradient: `dY` summed over its rows.
//!
//! [`forward_folded`] is the forward pass with an eval-mode BatchNorm folded in (inference
//! without autodiff). Where the output has few voxels per batch item (the last stages), each
//! pass hands over to the channels-first one of [`conv`], which reads the kernel in its own
//! layout instead of repacking it, converting the (small) activations at both ends.

use std::ops::Range;
use std::sync::LazyLock;

use rayon::prelude::*;

use super::buffers::{Buffers, RECYCLED, View, zeros};
use super::channels_first as conv;
use super::conv::{PackedConv, Precision, WINOGRAD_CHANNELS, WinogradUse};
use super::fold::BatchNormValues;
use super::implicit;
use super::layout::{to_channels_first, to_channels_last};
use super::matmul::{Kernel, MR, NR, PackedB, Scratch, matmul};
use crate::arch::geometry::ConvShape;
use crate::arch::plan::{After, LayerName, LayerSpec, Site};

mod weight_grad;

pub(crate) use weight_grad::backward_weight;
#[cfg(test)]
use weight_grad::{split_voxels, winograd_weight_grad};

thread_local! {
    /// Per thread: the product's packing buffers, a tile of `dP`, and the prepacked product's
    /// padded last rows of `A`.
    static SCRATCH: std::cell::RefCell<(Scratch, Vec<f32>, Vec<f32>)> =
        std::cell::RefCell::new((Scratch::default(), Vec::new(), Vec::new()));
}

/// The padded inputs of the forward pass, kept between calls (their pages faulted in once),
/// up to 256 MiB.
static PADDED: LazyLock<Buffers> = LazyLock::new(|| Buffers::with_budget(256 << 20));

/// Whether the output has so few voxels per batch item that the channels-first passes, which
/// read the kernel in its own layout, beat repacking it (the last stages: 9 voxels in
/// ResNet3d-18's `layer4` on a 32 x 96 x 96 crop); the data is converted at both ends then.
fn few(s: &ConvShape) -> bool {
    s.output.iter().product::<usize>() <= conv::FEW_VOXELS
}

/// Channels-last `x` of (channels-first) shape `[n, c, d, h, w]` in channels-first order: the
/// data itself for one channel (the same in both layouts), else a converted copy.
fn first(x: &[f32], [n, c, d, h, w]: [usize; 5]) -> std::borrow::Cow<'_, [f32]> {
    if c == 1 {
        std::borrow::Cow::Borrowed(x)
    } else {
        std::borrow::Cow::Owned(to_channels_first(x, [n, d, h, w, c]))
    }
}

/// The input voxel (flat index within its batch item) that tap `t` of output voxel `o` reads,
/// or `None` where it falls into zero padding.
fn source(s: &ConvShape, [oz, oy, ox]: [usize; 3], t: [usize; 3]) -> Option<usize> {
    let [d, h, w] = s.input;
    let at = |a: usize, o: usize| (o * s.stride[a] + t[a] * s.dilation[a]) as isize - s.padding[a] as isize;
    let (z, y, x) = (at(0, oz), at(1, oy), at(2, ox));
    let z = if s.replicate_depth {
        z.clamp(0, d as isize - 1)
    } else {
        z
    };
    let inside = |v: isize, len: usize| v >= 0 && v < len as isize;
    (inside(z, d) && inside(y, h) && inside(x, w)).then(|| ((z as usize) * h + y as usize) * w + x as usize)
}

fn tap_of(s: &ConvShape, t: usize) -> [usize; 3] {
    let [_, kh, kw] = s.kernel;
    [t / (kh * kw), (t / kw) % kh, t % kw]
}

/// The same convolution on the depth taps it reads ([`ConvShape::depth_taps_read`]), where
/// some read only zero padding at every output voxel (a volume one slice deep under a 3-deep
/// kernel: the middle tap), with the padding before them dropped: the same outputs from the
/// same slices, and a kernel a third the size to multiply. `None` where every tap is read,
/// or the cropped convolution's output would differ in extent.
fn cropped(s: &ConvShape) -> Option<(ConvShape, Range<usize>)> {
    let taps = s.depth_taps_read();
    if taps.len() == s.kernel[0] || s.replicate_depth {
        return None;
    }
    let mut g = s.geometry();
    g.kernel[0] = taps.len();
    g.padding[0] = s.padding[0].checked_sub(taps.start * s.dilation[0])?;
    let c = g.on(s.input_dims(), &"conv3d").ok()?;
    (c.output == s.output).then_some((c, taps))
}

/// Depth taps `taps` of the kernel `w` (`[oc, ic, kd, kh, kw]`), in a recycled buffer (`None`
/// where none can be allocated, or where `finite_rest` asks that every dropped tap be finite
/// and one is not). The input gradient drops taps whatever their values; the forward pass
/// only finite ones, since a dropped infinity or NaN times the zero padding it reads is NaN in
/// PyTorch's output: the check rides on the copy's pass over the kernel. For few voxels, where
/// the kernel is the cost (512 -> 512 channels on 2x512x1x3x3, alone, best of 40, alternated):
/// the checked copy and the cropped product 1.42-1.51 ms, the whole kernel's product 2.35-2.99.
fn crop_kernel(w: &[f32], s: &ConvShape, taps: &Range<usize>, finite_rest: bool) -> Option<Vec<f32>> {
    let plane = s.kernel[1] * s.kernel[2];
    let per = (s.kernel[0] * plane).max(1);
    let (lo, hi) = (taps.start * plane, taps.end * plane);
    let kept = (hi - lo).max(1);
    let mut out = RECYCLED.take(w.len() / per * (hi - lo))?;
    let finite = (out.par_chunks_mut(kept * 256).zip(w.par_chunks(per * 256))).all(|(dst, src)| {
        let mut ok = true;
        for (d, k) in dst.chunks_exact_mut(kept).zip(src.chunks_exact(per)) {
            d.copy_from_slice(&k[lo..hi]);
            if finite_rest {
                ok &= k[..lo].iter().chain(&k[hi..]).all(|v| v.is_finite());
            }
        }
        ok
    });
    if !finite {
        RECYCLED.give(out);
        return None;
    }
    Some(out)
}

/// The convolution of `x` (channels-last) with `w` (`[oc, ic, kd, kh, kw]`) plus `bias`:
/// channels-last `[n, d', h', w', oc]`. Dilation must be 1 (the caller's check).
pub(crate) fn forward(kernel: Kernel, x: &[f32], w: &[f32], bias: Option<&[f32]>, s: &ConvShape) -> Vec<f32> {
    assert!(
        x.len() == s.input_len() && w.len() == s.weight_len() && s.dilation == [1, 1, 1],
        "conv3d: lengths do not fit {s:?}"
    );
    if few(s) {
        // Few voxels: the kernel is the cost, and its depth taps that read only padding are
        // dropped where they are finite (`crop_kernel`).
        let x = first(x, s.input_dims());
        if let Some((c, taps)) = cropped(s)
            && let Some(wc) = crop_kernel(w, s, &taps, true)
        {
            let y = conv::forward(kernel, &x, &wc, bias, &c);
            RECYCLED.give(wc);
            return to_channels_last(&y, s.output_dims());
        }
        let y = conv::forward(kernel, &x, w, bias, s);
        return to_channels_last(&y, s.output_dims());
    }
    let bias = bias.map_or_else(|| vec![0.0; s.out_channels], <[f32]>::to_vec);
    let layer = PackedConv::pack(
        spec(s, After::Nothing),
        w,
        None,
        bias,
        kernel,
        Precision::F32,
        winograd_use(s),
    );
    run(layer, x, None, s)
}

/// The layer spec of the operation's convolution, for the kernels' errors.
fn spec(s: &ConvShape, after: After) -> LayerSpec {
    LayerSpec {
        name: LayerName {
            site: Site::Detached,
            conv: "conv3d",
            norm: "batch_norm",
        },
        geometry: s.geometry(),
        after,
    }
}

/// The packed `layer` on `x` (channels-last, `s`'s input), its output's values.
///
/// # Panics
/// With the kernels' error where the output cannot be allocated; the layer's other errors (an
/// input or residual that does not fit, lengths that do not fit the kernel) do not happen: `s`
/// was checked by `ConvGeometry::on` from the tensors this layer was made of, and the callers
/// assert the lengths.
fn run(layer: crate::error::Result<PackedConv>, x: &[f32], residual: Option<&[f32]>, s: &ConvShape) -> Vec<f32> {
    let [d, h, wd] = s.input;
    let [od, oh, ow] = s.output;
    let view = View {
        data: x,
        dims: [s.batch, d, h, wd, s.in_channels],
    };
    let residual = residual.map(|data| View {
        data,
        dims: [s.batch, od, oh, ow, s.out_channels],
    });
    match layer.and_then(|layer| layer.forward(view, residual, &PADDED)) {
        Ok(act) => act.data,
        Err(e) => panic!("conv3d: {e}"),
    }
}

/// [`forward`] with an eval-mode BatchNorm `bn` folded in (the one fold-and-pack step), then
/// `residual` added and ReLU as `after` says, in the pass that writes the output:
/// [`FrozenResNet3d`](crate::FrozenResNet3d)'s layer, for the Burn model's inference on flex.
/// Dilation 1, and not [`few`] voxels (the caller's checks); the residual of the output's shape
/// (asserted).
pub(crate) fn forward_folded(
    kernel: Kernel,
    x: &[f32],
    w: &[f32],
    bn: &BatchNormValues<'_>,
    residual: Option<&[f32]>,
    after: After,
    s: &ConvShape,
) -> Vec<f32> {
    assert!(
        x.len() == s.input_len()
            && w.len() == s.weight_len()
            && s.dilation == [1, 1, 1]
            && residual.is_none_or(|r| r.len() == s.output_len()),
        "conv3d: lengths do not fit {s:?}"
    );
    let layer = PackedConv::fold_and_pack(spec(s, after), w, bn, kernel, Precision::F32, winograd_use(s));
    run(layer, x, residual, s)
}

/// Transforming the kernel for a Winograd product on every call (the op keeps no packed kernel
/// between calls) where it pays (see [`PackedConv::winograd_pays`]); the layer decides whether
/// its kernel takes it.
fn winograd_use(s: &ConvShape) -> WinogradUse {
    if PackedConv::winograd_pays(s) {
        WinogradUse::PerCall
    } else {
        WinogradUse::Never
    }
}

/// The input gradient of a 3x3x3 convolution with stride 1 and zero padding `p <= 2` as a
/// Winograd product, where that applies and pays: `dX` is the convolution of `dY`, padded by
/// `2 - p`, with the kernel flipped in every axis and its input and output channels swapped.
/// `None` elsewhere (replicate depth padding adds the padding's gradient to the edge planes:
/// not a convolution), and where the kernel is not [moderate](implicit::all_moderate) (an
/// infinity or NaN, or `2^48` and more): the padded `dY` is zero there, and `0 * inf` would put
/// NaN into edge voxels of `dX` that PyTorch leaves finite (its gradient never multiplies a tap
/// with a voxel the tap does not reach).
fn winograd_input_grad(kernel: Kernel, dy: &[f32], w: &[f32], s: &ConvShape) -> Option<Vec<f32>> {
    if s.kernel != [3, 3, 3]
        || s.stride != [1, 1, 1]
        || s.dilation != [1, 1, 1]
        || s.replicate_depth
        || s.padding.iter().any(|&p| p > 2)
        || s.out_channels.max(s.in_channels) > WINOGRAD_CHANNELS
        || !implicit::all_moderate(w)
    {
        return None;
    }
    let transposed = s.transposed(s.padding.map(|p| 2 - p))?;
    if transposed.output != s.input || few(&transposed) || !PackedConv::winograd_pays(&transposed) {
        return None;
    }
    let (oc, ic) = (s.out_channels, s.in_channels);
    let mut flipped = vec![0.0f32; w.len()];
    for o in 0..oc {
        for i in 0..ic {
            let src = &w[(o * ic + i) * 27..][..27];
            let dst = &mut flipped[(i * oc + o) * 27..][..27];
            dst.iter_mut().zip(src.iter().rev()).for_each(|(d, v)| *d = *v);
        }
    }
    Some(forward(kernel, dy, &flipped, None, &transposed))
}

/// Whether [`forward_folded`] runs this shape.
pub(crate) fn folds(s: &ConvShape) -> bool {
    s.dilation == [1, 1, 1] && !few(s)
}

/// `w` (`[oc, ic, taps]`) as `[oc, taps * ic]`, row `oc` ordered (tap, input channel).
fn taps_major(w: &[f32], s: &ConvShape) -> Vec<f32> {
    let (ic, taps, k) = (s.in_channels, s.kernel.iter().product::<usize>(), s.k());
    let mut out = zeros(w.len());
    out.par_chunks_mut(k).zip(w.par_chunks(k)).for_each(|(dst, src)| {
        for c in 0..ic {
            for t in 0..taps {
                dst[t * ic + c] = src[c * taps + t];
            }
        }
    });
    out
}

/// The input planes `[z0, z1)` that output plane `oz` adds into.
fn planes_written(s: &ConvShape, oz: usize) -> Range<usize> {
    let d = s.input[0] as isize;
    let reach = (s.reach()[0] - 1) as isize;
    let first = (oz * s.stride[0]) as isize - s.padding[0] as isize;
    let (lo, hi) = (first.clamp(0, d - 1), (first + reach).clamp(0, d - 1));
    if !s.replicate_depth && (first + reach < 0 || first >= d) {
        return 0..0;
    }
    lo as usize..hi as usize + 1
}

/// The gradient of [`forward`]'s input for the output gradient `dy` (both channels-last).
pub(crate) fn backward_input(kernel: Kernel, dy: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    assert!(
        dy.len() == s.output_len() && w.len() == s.weight_len(),
        "conv3d: lengths do not fit {s:?}"
    );
    // The dropped taps read no input voxel, so add nothing to its gradient, whatever their
    // values.
    if let Some((c, taps)) = cropped(s)
        && let Some(wc) = crop_kernel(w, s, &taps, false)
    {
        let dx = backward_input(kernel, dy, &wc, &c);
        RECYCLED.give(wc);
        return dx;
    }
    if few(s) {
        let dx = conv::backward_input(kernel, &first(dy, s.output_dims()), w, s);
        return to_channels_last(&dx, s.input_dims());
    }
    if let Some(dx) = winograd_input_grad(kernel, dy, w, s) {
        return dx;
    }
    let (oc, ic) = (s.out_channels, s.in_channels);
    let [d, h, wd] = s.input;
    let [od, oh, ow] = s.output;
    let (in_plane, out_plane) = (h * wd * ic, oh * ow);
    // W as the [oc, (tap, ic)] matrix, packed once for every tile's product.
    let taps = s.kernel.iter().product::<usize>();
    let wr = PackedB::conv_kernel_transposed(w, [oc, ic, taps], kernel)
        .unwrap_or_else(|| PackedB::from_row_major(&taps_major(w, s), oc, s.k(), kernel));
    let mut dx = zeros(s.input_len());
    if s.kernel == [1, 1, 1] && s.stride == [1, 1, 1] && s.padding == [0, 0, 0] {
        // Pointwise: every input voxel is one output voxel, dX = dY * W, written in place.
        pointwise_input_grad(dy, &wr, s, &mut dx);
        return dx;
    }
    // Output planes `colors` apart write disjoint input planes (stride times that covers the
    // kernel's reach); planes whose ranges still overlap are put in one work item.
    let reach = s.reach()[0];
    let colors = reach.div_ceil(s.stride[0]).max(1);
    dx.par_chunks_mut(d * in_plane).enumerate().for_each(|(b, dxb)| {
        for color in 0..colors {
            let mut items: Vec<(Range<usize>, Vec<usize>)> = Vec::new();
            for oz in (color..od).step_by(colors) {
                let r = planes_written(s, oz);
                if r.is_empty() {
                    continue;
                }
                match items.last_mut() {
                    Some((prev, list)) if r.start < prev.end => {
                        prev.end = prev.end.max(r.end);
                        list.push(oz);
                    }
                    _ => items.push((r, vec![oz])),
                }
            }
            // Disjoint mutable slices, one per item (ranges increase with oz).
            let mut rest: &mut [f32] = dxb;
            let mut consumed = 0;
            let mut work = Vec::with_capacity(items.len());
            for (r, list) in items {
                let tail = std::mem::take(&mut rest);
                let (_, tail) = tail.split_at_mut((r.start - consumed) * in_plane);
                let (mine, tail) = tail.split_at_mut(r.len() * in_plane);
                rest = tail;
                consumed = r.end;
                work.push((r.start, mine, list));
            }
            work.into_par_iter().for_each(|(z0, slice, list)| {
                for oz in list {
                    let dyp = &dy[(b * od + oz) * out_plane * oc..][..out_plane * oc];
                    plane_input_grad(dyp, &wr, s, oz, z0, slice);
                }
            });
        }
    });
    dx
}

/// [`backward_input`] of a pointwise convolution with stride 1: `dX[v] = sum_oc dY[v, oc] *
/// W[oc, ic]`, tiles of voxels in parallel, each writing its own rows of `dx`.
fn pointwise_input_grad(dy: &[f32], wr: &PackedB, s: &ConvShape, dx: &mut [f32]) {
    let (oc, ic) = (s.out_channels, s.in_channels);
    // Tiles of up to 16 register tiles, at least two per thread where the rows allow: the
    // last stages' 144 rows (2x6x6 voxels, a batch of 2) made one tile, one thread's work.
    let threads = rayon::current_num_threads().max(1);
    let rows = dx.len() / ic.max(1);
    let tile = rows.div_ceil(2 * threads).next_multiple_of(MR).clamp(MR, 16 * MR);
    dx.par_chunks_mut(tile * ic).enumerate().for_each(|(t, out)| {
        let rows = out.len() / ic;
        SCRATCH.with_borrow_mut(|(_, _, tail)| {
            // SAFETY: dY's rows t * tile .. + rows hold oc values each (oc = wr's k); `out` is
            // this item's own rows of dX, ic values each (wr's n).
            unsafe {
                matmul(
                    dy.as_ptr().add(t * tile * oc),
                    oc,
                    rows,
                    wr,
                    0..wr.panel_count(),
                    out.as_mut_ptr(),
                    ic,
                    tail,
                    None,
                );
            }
        });
    });
}

/// Rows of `dP` per tile: `rows * k` values stay near 512 KiB.
fn tile_rows(k: usize) -> usize {
    ((128 * 1024) / k.max(1)).clamp(MR, 16 * MR) / MR * MR
}

/// One output plane's share of [`backward_input`]: `dyp` its rows of `dY`, `slice` the input
/// planes from `z0` that it adds into.
fn plane_input_grad(dyp: &[f32], wr: &PackedB, s: &ConvShape, oz: usize, z0: usize, slice: &mut [f32]) {
    let (oc, ic, k) = (s.out_channels, s.in_channels, s.k());
    let [_, h, wd] = s.input;
    let [_, _, ow] = s.output;
    let rows_total = dyp.len() / oc;
    let tile = tile_rows(k);
    // Only the depth taps this plane reads from the volume: the others' columns of dP would be
    // added nowhere (`source` is None for them). dP's columns are tap-major, a depth tap's
    // `kh * kw * ic` of them consecutive: the panels covering those of the taps read (the
    // last stages, two planes deep under a 3-deep kernel, read two thirds of it per plane).
    let plane = s.kernel[1] * s.kernel[2];
    let per_tap = plane * ic;
    let read = s.depth_taps_of(oz);
    let panels = (read.start * per_tap / NR)..(read.end * per_tap).div_ceil(NR).min(wr.panel_count());
    SCRATCH.with_borrow_mut(|(_, dp, tail)| {
        for first in (0..rows_total).step_by(tile) {
            let rows = tile.min(rows_total - first);
            dp.clear();
            dp.resize(rows * k, 0.0);
            // SAFETY: `dyp` holds rows_total rows of oc values (oc = wr's k), `rows` of them
            // from `first`; `dp` rows * k values (k = wr's n), this thread's own.
            unsafe {
                matmul(
                    dyp.as_ptr().add(first * oc),
                    oc,
                    rows,
                    wr,
                    panels.clone(),
                    dp.as_mut_ptr(),
                    k,
                    tail,
                    None,
                );
            }
            for (r, grads) in dp.chunks_exact(k).enumerate() {
                let v = first + r;
                let (oy, ox) = (v / ow, v % ow);
                for t in read.start * plane..read.end * plane {
                    let Some(src) = source(s, [oz, oy, ox], tap_of(s, t)) else {
                        continue;
                    };
                    // `src` is a voxel of this batch item; its plane lies in the slice (the
                    // planes `planes_written` gave for oz).
                    let z = src / (h * wd);
                    let at = (src - z0 * h * wd) * ic;
                    debug_assert!(z >= z0 && at + ic <= slice.len());
                    slice[at..at + ic]
                        .iter_mut()
                        .zip(&grads[t * ic..(t + 1) * ic])
                        .for_each(|(x, g)| *x += g);
                }
            }
        }
    });
}

/// The gradient of the bias: channels-last `dy` (`channels` values per row) summed over its
/// rows, per channel (in `f64`, then rounded).
pub(crate) fn backward_bias(dy: &[f32], channels: usize) -> Vec<f32> {
    if channels == 0 {
        return Vec::new();
    }
    let rows_per_chunk = (1usize << 16) / channels + 1;
    dy.par_chunks(rows_per_chunk * channels)
        .map(|chunk| {
            let mut sums = vec![0.0f64; channels];
            for row in chunk.chunks_exact(channels) {
                sums.iter_mut().zip(row).for_each(|(s, &v)| *s += f64::from(v));
            }
            sums
        })
        .reduce(
            || vec![0.0f64; channels],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        )
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919 % 1013) as f32 / 506.0) - 1.0)
            .collect()
    }

    fn max_error(got: &[f32], expected: &[f32]) -> f32 {
        assert_eq!(got.len(), expected.len());
        let scale = expected.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        got.iter().zip(expected).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    }

    /// A seeded xorshift generator of integers in `lo..=hi`, for the random-geometry tests.
    pub(super) fn xorshift(mut state: u64) -> impl FnMut(usize, usize) -> usize {
        move |lo: usize, hi: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            lo + (state % (hi - lo + 1) as u64) as usize
        }
    }

    /// The weight gradient with planes skipping depth taps (2x6x6 output under a 3-deep kernel)
    /// is the same, bit for bit, on 1, 2, 3 and 8 threads: each column's sum is grouped by its
    /// own panel, not by the work item's (a review found 3129 of 110592 values off by up to
    /// 1.9e-6 between 1 and 8 threads when the skipped voxels were chosen per item).
    #[test]
    fn the_planes_weight_gradient_does_not_depend_on_the_threads() {
        let s = ConvShape::for_test(2, 64, 64, [2, 6, 6], [3, 3, 3], [1; 3], [1; 3], [1; 3], false);
        let x = values(s.input_len(), 11);
        let dy = values(s.output_len(), 12);
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| backward_weight(Kernel::detect(), &x, &dy, &s))
        };
        let one = on(1);
        for threads in [2, 3, 8] {
            let got = on(threads);
            let differ = got.iter().zip(&one).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{threads} threads against 1");
        }
    }

    /// `got` against `want`: NaN at the same places, the same infinities, else within `1e-5`
    /// of `want`'s largest finite magnitude.
    fn same(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        let scale = want
            .iter()
            .filter(|v| v.is_finite())
            .fold(1e-6f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert_eq!(a.is_nan(), b.is_nan(), "{what} at {i}: {a} vs {b}");
            if !a.is_nan() && a != b {
                assert!((a - b).abs() <= 1e-5 * scale, "{what} at {i}: {a} vs {b}");
            }
        }
    }

    /// Output planes that read only some depth taps from the volume (two to four planes under
    /// a 3-deep kernel, short lines: the gathered forward product, the input gradient by
    /// planes, the weight gradient by panels) skip the others per plane: random geometries
    /// against the channels-first passes on the whole kernel, with finite values, an infinity
    /// in the kernel (the forward pass's NaN where it meets padding kept), and NaN and an
    /// infinity in dY (the weight gradient's NaN kept). [`ConvShape::depth_taps_of`] against
    /// the slices each tap reads.
    #[test]
    fn planes_skip_the_depth_taps_they_do_not_read() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let mut done = 0;
        while done < 12 {
            let (n, ic, oc) = (next(1, 2), next(16, 40), next(16, 48));
            let input = [next(2, 5), next(6, 9), next(5, 8)];
            let stride = [next(1, 2), 1, 1];
            let padding = [next(1, 2), 1, next(0, 1)];
            let s = ConvShape::for_test(n, ic, oc, input, [3, 3, 3], stride, padding, [1; 3], false);
            for oz in 0..s.output[0] {
                let reads = |t: usize| {
                    let z = (oz * stride[0] + t) as isize - padding[0] as isize;
                    z >= 0 && z < input[0] as isize
                };
                let want: Vec<usize> = (0..3).filter(|&t| reads(t)).collect();
                assert_eq!(s.depth_taps_of(oz).collect::<Vec<_>>(), want, "{s:?} plane {oz}");
            }
            let planes = (0..s.output[0]).any(|oz| s.depth_taps_of(oz).len() < s.depth_taps_read().len());
            if done == 0 {
                // A one-deep kernel takes any dilation (`on`): its sums may not overflow.
                let huge = ConvShape::for_test(
                    1,
                    4,
                    8,
                    [2, 3, 3],
                    [1, 3, 3],
                    [1; 3],
                    [1; 3],
                    [isize::MAX as usize, 1, 1],
                    false,
                );
                let taps: Vec<_> = (0..huge.output[0]).map(|oz| huge.depth_taps_of(oz)).collect();
                assert!(
                    taps[0].is_empty() && taps[1] == (0..1) && taps[2] == (0..1) && taps[3].is_empty(),
                    "{taps:?}"
                );
            }
            if few(&s) || !planes {
                continue;
            }
            let [d, h, w] = s.input;
            let [od, oh, ow] = s.output;
            let x = values(s.input_len(), done);
            let mut wt = values(s.weight_len(), done + 1);
            let mut dy = values(s.output_len(), done + 2);
            let (wl, yl) = (wt.len(), dy.len());
            match done % 3 {
                1 => wt[next(0, wl - 1)] = f32::INFINITY,
                2 => {
                    dy[next(0, yl - 1)] = f32::NAN;
                    dy[next(0, yl - 1)] = f32::NEG_INFINITY;
                }
                _ => {}
            }
            let (xl, dyl) = (
                to_channels_last(&x, [n, ic, d, h, w]),
                to_channels_last(&dy, [n, oc, od, oh, ow]),
            );
            for k in Kernel::here() {
                let y = to_channels_first(&forward(k, &xl, &wt, None, &s), [n, od, oh, ow, oc]);
                same(&y, &conv::forward(k, &x, &wt, None, &s), "forward");
                let dx = to_channels_first(&backward_input(k, &dyl, &wt, &s), [n, d, h, w, ic]);
                same(&dx, &conv::backward_input(k, &dy, &wt, &s), "input gradient");
                let dw = backward_weight(k, &xl, &dyl, &s);
                same(&dw, &conv::backward_weight(k, &x, &dy, &s), "weight gradient");
            }
            done += 1;
        }
    }

    /// Every pass against the channels-first passes (themselves checked against the
    /// definition in `channels_first.rs`), on shapes with remainders everywhere.
    #[test]
    fn every_pass_matches_the_channels_first_one() {
        #[allow(clippy::type_complexity)]
        let cases: [(
            usize,
            usize,
            usize,
            [usize; 3],
            [usize; 3],
            [usize; 3],
            [usize; 3],
            bool,
        ); 18] = [
            (2, 64, 16, [4, 8, 8], [1, 1, 1], [1, 1, 1], [0, 0, 0], false),
            // Winograd forward and input gradient with paddings 0, 2 and 1 (the gradient's
            // product padded by 2, 0 and 1).
            (2, 16, 24, [6, 9, 11], [3, 3, 3], [1, 1, 1], [0, 2, 1], false),
            (2, 32, 64, [5, 6, 7], [3, 3, 3], [1, 1, 1], [1, 1, 1], false),
            (1, 32, 40, [6, 9, 20], [3, 3, 3], [2, 2, 2], [1, 1, 1], false),
            (2, 64, 32, [4, 8, 9], [1, 3, 3], [2, 2, 2], [0, 0, 0], false),
            (2, 32, 64, [4, 6, 6], [1, 1, 1], [2, 2, 2], [0, 0, 0], false),
            (2, 32, 16, [5, 6, 6], [3, 3, 3], [2, 1, 1], [1, 1, 1], true),
            (1, 3, 5, [5, 6, 7], [3, 3, 3], [1, 1, 1], [1, 1, 1], false),
            (1, 1, 8, [9, 20, 20], [7, 7, 7], [2, 2, 2], [3, 3, 3], false),
            // Few channels over full lines of register tiles (the products kept over every
            // kernel row): a one-channel stem, two panels, the second clipped; three channels.
            (2, 1, 40, [9, 12, 48], [7, 7, 7], [2, 2, 2], [3, 3, 3], false),
            (1, 3, 16, [4, 5, 24], [3, 3, 3], [1, 1, 1], [1, 1, 1], true),
            (2, 64, 64, [1, 3, 3], [3, 3, 3], [1, 1, 1], [1, 1, 1], false),
            // Weight gradients split over the voxels (4096 output voxels or more, a small
            // kernel): a one-channel stem, a pointwise convolution, and three channels with
            // replicate depth padding.
            (2, 1, 64, [9, 32, 64], [7, 7, 7], [2, 2, 2], [3, 3, 3], false),
            (2, 24, 20, [8, 16, 16], [1, 1, 1], [1, 1, 1], [0, 0, 0], false),
            (1, 3, 32, [8, 24, 24], [3, 3, 3], [1, 1, 1], [1, 1, 1], true),
            // Winograd weight gradients (512 tiles or more for 16 to 31 channels): paddings 1,
            // then 0, 2 and 1, then replicate depth padding.
            (2, 16, 24, [14, 16, 17], [3, 3, 3], [1, 1, 1], [1, 1, 1], false),
            (2, 20, 18, [15, 14, 18], [3, 3, 3], [1, 1, 1], [0, 2, 1], false),
            (1, 16, 16, [16, 16, 16], [3, 3, 3], [1, 1, 1], [1, 1, 1], true),
        ];
        for (case, (n, ic, oc, input, kernel, stride, padding, replicate)) in cases.into_iter().enumerate() {
            let s = ConvShape::for_test(n, ic, oc, input, kernel, stride, padding, [1; 3], replicate);
            let [d, h, w] = s.input;
            let [od, oh, ow] = s.output;
            let x = values(s.input_len(), 1);
            let wt = values(s.weight_len(), 2);
            let dy = values(s.output_len(), 3);
            let bias = values(oc, 4);
            let (xl, dyl) = (
                to_channels_last(&x, [n, ic, d, h, w]),
                to_channels_last(&dy, [n, oc, od, oh, ow]),
            );
            // The last three cases are there for the Winograd weight gradient: they take it.
            if case >= cases.len() - 3 {
                let wg = winograd_weight_grad(Kernel::detect(), &xl, &dyl, &s);
                assert!(wg.is_some(), "{s:?} takes the Winograd weight gradient");
            }
            if (12..15).contains(&case) {
                let rows = n * od * oh * ow;
                assert!(split_voxels(oc, s.k(), rows, 1) > 1, "{s:?} splits its weight gradient");
            }
            for k in Kernel::here() {
                let y = to_channels_first(&forward(k, &xl, &wt, Some(&bias), &s), [n, od, oh, ow, oc]);
                let e = max_error(&y, &conv::forward(k, &x, &wt, Some(&bias), &s));
                assert!(e < 1e-5, "{k:?} forward {s:?}: {e}");
                let dx = to_channels_first(&backward_input(k, &dyl, &wt, &s), [n, d, h, w, ic]);
                let e = max_error(&dx, &conv::backward_input(k, &dy, &wt, &s));
                assert!(e < 1e-5, "{k:?} input gradient {s:?}: {e}");
                let e = max_error(
                    &backward_weight(k, &xl, &dyl, &s),
                    &conv::backward_weight(k, &x, &dy, &s),
                );
                assert!(e < 1e-5, "{k:?} weight gradient {s:?}: {e}");
            }
            let ov: usize = s.output.iter().product();
            // Summed in f64, as `backward_bias` does (an f32 sum of the larger cases' 7616 values
            // is itself off by 2e-5).
            let sums: Vec<f32> = (0..oc)
                .map(|o| {
                    (0..n)
                        .flat_map(|b| &dy[(b * oc + o) * ov..][..ov])
                        .map(|&v| f64::from(v))
                        .sum::<f64>() as f32
                })
                .collect();
            let e = max_error(&backward_bias(&dyl, oc), &sums);
            assert!(e < 1e-5, "bias gradient {s:?}: {e}");
        }
    }

    /// Convolutions that read some depth taps only in the padding: their gradients run on the
    /// taps they read ([`cropped`]); the three passes against the channels-first ones on the
    /// whole kernel, with finite values, with an infinity in a dropped tap (the forward pass's
    /// NaN kept), and with NaN in dY (the dropped taps' NaN gradient kept).
    #[test]
    fn cropped_depth_taps_give_the_whole_kernels_results() {
        for (n, c, input, stride) in [
            (2, 32, [1, 5, 4], [1, 1, 1]),
            (1, 16, [2, 6, 6], [2, 2, 2]),
            (2, 8, [1, 9, 9], [1, 2, 2]),
        ] {
            let s = ConvShape::for_test(n, c, c + 3, input, [3, 3, 3], stride, [1, 1, 1], [1; 3], false);
            let (taps, cs) = (s.depth_taps_read(), cropped(&s).map(|(c, _)| c));
            assert!(taps.len() < 3 && cs.is_some(), "{s:?}: taps {taps:?}");
            let [d, h, w] = s.input;
            let [od, oh, ow] = s.output;
            let x = values(s.input_len(), 1);
            let mut wt = values(s.weight_len(), 2);
            let mut dy = values(s.output_len(), 3);
            for round in 0..3 {
                if round == 1 {
                    // An infinity in a tap that reads only padding.
                    let dropped = if taps.start > 0 { 0 } else { 2 };
                    wt[dropped * 9 + 4] = f32::INFINITY;
                }
                if round == 2 {
                    dy[5] = f32::NAN;
                }
                let (xl, dyl) = (
                    to_channels_last(&x, [n, c, d, h, w]),
                    to_channels_last(&dy, [n, c + 3, od, oh, ow]),
                );
                for k in Kernel::here() {
                    let y = to_channels_first(&forward(k, &xl, &wt, None, &s), [n, od, oh, ow, c + 3]);
                    same(&y, &conv::forward(k, &x, &wt, None, &s), "forward");
                    if round == 1 {
                        assert!(y.iter().any(|v| v.is_nan()), "the padding times infinity is NaN");
                    }
                    let dx = to_channels_first(&backward_input(k, &dyl, &wt, &s), [n, d, h, w, c]);
                    same(&dx, &conv::backward_input(k, &dy, &wt, &s), "input gradient");
                    let dw = backward_weight(k, &xl, &dyl, &s);
                    same(&dw, &conv::backward_weight(k, &x, &dy, &s), "weight gradient");
                }
            }
        }
    }

    /// An infinity in the kernel: the input gradient keeps the Winograd product off (it
    /// convolves zero-padded `dY`, and `0 * inf` is NaN), so `dX` is NaN exactly where the
    /// channels-first pass (PyTorch's sum over the taps that reach each voxel) has it: a
    /// hostile review found NaN at the edge voxels where PyTorch is finite.
    #[test]
    fn an_infinite_weight_leaves_the_edges_of_the_input_gradient_finite() {
        let s = ConvShape::for_test(1, 16, 16, [16, 1, 32], [3, 3, 3], [1; 3], [1, 2, 1], [1; 3], false);
        let [d, h, w] = s.input;
        let [od, oh, ow] = s.output;
        let mut wt = values(s.weight_len(), 2);
        let dy = values(s.output_len(), 3);
        let dyl = to_channels_last(&dy, [1, 16, od, oh, ow]);
        let k = Kernel::detect();
        assert!(
            winograd_input_grad(k, &dyl, &wt, &s).is_some(),
            "with finite weights this shape takes the Winograd input gradient"
        );
        // The corner tap (0, 0, 0) of one (output, input) pair: it never reaches the last
        // voxel of a row, nor the last plane.
        wt[(3 * 16 + 5) * 27] = f32::INFINITY;
        let dx = to_channels_first(&backward_input(k, &dyl, &wt, &s), [1, d, h, w, 16]);
        let want = conv::backward_input(k, &dy, &wt, &s);
        let nan = |v: &[f32]| v.iter().filter(|x| x.is_nan()).count();
        assert!(
            want.iter().any(|v| !v.is_finite()) && nan(&want) < want.len(),
            "the infinity reaches some voxels, not all"
        );
        for (i, (a, b)) in dx.iter().zip(&want).enumerate() {
            assert_eq!(a.is_finite(), b.is_finite(), "dX at {i}: {a} vs {b}");
            if b.is_finite() {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "dX at {i}: {a} vs {b}");
            }
        }
    }

    /// A padding near `isize::MAX / 2` (which the geometry's check accepts): the weight
    /// gradient's gather clips each kernel row in voxels, so nothing overflows and the
    /// windows far into the padding read zeros (a hostile review's probe: the values' offset
    /// `x0 * ic` wrapped, and every output read the input).
    #[test]
    fn a_padding_near_the_limit_reads_only_zeros() {
        let p = 1usize << 60;
        let s = ConvShape::for_test(1, 16, 1, [1, 22, 1], [1, 1, 1], [1, 1, p], [0, 0, p], [1; 3], false);
        assert_eq!(s.output, [1, 22, 3]);
        let x = values(s.input_len(), 5);
        let dy = values(s.output_len(), 6);
        // Only the middle output column reads the input (x = 0): dW[0][c] = sum over y of
        // dY[y][1] * x[y][c].
        let expected: Vec<f32> = (0..16)
            .map(|c| (0..22).map(|y| dy[y * 3 + 1] * x[y * 16 + c]).sum())
            .collect();
        for k in Kernel::here() {
            let e = max_error(&backward_weight(k, &x, &dy, &s), &expected);
            assert!(e < 1e-5, "{k:?}: {e}");
        }
    }
}
