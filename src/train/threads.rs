//! [`on_cpu_threads`]: a training loop run on a thread of the CPU pool.

/// Runs `work` (a training step, or a loop of them) on a thread of rayon's global pool, the
/// pool whose threads run the crate's CPU kernels, and returns its result; called on a
/// thread of a rayon pool (the global one or one's own, inside `ThreadPool::install`), runs
/// it in place, on that pool.
///
/// Each convolution, BatchNorm and pooling pass of a step on `flex` splits its work between
/// the pool's threads. Called from a thread outside the pool (`main`, a test), every such
/// split hands the work over and puts the caller to sleep until the pool wakes it again,
/// some hundreds of times per step; inside the pool the calling thread takes its share of
/// the work instead. A ResNet3d-18 / -50 step on 2 x 1 x 32 x 96 x 96 took 170 / 310 ms inside
/// and 176-189 / 333-346 ms outside (`benches/train.rs`, 2026-12-07). The results are the
/// same either way: the work is split the same.
///
/// `work` then follows rayon's rules for code on its pool:
/// - While a pool thread waits for its share of a split, rayon may run other queued work on
///   it: another thread's `on_cpu_threads` closure, or any `par_iter` work. So `work` must not
///   hold a lock across a step if that other work takes the same lock: it would wait, on the
///   thread that holds the lock, forever (a review hung four threads that each locked one
///   `Mutex` inside their closures). Take the lock outside instead,
///   `let model = shared.lock()?; on_cpu_threads(|| step(&model))`, or lock only around
///   what needs it.
/// - `work` must not wait for something that itself needs the pool's threads, such as a data
///   loader on other threads whose work uses rayon: with one thread in the pool that wait
///   would never end. A step (forward, loss, backward, optimizer) does not; [`fit`](super::fit)
///   waits for its loaders and so does not run itself on the pool.
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
    crate::kernels::parallel::on_pool(work)
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Device, Tensor};

    use super::*;
    use crate::frozen::network::tests::{small_resnet18, wave};

    /// Four threads sharing one lock, each holding it outside its closure (the pattern the
    /// docs give) around a frozen forward, which waits for the pool's threads: every step
    /// completes. (A lock taken inside the closures hung in a review: rayon's rule, stated in
    /// the docs. A turn lock around the closures then made this pattern hang instead.) A
    /// watchdog fails the test rather than letting it hang.
    #[test]
    fn callers_holding_a_shared_lock_all_finish() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};

        let device = Device::flex();
        let net = Arc::new(crate::ResNet3d::freeze(&small_resnet18(4, 3, &device)).unwrap());
        let x = wave([1, 1, 8, 24, 24], 0.61, &device);
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
            eprintln!("on_cpu_threads: callers holding a lock still running after 120 s");
            std::process::abort();
        });
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (net, x, shared) = (net.clone(), x.clone(), shared.clone());
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let mut steps = shared.lock().unwrap();
                        if (t + i) % 7 == 0 {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        on_cpu_threads(|| net.forward(x.clone()).unwrap());
                        *steps += 1;
                        drop(steps);
                        // Another closure, with nothing held, runs beside the locked ones.
                        on_cpu_threads(|| net.forward(x.clone()).unwrap());
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
        let net = small_resnet18(8, 2, &device).train();
        let x = wave([2, 1, 8, 24, 24], 0.37, &device);
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
