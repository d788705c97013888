//! The conversions between Burn's `flex` tensors and the kernels' buffers, shared by the
//! operations.

use burn::backend::DType;
use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

/// Whether `t` lives on `device` with the same autodiff setting: Burn's `Device` equality
/// does not tell a `flex` device from its autodiff twin, and these ops must not get a mix
/// (an autodiff parameter in an op dispatched as plain `flex` has no backward and stops
/// the program). Mixed calls take Burn's own operations instead.
pub(crate) fn same_device<const D: usize>(t: &burn::tensor::Tensor<D>, device: &burn::tensor::Device) -> bool {
    let own = t.device();
    own == *device && own.is_autodiff() == device.is_autodiff()
}

/// The values of a flex tensor as contiguous `f32`, copied only when they are not already.
pub(crate) fn f32_values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    if t.dtype() == DType::F32
        && let Some(values) = t.as_slice::<f32>()
    {
        return std::borrow::Cow::Borrowed(values);
    }
    let data = t.to_contiguous().into_data().convert::<f32>();
    // A converted f32 TensorData always reads back as f32; an empty vector would only make the
    // length check of the kernels fail loudly.
    std::borrow::Cow::Owned(data.try_into_vec::<f32>().unwrap_or_default())
}

/// The values of a 5-D flex tensor (`[n, c, d, h, w]`) in channels-last order
/// (`[n, d, h, w, c]`): its own buffer when it is laid out so (what [`channels_last`] gives),
/// else a converted copy.
pub(crate) fn channels_last_values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    let dims = t.layout().shape().to_vec();
    if let [n, c, d, h, w] = dims[..]
        && t.dtype() == DType::F32
        && t.layout().start_offset() == 0
    {
        let want = [d * h * w * c, 1, h * w * c, w * c, c];
        let strides = t.layout().strides();
        let len = n * c * d * h * w;
        // Axes of extent 1 never move the index, whatever their stride.
        if (0..5).all(|a| dims[a] <= 1 || strides[a] == want[a] as isize) && t.storage::<f32>().len() >= len {
            return std::borrow::Cow::Borrowed(&t.storage::<f32>()[..len]);
        }
    }
    let dense = f32_values(t);
    let mut shape = [1usize; 5];
    shape.iter_mut().zip(&dims).for_each(|(s, &d)| *s = d);
    std::borrow::Cow::Owned(crate::kernels::layout::to_channels_last(&dense, shape))
}

/// Channels-last values (`[n, d, h, w, c]`) as the `[n, c, d, h, w]` tensor they are: a
/// permuted view of them, no copy. The network's activations stay so between the crate's ops;
/// Burn's own operations read such views through their strides.
pub(crate) fn channels_last([n, c, d, h, w]: [usize; 5], values: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, [n, d, h, w, c])).permute(&[0, 4, 1, 2, 3])
}

/// The shape of a tensor of up to 5 axes as 5 extents (missing axes 1).
pub(crate) fn dims5(t: &FlexTensor) -> [usize; 5] {
    let mut out = [1usize; 5];
    out.iter_mut().zip(t.layout().shape().iter()).for_each(|(o, &d)| *o = d);
    out
}

/// `values` as a contiguous flex tensor of `shape`.
pub(crate) fn flex_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
