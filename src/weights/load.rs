//! The mapping of named checkpoint tensors onto [`ResNet3d`], in one place: inflation of 2-D
//! ImageNet weights, and native 3-D checkpoints. Strict both ways: every tensor of the
//! checkpoint is used or reported, every parameter of the model is filled, or an error names
//! the tensors.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use burn::module::{Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use crate::arch::config::ResNet3dConfig;
use crate::arch::kinds::{BlockKind, Inflation, Shortcut};
use crate::arch::plan::LayerSpec;
use crate::error::{Error, Result};
use crate::model::build::{FreshInit, ParamSource};
use crate::model::conv::Conv;
use crate::model::network::ResNet3d;
use crate::weights::inflate::{adapt_in_channels, inflate_kernel};
use crate::weights::names::{
    detect_layout, recognise_variant, recognise_zoo, shape_hint, torchvision_video, unsupported_variant, zero_padded,
};
use crate::weights::tensors::Weights;
use crate::weights::zoo::Zoo;

/// What happened to the classification head while loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The checkpoint's head was copied: the config asks for its number of classes.
    Copied {
        /// Classes of the head.
        classes: usize,
    },
    /// The model got a freshly initialised head.
    Fresh {
        /// Classes of the checkpoint's head, if it had one.
        checkpoint_classes: Option<usize>,
        /// Classes of the new head.
        classes: usize,
    },
    /// The config asks for no head (`num_classes = None`).
    Absent,
}

/// A convolution kernel as it was in the checkpoint and as it is in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedKernel {
    /// Tensor name (`layer1.0.conv1.weight`).
    pub name: String,
    /// Shape in the checkpoint.
    pub from: Vec<usize>,
    /// Shape in the model.
    pub to: Vec<usize>,
}

/// What loading a checkpoint did: print it (`Display`) or inspect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The model zoo the checkpoint was recognised as.
    pub zoo: Zoo,
    /// Tensors of the checkpoint that went into the model.
    pub tensors_used: usize,
    /// Every convolution kernel, 2-D -> 3-D when inflating.
    pub kernels: Vec<LoadedKernel>,
    /// The inflation rule, `None` for a native 3-D checkpoint.
    pub inflation: Option<Inflation>,
    /// Input channels of the checkpoint's stem and of the model's.
    pub stem_channels: (usize, usize),
    /// What happened to the head.
    pub head: Head,
    /// BatchNorm layers that the file had fused into their convolutions (ONNX exports with
    /// constant folding) and that start as the identity; 0 when every BatchNorm was copied.
    pub fused_batch_norms: usize,
    /// Tensors of the file that were deliberately not loaded, with the reason.
    pub ignored: Vec<(String, String)>,
    /// Loaded tensors holding NaN or infinite values, with how many: such a network computes
    /// NaN; the checkpoint is damaged or was saved after training diverged.
    pub non_finite: Vec<(String, usize)>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inflation {
            Some(rule) => writeln!(
                f,
                "inflated {} tensors of {} ({rule:?} rule), {} kernels:",
                self.tensors_used,
                self.zoo,
                self.kernels.len()
            )?,
            None => writeln!(
                f,
                "loaded {} tensors of {} (3-D), {} kernels:",
                self.tensors_used,
                self.zoo,
                self.kernels.len()
            )?,
        }
        for kernel in &self.kernels {
            writeln!(f, "  {:<28} {:?} -> {:?}", kernel.name, kernel.from, kernel.to)?;
        }
        let (from, to) = self.stem_channels;
        match (from, to) {
            _ if from == to => writeln!(f, "stem: {from} input channel(s), unchanged")?,
            (_, 1) => writeln!(f, "stem: {from} input channels summed into 1")?,
            _ => writeln!(f, "stem: {from} input channels cycled into {to}, scaled by {from}/{to}")?,
        }
        match self.fused_batch_norms {
            0 => writeln!(
                f,
                "batch norm: parameters and running statistics copied from the checkpoint"
            )?,
            n => writeln!(
                f,
                "batch norm: {n} layers were fused into their convolutions by the exporter; they start as the \
                 identity (gamma = sqrt(1 + eps), beta = fused bias, mean 0, var 1), so fine-tuning starts \
                 from identity statistics"
            )?,
        }
        match &self.head {
            Head::Copied { classes } => writeln!(f, "head: copied ({classes} classes)")?,
            Head::Fresh {
                checkpoint_classes: Some(k),
                classes,
            } => writeln!(f, "head: fresh, {classes} classes (the checkpoint's has {k})")?,
            Head::Fresh {
                checkpoint_classes: None,
                classes,
            } => writeln!(f, "head: fresh, {classes} classes (the checkpoint has none)")?,
            Head::Absent => writeln!(f, "head: none (num_classes = None)")?,
        }
        // Grouped by reason: a ResNet-152 has 155 BatchNorm counters.
        let mut reasons: Vec<&str> = Vec::new();
        for (_, why) in &self.ignored {
            if !reasons.contains(&why.as_str()) {
                reasons.push(why);
            }
        }
        for why in reasons {
            let names: Vec<&str> = self
                .ignored
                .iter()
                .filter(|(_, w)| w == why)
                .map(|(n, _)| n.as_str())
                .collect();
            match names.as_slice() {
                [one] => writeln!(f, "not loaded: {one}: {why}")?,
                [first, .., last] => writeln!(f, "not loaded: {} tensors ({first} .. {last}): {why}", names.len())?,
                [] => {}
            }
        }
        for (name, count) in &self.non_finite {
            writeln!(f, "WARNING: {name} holds {count} NaN or infinite value(s)")?;
        }
        Ok(())
    }
}

