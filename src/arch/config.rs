//! [`ResNet3dConfig`]: the network's shape, its depth-axis settings and how 2-D weights are inflated.

use burn::config::Config;

use crate::arch::kinds::{BlockKind, DepthPadding, Inflation, Layout, Shortcut};
use crate::error::{Error, Result};

/// The per-channel mean (RGB) of the Kinetics-400 clips torchvision's video ResNets were
/// trained on, for inputs scaled to 0..1: `(x - mean) / std` per channel.
pub const KINETICS_MEAN: [f32; 3] = [0.43216, 0.394666, 0.37645];
/// The per-channel standard deviation (RGB) matching [`KINETICS_MEAN`].
pub const KINETICS_STD: [f32; 3] = [0.22803, 0.22145, 0.216989];

/// Configuration of a [`ResNet3d`](crate::ResNet3d).
///
/// Start from a preset ([`resnet18`](Self::resnet18) .. [`resnet152`](Self::resnet152)) and
/// change what the data needs. Spatial kernels, strides and paddings are torchvision's;
/// everything about the depth axis is a setting, and every convolution pads depth by
/// `kernel / 2`. The defaults give the cubic layout of ACSConv and timm_3d: stem 7x7x7 with
/// stride 2, max pool 3x3x3 with stride 2, 3x3x3 blocks, stride 2 on all three axes from
/// `layer2` on.
///
/// For thick-slice (anisotropic) scans keep the depth axis longer: an I3D-style stem
/// (`stem_depth_kernel = 3`, `stem_depth_stride = 1`), `max_pool_depth_stride = 1`, and
/// `stage_depth_strides = [1, 1, 2, 2]`. With `block_depth_kernel = 1` every 3x3 convolution
/// is 1x3x3 (2.5-D).
#[derive(Config, Debug)]
pub struct ResNet3dConfig {
    /// Residual block kind (set by the preset).
    pub block: BlockKind,
    /// Blocks per stage (set by the preset).
    pub layers: [usize; 4],
    /// Channels of the stem and `layer1`; stage `i` has `width * 2^i` (times 4 after a
    /// bottleneck). torchvision's is 64; smaller widths make small test networks.
    #[config(default = 64)]
    pub width: usize,
    /// Channels of the input volume: 1 for CT or MRI, 3 for RGB-like data.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Classes of the linear head; `None` leaves the head out, and `forward` returns the
    /// pooled features (`[N, 512]` after basic blocks, `[N, 2048]` after bottlenecks).
    #[config(default = "Some(1000)")]
    pub num_classes: Option<usize>,
    /// Depth of the 7x7 stem kernel (odd).
    #[config(default = 7)]
    pub stem_depth_kernel: usize,
    /// Depth stride of the stem convolution.
    #[config(default = 2)]
    pub stem_depth_stride: usize,
    /// Factorise the stem as R(2+1)D does: a 1x7x7 convolution (stride 2 in height and width)
    /// to `max(1, 45 * width / 64)` channels, BatchNorm, ReLU, then a `stem_depth_kernel`x1x1
    /// convolution with the stem's depth stride to `width` channels (`stem_temporal`).
    #[config(default = false)]
    pub factorised_stem: bool,
    /// Whether the 3x3 stride-2 max pool follows the stem.
    #[config(default = true)]
    pub max_pool: bool,
    /// Depth of the max-pool window (odd).
    #[config(default = 3)]
    pub max_pool_depth_kernel: usize,
    /// Depth stride of the max pool.
    #[config(default = 2)]
    pub max_pool_depth_stride: usize,
    /// Depth of the kernel of every 3x3 convolution in the blocks (odd); 1 gives 2.5-D 1x3x3.
    #[config(default = 3)]
    pub block_depth_kernel: usize,
    /// Per stage, the depth of the 3x3 kernels of `layer1` .. `layer4`, overriding
    /// `block_depth_kernel` (odd): torchvision's MC3 is `[3, 1, 1, 1]`.
    #[config(default = "None")]
    pub stage_block_depth_kernels: Option<[usize; 4]>,
    /// Depth stride of the first block of `layer1` .. `layer4`.
    #[config(default = "[1, 2, 2, 2]")]
    pub stage_depth_strides: [usize; 4],
    /// Height and width stride of the first block of `layer1` .. `layer4`: torchvision's
    /// `[1, 2, 2, 2]`; MedicalNet keeps `layer3` and `layer4` at the resolution of `layer2`
    /// (`[1, 2, 1, 1]`) and dilates them instead.
    #[config(default = "[1, 2, 2, 2]")]
    pub stage_strides: [usize; 4],
    /// Dilation of the 3x3 convolutions of `layer1` .. `layer4`, on all three axes, with the
    /// padding dilated alike so that a stride-1 convolution keeps the size: 1 is an ordinary
    /// convolution; MedicalNet's is `[1, 1, 2, 4]`.
    #[config(default = "[1, 1, 1, 1]")]
    pub stage_dilations: [usize; 4],
    /// The shortcut of blocks that change channels or size.
    #[config(default = "Shortcut::Projection")]
    pub shortcut: Shortcut,
    /// How convolutions pad the depth axis.
    #[config(default = "DepthPadding::Zeros")]
    pub depth_padding: DepthPadding,
    /// How 2-D kernels are spread over depth when inflating.
    #[config(default = "Inflation::Average")]
    pub inflation: Inflation,
    /// Put a bottleneck's stride on its first 1x1 convolution (the original ResNet, "v1",
    /// as in some model zoos) instead of on the 3x3 (torchvision's "v1.5"). The ONNX reader
    /// detects which one a graph is; state dicts cannot tell.
    #[config(default = false)]
    pub stride_in_1x1: bool,
}

