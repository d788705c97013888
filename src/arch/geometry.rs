//! The one convolution and pool geometry, and the one check every path makes before it runs.
//!
//! A [`ConvGeometry`] is what fixes a convolution's arithmetic besides its values: channels,
//! kernel, stride, padding, dilation and how depth is padded. [`ConvGeometry::on`] checks it
//! together with an input's shape and computes every extent with checked arithmetic; the
//! [`ConvShape`] it returns is the only way into the crate's kernels (the Burn operation on
//! `flex` and its gradients, the eval-mode BatchNorm fold, the frozen network, Winograd, bf16),
//! which take it as the truth about their buffers. Nothing else makes one.
//!
//! The rules are PyTorch's `conv3d` (one group): channels, kernel extents, strides and
//! dilations of at least 1; any padding (a window that sees only padding gives the bias);
//! input extents of at least 1, each padded extent at least the dilated kernel's reach
//! `dilation * (kernel - 1) + 1`; a batch of 0 gives an empty output. Output extents are
//! `(size + 2 * padding - reach) / stride + 1`. [`DepthPadding::Replicate`] fills the depth
//! padding with copies of the edge slices (PyTorch's `F.pad(mode="replicate")` before the
//! convolution) instead of zeros.
//!
//! Pools ([`PoolGeometry`]) follow `max_pool3d`: windows and strides of at least 1, padding at
//! most half the window; padding takes no part in a maximum.

use std::fmt;

use crate::arch::kinds::DepthPadding;
use crate::error::{Error, Result};

/// The axes of a volume, in the order of every `[_; 3]` of this crate.
pub(crate) const AXES: [&str; 3] = ["depth", "height", "width"];

/// The largest extent, padded extent or element count a geometry accepts: what the kernels can
/// offset a pointer by (`isize`).
const MAX_COUNT: usize = isize::MAX as usize;

/// Output extent along one axis: `(size + 2 * padding - reach) / stride + 1`, or `None` when the
/// padded axis is shorter than `reach`, the stride or reach is 0, or the sum overflows.
pub(crate) fn output_extent(size: usize, reach: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = padding.checked_mul(2)?.checked_add(size)?;
    if stride == 0 || reach == 0 || padded < reach || padded > MAX_COUNT {
        return None;
    }
    Some((padded - reach) / stride + 1)
}

/// The extent a kernel of `kernel` taps, `dilation` voxels apart, covers along an axis:
/// `dilation * (kernel - 1) + 1`; `None` for a kernel of no taps or a reach that overflows.
/// The one place this arithmetic lives.
fn reach_of(kernel: usize, dilation: usize) -> Option<usize> {
    dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)
}

/// The product of `values`, if it is at most [`MAX_COUNT`].
fn count(values: &[usize]) -> Option<usize> {
    values
        .iter()
        .try_fold(1usize, |acc, &v| acc.checked_mul(v))
        .filter(|&n| n <= MAX_COUNT)
}

/// The shape of a 3-D convolution (one group, no values): what every path checks once
/// ([`output_dims`](Self::output_dims), which every kernel's caller runs) before it computes.
///
/// ```
/// use resnet3d::{ConvGeometry, DepthPadding};
///
/// // A 3x3x3 convolution with stride 2 and torchvision's padding (1 per axis).
/// let conv = ConvGeometry::same(16, 32, [3, 3, 3], [2, 2, 2], [1, 1, 1], DepthPadding::Zeros);
/// assert_eq!(conv.padding, [1, 1, 1]);
/// assert_eq!(conv.output_dims([2, 16, 9, 20, 20], "conv")?, [2, 32, 5, 10, 10]);
/// // Padding beyond the kernel's reach is PyTorch's too: the outer windows see only zeros.
/// let wide = conv.with_padding([4, 4, 4]);
/// assert_eq!(wide.output_dims([1, 16, 1, 1, 1], "conv")?, [1, 32, 4, 4, 4]);
/// // A kernel larger than the padded input is an error that names the layer.
/// assert!(ConvGeometry { padding: [0; 3], ..conv }.output_dims([1, 16, 2, 8, 8], "conv").is_err());
/// # Ok::<(), resnet3d::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel extent per axis (depth, height, width).
    pub kernel: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Padding per axis, the same on both sides.
    pub padding: [usize; 3],
    /// Dilation per axis: the kernel's taps are `dilation` voxels apart (1: adjacent).
    pub dilation: [usize; 3],
    /// What the depth padding is filled with.
    pub depth_padding: DepthPadding,
}

