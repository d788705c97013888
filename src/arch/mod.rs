//! The network as data: no Burn modules, no tensors.
//!
//! - `kinds`: block kinds, shortcuts, depth padding, inflation rules, layouts;
//! - `config`: [`ResNet3dConfig`](crate::ResNet3dConfig) and its presets;
//! - `geometry`: the one convolution and pool geometry and its one check;
//! - `plan`: [`Plan`](crate::Plan), the network once; `rule`: a configuration to its plan;
//! - `walk`: the one walk over a plan, run by the model's and the frozen network's engines.

pub(crate) mod config;
pub(crate) mod geometry;
pub(crate) mod kinds;
pub(crate) mod plan;
pub(crate) mod rule;
pub(crate) mod walk;
