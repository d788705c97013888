//! [`MaxPool3d`], which Burn lacks: on `flex` the crate's channels-last pool (the kernels'
//! `pool`), elsewhere an exact 3-D max pool from two 2-D passes of Burn's.
//!
//! The maximum over a box is the maximum over depth of the maxima over each slice's
//! rectangle, so a 3-D max pool is an in-plane `max_pool2d` followed by one along depth.
//! Padding takes part in neither maximum, exactly as in PyTorch's `MaxPool3d`.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;

use crate::arch::geometry::PoolGeometry;
use crate::error::Result;
use crate::model::conv::or_panic;

/// 3-D max pooling with its own kernel, stride and padding per axis (depth, height, width).
#[derive(Module, Debug)]
pub struct MaxPool3d {
    /// Window per axis.
    pub kernel_size: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Padding per axis, the same on both sides; at most half the window, as in PyTorch.
    pub padding: [usize; 3],
}

impl MaxPool3d {
    /// A max pool; `None` if a window or stride is 0 or a padding exceeds half its window
    /// ([`PoolGeometry::check`]).
    pub fn new(kernel_size: [usize; 3], stride: [usize; 3], padding: [usize; 3]) -> Option<Self> {
        let pool = Self {
            kernel_size,
            stride,
            padding,
        };
        pool.geometry().check("maxpool").is_ok().then_some(pool)
    }

