//! The weight gradient of a 3x3x3 convolution of stride 1 by the transforms of
//! [`winograd`](super::winograd), F(2x2x2, 3x3x3): the training ops' kernel gradient where it
//! pays.

use std::ops::Range;

use rayon::prelude::*;

use super::matmul::{Kernel, NR};
use super::winograd_axis::{Tile, a_expand};
use super::winograd_tiles::{Geometry, SCRATCH, TileWork, input_tiles};

/// Points of the transformed tile, F(2x2x2, 3x3x3).
const POINTS: usize = Tile::F2.points();

/// Output voxels per tile and axis.
const STEP: usize = Tile::F2.step();

/// The weight gradient of a 3x3x3 convolution of stride 1 by the same transforms: per point
/// `p` of the transformed tile, `dU[p] = sum over tiles of dM[p]^T V[p]` (`V`: the input's
/// transform `B^T d B`, as in the forward pass; `dM`: the output gradient's 2x2x2 tile taken
/// back through the output transform, `A dY A^T` per axis), then `dW = G^T dU G` per axis:
/// 64 products of `oc x ic` over the tiles instead of 27 over the voxels, a third of the
/// multiply-adds. `xp` is the padded input as [`Winograd::forward`](super::winograd::Winograd::forward) takes it (`[n, d', h', w',
/// ic]`, [`Winograd::padded_extent`] of the output, the layer's padding applied) and `dy` the
/// output gradient, channels-last `[n, od, oh, ow, oc]`; `dw` receives the gradient in
/// PyTorch's layout `[oc, ic, 27]` (every value written). The caller checks that `xp` and
/// `dy` are moderate (the transforms' sums would turn an infinity into NaN).
///
/// The tiles go in chunks (their `V` and `dM` within about 8 MiB, from `buffers`), transformed in
/// blocks of [`GRAD_BLOCK`] tiles on every thread, then each point's product on one thread
/// over the blocks in order: the sums, and so the result, are the same bit for bit whatever
/// the number of threads, and the memory is one `dU` (`64 x oc x ic`) and one chunk. `V` and
/// `dM` are both laid out as the tiles' rows of each point (`[p][tile][channels]`, written
/// where they lie, 16 channels at a time); the product reads `dM[p]` as the transpose it
/// needs ([`A_TRANSPOSED`](super::matmul::A_TRANSPOSED)), and `G^T dU G` runs
/// over rows of input channels.
///
/// Accuracy: the transforms mix the taps of a tile, so the error follows the layer's largest
/// gradients, not each weight's own terms. On random data it is within 3.2e-7 of the sum of
/// the terms' magnitudes (direct: 1.1-2.2e-7); with mixed scales (1 value in 17 of `x` times
/// 1e6, the others times 1e-3) a weight whose own terms are small was off by 25 times their
/// sum, while the error stayed within 4.1e-7 of the largest gradient at scales 1e3 / 1e-3
/// (a hostile review's probes).
///
/// Returns `false`, computing nothing, if the lengths do not fit these shapes or a buffer
/// cannot be allocated.
// Used by the training ops, which need the flex backend.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn weight_grad(
    kernel: Kernel,
    xp: &[f32],
    dy: &[f32],
    out_dims: [usize; 5],
    ic: usize,
    buffers: &super::buffers::Buffers,
    dw: &mut [f32],
) -> bool {
    let [n, od, oh, ow, oc] = out_dims;
    let [dp, hp, wp] = Tile::F2.padded_extent([od, oh, ow]);
    if xp.len() != n * dp * hp * wp * ic
        || dy.len() != n * od * oh * ow * oc
        || dw.len() != oc * ic * 27
        || ic == 0
        || oc == 0
    {
        return false;
    }
    let geometry = Geometry::new(Tile::F2, [od, oh, ow], ic, oc);
    let count = n * geometry.tiles.iter().product::<usize>();
    let per_tile = POINTS * (ic + oc);
    // About 8 MiB of V and dM per chunk, at least a block per thread: for 64 channels on
    // 1152 tiles 2.8-3.0 ms against 3.1-3.6 with 16 MiB (means 3.0 against 4.2-4.7, the
    // transforms' output read back from closer caches); chunks only group the blocks, whose
    // sums run in the same order whatever their size.
    let threads = rayon::current_num_threads().max(1);
    let chunk = ((8 << 20) / (4 * per_tile) / GRAD_BLOCK).max(threads) * GRAD_BLOCK;
    let most = chunk.min(count);
    let (Some(mut du), Some(mut vbuf), Some(mut mbuf)) = (
        buffers.take(POINTS * oc * ic),
        buffers.take(POINTS * most * ic),
        buffers.take(POINTS * most * oc),
    ) else {
        return false;
    };
    du.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
    for first in (0..count).step_by(chunk.max(1)) {
        let rows = chunk.min(count - first);
        let (v, m) = (&mut vbuf[..POINTS * rows * ic], &mut mbuf[..POINTS * rows * oc]);
        // Each block's V ([p][block rows][ic]) and dM ([p][block rows][oc]), in its own
        // part of the chunk's buffers.
        v.par_chunks_mut(POINTS * GRAD_BLOCK * ic)
            .zip(m.par_chunks_mut(POINTS * GRAD_BLOCK * oc))
            .enumerate()
            .for_each(|(b, (vb, mb))| {
                let (start, block) = (first + b * GRAD_BLOCK, vb.len() / (POINTS * ic));
                SCRATCH.with_borrow_mut(|s| {
                    s.first.resize(POINTS * ic.max(oc), 0.0);
                    s.second.resize(POINTS * ic.max(oc), 0.0);
                    input_tiles(kernel, &geometry, xp, start, block, (vb, &mut s.first, &mut s.second));
                    grad_tiles(kernel, &geometry, dy, start, block, (mb, &mut s.first, &mut s.second));
                });
            });
        let (v, m) = (&*v, &*m);
        du.par_chunks_mut(oc * ic)
            .enumerate()
            .for_each_init(super::matmul::Scratch::default, |scratch, (p, dup)| {
                for (b, start) in (0..rows).step_by(GRAD_BLOCK).enumerate() {
                    let block = GRAD_BLOCK.min(rows - start);
                    let vb = &v[b * POINTS * GRAD_BLOCK * ic..][..POINTS * block * ic];
                    let mb = &m[b * POINTS * GRAD_BLOCK * oc..][..POINTS * block * oc];
                    // B = V[p] of the block: `block` rows of ic values, a panel of NR columns
                    // at a time.
                    let pack = |ks: Range<usize>, j: usize, buf: &mut [f32]| {
                        let cols = NR.min(ic - j * NR);
                        for (dst, t) in buf.chunks_exact_mut(NR).zip(ks) {
                            super::matmul::pack_row(dst, &vb[(p * block + t) * ic + j * NR..][..cols]);
                        }
                    };
                    // SAFETY: A = the block's dM[p]^T, stored as dM[p]: `block` rows of oc
                    // values from `p * block * oc` within `mb` (POINTS * block * oc values);
                    // C = `dup`, point p's oc rows of ic values, this task's alone; the panels
                    // are ic's; `kernel` is `Kernel::detect`'s answer (the caller's).
                    unsafe {
                        super::matmul::product::<{ super::matmul::A_TRANSPOSED }>(
                            kernel,
                            mb.as_ptr().add(p * block * oc),
                            oc,
                            oc,
                            block,
                            ic,
                            0..ic.div_ceil(NR),
                            pack,
                            dup.as_mut_ptr(),
                            ic,
                            scratch,
                        );
                    }
                }
            });
    }
    buffers.give(vbuf);
    buffers.give(mbuf);
    // dW[oc][ic][(kd * 3 + kh) * 3 + kw] = (G^T dU G) per axis, point (pz * 4 + py) * 4 + px.
    let plane = oc * ic;
    // Per output channel, over rows of its ic values (point p's row of dU from p * plane + o
    // * ic): along width, height and depth, then each tap's row into PyTorch's layout.
    dw.par_chunks_mut(ic * 27).enumerate().for_each_init(
        || vec![0.0f32; (48 + 36 + 27) * ic],
        |work, (o, dst)| {
            let (along_x, rest) = work.split_at_mut(48 * ic);
            let (along_y, taps) = rest.split_at_mut(36 * ic);
            let row = |p: usize| &du[p * plane + o * ic..][..ic];
            // Along width: line (pz * 4 + py) to `along_x[(line * 3 + kw) * ic]`.
            for line in 0..16 {
                let src = [row(line * 4), row(line * 4 + 1), row(line * 4 + 2), row(line * 4 + 3)];
                g_transpose_rows(src, (&mut *along_x, line * 3 * ic, ic), ic);
            }
            // Along height: `along_y[((pz * 3 + kh) * 3 + kw) * ic]`.
            for pz in 0..4 {
                for kw in 0..3 {
                    let at = |py: usize| &along_x[((pz * 4 + py) * 3 + kw) * ic..][..ic];
                    g_transpose_rows(
                        [at(0), at(1), at(2), at(3)],
                        (&mut *along_y, (pz * 9 + kw) * ic, 3 * ic),
                        ic,
                    );
                }
            }
            // Along depth: `taps[((kd * 3 + kh) * 3 + kw) * ic]`.
            for kh in 0..3 {
                for kw in 0..3 {
                    let at = |pz: usize| &along_y[((pz * 3 + kh) * 3 + kw) * ic..][..ic];
                    g_transpose_rows(
                        [at(0), at(1), at(2), at(3)],
                        (&mut *taps, (kh * 3 + kw) * ic, 9 * ic),
                        ic,
                    );
                }
            }
            for (t, values) in taps.chunks_exact(ic).enumerate() {
                for (i, &v) in values.iter().enumerate() {
                    dst[i * 27 + t] = v;
                }
            }
        },
    );
    buffers.give(du);
    true
}

