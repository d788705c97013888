//! The crate's 3-D convolution, BatchNorm (with the ReLU and residual after it) and max pool
//! as operations of Burn's `flex` backend (backend extensions, routed through Burn's
//! `Dispatch`), with hand-written backward passes for `Autodiff<Flex>`: the input, weight and
//! bias gradients of [`channels_last`](super::channels_last), each through the same tiled
//! product as the forward pass, and those of [`norm`](super::norm) and [`pool`](super::pool);
//! and, for inference without autodiff, a convolution with its eval-mode BatchNorm folded in.
//!
//! Every op reads its tensors channels-last (without a copy when they are already laid out so:
//! the outputs of these ops are) and writes channels-last buffers, viewed by Burn as
//! `[N, C, D, H, W]` through permuted strides. Burn's own operations (the head, the sums of
//! gradients) read those views through their strides.
//!
//! [`conv3d`] is what [`Conv::forward`](crate::Conv::forward) calls on a `flex` device, with
//! or without autodiff; [`batch_norm_train`] what the network's BatchNorm layers call in train
//! mode there, [`conv_batch_norm_eval`] (or [`batch_norm_eval`]) in eval mode without
//! autodiff; [`max_pool3d`] what [`MaxPool3d`](crate::MaxPool3d) calls. Other backends keep
//! Burn's own operations.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, ExtensionType, Flex, backend_extension};
use burn::tensor::{Tensor, TensorData};

use super::channels_last;
use super::conv::{self, ConvShape};
use super::matmul::Kernel;
use super::norm;
use super::pool::{self, PoolShape};

/// The settings of a convolution besides its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conv3dArgs {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    /// Depth padding repeats the edge slices instead of zeros.
    pub replicate_depth: bool,
}

/// The optional bias of [`Conv3dBackend::resnet3d_conv3d`].
#[derive(ExtensionType)]
pub(crate) enum Bias<B: Backend> {
    /// Added per output channel.
    Add(FloatTensor<B>),
    /// None.
    Zero,
}

/// The convolution as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait Conv3dBackend: Backend {
    /// `x` `[n, ic, d, h, w]` convolved with `weight` `[oc, ic, kd, kh, kw]`, plus the bias:
    /// `[n, oc, d', h', w']`, the tensors being of `shape` (made by [`runs`] from them).
    fn resnet3d_conv3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: Bias<Self>,
        shape: ConvShape,
    ) -> FloatTensor<Self>;
}

/// The gradients of [`Conv3dBackend::resnet3d_conv3d`] on a backend that runs it.
pub(crate) trait Conv3dGradients: Backend {
    /// The input's gradient.
    fn resnet3d_conv3d_input_grad(
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        shape: ConvShape,
    ) -> FloatTensor<Self>;
    /// The kernel's gradient.
    fn resnet3d_conv3d_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        shape: ConvShape,
    ) -> FloatTensor<Self>;
    /// The bias's gradient: `[oc]`.
    fn resnet3d_conv3d_bias_grad(grad: FloatTensor<Self>, shape: ConvShape) -> FloatTensor<Self>;
}

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
        let y = pool::forward(&channels_last_values(&x), &p);
        channels_last([p.batch, p.channels, od, oh, ow], y)
    }
}

