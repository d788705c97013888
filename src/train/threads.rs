//! [`on_cpu_threads`]: a training loop run on a thread of the CPU pool.

use std::sync::{Mutex, PoisonError};

/// Runs `work` (a training step, or a loop of them) on a thread of rayon's global pool, the
/// pool whose threads run the crate's CPU kernels, and returns its result; called on one of
/// those threads, runs it in place.
///
/// Each convolution, BatchNorm and pooling pass of a step on `flex` splits its work between
/// the pool's threads. Called from a thread outside the pool (`main`, a test), every such
/// split hands the work over and puts the caller to sleep until the pool wakes it again,
/// some hundreds of times per step; inside the pool the calling thread takes its share of
/// the work instead. A ResNet3d-18 / -50 step on 2 x 1 x 32 x 96 x 96 took 170 / 310 ms inside
/// and 176-189 / 333-346 ms outside (`benches/train.rs`, 2026-12-07). The results are the
/// same either way: the work is split the same.
///
/// One closure at a time: calls from several threads take turns, each whole (a call made
/// inside `work` runs in place). While a pool thread waits for its share of a split, rayon
/// lets it take up other queued work; were two callers' closures queued at once, a thread
/// holding a lock in one could take up the other, which then waits for that same lock on
/// the same thread, forever (found by review with four threads sharing a `Mutex`). Taking
/// turns leaves only the crate's own work queued beside a closure.
///
/// `work` must not wait for something that itself needs the pool's threads, such as a data
/// loader on other threads whose work uses rayon (with one thread in the pool that wait would
/// never end), nor for another thread's `on_cpu_threads` (that one waits for its turn). A step
/// (forward, loss, backward, optimizer) does neither; [`fit`](super::fit) waits for its
/// loaders and so does not run itself on the pool.
///
/// ```
/// # use resnet3d::burn::tensor::{Device, Tensor};
/// # use resnet3d::ResNet3dConfig;
/// let device = Device::flex().autodiff();
/// let net = ResNet3dConfig::resnet18().with_width(4).with_in_channels(1).init(&device);
/// let x = Tensor::<5>::ones([1, 1, 8, 16, 16], &device);
/// let grads = resnet3d::train::on_cpu_threads(|| net.forward(x).sum().backward());
/// # drop(grads);
/// ```
pub fn on_cpu_threads<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return work();
    }
    // A panic in an earlier closure leaves nothing to repair: the lock guards no data.
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    crate::kernels::parallel::on_pool(work)
}

/// Held by the caller of [`on_cpu_threads`] while its closure runs on the pool.
static TURN: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;
    use crate::ResNet3dConfig;

    /// Four threads, each taking a lock that all four share inside its closure around a
    /// frozen forward (which waits for the pool's threads): every step completes. With the
    /// closures queued side by side, a pool thread holding the lock took up another closure
    /// that waited for it on the same thread: the review saw this hang in 2 of 3 runs of 800
    /// steps. A watchdog fails the test instead of letting it hang.
    #[test]
    fn closures_sharing_a_lock_all_finish() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};

        let device = Device::flex();
        let config = ResNet3dConfig::resnet18()
            .with_width(4)
            .with_in_channels(1)
            .with_num_classes(Some(3));
        let net = Arc::new(crate::ResNet3d::freeze(&config.init(&device)).unwrap());
        let x = Tensor::<5>::from_data(
            TensorData::new(
                (0..8 * 24 * 24).map(|i| (i as f32 * 0.61).sin()).collect::<Vec<_>>(),
                [1, 1, 8, 24, 24],
            ),
            &device,
        );
        let shared = Arc::new(Mutex::new(0usize));
        let finished = Arc::new(AtomicBool::new(false));
        let watch = finished.clone();
        std::thread::spawn(move || {
            for _ in 0..1200 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if watch.load(Ordering::SeqCst) {
                    return;
                }
            }
            eprintln!("on_cpu_threads: closures sharing a lock still running after 120 s");
            std::process::abort();
        });
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (net, x, shared) = (net.clone(), x.clone(), shared.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        on_cpu_threads(|| {
                            let mut steps = shared.lock().unwrap();
                            net.forward(x.clone()).unwrap();
                            *steps += 1;
                        });
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        finished.store(true, Ordering::SeqCst);
        assert_eq!(*shared.lock().unwrap(), 400);
    }

    /// A training step's loss and gradients inside the pool are those outside it, bit for
    /// bit, and the step ran on a pool thread.
    #[test]
    fn a_step_gives_the_same_gradients_on_the_pool() {
        let device = Device::flex().autodiff();
        let net = ResNet3dConfig::resnet18()
            .with_width(8)
            .with_in_channels(1)
            .with_num_classes(Some(2))
            .init(&device)
            .train();
        let values: Vec<f32> = (0..2 * 8 * 24 * 24).map(|i| ((i as f32) * 0.37).sin()).collect();
        let x = Tensor::<5>::from_data(TensorData::new(values, [2, 1, 8, 24, 24]), &device);
        let step = || {
            let loss = net.forward(x.clone()).powi_scalar(2).sum();
            let grads = loss.backward();
            let flat = |t: Option<Tensor<5>>| t.unwrap().into_data().try_to_vec::<f32>().unwrap();
            let stem = flat(net.conv1.weight.val().grad(&grads));
            let crate::Block::Basic(block) = &net.layer4[1] else {
                unreachable!("ResNet-18 has basic blocks")
            };
            let last = flat(block.conv2.weight.val().grad(&grads));
            (
                rayon::current_thread_index(),
                loss.into_data().try_to_vec::<f32>().unwrap(),
                stem,
                last,
            )
        };
        let (outside_thread, loss, stem, last) = step();
        let (inside_thread, loss_in, stem_in, last_in) = on_cpu_threads(step);
        assert_eq!((outside_thread.is_none(), inside_thread.is_some()), (true, true));
        assert!(loss[0].is_finite() && stem.iter().any(|g| *g != 0.0), "loss {loss:?}");
        assert_eq!(loss, loss_in);
        assert_eq!(stem, stem_in);
        assert_eq!(last, last_in);
    }
}
