//! The architecture rule, stated once: a [`ResNet3dConfig`] to its [`Plan`].
//!
//! The stem is a 7x7 convolution (`stem_depth_kernel` deep) with stride 2 in-plane and the
//! configured depth stride, or R(2+1)D's factorised pair; the max pool is 3x3 with stride 2,
//! `max_pool_depth_kernel` deep. Stage `i` has blocks of inner width `width * 2^i` and
//! `expansion` times that out; as in torchvision's `_make_layer`, its first block takes the
//! stage's stride and the shortcut where the shape changes (a projection or MedicalNet's zero
//! padding), and the other blocks are alike, with stride 1 and the identity shortcut. Every
//! convolution pads `dilation * (kernel / 2)` per axis. Parameter counts and feature strides
//! are folds over the same stages, counted without listing a stage's alike blocks one by one,
//! so that an absurd block count is an error, not an allocation.

use crate::arch::config::ResNet3dConfig;
use crate::arch::geometry::{ConvGeometry, PoolGeometry, ZeroPadShortcut};
use crate::arch::kinds::{BlockKind, STAGE_NAMES, Shortcut, StageInfo};
use crate::arch::plan::{After, BlockPlan, HeadSpec, LayerName, LayerSpec, Plan, ShortcutPlan, Site};
use crate::error::{Error, Result};

/// The middle channels of a (2+1)-D convolution between `in_channels` and `out_channels`
/// with a depth kernel `kd`: the count that gives it the parameters of the full `kd`x3x3
/// convolution, `in * out * 9 * kd / (9 * in + kd * out)` rounded down (torchvision's formula
/// at `kd = 3`), at least 1; saturating at `usize::MAX` where the product overflows (a width
/// that [`ResNet3dConfig::validate`] refuses).
fn mid_channels(in_channels: usize, out_channels: usize, kd: usize) -> usize {
    let mid = || {
        let num = in_channels.checked_mul(out_channels)?.checked_mul(9)?.checked_mul(kd)?;
        let den = in_channels.checked_mul(9)?.checked_add(kd.checked_mul(out_channels)?)?;
        Some((num / den.max(1)).max(1))
    };
    mid().unwrap_or(usize::MAX)
}

/// A stage before its blocks are listed: the first block, the one its other blocks repeat,
/// and how many blocks there are.
struct StageRule {
    first: BlockPlan,
    rest: BlockPlan,
    blocks: usize,
}

impl StageRule {
    /// The stage's blocks, each at its site.
    fn blocks(&self, stage: usize) -> Vec<BlockPlan> {
        (0..self.blocks)
            .map(|index| {
                let mut block = if index == 0 {
                    self.first.clone()
                } else {
                    self.rest.clone()
                };
                let site = Site::Block { stage, index };
                block.site = site;
                block.main.iter_mut().for_each(|l| l.name.site = site);
                if let ShortcutPlan::Projection(l) = &mut block.shortcut {
                    l.name.site = site;
                }
                block
            })
            .collect()
    }

    /// The stage's parameters: the first block, then `blocks - 1` alike ones.
    fn parameters(&self) -> Option<usize> {
        let rest = self.rest.parameters()?.checked_mul(self.blocks.saturating_sub(1))?;
        self.first.parameters()?.checked_add(rest)
    }
}

/// A layer of the rule; sites are set when the stage's blocks are listed.
fn layer(conv: &'static str, norm: &'static str, geometry: ConvGeometry, after: After) -> LayerSpec {
    LayerSpec {
        name: LayerName {
            site: Site::Stem,
            conv,
            norm,
        },
        geometry,
        after,
    }
}

impl ResNet3dConfig {
    /// A convolution of this network: torchvision's padding, the configured depth padding.
    fn conv(&self, channels: [usize; 2], kernel: [usize; 3], stride: [usize; 3], dilation: [usize; 3]) -> ConvGeometry {
        ConvGeometry::same(channels[0], channels[1], kernel, stride, dilation, self.depth_padding)
    }

    /// The stem's layers.
    fn stem_plan(&self) -> Vec<LayerSpec> {
        let (kd, sd) = (self.stem_depth_kernel, self.stem_depth_stride);
        if self.factorised_stem {
            // R(2+1)D's stem: 1x7x7 to 45/64 of the width, then kd x1x1 to the width.
            let mid = (self.width.saturating_mul(45) / 64).max(1);
            vec![
                layer(
                    "conv1",
                    "bn1",
                    self.conv([self.in_channels, mid], [1, 7, 7], [1, 2, 2], [1; 3]),
                    After::Relu,
                ),
                layer(
                    "stem_temporal.conv",
                    "stem_temporal.bn",
                    self.conv([mid, self.width], [kd, 1, 1], [sd, 1, 1], [1; 3]),
                    After::Relu,
                ),
            ]
        } else {
            vec![layer(
                "conv1",
                "bn1",
                self.conv([self.in_channels, self.width], [kd, 7, 7], [sd, 2, 2], [1; 3]),
                After::Relu,
            )]
        }
    }

