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

/// Columns of a `B` panel (two 16-lane vectors).
pub(crate) const NR: usize = 32;
/// Rows of the register tile.
pub(crate) const MR: usize = 12;
/// `k` per block: a 256 x 32 panel of `B` (32 KiB) stays in the L1 cache.
pub(crate) const KC: usize = 256;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512;
mod kernel;
mod packed;
mod product;
mod tiled;

pub(crate) use kernel::{Kernel, wide};
pub(crate) use packed::PackedB;
#[cfg_attr(not(feature = "flex"), allow(unused_imports))]
pub(crate) use product::{A_IN_ROWS, A_TRANSPOSED, Scratch, pack_row, product};
use tiled::{Store, tiled_matmul};
pub(crate) use tiled::{accumulate, accumulate_runs, blocks_of};

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
/// tiled layouts are only made for a kernel found on this CPU.)
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
        Kernel::Avx512(_) | Kernel::Avx2(_) => unsafe {
            tiled_matmul(a, lda, rows, b, panels, c, ldc, scratch, epilogue)
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The transposed convolution kernel packed straight from `[o, i, taps]` holds what
    /// `from_fn` of its definition holds, value for value (remainders of output channels;
    /// one tap; input channels that are not whole panels refused).
    #[test]
    fn the_transposed_kernel_is_packed_as_its_definition() {
        // The layout is the tiled kernels' (either that this CPU runs).
        for kernel in Kernel::here().into_iter().filter(|k| k.tiled()) {
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

    /// [`accumulate`] over a long `ks` (27 taps of 512 channels, from a non-zero start) adds
    /// each block of [`KC`] rows to C, so that its error against f64 stays that of 256-row
    /// sums: 1.6e-5 here (values up to about 30), where one run of all 13,824 rows in
    /// registers gave 1.4e-4 (tried on dd7dac0's one-run version; the bound 5e-5 tells them
    /// apart). An empty `ks` leaves C as it was, bit for bit (-0.0 stays -0.0).
    #[test]
    fn accumulate_adds_blocks_and_leaves_c_for_no_rows() {
        let (k, n, start) = (13_824 + 5, 40, 5);
        let ks = start..k;
        for kernel in Kernel::here().into_iter().filter(|k| k.tiled()) {
            let b = PackedB::from_fn(k, n, kernel, |p, j| (((p * 31 + j * 17) % 23) as f32 - 11.0) / 11.0);
            let b_at = |p: usize, j: usize| (((p * 31 + j * 17) % 23) as f32 - 11.0) / 11.0;
            for rows in [1, 8, 12] {
                let lda = ks.len() + 3;
                let a: Vec<f32> = (0..MR * lda).map(|i| ((i * 13 % 29) as f32 - 14.0) / 14.0).collect();
                let mut c = vec![0.5f32; rows * n];
                for j in 0..b.panel_count() {
                    // SAFETY: A holds MR rows of ks.len() values lda apart, C rows x n values;
                    // ks lies within k, j is one of the panels, rows <= MR.
                    unsafe { accumulate(a.as_ptr(), lda, rows, &b, ks.clone(), j, c.as_mut_ptr(), n) };
                }
                let mut worst = 0.0f64;
                for r in 0..rows {
                    for j in 0..n {
                        let want = 0.5
                            + ks.clone()
                                .map(|p| f64::from(a[r * lda + p - start]) * f64::from(b_at(p, j)))
                                .sum::<f64>();
                        worst = worst.max((f64::from(c[r * n + j]) - want).abs());
                    }
                }
                println!(
                    "{kernel:?}, {rows} rows, {} values of k: max error {worst:.2e}",
                    ks.len()
                );
                assert!(worst < 5e-5, "{kernel:?} {rows} rows: max error {worst:e}");
            }
            let mut c = vec![-0.0f32; n];
            // SAFETY: no row of A or B is read for an empty ks; C holds one row of n values.
            unsafe { accumulate([0.0f32; 1].as_ptr(), 1, 1, &b, 7..7, 0, c.as_mut_ptr(), n) };
            assert!(
                c.iter().all(|v| v.to_bits() == (-0.0f32).to_bits()),
                "{kernel:?}: C written"
            );
        }
    }
}
