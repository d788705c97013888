//! Where the tiles of a Winograd product lie, in the padded input and in the output, and the
//! transforms of whole tiles over channels-last data: the input's `B^T d B` into the points'
//! rows `V`, and the products' `A^T M A` back to output voxels with bias, residual and ReLU
//! (the one-axis transforms: [`winograd_axis`](super::winograd_axis); the products:
//! [`winograd`](super::winograd)).

use std::cell::RefCell;
use std::ops::Range;

use super::matmul::Kernel;
use super::parallel::SendPtr;
use super::winograd_axis::{Tile, a_transpose, b_transpose};

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
    pub(super) v_bf16: Vec<u16>,
    pub(super) m: Vec<f32>,
    pub(super) first: Vec<f32>,
    pub(super) second: Vec<f32>,
    pub(super) tail: Vec<f32>,
}

/// Where [`input_tiles`] writes: `V` (point `p`'s rows from `p * rows * c`), and two
/// intermediates of at least `A^3 * c` values each.
pub(super) type TileWork<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32]);

/// [`input_tiles_here`], compiled for `kernel`'s vectors ([`Kernel::wide`]).
pub(super) fn input_tiles(
    kernel: Kernel,
    geometry: &Geometry,
    xp: &[f32],
    first: usize,
    rows: usize,
    work: TileWork<'_>,
) {
    kernel.wide(
        #[inline(always)]
        || input_tiles_here(geometry, xp, first, rows, work),
    )
}

/// [`Geometry::output_tile`] for tiles `first..first + rows`, compiled for `kernel`'s vectors
/// ([`Kernel::wide`]).
///
/// # Safety
/// As [`Geometry::output_tile`], for every tile.
pub(super) unsafe fn output_tiles(
    kernel: Kernel,
    geometry: &Geometry,
    tiles: (usize, usize),
    cols: Range<usize>,
    s: &mut Scratch,
    epilogue: (&[f32], Option<&[f32]>, bool),
    out: &SendPtr,
) {
    kernel.wide(
        #[inline(always)]
        || {
            // SAFETY: the caller's contract.
            unsafe { output_tiles_here(geometry, tiles, cols, s, epilogue, out) }
        },
    )
}

/// The transformed input of tiles `first..first + rows` into `V` (rows of each point).
#[inline(always)]
fn input_tiles_here(geometry: &Geometry, xp: &[f32], first: usize, rows: usize, (v, a, b): TileWork<'_>) {
    let [_, hp, wp] = geometry.padded;
    let ic = geometry.ic;
    for r in 0..rows {
        let x = &xp[geometry.input_offset(first + r)..];
        let work = (&mut *v, &mut *a, &mut *b);
        match geometry.tile {
            Tile::F2 => input_tile::<4>(x, [hp * wp * ic, wp * ic], ic, work, r, rows),
            Tile::F4 => input_tile::<6>(x, [hp * wp * ic, wp * ic], ic, work, r, rows),
        }
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
        let tile = (first + r, r, rows);
        let work = (&mut s.first[..], &mut s.second[..]);
        // SAFETY: the caller's contract.
        unsafe {
            match geometry.tile {
                Tile::F2 => geometry.output_tile::<4>(tile, &s.m, cols.clone(), work, epilogue, out),
                Tile::F4 => geometry.output_tile::<6>(tile, &s.m, cols.clone(), work, epilogue, out),
            }
        };
    }
}

/// Tiles per chunk: a chunk's `V` and `M` (`points` rows per tile, of the input's and of the
/// output's channels) stay within about 1 MiB, the L2 cache, and hold whole register tiles.
pub(super) fn chunk_tiles(points: usize, ic: usize, oc: usize) -> usize {
    let mr = super::matmul::MR;
    ((256 * 1024) / (points * (ic + oc)) / mr).clamp(1, 8) * mr
}

/// A layer's tile grid, padded input and output, for locating a tile in both.
pub(super) struct Geometry {
    pub(super) tile: Tile,
    pub(super) tiles: [usize; 3],
    pub(super) padded: [usize; 3],
    pub(super) out: [usize; 3],
    pub(super) ic: usize,
    pub(super) oc: usize,
}

