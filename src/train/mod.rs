//! Fine-tuning helpers on top of Burn's training tools (feature `train`).
//!
//! - [`FusedAdamConfig`] / [`FusedAdam`]: Adam as Burn's [`Optimizer`](burn::optim::Optimizer),
//!   with the same arithmetic and state records as Burn's `Adam`, whose update is one pass over
//!   each parameter on a `flex` device (Burn's tensor operations elsewhere).
//! - [`on_cpu_threads`]: a training step (or loop) on a thread of the CPU pool, so that its
//!   operations do not put the calling thread to sleep and wake it again.

mod adam;

pub use adam::{FusedAdam, FusedAdamConfig};
mod classifier;

pub use classifier::ScanClassifier;
mod evaluate;
mod fit;
mod lines;
mod loader;
mod schedule;
mod select;
mod threads;

pub use evaluate::{TestMetrics, evaluate};
pub use fit::{EpochMetrics, FitConfig, FitSummary, fit};
pub use lines::EpochLines;
pub use threads::on_cpu_threads;
