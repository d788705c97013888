//! How a convolution reads its channels-last input: a zero-padded copy read in place, one
//! (depth, height) tap at a time (implicit GEMM), or patches gathered per tile of output voxels.
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
use super::matmul::{MR, PackedB};
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
    data.fill(0.0);
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

/// `x` rounded to bf16 (nearest even); `None` where it cannot be allocated.
pub(super) fn rounded(x: &[f32]) -> Option<Vec<u16>> {
    let mut rounded: Vec<u16> = super::buffers::try_zeros(x.len())?;
    rounded
        .par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(dst, src)| super::bf16::round_into(src, dst));
    Some(rounded)
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
    values.iter().fold(0u32, |acc, v| {
        acc | u32::from((v.to_bits() & 0x7f80_0000) >> 23 >= LARGE_EXPONENT)
    }) == 0
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
/// from `padded`: [`implicit_runs`] for fewer than 16 input channels, [`implicit`] otherwise.
///
/// # Safety
/// `padded` must be [`pad`]'s (or [`pad_bf16`]'s) copy of `s`'s input with the layer's kernel
/// (a bf16 one only where [`bf16::available`](super::bf16::available)); `out` the output
/// (rows of `out_channels`), this call alone touching those rows and columns.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn in_place(
    s: &ConvShape,
    padded: Padded<'_>,
    out_dims: [usize; 5],
    first: usize,
    count: usize,
    panels: Range<usize>,
    out: *mut f32,
) {
    let oc = out_dims[4];
    let runs = s.in_channels < 16;
    // SAFETY (every call below): as the caller promises, and as `implicit` and
    // `implicit_runs` state for the products they call: A within the padded copy, the kernel
    // rows within K (the bf16 kernel's rows `run()` apart, even, its implicit product's tap
    // rows of kw * C values with C even: `pad_bf16` is made for 16 channels and more only with
    // an even count), C the caller's rows and columns.
    unsafe {
        match padded {
            Padded::Bf16(xp, dims, w) if runs => implicit_runs(
                s,
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
                dims,
                xp.len(),
                out_dims,
                first,
                count,
                panels,
                out,
                |a, lda, rows, ks, j, c| super::bf16::accumulate(xp.as_ptr().add(a), lda, rows, w, ks, j, c, oc),
            ),
            Padded::F32(xp, w) if runs => {
                let run = s.kernel[2] * s.in_channels;
                implicit_runs(
                    s,
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
                xp.dims,
                xp.data.len(),
                out_dims,
                first,
                count,
                panels,
                out,
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
/// input that `product` reads.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn implicit_runs(
    s: &ConvShape,
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
    let [kd, kh, kw] = s.kernel;
    let sw = s.stride[2];
    let run = kw * c;
    debug_assert!(run_ld >= run);
    // (offset in the padded input from a voxel's first tap, first kernel row) per
    // (depth, height) tap.
    let runs: Vec<(usize, usize)> = (0..kd)
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
/// voxels see in a row of the padded input: `product(at, lda, rows, ks, j, c)` adds to `rows`
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
    let [kd, kh, kw] = s.kernel;
    let sw = s.stride[2];
    let run = kw * c;
    // Per panel and tap, every block of the item: the tap's slice of the panel (kw * C rows of
    // 32) stays in L1 while the blocks stream past it.
    let blocks = blocks(s, padded, out_dims, first, count);
    for j in panels {
        for t in 0..kd {
            for i in 0..kh {
                let tap = (t * hp + i) * wp * c;
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

/// The patches of output voxels `first..first + count` (in `[n, d, h, w]` order), one row of
/// `k` values each, zeros where the kernel reaches into the padding; only the depth taps
/// `depth` (all, or [`ConvShape::depth_taps_read`]: rows of `depth.len() * kh * kw * C`
/// values). Any padding: windows are cut to the volume by index, nothing is padded. `patches`
/// holds whole register tiles of rows ([`MR`]) after the call, for products that read them.
pub(super) fn gather(
    s: &ConvShape,
    x: View<'_>,
    out_dims: [usize; 5],
    first: usize,
    count: usize,
    depth: Range<usize>,
    patches: &mut Vec<f32>,
) {
    let run = s.kernel[2] * s.in_channels;
    let k = depth.len() * s.kernel[1] * run;
    let len = count.div_ceil(MR) * MR * k;
    if patches.len() < len {
        patches.resize(len, 0.0);
    }
    gather_rows(
        s,
        x.data,
        x.dims,
        out_dims,
        first,
        count,
        k,
        run,
        depth,
        &mut patches[..count * k],
        &Clipped,
    );
}

/// [`gather_rows`] in bf16: masked AVX-512 copies of whole kernel rows where a row (`run_ld`
/// values, even, padded with zeros) is at most 32 values (the stem's 8), [`Clipped`] copies
/// otherwise. `x_bf16` is the input rounded, of shape `dims`; `dst` holds `count * ld`
/// values.
#[allow(clippy::too_many_arguments)] // as `gather_rows`
pub(super) fn gather_rows_bf16(
    s: &ConvShape,
    x_bf16: &[u16],
    dims: [usize; 5],
    out_dims: [usize; 5],
    first: usize,
    count: usize,
    ld: usize,
    run_ld: usize,
    dst: &mut [u16],
) {
    #[cfg(target_arch = "x86_64")]
    if run_ld <= 32 && s.dilation[2] == 1 && super::bf16::available() {
        // SAFETY: `available` found avx512f, avx512bw and avx512vl; kernel rows of at most 32
        // values with adjacent taps, as `avx512::gather_rows` requires.
        unsafe { avx512::gather_rows(s, x_bf16, dims, out_dims, first, count, ld, run_ld, 0..s.kernel[0], dst) };
        return;
    }
    gather_rows(
        s,
        x_bf16,
        dims,
        out_dims,
        first,
        count,
        ld,
        run_ld,
        0..s.kernel[0],
        dst,
        &Clipped,
    );
}

/// How [`gather_rows`] copies one kernel row of adjacent taps (dilation 1 along the width):
/// `dst[..run]` (`run = kw * c`) from the input line `line` (`w * c` values) at taps
/// `x0..x0 + kw`, zero where a tap is outside `0..w`, and zeros in `dst[run..]`.
pub(super) trait Window<T> {
    fn copy(&self, dst: &mut [T], run: usize, line: &[T], x0: isize, c: usize);
}

/// The taps `j_lo..j_hi` of `0..kw` from `x0` that land inside a line of `w` voxels (empty
/// where none does).
#[inline(always)]
fn inside(x0: isize, kw: usize, w: usize) -> (usize, usize) {
    let j_lo = ((-x0).max(0) as usize).min(kw);
    let j_hi = ((w as isize - x0).max(0) as usize).clamp(j_lo, kw);
    (j_lo, j_hi)
}

/// [`Window`] by slices: zeros, the taps inside the line, zeros.
pub(super) struct Clipped;

impl<T: Copy + Default> Window<T> for Clipped {
    #[inline(always)]
    fn copy(&self, dst: &mut [T], run: usize, line: &[T], x0: isize, c: usize) {
        let (dst, pad) = dst.split_at_mut(run);
        fill_run(pad, T::default());
        let (j_lo, j_hi) = inside(x0, run / c, line.len() / c);
        if j_lo == j_hi {
            fill_run(dst, T::default());
            return;
        }
        let src = (x0 + j_lo as isize) as usize * c;
        fill_run(&mut dst[..j_lo * c], T::default());
        copy_run(&mut dst[j_lo * c..j_hi * c], &line[src..src + (j_hi - j_lo) * c]);
        fill_run(&mut dst[j_hi * c..], T::default());
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use std::ops::Range;

    use super::{ConvShape, Window, inside};

    /// [`Window`] as one masked load and one masked store of at most 32 bf16 values.
    struct Masked;

    impl Window<u16> for Masked {
        #[inline(always)]
        fn copy(&self, dst: &mut [u16], run: usize, line: &[u16], x0: isize, c: usize) {
            let lanes = dst.len();
            debug_assert!(run <= lanes && lanes <= 32);
            // Taps j_lo..j_hi are inside the line (in taps, as `Clipped`: no product of a
            // padding and the channels, which could overflow); lanes lo..hi are the line's
            // values (x0 + j_lo) * c.. (x0 + j_hi) * c.
            let (j_lo, j_hi) = inside(x0, run / c, line.len() / c);
            let (lo, hi) = (j_lo * c, j_hi * c);
            let below = |n: usize| if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
            let (load, store) = (below(hi) & !below(lo), below(lanes));
            // Lane l reads src + l: the line's value (x0 + j_lo) * c + l - lo for l in lo..hi.
            let src = if j_lo < j_hi {
                line[(x0 + j_lo as isize) as usize * c..].as_ptr().wrapping_sub(lo)
            } else {
                line.as_ptr()
            };
            // SAFETY: only the lanes of `load` are read (masked lanes are not accessed and do
            // not fault): lo..hi, the line's values from (x0 + j_lo) * c (indexed above) to
            // (x0 + j_hi) * c <= w * c, hi <= run; none where the mask is empty; `store`'s
            // lanes are 0..lanes, `dst`'s values (those from `run` on stored as the load's
            // zeros). `Masked` is private to this module and used only by `gather_rows` below,
            // which has avx512f, avx512bw and avx512vl. Rows of up to 8 values (the stem's 7,
            // padded to 8) move in 128-bit registers: the masked 512-bit store is several
            // times slower.
            unsafe {
                if lanes <= 8 {
                    let v = _mm_maskz_loadu_epi16(load as u8, src.cast());
                    _mm_mask_storeu_epi16(dst.as_mut_ptr().cast(), store as u8, v);
                } else if lanes <= 16 {
                    let v = _mm256_maskz_loadu_epi16(load as u16, src.cast());
                    _mm256_mask_storeu_epi16(dst.as_mut_ptr().cast(), store as u16, v);
                } else {
                    let v = _mm512_maskz_loadu_epi16(load, src.cast());
                    _mm512_mask_storeu_epi16(dst.as_mut_ptr().cast(), store, v);
                }
            }
        }
    }

    /// [`super::gather_rows`] with [`Masked`] copies.
    ///
    /// # Safety
    /// The CPU has avx512f, avx512bw and avx512vl; `s`'s kernel rows are at most 32 values
    /// with their padding (`run_ld <= 32`), with dilation 1 along the width.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn gather_rows(
        s: &ConvShape,
        x: &[u16],
        dims: [usize; 5],
        out_dims: [usize; 5],
        first: usize,
        count: usize,
        ld: usize,
        run_ld: usize,
        depth: Range<usize>,
        dst: &mut [u16],
    ) {
        super::gather_rows(s, x, dims, out_dims, first, count, ld, run_ld, depth, dst, &Masked);
    }
}

/// [`gather`] for any element (f32, or the bf16 network's rounded input: rounding commutes
/// with the copy), kernel rows of adjacent taps copied by `window`, into rows `ld` apart,
/// each kernel row of `kw * c` values padded with zeros to `run_ld` (the bf16 kernel's even
/// rows) and the row's last `ld - depth.len() * kh * run_ld` values zeros; the depth taps
/// `depth` only. `x` is the input of shape
/// `dims` (checked against `s` by `on`), `dst` holds `count * ld` values.
#[allow(clippy::too_many_arguments)] // the gathered product's operands, as `gather`'s
#[inline(always)]
pub(super) fn gather_rows<T: Copy + Default>(
    s: &ConvShape,
    x: &[T],
    dims: [usize; 5],
    out_dims: [usize; 5],
    first: usize,
    count: usize,
    ld: usize,
    run_ld: usize,
    depth: Range<usize>,
    dst: &mut [T],
    window: &impl Window<T>,
) {
    let zero = T::default();
    let [_, d, h, w, c] = dims;
    let [_, od, oh, ow, _] = out_dims;
    let [_, kh, kw] = s.kernel;
    let [sd, sh, sw] = s.stride;
    let [pd, ph, pw] = s.padding;
    let [dd, dh, dw] = s.dilation;
    let run = kw * c;
    let k = depth.len() * kh * run_ld;
    debug_assert!(run_ld >= run && ld >= k && dst.len() >= count * ld);
    // Every value is written: copied from the volume, or zero where the kernel reaches into the
    // padding (the buffer is reused between tiles). Coordinates are `isize`: `on` checked that
    // every padded extent is.
    for (r, row) in dst.chunks_exact_mut(ld).take(count).enumerate() {
        let (patch, rest) = row.split_at_mut(k);
        fill_run(rest, zero);
        let mut p = first + r;
        let ox = p % ow;
        p /= ow;
        let oy = p % oh;
        p /= oh;
        let oz = p % od;
        let b = p / od;
        let x0 = (ox * sw) as isize - pw as isize;
        for (t, depth_taps) in depth.clone().zip(patch.chunks_exact_mut(kh * run_ld)) {
            let z = (oz * sd + t * dd) as isize - pd as isize;
            let z = if s.replicate_depth {
                z.clamp(0, d as isize - 1)
            } else if z < 0 || z >= d as isize {
                fill_run(depth_taps, zero);
                continue;
            } else {
                z
            } as usize;
            for (i, dst) in depth_taps.chunks_exact_mut(run_ld).enumerate() {
                let y = (oy * sh + i * dh) as isize - ph as isize;
                if y < 0 || y >= h as isize {
                    fill_run(dst, zero);
                    continue;
                }
                let line = ((b * d + z) * h + y as usize) * w;
                if dw != 1 {
                    let (dst, pad) = dst.split_at_mut(run);
                    fill_run(pad, zero);
                    for (j, tap) in dst.chunks_exact_mut(c).enumerate() {
                        let xj = x0 + (j * dw) as isize;
                        if xj < 0 || xj >= w as isize {
                            fill_run(tap, zero);
                        } else {
                            let src = (line + xj as usize) * c;
                            tap.copy_from_slice(&x[src..src + c]);
                        }
                    }
                    continue;
                }
                window.copy(dst, run, &x[line * c..(line + w) * c], x0, c);
            }
        }
    }
}

/// `dst.copy_from_slice(src)`, without a call to `memcpy` for the short runs of the stem (7
/// values for a 1-channel 7x7 kernel row), where the call costs more than the copy.
#[inline]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
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

/// `dst.fill(value)`, without a call to `memset` for the short runs of the stem (the edges of
/// a 7-value kernel row, the bf16 rows' one-value tail).
#[inline]
fn fill_run<T: Copy>(dst: &mut [T], value: T) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match dst.len() {
                0 => {}
                $($n => dst[..$n].fill(value),)*
                _ => dst.fill(value),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bf16 network gathers from its input rounded once: the same rows as gathering in
    /// f32 and rounding them, each kernel row padded with zeros to the bf16 kernel's even
    /// rows, the rows' tails zero; the masked copies and the clipped ones agree.
    #[test]
    fn gathering_the_rounded_input_rounds_the_gathered_patches() {
        let cases = [
            // A one-channel stem (runs of 7 padded to 8, the clipped edges), replicate depth
            // padding, a dilation, three channels (runs of 9 padded to 10), 16 channels of a
            // 3-wide kernel (48: the clipped copies), a 32-value run.
            (2, 1, [9, 12, 20], [7, 7, 7], [2, 2, 2], [3, 3, 3], [1, 1, 1], false),
            (1, 1, [5, 6, 7], [3, 3, 3], [1, 2, 1], [1, 1, 1], [1, 1, 1], true),
            (1, 2, [6, 7, 9], [3, 3, 3], [1, 1, 2], [2, 2, 2], [2, 1, 2], false),
            (1, 3, [4, 5, 6], [1, 3, 3], [1, 1, 1], [0, 1, 1], [1, 1, 1], false),
            (1, 16, [3, 4, 5], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false),
            (1, 4, [3, 4, 11], [1, 1, 8], [1, 1, 3], [0, 0, 5], [1, 1, 1], false),
        ];
        let bf16 = super::super::bf16::to_bf16;
        for (n, c, input, kernel, stride, padding, dilation, replicate) in cases {
            let s = ConvShape::for_test(n, c, 4, input, kernel, stride, padding, dilation, replicate);
            let [d, h, w] = s.input;
            let dims = [n, d, h, w, c];
            let [od, oh, ow] = s.output;
            let out_dims = [n, od, oh, ow, 4];
            let x: Vec<f32> = (0..s.input_len()).map(|i| (i as f32 * 0.731).sin() * 3.1).collect();
            let rounded: Vec<u16> = x.iter().map(|&v| bf16(v)).collect();
            let (k, run) = (s.k(), kernel[2] * c);
            let run_ld = run.div_ceil(2) * 2;
            let rows_of_kernel = kernel[0] * kernel[1];
            let ld = rows_of_kernel * run_ld + 3;
            let rows = n * od * oh * ow;
            let (first, count) = (rows / 3, rows - rows / 3);
            let mut patches = Vec::new();
            gather(
                &s,
                View { data: &x, dims },
                out_dims,
                first,
                count,
                0..kernel[0],
                &mut patches,
            );
            let mut gathered = vec![7u16; count * ld];
            gather_rows_bf16(&s, &rounded, dims, out_dims, first, count, ld, run_ld, &mut gathered);
            let mut clipped = vec![9u16; count * ld];
            gather_rows(
                &s,
                &rounded,
                dims,
                out_dims,
                first,
                count,
                ld,
                run_ld,
                0..kernel[0],
                &mut clipped,
                &Clipped,
            );
            assert_eq!(gathered, clipped, "{s:?}");
            for (r, row) in gathered.chunks_exact(ld).enumerate() {
                let patch = &patches[r * k..(r + 1) * k];
                for (q, kernel_row) in row[..rows_of_kernel * run_ld].chunks_exact(run_ld).enumerate() {
                    let want: Vec<u16> = patch[q * run..(q + 1) * run].iter().map(|&v| bf16(v)).collect();
                    assert_eq!(&kernel_row[..run], &want[..], "{s:?}, row {r}");
                    assert!(kernel_row[run..].iter().all(|&v| v == 0), "{s:?}, row {r}");
                }
                assert!(row[rows_of_kernel * run_ld..].iter().all(|&v| v == 0), "{s:?}, row {r}");
            }
            assert!(patches[..count * k].contains(&0.0) && patches.iter().any(|&v| v != 0.0));
        }
    }

    /// Gathering only some depth taps gives those taps' columns of the whole patches.
    #[test]
    fn the_depth_taps_gathered_are_columns_of_the_whole_patches() {
        for (input, kernel, stride, padding) in [
            ([1, 4, 5], [3, 3, 3], [1, 1, 1], [1, 1, 1]),
            ([2, 5, 4], [3, 3, 3], [2, 2, 2], [1, 1, 1]),
            ([1, 6, 6], [5, 3, 3], [3, 1, 1], [4, 1, 1]),
        ] {
            let c = 3;
            let s = ConvShape::for_test(2, c, 4, input, kernel, stride, padding, [1; 3], false);
            let [d, h, w] = s.input;
            let dims = [2, d, h, w, c];
            let [od, oh, ow] = s.output;
            let out_dims = [2, od, oh, ow, 4];
            let x: Vec<f32> = (0..s.input_len()).map(|i| (i as f32 * 0.37).cos()).collect();
            let rows = 2 * od * oh * ow;
            let depth = s.depth_taps_read();
            assert!(depth.len() < kernel[0], "{s:?}");
            let (mut whole, mut cropped) = (Vec::new(), Vec::new());
            gather(
                &s,
                View { data: &x, dims },
                out_dims,
                1,
                rows - 1,
                0..kernel[0],
                &mut whole,
            );
            gather(
                &s,
                View { data: &x, dims },
                out_dims,
                1,
                rows - 1,
                depth.clone(),
                &mut cropped,
            );
            let per_tap = kernel[1] * kernel[2] * c;
            let (k, kept) = (s.k(), depth.len() * per_tap);
            assert!(cropped.len() >= (rows - 1).div_ceil(MR) * MR * kept);
            for r in 0..rows - 1 {
                let row = &whole[r * k..(r + 1) * k];
                assert_eq!(
                    &cropped[r * kept..(r + 1) * kept],
                    &row[depth.start * per_tap..depth.end * per_tap]
                );
                // The taps left out read only padding.
                assert!(
                    row[..depth.start * per_tap]
                        .iter()
                        .chain(&row[depth.end * per_tap..])
                        .all(|&v| v == 0.0)
                );
            }
        }
    }

    /// A padding of 2^61 with 8 channels (a hostile review's case): the taps outside the line
    /// are found in taps, not as a product of padding and channels that wraps around, so the
    /// masked copy gathers zeros as the clipped one does.
    #[test]
    fn a_huge_padding_gathers_zeros() {
        let s = ConvShape::for_test(
            1,
            8,
            4,
            [1, 1, 1],
            [1, 1, 1],
            [1, 1, 1 << 62],
            [0, 0, 1 << 61],
            [1; 3],
            false,
        );
        assert_eq!(s.output, [1, 1, 2]);
        let dims = [1, 1, 1, 1, 8];
        let x = vec![super::super::bf16::to_bf16(1.0); 8];
        let mut gathered = vec![7u16; 2 * 8];
        gather_rows_bf16(&s, &x, dims, [1, 1, 1, 2, 4], 0, 2, 8, 8, &mut gathered);
        assert_eq!(gathered, vec![0u16; 16]);
    }

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
