//! BatchNorm as the network runs it: Burn's `BatchNorm` module, with two changes in train mode
//! (an autodiff device and the layer's training flag on):
//! - on `flex`, the normalisation and its gradient run through the crate's kernels
//!   (`kernels::norm`), with the ReLU that follows and the residual added before it in the same
//!   pass, and a gradient that agrees with PyTorch (Burn 0.22.1's own on flex does not: see
//!   `tests/it/gradients.rs`);
//! - on every backend the running variance is updated with the unbiased batch variance, as
//!   PyTorch does (`var * m / (m - 1)` over the `m` values of a channel), so that a network
//!   fine-tuned here evaluates as the same network fine-tuned in PyTorch.
//!
//! On `flex` without autodiff (inference), [`conv_batch_norm`] folds the BatchNorm's running
//! statistics into the convolution before it, as `FrozenResNet3d` does, with the ReLU and
//! residual in the pass that writes the output (or, for shapes that pass does not take, the
//! same kernels apply the running statistics after the convolution); elsewhere in eval mode
//! it is Burn's `BatchNorm::forward` unchanged.

use burn::nn::BatchNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use crate::arch::plan::LayerName;
use crate::error::Result;
use crate::model::conv::Conv;

/// `relu(bn(conv(x)))` (or without the ReLU, or with `residual` added before it): on `flex`
/// without autodiff one pass of the crate's kernels with the BatchNorm folded into the
/// convolution, as in [`FrozenResNet3d`](crate::FrozenResNet3d); elsewhere the convolution,
/// then [`forward`]. The convolution's geometry is checked on `x` first (`name` names it in
/// the error).
///
/// # Errors
/// As [`ConvGeometry::on`](crate::ConvGeometry::output_dims).
pub(crate) fn conv_batch_norm(
    conv: &Conv,
    bn: &BatchNorm,
    name: &LayerName,
    x: Tensor<5>,
    relu: bool,
    residual: Option<Tensor<5>>,
) -> Result<Tensor<5>> {
    let shape = conv.checked(&x, name)?;
    #[cfg(feature = "flex")]
    {
        let tensors = crate::ops::norm::NormTensors {
            gamma: bn.gamma.val(),
            beta: bn.beta.val(),
            mean: bn.running_mean.value(),
            var: bn.running_var.value(),
            epsilon: bn.epsilon,
        };
        if let Some(y) =
            crate::ops::norm::conv_batch_norm_eval(&x, conv.weight.val(), tensors, shape, relu, residual.as_ref())
        {
            return Ok(y);
        }
    }
    Ok(forward(bn, conv.run(x, shape), relu, residual))
}

/// `bn` applied to `x` (`[N, C, D, H, W]`), then ReLU if `with_relu`, after adding `residual`
/// if given; in one pass where the crate's kernels run it.
fn forward(bn: &BatchNorm, x: Tensor<5>, with_relu: bool, residual: Option<Tensor<5>>) -> Tensor<5> {
    let then = |y: Tensor<5>, residual: Option<Tensor<5>>| {
        let y = match residual {
            Some(r) => y + r,
            None => y,
        };
        if with_relu { relu(y) } else { y }
    };
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        #[cfg(feature = "flex")]
        if !(x.device().is_autodiff() && bn.training.is_enabled()) {
            let (mean, var) = (bn.running_mean.value(), bn.running_var.value());
            let device = x.device();
            let fits = |t: &Tensor<1>| {
                t.device() == device
                    && t.device().is_autodiff() == device.is_autodiff()
                    && t.dtype() == x.dtype()
                    && t.dims() == [x.dims()[1]]
            };
            if fits(&mean)
                && fits(&var)
                && crate::ops::norm::runs_batch_norm(&x, &bn.gamma.val(), &bn.beta.val(), residual.as_ref())
            {
                let affine = (bn.gamma.val(), bn.beta.val());
                return crate::ops::norm::batch_norm_eval(x, affine, (mean, var), bn.epsilon, with_relu, residual);
            }
        }
        return then(bn.forward(x), residual);
    }
    #[cfg(feature = "flex")]
    if crate::ops::norm::runs_batch_norm(&x, &bn.gamma.val(), &bn.beta.val(), residual.as_ref()) {
        let dims = x.dims();
        let (y, mean, variance) =
            crate::ops::norm::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, with_relu, residual);
        update_running(bn, mean, variance, dims);
        return y;
    }
    let dims = x.dims();
    let r = burn::tensor::module::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon);
    update_running(bn, r.mean, r.variance, dims);
    then(r.output, residual)
}

/// `running = (1 - momentum) * running + momentum * batch`, with the batch variance made
/// unbiased (`var * m / (m - 1)` over the `m` values of a channel of `[n, c, d, h, w]`).
fn update_running(bn: &BatchNorm, mean: Tensor<1>, variance: Tensor<1>, [n, _, d, h, w]: [usize; 5]) {
    let m = n * d * h * w;
    let unbiased = if m > 1 { m as f64 / (m - 1) as f64 } else { 1.0 };
    let momentum = bn.momentum;
    let device = mean.device();
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean
        .update((running_mean.mul_scalar(1.0 - momentum) + mean.detach().mul_scalar(momentum)).detach());
    bn.running_var
        .update((running_var.mul_scalar(1.0 - momentum) + variance.detach().mul_scalar(momentum * unbiased)).detach());
}
