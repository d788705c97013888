//! 3x3x3 convolutions with stride 1 by Winograd's minimal filtering, F(2x2x2, 3x3x3): the
//! frozen network's fastest path where it applies.
//!
//! In one dimension, two outputs of a 3-tap correlation `y_i = sum_k d_{i+k} g_k` take four
//! multiplications instead of six (Lavin and Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2016): `y = A^T [(G g) . (B^T d)]` with
//!
//! ```text
//! B^T = | 1  0 -1  0 |     G = | 1    0    0   |     A^T = | 1  1  1  0 |
//!       | 0  1  1  0 |         | 1/2  1/2  1/2 |           | 0  1 -1 -1 |
//!       | 0 -1  1  0 |         | 1/2 -1/2  1/2 |
//!       | 0  1  0 -1 |         | 0    0    1   |
//! ```
//!
//! Nested over depth, height and width, a 2x2x2 block of outputs takes 4^3 = 64 products per
//! (input channel, output channel) pair instead of 8 x 27 = 216: summed over input channels,
//! the 64 points of the transformed tile are 64 independent matrix products
//! `M[p] = V[p] x U[p]` (`V[p]`: tiles x input channels, the transformed input; `U[p]`: input x
//! output channels, the transformed kernel, made once when the network is frozen), each run by
//! the crate's register-tiled product. A third of the multiply-adds, for transforms that are
//! additions only. The transforms' additions change the rounding, not the result: outputs
//! agree with the direct convolution to a few units in the last place of the partial sums'
//! magnitude (tested below, and against PyTorch by the network tests).
//!
//! NaN and infinity reach exactly the outputs whose window holds them: the input transform's
//! first row never mixes in `d_3` and the output transform's second row never takes the
//! first point, so along each axis an output sees only its own three taps.
//!
//! Data is channels-last throughout: a tile's 4x4x4 input voxels are 16 rows of 4 voxels, each
//! a contiguous run of `4 * C` values, transformed over all channels at once.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::bf16::{PackedBf16, round_into};
use super::matmul::{Kernel, MR, NR, PackedB, matmul};
use super::parallel::{SendPtr, work_items};

/// Points of a transformed tile: 4 x 4 x 4.
pub(super) const POINTS: usize = 64;

/// Output voxels per tile and axis.
pub(super) const STEP: usize = 2;

/// A 3x3x3 kernel transformed for F(2x2x2, 3x3x3): per point `p` of the transformed tile, the
/// `[in, out]` matrix `U[p] = (G g G^T)[p]`, packed for the product.
#[derive(Debug, Clone)]
pub(crate) struct Winograd {
    /// f32 products: `U[p]` per point (empty where `u_bf16` is used).
    u: Vec<PackedB>,
    /// bf16 products (`freeze_bf16`): `U[p]` per point in bf16 pairs of input channels; the
    /// transformed input is rounded to bf16 before each point's product, which accumulates in
    /// f32 (empty in f32 layers).
    u_bf16: Vec<PackedBf16>,
    in_channels: usize,
    out_channels: usize,
    /// The product `u` is packed for.
    kernel: Kernel,
}

thread_local! {
    /// Per thread: a chunk's transformed input `V`, its products `M`, the transforms'
    /// intermediates, and the product's padded tail rows.
    pub(super) static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) v: Vec<f32>,
    /// `v` in bf16 (bf16 layers), with [`MR`] rows to spare: the bf16 product reads whole
    /// register tiles of rows.
    v_bf16: Vec<u16>,
    pub(super) m: Vec<f32>,
    pub(super) first: Vec<f32>,
    pub(super) second: Vec<f32>,
    tail: Vec<f32>,
}

/// Output channels transformed at once (one AVX-512 vector).
const LANES: usize = 16;

/// One value per output channel of a block.
type Lanes = [f32; LANES];

/// `G` applied along one axis, per lane: three taps to four points.
#[inline(always)]
fn g_rows(g0: &Lanes, g1: &Lanes, g2: &Lanes) -> [Lanes; 4] {
    let mut u = [[0.0; LANES]; 4];
    for l in 0..LANES {
        u[0][l] = g0[l];
        u[1][l] = 0.5 * (g0[l] + g1[l] + g2[l]);
        u[2][l] = 0.5 * (g0[l] - g1[l] + g2[l]);
        u[3][l] = g2[l];
    }
    u
}

