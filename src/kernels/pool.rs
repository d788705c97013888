//! 3-D max pooling on channels-last `[N, D, H, W, C]` `f32` data, forward and gradient: what
//! the frozen network and [`MaxPool3d`](crate::MaxPool3d) on `flex` run, so that the stem's
//! output stays channels-last into `layer1`.
//!
//! Each output value is the maximum over the in-bounds voxels of its window (padding takes no
//! part), NaN propagating. The forward pass (the frozen network's and the `flex` operation's)
//! takes each output row in one pass over its window's input rows ([`forward`]); the gradient
//! goes to the voxel that gave the maximum, found by scanning the window depth, height, width,
//! where, as in PyTorch, a later value replaces the maximum when it is larger or NaN.

use std::borrow::Cow;

use rayon::prelude::*;

use super::buffers::Buffers;
#[cfg(feature = "flex")]
use super::buffers::zeros;
use crate::arch::geometry::PoolShape;

impl PoolShape {
    /// The in-bounds input positions along axis `a` of the window of output position `o`.
    fn window(&self, a: usize, o: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride[a]) as isize - self.padding[a] as isize;
        let end = (start + self.kernel[a] as isize).min(self.input[a] as isize);
        start.max(0) as usize..end.max(0) as usize
    }
}

// The gradient (the `flex` operation's) only.
#[cfg(feature = "flex")]
impl PoolShape {
    /// For output voxel `(oz, oy, ox)` of a batch item `x` (channels-last), each channel's
    /// maximum and the input voxel it came from, written into `best` and `at`.
    #[inline(always)]
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

/// Where [`forward`] takes its buffers from and gives them back to.
pub(crate) trait Memory {
    /// `len` values, whatever they hold (all of them are written); `None` if they cannot be
    /// allocated.
    fn take(&self, len: usize) -> Option<Vec<f32>>;
    /// A buffer no longer needed.
    fn give(&self, buffer: Vec<f32>);
}

impl Memory for Buffers {
    fn take(&self, len: usize) -> Option<Vec<f32>> {
        Buffers::take(self, len)
    }

    fn give(&self, buffer: Vec<f32>) {
        Buffers::give(self, buffer);
    }
}

/// Fresh buffers zeroed on the threads, freed when given back: the `flex` operation's.
#[cfg(feature = "flex")]
pub(crate) struct Fresh;

#[cfg(feature = "flex")]
impl Memory for Fresh {
    fn take(&self, len: usize) -> Option<Vec<f32>> {
        super::buffers::try_zeros_written(len)
    }

