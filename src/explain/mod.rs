//! Where the network looked: 3-D Grad-CAM and CAM heat maps.
//!
//! **Grad-CAM** (Selvaraju et al., 2017) for class `c` at a stage with feature maps `A^k`
//! (channel `k`, `Z` voxels): the weight of each channel is its mean gradient,
//! `alpha_k = (1 / Z) sum_v d y^c / d A^k_v`, and the map is `ReLU(sum_k alpha_k A^k)`, with
//! `y^c` the class logit (before softmax). **CAM** (Zhou et al., 2016) needs no gradient: at
//! `layer4`, followed by global average pooling and the linear head, `d y^c / d A^k_v =
//! W[c, k] / Z`, so Grad-CAM there is `ReLU(sum_k W[c, k] A^k) / Z`: the same map up to its
//! scale, which the scaling below removes. CAM therefore runs on
//! [`FrozenResNet3d`] too.
//!
//! Every map is upsampled to the input's size by trilinear interpolation (PyTorch's
//! `interpolate(mode="trilinear", align_corners=False)`) and scaled per item to `0..1` by its
//! maximum: high is important, and the ReLU keeps only evidence *for* the class (without it,
//! MONAI's min-max scaling can invert a map whose values are all negative). A map whose
//! values are all zero (no voxel speaks for the class at that stage) stays zero, and
//! [`Heatmap::empty`] says so per item rather than hiding it behind a rescaling.
//!
//! Pictures (feature `pictures`): [`Montage`] draws a map over axial slices of the windowed
//! scan, with a colour bar, as PNG; for a viewer, bring the map onto the scan's grid with
//! [`Preprocessing::to_scan_grid`](crate::data::Preprocessing::to_scan_grid) and write it
//! with [`Volume::save_nifti`](crate::preprocess::Volume::save_nifti) (feature `nifti`).

#[cfg(feature = "pictures")]
mod picture;
mod upsample;

use burn::tensor::{Device, Tensor, TensorData};

#[cfg(feature = "pictures")]
pub use picture::{Montage, Picture, Slices};

#[cfg(feature = "train")]
use crate::arch::walk::Tap;
use crate::error::{Error, Result};
use crate::frozen::network::FrozenResNet3d;
use crate::model::network::ResNet3d;

/// A stage whose output Grad-CAM explains: the field of [`Features`](crate::Features).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `layer1`: fine detail, weak class evidence.
    Layer1,
    /// `layer2`.
    Layer2,
    /// `layer3`.
    Layer3,
    /// `layer4`, the default: the last stage before pooling, the strongest class evidence.
    Layer4,
}

impl std::str::FromStr for Stage {
    type Err = Error;

    /// `layer1` .. `layer4` (as [`Features`](crate::Features) names them).
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "layer1" => Ok(Stage::Layer1),
            "layer2" => Ok(Stage::Layer2),
            "layer3" => Ok(Stage::Layer3),
            "layer4" => Ok(Stage::Layer4),
            _ => Err(Error::InvalidConfig {
                field: "Stage",
                reason: format!("`{name}` is not a stage: use layer1, layer2, layer3 or layer4"),
            }),
        }
    }
}

impl Stage {
    /// 0 for `layer1` .. 3 for `layer4`.
    pub fn index(self) -> usize {
        match self {
            Stage::Layer1 => 0,
            Stage::Layer2 => 1,
            Stage::Layer3 => 2,
            Stage::Layer4 => 3,
        }
    }
}

/// Heat maps for a batch, one per item, at the input's size.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// `[N, D, H, W]` values in `0..=1`, item by item, row-major.
    pub values: Vec<f32>,
    /// `[N, D, H, W]`: the input's batch and volume extents.
    pub dims: [usize; 4],
    /// `[D', H', W']`: the extent of the stage's feature maps the map was upsampled from. An
    /// axis of 1 means the map cannot tell places apart along it (at `layer4` an input of
    /// 32 voxels in-plane gives 1): explain an earlier stage, or feed a larger input.
    pub source: [usize; 3],
    /// Per item: whether the map was zero everywhere before scaling (nothing at this stage
    /// speaks for the class; try another class or an earlier stage).
    pub empty: Vec<bool>,
}

