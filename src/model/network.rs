//! [`ResNet3d`]: stem, `layer1` .. `layer4`, optional head.

use burn::module::Module;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::Tensor;

use crate::arch::kinds::STAGE_NAMES;
use crate::arch::plan::{After, HeadSpec, LayerName, Plan, Site};
use crate::arch::walk;
#[cfg(feature = "train")]
use crate::arch::walk::Tap;
use crate::error::{Error, Result};
use crate::model::block::Block;
use crate::model::conv::{Conv, or_panic};
use crate::model::engine::{Burn, ModelLayer};
use crate::model::pool::MaxPool3d;

/// A 3-D ResNet in torchvision's layout: field names are torchvision's state-dict keys.
///
/// Build one with [`ResNet3dConfig::init`](crate::ResNet3dConfig::init) (random weights),
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
/// [`ResNet3dConfig::feature_info`](crate::ResNet3dConfig::feature_info) gives each map's channels and stride per axis. A small
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

impl Features {
    /// The maps a walk tapped, in its order (the stem's, then each stage's).
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] if the walk did not reach every stage.
    pub(crate) fn from_taps(maps: Vec<Tensor<5>>) -> Result<Self> {
        let Ok([stem, layer1, layer2, layer3, layer4]) = <[Tensor<5>; 5]>::try_from(maps) else {
            return Err(Error::InvalidNetwork {
                layer: STAGE_NAMES[3].into(),
                what: "the walk did not reach every stage".into(),
            });
        };
        Ok(Self {
            stem,
            layer1,
            layer2,
            layer3,
            layer4,
        })
    }
}

impl ResNet3d {
    /// Input channels the network takes.
    pub fn in_channels(&self) -> usize {
        self.conv1.in_channels()
    }

