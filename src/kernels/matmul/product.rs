//! The training passes' product: `B` packed block by block as it is used, never stored whole.

use std::ops::Range;

use super::tiled::{Store, panel_rows};
use super::{KC, Kernel, MR, NR};

/// Buffers a thread reuses between calls of [`product`]: the packed blocks of `B` and the
/// last rows of `A` padded to a full register tile.
// Used by the training ops, which need the flex backend.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    b: Vec<f32>,
    a_tail: Vec<f32>,
}

/// `src` (at most [`NR`] values) as a packed row of `B` (`dst`, [`NR`] values), zeros after
/// it: one fixed-size move for a whole row, not a call (what [`product`]'s `pack` closures
/// copy most).
// Used by the training ops, which need the flex backend.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
#[inline(always)]
pub(crate) fn pack_row(dst: &mut [f32], src: &[f32]) {
    if let (Ok(d), Ok(s)) = (<&mut [f32; NR]>::try_from(&mut *dst), <&[f32; NR]>::try_from(src)) {
        *d = *s;
        return;
    }
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    dst[n..].fill(0.0);
}

/// [`product`]'s `A` read row by row: element `(r, p)` at `a[r * lda + p]`.
// Used by the training ops, which need the flex backend.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) const A_IN_ROWS: bool = false;

/// [`product`]'s `A` stored transposed: element `(r, p)` at `a[p * lda + r]`, so that `A` is
/// `k` rows of at least `rows` values (`C = X^T B` for a row-major `X`, as in a weight
/// gradient, summed over voxels, of two channels-last tensors).
// Used by the training ops, which need the flex backend.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) const A_TRANSPOSED: bool = true;

/// `C[0..rows, cols] += A[0..rows, 0..k] * B[0..k, cols]` on this thread, `cols` being the
/// columns of `panels` (32 each, the last clipped to `n`), with `B` never stored whole:
/// `pack(ks, j, buf)` writes rows `ks` of panel `j` into `buf` (`ks.len()` rows of [`NR`]
/// values, columns at or past `n` as zeros). `k` is walked in blocks of [`KC`] rows, all
/// panels of a block packed before they are used, so that the packed block stays in L1/L2
/// while every row of `A` passes it. `A` is read in place, laid out as `AT` says
/// ([`A_IN_ROWS`] or [`A_TRANSPOSED`]); its last rows, if fewer than a register tile, are
/// copied row by row.
///
/// # Safety
/// `a` must be valid for reads of `rows` rows of `k` values, `lda` apart ([`A_TRANSPOSED`]:
/// `k` rows of `rows` values); `c` for reads and writes of `rows` rows, `ldc` apart, over
/// the columns of `panels` (each below `n`); no other thread may touch those values
/// meanwhile. (`kernel` is one this CPU runs: a tiled one is only made after its features
/// were found.)
// Used by the training ops, which need the flex backend.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product<const AT: bool>(
    kernel: Kernel,
    a: *const f32,
    lda: usize,
    rows: usize,
    k: usize,
    n: usize,
    panels: Range<usize>,
    mut pack: impl FnMut(Range<usize>, usize, &mut [f32]),
    c: *mut f32,
    ldc: usize,
    scratch: &mut Scratch,
) {
    if rows == 0 || k == 0 || panels.is_empty() {
        return;
    }
    debug_assert!(panels.end <= n.div_ceil(NR), "panels {panels:?} of {n} columns");
    let count = panels.len();
    let full = rows / MR;
    let tail = rows - full * MR;
    scratch.b.resize(count * KC * NR, 0.0);
    scratch.a_tail.resize(MR * KC, 0.0);
    let mut kb = 0;
    while kb < k {
        let kc = KC.min(k - kb);
        for (slot, j) in panels.clone().enumerate() {
            pack(kb..kb + kc, j, &mut scratch.b[slot * KC * NR..][..kc * NR]);
        }
        if tail > 0 {
            // The last rows, padded with zero rows so that the register tile reads MR rows;
            // the padding rows' results are never stored.
            scratch.a_tail[..MR * kc].fill(0.0);
            if AT {
                // One pass over the stored rows (each holds the tail's values side by side).
                for p in 0..kc {
                    // SAFETY: row kb + p < k of the stored A, and its values full * MR ..
                    // rows (caller's contract).
                    let src = unsafe { std::slice::from_raw_parts(a.add((kb + p) * lda + full * MR), tail) };
                    for (r, &v) in src.iter().enumerate() {
                        scratch.a_tail[r * kc + p] = v;
                    }
                }
            } else {
                for r in 0..tail {
                    // SAFETY: row full * MR + r < rows, and kb + kc <= k (caller's contract).
                    let src = unsafe { std::slice::from_raw_parts(a.add((full * MR + r) * lda + kb), kc) };
                    scratch.a_tail[r * kc..(r + 1) * kc].copy_from_slice(src);
                }
            }
        }
        for (slot, j) in panels.clone().enumerate() {
            let cols = (n - j * NR).min(NR);
            // SAFETY: A's rows from column kb (kb + kc <= k), `a_tail` MR rows of kc values,
            // the packed block kc rows of NR values, C's rows over panel j's columns.
            unsafe {
                panel_rows::<AT>(
                    kernel,
                    kc,
                    (a.add(if AT { kb * lda } else { kb }), lda),
                    rows,
                    (scratch.a_tail.as_ptr(), kc),
                    scratch.b[slot * KC * NR..].as_ptr(),
                    c.add(j * NR),
                    ldc,
                    cols,
                    Store::ADD,
                );
            }
        }
        kb += kc;
    }
}
