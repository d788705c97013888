//! Reading weight files into [`Weights`]: one neutral set of named `f32` tensors in
//! torchvision naming, whatever the file format. One file per format; all calls into the
//! readers underneath (burn-store's PyTorch reader, `safetensors`) stay in this folder.

mod onnx;
mod pytorch;
mod safetensors;

use std::collections::BTreeMap;
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

/// Named tensors in torchvision naming (`conv1.weight`, `layer1.0.bn1.running_mean`, `fc.bias`),
/// backend-free: what every reader produces and what [`inflate_from_2d`](crate::inflate_from_2d)
/// and [`ResNet3d::from_checkpoint`](crate::ResNet3d::from_checkpoint) consume.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    tensors: BTreeMap<String, WeightTensor>,
    set_aside: Vec<(String, String)>,
    fused_batch_norms: usize,
    stride_in_1x1: Option<bool>,
}

impl Weights {
    /// An empty set, to fill with [`insert`](Self::insert).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a `.pth`/`.pt`, `.safetensors` or `.onnx` file; the format is recognised from
    /// its bytes.
    ///
    /// A PyTorch checkpoint may be a bare state dict or hold it under a key (`state_dict`,
    /// `model`, ...) beside other entries, and its names may carry DataParallel's `module.`
    /// prefix: the state dict is found by its `conv1.weight`/`bn1.weight` pair, and every
    /// tensor outside it is listed by [`set_aside`](Self::set_aside).
    ///
    /// An ONNX graph is mapped onto torchvision's names by its structure, never by its
    /// initializer names or node order; BatchNorm fused into convolutions by the exporter
    /// becomes an identity BatchNorm (see [`fused_batch_norms`](Self::fused_batch_norms)).
    /// External data files (`model.onnx.data`) are read from beside the model.
    ///
    /// # Errors
    /// [`Error::FileNotFound`], [`Error::Io`], [`Error::UnknownFormat`] for bytes of no known
    /// format, [`Error::Corrupt`] for a damaged file, [`Error::UnsupportedDType`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw = match detect_format(path)? {
            Format::Pytorch => pytorch::read(path)?,
            Format::Safetensors => safetensors::read(path)?,
            Format::Onnx => {
                let (raw, facts) = onnx::read(path)?;
                let mut weights = Self {
                    fused_batch_norms: facts.fused_batch_norms,
                    stride_in_1x1: facts.stride_in_1x1,
                    ..Self::default()
                };
                weights.tensors.extend(raw);
                return Ok(weights);
            }
        };
        Ok(Self::from_state_dict(raw))
    }

    /// Adds a tensor, replacing one of the same name.
    ///
    /// # Errors
    /// [`Error::WrongShape`] if `values` does not hold `shape`'s number of elements.
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) -> Result<()> {
        let name = name.into();
        if shape.iter().product::<usize>() != values.len() {
            return Err(Error::WrongShape {
                hint: format!("; {} values were given", values.len()),
                name,
                expected: vec![values.len()],
                found: shape,
            });
        }
        self.tensors.insert(name, WeightTensor { shape, values });
        Ok(())
    }

    /// The same tensors under the names `rename` gives (what the file set aside, fused
    /// BatchNorms and the stride placement kept).
    pub(crate) fn renamed(&self, rename: impl Fn(&str) -> String) -> Self {
        Self {
            tensors: self.tensors.iter().map(|(k, v)| (rename(k), v.clone())).collect(),
            set_aside: self.set_aside.clone(),
            fused_batch_norms: self.fused_batch_norms,
            stride_in_1x1: self.stride_in_1x1,
        }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&WeightTensor> {
        self.tensors.get(name)
    }

    /// Removes and returns the tensor called `name`.
    pub fn remove(&mut self, name: &str) -> Option<WeightTensor> {
        self.tensors.remove(name)
    }

    /// All names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// All tensors, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &WeightTensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The block layout the names describe (block kind and blocks per stage), and the width
    /// (output channels of `conv1.weight`): what a [`ResNet3dConfig`](crate::ResNet3dConfig)
    /// for this checkpoint needs.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the names are not those of a torchvision-layout ResNet.
    pub fn layout(&self) -> Result<(crate::Layout, usize)> {
        let layout = crate::load::detect_layout(self)?;
        let width = match self.get("conv1.weight") {
            Some(t) if !t.shape.is_empty() => t.shape[0],
            _ => {
                return Err(Error::MissingTensors {
                    names: vec!["conv1.weight".into()],
                });
            }
        };
        Ok((layout, width))
    }

    /// How many BatchNorm layers the file had fused into their convolutions (ONNX exports
    /// with constant folding). Their BatchNorm here is the identity in eval mode
    /// (`gamma = sqrt(1 + eps)`, `beta` = the fused bias, mean 0, variance 1), so the network
    /// computes what the file computes; fine-tuning starts from these identity statistics.
    pub fn fused_batch_norms(&self) -> usize {
        self.fused_batch_norms
    }

    /// Whether the bottlenecks stride their first 1x1 convolution (ResNet v1), when the file
    /// tells (ONNX graphs do; state dicts hold no strides).
    pub fn stride_in_1x1(&self) -> Option<bool> {
        self.stride_in_1x1
    }

    /// Tensors of the file that are not part of the state dict (an optimizer's state saved
    /// beside it, for instance), with the reason; they are reported, never loaded.
    pub fn set_aside(&self) -> &[(String, String)] {
        &self.set_aside
    }

    /// Finds the state dict among a file's tensors: the prefix `p` of the shortest
    /// `p + "conv1.weight"` that has a `p + "bn1.weight"` beside it and is not inside a stage.
    fn from_state_dict(raw: Vec<(String, WeightTensor)>) -> Self {
        let names: std::collections::BTreeSet<&str> = raw.iter().map(|(n, _)| n.as_str()).collect();
        let prefix = names
            .iter()
            .filter_map(|n| n.strip_suffix("conv1.weight"))
            .filter(|p| (p.is_empty() || p.ends_with('.')) && !p.contains("layer"))
            .filter(|p| names.contains(format!("{p}bn1.weight").as_str()))
            .min_by_key(|p| p.len())
            .unwrap_or("")
            .to_string();
        let mut weights = Self::default();
        for (name, tensor) in raw {
            match name.strip_prefix(&prefix) {
                Some(inner) => {
                    weights.tensors.insert(inner.to_string(), tensor);
                }
                None => weights.set_aside.push((
                    name,
                    format!("outside the state dict `{}`", prefix.trim_end_matches('.')),
                )),
            }
        }
        weights
    }
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

    fn t(values: &[f32]) -> WeightTensor {
        WeightTensor {
            shape: vec![values.len()],
            values: values.to_vec(),
        }
    }

    #[test]
    fn finds_a_nested_state_dict_and_sets_the_rest_aside() {
        let raw = vec![
            ("state_dict.module.conv1.weight".to_string(), t(&[1.0])),
            ("state_dict.module.bn1.weight".to_string(), t(&[2.0])),
            ("state_dict.module.layer1.0.conv1.weight".to_string(), t(&[3.0])),
            ("optimizer.state.0.exp_avg".to_string(), t(&[4.0])),
        ];
        let w = Weights::from_state_dict(raw);
        assert_eq!(
            w.names().collect::<Vec<_>>(),
            ["bn1.weight", "conv1.weight", "layer1.0.conv1.weight"]
        );
        assert_eq!(w.set_aside().len(), 1);
        assert_eq!(w.set_aside()[0].0, "optimizer.state.0.exp_avg");
    }

    #[test]
    fn keeps_a_bare_state_dict_as_it_is() {
        let raw = vec![
            ("conv1.weight".to_string(), t(&[1.0])),
            ("bn1.weight".to_string(), t(&[2.0])),
            ("layer1.0.conv1.weight".to_string(), t(&[3.0])),
            ("layer1.0.bn1.weight".to_string(), t(&[3.0])),
        ];
        let w = Weights::from_state_dict(raw);
        assert_eq!(w.len(), 4);
        assert!(w.set_aside().is_empty());
    }

    #[test]
    fn decodes_half_precision_and_integers() {
        assert_eq!(decode(Elem::F16, &half::f16::from_f32(1.5).to_le_bytes()), [1.5]);
        assert_eq!(decode(Elem::BF16, &half::bf16::from_f32(-2.0).to_le_bytes()), [-2.0]);
        assert_eq!(decode(Elem::I64, &1234i64.to_le_bytes()), [1234.0]);
        assert_eq!(decode(Elem::F64, &0.25f64.to_le_bytes()), [0.25]);
    }
}