/// `G g G^T` of 16 kernels at once (`g[(kd * 3 + kh) * 3 + kw]`, one kernel per lane), point
/// `(pz * 4 + py) * 4 + px`.
#[inline(always)]
fn transform_lanes(g: &[Lanes; 27]) -> [Lanes; POINTS] {
    // Along width (index [line][px]), then height ([kd][py][px]), then depth.
    let mut w = [[[0.0; LANES]; 4]; 9];
    for (line, dst) in w.iter_mut().enumerate() {
        *dst = g_rows(&g[line * 3], &g[line * 3 + 1], &g[line * 3 + 2]);
    }
    let mut h = [[[0.0; LANES]; 4]; 12];
    for kd in 0..3 {
        for px in 0..4 {
            let col = g_rows(&w[kd * 3][px], &w[kd * 3 + 1][px], &w[kd * 3 + 2][px]);
            for (py, v) in col.into_iter().enumerate() {
                h[kd * 4 + py][px] = v;
            }
        }
    }
    let mut u = [[0.0; LANES]; POINTS];
    for py in 0..4 {
        for px in 0..4 {
            let col = g_rows(&h[py][px], &h[4 + py][px], &h[8 + py][px]);
            for (pz, v) in col.into_iter().enumerate() {
                u[(pz * 4 + py) * 4 + px] = v;
            }
        }
    }
    u
}

/// Input channel `ic`'s part of the transformed kernel: `block[p * o + oc]` = point `p` of
/// `G g G^T` for `g = w[oc][ic] * scale[oc]` (`w`: `[o, i, 27]`), 16 output channels at a time.
#[inline(always)]
fn transform_kernels(w: &[f32], [o, i]: [usize; 2], scale: Option<&[f32]>, ic: usize, block: &mut [f32]) {
    for first in (0..o).step_by(LANES) {
        let lanes = LANES.min(o - first);
        let mut g = [[0.0; LANES]; 27];
        for (l, oc) in (first..first + lanes).enumerate() {
            let factor = scale.map_or(1.0, |s| s[oc]);
            for (t, v) in w[(oc * i + ic) * 27..][..27].iter().enumerate() {
                g[t][l] = v * factor;
            }
        }
        for (p, values) in transform_lanes(&g).iter().enumerate() {
            block[p * o + first..][..lanes].copy_from_slice(&values[..lanes]);
        }
    }
}

impl Winograd {
    /// The transform of `w` (`[o, i, 3, 3, 3]`, PyTorch's layout), each output channel
    /// multiplied by `scale[oc]` if given (a folded BatchNorm), packed for `kernel`.
    ///
    /// With `bf16`, the transformed kernel is kept in bf16 for AVX512_BF16 products: the
    /// caller checks that this CPU has them ([`bf16::available`](super::bf16::available)), that
    /// `kernel` is [`Kernel::Avx512`] and that `i` is even (pairs of input channels).
    ///
    /// The caller checks that `w` holds `o * i * 27` values and `scale` `o` (asserted when
    /// packing).
    pub(crate) fn new(w: &[f32], [o, i]: [usize; 2], scale: Option<&[f32]>, kernel: Kernel, bf16: bool) -> Self {
        // u[ic][p][oc]: per input channel, the 64 points' rows of output channels; point p's
        // [in, out] matrix is then rows 64 * o apart.
        let mut u = vec![0.0f32; i * POINTS * o];
        u.par_chunks_mut(POINTS * o).enumerate().for_each(|(ic, block)| {
            #[cfg(target_arch = "x86_64")]
            if kernel == Kernel::Avx512 {
                // SAFETY: `Kernel::Avx512` only comes from `Kernel::detect` finding `avx512f`.
                unsafe { avx512::transform_kernels(w, [o, i], scale, ic, block) };
                return;
            }
            transform_kernels(w, [o, i], scale, ic, block);
        });
        let (u, u_bf16) = if bf16 {
            assert!(
                i.is_multiple_of(2) && kernel == Kernel::Avx512 && super::bf16::available(),
                "Winograd::new: bf16 needs pairs and AVX512_BF16"
            );
            let packed = (0..POINTS)
                .into_par_iter()
                .map(|p| PackedBf16::from_rows(&u[p * o..], POINTS * o, i, o))
                .collect();
            (Vec::new(), packed)
        } else {
            let packed = (0..POINTS)
                .into_par_iter()
                .map(|p| PackedB::from_rows(&u[p * o..], POINTS * o, i, o, kernel))
                .collect();
            (packed, Vec::new())
        };
        Self {
            u,
            u_bf16,
            in_channels: i,
            out_channels: o,
            kernel,
        }
    }

