//! The kernel's gradient of the channels-last convolution ([`backward_weight`]): Winograd's
//! transforms where they pay, else the direct product of `dY` with the input's gathered
//! patches, split over the voxels where the gradient is small.

use std::ops::Range;

use rayon::prelude::*;

use super::{PADDED, SCRATCH, conv, cropped, few, first};
use crate::arch::geometry::ConvShape;
use crate::kernels::buffers::{RECYCLED, View, recycled_to_write, recycled_zeros, zeros};
use crate::kernels::conv::WINOGRAD_CHANNELS;
use crate::kernels::implicit;
use crate::kernels::matmul::{A_TRANSPOSED, KC, Kernel, MR, NR, pack_row, product};
use crate::kernels::parallel::SendPtr;
use crate::kernels::winograd_axis::Tile;
use crate::kernels::winograd_grad;

/// Columns of a panel of gathered patches (tap-major) that lie side by side in one kernel
/// row: [`backward_weight`]'s unit of copying.
#[derive(Debug, Clone, Copy)]
struct PatchRun {
    /// The run's first column in its panel.
    col: usize,
    /// Its kernel row, `[kd, kh]`.
    row: [usize; 2],
    /// Its first value within the kernel row's `kw x ic` values.
    first: usize,
    /// Its length.
    len: usize,
}

/// The runs of patch columns `cols` (tap-major, `(tap, ic)`), each column numbered from
/// `cols.start`: a kernel row (kd, kh) holds `kw x ic` values, which lie side by side in the
/// input (dilation 1), so that a voxel's values of a run are one copy, clipped where the
/// window crosses the input's edge.
fn patch_runs(s: &ConvShape, cols: Range<usize>) -> Vec<PatchRun> {
    let [_, kh_n, kw_n] = s.kernel;
    let row_len = (kw_n * s.in_channels).max(1);
    let (mut q, mut runs) = (cols.start, Vec::new());
    while q < cols.end {
        let (r, e) = (q / row_len, q % row_len);
        let len = (row_len - e).min(cols.end - q);
        runs.push(PatchRun {
            col: q - cols.start,
            row: [r / kh_n, r % kh_n],
            first: e,
            len,
        });
        q += len;
    }
    runs
}

/// The window of output voxel `v` (flat over the batch): its batch item, its first input
/// coordinates (negative within the padding), and whether it lies inside the input.
fn voxel_window(s: &ConvShape, v: usize) -> (usize, [isize; 3], bool) {
    let [od, oh, ow] = s.output;
    let ov = od * oh * ow;
    let o = [(v % ov) / (oh * ow), (v / ow) % oh, v % ow];
    let first = [0, 1, 2].map(|a| (o[a] * s.stride[a]) as isize - s.padding[a] as isize);
    let inside = (0..3).all(|a| first[a] >= 0 && first[a] as usize + s.kernel[a] <= s.input[a]);
    (v / ov, first, inside)
}

/// Into how many runs of voxels the direct weight gradient splits its sum (1: none; then each
/// item takes a few panels over every voxel): where the gradient (`oc x k` values) is small
/// enough to keep a copy per item, the voxels (`rows`) many, and the turned-around product
/// (`k` on the register tile's rows, `oc` on its columns) takes no more register tiles than
/// the panels' (`oc` on rows, `k` on columns): with few output channels most of its columns
/// would be padding (64 -> 4 and 3 -> 8 channels 1.3-1.4x slower split, a review's timing).
pub(super) fn split_voxels(oc: usize, k: usize, rows: usize, threads: usize) -> usize {
    let turned = k.div_ceil(MR) * oc.div_ceil(NR);
    let panels = oc.div_ceil(MR) * k.div_ceil(NR);
    if oc * k > 1 << 17 || turned > panels {
        return 1;
    }
    (rows / (8 * KC)).min(2 * threads).max(1)
}

