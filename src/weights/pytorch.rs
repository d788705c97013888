//! `.pth`/`.pt` files through burn-store's PyTorch reader, which parses the pickle without
//! running any code from it. A pickle that *would* run code under `torch.load` (a call to
//! `os.system`, `eval`, `subprocess...`) is refused outright: such a file is hostile, even
//! though reading it here is harmless.

use std::path::Path;

use burn::store::pytorch_reader::{DType, PickleValue, PytorchError, PytorchReader};

use super::format::{Elem, WeightTensor, decode, io_error};
use crate::error::{Error, Result};

pub(super) fn read(path: &Path) -> Result<Vec<(String, WeightTensor, Elem)>> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        format: "PyTorch",
        reason,
    };
    let file_len = std::fs::metadata(path).map_err(|err| io_error(path, err))?.len();
    let bound = expansion_bound(file_len);
    if let Some((entry, size)) = zip_expansion(path, bound) {
        return Err(corrupt(format!(
            "its ZIP entries expand to {size} bytes (at `{entry}`), more than {bound} bytes for a {file_len}-byte file: \
             a zip bomb? torch.save stores entries uncompressed; re-save the checkpoint with torch.save"
        )));
    }
    let reader = PytorchReader::new(path).map_err(|err| match err {
        PytorchError::Io(source) => io_error(path, source),
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
    // A view can declare more elements than its storage holds (stride 0): bound what the
    // tensors would materialise before any of them is read.
    let declared = reader
        .tensors()
        .values()
        .fold(0u64, |sum, t| sum.saturating_add(t.byte_len() as u64));
    if declared > bound {
        return Err(corrupt(format!(
            "its tensors declare {declared} bytes, more than {bound} bytes for a {file_len}-byte file: \
             expanded (stride 0) or compressed storages are not read"
        )));
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
            elem,
        ));
    }
    Ok(out)
}

/// The most bytes a checkpoint of `file_len` bytes may expand to when read: torch.save
/// stores tensors uncompressed, so anything beyond a few times the file is a bomb.
fn expansion_bound(file_len: u64) -> u64 {
    file_len.saturating_mul(8).saturating_add(1 << 20)
}

/// For a ZIP checkpoint whose entries together declare more than `bound` uncompressed bytes,
/// the entry that crossed it and the running total, read from the central directory before
/// anything is decompressed. Not a ZIP, or not a readable one: `None` (the reader reports it).
fn zip_expansion(path: &Path, bound: u64) -> Option<(String, u64)> {
    let file = std::fs::File::open(path).ok()?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).ok()?;
    let mut total = 0u64;
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).ok()?;
        total = total.saturating_add(entry.size());
        if total > bound {
            return Some((entry.name().map(|n| n.to_string()).unwrap_or_default(), total));
        }
    }
    None
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