impl MaxPoolGradients for Flex {
    fn resnet3d_max_pool3d_grad(x: FlexTensor, grad: FlexTensor, p: PoolShape) -> FlexTensor {
        let [d, h, w] = p.input;
        let dx = pool::backward(&channels_last_values(&x), &channels_last_values(&grad), &p);
        channels_last([p.batch, p.channels, d, h, w], dx)
    }
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
        // As FrozenResNet3d folds it: scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
        let scale: Vec<f32> = (0..s.out_channels)
            .map(|c| (f64::from(gamma[c]) / (f64::from(var[c]) + epsilon).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..s.out_channels).map(|c| beta[c] - mean[c] * scale[c]).collect();
        let residual = residual_values(&after);
        let y = channels_last::forward_folded(
            Kernel::detect(),
            &channels_last_values(&x),
            &f32_values(&weight),
            (&scale, shift),
            residual.as_deref(),
            !matches!(after, After::Nothing),
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

/// The [`ConvShape`] of `x` and `weight` with `args`, if the convolution computes.
pub(crate) fn shape_of(x: [usize; 5], weight: [usize; 5], args: &Conv3dArgs) -> Option<ConvShape> {
    let [n, ic, d, h, w] = x;
    let [oc, wic, kd, kh, kw] = weight;
    if wic != ic {
        return None;
    }
    ConvShape::new(
        n,
        ic,
        oc,
        [d, h, w],
        [kd, kh, kw],
        args.stride,
        args.padding,
        args.dilation,
        args.replicate_depth,
    )
}

/// The values of a flex tensor as contiguous `f32`, copied only when they are not already.
fn f32_values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    if t.dtype() == DType::F32
        && let Some(values) = t.as_slice::<f32>()
    {
        return std::borrow::Cow::Borrowed(values);
    }
    let data = t.to_contiguous().into_data().convert::<f32>();
    // A converted f32 TensorData always reads back as f32; an empty vector would only make the
    // length check of the kernels fail loudly.
    std::borrow::Cow::Owned(data.try_into_vec::<f32>().unwrap_or_default())
}

/// The values of a 5-D flex tensor (`[n, c, d, h, w]`) in channels-last order
/// (`[n, d, h, w, c]`): its own buffer when it is laid out so (what [`channels_last`] gives),
/// else a converted copy.
fn channels_last_values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    let dims = t.layout().shape().to_vec();
    if let [n, c, d, h, w] = dims[..]
        && t.dtype() == DType::F32
        && t.layout().start_offset() == 0
    {
        let want = [d * h * w * c, 1, h * w * c, w * c, c];
        let strides = t.layout().strides();
        let len = n * c * d * h * w;
        // Axes of extent 1 never move the index, whatever their stride.
        if (0..5).all(|a| dims[a] <= 1 || strides[a] == want[a] as isize) && t.storage::<f32>().len() >= len {
            return std::borrow::Cow::Borrowed(&t.storage::<f32>()[..len]);
        }
    }
    let dense = f32_values(t);
    let mut shape = [1usize; 5];
    shape.iter_mut().zip(&dims).for_each(|(s, &d)| *s = d);
    std::borrow::Cow::Owned(channels_last::to_channels_last(&dense, shape))
}

/// Channels-last values (`[n, d, h, w, c]`) as the `[n, c, d, h, w]` tensor they are: a
/// permuted view of them, no copy. The network's activations stay so between the crate's ops;
/// Burn's own operations read such views through their strides.
fn channels_last([n, c, d, h, w]: [usize; 5], values: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, [n, d, h, w, c])).permute(&[0, 4, 1, 2, 3])
}

fn dims5(t: &FlexTensor) -> [usize; 5] {
    let mut out = [1usize; 5];
    out.iter_mut().zip(t.layout().shape().iter()).for_each(|(o, &d)| *o = d);
    out
}

fn flex_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl Conv3dBackend for Flex {
    fn resnet3d_conv3d(x: FlexTensor, weight: FlexTensor, bias: Bias<Self>, s: ConvShape) -> FlexTensor {
        let bias = match &bias {
            Bias::Add(b) => Some(f32_values(b)),
            Bias::Zero => None,
        };
        let [od, oh, ow] = s.output;
        let dims = [s.batch, s.out_channels, od, oh, ow];
        if s.dilation == [1, 1, 1] {
            let y = channels_last::forward(
                Kernel::detect(),
                &channels_last_values(&x),
                &f32_values(&weight),
                bias.as_deref(),
                &s,
            );
            return channels_last(dims, y);
        }
        let y = conv::forward(
            Kernel::detect(),
            &f32_values(&x),
            &f32_values(&weight),
            bias.as_deref(),
            &s,
        );
        flex_tensor(y, dims)
    }
}

