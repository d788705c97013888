//! The bf16 matrix product behind [`ResNet3d::freeze_bf16`](crate::ResNet3d::freeze_bf16):
//! AVX512_BF16's `vdpbf16ps`, which multiplies pairs of bf16 values and adds both products to
//! one f32 lane, twice the multiply-adds of an f32 FMA per instruction.
//!
//! `B` (the folded kernel) is packed as bf16 pairs of consecutive rows: panel `j`, pair `p`,
//! column `c` holds `(B[2p][c], B[2p + 1][c])`. `A` (the padded activations) is bf16 too,
//! row-major, so that a row's pair `(A[r][2p], A[r][2p + 1])` is one 32-bit broadcast. The
//! products accumulate in f32 registers and the output is f32: only the inputs of each
//! multiplication are rounded (to 8 significant bits, round to nearest even).

use std::ops::Range;

use rayon::prelude::*;

use super::matmul::{MR, NR};

/// Whether this CPU runs the bf16 product.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `v` rounded to bf16 (nearest even), as its bits.
pub(crate) fn to_bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// `src` rounded to bf16 (nearest even) into `dst`, over the shorter of the two: 16 values
/// per instruction (`vcvtneps2bf16`) where the CPU has AVX512_BF16. (That instruction flushes
/// subnormal inputs to zero, which the scalar rounding keeps: a difference below 2^-126.)
pub(crate) fn round_into(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: `available` found avx512f, avx512bf16, avx512bw and avx512vl.
        unsafe { avx512::round_into(src, dst) };
        return;
    }
    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = to_bf16(v));
}

/// `B` (`k x n`) as bf16 pairs in panels of [`NR`] columns, `k` rounded up to even with a zero
/// row.
#[derive(Debug, Clone)]
pub(crate) struct PackedBf16 {
    /// `[panel][k / 2][NR][2]`.
    panels: Vec<u16>,
    k: usize,
    n: usize,
    /// Rows per kernel row (even): `kw * i` rounded up to even; `k` for a plain matrix.
    run: usize,
}

impl PackedBf16 {
    /// A convolution kernel `w` (`[o, i, taps]`, `kw` width taps) as the matrix of
    /// channels-last patches (rows (tap, input channel), `o` columns), each output channel
    /// multiplied by `scale[oc]`: the bf16 twin of
    /// [`PackedB::conv_kernel`](super::matmul::PackedB::conv_kernel), each kernel row of
    /// `kw * i` values padded to an even count with a zero row ([`run`](Self::run)), so that
    /// no pair straddles two kernel rows (with an even `i`, nothing is padded and each pair of
    /// rows is two channels of one tap).
    pub(crate) fn conv_kernel(w: &[f32], [o, i, taps]: [usize; 3], kw: usize, scale: &[f32]) -> Self {
        assert!(
            w.len() == o * taps * i && scale.len() == o && kw > 0 && taps.is_multiple_of(kw),
            "PackedBf16::conv_kernel: lengths"
        );
        let run = (kw * i).div_ceil(2) * 2;
        let k = taps / kw * run;
        let count = o.div_ceil(NR);
        let mut panels = vec![0u16; count * k * NR];
        panels.par_chunks_mut(k * NR).enumerate().for_each(|(j, panel)| {
            let cols = (o - j * NR).min(NR);
            for c in 0..cols {
                let oc = j * NR + c;
                for ic in 0..i {
                    for (tap, &v) in w[(oc * i + ic) * taps..][..taps].iter().enumerate() {
                        let p = tap / kw * run + tap % kw * i + ic;
                        panel[((p / 2) * NR + c) * 2 + p % 2] = to_bf16(v * scale[oc]);
                    }
                }
            }
        });
        Self { panels, k, n: o, run }
    }

    /// The `k x n` matrix whose row `p` is `m[p * ld..][..n]` (an even `k`: pairs of rows),
    /// in bf16 pairs: the bf16 twin of [`PackedB::from_rows`](super::matmul::PackedB::from_rows).
    pub(crate) fn from_rows(m: &[f32], ld: usize, k: usize, n: usize) -> Self {
        assert!(
            k.is_multiple_of(2) && n <= ld && (k == 0 || m.len() >= (k - 1) * ld + n),
            "PackedBf16::from_rows: lengths"
        );
        let count = n.div_ceil(NR);
        let mut panels = vec![0u16; count * k * NR];
        panels.par_chunks_mut(k * NR).enumerate().for_each(|(j, panel)| {
            let cols = (n - j * NR).min(NR);
            for p in 0..k {
                for (c, &v) in m[p * ld + j * NR..][..cols].iter().enumerate() {
                    panel[((p / 2) * NR + c) * 2 + p % 2] = to_bf16(v);
                }
            }
        });
        Self { panels, k, n, run: k }
    }

