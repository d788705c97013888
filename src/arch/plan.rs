//! [`Plan`]: the network as data, once.
//!
//! A plan is the stem's layers, the optional max pool, four stages of blocks and the head,
//! where every layer is a convolution with the BatchNorm after it and what follows
//! ([`After`]), and every block is its main chain of layers and its shortcut
//! ([`ShortcutPlan`]). It is made once from a configuration ([`ResNet3dConfig::plan`],
//! torchvision's topology rules) and read back from a built network
//! ([`ResNet3d::plan`](crate::ResNet3d::plan)); everything that walks the network is a fold or
//! a walk over it: building the modules and loading a checkpoint (the layers' names are the
//! checkpoint's keys), [`validate`](crate::ResNet3d::validate), output shapes, parameter
//! counts, feature strides, `forward`, `features`, Grad-CAM's taps and the frozen network,
//! which maps the plan's layers through one fold-and-pack step.
//!
//! The plan is generic over what a layer is: [`LayerSpec`] (names, geometry, what follows)
//! for the plan as data; the modules' convolution and BatchNorm, or a frozen layer's packed
//! kernel, for the engines that run it.
//!
//! [`ResNet3dConfig::plan`]: crate::ResNet3dConfig::plan

use std::fmt;

use crate::arch::geometry::{ConvGeometry, PoolGeometry, ZeroPadShortcut};
use crate::arch::kinds::{BlockKind, STAGE_NAMES};
use crate::error::{Error, Result};

/// Where a layer sits in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// The stem.
    Stem,
    /// Block `index` of stage `stage` (0 for `layer1`).
    Block {
        /// 0 for `layer1` .. 3 for `layer4`.
        stage: usize,
        /// The block's index in its stage.
        index: usize,
    },
    /// A block run on its own (a block's `forward`): its layers' names have no prefix.
    Detached,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Stem => f.write_str("stem"),
            Site::Block { stage, index } => write!(f, "{}.{index}", STAGE_NAMES.get(*stage).unwrap_or(&"layer?")),
            Site::Detached => f.write_str("block"),
        }
    }
}

impl Site {
    /// `part` under this site in torchvision's state-dict naming: `layer1.0.conv1`, or `conv1`
    /// in the stem and in a detached block.
    pub fn path(&self, part: &str) -> String {
        match self {
            Site::Block { .. } => format!("{self}.{part}"),
            Site::Stem | Site::Detached => part.to_string(),
        }
    }
}

/// The names of a layer's convolution and BatchNorm (their state-dict prefixes, e.g.
/// `layer1.0.conv1` and `layer1.0.bn1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerName {
    /// Where the layer sits.
    pub site: Site,
    /// The convolution's name within the site (`conv1`, `conv1.spatial`, `downsample.0`).
    pub conv: &'static str,
    /// The BatchNorm's name within the site (`bn1`, `conv1.bn`, `downsample.1`).
    pub norm: &'static str,
}

impl LayerName {
    /// The convolution's full name, e.g. `layer1.0.conv1`.
    pub fn conv_path(&self) -> String {
        self.site.path(self.conv)
    }

    /// The BatchNorm's full name, e.g. `layer1.0.bn1`.
    pub fn norm_path(&self) -> String {
        self.site.path(self.norm)
    }
}

impl fmt::Display for LayerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.conv_path())
    }
}

/// What follows a layer's BatchNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Nothing (a projection shortcut).
    Nothing,
    /// ReLU.
    Relu,
    /// The block's shortcut added, then ReLU: the last layer of a block's main chain.
    AddRelu,
}

impl After {
    /// Whether a ReLU follows.
    pub fn relu(self) -> bool {
        self != After::Nothing
    }
}

/// One layer: a convolution, the BatchNorm after it, and what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    /// The names of the convolution and its BatchNorm.
    pub name: LayerName,
    /// The convolution's geometry.
    pub geometry: ConvGeometry,
    /// What follows the BatchNorm.
    pub after: After,
}

