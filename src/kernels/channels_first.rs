//! 3-D convolution on contiguous channels-first `[N, C, D, H, W]` `f32` data (where
//! [`channels_last`](super::channels_last) hands over: few output voxels, the one-channel
//! stem's weight gradient, dilation), forward and both gradients,
//! each as matrix products through [`product`](super::matmul::product) with the operand made
//! of patches packed block by block, never stored whole:
//!
//! - forward, per batch item and tile of output voxels:
//!   `Y[oc, v] = bias[oc] + sum_p W[oc, p] * P[p, v]`, `p` = (input channel, depth tap,
//!   height tap, width tap), `P[p, v]` the input value tap `p` of output voxel `v` sees (zero,
//!   or the edge slice for replicate depth padding, outside the volume); `W` read in place;
//! - input gradient: `dP[p, v] = sum_oc W[oc, p] * dY[oc, v]` (a product with the transposed
//!   kernel), each `dP[p, v]` then added to the input voxel `P[p, v]` was read from (col2im);
//!   work split by input channel, so no two threads add to one voxel;
//! - weight gradient: `dW[oc, p] = sum_n sum_v dY[n, oc, v] * P[n][p, v]`, reduced over every
//!   output voxel of the batch; work split by columns of `dW`;
//!
//! Output extents: `(size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1`.

use std::ops::Range;

use rayon::prelude::*;

use super::buffers::{recycled_zeros, zeros};
use super::layout::transpose;
use super::matmul::{A_IN_ROWS, Kernel, NR, Scratch, product};
use super::parallel::SendPtr;
use crate::arch::geometry::ConvShape;

/// Output voxels per work item of the forward pass: 4 panels of the product.
const TILE: usize = 4 * NR;

/// What the channels-first passes need of a convolution's shape, besides what
/// [`ConvShape`] has for every kernel.
impl ConvShape {
    /// `(input channel, [kd, kh, kw])` of patch row `p`.
    fn tap(&self, p: usize) -> (usize, [usize; 3]) {
        let taps = self.taps();
        let (ic, t) = (p / taps, p % taps);
        let [_, kh, kw] = self.kernel;
        (ic, [t / (kh * kw), (t / kw) % kh, t % kw])
    }

    /// The input slice and row that depth tap `kd` and height tap `kh` of an output line
    /// `(oz, oy)` read, or `None` where they fall into zero padding.
    fn source_row(&self, oz: usize, oy: usize, [kd, kh, _]: [usize; 3]) -> Option<(usize, usize)> {
        let [d, h, _] = self.input;
        let z = (oz * self.stride[0] + kd * self.dilation[0]) as isize - self.padding[0] as isize;
        let y = (oy * self.stride[1] + kh * self.dilation[1]) as isize - self.padding[1] as isize;
        if y < 0 || y >= h as isize {
            return None;
        }
        let z = if self.replicate_depth {
            z.clamp(0, d as isize - 1)
        } else if z < 0 || z >= d as isize {
            return None;
        } else {
            z
        };
        Some((z as usize, y as usize))
    }

    /// For a run of output voxels starting at width `ox` and width tap `kw`: the input column
    /// of the first voxel (may be negative), and the run's `i` range whose columns lie inside.
    fn columns(&self, ox: usize, kw: usize, len: usize) -> (isize, Range<usize>) {
        let (sw, w) = (self.stride[2] as isize, self.input[2] as isize);
        let x0 = (ox * self.stride[2] + kw * self.dilation[2]) as isize - self.padding[2] as isize;
        // First i with x0 + i * sw >= 0, and first i with x0 + i * sw >= w (no division for
        // stride 1, the common case: this runs once per patch row and run).
        let (lo, hi) = if sw == 1 {
            ((-x0).max(0) as usize, (w - x0).max(0) as usize)
        } else {
            let lo = if x0 >= 0 { 0 } else { ((-x0 + sw - 1) / sw) as usize };
            let hi = if x0 >= w { 0 } else { ((w - x0 + sw - 1) / sw) as usize };
            (lo, hi)
        };
        (x0, lo.min(len)..hi.clamp(lo.min(len), len))
    }
}

