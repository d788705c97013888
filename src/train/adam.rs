//! Adam whose update is one fused pass per parameter on the CPU.

use burn::config::Config;
#[cfg(feature = "flex")]
use burn::optim::AdaptiveMomentumState;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{Adam, AdamConfig, AdamState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

/// The settings of [`FusedAdam`]: those of Burn's [`AdamConfig`], with its defaults (note
/// `epsilon` 1e-5, where PyTorch's default is 1e-8).
///
/// ```
/// # use resnet3d::burn::tensor::{Device, Tensor};
/// # use resnet3d::burn::optim::{GradientsParams, Optimizer};
/// # use resnet3d::train::FusedAdamConfig;
/// # use resnet3d::ResNet3dConfig;
/// let device = Device::flex().autodiff();
/// let model = ResNet3dConfig::resnet18().with_width(4).with_in_channels(1).init(&device);
/// let mut optimizer = FusedAdamConfig::new().init();
/// let loss = model.forward(Tensor::<5>::ones([1, 1, 8, 16, 16], &device)).sum();
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// let model = optimizer.step(1e-3, model, grads);
/// ```
#[derive(Config, Debug)]
pub struct FusedAdamConfig {
    /// The decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f32,
    /// The decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f32,
    /// Added to the root of the (bias-corrected) second moment.
    #[config(default = 1e-5)]
    pub epsilon: f32,
    /// L2 penalty added to the gradient (Adam's weight decay, not AdamW's).
    pub weight_decay: Option<WeightDecayConfig>,
    /// Gradient clipping, applied by Burn's module optimizer before the step.
    pub grad_clipping: Option<GradientClippingConfig>,
}

impl FusedAdamConfig {
    /// The optimizer.
    pub fn build(&self) -> FusedAdam {
        let burn = AdamConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay.clone());
        FusedAdam {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay.as_ref().map_or(0.0, |d| d.penalty),
            burn: burn.build(),
        }
    }

    /// The optimizer for a whole module, as Burn's `AdamConfig::init` gives it.
    pub fn init(&self) -> ModuleOptimizer {
        let mut optimizer = ModuleOptimizer::from(self.build());
        if let Some(clipping) = &self.grad_clipping {
            optimizer = optimizer.with_grad_clipping(clipping.init());
        }
        optimizer
    }
}

/// Adam with Burn's arithmetic and state ([`AdamState`], so checkpoints of either optimizer
/// load into the other). On a `flex` device each parameter's update (weight decay, both
/// moments, bias corrections, the step) is one pass over its values on every thread,
/// instead of a dozen element-wise operations on one: on ResNet3d-18's 33 M parameters,
/// 109 ms of Burn's Adam become 22, and a whole fine-tuning step on 2x1x32x96x96 506 ms
/// become 364 (`cargo bench --bench adam`, 2026-12-06; README, "Speed"). Use it (or
/// [`fit`](super::fit), which does) rather than Burn's `AdamConfig` on flex. Elsewhere it is
/// Burn's Adam.
///
/// On flex it hands each gradient's buffer, once applied, to the crate's convolution op for
/// the next step's weight gradients, so that those do not come from fresh pages every step; at
/// most 1 GiB of such buffers is kept between steps.
#[derive(Clone)]
// Without the flex backend only Burn's Adam (`burn`) runs.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    burn: Adam,
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        #[cfg(feature = "flex")]
        if self.fuses(&tensor, &grad, state.as_ref()) {
            let (moment_1, moment_2, time) = match state {
                Some(s) => (s.momentum.moment_1, s.momentum.moment_2, s.momentum.time + 1),
                None => (tensor.zeros_like(), tensor.zeros_like(), 1),
            };
            let step = crate::kernels::adam::AdamStep {
                lr,
                beta_1: self.beta_1,
                beta_2: self.beta_2,
                epsilon: self.epsilon,
                weight_decay: self.weight_decay,
                // `fuses` checked that it fits.
                time: i32::try_from(time).unwrap_or(i32::MAX),
            };
            let (tensor, moment_1, moment_2) = crate::ops::adam::adam(tensor, grad, moment_1, moment_2, step);
            let momentum = AdaptiveMomentumState::new(time, moment_1, moment_2);
            return (tensor, Some(AdamState::new(momentum)));
        }
        self.burn.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}

impl FusedAdam {
    /// Whether the fused update applies: `f32` tensors of one shape on one `flex` device, and
    /// moments (if any) of that shape without AMSGrad's extra one.
    #[cfg(feature = "flex")]
    fn fuses<const D: usize>(&self, tensor: &Tensor<D>, grad: &Tensor<D>, state: Option<&AdamState<D>>) -> bool {
        let device = tensor.device();
        let same =
            |t: &Tensor<D>| t.device() == device && t.dtype() == burn::tensor::DType::F32 && t.dims() == tensor.dims();
        device == Device::flex()
            && same(tensor)
            && same(grad)
            && state.is_none_or(|s| {
                same(&s.momentum.moment_1) && same(&s.momentum.moment_2) && s.momentum.max_moment_2.is_none()
            })
            && i32::try_from(state.map_or(1, |s| s.momentum.time + 1)).is_ok()
    }
}
