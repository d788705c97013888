//! The residual blocks as Burn modules: [`BasicBlock3d`] (ResNet-18/34), [`Bottleneck3d`]
//! (ResNet-50/101/152), [`Block2Plus1d`] (R(2+1)D) and the [`Downsample`] shortcut. Field
//! names are torchvision's state-dict keys.
//!
//! A block kind's meaning is its [`BlockPlan`] (the rule in `arch/rule.rs`); this file reads
//! a block's modules back as its plan ([`Block::plan`]), and `build.rs` makes the modules of a
//! plan. Everything else (forward, checks, shapes, freezing) walks the plan.

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::{Slice, Tensor};

use crate::arch::geometry::ZeroPadShortcut;
use crate::arch::kinds::BlockKind;
use crate::arch::plan::{After, BlockPlan, LayerName, ShortcutPlan, Site};
use crate::arch::walk;
use crate::error::{Error, Result};
use crate::model::conv::{Conv, or_panic};
use crate::model::engine::{Burn, ModelLayer};
use crate::model::norm::conv_batch_norm;

impl ZeroPadShortcut {
    /// # Shapes
    /// `[N, in, D, H, W]` -> `[N, out_channels, ceil(D / sd), ceil(H / sh), ceil(W / sw)]`
    ///
    /// # Panics
    /// Where [`output_dims`](Self::output_dims) refuses the shortcut on `x` (a stride of 0 or
    /// beyond what an index holds, fewer output channels than input ones), with its message.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        or_panic(self.output_dims(x.dims(), "zero-padded shortcut"));
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
    ///
    /// # Panics
    /// If the convolution's geometry does not compute on `x`, with its message.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let name = LayerName {
            site: Site::Detached,
            conv: "downsample.0",
            norm: "downsample.1",
        };
        or_panic(conv_batch_norm(&self.conv, &self.bn, &name, x, false, None))
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
    /// Parameter-free shortcut where the shape changes ([`Shortcut::ZeroPad`](crate::Shortcut::ZeroPad)).
    #[module(skip)]
    pub zero_pad: Option<ZeroPadShortcut>,
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
    /// Parameter-free shortcut where the shape changes ([`Shortcut::ZeroPad`](crate::Shortcut::ZeroPad)).
    #[module(skip)]
    pub zero_pad: Option<ZeroPadShortcut>,
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
    /// Parameter-free shortcut where the shape changes ([`Shortcut::ZeroPad`](crate::Shortcut::ZeroPad)).
    #[module(skip)]
    pub zero_pad: Option<ZeroPadShortcut>,
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
    /// The block's layers as a plan, read from its modules (at `site`, for names). The
    /// geometry is the modules' own, checked with the rest of the plan.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for a BatchNorm that is not as wide as its convolution, or a
    /// block with both a projection and a zero-padded shortcut.
    pub(crate) fn plan(&self, site: Site) -> Result<BlockPlan<ModelLayer<'_>>> {
        match self {
            Block::Basic(b) => b.plan(site),
            Block::Bottleneck(b) => b.plan(site),
            Block::Factorised(b) => b.plan(site),
        }
    }

    /// The block on its own.
    ///
    /// # Shapes
    /// `[N, in, D, H, W]` -> `[N, out, D / sd, H / sh, W / sw]`
    ///
    /// # Panics
    /// If the block's layers do not fit together or do not take `x`, with the error's message.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        or_panic(self.try_forward(x))
    }

    /// [`forward`](Self::forward), or an error where the block's layers do not fit together
    /// or do not take `x`.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] or [`Error::InvalidInput`] naming the layer.
    pub fn try_forward(&self, x: Tensor<5>) -> Result<Tensor<5>> {
        run(self.plan(Site::Detached)?, x)
    }
}

/// `plan` on `x`: its shapes checked on `x` (every layer's geometry, the shortcut against the
/// main chain), then the walk.
fn run(plan: BlockPlan<ModelLayer<'_>>, x: Tensor<5>) -> Result<Tensor<5>> {
    plan.output_dims(x.dims())?;
    walk::block(&Burn::default(), &plan, x)
}

