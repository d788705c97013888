//! Whole scans through a network trained on patches: sliding-window inference.
//!
//! A classifier trained on patches (64 x 128 x 128 voxels around a finding, say) is run over
//! a whole scan by sliding its window across the scan, as MONAI's
//! `sliding_window_inference` does: windows of the network's input size ([`SlidingWindow::roi`])
//! overlap by a share ([`SlidingWindow::overlap`]), a batch of windows at a time goes through
//! the network, and each window's class probabilities are spread over the window and blended
//! into a per-class [`ProbabilityMap`] with a constant or Gaussian weight ([`Blend`]). The
//! map gives a scan-level score by a stated [`Aggregate`] (its maximum, its mean, or the mean
//! of its top voxels) and, brought back to the scan's grid with
//! [`Preprocessing::to_scan_grid`](crate::data::Preprocessing::to_scan_grid), overlays the
//! scan.
//!
//! Window positions, padding and blending weights are MONAI's (1.x): the tests compare the
//! map with MONAI's own on the same windows and weights within 1e-5. Memory is the map
//! (`classes + 1` floats per voxel of the volume, padded up to the window where it is
//! smaller) and one batch of windows: never a copy of the scan per window, never a list of
//! every window.
//!
//! ```
//! use resnet3d::infer::{Aggregate, Blend, SlidingWindow};
//! use resnet3d::preprocess::Volume;
//!
//! # fn main() -> Result<(), resnet3d::Error> {
//! let scan = Volume::new(vec![0.5; 20 * 40 * 40], [20, 40, 40], [1.0; 3])?;
//! let sliding = SlidingWindow::new([8, 16, 16]).with_overlap(0.5).with_blend(Blend::Constant);
//! // Any classifier: here one that finds class 1 more likely where the window is bright.
//! let map = sliding.classify(&scan, |windows, n| {
//!     let roi = windows.len() / n;
//!     Ok(windows.chunks(roi).flat_map(|w| {
//!         let mean = w.iter().sum::<f32>() / roi as f32;
//!         [1.0 - mean, mean]
//!     }).collect())
//! })?;
//! assert_eq!(map.classes(), 2);
//! assert!((map.aggregate(Aggregate::Max)?[1] - 0.5).abs() < 1e-6);
//! # Ok(())
//! # }
//! ```

mod blend;
mod map;
mod run;
#[cfg(all(feature = "nifti", feature = "dicom"))]
mod scan;
mod window;

pub use blend::Blend;
pub use map::{Aggregate, ProbabilityMap};
pub use run::TrainedRun;
#[cfg(all(feature = "nifti", feature = "dicom"))]
pub use scan::{PlacedScan, PreparedScan};
pub use window::SlidingWindow;
