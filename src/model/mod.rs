//! The network as Burn modules, built from a plan: fields are torchvision's state-dict keys,
//! so records and checkpoints keep their names.
//!
//! - `network`: [`ResNet3d`](crate::ResNet3d), its checks, `forward` and `features` (the walk
//!   over its plan); `block`, `conv`, `pool`: the modules;
//! - `build`: a plan's modules from a parameter source; `engine`: the modules as a plan and
//!   the walk's engine on Burn tensors; `norm`: a layer's convolution, BatchNorm and what
//!   follows, as Burn operations;
//! - `record`: Burn's record format.

pub(crate) mod block;
pub(crate) mod build;
pub(crate) mod conv;
pub(crate) mod engine;
pub(crate) mod network;
pub(crate) mod norm;
pub(crate) mod pool;
pub(crate) mod record;
