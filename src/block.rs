//! The residual blocks: [`BasicBlock3d`] (ResNet-18/34), [`Bottleneck3d`] (ResNet-50/101/152)
//! and the [`Downsample`] shortcut. Field names are torchvision's state-dict keys.

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::{Slice, Tensor};

use crate::config::{BlockKind, DepthPadding, Shortcut};
use crate::conv::{Conv, ConvSpec, output_extent};
use crate::error::{Error, Result};
use crate::model::ParamSource;
use crate::norm::conv_batch_norm;

/// Where a block sits and what it gets: enough to build any of the block kinds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSpec {
    pub in_channels: usize,
    /// Inner width; the block outputs `planes * expansion` channels.
    pub planes: usize,
    /// Stride per axis (depth, height, width), on the 3x3 convolution.
    pub stride: [usize; 3],
    /// Depth of the 3x3 kernels.
    pub depth_kernel: usize,
    pub depth_padding: DepthPadding,
    /// Bottlenecks only: the stride goes on the first 1x1 convolution (ResNet v1).
    pub stride_in_1x1: bool,
    /// Dilation of the 3x3 convolutions, on every axis.
    pub dilation: usize,
    /// The shortcut where the shape changes.
    pub shortcut: Shortcut,
}

impl BlockSpec {
    fn conv(&self, in_channels: usize, out_channels: usize, kernel: usize, stride: [usize; 3]) -> ConvSpec {
        let (depth, dilation) = if kernel == 1 {
            (1, 1)
        } else {
            (self.depth_kernel, self.dilation)
        };
        ConvSpec {
            in_channels,
            out_channels,
            kernel: [depth, kernel, kernel],
            stride,
            depth_padding: self.depth_padding,
            dilation: [dilation; 3],
        }
    }

    /// Whether the block changes the shape, so that the shortcut cannot be the identity.
    fn reshapes(&self, out_channels: usize) -> bool {
        self.stride != [1, 1, 1] || self.in_channels != out_channels
    }

    /// The projection shortcut where the shape changes (torchvision's), if the config asks
    /// for projections.
    fn downsample(&self, out_channels: usize, name: &str, source: &mut impl ParamSource) -> Option<Downsample> {
        (self.shortcut == Shortcut::Projection && self.reshapes(out_channels)).then(|| Downsample {
            conv: source.conv(
                &format!("{name}.downsample.0"),
                self.conv(self.in_channels, out_channels, 1, self.stride),
            ),
            bn: source.batch_norm(&format!("{name}.downsample.1"), out_channels),
        })
    }

    /// The parameter-free shortcut where the shape changes, if the config asks for it.
    fn zero_pad(&self, out_channels: usize) -> Option<ZeroPadShortcut> {
        (self.shortcut == Shortcut::ZeroPad && self.reshapes(out_channels)).then_some(ZeroPadShortcut {
            stride: self.stride,
            out_channels,
        })
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
    /// # Shapes
    /// `[N, in, D, H, W]` -> `[N, out_channels, ceil(D / sd), ceil(H / sh), ceil(W / sw)]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = if self.stride == [1, 1, 1] {
            x
        } else {
            let all = Slice::new(0, None, 1);
            let [sd, sh, sw] = self.stride.map(|s| s as isize);
            x.slice([
                all,
                all,
                Slice::new(0, None, sd),
                Slice::new(0, None, sh),
                Slice::new(0, None, sw),
            ])
        };
        let [n, c, d, h, w] = x.dims();
        match self.out_channels.checked_sub(c) {
            Some(0) | None => x,
            Some(extra) => {
                let zeros = Tensor::zeros([n, extra, d, h, w], &x.device());
                Tensor::cat(vec![x, zeros], 1)
            }
        }
    }

    /// The output's shape for an input of shape `dims`; `name` names the block in the error.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] if the input has more channels than the output or a stride
    /// is 0.
    pub(crate) fn output_dims(&self, [n, c, d, h, w]: [usize; 5], name: &str) -> Result<[usize; 5]> {
        let extent = |size: usize, a: usize| output_extent(size, 1, self.stride[a], 0);
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

/// The shortcut projection: a strided 1x1x1 convolution and BatchNorm
/// (torchvision's `downsample.0` and `downsample.1`).
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1x1 convolution with the block's stride.
    pub conv: Conv,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

impl Downsample {
    /// # Shapes
    /// `[N, in, D, H, W]` -> `[N, out, D / sd, H / sh, W / sw]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        conv_batch_norm(&self.conv, &self.bn, x, false, None)
    }
}

