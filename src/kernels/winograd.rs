//! 3x3x3 convolutions with stride 1 by Winograd's minimal filtering, F(2x2x2, 3x3x3) or
//! F(4x4x4, 3x3x3) (the one-axis transforms and their error: [`winograd_axis`]): the frozen
//! network's fastest path where it applies.
//!
//! Nested over depth, height and width, a tile of `m^3` outputs takes `a^3` products per
//! (input channel, output channel) pair (`a = m + 2`: 64 per 8 outputs, or 216 per 64) instead
//! of `27 m^3`: summed over input channels, the `a^3` points of the transformed tile are
//! independent matrix products `M[p] = V[p] x U[p]` (`V[p]`: tiles x input channels, the
//! transformed input; `U[p]`: input x output channels, the transformed kernel, made once when
//! the network is frozen), each run by the crate's register-tiled product: 30% (F2) or 12.5%
//! (F4) of the direct product's multiply-adds, for transforms that are additions and small
//! multiples.
//!
//! NaN and infinity: with F(2, 3) they reach exactly the outputs whose window holds them (the
//! input transform's first row never mixes in `d_3` and the output transform's second row never
//! takes the first point, so along each axis an output sees only its own three taps); F(4, 3)
//! mixes a tile's six inputs into every point. Neither runs on such inputs: the caller checks
//! the input and kernel are moderate ([`all_moderate`](super::implicit::all_moderate)) and
//! otherwise runs the direct product.
//!
//! Data is channels-last throughout: a tile's `a^3` input voxels are `a^2` rows of `a` voxels,
//! each a contiguous run of `a * C` values, transformed over all channels at once.
//!
//! [`winograd_axis`]: super::winograd_axis

use std::ops::Range;

use rayon::prelude::*;

use super::bf16::{PackedBf16, round_into};
use super::matmul::{Kernel, MR, NR, PackedB, matmul};
use super::parallel::{SendPtr, work_items};
use super::winograd_axis::{Tile, g_point};
use super::winograd_tiles::{Geometry, SCRATCH, Scratch, chunk_tiles, input_tiles, output_tiles};

/// A 3x3x3 kernel transformed for F(2x2x2, 3x3x3) or F(4x4x4, 3x3x3): per point `p` of the
/// transformed tile, the `[in, out]` matrix `U[p] = (G g G^T)[p]`, packed for the product.
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
    tile: Tile,
}

/// Output channels transformed at once (one AVX-512 vector).
const LANES: usize = 16;

/// One value per output channel of a block.
type Lanes = [f32; LANES];

/// `G` applied along one axis, per lane: three taps to `A` points.
#[inline(always)]
fn g_rows<const A: usize>(g0: &Lanes, g1: &Lanes, g2: &Lanes) -> [Lanes; A] {
    let mut u = [[0.0; LANES]; A];
    for l in 0..LANES {
        for (k, v) in g_point::<A>([g0[l], g1[l], g2[l]]).into_iter().enumerate() {
            u[k][l] = v;
        }
    }
    u
}

/// `G g G^T` of 16 kernels at once (`g[(kd * 3 + kh) * 3 + kw]`, one kernel per lane) into
/// `u`, point `(pz * A + py) * A + px`.
#[inline(always)]
fn transform_lanes<const A: usize>(g: &[Lanes; 27], u: &mut [Lanes]) {
    // Along width (index [line][px]), then height ([kd * A + py][px]), then depth.
    let mut w = [[[0.0; LANES]; A]; 9];
    for (line, dst) in w.iter_mut().enumerate() {
        *dst = g_rows::<A>(&g[line * 3], &g[line * 3 + 1], &g[line * 3 + 2]);
    }
    let mut h = [[[0.0; LANES]; A]; 18];
    for kd in 0..3 {
        for px in 0..A {
            let col = g_rows::<A>(&w[kd * 3][px], &w[kd * 3 + 1][px], &w[kd * 3 + 2][px]);
            for (py, v) in col.into_iter().enumerate() {
                h[kd * A + py][px] = v;
            }
        }
    }
    for py in 0..A {
        for px in 0..A {
            let col = g_rows::<A>(&h[py][px], &h[A + py][px], &h[2 * A + py][px]);
            for (pz, v) in col.into_iter().enumerate() {
                u[(pz * A + py) * A + px] = v;
            }
        }
    }
}

