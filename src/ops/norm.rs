//! BatchNorm as backend operations: on the batch's statistics with its gradient for
//! `Autodiff<Flex>` (with the ReLU, or the residual and ReLU, after it), and in eval mode
//! folded into the convolution before it (inference without autodiff).

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, ExtensionType, Flex, backend_extension};
use burn::tensor::Tensor;

use super::conv::runs;
use super::tensors::{channels_last, channels_last_values, dims5, f32_values, flex_tensor, same_device};
use crate::arch::geometry::ConvShape;
use crate::arch::plan;
use crate::kernels::channels_last as cl;
use crate::kernels::fold::BatchNormValues;
use crate::kernels::matmul::Kernel;
use crate::kernels::norm;

/// What the BatchNorm op applies after the normalisation, in the same pass.
#[derive(ExtensionType)]
pub(crate) enum After<B: Backend> {
    /// Nothing.
    Nothing,
    /// ReLU.
    Relu,
    /// The residual added, then ReLU: the end of a residual block.
    AddRelu(FloatTensor<B>),
}

/// BatchNorm on the batch's statistics as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait BatchNormBackend: Backend {
    /// `gamma * (x - mean) / sqrt(var + epsilon) + beta` per channel (axis 1), `moments` being
    /// `x`'s [`resnet3d_channel_moments`](Self::resnet3d_channel_moments) (computed once for
    /// the op, its backward pass and the running averages); then `after`.
    fn resnet3d_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        moments: FloatTensor<Self>,
        #[extension_type] after: After<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Per channel (axis 1) of `x` (`[n, c, ...]`): `[2, c]`, the mean and the biased
    /// variance, as the op above computes them. Not differentiated: for the running averages.
    fn resnet3d_channel_moments(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// A convolution followed by an eval-mode BatchNorm (and ReLU, or the residual and ReLU), as
/// one backend operation: for inference without autodiff only (it has no backward pass).
#[backend_extension(Flex)]
pub(crate) trait ConvBatchNormBackend: Backend {
    /// `after(bn(conv(x, weight)))`, `bn` with the running statistics `mean`, `var`.
    #[allow(clippy::too_many_arguments)]
    fn resnet3d_conv3d_bn_eval(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        #[extension_type] after: After<Self>,
        epsilon: f64,
        shape: ConvShape,
    ) -> FloatTensor<Self>;
}

impl ConvBatchNormBackend for Flex {
    fn resnet3d_conv3d_bn_eval(
        x: FlexTensor,
        weight: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        after: After<Self>,
        epsilon: f64,
        s: ConvShape,
    ) -> FlexTensor {
        let (gamma, beta, mean, var) = (
            f32_values(&gamma),
            f32_values(&beta),
            f32_values(&mean),
            f32_values(&var),
        );
        let bn = BatchNormValues {
            gamma: &gamma,
            beta: &beta,
            mean: &mean,
            var: &var,
            epsilon,
        };
        let residual = residual_values(&after);
        let then = match after {
            After::Nothing => plan::After::Nothing,
            After::Relu => plan::After::Relu,
            After::AddRelu(_) => plan::After::AddRelu,
        };
        let y = cl::forward_folded(
            Kernel::detect(),
            &channels_last_values(&x),
            &f32_values(&weight),
            &bn,
            residual.as_deref(),
            then,
            &s,
        );
        let [od, oh, ow] = s.output;
        channels_last([s.batch, s.out_channels, od, oh, ow], y)
    }
}

/// The gradients of [`BatchNormBackend::resnet3d_batch_norm_train`]:
/// `(x, gamma, beta, residual)`, the last for [`After::AddRelu`].
pub(crate) trait BatchNormGradients: Backend {
    #[allow(clippy::too_many_arguments)]
    fn resnet3d_batch_norm_train_grad(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        moments: FloatTensor<Self>,
        after: After<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
    );
}

/// `[2, c]` moments back as `(mean, variance)` per channel.
fn stats_of(moments: &FlexTensor) -> Vec<(f64, f64)> {
    let values = f32_values(moments);
    let c = values.len() / 2;
    (0..c)
        .map(|i| (f64::from(values[i]), f64::from(values[c + i])))
        .collect()
}

/// The residual's values, if any, for [`norm::Then`].
fn residual_values(after: &After<Flex>) -> Option<std::borrow::Cow<'_, [f32]>> {
    match after {
        After::AddRelu(r) => Some(channels_last_values(r)),
        _ => None,
    }
}

