//! The matrix product behind [`FrozenResNet3d`](crate::FrozenResNet3d)'s convolutions:
//! `C[rows, n] += A[rows, k] * B[k, n]`, `A` the gathered patches of a tile of output voxels
//! (row-major), `B` the folded kernel, packed once when the network is frozen.
//!
//! Three implementations:
//! - AVX-512 (x86-64 with `avx512f`, detected at run time): a 12x32 register tile, 24 of
//!   the 32 vector registers accumulating, `B` in 32-column panels packed at freeze time,
//!   `A` read in place (12 row streams), `k` in blocks of 256 so that a panel stays in L1.
//! - AVX2 (x86-64 with `avx2` and `fma` but not `avx512f`, detected at run time): the same
//!   panels and blocks, each 12-row tile walked as 6x16 register tiles (`avx2`).
//! - portable: the `gemm` crate, which Burn's own CPU backend uses, for the prepacked
//!   product; a loop the compiler vectorises for the others.
//!
//! The two register-tiled kernels share every layout and every caller ([`Kernel::tiled`]);
//! only their innermost tile differs.

use std::ops::Range;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// Columns of a `B` panel (two 16-lane vectors).
pub(crate) const NR: usize = 32;
/// Rows of the register tile.
pub(crate) const MR: usize = 12;
/// `k` per block: a 256 x 32 panel of `B` (32 KiB) stays in the L1 cache.
pub(crate) const KC: usize = 256;

/// Which matrix product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// The AVX-512 register-tiled product.
    Avx512,
    /// The AVX2 register-tiled product, on the AVX-512 product's layout.
    Avx2,
    /// The `gemm` crate.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Every kernel this CPU runs, fastest first: what the tests compare.
    #[cfg(test)]
    pub(crate) fn here() -> Vec<Self> {
        let mut kernels = vec![Kernel::detect()];
        #[cfg(target_arch = "x86_64")]
        if kernels[0] == Kernel::Avx512
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            kernels.push(Kernel::Avx2);
        }
        if kernels[0] != Kernel::Portable {
            kernels.push(Kernel::Portable);
        }
        kernels
    }

    /// Whether this is a register-tiled kernel (AVX-512 or AVX2): `B` in panels of [`NR`]
    /// columns, and the in-place products ([`accumulate`], [`accumulate_runs`]) available.
    pub(crate) fn tiled(self) -> bool {
        matches!(self, Kernel::Avx512 | Kernel::Avx2)
    }
}

/// `f()`, compiled for the widest vectors [`Kernel::detect`] finds (AVX-512 or AVX2 with FMA):
/// the crate is built for baseline x86-64 (SSE2), where the compiler vectorises loops over
/// channels 4 lanes wide (2 in `f64`). `f` should be an `#[inline(always)]` closure, so that
/// its body is compiled inside the wider function. Values are the same on every instruction
/// set (the compiler never reassociates floats nor contracts `a * b + c` into one FMA unasked);
/// only a NaN's payload may differ where both operands of an operation are NaN (BatchNorm
/// against b88d9ed: 2497 of 7.1 M values, each NaN on both sides).
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match Kernel::detect() {
        // SAFETY: `Kernel::Avx512` only comes from `Kernel::detect` finding `avx512f`.
        Kernel::Avx512 => return unsafe { wide_avx512(f) },
        // SAFETY: `Kernel::Avx2` only comes from `Kernel::detect` finding `avx2` and `fma`.
        Kernel::Avx2 => return unsafe { wide_avx2(f) },
        Kernel::Portable => {}
    }
    f()
}

/// [`wide`] on AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn wide_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// [`wide`] on AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn wide_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `B` (`k x n`, row-major) as its kernel reads it: row-major for `gemm`, in panels of [`NR`]
/// columns (`[panel][k][NR]`, zero-padded) for the register-tiled kernels.
#[derive(Debug, Clone)]
pub(crate) struct PackedB {
    row_major: Vec<f32>,
    panels: Vec<f32>,
    k: usize,
    n: usize,
    /// The kernel this layout is for: only it may read it.
    kernel: Kernel,
}

impl PackedB {
    /// Whether every value is finite (the padding of the layout is zeros).
    pub(crate) fn all_finite(&self) -> bool {
        self.panels
            .iter()
            .chain(&self.row_major)
            .fold(true, |all, v| all & v.is_finite())
    }

