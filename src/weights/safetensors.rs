//! `.safetensors` files (timm's format) through the `safetensors` crate.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::format::{Elem, WeightTensor, decode, io_error};
use crate::error::{Error, Result};

pub(super) fn read(path: &Path) -> Result<Vec<(String, WeightTensor, Elem)>> {
    let bytes = std::fs::read(path).map_err(|source| io_error(path, source))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|err| Error::Corrupt {
        path: path.to_path_buf(),
        format: "safetensors",
        reason: err.to_string(),
    })?;
    let mut out = Vec::with_capacity(file.len());
    for (name, view) in file.tensors() {
        let elem = match view.dtype() {
            Dtype::F64 => Elem::F64,
            Dtype::F32 => Elem::F32,
            Dtype::F16 => Elem::F16,
            Dtype::BF16 => Elem::BF16,
            Dtype::I64 => Elem::I64,
            Dtype::I32 => Elem::I32,
            Dtype::I16 => Elem::I16,
            Dtype::I8 => Elem::I8,
            Dtype::U8 => Elem::U8,
            Dtype::BOOL => Elem::Bool,
            other => {
                return Err(Error::UnsupportedDType {
                    name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        let shape = view.shape().to_vec();
        out.push((
            name,
            WeightTensor {
                shape,
                values: decode(elem, view.data()),
            },
            elem,
        ));
    }
    Ok(out)
}
