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

#[cfg(test)]
mod tests {
    //! The running statistics against PyTorch's `BatchNorm3d` on 2 or 3 values per channel,
    //! where the unbiased variance PyTorch keeps is 1.5 or 2 times the biased one
    //! (`tests/fixtures/make_norm.py`, torch 2.15.0).

    use burn::module::{Module, Param};
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, TensorData};

    use super::*;

    struct Fixture(Vec<u8>);

    impl Fixture {
        fn load() -> Fixture {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/norm/batch_norm.safetensors"
            );
            Fixture(std::fs::read(path).expect("tests/fixtures/norm/batch_norm.safetensors"))
        }

        /// `name`'s values and shape.
        fn get(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
            let file = safetensors::SafeTensors::deserialize(&self.0).expect("a safetensors file");
            let view = file.tensor(name).unwrap_or_else(|_| panic!("{name} in the fixture"));
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (values, view.shape().to_vec())
        }

        fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
            let (values, shape) = self.get(name);
            Tensor::from_data(TensorData::new(values, shape), device)
        }
    }

    fn assert_close(got: Tensor<1>, expected: &[f32], tolerance: f32, what: &str) {
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got.len(), expected.len(), "{what}");
        for (g, e) in got.iter().zip(expected) {
            assert!(
                (g - e).abs() <= tolerance,
                "{what}: {got:?} against PyTorch's {expected:?}"
            );
        }
    }

    fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
        let n: usize = t.dims().iter().product();
        t.reshape([n])
    }

    /// Three train steps then eval, on `device` (autodiff), for both layers of the fixture:
    /// the output alone (`relu = false`) or `relu(y + r)` (the fused path on flex).
    fn check(device: &Device) {
        let fixture = Fixture::load();
        for (layer, momentum) in [("m01", 0.1), ("m03", 0.3)] {
            for fused in [false, true] {
                let mut bn = BatchNormConfig::new(2)
                    .with_momentum(momentum)
                    .with_epsilon(1e-5)
                    .init(device);
                bn.gamma = Param::from_tensor(fixture.tensor(&format!("{layer}.gamma"), device));
                bn.beta = Param::from_tensor(fixture.tensor(&format!("{layer}.beta"), device));
                for k in 1..=3 {
                    let x = fixture.tensor::<5>(&format!("{layer}.x{k}"), device);
                    let (y, expected) = if fused {
                        let r = fixture.tensor::<5>(&format!("{layer}.r{k}"), device);
                        (forward(&bn, x, true, Some(r)), format!("{layer}.z{k}"))
                    } else {
                        (forward(&bn, x, false, None), format!("{layer}.y{k}"))
                    };
                    let what = format!("{layer} step {k} fused {fused} on {device:?}");
                    assert_close(flat(y), &fixture.get(&expected).0, 1e-5, &format!("{what}: output"));
                    let mean = bn.running_mean.value_sync();
                    assert_close(
                        mean,
                        &fixture.get(&format!("{layer}.mean{k}")).0,
                        1e-6,
                        &format!("{what}: mean"),
                    );
                    let var = bn.running_var.value_sync();
                    assert_close(
                        var,
                        &fixture.get(&format!("{layer}.var{k}")).0,
                        1e-6,
                        &format!("{what}: var"),
                    );
                }
                // Eval after train: the running statistics, on the plain device.
                let bn = bn.valid();
                let x = fixture.tensor::<5>(&format!("{layer}.x_eval"), &device.clone().without_autodiff());
                let y = forward(&bn, x, false, None);
                let expected = fixture.get(&format!("{layer}.y_eval")).0;
                assert_close(flat(y), &expected, 1e-5, &format!("{layer} eval on {device:?}"));
            }
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn running_statistics_are_pytorchs_on_flex() {
        check(&Device::flex().autodiff());
    }

    /// Burn's own batch statistics, with the crate's running update (the path every backend
    /// but flex takes). Burn's ndarray backend is a dev-dependency of the tests.
    #[test]
    #[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped
    fn running_statistics_are_pytorchs_on_ndarray() {
        check(&Device::ndarray().autodiff());
    }
}