    #[cfg(test)]
    pub(crate) fn new(row_major: Vec<f32>, k: usize, n: usize, kernel: Kernel) -> Self {
        Self::from_fn(k, n, kernel, |p, j| row_major[p * n + j])
    }

    /// `B[p][j] = value(p, j)`, written straight into the kernel's layout.
    #[cfg(test)]
    pub(crate) fn from_fn(k: usize, n: usize, kernel: Kernel, value: impl Fn(usize, usize) -> f32) -> Self {
        let (row_major, panels) = match kernel {
            Kernel::Portable => ((0..k * n).map(|x| value(x / n, x % n)).collect(), Vec::new()),
            Kernel::Avx512 | Kernel::Avx2 => {
                let count = n.div_ceil(NR);
                let mut panels = vec![0.0; count * k * NR];
                for (j, panel) in panels.chunks_exact_mut(k * NR).enumerate() {
                    let cols = (n - j * NR).min(NR);
                    for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                        for (c, v) in dst[..cols].iter_mut().enumerate() {
                            *v = value(p, j * NR + c);
                        }
                    }
                }
                (Vec::new(), panels)
            }
        };
        Self {
            row_major,
            panels,
            k,
            n,
            kernel,
        }
    }

    /// A convolution kernel `w` (`[o, i, taps]`, PyTorch's layout) as the `[taps * i, o]`
    /// matrix of channels-last patches (row `tap * i + ic`, column `oc`), each output channel
    /// multiplied by `scale[oc]` if given. Same as [`from_fn`](Self::from_fn) with
    /// `w[(oc * i + ic) * taps + tap]`, but in an order that reads `w` (up to 28 MB for a
    /// 512-channel 3x3x3 kernel) a few cache lines at a time: per panel, per input channel,
    /// the panel's 32 output channels' `taps` values, written as whole rows of the panel.
    pub(crate) fn conv_kernel(w: &[f32], [o, i, taps]: [usize; 3], scale: Option<&[f32]>, kernel: Kernel) -> Self {
        let k = taps * i;
        assert!(
            w.len() == o * k && scale.is_none_or(|s| s.len() == o),
            "conv_kernel: lengths"
        );
        let factor = |oc: usize| scale.map_or(1.0, |s| s[oc]);
        let (row_major, panels) = match kernel {
            Kernel::Portable => {
                let mut m = vec![0.0f32; k * o];
                for oc in 0..o {
                    for ic in 0..i {
                        for tap in 0..taps {
                            m[(tap * i + ic) * o + oc] = w[(oc * i + ic) * taps + tap] * factor(oc);
                        }
                    }
                }
                (m, Vec::new())
            }
            Kernel::Avx512 | Kernel::Avx2 => {
                let count = o.div_ceil(NR);
                let mut panels = vec![0.0f32; count * k * NR];
                // Input channels per step: their `taps` values of the panel's 32 output
                // channels are copied to a block on the stack side first, so that neither the
                // reads (32 rows of `w`, i * taps apart) nor the writes (rows tap * i + ic,
                // i * 32 apart) touch more lines at once than the L1 cache's ways hold.
                const ICS: usize = 8;
                panels.par_chunks_mut(k * NR).enumerate().for_each(|(j, panel)| {
                    let cols = (o - j * NR).min(NR);
                    let mut block = vec![0.0f32; NR * ICS * taps];
                    for ic0 in (0..i).step_by(ICS) {
                        let ics = ICS.min(i - ic0);
                        for c in 0..cols {
                            let oc = j * NR + c;
                            let f = factor(oc);
                            let src = &w[(oc * i + ic0) * taps..][..ics * taps];
                            block[c * ICS * taps..][..ics * taps]
                                .iter_mut()
                                .zip(src)
                                .for_each(|(b, v)| *b = v * f);
                        }
                        for tap in 0..taps {
                            for di in 0..ics {
                                let row = &mut panel[(tap * i + ic0 + di) * NR..][..NR];
                                for (c, v) in row[..cols].iter_mut().enumerate() {
                                    *v = block[c * ICS * taps + di * taps + tap];
                                }
                            }
                        }
                    }
                });
                (Vec::new(), panels)
            }
        };
        Self {
            row_major,
            panels,
            k,
            n: o,
            kernel,
        }
    }

    /// A convolution kernel `w` (`[o, i, taps]`) as the `[o, taps * i]` matrix (row `oc`,
    /// column `tap * i + ic`) that multiplies `dY` into the patches' gradient: the transposed
    /// [`conv_kernel`](Self::conv_kernel). Written straight into the AVX-512 layout where the
    /// input channels are whole panels (`i` a multiple of 32), per block of 32 input channels:
    /// each output channel's `32 * taps` values of `w` (contiguous) are read once, and go to
    /// one row of each of the block's `taps` panels. `None` otherwise (the caller transposes
    /// and packs).
    // Used by the training ops, which need the flex backend.
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    pub(crate) fn conv_kernel_transposed(w: &[f32], [o, i, taps]: [usize; 3], kernel: Kernel) -> Option<Self> {
        if !kernel.tiled() || !i.is_multiple_of(NR) || w.len() != o * i * taps || i == 0 {
            return None;
        }
        let (k, n) = (o, taps * i);
        let blocks = i / NR;
        let mut panels = super::buffers::zeros(n.div_ceil(NR) * k * NR);
        // Panel j holds columns j * 32.. : tap j / blocks, input channels (j % blocks) * 32...
        let mut by_block: Vec<Vec<&mut [f32]>> = (0..blocks).map(|_| Vec::with_capacity(taps)).collect();
        for (j, panel) in panels.chunks_exact_mut((k * NR).max(1)).enumerate() {
            by_block[j % blocks].push(panel);
        }
        by_block.into_par_iter().enumerate().for_each(|(b, mut own)| {
            for oc in 0..o {
                let src = &w[(oc * i + b * NR) * taps..][..NR * taps];
                for (tap, panel) in own.iter_mut().enumerate() {
                    let row = &mut panel[oc * NR..][..NR];
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = src[c * taps + tap];
                    }
                }
            }
        });
        Some(Self {
            row_major: Vec::new(),
            panels,
            k,
            n,
            kernel,
        })
    }

    /// `m` (`k x n`, row-major) in the kernel's layout: per panel, rows of 32 contiguous
    /// values copied as they are.
    // Used by the training ops, which need the flex backend.
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    pub(crate) fn from_row_major(m: &[f32], k: usize, n: usize, kernel: Kernel) -> Self {
        assert!(m.len() == k * n, "from_row_major: length");
        Self::from_rows(m, n, k, n, kernel)
    }

    /// The `k x n` matrix whose row `p` is `m[p * ld..][..n]`, in the kernel's layout.
    pub(crate) fn from_rows(m: &[f32], ld: usize, k: usize, n: usize, kernel: Kernel) -> Self {
        assert!(n <= ld && (k == 0 || m.len() >= (k - 1) * ld + n), "from_rows: length");
        let (row_major, panels) = match kernel {
            Kernel::Portable => {
                let mut row_major = Vec::with_capacity(k * n);
                for p in 0..k {
                    row_major.extend_from_slice(&m[p * ld..][..n]);
                }
                (row_major, Vec::new())
            }
            Kernel::Avx512 | Kernel::Avx2 => {
                let count = n.div_ceil(NR);
                let mut panels = vec![0.0f32; count * k * NR];
                panels.par_chunks_mut(k * NR).enumerate().for_each(|(j, panel)| {
                    let cols = (n - j * NR).min(NR);
                    for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                        let src = &m[p * ld + j * NR..][..cols];
                        if cols == NR {
                            dst.copy_from_slice(&src[..NR]);
                        } else {
                            dst[..cols].copy_from_slice(src);
                        }
                    }
                });
                (Vec::new(), panels)
            }
        };
        Self {
            row_major,
            panels,
            k,
            n,
            kernel,
        }
    }

    /// The kernel that reads this layout.
    pub(crate) fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Panels of [`NR`] columns.
    pub(crate) fn panel_count(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// What [`matmul`] does with `C` besides adding the product: instead of `C += A * B`,
/// `C = A * B + bias (+ residual)`, then ReLU (keeping NaN) if `relu`, `C` never read: the
/// frozen network's epilogue, applied where the register tile stores its rows rather than in
/// passes over the output of their own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// One value per column of `B` (`n`).
    pub bias: &'a [f32],
    /// Rows laid out as `C`'s (`ldc` apart, the same columns), if any.
    pub residual: Option<*const f32>,
    pub relu: bool,
}

