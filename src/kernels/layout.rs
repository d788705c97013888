//! Layout changes between channels-first `[N, C, D, H, W]` and channels-last `[N, D, H, W, C]`
//! data, as blocked transposes.

use rayon::prelude::*;

use super::buffers::zeros;

/// `[n, c, d, h, w]` -> `[n, d, h, w, c]`: per batch item, a `[c, voxels]` transpose.
pub(crate) fn to_channels_last(x: &[f32], [n, c, d, h, w]: [usize; 5]) -> Vec<f32> {
    per_item(x, n, c, d * h * w)
}

/// `[n, d, h, w, c]` -> `[n, c, d, h, w]`: per batch item, a `[voxels, c]` transpose.
pub(crate) fn to_channels_first(x: &[f32], [n, d, h, w, c]: [usize; 5]) -> Vec<f32> {
    per_item(x, n, d * h * w, c)
}

/// Each of the `n` `[rows, cols]` matrices of `x` transposed.
fn per_item(x: &[f32], n: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = zeros(n * rows * cols);
    if rows * cols > 0 {
        for (src, dst) in x.chunks_exact(rows * cols).zip(out.chunks_exact_mut(rows * cols)) {
            transpose_into(src, rows, cols, dst);
        }
    }
    out
}

/// `m` (`rows x cols`, row-major) transposed, through a 32 x 32 block on the stack: both the
/// block's reads and its writes are runs of 32 contiguous values. (Writing the transpose
/// straight from the rows touches 32 lines a row apart, which for power-of-two row lengths all
/// fall into two L1 sets: 3-4 times slower.)
#[cfg(feature = "flex")]
pub(crate) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = zeros(rows * cols);
    transpose_into(m, rows, cols, &mut t);
    t
}

/// [`transpose`] into `t` (`rows * cols` values).
pub(crate) fn transpose_into(m: &[f32], rows: usize, cols: usize, t: &mut [f32]) {
    const B: usize = 32;
    if rows * cols == 0 {
        return;
    }
    t.par_chunks_mut(B * rows).enumerate().for_each(|(cb, out)| {
        // Output rows c0 .. c1 (input columns), every input row.
        let c0 = cb * B;
        let width = B.min(cols - c0);
        let mut block = [[0.0f32; B]; B];
        for r0 in (0..rows).step_by(B) {
            let height = B.min(rows - r0);
            for (i, line) in block.iter_mut().enumerate().take(height) {
                line[..width].copy_from_slice(&m[(r0 + i) * cols + c0..][..width]);
            }
            for (j, dst) in out.chunks_exact_mut(rows).enumerate().take(width) {
                for (i, v) in dst[r0..r0 + height].iter_mut().enumerate() {
                    *v = block[i][j];
                }
            }
        }
    });
}