    /// Panels of [`NR`] columns.
    pub(crate) fn panel_count(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Rows, rounded up to even.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Whether every value is finite (a finite f32 value can round to an infinity).
    pub(crate) fn all_finite(&self) -> bool {
        self.panels.iter().fold(true, |all, &v| all & (v & 0x7f80 != 0x7f80))
    }

    /// Rows per kernel row, even (see [`conv_kernel`](Self::conv_kernel)).
    pub(crate) fn run(&self) -> usize {
        self.run
    }
}

/// `C[0..rows, panel j] += A[0..rows, ..] * B[ks, panel j]`, `A` bf16 read in place (row `r`'s
/// values for `ks` are `a[r * lda..][..ks.len()]`).
///
/// # Safety
/// [`available`] must be true; `ks` must start and end on even rows within `b.k`, and `j` be
/// one of its panels (checked in debug builds); `a` must be valid for reads of [`MR`] rows of
/// `ks.len()` values, `lda` apart (rows past `rows` are read, their results dropped); `c` for
/// `rows` rows of the panel's columns, `ldc` apart, no other thread touching them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn accumulate(
    a: *const u16,
    lda: usize,
    rows: usize,
    b: &PackedBf16,
    ks: Range<usize>,
    j: usize,
    c: *mut f32,
    ldc: usize,
) {
    debug_assert!(
        ks.start.is_multiple_of(2) && ks.end.is_multiple_of(2) && ks.end <= b.k && j < b.panel_count() && rows <= MR
    );
    let cols = (b.n - j * NR).min(NR);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract; panel j holds k / 2 pairs of NR columns, so from pair
    // ks.start / 2 on ks.len() / 2 of them.
    unsafe {
        avx512::tile(
            ks.len() / 2,
            a,
            lda,
            b.panels.as_ptr().add((j * b.k + ks.start) * NR),
            c.add(j * NR),
            ldc,
            rows,
            cols,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, lda, rows, ks, c, ldc, cols);
    }
}

