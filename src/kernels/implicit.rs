//! How a convolution reads its channels-last input in place: a zero-padded copy, one
//! (depth, height) tap at a time (implicit GEMM); patches gathered per tile are in `gather`.
//!
//! Every function takes the [`ConvShape`] that [`ConvGeometry::on`] checked against the input,
//! and reads only within the extents it states.
//!
//! [`ConvGeometry::on`]: crate::arch::geometry::ConvGeometry::on

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::bf16::PackedBf16;
use super::buffers::{Act, Buffers, View};
use super::matmul::{KC, MR, PackedB, blocks_of};
use crate::arch::geometry::ConvShape;

/// The length (with the slack) and shape `[n, d', h', w', c]` of [`pad`]'s copy of `s`'s input;
/// `None` where a length overflows (the caller gathers patches instead).
pub(super) fn padded_len(s: &ConvShape) -> Option<(usize, [usize; 5])> {
    let [d, h, w] = s.input;
    let [pd, ph, pw] = s.padding;
    let extent = |size: usize, p: usize| p.checked_mul(2)?.checked_add(size);
    let (dp, hp, wp) = (extent(d, pd)?, extent(h, ph)?, extent(w, pw)?);
    let c = s.in_channels;
    let slack = MR.checked_mul(s.stride[2])?.checked_add(s.kernel[2])?.checked_mul(c)?;
    let len = [s.batch, dp, hp, wp, c]
        .iter()
        .try_fold(1usize, |acc, &v| acc.checked_mul(v))?
        .checked_add(slack)?;
    (len <= isize::MAX as usize / 4).then_some((len, [s.batch, dp, hp, wp, c]))
}

/// `x` padded by `s`'s padding (zeros, or edge slices in depth for replicate padding), as
/// `[n, d', h', w', c]`, followed by zeros enough for the register tile to read a whole block
/// past the last voxel; `None` where it cannot be allocated.
pub(super) fn pad(s: &ConvShape, x: View<'_>, buffers: &Buffers) -> Option<Act> {
    let (len, dims) = padded_len(s)?;
    let mut data = buffers.take(len)?;
    // Zeroed on the threads: a fresh buffer's pages are faulted in (and cleared by the
    // kernel) where they are first written.
    data.par_chunks_mut(1 << 16).for_each(|chunk| chunk.fill(0.0));
    copy_padded(s, x, &mut data, dims, |dst, src| {
        dst.copy_from_slice(src);
        true
    });
    Some(Act { data, dims })
}

/// [`pad`] in bf16 (rounded to nearest even), with its padded shape.
pub(super) fn pad_bf16(s: &ConvShape, x: View<'_>) -> Option<(Vec<u16>, [usize; 5])> {
    let (len, dims) = padded_len(s)?;
    let mut data: Vec<u16> = super::buffers::try_zeros(len)?;
    copy_padded(s, x, &mut data, dims, |dst, src| {
        super::bf16::round_into(src, dst);
        true
    });
    Some((data, dims))
}

/// The smallest biased exponent [`all_moderate`] refuses: values of magnitude `2^48` and more.
const LARGE_EXPONENT: u32 = 127 + 48;

/// Whether every value of `values` is finite and below `2^48` in magnitude: what Winograd's
/// transforms may take. They add and subtract inputs (and kernel taps) before the products, so
/// an infinity becomes NaN and values near `f32::MAX` overflow where the direct product would
/// not; below `2^48` (inputs and kernels alike) no sum of theirs comes near `f32::MAX` before
/// the direct product's own would. One comparison of the exponent's bits per value (an integer
/// reduction, which the compiler vectorises; infinities and NaN have the largest exponent).
pub(super) fn all_moderate(values: &[f32]) -> bool {
    values.iter().fold(0u32, |acc, &v| acc | immoderate(v)) == 0
}

/// [`all_moderate`] of every value times `scale` (in f32, as a kernel is folded), without
/// making the products.
pub(super) fn all_moderate_scaled(values: &[f32], scale: f32) -> bool {
    values.iter().fold(0u32, |acc, &v| acc | immoderate(v * scale)) == 0
}