/// Builds the 3-D network of `config` from 2-D weights in torchvision naming, inflating every
/// kernel by `config.inflation` and adapting the stem to `config.in_channels`.
///
/// # Errors
/// [`Error::InvalidConfig`], [`Error::ArchitectureMismatch`] when the checkpoint is another
/// depth, [`Error::WrongShape`], [`Error::MissingTensors`], [`Error::UnexpectedTensors`].
pub fn inflate_from_2d(weights: &Weights, config: &ResNet3dConfig, device: &Device) -> Result<ResNet3d> {
    inflate_from_2d_with_report(weights, config, device).map(|(model, _)| model)
}

/// [`inflate_from_2d`], with the report of what was loaded.
pub fn inflate_from_2d_with_report(
    weights: &Weights,
    config: &ResNet3dConfig,
    device: &Device,
) -> Result<(ResNet3d, LoadReport)> {
    Loader::run(weights, config, device, Some(config.inflation), None)
}

/// Builds the network of `config` from native 3-D weights in torchvision-3-D naming (what
/// [`ResNet3d::from_checkpoint`] reads from a file), strictly, with the report.
///
/// # Errors
/// As [`ResNet3d::from_checkpoint`].
pub fn load_3d(weights: &Weights, config: &ResNet3dConfig, device: &Device) -> Result<(ResNet3d, LoadReport)> {
    match torchvision_video(weights) {
        Some(renamed) => Loader::run(&renamed, config, device, None, Some(Zoo::TorchvisionVideo)),
        None => Loader::run(weights, config, device, None, None),
    }
}

impl ResNet3d {
    /// Reads a 2-D ImageNet ResNet (`.pth`/`.pt` or `.safetensors`, recognised from the
    /// bytes) and inflates it into the 3-D network of `config`.
    ///
    /// # Errors
    /// Those of [`Weights::from_file`] and [`inflate_from_2d`].
    pub fn from_imagenet(path: impl AsRef<Path>, config: &ResNet3dConfig, device: &Device) -> Result<Self> {
        Self::from_imagenet_with_report(path, config, device).map(|(model, _)| model)
    }

    /// [`from_imagenet`](Self::from_imagenet), with the report of what was loaded.
    pub fn from_imagenet_with_report(
        path: impl AsRef<Path>,
        config: &ResNet3dConfig,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        inflate_from_2d_with_report(&Weights::from_file(path)?, config, device)
    }

