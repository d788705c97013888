//! [`ResNet3d`]: stem, `layer1` .. `layer4`, optional head.

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::block::{Block, BlockSpec, check_conv_bn};
use crate::config::ResNet3dConfig;
use crate::conv::{Conv, ConvSpec};
use crate::norm::conv_batch_norm;
use crate::pool::MaxPool3d;

/// A 3-D ResNet in torchvision's layout: field names are torchvision's state-dict keys.
///
/// Build one with [`ResNet3dConfig::init`] (random weights),
/// [`ResNet3d::from_imagenet`] (inflated 2-D ImageNet weights) or
/// [`ResNet3d::from_checkpoint`] (a native 3-D checkpoint).
#[derive(Module, Debug)]
pub struct ResNet3d {
    /// The stem: a 7x7 convolution (`stem_depth_kernel` deep) with stride 2.
    pub conv1: Conv,
    /// BatchNorm after the stem.
    pub bn1: BatchNorm,
    /// The depth half of a factorised (R(2+1)D) stem, after `conv1` (then 1x7x7) and `bn1`.
    pub stem_temporal: Option<TemporalStem>,
    /// 3x3 stride-2 max pool (`max_pool_depth_kernel` deep), if configured.
    pub maxpool: Option<MaxPool3d>,
    /// Stage 1: `width` channels, spatial stride 1.
    pub layer1: Vec<Block>,
    /// Stage 2: `2 * width` channels (times 4 for bottlenecks), spatial stride 2.
    pub layer2: Vec<Block>,
    /// Stage 3: `4 * width` channels (times 4 for bottlenecks), spatial stride 2.
    pub layer3: Vec<Block>,
    /// Stage 4: `8 * width` channels (times 4 for bottlenecks), spatial stride 2.
    pub layer4: Vec<Block>,
    /// Linear classifier on the globally averaged features, if `num_classes` is set.
    pub fc: Option<Linear>,
}

/// The depth convolution of a factorised stem and its BatchNorm (torchvision's R(2+1)D
/// `stem.3` and `stem.4`).
#[derive(Module, Debug)]
pub struct TemporalStem {
    /// `stem_depth_kernel`x1x1 convolution with the stem's depth stride.
    pub conv: Conv,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

/// Every stage's output, for segmentation decoders and feature extraction.
///
/// [`ResNet3dConfig::feature_info`] gives each map's channels and stride per axis. A small
/// U-Net-style decoder on top of the encoder: upsample, concatenate the skip connection,
/// mix with a 1x1x1 convolution, down to one logit map per class at the input's size.
///
/// ```
/// use resnet3d::burn::nn::conv::{Conv3d, Conv3dConfig};
/// use resnet3d::burn::tensor::{Device, Tensor};
/// use resnet3d::ResNet3dConfig;
///
/// /// Nearest-neighbour upsampling by an integer factor per axis.
/// fn upsample(x: Tensor<5>, [fd, fh, fw]: [usize; 3]) -> Tensor<5> {
///     let [n, c, d, h, w] = x.dims();
///     x.reshape([n, c, d, 1, h, 1, w, 1])
///         .repeat_dim(3, fd)
///         .repeat_dim(5, fh)
///         .repeat_dim(7, fw)
///         .reshape([n, c, d * fd, h * fh, w * fw])
/// }
///
/// let device = Device::flex();
/// let config = ResNet3dConfig::resnet18().with_width(8).with_in_channels(1).with_num_classes(None);
/// let encoder = config.init(&device);
/// let info = config.feature_info(); // stem, layer1 .. layer4
///
/// // Deepest first: mix layer4 + layer3, then + layer2, + layer1, + stem.
/// let mut mixers: Vec<Conv3d> = Vec::new();
/// let mut channels = info[4].channels;
/// for skip in info[..4].iter().rev() {
///     mixers.push(Conv3dConfig::new([channels + skip.channels, skip.channels], [1, 1, 1]).init(&device));
///     channels = skip.channels;
/// }
/// let classes = 3;
/// let head = Conv3dConfig::new([channels, classes], [1, 1, 1]).init(&device);
///
/// let volume = Tensor::<5>::zeros([1, 1, 32, 64, 64], &device);
/// let f = encoder.features(volume);
/// let skips = [f.layer3, f.layer2, f.layer1, f.stem];
/// let mut x = f.layer4;
/// for (k, (skip, mixer)) in skips.into_iter().zip(&mixers).enumerate() {
///     let (deep, shallow) = (info[4 - k].stride, info[3 - k].stride);
///     let up = upsample(x, [0, 1, 2].map(|a| deep[a] / shallow[a]));
///     x = mixer.forward(Tensor::cat(vec![up, skip], 1));
/// }
/// let logits = head.forward(upsample(x, info[0].stride));
/// assert_eq!(logits.dims(), [1, classes, 32, 64, 64]);
/// ```
#[derive(Debug, Clone)]
pub struct Features {
    /// After `conv1`, `bn1` and ReLU, before the max pool: `[N, width, D/2, H/2, W/2]`
    /// with the default strides.
    pub stem: Tensor<5>,
    /// Output of `layer1`.
    pub layer1: Tensor<5>,
    /// Output of `layer2`.
    pub layer2: Tensor<5>,
    /// Output of `layer3`.
    pub layer3: Tensor<5>,
    /// Output of `layer4`.
    pub layer4: Tensor<5>,
}

/// Where the network's parameters come from while it is built: fresh initialisation, or a
/// checkpoint (see `load.rs`). Names are torchvision's state-dict prefixes (`layer1.0.conv1`).
pub(crate) trait ParamSource {
    /// The stem convolution `conv1`, whose input channels follow the data.
    fn stem(&mut self, spec: ConvSpec) -> Conv {
        self.conv("conv1", spec)
    }
    /// A convolution.
    fn conv(&mut self, name: &str, spec: ConvSpec) -> Conv;
    /// A BatchNorm over `channels`.
    fn batch_norm(&mut self, name: &str, channels: usize) -> BatchNorm;
    /// The head `fc`: `d_input` features to `classes` logits.
    fn head(&mut self, d_input: usize, classes: usize) -> Linear;
}

/// torchvision's initialisation: Kaiming-normal (fan-out) convolutions, BatchNorm at the identity.
pub(crate) struct FreshInit<'a> {
    pub device: &'a Device,
}

