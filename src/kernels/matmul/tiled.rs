//! The register-tiled products (AVX-512, AVX2) over panels of `B`: the prepacked product's
//! blocks, the in-place accumulations of the direct and implicit convolutions, and the tile
//! every product shares.

use std::ops::Range;

use super::{Epilogue, KC, Kernel, MR, NR, PackedB};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

/// How the register tile's sums reach `C` (see [`Epilogue`]): added to it, or, where `init`
/// holds the bias and the residual (null if none) at the tile's first column and row, written
/// as `sums + bias + residual`; then ReLU if `relu`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Store {
    pub(super) init: Option<(*const f32, *const f32)>,
    pub(super) relu: bool,
}

impl Store {
    /// `C += sums`.
    pub(super) const ADD: Store = Store {
        init: None,
        relu: false,
    };

    /// The same store for the rows from `rows` rows further on (`ldc` apart).
    ///
    /// # Safety
    /// The residual, if any, must hold those rows (it has `C`'s layout).
    pub(super) unsafe fn down(self, rows: usize, ldc: usize) -> Store {
        let below = |res: *const f32| {
            if res.is_null() {
                return res;
            }
            // SAFETY: the caller's contract: the residual holds the rows below.
            unsafe { res.add(rows * ldc) }
        };
        Store {
            init: self.init.map(|(bias, res)| (bias, below(res))),
            relu: self.relu,
        }
    }

    /// The same store for the columns from `cols` further on.
    ///
    /// # Safety
    /// The bias and the residual, if any, must hold those columns.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn right(self, cols: usize) -> Store {
        Store {
            // SAFETY: the caller's contract: the bias and the residual hold those columns.
            init: self
                .init
                .map(|(bias, res)| unsafe { (bias.add(cols), if res.is_null() { res } else { res.add(cols) }) }),
            relu: self.relu,
        }
    }

    /// `row[c] = store(row[c], sums[c])` for `c < sums.len()`, one row of a portable tile.
    /// The residual may be the row itself (an output written over its residual): each value
    /// is read through the pointers before it is written, and no reference is made.
    ///
    /// # Safety
    /// `row` must be valid for reads and writes of `sums.len()` values; `init`'s bias must
    /// hold that many values, its residual (if not null) that many from `r * ldc`.
    pub(super) unsafe fn row(self, row: *mut f32, sums: &[f32], r: usize, ldc: usize) {
        for (k, s) in sums.iter().enumerate() {
            // SAFETY: the caller's contract.
            let mut y = unsafe {
                match self.init {
                    Some((bias, res)) => *bias.add(k) + if res.is_null() { 0.0 } else { *res.add(r * ldc + k) },
                    None => *row.add(k),
                }
            } + s;
            if self.relu && y < 0.0 {
                y = 0.0;
            }
            // SAFETY: the caller's contract.
            unsafe { *row.add(k) = y };
        }
    }
}

/// [`matmul`] for the register-tiled kernels: per block of [`KC`] rows of `k`, every panel's
/// tiles, with the epilogue's bias and residual entering with the first block and its ReLU
/// with the last.
///
/// # Safety
/// As [`matmul`], `b` packed for [`Kernel::Avx512`] or [`Kernel::Avx2`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tiled_matmul(
    a: *const f32,
    lda: usize,
    rows: usize,
    b: &PackedB,
    panels: Range<usize>,
    c: *mut f32,
    ldc: usize,
    scratch: &mut Vec<f32>,
    epilogue: Option<Epilogue<'_>>,
) {
    let k = b.k;
    let full = rows / MR;
    // The last rows, if fewer than MR, copied into MR rows padded with zeros so that the
    // register tile never reads past A; their padding rows are never stored.
    let tail = rows - full * MR;
    if tail > 0 {
        scratch.clear();
        scratch.resize(MR * k, 0.0);
        for r in 0..tail {
            // SAFETY: row full * MR + r < rows (caller's contract).
            let src = unsafe { std::slice::from_raw_parts(a.add((full * MR + r) * lda), k) };
            scratch[r * k..(r + 1) * k].copy_from_slice(src);
        }
    }
    let mut kb = 0;
    while kb < k {
        let kc = KC.min(k - kb);
        for j in panels.clone() {
            let cols = (b.n - j * NR).min(NR);
            let store = Store {
                init: epilogue.filter(|_| kb == 0).map(|e| {
                    (
                        // SAFETY: column j * NR < n, the bias's length (asserted by `matmul`);
                        // the residual has C's layout (contract).
                        unsafe { e.bias.as_ptr().add(j * NR) },
                        e.residual.map_or(std::ptr::null(), |r| unsafe { r.add(j * NR) }),
                    )
                }),
                relu: epilogue.is_some_and(|e| e.relu) && kb + kc == k,
            };
            // SAFETY: panel j holds k rows of NR values, so from row kb on kc of them; A's
            // rows from column kb and C's rows over the panel's columns (contract);
            // `scratch` holds MR rows of k values.
            unsafe {
                panel_rows::<false>(
                    b.kernel,
                    kc,
                    (a.add(kb), lda),
                    rows,
                    // (`wrapping_add`: without a tail `scratch` is empty and never read.)
                    (scratch.as_ptr().wrapping_add(kb), k),
                    b.panels.as_ptr().add((j * k + kb) * NR),
                    c.add(j * NR),
                    ldc,
                    cols,
                    store,
                );
            }
        }
        kb += kc;
    }
}

