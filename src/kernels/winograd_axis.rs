//! One axis of Winograd's minimal filtering F(m, 3) for the two tiles the crate runs: `m`
//! outputs of a 3-tap correlation from `a = m + 2` inputs through `a` products,
//! `y = A^T [(G g) . (B^T d)]` (Lavin and Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2016; the interpolation points are 0, 1, -1 and infinity for F(2, 3), and 0, 1,
//! -1, 2, -2 and infinity for F(4, 3)):
//!
//! ```text
//! F(2, 3):  B^T = | 1  0 -1  0 |   G = | 1    0    0   |   A^T = | 1  1  1  0 |
//!                 | 0  1  1  0 |       | 1/2  1/2  1/2 |         | 0  1 -1 -1 |
//!                 | 0 -1  1  0 |       | 1/2 -1/2  1/2 |
//!                 | 0  1  0 -1 |       | 0    0    1   |
//!
//! F(4, 3):  B^T = | 4  0 -5  0  1  0 |   G = |  1/4     0     0   |
//!                 | 0 -4 -4  1  1  0 |       | -1/6  -1/6  -1/6  |
//!                 | 0  4 -4 -1  1  0 |       | -1/6   1/6  -1/6  |
//!                 | 0 -2 -1  2  1  0 |       |  1/24  1/12  1/6  |
//!                 | 0  2 -1 -2  1  0 |       |  1/24 -1/12  1/6  |
//!                 | 0  4  0 -5  0  1 |       |  0     0     1    |
//!
//!           A^T = | 1  1  1  1  1  0 |
//!                 | 0  1 -1  2 -2  0 |
//!                 | 0  1  1  4  4  0 |
//!                 | 0  1 -1  8 -8  1 |
//! ```
//!
//! Nested over depth, height and width, an `m^3` block of outputs takes `a^3` products per
//! channel pair instead of `27 m^3`: 64 instead of 216 for F(2, 3), 216 instead of 1,728 for
//! F(4, 3). The larger tile's transforms weigh inputs by up to 5 and outputs by up to 8 per
//! axis, so its rounding error is larger: about 1e-5 of the output's magnitude in f32 for 64
//! channels, against a few units in the last place for F(2, 3) (measured in the tests).
//!
//! The functions are generic over the points per axis `A` (4 or 6) and run over every channel
//! of a row at once, so that the compiler vectorises them.

/// The Winograd tile of a layer: F(2x2x2, 3x3x3) or F(4x4x4, 3x3x3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tile {
    /// 2 outputs from 4 points per axis: 64 products per 8 outputs.
    F2,
    /// 4 outputs from 6 points per axis: 216 products per 64 outputs.
    F4,
}

impl Tile {
    /// Points per axis: 4 or 6.
    pub(crate) const fn axis(self) -> usize {
        match self {
            Self::F2 => 4,
            Self::F4 => 6,
        }
    }

    /// Output voxels per tile and axis: 2 or 4.
    pub(crate) const fn step(self) -> usize {
        self.axis() - 2
    }

    /// Points of a transformed tile: 64 or 216.
    pub(crate) const fn points(self) -> usize {
        self.axis() * self.axis() * self.axis()
    }

    /// The extent `[d', h', w']` of the zero-padded input read for an output of `[od, oh, ow]`:
    /// every axis covers whole tiles, `step * ceil(o / step) + 2` voxels.
    pub(crate) fn padded_extent(self, out: [usize; 3]) -> [usize; 3] {
        let step = self.step();
        out.map(|o| o.div_ceil(step) * step + 2)
    }

    /// Tiles of an output of `out` voxels per batch item, over a batch of `n`.
    pub(crate) fn tiles(self, n: usize, out: [usize; 3]) -> usize {
        n * out.iter().map(|o| o.div_ceil(self.step())).product::<usize>()
    }
}