/// [`patch_row`] for a window inside the input and runs of whole kernel rows (`offsets`: each
/// row's first value from the window's), in fixed steps of 8 values; what a step writes past
/// its run the next run overwrites, or lies past the columns (`row` holds 8 more values than
/// the runs). `false`, having written nothing, where that does not apply (a window that
/// crosses the padding, or steps that would read past the input).
fn whole_rows(
    row: &mut [f32],
    offsets: &[usize],
    x: &[f32],
    s: &ConvShape,
    (b, [z0, y0, x0], inside): (usize, [isize; 3], bool),
) -> bool {
    let [d, h, wd] = s.input;
    let len = s.kernel[2] * s.in_channels;
    let padded = len.next_multiple_of(8);
    if !inside || offsets.len() * len + 8 > row.len() {
        return false;
    }
    let start = (((b * d + z0 as usize) * h + y0 as usize) * wd + x0 as usize) * s.in_channels;
    let Some(&last) = offsets.last() else {
        return true;
    };
    if start + last + padded > x.len() {
        return false;
    }
    for (r, &off) in offsets.iter().enumerate() {
        let (src, dst) = (&x[start + off..][..padded], &mut row[r * len..][..padded]);
        let (dst, _) = dst.as_chunks_mut::<8>();
        let (src, _) = src.as_chunks::<8>();
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
    }
    true
}

/// Writes into `row` the input values of `runs` (their columns) under the window of output
/// voxel `(b, first, inside)`: its batch item, its window's first input coordinates (negative
/// within the padding), and whether the window lies inside the input; zeros where the window
/// reads padding, and in the columns from `filled` on (every column outside the runs lies
/// there).
fn patch_row(
    row: &mut [f32],
    runs: &[PatchRun],
    x: &[f32],
    s: &ConvShape,
    (b, [z0, y0, x0], inside): (usize, [isize; 3], bool),
    filled: usize,
) {
    let [d, h, wd] = s.input;
    let ic = s.in_channels;
    let kw_n = s.kernel[2];
    if inside {
        // Every run whole, in column order, each from its input row: in steps of
        // 8 values (a fixed-size move, not a call) where the last step fits the
        // row and the input; what a step writes past its run, the next run or
        // the zeros past `filled` overwrite.
        let window = ((b * d + z0 as usize) * h + y0 as usize) * wd + x0 as usize;
        for &PatchRun {
            col,
            row: [kd, kh],
            first: e0,
            len,
        } in runs
        {
            let at = (window + (kd * h + kh) * wd) * ic + e0;
            let padded = len.next_multiple_of(8);
            if col + padded <= row.len() && at + padded <= x.len() {
                for i in (0..len).step_by(8) {
                    row[col + i..][..8].copy_from_slice(&x[at + i..][..8]);
                }
            } else {
                row[col..col + len].copy_from_slice(&x[at..at + len]);
            }
        }
        row[filled..].fill(0.0);
        return;
    }
    row.fill(0.0);
    for &PatchRun {
        col,
        row: [kd, kh],
        first: e0,
        len,
    } in runs
    {
        let z = z0 + kd as isize;
        let z = if s.replicate_depth {
            z.clamp(0, d as isize - 1)
        } else {
            z
        };
        let y = y0 + kh as isize;
        if z < 0 || z >= d as isize || y < 0 || y >= h as isize {
            continue;
        }
        // Values e0..e0 + len of the kernel row (value e: input voxel x0 + e / ic,
        // channel e % ic), those whose voxels lie within the input row: the
        // kernel row's voxels vlo..vhi, clipped in voxels, not values (x0 * ic
        // would overflow for a padding near isize::MAX / 2, which `on` accepts).
        let kw_i = kw_n as isize;
        let (vlo, vhi) = (
            (-x0).clamp(0, kw_i) as usize,
            (wd as isize - x0).clamp(0, kw_i) as usize,
        );
        let (lo, hi) = (e0.max(vlo * ic), (e0 + len).min(vhi * ic));
        if lo >= hi {
            continue;
        }
        // x0 + vlo >= 0: the first voxel of the row within the input.
        let voxel = ((b * d + z as usize) * h + y as usize) * wd + (x0 + vlo as isize) as usize;
        let at = voxel * ic + (lo - vlo * ic);
        let dst = col + (lo - e0);
        row[dst..dst + (hi - lo)].copy_from_slice(&x[at..at + (hi - lo)]);
    }
}

