//! Adam's update ([`kernels::adam`](crate::kernels::adam)) as an operation of Burn's `flex`
//! backend, for [`FusedAdam`](crate::train::FusedAdam).

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{Tensor, TensorData};

use crate::kernels::adam::{AdamStep, step};
use crate::kernels::buffers::RECYCLED;

/// Adam's update as a backend operation (on `flex` only: other backends use Burn's Adam).
#[backend_extension(Flex)]
pub(crate) trait AdamBackend: Backend {
    /// `(parameter, first moment, second moment)` after one step with `grad`; the three
    /// inputs of the parameter's shape. The moments are zeros before the first step.
    fn resnet3d_adam(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The values of `t` as a contiguous `f32` vector that can be written: the tensor's own buffer
/// when nothing else holds it, else a copy.
fn owned_values(t: FlexTensor) -> Vec<f32> {
    let len = t.layout().num_elements();
    // A converted f32 TensorData always reads back as f32; the fallback (zeros of the right
    // length) is never taken.
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_else(|_| vec![0.0; len])
}

impl AdamBackend for Flex {
    fn resnet3d_adam(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        s: AdamStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = param.layout().shape().clone();
        let mut p = owned_values(param);
        let g = owned_values(grad);
        let mut m = owned_values(moment_1);
        let mut v = owned_values(moment_2);
        assert!(
            g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
            "resnet3d_adam: the parameter, its gradient and moments differ in size (checked by FusedAdam)"
        );
        step(&mut p, &g, &mut m, &mut v, &s);
        // The gradient's buffer serves the next step's weight gradient.
        RECYCLED.give(g);
        let dims = shape.to_vec();
        (
            FlexTensor::from_data(TensorData::new(p, dims.clone())),
            FlexTensor::from_data(TensorData::new(m, dims.clone())),
            FlexTensor::from_data(TensorData::new(v, dims)),
        )
    }
}

/// One [`AdamStep`] on a parameter on a `flex` device: `(parameter, moment_1, moment_2)`
/// after it. The caller checks that the four tensors are `f32`, of one shape, on one `flex`
/// device.
pub(crate) fn adam<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    step: AdamStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (p, m, v) = <Dispatch as AdamBackend>::resnet3d_adam(
        param.into_dispatch(),
        grad.into_dispatch(),
        moment_1.into_dispatch(),
        moment_2.into_dispatch(),
        step,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}