/// `B^T` of one point row: `A` inputs to `A` transformed values (the tests' reference; the
/// transforms below are the same formulas over rows).
#[cfg(test)]
fn b_point<const A: usize>(x: &[f32; A]) -> [f32; A] {
    let x = x.as_slice();
    let y: [f32; 6] = if A == 4 {
        [x[0] - x[2], x[1] + x[2], x[2] - x[1], x[1] - x[3], 0.0, 0.0]
    } else {
        [
            4.0 * x[0] - 5.0 * x[2] + x[4],
            -4.0 * x[1] - 4.0 * x[2] + x[3] + x[4],
            4.0 * x[1] - 4.0 * x[2] - x[3] + x[4],
            -2.0 * x[1] - x[2] + 2.0 * x[3] + x[4],
            2.0 * x[1] - x[2] - 2.0 * x[3] + x[4],
            4.0 * x[1] - 5.0 * x[3] + x[5],
        ]
    };
    let mut out = [0.0; A];
    out.copy_from_slice(&y[..A]);
    out
}

/// `A^T` of one point row: `A` products to `A - 2` outputs (the rest zero; the tests'
/// reference).
#[cfg(test)]
fn a_point<const A: usize>(m: &[f32; A]) -> [f32; 4] {
    let m = m.as_slice();
    if A == 4 {
        [m[0] + m[1] + m[2], m[1] - m[2] - m[3], 0.0, 0.0]
    } else {
        [
            m[0] + m[1] + m[2] + m[3] + m[4],
            m[1] - m[2] + 2.0 * m[3] - 2.0 * m[4],
            m[1] + m[2] + 4.0 * m[3] + 4.0 * m[4],
            m[1] - m[2] + 8.0 * m[3] - 8.0 * m[4] + m[5],
        ]
    }
}

/// `G` of one kernel row: 3 taps to `A` points.
#[inline(always)]
pub(super) fn g_point<const A: usize>([g0, g1, g2]: [f32; 3]) -> [f32; A] {
    let u: [f32; 6] = if A == 4 {
        [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2, 0.0, 0.0]
    } else {
        let (even, odd) = (g0 + g2, g1);
        let (quarter, sixth) = (g0 / 24.0 + g2 / 6.0, g1 / 12.0);
        [
            0.25 * g0,
            -(even + odd) / 6.0,
            -(even - odd) / 6.0,
            quarter + sixth,
            quarter - sixth,
            g2,
        ]
    };
    let mut out = [0.0; A];
    out.copy_from_slice(&u[..A]);
    out
}

/// `A` rows of a buffer: the buffer, the first row's offset and the rows' stride.
pub(super) type Rows<'a> = (&'a [f32], usize, usize);

/// `A` rows of a buffer to write: the buffer, the first row's offset and the rows' stride (at
/// least the rows' length, so that they are disjoint).
pub(super) type RowsMut<'a> = (&'a mut [f32], usize, usize);

/// Four rows of `n` values.
#[inline(always)]
fn four((src, at, stride): Rows<'_>, n: usize) -> [&[f32]; 4] {
    [
        &src[at..][..n],
        &src[at + stride..][..n],
        &src[at + 2 * stride..][..n],
        &src[at + 3 * stride..][..n],
    ]
}

/// Six rows of `n` values.
#[inline(always)]
fn six((src, at, stride): Rows<'_>, n: usize) -> [&[f32]; 6] {
    [
        &src[at..][..n],
        &src[at + stride..][..n],
        &src[at + 2 * stride..][..n],
        &src[at + 3 * stride..][..n],
        &src[at + 4 * stride..][..n],
        &src[at + 5 * stride..][..n],
    ]
}

/// `k` disjoint rows of `n` values to write (`k` is 2, 4 or 6; the others are empty).
#[inline(always)]
fn rows_mut<'a>((dst, at, stride): RowsMut<'a>, k: usize, n: usize) -> [&'a mut [f32]; 6] {
    let mut rest = &mut dst[at..at + (k - 1) * stride + n];
    let mut out: [&mut [f32]; 6] = Default::default();
    for (j, slot) in out.iter_mut().take(k).enumerate() {
        let (row, tail) = std::mem::take(&mut rest).split_at_mut(if j + 1 < k { stride } else { n });
        *slot = &mut row[..n];
        rest = tail;
    }
    out
}

// The row transforms take each row as its own reference argument: those carry `noalias`,
// which survives inlining, so the compiler vectorises the loops without checking at run time
// that the rows (slices of one buffer) do not overlap; it gives up on that check for more than
// a few rows, and did for six.