impl ConvGeometry {
    /// A convolution with torchvision's padding, `dilation * (kernel / 2)` per axis: with
    /// stride 1 and an odd kernel the output keeps the input's size.
    pub fn same(
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        dilation: [usize; 3],
        depth_padding: DepthPadding,
    ) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding: [0, 1, 2].map(|a| dilation[a].saturating_mul(kernel[a] / 2)),
            dilation,
            depth_padding,
        }
    }

    /// The same convolution with `padding`.
    pub fn with_padding(self, padding: [usize; 3]) -> Self {
        Self { padding, ..self }
    }

    /// The kernel's shape `[out, in, depth, height, width]`.
    pub fn weight_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.kernel;
        [self.out_channels, self.in_channels, d, h, w]
    }

    /// The extent the kernel covers per axis, `dilation * (kernel - 1) + 1` (saturating; a
    /// geometry whose reach overflows is refused by [`check`](Self::check)).
    pub fn reach(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| reach_of(self.kernel[a], self.dilation[a]).unwrap_or(usize::MAX))
    }

    /// The kernel's values, `out * in * depth * height * width`, if countable.
    pub fn parameters(&self) -> Option<usize> {
        count(&self.weight_shape())
    }

    /// Whether the depth padding repeats the edge slices.
    pub fn replicate_depth(&self) -> bool {
        self.depth_padding == DepthPadding::Replicate
    }

    /// What is wrong with the fields alone, if anything.
    fn fault(&self) -> Option<String> {
        let shape = self.weight_shape();
        Some(if shape.contains(&0) {
            format!("kernel of shape {shape:?} has an extent of 0")
        } else if self.stride.contains(&0) {
            format!("stride {:?} has a 0; strides start at 1", self.stride)
        } else if self.stride.iter().any(|&s| s > MAX_COUNT) {
            format!(
                "stride {:?} is larger than memory can index (PyTorch refuses it too)",
                self.stride
            )
        } else if self.dilation.contains(&0) {
            format!("dilation {:?} has a 0; 1 is an ordinary convolution", self.dilation)
        } else if self.dilation.iter().any(|&d| d > MAX_COUNT) {
            format!("dilation {:?} is larger than memory can index", self.dilation)
        } else if self.parameters().is_none() {
            format!("kernel of shape {shape:?} has more values than memory can index")
        } else if (0..3).any(|a| {
            let reach = self.dilation[a]
                .checked_mul(self.kernel[a] - 1)
                .and_then(|r| r.checked_add(1));
            reach.is_none_or(|r| r > MAX_COUNT)
        }) {
            format!(
                "kernel {:?} with dilation {:?} reaches farther than memory can index",
                self.kernel, self.dilation
            )
        } else {
            return None;
        })
    }

    /// Checks the fields: channels, kernel extents, strides and dilations of at least 1, and
    /// a kernel and reach that can be counted. `layer` names the layer in the error.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] naming `layer` and what is wrong.
    pub fn check(&self, layer: &str) -> Result<()> {
        self.check_named(&layer)
    }

    /// [`check`](Self::check) with the layer's name as anything displayable.
    fn check_named(&self, layer: &dyn fmt::Display) -> Result<()> {
        match self.fault() {
            Some(what) => Err(Error::InvalidNetwork {
                layer: layer.to_string(),
                what,
            }),
            None => Ok(()),
        }
    }

    /// The output's shape `[n, out_channels, d', h', w']` for an input of shape `[n, c, d, h, w]`.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for the fields; [`Error::InvalidInput`] for an input that does
    /// not fit, saying what the layer (`layer`) takes.
    pub fn output_dims(&self, input: [usize; 5], layer: &str) -> Result<[usize; 5]> {
        self.on(input, &layer).map(|shape| shape.output_dims())
    }

    /// This convolution on an input of shape `[n, c, d, h, w]`: the one check before any
    /// kernel runs. The fields as [`check`](Self::check); `c == in_channels`; every extent of
    /// the volume at least 1; each padded extent at least the kernel's reach; every length
    /// (input, output, padded extents) countable.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for the fields; [`Error::InvalidInput`] for an input that does
    /// not fit, saying what the layer (`layer`) takes.
    pub(crate) fn on(&self, input: [usize; 5], layer: &dyn fmt::Display) -> Result<ConvShape> {
        self.check_named(layer)?;
        let [n, c, d, h, w] = input;
        let invalid = |what: String| Error::InvalidInput {
            dims: input.to_vec(),
            what,
        };
        if c != self.in_channels {
            return Err(invalid(format!(
                "{layer} takes {} channel(s), this activation has {c}",
                self.in_channels
            )));
        }
        let reach = self.reach();
        let mut output = [0; 3];
        for (a, size) in [d, h, w].into_iter().enumerate() {
            if size == 0 {
                return Err(invalid(format!(
                    "{layer}: the volume is empty along {}; every extent must be at least 1",
                    AXES[a]
                )));
            }
            output[a] = output_extent(size, reach[a], self.stride[a], self.padding[a]).ok_or_else(|| {
                invalid(format!(
                    "{layer}: {size} voxel(s) along {}, padded by {} on each side, are fewer than its kernel of {}; use a larger volume",
                    AXES[a], self.padding[a], reach[a]
                ))
            })?;
        }
        let [od, oh, ow] = output;
        if count(&input).is_none() || count(&[n, self.out_channels, od, oh, ow]).is_none() {
            return Err(invalid(format!(
                "{layer}: the input or output has more values than memory can index"
            )));
        }
        Ok(ConvShape(ConvDims {
            batch: n,
            in_channels: c,
            out_channels: self.out_channels,
            input: [d, h, w],
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            replicate_depth: self.replicate_depth(),
            output,
        }))
    }
}

