//! [`PlacedScan`]: a scan and where it sits in the scanner.

use std::path::Path;

use crate::data::Preprocessing;
use crate::error::Result;
use crate::preprocess::{Placement, Volume};

/// A scan read from a NIfTI file or a DICOM folder, with where it sits in the scanner, so
/// that a map on its grid can be written to overlay it.
#[derive(Debug, Clone)]
pub struct PlacedScan {
    /// The voxels (Hounsfield units for CT) and their spacing.
    pub volume: Volume,
    /// A NIfTI input's header, or a DICOM series' position and orientation.
    pub placement: Placement,
    /// The DICOM series' UID, `None` for a NIfTI file.
    pub series: Option<String>,
}

impl PlacedScan {
    /// Reads `path`: a folder is a DICOM series (`series` picks one of several by its
    /// SeriesInstanceUID), a `.nii`/`.nii.gz` file a NIfTI volume.
    ///
    /// # Errors
    /// Those of [`data::read_series`](crate::data::read_series) and
    /// [`data::read_scan`](crate::data::read_scan).
    pub fn read(path: impl AsRef<Path>, series: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let dicom = crate::data::read_series(path, series)?;
            return Ok(Self {
                placement: Placement::Affine(dicom.nifti_affine()),
                series: Some(dicom.series.uid),
                volume: dicom.volume,
            });
        }
        crate::data::no_series_for_a_file(path, series)?;
        Ok(Self {
            volume: crate::data::read_scan(path)?,
            placement: Placement::LikeFile(path.to_path_buf()),
            series: None,
        })
    }
}

/// A scan read for a network: the input [`Preprocessing::read`] makes of it, and what is
/// needed to bring a map on that input back onto the scan and write it over the scan.
#[derive(Debug, Clone)]
pub struct PreparedScan {
    /// The network's input: the scan resampled, centre-cropped, windowed and normalised.
    pub input: Volume,
    /// The scan's `[depth, height, width]` voxels.
    pub scan_shape: [usize; 3],
    /// The scan's spacing in mm, `[depth, height, width]`.
    pub scan_spacing: [f32; 3],
    /// A NIfTI input's header, or a DICOM series' position and orientation.
    pub placement: Placement,
    /// The DICOM series' UID, `None` for a NIfTI file.
    pub series: Option<String>,
}

impl PreparedScan {
    /// Reads `path` (a NIfTI file, or a DICOM folder with `series` picking one of several)
    /// through `preprocessing`, decoding only the slices its centre crop takes (see
    /// [`Preprocessing::read`]).
    ///
    /// # Errors
    /// As [`PlacedScan::read`] and [`Preprocessing::apply`].
    pub fn read(path: impl AsRef<Path>, series: Option<&str>, preprocessing: &Preprocessing) -> Result<Self> {
        let path = path.as_ref();
        let (input, slices) = preprocessing.read_centre(path, series, [0; 3])?;
        let (placement, series) = match slices.dicom {
            Some((uid, affine)) => (Placement::Affine(affine), Some(uid)),
            None => (Placement::LikeFile(path.to_path_buf()), None),
        };
        Ok(Self {
            input,
            scan_shape: slices.scan_shape,
            scan_spacing: slices.volume.spacing,
            placement,
            series,
        })
    }
}
