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
use crate::error::{Error, Result};

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
    /// Dilation per axis: the kernel's taps are `dilation` voxels apart (1: adjacent).
    #[module(skip)]
    pub dilation: [usize; 3],
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
    /// Dilation per axis (1: an ordinary convolution).
    pub dilation: [usize; 3],
}

impl ConvSpec {
    /// Padding per axis: `dilation * (kernel / 2)`, which is torchvision's spatial padding
    /// (and MedicalNet's for its dilated stages): a stride-1 convolution keeps the size.
    pub fn padding(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.dilation[a] * (self.kernel[a] / 2))
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
            dilation: self.dilation,
        }
    }
}

/// The axes of a volume, in the order of every `[_; 3]` of this crate.
pub(crate) const AXES: [&str; 3] = ["depth", "height", "width"];

/// Output extent along one axis: `(size + 2 * padding - kernel) / stride + 1`, or `None` when
/// the padded input is shorter than the kernel, the stride is 0, or the sum overflows. The one
/// place this arithmetic lives: the Burn model's checks, the frozen network and the pools use it.
pub(crate) fn output_extent(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = padding.checked_mul(2)?.checked_add(size)?;
    if stride == 0 || kernel == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

/// The output shape of a convolution on `[n, c, d, h, w]`, with the checks that make it
/// computable: `c == in_channels` and the padded input at least as large as the kernel.
pub(crate) fn conv_output_dims(
    [n, c, d, h, w]: [usize; 5],
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    what: &str,
) -> Result<[usize; 5]> {
    let dims = vec![n, c, d, h, w];
    if c != in_channels {
        return Err(Error::InvalidInput {
            dims,
            what: format!("{what} takes {in_channels} channel(s), this activation has {c}"),
        });
    }
    let mut out = [n, out_channels, 0, 0, 0];
    for (a, size) in [d, h, w].into_iter().enumerate() {
        out[a + 2] = output_extent(size, kernel[a], stride[a], padding[a]).ok_or_else(|| Error::InvalidInput {
            dims: dims.clone(),
            what: format!(
                "{what}: {size} voxel(s) along {}, padded by {} on each side, are fewer than its kernel of {}; use a larger volume",
                AXES[a], padding[a], kernel[a]
            ),
        })?;
    }
    Ok(out)
}

impl Conv {
    /// Input channels (the kernel's second extent).
    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output channels (the kernel's first extent).
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Kernel extent per axis (depth, height, width).
    pub fn kernel(&self) -> [usize; 3] {
        let [_, _, d, h, w] = self.weight.dims();
        [d, h, w]
    }

    /// The extent the kernel covers per axis: `dilation * (kernel - 1) + 1` (saturating; a
    /// dilation that overflows is refused by [`check`](Self::check)).
    pub(crate) fn reach(&self) -> [usize; 3] {
        let k = self.kernel();
        [0, 1, 2].map(|a| {
            self.dilation[a]
                .saturating_mul(k[a].saturating_sub(1))
                .saturating_add(1)
        })
    }

    /// Checks the convolution's own fields: every extent of the kernel at least 1, strides at
    /// least 1, padding smaller than the kernel. `what` names the layer in the error.
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        let [o, i, kd, kh, kw] = self.weight.dims();
        let bad = if [o, i, kd, kh, kw].contains(&0) {
            format!("kernel of shape {:?} has an extent of 0", [o, i, kd, kh, kw])
        } else if self.stride.contains(&0) {
            format!("stride {:?} has a 0; strides start at 1", self.stride)
        } else if self.dilation.contains(&0) || self.dilation.iter().any(|&d| d > 1 << 16) {
            format!("dilation {:?} is 0 or above 65536", self.dilation)
        } else if (0..3).any(|a| self.padding[a] >= self.reach()[a]) {
            format!(
                "padding {:?} is not smaller than the kernel's reach {:?} (kernel {:?}, dilation {:?})",
                self.padding,
                self.reach(),
                self.kernel(),
                self.dilation
            )
        } else {
            return Ok(());
        };
        Err(Error::InvalidNetwork {
            layer: what.to_string(),
            what: bad,
        })
    }

    /// The output's shape for an input of shape `[n, c, d, h, w]`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `c` is not [`in_channels`](Self::in_channels) or the padded
    /// input is smaller than the kernel along an axis; `what` names the layer.
    pub(crate) fn output_dims(&self, dims: [usize; 5], what: &str) -> Result<[usize; 5]> {
        conv_output_dims(
            dims,
            self.in_channels(),
            self.out_channels(),
            self.reach(),
            self.stride,
            self.padding,
            what,
        )
    }

    /// Applies the convolution.
    ///
    /// # Shapes
    /// - input: `[batch, in_channels, depth, height, width]`
    /// - output: `[batch, out_channels, depth', height', width']`, each axis
    ///   `(size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        // On flex (with or without autodiff): the crate's own kernels, forward and backward.
        #[cfg(feature = "flex")]
        {
            let args = crate::cpu::Conv3dArgs {
                stride: self.stride,
                padding: self.padding,
                dilation: self.dilation,
                replicate_depth: self.depth_padding == DepthPadding::Replicate,
            };
            let weight = self.weight.val();
            if let Some(shape) = crate::cpu::runs(&x, &weight, None, &args) {
                return crate::cpu::conv3d(x, weight, None, shape);
            }
        }
        let [pd, ph, pw] = self.padding;
        let (x, pd) = match self.depth_padding {
            DepthPadding::Replicate if pd > 0 => (x.pad([(pd, pd), (0, 0), (0, 0)], PadMode::Edge), 0),
            _ => (x, pd),
        };
        conv3d(
            x,
            self.weight.val(),
            None,
            ConvOptions::new(self.stride, [pd, ph, pw], self.dilation, 1),
        )
    }
}
