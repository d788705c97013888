//! Getting a CT or MRI volume ready for the network: [`Volume`], Hounsfield [`Window`]s,
//! ImageNet-grey normalisation, resampling to a voxel spacing, centre crop or pad.
//!
//! Everything works on a plain `Vec<f32>` in row-major `[depth, height, width]` order, so it
//! runs before any tensor or backend exists; [`Volume::to_tensor`] makes the `[1, 1, D, H, W]`
//! tensor at the end. A typical CT pipeline:
//!
//! ```
//! use resnet3d::burn::tensor::Device;
//! use resnet3d::preprocess::{Volume, Window};
//!
//! # fn main() -> Result<(), resnet3d::Error> {
//! // 3 slices of 4 x 4 voxels, 2.5 mm apart, 0.7 mm in-plane, in Hounsfield units.
//! let hu = vec![-1000.0; 3 * 4 * 4];
//! let volume = Volume::new(hu, [3, 4, 4], [2.5, 0.7, 0.7])?
//!     .resample([1.4, 1.4, 1.4])? // on HU, before windowing clamps anything
//!     .crop_or_pad([8, 2, 2], -1024.0)? // pad with air
//!     .window(Window::LUNG) // HU -> [0, 1]
//!     .normalize_imagenet_grey(); // the scale the ImageNet stem saw
//! let x = volume.to_tensor(&Device::flex())?;
//! assert_eq!(x.dims(), [1, 1, 8, 2, 2]);
//! # Ok(())
//! # }
//! ```

mod limits;
mod volume;

/// The NIfTI reader of a slab of slices, for the scan readers of `data`.
#[cfg(feature = "nifti")]
pub(crate) use crate::nifti::read_slices as read_nifti_slices;
#[cfg(feature = "nifti")]
pub use crate::nifti::{Placement, nifti_affine};
#[cfg(any(feature = "nifti", feature = "dicom"))]
pub(crate) use limits::MAX_DEFLATE_RATIO;
pub use limits::ReadLimits;
pub use volume::{IMAGENET_GREY_MEAN, IMAGENET_GREY_STD, MAX_VOXELS, Volume, Window};
pub(crate) use volume::{check_spacing, resampled_grid, slices_for_window};
