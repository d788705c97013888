//! Training data: labelled scans on disk, the pipeline they go through, and Burn's dataset
//! and batcher over them.
//!
//! - [`LabelledScans`]: a CSV of scans (`path`), their class (`label`) and optionally their
//!   split (`split`: train, valid, test), checked whole before anything is trained; without a
//!   split column, a seeded split stratified by class.
//! - [`Preprocessing`] (resample, crop/pad, window, normalise; cached) and [`Augmentation`]
//!   (random crop, flips, quarter turns, intensity, noise; seeded per epoch and scan), as
//!   data that is saved with a trained model.
//! - [`VolumeCache`], [`ScanDataset`] and [`ScanBatcher`] (feature `train`): preprocessed
//!   volumes kept in memory up to a budget, then on disk; Burn's `Dataset` and `Batcher` for
//!   its `DataLoader`.
//! - [`read_series`] / [`Volume::from_dicom`](crate::preprocess::Volume::from_dicom)
//!   (feature `dicom`): a folder of DICOM slices into one volume, checked and sorted.

#[cfg(feature = "train")]
mod cache;
#[cfg(feature = "train")]
mod dataset;
#[cfg(feature = "dicom")]
mod dicom;
#[cfg(feature = "dicom")]
mod dicom_frames;
#[cfg(feature = "dicom")]
mod dicom_header;
#[cfg(feature = "dicom")]
pub(crate) mod dicom_problem;
#[cfg(feature = "dicom")]
mod dicom_read;
mod labels;
mod pipeline;
pub(crate) mod rng;
mod scan;

#[cfg(feature = "train")]
pub use cache::{CacheStats, VolumeCache};
#[cfg(feature = "train")]
pub use dataset::{ScanBatch, ScanBatcher, ScanDataset, ScanItem};
#[cfg(feature = "dicom")]
pub use dicom::{DicomVolume, VOLUME_MODALITIES, list_series, read_series, read_series_with_limits};
#[cfg(feature = "dicom")]
pub use dicom_problem::{DicomProblem, SeriesInfo};
pub use labels::{LabelledScan, LabelledScans, Split};
pub use pipeline::{Augmentation, MAX_WHOLE_VOXELS, Normalization, Preprocessing};
#[cfg(all(feature = "nifti", feature = "dicom"))]
pub(crate) use scan::no_series_for_a_file;
pub use scan::read_scan;