impl Conv3dGradients for Flex {
    fn resnet3d_conv3d_input_grad(weight: FlexTensor, grad: FlexTensor, s: ConvShape) -> FlexTensor {
        let [d, h, w] = s.input;
        let dims = [s.batch, s.in_channels, d, h, w];
        if s.dilation == [1, 1, 1] {
            let dx =
                channels_last::backward_input(Kernel::detect(), &channels_last_values(&grad), &f32_values(&weight), &s);
            return channels_last(dims, dx);
        }
        let dx = conv::backward_input(Kernel::detect(), &f32_values(&grad), &f32_values(&weight), &s);
        flex_tensor(dx, dims)
    }

    fn resnet3d_conv3d_weight_grad(x: FlexTensor, grad: FlexTensor, s: ConvShape) -> FlexTensor {
        let [kd, kh, kw] = s.kernel;
        let dw = if s.dilation == [1, 1, 1] {
            channels_last::backward_weight(
                Kernel::detect(),
                &channels_last_values(&x),
                &channels_last_values(&grad),
                &s,
            )
        } else {
            conv::backward_weight(Kernel::detect(), &f32_values(&x), &f32_values(&grad), &s)
        };
        flex_tensor(dw, [s.out_channels, s.in_channels, kd, kh, kw])
    }

    fn resnet3d_conv3d_bias_grad(grad: FlexTensor, s: ConvShape) -> FlexTensor {
        flex_tensor(
            channels_last::backward_bias(&channels_last_values(&grad), s.out_channels),
            [s.out_channels],
        )
    }
}

mod autodiff {
    use burn::backend::Backend;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::{Autodiff, NodeId};
    use burn::backend::tensor::FloatTensor;

    use super::{
        After, BatchNormBackend, BatchNormGradients, Bias, Conv3dBackend, Conv3dGradients, ConvShape, MaxPoolBackend,
        MaxPoolGradients, PoolShape,
    };

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

    #[derive(Debug)]
    struct WithBias;
    #[derive(Debug)]
    struct NoBias;

    /// What the backward pass needs: the input and the kernel (checkpointed), and the shape.
    type State = (NodeId, NodeId, ConvShape);

    /// Registers the gradients of `x` and `weight` (those that are tracked).
    fn input_and_weight<B: Backend + Conv3dGradients>(
        [node_x, node_weight]: [Option<NodeId>; 2],
        grad: &FloatTensor<B>,
        (x_state, weight_state, shape): State,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        if let Some(node) = node_x {
            let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
            grads.register::<B>(node, B::resnet3d_conv3d_input_grad(weight, grad.clone(), shape));
        }
        if let Some(node) = node_weight {
            let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
            grads.register::<B>(node, B::resnet3d_conv3d_weight_grad(x, grad.clone(), shape));
        }
    }

