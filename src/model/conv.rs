//! [`Conv`]: the convolution every layer of the network uses, as a Burn module.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::module::conv3d;
use burn::tensor::ops::{ConvOptions, PadMode};

use crate::arch::geometry::{ConvGeometry, ConvShape};
use crate::arch::kinds::DepthPadding;
use crate::error::{Error, Result};

/// A bias-free 3-D convolution whose depth padding is zeros or copies of the edge slices.
///
/// Its shape is a [`ConvGeometry`] ([`geometry`](Self::geometry)): any convolution PyTorch's
/// `conv3d` takes (padding beyond the kernel's reach included) computes PyTorch's numbers on
/// every backend; anything else is an error naming what is wrong
/// ([`try_forward`](Self::try_forward)), checked before any kernel runs.
#[derive(Module, Debug)]
pub struct Conv {
    /// Kernel `[out_channels, in_channels, depth, height, width]`.
    pub weight: Param<Tensor<5>>,
    /// Stride per axis (depth, height, width).
    pub stride: [usize; 3],
    /// Padding per axis (depth, height, width), the same on both sides.
    pub padding: [usize; 3],
    /// What the depth padding is filled with.
    #[module(skip)]
    pub depth_padding: DepthPadding,
    /// Dilation per axis: the kernel's taps are `dilation` voxels apart (1: adjacent).
    #[module(skip)]
    pub dilation: [usize; 3],
}

impl ConvGeometry {
    /// A convolution of this geometry with the given kernel (of
    /// [`weight_shape`](Self::weight_shape)).
    pub fn build(&self, weight: Param<Tensor<5>>) -> Conv {
        Conv {
            weight,
            stride: self.stride,
            padding: self.padding,
            depth_padding: self.depth_padding,
            dilation: self.dilation,
        }
    }
}

impl Conv {
    /// The kernel's shape `[out, in, depth, height, width]`, read without initialising a
    /// parameter that Burn has not made yet (a fresh network's kernels are made on first use:
    /// the checks must not make them all at once).
    fn weight_shape(&self) -> [usize; 5] {
        self.weight.lazy_shape().dims::<5>()
    }

    /// Input channels (the kernel's second extent).
    pub fn in_channels(&self) -> usize {
        self.weight_shape()[1]
    }

    /// Output channels (the kernel's first extent).
    pub fn out_channels(&self) -> usize {
        self.weight_shape()[0]
    }

    /// Kernel extent per axis (depth, height, width).
    pub fn kernel(&self) -> [usize; 3] {
        let [_, _, d, h, w] = self.weight_shape();
        [d, h, w]
    }

    /// The convolution's geometry: its fields and its kernel's shape.
    pub fn geometry(&self) -> ConvGeometry {
        ConvGeometry {
            in_channels: self.in_channels(),
            out_channels: self.out_channels(),
            kernel: self.kernel(),
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            depth_padding: self.depth_padding,
        }
    }

    /// Applies the convolution.
    ///
    /// # Shapes
    /// - input: `[batch, in_channels, depth, height, width]`
    /// - output: `[batch, out_channels, depth', height', width']`, each axis
    ///   `(size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1`
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error, with its message.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        or_panic(self.try_forward(x))
    }

    /// [`forward`](Self::forward), or an error for a convolution or an input that does not
    /// compute: the geometry's check ([`ConvGeometry::output_dims`]).
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`](crate::Error::InvalidNetwork) for fields that do not make a
    /// convolution; [`Error::InvalidInput`](crate::Error::InvalidInput) for an input of other
    /// channels, an empty axis, or one smaller than the kernel once padded.
    pub fn try_forward(&self, x: Tensor<5>) -> Result<Tensor<5>> {
        let shape = self.checked(&x, &"conv")?;
        Ok(self.run(x, shape))
    }

    /// This convolution's geometry checked on `x` (`layer` names it in errors), `x` on the
    /// kernel's device and of its element type, and the output allocatable: what a Burn
    /// operation, which cannot return an error, needs to hold before it runs.
    pub(crate) fn checked(&self, x: &Tensor<5>, layer: &dyn std::fmt::Display) -> Result<ConvShape> {
        let shape = self.geometry().on(x.dims(), layer)?;
        let weight = self.weight.val();
        if x.device() != weight.device() || x.dtype() != weight.dtype() {
            return Err(Error::InvalidInput {
                dims: x.dims().to_vec(),
                what: format!(
                    "{layer}: the input is {:?} on {:?}, the kernel {:?} on {:?}; move the input to the network's device and type",
                    x.dtype(),
                    x.device(),
                    weight.dtype(),
                    weight.device()
                ),
            });
        }
        output_fits(shape.output_len(), x.dims(), layer)?;
        Ok(shape)
    }

    /// The convolution of `x`, `shape` being this convolution's checked geometry on `x`.
    pub(crate) fn run(&self, x: Tensor<5>, shape: ConvShape) -> Tensor<5> {
        let weight = self.weight.val();
        if shape.batch == 0 {
            return Tensor::zeros(shape.output_dims(), &x.device());
        }
        // On flex (with or without autodiff): the crate's own kernels, forward and backward.
        #[cfg(feature = "flex")]
        if crate::ops::conv::runs(&x, &weight, None) {
            return crate::ops::conv::conv3d(x, weight, None, shape);
        }
        let [pd, ph, pw] = self.padding;
        let (x, pd) = match self.depth_padding {
            DepthPadding::Replicate if pd > 0 => (x.pad([(pd, pd), (0, 0), (0, 0)], PadMode::Edge), 0),
            _ => (x, pd),
        };
        conv3d(
            x,
            weight,
            None,
            ConvOptions::new(self.stride, [pd, ph, pw], self.dilation, 1),
        )
    }
}

/// Whether `len` values can be allocated now, as an error naming `layer` if not: a size an
/// input chose (padding and strides decide an output's size) is refused before a Burn
/// operation, which cannot return an error, would fail to allocate it.
///
/// # Errors
/// [`Error::InvalidInput`] if the allocation fails.
pub(crate) fn output_fits(len: usize, input: [usize; 5], layer: &dyn std::fmt::Display) -> Result<()> {
    let mut probe: Vec<f32> = Vec::new();
    match probe.try_reserve_exact(len) {
        Ok(()) => Ok(()),
        Err(_) => Err(Error::InvalidInput {
            dims: input.to_vec(),
            what: format!(
                "{layer}: its output of {len} values ({} MiB) cannot be allocated",
                len / (1 << 18)
            ),
        }),
    }
}

/// The value of `result`, or a panic with its error's message: for the methods documented to
/// panic where their `try_` twin returns the error.
pub(crate) fn or_panic<T>(result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{err}"),
    }
}
