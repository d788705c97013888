//! [`Weights`]: one neutral set of named `f32` tensors in torchvision naming, whatever the file
//! format it was read from.

use std::collections::BTreeMap;
use std::path::Path;

use super::format::{Elem, Format, WeightTensor, detect_format};
use super::{onnx, onnx_native, pytorch, safetensors};
use crate::error::{Error, Result};

/// Named tensors in torchvision naming (`conv1.weight`, `layer1.0.bn1.running_mean`, `fc.bias`),
/// backend-free: what every reader produces and what [`inflate_from_2d`](crate::inflate_from_2d)
/// and [`ResNet3d::from_checkpoint`](crate::ResNet3d::from_checkpoint) consume.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    tensors: BTreeMap<String, WeightTensor>,
    set_aside: Vec<(String, String)>,
    element_types: BTreeMap<&'static str, usize>,
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
    /// An ONNX model written by [`ResNet3d::save_onnx`](crate::ResNet3d::save_onnx) is read
    /// by its initializer names, which are the state dict's. Any other ONNX graph is mapped
    /// onto torchvision's names by its structure, never by its initializer names or node order; BatchNorm fused into convolutions by the exporter
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
            Format::Onnx if onnx_native::written_here(path) => onnx_native::read(path)?,
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

    /// How many of the state dict's tensors the file stores in each element type (`f32`,
    /// `f16`, `bf16`, `i64` for BatchNorm's counters, ...), before they were read as `f32`;
    /// empty for ONNX files (whose initializers are converted by the graph reader) and for
    /// sets made with [`insert`](Self::insert).
    pub fn element_types(&self) -> &BTreeMap<&'static str, usize> {
        &self.element_types
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
            element_types: self.element_types.clone(),
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
    fn from_state_dict(raw: Vec<(String, WeightTensor, Elem)>) -> Self {
        let names: std::collections::BTreeSet<&str> = raw.iter().map(|(n, _, _)| n.as_str()).collect();
        let prefix = names
            .iter()
            .filter_map(|n| n.strip_suffix("conv1.weight"))
            .filter(|p| (p.is_empty() || p.ends_with('.')) && !p.contains("layer"))
            .filter(|p| names.contains(format!("{p}bn1.weight").as_str()))
            .min_by_key(|p| p.len())
            .unwrap_or("")
            .to_string();
        let mut weights = Self::default();
        for (name, tensor, elem) in raw {
            match name.strip_prefix(&prefix) {
                Some(inner) => {
                    weights.tensors.insert(inner.to_string(), tensor);
                    *weights.element_types.entry(elem.name()).or_default() += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32]) -> WeightTensor {
        WeightTensor {
            shape: vec![values.len()],
            values: values.to_vec(),
        }
    }

    fn raw(tensors: &[(&str, f32)]) -> Vec<(String, WeightTensor, Elem)> {
        tensors
            .iter()
            .map(|&(n, v)| (n.to_string(), t(&[v]), Elem::F16))
            .collect()
    }

    #[test]
    fn finds_a_nested_state_dict_and_sets_the_rest_aside() {
        let w = Weights::from_state_dict(raw(&[
            ("state_dict.module.conv1.weight", 1.0),
            ("state_dict.module.bn1.weight", 2.0),
            ("state_dict.module.layer1.0.conv1.weight", 3.0),
            ("optimizer.state.0.exp_avg", 4.0),
        ]));
        assert_eq!(
            w.names().collect::<Vec<_>>(),
            ["bn1.weight", "conv1.weight", "layer1.0.conv1.weight"]
        );
        assert_eq!(w.set_aside().len(), 1);
        assert_eq!(w.set_aside()[0].0, "optimizer.state.0.exp_avg");
        // The state dict's element types only.
        assert_eq!(w.element_types().get("f16"), Some(&3));
    }

    #[test]
    fn keeps_a_bare_state_dict_as_it_is() {
        let w = Weights::from_state_dict(raw(&[
            ("conv1.weight", 1.0),
            ("bn1.weight", 2.0),
            ("layer1.0.conv1.weight", 3.0),
            ("layer1.0.bn1.weight", 3.0),
        ]));
        assert_eq!(w.len(), 4);
        assert!(w.set_aside().is_empty());
    }
}
