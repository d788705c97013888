//! The kinds a network is made of: block kinds, shortcuts, depth padding, inflation rules,
//! layouts, and what a stage's features are. Plain data, no tensors.

use std::fmt;

use burn::config::Config;

/// The residual block a ResNet is built from.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18 and -34).
    Basic,
    /// 1x1, 3x3, 1x1 convolutions with 4x channel expansion (ResNet-50, -101, -152).
    Bottleneck,
    /// Two factorised "(2+1)-D" convolutions (torchvision's R(2+1)D): each 3x3x3 becomes a
    /// 1x3x3 convolution to `mid = in * out * 27 / (9 * in + 3 * out)` channels (rounded
    /// down; `in` and `out` the block's, for both convolutions), BatchNorm, ReLU, then a
    /// 3x1x1 convolution (depth `block_depth_kernel`) that carries the depth stride.
    Basic2Plus1d,
}

impl BlockKind {
    /// Output channels of a block per channel of its inner width.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic | BlockKind::Basic2Plus1d => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    /// torchvision's class name: `BasicBlock` or `Bottleneck`.
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Basic => "BasicBlock",
            BlockKind::Bottleneck => "Bottleneck",
            BlockKind::Basic2Plus1d => "BasicBlock (2+1)D",
        }
    }
}

/// How the depth axis is padded by every convolution.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum DepthPadding {
    /// Zeros, as PyTorch's `Conv3d`. Slices near the volume's first and last slice then see
    /// less signal than the 2-D network saw.
    Zeros,
    /// Copies of the first and last slice. An inflated network then reproduces the 2-D
    /// network exactly on a volume that is constant along depth, borders included.
    Replicate,
}

/// The shortcut of a block whose output differs from its input in channels or size.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Shortcut {
    /// A strided 1x1x1 convolution and BatchNorm (`downsample.0`, `downsample.1`): the
    /// "type B" shortcut of torchvision and most model zoos.
    Projection,
    /// Parameter-free ("type A", MedicalNet's ResNet-18 and -34): the input taken at the
    /// block's stride (every `stride`-th voxel from the first), its channels followed by zero
    /// channels up to the block's output width.
    ZeroPad,
}

/// How a 2-D kernel `W2[o, i, h, w]` becomes a 3-D kernel `W3[o, i, t, h, w]` of depth `T`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Inflation {
    /// I3D's rule: `W3[:, :, t] = W2 / T` for every `t`. A depth-constant volume gives the
    /// 2-D response; the kernel already looks at its neighbouring slices.
    Average,
    /// `W3[:, :, T / 2] = W2`, zeros elsewhere: every slice starts as the 2-D network saw it,
    /// and training learns how much to mix in neighbouring slices.
    Center,
    /// ACS convolutions (Yang et al., "Reinventing 2D Convolutions for 3D Images", IEEE JBHI
    /// 2021; ACSConv): every 2-D `k x k` kernel is used unchanged, its output channels split
    /// in three groups of `ceil`-first thirds (`o / 3` each, the remainder to the first
    /// groups: 64 -> 22, 21, 21) that see the axial (`1 x k x k` over depth, height, width),
    /// coronal (`k x 1 x k`) and sagittal (`k x k x 1`) planes. Each group's kernel is placed
    /// in the middle plane of a `k x k x k` kernel, zeros elsewhere, so the network computes
    /// exactly ACSConv's output with ordinary 3-D convolutions (every fast path, training
    /// included), at `k` times ACSConv's multiply-adds for the `k x k` layers. Needs cubic
    /// kernels: `stem_depth_kernel` 7 and block depth kernels 3 (the defaults).
    Acs,
}

impl Inflation {
    /// The sizes of ACS's axial, coronal and sagittal groups of `out_channels` output channels
    /// (ACSConv's default split).
    pub fn acs_split(out_channels: usize) -> [usize; 3] {
        let third = out_channels / 3;
        let rest = out_channels % 3;
        [third + usize::from(rest > 0), third + usize::from(rest > 1), third]
    }
}

/// A ResNet's block kind and number of blocks per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The residual block.
    pub block: BlockKind,
    /// Blocks in `layer1` .. `layer4`.
    pub layers: [usize; 4],
}

impl Layout {
    /// ResNet-18: basic blocks `[2, 2, 2, 2]`.
    pub const RESNET18: Layout = Layout::new(BlockKind::Basic, [2, 2, 2, 2]);
    /// ResNet-34: basic blocks `[3, 4, 6, 3]`.
    pub const RESNET34: Layout = Layout::new(BlockKind::Basic, [3, 4, 6, 3]);
    /// ResNet-50: bottlenecks `[3, 4, 6, 3]`.
    pub const RESNET50: Layout = Layout::new(BlockKind::Bottleneck, [3, 4, 6, 3]);
    /// ResNet-101: bottlenecks `[3, 4, 23, 3]`.
    pub const RESNET101: Layout = Layout::new(BlockKind::Bottleneck, [3, 4, 23, 3]);
    /// ResNet-152: bottlenecks `[3, 8, 36, 3]`.
    pub const RESNET152: Layout = Layout::new(BlockKind::Bottleneck, [3, 8, 36, 3]);

    /// The five torchvision ResNets by depth.
    pub const PRESETS: [(usize, Layout); 5] = [
        (18, Self::RESNET18),
        (34, Self::RESNET34),
        (50, Self::RESNET50),
        (101, Self::RESNET101),
        (152, Self::RESNET152),
    ];

    /// A layout of `block`s with `layers` blocks per stage.
    pub const fn new(block: BlockKind, layers: [usize; 4]) -> Self {
        Self { block, layers }
    }

    /// The layout of ResNet-`depth`, if `depth` is one of 18, 34, 50, 101, 152.
    pub fn preset(depth: usize) -> Option<Layout> {
        Self::PRESETS
            .iter()
            .find(|(d, _)| *d == depth)
            .map(|(_, layout)| *layout)
    }

    /// 18, 34, 50, 101 or 152 for the standard layouts.
    pub fn depth(&self) -> Option<usize> {
        Self::PRESETS.iter().find(|(_, l)| l == self).map(|(d, _)| *d)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.depth() {
            Some(d) => write!(f, "ResNet-{d}: {} {:?}", self.block.name(), self.layers),
            None => write!(f, "non-standard ResNet: {} {:?}", self.block.name(), self.layers),
        }
    }
}

/// One entry of [`ResNet3dConfig::feature_info`](crate::ResNet3dConfig::feature_info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageInfo {
    /// `stem`, `layer1` .. `layer4`: the field of [`Features`](crate::Features).
    pub name: &'static str,
    /// Channels of the feature map.
    pub channels: usize,
    /// Cumulative stride `[depth, height, width]` relative to the input.
    pub stride: [usize; 3],
}

/// `layer1` .. `layer4`: the stages' names in torchvision's naming.
pub(crate) const STAGE_NAMES: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];