/// Consecutive output voxels on one output line: `len` voxels from `(oz, oy, ox)`, the first
/// being voxel `at` of the range they were cut from.
#[derive(Debug, Clone, Copy)]
struct Run {
    at: usize,
    len: usize,
    oz: usize,
    oy: usize,
    ox: usize,
}

/// Output voxels `range` of one batch item (flat `[d', h', w']` order) as runs along lines.
fn runs(range: Range<usize>, [_, oh, ow]: [usize; 3]) -> Vec<Run> {
    let mut out = Vec::with_capacity(range.len() / ow.max(1) + 2);
    let mut v = range.start;
    while v < range.end {
        let ox = v % ow;
        let len = (ow - ox).min(range.end - v);
        out.push(Run {
            at: v - range.start,
            len,
            oz: v / (ow * oh),
            oy: (v / ow) % oh,
            ox,
        });
        v += len;
    }
    out
}

/// Writes the values tap `tap` of `run`'s voxels read from `plane` (one input channel of one
/// batch item) to `dst[i * step]`, zeros where the tap falls into zero padding.
fn gather(s: &ConvShape, plane: &[f32], tap: [usize; 3], run: &Run, dst: &mut [f32], step: usize) {
    let Some((z, y)) = s.source_row(run.oz, run.oy, tap) else {
        (0..run.len).for_each(|i| dst[i * step] = 0.0);
        return;
    };
    let [_, h, w] = s.input;
    let row = &plane[(z * h + y) * w..][..w];
    let (x0, inside) = s.columns(run.ox, tap[2], run.len);
    for i in 0..inside.start {
        dst[i * step] = 0.0;
    }
    let sw = s.stride[2];
    if step == 1 && sw == 1 && !inside.is_empty() {
        let from = (x0 + inside.start as isize) as usize;
        dst[inside.clone()].copy_from_slice(&row[from..from + inside.len()]);
    } else {
        for i in inside.clone() {
            dst[i * step] = row[(x0 + (i * sw) as isize) as usize];
        }
    }
    for i in inside.end..run.len {
        dst[i * step] = 0.0;
    }
}