impl Heatmap {
    /// The maps as a tensor `[N, D, H, W]` on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(self.values.clone(), self.dims), device)
    }

    /// Item `n`'s map, `D * H * W` values.
    pub fn item(&self, n: usize) -> Option<&[f32]> {
        let [_, d, h, w] = self.dims;
        self.values.get(n * d * h * w..(n + 1) * d * h * w)
    }

    /// Item `n`'s map as a [`Volume`](crate::preprocess::Volume) of voxels `spacing` mm (the
    /// network input's): for a montage (feature `pictures`) or, brought back with
    /// [`Preprocessing::to_scan_grid`](crate::data::Preprocessing::to_scan_grid), a NIfTI file.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the batch has no item `n`; [`Error::InvalidVolume`] for a
    /// spacing that is not positive.
    pub fn volume(&self, n: usize, spacing: [f32; 3]) -> Result<crate::preprocess::Volume> {
        let [_, d, h, w] = self.dims;
        let values = self.item(n).ok_or_else(|| Error::InvalidInput {
            dims: self.dims.to_vec(),
            what: format!("no item {n} in a batch of {}", self.dims[0]),
        })?;
        crate::preprocess::Volume::new(values.to_vec(), [d, h, w], spacing)
    }
}

/// The head's weights of `class` per feature channel, checked.
fn class_weights(fc: Option<(&[f32], usize)>, channels: usize, class: usize) -> Result<Vec<f32>> {
    let Some((weight, classes)) = fc else {
        return Err(Error::InvalidInput {
            dims: vec![],
            what: "the network has no head (num_classes = None): a class map needs class logits".into(),
        });
    };
    if class >= classes {
        return Err(Error::InvalidInput {
            dims: vec![class],
            what: format!("class {class} of a head with {classes} classes; classes count from 0"),
        });
    }
    // `weight` is Burn's Linear layout, [d_input, classes] row-major.
    Ok((0..channels).map(|k| weight[k * classes + class]).collect())
}

/// `ReLU(sum_k alpha[n, k] A[n, k])` for every item (`a`: `[n, c, d, h, w]` channels-first,
/// `alpha`: `[n, c]`), upsampled to `size` and scaled to `0..1` per item.
fn finish(a: &[f32], [n, c, d, h, w]: [usize; 5], alpha: &[f32], size: [usize; 3]) -> Result<Heatmap> {
    let voxels = d * h * w;
    let [od, oh, ow] = size;
    let mut values = Vec::with_capacity(n * od * oh * ow);
    let mut empty = Vec::with_capacity(n);
    for b in 0..n {
        let mut map = vec![0.0f32; voxels];
        for k in 0..c {
            let weight = alpha[b * c + k];
            let channel = &a[(b * c + k) * voxels..][..voxels];
            map.iter_mut().zip(channel).for_each(|(m, v)| *m += weight * v);
        }
        if map.iter().any(|v| v.is_nan()) {
            return Err(Error::InvalidInput {
                dims: vec![n, c, d, h, w],
                what: format!("item {b}'s class map holds NaN: the input or the network does"),
            });
        }
        map.iter_mut().for_each(|v| *v = v.max(0.0));
        let mut up = upsample::trilinear(&map, [d, h, w], size);
        let max = up.iter().fold(0.0f32, |m, &v| m.max(v));
        empty.push(max <= 0.0);
        if max > 0.0 {
            up.iter_mut().for_each(|v| *v /= max);
        }
        values.extend(up);
    }
    Ok(Heatmap {
        values,
        dims: [n, od, oh, ow],
        source: [d, h, w],
        empty,
    })
}

fn values5(t: Tensor<5>) -> Result<(Vec<f32>, [usize; 5])> {
    let dims = t.dims();
    let values = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|err| Error::InvalidInput {
            dims: dims.to_vec(),
            what: format!("feature maps that cannot be read as f32: {err:?}"),
        })?;
    Ok((values, dims))
}