/// A convolution checked against its input by [`ConvGeometry::on`]: what the kernels compute.
/// Nothing else makes one, and it cannot be changed: its values are read through `Deref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvShape(ConvDims);

/// The values of a [`ConvShape`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvDims {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Input extents `[d, h, w]`, each at least 1.
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    /// Depth padding repeats the first and last slice instead of zeros.
    pub replicate_depth: bool,
    /// Output extents `[d', h', w']`, each at least 1.
    pub output: [usize; 3],
}

impl std::ops::Deref for ConvShape {
    type Target = ConvDims;

    fn deref(&self) -> &ConvDims {
        &self.0
    }
}

// The training kernels (feature `flex`) use every method; the frozen network some.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
impl ConvShape {
    /// Taps of the kernel: `kd * kh * kw`.
    pub(crate) fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    /// Rows of the patch matrix: input channels x taps.
    pub(crate) fn k(&self) -> usize {
        self.in_channels * self.taps()
    }

    pub(crate) fn in_voxels(&self) -> usize {
        self.input.iter().product()
    }

    pub(crate) fn out_voxels(&self) -> usize {
        self.output.iter().product()
    }

    pub(crate) fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_voxels()
    }

    pub(crate) fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_voxels()
    }

    pub(crate) fn weight_len(&self) -> usize {
        self.out_channels * self.k()
    }

    /// `[n, c, d, h, w]` of the input.
    pub(crate) fn input_dims(&self) -> [usize; 5] {
        let [d, h, w] = self.input;
        [self.batch, self.in_channels, d, h, w]
    }

    /// `[n, c, d', h', w']` of the output.
    pub(crate) fn output_dims(&self) -> [usize; 5] {
        let [d, h, w] = self.output;
        [self.batch, self.out_channels, d, h, w]
    }

    /// The convolution's geometry (what [`ConvGeometry::on`] checked).
    pub(crate) fn geometry(&self) -> ConvGeometry {
        ConvGeometry {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            depth_padding: if self.replicate_depth {
                DepthPadding::Replicate
            } else {
                DepthPadding::Zeros
            },
        }
    }

    /// The extent the kernel covers per axis.
    pub(crate) fn reach(&self) -> [usize; 3] {
        self.geometry().reach()
    }

    /// Whether every padding is smaller than the kernel's reach, so that a padded copy of the
    /// input is at most a kernel's reach larger per axis than the input (what the implicit and
    /// Winograd products read). Beyond it, the kernels gather patches instead.
    pub(crate) fn padding_within_reach(&self) -> bool {
        let reach = self.reach();
        (0..3).all(|a| self.padding[a] < reach[a])
    }

    /// The depth taps that some output voxel reads from the volume, as the range from the first
    /// to the last of them; the others read zero padding at every output voxel (a volume a
    /// slice deep under a 3-deep kernel: only the middle tap), so a product may skip them.
    /// Every tap with replicate depth padding (it reads edge slices) or where no tap reads the
    /// volume.
    pub(crate) fn depth_taps_read(&self) -> std::ops::Range<usize> {
        let (k, s, p, d) = (self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]);
        let (n, out) = (self.input[0], self.output[0]);
        // Tap t reads slice o * s + t * d - p; the first output o with o * s >= p - t * d, if
        // any, is the one that reads the volume if any does. (Every extent and padded extent
        // is countable in isize: `on` checked.)
        let reads = |t: usize| {
            let offset = (t * d) as isize - p as isize;
            let o = if offset >= 0 {
                0
            } else {
                offset.unsigned_abs().div_ceil(s)
            };
            o < out && ((o * s) as isize + offset) < n as isize
        };
        match ((0..k).find(|&t| reads(t)), (0..k).rev().find(|&t| reads(t))) {
            (Some(first), Some(last)) if !self.replicate_depth => first..last + 1,
            _ => 0..k,
        }
    }

    /// The depth taps that output plane `oz` reads from the volume (a range: the taps reading
    /// slices `0..d` are consecutive); the others read zero padding at every voxel of that
    /// plane. Every tap with replicate depth padding (it reads edge slices); an empty range
    /// where the plane reads padding only. `oz` must be an output plane.
    pub(crate) fn depth_taps_of(&self, oz: usize) -> std::ops::Range<usize> {
        let (k, s, p, d) = (self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]);
        if self.replicate_depth {
            return 0..k;
        }
        debug_assert!(oz < self.output[0]);
        // Tap t reads slice oz * s + t * d - p, inside the volume for first <= t <= last; in
        // i128, where no sum of these extents overflows (a dilation up to isize::MAX passes
        // `on` under a one-deep kernel).
        let start = (oz * s) as i128 - p as i128;
        let n = self.input[0] as i128;
        let d = d.max(1) as i128;
        let first = if start >= 0 { 0 } else { (-start + d - 1) / d };
        let last = (n - 1 - start).div_euclid(d);
        let first = first.clamp(0, k as i128) as usize;
        let end = (last + 1).clamp(0, k as i128) as usize;
        first..end.max(first)
    }

    /// The same convolution with its input and output channels swapped and `padding`, on the
    /// output's extents: the convolution whose forward pass is this one's input gradient (for
    /// a flipped kernel, stride 1, zero padding). `None` where that does not compute.
    pub(crate) fn transposed(&self, padding: [usize; 3]) -> Option<ConvShape> {
        let geometry = ConvGeometry {
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding,
            dilation: self.dilation,
            depth_padding: DepthPadding::Zeros,
        };
        let [d, h, w] = self.output;
        geometry
            .on([self.batch, self.out_channels, d, h, w], &"transposed")
            .ok()
    }
}

