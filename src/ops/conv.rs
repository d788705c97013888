//! The convolution as a backend operation: forward (channels-last, or channels-first where
//! the channels-last passes hand over: dilation) and, for `Autodiff<Flex>`, its input, weight
//! and bias gradients. The shape is [`ConvGeometry::on`]'s, checked by the caller.
//!
//! [`ConvGeometry::on`]: crate::arch::geometry::ConvGeometry::on

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, ExtensionType, Flex, backend_extension};
use burn::tensor::Tensor;

use super::tensors::{channels_last, channels_last_values, f32_values, flex_tensor, same_device};
use crate::arch::geometry::ConvShape;
use crate::kernels::channels_first as conv;
use crate::kernels::channels_last as cl;
use crate::kernels::matmul::Kernel;

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

impl Conv3dBackend for Flex {
    fn resnet3d_conv3d(x: FlexTensor, weight: FlexTensor, bias: Bias<Self>, s: ConvShape) -> FlexTensor {
        let bias = match &bias {
            Bias::Add(b) => Some(f32_values(b)),
            Bias::Zero => None,
        };
        let [od, oh, ow] = s.output;
        let dims = [s.batch, s.out_channels, od, oh, ow];
        if s.dilation == [1, 1, 1] {
            let y = cl::forward(
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
            let dx = cl::backward_input(Kernel::detect(), &channels_last_values(&grad), &f32_values(&weight), &s);
            return channels_last(dims, dx);
        }
        let dx = conv::backward_input(Kernel::detect(), &f32_values(&grad), &f32_values(&weight), &s);
        flex_tensor(dx, dims)
    }

    fn resnet3d_conv3d_weight_grad(x: FlexTensor, grad: FlexTensor, s: ConvShape) -> FlexTensor {
        let [kd, kh, kw] = s.kernel;
        let dw = if s.dilation == [1, 1, 1] {
            cl::backward_weight(
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
            cl::backward_bias(&channels_last_values(&grad), s.out_channels),
            [s.out_channels],
        )
    }
}

/// Whether [`conv3d`] runs on these tensors: `f32` on one `flex` device (with or without
/// autodiff); elsewhere the caller uses Burn's `conv3d`. The shapes are the caller's
/// [`ConvShape`], checked from the same tensors.
pub(crate) fn runs(x: &Tensor<5>, weight: &Tensor<5>, bias: Option<&Tensor<1>>) -> bool {
    let device = x.device();
    device.clone().without_autodiff() == burn::tensor::Device::flex()
        && same_device(weight, &device)
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.is_none_or(|b| same_device(b, &device) && b.dtype() == DType::F32 && b.dims()[0] == weight.dims()[0])
}

/// The convolution through the crate's kernels, where [`runs`] says so; `shape` is
/// [`ConvGeometry::on`](crate::arch::geometry::ConvGeometry::on)'s for these tensors (the
/// kernels take it as the truth about their buffers, and assert their lengths against it).
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

mod autodiff {
    use burn::backend::Backend;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::{Autodiff, NodeId};
    use burn::backend::tensor::FloatTensor;

    use super::{Bias, Conv3dBackend, Conv3dGradients, ConvShape};

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
            let x = tensor(xs, 1, &device).require_grad();
            let w = tensor(ws, 2, &device).require_grad();
            let b = tensor([ws[0]], 3, &device).require_grad();
            assert!(runs(&x, &w, Some(&b)));
            let [n, ic, d, h, wd] = xs;
            let shape = ConvShape::for_test(
                n,
                ic,
                ws[0],
                [d, h, wd],
                [ws[2], ws[3], ws[4]],
                stride,
                padding,
                [1; 3],
                replicate_depth,
            );
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