/// The gradient of [`forward`]'s kernel for the input `x` and output gradient `dy` (both
/// channels-last): `[oc, ic, kd, kh, kw]`, summed over the batch. Dilation must be 1 (the
/// caller's check).
pub(crate) fn backward_weight(kernel: Kernel, x: &[f32], dy: &[f32], s: &ConvShape) -> Vec<f32> {
    assert!(
        x.len() == s.input_len() && dy.len() == s.output_len() && s.dilation == [1, 1, 1],
        "conv3d: lengths do not fit {s:?}"
    );
    // The dropped taps' gradient is a sum of dY times zero padding: zero where dY is finite
    // (NaN otherwise, which the full product gives).
    if let Some((c, taps)) = cropped(s)
        && dy.par_chunks(1 << 16).all(|c| c.iter().all(|v| v.is_finite()))
    {
        let dwc = backward_weight(kernel, x, dy, &c);
        let plane = s.kernel[1] * s.kernel[2];
        let (per, kept) = (s.kernel[0] * plane, taps.len() * plane);
        // Every value written: the kept taps' gradient, zeros for the others.
        let mut dw = recycled_to_write(s.weight_len());
        let (lo, hi) = (taps.start * plane, taps.end * plane);
        dw.par_chunks_mut(per.max(1))
            .zip(dwc.par_chunks(kept.max(1)))
            .for_each(|(dst, src)| {
                dst[..lo].fill(0.0);
                dst[lo..hi].copy_from_slice(src);
                dst[hi..].fill(0.0);
            });
        RECYCLED.give(dwc);
        return dw;
    }
    let (oc, ic, k) = (s.out_channels, s.in_channels, s.k());
    let taps = s.kernel.iter().product::<usize>();
    let [od, oh, ow] = s.output;
    let ov = od * oh * ow;
    if !few(s)
        && let Some(dw) = winograd_weight_grad(kernel, x, dy, s)
    {
        return dw;
    }
    if few(s) {
        // The voxels are too few for the kernel's layout to pay: the channels-first pass.
        return conv::backward_weight(kernel, &first(x, s.input_dims()), &first(dy, s.output_dims()), s);
    }
    // dW (its columns tap-major, `(tap, ic)`) = dY^T B over the voxels, B the input's
    // gathered patches: dY read in place as the transpose of the product's A, B gathered per
    // block of voxels and panel of columns.
    let rows = s.batch * ov;
    let mut dwr = recycled_zeros(oc * k);
    let panels = k.div_ceil(NR);
    let threads = rayon::current_num_threads().max(1);
    let chunks = split_voxels(oc, k, rows, threads);
    if chunks > 1 {
        // Split over the voxels, each item into a C of its own, and the product turned
        // around: dW^T (k x oc) = B^T dY, the patches of a block of voxels gathered whole
        // (one run per kernel row) as the transposed A, read in place, and dY's rows packed
        // as B. `dy` is read and the patches gathered once, where items of a few panels each
        // would read `dy` again and gather their own columns (the stem's 1 -> 64 7x7x7
        // gradient on 2x1x32x96x96, alone: 17.2 -> 10.0 ms).
        let every = patch_runs(s, 0..k);
        // Each kernel row's first value, from the window's first.
        let [_, h, wd] = s.input;
        let offsets: Vec<usize> = every.iter().map(|r| (r.row[0] * h + r.row[1]) * wd * ic).collect();
        let stride = k + 8;
        let per = rows.div_ceil(chunks).next_multiple_of(KC);
        let partials: Vec<Vec<f32>> = (0..rows.div_ceil(per))
            .into_par_iter()
            .map(|i| {
                let mut ct = recycled_zeros(k * oc);
                let mut patches = zeros(KC * stride);
                for kb in (i * per..((i + 1) * per).min(rows)).step_by(KC) {
                    let voxels = kb..(kb + KC).min(rows);
                    for (row, v) in patches.chunks_exact_mut(stride).zip(voxels.clone()) {
                        let window = voxel_window(s, v);
                        if !whole_rows(row, &offsets, x, s, window) {
                            patch_row(row, &every, x, s, window, k);
                        }
                    }
                    let pack = |ks: Range<usize>, j: usize, buf: &mut [f32]| {
                        let cols = (oc - j * NR).min(NR);
                        for (row, v) in buf.chunks_exact_mut(NR).zip(ks) {
                            pack_row(row, &dy[(kb + v) * oc + j * NR..][..cols]);
                        }
                    };
                    SCRATCH.with_borrow_mut(|(scratch, _, _)| {
                        // SAFETY: `patches` holds `voxels.len()` rows of `stride >= k` values:
                        // A (k x voxels) stored transposed; `ct` is this item's own, k rows
                        // of oc values.
                        unsafe {
                            product::<A_TRANSPOSED>(
                                kernel,
                                patches.as_ptr(),
                                stride,
                                k,
                                voxels.len(),
                                oc,
                                0..oc.div_ceil(NR),
                                pack,
                                ct.as_mut_ptr(),
                                oc,
                                scratch,
                            );
                        }
                    });
                }
                ct
            })
            .collect();
        let mut partials = partials.into_iter();
        if let Some(mut ct) = partials.next() {
            for p in partials {
                ct.par_chunks_mut(1 << 14)
                    .zip(p.par_chunks(1 << 14))
                    .for_each(|(d, p)| d.iter_mut().zip(p).for_each(|(d, p)| *d += p));
                RECYCLED.give(p);
            }
            dwr.par_chunks_mut(k).enumerate().for_each(|(o, row)| {
                row.iter_mut().zip(ct.chunks_exact(oc)).for_each(|(d, c)| *d = c[o]);
            });
            RECYCLED.give(ct);
        }
    } else {
        let per_item = panels.div_ceil(4 * threads).clamp(1, 4);
        let out = SendPtr(dwr.as_mut_ptr());
        // Per panel, only the voxels of planes that read one of its depth taps from the volume
        // (dW's columns are tap-major): the others' patches hold zero padding there, and add
        // nothing where dY is finite (NaN otherwise, which the whole sum gives). The last
        // stages, two planes deep under a 3-deep kernel, skip a third of the product.
        let skips = (0..od).any(|oz| s.depth_taps_of(oz).len() < s.kernel[0]);
        let finite = skips && dy.par_chunks(1 << 16).all(|c| c.iter().all(|v| v.is_finite()));
        let per_tap = k / s.kernel[0].max(1);
        (0..panels.div_ceil(per_item)).into_par_iter().for_each(|item| {
            let mine = item * per_item..((item + 1) * per_item).min(panels);
            let first_panel = mine.start;
            let out = &out;
            // Per panel (not per item, whose panels depend on the thread count: a column's
            // sums are grouped the same way on any number of threads), the voxels it sums over;
            // consecutive panels with the same voxels in one product.
            let voxels_of = |j: usize| -> Vec<Range<usize>> {
                match finite {
                    true => voxels_reading(s, j * NR / per_tap..(((j + 1) * NR).min(k) - 1) / per_tap + 1),
                    false => std::iter::once(0..rows).collect(),
                }
            };
            let mut groups: Vec<(Range<usize>, Vec<Range<usize>>)> = Vec::new();
            for j in mine.clone() {
                let voxels = voxels_of(j);
                match groups.last_mut() {
                    Some((panels, same)) if *same == voxels => panels.end = j + 1,
                    _ => groups.push((j..j + 1, voxels)),
                }
            }
            // This item's runs per panel, their columns within the panel.
            let runs: Vec<Vec<PatchRun>> = mine
                .clone()
                .map(|j| patch_runs(s, j * NR..((j + 1) * NR).min(k)))
                .collect();
            // Per block of voxels (rows of B): each voxel's window.
            let mut block: (usize, Vec<(usize, [isize; 3], bool)>) = (usize::MAX, Vec::new());
            for (group, range) in groups.iter().flat_map(|(g, v)| v.iter().map(move |r| (g, r))) {
                let (group, range) = (group.clone(), range.clone());
                let v0 = range.start;
                let pack = |ks: Range<usize>, j: usize, buf: &mut [f32]| {
                    if block.0 != v0 + ks.start {
                        block.0 = v0 + ks.start;
                        block.1.clear();
                        block.1.extend(ks.clone().map(|v| voxel_window(s, v0 + v)));
                    }
                    let filled = ((j + 1) * NR).min(k) - j * NR;
                    for (row, &voxel) in buf.chunks_exact_mut(NR).zip(&block.1) {
                        patch_row(row, &runs[j - first_panel], x, s, voxel, filled);
                    }
                };
                SCRATCH.with_borrow_mut(|(scratch, _, _)| {
                    // `dy` holds `rows` rows of oc values: A (oc x rows) stored transposed, `oc`
                    // apart, of which the voxels of `range` (within `rows`: `voxels_reading`)
                    // from row v0. SAFETY: as just said; `dwr` holds oc rows of k values, this
                    // item alone touching the columns of `mine` (k's panels), `group` among them.
                    unsafe {
                        product::<A_TRANSPOSED>(
                            kernel,
                            dy.as_ptr().add(v0 * oc),
                            oc,
                            oc,
                            range.len(),
                            k,
                            group,
                            pack,
                            out.0,
                            k,
                            scratch,
                        );
                    }
                });
            }
        });
    }
    // [oc, (tap, ic)] -> [oc, (ic, tap)]; every value written.
    let mut dw = recycled_to_write(oc * k);
    dw.par_chunks_mut(k).zip(dwr.par_chunks(k)).for_each(|(dst, src)| {
        for c in 0..ic {
            for t in 0..taps {
                dst[c * taps + t] = src[t * ic + c];
            }
        }
    });
    RECYCLED.give(dwr);
    dw
}