    /// The shape `[n, d', h', w', c]` of the zero-padded input this path reads for an output of
    /// `[od, oh, ow]`: every axis covers whole tiles, `2 * ceil(o / 2) + 2` voxels.
    pub(crate) fn padded_extent([od, oh, ow]: [usize; 3]) -> [usize; 3] {
        [od, oh, ow].map(|o| o.div_ceil(STEP) * STEP + 2)
    }

    /// `out = conv(xp) + bias (+ residual)`, then ReLU if `relu` (keeping NaN), for the padded
    /// input `xp` (`[n, d', h', w', in]` with `[d', h', w']` = [`padded_extent`](Self::padded_extent)
    /// of the output, the layer's padding already applied) and the output `[n, od, oh, ow, out]`.
    /// Returns `false`, computing nothing, if the lengths do not fit these shapes.
    pub(crate) fn forward(
        &self,
        xp: &[f32],
        out_dims: [usize; 5],
        bias: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        out: &mut [f32],
    ) -> bool {
        let [n, od, oh, ow, oc] = out_dims;
        let (ic, voxels) = (self.in_channels, n * od * oh * ow);
        let [dp, hp, wp] = Self::padded_extent([od, oh, ow]);
        // Every index below is within these lengths.
        if oc != self.out_channels
            || xp.len() != n * dp * hp * wp * ic
            || out.len() != voxels * oc
            || bias.len() != oc
            || residual.is_some_and(|r| r.len() != out.len())
        {
            return false;
        }
        let geometry = Geometry::new([od, oh, ow], ic, oc);
        let count = n * geometry.tiles.iter().product::<usize>();
        let chunk = chunk_tiles(ic, oc);
        let chunks = count.div_ceil(chunk);
        // Few chunks (a late stage): the output channels are split between threads too, each
        // transforming its chunk's input again.
        let items = work_items(chunks, oc.div_ceil(NR));
        let out_ptr = SendPtr(out.as_mut_ptr());
        items.into_par_iter().for_each(|(t, panels)| {
            let first = t * chunk;
            let rows = chunk.min(count - first);
            SCRATCH.with_borrow_mut(|s| {
                s.v.resize(POINTS * rows * ic, 0.0);
                s.m.resize(POINTS * rows * oc, 0.0);
                s.first.resize(POINTS * ic.max(oc), 0.0);
                s.second.resize(POINTS * ic.max(oc), 0.0);
                input_tiles(self.kernel, &geometry, xp, first, rows, s);
                let (c0, c1) = (panels.start * NR, (panels.end * NR).min(oc));
                for row in s.m.chunks_exact_mut(oc) {
                    row[c0..c1].fill(0.0);
                }
                // One of `u` and `u_bf16` is empty: f32 or bf16 products.
                if !self.u_bf16.is_empty() {
                    self.products_bf16(rows, panels.clone(), s);
                }
                for (p, u) in self.u.iter().enumerate() {
                    // SAFETY: V[p] holds `rows` rows of ic values (resized above), M[p] `rows`
                    // rows of oc values, of which this item alone uses the columns of `panels`;
                    // U[p] is ic x oc, packed for a kernel this CPU runs (made with the
                    // network's kernel).
                    unsafe {
                        matmul(
                            s.v.as_ptr().add(p * rows * ic),
                            ic,
                            rows,
                            u,
                            panels.clone(),
                            s.m.as_mut_ptr().add(p * rows * oc),
                            oc,
                            &mut s.tail,
                            None,
                        );
                    }
                }
                let epilogue = (bias, residual, relu);
                // SAFETY: the tiles of this chunk are this item's alone, and within them the
                // columns c0..c1; `output_tile` writes only voxels inside `out_dims`, whose
                // `voxels * oc` values `out` holds, and reads `residual`, of the same length
                // (both checked above).
                unsafe { output_tiles(self.kernel, &geometry, (first, rows), c0..c1, s, epilogue, &out_ptr) };
            });
        });
        true
    }
}