impl LayerSpec {
    /// The learnable parameters: the kernel, and the BatchNorm's scale and shift.
    pub fn parameters(&self) -> Option<usize> {
        self.geometry
            .parameters()?
            .checked_add(self.geometry.out_channels.checked_mul(2)?)
    }
}

/// A layer of a plan: anything that carries a [`LayerSpec`] (the spec itself, or what an
/// engine runs for it).
pub trait PlanLayer {
    /// The layer's names, geometry and what follows it.
    fn spec(&self) -> &LayerSpec;
}

impl PlanLayer for LayerSpec {
    fn spec(&self) -> &LayerSpec {
        self
    }
}

/// A block's shortcut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShortcutPlan<L = LayerSpec> {
    /// The block's input itself.
    Identity,
    /// A 1x1x1 convolution and BatchNorm with the block's stride (`downsample.0`, `.1`).
    Projection(L),
    /// MedicalNet's parameter-free shortcut.
    ZeroPad(ZeroPadShortcut),
}

/// A residual block: the main chain, whose last layer adds the shortcut before its ReLU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPlan<L = LayerSpec> {
    /// The block kind (which module holds these layers).
    pub kind: BlockKind,
    /// Where the block sits.
    pub site: Site,
    /// The main chain, in order.
    pub main: Vec<L>,
    /// The shortcut.
    pub shortcut: ShortcutPlan<L>,
}

/// The linear head on the globally averaged features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSpec {
    /// Features in (the last stage's channels).
    pub features: usize,
    /// Classes out.
    pub classes: usize,
}

/// The network as data: stem, max pool, four stages of blocks, head. See the
/// [crate docs](crate#the-network-as-data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<L = LayerSpec> {
    /// The stem's layers (`conv1`, then a factorised stem's `stem_temporal`), each with ReLU.
    pub stem: Vec<L>,
    /// The max pool after the stem, if any.
    pub max_pool: Option<PoolGeometry>,
    /// `layer1` .. `layer4`.
    pub stages: [Vec<BlockPlan<L>>; 4],
    /// The head, if any.
    pub head: Option<HeadSpec>,
}

impl<L> BlockPlan<L> {
    /// The same block with every layer mapped by `f`.
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn map<M, E>(&self, mut f: impl FnMut(&L) -> Result<M, E>) -> Result<BlockPlan<M>, E> {
        Ok(BlockPlan {
            kind: self.kind,
            site: self.site,
            main: self.main.iter().map(&mut f).collect::<Result<_, E>>()?,
            shortcut: match &self.shortcut {
                ShortcutPlan::Identity => ShortcutPlan::Identity,
                ShortcutPlan::Projection(layer) => ShortcutPlan::Projection(f(layer)?),
                ShortcutPlan::ZeroPad(zp) => ShortcutPlan::ZeroPad(*zp),
            },
        })
    }

    /// Every layer: the main chain, then the projection if any.
    pub fn layers(&self) -> impl Iterator<Item = &L> {
        let projection = match &self.shortcut {
            ShortcutPlan::Projection(layer) => Some(layer),
            _ => None,
        };
        self.main.iter().chain(projection)
    }
}

impl<L> Plan<L> {
    /// The same plan with every layer mapped by `f`.
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn map<M, E>(&self, mut f: impl FnMut(&L) -> Result<M, E>) -> Result<Plan<M>, E> {
        let mut stages: [Vec<BlockPlan<M>>; 4] = Default::default();
        for (mapped, blocks) in stages.iter_mut().zip(&self.stages) {
            *mapped = blocks.iter().map(|b| b.map(&mut f)).collect::<Result<_, E>>()?;
        }
        Ok(Plan {
            stem: self.stem.iter().map(&mut f).collect::<Result<_, E>>()?,
            max_pool: self.max_pool,
            stages,
            head: self.head,
        })
    }