impl ParamSource for FreshInit<'_> {
    fn conv(&mut self, _name: &str, spec: ConvSpec) -> Conv {
        let shape = spec.weight_shape();
        let receptive: usize = spec.kernel.iter().product();
        let init = Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        };
        let weight = init.init_with(
            shape,
            Some(spec.in_channels * receptive),
            Some(spec.out_channels * receptive),
            self.device,
        );
        spec.build(weight)
    }

    fn batch_norm(&mut self, _name: &str, channels: usize) -> BatchNorm {
        BatchNormConfig::new(channels).init(self.device)
    }

    fn head(&mut self, d_input: usize, classes: usize) -> Linear {
        LinearConfig::new(d_input, classes).init(self.device)
    }
}

impl ResNet3dConfig {
    /// A network with fresh weights (torchvision's initialisation).
    ///
    /// # Panics
    /// If the configuration is invalid; the message names the field. Call
    /// [`validate`](Self::validate) first to get the [`Error`](crate::Error) instead.
    pub fn init(&self, device: &Device) -> ResNet3d {
        if let Err(err) = self.validate() {
            panic!("{err}");
        }
        ResNet3d::build(self, &mut FreshInit { device })
    }
}

impl ResNet3d {
    /// Builds the architecture of `config`, asking `source` for every parameter.
    pub(crate) fn build(config: &ResNet3dConfig, source: &mut impl ParamSource) -> Self {
        let width = config.width;
        let (conv1, bn1, stem_temporal) = if config.factorised_stem {
            let mid = config.stem_mid_channels();
            let conv1 = source.stem(ConvSpec {
                in_channels: config.in_channels,
                out_channels: mid,
                kernel: [1, 7, 7],
                stride: [1, 2, 2],
                depth_padding: config.depth_padding,
                dilation: [1, 1, 1],
            });
            let bn1 = source.batch_norm("bn1", mid);
            let conv = source.conv(
                "stem_temporal.conv",
                ConvSpec {
                    in_channels: mid,
                    out_channels: width,
                    kernel: [config.stem_depth_kernel, 1, 1],
                    stride: [config.stem_depth_stride, 1, 1],
                    depth_padding: config.depth_padding,
                    dilation: [1, 1, 1],
                },
            );
            let bn = source.batch_norm("stem_temporal.bn", width);
            (conv1, bn1, Some(TemporalStem { conv, bn }))
        } else {
            let conv1 = source.stem(ConvSpec {
                in_channels: config.in_channels,
                out_channels: width,
                kernel: [config.stem_depth_kernel, 7, 7],
                stride: [config.stem_depth_stride, 2, 2],
                depth_padding: config.depth_padding,
                dilation: [1, 1, 1],
            });
            (conv1, source.batch_norm("bn1", width), None)
        };
        let maxpool = config.max_pool.then(|| {
            let kd = config.max_pool_depth_kernel;
            MaxPool3d {
                kernel_size: [kd, 3, 3],
                stride: [config.max_pool_depth_stride, 2, 2],
                padding: [kd / 2, 1, 1],
            }
        });

        let mut in_channels = width;
        let mut stages = (0..4).map(|i| {
            let planes = width << i;
            let spatial = config.stage_strides[i];
            (0..config.layers[i])
                .map(|b| {
                    let spec = BlockSpec {
                        in_channels,
                        planes,
                        stride: if b == 0 {
                            [config.stage_depth_strides[i], spatial, spatial]
                        } else {
                            [1, 1, 1]
                        },
                        depth_kernel: config.block_depth_kernel_of(i),
                        depth_padding: config.depth_padding,
                        stride_in_1x1: config.stride_in_1x1,
                        dilation: config.stage_dilations[i],
                        shortcut: config.shortcut,
                    };
                    in_channels = planes * config.block.expansion();
                    Block::build(config.block, spec, &format!("layer{}.{b}", i + 1), source)
                })
                .collect::<Vec<_>>()
        });
        let (layer1, layer2, layer3, layer4) = (
            stages.next().unwrap_or_default(),
            stages.next().unwrap_or_default(),
            stages.next().unwrap_or_default(),
            stages.next().unwrap_or_default(),
        );
        let fc = config
            .num_classes
            .map(|classes| source.head(config.feature_channels(), classes));
        Self {
            conv1,
            bn1,
            stem_temporal,
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            fc,
        }
    }

