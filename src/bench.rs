//! The benchmarks' access to single layers (feature `bench`, not part of the crate's API):
//! what one convolution or pool costs inside [`FrozenResNet3d`](crate::FrozenResNet3d),
//! without the layout changes at its ends.

use burn::tensor::Tensor;

use crate::arch::plan::{After, LayerName, LayerSpec, Site};
use crate::error::{Error, Result};
use crate::kernels::buffers::{Act, Buffers};
use crate::kernels::conv::{PackedConv, Precision, WinogradUse};
use crate::kernels::layout::to_channels_last;
use crate::kernels::matmul::Kernel;
use crate::model::conv::Conv;
use crate::model::pool::MaxPool3d;

/// One frozen layer on a channels-last input, for `benches/forward.rs`.
#[derive(Debug)]
pub struct LayerBench {
    input: Act,
    layer: BenchLayer,
    buffers: Buffers,
}

#[derive(Debug)]
// Two values per benchmark: size does not matter.
#[allow(clippy::large_enum_variant)]
enum BenchLayer {
    Conv(PackedConv),
    Pool(MaxPool3d),
}

/// `x` (`[N, C, D, H, W]`) as a channels-last activation.
fn channels_last_act(x: Tensor<5>) -> Result<Act> {
    let dims = x.dims();
    let [n, c, d, h, w] = dims;
    let values = x
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|err| Error::InvalidInput {
            dims: dims.to_vec(),
            what: format!("the tensor's data could not be read as f32: {err:?}"),
        })?;
    Ok(Act {
        data: to_channels_last(&values, dims),
        dims: [n, d, h, w, c],
    })
}

impl LayerBench {
    /// `conv` followed by ReLU, on `x` (`[N, C, D, H, W]`); with the `gemm` crate's product if
    /// `portable`, else the fastest this CPU runs.
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for a convolution whose fields do not fit together;
    /// [`Error::InvalidInput`] if `x` does not fit the convolution or cannot be read as `f32`.
    pub fn conv(conv: &Conv, x: Tensor<5>, portable: bool) -> Result<Self> {
        let kernel = if portable { Kernel::Portable } else { Kernel::detect() };
        Self::conv_in(conv, x, kernel, Precision::F32)
    }

    /// [`conv`](Self::conv) with `freeze_bf16`'s products.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a CPU without AVX512_BF16; otherwise as [`conv`](Self::conv).
    pub fn conv_bf16(conv: &Conv, x: Tensor<5>) -> Result<Self> {
        let Some(kernel) = Kernel::avx512().filter(|_| crate::kernels::bf16::available()) else {
            return Err(Error::Unsupported {
                what: "bf16 products need AVX512_BF16".into(),
            });
        };
        Self::conv_in(conv, x, kernel, Precision::Bf16)
    }

    fn conv_in(conv: &Conv, x: Tensor<5>, kernel: Kernel, precision: Precision) -> Result<Self> {
        let spec = LayerSpec {
            name: LayerName {
                site: Site::Detached,
                conv: "conv",
                norm: "bn",
            },
            geometry: conv.geometry(),
            after: After::Relu,
        };
        let weight = conv
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|err| Error::InvalidInput {
                dims: conv.weight.dims().to_vec(),
                what: format!("the kernel could not be read as f32: {err:?}"),
            })?;
        let bias = vec![0.0; spec.geometry.out_channels];
        let layer = PackedConv::pack(spec, &weight, None, bias, kernel, precision, WinogradUse::Kept)?;
        let input = channels_last_act(x)?;
        let [n, d, h, w, c] = input.dims;
        spec.geometry.output_dims([n, c, d, h, w], "conv")?;
        Ok(Self {
            layer: BenchLayer::Conv(layer),
            input,
            buffers: Buffers::default(),
        })
    }

    /// [`conv`](Self::conv) with the fastest product, as a direct (implicit) product even
    /// where the Winograd transform applies: what the transform gains.
    ///
    /// # Errors
    /// As [`conv`](Self::conv).
    pub fn conv_direct(conv: &Conv, x: Tensor<5>) -> Result<Self> {
        let mut bench = Self::conv(conv, x, false)?;
        if let BenchLayer::Conv(layer) = bench.layer {
            bench.layer = BenchLayer::Conv(layer.without_winograd());
        }
        Ok(bench)
    }

    /// `pool` on `x` (`[N, C, D, H, W]`).
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for a pool whose fields do not fit together;
    /// [`Error::InvalidInput`] if `x` is smaller than the window or cannot be read as `f32`.
    pub fn pool(pool: &MaxPool3d, x: Tensor<5>) -> Result<Self> {
        pool.geometry().output_dims(x.dims(), "maxpool")?;
        Ok(Self {
            layer: BenchLayer::Pool(pool.clone()),
            input: channels_last_act(x)?,
            buffers: Buffers::default(),
        })
    }

    /// Runs the layer; returns the output's length.
    ///
    /// # Errors
    /// None in practice: the input was checked against the layer when the bench was built.
    pub fn run(&self) -> Result<usize> {
        let out = match &self.layer {
            BenchLayer::Conv(conv) => conv.forward(self.input.view(), None, &self.buffers)?,
            BenchLayer::Pool(pool) => pool.frozen(self.input.clone(), &self.buffers)?,
        };
        let len = out.data.len();
        self.buffers.give(out.data);
        Ok(len)
    }
}
