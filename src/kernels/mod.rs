//! The fast CPU kernels: plain `f32` (and bf16) slices in, the one checked geometry
//! ([`ConvShape`](crate::arch::geometry::ConvShape), [`PoolShape`](crate::arch::geometry::PoolShape))
//! as the truth about them; no tensors, no modules.
//!
//! - `matmul`: the matrix product every convolution here is made of, `C += A * B` with `B`
//!   in panels of 32 columns: an AVX-512 12x32 register tile or an AVX2 one (detected at run
//!   time) and a portable fallback (the `gemm` crate); `bf16`: the bf16 product
//!   (AVX512_BF16). [`wide`](matmul::wide) runs other loops compiled for the detected
//!   instruction set.
//! - `conv`: [`PackedConv`](conv::PackedConv), the forward convolution on channels-last data
//!   (the frozen network's layers and the `flex` operation), which reads its input through
//!   `implicit` (a padded copy read in place) or `gather` (patches per tile), or as a `winograd`
//!   F(2x2x2, 3x3x3) or F(4x4x4, 3x3x3) product (one-axis transforms: `winograd_axis`).
//! - `channels_last`: the `flex` operation's passes (forward through `PackedConv`, input,
//!   weight and bias gradients); `channels_first`: the same on `[N, C, D, H, W]` data where
//!   that is the better layout (few output voxels, dilation, the one-channel stem's weight
//!   gradient).
//! - `fold`: BatchNorm folded into a convolution, once; `norm`: BatchNorm on channels-last
//!   data with the batch's statistics, forward and gradients; `pool`: 3-D max pooling.
//! - `buffers`, `layout`, `parallel`: memory kept between calls, layout changes, work split.
//! - `adam`: Adam's update in one pass.

#[cfg(all(feature = "flex", feature = "train"))]
pub(crate) mod adam;
pub(crate) mod bf16;
pub(crate) mod buffers;
#[cfg(feature = "flex")]
pub(crate) mod channels_first;
#[cfg(feature = "flex")]
pub(crate) mod channels_last;
pub(crate) mod conv;
pub(crate) mod fold;
pub(crate) mod gather;
pub(crate) mod implicit;
pub(crate) mod layout;
pub(crate) mod matmul;
#[cfg(feature = "flex")]
pub(crate) mod norm;
pub(crate) mod parallel;
pub(crate) mod pool;
pub(crate) mod winograd;
pub(crate) mod winograd_axis;
pub(crate) mod winograd_grad;
pub(crate) mod winograd_tiles;
