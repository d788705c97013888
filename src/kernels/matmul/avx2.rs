//! The AVX2 register-tiled product of [`matmul`](super), for x86-64 CPUs with AVX2 and FMA
//! but not AVX-512 (AMD before Zen 4, most Intel desktops): the same 32-column panels of `B`
//! as the AVX-512 tile, each walked as two halves of 16 columns, `C` in tiles of up to 6 rows
//! by 16 columns (12 of the 16 ymm registers accumulating, two holding `B`'s row, one `A`'s
//! broadcast value). Per multiply-add of a tile row, two loads of `B` serve six rows, so the
//! two FMA units, not the loads, bound it.

use std::arch::x86_64::*;

use super::{MR, NR, Store};

/// Rows of the AVX2 register tile.
const ROWS: usize = 6;

/// `C[r][0..cols] = store(C[r], sum over runs (o, k0) of sum_p A[r][o + p] * Bp[k0 + p][0..cols])`
/// for `r < rows`: the AVX2 counterpart of the AVX-512 tile. `A[r][p]` at `a[o + r * lda + p]`
/// for a run at `o`, or with `AT` (one run at 0) at `a[o + p * lda + r]`.
///
/// # Safety
/// The CPU must have `avx2` and `fma` (a [`Kernel::Avx2`](super::Kernel::Avx2) only comes
/// from [`Kernel::avx2`](super::Kernel::avx2) finding both). `rows <=`
/// [`MR`]; `a` valid for reads of `rows` rows of `len` values from each run's offset (with
/// `AT`, `len` rows of `rows` values); `bp` for rows `k0..k0 + len` of [`NR`] values of
/// every run; `c` for reads and writes of `rows` rows of `cols <= NR` values `ldc` apart; the
/// store's bias for `cols` values, its residual (if not null) for `rows` rows of them `ldc`
/// apart (it may be `c` itself).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn runs<const AT: bool>(
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
    debug_assert!(rows <= MR && cols <= NR);
    let mut r0 = 0;
    while r0 < rows {
        let r = (rows - r0).min(ROWS);
        // Rows r0.. of A: offsets move by r0 rows (with AT, by r0 values of each stored row).
        let shift = if AT { r0 } else { r0 * lda };
        for half in 0..2 {
            let h = half * 16;
            if cols <= h {
                break;
            }
            let n = (cols - h).min(16);
            // SAFETY: rows r0..r0 + r <= rows of A, C and the residual, columns h..h + n <= cols
            // of C, the bias and the residual, panel columns h..h + 16 <= NR (the caller's
            // contract).
            unsafe {
                let at = (a.add(shift), lda);
                let b = bp.add(h);
                let c = c.add(r0 * ldc + h);
                let store = store.down(r0, ldc).right(h);
                match r {
                    6 => sub::<6, AT>(at, b, runs, len, c, ldc, n, store),
                    5 => sub::<5, AT>(at, b, runs, len, c, ldc, n, store),
                    4 => sub::<4, AT>(at, b, runs, len, c, ldc, n, store),
                    3 => sub::<3, AT>(at, b, runs, len, c, ldc, n, store),
                    2 => sub::<2, AT>(at, b, runs, len, c, ldc, n, store),
                    _ => sub::<1, AT>(at, b, runs, len, c, ldc, n, store),
                }
            }
        }
        r0 += r;
    }
}

/// One `R x 16` tile of [`runs`]: `b` at the half panel's first column, `c` (and the store)
/// at the tile's first row and column, `n <= 16` columns stored.
///
/// # Safety
/// As [`runs`] for these `R` rows and 16 panel columns (`n` of them in `C`).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sub<const R: usize, const AT: bool>(
    (a, lda): (*const f32, usize),
    b: *const f32,
    runs: &[(usize, usize)],
    len: usize,
    c: *mut f32,
    ldc: usize,
    n: usize,
    store: Store,
) {
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    for &(o, k0) in runs {
        for p in 0..len {
            // SAFETY: panel row k0 + p holds NR values, 16 from the half's first column; A's
            // R rows hold `len` values from `o` (the caller's contract).
            unsafe {
                let b0 = _mm256_loadu_ps(b.add((k0 + p) * NR));
                let b1 = _mm256_loadu_ps(b.add((k0 + p) * NR + 8));
                for r in 0..R {
                    let at = if AT { o + p * lda + r } else { o + r * lda + p };
                    let av = _mm256_broadcast_ss(&*a.add(at));
                    lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
                }
            }
        }
    }
    // SAFETY: the caller's contract for C, the bias and the residual.
    unsafe { store_to(&lo, &hi, c, ldc, n, store) };
}

