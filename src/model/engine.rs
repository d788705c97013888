//! The Burn model as a plan and as an engine: [`ModelLayer`] names a convolution module and
//! its BatchNorm as a layer of a [`Plan`](crate::Plan), and [`Burn`] runs the walk on Burn
//! tensors, one operation per layer (the crate's on `flex`, Burn's elsewhere).

use burn::nn::BatchNorm;
use burn::tensor::Tensor;

use crate::arch::geometry::{PoolGeometry, ZeroPadShortcut};
use crate::arch::plan::{After, LayerName, LayerSpec, PlanLayer, Site};
use crate::arch::walk::Engine;
use crate::error::{Error, Result};
use crate::model::conv::Conv;
use crate::model::norm::conv_batch_norm;

/// A layer of the Burn model: its spec, read from the modules, and the modules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelLayer<'a> {
    pub spec: LayerSpec,
    pub conv: &'a Conv,
    pub bn: &'a BatchNorm,
}

impl PlanLayer for ModelLayer<'_> {
    fn spec(&self) -> &LayerSpec {
        &self.spec
    }
}

impl<'a> ModelLayer<'a> {
    /// `conv` and `bn` as the layer `name`, followed by `after`.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] naming the BatchNorm if it is not as wide as the convolution
    /// (the convolution's own geometry is checked with the plan).
    pub(crate) fn new(name: LayerName, after: After, conv: &'a Conv, bn: &'a BatchNorm) -> Result<Self> {
        let width = conv.out_channels();
        let widths = [
            // Shapes read without making a parameter Burn has not made yet.
            bn.gamma.lazy_shape().dims::<1>()[0],
            bn.beta.lazy_shape().dims::<1>()[0],
            bn.running_mean.value().dims()[0],
            bn.running_var.value().dims()[0],
        ];
        if widths.iter().any(|&w| w != width) {
            return Err(Error::InvalidNetwork {
                layer: name.norm_path(),
                what: format!(
                    "BatchNorm of widths {widths:?} (weight, bias, running mean, running variance) after a convolution of {width} channels"
                ),
            });
        }
        Ok(Self {
            spec: LayerSpec {
                name,
                geometry: conv.geometry(),
                after,
            },
            conv,
            bn,
        })
    }
}

/// The Burn model's engine: each layer one convolution-and-BatchNorm operation on tensors.
#[derive(Debug, Default)]
pub(crate) struct Burn<'a>(std::marker::PhantomData<&'a ()>);

impl<'a> Engine for Burn<'a> {
    type Layer = ModelLayer<'a>;
    type Act = Tensor<5>;

    fn layer(&self, layer: &ModelLayer<'a>, x: &Tensor<5>, residual: Option<&Tensor<5>>) -> Result<Tensor<5>> {
        conv_batch_norm(
            layer.conv,
            layer.bn,
            &layer.spec.name,
            x.clone(),
            layer.spec.after.relu(),
            residual.cloned(),
        )
    }

    fn max_pool(&self, pool: &PoolGeometry, x: Tensor<5>) -> Result<Tensor<5>> {
        crate::model::pool::pool(pool, x)
    }

    fn zero_pad(&self, shortcut: &ZeroPadShortcut, x: &Tensor<5>, site: Site) -> Result<Tensor<5>> {
        shortcut.output_dims(x.dims(), &site.to_string())?;
        Ok(shortcut.forward(x.clone()))
    }

    #[cfg(feature = "flex")]
    fn branches(&self, x: &Tensor<5>) -> Option<(Tensor<5>, Tensor<5>)> {
        crate::ops::branch::runs_branches(x).then(|| crate::ops::branch::branches(x.clone()))
    }
}
