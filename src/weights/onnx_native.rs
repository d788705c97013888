//! ONNX files this crate wrote ([`ResNet3d::save_onnx`](crate::ResNet3d::save_onnx)): their
//! initializers carry the state dict's names, so they are read by name, as a checkpoint,
//! instead of through the 2-D graph walk of `onnx.rs`.
//!
//! A file is one of them when its `producer_name` is [`PRODUCER`]; the field sits at the
//! start of the encoded model (field 2), so the check reads at most 64 KiB.

use std::io::Read;
use std::path::Path;

use onnx_ir::TensorProto;
use protobuf::{CodedInputStream, Message};

use super::export::{FLOAT, INT64, PRODUCER};
use super::format::{Elem, WeightTensor, io_error};
use crate::error::{Error, Result};

/// How much of a file [`written_here`] reads to find the producer's name.
const HEAD: u64 = 64 << 10;

/// Whether `path` is an ONNX model written by this crate. A file that cannot be read that far
/// is not (the graph reader then says what is wrong with it).
pub(super) fn written_here(path: &Path) -> bool {
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(HEAD).read_to_end(&mut head));
    if read.is_err() {
        return false;
    }
    let mut input = CodedInputStream::from_bytes(&head);
    // Fields before `producer_name` (the IR version) are skipped; the first length-delimited
    // field 2 is the producer.
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        if tag == (2 << 3 | 2) {
            return input.read_string().is_ok_and(|name| name == PRODUCER);
        }
        if protobuf::rt::skip_field_for_tag(tag, &mut input).is_err() {
            return false;
        }
    }
    false
}

/// The float initializers of a file [`written_here`], by name, in the file's order.
///
/// Only the initializers are decoded, one at a time, from the file's bytes (the model's
/// field 7, the graph, and its field 5): a file of many small nodes or other messages costs
/// no more than its bytes, where a whole `ModelProto` costs up to 300 times them.
///
/// # Errors
/// [`Error::Corrupt`] for a file that does not decode, an initializer whose data does not
/// hold its shape, or two of one name; [`Error::UnsupportedDType`] for an initializer that
/// is not float32 or int64.
pub(super) fn read(path: &Path) -> Result<Vec<(String, WeightTensor, Elem)>> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        format: "ONNX",
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let graphs = fields(&bytes, 7).map_err(|e| corrupt(format!("the model does not decode: {e}")))?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for graph in graphs {
        let tensors = fields(graph, 5).map_err(|e| corrupt(format!("the graph does not decode: {e}")))?;
        for encoded in tensors {
            let t = TensorProto::parse_from_bytes(encoded)
                .map_err(|e| corrupt(format!("an initializer does not decode: {e}")))?;
            if !seen.insert(t.name.clone()) {
                return Err(corrupt(format!("two initializers are called {:?}", t.name)));
            }
            if let Some(tensor) = tensor(&t).map_err(|reason| match reason {
                Refusal::Corrupt(reason) => corrupt(reason),
                Refusal::Type(dtype) => Error::UnsupportedDType {
                    name: t.name.clone(),
                    dtype,
                },
            })? {
                out.push((t.name.clone(), tensor, Elem::F32));
            }
        }
    }
    Ok(out)
}

/// Why an initializer is refused.
enum Refusal {
    Corrupt(String),
    Type(String),
}

/// An initializer's values: `None` for the int64 constants of `Pad` and `Slice`.
fn tensor(t: &TensorProto) -> std::result::Result<Option<WeightTensor>, Refusal> {
    if !t.external_data.is_empty() || t.data_location.value() == 1 {
        return Err(Refusal::Corrupt(format!(
            "initializer {} is stored in an external data file; resave the model with its data inside (onnx.save_model(m, path)) to read it back",
            t.name
        )));
    }
    if t.data_type == INT64 {
        return Ok(None);
    }
    if t.data_type != FLOAT {
        return Err(Refusal::Type(format!(
            "ONNX element type {} (this reader takes the float32 files ResNet3d::save_onnx writes)",
            t.data_type
        )));
    }
    let shape: Option<Vec<usize>> = t.dims.iter().map(|&d| usize::try_from(d).ok()).collect();
    let count = shape
        .as_ref()
        .and_then(|s| s.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)));
    let (Some(shape), Some(count)) = (shape, count) else {
        return Err(Refusal::Corrupt(format!(
            "initializer {} has the dimensions {:?}",
            t.name, t.dims
        )));
    };
    if !t.raw_data.is_empty() && !t.float_data.is_empty() {
        return Err(Refusal::Corrupt(format!(
            "initializer {} holds both raw and float data",
            t.name
        )));
    }
    let values: Vec<f32> = if t.float_data.is_empty() {
        if Some(t.raw_data.len()) != count.checked_mul(4) {
            return Err(Refusal::Corrupt(format!(
                "initializer {} of shape {shape:?} holds {} bytes, not {count} floats",
                t.name,
                t.raw_data.len()
            )));
        }
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        if t.float_data.len() != count {
            return Err(Refusal::Corrupt(format!(
                "initializer {} of shape {shape:?} holds {} floats",
                t.name,
                t.float_data.len()
            )));
        }
        t.float_data.clone()
    };
    Ok(Some(WeightTensor { shape, values }))
}

/// The bytes of every length-delimited field `number` of the message `bytes`, in order;
/// other fields are skipped.
fn fields(bytes: &[u8], number: u32) -> protobuf::Result<Vec<&[u8]>> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut out = Vec::new();
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        if tag == (number << 3 | 2) {
            let len = input.read_raw_varint64()?;
            let start = usize::try_from(input.pos()).unwrap_or(usize::MAX);
            // Protobuf messages stop at 2 GiB.
            let end = u32::try_from(len).ok().and_then(|len| start.checked_add(len as usize));
            let Some(field) = end.and_then(|end| bytes.get(start..end)) else {
                return Err(protobuf::Error::from(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("field {number} runs past the end"),
                )));
            };
            input.skip_raw_bytes(len as u32)?;
            out.push(field);
        } else {
            protobuf::rt::skip_field_for_tag(tag, &mut input)?;
        }
    }
    Ok(out)
}
