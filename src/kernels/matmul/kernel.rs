//! Which matrix product this CPU runs, and [`wide`]: code compiled for the widest vectors
//! it has.

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

/// `f()`, compiled for the widest vectors [`Kernel::detect`] finds: [`Kernel::wide`] of
/// the detected kernel.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    Kernel::detect().wide(f)
}

impl Kernel {
    /// `f()`, compiled for this kernel's vectors (AVX-512, or AVX2 with FMA; as it is for the
    /// portable kernel): the crate is built for baseline x86-64 (SSE2), where the compiler
    /// vectorises loops over channels 4 lanes wide (2 in `f64`). `f` should be an
    /// `#[inline(always)]` closure, so that its body is compiled inside the wider function.
    /// Values are the same on every instruction set (the compiler never reassociates floats
    /// nor contracts `a * b + c` into one FMA unasked); only a NaN's payload may differ where
    /// both operands of an operation are NaN (BatchNorm against b88d9ed: 2497 of 7.1 M
    /// values, each NaN on both sides).
    #[inline(always)]
    pub(crate) fn wide<R>(self, f: impl FnOnce() -> R) -> R {
        #[cfg(target_arch = "x86_64")]
        match self {
            // SAFETY: `Kernel::Avx512` only comes from `Kernel::detect` (or `Kernel::here`)
            // finding `avx512f`.
            Kernel::Avx512 => return unsafe { wide_avx512(f) },
            // SAFETY: `Kernel::Avx2` only comes from `Kernel::detect` (or `Kernel::here`)
            // finding `avx2` and `fma`.
            Kernel::Avx2 => return unsafe { wide_avx2(f) },
            Kernel::Portable => {}
        }
        f()
    }
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