/// Input channel `ic`'s part of the transformed kernel: `block[p * o + oc]` = point `p` of
/// `G g G^T` for `g = w[oc][ic] * scale[oc]` (`w`: `[o, i, 27]`), 16 output channels at a time.
#[inline(always)]
fn transform_kernels<const A: usize>(
    w: &[f32],
    [o, i]: [usize; 2],
    scale: Option<&[f32]>,
    ic: usize,
    block: &mut [f32],
) {
    let mut u = vec![[0.0; LANES]; A * A * A];
    for first in (0..o).step_by(LANES) {
        let lanes = LANES.min(o - first);
        let mut g = [[0.0; LANES]; 27];
        for (l, oc) in (first..first + lanes).enumerate() {
            let factor = scale.map_or(1.0, |s| s[oc]);
            for (t, v) in w[(oc * i + ic) * 27..][..27].iter().enumerate() {
                g[t][l] = v * factor;
            }
        }
        transform_lanes::<A>(&g, &mut u);
        for (p, values) in u.iter().enumerate() {
            block[p * o + first..][..lanes].copy_from_slice(&values[..lanes]);
        }
    }
}

/// [`transform_kernels`] for `tile`.
fn transform_kernels_for(
    tile: Tile,
    kernel: Kernel,
    w: &[f32],
    dims: [usize; 2],
    scale: Option<&[f32]>,
    ic: usize,
    block: &mut [f32],
) {
    match tile {
        Tile::F2 => transform_kernels_on::<4>(kernel, w, dims, scale, ic, block),
        Tile::F4 => transform_kernels_on::<6>(kernel, w, dims, scale, ic, block),
    }
}

/// [`transform_kernels`], compiled for `kernel`'s vectors ([`Kernel::wide`]: 16 lanes on
/// AVX-512, 8 on AVX2; the crate is built for baseline x86-64).
fn transform_kernels_on<const A: usize>(
    kernel: Kernel,
    w: &[f32],
    dims: [usize; 2],
    scale: Option<&[f32]>,
    ic: usize,
    block: &mut [f32],
) {
    kernel.wide(
        #[inline(always)]
        || transform_kernels::<A>(w, dims, scale, ic, block),
    )
}

impl Winograd {
    /// The transform of `w` (`[o, i, 3, 3, 3]`, PyTorch's layout) for `tile`, each output
    /// channel multiplied by `scale[oc]` if given (a folded BatchNorm), packed for `kernel`.
    ///
    /// With `bf16`, the transformed kernel is kept in bf16 for AVX512_BF16 products: the
    /// caller checks that this CPU has them ([`bf16::available`](super::bf16::available)), that
    /// `kernel` is [`Kernel::Avx512`] and that `i` is even (pairs of input channels).
    ///
    /// The caller checks that `w` holds `o * i * 27` values and `scale` `o` (asserted when
    /// packing).
    pub(crate) fn new(
        w: &[f32],
        [o, i]: [usize; 2],
        scale: Option<&[f32]>,
        kernel: Kernel,
        bf16: bool,
        tile: Tile,
    ) -> Self {
        let points = tile.points();
        // u[ic][p][oc]: per input channel, the points' rows of output channels; point p's
        // [in, out] matrix is then rows `points * o` apart.
        let mut u = vec![0.0f32; i * points * o];
        u.par_chunks_mut(points * o).enumerate().for_each(|(ic, block)| {
            transform_kernels_for(tile, kernel, w, [o, i], scale, ic, block);
        });
        let (u, u_bf16) = if bf16 {
            assert!(
                i.is_multiple_of(2) && kernel.is_avx512() && super::bf16::available(),
                "Winograd::new: bf16 needs pairs and AVX512_BF16"
            );
            let packed = (0..points)
                .into_par_iter()
                .map(|p| PackedBf16::from_rows(&u[p * o..], points * o, i, o))
                .collect();
            (Vec::new(), packed)
        } else {
            let packed = (0..points)
                .into_par_iter()
                .map(|p| PackedB::from_rows(&u[p * o..], points * o, i, o, kernel))
                .collect();
            (packed, Vec::new())
        };
        Self {
            u,
            u_bf16,
            in_channels: i,
            out_channels: o,
            kernel,
            tile,
        }
    }