#[cfg(test)]
impl ConvShape {
    /// The shape of `ConvGeometry::on`, for the kernels' tests (panics where it does not compute).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn for_test(
        batch: usize,
        in_channels: usize,
        out_channels: usize,
        input: [usize; 3],
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
        dilation: [usize; 3],
        replicate_depth: bool,
    ) -> Self {
        let geometry = ConvGeometry {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            depth_padding: if replicate_depth {
                DepthPadding::Replicate
            } else {
                DepthPadding::Zeros
            },
        };
        let [d, h, w] = input;
        match geometry.on([batch, in_channels, d, h, w], &"test") {
            Ok(shape) => shape,
            Err(err) => panic!("{err}"),
        }
    }
}

/// A 3-D max pool's shape: window, stride and padding per axis (depth, height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Window per axis.
    pub kernel: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Padding per axis, the same on both sides.
    pub padding: [usize; 3],
}

impl PoolGeometry {
    /// Checks the fields as PyTorch's `max_pool3d` does: windows and strides of at least 1,
    /// padding at most half the window. `layer` names the layer in the error.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] naming `layer`.
    pub fn check(&self, layer: &str) -> Result<()> {
        let valid = (0..3).all(|a| {
            self.kernel[a] > 0
                && self.stride[a] > 0
                && self.kernel[a] <= MAX_COUNT
                && self.stride[a] <= MAX_COUNT
                && self.padding[a].checked_mul(2).is_some_and(|p| p <= self.kernel[a])
        });
        if valid {
            return Ok(());
        }
        Err(Error::InvalidNetwork {
            layer: layer.to_string(),
            what: format!(
                "max pool of window {:?}, stride {:?}, padding {:?}: windows and strides must be at least 1 and padding at most half the window",
                self.kernel, self.stride, self.padding
            ),
        })
    }