/// Two 3x3 convolutions (3-D: `depth_kernel`x3x3) with a skip connection.
#[derive(Module, Debug)]
pub struct BasicBlock3d {
    /// First 3x3 convolution; carries the block's stride.
    pub conv1: Conv,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm,
    /// Second 3x3 convolution.
    pub conv2: Conv,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm,
    /// Projection shortcut where the shape changes.
    pub downsample: Option<Downsample>,
    /// Parameter-free shortcut where the shape changes ([`Shortcut::ZeroPad`]).
    #[module(skip)]
    pub zero_pad: Option<ZeroPadShortcut>,
}

impl BasicBlock3d {
    pub(crate) fn build(spec: BlockSpec, name: &str, source: &mut impl ParamSource) -> Self {
        let p = spec.planes;
        Self {
            conv1: source.conv(&format!("{name}.conv1"), spec.conv(spec.in_channels, p, 3, spec.stride)),
            bn1: source.batch_norm(&format!("{name}.bn1"), p),
            conv2: source.conv(&format!("{name}.conv2"), spec.conv(p, p, 3, [1, 1, 1])),
            bn2: source.batch_norm(&format!("{name}.bn2"), p),
            downsample: spec.downsample(p, name, source),
            zero_pad: spec.zero_pad(p),
        }
    }

    /// # Shapes
    /// `[N, in, D, H, W]` -> `[N, planes, D / sd, H / sh, W / sw]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let identity = shortcut(&self.downsample, &self.zero_pad, &x);
        let y = conv_batch_norm(&self.conv1, &self.bn1, x, true, None);
        // The skip connection, added before the last ReLU.
        conv_batch_norm(&self.conv2, &self.bn2, y, true, Some(identity))
    }
}

/// 1x1x1, 3x3 (`depth_kernel`x3x3, with the stride: torchvision's v1.5, unless
/// `stride_in_1x1`), 1x1x1 convolutions with 4x channel expansion and a skip connection.
#[derive(Module, Debug)]
pub struct Bottleneck3d {
    /// 1x1x1 reduction (carries the stride in ResNet v1).
    pub conv1: Conv,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm,
    /// 3x3 convolution; carries the block's stride (v1.5).
    pub conv2: Conv,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm,
    /// 1x1x1 expansion to `4 * planes`.
    pub conv3: Conv,
    /// BatchNorm after `conv3`.
    pub bn3: BatchNorm,
    /// Projection shortcut where the shape changes.
    pub downsample: Option<Downsample>,
    /// Parameter-free shortcut where the shape changes ([`Shortcut::ZeroPad`]).
    #[module(skip)]
    pub zero_pad: Option<ZeroPadShortcut>,
}

impl Bottleneck3d {
    pub(crate) fn build(spec: BlockSpec, name: &str, source: &mut impl ParamSource) -> Self {
        let (p, out) = (spec.planes, spec.planes * BlockKind::Bottleneck.expansion());
        let (stride1, stride2) = match spec.stride_in_1x1 {
            true => (spec.stride, [1, 1, 1]),
            false => ([1, 1, 1], spec.stride),
        };
        Self {
            conv1: source.conv(&format!("{name}.conv1"), spec.conv(spec.in_channels, p, 1, stride1)),
            bn1: source.batch_norm(&format!("{name}.bn1"), p),
            conv2: source.conv(&format!("{name}.conv2"), spec.conv(p, p, 3, stride2)),
            bn2: source.batch_norm(&format!("{name}.bn2"), p),
            conv3: source.conv(&format!("{name}.conv3"), spec.conv(p, out, 1, [1, 1, 1])),
            bn3: source.batch_norm(&format!("{name}.bn3"), out),
            downsample: spec.downsample(out, name, source),
            zero_pad: spec.zero_pad(out),
        }
    }

