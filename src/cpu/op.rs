//! The crate's 3-D convolution as an operation of Burn's `flex` backend (a backend
//! extension, routed through Burn's `Dispatch`), with a hand-written backward pass for
//! `Autodiff<Flex>`: the input gradient, the weight gradient and the bias gradient of
//! [`conv`](super::conv), each through the same tiled product as the forward pass.
//!
//! [`conv3d`] is what [`Conv::forward`](crate::Conv::forward) calls on a `flex` device, with
//! or without autodiff; other backends keep Burn's own `conv3d`.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, ExtensionType, Flex, backend_extension};
use burn::tensor::{Tensor, TensorData};

use super::conv::{self, ConvShape};
use super::matmul::Kernel;

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
    /// `[n, oc, d', h', w']`. The caller has checked the shapes ([`shape_of`]).
    fn resnet3d_conv3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: Bias<Self>,
        args: Conv3dArgs,
    ) -> FloatTensor<Self>;
}

/// The gradients of [`Conv3dBackend::resnet3d_conv3d`] on a backend that runs it.
pub(crate) trait Conv3dGradients: Backend {
    /// The input's gradient, of `x_shape`.
    fn resnet3d_conv3d_input_grad(
        x_shape: [usize; 5],
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        args: Conv3dArgs,
    ) -> FloatTensor<Self>;
    /// The kernel's gradient, of the kernel's shape.
    fn resnet3d_conv3d_weight_grad(
        x: FloatTensor<Self>,
        weight_shape: [usize; 5],
        grad: FloatTensor<Self>,
        args: Conv3dArgs,
    ) -> FloatTensor<Self>;
    /// The bias's gradient: `[oc]`.
    fn resnet3d_conv3d_bias_grad(grad: FloatTensor<Self>, args: Conv3dArgs) -> FloatTensor<Self>;
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

fn dims5(t: &FlexTensor) -> [usize; 5] {
    let shape = t.layout().shape();
    let mut dims = [0; 5];
    for (d, s) in dims.iter_mut().zip(shape.iter()) {
        *d = *s;
    }
    dims
}

fn flex_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The shape the op was called with. The op is only reached through [`conv3d`], whose callers
/// checked with [`runs`] that it computes; the backward pass sees the forward's shapes.
fn checked_shape(x: [usize; 5], weight: [usize; 5], args: &Conv3dArgs) -> ConvShape {
    shape_of(x, weight, args)
        .unwrap_or_else(|| panic!("resnet3d_conv3d: {x:?} * {weight:?} with {args:?} reached the kernels unchecked"))
}

impl Conv3dBackend for Flex {
    fn resnet3d_conv3d(x: FlexTensor, weight: FlexTensor, bias: Bias<Self>, args: Conv3dArgs) -> FlexTensor {
        let s = checked_shape(dims5(&x), dims5(&weight), &args);
        let bias = match &bias {
            Bias::Add(b) => Some(f32_values(b)),
            Bias::Zero => None,
        };
        let y = conv::forward(
            Kernel::detect(),
            &f32_values(&x),
            &f32_values(&weight),
            bias.as_deref(),
            &s,
        );
        let [od, oh, ow] = s.output;
        flex_tensor(y, [s.batch, s.out_channels, od, oh, ow])
    }
}

impl Conv3dGradients for Flex {
    fn resnet3d_conv3d_input_grad(
        x_shape: [usize; 5],
        weight: FlexTensor,
        grad: FlexTensor,
        args: Conv3dArgs,
    ) -> FlexTensor {
        let s = checked_shape(x_shape, dims5(&weight), &args);
        let dx = conv::backward_input(Kernel::detect(), &f32_values(&grad), &f32_values(&weight), &s);
        flex_tensor(dx, x_shape)
    }

    fn resnet3d_conv3d_weight_grad(
        x: FlexTensor,
        weight_shape: [usize; 5],
        grad: FlexTensor,
        args: Conv3dArgs,
    ) -> FlexTensor {
        let s = checked_shape(dims5(&x), weight_shape, &args);
        let dw = conv::backward_weight(Kernel::detect(), &f32_values(&x), &f32_values(&grad), &s);
        flex_tensor(dw, weight_shape)
    }

    fn resnet3d_conv3d_bias_grad(grad: FlexTensor, _args: Conv3dArgs) -> FlexTensor {
        let [_, oc, d, h, w] = dims5(&grad);
        flex_tensor(conv::backward_bias(&f32_values(&grad), oc, d * h * w), [oc])
    }
}

mod autodiff {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::{Autodiff, NodeId};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, TensorMetadata};

    use super::{Bias, Conv3dArgs, Conv3dBackend, Conv3dGradients};

    fn dims5<B: Backend>(t: &FloatTensor<B>) -> [usize; 5] {
        let shape = t.shape();
        let mut dims = [0; 5];
        for (d, s) in dims.iter_mut().zip(shape.iter()) {
            *d = *s;
        }
        dims
    }

