//! The crate's kernels as operations of Burn's `flex` backend (backend extensions, routed
//! through Burn's `Dispatch`), with hand-written backward passes for `Autodiff<Flex>`: tensors
//! and the one checked geometry in, tensors out; no crate module.
//!
//! - `conv`: the convolution, forward and its input, weight and bias gradients;
//! - `norm`: BatchNorm on the batch's statistics with its gradient (with the ReLU, or the
//!   residual and ReLU, after it), and, for inference, a convolution with its eval-mode
//!   BatchNorm folded in;
//! - `pool`: 3-D max pooling with its gradient;
//! - `adam`: Adam's update in one pass;
//! - `branch`: a residual block's input as its two branches, their gradients summed in place;
//! - `tensors`: the conversions between Burn's tensors and the kernels' buffers.
//!
//! Every op reads its tensors channels-last (without a copy when they are already laid out so:
//! the outputs of these ops are) and writes channels-last buffers, viewed by Burn as
//! `[N, C, D, H, W]` through permuted strides. Burn's own operations (the head, the sums of
//! gradients other than a block input's) read those views through their strides. Other backends keep Burn's operations.

#[cfg(feature = "train")]
pub(crate) mod adam;
pub(crate) mod branch;
pub(crate) mod conv;
pub(crate) mod norm;
pub(crate) mod pool;
pub(crate) mod tensors;