/// The output voxels (rows `[n, d', h', w']` of dY) whose plane reads one of the depth taps
/// `taps` from the volume ([`ConvShape::depth_taps_of`]), as ranges of consecutive rows.
fn voxels_reading(s: &ConvShape, taps: Range<usize>) -> Vec<Range<usize>> {
    let [od, oh, ow] = s.output;
    let plane = oh * ow;
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for b in 0..s.batch {
        for oz in 0..od {
            let read = s.depth_taps_of(oz);
            if read.start.max(taps.start) >= read.end.min(taps.end) {
                continue;
            }
            let rows = (b * od + oz) * plane..(b * od + oz + 1) * plane;
            match ranges.last_mut() {
                Some(last) if last.end == rows.start => last.end = rows.end,
                _ => ranges.push(rows),
            }
        }
    }
    ranges
}

/// Output tiles (2x2x2 voxels) from which the weight gradient by Winograd's transforms beats
/// the direct product here, by the narrower of the layer's channel counts, and the channels
/// (input and output) from which it does at all: below, the transforms cost more than the
/// products they save. Timed on the 2-core AVX-512 machine (Winograd against direct): 64 and
/// 128 channels on 32 tiles no clear winner (0.69-1.62 in a review's alternated runs), 128
/// channels on 72 tiles 1.9 / 3.0 ms, on 108 0.53-0.76x, on 144 3.2 / 5.8 ms; 256 channels on
/// 144 tiles 14.8 / 22.0 ms; 64 channels on 1152 tiles 8.5 / 13.9 ms; 32 channels on 32 tiles
/// 1.28-2.37x slower, on 256 0.51-0.62x; 16 channels on 256 tiles 0.76-1.77x (512 tiles and
/// more pay, as timed before). Width-4 and width-8 layers 1.2-1.4x and a 3 -> 64 layer 4.3x
/// slower (an earlier review).
fn winograd_grad_tiles(channels: usize) -> usize {
    if channels >= 32 { 64 } else { 512 }
}
const WINOGRAD_GRAD_CHANNELS: usize = 16;