    /// # Shapes
    /// `[N, in, D, H, W]` -> `[N, 4 * planes, D / sd, H / sh, W / sw]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let identity = shortcut(&self.downsample, &self.zero_pad, &x);
        let y = conv_batch_norm(&self.conv1, &self.bn1, x, true, None);
        let y = conv_batch_norm(&self.conv2, &self.bn2, y, true, None);
        // The skip connection, added before the last ReLU.
        conv_batch_norm(&self.conv3, &self.bn3, y, true, Some(identity))
    }
}

/// A (2+1)-D convolution (torchvision's `Conv2Plus1D`): a 1x3x3 convolution with the height
/// and width stride, BatchNorm and ReLU, then a `depth`x1x1 convolution with the depth stride.
/// The BatchNorm and ReLU after the temporal convolution belong to the block.
#[derive(Module, Debug)]
pub struct Conv2Plus1d {
    /// The 1x3x3 convolution to the middle channels.
    pub spatial: Conv,
    /// BatchNorm of the middle channels.
    pub bn: BatchNorm,
    /// The depth convolution to the output channels.
    pub temporal: Conv,
}

impl Conv2Plus1d {
    fn build(
        spec: &BlockSpec,
        [i, mid, o]: [usize; 3],
        stride: [usize; 3],
        name: &str,
        source: &mut impl ParamSource,
    ) -> Self {
        let [sd, sh, sw] = stride;
        let spatial = ConvSpec {
            in_channels: i,
            out_channels: mid,
            kernel: [1, 3, 3],
            stride: [1, sh, sw],
            depth_padding: spec.depth_padding,
            dilation: [1, spec.dilation, spec.dilation],
        };
        let temporal = ConvSpec {
            in_channels: mid,
            out_channels: o,
            kernel: [spec.depth_kernel, 1, 1],
            stride: [sd, 1, 1],
            depth_padding: spec.depth_padding,
            dilation: [spec.dilation, 1, 1],
        };
        Self {
            spatial: source.conv(&format!("{name}.spatial"), spatial),
            bn: source.batch_norm(&format!("{name}.bn"), mid),
            temporal: source.conv(&format!("{name}.temporal"), temporal),
        }
    }

    /// The temporal convolution's input: `relu(bn(spatial(x)))`.
    fn middle(&self, x: Tensor<5>) -> Tensor<5> {
        conv_batch_norm(&self.spatial, &self.bn, x, true, None)
    }
}

/// Two (2+1)-D convolutions with a skip connection (torchvision's R(2+1)D `BasicBlock`).
#[derive(Module, Debug)]
pub struct Block2Plus1d {
    /// First factorised convolution; carries the block's stride.
    pub conv1: Conv2Plus1d,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm,
    /// Second factorised convolution.
    pub conv2: Conv2Plus1d,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm,
    /// Projection shortcut where the shape changes.
    pub downsample: Option<Downsample>,
    /// Parameter-free shortcut where the shape changes ([`Shortcut::ZeroPad`]).
    #[module(skip)]
    pub zero_pad: Option<ZeroPadShortcut>,
}

impl Block2Plus1d {
    pub(crate) fn build(spec: BlockSpec, name: &str, source: &mut impl ParamSource) -> Self {
        let (i, p) = (spec.in_channels, spec.planes);
        // torchvision's rule: both convolutions of a block get the middle width of its
        // input and output channels.
        let mid = crate::config::mid_channels(i, p, spec.depth_kernel).unwrap_or(1);
        Self {
            conv1: Conv2Plus1d::build(&spec, [i, mid, p], spec.stride, &format!("{name}.conv1"), source),
            bn1: source.batch_norm(&format!("{name}.bn1"), p),
            conv2: Conv2Plus1d::build(&spec, [p, mid, p], [1, 1, 1], &format!("{name}.conv2"), source),
            bn2: source.batch_norm(&format!("{name}.bn2"), p),
            downsample: spec.downsample(p, name, source),
            zero_pad: spec.zero_pad(p),
        }
    }