/// Tiles per block of [`weight_grad`]: the unit of its transforms' work split, fixed so that
/// its sums do not depend on the number of threads.
// Used by the training ops, which need the flex backend.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
const GRAD_BLOCK: usize = 64;

/// `G^T` along one axis over rows of `n` values: four points back to three taps, the rows
/// of `dst` (`G` maps `g` to `g_0, (g_0 + g_1 + g_2) / 2, (g_0 - g_1 + g_2) / 2, g_2`).
#[inline(always)]
// Used by the training ops, which need the flex backend.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
fn g_transpose_rows([u0, u1, u2, u3]: [&[f32]; 4], (dst, at, stride): (&mut [f32], usize, usize), n: usize) {
    let (t0, rest) = dst[at..at + 2 * stride + n].split_at_mut(stride);
    let (t1, t2) = rest.split_at_mut(stride);
    let (u0, u1, u2, u3, t0, t1, t2) = (
        &u0[..n],
        &u1[..n],
        &u2[..n],
        &u3[..n],
        &mut t0[..n],
        &mut t1[..n],
        &mut t2[..n],
    );
    for i in 0..n {
        let (s, d) = (u1[i] + u2[i], u1[i] - u2[i]);
        t0[i] = u0[i] + 0.5 * s;
        t1[i] = 0.5 * d;
        t2[i] = 0.5 * s + u3[i];
    }
}