    /// The output's shape for an input of shape `[n, c, d, h, w]`.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for the fields; [`Error::InvalidInput`] for an axis shorter
    /// than the window once padded.
    pub fn output_dims(&self, input: [usize; 5], layer: &str) -> Result<[usize; 5]> {
        self.on(input, layer).map(|shape| {
            let [d, h, w] = shape.output;
            [shape.batch, shape.channels, d, h, w]
        })
    }

    /// This pool on an input of shape `[n, c, d, h, w]`: the fields as [`check`](Self::check),
    /// each padded extent at least the window (an empty axis padded up to the window gives
    /// windows of padding only, whose maximum is minus infinity), every length countable, and
    /// a batch item's voxels countable in `u32` (the gradient's index).
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for the fields; [`Error::InvalidInput`] for the input.
    pub(crate) fn on(&self, input: [usize; 5], layer: &str) -> Result<PoolShape> {
        self.check(layer)?;
        let [n, c, d, h, w] = input;
        let invalid = |what: String| Error::InvalidInput {
            dims: input.to_vec(),
            what,
        };
        let mut output = [0; 3];
        for (a, size) in [d, h, w].into_iter().enumerate() {
            output[a] = output_extent(size, self.kernel[a], self.stride[a], self.padding[a]).ok_or_else(|| {
                invalid(format!(
                    "{layer}: {size} voxel(s) along {}, padded by {}, are fewer than its window of {}; use a larger volume",
                    AXES[a], self.padding[a], self.kernel[a]
                ))
            })?;
        }
        let [od, oh, ow] = output;
        let item = count(&[d, h, w]).filter(|&v| u32::try_from(v).is_ok());
        if item.is_none() || count(&input).is_none() || count(&[n, c, od, oh, ow]).is_none() {
            return Err(invalid(format!(
                "{layer}: the volume has more voxels than the pool can index"
            )));
        }
        Ok(PoolShape(PoolDims {
            batch: n,
            channels: c,
            input: [d, h, w],
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            output,
        }))
    }
}

/// A max pool checked against its input by [`PoolGeometry::on`]; read through `Deref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolShape(PoolDims);

/// The values of a [`PoolShape`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolDims {
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

impl std::ops::Deref for PoolShape {
    type Target = PoolDims;

    fn deref(&self) -> &PoolDims {
        &self.0
    }
}

impl PoolShape {
    pub(crate) fn input_len(&self) -> usize {
        self.batch * self.channels * self.input.iter().product::<usize>()
    }

    pub(crate) fn output_len(&self) -> usize {
        self.batch * self.channels * self.output.iter().product::<usize>()
    }

    /// `[n, c, d', h', w']` of the output.
    pub(crate) fn output_dims(&self) -> [usize; 5] {
        let [d, h, w] = self.output;
        [self.batch, self.channels, d, h, w]
    }
}