/// The lanes of `_mm256_maskload_ps` / `_mm256_maskstore_ps` for the first `n` of 8 values.
#[inline]
#[target_feature(enable = "avx2")]
fn first_lanes(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// The first `n <= 16` values from `p`, as two vectors: masked-off lanes (a partial
/// panel's last columns) are not read and come back zero; with `n <= 8` the second vector is
/// zero and `p + 8` is not formed (it may lie past the buffer's end).
///
/// # Safety
/// `p` valid for reads of `n` values; `masks` are [`first_lanes`] of `n` and `n - 8`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load(p: *const f32, n: usize, (m0, m1): (__m256i, __m256i)) -> (__m256, __m256) {
    // SAFETY: the caller's contract: with n > 8, p + 8 lies within the n values.
    unsafe {
        if n == 16 {
            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        } else if n > 8 {
            (_mm256_maskload_ps(p, m0), _mm256_maskload_ps(p.add(8), m1))
        } else {
            (_mm256_maskload_ps(p, m0), _mm256_setzero_ps())
        }
    }
}

/// Writes the first `n <= 16` lanes of `(v0, v1)` to `p`; masked-off lanes are not written.
///
/// # Safety
/// `p` valid for writes of `n` values; `masks` as for [`load`].
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn put(p: *mut f32, n: usize, (m0, m1): (__m256i, __m256i), (v0, v1): (__m256, __m256)) {
    // SAFETY: the caller's contract.
    unsafe {
        if n == 16 {
            _mm256_storeu_ps(p, v0);
            _mm256_storeu_ps(p.add(8), v1);
        } else {
            _mm256_maskstore_ps(p, m0, v0);
            if n > 8 {
                _mm256_maskstore_ps(p.add(8), m1, v1);
            }
        }
    }
}

/// `C[r][0..n] = store(C[r][0..n], (lo[r], hi[r]))` for `r < R`, `n <= 16`: the sums added
/// to C, or written as `sums + bias + residual`; then ReLU if asked (`max(0, v)` keeps NaN:
/// `maxps` returns its second operand where either is NaN).
///
/// # Safety
/// `c` valid for reads and writes of `R` rows of `n` values `ldc` apart; the store's bias
/// for `n` values, its residual (if not null) for `R` rows of `n` values `ldc` apart, read
/// before the same row of C is written (it may be C).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_to<const R: usize>(
    lo: &[__m256; R],
    hi: &[__m256; R],
    c: *mut f32,
    ldc: usize,
    n: usize,
    store: Store,
) {
    let masks = (first_lanes(n), first_lanes(n.saturating_sub(8)));
    let zero = _mm256_setzero_ps();
    // SAFETY: the bias holds n values (the caller's contract).
    let init = store
        .init
        .map(|(bias, residual)| (unsafe { load(bias, n, masks) }, residual));
    for r in 0..R {
        // SAFETY: row r < R lies in C and the residual (the caller's contract); the residual's
        // row is read before C's row is written.
        unsafe {
            let row = c.add(r * ldc);
            let (mut v0, mut v1) = match init {
                Some(((b0, b1), residual)) => {
                    let (mut v0, mut v1) = (_mm256_add_ps(b0, lo[r]), _mm256_add_ps(b1, hi[r]));
                    if !residual.is_null() {
                        let (r0, r1) = load(residual.add(r * ldc), n, masks);
                        v0 = _mm256_add_ps(v0, r0);
                        v1 = _mm256_add_ps(v1, r1);
                    }
                    (v0, v1)
                }
                None => {
                    let (c0, c1) = load(row, n, masks);
                    (_mm256_add_ps(c0, lo[r]), _mm256_add_ps(c1, hi[r]))
                }
            };
            if store.relu {
                v0 = _mm256_max_ps(zero, v0);
                v1 = _mm256_max_ps(zero, v1);
            }
            put(row, n, masks, (v0, v1));
        }
    }
}