/// 1 where `v` is not moderate (an infinity, NaN or `2^48` and more in magnitude), else 0.
#[inline(always)]
fn immoderate(v: f32) -> u32 {
    u32::from((v.to_bits() & 0x7f80_0000) >> 23 >= LARGE_EXPONENT)
}

/// Copies `x`'s rows into the zeroed padded buffer `data` of shape `padded` (at least the
/// padding on both sides of every axis) with `put(dst, src)`, the first voxel at the padding's
/// offset; depth planes past `x` replicate its edges if the padding does. Returns whether every
/// `put` returned `true`.
pub(super) fn copy_padded<T: Send>(
    s: &ConvShape,
    x: View<'_>,
    data: &mut [T],
    [_, dp, hp, wp, _]: [usize; 5],
    put: impl Fn(&mut [T], &[f32]) -> bool + Sync,
) -> bool {
    let [n, d, h, w, c] = x.dims;
    let [pd, ph, pw] = s.padding;
    debug_assert!(dp >= d + 2 * pd && hp >= h + 2 * ph && wp >= w + 2 * pw);
    let slice = hp * wp * c;
    let all = AtomicBool::new(true);
    data[..n * dp * slice]
        .par_chunks_mut(slice)
        .enumerate()
        .for_each(|(index, dst)| {
            let (b, zp) = (index / dp, index % dp);
            let z = zp as isize - pd as isize;
            let z = if s.replicate_depth {
                z.clamp(0, d as isize - 1) as usize
            } else if z < 0 || z >= d as isize {
                return;
            } else {
                z as usize
            };
            let mut ok = true;
            for y in 0..h {
                let src = ((b * d + z) * h + y) * w * c;
                let at = ((y + ph) * wp + pw) * c;
                ok &= put(&mut dst[at..at + w * c], &x.data[src..src + w * c]);
            }
            if !ok {
                all.store(false, Ordering::Relaxed);
            }
        });
    all.into_inner()
}

/// The blocks of output rows `first..first + count` (up to [`MR`] voxels of one output line
/// each): `(first row, rows, offset of the first voxel's first tap in the padded input of
/// shape `padded`)`.
pub(super) fn blocks(
    s: &ConvShape,
    padded: [usize; 5],
    out_dims: [usize; 5],
    first: usize,
    count: usize,
) -> Vec<(usize, usize, usize)> {
    let [_, dp, hp, wp, c] = padded;
    let [_, od, oh, ow, _] = out_dims;
    let [sd, sh, sw] = s.stride;
    // A line of 64 voxels in 12-row tiles is 5 x 12 + 4, its last (8-row) tile half
    // empty; in 8-row tiles, none is. Lines that are a whole number of 8-row tiles but not
    // of 12-row ones run in 8-row tiles (the stem on 64 x 128 x 128: 30.3 -> 29.4 ms).
    let step = if !ow.is_multiple_of(MR) && ow.is_multiple_of(8) {
        8
    } else {
        MR
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

/// A padded copy of a convolution's input ([`pad`], [`pad_bf16`] with its shape) and the
/// layer's kernel in the same precision.
pub(super) enum Padded<'a> {
    F32(&'a Act, &'a PackedB),
    Bf16(&'a [u16], [usize; 5], &'a PackedBf16),
}

/// Output rows `first..first + count`, columns of `panels`, `+=` the convolution read in place
/// from `padded`: [`implicit_runs`] for fewer than 16 input channels, [`implicit`] otherwise;
/// the depth taps `depth` only (all, or [`ConvShape::depth_taps_read`]'s for a finite kernel).
///
/// # Safety
/// `padded` must be [`pad`]'s (or [`pad_bf16`]'s) copy of `s`'s input with the layer's kernel
/// (a bf16 one only where [`bf16::available`](super::bf16::available), and with 16 input
/// channels or more only for an even count: its tap rows of `kw * C` values must start on
/// even rows; `PackedConv::forward` makes no other); `out` the output (rows of
/// `out_channels`), this call alone touching those rows and columns.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn in_place(
    s: &ConvShape,
    depth: Range<usize>,
    padded: Padded<'_>,
    out_dims: [usize; 5],
    first: usize,
    count: usize,
    panels: Range<usize>,
    out: *mut f32,
) {
    let oc = out_dims[4];
    let runs = s.in_channels < 16;
    // The bf16 kernel's rows are `run()` apart, even; its implicit product's tap rows of
    // kw * C values start on even rows (C even from 16 channels on: the caller's contract).
    // SAFETY (every call below): the caller's contract, and `implicit` and `implicit_runs`
    // state for their products: A within the padded copy, kernel rows within K, C the caller's.
    unsafe {
        match padded {
            Padded::Bf16(xp, dims, w) if runs => implicit_runs(
                s,
                depth.clone(),
                dims,
                xp.len(),
                w.run(),
                out_dims,
                first,
                count,
                panels,
                out,
                |a, lda, rows, runs, len, j, c| {
                    super::bf16::accumulate_runs(xp.as_ptr().add(a), lda, rows, w, runs, len, j, c, oc)
                },
            ),
            Padded::Bf16(xp, dims, w) => implicit(
                s,
                depth.clone(),
                dims,
                xp.len(),
                out_dims,
                first,
                count,
                panels,
                out,
                // A tap's whole run in one pass: the bf16 tile adds it to C once (untested
                // blocks of it would change its bits, and no CPU here has AVX512_BF16).
                usize::MAX,
                |a, lda, rows, ks, j, c| super::bf16::accumulate(xp.as_ptr().add(a), lda, rows, w, ks, j, c, oc),
            ),
            Padded::F32(xp, w) if runs => {
                let run = s.kernel[2] * s.in_channels;
                implicit_runs(
                    s,
                    depth.clone(),
                    xp.dims,
                    xp.data.len(),
                    run,
                    out_dims,
                    first,
                    count,
                    panels,
                    out,
                    |a, lda, rows, runs, len, j, c| {
                        super::matmul::accumulate_runs(xp.data.as_ptr().add(a), lda, rows, w, runs, len, j, c, oc)
                    },
                )
            }
            Padded::F32(xp, w) => implicit(
                s,
                depth.clone(),
                xp.dims,
                xp.data.len(),
                out_dims,
                first,
                count,
                panels,
                out,
                KC,
                |a, lda, rows, ks, j, c| super::matmul::accumulate(xp.data.as_ptr().add(a), lda, rows, w, ks, j, c, oc),
            ),
        }
    }
}