    /// The max pool after the stem.
    fn max_pool_plan(&self) -> Option<PoolGeometry> {
        let kd = self.max_pool_depth_kernel;
        self.max_pool.then_some(PoolGeometry {
            kernel: [kd, 3, 3],
            stride: [self.max_pool_depth_stride, 2, 2],
            padding: [kd / 2, 1, 1],
        })
    }

    /// A block of stage `stage` on `in_channels`, of inner width `planes`, with `stride`.
    fn block_plan(&self, stage: usize, in_channels: usize, planes: usize, stride: [usize; 3]) -> BlockPlan {
        let kind = self.block;
        let out = planes.saturating_mul(kind.expansion());
        let kd = self.block_depth_kernel_of(stage);
        let d = self.stage_dilations[stage];
        let one = [1; 3];
        let main = match kind {
            BlockKind::Basic => vec![
                layer(
                    "conv1",
                    "bn1",
                    self.conv([in_channels, planes], [kd, 3, 3], stride, [d; 3]),
                    After::Relu,
                ),
                layer(
                    "conv2",
                    "bn2",
                    self.conv([planes, planes], [kd, 3, 3], one, [d; 3]),
                    After::AddRelu,
                ),
            ],
            BlockKind::Bottleneck => {
                // torchvision's v1.5 strides the 3x3; ResNet v1 the first 1x1.
                let (s1, s2) = if self.stride_in_1x1 {
                    (stride, one)
                } else {
                    (one, stride)
                };
                vec![
                    layer(
                        "conv1",
                        "bn1",
                        self.conv([in_channels, planes], one, s1, one),
                        After::Relu,
                    ),
                    layer(
                        "conv2",
                        "bn2",
                        self.conv([planes, planes], [kd, 3, 3], s2, [d; 3]),
                        After::Relu,
                    ),
                    layer("conv3", "bn3", self.conv([planes, out], one, one, one), After::AddRelu),
                ]
            }
            BlockKind::Basic2Plus1d => {
                // torchvision's rule: both factorised convolutions of a block get the middle
                // width of the block's input and output channels.
                let mid = mid_channels(in_channels, planes, kd);
                let [sd, sh, sw] = stride;
                let spatial = |i: usize, s: [usize; 3]| self.conv([i, mid], [1, 3, 3], s, [1, d, d]);
                let temporal = |s: [usize; 3]| self.conv([mid, planes], [kd, 1, 1], s, [d, 1, 1]);
                vec![
                    layer(
                        "conv1.spatial",
                        "conv1.bn",
                        spatial(in_channels, [1, sh, sw]),
                        After::Relu,
                    ),
                    layer("conv1.temporal", "bn1", temporal([sd, 1, 1]), After::Relu),
                    layer("conv2.spatial", "conv2.bn", spatial(planes, one), After::Relu),
                    layer("conv2.temporal", "bn2", temporal(one), After::AddRelu),
                ]
            }
        };
        let reshapes = stride != one || in_channels != out;
        let shortcut = match (reshapes, self.shortcut) {
            (false, _) => ShortcutPlan::Identity,
            (true, Shortcut::Projection) => ShortcutPlan::Projection(layer(
                "downsample.0",
                "downsample.1",
                self.conv([in_channels, out], one, stride, one),
                After::Nothing,
            )),
            (true, Shortcut::ZeroPad) => ShortcutPlan::ZeroPad(ZeroPadShortcut {
                stride,
                out_channels: out,
            }),
        };
        BlockPlan {
            kind,
            site: Site::Stem,
            main,
            shortcut,
        }
    }

    /// The four stages before their blocks are listed (saturating channel counts: a config
    /// whose counts overflow has a parameter count that does, and is refused for it).
    fn stage_rules(&self) -> [StageRule; 4] {
        let mut in_channels = self.width;
        [0, 1, 2, 3].map(|stage| {
            let planes = self.width.saturating_mul(1 << stage);
            let spatial = self.stage_strides[stage];
            let stride = [self.stage_depth_strides[stage], spatial, spatial];
            let first = self.block_plan(stage, in_channels, planes, stride);
            in_channels = first.out_channels();
            StageRule {
                rest: self.block_plan(stage, in_channels, planes, [1; 3]),
                first,
                blocks: self.layers[stage],
            }
        })
    }

    /// The head on the last stage's features.
    fn head_plan(&self, features: usize) -> Option<HeadSpec> {
        self.num_classes.map(|classes| HeadSpec { features, classes })
    }

