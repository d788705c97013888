//! [`Inspection`]: what a checkpoint is and how to load it, found from its tensors' names and
//! shapes and the network's [`Plan`](crate::Plan), without building a network.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use super::format::{Format, detect_format};
use super::names::{detect_layout, medicalnet_depth, recognise_variant, torchvision_video, zero_padded};
use super::tensors::Weights;
use super::zoo::Zoo;
use crate::arch::config::ResNet3dConfig;
use crate::arch::kinds::{BlockKind, Layout, Shortcut};
use crate::error::{Error, Result};

/// What a checkpoint file holds and the exact settings that load it; see
/// [`Inspection::of_file`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inspection {
    /// The file's format.
    pub format: Format,
    /// The zoo the names and shapes point to.
    pub zoo: Zoo,
    /// 2 for a 2-D network (inflated when loaded), 3 for a native 3-D one.
    pub kernel_dims: usize,
    /// Block kind and blocks per stage.
    pub layout: Layout,
    /// Output channels of the stem (64 for the standard ResNets).
    pub width: usize,
    /// Input channels of the stem as stored.
    pub in_channels: usize,
    /// Classes of the head, `None` for a file without `fc`.
    pub classes: Option<usize>,
    /// Tensors per element type as stored (see [`Weights::element_types`]).
    pub element_types: BTreeMap<&'static str, usize>,
    /// Values in the state dict's floating-point tensors (BatchNorm's counters left out).
    pub parameters: usize,
    /// The configuration that loads the file: the network it was saved from, for 1 input
    /// channel when it is a 2-D ImageNet network (set yours).
    pub config: ResNet3dConfig,
    /// The Rust call that loads the file with [`config`](Self::config).
    pub rust: String,
    /// The tensors the configuration's network takes from the file and find their name
    /// there with the shape it needs.
    pub matched: usize,
    /// The tensors the configuration's network takes from the file.
    pub expected: usize,
    /// Names the network needs that the file lacks.
    pub missing: Vec<String>,
    /// Names whose shape is not the network's: `(name, file's shape, network's shape)`.
    pub wrong_shape: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Names in the file the network does not take (BatchNorm counters and, for a headless
    /// configuration, `fc` left out).
    pub unused: Vec<String>,
    /// What the names and shapes cannot tell, and how to check it.
    pub notes: Vec<String>,
}