fn then<'a>(after: &After<Flex>, residual: &'a Option<std::borrow::Cow<'_, [f32]>>) -> norm::Then<'a> {
    match (after, residual) {
        (After::Nothing, _) => norm::Then::Nothing,
        (After::AddRelu(_), Some(r)) => norm::Then::AddRelu(r),
        _ => norm::Then::Relu,
    }
}

impl BatchNormBackend for Flex {
    fn resnet3d_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        moments: FlexTensor,
        after: After<Self>,
        epsilon: f64,
    ) -> FlexTensor {
        let dims = dims5(&x);
        let residual = residual_values(&after);
        let y = norm::forward(
            &channels_last_values(&x),
            &f32_values(&gamma),
            &f32_values(&beta),
            &stats_of(&moments),
            epsilon,
            then(&after, &residual),
            dims[1],
        );
        channels_last(dims, y)
    }

    fn resnet3d_channel_moments(x: FlexTensor) -> FlexTensor {
        let channels = dims5(&x)[1];
        let stats = norm::moments(&channels_last_values(&x), channels);
        let values = stats
            .iter()
            .map(|&(mean, _)| mean as f32)
            .chain(stats.iter().map(|&(_, var)| var as f32))
            .collect();
        flex_tensor(values, [2, channels])
    }
}

impl BatchNormGradients for Flex {
    fn resnet3d_batch_norm_train_grad(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        moments: FlexTensor,
        after: After<Self>,
        grad: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor, Option<FlexTensor>) {
        let dims = dims5(&x);
        let channels = dims[1];
        let residual = residual_values(&after);
        let (dx, dgamma, dbeta, dresidual) = norm::backward(
            &channels_last_values(&x),
            &f32_values(&gamma),
            &f32_values(&beta),
            &stats_of(&moments),
            then(&after, &residual),
            &channels_last_values(&grad),
            epsilon,
            channels,
        );
        (
            channels_last(dims, dx),
            flex_tensor(dgamma, [channels]),
            flex_tensor(dbeta, [channels]),
            dresidual.map(|d| channels_last(dims, d)),
        )
    }
}

/// A BatchNorm's parameters and running statistics as tensors, and its epsilon.
pub(crate) struct NormTensors {
    pub gamma: Tensor<1>,
    pub beta: Tensor<1>,
    pub mean: Tensor<1>,
    pub var: Tensor<1>,
    pub epsilon: f64,
}

/// `after(bn(conv(x, weight)))` with `bn` in eval mode as one pass of the crate's kernels
/// (`shape`: the convolution's checked geometry on `x`), for inference on `flex` without
/// autodiff; `None` where that does not apply (autodiff, another backend, shapes the pass
/// does not take, parameters of other widths or types), and then the caller runs the
/// convolution and the BatchNorm one after the other.
pub(crate) fn conv_batch_norm_eval(
    x: &Tensor<5>,
    weight: Tensor<5>,
    bn: NormTensors,
    shape: ConvShape,
    relu: bool,
    residual: Option<&Tensor<5>>,
) -> Option<Tensor<5>> {
    let device = x.device();
    if device.is_autodiff() || !runs(x, &weight, None) || !cl::folds(&shape) {
        return None;
    }
    let out = shape.output_dims();
    let NormTensors {
        gamma,
        beta,
        mean,
        var,
        epsilon,
    } = bn;
    let fits = [&gamma, &beta, &mean, &var]
        .iter()
        .all(|t| same_device(t, &device) && t.dtype() == DType::F32 && t.dims() == [shape.out_channels])
        && residual.is_none_or(|r| same_device(r, &device) && r.dtype() == DType::F32 && r.dims() == out);
    if !fits {
        return None;
    }
    let after = match (relu, residual) {
        (true, Some(r)) => After::AddRelu(r.clone().into_dispatch()),
        (true, None) => After::Relu,
        (false, _) => After::Nothing,
    };
    Some(Tensor::from_dispatch(
        <Dispatch as ConvBatchNormBackend>::resnet3d_conv3d_bn_eval(
            x.clone().into_dispatch(),
            weight.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            mean.into_dispatch(),
            var.into_dispatch(),
            after,
            epsilon,
            shape,
        ),
    ))
}

