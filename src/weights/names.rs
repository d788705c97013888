//! Recognising a checkpoint from its tensor names and shapes: the block layout, the model zoo
//! (and the preset that builds it), variants torchvision's layout does not have, and the
//! renaming of torchvision's video ResNets to this crate's names.

use crate::arch::config::ResNet3dConfig;
use crate::arch::kinds::{BlockKind, Layout, Shortcut};
use crate::error::{Error, Result};
use crate::weights::tensors::Weights;
use crate::weights::zoo::Zoo;

impl Weights {
    /// The block layout the names describe (block kind and blocks per stage), and the width
    /// (output channels of `conv1.weight`): what a [`ResNet3dConfig`](crate::ResNet3dConfig)
    /// for this checkpoint needs.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the names are not those of a torchvision-layout ResNet.
    pub fn layout(&self) -> Result<(Layout, usize)> {
        let layout = detect_layout(self)?;
        let width = match self.get("conv1.weight") {
            Some(t) if !t.shape.is_empty() => t.shape[0],
            _ => {
                return Err(Error::MissingTensors {
                    names: vec!["conv1.weight".into()],
                });
            }
        };
        Ok((layout, width))
    }
}

/// The block layout a checkpoint's names describe.
pub(crate) fn detect_layout(weights: &Weights) -> Result<Layout> {
    let mut layers = [0usize; 4];
    let mut bottleneck = false;
    let mut factorised = false;
    for name in weights.names() {
        let mut parts = name.split('.');
        let stage = parts
            .next()
            .and_then(|s| s.strip_prefix("layer"))
            .and_then(|i| i.parse::<usize>().ok());
        let block = parts.next().and_then(|b| b.parse::<usize>().ok());
        if let (Some(stage @ 1..=4), Some(block)) = (stage, block) {
            layers[stage - 1] = layers[stage - 1].max(block + 1);
            let module = parts.next();
            bottleneck |= module == Some("conv3");
            factorised |= module == Some("conv1") && parts.next() == Some("spatial");
        }
    }
    if layers.contains(&0) {
        let first: Vec<&str> = weights.names().take(5).collect();
        return Err(Error::Unsupported {
            what: format!(
                "not a torchvision-layout ResNet: no tensors for every stage layer1..layer4 (blocks found per stage: {layers:?}; first names: {first:?})"
            ),
        });
    }
    let block = if bottleneck {
        BlockKind::Bottleneck
    } else if factorised {
        BlockKind::Basic2Plus1d
    } else {
        BlockKind::Basic
    };
    Ok(Layout { block, layers })
}

/// A torchvision video ResNet's state dict (`stem.0`, `layer1.0.conv1.0`, `layer1.0.conv1.1`
/// for the BatchNorm) under this crate's names (`conv1`, `layer1.0.conv1`, `layer1.0.bn1`),
/// or `None` for other files. R(2+1)D's factorised convolutions become
/// `layer1.0.conv1.{spatial,bn,temporal}` and its stem's depth half `stem_temporal`.
pub(crate) fn torchvision_video(weights: &Weights) -> Option<Weights> {
    weights.get("stem.0.weight")?;
    // R(2+1)D: factorised blocks (`layerS.B.convN.0.0`), and a factorised stem (`stem.3`).
    let factorised = weights
        .names()
        .any(|n| n.starts_with("layer") && n.contains(".conv1.0.0."));
    Some(weights.renamed(|name| {
        // The stem: conv, BatchNorm (R(2+1)D: then ReLU, depth conv, BatchNorm).
        for (from, to) in [
            ("stem.0.", "conv1."),
            ("stem.1.", "bn1."),
            ("stem.3.", "stem_temporal.conv."),
            ("stem.4.", "stem_temporal.bn."),
        ] {
            if let Some(rest) = name.strip_prefix(from) {
                return format!("{to}{rest}");
            }
        }
        // layerS.B.convN.0.* -> layerS.B.convN.*, layerS.B.convN.1.* -> layerS.B.bnN.*; in
        // R(2+1)D, convN.0 is itself (spatial conv, BatchNorm, ReLU, depth conv):
        // layerS.B.convN.0.{0,1,3}.* -> layerS.B.convN.{spatial,bn,temporal}.*
        let parts: Vec<&str> = name.splitn(6, '.').collect();
        if let [stage, block, conv, index @ ("0" | "1"), rest @ ..] = parts.as_slice()
            && stage.starts_with("layer")
            && let Some(n) = conv.strip_prefix("conv")
        {
            let rest = rest.join(".");
            if *index == "1" {
                return format!("{stage}.{block}.bn{n}.{rest}");
            }
            if factorised {
                for (from, to) in [("0.", "spatial."), ("1.", "bn."), ("3.", "temporal.")] {
                    if let Some(tail) = rest.strip_prefix(from) {
                        return format!("{stage}.{block}.conv{n}.{to}{tail}");
                    }
                }
            }
            return format!("{stage}.{block}.conv{n}.{rest}");
        }
        name.to_string()
    }))
}