/// `C[0..rows, panel j] += sum over runs (o, k0) of A[.., o..o + len] * B[k0..k0 + len, panel j]`
/// with the accumulators in registers across every run: the bf16 twin of
/// [`matmul::accumulate_runs`](super::matmul::accumulate_runs), for convolutions with few
/// input channels (the stem: 49 runs of 7 values). An odd `len` reads its last value alone
/// (paired with `b`'s zero row): the value after a run is never read, so an infinity or NaN
/// there cannot turn into NaN.
///
/// # Safety
/// [`available`] must be true; every `k0` even and `k0 + len` within `b.k`, `j` one of its
/// panels (checked in debug builds); `a` valid for reads of [`MR`] rows of `len` values,
/// `lda` apart, from each run's offset `o`; `c` for `rows` rows of the panel's columns,
/// `ldc` apart, no other thread touching them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn accumulate_runs(
    a: *const u16,
    lda: usize,
    rows: usize,
    b: &PackedBf16,
    runs: &[(usize, usize)],
    len: usize,
    j: usize,
    c: *mut f32,
    ldc: usize,
) {
    debug_assert!(
        runs.iter().all(|&(_, k0)| k0.is_multiple_of(2) && k0 + len <= b.k) && j < b.panel_count() && rows <= MR
    );
    let cols = (b.n - j * NR).min(NR);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract; panel j holds k / 2 pairs of NR columns.
    unsafe {
        avx512::tile_runs(
            a,
            lda,
            b.panels.as_ptr().add(j * b.k * NR),
            runs,
            len,
            c.add(j * NR),
            ldc,
            rows,
            cols,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, lda, rows, runs, len, c, ldc, cols);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// [`round_into`](super::round_into) with AVX512_BF16 (and AVX512BW/VL for the tail's
    /// masked store).
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub(super) unsafe fn round_into(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, within both slices; the 32-byte types are bit-for-bit the
            // same.
            unsafe {
                let v = _mm512_loadu_ps(src.as_ptr().add(i));
                let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), b);
            }
            i += 16;
        }
        if i < n {
            // The last n - i < 16 values under a mask: lanes outside it are neither read nor
            // written.
            let mask = (1u16 << (n - i)) - 1;
            // SAFETY: the mask's lanes are i..n, within both slices.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
                let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), mask, b);
            }
        }
    }

    /// `C[r][0..cols] += sum_p A[r][2p..2p + 2] . Bp[p][0..cols]` for `r < rows`, `kp` pairs;
    /// 8 rows in registers where `rows` fits them (as the f32 tile), else MR.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(
        kp: usize,
        a: *const u16,
        lda: usize,
        bp: *const u16,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        // SAFETY: the caller's contract; each variant reads at most MR rows of A.
        unsafe {
            if rows <= 8 {
                tile_rows::<8>(kp, a, lda, bp, c, ldc, rows, cols)
            } else {
                tile_rows::<MR>(kp, a, lda, bp, c, ldc, rows, cols)
            }
        }
    }

    /// [`accumulate_runs`](super::accumulate_runs) with 8 rows in registers where `rows`
    /// fits them, else MR; `bp` is the panel's first pair.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile_runs(
        a: *const u16,
        lda: usize,
        bp: *const u16,
        runs: &[(usize, usize)],
        len: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        // SAFETY: the caller's contract; each variant reads at most MR rows of A.
        unsafe {
            if rows <= 8 {
                runs_rows::<8>(a, lda, bp, runs, len, c, ldc, rows, cols)
            } else {
                runs_rows::<MR>(a, lda, bp, runs, len, c, ldc, rows, cols)
            }
        }
    }

    /// [`tile_runs`] with `R` rows in registers (`rows <= R <= MR`).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn runs_rows<const R: usize>(
        a: *const u16,
        lda: usize,
        bp: *const u16,
        runs: &[(usize, usize)],
        len: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        let pairs = len.div_ceil(2);
        for &(o, k0) in runs {
            for p in 0..pairs {
                // SAFETY: Bp holds the pairs from k0 / 2 on (k0 + len <= k, the caller's
                // contract); A R <= MR rows of `len` values from `o`: a whole pair, or the
                // last value alone where `len` is odd (zero in the pair's other half, which
                // meets the kernel's zero row). The 64-byte types are bit-for-bit the same.
                unsafe {
                    let b = bp.add((k0 / 2 + p) * 2 * NR);
                    let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
                    let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(NR).cast()));
                    let whole = 2 * p + 1 < len;
                    for r in 0..R {
                        let at = a.add(o + r * lda + 2 * p);
                        let pair = if whole {
                            at.cast::<i32>().read_unaligned()
                        } else {
                            i32::from(at.read_unaligned())
                        };
                        let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                        lo[r] = _mm512_dpbf16_ps(lo[r], av, b0);
                        hi[r] = _mm512_dpbf16_ps(hi[r], av, b1);
                    }
                }
            }
        }
        // SAFETY: the caller's contract for C.
        unsafe { super::super::matmul::avx512::add_to(&lo, &hi, c, ldc, rows, cols) };
    }

    /// [`tile`] with `R` rows in registers (`rows <= R <= MR`).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_rows<const R: usize>(
        kp: usize,
        a: *const u16,
        lda: usize,
        bp: *const u16,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        for p in 0..kp {
            // SAFETY: Bp holds kp pairs of NR columns (2 NR values each); A R <= MR rows of
            // 2 kp values (the caller's contract). The 64-byte types are bit-for-bit the same.
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * 2 * NR).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * 2 * NR + NR).cast()));
                for r in 0..R {
                    let pair = a.add(r * lda + 2 * p).cast::<i32>().read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    lo[r] = _mm512_dpbf16_ps(lo[r], av, b0);
                    hi[r] = _mm512_dpbf16_ps(hi[r], av, b1);
                }
            }
        }
        // SAFETY: the caller's contract for C.
        unsafe { super::super::matmul::avx512::add_to(&lo, &hi, c, ldc, rows, cols) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product against the definition on bf16-rounded inputs (so exact up to f32
    /// summation order), with a partial panel and fewer rows than the tile.
    #[test]
    fn accumulate_computes_the_product_of_the_rounded_inputs() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        let round = |v: f32| half::bf16::from_bits(to_bf16(v)).to_f32();
        // The vector rounding is the scalar one (off the subnormals).
        let probe: Vec<f32> = (0..1000)
            .map(|x| ((x * 7919) as f32).sin() * 10f32.powi(x % 9 - 4))
            .chain([f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0 + f32::EPSILON, 65504.5])
            .collect();
        let mut fast = vec![0u16; probe.len()];
        round_into(&probe, &mut fast);
        assert!(probe.iter().zip(&fast).all(|(&v, &b)| to_bf16(v) == b));
        let mut nan = [0u16];
        round_into(&[f32::NAN], &mut nan);
        assert!(half::bf16::from_bits(nan[0]).is_nan());
        // An even channel count (pairs within a tap), and one channel with an odd K (the
        // stem's case: K padded with a zero row).
        for (o, i, taps) in [(40usize, 6usize, 3usize), (8, 1, 7)] {
            let k = i * taps;
            let w: Vec<f32> = (0..o * k).map(|x| ((x * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let scale: Vec<f32> = (0..o).map(|x| 0.5 + x as f32 / 40.0).collect();
            let b = PackedBf16::conv_kernel(&w, [o, i, taps], taps, &scale);
            let kp = b.k();
            assert_eq!(kp, k.div_ceil(2) * 2);
            // 7 rows: the 8-row register tile; 11: the 12-row one.
            for rows in [7usize, 11] {
                let a: Vec<f32> = (0..MR * k).map(|x| ((x * 5 % 11) as f32 - 5.0) / 5.0).collect();
                let mut a16 = vec![0u16; MR * kp];
                for (dst, src) in a16.chunks_exact_mut(kp).zip(a.chunks_exact(k)) {
                    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = to_bf16(v));
                }
                let mut c = vec![0.25f32; rows * o];
                for j in 0..b.panel_count() {
                    // SAFETY: available() above; 0..kp is even and b's row count; a16 has MR rows
                    // of kp values; c rows of o values.
                    unsafe { accumulate(a16.as_ptr(), kp, rows, &b, 0..kp, j, c.as_mut_ptr(), o) };
                }
                for r in 0..rows {
                    for oc in 0..o {
                        let want: f32 = 0.25
                            + (0..k)
                                .map(|p| {
                                    let (tap, ic) = (p / i, p % i);
                                    round(a[r * k + p]) * round(w[(oc * i + ic) * taps + tap] * scale[oc])
                                })
                                .sum::<f32>();
                        let got = c[r * o + oc];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{r} {oc}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The product over runs of a kernel whose rows are padded to even (one channel, runs of
    /// 7 and 3, several kernel rows) against the definition on bf16-rounded inputs, and the
    /// value after each odd run never read: an infinity there leaves the sums finite.
    #[test]
    fn accumulate_runs_skips_the_value_after_an_odd_run() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        let round = |v: f32| half::bf16::from_bits(to_bf16(v)).to_f32();
        for (o, kw, kernel_rows, lda) in [(40usize, 7usize, 3usize, 2usize), (16, 3, 5, 1), (33, 4, 2, 3)] {
            let taps = kw * kernel_rows;
            let w: Vec<f32> = (0..o * taps).map(|x| ((x * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let scale = vec![1.5f32; o];
            let b = PackedBf16::conv_kernel(&w, [o, 1, taps], kw, &scale);
            assert_eq!((b.run(), b.k()), (kw.div_ceil(2) * 2, kernel_rows * kw.div_ceil(2) * 2));
            // Row r of kernel row q reads a[q * 64 + r * lda..][..kw]; every other value is
            // an infinity.
            let mut a = vec![to_bf16(f32::INFINITY); kernel_rows * 64 + MR * lda + 8];
            let value = |q: usize, r: usize, t: usize| ((q * 31 + r * 7 + t * 3) % 17) as f32 / 8.0 - 1.0;
            for q in 0..kernel_rows {
                for r in 0..MR {
                    for t in 0..kw {
                        a[q * 64 + r * lda + t] = to_bf16(value(q, r, t));
                    }
                }
            }
            // With lda < kw the rows overlap (a stride-2 stem): the values written last win.
            let read = |q: usize, r: usize, t: usize| half::bf16::from_bits(a[q * 64 + r * lda + t]).to_f32();
            let runs: Vec<(usize, usize)> = (0..kernel_rows).map(|q| (q * 64, q * b.run())).collect();
            for rows in [5usize, MR] {
                let mut c = vec![0.5f32; rows * o];
                for j in 0..b.panel_count() {
                    // SAFETY: available() above; every run's rows lie within b.k (asserted
                    // above), k0 even; `a` holds MR rows of kw values lda apart from each
                    // offset; c rows of o values.
                    unsafe { accumulate_runs(a.as_ptr(), lda, rows, &b, &runs, kw, j, c.as_mut_ptr(), o) };
                }
                for r in 0..rows {
                    for oc in 0..o {
                        let want: f32 = 0.5
                            + (0..kernel_rows)
                                .flat_map(|q| (0..kw).map(move |t| (q, t)))
                                .map(|(q, t)| read(q, r, t) * round(w[oc * taps + q * kw + t] * 1.5))
                                .sum::<f32>();
                        let got = c[r * o + oc];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "kw {kw}, row {r}, column {oc}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