impl ResNet3dConfig {
    /// A ResNet of a standard layout (see [`Layout::PRESETS`]) with the default depth settings.
    pub fn from_layout(layout: Layout) -> Self {
        Self::new(layout.block, layout.layers)
    }

    /// ResNet-18: basic blocks `[2, 2, 2, 2]`.
    pub fn resnet18() -> Self {
        Self::from_layout(Layout::RESNET18)
    }

    /// ResNet-34: basic blocks `[3, 4, 6, 3]`.
    pub fn resnet34() -> Self {
        Self::from_layout(Layout::RESNET34)
    }

    /// ResNet-50: bottlenecks `[3, 4, 6, 3]`.
    pub fn resnet50() -> Self {
        Self::from_layout(Layout::RESNET50)
    }

    /// ResNet-101: bottlenecks `[3, 4, 23, 3]`.
    pub fn resnet101() -> Self {
        Self::from_layout(Layout::RESNET101)
    }

    /// ResNet-152: bottlenecks `[3, 8, 36, 3]`.
    pub fn resnet152() -> Self {
        Self::from_layout(Layout::RESNET152)
    }

    /// MedicalNet's 3-D ResNet of `depth` 10, 18, 34, 50, 101, 152 or 200 (Chen, Ma and
    /// Zheng, "Med3D", 2019; pre-trained on 23 medical segmentation datasets): one input
    /// channel, 7x7x7 stem with stride 2 on every axis, 3x3x3 max pool with stride 2,
    /// stage strides `[1, 2, 1, 1]` on every axis with `layer3` and `layer4` dilated by 2
    /// and 4, [`Shortcut::ZeroPad`] for depths 18 and 34 and [`Shortcut::Projection`]
    /// otherwise, and no head (`num_classes: None`: add one with
    /// [`with_num_classes`](Self::with_num_classes)). Load MedicalNet's released files with
    /// [`ResNet3d::from_checkpoint`](crate::ResNet3d::from_checkpoint).
    ///
    /// ```
    /// use resnet3d::burn::tensor::{Device, Tensor};
    /// use resnet3d::{Head, ResNet3d, ResNet3dConfig, Zoo};
    ///
    /// # fn main() -> Result<(), resnet3d::Error> {
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/medicalnet/medicalnet18_w4.pth");
    /// let device = Device::flex();
    /// // MedicalNet-18 (here a narrow test file: width 4) with a 2-class head of our own.
    /// let config = ResNet3dConfig::medicalnet(18)?.with_width(4).with_num_classes(Some(2));
    /// let (model, report) = ResNet3d::from_checkpoint_with_report(path, &config, &device)?;
    /// assert_eq!(report.zoo, Zoo::MedicalNet);
    /// assert!(matches!(report.head, Head::Fresh { checkpoint_classes: None, classes: 2 }));
    /// let logits = model.try_forward(Tensor::zeros([1, 1, 32, 64, 64], &device))?;
    /// assert_eq!(logits.dims(), [1, 2]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for another depth, listing MedicalNet's.
    pub fn medicalnet(depth: usize) -> Result<Self> {
        let layout = match depth {
            10 => Layout::new(BlockKind::Basic, [1, 1, 1, 1]),
            200 => Layout::new(BlockKind::Bottleneck, [3, 24, 36, 3]),
            _ => Layout::preset(depth).ok_or_else(|| Error::InvalidConfig {
                field: "depth",
                reason: format!("is {depth}; MedicalNet has depths 10, 18, 34, 50, 101, 152 and 200"),
            })?,
        };
        let shortcut = match depth {
            18 | 34 => Shortcut::ZeroPad,
            _ => Shortcut::Projection,
        };
        Ok(Self::from_layout(layout)
            .with_in_channels(1)
            .with_num_classes(None)
            .with_stage_depth_strides([1, 2, 1, 1])
            .with_stage_strides([1, 2, 1, 1])
            .with_stage_dilations([1, 1, 2, 4])
            .with_shortcut(shortcut))
    }