    /// Every block, `layer1.0` first.
    pub fn blocks(&self) -> impl Iterator<Item = &BlockPlan<L>> {
        self.stages.iter().flatten()
    }

    /// Every layer: the stem's, then each block's.
    pub fn layers(&self) -> impl Iterator<Item = &L> {
        self.stem.iter().chain(self.blocks().flat_map(BlockPlan::layers))
    }
}

impl<L: PlanLayer> BlockPlan<L> {
    /// The block's stride per axis: its main chain's strides multiplied (saturating).
    pub fn stride(&self) -> [usize; 3] {
        self.main.iter().fold([1; 3], |acc, layer| {
            let s = layer.spec().geometry.stride;
            [0, 1, 2].map(|a| acc[a].saturating_mul(s[a]))
        })
    }

    /// The block's output channels (its main chain's last; 0 for an empty chain).
    pub fn out_channels(&self) -> usize {
        self.main.last().map_or(0, |l| l.spec().geometry.out_channels)
    }

    /// The learnable parameters of every layer, if countable.
    pub fn parameters(&self) -> Option<usize> {
        self.layers()
            .try_fold(0usize, |acc, l| acc.checked_add(l.spec().parameters()?))
    }

    /// Checks the block on an input of `in_channels` channels: every layer's geometry (the
    /// one check), the channel chain, and a shortcut that gives the main chain's channels at
    /// its stride. Returns the output channels.
    fn check(&self, in_channels: usize) -> Result<usize> {
        let name = self.site.to_string();
        let Some(last) = self.main.last() else {
            return Err(Error::InvalidNetwork {
                layer: name,
                what: "a block without convolutions".into(),
            });
        };
        let mut channels = in_channels;
        for layer in &self.main {
            channels = check_layer(layer.spec(), channels)?;
        }
        let (shortcut_channels, shortcut_stride, layer) = match &self.shortcut {
            ShortcutPlan::Identity => (in_channels, [1, 1, 1], format!("{name} (identity shortcut)")),
            ShortcutPlan::Projection(projection) => {
                let spec = projection.spec();
                let out = check_layer(spec, in_channels)?;
                (out, spec.geometry.stride, spec.name.conv_path())
            }
            ShortcutPlan::ZeroPad(zp) => {
                let layer = format!("{name} (zero-padded shortcut)");
                if zp.out_channels < in_channels {
                    return Err(Error::InvalidNetwork {
                        layer,
                        what: format!(
                            "{} output channel(s) from {in_channels} input channel(s): the zero-padded shortcut only adds channels",
                            zp.out_channels
                        ),
                    });
                }
                (zp.out_channels, zp.stride, layer)
            }
        };
        let stride = self.stride();
        if shortcut_channels != channels || shortcut_stride != stride {
            return Err(Error::InvalidNetwork {
                layer,
                what: format!(
                    "the shortcut gives {shortcut_channels} channel(s) at stride {shortcut_stride:?}, the main branch {channels} at stride {stride:?}"
                ),
            });
        }
        if last.spec().after != After::AddRelu {
            return Err(Error::InvalidNetwork {
                layer: last.spec().name.conv_path(),
                what: "the last layer of a block must add the shortcut".into(),
            });
        }
        Ok(channels)
    }

    /// The block's output shape for an input of shape `dims`, with the shortcut's shape
    /// checked against the main chain's.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] where a layer does not take its input;
    /// [`Error::InvalidNetwork`] naming the block where the two branches disagree.
    pub fn output_dims(&self, dims: [usize; 5]) -> Result<[usize; 5]> {
        let mut main = dims;
        for layer in &self.main {
            let spec = layer.spec();
            main = spec.geometry.output_dims(main, &spec.name.conv_path())?;
        }
        let shortcut = match &self.shortcut {
            ShortcutPlan::Identity => dims,
            ShortcutPlan::Projection(projection) => {
                let spec = projection.spec();
                spec.geometry.output_dims(dims, &spec.name.conv_path())?
            }
            ShortcutPlan::ZeroPad(zp) => zp.output_dims(dims, &self.site.to_string())?,
        };
        if main != shortcut {
            return Err(Error::InvalidNetwork {
                layer: self.site.to_string(),
                what: format!(
                    "on an input of shape {dims:?} the main branch gives {main:?} and the shortcut {shortcut:?}"
                ),
            });
        }
        Ok(main)
    }
}

