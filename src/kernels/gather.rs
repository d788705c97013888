//! Patches gathered per tile of output voxels, for the convolutions that cannot read their
//! input in place (see [`implicit`](super::implicit)): any padding, dilation, short lines.
//! One row per output voxel, the kernel's taps in its order, zeros where a tap reads padding;
//! in f32, or in bf16 from the input rounded once (with the bf16 kernel's even rows).
//!
//! Every function takes the [`ConvShape`] that [`ConvGeometry::on`] checked against the input,
//! and reads only within the extents it states.
//!
//! [`ConvGeometry::on`]: crate::arch::geometry::ConvGeometry::on

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::bf16::PackedBf16;
use super::buffers::View;
use super::matmul::{KC, MR, PackedB, blocks_of};
use crate::arch::geometry::ConvShape;

thread_local! {
    /// Per thread: the bf16 rows of a tile (gathered patches, or a pointwise layer's input).
    static ROWS_BF16: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Output rows `first..first + count`, columns of `panels`, `+=` the bf16 product of their
/// patches' depth taps `depth` with `w`'s rows of those taps: patches gathered from `x_bf16`
/// (`x` rounded), or for a pointwise convolution (`x_bf16` none) `x`'s rows rounded. The
/// patches' rows are padded to a whole number of register tiles (values of earlier tiles,
/// results never stored).
///
/// # Safety
/// `w` must be `s`'s kernel and [`bf16::available`](super::bf16::available) true; `x` of `s`'s
/// input shape (checked by `on`), `x_bf16` `x` rounded or none for a pointwise convolution
/// (one output row per input row); `depth` the kernel's depth taps or
/// [`ConvShape::depth_taps_read`]'s; `out` the output of `out_dims`, this call alone touching
/// those rows and columns.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn accumulate_bf16(
    s: &ConvShape,
    w: &PackedBf16,
    x: View<'_>,
    x_bf16: Option<&[u16]>,
    depth: Range<usize>,
    out_dims: [usize; 5],
    first: usize,
    count: usize,
    panels: Range<usize>,
    out: *mut f32,
) {
    let (k, oc) = (s.k(), out_dims[4]);
    ROWS_BF16.with_borrow_mut(|a| {
        let kp = w.k();
        a.resize(a.len().max(count.div_ceil(MR) * MR * kp), 0);
        // The kernel's rows the patches hold: those of the depth taps read, or all of a
        // pointwise kernel (k = in_channels values per row, even: `freeze_bf16` packs no other).
        let (kp, ks) = match x_bf16 {
            Some(xb) => {
                let per_tap = s.kernel[1] * w.run();
                let ks = depth.start * per_tap..depth.end * per_tap;
                gather_rows_bf16(s, xb, x.dims, out_dims, first, count, ks.len(), w.run(), depth, a);
                (ks.len(), ks)
            }
            None => {
                let rows = &x.data[first * k..(first + count) * k];
                for (dst, src) in a.chunks_exact_mut(kp).zip(rows.chunks_exact(k)) {
                    super::bf16::round_into(src, &mut dst[..k]);
                    dst[k..].fill(0);
                }
                (kp, 0..kp)
            }
        };
        for r0 in (0..count).step_by(MR) {
            for j in panels.clone() {
                // SAFETY: `a` holds MR rows of kp values from row r0 (whole tiles); ks, kp rows
                // of `w` from an even row (kernel rows of `w.run()`, even, per tap); C: the
                // caller's rows (r0 < count) and panel j; the caller's contract for the rest.
                unsafe {
                    super::bf16::accumulate(
                        a.as_ptr().add(r0 * kp),
                        kp,
                        MR.min(count - r0),
                        w,
                        ks.clone(),
                        j,
                        out.add((first + r0) * oc),
                        oc,
                    )
                };
            }
        }
    });
}