impl Inspection {
    /// Reads `path` (`.pth`/`.pt`, `.safetensors`, `.onnx`) and works out what it is.
    ///
    /// # Errors
    /// Those of [`Weights::from_file`]; [`Error::Unsupported`] for a network that is not a
    /// torchvision-layout ResNet (the message says what was found).
    pub fn of_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let format = detect_format(path)?;
        let weights = Weights::from_file(path)?;
        let mut inspection = Self::of_weights(&weights, format)?;
        let loader = match inspection.kernel_dims {
            2 => "from_imagenet",
            _ => "from_checkpoint",
        };
        inspection.rust = format!(
            "ResNet3d::{loader}({:?}, &{}, &device)?",
            path.display().to_string(),
            inspection.rust
        );
        Ok(inspection)
    }

    /// [`of_file`](Self::of_file) for weights already read; [`rust`](Self::rust) then holds
    /// the configuration's expression only.
    ///
    /// # Errors
    /// As [`of_file`](Self::of_file).
    pub fn of_weights(weights: &Weights, format: Format) -> Result<Self> {
        if let Some(what) = recognise_variant(weights) {
            return Err(Error::Unsupported { what });
        }
        let video = torchvision_video(weights);
        let named = video.as_ref().unwrap_or(weights);
        let layout = detect_layout(named)?;
        let stem = named.get("conv1.weight").ok_or_else(|| Error::MissingTensors {
            names: vec!["conv1.weight".into()],
        })?;
        let kernel_dims = stem.shape.len().saturating_sub(2);
        if !(2..=3).contains(&kernel_dims) {
            return Err(Error::Unsupported {
                what: format!(
                    "conv1.weight has shape {:?}: neither a 2-D ([out, in, h, w]) nor a 3-D ([out, in, d, h, w]) kernel",
                    stem.shape
                ),
            });
        }
        // R(2+1)D's stem is factorised: its depth half carries the network's width.
        let width = named
            .get("stem_temporal.conv.weight")
            .map_or(stem.shape[0], |t| t.shape[0]);
        let in_channels = stem.shape[1];
        let classes = named.get("fc.weight").and_then(|t| t.shape.first().copied());
        let mut notes = Vec::new();
        let (zoo, config, rust) = if video.is_some() {
            let later_depth = named.get("layer2.0.conv1.weight").and_then(|t| t.shape.get(2).copied());
            let (config, name) = match (layout.block, later_depth) {
                (BlockKind::Basic2Plus1d, _) => (ResNet3dConfig::r2plus1d_18(), "r2plus1d_18"),
                (_, Some(1)) => (ResNet3dConfig::mc3_18(), "mc3_18"),
                _ => (ResNet3dConfig::r3d_18(), "r3d_18"),
            };
            let config = config.with_width(width).with_num_classes(classes);
            let width_call = if width == 64 {
                String::new()
            } else {
                format!(".with_width({width})")
            };
            let rust = format!(
                "ResNet3dConfig::{name}(){width_call}{}",
                classes_call(classes, Some(400))
            );
            (Zoo::TorchvisionVideo, config, rust)
        } else if kernel_dims == 2 {
            let mut config = ResNet3dConfig::from_layout(layout)
                .with_width(width)
                .with_in_channels(1)
                .with_num_classes(classes)
                .with_stride_in_1x1(weights.stride_in_1x1() == Some(true));
            let mut rust = format!(
                "{}.with_in_channels(1){}",
                preset_call(layout, width),
                classes_call(classes, None)
            );
            if config.stride_in_1x1 {
                rust.push_str(".with_stride_in_1x1(true)");
            }
            if zero_padded(named) {
                config = config.with_shortcut(Shortcut::ZeroPad);
                rust.push_str(".with_shortcut(Shortcut::ZeroPad)");
            }
            if weights.stride_in_1x1().is_none() && layout.block == BlockKind::Bottleneck {
                notes.push(
                    "a state dict cannot tell ResNet v1 (stride on the first 1x1) from v1.5 (on the 3x3, torchvision's): v1.5 assumed; set with_stride_in_1x1(true) for v1 weights".into(),
                );
            }
            notes.push(format!(
                "the stem is stored for {in_channels} channels; with_in_channels(N) adapts it to your data (1 for CT)"
            ));
            (Zoo::ImageNet, config, rust)
        } else {
            // MedicalNet's files: one channel, no classifier, and its segmentation head or its
            // parameter-free shortcuts. Other files with such shortcuts are torchvision-3-D
            // networks built with them.
            let medicalnet = in_channels == 1
                && classes.is_none()
                && (named.names().any(|n| n.starts_with("conv_seg.")) || zero_padded(named));
            match medicalnet_depth(layout).filter(|_| medicalnet) {
                Some(depth) => {
                    let config = ResNet3dConfig::medicalnet(depth)?.with_width(width);
                    let width_call = if width == 64 {
                        String::new()
                    } else {
                        format!(".with_width({width})")
                    };
                    let rust = format!("ResNet3dConfig::medicalnet({depth})?{width_call}");
                    notes.push("MedicalNet files have no classifier: add one with .with_num_classes(Some(N))".into());
                    (Zoo::MedicalNet, config, rust)
                }
                None => {
                    let stem_depth = stem.shape[2];
                    let block_conv = match layout.block {
                        BlockKind::Bottleneck => "layer1.0.conv2.weight",
                        _ => "layer1.0.conv1.weight",
                    };
                    let block_depth = named.get(block_conv).and_then(|t| t.shape.get(2).copied()).unwrap_or(3);
                    let mut config = ResNet3dConfig::from_layout(layout)
                        .with_width(width)
                        .with_in_channels(in_channels)
                        .with_num_classes(classes)
                        .with_stem_depth_kernel(stem_depth)
                        .with_block_depth_kernel(block_depth);
                    let mut rust = format!(
                        "{}.with_in_channels({in_channels}){}.with_stem_depth_kernel({stem_depth}).with_block_depth_kernel({block_depth})",
                        preset_call(layout, width),
                        classes_call(classes, None)
                    );
                    if zero_padded(named) {
                        config = config.with_shortcut(Shortcut::ZeroPad);
                        rust.push_str(".with_shortcut(Shortcut::ZeroPad)");
                    }
                    notes.push(
                        "kernel shapes are in the file, strides and paddings are not: check stem_depth_stride, max_pool and stage_depth_strides against the code that trained it".into(),
                    );
                    if in_channels == 1 && classes.is_none() && medicalnet_depth(layout).is_some() {
                        notes.push(format!(
                            "one channel and no head: if this is a MedicalNet file, use ResNet3dConfig::medicalnet({})?",
                            medicalnet_depth(layout).unwrap_or(0)
                        ));
                    }
                    (Zoo::Torchvision3d, config, rust)
                }
            }
        };
        if weights.fused_batch_norms() > 0 {
            notes.push(format!(
                "{} BatchNorms were fused into convolutions by the exporter: they load as identities",
                weights.fused_batch_norms()
            ));
        }
        let parameters = weights
            .iter()
            .filter(|(name, _)| !name.ends_with("num_batches_tracked"))
            .map(|(_, t)| t.values.len())
            .sum();
        let mut inspection = Self {
            format,
            zoo,
            kernel_dims,
            layout,
            width,
            in_channels,
            classes,
            element_types: weights.element_types().clone(),
            parameters,
            config,
            rust: String::new(),
            matched: 0,
            expected: 0,
            missing: Vec::new(),
            wrong_shape: Vec::new(),
            unused: Vec::new(),
            notes,
        };
        inspection.match_plan(named)?;
        inspection.rust = rust;
        Ok(inspection)
    }

    /// Compares the tensors the configuration's plan takes with the file's.
    fn match_plan(&mut self, weights: &Weights) -> Result<()> {
        let plan = self.config.plan()?;
        let mut needed: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, layer) in plan.layers().enumerate() {
            let g = &layer.geometry;
            let [o, c, kd, kh, kw] = g.weight_shape();
            let kernel = match self.kernel_dims {
                // The stem's input channels are adapted to the configuration's when inflating.
                2 => vec![o, if i == 0 { self.in_channels } else { c }, kh, kw],
                _ => vec![o, c, kd, kh, kw],
            };
            needed.push((format!("{}.weight", layer.name.conv_path()), kernel));
            let norm = layer.name.norm_path();
            for part in ["weight", "bias", "running_mean", "running_var"] {
                needed.push((format!("{norm}.{part}"), vec![o]));
            }
        }
        if let Some(head) = plan.head {
            needed.push(("fc.weight".into(), vec![head.classes, head.features]));
            needed.push(("fc.bias".into(), vec![head.classes]));
        }
        let names: BTreeSet<&str> = needed.iter().map(|(n, _)| n.as_str()).collect();
        self.expected = needed.len();
        for (name, shape) in &needed {
            match weights.get(name) {
                None => self.missing.push(name.clone()),
                Some(t) if &t.shape != shape => self.wrong_shape.push((name.clone(), t.shape.clone(), shape.clone())),
                Some(_) => self.matched += 1,
            }
        }
        self.unused = weights
            .names()
            .filter(|n| !names.contains(n) && !n.ends_with("num_batches_tracked"))
            .filter(|n| plan.head.is_some() || !n.starts_with("fc."))
            .map(str::to_string)
            .collect();
        Ok(())
    }
}