/// `C[0..rows, panel j] += A[0..rows, ..] * B[ks, panel j]` with the register tile, `A` read
/// in place: row `r`'s values for `ks` are `a[r * lda..][..ks.len()]`.
///
/// # Safety
/// `b` must be packed for a tiled kernel ([`Kernel::tiled`]: this CPU runs it; checked by an
/// assertion); `ks` must lie within `b.k` and `j` be one of its panels (checked in debug
/// builds); `a` must be valid for reads of [`MR`] rows of `ks.len()` values (rows past `rows`
/// may be read, their results dropped); `c` for `rows` rows of the panel's columns, `ldc`
/// apart, no other thread touching them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn accumulate(
    a: *const f32,
    lda: usize,
    rows: usize,
    b: &PackedB,
    ks: Range<usize>,
    j: usize,
    c: *mut f32,
    ldc: usize,
) {
    debug_assert!(ks.start <= ks.end, "rows {ks:?}");
    // One run per block of KC rows, each added to C: the sums of 13,824 rows (27 taps of 512
    // channels) in one register carry about ten times the rounding error (a review: 5e-4
    // against 5e-5, to f64, for values near 135), and an empty `ks` leaves C untouched.
    for block in blocks_of(ks.clone(), KC) {
        // SAFETY: the caller's contract, which is `accumulate_runs`'s for the run
        // (block.start - ks.start, block.start) of block.len() rows within `ks`.
        unsafe {
            accumulate_runs(
                a,
                lda,
                rows,
                b,
                &[(block.start - ks.start, block.start)],
                block.len(),
                j,
                c,
                ldc,
            )
        };
    }
}

/// `ks` in blocks of `step` rows from its start (the last one shorter): with [`KC`], the
/// blocks [`accumulate`] adds to `C` one after another, which a caller looping over blocks
/// itself (a block across many tiles of rows) follows to add the same sums in the same order.
pub(crate) fn blocks_of(ks: Range<usize>, step: usize) -> impl Iterator<Item = Range<usize>> {
    let step = step.max(1);
    (ks.start..ks.end)
        .step_by(step)
        .map(move |kb| kb..kb.saturating_add(step).min(ks.end))
}

/// `C[0..rows, panel j] += sum over runs (o, k0) of A[.., o..o + len] * B[k0..k0 + len, panel j]`
/// with the register tile, the accumulators kept in registers across every run: row `r`'s
/// values of run `(o, k0)` are `a[o + r * lda..][..len]`. For convolutions with few input
/// channels (a one-channel stem: 49 runs of 7 values), where one call of [`accumulate`] per
/// run would load and store C for a handful of multiply-adds.
///
/// # Safety
/// As [`accumulate`], for every run: `b` packed for a tiled kernel (asserted), each
/// `k0..k0 + len` within `b.k` and `j` one of its panels (checked in debug builds), `a` valid
/// for reads of [`MR`] rows of `len` values from each run's offset `o`, `c` for `rows` rows
/// of the panel's columns, `ldc` apart, no other thread touching them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn accumulate_runs(
    a: *const f32,
    lda: usize,
    rows: usize,
    b: &PackedB,
    runs: &[(usize, usize)],
    len: usize,
    j: usize,
    c: *mut f32,
    ldc: usize,
) {
    assert!(b.kernel.tiled(), "accumulate_runs reads the tiled layout only");
    debug_assert!(
        runs.iter().all(|&(_, k0)| k0 + len <= b.k),
        "runs of {len} rows of a {}-row kernel",
        b.k
    );
    debug_assert!(j < b.panel_count() && rows <= MR);
    let cols = (b.n - j * NR).min(NR);
    // SAFETY: panel j holds k rows of NR values, and every run's rows lie within k; A and C
    // as the caller promises; a tiled kernel holds the evidence (`HasAvx512`, `HasAvx2`)
    // made only after its features were found.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let bp = b.panels.as_ptr().add(j * b.k * NR);
        match b.kernel {
            Kernel::Avx512(_) => avx512::accumulate_runs(a, lda, bp, runs, len, c.add(j * NR), ldc, rows, cols),
            _ => avx2::runs::<false>(a, lda, bp, runs, len, c.add(j * NR), ldc, rows, cols, Store::ADD),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, lda, rows, runs, len, c, ldc, cols);
    }
}