/// Whether [`batch_norm_train`] runs on `x`: `f32` on a `flex` device (with or without
/// autodiff), `gamma` and `beta` there too, one value per channel, and a residual (if any) of
/// `x`'s shape there too.
pub(crate) fn runs_batch_norm(
    x: &Tensor<5>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    residual: Option<&Tensor<5>>,
) -> bool {
    let device = x.device();
    device.clone().without_autodiff() == burn::tensor::Device::flex()
        && x.dtype() == DType::F32
        && [gamma, beta]
            .iter()
            .all(|t| same_device(t, &device) && t.dtype() == DType::F32 && t.dims()[0] == x.dims()[1])
        && residual.is_none_or(|r| same_device(r, &device) && r.dtype() == DType::F32 && r.dims() == x.dims())
}

/// BatchNorm on the batch's statistics through the crate's kernels, then ReLU if `relu`
/// (after adding `residual` if given), with its gradient; and the batch's mean and biased
/// variance (`[c]` each, outside the graph) for the running averages. Call it where
/// [`runs_batch_norm`] says so.
pub(crate) fn batch_norm_train(
    x: Tensor<5>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
    residual: Option<Tensor<5>>,
) -> (Tensor<5>, Tensor<1>, Tensor<1>) {
    let c = x.dims()[1];
    let moments: Tensor<2> = Tensor::from_dispatch(<Dispatch as BatchNormBackend>::resnet3d_channel_moments(
        x.clone().detach().into_dispatch(),
    ));
    let after = match (relu, residual) {
        (true, Some(r)) => After::AddRelu(r.into_dispatch()),
        (true, None) => After::Relu,
        (false, _) => After::Nothing,
    };
    let y = Tensor::from_dispatch(<Dispatch as BatchNormBackend>::resnet3d_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        moments.clone().into_dispatch(),
        after,
        epsilon,
    ));
    (
        y,
        moments.clone().slice([0..1, 0..c]).reshape([c]),
        moments.slice([1..2, 0..c]).reshape([c]),
    )
}

/// BatchNorm with the running statistics (eval mode) through the crate's kernels, then ReLU
/// if `relu` (after adding `residual` if given): the train-mode op's forward pass given the
/// running mean and variance as the statistics. For devices without autodiff only (that op's
/// backward pass treats the statistics as the batch's); call it where [`runs_batch_norm`]
/// says so and `running_mean`, `running_var` are `f32` of one value per channel there too.
pub(crate) fn batch_norm_eval(
    x: Tensor<5>,
    (gamma, beta): (Tensor<1>, Tensor<1>),
    (running_mean, running_var): (Tensor<1>, Tensor<1>),
    epsilon: f64,
    relu: bool,
    residual: Option<Tensor<5>>,
) -> Tensor<5> {
    let c = x.dims()[1];
    let moments = Tensor::cat(vec![running_mean, running_var], 0).reshape([2, c]);
    let after = match (relu, residual) {
        (true, Some(r)) => After::AddRelu(r.into_dispatch()),
        (true, None) => After::Relu,
        (false, _) => After::Nothing,
    };
    Tensor::from_dispatch(<Dispatch as BatchNormBackend>::resnet3d_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        moments.into_dispatch(),
        after,
        epsilon,
    ))
}

mod autodiff {
    use burn::backend::Backend;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::retro_forward::RetroForward;
    use burn::backend::autodiff::checkpoint::state::BackwardStates;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::{Autodiff, NodeId};
    use burn::backend::tensor::FloatTensor;

    use super::{After, BatchNormBackend, BatchNormGradients};

    #[derive(Debug)]
    struct BatchNormTrain;
    #[derive(Debug)]
    struct BatchNormAddRelu;

    /// `x`, `gamma`, `beta`, the moments and the residual (checkpointed), whether the forward
    /// applied ReLU, epsilon.
    type NormState = (NodeId, NodeId, NodeId, NodeId, Option<NodeId>, bool, f64);