    /// torchvision's R3D-18 video network (Tran et al., 2018; `torchvision.models.video.r3d_18`,
    /// Kinetics-400): basic blocks `[2, 2, 2, 2]` of 3x3x3 convolutions, a 3x7x7 stem with
    /// stride `(1, 2, 2)`, no max pool, stride 2 on every axis from `layer2` on, 3 input
    /// channels and 400 classes. [`ResNet3d::from_checkpoint`](crate::ResNet3d::from_checkpoint)
    /// reads torchvision's state dict (`stem.0`, `layer1.0.conv1.0`, ...); with
    /// `with_in_channels(1)` the stem's RGB kernels are summed, as for ImageNet weights. Its
    /// input is normalised with [`KINETICS_MEAN`] and [`KINETICS_STD`].
    pub fn r3d_18() -> Self {
        Self::resnet18()
            .with_num_classes(Some(400))
            .with_stem_depth_kernel(3)
            .with_stem_depth_stride(1)
            .with_max_pool(false)
    }

    /// torchvision's MC3-18 (`torchvision.models.video.mc3_18`): [`r3d_18`](Self::r3d_18) with
    /// 3x3x3 convolutions in `layer1` only and 1x3x3 ones after it ("mixed convolutions"),
    /// whose stages stride height and width only.
    pub fn mc3_18() -> Self {
        Self::r3d_18()
            .with_stage_block_depth_kernels(Some([3, 1, 1, 1]))
            .with_stage_depth_strides([1, 1, 1, 1])
    }

    /// torchvision's R(2+1)D-18 (`torchvision.models.video.r2plus1d_18`): [`r3d_18`](Self::r3d_18)
    /// with [`BlockKind::Basic2Plus1d`] blocks and the factorised stem
    /// ([`factorised_stem`](Self::factorised_stem)).
    pub fn r2plus1d_18() -> Self {
        let mut config = Self::r3d_18().with_factorised_stem(true);
        config.block = BlockKind::Basic2Plus1d;
        config
    }

    /// The depth of the 3x3 kernels in stage `stage` (0 for `layer1`).
    pub(crate) fn block_depth_kernel_of(&self, stage: usize) -> usize {
        self.stage_block_depth_kernels
            .map_or(self.block_depth_kernel, |k| k[stage])
    }

    /// Whether the stage settings are MedicalNet's (strides `[1, 2, 1, 1]` on every axis,
    /// dilations `[1, 1, 2, 4]`): what a MedicalNet checkpoint needs besides its layout.
    pub(crate) fn has_medicalnet_stages(&self) -> bool {
        self.stage_strides == [1, 2, 1, 1]
            && self.stage_depth_strides == [1, 2, 1, 1]
            && self.stage_dilations == [1, 1, 2, 4]
    }

    /// The block kind and counts.
    pub fn layout(&self) -> Layout {
        Layout {
            block: self.block,
            layers: self.layers,
        }
    }

