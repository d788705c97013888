//! Integration tests: one binary, one module per concern.

mod acs;
mod bf16;
mod common;
#[cfg(all(feature = "nifti", feature = "dicom"))]
mod corpora;
#[cfg(feature = "dicom")]
mod dicom;
mod errors;
mod explain;
mod export;
mod full_width;
/// What each fuzz target does with its input (shared with the fuzz binaries).
#[cfg(all(feature = "nifti", feature = "dicom"))]
#[path = "../../fuzz/fuzz_targets/entry.rs"]
mod fuzz_entry;
mod gradients;
mod hostile;
mod i3resnet;
mod inspect;
mod invariants;
mod labels;
mod layers;
mod medicalnet;
mod nifti;
mod onnx;
mod optim;
mod pretrained;
mod properties;
mod pytorch;
mod readers;
mod record;
#[cfg(all(feature = "nifti", feature = "dicom"))]
mod slices;
mod sliding;
mod soundness;
mod tracking;
mod video;
#[cfg(feature = "wgpu")]
mod wgpu;

#[global_allocator]
static ALLOCATOR: tracking::Tracking = tracking::Tracking;