/// [`implicit`] for few input channels: per block of output voxels and panel, one product
/// over every (depth, height) tap's row of `kw * C` values, the accumulators kept in registers
/// throughout: `product(at, lda, rows, runs, len, j, c)` is
/// [`matmul::accumulate_runs`](super::matmul::accumulate_runs) or its bf16 twin, `runs` the
/// (offset from `at`, first kernel row) of each (depth, height) tap, the kernel's rows being
/// `run_ld >= kw * C` apart (the bf16 kernel's even runs).
///
/// # Safety
/// As [`implicit`]: `padded` and `len` describe [`pad`]'s (or [`pad_bf16`]'s) copy of `s`'s
/// input that `product` reads; `run_ld` is the distance between the kernel's rows that
/// `product` reads, so that `(kd * kh - 1) * run_ld + kw * C` is within its K (`kw * C` for
/// the f32 kernel, [`PackedBf16::run`] for the bf16 one, whose K is `kd * kh * run()`).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn implicit_runs(
    s: &ConvShape,
    depth: Range<usize>,
    padded: [usize; 5],
    len: usize,
    run_ld: usize,
    out_dims: [usize; 5],
    first: usize,
    count: usize,
    panels: Range<usize>,
    out: *mut f32,
    product: impl Fn(usize, usize, usize, &[(usize, usize)], usize, usize, *mut f32),
) {
    let [_, _, hp, wp, c] = padded;
    let oc = out_dims[4];
    let [_, kh, kw] = s.kernel;
    let sw = s.stride[2];
    let run = kw * c;
    debug_assert!(run_ld >= run);
    // (offset in the padded input from a voxel's first tap, first kernel row) per
    // (depth, height) tap.
    let runs: Vec<(usize, usize)> = depth
        .flat_map(|t| (0..kh).map(move |i| ((t * hp + i) * wp * c, (t * kh + i) * run_ld)))
        .collect();
    let reach = runs.last().map_or(0, |&(o, _)| o) + (MR - 1) * sw * c + run;
    for (r, rows, at) in blocks(s, padded, out_dims, first, count) {
        debug_assert!(
            at + reach <= len,
            "the implicit product would read past the padded input"
        );
        for j in panels.clone() {
            // Bounds as in `implicit`: the padded extents cover the kernel at every output
            // voxel (`ConvGeometry::on`), rows past a line's end read the slack `pad` appends
            // (asserted above in debug builds); the kernel rows of every run lie in
            // K = kd * kh * run_ld; C: rows r..r + rows of the output, this item's panels
            // (`out.add(r * oc)`: r < first + count <= the output's rows).
            product(at, sw * c, rows, &runs, run, j, out.wrapping_add(r * oc));
        }
    }
}

