//! `.pth`/`.pt` files through burn-store's PyTorch reader, which parses the pickle without
//! running any code from it.

use std::path::Path;

use burn::store::pytorch_reader::{DType, PytorchError, PytorchReader};

use super::{Elem, WeightTensor, decode};
use crate::error::{Error, Result};

pub(super) fn read(path: &Path) -> Result<Vec<(String, WeightTensor)>> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        format: "PyTorch",
        reason,
    };
    let reader = PytorchReader::new(path).map_err(|err| match err {
        PytorchError::Io(source) => super::io_error(path, source),
        other => corrupt(other.to_string()),
    })?;
    let mut out = Vec::with_capacity(reader.len());
    for (name, tensor) in reader.into_tensors() {
        let elem = match tensor.dtype() {
            DType::F64 => Elem::F64,
            DType::F32 => Elem::F32,
            DType::F16 => Elem::F16,
            DType::BF16 => Elem::BF16,
            DType::I64 => Elem::I64,
            DType::I32 => Elem::I32,
            DType::I16 => Elem::I16,
            DType::I8 => Elem::I8,
            DType::U8 => Elem::U8,
            DType::Bool => Elem::Bool,
            other => {
                return Err(Error::UnsupportedDType {
                    name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        let bytes = tensor.read().map_err(|err| corrupt(err.to_string()))?;
        let shape = tensor.shape().to_vec();
        out.push((
            name,
            WeightTensor {
                shape,
                values: decode(elem, &bytes),
            },
        ));
    }
    Ok(out)
}