/// `B^T` of F(2, 3) over rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn b4(s0: &[f32], s1: &[f32], s2: &[f32], s3: &[f32], d0: &mut [f32], d1: &mut [f32], d2: &mut [f32], d3: &mut [f32]) {
    let n = d0.len();
    let (s0, s1, s2, s3) = (&s0[..n], &s1[..n], &s2[..n], &s3[..n]);
    let (d1, d2, d3) = (&mut d1[..n], &mut d2[..n], &mut d3[..n]);
    for i in 0..n {
        let (a, b, c, d) = (s0[i], s1[i], s2[i], s3[i]);
        d0[i] = a - c;
        d1[i] = b + c;
        d2[i] = c - b;
        d3[i] = b - d;
    }
}

/// `B^T` of F(4, 3) over rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn b6(
    [s0, s1, s2, s3, s4, s5]: [&[f32]; 6],
    d0: &mut [f32],
    d1: &mut [f32],
    d2: &mut [f32],
    d3: &mut [f32],
    d4: &mut [f32],
    d5: &mut [f32],
) {
    let n = d0.len();
    let (s0, s1, s2, s3, s4, s5) = (&s0[..n], &s1[..n], &s2[..n], &s3[..n], &s4[..n], &s5[..n]);
    let (d1, d2, d3, d4, d5) = (&mut d1[..n], &mut d2[..n], &mut d3[..n], &mut d4[..n], &mut d5[..n]);
    for i in 0..n {
        let (x0, x1, x2, x3, x4, x5) = (s0[i], s1[i], s2[i], s3[i], s4[i], s5[i]);
        let (s12, d12) = (x1 + x2, x1 - x2);
        let (d31, d42) = (x3 - x1, x4 - x2);
        d0[i] = 4.0 * x0 - 5.0 * x2 + x4;
        d1[i] = (x3 + x4) - 4.0 * s12;
        d2[i] = (x4 - x3) + 4.0 * d12;
        d3[i] = d42 + 2.0 * d31;
        d4[i] = d42 - 2.0 * d31;
        d5[i] = 4.0 * x1 - 5.0 * x3 + x5;
    }
}

/// `A^T` of F(2, 3) over rows.
#[inline(always)]
fn a4([s0, s1, s2, s3]: [&[f32]; 4], y0: &mut [f32], y1: &mut [f32]) {
    let n = y0.len();
    let (s0, s1, s2, s3, y1) = (&s0[..n], &s1[..n], &s2[..n], &s3[..n], &mut y1[..n]);
    for i in 0..n {
        let (a, b, c, d) = (s0[i], s1[i], s2[i], s3[i]);
        y0[i] = a + b + c;
        y1[i] = b - c - d;
    }
}

/// `A^T` of F(4, 3) over rows.
#[inline(always)]
fn a6([s0, s1, s2, s3, s4, s5]: [&[f32]; 6], y0: &mut [f32], y1: &mut [f32], y2: &mut [f32], y3: &mut [f32]) {
    let n = y0.len();
    let (s0, s1, s2, s3, s4, s5) = (&s0[..n], &s1[..n], &s2[..n], &s3[..n], &s4[..n], &s5[..n]);
    let (y1, y2, y3) = (&mut y1[..n], &mut y2[..n], &mut y3[..n]);
    for i in 0..n {
        let (s12, d12) = (s1[i] + s2[i], s1[i] - s2[i]);
        let (s34, d34) = (s3[i] + s4[i], s3[i] - s4[i]);
        y0[i] = s0[i] + s12 + s34;
        y1[i] = d12 + 2.0 * d34;
        y2[i] = s12 + 4.0 * s34;
        y3[i] = d12 + 8.0 * d34 + s5[i];
    }
}

/// `B^T` along one axis over every channel: the `A` rows of `n` values of `dst` from those of
/// `src`.
#[inline(always)]
pub(super) fn b_transpose<const A: usize>(src: Rows<'_>, dst: RowsMut<'_>, n: usize) {
    let [d0, d1, d2, d3, d4, d5] = rows_mut(dst, A, n);
    if A == 4 {
        let [s0, s1, s2, s3] = four(src, n);
        b4(s0, s1, s2, s3, d0, d1, d2, d3);
    } else {
        b6(six(src, n), d0, d1, d2, d3, d4, d5);
    }
}

