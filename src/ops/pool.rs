//! 3-D max pooling as a backend operation, with its gradient for `Autodiff<Flex>`.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::tensors::{channels_last, channels_last_values};
use crate::arch::geometry::PoolShape;
use crate::kernels::pool::{self, Fresh};

/// 3-D max pooling as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait MaxPoolBackend: Backend {
    /// `x` `[n, c, d, h, w]` max-pooled to `[n, c, d', h', w']`, the shapes being `shape`'s.
    fn resnet3d_max_pool3d(x: FloatTensor<Self>, shape: PoolShape) -> FloatTensor<Self>;
}

/// The gradient of [`MaxPoolBackend::resnet3d_max_pool3d`].
pub(crate) trait MaxPoolGradients: Backend {
    /// The input's gradient for the output gradient `grad`.
    fn resnet3d_max_pool3d_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, shape: PoolShape) -> FloatTensor<Self>;
}

impl MaxPoolBackend for Flex {
    fn resnet3d_max_pool3d(x: FlexTensor, p: PoolShape) -> FlexTensor {
        let [od, oh, ow] = p.output;
        // Nothing kept between calls: the output is the op's, a channels-last copy of the
        // input is freed.
        match pool::forward(channels_last_values(&x), &p, &Fresh) {
            Some(y) => channels_last([p.batch, p.channels, od, oh, ow], y),
            None => panic!("max pool: the output of {} values cannot be allocated", p.output_len()),
        }
    }
}

impl MaxPoolGradients for Flex {
    fn resnet3d_max_pool3d_grad(x: FlexTensor, grad: FlexTensor, p: PoolShape) -> FlexTensor {
        let [d, h, w] = p.input;
        let dx = pool::backward(&channels_last_values(&x), &channels_last_values(&grad), &p);
        channels_last([p.batch, p.channels, d, h, w], dx)
    }
}

/// Whether [`max_pool3d`] runs on `x`: `f32` on a `flex` device (with or without autodiff);
/// elsewhere the caller uses Burn's operations.
pub(crate) fn runs_pool(x: &Tensor<5>) -> bool {
    x.device().without_autodiff() == burn::tensor::Device::flex() && x.dtype() == DType::F32
}

/// The max pool through the crate's kernels where [`runs_pool`] says so; `shape` is
/// [`PoolGeometry::on`](crate::arch::geometry::PoolGeometry::on)'s for `x`.
pub(crate) fn max_pool3d(x: Tensor<5>, shape: PoolShape) -> Tensor<5> {
    Tensor::from_dispatch(<Dispatch as MaxPoolBackend>::resnet3d_max_pool3d(
        x.into_dispatch(),
        shape,
    ))
}

mod autodiff {
    use burn::backend::Backend;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::{Autodiff, NodeId};
    use burn::backend::tensor::FloatTensor;

    use super::{MaxPoolBackend, MaxPoolGradients, PoolShape};

    #[derive(Debug)]
    struct MaxPool;

    impl<B: Backend + MaxPoolGradients> Backward<B, 1> for MaxPool {
        /// The input (checkpointed) and the shape.
        type State = (NodeId, PoolShape);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let [node_x] = ops.parents;
            if let Some(node) = node_x {
                let (x_state, shape) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                grads.register::<B>(node.id, B::resnet3d_max_pool3d_grad(x, grad, shape));
            }
        }
    }

    impl<B: Backend + MaxPoolBackend + MaxPoolGradients, C: CheckpointStrategy> MaxPoolBackend for Autodiff<B, C> {
        fn resnet3d_max_pool3d(x: FloatTensor<Self>, shape: PoolShape) -> FloatTensor<Self> {
            match MaxPool.prepare::<C>([x.node()]).compute_bound().stateful() {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x), shape);
                    prep.finish(state, B::resnet3d_max_pool3d(x.into_primitive(), shape))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::resnet3d_max_pool3d(x.into_primitive(), shape)),
            }
        }
    }
}
