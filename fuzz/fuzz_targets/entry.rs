//! What each fuzz target does with its input, shared with the crate's test
//! `tests/it/corpora.rs`, which replays the committed corpora through these same functions.
//! The readers take paths: each input is written to a file (with the extension the reader
//! expects) in a folder of its own per process and thread, then read back. Each returns the
//! reader's result, as `Ok(())` or the crate's typed error.
#![allow(dead_code)] // each target uses one function

use std::io::Write;
use std::path::PathBuf;

use resnet3d::burn::tensor::Device;
use resnet3d::preprocess::Volume;
use resnet3d::{Error, ResNet3dConfig, Weights, inflate_from_2d};

/// A folder of this process and thread, `name` in it; made empty when `fresh`.
fn scratch(name: &str, fresh: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "resnet3d-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let path = dir.join(name);
    if fresh {
        let _ = std::fs::remove_dir_all(&path);
    }
    std::fs::create_dir_all(&dir).expect("the fuzzer's temp folder");
    path
}

fn write(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch(name, false);
    std::fs::write(&path, data).expect("the fuzzer's temp file");
    path
}

fn weights(data: &[u8], extension: &str) -> Result<Weights, Error> {
    Weights::from_file(write(&format!("weights.{extension}"), data))
}

/// `pth`, `safetensors`, `onnx`: the bytes as a weight file.
pub fn weight_file(data: &[u8], extension: &str) -> Result<(), Error> {
    weights(data, extension).map(drop)
}

/// `mapping`: the first byte picks the format (and the input channels), the rest is the file,
/// inflated onto a ResNet-18 of width 2 when it reads.
pub fn mapping(data: &[u8]) -> Result<(), Error> {
    let Some((&kind, file)) = data.split_first() else {
        return Ok(());
    };
    let extension = ["pth", "safetensors", "onnx"][usize::from(kind) % 3];
    let weights = weights(file, extension)?;
    let config = ResNet3dConfig::resnet18()
        .with_width(2)
        .with_in_channels(1 + usize::from(kind) % 4);
    inflate_from_2d(&weights, &config, &Device::flex()).map(drop)
}

/// `dicom`: the bytes after a 128-byte preamble and `DICM`, as the one slice of a folder.
pub fn dicom(data: &[u8]) -> Result<(), Error> {
    dicom_folder(&[data])
}

/// Marks where one slice of a `dicom_series` input ends and the next begins.
pub const SLICE_SEPARATOR: &[u8] = b"RESNET3D-SLICE";

/// `dicom_series`: the bytes cut at each [`SLICE_SEPARATOR`] into up to 8 slices of a folder.
pub fn dicom_series(data: &[u8]) -> Result<(), Error> {
    let mut slices = Vec::new();
    let mut rest = data;
    while slices.len() < 7 {
        match rest.windows(SLICE_SEPARATOR.len()).position(|w| w == SLICE_SEPARATOR) {
            Some(at) => {
                slices.push(&rest[..at]);
                rest = &rest[at + SLICE_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    slices.push(rest);
    dicom_folder(&slices)
}

fn dicom_folder(slices: &[&[u8]]) -> Result<(), Error> {
    let dir = scratch("series", true);
    std::fs::create_dir_all(&dir).expect("the fuzzer's temp folder");
    for (index, slice) in slices.iter().enumerate() {
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(slice);
        std::fs::write(dir.join(format!("slice{index}.dcm")), bytes).expect("the fuzzer's temp file");
    }
    Volume::from_dicom(&dir).map(drop)
}

/// `nifti`: the bytes as a `.nii`.
pub fn nifti(data: &[u8]) -> Result<(), Error> {
    Volume::from_nifti(write("volume.nii", data)).map(drop)
}

/// `nifti_gz`: the bytes after the first, gzipped, as a `.nii.gz`, so that every input
/// reaches the header and the streaming decode through a valid gzip stream. The first byte's
/// low bit cuts the compressed stream short, at the share of its length its other seven bits
/// give (of 128), to reach the inflater's errors too.
pub fn nifti_gz(data: &[u8]) -> Result<(), Error> {
    let Some((&mode, content)) = data.split_first() else {
        return Ok(());
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(content).expect("gzip into memory");
    let mut bytes = gz.finish().expect("gzip into memory");
    if mode & 1 == 1 {
        bytes.truncate(bytes.len() * usize::from(mode >> 1) / 128);
    }
    Volume::from_nifti(write("volume.nii.gz", &bytes)).map(drop)
}

/// `labels`: the bytes as `labels.csv`, in a folder holding the scans `a.nii.gz`, `b.nii.gz`
/// and the series folder `c`.
pub fn labels(data: &[u8]) -> Result<(), Error> {
    let dir = scratch("labels", false);
    std::fs::create_dir_all(dir.join("c")).expect("the fuzzer's temp folder");
    for scan in ["a.nii.gz", "b.nii.gz"] {
        std::fs::write(dir.join(scan), b"").expect("the fuzzer's temp file");
    }
    let csv = dir.join("labels.csv");
    std::fs::write(&csv, data).expect("the fuzzer's temp file");
    resnet3d::data::LabelledScans::from_csv(&csv, 0.5, 7).map(drop)
}