impl ResNet3d {
    /// The head as `(weights [d_input, classes], classes)`, if any.
    fn head_weights(&self) -> Result<Option<(Vec<f32>, usize)>> {
        let Some(fc) = &self.fc else { return Ok(None) };
        let [_, classes] = fc.weight.dims();
        let weight = fc
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|err| Error::InvalidNetwork {
                layer: "fc".into(),
                what: format!("weights that cannot be read as f32: {err:?}"),
            })?;
        Ok(Some((weight, classes)))
    }

    /// CAM for `class`: `ReLU(sum_k W[class, k] layer4_k)`, upsampled to the input and scaled
    /// to `0..1` per item (see the [module docs](crate::explain)). No gradients: any device.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an input the network does not take, a network without a
    /// head or a class it does not have, or a map holding NaN.
    pub fn cam(&self, x: Tensor<5>, class: usize) -> Result<Heatmap> {
        let [_, _, d, h, w] = x.dims();
        let features = self.try_features(x)?;
        let (a, dims) = values5(features.layer4)?;
        let head = self.head_weights()?;
        let weights = class_weights(head.as_ref().map(|(w, c)| (w.as_slice(), *c)), dims[1], class)?;
        let alpha: Vec<f32> = (0..dims[0]).flat_map(|_| weights.iter().copied()).collect();
        finish(&a, dims, &alpha, [d, h, w])
    }
}

impl FrozenResNet3d {
    /// [`ResNet3d::cam`] on the frozen network.
    ///
    /// # Errors
    /// As [`ResNet3d::cam`].
    pub fn cam(&self, x: Tensor<5>, class: usize) -> Result<Heatmap> {
        let [_, _, d, h, w] = x.dims();
        let features = self.features(x)?;
        let (a, dims) = values5(features.layer4)?;
        let weights = class_weights(self.head_weights(), dims[1], class)?;
        let alpha: Vec<f32> = (0..dims[0]).flat_map(|_| weights.iter().copied()).collect();
        finish(&a, dims, &alpha, [d, h, w])
    }
}

#[cfg(feature = "train")]
impl ResNet3d {
    /// Grad-CAM for `class` at `stage` (see the [module docs](crate::explain)): the network
    /// and `x` on an autodiff device (`Device::flex().autodiff()`); BatchNorm uses the
    /// running statistics only if the network is in eval mode, as for any forward pass.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an input the network does not take, a device without
    /// autodiff, a network without a head or a class it does not have, or a map holding NaN.
    pub fn grad_cam(&self, x: Tensor<5>, class: usize, stage: Stage) -> Result<Heatmap> {
        let dims = x.dims();
        self.check_input(dims)?;
        if !x.device().is_autodiff() {
            return Err(Error::InvalidInput {
                dims: dims.to_vec(),
                what: "Grad-CAM needs gradients: put the network and the input on an autodiff device \
                       (Device::flex().autodiff()), or use cam() for layer4 without gradients"
                    .into(),
            });
        }
        let head = self.head_weights()?;
        // A head, and `class` one of its classes (the weights themselves are not needed).
        class_weights(head.as_ref().map(|(w, c)| (w.as_slice(), *c)), 1, class)?;
        let [n, _, d, h, w] = dims;
        let mut explained = None;
        let act = self.walk(x, |tap, act| {
            if tap != Tap::Stage(stage.index()) {
                return Ok(act);
            }
            // The stage's output as a leaf: its gradient is what Grad-CAM weighs.
            let leaf = act.detach().require_grad();
            explained = Some(leaf.clone());
            Ok(leaf)
        })?;
        let logits = self.head(act);
        let Some(a) = explained else {
            return Err(Error::InvalidNetwork {
                layer: "layer4".into(),
                what: "the network has fewer than four stages".into(),
            });
        };
        let classes = logits.dims()[1];
        // Each item's score depends on its own activations only, so one backward pass of the
        // batch's sum gives every item's gradient.
        let score = logits.slice([0..n, class..(class + 1).min(classes)]).sum();
        let grads = score.backward();
        let Some(grad) = a.grad(&grads) else {
            return Err(Error::InvalidNetwork {
                layer: format!("layer{}", stage.index() + 1),
                what: "no gradient reached the stage's output".into(),
            });
        };
        let (g, gdims) = values5(grad)?;
        let (a, adims) = values5(a)?;
        let voxels: usize = adims[2..].iter().product();
        let alpha: Vec<f32> = g
            .chunks_exact(voxels.max(1))
            .map(|ch| ch.iter().sum::<f32>() / voxels as f32)
            .collect();
        debug_assert_eq!(gdims, adims);
        finish(&a, adims, &alpha, [d, h, w])
    }
}
