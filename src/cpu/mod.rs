//! The CPU fast path: one set of convolution kernels and the networks built on them.
//!
//! - `matmul`: the matrix product every convolution here is made of, `C += A * B` with `B`
//!   in panels of 32 columns: an AVX-512 12x32 register tile (detected at run time) and a
//!   portable fallback.
//! - `conv`: 3-D convolution on `[N, C, D, H, W]` data, forward and gradients, as products
//!   of the kernel with patches packed block by block.
//! - `op`: that convolution as an operation of Burn's `flex` backend (a backend extension),
//!   with its backward pass for `Autodiff<Flex>`: what [`Conv`](crate::Conv) runs on flex.
//! - `adam`: Adam's update in one pass per parameter, as a `flex` operation (for
//!   [`FusedAdam`](crate::train::FusedAdam)).
//! - `norm`: BatchNorm in train mode (batch statistics), forward and gradients.
//! - `frozen`: [`FrozenResNet3d`], the inference-only network (BatchNorm folded,
//!   channels-last between layers).

// The training kernels serve the flex backend's ops only.
#[cfg(all(feature = "flex", feature = "train"))]
mod adam;
#[cfg(feature = "flex")]
mod conv;
mod frozen;
mod matmul;
#[cfg(feature = "flex")]
mod norm;
#[cfg(feature = "flex")]
mod op;

#[cfg(all(feature = "flex", feature = "train"))]
pub(crate) use adam::{AdamStep, adam};
pub use frozen::{FrozenResNet3d, LayerBench};
#[cfg(feature = "flex")]
pub(crate) use op::{Conv3dArgs, batch_norm_train, conv3d, runs, runs_batch_norm};