    /// Reads a native 3-D checkpoint with torchvision-3-D keys (as ACSConv, timm_3d or
    /// I3ResNet-style code saves them), tensors in f32, f16 or bf16, head optional.
    ///
    /// # Errors
    /// Those of [`Weights::from_file`]; [`Error::WrongShape`] when a kernel's shape is not the
    /// config's (the message names the setting), [`Error::MissingTensors`],
    /// [`Error::UnexpectedTensors`], [`Error::ArchitectureMismatch`].
    pub fn from_checkpoint(path: impl AsRef<Path>, config: &ResNet3dConfig, device: &Device) -> Result<Self> {
        Self::from_checkpoint_with_report(path, config, device).map(|(model, _)| model)
    }

    /// [`from_checkpoint`](Self::from_checkpoint), with the report of what was loaded.
    pub fn from_checkpoint_with_report(
        path: impl AsRef<Path>,
        config: &ResNet3dConfig,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        load_3d(&Weights::from_file(path)?, config, device)
    }
}

/// A [`ParamSource`] that takes every parameter from a checkpoint, inflating 2-D kernels when
/// `inflation` is set, and records everything that does not fit.
struct Loader<'a> {
    weights: &'a Weights,
    device: &'a Device,
    inflation: Option<Inflation>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    wrong_shape: Option<Error>,
    report: LoadReport,
}

impl<'a> Loader<'a> {
    fn run(
        weights: &'a Weights,
        config: &ResNet3dConfig,
        device: &'a Device,
        inflation: Option<Inflation>,
        known: Option<Zoo>,
    ) -> Result<(ResNet3d, LoadReport)> {
        config.validate()?;
        if let Some(v1) = weights.stride_in_1x1()
            && v1 != config.stride_in_1x1
            && config.block == BlockKind::Bottleneck
        {
            let reason = match v1 {
                true => {
                    "is false, but the file is a ResNet v1 (stride on the first 1x1 of each bottleneck): set it to true"
                }
                false => {
                    "is true, but the file strides the 3x3 of each bottleneck (torchvision's v1.5): set it to false"
                }
            };
            return Err(Error::InvalidConfig {
                field: "stride_in_1x1",
                reason: reason.into(),
            });
        }
        if let Some(what) = recognise_variant(weights) {
            return Err(Error::Unsupported { what });
        }
        let zoo = match inflation {
            Some(_) if config.shortcut == Shortcut::Projection && zero_padded(weights) => {
                return Err(Error::InvalidConfig {
                    field: "shortcut",
                    reason:
                        "is Projection, but layer2.0 of the checkpoint has no projection although the channels double: \
                             its shortcuts are parameter-free (type A); set Shortcut::ZeroPad"
                            .into(),
                });
            }
            Some(_) => Zoo::ImageNet,
            None => match known {
                Some(zoo) => zoo,
                None => recognise_zoo(weights, config)?,
            },
        };
        let found = detect_layout(weights)?;
        if found != config.layout() {
            return Err(Error::ArchitectureMismatch {
                found,
                expected: config.layout(),
            });
        }
        let mut loader = Loader {
            weights,
            device,
            inflation,
            used: BTreeSet::new(),
            missing: Vec::new(),
            wrong_shape: None,
            report: LoadReport {
                zoo,
                tensors_used: 0,
                kernels: Vec::new(),
                inflation,
                stem_channels: (config.in_channels, config.in_channels),
                head: Head::Absent,
                fused_batch_norms: weights.fused_batch_norms(),
                ignored: weights.set_aside().to_vec(),
                non_finite: Vec::new(),
            },
        };
        let model = ResNet3d::build(&config.plan()?, &mut loader)?;
        loader.finish(config, model)
    }

    fn finish(mut self, config: &ResNet3dConfig, model: ResNet3d) -> Result<(ResNet3d, LoadReport)> {
        if let Some(err) = self.wrong_shape {
            return Err(err);
        }
        if !self.missing.is_empty() {
            return Err(Error::MissingTensors { names: self.missing });
        }
        let mut unexpected = Vec::new();
        for name in self.weights.names().filter(|n| !self.used.contains(*n)) {
            if config.num_classes.is_none() && (name == "fc.weight" || name == "fc.bias") {
                self.report
                    .ignored
                    .push((name.to_string(), "the config has no head (num_classes = None)".into()));
            } else if self.report.zoo == Zoo::MedicalNet && name.starts_with("conv_seg.") {
                self.report.ignored.push((
                    name.to_string(),
                    "MedicalNet's segmentation head; the network ends at layer4 (add a head of your own)".into(),
                ));
            } else {
                unexpected.push(name.to_string());
            }
        }
        if !unexpected.is_empty() {
            return Err(Error::UnexpectedTensors { names: unexpected });
        }
        let ignored: BTreeSet<&str> = self.report.ignored.iter().map(|(n, _)| n.as_str()).collect();
        self.report.tensors_used = self.used.iter().filter(|n| !ignored.contains(n.as_str())).count();
        Ok((model, self.report))
    }