    /// What the backward pass needs: the input and the kernel (checkpointed), their shapes,
    /// the settings.
    #[derive(Debug)]
    struct WithBias;
    #[derive(Debug)]
    struct NoBias;

    type State = (NodeId, NodeId, [usize; 5], [usize; 5], Conv3dArgs);

    /// Registers the gradients of `x` and `weight` (those that are tracked).
    fn input_and_weight<B: Backend + Conv3dGradients>(
        [node_x, node_weight]: [Option<NodeId>; 2],
        grad: &FloatTensor<B>,
        (x_state, weight_state, x_shape, weight_shape, args): State,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        if let Some(node) = node_x {
            let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
            grads.register::<B>(node, B::resnet3d_conv3d_input_grad(x_shape, weight, grad.clone(), args));
        }
        if let Some(node) = node_weight {
            let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
            grads.register::<B>(
                node,
                B::resnet3d_conv3d_weight_grad(x, weight_shape, grad.clone(), args),
            );
        }
    }

    impl<B: Backend + Conv3dGradients> Backward<B, 3> for WithBias {
        type State = State;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let [node_x, node_weight, node_bias] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let args = ops.state.4;
            let ids = [node_x.map(|n| n.id), node_weight.map(|n| n.id)];
            input_and_weight::<B>(ids, &grad, ops.state, grads, checkpointer);
            if let Some(node) = node_bias {
                grads.register::<B>(node.id, B::resnet3d_conv3d_bias_grad(grad, args));
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

    impl<B: Backend + Conv3dBackend + Conv3dGradients, C: CheckpointStrategy> Conv3dBackend for Autodiff<B, C> {
        fn resnet3d_conv3d(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: Bias<Self>,
            args: Conv3dArgs,
        ) -> FloatTensor<Self> {
            let (x_shape, weight_shape) = (dims5::<B>(x.primitive()), dims5::<B>(weight.primitive()));
            match bias {
                Bias::Add(bias) => match WithBias
                    .prepare::<C>([x.node(), weight.node(), bias.node()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(mut prep) => {
                        let state = (
                            prep.checkpoint(&x),
                            prep.checkpoint(&weight),
                            x_shape,
                            weight_shape,
                            args,
                        );
                        prep.finish(
                            state,
                            B::resnet3d_conv3d(
                                x.into_primitive(),
                                weight.into_primitive(),
                                Bias::Add(bias.into_primitive()),
                                args,
                            ),
                        )
                    }
                    OpsKind::UnTracked(prep) => prep.finish(B::resnet3d_conv3d(
                        x.into_primitive(),
                        weight.into_primitive(),
                        Bias::Add(bias.into_primitive()),
                        args,
                    )),
                },
                Bias::Zero => match NoBias
                    .prepare::<C>([x.node(), weight.node()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(mut prep) => {
                        let state = (
                            prep.checkpoint(&x),
                            prep.checkpoint(&weight),
                            x_shape,
                            weight_shape,
                            args,
                        );
                        prep.finish(
                            state,
                            B::resnet3d_conv3d(x.into_primitive(), weight.into_primitive(), Bias::Zero, args),
                        )
                    }
                    OpsKind::UnTracked(prep) => prep.finish(B::resnet3d_conv3d(
                        x.into_primitive(),
                        weight.into_primitive(),
                        Bias::Zero,
                        args,
                    )),
                },
            }
        }
    }
}

/// Whether [`conv3d`] runs this convolution: `f32` tensors on one `flex` device (with or
/// without autodiff), of shapes that compute. Elsewhere the caller uses Burn's `conv3d`.
pub(crate) fn runs(x: &Tensor<5>, weight: &Tensor<5>, bias: Option<&Tensor<1>>, args: &Conv3dArgs) -> bool {
    let device = x.device();
    device.clone().without_autodiff() == burn::tensor::Device::flex()
        && weight.device() == device
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.is_none_or(|b| b.device() == device && b.dtype() == DType::F32 && b.dims()[0] == weight.dims()[0])
        && shape_of(x.dims(), weight.dims(), args).is_some()
}

/// The convolution through the crate's kernels. Call it where [`runs`] says so.
///
/// # Shapes
/// `x` `[n, ic, d, h, w]`, `weight` `[oc, ic, kd, kh, kw]`, `bias` `[oc]` ->
/// `[n, oc, d', h', w']`
pub(crate) fn conv3d(x: Tensor<5>, weight: Tensor<5>, bias: Option<Tensor<1>>, args: Conv3dArgs) -> Tensor<5> {
    let bias = match bias {
        Some(b) => Bias::Add(b.into_dispatch()),
        None => Bias::Zero,
    };
    Tensor::from_dispatch(<Dispatch as Conv3dBackend>::resnet3d_conv3d(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias,
        args,
    ))
}
