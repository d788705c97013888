//! What every weight reader shares: a file's format recognised from its bytes, the neutral
//! tensor they all produce, and the decoding of raw element types to `f32`.

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// A weight file's format, recognised from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// `torch.save` output (`.pth`, `.pt`): a ZIP archive, or the legacy pickle stream.
    Pytorch,
    /// Hugging Face safetensors (timm's `.safetensors`).
    Safetensors,
    /// ONNX protobuf.
    Onnx,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Pytorch => "PyTorch",
            Format::Safetensors => "safetensors",
            Format::Onnx => "ONNX",
        })
    }
}

/// One tensor: its shape (outermost first) and its values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    /// Extents, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub values: Vec<f32>,
}

/// Element types as the readers underneath name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Elem {
    /// PyTorch's short name of the type.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Elem::F64 => "f64",
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::BF16 => "bf16",
            Elem::I64 => "i64",
            Elem::I32 => "i32",
            Elem::I16 => "i16",
            Elem::I8 => "i8",
            Elem::U8 => "u8",
            Elem::Bool => "bool",
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::F64 | Elem::I64 => 8,
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 | Elem::BF16 | Elem::I16 => 2,
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
        }
    }
}

/// Little-endian bytes of `elem` to `f32`. Integers are kept (as `f32`) so that the strict
/// loader can report them rather than drop them; `num_batches_tracked` is one.
pub(crate) fn decode(elem: Elem, bytes: &[u8]) -> Vec<f32> {
    let chunks = bytes.chunks_exact(elem.size());
    match elem {
        Elem::F32 => chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Elem::F64 => chunks
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Elem::F16 => chunks
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Elem::BF16 => chunks
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Elem::I64 => chunks
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Elem::I32 => chunks
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        Elem::I16 => chunks.map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(),
        Elem::I8 => chunks.map(|c| c[0] as i8 as f32).collect(),
        Elem::U8 | Elem::Bool => chunks.map(|c| c[0] as f32).collect(),
    }
}

/// Recognises a file's format from its first bytes (the extension only breaks a tie).
pub(crate) fn detect_format(path: &Path) -> Result<Format> {
    let mut file = std::fs::File::open(path).map_err(|source| io_error(path, source))?;
    let len = file.metadata().map_err(|source| io_error(path, source))?.len();
    let mut head = [0u8; 16];
    let mut filled = 0;
    while filled < head.len() {
        match file
            .read(&mut head[filled..])
            .map_err(|source| io_error(path, source))?
        {
            0 => break,
            n => filled += n,
        }
    }
    let head = &head[..filled];
    let is_onnx_name = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if head.starts_with(b"PK\x03\x04") || head.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        return Ok(Format::Pytorch);
    }
    if head.len() >= 9 {
        let header = u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]);
        if head[8] == b'{' && header.saturating_add(8) <= len {
            return Ok(Format::Safetensors);
        }
    }
    // An ONNX ModelProto starts with field 1 (ir_version, varint) or another small field tag.
    if is_onnx_name && head.first().is_some_and(|b| b & 0x07 <= 2 && b >> 3 <= 20 && *b != 0) {
        return Ok(Format::Onnx);
    }
    let found = if head.is_empty() {
        "the file is empty".to_string()
    } else if head.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
        format!("text starting {:?}", String::from_utf8_lossy(head))
    } else {
        format!(
            "bytes {}",
            head.iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    Err(Error::UnknownFormat {
        path: path.to_path_buf(),
        found,
    })
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        Error::FileNotFound {
            path: path.to_path_buf(),
        }
    } else {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_half_precision_and_integers() {
        assert_eq!(decode(Elem::F16, &half::f16::from_f32(1.5).to_le_bytes()), [1.5]);
        assert_eq!(decode(Elem::BF16, &half::bf16::from_f32(-2.0).to_le_bytes()), [-2.0]);
        assert_eq!(decode(Elem::I64, &1234i64.to_le_bytes()), [1234.0]);
        assert_eq!(decode(Elem::F64, &0.25f64.to_le_bytes()), [0.25]);
    }
}
