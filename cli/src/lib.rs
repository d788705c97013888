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

/// The file a `--weights` argument names: the path itself when it exists, else the published
/// weights of that name (`resnet50.tv2_in1k`, `timm/resnet50.a1_in1k`, `medicalnet/resnet_50`,
/// ...: `resnet3d::PRETRAINED`), fetched into the verified caches (`$RESNET3D_CACHE`, the
/// Hugging Face cache for Hub files; offline with `HF_HUB_OFFLINE=1`).
///
/// # Errors
/// Those of [`resnet3d::Fetcher::fetch`] for a name.
pub fn weights_file(arg: &std::path::Path) -> resnet3d::Result<std::path::PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    match arg.to_str().and_then(|name| resnet3d::pretrained(name).ok()) {
        Some(entry) => resnet3d::Fetcher::from_env().fetch(entry),
        None => Ok(arg.to_path_buf()),
    }
}