/// `A^T` along one axis over every channel: the `A - 2` output rows of `n` values each,
/// consecutive in `dst`, from the `A` rows of `src`.
#[inline(always)]
pub(super) fn a_transpose<const A: usize>(src: Rows<'_>, dst: &mut [f32], n: usize) {
    let [y0, y1, y2, y3, ..] = rows_mut((dst, 0, n), A - 2, n);
    if A == 4 {
        a4(four(src, n), y0, y1);
    } else {
        a6(six(src, n), y0, y1, y2, y3);
    }
}

/// `A` of F(2, 3) along one axis over every channel: the output gradient's two rows `y0`,
/// `y1` (`n` values each) to the four points `y0, y0 + y1, y0 - y1, -y1` (the rows of `dst`):
/// the output transform taken back, for the weight gradient.
#[inline(always)]
pub(super) fn a_expand(y0: &[f32], y1: &[f32], dst: RowsMut<'_>, n: usize) {
    let [d0, d1, d2, d3, ..] = rows_mut(dst, 4, n);
    let (y0, y1, d1, d2, d3) = (&y0[..n], &y1[..n], &mut d1[..n], &mut d2[..n], &mut d3[..n]);
    for i in 0..n {
        let (a, b) = (y0[i], y1[i]);
        d0[i] = a;
        d1[i] = a + b;
        d2[i] = a - b;
        d3[i] = -b;
    }
}

/// `A` rows of `n` values each from `src`'s rows (the tests' way of applying a point
/// transform).
#[cfg(test)]
fn gather<const A: usize>(src: Rows<'_>, i: usize) -> [f32; A] {
    let (buf, at, stride) = src;
    let mut x = [0.0; A];
    for (k, v) in x.iter_mut().enumerate() {
        *v = buf[at + k * stride + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One axis: `A^T [(G g) . (B^T d)]` is the correlation of `d` with `g`, for both tiles.
    fn one_axis<const A: usize>() {
        let d: [f32; A] = std::array::from_fn(|k| (k as f32 * 0.37 + 0.1).sin());
        let g = [0.3, -1.2, 0.7];
        let v = b_point::<A>(&d);
        let u = g_point::<A>(g);
        let y = a_point::<A>(&std::array::from_fn(|k| u[k] * v[k]));
        for i in 0..A - 2 {
            let want = d[i] * g[0] + d[i + 1] * g[1] + d[i + 2] * g[2];
            assert!((y[i] - want).abs() < 1e-5, "A = {A}, output {i}: {} vs {want}", y[i]);
        }
    }

    #[test]
    fn each_tile_computes_the_correlation_along_one_axis() {
        one_axis::<4>();
        one_axis::<6>();
    }

    /// The row transforms compute the point formulas on every channel.
    fn rows_follow_the_points<const A: usize>() {
        let n = 19;
        let src: Vec<f32> = (0..A * 24).map(|k| (k as f32 * 0.71).cos()).collect();
        let mut dst = vec![f32::NAN; A * 20];
        b_transpose::<A>((&src, 3, 24), (&mut dst, 0, 20), n);
        let mut out = vec![f32::NAN; (A - 2) * n];
        a_transpose::<A>((&src, 3, 24), &mut out, n);
        for i in 0..n {
            let x = gather::<A>((&src, 3, 24), i);
            let (got, want) = (gather::<A>((&dst, 0, 20), i), b_point::<A>(&x));
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-5, "B^T, channel {i}: {got:?} vs {want:?}");
            }
            let y = a_point::<A>(&x);
            for (k, v) in y[..A - 2].iter().enumerate() {
                assert!((out[k * n + i] - v).abs() <= 1e-5, "A^T, channel {i}");
            }
        }
    }

    #[test]
    fn the_row_transforms_follow_the_point_formulas() {
        rows_follow_the_points::<4>();
        rows_follow_the_points::<6>();
    }

    #[test]
    fn tile_extents() {
        assert_eq!(Tile::F2.padded_extent([3, 4, 5]), [6, 6, 8]);
        assert_eq!(Tile::F4.padded_extent([3, 4, 5]), [6, 6, 10]);
        assert_eq!(Tile::F4.tiles(2, [3, 4, 5]), 4);
        assert_eq!([Tile::F2.points(), Tile::F4.points()], [64, 216]);
    }
}