    /// The values of `name` if it has `shape`; otherwise records what is wrong.
    fn take(&mut self, name: &str, shape: &[usize]) -> Option<&'a [f32]> {
        let weights = self.weights;
        let Some(tensor) = weights.get(name) else {
            self.missing.push(name.to_string());
            return None;
        };
        self.used.insert(name.to_string());
        if tensor.shape != shape {
            if self.wrong_shape.is_none() {
                self.wrong_shape = Some(match unsupported_variant(name, shape, &tensor.shape) {
                    Some(what) => Error::Unsupported { what },
                    None => Error::WrongShape {
                        hint: shape_hint(name, shape, &tensor.shape),
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        found: tensor.shape.clone(),
                    },
                });
            }
            return None;
        }
        let non_finite = tensor.values.iter().filter(|v| !v.is_finite()).count();
        if non_finite > 0 {
            self.report.non_finite.push((name.to_string(), non_finite));
        }
        Some(&tensor.values)
    }

    fn tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), self.device)
    }

    /// A kernel from the checkpoint: `[o, c, h, w]` inflated to `spec`, or `spec`'s 3-D shape.
    fn kernel(&mut self, spec: &LayerSpec, checkpoint_in: usize) -> Option<Conv> {
        let [o, i, d, h, w] = spec.geometry.weight_shape();
        let key = format!("{}.weight", spec.name.conv_path());
        let values = match self.inflation {
            Some(rule) => {
                let values = self.take(&key, &[o, checkpoint_in, h, w])?;
                self.record(key.clone(), vec![o, checkpoint_in, h, w], spec);
                // Only the stem's input channels change: no copy of the other kernels.
                let inflated = if checkpoint_in == i {
                    inflate_kernel(values, [o, i, h, w], d, rule)
                } else {
                    adapt_in_channels(values, [o, checkpoint_in, h, w], i)
                        .and_then(|adapted| inflate_kernel(&adapted, [o, i, h, w], d, rule))
                };
                match inflated {
                    Ok(values) => values,
                    Err(_) => {
                        // Only an empty extent gets here (the shape matched the spec):
                        // a kernel with no values, reported as the wrong shape it is.
                        self.wrong_shape.get_or_insert_with(|| Error::WrongShape {
                            name: key.clone(),
                            expected: vec![o, i, h, w],
                            found: vec![o, checkpoint_in, h, w],
                            hint: "; a kernel needs every extent at least 1".into(),
                        });
                        return None;
                    }
                }
            }
            None => {
                let values = self.take(&key, &[o, checkpoint_in, d, h, w])?;
                self.record(key.clone(), vec![o, checkpoint_in, d, h, w], spec);
                if checkpoint_in == i {
                    values.to_vec()
                } else {
                    // The stem's RGB kernels folded into `i` channels (depth and height taps
                    // taken together as the rows of one plane).
                    match adapt_in_channels(values, [o, checkpoint_in, d * h, w], i) {
                        Ok(values) => values,
                        Err(err) => {
                            self.wrong_shape.get_or_insert(err);
                            return None;
                        }
                    }
                }
            }
        };
        Some(
            spec.geometry
                .build(Param::from_tensor(self.tensor(values, [o, i, d, h, w]))),
        )
    }

    fn record(&mut self, name: String, from: Vec<usize>, spec: &LayerSpec) {
        self.report.kernels.push(LoadedKernel {
            name,
            from,
            to: spec.geometry.weight_shape().to_vec(),
        });
    }
}