impl Winograd {
    /// The 64 products `M[p] += V[p] x U[p]` of a chunk of `rows` tiles in bf16, over the
    /// output columns of `panels`: `V` rounded to bf16 (nearest even), f32 accumulation.
    fn products_bf16(&self, rows: usize, panels: Range<usize>, s: &mut Scratch) {
        let (ic, oc) = (self.in_channels, self.out_channels);
        // MR rows to spare past the last point's rows: the register tile reads whole tiles.
        s.v_bf16.resize(POINTS * rows * ic + MR * ic, 0);
        round_into(&s.v[..POINTS * rows * ic], &mut s.v_bf16);
        for (p, u) in self.u_bf16.iter().enumerate() {
            for j in panels.clone() {
                for r0 in (0..rows).step_by(MR) {
                    let block = MR.min(rows - r0);
                    // `u_bf16` exists only where `Winograd::new`'s caller found AVX512_BF16;
                    // `panels` lies within `oc.div_ceil(NR)`.
                    // SAFETY: as just said; 0..ic is even (asserted in `new`) and U[p]'s rows;
                    // A: MR rows of ic values from row r0 of V[p], within `v_bf16` and its MR
                    // spare rows; C: `block` rows of M[p] (resized by the caller), this item's
                    // columns alone.
                    unsafe {
                        super::bf16::accumulate(
                            s.v_bf16.as_ptr().add((p * rows + r0) * ic),
                            ic,
                            block,
                            u,
                            0..ic,
                            j,
                            s.m.as_mut_ptr().add((p * rows + r0) * oc),
                            oc,
                        );
                    }
                }
            }
        }
    }
}

/// [`input_tiles_here`], compiled for AVX-512 where `kernel` is the AVX-512 product.
pub(super) fn input_tiles(kernel: Kernel, geometry: &Geometry, xp: &[f32], first: usize, rows: usize, s: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 {
        // SAFETY: `Kernel::Avx512` only comes from `Kernel::detect` finding `avx512f`.
        return unsafe { avx512::input_tiles(geometry, xp, first, rows, s) };
    }
    let _ = kernel;
    input_tiles_here(geometry, xp, first, rows, s)
}

/// [`Geometry::output_tile`] for tiles `first..first + rows`, compiled for AVX-512 where
/// `kernel` is the AVX-512 product.
///
/// # Safety
/// As [`Geometry::output_tile`], for every tile.
unsafe fn output_tiles(
    kernel: Kernel,
    geometry: &Geometry,
    tiles: (usize, usize),
    cols: Range<usize>,
    s: &mut Scratch,
    epilogue: (&[f32], Option<&[f32]>, bool),
    out: &SendPtr,
) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 {
        // SAFETY: the caller's contract; `Kernel::Avx512` only comes from `Kernel::detect`
        // finding `avx512f`.
        return unsafe { avx512::output_tiles(geometry, tiles, cols, s, epilogue, out) };
    }
    let _ = kernel;
    // SAFETY: the caller's contract.
    unsafe { output_tiles_here(geometry, tiles, cols, s, epilogue, out) }
}

/// The transformed input of tiles `first..first + rows` into `s.v` (rows of each point).
#[inline(always)]
fn input_tiles_here(geometry: &Geometry, xp: &[f32], first: usize, rows: usize, s: &mut Scratch) {
    let [_, hp, wp] = geometry.padded;
    let ic = geometry.ic;
    for r in 0..rows {
        let base = geometry.input_offset(first + r);
        input_tile(&xp[base..], [hp * wp * ic, wp * ic], ic, s, r, rows);
    }
}

/// [`Geometry::output_tile`] for tiles `first..first + rows`.
///
/// # Safety
/// As [`Geometry::output_tile`], for every tile.
#[inline(always)]
unsafe fn output_tiles_here(
    geometry: &Geometry,
    (first, rows): (usize, usize),
    cols: Range<usize>,
    s: &mut Scratch,
    epilogue: (&[f32], Option<&[f32]>, bool),
    out: &SendPtr,
) {
    for r in 0..rows {
        // SAFETY: the caller's contract.
        unsafe {
            geometry.output_tile(
                (first + r, r, rows),
                &s.m,
                cols.clone(),
                (&mut s.first, &mut s.second),
                epilogue,
                out,
            )
        };
    }
}