    /// # Shapes
    /// `[N, in, D, H, W]` -> `[N, planes, D / sd, H / sh, W / sw]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let identity = shortcut(&self.downsample, &self.zero_pad, &x);
        let y = conv_batch_norm(&self.conv1.temporal, &self.bn1, self.conv1.middle(x), true, None);
        // The skip connection, added before the last ReLU.
        conv_batch_norm(
            &self.conv2.temporal,
            &self.bn2,
            self.conv2.middle(y),
            true,
            Some(identity),
        )
    }
}

/// A residual block of any kind.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Block {
    /// ResNet-18/34.
    Basic(BasicBlock3d),
    /// ResNet-50/101/152.
    Bottleneck(Bottleneck3d),
    /// R(2+1)D.
    Factorised(Block2Plus1d),
}

impl Block {
    pub(crate) fn build(kind: BlockKind, spec: BlockSpec, name: &str, source: &mut impl ParamSource) -> Self {
        match kind {
            BlockKind::Basic => Block::Basic(BasicBlock3d::build(spec, name, source)),
            BlockKind::Bottleneck => Block::Bottleneck(Bottleneck3d::build(spec, name, source)),
            BlockKind::Basic2Plus1d => Block::Factorised(Block2Plus1d::build(spec, name, source)),
        }
    }

    /// # Shapes
    /// `[N, in, D, H, W]` -> `[N, out, D / sd, H / sh, W / sw]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        match self {
            Block::Basic(block) => block.forward(x),
            Block::Bottleneck(block) => block.forward(x),
            Block::Factorised(block) => block.forward(x),
        }
    }
}

/// A block's shortcut of `x`: the projection, the zero-padded input, or `x` itself.
fn shortcut(downsample: &Option<Downsample>, zero_pad: &Option<ZeroPadShortcut>, x: &Tensor<5>) -> Tensor<5> {
    match (downsample, zero_pad) {
        (Some(downsample), _) => downsample.forward(x.clone()),
        (None, Some(zero_pad)) => zero_pad.forward(x.clone()),
        (None, None) => x.clone(),
    }
}

/// Checks a convolution and its BatchNorm: the convolution's own fields, its input channels
/// (`in_channels`), and a BatchNorm of the convolution's width. Returns the output channels.
pub(crate) fn check_conv_bn(
    conv: &Conv,
    bn: &BatchNorm,
    in_channels: usize,
    name: &str,
    bn_name: &str,
) -> Result<usize> {
    conv.check(name)?;
    if conv.in_channels() != in_channels {
        return Err(Error::InvalidNetwork {
            layer: name.to_string(),
            what: format!(
                "takes {} input channel(s), the layer before it gives {in_channels}",
                conv.in_channels()
            ),
        });
    }
    let width = conv.out_channels();
    let widths = [
        bn.gamma.dims()[0],
        bn.beta.dims()[0],
        bn.running_mean.value().dims()[0],
        bn.running_var.value().dims()[0],
    ];
    if widths.iter().any(|&w| w != width) {
        return Err(Error::InvalidNetwork {
            layer: bn_name.to_string(),
            what: format!(
                "BatchNorm of widths {widths:?} (weight, bias, running mean, running variance) after a convolution of {width} channels"
            ),
        });
    }
    Ok(width)
}

impl Block {
    /// The convolutions of the main branch, each with its BatchNorm and its name suffix.
    pub(crate) fn main_branch(&self) -> Vec<(&Conv, &BatchNorm, &'static str, &'static str)> {
        match self {
            Block::Basic(b) => vec![(&b.conv1, &b.bn1, "conv1", "bn1"), (&b.conv2, &b.bn2, "conv2", "bn2")],
            Block::Bottleneck(b) => vec![
                (&b.conv1, &b.bn1, "conv1", "bn1"),
                (&b.conv2, &b.bn2, "conv2", "bn2"),
                (&b.conv3, &b.bn3, "conv3", "bn3"),
            ],
            Block::Factorised(b) => vec![
                (&b.conv1.spatial, &b.conv1.bn, "conv1.spatial", "conv1.bn"),
                (&b.conv1.temporal, &b.bn1, "conv1.temporal", "bn1"),
                (&b.conv2.spatial, &b.conv2.bn, "conv2.spatial", "conv2.bn"),
                (&b.conv2.temporal, &b.bn2, "conv2.temporal", "bn2"),
            ],
        }
    }