    /// The four stages, `layer1` .. `layer4`.
    pub(crate) fn stages(&self) -> [&[Block]; 4] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
    }

    /// The stem's layers, read from its modules.
    pub(crate) fn stem_layers(&self) -> Result<Vec<ModelLayer<'_>>> {
        let stem = |conv, norm| LayerName {
            site: Site::Stem,
            conv,
            norm,
        };
        let mut layers = vec![ModelLayer::new(
            stem("conv1", "bn1"),
            After::Relu,
            &self.conv1,
            &self.bn1,
        )?];
        if let Some(t) = &self.stem_temporal {
            let name = stem("stem_temporal.conv", "stem_temporal.bn");
            layers.push(ModelLayer::new(name, After::Relu, &t.conv, &t.bn)?);
        }
        Ok(layers)
    }

    /// The network as a plan of its modules, checked ([`Plan::check`]): what `forward`,
    /// `features`, Grad-CAM and `freeze` walk.
    pub(crate) fn layers(&self) -> Result<Plan<ModelLayer<'_>>> {
        let mut stages: [Vec<_>; 4] = Default::default();
        for (stage, (plans, blocks)) in stages.iter_mut().zip(self.stages()).enumerate() {
            *plans = blocks
                .iter()
                .enumerate()
                .map(|(index, block)| block.plan(Site::Block { stage, index }))
                .collect::<Result<_>>()?;
        }
        let head = match &self.fc {
            None => None,
            Some(fc) => {
                let [features, classes] = fc.weight.lazy_shape().dims::<2>();
                let bias = fc.bias.as_ref().map_or(classes, |b| b.lazy_shape().dims::<1>()[0]);
                if bias != classes {
                    return Err(Error::InvalidNetwork {
                        layer: "fc".into(),
                        what: format!("a head of weight [{features}, {classes}] and {bias} bias value(s)"),
                    });
                }
                Some(HeadSpec { features, classes })
            }
        };
        let plan = Plan {
            stem: self.stem_layers()?,
            max_pool: self.maxpool.as_ref().map(MaxPool3d::geometry),
            stages,
            head,
        };
        plan.check()?;
        Ok(plan)
    }

    /// The network as data, read from its modules: every layer's names, geometry and what
    /// follows it, the max pool, the stages' blocks and the head. For a network built from a
    /// config it equals [`ResNet3dConfig::plan`](crate::ResNet3dConfig::plan); after its public
    /// fields are edited it shows what the network now is.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn plan(&self) -> Result<Plan> {
        self.layers()?.map(|layer| Ok::<_, Error>(layer.spec))
    }

    /// Checks that the layers fit together: the channel chain from the stem to the head, every
    /// BatchNorm as wide as its convolution, every convolution's geometry (the one check),
    /// shortcuts with the main branch's channels and strides, a valid max pool and a head as
    /// wide as the features. A network built by this crate always passes; one whose public
    /// fields were edited by hand may not. Every forward pass, [`freeze`](Self::freeze) and
    /// [`check_input`](Self::check_input) call it: nothing is computed on a network that fails.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`](crate::Error::InvalidNetwork), naming the layer.
    pub fn validate(&self) -> Result<()> {
        self.layers().map(|_| ())
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
    pub fn check_input(&self, dims: [usize; 5]) -> Result<()> {
        self.checked(dims).map(|_| ())
    }

    /// The network's plan, once `dims` is checked against it ([`check_input`](Self::check_input)).
    pub(crate) fn checked(&self, dims: [usize; 5]) -> Result<Plan<ModelLayer<'_>>> {
        let c = self.in_channels();
        let what = if dims[1] != c {
            format!(
                "the network takes {c} channel(s) ([N, {c}, D, H, W]); set in_channels in the config to change that"
            )
        } else if dims.contains(&0) {
            "every extent must be at least 1: the minimum size is 1 voxel per axis (depth, height, width) and a batch of 1"
                .to_string()
        } else {
            let plan = self.layers()?;
            plan.output_dims(dims)?;
            return Ok(plan);
        };
        Err(Error::InvalidInput {
            dims: dims.to_vec(),
            what,
        })
    }

    /// [`forward`](Self::forward) after [`check_input`](Self::check_input): an error instead
    /// of a panic for an input of the wrong shape.
    ///
    /// # Errors
    /// As [`check_input`](Self::check_input).
    pub fn try_forward(&self, x: Tensor<5>) -> Result<Tensor<2>> {
        let plan = self.checked(x.dims())?;
        let x = walk::run(&plan, &Burn::default(), x, |_, a| Ok(a))?;
        Ok(self.head(x))
    }

    /// [`features`](Self::features) after [`check_input`](Self::check_input).
    ///
    /// # Errors
    /// As [`check_input`](Self::check_input).
    pub fn try_features(&self, x: Tensor<5>) -> Result<Features> {
        let plan = self.checked(x.dims())?;
        let mut maps: Vec<Tensor<5>> = Vec::with_capacity(5);
        walk::run(&plan, &Burn::default(), x, |_, a| {
            maps.push(a.clone());
            Ok(a)
        })?;
        Features::from_taps(maps)
    }

    /// Class logits, or the pooled features when the network has no head.
    ///
    /// # Shapes
    /// - input: `[N, in_channels, D, H, W]`
    /// - output: `[N, num_classes]`, or `[N, feature_channels]` without a head
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error (an input of other channels or
    /// an empty axis; a network whose edited fields do not fit together), with its message.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<2> {
        or_panic(self.try_forward(x))
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
        or_panic(self.try_features(x))
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

    /// The walk of `x` through the network's plan (checked on `x`) with `tap` at each
    /// [`Tap`], up to `layer4`'s output: what Grad-CAM runs.
    #[cfg(feature = "train")]
    pub(crate) fn walk(&self, x: Tensor<5>, tap: impl FnMut(Tap, Tensor<5>) -> Result<Tensor<5>>) -> Result<Tensor<5>> {
        let plan = self.checked(x.dims())?;
        walk::run(&plan, &Burn::default(), x, tap)
    }
}
