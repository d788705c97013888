#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]
//! 3-D ResNets (18/34/50/101/152) on [Burn](https://burn.dev), started from 2-D ImageNet weights.
//!
//! Annotated CT and MRI volumes are scarce; ImageNet ResNets are plentiful but 2-D and RGB.
//! This crate builds 3-D ResNets in torchvision's layout and *inflates* a 2-D checkpoint
//! (`.pth`, `.safetensors`) into them: every kernel spread over depth, the RGB stem folded
//! into the data's channels, BatchNorm statistics kept. Loading is strict (every tensor used
//! or reported, every parameter filled), single-channel input is first-class, and every
//! depth-axis choice is a setting.
//!
//! # Quick start
//!
//! ```
//! use resnet3d::burn::tensor::{Device, Tensor};
//! use resnet3d::{ResNet3d, ResNet3dConfig};
//!
//! # fn main() -> Result<(), resnet3d::Error> {
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/checkpoints/r18_w4.pth");
//! let device = Device::flex();
//! // A ResNet-18 (here a narrow test checkpoint: width 4) for 1-channel CT, 2 classes.
//! let config = ResNet3dConfig::resnet18().with_width(4).with_in_channels(1).with_num_classes(Some(2));
//! let (model, report) = ResNet3d::from_imagenet_with_report(path, &config, &device)?;
//! println!("{report}"); // what was inflated, what happened to the head and BatchNorm
//!
//! let volume = Tensor::<5>::zeros([1, 1, 32, 64, 64], &device); // [N, C, D, H, W]
//! let logits = model.forward(volume);
//! assert_eq!(logits.dims(), [1, 2]);
//! # Ok(())
//! # }
//! ```
//!
//! # Presets
//!
//! | preset | block | blocks per stage | pooled features |
//! |---|---|---|---|
//! | [`ResNet3dConfig::resnet18`] | basic | 2, 2, 2, 2 | 512 |
//! | [`ResNet3dConfig::resnet34`] | basic | 3, 4, 6, 3 | 512 |
//! | [`ResNet3dConfig::resnet50`] | bottleneck | 3, 4, 6, 3 | 2048 |
//! | [`ResNet3dConfig::resnet101`] | bottleneck | 3, 4, 23, 3 | 2048 |
//! | [`ResNet3dConfig::resnet152`] | bottleneck | 3, 8, 36, 3 | 2048 |
//! | [`ResNet3dConfig::r3d_18`], [`ResNet3dConfig::mc3_18`], [`ResNet3dConfig::r2plus1d_18`] | torchvision's video ResNets (3x7x7 stem, no max pool; MC3: 1x3x3 after `layer1`; R(2+1)D: [`BlockKind::Basic2Plus1d`], factorised stem) | 2, 2, 2, 2 | 512 |
//! | [`ResNet3dConfig::medicalnet`]`(10..200)` | MedicalNet's (Med3D): 1 channel, no head, `layer3`/`layer4` dilated | 1, 1, 1, 1 .. 3, 24, 36, 3 | 512 / 2048 |
//!
//! MedicalNet's stages are config fields every preset can use:
//! [`stage_strides`](ResNet3dConfig::stage_strides) (height and width, `[1, 2, 2, 2]`),
//! [`stage_dilations`](ResNet3dConfig::stage_dilations) (`[1, 1, 1, 1]`) and
//! [`shortcut`](ResNet3dConfig::shortcut) ([`Shortcut::Projection`], or MedicalNet-18/34's
//! parameter-free [`Shortcut::ZeroPad`]). [`ResNet3d::from_checkpoint`] reads MedicalNet's
//! files as released and names the zoo in the [`LoadReport`] ([`Zoo`]); a MedicalNet file
//! loaded with another preset gives [`Error::ZooMismatch`], naming the preset to use.
//!
//! Spatial kernels, strides and paddings are torchvision's (bottlenecks stride on the 3x3,
//! "v1.5"). The depth axis is configured: [`stem_depth_kernel`](ResNet3dConfig::stem_depth_kernel)
//! and [`stem_depth_stride`](ResNet3dConfig::stem_depth_stride) (7 and 2),
//! [`max_pool`](ResNet3dConfig::max_pool) with its own depth kernel and stride (3 and 2),
//! [`block_depth_kernel`](ResNet3dConfig::block_depth_kernel) (3; 1 gives 2.5-D 1x3x3 blocks),
//! [`stage_depth_strides`](ResNet3dConfig::stage_depth_strides) (`[1, 2, 2, 2]`) and
//! [`depth_padding`](ResNet3dConfig::depth_padding). For thick slices keep depth strides at 1
//! where the volume has few slices.
//!
//! # The network as data
//!
//! A network is described once, as a [`Plan`]: the stem's layers, the max pool, four stages
//! of blocks (each a main chain of layers and a [`ShortcutPlan`]) and the head, where every
//! layer is a convolution ([`ConvGeometry`]), the BatchNorm after it and what follows
//! ([`After`]). [`ResNet3dConfig::plan`] makes it from the settings (torchvision's rules,
//! MedicalNet's and the video nets'); [`ResNet3d::plan`] reads it back from a built network,
//! public fields edited or not. Building, loading, [`ResNet3d::validate`], parameter counts,
//! [`feature_info`](ResNet3dConfig::feature_info), `forward`, `features`, Grad-CAM and
//! [`freeze`](ResNet3d::freeze) all walk that plan.
//!
//! ```
//! use resnet3d::{After, ResNet3dConfig, ShortcutPlan};
//!
//! let plan = ResNet3dConfig::resnet18().with_in_channels(1).plan()?;
//! let block = &plan.stages[1][0]; // layer2.0
//! assert_eq!(block.main[0].name.conv_path(), "layer2.0.conv1");
//! assert_eq!(block.main[0].geometry.stride, [2, 2, 2]);
//! assert_eq!(block.main[1].after, After::AddRelu); // the shortcut is added before its ReLU
//! assert!(matches!(block.shortcut, ShortcutPlan::Projection(_)));
//! # Ok::<(), resnet3d::Error>(())
//! ```
//!
//! Every convolution, on every path (the Burn operations and their gradients, the eval-mode
//! BatchNorm fold, the frozen network, Winograd and bf16 products), is checked by one
//! function before any kernel runs ([`ConvGeometry::output_dims`]): what PyTorch's `conv3d`
//! accepts computes PyTorch's numbers, padding beyond the kernel's reach and NaN or infinite
//! inputs included; anything else is an [`Error`] that names the layer.
//!
//! # Inflation rules
//!
//! A 2-D kernel `W2[o, i, h, w]` becomes `W3[o, i, t, h, w]` of depth `T`:
//!
//! - [`Inflation::Average`] (I3D): `W3[:, :, t] = W2 / T` for every `t`;
//! - [`Inflation::Center`]: `W3[:, :, T/2] = W2`, zeros elsewhere;
//! - [`Inflation::Acs`] (ACS convolutions): the output channels split in three groups whose
//!   kernels lie in the axial, coronal and sagittal middle planes of a cubic kernel; the
//!   network then computes ACSConv's output exactly (see the variant's docs for the cost).
//!
//! The stem's input channels are adapted first: 1 channel gets the sum of the RGB kernels
//! (exactly the response to a grey image copied to RGB); `N != 3` channels get
//! `W'[:, n] = W[:, n mod 3] * 3 / N`. BatchNorm parameters and running statistics are
//! copied; the head `fc` is copied when `num_classes` equals the checkpoint's and freshly
//! initialised otherwise (the [`LoadReport`] says which).
//!
//! Since `sum_t W3 = W2` for `Average` and `Center`, a volume constant along depth gives the 2-D
//! network's output: exactly with depth kernels of 1 or away from the first and last slices,
//! and everywhere with [`DepthPadding::Replicate`]. With [`Inflation::Center`] and depth
//! strides of 1, every slice is processed as the 2-D network would process it alone. The
//! tests check all of this against PyTorch.
//!
//! # Weight formats
//!
//! - [`ResNet3d::from_imagenet`]: a 2-D torchvision or timm ResNet as `.pth`/`.pt` (a bare
//!   state dict, or one nested under `state_dict` or another key, `module.` prefixes allowed;
//!   the pickle is parsed, never executed), `.safetensors`, or ONNX (any exporter: mapped by
//!   the graph's structure, never by names; BatchNorm fused by the exporter becomes an
//!   identity BatchNorm; external `.onnx.data` files read), recognised from the file's bytes.
//!   [`Weights`] holds the named tensors if you need to inspect or edit them first; then
//!   [`inflate_from_2d`].
//! - [`ResNet3d::from_checkpoint`]: a native 3-D checkpoint with torchvision-3-D keys (as
//!   ACSConv, timm_3d or I3ResNet-style code saves them), in f32, f16 or bf16.
//! - [`ResNet3d::save`] / [`ResNet3d::load`]: Burn's own record format (burnpack):
//!
//! ```
//! # use resnet3d::burn::tensor::Device;
//! # use resnet3d::{ResNet3d, ResNet3dConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let device = Device::flex();
//! let config = ResNet3dConfig::resnet18().with_width(4).with_in_channels(1);
//! let model = config.init(&device);
//! let path = dir.path().join("resnet3d-18.bpk");
//! model.save(&path)?;
//! let again = ResNet3d::load(&path, &config, &device)?;
//! # Ok(())
//! # }
//! ```
//!
//! # From a CT file to a trained model
//!
//! - [`preprocess`]: [`Volume`](preprocess::Volume) with Hounsfield
//!   [`Window`](preprocess::Window)s (lung, mediastinum, bone, brain, custom), the grey
//!   equivalent of the ImageNet normalisation, trilinear resampling to a voxel spacing, and
//!   centre crop or pad; [`Volume::from_nifti`](preprocess::Volume::from_nifti) reads `.nii`
//!   and `.nii.gz` with their spacing (feature `nifti`),
//!   [`Volume::from_dicom`](preprocess::Volume::from_dicom) a folder of DICOM slices (one
//!   series, sorted along the slice normal, in Hounsfield units; feature `dicom`, see
//!   [`data::read_series`]).
//! - [`data`]: [`LabelledScans`](data::LabelledScans), a CSV of scans, classes and splits
//!   for fine-tuning, every row checked up front (a seeded, class-stratified split when the
//!   file has none); the preprocessing and augmentation as data, a volume cache, and (feature
//!   `train`) Burn's `Dataset` and `Batcher` over them.
//! - [`train`] (feature `train`): [`train::fit`], a whole fine-tuning run on burn-train's
//!   `Learner` (AUROC, schedule, checkpoints, early stopping, resume); [`train::FusedAdam`].
//! - [`ResNet3d::features`] returns every stage for segmentation decoders, and
//!   [`ResNet3dConfig::feature_info`] their channels and strides (see [`Features`] for a
//!   U-Net-style decoder).
//! - [`infer`]: a trained run read back ([`infer::TrainedRun`]), and whole scans through a
//!   network trained on patches by sliding windows ([`infer::SlidingWindow`], MONAI's
//!   positions and blending), giving per-class probability maps and scan-level scores.
//! - [`Inspection`]: what a checkpoint file is and the exact call that loads it, from its
//!   names and shapes, without building a network.
//! - The command `resnet3d` (the `cli/` package: `inflate`, `inspect`, `train`, `predict` over
//!   folders and archives with shards for job arrays, `explain`) is built on these; the
//!   examples are `quickstart` and `make_nodules` (phantom CTs to try it on).
//!
//! # Backends
//!
//! Burn picks the backend at run time from the [`Device`](burn::tensor::Device):
//! `Device::flex()` (fast pure-Rust CPU backend, the default feature and what the tests and
//! examples use), `Device::ndarray()` (feature `ndarray`) and `Device::wgpu(..)` (feature
//! `wgpu`: Vulkan, Metal, DX12, or a software Vulkan driver such as Mesa's lavapipe).
//!
//! # Fine-tuning on the CPU
//!
//! On a `flex` device, with or without autodiff, every convolution of the network is the
//! crate's own Burn operation (a backend extension): the same AVX-512 register-tiled product
//! as [`FrozenResNet3d`] on channels-last activations (and its Winograd product for the
//! forward pass and input gradient of 3x3x3 convolutions whose output has 64 or more 2x2x2
//! tiles), with hand-written input, weight and
//! bias gradients through that product. The BatchNorm layers (with the ReLU, and the residual
//! before it, that follow them) are one such operation too, in train and eval mode; the
//! running variance is updated with the unbiased batch variance, as PyTorch does. The
//! activations stay channels-last from layer to layer (Burn sees `[N, C, D, H, W]` tensors
//! with permuted strides). The gradients of a training step are checked against PyTorch's
//! (computed in float64). [`train::FusedAdam`] is Burn's Adam in one pass per parameter. On
//! `ndarray` and `wgpu` the network uses Burn's own operations.
//!
//! # Fast inference on the CPU
//!
//! [`ResNet3d::freeze`] gives a [`FrozenResNet3d`]: BatchNorm folded into the convolutions,
//! activations channels-last, each convolution one matrix product per tile of output voxels
//! (AVX-512 or AVX2 where the CPU has it, else the `gemm` crate), bias, residual and ReLU
//! applied as the product stores its results. The 3x3x3 convolutions with stride 1 (up to 256
//! channels) run as Winograd F(2x2x2, 3x3x3) products: 64 multiply-adds per 2x2x2 block of
//! outputs and channel pair instead of 216, at the cost of a larger frozen kernel (64/27 of
//! it). Same outputs as the model in eval mode up to float rounding (checked against
//! PyTorch), faster than PyTorch's fastest CPU paths (TorchScript frozen with oneDNN, ONNX
//! Runtime) on the AMD EPYC machines of the benchmarks, and in most runs on an Intel Ice
//! Lake Xeon (README). Inference only: fine-tune the [`ResNet3d`], then freeze it. [`ResNet3d::freeze_bf16`] multiplies in bf16 where the CPU
//! has AVX512_BF16 (direct products only).
//!
//! ```
//! # use resnet3d::burn::tensor::{Device, Tensor};
//! # use resnet3d::ResNet3dConfig;
//! # fn main() -> Result<(), resnet3d::Error> {
//! let device = Device::flex();
//! let model = ResNet3dConfig::resnet18().with_width(4).with_in_channels(1).init(&device);
//! let frozen = model.freeze()?;
//! let x = Tensor::<5>::ones([1, 1, 16, 32, 32], &device);
//! let (a, b) = (model.forward(x.clone()), frozen.forward(x)?);
//! let diff: f32 = (a - b).abs().max().into_scalar();
//! assert!(diff < 1e-3, "{diff}");
//! # Ok(())
//! # }
//! ```
//!
//! # Cargo features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `flex` | yes | Burn's `flex` CPU backend |
//! | `ndarray` | no | Burn's `ndarray` CPU backend |
//! | `wgpu` | no | Burn's `wgpu` GPU backend |
//! | `nifti` | yes | [`Volume::from_nifti`](preprocess::Volume::from_nifti), heat maps written as NIfTI |
//! | `dicom` | yes | [`Volume::from_dicom`](preprocess::Volume::from_dicom), [`data::read_series`] (dicom-rs, pure Rust) |
//! | `pictures` | yes | PNG montages of heat maps over CT slices ([`explain`]) |
//! | `train` | yes | Burn's autodiff, optimizers and training loop (`burn/autodiff`, `burn/optim`, `burn/train` with its TUI), [`train`] and the datasets of [`data`] |

