//! Building a [`ResNet3d`] from its [`Plan`]: each layer's modules come from a
//! [`ParamSource`] (fresh initialisation here, a checkpoint in `weights/load.rs`), asked by the
//! layer's names (torchvision's state-dict keys) and geometry.

use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig};
use burn::tensor::Device;

use crate::arch::config::ResNet3dConfig;
use crate::arch::kinds::BlockKind;
use crate::arch::plan::{BlockPlan, ShortcutPlan};
use crate::arch::plan::{LayerSpec, Plan};

use crate::error::{Error, Result};
use crate::model::block::{BasicBlock3d, Block, Block2Plus1d, Bottleneck3d, Conv2Plus1d, Downsample};
use crate::model::conv::{Conv, or_panic};
use crate::model::network::{ResNet3d, TemporalStem};
use crate::model::pool::MaxPool3d;

/// Where the network's parameters come from while it is built: fresh initialisation, or a
/// checkpoint (see `weights/load.rs`).
pub(crate) trait ParamSource {
    /// The stem's first convolution `conv1`, whose input channels follow the data.
    fn stem(&mut self, spec: &LayerSpec) -> Conv {
        self.conv(spec)
    }
    /// A convolution, named `spec.name.conv_path()`.
    fn conv(&mut self, spec: &LayerSpec) -> Conv;
    /// A BatchNorm over `channels`, named `name`.
    fn batch_norm(&mut self, name: &str, channels: usize) -> BatchNorm;
    /// The head `fc`: `d_input` features to `classes` logits.
    fn head(&mut self, d_input: usize, classes: usize) -> Linear;

    /// A layer's convolution and BatchNorm.
    fn layer(&mut self, spec: &LayerSpec) -> (Conv, BatchNorm) {
        let conv = self.conv(spec);
        (
            conv,
            self.batch_norm(&spec.name.norm_path(), spec.geometry.out_channels),
        )
    }
}

/// torchvision's initialisation: Kaiming-normal (fan-out) convolutions, BatchNorm at the identity.
pub(crate) struct FreshInit<'a> {
    pub device: &'a Device,
}

impl ParamSource for FreshInit<'_> {
    fn conv(&mut self, spec: &LayerSpec) -> Conv {
        let g = &spec.geometry;
        let receptive: usize = g.kernel.iter().product();
        let init = Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        };
        let weight = init.init_with(
            g.weight_shape(),
            Some(g.in_channels * receptive),
            Some(g.out_channels * receptive),
            self.device,
        );
        g.build(weight)
    }

    fn batch_norm(&mut self, _name: &str, channels: usize) -> BatchNorm {
        BatchNormConfig::new(channels).init(self.device)
    }

    fn head(&mut self, d_input: usize, classes: usize) -> Linear {
        LinearConfig::new(d_input, classes).init(self.device)
    }
}

/// The modules of one layer, as a [`ParamSource`] gives them.
type Layer = (Conv, BatchNorm);

impl Block {
    /// The block `plan` describes, asking `source` for every layer in the plan's order.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] if the plan's layers are not those of its block kind (a plan
    /// made by the rule always fits).
    pub(crate) fn build(plan: &BlockPlan, source: &mut impl ParamSource) -> Result<Self> {
        let mut main: Vec<Layer> = plan.main.iter().map(|spec| source.layer(spec)).collect();
        let (downsample, zero_pad) = match &plan.shortcut {
            ShortcutPlan::Identity => (None, None),
            ShortcutPlan::Projection(spec) => {
                let (conv, bn) = source.layer(spec);
                (Some(Downsample { conv, bn }), None)
            }
            ShortcutPlan::ZeroPad(zp) => (None, Some(*zp)),
        };
        let mut next = || -> Result<Layer> {
            if main.is_empty() {
                return Err(Error::InvalidNetwork {
                    layer: plan.site.to_string(),
                    what: format!("too few layers for a {} block", plan.kind.name()),
                });
            }
            Ok(main.remove(0))
        };
        let block = match plan.kind {
            BlockKind::Basic => {
                let ((conv1, bn1), (conv2, bn2)) = (next()?, next()?);
                Block::Basic(BasicBlock3d {
                    conv1,
                    bn1,
                    conv2,
                    bn2,
                    downsample,
                    zero_pad,
                })
            }
            BlockKind::Bottleneck => {
                let ((conv1, bn1), (conv2, bn2), (conv3, bn3)) = (next()?, next()?, next()?);
                Block::Bottleneck(Bottleneck3d {
                    conv1,
                    bn1,
                    conv2,
                    bn2,
                    conv3,
                    bn3,
                    downsample,
                    zero_pad,
                })
            }
            BlockKind::Basic2Plus1d => {
                let ((spatial1, mid1), (temporal1, bn1)) = (next()?, next()?);
                let ((spatial2, mid2), (temporal2, bn2)) = (next()?, next()?);
                Block::Factorised(Block2Plus1d {
                    conv1: Conv2Plus1d {
                        spatial: spatial1,
                        bn: mid1,
                        temporal: temporal1,
                    },
                    bn1,
                    conv2: Conv2Plus1d {
                        spatial: spatial2,
                        bn: mid2,
                        temporal: temporal2,
                    },
                    bn2,
                    downsample,
                    zero_pad,
                })
            }
        };
        if !main.is_empty() {
            return Err(Error::InvalidNetwork {
                layer: plan.site.to_string(),
                what: format!("too many layers for a {} block", plan.kind.name()),
            });
        }
        Ok(block)
    }
}

impl ResNet3dConfig {
    /// A network with fresh weights (torchvision's initialisation).
    ///
    /// # Panics
    /// If the configuration is invalid; the message names the field. Call
    /// [`validate`](Self::validate) first to get the [`Error`](crate::Error) instead.
    pub fn init(&self, device: &Device) -> ResNet3d {
        or_panic(
            self.plan()
                .and_then(|plan| ResNet3d::build(&plan, &mut FreshInit { device })),
        )
    }
}

impl ResNet3d {
    /// The network `plan` describes, asking `source` for every parameter.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`](crate::Error::InvalidNetwork) for a plan whose stem or blocks
    /// do not have the layers of their kind (a plan made by the rule always fits).
    pub(crate) fn build(plan: &Plan, source: &mut impl ParamSource) -> Result<Self> {
        let mut stem = plan.stem.iter();
        let Some(first) = stem.next() else {
            return Err(Error::InvalidNetwork {
                layer: "conv1".into(),
                what: "a plan without a stem".into(),
            });
        };
        let conv1 = source.stem(first);
        let bn1 = source.batch_norm(&first.name.norm_path(), first.geometry.out_channels);
        let stem_temporal = stem.next().map(|spec| {
            let (conv, bn) = source.layer(spec);
            TemporalStem { conv, bn }
        });
        let maxpool = plan.max_pool.map(|pool| MaxPool3d {
            kernel_size: pool.kernel,
            stride: pool.stride,
            padding: pool.padding,
        });
        let mut stages: [Vec<Block>; 4] = Default::default();
        for (blocks, stage) in stages.iter_mut().zip(&plan.stages) {
            *blocks = stage.iter().map(|b| Block::build(b, source)).collect::<Result<_>>()?;
        }
        let [layer1, layer2, layer3, layer4] = stages;
        let fc = plan.head.map(|head| source.head(head.features, head.classes));
        Ok(Self {
            conv1,
            bn1,
            stem_temporal,
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            fc,
        })
    }
}