    /// Input channels the network takes.
    pub fn in_channels(&self) -> usize {
        self.conv1.weight.dims()[1]
    }

    /// Checks that the layers fit together: the channel chain from the stem to the head, every
    /// BatchNorm as wide as its convolution, kernels and strides of at least 1, padding
    /// smaller than the kernel, shortcuts with the main branch's channels and strides, a valid
    /// max pool and a head as wide as the features. A network built by this crate always
    /// passes; one whose public fields were edited by hand may not. [`freeze`](Self::freeze),
    /// [`check_input`](Self::check_input) and the `try_` methods call it.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`](crate::Error::InvalidNetwork), naming the layer.
    pub fn validate(&self) -> crate::Result<()> {
        let mut channels = check_conv_bn(&self.conv1, &self.bn1, self.in_channels(), "conv1", "bn1")?;
        if let Some(t) = &self.stem_temporal {
            channels = check_conv_bn(&t.conv, &t.bn, channels, "stem_temporal.conv", "stem_temporal.bn")?;
        }
        if let Some(pool) = &self.maxpool {
            pool.check("maxpool")?;
        }
        for (s, stage) in self.stages().iter().enumerate() {
            if stage.is_empty() {
                return Err(crate::Error::InvalidNetwork {
                    layer: format!("layer{}", s + 1),
                    what: "the stage has no block".into(),
                });
            }
            for (b, block) in stage.iter().enumerate() {
                channels = block.check(channels, &format!("layer{}.{b}", s + 1))?;
            }
        }
        if let Some(fc) = &self.fc {
            let [d_input, classes] = fc.weight.dims();
            let bias = fc.bias.as_ref().map(|b| b.dims()[0]).unwrap_or(classes);
            if d_input != channels || bias != classes || classes == 0 {
                return Err(crate::Error::InvalidNetwork {
                    layer: "fc".into(),
                    what: format!(
                        "a head of weight [{d_input}, {classes}] and {bias} bias value(s) after features of {channels} channel(s)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The four stages, `layer1` .. `layer4`.
    pub(crate) fn stages(&self) -> [&[Block]; 4] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
    }

    /// Checks that an input of shape `dims` fits the network: `[N, in_channels, D, H, W]`
    /// with every extent at least 1 (any size from 1 voxel up runs with the crate's padding;
    /// below the network's total stride per axis, 32 with the default strides, the deepest
    /// stages see a single voxel along that axis). It also [validates](Self::validate) the
    /// network and follows the shape through every layer, so that a network whose fields were
    /// edited by hand gives an error here instead of a panic inside Burn.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput), saying what the network takes;
    /// [`Error::InvalidNetwork`](crate::Error::InvalidNetwork) as [`validate`](Self::validate).
    pub fn check_input(&self, dims: [usize; 5]) -> crate::Result<()> {
        let c = self.in_channels();
        let what = if dims[1] != c {
            format!(
                "the network takes {c} channel(s) ([N, {c}, D, H, W]); set in_channels in the config to change that"
            )
        } else if dims.contains(&0) {
            "every extent must be at least 1: the minimum size is 1 voxel per axis (depth, height, width) and a batch of 1"
                .to_string()
        } else {
            self.validate()?;
            self.output_dims(dims)?;
            return Ok(());
        };
        Err(crate::Error::InvalidInput {
            dims: dims.to_vec(),
            what,
        })
    }

    /// The shape of `layer4`'s output for an input of shape `dims`, layer by layer.
    fn output_dims(&self, dims: [usize; 5]) -> crate::Result<[usize; 5]> {
        let mut x = self.conv1.output_dims(dims, "conv1")?;
        if let Some(t) = &self.stem_temporal {
            x = t.conv.output_dims(x, "stem_temporal.conv")?;
        }
        if let Some(pool) = &self.maxpool {
            x = pool.output_dims(x, "maxpool")?;
        }
        for (s, stage) in self.stages().iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                x = block.output_dims(x, &format!("layer{}.{b}", s + 1))?;
            }
        }
        Ok(x)
    }

    /// [`forward`](Self::forward) after [`check_input`](Self::check_input): an error instead
    /// of a panic for an input of the wrong shape.
    pub fn try_forward(&self, x: Tensor<5>) -> crate::Result<Tensor<2>> {
        self.check_input(x.dims())?;
        Ok(self.forward(x))
    }

    /// [`features`](Self::features) after [`check_input`](Self::check_input).
    pub fn try_features(&self, x: Tensor<5>) -> crate::Result<Features> {
        self.check_input(x.dims())?;
        Ok(self.features(x))
    }

    /// Class logits, or the pooled features when the network has no head.
    ///
    /// The rank is checked by the type; the rest of the shape is not: use
    /// [`try_forward`](Self::try_forward) for inputs that come from users.
    ///
    /// # Shapes
    /// - input: `[N, in_channels, D, H, W]`
    /// - output: `[N, num_classes]`, or `[N, feature_channels]` without a head
    ///
    /// # Panics
    /// Inside Burn, if the input does not have `in_channels` channels or has an empty axis.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<2> {
        let x = self.stem(x);
        let x = match &self.maxpool {
            Some(pool) => pool.forward(x),
            None => x,
        };
        let x = stage(&self.layer1, x);
        let x = stage(&self.layer2, x);
        let x = stage(&self.layer3, x);
        let x = stage(&self.layer4, x);
        self.head(x)
    }

    /// The output of the stem and of every stage.
    ///
    /// # Shapes
    /// - input: `[N, in_channels, D, H, W]`
    /// - output: see [`Features`]
    ///
    /// # Panics
    /// As [`forward`](Self::forward); [`try_features`](Self::try_features) returns an error instead.
    pub fn features(&self, x: Tensor<5>) -> Features {
        let stem = self.stem(x);
        let x = match &self.maxpool {
            Some(pool) => pool.forward(stem.clone()),
            None => stem.clone(),
        };
        let layer1 = stage(&self.layer1, x);
        let layer2 = stage(&self.layer2, layer1.clone());
        let layer3 = stage(&self.layer3, layer2.clone());
        let layer4 = stage(&self.layer4, layer3.clone());
        Features {
            stem,
            layer1,
            layer2,
            layer3,
            layer4,
        }
    }

    /// Global average pooling and the head (if any) on `layer4`'s output.
    ///
    /// # Shapes
    /// `[N, C, D, H, W]` -> `[N, num_classes]`, or `[N, C]` without a head
    pub fn head(&self, x: Tensor<5>) -> Tensor<2> {
        let [n, c, d, h, w] = x.dims();
        let pooled = x.reshape([n, c, d * h * w]).mean_dim(2).reshape([n, c]);
        match &self.fc {
            Some(fc) => fc.forward(pooled),
            None => pooled,
        }
    }

    pub(crate) fn stem(&self, x: Tensor<5>) -> Tensor<5> {
        let x = conv_batch_norm(&self.conv1, &self.bn1, x, true, None);
        match &self.stem_temporal {
            Some(t) => conv_batch_norm(&t.conv, &t.bn, x, true, None),
            None => x,
        }
    }
}

fn stage(blocks: &[Block], x: Tensor<5>) -> Tensor<5> {
    blocks.iter().fold(x, |x, block| block.forward(x))
}