    /// The tile this kernel is transformed for.
    pub(crate) fn tile(&self) -> Tile {
        self.tile
    }

    /// `out = conv(xp) + bias (+ residual)`, then ReLU if `relu` (keeping NaN), for the padded
    /// input `xp` (`[n, d', h', w', in]` with `[d', h', w']` = [`Tile::padded_extent`] of the
    /// output, the layer's padding already applied) and the output `[n, od, oh, ow, out]`.
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
        let [dp, hp, wp] = self.tile.padded_extent([od, oh, ow]);
        // Every index below is within these lengths.
        if oc != self.out_channels
            || xp.len() != n * dp * hp * wp * ic
            || out.len() != voxels * oc
            || bias.len() != oc
            || residual.is_some_and(|r| r.len() != out.len())
        {
            return false;
        }
        let points = self.tile.points();
        let geometry = Geometry::new(self.tile, [od, oh, ow], ic, oc);
        let count = n * geometry.tiles.iter().product::<usize>();
        let chunk = chunk_tiles(points, ic, oc);
        let chunks = count.div_ceil(chunk);
        // Few chunks (a late stage): the output channels are split between threads too, each
        // transforming its chunk's input again.
        let items = work_items(chunks, oc.div_ceil(NR));
        let out_ptr = SendPtr(out.as_mut_ptr());
        items.into_par_iter().for_each(|(t, panels)| {
            let first = t * chunk;
            let rows = chunk.min(count - first);
            SCRATCH.with_borrow_mut(|s| {
                s.v.resize(points * rows * ic, 0.0);
                s.m.resize(points * rows * oc, 0.0);
                s.first.resize(points * ic.max(oc), 0.0);
                s.second.resize(points * ic.max(oc), 0.0);
                input_tiles(
                    self.kernel,
                    &geometry,
                    xp,
                    first,
                    rows,
                    (&mut s.v, &mut s.first, &mut s.second),
                );
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
    /// The products `M[p] += V[p] x U[p]` of a chunk of `rows` tiles in bf16, over the output
    /// columns of `panels`: `V` rounded to bf16 (nearest even), f32 accumulation.
    fn products_bf16(&self, rows: usize, panels: Range<usize>, s: &mut Scratch) {
        let (ic, oc, points) = (self.in_channels, self.out_channels, self.tile.points());
        // MR rows to spare past the last point's rows: the register tile reads whole tiles.
        s.v_bf16.resize(points * rows * ic + MR * ic, 0);
        round_into(&s.v[..points * rows * ic], &mut s.v_bf16);
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

    /// Both tiles against the direct convolution in f64, with BatchNorm's scale, bias, residual
    /// and ReLU, within a bound on `1 + m`, `m` the sum of the terms' magnitudes: F(2, 3)
    /// 5e-7, F(4, 3) 1e-5 (its transforms weigh values by up to 5 and 8 per axis; the worst
    /// errors measured here are 1e-7 and 4.3e-6 of `1 + m`).
    #[test]
    fn tiles_compute_the_direct_convolution() {
        // Odd extents (partial tiles on every axis), channel counts off the panel width, a
        // batch of two, and a chunk count that splits the output channels between threads.
        for tile in [Tile::F2, Tile::F4] {
            for (kernel, [n, od, oh, ow], [ic, oc]) in [
                (Kernel::detect(), [2, 3, 5, 7], [5, 37]),
                (Kernel::detect(), [1, 4, 6, 8], [16, 64]),
                (Kernel::detect(), [1, 9, 6, 13], [64, 128]),
                (Kernel::Portable, [1, 5, 3, 4], [3, 33]),
            ] {
                let [dp, hp, wp] = tile.padded_extent([od, oh, ow]);
                let pdims = [n, dp, hp, wp, ic];
                let xp = values(pdims.iter().product(), 1);
                let w = values(oc * ic * 27, 2);
                let scale: Vec<f32> = (0..oc).map(|o| 0.5 + o as f32 / oc as f32).collect();
                let folded: Vec<f32> = w.iter().enumerate().map(|(k, v)| v * scale[k / (ic * 27)]).collect();
                let bias = values(oc, 3);
                let out_dims = [n, od, oh, ow, oc];
                let residual = values(out_dims.iter().product(), 4);
                let want = direct(&xp, pdims, &folded, out_dims);
                let magnitude = direct(
                    &xp.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                    pdims,
                    &folded.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                    out_dims,
                );
                let wg = Winograd::new(&w, [oc, ic], Some(&scale), kernel, false, tile);
                let mut worst = 0.0f32;
                for relu in [false, true] {
                    let mut got = vec![f32::NAN; want.len()];
                    assert!(wg.forward(&xp, out_dims, &bias, Some(&residual), relu, &mut got));
                    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                        let mut w = w + bias[k % oc] + residual[k];
                        if relu {
                            w = w.max(0.0);
                        }
                        let bound = match tile {
                            Tile::F2 => 5e-7 * (1.0 + magnitude[k]),
                            Tile::F4 => 1e-5 * (1.0 + magnitude[k]),
                        };
                        worst = worst.max((g - w).abs() / bound);
                        assert!((g - w).abs() <= bound, "{tile:?} {kernel:?} at {k}: {g} vs {w}");
                    }
                }
                println!("{tile:?} {ic}->{oc}: worst error {worst:.3} of the bound");
                // Lengths that do not fit the shapes: nothing computed.
                let mut short = vec![0.0; want.len() - 1];
                assert!(!wg.forward(&xp, out_dims, &bias, None, false, &mut short));
                assert!(!wg.forward(&xp[1..], out_dims, &bias, None, false, &mut vec![0.0; want.len()]));
            }
        }
    }

    /// The bf16 products: within bf16's rounding of the direct f32 convolution (the transformed
    /// input and kernel keep 8 significant bits; over 27 x ic taps the error measured here is
    /// about 5e-3 of the output's largest magnitude, the tolerance 2e-2), and not equal to
    /// the f32 path (the bf16 product ran). Partial tiles, a partial panel, a row count off
    /// the register tile, an output channel split.
    #[test]
    fn bf16_tiles_stay_close_to_the_direct_convolution() {
        if !(super::super::bf16::available() && Kernel::detect().is_avx512()) {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        for ([n, od, oh, ow], [ic, oc]) in [([2, 3, 5, 7], [6, 37]), ([1, 6, 9, 8], [64, 64])] {
            let [dp, hp, wp] = Tile::F2.padded_extent([od, oh, ow]);
            let pdims = [n, dp, hp, wp, ic];
            let xp = values(pdims.iter().product(), 1);
            let w = values(oc * ic * 27, 2);
            let out_dims = [n, od, oh, ow, oc];
            let want = direct(&xp, pdims, &w, out_dims);
            let scale_of = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let wg = Winograd::new(&w, [oc, ic], None, Kernel::detect(), true, Tile::F2);
            let mut got = vec![f32::NAN; want.len()];
            assert!(wg.forward(&xp, out_dims, &vec![0.0; oc], None, false, &mut got));
            let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max) / scale_of;
            println!("bf16 Winograd {ic}->{oc}: max error {err:.2e} of the largest output");
            assert!((1e-5..=2e-2).contains(&err), "{ic}->{oc}: error {err:e}");
        }
        // NaN still reaches exactly the outputs whose window holds it.
        let (od, c) = (4, 16);
        let [dp, ..] = Tile::F2.padded_extent([od; 3]);
        let mut xp = values(dp * dp * dp * c, 5);
        xp[((3 * dp + 3) * dp + 3) * c] = f32::NAN;
        let wg = Winograd::new(&values(c * c * 27, 6), [c, c], None, Kernel::detect(), true, Tile::F2);
        let mut out = vec![0.0; od * od * od * c];
        assert!(wg.forward(&xp, [1, od, od, od, c], &vec![0.0; c], None, true, &mut out));
        for (v, voxel) in out.chunks_exact(c).enumerate() {
            let inside = [v / 16, (v / 4) % 4, v % 4].iter().all(|a| (1..=3).contains(a));
            assert!(voxel.iter().all(|x| x.is_nan() == inside), "output {v}");
        }
    }

    /// F(4, 3) mixes a tile's six inputs per axis into every output, so an output's error
    /// follows the largest terms of its 4x4x4 tile, not its own (a hostile review's probe: a
    /// dim window beside a bright region, contrast 1e4, was 61% off at that output). Bounded
    /// here within 5e-5 of `1 + t`, `t` the largest sum of the terms' magnitudes among the
    /// tile's outputs, for contrasts of 1 to 1e6 (worst measured 2.5e-5); F(2, 3) within 1e-6
    /// of the output's own sum (worst 5.1e-7).
    #[test]
    fn f4_errors_follow_the_largest_terms_of_the_tile() {
        let (od, c) = (8, 16);
        let [dp, hp, wp] = Tile::F4.padded_extent([od; 3]);
        let pdims = [1, dp, hp, wp, c];
        let w = values(c * c * 27, 7);
        let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let out_dims = [1, od, od, od, c];
        for contrast in [1.0f32, 1e2, 1e4, 1e6] {
            // Bright voxels in the far corner of each 6x6x6 input tile, dim ones elsewhere.
            let mut xp = values(pdims.iter().product(), 8);
            for (v, x) in xp.chunks_exact_mut(c).enumerate() {
                let [z, y, xx] = [v / (hp * wp), (v / wp) % hp, v % wp];
                if [z, y, xx].iter().all(|a| a % 4 >= 3) {
                    x.iter_mut().for_each(|x| *x *= contrast);
                }
            }
            let want = direct(&xp, pdims, &w, out_dims);
            let abs_x: Vec<f32> = xp.iter().map(|v| v.abs()).collect();
            let magnitude = direct(&abs_x, pdims, &abs_w, out_dims);
            // Per output voxel, the largest magnitude in its 4x4x4 tile.
            let tile_of = |k: usize| {
                let v = k / c;
                [v / (od * od) / 4, (v / od) % od / 4, v % od / 4]
            };
            let mut tile_max = std::collections::HashMap::new();
            for (k, m) in magnitude.iter().enumerate() {
                let t = tile_max.entry(tile_of(k)).or_insert(0.0f32);
                *t = t.max(*m);
            }
            for (tile, bound) in [(Tile::F4, 5e-5), (Tile::F2, 1e-6)] {
                let wg = Winograd::new(&w, [c, c], None, Kernel::detect(), false, tile);
                let mut got = vec![f32::NAN; want.len()];
                assert!(wg.forward(&xp, out_dims, &vec![0.0; c], None, false, &mut got));
                let mut worst = 0.0f32;
                for (k, (g, y)) in got.iter().zip(&want).enumerate() {
                    let scale = 1.0
                        + if tile == Tile::F4 {
                            tile_max[&tile_of(k)]
                        } else {
                            magnitude[k]
                        };
                    worst = worst.max((g - y).abs() / scale);
                }
                println!("{tile:?}, contrast {contrast:e}: worst error {worst:.2e}");
                assert!(worst <= bound, "{tile:?}, contrast {contrast}: {worst:e}");
            }
        }
    }

    #[test]
    fn nan_reaches_only_the_outputs_whose_window_holds_it() {
        let (od, oh, ow, c) = (4, 4, 4, 16);
        let [dp, hp, wp] = Tile::F2.padded_extent([od, oh, ow]);
        let mut xp = values(dp * hp * wp * c, 5);
        // A NaN at padded voxel (3, 3, 3), channel 0: the window of output (z, y, x) covers it
        // when z, y, x are each 1, 2 or 3.
        xp[((3 * hp + 3) * wp + 3) * c] = f32::NAN;
        let wg = Winograd::new(&values(c * c * 27, 6), [c, c], None, Kernel::detect(), false, Tile::F2);
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
