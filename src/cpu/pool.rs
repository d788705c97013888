//! 3-D max pooling on channels-last `[N, D, H, W, C]` `f32` data, forward and gradient: what
//! [`MaxPool3d`](crate::MaxPool3d) runs on `flex`, so that the stem's output stays
//! channels-last into `layer1`.
//!
//! Each output value is the maximum over the in-bounds voxels of its window (padding takes no
//! part), NaN propagating. The forward pass takes it one axis at a time, as the frozen
//! network does (`frozen::max_pool_along`); the gradient goes to the voxel that gave the
//! maximum, found by scanning the window depth, height, width, where, as in PyTorch, a later
//! value replaces the maximum when it is larger or NaN.

use rayon::prelude::*;

use super::conv::zeros;

/// Everything that fixes a max pool's arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolShape {
    pub batch: usize,
    pub channels: usize,
    /// Input extents `[d, h, w]`.
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    /// Output extents `[d', h', w']`.
    pub output: [usize; 3],
}

impl PoolShape {
    /// The shape, with its output extents; `None` if an extent, window or stride is 0, or the
    /// padded input is smaller than the window, or a size overflows.
    pub(crate) fn new(
        [batch, channels, d, h, w]: [usize; 5],
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Option<Self> {
        if batch == 0 || channels == 0 || kernel.contains(&0) {
            return None;
        }
        let input = [d, h, w];
        let mut output = [0; 3];
        for a in 0..3 {
            output[a] = crate::conv::output_extent(input[a], kernel[a], stride[a], padding[a])?;
        }
        let count = |e: [usize; 3]| e.iter().try_fold(batch * channels, |acc, &v| acc.checked_mul(v));
        count(input)?;
        count(output)?;
        Some(Self {
            batch,
            channels,
            input,
            kernel,
            stride,
            padding,
            output,
        })
    }

    pub(crate) fn input_len(&self) -> usize {
        self.batch * self.channels * self.input.iter().product::<usize>()
    }

    pub(crate) fn output_len(&self) -> usize {
        self.batch * self.channels * self.output.iter().product::<usize>()
    }

    /// The in-bounds input positions along axis `a` of the window of output position `o`.
    fn window(&self, a: usize, o: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride[a]) as isize - self.padding[a] as isize;
        let end = (start + self.kernel[a] as isize).min(self.input[a] as isize);
        start.max(0) as usize..end.max(0) as usize
    }

    /// For output voxel `(oz, oy, ox)` of a batch item `x` (channels-last), each channel's
    /// maximum and the input voxel it came from, written into `best` and `at`.
    fn scan(&self, x: &[f32], [oz, oy, ox]: [usize; 3], best: &mut [f32], at: &mut [u32]) {
        let c = self.channels;
        let [_, h, w] = self.input;
        best.fill(f32::NEG_INFINITY);
        let mut first = true;
        for z in self.window(0, oz) {
            for y in self.window(1, oy) {
                for xx in self.window(2, ox) {
                    let voxel = (z * h + y) * w + xx;
                    let row = &x[voxel * c..][..c];
                    if first {
                        // PyTorch's starting index: the window's first in-bounds voxel.
                        at.fill(voxel as u32);
                        first = false;
                    }
                    for ((b, a), &v) in best.iter_mut().zip(at.iter_mut()).zip(row) {
                        if v > *b || v.is_nan() {
                            *b = v;
                            *a = voxel as u32;
                        }
                    }
                }
            }
        }
    }
}

/// The max pool of `x` (channels-last), channels-last: one axis at a time (width, height,
/// depth; the maximum over a box is the maximum of the maxima over its rows), as
/// [`FrozenResNet3d`](crate::FrozenResNet3d) pools: nine comparisons per output value for a
/// 3x3x3 window instead of 27. The caller checks `x.len() == p.input_len()` (asserted).
pub(crate) fn forward(x: &[f32], p: &PoolShape) -> Vec<f32> {
    assert!(x.len() == p.input_len(), "max pool: length does not fit {p:?}");
    let [d, h, w] = p.input;
    let mut dims = [p.batch, d, h, w, p.channels];
    let mut y = std::borrow::Cow::Borrowed(x);
    for axis in [3, 2, 1] {
        let a = axis - 1;
        let window = (p.kernel[a], p.stride[a], p.padding[a]);
        if window.0 == 1 && window.1 == 1 && window.2 == 0 {
            continue;
        }
        let mut out = zeros(
            dims.iter()
                .enumerate()
                .map(|(i, &e)| if i == axis { p.output[a] } else { e })
                .product(),
        );
        super::frozen::max_pool_along(&y, dims, axis, window, &mut out);
        dims[axis] = p.output[a];
        y = std::borrow::Cow::Owned(out);
    }
    y.into_owned()
}