/// Output rows `first..first + count`, columns of `panels`, `+=` the convolution of the padded
/// input (of shape `padded`, `len` values with the slack): per block of up to MR voxels of one
/// output line and per (depth, height) tap, one product of the `kw * C` values the block's
/// voxels see in a row of the padded input, in blocks of `step` kernel rows (each block across
/// every block of voxels before the next): `product(at, lda, rows, ks, j, c)` adds to `rows`
/// rows of `c` (`out_channels` apart), panel `j`, the padded input's rows from value `at`,
/// `lda` apart, times the kernel's rows `ks`.
///
/// # Safety
/// `out` must be the output (rows of `out_channels`), this call alone touching those rows and
/// columns; `padded` and `len` must describe [`pad`]'s (or [`pad_bf16`]'s) copy of `s`'s input
/// that `product` reads.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn implicit(
    s: &ConvShape,
    depth: Range<usize>,
    padded: [usize; 5],
    len: usize,
    out_dims: [usize; 5],
    first: usize,
    count: usize,
    panels: Range<usize>,
    out: *mut f32,
    step: usize,
    product: impl Fn(usize, usize, usize, Range<usize>, usize, *mut f32),
) {
    let [_, _, hp, wp, c] = padded;
    let oc = out_dims[4];
    let [_, kh, kw] = s.kernel;
    let sw = s.stride[2];
    let run = kw * c;
    // Per panel and tap, every block of the item: the tap's slice of the panel (kw * C rows of
    // 32) stays in L1 while the blocks stream past it.
    let blocks = blocks(s, padded, out_dims, first, count);
    for j in panels {
        for t in depth.clone() {
            for i in 0..kh {
                let tap = (t * hp + i) * wp * c;
                let taps = (t * kh + i) * run..(t * kh + i + 1) * run;
                // Per block of `step` of the tap's kernel rows (KC for f32: each row's sums
                // reach C in the order `accumulate` adds them), every block of voxels.
                for ks in blocks_of(taps.clone(), step) {
                    for &(r, rows, at) in &blocks {
                        // The farthest value the register tile reads: MR rows sw * c apart, `run`
                        // values each, from the block's first voxel at this tap.
                        debug_assert!(
                            at + tap + (MR - 1) * sw * c + run <= len,
                            "the implicit product would read past the padded input"
                        );
                        // Bounds: `ConvGeometry::on` checked that the padded extents cover the
                        // kernel at every output voxel, so each block's first row lies in the padded
                        // input; rows past the line's end that the tile reads (results never stored)
                        // lie in the slack the padding appends (asserted above in debug builds).
                        // The kernel rows (t * kh + i) * run .. + run lie in K = taps * c,
                        // c = in_channels (checked). C as the caller says: `out.add(r * oc)` stays
                        // within the output's rows.
                        product(
                            at + tap + (ks.start - taps.start),
                            sw * c,
                            rows,
                            ks.clone(),
                            j,
                            // SAFETY: r < first + count <= the output's rows.
                            unsafe { out.add(r * oc) },
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_and_huge_values_are_found() {
        let mut values = vec![1.5f32; 37];
        assert!(all_moderate(&values));
        for bad in [
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            -3.0e38,
            2f32.powi(48),
        ] {
            values[29] = bad;
            assert!(!all_moderate(&values), "{bad}");
        }
        for fine in [-1.0e14, 2f32.powi(47) * 1.9, 0.0, -0.0, f32::MIN_POSITIVE, 1e-40] {
            values[29] = fine;
            assert!(all_moderate(&values), "{fine}");
        }
    }
}