mod arch;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
pub mod data;
#[cfg(all(test, feature = "flex"))]
mod differential;
mod error;
pub mod explain;
mod frozen;
pub mod infer;
mod kernels;
mod model;
#[cfg(feature = "nifti")]
mod nifti;
#[cfg(feature = "flex")]
mod ops;
pub mod preprocess;
#[cfg(feature = "train")]
pub mod train;
mod weights;

pub use arch::config::{KINETICS_MEAN, KINETICS_STD, ResNet3dConfig};
pub use arch::geometry::{ConvGeometry, PoolGeometry, ZeroPadShortcut};
pub use arch::kinds::{BlockKind, DepthPadding, Inflation, Layout, Shortcut, StageInfo};
pub use arch::plan::{After, BlockPlan, HeadSpec, LayerName, LayerSpec, Plan, PlanLayer, ShortcutPlan, Site};
pub use burn;
pub use error::{Error, Result};
pub use frozen::network::FrozenResNet3d;
pub use model::block::{BasicBlock3d, Block, Block2Plus1d, Bottleneck3d, Conv2Plus1d, Downsample};
pub use model::conv::Conv;
pub use model::network::{Features, ResNet3d, TemporalStem};
pub use model::pool::MaxPool3d;
pub use weights::export::{ONNX_OPSET, OnnxOptions};
pub use weights::format::{Format, WeightTensor};
pub use weights::inflate::{adapt_in_channels, inflate_kernel};
pub use weights::inspect::Inspection;
pub use weights::load::{Head, LoadReport, LoadedKernel, inflate_from_2d, inflate_from_2d_with_report, load_3d};
#[cfg(feature = "pretrained")]
pub use weights::pretrained::{Fetcher, MAX_HOPS, pretrained};
#[cfg(feature = "pretrained")]
pub use weights::registry::{PRETRAINED, Pretrained, PretrainedKind, Source};
pub use weights::tensors::Weights;
pub use weights::zoo::Zoo;