/// The transforms compiled for AVX-512, so that their loops over channels run 16 lanes wide
/// (the crate is built for baseline x86-64).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::ops::Range;

    use super::{Geometry, Scratch, SendPtr};

    /// [`super::transform_kernels`]; needs `avx512f`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn transform_kernels(w: &[f32], dims: [usize; 2], scale: Option<&[f32]>, ic: usize, block: &mut [f32]) {
        super::transform_kernels(w, dims, scale, ic, block)
    }

    /// [`super::input_tiles_here`]; needs `avx512f`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn input_tiles(geometry: &Geometry, xp: &[f32], first: usize, rows: usize, s: &mut Scratch) {
        super::input_tiles_here(geometry, xp, first, rows, s)
    }

    /// [`super::output_tiles_here`]; needs `avx512f`.
    ///
    /// # Safety
    /// As [`super::output_tiles_here`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_tiles(
        geometry: &Geometry,
        tiles: (usize, usize),
        cols: Range<usize>,
        s: &mut Scratch,
        epilogue: (&[f32], Option<&[f32]>, bool),
        out: &SendPtr,
    ) {
        // SAFETY: the caller's contract.
        unsafe { super::output_tiles_here(geometry, tiles, cols, s, epilogue, out) }
    }
}

/// Tiles per chunk: a chunk's `V` and `M` (64 rows per tile, of the input's and of the output's
/// channels) stay within about 1 MiB, the L2 cache, and hold whole register tiles.
fn chunk_tiles(ic: usize, oc: usize) -> usize {
    let mr = super::matmul::MR;
    ((256 * 1024) / (POINTS * (ic + oc)) / mr).clamp(1, 8) * mr
}

/// A layer's tile grid, padded input and output, for locating a tile in both.
pub(super) struct Geometry {
    pub(super) tiles: [usize; 3],
    pub(super) padded: [usize; 3],
    pub(super) out: [usize; 3],
    pub(super) ic: usize,
    pub(super) oc: usize,
}

impl Geometry {
    /// The tile grid of an output of `out` voxels per batch item, its padded input
    /// ([`Winograd::padded_extent`]), `ic` and `oc` channels.
    pub(super) fn new(out: [usize; 3], ic: usize, oc: usize) -> Self {
        Self {
            tiles: out.map(|o| o.div_ceil(STEP)),
            padded: Winograd::padded_extent(out),
            out,
            ic,
            oc,
        }
    }

    /// The tile's `[item, z, y, x]` in the tile grid.
    pub(super) fn coordinates(&self, tile: usize) -> [usize; 4] {
        let [td, th, tw] = self.tiles;
        [
            tile / (td * th * tw),
            (tile / (th * tw)) % td,
            (tile / tw) % th,
            tile % tw,
        ]
    }

    /// Offset in the padded input of the tile's first voxel.
    fn input_offset(&self, tile: usize) -> usize {
        let [b, z, y, x] = self.coordinates(tile);
        let [dp, hp, wp] = self.padded;
        (((b * dp + STEP * z) * hp + STEP * y) * wp + STEP * x) * self.ic
    }

