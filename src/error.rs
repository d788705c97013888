//! The crate's error type.

use std::path::PathBuf;

use crate::arch::kinds::Layout;
use crate::weights::zoo::Zoo;

/// Everything that can go wrong when building, loading or saving a [`ResNet3d`](crate::ResNet3d).
///
/// Each message says what was found and what to change. Loading is strict: a checkpoint is
/// either used whole or refused with the names of the tensors that did not fit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file does not exist.
    #[error("{}: no such file; check the path", path.display())]
    FileNotFound {
        /// The path that was asked for.
        path: PathBuf,
    },

    /// The file exists but could not be read.
    #[error("{}: cannot be read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// A label file (CSV of scans and labels) that cannot be used as it is. `row` is the
    /// file's line (1 = the header), `None` for the file as a whole.
    #[error("{}{}: {what}", path.display(), row.map(|r| format!(", line {r}")).unwrap_or_default())]
    InvalidLabels {
        /// The label file.
        path: PathBuf,
        /// The line that is wrong, if one is.
        row: Option<usize>,
        /// What is wrong and what to do.
        what: String,
    },

    /// The file's bytes are not any weight format this crate reads.
    #[error(
        "{}: not a checkpoint ({found}); expected a PyTorch .pth/.pt, a .safetensors or an ONNX file",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What its first bytes look like.
        found: String,
    },

    /// The file has a known format but its contents are damaged or not as the format requires.
    #[error("{}: damaged {format} file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The format its bytes announced.
        format: &'static str,
        /// What the reader found wrong.
        reason: String,
    },

    /// A tensor's element type cannot be turned into `f32` weights.
    #[error("tensor `{name}` has element type {dtype}, which is not a weight type (f32, f64, f16, bf16)")]
    UnsupportedDType {
        /// Tensor name.
        name: String,
        /// Its element type, as the file names it.
        dtype: String,
    },

    /// The file is a network this crate cannot map onto a ResNet.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What was found, and why it is not supported.
        what: String,
    },

    /// The checkpoint's block layout is not the one the configuration asks for.
    #[error(
        "checkpoint is a {found}; the config asks for {expected}: use the preset that matches the checkpoint, or a checkpoint of the configured depth"
    )]
    ArchitectureMismatch {
        /// What the checkpoint holds.
        found: Layout,
        /// What the configuration asks for.
        expected: Layout,
    },

    /// The checkpoint comes from a model zoo whose network the configuration does not build
    /// (e.g. a MedicalNet file loaded with `resnet18()`).
    #[error("{why}: the checkpoint is in {zoo}'s layout; build the network with {preset}")]
    ZooMismatch {
        /// The zoo the checkpoint was recognised as.
        zoo: Zoo,
        /// What in the checkpoint (and the configuration) tells.
        why: String,
        /// The constructor to use, e.g. `ResNet3dConfig::medicalnet(18)?`.
        preset: String,
    },

    /// The model needs tensors the checkpoint does not have.
    #[error("checkpoint lacks {} tensor(s) the model needs: {}", names.len(), list(names))]
    MissingTensors {
        /// The missing tensor names, in checkpoint naming.
        names: Vec<String>,
    },

    /// The checkpoint has tensors the model has no place for; nothing is dropped silently.
    #[error(
        "checkpoint has {} tensor(s) the model has no place for: {}; is it a ResNet of torchvision's layout?",
        names.len(),
        list(names)
    )]
    UnexpectedTensors {
        /// The unused tensor names.
        names: Vec<String>,
    },

    /// A tensor's shape is not the one the configured model needs.
    #[error("tensor `{name}` has shape {found:?}, the model needs {expected:?}{hint}")]
    WrongShape {
        /// Tensor name.
        name: String,
        /// Shape the model needs (before inflation for 2-D checkpoints).
        expected: Vec<usize>,
        /// Shape in the checkpoint.
        found: Vec<usize>,
        /// Which setting to change, when that can be told (starts with "; ").
        hint: String,
    },

    /// Burn's training loop stopped on an error, or left no metrics to pick the best epoch
    /// from.
    #[error("training failed: {what}")]
    Training {
        /// Burn's message (a scan that cannot be read names its label-file line).
        what: String,
    },

    /// A configuration field has a value the network (or the training) cannot work with.
    #[error("invalid configuration: `{field}` {reason}")]
    InvalidConfig {
        /// The field to change (a `ResNet3dConfig` field, or `Type.field` for other settings).
        field: &'static str,
        /// Why its value does not work.
        reason: String,
    },

    /// A [`Volume`](crate::preprocess::Volume) or a preprocessing step was given a shape or
    /// spacing it cannot work with.
    #[error("invalid volume: {what}")]
    InvalidVolume {
        /// What was found, and what it must be.
        what: String,
    },

    /// A tensor given to the network does not fit it.
    #[error("input of shape {dims:?}: {what}")]
    InvalidInput {
        /// The input's shape.
        dims: Vec<usize>,
        /// What the network takes instead.
        what: String,
    },

    /// The network's layers do not fit together (a channel count, a BatchNorm width, a stride
    /// or a shortcut that does not match its neighbours): only possible after editing the
    /// public fields of a [`ResNet3d`](crate::ResNet3d) by hand. Nothing is computed on such a
    /// network.
    #[error("inconsistent network at {layer}: {what}; build it from a ResNet3dConfig, or fix that layer")]
    InvalidNetwork {
        /// The layer, in torchvision naming (`layer1.0.conv2`).
        layer: String,
        /// What does not fit.
        what: String,
    },

    /// A DICOM folder or series that cannot be read as one volume; `problem` says what and
    /// what to do.
    #[cfg(feature = "dicom")]
    #[error("{}: {problem}", dir.display())]
    Dicom {
        /// The folder.
        dir: PathBuf,
        /// What is wrong.
        problem: Box<crate::data::dicom_problem::DicomProblem>,
    },

    /// Published weights could not be had ([`ResNet3d::from_pretrained`](crate::ResNet3d::from_pretrained)).
    #[error("pretrained weights {name} from {url}: {reason}; {hint}")]
    Pretrained {
        /// The registry name.
        name: String,
        /// Where the file is fetched from.
        url: String,
        /// What went wrong.
        reason: String,
        /// How to place the file by hand (the path the cache expects, or the command that
        /// fills the Hub cache).
        hint: String,
    },

    /// Saving or loading Burn's own record format failed.
    #[error("{}: Burn record: {reason}", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The first names of a list, for messages that stay readable with hundreds of names.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut out = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}