/// `C[r][0..cols] += sum_p A[r][p] * Bp[p][0..cols]` for every row `r < rows`, one register
/// tile of [`MR`] rows at a time: `a` (with its row stride) for the full tiles, `a_tail` (the
/// last `rows % MR` rows padded with zero rows to MR, with its row stride) for the rest. What
/// [`product`] and the prepacked [`matmul`] share.
///
/// # Safety
/// As [`tile`] for each tile: `a` holds the full tiles' rows, `a_tail` MR rows, `bp` `kc`
/// rows of [`NR`] values, `c` `rows` rows of `cols <= NR` values `ldc` apart. With `AT`, `a`
/// is stored transposed (`kc` rows of the full tiles' rows, `lda` apart); `a_tail` never is.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn panel_rows<const AT: bool>(
    kernel: Kernel,
    kc: usize,
    (a, lda): (*const f32, usize),
    rows: usize,
    (a_tail, tail_lda): (*const f32, usize),
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    store: Store,
) {
    let full = rows / MR;
    for block in 0..full {
        // SAFETY: the block's MR rows lie in A, its rows in C and the residual (the caller's
        // contract).
        unsafe {
            tile::<AT>(
                kernel,
                kc,
                a.add(if AT { block * MR } else { block * MR * lda }),
                lda,
                bp,
                c.add(block * MR * ldc),
                ldc,
                MR,
                cols,
                store.down(block * MR, ldc),
            )
        };
    }
    if rows > full * MR {
        // SAFETY: `a_tail` holds MR rows of kc values; the tail's rows lie in C and the
        // residual.
        unsafe {
            tile::<false>(
                kernel,
                kc,
                a_tail,
                tail_lda,
                bp,
                c.add(full * MR * ldc),
                ldc,
                rows - full * MR,
                cols,
                store.down(full * MR, ldc),
            )
        };
    }
}

/// `C[r][0..cols] += sum_p A[r][p] * Bp[p][0..cols]` for `r < rows`: the register tile of
/// `kernel`; `A[r][p]` at `a[r * lda + p]`, or at `a[p * lda + r]` with `AT`.
///
/// # Safety
/// `a` valid for reads of [`MR`] rows of `kc` values `lda` apart (the AVX-512 tile reads all
/// MR; results of rows past `rows` are dropped; with `AT`, `kc` rows of MR values), `bp` of
/// `kc` rows of [`NR`] values, `c` for `rows` rows of `cols <= NR` values `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const AT: bool>(
    kernel: Kernel,
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
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract; a `Kernel::Avx512` only comes from `Kernel::avx512`
        // finding AVX-512.
        Kernel::Avx512(_) => unsafe { avx512::tile::<AT>(kc, a, lda, bp, c, ldc, rows, cols, store) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract; a `Kernel::Avx2` only comes from `Kernel::avx2`
        // finding AVX2 and FMA.
        Kernel::Avx2(_) => unsafe { avx2::runs::<AT>(a, lda, bp, &[(0, 0)], kc, c, ldc, rows, cols, store) },
        _ => {
            // Portable: one row at a time, 32 accumulators the compiler vectorises.
            for r in 0..rows {
                let mut acc = [0.0f32; NR];
                for p in 0..kc {
                    // SAFETY: row r < rows <= MR and p < kc lie in A; p < kc rows of Bp.
                    let at = if AT { p * lda + r } else { r * lda + p };
                    let (av, b) = unsafe { (*a.add(at), std::slice::from_raw_parts(bp.add(p * NR), NR)) };
                    acc.iter_mut().zip(b).for_each(|(acc, b)| *acc += av * b);
                }
                // SAFETY: row r < rows and cols <= NR values lie in C, and in the store's bias
                // and residual (the caller's contract).
                unsafe { store.row(c.add(r * ldc), &acc[..cols], r, ldc) };
            }
        }
    }
}