    /// The outputs of `tile` (row `r` of its chunk's `rows`) from its 64 products (`m`: row
    /// `(p * rows + r) * oc`), columns `cols`: `A^T M A` per axis, plus bias, plus the
    /// residual, then ReLU if asked, written to the output voxels that lie within the output.
    /// `work`: two buffers of at least `32 * cols.len()` values.
    ///
    /// # Safety
    /// `out` must hold the whole output (`n * od * oh * ow * oc` values) and no other thread may
    /// touch this tile's voxels in `cols` meanwhile; `residual`, if given, the same length.
    #[inline(always)]
    unsafe fn output_tile(
        &self,
        (tile, r, rows): (usize, usize, usize),
        m: &[f32],
        cols: Range<usize>,
        (along_w, work): (&mut [f32], &mut [f32]),
        (bias, residual, relu): (&[f32], Option<&[f32]>, bool),
        out: &SendPtr,
    ) {
        let [b, tz, ty, tx] = self.coordinates(tile);
        let [od, oh, ow] = self.out;
        let (oc, width) = (self.oc, cols.len());
        let row = |p: usize| &m[(p * rows + r) * oc + cols.start..][..width];
        // Along width: the four points of each (depth, height) point to two columns.
        for line in 0..16 {
            let (lo, hi) = along_w[line * 2 * width..][..2 * width].split_at_mut(width);
            a_transpose(
                [row(line * 4), row(line * 4 + 1), row(line * 4 + 2), row(line * 4 + 3)],
                lo,
                hi,
            );
        }
        // Along height: for each depth point and output column, to two rows.
        let (along_h, pair) = work.split_at_mut(16 * width);
        for pz in 0..4 {
            for x in 0..2 {
                let src = |py: usize| &along_w[((pz * 4 + py) * 2 + x) * width..][..width];
                let (lo, hi) = along_h[((pz * 2 + x) * 2) * width..][..2 * width].split_at_mut(width);
                a_transpose([src(0), src(1), src(2), src(3)], lo, hi);
            }
        }
        // Along depth, then bias, residual and ReLU, into the output.
        let pair = &mut pair[..2 * width];
        for x in 0..2 {
            for y in 0..2 {
                let src = |pz: usize| &along_h[((pz * 2 + x) * 2 + y) * width..][..width];
                let (lo, hi) = pair.split_at_mut(width);
                a_transpose([src(0), src(1), src(2), src(3)], lo, hi);
                for (z, values) in pair.chunks_exact(width).enumerate() {
                    let (oz, oy, ox) = (STEP * tz + z, STEP * ty + y, STEP * tx + x);
                    if oz >= od || oy >= oh || ox >= ow {
                        continue;
                    }
                    let at = (((b * od + oz) * oh + oy) * ow + ox) * oc + cols.start;
                    // SAFETY: the voxel lies within the output (checked just above), so
                    // `at + width <= n * od * oh * ow * oc`, which `out` holds (the caller's
                    // contract), and this tile's voxels are this call's alone.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(at), width) };
                    let res = residual.map(|res| &res[at..at + width]);
                    for (k, (d, v)) in dst.iter_mut().zip(values).enumerate() {
                        let mut y = v + bias[cols.start + k];
                        if let Some(res) = res {
                            y += res[k];
                        }
                        *d = if relu && y < 0.0 { 0.0 } else { y };
                    }
                }
            }
        }
    }
}

/// `B^T` along one axis, over every channel: `d_0 - d_2, d_1 + d_2, d_2 - d_1, d_1 - d_3`.
#[inline(always)]
fn b_transpose(src: [&[f32]; 4], dst: [&mut [f32]; 4]) {
    let n = dst[0].len();
    let [s0, s1, s2, s3] = src.map(|s| &s[..n]);
    let [d0, d1, d2, d3] = dst;
    let (d1, d2, d3) = (&mut d1[..n], &mut d2[..n], &mut d3[..n]);
    for i in 0..n {
        let (a, b, c, d) = (s0[i], s1[i], s2[i], s3[i]);
        d0[i] = a - c;
        d1[i] = b + c;
        d2[i] = c - b;
        d3[i] = b - d;
    }
}

/// `A^T` along one axis, over every channel: `m_0 + m_1 + m_2, m_1 - m_2 - m_3`.
#[inline(always)]
fn a_transpose(src: [&[f32]; 4], lo: &mut [f32], hi: &mut [f32]) {
    let n = lo.len();
    let [s0, s1, s2, s3] = src.map(|s| &s[..n]);
    let hi = &mut hi[..n];
    for i in 0..n {
        let (a, b, c, d) = (s0[i], s1[i], s2[i], s3[i]);
        lo[i] = a + b + c;
        hi[i] = b - c - d;
    }
}

/// Splits `buf` into four consecutive rows of `n` values from `at`.
#[inline(always)]
fn four_rows(buf: &mut [f32], at: usize, n: usize) -> [&mut [f32]; 4] {
    let (r0, rest) = buf[at..at + 4 * n].split_at_mut(n);
    let (r1, rest) = rest.split_at_mut(n);
    let (r2, r3) = rest.split_at_mut(n);
    [r0, r1, r2, r3]
}