    fn give(&self, _buffer: Vec<f32>) {}
}

/// The max pool of `x` (channels-last, `s`'s input), channels-last, in one pass: each output
/// row is the maximum over the input rows of its window's depth and height, read in place.
/// The output buffer comes from `memory`, and `x` goes back to it if owned. `None` if the
/// output cannot be allocated. The caller checks `x.len() == s.input_len()` (asserted).
///
/// One pass instead of one per axis: on a whole scan (the stem's 629 MB output of a
/// 1x1x192x320x320 input) the passes per axis wrote and read back 550 MB of intermediates in
/// fresh pages, 220-450 ms of a ResNet3d-50 forward.
pub(crate) fn forward(x: Cow<'_, [f32]>, s: &PoolShape, memory: &impl Memory) -> Option<Vec<f32>> {
    assert!(x.len() == s.input_len(), "max pool: length does not fit {s:?}");
    // Every value is overwritten.
    let mut out = memory.take(s.output_len())?;
    pool_into(&x, s, &mut out);
    if let Cow::Owned(done) = x {
        memory.give(done);
    }
    Some(out)
}

/// [`forward`] into `out` (`s.output_len()` values, every one written): per output row (in
/// parallel: rows rather than planes, so that a shallow output, one plane deep, still runs on
/// every thread), the maximum over the window's input rows, NaN propagating; windows of padding
/// only give minus infinity.
fn pool_into(x: &[f32], s: &PoolShape, out: &mut [f32]) {
    let c = s.channels;
    let [d, h, w] = s.input;
    let [od, oh, ow] = s.output;
    let row_len = ow * c;
    if out.is_empty() {
        return;
    }
    out.par_chunks_mut(row_len).enumerate().for_each(|(index, row)| {
        let (oy, plane) = (index % oh, index / oh);
        let (b, oz) = (plane / od, plane % od);
        // Compiled for the widest vectors here: a voxel's channels run 8 or 16 wide.
        super::matmul::wide(
            #[inline(always)]
            || {
                row.fill(f32::NEG_INFINITY);
                for z in s.window(0, oz) {
                    for y in s.window(1, oy) {
                        // In bounds: b < n, z < d, y < h (`window`), and `x` holds
                        // n * d * h * w * c values (asserted by the caller).
                        let line = &x[((b * d + z) * h + y) * w * c..][..w * c];
                        for (ox, voxel) in row.chunks_exact_mut(c).enumerate() {
                            for xx in s.window(2, ox) {
                                let src = &line[xx * c..][..c];
                                voxel
                                    .iter_mut()
                                    .zip(src)
                                    .for_each(|(m, v)| *m = max_keeping_nan(*m, *v));
                            }
                        }
                    }
                }
            },
        );
    });
}

/// The gradient of [`forward`]'s input for the output gradient `dy` (channels-last): each
/// output value's gradient added to the voxel that gave its maximum.
#[cfg(feature = "flex")]
pub(crate) fn backward(x: &[f32], dy: &[f32], p: &PoolShape) -> Vec<f32> {
    assert!(
        x.len() == p.input_len() && dy.len() == p.output_len(),
        "max pool: lengths do not fit {p:?}"
    );
    if x.is_empty() {
        // An empty input (an empty axis padded up to the window): nothing to add a gradient to.
        return Vec::new();
    }
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
        // Compiled for the widest vectors here: the window's scan runs 8 or 16 channels wide.
        super::matmul::wide(
            #[inline(always)]
            || backward_item(p, xb, dyb, dxb),
        );
    });
    dx
}

/// [`backward`] for one batch item: each output voxel's gradient added to the input voxel of
/// its window's maximum, per channel.
#[inline(always)]
fn backward_item(p: &PoolShape, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let c = p.channels;
    let [_, oh, ow] = p.output;
    let (mut best, mut at) = (vec![0.0f32; c], vec![0u32; c]);
    for (v, grads) in dy.chunks_exact(c).enumerate() {
        let o = [v / (oh * ow), (v / ow) % oh, v % ow];
        p.scan(x, o, &mut best, &mut at);
        for ((ch, &g), &voxel) in grads.iter().enumerate().zip(&at) {
            dx[voxel as usize * c + ch] += g;
        }
    }
}