    impl<B: Backend + Conv3dGradients> Backward<B, 3> for WithBias {
        type State = State;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let [node_x, node_weight, node_bias] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let shape = ops.state.2;
            let ids = [node_x.map(|n| n.id), node_weight.map(|n| n.id)];
            input_and_weight::<B>(ids, &grad, ops.state, grads, checkpointer);
            if let Some(node) = node_bias {
                grads.register::<B>(node.id, B::resnet3d_conv3d_bias_grad(grad, shape));
            }
        }
    }

    impl<B: Backend + Conv3dGradients> Backward<B, 2> for NoBias {
        type State = State;

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let ids = ops.parents.map(|n| n.map(|n| n.id));
            input_and_weight::<B>(ids, &grad, ops.state, grads, checkpointer);
        }
    }

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
            match after {
                After::AddRelu(residual) => {
                    match BatchNormAddRelu
                        .prepare::<C>([x.node(), gamma.node(), beta.node(), residual.node()])
                        .compute_bound()
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
                            prep.finish(
                                state,
                                run(x, gamma, beta, moments, After::AddRelu(residual.into_primitive())),
                            )
                        }
                        OpsKind::UnTracked(prep) => {
                            prep.finish(run(x, gamma, beta, moments, After::AddRelu(residual.into_primitive())))
                        }
                    }
                }
                plain => {
                    let relu = matches!(plain, After::Relu);
                    let after = || if relu { After::Relu } else { After::Nothing };
                    match BatchNormTrain
                        .prepare::<C>([x.node(), gamma.node(), beta.node()])
                        .compute_bound()
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
                            prep.finish(state, run(x, gamma, beta, moments, after()))
                        }
                        OpsKind::UnTracked(prep) => prep.finish(run(x, gamma, beta, moments, after())),
                    }
                }
            }
        }

        fn resnet3d_channel_moments(x: FloatTensor<Self>) -> FloatTensor<Self> {
            // A leaf outside the graph: statistics, not a differentiable output.
            FloatTensor::<Self>::new(B::resnet3d_channel_moments(x.into_primitive()))
        }
    }

    impl<B: Backend + Conv3dBackend + Conv3dGradients, C: CheckpointStrategy> Conv3dBackend for Autodiff<B, C> {
        fn resnet3d_conv3d(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: Bias<Self>,
            shape: ConvShape,
        ) -> FloatTensor<Self> {
            let run = |x: FloatTensor<Self>, weight: FloatTensor<Self>, bias| {
                B::resnet3d_conv3d(x.into_primitive(), weight.into_primitive(), bias, shape)
            };
            match bias {
                Bias::Add(bias) => match WithBias
                    .prepare::<C>([x.node(), weight.node(), bias.node()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(mut prep) => {
                        let state = (prep.checkpoint(&x), prep.checkpoint(&weight), shape);
                        prep.finish(state, run(x, weight, Bias::Add(bias.into_primitive())))
                    }
                    OpsKind::UnTracked(prep) => prep.finish(run(x, weight, Bias::Add(bias.into_primitive()))),
                },
                Bias::Zero => match NoBias
                    .prepare::<C>([x.node(), weight.node()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(mut prep) => {
                        let state = (prep.checkpoint(&x), prep.checkpoint(&weight), shape);
                        prep.finish(state, run(x, weight, Bias::Zero))
                    }
                    OpsKind::UnTracked(prep) => prep.finish(run(x, weight, Bias::Zero)),
                },
            }
        }
    }
}

/// The shape [`conv3d`] runs this convolution with: `f32` tensors on one `flex` device (with
/// or without autodiff), of shapes that compute; `None` elsewhere (then the caller uses Burn's
/// `conv3d`). The shape is the op's only check: the kernels take it as the tensors' truth.
pub(crate) fn runs(
    x: &Tensor<5>,
    weight: &Tensor<5>,
    bias: Option<&Tensor<1>>,
    args: &Conv3dArgs,
) -> Option<ConvShape> {
    let device = x.device();
    let fits = device.clone().without_autodiff() == burn::tensor::Device::flex()
        && weight.device() == device
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.is_none_or(|b| b.device() == device && b.dtype() == DType::F32 && b.dims()[0] == weight.dims()[0]);
    fits.then(|| shape_of(x.dims(), weight.dims(), args)).flatten()
}

/// The convolution through the crate's kernels, `shape` being what [`runs`] gave for these
/// tensors.
///
/// # Shapes
/// `x` `[n, ic, d, h, w]`, `weight` `[oc, ic, kd, kh, kw]`, `bias` `[oc]` ->
/// `[n, oc, d', h', w']`
pub(crate) fn conv3d(x: Tensor<5>, weight: Tensor<5>, bias: Option<Tensor<1>>, shape: ConvShape) -> Tensor<5> {
    let bias = match bias {
        Some(b) => Bias::Add(b.into_dispatch()),
        None => Bias::Zero,
    };
    Tensor::from_dispatch(<Dispatch as Conv3dBackend>::resnet3d_conv3d(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias,
        shape,
    ))
}

/// The shape [`max_pool3d`] runs `pool` on `x` with: `f32` on a `flex` device (with or without
/// autodiff), a batch item's voxels countable in `u32`, shapes that compute; `None`
/// elsewhere (then the caller uses Burn's operations).
pub(crate) fn runs_pool(x: &Tensor<5>, pool: &crate::MaxPool3d) -> Option<PoolShape> {
    let device = x.device();
    let [_, _, d, h, w] = x.dims();
    let fits = device.without_autodiff() == burn::tensor::Device::flex()
        && x.dtype() == DType::F32
        && d.checked_mul(h)
            .and_then(|v| v.checked_mul(w))
            .is_some_and(|v| u32::try_from(v).is_ok());
    fits.then(|| PoolShape::new(x.dims(), pool.kernel_size, pool.stride, pool.padding))
        .flatten()
}

/// The max pool through the crate's kernels, `shape` being what [`runs_pool`] gave.
pub(crate) fn max_pool3d(x: Tensor<5>, shape: PoolShape) -> Tensor<5> {
    Tensor::from_dispatch(<Dispatch as MaxPoolBackend>::resnet3d_max_pool3d(
        x.into_dispatch(),
        shape,
    ))
}

/// `after(bn(conv(x)))` with `bn` in eval mode as one pass of the crate's kernels, for
/// inference on `flex` without autodiff; `None` where that does not apply (autodiff, another
/// backend, shapes the pass does not take, parameters of other widths or types), and then the
/// caller runs the convolution and the BatchNorm one after the other.
pub(crate) fn conv_batch_norm_eval(
    conv: &crate::Conv,
    bn: &burn::nn::BatchNorm,
    x: &Tensor<5>,
    relu: bool,
    residual: Option<&Tensor<5>>,
) -> Option<Tensor<5>> {
    let device = x.device();
    if device.is_autodiff() {
        return None;
    }
    let args = Conv3dArgs {
        stride: conv.stride,
        padding: conv.padding,
        dilation: [1, 1, 1],
        replicate_depth: conv.depth_padding == crate::DepthPadding::Replicate,
    };
    let weight = conv.weight.val();
    let shape = runs(x, &weight, None, &args).filter(channels_last::folds)?;
    let [od, oh, ow] = shape.output;
    let out = [shape.batch, shape.out_channels, od, oh, ow];
    let params = [
        bn.gamma.val(),
        bn.beta.val(),
        bn.running_mean.value(),
        bn.running_var.value(),
    ];
    let fits = params
        .iter()
        .all(|t| t.device() == device && t.dtype() == DType::F32 && t.dims() == [shape.out_channels])
        && residual.is_none_or(|r| r.device() == device && r.dtype() == DType::F32 && r.dims() == out);
    if !fits {
        return None;
    }
    let after = match (relu, residual) {
        (true, Some(r)) => After::AddRelu(r.clone().into_dispatch()),
        (true, None) => After::Relu,
        (false, _) => After::Nothing,
    };
    let [gamma, beta, mean, var] = params;
    Some(Tensor::from_dispatch(
        <Dispatch as ConvBatchNormBackend>::resnet3d_conv3d_bn_eval(
            x.clone().into_dispatch(),
            weight.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            mean.into_dispatch(),
            var.into_dispatch(),
            after,
            bn.epsilon,
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
            .all(|t| t.device() == device && t.dtype() == DType::F32 && t.dims()[0] == x.dims()[1])
        && residual.is_none_or(|r| r.device() == device && r.dtype() == DType::F32 && r.dims() == x.dims())
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

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;

    fn tensor<const D: usize>(shape: [usize; D], seed: usize, device: &Device) -> Tensor<D> {
        let len: usize = shape.iter().product();
        let values: Vec<f32> = (0..len)
            .map(|i| ((((i + seed) * 7919) % 1013) as f32 / 506.0) - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    fn scalar(t: Tensor<1>) -> f64 {
        f64::from(t.into_data().try_to_vec::<f32>().unwrap_or_default()[0])
    }

    /// The gradients the autodiff device computes through the op equal central differences of
    /// the loss `sum(conv(x, w, b) * r)`, on odd shapes: stride 2, no padding, a 1x3x3 kernel,
    /// 5 -> 7 channels, replicate depth padding in a second case.
    #[test]
    fn gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        let cases = [
            ([2, 5, 4, 9, 8], [7, 5, 1, 3, 3], [2, 2, 2], [0, 0, 0], false),
            ([1, 3, 5, 6, 7], [4, 3, 3, 3, 3], [1, 2, 1], [1, 1, 1], true),
        ];
        for (xs, ws, stride, padding, replicate_depth) in cases {
            let args = Conv3dArgs {
                stride,
                padding,
                dilation: [1, 1, 1],
                replicate_depth,
            };
            let x = tensor(xs, 1, &device).require_grad();
            let w = tensor(ws, 2, &device).require_grad();
            let b = tensor([ws[0]], 3, &device).require_grad();
            let shape = runs(&x, &w, Some(&b), &args).unwrap();
            let y = conv3d(x.clone(), w.clone(), Some(b.clone()), shape);
            let r = tensor(y.dims(), 4, &device);
            let loss = |x: Tensor<5>, w: Tensor<5>, b: Tensor<1>| -> f64 {
                let y = conv3d(x.detach(), w.detach(), Some(b.detach()), shape);
                scalar((y * r.clone().detach()).sum())
            };
            let grads = (y * r.clone()).sum().backward();
            let h = 1e-2;
            for (name, grad, len) in [
                (
                    "x",
                    x.grad(&grads).map(|g| g.flatten::<1>(0, 4)),
                    xs.iter().product::<usize>(),
                ),
                (
                    "w",
                    w.grad(&grads).map(|g| g.flatten::<1>(0, 4)),
                    ws.iter().product::<usize>(),
                ),
                ("b", b.grad(&grads), ws[0]),
            ] {
                let grad = grad
                    .unwrap_or_else(|| panic!("no gradient for {name}"))
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap_or_default();
                assert_eq!(grad.len(), len);
                // A spread of entries, first and last included.
                for i in (0..len).step_by((len / 17).max(1)).chain([len - 1]) {
                    let bump = |sign: f32| {
                        let mut e = vec![0.0f32; len];
                        e[i] = sign * h;
                        e
                    };
                    let (up, down) = match name {
                        "x" => {
                            let (u, d) = (bump(1.0), bump(-1.0));
                            let at = |e: Vec<f32>| {
                                x.clone().detach()
                                    + Tensor::<1>::from_data(TensorData::new(e, [len]), &device).reshape(xs)
                            };
                            (loss(at(u), w.clone(), b.clone()), loss(at(d), w.clone(), b.clone()))
                        }
                        "w" => {
                            let (u, d) = (bump(1.0), bump(-1.0));
                            let at = |e: Vec<f32>| {
                                w.clone().detach()
                                    + Tensor::<1>::from_data(TensorData::new(e, [len]), &device).reshape(ws)
                            };
                            (loss(x.clone(), at(u), b.clone()), loss(x.clone(), at(d), b.clone()))
                        }
                        _ => {
                            let (u, d) = (bump(1.0), bump(-1.0));
                            let at = |e: Vec<f32>| {
                                b.clone().detach() + Tensor::<1>::from_data(TensorData::new(e, [len]), &device)
                            };
                            (loss(x.clone(), w.clone(), at(u)), loss(x.clone(), w.clone(), at(d)))
                        }
                    };
                    let fd = (up - down) / (2.0 * f64::from(h));
                    let got = f64::from(grad[i]);
                    // The loss is linear in each input: central differences are exact up to the
                    // float32 rounding of sums of a few hundred terms.
                    assert!(
                        (fd - got).abs() <= 2e-3 * fd.abs().max(1.0),
                        "{name}[{i}]: {got} vs {fd} ({xs:?} * {ws:?})"
                    );
                }
            }
        }
    }
}