/// The tile whose first voxel starts `x` (the padded input from there; `[depth, height]`
/// strides `step`), transformed (`B^T d B` per axis) into row `r` of each point's `V`
/// (`s.v`: point `p`'s rows from `p * rows * c`).
#[inline(always)]
fn input_tile(x: &[f32], [sz, sy]: [usize; 2], c: usize, s: &mut Scratch, r: usize, rows: usize) {
    // Along width: each (depth, height) row's four voxels (4 * c contiguous values).
    for pz in 0..4 {
        for py in 0..4 {
            let src = &x[pz * sz + py * sy..][..4 * c];
            let (s0, rest) = src.split_at(c);
            let (s1, rest) = rest.split_at(c);
            let (s2, s3) = rest.split_at(c);
            b_transpose([s0, s1, s2, s3], four_rows(&mut s.first, (pz * 4 + py) * 4 * c, c));
        }
    }
    // Along height, stored [depth][width point][height point] so that the four results are
    // consecutive rows.
    for pz in 0..4 {
        for px in 0..4 {
            let src = |py: usize| &s.first[((pz * 4 + py) * 4 + px) * c..][..c];
            b_transpose(
                [src(0), src(1), src(2), src(3)],
                four_rows(&mut s.second, (pz * 4 + px) * 4 * c, c),
            );
        }
    }
    // Along depth, into V: point (pz, py, px) is row r of V[(pz * 4 + py) * 4 + px].
    let plane = 16 * rows * c;
    let (v0, rest) = s.v.split_at_mut(plane);
    let (v1, rest) = rest.split_at_mut(plane);
    let (v2, v3) = rest.split_at_mut(plane);
    for py in 0..4 {
        for px in 0..4 {
            let src = |pz: usize| &s.second[((pz * 4 + px) * 4 + py) * c..][..c];
            let at = ((py * 4 + px) * rows + r) * c;
            b_transpose(
                [src(0), src(1), src(2), src(3)],
                [
                    &mut v0[at..at + c],
                    &mut v1[at..at + c],
                    &mut v2[at..at + c],
                    &mut v3[at..at + c],
                ],
            );
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The direct convolution (stride 1, the padded input already padded), channels-last.
    fn direct(xp: &[f32], [n, dp, hp, wp, ic]: [usize; 5], w: &[f32], out_dims: [usize; 5]) -> Vec<f32> {
        let [_, od, oh, ow, oc] = out_dims;
        let mut y = vec![0.0f64; n * od * oh * ow * oc];
        for b in 0..n {
            for z in 0..od {
                for yy in 0..oh {
                    for x in 0..ow {
                        for o in 0..oc {
                            let mut acc = 0.0f64;
                            for i in 0..ic {
                                for t in 0..27 {
                                    let (kd, kh, kw) = (t / 9, (t / 3) % 3, t % 3);
                                    let v = xp[(((b * dp + z + kd) * hp + yy + kh) * wp + x + kw) * ic + i];
                                    acc += f64::from(v) * f64::from(w[(o * ic + i) * 27 + t]);
                                }
                            }
                            y[(((b * od + z) * oh + yy) * ow + x) * oc + o] = acc;
                        }
                    }
                }
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    pub(in crate::kernels) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn tiles_compute_the_direct_convolution() {
        // Odd extents (partial tiles on every axis), channel counts off the panel width, a
        // batch of two, and a chunk count that splits the output channels between threads.
        for (kernel, [n, od, oh, ow], [ic, oc]) in [
            (Kernel::detect(), [2, 3, 5, 7], [5, 37]),
            (Kernel::detect(), [1, 4, 6, 8], [16, 64]),
            (Kernel::Portable, [1, 5, 3, 4], [3, 33]),
        ] {
            let [dp, hp, wp] = Winograd::padded_extent([od, oh, ow]);
            let pdims = [n, dp, hp, wp, ic];
            let xp = values(pdims.iter().product(), 1);
            let w = values(oc * ic * 27, 2);
            let scale: Vec<f32> = (0..oc).map(|o| 0.5 + o as f32 / oc as f32).collect();
            let folded: Vec<f32> = w.iter().enumerate().map(|(k, v)| v * scale[k / (ic * 27)]).collect();
            let bias = values(oc, 3);
            let out_dims = [n, od, oh, ow, oc];
            let residual = values(out_dims.iter().product(), 4);
            let want = direct(&xp, pdims, &folded, out_dims);
            let wg = Winograd::new(&w, [oc, ic], Some(&scale), kernel, false);
            for relu in [false, true] {
                let mut got = vec![f32::NAN; want.len()];
                assert!(wg.forward(&xp, out_dims, &bias, Some(&residual), relu, &mut got));
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    let mut w = w + bias[k % oc] + residual[k];
                    if relu {
                        w = w.max(0.0);
                    }
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{kernel:?} at {k}: {g} vs {w}");
                }
            }
            // Lengths that do not fit the shapes: nothing computed.
            let mut short = vec![0.0; want.len() - 1];
            assert!(!wg.forward(&xp, out_dims, &bias, None, false, &mut short));
            assert!(!wg.forward(&xp[1..], out_dims, &bias, None, false, &mut vec![0.0; want.len()]));
        }
    }

    /// The bf16 products: within bf16's rounding of the direct f32 convolution (the transformed
    /// input and kernel keep 8 significant bits; over 27 x ic taps the error measured here is
    /// about 5e-3 of the output's largest magnitude, the tolerance 2e-2), and not equal to
    /// the f32 path (the bf16 product ran). Partial tiles, a partial panel, a row count off
    /// the register tile, an output channel split.
    #[test]
    fn bf16_tiles_stay_close_to_the_direct_convolution() {
        if !(super::super::bf16::available() && Kernel::detect() == Kernel::Avx512) {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        for ([n, od, oh, ow], [ic, oc]) in [([2, 3, 5, 7], [6, 37]), ([1, 6, 9, 8], [64, 64])] {
            let [dp, hp, wp] = Winograd::padded_extent([od, oh, ow]);
            let pdims = [n, dp, hp, wp, ic];
            let xp = values(pdims.iter().product(), 1);
            let w = values(oc * ic * 27, 2);
            let out_dims = [n, od, oh, ow, oc];
            let want = direct(&xp, pdims, &w, out_dims);
            let scale_of = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let wg = Winograd::new(&w, [oc, ic], None, Kernel::Avx512, true);
            let mut got = vec![f32::NAN; want.len()];
            assert!(wg.forward(&xp, out_dims, &vec![0.0; oc], None, false, &mut got));
            let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max) / scale_of;
            println!("bf16 Winograd {ic}->{oc}: max error {err:.2e} of the largest output");
            assert!((1e-5..=2e-2).contains(&err), "{ic}->{oc}: error {err:e}");
        }
        // NaN still reaches exactly the outputs whose window holds it.
        let (od, c) = (4, 16);
        let [dp, ..] = Winograd::padded_extent([od; 3]);
        let mut xp = values(dp * dp * dp * c, 5);
        xp[((3 * dp + 3) * dp + 3) * c] = f32::NAN;
        let wg = Winograd::new(&values(c * c * 27, 6), [c, c], None, Kernel::Avx512, true);
        let mut out = vec![0.0; od * od * od * c];
        assert!(wg.forward(&xp, [1, od, od, od, c], &vec![0.0; c], None, true, &mut out));
        for (v, voxel) in out.chunks_exact(c).enumerate() {
            let inside = [v / 16, (v / 4) % 4, v % 4].iter().all(|a| (1..=3).contains(a));
            assert!(voxel.iter().all(|x| x.is_nan() == inside), "output {v}");
        }
    }

    #[test]
    fn nan_reaches_only_the_outputs_whose_window_holds_it() {
        let (od, oh, ow, c) = (4, 4, 4, 16);
        let [dp, hp, wp] = Winograd::padded_extent([od, oh, ow]);
        let mut xp = values(dp * hp * wp * c, 5);
        // A NaN at padded voxel (3, 3, 3), channel 0: the window of output (z, y, x) covers it
        // when z, y, x are each 1, 2 or 3.
        xp[((3 * hp + 3) * wp + 3) * c] = f32::NAN;
        let wg = Winograd::new(&values(c * c * 27, 6), [c, c], None, Kernel::detect(), false);
        let mut out = vec![0.0; od * oh * ow * c];
        assert!(wg.forward(&xp, [1, od, oh, ow, c], &vec![0.0; c], None, true, &mut out));
        for z in 0..od {
            for y in 0..oh {
                for x in 0..ow {
                    let inside = [z, y, x].iter().all(|a| (1..=3).contains(a));
                    let voxel = &out[((z * oh + y) * ow + x) * c..][..c];
                    assert_eq!(voxel.iter().all(|v| v.is_nan()), inside, "output ({z}, {y}, {x})");
                    assert!(inside || voxel.iter().all(|v| v.is_finite()));
                }
            }
        }
    }
}