/// ResNet variants recognised from tensor names that torchvision's layout does not have, with
/// what was found; `None` for anything else (the mapping then names what is missing or extra).
/// Type-A shortcuts: layer2 starts without a projection although it doubles the channels
/// (MedicalNet-18 and -34; every torchvision-layout file has one there).
pub(crate) fn zero_padded(weights: &Weights) -> bool {
    weights.get("layer2.0.conv1.weight").is_some() && weights.get("layer2.0.downsample.0.weight").is_none()
}

/// MedicalNet's depth for a layout, if it is one of MedicalNet's.
pub(crate) fn medicalnet_depth(layout: Layout) -> Option<usize> {
    [10, 18, 34, 50, 101, 152, 200]
        .into_iter()
        .find(|&d| ResNet3dConfig::medicalnet(d).is_ok_and(|c| c.layout() == layout))
}

/// The zoo of a native 3-D checkpoint, and an error where `config` cannot build that zoo's
/// network: MedicalNet's signatures (a `conv_seg` head, parameter-free shortcuts) with a
/// configuration of other stages or shortcuts, or projection shortcuts in the file with a
/// configuration that asks for parameter-free ones.
pub(crate) fn recognise_zoo(weights: &Weights, config: &ResNet3dConfig) -> Result<Zoo> {
    let has = |name: &str| weights.get(name).is_some();
    let one_channel_3d = weights
        .get("conv1.weight")
        .is_some_and(|t| t.shape.len() == 5 && t.shape[1] == 1);
    let layout = detect_layout(weights)?;
    let seg_head = weights.names().any(|n| n.starts_with("conv_seg."));
    let zero_pad = zero_padded(weights);
    if config.shortcut == Shortcut::ZeroPad
        && let Some(name) = weights.names().find(|n| n.contains(".downsample.0."))
    {
        return Err(Error::InvalidConfig {
            field: "shortcut",
            reason: format!(
                "is ZeroPad (parameter-free), but the checkpoint has projection shortcuts (`{name}`): use Shortcut::Projection"
            ),
        });
    }
    let signature = match (seg_head, zero_pad) {
        (true, _) => Some("it has MedicalNet's segmentation head `conv_seg`"),
        (false, true) => {
            Some("layer2.0 has no projection shortcut although the channels double (MedicalNet's type-A shortcut)")
        }
        (false, false) => None,
    };
    let medicalnet_config = config.has_medicalnet_stages();
    let shortcut_fits = (config.shortcut == Shortcut::ZeroPad) == zero_pad;
    match signature {
        Some(_) if medicalnet_config && shortcut_fits => Ok(Zoo::MedicalNet),
        // Zero-padded shortcuts asked for by the configuration, with other stages: a network
        // of this crate's own (an ONNX export, a saved state dict), not MedicalNet's.
        Some(_) if !seg_head && zero_pad && config.shortcut == Shortcut::ZeroPad => Ok(Zoo::Torchvision3d),
        Some(why) => Err(Error::ZooMismatch {
            zoo: Zoo::MedicalNet,
            why: why.to_string(),
            preset: match medicalnet_depth(layout) {
                Some(depth) => format!("ResNet3dConfig::medicalnet({depth})?"),
                None => format!(
                    "ResNet3dConfig::medicalnet(depth)? (block counts {:?} are not one of MedicalNet's depths)",
                    layout.layers
                ),
            },
        }),
        None if medicalnet_config && one_channel_3d && !has("fc.weight") => Ok(Zoo::MedicalNet),
        None => Ok(Zoo::Torchvision3d),
    }
}