    /// The network this configuration describes, as data: every layer with its names (the
    /// checkpoint's keys), geometry and what follows it. What [`init`](Self::init) builds and
    /// what [`ResNet3d::plan`](crate::ResNet3d::plan) reads back from a built network.
    ///
    /// ```
    /// use resnet3d::{After, ResNet3dConfig, ShortcutPlan};
    ///
    /// let plan = ResNet3dConfig::resnet50().with_in_channels(1).plan()?;
    /// let first = &plan.stages[1][0]; // layer2.0
    /// assert_eq!(first.main[1].name.conv_path(), "layer2.0.conv2");
    /// assert_eq!(first.main[1].geometry.stride, [2, 2, 2]);
    /// assert_eq!(first.main[2].after, After::AddRelu);
    /// assert!(matches!(&first.shortcut, ShortcutPlan::Projection(p) if p.name.norm_path() == "layer2.0.downsample.1"));
    /// assert_eq!(plan.parameter_count(), ResNet3dConfig::resnet50().with_in_channels(1).parameter_count());
    /// # Ok::<(), resnet3d::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn plan(&self) -> Result<Plan> {
        self.validate()?;
        let rules = self.stage_rules();
        let features = rules[3].first.out_channels();
        Ok(Plan {
            stem: self.stem_plan(),
            max_pool: self.max_pool_plan(),
            stages: [0, 1, 2, 3].map(|stage| rules[stage].blocks(stage)),
            head: self.head_plan(features),
        })
    }

    /// The number of learnable parameters (kernels, BatchNorm scales and shifts, the head),
    /// or `None` if it does not fit in `usize`. PyTorch's
    /// `sum(p.numel() for p in model.parameters())` of the same network.
    pub fn parameter_count(&self) -> Option<usize> {
        let rules = self.stage_rules();
        let stem = self
            .stem_plan()
            .iter()
            .try_fold(0usize, |acc, l| acc.checked_add(l.parameters()?))?;
        let stages = rules
            .iter()
            .try_fold(stem, |acc, rule| acc.checked_add(rule.parameters()?))?;
        match self.head_plan(rules[3].first.out_channels()) {
            Some(head) => stages.checked_add(head.features.checked_add(1)?.checked_mul(head.classes)?),
            None => Some(stages),
        }
    }

    /// Channels of the pooled features: what the head sees (saturating at `usize::MAX` for a
    /// width that [`validate`](Self::validate) refuses).
    pub fn feature_channels(&self) -> usize {
        self.stage_rules()[3].first.out_channels()
    }

    /// Channels and cumulative stride per axis of the stem and of every stage: what a
    /// decoder built on [`ResNet3d::features`](crate::ResNet3d::features) needs to know.
    ///
    /// Strides are `[depth, height, width]`: with the defaults the stem is at `[2, 2, 2]`,
    /// `layer1` at `[4, 4, 4]` (after the max pool) and `layer4` at `[32, 32, 32]`
    /// (saturating at `usize::MAX` for strides that [`validate`](Self::validate) refuses).
    pub fn feature_info(&self) -> [StageInfo; 5] {
        let times = |a: [usize; 3], b: [usize; 3]| [0, 1, 2].map(|i| a[i].saturating_mul(b[i]));
        let stem = self.stem_plan();
        let mut stride = stem.iter().fold([1; 3], |acc, l| times(acc, l.geometry.stride));
        let mut stages = [StageInfo {
            name: "stem",
            channels: stem.last().map_or(0, |l| l.geometry.out_channels),
            stride,
        }; 5];
        if let Some(pool) = self.max_pool_plan() {
            stride = times(stride, pool.stride);
        }
        for (i, rule) in self.stage_rules().iter().enumerate() {
            stride = times(stride, rule.first.stride());
            stages[i + 1] = StageInfo {
                name: STAGE_NAMES[i],
                channels: rule.first.out_channels(),
                stride,
            };
        }
        stages
    }

    /// Checks every field, and the parameter count they give together; the non-panicking
    /// twin of [`init`](Self::init).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field to change.
    pub fn validate(&self) -> Result<()> {
        self.check_fields()?;
        match self.parameter_count() {
            Some(n) if n <= Self::MAX_PARAMETERS => Ok(()),
            count => Err(Error::InvalidConfig {
                field: "width",
                reason: format!(
                    "with in_channels {}, num_classes {:?}, layers {:?} and depth kernels {}/{} gives {} parameters, more than the {} allowed; ResNet3d-152 at width 64 has about 119 million",
                    self.in_channels,
                    self.num_classes,
                    self.layers,
                    self.stem_depth_kernel,
                    self.block_depth_kernel,
                    count.map_or("more than usize::MAX".to_string(), |n| n.to_string()),
                    Self::MAX_PARAMETERS
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: ResNet3dConfig, field: &str) {
        match config.validate() {
            Err(Error::InvalidConfig { field: f, reason }) => assert_eq!(f, field, "{reason}"),
            other => panic!("expected InvalidConfig on {field}, got {other:?}"),
        }
    }

    #[test]
    fn absurd_sizes_are_refused_not_overflowed() {
        // width * 8 * expansion overflows usize.
        refused(ResNet3dConfig::resnet50().with_width(usize::MAX / 4), "width");
        refused(ResNet3dConfig::resnet18().with_width(1 << 40), "width");
        // Fine per field, too many parameters together.
        refused(ResNet3dConfig::resnet18().with_num_classes(Some(1 << 40)), "width");
        refused(ResNet3dConfig::resnet18().with_in_channels(1 << 30), "width");
        refused(ResNet3dConfig::resnet152().with_block_depth_kernel(4001), "width");
        refused(ResNet3dConfig::new(BlockKind::Basic, [1, 1, 1, 1 << 40]), "width");
        // The cumulative depth stride overflows.
        refused(
            ResNet3dConfig::resnet18().with_stage_depth_strides([1 << 20, 1 << 20, 1 << 20, 1 << 20]),
            "stage_depth_strides",
        );
        // And what feature_info says of a refused config does not panic either.
        let absurd = ResNet3dConfig::resnet50()
            .with_width(usize::MAX / 2)
            .with_stage_depth_strides([usize::MAX; 4]);
        assert_eq!(absurd.feature_info()[4].stride[0], usize::MAX);
        assert_eq!(absurd.feature_channels(), usize::MAX);
    }

    #[test]
    fn parameter_counts_are_torchvisions() {
        // torchvision's resnet18 / resnet50 (2-D, 1000 classes): 11,689,512 and 25,557,032
        // parameters. As 2-D networks here (depth kernels 1) the counts must be the same.
        let count = |c: ResNet3dConfig| c.as_2d().parameter_count().unwrap();
        assert_eq!(count(ResNet3dConfig::resnet18()), 11_689_512);
        assert_eq!(count(ResNet3dConfig::resnet50()), 25_557_032);
        assert_eq!(count(ResNet3dConfig::resnet152()), 60_192_808);
        // Every preset at width 64 fits the limit with room to spare.
        let r152 = ResNet3dConfig::resnet152().parameter_count().unwrap();
        assert!(r152 < ResNet3dConfig::MAX_PARAMETERS / 30, "{r152}");
        ResNet3dConfig::resnet152().with_in_channels(4).validate().unwrap();
    }

    /// The listed plan and the stage-wise count agree, and the plan checks, for every preset
    /// and the settings that change the layers.
    #[test]
    fn the_plan_and_the_counts_agree() {
        let configs = [
            ResNet3dConfig::resnet18(),
            ResNet3dConfig::resnet34().with_shortcut(Shortcut::ZeroPad),
            ResNet3dConfig::resnet50()
                .with_stride_in_1x1(true)
                .with_num_classes(None),
            ResNet3dConfig::resnet101().with_in_channels(1),
            ResNet3dConfig::r2plus1d_18(),
            ResNet3dConfig::mc3_18(),
            ResNet3dConfig::medicalnet(50).unwrap(),
        ];
        for config in configs {
            let plan = config.plan().unwrap();
            plan.check().unwrap();
            assert_eq!(plan.parameter_count(), config.parameter_count(), "{config:?}");
            assert_eq!(plan.stages.each_ref().map(|s| s.len()), config.layers);
            let info = config.feature_info();
            assert_eq!(
                plan.head.map(|h| h.features).unwrap_or(info[4].channels),
                info[4].channels
            );
            assert_eq!(
                plan.output_dims([1, config.in_channels, 64, 64, 64]).unwrap()[1],
                info[4].channels
            );
        }
    }

    /// torchvision's R(2+1)D-18: the middle widths of its (2+1)-D convolutions and its
    /// parameter count (`sum(p.numel() for p in r2plus1d_18().parameters())`, torchvision 0.29.2).
    #[test]
    fn factorised_blocks_have_torchvisions_middle_widths() {
        let plan = ResNet3dConfig::r2plus1d_18().plan().unwrap();
        let mids: Vec<usize> = plan.blocks().map(|b| b.main[0].geometry.out_channels).collect();
        assert_eq!(mids, [144, 144, 230, 288, 460, 576, 921, 1152]);
        assert_eq!(plan.stem[0].geometry.out_channels, 45);
        assert_eq!(plan.parameter_count(), Some(31_505_325));
    }
}