/// [`grad_tile`] for tiles `first..first + rows`, compiled for `kernel`'s vectors
/// ([`Kernel::wide`]).
fn grad_tiles(kernel: Kernel, geometry: &Geometry, dy: &[f32], first: usize, rows: usize, work: TileWork<'_>) {
    kernel.wide(
        #[inline(always)]
        || grad_tiles_here(geometry, dy, first, rows, work),
    )
}

#[inline(always)]
fn grad_tiles_here(geometry: &Geometry, dy: &[f32], first: usize, rows: usize, (m, a, b): TileWork<'_>) {
    let zeros = vec![0.0; geometry.oc];
    for r in 0..rows {
        grad_tile(geometry, dy, first + r, r, rows, (&mut *m, &mut *a, &mut *b), &zeros);
    }
}

/// Tile `tile`'s output gradient (its 2x2x2 voxels of `dy`, `zeros` past the output) taken
/// back through the output transform, `A dY A^T` per axis (`A` maps `y_0, y_1` to `y_0, y_0 +
/// y_1, y_0 - y_1, -y_1`: [`a_expand`]), into row `r` of each point's `dM` (point `p`'s rows
/// from `p * rows * oc`), as [`input_tiles`] lays out `V`.
#[inline(always)]
fn grad_tile(
    geometry: &Geometry,
    dy: &[f32],
    tile: usize,
    r: usize,
    rows: usize,
    (m, along_w, along_h): TileWork<'_>,
    zeros: &[f32],
) {
    let [b, tz, ty, tx] = geometry.coordinates(tile);
    let [od, oh, ow] = geometry.out;
    let oc = geometry.oc;
    // Voxel (z, y, x) of the tile: its oc values, or zeros past the output.
    let voxel = |z: usize, y: usize, x: usize| {
        let (oz, oy, ox) = (STEP * tz + z, STEP * ty + y, STEP * tx + x);
        if oz < od && oy < oh && ox < ow {
            &dy[(((b * od + oz) * oh + oy) * ow + ox) * oc..][..oc]
        } else {
            &zeros[..oc]
        }
    };
    // Along width: `along_w[((z * 2 + y) * 4 + px) * oc]`.
    for z in 0..2 {
        for y in 0..2 {
            a_expand(
                voxel(z, y, 0),
                voxel(z, y, 1),
                (&mut *along_w, (z * 2 + y) * 4 * oc, oc),
                oc,
            );
        }
    }
    // Along height: `along_h[((z * 4 + py) * 4 + px) * oc]`.
    for z in 0..2 {
        for px in 0..4 {
            let y0 = &along_w[(z * 8 + px) * oc..][..oc];
            let y1 = &along_w[(z * 8 + 4 + px) * oc..][..oc];
            a_expand(y0, y1, (&mut *along_h, (z * 16 + px) * oc, 4 * oc), oc);
        }
    }
    // Along depth, into dM: point (pz * 4 + py) * 4 + px, row r.
    for py in 0..4 {
        for px in 0..4 {
            let y0 = &along_h[(py * 4 + px) * oc..][..oc];
            let y1 = &along_h[(16 + py * 4 + px) * oc..][..oc];
            a_expand(y0, y1, (&mut *m, ((py * 4 + px) * rows + r) * oc, 16 * rows * oc), oc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::winograd::tests::values;

    /// The weight gradient by the transforms against the direct sum over voxels (in f64), on
    /// odd extents (partial tiles), channel counts that are not whole panels, both kernels:
    /// within 1e-5 of the sum of the products' magnitudes.
    #[test]
    fn weight_grad_is_the_direct_sum() {
        for (seed, [n, od, oh, ow], [ic, oc]) in [
            (1u64, [2, 3, 5, 4], [3, 5]),
            (2, [1, 4, 4, 4], [16, 33]),
            (3, [3, 5, 2, 7], [40, 7]),
            (4, [1, 1, 1, 1], [1, 1]),
            // 2 x 5 x 5 x 5 = 250 tiles: four blocks, the last partial.
            (5, [2, 9, 10, 9], [4, 6]),
        ] {
            let [dp, hp, wp] = Tile::F2.padded_extent([od, oh, ow]);
            let mut xp = values(n * dp * hp * wp * ic, seed);
            // The padding past the last true plane is zero, as `forward_winograd` leaves it.
            for (i, v) in xp.iter_mut().enumerate() {
                let z = (i / (hp * wp * ic)) % dp;
                if z >= od + 2 {
                    *v = 0.0;
                }
            }
            let dy = values(n * od * oh * ow * oc, seed + 100);
            let (mut direct, mut scale) = (vec![0.0f64; oc * ic * 27], vec![0.0f64; oc * ic * 27]);
            for b in 0..n {
                for z in 0..od {
                    for y in 0..oh {
                        for x in 0..ow {
                            for o in 0..oc {
                                let g = f64::from(dy[(((b * od + z) * oh + y) * ow + x) * oc + o]);
                                for i in 0..ic {
                                    for t in 0..27 {
                                        let (kd, kh, kw) = (t / 9, (t / 3) % 3, t % 3);
                                        let v = xp[(((b * dp + z + kd) * hp + y + kh) * wp + x + kw) * ic + i];
                                        direct[(o * ic + i) * 27 + t] += g * f64::from(v);
                                        scale[(o * ic + i) * 27 + t] += (g * f64::from(v)).abs();
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let largest = scale.iter().fold(0.0f64, |m, v| m.max(*v)).max(1e-30);
            let buffers = crate::kernels::buffers::Buffers::with_budget(1 << 26);
            for kernel in [Kernel::Portable, Kernel::detect()] {
                let mut got = vec![f32::NAN; oc * ic * 27];
                assert!(weight_grad(
                    kernel,
                    &xp,
                    &dy,
                    [n, od, oh, ow, oc],
                    ic,
                    &buffers,
                    &mut got
                ));
                let worst = got
                    .iter()
                    .zip(&direct)
                    .fold(0.0f64, |m, (g, d)| m.max((f64::from(*g) - d).abs()));
                assert!(
                    worst <= 1e-5 * largest,
                    "{kernel:?} {n}x{od}x{oh}x{ow} {ic}->{oc}: {worst:e} of {largest:e}"
                );
            }
            // An input, an output gradient or a gradient one value short: refused.
            let mut dw = vec![0.0f32; oc * ic * 27];
            let dims = [n, od, oh, ow, oc];
            for short in 0..3 {
                let (x, g) = (&xp[usize::from(short == 0)..], &dy[usize::from(short == 1)..]);
                let out = &mut dw[usize::from(short == 2)..];
                assert!(
                    !weight_grad(Kernel::Portable, x, g, dims, ic, &buffers, out),
                    "case {short}"
                );
            }
        }
    }

    /// The weight gradient is the same bit for bit on 1, 2 and 3 threads (fixed blocks, each
    /// point's sum on one thread), over several blocks.
    #[test]
    fn weight_grad_does_not_depend_on_the_thread_count() {
        let ([n, od, oh, ow], [ic, oc]) = ([2, 17, 18, 16], [20, 24]);
        let [dp, hp, wp] = Tile::F2.padded_extent([od, oh, ow]);
        let xp = values(n * dp * hp * wp * ic, 7);
        let dy = values(n * od * oh * ow * oc, 8);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let buffers = crate::kernels::buffers::Buffers::with_budget(1 << 28);
                let mut dw = vec![0.0f32; oc * ic * 27];
                assert!(weight_grad(
                    Kernel::detect(),
                    &xp,
                    &dy,
                    [n, od, oh, ow, oc],
                    ic,
                    &buffers,
                    &mut dw
                ));
                dw
            })
        };
        let one = run(1);
        assert!(one.iter().all(|v| v.is_finite()) && one.iter().any(|v| *v != 0.0));
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}