/// `max(m, x)` that propagates NaN from either side, as PyTorch's max pool does.
#[inline]
fn max_keeping_nan(m: f32, x: f32) -> f32 {
    if x > m || x.is_nan() { x } else { m }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::geometry::PoolGeometry;

    fn shape(dims: [usize; 5], kernel: [usize; 3], stride: [usize; 3], padding: [usize; 3]) -> PoolShape {
        PoolGeometry {
            kernel,
            stride,
            padding,
        }
        .on(dims, "test")
        .unwrap()
    }

    fn run(x: &[f32], p: &PoolShape) -> Vec<f32> {
        forward(Cow::Borrowed(x), p, &Fresh).unwrap()
    }

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
            let p = shape(dims, kernel, stride, padding);
            let [n, c, d, h, w] = dims;
            let x: Vec<f32> = (0..p.input_len())
                .map(|i| ((i * 7919) % 1013) as f32 / 100.0 - 12.0)
                .collect();
            let dy: Vec<f32> = (0..p.output_len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let (y, dx) = (run(&x, &p), backward(&x, &dy, &p));
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

    /// The forward pass bit for bit against the definition (the window scanned depth, height,
    /// width, a value replacing the maximum when larger or NaN; minus infinity for a window of
    /// padding only), on random geometries with NaN payloads of both signs, infinities and
    /// signed zeros, into buffers that held NaN.
    #[test]
    fn random_geometries_match_the_definition_bit_for_bit() {
        struct Dirty;
        impl Memory for Dirty {
            fn take(&self, len: usize) -> Option<Vec<f32>> {
                Some(vec![f32::from_bits(0x7fc0_dead); len])
            }
            fn give(&self, _buffer: Vec<f32>) {}
        }
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m) as usize
        };
        let mut checked = 0;
        for _ in 0..600 {
            let kernel = [1 + rnd(4), 1 + rnd(4), 1 + rnd(4)];
            let stride = [1 + rnd(3), 1 + rnd(3), 1 + rnd(3)];
            let padding = [0, 1, 2].map(|a| rnd(kernel[a] as u64 / 2 + 1));
            let dims = [1 + rnd(2), 1 + rnd(20), rnd(6), 1 + rnd(6), 1 + rnd(8)];
            let Ok(p) = (PoolGeometry {
                kernel,
                stride,
                padding,
            })
            .on(dims, "test") else {
                continue;
            };
            let x: Vec<f32> = (0..p.input_len())
                .map(|i| match rnd(16) {
                    0 => f32::from_bits(0x7fc0_0000 | (i as u32 & 0x3f_ffff)),
                    1 => f32::from_bits(0xffc0_0000 | (i as u32 & 0x3f_ffff)),
                    2 => f32::INFINITY,
                    3 => f32::NEG_INFINITY,
                    4 => -0.0,
                    5 => 0.0,
                    _ => rnd(9) as f32 - 4.0,
                })
                .collect();
            let y = forward(Cow::Borrowed(&x), &p, &Dirty).unwrap();
            let [n, c, d, h, w] = dims;
            let [od, oh, ow] = p.output;
            assert_eq!(y.len(), n * od * oh * ow * c);
            for (o, got) in y.iter().enumerate() {
                let ch = o % c;
                let v = o / c;
                let (ox, oy, oz, b) = (v % ow, (v / ow) % oh, (v / (ow * oh)) % od, v / (ow * oh * od));
                let mut m = f32::NEG_INFINITY;
                for z in p.window(0, oz) {
                    for yy in p.window(1, oy) {
                        for xx in p.window(2, ox) {
                            let value = x[(((b * d + z) * h + yy) * w + xx) * c + ch];
                            if value > m || value.is_nan() {
                                m = value;
                            }
                        }
                    }
                }
                assert_eq!(
                    got.to_bits(),
                    m.to_bits(),
                    "{dims:?} {kernel:?} {stride:?} {padding:?} at {o}"
                );
            }
            checked += 1;
        }
        assert!(checked > 200, "only {checked} geometries were valid");
    }

    #[test]
    fn nan_propagates() {
        let p = shape([1, 2, 2, 2, 2], [2, 2, 2], [2, 2, 2], [0, 0, 0]);
        let mut x = vec![1.0f32; 16];
        x[6] = f32::NAN; // voxel 3, channel 0
        let y = run(&x, &p);
        assert!(y[0].is_nan() && y[1] == 1.0);
    }

    /// An empty axis padded up to the window (PyTorch allows padding up to half the window):
    /// windows of padding only, no value: minus infinity, as the scan gave, not a panic.
    #[test]
    fn windows_of_padding_only_give_minus_infinity() {
        let p = shape([1, 2, 0, 3, 3], [2, 2, 2], [2, 2, 2], [1, 1, 1]);
        assert_eq!(p.output, [1, 2, 2]);
        let y = run(&[], &p);
        assert_eq!(y.len(), p.output_len());
        assert!(y.iter().all(|v| *v == f32::NEG_INFINITY));
        // The gradient of an empty input is empty (it used to panic on chunks of 0 values).
        assert!(backward(&[], &vec![1.0; p.output_len()], &p).is_empty());
    }
}
