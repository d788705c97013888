//! The AVX-512 register-tiled product of [`matmul`](super): 12x32 tiles of `C` in 24 zmm
//! registers, `B` in prepacked panels of 32 columns.

use super::{MR, NR, Store};
use std::arch::x86_64::*;

/// See [`super::accumulate_runs`]: `bp` is panel j's first row, `c` at its first column.
///
/// # Safety
/// As [`super::accumulate_runs`]; needs `avx512f`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn accumulate_runs(
    a: *const f32,
    lda: usize,
    bp: *const f32,
    runs: &[(usize, usize)],
    len: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        if rows <= SHORT {
            runs_rows::<SHORT, false>(a, lda, bp, runs, len, c, ldc, rows, cols, Store::ADD)
        } else {
            runs_rows::<MR, false>(a, lda, bp, runs, len, c, ldc, rows, cols, Store::ADD)
        }
    }
}

/// [`accumulate_runs`] with `R` rows in registers (`rows <= R <= MR`); `bp` is the
/// panel's first row. `A[r][p]` at `a[o + r * lda + p]` for a run at `o`, or with `AT` (one
/// run at 0) at `a[p * lda + r]`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn runs_rows<const R: usize, const AT: bool>(
    a: *const f32,
    lda: usize,
    bp: *const f32,
    runs: &[(usize, usize)],
    len: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: Store,
) {
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    for &(o, k0) in runs {
        for p in 0..len {
            // SAFETY: A holds R <= MR rows of `len` values from `o` (with `AT`, `len` rows
            // of R values), the panel rows k0..k0 + len (the caller's contract).
            unsafe {
                let b0 = _mm512_loadu_ps(bp.add((k0 + p) * NR));
                let b1 = _mm512_loadu_ps(bp.add((k0 + p) * NR + 16));
                for r in 0..R {
                    let at = if AT { o + p * lda + r } else { o + r * lda + p };
                    let av = _mm512_set1_ps(*a.add(at));
                    lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
                }
            }
        }
    }
    // SAFETY: the caller's contract for C and the store's bias and residual.
    unsafe { store_to(&lo, &hi, c, ldc, rows, cols, store) };
}

/// Rows of the short register tile, for the last rows of a block (an output line of 32
/// voxels is 12 + 12 + 8 rows: with 12-row tiles only, a ninth of the work was padding).
const SHORT: usize = 8;

/// `C[r][0..cols] += sum_p A[r][p] * Bp[p][0..cols]` for `r < rows`, in registers; `A`
/// has MR rows `lda` apart (with `AT`, `kc` rows of MR values `lda` apart: stored
/// transposed), read in place (the first [`SHORT`] only when `rows` fits them).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile<const AT: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: Store,
) {
    // SAFETY: the caller's contract; each tile reads at most MR rows of A.
    unsafe {
        if rows <= SHORT {
            tile_rows::<SHORT, AT>(kc, a, lda, bp, c, ldc, rows, cols, store)
        } else {
            tile_rows::<MR, AT>(kc, a, lda, bp, c, ldc, rows, cols, store)
        }
    }
}

/// [`tile`] with `R` rows in registers (`rows <= R <= MR`).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_rows<const R: usize, const AT: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: Store,
) {
    // One run of kc rows: the general tile of `accumulate_runs`.
    // SAFETY: A holds R <= MR rows of kc values, Bp kc x NR; C and the store the caller's
    // contract.
    unsafe { runs_rows::<R, AT>(a, lda, bp, &[(0, 0)], kc, c, ldc, rows, cols, store) }
}

/// `C[r][0..cols] = store(C[r], (lo[r], hi[r]))` for `r < rows` (see [`Store`]): a register
/// tile's accumulators added to its rows of C, or written with the bias and residual, then
/// ReLU if asked (`max(0, v)` returns `v` when it is NaN: NaN is kept).
///
/// # Safety
/// `c` valid for reads and writes of `rows <= R` rows of `cols <= NR` values `ldc` apart;
/// the store's bias for `cols` values, its residual (if not null) for `rows` rows of them
/// `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_to<const R: usize>(
    lo: &[__m512; R],
    hi: &[__m512; R],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: Store,
) {
    let Some((bias, residual)) = store.init else {
        // SAFETY: the caller's contract.
        unsafe { add_to(lo, hi, c, ldc, rows, cols) };
        if store.relu {
            // SAFETY: the caller's contract.
            unsafe { relu_rows(c, ldc, rows, cols) };
        }
        return;
    };
    let mask = |n: usize| -> __mmask16 { if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as u16 } };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    let zero = _mm512_setzero_ps();
    // SAFETY: the bias holds `cols` values; masked-off lanes are not read.
    let (b0, b1) = unsafe { (_mm512_maskz_loadu_ps(m0, bias), _mm512_maskz_loadu_ps(m1, bias.add(16))) };
    for r in 0..rows {
        // SAFETY: row r < rows lies in C and the residual; masked-off lanes are neither
        // read nor written.
        unsafe {
            let (mut v0, mut v1) = (_mm512_add_ps(b0, lo[r]), _mm512_add_ps(b1, hi[r]));
            if !residual.is_null() {
                let res = residual.add(r * ldc);
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, res));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, res.add(16)));
            }
            if store.relu {
                v0 = _mm512_max_ps(zero, v0);
                v1 = _mm512_max_ps(zero, v1);
            }
            let row = c.add(r * ldc);
            _mm512_mask_storeu_ps(row, m0, v0);
            if m1 != 0 {
                _mm512_mask_storeu_ps(row.add(16), m1, v1);
            }
        }
    }
}

/// ReLU (keeping NaN) on `rows` rows of `cols <= NR` values of C, `ldc` apart.
///
/// # Safety
/// `c` valid for reads and writes of those values.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn relu_rows(c: *mut f32, ldc: usize, rows: usize, cols: usize) {
    let mask = |n: usize| -> __mmask16 { if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as u16 } };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    let zero = _mm512_setzero_ps();
    for r in 0..rows {
        // SAFETY: row r < rows lies in C; masked-off lanes are neither read nor written.
        unsafe {
            let row = c.add(r * ldc);
            _mm512_mask_storeu_ps(row, m0, _mm512_max_ps(zero, _mm512_maskz_loadu_ps(m0, row)));
            if m1 != 0 {
                let v = _mm512_maskz_loadu_ps(m1, row.add(16));
                _mm512_mask_storeu_ps(row.add(16), m1, _mm512_max_ps(zero, v));
            }
        }
    }
}

/// `C[r][0..cols] += (lo[r], hi[r])` for `r < rows`: a register tile's accumulators added
/// to its rows of C (shared with the bf16 tile).
///
/// # Safety
/// `c` valid for reads and writes of `rows <= R` rows of `cols <= NR` values `ldc` apart.
#[inline]
#[target_feature(enable = "avx512f")]
pub(in crate::kernels) unsafe fn add_to<const R: usize>(
    lo: &[__m512; R],
    hi: &[__m512; R],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mask = |n: usize| -> __mmask16 { if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as u16 } };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    for r in 0..rows {
        // SAFETY: row r < rows and the masked columns lie in C; masked-off lanes are
        // neither read nor written.
        unsafe {
            let row = c.add(r * ldc);
            let v = _mm512_maskz_loadu_ps(m0, row);
            _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(v, lo[r]));
            if m1 != 0 {
                let v = _mm512_maskz_loadu_ps(m1, row.add(16));
                _mm512_mask_storeu_ps(row.add(16), m1, _mm512_add_ps(v, hi[r]));
            }
        }
    }
}
