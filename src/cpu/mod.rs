//! The CPU fast path: one set of convolution kernels and the networks built on them.
//!
//! - `matmul`: the matrix product every convolution here is made of, `C += A * B` with `B`
//!   in panels of 32 columns: an AVX-512 12x32 register tile (detected at run time) and a
//!   portable fallback.
//! - `channels_last`: 3-D convolution on channels-last `[N, D, H, W, C]` data, forward (the
//!   frozen network's implicit product) and gradients (products with `dY` read in place, then
//!   col2im; patch panels copied `C` values at a time): what the network runs on flex.
//! - `conv`: the same on channels-first `[N, C, D, H, W]` data, patches packed block by
//!   block; used where it is the better layout: the last stages' few voxels (the kernel read
//!   in its own layout), channel counts that are not multiples of 32 in the weight gradient
//!   (the one-channel stem), dilated convolutions.
//! - `op`: the convolution and BatchNorm as operations of Burn's `flex` backend (backend
//!   extensions), with their backward passes for `Autodiff<Flex>`: what [`Conv`](crate::Conv)
//!   and the network's BatchNorm layers run on flex. Their outputs are channels-last buffers
//!   seen by Burn as `[N, C, D, H, W]` tensors with permuted strides, so that consecutive
//!   layers pass activations on without changing their layout.
//! - `adam`: Adam's update in one pass per parameter, as a `flex` operation (for
//!   [`FusedAdam`](crate::train::FusedAdam)).
//! - `norm`: BatchNorm on channels-last data (batch statistics, or the running ones in
//!   eval mode), with ReLU and residual in the same pass; forward and gradients.
//! - `pool`: 3-D max pooling on channels-last data, forward and gradient.
//! - `winograd`: 3x3x3 convolutions with stride 1 as F(2x2x2, 3x3x3) Winograd products (a
//!   third of the multiply-adds), for the frozen f32 network.
//! - `bf16`: the bf16 product (AVX512_BF16) of `freeze_bf16`'s convolutions.
//! - `frozen`: [`FrozenResNet3d`], the inference-only network (BatchNorm folded,
//!   channels-last between layers).

mod bf16;
// The training kernels serve the flex backend's ops only.
#[cfg(all(feature = "flex", feature = "train"))]
mod adam;
#[cfg(feature = "flex")]
mod channels_last;
#[cfg(feature = "flex")]
mod conv;
mod frozen;
mod matmul;
#[cfg(feature = "flex")]
mod norm;
#[cfg(feature = "flex")]
mod op;
#[cfg(feature = "flex")]
mod pool;
mod winograd;

#[cfg(all(feature = "flex", feature = "train"))]
pub(crate) use adam::{AdamStep, adam};
pub use frozen::{FrozenResNet3d, LayerBench};
#[cfg(feature = "flex")]
pub(crate) use op::{
    Conv3dArgs, batch_norm_eval, batch_norm_train, conv_batch_norm_eval, conv3d, max_pool3d, runs, runs_batch_norm,
    runs_pool,
};