impl Geometry {
    /// The grid of `tile`s of an output of `out` voxels per batch item, its padded input
    /// ([`Tile::padded_extent`]), `ic` and `oc` channels.
    pub(super) fn new(tile: Tile, out: [usize; 3], ic: usize, oc: usize) -> Self {
        Self {
            tile,
            tiles: out.map(|o| o.div_ceil(tile.step())),
            padded: tile.padded_extent(out),
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
        let step = self.tile.step();
        (((b * dp + step * z) * hp + step * y) * wp + step * x) * self.ic
    }

    /// The outputs of `tile` (row `r` of its chunk's `rows`) from its `A^3` products (`m`: row
    /// `(p * rows + r) * oc`), columns `cols`: `A^T M A` per axis, plus bias, plus the
    /// residual, then ReLU if asked, written to the output voxels that lie within the output.
    /// `work`: two buffers of at least `A^3 * cols.len()` values.
    ///
    /// # Safety
    /// `out` must hold the whole output (`n * od * oh * ow * oc` values) and no other thread may
    /// touch this tile's voxels in `cols` meanwhile; `residual`, if given, the same length.
    #[inline(always)]
    unsafe fn output_tile<const A: usize>(
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
        let (oc, width, step) = (self.oc, cols.len(), A - 2);
        // Point p's row: (p * rows + r) * oc; the A points of a line are `rows * oc` apart.
        let line_at = |line: usize| (line * A * rows + r) * oc + cols.start;
        // Along width: the A points of each (depth, height) point to `step` columns,
        // `along_w[((pz * A + py) * step + x) * width]`.
        for line in 0..A * A {
            a_transpose::<A>(
                (m, line_at(line), rows * oc),
                &mut along_w[line * step * width..],
                width,
            );
        }
        // Along height: for each depth point and output column, to `step` rows,
        // `along_h[((pz * step + x) * step + y) * width]`.
        let (along_h, column) = work.split_at_mut(A * step * step * width);
        for pz in 0..A {
            for x in 0..step {
                a_transpose::<A>(
                    (along_w, (pz * A * step + x) * width, step * width),
                    &mut along_h[(pz * step + x) * step * width..],
                    width,
                );
            }
        }
        // Along depth, then bias, residual and ReLU, into the output.
        let column = &mut column[..step * width];
        for x in 0..step {
            for y in 0..step {
                a_transpose::<A>((along_h, (x * step + y) * width, step * step * width), column, width);
                for (z, values) in column.chunks_exact(width).enumerate() {
                    let (oz, oy, ox) = (step * tz + z, step * ty + y, step * tx + x);
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

/// The tile whose first voxel starts `x` (the padded input from there; `[depth, height]`
/// strides `[sz, sy]`), transformed (`B^T d B` per axis) into row `r` of each point's `V`
/// (point `p`'s rows from `p * count * c`).
#[inline(always)]
fn input_tile<const A: usize>(
    x: &[f32],
    [sz, sy]: [usize; 2],
    c: usize,
    (v, first, second): TileWork<'_>,
    r: usize,
    count: usize,
) {
    // Along width: each (depth, height) row's A voxels (A * c contiguous values), into
    // `first[((pz * A + py) * A + px) * c]`.
    for pz in 0..A {
        for py in 0..A {
            b_transpose::<A>((x, pz * sz + py * sy, c), (&mut *first, (pz * A + py) * A * c, c), c);
        }
    }
    // Along height, stored [depth][width point][height point] so that the results are
    // consecutive rows: `second[((pz * A + px) * A + py) * c]`.
    for pz in 0..A {
        for px in 0..A {
            b_transpose::<A>(
                (&*first, (pz * A * A + px) * c, A * c),
                (&mut *second, (pz * A + px) * A * c, c),
                c,
            );
        }
    }
    // Along depth, into V: point (pz, py, px) is row r of V[(pz * A + py) * A + px], the
    // depth points `A * A * rows * c` apart.
    for py in 0..A {
        for px in 0..A {
            b_transpose::<A>(
                (&*second, (px * A + py) * c, A * A * c),
                (&mut *v, ((py * A + px) * count + r) * c, A * A * count * c),
                c,
            );
        }
    }
}
