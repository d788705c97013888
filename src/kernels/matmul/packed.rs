//! `B` in the layout its kernel reads: packed once when the network is frozen.

use rayon::prelude::*;

use super::{Kernel, NR};

/// `B` (`k x n`, row-major) as its kernel reads it: row-major for `gemm`, in panels of [`NR`]
/// columns (`[panel][k][NR]`, zero-padded) for the register-tiled kernels.
#[derive(Debug, Clone)]
pub(crate) struct PackedB {
    pub(super) row_major: Vec<f32>,
    pub(super) panels: Vec<f32>,
    pub(super) k: usize,
    pub(super) n: usize,
    /// The kernel this layout is for: only it may read it.
    pub(super) kernel: Kernel,
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
            Kernel::Avx512(_) | Kernel::Avx2(_) => {
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
            Kernel::Avx512(_) | Kernel::Avx2(_) => {
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
        let mut panels = super::super::buffers::zeros(n.div_ceil(NR) * k * NR);
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
            Kernel::Avx512(_) | Kernel::Avx2(_) => {
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
