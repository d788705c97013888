//! A residual block's input as its two branches read it (the main chain and the shortcut):
//! two identity operations, one per branch, whose gradients meet in one sum. Burn would
//! otherwise add the two gradients of the one input itself, and its sum of two channels-last
//! views walks them through their strides on one thread into a new buffer (about 29 ms of a
//! 300 ms ResNet3d-50 step on 2x1x32x96x96); the meeting adds them in place, on every thread.

use std::any::Any;
use std::sync::{Arc, Mutex};

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::tensors::{channels_last, channels_last_values, dims5};

/// Where the first of a block input's two branch gradients waits for the second.
#[derive(Clone, Default)]
pub(crate) struct Meeting(Arc<Slot>);

/// The first gradient, until the second comes.
#[derive(Default)]
struct Slot(Mutex<Option<Box<dyn Any + Send>>>);

impl std::fmt::Debug for Meeting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meeting")
    }
}

/// The branch as a backend operation: the identity.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait BranchBackend: Backend {
    /// `x` itself, as one of the two branches of `meeting`.
    fn resnet3d_branch(x: FloatTensor<Self>, meeting: Meeting) -> FloatTensor<Self>;
}

/// The meeting of the two branch gradients on a backend that runs [`BranchBackend`].
pub(crate) trait BranchGradients: Backend {
    /// `None` where `grad` is the first of the two (it waits in `meeting`), else the sum of
    /// both.
    fn resnet3d_meet(grad: FloatTensor<Self>, meeting: &Meeting) -> Option<FloatTensor<Self>>;
}

impl BranchBackend for Flex {
    fn resnet3d_branch(x: FlexTensor, _meeting: Meeting) -> FlexTensor {
        x
    }
}

impl BranchGradients for Flex {
    fn resnet3d_meet(grad: FlexTensor, meeting: &Meeting) -> Option<FlexTensor> {
        // A poisoned lock only means another branch's backward panicked: the value in it is
        // still whole (a take or a store).
        let mut slot = meeting.0.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(first) = slot.take() else {
            *slot = Some(Box::new(grad));
            return None;
        };
        drop(slot);
        let Ok(first) = first.downcast::<FlexTensor>() else {
            // Only this function stores, and only flex tensors: not reached.
            return Some(grad);
        };
        Some(sum(*first, grad))
    }
}

/// `a + b` (two gradients of one `[n, c, d, h, w]` tensor), channels-last, in one parallel
/// pass: into `a`'s buffer where nothing else holds it and it is laid out so, else into a new
/// one.
fn sum(mut a: FlexTensor, b: FlexTensor) -> FlexTensor {
    let dims = dims5(&a);
    let vb = channels_last_values(&b);
    let add = |dst: &mut [f32], src: &[f32]| {
        dst.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14))
            .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
    };
    let laid_out = matches!(channels_last_values(&a), std::borrow::Cow::Borrowed(_));
    if laid_out && let Some(values) = a.try_storage_mut::<f32>() {
        // Channels-last from offset 0, and at least `len` values (`channels_last_values`).
        add(&mut values[..vb.len()], &vb);
        return a;
    }
    let mut out = channels_last_values(&a).into_owned();
    add(&mut out, &vb);
    channels_last(dims, out)
}

/// Whether [`branches`] runs on `x`: `f32` on a `flex` autodiff device (without autodiff
/// nothing is summed, and other backends keep Burn's sum).
pub(crate) fn runs_branches(x: &Tensor<5>) -> bool {
    let device = x.device();
    device.is_autodiff() && device.without_autodiff() == burn::tensor::Device::flex() && x.dtype() == DType::F32
}

/// `x` as the main chain's and the shortcut's inputs, their gradients summed once. Both must
/// be read on the way to the block's output: each branch's gradient waits for the other's,
/// and one whose twin never comes back is lost (no check can say so: Burn drops the graph's
/// operations later, on whichever thread next touches its autodiff graphs).
pub(crate) fn branches(x: Tensor<5>) -> (Tensor<5>, Tensor<5>) {
    let meeting = Meeting::default();
    let branch = |x: Tensor<5>| {
        Tensor::from_dispatch(<Dispatch as BranchBackend>::resnet3d_branch(
            x.into_dispatch(),
            meeting.clone(),
        ))
    };
    (branch(x.clone()), branch(x))
}

mod autodiff {
    use burn::backend::Backend;
    use burn::backend::autodiff::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;

    use super::{BranchBackend, BranchGradients, Meeting};

    #[derive(Debug)]
    struct Branch;

    impl<B: Backend + BranchGradients> Backward<B, 1> for Branch {
        type State = Meeting;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let [node_x] = ops.parents;
            if let Some(node) = node_x
                && let Some(sum) = B::resnet3d_meet(grad, &ops.state)
            {
                grads.register::<B>(node.id, sum);
            }
        }
    }

    impl<B: Backend + BranchBackend + BranchGradients, C: CheckpointStrategy> BranchBackend for Autodiff<B, C> {
        fn resnet3d_branch(x: FloatTensor<Self>, meeting: Meeting) -> FloatTensor<Self> {
            match Branch.prepare::<C>([x.node()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let output = B::resnet3d_branch(x.into_primitive(), meeting.clone());
                    prep.finish(meeting, output)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::resnet3d_branch(x.into_primitive(), meeting)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;

    fn tensor(shape: [usize; 5], seed: usize, device: &Device) -> Tensor<5> {
        let len: usize = shape.iter().product();
        let values: Vec<f32> = (0..len)
            .map(|i| ((((i + seed) * 7919) % 1013) as f32 / 506.0) - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    fn values(t: Tensor<5>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap_or_default()
    }

    /// The input's gradient is the sum of both branches' (here `r1 + 2 r2`, the second
    /// branch read twice), whichever branch's gradient comes first, for a channels-last
    /// gradient (through the crate's max pool) and a row-major one; the branches carry the
    /// input's values, and an input without a gradient passes through.
    #[test]
    fn the_input_gets_both_branches_gradients() {
        let device = Device::flex().autodiff();
        let shape = [2, 3, 4, 6, 5];
        for first_is_main in [true, false] {
            let x = tensor(shape, 1, &device).require_grad();
            assert!(runs_branches(&x));
            let (main, short) = branches(x.clone());
            assert_eq!(values(main.clone()), values(x.clone()));
            assert_eq!(values(short.clone()), values(x.clone()));
            let (r1, r2) = (tensor(shape, 2, &device), tensor(shape, 3, &device));
            // The main branch through the crate's op (a 1x1x1 max pool: the identity, its
            // gradient channels-last), the shortcut twice through Burn's.
            let pool = crate::arch::geometry::PoolGeometry {
                kernel: [1, 1, 1],
                stride: [1, 1, 1],
                padding: [0, 0, 0],
            }
            .on(shape, "test")
            .expect("a 1x1x1 pool fits");
            let main = crate::ops::pool::max_pool3d(main, pool);
            let (a, b) = (
                (main * r1.clone()).sum(),
                (short.clone() * r2.clone() + short * r2.clone()).sum(),
            );
            let loss = if first_is_main { a + b } else { b + a };
            let grads = loss.backward();
            let got = values(x.grad(&grads).expect("x has a gradient"));
            let want = values(r1.inner() + r2.inner() * 2.0);
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-6, "[{i}]: {g} vs {w} (main first: {first_is_main})");
            }
        }
        let x = tensor(shape, 4, &device);
        let (main, short) = branches(x.clone());
        assert_eq!(values(main + short), values(x.clone() * 2.0));
    }
}