    /// The same network with every depth kernel and stride set to 1: on a volume of one
    /// slice it is the 2-D network. The tests and the 2-D equivalence checks compare against it.
    pub fn as_2d(&self) -> Self {
        self.clone()
            .with_stem_depth_kernel(1)
            .with_stem_depth_stride(1)
            .with_max_pool_depth_kernel(1)
            .with_max_pool_depth_stride(1)
            .with_block_depth_kernel(1)
            .with_stage_block_depth_kernels(None)
            .with_stage_depth_strides([1, 1, 1, 1])
    }

    /// Checks every field on its own; [`validate`](Self::validate) adds what the fields give
    /// together (the parameter count).
    pub(crate) fn check_fields(&self) -> Result<()> {
        let invalid = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.width == 0 {
            return invalid("width", "is 0; torchvision's ResNets use 64");
        }
        if self.in_channels == 0 {
            return invalid("in_channels", "is 0; use 1 for CT or MRI volumes");
        }
        if self.num_classes == Some(0) {
            return invalid("num_classes", "is Some(0); use None for a network without a head");
        }
        if let Some(stage) = self.layers.iter().position(|&n| n == 0) {
            return Err(Error::InvalidConfig {
                field: "layers",
                reason: format!("has no block in layer{}; every stage needs at least one", stage + 1),
            });
        }
        for (field, kernel) in [
            ("stem_depth_kernel", self.stem_depth_kernel),
            ("max_pool_depth_kernel", self.max_pool_depth_kernel),
            ("block_depth_kernel", self.block_depth_kernel),
        ] {
            if kernel == 0 || kernel % 2 == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    reason: format!(
                        "is {kernel}; it must be odd (1, 3, 5, 7) so that padding kernel/2 keeps the depth centred"
                    ),
                });
            }
        }
        if self.inflation == Inflation::Acs
            && (self.stem_depth_kernel != 7 || (0..4).any(|stage| self.block_depth_kernel_of(stage) != 3))
        {
            return invalid(
                "inflation",
                "is Acs, which places 2-D kernels in the planes of cubic ones: keep stem_depth_kernel 7 and the block depth kernels 3",
            );
        }
        if let Some(kernels) = self.stage_block_depth_kernels
            && let Some(&kernel) = kernels.iter().find(|&&k| k == 0 || k % 2 == 0)
        {
            return Err(Error::InvalidConfig {
                field: "stage_block_depth_kernels",
                reason: format!("holds {kernel}; every depth kernel must be odd (1, 3, 5, 7)"),
            });
        }
        for (field, stride) in [
            ("stem_depth_stride", self.stem_depth_stride),
            ("max_pool_depth_stride", self.max_pool_depth_stride),
        ] {
            if stride == 0 {
                return invalid(field, "is 0; strides start at 1");
            }
        }
        if self.stage_depth_strides.contains(&0) {
            return invalid("stage_depth_strides", "contains 0; strides start at 1");
        }
        if self.stage_strides.contains(&0) {
            return invalid("stage_strides", "contains 0; strides start at 1");
        }
        if self.stage_dilations.contains(&0) {
            return invalid("stage_dilations", "contains 0; 1 is an ordinary convolution");
        }
        if self.stage_dilations.iter().any(|&v| v > 1 << 16) {
            return invalid("stage_dilations", "holds a value above 65536; no volume is that large");
        }
        let spatial_stride = self.stage_strides.iter().try_fold(4usize, |acc, &s| acc.checked_mul(s));
        if spatial_stride.is_none() {
            return invalid("stage_strides", "multiply to more than usize::MAX");
        }
        let depth_stride = [self.stem_depth_stride, self.max_pool_depth_stride]
            .iter()
            .chain(&self.stage_depth_strides)
            .try_fold(1usize, |acc, &s| acc.checked_mul(s));
        if depth_stride.is_none() {
            return invalid(
                "stage_depth_strides",
                "multiplied with the stem's and the max pool's depth strides, overflows; a total depth stride beyond the volume's depth leaves one slice",
            );
        }
        Ok(())
    }

    /// The most parameters [`validate`](Self::validate) accepts: 2^32 (16 GiB of `f32`), 36
    /// times a ResNet3d-152's, so that an absurd width, channel count, class count or kernel
    /// depth gives an error instead of an allocation failure.
    pub const MAX_PARAMETERS: usize = 1 << 32;
}