/// `ResNet3dConfig::resnetN()` for a standard layout (with its width when not 64), or
/// `from_layout(..)`.
fn preset_call(layout: Layout, width: usize) -> String {
    let base = match layout.depth() {
        Some(depth) if Layout::preset(depth) == Some(layout) => format!("ResNet3dConfig::resnet{depth}()"),
        _ => format!(
            "ResNet3dConfig::from_layout(Layout::new(BlockKind::{:?}, {:?}))",
            layout.block, layout.layers
        ),
    };
    match width {
        64 => base,
        _ => format!("{base}.with_width({width})"),
    }
}

/// `.with_num_classes(..)` unless the preset's `default` already says it.
fn classes_call(classes: Option<usize>, default: Option<usize>) -> String {
    match classes {
        c if c == default => String::new(),
        Some(n) => format!(".with_num_classes(Some({n}))"),
        None => ".with_num_classes(None)".into(),
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types: Vec<String> = self.element_types.iter().map(|(t, n)| format!("{n} {t}")).collect();
        writeln!(f, "format:      {}", self.format)?;
        writeln!(f, "network:     {} ({}-D kernels)", self.zoo, self.kernel_dims)?;
        writeln!(
            f,
            "layout:      {:?} blocks {:?}{}",
            self.layout.block,
            self.layout.layers,
            self.layout.depth().map(|d| format!(" (depth {d})")).unwrap_or_default()
        )?;
        writeln!(f, "width:       {}", self.width)?;
        writeln!(f, "in channels: {}", self.in_channels)?;
        match self.classes {
            Some(n) => writeln!(f, "classes:     {n}")?,
            None => writeln!(f, "classes:     none (no fc head)")?,
        }
        match types.is_empty() {
            true => writeln!(f, "dtype:       (ONNX initializers, read as f32)")?,
            false => writeln!(f, "dtype:       {}", types.join(", "))?,
        }
        writeln!(f, "parameters:  {}", self.parameters)?;
        writeln!(
            f,
            "loads:       {} of the {} tensors the configuration takes{}",
            self.matched,
            self.expected,
            if self.matched == self.expected { " (all)" } else { "" }
        )?;
        for name in &self.missing {
            writeln!(f, "  missing:     {name}")?;
        }
        for (name, found, needed) in &self.wrong_shape {
            writeln!(f, "  wrong shape: {name} is {found:?}, the network needs {needed:?}")?;
        }
        if !self.unused.is_empty() {
            let shown: Vec<&str> = self.unused.iter().take(8).map(String::as_str).collect();
            let more = self.unused.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            writeln!(f, "  not used:    {}{more}", shown.join(", "))?;
        }
        match self.matched == self.expected {
            true => writeln!(f, "load with:   {}", self.rust)?,
            false => writeln!(
                f,
                "load with:   no configuration found that takes every tensor (the nearest: {}); the loader's error names what differs",
                self.rust
            )?,
        }
        for note in &self.notes {
            writeln!(f, "note:        {note}")?;
        }
        Ok(())
    }
}
