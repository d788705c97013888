//! The `resnet3d` command, one module per subcommand: [`inflate`] a 2-D ImageNet ResNet,
//! [`inspect`] a checkpoint, [`train`] on labelled scans, [`predict`] over a label file, a
//! folder or an archive (whole scans by sliding windows, shards for job arrays), and
//! [`explain`] one scan with a class activation map, [`export`] a trained network as ONNX.
//!
//! Each module's `Args` is its subcommand's command line (clap) and its `run` does the work,
//! so that the tests call them in process as well as through the binary.

pub mod explain;
pub mod export;
pub mod inflate;
pub mod inputs;
pub mod inspect;
pub mod predict;
mod progress;
mod settings;
mod table;
pub mod train;