pub(crate) fn recognise_variant(weights: &Weights) -> Option<String> {
    let find = |test: &dyn Fn(&str) -> bool| weights.names().find(|n| test(n)).map(str::to_string);
    let in_block = |n: &str, parts: &[&str]| n.starts_with("layer") && parts.iter().any(|p| n.contains(p));
    let numbered = |n: &str, module: &str| {
        n.strip_prefix(module)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.split('.').next())
            .is_some_and(|i| i.parse::<usize>().is_ok())
    };
    if let Some(n) = find(&|n| numbered(n, "conv1")) {
        return Some(format!(
            "deep stem: `{n}` shows conv1 as a sequence of convolutions (ResNet-C/D/S, timm's resnet*c/d/s); \
             only torchvision's single-convolution stem is supported"
        ));
    }
    if let Some(n) = find(&|n| in_block(n, &[".se.", ".se_module.", ".se_layer."])) {
        return Some(format!(
            "squeeze-and-excitation modules in the blocks (`{n}`): SE-ResNets are not supported"
        ));
    }
    if let Some(n) = find(&|n| in_block(n, &[".attn.", ".cbam.", ".eca."])) {
        return Some(format!(
            "attention modules in the blocks (`{n}`): attention ResNets are not supported"
        ));
    }
    if let Some(n) = find(&|n| in_block(n, &[".aa.", ".blur_pool."])) {
        return Some(format!(
            "anti-aliased downsampling in the blocks (`{n}`): not supported"
        ));
    }
    let conv_after_pool = |n: &str| {
        n.starts_with("layer")
            && n.ends_with(".downsample.1.weight")
            && weights.get(n).is_some_and(|t| t.shape.len() >= 4)
    };
    if let Some(n) = find(&conv_after_pool) {
        return Some(format!(
            "average-pool shortcut (ResNet-D, timm's resnet*d): `{n}` is a convolution after a pooling layer \
             in the shortcut; only torchvision's strided 1x1 shortcut is supported"
        ));
    }
    None
}

/// ResNet variants whose kernels cannot be mapped, recognised from a kernel's shape: grouped
/// convolutions (ResNeXt) and wider bottlenecks (Wide ResNet).
pub(crate) fn unsupported_variant(name: &str, expected: &[usize], found: &[usize]) -> Option<String> {
    let (&[o, i, ..], &[fo, fi, ..]) = (expected, found) else {
        return None;
    };
    if !name.ends_with(".weight") || expected.len() != found.len() || name.starts_with("conv1") {
        return None;
    }
    if fo == o && fi < i && fi > 0 && i % fi == 0 {
        return Some(format!(
            "grouped convolution: `{name}` has {fi} input channels per output where the ResNet has {i} ({} groups): ResNeXt-style networks are not supported",
            i / fi
        ));
    }
    if name.contains(".conv1.") && fo == 2 * o && fi == i {
        return Some(format!(
            "wide bottleneck: `{name}` has {fo} output channels where the ResNet has {o}: Wide ResNets are not supported"
        ));
    }
    None
}

/// Which setting explains a shape that does not fit, when one does.
pub(crate) fn shape_hint(name: &str, expected: &[usize], found: &[usize]) -> String {
    match (expected.len(), found.len()) {
        (4, 5) => return "; this is a 3-D kernel: load native 3-D checkpoints with ResNet3d::from_checkpoint".into(),
        (5, 4) => return "; this is a 2-D kernel: inflate 2-D checkpoints with ResNet3d::from_imagenet".into(),
        _ => {}
    }
    if name == "conv1.weight" && found.first() != expected.first() {
        return format!(
            "; the checkpoint's stem has {} channels: set width to {}",
            found[0], found[0]
        );
    }
    if found.len() == 5 && expected.len() == 5 {
        if found[1] != expected[1] && name == "conv1.weight" {
            return format!("; set in_channels to {}", found[1]);
        }
        if found[2] != expected[2] {
            let field = if name == "conv1.weight" {
                "stem_depth_kernel"
            } else {
                "block_depth_kernel"
            };
            return format!("; set {field} to {}", found[2]);
        }
    }
    String::new()
}