    /// The gradients of the BatchNorm op, registered for its tracked inputs.
    fn norm_backward<B: Backend + BatchNormGradients>(
        nodes: [Option<NodeId>; 4],
        grad: FloatTensor<B>,
        (x_state, gamma_state, beta_state, moments_state, residual_state, relu, epsilon): NormState,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let gamma = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(gamma_state);
        let beta = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(beta_state);
        let moments = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(moments_state);
        let after = match residual_state {
            Some(r) => After::AddRelu(checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(r)),
            None if relu => After::Relu,
            None => After::Nothing,
        };
        let (dx, dgamma, dbeta, dresidual) =
            B::resnet3d_batch_norm_train_grad(x, gamma, beta, moments, after, grad, epsilon);
        let [node_x, node_gamma, node_beta, node_residual] = nodes;
        for (node, value) in [
            (node_x, Some(dx)),
            (node_gamma, Some(dgamma)),
            (node_beta, Some(dbeta)),
            (node_residual, dresidual),
        ] {
            if let (Some(node), Some(value)) = (node, value) {
                grads.register::<B>(node, value);
            }
        }
    }

    impl<B: Backend + BatchNormGradients> Backward<B, 3> for BatchNormTrain {
        type State = NormState;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let [x, gamma, beta] = ops.parents.map(|n| n.map(|n| n.id));
            norm_backward::<B>([x, gamma, beta, None], grad, ops.state, grads, checkpointer);
        }
    }

    impl<B: Backend + BatchNormGradients> Backward<B, 4> for BatchNormAddRelu {
        type State = NormState;

        fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let nodes = ops.parents.map(|n| n.map(|n| n.id));
            norm_backward::<B>(nodes, grad, ops.state, grads, checkpointer);
        }
    }

    /// How many times a retro forward ran (the tests' proof that it does).
    #[cfg(test)]
    pub(super) static RETRO_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// The op's forward again, in the backward pass of a checkpointing device: its inputs
    /// from the checkpointed states, the moments as the forward computed them.
    #[derive(Debug)]
    struct RetroBatchNorm<B: Backend> {
        x: NodeId,
        gamma: NodeId,
        beta: NodeId,
        residual: Option<NodeId>,
        relu: bool,
        moments: B::FloatTensorPrimitive,
        epsilon: f64,
    }

    impl<B: Backend + BatchNormBackend> RetroForward for RetroBatchNorm<B> {
        fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
            let x = states.get_state::<B::FloatTensorPrimitive>(&self.x);
            let gamma = states.get_state::<B::FloatTensorPrimitive>(&self.gamma);
            let beta = states.get_state::<B::FloatTensorPrimitive>(&self.beta);
            let after = match self.residual {
                Some(r) => After::AddRelu(states.get_state::<B::FloatTensorPrimitive>(&r)),
                None if self.relu => After::Relu,
                None => After::Nothing,
            };
            let out = B::resnet3d_batch_norm_train(x, gamma, beta, self.moments.clone(), after, self.epsilon);
            #[cfg(test)]
            RETRO_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            states.save(out_node, out);
        }
    }

    impl<B: Backend + BatchNormBackend + BatchNormGradients, C: CheckpointStrategy> BatchNormBackend for Autodiff<B, C> {
        fn resnet3d_batch_norm_train(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            moments: FloatTensor<Self>,
            after: After<Self>,
            epsilon: f64,
        ) -> FloatTensor<Self> {
            // The moments are statistics of `x`, not a differentiated input: checkpointed for
            // the backward pass, never given a gradient.
            let run = |x: FloatTensor<Self>,
                       gamma: FloatTensor<Self>,
                       beta: FloatTensor<Self>,
                       moments: FloatTensor<Self>,
                       after| {
                B::resnet3d_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    moments.into_primitive(),
                    after,
                    epsilon,
                )
            };
            // Under a checkpointing device (`Device::gradient_checkpointing`, Burn's balanced
            // strategy) the op is memory-bound: its output (the next convolution's input) is
            // not kept for the backward pass but recomputed from `x` (the convolution's
            // output, kept), the parameters, the residual and the moments, which the retro
            // forward holds itself (`[2, c]`). Without checkpointing, or with an untracked
            // parameter (a frozen layer), Burn keeps the output as for a compute-bound op.
            let residual = match &after {
                After::AddRelu(residual) => Some(residual.clone()),
                _ => None,
            };
            let relu = !matches!(after, After::Nothing);
            let retro = RetroBatchNorm::<B> {
                x: x.node().id(),
                gamma: gamma.node().id(),
                beta: beta.node().id(),
                residual: residual.as_ref().map(|r| r.node().id()),
                relu,
                moments: moments.primitive().clone(),
                epsilon,
            };
            let after = |residual: Option<FloatTensor<Self>>| match residual {
                Some(r) => After::AddRelu(r.into_primitive()),
                None if relu => After::Relu,
                None => After::Nothing,
            };
            match residual {
                Some(residual) => {
                    match BatchNormAddRelu
                        .prepare::<C>([x.node(), gamma.node(), beta.node(), residual.node()])
                        .memory_bound()
                        .retro_forward(retro)
                        .parents([&x, &gamma, &beta, &residual])
                        .stateful()
                    {
                        OpsKind::Tracked(mut prep) => {
                            let state = (
                                prep.checkpoint(&x),
                                prep.checkpoint(&gamma),
                                prep.checkpoint(&beta),
                                prep.checkpoint(&moments),
                                Some(prep.checkpoint(&residual)),
                                true,
                                epsilon,
                            );
                            prep.finish(state, run(x, gamma, beta, moments, after(Some(residual))))
                        }
                        OpsKind::UnTracked(prep) => prep.finish(run(x, gamma, beta, moments, after(Some(residual)))),
                    }
                }
                None => {
                    match BatchNormTrain
                        .prepare::<C>([x.node(), gamma.node(), beta.node()])
                        .memory_bound()
                        .retro_forward(retro)
                        .parents([&x, &gamma, &beta])
                        .stateful()
                    {
                        OpsKind::Tracked(mut prep) => {
                            let state = (
                                prep.checkpoint(&x),
                                prep.checkpoint(&gamma),
                                prep.checkpoint(&beta),
                                prep.checkpoint(&moments),
                                None,
                                relu,
                                epsilon,
                            );
                            prep.finish(state, run(x, gamma, beta, moments, after(None)))
                        }
                        OpsKind::UnTracked(prep) => prep.finish(run(x, gamma, beta, moments, after(None))),
                    }
                }
            }
        }

        fn resnet3d_channel_moments(x: FloatTensor<Self>) -> FloatTensor<Self> {
            // A leaf outside the graph: statistics, not a differentiable output.
            FloatTensor::<Self>::new(B::resnet3d_channel_moments(x.into_primitive()))
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;

    fn tensor<const D: usize>(shape: [usize; D], seed: usize, device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i * 7 + seed * 13) as f32 * 0.37).sin()).collect();
        Tensor::from_data(TensorData::new(v, shape), device).require_grad()
    }

    /// On a checkpointing device the op's output is recomputed for the backward pass of the
    /// op after it (a product here), and every gradient is bit for bit the one of a device
    /// that keeps the output.
    #[test]
    fn a_checkpointing_device_recomputes_the_output_to_the_same_gradients() {
        let grads = |device: Device| {
            let [x, residual] = [0, 1].map(|seed| tensor([2, 3, 2, 3, 4], seed, &device));
            let [gamma, beta] = [2, 3].map(|seed| tensor([3], seed, &device));
            let (y, _, _) = batch_norm_train(
                x.clone() * 1.5,
                gamma.clone(),
                beta.clone(),
                1e-5,
                true,
                Some(residual.clone()),
            );
            let (z, _, _) = batch_norm_train(y.clone() * y, gamma.clone(), beta.clone(), 1e-5, false, None);
            let g = (z.clone() * z).sum().backward();
            [x.grad(&g).unwrap(), residual.grad(&g).unwrap()]
                .into_iter()
                .chain([
                    gamma.grad(&g).unwrap().reshape([1, 1, 1, 1, 3]),
                    beta.grad(&g).unwrap().reshape([1, 1, 1, 1, 3]),
                ])
                .map(|t| t.into_data().try_to_vec::<f32>().unwrap())
                .collect::<Vec<_>>()
        };
        let kept = grads(Device::flex().autodiff());
        let runs = autodiff::RETRO_RUNS.load(std::sync::atomic::Ordering::Relaxed);
        let recomputed = grads(Device::flex().autodiff().gradient_checkpointing());
        assert!(autodiff::RETRO_RUNS.load(std::sync::atomic::Ordering::Relaxed) > runs);
        assert_eq!(kept, recomputed);
        assert!(kept.iter().flatten().all(|v| v.is_finite()) && kept[0].iter().any(|v| *v != 0.0));
    }
}
