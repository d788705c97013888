//! ONNX files this crate wrote ([`ResNet3d::save_onnx`](crate::ResNet3d::save_onnx)): their
//! initializers carry the state dict's names, so they are read by name, as a checkpoint,
//! instead of through the 2-D graph walk of `onnx.rs`.
//!
//! A file is one of them when its `producer_name` is [`PRODUCER`]; the field sits at the
//! start of the encoded model (field 2), so the check reads at most 64 KiB.

use std::io::Read;
use std::path::Path;

use onnx_ir::ModelProto;
use protobuf::{CodedInputStream, Message};

use super::export::PRODUCER;
use super::format::{Elem, WeightTensor, io_error};
use crate::error::{Error, Result};

/// How much of a file [`written_here`] reads to find the producer's name.
const HEAD: u64 = 64 << 10;
/// ONNX element types read here.
const FLOAT: i32 = 1;
const INT64: i32 = 7;

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
/// # Errors
/// [`Error::Corrupt`] for a file that does not decode, or an initializer whose data does not
/// hold its shape; [`Error::UnsupportedDType`] for a float initializer of another type.
pub(super) fn read(path: &Path) -> Result<Vec<(String, WeightTensor, Elem)>> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        format: "ONNX",
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let model =
        ModelProto::parse_from_bytes(&bytes).map_err(|err| corrupt(format!("the model does not decode: {err}")))?;
    drop(bytes);
    let mut out = Vec::new();
    for t in &model.graph.initializer {
        if t.data_type == INT64 {
            continue; // the constants of Pad and Slice
        }
        if t.data_type != FLOAT {
            return Err(Error::UnsupportedDType {
                name: t.name.clone(),
                dtype: format!("ONNX element type {}", t.data_type),
            });
        }
        let shape: Option<Vec<usize>> = t.dims.iter().map(|&d| usize::try_from(d).ok()).collect();
        let count = shape
            .as_ref()
            .and_then(|s| s.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)));
        let (Some(shape), Some(count)) = (shape, count) else {
            return Err(corrupt(format!(
                "initializer {} has the dimensions {:?}",
                t.name, t.dims
            )));
        };
        let values: Vec<f32> = if !t.raw_data.is_empty() || t.float_data.is_empty() {
            if Some(t.raw_data.len()) != count.checked_mul(4) {
                return Err(corrupt(format!(
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
                return Err(corrupt(format!(
                    "initializer {} of shape {shape:?} holds {} floats",
                    t.name,
                    t.float_data.len()
                )));
            }
            t.float_data.clone()
        };
        out.push((t.name.clone(), WeightTensor { shape, values }, Elem::F32));
    }
    Ok(out)
}