/// Checks a layer's geometry (the one check) and that it takes `in_channels`; returns its
/// output channels.
fn check_layer(spec: &LayerSpec, in_channels: usize) -> Result<usize> {
    let name = spec.name.conv_path();
    spec.geometry.check(&name)?;
    if spec.geometry.in_channels != in_channels {
        return Err(Error::InvalidNetwork {
            layer: name,
            what: format!(
                "takes {} input channel(s), the layer before it gives {in_channels}",
                spec.geometry.in_channels
            ),
        });
    }
    Ok(spec.geometry.out_channels)
}

impl<L: PlanLayer> Plan<L> {
    /// Input channels the network takes (the stem's first layer's; 0 without a stem).
    pub fn in_channels(&self) -> usize {
        self.stem.first().map_or(0, |l| l.spec().geometry.in_channels)
    }

    /// Checks that the layers fit together: every convolution's geometry, the channel chain
    /// from the stem to the head, shortcuts with their main chain's channels and strides, a
    /// valid max pool, a block in every stage and a head as wide as the features.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] naming the first layer that does not fit.
    pub fn check(&self) -> Result<()> {
        let Some(first) = self.stem.first() else {
            return Err(Error::InvalidNetwork {
                layer: "conv1".into(),
                what: "the network has no stem".into(),
            });
        };
        let mut channels = first.spec().geometry.in_channels;
        for layer in &self.stem {
            channels = check_layer(layer.spec(), channels)?;
        }
        if let Some(pool) = &self.max_pool {
            pool.check("maxpool")?;
        }
        for (s, stage) in self.stages.iter().enumerate() {
            if stage.is_empty() {
                return Err(Error::InvalidNetwork {
                    layer: STAGE_NAMES[s].into(),
                    what: "the stage has no block".into(),
                });
            }
            for block in stage {
                channels = block.check(channels)?;
            }
        }
        if let Some(head) = &self.head
            && (head.features != channels || head.classes == 0)
        {
            return Err(Error::InvalidNetwork {
                layer: "fc".into(),
                what: format!(
                    "a head of {} feature(s) and {} class(es) after features of {channels} channel(s)",
                    head.features, head.classes
                ),
            });
        }
        Ok(())
    }

    /// The shape of `layer4`'s output for an input of shape `dims`, layer by layer.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first layer that does not take its input;
    /// [`Error::InvalidNetwork`] naming a block whose branches disagree on it.
    pub fn output_dims(&self, dims: [usize; 5]) -> Result<[usize; 5]> {
        let mut x = dims;
        for layer in &self.stem {
            let spec = layer.spec();
            x = spec.geometry.output_dims(x, &spec.name.conv_path())?;
        }
        if let Some(pool) = &self.max_pool {
            x = pool.output_dims(x, "maxpool")?;
        }
        for block in self.blocks() {
            x = block.output_dims(x)?;
        }
        Ok(x)
    }

    /// The learnable parameters (kernels, BatchNorm scales and shifts, the head), if
    /// countable: PyTorch's `sum(p.numel() for p in model.parameters())`.
    pub fn parameter_count(&self) -> Option<usize> {
        let layers = self
            .layers()
            .try_fold(0usize, |acc, l| acc.checked_add(l.spec().parameters()?))?;
        match &self.head {
            Some(head) => layers.checked_add(head.features.checked_add(1)?.checked_mul(head.classes)?),
            None => Some(layers),
        }
    }
}