    /// The projection shortcut, if any.
    pub(crate) fn downsample(&self) -> Option<&Downsample> {
        match self {
            Block::Basic(b) => b.downsample.as_ref(),
            Block::Bottleneck(b) => b.downsample.as_ref(),
            Block::Factorised(b) => b.downsample.as_ref(),
        }
    }

    /// The parameter-free shortcut, if any.
    pub(crate) fn zero_pad(&self) -> Option<&ZeroPadShortcut> {
        match self {
            Block::Basic(b) => b.zero_pad.as_ref(),
            Block::Bottleneck(b) => b.zero_pad.as_ref(),
            Block::Factorised(b) => b.zero_pad.as_ref(),
        }
    }

    /// Checks that the block's layers fit together on an input of `in_channels` channels:
    /// the channel chain, BatchNorm widths, and a shortcut that gives the main branch's
    /// channels and strides. Returns the block's output channels. `name` is `layer1.0` etc.
    pub(crate) fn check(&self, in_channels: usize, name: &str) -> Result<usize> {
        let mut channels = in_channels;
        let mut stride = [1usize; 3];
        for (conv, bn, conv_name, bn_name) in self.main_branch() {
            channels = check_conv_bn(
                conv,
                bn,
                channels,
                &format!("{name}.{conv_name}"),
                &format!("{name}.{bn_name}"),
            )?;
            for (s, c) in stride.iter_mut().zip(conv.stride) {
                *s = s.saturating_mul(c);
            }
        }
        let (shortcut_channels, shortcut_stride, layer) = match (self.downsample(), self.zero_pad()) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidNetwork {
                    layer: name.to_string(),
                    what: "the block has both a projection and a zero-padded shortcut; keep one".into(),
                });
            }
            (None, Some(zp)) => {
                let layer = format!("{name} (zero-padded shortcut)");
                if zp.out_channels < in_channels {
                    return Err(Error::InvalidNetwork {
                        layer,
                        what: format!(
                            "{} output channel(s) from {in_channels} input channel(s): the zero-padded shortcut only adds channels",
                            zp.out_channels
                        ),
                    });
                }
                (zp.out_channels, zp.stride, layer)
            }
            (Some(ds), None) => {
                let conv_name = format!("{name}.downsample.0");
                let out = check_conv_bn(
                    &ds.conv,
                    &ds.bn,
                    in_channels,
                    &conv_name,
                    &format!("{name}.downsample.1"),
                )?;
                (out, ds.conv.stride, conv_name)
            }
            (None, None) => (in_channels, [1, 1, 1], format!("{name} (identity shortcut)")),
        };
        if shortcut_channels != channels || shortcut_stride != stride {
            return Err(Error::InvalidNetwork {
                layer,
                what: format!(
                    "the shortcut gives {shortcut_channels} channel(s) at stride {shortcut_stride:?}, the main branch {channels} at stride {stride:?}"
                ),
            });
        }
        Ok(channels)
    }

    /// The block's output shape for an input of shape `dims` (`[N, C, D, H, W]`), with the
    /// shortcut's shape checked against the main branch's.
    pub(crate) fn output_dims(&self, dims: [usize; 5], name: &str) -> Result<[usize; 5]> {
        let mut main = dims;
        for (conv, _, conv_name, _) in self.main_branch() {
            main = conv.output_dims(main, &format!("{name}.{conv_name}"))?;
        }
        let shortcut = match (self.downsample(), self.zero_pad()) {
            (Some(ds), _) => ds.conv.output_dims(dims, &format!("{name}.downsample.0"))?,
            (None, Some(zp)) => zp.output_dims(dims, name)?,
            (None, None) => dims,
        };
        if main != shortcut {
            return Err(Error::InvalidNetwork {
                layer: name.to_string(),
                what: format!(
                    "on an input of shape {dims:?} the main branch gives {main:?} and the shortcut {shortcut:?}"
                ),
            });
        }
        Ok(main)
    }
}
