//! [`Conv`]: the convolution every layer of the network uses.
//!
//! One type, so that the operator can be swapped in one place (ACS convolutions, which split
//! a 2-D kernel's output channels over the axial, coronal and sagittal planes, are planned as
//! a second kind here).

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::module::conv3d;
use burn::tensor::ops::{ConvOptions, PadMode};

use crate::config::DepthPadding;

/// A bias-free 3-D convolution whose depth padding is zeros or copies of the edge slices.
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
}

/// Everything that fixes a [`Conv`]'s shape: what a weight source must provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel per axis (depth, height, width).
    pub kernel: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// How depth is padded.
    pub depth_padding: DepthPadding,
}

impl ConvSpec {
    /// Padding per axis: `kernel / 2` everywhere, which is torchvision's spatial padding.
    pub fn padding(&self) -> [usize; 3] {
        self.kernel.map(|k| k / 2)
    }

    /// The kernel's shape `[out, in, depth, height, width]`.
    pub fn weight_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.kernel;
        [self.out_channels, self.in_channels, d, h, w]
    }

    /// A convolution of this spec with the given kernel (of [`weight_shape`](Self::weight_shape)).
    pub fn build(&self, weight: Param<Tensor<5>>) -> Conv {
        Conv {
            weight,
            stride: self.stride,
            padding: self.padding(),
            depth_padding: self.depth_padding,
        }
    }
}

impl Conv {
    /// Applies the convolution.
    ///
    /// # Shapes
    /// - input: `[batch, in_channels, depth, height, width]`
    /// - output: `[batch, out_channels, depth', height', width']`, each axis
    ///   `(size + 2 * padding - kernel) / stride + 1`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [pd, ph, pw] = self.padding;
        let (x, pd) = match self.depth_padding {
            DepthPadding::Replicate if pd > 0 => (x.pad([(pd, pd), (0, 0), (0, 0)], PadMode::Edge), 0),
            _ => (x, pd),
        };
        conv3d(
            x,
            self.weight.val(),
            None,
            ConvOptions::new(self.stride, [pd, ph, pw], [1, 1, 1], 1),
        )
    }
}
