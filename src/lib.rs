//! 3-D ResNets on Burn, inflated from 2-D ImageNet weights.

mod block;
mod config;
mod conv;
mod error;
mod import;
mod inflate;
mod load;
mod model;
mod pool;
mod record;

pub use block::{BasicBlock3d, Block, Bottleneck3d, Downsample};
pub use burn;
pub use config::{BlockKind, DepthPadding, Inflation, Layout, ResNet3dConfig};
pub use conv::{Conv, ConvSpec};
pub use error::{Error, Result};
pub use import::{Format, WeightTensor, Weights};
pub use inflate::{adapt_in_channels, inflate_kernel};
pub use load::{Head, LoadReport, LoadedKernel, inflate_from_2d, inflate_from_2d_with_report};
pub use model::{Features, ResNet3d};
pub use pool::MaxPool3d;