/// How the register tile's sums reach `C` (see [`Epilogue`]): added to it, or, where `init`
/// holds the bias and the residual (null if none) at the tile's first column and row, written
/// as `sums + bias + residual`; then ReLU if `relu`.
#[derive(Debug, Clone, Copy)]
struct Store {
    init: Option<(*const f32, *const f32)>,
    relu: bool,
}

impl Store {
    /// `C += sums`.
    const ADD: Store = Store {
        init: None,
        relu: false,
    };

    /// The same store for the rows from `rows` rows further on (`ldc` apart).
    ///
    /// # Safety
    /// The residual, if any, must hold those rows (it has `C`'s layout).
    unsafe fn down(self, rows: usize, ldc: usize) -> Store {
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
    unsafe fn right(self, cols: usize) -> Store {
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
    unsafe fn row(self, row: *mut f32, sums: &[f32], r: usize, ldc: usize) {
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

/// `C[0..rows, cols] += A[0..rows, 0..k] * B[.., cols]` on this thread, where `cols` are
/// the columns of `panels` (clipped to `n`), with the kernel `b` was packed for; with an
/// [`Epilogue`], `C = A * B + bias (+ residual)`, then ReLU if asked, `C` only written.
///
/// # Safety
/// `a` must be valid for reads of `rows` rows of `b.k` values `lda` apart, and `c` for
/// reads and writes of `rows` rows of `b.n` values `ldc` apart; no other thread may touch
/// the columns of `panels` of those rows meanwhile. `panels` must lie within
/// `b.panel_count()`. An epilogue's bias must hold `b.n` values (asserted), its residual
/// `rows` rows laid out as `C`'s: another buffer, or `C` itself (each value is read before it
/// is written, through pointers only). (That the CPU runs `b`'s kernel is guaranteed: the
/// tiled layouts are only made for a kernel [`Kernel::detect`] found.)
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
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
    assert!(
        epilogue.is_none_or(|e| e.bias.len() == b.n),
        "matmul: a bias of {} values for {} columns",
        epilogue.map_or(0, |e| e.bias.len()),
        b.n
    );
    debug_assert!(
        panels.end <= b.panel_count(),
        "panels {panels:?} of {}",
        b.panel_count()
    );
    let col0 = panels.start * NR;
    let cols = (panels.end * NR).min(b.n).saturating_sub(col0);
    if rows == 0 || cols == 0 {
        return;
    }
    match b.kernel {
        // SAFETY: the caller's contract; `b` is packed for a tiled kernel this CPU runs.
        Kernel::Avx512 | Kernel::Avx2 => unsafe { tiled_matmul(a, lda, rows, b, panels, c, ldc, scratch, epilogue) },
        // SAFETY: the caller's contract; `row_major` holds k x n values for this kernel, and
        // columns col0..col0 + cols lie within n; the epilogue's bias n values, its residual
        // C's rows.
        _ => unsafe {
            let row = |r: usize| std::slice::from_raw_parts_mut(c.add(r * ldc + col0), cols);
            if let Some(e) = epilogue {
                for r in 0..rows {
                    // `bias + residual`, each value read through the pointers before it is
                    // written: the residual may be C itself (an output written over it).
                    let dst = c.add(r * ldc + col0);
                    for (j, bias) in e.bias[col0..col0 + cols].iter().enumerate() {
                        *dst.add(j) = match e.residual {
                            Some(res) => bias + *res.add(r * ldc + col0 + j),
                            None => *bias,
                        };
                    }
                }
            }
            gemm(
                rows,
                cols,
                b.k,
                c.add(col0),
                1,
                ldc as isize,
                true,
                a,
                1,
                lda as isize,
                b.row_major.as_ptr().add(col0),
                1,
                b.n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
            if epilogue.is_some_and(|e| e.relu) {
                for r in 0..rows {
                    row(r).iter_mut().for_each(|v| {
                        if *v < 0.0 {
                            *v = 0.0
                        }
                    });
                }
            }
        },
    }
}

/// [`matmul`] for the register-tiled kernels: per block of [`KC`] rows of `k`, every panel's
/// tiles, with the epilogue's bias and residual entering with the first block and its ReLU
/// with the last.
///
/// # Safety
/// As [`matmul`], `b` packed for [`Kernel::Avx512`] or [`Kernel::Avx2`].
#[allow(clippy::too_many_arguments)]
unsafe fn tiled_matmul(
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
    assert!(b.kernel.tiled(), "accumulate reads the tiled layout only");
    debug_assert!(
        ks.start <= ks.end && ks.end <= b.k,
        "rows {ks:?} of a {}-row kernel",
        b.k
    );
    debug_assert!(j < b.panel_count() && rows <= MR);
    let cols = (b.n - j * NR).min(NR);
    let mut kb = ks.start;
    while kb < ks.end {
        let kc = KC.min(ks.end - kb);
        // SAFETY: panel j holds k rows of NR values, from row kb on kc of them; A and C as
        // the caller promises; the kernel is tiled (asserted above).
        unsafe {
            tile::<false>(
                b.kernel,
                kc,
                a.add(kb - ks.start),
                lda,
                b.panels.as_ptr().add((j * b.k + kb) * NR),
                c.add(j * NR),
                ldc,
                rows,
                cols,
                Store::ADD,
            );
        }
        kb += kc;
    }
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
    // as the caller promises; each kernel only comes from `Kernel::detect` finding it.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let bp = b.panels.as_ptr().add(j * b.k * NR);
        match b.kernel {
            Kernel::Avx512 => avx512::accumulate_runs(a, lda, bp, runs, len, c.add(j * NR), ldc, rows, cols),
            _ => avx2::runs::<false>(a, lda, bp, runs, len, c.add(j * NR), ldc, rows, cols, Store::ADD),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, lda, rows, runs, len, c, ldc, cols);
    }
}

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
/// meanwhile. `kernel` must be [`Kernel::detect`]'s answer or [`Kernel::Portable`].
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
unsafe fn panel_rows<const AT: bool>(
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
        // SAFETY: the caller's contract; `Kernel::Avx512` only comes from `Kernel::detect`
        // finding AVX-512.
        Kernel::Avx512 => unsafe { avx512::tile::<AT>(kc, a, lda, bp, c, ldc, rows, cols, store) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract; `Kernel::Avx2` only comes from `Kernel::detect`
        // finding AVX2 and FMA.
        Kernel::Avx2 => unsafe { avx2::runs::<AT>(a, lda, bp, &[(0, 0)], kc, c, ldc, rows, cols, store) },
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

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512;

#[cfg(test)]
mod tests {
    use super::*;

    /// The transposed convolution kernel packed straight from `[o, i, taps]` holds what
    /// `from_fn` of its definition holds, value for value (remainders of output channels;
    /// one tap; input channels that are not whole panels refused).
    #[test]
    fn the_transposed_kernel_is_packed_as_its_definition() {
        // The layout is the tiled kernels' (either); no CPU instruction is run here.
        for kernel in [Kernel::Avx512, Kernel::Avx2] {
            for [o, i, taps] in [[40, 64, 27], [3, 32, 1], [70, 96, 9]] {
                let w: Vec<f32> = (0..o * i * taps).map(|v| v as f32 * 0.5 - 7.0).collect();
                let got = PackedB::conv_kernel_transposed(&w, [o, i, taps], kernel).unwrap();
                let want = PackedB::from_fn(o, taps * i, kernel, |p, j| w[(p * i + j % i) * taps + j / i]);
                assert_eq!((got.k, got.n), (want.k, want.n));
                assert!(got.panels == want.panels, "{o} {i} {taps}");
            }
            assert!(PackedB::conv_kernel_transposed(&[0.0; 48 * 2], [2, 48, 1], kernel).is_none());
        }
        assert!(PackedB::conv_kernel_transposed(&[0.0; 64], [2, 32, 1], Kernel::Portable).is_none());
    }

    /// Both kernels against the definition, on sizes that leave remainders everywhere.
    #[test]
    fn kernels_compute_the_product() {
        for (rows, k, n) in [
            (1, 1, 1),
            (13, 7, 5),
            (25, 300, 33),
            (12, 513, 64),
            (40, 64, 100),
            (21, 50, 40),
            (8, 9, 32),
        ] {
            let a: Vec<f32> = (0..rows * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
            let mut expected = vec![0.5f32; rows * n];
            for r in 0..rows {
                for j in 0..n {
                    expected[r * n + j] += (0..k).map(|p| a[r * k + p] * b[p * n + j]).sum::<f32>();
                }
            }
            for kernel in Kernel::here() {
                let packed = PackedB::new(b.clone(), k, n, kernel);
                assert_eq!(packed.kernel(), kernel);
                let mut scratch = Vec::new();
                // The product into `c` in two halves of the panels, as two work items would.
                let mut product = |c: &mut [f32], epilogue: Option<Epilogue<'_>>| {
                    assert_eq!(c.len(), rows * n);
                    let half = packed.panel_count() / 2;
                    for panels in [0..half, half..packed.panel_count()] {
                        // SAFETY: a, c and b have the sizes given (c asserted); an epilogue's
                        // bias has n values, its residual rows * n.
                        unsafe {
                            matmul(
                                a.as_ptr(),
                                k,
                                rows,
                                &packed,
                                panels,
                                c.as_mut_ptr(),
                                n,
                                &mut scratch,
                                epilogue,
                            )
                        };
                    }
                };
                let mut c = vec![0.5f32; rows * n];
                product(&mut c, None);
                let err = c.iter().zip(&expected).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(err < 1e-3, "{kernel:?} {rows}x{k}x{n}: max error {err}");
                // With an epilogue: C is not read (NaN before), bias and residual added, ReLU
                // with NaN kept (a NaN in the residual's first value), over several blocks of k.
                let bias: Vec<f32> = (0..n).map(|j| (j % 7) as f32 - 3.0).collect();
                let mut residual: Vec<f32> = (0..rows * n).map(|i| ((i % 5) as f32 - 2.0) * 0.25).collect();
                residual[0] = f32::NAN;
                for relu in [false, true] {
                    let mut c = vec![f32::NAN; rows * n];
                    let epilogue = Epilogue {
                        bias: &bias,
                        residual: Some(residual.as_ptr()),
                        relu,
                    };
                    product(&mut c, Some(epilogue));
                    assert!(c[0].is_nan(), "{kernel:?}: the residual's NaN was lost");
                    for (i, (got, e)) in c.iter().zip(&expected).enumerate().skip(1) {
                        let mut want = e - 0.5 + bias[i % n] + residual[i];
                        if relu {
                            want = want.max(0.0);
                        }
                        assert!(
                            (got - want).abs() < 1e-3,
                            "{kernel:?} {rows}x{k}x{n}, relu {relu}, at {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// [`product`] with A in rows and transposed (B packed on demand, C accumulated, k over
    /// several blocks of [`KC`]) against the definition, on sizes that leave remainders of
    /// rows, columns and k; each panel its own call, as the work items run them.
    #[test]
    fn packed_products_compute_the_product() {
        for (rows, k, n) in [
            (1, 1, 1),
            (13, 7, 5),
            (25, 300, 33),
            (12, 513, 64),
            (40, 64, 100),
            (64, 1152, 64),
        ] {
            let a: Vec<f32> = (0..rows * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            // A stored transposed: k rows of `rows` values, 3 apart more than needed.
            let lda_t = rows + 3;
            let mut a_t = vec![f32::NAN; k * lda_t];
            for r in 0..rows {
                for p in 0..k {
                    a_t[p * lda_t + r] = a[r * k + p];
                }
            }
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
            let mut expected = vec![0.25f32; rows * n];
            for r in 0..rows {
                for j in 0..n {
                    expected[r * n + j] += (0..k)
                        .map(|p| f64::from(a[r * k + p]) * f64::from(b[p * n + j]))
                        .sum::<f64>() as f32;
                }
            }
            let pack = |ks: Range<usize>, j: usize, buf: &mut [f32]| {
                for (dst, p) in buf.chunks_exact_mut(NR).zip(ks) {
                    for (col, v) in dst.iter_mut().enumerate() {
                        *v = if j * NR + col < n { b[p * n + j * NR + col] } else { 0.0 };
                    }
                }
            };
            for kernel in Kernel::here() {
                for transposed in [false, true] {
                    let mut c = vec![0.25f32; rows * n];
                    let mut scratch = Scratch::default();
                    for j in 0..n.div_ceil(NR) {
                        // SAFETY: A holds rows x k values (k x lda_t stored transposed), C rows x
                        // n, the panels lie within n's.
                        unsafe {
                            if transposed {
                                product::<A_TRANSPOSED>(
                                    kernel,
                                    a_t.as_ptr(),
                                    lda_t,
                                    rows,
                                    k,
                                    n,
                                    j..j + 1,
                                    pack,
                                    c.as_mut_ptr(),
                                    n,
                                    &mut scratch,
                                );
                            } else {
                                product::<A_IN_ROWS>(
                                    kernel,
                                    a.as_ptr(),
                                    k,
                                    rows,
                                    k,
                                    n,
                                    j..j + 1,
                                    pack,
                                    c.as_mut_ptr(),
                                    n,
                                    &mut scratch,
                                );
                            }
                        }
                    }
                    for (i, (got, want)) in c.iter().zip(&expected).enumerate() {
                        assert!(
                            (got - want).abs() < 1e-3,
                            "{kernel:?} {rows}x{k}x{n}, transposed {transposed}, at {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