/// The kernel's gradient of a 3x3x3 convolution of stride 1 by Winograd's transforms
/// ([`winograd_grad::weight_grad`]), where they pay ([`winograd_grad_tiles`],
/// [`WINOGRAD_GRAD_CHANNELS`]) and the channels fit. `None` elsewhere, and where `x` or `dy` holds an infinity, NaN
/// or a value of `2^48` or more: the transforms' sums would turn an infinity into NaN where
/// the direct product gives PyTorch's numbers (the same rule as the forward pass).
pub(super) fn winograd_weight_grad(kernel: Kernel, x: &[f32], dy: &[f32], s: &ConvShape) -> Option<Vec<f32>> {
    if s.kernel != [3, 3, 3]
        || s.stride != [1, 1, 1]
        || s.dilation != [1, 1, 1]
        || s.out_channels.max(s.in_channels) > WINOGRAD_CHANNELS
        || s.out_channels.min(s.in_channels) < WINOGRAD_GRAD_CHANNELS
        || Tile::F2.tiles(s.batch, s.output) < winograd_grad_tiles(s.out_channels.min(s.in_channels))
    {
        return None;
    }
    let (n, ic) = (s.batch, s.in_channels);
    let [d, h, w] = s.input;
    let [od, oh, ow] = s.output;
    let [dp, hp, wp] = Tile::F2.padded_extent(s.output);
    let [pd, ph, pw] = s.padding;
    // The padded input holds the padding on both sides (always, for stride 1 and a 3-tap
    // kernel: the output is the input plus twice the padding less 2).
    if dp < d + 2 * pd || hp < h + 2 * ph || wp < w + 2 * pw || !implicit::all_moderate(dy) {
        return None;
    }
    let padded = [n, dp, hp, wp, ic];
    let mut xp = PADDED.take(padded.iter().product())?;
    xp.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
    let view = View {
        data: x,
        dims: [n, d, h, w, ic],
    };
    let moderate = implicit::copy_padded(s, view, &mut xp, padded, |dst, src| {
        dst.copy_from_slice(src);
        implicit::all_moderate(src)
    });
    // Every value is written; the buffer comes back from `FusedAdam` once applied.
    let mut dw = recycled_to_write(s.weight_len());
    let done =
        moderate && winograd_grad::weight_grad(kernel, &xp, dy, [n, od, oh, ow, s.out_channels], ic, &PADDED, &mut dw);
    PADDED.give(xp);
    if done {
        Some(dw)
    } else {
        RECYCLED.give(dw);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::channels_last::tap_of;

    /// The weight gradient split over voxels against its definition in f64 (padding read as
    /// zeros, so that an infinity there gives NaN, as PyTorch's product does), on random
    /// geometries that take the split (1-13 input and 16-72 output channels, kernels up to
    /// 5x5x7, strides up to 8, paddings past the kernel, replicate depth padding, batches of
    /// 1-3), each with finite values, a NaN in `x`, an infinity in `dy`, or both: NaN exactly
    /// where the definition has it, else within 1e-4 of the sum of the terms' magnitudes. (A
    /// review ran 390 such geometries on 1, 2 and 7 threads: worst 1.1e-7.)
    #[test]
    fn the_split_weight_gradient_is_its_definition() {
        let mut next = super::super::tests::xorshift(0x9e37_79b9_7f4a_7c15);
        let (mut done, mut tries) = (0, 0);
        while done < 24 && tries < 100_000 {
            tries += 1;
            let (n, ic, oc) = (next(1, 3), [1, 1, 2, 3, 5, 8, 13][next(0, 6)], next(16, 72));
            let kernel = [next(1, 5), next(1, 5), next(1, 7)];
            let stride = [next(1, 4), next(1, 4), next(1, 8)];
            let padding = [0, 1, 2].map(|a| next(0, kernel[a] + 3));
            let replicate = next(0, 2) == 0;
            let input = [next(1, 12), next(1, 24), next(1, 48)];
            let g = crate::arch::geometry::ConvGeometry {
                in_channels: ic,
                out_channels: oc,
                kernel,
                stride,
                padding,
                dilation: [1; 3],
                depth_padding: if replicate {
                    crate::arch::kinds::DepthPadding::Replicate
                } else {
                    crate::arch::kinds::DepthPadding::Zeros
                },
            };
            let Ok(s) = g.on([n, ic, input[0], input[1], input[2]], &"test") else {
                continue;
            };
            let rows = n * s.output.iter().product::<usize>();
            if few(&s) || split_voxels(oc, s.k(), rows, 1) < 2 || rows * oc * s.k() > 8_000_000 {
                continue;
            }
            let mut x: Vec<f32> = (0..s.input_len())
                .map(|_| next(0, 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let mut dy: Vec<f32> = (0..s.output_len())
                .map(|_| next(0, 2000) as f32 / 1000.0 - 1.0)
                .collect();
            if done % 2 == 1 {
                let i = next(0, x.len() - 1);
                x[i] = if done % 4 == 1 { f32::NAN } else { f32::NEG_INFINITY };
            }
            if done % 4 >= 2 {
                let i = next(0, dy.len() - 1);
                dy[i] = if done % 4 == 2 { f32::INFINITY } else { f32::NAN };
            }
            // The definition: dW[o][c][t] = sum over voxels of dY[v][o] x(v, t, c).
            let [d, h, w] = s.input;
            let taps = s.kernel.iter().product::<usize>();
            let (mut want, mut size) = (vec![0f64; s.weight_len()], vec![0f64; s.weight_len()]);
            for v in 0..rows {
                let [b, o] = [v / (rows / n), v % (rows / n)];
                let o = [
                    o / (s.output[1] * s.output[2]),
                    (o / s.output[2]) % s.output[1],
                    o % s.output[2],
                ];
                for t in 0..taps {
                    let tap = tap_of(&s, t);
                    let at = |a: usize| (o[a] * s.stride[a] + tap[a]) as i128 - s.padding[a] as i128;
                    let z = if replicate {
                        at(0).clamp(0, d as i128 - 1)
                    } else {
                        at(0)
                    };
                    let (y, xx) = (at(1), at(2));
                    let inside =
                        (0..d as i128).contains(&z) && (0..h as i128).contains(&y) && (0..w as i128).contains(&xx);
                    for c in 0..ic {
                        let xv = if inside {
                            f64::from(x[(((b * d + z as usize) * h + y as usize) * w + xx as usize) * ic + c])
                        } else {
                            0.0
                        };
                        for oc_i in 0..oc {
                            let term = f64::from(dy[v * oc + oc_i]) * xv;
                            want[(oc_i * ic + c) * taps + t] += term;
                            size[(oc_i * ic + c) * taps + t] += term.abs();
                        }
                    }
                }
            }
            for k in Kernel::here() {
                let got = backward_weight(k, &x, &dy, &s);
                for (i, (&g, (&w, &m))) in got.iter().zip(want.iter().zip(&size)).enumerate() {
                    assert_eq!(g.is_nan(), w.is_nan(), "{k:?} [{i}]: {g} vs {w}, {s:?}");
                    if w.is_finite() {
                        let e = (f64::from(g) - w).abs() / (m + 1e-6);
                        assert!(e <= 1e-4, "{k:?} [{i}]: {g} vs {w} ({e:e}), {s:?}");
                    } else if !w.is_nan() {
                        assert_eq!(f64::from(g), w, "{k:?} [{i}], {s:?}");
                    }
                }
            }
            done += 1;
        }
        assert_eq!(done, 24, "random geometries that split: {done} in {tries} tries");
    }
}