/// The layer `conv`/`norm` of the block at `site`.
fn layer<'a>(
    site: Site,
    (conv, norm): (&'static str, &'static str),
    after: After,
    modules: (&'a Conv, &'a BatchNorm),
) -> Result<ModelLayer<'a>> {
    ModelLayer::new(LayerName { site, conv, norm }, after, modules.0, modules.1)
}

/// A block's plan from its main chain and shortcut modules.
fn block_plan<'a>(
    kind: BlockKind,
    site: Site,
    main: Vec<ModelLayer<'a>>,
    downsample: &'a Option<Downsample>,
    zero_pad: &Option<ZeroPadShortcut>,
) -> Result<BlockPlan<ModelLayer<'a>>> {
    let shortcut = match (downsample, zero_pad) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidNetwork {
                layer: site.to_string(),
                what: "the block has both a projection and a zero-padded shortcut; keep one".into(),
            });
        }
        (Some(ds), None) => ShortcutPlan::Projection(layer(
            site,
            ("downsample.0", "downsample.1"),
            After::Nothing,
            (&ds.conv, &ds.bn),
        )?),
        (None, Some(zp)) => ShortcutPlan::ZeroPad(*zp),
        (None, None) => ShortcutPlan::Identity,
    };
    Ok(BlockPlan {
        kind,
        site,
        main,
        shortcut,
    })
}

impl BasicBlock3d {
    fn plan(&self, site: Site) -> Result<BlockPlan<ModelLayer<'_>>> {
        let main = vec![
            layer(site, ("conv1", "bn1"), After::Relu, (&self.conv1, &self.bn1))?,
            layer(site, ("conv2", "bn2"), After::AddRelu, (&self.conv2, &self.bn2))?,
        ];
        block_plan(BlockKind::Basic, site, main, &self.downsample, &self.zero_pad)
    }
}

impl Bottleneck3d {
    fn plan(&self, site: Site) -> Result<BlockPlan<ModelLayer<'_>>> {
        let main = vec![
            layer(site, ("conv1", "bn1"), After::Relu, (&self.conv1, &self.bn1))?,
            layer(site, ("conv2", "bn2"), After::Relu, (&self.conv2, &self.bn2))?,
            layer(site, ("conv3", "bn3"), After::AddRelu, (&self.conv3, &self.bn3))?,
        ];
        block_plan(BlockKind::Bottleneck, site, main, &self.downsample, &self.zero_pad)
    }
}

impl Block2Plus1d {
    fn plan(&self, site: Site) -> Result<BlockPlan<ModelLayer<'_>>> {
        let (c1, c2) = (&self.conv1, &self.conv2);
        let main = vec![
            layer(site, ("conv1.spatial", "conv1.bn"), After::Relu, (&c1.spatial, &c1.bn))?,
            layer(site, ("conv1.temporal", "bn1"), After::Relu, (&c1.temporal, &self.bn1))?,
            layer(site, ("conv2.spatial", "conv2.bn"), After::Relu, (&c2.spatial, &c2.bn))?,
            layer(
                site,
                ("conv2.temporal", "bn2"),
                After::AddRelu,
                (&c2.temporal, &self.bn2),
            )?,
        ];
        block_plan(BlockKind::Basic2Plus1d, site, main, &self.downsample, &self.zero_pad)
    }
}

macro_rules! block_forward {
    ($($kind:ident),*) => {$(
        impl $kind {
            /// The block on its own ([`Block::forward`]).
            ///
            /// # Shapes
            /// `[N, in, D, H, W]` -> `[N, out, D / sd, H / sh, W / sw]`
            ///
            /// # Panics
            /// As [`Block::forward`].
            pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
                or_panic(self.try_forward(x))
            }

            /// [`forward`](Self::forward), or an error ([`Block::try_forward`]).
            ///
            /// # Errors
            /// As [`Block::try_forward`].
            pub fn try_forward(&self, x: Tensor<5>) -> Result<Tensor<5>> {
                run(self.plan(Site::Detached)?, x)
            }
        }
    )*};
}

block_forward!(BasicBlock3d, Bottleneck3d, Block2Plus1d);