/// The gradient of [`forward`]'s input for the output gradient `dy` (channels-last): each
/// output value's gradient added to the voxel that gave its maximum.
pub(crate) fn backward(x: &[f32], dy: &[f32], p: &PoolShape) -> Vec<f32> {
    assert!(
        x.len() == p.input_len() && dy.len() == p.output_len(),
        "max pool: lengths do not fit {p:?}"
    );
    let c = p.channels;
    let [od, oh, ow] = p.output;
    let in_item = p.input.iter().product::<usize>() * c;
    let out_item = od * oh * ow * c;
    let mut dx = zeros(x.len());
    // Windows overlap: work is split by batch item only, so that no two work items add to
    // one input voxel.
    dx.par_chunks_mut(in_item).enumerate().for_each(|(b, dxb)| {
        let xb = &x[b * in_item..][..in_item];
        let dyb = &dy[b * out_item..][..out_item];
        let (mut best, mut at) = (vec![0.0f32; c], vec![0u32; c]);
        for (v, grads) in dyb.chunks_exact(c).enumerate() {
            let o = [v / (oh * ow), (v / ow) % oh, v % ow];
            p.scan(xb, o, &mut best, &mut at);
            for ((ch, &g), &voxel) in grads.iter().enumerate().zip(&at) {
                dxb[voxel as usize * c + ch] += g;
            }
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward and gradient against the definition on a channels-first copy, with windows
    /// that overlap, leave the volume and tile it.
    #[test]
    fn matches_the_definition() {
        for (dims, kernel, stride, padding) in [
            ([2, 3, 7, 9, 8], [3, 3, 3], [2, 2, 2], [1, 1, 1]),
            ([1, 2, 5, 6, 7], [1, 3, 3], [1, 2, 2], [0, 1, 1]),
            ([1, 4, 8, 8, 8], [5, 2, 3], [3, 2, 1], [2, 1, 0]),
            ([1, 2, 4, 4, 4], [2, 2, 2], [2, 2, 2], [0, 0, 0]),
        ] {
            let p = PoolShape::new(dims, kernel, stride, padding).unwrap();
            let [n, c, d, h, w] = dims;
            let x: Vec<f32> = (0..p.input_len())
                .map(|i| ((i * 7919) % 1013) as f32 / 100.0 - 12.0)
                .collect();
            let dy: Vec<f32> = (0..p.output_len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let (y, dx) = (forward(&x, &p), backward(&x, &dy, &p));
            let [od, oh, ow] = p.output;
            let mut want_dx = vec![0.0f32; x.len()];
            for b in 0..n {
                for ch in 0..c {
                    for (oz, oy, ox) in (0..od).flat_map(|z| (0..oh).flat_map(move |y| (0..ow).map(move |x| (z, y, x))))
                    {
                        let (mut m, mut arg) = (f32::NEG_INFINITY, usize::MAX);
                        for z in p.window(0, oz) {
                            for y in p.window(1, oy) {
                                for xx in p.window(2, ox) {
                                    let i = (((b * d + z) * h + y) * w + xx) * c + ch;
                                    if x[i] > m {
                                        (m, arg) = (x[i], i);
                                    }
                                }
                            }
                        }
                        let o = (((b * od + oz) * oh + oy) * ow + ox) * c + ch;
                        assert_eq!(y[o], m, "{dims:?} {kernel:?}");
                        want_dx[arg] += dy[o];
                    }
                }
            }
            assert_eq!(dx, want_dx, "{dims:?} {kernel:?}");
        }
    }

    #[test]
    fn nan_propagates() {
        let p = PoolShape::new([1, 2, 2, 2, 2], [2, 2, 2], [2, 2, 2], [0, 0, 0]).unwrap();
        let mut x = vec![1.0f32; 16];
        x[6] = f32::NAN; // voxel 3, channel 0
        let y = forward(&x, &p);
        assert!(y[0].is_nan() && y[1] == 1.0);
    }

    /// An empty axis padded up to the window (PyTorch allows padding up to half the window):
    /// windows of padding only, no value: minus infinity, as the scan gave, not a panic.
    #[test]
    fn windows_of_padding_only_give_minus_infinity() {
        let p = PoolShape::new([1, 2, 0, 3, 3], [2, 2, 2], [2, 2, 2], [1, 1, 1]).unwrap();
        assert_eq!(p.output, [1, 2, 2]);
        let y = forward(&[], &p);
        assert_eq!(y.len(), p.output_len());
        assert!(y.iter().all(|v| *v == f32::NEG_INFINITY));
    }
}
