//! Which matrix product this CPU runs, and [`wide`]: code compiled for the widest vectors
//! it has.

/// Which matrix product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// The AVX-512 register-tiled product.
    Avx512(HasAvx512),
    /// The AVX2 register-tiled product, on the AVX-512 product's layout.
    Avx2(HasAvx2),
    /// The `gemm` crate.
    Portable,
}

/// Evidence that this CPU has `avx512f`: made only by [`Kernel::avx512`], after the check,
/// so that no safe code elsewhere can name a tiled kernel the CPU lacks and run its
/// instructions through [`Kernel::wide`] or a product (a review showed
/// `Kernel::Avx512.wide(..)` compiling in safe code when the variants were bare). One type per
/// feature set, so that one kernel's evidence cannot make the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HasAvx512(());

/// Evidence that this CPU has `avx2` and `fma`: made only by [`Kernel::avx2`], after the
/// check (see [`HasAvx512`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HasAvx2(());

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(crate) fn detect() -> Self {
        Kernel::avx512().or_else(Kernel::avx2).unwrap_or(Kernel::Portable)
    }

    /// The AVX-512 product, if this CPU has `avx512f`.
    pub(crate) fn avx512() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Kernel::Avx512(HasAvx512(())));
        }
        None
    }

    /// The AVX2 product, if this CPU has `avx2` and `fma`.
    pub(crate) fn avx2() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Some(Kernel::Avx2(HasAvx2(())));
        }
        None
    }

    /// Whether this is the AVX-512 product.
    pub(crate) fn is_avx512(self) -> bool {
        matches!(self, Kernel::Avx512(_))
    }

    /// Every kernel this CPU runs, fastest first: what the tests compare.
    #[cfg(test)]
    pub(crate) fn here() -> Vec<Self> {
        let mut kernels = vec![Kernel::detect()];
        if kernels[0].is_avx512()
            && let Some(avx2) = Kernel::avx2()
        {
            kernels.push(avx2);
        }
        if kernels[0] != Kernel::Portable {
            kernels.push(Kernel::Portable);
        }
        kernels
    }

    /// Whether this is a register-tiled kernel (AVX-512 or AVX2): `B` in panels of [`NR`]
    /// columns, and the in-place products ([`accumulate`], [`accumulate_runs`]) available.
    pub(crate) fn tiled(self) -> bool {
        matches!(self, Kernel::Avx512(_) | Kernel::Avx2(_))
    }

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
            // SAFETY: a `Kernel::Avx512` holds a `HasAvx512`, made only by `Kernel::avx512`
            // after it found `avx512f`.
            Kernel::Avx512(_) => return unsafe { wide_avx512(f) },
            // SAFETY: a `Kernel::Avx2` holds a `HasAvx2`, made only by `Kernel::avx2` after it
            // found `avx2` and `fma`.
            Kernel::Avx2(_) => return unsafe { wide_avx2(f) },
            Kernel::Portable => {}
        }
        f()
    }
}

/// `f()`, compiled for the widest vectors [`Kernel::detect`] finds: [`Kernel::wide`] of
/// the detected kernel.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    Kernel::detect().wide(f)
}

/// [`Kernel::wide`] on AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn wide_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// [`Kernel::wide`] on AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn wide_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