/// MedicalNet's "type A" shortcut: the input at the block's stride (every `stride`-th voxel
/// from the first along each axis, as PyTorch's `avg_pool3d(x, 1, stride)`), followed by
/// zero channels up to `out_channels`. No parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroPadShortcut {
    /// Stride per axis (depth, height, width).
    pub stride: [usize; 3],
    /// Channels of the output: the input's, then zeros.
    pub out_channels: usize,
}

impl ZeroPadShortcut {
    /// The output's shape for an input of shape `dims`; `name` names the block in the error.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] if the input has more channels than the output, or a stride
    /// is 0 or larger than memory can index.
    pub fn output_dims(&self, [n, c, d, h, w]: [usize; 5], name: &str) -> Result<[usize; 5]> {
        let extent = |size: usize, a: usize| {
            (self.stride[a] <= MAX_COUNT)
                .then(|| output_extent(size, 1, self.stride[a], 0))
                .flatten()
        };
        match (extent(d, 0), extent(h, 1), extent(w, 2)) {
            (Some(d), Some(h), Some(w)) if c <= self.out_channels => Ok([n, self.out_channels, d, h, w]),
            _ => Err(Error::InvalidNetwork {
                layer: format!("{name} (zero-padded shortcut)"),
                what: format!(
                    "stride {:?} and {} output channel(s) on {c} input channel(s): strides start at 1, and channels are only added",
                    self.stride, self.out_channels
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(kernel: [usize; 3], stride: [usize; 3], padding: [usize; 3], dilation: [usize; 3]) -> ConvGeometry {
        ConvGeometry {
            in_channels: 1,
            out_channels: 1,
            kernel,
            stride,
            padding,
            dilation,
            depth_padding: DepthPadding::Zeros,
        }
    }

    /// The depth taps read against the definition (every output slice, every tap), over
    /// kernels, strides, paddings (beyond the reach too) and dilations up to 5 on 1 to 7
    /// slices: the hull of the taps that read a slice; every tap where none does or with
    /// replicate padding. The three-deep kernel on one slice reads its middle tap only.
    #[test]
    fn the_depth_taps_read_are_those_that_reach_the_volume() {
        let mut cropped = 0;
        for (k, s, p, d, n) in small_geometries() {
            let g = geometry([k, 1, 1], [s, 1, 1], [p, 0, 0], [d, 1, 1]);
            let Ok(shape) = g.on([1, 1, n, 1, 1], &"conv") else {
                continue;
            };
            let read: Vec<usize> = (0..k)
                .filter(|&t| {
                    (0..shape.output[0]).any(|o| {
                        let z = (o * s + t * d) as isize - p as isize;
                        (0..n as isize).contains(&z)
                    })
                })
                .collect();
            let want = match (read.first(), read.last()) {
                (Some(&a), Some(&b)) => a..b + 1,
                _ => 0..k,
            };
            assert_eq!(shape.depth_taps_read(), want, "k {k} s {s} p {p} d {d} n {n}");
            cropped += usize::from(want != (0..k));
            let replicate = ConvGeometry {
                depth_padding: DepthPadding::Replicate,
                ..g
            };
            if let Ok(shape) = replicate.on([1, 1, n, 1, 1], &"conv") {
                assert_eq!(shape.depth_taps_read(), 0..k);
            }
        }
        assert!(cropped > 100, "{cropped}");
        let middle = geometry([3, 3, 3], [1; 3], [1; 3], [1; 3])
            .on([1, 1, 1, 4, 4], &"conv")
            .unwrap();
        assert_eq!(middle.depth_taps_read(), 1..2);
    }

    /// (kernel, stride, padding, dilation, slices) over small values.
    fn small_geometries() -> impl Iterator<Item = (usize, usize, usize, usize, usize)> {
        (1..=5).flat_map(|k| {
            (1..=5).flat_map(move |s| {
                (0..=5).flat_map(move |p| (1..=3).flat_map(move |d| (1..=7).map(move |n| (k, s, p, d, n))))
            })
        })
    }

    #[test]
    fn shapes_that_do_not_compute_are_refused() {
        let on = |g: ConvGeometry, input: [usize; 3]| g.on([1, 1, input[0], input[1], input[2]], &"conv");
        // The kernel does not fit the unpadded input.
        assert!(on(geometry([3; 3], [1; 3], [0; 3], [1; 3]), [2, 2, 2]).is_err());
        // Zero dilation, stride, kernel extent; an empty axis.
        assert!(on(geometry([3; 3], [1; 3], [0; 3], [0, 1, 1]), [5; 3]).is_err());
        assert!(on(geometry([3; 3], [0, 1, 1], [1; 3], [1; 3]), [5; 3]).is_err());
        assert!(on(geometry([0, 3, 3], [1; 3], [1; 3], [1; 3]), [5; 3]).is_err());
        assert!(on(geometry([1; 3], [1; 3], [1; 3], [1; 3]), [0, 5, 5]).is_err());
        // Dilation 2 makes a 3-tap kernel reach 5 voxels.
        assert!(on(geometry([3; 3], [1; 3], [0; 3], [2; 3]), [4, 5, 5]).is_err());
        assert_eq!(
            on(geometry([3; 3], [1; 3], [0; 3], [2; 3]), [5; 3]).unwrap().output,
            [1, 1, 1]
        );
        // Sizes that overflow are errors, not wrapped lengths; so are strides and dilations
        // past what an index holds (they were cast to isize: a stride of 2^63 computed zeros).
        assert!(on(geometry([1, 1, 3], [1, 1, 1 << 63], [0, 0, 1], [1; 3]), [1, 1, 4]).is_err());
        assert!(on(geometry([1; 3], [1; 3], [0; 3], [usize::MAX, 1, 1]), [3; 3]).is_err());
        assert!(on(geometry([1; 3], [1; 3], [usize::MAX / 2; 3], [1; 3]), [3; 3]).is_err());
        assert!(on(geometry([3; 3], [1; 3], [0; 3], [usize::MAX; 3]), [3; 3]).is_err());
        assert!(on(geometry([1; 3], [1; 3], [1 << 21; 3], [1; 3]), [1; 3]).is_err());
    }

    /// PyTorch's extents, padding beyond the reach included (torch 2.15: `conv3d` of a
    /// 1x2x3x4x5 input with a 1x1x1 kernel, padding 7, stride 3 gives 6x6x7).
    #[test]
    fn padding_beyond_the_reach_is_pytorchs() {
        let g = ConvGeometry {
            in_channels: 2,
            out_channels: 3,
            ..geometry([1; 3], [3; 3], [7; 3], [1; 3])
        };
        assert_eq!(g.output_dims([1, 2, 3, 4, 5], "conv").unwrap(), [1, 3, 6, 6, 7]);
        // A batch of 0 gives an empty output.
        assert_eq!(g.output_dims([0, 2, 3, 4, 5], "conv").unwrap(), [0, 3, 6, 6, 7]);
        let shape = g.on([1, 2, 3, 4, 5], &"conv").unwrap();
        assert!(!shape.padding_within_reach());
    }

    #[test]
    fn pools_follow_pytorchs_rules() {
        let pool = |kernel, stride, padding| PoolGeometry {
            kernel,
            stride,
            padding,
        };
        assert!(pool([3; 3], [2; 3], [2, 1, 1]).check("maxpool").is_err());
        assert!(pool([3; 3], [0, 2, 2], [1; 3]).check("maxpool").is_err());
        assert!(pool([0, 3, 3], [2; 3], [0; 3]).check("maxpool").is_err());
        assert_eq!(
            pool([3; 3], [2; 3], [1; 3])
                .output_dims([1, 4, 5, 6, 7], "maxpool")
                .unwrap(),
            [1, 4, 3, 3, 4]
        );
        // An empty axis padded up to the window: one window of padding only.
        assert_eq!(
            pool([2; 3], [2; 3], [1; 3])
                .on([1, 2, 0, 3, 3], "maxpool")
                .unwrap()
                .output,
            [1, 2, 2]
        );
        // The window larger than the padded axis.
        assert!(
            pool([3; 3], [2; 3], [0; 3])
                .output_dims([1, 2, 1, 4, 5], "maxpool")
                .is_err()
        );
    }
}