/// Adds `src[i]` to the input value tap `tap` of `run`'s voxel `i` read, in `plane`.
fn scatter(s: &ConvShape, plane: &mut [f32], tap: [usize; 3], run: &Run, src: &[f32]) {
    let Some((z, y)) = s.source_row(run.oz, run.oy, tap) else {
        return;
    };
    let [_, h, w] = s.input;
    let row = &mut plane[(z * h + y) * w..][..w];
    let (x0, inside) = s.columns(run.ox, tap[2], run.len);
    let sw = s.stride[2];
    if sw == 1 && !inside.is_empty() {
        let from = (x0 + inside.start as isize) as usize;
        row[from..from + inside.len()]
            .iter_mut()
            .zip(&src[inside])
            .for_each(|(x, g)| *x += g);
    } else {
        for i in inside {
            row[(x0 + (i * sw) as isize) as usize] += src[i];
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Scratch, Vec<f32>)> = std::cell::RefCell::new((Scratch::default(), Vec::new()));
}

/// The convolution of `x` (`[n, ic, d, h, w]`) with `w` (`[oc, ic, kd, kh, kw]`) plus `bias`
/// (`[oc]`): `[n, oc, d', h', w']`.
///
/// The caller guarantees the lengths: `x.len() == s.input_len()`, `w.len() == s.weight_len()`,
/// `bias` of `s.out_channels` values (asserted).
pub(crate) fn forward(kernel: Kernel, x: &[f32], w: &[f32], bias: Option<&[f32]>, s: &ConvShape) -> Vec<f32> {
    assert!(
        x.len() == s.input_len() && w.len() == s.weight_len(),
        "conv3d: lengths do not fit {s:?}"
    );
    assert!(bias.is_none_or(|b| b.len() == s.out_channels), "conv3d: bias length");
    let (oc, ov, k) = (s.out_channels, s.out_voxels(), s.k());
    if ov <= FEW_VOXELS && s.batch * ov <= FEW_COLUMNS && ov > 0 && s.batch > 0 {
        return forward_few(kernel, x, w, bias, s);
    }
    let mut y = zeros(s.output_len());
    if let Some(bias) = bias {
        for (plane, b) in y.chunks_exact_mut(ov).zip(bias.iter().cycle()) {
            plane.fill(*b);
        }
    }
    let in_plane = s.in_voxels();
    let tiles = ov.div_ceil(TILE);
    let out = SendPtr(y.as_mut_ptr());
    (0..s.batch * tiles).into_par_iter().for_each(|item| {
        let (b, t) = (item / tiles, item % tiles);
        let range = t * TILE..(t * TILE + TILE).min(ov);
        let n = range.len();
        let panel_runs: Vec<Vec<Run>> = (0..n.div_ceil(NR))
            .map(|j| {
                runs(
                    range.start + j * NR..(range.start + (j + 1) * NR).min(range.end),
                    s.output,
                )
            })
            .collect();
        let xb = &x[b * s.in_channels * in_plane..][..s.in_channels * in_plane];
        let pack = |ks: Range<usize>, j: usize, buf: &mut [f32]| {
            for (row, p) in buf.chunks_exact_mut(NR).zip(ks) {
                let (ic, tap) = s.tap(p);
                let plane = &xb[ic * in_plane..][..in_plane];
                for run in &panel_runs[j] {
                    gather(s, plane, tap, run, &mut row[run.at..], 1);
                }
                let filled = panel_runs[j].iter().map(|r| r.len).sum::<usize>();
                row[filled..].fill(0.0);
            }
        };
        let out = &out;
        SCRATCH.with_borrow_mut(|(scratch, _)| {
            // SAFETY: `w` holds oc rows of k values; the item's part of `y` is batch item b's
            // oc planes of ov values, voxels `range`: this item alone writes them.
            unsafe {
                product::<A_IN_ROWS>(
                    kernel,
                    w.as_ptr(),
                    k,
                    oc,
                    k,
                    n,
                    0..n.div_ceil(NR),
                    pack,
                    out.0.add(b * oc * ov + range.start),
                    ov,
                    scratch,
                );
            }
        });
    });
    y
}

/// The most output voxels of the whole batch that [`forward_few`] multiplies at once.
const FEW_COLUMNS: usize = 4 * NR;

/// [`forward`] for few output voxels per batch item ([`FEW_VOXELS`], the last stages: 9 in
/// ResNet3d-18's `layer4` on a 32 x 96 x 96 crop) and in the whole batch ([`FEW_COLUMNS`]):
/// the patches of every batch item gathered once as the columns of one product, so that a
/// panel of 32 columns holds the batch's 18 voxels rather than one item's 9, and the work split
/// by rows of the kernel (each thread reads its share of it, not all of it per batch item).
fn forward_few(kernel: Kernel, x: &[f32], w: &[f32], bias: Option<&[f32]>, s: &ConvShape) -> Vec<f32> {
    let (oc, ov, k, in_plane) = (s.out_channels, s.out_voxels(), s.k(), s.in_voxels());
    let n = s.batch * ov;
    // P: k rows of n columns (batch item, voxel), gathered by the rows of 64 in parallel.
    let every = runs(0..ov, s.output);
    let mut patches = zeros(k * n);
    patches.par_chunks_mut(64 * n).enumerate().for_each(|(block, rows)| {
        for (i, row) in rows.chunks_exact_mut(n).enumerate() {
            let (ic, tap) = s.tap(block * 64 + i);
            for (b, dst) in row.chunks_exact_mut(ov).enumerate() {
                let plane = &x[(b * s.in_channels + ic) * in_plane..][..in_plane];
                for run in &every {
                    gather(s, plane, tap, run, &mut dst[run.at..], 1);
                }
            }
        }
    });
    // C = W P: oc rows of n columns, by blocks of kernel rows.
    let threads = rayon::current_num_threads().max(1);
    let block = oc.div_ceil(4 * threads).next_multiple_of(super::matmul::MR).max(1);
    let mut c = zeros(oc * n);
    c.par_chunks_mut(block * n).enumerate().for_each(|(item, out)| {
        let rows = out.len() / n;
        let pack = |ks: Range<usize>, j: usize, buf: &mut [f32]| {
            let (first, len) = (j * NR, NR.min(n - j * NR));
            for (row, p) in buf.chunks_exact_mut(NR).zip(ks) {
                row[..len].copy_from_slice(&patches[p * n + first..][..len]);
                row[len..].fill(0.0);
            }
        };
        SCRATCH.with_borrow_mut(|(scratch, _)| {
            // SAFETY: `w` holds oc rows of k values, this item's `rows` from item * block; `out`
            // is this item's own rows of `c`, n values each.
            unsafe {
                product::<A_IN_ROWS>(
                    kernel,
                    w.as_ptr().add(item * block * k),
                    k,
                    rows,
                    k,
                    n,
                    0..n.div_ceil(NR),
                    pack,
                    out.as_mut_ptr(),
                    n,
                    scratch,
                );
            }
        });
    });
    // [oc, (b, v)] -> [b, oc, v], plus the bias.
    let mut y = zeros(s.output_len());
    for (i, dst) in y.chunks_exact_mut(ov).enumerate() {
        let (b, o) = (i / oc, i % oc);
        let add = bias.map_or(0.0, |bias| bias[o]);
        dst.iter_mut()
            .zip(&c[o * n + b * ov..][..ov])
            .for_each(|(d, v)| *d = v + add);
    }
    y
}

/// The gradient of the input of [`forward`] for the output gradient `dy`
/// (`[n, oc, d', h', w']`): `[n, ic, d, h, w]`.
pub(crate) fn backward_input(kernel: Kernel, dy: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    assert!(
        dy.len() == s.output_len() && w.len() == s.weight_len(),
        "conv3d: lengths do not fit {s:?}"
    );
    let (oc, ov, taps, in_plane) = (s.out_channels, s.out_voxels(), s.taps(), s.in_voxels());
    if ov <= FEW_VOXELS {
        return backward_input_few(kernel, dy, w, s);
    }
    // W^T: [k, oc], rows ordered as the patch rows.
    let k = s.k();
    let wt = transpose(w, oc, k);
    // Work items: (batch item, group of input channels); each adds only into its channels.
    let threads = rayon::current_num_threads().max(1);
    let per_batch = (4 * threads).div_ceil(s.batch).max(1);
    let group = s
        .in_channels
        .div_ceil(per_batch)
        .max(48usize.div_ceil(taps))
        .min(s.in_channels);
    let mut dx = zeros(s.input_len());
    dx.par_chunks_mut(s.in_channels * in_plane)
        .enumerate()
        .flat_map(|(b, dxb)| {
            dxb.par_chunks_mut(group * in_plane)
                .enumerate()
                .map(move |(g, chunk)| (b, g, chunk))
        })
        .for_each(|(b, g, dx_group)| {
            let ic0 = g * group;
            let channels = dx_group.len() / in_plane;
            let rows = channels * taps;
            let dyb = &dy[b * oc * ov..][..oc * ov];
            SCRATCH.with_borrow_mut(|(scratch, cols)| {
                for t in 0..ov.div_ceil(TILE) {
                    let range = t * TILE..(t * TILE + TILE).min(ov);
                    let n = range.len();
                    cols.clear();
                    cols.resize(rows * n, 0.0);
                    let pack = |ks: Range<usize>, j: usize, buf: &mut [f32]| {
                        let first = range.start + j * NR;
                        let len = NR.min(range.end - first);
                        for (row, o) in buf.chunks_exact_mut(NR).zip(ks) {
                            row[..len].copy_from_slice(&dyb[o * ov + first..][..len]);
                            row[len..].fill(0.0);
                        }
                    };
                    // SAFETY: `wt` holds k rows of oc values, the group's rows from ic0 * taps;
                    // `cols` rows * n values, this thread's own.
                    unsafe {
                        product::<A_IN_ROWS>(
                            kernel,
                            wt.as_ptr().add(ic0 * taps * oc),
                            oc,
                            rows,
                            oc,
                            n,
                            0..n.div_ceil(NR),
                            pack,
                            cols.as_mut_ptr(),
                            n,
                            scratch,
                        );
                    }
                    let tile_runs = runs(range.clone(), s.output);
                    for (r, src) in cols.chunks_exact(n).enumerate() {
                        let (c, tap) = s.tap(r);
                        let plane = &mut dx_group[c * in_plane..][..in_plane];
                        for run in &tile_runs {
                            scatter(s, plane, tap, run, &src[run.at..run.at + run.len]);
                        }
                    }
                }
            });
        });
    dx
}

/// Output voxels per batch item up to which [`backward_input`] multiplies the other way round
/// ([`backward_input_few`]).
pub(crate) const FEW_VOXELS: usize = 2 * NR;

/// [`backward_input`] for few output voxels per batch item (the last stages: ResNet3d-18's
/// `layer4` on a 32 x 96 x 96 crop has 9): `dP^T[v, p] = sum_oc dY^T[v, oc] * W[oc, p]`, every
/// voxel of the batch one row, so that the kernel (by far the larger operand there) is read
/// once in its own layout, panel by panel, instead of being transposed first and multiplied
/// with a column block padded from 9 voxels to 32; then each `dP` value is added where its
/// patch value came from, as in [`backward_input`].
fn backward_input_few(kernel: Kernel, dy: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    let (oc, ov, k, taps, in_plane) = (s.out_channels, s.out_voxels(), s.k(), s.taps(), s.in_voxels());
    let rows = s.batch * ov;
    // dY^T: [batch * ov, oc].
    let mut dyt = vec![0.0f32; rows * oc];
    for (b, dyb) in dy.chunks_exact(oc * ov).enumerate() {
        for (o, plane) in dyb.chunks_exact(ov).enumerate() {
            for (v, &g) in plane.iter().enumerate() {
                dyt[(b * ov + v) * oc + o] = g;
            }
        }
    }
    let mut dpt = zeros(rows * k);
    let panels = k.div_ceil(NR);
    let threads = rayon::current_num_threads().max(1);
    let per_item = panels.div_ceil(4 * threads).max(1);
    let out = SendPtr(dpt.as_mut_ptr());
    (0..panels.div_ceil(per_item)).into_par_iter().for_each(|item| {
        let mine = item * per_item..((item + 1) * per_item).min(panels);
        let out = &out;
        let pack = |ks: Range<usize>, j: usize, buf: &mut [f32]| {
            let (first, len) = (j * NR, NR.min(k - j * NR));
            for (row, o) in buf.chunks_exact_mut(NR).zip(ks) {
                row[..len].copy_from_slice(&w[o * k + first..][..len]);
                row[len..].fill(0.0);
            }
        };
        SCRATCH.with_borrow_mut(|(scratch, _)| {
            // SAFETY: `dyt` holds `rows` rows of oc values; `dpt` `rows` rows of k values, of
            // which this item alone touches the columns of `mine`.
            unsafe {
                product::<A_IN_ROWS>(kernel, dyt.as_ptr(), oc, rows, oc, k, mine, pack, out.0, k, scratch);
            }
        });
    });
    // col2im, split by (batch item, input channel) so that no two items add to one voxel.
    let mut dx = zeros(s.input_len());
    let all = runs(0..ov, s.output);
    dx.par_chunks_mut(in_plane)
        .enumerate()
        .for_each(|(plane_index, plane)| {
            let (b, ic) = (plane_index / s.in_channels, plane_index % s.in_channels);
            let mut src = vec![0.0f32; ov];
            for t in 0..taps {
                let p = ic * taps + t;
                for (v, value) in src.iter_mut().enumerate() {
                    *value = dpt[(b * ov + v) * k + p];
                }
                let (_, tap) = s.tap(p);
                for run in &all {
                    scatter(s, plane, tap, run, &src[run.at..run.at + run.len]);
                }
            }
        });
    dx
}

/// The gradient of the kernel of [`forward`] for the input `x` and output gradient `dy`:
/// `[oc, ic, kd, kh, kw]`, summed over the batch.
pub(crate) fn backward_weight(kernel: Kernel, x: &[f32], dy: &[f32], s: &ConvShape) -> Vec<f32> {
    assert!(
        x.len() == s.input_len() && dy.len() == s.output_len(),
        "conv3d: lengths do not fit {s:?}"
    );
    let (oc, ov, k, in_plane) = (s.out_channels, s.out_voxels(), s.k(), s.in_voxels());
    let mut dw = recycled_zeros(oc * k);
    let panels = k.div_ceil(NR);
    let threads = rayon::current_num_threads().max(1);
    let per_item = panels.div_ceil(4 * threads).clamp(1, 4);
    let out = SendPtr(dw.as_mut_ptr());
    (0..panels.div_ceil(per_item)).into_par_iter().for_each(|item| {
        let mine = item * per_item..((item + 1) * per_item).min(panels);
        let out = &out;
        SCRATCH.with_borrow_mut(|(scratch, _)| {
            for b in 0..s.batch {
                let xb = &x[b * s.in_channels * in_plane..][..s.in_channels * in_plane];
                // The runs of a block of voxels, computed once for all the block's panels.
                let mut block: (usize, Vec<Run>) = (usize::MAX, Vec::new());
                let pack = |ks: Range<usize>, j: usize, buf: &mut [f32]| {
                    // Rows: output voxels ks; columns: patch rows 32 j .. 32 j + 32.
                    if block.0 != ks.start {
                        block = (ks.start, runs(ks.clone(), s.output));
                    }
                    let voxel_runs = &block.1;
                    for col in 0..NR {
                        let p = j * NR + col;
                        if p >= k {
                            buf.iter_mut().skip(col).step_by(NR).for_each(|v| *v = 0.0);
                            continue;
                        }
                        let (ic, tap) = s.tap(p);
                        let plane = &xb[ic * in_plane..][..in_plane];
                        for run in voxel_runs {
                            gather(s, plane, tap, run, &mut buf[run.at * NR + col..], NR);
                        }
                    }
                };
                // SAFETY: dy's batch item b holds oc rows of ov values; `dw` holds oc rows of
                // k values, and this item alone touches the columns of `mine`.
                unsafe {
                    product::<A_IN_ROWS>(
                        kernel,
                        dy.as_ptr().add(b * oc * ov),
                        ov,
                        oc,
                        ov,
                        k,
                        mine.clone(),
                        pack,
                        out.0,
                        k,
                        scratch,
                    );
                }
            }
        });
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one multiply-add at a time: `(y, dx, dw)` for `x`, `w`, `dy`.
    fn naive(x: &[f32], w: &[f32], dy: &[f32], s: &ConvShape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let [d, h, wd] = s.input;
        let [od, oh, ow] = s.output;
        let [kd, kh, kw] = s.kernel;
        let mut y = vec![0.0f32; s.output_len()];
        let mut dx = vec![0.0f32; s.input_len()];
        let mut dw = vec![0.0f32; s.weight_len()];
        for b in 0..s.batch {
            for o in 0..s.out_channels {
                for (z, yy, xx) in (0..od).flat_map(|z| (0..oh).flat_map(move |y| (0..ow).map(move |x| (z, y, x)))) {
                    let oi = (((b * s.out_channels + o) * od + z) * oh + yy) * ow + xx;
                    for i in 0..s.in_channels {
                        for (a, bb, c) in
                            (0..kd).flat_map(|a| (0..kh).flat_map(move |b| (0..kw).map(move |c| (a, b, c))))
                        {
                            let mut iz = (z * s.stride[0] + a * s.dilation[0]) as isize - s.padding[0] as isize;
                            let iy = (yy * s.stride[1] + bb * s.dilation[1]) as isize - s.padding[1] as isize;
                            let ix = (xx * s.stride[2] + c * s.dilation[2]) as isize - s.padding[2] as isize;
                            if s.replicate_depth {
                                iz = iz.clamp(0, d as isize - 1);
                            }
                            if iz < 0 || iy < 0 || ix < 0 || iz >= d as isize || iy >= h as isize || ix >= wd as isize {
                                continue;
                            }
                            let xi = (((b * s.in_channels + i) * d + iz as usize) * h + iy as usize) * wd + ix as usize;
                            let wi = (((o * s.in_channels + i) * kd + a) * kh + bb) * kw + c;
                            y[oi] += w[wi] * x[xi];
                            dx[xi] += w[wi] * dy[oi];
                            dw[wi] += x[xi] * dy[oi];
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919 % 1013) as f32 / 506.0) - 1.0)
            .collect()
    }

    fn max_error(got: &[f32], expected: &[f32]) -> f32 {
        let scale = expected.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        got.iter().zip(expected).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    }

    /// Every pass against the definition, on shapes that leave remainders everywhere: stride 2,
    /// no padding, a 1x3x3 kernel, dilation, replicate depth padding, channel counts that are
    /// not multiples of 12 or 32, lines shorter and longer than a panel.
    #[test]
    fn every_pass_matches_the_definition() {
        // An empty batch: an empty output (the few-voxel product has no columns).
        let empty = ConvShape::for_test(0, 4, 8, [2, 3, 3], [3, 3, 3], [1; 3], [1; 3], [1; 3], false);
        assert!(forward(Kernel::detect(), &[], &values(empty.weight_len(), 1), None, &empty).is_empty());
        #[allow(clippy::type_complexity)]
        let cases: [(
            usize,
            usize,
            usize,
            [usize; 3],
            [usize; 3],
            [usize; 3],
            [usize; 3],
            [usize; 3],
            bool,
        ); 12] = [
            // Few voxels with the batch's patches in one product (`forward_few`): four panels,
            // the last clipped, and replicate depth padding with a stride.
            (2, 20, 50, [3, 4, 5], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false),
            (2, 9, 30, [4, 5, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1], true),
            // Pointwise with several channel groups (the input gradient splits by channel).
            (2, 64, 16, [4, 8, 8], [1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], false),
            (2, 128, 32, [1, 2, 2], [1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], false),
            (2, 32, 128, [2, 4, 4], [1, 1, 1], [2, 2, 2], [0, 0, 0], [1, 1, 1], false),
            (2, 3, 5, [5, 6, 7], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false),
            (1, 4, 13, [6, 9, 40], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1], false),
            (2, 5, 7, [4, 8, 9], [1, 3, 3], [2, 2, 2], [0, 0, 0], [1, 1, 1], false),
            (1, 17, 25, [3, 5, 70], [1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], false),
            (1, 2, 3, [7, 7, 7], [3, 3, 3], [1, 1, 1], [2, 2, 2], [2, 2, 2], false),
            (2, 3, 4, [5, 6, 6], [3, 3, 3], [2, 1, 1], [1, 1, 1], [1, 1, 1], true),
            (1, 1, 8, [9, 20, 20], [7, 7, 7], [2, 2, 2], [3, 3, 3], [1, 1, 1], false),
        ];
        for (n, ic, oc, input, kernel, stride, padding, dilation, replicate) in cases {
            let s = ConvShape::for_test(n, ic, oc, input, kernel, stride, padding, dilation, replicate);
            let x = values(s.input_len(), 1);
            let w = values(s.weight_len(), 2);
            let dy = values(s.output_len(), 3);
            let (y, dx, dw) = naive(&x, &w, &dy, &s);
            for kernel in Kernel::here() {
                let bias = values(oc, 4);
                let got = forward(kernel, &x, &w, Some(&bias), &s);
                let with_bias: Vec<f32> = y
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + bias[(i / s.out_voxels()) % oc])
                    .collect();
                let e = max_error(&got, &with_bias);
                assert!(e < 1e-5, "{kernel:?} forward {s:?}: {e}");
                let e = max_error(&backward_input(kernel, &dy, &w, &s), &dx);
                assert!(e < 1e-5, "{kernel:?} input gradient {s:?}: {e}");
                let e = max_error(&backward_weight(kernel, &x, &dy, &s), &dw);
                assert!(e < 1e-5, "{kernel:?} weight gradient {s:?}: {e}");
            }
        }
    }
}