impl ParamSource for Loader<'_> {
    fn stem(&mut self, spec: &LayerSpec) -> Conv {
        // A 2-D stem keeps the checkpoint's input channels (3 for ImageNet) until adapted.
        // So does a video network's RGB stem (3-D), folded the same way.
        let checkpoint_in = match (self.inflation, self.weights.get("conv1.weight")) {
            (Some(_), Some(t)) if t.shape.len() == 4 => t.shape[1],
            (None, Some(t)) if self.report.zoo == Zoo::TorchvisionVideo && t.shape.len() == 5 => t.shape[1],
            _ => spec.geometry.in_channels,
        };
        self.report.stem_channels = (checkpoint_in, spec.geometry.in_channels);
        self.kernel(spec, checkpoint_in)
            .unwrap_or_else(|| FreshInit { device: self.device }.conv(spec))
    }

    fn conv(&mut self, spec: &LayerSpec) -> Conv {
        self.kernel(spec, spec.geometry.in_channels)
            .unwrap_or_else(|| FreshInit { device: self.device }.conv(spec))
    }

    fn batch_norm(&mut self, name: &str, channels: usize) -> BatchNorm {
        let mut bn = BatchNormConfig::new(channels).init(self.device);
        let counter = format!("{name}.num_batches_tracked");
        if self.weights.get(&counter).is_some() {
            self.used.insert(counter.clone());
            self.report
                .ignored
                .push((counter, "BatchNorm's update counter, not a weight".into()));
        }
        let [gamma, beta, mean, var] =
            ["weight", "bias", "running_mean", "running_var"].map(|p| self.take(&format!("{name}.{p}"), &[channels]));
        if let (Some(gamma), Some(beta), Some(mean), Some(var)) = (gamma, beta, mean, var) {
            bn.gamma = Param::from_tensor(self.tensor(gamma.to_vec(), [channels]));
            bn.beta = Param::from_tensor(self.tensor(beta.to_vec(), [channels]));
            bn.running_mean = RunningState::new(self.tensor(mean.to_vec(), [channels]));
            bn.running_var = RunningState::new(self.tensor(var.to_vec(), [channels]));
        }
        bn
    }

    fn head(&mut self, d_input: usize, classes: usize) -> Linear {
        let mut fresh = FreshInit { device: self.device };
        let checkpoint_classes = match self.weights.get("fc.weight") {
            Some(t) if t.shape.len() == 2 && t.shape[1] == d_input => Some(t.shape[0]),
            Some(_) => {
                // A head of the wrong width: let `take` report it.
                self.take("fc.weight", &[classes, d_input]);
                return fresh.head(d_input, classes);
            }
            None => None,
        };
        if checkpoint_classes != Some(classes) {
            for name in ["fc.weight", "fc.bias"] {
                if self.weights.get(name).is_some() {
                    self.used.insert(name.to_string());
                    let why = match checkpoint_classes {
                        Some(k) => format!(
                            "the checkpoint's head has {k} classes, the config asks for {classes}: a fresh head is used"
                        ),
                        None => format!(
                            "a head of another width; the config asks for {classes} classes: a fresh head is used"
                        ),
                    };
                    self.report.ignored.push((name.to_string(), why));
                }
            }
            self.report.head = Head::Fresh {
                checkpoint_classes,
                classes,
            };
            return fresh.head(d_input, classes);
        }
        let mut linear = fresh.head(d_input, classes);
        let (Some(weight), Some(bias)) = (
            self.take("fc.weight", &[classes, d_input]),
            self.take("fc.bias", &[classes]),
        ) else {
            return linear;
        };
        // PyTorch stores [classes, d_input]; Burn's Linear holds [d_input, classes].
        let mut transposed = vec![0.0; weight.len()];
        for (k, row) in weight.chunks_exact(d_input).enumerate() {
            for (j, v) in row.iter().enumerate() {
                transposed[j * classes + k] = *v;
            }
        }
        linear.weight = Param::from_tensor(self.tensor(transposed, [d_input, classes]));
        linear.bias = Some(Param::from_tensor(self.tensor(bias.to_vec(), [classes])));
        self.report.head = Head::Copied { classes };
        linear
    }
}