    /// The pool's geometry.
    pub fn geometry(&self) -> PoolGeometry {
        PoolGeometry {
            kernel: self.kernel_size,
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// Output size along one axis of length `size`: `(size + 2 * padding - kernel) / stride + 1`;
    /// `None` where the padded axis is shorter than the window (PyTorch refuses such an input).
    pub fn output_size(&self, axis: usize, size: usize) -> Option<usize> {
        crate::arch::geometry::output_extent(size, self.kernel_size[axis], self.stride[axis], self.padding[axis])
    }

    /// Applies the pool.
    ///
    /// # Shapes
    /// - input: `[batch, channels, depth, height, width]`
    /// - output: `[batch, channels, depth', height', width']` with each axis
    ///   `(size + 2 * padding - kernel) / stride + 1`
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error, with its message.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        or_panic(self.try_forward(x))
    }

    /// [`forward`](Self::forward), or an error for a pool or an input that does not compute
    /// ([`PoolGeometry::output_dims`]).
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`](crate::Error::InvalidNetwork) for a window, stride or padding
    /// that PyTorch refuses; [`Error::InvalidInput`](crate::Error::InvalidInput) for an axis
    /// shorter than the window once padded.
    pub fn try_forward(&self, x: Tensor<5>) -> Result<Tensor<5>> {
        pool(&self.geometry(), x)
    }
}

/// `x` max-pooled by `geometry`, after its check.
pub(crate) fn pool(geometry: &PoolGeometry, x: Tensor<5>) -> Result<Tensor<5>> {
    let shape = geometry.on(x.dims(), "maxpool")?;
    crate::model::conv::output_fits(shape.output_len(), x.dims(), &"maxpool")?;
    // On flex, the crate's channels-last pool (with its gradient).
    #[cfg(feature = "flex")]
    if crate::ops::pool::runs_pool(&x) {
        return Ok(crate::ops::pool::max_pool3d(x, shape));
    }
    let [n, c, ..] = x.dims();
    if shape.output_len() == 0 || x.dims().contains(&0) {
        // An empty batch or channel axis, or an empty axis padded to the window (windows of
        // padding only: minus infinity, as the crate's kernels give).
        let empty = x.dims().contains(&0) && n * c > 0;
        let fill = if empty { f32::NEG_INFINITY } else { 0.0 };
        return Ok(Tensor::full(shape.output_dims(), fill, &x.device()));
    }
    // Burn's max pool skips NaN; PyTorch's (and the crate's kernels) propagate it: the windows
    // that hold a NaN are found by pooling the NaN mask the same way.
    let nan = x.clone().is_nan().float();
    let pooled = separable(x, shape.kernel, shape.stride, shape.padding);
    let nan = separable(nan, shape.kernel, shape.stride, shape.padding).greater_elem(0.0);
    Ok(pooled.mask_fill(nan, f32::NAN))
}

/// The max pool of `x` (`[n, c, d, h, w]`, every axis covering its padded window) as an
/// in-plane `max_pool2d` followed by one along depth.
fn separable(x: Tensor<5>, [kd, kh, kw]: [usize; 3], [sd, sh, sw]: [usize; 3], [pd, ph, pw]: [usize; 3]) -> Tensor<5> {
    let [n, c, d, h, w] = x.dims();
    // In-plane pass: depth rides along as the channel axis.
    let x = max_pool2d(
        x.reshape([n * c, d, h, w]),
        MaxPoolOptions::new([kh, kw])
            .with_stride([sh, sw])
            .with_padding([ph, pw]),
    );
    let [_, _, h2, w2] = x.dims();
    if kd == 1 && sd == 1 {
        return x.reshape([n, c, d, h2, w2]);
    }
    // Depth pass: each (height, width) position is a column of a 1-channel image.
    let x = max_pool2d(
        x.reshape([n * c, 1, d, h2 * w2]),
        MaxPoolOptions::new([kd, 1]).with_stride([sd, 1]).with_padding([pd, 0]),
    );
    let [_, _, d2, _] = x.dims();
    x.reshape([n, c, d2, h2, w2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// The definition: the maximum over every in-bounds voxel of each window.
    fn brute_force(x: &[f32], dims: [usize; 5], pool: &MaxPool3d) -> (Vec<f32>, [usize; 5]) {
        let [n, c, d, h, w] = dims;
        let out = [
            n,
            c,
            pool.output_size(0, d).unwrap(),
            pool.output_size(1, h).unwrap(),
            pool.output_size(2, w).unwrap(),
        ];
        let mut y = Vec::new();
        for b in 0..n * c {
            for od in 0..out[2] {
                for oh in 0..out[3] {
                    for ow in 0..out[4] {
                        let mut m = f32::NEG_INFINITY;
                        for kd in 0..pool.kernel_size[0] {
                            for kh in 0..pool.kernel_size[1] {
                                for kw in 0..pool.kernel_size[2] {
                                    let z = (od * pool.stride[0] + kd) as isize - pool.padding[0] as isize;
                                    let r = (oh * pool.stride[1] + kh) as isize - pool.padding[1] as isize;
                                    let s = (ow * pool.stride[2] + kw) as isize - pool.padding[2] as isize;
                                    if (0..d as isize).contains(&z)
                                        && (0..h as isize).contains(&r)
                                        && (0..w as isize).contains(&s)
                                    {
                                        let i = ((b * d + z as usize) * h + r as usize) * w + s as usize;
                                        m = m.max(x[i]);
                                    }
                                }
                            }
                        }
                        y.push(m);
                    }
                }
            }
        }
        (y, out)
    }

    fn check(dims: [usize; 5], kernel: [usize; 3], stride: [usize; 3], padding: [usize; 3], device: &Device) {
        let len = dims.iter().product::<usize>();
        // Negative values everywhere near the borders: a pool that counted padding as 0 fails.
        let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1013) as f32 / 100.0 - 12.0).collect();
        let pool = MaxPool3d::new(kernel, stride, padding).unwrap();
        let (expected, shape) = brute_force(&x, dims, &pool);
        let y = pool.forward(Tensor::from_data(TensorData::new(x, dims), device));
        assert_eq!(
            y.dims(),
            shape,
            "kernel {kernel:?} stride {stride:?} padding {padding:?}"
        );
        let got = y.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got, expected, "kernel {kernel:?} stride {stride:?} padding {padding:?}");
    }

    fn check_many(device: &Device) {
        check([2, 3, 7, 9, 8], [3, 3, 3], [2, 2, 2], [1, 1, 1], device); // ResNet's pool
        check([1, 2, 5, 6, 7], [1, 3, 3], [1, 2, 2], [0, 1, 1], device); // 2.5-D
        check([1, 2, 9, 5, 6], [3, 1, 1], [2, 1, 1], [1, 0, 0], device); // depth only
        check([1, 1, 8, 8, 8], [5, 2, 3], [3, 2, 1], [2, 1, 0], device); // every axis its own
        check([1, 2, 4, 4, 4], [2, 2, 2], [2, 2, 2], [0, 0, 0], device); // tiling
        check([1, 1, 3, 4, 5], [3, 3, 3], [1, 1, 1], [1, 1, 1], device); // all-border
    }

    #[test]
    fn matches_brute_force_on_flex() {
        check_many(&Device::flex());
    }

    #[test]
    #[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
    fn matches_brute_force_on_ndarray() {
        check_many(&Device::ndarray());
    }

    /// NaN propagates on every backend, as in PyTorch (Burn's own max pool, which the ndarray
    /// and wgpu paths run, skips it: a NaN voxel gave the window's other maximum, an all-NaN
    /// window minus infinity).
    #[test]
    #[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
    fn nan_propagates_on_every_backend() {
        for device in [Device::flex(), Device::ndarray()] {
            let dims = [1, 2, 5, 5, 5];
            let mut x: Vec<f32> = (0..250).map(|i| i as f32).collect();
            x[31] = f32::NAN; // channel 0, voxel (1, 1, 1)
            x[125] = f32::NAN; // channel 1, voxel (0, 0, 0)
            // (1, 1, 1) lies in 2 windows per axis of the first pool (8 outputs), (0, 0, 0) in one.
            for (kernel, stride, padding, nans) in [([3; 3], [2; 3], [1; 3], 9), ([2; 3], [2; 3], [0; 3], 2)] {
                let pool = MaxPool3d::new(kernel, stride, padding).unwrap();
                let y = pool.forward(Tensor::from_data(TensorData::new(x.clone(), dims), &device));
                let got = y.into_data().try_to_vec::<f32>().unwrap();
                assert_eq!(got.iter().filter(|v| v.is_nan()).count(), nans, "{device:?} {kernel:?}");
            }
            // A window of NaN only is NaN, not minus infinity.
            let pool = MaxPool3d::new([1, 1, 1], [1, 1, 1], [0, 0, 0]).unwrap();
            let y = pool.forward(Tensor::from_data(
                TensorData::new(vec![f32::NAN], [1, 1, 1, 1, 1]),
                &device,
            ));
            assert!(y.into_data().try_to_vec::<f32>().unwrap()[0].is_nan(), "{device:?}");
        }
    }

    #[test]
    fn refuses_padding_beyond_half_the_window() {
        assert!(MaxPool3d::new([3, 3, 3], [1, 1, 1], [2, 1, 1]).is_none());
        assert!(MaxPool3d::new([3, 0, 3], [1, 1, 1], [0, 0, 0]).is_none());
    }
}
