//! `.pth`/`.pt` files through burn-store's PyTorch reader, which parses the pickle without
//! running any code from it. A pickle that *would* run code under `torch.load` (a call to
//! `os.system`, `eval`, `subprocess...`) is refused outright: such a file is hostile, even
//! though reading it here is harmless.

use std::path::Path;

use burn::store::pytorch_reader::{DType, PickleValue, PytorchError, PytorchReader};

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
    if let Some(call) = code_in(&PytorchReader::read_pickle_data(path, None).map_err(|err| corrupt(err.to_string()))?) {
        return Err(Error::Unsupported {
            what: format!(
                "{}: the pickle calls `{call}`, which runs code when Python's torch.load(weights_only=False) opens the file; \
                 nothing was run here, but the file is hostile and is refused",
                path.display()
            ),
        });
    }
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

/// Python callables that run code or touch the system when a pickle invokes them.
const CODE_MODULES: [&str; 20] = [
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "shutil",
    "socket",
    "pty",
    "importlib",
    "runpy",
    "webbrowser",
    "pickle",
    "marshal",
    "ctypes",
    "types",
    "code",
    "codeop",
    "multiprocessing",
    "signal",
    "asyncio",
];
const CODE_BUILTINS: [&str; 14] = [
    "eval",
    "exec",
    "execfile",
    "compile",
    "open",
    "getattr",
    "setattr",
    "delattr",
    "__import__",
    "globals",
    "locals",
    "vars",
    "input",
    "breakpoint",
];

/// The first value of the pickle that names a code-running callable.
fn code_in(value: &PickleValue) -> Option<String> {
    match value {
        PickleValue::Unsupported(name) => {
            let (module, item) = name.rsplit_once('.').unwrap_or(("", name));
            let root = module.split('.').next().unwrap_or(module);
            let dangerous = CODE_MODULES.contains(&root)
                || (matches!(module, "builtins" | "__builtin__") && CODE_BUILTINS.contains(&item));
            dangerous.then(|| name.clone())
        }
        PickleValue::List(items) => items.iter().find_map(code_in),
        PickleValue::Dict(entries) => entries.values().find_map(code_in),
        _ => None,
    }
}