/// Output rows `first..first + count`, columns of `panels`, `+=` the product of their
/// patches' depth taps (gathered into `patches`) with `w`'s rows of those taps (the taps lead
/// the kernel's rows): the taps `depth`, or where `planes` says so each output plane's own
/// ([`ConvShape::depth_taps_of`]), the rows split where the taps read change when that takes
/// fewer register tiles times taps.
///
/// # Safety
/// `w` must be `s`'s kernel packed for a tiled kernel
/// ([`Kernel::tiled`](super::matmul::Kernel::tiled)); `x` of `s`'s input shape (checked by `on`); `depth` the kernel's depth taps or
/// [`ConvShape::depth_taps_read`]'s, and `planes` only for a finite kernel (the taps a plane
/// skips would multiply zero padding); `out` the output of `out_dims`, this call alone
/// touching those rows and columns.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn accumulate_f32(
    s: &ConvShape,
    w: &PackedB,
    x: View<'_>,
    depth: Range<usize>,
    planes: bool,
    out_dims: [usize; 5],
    first: usize,
    count: usize,
    panels: Range<usize>,
    out: *mut f32,
    patches: &mut Vec<f32>,
) {
    let [_, od, oh, ow, oc] = out_dims;
    let plane = (oh * ow).max(1);
    // (first row, rows, depth taps) of each run of rows that read the same taps.
    let mut parts: Vec<(usize, usize, Range<usize>)> = Vec::new();
    if planes {
        let mut r = first;
        while r < first + count {
            let end = ((r / plane + 1) * plane).min(first + count);
            let taps = s.depth_taps_of((r / plane) % od);
            match parts.last_mut() {
                Some((_, n, t)) if *t == taps => *n += end - r,
                _ => parts.push((r, end - r, taps)),
            }
            r = end;
        }
    }
    let cost = |n: usize, t: &Range<usize>| n.div_ceil(MR) * t.len();
    if !planes || parts.iter().map(|(_, n, t)| cost(*n, t)).sum::<usize>() >= cost(count, &depth) {
        parts = vec![(first, count, depth)];
    }
    let per_tap = s.kernel[1] * s.kernel[2] * s.in_channels;
    // A plane that reads padding only adds nothing (a finite kernel times zeros).
    for (at, n, taps) in parts.into_iter().filter(|(_, _, taps)| !taps.is_empty()) {
        let kept = taps.len() * per_tap;
        let ks = taps.start * per_tap..taps.end * per_tap;
        gather(s, x, out_dims, at, n, taps, patches);
        // Per panel and block of KC kernel rows, every register tile of rows: the block of
        // the panel (32 KB) stays in L1 while the tiles stream past, instead of the panel's
        // rows of every tap (1.2 MB for 512 channels) streaming from memory once per tile.
        // Each row's sums reach C block by block in the order `accumulate` adds them.
        for j in panels.clone() {
            for block in blocks_of(ks.clone(), KC) {
                for r0 in (0..n).step_by(MR) {
                    // `patches` holds whole register tiles of rows of `kept` values (`gather`),
                    // the block's from column block.start - ks.start; the block lies within K
                    // (`taps` within the kernel's depth: `depth_taps_of`, or the caller's
                    // `depth`). SAFETY: as just said; C: rows at + r0.. within the caller's
                    // (at..at + n within first..first + count), panel j the caller's; the rest
                    // theirs.
                    unsafe {
                        super::matmul::accumulate(
                            patches.as_ptr().add(r0 * kept + (block.start - ks.start)),
                            kept,
                            MR.min(n - r0),
                            w,
                            block.clone(),
                            j,
                            out.add((at + r0) * oc),
                            oc,
                        )
                    };
                }
            }
        }
    }
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
/// otherwise; the depth taps `depth` only. `x_bf16` is the input rounded, of shape `dims`;
/// `dst` holds `count * ld` values.
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
    depth: Range<usize>,
    dst: &mut [u16],
) {
    #[cfg(target_arch = "x86_64")]
    if run_ld <= 32 && s.dilation[2] == 1 && super::bf16::available() {
        // SAFETY: `available` found avx512f, avx512bw and avx512vl; kernel rows of at most 32
        // values with adjacent taps, as `avx512::gather_rows` requires.
        unsafe { avx512::gather_rows(s, x_bf16, dims, out_dims, first, count, ld, run_ld, depth, dst) };
        return;
    }
    gather_rows(
        s, x_bf16, dims, out_dims, first, count, ld, run_ld, depth, dst, &Clipped,
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
            // Rows of up to 8 values (the stem's 7, padded to 8) move in 128-bit registers: the
            // masked 512-bit store is several times slower. Masked lanes are neither accessed
            // nor fault. `Masked` is private, used only by `gather_rows` below (avx512f/bw/vl).
            // SAFETY: `load` reads lanes lo..hi: the line's values (x0 + j_lo) * c (indexed
            // above) .. (x0 + j_hi) * c <= w * c; `store` writes dst's lanes 0..lanes.
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
            gather_rows_bf16(
                &s,
                &rounded,
                dims,
                out_dims,
                first,
                count,
                ld,
                run_ld,
                0..kernel[0],
                &mut gathered,
            );
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
        gather_rows_bf16(&s, &x, dims, [1, 1, 1, 2, 4], 0, 2, 8, 8, 0..1, &mut gathered);
        assert_eq!(gathered, vec![0u16; 16]);
    }
}
